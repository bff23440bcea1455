//! A hostile registry: `hostile.py` in one [`Scenario`] on a random loopback port, recording every request.
//!
//! The script is a minimal distribution registry (Basic or Bearer challenges, uploads, manifests, a canned
//! image under every name) that misbehaves in the chosen way: redirects to another origin, an upload
//! `Location` that downgrades HTTPS to HTTP, a 15 MiB manifest, a catalog of 32 pages of 4 MiB, a body that
//! trickles, a port that never answers, an unparsable `Location`, a ping that fails twice; or it plays an
//! HTTP proxy that records and refuses everything (a `CONNECT` gets its tunnel, so the plain-HTTP request
//! inside is recorded too). With [`HostileOptions::tls`] the same port speaks TLS and plain HTTP, told
//! apart by the first byte, so a client downgraded to `http://` is still heard. [`HostileServer::requests`]
//! reads back the JSON-lines log the script appends to before answering each request (method, target,
//! headers, TLS or not, the tunnel it came through, the first 4 KiB of the body), so once the binary has
//! exited, every request it sent is there. Readiness is the port file alone: no probe request pollutes the
//! log or the scenario's counters. The process is killed on drop.

use super::TempDir;
use super::context::write_file;
use super::http::base64;
use super::process::Daemon;
use super::tls::TestCa;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/hostile.py");
const PYTHON: &str = "/usr/bin/python3";

/// How the server misbehaves (the script's `--scenario`; its docstring says what each one does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A well-behaved minimal registry.
    Registry,
    /// Manifest GET/HEAD answer `307` to `http://127.0.0.1:PORT` + the same path.
    RedirectManifests { to: u16 },
    /// Blob HEADs answer `307` to `http://127.0.0.1:PORT` + the same path.
    RedirectBlobHeads { to: u16 },
    /// Upload `Location`s are absolute `http://127.0.0.1:SAMEPORT/...` URLs (start it with TLS).
    PlainHttpLocation,
    /// An HTTP proxy recorder: requests are answered `502`, except that a `CONNECT` opens a tunnel whose
    /// plain-HTTP requests are recorded (then answered `502`).
    Proxy,
    /// Manifest GETs answer a 15 MiB manifest of `{}` layers.
    BigManifest,
    /// `_catalog` and `tags/list` answer 32 linked pages of about 4 MiB each.
    HugeLists,
    /// `GET /v2/` sends its headers, then one body byte per second, forever.
    TricklePing,
    /// The ping is fine; manifest GETs trickle like [`Scenario::TricklePing`].
    TrickleManifest,
    /// Every connection is accepted and never answered.
    Silent,
    /// Upload POSTs answer `202` with this `Location`, verbatim.
    BadLocation(String),
    /// The first `failures` `GET /v2/` answer `503`.
    FlakyPing { failures: u32 },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Scenario::Registry => "registry",
            Scenario::RedirectManifests { .. } => "redirect-manifests",
            Scenario::RedirectBlobHeads { .. } => "redirect-blob-heads",
            Scenario::PlainHttpLocation => "plain-http-location",
            Scenario::Proxy => "proxy",
            Scenario::BigManifest => "big-manifest",
            Scenario::HugeLists => "huge-lists",
            Scenario::TricklePing => "trickle-ping",
            Scenario::TrickleManifest => "trickle-manifest",
            Scenario::Silent => "silent",
            Scenario::BadLocation(_) => "bad-location",
            Scenario::FlakyPing { .. } => "flaky-ping",
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec!["--scenario".to_string(), self.name().to_string()];
        match self {
            Scenario::RedirectManifests { to } | Scenario::RedirectBlobHeads { to } => {
                args.extend(["--redirect-to".to_string(), format!("http://127.0.0.1:{to}")]);
            }
            Scenario::BadLocation(location) => args.extend(["--location".to_string(), location.clone()]),
            Scenario::FlakyPing { failures } => args.extend(["--failures".to_string(), failures.to_string()]),
            _ => {}
        }
        args
    }
}

/// What the server asks clients for on `/v2/...` (the proxy scenario ignores it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HostileAuth {
    #[default]
    None,
    /// `WWW-Authenticate: Basic realm="x"`; only these credentials get in.
    Basic { user: String, pass: String },
    /// `WWW-Authenticate: Bearer realm="REALM",service="SERVICE"` with the realm verbatim; no token the
    /// client could obtain gets in.
    Bearer { realm: String, service: String },
}

impl HostileAuth {
    pub fn basic(user: &str, pass: &str) -> HostileAuth {
        HostileAuth::Basic { user: user.to_string(), pass: pass.to_string() }
    }

    pub fn bearer(realm: &str) -> HostileAuth {
        HostileAuth::Bearer { realm: realm.to_string(), service: "svc".to_string() }
    }
}

/// Knobs beyond the scenario.
#[derive(Debug, Default)]
pub struct HostileOptions<'a> {
    pub auth: HostileAuth,
    /// Serve TLS (and plain HTTP) on the port, with this CA's server certificate.
    pub tls: Option<&'a TestCa>,
}

/// One request as the server recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// The request target as sent: a path and query, an absolute URI (to a proxy), `host:port` (CONNECT).
    pub path: String,
    /// Lowercase names; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// Whether it arrived inside TLS.
    pub tls: bool,
    /// The `CONNECT` target (`host:port`) of the tunnel it came through (proxy scenario), else empty.
    pub tunnel: String,
    /// The first 4 KiB of the body, as text.
    pub body: String,
}

impl Recorded {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    pub fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }
}

/// A running `hostile.py`; killed, and its dir removed, on drop.
#[derive(Debug)]
pub struct HostileServer {
    // Fields drop in order: the process goes before its dir.
    process: Daemon,
    scenario: Scenario,
    port: u16,
    tls: bool,
    dir: TempDir,
}

impl HostileServer {
    pub fn start(scenario: Scenario) -> HostileServer {
        HostileServer::start_with(scenario, &HostileOptions::default())
    }

    pub fn start_with(scenario: Scenario, options: &HostileOptions<'_>) -> HostileServer {
        assert!(
            Path::new(PYTHON).is_file(),
            "{PYTHON} is not installed: the hostile registry needs Debian's python3; run `make deps` \
             (or `apt-get install -y python3`)"
        );
        let dir = TempDir::new("hostile");
        let port_file = dir.join("port");
        let log = dir.join("requests.jsonl");
        write_file(&log, b"");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(SCRIPT).args(scenario.args()).arg("--port-file").arg(&port_file).arg("--log").arg(&log);
        match &options.auth {
            HostileAuth::None => {}
            HostileAuth::Basic { user, pass } => {
                cmd.args(["--auth", "basic", "--user", user, "--password", pass]);
            }
            HostileAuth::Bearer { realm, service } => {
                cmd.args(["--auth", "bearer", "--realm", realm, "--service", service]);
            }
        }
        if let Some(ca) = options.tls {
            cmd.arg("--tls-cert").arg(&ca.server_crt).arg("--tls-key").arg(&ca.server_key);
        }
        let mut process = Daemon::spawn(cmd, "hostile registry", dir.join("hostile.log"));
        let mut port = 0;
        let ready = process.wait_ready(|| {
            port = fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
            port != 0
        });
        if let Err(log) = ready {
            panic!("{log}");
        }
        HostileServer { process, scenario, port, tls: options.tls.is_some(), dir }
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/REPO[:TAG]`.
    pub fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host())
    }

    /// `http(s)://127.0.0.1:PORT` + `path` (https when started with TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.host())
    }

    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        let log = self.dir.join("requests.jsonl");
        let text = fs::read_to_string(&log).unwrap_or_else(|e| panic!("cannot read {}: {e}", log.display()));
        // Each record is one write ending in a newline: a line without one is still being written.
        let complete = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
        complete.lines().filter(|l| !l.trim().is_empty()).map(parse_record).collect()
    }

    /// Requests with this method whose target contains `path_part`.
    pub fn matching(&self, method: &str, path_part: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.method == method && r.path.contains(path_part)).collect()
    }

    pub fn count(&self, method: &str, path_part: &str) -> usize {
        self.matching(method, path_part).len()
    }

    /// What the script printed (its access log and any traceback).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Writes `dir/config.json` giving `user:pass` for this server the way `docker login` stores them.
    pub fn write_docker_config(&self, dir: &Path, user: &str, pass: &str) -> PathBuf {
        let auth = base64(format!("{user}:{pass}").as_bytes());
        let config = serde_json::json!({ "auths": { self.host(): { "auth": auth } } });
        let path = dir.join("config.json");
        write_file(&path, config.to_string().as_bytes());
        path
    }
}

#[track_caller]
fn parse_record(line: &str) -> Recorded {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad hostile.py log line ({e}): {line}"));
    let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
    let headers = value["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, v)| (name.to_ascii_lowercase(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    Recorded {
        method: text("method"),
        path: text("path"),
        headers,
        tls: value["tls"].as_bool().unwrap_or(false),
        tunnel: text("tunnel"),
        body: text("body"),
    }
}
