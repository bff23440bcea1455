//! Walking a build context in a fixed order, with `.dockerignore` applied.
//!
//! The walk is what makes a layer reproducible: entries come out depth-first, each directory before its
//! contents and siblings sorted by the bytes of their names, so the same tree gives the same sequence on any
//! machine and at any path. Only `lstat` data is used (symlinks are never followed). Hard links are
//! recognised by (device, inode): the first included path of a group is a regular file, later ones are
//! links to it. An excluded directory is skipped unless an exception pattern may re-include something below
//! it, as Docker does; such a directory is emitted only once something under it turns out to be included, so
//! the layer never holds an empty directory the user excluded. Sockets, FIFOs and devices are reported to a
//! `skipped` callback and left out. Memory is one sorted name list per open directory, never file contents.
//!
//! `--layer PATTERN` splits one context into several layers ([`Split`]): a path goes to the layer of the
//! first pattern that matches it (`.dockerignore` syntax and matching, a match on a parent counts), the
//! rest to a last layer. [`Context::split`] walks once (lstat only) to learn which directories each layer
//! needs as parents of its files, then hands out one [`Context`] per non-empty layer whose walk yields only
//! that layer's entries, in the same order; a hard link whose first name went to another layer is written
//! as a regular file, so each layer unpacks on its own.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ignore::Ignore;

/// A directory to be turned into a layer, with its `.dockerignore`.
#[derive(Debug, Clone)]
pub struct Context {
    root: PathBuf,
    ignore: Ignore,
    /// One layer of a split context, or the whole of it.
    part: Option<Part>,
}

/// `--layer` patterns: layer `i` takes what pattern `i` matches first; the rest goes to a last layer.
#[derive(Debug, Clone, Default)]
pub struct Split {
    patterns: Vec<(String, Ignore)>,
}

impl Split {
    /// Parses the patterns (errors as `.dockerignore` errors, naming `--layer`).
    pub fn parse(patterns: &[String]) -> Result<Split> {
        let mut parsed = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let ignore = Ignore::parse(p, &format!("--layer #{}", i + 1))?;
            if p.trim().is_empty() || p.trim_start().starts_with('!') || p.starts_with('#') {
                return Err(Error::usage(format!(
                    "invalid --layer {p:?}: give a .dockerignore pattern that matches paths, e.g. 'vendor/' or '**/*.so'"
                )));
            }
            parsed.push((p.clone(), ignore));
        }
        Ok(Split { patterns: parsed })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// How many layers the split can give (patterns + the rest).
    pub fn layers(&self) -> usize {
        self.patterns.len() + 1
    }

    /// The layer a context-relative path belongs to.
    pub fn layer_of(&self, rel: &str) -> usize {
        self.patterns.iter().position(|(_, i)| i.excluded(rel)).unwrap_or(self.patterns.len())
    }

    /// What the layer is, in words ("--layer 'vendor/'", "the rest").
    pub fn describe(&self, index: usize) -> String {
        match self.patterns.get(index) {
            Some((p, _)) => format!("--layer {p:?}"),
            None => "the rest".to_string(),
        }
    }
}

/// One layer of a split context.
#[derive(Debug, Clone)]
struct Part {
    split: Arc<Split>,
    index: usize,
    /// Directories this layer carries: parents of its entries, and empty directories of its own.
    dirs: Arc<HashSet<String>>,
}

/// What an entry is, as far as the layer is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File {
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A further name of a file already emitted at this context-relative path (`size`: its size, for when
    /// it must be written as a file after all).
    HardLink {
        target: String,
        size: u64,
    },
}

/// One path of the context, in layer order.
#[derive(Debug)]
pub struct Entry {
    /// Path relative to the context root with `/` separators, no leading `./`.
    pub rel: String,
    /// Where to read it on disk.
    pub path: PathBuf,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub mtime: i64,
    /// What changes whenever the entry's content or metadata changes: device, inode, mtime and ctime in
    /// nanoseconds. Used to recognise an unchanged context without reading it (see `cache`).
    pub stamp: [i64; 4],
}

/// What a layer written from a context reads: the bytes and the number of its regular files. A stat walk
/// gives it before the layer is written (the progress display's totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub bytes: u64,
    pub files: u64,
}

impl Size {
    /// Counts `entry` if the layer will read it.
    pub fn count(&mut self, entry: &Entry) {
        if let Kind::File { size } = entry.kind {
            self.bytes += size;
            self.files += 1;
        }
    }
}

impl Context {
    /// Opens `root` as a build context and reads its `.dockerignore`.
    pub fn open(root: &Path) -> Result<Context> {
        let meta = fs::metadata(root).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Context(format!(
                "context directory {} does not exist (give the directory that holds the image's files, e.g. ./app)",
                root.display()
            )),
            _ => Error::io(root, "read build context", e),
        })?;
        if !meta.is_dir() {
            return Err(Error::Context(format!(
                "context {} is not a directory (give the directory that holds the image's files)",
                root.display()
            )));
        }
        fs::read_dir(root).map_err(|e| Error::io(root, "read build context", e))?;
        let ignore = Ignore::load(root)?;
        Ok(Context { root: root.to_path_buf(), ignore, part: None })
    }

    /// The context split by `split`: `(layer index, context of that layer)` for each layer with entries,
    /// in layer order. Without patterns, the whole context as layer 0.
    pub fn split(&self, split: &Split) -> Result<Vec<(usize, Context)>> {
        if split.is_empty() {
            return Ok(vec![(0, self.clone())]);
        }
        let n = split.layers();
        let mut dirs: Vec<HashSet<String>> = vec![HashSet::new(); n];
        let mut used = vec![false; n];
        let mut all_dirs: Vec<String> = Vec::new();
        let add_parents = |set: &mut HashSet<String>, rel: &str| {
            let mut p = rel;
            while let Some((parent, _)) = p.rsplit_once('/') {
                if !set.insert(parent.to_string()) {
                    break;
                }
                p = parent;
            }
        };
        let mut visit = |e: Entry| -> Result<()> {
            if e.kind == Kind::Dir {
                all_dirs.push(e.rel);
            } else {
                let k = split.layer_of(&e.rel);
                used[k] = true;
                add_parents(&mut dirs[k], &e.rel);
            }
            Ok(())
        };
        self.walk(&mut visit, &mut |_, _| {})?;
        // A directory no layer needs as a parent is empty of files: it goes to its own layer.
        for d in all_dirs {
            if dirs.iter().any(|set| set.contains(&d)) {
                continue;
            }
            let k = split.layer_of(&d);
            used[k] = true;
            dirs[k].insert(d.clone());
            add_parents(&mut dirs[k], &d);
        }
        if !used.iter().any(|u| *u) {
            // Nothing at all: one empty layer, as without --layer.
            return Ok(vec![(0, self.clone())]);
        }
        let split = Arc::new(split.clone());
        Ok(dirs
            .into_iter()
            .enumerate()
            .filter(|(k, _)| used[*k])
            .map(|(index, set)| {
                let part = Part { split: Arc::clone(&split), index, dirs: Arc::new(set) };
                (index, Context { part: Some(part), ..self.clone() })
            })
            .collect())
    }

    /// Whether any included entry satisfies `pred` (the walk stops at the first).
    pub fn any(&self, pred: &dyn Fn(&Entry) -> bool) -> Result<bool> {
        let mut found = false;
        let result = self.walk(
            &mut |e| {
                if pred(&e) {
                    found = true;
                    // Stops the walk; told apart from a real cancellation by `found`.
                    return Err(Error::Cancelled);
                }
                Ok(())
            },
            &mut |_, _| {},
        );
        match result {
            Err(Error::Cancelled) if found => Ok(true),
            Err(e) => Err(e),
            Ok(()) => Ok(false),
        }
    }

    /// What a layer of this context will read (a stat walk).
    pub fn size(&self) -> Result<Size> {
        let mut size = Size::default();
        self.walk(
            &mut |e| {
                size.count(&e);
                Ok(())
            },
            &mut |_, _| {},
        )?;
        Ok(size)
    }

    /// Identifies the layer of a split context (for the layer cache's fingerprint); empty for a whole one.
    pub fn part_id(&self) -> String {
        match &self.part {
            None => String::new(),
            Some(p) => {
                let patterns: Vec<&str> = p.split.patterns.iter().map(|(s, _)| s.as_str()).collect();
                format!("layer {} of {:?}", p.index, patterns)
            }
        }
    }

    /// The context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Metadata of the context root itself (its mode is used for a `--prefix` directory).
    pub fn root_metadata(&self) -> Result<Metadata> {
        fs::metadata(&self.root).map_err(|e| Error::io(&self.root, "read", e))
    }

    /// Calls `visit` for every included entry in layer order and `skipped` for special files left out.
    pub fn walk(&self, visit: &mut dyn FnMut(Entry) -> Result<()>, skipped: &mut dyn FnMut(&Path, &str)) -> Result<()> {
        match &self.part {
            None => {
                let mut walker =
                    Walker { ignore: &self.ignore, links: HashMap::new(), pending: Vec::new(), visit, skipped };
                walker.dir(&self.root, "")
            }
            Some(part) => {
                // Names this layer wrote, so a hard link can point at them.
                let mut written: HashSet<String> = HashSet::new();
                let mut only_this = |mut e: Entry| -> Result<()> {
                    let keep = match &e.kind {
                        Kind::Dir => part.dirs.contains(&e.rel),
                        _ => part.split.layer_of(&e.rel) == part.index,
                    };
                    if !keep {
                        return Ok(());
                    }
                    if let Kind::HardLink { target, size } = &e.kind
                        && !written.contains(target)
                    {
                        e.kind = Kind::File { size: *size };
                    }
                    if !matches!(e.kind, Kind::Dir) {
                        written.insert(e.rel.clone());
                    }
                    visit(e)
                };
                let mut walker = Walker {
                    ignore: &self.ignore,
                    links: HashMap::new(),
                    pending: Vec::new(),
                    visit: &mut only_this,
                    skipped,
                };
                walker.dir(&self.root, "")
            }
        }
    }
}

struct Walker<'a> {
    ignore: &'a Ignore,
    links: HashMap<(u64, u64), String>,
    /// Excluded directories being descended for exceptions, not emitted until something below is included.
    pending: Vec<Entry>,
    visit: &'a mut dyn FnMut(Entry) -> Result<()>,
    skipped: &'a mut dyn FnMut(&Path, &str),
}

impl Walker<'_> {
    fn dir(&mut self, dir: &Path, rel: &str) -> Result<()> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(|e| Error::io(dir, "read directory", e))?
            .map(|r| r.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(dir, "read directory", e))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let Some(name) = name.to_str() else {
                // Docker matches such names too; only an included one is a problem.
                let lossy = name.to_string_lossy();
                let lossy_rel = if rel.is_empty() { lossy.into_owned() } else { format!("{rel}/{lossy}") };
                if self.ignore.excluded(&lossy_rel) {
                    continue;
                }
                return Err(Error::Context(format!(
                    "{} has a name that is not UTF-8 (rename it or list it in .dockerignore)",
                    path.display()
                )));
            };
            let child_rel = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
            self.entry(path, child_rel)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: PathBuf, rel: String) -> Result<()> {
        let meta = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, "read", e))?;
        let ft = meta.file_type();
        let excluded = self.ignore.excluded(&rel);
        if excluded && !(ft.is_dir() && self.ignore.may_include_under(&rel)) {
            return Ok(());
        }
        let mode = meta.mode() & 0o7777;
        let mtime = meta.mtime();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| Error::io(&path, "read symlink", e))?;
            Kind::Symlink { target: target.as_os_str().as_bytes().to_vec() }
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                match self.links.get(&(meta.dev(), meta.ino())) {
                    Some(first) => Kind::HardLink { target: first.clone(), size: meta.len() },
                    None => {
                        self.links.insert((meta.dev(), meta.ino()), rel.clone());
                        Kind::File { size: meta.len() }
                    }
                }
            } else {
                Kind::File { size: meta.len() }
            }
        } else {
            let what = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "FIFO"
            } else if ft.is_block_device() || ft.is_char_device() {
                "device file"
            } else {
                "special file"
            };
            (self.skipped)(&path, what);
            return Ok(());
        };
        let is_dir = kind == Kind::Dir;
        let stamp = [
            meta.dev() as i64 ^ (meta.ino() as i64).rotate_left(32),
            meta.size() as i64,
            meta.mtime().wrapping_mul(1_000_000_000).wrapping_add(meta.mtime_nsec()),
            meta.ctime().wrapping_mul(1_000_000_000).wrapping_add(meta.ctime_nsec()),
        ];
        let entry = Entry { rel, path, kind, mode, mtime, stamp };
        if excluded {
            // Only directories get here: descend, emitting this one lazily.
            let (path, rel) = (entry.path.clone(), entry.rel.clone());
            self.pending.push(entry);
            let depth = self.pending.len();
            self.dir(&path, &rel)?;
            self.pending.truncate(depth - 1);
            return Ok(());
        }
        for parent in self.pending.drain(..) {
            (self.visit)(parent)?;
        }
        let (path, rel) = (entry.path.clone(), entry.rel.clone());
        (self.visit)(entry)?;
        if is_dir {
            self.dir(&path, &rel)?;
        }
        Ok(())
    }
}
