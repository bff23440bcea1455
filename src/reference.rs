//! Image references: `[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]`, read the way the Docker CLI reads them.
//!
//! The grammar is Docker's (distribution/reference), written as a small hand parser instead of a regex so
//! each rule can fail with its own message and a corrected reference to copy. Parsing cuts the input from
//! the outside in: the digest after the first `@`, then the registry host (the first `/`-separated component,
//! when it contains `.` or `:` or is `localhost`), then the tag after the first `:` of what remains; each
//! part is validated alone. A name without a host is Docker Hub's, and a one-component Hub name lives in
//! `library/`, so `ubuntu` is `docker.io/library/ubuntu`. One deliberate departure from Docker: Docker takes an uppercase first component (`Foo/bar`) for a registry
//! host, which in practice is always a mistyped repository, so here it is reported as "must be lowercase".
//! Only sha256 digests are accepted, since that is all the rest of the tool computes. The struct keeps plain
//! strings (registry as typed, `index.docker.io` normalised to `docker.io`) because they go straight into
//! URLs, credential lookups and messages.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use crate::error::{Error, Result};

/// The registry of a reference that names none: Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API answers.
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Docker Hub's old name, normalised to [`DOCKER_HUB`] as Docker does.
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Docker Hub's namespace of official images: `ubuntu` is `docker.io/library/ubuntu`.
const OFFICIAL_NAMESPACE: &str = "library";
/// Docker's limit on `registry/repository`.
const NAME_MAX: usize = 255;
/// Docker's limit on a tag.
const TAG_MAX: usize = 128;
/// Sanitised directory names are cut here so that `registry/namespace/name` stays under [`NAME_MAX`].
const SANITIZED_MAX: usize = 128;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` or `[ipv6][:port]`; `docker.io` for Docker Hub.
    pub registry: String,
    /// The path inside the registry, e.g. `library/ubuntu` or `giteaadmin/app`.
    pub repository: String,
    /// The tag, if one was given (see [`Reference::tag_or_latest`]).
    pub tag: Option<String>,
    /// `sha256:<64 lowercase hex>`, if one was given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `NAME[:TAG][@sha256:HEX]`; a name without a registry host is Docker Hub's.
    pub fn parse(input: &str) -> Result<Reference> {
        parse_reference(input)
    }

    /// The tag, or `latest` when none was given (what a registry and Docker assume).
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// `registry/repository:tag`; `@digest` instead of the tag when only a digest was given; both when both
    /// were.
    pub fn full_name(&self) -> String {
        format!("{}{}", self.repo_name(), self.suffix())
    }

    /// Docker's familiar form, without `docker.io/` and `library/`: `nginx:latest`, `me/app:1`,
    /// `127.0.0.1:5000/ns/app:1`.
    pub fn familiar_name(&self) -> String {
        format!("{}{}", self.familiar_repository(), self.suffix())
    }

    /// The repository in Docker's familiar form, without tag or digest: `nginx`, `me/app`,
    /// `127.0.0.1:5000/ns/app`.
    pub fn familiar_repository(&self) -> String {
        if self.registry != DOCKER_HUB {
            return self.repo_name();
        }
        match self.repository.strip_prefix("library/") {
            Some(official) if !official.contains('/') => official.to_string(),
            _ => self.repository.clone(),
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn repo_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The host to send registry API requests to: Docker Hub's API does not answer on `docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB { DOCKER_HUB_API_HOST } else { &self.registry }
    }

    fn suffix(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(tag), Some(digest)) => format!(":{tag}@{digest}"),
            (None, Some(digest)) => format!("@{digest}"),
            (_, None) => format!(":{}", self.tag_or_latest()),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full_name())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Reference> {
        Reference::parse(s)
    }
}

/// Turns a directory's base name into a valid repository path component: lowercase ASCII letters and
/// digits, anything else becomes `-`, a run of separators becomes one (`__` -> `_`, `._` -> `-`), separators
/// at the ends are dropped, and the result is cut to 128 characters. Nothing left gives `image`.
pub fn sanitize_repository_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(SANITIZED_MAX));
    // A separator is only written once a letter or digit follows it, which trims both ends for free.
    let mut pending: Option<char> = None;
    for ch in name.chars().flat_map(char::to_lowercase) {
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            if let Some(sep) = pending.take().filter(|_| !out.is_empty()) {
                out.push(sep);
            }
            out.push(ch);
        } else {
            let sep = if is_separator(ch) { ch } else { '-' };
            pending = Some(match pending {
                Some(prev) if prev != sep => '-',
                _ => sep,
            });
        }
    }
    out.truncate(SANITIZED_MAX);
    let trimmed = out.trim_end_matches(is_separator);
    if trimmed.is_empty() { "image".to_string() } else { trimmed.to_string() }
}

/// True if `host` (optionally with `:port`, IPv6 in brackets or bare) is a loopback address: 127.0.0.0/8,
/// `::1`, `localhost`, or `localtest.me` and any name under it (public DNS answers 127.0.0.1 for those;
/// idpbuilder serves `gitea.cnoe.localtest.me`).
pub fn is_loopback_host(host: &str) -> bool {
    // A bare IPv6 address ("::1") does not split into host and port; it is its own name.
    let name = split_host_port(host).map_or(host, |hp| hp.name);
    if let Ok(ip) = name.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        };
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name == "localtest.me" || name.ends_with(".localtest.me")
}

fn parse_reference(input: &str) -> Result<Reference> {
    let bad = |message: String| Error::Reference { input: input.to_string(), message };
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(bad(
            "the reference is empty: give an image name such as \"myapp\" or \"registry.example.com/team/myapp:1.0\""
                .into(),
        ));
    }
    if trimmed != input {
        return Err(bad(format!("remove the surrounding whitespace: use {trimmed:?}")));
    }
    if input.len() == 64 && is_lower_hex(input) {
        return Err(bad(
            "a 64-character hex string is an image ID, not a name: give a repository name, and pin content with \"NAME@sha256:HEX\""
                .into(),
        ));
    }

    let (name, digest) = match input.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (input, None),
    };
    if name.is_empty() {
        return Err(bad(format!("the name before '@' is empty: write NAME{input}, e.g. \"myapp{input}\"")));
    }
    // Docker also takes an uppercase first component for a host; see the module doc for why we do not.
    let (host, rest) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
        _ => (None, name),
    };
    let (path, tag) = match rest.split_once(':') {
        Some((path, tag)) => (path, Some(tag)),
        None => (rest, None),
    };
    // A corrected reference for messages: the input with its path replaced.
    let rebuild = |fixed_path: &str| {
        let mut s = host.map(|h| format!("{h}/")).unwrap_or_default();
        s.push_str(fixed_path);
        if let Some(tag) = tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = digest {
            s.push('@');
            s.push_str(digest);
        }
        s
    };

    if let Some(host) = host {
        check_host(host).map_err(bad)?;
    }
    if path.is_empty() {
        return Err(bad(match host {
            Some(host) => {
                format!("nothing after \"{host}/\": add a repository, e.g. \"{host}/myapp\"")
            }
            None => "the repository name is empty: put it before the ':', e.g. \"myapp:latest\"".into(),
        }));
    }
    check_path(path, &rebuild).map_err(bad)?;
    if let Some(tag) = tag {
        // `tag` is the end of `name`, after one ':'.
        check_tag(tag, &name[..name.len() - tag.len() - 1]).map_err(bad)?;
    }
    if let Some(digest) = digest {
        check_digest(digest).map_err(bad)?;
    }

    let (registry, repository) = match host {
        Some(host) => (normalize_registry(host), path.to_string()),
        None => (DOCKER_HUB.to_string(), path.to_string()),
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("{OFFICIAL_NAMESPACE}/{repository}")
    } else {
        repository
    };
    let reference =
        Reference { registry, repository, tag: tag.map(str::to_string), digest: digest.map(str::to_string) };
    let length = reference.registry.len() + 1 + reference.repository.len();
    if length > NAME_MAX {
        return Err(bad(format!(
            "\"{}\" is {length} characters long; registry and repository together may have at most {NAME_MAX}",
            reference.repo_name()
        )));
    }
    Ok(reference)
}

fn normalize_registry(host: &str) -> String {
    if host == DOCKER_HUB_LEGACY { DOCKER_HUB.to_string() } else { host.to_string() }
}

/// Checks a repository path; `rebuild` turns a corrected path into the corrected reference to suggest.
fn check_path(path: &str, rebuild: &dyn Fn(&str) -> String) -> std::result::Result<(), String> {
    let components: Vec<&str> = path.split('/').collect();
    let fixed: Vec<String> =
        components.iter().filter(|c| !c.is_empty()).map(|c| sanitize_repository_component(c)).collect();
    let suggestion = if fixed.is_empty() { String::new() } else { format!(": use {:?}", rebuild(&fixed.join("/"))) };
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository names must be lowercase{suggestion}"));
    }
    if components.iter().any(|c| c.is_empty()) {
        return Err(format!(
            "the repository {path:?} has an empty path component (a leading, trailing or double '/'){suggestion}"
        ));
    }
    for component in &components {
        if let Some(problem) = component_problem(component) {
            return Err(format!("repository path component {component:?} {problem}{suggestion}"));
        }
    }
    Ok(())
}

/// Why a non-empty path component breaks `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, or `None` if it does not.
fn component_problem(component: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || is_separator(c);
    if let Some(c) = component.chars().find(|&c| !allowed(c)) {
        return Some(format!(
            "contains {c:?} (allowed: lowercase letters, digits, and '.', '_', '__' or '-' between them)"
        ));
    }
    if let Some(c) = component.chars().next().filter(|&c| is_separator(c)) {
        return Some(format!("starts with '{c}' (separators go between letters or digits)"));
    }
    if let Some(c) = component.chars().last().filter(|&c| is_separator(c)) {
        return Some(format!("ends with '{c}' (separators go between letters or digits)"));
    }
    let bad_run = component
        .split(|c: char| c.is_ascii_alphanumeric())
        .filter(|run| !run.is_empty())
        .find(|run| !(*run == "." || *run == "_" || *run == "__" || run.bytes().all(|b| b == b'-')));
    bad_run.map(|run| format!("has the separator {run:?} (allowed: '.', '_', '__' or a run of '-')"))
}

fn is_separator(c: char) -> bool {
    matches!(c, '.' | '_' | '-')
}

/// Checks a tag against `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; `name` is the reference before the tag, for
/// suggestions.
fn check_tag(tag: &str, name: &str) -> std::result::Result<(), String> {
    if tag.is_empty() {
        return Err(format!("the tag after ':' is empty: remove the ':' or give a tag, e.g. \"{name}:latest\""));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if let Some(c) = tag.chars().find(|&c| !allowed(c)) {
        let hint =
            if c == ':' { " (a registry port goes before the first '/', e.g. \"localhost:5000/app:1\")" } else { "" };
        return Err(format!("tag {tag:?} contains {c:?}; tags use only letters, digits, '_', '.' and '-'{hint}"));
    }
    if tag.starts_with(['.', '-']) {
        return Err(format!("tag {tag:?} starts with '{}'; a tag starts with a letter, digit or '_'", &tag[..1]));
    }
    if tag.len() > TAG_MAX {
        return Err(format!("the tag is {} characters long; tags have at most {TAG_MAX}", tag.len()));
    }
    Ok(())
}

fn check_digest(digest: &str) -> std::result::Result<(), String> {
    const FORM: &str = "a digest is \"sha256:\" followed by 64 lowercase hex characters";
    if digest.is_empty() {
        return Err(format!("the digest after '@' is empty: remove the '@' or give one; {FORM}"));
    }
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(match digest.split_once(':') {
            Some((algorithm, _)) => format!("only sha256 digests are supported, not {algorithm:?}"),
            None => format!("{digest:?} is not a digest; {FORM}"),
        });
    };
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && !is_lower_hex(hex) {
        return Err(format!("digest hex must be lowercase: use \"sha256:{}\"", hex.to_ascii_lowercase()));
    }
    if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("the digest contains {c:?}; {FORM}"));
    }
    if hex.len() != 64 {
        return Err(format!("the digest has {} hex characters; {FORM}", hex.len()));
    }
    Ok(())
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A registry host cut into its name (brackets removed for IPv6) and optional port.
struct HostPort<'a> {
    name: &'a str,
    port: Option<&'a str>,
    ipv6: bool,
}

fn split_host_port(host: &str) -> std::result::Result<HostPort<'_>, String> {
    if let Some(rest) = host.strip_prefix('[') {
        let (name, after) =
            rest.split_once(']').ok_or_else(|| format!("the IPv6 address in {host:?} has no closing ']'"))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| {
                format!("unexpected {after:?} after \"[{name}]\"; write an IPv6 registry as \"[ADDRESS]:PORT\"")
            })?),
        };
        return Ok(HostPort { name, port, ipv6: true });
    }
    if host.matches(':').count() > 1 {
        return Err(format!(
            "registry host {host:?} has several ':'; write an IPv6 address in brackets, e.g. \"[::1]:5000/app\""
        ));
    }
    Ok(match host.split_once(':') {
        Some((name, port)) => HostPort { name, port: Some(port), ipv6: false },
        None => HostPort { name: host, port: None, ipv6: false },
    })
}

/// Checks `label(.label)*(:port)?` or `[ipv6](:port)?`.
fn check_host(host: &str) -> std::result::Result<(), String> {
    let HostPort { name, port, ipv6 } = split_host_port(host)?;
    if ipv6 {
        let hex_or_colon = name.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        if !hex_or_colon || name.parse::<Ipv6Addr>().is_err() {
            return Err(format!("\"[{name}]\" is not an IPv6 address"));
        }
    } else if name.is_empty() {
        return Err(format!("the registry host before {host:?} is empty: write HOST:PORT, e.g. \"localhost{host}\""));
    } else {
        for label in name.split('.') {
            if label.is_empty() {
                return Err(format!("registry host {name:?} has an empty label; check its dots"));
            }
            if let Some(c) = label.chars().find(|&c| !c.is_ascii_alphanumeric() && c != '-') {
                return Err(format!(
                    "registry host {name:?} contains {c:?}; host names use letters, digits, '-' and '.'"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("registry host {name:?} has a label {label:?} that starts or ends with '-'"));
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty() {
            return Err(format!(
                "the registry port after \"{host}\" is empty: remove the ':' or give a port, e.g. \"{host}5000\""
            ));
        }
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "registry port {port:?} of {host:?} is not a number (a tag goes at the end of the reference)"
            ));
        }
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("registry port {port} is out of range; ports are 1 to 65535"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn digest() -> String {
        format!("sha256:{HEX}")
    }

    /// Expected parse: registry, repository, tag, digest, familiar name; or a piece of the error message.
    type Want = std::result::Result<(&'static str, &'static str, Option<String>, bool, String), &'static str>;

    fn ok(registry: &'static str, repository: &'static str, tag: Option<&str>, familiar: &str) -> Want {
        Ok((registry, repository, tag.map(str::to_string), false, familiar.to_string()))
    }

    fn ok_digest(registry: &'static str, repository: &'static str, tag: Option<&str>, familiar: &str) -> Want {
        Ok((registry, repository, tag.map(str::to_string), true, familiar.to_string()))
    }

    fn cases() -> Vec<(String, Want)> {
        let d = digest();
        let x128 = "x".repeat(128);
        let x129 = "x".repeat(129);
        let long_path = format!("a/{}", "b".repeat(250));
        vec![
            // Docker Hub names.
            ("ubuntu".into(), ok("docker.io", "library/ubuntu", None, "ubuntu:latest")),
            ("ubuntu:22.04".into(), ok("docker.io", "library/ubuntu", Some("22.04"), "ubuntu:22.04")),
            ("me/app:v1.2".into(), ok("docker.io", "me/app", Some("v1.2"), "me/app:v1.2")),
            ("docker.io/ubuntu".into(), ok("docker.io", "library/ubuntu", None, "ubuntu:latest")),
            ("docker.io/library/ubuntu:x".into(), ok("docker.io", "library/ubuntu", Some("x"), "ubuntu:x")),
            ("library/ubuntu".into(), ok("docker.io", "library/ubuntu", None, "ubuntu:latest")),
            ("index.docker.io/me/app".into(), ok("docker.io", "me/app", None, "me/app:latest")),
            ("docker.io/library/a/b".into(), ok("docker.io", "library/a/b", None, "library/a/b:latest")),
            ("a/b/c/d".into(), ok("docker.io", "a/b/c/d", None, "a/b/c/d:latest")),
            ("0/1".into(), ok("docker.io", "0/1", None, "0/1:latest")),
            // No '/', so Docker reads these as Hub names with a tag, not as hosts.
            ("localhost".into(), ok("docker.io", "library/localhost", None, "localhost:latest")),
            ("foo.bar:1234".into(), ok("docker.io", "library/foo.bar", Some("1234"), "foo.bar:1234")),
            // Other registries.
            (
                "gitea.cnoe.localtest.me:8443/giteaadmin/app:latest".into(),
                ok(
                    "gitea.cnoe.localtest.me:8443",
                    "giteaadmin/app",
                    Some("latest"),
                    "gitea.cnoe.localtest.me:8443/giteaadmin/app:latest",
                ),
            ),
            ("localhost:5000/a".into(), ok("localhost:5000", "a", None, "localhost:5000/a:latest")),
            ("localhost/a".into(), ok("localhost", "a", None, "localhost/a:latest")),
            ("my-registry:5000/app".into(), ok("my-registry:5000", "app", None, "my-registry:5000/app:latest")),
            ("[::1]:5000/a/b:t".into(), ok("[::1]:5000", "a/b", Some("t"), "[::1]:5000/a/b:t")),
            ("[::1]/a".into(), ok("[::1]", "a", None, "[::1]/a:latest")),
            ("ghcr.io/org/team/app:1".into(), ok("ghcr.io", "org/team/app", Some("1"), "ghcr.io/org/team/app:1")),
            (
                "registry.example.com/a.b/c_d/e__f/g-h/i---j".into(),
                ok(
                    "registry.example.com",
                    "a.b/c_d/e__f/g-h/i---j",
                    None,
                    "registry.example.com/a.b/c_d/e__f/g-h/i---j:latest",
                ),
            ),
            ("UPPER.Example.com/app".into(), ok("UPPER.Example.com", "app", None, "UPPER.Example.com/app:latest")),
            (
                "xn--bcher-kva.example/app".into(),
                ok("xn--bcher-kva.example", "app", None, "xn--bcher-kva.example/app:latest"),
            ),
            (
                "h.io:443/app:Tag_With.Caps-1".into(),
                ok("h.io:443", "app", Some("Tag_With.Caps-1"), "h.io:443/app:Tag_With.Caps-1"),
            ),
            ("app:_private".into(), ok("docker.io", "library/app", Some("_private"), "app:_private")),
            (format!("a:{x128}"), ok("docker.io", "library/a", Some(&x128), &format!("a:{x128}"))),
            // Digests.
            (
                format!("127.0.0.1:5000/ns/app@{d}"),
                ok_digest("127.0.0.1:5000", "ns/app", None, &format!("127.0.0.1:5000/ns/app@{d}")),
            ),
            (format!("ubuntu@{d}"), ok_digest("docker.io", "library/ubuntu", None, &format!("ubuntu@{d}"))),
            (
                format!("ubuntu:22.04@{d}"),
                ok_digest("docker.io", "library/ubuntu", Some("22.04"), &format!("ubuntu:22.04@{d}")),
            ),
            // Empty and whitespace.
            ("".into(), Err("the reference is empty")),
            ("   ".into(), Err("the reference is empty")),
            (" ubuntu".into(), Err("remove the surrounding whitespace: use \"ubuntu\"")),
            // Repository path.
            ("Foo/bar".into(), Err("repository names must be lowercase: use \"foo/bar\"")),
            ("MyApp:1".into(), Err("repository names must be lowercase: use \"myapp:1\"")),
            ("docker.io/Library/ubuntu".into(), Err("must be lowercase: use \"docker.io/library/ubuntu\"")),
            ("localhost:5000/Team/App:v1".into(), Err("must be lowercase: use \"localhost:5000/team/app:v1\"")),
            ("a//b".into(), Err("empty path component (a leading, trailing or double '/'): use \"a/b\"")),
            ("a/".into(), Err("empty path component")),
            ("/a".into(), Err("empty path component")),
            ("localhost:5000/".into(), Err("nothing after \"localhost:5000/\"")),
            (":tag".into(), Err("the repository name is empty")),
            ("a..b".into(), Err("has the separator \"..\" (allowed: '.', '_', '__' or a run of '-'): use \"a.b\"")),
            ("a._b".into(), Err("has the separator \"._\"")),
            ("a___b".into(), Err("has the separator \"___\"")),
            ("-a".into(), Err("starts with '-'")),
            ("me/a_".into(), Err("\"a_\" ends with '_'")),
            ("my app".into(), Err("contains ' '")),
            (
                "me/app!".into(),
                Err(
                    "\"app!\" contains '!' (allowed: lowercase letters, digits, and '.', '_', '__' or '-' between them): use \"me/app\"",
                ),
            ),
            (long_path, Err("registry and repository together may have at most 255")),
            // Tags.
            ("a:".into(), Err("the tag after ':' is empty: remove the ':' or give a tag, e.g. \"a:latest\"")),
            ("localhost:5000/a:".into(), Err("e.g. \"localhost:5000/a:latest\"")),
            (format!("a:{x129}"), Err("the tag is 129 characters long; tags have at most 128")),
            ("a:-x".into(), Err("starts with '-'; a tag starts")),
            ("a:.x".into(), Err("starts with '.'")),
            ("a:b+c".into(), Err("tag \"b+c\" contains '+'")),
            ("a:b:c".into(), Err("a registry port goes before the first '/'")),
            // Digests.
            ("a@".into(), Err("the digest after '@' is empty")),
            ("a@sha256:abc".into(), Err("the digest has 3 hex characters")),
            (format!("a@sha512:{HEX}"), Err("only sha256 digests are supported, not \"sha512\"")),
            (format!("a@sha256:{}", HEX.to_uppercase()), Err("digest hex must be lowercase: use \"sha256:e3b0c442")),
            (format!("a@sha256:{}", "g".repeat(64)), Err("the digest contains 'g'")),
            ("a@latest".into(), Err("\"latest\" is not a digest")),
            (format!("@{d}"), Err("the name before '@' is empty")),
            (HEX.into(), Err("is an image ID, not a name")),
            // Registry hosts.
            ("localhost:/a".into(), Err("the registry port after \"localhost:\" is empty")),
            (":5000/a".into(), Err("the registry host before \":5000\" is empty")),
            ("localhost:abc/a".into(), Err("registry port \"abc\" of \"localhost:abc\" is not a number")),
            (
                "ubuntu:latest/a".into(),
                Err("port \"latest\" of \"ubuntu:latest\" is not a number (a tag goes at the end"),
            ),
            ("localhost:70000/a".into(), Err("registry port 70000 is out of range")),
            ("-bad.example.com/a".into(), Err("label \"-bad\" that starts or ends with '-'")),
            ("bad..example.com/a".into(), Err("has an empty label")),
            ("my_registry.example.com/a".into(), Err("contains '_'; host names use letters")),
            ("[::1/a".into(), Err("has no closing ']'")),
            ("[zz::1]:5000/a".into(), Err("\"[zz::1]\" is not an IPv6 address")),
            ("[::1]x/a".into(), Err("unexpected \"x\" after \"[::1]\"")),
            ("::1/a".into(), Err("write an IPv6 address in brackets")),
        ]
    }

    #[test]
    fn reference_table() {
        let cases = cases();
        assert!(cases.len() >= 40);
        for (input, want) in cases {
            let got = Reference::parse(&input);
            match (want, got) {
                (Ok((registry, repository, tag, has_digest, familiar)), Ok(r)) => {
                    let expected = Reference {
                        registry: registry.into(),
                        repository: repository.into(),
                        tag,
                        digest: has_digest.then(digest),
                    };
                    assert_eq!(r, expected, "{input:?}");
                    assert_eq!(r.familiar_name(), familiar, "{input:?}");
                    // Both printed forms read back as the same image.
                    let pinned = Reference {
                        tag: r.tag.clone().or_else(|| r.digest.is_none().then(|| "latest".into())),
                        ..r.clone()
                    };
                    assert_eq!(Reference::parse(&r.full_name()).ok(), Some(pinned.clone()), "{input:?}");
                    assert_eq!(Reference::parse(&r.familiar_name()).ok(), Some(pinned), "{input:?}");
                }
                (Err(needle), Err(Error::Reference { input: got_input, message })) => {
                    assert_eq!(got_input, input);
                    assert!(message.contains(needle), "{input:?}: {message:?} lacks {needle:?}");
                }
                (want, got) => panic!("{input:?}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn printed_forms() {
        let r = Reference::parse("gitea.cnoe.localtest.me:8443/giteaadmin/app").unwrap();
        assert_eq!(r.tag_or_latest(), "latest");
        assert_eq!(r.full_name(), "gitea.cnoe.localtest.me:8443/giteaadmin/app:latest");
        assert_eq!(r.to_string(), r.full_name());
        assert_eq!(r.repo_name(), "gitea.cnoe.localtest.me:8443/giteaadmin/app");
        assert_eq!(r.api_host(), "gitea.cnoe.localtest.me:8443");

        let hub = Reference::parse("nginx").unwrap();
        assert_eq!(hub.full_name(), "docker.io/library/nginx:latest");
        assert_eq!(hub.familiar_name(), "nginx:latest");
        assert_eq!(hub.repo_name(), "docker.io/library/nginx");
        assert_eq!(hub.api_host(), "registry-1.docker.io");

        let d = digest();
        let both: Reference = format!("localhost:5000/a:1@{d}").parse().unwrap();
        assert_eq!(both.full_name(), format!("localhost:5000/a:1@{d}"));
        let only_digest = Reference { tag: None, ..both };
        assert_eq!(only_digest.full_name(), format!("localhost:5000/a@{d}"));
        assert_eq!(only_digest.tag_or_latest(), "latest");
    }

    #[test]
    fn sanitize() {
        for (name, want) in [
            ("myapp", "myapp"),
            ("MyApp", "myapp"),
            ("My App", "my-app"),
            ("my_app", "my_app"),
            ("my__app", "my_app"),
            ("my..app", "my.app"),
            ("my._app", "my-app"),
            ("a---b", "a-b"),
            ("--hello world!!--", "hello-world"),
            ("_private", "private"),
            ("v1.2.3", "v1.2.3"),
            ("café", "caf"),
            ("日本", "image"),
            ("...", "image"),
            ("", "image"),
            ("123", "123"),
        ] {
            assert_eq!(sanitize_repository_component(name), want, "{name:?}");
        }
        let long = sanitize_repository_component(&format!("{}-{}", "a".repeat(127), "b".repeat(10)));
        assert_eq!(long, "a".repeat(127));
        // Whatever goes in, a valid component comes out.
        for name in ["a b c", "-._-", "A.B_C-D", "x\u{301}y", "tab\there", "dots...and__under", "ß", "K"] {
            let s = sanitize_repository_component(name);
            assert_eq!(component_problem(&s), None, "{name:?} -> {s:?}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "::1",
            "[::1]",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
            "localtest.me",
            "gitea.cnoe.localtest.me",
            "gitea.cnoe.localtest.me:8443",
            "cnoe.localtest.me:8443",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "docker.io",
            "registry-1.docker.io:443",
            "10.0.0.1",
            "128.0.0.1:5000",
            "[::2]:5000",
            "localtest.me.evil.example",
            "evillocaltest.me",
            "localhost.evil.example",
            "127.0.0.1.nip.example",
            "[::1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
