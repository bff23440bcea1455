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

fn json_format(format: &str) -> Result<bool> {
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
    let out = if media_type.is_index() {
        let index: ShownIndex =
            serde_json::from_slice(&bytes).map_err(|e| Error::protocol(format!("{reference}: invalid index: {e}")))?;
        let mut platforms = Vec::new();
        for m in &index.manifests {
            let (mbytes, _) = reg.get_manifest(&repo, m.digest.as_str())?;
            if Digest::of(&mbytes) != m.digest {
                return Err(Error::protocol(format!(
                    "{reference}: the manifest for {} does not match its digest",
                    m.digest
                )));
            }
            platforms.push(describe_image(&mut reg, &repo, &mbytes, m.platform.as_ref().map(|p| p.to_string()))?);
        }
        json!({"name": reference.to_string(), "digest": digest, "mediaType": media_type, "manifests": platforms})
    } else {
        let mut v = describe_image(&mut reg, &repo, &bytes, None)?;
        v["name"] = json!(reference.to_string());
        v["digest"] = json!(digest);
        v
    };
    if json {
        println!("{out}");
    } else {
        print_text(&out, "");
    }
    Ok(())
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
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
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
    #[serde(default)]
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
                            println!("{indent}  - {}", item.as_str().map_or_else(|| item.to_string(), str::to_string));
                        }
                    }
                }
                Value::String(s) => println!("{indent}{k}: {s}"),
                Value::Null => {}
                other => println!("{indent}{k}: {other}"),
            }
        }
    }
}
