//! Where an image goes: the one interface that `build` and `push` share.
//!
//! A sink stores blobs and names manifests. The layer's digest is known only after the stream ends, so a
//! sink hands out a [`BlobWriter`] for a blob of unknown digest and the caller commits it under the digest
//! at the end (an OCI layout renames a temp file into `blobs/sha256/`, a docker-loadable tar patches the
//! entry header it reserved, a registry PUTs `?digest=` to close its upload session). Aborting a writer
//! removes every trace of the partial blob. Small blobs whose digest is known up front (config, manifest)
//! go through [`Sink::put_blob`], which asks [`Sink::has_blob`] first so a re-push sends nothing twice.

use std::io::Write;

use crate::digest::Digest;
use crate::error::Result;
use crate::image::Platform;
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

/// A manifest ready to be stored under one or more names.
#[derive(Debug, Clone)]
pub struct ManifestBlob {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
    pub platform: Option<Platform>,
}

/// A destination for images.
pub trait Sink {
    /// Whether the blob is already stored (a registry answers HEAD; a layout checks the file).
    fn has_blob(&mut self, digest: &Digest) -> Result<bool>;

    /// A writer for a new blob of unknown digest.
    fn blob_writer(&mut self) -> Result<Box<dyn BlobWriter + '_>>;

    /// Stores a blob whose bytes and digest are known, unless it is there already. Returns whether it
    /// was sent.
    fn put_blob(&mut self, bytes: &[u8], digest: &Digest) -> Result<bool> {
        if self.has_blob(digest)? {
            return Ok(false);
        }
        let produce = |w: &mut dyn Write| w.write_all(bytes).map_err(crate::layer::sink_error);
        self.put_blob_streamed(digest, bytes.len() as u64, &produce)?;
        Ok(true)
    }

    /// Stores a blob of known digest and size whose bytes `produce` writes (and can write again: it is
    /// deterministic). The default streams into a [`BlobWriter`]; the registry sink falls back to one
    /// monolithic PUT, producing the bytes again, when the registry refuses chunked uploads.
    fn put_blob_streamed(&mut self, digest: &Digest, size: u64, produce: &Produce<'_>) -> Result<()> {
        write_blob(self.blob_writer()?, digest, size, produce)
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

    fn put_blob(&mut self, bytes: &[u8], digest: &Digest) -> Result<bool> {
        let mut sent = false;
        for (_, sink) in &mut self.sinks {
            sent |= sink.put_blob(bytes, digest)?;
        }
        Ok(sent)
    }

    fn put_blob_streamed(&mut self, digest: &Digest, size: u64, produce: &Produce<'_>) -> Result<()> {
        for (_, sink) in &mut self.sinks {
            if !sink.has_blob(digest)? {
                sink.put_blob_streamed(digest, size, produce)?;
            }
        }
        Ok(())
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
