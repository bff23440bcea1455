//! Base images for `--base` tests, made offline by an independent tool (umoci), never by docker-idpb, plus
//! a private Docker engine to run what was built on them.
//!
//! [`busybox_base`] is the smallest base that behaves like a distribution's: Debian's static busybox as
//! `/bin/busybox` with `/bin/sh` and a few applets as symlinks, `/etc/passwd` and `/etc/group` with root and
//! `nobody` (65534), `/tmp` mode 1777, and a config with `Env PATH`, `Entrypoint ["/bin/sh", "-c"]` and
//! `Cmd ["id"]` (so running it bare prints who it runs as), linux/amd64. [`merged_usr_base`] is the same
//! with Debian's merged-usr layout: `/bin -> usr/bin`, `/lib -> usr/lib`, busybox in `/usr/bin`. Both are
//! built the peer way (`umoci new`, `unpack`, fill the rootfs, `repack`, `config`) into an OCI layout under
//! the tag [`BASE_TAG`]. [`store_base_oci`] and [`store_base_v2s2`] put a layout into a registry as OCI or
//! as Docker schema 2 (`skopeo copy --format v2s2`); [`add_platform_index`] makes an index naming chosen
//! platforms, e.g. one that lacks the host's. [`DockerEngine`] is Debian's `dockerd` with private paths
//! (`../shared/notes/test-fixtures.md`), stopped with SIGTERM (which also stops its containerd) on drop.

use super::TempDir;
use super::context::write_file;
use super::peers::{skopeo_push_oci_with, umoci_unpack};
use super::process::{IdpbCommand, Output, checked, require_tool, run};
use super::registry::{Registry, stored_digest};
use super::results::sha256_digest;
use serde_json::{Value, json};
use std::fs::{self, File};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The tag the base fixtures are stored under in their layout.
pub const BASE_TAG: &str = "base";
/// Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";
/// The applets linked to busybox in the fixtures' bin directory.
pub const BASE_APPLETS: &[&str] = &["sh", "id", "cat", "ls", "echo"];
/// The fixtures' config.
pub const BASE_ENTRYPOINT: &[&str] = &["/bin/sh", "-c"];
pub const BASE_CMD: &str = "id";
pub const BUSYBOX_BASE_PATH: &str = "PATH=/bin:/usr/bin";
pub const MERGED_USR_BASE_PATH: &str = "PATH=/usr/bin:/bin";
/// The `created` of the fixtures' configs (fixed, so only the layer's file times vary between runs).
const CREATED: &str = "2024-01-02T03:04:05Z";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Builds the busybox base into `layout` (created if needed) as `LAYOUT:base`; returns `layout`.
pub fn busybox_base(layout: &Path) -> PathBuf {
    build_base(layout, BUSYBOX_BASE_PATH, |rootfs| {
        install_busybox(&rootfs.join("bin"));
        common_files(rootfs);
    })
}

/// Builds the merged-usr busybox base into `layout` as `LAYOUT:base`: busybox and its applets in
/// `/usr/bin`, `/bin -> usr/bin`, `/lib -> usr/lib`; otherwise as [`busybox_base`].
pub fn merged_usr_base(layout: &Path) -> PathBuf {
    build_base(layout, MERGED_USR_BASE_PATH, |rootfs| {
        install_busybox(&rootfs.join("usr/bin"));
        mkdir(&rootfs.join("usr/lib"), 0o755);
        link("usr/bin", &rootfs.join("bin"));
        link("usr/lib", &rootfs.join("lib"));
        common_files(rootfs);
    })
}

fn build_base(layout: &Path, path_env: &str, fill: impl FnOnce(&Path)) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: the --base tests need Debian's busybox-static. Run `make deps`, which installs it \
         (or `apt-get install -y busybox-static`)."
    );
    if !layout.join("index.json").exists() {
        checked(umoci("init").arg("--layout").arg(layout));
    }
    let image = image_ref(layout, BASE_TAG);
    checked(umoci("new").arg("--image").arg(&image));
    let bundle_dir = TempDir::new("base-bundle");
    let rootfs = umoci_unpack(layout, BASE_TAG, &bundle_dir.join("bundle"));
    fill(&rootfs);
    checked(umoci("repack").arg("--image").arg(&image).arg(bundle_dir.join("bundle")));
    let mut config = umoci("config");
    config.arg("--image").arg(&image).args(["--config.env", path_env]);
    for word in BASE_ENTRYPOINT {
        config.args(["--config.entrypoint", word]);
    }
    config.args(["--config.cmd", BASE_CMD, "--os", "linux", "--architecture", "amd64", "--created", CREATED]);
    checked(config.arg("--no-history"));
    layout.to_path_buf()
}

fn install_busybox(bin: &Path) {
    mkdir(bin, 0o755);
    fs::copy(BUSYBOX, bin.join("busybox")).unwrap_or_else(|e| panic!("cannot copy {BUSYBOX}: {e}"));
    fs::set_permissions(bin.join("busybox"), fs::Permissions::from_mode(0o755)).expect("chmod busybox");
    for applet in BASE_APPLETS {
        link("busybox", &bin.join(applet));
    }
}

fn common_files(rootfs: &Path) {
    write_file(&rootfs.join("etc/passwd"), PASSWD.as_bytes());
    write_file(&rootfs.join("etc/group"), GROUP.as_bytes());
    mkdir(&rootfs.join("root"), 0o700);
    mkdir(&rootfs.join("tmp"), 0o1777);
}

fn mkdir(dir: &Path, mode: u32) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", dir.display()));
}

fn link(target: &str, path: &Path) {
    symlink(target, path).unwrap_or_else(|e| panic!("cannot link {} -> {target}: {e}", path.display()));
}

/// `umoci config --image LAYOUT:FROM --tag TO --architecture ARCH --no-history`: the same image relabelled
/// for another architecture (its layer still holds amd64 busybox: only the platform's name matters here).
pub fn retag_architecture(layout: &Path, from: &str, to: &str, architecture: &str) {
    checked(umoci("config").arg("--image").arg(image_ref(layout, from)).args([
        "--tag",
        to,
        "--architecture",
        architecture,
        "--no-history",
    ]));
}

/// Writes an OCI index into `layout` whose entries are the manifests tagged `entries[i].0`, each labelled
/// with the platform `entries[i].1` (`OS/ARCH[/VARIANT]`), and tags it `tag`; returns the index's digest.
pub fn add_platform_index(layout: &Path, tag: &str, entries: &[(&str, &str)]) -> String {
    let index_path = layout.join("index.json");
    let mut top = read_json_file(&index_path);
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(from, platform)| {
            let mut desc = tagged(&top, from).clone();
            let obj = desc.as_object_mut().expect("a descriptor is an object");
            obj.remove("annotations");
            let mut parts = platform.split('/');
            let mut p =
                json!({"os": parts.next().unwrap_or_default(), "architecture": parts.next().unwrap_or_default()});
            if let Some(variant) = parts.next() {
                p["variant"] = json!(variant);
            }
            obj.insert("platform".into(), p);
            desc
        })
        .collect();
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    let bytes = serde_json::to_vec(&index).expect("index JSON");
    let digest = sha256_digest(&bytes);
    write_file(&layout.join("blobs/sha256").join(&digest["sha256:".len()..]), &bytes);
    let entry = json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": digest,
        "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    });
    top["manifests"].as_array_mut().expect("index.json has manifests").push(entry);
    write_file(&index_path, &serde_json::to_vec(&top).expect("index.json"));
    digest
}

/// The descriptor `index.json` of a layout tags `tag`.
pub fn tagged<'a>(index: &'a Value, tag: &str) -> &'a Value {
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag:?} in {index}"))
}

/// The manifest (parsed) and its digest that `LAYOUT:TAG` names.
pub fn layout_manifest(layout: &Path, tag: &str) -> (Value, String) {
    let top = read_json_file(&layout.join("index.json"));
    let digest = tagged(&top, tag)["digest"].as_str().expect("a digest").to_string();
    (layout_blob_json(layout, &digest), digest)
}

/// A JSON blob of a layout, by digest.
pub fn layout_blob_json(layout: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{digest} is not sha256"));
    read_json_file(&layout.join("blobs/sha256").join(hex))
}

fn read_json_file(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Stores `LAYOUT:TAG` in `registry` as `reference` (`repo:tag`) in OCI form; returns the stored digest.
pub fn store_base_oci(layout: &Path, tag: &str, registry: &Registry, reference: &str) -> String {
    store(&[], layout, tag, registry, reference)
}

/// Stores `LAYOUT:TAG` in `registry` as `reference` in Docker schema 2 form (`skopeo copy --format v2s2`);
/// returns the stored digest.
pub fn store_base_v2s2(layout: &Path, tag: &str, registry: &Registry, reference: &str) -> String {
    store(&["--format", "v2s2"], layout, tag, registry, reference)
}

/// Stores the index `LAYOUT:TAG` with all its manifests (`skopeo copy --multi-arch all`).
pub fn store_base_index(layout: &Path, tag: &str, registry: &Registry, reference: &str) -> String {
    store(&["--multi-arch", "all"], layout, tag, registry, reference)
}

fn store(extra: &[&str], layout: &Path, tag: &str, registry: &Registry, reference: &str) -> String {
    skopeo_push_oci_with(extra, layout, tag, registry, reference);
    let (repo, stored_tag) = reference.rsplit_once(':').unwrap_or_else(|| panic!("{reference} has no tag"));
    stored_digest(registry, repo, stored_tag).unwrap_or_else(|| panic!("{reference} was not stored"))
}

fn umoci(subcommand: &str) -> Command {
    let mut cmd = Command::new(require_tool("umoci"));
    cmd.arg(subcommand);
    cmd
}

fn image_ref(layout: &Path, tag: &str) -> String {
    format!("{}:{tag}", layout.display())
}

// ---------------------------------------------------------------------------------------------------------
// A private Docker engine.

const DOCKERD: &str = "/usr/sbin/dockerd";
/// How long dockerd may take to answer, and to stop.
const ENGINE_READY_TIMEOUT: Duration = Duration::from_secs(60);
const ENGINE_STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Debian's `dockerd` (docker.io 20.10) with its data, exec root, socket and client config in a temp dir:
/// vfs storage, no iptables, no bridge, so it touches nothing of the machine's network. Run containers with
/// `--network none`. Stopped with SIGTERM on drop (dockerd then stops the containerd it started).
#[derive(Debug)]
pub struct DockerEngine {
    child: Child,
    log: PathBuf,
    dir: TempDir,
}

impl DockerEngine {
    pub fn start() -> DockerEngine {
        assert!(
            Path::new(DOCKERD).is_file(),
            "{DOCKERD} is missing: the --base tests run images under a real Docker engine. Run `make deps`, which \
             installs it (or `apt-get install -y --no-install-recommends docker.io`)."
        );
        require_tool("docker");
        let dir = TempDir::new("docker");
        let log = dir.join("dockerd.log");
        let file = File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = file.try_clone().expect("clone the log handle");
        let mut cmd = Command::new(DOCKERD);
        cmd.arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args(["--storage-driver", "vfs", "--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--ip-masq=false", "--log-level", "warn"]);
        for (name, _) in std::env::vars_os().filter(|(n, _)| n.to_string_lossy().starts_with("DOCKER_")) {
            cmd.env_remove(name);
        }
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {DOCKERD}: {e}"));
        fs::create_dir_all(dir.join("client")).expect("client config dir");
        let mut engine = DockerEngine { child, log, dir };
        engine.wait_ready();
        engine
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + ENGINE_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dockerd exited ({status}) before it was ready (it needs root); its log:\n{}", self.log());
            }
            if self.dir.join("docker.sock").exists()
                && self.docker(&["version", "--format", "{{.Server.Version}}"]).success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd not ready after {ENGINE_READY_TIMEOUT:?}; its log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `unix://DIR/docker.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// A `docker` client command for this engine (its own `DOCKER_CONFIG`, so `docker login` stays here).
    pub fn command(&self, args: &[&str]) -> IdpbCommand {
        let mut cmd = IdpbCommand::for_program(require_tool("docker"));
        cmd.env("DOCKER_HOST", self.host()).env("DOCKER_CONFIG", self.dir.join("client")).args(args);
        cmd.timeout(Duration::from_secs(120));
        cmd
    }

    /// Runs `docker ARGS` against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command(args).run()
    }

    /// `docker ARGS`, asserting success.
    #[track_caller]
    pub fn checked(&self, args: &[&str]) -> Output {
        let output = self.docker(args);
        assert!(output.success(), "{output}\n--- dockerd log ---\n{}", self.log());
        output
    }

    /// `docker login HOST` with `registry`'s credentials (none needed for open modes).
    pub fn login(&self, registry: &Registry) {
        if let Some((user, pass)) = registry.creds() {
            let host = registry.host();
            self.checked(&["login", "-u", &user, "-p", &pass, &host]);
        }
    }

    pub fn log(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = run(Command::new("kill").args(["-TERM", &pid]));
        let deadline = Instant::now() + ENGINE_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        // Did not stop: kill it and the containerd it started (its pid file is under the exec root).
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(containerd) = fs::read_to_string(self.dir.join("exec/containerd/containerd.pid")) {
            let _ = run(Command::new("kill").args(["-KILL", containerd.trim()]));
        }
    }
}

/// Podman (Debian's 4.3) with private storage and the settings these machines need (runc, vfs, cgroupfs,
/// file events, no network; `../shared/notes/test-fixtures.md`), all in a temp dir removed on drop.
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    /// Panics with the `make deps` hint when podman is missing: tests never skip.
    pub fn new() -> Podman {
        require_tool("podman");
        require_tool("runc");
        let dir = TempDir::new("podman");
        write_file(
            &dir.join("containers.conf"),
            b"[containers]\nnetns = \"none\"\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
              [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        );
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("graph").display(),
            dir.join("run").display()
        );
        write_file(&dir.join("storage.conf"), storage.as_bytes());
        Podman { dir }
    }

    /// `podman ARGS` with the private configuration.
    pub fn podman(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("podman");
        cmd.args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("HOME", self.dir.path())
            .env_remove("XDG_RUNTIME_DIR");
        run(&mut cmd)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // vfs layers are plain directories; `podman system reset` would also do, but needs the same env.
        let _ = self.podman(&["rmi", "--all", "--force"]);
    }
}
