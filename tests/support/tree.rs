//! Comparing directory trees: a build context against what skopeo + umoci unpacked from our image.
//!
//! A [`Listing`] maps each relative path (`/`-separated, the root itself left out) to what a layer must
//! preserve: kind, permission bits, content hash, symlink target and hard-link grouping. Inode numbers
//! differ between trees, so a hard link is recorded as the first path (in sorted order) of its group inside
//! the tree, which two trees agree on when they link the same files. Owners and times are not recorded:
//! a rootless unpack maps owners to the current user and layers may normalise times. Listings are plain
//! maps, so a caller that knows a peer tool alters something (say, a mode bit umoci drops when rootless)
//! edits both listings and calls [`assert_same_listing`].

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// Devices, fifos, sockets.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    /// File length; 0 for everything else.
    pub size: u64,
    /// Hex sha256 of a file's content.
    pub sha256: Option<String>,
    /// A symlink's target, as stored.
    pub link_target: Option<String>,
    /// For a file hard-linked to others in the same tree: the first path of its group.
    pub hardlink_group: Option<String>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {:04o}", self.kind, self.mode)?;
        if self.kind == EntryKind::File {
            let hash = self.sha256.as_deref().unwrap_or_default();
            write!(f, " {} bytes sha256:{}", self.size, &hash[..hash.len().min(12)])?;
        }
        if let Some(target) = &self.link_target {
            write!(f, " -> {target:?}")?;
        }
        if let Some(group) = &self.hardlink_group {
            write!(f, " hard-linked with {group:?}")?;
        }
        Ok(())
    }
}

pub type Listing = BTreeMap<String, Entry>;

/// Everything under `root`, recursively, without following symlinks.
pub fn tree_listing(root: &Path) -> Listing {
    let mut listing = Listing::new();
    let mut inodes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    walk(root, "", &mut listing, &mut inodes);

    let mut groups: BTreeMap<(u64, u64), Vec<&String>> = BTreeMap::new();
    for (path, inode) in &inodes {
        groups.entry(*inode).or_default().push(path);
    }
    let firsts: Vec<(String, String)> = groups
        .values()
        .filter(|paths| paths.len() > 1)
        .flat_map(|paths| paths.iter().map(|p| ((*p).clone(), paths[0].clone())))
        .collect();
    for (path, first) in firsts {
        if let Some(entry) = listing.get_mut(&path) {
            entry.hardlink_group = Some(first);
        }
    }
    listing
}

fn walk(dir: &Path, prefix: &str, listing: &mut Listing, inodes: &mut BTreeMap<String, (u64, u64)>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let path = entry.path();
        let rel = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
        let file_type = meta.file_type();
        let mut record = Entry {
            kind: EntryKind::Other,
            mode: meta.permissions().mode() & 0o7777,
            size: 0,
            sha256: None,
            link_target: None,
            hardlink_group: None,
        };
        if file_type.is_dir() {
            record.kind = EntryKind::Dir;
            walk(&path, &format!("{rel}/"), listing, inodes);
        } else if file_type.is_symlink() {
            record.kind = EntryKind::Symlink;
            let target = fs::read_link(&path).unwrap_or_else(|e| panic!("cannot read link {}: {e}", path.display()));
            record.link_target = Some(target.to_string_lossy().into_owned());
        } else if file_type.is_file() {
            record.kind = EntryKind::File;
            record.size = meta.len();
            record.sha256 = Some(sha256_file(&path));
            if meta.nlink() > 1 {
                inodes.insert(rel.clone(), (meta.dev(), meta.ino()));
            }
        }
        listing.insert(rel, record);
    }
}

fn sha256_file(path: &Path) -> String {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return hex::encode(hasher.finalize()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) => panic!("cannot read {}: {e}", path.display()),
        }
    }
}

/// One line per difference, `expected` being the reference; empty when the listings agree.
pub fn diff_listings(expected: &Listing, actual: &Listing) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => diffs.push(format!("missing:    {path:?} ({want})")),
            Some(got) if got != want => {
                diffs.push(format!("different:  {path:?}\n  expected {want}\n  actual   {got}"))
            }
            Some(_) => {}
        }
    }
    for (path, got) in actual.iter().filter(|(p, _)| !expected.contains_key(*p)) {
        diffs.push(format!("unexpected: {path:?} ({got})"));
    }
    diffs
}

/// Panics with every difference, one per line.
#[track_caller]
pub fn assert_same_listing(expected: &Listing, actual: &Listing) {
    assert_no_diffs("the listings", diff_listings(expected, actual));
}

/// Compares two trees, leaving out each path in `ignore` and everything under it.
#[track_caller]
pub fn assert_same_tree(expected: &Path, actual: &Path, ignore: &[&str]) {
    let keep = |listing: Listing| -> Listing {
        listing
            .into_iter()
            .filter(|(path, _)| {
                !ignore.iter().any(|i| path == i || path.strip_prefix(i).is_some_and(|rest| rest.starts_with('/')))
            })
            .collect()
    };
    let diffs = diff_listings(&keep(tree_listing(expected)), &keep(tree_listing(actual)));
    assert_no_diffs(&format!("{} (expected) and {} (actual)", expected.display(), actual.display()), diffs);
}

#[track_caller]
fn assert_no_diffs(what: &str, diffs: Vec<String>) {
    assert!(diffs.is_empty(), "{what} differ in {} places:\n{}", diffs.len(), diffs.join("\n"));
}
