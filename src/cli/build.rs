//! `docker-idpb build`: a directory into an OCI layout, a docker-loadable tar, or the local store.
//!
//! Every flag and name is validated before the context is read, so a typo costs nothing. The three outputs
//! are three sinks of the same pipeline; the local store is an OCI layout at `$IDPB_HOME`, which is where
//! `push` without a context finds images by name. The layer cache applies to the layout and the store
//! (where the sink can tell that it already holds a blob), not to a tar, which is written whole each time.
//! `--list` runs only the walk, the same walk the layer is written from, so what it prints is exactly what
//! a build would store.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::output::{self, Names, ResultFiles, Spelling, Top, Written};
use super::{BuildArgs, ImageFlags, RegistryFlags, store_dir};
use crate::error::{Error, Result};
use crate::layout::{LayoutSink, TarSink};
use crate::pipeline::{self, Plan};
use crate::progress::Progress;
use crate::reference::{Reference, sanitize_repository_component};
use crate::sink::Sink;
use crate::walk::{Context, Kind};

pub fn run(args: BuildArgs) -> Result<()> {
    // Validate every flag before reading anything.
    let format = args.format()?;
    let image = args.image_options()?;
    let layer = args.layer_options()?;
    let split = args.split()?;
    let base_ref = args.base_ref()?;
    let targets = args.platforms()?;
    let multi = super::is_multi_platform(&targets);
    // `--platform OS/ARCH=DIR` alone: that directory is the context.
    let context_dir = match targets.as_slice() {
        [one] if one.context.is_some() => one.context.clone().unwrap_or_default(),
        _ => args
            .context
            .clone()
            .or_else(|| targets.iter().find_map(|t| t.context.clone()))
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let names = names_for(&args.tag, &context_dir)?;
    let files = ResultFiles { digest: args.digest_file.as_deref(), image_refs: args.image_refs.as_deref() };
    files.check()?;
    if args.oci_layout.is_some() && args.tar.is_some() {
        return Err(Error::usage("--oci-layout and --tar are exclusive: build twice to get both"));
    }
    let context = Context::open(&context_dir)?;
    if args.list {
        return list(&context, &split, &layer.prefix);
    }
    let mut progress = Progress::new(args.quiet).writing_to_disk();
    let lookup = args.credential_lookup()?;
    let mut plan = Plan { context, layer, image, split };
    args.add_provenance(&mut plan.image, plan.context.root(), &mut progress);
    let cache = args.layer_cache()?;
    let cache = cache.as_ref();
    // Bases first: a missing base must leave no output behind.
    let list = if multi {
        super::platform_list(&base_ref, &targets, &lookup, &args, args.quiet)?
    } else {
        vec![(plan.image.platform.clone().unwrap_or_else(crate::image::Platform::host), None)]
    };
    // `--platform all` on a single-image base is that image's one platform: a manifest, as without it.
    let multi = multi && list.len() > 1;
    let mut bases = Vec::new();
    for (platform, _) in &list {
        bases.push(super::resolve_base(&args, &base_ref, platform, args.quiet, &lookup)?);
    }
    super::warn_unresolvable_user(&plan, bases.iter().all(Option::is_none), &mut progress);
    if !multi && let Some((p, _)) = list.first() {
        plan.image.platform = Some(p.clone());
    }
    // Every context opened before the output is created: a missing directory leaves nothing behind.
    let items =
        if multi { Some(super::platform_images(&plan, &list, args.context.as_deref(), &mut bases)?) } else { None };
    let (dest, mut sink): (PathBuf, Box<dyn Sink>) = if let Some(dir) = &args.oci_layout {
        (dir.clone(), Box::new(LayoutSink::create(dir)?))
    } else if let Some(file) = &args.tar {
        (file.clone(), Box::new(TarSink::create(file)?))
    } else {
        let store = store_dir()?;
        (store.clone(), Box::new(LayoutSink::store(&store)?))
    };
    // A tar is written whole each time: the layer cache cannot skip anything there.
    let cache = if args.tar.is_some() { None } else { cache };
    let (top, images) = match items {
        Some(items) => {
            let built =
                pipeline::run_index(items, &plan.image.index_annotations, sink.as_mut(), &names, &mut progress, cache)?;
            (built.index, built.images)
        }
        None => {
            let base = bases.first_mut().and_then(Option::as_mut);
            let built = pipeline::run(&plan, base, sink.as_mut(), &names, &mut progress, cache)?;
            (built.manifest.clone(), vec![built])
        }
    };
    let top = Top { digest: &top.digest, media_type: &top.media_type, bytes: &top.bytes };
    let names = Names::new(&names, top.digest, Spelling::Familiar);
    output::finish(format, &files, &names, top, &mut Written(&images), &json!({ "output": dest }))
}

/// `-t` values, or the context directory's sanitised name with `:latest`.
pub(super) fn names_for(tags: &[String], context: &Path) -> Result<Vec<Reference>> {
    if tags.is_empty() {
        let base = default_base_name(context);
        return Ok(vec![Reference::parse(&format!("{base}:latest"))?]);
    }
    tags.iter().map(|t| tag_name(t)).collect()
}

/// A `-t` value: a reference with a tag (or none, meaning latest) but no digest, which is an output of
/// the build, not an input.
pub(super) fn tag_name(t: &str) -> Result<Reference> {
    let r = Reference::parse(t)?;
    if r.digest.is_some() {
        return Err(Error::Reference {
            input: t.to_string(),
            message: "-t names an image by tag, not by digest (the digest is computed); drop the @sha256:... part"
                .to_string(),
        });
    }
    Ok(r)
}

/// The context directory's base name as a repository component ("My App" -> "my-app").
pub(super) fn default_base_name(context: &Path) -> String {
    let abs = std::fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
    let base = abs.file_name().and_then(|n| n.to_str()).unwrap_or("image");
    sanitize_repository_component(base)
}

/// Prints the paths in layer order; with `--layer`, each layer's paths under a `# layer N: WHAT` line.
/// The paths as they land in the image (under `--prefix`), each under its layer (`--layer`).
fn list(context: &Context, split: &crate::walk::Split, prefix: &str) -> Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let parts = context.split(split)?;
    for (n, (index, part)) in parts.iter().enumerate() {
        if !split.is_empty() {
            writeln!(out, "# layer {}: {}", n + 1, split.describe(*index))
                .map_err(|e| Error::io("stdout", "write", e))?;
        }
        let mut visit = |entry: crate::walk::Entry| -> Result<()> {
            // Names are printed escaped (as `ls -b` does): a name cannot forge a line or drive the terminal.
            let rel = if prefix.is_empty() { entry.rel.clone() } else { format!("{prefix}/{}", entry.rel) };
            let name = crate::progress::escaped(&rel);
            let line = match entry.kind {
                Kind::Dir => format!("{name}/"),
                _ => name,
            };
            writeln!(out, "{line}").map_err(|e| Error::io("stdout", "write", e))
        };
        part.walk(&mut visit, &mut |path, what| {
            eprintln!("warning: skipped {} ({what})", crate::progress::escaped(&path.display().to_string()))
        })?;
    }
    out.flush().map_err(|e| Error::io("stdout", "write", e))
}
