//! Running commands: the binary under test in an isolated environment, peer tools, background daemons.
//!
//! [`run`] never hangs a test run: it drains stdout and stderr on threads, kills the child at a deadline
//! and panics with whatever it printed. [`IdpbCommand`] starts from the test process's environment but
//! points `HOME`, `DOCKER_CONFIG` and `IDPB_HOME` at fresh temp dirs and removes what would leak the
//! developer's machine into a test (`IDPB_*`, `DOCKER_*`, `SSL_CERT_*`, proxies, podman's auth file);
//! anything can be set back per test; [`docker_cli`] is the real docker client with the binary installed as
//! its plugin. [`Background`] runs a command while the test signals or feeds it;
//! [`Daemon`] is the background-process guard shared by the registry and the token server.

use super::{TempDir, bin};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long [`run`] lets a command go before killing it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a finished command did. `code` is `None` when a signal ended it.
#[derive(Clone, Debug)]
pub struct Output {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Output {
        assert!(self.success(), "expected success: {self}");
        self
    }

    #[track_caller]
    pub fn assert_failure(&self) -> &Output {
        assert!(!self.success(), "expected failure: {self}");
        self
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Output {
        assert_eq!(self.code, Some(code), "expected exit code {code}: {self}");
        self
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code.map_or("a signal".to_string(), |c| format!("code {c}"));
        write!(
            f,
            "`{}` exited with {code}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---",
            self.command, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion with [`DEFAULT_TIMEOUT`]; stdin is empty.
pub fn run(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, DEFAULT_TIMEOUT)
}

/// Runs `cmd` to completion; panics (after killing it) when it outlives `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let command = describe(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("cannot wait for `{command}`: {e}"),
        }
    };
    let output =
        Output { command, code: status.and_then(|s| s.code()), stdout: collect(stdout), stderr: collect(stderr) };
    assert!(status.is_some(), "timed out after {timeout:?}, killed: {output}");
    output
}

/// Runs `cmd` (a peer tool) and asserts it succeeded.
#[track_caller]
pub fn checked(cmd: &mut Command) -> Output {
    let output = run(cmd);
    output.assert_success();
    output
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

fn collect(reader: JoinHandle<Vec<u8>>) -> String {
    String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned()
}

fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Variables removed by name; `IDPB_*` and `DOCKER_*` are removed by prefix.
const LEAKY_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REGISTRY_AUTH_FILE",
    "XDG_CONFIG_HOME",
    "XDG_RUNTIME_DIR",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// The binary under test (or another program, e.g. `docker` for plugin tests) with an isolated
/// environment. Keep the value alive while the process runs: it owns the temp dirs.
///
/// ```ignore
/// let mut cmd = IdpbCommand::new();
/// std::fs::write(cmd.docker_config().join("config.json"), r#"{"auths":{}}"#).unwrap();
/// cmd.args(["push", "--ca-cert"]).arg(ca).env("NO_COLOR", "1").run().assert_success();
/// ```
#[derive(Debug)]
pub struct IdpbCommand {
    cmd: Command,
    timeout: Duration,
    env_dir: TempDir,
}

impl Default for IdpbCommand {
    fn default() -> Self {
        IdpbCommand::new()
    }
}

impl IdpbCommand {
    pub fn new() -> IdpbCommand {
        IdpbCommand::for_program(bin())
    }

    /// Same isolation for any program.
    pub fn for_program(program: impl AsRef<OsStr>) -> IdpbCommand {
        let env_dir = TempDir::new("env");
        let mut cmd = Command::new(program);
        let prefixed: Vec<OsString> = std::env::vars_os()
            .map(|(name, _)| name)
            .filter(|name| name.to_str().is_some_and(|n| n.starts_with("IDPB_") || n.starts_with("DOCKER_")))
            .collect();
        for name in prefixed.iter().map(OsString::as_os_str).chain(LEAKY_VARS.iter().map(OsStr::new)) {
            cmd.env_remove(name);
        }
        cmd.env("HOME", env_dir.subdir("home"))
            .env("DOCKER_CONFIG", env_dir.subdir("docker"))
            .env("IDPB_HOME", env_dir.subdir("idpb"));
        IdpbCommand { cmd, timeout: DEFAULT_TIMEOUT, env_dir }
    }

    /// The temp `HOME`.
    pub fn home(&self) -> PathBuf {
        self.env_dir.join("home")
    }

    /// The temp `DOCKER_CONFIG` (empty: write a `config.json` here to give credentials).
    pub fn docker_config(&self) -> PathBuf {
        self.env_dir.join("docker")
    }

    /// The temp `IDPB_HOME`.
    pub fn idpb_home(&self) -> PathBuf {
        self.env_dir.join("idpb")
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut IdpbCommand {
        self.cmd.arg(arg);
        self
    }

    pub fn args<S: AsRef<OsStr>>(&mut self, args: impl IntoIterator<Item = S>) -> &mut IdpbCommand {
        self.cmd.args(args);
        self
    }

    /// Sets a variable, overriding the isolation defaults too (e.g. `DOCKER_CONFIG`).
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut IdpbCommand {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut IdpbCommand {
        self.cmd.env_remove(key);
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut IdpbCommand {
        self.cmd.current_dir(dir);
        self
    }

    pub fn timeout(&mut self, timeout: Duration) -> &mut IdpbCommand {
        self.timeout = timeout;
        self
    }

    /// The underlying command, e.g. to `spawn()` it and send a signal.
    pub fn command(&mut self) -> &mut Command {
        &mut self.cmd
    }

    pub fn run(&mut self) -> Output {
        run_with_timeout(&mut self.cmd, self.timeout)
    }
}

/// A started command whose stdout and stderr are drained on threads; killed on drop if still running.
#[derive(Debug)]
pub struct Background {
    child: Child,
    command: String,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Background {
    /// Starts `cmd` with `stdin` written then closed (or no stdin at all), never on a TTY. Keep `cmd` alive
    /// while the process runs: it owns the temp dirs.
    pub fn spawn(cmd: &mut IdpbCommand, stdin: Option<&str>) -> Background {
        let command = cmd.command();
        let description = describe(command);
        let input = if stdin.is_some() { Stdio::piped() } else { Stdio::null() };
        command.stdin(input).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start `{description}`: {e}"));
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A process that exits before reading its stdin shows up in its output, not as a panic here.
            let _ = pipe.write_all(text.as_bytes());
        }
        Background { child, command: description, stdout: Some(stdout), stderr: Some(stderr) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit; panics with what it printed (after killing it) when it outlives `timeout`.
    pub fn finish(&mut self, timeout: Duration) -> Output {
        let status = wait_or_kill(&mut self.child, &self.command, timeout);
        let output = Output {
            command: self.command.clone(),
            code: status.and_then(|s| s.code()),
            stdout: self.stdout.take().map(collect).unwrap_or_default(),
            stderr: self.stderr.take().map(collect).unwrap_or_default(),
        };
        assert!(status.is_some(), "still running after {timeout:?}, killed: {output}");
        output
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion with `stdin` as its standard input (e.g. for `--password-stdin`).
pub fn run_with_stdin(cmd: &mut IdpbCommand, stdin: &str) -> Output {
    Background::spawn(cmd, Some(stdin)).finish(DEFAULT_TIMEOUT)
}

/// Runs the binary under test with `args` in an isolated environment plus `envs` (which win).
pub fn idpb<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>, envs: &[(&str, &str)]) -> Output {
    let mut cmd = IdpbCommand::new();
    cmd.args(args);
    for (key, value) in envs {
        cmd.env(key, value);
    }
    cmd.run()
}

/// Copies the binary under test into `config_dir/cli-plugins/docker-idpb` (mode 0755), as `make install`.
pub fn install_plugin(config_dir: &Path) -> PathBuf {
    let plugin = config_dir.join("cli-plugins/docker-idpb");
    if let Some(dir) = plugin.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    }
    fs::copy(bin(), &plugin).unwrap_or_else(|e| panic!("cannot copy the plugin to {}: {e}", plugin.display()));
    fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", plugin.display()));
    plugin
}

/// The real docker client, isolated (temp `HOME` and `DOCKER_CONFIG`), with the plugin installed in its
/// `DOCKER_CONFIG`.
pub fn docker_cli() -> IdpbCommand {
    let mut cmd = IdpbCommand::for_program(require_tool("docker"));
    install_plugin(&cmd.docker_config());
    // The engine is never contacted; make sure no stray socket or context could be.
    cmd.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    cmd
}

/// The path of an external tool; panics when it is missing, because tests never skip.
pub fn require_tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| missing(name, debian_package(name)))
}

/// Checks that Debian's /usr/bin/python3 can import PyJWT with its crypto backend (the token server's
/// needs; the pyenv python3 on `PATH` is not that one).
pub fn require_python_jwt() {
    let imports = Command::new("/usr/bin/python3")
        .args(["-c", "import jwt, cryptography"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !imports.is_ok_and(|s| s.success()) {
        missing("python3-jwt for /usr/bin/python3", "python3-jwt");
    }
}

fn missing(what: &str, package: &str) -> ! {
    panic!(
        "{what} is not installed: the integration tests need it and do not skip. \
         Run `make test`, which installs it (or `apt-get install -y {package}`)."
    )
}

fn debian_package(tool: &str) -> &str {
    match tool {
        "htpasswd" => "apache2-utils",
        "python3" => "python3",
        other => other,
    }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // nginx lives in /usr/sbin, which a non-root PATH may lack.
    let sbin = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")];
    std::env::split_paths(&path)
        .chain(sbin)
        .map(|dir| dir.join(name))
        .find(|candidate| fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A background process (registry, token server) killed on drop, its stdout and stderr in one log file.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    name: String,
    log: PathBuf,
}

/// How long a daemon may take to answer its readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many ports a daemon is tried on before its "address already in use" is final.
const START_ATTEMPTS: usize = 3;

/// Starts a daemon on a free loopback port: `start(port)` spawns it and waits until it is ready, returning
/// its log when it exited instead. The port is picked by binding `127.0.0.1:0` and releasing it, so another
/// process can grab it in between: a start that failed with "address already in use" (any case) is retried
/// on a new port. Returns what `start` made and its port; panics with the last failure.
pub fn start_on_free_port<T>(mut start: impl FnMut(u16) -> Result<T, String>) -> (T, u16) {
    for attempt in 1..=START_ATTEMPTS {
        let port = free_port();
        match start(port) {
            Ok(started) => return (started, port),
            Err(log) if attempt < START_ATTEMPTS && log.to_lowercase().contains("address already in use") => {}
            Err(log) => panic!("{log}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("no local address: {e}")).port()
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr appended to `log` and a stdin pipe that closes when the test
    /// process dies (the token server exits on that; the registry ignores it).
    pub fn spawn(mut cmd: Command, name: &str, log: PathBuf) -> Daemon {
        let file = File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = file.try_clone().unwrap_or_else(|e| panic!("cannot clone log handle: {e}"));
        cmd.stdin(Stdio::piped()).stdout(file).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} (`{}`): {e}", describe(&cmd)));
        Daemon { child, name: name.to_string(), log }
    }

    /// What the process printed so far.
    pub fn log(&self) -> String {
        fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Polls `probe` until it says ready. `Err(log)` when the process exited first; panics with the log
    /// after [`READY_TIMEOUT`].
    pub fn wait_ready(&mut self, mut probe: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!("{} exited ({status}) before it was ready; its log:\n{}", self.name, self.log()));
            }
            if probe() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {READY_TIMEOUT:?}; its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit within `timeout`; kills it and gives None when it outlives it.
pub fn wait_or_kill(
    child: &mut std::process::Child,
    command: &str,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Err(e) => panic!("cannot wait for `{command}`: {e}"),
        }
    }
}
