//! Recognising an unchanged context without reading it, so a re-push costs a stat walk and a HEAD.
//!
//! A layer's digest is known only after compressing the whole context, which is the expensive part of a
//! push. The cache maps a fingerprint of the context (every included path with its kind, mode, size, link
//! target, device, inode, mtime and ctime to the nanosecond, plus the layer options and the tool's version)
//! to the digests the last build produced. Any write to a file changes its ctime, so a matching fingerprint
//! means the same bytes would come out; the fingerprint is taken again after streaming and the entry is
//! stored only if nothing moved meanwhile. On a hit the sink is asked whether it already has the blob: if
//! so nothing is read or sent, otherwise the layer is streamed as usual. Entries live as small JSON files
//! under `$IDPB_HOME/cache/`; a missing or corrupt entry is just a miss, and `--no-cache` skips it.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::Result;
use crate::layer::{LayerDigests, LayerOptions};
use crate::walk::{Context, Kind, Size};

/// A directory of fingerprint -> layer digests entries.
pub struct LayerCache {
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    digest: Digest,
    diff_id: Digest,
    size: u64,
    entries: u64,
}

impl LayerCache {
    pub fn new(dir: &Path) -> LayerCache {
        LayerCache { dir: dir.to_path_buf() }
    }

    /// Where the cache keeps its entries (other caches keyed by digest live beside them).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fingerprint of `context` built with `opts` (a stat-only walk).
    pub fn fingerprint(context: &Context, opts: &LayerOptions) -> Result<String> {
        Ok(LayerCache::fingerprint_and_size(context, opts)?.0)
    }

    /// The fingerprint and, from the same stat walk, what the layer will read (the progress display's
    /// totals).
    pub fn fingerprint_and_size(context: &Context, opts: &LayerOptions) -> Result<(String, Size)> {
        let mut size = Size::default();
        let mut h = Sha256::new();
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(format!("{opts:?}\0").as_bytes());
        h.update(context.root().as_os_str().as_encoded_bytes());
        h.update(context.part_id().as_bytes());
        // The root's own metadata matters with --prefix (the prefix directory takes its mode).
        {
            use std::os::unix::fs::MetadataExt;
            let root = context.root_metadata()?;
            for v in [i64::from(root.mode()), root.mtime(), root.mtime_nsec(), root.ctime(), root.ctime_nsec()] {
                h.update(v.to_le_bytes());
            }
        }
        let mut visit = |e: crate::walk::Entry| -> Result<()> {
            size.count(&e);
            h.update(e.rel.as_bytes());
            h.update([0]);
            let kind = match &e.kind {
                Kind::Dir => "d".to_string(),
                Kind::File { size } => format!("f{size}"),
                Kind::Symlink { target } => format!("l{}", String::from_utf8_lossy(target)),
                Kind::HardLink { target, .. } => format!("h{target}"),
            };
            h.update(kind.as_bytes());
            h.update(e.mode.to_le_bytes());
            for s in e.stamp {
                h.update(s.to_le_bytes());
            }
            Ok(())
        };
        context.walk(&mut visit, &mut |_, _| {})?;
        Ok((hex::encode(h.finalize()), size))
    }

    fn path(&self, fingerprint: &str) -> PathBuf {
        self.dir.join(format!("layer-{fingerprint}.json"))
    }

    /// The digests stored for `fingerprint`, if any.
    pub fn get(&self, fingerprint: &str) -> Option<LayerDigests> {
        let bytes = std::fs::read(self.path(fingerprint)).ok()?;
        let e: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        Some(LayerDigests { digest: e.digest, diff_id: e.diff_id, size: e.size, entries: e.entries })
    }

    /// Remembers `digests` for `fingerprint`; failures are ignored (the cache is an optimisation).
    pub fn put(&self, fingerprint: &str, digests: &LayerDigests) {
        let entry = CacheEntry {
            digest: digests.digest.clone(),
            diff_id: digests.diff_id.clone(),
            size: digests.size,
            entries: digests.entries,
        };
        let Ok(bytes) = serde_json::to_vec(&entry) else { return };
        if std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let _ = crate::atomic::write(&self.path(fingerprint), &bytes, 0o644);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_content_changes_and_cache_round_trips() {
        let dir = std::env::temp_dir().join(format!("idpb-cache-{}", std::process::id()));
        let ctx_dir = dir.join("ctx");
        std::fs::create_dir_all(&ctx_dir).unwrap();
        std::fs::write(ctx_dir.join("a"), "one").unwrap();
        let ctx = Context::open(&ctx_dir).unwrap();
        let opts = LayerOptions::default();
        let f1 = LayerCache::fingerprint(&ctx, &opts).unwrap();
        assert_eq!(f1, LayerCache::fingerprint(&ctx, &opts).unwrap());
        std::fs::write(ctx_dir.join("a"), "two").unwrap();
        let f2 = LayerCache::fingerprint(&ctx, &opts).unwrap();
        assert_ne!(f1, f2);
        let other = LayerOptions { epoch: 5, ..LayerOptions::default() };
        assert_ne!(f2, LayerCache::fingerprint(&ctx, &other).unwrap());

        let cache = LayerCache::new(&dir.join("cache"));
        assert!(cache.get(&f2).is_none());
        let d = LayerDigests { digest: Digest::of(b"x"), diff_id: Digest::of(b"y"), size: 3, entries: 1 };
        cache.put(&f2, &d);
        assert_eq!(cache.get(&f2), Some(d));
        std::fs::write(cache.path(&f2), "garbage").unwrap();
        assert!(cache.get(&f2).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
