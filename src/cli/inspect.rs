//! `docker-idpb catalog`, `tags` and `inspect`: reading a registry with push's auth and TLS.
//!
//! These commands answer "what is in the registry" without a pull: the catalog and tag lists follow the
//! registry's pagination, and `inspect` shows a manifest with its config, walking an index into one entry
//! per platform. Every manifest fetched by digest is checked against that digest, so what is shown is what
//! the name points at. Credentials and TLS come from the same flags and sources as `push`, including the
//! idpbuilder cluster for its Gitea, so anything `push` can write, these can read back.

use serde_json::{Value, json};

use super::{CatalogArgs, InspectArgs, RegistryFlags, TagsArgs};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::idpbuilder::normalize_host;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::image::{MediaType, Platform, RuntimeConfig};
use crate::progress::Progress;
use crate::reference::Reference;
use crate::registry::Registry;

fn connect(flags: &dyn RegistryFlags, host: &str, quiet: bool) -> Result<Registry> {
    let mut connect = flags.connect_options()?;
    connect.quiet = quiet;
    let lookup = flags.credential_lookup()?;
    crate::registry::open(host, &lookup, &connect, &mut Progress::new(quiet))
}

/// Prints names as they arrive: one per line, or one JSON object `{"KEY": [...], ...}` written
/// incrementally, so a registry's list is never held whole.
struct NamePrinter {
    json: bool,
    first: bool,
    out: std::io::StdoutLock<'static>,
}

impl NamePrinter {
    fn start(json: bool, head: &str) -> Result<NamePrinter> {
        let mut p = NamePrinter { json, first: true, out: std::io::stdout().lock() };
        if json {
            p.emit(head)?;
        }
        Ok(p)
    }

    fn emit(&mut self, s: &str) -> Result<()> {
        use std::io::Write;
        self.out.write_all(s.as_bytes()).map_err(|e| Error::io("stdout", "write", e))
    }

    fn name(&mut self, name: &str) -> Result<()> {
        if self.json {
            let sep = if self.first { "" } else { "," };
            let quoted = serde_json::to_string(name).map_err(|e| Error::protocol(e.to_string()))?;
            self.first = false;
            self.emit(&format!("{sep}{quoted}"))
        } else {
            self.emit(&format!("{}\n", crate::registry::one_line(name)))
        }
    }

    fn finish(mut self) -> Result<()> {
        if self.json {
            self.emit("]}\n")?;
        }
        Ok(())
    }
}

pub(super) fn json_format(format: &str) -> Result<bool> {
    match format {
        "text" => Ok(false),
        "json" => Ok(true),
        other => Err(Error::usage(format!("invalid --format {other:?}: use text or json"))),
    }
}

pub fn catalog(args: CatalogArgs) -> Result<()> {
    let json = json_format(&args.format)?;
    let default = std::env::var("IDPB_REGISTRY")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| crate::idpbuilder::DEFAULT_REGISTRY.to_string());
    let host = normalize_host(args.host.as_deref().unwrap_or(&default));
    let mut registry = connect(&args, &host, args.quiet)?;
    let mut printer = NamePrinter::start(json, "{\"repositories\":[")?;
    registry.catalog(&mut |name| printer.name(name))?;
    printer.finish()
}

pub fn tags(args: TagsArgs) -> Result<()> {
    let json = json_format(&args.format)?;
    let reference = Reference::parse(&args.repository)?;
    let mut registry = connect(&args, reference.api_host(), args.quiet)?;
    let name = serde_json::to_string(&reference.repo_name()).map_err(|e| Error::protocol(e.to_string()))?;
    let mut printer = NamePrinter::start(json, &format!("{{\"name\":{name},\"tags\":["))?;
    registry.tags(&reference.repository, &mut |tag| printer.name(tag))?;
    printer.finish()
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let json = json_format(&args.format)?;
    let reference = Reference::parse(&args.reference)?;
    let mut reg = connect(&args, reference.api_host(), args.quiet)?;
    let repo = reference.repository.clone();
    let wanted = reference.digest.clone().unwrap_or_else(|| reference.tag_or_latest().to_string());
    let (bytes, media_type) = reg.get_manifest(&repo, &wanted)?;
    let digest = Digest::of(&bytes);
    if let Some(asked) = &reference.digest
        && digest.as_str() != asked
    {
        return Err(Error::protocol(format!("{reference}: the registry sent a manifest whose digest is {digest}")));
    }
    let probe: Probe = serde_json::from_slice(&bytes)
        .map_err(|e| Error::protocol(format!("{reference} has a manifest that is not JSON: {e}")))?;
    let media_type = probe.media_type.unwrap_or_else(|| MediaType::new(media_type));
    if media_type.is_index() {
        let index: ShownIndex =
            serde_json::from_slice(&bytes).map_err(|e| Error::protocol(format!("{reference}: invalid index: {e}")))?;
        drop(bytes);
        if index.manifests.len() > MAX_PLATFORMS {
            return Err(Error::protocol(format!(
                "{reference}: the index lists {} images, more than the {MAX_PLATFORMS} docker-idpb shows",
                index.manifests.len()
            )));
        }
        // Each platform is fetched, shown and dropped in turn: memory holds one image at a time.
        let head = json!({"name": reference.to_string(), "digest": digest, "mediaType": media_type});
        let mut out = Output::start(json, head)?;
        for m in &index.manifests {
            let (mbytes, _) = reg.get_manifest(&repo, m.digest.as_str())?;
            if Digest::of(&mbytes) != m.digest {
                return Err(Error::protocol(format!(
                    "{reference}: the manifest for {} does not match its digest",
                    m.digest
                )));
            }
            let platform = m.platform.as_ref().map(|p| p.to_string());
            out.platform(&describe_image(&mut reg, &repo, &mbytes, platform)?)?;
        }
        out.finish()
    } else {
        let mut v = describe_image(&mut reg, &repo, &bytes, None)?;
        v["name"] = json!(reference.to_string());
        v["digest"] = json!(digest);
        if json {
            println!("{v}");
        } else {
            print_text(&v, "");
        }
        Ok(())
    }
}

/// The most images of an index `inspect` shows.
const MAX_PLATFORMS: usize = 256;
/// The most annotations one descriptor or manifest may carry to be shown.
const MAX_ANNOTATIONS: usize = 1024;

/// An index's output, written a platform at a time.
struct Output {
    json: bool,
    first: bool,
}

impl Output {
    fn start(json: bool, head: Value) -> Result<Output> {
        if json {
            let text = head.to_string();
            // `{...}` without its closing brace, then the list.
            print!("{},\"manifests\":[", &text[..text.len() - 1]);
        } else {
            print_text(&head, "");
            println!("manifests:");
        }
        Ok(Output { json, first: true })
    }

    fn platform(&mut self, v: &Value) -> Result<()> {
        if self.json {
            print!("{}{v}", if self.first { "" } else { "," });
        } else {
            println!("  -");
            print_text(v, "    ");
        }
        self.first = false;
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if self.json {
            println!("]}}");
        }
        Ok(())
    }
}

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

// What inspect shows, decoded into lean typed structs: unknown fields are skipped without being kept, so a
// hostile manifest full of them costs no memory beyond its (capped) bytes.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<MediaType>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct ShownDescriptor {
    media_type: MediaType,
    digest: Digest,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "capped")]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ShownIndex {
    manifests: Vec<ShownDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShownManifest {
    #[serde(default)]
    media_type: MediaType,
    config: ShownDescriptor,
    layers: Vec<ShownDescriptor>,
    #[serde(default, deserialize_with = "capped")]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ShownConfig {
    #[serde(default)]
    created: Option<String>,
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    config: RuntimeConfig,
}

/// Manifest + config of one image as JSON.
fn describe_image(reg: &mut Registry, repo: &str, manifest_bytes: &[u8], platform: Option<String>) -> Result<Value> {
    let manifest: ShownManifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| Error::protocol(format!("invalid image manifest in {repo}: {e}")))?;
    let config_bytes = reg.get_blob(repo, &manifest.config.digest)?;
    let config: ShownConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| Error::protocol(format!("invalid image config in {repo}: {e}")))?;
    let size = manifest.layers.iter().fold(manifest.config.size, |acc, l| acc.saturating_add(l.size));
    Ok(json!({
        "digest": Digest::of(manifest_bytes),
        "mediaType": manifest.media_type,
        "platform": platform.unwrap_or_else(|| {
            let mut p = format!("{}/{}", config.os, config.architecture);
            if let Some(v) = &config.variant { p.push('/'); p.push_str(v); }
            p
        }),
        "size": size,
        "created": config.created,
        "config": config.config,
        "layers": manifest.layers,
        "annotations": manifest.annotations,
    }))
}

fn print_text(v: &Value, indent: &str) {
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            // Registry text reaches a terminal: control characters never do.
            let k = crate::registry::one_line(k);
            match val {
                Value::Object(m) if m.is_empty() => {}
                Value::Array(a) if a.is_empty() => {}
                Value::Object(_) => {
                    println!("{indent}{k}:");
                    print_text(val, &format!("{indent}  "));
                }
                Value::Array(items) => {
                    println!("{indent}{k}:");
                    for item in items {
                        if item.is_object() {
                            println!("{indent}  -");
                            print_text(item, &format!("{indent}    "));
                        } else {
                            let text = item.as_str().map_or_else(|| item.to_string(), str::to_string);
                            println!("{indent}  - {}", crate::registry::one_line(&text));
                        }
                    }
                }
                Value::String(s) => println!("{indent}{k}: {}", crate::registry::one_line(s)),
                Value::Null => {}
                other => println!("{indent}{k}: {other}"),
            }
        }
    }
}
