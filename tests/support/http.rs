//! Talking to servers directly, to check what the binary left in a registry or to poke it by hand.
//!
//! Plain `http://` goes over a raw `TcpStream` (one HTTP/1.1 request, `Connection: close`, chunked bodies
//! decoded), so a test sees exactly what was on the wire; `https://` goes through `curl` with the test CA,
//! which keeps TLS out of the test code. [`fetch`] picks by scheme and takes a [`Request`], which holds
//! whatever a request needs beyond method and URL. The `try_` functions report transport failures
//! (connection refused while a server starts) instead of panicking.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A response; header names keep the server's spelling, [`HttpResponse::header`] ignores case.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): status {} {}", self.status, self.text()))
    }
}

/// A request to send: method and URL, plus headers, a body and the CA that HTTPS trusts, each if needed.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    method: &'a str,
    url: &'a str,
    ca: Option<&'a Path>,
    headers: &'a [(&'a str, &'a str)],
    body: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// `method url` with no headers, no body and no CA (HTTPS then checks no certificate).
    pub fn new(method: &'a str, url: &'a str) -> Request<'a> {
        Request { method, url, ca: None, headers: &[], body: None }
    }

    /// Trusts `ca` for HTTPS (or checks nothing when `None`).
    pub fn ca(self, ca: Option<&'a Path>) -> Request<'a> {
        Request { ca, ..self }
    }

    pub fn headers(self, headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
        Request { headers, ..self }
    }

    pub fn body(self, body: Option<&'a [u8]>) -> Request<'a> {
        Request { body, ..self }
    }
}

/// `GET url` over plain HTTP.
pub fn http_get(url: &str) -> HttpResponse {
    http_request("GET", url, &[], None)
}

/// Any request over plain HTTP on a raw `TcpStream`.
pub fn http_request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpResponse {
    let request = Request::new(method, url).headers(headers).body(body);
    expect(request, try_raw(request))
}

/// `GET url` over HTTPS with curl, trusting `ca` (or nothing checked when `None`).
pub fn curl_get(url: &str, ca: Option<&Path>) -> HttpResponse {
    curl_request(Request::new("GET", url).ca(ca))
}

/// Any request with curl.
pub fn curl_request(request: Request) -> HttpResponse {
    expect(request, try_curl(request))
}

/// [`http_request`] for `http://`, [`curl_request`] otherwise.
pub fn fetch(request: Request) -> HttpResponse {
    expect(request, try_fetch(request))
}

/// [`fetch`] that reports transport failures.
pub fn try_fetch(request: Request) -> Result<HttpResponse, String> {
    if request.url.starts_with("http://") { try_raw(request) } else { try_curl(request) }
}

#[track_caller]
fn expect(request: Request, result: Result<HttpResponse, String>) -> HttpResponse {
    result.unwrap_or_else(|e| panic!("{} {}: {e}", request.method, request.url))
}

fn try_raw(request: Request) -> Result<HttpResponse, String> {
    let Request { method, url, headers, body, .. } = request;
    let rest = url.strip_prefix("http://").ok_or("not an http:// URL")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    request.push_str("User-Agent: idpb-tests\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");

    let io = |e: std::io::Error| format!("{authority}: {e}");
    let mut stream = TcpStream::connect(authority).map_err(io)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.write_all(request.as_bytes()).map_err(io)?;
    stream.write_all(body.unwrap_or_default()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;

    let mut response = parse_response(&raw)?;
    if method == "HEAD" {
        response.body.clear();
    } else if response.header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        response.body = dechunk(&response.body)?;
    } else if let Some(length) = response.header("Content-Length").and_then(|v| v.trim().parse().ok()) {
        response.body.truncate(length);
    }
    Ok(response)
}

fn try_curl(request: Request) -> Result<HttpResponse, String> {
    let Request { method, url, ca, headers, body } = request;
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--noproxy", "*", "--max-time", "60"]);
    // `-X HEAD` would make curl wait for a body that never comes.
    if method == "HEAD" {
        cmd.arg("--head");
    } else {
        cmd.args(["--include", "--request", method]);
    }
    match ca {
        Some(ca) => cmd.arg("--cacert").arg(ca),
        None => cmd.arg("--insecure"),
    };
    for (name, value) in headers {
        cmd.arg("--header").arg(format!("{name}: {value}"));
    }
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(url).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());

    let mut child = cmd.spawn().map_err(|e| format!("cannot run curl: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("curl has no stdin")?;
    let input = body.unwrap_or_default().to_vec();
    let writer = thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().map_err(|e| format!("curl: {e}"))?;
    let _ = writer.join();
    if !output.status.success() {
        return Err(format!("curl failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim()));
    }
    // curl has already decoded chunked bodies, whatever the headers still say.
    parse_response(&output.stdout)
}

/// Status line, headers and the rest; interim `1xx` responses are skipped.
fn parse_response(mut raw: &[u8]) -> Result<HttpResponse, String> {
    loop {
        let end =
            find(raw, b"\r\n\r\n").ok_or_else(|| format!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        raw = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        if (100..200).contains(&status) {
            continue;
        }
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
            .collect();
        return Ok(HttpResponse { status, headers, body: raw.to_vec() });
    }
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n").ok_or("truncated chunk size")?;
        let size_field = String::from_utf8_lossy(&raw[..line_end]);
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|e| format!("bad chunk size {size_hex:?}: {e}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = raw.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        raw = raw.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Standard base64 with padding (for `Authorization: Basic` and docker `config.json` `auth` fields).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let bytes = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Basic base64(user:pass)`.
pub fn basic_auth(user: &str, pass: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()))
}
