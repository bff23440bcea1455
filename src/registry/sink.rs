//! A registry as a [`Sink`]: one host, one or more repositories on it.
//!
//! Blobs are uploaded once per registry: the first repository receives the stream, and before a manifest is
//! PUT into another repository of the same registry, each blob it names is checked there (HEAD) and, if
//! missing, brought over by a cross-repository mount (`POST ?mount=&from=`, whose token asks `pull` on the
//! source). A registry that refuses the mount (Harbor across projects, a token without `pull` on the
//! source) gets the blob copied instead: streamed from the first repository into an upload in the other,
//! verified on the way, memory bounded by the chunk size. Manifests are PUT per tag, only after every blob
//! they name was confirmed, and the registry's `Docker-Content-Digest` is checked against ours.

use std::cell::Cell;

use super::upload::Upload;
use super::{Access, MANIFEST_ACCEPT, MANIFEST_LIMIT, Registry, Request};
use crate::base::BlobSource;
use crate::digest::Digest;
use crate::error::{Error, Restart, Result};
use crate::image::Descriptor;
use crate::progress::Meter;
use crate::reference::Reference;
use crate::sink::{BlobOutcome, BlobWriter, Fanout, ManifestBlob, Sink};

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
    /// Which repositories of this registry received which blobs in earlier runs, to mount from.
    homes: Option<BlobHomes>,
    /// The registry refused a whole-blob PATCH: copies go in chunks for the rest of the run.
    whole_refused: bool,
    /// Platform manifests stored by digest in the first repository, which an index names: other
    /// repositories get them (and their blobs) before the index.
    untagged: std::collections::HashMap<Digest, ManifestBlob>,
}

/// Which repositories of one registry hold which blobs, remembered across runs in the local store (as
/// Docker's engine remembers where it pushed a layer), so a layer pushed before to another repository of
/// the same registry is mounted instead of sent again. A stale entry costs one refused mount.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct BlobHomes {
    #[serde(skip)]
    path: std::path::PathBuf,
    #[serde(default)]
    blobs: std::collections::BTreeMap<String, Vec<String>>,
}

/// Repositories remembered per blob, and blobs per registry (the oldest are forgotten first).
const HOMES_PER_BLOB: usize = 4;
const HOMES_BLOBS: usize = 20_000;

impl BlobHomes {
    fn load(dir: &std::path::Path, host: &str) -> BlobHomes {
        use sha2::Digest as _;
        let name = hex::encode(sha2::Sha256::digest(host.as_bytes()));
        let path = dir.join(format!("homes-{}.json", &name[..16]));
        let read = std::fs::File::open(&path).ok().and_then(|f| {
            // Bounded: a damaged or huge file is just forgotten.
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, 16 * 1024 * 1024), &mut bytes).ok()?;
            serde_json::from_slice::<BlobHomes>(&bytes).ok()
        });
        BlobHomes { path, ..read.unwrap_or_default() }
    }

    fn repos(&self, digest: &Digest) -> Vec<String> {
        self.blobs.get(digest.as_str()).cloned().unwrap_or_default()
    }

    fn remember(&mut self, digest: &Digest, repo: &str) {
        if self.blobs.len() >= HOMES_BLOBS && !self.blobs.contains_key(digest.as_str()) {
            return;
        }
        let repos = self.blobs.entry(digest.to_string()).or_default();
        repos.retain(|r| r != repo);
        repos.insert(0, repo.to_string());
        repos.truncate(HOMES_PER_BLOB);
    }

    fn save(&self) {
        let Some(dir) = self.path.parent() else { return };
        let Ok(bytes) = serde_json::to_vec(self) else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let _ = crate::atomic::write(&self.path, &bytes, 0o644);
    }
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

impl PushReport {
    /// Several sinks' reports as one.
    pub fn merged<'a>(reports: impl Iterator<Item = &'a PushReport>) -> PushReport {
        let mut all = PushReport::default();
        for r in reports {
            all.blobs_uploaded.extend(r.blobs_uploaded.iter().cloned());
            all.blobs_skipped.extend(r.blobs_skipped.iter().cloned());
            all.blobs_mounted.extend(r.blobs_mounted.iter().cloned());
            all.bytes_uploaded += r.bytes_uploaded;
            all.manifests += r.manifests;
        }
        all
    }
}

/// One sink per registry host among `names` (in the order hosts first appear), each connected with the
/// credentials `lookup` finds for it; the repositories of one host share the sink.
pub fn connect_targets(
    names: &[Reference],
    lookup: &crate::credentials::Lookup,
    opts: &super::ConnectOptions,
    chunk: usize,
    progress: &mut crate::progress::Progress,
) -> Result<Vec<RegistrySink>> {
    let mut hosts: Vec<(String, Vec<String>)> = Vec::new();
    for n in names {
        let host = n.api_host().to_string();
        match hosts.iter_mut().find(|(h, _)| *h == host) {
            Some((_, repos)) if !repos.contains(&n.repository) => repos.push(n.repository.clone()),
            Some(_) => {}
            None => hosts.push((host, vec![n.repository.clone()])),
        }
    }
    let mut sinks = Vec::new();
    for (host, repos) in hosts {
        let registry = super::open(&host, lookup, opts, progress)?;
        sinks.push(RegistrySink::new(registry, repos, chunk));
    }
    Ok(sinks)
}

/// Runs `f` on the one sink, or on a [`Fanout`] of them that gives each host its own names: one stream
/// feeds every registry.
pub fn with_targets<T>(sinks: &mut [RegistrySink], f: impl FnOnce(&mut dyn Sink) -> T) -> T {
    if let [one] = sinks {
        return f(one);
    }
    let mut fanout = Fanout::new();
    for sink in sinks.iter_mut() {
        let host = sink.registry.host().to_string();
        fanout.add(move |r: &Reference| r.api_host() == host, sink);
    }
    f(&mut fanout)
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
            homes: None,
            whole_refused: false,
            untagged: Default::default(),
        }
    }

    /// Remembers (in `dir`, the local store's cache) which repositories received which blobs, and mounts
    /// from them in later runs.
    pub fn remember_blobs_in(&mut self, dir: &std::path::Path) {
        self.homes = Some(BlobHomes::load(dir, self.registry.host()));
    }

    /// Makes every blob `manifest` names present in `repo` (of this registry): found, mounted from the
    /// first repository, or copied from it.
    fn bring_blobs(&mut self, repo: &str, manifest: &ManifestBlob) -> Result<()> {
        let parsed: crate::image::Manifest = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| Error::protocol(format!("cannot read back manifest: {e}")))?;
        let mut blobs = vec![(parsed.config.digest.clone(), parsed.config.size)];
        blobs.extend(parsed.layers.iter().map(|l| (l.digest.clone(), l.size)));
        let from = self.repos[0].clone();
        for (d, size) in blobs {
            if self.registry.blob_exists(repo, &d)? {
                continue;
            }
            if self.registry.mount(repo, &from, &d)? {
                self.report.blobs_mounted.push(format!("{repo}@{d}"));
                continue;
            }
            // Refused: copy it over, streamed from the repository that has it (a second handle reads).
            let mut reader = self.registry.clone();
            let mut open = || -> Result<Box<dyn std::io::Read + Send>> {
                Ok(Box::new(reader.open_blob(&from, &d)?) as Box<dyn std::io::Read + Send>)
            };
            let RegistrySink { registry, chunk, chunked_refused, whole_refused, .. } = self;
            let refused = Refusals { chunked: chunked_refused, whole: whole_refused };
            copy_into(registry, repo, &d, size, chunk, refused, &mut open)?;
            self.report.blobs_uploaded.push(d.to_string());
            self.report.bytes_uploaded += size;
        }
        Ok(())
    }

    fn remember(&mut self, digest: &Digest, repo: &str) {
        if let Some(h) = &mut self.homes {
            h.remember(digest, repo);
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
                .is_some_and(|e| matches!(e, Error::Restart(Restart::ChunkedRefused(_))))
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
            *chunked_refused |= matches!(e, Error::Restart(Restart::ChunkedRefused(_)));
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
        Ok(self.find_blob(digest)?.is_some())
    }

    fn find_blob(&mut self, digest: &Digest) -> Result<Option<BlobOutcome>> {
        // Blobs go to the first repository; `put_manifest` mounts them into the others.
        if self.present.contains(digest) {
            return Ok(Some(BlobOutcome::Present));
        }
        let first = self.repos[0].clone();
        if self.registry.blob_exists(&first, digest)? {
            self.present.insert(digest.clone());
            self.report.blobs_skipped.push(digest.to_string());
            self.remember(digest, &first);
            return Ok(Some(BlobOutcome::Present));
        }
        // Pushed to another repository of this registry before: mount it from there.
        let known = self.homes.as_ref().map(|h| h.repos(digest)).unwrap_or_default();
        for from in known.iter().filter(|r| **r != first).take(2) {
            if self.registry.mount(&first, from, digest)? {
                self.present.insert(digest.clone());
                self.report.blobs_mounted.push(format!("{first}@{digest}"));
                self.remember(digest, &first);
                return Ok(Some(BlobOutcome::Mounted(from.clone())));
            }
        }
        Ok(None)
    }

    fn finish(&mut self) -> Result<()> {
        // Every blob of this run is in every repository it pushed to.
        let repos = self.repos.clone();
        let present: Vec<Digest> = self.present.iter().cloned().collect();
        for d in &present {
            for r in &repos {
                self.remember(d, r);
            }
        }
        if let Some(h) = &self.homes {
            h.save();
        }
        Ok(())
    }

    fn blob_writer(&mut self) -> Result<Box<dyn BlobWriter + '_>> {
        if self.chunked_refused {
            return Err(Error::Restart(Restart::ChunkedRefused(format!(
                "{} refuses chunked uploads",
                self.registry.host()
            ))));
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
                Err(Error::Restart(Restart::ChunkedRefused(_))) => {}
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

    /// A base blob: present (HEAD), mounted from the base's repository when it is on this registry, else
    /// streamed from the base's registry into an upload, verified (again from its first byte if the
    /// session is lost).
    fn put_base_blob(&mut self, desc: &Descriptor, source: &mut BlobSource, meter: &Meter) -> Result<BlobOutcome> {
        if let Some(found) = self.find_blob(&desc.digest)? {
            return Ok(found);
        }
        let first = self.repos[0].clone();
        if let Some((host, from)) = source.mount_point()
            && host == self.registry.host()
            && from != first
            && self.registry.mount(&first, from, &desc.digest)?
        {
            self.present.insert(desc.digest.clone());
            self.report.blobs_mounted.push(format!("{first}@{}", desc.digest));
            return Ok(BlobOutcome::Mounted(from.to_string()));
        }
        let digest = desc.digest.clone();
        let mut open =
            || -> Result<Box<dyn std::io::Read + Send>> { Ok(Box::new(meter.reader(source.open(&digest)?))) };
        let RegistrySink { registry, chunk, chunked_refused, whole_refused, .. } = self;
        let refused = Refusals { chunked: chunked_refused, whole: whole_refused };
        copy_into(registry, &first, &desc.digest, desc.size, chunk, refused, &mut open)?;
        self.present.insert(desc.digest.clone());
        self.report.blobs_uploaded.push(desc.digest.to_string());
        self.report.bytes_uploaded += desc.size;
        Ok(BlobOutcome::Sent)
    }

    fn put_manifest_untagged(&mut self, manifest: &ManifestBlob) -> Result<()> {
        let first = self.repos[0].clone();
        self.registry.put_manifest(&first, manifest.digest.as_str(), manifest)?;
        self.report.manifests += 1;
        self.untagged.insert(manifest.digest.clone(), manifest.clone());
        Ok(())
    }

    fn put_manifest(&mut self, manifest: &ManifestBlob, reference: &Reference) -> Result<()> {
        let repo = reference.repository.clone();
        // Blobs streamed into the first repository must be in this one too; for an index, each platform's
        // manifest and its blobs.
        if repo != self.repos[0] {
            if manifest.media_type.is_index() {
                let index: crate::image::Index = serde_json::from_slice(&manifest.bytes)
                    .map_err(|e| Error::protocol(format!("cannot read back index: {e}")))?;
                for entry in &index.manifests {
                    let Some(child) = self.untagged.get(&entry.digest).cloned() else {
                        return Err(Error::protocol(format!(
                            "the index names {} which this push did not store",
                            entry.digest
                        )));
                    };
                    self.bring_blobs(&repo, &child)?;
                    self.registry.put_manifest(&repo, child.digest.as_str(), &child)?;
                    self.report.manifests += 1;
                }
            } else {
                self.bring_blobs(&repo, manifest)?;
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
    /// HEAD a blob: whether `repo` has it (asked with push access: the sink writes there anyway, and one
    /// token then serves every request).
    pub fn blob_exists(&mut self, repo: &str, digest: &Digest) -> Result<bool> {
        let req = Request::new("HEAD", format!("/v2/{repo}/blobs/{digest}"), "checking for a blob").push(repo);
        let resp = self.send(&req)?;
        match resp.status {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(&req, &resp)),
        }
    }

    /// Cross-repository mount; false when the registry refuses it (an upload session instead, or a 401/403
    /// even with `pull` on the source asked for).
    pub fn mount(&mut self, repo: &str, from: &str, digest: &Digest) -> Result<bool> {
        let url = format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}");
        let req = Request::new("POST", url, "mounting a blob")
            .access(Access::Mount { repo: repo.to_string(), from: from.to_string() })
            .header("Content-Length", "0");
        let resp = match self.send(&req) {
            Ok(resp) => resp,
            Err(Error::Auth(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        match resp.status {
            201 => Ok(true),
            202 => {
                // An upload session was opened instead; close it.
                if let Some(loc) = resp.header("location") {
                    let _ = self.delete_session(loc.trim(), repo);
                }
                Ok(false)
            }
            401 | 403 => Ok(false),
            _ => Err(self.status_error(&req, &resp)),
        }
    }

    /// A blob's bytes as a stream (GET, redirects to storage hosts followed without Authorization).
    pub fn open_blob(&mut self, repo: &str, digest: &Digest) -> Result<super::conduit::Reader> {
        let req = Request::new("GET", format!("/v2/{repo}/blobs/{digest}"), "reading a blob").pull(repo).streamed();
        let resp = self.send(&req)?;
        match (resp.status, resp.stream) {
            (200, Some(stream)) => Ok(stream),
            (status, _) => {
                let resp = super::Response { status, stream: None, ..resp };
                Err(self.status_error(&req, &resp))
            }
        }
    }

    /// PUT a manifest under `tag`; checks the registry's digest against ours.
    pub fn put_manifest(&mut self, repo: &str, tag: &str, manifest: &ManifestBlob) -> Result<Digest> {
        let req = Request::new("PUT", format!("/v2/{repo}/manifests/{tag}"), "pushing the manifest")
            .push(repo)
            .header("Content-Type", manifest.media_type.to_string())
            .body(&manifest.bytes);
        let resp = self.send(&req)?;
        if !matches!(resp.status, 200 | 201 | 202 | 204) {
            return Err(self.status_error(&req, &resp));
        }
        if let Some(got) = resp.header("docker-content-digest")
            && got.trim() != manifest.digest.as_str()
        {
            return Err(Error::protocol(format!(
                "{} stored the manifest as {} but its digest is {}; the registry rewrote it",
                self.host(),
                got.trim(),
                manifest.digest
            )));
        }
        Ok(manifest.digest.clone())
    }

    /// GET a manifest (any media type, at most [`MANIFEST_LIMIT`]); returns bytes and content type.
    pub fn get_manifest(&mut self, repo: &str, reference: &str) -> Result<(Vec<u8>, String)> {
        let req = Request::new("GET", format!("/v2/{repo}/manifests/{reference}"), "reading the manifest")
            .pull(repo)
            .header("Accept", MANIFEST_ACCEPT)
            .limit(MANIFEST_LIMIT);
        let resp = self.send(&req)?;
        if resp.status != 200 {
            return Err(self.status_error(&req, &resp));
        }
        if resp.truncated {
            return Err(Error::protocol(format!(
                "{}/{repo}:{reference}: the manifest is larger than {} MiB, the most registries and runtimes \
                 accept; refusing it",
                self.host(),
                MANIFEST_LIMIT / (1024 * 1024)
            )));
        }
        let media = resp.header("content-type").unwrap_or_default().to_string();
        Ok((resp.body, media))
    }
}

/// Opens a blob's bytes, again for every attempt.
pub type Opener<'a> = dyn FnMut() -> Result<Box<dyn std::io::Read + Send>> + Send + 'a;

/// What a registry refused this run, so copies do not ask again.
pub struct Refusals<'a> {
    pub chunked: &'a mut bool,
    pub whole: &'a mut bool,
}

/// Uploads the blob `digest` of `size` bytes into `repo`, reading it from `open`, verified on the way:
/// as one streamed PATCH (the fast way between registries), else chunked (again from the first byte if the
/// session is lost), or as one PUT when the registry refuses chunked uploads. Restart signals never escape.
pub fn copy_into(
    registry: &mut Registry,
    repo: &str,
    digest: &Digest,
    size: u64,
    chunk: &Cell<usize>,
    refused: Refusals<'_>,
    open: &mut Opener<'_>,
) -> Result<()> {
    let chunked_refused = refused.chunked;
    if !*chunked_refused && !*refused.whole && size > 0 {
        match super::upload::put_whole(registry, repo, digest, size, open()?) {
            Ok(super::upload::Whole::Stored) => return Ok(()),
            Ok(super::upload::Whole::TooLarge) => *refused.whole = true,
            Ok(super::upload::Whole::Failed) | Err(Error::Restart(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let mut attempt = 0;
    while !*chunked_refused {
        attempt += 1;
        let reader = open()?;
        let upload = Upload::start(registry, repo, chunk)?;
        match crate::sink::copy_verified_from(Box::new(upload), digest, size, reader) {
            Err(Error::Restart(Restart::UploadLost(_))) if attempt < 5 => {}
            Err(Error::Restart(Restart::ChunkedRefused(_))) => *chunked_refused = true,
            Err(Error::Restart(r)) => return Err(Error::protocol(format!("{}; giving up", r.reason()))),
            other => return other,
        }
    }
    let open = std::sync::Mutex::new(open);
    let produce = |w: &mut dyn std::io::Write| -> Result<()> {
        let reader = (open.lock().map_err(|_| Error::protocol("the blob source failed"))?)()?;
        crate::sink::copy_checked(w, digest, size, reader)
    };
    super::upload::put_monolithic(registry, repo, digest, size, &produce)
}
