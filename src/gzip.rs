//! A streaming gzip encoder as a `Write` adapter.
//!
//! miniz_oxide gives raw deflate; the gzip member framing (RFC 1952) is ours: a fixed 10-byte header with
//! mtime 0 and OS "unknown" so the bytes depend only on the input, and a trailer of CRC-32 and input size.
//! Input is handed to the compressor as it arrives and compressed output is forwarded through a fixed 64 KiB
//! buffer, so memory is constant whatever the stream length. miniz's output does depend on how input is
//! split across calls, so input is first gathered into fixed 256 KiB blocks: the compressor always sees the
//! same calls for the same stream, and the same tar stream always gives the same gzip bytes whatever the
//! `write` pattern of the stages above. This is the one stage a parallel encoder will replace later.

use std::io::{self, Write};

use miniz_oxide::DataFormat;
use miniz_oxide::deflate::core::{CompressorOxide, TDEFLFlush, TDEFLStatus, compress};

/// Default deflate level: 1 is 5x faster than 6 with miniz for a few percent of size (see README figures).
pub const DEFAULT_LEVEL: u8 = 1;

const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
const OUT_BUF: usize = 64 * 1024;
const IN_BLOCK: usize = 256 * 1024;

/// Compresses everything written into a single gzip member written to `inner`.
pub struct GzipWriter<W: Write> {
    inner: W,
    compressor: Box<CompressorOxide>,
    crc: crc32fast::Hasher,
    size: u32,
    out: Vec<u8>,
    input: Vec<u8>,
    header_written: bool,
}

impl<W: Write> GzipWriter<W> {
    /// A new encoder at `level` (0-10, miniz's scale).
    pub fn new(inner: W, level: u8) -> Self {
        let mut compressor = Box::<CompressorOxide>::default();
        compressor.set_format_and_level(DataFormat::Raw, level.min(10));
        GzipWriter {
            inner,
            compressor,
            crc: crc32fast::Hasher::new(),
            size: 0,
            out: vec![0; OUT_BUF],
            input: Vec::with_capacity(IN_BLOCK),
            header_written: false,
        }
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            self.inner.write_all(&HEADER)?;
            self.header_written = true;
        }
        Ok(())
    }

    /// Runs the compressor over `input` with `flush`, forwarding output; returns when input is consumed
    /// (and, for `Finish`, when the stream is complete).
    fn pump(&mut self, mut input: &[u8], flush: TDEFLFlush) -> io::Result<()> {
        loop {
            let (status, consumed, produced) = compress(&mut self.compressor, input, &mut self.out, flush);
            input = &input[consumed..];
            if produced > 0 {
                self.inner.write_all(&self.out[..produced])?;
            }
            match status {
                TDEFLStatus::Done => return Ok(()),
                TDEFLStatus::Okay => {
                    // More output pending (buffer was full) or more input to feed: go round again.
                    let finishing = matches!(flush, TDEFLFlush::Finish);
                    if input.is_empty() && produced < self.out.len() && !finishing {
                        return Ok(());
                    }
                }
                TDEFLStatus::BadParam | TDEFLStatus::PutBufFailed => {
                    return Err(io::Error::other("deflate compressor failed"));
                }
            }
        }
    }

    /// Ends the gzip member and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_header()?;
        let input = std::mem::take(&mut self.input);
        self.pump(&input, TDEFLFlush::Finish)?;
        let crc = self.crc.clone().finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&self.size.to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_header()?;
        let take = buf.len().min(IN_BLOCK - self.input.len());
        let buf = &buf[..take];
        self.input.extend_from_slice(buf);
        if self.input.len() == IN_BLOCK {
            let input = std::mem::take(&mut self.input);
            let res = self.pump(&input, TDEFLFlush::None);
            self.input = input;
            self.input.clear();
            res?;
        }
        self.crc.update(buf);
        // ISIZE is the input size modulo 2^32 (RFC 1952).
        self.size = self.size.wrapping_add(buf.len() as u32);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Half compressible text, half noise.
                if (i / 4096) % 2 == 0 { b"hello world "[i % 12] } else { x as u8 }
            })
            .collect()
    }

    fn gzip(data: &[u8], split: usize, level: u8) -> Vec<u8> {
        let mut w = GzipWriter::new(Vec::new(), level);
        for chunk in data.chunks(split.max(1)) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap()
    }

    /// Decompress with a second implementation: miniz's inflate for the body, our own reading of the
    /// framing, and the `tar` crate's independent use is covered in layer tests. The header and trailer are
    /// checked byte by byte against RFC 1952.
    fn gunzip(gz: &[u8]) -> Vec<u8> {
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        let body = &gz[10..gz.len() - 8];
        let out = miniz_oxide::inflate::decompress_to_vec(body).expect("valid deflate");
        let crc = u32::from_le_bytes(gz[gz.len() - 8..gz.len() - 4].try_into().unwrap());
        let isize = u32::from_le_bytes(gz[gz.len() - 4..].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&out));
        assert_eq!(isize, out.len() as u32);
        out
    }

    #[test]
    fn round_trip_through_inflate() {
        for len in [0, 1, 100, 70_000, 1_000_000] {
            let data = sample(len);
            assert_eq!(gunzip(&gzip(&data, 8192, DEFAULT_LEVEL)), data, "len {len}");
            assert_eq!(gunzip(&gzip(&data, 8192, 6)), data, "len {len}");
        }
    }

    #[test]
    fn output_does_not_depend_on_write_split() {
        let data = sample(500_000);
        let a = gzip(&data, 1, DEFAULT_LEVEL);
        let b = gzip(&data, 4096, DEFAULT_LEVEL);
        let c = gzip(&data, 1_000_000, DEFAULT_LEVEL);
        assert_eq!(a, b);
        assert_eq!(b, c);
    }

    #[test]
    fn system_gzip_accepts_output() {
        // A third implementation when present: gzip(1) from the system.
        let data = sample(300_000);
        let gz = gzip(&data, 10_000, DEFAULT_LEVEL);
        let child = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else { return };
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&gz));
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        writer.join().unwrap().unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(out, data);
    }
}
