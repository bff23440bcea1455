//! The one pipeline behind `build` and `push`: context -> layer -> image -> sink.
//!
//! `run` streams the layer into a blob writer the sink hands out, commits it under the digest computed on
//! the way, then stores the config and a manifest per name. The sink is the only thing that differs between
//! writing an OCI layout, a docker-loadable tar, the local store and a registry, so there is no second code
//! path for "push what was built". A failure anywhere aborts the open blob writer (a temp file is removed,
//! an upload session deleted) and no manifest is stored, so no name ever points at a partial image.

use std::io::Write;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Descriptor, ImageOptions, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST, Manifest};
use crate::layer::{LayerDigests, LayerObserver, LayerOptions, write_layer};
use crate::progress::Progress;
use crate::reference::Reference;
use crate::sink::{BlobWriter, ManifestBlob, Sink};
use crate::walk::Context;

/// What to build.
#[derive(Debug, Clone)]
pub struct Plan {
    pub context: Context,
    pub layer: LayerOptions,
    pub image: ImageOptions,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Built {
    pub manifest: ManifestBlob,
    pub config_digest: Digest,
    pub config_size: u64,
    pub layer: LayerDigests,
}

impl Built {
    /// Manifest + config + layer bytes: what a registry stores for this image.
    pub fn total_size(&self) -> u64 {
        self.manifest.bytes.len() as u64 + self.config_size + self.layer.size
    }
}

struct Skipped(Vec<(std::path::PathBuf, String)>);

impl LayerObserver for Skipped {
    fn skipped(&mut self, path: &std::path::Path, what: &str) {
        self.0.push((path.to_path_buf(), what.to_string()));
    }
}

/// Counts bytes into the progress display on their way to the sink.
struct Counted<'a, W: Write> {
    inner: W,
    progress: &'a mut Progress,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams the plan's layer into `sink`; returns its digests.
pub fn push_layer(plan: &Plan, sink: &mut dyn Sink, progress: &mut Progress) -> Result<LayerDigests> {
    let mut writer: Box<dyn BlobWriter + '_> = sink.blob_writer()?;
    progress.start("layer");
    // Special files the walk leaves out are reported after the stream, not in the middle of its progress.
    let mut skipped = Skipped(Vec::new());
    let result = {
        let counted = Counted { inner: &mut writer, progress: &mut *progress };
        write_layer(&plan.context, &plan.layer, counted, &mut skipped).map(|(_, digests)| digests)
    };
    for (path, what) in &skipped.0 {
        progress.warn(&format!("skipped {} ({what}: cannot be stored in an image)", path.display()));
    }
    match result {
        Ok(digests) => {
            writer.commit(&digests.digest, digests.size)?;
            progress.done(&format!("{} ({} entries)", crate::progress::human(digests.size), digests.entries));
            Ok(digests)
        }
        Err(e) => {
            let _ = writer.abort();
            Err(e)
        }
    }
}

/// Builds the image described by `plan` into `sink` and names it with every reference in `names`.
pub fn run(plan: &Plan, sink: &mut dyn Sink, names: &[Reference], progress: &mut Progress) -> Result<Built> {
    let layer = push_layer(plan, sink, progress)?;
    finish_image(plan, layer, sink, names)
}

/// Stores config and manifest for an already stored layer, and names the manifest.
pub fn finish_image(plan: &Plan, layer: LayerDigests, sink: &mut dyn Sink, names: &[Reference]) -> Result<Built> {
    let config = plan.image.config(vec![layer.diff_id.clone()], plan.layer.epoch);
    let platform = crate::image::Platform {
        architecture: config.architecture.clone(),
        os: config.os.clone(),
        variant: config.variant.clone(),
    };
    let config_bytes = to_json(&config)?;
    let config_digest = Digest::of(&config_bytes);
    sink.put_blob(&config_bytes, &config_digest)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST.to_string(),
        config: Descriptor::new(MEDIA_TYPE_CONFIG, config_digest.clone(), config_bytes.len() as u64),
        layers: vec![Descriptor::new(MEDIA_TYPE_LAYER_GZIP, layer.digest.clone(), layer.size)],
        annotations: plan.image.annotations.clone(),
    };
    let bytes = to_json(&manifest)?;
    let manifest = ManifestBlob {
        digest: Digest::of(&bytes),
        bytes,
        media_type: MEDIA_TYPE_MANIFEST.to_string(),
        platform: Some(platform),
    };
    for name in names {
        sink.put_manifest(&manifest, name)?;
    }
    sink.finish()?;
    Ok(Built { manifest, config_digest, config_size: config_bytes.len() as u64, layer })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Layout(format!("cannot encode image JSON: {e}")))
}
