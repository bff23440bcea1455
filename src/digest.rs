//! Content digests and the hashing writers of the streaming pipeline.
//!
//! A layer's identity is computed while it streams: a [`HashingWriter`] sits under the tar builder (its
//! sha256 is the uncompressed `diff_id`) and another sits under the gzip encoder (its sha256 and byte count
//! are the blob's `digest` and `size`). Each is a plain `Write` adapter that forwards every byte to the next
//! stage, so stages stack like go-containerregistry's transports and none of them buffers. [`Digest`] is the
//! `sha256:<hex>` string of the OCI spec, validated on parse so a digest read from a file, a flag or a
//! registry header cannot smuggle a path separator into a blob path.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// A `sha256:<64 lowercase hex>` content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hash(Sha256::digest(bytes).as_slice())
    }

    fn from_hash(hash: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    /// The hex part, used as the blob's file name in an OCI layout.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full `sha256:...` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Digest, Error> {
        let bad = |m: &str| Error::Reference { input: s.to_string(), message: m.to_string() };
        let hex = s.strip_prefix("sha256:").ok_or_else(|| bad("only sha256 digests are supported"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad("a sha256 digest is 64 lowercase hex characters"));
        }
        Ok(Digest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Forwards writes to `inner` while computing their sha256 and counting them.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), count: 0 }
    }

    /// Ends hashing: the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        let digest = Digest::from_hash(self.hasher.finalize().as_slice());
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Hash only what the inner writer accepted, so a short write cannot desynchronise the digest.
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty() {
        assert_eq!(Digest::of(b"").as_str(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn hashing_writer_matches_one_shot_digest_whatever_the_split() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = HashingWriter::new(Vec::new());
        for chunk in data.chunks(37) {
            w.write_all(chunk).unwrap();
        }
        let (inner, digest, count) = w.finish();
        assert_eq!(inner, data);
        assert_eq!(count, 10_000);
        assert_eq!(digest, Digest::of(&data));
    }

    /// A writer that accepts at most 3 bytes per call: the hash must follow what was accepted.
    struct Short(Vec<u8>);
    impl Write for Short {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn hashing_writer_handles_short_writes() {
        let mut w = HashingWriter::new(Short(Vec::new()));
        w.write_all(b"hello world").unwrap();
        let (inner, digest, count) = w.finish();
        assert_eq!(inner.0, b"hello world");
        assert_eq!(count, 11);
        assert_eq!(digest, Digest::of(b"hello world"));
    }

    #[test]
    fn digest_parse_rejects_bad_input() {
        assert!("sha256:abc".parse::<Digest>().is_err());
        assert!("md5:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse::<Digest>().is_err());
        let upper = "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert!(upper.parse::<Digest>().is_err());
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse().unwrap();
        assert_eq!(d.hex().len(), 64);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }
}
