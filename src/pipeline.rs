//! The one pipeline behind `build` and `push`: context -> layer -> image -> sink.
//!
//! `run` streams the layer into a blob writer the sink hands out, commits it under the digest computed on
//! the way, then stores the config and a manifest per name. The sink is the only thing that differs between
//! writing an OCI layout, a docker-loadable tar, the local store and a registry, so there is no second code
//! path for "push what was built". A failure anywhere aborts the open blob writer (a temp file is removed,
//! an upload session deleted) and no manifest is stored, so no name ever points at a partial image.

use std::io::Write;

use crate::base::Base;
use crate::cache::LayerCache;
use crate::digest::Digest;
use crate::error::{Error, Restart, Result};
use crate::image::{
    ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME, Descriptor, ImageOptions, MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LAYER_GZIP, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST, Manifest, Platform,
};
use crate::layer::{LayerDigests, LayerObserver, LayerOptions, write_layer};
use crate::layout::Layout;
use crate::progress::{Meter, Progress, Total, What};
use crate::reference::Reference;
use crate::rootfs::RootFs;
use crate::sink::{BlobOutcome, BlobWriter, ManifestBlob, Sink};
use crate::walk::{Context, Kind, Split};

/// What to build.
#[derive(Debug, Clone)]
pub struct Plan {
    pub context: Context,
    pub layer: LayerOptions,
    pub image: ImageOptions,
    /// `--layer` patterns: one layer per pattern with files, then the rest.
    pub split: Split,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Built {
    pub manifest: ManifestBlob,
    pub config_digest: Digest,
    /// The config blob, as stored.
    pub config: Vec<u8>,
    /// The last of our layers (the whole context without `--layer`).
    pub layer: LayerDigests,
    /// Every layer we wrote, in image order (after the base's).
    pub layers: Vec<LayerDigests>,
}

/// What the layer writer tells the pipeline: special files the walk left out (collected, to be reported
/// once the stream is done) and how much of the context it read (on the layer's meter, from the
/// compressing thread).
struct Observer {
    skipped: Vec<(std::path::PathBuf, String)>,
    meter: Meter,
}

impl Observer {
    fn new(meter: Meter) -> Observer {
        Observer { skipped: Vec::new(), meter }
    }

    fn report(&self, progress: &mut Progress) {
        for (path, what) in &self.skipped {
            let path = crate::progress::escaped(&path.display().to_string());
            progress.warn(&format!("skipped {path} ({what}: cannot be stored in an image)"));
        }
    }
}

impl LayerObserver for Observer {
    fn skipped(&mut self, path: &std::path::Path, what: &str) {
        self.skipped.push((path.to_path_buf(), what.to_string()));
    }

    fn read(&mut self, bytes: u64, files: u64) {
        self.meter.read(bytes, files);
    }
}

/// Counts bytes on a blob's meter on their way to the sink.
struct Counted<'a, W: Write> {
    inner: W,
    meter: &'a Meter,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.meter.sent(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams the plan's layer into `sink`; returns its digests. With a cache, an unchanged context whose
/// layer the sink already holds is neither read nor sent. A sink that lost the upload session gets the
/// layer again from its first byte (the stream is deterministic), a bounded number of times.
pub fn store_layer(
    plan: &Plan,
    sink: &mut dyn Sink,
    progress: &mut Progress,
    cache: Option<&LayerCache>,
) -> Result<LayerDigests> {
    store_layer_as(plan, sink, progress, cache, What::Layer)
}

/// [`store_layer`], shown on the display as `what` (one layer of several, or the only one).
fn store_layer_as(
    plan: &Plan,
    sink: &mut dyn Sink,
    progress: &mut Progress,
    cache: Option<&LayerCache>,
    what: What,
) -> Result<LayerDigests> {
    let (fingerprint, size) = match cache {
        Some(_) => {
            let (fp, size) = LayerCache::fingerprint_and_size(&plan.context, &plan.layer)?;
            (Some(fp), Some(size))
        }
        None => (None, None),
    };
    if let (Some(cache), Some(fp)) = (cache, &fingerprint)
        && let Some(digests) = cache.get(fp)
        && let Some(found) = sink.find_blob(&digests.digest)?
    {
        progress.stored(what, &digests.digest, digests.size, &found);
        return Ok(digests);
    }
    // The display's totals: the cache's stat walk counted them, or one of our own does (cheap next to
    // compressing the context, and skipped when nothing is shown).
    let total = match size {
        Some(size) => Total::Context(size),
        None if progress.is_quiet() => Total::Unknown,
        None => Total::Context(plan.context.size()?),
    };
    let digests = restreaming(
        progress,
        sink,
        "the layer",
        |progress, sink| stream_layer(plan, sink, progress, what, total),
        |progress, sink, why| monolithic_layer(plan, sink, progress, why, what),
    )?;
    if let (Some(cache), Some(fp)) = (cache, fingerprint) {
        // Only if nothing changed while it was read.
        if LayerCache::fingerprint(&plan.context, &plan.layer)? == fp {
            cache.put(&fp, &digests);
        }
    }
    Ok(digests)
}

/// Sends a blob with `send`, again from its first byte when the registry lost the upload session (a
/// bounded number of times: each loss already came after the per-request retries), and with `single_put`
/// when the registry refuses chunked uploads. The one re-stream loop for every blob source, so a layer from
/// the context and a blob from a layout recover alike.
fn restreaming<T>(
    progress: &mut Progress,
    sink: &mut dyn Sink,
    what: &str,
    mut send: impl FnMut(&mut Progress, &mut dyn Sink) -> Result<T>,
    single_put: impl FnOnce(&mut Progress, &mut dyn Sink, &str) -> Result<T>,
) -> Result<T> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match send(progress, sink) {
            Err(Error::Restart(Restart::UploadLost(why))) if attempt < MAX_RESTREAMS => {
                progress.warn(&format!("{why}; sending {what} again"));
            }
            Err(Error::Restart(Restart::UploadLost(why))) => {
                return Err(Error::protocol(format!("{why}, {attempt} times in a row; giving up")));
            }
            Err(Error::Restart(Restart::ChunkedRefused(why))) => return single_put(progress, sink, &why),
            other => return other,
        }
    }
}

/// For a registry without chunked upload: one pass to learn digest and size, then a second streamed
/// into a single PUT. Compressing twice keeps memory bounded, where buffering the blob would not.
fn monolithic_layer(
    plan: &Plan,
    sink: &mut dyn Sink,
    progress: &mut Progress,
    why: &str,
    what: What,
) -> Result<LayerDigests> {
    progress.note(&format!("{why}; sending the layer as one request (compressing it twice to keep memory bounded)"));
    let mut observer = Observer::new(Meter::detached());
    let (_, digests) = write_layer(&plan.context, &plan.layer, std::io::sink(), &mut observer)?;
    observer.report(progress);
    if let Some(found) = sink.find_blob(&digests.digest)? {
        progress.stored(what, &digests.digest, digests.size, &found);
        return Ok(digests);
    }
    let meter = progress.start(what, Some(&digests.digest), Total::Bytes(digests.size));
    let produce = |w: &mut dyn Write| -> Result<()> {
        meter.restart();
        let counted = Counted { inner: w, meter: &meter };
        let (_, again) = write_layer(&plan.context, &plan.layer, counted, &mut Observer::new(Meter::detached()))?;
        if again.digest != digests.digest {
            return Err(Error::Context("the context changed between two reads; push again".into()));
        }
        Ok(())
    };
    match sink.put_blob_streamed(&digests.digest, digests.size, &produce) {
        Ok(()) => progress.finish(&meter, &digests.digest, digests.size, &BlobOutcome::Sent),
        Err(e) => {
            progress.failed(&meter);
            return Err(e);
        }
    }
    Ok(digests)
}

/// Streams the layer into a new blob. Reading and compressing run on a second thread and hand 1 MiB
/// blocks over a bounded channel, so compression goes on while the sink waits on the network or disk;
/// memory stays bounded (the channel holds at most `QUEUE` blocks).
/// The compressing thread reports the context it read on the layer's meter, the sending side the bytes
/// it handed to the sink.
fn stream_layer(
    plan: &Plan,
    sink: &mut dyn Sink,
    progress: &mut Progress,
    what: What,
    total: Total,
) -> Result<LayerDigests> {
    let mut writer: Box<dyn BlobWriter + '_> = sink.blob_writer()?;
    let meter = progress.start(what, None, total);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
    let (produced, consumed, observer) = std::thread::scope(|scope| {
        let mut observer = Observer::new(meter.clone());
        let producer = scope.spawn(move || {
            let out = BlockSender { tx, block: Vec::with_capacity(BLOCK) };
            let result = write_layer(&plan.context, &plan.layer, out, &mut observer)
                .and_then(|(out, digests)| out.finish().map(|_| digests));
            (result, observer)
        });
        let mut consumed: Result<()> = Ok(());
        while let Ok(block) = rx.recv() {
            // Counted per write: a registry's writer takes a chunk at a time, sending each as it fills.
            if let Err(e) = (Counted { inner: &mut writer, meter: &meter }).write_all(&block) {
                consumed = Err(crate::layer::sink_error(e));
                break;
            }
        }
        // Dropping the receiver stops a producer that is still writing.
        drop(rx);
        let (produced, observer) = producer.join().unwrap_or_else(|_| {
            (Err(Error::Layout("the layer writer stopped unexpectedly".into())), Observer::new(Meter::detached()))
        });
        (produced, consumed, observer)
    });
    // The sink's failure explains the producer's broken pipe, so it comes first.
    let stored = match consumed.and(produced) {
        Ok(digests) => writer.commit(&digests.digest, digests.size).map(|()| digests),
        Err(e) => {
            let _ = writer.abort();
            Err(e)
        }
    };
    match &stored {
        Ok(digests) => progress.finish(&meter, &digests.digest, digests.size, &BlobOutcome::Sent),
        Err(_) => progress.failed(&meter),
    }
    // Special files the walk left out, after the layer's line.
    observer.report(progress);
    stored
}

/// How many times a layer is sent again from its first byte after registries lose the upload session
/// (each loss already came after the per-request retries).
const MAX_RESTREAMS: u32 = 5;

/// Size of the blocks handed from the compressing thread to the sink, and how many may wait.
const BLOCK: usize = 1024 * 1024;
const QUEUE: usize = 4;

/// The compressing thread's end of the channel: gathers output into blocks and sends them.
struct BlockSender {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    block: Vec<u8>,
}

impl BlockSender {
    fn send(&mut self) -> std::io::Result<()> {
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        self.tx.send(block).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    fn finish(mut self) -> Result<()> {
        if !self.block.is_empty() {
            self.send().map_err(crate::layer::sink_error)?;
        }
        Ok(())
    }
}

impl Write for BlockSender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Builds the image described by `plan` into `sink` on top of `base` (None: scratch) and names it with
/// every reference in `names`. The base's blobs go first (present, mounted, or copied verified), then our
/// layer, then config and manifest, so a manifest never names a blob the sink lacks.
pub fn run(
    plan: &Plan,
    base: Option<&mut Base>,
    sink: &mut dyn Sink,
    names: &[Reference],
    progress: &mut Progress,
    cache: Option<&LayerCache>,
) -> Result<Built> {
    let image = build_image(plan, base, sink, progress, cache, &mut Layers(None))?;
    let manifest = store_image(sink, &image.config, &image.config_digest, image.manifest.clone(), names, progress)?;
    Ok(Built { manifest, ..image })
}

/// Our layers already stored in this run, by what they were made of: a context shared by several
/// platforms is walked, compressed and sent once. A single image has nothing to share (`None`), and then
/// no key is computed.
pub struct Layers(Option<std::collections::HashMap<String, Vec<LayerDigests>>>);

/// What a plan's layers depend on: the context, the split, the options and, on a base, only what the base
/// does to this context's directories (where they land, which modes they keep), so bases that differ
/// elsewhere (`/usr/lib/x86_64-linux-gnu` against `/usr/lib/aarch64-linux-gnu`) still share the layers.
fn layers_key(plan: &Plan) -> Result<String> {
    let signature = match &plan.layer.rootfs {
        None => String::new(),
        Some(fs) => {
            let prefix = plan.layer.prefix.as_str();
            let parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
            let mut dirs: Vec<String> = (0..parts.len()).map(|i| parts[..=i].join("/")).collect();
            plan.context.walk(
                &mut |e| {
                    if e.kind == Kind::Dir {
                        dirs.push(if prefix.is_empty() { e.rel } else { format!("{prefix}/{}", e.rel) });
                    }
                    Ok(())
                },
                &mut |_, _| {},
            )?;
            fs.signature(dirs.iter().map(String::as_str))
        }
    };
    let options = LayerOptions { rootfs: None, ..plan.layer.clone() };
    Ok(format!(
        "{}\0{}\0{:?}\0{options:?}\0{signature}",
        plan.context.root().display(),
        plan.context.part_id(),
        plan.split
    ))
}

/// One platform of a multi-platform build: its plan (context, options) and its base.
pub struct PlatformImage<'a> {
    pub platform: Platform,
    pub plan: Plan,
    pub base: Option<&'a mut Base>,
}

/// What a multi-platform build stored: the index and each platform's image.
pub struct BuiltIndex {
    pub index: ManifestBlob,
    pub images: Vec<Built>,
}

/// Builds one image per platform into `sink`, each manifest stored untagged, then an OCI image index over
/// them named with every reference in `names`.
pub fn run_index(
    images: Vec<PlatformImage<'_>>,
    index_annotations: &std::collections::BTreeMap<String, String>,
    sink: &mut dyn Sink,
    names: &[Reference],
    progress: &mut Progress,
    cache: Option<&LayerCache>,
) -> Result<BuiltIndex> {
    let mut done = Layers(Some(Default::default()));
    let mut built = Vec::new();
    let mut entries = Vec::new();
    for item in images {
        let mut plan = item.plan;
        if item.base.is_none() {
            plan.image.platform = Some(item.platform.clone());
        }
        progress.note(&format!("platform {}", item.platform));
        let image = build_image(&plan, item.base, sink, progress, cache, &mut done)?;
        put_config(sink, &image.config, &image.config_digest, progress)?;
        put_untagged(sink, &image.manifest, progress)?;
        let mut desc = Descriptor::new(
            image.manifest.media_type.as_str(),
            image.manifest.digest.clone(),
            image.manifest.bytes.len() as u64,
        );
        // The platform asked for (as the base index names it), which may be more precise than the
        // base's config (an arm config without its variant).
        desc.platform = Some(item.platform.clone());
        entries.push(desc);
        built.push(image);
    }
    // Docker schema 2 images (on a Docker base) go in a Docker manifest list, as buildx does; OCI in an
    // OCI index.
    let docker = !entries.is_empty() && entries.iter().all(|d| d.media_type.as_str() == MEDIA_TYPE_DOCKER_MANIFEST);
    let index_type = if docker { crate::image::MEDIA_TYPE_DOCKER_LIST } else { crate::image::MEDIA_TYPE_INDEX };
    let index = crate::image::Index {
        schema_version: 2,
        media_type: index_type.into(),
        manifests: entries,
        annotations: index_annotations.clone(),
    };
    let bytes = to_json(&index)?;
    let blob = ManifestBlob { digest: Digest::of(&bytes), bytes, media_type: index.media_type, platform: None };
    let index = store_named(sink, blob, names, progress)?;
    Ok(BuiltIndex { index, images: built })
}

/// Stores `plan`'s base blobs and layers and returns the image (config and manifest not yet stored).
fn build_image(
    plan: &Plan,
    base: Option<&mut Base>,
    sink: &mut dyn Sink,
    progress: &mut Progress,
    cache: Option<&LayerCache>,
    done: &mut Layers,
) -> Result<Built> {
    let mut base = base;
    let mut with_base;
    let mut plan = plan;
    if let Some(base) = base.as_deref_mut() {
        // Only directories can land under a base symlink or meet a base directory's mode: a context of
        // top-level files alone needs nothing from the base's headers.
        let has_dirs = !plan.layer.prefix.is_empty() || plan.context.any(&|e| e.kind == Kind::Dir)?;
        if plan.layer.rootfs.is_some() || !has_dirs {
            store_base(base, sink, progress)?;
        } else {
            // Our entries must not replace the base's directory symlinks (merged /usr) or modes: the base
            // layers' headers are read (unless cached) while the base blobs are stored, on a second handle.
            let layers = base.layers().to_vec();
            let cache_dir = cache.map(LayerCache::dir);
            let mut warnings = Vec::new();
            let fs = if RootFs::all_cached(&layers, cache_dir) {
                store_base(base, sink, progress)?;
                RootFs::of(&layers, &mut base.source, cache_dir, &mut warnings)?
            } else {
                let mut second = base.source.second_handle()?;
                let (stored, scanned) = std::thread::scope(|scope| {
                    let scan = scope.spawn(|| RootFs::of(&layers, &mut second, cache_dir, &mut warnings));
                    let stored = store_base(base, sink, progress);
                    (stored, scan.join())
                });
                stored?;
                scanned.map_err(|_| Error::Layout("reading the base layers stopped unexpectedly".into()))??
            };
            for w in warnings {
                progress.warn(&w);
            }
            with_base = plan.clone();
            with_base.layer.rootfs = Some(std::sync::Arc::new(fs));
            plan = &with_base;
        }
    }
    // One layer per part of the context, each with its own cache entry: a re-push that changed only
    // one part reads, compresses and sends only that one. Several platforms share what they can.
    let key = match done.0 {
        Some(_) => Some(layers_key(plan)?),
        None => None,
    };
    let known = match (&done.0, &key) {
        (Some(map), Some(k)) => map.get(k).cloned(),
        _ => None,
    };
    let ours = match known {
        Some(layers) => layers,
        None => {
            let mut ours = Vec::new();
            let parts = plan.context.split(&plan.split)?;
            let count = parts.len();
            for (k, (_, part)) in parts.into_iter().enumerate() {
                let part_plan = Plan { context: part, ..plan.clone() };
                let what = if count > 1 { What::LayerPart(k + 1, count) } else { What::Layer };
                ours.push(store_layer_as(&part_plan, sink, progress, cache, what)?);
            }
            if let (Some(map), Some(k)) = (&mut done.0, key) {
                map.insert(k, ours.clone());
            }
            ours
        }
    };
    let base = base.as_deref();
    let diff_ids = ours.iter().map(|l| l.diff_id.clone()).collect();
    let config = plan.image.config_on(base.map(|b| &b.config), diff_ids, plan.layer.epoch);
    let config_bytes = to_json(&config)?;
    let platform = Platform { architecture: config.architecture, os: config.os, variant: config.variant };
    // The base's schema is kept: a Docker schema 2 base gives a Docker schema 2 image.
    let docker = base.is_some_and(Base::is_docker);
    let (manifest_type, config_type, layer_type) = if docker {
        (MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LAYER_GZIP)
    } else {
        (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_GZIP)
    };
    let mut layers: Vec<Descriptor> = base.map(|b| b.layers().to_vec()).unwrap_or_default();
    layers.extend(ours.iter().map(|l| Descriptor::new(layer_type, l.digest.clone(), l.size)));
    let mut annotations = plan.image.annotations.clone();
    if let Some(b) = base {
        annotations.entry(ANNOTATION_BASE_NAME.to_string()).or_insert_with(|| b.name.clone());
        annotations.entry(ANNOTATION_BASE_DIGEST.to_string()).or_insert_with(|| b.digest.to_string());
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: manifest_type.into(),
        config: Descriptor::new(config_type, Digest::of(&config_bytes), config_bytes.len() as u64),
        layers,
        annotations,
    };
    let bytes = to_json(&manifest)?;
    let blob =
        ManifestBlob { digest: Digest::of(&bytes), bytes, media_type: manifest.media_type, platform: Some(platform) };
    let config_digest = manifest.config.digest;
    let layer = ours.last().cloned().ok_or_else(|| Error::Context("the context gave no layer".into()))?;
    Ok(Built { config_digest, config: config_bytes, manifest: blob, layer, layers: ours })
}

/// Puts every blob of the base into the sink. Foreign (non-distributable) layers are not in any registry
/// and are left where their `urls` say.
fn store_base(base: &mut Base, sink: &mut dyn Sink, progress: &mut Progress) -> Result<()> {
    let layers = base.layers().to_vec();
    for desc in &layers {
        let media = desc.media_type.as_str();
        if media.contains("foreign") || media.contains("nondistributable") {
            continue;
        }
        let meter = progress.start(What::Layer, Some(&desc.digest), Total::Bytes(desc.size));
        match sink.put_base_blob(desc, &mut base.source, &meter) {
            Ok(outcome) => progress.finish(&meter, &desc.digest, desc.size, &outcome),
            Err(e) => {
                progress.failed(&meter);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Stores the config and the manifest (whose layers are already stored) and names it; every name is
/// tried, and a failure is reported per name. The manifest's bytes are stored exactly as given.
pub fn store_image(
    sink: &mut dyn Sink,
    config_bytes: &[u8],
    config_digest: &Digest,
    manifest: ManifestBlob,
    names: &[Reference],
    progress: &mut Progress,
) -> Result<ManifestBlob> {
    put_config(sink, config_bytes, config_digest, progress)?;
    store_named(sink, manifest, names, progress)
}

/// Stores a config blob; a lost session just sends it again (a chunked refusal is handled by the sink).
fn put_config(sink: &mut dyn Sink, config_bytes: &[u8], config_digest: &Digest, progress: &mut Progress) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sink.store_blob(config_bytes, config_digest) {
            Err(Error::Restart(Restart::UploadLost(_))) if attempt < MAX_RESTREAMS => {}
            Err(Error::Restart(r)) => {
                return Err(Error::protocol(format!("{}, {attempt} times in a row; giving up", r.reason())));
            }
            Err(e) => return Err(e),
            Ok(outcome) => {
                progress.stored(What::Config, config_digest, config_bytes.len() as u64, &outcome);
                return Ok(());
            }
        };
    }
}

/// Stores one platform's manifest, which an index will name.
fn put_untagged(sink: &mut dyn Sink, manifest: &ManifestBlob, progress: &mut Progress) -> Result<()> {
    sink.put_manifest_untagged(manifest)?;
    progress.stored(What::Manifest, &manifest.digest, manifest.bytes.len() as u64, &BlobOutcome::Sent);
    Ok(())
}

/// Names a manifest or index (whose blobs are stored) with every reference; every name is tried and a
/// failure is reported per name. The bytes are stored exactly as given.
fn store_named(
    sink: &mut dyn Sink,
    manifest: ManifestBlob,
    names: &[Reference],
    progress: &mut Progress,
) -> Result<ManifestBlob> {
    // Docker's `TAG: digest: ... size: N`; the whole name when the tags are in several repositories.
    let one_repository = names.iter().all(|n| n.repo_name() == names[0].repo_name());
    let mut done = Vec::new();
    let mut failed: Vec<(String, Error)> = Vec::new();
    for name in names {
        match sink.put_manifest(&manifest, name) {
            Ok(()) => {
                let shown = if one_repository { name.tag_or_latest().to_string() } else { name.to_string() };
                progress.tagged(&shown, &manifest.digest, manifest.bytes.len() as u64);
                done.push(name.to_string());
            }
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(e) => failed.push((name.to_string(), e)),
        }
    }
    if failed.len() == 1 && done.is_empty() {
        // One name, one failure: the error as it is, with its class (auth, registry...).
        return Err(failed.remove(0).1);
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|(n, e)| format!("{n}: {e}")).collect();
        let stored = if done.is_empty() { String::new() } else { format!(" (stored: {})", done.join(", ")) };
        return Err(Error::protocol(format!("some tags failed: {}{stored}", list.join("; "))));
    }
    sink.finish()?;
    Ok(manifest)
}

/// Copies an image from an OCI layout into `sink` under `names` (the "build in one step, push in
/// another" path): blobs are streamed from their files, skipped when the sink has them.
pub fn copy_from_layout(
    layout: &Layout,
    desc: &Descriptor,
    sink: &mut dyn Sink,
    names: &[Reference],
    progress: &mut Progress,
) -> Result<ManifestBlob> {
    if desc.media_type.is_index() {
        // A multi-platform image: every platform's image, stored untagged, then the index by name.
        let bytes = layout.read_blob(&desc.digest)?;
        let index: crate::image::Index = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Layout(format!("index {} is not valid: {e}", desc.digest)))?;
        for entry in &index.manifests {
            let (child, config_bytes, config_digest) = copy_image_blobs(layout, entry, sink, progress)?;
            put_config(sink, &config_bytes, &config_digest, progress)?;
            put_untagged(sink, &child, progress)?;
        }
        let blob =
            ManifestBlob { digest: desc.digest.clone(), bytes, media_type: desc.media_type.clone(), platform: None };
        return store_named(sink, blob, names, progress);
    }
    let (blob, config_bytes, config_digest) = copy_image_blobs(layout, desc, sink, progress)?;
    store_image(sink, &config_bytes, &config_digest, blob, names, progress)
}

/// Stores the layers of the image `desc` names in `layout` (skipping those the sink has); returns its
/// manifest, with its exact bytes, and its config.
fn copy_image_blobs(
    layout: &Layout,
    desc: &Descriptor,
    sink: &mut dyn Sink,
    progress: &mut Progress,
) -> Result<(ManifestBlob, Vec<u8>, Digest)> {
    if !desc.media_type.is_image() {
        return Err(Error::Layout(format!(
            "{} is a {}, not an image manifest or index; docker-idpb pushes images",
            desc.digest, desc.media_type
        )));
    }
    let manifest_bytes = layout.read_blob(&desc.digest)?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| Error::Layout(format!("manifest {} is not valid: {e}", desc.digest)))?;
    let config_bytes = layout.read_blob(&manifest.config.digest)?;
    for layer in &manifest.layers {
        if let Some(found) = sink.find_blob(&layer.digest)? {
            progress.stored(What::Layer, &layer.digest, layer.size, &found);
            continue;
        }
        let produce = |w: &mut dyn Write| -> Result<()> {
            let f = layout.open_blob(&layer.digest)?;
            crate::sink::copy_checked(w, &layer.digest, layer.size, f)
        };
        restreaming(
            progress,
            sink,
            "the blob",
            |progress, sink| copy_blob(layout, &layer.digest, layer.size, sink, progress),
            |_, sink, _| sink.put_blob_streamed(&layer.digest, layer.size, &produce),
        )?;
    }
    // The manifest keeps its exact bytes, so its digest is the one the layout names.
    let blob = ManifestBlob {
        digest: desc.digest.clone(),
        bytes: manifest_bytes,
        media_type: desc.media_type.clone(),
        platform: desc.platform.clone(),
    };
    Ok((blob, config_bytes, manifest.config.digest))
}

/// Streams a layout's blob into the sink, verified on the way: at most `size` + 1 bytes are read and
/// their sha256 must be `digest`, or the writer is aborted (the upload session deleted) before the closing
/// PUT, so nothing that is not the blob is ever stored under its name.
fn copy_blob(layout: &Layout, digest: &Digest, size: u64, sink: &mut dyn Sink, progress: &mut Progress) -> Result<()> {
    let file = layout.open_blob(digest)?;
    let mut writer = sink.blob_writer()?;
    let meter = progress.start(What::Layer, Some(digest), Total::Bytes(size));
    let copied = {
        let counted = Counted { inner: &mut writer, meter: &meter };
        let mut hashing = crate::digest::HashingWriter::new(counted);
        std::io::copy(&mut std::io::Read::take(file, size.saturating_add(1)), &mut hashing).map(|_| {
            let (_, got, n) = hashing.finish();
            (got, n)
        })
    };
    match copied {
        Ok((got, n)) if got == *digest && n == size => match writer.commit(digest, size) {
            Ok(()) => {
                progress.finish(&meter, digest, size, &BlobOutcome::Sent);
                Ok(())
            }
            Err(e) => {
                progress.failed(&meter);
                Err(e)
            }
        },
        Ok((got, n)) => {
            progress.failed(&meter);
            let _ = writer.abort();
            Err(Error::Layout(format!(
                "blob {digest} in {} has {n} bytes hashing to {got} (its manifest says {size} bytes); nothing was \
                 pushed for it",
                layout.root().display()
            )))
        }
        Err(e) => {
            progress.failed(&meter);
            let _ = writer.abort();
            Err(crate::layer::sink_error(e))
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Layout(format!("cannot encode image JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer cache entry outlives its blob when `prune` deletes the blob (the cache is shared with
    /// registry pushes, so prune leaves it): the hit is confirmed with the sink, which lacks the blob, and
    /// the layer is streamed again instead of being named by a manifest with nothing behind it.
    #[test]
    fn a_cache_hit_whose_blob_was_pruned_streams_the_layer_again() {
        let dir = std::env::temp_dir().join(format!("idpb-pipeline-pruned-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("ctx")).unwrap();
        std::fs::write(dir.join("ctx/a.txt"), "hello").unwrap();
        let plan = Plan {
            context: Context::open(&dir.join("ctx")).unwrap(),
            layer: LayerOptions::default(),
            image: ImageOptions::default(),
            split: Split::default(),
        };
        let cache = LayerCache::new(&dir.join("store/cache"));
        let mut sink = crate::layout::LayoutSink::store(&dir.join("store")).unwrap();
        let mut progress = Progress::new(true);
        let first = store_layer(&plan, &mut sink, &mut progress, Some(&cache)).unwrap();
        let blob = dir.join("store/blobs/sha256").join(first.digest.hex());
        assert!(blob.is_file());
        let fingerprint = LayerCache::fingerprint(&plan.context, &plan.layer).unwrap();
        assert_eq!(cache.get(&fingerprint).as_ref(), Some(&first), "the cache remembers the layer");

        std::fs::remove_file(&blob).unwrap();
        let again = store_layer(&plan, &mut sink, &mut progress, Some(&cache)).unwrap();
        assert_eq!(again, first, "the same bytes again");
        assert_eq!(std::fs::read(&blob).map(|b| Digest::of(&b)).ok(), Some(first.digest), "the blob is back");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
