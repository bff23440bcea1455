//! Turning a context into a gzip'd tar layer in one streaming pass.
//!
//! `write_layer` stacks `Write` adapters: tar bytes go through a sha256 (the `diff_id`), a buffer, the gzip
//! encoder, and a second sha256 and counter (the blob `digest` and `size`) into whatever the sink handed
//! out. Nothing is staged on disk and the only buffers are fixed-size, so memory does not grow with the
//! context. Tar headers are built with the `tar` crate's header type but written by us, so every field is
//! pinned: mtime is the build epoch (unless `preserve_mtime`), uid/gid are 0 (or `--chown`), user and group
//! names are empty, permission bits are kept, and names or link targets over 100 bytes and sizes over
//! 8 GiB go into PAX extended headers. The function is deterministic, so calling it again (a registry lost
//! the upload session) reproduces the same bytes.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Result};
use crate::gzip::GzipWriter;
use crate::signal;
use crate::walk::{Context, Entry, Kind};

/// How entries are stamped into the layer.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    /// The mtime of every entry (and the config's `created`) unless `preserve_mtime`.
    pub epoch: u64,
    pub preserve_mtime: bool,
    /// Owner of every entry; `(0, 0)` by default.
    pub chown: (u64, u64),
    /// Where the context lands in the image, without leading or trailing `/` ("" for the root).
    pub prefix: String,
    /// Deflate level, 0-10.
    pub level: u8,
    /// The base's directory symlinks and modes: entries are written under a base symlink's target, and a
    /// directory the base has keeps its mode (see [`crate::rootfs`]).
    pub rootfs: Option<std::sync::Arc<crate::rootfs::RootFs>>,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions { epoch: 0, preserve_mtime: false, chown: (0, 0), prefix: String::new(), level: 1, rootfs: None }
    }
}

/// The identity of a written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the compressed blob.
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// Number of tar entries written (not counting PAX headers).
    pub entries: u64,
}

/// Receives notes while writing: a skipped special file, the bytes read so far.
pub trait LayerObserver {
    fn skipped(&mut self, path: &std::path::Path, what: &str);
    /// `bytes` more of the context's file contents were read, and `files` more regular files read whole.
    fn read(&mut self, _bytes: u64, _files: u64) {}
}

const BLOCK: usize = 512;
const COPY_BUF: usize = 128 * 1024;

/// Writes `context` as one gzip'd tar into `out` and returns `out` with the layer's digests.
pub fn write_layer<W: Write>(
    context: &Context,
    opts: &LayerOptions,
    out: W,
    observer: &mut dyn LayerObserver,
) -> Result<(W, LayerDigests)> {
    let blob = HashingWriter::new(out);
    let gz = GzipWriter::new(blob, opts.level);
    let buffered = BufWriter::with_capacity(COPY_BUF, gz);
    // The walk calls one of its two callbacks at a time; both report to the observer.
    let observer = std::cell::RefCell::new(observer);
    let mut tar =
        TarWriter { out: HashingWriter::new(buffered), opts, buf: vec![0; COPY_BUF], entries: 0, observer: &observer };

    tar.prefix_dirs(context)?;
    context.walk(&mut |entry| tar.entry(&entry), &mut |path, what| observer.borrow_mut().skipped(path, what))?;
    tar.finish()?;

    let entries = tar.entries;
    let (buffered, diff_id, _) = tar.out.finish();
    let gz = buffered.into_inner().map_err(|e| sink_error(e.into_error()))?;
    let blob = gz.finish().map_err(sink_error)?;
    let (out, digest, size) = blob.finish();
    Ok((out, LayerDigests { digest, diff_id, size, entries }))
}

/// A write error from the sink side: unwrap our own error if the sink wrapped one.
pub fn sink_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(Ok(err)) = e.into_inner().map(|inner| inner.downcast::<Error>()) {
            return *err;
        }
        return Error::Layout("write failed".into());
    }
    Error::Layout(format!("cannot write layer: {e}"))
}

struct TarWriter<'a, 'o, W: Write> {
    out: HashingWriter<W>,
    opts: &'a LayerOptions,
    buf: Vec<u8>,
    entries: u64,
    observer: &'a std::cell::RefCell<&'o mut dyn LayerObserver>,
}

impl<W: Write> TarWriter<'_, '_, W> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if signal::cancelled() {
            return Err(Error::Cancelled);
        }
        self.out.write_all(bytes).map_err(sink_error)
    }

    /// `--prefix /a/b`: directories `a/` and `a/b/` first, the last one with the context root's mode.
    fn prefix_dirs(&mut self, context: &Context) -> Result<()> {
        if self.opts.prefix.is_empty() {
            return Ok(());
        }
        use std::os::unix::fs::MetadataExt;
        let root = context.root_metadata()?;
        let parts: Vec<&str> = self.opts.prefix.split('/').collect();
        for i in 0..parts.len() {
            let last = i + 1 == parts.len();
            let name = self.resolve(&parts[..=i].join("/"), true);
            let mode = if last { root.mode() & 0o7777 } else { 0o755 };
            let mode = self.base_mode(&name).unwrap_or(mode);
            let name = format!("{name}/");
            let mtime = if last { root.mtime() } else { 0 };
            self.header(name.as_bytes(), tar::EntryType::Directory, mode, mtime, 0, None)?;
        }
        Ok(())
    }

    fn name(&self, rel: &str, is_dir: bool) -> String {
        let name = if self.opts.prefix.is_empty() { rel.to_string() } else { format!("{}/{rel}", self.opts.prefix) };
        self.resolve(&name, is_dir)
    }

    /// `name` under the base's symlinks (unchanged without a base).
    fn resolve(&self, name: &str, is_dir: bool) -> String {
        match &self.opts.rootfs {
            Some(fs) => fs.resolve(name, is_dir),
            None => name.to_string(),
        }
    }

    /// The mode of a directory the base already has at `name`.
    fn base_mode(&self, name: &str) -> Option<u32> {
        self.opts.rootfs.as_ref().and_then(|fs| fs.dir_mode(name))
    }

    fn entry(&mut self, entry: &Entry) -> Result<()> {
        let name = self.name(&entry.rel, entry.kind == Kind::Dir);
        match &entry.kind {
            Kind::Dir => {
                let mode = self.base_mode(&name).unwrap_or(entry.mode);
                let name = format!("{name}/");
                self.header(name.as_bytes(), tar::EntryType::Directory, mode, entry.mtime, 0, None)
            }
            Kind::Symlink { target } => {
                self.header(name.as_bytes(), tar::EntryType::Symlink, entry.mode, entry.mtime, 0, Some(target))
            }
            Kind::HardLink { target, .. } => {
                let target = self.name(target, false);
                let t = Some(target.as_bytes());
                self.header(name.as_bytes(), tar::EntryType::Link, entry.mode, entry.mtime, 0, t)
            }
            Kind::File { size } => {
                self.header(name.as_bytes(), tar::EntryType::Regular, entry.mode, entry.mtime, *size, None)?;
                self.file_body(entry, *size)
            }
        }
    }

    /// Copies exactly `size` bytes of the file, failing if it shrank or grew since it was listed.
    fn file_body(&mut self, entry: &Entry, size: u64) -> Result<()> {
        let mut file = File::open(&entry.path).map_err(|e| Error::io(&entry.path, "read", e))?;
        let mut left = size;
        let changed = || {
            Error::Context(format!(
                "{} changed size while it was read (stop whatever writes it, or list it in .dockerignore)",
                entry.path.display()
            ))
        };
        while left > 0 {
            let want = (left.min(self.buf.len() as u64)) as usize;
            let n = match file.read(&mut self.buf[..want]) {
                Ok(0) => return Err(changed()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(&entry.path, "read", e)),
            };
            let chunk = std::mem::take(&mut self.buf);
            let res = self.write(&chunk[..n]);
            self.buf = chunk;
            res?;
            left -= n as u64;
            self.observer.borrow_mut().read(n as u64, u64::from(left == 0));
        }
        let mut probe = [0u8; 1];
        if file.read(&mut probe).map_err(|e| Error::io(&entry.path, "read", e))? != 0 {
            return Err(changed());
        }
        if size == 0 {
            self.observer.borrow_mut().read(0, 1);
        }
        self.pad(size)
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.write(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn header(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        mode: u32,
        mtime: i64,
        size: u64,
        link: Option<&[u8]>,
    ) -> Result<()> {
        let mtime = if self.opts.preserve_mtime { mtime.max(0) as u64 } else { self.opts.epoch };
        let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
        if name.len() > 100 {
            pax.push(("path", name.to_vec()));
        }
        if let Some(link) = link.filter(|l| l.len() > 100) {
            pax.push(("linkpath", link.to_vec()));
        }
        if size > 0o77777777777 {
            pax.push(("size", size.to_string().into_bytes()));
        }
        if !pax.is_empty() {
            let body = pax_records(&pax);
            let mut pax_name = b"PaxHeaders/".to_vec();
            pax_name.extend_from_slice(&name[..name.len().min(100 - pax_name.len())]);
            let h = ustar_header(&pax_name, tar::EntryType::XHeader, 0o644, mtime, body.len() as u64, None, (0, 0));
            self.write(h.as_bytes())?;
            self.write(&body)?;
            self.pad(body.len() as u64)?;
        }
        let h = ustar_header(name, kind, mode, mtime, size, link, self.opts.chown);
        self.write(h.as_bytes())?;
        self.entries += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.write(&[0u8; 2 * BLOCK])?;
        self.out.flush().map_err(sink_error)
    }
}

/// A ustar header with every field pinned; long values are truncated (the PAX header carries them).
pub(crate) fn ustar_header(
    name: &[u8],
    kind: tar::EntryType,
    mode: u32,
    mtime: u64,
    size: u64,
    link: Option<&[u8]>,
    (uid, gid): (u64, u64),
) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().expect("new_ustar is ustar");
        let n = name.len().min(u.name.len());
        u.name[..n].copy_from_slice(&name[..n]);
        if let Some(link) = link {
            let n = link.len().min(u.linkname.len());
            u.linkname[..n].copy_from_slice(&link[..n]);
        }
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    // Sizes beyond the octal field use the PAX record; the header then says 0.
    h.set_size(if size > 0o77777777777 { 0 } else { size });
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_device_major(0).expect("ustar has device fields");
    h.set_device_minor(0).expect("ustar has device fields");
    h.set_cksum();
    h
}

/// PAX records: "LEN key=value\n" where LEN counts the whole record including itself.
fn pax_records(records: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // space, '=', '\n'
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len = len.to_string().len() + rest;
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests;
