//! Tar entry rules, checked by reading the layer back with the `tar` crate (an independent reader).

use super::*;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// Ignores all notes.
struct Silent;
impl LayerObserver for Silent {
    fn skipped(&mut self, _: &Path, _: &str) {}
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("idpb-layer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn file(&self, rel: &str, body: &[u8], mode: u32) {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, PartialEq)]
struct Seen {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    body: Vec<u8>,
}

fn layer(dir: &Path, opts: &LayerOptions) -> (Vec<u8>, LayerDigests) {
    let ctx = Context::open(dir).unwrap();
    write_layer(&ctx, opts, Vec::new(), &mut Silent).unwrap()
}

fn read_back(gz: &[u8]) -> Vec<Seen> {
    let raw = miniz_oxide::inflate::decompress_to_vec(&gz[10..gz.len() - 8]).unwrap();
    let mut archive = tar::Archive::new(&raw[..]);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut body).unwrap();
        let h = e.header();
        out.push(Seen {
            path: e.path().unwrap().to_string_lossy().into_owned(),
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link: e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()),
            body,
        });
        assert!(h.username().unwrap().unwrap_or("").is_empty());
    }
    out
}

#[test]
fn entries_are_sorted_pinned_and_typed() {
    let s = Scratch::new("rules");
    s.file("b.txt", b"bee", 0o644);
    s.file("a/z", b"zed", 0o600);
    s.file("a-b", b"dash", 0o644);
    s.file("run.sh", b"#!/bin/sh\n", 0o755);
    fs::create_dir(s.0.join("empty")).unwrap();
    symlink("../b.txt", s.0.join("a/ln")).unwrap();
    fs::hard_link(s.0.join("b.txt"), s.0.join("hard")).unwrap();
    let (gz, digests) = layer(&s.0, &LayerOptions::default());
    let seen = read_back(&gz);
    let paths: Vec<&str> = seen.iter().map(|e| e.path.as_str()).collect();
    // Directories come before their contents; siblings are sorted by bytes ('-' < '/' is irrelevant here:
    // sorting is per directory, so "a" and its contents precede "a-b").
    assert_eq!(paths, ["a/", "a/ln", "a/z", "a-b", "b.txt", "empty/", "hard", "run.sh"]);
    let by = |p: &str| seen.iter().find(|e| e.path == p).unwrap();
    assert_eq!(by("a/").kind, tar::EntryType::Directory);
    assert_eq!(by("a/ln").kind, tar::EntryType::Symlink);
    assert_eq!(by("a/ln").link.as_deref(), Some("../b.txt"));
    assert_eq!(by("a/z").mode, 0o600);
    assert_eq!(by("run.sh").mode, 0o755);
    assert_eq!(by("empty/").kind, tar::EntryType::Directory);
    // The first name of the hard-link group holds the data; the second links to it.
    assert_eq!(by("b.txt").body, b"bee");
    assert_eq!(by("hard").kind, tar::EntryType::Link);
    assert_eq!(by("hard").link.as_deref(), Some("b.txt"));
    for e in &seen {
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.path);
    }
    assert_eq!(digests.entries, 8);
    assert_eq!(digests.size, gz.len() as u64);
    assert_eq!(digests.digest, crate::digest::Digest::of(&gz));
}

#[test]
fn digest_ignores_mtime_and_location() {
    let a = Scratch::new("repro-a");
    let b = Scratch::new("repro-b");
    for s in [&a, &b] {
        s.file("x/y.txt", b"same", 0o644);
        s.file("z", b"", 0o755);
    }
    let t = fs::File::options().write(true).open(b.0.join("x/y.txt")).unwrap();
    t.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)).unwrap();
    let opts = LayerOptions::default();
    assert_eq!(layer(&a.0, &opts).1, layer(&b.0, &opts).1);
    // With preserved mtimes the touched file makes a difference.
    let keep = LayerOptions { preserve_mtime: true, ..LayerOptions::default() };
    assert_ne!(layer(&a.0, &keep).1.diff_id, layer(&b.0, &keep).1.diff_id);
}

#[test]
fn epoch_chown_and_prefix() {
    let s = Scratch::new("opts");
    s.file("f", b"data", 0o640);
    let opts =
        LayerOptions { epoch: 1_700_000_000, chown: (1000, 2000), prefix: "srv/app".into(), ..Default::default() };
    let seen = read_back(&layer(&s.0, &opts).0);
    let paths: Vec<&str> = seen.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["srv/", "srv/app/", "srv/app/f"]);
    let f = &seen[2];
    assert_eq!((f.uid, f.gid, f.mtime, f.mode), (1000, 2000, 1_700_000_000, 0o640));
}

#[test]
fn long_names_use_pax() {
    let s = Scratch::new("pax");
    let long_dir = "d".repeat(60);
    let rel = format!("{long_dir}/{}", "f".repeat(80));
    s.file(&rel, b"long", 0o644);
    let target = "t".repeat(150);
    symlink(&target, s.0.join("ln")).unwrap();
    let seen = read_back(&layer(&s.0, &LayerOptions::default()).0);
    assert!(seen.iter().any(|e| e.path == rel && e.body == b"long"), "{seen:?}");
    assert!(seen.iter().any(|e| e.path == "ln" && e.link.as_deref() == Some(target.as_str())));
}

#[test]
fn pax_record_length_counts_itself() {
    // Around the points where the length gains a digit, the length must still count itself.
    for value_len in [1usize, 5, 90, 95, 96, 97, 990, 995, 996] {
        let rec = pax_records(&[("path", vec![b'x'; value_len])]);
        let (len, _) = std::str::from_utf8(&rec).unwrap().split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rec.len(), "value_len {value_len}");
    }
}

#[test]
fn excluded_paths_and_exceptions() {
    let s = Scratch::new("ignore");
    s.file(".dockerignore", b"*.log\nbuild\n!build/keep.txt\n", 0o644);
    s.file("app.log", b"", 0o644);
    s.file("main.c", b"", 0o644);
    s.file("build/out.o", b"", 0o644);
    s.file("build/keep.txt", b"k", 0o644);
    let seen = read_back(&layer(&s.0, &LayerOptions::default()).0);
    let paths: Vec<&str> = seen.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, [".dockerignore", "build/", "build/keep.txt", "main.c"]);
}

#[test]
fn unreadable_file_is_an_error_naming_it() {
    if unsafe_is_root() {
        return; // root reads everything; the integration tests cover this as a non-root user where possible
    }
    let s = Scratch::new("unreadable");
    s.file("secret", b"x", 0o000);
    let ctx = Context::open(&s.0).unwrap();
    let err = write_layer(&ctx, &LayerOptions::default(), Vec::new(), &mut Silent).unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");
}

fn unsafe_is_root() -> bool {
    fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

#[test]
fn special_files_are_skipped_and_reported() {
    let s = Scratch::new("special");
    s.file("f", b"x", 0o644);
    let sock = s.0.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    struct Record(Vec<String>);
    impl LayerObserver for Record {
        fn skipped(&mut self, path: &Path, what: &str) {
            self.0.push(format!("{}:{what}", path.file_name().unwrap().to_string_lossy()));
        }
    }
    let mut rec = Record(Vec::new());
    let ctx = Context::open(&s.0).unwrap();
    let (gz, _) = write_layer(&ctx, &LayerOptions::default(), Vec::new(), &mut rec).unwrap();
    assert_eq!(rec.0, ["sock:socket"]);
    assert_eq!(read_back(&gz).len(), 1);
}
