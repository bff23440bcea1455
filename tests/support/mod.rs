//! Shared fixtures for docker-idpb's integration tests (`mod support;` from any `tests/*.rs`).
//!
//! Tests drive the real binary against real peers: Debian's `docker-registry` (distribution 2.8) in four
//! modes (plain HTTP, HTTPS, HTTPS + htpasswd, HTTPS + token auth), checked afterwards with `skopeo` and
//! `umoci`, which are the reference for "a valid image". Every fixture is a value that owns what it made (a
//! temp dir, a child process) and releases it on `Drop`, so a failing test still cleans up; set
//! `IDPB_KEEP_TEST_DIRS=1` to keep the dirs (registry logs, certificates, contexts) for a post-mortem. A
//! missing tool panics with the `make test` hint instead of skipping, because a silently skipped test is a
//! green lie in CI. Everything is synchronous std: plain HTTP goes over a raw `TcpStream`, HTTPS through
//! `curl`, certificates and ES256 keys come from the `openssl` CLI and the token server is a small Python
//! script beside this file, so the crate gains no dependency for its tests.
//!
//! Map: [`process`] runs the binary in an isolated environment, [`http`] talks to servers directly,
//! [`bases`] makes base images with umoci (busybox, merged-usr) and runs a private Docker engine,
//! [`tls`] makes the test CA (and good or bad server certificates), [`registry`] starts registries and the token server, [`hostile`] plays a
//! misbehaving registry (or proxy) and records what it was sent, [`peers`] wraps skopeo and umoci,
//! [`context`] builds a build context full of edge cases, [`tree`] compares directory trees,
//! [`results`] reads back what the binary printed (`REF@DIGEST` lines, digests, JSON) and [`terminal`]
//! runs the binary on a pseudo-terminal and replays what it drew there.

// Each test file uses a different subset of the fixtures.
#![allow(dead_code)]

pub mod bases;
pub mod context;
pub mod faults;
pub mod hostile;
pub mod http;
pub mod nginx;
pub mod peers;
pub mod process;
pub mod registry;
pub mod results;
pub mod terminal;
pub mod tls;
pub mod tree;

#[allow(unused_imports)]
pub use bases::{
    BASE_APPLETS, BASE_CMD, BASE_ENTRYPOINT, BASE_TAG, BUSYBOX, BUSYBOX_BASE_PATH, DockerEngine, MERGED_USR_BASE_PATH,
    Podman, add_platform_index, busybox_base, layout_blob_json, layout_manifest, merged_usr_base, retag_architecture,
    store_base_index, store_base_oci, store_base_v2s2, tagged,
};
#[allow(unused_imports)]
pub use context::{RANDOM_FILE_SIZE, make_rich_context, make_small_context, pseudo_random_bytes, write_file};
#[allow(unused_imports)]
pub use faults::*;
#[allow(unused_imports)]
pub use hostile::{HostileAuth, HostileOptions, HostileServer, Recorded, Scenario};
#[allow(unused_imports)]
pub use http::{
    HttpResponse, Request, base64, basic_auth, curl_get, curl_request, fetch, http_get, http_request, try_fetch,
};
#[allow(unused_imports)]
pub use nginx::*;
#[allow(unused_imports)]
pub use peers::{
    assert_pulls_as, skopeo_copy_to_oci, skopeo_inspect_config, skopeo_inspect_layout_config,
    skopeo_inspect_layout_raw, skopeo_inspect_raw, skopeo_push_oci, skopeo_push_oci_with, umoci_build_layout,
    umoci_unpack,
};
#[allow(unused_imports)]
pub use process::{
    Background, DEFAULT_TIMEOUT, IdpbCommand, Output, checked, docker_cli, idpb, install_plugin, require_python_jwt,
    require_tool, run, run_with_stdin, run_with_timeout,
};
#[allow(unused_imports)]
pub use registry::{
    AccessLogEntry, MANIFEST_ACCEPT, Registry, RegistryMode, RegistryOptions, TOKEN_ISSUER, TOKEN_SERVICE,
    stored_digest, stored_manifest, tag_list,
};
#[allow(unused_imports)]
pub use results::{
    assert_clean_error, assert_digest, assert_no_secret, assert_one_line_error, build_digest, built_lines, json_result,
    last_layer, pushed_digest, pushed_lines, read_json, sha256_digest, strings,
};
#[allow(unused_imports)]
pub use terminal::{Terminal, replay};
#[allow(unused_imports)]
pub use tls::{LOOPBACK_NAMES, ServerCert, TEST_CA_NAME, TestCa, certificate_fingerprint, certificate_validity};
#[allow(unused_imports)]
pub use tree::{Entry, EntryKind, Listing, assert_same_listing, assert_same_tree, diff_listings, tree_listing};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The binary under test, built by cargo for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_docker-idpb"))
}

/// `path` as a `String`, for argument lists; panics when it is not UTF-8.
pub fn path_str(path: &Path) -> String {
    path.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", path.display())).to_string()
}

/// A fresh directory under `std::env::temp_dir()`, removed on drop unless `IDPB_KEEP_TEST_DIRS` is set.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `idpb-LABEL-PID-N-NANOS`; the label only makes kept dirs easier to tell apart.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let name = format!("idpb-{label}-{}-{n}-{nanos:08x}", std::process::id());
            let path = std::env::temp_dir().join(name);
            match fs::create_dir(&path) {
                Ok(()) => return TempDir { path },
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create temp dir {}: {e}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`, not created.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// `self.path().join(rel)`, created with its parents.
    pub fn subdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let dir = self.path.join(rel);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("IDPB_KEEP_TEST_DIRS").is_some() {
            eprintln!("IDPB_KEEP_TEST_DIRS: keeping {}", self.path.display());
            return;
        }
        if fs::remove_dir_all(&self.path).is_err() {
            // A test may have made a directory unwritable (an unreadable-context test, a rootless unpack).
            make_dirs_writable(&self.path);
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn make_dirs_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_dirs_writable(&entry.path());
        }
    }
}
