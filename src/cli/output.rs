//! What `build`, `push` and `inspect` print on stdout: one vocabulary, assembled in one place.
//!
//! Every result is described from the blobs themselves (the manifest or index bytes and each config): the
//! ones `build` and `push` just wrote, the ones a layout holds, the ones a registry sends to `inspect`. So
//! a key cannot mean one thing in one command and another elsewhere: `size` is the descriptor size of what
//! the reference names (the manifest, or the index of a multi-platform image), as in OCI; `total_size`
//! counts every blob that reaches once (index, manifests, configs, layers; shared layers once), as `images`
//! does; `references` are `REF@sha256:DIGEST`, one per tag, which is also the whole text output of `build`
//! and `push` and the content of `--image-refs`, as crane and ko print them. An index's result is written
//! a platform at a time, so `inspect` holds one image in memory however many the index lists; its text
//! form (`inspect` without `--format json`) lists the same keys and values as its JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{MediaType, Platform, RuntimeConfig};
use crate::reference::Reference;

/// `--format`: parsed once, where the flag is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(Error::usage(format!("invalid --format {other:?}: use text or json"))),
        }
    }
}

/// How a result's references are spelled: the local store and layouts use Docker's familiar names
/// (`site:1`), registries full names (`127.0.0.1:5000/team/site:1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    Familiar,
    Full,
}

/// The names of a result, each once and in the order given: `name` is the repository of the first
/// reference (as `images` names it), `tags` the tags alone, `references` one `REF:TAG@sha256:DIGEST` per
/// tag (a reference given by digest alone stays `REF@sha256:DIGEST`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Names {
    pub name: String,
    pub tags: Vec<String>,
    pub references: Vec<String>,
}

impl Names {
    pub fn new(refs: &[Reference], digest: &Digest, spelling: Spelling) -> Names {
        let spell = |r: &Reference| match spelling {
            Spelling::Familiar => r.familiar_name(),
            Spelling::Full => r.full_name(),
        };
        let mut tags = Vec::new();
        let mut references = Vec::new();
        for r in refs {
            let tag = match (&r.tag, &r.digest) {
                (None, Some(_)) => None,
                _ => Some(r.tag_or_latest().to_string()),
            };
            let pinned = Reference { tag: tag.clone(), digest: Some(digest.to_string()), ..r.clone() };
            push_once(&mut references, spell(&pinned));
            if let Some(tag) = tag {
                push_once(&mut tags, tag);
            }
        }
        let name = refs
            .first()
            .map(|r| match spelling {
                Spelling::Familiar => r.familiar_repository(),
                Spelling::Full => r.repo_name(),
            })
            .unwrap_or_default();
        Names { name, tags, references }
    }

    /// The text result: one reference per line. `--image-refs` holds exactly this.
    pub fn lines(&self) -> String {
        self.references.iter().map(|r| format!("{r}\n")).collect()
    }
}

fn push_once(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The files `build` and `push` write their result to besides stdout: `--digest-file` (the digest alone)
/// and `--image-refs` (the text output: `REF@sha256:DIGEST` per tag, as ko's `--image-refs`).
pub struct ResultFiles<'a> {
    pub digest: Option<&'a Path>,
    pub image_refs: Option<&'a Path>,
}

impl ResultFiles<'_> {
    /// Fails early when a file cannot be written, so no image is stored before the error.
    pub fn check(&self) -> Result<()> {
        for (flag, path) in [("--digest-file", self.digest), ("--image-refs", self.image_refs)] {
            let Some(path) = path else { continue };
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(Error::usage(format!(
                    "{flag} {}: directory {} does not exist",
                    path.display(),
                    parent.display()
                )));
            }
        }
        Ok(())
    }

    /// Writes each file asked for (a new file renamed into place: a link planted there is replaced).
    pub fn write(&self, digest: &Digest, names: &Names) -> Result<()> {
        if let Some(path) = self.digest {
            crate::atomic::write(path, format!("{digest}\n").as_bytes(), 0o644)?;
        }
        if let Some(path) = self.image_refs {
            crate::atomic::write(path, names.lines().as_bytes(), 0o644)?;
        }
        Ok(())
    }
}

/// A build's or push's result: its files, then stdout (the references, or the JSON result; `extra` adds
/// the command's own keys).
pub fn finish(
    format: Format,
    files: &ResultFiles<'_>,
    names: &Names,
    top: Top<'_>,
    source: &mut dyn BlobSource,
    extra: &Value,
) -> Result<()> {
    files.write(top.digest, names)?;
    let render = match format {
        Format::Text => Render::References,
        Format::Json => Render::Json,
    };
    print(render, Detail::Summary, names, top, source, extra)
}

/// What a result describes: a manifest or an index, by its exact bytes.
pub struct Top<'a> {
    pub digest: &'a Digest,
    /// What the bytes were stored or served as; the bytes' own `mediaType` wins when they have one.
    pub media_type: &'a MediaType,
    pub bytes: &'a [u8],
}

/// Where the blobs a result is read from come from: what a build or push wrote, a layout, a registry.
pub trait BlobSource {
    /// Called with the number of images an index lists, before any is read: a source may refuse.
    fn index_size(&mut self, _count: usize) -> Result<()> {
        Ok(())
    }
    /// An image manifest an index names, checked against `digest`.
    fn manifest(&mut self, digest: &Digest) -> Result<Vec<u8>>;
    /// A config blob, checked against `digest`.
    fn config(&mut self, digest: &Digest) -> Result<Vec<u8>>;
    /// The error for a blob that does not parse as what it should be.
    fn invalid(&self, what: &str, digest: &Digest, e: serde_json::Error) -> Error {
        Error::Layout(format!("{what} {digest} is not valid: {e}"))
    }
}

/// How a result is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// `REF@sha256:DIGEST` per tag (`build` and `push` text).
    References,
    /// The result as one JSON object on one line.
    Json,
    /// The result's keys and values, one per line, nested by indentation (`inspect` text).
    Listing,
}

/// Whether each image also shows its creation time, runtime config and manifest annotations (`inspect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    Summary,
    Full,
}

/// Prints the result for `top` with `names` to stdout; `extra` (an object, or null) adds the command's own
/// keys (`output`, `sent`) at the top level.
pub fn print(
    render: Render,
    detail: Detail,
    names: &Names,
    top: Top<'_>,
    source: &mut dyn BlobSource,
    extra: &Value,
) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match write(&mut out, render, detail, names, top, source, extra) {
        Ok(()) => out.flush().map_err(stdout_error),
        Err(e) => {
            // What is still buffered is dropped: a failure leaves as little of a half-written result as it can.
            drop(out.into_parts());
            Err(e)
        }
    }
}

fn stdout_error(e: std::io::Error) -> Error {
    Error::io("stdout", "write", e)
}

/// [`print`] into `out`.
pub fn write(
    out: &mut dyn Write,
    render: Render,
    detail: Detail,
    names: &Names,
    top: Top<'_>,
    source: &mut dyn BlobSource,
    extra: &Value,
) -> Result<()> {
    if render == Render::References {
        return out.write_all(names.lines().as_bytes()).map_err(stdout_error);
    }
    let probe: Probe = serde_json::from_slice(top.bytes).map_err(|e| source.invalid("manifest", top.digest, e))?;
    let media_type = probe.media_type.unwrap_or_else(|| top.media_type.clone());
    let mut blobs = BlobSizes::default();
    blobs.add(top.digest, top.bytes.len() as u64);
    if !media_type.is_index() {
        let image = describe(top.bytes, top.digest, &media_type, None, source, detail)?;
        blobs.add_image(&image);
        let result = ImageResult { names, image: &image, total_size: blobs.total(), extra: Extra(extra) };
        return emit(out, render, &to_value(&result)?, "");
    }
    let index: LeanIndex = serde_json::from_slice(top.bytes).map_err(|e| source.invalid("index", top.digest, e))?;
    source.index_size(index.manifests.len())?;
    let head = to_value(&IndexHead {
        names,
        digest: top.digest,
        media_type: &media_type,
        size: top.bytes.len() as u64,
        extra: Extra(extra),
    })?;
    match render {
        Render::Json => {
            let text = head.to_string();
            // The head object without its closing brace, then the list, then what the list adds up to.
            write!(out, "{},\"platforms\":[", &text[..text.len() - 1]).map_err(stdout_error)?;
        }
        _ => {
            emit(out, render, &head, "")?;
            writeln!(out, "platforms:").map_err(stdout_error)?;
        }
    }
    for (n, entry) in index.manifests.iter().enumerate() {
        let bytes = source.manifest(&entry.digest)?;
        let image = describe(&bytes, &entry.digest, &entry.media_type, entry.platform.as_ref(), source, detail)?;
        drop(bytes);
        blobs.add_image(&image);
        let value = to_value(&image)?;
        match render {
            Render::Json => write!(out, "{}{value}", if n == 0 { "" } else { "," }).map_err(stdout_error)?,
            _ => {
                writeln!(out, "  -").map_err(stdout_error)?;
                emit(out, render, &value, "    ")?;
            }
        }
    }
    match render {
        Render::Json => writeln!(out, "],\"total_size\":{}}}", blobs.total()),
        _ => writeln!(out, "total_size: {}", blobs.total()),
    }
    .map_err(stdout_error)
}

fn to_value<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| stdout_error(e.into()))
}

fn emit(out: &mut dyn Write, render: Render, value: &Value, indent: &str) -> Result<()> {
    match render {
        Render::Json => writeln!(out, "{value}").map_err(stdout_error),
        _ => listing(out, value, indent),
    }
}

/// One image described from its manifest and config.
#[derive(Debug, Serialize)]
pub struct Image {
    pub digest: Digest,
    #[serde(rename = "mediaType")]
    pub media_type: MediaType,
    /// The manifest's size in bytes.
    pub size: u64,
    /// `OS/ARCH[/VARIANT]`: as the index names it, else as the config says.
    pub platform: Option<String>,
    pub config_digest: Digest,
    pub config_size: u64,
    pub layers: Vec<Layer>,
    #[serde(flatten)]
    pub detail: Option<ImageDetail>,
}

/// One layer: its descriptor, and the digest of its uncompressed tar from the config.
#[derive(Debug, Serialize)]
pub struct Layer {
    #[serde(rename = "mediaType")]
    pub media_type: MediaType,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Option<Digest>,
}

/// What `inspect` shows of an image besides its blobs.
#[derive(Debug, Serialize)]
pub struct ImageDetail {
    pub created: Option<String>,
    pub config: RuntimeConfig,
    pub annotations: BTreeMap<String, String>,
}

fn describe(
    bytes: &[u8],
    digest: &Digest,
    media_type: &MediaType,
    platform: Option<&Platform>,
    source: &mut dyn BlobSource,
    detail: Detail,
) -> Result<Image> {
    let manifest: LeanManifest = serde_json::from_slice(bytes).map_err(|e| source.invalid("manifest", digest, e))?;
    let config_bytes = source.config(&manifest.config.digest)?;
    let config: LeanConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| source.invalid("config", &manifest.config.digest, e))?;
    let platform = match platform {
        Some(p) => Some(p.to_string()),
        None => match (&config.os, &config.architecture) {
            (Some(os), Some(arch)) => Some(
                Platform { os: os.clone(), architecture: arch.clone(), variant: config.variant.clone() }.to_string(),
            ),
            _ => None,
        },
    };
    let diff_ids = &config.rootfs.diff_ids;
    // A config whose diff_ids do not pair with the layers (a foreign image) gives none rather than wrong ones.
    let paired = diff_ids.len() == manifest.layers.len();
    let layers = manifest
        .layers
        .into_iter()
        .enumerate()
        .map(|(i, l)| Layer {
            media_type: l.media_type,
            digest: l.digest,
            size: l.size,
            diff_id: if paired { diff_ids.get(i).cloned() } else { None },
        })
        .collect();
    let detail = match detail {
        Detail::Summary => None,
        Detail::Full => {
            Some(ImageDetail { created: config.created, config: config.config, annotations: manifest.annotations })
        }
    };
    Ok(Image {
        digest: digest.clone(),
        media_type: manifest.media_type.unwrap_or_else(|| media_type.clone()),
        size: bytes.len() as u64,
        platform,
        config_digest: manifest.config.digest,
        config_size: manifest.config.size,
        layers,
        detail,
    })
}

/// Every blob a result reaches, once, with its descriptor size: `total_size` is their sum.
#[derive(Default)]
struct BlobSizes(BTreeMap<Digest, u64>);

impl BlobSizes {
    fn add(&mut self, digest: &Digest, size: u64) {
        self.0.insert(digest.clone(), size);
    }

    fn add_image(&mut self, image: &Image) {
        self.add(&image.digest, image.size);
        self.add(&image.config_digest, image.config_size);
        for l in &image.layers {
            self.add(&l.digest, l.size);
        }
    }

    fn total(&self) -> u64 {
        self.0.values().fold(0u64, |a, b| a.saturating_add(*b))
    }
}

/// The command's own keys, flattened into the result (nothing when null).
struct Extra<'a>(&'a Value);

impl Serialize for Extra<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        if let Some(obj) = self.0.as_object() {
            for (k, v) in obj {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// A manifest's result.
#[derive(Serialize)]
struct ImageResult<'a> {
    #[serde(flatten)]
    names: &'a Names,
    #[serde(flatten)]
    image: &'a Image,
    total_size: u64,
    #[serde(flatten)]
    extra: Extra<'a>,
}

/// An index's result but its `platforms` (one [`Image`] each) and `total_size`, which follow it.
#[derive(Serialize)]
struct IndexHead<'a> {
    #[serde(flatten)]
    names: &'a Names,
    digest: &'a Digest,
    #[serde(rename = "mediaType")]
    media_type: &'a MediaType,
    size: u64,
    #[serde(flatten)]
    extra: Extra<'a>,
}

// The blobs, decoded into lean structs: unknown fields are skipped without being kept, so a hostile
// manifest full of them costs no memory beyond its (capped) bytes.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<MediaType>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanDescriptor {
    #[serde(default)]
    media_type: MediaType,
    digest: Digest,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct LeanIndex {
    manifests: Vec<LeanDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeanManifest {
    #[serde(default)]
    media_type: Option<MediaType>,
    config: LeanDescriptor,
    layers: Vec<LeanDescriptor>,
    #[serde(default, deserialize_with = "capped")]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct LeanConfig {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: RuntimeConfig,
    #[serde(default)]
    rootfs: LeanRootFs,
}

#[derive(Deserialize, Default)]
struct LeanRootFs {
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

/// The most annotations one manifest may carry to be shown.
const MAX_ANNOTATIONS: usize = 1024;

/// A string map of at most [`MAX_ANNOTATIONS`] entries: a hostile manifest cannot fill memory with them.
fn capped<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    struct Capped;
    impl<'de> serde::de::Visitor<'de> for Capped {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_ANNOTATIONS} annotations")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.len() == MAX_ANNOTATIONS {
                    return Err(serde::de::Error::custom(format!("more than {MAX_ANNOTATIONS} annotations")));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Capped)
}

/// `key: value` lines, nested objects and lists indented below their key; empty and null values left out.
/// Registry text reaches a terminal: control characters never do.
fn listing(out: &mut dyn Write, v: &Value, indent: &str) -> Result<()> {
    let Some(obj) = v.as_object() else { return Ok(()) };
    for (k, val) in obj {
        let k = crate::registry::one_line(k);
        match val {
            Value::Object(m) if m.is_empty() => {}
            Value::Array(a) if a.is_empty() => {}
            Value::Null => {}
            Value::Object(_) => {
                writeln!(out, "{indent}{k}:").map_err(stdout_error)?;
                listing(out, val, &format!("{indent}  "))?;
            }
            Value::Array(items) => {
                writeln!(out, "{indent}{k}:").map_err(stdout_error)?;
                for item in items {
                    if item.is_object() {
                        writeln!(out, "{indent}  -").map_err(stdout_error)?;
                        listing(out, item, &format!("{indent}    "))?;
                    } else {
                        let text = item.as_str().map_or_else(|| item.to_string(), str::to_string);
                        writeln!(out, "{indent}  - {}", crate::registry::one_line(&text)).map_err(stdout_error)?;
                    }
                }
            }
            Value::String(s) => writeln!(out, "{indent}{k}: {}", crate::registry::one_line(s)).map_err(stdout_error)?,
            other => writeln!(out, "{indent}{k}: {other}").map_err(stdout_error)?,
        }
    }
    Ok(())
}

/// The blobs a build or push just wrote, as it kept them.
pub struct Written<'a>(pub &'a [crate::pipeline::Built]);

impl Written<'_> {
    fn missing(digest: &Digest) -> Error {
        Error::Layout(format!("{digest} is not among the blobs just written"))
    }
}

impl BlobSource for Written<'_> {
    fn manifest(&mut self, digest: &Digest) -> Result<Vec<u8>> {
        let built = self.0.iter().find(|b| b.manifest.digest == *digest);
        built.map(|b| b.manifest.bytes.clone()).ok_or_else(|| Written::missing(digest))
    }

    fn config(&mut self, digest: &Digest) -> Result<Vec<u8>> {
        let built = self.0.iter().find(|b| b.config_digest == *digest);
        built.map(|b| b.config.clone()).ok_or_else(|| Written::missing(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(list: &[&str]) -> Vec<Reference> {
        list.iter().map(|r| Reference::parse(r).unwrap()).collect()
    }

    #[test]
    fn names_hold_each_tag_and_reference_once_in_order() {
        let digest = Digest::of(b"m");
        let names = Names::new(&refs(&["site:1", "site:1", "site", "other/x:1"]), &digest, Spelling::Familiar);
        assert_eq!(names.name, "site");
        assert_eq!(names.tags, ["1", "latest"]);
        assert_eq!(
            names.references,
            [format!("site:1@{digest}"), format!("site:latest@{digest}"), format!("other/x:1@{digest}")]
        );
        assert_eq!(names.lines(), names.references.iter().map(|r| format!("{r}\n")).collect::<String>());

        let full = Names::new(&refs(&["127.0.0.1:5000/team/site:1"]), &digest, Spelling::Full);
        assert_eq!(full.name, "127.0.0.1:5000/team/site");
        assert_eq!(full.references, [format!("127.0.0.1:5000/team/site:1@{digest}")]);
        let hub = Names::new(&refs(&["nginx"]), &digest, Spelling::Full);
        assert_eq!(hub.references, [format!("docker.io/library/nginx:latest@{digest}")]);

        // A reference by digest names no tag.
        let by_digest = Names::new(&refs(&[&format!("h:5000/a@{digest}")]), &digest, Spelling::Full);
        assert!(by_digest.tags.is_empty());
        assert_eq!(by_digest.references, [format!("h:5000/a@{digest}")]);
    }

    /// Blobs by digest, as a test source.
    struct Blobs(Vec<Vec<u8>>);

    impl BlobSource for Blobs {
        fn manifest(&mut self, digest: &Digest) -> Result<Vec<u8>> {
            self.config(digest)
        }
        fn config(&mut self, digest: &Digest) -> Result<Vec<u8>> {
            self.0.iter().find(|b| Digest::of(b) == *digest).cloned().ok_or_else(|| Error::Layout(digest.to_string()))
        }
    }

    fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
        let layers: Vec<Value> = layers
            .iter()
            .map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": Digest::of(l), "size": l.len()}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(config), "size": config.len()},
            "layers": layers,
        }))
        .unwrap()
    }

    fn config(arch: &str, diff_ids: &[&[u8]]) -> Vec<u8> {
        let ids: Vec<Digest> = diff_ids.iter().map(|d| Digest::of(d)).collect();
        serde_json::to_vec(
            &serde_json::json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": ids}}),
        )
        .unwrap()
    }

    fn render(render: Render, top: &[u8], media_type: &str, blobs: Vec<Vec<u8>>) -> String {
        let digest = Digest::of(top);
        let names = Names::new(&refs(&["a:1", "a:2"]), &digest, Spelling::Familiar);
        let media_type = MediaType::new(media_type);
        let top = Top { digest: &digest, media_type: &media_type, bytes: top };
        let mut out = Vec::new();
        write(&mut out, render, Detail::Summary, &names, top, &mut Blobs(blobs), &serde_json::json!({"output": "o"}))
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_image_and_an_index_share_keys_and_count_every_blob_once() {
        let (layer, base) = (b"layer".as_slice(), b"base layer".as_slice());
        let amd_config = config("amd64", &[b"base tar", b"tar"]);
        let arm_config = config("arm64", &[b"base tar", b"tar"]);
        let amd = manifest(&amd_config, &[base, layer]);
        let arm = manifest(&arm_config, &[base, layer]);

        let shown: Value = serde_json::from_str(&render(
            Render::Json,
            &amd,
            "application/vnd.oci.image.manifest.v1+json",
            vec![amd_config.clone()],
        ))
        .unwrap();
        assert_eq!(shown["size"], amd.len());
        assert_eq!(shown["tags"], serde_json::json!(["1", "2"]));
        assert_eq!(shown["platform"], "linux/amd64");
        assert_eq!(shown["output"], "o");
        assert_eq!(shown["layers"][1]["diff_id"], Digest::of(b"tar").to_string());
        let image_total = amd.len() + amd_config.len() + layer.len() + base.len();
        assert_eq!(shown["total_size"], image_total);

        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::of(&amd), "size": amd.len(), "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::of(&arm), "size": arm.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            ],
        }))
        .unwrap();
        let blobs = vec![amd.clone(), arm.clone(), amd_config.clone(), arm_config.clone()];
        let text = render(Render::Json, &index, "application/vnd.oci.image.index.v1+json", blobs.clone());
        assert_eq!(text.lines().count(), 1, "{text}");
        let shown_index: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(shown_index["size"], index.len());
        assert_eq!(shown_index["mediaType"], "application/vnd.oci.image.index.v1+json");
        let platforms = shown_index["platforms"].as_array().unwrap();
        assert_eq!(platforms[1]["platform"], "linux/arm64/v8", "the index's platform wins over the config's");
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(&platforms[0]),
            keys(&shown)
                .into_iter()
                .filter(|k| !["name", "tags", "references", "total_size", "output"].contains(&k.as_str()))
                .collect::<Vec<_>>()
        );
        let total =
            index.len() + amd.len() + arm.len() + amd_config.len() + arm_config.len() + layer.len() + base.len();
        assert_eq!(shown_index["total_size"], total, "shared layers once");

        let listing = render(Render::Listing, &index, "application/vnd.oci.image.index.v1+json", blobs.clone());
        assert!(listing.contains("platforms:\n  -\n    config_digest: "), "{listing}");
        assert!(listing.ends_with(&format!("total_size: {total}\n")), "{listing}");
        let lines = render(Render::References, &index, "application/vnd.oci.image.index.v1+json", blobs);
        assert_eq!(lines, format!("a:1@{0}\na:2@{0}\n", Digest::of(&index)));
    }
}
