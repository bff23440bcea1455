//! A gzip decoder as a `Read` adapter: for reading a base image's layers (their tar headers), streamed.
//!
//! miniz_oxide inflates raw deflate; the member framing (RFC 1952) is parsed here: the 10-byte header
//! with its optional extra field, name, comment and header CRC, then the deflate stream, then the 8-byte
//! trailer. Several members in a row (what `pigz` and concatenation produce) are read as one stream. The
//! CRC is not checked: the blob's sha256 is what vouches for its bytes. Memory is the 32 KiB window and
//! two fixed buffers.

use std::io::{self, Read};

use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZFlush, MZStatus};

const BUF: usize = 64 * 1024;

pub struct GzipReader<R: Read> {
    inner: R,
    state: Box<InflateState>,
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// Inside a member's deflate stream (false: at a member boundary).
    in_member: bool,
    eof: bool,
}

impl<R: Read> GzipReader<R> {
    pub fn new(inner: R) -> GzipReader<R> {
        GzipReader {
            inner,
            state: InflateState::new_boxed(DataFormat::Raw),
            input: vec![0; BUF],
            start: 0,
            end: 0,
            in_member: false,
            eof: false,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.inner.read(&mut self.input[self.end..])?;
        if n == 0 {
            self.eof = true;
        }
        self.end += n;
        Ok(())
    }

    /// `n` more input bytes, reading as needed; an error if the stream ends first.
    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.start == self.end {
                self.fill()?;
                if self.start == self.end {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated gzip stream"));
                }
            }
            let k = (n - out.len()).min(self.end - self.start);
            out.extend_from_slice(&self.input[self.start..self.start + k]);
            self.start += k;
        }
        Ok(out)
    }

    /// Bytes up to and including a NUL (a header's name or comment).
    fn skip_zero_terminated(&mut self) -> io::Result<()> {
        loop {
            if self.take(1)?[0] == 0 {
                return Ok(());
            }
        }
    }

    /// Reads a member header; false at the clean end of the stream.
    fn header(&mut self) -> io::Result<bool> {
        if self.start == self.end {
            self.fill()?;
            if self.start == self.end {
                return Ok(false);
            }
        }
        let h = self.take(10)?;
        if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a gzip stream"));
        }
        let flags = h[3];
        if flags & 4 != 0 {
            let len = self.take(2)?;
            self.take(usize::from(u16::from_le_bytes([len[0], len[1]])))?;
        }
        if flags & 8 != 0 {
            self.skip_zero_terminated()?;
        }
        if flags & 16 != 0 {
            self.skip_zero_terminated()?;
        }
        if flags & 2 != 0 {
            self.take(2)?;
        }
        self.state.reset(DataFormat::Raw);
        Ok(true)
    }
}

impl<R: Read> Read for GzipReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_member {
                if !self.header()? {
                    return Ok(0);
                }
                self.in_member = true;
            }
            if self.start == self.end && !self.eof {
                self.fill()?;
            }
            let r = inflate(&mut self.state, &self.input[self.start..self.end], out, MZFlush::None);
            self.start += r.bytes_consumed;
            match r.status {
                Ok(MZStatus::StreamEnd) => {
                    self.take(8)?; // CRC-32 and size
                    self.in_member = false;
                    if r.bytes_written > 0 {
                        return Ok(r.bytes_written);
                    }
                }
                Ok(_) if r.bytes_written > 0 => return Ok(r.bytes_written),
                Ok(_) if self.eof && self.start == self.end => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated gzip stream"));
                }
                Ok(_) => {}
                Err(miniz_oxide::MZError::Buf) if !(self.eof && self.start == self.end) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad deflate data: {e:?}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_what_our_encoder_and_gzip_wrote() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8 ^ (i / 7919) as u8).collect();
        let mut gz = crate::gzip::GzipWriter::new(Vec::new(), 1);
        gz.write_all(&data).unwrap();
        let bytes = gz.finish().unwrap();
        let mut back = Vec::new();
        GzipReader::new(&bytes[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
        // Two members in a row, the second from the system's gzip with a file name in its header.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("printf 'second member' > /tmp/idpb-gunzip-test.txt && gzip -c /tmp/idpb-gunzip-test.txt")
            .output()
            .unwrap();
        let mut two = bytes.clone();
        two.extend_from_slice(&out.stdout);
        let mut back = Vec::new();
        GzipReader::new(&two[..]).read_to_end(&mut back).unwrap();
        assert_eq!(&back[data.len()..], b"second member");
        assert!(GzipReader::new(&b"not gzip at all"[..]).read_to_end(&mut Vec::new()).is_err());
        assert!(GzipReader::new(&bytes[..bytes.len() / 2]).read_to_end(&mut Vec::new()).is_err());
    }
}
