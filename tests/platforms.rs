//! Several platforms in one push (issue 10, the part that is done): `--platform` lists give an OCI image
//! index whose entries carry their platform; a context shared by the platforms is stored once and named by
//! every manifest; `OS/ARCH=DIR` gives a platform its own directory; `--platform all` takes every platform
//! of a base index (made with umoci: amd64 busybox, and the same image labelled arm64). skopeo reads the
//! results (`copy --all`, `--override-arch`) and a real Docker engine pulls and runs the amd64 image.

mod support;

use serde_json::Value;
use std::path::Path;
use support::*;

fn small_context(tmp: &TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let ctx = tmp.subdir(name);
    write_file(&ctx.join("app/hello.txt"), text.as_bytes());
    ctx
}

fn push(args: &[&str]) -> Value {
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").args(args).args(["--format", "json", "-q"]);
    json_result(&cmd.run())
}

fn manifests(index: &Value) -> Vec<Value> {
    index["manifests"].as_array().cloned().unwrap_or_default()
}

fn platform_of(entry: &Value) -> String {
    let p = &entry["platform"];
    let mut s = format!("{}/{}", p["os"].as_str().unwrap_or(""), p["architecture"].as_str().unwrap_or(""));
    if let Some(v) = p["variant"].as_str() {
        s.push('/');
        s.push_str(v);
    }
    s
}

/// `skopeo copy --all` of `target` into the layout `out` as `:all`.
fn skopeo_copy_all(target: &str, out: &Path) {
    checked(std::process::Command::new("skopeo").args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:all", path_str(out)),
    ]));
}

/// `skopeo --override-arch arm64 copy` of `target` into the layout `out` as `:arm`.
fn skopeo_copy_arm64(target: &str, out: &Path) {
    checked(std::process::Command::new("skopeo").args([
        "--override-arch",
        "arm64",
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:arm", path_str(out)),
    ]));
}

fn manifest_by_digest(registry: &Registry, repo: &str, digest: &str) -> Value {
    skopeo_inspect_raw(registry, &format!("{repo}@{digest}"))
}

/// Two platforms from one context: an index of two manifests naming the same layer, uploaded once; skopeo
/// copies the whole index and picks arm64 on request; `--annotation index:` and `manifest:` land apart.
#[test]
fn two_platforms_share_one_layer_under_an_index() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("platforms-two");
    let ctx = small_context(&tmp, "ctx", "same for both\n");
    let target = registry.reference("ns/multi:1");
    let result = push(&[
        &path_str(&ctx),
        "-t",
        &target,
        "--platform",
        "linux/amd64,linux/arm64",
        "--annotation",
        "index:org.example.scope=index",
        "--annotation",
        "manifest:org.example.scope=manifest",
    ]);
    let index = skopeo_inspect_raw(&registry, "ns/multi:1");
    assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json", "{index}");
    assert_eq!(result["digest"], stored_digest(&registry, "ns/multi", "1").unwrap_or_default(), "{result}");
    assert_eq!(index["annotations"]["org.example.scope"], "index", "{index}");
    let entries = manifests(&index);
    assert_eq!(entries.iter().map(platform_of).collect::<Vec<_>>(), ["linux/amd64", "linux/arm64"], "{index}");
    let layer_of = |e: &Value| {
        let m = manifest_by_digest(&registry, "ns/multi", e["digest"].as_str().unwrap_or(""));
        assert_eq!(m["annotations"]["org.example.scope"], "manifest", "{m}");
        m["layers"][0]["digest"].as_str().unwrap_or("").to_string()
    };
    assert_eq!(layer_of(&entries[0]), layer_of(&entries[1]), "one layer for both: {index}");
    // The layer went up once; each platform has its own config.
    let layer = layer_of(&entries[0]);
    let layer_puts = registry
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/") && r.path.contains(&layer[7..]))
        .count();
    assert_eq!(layer_puts, 1, "{:?}", registry.requests());
    assert_eq!(result["platforms"].as_array().map(Vec::len), Some(2), "{result}");

    let out = tmp.join("all");
    skopeo_copy_all(&target, &out);
    let arm = tmp.join("arm");
    skopeo_copy_arm64(&target, &arm);
    assert_eq!(skopeo_inspect_layout_config(&arm, "arm")["architecture"], "arm64");
    let rootfs = umoci_unpack(&arm, "arm", &tmp.join("arm-bundle"));
    assert_eq!(std::fs::read_to_string(rootfs.join("app/hello.txt")).unwrap_or_default(), "same for both\n");
}

/// `--platform OS/ARCH=DIR` gives each platform its own directory: two different layers, each under its
/// own platform.
#[test]
fn per_platform_contexts_give_each_platform_its_own_layer() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("platforms-dirs");
    let amd = small_context(&tmp, "amd64", "built for amd64\n");
    let arm = small_context(&tmp, "arm64", "built for arm64\n");
    let target = registry.reference("ns/split:1");
    let amd_arg = format!("linux/amd64={}", path_str(&amd));
    let arm_arg = format!("linux/arm64={}", path_str(&arm));
    push(&["-t", &target, "--platform", &amd_arg, "--platform", &arm_arg]);
    let index = skopeo_inspect_raw(&registry, "ns/split:1");
    let entries = manifests(&index);
    assert_eq!(entries.len(), 2, "{index}");
    let mut layers = Vec::new();
    for (entry, arch, text) in
        [(&entries[0], "amd64", "built for amd64\n"), (&entries[1], "arm64", "built for arm64\n")]
    {
        assert_eq!(entry["platform"]["architecture"], arch, "{index}");
        let digest = entry["digest"].as_str().unwrap_or("");
        let m = manifest_by_digest(&registry, "ns/split", digest);
        layers.push(m["layers"][0]["digest"].clone());
        let layout = tmp.join(format!("pulled-{arch}"));
        skopeo_copy_to_oci(&registry, &format!("ns/split@{digest}"), &layout, "x");
        let rootfs = umoci_unpack(&layout, "x", &tmp.join(format!("bundle-{arch}")));
        assert_eq!(std::fs::read_to_string(rootfs.join("app/hello.txt")).unwrap_or_default(), text);
    }
    assert_ne!(layers[0], layers[1], "{index}");
}

/// `--platform all` on a two-platform base index: an index of the same two platforms, each on its own base
/// manifest, our layer shared; skopeo copies it all or picks arm64; podman and the Docker engine pull the
/// tag and run the amd64 image.
#[test]
fn platform_all_follows_the_base_index_and_podman_and_docker_run_it() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("platforms-all");
    let layout = busybox_base(&tmp.join("base"));
    retag_architecture(&layout, BASE_TAG, "arm", "arm64");
    add_platform_index(&layout, "multi", &[(BASE_TAG, "linux/amd64"), ("arm", "linux/arm64")]);
    store_base_index(&layout, "multi", &registry, "base/busybox:multi");
    let ctx = small_context(&tmp, "ctx", "on every platform\n");
    let target = registry.reference("ns/app:all");
    let base = registry.reference("base/busybox:multi");
    let result = push(&[&path_str(&ctx), "-t", &target, "--base", &base, "--platform", "all"]);
    let index = skopeo_inspect_raw(&registry, "ns/app:all");
    let entries = manifests(&index);
    assert_eq!(entries.iter().map(platform_of).collect::<Vec<_>>(), ["linux/amd64", "linux/arm64"], "{index}");
    let ours: Vec<Value> = entries
        .iter()
        .map(|e| manifest_by_digest(&registry, "ns/app", e["digest"].as_str().unwrap_or(""))["layers"][1].clone())
        .collect();
    assert_eq!(ours[0]["digest"], ours[1]["digest"], "our layer shared: {index}");
    assert_eq!(result["platforms"].as_array().map(Vec::len), Some(2), "{result}");

    // skopeo takes the whole index, or the arm64 image when asked.
    let all = tmp.join("all");
    skopeo_copy_all(&target, &all);
    let arm = tmp.join("arm");
    skopeo_copy_arm64(&target, &arm);
    assert_eq!(skopeo_inspect_layout_config(&arm, "arm")["architecture"], "arm64");

    // podman and the Docker engine pull the tag and run the amd64 image.
    let podman = Podman::new();
    let run = podman.podman(&["run", "--rm", "--tls-verify=false", &target, "cat /app/hello.txt; uname -m"]);
    run.assert_success();
    assert!(run.stdout.contains("on every platform") && run.stdout.contains("x86_64"), "{run}");
    let engine = DockerEngine::start();
    engine.checked(&["pull", &target]);
    let run = engine.checked(&["run", "--rm", "--network", "none", &target, "cat /app/hello.txt; uname -m"]);
    assert!(run.stdout.contains("on every platform"), "{run}");
    assert!(run.stdout.contains("x86_64"), "{run}");
}

/// `--platform all` with no base is refused before any work, naming the fix.
#[test]
fn platform_all_needs_a_base() {
    let tmp = TempDir::new("platforms-all-scratch");
    let ctx = small_context(&tmp, "ctx", "x\n");
    let out = tmp.join("out");
    let output =
        idpb(["build", &path_str(&ctx), "--platform", "all", "--oci-layout", &path_str(&out), "-q"].iter(), &[]);
    assert_clean_error(&output, 2, &["--platform all", "scratch"]);
    assert!(!Path::new(&out).join("index.json").exists());
}

/// A multi-platform build into an OCI layout pushes as it is (`push --oci-layout`): the same index digest,
/// every platform's image with it, and `inspect` shows each platform.
#[test]
fn a_multi_platform_layout_pushes_whole_and_inspect_shows_each_platform() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("platforms-layout");
    let ctx = small_context(&tmp, "ctx", "from a layout\n");
    let layout = tmp.join("layout");
    let built = idpb(
        [
            "build",
            &path_str(&ctx),
            "-t",
            "multi:1",
            "--platform",
            "linux/amd64,linux/arm64/v8",
            "--oci-layout",
            &path_str(&layout),
            "--format",
            "json",
            "-q",
        ]
        .iter(),
        &[],
    );
    let built = json_result(&built);
    let target = registry.reference("ns/fromlayout:1");
    let pushed = push(&["--oci-layout", &path_str(&layout), "--image", "multi:1", "-t", &target]);
    assert_eq!(pushed["digest"], built["digest"], "the layout's index, as it is: {pushed}");
    assert_eq!(stored_digest(&registry, "ns/fromlayout", "1").as_deref(), built["digest"].as_str());
    let out = tmp.join("all");
    skopeo_copy_all(&target, &out);

    let mut cmd = IdpbCommand::new();
    cmd.args(["inspect", &target, "--format", "json", "-q"]);
    let shown = json_result(&cmd.run());
    let platforms: Vec<&str> =
        shown["platforms"].as_array().into_iter().flatten().filter_map(|m| m["platform"].as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"], "{shown}");
}

/// A multi-platform `--tar` loads into Docker as the host's platform.
#[test]
fn a_multi_platform_tar_loads_the_hosts_image() {
    let tmp = TempDir::new("platforms-tar");
    let layout = busybox_base(&tmp.join("base"));
    retag_architecture(&layout, BASE_TAG, "arm", "arm64");
    add_platform_index(&layout, "multi", &[(BASE_TAG, "linux/amd64"), ("arm", "linux/arm64")]);
    let ctx = small_context(&tmp, "ctx", "loaded from a tar\n");
    let tar = tmp.join("multi.tar");
    let base = format!("oci:{}:multi", path_str(&layout));
    let output = idpb(
        [
            "build",
            &path_str(&ctx),
            "-t",
            "multi:tar",
            "--base",
            &base,
            "--platform",
            "all",
            "--tar",
            &path_str(&tar),
            "-q",
        ]
        .iter(),
        &[],
    );
    output.assert_success();
    let engine = DockerEngine::start();
    engine.checked(&["load", "-i", &path_str(&tar)]);
    let run = engine.checked(&["run", "--rm", "--network", "none", "multi:tar", "cat /app/hello.txt"]);
    assert!(run.stdout.contains("loaded from a tar"), "{run}");
}

/// A platform without `=DIR` uses CONTEXT, not another platform's directory; `--platform all` on a
/// single-image base gives that image's one platform as a plain manifest.
#[test]
fn platforms_without_a_directory_use_the_context_and_all_on_one_image_is_one_manifest() {
    let tmp = TempDir::new("platforms-mixed");
    let ctx = small_context(&tmp, "ctx", "the command's context\n");
    let own = small_context(&tmp, "own", "amd64's own directory\n");
    let out = tmp.join("out");
    let amd = format!("linux/amd64={}", path_str(&own));
    let built = idpb(
        ["build", &path_str(&ctx), "-t", "mixed:1", "--platform", &amd, "--platform", "linux/arm64"]
            .iter()
            .chain(["--oci-layout", &path_str(&out), "--format", "json", "-q"].iter()),
        &[],
    );
    let built = json_result(&built);
    let platforms = built["platforms"].as_array().cloned().unwrap_or_default();
    assert_eq!(platforms.len(), 2, "{built}");
    assert_ne!(platforms[0]["layers"][0]["diff_id"], platforms[1]["layers"][0]["diff_id"], "{built}");
    let arm = tmp.join("arm");
    checked(std::process::Command::new("skopeo").args([
        "--override-arch",
        "arm64",
        "copy",
        &format!("oci:{}:1", path_str(&out)),
        &format!("oci:{}:arm", path_str(&arm)),
    ]));
    let rootfs = umoci_unpack(&arm, "arm", &tmp.join("arm-bundle"));
    assert_eq!(std::fs::read_to_string(rootfs.join("app/hello.txt")).unwrap_or_default(), "the command's context\n");

    let base = busybox_base(&tmp.join("base"));
    let single = tmp.join("single");
    let base_ref = format!("oci:{}:{BASE_TAG}", path_str(&base));
    let output = idpb(
        ["build", &path_str(&ctx), "-t", "one:1", "--base", &base_ref, "--platform", "all"]
            .iter()
            .chain(["--oci-layout", &path_str(&single), "--format", "json", "-q"].iter()),
        &[],
    );
    let result = json_result(&output);
    assert!(result["platforms"].is_null(), "one platform, no index: {result}");
    let (manifest, _) = layout_manifest(&single, "1");
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{manifest}");
}
