//! Where an image goes: the one interface that `build` and `push` share.
//!
//! A sink stores blobs and names manifests. The layer's digest is known only after the stream ends, so a
//! sink hands out a [`BlobWriter`] for a blob of unknown digest and the caller commits it under the digest
//! at the end (an OCI layout renames a temp file into `blobs/sha256/`, a docker-loadable tar patches the
//! entry header it reserved, a registry PUTs `?digest=` to close its upload session). Aborting a writer
//! removes every trace of the partial blob. Small blobs whose digest is known up front (config, manifest)
//! go through [`Sink::put_blob`], which asks [`Sink::has_blob`] first so a re-push sends nothing twice.

use std::io::Write;

use crate::base::BlobSource;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::{Descriptor, Platform};
use crate::progress::Meter;
use crate::reference::Reference;

/// A blob being written whose digest is not known yet.
pub trait BlobWriter: Write {
    /// Stores the written bytes under `digest` (which has `size` bytes).
    fn commit(self: Box<Self>, digest: &Digest, size: u64) -> Result<()>;
    /// Discards the written bytes.
    fn abort(self: Box<Self>) -> Result<()>;
}

/// Writes a blob's bytes into the given writer; callable more than once, from another thread.
pub type Produce<'a> = dyn Fn(&mut dyn Write) -> Result<()> + Sync + 'a;

/// Has `produce` write into `w`, then commits the blob under `digest`, or aborts it on failure.
pub fn write_blob(mut w: Box<dyn BlobWriter + '_>, digest: &Digest, size: u64, produce: &Produce<'_>) -> Result<()> {
    match produce(&mut w) {
        Ok(()) => w.commit(digest, size),
        Err(e) => {
            let _ = w.abort();
            Err(e)
        }
    }
}

/// How a blob came to be in the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobOutcome {
    /// It was there already.
    Present,
    /// Mounted from this repository of the same registry.
    Mounted(String),
    /// Its bytes were sent.
    Sent,
}

/// Copies at most `size` + 1 bytes of `reader` into `w`, committing only if they are exactly the blob
/// `digest` of `size` bytes; otherwise the writer is aborted and nothing is stored.
pub fn copy_verified_from(
    mut w: Box<dyn BlobWriter + '_>,
    digest: &Digest,
    size: u64,
    reader: impl std::io::Read,
) -> Result<()> {
    match copy_checked(&mut w, digest, size, reader) {
        Ok(()) => w.commit(digest, size),
        Err(e) => {
            let _ = w.abort();
            Err(e)
        }
    }
}

/// Copies `reader` (at most `size` + 1 bytes) into `w` and checks that it was the blob `digest`.
pub fn copy_checked(w: &mut dyn Write, digest: &Digest, size: u64, reader: impl std::io::Read) -> Result<()> {
    let mut hashing = crate::digest::HashingWriter::new(w);
    std::io::copy(&mut reader.take(size.saturating_add(1)), &mut hashing).map_err(crate::layer::sink_error)?;
    let (_, got, n) = hashing.finish();
    if got != *digest || n != size {
        return Err(crate::error::Error::protocol(format!(
            "the blob {digest} arrived as {n} bytes hashing to {got} (expected {size} bytes); nothing was stored"
        )));
    }
    Ok(())
}

/// A manifest ready to be stored under one or more names.
#[derive(Debug, Clone)]
pub struct ManifestBlob {
    pub bytes: Vec<u8>,
    pub media_type: crate::image::MediaType,
    pub digest: Digest,
    pub platform: Option<Platform>,
}

/// A destination for images.
pub trait Sink {
    /// Whether the blob is already stored (a registry answers HEAD; a layout checks the file).
    fn has_blob(&mut self, digest: &Digest) -> Result<bool>;

    /// Like [`Sink::has_blob`], saying how the blob got there when the sink brought it in without its bytes
    /// (a registry mounts it from another repository it was pushed to); `None` when it is missing.
    fn find_blob(&mut self, digest: &Digest) -> Result<Option<BlobOutcome>> {
        Ok(self.has_blob(digest)?.then_some(BlobOutcome::Present))
    }

    /// A writer for a new blob of unknown digest.
    fn blob_writer(&mut self) -> Result<Box<dyn BlobWriter + '_>>;

    /// Stores a blob whose bytes and digest are known, unless it is there already. Returns whether it
    /// was sent.
    fn put_blob(&mut self, bytes: &[u8], digest: &Digest) -> Result<bool> {
        Ok(self.store_blob(bytes, digest)? == BlobOutcome::Sent)
    }

    /// [`Sink::put_blob`], saying how the blob got there.
    fn store_blob(&mut self, bytes: &[u8], digest: &Digest) -> Result<BlobOutcome> {
        if let Some(found) = self.find_blob(digest)? {
            return Ok(found);
        }
        let produce = |w: &mut dyn Write| w.write_all(bytes).map_err(crate::layer::sink_error);
        self.put_blob_streamed(digest, bytes.len() as u64, &produce)?;
        Ok(BlobOutcome::Sent)
    }

    /// Stores a blob of known digest and size whose bytes `produce` writes (and can write again: it is
    /// deterministic). The default streams into a [`BlobWriter`]; the registry sink falls back to one
    /// monolithic PUT, producing the bytes again, when the registry refuses chunked uploads.
    fn put_blob_streamed(&mut self, digest: &Digest, size: u64, produce: &Produce<'_>) -> Result<()> {
        write_blob(self.blob_writer()?, digest, size, produce)
    }

    /// Stores a blob of a base image, `desc`, unless the sink has it: copied from `source` with its digest
    /// and size verified on the way (a mismatch aborts the writer: nothing is stored), the bytes read
    /// counted on `meter`. A registry sink mounts it instead when the source is another repository of the
    /// same registry.
    fn put_base_blob(&mut self, desc: &Descriptor, source: &mut BlobSource, meter: &Meter) -> Result<BlobOutcome> {
        if let Some(found) = self.find_blob(&desc.digest)? {
            return Ok(found);
        }
        let w = self.blob_writer()?;
        match source.open(&desc.digest) {
            Ok(reader) => copy_verified_from(w, &desc.digest, desc.size, meter.reader(reader))?,
            Err(e) => {
                let _ = w.abort();
                return Err(e);
            }
        }
        Ok(BlobOutcome::Sent)
    }

    /// Stores a manifest that an index will name (one platform's image), without a name of its own. Every
    /// blob it points to is already committed. A layout keeps it as a blob; a registry PUTs it by digest.
    fn put_manifest_untagged(&mut self, manifest: &ManifestBlob) -> Result<()> {
        self.put_blob(&manifest.bytes, &manifest.digest).map(|_| ())
    }

    /// Stores the manifest and names it `reference`. Every blob it points to is already committed.
    fn put_manifest(&mut self, manifest: &ManifestBlob, reference: &Reference) -> Result<()>;

    /// Makes everything written visible (a tar is renamed into place). Called once, after the last manifest.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Several sinks fed by one stream: a push to several registries reads and compresses the context once.
/// Blob writers are teed; manifests go to the sink whose `accepts` says the name is its own.
pub struct Fanout<'a> {
    sinks: Vec<(Accepts<'a>, &'a mut dyn Sink)>,
}

/// Says whether a name belongs to a sink of a [`Fanout`].
type Accepts<'a> = Box<dyn Fn(&Reference) -> bool + 'a>;

impl<'a> Fanout<'a> {
    pub fn new() -> Fanout<'a> {
        Fanout { sinks: Vec::new() }
    }

    /// Adds a sink that stores the names for which `accepts` is true.
    pub fn add(&mut self, accepts: impl Fn(&Reference) -> bool + 'a, sink: &'a mut dyn Sink) {
        self.sinks.push((Box::new(accepts), sink));
    }
}

impl Default for Fanout<'_> {
    fn default() -> Self {
        Fanout::new()
    }
}

/// Of what two sinks did with one blob, what says the most: sent, then mounted, then present.
fn moved_most(a: BlobOutcome, b: BlobOutcome) -> BlobOutcome {
    match (a, b) {
        (BlobOutcome::Sent, _) | (_, BlobOutcome::Sent) => BlobOutcome::Sent,
        (m @ BlobOutcome::Mounted(_), _) | (_, m @ BlobOutcome::Mounted(_)) => m,
        _ => BlobOutcome::Present,
    }
}

struct Tee<'a> {
    writers: Vec<Box<dyn BlobWriter + 'a>>,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for w in &mut self.writers {
            w.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writers.iter_mut().try_for_each(|w| w.flush())
    }
}

impl BlobWriter for Tee<'_> {
    fn commit(self: Box<Self>, digest: &Digest, size: u64) -> Result<()> {
        let mut first_err = None;
        for w in self.writers {
            // Keep going so no writer is left half-open; report the first failure.
            let res = if first_err.is_none() { w.commit(digest, size) } else { w.abort() };
            if let Err(e) = res {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn abort(self: Box<Self>) -> Result<()> {
        for w in self.writers {
            let _ = w.abort();
        }
        Ok(())
    }
}

impl Sink for Fanout<'_> {
    fn has_blob(&mut self, digest: &Digest) -> Result<bool> {
        for (_, sink) in &mut self.sinks {
            if !sink.has_blob(digest)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn blob_writer(&mut self) -> Result<Box<dyn BlobWriter + '_>> {
        let mut writers = Vec::new();
        for (_, sink) in &mut self.sinks {
            match sink.blob_writer() {
                Ok(w) => writers.push(w),
                Err(e) => {
                    for w in writers {
                        let _ = w.abort();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Box::new(Tee { writers }))
    }

    fn store_blob(&mut self, bytes: &[u8], digest: &Digest) -> Result<BlobOutcome> {
        let mut outcome = BlobOutcome::Present;
        for (_, sink) in &mut self.sinks {
            outcome = moved_most(outcome, sink.store_blob(bytes, digest)?);
        }
        Ok(outcome)
    }

    fn put_blob_streamed(&mut self, digest: &Digest, size: u64, produce: &Produce<'_>) -> Result<()> {
        for (_, sink) in &mut self.sinks {
            if !sink.has_blob(digest)? {
                sink.put_blob_streamed(digest, size, produce)?;
            }
        }
        Ok(())
    }

    fn find_blob(&mut self, digest: &Digest) -> Result<Option<BlobOutcome>> {
        let mut outcome = BlobOutcome::Present;
        for (_, sink) in &mut self.sinks {
            match sink.find_blob(digest)? {
                None => return Ok(None),
                Some(found) => outcome = moved_most(outcome, found),
            }
        }
        Ok(Some(outcome))
    }

    fn put_base_blob(&mut self, desc: &Descriptor, source: &mut BlobSource, meter: &Meter) -> Result<BlobOutcome> {
        let mut outcome = BlobOutcome::Present;
        for (_, sink) in &mut self.sinks {
            outcome = moved_most(outcome, sink.put_base_blob(desc, source, meter)?);
        }
        Ok(outcome)
    }

    fn put_manifest_untagged(&mut self, manifest: &ManifestBlob) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|(_, s)| s.put_manifest_untagged(manifest))
    }

    fn put_manifest(&mut self, manifest: &ManifestBlob, reference: &Reference) -> Result<()> {
        match self.sinks.iter_mut().find(|(accepts, _)| accepts(reference)) {
            Some((_, sink)) => sink.put_manifest(manifest, reference),
            None => Err(crate::error::Error::usage(format!("no destination for {reference}"))),
        }
    }

    fn finish(&mut self) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|(_, s)| s.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    /// What an in-memory sink did, shared with the test after the sink is lent to a fanout.
    #[derive(Default)]
    struct Log {
        blobs: BTreeMap<String, Vec<u8>>,
        aborted: usize,
        manifests: Vec<String>,
    }

    /// A sink in memory: writers buffer, commit stores under the digest (or fails when told to).
    struct Memory {
        log: Rc<RefCell<Log>>,
        fail_commit: bool,
        fail_writer: bool,
    }

    impl Memory {
        fn new() -> (Memory, Rc<RefCell<Log>>) {
            let log = Rc::new(RefCell::new(Log::default()));
            (Memory { log: Rc::clone(&log), fail_commit: false, fail_writer: false }, log)
        }
    }

    struct MemoryWriter {
        log: Rc<RefCell<Log>>,
        buf: Vec<u8>,
        fail_commit: bool,
    }

    impl Write for MemoryWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.buf.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl BlobWriter for MemoryWriter {
        fn commit(self: Box<Self>, digest: &Digest, size: u64) -> Result<()> {
            if self.fail_commit {
                return Err(Error::protocol("commit refused"));
            }
            assert_eq!(self.buf.len() as u64, size);
            self.log.borrow_mut().blobs.insert(digest.to_string(), self.buf);
            Ok(())
        }
        fn abort(self: Box<Self>) -> Result<()> {
            self.log.borrow_mut().aborted += 1;
            Ok(())
        }
    }

    impl Sink for Memory {
        fn has_blob(&mut self, digest: &Digest) -> Result<bool> {
            Ok(self.log.borrow().blobs.contains_key(digest.as_str()))
        }
        fn blob_writer(&mut self) -> Result<Box<dyn BlobWriter + '_>> {
            if self.fail_writer {
                return Err(Error::protocol("no writer"));
            }
            Ok(Box::new(MemoryWriter { log: Rc::clone(&self.log), buf: Vec::new(), fail_commit: self.fail_commit }))
        }
        fn put_manifest(&mut self, manifest: &ManifestBlob, reference: &Reference) -> Result<()> {
            self.log.borrow_mut().manifests.push(format!("{reference}@{}", manifest.digest));
            Ok(())
        }
    }

    fn produce_ok(w: &mut dyn Write) -> Result<()> {
        w.write_all(b"hello").map_err(crate::layer::sink_error)
    }

    fn produce_fail(w: &mut dyn Write) -> Result<()> {
        w.write_all(b"hel").map_err(crate::layer::sink_error)?;
        Err(Error::Context("the context changed".into()))
    }

    #[test]
    fn write_blob_commits_what_was_produced_and_aborts_on_failure() {
        let (mut sink, log) = Memory::new();
        let d = Digest::of(b"hello");
        write_blob(sink.blob_writer().unwrap(), &d, 5, &produce_ok).unwrap();
        assert_eq!(log.borrow().blobs.get(d.as_str()).map(Vec::as_slice), Some(&b"hello"[..]));
        let err = write_blob(sink.blob_writer().unwrap(), &Digest::of(b"x"), 1, &produce_fail).unwrap_err();
        assert!(matches!(err, Error::Context(_)), "the producer's own error: {err:?}");
        assert_eq!(log.borrow().aborted, 1);
        assert_eq!(log.borrow().blobs.len(), 1, "nothing stored for the failed blob");
    }

    #[test]
    fn a_copied_blob_that_does_not_match_its_digest_or_size_is_aborted() {
        let (mut sink, log) = Memory::new();
        let d = Digest::of(b"hello");
        copy_verified_from(sink.blob_writer().unwrap(), &d, 5, &b"hello"[..]).unwrap();
        assert!(log.borrow().blobs.contains_key(d.as_str()));
        let other = Digest::of(b"other");
        for (bytes, size) in [(&b"hellx"[..], 5), (&b"hello and more"[..], 5), (&b"hel"[..], 5)] {
            let err = copy_verified_from(sink.blob_writer().unwrap(), &other, size, bytes).unwrap_err();
            assert!(err.to_string().contains("nothing was stored"), "{err}");
        }
        assert_eq!(log.borrow().aborted, 3);
        assert!(!log.borrow().blobs.contains_key(other.as_str()));
    }

    #[test]
    fn put_blob_skips_a_blob_the_sink_has() {
        let (mut sink, log) = Memory::new();
        let d = Digest::of(b"{}");
        assert!(sink.put_blob(b"{}", &d).unwrap());
        assert!(!sink.put_blob(b"{}", &d).unwrap());
        assert_eq!(log.borrow().blobs.len(), 1);
    }

    #[test]
    fn a_fanout_commits_everywhere_or_aborts_the_rest() {
        let (mut a, log_a) = Memory::new();
        let (mut b, log_b) = Memory::new();
        let d = Digest::of(b"hello");
        {
            let mut fan = Fanout::new();
            fan.add(|_| true, &mut a);
            fan.add(|_| true, &mut b);
            write_blob(fan.blob_writer().unwrap(), &d, 5, &produce_ok).unwrap();
        }
        assert!(log_a.borrow().blobs.contains_key(d.as_str()) && log_b.borrow().blobs.contains_key(d.as_str()));

        // The first commit fails: the second writer is aborted, not committed, and the error is the first's.
        let (mut a, log_a) = Memory::new();
        a.fail_commit = true;
        let (mut b, log_b) = Memory::new();
        {
            let mut fan = Fanout::new();
            fan.add(|_| true, &mut a);
            fan.add(|_| true, &mut b);
            let err = write_blob(fan.blob_writer().unwrap(), &d, 5, &produce_ok).unwrap_err();
            assert_eq!(err.to_string(), "commit refused");
        }
        assert!(log_a.borrow().blobs.is_empty() && log_b.borrow().blobs.is_empty());
        assert_eq!(log_b.borrow().aborted, 1);

        // A producer failure aborts every writer.
        let (mut a, log_a) = Memory::new();
        let (mut b, log_b) = Memory::new();
        {
            let mut fan = Fanout::new();
            fan.add(|_| true, &mut a);
            fan.add(|_| true, &mut b);
            assert!(write_blob(fan.blob_writer().unwrap(), &d, 5, &produce_fail).is_err());
        }
        assert_eq!((log_a.borrow().aborted, log_b.borrow().aborted), (1, 1));
    }

    #[test]
    fn a_fanout_that_cannot_open_every_writer_aborts_those_it_opened() {
        let (mut a, log_a) = Memory::new();
        let (mut b, _) = Memory::new();
        b.fail_writer = true;
        let mut fan = Fanout::new();
        fan.add(|_| true, &mut a);
        fan.add(|_| true, &mut b);
        assert!(fan.blob_writer().is_err());
        drop(fan);
        assert_eq!(log_a.borrow().aborted, 1);
    }

    #[test]
    fn manifests_go_to_the_sink_that_accepts_the_name() {
        let (mut a, log_a) = Memory::new();
        let (mut b, log_b) = Memory::new();
        let manifest = ManifestBlob {
            bytes: b"{}".to_vec(),
            media_type: crate::image::MEDIA_TYPE_MANIFEST.into(),
            digest: Digest::of(b"{}"),
            platform: None,
        };
        let one = Reference::parse("one.example/x:1").unwrap();
        let two = Reference::parse("two.example/x:1").unwrap();
        let three = Reference::parse("three.example/x:1").unwrap();
        {
            let mut fan = Fanout::new();
            fan.add(|r: &Reference| r.api_host() == "one.example", &mut a);
            fan.add(|r: &Reference| r.api_host() == "two.example", &mut b);
            fan.put_manifest(&manifest, &one).unwrap();
            fan.put_manifest(&manifest, &two).unwrap();
            assert!(matches!(fan.put_manifest(&manifest, &three), Err(Error::Usage(_))));
        }
        assert_eq!(log_a.borrow().manifests.len(), 1);
        assert_eq!(log_b.borrow().manifests.len(), 1);
        assert!(log_a.borrow().manifests[0].starts_with("one.example/x:1@"));
    }
}
