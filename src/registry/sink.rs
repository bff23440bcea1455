//! A registry as a [`Sink`]: one host, one or more repositories on it.
//!
//! Blobs are uploaded once per registry: the first repository receives the stream, and before a manifest is
//! PUT into another repository of the same registry, each blob it names is checked there (HEAD) and, if
//! missing, brought over by a cross-repository mount (`POST ?mount=&from=`). A registry that refuses the
//! mount (Harbor across projects) gets a clear error naming the tag to push separately. Manifests are PUT
//! per tag, only after every blob they name was confirmed, and the registry's `Docker-Content-Digest` is
//! checked against ours.

use std::cell::Cell;

use super::upload::Upload;
use super::{MANIFEST_ACCEPT, Registry, Request};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Reference;
use crate::sink::{BlobWriter, ManifestBlob, Sink};

/// Default upload chunk size: see the README's push benchmark for the measurement behind it.
pub const DEFAULT_CHUNK: usize = 8 * 1024 * 1024;

/// Pushes images into repositories of one registry.
pub struct RegistrySink {
    pub registry: Registry,
    repos: Vec<String>,
    chunk: Cell<usize>,
    /// Blobs known to be in every repository, so a blob is checked and sent once per run.
    present: std::collections::HashSet<Digest>,
    /// What was actually sent (for `--format json` and tests): layer and config uploads, mounts, manifests.
    pub report: PushReport,
    /// Per-tag results of manifest PUTs.
    pub pushed: Vec<(Reference, std::result::Result<Digest, String>)>,
    /// The registry refused a chunked upload: later blobs go straight to one PUT each.
    chunked_refused: bool,
}

/// What a push sent over the network.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PushReport {
    pub blobs_uploaded: Vec<String>,
    pub blobs_skipped: Vec<String>,
    pub blobs_mounted: Vec<String>,
    pub bytes_uploaded: u64,
    pub manifests: u64,
}

impl RegistrySink {
    pub fn new(registry: Registry, repos: Vec<String>, chunk: usize) -> RegistrySink {
        RegistrySink {
            registry,
            repos,
            chunk: Cell::new(chunk),
            present: Default::default(),
            report: PushReport::default(),
            pushed: Vec::new(),
            chunked_refused: false,
        }
    }
}

/// The upload writer plus what the sink needs to finish the job on commit.
struct SinkUpload<'a> {
    upload: Upload<'a>,
    report: &'a mut PushReport,
    present: &'a mut std::collections::HashSet<Digest>,
    chunked_refused: &'a mut bool,
}

impl std::io::Write for SinkUpload<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let result = self.upload.write(buf);
        if let Err(e) = &result
            && e.get_ref()
                .and_then(|inner| inner.downcast_ref::<Error>())
                .is_some_and(|e| matches!(e, Error::ChunkedRefused(_)))
        {
            *self.chunked_refused = true;
        }
        result
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BlobWriter for SinkUpload<'_> {
    fn commit(self: Box<Self>, digest: &Digest, size: u64) -> Result<()> {
        let SinkUpload { upload, report, present, chunked_refused } = *self;
        if let Err(e) = Box::new(upload).commit(digest, size) {
            *chunked_refused |= matches!(e, Error::ChunkedRefused(_));
            return Err(e);
        }
        report.blobs_uploaded.push(digest.to_string());
        report.bytes_uploaded += size;
        present.insert(digest.clone());
        Ok(())
    }

    fn abort(self: Box<Self>) -> Result<()> {
        Box::new(self.upload).abort()
    }
}

impl Sink for RegistrySink {
    fn has_blob(&mut self, digest: &Digest) -> Result<bool> {
        // Blobs go to the first repository; `put_manifest` mounts them into the others.
        if self.present.contains(digest) {
            return Ok(true);
        }
        let first = self.repos[0].clone();
        if !self.registry.blob_exists(&first, digest)? {
            return Ok(false);
        }
        self.present.insert(digest.clone());
        self.report.blobs_skipped.push(digest.to_string());
        Ok(true)
    }

    fn blob_writer(&mut self) -> Result<Box<dyn BlobWriter + '_>> {
        if self.chunked_refused {
            return Err(Error::ChunkedRefused(format!("{} refuses chunked uploads", self.registry.host())));
        }
        let first = self.repos[0].clone();
        // Split borrows: the upload needs the registry and chunk size, the commit needs report and set.
        let RegistrySink { registry, chunk, report, present, chunked_refused, .. } = self;
        let upload = Upload::start(registry, &first, chunk)?;
        Ok(Box::new(SinkUpload { upload, report, present, chunked_refused }))
    }

    /// Chunked first (unless the registry refused it before in this run), else one monolithic PUT: the
    /// blob's digest is known, so the bytes can be produced again for it.
    fn put_blob_streamed(&mut self, digest: &Digest, size: u64, produce: &crate::sink::Produce<'_>) -> Result<()> {
        if !self.chunked_refused {
            match crate::sink::write_blob(self.blob_writer()?, digest, size, produce) {
                Err(Error::ChunkedRefused(_)) => {}
                other => return other,
            }
        }
        let first = self.repos[0].clone();
        super::upload::put_monolithic(&mut self.registry, &first, digest, size, produce)?;
        self.present.insert(digest.clone());
        self.report.blobs_uploaded.push(digest.to_string());
        self.report.bytes_uploaded += size;
        Ok(())
    }

    fn put_manifest(&mut self, manifest: &ManifestBlob, reference: &Reference) -> Result<()> {
        let repo = reference.repository.clone();
        // Blobs streamed into the first repository must be in this one too.
        if repo != self.repos[0] {
            let parsed: crate::image::Manifest = serde_json::from_slice(&manifest.bytes)
                .map_err(|e| Error::Registry(format!("cannot read back manifest: {e}")))?;
            let mut digests = vec![parsed.config.digest.clone()];
            digests.extend(parsed.layers.iter().map(|l| l.digest.clone()));
            for d in digests {
                if self.registry.blob_exists(&repo, &d)? {
                    continue;
                }
                if !self.registry.mount(&repo, &self.repos[0], &d)? {
                    return Err(Error::Registry(format!(
                        "{} refused to mount {d} from {} into {repo}; push that tag separately",
                        self.registry.host(),
                        self.repos[0]
                    )));
                }
                self.report.blobs_mounted.push(format!("{repo}@{d}"));
            }
        }
        let result = self.registry.put_manifest(&repo, reference.tag_or_latest(), manifest);
        if result.is_ok() {
            self.report.manifests += 1;
        }
        self.pushed.push((reference.clone(), result.as_ref().map(Digest::clone).map_err(|e| e.to_string())));
        result.map(|_| ())
    }
}

impl Registry {
    /// HEAD a blob: whether `repo` has it.
    pub fn blob_exists(&mut self, repo: &str, digest: &Digest) -> Result<bool> {
        let req = Request::new("HEAD", format!("/v2/{repo}/blobs/{digest}"), "check blob").repository(repo);
        let resp = self.send(&req)?;
        match resp.status {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(&req, &resp)),
        }
    }

    /// Cross-repository mount; false when the registry answers with an upload session instead (refused).
    pub fn mount(&mut self, repo: &str, from: &str, digest: &Digest) -> Result<bool> {
        let url = format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}");
        let req = Request::new("POST", url, "mount blob").repository(repo).header("Content-Length", "0");
        let resp = self.send(&req)?;
        match resp.status {
            201 => Ok(true),
            202 => {
                // An upload session was opened instead; close it.
                if let Some(loc) = resp.header("location") {
                    let loc = self.resolve(loc);
                    let _ = self.send(&Request::new("DELETE", loc, "cancel blob upload").repository(repo));
                }
                Ok(false)
            }
            _ => Err(self.status_error(&req, &resp)),
        }
    }

    /// PUT a manifest under `tag`; checks the registry's digest against ours.
    pub fn put_manifest(&mut self, repo: &str, tag: &str, manifest: &ManifestBlob) -> Result<Digest> {
        let req = Request::new("PUT", format!("/v2/{repo}/manifests/{tag}"), "push manifest")
            .repository(repo)
            .header("Content-Type", manifest.media_type.clone())
            .body(&manifest.bytes);
        let resp = self.send(&req)?;
        if !matches!(resp.status, 200 | 201 | 202 | 204) {
            return Err(self.status_error(&req, &resp));
        }
        if let Some(got) = resp.header("docker-content-digest")
            && got.trim() != manifest.digest.as_str()
        {
            return Err(Error::Registry(format!(
                "{} stored the manifest as {} but its digest is {}; the registry rewrote it",
                self.host(),
                got.trim(),
                manifest.digest
            )));
        }
        Ok(manifest.digest.clone())
    }

    /// GET a manifest (any media type); returns bytes and content type.
    pub fn get_manifest(&mut self, repo: &str, reference: &str) -> Result<(Vec<u8>, String)> {
        let req = Request::new("GET", format!("/v2/{repo}/manifests/{reference}"), "read manifest")
            .repository(repo)
            .header("Accept", MANIFEST_ACCEPT);
        let resp = self.send(&req)?;
        if resp.status != 200 {
            return Err(self.status_error(&req, &resp));
        }
        let media = resp.header("content-type").unwrap_or_default().to_string();
        Ok((resp.body, media))
    }
}
