//! Third-party checks: skopeo and umoci judge whether what the binary produced is a valid image.
//!
//! skopeo talks to a [`Registry`] with its CA (`--cert-dir`, plain HTTP gets `--tls-verify=false`) and its
//! credentials, or explicitly none so the developer's own auth files never leak in; `--insecure-policy`
//! keeps the machine's `policy.json` out of it. umoci unpacks `--rootless`, which works as any user but
//! may not keep owners and some mode bits. Each helper panics with the tool's output when it fails, since
//! "skopeo could not read it" is the finding. [`assert_pulls_as`] is the whole round trip a pushed image
//! must survive: pulled by skopeo, unpacked by umoci, identical to its context.

use super::TempDir;
use super::process::{Output, checked, require_tool};
use super::registry::Registry;
use super::tree::assert_same_tree;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `skopeo copy docker://REGISTRY/REFERENCE oci:OUT_DIR:TAG`; `reference` is `repo:tag` or `repo@digest`
/// without the registry host.
pub fn skopeo_copy_to_oci(registry: &Registry, reference: &str, out_dir: &Path, tag: &str) -> Output {
    let mut cmd = skopeo("copy");
    cmd.args(registry_flags(registry, "src-")).arg(docker_ref(registry, reference)).arg(oci_ref(out_dir, tag));
    checked(&mut cmd)
}

/// `skopeo copy oci:LAYOUT:TAG docker://REGISTRY/REFERENCE`: seeds a registry with a peer-built image.
pub fn skopeo_push_oci(layout: &Path, tag: &str, registry: &Registry, reference: &str) -> Output {
    skopeo_push_oci_with(&[], layout, tag, registry, reference)
}

/// [`skopeo_push_oci`] with `extra` copy flags, e.g. `--format v2s2` or `--multi-arch all`.
pub fn skopeo_push_oci_with(extra: &[&str], layout: &Path, tag: &str, registry: &Registry, reference: &str) -> Output {
    let mut cmd = skopeo("copy");
    cmd.args(extra).args(registry_flags(registry, "dest-"));
    cmd.arg(oci_ref(layout, tag)).arg(docker_ref(registry, reference));
    checked(&mut cmd)
}

/// The image config blob as stored in the registry (`skopeo inspect --config --raw`).
pub fn skopeo_inspect_config(registry: &Registry, reference: &str) -> serde_json::Value {
    skopeo_inspect(&["--config", "--raw"], registry_flags(registry, ""), docker_ref(registry, reference))
}

/// The manifest (or index) as stored in the registry (`skopeo inspect --raw`).
pub fn skopeo_inspect_raw(registry: &Registry, reference: &str) -> serde_json::Value {
    skopeo_inspect(&["--raw"], registry_flags(registry, ""), docker_ref(registry, reference))
}

/// The image config blob of `LAYOUT:TAG` in an OCI layout.
pub fn skopeo_inspect_layout_config(layout: &Path, tag: &str) -> serde_json::Value {
    skopeo_inspect(&["--config", "--raw"], Vec::new(), oci_ref(layout, tag))
}

/// The manifest of `LAYOUT:TAG` in an OCI layout, as stored.
pub fn skopeo_inspect_layout_raw(layout: &Path, tag: &str) -> serde_json::Value {
    skopeo_inspect(&["--raw"], Vec::new(), oci_ref(layout, tag))
}

/// `umoci unpack --rootless --image LAYOUT:TAG OUT`; returns `OUT/rootfs`. `out` must not exist yet.
pub fn umoci_unpack(layout: &Path, tag: &str, out: &Path) -> PathBuf {
    let mut cmd = umoci("unpack");
    cmd.arg("--rootless").arg("--image").arg(layout_ref(layout, tag)).arg(out);
    checked(&mut cmd);
    out.join("rootfs")
}

/// Pulls `reference` (`repo:tag`) with skopeo into an OCI layout under `tmp`, unpacks it with umoci and
/// compares the tree with `context`, leaving out `excluded` (e.g. what `.dockerignore` keeps out).
#[track_caller]
pub fn assert_pulls_as(registry: &Registry, reference: &str, context: &Path, excluded: &[String], tmp: &TempDir) {
    let label = reference.replace(['/', ':'], "-");
    let layout = tmp.join(format!("pulled-{label}"));
    skopeo_copy_to_oci(registry, reference, &layout, "pulled");
    let rootfs = umoci_unpack(&layout, "pulled", &tmp.join(format!("bundle-{label}")));
    let ignore: Vec<&str> = excluded.iter().map(String::as_str).collect();
    assert_same_tree(context, &rootfs, &ignore);
}

/// Builds `LAYOUT:TAG` (creating the layout if needed) with one layer holding `context`'s files, the
/// way the peer pipeline does it: `umoci new`, `unpack`, `cp -a`, `repack`.
pub fn umoci_build_layout(context: &Path, layout: &Path, tag: &str) {
    if !layout.join("index.json").exists() {
        checked(umoci("init").arg("--layout").arg(layout));
    }
    let image = layout_ref(layout, tag);
    checked(umoci("new").arg("--image").arg(&image));
    let bundle_dir = TempDir::new("umoci-bundle");
    let bundle = bundle_dir.join("bundle");
    let rootfs = umoci_unpack(layout, tag, &bundle);
    checked(Command::new("cp").arg("-a").arg(context.join(".")).arg(&rootfs));
    checked(umoci("repack").arg("--image").arg(&image).arg(&bundle));
}

fn skopeo(subcommand: &str) -> Command {
    let mut cmd = Command::new(require_tool("skopeo"));
    cmd.args(["--insecure-policy", subcommand]);
    cmd
}

fn umoci(subcommand: &str) -> Command {
    let mut cmd = Command::new(require_tool("umoci"));
    cmd.arg(subcommand);
    cmd
}

fn skopeo_inspect(what: &[&str], flags: Vec<String>, image: String) -> serde_json::Value {
    let mut cmd = skopeo("inspect");
    cmd.args(what).args(flags).arg(image);
    let output = checked(&mut cmd);
    serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("skopeo printed no JSON ({e}): {output}"))
}

/// TLS and credential flags for `registry`; `prefix` is `src-`, `dest-` or empty (`inspect`).
fn registry_flags(registry: &Registry, prefix: &str) -> Vec<String> {
    let mut flags = match registry.trust_dir() {
        Some(dir) => vec![format!("--{prefix}cert-dir"), dir.to_string_lossy().into_owned()],
        None => vec![format!("--{prefix}tls-verify=false")],
    };
    match registry.creds() {
        Some((user, pass)) => flags.extend([format!("--{prefix}creds"), format!("{user}:{pass}")]),
        None => flags.push(format!("--{prefix}no-creds")),
    }
    flags
}

fn docker_ref(registry: &Registry, reference: &str) -> String {
    format!("docker://{}", registry.reference(reference))
}

fn oci_ref(layout: &Path, tag: &str) -> String {
    format!("oci:{}", layout_ref(layout, tag))
}

fn layout_ref(layout: &Path, tag: &str) -> String {
    format!("{}:{tag}", layout.display())
}
