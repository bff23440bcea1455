//! `docker-idpb push`: a directory (or an image built earlier) into one or more registries.
//!
//! Reads as validate -> source -> pipeline -> print: names are validated and credentials looked up before
//! anything is read; the library connects one sink per registry host (several repositories on it share
//! uploads through mounts) and feeds several hosts from one stream, so the context is read and compressed
//! once whatever the number of tags.

use serde_json::json;

use super::build::{default_base_name, tag_name};
use super::output::{self, BlobSource, Names, ResultFiles, Spelling, Top, Written};
use super::{ImageFlags, PushArgs, RegistryFlags, parse_size, store_dir};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::pipeline::{self, Plan};
use crate::progress::Progress;
use crate::reference::{Reference, sanitize_repository_component};
use crate::registry::sink::{DEFAULT_CHUNK, PushReport};
use crate::sink::{ManifestBlob, Sink};
use crate::walk::Context;

use crate::idpbuilder::{DEFAULT_OWNER as IDPB_DEFAULT_OWNER, DEFAULT_REGISTRY as IDPB_DEFAULT_REGISTRY};

/// Where the image comes from.
enum Source {
    Context(Box<Plan>),
    Layout { layout: Layout, name: Option<String> },
}

pub fn run(args: PushArgs) -> Result<()> {
    let format = args.format()?;
    let mut connect = args.connect_options()?;
    connect.quiet = args.quiet;
    let chunk = match &args.chunk_size {
        None => DEFAULT_CHUNK,
        Some(s) => {
            let n = parse_size("--chunk-size", s)?;
            if !(64 * 1024..1024 * 1024 * 1024).contains(&n) {
                return Err(Error::usage(format!(
                    "invalid --chunk-size {s:?}: use 64KiB to less than 1GiB (ingresses reject 1GiB bodies)"
                )));
            }
            n as usize
        }
    };
    let lookup = args.credential_lookup()?;
    let base_ref = args.base_ref()?;
    let targets = args.platforms()?;
    let multi = super::is_multi_platform(&targets);
    let (mut source, default_name) = source(&args, &targets)?;
    let names = target_names(&args.tag, default_name.as_deref())?;
    let files = ResultFiles { digest: args.digest_file.as_deref(), image_refs: args.image_refs.as_deref() };
    files.check()?;
    let mut progress = Progress::new(args.quiet);
    if let Source::Context(plan) = &mut source {
        args.add_provenance(&mut plan.image, plan.context.root(), &mut progress);
    }
    for n in &names {
        if crate::idpbuilder::serves(n.api_host()) && n.tag_or_latest().chars().any(|c| c.is_ascii_uppercase()) {
            progress.note(&format!(
                "note: Gitea stores tags lowercased: {n} will be listed as :{}",
                n.tag_or_latest().to_ascii_lowercase()
            ));
        }
    }

    // One sink per registry host; idpbuilder's Gitea falls back to its admin credentials from the cluster.
    let mut sinks = crate::registry::sink::connect_targets(&names, &lookup, &connect, chunk, &mut progress)?;

    // One base per platform (the same reference, each platform's image of it).
    let list = match &source {
        Source::Context(plan) if multi => super::platform_list(&base_ref, &targets, &lookup, &args, args.quiet)?,
        Source::Context(plan) => {
            vec![(plan.image.platform.clone().unwrap_or_else(crate::image::Platform::host), None)]
        }
        Source::Layout { .. } => Vec::new(),
    };
    // `--platform all` on a single-image base is that image's one platform: a manifest, as without it.
    let multi = multi && list.len() > 1;
    let mut bases = Vec::new();
    for (platform, _) in &list {
        bases.push(super::resolve_base(&args, &base_ref, platform, args.quiet, &lookup)?);
    }
    if let Source::Context(plan) = &source {
        super::warn_unresolvable_user(plan, bases.iter().all(Option::is_none), &mut progress);
    }
    let cache = args.layer_cache()?;
    if let Some(cache) = &cache {
        for sink in &mut sinks {
            sink.remember_blobs_in(cache.dir());
        }
    }
    let result = crate::registry::sink::with_targets(&mut sinks, |sink| match &source {
        Source::Context(plan) if multi => {
            let items = super::platform_images(plan, &list, args.context.as_deref(), &mut bases)?;
            let built =
                pipeline::run_index(items, &plan.image.index_annotations, sink, &names, &mut progress, cache.as_ref())?;
            Ok((built.index, Pushed::Built(built.images)))
        }
        _ => {
            push_into(&source, bases.first_mut().and_then(Option::as_mut), sink, &names, &mut progress, cache.as_ref())
        }
    });
    let (manifest, mut built) = result?;

    let report = PushReport::merged(sinks.iter().map(|s| &s.report));
    let top = Top { digest: &manifest.digest, media_type: &manifest.media_type, bytes: &manifest.bytes };
    let names = Names::new(&names, top.digest, Spelling::Full);
    output::finish(format, &files, &names, top, &mut built, &json!({ "sent": report }))
}

fn push_into<'a>(
    source: &'a Source,
    base: Option<&mut crate::base::Base>,
    sink: &mut dyn Sink,
    names: &[Reference],
    progress: &mut Progress,
    cache: Option<&crate::cache::LayerCache>,
) -> Result<(ManifestBlob, Pushed<'a>)> {
    match source {
        Source::Context(plan) => {
            let built = pipeline::run(plan, base, sink, names, progress, cache)?;
            Ok((built.manifest.clone(), Pushed::Built(vec![built])))
        }
        Source::Layout { layout, name } => {
            let desc = layout.find(name.as_deref())?;
            Ok((pipeline::copy_from_layout(layout, &desc, sink, names, progress)?, Pushed::Copied(layout)))
        }
    }
}

/// What a push built, or the layout it copied from: where its result is described from.
enum Pushed<'a> {
    Built(Vec<pipeline::Built>),
    Copied(&'a Layout),
}

impl BlobSource for Pushed<'_> {
    fn manifest(&mut self, digest: &Digest) -> Result<Vec<u8>> {
        match self {
            Pushed::Built(images) => Written(images).manifest(digest),
            Pushed::Copied(layout) => layout.read_blob(digest),
        }
    }

    fn config(&mut self, digest: &Digest) -> Result<Vec<u8>> {
        match self {
            Pushed::Built(images) => Written(images).config(digest),
            Pushed::Copied(layout) => layout.read_blob(digest),
        }
    }
}

/// The image source, and the repository name to use when no `-t` is given.
fn source(args: &PushArgs, targets: &[super::PlatformTarget]) -> Result<(Source, Option<String>)> {
    // `--platform OS/ARCH=DIR` alone: that directory is the context.
    let single_dir = match targets {
        [one] => one.context.clone(),
        _ => None,
    };
    // With a directory per platform and no CONTEXT, the first platform's directory names the image.
    let per_platform = targets.iter().find_map(|t| t.context.clone());
    // No CONTEXT, --oci-layout or --image: the current directory, as `build` (and `docker build .`) does.
    let current = (args.oci_layout.is_none() && args.image.is_none()).then(|| std::path::PathBuf::from("."));
    let nominal = single_dir.or_else(|| args.context.clone()).or(per_platform).or(current);
    if let Some(dir) = nominal.as_ref() {
        if args.oci_layout.is_some() || args.image.is_some() {
            return Err(Error::usage("give either a CONTEXT directory or --oci-layout/--image, not both"));
        }
        let image = args.image_options()?;
        let layer = args.layer_options()?;
        let split = args.split()?;
        let context = Context::open(dir)?;
        let base = default_base_name(dir);
        return Ok((Source::Context(Box::new(Plan { context, layer, image, split })), Some(base)));
    }
    if args.base.is_some() {
        return Err(Error::usage(
            "--base builds a CONTEXT directory on a base image; an image from --oci-layout or the store already has \
             its base",
        ));
    }
    let (layout, name, desc) = match &args.oci_layout {
        Some(dir) => {
            let layout = Layout::open(dir)?;
            let desc = layout.find(args.image.as_deref())?;
            (layout, args.image.clone(), desc)
        }
        None => {
            let store = store_dir()?;
            let name = args.image.clone();
            let desc = crate::store::Store::new(&store).find(name.as_deref())?;
            (Layout::open(&store)?, name, desc)
        }
    };
    let stored_name = desc.annotations.get(crate::image::ANNOTATION_CONTAINERD_NAME).cloned();
    Ok((Source::Layout { layout, name }, stored_name))
}

/// `-t` values, or the idpbuilder default for `default_name` (a base name, or a full name from a layout).
fn target_names(tags: &[String], default_name: Option<&str>) -> Result<Vec<Reference>> {
    if !tags.is_empty() {
        return tags.iter().map(|t| tag_name(t)).collect();
    }
    let registry = env_or("IDPB_REGISTRY", IDPB_DEFAULT_REGISTRY);
    let owner = env_or("IDPB_OWNER", IDPB_DEFAULT_OWNER);
    let name = default_name.unwrap_or("image");
    // A layout image named with an explicit registry keeps it; a bare name goes to the idpbuilder default.
    if let Ok(r) = Reference::parse(name) {
        if name.contains('/') && r.registry != crate::reference::DOCKER_HUB {
            return Ok(vec![r]);
        }
        let base = r.repository.rsplit('/').next().unwrap_or("image").to_string();
        let target = format!("{registry}/{owner}/{}:{}", sanitize_repository_component(&base), r.tag_or_latest());
        return Ok(vec![Reference::parse(&target)?]);
    }
    Ok(vec![Reference::parse(&format!("{registry}/{owner}/{}:latest", sanitize_repository_component(name)))?])
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_string())
}
