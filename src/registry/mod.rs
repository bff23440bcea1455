//! The OCI distribution protocol, as a blocking client that copes with real registries.
//!
//! [`Registry`] is one host: it decides the scheme once (by [`crate::tls`]'s rules, pinging `/v2/` and
//! falling back from unverified HTTPS to HTTP for loopback and `--insecure` registries), learns from the
//! ping's challenge how to authenticate, and then sends every request through [`Registry::send`], which
//! adds the Authorization for the request's scope, fetches or refreshes a bearer token once on a 401, and
//! retries transient failures (connection errors, 408/429/5xx) with capped, jittered exponential backoff
//! that honours `Retry-After`, within an attempt count and a total time budget. Requests carry their body
//! as a byte slice, so a retried request resends exactly the same bytes; streaming uploads live in
//! [`upload`], which keeps the chunk in flight in memory until the registry acknowledges it. Error messages
//! name the operation, the status, the registry's error code and message, and the attempt count, and
//! never a credential.

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use ureq::Agent;
use ureq::http;

use crate::auth::{Challenge, parse_challenges, query_escape, token_from_response};
use crate::credentials::{Credential, Secret, base64_encode};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::reference::is_loopback_host;
use crate::signal;
use crate::tls::{TlsOptions, Transport, verify_failed};

pub mod read;
pub mod sink;
pub mod upload;

/// Accept header for manifests: OCI and Docker types, images and indexes.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// How hard to try before giving up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, including the first.
    pub attempts: u32,
    /// Total time budget for the retries of one request.
    pub budget: Duration,
    /// First backoff delay; doubles per attempt up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            budget: Duration::from_secs(120),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `n` (1 = the first retry), with jitter in [50%, 100%].
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << n.min(16).saturating_sub(1));
        let capped = exp.min(self.max_delay);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let jitter = 0.5 + f64::from(nanos % 1000) / 2000.0;
        capped.mul_f64(jitter)
    }
}

/// Statuses worth another attempt: timeouts, rate limits, and server or proxy trouble.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 499 | 500 | 502 | 503 | 504 | 522)
}

/// A request to the registry. The body is a slice so retries resend the same bytes.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'static str,
    /// Absolute URL, or a path starting with `/` (resolved against the registry).
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: &'a [u8],
    /// A large body shared with the caller instead of `body` (an upload chunk): sent without a copy.
    pub shared: Option<SharedBody>,
    /// The repository whose scope the request needs (None for `/v2/` and the catalog).
    pub repository: Option<String>,
    /// What the request is for, in the user's words ("upload layer chunk").
    pub what: &'static str,
    /// Whether `send` may retry it; false when the caller handles recovery (chunk PATCHes).
    pub retry: bool,
    /// A catalog request (scope `registry:catalog:*`) rather than one outside any scope (the ping).
    pub catalog: bool,
}

impl<'a> Request<'a> {
    pub fn new(method: &'static str, url: impl Into<String>, what: &'static str) -> Request<'a> {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: &[],
            shared: None,
            repository: None,
            what,
            retry: true,
            catalog: false,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = body;
        self
    }

    /// `range` of `data` as the body, shared rather than copied.
    pub fn shared_body(mut self, data: std::sync::Arc<Vec<u8>>, range: std::ops::Range<usize>) -> Self {
        self.shared = Some(SharedBody { data, range });
        self
    }

    pub fn repository(mut self, repo: &str) -> Self {
        self.repository = Some(repo.to_string());
        self
    }

    pub fn no_retry(mut self) -> Self {
        self.retry = false;
        self
    }
}

/// Part of a buffer owned jointly by the caller and the request's worker thread.
#[derive(Debug, Clone)]
pub struct SharedBody {
    data: std::sync::Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
}

impl SharedBody {
    fn len(&self) -> usize {
        self.range.len()
    }
}

/// A request body the worker thread owns.
enum OwnedBody {
    None,
    Bytes(Vec<u8>),
    Shared(SharedBody),
}

/// Reads a [`SharedBody`] (what ureq sends from).
struct SharedReader {
    body: SharedBody,
    pos: usize,
}

impl Read for SharedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let data = self.body.data.get(self.body.range.clone()).unwrap_or_default();
        let rest = data.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// A registry's answer, with the body read (bounded) for errors and JSON.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How many attempts `send` made to get it.
    pub attempts: u32,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// "CODE: message" from the registry's JSON error body, else the first line of the body.
    pub fn error_detail(&self) -> String {
        registry_error_detail(&self.body)
    }
}

/// The `{"errors":[{"code","message"}]}` body as one line; non-JSON bodies (HTML from proxies, Gitea's
/// plain text) give their first non-empty line, shortened.
pub fn registry_error_detail(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(errors) = v.get("errors").and_then(|e| e.as_array())
    {
        let parts: Vec<String> = errors
            .iter()
            .map(|e| {
                let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                match (code.is_empty(), msg.is_empty()) {
                    (false, false) => format!("{code}: {msg}"),
                    (false, true) => code.to_string(),
                    _ => msg.to_string(),
                }
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return one_line(&parts.join("; "));
        }
    }
    let text = String::from_utf8_lossy(body);
    // An HTML error page (nginx, an ingress): its title says it all ("413 Request Entity Too Large").
    let lower = text.to_ascii_lowercase();
    if let (Some(a), Some(b)) = (lower.find("<title>"), lower.find("</title>"))
        && a + 7 <= b
    {
        return one_line(&text[a + 7..b]);
    }
    let line = text
        .lines()
        .map(|l| l.trim())
        .map(|l| if l.starts_with('<') { strip_tags(l) } else { l.to_string() })
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    line.chars().take(200).collect()
}

/// Whitespace runs (newlines included) to one space, at most 300 characters.
fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &joined[..i]),
        None => joined,
    }
}

fn strip_tags(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    one_line(&out)
}

/// How this registry wants to be authenticated, learned from the ping.
#[derive(Debug, Clone)]
enum AuthScheme {
    None,
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// Options for connecting to registries.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub tls: TlsOptions,
    pub retry: RetryPolicy,
    /// Per-request timeout (connect, and each read).
    pub request_timeout: Option<Duration>,
}

/// A connection to one registry host.
pub struct Registry {
    host: String,
    base: String,
    agent: Agent,
    credential: Option<Credential>,
    scheme: AuthScheme,
    tokens: HashMap<String, String>,
    retry: RetryPolicy,
    /// How long one request may take before it is abandoned.
    request_timeout: Duration,
    /// Whether the registry is on loopback (by name or resolved address), decided once.
    loopback: bool,
    /// Requests sent, by method, for the JSON report and tests.
    pub sent: HashMap<&'static str, u64>,
}

const MAX_BODY: u64 = 16 * 1024 * 1024;
/// How long a cancelled run still waits for the answer of the request in flight.
const CANCEL_GRACE: Duration = Duration::from_millis(500);

impl Registry {
    /// Connects to `host` (pinging `/v2/`), choosing the transport and learning the auth scheme.
    pub fn connect(
        host: &str,
        credential: Option<Credential>,
        opts: &ConnectOptions,
        progress: &mut Progress,
    ) -> Result<Registry> {
        let transport = opts.tls.transport(host);
        let tls = opts.tls.config(host, &transport)?;
        // A request may take at most a minute, and never longer than the whole retry budget.
        let timeout = opts.request_timeout.unwrap_or(Duration::from_secs(60)).min(opts.retry.budget);
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .max_redirects(5)
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(timeout))
            .timeout_recv_body(Some(timeout))
            .timeout_send_body(Some(timeout))
            .user_agent(format!("docker-idpb/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let mut reg = Registry {
            host: host.to_string(),
            base: String::new(),
            agent,
            credential,
            scheme: AuthScheme::None,
            tokens: HashMap::new(),
            retry: opts.retry.clone(),
            request_timeout: timeout,
            loopback: crate::tls::is_loopback(host),
            sent: HashMap::new(),
        };
        let schemes: &[&str] = match transport {
            Transport::Https => &["https"],
            Transport::InsecureHttps => &["https", "http"],
            Transport::Http => &["http"],
        };
        let mut last_err = None;
        for scheme in schemes {
            reg.base = format!("{scheme}://{host}");
            match reg.ping(*scheme == *schemes.last().unwrap_or(scheme)) {
                Ok(()) => {
                    if transport == Transport::InsecureHttps {
                        let how =
                            if *scheme == "http" { "plain HTTP" } else { "HTTPS without certificate verification" };
                        let why = if reg.loopback { "a loopback registry, as Docker does" } else { "--insecure" };
                        progress.note(&format!("note: {host} is reached over {how} ({why})"));
                    }
                    if *scheme == "http" && !reg.loopback && reg.credential.is_some() {
                        return Err(Error::Auth(format!(
                            "refusing to send credentials for {host} over plain HTTP; use HTTPS (drop --plain-http) \
                             or a loopback address"
                        )));
                    }
                    return Ok(reg);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Registry(format!("cannot reach {host}"))))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// `GET /v2/`: which scheme works, and which auth the registry wants. Busy answers (503...) are
    /// retried; transport errors only on the last scheme tried (on the first, they mean "try HTTP").
    fn ping(&mut self, last_scheme: bool) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let req = Request::new("GET", url, "registry ping");
        let started = Instant::now();
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let left = self.retry.budget.saturating_sub(started.elapsed());
            let can_retry = attempt < self.retry.attempts && !left.is_zero();
            match self.raw(&req, None) {
                Ok(r) if retryable_status(r.status) && can_retry && retry_delay(&r, &self.retry, attempt) < left => {
                    self.sleep(retry_delay(&r, &self.retry, attempt))?;
                }
                Ok(r) => break Response { attempts: attempt, ..r },
                Err(Error::Registry(_)) if last_scheme && can_retry && self.retry.delay(attempt) < left => {
                    self.sleep(self.retry.delay(attempt))?;
                }
                Err(Error::Registry(m)) if attempt > 1 => {
                    return Err(Error::Registry(format!("{m} (gave up after {attempt} attempts)")));
                }
                Err(e) => return Err(e),
            }
        };
        match resp.status {
            200..=299 => self.scheme = AuthScheme::None,
            401 => {
                self.scheme = choose_scheme(&challenges(&resp)).ok_or_else(|| {
                    Error::Auth(format!("{} asks for an authentication scheme docker-idpb does not support", self.host))
                })?;
            }
            404 => {
                return Err(Error::Registry(format!(
                    "{} does not serve the registry API at /v2/ (is this a registry address?)",
                    self.host
                )));
            }
            _ => return Err(self.status_error(&req, &resp)),
        }
        Ok(())
    }

    /// Whether a secret may travel to `url`: over HTTPS, or over plain HTTP only to a loopback host (this
    /// registry when it is loopback by name or address; any other host by name).
    fn may_send_secrets(&self, url: &str) -> bool {
        if url.starts_with("https://") {
            return true;
        }
        let host = path_host(url);
        if host.eq_ignore_ascii_case(&self.host) { self.loopback } else { is_loopback_host(&host) }
    }

    /// Whether `url` (absolute) points at this registry's host and port.
    fn is_registry_url(&self, url: &str) -> bool {
        path_host(url).eq_ignore_ascii_case(&self.host)
    }

    /// Resolves a Location or path against the registry base URL.
    pub fn resolve(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        }
    }

    /// Sends a request with auth and retries; returns any HTTP answer except 401s it could not get past.
    pub fn send(&mut self, req: &Request<'_>) -> Result<Response> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            if signal::cancelled() {
                return Err(Error::Cancelled);
            }
            attempt += 1;
            // Credentials go only to the registry itself, never to another host an upload Location names.
            let auth = if self.is_registry_url(&self.resolve(&req.url)) {
                self.authorization(req.repository.as_deref(), false)?
            } else {
                None
            };
            let result = self.raw(req, auth.as_deref());
            let left = self.retry.budget.saturating_sub(started.elapsed());
            let can_retry = req.retry && attempt < self.retry.attempts && !left.is_zero();
            match result {
                Ok(resp) if resp.status == 401 && !refreshed => {
                    // First refusal: learn the challenge and get a fresh token (or send Basic) once.
                    refreshed = true;
                    self.learn_challenge(&resp);
                    let can_answer = match self.scheme {
                        AuthScheme::Bearer { .. } => true,
                        AuthScheme::Basic => self.credential.is_some() && auth.is_none(),
                        AuthScheme::None => false,
                    };
                    if !can_answer {
                        return Err(self.auth_error(req, &resp));
                    }
                    self.authorization(req.repository.as_deref(), true)?;
                    attempt -= 1;
                }
                Ok(resp) if resp.status == 401 => return Err(self.auth_error(req, &resp)),
                Ok(resp)
                    if retryable_status(resp.status)
                        && can_retry
                        && retry_delay(&resp, &self.retry, attempt) < left =>
                {
                    self.sleep(retry_delay(&resp, &self.retry, attempt))?;
                }
                Ok(resp) => return Ok(Response { attempts: attempt, ..resp }),
                Err(Error::Registry(_)) if can_retry && self.retry.delay(attempt) < left => {
                    self.sleep(self.retry.delay(attempt))?
                }
                Err(Error::Registry(msg)) if attempt > 1 => {
                    return Err(Error::Registry(format!("{msg} (gave up after {attempt} attempts)")));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The error for a response the caller cannot use: operation, status, registry's code and message.
    pub fn status_error(&self, req: &Request<'_>, resp: &Response) -> Error {
        let detail = resp.error_detail();
        let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
        let target = req
            .repository
            .as_deref()
            .map(|r| format!(" {}/{r}", self.host))
            .unwrap_or_else(|| format!(" {}", self.host));
        let attempts =
            if resp.attempts > 1 { format!(" (gave up after {} attempts)", resp.attempts) } else { String::new() };
        Error::Registry(format!(
            "{} ({} {}) at{target} failed with {}{detail}{attempts}",
            req.what,
            req.method,
            path_of(&req.url),
            resp.status
        ))
    }

    fn sleep(&self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if signal::cancelled() {
                return Err(Error::Cancelled);
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        Ok(())
    }

    fn learn_challenge(&mut self, resp: &Response) {
        if let Some(scheme) = choose_scheme(&challenges(resp)) {
            self.scheme = scheme;
        }
    }

    fn auth_error(&self, req: &Request<'_>, resp: &Response) -> Error {
        let detail = resp.error_detail();
        let detail = if detail.is_empty() { String::new() } else { format!(" ({detail})") };
        let host = &self.host;
        match &self.credential {
            Some(c) => Error::Auth(format!(
                "{host} refused the credentials from {} for {}{detail}; check them with `docker login {host}` \
                 or pass -u USER --password-stdin",
                c.source, req.what
            )),
            None => Error::Auth(format!(
                "{host} requires authentication for {}{detail} and no credentials were found; run `docker login {host}` \
                 or pass -u USER --password-stdin",
                req.what
            )),
        }
    }

    /// The Authorization header for a request in `repository`'s scope (fetching a token if needed).
    fn authorization(&mut self, repository: Option<&str>, refresh: bool) -> Result<Option<String>> {
        match self.scheme.clone() {
            AuthScheme::None => Ok(None),
            AuthScheme::Basic => Ok(self.credential.as_ref().and_then(basic_header)),
            AuthScheme::Bearer { realm, service } => {
                let scope = match repository {
                    Some(repo) => format!("repository:{repo}:pull,push"),
                    None => "registry:catalog:*".to_string(),
                };
                if !refresh && let Some(t) = self.tokens.get(&scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let token = self.fetch_token(&realm, service.as_deref(), &scope)?;
                self.tokens.insert(scope, token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn fetch_token(&mut self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        if !realm.starts_with("https://") && !realm.starts_with("http://") {
            return Err(Error::Auth(format!("{} sent a token realm that is not a URL: {realm:?}", self.host)));
        }
        let mut query = Vec::new();
        if let Some(s) = service {
            query.push(format!("service={}", query_escape(s)));
        }
        query.push(format!("scope={}", query_escape(scope)));
        let resp = match self.credential.as_ref().map(|c| &c.secret) {
            Some(Secret::RegistryToken { token }) => return Ok(token.clone()),
            Some(Secret::IdentityToken { .. }) if !self.may_send_secrets(realm) => {
                return Err(Error::Auth(format!(
                    "refusing to send the identity token to {} over plain HTTP; the registry's token server must \
                     use HTTPS",
                    path_host(realm)
                )));
            }
            Some(Secret::IdentityToken { token }) => {
                let mut form =
                    format!("grant_type=refresh_token&refresh_token={}&client_id=docker-idpb", query_escape(token));
                if let Some(s) = service {
                    form.push_str(&format!("&service={}", query_escape(s)));
                }
                form.push_str(&format!("&scope={}", query_escape(scope)));
                let req = Request::new("POST", realm.to_string(), "token request")
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form.as_bytes());
                self.raw_retrying(&req, None)?
            }
            _ => {
                let auth = self.credential.as_ref().and_then(basic_header);
                let sep = if realm.contains('?') { '&' } else { '?' };
                let url = format!("{realm}{sep}{}", query.join("&"));
                let req = Request::new("GET", url, "token request");
                self.raw_retrying(&req, auth.as_deref())?
            }
        };
        if resp.status == 401 || resp.status == 403 {
            let req = Request::new("GET", realm.to_string(), "token request");
            return Err(self.auth_error(&req, &resp));
        }
        if !resp.ok() {
            return Err(Error::Auth(format!(
                "token server {} answered {}: {}",
                path_host(realm),
                resp.status,
                resp.error_detail()
            )));
        }
        token_from_response(&resp.text())
            .ok_or_else(|| Error::Auth(format!("token server {} sent no token in its answer", path_host(realm))))
    }

    fn raw_retrying(&mut self, req: &Request<'_>, auth: Option<&str>) -> Result<Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.raw(req, auth) {
                Ok(r) if retryable_status(r.status) && attempt < self.retry.attempts => {}
                Err(Error::Registry(_)) if attempt < self.retry.attempts => {}
                other => return other,
            }
            self.sleep(self.retry.delay(attempt))?;
        }
    }

    /// One HTTP exchange, no retries. Transport failures become `Error::Registry` (retryable) or
    /// `Error::Tls` (not).
    fn raw(&mut self, req: &Request<'_>, auth: Option<&str>) -> Result<Response> {
        let timeout = self.request_timeout;
        self.raw_with(req, auth, true, timeout)
    }

    /// One exchange run on a worker thread, so the caller can stop waiting: when the run is cancelled
    /// (if `cancellable`) or `timeout` passes, the request is abandoned and its thread left to finish on
    /// its own. A hung registry therefore cannot hold Ctrl-C or `--timeout` hostage.
    fn raw_with(
        &mut self,
        req: &Request<'_>,
        auth: Option<&str>,
        cancellable: bool,
        timeout: Duration,
    ) -> Result<Response> {
        let url = self.resolve(&req.url);
        let mut headers: Vec<(&'static str, String)> = req.headers.clone();
        if let Some(a) = auth {
            // Never over plain HTTP to a host that is not loopback.
            if self.may_send_secrets(&url) {
                headers.push(("Authorization", a.to_string()));
            }
        }
        // The worker thread may outlive this call (when abandoned), so what it sends must be owned: small
        // bodies are copied, upload chunks shared.
        let body = match &req.shared {
            Some(shared) => OwnedBody::Shared(shared.clone()),
            None if req.body.is_empty() => OwnedBody::None,
            None => OwnedBody::Bytes(req.body.to_vec()),
        };
        // Checked here so a bad URL is an error, not a silently dead worker.
        url.parse::<http::Uri>().map_err(|e| Error::Registry(format!("invalid request URL {}: {e}", path_of(&url))))?;
        *self.sent.entry(req.method).or_default() += 1;
        let agent = self.agent.clone();
        let method = req.method;
        let read_body = req.method != "HEAD";
        let thread_url = url.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut builder = http::Request::builder().method(method).uri(&thread_url);
            for (k, v) in &headers {
                builder = builder.header(*k, v);
            }
            let body = match body {
                OwnedBody::None => ureq::SendBody::none(),
                OwnedBody::Bytes(bytes) => {
                    builder = builder.header("Content-Length", bytes.len().to_string());
                    ureq::SendBody::from_owned_reader(std::io::Cursor::new(bytes))
                }
                OwnedBody::Shared(shared) => {
                    builder = builder.header("Content-Length", shared.len().to_string());
                    ureq::SendBody::from_owned_reader(SharedReader { body: shared, pos: 0 })
                }
            };
            let Ok(request) = builder.body(body) else { return };
            let result = agent.run(request).map(|mut resp| {
                let status = resp.status().as_u16();
                let headers: Vec<(String, String)> = resp
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                let mut body = Vec::new();
                let read = if read_body {
                    resp.body_mut().as_reader().take(MAX_BODY).read_to_end(&mut body).map(|_| ())
                } else {
                    Ok(())
                };
                (status, headers, body, read)
            });
            let _ = tx.send(result);
        });
        let mut deadline = Instant::now() + timeout;
        let mut cancelling = false;
        loop {
            if cancellable && !cancelling && signal::cancelled() {
                // Give the request in flight a moment: if its answer arrives, the caller learns the
                // upload's newest Location and can delete the session (the reference registry refuses a
                // DELETE on a stale one).
                cancelling = true;
                deadline = deadline.min(Instant::now() + CANCEL_GRACE);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && cancelling {
                return Err(Error::Cancelled);
            }
            if left.is_zero() {
                return Err(Error::Registry(format!(
                    "{} ({} {}) at {} got no answer within {}s",
                    req.what,
                    req.method,
                    path_of(&url),
                    self.host,
                    timeout.as_secs()
                )));
            }
            match rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(Ok((status, headers, body, read))) => {
                    if let Err(e) = read {
                        return Err(Error::Registry(format!(
                            "{} reading the answer from {}: {e}",
                            req.what, self.host
                        )));
                    }
                    return Ok(Response { status, headers, body, attempts: 1 });
                }
                Ok(Err(e)) => return Err(self.transport_error(&url, e)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Registry(format!("{} to {} failed", req.what, self.host)));
                }
            }
        }
    }

    /// One PUT whose body streams from `body` with a known length, no retries (the caller re-produces the
    /// body to retry). Used for registries that refuse chunked uploads.
    fn put_stream(&mut self, url: &str, repo: &str, size: u64, body: &mut dyn Read) -> Result<Response> {
        let url = self.resolve(url);
        let auth = if self.is_registry_url(&url) { self.authorization(Some(repo), false)? } else { None };
        let mut builder = http::Request::builder()
            .method("PUT")
            .uri(&url)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", size.to_string());
        if let Some(a) = auth.filter(|_| self.may_send_secrets(&url)) {
            builder = builder.header("Authorization", a);
        }
        let request = builder
            .body(ureq::SendBody::from_reader(body))
            .map_err(|e| Error::Registry(format!("invalid request URL {}: {e}", path_of(&url))))?;
        *self.sent.entry("PUT").or_default() += 1;
        let mut resp = self.agent.run(request).map_err(|e| self.transport_error(&url, e))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let mut text = Vec::new();
        let _ = resp.body_mut().as_reader().take(MAX_BODY).read_to_end(&mut text);
        Ok(Response { status, headers, body: text, attempts: 1 })
    }

    fn transport_error(&self, url: &str, e: ureq::Error) -> Error {
        let host = &self.host;
        // ureq reports handshake failures either directly or as an io::Error wrapping the rustls error.
        let rustls_err = match &e {
            ureq::Error::Rustls(r) => Some(r.clone()),
            ureq::Error::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned(),
            _ => None,
        };
        if let Some(rustls::Error::InvalidCertificate(c)) = &rustls_err {
            return verify_failed(host, &format!("{c:?}"));
        }
        if let Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) = &rustls_err {
            return Error::Tls(format!(
                "{host} does not speak TLS on this port (it looks like plain HTTP); use --plain-http, or --insecure \
                 to allow falling back to HTTP"
            ));
        }
        if let Some(other) = rustls_err {
            return Error::Tls(format!("TLS with {host} failed: {other}"));
        }
        match &e {
            ureq::Error::Tls(m) => Error::Tls(format!("TLS with {host} failed: {m}")),
            ureq::Error::HostNotFound => {
                Error::Registry(format!("cannot resolve {} (check the registry name and your DNS)", path_host(url)))
            }
            _ => Error::Registry(format!("cannot reach {} ({e})", path_host(url))),
        }
    }
}

/// Every challenge of every `WWW-Authenticate` header of a response.
fn challenges(resp: &Response) -> Vec<Challenge> {
    resp.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
        .flat_map(|(_, v)| parse_challenges(v))
        .collect()
}

fn choose_scheme(challenges: &[Challenge]) -> Option<AuthScheme> {
    if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer")
        && let Some(realm) = b.param("realm")
    {
        return Some(AuthScheme::Bearer { realm: realm.to_string(), service: b.param("service").map(str::to_string) });
    }
    challenges.iter().any(|c| c.scheme == "basic").then_some(AuthScheme::Basic)
}

fn basic_header(c: &Credential) -> Option<String> {
    match &c.secret {
        Secret::Basic { username, password } => {
            Some(format!("Basic {}", base64_encode(format!("{username}:{password}").as_bytes())))
        }
        Secret::RegistryToken { token } => Some(format!("Bearer {token}")),
        Secret::IdentityToken { .. } => None,
    }
}

/// The wait before retrying `resp`: its `Retry-After`, else the backoff; `retry_after` is capped so a
/// registry cannot park us for an hour.
pub(crate) fn retry_delay(resp: &Response, policy: &RetryPolicy, attempt: u32) -> Duration {
    retry_after(resp).map_or_else(|| policy.delay(attempt), |d| d.min(policy.max_delay * 3))
}

fn retry_after(resp: &Response) -> Option<Duration> {
    resp.header("retry-after")?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The path and query of a URL, for messages (no host, no credentials).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    // Upload URLs carry opaque state in the query; it helps nobody in a message.
    path.split('?').next().unwrap_or(path).to_string()
}

fn path_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

#[cfg(test)]
mod tests;
