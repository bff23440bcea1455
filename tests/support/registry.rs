//! A real registry per test: Debian's `docker-registry` (distribution 2.8) on a random loopback port.
//!
//! Four modes cover what a client meets: plain HTTP, HTTPS with the test CA, HTTPS + htpasswd (Basic) and
//! HTTPS + token auth, where `token_server.py` plays the auth server (ES256 JWTs with an `x5c` header,
//! trusted by the registry through `rootcertbundle`). The port is picked by binding `127.0.0.1:0` and
//! releasing it, so another process can grab it in between: a registry that dies with "address already in
//! use" is restarted on a new port. Readiness is "`/v2/` answers anything". The registry's stdout and
//! stderr go to one log; its access-log lines (`"METHOD PATH HTTP/1.1" STATUS`) are what
//! [`Registry::count_requests`] counts, e.g. to check that an upload used PATCH chunks or skipped a blob.
//! [`stored_digest`] and [`tag_list`] read back what a push left, with the registry's own credentials.
//! [`RegistryOptions::server_cert`] makes an HTTPS registry serve a given certificate (expired, wrongly
//! named, from another CA) instead of its own CA's.

use super::TempDir;
use super::context::write_file;
use super::http::{HttpResponse, Request, base64, basic_auth, fetch, try_fetch};
use super::process::{Daemon, require_python_jwt, require_tool, run, start_on_free_port};
use super::results::strings;
use super::tls::{ServerCert, TestCa};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The `service` and `issuer` of the token-auth setup (the JWT's `aud` and `iss`).
pub const TOKEN_SERVICE: &str = "test-registry";
pub const TOKEN_ISSUER: &str = "test-issuer";
const TOKEN_SERVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/token_server.py");
/// Every manifest type: the reference registry serves a manifest only to a client that accepts its type.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryMode {
    Http,
    Https,
    HttpsBasic { user: String, pass: String },
    HttpsToken { user: String, pass: String },
}

impl RegistryMode {
    pub fn basic(user: &str, pass: &str) -> RegistryMode {
        RegistryMode::HttpsBasic { user: user.to_string(), pass: pass.to_string() }
    }

    pub fn token(user: &str, pass: &str) -> RegistryMode {
        RegistryMode::HttpsToken { user: user.to_string(), pass: pass.to_string() }
    }

    pub fn is_https(&self) -> bool {
        *self != RegistryMode::Http
    }

    pub fn creds(&self) -> Option<(&str, &str)> {
        match self {
            RegistryMode::Http | RegistryMode::Https => None,
            RegistryMode::HttpsBasic { user, pass } | RegistryMode::HttpsToken { user, pass } => Some((user, pass)),
        }
    }
}

/// Knobs beyond the mode.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// `http.relativeurls: true`: upload `Location`s come back relative, as from Gitea.
    pub relative_urls: bool,
    /// The TLS certificate and key to serve instead of one from the registry's own test CA (`Https` and
    /// `HttpsBasic` only), e.g. an expired one. Such a registry has no CA of its own: [`Registry::ca`] and
    /// [`Registry::trust_dir`] are `None`, so direct requests and skopeo do not check its certificate.
    pub server_cert: Option<ServerCert>,
}

/// One line of the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// Path and query as requested.
    pub path: String,
    pub status: u16,
}

/// A running registry; killed, and its dir removed, on drop.
#[derive(Debug)]
pub struct Registry {
    // Fields drop in order: the processes go before the certificates and dirs they use.
    process: Daemon,
    token_server: Option<TokenServer>,
    ca: Option<TestCa>,
    mode: RegistryMode,
    port: u16,
    dir: TempDir,
}

impl Registry {
    pub fn start(mode: RegistryMode) -> Registry {
        Registry::start_with(mode, &RegistryOptions::default())
    }

    pub fn start_with(mode: RegistryMode, options: &RegistryOptions) -> Registry {
        require_tool("docker-registry");
        require_tool("curl");
        let dir = TempDir::new("registry");
        let ca = match (&options.server_cert, &mode) {
            (None, _) => mode.is_https().then(TestCa::new),
            (Some(_), RegistryMode::Https | RegistryMode::HttpsBasic { .. }) => None,
            (Some(_), other) => panic!("a custom server certificate needs Https or HttpsBasic, not {other:?}"),
        };
        let token_server = match (&mode, &ca) {
            (RegistryMode::HttpsToken { user, pass }, Some(ca)) => Some(TokenServer::start(ca, user, pass)),
            _ => None,
        };
        let auth = match (&mode, &token_server) {
            (RegistryMode::HttpsBasic { user, pass }, _) => {
                let htpasswd = dir.join("htpasswd");
                let entry = run(Command::new(require_tool("htpasswd")).args(["-Bbn", user, pass]));
                write_file(&htpasswd, entry.assert_success().stdout.as_bytes());
                format!("auth:\n  htpasswd: {{realm: test, path: {}}}\n", yaml_path(&htpasswd))
            }
            (_, Some(token)) => format!(
                "auth:\n  token: {{realm: {}, service: {TOKEN_SERVICE}, issuer: {TOKEN_ISSUER}, rootcertbundle: {}}}\n",
                yaml(&token.realm()),
                yaml_path(&token.sign_crt)
            ),
            _ => String::new(),
        };
        let server_cert = options.server_cert.clone().or_else(|| ca.as_ref().map(TestCa::server));
        let tls = server_cert.map_or(String::new(), |cert| {
            format!("  tls: {{certificate: {}, key: {}}}\n", yaml_path(&cert.crt), yaml_path(&cert.key))
        });
        let relative = if options.relative_urls { "  relativeurls: true\n" } else { "" };

        let (process, port) = start_on_free_port(|port| {
            let config = dir.join("config.yml");
            let yaml = format!(
                "version: 0.1\n\
                 log: {{level: info, accesslog: {{disabled: false}}}}\n\
                 storage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: {}\n{tls}{relative}{auth}",
                yaml_path(&dir.join("storage")),
                secret(port),
            );
            write_file(&config, yaml.as_bytes());
            let mut cmd = Command::new(REGISTRY_BIN);
            cmd.arg("serve").arg(&config);
            // REGISTRY_* variables override config.yml.
            for (name, _) in std::env::vars_os().filter(|(n, _)| n.to_string_lossy().starts_with("REGISTRY_")) {
                cmd.env_remove(name);
            }
            let mut process = Daemon::spawn(cmd, "docker-registry", dir.join("registry.log"));
            let scheme = if mode.is_https() { "https" } else { "http" };
            let probe = format!("{scheme}://127.0.0.1:{port}/v2/");
            process.wait_ready(|| try_fetch(Request::new("GET", &probe)).is_ok())?;
            Ok(process)
        });
        Registry { process, token_server, ca, mode, port, dir }
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http(s)://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.mode.is_https() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.host())
    }

    /// `127.0.0.1:PORT/REPO[:TAG|@DIGEST]`.
    pub fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host())
    }

    pub fn mode(&self) -> &RegistryMode {
        &self.mode
    }

    /// The CA that signed the registry's (and token server's) certificate; `None` for plain HTTP and for a
    /// [`RegistryOptions::server_cert`].
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_ref().map(|ca| ca.ca_crt.as_path())
    }

    /// A directory holding only the CA as `ca.crt` (for `--cert-dir`); `None` as for [`Registry::ca`].
    pub fn trust_dir(&self) -> Option<&Path> {
        self.ca.as_ref().map(|ca| ca.trust_dir.as_path())
    }

    pub fn creds(&self) -> Option<(String, String)> {
        self.mode.creds().map(|(u, p)| (u.to_string(), p.to_string()))
    }

    /// The registry's filesystem storage root.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// The upload sessions of `repo` still open in the registry's storage: a cancelled or deleted one
    /// loses its `data` and `startedat` (the registry leaves its hash state behind).
    pub fn open_upload_sessions(&self, repo: &str) -> Vec<PathBuf> {
        let uploads = self.storage_dir().join(format!("docker/registry/v2/repositories/{repo}/_uploads"));
        fs::read_dir(&uploads)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|s| s.join("data").exists() || s.join("startedat").exists())
            .collect()
    }

    /// Everything the registry printed so far (logrus lines and access-log lines).
    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Parsed access-log lines. The registry writes a line just after answering, so this waits until the
    /// log stops growing (50 ms) before reading it.
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        let mut log = self.log();
        for _ in 0..20 {
            thread::sleep(Duration::from_millis(50));
            let again = self.log();
            if again == log {
                break;
            }
            log = again;
        }
        log.lines().filter_map(parse_access_line).collect()
    }

    /// How many requests had this method and a path (with query) containing `path_part`.
    pub fn count_requests(&self, method: &str, path_part: &str) -> usize {
        self.requests().iter().filter(|r| r.method == method && r.path.contains(path_part)).count()
    }

    /// A request to `path` on the registry, without credentials, trusting the test CA.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpResponse {
        fetch(Request::new(method, &self.url(path)).ca(self.ca()).headers(headers).body(body))
    }

    /// The `Authorization` value for this registry's credentials: `None` for open modes, Basic, or a
    /// bearer token for `scope` (e.g. `repository:ns/x:pull,push`; `None` for `/v2/`) from the token server.
    pub fn auth_header(&self, scope: Option<&str>) -> Option<String> {
        match &self.mode {
            RegistryMode::Http | RegistryMode::Https => None,
            RegistryMode::HttpsBasic { user, pass } => Some(basic_auth(user, pass)),
            RegistryMode::HttpsToken { user, pass } => {
                let response = self.fetch_token(scope, Some((user, pass)));
                assert_eq!(response.status, 200, "token request failed: {}", response.text());
                let token = response.json()["token"].as_str().map(str::to_string);
                Some(format!("Bearer {}", token.unwrap_or_else(|| panic!("no token in {}", response.text()))))
            }
        }
    }

    /// `GET realm?service=..&scope=..` on the token server with optional Basic `creds`, as a client would.
    /// Panics unless this is a token-auth registry.
    pub fn fetch_token(&self, scope: Option<&str>, creds: Option<(&str, &str)>) -> HttpResponse {
        let mut url = format!("{}?service={TOKEN_SERVICE}", self.token_server().realm());
        if let Some(scope) = scope {
            url.push_str(&format!("&scope={}", percent_encode(scope)));
        }
        let auth = creds.map(|(user, pass)| basic_auth(user, pass));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        fetch(Request::new("GET", &url).ca(self.ca()).headers(&headers))
    }

    /// The token endpoint (`https://127.0.0.1:TPORT/token`) of a token-auth registry.
    pub fn token_realm(&self) -> Option<String> {
        self.token_server.as_ref().map(TokenServer::realm)
    }

    /// The token server's request log (one line per request and per grant).
    pub fn token_log(&self) -> Option<String> {
        self.token_server.as_ref().map(|t| t.process.log())
    }

    /// Writes `dir/config.json` giving this registry's credentials the way `docker login` stores them.
    pub fn write_docker_config(&self, dir: &Path) -> PathBuf {
        let mut auths = serde_json::Map::new();
        if let Some((user, pass)) = self.mode.creds() {
            auths.insert(self.host(), serde_json::json!({ "auth": base64(format!("{user}:{pass}").as_bytes()) }));
        }
        let path = dir.join("config.json");
        write_file(&path, serde_json::json!({ "auths": auths }).to_string().as_bytes());
        path
    }

    fn token_server(&self) -> &TokenServer {
        self.token_server.as_ref().unwrap_or_else(|| panic!("{:?} has no token server", self.mode))
    }
}

/// The digest `registry` holds for `repo:tag` (HEAD with [`MANIFEST_ACCEPT`] and, if it wants them,
/// credentials), or `None` when it has none.
pub fn stored_digest(registry: &Registry, repo: &str, tag: &str) -> Option<String> {
    let response = read_request(registry, "HEAD", &format!("/v2/{repo}/manifests/{tag}"), repo);
    match response.status {
        200 => Some(
            response
                .header("docker-content-digest")
                .unwrap_or_else(|| panic!("no Docker-Content-Digest for {repo}:{tag}: {response:?}"))
                .to_string(),
        ),
        404 => None,
        status => panic!("HEAD {repo}:{tag} answered {status}: {response:?}"),
    }
}

/// The manifest (or index) `registry` holds for `repo:reference` (a tag or a digest), its exact bytes.
#[track_caller]
pub fn stored_manifest(registry: &Registry, repo: &str, reference: &str) -> Vec<u8> {
    let response = read_request(registry, "GET", &format!("/v2/{repo}/manifests/{reference}"), repo);
    assert_eq!(response.status, 200, "GET {repo}:{reference}: {response:?}");
    response.body
}

/// The tags of `repo` in `registry`, empty when the repository does not exist (404 `NAME_UNKNOWN`).
pub fn tag_list(registry: &Registry, repo: &str) -> Vec<String> {
    let response = read_request(registry, "GET", &format!("/v2/{repo}/tags/list"), repo);
    match response.status {
        404 => {
            assert!(response.text().contains("NAME_UNKNOWN"), "unexpected 404: {}", response.text());
            Vec::new()
        }
        200 => strings(&response.json()["tags"]),
        status => panic!("tags/list of {repo} answered {status}: {}", response.text()),
    }
}

/// A read of `path` in `repo`: `Accept` [`MANIFEST_ACCEPT`] and, if the registry wants one, `Authorization`.
fn read_request(registry: &Registry, method: &str, path: &str, repo: &str) -> HttpResponse {
    let auth = registry.auth_header(Some(&format!("repository:{repo}:pull")));
    let mut headers = vec![("Accept", MANIFEST_ACCEPT)];
    headers.extend(auth.as_deref().map(|auth| ("Authorization", auth)));
    registry.request(method, path, &headers, None)
}

/// `token_server.py` on its own random port, with the registry's TLS certificate.
#[derive(Debug)]
struct TokenServer {
    process: Daemon,
    port: u16,
    sign_crt: PathBuf,
    dir: TempDir,
}

impl TokenServer {
    fn start(ca: &TestCa, user: &str, pass: &str) -> TokenServer {
        require_python_jwt();
        let dir = TempDir::new("token");
        let (sign_crt, sign_key) = ca.signing_cert("token-signing");
        let port_file = dir.join("port");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(TOKEN_SERVER_SCRIPT)
            .arg("--cert")
            .arg(&ca.server_crt)
            .arg("--key")
            .arg(&ca.server_key)
            .arg("--sign-cert")
            .arg(&sign_crt)
            .arg("--sign-key")
            .arg(&sign_key)
            .args(["--user", user, "--password", pass, "--issuer", TOKEN_ISSUER, "--port-file"])
            .arg(&port_file);
        let mut process = Daemon::spawn(cmd, "token server", dir.join("token.log"));
        let mut port = 0;
        let ready = process.wait_ready(|| {
            port = fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
            let url = format!("https://127.0.0.1:{port}/token");
            port != 0 && try_fetch(Request::new("GET", &url).ca(Some(&ca.ca_crt))).is_ok()
        });
        if let Err(log) = ready {
            panic!("{log}");
        }
        TokenServer { process, port, sign_crt, dir }
    }

    fn realm(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port)
    }
}

/// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "ua"` -> (GET, /v2/, 200); other lines -> None.
fn parse_access_line(line: &str) -> Option<AccessLogEntry> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut words = request.split(' ');
    let (method, path, protocol) = (words.next()?, words.next()?, words.next()?);
    if !protocol.starts_with("HTTP/") {
        return None;
    }
    let status = rest.split(' ').next()?.parse().ok()?;
    Some(AccessLogEntry { method: method.to_string(), path: path.to_string(), status })
}

fn secret(port: u16) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    hex::encode(Sha256::digest(format!("{nanos}-{port}-{}", std::process::id()).as_bytes()))
}

/// A YAML scalar: a JSON string is a valid double-quoted YAML string.
fn yaml(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

fn yaml_path(path: &Path) -> String {
    yaml(&path.to_string_lossy())
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'/' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
