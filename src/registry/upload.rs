//! Chunked, resumable blob upload: the registry's [`BlobWriter`], and the single-PUT fallback.
//!
//! A layer's digest is known only when its stream ends, so the upload is the spec's chunked flow: POST to
//! open a session, PATCH each chunk with `Content-Range: START-END` (no `bytes=`, which Gitea refuses) and
//! `Content-Type`, follow the newest `Location` every time (the reference registry encodes the offset in
//! it), and PUT `?digest=` at the end. The chunk in flight stays in memory until the registry acknowledges
//! it; after a transient failure (the retry policy decides, see [`super::retry`]) the session is asked
//! where it stands (GET -> `Range`) and the upload resumes from the first byte the registry lacks, without
//! re-reading the context. A 413 from a proxy or a 416 from a registry with a chunk cap halves the chunk
//! size (to a 64 KiB floor, and never below the registry's `OCI-Chunk-Min-Length`: when the two cannot
//! be reconciled the upload fails at once rather than sending the same size again). When the session itself
//! is gone (404, as the reference registry answers after a lost acknowledgement) or PATCH is refused, the
//! writer returns a [`Restart`] signal and the pipeline re-streams the blob: the layer is deterministic, so
//! the second stream has the same digest. Memory is bounded by the chunk size.
//!
//! Registries that refuse PATCH get [`put_monolithic`]: one PUT whose body is produced again into a
//! bounded conduit while it is sent, through the same exchange layer (deadline, Ctrl-C) as every request.
//! Both paths accept the same closing statuses and check the registry's `Docker-Content-Digest`.

use std::io::{self, Write};
use std::sync::Arc;

use super::conduit;
use super::retry::{Retrier, SystemClock};
use super::{Registry, Request, Response};
use crate::digest::Digest;
use crate::error::{Error, Restart, Result, transient_status};
use crate::sink::BlobWriter;

/// Smallest chunk the 413/416 back-off goes down to.
pub const MIN_CHUNK: usize = 64 * 1024;
/// The largest `OCI-Chunk-Min-Length` honoured (memory is bounded by the chunk size).
const MAX_MIN_CHUNK: usize = 64 * 1024 * 1024;
/// Bytes in flight between the producer of a single PUT and the request sending it.
const STREAM_BUFFER: usize = 1024 * 1024;

/// An open upload session.
pub struct Upload<'r> {
    reg: &'r mut Registry,
    repo: String,
    location: String,
    /// Bytes written but not yet acknowledged (starting at `acked`).
    buf: Vec<u8>,
    /// Bytes the registry has.
    acked: u64,
    /// Shared chunk size, shrunk by 413/416 for the rest of the run.
    chunk: &'r std::cell::Cell<usize>,
    min_chunk: usize,
    finished: bool,
}

/// Opens an upload session in `repo`; returns its Location and the POST's answer.
fn open_session(reg: &mut Registry, repo: &str, within: Option<std::time::Instant>) -> Result<(String, Response)> {
    let mut req = Request::new("POST", format!("/v2/{repo}/blobs/uploads/"), "starting an upload")
        .push(repo)
        .header("Content-Length", "0");
    req.within = within;
    let resp = reg.send(&req)?;
    if resp.status != 202 {
        return Err(reg.status_error(&req, &resp));
    }
    let location = match resp.header("location").map(str::trim).filter(|l| !l.is_empty()) {
        Some(l) => reg.resolve(l)?.to_string(),
        None => {
            return Err(Error::protocol(format!("{} opened an upload session without a Location header", reg.host())));
        }
    };
    Ok((location, resp))
}

/// The newest Location of an upload answer (a registry that sends none keeps the old one); an unusable
/// one is a protocol error, never retried.
fn next_location(reg: &Registry, current: &str, resp: &Response) -> Result<String> {
    match resp.header("location").map(str::trim).filter(|l| !l.is_empty()) {
        Some(l) => Ok(reg.resolve(l)?.to_string()),
        None => Ok(current.to_string()),
    }
}

/// Whether a closing PUT's answer means the blob is stored, and under our digest.
fn check_closed(reg: &Registry, req: &Request<'_>, resp: &Response, digest: &Digest) -> Result<()> {
    if !matches!(resp.status, 200 | 201 | 204) {
        return Err(reg.status_error(req, resp));
    }
    if let Some(got) = resp.header("docker-content-digest")
        && got.trim() != digest.as_str()
    {
        return Err(Error::protocol(format!(
            "{} stored the blob as {} but docker-idpb computed {digest}; the upload was corrupted on the way",
            reg.host(),
            got.trim()
        )));
    }
    Ok(())
}

fn lost(resp: &Response) -> Error {
    Error::Restart(Restart::UploadLost(format!("the registry dropped the upload session ({})", resp.error_detail())))
}

impl<'r> Upload<'r> {
    /// Opens an upload session in `repo`.
    pub fn start(reg: &'r mut Registry, repo: &str, chunk: &'r std::cell::Cell<usize>) -> Result<Upload<'r>> {
        let (location, resp) = open_session(reg, repo, None)?;
        // Honoured up to a cap: a registry must not be able to make us buffer without bound.
        let min_chunk = resp
            .header("oci-chunk-min-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_MIN_CHUNK);
        Ok(Upload {
            reg,
            repo: repo.to_string(),
            location,
            buf: Vec::with_capacity(chunk.get().max(min_chunk)),
            acked: 0,
            chunk,
            min_chunk,
            finished: false,
        })
    }

    fn chunk_size(&self) -> usize {
        self.chunk.get().max(self.min_chunk).max(1)
    }

    /// Sends everything buffered, in chunks of the current size, resuming after failures. The buffer is
    /// shared with the request threads rather than copied, and reused afterwards when they are done.
    fn drain(&mut self) -> Result<()> {
        let data = Arc::new(std::mem::take(&mut self.buf));
        let mut start = 0;
        let policy = self.reg.retry_policy().clone();
        let mut retrier = Retrier::start(&policy, &SystemClock, None);
        while start < data.len() {
            let n = (data.len() - start).min(self.chunk_size());
            let end = self.acked + n as u64 - 1;
            let req = Request::new("PATCH", self.location.clone(), "uploading a chunk")
                .push(&self.repo)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{}-{end}", self.acked))
                .shared_body(Arc::clone(&data), start..start + n)
                .once()
                .within(retrier.deadline());
            let pending = data.len() - start;
            match self.reg.send(&req) {
                Ok(resp) if matches!(resp.status, 202 | 201 | 204) => {
                    self.location = next_location(self.reg, &self.location, &resp)?;
                    self.acked += n as u64;
                    start += n;
                    retrier = Retrier::start(&policy, &SystemClock, None);
                }
                Ok(resp) if resp.status == 413 || resp.status == 416 => {
                    // A proxy's body limit (413) or a registry's chunk cap (416): smaller chunks from now on,
                    // if the registry's minimum allows a smaller one at all.
                    let current = self.chunk_size();
                    let smaller = (self.chunk.get() / 2).max(MIN_CHUNK);
                    if smaller.max(self.min_chunk) >= current {
                        let why = if self.min_chunk >= current {
                            format!(" and requires chunks of at least {} bytes (OCI-Chunk-Min-Length)", self.min_chunk)
                        } else {
                            format!(" and {MIN_CHUNK} bytes is the smallest chunk docker-idpb sends")
                        };
                        let err = self.reg.status_error(&req, &resp);
                        return Err(Error::protocol(format!("{err}: a {current}-byte chunk was refused{why}")));
                    }
                    self.chunk.set(smaller);
                    // A 416 can also mean we are out of step; the resync settles which.
                    if resp.status == 416 {
                        start += self.resync(pending, retrier.deadline())?;
                    }
                }
                Ok(resp) if matches!(resp.status, 405 | 501) => {
                    // Registries without chunked upload (some proxies, Google Artifact Registry's legacy path).
                    return Err(Error::Restart(Restart::ChunkedRefused(format!(
                        "{} refused a chunked upload (PATCH answered {})",
                        self.reg.host(),
                        resp.status
                    ))));
                }
                Ok(resp) if resp.status == 404 => return Err(lost(&resp)),
                Ok(resp) if transient_status(resp.status) => {
                    let reason = format!("{} answered {} to upload blob chunk", self.reg.host(), resp.status);
                    let after = super::retry_after(&resp.headers);
                    let reg: &Registry = self.reg;
                    if !retrier.again(&reason, after, reg.cancel(), &mut |l| reg.announce(l))? {
                        let attempts = retrier.attempt();
                        return Err(self.reg.status_error(&req, &Response { attempts, ..resp }));
                    }
                    start += self.resync(pending, retrier.deadline())?;
                }
                Err(e) if e.is_transient() => {
                    let reg: &Registry = self.reg;
                    if !retrier.again(&e.to_string(), None, reg.cancel(), &mut |l| reg.announce(l))? {
                        return Err(e.with_attempts(retrier.attempt()));
                    }
                    start += self.resync(pending, retrier.deadline())?;
                }
                Ok(resp) => return Err(self.reg.status_error(&req, &resp)),
                Err(e) => return Err(e),
            }
        }
        // Reuse the buffer unless an abandoned request thread still holds it.
        self.buf = Arc::try_unwrap(data).unwrap_or_else(|_| Vec::with_capacity(self.chunk_size()));
        self.buf.clear();
        Ok(())
    }

    /// Asks the session how many bytes it has; returns how many of the `pending` unacknowledged bytes it
    /// already stored (to be skipped).
    fn resync(&mut self, pending: usize, within: std::time::Instant) -> Result<usize> {
        let req = Request::new("GET", self.location.clone(), "checking an upload").push(&self.repo).within(within);
        let resp = self.reg.send(&req)?;
        if resp.status == 404 {
            return Err(lost(&resp));
        }
        if !(200..300).contains(&resp.status) {
            return Err(self.reg.status_error(&req, &resp));
        }
        self.location = next_location(self.reg, &self.location, &resp)?;
        // Range: 0-N means bytes 0..=N are stored; "0-0" is ambiguous (nothing or one byte): registries send
        // it for an empty session.
        let have = match resp.header("range").and_then(parse_range_end) {
            Some(end) if end > 0 => end + 1,
            _ => 0,
        };
        if have < self.acked || have > self.acked + pending as u64 {
            // The session has less than we know was acknowledged, or more than we sent: start over.
            return Err(Error::Restart(Restart::UploadLost(format!(
                "the upload session is at byte {have}, expected {}..{}",
                self.acked,
                self.acked + pending as u64
            ))));
        }
        let skip = (have - self.acked) as usize;
        self.acked = have;
        Ok(skip)
    }

    /// Sends whatever is buffered and closes the session under `digest`.
    fn finish(&mut self, digest: &Digest, size: u64) -> Result<()> {
        self.drain()?;
        if self.acked != size {
            return Err(Error::protocol(format!("upload of {digest} sent {} bytes, expected {size}", self.acked)));
        }
        let url = self.reg.resolve(&self.location)?.with_query("digest", digest.as_str());
        let req = Request::new("PUT", url.to_string(), "finishing an upload")
            .push(&self.repo)
            .header("Content-Length", "0")
            .header("Content-Type", "application/octet-stream");
        let resp = self.reg.send(&req)?;
        if resp.status == 404 && self.reg.blob_exists(&self.repo, digest)? {
            // A retried PUT whose first attempt succeeded.
            self.finished = true;
            return Ok(());
        }
        if resp.status == 404 {
            return Err(lost(&resp));
        }
        check_closed(self.reg, &req, &resp, digest)?;
        self.finished = true;
        Ok(())
    }

    fn cancel_session(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        // Even when cancelled: the session should not linger. One attempt, errors ignored.
        let _ = self.reg.delete_session(&self.location.clone(), &self.repo.clone());
    }
}

/// How a whole-blob PATCH ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Whole {
    /// Stored and verified.
    Stored,
    /// The registry refused a body that large (413/416), or the stream did not fit one exchange's time:
    /// send it in chunks instead (remember the refusal for the run).
    TooLarge,
    /// A transient failure: chunks, which resume, will do better.
    Failed,
}

/// Sends a blob of known digest and size, read from `reader`, as one streamed PATCH (`Content-Range:
/// 0-END`, so Gitea accepts it) and closes the session: one request per blob instead of one per chunk,
/// which is what a copy between registries spends its time on. The bytes are verified while they stream;
/// a mismatch fails the PATCH before the closing PUT. Memory is the conduit's buffer.
pub fn put_whole(
    reg: &mut Registry,
    repo: &str,
    digest: &Digest,
    size: u64,
    reader: Box<dyn io::Read + Send>,
) -> Result<Whole> {
    let (location, _) = open_session(reg, repo, None)?;
    let req = Request::new("PATCH", location.clone(), "uploading a blob")
        .push(repo)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("0-{}", size.saturating_sub(1)));
    let (writer, body) = conduit::conduit(STREAM_BUFFER);
    let closer = writer.closer();
    let watch = writer.closer();
    let (sent, produced) = std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut w = writer;
            let r = crate::sink::copy_checked(&mut w, digest, size, reader);
            if let Err(e) = &r {
                w.fail(e.to_string());
            }
            r
        });
        let sent = reg.send_streamed(&req, body, closer, size);
        let produced = producer.join().unwrap_or_else(|_| Err(Error::protocol("the blob reader stopped")));
        (sent, produced)
    });
    let outcome = match (&sent, &produced) {
        (_, Err(Error::Cancelled)) | (Err(Error::Cancelled), _) => Err(Error::Cancelled),
        (_, Err(_)) if watch.writer_failed_first() => Err(produced.err().unwrap_or(Error::Cancelled)),
        (Ok(resp), Ok(())) if matches!(resp.status, 202 | 201 | 204) => {
            let location = next_location(reg, &location, resp)?;
            let url = reg.resolve(&location)?.with_query("digest", digest.as_str());
            let close = Request::new("PUT", url.to_string(), "finishing an upload")
                .push(repo)
                .header("Content-Length", "0")
                .header("Content-Type", "application/octet-stream");
            let resp = reg.send(&close)?;
            check_closed(reg, &close, &resp, digest)?;
            return Ok(Whole::Stored);
        }
        (Ok(resp), _) if matches!(resp.status, 413 | 416 | 405 | 501) => Ok(Whole::TooLarge),
        (Ok(resp), _) if resp.status == 404 => Err(lost(resp)),
        (Ok(resp), _) if transient_status(resp.status) => Ok(Whole::Failed),
        (Err(e), _) if e.is_transient() => Ok(Whole::Failed),
        (Ok(resp), _) => Err(reg.status_error(&req, resp)),
        (Err(_), _) => Err(sent.err().unwrap_or(Error::Cancelled)),
    };
    let _ = reg.delete_session(&location, repo);
    outcome
}

/// Sends a blob of known digest as one PUT (for registries that refuse PATCH). The bytes are produced
/// again into a bounded conduit by a scoped thread while the request sends them, so memory stays bounded
/// whatever the blob size. Transient failures of the exchange are retried by the policy, producing the
/// bytes again; the producer's own failure (a file unreadable mid-stream) is reported as itself, never
/// retried.
pub fn put_monolithic(
    reg: &mut Registry,
    repo: &str,
    digest: &Digest,
    size: u64,
    produce: &crate::sink::Produce<'_>,
) -> Result<()> {
    let policy = reg.retry_policy().clone();
    let mut retrier = Retrier::start(&policy, &SystemClock, None);
    loop {
        let (location, _) = open_session(reg, repo, Some(retrier.deadline()))?;
        let url = reg.resolve(&location)?.with_query("digest", digest.as_str());
        let req = Request::new("PUT", url.to_string(), "uploading a blob")
            .push(repo)
            .header("Content-Type", "application/octet-stream")
            .within(retrier.deadline());
        let (writer, reader) = conduit::conduit(STREAM_BUFFER);
        let closer = writer.closer();
        let watch = writer.closer();
        let (sent, produced) = std::thread::scope(|scope| {
            let producer = scope.spawn(move || {
                let mut w = writer;
                let r = produce(&mut w);
                if let Err(e) = &r {
                    // The request must not end as if the blob were complete.
                    w.fail(e.to_string());
                }
                r
            });
            let sent = reg.send_streamed(&req, reader, closer, size);
            let produced = producer.join().unwrap_or_else(|_| Err(Error::Layout("the blob producer stopped".into())));
            (sent, produced)
        });
        // Whose failure is it? The producer's own, unless it only saw the request go away.
        let producer_first = watch.writer_failed_first();
        match (&sent, &produced) {
            (_, Err(Error::Cancelled)) | (Err(Error::Cancelled), _) => {
                let _ = reg.delete_session(&location, repo);
                return Err(Error::Cancelled);
            }
            (_, Err(_)) if producer_first || sent.as_ref().is_ok_and(Response::ok) => {
                let _ = reg.delete_session(&location, repo);
                return produced;
            }
            (Ok(resp), Ok(())) if resp.ok() => return check_closed(reg, &req, resp, digest),
            _ => {}
        }
        let _ = reg.delete_session(&location, repo);
        let (error, after) = match sent {
            Ok(resp) => {
                let after = super::retry_after(&resp.headers);
                (reg.status_error(&req, &resp), after)
            }
            Err(e) => (e, None),
        };
        if !error.is_transient() {
            return Err(error.with_attempts(retrier.attempt()));
        }
        let r: &Registry = reg;
        if !retrier.again(&error.to_string(), after, r.cancel(), &mut |l| r.announce(l))? {
            return Err(error.with_attempts(retrier.attempt()));
        }
    }
}

/// "0-1234" or "bytes=0-1234" -> 1234.
fn parse_range_end(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_prefix("bytes=").unwrap_or(v);
    v.split_once('-')?.1.trim().parse().ok()
}

impl Write for Upload<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // Fill the buffer up to one chunk and send it when full: the buffer never holds more than a chunk.
        let n = data.len().min(self.chunk_size().saturating_sub(self.buf.len())).max(1).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk_size() {
            self.drain().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter for Upload<'_> {
    fn commit(mut self: Box<Self>, digest: &Digest, size: u64) -> Result<()> {
        let result = self.finish(digest, size);
        if result.is_err() {
            self.cancel_session();
        }
        result
    }

    fn abort(mut self: Box<Self>) -> Result<()> {
        self.cancel_session();
        Ok(())
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        self.cancel_session();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn range_header_forms() {
        assert_eq!(super::parse_range_end("0-1023"), Some(1023));
        assert_eq!(super::parse_range_end("bytes=0-99"), Some(99));
        assert_eq!(super::parse_range_end("0-0"), Some(0));
        assert_eq!(super::parse_range_end("junk"), None);
    }
}
