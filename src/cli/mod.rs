//! The command line: flags declared once with their help text, and dispatch to one module per command.
//!
//! argh has no flattening, so the image flags that `build` and `push` share are declared once in the
//! `with_image_flags!` macro and expanded into both commands' structs; [`ImageFlags`] turns them into the
//! pipeline's options with every value validated before any work starts. Each command module parses
//! names and paths, picks a sink, runs the pipeline and prints the result through `output`, the one
//! vocabulary `build`, `push` and `inspect` share: stdout carries only results, stderr carries progress,
//! so `docker-idpb build -q` prints nothing but the references.

use std::path::PathBuf;

use argh::{ArgsInfo, FromArgs};

use crate::error::{Error, Result};
use crate::image::{ImageOptions, Platform, parse_command, parse_key_value, parse_port};
use crate::layer::LayerOptions;
use crate::progress::Progress;

pub mod argv;
mod build;
mod credential;
pub mod help;
mod inspect;
mod login;
mod output;
mod push;
mod store;
mod trust;

/// Build a directory into an OCI image and push it to a registry, with no container runtime.
#[derive(FromArgs, ArgsInfo, Debug)]
pub struct Cli {
    #[argh(subcommand)]
    pub command: Command,
}

#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    Build(BuildArgs),
    Push(PushArgs),
    Login(LoginArgs),
    Logout(LogoutArgs),
    Catalog(CatalogArgs),
    Tags(TagsArgs),
    Inspect(InspectArgs),
    Images(ImagesArgs),
    Rm(RmArgs),
    Prune(PruneArgs),
    Credential(CredentialArgs),
    Trust(TrustArgs),
    Version(VersionArgs),
}

/// Print the version.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "version")]
#[argh(example = "{command_name}")]
pub struct VersionArgs {}

macro_rules! with_image_flags {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($body)*
            /// the image to build on: a registry reference (alpine:3.20, HOST/NAME@sha256:...), oci:DIR[:TAG],
            /// or scratch (default: $IDPB_BASE, else scratch)
            #[argh(option, arg_name = "REF")]
            pub base: Option<String>,
            /// platform(s) of the image, OS/ARCH[/VARIANT][=DIR], comma-separated or repeated, or `all` (every
            /// platform of the base); several give an image index (default: linux on the host's architecture)
            #[argh(option, arg_name = "OS/ARCH")]
            pub platform: Vec<String>,
            /// entrypoint: a JSON array or a string split on whitespace
            #[argh(option, arg_name = "CMD")]
            pub entrypoint: Option<String>,
            /// default command: a JSON array or a string split on whitespace
            #[argh(option, arg_name = "CMD")]
            pub cmd: Option<String>,
            /// environment variable KEY=VALUE (repeatable)
            #[argh(option, arg_name = "KEY=VALUE")]
            pub env: Vec<String>,
            /// working directory of the container
            #[argh(option, arg_name = "DIR")]
            pub workdir: Option<String>,
            /// user (and group) the container runs as, e.g. 1000:1000 or nobody
            #[argh(option, arg_name = "USER")]
            pub user: Option<String>,
            /// config label KEY=VALUE (repeatable)
            #[argh(option, arg_name = "KEY=VALUE")]
            pub label: Vec<String>,
            /// manifest annotation KEY=VALUE (repeatable)
            #[argh(option, arg_name = "KEY=VALUE")]
            pub annotation: Vec<String>,
            /// port the container listens on, PORT[/tcp|udp|sctp] (repeatable)
            #[argh(option, arg_name = "PORT")]
            pub expose: Vec<String>,
            /// put the paths matching this .dockerignore-style pattern in a layer of their own, in flag order
            /// (repeatable; what no pattern matches goes into a last layer), e.g. --layer 'vendor/'
            #[argh(option, arg_name = "PATTERN")]
            pub layer: Vec<String>,
            /// where the context goes in the image (default /)
            #[argh(option, arg_name = "DIR")]
            pub prefix: Option<String>,
            /// keep files' modification times instead of SOURCE_DATE_EPOCH or 0
            #[argh(switch)]
            pub preserve_mtime: bool,
            /// owner of every file in the layer, UID:GID (default 0:0)
            #[argh(option, arg_name = "UID:GID")]
            pub chown: Option<String>,
            /// gzip level 0-9 (default 1: fast; 6 is gzip's default, about 5x slower for a few % smaller)
            #[argh(option, arg_name = "LEVEL")]
            pub compression_level: Option<u8>,
            /// always read and compress the context, even if it is unchanged since the last run
            #[argh(switch)]
            pub no_cache: bool,
            /// do not add the git origin and commit as org.opencontainers.image.source/revision (added by
            /// default when the context is in a git work tree)
            #[argh(switch)]
            pub no_vcs: bool,
            /// write the digest (of the manifest, or of the index) to this file
            #[argh(option, arg_name = "FILE")]
            pub digest_file: Option<PathBuf>,
            /// write REF@sha256:DIGEST per tag to this file (what the text output prints), e.g. for
            /// kubectl or a deploy step
            #[argh(option, arg_name = "FILE")]
            pub image_refs: Option<PathBuf>,
            /// output format: text (default) or json
            #[argh(option, default = "String::from(\"text\")", arg_name = "FORMAT")]
            pub format: String,
            /// no progress or notes on stderr
            #[argh(switch, short = 'q')]
            pub quiet: bool,
        }

        impl ImageFlags for $name {
            fn image_flags(&self) -> ImageFlagValues<'_> {
                ImageFlagValues {
                    base: self.base.as_deref(),
                    layer: &self.layer,
                    platform: &self.platform,
                    entrypoint: self.entrypoint.as_deref(),
                    cmd: self.cmd.as_deref(),
                    env: &self.env,
                    workdir: self.workdir.as_deref(),
                    user: self.user.as_deref(),
                    label: &self.label,
                    annotation: &self.annotation,
                    expose: &self.expose,
                    prefix: self.prefix.as_deref(),
                    preserve_mtime: self.preserve_mtime,
                    chown: self.chown.as_deref(),
                    compression_level: self.compression_level,
                    format: &self.format,
                    no_cache: self.no_cache,
                    no_vcs: self.no_vcs,
                }
            }
        }
    };
}

/// Appends the registry connection flags (TLS, credentials, retries) to a command struct, then hands the
/// struct to `$next` (another flag macro, or `plain!`).
macro_rules! with_registry_flags {
    ($next:ident! { $(#[$meta:meta])* pub struct $name:ident { $($body:tt)* } }) => {
        $next! {
            $(#[$meta])*
            pub struct $name {
                $($body)*
                /// skip TLS verification and allow plain HTTP, for any registry
                #[argh(switch)]
                pub insecure: bool,
                /// use plain HTTP
                #[argh(switch)]
                pub plain_http: bool,
                /// trust the CA certificates in this PEM file (repeatable)
                #[argh(option, arg_name = "FILE")]
                pub ca_file: Vec<PathBuf>,
                /// true: verify TLS even for loopback registries; false: same as --insecure
                #[argh(option, arg_name = "BOOL")]
                pub tls_verify: Option<bool>,
                /// registry user name (with --password-stdin)
                #[argh(option, short = 'u', arg_name = "USER")]
                pub username: Option<String>,
                /// read the registry password or token from stdin
                #[argh(switch)]
                pub password_stdin: bool,
                /// retries per request on network errors and 408/429/5xx (default 5)
                #[argh(option, arg_name = "N")]
                pub retries: Option<u32>,
                /// give up a request after retrying this long, e.g. 90s or 5m (default 2m)
                #[argh(option, arg_name = "DURATION")]
                pub timeout: Option<String>,
                /// docker config directory (like docker --config)
                #[argh(option, arg_name = "DIR")]
                pub config: Option<PathBuf>,
            }
        }

        impl RegistryFlags for $name {
            fn registry_flags(&self) -> RegistryFlagValues<'_> {
                RegistryFlagValues {
                    insecure: self.insecure,
                    plain_http: self.plain_http,
                    ca_file: &self.ca_file,
                    tls_verify: self.tls_verify,
                    username: self.username.as_deref(),
                    password_stdin: self.password_stdin,
                    retries: self.retries,
                    timeout: self.timeout.as_deref(),
                    config: self.config.as_deref(),
                }
            }
            fn set_docker_config(&mut self, dir: Option<PathBuf>) {
                if self.config.is_none() {
                    self.config = dir;
                }
            }
        }
    };
}

/// The terminal of the flag macros: the struct as built.
macro_rules! plain {
    ($($t:tt)*) => { $($t)* };
}

with_registry_flags! {
with_image_flags! {
    /// Build a directory into an OCI image: an OCI layout, a docker-loadable tar, or the local store.
    #[derive(FromArgs, ArgsInfo, Debug)]
    #[argh(subcommand, name = "build")]
    #[argh(example = "{command_name} ./site                # into the local store, as site:latest")]
    #[argh(example = "{command_name} ./site --oci-layout out -t site:1")]
    #[argh(example = "{command_name} ./site --tar site.tar && docker load -i site.tar")]
    #[argh(example = "{command_name} ./app --base alpine:3.20 --cmd '[\"/app/run\"]' --platform linux/amd64,linux/arm64")]
    #[argh(example = "{command_name} ./site --list         # what would go in; builds nothing")]
    pub struct BuildArgs {
        /// the directory to build (default: .)
        #[argh(positional)]
        pub context: Option<PathBuf>,
        /// name and tag, NAME[:TAG] (repeatable; default: the directory's name, :latest)
        #[argh(option, short = 't', arg_name = "REF")]
        pub tag: Vec<String>,
        /// write (or add to) an OCI image layout in this directory
        #[argh(option, arg_name = "DIR")]
        pub oci_layout: Option<PathBuf>,
        /// write a tar that `docker load` accepts
        #[argh(option, arg_name = "FILE")]
        pub tar: Option<PathBuf>,
        /// print the paths that would go into the layer, in layer order, and build nothing
        #[argh(switch)]
        pub list: bool,
    }
}
}

with_registry_flags! {
with_image_flags! {
    /// Build a directory into an OCI image and stream it into a registry (or push an image built earlier).
    #[derive(FromArgs, ArgsInfo, Debug)]
    #[argh(subcommand, name = "push")]
    #[argh(example = "{command_name} ./site                 # to idpbuilder's Gitea as giteaadmin/site:latest")]
    #[argh(example = "{command_name} ./site -t localhost:5000/team/site:v1")]
    #[argh(example = "{command_name} ./app --base python:3.12-slim --layer 'vendor/' -t HOST/team/app:1")]
    #[argh(example = "{command_name} --image site:1 -t HOST/team/site:1    # an image built earlier")]
    #[argh(example = "echo \"$TOKEN\" | {command_name} ./site -t ghcr.io/me/site -u me --password-stdin")]
    pub struct PushArgs {
        /// the directory to push (default: the current directory, unless --oci-layout or --image names an image)
        #[argh(positional)]
        pub context: Option<PathBuf>,
        /// target HOST/OWNER/IMAGE[:TAG] (repeatable; default: gitea.cnoe.localtest.me:8443/giteaadmin/DIR:latest,
        /// host and owner overridable with IDPB_REGISTRY and IDPB_OWNER)
        #[argh(option, short = 't', arg_name = "REF")]
        pub tag: Vec<String>,
        /// push an image from this OCI layout instead of a directory
        #[argh(option, arg_name = "DIR")]
        pub oci_layout: Option<PathBuf>,
        /// the image to take from --oci-layout or the local store, NAME:TAG
        #[argh(option, arg_name = "NAME:TAG")]
        pub image: Option<String>,
        /// upload chunk size, e.g. 8MiB (default 8MiB; smaller through proxies that limit body size)
        #[argh(option, arg_name = "SIZE")]
        pub chunk_size: Option<String>,
    }
}
}

with_registry_flags! {
plain! {
    /// Log in to a registry: check the credentials, then save them in Docker's config.json (or its helper).
    #[derive(FromArgs, ArgsInfo, Debug)]
    #[argh(subcommand, name = "login")]
    #[argh(example = "echo \"$TOKEN\" | {command_name} ghcr.io -u me --password-stdin")]
    pub struct LoginArgs {
        /// the registry, HOST[:PORT]
        #[argh(positional)]
        pub host: String,
    }
}
}

/// Remove a registry's credentials from Docker's config.json (or its helper).
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "logout")]
#[argh(example = "{command_name} ghcr.io")]
pub struct LogoutArgs {
    /// the registry, HOST[:PORT]
    #[argh(positional)]
    pub host: String,
    /// docker config directory (like docker --config)
    #[argh(option, arg_name = "DIR")]
    pub config: Option<PathBuf>,
}

with_registry_flags! {
plain! {
    /// List a registry's repositories (default: idpbuilder's Gitea).
    #[derive(FromArgs, ArgsInfo, Debug)]
    #[argh(subcommand, name = "catalog")]
    #[argh(example = "{command_name}")]
    #[argh(example = "{command_name} localhost:5000 --format json")]
    pub struct CatalogArgs {
        /// the registry, HOST[:PORT]
        #[argh(positional)]
        pub host: Option<String>,
        /// output format: text (default) or json
        #[argh(option, default = "String::from(\"text\")", arg_name = "FORMAT")]
        pub format: String,
        /// no notes on stderr
        #[argh(switch, short = 'q')]
        pub quiet: bool,
    }
}
}

with_registry_flags! {
plain! {
    /// List the tags of a repository, HOST/NAME.
    #[derive(FromArgs, ArgsInfo, Debug)]
    #[argh(subcommand, name = "tags")]
    #[argh(example = "{command_name} gitea.cnoe.localtest.me:8443/giteaadmin/site")]
    pub struct TagsArgs {
        /// the repository, HOST/OWNER/NAME
        #[argh(positional)]
        pub repository: String,
        /// output format: text (default) or json
        #[argh(option, default = "String::from(\"text\")", arg_name = "FORMAT")]
        pub format: String,
        /// no notes on stderr
        #[argh(switch, short = 'q')]
        pub quiet: bool,
    }
}
}

with_registry_flags! {
plain! {
    /// Show an image's manifest and config (each platform of an index).
    #[derive(FromArgs, ArgsInfo, Debug)]
    #[argh(subcommand, name = "inspect")]
    #[argh(example = "{command_name} gitea.cnoe.localtest.me:8443/giteaadmin/site:latest")]
    #[argh(example = "{command_name} localhost:5000/team/site@sha256:... --format json")]
    pub struct InspectArgs {
        /// the image, HOST/OWNER/NAME[:TAG|@DIGEST]
        #[argh(positional)]
        pub reference: String,
        /// output format: text (default) or json
        #[argh(option, default = "String::from(\"text\")", arg_name = "FORMAT")]
        pub format: String,
        /// no notes on stderr
        #[argh(switch, short = 'q')]
        pub quiet: bool,
    }
}
}

/// Show a registry's CA and install it where Docker and docker-idpb look for it (default: fetch idpbuilder's
/// from the cluster with kubectl), so pushes to that registry are verified.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "trust")]
#[argh(example = "{command_name}                       # idpbuilder's CA, from the cluster")]
#[argh(example = "{command_name} localhost:5000 --from-file ca.pem")]
#[argh(example = "sudo {command_name} --system         # the Docker engine trusts it too")]
#[argh(example = "{command_name} --remove localhost:5000")]
pub struct TrustArgs {
    /// the registry, HOST[:PORT] (default: $IDPB_REGISTRY, else gitea.cnoe.localtest.me:8443)
    #[argh(positional)]
    pub host: Option<String>,
    /// read the CA from this PEM file instead of the idpbuilder cluster
    #[argh(option, arg_name = "FILE")]
    pub from_file: Option<std::path::PathBuf>,
    /// install in /etc/docker/certs.d, which the Docker engine reads too (needs root)
    #[argh(switch)]
    pub system: bool,
    /// remove the CA installed for HOST
    #[argh(switch)]
    pub remove: bool,
    /// give up on kubectl after this long, e.g. 10s (default 30s)
    #[argh(option, arg_name = "DURATION")]
    pub timeout: Option<String>,
    /// output format: text (default) or json
    #[argh(option, default = "String::from(\"text\")", arg_name = "FORMAT")]
    pub format: String,
    /// no notes on stderr
    #[argh(switch, short = 'q')]
    pub quiet: bool,
}

/// List the images in the local store: name, tag, digest, age and size.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "images")]
#[argh(example = "{command_name}")]
#[argh(example = "{command_name} --format json")]
pub struct ImagesArgs {
    /// output format: text (default) or json (size: the manifest's or index's; total_size: every blob once)
    #[argh(option, default = "String::from(\"text\")", arg_name = "FORMAT")]
    pub format: String,
    /// print only NAME:TAG, one per line
    #[argh(switch, short = 'q')]
    pub quiet: bool,
}

/// Remove images from the local store by name (their blobs stay until `prune`).
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "rm")]
#[argh(example = "{command_name} site:1 site:2")]
pub struct RmArgs {
    /// the images, NAME[:TAG] (default tag: latest)
    #[argh(positional)]
    pub names: Vec<String>,
    /// output format: text (default) or json
    #[argh(option, default = "String::from(\"text\")", arg_name = "FORMAT")]
    pub format: String,
    /// print nothing on success
    #[argh(switch, short = 'q')]
    pub quiet: bool,
}

/// Delete the blobs no image in the local store uses, and temp files left by interrupted runs.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "prune")]
#[argh(example = "{command_name}                       # after rm: frees the space")]
pub struct PruneArgs {
    /// output format: text (default) or json
    #[argh(option, default = "String::from(\"text\")", arg_name = "FORMAT")]
    pub format: String,
    /// no notes on stderr (such as waiting for a build into the store)
    #[argh(switch, short = 'q')]
    pub quiet: bool,
}

/// Answer the docker credential helper protocol for idpbuilder's Gitea (get, list, store, erase).
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "credential")]
#[argh(example = "echo gitea.cnoe.localtest.me:8443 | {command_name} get")]
pub struct CredentialArgs {
    /// get, list, store or erase
    #[argh(positional)]
    pub action: String,
}

/// The registry flags, borrowed from whichever command declared them.
pub struct RegistryFlagValues<'a> {
    pub insecure: bool,
    pub plain_http: bool,
    pub ca_file: &'a [PathBuf],
    pub tls_verify: Option<bool>,
    pub username: Option<&'a str>,
    pub password_stdin: bool,
    pub retries: Option<u32>,
    pub timeout: Option<&'a str>,
    pub config: Option<&'a std::path::Path>,
}

/// Commands that talk to registries.
pub trait RegistryFlags {
    fn registry_flags(&self) -> RegistryFlagValues<'_>;
    fn set_docker_config(&mut self, dir: Option<PathBuf>);

    /// TLS and retry options, validated.
    fn connect_options(&self) -> Result<crate::registry::ConnectOptions> {
        let f = self.registry_flags();
        if (f.plain_http || f.insecure) && f.tls_verify == Some(true) {
            let other = if f.plain_http { "--plain-http" } else { "--insecure" };
            return Err(Error::usage(format!("{other} and --tls-verify=true contradict each other: choose one")));
        }
        let mut retry = crate::registry::RetryPolicy::default();
        if let Some(n) = f.retries {
            retry.attempts = n.saturating_add(1);
        }
        if let Some(t) = f.timeout {
            retry.budget = parse_duration("--timeout", t)?;
        }
        for file in f.ca_file {
            if !file.is_file() {
                return Err(Error::usage(format!("--ca-file {}: no such file", file.display())));
            }
        }
        let tls = crate::tls::TlsOptions {
            insecure: f.insecure,
            plain_http: f.plain_http,
            ca_files: f.ca_file.to_vec(),
            verify: f.tls_verify,
            anchors: Vec::new(),
        };
        Ok(crate::registry::ConnectOptions {
            tls,
            retry,
            request_timeout: None,
            cancel: crate::signal::Cancel::process(),
            quiet: false,
        })
    }

    /// Where credentials come from; reads the password from stdin for `--password-stdin`.
    fn credential_lookup(&self) -> Result<crate::credentials::Lookup> {
        let f = self.registry_flags();
        let password = match (f.username, f.password_stdin) {
            (Some(_), true) => Some(read_password_stdin()?),
            (None, true) => return Err(Error::usage("--password-stdin needs -u USER")),
            (Some(_), false) => {
                return Err(Error::usage("-u USER needs --password-stdin (passwords are never taken as arguments)"));
            }
            (None, false) => None,
        };
        // A credential helper gets at most the operation's budget (and never more than 30 s).
        let helper_timeout = f.timeout.map(|t| parse_duration("--timeout", t)).transpose()?;
        Ok(crate::credentials::Lookup {
            username: f.username.map(str::to_string),
            password,
            config_dir: f.config.map(PathBuf::from),
            helper_timeout,
            cancel: crate::signal::Cancel::process(),
        })
    }
}

/// The password or token piped into stdin, without its trailing newline.
pub fn read_password_stdin() -> Result<String> {
    use std::io::Read;
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| Error::io("stdin", "read", e))?;
    let p = s.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        return Err(Error::usage("--password-stdin: stdin was empty; pipe the password or token into it"));
    }
    Ok(p)
}

/// One `--platform` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformChoice {
    One(Platform),
    /// Every platform of the base.
    All,
}

/// A platform to build, with its own context directory (`OS/ARCH=DIR`) or the command's.
#[derive(Debug, Clone)]
pub struct PlatformTarget {
    pub platform: PlatformChoice,
    pub context: Option<PathBuf>,
}

/// The shared image flags, borrowed from whichever command declared them.
pub struct ImageFlagValues<'a> {
    pub base: Option<&'a str>,
    pub layer: &'a [String],
    pub platform: &'a [String],
    pub entrypoint: Option<&'a str>,
    pub cmd: Option<&'a str>,
    pub env: &'a [String],
    pub workdir: Option<&'a str>,
    pub user: Option<&'a str>,
    pub label: &'a [String],
    pub annotation: &'a [String],
    pub expose: &'a [String],
    pub prefix: Option<&'a str>,
    pub preserve_mtime: bool,
    pub chown: Option<&'a str>,
    pub compression_level: Option<u8>,
    pub format: &'a str,
    pub no_cache: bool,
    pub no_vcs: bool,
}

/// Commands that carry the image flags.
pub trait ImageFlags {
    fn image_flags(&self) -> ImageFlagValues<'_>;

    /// Config and manifest options, validated.
    fn image_options(&self) -> Result<ImageOptions> {
        let f = self.image_flags();
        let mut o = ImageOptions {
            platform: None,
            entrypoint: f.entrypoint.map(|s| parse_command("--entrypoint", s)).transpose()?,
            cmd: f.cmd.map(|s| parse_command("--cmd", s)).transpose()?,
            workdir: f.workdir.map(str::to_string),
            user: f.user.map(str::to_string),
            ..Default::default()
        };
        for e in f.env {
            o.env.push(parse_key_value("--env", e)?);
        }
        for l in f.label {
            let (k, v) = parse_key_value("--label", l)?;
            o.labels.insert(k, v);
        }
        for a in f.annotation {
            // buildx's prefixes: `index:` for the index of a multi-platform image, `manifest:` (or none) for
            // each image manifest.
            let (k, v) = parse_key_value("--annotation", a)?;
            if let Some(k) = k.strip_prefix("index:") {
                o.index_annotations.insert(k.to_string(), v);
            } else {
                o.annotations.insert(k.strip_prefix("manifest:").unwrap_or(&k).to_string(), v);
            }
        }
        let targets = self.platforms()?;
        if !o.index_annotations.is_empty() && !is_multi_platform(&targets) {
            return Err(Error::usage(
                "--annotation index:KEY=VALUE annotates the index of a multi-platform image: give several \
                 --platform values, or drop the index: prefix",
            ));
        }
        if let [one] = targets.as_slice()
            && let PlatformChoice::One(p) = &one.platform
        {
            o.platform = Some(p.clone());
        }
        for p in f.expose {
            o.exposed_ports.push(parse_port(p)?);
        }
        Ok(o)
    }

    /// Adds the git origin and commit of the repository holding `context_dir` to `image` (see `vcs`),
    /// unless `--no-vcs`.
    fn add_provenance(&self, image: &mut ImageOptions, context_dir: &std::path::Path, progress: &mut Progress) {
        if !self.image_flags().no_vcs {
            crate::vcs::stamp(image, context_dir, progress);
        }
    }

    /// Layer options, validated; the epoch comes from `SOURCE_DATE_EPOCH` when set.
    fn layer_options(&self) -> Result<LayerOptions> {
        let f = self.image_flags();
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.trim().is_empty() => {
                v.trim().parse::<u64>().ok().filter(|e| *e <= MAX_EPOCH).ok_or_else(|| {
                    Error::usage(format!(
                        "invalid SOURCE_DATE_EPOCH {v:?}: use whole seconds since 1970, e.g. $(git log -1 --format=%ct)"
                    ))
                })?
            }
            _ => 0,
        };
        let chown = match f.chown {
            None => (0, 0),
            Some(s) => {
                let parsed = s
                    .split_once(':')
                    .and_then(|(u, g)| Some((u64::from(u.parse::<u32>().ok()?), u64::from(g.parse::<u32>().ok()?))));
                parsed.ok_or_else(|| {
                    Error::usage(format!("invalid --chown {s:?}: use numeric UID:GID, e.g. 1000:1000"))
                })?
            }
        };
        let prefix = match f.prefix {
            None => String::new(),
            Some(p) => {
                let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
                if parts.contains(&"..") || !p.starts_with('/') && !p.is_empty() && parts.is_empty() {
                    return Err(Error::usage(format!("invalid --prefix {p:?}: use an absolute path such as /app")));
                }
                parts.join("/")
            }
        };
        let level = f.compression_level.unwrap_or(crate::gzip::DEFAULT_LEVEL);
        if level > 9 {
            return Err(Error::usage(format!("invalid --compression-level {level}: use 0 (store) to 9 (smallest)")));
        }
        Ok(LayerOptions { epoch, preserve_mtime: f.preserve_mtime, chown, prefix, level, rootfs: None })
    }

    /// The layer cache in the local store, unless `--no-cache`.
    fn layer_cache(&self) -> Result<Option<crate::cache::LayerCache>> {
        if self.image_flags().no_cache {
            return Ok(None);
        }
        Ok(store_dir().ok().map(|d| crate::cache::LayerCache::new(&d.join("cache"))))
    }

    /// `--platform` values, validated (comma lists and repeats flattened, duplicates dropped).
    fn platforms(&self) -> Result<Vec<PlatformTarget>> {
        let mut out: Vec<PlatformTarget> = Vec::new();
        for value in self.image_flags().platform {
            for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (spec, dir) = match item.split_once('=') {
                    Some((s, d)) if !d.is_empty() => (s, Some(PathBuf::from(d))),
                    Some(_) => {
                        return Err(Error::usage(format!("invalid --platform {item:?}: give a directory after =")));
                    }
                    None => (item, None),
                };
                let platform = if spec == "all" {
                    if dir.is_some() {
                        return Err(Error::usage("--platform all=DIR: `all` takes the context, not a directory"));
                    }
                    PlatformChoice::All
                } else {
                    PlatformChoice::One(Platform::parse(spec)?)
                };
                match out.iter().find(|t| t.platform == platform) {
                    Some(t) if t.context != dir => {
                        return Err(Error::usage(format!(
                            "--platform {item:?}: that platform is given twice with different directories"
                        )));
                    }
                    Some(_) => {}
                    None => out.push(PlatformTarget { platform, context: dir }),
                }
            }
        }
        if out.len() > 1 && out.iter().any(|t| t.platform == PlatformChoice::All) {
            return Err(Error::usage("--platform all already means every platform of the base: give it alone"));
        }
        Ok(out)
    }

    /// `--layer` patterns, validated.
    fn split(&self) -> Result<crate::walk::Split> {
        crate::walk::Split::parse(self.image_flags().layer)
    }

    /// `--base`, else `IDPB_BASE`, else scratch.
    fn base_ref(&self) -> Result<crate::base::BaseRef> {
        let from_env = std::env::var("IDPB_BASE").ok().filter(|v| !v.trim().is_empty());
        match self.image_flags().base.map(str::to_string).or(from_env) {
            Some(b) => crate::base::BaseRef::parse(&b),
            None => Ok(crate::base::BaseRef::Scratch),
        }
    }

    /// `--format`, validated.
    fn format(&self) -> Result<output::Format> {
        output::Format::parse(self.image_flags().format)
    }
}

/// Resolves the base image for `platform`, connecting to its registry with the command's credentials and
/// TLS options (the base's host may need other credentials than the target's).
pub(crate) fn resolve_base<A: ImageFlags + RegistryFlags>(
    args: &A,
    base: &crate::base::BaseRef,
    platform: &Platform,
    quiet: bool,
    lookup: &crate::credentials::Lookup,
) -> Result<Option<crate::base::Base>> {
    if *base == crate::base::BaseRef::Scratch {
        return Ok(None);
    }
    let cache = store_dir().ok().map(|d| d.join("cache"));
    crate::base::resolve(base, platform, cache.as_deref(), base_opener(args, lookup, quiet)?)
}

/// Warns when `--user` names a user on an image with no base and no `/etc/passwd` in the context: a runtime
/// cannot resolve the name and the container will not start.
pub(crate) fn warn_unresolvable_user(
    plan: &crate::pipeline::Plan,
    scratch: bool,
    progress: &mut crate::progress::Progress,
) {
    let Some(user) = plan.image.user.as_deref() else { return };
    if !scratch || !crate::image::user_needs_passwd(user) {
        return;
    }
    let prefix = plan.layer.prefix.as_str();
    let in_context = if prefix.is_empty() {
        Some("etc/passwd")
    } else {
        "etc/passwd".strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
    };
    if in_context.is_some_and(|p| plan.context.root().join(p).is_file()) {
        return;
    }
    progress.warn(&format!(
        "--user {}: the image has no /etc/passwd (no --base, none in the context), so a runtime cannot resolve \
         that name; use numeric ids such as 65534:65534, or build on a --base that has the user",
        crate::progress::escaped(user)
    ));
}

/// Connects to a base's registry when first needed, with the command's credentials and TLS options.
fn base_opener<A: RegistryFlags>(
    args: &A,
    lookup: &crate::credentials::Lookup,
    quiet: bool,
) -> Result<crate::base::Connect> {
    let mut connect = args.connect_options()?;
    connect.quiet = quiet;
    let lookup = lookup.clone();
    Ok(Box::new(move |host: &str| {
        crate::registry::open(host, &lookup, &connect, &mut crate::progress::Progress::new(quiet))
    }))
}

/// Whether the `--platform` values ask for an index (several platforms, or `all`).
pub(crate) fn is_multi_platform(targets: &[PlatformTarget]) -> bool {
    targets.len() > 1 || targets.iter().any(|t| t.platform == PlatformChoice::All)
}

/// The platforms to build and their context directories: the `--platform` list, or with `all` every
/// platform of the base.
pub(crate) fn platform_list<A: ImageFlags + RegistryFlags>(
    base: &crate::base::BaseRef,
    targets: &[PlatformTarget],
    lookup: &crate::credentials::Lookup,
    args: &A,
    quiet: bool,
) -> Result<Vec<(Platform, Option<PathBuf>)>> {
    if targets.iter().any(|t| t.platform == PlatformChoice::All) {
        let cache = store_dir().ok().map(|d| d.join("cache"));
        let list = crate::base::platforms(base, cache.as_deref(), base_opener(args, lookup, quiet)?)?;
        return Ok(list.into_iter().map(|p| (p, None)).collect());
    }
    Ok(targets
        .iter()
        .filter_map(|t| match &t.platform {
            PlatformChoice::One(p) => Some((p.clone(), t.context.clone())),
            PlatformChoice::All => None,
        })
        .collect())
}

/// One pipeline item per platform: its context (its own directory, or the command's), and its base.
pub(crate) fn platform_images<'a>(
    plan: &crate::pipeline::Plan,
    list: &[(Platform, Option<PathBuf>)],
    command_context: Option<&std::path::Path>,
    bases: &'a mut [Option<crate::base::Base>],
) -> Result<Vec<crate::pipeline::PlatformImage<'a>>> {
    let mut items = Vec::new();
    // A platform without `=DIR` uses CONTEXT (default `.`), not another platform's directory.
    let mut shared: Option<crate::walk::Context> = None;
    for ((platform, dir), base) in list.iter().zip(bases.iter_mut()) {
        let context = match dir {
            Some(d) => crate::walk::Context::open(d)?,
            None => match &shared {
                Some(c) => c.clone(),
                None => {
                    let c = match command_context {
                        Some(d) if d == plan.context.root() => plan.context.clone(),
                        Some(d) => crate::walk::Context::open(d)?,
                        None => crate::walk::Context::open(std::path::Path::new("."))?,
                    };
                    shared = Some(c.clone());
                    c
                }
            },
        };
        let plan = crate::pipeline::Plan { context, ..plan.clone() };
        items.push(crate::pipeline::PlatformImage { platform: platform.clone(), plan, base: base.as_mut() });
    }
    Ok(items)
}

/// The Docker CLI plugin metadata, printed for `docker-cli-plugin-metadata`.
pub fn plugin_metadata() -> String {
    serde_json::json!({
        "SchemaVersion": "0.1.0",
        "Vendor": "docker-idpb",
        "Version": env!("CARGO_PKG_VERSION"),
        "ShortDescription": "Build a directory into an OCI image and push it, no daemon needed",
    })
    .to_string()
}

/// The credential helper protocol, for the binary installed as `docker-credential-idpb`.
pub fn credential_helper(action: &str) -> Result<()> {
    credential::run(action)
}

/// How usage lines name the program: `docker idpb` as a plugin, `docker-idpb` standalone.
pub fn program_name(inv: &argv::Invocation) -> &'static str {
    if inv.plugin { "docker idpb" } else { "docker-idpb" }
}

/// A message for the user, naming commands as they were invoked: library messages say `docker-idpb CMD`,
/// which a plugin's user types as `docker idpb CMD`.
pub fn as_invoked(message: &str, inv: &argv::Invocation) -> String {
    if inv.plugin { message.replace("docker-idpb ", "docker idpb ") } else { message.to_string() }
}

/// Runs the parsed command line.
pub fn run(cli: Cli, inv: &argv::Invocation) -> Result<()> {
    let docker_config = inv.docker_config.as_ref().map(PathBuf::from);
    match cli.command {
        Command::Build(mut args) => {
            args.set_docker_config(docker_config);
            build::run(args)
        }
        Command::Push(mut args) => {
            args.set_docker_config(docker_config);
            push::run(args)
        }
        Command::Login(mut args) => {
            args.set_docker_config(docker_config);
            login::login(args)
        }
        Command::Logout(mut args) => {
            if args.config.is_none() {
                args.config = docker_config;
            }
            login::logout(args)
        }
        Command::Catalog(mut args) => {
            args.set_docker_config(docker_config);
            inspect::catalog(args)
        }
        Command::Tags(mut args) => {
            args.set_docker_config(docker_config);
            inspect::tags(args)
        }
        Command::Inspect(mut args) => {
            args.set_docker_config(docker_config);
            inspect::inspect(args)
        }
        Command::Images(args) => store::images(args),
        Command::Rm(args) => store::rm(args),
        Command::Prune(args) => store::prune(args),
        Command::Credential(args) => credential::run(&args.action),
        Command::Trust(args) => trust::run(args),
        Command::Version(_) => {
            println!("docker-idpb {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

/// 9999-12-31T23:59:59Z: the last moment RFC 3339 (the config's `created`) can express.
const MAX_EPOCH: u64 = 253_402_300_799;

/// Parses a size like `8MiB`, `512k`, `4M`, `1048576`.
pub fn parse_size(flag: &str, s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => 0,
    };
    match num.parse::<u64>() {
        Ok(n) if mult > 0 && n > 0 => Ok(n.saturating_mul(mult)),
        _ => Err(Error::usage(format!("invalid {flag} {s:?}: use a size such as 8MiB, 512KiB or 1048576"))),
    }
}

/// Parses a duration like `90s`, `5m`, `1h`, `500ms`, or plain seconds.
pub fn parse_duration(flag: &str, s: &str) -> Result<std::time::Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: Option<u64> = num.parse().ok();
    let secs = |n: u64, mult: u64| n.checked_mul(mult).map(std::time::Duration::from_secs);
    let d = match (n, unit) {
        (Some(n), "ms") => Some(std::time::Duration::from_millis(n)),
        (Some(n), "" | "s") => secs(n, 1),
        (Some(n), "m") => secs(n, 60),
        (Some(n), "h") => secs(n, 3600),
        _ => None,
    };
    d.filter(|d| !d.is_zero())
        .ok_or_else(|| Error::usage(format!("invalid {flag} {s:?}: use a duration such as 90s, 5m or 500ms")))
}

/// `$IDPB_HOME`, else `$XDG_DATA_HOME/idpb`, else `~/.local/share/idpb`: the local image store.
pub fn store_dir() -> Result<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = env("IDPB_HOME") {
        return Ok(home);
    }
    if let Some(data) = env("XDG_DATA_HOME") {
        return Ok(data.join("idpb"));
    }
    match env("HOME") {
        Some(home) => Ok(home.join(".local/share/idpb")),
        None => Err(Error::usage("cannot find the local image store: set IDPB_HOME or HOME, or use --oci-layout DIR")),
    }
}
