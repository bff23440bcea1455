//! Provenance end to end: repositories made by the real `git` (plain, packed refs, a worktree, a detached
//! HEAD, an unborn branch, SHA-256), built with the real binary, and the image's manifest annotations and
//! config labels read back. git is the oracle for the revision (`git rev-parse HEAD`); the origin URL
//! carries a token, which must be stripped and appear nowhere in the output. git runs with a temp `HOME`,
//! no system config and a fixed identity and date, so the machine's git config cannot change the fixtures.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const SOURCE: &str = "org.opencontainers.image.source";
const REVISION: &str = "org.opencontainers.image.revision";
const SECRET: &str = "secret";
const ORIGIN: &str = "https://user:secret@example.invalid/team/app.git";
const STRIPPED: &str = "https://example.invalid/team/app.git";

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// The `git` CLI with an isolated environment: its own `HOME`, no system config, a fixed identity and date,
/// and none of the `GIT_*` variables a hook or a CI job may have set.
struct Git {
    home: TempDir,
}

impl Git {
    fn new() -> Git {
        require_tool("git");
        Git { home: TempDir::new("git-home") }
    }

    /// `git ARGS` in `dir`; returns stdout, trimmed.
    #[track_caller]
    fn run(&self, dir: &Path, args: &[&str]) -> String {
        let mut cmd = Command::new(require_tool("git"));
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("GIT_")) {
                cmd.env_remove(name);
            }
        }
        cmd.env_remove("XDG_CONFIG_HOME")
            .env("HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.invalid")
            .env("GIT_COMMITTER_NAME", "Test Committer")
            .env("GIT_COMMITTER_EMAIL", "committer@example.invalid")
            .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
            .current_dir(dir)
            .args(["-c", "init.defaultBranch=main"])
            .args(args);
        checked(&mut cmd).stdout.trim().to_string()
    }

    /// A repository at `TMP/repo` whose origin URL carries a token, with one commit holding `app/` (the
    /// context, so `.git` with the token is not in the layer).
    fn repo_with_commit(&self, tmp: &TempDir) -> PathBuf {
        let repo = self.init(tmp, &[]);
        self.commit(&repo, "first");
        repo
    }

    /// `git init` at `TMP/repo` with `extra` init flags and the origin, and `app/` written but not committed.
    fn init(&self, tmp: &TempDir, extra: &[&str]) -> PathBuf {
        let repo = tmp.subdir("repo");
        let mut args = vec!["init", "-q"];
        args.extend(extra);
        self.run(&repo, &args);
        self.run(&repo, &["remote", "add", "origin", ORIGIN]);
        make_small_context(&repo.join("app"), "vcs");
        repo
    }

    /// Commits everything under `dir` (`message` also goes into `app/commit.txt`, so each commit differs).
    fn commit(&self, dir: &Path, message: &str) {
        write_file(&dir.join("app/commit.txt"), message.as_bytes());
        self.run(dir, &["add", "-A"]);
        self.run(dir, &["commit", "-q", "-m", message]);
    }

    fn head(&self, dir: &Path) -> String {
        self.run(dir, &["rev-parse", "HEAD"])
    }
}

/// `docker-idpb build CONTEXT --oci-layout LAYOUT -t vcs:1 EXTRA...`, which must succeed; returns the output
/// and the manifest digest.
#[track_caller]
fn build(context: &Path, layout: &Path, extra: &[&str]) -> (Output, String) {
    let mut cmd = IdpbCommand::new();
    cmd.arg("build").arg(context).arg("--oci-layout").arg(layout).args(["-t", "vcs:1"]).args(extra);
    let output = cmd.run();
    output.assert_success();
    let lines = built_lines(&output);
    assert_eq!(lines.len(), 1, "one tag, one line: {output}");
    assert_no_secret(&output, &[SECRET]);
    let digest = lines[0].1.clone();
    (output, digest)
}

/// The provenance keys of an image: `(source, revision)` of its manifest annotations and of its config
/// labels, which must agree.
#[track_caller]
fn provenance(manifest: &serde_json::Value, config: &serde_json::Value) -> (Option<String>, Option<String>) {
    let pair = |map: &serde_json::Value| {
        let get =
            |key: &str| map.get(key).map(|v| v.as_str().unwrap_or_else(|| panic!("{key} is a string")).to_string());
        (get(SOURCE), get(REVISION))
    };
    let annotations = pair(&manifest["annotations"]);
    let labels = pair(&config["config"]["Labels"]);
    assert_eq!(annotations, labels, "annotations and labels agree: {manifest} {config}");
    annotations
}

/// The provenance keys of `vcs:1` in `layout`.
#[track_caller]
fn layout_provenance(layout: &Path) -> (Option<String>, Option<String>) {
    let (manifest, _) = layout_manifest(layout, "1");
    let config = layout_blob_json(layout, manifest["config"]["digest"].as_str().unwrap_or_default());
    provenance(&manifest, &config)
}

/// Asserts no file under `dir` (blobs, index.json) contains `needle`.
#[track_caller]
fn assert_nowhere_in(dir: &Path, needle: &str) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())).flatten() {
        let path = entry.path();
        if path.is_dir() {
            assert_nowhere_in(&path, needle);
        } else {
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!found, "{needle:?} is in {}", path.display());
        }
    }
}

/// Panics unless neither `dir` nor any parent holds `.git`: the "outside a repository" cases would
/// otherwise test the machine, not the binary.
#[track_caller]
fn assert_outside_any_repository(dir: &Path) {
    let dir = fs::canonicalize(dir).unwrap_or_else(|e| panic!("cannot resolve {}: {e}", dir.display()));
    if let Some(repo) = dir.ancestors().find(|d| d.join(".git").exists()) {
        panic!("the temp dir {} is inside the git repository {}: set TMPDIR elsewhere", dir.display(), repo.display());
    }
}

// ---------------------------------------------------------------------------------------------------------
// Repositories git made

#[test]
fn a_plain_repository_gives_the_stripped_origin_and_the_head_commit() {
    let git = Git::new();
    let tmp = TempDir::new("vcs-plain");
    let repo = git.repo_with_commit(&tmp);
    let (output, digest) = build(&repo.join("app"), &tmp.join("layout"), &[]);
    assert!(!output.stderr.contains("warning"), "{output}");
    assert_eq!(layout_provenance(&tmp.join("layout")), (Some(STRIPPED.into()), Some(git.head(&repo))));
    assert_nowhere_in(&tmp.join("layout"), SECRET);
    // Same commit, same digest: nothing time- or machine-dependent was added.
    let (_, again) = build(&repo.join("app"), &tmp.join("again"), &["--no-cache"]);
    assert_eq!(again, digest);
    // A subdirectory of the work tree is in the same repository.
    build(&repo.join("app/sub"), &tmp.join("sub"), &[]);
    assert_eq!(layout_provenance(&tmp.join("sub")), (Some(STRIPPED.into()), Some(git.head(&repo))));
    // A multi-platform image carries the keys on its index as well as on each manifest.
    build(&repo.join("app"), &tmp.join("multi"), &["--platform", "linux/amd64,linux/arm64"]);
    let index: serde_json::Value = serde_json::from_slice(&fs::read(tmp.join("multi/index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let image_index: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.join("multi/blobs/sha256").join(digest)).unwrap()).unwrap();
    assert_eq!(image_index["annotations"]["org.opencontainers.image.source"], STRIPPED, "{image_index}");
    assert_eq!(image_index["annotations"]["org.opencontainers.image.revision"], git.head(&repo), "{image_index}");
}

#[test]
fn packed_refs_are_read() {
    let git = Git::new();
    let tmp = TempDir::new("vcs-packed");
    let repo = git.repo_with_commit(&tmp);
    git.run(&repo, &["pack-refs", "--all"]);
    assert!(!repo.join(".git/refs/heads/main").exists(), "pack-refs --all removed the loose ref");
    build(&repo.join("app"), &tmp.join("layout"), &[]);
    assert_eq!(layout_provenance(&tmp.join("layout")), (Some(STRIPPED.into()), Some(git.head(&repo))));
}

#[test]
fn a_worktree_gives_its_own_head_and_the_main_repository_origin() {
    let git = Git::new();
    let tmp = TempDir::new("vcs-worktree");
    let repo = git.repo_with_commit(&tmp);
    let worktree = tmp.join("wt");
    git.run(&repo, &["worktree", "add", "-q", "-b", "feature", &path_str(&worktree)]);
    git.commit(&worktree, "on the feature branch");
    let head = git.head(&worktree);
    assert_ne!(head, git.head(&repo), "the worktree is on its own commit");
    assert!(worktree.join(".git").is_file(), "a worktree's .git is a file");
    build(&worktree.join("app"), &tmp.join("layout"), &[]);
    assert_eq!(layout_provenance(&tmp.join("layout")), (Some(STRIPPED.into()), Some(head)));
    assert_nowhere_in(&tmp.join("layout"), SECRET);
}

#[test]
fn a_detached_head_gives_its_commit() {
    let git = Git::new();
    let tmp = TempDir::new("vcs-detached");
    let repo = git.repo_with_commit(&tmp);
    let first = git.head(&repo);
    git.commit(&repo, "second");
    git.run(&repo, &["checkout", "-q", "--detach", &first]);
    build(&repo.join("app"), &tmp.join("layout"), &[]);
    assert_eq!(layout_provenance(&tmp.join("layout")), (Some(STRIPPED.into()), Some(first)));
}

#[test]
fn a_sha256_repository_gives_a_64_digit_revision() {
    let git = Git::new();
    let tmp = TempDir::new("vcs-sha256");
    let repo = git.init(&tmp, &["--object-format=sha256"]);
    git.commit(&repo, "first");
    let head = git.head(&repo);
    assert_eq!(head.len(), 64, "{head}");
    build(&repo.join("app"), &tmp.join("layout"), &[]);
    assert_eq!(layout_provenance(&tmp.join("layout")), (Some(STRIPPED.into()), Some(head)));
}

#[test]
fn an_unborn_branch_or_no_origin_gives_what_there_is() {
    let git = Git::new();
    let tmp = TempDir::new("vcs-unborn");
    let repo = git.init(&tmp, &[]);
    let (output, _) = build(&repo.join("app"), &tmp.join("unborn"), &[]);
    assert!(!output.stderr.contains("warning"), "no commit yet is not a problem: {output}");
    assert_eq!(layout_provenance(&tmp.join("unborn")), (None, None));
    git.commit(&repo, "first");
    git.run(&repo, &["remote", "remove", "origin"]);
    build(&repo.join("app"), &tmp.join("no-origin"), &[]);
    assert_eq!(layout_provenance(&tmp.join("no-origin")), (None, Some(git.head(&repo))));
}

#[test]
fn a_broken_repository_is_one_warning_and_no_provenance() {
    let git = Git::new();
    let tmp = TempDir::new("vcs-broken");
    let repo = git.repo_with_commit(&tmp);
    write_file(&repo.join(".git/HEAD"), b"not a ref\n");
    let (output, _) = build(&repo.join("app"), &tmp.join("layout"), &[]);
    let warnings: Vec<&str> = output.stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{output}");
    assert!(warnings[0].contains(".git/HEAD") && warnings[0].contains("--no-vcs"), "{output}");
    assert_eq!(layout_provenance(&tmp.join("layout")), (None, None));
    let (quiet, _) = build(&repo.join("app"), &tmp.join("quiet"), &["-q"]);
    assert!(quiet.stderr.is_empty(), "-q silences the warning: {quiet}");
}

// ---------------------------------------------------------------------------------------------------------
// What turns it off, and what wins

#[test]
fn outside_a_repository_and_with_no_vcs_nothing_is_added() {
    let git = Git::new();
    let tmp = TempDir::new("vcs-off");
    let repo = git.repo_with_commit(&tmp);
    // The same files outside any repository.
    let plain = tmp.subdir("plain");
    let plain_app = plain.join("app");
    checked(Command::new(require_tool("cp")).arg("-a").arg(repo.join("app")).arg(&plain));
    assert_outside_any_repository(&plain_app);
    let (_, outside) = build(&plain_app, &tmp.join("outside"), &[]);
    assert_eq!(layout_provenance(&tmp.join("outside")), (None, None));
    let (manifest, _) = layout_manifest(&tmp.join("outside"), "1");
    assert!(manifest.get("annotations").is_none(), "no annotations at all: {manifest}");

    let (_, no_vcs) = build(&repo.join("app"), &tmp.join("no-vcs"), &["--no-vcs"]);
    assert_eq!(layout_provenance(&tmp.join("no-vcs")), (None, None));
    assert_eq!(no_vcs, outside, "--no-vcs builds what the directory alone gives");
}

#[test]
fn a_key_the_user_gives_wins_for_that_key_only() {
    let git = Git::new();
    let tmp = TempDir::new("vcs-user");
    let repo = git.repo_with_commit(&tmp);
    let layout = tmp.join("layout");
    build(&repo.join("app"), &layout, &["--label", "org.opencontainers.image.source=https://example.invalid/mine"]);
    let (manifest, _) = layout_manifest(&layout, "1");
    let config = layout_blob_json(&layout, manifest["config"]["digest"].as_str().unwrap_or_default());
    let labels = &config["config"]["Labels"];
    assert_eq!(labels[SOURCE], "https://example.invalid/mine", "{config}");
    assert_eq!(labels[REVISION], git.head(&repo).as_str(), "{config}");
    // The annotations are another map: the label given does not touch them.
    assert_eq!(manifest["annotations"][SOURCE], STRIPPED, "{manifest}");
    assert_eq!(manifest["annotations"][REVISION], git.head(&repo).as_str(), "{manifest}");

    let layout = tmp.join("annotated");
    build(&repo.join("app"), &layout, &["--annotation", "org.opencontainers.image.revision=v1.2.3"]);
    let (manifest, _) = layout_manifest(&layout, "1");
    assert_eq!(manifest["annotations"][REVISION], "v1.2.3", "{manifest}");
    assert_eq!(manifest["annotations"][SOURCE], STRIPPED, "{manifest}");
}

// ---------------------------------------------------------------------------------------------------------
// push

#[test]
fn push_of_a_directory_adds_provenance_and_push_of_a_layout_keeps_the_image_as_built() {
    let git = Git::new();
    let tmp = TempDir::new("vcs-push");
    let repo = git.repo_with_commit(&tmp);
    let registry = Registry::start(RegistryMode::Http);

    let target = registry.reference("team/app:1");
    let output = IdpbCommand::new().arg("push").arg(repo.join("app")).args(["-t", &target]).run();
    pushed_digest(&output, &target);
    assert_no_secret(&output, &[SECRET]);
    let manifest = skopeo_inspect_raw(&registry, "team/app:1");
    let config = skopeo_inspect_config(&registry, "team/app:1");
    assert_eq!(provenance(&manifest, &config), (Some(STRIPPED.into()), Some(git.head(&repo))));

    // An image built earlier is pushed as it is, even from inside a repository.
    let layout = tmp.join("layout");
    let (_, built) = build(&repo.join("app"), &layout, &["--no-vcs"]);
    let target = registry.reference("team/app:2");
    let mut cmd = IdpbCommand::new();
    cmd.current_dir(repo.join("app")).arg("push").arg("--oci-layout").arg(&layout).args(["-t", &target]);
    let output = cmd.run();
    assert_eq!(pushed_digest(&output, &target), built, "{output}");
    let manifest = skopeo_inspect_raw(&registry, "team/app:2");
    let config = skopeo_inspect_config(&registry, "team/app:2");
    assert_eq!(provenance(&manifest, &config), (None, None));
}
