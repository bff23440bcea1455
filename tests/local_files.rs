//! Local files written safely (issue 11, the part that is done): outputs go through a new temp file (`O_EXCL`,
//! unpredictable name) in the destination's directory and a rename, so a symlink planted at an output path
//! is replaced, never written through.

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use support::*;

/// `--digest-file` at a planted symlink: the link's target is untouched, the digest file is a regular file
/// holding the digest (build and push alike).
#[test]
fn a_digest_file_planted_as_a_symlink_is_replaced_not_written_through() {
    let tmp = TempDir::new("local-digest");
    let ctx = tmp.subdir("ctx");
    write_file(&ctx.join("hello.txt"), b"hi\n");
    let registry = Registry::start(RegistryMode::Http);
    for command in ["build", "push"] {
        let victim = tmp.join(format!("victim-{command}"));
        fs::write(&victim, b"precious").expect("victim");
        let digest_file = tmp.join(format!("digest-{command}"));
        symlink(&victim, &digest_file).expect("plant the link");
        let mut cmd = IdpbCommand::new();
        cmd.arg(command).arg(&ctx).arg("--digest-file").arg(&digest_file).arg("-q");
        if command == "push" {
            cmd.args(["-t", &registry.reference("ns/app:1")]);
        } else {
            cmd.arg("--oci-layout").arg(tmp.join("out"));
        }
        cmd.run().assert_success();
        assert_eq!(fs::read(&victim).expect("victim"), b"precious", "{command}: the link's target is untouched");
        let meta = fs::symlink_metadata(&digest_file).expect("digest file");
        assert!(meta.file_type().is_file(), "{command}: a regular file now");
        let text = fs::read_to_string(&digest_file).expect("digest");
        assert_digest(text.trim());
    }
}

/// Names with newlines and terminal escapes are listed escaped, one line per entry (as `ls -b` does), and
/// the layer keeps them unchanged.
#[test]
fn names_with_control_characters_are_printed_escaped_and_stored_unchanged() {
    let tmp = TempDir::new("local-names");
    let ctx = tmp.subdir("ctx");
    write_file(&ctx.join("evil\nname"), b"1");
    write_file(&ctx.join("clear\u{1b}[2J"), b"2");
    let output = idpb(["build".as_ref(), ctx.as_os_str(), "--list".as_ref()], &[]);
    output.assert_success();
    assert!(!output.stdout.contains('\u{1b}'), "no escape reaches the terminal: {output}");
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines, ["clear\\033[2J", "evil\\nname"], "{output}");

    let out = tmp.join("out");
    let built = idpb(
        [
            "build".as_ref(),
            ctx.as_os_str(),
            "-t".as_ref(),
            "n:1".as_ref(),
            "--oci-layout".as_ref(),
            out.as_os_str(),
            "-q".as_ref(),
        ],
        &[],
    );
    built.assert_success();
    let rootfs = umoci_unpack(&out, "1", &tmp.join("bundle"));
    assert_eq!(fs::read(rootfs.join("evil\nname")).expect("the name is kept"), b"1");
    assert_eq!(fs::read(rootfs.join("clear\u{1b}[2J")).expect("the name is kept"), b"2");
}

/// Local JSON pointed at `/dev/zero` (a layout's `index.json`, Docker's `config.json`) is refused with one
/// line naming the file, in bounded memory (peak RSS under 64 MiB, measured with GNU time).
#[test]
fn local_json_pointed_at_dev_zero_is_refused_in_bounded_memory() {
    require_tool("time");
    let tmp = TempDir::new("local-zero");
    let layout = tmp.subdir("layout");
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("marker");
    symlink("/dev/zero", layout.join("index.json")).expect("plant");
    let ctx = tmp.subdir("ctx");
    write_file(&ctx.join("hello.txt"), b"hi\n");
    let cases: Vec<(Vec<String>, &str, bool)> = vec![
        (
            vec!["push".into(), "--oci-layout".into(), path_str(&layout), "-t".into(), "127.0.0.1:9/ns/x:1".into()],
            "index.json",
            false,
        ),
        (vec!["push".into(), path_str(&ctx), "-t".into(), "127.0.0.1:9/ns/x:1".into()], "config.json", true),
    ];
    for (args, file, zero_config) in cases {
        let rss = tmp.join("rss");
        let mut cmd = IdpbCommand::new();
        if zero_config {
            symlink("/dev/zero", cmd.docker_config().join("config.json")).expect("plant config");
        }
        let program = bin();
        let (home, docker, idpb_home) = (cmd.home(), cmd.docker_config(), cmd.idpb_home());
        let command = cmd.command();
        *command = std::process::Command::new("/usr/bin/time");
        command.arg("-o").arg(&rss).args(["-f", "%M"]).arg(&program).args(&args).arg("-q");
        // IdpbCommand's isolation (HOME, DOCKER_CONFIG, IDPB_HOME) is set again on the new command.
        command.env("HOME", home).env("DOCKER_CONFIG", docker).env("IDPB_HOME", idpb_home);
        let output = cmd.run();
        assert!(!output.success(), "{file}: {output}");
        let last = output.stderr.lines().rfind(|l| l.starts_with("docker-idpb: ")).unwrap_or("");
        assert!(last.contains(file), "{file}: the error names the file: {output}");
        let kib: u64 = fs::read_to_string(&rss)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .next_back()
            .unwrap_or(u64::MAX);
        assert!(kib < 64 * 1024, "{file}: peak RSS {kib} KiB");
    }
}

/// `push --oci-layout` never reads a blob through a symlink (which could point at any file) and verifies
/// each blob while it streams: a blob whose bytes changed is refused before the closing PUT, its session
/// deleted, no tag stored.
#[test]
fn layout_blobs_that_are_symlinks_or_do_not_match_are_never_pushed() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("local-layout-blobs");
    let ctx = tmp.subdir("ctx");
    write_file(&ctx.join("data.bin"), &pseudo_random_bytes(3, 64 * 1024));
    let secret = tmp.join("secret");
    fs::write(&secret, b"not for any registry").expect("secret");
    for case in ["symlink", "changed"] {
        let layout = tmp.join(format!("layout-{case}"));
        let built = idpb(
            [
                "build".as_ref(),
                ctx.as_os_str(),
                "-t".as_ref(),
                "x:1".as_ref(),
                "--oci-layout".as_ref(),
                layout.as_os_str(),
                "--format".as_ref(),
                "json".as_ref(),
                "-q".as_ref(),
            ],
            &[],
        );
        let built = json_result(&built);
        let layer = last_layer(&built)["digest"].as_str().unwrap_or_default().to_string();
        let blob = layout.join("blobs/sha256").join(&layer["sha256:".len()..]);
        let original = fs::read(&blob).expect("blob");
        fs::remove_file(&blob).expect("remove");
        if case == "symlink" {
            symlink(&secret, &blob).expect("plant");
        } else {
            let mut changed = original.clone();
            let last = changed.len() - 1;
            changed[last] ^= 0xff;
            fs::write(&blob, &changed).expect("change");
        }
        let target = registry.reference(&format!("ns/{case}:1"));
        let mut cmd = IdpbCommand::new();
        cmd.args(["push", "--oci-layout", &path_str(&layout), "--image", "x:1", "-t", &target, "-q"]);
        let output = cmd.run();
        assert!(!output.success(), "{case}: {output}");
        assert!(output.stderr.contains(&layer), "{case}: the error names the blob: {output}");
        assert!(stored_digest(&registry, &format!("ns/{case}"), "1").is_none(), "{case}: no tag");
        let finished = registry
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.contains(&format!("/v2/ns/{case}/blobs/uploads/")))
            .count();
        assert_eq!(finished, 0, "{case}: no blob upload was closed: {:?}", registry.requests());
        if case == "symlink" {
            // Not a byte of the link's target went out: the blob is refused before any upload starts.
            let sent =
                registry.requests().iter().filter(|r| r.method == "PATCH" && r.path.contains("/ns/symlink/")).count();
            assert_eq!(sent, 0, "nothing read through the link was sent: {:?}", registry.requests());
        }
    }
}

/// A dozen builds at once into one layout and one store (`make -j`, parallel CI jobs): every tag is in
/// `index.json` afterwards and every blob matches its name; twice over.
#[test]
fn concurrent_builds_into_one_layout_and_one_store_keep_every_tag() {
    let tmp = TempDir::new("local-concurrent");
    let layout = tmp.join("layout");
    let store = tmp.subdir("store");
    for round in 0..2 {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let ctx = tmp.subdir(format!("ctx-{round}-{i}"));
                write_file(&ctx.join("n.txt"), format!("build {round} {i}\n").as_bytes());
                let (layout, store) = (layout.clone(), store.clone());
                std::thread::spawn(move || {
                    let tag = format!("app:{round}-{i}");
                    let into_layout = idpb(
                        [
                            "build".as_ref(),
                            ctx.as_os_str(),
                            "-t".as_ref(),
                            tag.as_ref(),
                            "--oci-layout".as_ref(),
                            layout.as_os_str(),
                            "-q".as_ref(),
                        ],
                        &[],
                    );
                    let into_store = idpb(
                        ["build".as_ref(), ctx.as_os_str(), "-t".as_ref(), tag.as_ref(), "-q".as_ref()],
                        &[("IDPB_HOME", path_str(&store).as_str())],
                    );
                    (into_layout, into_store)
                })
            })
            .collect();
        for h in handles {
            let (a, b) = h.join().expect("a build thread");
            a.assert_success();
            b.assert_success();
        }
        for dir in [&layout, &store] {
            let index: serde_json::Value =
                serde_json::from_slice(&fs::read(dir.join("index.json")).expect("index.json")).expect("JSON");
            let tags: std::collections::BTreeSet<String> = index["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["annotations"]["org.opencontainers.image.ref.name"].as_str().map(str::to_string))
                .collect();
            for r in 0..=round {
                for i in 0..12 {
                    assert!(tags.contains(&format!("{r}-{i}")), "{}: tag {r}-{i} kept: {tags:?}", dir.display());
                }
            }
            for entry in fs::read_dir(dir.join("blobs/sha256")).expect("blobs").flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let bytes = fs::read(entry.path()).expect("blob");
                assert_eq!(sha256_digest(&bytes), format!("sha256:{name}"), "blob {name} intact");
            }
        }
    }
}
