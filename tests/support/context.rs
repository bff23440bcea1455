//! A build context that holds every edge case a layer writer must get right.
//!
//! [`make_rich_context`] writes it with explicit modes (the umask does not matter) and deterministic
//! content, so two calls give identical trees and the layer built from it has a stable digest. Its
//! `.dockerignore` uses Docker's semantics: `*.log` matches at the root only (`src/debug.log` stays),
//! `build/` excludes the directory and everything in it, and `!build/keep.txt` brings one file back, so
//! `build/` itself still appears (as the parent of `keep.txt`). [`make_small_context`] is the quick one
//! for tests that only need some image, and [`write_file`] adds files to either.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

/// The directory names that make [`LONG_FILE`] longer than 255 bytes, past both the 100-byte `name`
/// field of a tar header and the 155+100 bytes of a ustar `prefix` + `name`.
const LONG_DIR: &str = "long/directory-name-number-one-padded-to-fifty-chars/\
                        directory-name-number-two-padded-to-fifty-chars/\
                        directory-name-number-three-padded-to-fifty-char/\
                        directory-name-number-four-padded-to-fifty-chars/\
                        directory-name-number-five-padded-to-fifty-chars";
const LONG_FILE: &str = "a-file-whose-own-name-is-also-rather-long.txt";

/// Size of `data/random.bin`: several MiB, so a layer spans many upload chunks.
pub const RANDOM_FILE_SIZE: usize = 9 * 1024 * 1024;

/// Fills `dir` (which must exist, ideally empty; it gets mode 0755) and returns the paths `.dockerignore`
/// excludes, sorted.
///
/// Contents: nested dirs (`src/lib/`), a relative symlink to a file (`src/lib/readme-link ->
/// ../../README.md`), a relative symlink with a target over 100 bytes (`long-link`), a dangling symlink, a
/// hard-link pair (`hard/original.txt`, `hard/linked.txt`), an empty dir, an executable (`bin/run.sh`,
/// 0755), a read-only file (0444) in a 0700 dir, a 9 MiB pseudo-random file, a path over 255 bytes, a
/// name with spaces and non-ASCII characters, and ignored and re-included files.
pub fn make_rich_context(dir: &Path) -> Vec<String> {
    let text = |rel: &str| format!("contents of {rel}\n").into_bytes();
    let files: &[(&str, Vec<u8>, u32)] = &[
        (".dockerignore", b"# build outputs and logs\n*.log\nbuild/\n!build/keep.txt\n".to_vec(), 0o644),
        ("README.md", b"# rich context\n".to_vec(), 0o644),
        ("app.log", text("app.log"), 0o644),
        ("src/main.c", b"int main(void) { return 0; }\n".to_vec(), 0o644),
        ("src/debug.log", text("src/debug.log"), 0o644),
        ("src/lib/util.c", text("src/lib/util.c"), 0o644),
        ("hard/original.txt", text("a file with two names"), 0o644),
        ("bin/run.sh", b"#!/bin/sh\necho hello from the rich context\n".to_vec(), 0o755),
        ("private/read-only.txt", text("private/read-only.txt"), 0o444),
        ("data/random.bin", pseudo_random_bytes(0x1d9b, RANDOM_FILE_SIZE), 0o644),
        (&format!("{LONG_DIR}/{LONG_FILE}"), text(LONG_FILE), 0o644),
        ("names/with space ünïcödé ✓.txt", text("names/with space ünïcödé ✓.txt"), 0o644),
        ("build/keep.txt", text("build/keep.txt"), 0o644),
        ("build/out.o", text("build/out.o"), 0o644),
        ("build/sub/deep.o", text("build/sub/deep.o"), 0o644),
    ];
    for (rel, contents, _) in files {
        write_file(&dir.join(rel), contents);
    }
    let empty = dir.join("empty-dir");
    fs::create_dir_all(&empty).unwrap_or_else(|e| panic!("cannot create {}: {e}", empty.display()));
    link(dir, "hard/linked.txt", |path| fs::hard_link(dir.join("hard/original.txt"), path));
    link(dir, "src/lib/readme-link", |path| symlink("../../README.md", path));
    link(dir, "dangling-link", |path| symlink("missing/nowhere.txt", path));
    link(dir, "long-link", |path| symlink(format!("{LONG_DIR}/{LONG_FILE}"), path));

    // Modes last: directories first so the 0700 one is not undone, files after their dirs.
    set_dir_modes(dir);
    chmod(&dir.join("private"), 0o700);
    for (rel, _, mode) in files {
        chmod(&dir.join(rel), *mode);
    }
    ["app.log", "build/out.o", "build/sub", "build/sub/deep.o"].map(String::from).to_vec()
}

/// A small context: a text file naming `marker` and 64 KiB of incompressible data in a subdirectory.
pub fn make_small_context(dir: &Path, marker: &str) {
    write_file(&dir.join("hello.txt"), format!("hello from {marker}\n").as_bytes());
    write_file(&dir.join("sub/data.bin"), &pseudo_random_bytes(0x5eed, 64 * 1024));
}

/// Writes `contents` to `path`, creating its parent directories.
pub fn write_file(path: &Path, contents: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn link(dir: &Path, rel: &str, make: impl FnOnce(&Path) -> std::io::Result<()>) {
    let path = dir.join(rel);
    make(&path).unwrap_or_else(|e| panic!("cannot create link {}: {e}", path.display()));
}

fn set_dir_modes(dir: &Path) {
    chmod(dir, 0o755);
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            set_dir_modes(&entry.path());
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

/// `len` bytes from a xorshift64 generator seeded with `seed`: incompressible, yet the same every run.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}
