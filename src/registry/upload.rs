//! Chunked, resumable blob upload: the registry's [`BlobWriter`].
//!
//! A layer's digest is known only when its stream ends, so the upload is the spec's chunked flow: POST to
//! open a session, PATCH each chunk with `Content-Range: START-END` (no `bytes=`, which Gitea refuses) and
//! `Content-Type`, follow the newest `Location` every time (the reference registry encodes the offset in
//! it), and PUT `?digest=` at the end. The chunk in flight stays in memory until the registry acknowledges
//! it; after a failure the session is asked where it stands (GET -> `Range`) and the upload resumes from the
//! first byte the registry lacks, without re-reading the context. A 413 from a proxy or a 416 from a
//! registry with a chunk cap halves the chunk size (to a 64 KiB floor) for the rest of the run. When the
//! session itself is gone (404, as the reference registry answers after a lost acknowledgement), the error
//! is [`Error::UploadLost`] and the pipeline re-streams the blob from its first byte: the layer is
//! deterministic, so the second stream has the same digest. Memory is bounded by the chunk size.

use std::io::{self, Write};

use super::{Registry, Request, Response};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::sink::BlobWriter;

/// Smallest chunk the 413/416 back-off goes down to.
pub const MIN_CHUNK: usize = 64 * 1024;
/// The largest `OCI-Chunk-Min-Length` honoured (memory is bounded by the chunk size).
const MAX_MIN_CHUNK: usize = 64 * 1024 * 1024;

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

impl<'r> Upload<'r> {
    /// Opens an upload session in `repo`.
    pub fn start(reg: &'r mut Registry, repo: &str, chunk: &'r std::cell::Cell<usize>) -> Result<Upload<'r>> {
        let req = Request::new("POST", format!("/v2/{repo}/blobs/uploads/"), "start blob upload")
            .repository(repo)
            .header("Content-Length", "0");
        let resp = reg.send(&req)?;
        if resp.status != 202 {
            return Err(reg.status_error(&req, &resp));
        }
        let location = location(reg, &req, &resp)?;
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
        let data = std::sync::Arc::new(std::mem::take(&mut self.buf));
        let mut start = 0;
        let mut failures = 0u32;
        let started = std::time::Instant::now();
        while start < data.len() {
            let n = (data.len() - start).min(self.chunk_size());
            let end = self.acked + n as u64 - 1;
            let req = Request::new("PATCH", self.location.clone(), "upload blob chunk")
                .repository(&self.repo)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{}-{end}", self.acked))
                .shared_body(std::sync::Arc::clone(&data), start..start + n)
                .no_retry();
            let outcome = self.reg.send(&req);
            let give_up =
                |failures: u32, reg: &Registry| failures >= reg.retry.attempts || started.elapsed() >= reg.retry.budget;
            let pending = data.len() - start;
            match outcome {
                Ok(resp) if matches!(resp.status, 202 | 201 | 204) => {
                    self.location = location(self.reg, &req, &resp).unwrap_or_else(|_| self.location.clone());
                    self.acked += n as u64;
                    start += n;
                    failures = 0;
                }
                Ok(resp) if (resp.status == 413 || resp.status == 416) && self.chunk.get() > MIN_CHUNK => {
                    // A proxy's body limit (413) or a registry's chunk cap (416): smaller chunks from now on.
                    // A 416 can also mean we are out of step; the resync below settles which.
                    self.chunk.set((self.chunk.get() / 2).max(MIN_CHUNK));
                    if resp.status == 416 {
                        start += self.resync(pending)?;
                    }
                }
                Ok(resp) if matches!(resp.status, 405 | 501) => {
                    // Registries without chunked upload (some proxies, Google Artifact Registry's legacy path).
                    return Err(Error::ChunkedRefused(format!(
                        "{} refused a chunked upload (PATCH answered {})",
                        self.reg.host(),
                        resp.status
                    )));
                }
                Ok(resp) if resp.status == 404 => {
                    return Err(Error::UploadLost(format!(
                        "the registry dropped the upload session ({})",
                        resp.error_detail()
                    )));
                }
                Ok(resp) if super::retryable_status(resp.status) && !give_up(failures + 1, self.reg) => {
                    failures += 1;
                    self.reg.sleep(super::retry_delay(&resp, &self.reg.retry, failures))?;
                    start += self.resync(pending)?;
                }
                Err(Error::Registry(_)) if !give_up(failures + 1, self.reg) => {
                    failures += 1;
                    self.reg.sleep(self.reg.retry.delay(failures))?;
                    start += self.resync(pending)?;
                }
                Ok(resp) => {
                    let err = self.reg.status_error(&req, &resp);
                    return Err(with_attempts(err, failures + 1));
                }
                Err(e) => return Err(with_attempts(e, failures + 1)),
            }
        }
        // Reuse the buffer unless an abandoned request thread still holds it.
        self.buf = std::sync::Arc::try_unwrap(data).unwrap_or_else(|_| Vec::with_capacity(self.chunk_size()));
        self.buf.clear();
        Ok(())
    }

    /// Asks the session how many bytes it has; returns how many of the `pending` unacknowledged bytes it
    /// already stored (to be skipped).
    fn resync(&mut self, pending: usize) -> Result<usize> {
        let req = Request::new("GET", self.location.clone(), "check upload status").repository(&self.repo);
        let resp = self.reg.send(&req)?;
        if resp.status == 404 {
            return Err(Error::UploadLost(format!(
                "the registry dropped the upload session ({})",
                resp.error_detail()
            )));
        }
        if !(200..300).contains(&resp.status) {
            return Err(self.reg.status_error(&req, &resp));
        }
        if let Ok(loc) = location(self.reg, &req, &resp) {
            self.location = loc;
        }
        // Range: 0-N means bytes 0..=N are stored; "0-0" is ambiguous (nothing or one byte): registries send
        // it for an empty session.
        let have = match resp.header("range").and_then(parse_range_end) {
            Some(end) if end > 0 => end + 1,
            _ => 0,
        };
        if have < self.acked || have > self.acked + pending as u64 {
            // The session has less than we know was acknowledged, or more than we sent: start over.
            return Err(Error::UploadLost(format!(
                "the upload session is at byte {have}, expected {}..{}",
                self.acked,
                self.acked + pending as u64
            )));
        }
        let skip = (have - self.acked) as usize;
        self.acked = have;
        Ok(skip)
    }

    /// Sends whatever is buffered and closes the session under `digest`.
    fn finish(&mut self, digest: &Digest, size: u64) -> Result<()> {
        self.drain()?;
        if self.acked != size {
            return Err(Error::Registry(format!("upload of {digest} sent {} bytes, expected {size}", self.acked)));
        }
        let sep = if self.location.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}digest={}", self.location, digest);
        let req = Request::new("PUT", url, "finish blob upload")
            .repository(&self.repo)
            .header("Content-Length", "0")
            .header("Content-Type", "application/octet-stream");
        let resp = self.reg.send(&req)?;
        if resp.status == 404 && self.reg.blob_exists(&self.repo, digest)? {
            // A retried PUT whose first attempt succeeded.
            self.finished = true;
            return Ok(());
        }
        if resp.status == 404 {
            return Err(Error::UploadLost(format!(
                "the registry dropped the upload session ({})",
                resp.error_detail()
            )));
        }
        if resp.status != 201 && resp.status != 204 && resp.status != 200 {
            return Err(self.reg.status_error(&req, &resp));
        }
        if let Some(got) = resp.header("docker-content-digest")
            && got.trim() != digest.as_str()
        {
            return Err(Error::Registry(format!(
                "{} stored the blob as {} but docker-idpb computed {digest}; the upload was corrupted on the way",
                self.reg.host(),
                got.trim()
            )));
        }
        self.finished = true;
        Ok(())
    }

    fn cancel_session(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        // Even when cancelled: the session should not linger. One attempt, errors ignored.
        let req = Request::new("DELETE", self.location.clone(), "cancel blob upload").repository(&self.repo);
        let _ = self.reg.delete_session(&req);
    }
}

/// Sends a blob of known digest as one PUT (for registries that refuse PATCH). The bytes are produced a
/// second time into a pipe by a scoped thread rather than buffered: memory stays bounded whatever the blob
/// size, at the cost of compressing the layer twice, which only these registries pay.
pub fn put_monolithic(
    reg: &mut Registry,
    repo: &str,
    digest: &Digest,
    size: u64,
    produce: &crate::sink::Produce<'_>,
) -> Result<()> {
    let mut failures = 0;
    loop {
        let post = Request::new("POST", format!("/v2/{repo}/blobs/uploads/"), "start blob upload")
            .repository(repo)
            .header("Content-Length", "0");
        let resp = reg.send(&post)?;
        if resp.status != 202 {
            return Err(reg.status_error(&post, &resp));
        }
        let loc = location(reg, &post, &resp)?;
        let sep = if loc.contains('?') { '&' } else { '?' };
        let url = format!("{loc}{sep}digest={digest}");
        let (mut reader, mut writer) =
            std::io::pipe().map_err(|e| Error::Registry(format!("cannot create pipe: {e}")))?;
        let (sent, produced) = std::thread::scope(|scope| {
            let producer = scope.spawn(move || {
                let r = produce(&mut writer);
                drop(writer);
                r
            });
            let sent = reg.put_stream(&url, repo, size, &mut reader);
            drop(reader);
            let produced = producer.join().unwrap_or_else(|_| Err(Error::Registry("blob producer failed".into())));
            (sent, produced)
        });
        let retryable = match &sent {
            Ok(r) if r.status == 201 || r.status == 204 => {
                produced?;
                return Ok(());
            }
            Ok(r) => super::retryable_status(r.status),
            Err(Error::Registry(_)) => true,
            Err(_) => false,
        };
        if let Err(Error::Cancelled) = produced {
            return Err(Error::Cancelled);
        }
        let _ = reg.delete_session(&Request::new("DELETE", loc.clone(), "cancel blob upload").repository(repo));
        failures += 1;
        if !retryable || failures >= reg.retry.attempts {
            let req = Request::new("PUT", url, "upload blob in one request").repository(repo);
            return Err(with_attempts(
                match sent {
                    Ok(r) => reg.status_error(&req, &r),
                    Err(e) => e,
                },
                failures,
            ));
        }
        let delay = match &sent {
            Ok(r) => super::retry_delay(r, &reg.retry, failures),
            Err(_) => reg.retry.delay(failures),
        };
        reg.sleep(delay)?;
    }
}

impl Registry {
    /// One DELETE of an upload session, even when cancelled, waiting at most 2 s; errors ignored by callers.
    fn delete_session(&mut self, req: &Request<'_>) -> Result<Response> {
        let url = self.resolve(&req.url);
        let auth = if self.is_registry_url(&url) {
            self.authorization(req.repository.as_deref(), false).ok().flatten()
        } else {
            None
        };
        self.raw_with(req, auth.as_deref(), false, std::time::Duration::from_secs(2))
    }
}

fn with_attempts(e: Error, attempts: u32) -> Error {
    match e {
        Error::Registry(m) if attempts > 1 => Error::Registry(format!("{m} (gave up after {attempts} attempts)")),
        other => other,
    }
}

/// The Location of an upload response, resolved; a registry that sends none keeps the old one.
fn location(reg: &Registry, req: &Request<'_>, resp: &Response) -> Result<String> {
    match resp.header("location") {
        Some(l) if !l.trim().is_empty() => Ok(reg.resolve(l.trim())),
        _ if req.method == "POST" => {
            Err(Error::Registry(format!("{} opened an upload session without a Location header", reg.host())))
        }
        _ => Ok(reg.resolve(&req.url)),
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
