//! What a base image's filesystem holds where our layers could collide with it: directory symlinks and
//! directory modes.
//!
//! Debian, Ubuntu and Fedora bases have `/bin -> usr/bin` and `/lib -> usr/lib`. A layer entry `bin/` would
//! replace such a symlink with a directory and break the base, so our entries are written under the
//! symlink's target instead, as Docker's COPY does: every parent component is resolved through the base's
//! symlinks (and the last one too when our entry is a directory), and a directory that exists in the base
//! keeps the base's mode (`/tmp` stays 1777, `/usr/bin` 755). To know them, the base layers' tar headers are
//! read once (streamed and decompressed, never stored; file bodies are skipped), applying whiteouts in layer
//! order, and each layer's findings are cached in the local store by its digest, so the next build on the
//! same base reads nothing. A layer that cannot be read (zstd, foreign) is left out with a warning.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::base::BlobSource;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Descriptor;

/// What one layer's headers say, in order of application.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LayerIndex {
    /// `(path, change)` in tar order.
    changes: Vec<(String, Change)>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Change {
    Symlink(String),
    Dir(u32),
    /// A file or anything else: no longer a symlink or directory.
    Other,
    /// `.wh.NAME`: NAME and everything under it removed.
    Whiteout,
    /// `.wh..wh..opq` in a directory: everything under it from lower layers removed.
    Opaque,
}

/// The base's symlinks and directories, merged over its layers.
#[derive(Default)]
pub struct RootFs {
    /// Identifies what it holds (for the layer cache's fingerprint).
    id: String,
    symlinks: BTreeMap<String, String>,
    dirs: BTreeMap<String, u32>,
}

impl std::fmt::Debug for RootFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RootFs({})", self.id)
    }
}

/// `./a/b/` -> `a/b`.
fn clean(path: &str) -> String {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

impl RootFs {
    /// Whether every readable layer of `layers` is in `cache_dir` already (nothing to read).
    pub fn all_cached(layers: &[Descriptor], cache_dir: Option<&Path>) -> bool {
        layers.iter().all(|d| !readable(d).0 || cache_dir.is_some_and(|dir| cache_path(dir, &d.digest).is_file()))
    }

    /// Reads (or finds in `cache_dir`) every layer's headers, from `source`, and merges them; notes about
    /// layers that cannot be read go to `warnings`.
    pub fn of(
        layers: &[Descriptor],
        source: &mut BlobSource,
        cache_dir: Option<&Path>,
        warnings: &mut Vec<String>,
    ) -> Result<RootFs> {
        let mut fs = RootFs::default();
        for desc in layers {
            let (ok, gzip) = readable(desc);
            if !ok {
                warnings.push(format!(
                    "cannot read base layer {} ({}): its symlinks are not known, so paths under them are not \
                     redirected",
                    desc.digest, desc.media_type
                ));
                continue;
            }
            let index = match cache_dir.and_then(|d| read_cached(d, &desc.digest)) {
                Some(index) => index,
                None => {
                    let reader = source.open(&desc.digest)?;
                    // Large reads: tar skips bodies in small ones, and each inflate call has a cost.
                    let index = if gzip {
                        let gz = crate::gunzip::GzipReader::new(reader);
                        scan(std::io::BufReader::with_capacity(256 * 1024, gz), &desc.digest)?
                    } else {
                        scan(std::io::BufReader::with_capacity(256 * 1024, reader), &desc.digest)?
                    };
                    if let Some(d) = cache_dir {
                        write_cached(d, &desc.digest, &index);
                    }
                    index
                }
            };
            fs.apply(index);
        }
        // Identified by what it holds, not by which layers said it: two platforms' bases with the same
        // directory structure give the same id, so a context shared by them is written once.
        let mut content = Sha256::new();
        for (p, t) in &fs.symlinks {
            content.update(format!("l {p}\0{t}\0").as_bytes());
        }
        for (p, m) in &fs.dirs {
            content.update(format!("d {p}\0{m}\0").as_bytes());
        }
        fs.id = hex::encode(content.finalize());
        Ok(fs)
    }

    fn remove_under(&mut self, path: &str, including: bool) {
        let prefix = format!("{path}/");
        let keep = |p: &String| !(p.starts_with(&prefix) || (including && p == path));
        self.symlinks.retain(|p, _| keep(p));
        self.dirs.retain(|p, _| keep(p));
    }

    fn apply(&mut self, index: LayerIndex) {
        for (path, change) in index.changes {
            match change {
                Change::Symlink(target) => {
                    self.dirs.remove(&path);
                    self.symlinks.insert(path, target);
                }
                Change::Dir(mode) => {
                    self.symlinks.remove(&path);
                    self.dirs.insert(path, mode);
                }
                Change::Other => {
                    self.symlinks.remove(&path);
                    self.dirs.remove(&path);
                }
                Change::Whiteout => self.remove_under(&path, true),
                Change::Opaque => self.remove_under(&path, false),
            }
        }
    }

    /// Where `name` (a layer path) lands once the base's symlinks are followed: every parent component,
    /// and the last one too if `is_dir`. Cycles stop after 40 hops.
    pub fn resolve(&self, name: &str, is_dir: bool) -> String {
        if self.symlinks.is_empty() {
            return clean(name);
        }
        let mut queue: VecDeque<String> = clean(name).split('/').filter(|c| !c.is_empty()).map(String::from).collect();
        let mut out: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            if c == ".." {
                out.pop();
                continue;
            }
            out.push(c);
            let last = queue.is_empty();
            if last && !is_dir {
                break;
            }
            if hops < 40
                && let Some(target) = self.symlinks.get(&out.join("/"))
            {
                hops += 1;
                out.pop();
                if target.starts_with('/') {
                    out.clear();
                }
                for t in target.split('/').rev().filter(|t| !t.is_empty() && *t != ".") {
                    queue.push_front(t.to_string());
                }
            }
        }
        out.join("/")
    }

    /// What this base does to a layer whose directories are `dirs` (context-relative, prefix included):
    /// where each lands and which mode it keeps. Two bases with the same signature for a context give the
    /// same layer bytes, so a context shared by platforms is written once even when the bases differ
    /// elsewhere (`/usr/lib/x86_64-linux-gnu` against `/usr/lib/aarch64-linux-gnu`).
    pub fn signature<'a>(&self, dirs: impl Iterator<Item = &'a str>) -> String {
        let mut h = Sha256::new();
        for d in dirs {
            let landed = self.resolve(d, true);
            h.update(format!("{d}\0{landed}\0{:?}\0", self.dir_mode(&landed)).as_bytes());
            // A parent's symlink changes where a file lands too: files are resolved through the same parents.
        }
        hex::encode(h.finalize())
    }

    /// The mode of a directory the base has at `path` (already resolved).
    pub fn dir_mode(&self, path: &str) -> Option<u32> {
        self.dirs.get(&clean(path)).copied()
    }
}

/// Whether a layer's tar can be read here (gzip or plain; not zstd, not foreign), and whether it is gzip.
fn readable(desc: &Descriptor) -> (bool, bool) {
    let media = desc.media_type.as_str();
    let gzip = media.ends_with("gzip");
    let plain = media.ends_with(".tar");
    ((gzip || plain) && !media.contains("foreign") && !media.contains("nondistributable"), gzip)
}

fn cache_path(dir: &Path, digest: &Digest) -> std::path::PathBuf {
    dir.join(format!("rootfs-{}.json", digest.hex()))
}

fn read_cached(dir: &Path, digest: &Digest) -> Option<LayerIndex> {
    let bytes = std::fs::read(cache_path(dir, digest)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_cached(dir: &Path, digest: &Digest, index: &LayerIndex) {
    let Ok(bytes) = serde_json::to_vec(index) else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let _ = crate::atomic::write(&cache_path(dir, digest), &bytes, 0o644);
}

/// The headers of one layer's tar, streamed (bodies skipped).
fn scan(reader: impl Read, digest: &Digest) -> Result<LayerIndex> {
    let bad = |e: std::io::Error| Error::protocol(format!("cannot read the base layer {digest} as a tar: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut index = LayerIndex::default();
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = clean(&raw);
        if path.is_empty() {
            continue;
        }
        let (dir, file) = match path.rsplit_once('/') {
            Some((d, f)) => (d.to_string(), f.to_string()),
            None => (String::new(), path.clone()),
        };
        let join = |name: &str| if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
        let header = entry.header();
        let change = if file == ".wh..wh..opq" {
            index.changes.push((dir.clone(), Change::Opaque));
            continue;
        } else if let Some(hidden) = file.strip_prefix(".wh.") {
            index.changes.push((join(hidden), Change::Whiteout));
            continue;
        } else {
            match header.entry_type() {
                tar::EntryType::Symlink => {
                    let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
                    Change::Symlink(target.unwrap_or_default())
                }
                tar::EntryType::Directory => Change::Dir(header.mode().map_err(bad)? & 0o7777),
                _ => Change::Other,
            }
        };
        index.changes.push((path, change));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(symlinks: &[(&str, &str)], dirs: &[(&str, u32)]) -> RootFs {
        RootFs {
            id: String::new(),
            symlinks: symlinks.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            dirs: dirs.iter().map(|(a, m)| (a.to_string(), *m)).collect(),
        }
    }

    #[test]
    fn merged_usr_paths_land_under_the_symlink_target() {
        let f = fs(&[("bin", "usr/bin"), ("lib", "/usr/lib"), ("var/run", "../run"), ("loop", "loop")], &[]);
        assert_eq!(f.resolve("bin/tool", false), "usr/bin/tool");
        assert_eq!(f.resolve("bin", true), "usr/bin", "a directory entry follows the link");
        assert_eq!(f.resolve("bin", false), "bin", "a file replaces it, as COPY does");
        assert_eq!(f.resolve("lib/x/y.so", false), "usr/lib/x/y.so");
        assert_eq!(f.resolve("var/run/app.pid", false), "run/app.pid");
        assert_eq!(f.resolve("app/main.py", false), "app/main.py");
        assert_eq!(f.resolve("loop/x", false), "loop/x", "a cycle stops");
    }

    #[test]
    fn a_signature_depends_only_on_what_the_context_reaches() {
        let amd = fs(&[("bin", "usr/bin")], &[("usr/lib/x86_64-linux-gnu", 0o755), ("tmp", 0o1777)]);
        let arm = fs(&[("bin", "usr/bin")], &[("usr/lib/aarch64-linux-gnu", 0o755), ("tmp", 0o1777)]);
        let ctx = ["app", "bin", "tmp"];
        assert_eq!(amd.signature(ctx.into_iter()), arm.signature(ctx.into_iter()));
        let plain = fs(&[], &[("tmp", 0o1777)]);
        assert_ne!(amd.signature(ctx.into_iter()), plain.signature(ctx.into_iter()), "bin lands elsewhere");
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let mut f = RootFs::default();
        f.apply(LayerIndex {
            changes: vec![
                ("bin".into(), Change::Symlink("usr/bin".into())),
                ("tmp".into(), Change::Dir(0o1777)),
                ("opt".into(), Change::Dir(0o755)),
                ("opt/a".into(), Change::Symlink("b".into())),
            ],
        });
        f.apply(LayerIndex {
            changes: vec![
                ("bin".into(), Change::Whiteout),
                ("opt".into(), Change::Opaque),
                ("srv".into(), Change::Symlink("data".into())),
                ("srv".into(), Change::Dir(0o700)),
            ],
        });
        assert_eq!(f.resolve("bin/x", false), "bin/x");
        assert_eq!(f.dir_mode("tmp"), Some(0o1777));
        assert_eq!(f.dir_mode("opt"), Some(0o755), "an opaque dir itself stays");
        assert_eq!(f.resolve("opt/a/x", false), "opt/a/x", "what was under it is gone");
        assert_eq!(f.dir_mode("srv"), Some(0o700));
        assert_eq!(f.resolve("srv/x", false), "srv/x");
    }

    #[test]
    fn headers_are_read_from_a_real_tar() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "./bin", "usr/bin").unwrap();
        let mut d = tar::Header::new_gnu();
        d.set_entry_type(tar::EntryType::Directory);
        d.set_mode(0o1777);
        d.set_size(0);
        b.append_data(&mut d, "tmp/", std::io::empty()).unwrap();
        let mut w = tar::Header::new_gnu();
        w.set_size(3);
        w.set_mode(0o644);
        b.append_data(&mut w, "etc/.wh.passwd", &b"abc"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let index = scan(&bytes[..], &Digest::of(b"x")).unwrap();
        let mut f = RootFs::default();
        f.apply(index);
        assert_eq!(f.resolve("bin/sh", false), "usr/bin/sh");
        assert_eq!(f.dir_mode("tmp/"), Some(0o1777));
    }
}
