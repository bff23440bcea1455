//! Third-party checks: skopeo and umoci judge whether what the binary produced is a valid image.
//!
//! skopeo talks to a [`Registry`] with its CA (`--cert-dir`, plain HTTP gets `--tls-verify=false`) and its
//! credentials, or explicitly none so the developer's own auth files never leak in; `--insecure-policy`
//! keeps the machine's `policy.json` out of it. umoci unpacks `--rootless`, which works as any user but
//! may not keep owners and some mode bits. Each helper panics with the tool's output when it fails, since
//! "skopeo could not read it" is the finding.

use super::TempDir;
use super::process::{Output, require_tool, run};
use super::registry::Registry;
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
    let mut cmd = skopeo("copy");
    cmd.args(registry_flags(registry, "dest-")).arg(oci_ref(layout, tag)).arg(docker_ref(registry, reference));
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

/// `umoci unpack --rootless --image LAYOUT:TAG OUT`; returns `OUT/rootfs`. `out` must not exist yet.
pub fn umoci_unpack(layout: &Path, tag: &str, out: &Path) -> PathBuf {
    let mut cmd = umoci("unpack");
    cmd.arg("--rootless").arg("--image").arg(layout_ref(layout, tag)).arg(out);
    checked(&mut cmd);
    out.join("rootfs")
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

fn checked(cmd: &mut Command) -> Output {
    let output = run(cmd);
    output.assert_success();
    output
}
