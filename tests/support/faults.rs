//! A fault-injecting HTTP/1.1 reverse proxy between the binary under test and a real registry.
//!
//! [`FaultProxy`] listens on `127.0.0.1:0` and forwards each request to the registry on a fresh upstream
//! connection, answering the client with `Connection: close`, so one TCP connection is one request and a
//! fault never leaks into the next request. The `Host` header is forwarded unchanged: the reference
//! registry builds its absolute upload `Location`s from it, so they already point back at the proxy (a
//! `Location` naming the registry's own address is rewritten anyway). Faults come from [`Rule`]s ("the Nth
//! PATCH whose path contains `/blobs/uploads/`"), or from a random mode where a splitmix64 hash of the seed
//! and the request's arrival number picks the victims, so a run is reproducible from its seed as long as
//! the client sends the same requests. The kinds are what networks and registries do to a push: a status
//! (503 with `Retry-After`, a 4xx with a registry error body), a reset after K bytes of the body, a body cut
//! short on its way to the registry, a delayed answer, and an answer dropped after the registry acted on
//! the request, which is the case that kills a reference-registry upload session. [`GiteaOptions`] makes
//! the proxy behave like Gitea's registry on top of the real one: relative `Location`s, the strict
//! `Content-Range` rules (tracked per session from the registry's own `Range` answers) and, optionally,
//! Gitea's token endpoint. Everything is std and bounded: at most `max_connections` threads, bodies
//! streamed through a 64 KiB buffer, answers and chunked bodies buffered up to `max_body`, every socket
//! with a timeout. Each request is recorded (method, path, statuses, fault) as soon as its head is read,
//! so a test that waits for the client to exit sees all of them.

use super::http::basic_auth;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Longest request or response head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;
/// The piece size bodies are streamed in.
const PIECE: usize = 64 * 1024;

/// What the proxy does to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers this status itself after reading (and discarding) the request body; nothing reaches the
    /// registry.
    Status { status: u16, headers: Vec<(String, String)>, body: Option<String> },
    /// Reads `after` bytes of the request body, forwards nothing and closes the connection (with unread
    /// bytes pending, the kernel sends a TCP reset). `after: 0` on a bodiless request closes it unanswered.
    Reset { after: u64 },
    /// Forwards the head and the first `after` body bytes to the registry, then closes both connections:
    /// the registry sees a short body, the client no answer.
    Truncate { after: u64 },
    /// Forwards the request and holds the registry's answer this long before passing it on.
    Delay(Duration),
    /// Forwards the whole request, reads the registry's answer and closes the client's connection without
    /// it: the registry acted (stored a chunk, committed a blob, tagged a manifest), the client never
    /// learns it.
    DropResponse,
}

impl Fault {
    /// A bare status with no body.
    pub fn status(status: u16) -> Fault {
        Fault::Status { status, headers: Vec::new(), body: None }
    }

    /// A status with a registry error body `{"errors":[{"code","message"}]}`.
    pub fn error(status: u16, code: &str, message: &str) -> Fault {
        let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] }).to_string();
        Fault::Status {
            status,
            headers: vec![("Content-Type".to_string(), "application/json".to_string())],
            body: Some(body),
        }
    }

    /// Adds a header to a [`Fault::Status`] answer (e.g. `Retry-After`); other kinds are unchanged.
    pub fn with_header(mut self, name: &str, value: &str) -> Fault {
        if let Fault::Status { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }

    /// The short label recorded in [`ProxyRecord::fault`]: `503`, `reset@1000`, `truncate@1000`,
    /// `delay 300ms`, `drop response`.
    pub fn label(&self) -> String {
        match self {
            Fault::Status { status, .. } => status.to_string(),
            Fault::Reset { after } => format!("reset@{after}"),
            Fault::Truncate { after } => format!("truncate@{after}"),
            Fault::Delay(d) => format!("delay {d:?}"),
            Fault::DropResponse => "drop response".to_string(),
        }
    }
}

/// Which requests get a fault: those with `method` (`*`: any) whose path and query contain `path`,
/// counted from 1 in arrival order, from the `first`th on, `count` of them (`None`: all the rest).
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: String,
    pub path: String,
    pub first: usize,
    pub count: Option<usize>,
    pub fault: Fault,
}

impl Rule {
    /// Only the `n`th matching request (1-based).
    pub fn nth(method: &str, path: &str, n: usize, fault: Fault) -> Rule {
        Rule { method: method.to_string(), path: path.to_string(), first: n.max(1), count: Some(1), fault }
    }

    /// Every matching request.
    pub fn every(method: &str, path: &str, fault: Fault) -> Rule {
        Rule { method: method.to_string(), path: path.to_string(), first: 1, count: None, fault }
    }

    /// `k` matching requests from the `first`th on (`k` consecutive failures of one operation).
    pub fn times(mut self, k: usize) -> Rule {
        self.count = Some(k);
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        (self.method == "*" || self.method.eq_ignore_ascii_case(method)) && path.contains(&self.path)
    }

    fn in_range(&self, hit: usize) -> bool {
        hit >= self.first && self.count.is_none_or(|k| hit < self.first + k)
    }
}

/// Gitea's registry conventions, played by the proxy in front of the reference registry.
#[derive(Clone, Debug, Default)]
pub struct GiteaOptions {
    /// Gitea's auth: `/v2/` challenges with `Bearer realm="http://PROXY/v2/token",service=
    /// "container_registry",scope="*"`, `GET /v2/token` with these Basic credentials answers `{"token":..}`
    /// (and nothing else), Basic is also accepted on `/v2/` routes. `None`: no auth.
    pub token_auth: Option<(String, String)>,
}

/// How a [`FaultProxy`] behaves.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Seeds the random mode and the Gitea token.
    pub seed: u64,
    /// Tried in order; the first whose range includes the request wins. Every rule counts every request it
    /// matches, whether or not it wins.
    pub rules: Vec<Rule>,
    /// Percentage (0-100) of requests not hit by a rule that get a random fault: a 503, a reset at a random
    /// point of the body, or a dropped answer, in equal shares.
    pub random_percent: u32,
    pub gitea: Option<GiteaOptions>,
    /// Concurrent client connections; more are answered 503 at once (and recorded).
    pub max_connections: usize,
    /// Largest answer or chunked request body buffered; a bigger one gets 502 (answer) or 413 (request).
    pub max_body: usize,
    /// Read and write timeout of every socket.
    pub io_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            seed: 1,
            rules: Vec::new(),
            random_percent: 0,
            gitea: None,
            max_connections: 32,
            max_body: 16 * 1024 * 1024,
            io_timeout: Duration::from_secs(30),
        }
    }
}

impl ProxyOptions {
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// `percent`% random faults chosen by `seed`.
    pub fn random(mut self, percent: u32, seed: u64) -> Self {
        self.random_percent = percent.min(100);
        self.seed = seed;
        self
    }

    /// Gitea conventions without auth.
    pub fn gitea(mut self) -> Self {
        self.gitea = Some(GiteaOptions::default());
        self
    }

    /// Gitea conventions with its token endpoint, accepting `user:pass`.
    pub fn gitea_with_token(mut self, user: &str, pass: &str) -> Self {
        self.gitea = Some(GiteaOptions { token_auth: Some((user.to_string(), pass.to_string())) });
        self
    }
}

/// One request as the proxy saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRecord {
    /// Arrival order, from 0.
    pub index: usize,
    /// When the head arrived, since the proxy started.
    pub at: Duration,
    pub method: String,
    /// Path and query as requested.
    pub path: String,
    /// The body length the client announced (`Content-Length`, or the decoded length of a chunked body).
    pub body_len: u64,
    /// What the registry answered, when the request reached it and it answered.
    pub upstream_status: Option<u16>,
    /// What the client was sent; `None` when its connection was closed without an answer.
    pub status: Option<u16>,
    /// The injected fault's [`Fault::label`].
    pub fault: Option<String>,
    /// Why the Gitea conventions refused the request (an answer Gitea itself would give, not a fault).
    pub gitea_rejection: Option<String>,
}

impl fmt::Display for ProxyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = |s: Option<u16>| s.map_or("-".to_string(), |s| s.to_string());
        let path: String = self.path.chars().take(100).collect();
        write!(
            f,
            "#{} {:>6.2}s {} {path} ({} bytes) registry {} -> client {}",
            self.index,
            self.at.as_secs_f64(),
            self.method,
            self.body_len,
            status(self.upstream_status),
            status(self.status)
        )?;
        if let Some(fault) = &self.fault {
            write!(f, " [fault: {fault}]")?;
        }
        if let Some(why) = &self.gitea_rejection {
            write!(f, " [gitea: {why}]")?;
        }
        Ok(())
    }
}

/// A running proxy; stopped on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    /// `127.0.0.1:PORT` of the proxy itself.
    authority: String,
    options: ProxyOptions,
    started: Instant,
    active: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    records: Vec<ProxyRecord>,
    rule_hits: Vec<usize>,
    /// Gitea mode: upload sessions by UUID.
    sessions: HashMap<String, Session>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Session {
    /// Bytes the registry said it holds.
    received: u64,
    /// Acknowledged PATCHes.
    writes: u32,
}

impl FaultProxy {
    /// Starts a proxy to the plain-HTTP registry on `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16, options: ProxyOptions) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind the fault proxy: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("fault proxy has no address: {e}"));
        let state = State { rule_hits: vec![0; options.rules.len()], ..State::default() };
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            authority: addr.to_string(),
            options,
            started: Instant::now(),
            active: AtomicUsize::new(0),
            state: Mutex::new(state),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            thread::spawn(move || accept_loop(&listener, &shared, &stop))
        };
        FaultProxy { addr, shared, stop, acceptor: Some(acceptor) }
    }

    /// `127.0.0.1:PORT`, the registry part of references pushed through the proxy.
    pub fn host(&self) -> String {
        self.shared.authority.clone()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.shared.authority)
    }

    /// `127.0.0.1:PORT/REPO[:TAG]`.
    pub fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}", self.shared.authority)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ProxyRecord> {
        self.shared.lock().records.clone()
    }

    /// Requests with this method (`*`: any) whose path contains `path_part`.
    pub fn count(&self, method: &str, path_part: &str) -> usize {
        self.matching(method, path_part).len()
    }

    pub fn matching(&self, method: &str, path_part: &str) -> Vec<ProxyRecord> {
        let any = method == "*";
        self.requests().into_iter().filter(|r| (any || r.method == method) && r.path.contains(path_part)).collect()
    }

    /// The requests that got a fault.
    pub fn faults(&self) -> Vec<ProxyRecord> {
        self.requests().into_iter().filter(|r| r.fault.is_some()).collect()
    }

    /// The requests the Gitea conventions refused.
    pub fn gitea_rejections(&self) -> Vec<ProxyRecord> {
        self.requests().into_iter().filter(|r| r.gitea_rejection.is_some()).collect()
    }

    /// One line per request, for assertion messages.
    pub fn log(&self) -> String {
        self.requests().iter().map(|r| format!("{r}\n")).collect()
    }

    /// Polls until `count(method, path_part) >= n`; false after `timeout`.
    pub fn wait_for(&self, method: &str, path_part: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.count(method, path_part) < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(shared.options.io_timeout));
        let _ = stream.set_write_timeout(Some(shared.options.io_timeout));
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.options.max_connections {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            refuse_over_limit(shared, stream);
            continue;
        }
        let shared = Arc::clone(shared);
        thread::spawn(move || {
            handle(&shared, stream);
            shared.active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn refuse_over_limit(shared: &Shared, mut stream: TcpStream) {
    let mut state = shared.lock();
    let index = state.records.len();
    state.records.push(ProxyRecord {
        index,
        at: shared.started.elapsed(),
        method: "?".to_string(),
        path: "?".to_string(),
        body_len: 0,
        upstream_status: None,
        status: Some(503),
        fault: Some("connection limit".to_string()),
        gitea_rejection: None,
    });
    drop(state);
    let _ = Answer::text(503, "fault proxy: too many connections").write_to(&mut stream, false);
}

/// A parsed request head.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn parse(lines: &[String]) -> Option<Head> {
        let mut words = lines.first()?.split_whitespace();
        let (method, target, version) = (words.next()?, words.next()?, words.next()?);
        if !version.starts_with("HTTP/1.") {
            return None;
        }
        let headers = lines[1..]
            .iter()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        Some(Head { method: method.to_string(), target: target.to_string(), headers })
    }
}

/// An answer to send to the client.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn new(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> Answer {
        Answer { status, reason: reason(status).to_string(), headers, body }
    }

    fn text(status: u16, text: &str) -> Answer {
        Answer::new(status, vec![("Content-Type".into(), "text/plain; charset=utf-8".into())], text.as_bytes().into())
    }

    fn registry_error(status: u16, code: &str, message: &str) -> Answer {
        let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] }).to_string();
        Answer::new(status, vec![("Content-Type".into(), "application/json".into())], body.into_bytes())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Status line, end-to-end headers, our own framing (`Connection: close`), body. A HEAD answer keeps
    /// the registry's `Content-Length` and has no body.
    fn write_to(&self, out: &mut TcpStream, head_request: bool) -> io::Result<()> {
        let mut text = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (name, value) in &self.headers {
            let framing = is_hop_by_hop(name) || name.eq_ignore_ascii_case("content-length");
            if !framing || head_request && name.eq_ignore_ascii_case("content-length") {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        if !head_request {
            text.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        text.push_str("Connection: close\r\n\r\n");
        out.write_all(text.as_bytes())?;
        if !head_request {
            out.write_all(&self.body)?;
        }
        out.flush()
    }
}

/// How the request's body is framed.
enum Body {
    /// `Content-Length` bytes still on the client socket (`None`: no body at all).
    Stream(Option<u64>),
    /// A chunked body, decoded.
    Buffered(Vec<u8>),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Stream(n) => n.unwrap_or(0),
            Body::Buffered(b) => b.len() as u64,
        }
    }

    fn framed(&self) -> bool {
        !matches!(self, Body::Stream(None))
    }
}

/// What to do with a request, decided under the lock from the rules, the random mode and Gitea's rules.
#[derive(Debug)]
struct Plan {
    action: Action,
    delay: Option<Duration>,
    drop_response: bool,
    fault: Option<String>,
}

#[derive(Debug)]
enum Action {
    /// Answer without the registry.
    Local(Answer),
    Reset(u64),
    /// Forward, all of the body or only its first bytes.
    Forward {
        truncate: Option<u64>,
        strip_auth: bool,
    },
}

fn handle(shared: &Shared, client: TcpStream) {
    let Ok(read_half) = client.try_clone() else { return };
    let mut reader = BufReader::with_capacity(PIECE, read_half);
    let mut out = client;
    let lines = match read_head(&mut reader) {
        Ok(Some(lines)) => lines,
        Ok(None) => return,
        Err(_) => {
            let _ = Answer::text(400, "fault proxy: unreadable request head").write_to(&mut out, false);
            return;
        }
    };
    let Some(head) = Head::parse(&lines) else {
        let _ = Answer::text(400, "fault proxy: not an HTTP/1.1 request").write_to(&mut out, false);
        return;
    };
    let head_request = head.method == "HEAD";
    if head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        let _ = out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let body = if head.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        match read_chunked(&mut reader, shared.options.max_body) {
            Ok(bytes) => Body::Buffered(bytes),
            Err(e) => {
                let index = shared.record(&head, 0);
                let answer = Answer::text(413, &format!("fault proxy: chunked body refused: {e}"));
                shared.update(index, |r| r.status = Some(413));
                let _ = answer.write_to(&mut out, head_request);
                return;
            }
        }
    } else {
        Body::Stream(head.header("content-length").and_then(|v| v.trim().parse().ok()))
    };

    let index = shared.record(&head, body.len());
    let plan = shared.plan(index, &head, body.len());
    if plan.fault.is_some() {
        shared.update(index, |r| r.fault.clone_from(&plan.fault));
    }
    let mut source: Box<dyn Read + '_> = match &body {
        Body::Stream(n) => Box::new((&mut reader).take(n.unwrap_or(0))),
        Body::Buffered(bytes) => Box::new(&bytes[..]),
    };

    let answer = match plan.action {
        Action::Reset(after) => {
            let _ = io::copy(&mut (&mut source).take(after), &mut io::sink());
            // Dropping the socket with unread bytes queued makes the kernel send a reset.
            return;
        }
        Action::Local(answer) => {
            let _ = io::copy(&mut source, &mut io::sink());
            answer
        }
        Action::Forward { truncate, strip_auth } => {
            match forward(shared, &head, &body, &mut source, truncate, strip_auth) {
                Ok(Some(answer)) => {
                    shared.update(index, |r| r.upstream_status = Some(answer.status));
                    shared.after_upstream(&head, body.len(), &answer);
                    answer
                }
                // Truncated on purpose: the client gets no answer.
                Ok(None) => return,
                Err(e) => Answer::text(502, &format!("fault proxy: registry at {} failed: {e}", shared.upstream)),
            }
        }
    };
    drop(source);
    let answer = shared.rewrite_location(answer);
    if let Some(delay) = plan.delay {
        thread::sleep(delay);
    }
    if plan.drop_response {
        let _ = out.shutdown(Shutdown::Both);
        return;
    }
    shared.update(index, |r| r.status = Some(answer.status));
    let _ = answer.write_to(&mut out, head_request);
    let _ = out.shutdown(Shutdown::Write);
}

/// Sends the request to the registry and reads its answer; `Ok(None)` when the body was cut on purpose.
fn forward(
    shared: &Shared,
    head: &Head,
    body: &Body,
    source: &mut dyn Read,
    truncate: Option<u64>,
    strip_auth: bool,
) -> io::Result<Option<Answer>> {
    let timeout = shared.options.io_timeout;
    let mut upstream = TcpStream::connect_timeout(&shared.upstream, timeout)?;
    upstream.set_read_timeout(Some(timeout))?;
    upstream.set_write_timeout(Some(timeout))?;
    let mut text = format!("{} {} HTTP/1.1\r\n", head.method, head.target);
    for (name, value) in &head.headers {
        let dropped = is_hop_by_hop(name)
            || ["content-length", "expect"].iter().any(|h| name.eq_ignore_ascii_case(h))
            || strip_auth && name.eq_ignore_ascii_case("authorization");
        if !dropped {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if body.framed() {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("Connection: close\r\n\r\n");
    upstream.write_all(text.as_bytes())?;
    match truncate {
        Some(after) => {
            io::copy(&mut source.take(after), &mut upstream)?;
            upstream.flush()?;
            let _ = upstream.shutdown(Shutdown::Both);
            return Ok(None);
        }
        None => {
            io::copy(source, &mut upstream)?;
        }
    }
    upstream.flush()?;
    read_answer(&mut BufReader::new(upstream), head.method == "HEAD", shared.options.max_body).map(Some)
}

fn read_answer(reader: &mut impl BufRead, head_request: bool, max_body: usize) -> io::Result<Answer> {
    loop {
        let lines = read_head(reader)?.ok_or_else(|| io::Error::other("the registry closed without answering"))?;
        let status_line = &lines[0];
        let mut words = status_line.splitn(3, ' ');
        let _version = words.next();
        let status: u16 = words
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let reason_phrase = words.next().unwrap_or_else(|| reason(status)).to_string();
        let headers: Vec<(String, String)> = lines[1..]
            .iter()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        if (100..200).contains(&status) {
            continue;
        }
        let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let body = if head_request || status == 204 || status == 304 {
            Vec::new()
        } else if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            read_chunked(reader, max_body)?
        } else if let Some(length) = header("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
            if length > max_body {
                return Err(io::Error::other(format!("answer of {length} bytes is over the proxy's limit")));
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            body
        } else {
            let mut body = Vec::new();
            reader.take(max_body as u64 + 1).read_to_end(&mut body)?;
            if body.len() > max_body {
                return Err(io::Error::other("answer over the proxy's limit"));
            }
            body
        };
        return Ok(Answer { status, reason: reason_phrase, headers, body });
    }
}

/// Header lines up to the blank line; `None` on a clean end of stream before any byte.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = reader.by_ref().take((MAX_HEAD - total) as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            if lines.is_empty() && total == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        total += n;
        if total > MAX_HEAD {
            return Err(io::Error::other("head too large"));
        }
        let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string();
        if text.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return Ok(Some(lines));
        }
        lines.push(text);
    }
}

fn read_chunked(reader: &mut impl BufRead, max_body: usize) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.by_ref().take(1024).read_line(&mut line)?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|e| io::Error::other(format!("bad chunk size {size_hex:?}: {e}")))?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                line.clear();
                if reader.by_ref().take(MAX_HEAD as u64).read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > max_body {
            return Err(io::Error::other(format!("chunked body over {max_body} bytes")));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// The UUID segment of an upload URL (`/v2/NAME/blobs/uploads/UUID?...`), if any.
fn session_id(path: &str) -> Option<String> {
    let rest = path.split_once("/blobs/uploads/")?.1;
    let id = rest.split(['?', '/']).next().unwrap_or_default();
    (!id.is_empty()).then(|| id.to_string())
}

/// `Range: 0-N` -> N.
fn range_end(value: &str) -> Option<u64> {
    let value = value.trim();
    value.strip_prefix("bytes=").unwrap_or(value).split_once('-')?.1.trim().parse().ok()
}

/// splitmix64: a well-mixed 64-bit hash of `x`.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, head: &Head, body_len: u64) -> usize {
        let mut state = self.lock();
        let index = state.records.len();
        state.records.push(ProxyRecord {
            index,
            at: self.started.elapsed(),
            method: head.method.clone(),
            path: head.target.clone(),
            body_len,
            upstream_status: None,
            status: None,
            fault: None,
            gitea_rejection: None,
        });
        index
    }

    fn update(&self, index: usize, change: impl FnOnce(&mut ProxyRecord)) {
        if let Some(record) = self.lock().records.get_mut(index) {
            change(record);
        }
    }

    /// Network faults first (rules, then the random mode); a request that would reach the registry then
    /// meets the Gitea conventions.
    fn plan(&self, index: usize, head: &Head, body_len: u64) -> Plan {
        let mut state = self.lock();
        let mut fault = None;
        for (i, rule) in self.options.rules.iter().enumerate() {
            if rule.matches(&head.method, &head.target) {
                state.rule_hits[i] += 1;
                if fault.is_none() && rule.in_range(state.rule_hits[i]) {
                    fault = Some(rule.fault.clone());
                }
            }
        }
        if fault.is_none() && self.options.random_percent > 0 {
            fault = self.random_fault(index, body_len);
        }
        let strip_auth = self.options.gitea.as_ref().is_some_and(|g| g.token_auth.is_some());
        let mut plan = Plan {
            action: Action::Forward { truncate: None, strip_auth },
            delay: None,
            drop_response: false,
            fault: fault.as_ref().map(Fault::label),
        };
        match fault {
            Some(Fault::Status { status, headers, body }) => {
                plan.action = Action::Local(Answer::new(status, headers, body.unwrap_or_default().into_bytes()));
            }
            Some(Fault::Reset { after }) => plan.action = Action::Reset(after),
            Some(Fault::Truncate { after }) => plan.action = Action::Forward { truncate: Some(after), strip_auth },
            Some(Fault::Delay(d)) => plan.delay = Some(d),
            Some(Fault::DropResponse) => plan.drop_response = true,
            None => {}
        }
        if matches!(plan.action, Action::Forward { truncate: None, .. })
            && let Some(gitea) = &self.options.gitea
            && let Some((answer, why)) = self.gitea_answer(&mut state, gitea, head)
        {
            if let (Some(why), Some(record)) = (why, state.records.get_mut(index)) {
                record.gitea_rejection = Some(why);
            }
            plan.action = Action::Local(answer);
        }
        plan
    }

    fn random_fault(&self, index: usize, body_len: u64) -> Option<Fault> {
        let r = splitmix64(self.options.seed ^ splitmix64(index as u64));
        if r % 100 >= u64::from(self.options.random_percent) {
            return None;
        }
        Some(match (r >> 8) % 3 {
            0 => Fault::error(503, "UNAVAILABLE", "injected by the fault proxy").with_header("Retry-After", "0"),
            1 => Fault::Reset { after: (r >> 16) % (body_len + 1) },
            _ => Fault::DropResponse,
        })
    }

    /// What Gitea would answer itself: its token endpoint, its auth challenge, and its `Content-Range`
    /// rules. The second value is set for refusals of a request the client should not have sent.
    fn gitea_answer(&self, state: &mut State, gitea: &GiteaOptions, head: &Head) -> Option<(Answer, Option<String>)> {
        let path = head.target.split('?').next().unwrap_or_default();
        if let Some((user, pass)) = &gitea.token_auth {
            let token = format!("gitea-{:016x}", splitmix64(self.options.seed));
            let basic = basic_auth(user, pass);
            let auth = head.header("authorization");
            if path == "/v2/token" {
                return Some((self.gitea_token(head, auth, &basic, &token), None));
            }
            let authorized = auth.is_some_and(|a| a == basic || a == format!("Bearer {token}"));
            if !authorized {
                let realm = format!("http://{}/v2/token", self.authority);
                let challenge = format!("Bearer realm=\"{realm}\",service=\"container_registry\",scope=\"*\"");
                let mut answer = Answer::registry_error(401, "UNAUTHORIZED", "");
                answer.headers.push(("WWW-Authenticate".into(), challenge));
                return Some((answer, None));
            }
        }
        if head.method != "PATCH" {
            return None;
        }
        let session = session_id(&head.target).map(|id| state.sessions.get(&id).copied().unwrap_or_default())?;
        let refuse = |status: u16, why: &str| {
            Some((Answer::registry_error(status, "BLOB_UPLOAD_INVALID", why), Some(format!("{status} {why}"))))
        };
        match head.header("content-range") {
            None if session.writes > 0 || session.received > 0 => {
                refuse(400, "Stream uploads after first write are not allowed")
            }
            None => None,
            Some(range) if range.trim().starts_with("bytes") => refuse(400, "Content-Range with bytes= prefix"),
            Some(range) => match range.trim().split_once('-').and_then(|(s, _)| s.trim().parse::<u64>().ok()) {
                None => refuse(400, "unparsable Content-Range"),
                Some(start) if start != session.received => {
                    refuse(416, &format!("Content-Range starts at {start}, the session has {}", session.received))
                }
                Some(_) => None,
            },
        }
    }

    /// Gitea's `/v2/token`: GET only, `{"token": ...}` and nothing else; anonymous callers get a token too.
    fn gitea_token(&self, head: &Head, auth: Option<&str>, basic: &str, token: &str) -> Answer {
        if head.method != "GET" {
            return Answer::text(404, "404 page not found");
        }
        let json = |token: &str| {
            let body = serde_json::json!({ "token": token }).to_string().into_bytes();
            Answer::new(200, vec![("Content-Type".into(), "application/json".into())], body)
        };
        match auth {
            None => json("anonymous"),
            Some(a) if a == basic => json(token),
            Some(_) => {
                let mut answer = Answer::text(401, "Unauthorized");
                answer.headers.push(("WWW-Authenticate".into(), "Basic realm=\"Gitea\"".into()));
                answer
            }
        }
    }

    /// Gitea mode: learns each upload session's size from the registry's answers.
    fn after_upstream(&self, head: &Head, body_len: u64, answer: &Answer) {
        if self.options.gitea.is_none() || !(200..300).contains(&answer.status) {
            return;
        }
        let mut state = self.lock();
        let range = answer.header("range").and_then(range_end);
        match head.method.as_str() {
            "POST" => {
                if let Some(id) = answer.header("location").and_then(session_id) {
                    state.sessions.insert(id, Session::default());
                }
            }
            "PATCH" => {
                if let Some(id) = session_id(&head.target) {
                    let session = state.sessions.entry(id).or_default();
                    session.writes += 1;
                    if let Some(end) = range.filter(|_| body_len > 0) {
                        session.received = end + 1;
                    }
                }
            }
            "GET" => {
                if let (Some(id), Some(end)) = (session_id(&head.target), range) {
                    let session = state.sessions.entry(id).or_default();
                    // "0-0" means empty or one byte; only the registry's answers to PATCHes tell which.
                    if end > 0 || session.received > 1 {
                        session.received = if end > 0 { end + 1 } else { 0 };
                    }
                }
            }
            "PUT" | "DELETE" => {
                if let Some(id) = session_id(&head.target) {
                    state.sessions.remove(&id);
                }
            }
            _ => {}
        }
    }

    /// Points `Location` back at the proxy: relative in Gitea mode, else any URL naming the registry's own
    /// address gets the proxy's (the registry normally builds it from the forwarded `Host` already).
    fn rewrite_location(&self, mut answer: Answer) -> Answer {
        let upstream = format!("http://{}", self.upstream);
        for (name, value) in &mut answer.headers {
            if !name.eq_ignore_ascii_case("location") {
                continue;
            }
            if self.options.gitea.is_some() {
                if let Some(rest) = value.strip_prefix("http://").or_else(|| value.strip_prefix("https://")) {
                    *value = rest.find('/').map_or("/".to_string(), |i| rest[i..].to_string());
                }
            } else if let Some(rest) = value.strip_prefix(&upstream) {
                *value = format!("http://{}{rest}", self.authority);
            }
        }
        answer
    }
}
