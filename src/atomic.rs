//! Writing files where someone else may be writing too, or may have planted a link.
//!
//! Every file docker-idpb writes (a digest file, a layout's `index.json` and blobs, a tar, the store's caches,
//! Docker's `config.json`) goes through a temp file in the destination's own directory, created with
//! `create_new` (`O_EXCL`: a file or symlink already at that name is an error, never written through) under
//! a name that cannot be guessed (random bits from std's per-process `RandomState` keys, plus a counter),
//! with the mode it must end up with (0600 for anything holding credentials) from its creation, then
//! renamed over the destination. `rename` replaces a symlink planted at the destination instead of following
//! it, and a reader sees the old file or the new one, never half of one.
//!
//! A read-modify-write of a file several runs share (a layout's `index.json`, Docker's `config.json`) holds
//! an advisory lock ([`Locked`], std's `File::lock` on its directory) from the read to the rename,
//! so concurrent runs (`make -j`, parallel CI jobs on one runner) each add their entry instead of the last
//! one winning; blobs need no lock against each other (content-addressed, renamed into place). Deleting
//! blobs does: a run that writes into the local store holds a shared lock on its `blobs/` directory
//! ([`Locked::shared`]) from its first blob to its index entry, and `prune` takes it exclusively
//! ([`Locked::exclusive`]), so it never deletes a blob that a build has found or written but not yet named.
//!
//! Reading is bounded the same way everywhere: [`read_capped`] reads at most a cap (4 MiB for image JSON,
//! [`CREDENTIALS_CAP`] for credential files) and fails with a one-line error naming the file beyond it, so a
//! file pointed at `/dev/zero` costs a few MiB, not all of memory.

use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 16 hex digits nobody can predict.
fn unpredictable() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("{:016x}", h.finish())
}

/// Creates a new temp file in `dir` (`.PREFIX.tmp-RANDOM`) with `mode`, never opening anything that was
/// already there.
pub fn temp_file(dir: &Path, prefix: &str, mode: u32) -> io::Result<(File, PathBuf)> {
    loop {
        let path = dir.join(format!(".{prefix}.tmp-{}", unpredictable()));
        match OpenOptions::new().write(true).create_new(true).mode(mode).open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bytes` to `path` (mode `mode`) through a new temp file beside it and a rename.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let (mut file, tmp) = temp_file(dir, name, mode).map_err(|e| Error::io(path, "write", e))?;
    let written = file.write_all(bytes).and_then(|_| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|_| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, "write", e));
    }
    Ok(())
}

/// An exclusive advisory lock on the directory holding a shared file, held until dropped. Locking the
/// directory (flock works on directory handles) leaves no lock file behind in a user's directory.
pub struct Locked {
    _dir: File,
}

impl Locked {
    /// Waits for the lock that guards `path` (the lock of its directory).
    pub fn on(path: &Path) -> Result<Locked> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let handle = File::open(dir).map_err(|e| Error::io(dir, "open", e))?;
        handle.lock().map_err(|e| Error::io(dir, "lock", e))?;
        Ok(Locked { _dir: handle })
    }

    /// Waits for a shared lock on the directory `dir` itself: any number of holders, none while someone
    /// holds it exclusively ([`Locked::exclusive`]).
    pub fn shared(dir: &Path) -> Result<Locked> {
        let handle = File::open(dir).map_err(|e| Error::io(dir, "open", e))?;
        handle.lock_shared().map_err(|e| Error::io(dir, "lock", e))?;
        Ok(Locked { _dir: handle })
    }

    /// Takes the exclusive lock on the directory `dir` itself, once every shared holder is gone. While it
    /// has to wait, `waiting` is called once and `cancel` is checked between attempts, so a user who
    /// interrupts the wait gets `Error::Cancelled` instead of a process stuck in `flock`.
    pub fn exclusive(dir: &Path, cancel: &crate::signal::Cancel, waiting: impl FnOnce()) -> Result<Locked> {
        let handle = File::open(dir).map_err(|e| Error::io(dir, "open", e))?;
        let mut waiting = Some(waiting);
        loop {
            match handle.try_lock() {
                Ok(()) => return Ok(Locked { _dir: handle }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if let Some(note) = waiting.take() {
                        note();
                    }
                    cancel.sleep(std::time::Duration::from_millis(100))?;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(dir, "lock", e)),
            }
        }
    }
}

/// The largest image JSON file read (a layout's `index.json`, manifests, configs): what registries accept.
pub const IMAGE_JSON_CAP: u64 = 4 * 1024 * 1024;
/// The largest credentials file read (`config.json`, `auth.json`).
pub const CREDENTIALS_CAP: u64 = 16 * 1024 * 1024;

/// The bytes of `path`, at most `cap` of them; an `io::ErrorKind::NotFound` stays that kind so callers can
/// treat a missing file as empty.
pub fn read_capped(path: &Path, cap: u64) -> std::result::Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let file = File::open(path).map_err(ReadError::Io)?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge(cap));
    }
    Ok(bytes)
}

/// Why [`read_capped`] failed.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    TooLarge(u64),
}

impl ReadError {
    /// The error naming `path`.
    pub fn for_path(self, path: &Path, action: &'static str) -> Error {
        match self {
            ReadError::Io(e) => Error::io(path, action, e),
            ReadError::TooLarge(cap) => Error::Layout(format!(
                "{} is larger than {} MiB, more than such a file can be; check what it is (a link to a device?)",
                crate::progress::escaped(&path.display().to_string()),
                cap / (1024 * 1024)
            )),
        }
    }

    pub fn not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("idpb-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_symlink_planted_at_the_destination_is_replaced_not_followed() {
        let d = scratch("planted");
        let victim = d.join("victim");
        fs::write(&victim, b"precious").unwrap();
        symlink(&victim, d.join("digest")).unwrap();
        write(&d.join("digest"), b"sha256:abc\n", 0o644).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!fs::symlink_metadata(d.join("digest")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(d.join("digest")).unwrap(), b"sha256:abc\n");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_are_capped() {
        let err = read_capped(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge(1024)));
        assert!(err.for_path(Path::new("/x/index.json"), "read").to_string().contains("/x/index.json"));
        assert!(read_capped(Path::new("/nonexistent/x"), 10).unwrap_err().not_found());
    }

    #[test]
    fn temp_files_are_new_unpredictable_and_created_with_their_mode() {
        let d = scratch("temp");
        let (_, a) = temp_file(&d, "config.json", 0o600).unwrap();
        let (_, b) = temp_file(&d, "config.json", 0o600).unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);
        let name = a.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with(".config.json.tmp-") && name.len() == ".config.json.tmp-".len() + 16, "{name}");
        // Nothing predictable about the suffix: not the pid, not a counter.
        assert!(!name.contains(&std::process::id().to_string()) || name.len() > 20);
        fs::remove_dir_all(&d).unwrap();
    }
}
