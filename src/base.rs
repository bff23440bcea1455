//! The image an image is built on: `--base REF`, resolved to one platform's manifest and config.
//!
//! A base is `scratch` (nothing), a registry reference with Docker's normalisation (`alpine:3.20` is
//! `docker.io/library/alpine:3.20`; a `@sha256:` digest pins it), or `oci:DIR[:TAG]`, an OCI layout on disk.
//! An index is resolved to the manifest for the wanted platform (the host's by default); when it has none,
//! the error lists the platforms it has. What comes out is a [`Base`]: the manifest's exact layer
//! descriptors (media type, digest, size, urls, annotations: copied, never recompressed), its schema (OCI or
//! Docker schema 2, which our manifest keeps), its config, and a [`BlobSource`] from which the sink can
//! fetch the blobs it lacks, or which tells a registry sink where to mount them from. Registry JSON is read
//! through the registry client's limits (4 MiB) and checked against its digest. Manifests, indexes and
//! configs read by digest are cached in the local store (`$IDPB_HOME/cache/doc-HEX`, checked against the
//! digest when read back), and the base registry is connected to only when something is not cached: with
//! a `@sha256:` reference, a cached base and its blobs already in the store, `build` needs no network.

use std::io::Read;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Descriptor, ImageConfig, Index, Manifest, MediaType, Platform};
use crate::layout::Layout;
use crate::reference::Reference;
use crate::registry::Registry;

/// What `--base` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseRef {
    Scratch,
    Registry(Reference),
    Layout { dir: PathBuf, tag: Option<String> },
}

impl BaseRef {
    /// Parses `scratch`, `oci:DIR[:TAG]` or a registry reference.
    pub fn parse(s: &str) -> Result<BaseRef> {
        let s = s.trim();
        if s.is_empty() || s == "scratch" {
            return Ok(BaseRef::Scratch);
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            // DIR may hold ':' only before the last component; a TAG never holds '/'.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, Some(t.to_string())),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(Error::usage(format!("invalid --base {s:?}: use oci:DIR[:TAG]")));
            }
            return Ok(BaseRef::Layout { dir: PathBuf::from(dir), tag });
        }
        Reference::parse(s).map(BaseRef::Registry).map_err(|e| match e {
            Error::Reference { input, message } => Error::Usage(format!("invalid --base {input:?}: {message}")),
            other => other,
        })
    }

    /// The base's name as recorded in `org.opencontainers.image.base.name`.
    pub fn name(&self) -> String {
        match self {
            BaseRef::Scratch => "scratch".into(),
            BaseRef::Registry(r) => r.full_name(),
            BaseRef::Layout { dir, tag } => {
                format!("oci:{}{}", dir.display(), tag.as_deref().map(|t| format!(":{t}")).unwrap_or_default())
            }
        }
    }
}

/// Connects to a registry host (with its credentials and TLS) when first needed.
pub type Connect = Box<dyn FnMut(&str) -> Result<Registry> + Send>;

/// A registry repository, connected to on first use.
pub struct RemoteRepository {
    host: String,
    repository: String,
    connect: Connect,
    registry: Option<Box<Registry>>,
}

impl RemoteRepository {
    fn registry(&mut self) -> Result<&mut Registry> {
        if self.registry.is_none() {
            self.registry = Some(Box::new((self.connect)(&self.host)?));
        }
        match self.registry.as_deref_mut() {
            Some(r) => Ok(r),
            None => Err(Error::protocol(format!("cannot connect to {}", self.host))),
        }
    }
}

/// Where a base's blobs can be read from.
pub enum BlobSource {
    Registry(RemoteRepository),
    Layout(Layout),
}

impl BlobSource {
    /// The base blob `digest` as a stream (its digest is checked by whoever copies it).
    pub fn open(&mut self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        match self {
            BlobSource::Registry(remote) => {
                let repository = remote.repository.clone();
                Ok(Box::new(remote.registry()?.open_blob(&repository, digest)?) as Box<dyn Read + Send>)
            }
            BlobSource::Layout(layout) => Ok(Box::new(layout.open_blob(digest)?)),
        }
    }

    /// A second, independent handle on the same source (to read one blob while another is copied).
    pub fn second_handle(&mut self) -> Result<BlobSource> {
        match self {
            BlobSource::Registry(remote) => {
                let registry = remote.registry()?.clone();
                let host = remote.host.clone();
                Ok(BlobSource::Registry(RemoteRepository {
                    host: remote.host.clone(),
                    repository: remote.repository.clone(),
                    connect: Box::new(move |_| Err(Error::protocol(format!("cannot connect to {host} again")))),
                    registry: Some(Box::new(registry)),
                }))
            }
            BlobSource::Layout(layout) => Ok(BlobSource::Layout(Layout::open(layout.root())?)),
        }
    }

    /// `(host, repository)` of a registry source: a sink on that host can mount instead of copying.
    pub fn mount_point(&self) -> Option<(&str, &str)> {
        match self {
            BlobSource::Registry(remote) => Some((remote.host.as_str(), remote.repository.as_str())),
            BlobSource::Layout(_) => None,
        }
    }
}

/// A resolved base image for one platform.
pub struct Base {
    /// `org.opencontainers.image.base.name`.
    pub name: String,
    /// The digest of the platform's manifest (`org.opencontainers.image.base.digest`).
    pub digest: Digest,
    pub manifest: Manifest,
    pub config: ImageConfig,
    pub source: BlobSource,
}

impl Base {
    /// Whether the base is Docker schema 2 (our manifest then is too).
    pub fn is_docker(&self) -> bool {
        self.manifest.media_type.as_str() == crate::image::MEDIA_TYPE_DOCKER_MANIFEST
    }

    /// The base's layers, exactly as its manifest lists them.
    pub fn layers(&self) -> &[Descriptor] {
        &self.manifest.layers
    }
}

/// Reads manifests and configs from wherever the base lives.
trait Documents {
    /// A manifest or index by tag or digest: bytes and the media type the source says it has.
    fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, MediaType)>;
    fn blob(&mut self, digest: &Digest) -> Result<Vec<u8>>;
}

/// A registry repository's documents, from the local cache when asked by digest.
struct FromRegistry<'a> {
    remote: &'a mut RemoteRepository,
    cache: Option<&'a std::path::Path>,
}

impl FromRegistry<'_> {
    fn cached(&self, reference: &str) -> Option<Vec<u8>> {
        let digest: Digest = reference.parse().ok()?;
        let bytes = std::fs::read(self.cache?.join(format!("doc-{}", digest.hex()))).ok()?;
        (Digest::of(&bytes) == digest).then_some(bytes)
    }

    fn keep(&self, bytes: &[u8]) {
        let Some(dir) = self.cache else { return };
        let digest = Digest::of(bytes);
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let _ = crate::atomic::write(&dir.join(format!("doc-{}", digest.hex())), bytes, 0o644);
    }
}

impl Documents for FromRegistry<'_> {
    fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, MediaType)> {
        if let Some(bytes) = self.cached(reference) {
            return Ok((bytes, MediaType::default()));
        }
        let repository = self.remote.repository.clone();
        let (bytes, media) = self.remote.registry()?.get_manifest(&repository, reference)?;
        if reference.starts_with("sha256:") {
            self.keep(&bytes);
        }
        Ok((bytes, MediaType::new(media.split(';').next().unwrap_or_default().trim())))
    }
    fn blob(&mut self, digest: &Digest) -> Result<Vec<u8>> {
        if let Some(bytes) = self.cached(digest.as_str()) {
            return Ok(bytes);
        }
        let repository = self.remote.repository.clone();
        let bytes = self.remote.registry()?.get_blob(&repository, digest)?;
        self.keep(&bytes);
        Ok(bytes)
    }
}

/// Resolves `base` for `platform`. `connect` opens the base registry (with its own credentials and TLS)
/// when something is not in `cache` (the local store's cache directory).
pub fn resolve(
    base: &BaseRef,
    platform: &Platform,
    cache: Option<&std::path::Path>,
    connect: Connect,
) -> Result<Option<Base>> {
    match base {
        BaseRef::Scratch => Ok(None),
        BaseRef::Registry(r) => {
            let mut remote = RemoteRepository {
                host: r.api_host().to_string(),
                repository: r.repository.clone(),
                connect,
                registry: None,
            };
            let wanted = r.digest.clone().unwrap_or_else(|| r.tag_or_latest().to_string());
            let name = r.full_name();
            let (digest, manifest, config) = {
                let mut docs = FromRegistry { remote: &mut remote, cache };
                for_platform(&mut docs, &wanted, r.digest.as_deref(), platform, &name)?
            };
            Ok(Some(Base { name, digest, manifest, config, source: BlobSource::Registry(remote) }))
        }
        BaseRef::Layout { dir, tag } => {
            let layout = Layout::open(dir)?;
            let desc = layout.find(tag.as_deref())?;
            let name = base.name();
            let (digest, manifest, config) = {
                let mut docs = FromLayout { layout: &layout, top: desc.clone() };
                for_platform(&mut docs, desc.digest.as_str(), Some(desc.digest.as_str()), platform, &name)?
            };
            Ok(Some(Base { name, digest, manifest, config, source: BlobSource::Layout(layout) }))
        }
    }
}

/// Every platform `base` offers: an index's entries (attestation entries `unknown/unknown` skipped), or
/// the one platform of a single image.
pub fn platforms(base: &BaseRef, cache: Option<&std::path::Path>, connect: Connect) -> Result<Vec<Platform>> {
    let (bytes, media, name, mut docs): (Vec<u8>, MediaType, String, Box<dyn Documents + '_>) = match base {
        BaseRef::Scratch => {
            return Err(Error::usage(
                "--platform all means every platform of the base, and scratch has none: give a list such as \
                 --platform linux/amd64,linux/arm64",
            ));
        }
        BaseRef::Registry(r) => {
            let remote = RemoteRepository {
                host: r.api_host().to_string(),
                repository: r.repository.clone(),
                connect,
                registry: None,
            };
            let mut docs: Box<dyn Documents> = Box::new(OwnedRemote { remote, cache: cache.map(|c| c.to_path_buf()) });
            let wanted = r.digest.clone().unwrap_or_else(|| r.tag_or_latest().to_string());
            let (bytes, media) = docs.manifest(&wanted)?;
            (bytes, media, r.full_name(), docs)
        }
        BaseRef::Layout { dir, tag } => {
            let layout = Layout::open(dir)?;
            let desc = layout.find(tag.as_deref())?;
            let bytes = layout.read_blob(&desc.digest)?;
            let media = desc.media_type.clone();
            (bytes, media, base.name(), Box::new(OwnedLayout(layout)))
        }
    };
    let probe: Probe = serde_json::from_slice(&bytes)
        .map_err(|e| Error::protocol(format!("the base {name} has a manifest that is not JSON: {e}")))?;
    let media = probe.media_type.clone().filter(|m| !m.is_empty()).unwrap_or(media);
    if media.is_index() || (media.is_empty() && probe.manifests.is_some()) {
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| Error::protocol(format!("the base {name} has an invalid index: {e}")))?;
        let list: Vec<Platform> =
            index.manifests.iter().filter_map(|d| d.platform.clone()).filter(|p| p.os != "unknown").collect();
        if list.is_empty() {
            return Err(Error::protocol(format!("the base {name} is an index that names no platform")));
        }
        return Ok(list);
    }
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::protocol(format!("the base {name} has an invalid image manifest: {e}")))?;
    let config: ImageConfig = serde_json::from_slice(&docs.blob(&manifest.config.digest)?)
        .map_err(|e| Error::protocol(format!("the base {name} has an invalid config: {e}")))?;
    Ok(vec![Platform { os: config.os, architecture: config.architecture, variant: config.variant }])
}

/// [`FromRegistry`] owning its repository (for [`platforms`]).
struct OwnedRemote {
    remote: RemoteRepository,
    cache: Option<std::path::PathBuf>,
}

impl Documents for OwnedRemote {
    fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, MediaType)> {
        FromRegistry { remote: &mut self.remote, cache: self.cache.as_deref() }.manifest(reference)
    }
    fn blob(&mut self, digest: &Digest) -> Result<Vec<u8>> {
        FromRegistry { remote: &mut self.remote, cache: self.cache.as_deref() }.blob(digest)
    }
}

struct OwnedLayout(Layout);

impl Documents for OwnedLayout {
    fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, MediaType)> {
        let digest: Digest = reference.parse()?;
        Ok((self.0.read_blob(&digest)?, MediaType::default()))
    }
    fn blob(&mut self, digest: &Digest) -> Result<Vec<u8>> {
        self.0.read_blob(digest)
    }
}

struct FromLayout<'a> {
    layout: &'a Layout,
    top: Descriptor,
}

impl Documents for FromLayout<'_> {
    fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, MediaType)> {
        let digest: Digest = reference.parse()?;
        let bytes = self.layout.read_blob(&digest)?;
        let media = if digest == self.top.digest { self.top.media_type.clone() } else { MediaType::default() };
        Ok((bytes, media))
    }
    fn blob(&mut self, digest: &Digest) -> Result<Vec<u8>> {
        self.layout.read_blob(digest)
    }
}

/// The media type a document says it has, else the one its source gave.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<MediaType>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
}

fn for_platform(
    docs: &mut dyn Documents,
    wanted: &str,
    pinned: Option<&str>,
    platform: &Platform,
    name: &str,
) -> Result<(Digest, Manifest, ImageConfig)> {
    let (bytes, media) = docs.manifest(wanted)?;
    let digest = Digest::of(&bytes);
    if let Some(pin) = pinned
        && digest.as_str() != pin
    {
        return Err(Error::protocol(format!("the base {name} was served with digest {digest}, not {pin}")));
    }
    let probe: Probe = serde_json::from_slice(&bytes)
        .map_err(|e| Error::protocol(format!("the base {name} has a manifest that is not JSON: {e}")))?;
    let media = probe.media_type.clone().filter(|m| !m.is_empty()).unwrap_or(media);
    let is_index = media.is_index() || (media.is_empty() && probe.manifests.is_some());
    let (digest, bytes, media) = if is_index {
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| Error::protocol(format!("the base {name} has an invalid index: {e}")))?;
        let entry = pick(&index, platform).ok_or_else(|| {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| p.to_string())
                .collect();
            Error::usage(format!(
                "the base {name} has no {platform} image; it has: {} (choose one with --platform)",
                if have.is_empty() { "no platforms listed".to_string() } else { have.join(", ") }
            ))
        })?;
        let (bytes, served) = docs.manifest(entry.digest.as_str())?;
        if Digest::of(&bytes) != entry.digest {
            return Err(Error::protocol(format!("the base {name}'s {platform} manifest does not match its digest")));
        }
        // The entry says what the manifest is (the manifest itself may not: its mediaType is optional).
        let media = if entry.media_type.is_empty() { served } else { entry.media_type.clone() };
        (entry.digest.clone(), bytes, media)
    } else {
        (digest, bytes, media)
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::protocol(format!("the base {name} has an invalid image manifest: {e}")))?;
    let media = if manifest.media_type.is_empty() { media } else { manifest.media_type.clone() };
    if !media.is_image() && !media.is_empty() {
        return Err(Error::usage(format!(
            "the base {name} is of type {media}, which docker-idpb cannot build on (an OCI or Docker image \
             manifest is needed)"
        )));
    }
    let config_bytes = docs.blob(&manifest.config.digest)?;
    if Digest::of(&config_bytes) != manifest.config.digest {
        return Err(Error::protocol(format!("the base {name}'s config does not match its digest")));
    }
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::protocol(format!("the base {name} has an invalid config: {e}")))?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::protocol(format!(
            "the base {name} lists {} layers but {} diff_ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let manifest =
        Manifest { media_type: if manifest.media_type.is_empty() { media } else { manifest.media_type }, ..manifest };
    Ok((digest, manifest, config))
}

/// The index entry for `want`: same os and architecture, and the variant when both name one (an index
/// entry without a variant serves any).
fn pick<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    let matches = |d: &&Descriptor, strict: bool| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == want.os
                && p.architecture == want.architecture
                && match (&p.variant, &want.variant) {
                    (Some(a), Some(b)) => a == b,
                    (None, None) => true,
                    _ => !strict,
                }
        })
    };
    index.manifests.iter().find(|d| matches(d, true)).or_else(|| index.manifests.iter().find(|d| matches(d, false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_references() {
        assert_eq!(BaseRef::parse("scratch").unwrap(), BaseRef::Scratch);
        assert_eq!(
            BaseRef::parse("oci:/tmp/l:1.0").unwrap(),
            BaseRef::Layout { dir: "/tmp/l".into(), tag: Some("1.0".into()) }
        );
        assert_eq!(BaseRef::parse("oci:./lay").unwrap(), BaseRef::Layout { dir: "./lay".into(), tag: None });
        match BaseRef::parse("alpine:3.20").unwrap() {
            BaseRef::Registry(r) => assert_eq!(r.full_name(), "docker.io/library/alpine:3.20"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(BaseRef::parse("Bad Name"), Err(Error::Usage(_))));
    }

    /// Documents served from memory, by digest or by the tag "top".
    struct Memory(std::collections::HashMap<String, (Vec<u8>, MediaType)>);

    impl Documents for Memory {
        fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, MediaType)> {
            self.0.get(reference).cloned().ok_or_else(|| Error::protocol(format!("no {reference}")))
        }
        fn blob(&mut self, digest: &Digest) -> Result<Vec<u8>> {
            self.0.get(digest.as_str()).map(|d| d.0.clone()).ok_or_else(|| Error::protocol("no blob"))
        }
    }

    #[test]
    fn an_unknown_base_media_type_is_named() {
        let artifact = br#"{"schemaVersion":2,"mediaType":"application/vnd.example.helm.chart+json","config":{"mediaType":"a","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#;
        let mut docs = Memory(
            [("top".to_string(), (artifact.to_vec(), MediaType::new("application/vnd.example.helm.chart+json")))]
                .into_iter()
                .collect(),
        );
        let host = Platform::parse("linux/amd64").unwrap();
        let err = for_platform(&mut docs, "top", None, &host, "r.example/chart:1").err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("application/vnd.example.helm.chart+json") && err.contains("r.example/chart:1"), "{err}");
    }

    #[test]
    fn a_pinned_base_served_with_another_digest_is_refused() {
        let mut docs = Memory([("top".to_string(), (b"{}".to_vec(), MediaType::default()))].into_iter().collect());
        let host = Platform::parse("linux/amd64").unwrap();
        let pin = Digest::of(b"something else").to_string();
        let err = for_platform(&mut docs, "top", Some(&pin), &host, "b").err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("served with digest"));
    }

    fn entry(os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        let mut d = Descriptor::new(crate::image::MEDIA_TYPE_MANIFEST, Digest::of(arch.as_bytes()), 1);
        d.platform = Some(Platform { os: os.into(), architecture: arch.into(), variant: variant.map(Into::into) });
        d
    }

    #[test]
    fn platforms_are_picked_with_variants_when_both_name_one() {
        let mut index = Index::empty();
        index.manifests =
            vec![entry("unknown", "unknown", None), entry("linux", "amd64", None), entry("linux", "arm64", Some("v8"))];
        let arm = Platform::parse("linux/arm64").unwrap();
        assert_eq!(pick(&index, &arm).map(|d| d.digest.clone()), Some(Digest::of(b"arm64")));
        let arm8 = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(pick(&index, &arm8).map(|d| d.digest.clone()), Some(Digest::of(b"arm64")));
        assert!(pick(&index, &Platform::parse("linux/s390x").unwrap()).is_none());
        assert!(pick(&index, &Platform::parse("linux/arm64/v9").unwrap()).is_none());
    }
}
