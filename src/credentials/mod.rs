//! Where registry credentials come from, in the order Docker users expect, and which source gave them.
//!
//! [`Lookup::find`] asks, in turn: the command-line flags, `IDPB_USERNAME`/`IDPB_PASSWORD`,
//! `DOCKER_AUTH_CONFIG`, the Docker `config.json` (its `credHelpers` entry for the host, else its
//! `credsStore`, then its `auths`), and podman's `auth.json`; the first answer wins and nothing means
//! anonymous. Keys are matched like docker/cli: the exact `host[:port]` key (Docker Hub's is
//! `https://index.docker.io/v1/`) before legacy keys that carry a scheme or path. Credential helpers are
//! separate programs (`docker-credential-NAME get`, URL on stdin, JSON on stdout), so a missing or failing
//! helper is an error that names the helper and its own message, while "credentials not found" lets the
//! search go on to `auths`. Every answer carries a human-readable `source` for error messages, and secrets
//! are kept out of `Debug`, `Display` and every error by construction: parse errors of files that may hold
//! secrets report a position, never a value. The environment is read once into a private snapshot that the
//! search takes as an argument, which is what lets the tests exercise `PATH`, `HOME` and the variables
//! without touching the process's own environment.
//!
//! Helpers are not trusted (see [`crate::child`]): each runs at most [`HELPER_TIMEOUT`] (less when the
//! command's `--timeout` is shorter), may print at most [`HELPER_MAX_OUTPUT`], is killed with its children
//! on Ctrl-C, and its stdout is never echoed: a failing helper is reported with its stderr, because stdout
//! is where a helper puts secrets.

pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// The key Docker Hub's credentials are stored under, and the URL its credential helpers are asked for.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// Host names that all mean Docker Hub.
const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
/// What a credential helper prints (exit 1) when it has nothing for the URL: "none", not an error.
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";
/// The username a credential helper returns when its secret is an identity (refresh) token.
const HELPER_TOKEN_USERNAME: &str = "<token>";
/// The longest a credential helper may take.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a credential helper may print on stdout or stderr.
pub const HELPER_MAX_OUTPUT: usize = 1024 * 1024;
/// The source reported for credentials given on the command line.
pub const FLAGS_SOURCE: &str = "--password-stdin";
/// The source reported for credentials from `IDPB_USERNAME`/`IDPB_PASSWORD`.
pub const ENV_SOURCE: &str = "IDPB_USERNAME/IDPB_PASSWORD";
/// The variable holding an inline Docker config (`{"auths": {...}}`).
const AUTH_CONFIG_VAR: &str = "DOCKER_AUTH_CONFIG";

/// What a registry is authenticated with.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A username and password (or access token used as a password), sent as Basic or traded for a token.
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`identitytoken`, or a helper's username `<token>`), traded for a bearer token.
    IdentityToken { token: String },
    /// A bearer token sent to the registry as is (`registrytoken`).
    RegistryToken { token: String },
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Basic { username, .. } => {
                f.debug_struct("Basic").field("username", username).field("password", &Redacted).finish()
            }
            Secret::IdentityToken { .. } => f.debug_struct("IdentityToken").field("token", &Redacted).finish(),
            Secret::RegistryToken { .. } => f.debug_struct("RegistryToken").field("token", &Redacted).finish(),
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Basic { username, .. } => write!(f, "username {username:?} and password"),
            Secret::IdentityToken { .. } => write!(f, "identity token"),
            Secret::RegistryToken { .. } => write!(f, "registry token"),
        }
    }
}

/// Prints as `<redacted>` wherever a secret would be.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials and where they were found, for messages such as "the registry rejected the credentials
/// from /root/.docker/config.json (auths)".
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Credential {
    pub secret: Secret,
    pub source: String,
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from {}", self.secret, self.source)
    }
}

/// What the command line says about credentials; the rest is found in the environment and files.
#[derive(Clone, Default)]
pub struct Lookup {
    pub username: Option<String>,
    pub password: Option<String>,
    /// `docker --config DIR`: where `config.json` lives instead of `$DOCKER_CONFIG` or `~/.docker`.
    pub config_dir: Option<PathBuf>,
    /// The longest a credential helper may run (None: [`HELPER_TIMEOUT`]); the command's `--timeout`.
    pub helper_timeout: Option<Duration>,
    /// Stops a running helper.
    pub cancel: crate::signal::Cancel,
}

impl fmt::Debug for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lookup")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| Redacted))
            .field("config_dir", &self.config_dir)
            .finish()
    }
}

impl Lookup {
    /// Credentials for `host` (`host[:port]`; `docker.io`, `index.docker.io` and `registry-1.docker.io`
    /// all mean Docker Hub), or `None` for anonymous access.
    pub fn find(&self, host: &str) -> Result<Option<Credential>> {
        self.find_in(&Env::from_process(), host)
    }

    /// [`Lookup::find`] in the given environment snapshot.
    pub fn find_in(&self, env: &Env, host: &str) -> Result<Option<Credential>> {
        match (&self.username, &self.password) {
            (Some(username), Some(password)) => {
                let secret = Secret::Basic { username: username.clone(), password: password.clone() };
                return Ok(Some(Credential { secret, source: FLAGS_SOURCE.into() }));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Auth(
                    "--username and --password-stdin must be given together: pass both, or neither to use \
                     the Docker credentials (docker login)"
                        .into(),
                ));
            }
            (None, None) => {}
        }
        match (env.var("IDPB_USERNAME"), env.var("IDPB_PASSWORD")) {
            (Some(username), Some(password)) => {
                let secret = Secret::Basic { username: username.into(), password: password.into() };
                return Ok(Some(Credential { secret, source: ENV_SOURCE.into() }));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Auth(
                    "IDPB_USERNAME and IDPB_PASSWORD must be set together: set both, or unset both".into(),
                ));
            }
            (None, None) => {}
        }

        let target = Target::new(host);
        if let Some(json) = env.var(AUTH_CONFIG_VAR) {
            let config = parse_config(json, AUTH_CONFIG_VAR)?;
            if let Some(secret) = find_in_auths(&config, &target, AUTH_CONFIG_VAR)? {
                return Ok(Some(Credential { secret, source: AUTH_CONFIG_VAR.into() }));
            }
        }
        if let Some(dir) = config_dir_in(env, self.config_dir.as_deref()) {
            let path = dir.join("config.json");
            if let Some(found) = find_in_docker_config(env, self, &path, &target)? {
                return Ok(Some(found));
            }
        }
        for path in podman_auth_files(env) {
            let Some(text) = read_optional(&path)? else { continue };
            let label = path.display().to_string();
            let config = parse_config(&text, &label)?;
            if let Some(secret) = find_in_auths(&config, &target, &label)? {
                return Ok(Some(Credential { secret, source: label }));
            }
        }
        Ok(None)
    }
}

/// `credHelpers`/`credsStore`, then `auths`, of one Docker `config.json` (a missing file has nothing).
fn find_in_docker_config(env: &Env, lookup: &Lookup, path: &Path, target: &Target) -> Result<Option<Credential>> {
    let Some(text) = read_optional(path)? else { return Ok(None) };
    let label = path.display().to_string();
    let config = parse_config(&text, &label)?;

    // As in docker/cli, a host's credHelpers entry replaces credsStore for that host rather than
    // preceding it; an empty name means "no helper".
    let helper = match matching(&config.cred_helpers, target).next() {
        Some((_, name)) => Some((name.as_str(), "credHelpers")),
        None => Some((config.creds_store.as_str(), "credsStore")),
    };
    if let Some((name, setting)) = helper.filter(|(name, _)| !name.is_empty()) {
        let origin = format!("{setting} in {label}");
        if let Some(found) = run_helper(env, lookup, name, target.config_key(), Some(&origin))? {
            return Ok(Some(found));
        }
    }
    let found = find_in_auths(&config, target, &label)?;
    Ok(found.map(|secret| Credential { secret, source: format!("{label} (auths)") }))
}

/// The Docker config directory: `explicit` (`--config`), else `$DOCKER_CONFIG`, else `~/.docker`.
pub fn docker_config_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    config_dir_in(&Env::from_process(), explicit)
}

fn config_dir_in(env: &Env, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_path_buf());
    }
    if let Some(dir) = env.var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir));
    }
    env.home().map(|home| home.join(".docker"))
}

/// podman's `auth.json` candidates: `$REGISTRY_AUTH_FILE` alone when set, as containers/image does;
/// otherwise the per-session file, then the per-user one.
fn podman_auth_files(env: &Env) -> Vec<PathBuf> {
    if let Some(file) = env.var_os("REGISTRY_AUTH_FILE") {
        return vec![PathBuf::from(file)];
    }
    let mut files = Vec::new();
    if let Some(run) = env.var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(run).join("containers/auth.json"));
    }
    let config_home =
        env.var_os("XDG_CONFIG_HOME").map(PathBuf::from).or_else(|| env.home().map(|h| h.join(".config")));
    if let Some(dir) = config_home {
        files.push(dir.join("containers/auth.json"));
    }
    files
}

/// The registry being asked about, and how config keys are matched against it.
struct Target {
    /// `host[:port]` as given, or Docker Hub's key.
    key: String,
    hub: bool,
}

impl Target {
    fn new(host: &str) -> Target {
        let host = key_host(host.trim());
        let hub = is_docker_hub(host);
        Target { key: if hub { DOCKER_HUB_KEY.into() } else { host.into() }, hub }
    }

    /// The key Docker stores this registry's entry under, and the URL helpers are asked for.
    fn config_key(&self) -> &str {
        &self.key
    }

    /// Whether a legacy key (`https://host:5000/v2/`, `http://host`) names this registry.
    fn matches(&self, key: &str) -> bool {
        let host = key_host(key);
        if self.hub { is_docker_hub(host) } else { host.eq_ignore_ascii_case(&self.key) }
    }
}

/// docker/cli's `ConvertToHostname`: drop the scheme and everything from the first `/`.
fn key_host(key: &str) -> &str {
    let rest = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_HOSTS.iter().any(|h| h.eq_ignore_ascii_case(host))
}

/// The entries of `map` that name `target`: the exact key first, then legacy keys in key order.
fn matching<'a, V>(map: &'a BTreeMap<String, V>, target: &'a Target) -> impl Iterator<Item = (&'a str, &'a V)> {
    let exact = map.get_key_value(target.config_key());
    let legacy = map.iter().filter(move |(key, _)| key.as_str() != target.config_key() && target.matches(key));
    exact.into_iter().chain(legacy).map(|(key, value)| (key.as_str(), value))
}

/// The first usable `auths` entry for `target`; entries with nothing in them are skipped.
fn find_in_auths(config: &ConfigFile, target: &Target, label: &str) -> Result<Option<Secret>> {
    for (key, entry) in matching(&config.auths, target) {
        let Some(entry) = entry else { continue };
        if let Some(secret) = entry.secret(label, key)? {
            return Ok(Some(secret));
        }
    }
    Ok(None)
}

/// The parts of Docker's `config.json` (and podman's `auth.json`) that hold credentials.
#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default, deserialize_with = "null_as_default")]
    auths: BTreeMap<String, Option<AuthEntry>>,
    #[serde(default, rename = "credHelpers", deserialize_with = "null_as_default")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore", deserialize_with = "null_as_default")]
    creds_store: String,
}

/// One `auths` entry; Docker writes `auth`, older tools wrote `username`/`password`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthEntry {
    #[serde(deserialize_with = "null_as_default")]
    auth: String,
    #[serde(deserialize_with = "null_as_default")]
    username: String,
    #[serde(deserialize_with = "null_as_default")]
    password: String,
    #[serde(deserialize_with = "null_as_default")]
    identitytoken: String,
    #[serde(deserialize_with = "null_as_default")]
    registrytoken: String,
}

impl AuthEntry {
    /// Docker's precedence: a registry token is used as is, an identity token beats a password.
    fn secret(&self, label: &str, key: &str) -> Result<Option<Secret>> {
        let basic = if self.auth.is_empty() {
            None
        } else {
            let (username, password) = decode_auth(&self.auth).ok_or_else(|| {
                Error::Auth(format!(
                    "{label}: auths[{key:?}].auth is not base64 of \"username:password\"; log in again \
                     (docker login {}) or remove the entry",
                    key_host(key)
                ))
            })?;
            Some(Secret::Basic { username, password })
        };
        Ok(if !self.registrytoken.is_empty() {
            Some(Secret::RegistryToken { token: self.registrytoken.clone() })
        } else if !self.identitytoken.is_empty() {
            Some(Secret::IdentityToken { token: self.identitytoken.clone() })
        } else if basic.is_some() {
            basic
        } else if !self.username.is_empty() || !self.password.is_empty() {
            Some(Secret::Basic { username: self.username.clone(), password: self.password.clone() })
        } else {
            None
        })
    }
}

/// Go's JSON decoder leaves a field alone on `null`; do the same.
fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// `user:password` in base64, split at the first `:` (a password may hold `:`); Docker trims NULs.
fn decode_auth(auth: &str) -> Option<(String, String)> {
    let text = String::from_utf8(base64_decode(auth.trim())?).ok()?;
    let (username, password) = text.split_once(':')?;
    Some((username.to_string(), password.trim_matches('\0').to_string()))
}

/// Parses a credentials file. Type errors show a position only: serde quotes the offending value, and in
/// these files that value may be a secret.
fn parse_config(text: &str, label: &str) -> Result<ConfigFile> {
    // Docker accepts an empty config.json.
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    serde_json::from_str(text).map_err(|e| {
        let problem = match e.classify() {
            serde_json::error::Category::Data => {
                format!("unexpected value at line {} column {}", e.line(), e.column())
            }
            _ => format!("invalid JSON: {e}"),
        };
        Error::Auth(format!("cannot read credentials from {label}: {problem}; fix or remove it"))
    })
}

/// A file's text, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match crate::atomic::read_capped(path, crate::atomic::CREDENTIALS_CAP) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Error::Auth(format!("{} is not UTF-8 text; fix or remove it", path.display()))),
        Err(e) if e.not_found() => Ok(None),
        Err(e) => Err(e.for_path(path, "read")),
    }
}

/// What `docker-credential-NAME get` prints.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default, deserialize_with = "null_as_default")]
    username: String,
    #[serde(rename = "Secret", default, deserialize_with = "null_as_default")]
    secret: String,
}

/// Runs a credential helper found on the snapshot's `PATH`. `origin` ("credsStore in FILE") goes into the
/// source and into the hint when the helper is missing.
fn run_helper(
    env: &Env,
    lookup: &Lookup,
    name: &str,
    server: &str,
    origin: Option<&str>,
) -> Result<Option<Credential>> {
    let program = format!("docker-credential-{name}");
    let source = match origin {
        Some(origin) => format!("credential helper {program} ({origin})"),
        None => format!("credential helper {program}"),
    };
    if name.contains('/') {
        return Err(Error::Auth(format!("invalid {source}: a helper name cannot contain '/'")));
    }
    let Some(exe) = env.find_program(&program) else {
        let place = origin.unwrap_or("credsStore/credHelpers in your Docker config.json");
        return Err(Error::Auth(format!(
            "{program} not found on PATH (named by {place}): install it, or remove it from there to use the \
             credentials in `auths`"
        )));
    };
    let timeout = lookup.helper_timeout.unwrap_or(HELPER_TIMEOUT).min(HELPER_TIMEOUT);
    let bounds = crate::child::Bounds { deadline: Instant::now() + timeout, max_output: HELPER_MAX_OUTPUT };
    let output = crate::child::run(Command::new(&exe).arg("get"), server.as_bytes(), &bounds, &lookup.cancel)
        .map_err(|f| helper_failure(&source, server, f))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.trim() == HELPER_NOT_FOUND || stderr.trim() == HELPER_NOT_FOUND {
        return Ok(None);
    }
    if !output.status.success() {
        // stdout is where helpers put secrets, so it is never shown; stderr is the helper's own words.
        let message = Some(stderr.trim()).filter(|m| !m.is_empty()).map(one_line);
        let message =
            message.unwrap_or_else(|| format!("{} (its stdout is not shown: it may hold secrets)", output.status));
        return Err(Error::Auth(format!("{source} failed for {server}: {message}")));
    }
    let answer: HelperAnswer = serde_json::from_str(&stdout)
        .map_err(|_| Error::Auth(format!("{source} answered {server} with something other than credentials JSON")))?;
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(None);
    }
    let secret = if answer.username == HELPER_TOKEN_USERNAME {
        Secret::IdentityToken { token: answer.secret }
    } else {
        Secret::Basic { username: answer.username, password: answer.secret }
    };
    Ok(Some(Credential { secret, source }))
}

/// The error for a helper that gave no usable answer.
pub fn helper_failure(source: &str, server: &str, failure: crate::child::Failure) -> Error {
    use crate::child::Failure;
    match failure {
        Failure::Cancelled => Error::Cancelled,
        Failure::Spawn(e) => Error::Auth(format!("cannot run {source}: {e}")),
        Failure::TimedOut(after) => Error::Auth(format!(
            "{source} did not answer for {server} within {}s and was stopped; check the helper (or raise --timeout)",
            after.as_secs_f64().round()
        )),
        Failure::TooLarge(max) => Error::Auth(format!(
            "{source} printed more than {} MiB for {server} and was stopped; check the helper",
            max / (1024 * 1024)
        )),
    }
}

/// A helper's possibly multi-line message as one bounded line.
fn one_line(message: &str) -> String {
    const MAX: usize = 300;
    // A helper's words never carry terminal escapes to the user's screen.
    let message: String = message.chars().map(|c| if c.is_control() && c != '\n' { ' ' } else { c }).collect();
    let line = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

/// The environment variables the search reads, captured once. Not `Debug`: it holds `IDPB_PASSWORD`.
#[derive(Default)]
pub struct Env {
    vars: HashMap<String, OsString>,
}

impl Env {
    /// The process's environment, now.
    pub fn from_process() -> Env {
        let mut vars: HashMap<String, OsString> =
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))).collect();
        if vars.get("HOME").is_none_or(|home| home.is_empty())
            && let Some(home) = std::env::home_dir()
        {
            vars.insert("HOME".into(), home.into_os_string());
        }
        Env { vars }
    }

    /// A set, non-empty variable.
    fn var_os(&self, name: &str) -> Option<&OsString> {
        self.vars.get(name).filter(|v| !v.is_empty())
    }

    /// A set, non-empty variable that is valid UTF-8.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.var_os(name).and_then(|v| v.to_str())
    }

    fn home(&self) -> Option<PathBuf> {
        self.var_os("HOME").map(PathBuf::from)
    }

    /// An executable file named `program` in an absolute `PATH` directory (relative entries, as in Go's
    /// `exec.LookPath` since 1.19, are not trusted).
    fn find_program(&self, program: &str) -> Option<PathBuf> {
        let path = self.var_os("PATH")?;
        std::env::split_paths(path).filter(|dir| dir.is_absolute()).map(|dir| dir.join(program)).find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }
}

const BASE64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as in Docker's `auth` field.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64_ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64; padding is optional and line breaks are ignored, as Go's decoder does. `None` on any
/// other character, misplaced padding or an impossible length.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits, mut digits, mut padding) = (0u32, 0u32, 0usize, 0usize);
    for c in s.bytes().filter(|c| !matches!(c, b'\r' | b'\n')) {
        if c == b'=' {
            padding += 1;
            continue;
        }
        if padding > 0 {
            return None;
        }
        let value = BASE64_ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | value;
        bits += 6;
        digits += 1;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    let rest = digits % 4;
    let padding_ok = padding == 0 || (rest != 0 && rest + padding == 4);
    (rest != 1 && padding_ok).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A temporary directory with `home/` and `bin/`, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("idpb-credentials-{}-{n}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("home/.docker")).expect("create scratch home");
            fs::create_dir_all(dir.join("bin")).expect("create scratch bin");
            Scratch(dir)
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.0.join(rel)
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().expect("has parent")).expect("create parent");
            fs::write(&path, text).expect("write fixture");
            path
        }

        /// `~/.docker/config.json`.
        fn docker_config(&self, json: &str) -> PathBuf {
            self.write("home/.docker/config.json", json)
        }

        /// Installs `bin/docker-credential-NAME` running `body` under `/bin/sh`. The file is copied into
        /// place by `cp`, so this process never holds it open for writing: otherwise a fork by a test on
        /// another thread could inherit that descriptor and make exec fail with ETXTBSY.
        fn helper(&self, name: &str, body: &str) {
            let source = self.write(&format!("{name}.sh"), &format!("#!/bin/sh\n{body}\n"));
            let target = self.path(&format!("bin/docker-credential-{name}"));
            let status = Command::new("cp").arg(&source).arg(&target).status().expect("run cp");
            assert!(status.success(), "cp failed");
            fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).expect("chmod helper");
        }

        /// A helper that answers `server` with `username`/`secret` and "not found" for anything else.
        fn answering_helper(&self, name: &str, server: &str, username: &str, secret: &str) {
            let json = format!(r#"{{"ServerURL":"{server}","Username":"{username}","Secret":"{secret}"}}"#);
            self.helper(
                name,
                &format!(
                    "[ \"$1\" = get ] || exit 2\nserver=$(cat)\nif [ \"$server\" = '{server}' ]; then\n  \
                     printf '%s\\n' '{json}'\nelse\n  echo 'credentials not found in native keychain'\n  exit 1\nfi"
                ),
            );
        }

        /// The environment of a user whose HOME and PATH are in this scratch directory.
        fn env(&self, extra: &[(&str, &str)]) -> Env {
            let mut vars = HashMap::new();
            vars.insert("HOME".to_string(), OsString::from(self.path("home")));
            vars.insert("PATH".to_string(), OsString::from(self.path("bin")));
            for (k, v) in extra {
                vars.insert(k.to_string(), OsString::from(v));
            }
            Env { vars }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn basic(username: &str, password: &str) -> Secret {
        Secret::Basic { username: username.into(), password: password.into() }
    }

    fn auth(user_pass: &str) -> String {
        base64_encode(user_pass.as_bytes())
    }

    fn find(env: &Env, host: &str) -> Option<Credential> {
        Lookup::default().find_in(env, host).expect("lookup succeeds")
    }

    fn find_err(lookup: &Lookup, env: &Env, host: &str) -> String {
        match lookup.find_in(env, host) {
            Err(Error::Auth(m)) => m,
            other => panic!("expected an auth error, got {other:?}"),
        }
    }

    #[test]
    fn flags_win_over_everything() {
        let s = Scratch::new("flags");
        s.docker_config(&format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, auth("cfg:cfg")));
        let env = s.env(&[("IDPB_USERNAME", "envuser"), ("IDPB_PASSWORD", "envpass")]);
        let lookup = Lookup { username: Some("me".into()), password: Some("pw".into()), ..Default::default() };
        let got = lookup.find_in(&env, "r.io").expect("ok").expect("found");
        assert_eq!(got, Credential { secret: basic("me", "pw"), source: FLAGS_SOURCE.into() });
    }

    #[test]
    fn flags_need_both() {
        let s = Scratch::new("flags-half");
        let env = s.env(&[]);
        for lookup in [
            Lookup { username: Some("me".into()), ..Lookup::default() },
            Lookup { password: Some("pw".into()), ..Lookup::default() },
        ] {
            let message = find_err(&lookup, &env, "r.io");
            assert!(message.contains("--username and --password-stdin"), "{message}");
            assert!(!message.contains("pw"), "{message}");
        }
    }

    #[test]
    fn env_vars_beat_docker_config() {
        let s = Scratch::new("env");
        s.docker_config(&format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, auth("cfg:cfg")));
        let inline = format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, auth("inline:inline"));
        let env = s.env(&[("IDPB_USERNAME", "u"), ("IDPB_PASSWORD", "p:@x"), (AUTH_CONFIG_VAR, &inline)]);
        let got = find(&env, "r.io").expect("found");
        assert_eq!(got, Credential { secret: basic("u", "p:@x"), source: ENV_SOURCE.into() });

        let message = find_err(&Lookup::default(), &s.env(&[("IDPB_USERNAME", "u")]), "r.io");
        assert!(message.contains("IDPB_PASSWORD"), "{message}");
    }

    #[test]
    fn docker_auth_config_comes_before_config_json() {
        let s = Scratch::new("inline");
        s.docker_config(&format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, auth("cfg:cfg")));
        let inline = format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, auth("inline:pw"));
        let got = find(&s.env(&[(AUTH_CONFIG_VAR, &inline)]), "r.io").expect("found");
        assert_eq!(got, Credential { secret: basic("inline", "pw"), source: AUTH_CONFIG_VAR.into() });

        // Nothing for this host inline: config.json answers.
        let got = find(&s.env(&[(AUTH_CONFIG_VAR, r#"{"auths":{"other.io":{}}}"#)]), "r.io").expect("found");
        assert_eq!(got.secret, basic("cfg", "cfg"));

        let message = find_err(&Lookup::default(), &s.env(&[(AUTH_CONFIG_VAR, "{not json")]), "r.io");
        assert!(message.contains(AUTH_CONFIG_VAR), "{message}");
    }

    #[test]
    fn auths_entry_shapes() {
        let s = Scratch::new("shapes");
        let config = s.docker_config(&format!(
            r#"{{"auths": {{
                "127.0.0.1:5000": {{"auth": "{}"}},
                "gitea.cnoe.localtest.me:8443": {{"auth": "{}", "email": "x@y"}},
                "id.io": {{"auth": "{}", "identitytoken": "refresh-tok"}},
                "tok.io": {{"registrytoken": "bearer-tok"}},
                "old.io": {{"username": "legacy", "password": "pw"}}
            }}}}"#,
            auth("admin:secret"),
            auth("giteaAdmin:a:b@c:d@@"),
            auth("<token>:"),
        ));
        let env = s.env(&[]);
        let source = format!("{} (auths)", config.display());
        assert_eq!(
            find(&env, "127.0.0.1:5000"),
            Some(Credential { secret: basic("admin", "secret"), source: source.clone() })
        );
        assert_eq!(find(&env, "gitea.cnoe.localtest.me:8443").expect("found").secret, basic("giteaAdmin", "a:b@c:d@@"));
        assert_eq!(find(&env, "id.io").expect("found").secret, Secret::IdentityToken { token: "refresh-tok".into() });
        assert_eq!(find(&env, "tok.io").expect("found").secret, Secret::RegistryToken { token: "bearer-tok".into() });
        assert_eq!(find(&env, "old.io").expect("found").secret, basic("legacy", "pw"));
        assert_eq!(find(&env, "127.0.0.1:5001"), None);
        assert_eq!(find(&env, "127.0.0.1"), None);
    }

    #[test]
    fn legacy_keys_match_by_host_and_exact_key_wins() {
        let s = Scratch::new("legacy");
        s.docker_config(&format!(
            r#"{{"auths": {{
                "https://reg.example:5000/v2/": {{"auth": "{}"}},
                "http://plain.example": {{"auth": "{}"}},
                "https://both.example/v1/": {{"auth": "{}"}},
                "both.example": {{"auth": "{}"}}
            }}}}"#,
            auth("a:1"),
            auth("b:2"),
            auth("legacy:3"),
            auth("exact:4"),
        ));
        let env = s.env(&[]);
        assert_eq!(find(&env, "reg.example:5000").expect("found").secret, basic("a", "1"));
        assert_eq!(find(&env, "reg.example"), None);
        assert_eq!(find(&env, "plain.example").expect("found").secret, basic("b", "2"));
        assert_eq!(find(&env, "both.example").expect("found").secret, basic("exact", "4"));
    }

    #[test]
    fn docker_hub_key_matches_every_hub_name() {
        let s = Scratch::new("hub");
        s.docker_config(&format!(r#"{{"auths":{{"{DOCKER_HUB_KEY}":{{"auth":"{}"}}}}}}"#, auth("hubuser:pw")));
        let env = s.env(&[]);
        for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(find(&env, host).expect(host).secret, basic("hubuser", "pw"), "{host}");
        }
        assert_eq!(find(&env, "docker.example"), None);

        // An entry under a plain hub host name counts for Docker Hub too.
        s.docker_config(&format!(r#"{{"auths":{{"docker.io":{{"auth":"{}"}}}}}}"#, auth("short:pw")));
        assert_eq!(find(&env, "registry-1.docker.io").expect("found").secret, basic("short", "pw"));
    }

    #[test]
    fn empty_entries_are_skipped() {
        let s = Scratch::new("empty");
        s.docker_config(r#"{"auths":{"r.io":{}, "https://r.io/v2/":{"auth":""}, "s.io": null}}"#);
        let podman = s.write("auth.json", &format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, auth("p:q")));
        let env = s.env(&[("REGISTRY_AUTH_FILE", podman.to_str().expect("utf-8"))]);
        assert_eq!(
            find(&env, "r.io"),
            Some(Credential { secret: basic("p", "q"), source: podman.display().to_string() })
        );
        assert_eq!(find(&env, "s.io"), None);
        // An empty config.json is no config at all, as in Docker.
        s.docker_config("\n");
        assert_eq!(find(&s.env(&[]), "r.io"), None);
    }

    #[test]
    fn cred_helpers_beat_creds_store_beat_auths() {
        let s = Scratch::new("helpers");
        s.answering_helper("perhost", "r.io:5000", "fromhelper", "h-secret");
        s.answering_helper("store", "r.io:5000", "fromstore", "s-secret");
        let auths = format!(r#""auths":{{"r.io:5000":{{"auth":"{}"}}}}"#, auth("fromauths:pw"));
        let config =
            s.docker_config(&format!(r#"{{"credHelpers":{{"r.io:5000":"perhost"}},"credsStore":"store",{auths}}}"#));
        let env = s.env(&[]);
        let got = find(&env, "r.io:5000").expect("found");
        assert_eq!(got.secret, basic("fromhelper", "h-secret"));
        assert_eq!(
            got.source,
            format!("credential helper docker-credential-perhost (credHelpers in {})", config.display())
        );

        s.docker_config(&format!(r#"{{"credsStore":"store",{auths}}}"#));
        let got = find(&env, "r.io:5000").expect("found");
        assert_eq!(got.secret, basic("fromstore", "s-secret"));
        assert_eq!(
            got.source,
            format!("credential helper docker-credential-store (credsStore in {})", config.display())
        );

        s.docker_config(&format!("{{{auths}}}"));
        assert_eq!(find(&env, "r.io:5000").expect("found").secret, basic("fromauths", "pw"));
    }

    #[test]
    fn store_not_found_falls_through_to_auths() {
        let s = Scratch::new("store-miss");
        s.answering_helper("store", "elsewhere.io", "x", "y");
        let config = s.docker_config(&format!(
            r#"{{"credsStore":"store","auths":{{"r.io":{{"auth":"{}"}}}}}}"#,
            auth("fromauths:pw")
        ));
        let env = s.env(&[]);
        let got = find(&env, "r.io").expect("found");
        assert_eq!(
            got,
            Credential { secret: basic("fromauths", "pw"), source: format!("{} (auths)", config.display()) }
        );
        assert_eq!(find(&env, "nothing.io"), None);
    }

    #[test]
    fn helpers_get_the_config_key_and_token_usernames() {
        let s = Scratch::new("helper-url");
        // Echoes the URL it was asked for as the username.
        s.helper(
            "echo",
            r#"server=$(cat); printf '{"ServerURL":"%s","Username":"%s","Secret":"pw"}' "$server" "$server""#,
        );
        s.answering_helper("tok", "t.io", "<token>", "refresh");
        s.docker_config(r#"{"credsStore":"echo","credHelpers":{"t.io":"tok"}}"#);
        let env = s.env(&[]);
        assert_eq!(find(&env, "registry-1.docker.io").expect("found").secret, basic(DOCKER_HUB_KEY, "pw"));
        assert_eq!(find(&env, "127.0.0.1:5000").expect("found").secret, basic("127.0.0.1:5000", "pw"));
        assert_eq!(find(&env, "t.io").expect("found").secret, Secret::IdentityToken { token: "refresh".into() });
    }

    #[test]
    fn helper_failures_name_the_helper_not_the_secret() {
        let s = Scratch::new("helper-fail");
        s.helper(
            "locked",
            "cat >/dev/null\necho 'gpg: decryption failed: No secret key'\necho 'second line' >&2\nexit 1",
        );
        s.helper("garbage", "cat >/dev/null\necho 'Username=me Secret=s3cr3t-value'");
        let env = s.env(&[]);

        s.docker_config(r#"{"credsStore":"locked"}"#);
        let message = find_err(&Lookup::default(), &env, "r.io");
        assert!(message.contains("docker-credential-locked"), "{message}");
        // stdout is where helpers put secrets: a failing helper is reported with its stderr only.
        assert!(message.contains("second line"), "{message}");
        assert!(!message.contains("gpg: decryption failed"), "{message}");
        assert!(message.contains("r.io"), "{message}");

        s.helper("leaky", "cat >/dev/null\necho '{\"Username\":\"u\",\"Secret\":\"s3cr3t-on-stdout\"}'\nexit 1");
        s.docker_config(r#"{"credsStore":"leaky"}"#);
        let message = find_err(&Lookup::default(), &env, "r.io");
        assert!(message.contains("docker-credential-leaky") && !message.contains("s3cr3t"), "{message}");
        assert!(message.contains("its stdout is not shown"), "{message}");

        s.docker_config(r#"{"credsStore":"garbage"}"#);
        let message = find_err(&Lookup::default(), &env, "r.io");
        assert!(message.contains("docker-credential-garbage"), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn missing_helper_is_an_error_with_a_hint() {
        let s = Scratch::new("helper-missing");
        let config = s.docker_config(r#"{"credHelpers":{"r.io":"nosuch"}}"#);
        let message = find_err(&Lookup::default(), &s.env(&[]), "r.io");
        assert!(message.contains("docker-credential-nosuch not found on PATH"), "{message}");
        assert!(message.contains(&format!("credHelpers in {}", config.display())), "{message}");
        // Hosts without a helper are unaffected.
        assert_eq!(find(&s.env(&[]), "other.io"), None);

        match run_helper(&s.env(&[]), &Lookup::default(), "nosuch", "r.io", None) {
            Err(Error::Auth(m)) => assert!(m.contains("docker-credential-nosuch not found on PATH"), "{m}"),
            other => panic!("expected an auth error, got {other:?}"),
        }
    }

    #[test]
    fn podman_auth_files() {
        let s = Scratch::new("podman");
        let body = format!(r#"{{"auths":{{"quay.io":{{"auth":"{}"}}}}}}"#, auth("pod:man"));
        let user_file = s.write("home/.config/containers/auth.json", &body);
        let env = s.env(&[]);
        assert_eq!(
            find(&env, "quay.io"),
            Some(Credential { secret: basic("pod", "man"), source: user_file.display().to_string() })
        );

        let runtime_file = s.write("run/containers/auth.json", &body.replace(&auth("pod:man"), &auth("run:time")));
        let env = s.env(&[("XDG_RUNTIME_DIR", s.path("run").to_str().expect("utf-8"))]);
        let got = find(&env, "quay.io").expect("found");
        assert_eq!(got, Credential { secret: basic("run", "time"), source: runtime_file.display().to_string() });

        // REGISTRY_AUTH_FILE is the only file podman reads when set.
        let env = s.env(&[("REGISTRY_AUTH_FILE", s.path("none.json").to_str().expect("utf-8"))]);
        assert_eq!(find(&env, "quay.io"), None);
        // The Docker config comes first.
        s.docker_config(&format!(r#"{{"auths":{{"quay.io":{{"auth":"{}"}}}}}}"#, auth("dock:er")));
        assert_eq!(find(&s.env(&[]), "quay.io").expect("found").secret, basic("dock", "er"));
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_not_the_secret() {
        let s = Scratch::new("bad");
        let config = s.docker_config("{\"auths\": {\"r.io\": {\"auth\": \"x\"}");
        let message = find_err(&Lookup::default(), &s.env(&[]), "r.io");
        assert!(message.contains(&config.display().to_string()), "{message}");

        // serde would quote the string it did not expect; the message must not.
        s.docker_config(r#"{"auths": {"r.io": "dXNlcjpzM2NyM3Q="}}"#);
        let message = find_err(&Lookup::default(), &s.env(&[]), "r.io");
        assert!(message.contains("line 1"), "{message}");
        assert!(!message.contains("dXNlcjpzM2NyM3Q"), "{message}");

        s.docker_config(r#"{"auths": {"https://r.io/v2/": {"auth": "not*base64!s3cr3t"}}}"#);
        let message = find_err(&Lookup::default(), &s.env(&[]), "r.io");
        assert!(message.contains(&config.display().to_string()), "{message}");
        assert!(message.contains("https://r.io/v2/"), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");

        // Base64 without a ':' inside is no "user:password" either.
        s.docker_config(&format!(r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#, auth("nocolon")));
        assert!(find_err(&Lookup::default(), &s.env(&[]), "r.io").contains("auths[\"r.io\"]"));

        // Unreadable (here: a directory) is an I/O error on that path.
        fs::remove_file(&config).expect("remove");
        fs::create_dir(&config).expect("mkdir");
        match Lookup::default().find_in(&s.env(&[]), "r.io") {
            Err(Error::Io { path, action: "read", .. }) => assert_eq!(path, config),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn config_dir_order() {
        let s = Scratch::new("dirs");
        let explicit = s.path("explicit");
        let env = s.env(&[("DOCKER_CONFIG", "/from/env")]);
        assert_eq!(config_dir_in(&env, Some(&explicit)), Some(explicit.clone()));
        assert_eq!(config_dir_in(&env, None), Some(PathBuf::from("/from/env")));
        assert_eq!(config_dir_in(&s.env(&[("DOCKER_CONFIG", "")]), None), Some(s.path("home/.docker")));
        assert_eq!(config_dir_in(&Env::default(), None), None);

        s.write("explicit/config.json", &format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, auth("ex:pl")));
        let lookup = Lookup { config_dir: Some(explicit), ..Lookup::default() };
        assert_eq!(lookup.find_in(&env, "r.io").expect("ok").expect("found").secret, basic("ex", "pl"));
    }

    #[test]
    fn nothing_configured_is_anonymous() {
        let s = Scratch::new("none");
        assert_eq!(find(&s.env(&[]), "r.io"), None);
        assert_eq!(Lookup::default().find_in(&Env::default(), "r.io").expect("ok"), None);
    }

    #[test]
    fn debug_and_display_redact() {
        let credential = Credential { secret: basic("me", "hunter2"), source: "x".into() };
        let debug = format!("{credential:?}");
        assert!(debug.contains("<redacted>") && debug.contains("me") && !debug.contains("hunter2"), "{debug}");
        assert!(!credential.to_string().contains("hunter2"));
        for secret in [Secret::IdentityToken { token: "tok1".into() }, Secret::RegistryToken { token: "tok1".into() }] {
            assert!(!format!("{secret:?} {secret}").contains("tok1"));
        }
        let lookup = Lookup { username: Some("me".into()), password: Some("hunter2".into()), ..Default::default() };
        let debug = format!("{lookup:?}");
        assert!(debug.contains("<redacted>") && !debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn base64_round_trip() {
        for (plain, encoded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).as_deref(), Some(plain.as_bytes()), "{encoded}");
        }
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
        assert_eq!(base64_encode(b"\xfb\xff"), "+/8=");
        assert_eq!(base64_decode("Zm8"), Some(b"fo".to_vec()));
        assert_eq!(base64_decode("Zm9v\nYmE=\r\n"), Some(b"fooba".to_vec()));
        for bad in ["Z", "Zm9vY", "Zm=9", "Zg===", "Zm9v=", "Zg-_", "Zm 9v", "é"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }
}
