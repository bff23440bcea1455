//! The OCI distribution protocol, as a blocking client that copes with real registries and distrusts
//! hostile ones.
//!
//! A request goes down a small stack of layers, each with one job, as go-containerregistry's transport
//! and ureq's middleware are built:
//!
//! - [`exchange`]: one HTTP exchange on a worker thread, bounded by a deadline and the run's [`Cancel`],
//!   following redirects by hand, reading at most a per-request limit of the answer (or streaming it);
//! - [`authorize`]: which Authorization each URL gets (the registry's origin only, secrets over plain HTTP
//!   to loopback only), Basic, and bearer tokens for the scopes the request states ([`Access`]);
//! - [`retry`]: the one retry policy (budget, `Retry-After`, jittered backoff, the visible retry line);
//! - [`Registry::send`] ties them: authorize, exchange, a 401 answered once with a fresh token (merging the
//!   challenge's scope), transient failures retried, everything else returned with its attempt count.
//!
//! [`Registry`] is one host: it decides the scheme once (by [`crate::tls`]'s rules, pinging `/v2/` and
//! falling back from unverified HTTPS to HTTP for loopback and `--insecure` registries, all within one
//! `--timeout`), and learns from the ping's challenge how to authenticate. Above it, [`upload`] streams
//! blobs in chunks, [`sink`] makes a registry a [`crate::sink::Sink`], and [`read`] lists and fetches.
//! Errors are typed ([`crate::error::RegistryError`]): status, transport or protocol, and retries read
//! that data. Registry JSON is read with limits (manifests 4 MiB, as distribution and containerd accept;
//! errors and tokens far less) into typed structs. Messages name the operation, the status, the
//! registry's error code and message, and the attempt count, and never a credential.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::Agent;

use crate::credentials::{Credential, Lookup};
use crate::error::{Error, RegistryErrorKind, Result, TransportKind, transient_status};
use crate::progress::{Notices, Progress};
use crate::signal::Cancel;
use crate::tls::{TlsOptions, Transport};

pub use authorize::Access;
use authorize::{Authorizer, TokenContext};
use exchange::{Answer, Body, Call, Exchange, Failure};
pub use retry::RetryPolicy;
use retry::{Retrier, SystemClock};
use url::Url;

pub mod authorize;
pub mod conduit;
pub mod exchange;
pub mod read;
pub mod retry;
pub mod sink;
pub mod upload;
pub mod url;

/// Accept header for manifests: OCI and Docker types, images and indexes.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// The largest manifest or index accepted (distribution's and containerd's limit), and the largest
/// catalog or tag page and image config read.
pub const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;
/// The most of an ordinary answer (an error, an upload acknowledgement) read.
pub const ANSWER_LIMIT: usize = 64 * 1024;

/// Whether a request is retried by the policy, or tried once because its caller recovers itself (a chunk
/// PATCH resynchronises with the session before sending again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryMode {
    Policy,
    Once,
}

/// What a request sends.
#[derive(Debug, Clone)]
pub enum RequestBody<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A range of a buffer shared with the caller (an upload chunk): sent without a copy.
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
}

/// A request to the registry.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'static str,
    /// Absolute URL, or a path starting with `/` (resolved against the registry).
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: RequestBody<'a>,
    /// What the request does, which decides its token scope.
    pub access: Access,
    /// What the request is for, in the user's words ("upload layer chunk").
    pub what: &'static str,
    pub retry: RetryMode,
    /// The most of the answer's body kept.
    pub limit: usize,
    /// Stream a 2xx answer's body ([`Response::stream`]) instead of reading it.
    pub stream: bool,
    /// The deadline of an enclosing operation (a chunk's retries), which this request's retries share.
    pub within: Option<Instant>,
}

impl<'a> Request<'a> {
    pub fn new(method: &'static str, url: impl Into<String>, what: &'static str) -> Request<'a> {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: RequestBody::Empty,
            access: Access::None,
            what,
            retry: RetryMode::Policy,
            limit: ANSWER_LIMIT,
            stream: false,
            within: None,
        }
    }

    /// Part of an operation that must be over by `deadline`.
    pub fn within(mut self, deadline: Instant) -> Self {
        self.within = Some(deadline);
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = RequestBody::Bytes(body);
        self
    }

    /// `range` of `data` as the body, shared rather than copied.
    pub fn shared_body(mut self, data: Arc<Vec<u8>>, range: std::ops::Range<usize>) -> Self {
        self.body = RequestBody::Shared(data, range);
        self
    }

    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Reads `repo`.
    pub fn pull(self, repo: &str) -> Self {
        self.access(Access::Pull(repo.to_string()))
    }

    /// Writes `repo`.
    pub fn push(self, repo: &str) -> Self {
        self.access(Access::Push(repo.to_string()))
    }

    pub fn once(mut self) -> Self {
        self.retry = RetryMode::Once;
        self
    }

    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    pub fn streamed(mut self) -> Self {
        self.stream = true;
        self
    }

    fn exchange_body(&self) -> Body {
        match &self.body {
            RequestBody::Empty => Body::Empty,
            RequestBody::Bytes(b) => Body::bytes(b),
            RequestBody::Shared(d, r) => Body::Shared(Arc::clone(d), r.clone()),
        }
    }
}

/// A registry's answer, with its body read up to the request's limit (or streamed).
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was longer than the request's limit and was cut.
    pub truncated: bool,
    /// The body, for a streamed 2xx answer.
    pub stream: Option<conduit::Reader>,
    /// How many attempts `send` made to get it.
    pub attempts: u32,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response").field("status", &self.status).field("attempts", &self.attempts).finish()
    }
}

impl Response {
    fn from_answer(a: Answer, attempts: u32) -> Response {
        Response {
            status: a.status,
            headers: a.headers,
            body: a.body,
            truncated: a.truncated,
            stream: a.stream,
            attempts,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// "CODE: message" from the registry's JSON error body, else the first line of the body.
    pub fn error_detail(&self) -> String {
        registry_error_detail(&self.body)
    }
}

/// The `{"errors": [...]}` body of a registry error.
#[derive(serde::Deserialize)]
struct ErrorsBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(serde::Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<serde_json::Value>,
}

fn json_text(v: &Option<serde_json::Value>) -> &str {
    v.as_ref().and_then(|v| v.as_str()).unwrap_or("")
}

/// The registry's error codes (`BLOB_UNKNOWN`...) in a body.
fn error_codes(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<ErrorsBody>(body)
        .map(|b| b.errors.iter().map(|e| json_text(&e.code).to_string()).filter(|c| !c.is_empty()).collect())
        .unwrap_or_default()
}

/// The `{"errors":[{"code","message"}]}` body as one line; non-JSON bodies (HTML from proxies, Gitea's
/// plain text) give their first non-empty line, shortened.
pub fn registry_error_detail(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<ErrorsBody>(body) {
        let parts: Vec<String> = v
            .errors
            .iter()
            .map(|e| {
                let (code, msg) = (json_text(&e.code), json_text(&e.message));
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
    one_line(&line.chars().take(200).collect::<String>())
}

/// Whitespace runs (newlines included) to one space, at most 300 characters.
pub fn one_line(s: &str) -> String {
    // Control characters (terminal escapes) from a registry never reach the user's terminal.
    let clean: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let joined = clean.split_whitespace().collect::<Vec<_>>().join(" ");
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

/// Options for connecting to registries.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub tls: TlsOptions,
    pub retry: RetryPolicy,
    /// The longest one exchange may take (default: a minute, and never more than the retry budget).
    pub request_timeout: Option<Duration>,
    /// Stops every request of the run.
    pub cancel: Cancel,
    /// No retry lines on stderr.
    pub quiet: bool,
}

/// A connection to one registry host. A clone shares the HTTP agents and starts with the same tokens (a
/// second handle, e.g. to read a blob while writing another).
#[derive(Clone)]
pub struct Registry {
    host: String,
    base: Url,
    exchange: Exchange,
    auth: Authorizer,
    retry: RetryPolicy,
    /// How long one exchange may take before it is abandoned.
    request_timeout: Duration,
    /// Where retry lines go: the run's progress display (silent with `-q`).
    notices: Notices,
}

/// The TLS options for `host`: the command's, plus the idpbuilder cluster's CA when `host` is idpbuilder's
/// and would otherwise be reached unverified (only because it is loopback, with no CA installed). Also the
/// hint for the note shown when the connection stays unverified: how to get verification.
fn trust_for(host: &str, opts: &ConnectOptions, progress: &mut Progress) -> Result<(TlsOptions, String)> {
    let mut tls = opts.tls.clone();
    if !tls.loopback_unverified(host)? {
        return Ok((tls, String::new()));
    }
    if !crate::idpbuilder::serves(host) {
        let hint = format!("; to verify it, install its CA with `docker-idpb trust {host} --from-file CA.pem`");
        return Ok((tls, hint));
    }
    let limit = opts.request_timeout.unwrap_or(crate::credentials::HELPER_TIMEOUT);
    let why = match crate::idpbuilder::cluster_ca_within(Some(limit), &opts.cancel) {
        Ok(Some(anchor)) => {
            progress.note(&format!("note: verifying {host} with {}", anchor.source));
            tls.anchors.push(anchor);
            return Ok((tls, String::new()));
        }
        Ok(None) => "kubectl is not installed".to_string(),
        Err(Error::Cancelled) => return Err(Error::Cancelled),
        Err(e) => e.to_string(),
    };
    Ok((
        tls,
        format!(
            "; the idpbuilder cluster's CA could not be fetched ({why}): run `docker-idpb trust {host}` to verify it"
        ),
    ))
}

/// Connects to `host` with the credentials `lookup` finds for it, falling back to the idpbuilder
/// cluster's Gitea credentials for the hosts idpbuilder serves (a failure to get those is shown, and the
/// connection goes on anonymously).
pub fn open(host: &str, lookup: &Lookup, opts: &ConnectOptions, progress: &mut Progress) -> Result<Registry> {
    let mut credential = lookup.find(host)?;
    if credential.is_none() && crate::idpbuilder::serves(host) {
        credential = match crate::idpbuilder::gitea_credentials_within(lookup.helper_timeout, &lookup.cancel) {
            Ok(c) => c,
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(e) => {
                progress.warn(&format!("no credentials for {host} from the idpbuilder cluster: {e}"));
                None
            }
        };
    }
    Registry::connect(host, credential, opts, progress)
}

impl Registry {
    /// Connects to `host` (pinging `/v2/`), choosing the transport and learning the auth scheme. The
    /// whole connection, every scheme tried and every retry, fits in the retry budget.
    pub fn connect(
        host: &str,
        credential: Option<Credential>,
        opts: &ConnectOptions,
        progress: &mut Progress,
    ) -> Result<Registry> {
        let (tls_opts, unverified_hint) = trust_for(host, opts, progress)?;
        let transport = tls_opts.transport(host)?;
        let tls = tls_opts.config(host, &transport)?;
        // An exchange may take at most a minute, and never longer than the whole retry budget.
        let timeout = opts.request_timeout.unwrap_or(Duration::from_secs(60)).min(opts.retry.budget);
        let agent = |proxy: bool| -> Agent {
            let mut config = Agent::config_builder()
                .http_status_as_error(false)
                .tls_config(tls.clone())
                .max_redirects(0)
                .timeout_connect(Some(timeout.min(Duration::from_secs(15))))
                .timeout_recv_response(Some(timeout))
                .timeout_recv_body(Some(timeout))
                .timeout_send_body(Some(timeout))
                .user_agent(format!("docker-idpb/{}", env!("CARGO_PKG_VERSION")));
            if !proxy {
                config = config.proxy(None);
            }
            config.build().into()
        };
        let schemes: &[&str] = match transport {
            Transport::Https => &["https"],
            Transport::InsecureHttps => &["https", "http"],
            Transport::Http => &["http"],
        };
        let first = Url::parse(&format!("{}://{host}/", schemes[0]))
            .map_err(|e| Error::usage(format!("invalid registry host {host:?}: {e}")))?;
        let loopback = crate::tls::is_loopback(host);
        let mut reg = Registry {
            host: host.to_string(),
            base: first.clone(),
            exchange: Exchange::new(
                agent(true),
                agent(false),
                loopback.then(|| first.origin().host.clone()),
                opts.cancel.clone(),
                timeout,
            ),
            auth: Authorizer::new(host, credential, loopback, first.origin().clone()),
            retry: opts.retry.clone(),
            request_timeout: timeout,
            notices: if opts.quiet { Notices::silent() } else { progress.notices() },
        };
        let deadline = Instant::now() + opts.retry.budget;
        let mut last_err = None;
        for (i, scheme) in schemes.iter().enumerate() {
            reg.base = Url::parse(&format!("{scheme}://{host}/"))
                .map_err(|e| Error::usage(format!("invalid registry host {host:?}: {e}")))?;
            reg.auth.set_origin(reg.base.origin().clone());
            let last = i + 1 == schemes.len();
            match reg.ping(last, deadline, transport == Transport::Http) {
                Ok(()) => {
                    if transport == Transport::InsecureHttps {
                        let how =
                            if *scheme == "http" { "plain HTTP" } else { "HTTPS without certificate verification" };
                        let why = if loopback { "a loopback registry, as Docker does" } else { "--insecure" };
                        let hint = if loopback && *scheme == "https" { unverified_hint.as_str() } else { "" };
                        progress.note(&format!("note: {host} is reached over {how} ({why}){hint}"));
                    }
                    if *scheme == "http" && !loopback && reg.auth.credential().is_some() {
                        return Err(Error::Auth(format!(
                            "refusing to send credentials for {host} over plain HTTP; use HTTPS (drop --plain-http) \
                             or a loopback address"
                        )));
                    }
                    return Ok(reg);
                }
                // A name that does not resolve will not resolve for another scheme either.
                Err(e @ Error::Registry(_)) if !e.is_transient() && is_dns(&e) => return Err(e),
                Err(e @ (Error::Cancelled | Error::Usage(_))) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::protocol(format!("cannot reach {host}"))))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn cancel(&self) -> &Cancel {
        self.exchange.cancel()
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Prints a retry line (unless quiet).
    pub fn announce(&self, line: &str) {
        self.notices.line(line);
    }

    /// `GET /v2/`: whether this scheme works, and which auth the registry wants. Busy answers (503...)
    /// are retried; transport errors only on the last scheme tried (on the first, they mean "try HTTP").
    /// With `probe_tls` (`--plain-http`), a first answer that is not a registry's leads to one question:
    /// does the port speak TLS? A plain-HTTP request to a TLS port fails in many ways (a 400, a reset,
    /// garbage), none of them worth a retry.
    fn ping(&mut self, last_scheme: bool, deadline: Instant, probe_tls: bool) -> Result<()> {
        let url = self.resolve("/v2/")?;
        let mut retrier = Retrier::start(&self.retry, &SystemClock, Some(deadline));
        let notices = self.notices.clone();
        let answer = loop {
            let call = Call {
                method: "GET",
                url: url.clone(),
                headers: Vec::new(),
                body: Body::Empty,
                limit: ANSWER_LIMIT,
                stream: false,
                cancellable: true,
            };
            let exchange_deadline = retrier.deadline().min(Instant::now() + self.request_timeout);
            let result = self
                .exchange
                .run(call, exchange_deadline, &mut |_| None)
                .map_err(|f| failure_error(&self.host, "contacting the registry", "GET", url.path(), f));
            // Only what a TLS port does with plain HTTP: a 400 (Go and nginx answer so) or no HTTP at all. A
            // registry's own status (a 503 while busy) is no reason to ask, and asking costs time.
            let tls_like = match &result {
                Ok(a) => a.status == 400,
                Err(e) => !matches!(e, Error::Cancelled),
            };
            if probe_tls && retrier.attempt() == 1 && tls_like {
                let limit = deadline.saturating_duration_since(Instant::now());
                if crate::tls::diagnose::speaks_tls(&self.host, limit) {
                    return Err(Error::usage(format!(
                        "{} speaks TLS on this port, but --plain-http asks for plain HTTP; drop --plain-http (and \
                         add --insecure if its certificate cannot be verified)",
                        self.host
                    )));
                }
            }
            let step = match &result {
                Ok(a) if transient_status(a.status) => {
                    Some((format!("{} answered {}", self.host, a.status), retry_after(&a.headers)))
                }
                Err(e) if e.is_transient() && last_scheme => Some((e.to_string(), None)),
                _ => None,
            };
            let Some((reason, after)) = step else { break result };
            if !retrier.again(&reason, after, self.exchange.cancel(), &mut |l| notices.line(l))? {
                break result;
            }
        };
        let answer = answer.map_err(|e| e.with_attempts(retrier.attempt()))?;
        if answer.url.origin() != self.base.origin() && answer.status == 401 {
            return Err(Error::Auth(format!(
                "{} redirected /v2/ to {} which asks for authentication; docker-idpb sends credentials only to \
                 the registry itself",
                self.host,
                answer.url.origin()
            )));
        }
        match answer.status {
            200..=299 => Ok(()),
            401 => {
                if self.auth.learn(&answer.headers).0 && !self.auth.is_anonymous_scheme() {
                    Ok(())
                } else {
                    Err(Error::Auth(format!(
                        "{} asks for an authentication scheme docker-idpb does not support",
                        self.host
                    )))
                }
            }
            404 => Err(Error::protocol(format!(
                "{} does not serve the registry API at /v2/ (is this a registry address?)",
                self.host
            ))),
            _ => {
                let req = Request::new("GET", "/v2/", "contacting the registry");
                Err(self.status_error(&req, &Response::from_answer(answer, retrier.attempt())))
            }
        }
    }

    /// How messages name the server `url` points at: the registry's name, or another origin's host:port.
    fn label(&self, url: &Url) -> String {
        if url.origin() == self.base.origin() {
            self.host.clone()
        } else {
            format!("{}:{}", url.origin().host, url.origin().port)
        }
    }

    /// Resolves a `Location` or path against the registry; an unusable one is a protocol error.
    pub fn resolve(&self, location: &str) -> Result<Url> {
        self.base.join(location).map_err(|e| {
            Error::protocol(format!(
                "{} sent a Location docker-idpb cannot follow ({e}): {:?}",
                self.host,
                one_line(location)
            ))
        })
    }

    /// Sends a request through the stack: authorize, exchange, answer a 401 once, retry what is transient.
    /// Returns any HTTP answer except 401s it could not get past; the caller decides what the status means.
    pub fn send(&mut self, req: &Request<'_>) -> Result<Response> {
        let url = self.resolve(&req.url)?;
        let mut retrier = Retrier::start(&self.retry, &SystemClock, req.within);
        let mut scopes = req.access.scopes();
        let mut refreshed = false;
        let notices = self.notices.clone();
        let mut announce_line = |l: &str| notices.line(l);
        loop {
            self.exchange.cancel().check()?;
            let registry_url = self.auth.is_registry(&url);
            let auth = if registry_url {
                let mut ctx = TokenContext {
                    exchange: &self.exchange,
                    policy: &self.retry,
                    deadline: retrier.deadline(),
                    announce: &mut announce_line,
                };
                self.auth.header(&scopes, false, &mut ctx)?
            } else {
                None
            };
            let deadline = retrier.deadline().min(Instant::now() + self.request_timeout);
            let result = self.exchange_once(req, &url, req.exchange_body(), deadline, auth.clone());
            match result {
                // A 401 from anywhere but the registry itself (a redirect's target) teaches nothing: its
                // challenge could name a realm that collects the user's password.
                Ok(a) if a.status == 401 && a.url.origin() != self.base.origin() => {
                    return Ok(Response::from_answer(a, retrier.attempt()));
                }
                Ok(a) if a.status == 401 && !refreshed && registry_url => {
                    // First refusal: learn the challenge (and its scope) and authenticate afresh, once.
                    refreshed = true;
                    let sent_basic = auth.as_deref().is_some_and(|h| h.starts_with("Basic "));
                    let (understood, extra) = self.auth.learn(&a.headers);
                    if !understood || !self.auth.can_answer(sent_basic) {
                        return Err(self.auth.refused(&req.access.purpose(), &registry_error_detail(&a.body)));
                    }
                    for s in extra {
                        if !scopes.contains(&s) {
                            scopes.push(s);
                        }
                    }
                    let mut ctx = TokenContext {
                        exchange: &self.exchange,
                        policy: &self.retry,
                        deadline: retrier.deadline(),
                        announce: &mut announce_line,
                    };
                    self.auth.header(&scopes, true, &mut ctx)?;
                }
                Ok(a) if a.status == 401 => {
                    return Err(self.auth.refused(&req.access.purpose(), &registry_error_detail(&a.body)));
                }
                Ok(a) if transient_status(a.status) && req.retry == RetryMode::Policy => {
                    let reason = format!("{} answered {} to {}", self.host, a.status, req.what);
                    if !retrier.again(&reason, retry_after(&a.headers), self.exchange.cancel(), &mut announce_line)? {
                        return Ok(Response::from_answer(a, retrier.attempt()));
                    }
                }
                Ok(a) => return Ok(Response::from_answer(a, retrier.attempt())),
                Err(e) if e.is_transient() && req.retry == RetryMode::Policy => {
                    if !retrier.again(&e.to_string(), None, self.exchange.cancel(), &mut announce_line)? {
                        return Err(e.with_attempts(retrier.attempt()));
                    }
                }
                Err(e) => return Err(e.with_attempts(retrier.attempt())),
            }
        }
    }

    /// One request whose body streams from elsewhere (`body`, `len` bytes), tried once: its producer is
    /// what must run again to retry it. Goes through the same exchange (deadline, Ctrl-C) and auth layer.
    pub fn send_streamed(
        &mut self,
        req: &Request<'_>,
        body: conduit::Reader,
        closer: conduit::Closer,
        len: u64,
    ) -> Result<Response> {
        let url = self.resolve(&req.url)?;
        let notices = self.notices.clone();
        let mut announce_line = |l: &str| notices.line(l);
        let own = Instant::now() + self.retry.budget.min(self.request_timeout);
        let deadline = req.within.map_or(own, |w| w.min(own));
        let auth = if self.auth.is_registry(&url) {
            let mut ctx =
                TokenContext { exchange: &self.exchange, policy: &self.retry, deadline, announce: &mut announce_line };
            self.auth.header(&req.access.scopes(), false, &mut ctx)?
        } else {
            None
        };
        let answer = self.exchange_once(req, &url, Body::Stream(body, closer, len), deadline, auth)?;
        if answer.status == 401 {
            return Err(self.auth.refused(&req.access.purpose(), &registry_error_detail(&answer.body)));
        }
        Ok(Response::from_answer(answer, 1))
    }

    /// One exchange of `req` to `url` with `body`: every hop (redirects included) gets `auth` only if it is
    /// the registry's origin; a failure names the server the request actually went to.
    fn exchange_once(
        &self,
        req: &Request<'_>,
        url: &Url,
        body: Body,
        deadline: Instant,
        auth: Option<String>,
    ) -> Result<Answer> {
        let call = Call {
            method: req.method,
            url: url.clone(),
            headers: req.headers.clone(),
            body,
            limit: req.limit,
            stream: req.stream && !matches!(req.method, "HEAD"),
            cancellable: true,
        };
        let authz = &self.auth;
        let mut authorize = |u: &Url| auth.clone().filter(|_| authz.is_registry(u));
        let label = self.label(url);
        self.exchange
            .run(call, deadline, &mut authorize)
            .map_err(|f| failure_error(&label, req.what, req.method, url.path(), f))
    }

    /// One DELETE of an upload session, even when cancelled, waiting at most 2 s; errors ignored by callers.
    pub fn delete_session(&mut self, location: &str, repo: &str) -> Result<()> {
        let url = self.resolve(location)?;
        let auth = if self.auth.is_registry(&url) {
            let mut announce_line = |_: &str| {};
            let mut ctx = TokenContext {
                exchange: &self.exchange,
                policy: &self.retry,
                deadline: Instant::now() + Duration::from_secs(2),
                announce: &mut announce_line,
            };
            self.auth.header(&Access::Push(repo.to_string()).scopes(), false, &mut ctx).ok().flatten()
        } else {
            None
        };
        let call = Call {
            method: "DELETE",
            url,
            headers: Vec::new(),
            body: Body::Empty,
            limit: ANSWER_LIMIT,
            stream: false,
            cancellable: false,
        };
        let authz = &self.auth;
        let mut authorize = |u: &Url| auth.clone().filter(|_| authz.is_registry(u));
        self.exchange
            .run(call, Instant::now() + Duration::from_secs(2), &mut authorize)
            .map(|_| ())
            .map_err(|f| failure_error(&self.host, "cancel blob upload", "DELETE", "", f))
    }

    /// The error for a response the caller cannot use: operation, status, registry's code and message.
    pub fn status_error(&self, req: &Request<'_>, resp: &Response) -> Error {
        let detail = resp.error_detail();
        let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
        let target = match &req.access {
            Access::Pull(r) | Access::Push(r) | Access::Mount { repo: r, .. } => format!("{}/{r}", self.host),
            _ => self.host.clone(),
        };
        let path = self.resolve(&req.url).map(|u| u.path().to_string()).unwrap_or_default();
        let message = format!("{} ({} {path}) at {target} failed with {}{detail}", req.what, req.method, resp.status);
        Error::registry(RegistryErrorKind::Status { status: resp.status, codes: error_codes(&resp.body) }, message)
            .with_attempts(resp.attempts)
    }
}

fn is_dns(e: &Error) -> bool {
    matches!(e, Error::Registry(r) if r.kind == RegistryErrorKind::Transport(TransportKind::Dns))
}

/// A failed exchange as the error the user sees, with its kind: TLS failures are `Error::Tls` (with the
/// ways out), the rest registry transport or protocol errors naming the operation and host.
pub(crate) fn failure_error(host: &str, what: &str, method: &str, path: &str, failure: Failure) -> Error {
    let transport = |kind, message: String| Error::registry(RegistryErrorKind::Transport(kind), message);
    match failure {
        Failure::Cancelled => Error::Cancelled,
        Failure::TimedOut => {
            transport(TransportKind::Timeout, format!("{what} ({method} {path}) at {host} got no answer in time"))
        }
        Failure::Redirect(m) => Error::protocol(format!("{what} ({method} {path}) at {host}: {m}")),
        Failure::Read(e) => {
            let kind = match e.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => TransportKind::Timeout,
                _ => TransportKind::Reset,
            };
            transport(kind, format!("{what} reading the answer from {host}: {}", one_line(&e.to_string())))
        }
        Failure::Client(e) => client_error(host, what, e),
        // Described as the server that failed (its certificate, its name), saying who sent us there.
        Failure::Redirected { to, failure } => match failure_error(&to, what, method, path, *failure) {
            Error::Tls(m) => Error::Tls(format!("{m} ({host} redirected there)")),
            other => other,
        },
    }
}

fn client_error(host: &str, what: &str, e: ureq::Error) -> Error {
    // ureq reports handshake failures either directly or as an io::Error wrapping the rustls error.
    let rustls_err = match &e {
        ureq::Error::Rustls(r) => Some(r.clone()),
        ureq::Error::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned(),
        _ => None,
    };
    if let Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) = &rustls_err {
        return Error::registry(
            RegistryErrorKind::Transport(TransportKind::PlainHttp),
            format!(
                "{host} does not speak TLS on this port (it looks like plain HTTP); use --plain-http, or --insecure \
                 to allow falling back to HTTP"
            ),
        );
    }
    if let Some(err) = rustls_err {
        return Error::Tls(crate::tls::diagnose::describe(host, &err));
    }
    let transport = |kind, message: String| Error::registry(RegistryErrorKind::Transport(kind), message);
    match e {
        ureq::Error::Tls(m) => Error::Tls(format!("TLS with {host} failed: {m}")),
        ureq::Error::HostNotFound => {
            transport(TransportKind::Dns, format!("cannot resolve {host} (check the registry name and your DNS)"))
        }
        ureq::Error::ConnectionFailed => {
            transport(TransportKind::Refused, format!("cannot reach {host} (connection failed)"))
        }
        ureq::Error::Timeout(t) => transport(TransportKind::Timeout, format!("{what} at {host} timed out ({t})")),
        ureq::Error::Io(io) => {
            use std::io::ErrorKind as K;
            let kind = match io.kind() {
                K::ConnectionRefused => TransportKind::Refused,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => TransportKind::Reset,
                K::TimedOut | K::WouldBlock => TransportKind::Timeout,
                K::NotFound => TransportKind::Dns,
                _ => TransportKind::Other,
            };
            let why = one_line(&io.to_string());
            let why = why.split(" (os error").next().unwrap_or(&why).to_string();
            // std reports getaddrinfo's failures as an uncategorised error with this text.
            let kind = if why.contains("failed to lookup address") { TransportKind::Dns } else { kind };
            if kind == TransportKind::Dns {
                return transport(kind, format!("cannot resolve {host} (check the registry name and your DNS)"));
            }
            transport(kind, format!("cannot reach {host} ({})", why.to_ascii_lowercase()))
        }
        ureq::Error::BadUri(m) => Error::protocol(format!("{what}: invalid URL at {host}: {}", one_line(&m))),
        ureq::Error::ConnectProxyFailed(m) => {
            Error::protocol(format!("{what}: the proxy refused to connect to {host}: {}", one_line(&m)))
        }
        ureq::Error::InvalidProxyUrl => Error::usage(
            "the proxy variable (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY) is not a valid URL; fix or unset it",
        ),
        ureq::Error::Http(h) => Error::protocol(format!("{what}: invalid request to {host}: {h}")),
        ureq::Error::Protocol(p) => Error::protocol(format!("{what}: {host} broke HTTP: {p}")),
        ureq::Error::LargeResponseHeader(..) => Error::protocol(format!("{what}: {host} sent oversized headers")),
        other => transport(TransportKind::Other, format!("cannot reach {host} ({})", one_line(&other.to_string()))),
    }
}

/// The registry's `Retry-After`, in seconds (HTTP dates are not worth parsing here).
pub(crate) fn retry_after(headers: &[(String, String)]) -> Option<Duration> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests;
