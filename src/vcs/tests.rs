//! Fixture repositories written file by file, so each case is exactly the layout git would leave (or a
//! broken one), with no git binary involved.

use super::*;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};

const ID: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER: &str = "89abcdef0123456789abcdef0123456789abcdef";
const ID_256: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A temporary directory, removed on drop; panics if it is inside a git work tree, which would make the
/// "no repository" cases pass or fail by accident.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("idpb-vcs-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        let dir = fs::canonicalize(&dir).expect("canonical scratch dir");
        if let Some(repo) = dir.ancestors().find(|d| d.join(".git").exists()) {
            panic!(
                "the temp dir {} is inside the git work tree {}: set TMPDIR elsewhere",
                dir.display(),
                repo.display()
            );
        }
        Scratch(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().expect("has parent")).expect("create parent");
        fs::write(&path, text).expect("write fixture");
        path
    }

    fn dir(&self, rel: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(&path).expect("create dir");
        path
    }

    /// A repository at `rel` (`rel/.git`) on branch main at [`ID`], with `config` as its config.
    fn repo(&self, rel: &str, config: &str) -> PathBuf {
        self.write(&format!("{rel}/.git/HEAD"), "ref: refs/heads/main\n");
        self.write(&format!("{rel}/.git/refs/heads/main"), &format!("{ID}\n"));
        self.write(&format!("{rel}/.git/config"), config);
        self.dir(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const ORIGIN_WITH_TOKEN: &str = "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\
    [remote \"origin\"]\n\turl = https://user:secret@example.invalid/team/app.git\n\
    \tfetch = +refs/heads/*:refs/remotes/origin/*\n[branch \"main\"]\n\tremote = origin\n";

fn found(source: Option<&str>, revision: &str) -> Option<Provenance> {
    Some(Provenance { source: source.map(str::to_string), revision: revision.to_string() })
}

#[test]
fn a_plain_repository_gives_its_origin_without_credentials_and_its_commit() {
    let s = Scratch::new("plain");
    let repo = s.repo("repo", ORIGIN_WITH_TOKEN);
    let expected = found(Some("https://example.invalid/team/app.git"), ID);
    assert_eq!(provenance(&repo), Ok(expected.clone()));
    // From a subdirectory too: the repository is found by walking up from the context.
    assert_eq!(provenance(&s.dir("repo/deep/app")), Ok(expected));
}

#[test]
fn outside_a_repository_there_is_no_provenance() {
    let s = Scratch::new("none");
    assert_eq!(provenance(&s.dir("ctx/sub")), Ok(None));
}

#[test]
fn a_branch_only_in_packed_refs_is_found_there() {
    let s = Scratch::new("packed");
    let repo = s.repo("repo", ORIGIN_WITH_TOKEN);
    fs::remove_file(s.path("repo/.git/refs/heads/main")).expect("remove loose ref");
    s.write(
        "repo/.git/packed-refs",
        &format!(
            "# pack-refs with: peeled fully-peeled sorted \n{OTHER} refs/heads/feature\n{ID} refs/heads/main\n\
             {OTHER} refs/tags/v1\n^{ID}\n"
        ),
    );
    assert_eq!(provenance(&repo), Ok(found(Some("https://example.invalid/team/app.git"), ID)));
}

#[test]
fn a_loose_ref_wins_over_a_stale_packed_one() {
    let s = Scratch::new("loose-wins");
    let repo = s.repo("repo", "");
    s.write("repo/.git/packed-refs", &format!("{OTHER} refs/heads/main\n"));
    assert_eq!(provenance(&repo), Ok(found(None, ID)));
}

#[test]
fn a_worktree_reads_head_from_its_git_dir_and_refs_and_config_from_the_common_dir() {
    let s = Scratch::new("worktree");
    s.repo("main", ORIGIN_WITH_TOKEN);
    s.write("main/.git/refs/heads/feature", &format!("{OTHER}\n"));
    s.write("main/.git/worktrees/wt/HEAD", "ref: refs/heads/feature\n");
    s.write("main/.git/worktrees/wt/commondir", "../..\n");
    // Relative to the directory of the `.git` file.
    s.write("wt/.git", "gitdir: ../main/.git/worktrees/wt\n");
    let expected = found(Some("https://example.invalid/team/app.git"), OTHER);
    assert_eq!(provenance(&s.dir("wt/src")), Ok(expected.clone()));
    // An absolute gitdir and an absolute commondir work the same.
    s.write("wt2/.git", &format!("gitdir: {}\n", s.path("main/.git/worktrees/wt").display()));
    s.write("main/.git/worktrees/wt/commondir", &format!("{}\n", s.path("main/.git").display()));
    assert_eq!(provenance(&s.path("wt2")), Ok(expected));
}

#[test]
fn a_worktree_branch_packed_in_the_common_dir_is_found() {
    let s = Scratch::new("worktree-packed");
    s.repo("main", "");
    s.write("main/.git/packed-refs", &format!("{OTHER} refs/heads/feature\n"));
    s.write("main/.git/worktrees/wt/HEAD", "ref: refs/heads/feature\n");
    s.write("main/.git/worktrees/wt/commondir", "../..\n");
    s.write("wt/.git", "gitdir: ../main/.git/worktrees/wt\n");
    assert_eq!(provenance(&s.path("wt")), Ok(found(None, OTHER)));
}

#[test]
fn a_detached_head_is_its_commit() {
    let s = Scratch::new("detached");
    let repo = s.repo("repo", ORIGIN_WITH_TOKEN);
    s.write("repo/.git/HEAD", &format!("{OTHER}\n"));
    assert_eq!(provenance(&repo), Ok(found(Some("https://example.invalid/team/app.git"), OTHER)));
    // SHA-256 repositories have 64-digit ids; upper case is read as lower.
    s.write("repo/.git/HEAD", &ID_256.to_ascii_uppercase());
    assert_eq!(provenance(&repo), Ok(found(Some("https://example.invalid/team/app.git"), ID_256)));
}

#[test]
fn symbolic_refs_are_followed_a_few_levels_deep() {
    let s = Scratch::new("symref");
    let repo = s.repo("repo", "");
    s.write("repo/.git/HEAD", "ref: refs/heads/alias\n");
    s.write("repo/.git/refs/heads/alias", "ref: refs/heads/main\n");
    assert_eq!(provenance(&repo), Ok(found(None, ID)));
    s.write("repo/.git/refs/heads/main", "ref: refs/heads/alias\n");
    let err = provenance(&repo).expect_err("a loop");
    assert_eq!((err.path, err.problem), (s.path("repo/.git/HEAD"), Problem::SymrefLoop));
}

#[test]
fn an_unborn_branch_gives_no_provenance_and_no_warning() {
    let s = Scratch::new("unborn");
    let repo = s.repo("repo", ORIGIN_WITH_TOKEN);
    fs::remove_file(s.path("repo/.git/refs/heads/main")).expect("remove ref");
    assert_eq!(provenance(&repo), Ok(None));
    s.write("repo/.git/packed-refs", &format!("# pack-refs with: peeled\n{OTHER} refs/heads/other\n"));
    assert_eq!(provenance(&repo), Ok(None));
}

#[test]
fn without_an_origin_the_revision_is_still_given() {
    let s = Scratch::new("no-origin");
    let config = "[core]\n\tbare = false\n[remote \"upstream\"]\n\turl = https://example.invalid/up.git\n";
    assert_eq!(provenance(&s.repo("repo", config)), Ok(found(None, ID)));
    // No config file at all: the same.
    fs::remove_file(s.path("repo/.git/config")).expect("remove config");
    assert_eq!(provenance(&s.path("repo")), Ok(found(None, ID)));
}

#[test]
fn malformed_repositories_are_reported_with_the_file_at_fault() {
    let problem = |setup: &dyn Fn(&Scratch), rel: &str| {
        let s = Scratch::new("malformed");
        let repo = s.repo("repo", ORIGIN_WITH_TOKEN);
        setup(&s);
        let err = provenance(&repo).expect_err("malformed");
        assert_eq!(err.path, s.path(rel), "{err}");
        err.problem
    };
    let head = "repo/.git/HEAD";
    let malformed = |p: Problem| matches!(p, Problem::Malformed(_));
    assert!(malformed(problem(&|s| drop(s.write(head, "garbage\n")), head)));
    assert!(malformed(problem(&|s| drop(s.write(head, &ID[..39])), head)));
    // A ref name that climbs out of refs/ is refused, not read.
    assert!(malformed(problem(&|s| drop(s.write(head, "ref: refs/../../../etc/passwd\n")), head)));
    assert!(malformed(problem(&|s| drop(s.write(head, "ref: HEAD\n")), head)));
    let main = "repo/.git/refs/heads/main";
    assert!(malformed(problem(&|s| drop(s.write(main, "not an id\n")), main)));
    assert_eq!(problem(&|s| fs::write(s.path(main), b"\xff\n").expect("write"), main), Problem::NotUtf8);
    assert_eq!(
        problem(&|s| fs::remove_file(s.path(head)).expect("rm"), head),
        Problem::Io(std::io::ErrorKind::NotFound)
    );
    let config = "repo/.git/config";
    assert!(malformed(problem(&|s| drop(s.write(config, "[remote \"origin\"\n\turl = x\n")), config)));
    assert!(malformed(problem(&|s| drop(s.write(config, "[remote \"origin\"]\n\turl = \"x\n")), config)));
    assert!(malformed(problem(&|s| drop(s.write(config, "[remote \"origin\"]\n\turl = x\\q\n")), config)));
    assert!(malformed(problem(&|s| drop(s.write(config, "[remote \"origin\"]\n\turl\n")), config)));
    assert!(malformed(problem(&|s| drop(s.write(config, "[remote \"origin\"]\n\turl = \"a\\nb\"\n")), config)));
    let packed = "repo/.git/packed-refs";
    let packed_main = |s: &Scratch, text: &str| {
        fs::remove_file(s.path(main)).expect("rm");
        s.write(packed, text);
    };
    assert!(malformed(problem(&|s| packed_main(s, "junk\n"), packed)));
    assert!(malformed(problem(&|s| packed_main(s, "xyz refs/heads/main\n"), packed)));
    let big = "x".repeat(MAX_FILE as usize + 1);
    assert_eq!(problem(&|s| packed_main(s, &big), packed), Problem::TooLarge);
    let config_dir = |s: &Scratch| {
        fs::remove_file(s.path(config)).expect("rm");
        s.dir(config);
    };
    assert_eq!(problem(&config_dir, config), Problem::NotAFile);
    assert_eq!(problem(&|s| drop(s.dir("repo/.git/reftable")), "repo/.git/reftable"), Problem::Reftable);
}

#[test]
fn a_fifo_is_refused_instead_of_waited_on() {
    let s = Scratch::new("fifo");
    let repo = s.repo("repo", "");
    let head = s.path("repo/.git/HEAD");
    fs::remove_file(&head).expect("rm HEAD");
    let c = std::ffi::CString::new(head.to_str().expect("UTF-8 path")).expect("no NUL");
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    assert_eq!(provenance(&repo).expect_err("a fifo").problem, Problem::NotAFile);
}

#[test]
fn broken_git_files_are_reported() {
    let s = Scratch::new("gitfile");
    s.write("a/.git", "not a gitdir line\n");
    assert!(matches!(provenance(&s.path("a")).expect_err("bad").problem, Problem::Malformed(_)));
    s.write("b/.git", "gitdir: ../moved-away\n");
    let err = provenance(&s.path("b")).expect_err("missing gitdir");
    assert_eq!(err.problem, Problem::Io(std::io::ErrorKind::NotFound));
    let message = err.to_string();
    assert!(message.contains("moved-away") && message.contains("--no-vcs"), "{message}");
    s.write("c/.git/HEAD", &format!("{ID}\n"));
    s.write("c/.git/commondir", "\n");
    assert!(matches!(provenance(&s.path("c")).expect_err("bad").problem, Problem::Malformed(_)));
}

#[test]
fn git_config_syntax() {
    let url = |text: &str| config::origin_url(text).expect("parses");
    assert_eq!(url("[remote \"origin\"]\n\turl = https://h/x.git\n"), Some("https://h/x.git".into()));
    // Section and key names are case-insensitive; the quoted subsection is not.
    assert_eq!(url("[REMOTE \"origin\"]\nURL=a\n"), Some("a".into()));
    assert_eq!(url("[remote \"Origin\"]\nurl=a\n"), None);
    // The old `[section.subsection]` form lowercases the subsection.
    assert_eq!(url("[remote.Origin]\nurl=a\n"), Some("a".into()));
    // Comments, quotes, escapes, continuations, CRLF, a BOM, a key on the header's line.
    assert_eq!(url("# c\n; c\n[remote \"origin\"] url = a ; comment\n"), Some("a".into()));
    assert_eq!(url("[remote \"origin\"]\n\turl = \"a b\"  # c\n"), Some("a b".into()));
    assert_eq!(url("[remote \"origin\"]\n\turl = a\"#\"b\n"), Some("a#b".into()));
    assert_eq!(url("[remote \"origin\"]\n\turl = a\\\\b\\\"c\n"), Some("a\\b\"c".into()));
    assert_eq!(url("[remote \"origin\"]\n\turl = https://h/\\\n  x.git\n"), Some("https://h/  x.git".into()));
    assert_eq!(url("\u{feff}[remote \"origin\"]\r\n\turl = a\r\n"), Some("a".into()));
    assert_eq!(url("[remote \"o\\rigin\"]\nurl=a\n"), Some("a".into()));
    // The first url counts (`git remote get-url`); an empty one resets the list.
    assert_eq!(url("[remote \"origin\"]\nurl=a\nurl=b\n[remote \"origin\"]\nurl=c\n"), Some("a".into()));
    assert_eq!(url("[remote \"origin\"]\nurl=a\nurl=\nurl=b\n"), Some("b".into()));
    assert_eq!(url("[remote \"origin\"]\nurl=a\nurl=\n"), None);
    // Other keys and sections do not count, booleans without `=` are fine elsewhere.
    assert_eq!(url("[remote \"origin\"]\npushurl=p\n[other]\nurl=o\nflag\n"), None);
    assert_eq!(url("[remote \"upstream\"]\nurl=u\n[remote \"origin\"]\nfetch=f\n"), None);
    assert_eq!(url(""), None);
    for bad in ["[remote", "[remote \"origin\"", "[remote \"origin]\n", "[re mote]\n", "=x\n", "k v\n", "k=\"x\n"] {
        assert!(config::origin_url(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn credentials_are_stripped_from_urls_only() {
    let cases = [
        ("https://user:token@host/x.git", "https://host/x.git"),
        ("https://token@host:8443/x.git", "https://host:8443/x.git"),
        ("https://us@r:p@ss@host/x", "https://host/x"),
        ("ssh://git@host/x.git", "ssh://host/x.git"),
        ("git+ssh://git@host/x.git", "git+ssh://host/x.git"),
        ("https://host/x@y.git", "https://host/x@y.git"),
        ("https://host/x.git", "https://host/x.git"),
        ("git@github.com:owner/repo.git", "git@github.com:owner/repo.git"),
        ("/srv/git/app.git", "/srv/git/app.git"),
        ("../app", "../app"),
    ];
    for (input, expected) in cases {
        assert_eq!(strip_credentials(input), expected, "{input}");
    }
}

#[test]
fn provenance_fills_labels_and_annotations_but_a_key_the_user_gave_wins() {
    let p = Provenance { source: Some("https://h/x.git".into()), revision: ID.into() };
    let mut image = ImageOptions::default();
    image.labels.insert(ANNOTATION_SOURCE.into(), "mine".into());
    image.annotations.insert(ANNOTATION_REVISION.into(), "v1".into());
    p.apply_to(&mut image);
    assert_eq!(image.labels[ANNOTATION_SOURCE], "mine");
    assert_eq!(image.labels[ANNOTATION_REVISION], ID);
    assert_eq!(image.annotations[ANNOTATION_SOURCE], "https://h/x.git");
    assert_eq!(image.annotations[ANNOTATION_REVISION], "v1");
    let mut bare = ImageOptions::default();
    Provenance { source: None, revision: ID.into() }.apply_to(&mut bare);
    assert_eq!(bare.labels.keys().collect::<Vec<_>>(), [ANNOTATION_REVISION]);
    assert_eq!(bare.annotations.keys().collect::<Vec<_>>(), [ANNOTATION_REVISION]);
}
