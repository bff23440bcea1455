//! One HTTP exchange: the layer every registry request goes through, streamed uploads included.
//!
//! The request runs on a worker thread while the caller waits on a channel, so the caller can stop
//! waiting: at the deadline, or on cancellation (after a short grace, so that an answer already on its
//! way, carrying an upload's newest `Location`, can still arrive). An abandoned worker is left to finish on
//! its own; a streamed request body is closed so its producer is not left blocked. Redirects are followed
//! here, by hand, up to five hops, so that each hop's `Authorization` is decided afresh by the caller's
//! `authorize` for that hop's URL: the auth layer's origin rule applies to every URL a request visits.
//! Response bodies are read up to a limit chosen per request (4 MiB for a manifest, far less for an error
//! or a token); beyond it the body is cut and marked `truncated`, so a hostile registry cannot make us
//! buffer without end. A body can instead be streamed ([`Answer::stream`]) through a bounded conduit.

use std::io::Read;
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use ureq::Agent;
use ureq::http;

use super::conduit::{self, Closer};
use super::url::Url;
use crate::signal::Cancel;

/// How long a cancelled exchange still waits for the answer in flight.
pub const CANCEL_GRACE: Duration = Duration::from_millis(500);
/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// Block size and buffer of a streamed response body.
const STREAM_BLOCK: usize = 256 * 1024;
/// A streamed body is read ahead up to one default upload chunk, so a copy downloads the next chunk while
/// the previous one is being uploaded.
const STREAM_BUFFER: usize = 8 * 1024 * 1024;

/// What a request sends.
pub enum Body {
    Empty,
    /// Bytes shared with the caller (an upload chunk, a manifest): resendable after a redirect or retry.
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
    /// Bytes produced elsewhere while the request runs, `len` of them; sent once.
    Stream(conduit::Reader, Closer, u64),
}

impl Body {
    pub fn bytes(b: &[u8]) -> Body {
        if b.is_empty() {
            return Body::Empty;
        }
        let len = b.len();
        Body::Shared(Arc::new(b.to_vec()), 0..len)
    }
}

/// One request as the exchange sends it.
pub struct Call {
    pub method: &'static str,
    pub url: Url,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
    /// The most body bytes kept from the answer.
    pub limit: usize,
    /// Stream a successful (2xx) answer's body instead of reading it.
    pub stream: bool,
    /// Whether cancellation stops the wait (false for the clean-up DELETE of an upload session).
    pub cancellable: bool,
}

/// An answer.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body, up to the call's limit.
    pub body: Vec<u8>,
    /// The body was longer than the limit and was cut.
    pub truncated: bool,
    /// The body, when the call asked for a stream and the status was 2xx.
    pub stream: Option<conduit::Reader>,
    /// The URL that gave this answer (after redirects).
    pub url: Url,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why an exchange gave no answer.
#[derive(Debug)]
pub enum Failure {
    /// The HTTP client's own error (DNS, connect, TLS, I/O).
    Client(ureq::Error),
    /// Reading the answer's body failed.
    Read(std::io::Error),
    /// No answer before the deadline.
    TimedOut,
    Cancelled,
    /// A redirect that cannot be followed (bad Location, too many hops, a streamed body, HTTPS to HTTP).
    Redirect(String),
    /// A hop after a redirect failed: `to` (`host:port`) is the server that failed, not the registry.
    Redirected {
        to: String,
        failure: Box<Failure>,
    },
}

/// The exchange layer: HTTP agents (TLS, proxy, timeouts) and the run's cancellation. Loopback traffic
/// never goes through `HTTP(S)_PROXY` (as Go and Docker decide): a loopback registry may get credentials
/// over plain HTTP, which must not then travel to a proxy.
#[derive(Clone)]
pub struct Exchange {
    proxied: Agent,
    direct: Agent,
    /// The registry's host when it is loopback by resolved address (not recognisable by its name).
    loopback_host: Option<String>,
    cancel: Cancel,
    /// How long a streamed body may stay silent.
    idle: Duration,
}

impl Exchange {
    /// `proxied` honours the proxy variables, `direct` does not.
    pub fn new(
        proxied: Agent,
        direct: Agent,
        loopback_host: Option<String>,
        cancel: Cancel,
        idle: Duration,
    ) -> Exchange {
        Exchange { proxied, direct, loopback_host, cancel, idle }
    }

    fn agent_for(&self, url: &Url) -> Agent {
        let origin = url.origin();
        if origin.is_loopback() || self.loopback_host.as_deref() == Some(origin.host.as_str()) {
            self.direct.clone()
        } else {
            self.proxied.clone()
        }
    }

    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// Runs `call`, following redirects, until `deadline`. `authorize` gives the Authorization header
    /// for each URL visited (or none).
    pub fn run(
        &self,
        call: Call,
        deadline: Instant,
        authorize: &mut dyn FnMut(&Url) -> Option<String>,
    ) -> Result<Answer, Failure> {
        let Call { mut method, mut url, headers, mut body, limit, stream, cancellable } = call;
        let mut hops = 0;
        loop {
            let auth = authorize(&url);
            let hop = Call { method, url, headers: headers.clone(), body, limit, stream, cancellable };
            let hop_origin = hop.url.origin().clone();
            let (answer, sent) = self.once(hop, deadline, auth).map_err(|failure| match failure {
                Failure::Client(_) | Failure::Read(_) if hops > 0 => Failure::Redirected {
                    to: format!("{}:{}", hop_origin.host, hop_origin.port),
                    failure: Box::new(failure),
                },
                other => other,
            })?;
            if !matches!(answer.status, 301 | 302 | 303 | 307 | 308) {
                return Ok(answer);
            }
            // A streamed body went out and cannot be sent again: the redirect is the answer.
            let Some(sent) = sent else { return Ok(answer) };
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(Failure::Redirect(format!("more than {MAX_REDIRECTS} redirects")));
            }
            let location = answer
                .header("location")
                .ok_or_else(|| Failure::Redirect(format!("a {} redirect without a Location header", answer.status)))?;
            url = answer
                .url
                .join(location)
                .map_err(|e| Failure::Redirect(format!("a redirect to an invalid Location ({e})")))?;
            // TLS is never given up on the way: what the registry said over HTTPS is not fetched in clear.
            if answer.url.is_https() && !url.is_https() {
                return Err(Failure::Redirect(format!(
                    "a redirect from HTTPS to plain HTTP ({}:{}), refused: it would drop the TLS the registry was \
                     reached with",
                    url.origin().host,
                    url.origin().port
                )));
            }
            // 307/308 repeat the request as it was; the others turn anything but GET/HEAD into a GET.
            let keeps_method = matches!(answer.status, 307 | 308) || method == "GET" || method == "HEAD";
            // A body (a token request's form, a manifest, a chunk) never follows a redirect to another
            // origin: it may be a secret. Such a redirect is the answer.
            if keeps_method && !matches!(sent, Body::Empty) && url.origin() != answer.url.origin() {
                return Ok(answer);
            }
            (method, body) = if keeps_method { (method, sent) } else { ("GET", Body::Empty) };
        }
    }

    /// One request, no redirects. Returns the answer and, for a resendable body, the body back.
    fn once(&self, call: Call, deadline: Instant, auth: Option<String>) -> Result<(Answer, Option<Body>), Failure> {
        let Call { method, url, mut headers, body, limit, stream, cancellable } = call;
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let keep = match &body {
            Body::Empty => Some(Body::Empty),
            Body::Shared(data, range) => Some(Body::Shared(Arc::clone(data), range.clone())),
            Body::Stream(..) => None,
        };
        let closer = match &body {
            Body::Stream(_, closer, _) => Some(closer.clone()),
            _ => None,
        };
        let agent = self.agent_for(&url);
        let target = url.to_string();
        let idle = self.idle;
        let cancel = self.cancel.clone();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut builder = http::Request::builder().method(method).uri(&target);
            for (k, v) in &headers {
                builder = builder.header(*k, v);
            }
            let send = match body {
                Body::Empty => ureq::SendBody::none(),
                Body::Shared(data, range) => {
                    builder = builder.header("Content-Length", range.len().to_string());
                    ureq::SendBody::from_owned_reader(SharedReader { data, range, pos: 0 })
                }
                Body::Stream(reader, _, len) => {
                    builder = builder.header("Content-Length", len.to_string());
                    ureq::SendBody::from_owned_reader(reader)
                }
            };
            let request = match builder.body(send) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(Failure::Client(ureq::Error::Http(e))));
                    return;
                }
            };
            let mut resp = match agent.run(request) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(Failure::Client(e)));
                    return;
                }
            };
            let status = resp.status().as_u16();
            let headers: Vec<(String, String)> = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let head = Head { status, headers };
            if method == "HEAD" {
                let _ = tx.send(Ok((head, Vec::new(), false, None)));
                return;
            }
            let mut reader = resp.body_mut().as_reader();
            if stream && (200..300).contains(&status) {
                let (mut w, r) = conduit::conduit(STREAM_BUFFER);
                if tx.send(Ok((head, Vec::new(), false, Some(r.bounded(idle, cancel))))).is_err() {
                    return;
                }
                let mut buf = vec![0u8; STREAM_BLOCK];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if std::io::Write::write_all(&mut w, &buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            w.fail(format!("reading the answer failed: {e}"));
                            return;
                        }
                    }
                }
            }
            let mut body = Vec::new();
            let read = reader.take(limit as u64 + 1).read_to_end(&mut body);
            let truncated = body.len() > limit;
            body.truncate(limit);
            let _ = match read {
                Ok(_) => tx.send(Ok((head, body, truncated, None))),
                Err(e) => tx.send(Err(Failure::Read(e))),
            };
        });
        let mut deadline = deadline;
        let mut cancelling = false;
        let abandon = |f: Failure| {
            if let Some(c) = &closer {
                c.close();
            }
            Err(f)
        };
        loop {
            if cancellable && !cancelling && self.cancel.is_cancelled() {
                cancelling = true;
                deadline = deadline.min(Instant::now() + CANCEL_GRACE);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return abandon(if cancelling { Failure::Cancelled } else { Failure::TimedOut });
            }
            match rx.recv_timeout(left.min(Duration::from_millis(20))) {
                Ok(Ok((head, body, truncated, stream))) => {
                    let answer = Answer { status: head.status, headers: head.headers, body, truncated, stream, url };
                    return Ok((answer, keep));
                }
                Ok(Err(f)) => return abandon(f),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return abandon(Failure::Read(std::io::Error::other("the request thread stopped")));
                }
            }
        }
    }
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

/// Reads a shared range (what ureq sends from), without copying the buffer.
struct SharedReader {
    data: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
    pos: usize,
}

impl Read for SharedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let data = self.data.get(self.range.clone()).unwrap_or_default();
        let rest = data.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}
