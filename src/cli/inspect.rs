//! `docker-idpb catalog`, `tags` and `inspect`: reading a registry with push's auth and TLS.
//!
//! These commands answer "what is in the registry" without a pull: the catalog and tag lists follow the
//! registry's pagination, and `inspect` shows a manifest with its config, walking an index into one entry
//! per platform. Every manifest fetched by digest is checked against that digest, so what is shown is what
//! the name points at. Credentials and TLS come from the same flags and sources as `push`, including the
//! idpbuilder cluster for its Gitea, so anything `push` can write, these can read back.

use super::output::{self, BlobSource, Detail, Format, Names, Render, Spelling, Top};
use super::{CatalogArgs, InspectArgs, RegistryFlags, TagsArgs};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::idpbuilder::normalize_host;
use crate::image::MediaType;
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
    /// Buffered: stdout's own buffer flushes at every newline, a system call per name in a list of
    /// millions.
    out: std::io::BufWriter<std::io::StdoutLock<'static>>,
}

impl NamePrinter {
    fn start(json: bool, head: &str) -> Result<NamePrinter> {
        let mut p = NamePrinter {
            json,
            first: true,
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock()),
        };
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
        use std::io::Write;
        if self.json {
            self.emit("]}\n")?;
        }
        self.out.flush().map_err(|e| Error::io("stdout", "write", e))
    }
}

pub(super) fn json_format(format: &str) -> Result<bool> {
    Ok(Format::parse(format)? == Format::Json)
}

pub fn catalog(args: CatalogArgs) -> Result<()> {
    let json = json_format(&args.format)?;
    let default = crate::idpbuilder::default_registry();
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
    let render = match Format::parse(&args.format)? {
        Format::Text => Render::Listing,
        Format::Json => Render::Json,
    };
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
    let media_type = MediaType::new(media_type);
    let names = Names::new(std::slice::from_ref(&reference), &digest, Spelling::Full);
    let top = Top { digest: &digest, media_type: &media_type, bytes: &bytes };
    let mut source = FromRegistry { reg: &mut reg, repo: &repo, reference: &reference };
    output::print(render, Detail::Full, &names, top, &mut source, &serde_json::Value::Null)
}

/// The most images of an index `inspect` shows.
const MAX_PLATFORMS: usize = 256;

/// The blobs of the image being inspected, from its repository, each checked against its digest.
struct FromRegistry<'a> {
    reg: &'a mut Registry,
    repo: &'a str,
    reference: &'a Reference,
}

impl BlobSource for FromRegistry<'_> {
    fn index_size(&mut self, count: usize) -> Result<()> {
        if count > MAX_PLATFORMS {
            return Err(Error::protocol(format!(
                "{}: the index lists {count} images, more than the {MAX_PLATFORMS} docker-idpb shows",
                self.reference
            )));
        }
        Ok(())
    }

    fn manifest(&mut self, digest: &Digest) -> Result<Vec<u8>> {
        let (bytes, _) = self.reg.get_manifest(self.repo, digest.as_str())?;
        if Digest::of(&bytes) != *digest {
            return Err(Error::protocol(format!(
                "{}: the manifest for {digest} does not match its digest",
                self.reference
            )));
        }
        Ok(bytes)
    }

    fn config(&mut self, digest: &Digest) -> Result<Vec<u8>> {
        self.reg.get_blob(self.repo, digest)
    }

    fn invalid(&self, what: &str, digest: &Digest, e: serde_json::Error) -> Error {
        Error::protocol(format!("{}: invalid image {what} {digest}: {e}", self.reference))
    }
}
