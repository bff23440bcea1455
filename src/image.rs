//! OCI image types (descriptor, manifest, index, config) and the knobs that fill the config.
//!
//! The types mirror the image-spec's JSON field for field, with serde doing the encoding. Determinism
//! matters more than generality here: maps are `BTreeMap` so keys serialise sorted, optional fields are
//! skipped when empty, and `created` is derived from the build epoch, so the same inputs give the same
//! config and manifest bytes and hence the same digests. Unknown fields of manifests read back from a
//! registry or layout are ignored. A [`MediaType`] is a type, parsed once: any string is kept (Docker schema 2
//! documents and types this crate does not know parse too), and questions like "is this an index" are
//! methods rather than string comparisons scattered through the code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Manifest annotations naming the image an image was built on (image-spec's pre-defined keys).
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
/// The repository and commit the image was built from (image-spec's pre-defined keys), added as manifest
/// annotations and config labels from the context's git repository (see `vcs`).
pub const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
pub const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
/// Index-entry annotation of the local store: when the entry was written (RFC 3339). It lives in
/// `index.json`, outside every digest, so it costs an image's reproducibility nothing.
pub const ANNOTATION_STORED: &str = "dev.idpb.stored";

/// A media type, kept as given; [`MediaType::is_index`] and [`MediaType::is_image`] know OCI's and Docker's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MediaType(String);

impl MediaType {
    pub fn new(s: impl Into<String>) -> MediaType {
        MediaType(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An OCI image index or a Docker manifest list.
    pub fn is_index(&self) -> bool {
        self.0 == MEDIA_TYPE_INDEX || self.0 == MEDIA_TYPE_DOCKER_LIST
    }

    /// An OCI image manifest or a Docker schema 2 manifest.
    pub fn is_image(&self) -> bool {
        self.0 == MEDIA_TYPE_MANIFEST || self.0 == MEDIA_TYPE_DOCKER_MANIFEST
    }
}

impl std::fmt::Display for MediaType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for MediaType {
    fn from(s: &str) -> MediaType {
        MediaType(s.to_string())
    }
}

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A pointer to a blob: media type, digest, size (and optional platform and annotations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: MediaType,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields this crate does not interpret (`urls`, `artifactType`, `data`...), kept so that rewriting
    /// another tool's index.json loses nothing.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: MediaType::new(media_type),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
            other: BTreeMap::new(),
        }
    }
}

/// An image manifest (OCI, or Docker schema 2 when read back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "MediaType::is_empty")]
    pub media_type: MediaType,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (also the shape of an OCI layout's `index.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "MediaType::is_empty")]
    pub media_type: MediaType,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Index {
    pub fn empty() -> Index {
        Index {
            schema_version: 2,
            media_type: MEDIA_TYPE_INDEX.into(),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// OS, architecture and variant of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `OS/ARCH[/VARIANT]` and checks it against the values the image-index spec lists (Go's GOOS
    /// and GOARCH, and the variants of arm, arm64 and amd64): a typo is an error naming the closest value.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(Error::usage(format!(
                "invalid --platform {s:?}: use OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm/v7"
            )));
        }
        let (os, arch, variant) = (parts[0], parts[1], parts.get(2).copied());
        let unknown = |what: &str, value: &str, suggestion: String| {
            Error::usage(format!("invalid --platform {s:?}: unknown {what} {value:?}; did you mean {suggestion}?"))
        };
        if !KNOWN_OS.contains(&os) {
            let rest = parts[1..].join("/");
            return Err(unknown("operating system", os, format!("{}/{rest}", closest(os, KNOWN_OS))));
        }
        if !KNOWN_ARCH.contains(&arch) {
            let variant = variant.map(|v| format!("/{v}")).unwrap_or_default();
            return Err(unknown("architecture", arch, format!("{os}/{}{variant}", closest(arch, KNOWN_ARCH))));
        }
        if let Some(v) = variant {
            let allowed = variants(arch);
            if !allowed.contains(&v) {
                return Err(match allowed {
                    [] => Error::usage(format!("invalid --platform {s:?}: {arch} has no variants; use {os}/{arch}")),
                    _ => Error::usage(format!(
                        "invalid --platform {s:?}: unknown variant {v:?} of {arch}; use one of {}",
                        allowed.iter().map(|a| format!("{os}/{arch}/{a}")).collect::<Vec<_>>().join(", ")
                    )),
                });
            }
        }
        Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: variant.map(str::to_string) })
    }

    /// linux on the host's architecture, in Go's names.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        let variant = (arch == "arm64").then(|| "v8".to_string());
        Platform { architecture: arch.to_string(), os: "linux".to_string(), variant }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Go's GOOS values (`go tool dist list`), which the image-index spec uses for `os`.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

/// Go's GOARCH values, which the image-index spec uses for `architecture`.
const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "arm64",
    "arm64be",
    "armbe",
    "loong64",
    "mips",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "mipsle",
    "ppc",
    "ppc64",
    "ppc64le",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// The variants the spec (and Go's GOARM, GOARM64, GOAMD64) name for an architecture.
fn variants(arch: &str) -> &'static [&'static str] {
    match arch {
        "arm" => &["v5", "v6", "v7", "v8"],
        "arm64" => &["v8", "v8.0", "v8.1", "v8.2", "v8.3", "v8.4", "v8.5", "v8.6", "v8.7", "v8.8", "v8.9", "v9"],
        "amd64" => &["v1", "v2", "v3", "v4"],
        _ => &[],
    }
}

/// The candidate with the smallest edit distance to `word` (ties: the first listed).
fn closest<'a>(word: &str, candidates: &[&'a str]) -> &'a str {
    candidates.iter().copied().min_by_key(|c| edit_distance(word, c)).unwrap_or("linux")
}

/// Levenshtein distance, for "did you mean" suggestions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The runtime part of an image config (`config` in the JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "ExposedPorts", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "Volumes", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "StopSignal", default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Fields this crate does not set (`Healthcheck`, `Shell`, `OnBuild`...), kept from a base image.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// The image config blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: RuntimeConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Fields this crate does not set (`author`, `os.version`...), kept from a base image.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// What the user asked to put in the config and manifest (the image flags).
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    pub platform: Option<Platform>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Annotations of the index, for a multi-platform image (`--annotation index:K=V`).
    pub index_annotations: BTreeMap<String, String>,
    pub exposed_ports: Vec<String>,
}

/// Default PATH, as BuildKit sets for images that define none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl ImageOptions {
    /// The config for an image of layers `diff_ids` (ours only), from scratch, created at `epoch` (seconds).
    pub fn config(&self, diff_ids: Vec<Digest>, epoch: u64) -> ImageConfig {
        self.config_on(None, diff_ids, epoch)
    }

    /// The config for our layers `diff_ids` on top of `base` (None: scratch), as Docker, crane and ko build
    /// it: the base's runtime config with ours applied over it (Env by key, Labels merged, ExposedPorts
    /// united; `--entrypoint` drops the base's Cmd unless `--cmd` is given, as in a Dockerfile), the base's
    /// platform, the base's diff_ids and history followed by ours (one history entry per new layer).
    pub fn config_on(&self, base: Option<&ImageConfig>, diff_ids: Vec<Digest>, epoch: u64) -> ImageConfig {
        let created = rfc3339(epoch);
        let (mut config, platform, mut all_diff_ids, mut history, other) = match base {
            Some(b) => (
                b.config.clone(),
                Platform { architecture: b.architecture.clone(), os: b.os.clone(), variant: b.variant.clone() },
                b.rootfs.diff_ids.clone(),
                b.history.clone(),
                b.other.clone(),
            ),
            None => (
                RuntimeConfig { env: vec![DEFAULT_PATH.to_string()], ..Default::default() },
                self.platform.clone().unwrap_or_else(Platform::host),
                Vec::new(),
                Vec::new(),
                BTreeMap::new(),
            ),
        };
        // A repeated key replaces the earlier value in place, as Docker's ENV does.
        for (k, v) in &self.env {
            let entry = format!("{k}={v}");
            match config.env.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) == k) {
                Some(existing) => *existing = entry,
                None => config.env.push(entry),
            }
        }
        if let Some(ep) = &self.entrypoint {
            config.entrypoint = Some(ep.clone());
            config.cmd = self.cmd.clone();
        } else if let Some(cmd) = &self.cmd {
            config.cmd = Some(cmd.clone());
        }
        if self.workdir.is_some() {
            config.working_dir = self.workdir.clone();
        }
        if self.user.is_some() {
            config.user = self.user.clone();
        }
        for (k, v) in &self.labels {
            config.labels.insert(k.clone(), v.clone());
        }
        for p in &self.exposed_ports {
            config.exposed_ports.entry(p.clone()).or_default();
        }
        for _ in &diff_ids {
            history.push(History {
                created: Some(created.clone()),
                created_by: Some("docker-idpb build".to_string()),
                ..Default::default()
            });
        }
        all_diff_ids.extend(diff_ids);
        ImageConfig {
            created: Some(created),
            architecture: platform.architecture,
            os: platform.os,
            variant: platform.variant,
            config,
            rootfs: RootFs { kind: "layers".to_string(), diff_ids: all_diff_ids },
            history,
            other,
        }
    }
}

/// Parses `--expose PORT[/PROTO]` into Docker's `PORT/proto` key.
pub fn parse_port(s: &str) -> Result<String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = proto.to_ascii_lowercase();
    let valid_port = port.parse::<u16>().is_ok_and(|p| p > 0);
    if !valid_port || !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(Error::usage(format!("invalid --expose {s:?}: use PORT[/tcp|udp|sctp], e.g. 8080/tcp")));
    }
    Ok(format!("{port}/{proto}"))
}

/// Parses `--cmd`/`--entrypoint`: a JSON array of strings, or a plain string split on whitespace.
pub fn parse_command(flag: &str, s: &str) -> Result<Vec<String>> {
    let t = s.trim();
    if t.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(t).map_err(|e| {
            Error::usage(format!("invalid {flag} {s:?}: not a JSON array of strings ({e}); e.g. '[\"/app\", \"-v\"]'"))
        });
    }
    // A plain string is split on whitespace only: quotes, escapes and shell operators would reach the
    // program as literal characters, which is never what was meant. Say so, with the JSON form to use.
    if t.contains(['"', '\'', '\\']) || t.contains(['$', '`', '|', '&', ';', '<', '>']) {
        let suggestion = match shell_words(t) {
            Some(words) if !t.contains(['$', '`', '|', '&', ';', '<', '>']) => words,
            _ => vec!["/bin/sh".to_string(), "-c".to_string(), t.to_string()],
        };
        let json = serde_json::to_string(&suggestion).unwrap_or_default().replace("\",\"", "\", \"");
        // Shown in single quotes, to paste into a shell: a quote inside is closed, escaped and reopened.
        let json = json.replace('\'', "'\\''");
        return Err(Error::usage(format!(
            "invalid {flag} {s:?}: a plain string is split on whitespace, so quotes and shell syntax would reach the \
             program as they are; give a JSON array instead, e.g. {flag} '{json}'"
        )));
    }
    Ok(t.split_whitespace().map(str::to_string).collect())
}

/// `s` split as a POSIX shell splits words (quotes and backslashes, no expansion); None if a quote is open.
fn shell_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => w.push(chars.next()?),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next()?),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Some(words)
}

/// Whether a `--user` value names a user or group (not only numeric ids), which a runtime resolves through
/// the image's `/etc/passwd` and `/etc/group`.
pub fn user_needs_passwd(user: &str) -> bool {
    user.split(':').any(|part| !part.is_empty() && !part.chars().all(|c| c.is_ascii_digit()))
}

/// Parses `K=V` for `--env`, `--label`, `--annotation`.
pub fn parse_key_value(flag: &str, s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(Error::usage(format!("invalid {flag} {s:?}: use KEY=VALUE"))),
    }
}

/// Seconds since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    rfc3339_signed(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// [`rfc3339`] for any time, before 1970 too (certificates may say 1950).
pub fn rfc3339_signed(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The inverse of [`rfc3339`]: `YYYY-MM-DDTHH:MM:SSZ` (fractions of a second allowed and dropped) as seconds
/// since the epoch; `None` for anything else, including offsets other than `Z` and times before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = s.get(from..to)?;
        digits.bytes().all(|c| c.is_ascii_digit()).then(|| digits.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let rest = &s[19..];
    let rest = match rest.strip_prefix('.') {
        Some(frac) => frac.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => rest,
    };
    if !matches!(rest, "Z" | "z") {
        return None;
    }
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    u64::try_from(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days-from-civil).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_back() {
        for secs in [0, 59, 951_782_400, 1_700_000_000, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs), "{}", rfc3339(secs));
        }
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.123456789Z"), Some(1_700_000_000));
        for bad in ["", "2023-11-14", "2023-11-14T22:13:20+01:00", "2023-13-14T22:13:20Z", "1969-12-31T23:59:59Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn platform_parse() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()), ("linux", "arm", Some("v7")));
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//x").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }

    #[test]
    fn platforms_are_checked_against_the_spec_with_the_closest_value_named() {
        for ok in ["linux/amd64", "linux/arm64/v8", "linux/arm/v6", "windows/amd64", "linux/riscv64", "linux/amd64/v3"]
        {
            assert!(Platform::parse(ok).is_ok(), "{ok}");
        }
        let err = |s: &str| Platform::parse(s).unwrap_err().to_string();
        assert!(err("linux/amd65").contains("did you mean linux/amd64?"), "{}", err("linux/amd65"));
        assert!(err("linx/arm64").contains("did you mean linux/arm64?"), "{}", err("linx/arm64"));
        assert!(err("linux/arm/v9").contains("use one of linux/arm/v5, linux/arm/v6"), "{}", err("linux/arm/v9"));
        assert!(err("linux/s390x/v2").contains("has no variants"), "{}", err("linux/s390x/v2"));
        assert!(err("linux/aarch64").contains("unknown architecture"), "{}", err("linux/aarch64"));
    }

    #[test]
    fn flags_parse() {
        assert_eq!(parse_port("80").unwrap(), "80/tcp");
        assert_eq!(parse_port("53/UDP").unwrap(), "53/udp");
        assert!(parse_port("0").is_err());
        assert!(parse_port("http").is_err());
        assert_eq!(parse_command("--cmd", r#"["/bin/app", "a b"]"#).unwrap(), vec!["/bin/app", "a b"]);
        assert_eq!(parse_command("--cmd", "/bin/app  -v").unwrap(), vec!["/bin/app", "-v"]);
        assert!(parse_command("--cmd", "[1,2]").is_err());
        let err = parse_command("--cmd", "echo it's").unwrap_err().to_string();
        assert!(err.ends_with(r#"e.g. --cmd '["/bin/sh", "-c", "echo it'\''s"]'"#), "{err}");
        assert_eq!(parse_key_value("--env", "A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_key_value("--env", "=x").is_err());
        assert!(parse_key_value("--env", "noequals").is_err());
    }

    #[test]
    fn config_round_trip_and_determinism() {
        let mut opts = ImageOptions {
            platform: Some(Platform::parse("linux/amd64").unwrap()),
            entrypoint: Some(vec!["/app".into()]),
            workdir: Some("/w".into()),
            user: Some("1000:1000".into()),
            exposed_ports: vec!["8080/tcp".into()],
            ..Default::default()
        };
        opts.labels.insert("b".into(), "2".into());
        opts.labels.insert("a".into(), "1".into());
        opts.env.push(("X".into(), "1".into()));
        let d = Digest::of(b"layer");
        let config = opts.config(vec![d.clone()], 0);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(json, serde_json::to_string(&opts.config(vec![d], 0)).unwrap());
        assert!(json.contains(r#""Labels":{"a":"1","b":"2"}"#), "{json}");
        assert!(json.contains(r#""ExposedPorts":{"8080/tcp":{}}"#), "{json}");
        assert!(json.contains(r#""created":"1970-01-01T00:00:00Z""#), "{json}");
        let back: ImageConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
        assert_eq!(back.config.env[0], DEFAULT_PATH);
        opts.env.push(("PATH".into(), "/bin".into()));
        opts.env.push(("X".into(), "2".into()));
        assert_eq!(opts.config(vec![], 0).config.env, ["PATH=/bin", "X=2"]);
    }

    #[test]
    fn manifest_and_index_round_trip() {
        let mut m = Manifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_MANIFEST.into(),
            config: Descriptor::new(MEDIA_TYPE_CONFIG, Digest::of(b"c"), 1),
            layers: vec![Descriptor::new(MEDIA_TYPE_LAYER_GZIP, Digest::of(b"l"), 2)],
            annotations: BTreeMap::new(),
        };
        m.annotations.insert("k".into(), "v".into());
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.starts_with(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json""#));
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        let mut idx = Index::empty();
        let mut d = Descriptor::new(MEDIA_TYPE_MANIFEST, Digest::of(json.as_bytes()), json.len() as u64);
        d.annotations.insert(ANNOTATION_REF_NAME.into(), "latest".into());
        d.platform = Some(Platform::parse("linux/amd64").unwrap());
        idx.manifests.push(d);
        let s = serde_json::to_string(&idx).unwrap();
        assert_eq!(serde_json::from_str::<Index>(&s).unwrap(), idx);
        // A Docker schema 2 manifest with extra fields parses.
        let docker = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
          "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":7023,
          "digest":"sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"},
          "layers":[],"extra":1}"#;
        assert_eq!(serde_json::from_str::<Manifest>(docker).unwrap().config.size, 7023);
        // Unknown descriptor fields survive a round trip.
        let with_urls = r#"{"mediaType":"m","digest":"sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7","size":1,"urls":["https://x"],"artifactType":"a"}"#;
        let d: Descriptor = serde_json::from_str(with_urls).unwrap();
        let back = serde_json::to_value(&d).unwrap();
        assert_eq!(back["urls"][0], "https://x");
        assert_eq!(back["artifactType"], "a");
    }
}
