//! `--base`: building on an existing image, end to end. The bases are made offline by umoci from Debian's
//! static busybox (`support::bases`), stored in the real registry by skopeo (OCI and Docker schema 2), and
//! what docker-idpb builds on them is judged by third parties: skopeo pulls it, umoci unpacks it (base files
//! plus ours), and a private Docker engine pulls, loads and runs it, so the base's Env, Entrypoint and the
//! user from its `/etc/passwd` behave as Docker's own would. What crossed the wire is read from the
//! registries' access logs and our `--format json` report: a base on the target's registry is mounted,
//! never uploaded; a base on another registry is streamed from one into the other. Bad bases fail with one
//! line, the right exit code, and nothing pushed.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use support::*;

const USER: &str = "carol";
const PASS: &str = "b4se pass";
const MANIFEST_OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const MANIFEST_DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";
const LAYER_OCI: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_DOCKER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const CONFIG_DOCKER: &str = "application/vnd.docker.container.image.v1+json";
const BASE_NAME: &str = "org.opencontainers.image.base.name";
const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
/// What `id` prints for `--user nobody` with the fixtures' passwd and group files.
const NOBODY_ID: &str = "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)";

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// A small context: `/app/hello.txt` and an executable `/app/run.sh`.
fn app_context(tmp: &TempDir) -> PathBuf {
    let ctx = tmp.subdir("context");
    write_file(&ctx.join("app/hello.txt"), b"hello from the app layer\n");
    write_file(&ctx.join("app/run.sh"), b"#!/bin/sh\necho app says hi\n");
    fs::set_permissions(ctx.join("app/run.sh"), fs::Permissions::from_mode(0o755)).expect("chmod run.sh");
    ctx
}

/// `docker-idpb push CONTEXT -t TARGET --base BASE --format json -q EXTRA...`, with credentials for
/// `creds_for` in `config.json` and its CA trusted (not run yet).
fn push_command(creds_for: &Registry, ctx: &Path, target: &str, base: &str, extra: &[&str]) -> IdpbCommand {
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(ctx).args(["-t", target, "--base", base, "--format", "json", "-q"]).args(extra);
    creds_for.write_docker_config(&cmd.docker_config());
    if let Some(ca) = creds_for.ca() {
        // In certs.d, for that registry alone: a --ca-file would make every loopback registry of the push
        // a verified one, the plain-HTTP target of a cross-registry push included.
        let dir = cmd.home().join(".config/docker/certs.d").join(creds_for.host());
        fs::create_dir_all(&dir).expect("create certs.d");
        fs::copy(ca, dir.join("ca.crt")).expect("install the CA in certs.d");
    }
    cmd
}

/// `docker-idpb build CONTEXT -t TAG --base BASE -q EXTRA...` (not run yet).
fn build_command(ctx: &Path, tag: &str, base: &str, extra: &[&str]) -> IdpbCommand {
    let mut cmd = IdpbCommand::new();
    cmd.arg("build").arg(ctx).args(["-t", tag, "--base", base, "-q"]).args(extra);
    cmd
}

/// `docker-idpb build CONTEXT -t TAG --base BASE -q EXTRA...`, run.
fn build(ctx: &Path, tag: &str, base: &str, extra: &[&str]) -> Output {
    build_command(ctx, tag, base, extra).run()
}

/// The hex part of `sha256:HEX` (access logs may percent-encode the colon).
fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{digest} is not a sha256 digest"))
}

fn str_of(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("{value} is not a string")).to_string()
}

/// Uploads into `repo` of `registry` finished with `digest` (`PUT /v2/REPO/blobs/uploads/...?digest=`).
fn uploads_of(registry: &Registry, repo: &str, digest: &str) -> usize {
    let prefix = format!("/v2/{repo}/blobs/uploads/");
    let requests = registry.requests();
    requests.iter().filter(|r| r.method == "PUT" && r.path.starts_with(&prefix) && r.path.contains(hex(digest))).count()
}

/// Requests that could have stored anything in `registry`: POST, PATCH, PUT (manifest or blob).
fn writes(registry: &Registry) -> Vec<AccessLogEntry> {
    registry.requests().into_iter().filter(|r| ["POST", "PATCH", "PUT"].contains(&r.method.as_str())).collect()
}

/// Unpacks `LAYOUT:TAG` with umoci into a fresh dir under `tmp`; returns the rootfs.
fn unpack(layout: &Path, tag: &str, tmp: &TempDir, label: &str) -> PathBuf {
    umoci_unpack(layout, tag, &tmp.join(format!("bundle-{label}")))
}

/// The tree a correct image on the busybox base holds: the base's unpacked tree with the context's
/// entries added (the context's root directory itself is not compared).
fn base_plus_context(base_layout: &Path, ctx: &Path, tmp: &TempDir) -> Listing {
    let mut expected = tree_listing(&unpack(base_layout, BASE_TAG, tmp, "base-alone"));
    expected.extend(tree_listing(ctx));
    expected
}

/// What a rootfs on the busybox base must show, beyond the listing comparison: the real busybox, its
/// shell, `nobody`, a sticky `/tmp`, and our files.
#[track_caller]
fn assert_busybox_and_app(rootfs: &Path) {
    let busybox = fs::read(rootfs.join("bin/busybox")).expect("bin/busybox in the image");
    assert!(busybox == fs::read(BUSYBOX).expect("read busybox"), "bin/busybox is Debian's busybox");
    assert_eq!(fs::read_link(rootfs.join("bin/sh")).expect("bin/sh is a symlink"), Path::new("busybox"));
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).expect("etc/passwd");
    assert!(passwd.contains("nobody:x:65534:65534:"), "{passwd}");
    let tmp_mode = fs::metadata(rootfs.join("tmp")).expect("tmp").permissions().mode() & 0o7777;
    assert_eq!(tmp_mode, 0o1777, "/tmp keeps the base's mode");
    assert_eq!(fs::read_to_string(rootfs.join("app/hello.txt")).expect("app/hello.txt"), "hello from the app layer\n");
}

/// The config of an image on the busybox base pushed with `--user nobody`: the base's Env, Entrypoint and
/// Cmd, our User, the base's diff_id then ours, the base's history plus one entry.
#[track_caller]
fn assert_config_on_base(config: &Value, base_config: &Value, our_diff_id: &str) {
    let c = &config["config"];
    assert_eq!(strings(&c["Env"]), [BUSYBOX_BASE_PATH], "{config}");
    assert_eq!(strings(&c["Entrypoint"]), BASE_ENTRYPOINT, "{config}");
    assert_eq!(strings(&c["Cmd"]), [BASE_CMD], "{config}");
    assert_eq!(c["User"], "nobody", "{config}");
    assert_eq!((&config["os"], &config["architecture"]), (&json!("linux"), &json!("amd64")), "{config}");
    let mut diff_ids = strings(&base_config["rootfs"]["diff_ids"]);
    diff_ids.push(our_diff_id.to_string());
    assert_eq!(strings(&config["rootfs"]["diff_ids"]), diff_ids, "the base's diff_id, then ours: {config}");
    let history = config["history"].as_array().map_or(0, Vec::len);
    let base_history = base_config["history"].as_array().map_or(0, Vec::len);
    assert_eq!(history, base_history + 1, "the base's history plus one entry: {config}");
}

/// A token-auth registry holding the busybox base as `base/busybox:oci` (and `:v2s2` when asked); returns
/// the registry and the base's layout.
fn registry_with_base(tmp: &TempDir, v2s2: bool) -> (Registry, PathBuf) {
    let registry = Registry::start(RegistryMode::token(USER, PASS));
    let layout = busybox_base(&tmp.join("base-layout"));
    store_base_oci(&layout, BASE_TAG, &registry, "base/busybox:oci");
    if v2s2 {
        store_base_v2s2(&layout, BASE_TAG, &registry, "base/busybox:v2s2");
    }
    (registry, layout)
}

// ---------------------------------------------------------------------------------------------------------
// 0. The fixtures themselves.

/// The bases are what the other tests assume: busybox and its applets, passwd with nobody, a sticky /tmp,
/// the config; the merged-usr one has `/bin -> usr/bin` and `/lib -> usr/lib`.
#[test]
fn fixture_bases_are_valid_images() {
    let tmp = TempDir::new("base-fixtures");
    for (label, merged) in [("plain", false), ("merged-usr", true)] {
        let layout = tmp.join(format!("layout-{label}"));
        let make: fn(&Path) -> PathBuf = if merged { merged_usr_base } else { busybox_base };
        make(&layout);
        let config = skopeo_inspect_layout_config(&layout, BASE_TAG);
        let path = if merged { MERGED_USR_BASE_PATH } else { BUSYBOX_BASE_PATH };
        assert_eq!(strings(&config["config"]["Env"]), [path], "{config}");
        assert_eq!(strings(&config["config"]["Entrypoint"]), BASE_ENTRYPOINT, "{config}");
        assert_eq!((&config["os"], &config["architecture"]), (&json!("linux"), &json!("amd64")), "{config}");
        assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(1), "{config}");

        let rootfs = unpack(&layout, BASE_TAG, &tmp, label);
        let bin = if merged { rootfs.join("usr/bin") } else { rootfs.join("bin") };
        if merged {
            assert_eq!(fs::read_link(rootfs.join("bin")).expect("/bin is a symlink"), Path::new("usr/bin"));
            assert_eq!(fs::read_link(rootfs.join("lib")).expect("/lib is a symlink"), Path::new("usr/lib"));
            assert!(rootfs.join("usr/lib").is_dir());
        }
        assert!(fs::read(bin.join("busybox")).expect("busybox") == fs::read(BUSYBOX).expect("read busybox"));
        for applet in BASE_APPLETS {
            assert_eq!(fs::read_link(bin.join(applet)).expect("an applet link"), Path::new("busybox"), "{applet}");
        }
        let passwd = fs::read_to_string(rootfs.join("etc/passwd")).expect("etc/passwd");
        assert!(passwd.starts_with("root:x:0:0:") && passwd.contains("\nnobody:x:65534:65534:"), "{passwd}");
        assert!(fs::read_to_string(rootfs.join("etc/group")).expect("etc/group").contains("nogroup:x:65534:"));
        let tmp_mode = fs::metadata(rootfs.join("tmp")).expect("tmp").permissions().mode() & 0o7777;
        assert_eq!(tmp_mode, 0o1777, "{label}");
        // The shell works on the unpacked tree (through the /bin symlink in the merged-usr base).
        let out = run(std::process::Command::new(rootfs.join("bin/busybox")).args(["sh", "-c", "echo ok"]));
        assert_eq!(out.assert_success().stdout, "ok\n");
    }
}

// ---------------------------------------------------------------------------------------------------------
// 1. Push onto a base in the target's own registry: mounted, never uploaded; runs under Docker.

#[test]
fn push_on_same_registry_mounts_base_and_runs_under_docker() {
    let tmp = TempDir::new("base-same");
    let (registry, base_layout) = registry_with_base(&tmp, false);
    let ctx = app_context(&tmp);
    let base_ref = registry.reference("base/busybox:oci");
    let base_digest = stored_digest(&registry, "base/busybox", "oci").expect("the base is stored");
    let base_manifest = skopeo_inspect_raw(&registry, "base/busybox:oci");
    let base_config = skopeo_inspect_config(&registry, "base/busybox:oci");
    let base_layer = base_manifest["layers"][0].clone();
    let base_layer_digest = str_of(&base_layer["digest"]);
    let requests_before = registry.requests().len();

    let target = registry.reference("ns/app:1");
    let output = push_command(&registry, &ctx, &target, &base_ref, &["--user", "nobody", "--tls-verify", "true"]).run();
    let result = json_result(&output);
    let digest = str_of(&result["digest"]);
    assert_eq!(stored_digest(&registry, "ns/app", "1").as_deref(), Some(digest.as_str()), "{output}");

    // What was sent: the base layer mounted from base/busybox, only our layer and config uploaded.
    let sent = &result["sent"];
    assert_eq!(strings(&sent["blobs_mounted"]), [format!("ns/app@{base_layer_digest}")], "{result}");
    let manifest = skopeo_inspect_raw(&registry, "ns/app:1");
    let config_digest = str_of(&manifest["config"]["digest"]);
    let layer_digest = str_of(&last_layer(&result)["digest"]);
    let uploaded: BTreeSet<String> = strings(&sent["blobs_uploaded"]).into_iter().collect();
    assert_eq!(uploaded, BTreeSet::from([layer_digest.clone(), config_digest.clone()]), "{result}");
    let expected_bytes = last_layer(&result)["size"].as_u64().unwrap() + manifest["config"]["size"].as_u64().unwrap();
    assert_eq!(sent["bytes_uploaded"].as_u64(), Some(expected_bytes), "our layer and config only: {result}");
    assert!(expected_bytes < base_layer["size"].as_u64().unwrap() / 10, "{result}");
    let log: Vec<AccessLogEntry> = registry.requests().split_off(requests_before);
    let touching_base_layer: Vec<&AccessLogEntry> =
        log.iter().filter(|r| r.path.contains(hex(&base_layer_digest))).collect();
    // Its tar headers are read once (to learn the base's directory symlinks; cached by digest after that),
    // otherwise it is only checked and mounted: never uploaded.
    let reads = touching_base_layer.iter().filter(|r| r.method == "GET").count();
    assert!(reads <= 1, "the base layer is read at most once, for its headers: {touching_base_layer:?}");
    assert!(
        touching_base_layer
            .iter()
            .all(|r| r.method == "HEAD" || r.method == "GET" || (r.method == "POST" && r.path.contains("mount="))),
        "the base layer was only checked, read for its headers and mounted, never uploaded: {touching_base_layer:?}"
    );
    assert!(
        touching_base_layer.iter().any(|r| r.method == "POST" && r.path.contains("mount=") && r.status == 201),
        "a 201 mount of the base layer: {touching_base_layer:?}"
    );
    assert_eq!(uploads_of(&registry, "ns/app", &base_layer_digest), 0, "{log:?}");

    // The manifest: OCI like the base, the base's layer descriptor copied exactly, then ours; base annotations.
    assert_eq!(manifest["mediaType"], MANIFEST_OCI, "{manifest}");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 2, "{manifest}");
    assert_eq!(layers[0], base_layer, "the base layer descriptor is copied exactly: {manifest}");
    assert_eq!(
        (&layers[1]["mediaType"], &layers[1]["digest"]),
        (&json!(LAYER_OCI), &json!(layer_digest)),
        "{manifest}"
    );
    assert_eq!(manifest["annotations"][BASE_NAME], json!(base_ref), "{manifest}");
    assert_eq!(manifest["annotations"][BASE_DIGEST], json!(base_digest), "{manifest}");

    let config = skopeo_inspect_config(&registry, "ns/app:1");
    assert_config_on_base(&config, &base_config, &str_of(&last_layer(&result)["diff_id"]));

    // skopeo pulls it, umoci unpacks the base's files plus ours.
    let pulled = tmp.join("pulled");
    skopeo_copy_to_oci(&registry, "ns/app:1", &pulled, "app");
    let rootfs = unpack(&pulled, "app", &tmp, "pulled");
    assert_busybox_and_app(&rootfs);
    assert_same_listing(&base_plus_context(&base_layout, &ctx, &tmp), &tree_listing(&rootfs));

    // A real Docker engine pulls it and runs it: the base's Entrypoint (sh -c) and Cmd (id), as nobody.
    let engine = DockerEngine::start();
    engine.login(&registry);
    engine.checked(&["pull", "-q", &target]);
    let id = engine.checked(&["run", "--rm", "--network", "none", &target]);
    assert_eq!(id.stdout.trim(), NOBODY_ID, "the base's Cmd as the user from its passwd: {id}");
    let script = "cat /app/hello.txt; /app/run.sh; echo \"$PATH\"; ls -ld /tmp";
    let out = engine.checked(&["run", "--rm", "--network", "none", &target, script]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[..3], ["hello from the app layer", "app says hi", "/bin:/usr/bin"], "{out}");
    assert!(lines[3].starts_with("drwxrwxrwt"), "{out}");
}

// ---------------------------------------------------------------------------------------------------------
// 2. A Docker schema 2 base gives a Docker schema 2 image.

#[test]
fn push_on_docker_schema2_base_keeps_docker_media_types() {
    let tmp = TempDir::new("base-v2s2");
    let (registry, base_layout) = registry_with_base(&tmp, true);
    let ctx = app_context(&tmp);
    let base_ref = registry.reference("base/busybox:v2s2");
    let base_manifest = skopeo_inspect_raw(&registry, "base/busybox:v2s2");
    assert_eq!(base_manifest["mediaType"], MANIFEST_DOCKER, "skopeo stored Docker schema 2: {base_manifest}");
    let base_config = skopeo_inspect_config(&registry, "base/busybox:v2s2");
    let base_layer = base_manifest["layers"][0].clone();
    assert_eq!(base_layer["mediaType"], LAYER_DOCKER, "{base_manifest}");

    let target = registry.reference("ns/app:v2");
    let output = push_command(&registry, &ctx, &target, &base_ref, &["--user", "nobody"]).run();
    let result = json_result(&output);
    let base_layer_digest = str_of(&base_layer["digest"]);
    assert_eq!(strings(&result["sent"]["blobs_mounted"]), [format!("ns/app@{base_layer_digest}")], "{result}");
    assert_eq!(uploads_of(&registry, "ns/app", &base_layer_digest), 0, "{:?}", registry.requests());

    let manifest = skopeo_inspect_raw(&registry, "ns/app:v2");
    assert_eq!(manifest["mediaType"], MANIFEST_DOCKER, "{manifest}");
    assert_eq!(manifest["config"]["mediaType"], CONFIG_DOCKER, "{manifest}");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 2, "{manifest}");
    assert_eq!(layers[0], base_layer, "the base layer descriptor is copied exactly: {manifest}");
    assert_eq!(layers[1]["mediaType"], LAYER_DOCKER, "our layer gets the Docker media type: {manifest}");
    assert_eq!(layers[1]["digest"], last_layer(&result)["digest"], "{manifest}");
    assert_eq!(manifest["annotations"][BASE_NAME], json!(base_ref), "{manifest}");

    let config = skopeo_inspect_config(&registry, "ns/app:v2");
    assert_config_on_base(&config, &base_config, &str_of(&last_layer(&result)["diff_id"]));
    let pulled = tmp.join("pulled");
    skopeo_copy_to_oci(&registry, "ns/app:v2", &pulled, "app");
    let rootfs = unpack(&pulled, "app", &tmp, "pulled");
    assert_busybox_and_app(&rootfs);
    assert_same_listing(&base_plus_context(&base_layout, &ctx, &tmp), &tree_listing(&rootfs));
}

// ---------------------------------------------------------------------------------------------------------
// 3. A base in another registry: its blobs are streamed from there into the target.

#[test]
fn push_to_second_registry_streams_base_blobs() {
    let tmp = TempDir::new("base-cross");
    let (source, base_layout) = registry_with_base(&tmp, false);
    let target_registry = Registry::start(RegistryMode::Http);
    let ctx = app_context(&tmp);
    let base_ref = source.reference("base/busybox:oci");
    let base_digest = stored_digest(&source, "base/busybox", "oci").expect("the base is stored");
    let base_manifest = skopeo_inspect_raw(&source, "base/busybox:oci");
    let base_config = skopeo_inspect_config(&source, "base/busybox:oci");
    let base_layer = base_manifest["layers"][0].clone();
    let base_layer_digest = str_of(&base_layer["digest"]);
    let base_layer_size = base_layer["size"].as_u64().unwrap();

    let source_writes_before = writes(&source).len();

    // Credentials and CA are the base registry's; the plain-HTTP target on loopback needs none.
    let target = target_registry.reference("ns/app:1");
    let output = push_command(&source, &ctx, &target, &base_ref, &["--user", "nobody"]).run();
    let result = json_result(&output);
    assert_eq!(stored_digest(&target_registry, "ns/app", "1").as_deref(), result["digest"].as_str(), "{output}");

    let sent = &result["sent"];
    assert_eq!(strings(&sent["blobs_mounted"]), Vec::<String>::new(), "no mount across registries: {result}");
    let manifest = skopeo_inspect_raw(&target_registry, "ns/app:1");
    let uploaded: BTreeSet<String> = strings(&sent["blobs_uploaded"]).into_iter().collect();
    let expected: BTreeSet<String> =
        [&base_layer_digest, &str_of(&last_layer(&result)["digest"]), &str_of(&manifest["config"]["digest"])]
            .into_iter()
            .cloned()
            .collect();
    assert_eq!(uploaded, expected, "{result}");
    let bytes =
        base_layer_size + last_layer(&result)["size"].as_u64().unwrap() + manifest["config"]["size"].as_u64().unwrap();
    assert_eq!(sent["bytes_uploaded"].as_u64(), Some(bytes), "{result}");
    // Read once from the base registry, stored once in the target; nothing written to the base registry.
    let reads = source.requests();
    let gets: Vec<&AccessLogEntry> =
        reads.iter().filter(|r| r.method == "GET" && r.path.contains(hex(&base_layer_digest))).collect();
    // Once to copy it, and once (with a cold cache) for its tar headers.
    assert!((1..=2).contains(&gets.len()), "{reads:?}");
    assert!(gets.iter().all(|g| g.path == format!("/v2/base/busybox/blobs/{base_layer_digest}")), "{reads:?}");
    assert_eq!(uploads_of(&target_registry, "ns/app", &base_layer_digest), 1, "{:?}", target_registry.requests());
    assert_eq!(writes(&source).len(), source_writes_before, "nothing written to the base registry: {reads:?}");
    let stored_blob = target_registry.storage_dir().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &hex(&base_layer_digest)[..2],
        hex(&base_layer_digest)
    ));
    assert_eq!(fs::metadata(&stored_blob).map(|m| m.len()).ok(), Some(base_layer_size), "{}", stored_blob.display());

    assert_eq!(manifest["mediaType"], MANIFEST_OCI, "{manifest}");
    assert_eq!(manifest["layers"][0], base_layer, "{manifest}");
    assert_eq!(manifest["annotations"][BASE_NAME], json!(base_ref), "{manifest}");
    assert_eq!(manifest["annotations"][BASE_DIGEST], json!(base_digest), "{manifest}");
    let config = skopeo_inspect_config(&target_registry, "ns/app:1");
    assert_config_on_base(&config, &base_config, &str_of(&last_layer(&result)["diff_id"]));
    let pulled = tmp.join("pulled");
    skopeo_copy_to_oci(&target_registry, "ns/app:1", &pulled, "app");
    let rootfs = unpack(&pulled, "app", &tmp, "pulled");
    assert_busybox_and_app(&rootfs);
    assert_same_listing(&base_plus_context(&base_layout, &ctx, &tmp), &tree_listing(&rootfs));
}

// ---------------------------------------------------------------------------------------------------------
// 4. build --base: into an OCI layout, into a docker-loadable tar.

#[test]
fn build_on_layout_base_into_oci_layout() {
    let tmp = TempDir::new("base-build-layout");
    let base_layout = busybox_base(&tmp.join("base-layout"));
    let (base_manifest, base_digest) = layout_manifest(&base_layout, BASE_TAG);
    let base_config = layout_blob_json(&base_layout, &str_of(&base_manifest["config"]["digest"]));
    let ctx = app_context(&tmp);
    let out = tmp.join("out");
    let base_arg = format!("oci:{}:{BASE_TAG}", base_layout.display());

    let output = build(&ctx, "app:1", &base_arg, &["--oci-layout", &path_str(&out), "--user", "nobody"]);
    output.assert_success();
    let lines = built_lines(&output);
    assert_eq!(lines.len(), 1, "{output}");

    let (manifest, digest) = layout_manifest(&out, "1");
    assert_eq!(digest, lines[0].1, "{output}");
    assert_eq!(manifest["mediaType"], MANIFEST_OCI, "{manifest}");
    assert_eq!(manifest["layers"][0], base_manifest["layers"][0], "{manifest}");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(2), "{manifest}");
    assert_eq!(manifest["annotations"][BASE_NAME], json!(base_arg), "{manifest}");
    assert_eq!(manifest["annotations"][BASE_DIGEST], json!(base_digest), "{manifest}");
    let config = skopeo_inspect_layout_config(&out, "1");
    let our_diff_id = config["rootfs"]["diff_ids"][1].as_str().unwrap_or_default().to_string();
    assert_config_on_base(&config, &base_config, &our_diff_id);

    let rootfs = unpack(&out, "1", &tmp, "built");
    assert_busybox_and_app(&rootfs);
    assert_same_listing(&base_plus_context(&base_layout, &ctx, &tmp), &tree_listing(&rootfs));
}

#[test]
fn build_on_layout_base_into_tar_loads_and_runs_under_docker() {
    let tmp = TempDir::new("base-build-tar");
    let base_layout = busybox_base(&tmp.join("base-layout"));
    let ctx = app_context(&tmp);
    let tar = tmp.join("app.tar");
    let base_arg = format!("oci:{}:{BASE_TAG}", base_layout.display());

    let output = build(&ctx, "idpb-base-test:1", &base_arg, &["--tar", &path_str(&tar), "--user", "nobody"]);
    output.assert_success();

    let engine = DockerEngine::start();
    let loaded = engine.checked(&["load", "-i", &path_str(&tar)]);
    assert!(loaded.stdout.contains("idpb-base-test:1"), "{loaded}");
    let id = engine.checked(&["run", "--rm", "--network", "none", "idpb-base-test:1"]);
    assert_eq!(id.stdout.trim(), NOBODY_ID, "{id}");
    let out =
        engine.checked(&["run", "--rm", "--network", "none", "idpb-base-test:1", "cat /app/hello.txt; /app/run.sh"]);
    assert_eq!(out.stdout, "hello from the app layer\napp says hi\n", "{out}");
    let inspect = engine.checked(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}} {{len .RootFS.Layers}}",
        "idpb-base-test:1",
    ]);
    let (config, layers) = inspect.stdout.trim().rsplit_once(' ').expect("config and layer count");
    let config: Value = serde_json::from_str(config).unwrap_or_else(|e| panic!("{e}: {inspect}"));
    assert_eq!(config["User"], "nobody", "{inspect}");
    assert_eq!(strings(&config["Entrypoint"]), BASE_ENTRYPOINT, "{inspect}");
    assert_eq!(layers, "2", "{inspect}");
}

/// `IDPB_BASE` is the default base; `--base scratch` overrides it.
#[test]
fn idpb_base_sets_the_default_base() {
    let tmp = TempDir::new("base-env");
    let base_layout = busybox_base(&tmp.join("base-layout"));
    let ctx = app_context(&tmp);
    let base_arg = format!("oci:{}:{BASE_TAG}", base_layout.display());
    let out = tmp.join("out");
    let env = [("IDPB_BASE", base_arg.as_str())];

    build_digest(&ctx, &out, "app:env", &["-q"], &env);
    let manifest = skopeo_inspect_layout_raw(&out, "env");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(2), "{manifest}");
    assert_eq!(manifest["annotations"][BASE_NAME], json!(base_arg), "{manifest}");

    build_digest(&ctx, &out, "app:scratch", &["-q", "--base", "scratch"], &env);
    let manifest = skopeo_inspect_layout_raw(&out, "scratch");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1), "{manifest}");
    assert!(manifest["annotations"].get(BASE_NAME).is_none(), "{manifest}");
}

// ---------------------------------------------------------------------------------------------------------
// 5. Bad bases.

#[test]
fn missing_base_fails_in_one_line_and_pushes_nothing() {
    let tmp = TempDir::new("base-missing");
    let (registry, _) = registry_with_base(&tmp, false);
    let ctx = app_context(&tmp);
    let writes_before = writes(&registry).len();
    let base_ref = registry.reference("base/nosuch:1");

    let output = push_command(&registry, &ctx, &registry.reference("ns/app:1"), &base_ref, &[]).run();
    assert_clean_error(&output, 1, &["base/nosuch", &registry.host()]);
    assert_eq!(writes(&registry).len(), writes_before, "nothing pushed: {:?}", registry.requests());
    assert!(tag_list(&registry, "ns/app").is_empty());

    let out = tmp.join("out");
    let mut cmd = build_command(&ctx, "app:1", &base_ref, &["--oci-layout", &path_str(&out), "--ca-file"]);
    cmd.arg(registry.ca().expect("an HTTPS registry"));
    registry.write_docker_config(&cmd.docker_config());
    let output = cmd.run();
    assert_clean_error(&output, 1, &["base/nosuch", &registry.host()]);
    assert!(!out.join("index.json").exists() || layout_tags(&out).is_empty(), "nothing built");
}

/// The tags an OCI layout's index.json names.
fn layout_tags(layout: &Path) -> Vec<String> {
    let index = read_json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    manifests
        .iter()
        .filter_map(|d| d["annotations"]["org.opencontainers.image.ref.name"].as_str().map(str::to_string))
        .collect()
}

/// A token-auth registry holding, as `base/busybox:foreign`, an index with only linux/arm64/v8 and
/// linux/s390x entries (the busybox base relabelled by umoci), and the layout it came from (tag `foreign`).
fn registry_with_foreign_index(tmp: &TempDir) -> (Registry, PathBuf) {
    let registry = Registry::start(RegistryMode::token(USER, PASS));
    let layout = busybox_base(&tmp.join("base-layout"));
    retag_architecture(&layout, BASE_TAG, "arm64", "arm64");
    retag_architecture(&layout, BASE_TAG, "s390x", "s390x");
    add_platform_index(&layout, "foreign", &[("arm64", "linux/arm64/v8"), ("s390x", "linux/s390x")]);
    store_base_index(&layout, "foreign", &registry, "base/busybox:foreign");
    let stored = skopeo_inspect_raw(&registry, "base/busybox:foreign");
    assert_eq!(stored["manifests"].as_array().map(Vec::len), Some(2), "an index is stored: {stored}");
    (registry, layout)
}

#[test]
fn base_index_without_the_platform_lists_the_platforms_it_has() {
    let tmp = TempDir::new("base-platforms");
    let (registry, layout) = registry_with_foreign_index(&tmp);
    let ctx = app_context(&tmp);
    let writes_before = writes(&registry).len();

    let base_ref = registry.reference("base/busybox:foreign");
    let output = push_command(&registry, &ctx, &registry.reference("ns/app:1"), &base_ref, &[]).run();
    assert_clean_error(&output, 2, &["base/busybox:foreign", "linux/amd64", "linux/arm64/v8", "linux/s390x"]);
    assert_eq!(writes(&registry).len(), writes_before, "nothing pushed: {:?}", registry.requests());

    // The same index read from the layout.
    let out = tmp.join("out");
    let base_arg = format!("oci:{}:foreign", layout.display());
    let output = build(&ctx, "app:1", &base_arg, &["--oci-layout", &path_str(&out)]);
    assert_clean_error(&output, 2, &["linux/amd64", "linux/arm64/v8", "linux/s390x"]);
    assert!(!out.exists(), "nothing written");
}

/// With `--platform` naming an entry of the index, that entry is the base. The entries' manifests are
/// umoci's, which (as image-spec allows) carry no `mediaType` field: the index descriptor's says what they are.
#[test]
fn base_index_serves_the_platform_asked_for() {
    let tmp = TempDir::new("base-platform-pick");
    let (registry, layout) = registry_with_foreign_index(&tmp);
    let ctx = app_context(&tmp);
    let arm_manifest = skopeo_inspect_raw(&registry, &format!("base/busybox@{}", arm_digest(&registry)));
    assert!(arm_manifest.get("mediaType").is_none(), "umoci's manifest has no mediaType: {arm_manifest}");

    let out = tmp.join("out");
    let base_arg = format!("oci:{}:foreign", layout.display());
    let output = build(&ctx, "app:arm", &base_arg, &["--oci-layout", &path_str(&out), "--platform", "linux/arm64/v8"]);
    output.assert_success();
    let config = skopeo_inspect_layout_config(&out, "arm");
    assert_eq!(config["architecture"], "arm64", "{config}");

    let base_ref = registry.reference("base/busybox:foreign");
    let target = registry.reference("ns/app:arm");
    let output = push_command(&registry, &ctx, &target, &base_ref, &["--platform", "linux/arm64/v8"]).run();
    let result = json_result(&output);
    let manifest = skopeo_inspect_raw(&registry, "ns/app:arm");
    assert_eq!(manifest["annotations"][BASE_DIGEST], json!(arm_digest(&registry)), "{result} {manifest}");
    assert_eq!(skopeo_inspect_config(&registry, "ns/app:arm")["architecture"], "arm64");
}

/// The digest of the linux/arm64 entry of `base/busybox:foreign`.
fn arm_digest(registry: &Registry) -> String {
    let index = skopeo_inspect_raw(registry, "base/busybox:foreign");
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let arm = manifests.iter().find(|d| d["platform"]["architecture"] == "arm64").expect("an arm64 entry");
    str_of(&arm["digest"])
}

#[test]
fn invalid_base_reference_is_a_usage_error() {
    let tmp = TempDir::new("base-bad-name");
    let registry = Registry::start(RegistryMode::Http);
    let ctx = app_context(&tmp);
    let target = registry.reference("ns/app:1");

    let output = push_command(&registry, &ctx, &target, "Bad Name", &[]).run();
    assert_clean_error(&output, 2, &["--base", "Bad Name"]);
    assert!(writes(&registry).is_empty(), "nothing pushed: {:?}", registry.requests());

    let out = tmp.join("out");
    let output = build(&ctx, "app:1", "Bad Name", &["--oci-layout", &path_str(&out)]);
    assert_clean_error(&output, 2, &["--base", "Bad Name"]);
    assert!(!out.exists(), "nothing written");

    let output = build(&ctx, "app:1", "oci:", &["--oci-layout", &path_str(&out)]);
    assert_clean_error(&output, 2, &["--base", "oci:DIR"]);
}

/// `--base` is validated with the other flags, before any registry is contacted: a typo costs nothing and
/// is reported as what it is, even when the target is unreachable.
#[test]
fn push_validates_base_before_contacting_any_registry() {
    let tmp = TempDir::new("base-bad-name-early");
    let registry = Registry::start(RegistryMode::Http);
    let ctx = app_context(&tmp);
    let target = registry.reference("ns/app:1");

    // The harness's own readiness probe may be in the log already: compare before and after.
    let before = registry.requests();
    let output = push_command(&registry, &ctx, &target, "Bad Name", &["--retries", "0"]).run();
    assert_clean_error(&output, 2, &["--base", "Bad Name"]);
    assert_eq!(registry.requests(), before, "no request before the usage error: {output}");

    // A target nobody listens on (the registry's port once it is stopped) still gets the usage error.
    let port = registry.port();
    drop(registry);
    let unreachable = format!("127.0.0.1:{port}/ns/app:1");
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(&ctx).args(["-t", &unreachable, "--base", "Bad Name", "-q", "--retries", "0"]);
    assert_clean_error(&cmd.run(), 2, &["--base", "Bad Name"]);
}

/// A base named by digest is cached in the local store (manifest, config, layer headers; its blobs are in
/// the store after the first build): the second build into the store needs no network at all, so it
/// succeeds with the base registry gone, and gives the same digest.
#[test]
fn a_digest_base_in_the_store_builds_without_network() {
    let tmp = TempDir::new("base-offline");
    let registry = Registry::start(RegistryMode::Http);
    let layout = busybox_base(&tmp.join("base-layout"));
    let base_digest = store_base_oci(&layout, BASE_TAG, &registry, "base/busybox:oci");
    let base_ref = format!("{}@{base_digest}", registry.reference("base/busybox"));
    let ctx = app_context(&tmp);
    let home = tmp.subdir("idpb-home");

    let first = build_command(&ctx, "app:1", &base_ref, &[]).env("IDPB_HOME", &home).run();
    first.assert_success();
    drop(registry);
    let second = build_command(&ctx, "app:2", &base_ref, &["--retries", "0"]).env("IDPB_HOME", &home).run();
    second.assert_success();
    let digest = |o: &Output| built_lines(o).first().map(|l| l.1.clone()).unwrap_or_default();
    assert_eq!(digest(&first), digest(&second), "{first}\n{second}");
}

/// `--platform` is checked against the spec's values before any work, naming the closest valid value: no
/// registry is contacted, nothing is built.
#[test]
fn a_bad_platform_is_refused_before_any_work_naming_the_closest_value() {
    let tmp = TempDir::new("base-bad-platform");
    let registry = Registry::start(RegistryMode::Http);
    let ctx = app_context(&tmp);
    let before = registry.requests();
    let target = registry.reference("ns/app:1");
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(&ctx).args(["-t", &target, "--platform", "linux/amd65", "-q"]);
    assert_clean_error(&cmd.run(), 2, &["linux/amd65", "did you mean linux/amd64?"]);
    assert_eq!(registry.requests(), before, "no request");

    let out = tmp.join("out");
    let output = build(&ctx, "app:1", "scratch", &["--platform", "linx/arm64", "--oci-layout", &path_str(&out)]);
    assert_clean_error(&output, 2, &["did you mean linux/arm64?"]);
    assert!(!out.exists(), "nothing built");
}

/// An image pushed on a base runs under podman with the base's Entrypoint, Env and files, as the user the
/// base's `/etc/passwd` names (`--user nobody`).
#[test]
fn push_on_base_runs_under_podman() {
    let tmp = TempDir::new("base-podman");
    let registry = Registry::start(RegistryMode::Http);
    let layout = busybox_base(&tmp.join("base-layout"));
    store_base_oci(&layout, BASE_TAG, &registry, "base/busybox:oci");
    let ctx = app_context(&tmp);
    let target = registry.reference("ns/app:1");
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(&ctx).args(["-t", &target, "--base", &registry.reference("base/busybox:oci")]);
    cmd.args(["--user", "nobody", "-q"]);
    cmd.run().assert_success();

    let podman = Podman::new();
    let output = podman.podman(&["run", "--rm", "--tls-verify=false", &target, "id; echo $PATH; cat /app/hello.txt"]);
    output.assert_success();
    assert!(output.stdout.contains(NOBODY_ID), "{output}");
    assert!(output.stdout.contains("/bin:/usr/bin"), "{output}");
    assert!(output.stdout.contains("hello from the app layer"), "{output}");
}
