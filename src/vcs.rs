//! Provenance from the build context's git repository: the `origin` URL and the HEAD commit, which become
//! `org.opencontainers.image.source` and `org.opencontainers.image.revision`, as ko and buildx add them.
//!
//! `.git` is read directly instead of running git: scratch CI images have no git binary, and a subprocess
//! would make the build depend on the PATH, the user's git config and its hooks. Only the few files that
//! answer two questions are read. The repository is the first directory holding `.git` on the way up from
//! the context directory (not the working directory: `build ./app` from elsewhere describes `./app`).
//! `.git` is a directory, or a `gitdir: PATH` file (worktrees, submodules); a worktree's git dir names the
//! main one in `commondir`, where the shared refs, `packed-refs` and `config` live, while HEAD and the
//! per-worktree refs stay in its own. HEAD is a detached object id or `ref: NAME`, resolved through the
//! loose ref file, then `packed-refs`, following at most [`MAX_SYMREFS`] symbolic refs; a branch with no
//! commit yet has no revision and so gives no provenance. The origin URL loses its user info
//! (`https://user:token@host/x.git` -> `https://host/x.git`), so a token in a clone URL never reaches a
//! registry; scp-like `git@host:owner/repo.git` has no password and is kept as is, as ko and buildx do.
//! Deliberately not read: the index (uncommitted changes are not detected; the revision names the commit
//! the tree started from), `include`d config files, `url.*.insteadOf` rewrites, and reftable repositories
//! (reported as unreadable); the `config` submodule follows git's own config parser. Every read is capped
//! at [`MAX_FILE`] and refuses anything but a regular file, so a FIFO named HEAD cannot hang a build;
//! anything unexpected is an [`Unreadable`] that the caller turns into one warning, because provenance is
//! a courtesy, never a reason to fail a build. Nothing here depends on time or on the machine, so the same
//! commit (and origin) gives the same labels and the same digest.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::image::{ANNOTATION_REVISION, ANNOTATION_SOURCE, ImageOptions};
use crate::progress::Progress;

/// The most bytes read from any one file of a repository (a `packed-refs` of ~50,000 refs).
pub const MAX_FILE: u64 = 4 * 1024 * 1024;

/// How many symbolic refs HEAD may go through before the chain counts as a loop (git allows 5).
pub const MAX_SYMREFS: usize = 5;

/// Where the image's files came from: the repository's `origin` (without credentials) and its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The `origin` remote's URL; `None` without an origin.
    pub source: Option<String>,
    /// The HEAD commit, 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
    pub revision: String,
}

impl Provenance {
    /// Adds the source and revision to the config labels and the manifest annotations; a key the user set
    /// (`--label`, `--annotation`) keeps the user's value, in that map only.
    pub fn apply_to(&self, image: &mut ImageOptions) {
        let mut pairs = vec![(ANNOTATION_REVISION, &self.revision)];
        if let Some(source) = &self.source {
            pairs.push((ANNOTATION_SOURCE, source));
        }
        for (key, value) in pairs {
            image.labels.entry(key.to_string()).or_insert_with(|| value.clone());
            image.annotations.entry(key.to_string()).or_insert_with(|| value.clone());
            // On the index too (when there is one): registries such as GHCR read a multi-platform image's
            // source from its index.
            image.index_annotations.entry(key.to_string()).or_insert_with(|| value.clone());
        }
    }
}

/// A repository file that could not be used, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub path: PathBuf,
    pub problem: Problem,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    Io(std::io::ErrorKind),
    NotAFile,
    TooLarge,
    NotUtf8,
    /// The file's content is not what git writes there; the text says what was expected.
    Malformed(&'static str),
    /// HEAD goes through more than [`MAX_SYMREFS`] symbolic refs.
    SymrefLoop,
    /// The refs are in a reftable, which this module does not read.
    Reftable,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let problem = match &self.problem {
            Problem::Io(kind) => format!("{kind}"),
            Problem::NotAFile => "not a regular file".to_string(),
            Problem::TooLarge => format!("larger than {} MiB", MAX_FILE / (1024 * 1024)),
            Problem::NotUtf8 => "not UTF-8".to_string(),
            Problem::Malformed(what) => format!("malformed ({what})"),
            Problem::SymrefLoop => format!("more than {MAX_SYMREFS} symbolic refs deep"),
            Problem::Reftable => "refs in a reftable, which docker-idpb does not read".to_string(),
        };
        write!(
            f,
            "git repository file {}: {problem}; the image gets no {ANNOTATION_SOURCE}/revision (--no-vcs skips the \
             lookup)",
            crate::progress::escaped(&self.path.display().to_string())
        )
    }
}

type Result<T> = std::result::Result<T, Unreadable>;

/// Looks up the context's repository and merges its provenance into `image`; a repository that cannot be
/// read is one warning and no provenance, never an error.
pub fn stamp(image: &mut ImageOptions, context_dir: &Path, progress: &mut Progress) {
    match provenance(context_dir) {
        Ok(Some(p)) => p.apply_to(image),
        Ok(None) => {}
        Err(e) => progress.warn(&e.to_string()),
    }
}

/// The provenance of `context_dir`: `None` outside a git work tree or on a branch with no commit yet.
pub fn provenance(context_dir: &Path) -> Result<Option<Provenance>> {
    let Some(repo) = Repository::discover(context_dir)? else { return Ok(None) };
    let Some(revision) = repo.head()? else { return Ok(None) };
    let source = repo.origin_url()?.map(|url| strip_credentials(&url));
    Ok(Some(Provenance { source, revision }))
}

/// A repository's git dir (HEAD, per-worktree refs) and common dir (shared refs, packed-refs, config).
#[derive(Debug)]
struct Repository {
    git_dir: PathBuf,
    common_dir: PathBuf,
}

impl Repository {
    /// The repository of the first directory holding `.git`, from `context_dir` up.
    fn discover(context_dir: &Path) -> Result<Option<Repository>> {
        let start = std::fs::canonicalize(context_dir).map_err(|e| io_error(context_dir, &e))?;
        for dir in start.ancestors() {
            let dot_git = dir.join(".git");
            match std::fs::metadata(&dot_git) {
                Ok(m) if m.is_dir() => return Repository::at(dot_git).map(Some),
                Ok(m) if m.is_file() => {
                    let text = read_text(&dot_git)?.ok_or_else(|| unreadable(&dot_git, Problem::NotAFile))?;
                    let target = text
                        .strip_prefix("gitdir:")
                        .map(|t| t.trim_start_matches(' ').trim_end_matches(['\n', '\r']))
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| unreadable(&dot_git, Problem::Malformed("a .git file holds `gitdir: PATH`")))?;
                    // Relative to the directory of the `.git` file; `join` keeps an absolute path as is.
                    return Repository::at(dir.join(target)).map(Some);
                }
                Ok(_) => return Err(unreadable(&dot_git, Problem::NotAFile)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&dot_git, &e)),
            }
        }
        Ok(None)
    }

    fn at(git_dir: PathBuf) -> Result<Repository> {
        let meta = std::fs::metadata(&git_dir).map_err(|e| io_error(&git_dir, &e))?;
        if !meta.is_dir() {
            return Err(unreadable(&git_dir, Problem::Malformed("a git dir is a directory")));
        }
        let commondir = git_dir.join("commondir");
        let common_dir = match read_text(&commondir)? {
            Some(text) => {
                let rel = text.trim_end_matches(['\n', '\r']);
                if rel.is_empty() {
                    return Err(unreadable(&commondir, Problem::Malformed("commondir names a directory")));
                }
                git_dir.join(rel)
            }
            None => git_dir.clone(),
        };
        if common_dir.join("reftable").is_dir() {
            return Err(unreadable(&common_dir.join("reftable"), Problem::Reftable));
        }
        Ok(Repository { git_dir, common_dir })
    }

    /// The commit HEAD names, or `None` on an unborn branch.
    fn head(&self) -> Result<Option<String>> {
        let mut path = self.git_dir.join("HEAD");
        let mut text = read_text(&path)?.ok_or_else(|| unreadable(&path, Problem::Io(std::io::ErrorKind::NotFound)))?;
        for _ in 0..MAX_SYMREFS {
            let name = match parse_ref(&text).map_err(|what| unreadable(&path, Problem::Malformed(what)))? {
                Ref::Direct(id) => return Ok(Some(id)),
                Ref::Symbolic(name) => name.to_string(),
            };
            path = self.ref_path(&name);
            text = match read_text(&path)? {
                Some(text) => text,
                None => return self.packed_ref(&name),
            };
        }
        Err(unreadable(&self.git_dir.join("HEAD"), Problem::SymrefLoop))
    }

    /// Where the loose ref `name` (already checked by [`parse_ref`]) lives: per-worktree refs in the git
    /// dir, the rest in the common dir.
    fn ref_path(&self, name: &str) -> PathBuf {
        let per_worktree = ["refs/worktree/", "refs/bisect/", "refs/rewritten/"];
        let dir = if per_worktree.iter().any(|p| name.starts_with(p)) { &self.git_dir } else { &self.common_dir };
        dir.join(name)
    }

    /// `name` in `packed-refs`; `None` when it is not there (an unborn branch).
    fn packed_ref(&self, name: &str) -> Result<Option<String>> {
        let path = self.common_dir.join("packed-refs");
        let Some(text) = read_text(&path)? else { return Ok(None) };
        for line in text.lines() {
            // `# pack-refs with: ...` header; `^ID` peels the annotated tag on the line before.
            if line.is_empty() || line.starts_with('#') || line.starts_with('^') {
                continue;
            }
            let (id, ref_name) = line
                .split_once(' ')
                .ok_or_else(|| unreadable(&path, Problem::Malformed("packed-refs lines are `ID NAME`")))?;
            if ref_name.trim_end_matches('\r') == name {
                return object_id(id).map(Some).ok_or_else(|| {
                    unreadable(&path, Problem::Malformed("packed-refs lines start with a 40 or 64 hex object id"))
                });
            }
        }
        Ok(None)
    }

    /// The first `remote.origin.url` in the common dir's `config` (what `git remote get-url origin` prints).
    fn origin_url(&self) -> Result<Option<String>> {
        let path = self.common_dir.join("config");
        let Some(bytes) = read_bytes(&path)? else { return Ok(None) };
        // Lossy: other sections may hold non-UTF-8 text (a Latin-1 user.name) that is none of our business.
        let text = String::from_utf8_lossy(&bytes);
        let url = config::origin_url(&text).map_err(|what| unreadable(&path, Problem::Malformed(what)))?;
        match url {
            Some(u) if u.chars().any(char::is_control) => {
                Err(unreadable(&path, Problem::Malformed("remote.origin.url holds control characters")))
            }
            other => Ok(other),
        }
    }
}

/// The content of HEAD or a loose ref.
#[derive(Debug, PartialEq, Eq)]
enum Ref<'a> {
    Direct(String),
    Symbolic(&'a str),
}

fn parse_ref(text: &str) -> std::result::Result<Ref<'_>, &'static str> {
    let text = text.trim_end();
    if let Some(name) = text.strip_prefix("ref:") {
        let name = name.trim_start();
        // Names stay inside `refs/`: a crafted `ref: ../../x` cannot make us read another file.
        let safe = name.starts_with("refs/")
            && name.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
            && !name.contains(|c: char| c.is_control() || c == '\\');
        return if safe { Ok(Ref::Symbolic(name)) } else { Err("a symbolic ref names refs/...") };
    }
    object_id(text).map(Ref::Direct).ok_or("a ref holds an object id or `ref: refs/...`")
}

/// A SHA-1 (40) or SHA-256 (64) object id, lowercased.
fn object_id(s: &str) -> Option<String> {
    let ok = (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| s.to_ascii_lowercase())
}

/// `url` without its user info: `https://user:token@host/x` -> `https://host/x`. Anything without
/// `SCHEME://` (scp-like `git@host:x`, a local path) is kept as is.
pub fn strip_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return url.to_string();
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The last `@`: a password with an unescaped `@` is still stripped whole.
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A file as text; `None` when it does not exist.
fn read_text(path: &Path) -> Result<Option<String>> {
    match read_bytes(path)? {
        Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| unreadable(path, Problem::NotUtf8)),
        None => Ok(None),
    }
}

/// A regular file of at most [`MAX_FILE`] bytes; `None` when it does not exist. Opened non-blocking, so a
/// FIFO is refused instead of waited on.
fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, &e)),
    };
    let meta = file.metadata().map_err(|e| io_error(path, &e))?;
    if !meta.is_file() {
        return Err(unreadable(path, Problem::NotAFile));
    }
    let mut bytes = Vec::new();
    File::take(file, MAX_FILE + 1).read_to_end(&mut bytes).map_err(|e| io_error(path, &e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(unreadable(path, Problem::TooLarge));
    }
    Ok(Some(bytes))
}

fn unreadable(path: &Path, problem: Problem) -> Unreadable {
    Unreadable { path: path.to_path_buf(), problem }
}

fn io_error(path: &Path, e: &std::io::Error) -> Unreadable {
    unreadable(path, Problem::Io(e.kind()))
}

mod config;
#[cfg(test)]
mod tests;
