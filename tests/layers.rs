//! `--layer PATTERN` and merged-usr bases, end to end: the real binary splits a context into layers that a
//! real registry stores, `skopeo` pulls back and `umoci` unpacks into the same tree; a re-push after a
//! one-file change sends only the layer that changed (read from the registry's access log and our JSON
//! report); and on a merged-usr base (`/bin -> usr/bin`, made by umoci) a context's `bin/tool` lands at
//! `/usr/bin/tool` while `/bin` stays a symlink and `/tmp` keeps its sticky mode.

mod support;

use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::*;

/// A context of a dependency tree, application code and a config file.
fn three_part_context(tmp: &TempDir) -> PathBuf {
    let ctx = tmp.subdir("ctx");
    for i in 0..8 {
        write_file(&ctx.join(format!("vendor/lib{i}/mod.so")), &pseudo_random_bytes(i, 256 * 1024));
    }
    write_file(&ctx.join("app/main.py"), b"print('v1')\n");
    write_file(&ctx.join("app/util.py"), b"def f():\n    return 1\n");
    write_file(&ctx.join("config.yaml"), b"mode: test\n");
    fs::create_dir_all(ctx.join("data/empty")).expect("mkdir");
    ctx
}

const LAYERS: &[&str] = &["--layer", "vendor/", "--layer", "**/*.py"];

fn push_json(ctx: &Path, target: &str, extra: &[&str], idpb_home: Option<&Path>) -> Value {
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(ctx).args(["-t", target, "--format", "json", "-q"]).args(LAYERS).args(extra);
    if let Some(home) = idpb_home {
        cmd.env("IDPB_HOME", home);
    }
    let output = cmd.run();
    output.assert_success();
    serde_json::from_str(output.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {output}"))
}

fn layer_digests(result: &Value) -> Vec<String> {
    result["layers"].as_array().into_iter().flatten().map(|l| l["digest"].as_str().unwrap_or("").to_string()).collect()
}

/// Three patterns' worth of layers (vendor, python, the rest), pulled back whole; a re-push after changing
/// one `.py` file uploads only the python layer and the config; the first run's cache serves the rest.
#[test]
fn layers_split_the_context_and_a_repush_sends_only_what_changed() {
    require_tool("skopeo");
    require_tool("umoci");
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("layers-split");
    let ctx = three_part_context(&tmp);
    let home = tmp.subdir("idpb-home");
    let target = registry.reference("ns/app:1");

    let first = push_json(&ctx, &target, &[], Some(&home));
    let layers = layer_digests(&first);
    assert_eq!(layers.len(), 3, "vendor, python, the rest: {first}");
    let raw = skopeo_inspect_raw(&registry, "ns/app:1");
    let in_manifest: Vec<&str> =
        raw["layers"].as_array().into_iter().flatten().filter_map(|l| l["digest"].as_str()).collect();
    assert_eq!(in_manifest, layers.iter().map(String::as_str).collect::<Vec<_>>(), "{raw}");
    let config = skopeo_inspect_config(&registry, "ns/app:1");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(3), "{config}");
    assert_pulls_as(&registry, "ns/app:1", &ctx, &[], &tmp);

    // Each layer holds its part (and the directories it needs), nothing else.
    let layout = tmp.join("pulled-layout");
    skopeo_copy_to_oci(&registry, "ns/app:1", &layout, "x");
    let names = |digest: &str| -> Vec<String> {
        let blob = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        let out = checked(std::process::Command::new("tar").arg("tzf").arg(&blob));
        out.stdout.lines().map(str::to_string).collect()
    };
    let vendor = names(&layers[0]);
    assert!(vendor.iter().all(|n| n.starts_with("vendor/")), "{vendor:?}");
    assert_eq!(vendor.iter().filter(|n| n.ends_with(".so")).count(), 8, "{vendor:?}");
    assert_eq!(names(&layers[1]), ["app/", "app/main.py", "app/util.py"]);
    assert_eq!(names(&layers[2]), ["config.yaml", "data/", "data/empty/"]);

    // One file of the python layer changes: only that layer (and the config) goes up again.
    write_file(&ctx.join("app/main.py"), b"print('v2')\n");
    let second = push_json(&ctx, &registry.reference("ns/app:2"), &[], Some(&home));
    let again = layer_digests(&second);
    assert_eq!(again[0], layers[0], "vendor unchanged: {second}");
    assert_ne!(again[1], layers[1], "python changed: {second}");
    assert_eq!(again[2], layers[2], "the rest unchanged: {second}");
    let uploaded = strings(&second["sent"]["blobs_uploaded"]);
    assert!(uploaded.contains(&again[1]) && !uploaded.contains(&again[0]) && !uploaded.contains(&again[2]), "{second}");
    let python_size = second["layers"][1]["size"].as_u64().unwrap_or(0);
    let bytes = second["sent"]["bytes_uploaded"].as_u64().unwrap_or(u64::MAX);
    assert!(bytes < python_size + 4096, "only the python layer and the config: {bytes} bytes: {second}");
    assert_pulls_as(&registry, "ns/app:2", &ctx, &[], &tmp);
}

/// `build --list` shows each path under its layer.
#[test]
fn list_shows_each_layer() {
    let tmp = TempDir::new("layers-list");
    let ctx = three_part_context(&tmp);
    let output = idpb(
        ["build".as_ref(), ctx.as_os_str(), "--list".as_ref()].into_iter().chain(LAYERS.iter().map(|s| s.as_ref())),
        &[],
    );
    output.assert_success();
    let lines: Vec<&str> = output.stdout.lines().collect();
    let header = |n: usize| lines.iter().position(|l| l.starts_with(&format!("# layer {n}:"))).unwrap_or(usize::MAX);
    assert!(header(1) < header(2) && header(2) < header(3) && header(3) < lines.len(), "{output}");
    assert!(lines[header(1)].contains("vendor/") && lines[header(2)].contains("*.py"), "{output}");
    let in_layer = |path: &str| (1..=3).rev().find(|n| lines.iter().position(|l| *l == path) > Some(header(*n)));
    assert_eq!(in_layer("vendor/lib0/mod.so"), Some(1), "{output}");
    assert_eq!(in_layer("app/main.py"), Some(2), "{output}");
    assert_eq!(in_layer("config.yaml"), Some(3), "{output}");
}

/// A pattern `.dockerignore` would refuse is refused the same way, naming `--layer`, before any work.
#[test]
fn invalid_layer_patterns_are_refused() {
    let tmp = TempDir::new("layers-bad");
    let ctx = three_part_context(&tmp);
    for bad in ["[z-a]", "!app/"] {
        let output = idpb(
            [
                "build".as_ref(),
                ctx.as_os_str(),
                "--layer".as_ref(),
                bad.as_ref(),
                "--oci-layout".as_ref(),
                tmp.join("out").as_os_str(),
            ],
            &[],
        );
        assert!(!output.success(), "{bad}: {output}");
        let last = output.stderr.lines().last().unwrap_or("");
        assert!(last.starts_with("docker-idpb: ") && last.contains("--layer"), "{bad}: {output}");
        assert!(!tmp.join("out").exists(), "{bad}: nothing built");
    }
}

/// On a merged-usr base a context's `bin/tool` is written at `usr/bin/tool`: `/bin` stays the base's
/// symlink, and the context's `tmp/` keeps the base's 1777 mode.
#[test]
fn merged_usr_base_keeps_its_symlinks_and_modes() {
    require_tool("umoci");
    let tmp = TempDir::new("layers-merged-usr");
    let base = merged_usr_base(&tmp.join("base"));
    let ctx = tmp.subdir("ctx");
    write_file(&ctx.join("bin/tool"), b"#!/bin/sh\necho tool\n");
    fs::set_permissions(ctx.join("bin/tool"), fs::Permissions::from_mode(0o755)).expect("chmod");
    write_file(&ctx.join("tmp/seed"), b"x");
    fs::set_permissions(ctx.join("tmp"), fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = tmp.join("out");
    let base_ref = format!("oci:{}:base", path_str(&base));
    let output = idpb(
        [
            "build".as_ref(),
            ctx.as_os_str(),
            "-t".as_ref(),
            "app:1".as_ref(),
            "--base".as_ref(),
            base_ref.as_ref(),
            "--oci-layout".as_ref(),
            out.as_os_str(),
            "-q".as_ref(),
        ],
        &[],
    );
    output.assert_success();
    let rootfs = umoci_unpack(&out, "1", &tmp.join("bundle"));
    let bin = fs::symlink_metadata(rootfs.join("bin")).expect("bin");
    assert!(bin.file_type().is_symlink(), "/bin is still the base's symlink");
    assert_eq!(fs::read_link(rootfs.join("bin")).expect("link").to_str(), Some("usr/bin"));
    assert_eq!(fs::read(rootfs.join("usr/bin/tool")).expect("tool"), b"#!/bin/sh\necho tool\n");
    assert!(rootfs.join("usr/bin/busybox").exists(), "the base's files are still there");
    let tmp_mode = fs::metadata(rootfs.join("tmp")).expect("tmp").permissions().mode() & 0o7777;
    assert_eq!(tmp_mode, 0o1777, "/tmp keeps the base's mode");
    assert_eq!(fs::read(rootfs.join("tmp/seed")).expect("seed"), b"x");
}

/// A layer pushed in an earlier run to one repository is mounted, not sent again, when the same context
/// is pushed to another repository of that registry (the store remembers where each blob went).
#[test]
fn a_later_push_to_another_repository_mounts_what_an_earlier_run_sent() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("layers-homes");
    let ctx = three_part_context(&tmp);
    let home = tmp.subdir("idpb-home");
    let first = push_json(&ctx, &registry.reference("team/one:1"), &[], Some(&home));
    let layers = layer_digests(&first);
    let puts_before = registry.count_requests("PUT", "/blobs/uploads/");

    let second = push_json(&ctx, &registry.reference("team/two:1"), &[], Some(&home));
    assert_eq!(layer_digests(&second), layers, "{second}");
    let mounted = strings(&second["sent"]["blobs_mounted"]);
    for l in &layers {
        assert!(mounted.contains(&format!("team/two@{l}")), "{l} mounted: {second}");
    }
    assert_eq!(second["sent"]["bytes_uploaded"], 0, "nothing sent again: {second}");
    assert_eq!(registry.count_requests("PUT", "/blobs/uploads/"), puts_before, "{:?}", registry.requests());
    assert_pulls_as(&registry, "team/two:1", &ctx, &[], &tmp);
}
