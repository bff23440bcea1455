//! Images on disk: an OCI image layout directory, and a single tar that `docker load` accepts.
//!
//! [`LayoutSink`] writes (or adds to) an OCI layout: each blob streams into a temp file inside
//! `blobs/sha256/` and is renamed to its digest on commit, and `index.json` is rewritten through a temp
//! file and a rename, so an interrupted build leaves neither a half blob under a digest nor an index entry
//! for a missing image. Naming an image replaces the index entry with the same full name and keeps the
//! others. [`TarSink`] writes the same layout as one tar plus Docker's `manifest.json`; a blob's tar header
//! is reserved before the blob streams in and patched when its digest and size are known, so this output
//! too is written in one pass with no temp copy. [`Layout`] reads a layout back (for `push --oci-layout`).
//!
//! A layout sink holds a shared lock on `blobs/` for its whole life, from the first "is this blob there?"
//! to the index entry that names the image, so `prune` (which takes that lock exclusively, see
//! [`crate::store`]) cannot delete a blob this run counted on. The local store's sink
//! ([`LayoutSink::store`]) also stamps each index entry with the time it was written
//! (`dev.idpb.stored`): index annotations are outside every image digest, and `images` shows an entry's age
//! from it, where the config's `created` is the reproducible epoch 0.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, ANNOTATION_STORED, Descriptor, Index, Manifest};
use crate::reference::Reference;
use crate::sink::{BlobWriter, ManifestBlob, Sink};

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes `bytes` to `path` through a new temp file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::atomic::write(path, bytes, 0o644)
}

/// Adds `desc` (annotated with the reference's names) to `index`, replacing an entry of the same name.
fn name_in_index(index: &mut Index, mut desc: Descriptor, reference: &Reference) {
    let full = reference.full_name();
    let tag = reference.tag_or_latest().to_string();
    index.manifests.retain(|d| match d.annotations.get(ANNOTATION_CONTAINERD_NAME) {
        Some(name) => *name != full,
        None => d.annotations.get(ANNOTATION_REF_NAME) != Some(&tag),
    });
    desc.annotations.insert(ANNOTATION_REF_NAME.to_string(), tag);
    desc.annotations.insert(ANNOTATION_CONTAINERD_NAME.to_string(), full);
    index.manifests.push(desc);
}

/// A layout's `index.json`; a missing file is an empty index.
pub(crate) fn read_index(path: &Path) -> Result<Index> {
    match crate::atomic::read_capped(path, crate::atomic::IMAGE_JSON_CAP) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::Layout(format!("{} is not a valid image index: {e}", path.display()))),
        Err(e) if e.not_found() => Ok(Index::empty()),
        Err(e) => Err(e.for_path(path, "read")),
    }
}

/// The names an index entry is known by: its full name, then its tag (`ref.name`).
pub fn entry_names(d: &Descriptor) -> Vec<String> {
    [ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME].iter().filter_map(|k| d.annotations.get(*k).cloned()).collect()
}

/// Whether the index entry `d` is the one `want` names: a tag, a full name, or a familiar name.
pub fn entry_matches(d: &Descriptor, want: &str) -> bool {
    let parsed = Reference::parse(want).ok();
    entry_names(d)
        .iter()
        .any(|n| n == want || parsed.as_ref().is_some_and(|p| p.full_name() == *n || p.familiar_name() == *n))
}

/// An OCI image layout on disk, for reading.
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Opens an existing layout.
    pub fn open(root: &Path) -> Result<Layout> {
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            return Err(Error::Layout(format!(
                "{} is not an OCI image layout (no oci-layout file); build one with `docker-idpb build --oci-layout {}`",
                root.display(),
                root.display()
            )));
        }
        Ok(Layout { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The layout's index.json.
    pub fn index(&self) -> Result<Index> {
        let path = self.root.join("index.json");
        let bytes =
            crate::atomic::read_capped(&path, crate::atomic::IMAGE_JSON_CAP).map_err(|e| e.for_path(&path, "read"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Layout(format!("{} is not a valid image index: {e}", path.display())))
    }

    /// Path of a blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The path of a blob that is a regular file inside the layout: not a symlink (which could point
    /// anywhere, e.g. at a secret the push would upload), under `blobs/` and `blobs/sha256/` directories
    /// that are not symlinks either.
    fn checked_blob_path(&self, digest: &Digest) -> Result<PathBuf> {
        let path = self.blob_path(digest);
        for (p, what) in [
            (self.root.join("blobs"), "directory"),
            (self.root.join("blobs/sha256"), "directory"),
            (path.clone(), "file"),
        ] {
            let meta = fs::symlink_metadata(&p).map_err(|e| Error::io(&p, "read blob", e))?;
            let ok = if what == "file" { meta.file_type().is_file() } else { meta.file_type().is_dir() };
            if !ok {
                return Err(Error::Layout(format!(
                    "{} is not a regular {what} inside the layout (a symlink?); refusing to read blob {digest} \
                     through it",
                    crate::progress::escaped(&p.display().to_string())
                )));
            }
        }
        Ok(path)
    }

    /// Reads a whole blob (manifests and configs; layers are streamed with `open_blob`) and checks its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.checked_blob_path(digest)?;
        let bytes = crate::atomic::read_capped(&path, crate::atomic::IMAGE_JSON_CAP)
            .map_err(|e| e.for_path(&path, "read blob"))?;
        if Digest::of(&bytes) != *digest {
            return Err(Error::Layout(format!(
                "blob {} does not match its digest (layout is corrupt)",
                path.display()
            )));
        }
        Ok(bytes)
    }

    /// Opens a blob for streaming.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.checked_blob_path(digest)?;
        File::open(&path).map_err(|e| Error::io(&path, "read blob", e))
    }

    /// Finds the manifest named `name` (a tag, a full name, or a familiar name); with `None`, the only one.
    pub fn find(&self, name: Option<&str>) -> Result<Descriptor> {
        let index = self.index()?;
        let matching: Vec<&Descriptor> = match name {
            None => index.manifests.iter().collect(),
            Some(want) => index.manifests.iter().filter(|d| entry_matches(d, want)).collect(),
        };
        let available = || {
            let all: Vec<String> = index
                .manifests
                .iter()
                .map(|d| entry_names(d).first().cloned().unwrap_or_else(|| d.digest.to_string()))
                .collect();
            if all.is_empty() { "it holds no images".to_string() } else { format!("it holds: {}", all.join(", ")) }
        };
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::Layout(format!(
                "no image {} in {}; {}",
                name.unwrap_or("at all"),
                self.root.display(),
                available()
            ))),
            _ => Err(Error::Layout(format!(
                "{} holds several images; choose one with --image NAME:TAG ({})",
                self.root.display(),
                available()
            ))),
        }
    }
}

/// Writes images into an OCI layout directory (created if missing).
pub struct LayoutSink {
    root: PathBuf,
    blobs: PathBuf,
    /// Stamp index entries with `dev.idpb.stored` (the local store; not a user's layout, whose
    /// `index.json` stays reproducible).
    stamp: bool,
    /// Shared lock on `blobs/`, held until the sink is dropped: `prune` waits for it.
    _blobs_lock: crate::atomic::Locked,
}

impl LayoutSink {
    /// A sink for the layout at `root`: an `--oci-layout` directory.
    pub fn create(root: &Path) -> Result<LayoutSink> {
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, "create directory", e))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, OCI_LAYOUT)?;
        }
        let lock = crate::atomic::Locked::shared(&root.join("blobs"))?;
        Ok(LayoutSink { root: root.to_path_buf(), blobs, stamp: false, _blobs_lock: lock })
    }

    /// A sink for the local store at `root`: index entries record when they were written.
    pub fn store(root: &Path) -> Result<LayoutSink> {
        Ok(LayoutSink { stamp: true, ..LayoutSink::create(root)? })
    }

    fn index(&self) -> Result<Index> {
        read_index(&self.root.join("index.json"))
    }
}

struct LayoutBlobWriter {
    file: File,
    tmp: PathBuf,
    blobs: PathBuf,
}

impl Write for LayoutBlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Wrapped so the pipeline's error names the file (disk full, quota).
        self.file.write(buf).map_err(|e| io::Error::other(Error::io(&self.tmp, "write", e)))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter for LayoutBlobWriter {
    fn commit(self: Box<Self>, digest: &Digest, _size: u64) -> Result<()> {
        let dest = self.blobs.join(digest.hex());
        let res = self.file.sync_all().map_err(|e| Error::io(&self.tmp, "write", e));
        let res = res.and_then(|_| fs::rename(&self.tmp, &dest).map_err(|e| Error::io(&dest, "write", e)));
        if res.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        res
    }

    fn abort(self: Box<Self>) -> Result<()> {
        fs::remove_file(&self.tmp).map_err(|e| Error::io(&self.tmp, "remove", e))
    }
}

impl Drop for LayoutBlobWriter {
    fn drop(&mut self) {
        // Committed writers renamed the file away; anything left is a partial blob.
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Sink for LayoutSink {
    fn has_blob(&mut self, digest: &Digest) -> Result<bool> {
        Ok(self.blobs.join(digest.hex()).is_file())
    }

    fn blob_writer(&mut self) -> Result<Box<dyn BlobWriter + '_>> {
        let (file, tmp) = crate::atomic::temp_file(&self.blobs, "blob", 0o644)
            .map_err(|e| Error::io(&self.blobs, "create a blob in", e))?;
        Ok(Box::new(LayoutBlobWriter { file, tmp, blobs: self.blobs.clone() }))
    }

    fn put_manifest(&mut self, manifest: &ManifestBlob, reference: &Reference) -> Result<()> {
        self.put_blob(&manifest.bytes, &manifest.digest)?;
        // Read, add our entry, replace: under the lock, so concurrent builds into one layout all land.
        let path = self.root.join("index.json");
        let _lock = crate::atomic::Locked::on(&path)?;
        let mut index = self.index()?;
        let mut desc =
            Descriptor::new(manifest.media_type.as_str(), manifest.digest.clone(), manifest.bytes.len() as u64);
        desc.platform = manifest.platform.clone();
        if self.stamp {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            desc.annotations.insert(ANNOTATION_STORED.to_string(), crate::image::rfc3339(now));
        }
        name_in_index(&mut index, desc, reference);
        let bytes = serde_json::to_vec(&index).map_err(|e| Error::Layout(format!("cannot encode index: {e}")))?;
        write_atomic(&path, &bytes)
    }
}

/// Writes a docker-loadable tar: an OCI layout plus `manifest.json`, renamed into place by `finish`.
pub struct TarSink {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    written: std::collections::BTreeSet<Digest>,
    index: Index,
    /// manifest.json entries, keyed by manifest digest so several tags share one entry.
    docker: BTreeMap<Digest, DockerManifestEntry>,
    /// Platform manifests an index names: `docker load` gets the host's (or the first).
    children: std::collections::HashMap<Digest, Vec<u8>>,
}

#[derive(Serialize, Clone)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn tar_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mode = if kind == tar::EntryType::Directory { 0o755 } else { 0o644 };
    let mut h = crate::layer::ustar_header(name.as_bytes(), kind, mode, 0, size, None, (0, 0));
    // Blob names are short, so there is no PAX header here: sizes of 8 GiB and more use the size field's
    // base-256 form (GNU), which every reader of docker tars understands.
    h.set_size(size);
    h.set_cksum();
    h
}

impl TarSink {
    pub fn create(dest: &Path) -> Result<TarSink> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("image.tar");
        let (mut file, tmp) = crate::atomic::temp_file(&dir, name, 0o644).map_err(|e| Error::io(dest, "create", e))?;
        let mut head = Vec::new();
        for dir in ["blobs/", "blobs/sha256/"] {
            head.extend_from_slice(tar_header(dir, tar::EntryType::Directory, 0).as_bytes());
        }
        file.write_all(&head).map_err(|e| Error::io(&tmp, "write", e))?;
        Ok(TarSink {
            dest: dest.to_path_buf(),
            tmp,
            file: Some(file),
            written: Default::default(),
            index: Index::empty(),
            docker: BTreeMap::new(),
            children: Default::default(),
        })
    }

    fn file(&mut self) -> Result<&mut File> {
        self.file.as_mut().ok_or_else(|| Error::Layout("tar output already finished".into()))
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut data = tar_header(name, tar::EntryType::Regular, bytes.len() as u64).as_bytes().to_vec();
        data.extend_from_slice(bytes);
        data.resize(data.len().div_ceil(512) * 512, 0);
        let tmp = self.tmp.clone();
        self.file()?.write_all(&data).map_err(|e| Error::io(&tmp, "write", e))
    }
}

impl Drop for TarSink {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

struct TarBlobWriter<'a> {
    sink: &'a mut TarSink,
    start: u64,
}

impl Write for TarBlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.sink.file.as_mut() {
            Some(f) => f.write(buf).map_err(|e| io::Error::other(Error::io(&self.sink.tmp, "write", e))),
            None => Err(io::Error::other("tar output already finished")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter for TarBlobWriter<'_> {
    fn commit(self: Box<Self>, digest: &Digest, size: u64) -> Result<()> {
        let tmp = self.sink.tmp.clone();
        let duplicate = !self.sink.written.insert(digest.clone());
        let start = self.start;
        let file = self.sink.file()?;
        let io = |e| Error::io(&tmp, "write", e);
        if duplicate {
            file.set_len(start).map_err(io)?;
            file.seek(SeekFrom::Start(start)).map_err(io)?;
            return Ok(());
        }
        let pad = (512 - size % 512) % 512;
        file.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        let end = file.stream_position().map_err(io)?;
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        file.write_all(tar_header(&blob_name(digest), tar::EntryType::Regular, size).as_bytes()).map_err(io)?;
        file.seek(SeekFrom::Start(end)).map_err(io)?;
        Ok(())
    }

    fn abort(self: Box<Self>) -> Result<()> {
        let tmp = self.sink.tmp.clone();
        let start = self.start;
        let file = self.sink.file()?;
        file.set_len(start).map_err(|e| Error::io(&tmp, "write", e))?;
        file.seek(SeekFrom::Start(start)).map_err(|e| Error::io(&tmp, "write", e))?;
        Ok(())
    }
}

impl Sink for TarSink {
    fn has_blob(&mut self, digest: &Digest) -> Result<bool> {
        Ok(self.written.contains(digest))
    }

    fn blob_writer(&mut self) -> Result<Box<dyn BlobWriter + '_>> {
        let tmp = self.tmp.clone();
        let file = self.file()?;
        let start = file.stream_position().map_err(|e| Error::io(&tmp, "write", e))?;
        // Reserve the header; commit writes the real one once digest and size are known.
        file.write_all(&[0u8; 512]).map_err(|e| Error::io(&tmp, "write", e))?;
        Ok(Box::new(TarBlobWriter { sink: self, start }))
    }

    fn put_manifest_untagged(&mut self, manifest: &ManifestBlob) -> Result<()> {
        self.put_blob(&manifest.bytes, &manifest.digest)?;
        self.children.insert(manifest.digest.clone(), manifest.bytes.clone());
        Ok(())
    }

    fn put_manifest(&mut self, manifest: &ManifestBlob, reference: &Reference) -> Result<()> {
        self.put_blob(&manifest.bytes, &manifest.digest)?;
        // Docker loads one image per tag: for an index, the host's platform (else the first).
        let image_bytes = if manifest.media_type.is_index() {
            let index: Index = serde_json::from_slice(&manifest.bytes)
                .map_err(|e| Error::Layout(format!("cannot read back index: {e}")))?;
            let host = crate::image::Platform::host();
            let pick = index
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| p.os == host.os && p.architecture == host.architecture))
                .or_else(|| index.manifests.first())
                .ok_or_else(|| Error::Layout("an empty index cannot be loaded by docker".into()))?;
            self.children.get(&pick.digest).cloned().ok_or_else(|| {
                Error::Layout(format!("the index names {} which this build did not store", pick.digest))
            })?
        } else {
            manifest.bytes.clone()
        };
        let parsed: Manifest = serde_json::from_slice(&image_bytes)
            .map_err(|e| Error::Layout(format!("cannot read back manifest: {e}")))?;
        let mut desc =
            Descriptor::new(manifest.media_type.as_str(), manifest.digest.clone(), manifest.bytes.len() as u64);
        desc.platform = manifest.platform.clone();
        name_in_index(&mut self.index, desc, reference);
        let entry = self.docker.entry(manifest.digest.clone()).or_insert_with(|| DockerManifestEntry {
            config: blob_name(&parsed.config.digest),
            repo_tags: Vec::new(),
            layers: parsed.layers.iter().map(|l| blob_name(&l.digest)).collect(),
        });
        let tag = reference.familiar_name();
        if !entry.repo_tags.contains(&tag) {
            entry.repo_tags.push(tag);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let enc = |e: serde_json::Error| Error::Layout(format!("cannot encode tar metadata: {e}"));
        let index = serde_json::to_vec(&self.index).map_err(enc)?;
        let docker: Vec<DockerManifestEntry> = self.docker.values().cloned().collect();
        let docker = serde_json::to_vec(&docker).map_err(enc)?;
        self.append("oci-layout", OCI_LAYOUT)?;
        self.append("index.json", &index)?;
        self.append("manifest.json", &docker)?;
        let tmp = self.tmp.clone();
        let mut file = self.file.take().ok_or_else(|| Error::Layout("tar output already finished".into()))?;
        let io = |e| Error::io(&tmp, "write", e);
        file.write_all(&[0u8; 1024]).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).map_err(|e| {
            let _ = fs::remove_file(&self.tmp);
            Error::io(&self.dest, "write", e)
        })
    }
}
