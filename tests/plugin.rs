//! docker-idpb as Docker sees it: a CLI plugin run by the real `docker` client, a credential helper for
//! idpbuilder's Gitea, `login`/`logout` writing Docker's config.json, and the read-only registry commands.
//!
//! The docker client (no engine runs; the CLI runs plugins on its own) finds the binary copied into a temp
//! `$DOCKER_CONFIG/cli-plugins` and execs it with its whole argv, so these tests check the plugin framing
//! end to end: global flags before `idpb`, `--config`, help, exit codes passed through, and cancellation,
//! which without a TTY reaches the plugin only as the CLI closing the `DOCKER_CLI_PLUGIN_SOCKET` socket
//! (tested through docker and directly, with an abstract socket the test owns). idpbuilder and kubectl are
//! shell scripts printing the real JSON shapes; the `PATH` of those tests holds only the fakes, because
//! `/usr/bin` (which `/bin` links to) has a real kubectl. Every registry is Debian's `docker-registry`,
//! checked afterwards with its access log, direct HTTP requests and skopeo.

mod support;

use serde_json::{Value, json};
use std::fs;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// idpbuilder's Gitea admin, as `idpbuilder get secrets -p gitea` prints it: the password has the `:` and
/// `@` that break naive `user:pass` handling.
const GITEA_USER: &str = "giteaAdmin";
const GITEA_PASSWORD: &str = "Xk9:pQ@z7#vR2:mW@e5-Lb8_Ty1/Nc4+Hs6=Dq3j";
const GITEA_HOST: &str = "gitea.cnoe.localtest.me:8443";
const NOT_FOUND: &str = "credentials not found in native keychain";

const USER: &str = "alice";
const PASSWORD: &str = "c0rrect-h0rse:PW@1";
const WRONG_PASSWORD: &str = "Wr0ng-Secret-zz9";

fn write_executable(path: &Path, script: &str) {
    write_file(path, script.as_bytes());
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

fn read_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A ~60 MB incompressible context: with 256 KiB chunks its upload takes hundreds of PATCHes, long enough
/// to cancel in the middle.
fn make_big_context(dir: &Path) {
    write_file(&dir.join("big.bin"), &pseudo_random_bytes(0xb16, 60 * 1024 * 1024));
}

/// The metadata the repository ships for packagers.
fn shipped_metadata() -> Value {
    read_json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/metadata.json"))
}

fn sigint(pid: u32) {
    let status = Command::new("kill").args(["-INT", &pid.to_string()]).status();
    assert!(status.as_ref().is_ok_and(|s| s.success()), "kill -INT {pid} failed: {status:?}");
}

/// `(comm, state, ppid)` of a live process, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(String, char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut fields = tail.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// The pid of the `docker-idpb ... push` child of `parent` (not the metadata probe docker runs first).
fn plugin_child(parent: u32, timeout: Duration) -> Option<u32> {
    let is_push = |pid: u32| {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.split(|b| *b == 0).any(|arg| arg == b"push")
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let pids = fs::read_dir("/proc").into_iter().flatten().flatten();
        let found = pids.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
            proc_stat(*pid).is_some_and(|(comm, _, ppid)| ppid == parent && comm.starts_with("docker-idpb"))
                && is_push(*pid)
        });
        if found.is_some() {
            return found;
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Whether `pid` is still a running (not zombie) `docker-idpb`.
fn plugin_alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(comm, state, _)| comm.starts_with("docker-idpb") && state != 'Z')
}

/// Waits until the registry's log contains `needle`.
fn wait_for_log(registry: &Registry, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if registry.log().contains(needle) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Asserts a failure with exit `code`, nothing on stdout and a one-line `docker-idpb: ` error holding every
/// one of `needles`.
#[track_caller]
fn assert_clean_error(output: &Output, code: i32, needles: &[&str]) {
    output.assert_code(code);
    assert!(!output.stderr.contains("panicked"), "a panic: {output}");
    assert!(output.stdout.trim().is_empty(), "nothing on stdout: {output}");
    let errors: Vec<&str> = output.stderr.lines().filter(|l| l.starts_with("docker-idpb: ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {output}");
    for needle in needles {
        assert!(errors[0].contains(needle), "the error mentions {needle:?}: {output}");
    }
}

/// After a cancelled push to `repo`: the open upload session was deleted, no manifest was stored, no tag.
#[track_caller]
fn assert_cancelled_cleanly(registry: &Registry, repo: &str) {
    let requests = registry.requests();
    let uploads = format!("/v2/{repo}/blobs/uploads/");
    let deleted: Vec<&AccessLogEntry> =
        requests.iter().filter(|r| r.method == "DELETE" && r.path.starts_with(&uploads)).collect();
    assert!(!deleted.is_empty(), "the open upload session is deleted: {requests:?}");
    // 404 when a PATCH abandoned by the cancel had moved the session past the Location the DELETE names:
    // the reference registry then cancels the upload as it answers. Either way no session may be left.
    assert!(deleted.iter().all(|r| r.status == 204 || r.status == 404), "the registry deleted it: {deleted:?}");
    let left = registry.open_upload_sessions(repo);
    assert!(left.is_empty(), "upload sessions left: {left:?}\n{requests:?}");
    assert!(!requests.iter().any(|r| r.method == "PUT" && r.path.contains("/manifests/")), "{requests:?}");
    assert!(tag_list(registry, repo).is_empty(), "no tag after a cancel");
}

// ---------------------------------------------------------------------------------------------------------
// 1. The docker client runs the plugin: push, exit codes, help, global flags, --config.

#[test]
fn docker_idpb_push_streams_a_context_and_passes_exit_codes_through() {
    require_tool("skopeo");
    require_tool("umoci");
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("plugin-push");
    let context = tmp.subdir("ctx");
    let excluded = make_rich_context(&context);

    let target = registry.reference("ns/app:1");
    let mut docker = docker_cli();
    docker.current_dir(tmp.path()).args(["idpb", "push", "./ctx", "-t", &target]);
    let output = docker.run();
    let digest = pushed_digest(&output, &target);
    assert_eq!(stored_digest(&registry, "ns/app", "1"), Some(digest), "{output}");

    assert_pulls_as(&registry, "ns/app:1", &context, &excluded, &tmp);

    // A usage error (exit 2) and a registry failure (exit 1) come out of docker unchanged, with our line.
    let bad = registry.reference("ns/App:1");
    let mut docker = docker_cli();
    docker.current_dir(tmp.path()).args(["idpb", "push", "./ctx", "-t", &bad, "-q"]);
    assert_clean_error(&docker.run(), 2, &["invalid reference", "lowercase"]);
    assert_eq!(registry.count_requests("PUT", "/manifests/"), 1, "only the first push stored a manifest");

    let mut docker = docker_cli();
    docker.current_dir(tmp.path()).args(["idpb", "push", "./ctx", "-t", "127.0.0.1:1/ns/app:1", "-q"]);
    docker.args(["--retries", "0"]);
    assert_clean_error(&docker.run(), 1, &["127.0.0.1:1"]);
}

#[test]
fn docker_lists_the_plugin_and_shows_its_help_and_version() {
    let description = shipped_metadata()["ShortDescription"].as_str().map(str::to_string);
    let description = description.unwrap_or_else(|| panic!("plugins/metadata.json has no ShortDescription"));

    let output = docker_cli().arg("--help").run();
    output.assert_success();
    let listed = output.stdout.lines().find(|l| l.split_whitespace().next().is_some_and(|w| w.starts_with("idpb")));
    let listed = listed.unwrap_or_else(|| panic!("docker --help does not list idpb: {output}"));
    assert!(listed.contains(&description), "{listed:?} shows {description:?}");
    assert!(!output.stderr.contains("idpb"), "docker has no complaint about the plugin: {output}");

    let version = format!("docker-idpb {}", env!("CARGO_PKG_VERSION"));
    // Docker's global flags before `idpb` are skipped, whatever their spelling.
    let global_flags: [&[&str]; 4] = [
        &["-D"],
        &["--debug", "--log-level", "debug"],
        &["-l=info", "--tls", "-H", "unix:///nonexistent/docker.sock"],
        &["--context", "default"],
    ];
    for flags in global_flags {
        let output = docker_cli().args(flags).args(["idpb", "version"]).run();
        output.assert_success();
        assert_eq!(output.stdout.trim(), version, "{output}");
    }

    // `docker help idpb`, `docker idpb --help` and a bare `docker idpb` print our usage, named as a plugin.
    let help: [&[&str]; 3] = [&["help", "idpb"], &["idpb", "--help"], &["idpb"]];
    for args in help {
        let output = docker_cli().args(args).run();
        output.assert_success();
        assert!(output.stdout.starts_with("Usage: docker idpb "), "{output}");
        for command in ["push", "build", "login", "logout", "catalog", "tags", "inspect", "credential"] {
            assert!(output.stdout.contains(command), "the usage lists {command}: {output}");
        }
    }
    let output = docker_cli().args(["idpb", "push", "--help"]).run();
    output.assert_success();
    assert!(output.stdout.starts_with("Usage: docker idpb push "), "{output}");
    assert!(output.stdout.contains("--chunk-size"), "{output}");

    // Standalone, the same help names the binary.
    let output = IdpbCommand::new().arg("--help").run();
    output.assert_success();
    assert!(output.stdout.starts_with("Usage: docker-idpb "), "{output}");

    // An unknown flag is a usage error (exit 2) through docker too.
    let output = docker_cli().args(["idpb", "version", "--bogus"]).run();
    output.assert_code(2);
    assert!(output.stderr.contains("--bogus") && output.stderr.contains("docker idpb version --help"), "{output}");
}

#[test]
fn metadata_is_exactly_the_shipped_json_fast_and_touches_no_config() {
    require_tool("mkfifo");
    let tmp = TempDir::new("plugin-metadata");
    // Config files that are FIFOs: reading one blocks, so a command that touches the config hangs (and the
    // timeout fails the test) instead of passing unnoticed.
    let trap_config = tmp.subdir("trap-config");
    let trap_home = tmp.subdir("trap-home/.docker");
    for dir in [&trap_config, &trap_home] {
        run(Command::new("mkfifo").arg(dir.join("config.json"))).assert_success();
    }
    let trap_home = tmp.join("trap-home");
    let environments: [[(&str, &Path); 2]; 3] = [
        [("HOME", Path::new("/nonexistent/home")), ("DOCKER_CONFIG", Path::new("/nonexistent/docker"))],
        [("HOME", Path::new("/dev/null/home")), ("DOCKER_CONFIG", Path::new("/dev/null/docker"))],
        [("HOME", &trap_home), ("DOCKER_CONFIG", &trap_config)],
    ];
    let mut timings = Vec::new();
    for env in environments {
        for _ in 0..3 {
            let mut cmd = IdpbCommand::new();
            cmd.arg("docker-cli-plugin-metadata").timeout(Duration::from_secs(10)).current_dir("/");
            cmd.env("PATH", "/nonexistent");
            for (key, value) in env {
                cmd.env(key, value);
            }
            let started = Instant::now();
            let output = cmd.run();
            timings.push(started.elapsed());
            output.assert_success();
            assert_eq!(output.stderr, "", "nothing on stderr: {output}");
            assert!(output.stdout.ends_with('\n') && output.stdout.lines().count() == 1, "one line: {output}");
            let printed: Value = serde_json::from_str(&output.stdout)
                .unwrap_or_else(|e| panic!("the metadata is not JSON ({e}): {output}"));
            assert_eq!(printed, shipped_metadata(), "plugins/metadata.json and the binary agree: {output}");
            let keys: Vec<&str> = printed.as_object().into_iter().flatten().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys.len(), 4, "{keys:?}");
            for key in ["SchemaVersion", "Vendor", "Version", "ShortDescription"] {
                assert!(printed[key].as_str().is_some_and(|v| !v.is_empty()), "{key} is a non-empty string");
            }
            assert_eq!(printed["SchemaVersion"], "0.1.0");
            assert_eq!(printed["Version"], env!("CARGO_PKG_VERSION"));
        }
    }
    timings.sort();
    let median = timings[timings.len() / 2];
    assert!(median < Duration::from_millis(200), "the metadata takes {median:?} (median of {timings:?})");
    eprintln!("docker-cli-plugin-metadata: median {median:?}, slowest {:?}", timings[timings.len() - 1]);
}

#[test]
fn docker_config_flag_gives_the_plugin_its_credentials() {
    let registry = Registry::start(RegistryMode::basic(USER, PASSWORD));
    let tmp = TempDir::new("plugin-config-flag");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "config-flag");

    // The plugin and the credentials live only in DIR; DOCKER_CONFIG points at an empty directory.
    let dir = tmp.subdir("docker-config");
    install_plugin(&dir);
    registry.write_docker_config(&dir);
    let mut docker = IdpbCommand::for_program(require_tool("docker"));
    assert!(fs::read_dir(docker.docker_config()).into_iter().flatten().next().is_none(), "DOCKER_CONFIG is empty");
    let target = registry.reference("ns/config:1");
    docker.arg("--config").arg(&dir).args(["idpb", "push"]).arg(&context).args(["-t", &target]);
    let output = docker.run();
    let digest = pushed_digest(&output, &target);
    assert_eq!(stored_digest(&registry, "ns/config", "1"), Some(digest));
    assert_no_secret(&output, &[PASSWORD]);

    // The `=` spelling too.
    let target = registry.reference("ns/config:2");
    let mut docker = IdpbCommand::for_program(require_tool("docker"));
    docker.arg(format!("--config={}", dir.display())).args(["-D", "idpb", "push"]).arg(&context);
    pushed_digest(&docker.args(["-t", &target]).run(), &target);
}

// ---------------------------------------------------------------------------------------------------------
// 2. Cancellation through DOCKER_CLI_PLUGIN_SOCKET: through docker, and directly.

#[test]
fn sigint_to_docker_without_a_tty_cancels_the_plugin_through_its_socket() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("plugin-cancel-docker");
    let context = tmp.subdir("big");
    make_big_context(&context);

    let target = registry.reference("ns/big:1");
    let mut docker = docker_cli();
    docker.args(["idpb", "push"]).arg(&context).args(["-t", &target, "--chunk-size", "256KiB"]);
    let mut push = Background::spawn(&mut docker, None);
    let plugin = plugin_child(push.pid(), Duration::from_secs(30));
    let plugin = plugin.unwrap_or_else(|| panic!("docker started no docker-idpb: {}", push.finish(DEFAULT_TIMEOUT)));
    let patching = wait_for_log(&registry, "\"PATCH /v2/ns/big/blobs/uploads/", Duration::from_secs(120));
    assert!(patching, "no upload started: {}", registry.log());
    assert!(push.running(), "the push is still running when docker is interrupted");

    // SIGINT to docker only (not its process group): docker closes the plugin socket.
    sigint(push.pid());
    let signalled = Instant::now();
    let output = push.finish(Duration::from_secs(60));
    let took = signalled.elapsed();
    output.assert_code(130);
    assert!(output.stderr.contains("cancel"), "{output}");
    assert!(took < Duration::from_secs(10), "took {took:?} to stop after SIGINT: {output}");
    assert!(!plugin_alive(plugin), "the plugin (pid {plugin}) is gone with docker");
    assert_cancelled_cleanly(&registry, "ns/big");
    eprintln!("docker idpb push stopped {took:.2?} after SIGINT to docker");
}

/// An abstract unix socket like the one the docker CLI creates for a plugin (`@docker_cli_...`).
fn plugin_socket(label: &str) -> (UnixListener, String) {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("idpb_test_{label}_{}_{nanos:08x}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap_or_else(|e| panic!("socket name: {e}"));
    let listener = UnixListener::bind_addr(&addr).unwrap_or_else(|e| panic!("cannot bind @{name}: {e}"));
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("cannot make @{name} non-blocking: {e}"));
    (listener, format!("@{name}"))
}

/// The plugin's connection, once it has connected.
fn accept_within(listener: &UnixListener, timeout: Duration) -> Option<UnixStream> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => return Some(stream),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("accept on the plugin socket failed: {e}"),
        }
    }
    None
}

#[test]
fn closing_the_plugin_socket_cancels_the_push() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("plugin-cancel-socket");
    let context = tmp.subdir("big");
    make_big_context(&context);
    let (listener, name) = plugin_socket("cancel");

    let target = registry.reference("ns/big:1");
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(&context).args(["-t", &target, "--chunk-size", "256KiB"]);
    cmd.env("DOCKER_CLI_PLUGIN_SOCKET", &name);
    let mut push = Background::spawn(&mut cmd, None);
    let connection = accept_within(&listener, Duration::from_secs(30));
    let connection =
        connection.unwrap_or_else(|| panic!("the plugin never connected to {name}: {}", push.finish(DEFAULT_TIMEOUT)));
    let patching = wait_for_log(&registry, "\"PATCH /v2/ns/big/blobs/uploads/", Duration::from_secs(120));
    assert!(patching, "no upload started: {}", registry.log());
    assert!(push.running(), "the push is still running when the socket closes");

    drop(connection);
    let closed = Instant::now();
    let output = push.finish(Duration::from_secs(60));
    let took = closed.elapsed();
    output.assert_code(130);
    assert!(output.stderr.contains("cancel"), "{output}");
    assert!(took < Duration::from_secs(5), "took {took:?} to stop after the socket closed: {output}");
    assert_cancelled_cleanly(&registry, "ns/big");
    eprintln!("docker-idpb push stopped {took:.2?} after its plugin socket closed");
}

#[test]
fn an_open_or_unreachable_plugin_socket_does_not_cancel() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("plugin-socket-open");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "socket");

    // Held open for the whole push, as docker does while nothing is interrupted.
    let (listener, name) = plugin_socket("open");
    let target = registry.reference("ns/socket:open");
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(&context).args(["-t", &target]).env("DOCKER_CLI_PLUGIN_SOCKET", &name);
    let mut push = Background::spawn(&mut cmd, None);
    let connection = accept_within(&listener, Duration::from_secs(30));
    let output = push.finish(DEFAULT_TIMEOUT);
    assert!(connection.is_some(), "the plugin connected to {name}: {output}");
    pushed_digest(&output, &target);
    drop(connection);

    // A socket nobody listens on (a stale variable) is ignored.
    let target = registry.reference("ns/socket:stale");
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(&context).args(["-t", &target]).env("DOCKER_CLI_PLUGIN_SOCKET", "@idpb_test_nobody_listens");
    pushed_digest(&cmd.run(), &target);
}

// ---------------------------------------------------------------------------------------------------------
// 3. The credential helper for idpbuilder's Gitea, with fake idpbuilder and kubectl.

/// A directory of fake tools that is the whole `PATH` of the commands given it.
struct FakeTools {
    dir: TempDir,
}

impl FakeTools {
    fn new() -> FakeTools {
        let dir = TempDir::new("fake-tools");
        dir.subdir("bin");
        FakeTools { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// `PATH` for a command: the fakes only (scripts use shell builtins; `#!/bin/sh` is absolute).
    fn path(&self) -> String {
        path_str(&self.bin())
    }

    /// Where the fake `tool` records its arguments, one call per line.
    fn calls(&self, tool: &str) -> String {
        read_text(&self.dir.join(format!("{tool}.calls")))
    }

    /// A script named `tool` that records its arguments and prints `stdout` (exits `code`, `stderr` to
    /// stderr).
    fn tool(&self, tool: &str, stdout: &str, stderr: &str, code: i32) {
        for text in [stdout, stderr] {
            assert!(!text.contains('\''), "fake output must not contain a single quote: {text}");
        }
        let calls = self.dir.join(format!("{tool}.calls"));
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\n[ -z '{stdout}' ] || printf '%s\\n' '{stdout}'\n\
             [ -z '{stderr}' ] || printf '%s\\n' '{stderr}' >&2\nexit {code}\n",
            calls.display()
        );
        write_executable(&self.bin().join(tool), &script);
    }

    /// `idpbuilder get secrets -p gitea -o json`, printing `[{"name","namespace","username","password","token"}]`.
    fn idpbuilder(&self, user: &str, password: &str) {
        let secrets = json!([
            {"name": "argocd-initial-admin-secret", "namespace": "argocd", "username": "admin", "password": "argo-pw", "token": ""},
            {"name": "gitea-credential", "namespace": "gitea", "username": user, "password": password, "token": "gitea-token-123"},
        ]);
        self.tool("idpbuilder", &secrets.to_string(), "", 0);
    }

    /// `kubectl get secret -n gitea gitea-credential -o json`, printing the Secret with base64 data.
    fn kubectl(&self, user: &str, password: &str) {
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "gitea-credential", "namespace": "gitea"},
            "type": "Opaque",
            "data": {
                "username": base64(user.as_bytes()),
                "password": base64(password.as_bytes()),
                "token": base64(b"gitea-token-123"),
            },
        });
        self.tool("kubectl", &secret.to_string(), "", 0);
    }

    /// `docker-credential-idpb`: a symlink to the binary under test, named as `make install` names it.
    fn idpb_helper(&self) -> PathBuf {
        let link = self.bin().join("docker-credential-idpb");
        symlink(bin(), &link).unwrap_or_else(|e| panic!("cannot link {}: {e}", link.display()));
        link
    }

    /// `docker-credential-idpb` on PATH as a wrapper that records each action, then runs the real helper
    /// (a symlink outside PATH, so its argv[0] still names the helper).
    fn recording_idpb_helper(&self) {
        let real = self.dir.subdir("real").join("docker-credential-idpb");
        symlink(bin(), &real).unwrap_or_else(|e| panic!("cannot link {}: {e}", real.display()));
        let calls = self.dir.join("docker-credential-idpb.calls");
        let script =
            format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n", calls.display(), real.display());
        write_executable(&self.bin().join("docker-credential-idpb"), &script);
    }
}

/// Runs a credential helper `program [prefix...] ACTION` with `stdin`, with `path` as the whole PATH.
fn helper(program: &Path, prefix: &[&str], action: &str, stdin: &str, path: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = IdpbCommand::for_program(program);
    cmd.args(prefix).arg(action).env("PATH", path);
    for (key, value) in env {
        cmd.env(key, value);
    }
    run_with_stdin(&mut cmd, stdin)
}

#[track_caller]
fn assert_helper_answer(output: &Output, server: &str, user: &str, password: &str) {
    output.assert_success();
    let answer: Value = serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|e| panic!("the helper printed no JSON ({e}): {output}"));
    assert_eq!(answer, json!({"ServerURL": server, "Username": user, "Secret": password}), "{output}");
    assert!(!output.stderr.contains(password), "the secret is on stdout only: {output}");
}

#[track_caller]
fn assert_not_found(output: &Output) {
    output.assert_code(1);
    assert_eq!(output.stdout, format!("{NOT_FOUND}\n"), "{output}");
}

#[test]
fn credential_helper_answers_the_protocol_from_idpbuilder() {
    let fakes = FakeTools::new();
    fakes.idpbuilder(GITEA_USER, GITEA_PASSWORD);
    let link = fakes.idpb_helper();
    let path = fakes.path();
    // The same answers as `docker-credential-idpb ACTION` and as `docker-idpb credential ACTION`.
    let ways: [(&Path, &[&str]); 2] = [(&link, &[]), (&bin(), &["credential"])];
    for (program, prefix) in ways {
        for server in [GITEA_HOST, "cnoe.localtest.me:8443", "https://gitea.cnoe.localtest.me:8443/v2/"] {
            let output = helper(program, prefix, "get", &format!("{server}\n"), &path, &[]);
            assert_helper_answer(&output, server, GITEA_USER, GITEA_PASSWORD);
        }
        for server in ["\n", "registry.example.com\n", "127.0.0.1:5000\n", "gitea.cnoe.localtest.me:443\n"] {
            assert_not_found(&helper(program, prefix, "get", server, &path, &[]));
        }
        // IDPB_REGISTRY adds a host.
        let extra = [("IDPB_REGISTRY", "127.0.0.1:5000")];
        let output = helper(program, prefix, "get", "127.0.0.1:5000", &path, &extra);
        assert_helper_answer(&output, "127.0.0.1:5000", GITEA_USER, GITEA_PASSWORD);

        let output = helper(program, prefix, "list", "", &path, &[]);
        output.assert_success();
        let listed: Value = serde_json::from_str(output.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {output}"));
        assert_eq!(listed, json!({GITEA_HOST: GITEA_USER, "cnoe.localtest.me:8443": GITEA_USER}), "{output}");
        assert_no_secret(&output, &[GITEA_PASSWORD]);
        let output = helper(program, prefix, "list", "", &path, &extra);
        let listed: Value = serde_json::from_str(output.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {output}"));
        assert_eq!(listed["127.0.0.1:5000"], GITEA_USER, "{output}");

        let stored = json!({"ServerURL": GITEA_HOST, "Username": "someone", "Secret": "s3cret"}).to_string();
        for (action, stdin) in [("store", stored.as_str()), ("erase", GITEA_HOST)] {
            let output = helper(program, prefix, action, stdin, &path, &[]);
            output.assert_code(1);
            assert!(output.stdout.contains("read-only"), "{action}: {output}");
            assert!(!output.stdout.contains(NOT_FOUND), "{action}: {output}");
        }
    }
    let calls = fakes.calls("idpbuilder");
    assert!(!calls.is_empty(), "idpbuilder was asked");
    assert!(calls.lines().all(|l| l == "get secrets -p gitea -o json"), "idpbuilder calls: {calls:?}");
}

#[test]
fn credential_helper_falls_back_to_kubectl_and_prefers_idpbuilder() {
    let fakes = FakeTools::new();
    let link = fakes.idpb_helper();
    let path = fakes.path();

    // Neither tool: nothing to give, which docker takes as "no credentials", not as an error.
    assert_not_found(&helper(&link, &[], "get", GITEA_HOST, &path, &[]));

    fakes.kubectl(GITEA_USER, GITEA_PASSWORD);
    assert_helper_answer(&helper(&link, &[], "get", GITEA_HOST, &path, &[]), GITEA_HOST, GITEA_USER, GITEA_PASSWORD);
    let output = helper(&bin(), &["credential"], "get", GITEA_HOST, &path, &[]);
    assert_helper_answer(&output, GITEA_HOST, GITEA_USER, GITEA_PASSWORD);
    let calls = fakes.calls("kubectl");
    assert!(calls.lines().all(|l| l == "get secret -n gitea gitea-credential -o json"), "kubectl calls: {calls:?}");
    assert_eq!(calls.lines().count(), 2, "{calls:?}");

    // Both installed: idpbuilder answers, kubectl is not asked.
    fakes.idpbuilder("otherAdmin", "other:pw@x");
    assert_helper_answer(&helper(&link, &[], "get", GITEA_HOST, &path, &[]), GITEA_HOST, "otherAdmin", "other:pw@x");
    assert_eq!(fakes.calls("kubectl").lines().count(), 2, "kubectl not asked again");

    // A failing idpbuilder (cluster down) is an error naming it, not a silent "not found".
    fakes.tool("idpbuilder", "", "Error: failed to get kube config: connection refused", 1);
    let output = helper(&link, &[], "get", GITEA_HOST, &path, &[]);
    output.assert_code(1);
    assert!(output.stdout.contains("idpbuilder") && output.stdout.contains("connection refused"), "{output}");
    assert!(!output.stdout.contains(NOT_FOUND), "{output}");
}

#[test]
fn push_to_the_idpbuilder_host_gets_the_gitea_admin_without_a_login() {
    let registry = Registry::start(RegistryMode::basic(GITEA_USER, GITEA_PASSWORD));
    let host = registry.host();
    let fakes = FakeTools::new();
    fakes.idpbuilder(GITEA_USER, GITEA_PASSWORD);
    let tmp = TempDir::new("plugin-idpb-push");
    let context = tmp.subdir("app");
    make_small_context(&context, "idpbuilder");

    // Not the idpbuilder host: no credentials, and idpbuilder is not asked.
    let target = registry.reference("giteaadmin/app:1");
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(&context).args(["-t", &target, "-q"]).env("PATH", fakes.path());
    assert_clean_error(&cmd.run(), 1, &["no credentials", &host]);
    assert_eq!(fakes.calls("idpbuilder"), "", "idpbuilder is only asked about its own host");

    // IDPB_REGISTRY makes it the idpbuilder host: the default target and idpbuilder's credentials, with no
    // config.json at all.
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(&context).env("PATH", fakes.path()).env("IDPB_REGISTRY", &host);
    assert!(!cmd.docker_config().join("config.json").exists());
    let output = cmd.run();
    let digest = pushed_digest(&output, &format!("{host}/giteaadmin/app:latest"));
    assert_eq!(stored_digest(&registry, "giteaadmin/app", "latest"), Some(digest.clone()));
    assert_no_secret(&output, &[GITEA_PASSWORD]);
    assert!(fakes.calls("idpbuilder").contains("get secrets -p gitea -o json"), "idpbuilder was asked");

    // `"credHelpers": {HOST: "idpb"}`: the credentials come through the helper protocol.
    fakes.recording_idpb_helper();
    let target = registry.reference("giteaadmin/app:helper");
    let mut cmd = IdpbCommand::new();
    let config = json!({"credHelpers": {host.as_str(): "idpb"}});
    write_file(&cmd.docker_config().join("config.json"), config.to_string().as_bytes());
    cmd.arg("push").arg(&context).args(["-t", &target]).env("PATH", fakes.path()).env("IDPB_REGISTRY", &host);
    let output = cmd.run();
    assert_eq!(pushed_digest(&output, &target), digest);
    assert_no_secret(&output, &[GITEA_PASSWORD]);
    let calls = fakes.calls("docker-credential-idpb");
    assert!(calls.lines().any(|l| l == "get"), "docker-credential-idpb get was run: {calls:?} {output}");
}

// ---------------------------------------------------------------------------------------------------------
// 4. login and logout: config.json at 0600, or the configured credential store.

fn config_json(dir: &Path) -> Value {
    read_json(&dir.join("config.json"))
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display())).permissions().mode() & 0o777
}

/// `docker-idpb login HOST -u USER --password-stdin` with `password` on stdin, in config dir `dir`.
fn login(dir: &Path, host: &str, user: &str, password: &str) -> Output {
    let mut cmd = IdpbCommand::new();
    cmd.env("DOCKER_CONFIG", dir).args(["login", host, "-u", user, "--password-stdin"]);
    run_with_stdin(&mut cmd, &format!("{password}\n"))
}

/// `docker-idpb push CONTEXT -t TARGET -q` with no credential flags, in config dir `dir`.
fn push_with_config(dir: &Path, context: &Path, target: &str, path: Option<&str>) -> Output {
    let mut cmd = IdpbCommand::new();
    cmd.env("DOCKER_CONFIG", dir).arg("push").arg(context).args(["-t", target]);
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    cmd.run()
}

#[test]
fn login_writes_auths_at_0600_and_logout_removes_them() {
    let registry = Registry::start(RegistryMode::basic(USER, PASSWORD));
    let host = registry.host();
    let tmp = TempDir::new("plugin-login");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "login");
    let dir = tmp.subdir("docker");
    let config = dir.join("config.json");
    // An existing, world-readable config with other settings: they stay, the file ends up 0600.
    write_file(&config, br#"{"psFormat": "table {{.ID}}", "auths": {"other.example:5000": {"auth": "eDp5"}}}"#);
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap_or_else(|e| panic!("chmod: {e}"));

    // A wrong password changes nothing and prints no secret.
    let before = fs::read(&config).unwrap_or_default();
    let output = login(&dir, &host, USER, WRONG_PASSWORD);
    output.assert_code(1);
    assert!(output.stderr.contains(&host), "{output}");
    // In the words of a login: the user name or password was refused (not "run docker login").
    assert!(output.stderr.contains("refused the user name or password"), "{output}");
    assert!(!output.stderr.contains("docker login") && !output.stderr.contains("-u USER"), "{output}");
    assert_no_secret(&output, &[WRONG_PASSWORD, PASSWORD, &base64(format!("{USER}:{WRONG_PASSWORD}").as_bytes())]);
    assert_eq!(fs::read(&config).unwrap_or_default(), before, "config.json untouched");
    let fresh = tmp.subdir("fresh");
    login(&fresh, &host, USER, WRONG_PASSWORD).assert_code(1);
    assert!(!fresh.join("config.json").exists(), "no config.json written for a failed login");

    let output = login(&dir, &host, USER, PASSWORD);
    output.assert_success();
    assert!(output.stderr.contains("Login Succeeded"), "{output}");
    assert_no_secret(&output, &[PASSWORD, &base64(format!("{USER}:{PASSWORD}").as_bytes())]);
    assert_eq!(mode(&config), 0o600, "config.json holds a secret: mode 0600");
    let saved = config_json(&dir);
    assert_eq!(saved["auths"][host.as_str()]["auth"], base64(format!("{USER}:{PASSWORD}").as_bytes()), "{saved}");
    assert_eq!(saved["auths"]["other.example:5000"]["auth"], "eDp5", "{saved}");
    assert_eq!(saved["psFormat"], "table {{.ID}}", "{saved}");
    assert!(!fs::read_dir(&dir).into_iter().flatten().flatten().any(|e| e.file_name() != "config.json"), "no temp");

    // A later push needs no flags.
    let target = registry.reference("ns/login:1");
    let digest = pushed_digest(&push_with_config(&dir, &context, &target, None), &target);
    assert_eq!(stored_digest(&registry, "ns/login", "1"), Some(digest));

    let mut logout = IdpbCommand::new();
    let output = logout.env("DOCKER_CONFIG", &dir).args(["logout", &host]).run();
    output.assert_success();
    let saved = config_json(&dir);
    assert!(saved["auths"].get(host.as_str()).is_none(), "{saved}");
    assert_eq!(saved["auths"]["other.example:5000"]["auth"], "eDp5", "{saved}");
    assert_eq!(mode(&config), 0o600);
    let output = IdpbCommand::new().env("DOCKER_CONFIG", &dir).args(["logout", &host]).run();
    output.assert_success();
    assert!(output.stderr.contains("Not logged in"), "{output}");

    let target = registry.reference("ns/login:2");
    let output = push_with_config(&dir, &context, &target, None);
    output.assert_code(1);
    assert!(output.stderr.contains("no credentials"), "logged out: {output}");
}

#[test]
fn docker_idpb_login_to_a_token_registry_then_push_and_catalog() {
    let registry = Registry::start(RegistryMode::token(USER, PASSWORD));
    let host = registry.host();
    let tmp = TempDir::new("plugin-login-token");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "login-token");
    let dir = tmp.subdir("docker");
    install_plugin(&dir);

    // Through docker: stdin reaches the plugin, `--config` says where to write.
    let mut docker = IdpbCommand::for_program(require_tool("docker"));
    docker.arg("--config").arg(&dir).args(["idpb", "login", &host, "-u", USER, "--password-stdin"]);
    let output = run_with_stdin(&mut docker, &format!("{PASSWORD}\n"));
    output.assert_success();
    assert_no_secret(&output, &[PASSWORD]);
    assert_eq!(mode(&dir.join("config.json")), 0o600);
    let saved = config_json(&dir);
    assert_eq!(saved["auths"][host.as_str()]["auth"], base64(format!("{USER}:{PASSWORD}").as_bytes()), "{saved}");
    assert!(!docker.docker_config().join("config.json").exists(), "DOCKER_CONFIG was not used");

    let target = registry.reference("ns/token:1");
    let digest = pushed_digest(&push_with_config(&dir, &context, &target, None), &target);
    assert_eq!(stored_digest(&registry, "ns/token", "1"), Some(digest));
    let output = IdpbCommand::new().env("DOCKER_CONFIG", &dir).args(["catalog", &host, "-q"]).run();
    output.assert_success();
    assert_eq!(output.stdout, "ns/token\n", "{output}");

    let output = {
        let mut docker = IdpbCommand::for_program(require_tool("docker"));
        docker.arg("--config").arg(&dir).args(["idpb", "login", &host, "-u", USER, "--password-stdin"]);
        run_with_stdin(&mut docker, WRONG_PASSWORD)
    };
    output.assert_code(1);
    assert_no_secret(&output, &[WRONG_PASSWORD, PASSWORD]);
}

#[test]
fn login_and_logout_go_through_the_configured_credential_store() {
    let registry = Registry::start(RegistryMode::basic(USER, PASSWORD));
    let host = registry.host();
    let tmp = TempDir::new("plugin-login-store");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "store");
    let fakes = FakeTools::new();
    // A tiny credential store: keeps one credential (the `store` JSON is also a valid `get` answer) and
    // records every action and its stdin.
    let log = tmp.join("teststore.log");
    let kept = tmp.join("teststore.kept");
    let script = format!(
        "#!/bin/sh\n\
         log='{log}'; kept='{kept}'\n\
         input=''\n\
         while IFS= read -r line || [ -n \"$line\" ]; do input=\"$input$line\"; done\n\
         printf 'action=%s\\n%s\\n' \"$1\" \"$input\" >> \"$log\"\n\
         case \"$1\" in\n\
         \x20 store) printf '%s\\n' \"$input\" > \"$kept\" ;;\n\
         \x20 erase) : > \"$kept\" ;;\n\
         \x20 get) if [ -s \"$kept\" ]; then IFS= read -r c < \"$kept\"; printf '%s\\n' \"$c\"; \
         else echo '{NOT_FOUND}'; exit 1; fi ;;\n\
         \x20 list) echo '{{}}' ;;\n\
         esac\n",
        log = log.display(),
        kept = kept.display(),
    );
    write_executable(&fakes.bin().join("docker-credential-teststore"), &script);
    let path = fakes.path();

    let dir = tmp.subdir("docker");
    let original = json!({"credsStore": "teststore"}).to_string();
    write_file(&dir.join("config.json"), original.as_bytes());
    let mut cmd = IdpbCommand::new();
    cmd.env("DOCKER_CONFIG", &dir).env("PATH", &path).args(["login", &host, "-u", USER, "--password-stdin"]);
    let output = run_with_stdin(&mut cmd, PASSWORD);
    output.assert_success();
    assert!(output.stderr.contains("docker-credential-teststore"), "{output}");
    assert_no_secret(&output, &[PASSWORD]);
    let recorded = read_text(&log);
    let (action, input) = recorded.split_once('\n').unwrap_or_else(|| panic!("the store was not run: {recorded:?}"));
    assert_eq!(action, "action=store", "{recorded}");
    let stored: Value = serde_json::from_str(input.trim()).unwrap_or_else(|e| panic!("{e}: {recorded}"));
    assert_eq!(stored, json!({"ServerURL": host, "Username": USER, "Secret": PASSWORD}));
    assert_eq!(read_text(&dir.join("config.json")), original, "config.json gets no auths");

    let target = registry.reference("ns/store:1");
    pushed_digest(&push_with_config(&dir, &context, &target, Some(&path)), &target);
    assert!(read_text(&log).contains("action=get"), "the push asked the store");

    let mut cmd = IdpbCommand::new();
    let output = cmd.env("DOCKER_CONFIG", &dir).env("PATH", &path).args(["logout", &host]).run();
    output.assert_success();
    assert!(read_text(&log).contains(&format!("action=erase\n{host}\n")), "{}", read_text(&log));
    assert_eq!(read_text(&dir.join("config.json")), original, "config.json untouched by logout");
    let target = registry.reference("ns/store:2");
    push_with_config(&dir, &context, &target, Some(&path)).assert_code(1);
}

// ---------------------------------------------------------------------------------------------------------
// 5. catalog, tags and inspect, against what docker-idpb and skopeo pushed.

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Adds an OCI index of every image in `layout` to the layout, named `tag`.
fn add_index(layout: &Path, tag: &str) {
    let index_path = layout.join("index.json");
    let mut index = read_json(&index_path);
    let mut manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    for m in &mut manifests {
        if let Some(m) = m.as_object_mut() {
            m.remove("annotations");
        }
    }
    let blob = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    })
    .to_string();
    let digest = sha256_digest(blob.as_bytes());
    write_file(&layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:")), blob.as_bytes());
    let entry = json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": digest,
        "size": blob.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    });
    if let Some(list) = index["manifests"].as_array_mut() {
        list.push(entry);
    }
    write_file(&index_path, index.to_string().as_bytes());
}

/// `docker-idpb ARGS -q` with this registry's credentials in config.json; stdout of a success.
fn read_command(registry: &Registry, args: &[&str]) -> String {
    let mut cmd = IdpbCommand::new();
    registry.write_docker_config(&cmd.docker_config());
    cmd.args(args).arg("-q");
    if let Some(ca) = registry.ca() {
        cmd.args(["--tls-verify", "true", "--ca-file"]).arg(ca);
    }
    let output = cmd.run();
    output.assert_success();
    assert_eq!(output.stderr, "", "-q: nothing on stderr: {output}");
    output.stdout
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn registry_commands(mode: RegistryMode) {
    require_tool("skopeo");
    let registry = Registry::start(mode);
    let host = registry.host();
    let tmp = TempDir::new("plugin-read");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "read");

    let mut digests = Vec::new();
    let image_flags = ["--entrypoint", r#"["/app/run", "--serve"]"#, "--env", "MODE=inspect", "--label", "team=x"];
    for (repo, tag) in [("ns/app", "1"), ("ns/app", "2"), ("ns/other", "1"), ("team/tool", "latest")] {
        let target = registry.reference(&format!("{repo}:{tag}"));
        let mut cmd = IdpbCommand::new();
        registry.write_docker_config(&cmd.docker_config());
        cmd.arg("push").arg(&context).args(["-t", &target]).args(image_flags);
        digests.push(pushed_digest(&cmd.run(), &target));
    }

    assert_eq!(read_command(&registry, &["catalog", &host]), "ns/app\nns/other\nteam/tool\n");
    let catalog = parse_json(&read_command(&registry, &["catalog", &host, "--format", "json"]));
    assert_eq!(catalog, json!({"repositories": ["ns/app", "ns/other", "team/tool"]}));
    let repo = registry.reference("ns/app");
    // The reference registry lists tags in storage order, not sorted; the client passes that on.
    let mut listed: Vec<String> = read_command(&registry, &["tags", &repo]).lines().map(str::to_string).collect();
    listed.sort();
    assert_eq!(listed, ["1", "2"]);
    let tags = parse_json(&read_command(&registry, &["tags", &repo, "--format", "json"]));
    let mut listed = strings(&tags["tags"]);
    listed.sort();
    assert_eq!(listed, ["1", "2"], "{tags}");
    assert_eq!(tags["name"], repo, "{tags}");

    // inspect: the OCI manifest docker-idpb pushed, by tag and by digest.
    let reference = registry.reference("ns/app:1");
    let shown = parse_json(&read_command(&registry, &["inspect", &reference, "--format", "json"]));
    assert_eq!(shown["digest"], digests[0], "{shown}");
    assert_eq!(shown["name"], registry.reference("ns/app"), "the repository: {shown}");
    assert_eq!(shown["tags"], json!(["1"]), "{shown}");
    assert_eq!(shown["references"], json!([format!("{reference}@{}", digests[0])]), "{shown}");
    assert_eq!(shown["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{shown}");
    assert_eq!(shown["platform"], format!("linux/{}", host_architecture()), "{shown}");
    assert_eq!(shown["config"]["Entrypoint"], json!(["/app/run", "--serve"]), "{shown}");
    assert!(strings(&shown["config"]["Env"]).contains(&"MODE=inspect".to_string()), "{shown}");
    assert_eq!(shown["config"]["Labels"], json!({"team": "x"}), "{shown}");
    let raw = skopeo_inspect_raw(&registry, "ns/app:1");
    let descriptor = |l: &Value| json!({"mediaType": l["mediaType"], "digest": l["digest"], "size": l["size"]});
    let shown_layers: Vec<Value> = shown["layers"].as_array().into_iter().flatten().map(descriptor).collect();
    let raw_layers: Vec<Value> = raw["layers"].as_array().into_iter().flatten().map(descriptor).collect();
    assert_eq!(shown_layers, raw_layers, "the layers as stored: {shown}");
    assert_eq!(shown["config_digest"], raw["config"]["digest"], "{shown}");
    let raw_bytes = stored_manifest(&registry, "ns/app", "1");
    assert_eq!(shown["size"], raw_bytes.len(), "the manifest's own size: {shown}");
    let total = raw_bytes.len() as u64
        + raw["config"]["size"].as_u64().unwrap_or(0)
        + raw["layers"].as_array().into_iter().flatten().filter_map(|l| l["size"].as_u64()).sum::<u64>();
    assert_eq!(shown["total_size"], total, "{shown}");
    let by_digest = format!("{}@{}", registry.reference("ns/app"), digests[0]);
    let again = parse_json(&read_command(&registry, &["inspect", &by_digest, "--format", "json"]));
    assert_eq!(again["digest"], digests[0], "{again}");
    assert_eq!(again["config"], shown["config"]);
    let text = read_command(&registry, &["inspect", &reference]);
    assert!(text.lines().any(|l| l == format!("digest: {}", digests[0])), "{text}");
    assert!(text.contains("/app/run"), "{text}");

    // Images in other media types, pushed by skopeo from a layout docker-idpb built: Docker schema 2, and
    // an index of two platforms as OCI and as a Docker manifest list.
    let layout = tmp.join("layout");
    for (tag, platform) in [("amd", "linux/amd64"), ("arm", "linux/arm64/v8")] {
        let mut cmd = IdpbCommand::new();
        cmd.arg("build").arg(&context).args(["-t", &format!("app:{tag}"), "--platform", platform, "-q"]);
        cmd.arg("--oci-layout").arg(&layout).args(image_flags);
        cmd.run().assert_success();
    }
    add_index(&layout, "multi");
    skopeo_push_oci_with(&["--format", "v2s2"], &layout, "amd", &registry, "ns/v2s2:1");
    skopeo_push_oci_with(&["--multi-arch", "all"], &layout, "multi", &registry, "ns/multi:oci");
    skopeo_push_oci_with(&["--multi-arch", "all", "--format", "v2s2"], &layout, "multi", &registry, "ns/multi:v2");

    let reference = registry.reference("ns/v2s2:1");
    let shown = parse_json(&read_command(&registry, &["inspect", &reference, "--format", "json"]));
    assert_eq!(shown["mediaType"], "application/vnd.docker.distribution.manifest.v2+json", "{shown}");
    assert_eq!(shown["digest"], stored_digest(&registry, "ns/v2s2", "1").unwrap_or_default(), "{shown}");
    assert_eq!(shown["config"]["Entrypoint"], json!(["/app/run", "--serve"]), "{shown}");
    assert_eq!(shown["platform"], "linux/amd64", "{shown}");
    assert_eq!(shown["layers"][0]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip", "{shown}");

    for (tag, index_type, image_type) in [
        ("oci", "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json"),
        (
            "v2",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    ] {
        let reference = registry.reference(&format!("ns/multi:{tag}"));
        let shown = parse_json(&read_command(&registry, &["inspect", &reference, "--format", "json"]));
        assert_eq!(shown["mediaType"], index_type, "{shown}");
        assert_eq!(shown["digest"], stored_digest(&registry, "ns/multi", tag).unwrap_or_default(), "{shown}");
        let raw = skopeo_inspect_raw(&registry, &format!("ns/multi:{tag}"));
        let platforms: Vec<&str> =
            shown["platforms"].as_array().into_iter().flatten().filter_map(|m| m["platform"].as_str()).collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"], "{shown}");
        for (i, m) in shown["platforms"].as_array().into_iter().flatten().enumerate() {
            assert_eq!(m["digest"], raw["manifests"][i]["digest"], "{shown}");
            assert_eq!(m["mediaType"], image_type, "{shown}");
            assert_eq!(m["config"]["Entrypoint"], json!(["/app/run", "--serve"]), "{shown}");
        }
    }
}

#[test]
fn catalog_tags_and_inspect_read_a_plain_http_registry() {
    registry_commands(RegistryMode::Http);
}

#[test]
fn catalog_tags_and_inspect_read_a_token_auth_registry() {
    registry_commands(RegistryMode::token(USER, PASSWORD));
}

#[test]
fn catalog_without_a_host_reads_the_idpbuilder_registry_named_by_idpb_registry() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("plugin-catalog-default");
    let context = tmp.subdir("app");
    make_small_context(&context, "default");
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(&context).env("IDPB_REGISTRY", registry.host());
    pushed_digest(&cmd.run(), &registry.reference("giteaadmin/app:latest"));

    // `push` takes its default host from IDPB_REGISTRY; so should `catalog` without a HOST.
    let mut cmd = IdpbCommand::new();
    let output = cmd.args(["catalog", "-q", "--retries", "0"]).env("IDPB_REGISTRY", registry.host()).run();
    output.assert_success();
    assert_eq!(output.stdout, "giteaadmin/app\n", "{output}");
}
