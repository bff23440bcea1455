//! The registry client against recorded registry behaviour: GHCR's chunk cap, ECR's 201, Google Artifact
//! Registry's 411 and missing PATCH, Gitea's conventions, `OCI-Chunk-Min-Length`, cross-host blob redirects,
//! `Retry-After`, digest checks, error bodies and `Link` pagination (issue 4, "Registry quirks").
//!
//! A [`Server`] is a tiny scripted HTTP/1.1 server on loopback: one thread serves every keep-alive
//! connection in turn, reads each request whole (`Content-Length` or chunked), hands it to a handler closure
//! and records it with the status it got and when it arrived. The [`Emulator`] is the usual handler: a small
//! distribution-style state machine (upload sessions that count received bytes, `Location`, `Range`,
//! `Docker-Content-Digest` computed with sha256 of what arrived) with one switch per quirk, so each test
//! states the registry it plays and then drives the real client: `Registry::connect` over plain HTTP, a
//! `RegistrySink` and the `Sink` API, or the pipeline on a small context in a temp dir.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::sink::RegistrySink;
use super::*;
use crate::credentials::{Credential, Secret};
use crate::digest::Digest;
use crate::image::ImageOptions;
use crate::layer::LayerOptions;
use crate::pipeline::{self, Plan};
use crate::progress::Progress;
use crate::reference::Reference;
use crate::reference::is_loopback_host;
use crate::sink::{ManifestBlob, Sink};
use crate::tls::TlsOptions;
use crate::walk::Context;

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------------------
// The scripted server.
// ---------------------------------------------------------------------------------------------------------

/// A request as the server received it.
#[derive(Debug, Clone)]
struct RecordedRequest {
    method: String,
    /// Path and query, as on the request line.
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RecordedRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or(&self.path)
    }

    fn query(&self, key: &str) -> Option<&str> {
        let (_, query) = self.path.split_once('?')?;
        query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    }
}

/// What the handler answers.
#[derive(Debug, Clone)]
struct ScriptedResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl ScriptedResponse {
    fn new(status: u16) -> ScriptedResponse {
        ScriptedResponse { status, headers: Vec::new(), body: Vec::new() }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> ScriptedResponse {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> ScriptedResponse {
        self.body = body.into();
        self
    }

    fn json(status: u16, value: &serde_json::Value) -> ScriptedResponse {
        ScriptedResponse::new(status).header("Content-Type", "application/json").body(value.to_string())
    }
}

/// One request and what it got.
#[derive(Debug, Clone)]
struct Exchange {
    request: RecordedRequest,
    status: u16,
    /// When the request had been read whole.
    at: Instant,
}

/// A listening socket whose address is known before the handler is made (a realm URL needs the port).
struct Bound {
    listener: TcpListener,
    host: String,
}

fn bind() -> Bound {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let host = format!("127.0.0.1:{}", listener.local_addr().expect("local address").port());
    Bound { listener, host }
}

/// A running scripted server; stopped when dropped.
struct Server {
    host: String,
    port: u16,
    log: Arc<Mutex<Vec<Exchange>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bound {
    fn serve(self, handler: impl FnMut(&RecordedRequest) -> ScriptedResponse + Send + 'static) -> Server {
        let port = self.listener.local_addr().expect("local address").port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || serve(self.listener, handler, &log, &stop))
        };
        Server { host: self.host, port, log, stop, thread: Some(thread) }
    }
}

impl Server {
    fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn of(&self, method: &str) -> Vec<Exchange> {
        self.exchanges().into_iter().filter(|e| e.request.method == method).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Readiness {
    Idle,
    Request,
    Closed,
}

/// One thread, every connection in turn: a connection whose client sent something is served one whole
/// request; idle keep-alive connections (ureq's pool) never block the others.
fn serve(
    listener: TcpListener,
    mut handler: impl FnMut(&RecordedRequest) -> ScriptedResponse,
    log: &Mutex<Vec<Exchange>>,
    stop: &AtomicBool,
) {
    listener.set_nonblocking(true).expect("non-blocking listener");
    let mut conns: Vec<BufReader<TcpStream>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut busy = false;
        while let Ok((stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            conns.push(BufReader::new(stream));
            busy = true;
        }
        let mut i = 0;
        while i < conns.len() {
            match readiness(&conns[i]) {
                Readiness::Idle => i += 1,
                Readiness::Closed => {
                    conns.remove(i);
                }
                Readiness::Request => {
                    busy = true;
                    if serve_one(&mut conns[i], &mut handler, log) {
                        i += 1;
                    } else {
                        conns.remove(i);
                    }
                }
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn readiness(conn: &BufReader<TcpStream>) -> Readiness {
    if !conn.buffer().is_empty() {
        return Readiness::Request;
    }
    let stream = conn.get_ref();
    if stream.set_nonblocking(true).is_err() {
        return Readiness::Closed;
    }
    let peeked = stream.peek(&mut [0u8; 1]);
    let _ = stream.set_nonblocking(false);
    match peeked {
        Ok(0) => Readiness::Closed,
        Ok(_) => Readiness::Request,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Readiness::Idle,
        Err(_) => Readiness::Closed,
    }
}

/// Reads, answers and records one request; false when the connection is done.
fn serve_one(
    conn: &mut BufReader<TcpStream>,
    handler: &mut impl FnMut(&RecordedRequest) -> ScriptedResponse,
    log: &Mutex<Vec<Exchange>>,
) -> bool {
    let request = match read_request(conn) {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => return false,
    };
    let at = Instant::now();
    let response = handler(&request);
    let close = request.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let method = request.method.clone();
    log.lock().unwrap_or_else(|e| e.into_inner()).push(Exchange { request, status: response.status, at });
    write_response(conn.get_mut(), &method, &response).is_ok() && !close
}

fn read_request(conn: &mut BufReader<TcpStream>) -> std::io::Result<Option<RecordedRequest>> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut request = RecordedRequest { method, path, headers, body: Vec::new() };
    if request.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let size_field = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size_field, 16).map_err(std::io::Error::other)?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    line.clear();
                    if conn.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = request.body.len();
            request.body.resize(start + size, 0);
            conn.read_exact(&mut request.body[start..])?;
            line.clear();
            conn.read_line(&mut line)?;
        }
    } else if let Some(n) = request.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0; n];
        conn.read_exact(&mut body)?;
        request.body = body;
    }
    Ok(Some(request))
}

fn write_response(stream: &mut TcpStream, method: &str, resp: &ScriptedResponse) -> std::io::Result<()> {
    let reason = match resp.status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Request Entity Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", resp.status);
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let bodiless = resp.status == 204 || resp.status == 304 || (100..200).contains(&resp.status);
    if !bodiless && !resp.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if method != "HEAD" && !bodiless {
        out.extend_from_slice(&resp.body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

// ---------------------------------------------------------------------------------------------------------
// A distribution-style registry with switchable quirks.
// ---------------------------------------------------------------------------------------------------------

/// How the emulated registry departs from the reference one.
#[derive(Debug, Clone, Default)]
struct Quirks {
    /// GHCR: a PATCH body above this many bytes gets 416.
    max_patch: Option<usize>,
    /// The status of an accepted PATCH (202; ECR answers 201).
    patch_status: Option<u16>,
    /// Google Artifact Registry: POST, PATCH or PUT without `Content-Length` gets 411.
    require_length: bool,
    /// Registries without chunked upload: PATCH gets 405.
    refuse_patch: bool,
    /// Gitea: Locations are paths, without the reference registry's `_state`.
    relative_location: bool,
    /// Gitea: `Content-Range` only as `START-END` (`bytes=` is a 400), and no PATCH without it after the first.
    strict_range: bool,
    /// Sent as `OCI-Chunk-Min-Length` when an upload starts.
    min_chunk: Option<usize>,
    /// The closing PUT answers 201 with the digest of what arrived, whatever `?digest=` says.
    lax_digest: bool,
    /// The first chunk of every session arrives with its first byte flipped (corruption on the way).
    corrupt_first_chunk: bool,
    /// The registry re-serialises manifests (pretty-printed) and answers with the digest of its version.
    rewrite_manifests: bool,
}

enum Auth {
    Anonymous,
    /// Basic on every `/v2/` route.
    Basic {
        user: String,
        pass: String,
    },
    /// Gitea: Bearer challenge, `GET /v2/token` with Basic answers `{"token"}` only, plain-text 401 for a
    /// wrong password; Basic is also accepted directly.
    Gitea {
        user: String,
        pass: String,
        token: String,
    },
}

type Intercept = Box<dyn FnMut(&RecordedRequest) -> Option<ScriptedResponse> + Send>;

#[derive(Default)]
struct Session {
    data: Vec<u8>,
    /// sha256 of `data`, kept up as chunks arrive (hashing at the end would serialise it after the client's).
    hasher: Sha256,
    patches: u32,
}

struct Emulator {
    host: String,
    quirks: Quirks,
    auth: Auth,
    sessions: HashMap<String, Session>,
    /// Blobs by the sha256 of their bytes.
    blobs: HashMap<String, Vec<u8>>,
    /// `repo:tag` -> (content type, bytes).
    manifests: HashMap<String, (String, Vec<u8>)>,
    next_id: u32,
    /// Answers after authentication, before the emulation proper (fault injection); `None` lets the
    /// request through.
    intercept: Option<Intercept>,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes).as_slice()))
}

/// Base64 written here rather than borrowed from the crate, so the test does not trust the code under test.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn basic_value(user: &str, pass: &str) -> String {
    format!("Basic {}", b64(format!("{user}:{pass}").as_bytes()))
}

fn oci_error(status: u16, code: &str, message: &str) -> ScriptedResponse {
    ScriptedResponse::json(status, &serde_json::json!({"errors": [{"code": code, "message": message}]}))
}

impl Emulator {
    fn new(host: &str, quirks: Quirks, auth: Auth) -> Emulator {
        Emulator {
            host: host.to_string(),
            quirks,
            auth,
            sessions: HashMap::new(),
            blobs: HashMap::new(),
            manifests: HashMap::new(),
            next_id: 0,
            intercept: None,
        }
    }

    fn handle(&mut self, req: &RecordedRequest) -> ScriptedResponse {
        if let Some(refused) = self.authenticate(req) {
            return refused;
        }
        if let Some(intercept) = self.intercept.as_mut()
            && let Some(resp) = intercept(req)
        {
            return resp;
        }
        if self.quirks.require_length
            && matches!(req.method.as_str(), "POST" | "PATCH" | "PUT")
            && req.header("content-length").is_none()
        {
            return ScriptedResponse::new(411)
                .header("Content-Type", "text/html; charset=UTF-8")
                .body("<!DOCTYPE html>\n<title>Error 411 (Length Required)!!1</title>\n");
        }
        let path = req.path_only().to_string();
        if path == "/v2/" {
            return ScriptedResponse::json(200, &serde_json::json!({}));
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return ScriptedResponse::new(404).body("404 page not found\n");
        };
        if let Some((repo, id)) = rest.split_once("/blobs/uploads/") {
            return self.upload(req, repo, id);
        }
        if let Some((_, digest)) = rest.split_once("/blobs/") {
            return self.blob(req, digest);
        }
        if let Some((repo, tag)) = rest.split_once("/manifests/") {
            return self.manifest(req, repo, tag);
        }
        oci_error(404, "NAME_UNKNOWN", "repository name not known to registry")
    }

    fn authenticate(&mut self, req: &RecordedRequest) -> Option<ScriptedResponse> {
        let given = req.header("authorization").unwrap_or_default();
        match &self.auth {
            Auth::Anonymous => None,
            Auth::Basic { user, pass } => (given != basic_value(user, pass)).then(|| {
                oci_error(401, "UNAUTHORIZED", "authentication required")
                    .header("WWW-Authenticate", r#"Basic realm="Registry Realm""#)
            }),
            Auth::Gitea { user, pass, token } => {
                let basic_ok = given == basic_value(user, pass);
                if req.path_only() == "/v2/token" {
                    if req.method != "GET" {
                        return Some(ScriptedResponse::new(404).body("404 page not found\n"));
                    }
                    return Some(if basic_ok {
                        ScriptedResponse::json(200, &serde_json::json!({ "token": token }))
                    } else {
                        ScriptedResponse::new(401)
                            .header("Content-Type", "text/plain; charset=utf-8")
                            .body("user does not exist or password is incorrect\nsee the server log for details\n")
                    });
                }
                if basic_ok || given == format!("Bearer {token}") {
                    return None;
                }
                let challenge =
                    format!(r#"Bearer realm="http://{}/v2/token",service="container_registry",scope="*""#, self.host);
                Some(oci_error(401, "UNAUTHORIZED", "").header("WWW-Authenticate", challenge))
            }
        }
    }

    fn location(&self, repo: &str, id: &str) -> String {
        if self.quirks.relative_location {
            format!("/v2/{repo}/blobs/uploads/{id}")
        } else {
            // Like the reference registry: absolute, with the offset in an opaque state parameter.
            let received = self.sessions.get(id).map_or(0, |s| s.data.len());
            format!("http://{}/v2/{repo}/blobs/uploads/{id}?_state={id}.{received}", self.host)
        }
    }

    fn range(&self, id: &str) -> String {
        let received = self.sessions.get(id).map_or(0, |s| s.data.len());
        format!("0-{}", received.saturating_sub(1))
    }

    fn upload(&mut self, req: &RecordedRequest, repo: &str, id: &str) -> ScriptedResponse {
        if id.is_empty() {
            if req.method != "POST" {
                return oci_error(405, "UNSUPPORTED", "the operation is unsupported");
            }
            self.next_id += 1;
            let id = format!("u{}", self.next_id);
            self.sessions.insert(id.clone(), Session::default());
            let mut resp = ScriptedResponse::new(202)
                .header("Location", self.location(repo, &id))
                .header("Range", "0-0")
                .header("Docker-Upload-UUID", id.clone());
            if let Some(min) = self.quirks.min_chunk {
                resp = resp.header("OCI-Chunk-Min-Length", min.to_string());
            }
            return resp;
        }
        let Some(session) = self.sessions.get(id) else {
            return oci_error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry");
        };
        let received = session.data.len();
        if matches!(req.method.as_str(), "PATCH" | "PUT")
            && let Some(state) = req.query("_state")
            && state != format!("{id}.{received}")
        {
            return oci_error(400, "BLOB_UPLOAD_INVALID", "stale upload state (the client did not follow Location)");
        }
        match req.method.as_str() {
            "PATCH" => self.patch(req, repo, id),
            "PUT" => self.close(req, repo, id),
            "GET" => ScriptedResponse::new(204)
                .header("Location", self.location(repo, id))
                .header("Range", self.range(id))
                .header("Docker-Upload-UUID", id),
            "DELETE" => {
                self.sessions.remove(id);
                ScriptedResponse::new(204)
            }
            _ => oci_error(405, "UNSUPPORTED", "the operation is unsupported"),
        }
    }

    fn patch(&mut self, req: &RecordedRequest, repo: &str, id: &str) -> ScriptedResponse {
        if self.quirks.refuse_patch {
            return oci_error(405, "UNSUPPORTED", "chunked uploads are not supported");
        }
        let received = self.sessions[id].data.len();
        if let Some(max) = self.quirks.max_patch
            && req.body.len() > max
        {
            // GHCR's answer to a chunk above its cap.
            return oci_error(416, "BLOB_UPLOAD_INVALID", &format!("chunk size exceeds the maximum of {max} bytes"))
                .header("Range", self.range(id));
        }
        match req.header("content-range") {
            Some(v) => {
                if self.quirks.strict_range && v.starts_with("bytes") {
                    return oci_error(400, "BLOB_UPLOAD_INVALID", "");
                }
                let v = v.strip_prefix("bytes=").unwrap_or(v);
                let Some((start, end)) =
                    v.split_once('-').and_then(|(s, e)| Some((s.parse::<usize>().ok()?, e.parse::<usize>().ok()?)))
                else {
                    return oci_error(400, "BLOB_UPLOAD_INVALID", "invalid content range");
                };
                if start != received {
                    return oci_error(416, "BLOB_UPLOAD_INVALID", "").header("Range", self.range(id));
                }
                if end + 1 != start + req.body.len() {
                    return oci_error(400, "BLOB_UPLOAD_INVALID", "content range does not match the body");
                }
            }
            None if self.quirks.strict_range && received > 0 => {
                return oci_error(400, "BLOB_UPLOAD_INVALID", "Stream uploads after first write are not allowed");
            }
            None => {}
        }
        let corrupt = self.quirks.corrupt_first_chunk;
        let session = self.sessions.get_mut(id).expect("session checked above");
        let start = session.data.len();
        session.data.extend_from_slice(&req.body);
        if corrupt && session.patches == 0 && !req.body.is_empty() {
            session.data[start] ^= 0xff;
        }
        session.hasher.update(&session.data[start..]);
        session.patches += 1;
        ScriptedResponse::new(self.quirks.patch_status.unwrap_or(202))
            .header("Location", self.location(repo, id))
            .header("Range", self.range(id))
            .header("Docker-Upload-UUID", id)
    }

    fn close(&mut self, req: &RecordedRequest, repo: &str, id: &str) -> ScriptedResponse {
        let Some(expected) = req.query("digest").map(str::to_string) else {
            return oci_error(400, "DIGEST_INVALID", "digest missing");
        };
        let mut session = self.sessions.remove(id).expect("session checked by the caller");
        let mut body = req.body.clone();
        if self.quirks.corrupt_first_chunk && session.data.is_empty() && !body.is_empty() {
            // A single PUT carrying the whole blob is its first chunk.
            body[0] ^= 0xff;
        }
        session.data.extend_from_slice(&body);
        session.hasher.update(&body);
        let got = format!("sha256:{}", hex::encode(session.hasher.clone().finalize().as_slice()));
        if got != expected && !self.quirks.lax_digest {
            self.sessions.insert(id.to_string(), session);
            return oci_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content");
        }
        self.blobs.insert(got.clone(), session.data);
        ScriptedResponse::new(201)
            .header("Location", format!("/v2/{repo}/blobs/{got}"))
            .header("Docker-Content-Digest", got)
    }

    fn blob(&self, req: &RecordedRequest, digest: &str) -> ScriptedResponse {
        match (req.method.as_str(), self.blobs.get(digest)) {
            ("HEAD" | "GET", Some(bytes)) => ScriptedResponse::new(200)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", bytes.len().to_string())
                .header("Docker-Content-Digest", digest)
                .body(bytes.clone()),
            ("HEAD" | "GET", None) => oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry"),
            _ => oci_error(405, "UNSUPPORTED", "the operation is unsupported"),
        }
    }

    fn manifest(&mut self, req: &RecordedRequest, repo: &str, tag: &str) -> ScriptedResponse {
        let key = format!("{repo}:{tag}");
        match req.method.as_str() {
            "PUT" => {
                let content_type = req.header("content-type").unwrap_or_default().to_string();
                let mut bytes = req.body.clone();
                if self.quirks.rewrite_manifests
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
                {
                    bytes = serde_json::to_vec_pretty(&v).expect("re-encode");
                }
                let digest = sha256(&bytes);
                self.manifests.insert(key, (content_type, bytes));
                ScriptedResponse::new(201)
                    .header("Location", format!("/v2/{repo}/manifests/{digest}"))
                    .header("Docker-Content-Digest", digest)
            }
            "GET" | "HEAD" => match self.manifests.get(&key) {
                Some((content_type, bytes)) => ScriptedResponse::new(200)
                    .header("Content-Type", content_type.clone())
                    .header("Docker-Content-Digest", sha256(bytes))
                    .body(bytes.clone()),
                None => oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown"),
            },
            _ => oci_error(405, "UNSUPPORTED", "the operation is unsupported"),
        }
    }
}

/// An emulated registry on its own server; the emulator stays reachable for assertions on its state.
fn registry(quirks: Quirks, auth: Auth) -> (Server, Arc<Mutex<Emulator>>) {
    registry_with(quirks, auth, None)
}

fn registry_with(quirks: Quirks, auth: Auth, intercept: Option<Intercept>) -> (Server, Arc<Mutex<Emulator>>) {
    let bound = bind();
    let mut emulator = Emulator::new(&bound.host, quirks, auth);
    emulator.intercept = intercept;
    let emulator = Arc::new(Mutex::new(emulator));
    let handle = emulator.clone();
    let server = bound.serve(move |req| handle.lock().unwrap_or_else(|e| e.into_inner()).handle(req));
    (server, emulator)
}

/// Whether the emulated registry holds exactly `bytes` under `digest` (their sha256, computed once by the
/// caller: hashing is slow in debug builds).
fn stored(emulator: &Arc<Mutex<Emulator>>, digest: &str, bytes: &[u8]) -> bool {
    state(emulator).blobs.get(digest).is_some_and(|b| b == bytes)
}

fn state(emulator: &Arc<Mutex<Emulator>>) -> MutexGuard<'_, Emulator> {
    emulator.lock().unwrap_or_else(|e| e.into_inner())
}

/// Answers the `n`th request (1-based) with `method` and a path containing `path_part` with `response`.
fn nth(method: &'static str, path_part: &'static str, n: usize, response: ScriptedResponse) -> Option<Intercept> {
    let mut seen = 0;
    Some(Box::new(move |req: &RecordedRequest| {
        if req.method != method || !req.path.contains(path_part) {
            return None;
        }
        seen += 1;
        (seen == n).then(|| response.clone())
    }))
}

// ---------------------------------------------------------------------------------------------------------
// Driving the client.
// ---------------------------------------------------------------------------------------------------------

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        budget: Duration::from_secs(10),
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

fn connect(host: &str, credential: Option<Credential>, retry: RetryPolicy) -> Result<Registry> {
    let opts = ConnectOptions {
        tls: TlsOptions { plain_http: true, ..Default::default() },
        retry,
        request_timeout: Some(Duration::from_secs(10)),
        cancel: crate::signal::Cancel::new(),
        quiet: true,
    };
    Registry::connect(host, credential, &opts, &mut Progress::new(true))
}

fn sink_for(host: &str, credential: Option<Credential>, chunk: usize) -> RegistrySink {
    sink_with(host, credential, chunk, quick_retry())
}

fn sink_with(host: &str, credential: Option<Credential>, chunk: usize, retry: RetryPolicy) -> RegistrySink {
    let registry = connect(host, credential, retry).unwrap_or_else(|e| panic!("connect to {host}: {e}"));
    RegistrySink::new(registry, vec!["ns/app".into()], chunk)
}

fn basic(user: &str, pass: &str, source: &str) -> Credential {
    Credential {
        secret: Secret::Basic { username: user.to_string(), password: pass.to_string() },
        source: source.to_string(),
    }
}

/// Deterministic incompressible bytes (xorshift64, eight bytes a step: debug builds are slow per byte).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Streams `bytes` into a new blob in 1 MiB writes (as the pipeline does) and commits it. The digest is
/// computed on a second thread meanwhile, as the pipeline computes it on the way.
fn upload(sink: &mut RegistrySink, bytes: &[u8]) -> Result<Digest> {
    std::thread::scope(|scope| {
        let hashing = scope.spawn(|| Digest::of(bytes));
        let mut writer = sink.blob_writer()?;
        for block in bytes.chunks(MIB) {
            if let Err(e) = writer.write_all(block) {
                let _ = writer.abort();
                return Err(crate::layer::sink_error(e));
            }
        }
        let digest = hashing.join().expect("hashing thread");
        writer.commit(&digest, bytes.len() as u64)?;
        Ok(digest)
    })
}

/// `START-END` of a Content-Range the client sent; the `bytes=` form is a failure (Gitea refuses it).
#[track_caller]
fn content_range(e: &Exchange) -> (usize, usize) {
    let v = e.request.header("content-range").unwrap_or_else(|| panic!("PATCH without Content-Range: {e:?}"));
    assert!(!v.starts_with("bytes"), "Content-Range must be START-END without `bytes=`: {v:?}");
    let (s, end) = v.split_once('-').unwrap_or_else(|| panic!("bad Content-Range {v:?}"));
    (
        s.parse().unwrap_or_else(|_| panic!("bad start in {v:?}")),
        end.parse().unwrap_or_else(|_| panic!("bad end in {v:?}")),
    )
}

/// Checks that the accepted PATCHes cover `0..len` contiguously with matching bodies.
#[track_caller]
fn assert_contiguous(accepted: &[&Exchange], len: usize) {
    let mut next = 0;
    for e in accepted {
        let (start, end) = content_range(e);
        assert_eq!(start, next, "PATCH ranges must be contiguous: {:?}", e.request.header("content-range"));
        assert_eq!(end + 1 - start, e.request.body.len(), "Content-Range must match the body length");
        next = end + 1;
    }
    assert_eq!(next, len, "the accepted PATCHes must cover the whole blob");
}

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("idpb-registry-tests-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small build context: a text file and `noise_len` incompressible bytes in a subdirectory.
fn context(dir: &Path, noise_len: usize) -> Plan {
    std::fs::write(dir.join("hello.txt"), "hello from the registry tests\n").expect("write hello.txt");
    std::fs::create_dir_all(dir.join("data")).expect("mkdir data");
    std::fs::write(dir.join("data/blob.bin"), noise(noise_len, 7)).expect("write data/blob.bin");
    Plan {
        context: Context::open(dir).expect("open context"),
        layer: LayerOptions::default(),
        image: ImageOptions::default(),
        split: Default::default(),
    }
}

fn single_line(s: &str) -> bool {
    !s.contains('\n') && !s.contains('\r')
}

// ---------------------------------------------------------------------------------------------------------
// The quirks.
// ---------------------------------------------------------------------------------------------------------

#[test]
fn ghcr_chunk_cap_416_shrinks_chunks_and_the_upload_completes() {
    let (server, emulator) = registry(Quirks { max_patch: Some(4 * MIB), ..Default::default() }, Auth::Anonymous);
    let mut sink = sink_for(&server.host, None, 8 * MIB);
    let blob = noise(10 * MIB + 12_345, 1);

    let digest = upload(&mut sink, &blob).expect("a 10 MiB blob through GHCR's 4 MiB chunk cap");

    // The emulator keys blobs by its own sha256 of what arrived: finding it under the client's digest checks
    // both (and hashes the 10 MiB once less, which a debug build feels).
    let want = digest.to_string();
    assert!(stored(&emulator, &want, &blob), "the registry must hold the exact blob");
    let patches = server.of("PATCH");
    assert!(patches.iter().any(|e| e.status == 416), "the emulation must have refused an 8 MiB chunk: {patches:?}");
    let accepted: Vec<&Exchange> = patches.iter().filter(|e| e.status == 202).collect();
    for e in &accepted {
        assert!(e.request.body.len() <= 4 * MIB, "accepted PATCH of {} bytes above the cap", e.request.body.len());
    }
    assert_contiguous(&accepted, blob.len());
    let puts = server.of("PUT");
    assert_eq!(puts.len(), 1, "one closing PUT");
    assert_eq!(puts[0].status, 201);
    assert_eq!(puts[0].request.query("digest"), Some(want.as_str()));
    assert!(puts[0].request.body.is_empty(), "everything went in PATCHes");

    // The working size is remembered for the rest of the run: a second blob meets no 416.
    let before = server.exchanges().len();
    // 4.5 MiB: still 4 MiB chunks; with 8 MiB again it would go as one 4.5 MiB PATCH and meet a 416.
    let second = noise(4 * MIB + MIB / 2, 2);
    let second_digest = upload(&mut sink, &second).expect("second blob").to_string();
    let later = server.exchanges().split_off(before);
    assert!(later.iter().all(|e| e.status != 416), "the shrunk chunk size must be kept: {later:?}");
    assert!(stored(&emulator, &second_digest, &second), "the registry must hold the exact blob");
}

#[test]
fn ecr_patch_answering_201_is_accepted() {
    let (server, emulator) = registry(Quirks { patch_status: Some(201), ..Default::default() }, Auth::Anonymous);
    let mut sink = sink_for(&server.host, None, MIB);
    let blob = noise(2 * MIB + MIB / 2, 3);
    let want = sha256(&blob);

    upload(&mut sink, &blob).expect("upload to a registry answering PATCH with 201");

    assert!(stored(&emulator, &want, &blob), "the registry must hold the exact blob");
    let patches = server.of("PATCH");
    assert!(patches.len() >= 2, "several chunks: {patches:?}");
    assert!(patches.iter().all(|e| e.status == 201), "{patches:?}");
    assert_contiguous(&patches.iter().collect::<Vec<_>>(), blob.len());
    let status_checks: Vec<Exchange> =
        server.of("GET").into_iter().filter(|e| e.request.path.contains("/blobs/uploads/")).collect();
    assert!(status_checks.is_empty(), "a 201 is an acknowledgement, not a reason to resync: {status_checks:?}");
    assert_eq!(server.of("PUT").len(), 1);
    assert_eq!(sink.report.blobs_uploaded, vec![want]);
}

#[test]
fn gar_gets_content_length_on_post_and_a_single_put_when_patch_is_refused() {
    let quirks = Quirks { require_length: true, refuse_patch: true, ..Default::default() };
    let (server, emulator) = registry(quirks, Auth::Anonymous);
    let mut sink = sink_for(&server.host, None, MIB);
    let blob = noise(MIB + MIB / 2, 4);
    let want = sha256(&blob);
    let digest = Digest::of(&blob);

    let sent = sink.put_blob(&blob, &digest).expect("a blob into a registry without chunked upload");

    assert!(sent);
    let all = server.exchanges();
    assert!(all.iter().all(|e| e.status != 411), "no request may lack Content-Length: {all:?}");
    let posts = server.of("POST");
    assert!(!posts.is_empty());
    for e in &posts {
        assert_eq!(e.request.header("content-length"), Some("0"), "POST must send Content-Length: 0");
    }
    let patches = server.of("PATCH");
    assert_eq!(patches.len(), 1, "one refused PATCH, then the fallback: {patches:?}");
    assert_eq!(patches[0].status, 405);
    let puts = server.of("PUT");
    assert_eq!(puts.len(), 1, "exactly one monolithic PUT: {puts:?}");
    assert_eq!(puts[0].status, 201);
    assert!(puts[0].request.body == blob, "the PUT carries the whole blob ({} bytes)", puts[0].request.body.len());
    assert_eq!(puts[0].request.query("digest"), Some(want.as_str()));
    assert_eq!(puts[0].request.header("content-length"), Some(blob.len().to_string().as_str()));
    let emulator = state(&emulator);
    assert!(emulator.blobs.get(&want).is_some_and(|b| *b == blob));
    assert!(emulator.sessions.is_empty(), "the refused chunked session must be deleted");
}

#[test]
fn gar_pipeline_falls_back_to_one_put_of_the_layer() {
    let quirks = Quirks { require_length: true, refuse_patch: true, ..Default::default() };
    let (server, emulator) = registry(quirks, Auth::Anonymous);
    let mut sink = sink_for(&server.host, None, MIB);
    let dir = TempDir::new("gar");
    let plan = context(&dir.0, 200_000);

    let layer = pipeline::store_layer(&plan, &mut sink, &mut Progress::new(true), None).expect("push the layer");

    let puts = server.of("PUT");
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(puts[0].request.body.len() as u64, layer.size);
    assert_eq!(sha256(&puts[0].request.body), layer.digest.as_str());
    assert_eq!(puts[0].request.query("digest"), Some(layer.digest.as_str()));
    assert!(state(&emulator).blobs.contains_key(layer.digest.as_str()));
    assert!(server.exchanges().iter().all(|e| e.status != 411));
}

const GITEA_USER: &str = "giteaAdmin";
/// Gitea's generated passwords hold specials, `:` and `@` included.
const GITEA_PASS: &str = "Xy:9@q/Z!w%k=Le7:rT";
const GITEA_TOKEN: &str = "gitea-session-token-0042";

fn gitea_auth() -> Auth {
    Auth::Gitea { user: GITEA_USER.into(), pass: GITEA_PASS.into(), token: GITEA_TOKEN.into() }
}

fn gitea_quirks() -> Quirks {
    Quirks { relative_location: true, strict_range: true, ..Default::default() }
}

#[test]
fn gitea_push_with_relative_locations_strict_ranges_and_token_only_answers() {
    let (server, emulator) = registry(gitea_quirks(), gitea_auth());
    let credential = basic(GITEA_USER, GITEA_PASS, "idpbuilder's gitea-credential secret");
    let mut sink = sink_for(&server.host, Some(credential), 64 * 1024);
    let dir = TempDir::new("gitea");
    let plan = context(&dir.0, 300_000);
    let name = Reference::parse(&format!("{}/ns/app:v1", server.host)).expect("reference");

    let built = pipeline::run(&plan, None, &mut sink, &[name], &mut Progress::new(true), None).expect("push to Gitea");

    {
        let emulator = state(&emulator);
        assert!(emulator.blobs.contains_key(built.layer.digest.as_str()));
        assert!(emulator.blobs.contains_key(built.config_digest.as_str()));
        let (content_type, bytes) = emulator.manifests.get("ns/app:v1").expect("manifest stored under the tag");
        assert_eq!(bytes, &built.manifest.bytes);
        assert_eq!(content_type, built.manifest.media_type.as_str());
    }
    let all = server.exchanges();
    for e in &all {
        let fine = e.status < 300
            || (e.status == 401 && e.request.path == "/v2/")
            || (e.status == 404 && e.request.method == "HEAD");
        assert!(fine, "unexpected answer {} to {} {}", e.status, e.request.method, e.request.path);
    }
    let patches = server.of("PATCH");
    assert!(patches.len() >= 4, "the layer goes in several 64 KiB chunks: {}", patches.len());
    let layer_patches: Vec<&Exchange> = patches.iter().filter(|e| e.request.path == patches[0].request.path).collect();
    assert_contiguous(&layer_patches, built.layer.size as usize);
    let tokens: Vec<&Exchange> = all.iter().filter(|e| e.request.path_only() == "/v2/token").collect();
    assert!(!tokens.is_empty());
    for t in &tokens {
        assert_eq!(t.request.method, "GET", "Gitea's token endpoint is GET only");
        assert_eq!(t.request.query("service"), Some("container_registry"));
        assert_eq!(t.request.header("authorization"), Some(basic_value(GITEA_USER, GITEA_PASS).as_str()));
    }
    for e in all.iter().filter(|e| e.request.path.starts_with("/v2/ns/app/")) {
        assert_eq!(
            e.request.header("authorization"),
            Some(format!("Bearer {GITEA_TOKEN}").as_str()),
            "{} {} must carry the token from {{\"token\"}}",
            e.request.method,
            e.request.path
        );
    }
}

#[test]
fn gitea_wrong_password_gives_one_line_naming_the_source_without_the_password() {
    let (server, _emulator) = registry(gitea_quirks(), gitea_auth());
    let wrong = "N0t:the@right/one";
    let credential = basic(GITEA_USER, wrong, "IDPB_USERNAME/IDPB_PASSWORD");
    let mut sink = sink_for(&server.host, Some(credential), MIB);

    let err = sink.put_blob(b"{}", &Digest::of(b"{}")).expect_err("a wrong password must fail");

    let msg = err.to_string();
    assert!(matches!(err, Error::Auth(_)), "an authentication error: {err:?}");
    assert!(single_line(&msg), "one line: {msg:?}");
    assert!(msg.contains("IDPB_USERNAME/IDPB_PASSWORD"), "names the credential source: {msg}");
    assert!(msg.contains("user does not exist or password is incorrect"), "carries the registry's words: {msg}");
    assert!(!msg.contains(wrong), "never the password: {msg}");
    assert!(!msg.contains(&b64(format!("{GITEA_USER}:{wrong}").as_bytes())), "not even encoded: {msg}");
    let tokens: Vec<Exchange> =
        server.exchanges().into_iter().filter(|e| e.request.path_only() == "/v2/token").collect();
    assert_eq!(tokens.len(), 1, "a refused password is not retried: {tokens:?}");
}

#[test]
fn oci_chunk_min_length_raises_the_chunk_size() {
    let min = 2 * MIB;
    let (server, emulator) = registry(Quirks { min_chunk: Some(min), ..Default::default() }, Auth::Anonymous);
    let mut sink = sink_for(&server.host, None, MIB);
    let blob = noise(5 * MIB + MIB / 2, 5);

    let want = upload(&mut sink, &blob).expect("upload with OCI-Chunk-Min-Length").to_string();

    assert!(stored(&emulator, &want, &blob), "the registry must hold the exact blob");
    let patches = server.of("PATCH");
    assert!(patches.len() >= 2, "{patches:?}");
    let (last, rest) = patches.split_last().expect("PATCHes");
    for e in rest {
        assert!(e.request.body.len() >= min, "a PATCH of {} bytes below OCI-Chunk-Min-Length", e.request.body.len());
    }
    assert!(!last.request.body.is_empty());
    assert_contiguous(&patches.iter().collect::<Vec<_>>(), blob.len());
}

/// A registry whose chunk cap (416) is below its own `OCI-Chunk-Min-Length` cannot be served: the upload
/// fails after one refused PATCH, naming the minimum, instead of sending the same size again and again.
#[test]
fn a_chunk_cap_below_the_registrys_minimum_fails_at_once() {
    let quirks = Quirks { min_chunk: Some(2 * MIB), max_patch: Some(MIB), ..Default::default() };
    let (server, _emulator) = registry(quirks, Auth::Anonymous);
    let mut sink = sink_for(&server.host, None, MIB);
    let err = upload(&mut sink, &noise(5 * MIB, 9)).expect_err("no chunk size can satisfy both");
    assert!(err.to_string().contains("OCI-Chunk-Min-Length"), "{err}");
    assert!(single_line(&err.to_string()), "{err}");
    assert_eq!(server.of("PATCH").len(), 1, "one refused PATCH, not the same size again: {:?}", server.of("PATCH"));
}

#[test]
fn blob_redirect_to_another_host_drops_the_authorization_header() {
    let blob = noise(100_000, 6);
    let digest = Digest::of(&blob);
    let cdn_blob = blob.clone();
    let cdn = bind().serve(move |req| match req.method.as_str() {
        "GET" | "HEAD" => ScriptedResponse::new(200)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", cdn_blob.len().to_string())
            .body(cdn_blob.clone()),
        _ => ScriptedResponse::new(405),
    });
    // The same machine under another name is another host as far as HTTP is concerned.
    let cdn_url = format!("http://localhost:{}/blobs/{}?sig=signed", cdn.port, digest.hex());
    let (user, pass) = ("robot", "s3cret-pass");
    let expected_auth = basic_value(user, pass);
    let redirect: Intercept = Box::new(move |req: &RecordedRequest| {
        req.path.contains("/blobs/sha256:").then(|| ScriptedResponse::new(307).header("Location", cdn_url.clone()))
    });
    let auth = Auth::Basic { user: user.into(), pass: pass.into() };
    let (main, _emulator) = registry_with(Quirks::default(), auth, Some(redirect));
    let mut reg =
        connect(&main.host, Some(basic(user, pass, "the test")), quick_retry()).expect("connect with Basic auth");

    assert!(reg.blob_exists("ns/app", &digest).expect("HEAD through the redirect"));
    let got = reg.get_blob("ns/app", &digest).expect("GET through the redirect");

    assert!(got == blob, "the blob comes from the other host");
    let redirected: Vec<Exchange> =
        main.exchanges().into_iter().filter(|e| e.request.path.contains("/blobs/")).collect();
    assert_eq!(redirected.len(), 2, "{redirected:?}");
    for e in &redirected {
        assert_eq!(e.status, 307);
        assert_eq!(e.request.header("authorization"), Some(expected_auth.as_str()), "the registry gets the creds");
    }
    let fetched = cdn.exchanges();
    let methods: Vec<&str> = fetched.iter().map(|e| e.request.method.as_str()).collect();
    assert_eq!(methods, ["HEAD", "GET"]);
    for e in &fetched {
        assert_eq!(e.request.header("authorization"), None, "credentials leaked to another host: {e:?}");
    }
}

/// A policy whose cap lets a `Retry-After: 1` through (`retry_delay` caps it at 3 × `max_delay`).
fn patient_retry() -> RetryPolicy {
    RetryPolicy { max_delay: Duration::from_secs(1), ..quick_retry() }
}

fn too_many_requests() -> ScriptedResponse {
    oci_error(429, "TOOMANYREQUESTS", "rate limit exceeded").header("Retry-After", "1")
}

/// The time between the request answered 429 and the client's next request, not counting a DELETE that
/// abandons the refused upload session (cleaning up is not retrying).
#[track_caller]
fn wait_after_429(server: &Server) -> Duration {
    let all = server.exchanges();
    let i = all.iter().position(|e| e.status == 429).expect("the 429 was served");
    let next = all[i + 1..]
        .iter()
        .find(|e| e.request.method != "DELETE")
        .unwrap_or_else(|| panic!("no request after the 429: {all:?}"));
    next.at.duration_since(all[i].at)
}

/// What the client sent after the 429, with delays, for failure messages.
fn timeline(server: &Server) -> String {
    let all = server.exchanges();
    let start = all.iter().find(|e| e.status == 429).map_or_else(Instant::now, |e| e.at);
    let lines: Vec<String> = all
        .iter()
        .filter(|e| e.at >= start)
        .map(|e| format!("+{:?} {} {} -> {}", e.at - start, e.request.method, e.request.path_only(), e.status))
        .collect();
    lines.join(", ")
}

#[test]
fn retry_after_on_429_is_honoured_when_starting_an_upload() {
    let (server, emulator) =
        registry_with(Quirks::default(), Auth::Anonymous, nth("POST", "/blobs/uploads/", 1, too_many_requests()));
    let mut sink = sink_with(&server.host, None, MIB, patient_retry());
    let blob = noise(MIB / 2, 8);
    let want = sha256(&blob);
    let started = Instant::now();

    upload(&mut sink, &blob).expect("the upload goes on after the 429");

    assert!(started.elapsed() >= Duration::from_millis(900), "took only {:?}", started.elapsed());
    let waited = wait_after_429(&server);
    assert!(waited >= Duration::from_millis(900), "Retry-After: 1 ignored: {}", timeline(&server));
    assert_eq!(server.of("POST").len(), 2);
    assert!(stored(&emulator, &want, &blob), "the registry must hold the exact blob");
}

#[test]
fn retry_after_on_429_is_honoured_for_a_chunk() {
    let (server, emulator) =
        registry_with(Quirks::default(), Auth::Anonymous, nth("PATCH", "/blobs/uploads/", 1, too_many_requests()));
    let mut sink = sink_with(&server.host, None, MIB, patient_retry());
    let blob = noise(2 * MIB, 9);
    let want = sha256(&blob);

    upload(&mut sink, &blob).expect("the upload goes on after the 429");

    assert!(stored(&emulator, &want, &blob), "the registry must hold the exact blob");
    let waited = wait_after_429(&server);
    assert!(waited >= Duration::from_millis(900), "Retry-After: 1 ignored: {}", timeline(&server));
}

#[test]
fn retry_after_on_429_is_honoured_for_a_monolithic_put() {
    let quirks = Quirks { require_length: true, refuse_patch: true, ..Default::default() };
    let (server, emulator) =
        registry_with(quirks, Auth::Anonymous, nth("PUT", "/blobs/uploads/", 1, too_many_requests()));
    let mut sink = sink_with(&server.host, None, MIB, patient_retry());
    let blob = noise(MIB + 1, 10);
    let want = sha256(&blob);

    sink.put_blob(&blob, &Digest::of(&blob)).expect("the monolithic PUT goes on after the 429");

    assert!(stored(&emulator, &want, &blob), "the registry must hold the exact blob");
    let waited = wait_after_429(&server);
    assert!(waited >= Duration::from_millis(900), "Retry-After: 1 ignored: {}", timeline(&server));
}

#[test]
fn blob_digest_mismatch_on_the_closing_put_is_an_error_and_not_retried() {
    let quirks = Quirks { lax_digest: true, corrupt_first_chunk: true, ..Default::default() };
    let (server, emulator) = registry(quirks, Auth::Anonymous);
    let mut sink = sink_for(&server.host, None, MIB);
    let blob = noise(2 * MIB + 17, 11);
    let want = sha256(&blob);
    let mut corrupted = blob.clone();
    corrupted[0] ^= 0xff;

    let err = upload(&mut sink, &blob).expect_err("a blob stored under another digest must fail");

    let msg = err.to_string();
    assert!(matches!(err, Error::Registry(_)), "{err:?}");
    assert!(single_line(&msg), "{msg:?}");
    assert!(msg.contains(&want), "names our digest: {msg}");
    assert!(msg.contains(&sha256(&corrupted)), "names the registry's digest: {msg}");
    assert_eq!(server.of("PUT").len(), 1, "a digest mismatch is not retried");
    assert_eq!(server.of("POST").len(), 1, "nor is the blob sent again");
    assert!(sink.report.blobs_uploaded.is_empty(), "{:?}", sink.report);
    assert!(state(&emulator).blobs.contains_key(&sha256(&corrupted)), "the emulation stored the corrupted blob");
}

/// The single-PUT path (a registry without PATCH) checks the registry's `Docker-Content-Digest` as the
/// chunked path does: a blob stored under another digest is an error, not a success.
#[test]
fn blob_digest_mismatch_on_a_single_put_is_an_error_too() {
    let quirks = Quirks { lax_digest: true, corrupt_first_chunk: true, refuse_patch: true, ..Default::default() };
    let (server, _emulator) = registry(quirks, Auth::Anonymous);
    let mut sink = sink_for(&server.host, None, MIB);
    let blob = noise(MIB + 5, 12);
    let digest = Digest::of(&blob);
    let err = sink.put_blob(&blob, &digest).expect_err("a blob stored under another digest must fail");
    let msg = err.to_string();
    assert!(msg.contains("corrupted on the way") && msg.contains(digest.as_str()), "{msg}");
    assert!(single_line(&msg), "{msg:?}");
    assert!(server.of("PUT").iter().any(|e| !e.request.body.is_empty()), "it went as one PUT: {:?}", server.of("PUT"));
}

fn manifest_blob(media_type: &str) -> ManifestBlob {
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"{}"), "size": 2},
        "layers": []
    }))
    .expect("manifest JSON");
    ManifestBlob { digest: Digest::of(&bytes), bytes, media_type: media_type.into(), platform: None }
}

#[test]
fn manifest_put_sends_its_media_type_and_checks_the_digest_the_registry_answers() {
    let (server, emulator) = registry(Quirks::default(), Auth::Anonymous);
    let mut sink = sink_for(&server.host, None, MIB);
    let oci = manifest_blob("application/vnd.oci.image.manifest.v1+json");
    let docker = manifest_blob("application/vnd.docker.distribution.manifest.v2+json");
    let v1 = Reference::parse(&format!("{}/ns/app:v1", server.host)).expect("reference");
    let v2 = Reference::parse(&format!("{}/ns/app:v2", server.host)).expect("reference");

    sink.put_manifest(&oci, &v1).expect("OCI manifest");
    sink.put_manifest(&docker, &v2).expect("Docker manifest");

    let puts = server.of("PUT");
    assert_eq!(puts.len(), 2);
    assert_eq!(puts[0].request.path, "/v2/ns/app/manifests/v1");
    assert_eq!(puts[0].request.header("content-type"), Some(oci.media_type.as_str()));
    assert!(puts[0].request.body == oci.bytes);
    assert_eq!(puts[1].request.header("content-type"), Some(docker.media_type.as_str()));
    assert_eq!(state(&emulator).manifests.get("ns/app:v2").map(|m| &m.1), Some(&docker.bytes));

    // A registry that stores the manifest under another digest (it rewrote the bytes).
    let (rewriting, _emulator) = registry(Quirks { rewrite_manifests: true, ..Default::default() }, Auth::Anonymous);
    let mut sink = sink_for(&rewriting.host, None, MIB);
    let name = Reference::parse(&format!("{}/ns/app:v1", rewriting.host)).expect("reference");

    let err = sink.put_manifest(&oci, &name).expect_err("a rewritten manifest must be an error");

    let msg = err.to_string();
    assert!(single_line(&msg), "{msg:?}");
    assert!(msg.contains(oci.digest.as_str()), "names our digest: {msg}");
    let pretty = serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(&oci.bytes).expect("json"))
        .expect("pretty");
    assert!(msg.contains(&sha256(&pretty)), "names the registry's digest: {msg}");
    assert_eq!(rewriting.of("PUT").len(), 1, "not retried");
    assert!(
        matches!(sink.pushed.last(), Some((r, Err(_))) if r.tag.as_deref() == Some("v1")),
        "the tag is reported failed"
    );
    assert_eq!(sink.report.manifests, 0);
}

/// nginx's default error page for a body above `client_max_body_size`.
const NGINX_413: &str = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n\
    <center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

#[test]
fn registry_error_details_are_one_line() {
    let cases: [(&str, &str); 8] = [
        (
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:abc"}]}"#,
            "BLOB_UNKNOWN: blob unknown to registry",
        ),
        // Gitea: the message is often empty.
        (r#"{"errors":[{"code":"MANIFEST_INVALID","message":""}]}"#, "MANIFEST_INVALID"),
        (
            r#"{"errors":[{"code":"DENIED","message":"a"},{"code":"UNAUTHORIZED","message":"b"}]}"#,
            "DENIED: a; UNAUTHORIZED: b",
        ),
        // nginx's own error page, as it sends it.
        (NGINX_413, "413 Request Entity Too Large"),
        // Gitea's plain-text answers.
        ("user does not exist or password is incorrect\nsecond line\n", "user does not exist or password is incorrect"),
        ("\n\n  Unauthorized  \n", "Unauthorized"),
        (r#"{"message":"not the distribution shape"}"#, r#"{"message":"not the distribution shape"}"#),
        ("", ""),
    ];
    for (body, want) in cases {
        assert_eq!(registry_error_detail(body.as_bytes()), want, "detail of {body:?}");
    }

    // The same page squeezed on one line: still one line, starting with the title, no markup.
    let one_line = registry_error_detail(NGINX_413.replace("\r\n", "").as_bytes());
    assert!(one_line.starts_with("413 Request Entity Too Large"), "{one_line:?}");
    assert!(single_line(&one_line) && !one_line.contains('<'), "{one_line:?}");

    // A long body is shortened, and never spans lines.
    let long = registry_error_detail(format!("{}\nmore", "x".repeat(1000)).as_bytes());
    assert_eq!(long.chars().count(), 200);
    assert!(single_line(&long));
}

#[test]
fn registry_error_detail_of_a_json_message_spanning_lines_is_one_line() {
    // Error messages are one line each (crate::error); a registry's message may hold a newline.
    let detail = registry_error_detail(br#"{"errors":[{"code":"DENIED","message":"line one\nline two"}]}"#);
    assert!(single_line(&detail), "{detail:?}");
    assert!(detail.starts_with("DENIED: line one"), "{detail:?}");
}

#[test]
fn catalog_follows_relative_link_headers_over_three_pages() {
    let pages = bind().serve(|req| {
        let (repos, link): (&[&str], Option<&str>) = match req.path.as_str() {
            "/v2/" => return ScriptedResponse::new(200),
            "/v2/_catalog?n=100" => {
                (&["alpha/one", "alpha/two"], Some(r#"</v2/_catalog?last=alpha%2Ftwo&n=100>; rel="next""#))
            }
            "/v2/_catalog?last=alpha%2Ftwo&n=100" => {
                (&["beta/one", "beta/two"], Some(r#"</v2/_catalog?last=beta%2Ftwo&n=100>; rel="next""#))
            }
            "/v2/_catalog?last=beta%2Ftwo&n=100" => (&["gamma"], None),
            _ => return oci_error(404, "NOT_FOUND", ""),
        };
        let resp = ScriptedResponse::json(200, &serde_json::json!({ "repositories": repos }));
        match link {
            Some(l) => resp.header("Link", l),
            None => resp,
        }
    });
    let mut reg = connect(&pages.host, None, quick_retry()).expect("connect");

    let mut repos = Vec::new();
    reg.catalog(&mut |r| {
        repos.push(r.to_string());
        Ok(())
    })
    .expect("catalog");

    assert_eq!(repos, ["alpha/one", "alpha/two", "beta/one", "beta/two", "gamma"]);
    let asked: Vec<String> = pages.of("GET").into_iter().map(|e| e.request.path).filter(|p| p != "/v2/").collect();
    assert_eq!(
        asked,
        ["/v2/_catalog?n=100", "/v2/_catalog?last=alpha%2Ftwo&n=100", "/v2/_catalog?last=beta%2Ftwo&n=100"]
    );
}

// ---------------------------------------------------------------------------------------------------------
// Authentication (issue 3, "The registry protocol"): Bearer tokens cached per scope and refreshed once,
// identity and registry tokens, anonymous tokens, Basic, several challenges, and where credentials may go.
//
// A token registry is the emulator behind a gate (its `intercept`) that plays distribution's `auth: token`:
// every `/v2/` route answers 401 with a Bearer challenge unless it carries a token that a separate scripted
// token server issued for that repository's `pull,push` scope.
// ---------------------------------------------------------------------------------------------------------

/// The `service` the token registries below name in their challenge.
const TOKEN_SERVICE: &str = "registry.test.local";

/// Tokens a token server issued, in order, with the scope each grants.
type Grants = Arc<Mutex<Vec<(String, String)>>>;

fn grants_of(grants: &Grants) -> MutexGuard<'_, Vec<(String, String)>> {
    grants.lock().unwrap_or_else(|e| e.into_inner())
}

/// Percent-decodes a query or form value (`+` is a space in a form), written here rather than borrowed.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded `key=value` pairs of a query string or form body, in order.
fn form_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

/// What a token request asked for: its query (GET) or form body (POST), decoded.
fn token_params(req: &RecordedRequest) -> Vec<(String, String)> {
    if req.method == "POST" {
        form_pairs(&String::from_utf8_lossy(&req.body))
    } else {
        form_pairs(req.path.split_once('?').map_or("", |(_, q)| q))
    }
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A socket on 127.0.0.1 whose address is written `NAME:PORT`.
fn bind_as(name: &str) -> Bound {
    let bound = bind();
    let port = bound.listener.local_addr().expect("local address").port();
    Bound { listener: bound.listener, host: format!("{name}:{port}") }
}

/// A token server at `/token`: every request (GET or POST) gets a new token `tok-N` granting the scope it
/// asked for, under `key` (`token` as distribution and Gitea send it, or OAuth2's `access_token`). Whom to
/// grant is not its business: the tests check what each request carried.
fn token_server_on(bound: Bound, grants: &Grants, key: &'static str) -> Server {
    let grants = grants.clone();
    bound.serve(move |req| {
        if req.path_only() != "/token" {
            return ScriptedResponse::new(404).body("404 page not found\n");
        }
        let params = token_params(req);
        let scope = param(&params, "scope").unwrap_or_default().to_string();
        let mut grants = grants_of(&grants);
        let token = format!("tok-{}", grants.len() + 1);
        grants.push((token.clone(), scope));
        let mut body = serde_json::Map::new();
        body.insert(key.to_string(), token.into());
        body.insert("expires_in".to_string(), 300.into());
        ScriptedResponse::json(200, &serde_json::Value::Object(body))
    })
}

fn token_server(grants: &Grants, key: &'static str) -> Server {
    token_server_on(bind(), grants, key)
}

/// distribution's challenge for a token server: realm and service.
fn bearer_challenge(tokens: &Server) -> String {
    format!(r#"Bearer realm="http://{}/token",service="{TOKEN_SERVICE}""#, tokens.host)
}

/// The repository a `/v2/NAME/{blobs,manifests,tags}/...` path addresses.
fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/blobs/", "/manifests/", "/tags/"].iter().find_map(|sep| rest.split_once(sep)).map(|(repo, _)| repo)
}

/// The gate of a token registry: a request passes only with `Bearer T` where `T` was granted the scope
/// `repository:REPO:pull,push` of the request's repository and `refuse(T)` (asked once per such request)
/// says no. Everything else, the ping included, gets 401 with one `WWW-Authenticate` header per entry
/// of `challenges`.
fn bearer_gate(
    challenges: Vec<String>,
    grants: &Grants,
    mut refuse: impl FnMut(&str) -> bool + Send + 'static,
) -> Intercept {
    let grants = grants.clone();
    Box::new(move |req: &RecordedRequest| {
        let granted = repository_of(req.path_only()).and_then(|repo| {
            let token = req.header("authorization")?.strip_prefix("Bearer ")?;
            let want = format!("repository:{repo}:pull,push");
            grants_of(&grants).iter().any(|(t, scope)| t == token && *scope == want).then_some(token)
        });
        if granted.is_some_and(|token| !refuse(token)) {
            return None;
        }
        let refused = oci_error(401, "UNAUTHORIZED", "authentication required");
        Some(challenges.iter().fold(refused, |resp, c| resp.header("WWW-Authenticate", c.clone())))
    })
}

/// A token registry (see [`bearer_gate`]) on its own server.
fn token_registry(
    challenges: Vec<String>,
    grants: &Grants,
    refuse: impl FnMut(&str) -> bool + Send + 'static,
) -> (Server, Arc<Mutex<Emulator>>) {
    registry_with(Quirks::default(), Auth::Anonymous, Some(bearer_gate(challenges, grants, refuse)))
}

/// Every exchange addressed to `repo`, in order.
fn in_repository(server: &Server, repo: &str) -> Vec<Exchange> {
    server.exchanges().into_iter().filter(|e| repository_of(e.request.path_only()) == Some(repo)).collect()
}

/// PUTs a minimal OCI manifest as `HOST/ns/app:v1`.
fn put_oci_manifest(sink: &mut RegistrySink, host: &str) -> Result<()> {
    sink.put_manifest(&manifest_blob("application/vnd.oci.image.manifest.v1+json"), &reference(host, "ns/app:v1"))
}

fn reference(host: &str, name: &str) -> Reference {
    Reference::parse(&format!("{host}/{name}")).expect("reference")
}

fn secret(secret: Secret, source: &str) -> Credential {
    Credential { secret, source: source.to_string() }
}

/// The scope, service and method of a token request, for a one-line comparison.
fn token_request(e: &Exchange) -> (String, Option<String>, Option<String>) {
    let params = token_params(&e.request);
    (
        e.request.method.clone(),
        param(&params, "scope").map(str::to_string),
        param(&params, "service").map(str::to_string),
    )
}

fn token_asked(scope: &str) -> (String, Option<String>, Option<String>) {
    ("GET".to_string(), Some(scope.to_string()), Some(TOKEN_SERVICE.to_string()))
}

#[test]
fn bearer_token_is_fetched_once_per_repository_scope_with_the_challenges_service() {
    let grants = Grants::default();
    let tokens = token_server(&grants, "token");
    let (server, emulator) = token_registry(vec![bearer_challenge(&tokens)], &grants, |_| false);
    let (user, pass) = ("robot", "p@ss:w0rd/+");
    let registry = connect(&server.host, Some(basic(user, pass, "the test")), quick_retry()).expect("connect");
    let mut sink = RegistrySink::new(registry, vec!["ns/app".into(), "other/app".into()], MIB);
    let manifest = manifest_blob("application/vnd.oci.image.manifest.v1+json");
    let layer = noise(2 * MIB + MIB / 2, 21);

    // Config, a layer in three chunks and a manifest: ten requests to ns/app, each needing the token.
    sink.put_blob(b"{}", &Digest::of(b"{}")).expect("config blob");
    let layer_digest = upload(&mut sink, &layer).expect("layer in chunks").to_string();
    sink.put_manifest(&manifest, &reference(&server.host, "ns/app:v1")).expect("manifest into ns/app");

    let asked = tokens.exchanges();
    assert_eq!(asked.len(), 1, "one token for the whole push to ns/app: {asked:?}");
    assert_eq!(token_request(&asked[0]), token_asked("repository:ns/app:pull,push"));
    assert_eq!(asked[0].request.path_only(), "/token");
    assert_eq!(asked[0].request.header("authorization"), Some(basic_value(user, pass).as_str()), "Basic to the realm");
    let app = in_repository(&server, "ns/app");
    assert!(app.len() >= 8, "{app:?}");
    for e in &app {
        assert_eq!(e.request.header("authorization"), Some("Bearer tok-1"), "{} {}", e.request.method, e.request.path);
        assert_ne!(e.status, 401, "{} {}", e.request.method, e.request.path);
    }

    // A second repository in the same run: its own scope, its own token, once; ns/app keeps its own.
    sink.put_manifest(&manifest, &reference(&server.host, "other/app:v1")).expect("manifest into other/app");
    sink.put_manifest(&manifest, &reference(&server.host, "other/app:v2")).expect("second tag in other/app");
    sink.put_manifest(&manifest, &reference(&server.host, "ns/app:v2")).expect("second tag in ns/app");

    let asked: Vec<_> = tokens.exchanges().iter().map(token_request).collect();
    assert_eq!(asked, [token_asked("repository:ns/app:pull,push"), token_asked("repository:other/app:pull,push")]);
    let other = in_repository(&server, "other/app");
    assert!(other.len() >= 2, "{other:?}");
    for e in &other {
        assert_eq!(e.request.header("authorization"), Some("Bearer tok-2"), "{} {}", e.request.method, e.request.path);
    }
    let last = in_repository(&server, "ns/app").pop().expect("ns/app requests");
    assert_eq!(last.request.path, "/v2/ns/app/manifests/v2");
    assert_eq!(last.request.header("authorization"), Some("Bearer tok-1"), "the ns/app token stays cached");
    let refused: Vec<String> =
        server.exchanges().iter().filter(|e| e.status == 401).map(|e| e.request.path.clone()).collect();
    assert_eq!(refused, ["/v2/"], "only the ping goes without a token");
    let emulator = state(&emulator);
    assert!(emulator.blobs.contains_key(&layer_digest));
    for key in ["ns/app:v1", "ns/app:v2", "other/app:v1", "other/app:v2"] {
        assert!(emulator.manifests.contains_key(key), "{key} stored");
    }
}

#[test]
fn a_refused_bearer_token_is_refreshed_once_and_the_push_goes_on() {
    let grants = Grants::default();
    let tokens = token_server(&grants, "token");
    // The registry takes tok-1 for three requests, then no more (a short-lived token expiring mid-upload).
    let mut uses = 0;
    let revoke_first = move |token: &str| {
        if token != "tok-1" {
            return false;
        }
        uses += 1;
        uses > 3
    };
    let (server, emulator) = token_registry(vec![bearer_challenge(&tokens)], &grants, revoke_first);
    let mut sink = sink_for(&server.host, Some(basic("robot", "s3cret", "the test")), MIB);
    let blob = noise(3 * MIB + 5, 22);

    // POST, PATCH, PATCH, then the third PATCH meets the refusal.
    let digest = upload(&mut sink, &blob).expect("the upload goes on with a fresh token").to_string();
    put_oci_manifest(&mut sink, &server.host).expect("manifest with the fresh token");

    assert!(stored(&emulator, &digest, &blob), "the registry must hold the exact blob");
    let asked: Vec<_> = tokens.exchanges().iter().map(token_request).collect();
    let scope = token_asked("repository:ns/app:pull,push");
    assert_eq!(asked, [scope.clone(), scope], "one token, then one refresh");
    let app = in_repository(&server, "ns/app");
    let refused: Vec<usize> = (0..app.len()).filter(|&i| app[i].status == 401).collect();
    assert_eq!(refused.len(), 1, "{app:?}");
    let (bad, retry) = (&app[refused[0]], &app[refused[0] + 1]);
    assert_eq!((bad.request.method.as_str(), bad.request.header("authorization")), ("PATCH", Some("Bearer tok-1")));
    assert_eq!(retry.request.method, bad.request.method, "the refused request is sent again");
    assert_eq!(retry.request.path, bad.request.path);
    assert!(retry.request.body == bad.request.body, "with the same chunk");
    for e in &app[refused[0] + 1..] {
        assert_eq!(e.request.header("authorization"), Some("Bearer tok-2"), "{} {}", e.request.method, e.request.path);
        assert!(e.status < 300, "{} {} -> {}", e.request.method, e.request.path, e.status);
    }
    let accepted: Vec<&Exchange> = app.iter().filter(|e| e.request.method == "PATCH" && e.status == 202).collect();
    assert_contiguous(&accepted, blob.len());
}

#[test]
fn a_refreshed_token_refused_again_is_one_clean_auth_error_without_a_loop() {
    let grants = Grants::default();
    let tokens = token_server(&grants, "token");
    // After three requests the registry refuses every token, the fresh one too.
    let mut uses = 0;
    let refuse_all_later = move |_: &str| {
        uses += 1;
        uses > 3
    };
    let (server, _emulator) = token_registry(vec![bearer_challenge(&tokens)], &grants, refuse_all_later);
    let (user, pass) = ("robot", "n0t-for-1ogs");
    let mut sink = sink_for(&server.host, Some(basic(user, pass, "DOCKER_AUTH_CONFIG")), MIB);
    let blob = noise(3 * MIB + 5, 23);

    let err = upload(&mut sink, &blob).expect_err("a refused fresh token must fail the upload");

    let msg = err.to_string();
    assert!(matches!(err, Error::Auth(_)), "an authentication error: {err:?}");
    assert!(single_line(&msg), "{msg:?}");
    assert!(msg.contains("DOCKER_AUTH_CONFIG"), "names the credential source: {msg}");
    assert!(msg.contains(&format!("docker login {}", server.host)), "says how to fix it: {msg}");
    assert!(!msg.contains(pass) && !msg.contains(&b64(format!("{user}:{pass}").as_bytes())), "{msg}");
    assert!(!msg.contains("tok-"), "never a token: {msg}");
    assert_eq!(tokens.exchanges().len(), 2, "one token and one refresh, no loop: {:?}", tokens.exchanges());
    let app = in_repository(&server, "ns/app");
    let refused: Vec<&Exchange> = app.iter().filter(|e| e.status == 401 && e.request.method != "DELETE").collect();
    assert_eq!(refused.len(), 2, "{app:?}");
    assert_eq!(refused[0].request.header("authorization"), Some("Bearer tok-1"));
    assert_eq!(refused[1].request.header("authorization"), Some("Bearer tok-2"));
    assert_eq!(refused[0].request.path, refused[1].request.path, "the same request, once more");
    let after = app.iter().skip_while(|e| e.request.header("authorization") != Some("Bearer tok-2")).skip(1);
    for e in after {
        assert_eq!(e.request.method, "DELETE", "nothing but cleaning up after the refusal: {e:?}");
    }
}

#[test]
fn identity_token_is_traded_by_an_oauth2_refresh_token_post() {
    let grants = Grants::default();
    let tokens = token_server(&grants, "access_token");
    let (server, emulator) = token_registry(vec![bearer_challenge(&tokens)], &grants, |_| false);
    // Specials that break a form body unless escaped.
    let refresh = "idt/0042+secret=value&more%";
    let credential = secret(Secret::IdentityToken { token: refresh.into() }, "identitytoken in config.json");
    let mut sink = sink_for(&server.host, Some(credential), MIB);

    sink.put_blob(b"{}", &Digest::of(b"{}")).expect("config blob");
    put_oci_manifest(&mut sink, &server.host).expect("manifest");

    let asked = tokens.exchanges();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let req = &asked[0].request;
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/token"));
    assert_eq!(req.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(req.header("authorization"), None, "the refresh token is in the form, not in a header");
    let form = token_params(req);
    let keys: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["grant_type", "refresh_token", "client_id", "service", "scope"], "{form:?}");
    assert_eq!(param(&form, "grant_type"), Some("refresh_token"));
    assert_eq!(
        param(&form, "refresh_token"),
        Some(refresh),
        "escaped in the form: {:?}",
        String::from_utf8_lossy(&req.body)
    );
    assert!(param(&form, "client_id").is_some_and(|c| !c.is_empty()), "{form:?}");
    assert_eq!(param(&form, "service"), Some(TOKEN_SERVICE));
    assert_eq!(param(&form, "scope"), Some("repository:ns/app:pull,push"));
    let app = in_repository(&server, "ns/app");
    assert!(!app.is_empty());
    for e in &app {
        assert_eq!(e.request.header("authorization"), Some("Bearer tok-1"), "{} {}", e.request.method, e.request.path);
        assert_ne!(e.status, 401);
    }
    assert!(state(&emulator).manifests.contains_key("ns/app:v1"));
}

#[test]
fn registry_token_is_sent_as_bearer_without_asking_the_token_server() {
    let grants = Grants::default();
    let registry_token = "reg-token-0042";
    grants_of(&grants).push((registry_token.to_string(), "repository:ns/app:pull,push".to_string()));
    let tokens = token_server(&grants, "token");
    let (server, emulator) = token_registry(vec![bearer_challenge(&tokens)], &grants, |_| false);
    let credential = secret(Secret::RegistryToken { token: registry_token.into() }, "registrytoken in config.json");
    let mut sink = sink_for(&server.host, Some(credential), MIB);

    sink.put_blob(b"{}", &Digest::of(b"{}")).expect("config blob");
    put_oci_manifest(&mut sink, &server.host).expect("manifest");

    assert!(tokens.exchanges().is_empty(), "no token request: {:?}", tokens.exchanges());
    let app = in_repository(&server, "ns/app");
    assert!(!app.is_empty());
    for e in &app {
        let want = format!("Bearer {registry_token}");
        assert_eq!(e.request.header("authorization"), Some(want.as_str()), "{} {}", e.request.method, e.request.path);
        assert_ne!(e.status, 401);
    }
    assert!(state(&emulator).manifests.contains_key("ns/app:v1"));
}

#[test]
fn anonymous_bearer_token_is_asked_without_authorization_and_the_push_works() {
    let grants = Grants::default();
    let tokens = token_server(&grants, "token");
    let (server, emulator) = token_registry(vec![bearer_challenge(&tokens)], &grants, |_| false);
    let mut sink = sink_for(&server.host, None, MIB);
    let blob = noise(MIB + 7, 24);

    let digest = upload(&mut sink, &blob).expect("anonymous upload").to_string();
    put_oci_manifest(&mut sink, &server.host).expect("anonymous manifest");

    let asked = tokens.exchanges();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(token_request(&asked[0]), token_asked("repository:ns/app:pull,push"));
    assert_eq!(asked[0].request.header("authorization"), None, "an anonymous token request");
    for e in &in_repository(&server, "ns/app") {
        assert_eq!(e.request.header("authorization"), Some("Bearer tok-1"), "{} {}", e.request.method, e.request.path);
    }
    assert!(stored(&emulator, &digest, &blob));
    assert!(state(&emulator).manifests.contains_key("ns/app:v1"));
}

#[test]
fn basic_credentials_go_on_every_route_after_the_pings_basic_challenge() {
    let (user, pass) = ("robot", "b4sic:pa@ss");
    let (server, emulator) = registry(Quirks::default(), Auth::Basic { user: user.into(), pass: pass.into() });
    let mut sink = sink_for(&server.host, Some(basic(user, pass, "the test")), MIB);
    let blob = noise(MIB + 3, 25);

    let digest = upload(&mut sink, &blob).expect("upload with Basic").to_string();
    put_oci_manifest(&mut sink, &server.host).expect("manifest with Basic");

    let all = server.exchanges();
    let (ping, rest) = all.split_first().expect("requests");
    assert_eq!((ping.request.path.as_str(), ping.status), ("/v2/", 401));
    assert_eq!(ping.request.header("authorization"), None, "the ping goes bare");
    assert!(rest.len() >= 4, "{rest:?}");
    let want = basic_value(user, pass);
    for e in rest {
        assert_eq!(e.request.header("authorization"), Some(want.as_str()), "{} {}", e.request.method, e.request.path);
        assert_ne!(e.status, 401, "{} {}", e.request.method, e.request.path);
    }
    assert!(stored(&emulator, &digest, &blob));
}

#[test]
fn basic_challenge_without_credentials_says_none_were_found_and_names_docker_login() {
    let (server, _emulator) = registry(Quirks::default(), Auth::Basic { user: "robot".into(), pass: "x".into() });
    let mut sink = sink_for(&server.host, None, MIB);

    let err = sink.put_blob(b"{}", &Digest::of(b"{}")).expect_err("a Basic registry refuses anonymous pushes");

    let msg = err.to_string();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert!(single_line(&msg), "{msg:?}");
    assert!(msg.contains("no credentials were found"), "{msg}");
    assert!(msg.contains(&format!("docker login {}", server.host)), "{msg}");
    let refused: Vec<String> =
        server.exchanges().iter().map(|e| format!("{} {}", e.request.method, e.status)).collect();
    assert_eq!(refused, ["GET 401", "HEAD 401"], "the ping, then the first request, not retried");
}

#[test]
fn a_registry_name_resolving_to_loopback_counts_as_loopback() {
    // Docker decides "loopback" by address: `127.1` is not a loopback name for `is_loopback_host` (it is no
    // dotted quad), but the resolver maps it to 127.0.0.1. Such a registry gets the loopback treatment for
    // TLS and may receive credentials over plain HTTP; the refusal for truly remote hosts is exercised by
    // the token-realm test below, whose realm host is compared by name.
    let bound = bind_as("127.1");
    let host = bound.host.clone();
    assert!(!is_loopback_host(&host), "precondition: {host} must not count as loopback by name");
    assert!(crate::tls::is_loopback(&host), "{host} resolves to 127.0.0.1");
    let emulator = Arc::new(Mutex::new(Emulator::new(&host, Quirks::default(), Auth::Anonymous)));
    let handle = emulator.clone();
    let server = bound.serve(move |req| state(&handle).handle(req));
    let mut reg =
        connect(&host, Some(basic("robot", "s3cret", "the test")), quick_retry()).expect("loopback by address");
    assert!(!reg.blob_exists("ns/app", &Digest::of(b"{}")).expect("HEAD"));
    assert!(!server.exchanges().is_empty(), "{host} was reached");
}

#[test]
fn token_realm_over_plain_http_on_a_non_loopback_name_never_receives_credentials() {
    // The registry is loopback (plain HTTP with credentials is fine there); its token realm is a
    // non-loopback name over plain HTTP (`127.1`, see the test above), as with a port-forwarded registry
    // whose realm is elsewhere. Either going anonymous or refusing is fine; sending the secret is not.
    let (user, pass) = ("robot", "realm-s3cret");
    let refresh = "refresh-s3cret";
    let credentials =
        [basic(user, pass, "the test"), secret(Secret::IdentityToken { token: refresh.into() }, "the test")];
    let mut leaks = Vec::new();
    for credential in credentials {
        let what = credential.to_string();
        let grants = Grants::default();
        let tokens = token_server_on(bind_as("127.1"), &grants, "token");
        assert!(!is_loopback_host(&tokens.host), "precondition: {} must not count as loopback", tokens.host);
        let (server, _emulator) = token_registry(vec![bearer_challenge(&tokens)], &grants, |_| false);
        let mut reg = connect(&server.host, Some(credential), quick_retry()).expect("connect to a loopback registry");

        let result = reg.blob_exists("ns/app", &Digest::of(b"{}"));

        for e in tokens.exchanges() {
            let body = String::from_utf8_lossy(&e.request.body).into_owned();
            if let Some(auth) = e.request.header("authorization") {
                leaks.push(format!("{what}: {} {} with Authorization: {auth}", e.request.method, e.request.path));
            }
            if body.contains(refresh) {
                leaks.push(format!("{what}: {} {} with the body {body}", e.request.method, e.request.path));
            }
        }
        if let Err(e) = result {
            assert!(matches!(e, Error::Auth(_)), "{what}: {e:?}");
        }
    }
    assert!(leaks.is_empty(), "credentials sent over plain HTTP to a non-loopback token realm: {leaks:#?}");
}

#[test]
fn several_challenges_prefer_bearer() {
    // (The rule itself is unit-tested in `authorize`.)
    // Against a registry: Basic and Bearer in one header, then in two headers.
    let (user, pass) = ("robot", "s3cret");
    for layout in ["one header", "two headers"] {
        let grants = Grants::default();
        let tokens = token_server(&grants, "token");
        let basic_challenge = r#"Basic realm="x""#.to_string();
        let challenges = match layout {
            "one header" => vec![format!("{basic_challenge}, {}", bearer_challenge(&tokens))],
            _ => vec![basic_challenge, bearer_challenge(&tokens)],
        };
        let (server, emulator) = token_registry(challenges, &grants, |_| false);
        let mut sink = sink_for(&server.host, Some(basic(user, pass, "the test")), MIB);

        sink.put_blob(b"{}", &Digest::of(b"{}")).unwrap_or_else(|e| panic!("{layout}: {e}"));

        let asked: Vec<_> = tokens.exchanges().iter().map(token_request).collect();
        assert_eq!(asked, [token_asked("repository:ns/app:pull,push")], "{layout}");
        for e in &in_repository(&server, "ns/app") {
            assert_eq!(e.request.header("authorization"), Some("Bearer tok-1"), "{layout}: {e:?}");
        }
        assert!(stored(&emulator, &sha256(b"{}"), b"{}"), "{layout}");
    }
}
