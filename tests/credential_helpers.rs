//! Credential helpers are other people's programs: `docker-credential-NAME get`, found on `PATH` and named by
//! `credsStore` or `credHelpers` in `config.json`. docker-idpb must stay in charge of its own run whatever a
//! helper does: a helper that hangs is given `--timeout` (30 s by default) and then killed together with
//! its children, Ctrl-C stops the run (exit 130) and the helper with it, an answer is read up to 1 MiB and
//! no further, and what a failing helper prints on stdout (where helpers print credentials) never reaches
//! the user. Each test writes its helper scripts into a fresh directory put first on `PATH` (before
//! `/usr/bin:/bin`) and pushes to its own registry that wants credentials (htpasswd), so the helper is
//! certainly asked.
//!
//! Leftover processes are found through a marker unique to the test: it is in the helper's file name (so in
//! the shell's `/proc/PID/cmdline`) and every helper script exports it, so its children (`sleep`, `head`,
//! `tr`) carry it in `/proc/PID/environ`. Whatever carries the marker when a test ends is killed by pid, so
//! a failing test never leaves a `sleep 600` behind.

mod support;

use serde_json::json;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

const USER: &str = "helper-user";
const PASSWORD: &str = "h3lper-Pass-Q7";
/// The secret a failing helper prints on its stdout.
const STDOUT_SECRET: &str = "s3cr3t-on-stdout-XYZ";
/// The variable every helper script exports, so that its children carry the test's marker.
const MARKER_VAR: &str = "CREDTEST_MARKER";
/// How long helpers (and their children) may outlive the run that started them.
const CLEANUP_GRACE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// A directory of credential helper scripts and the marker that identifies their processes; on drop, kills
/// (by pid) every process still carrying the marker.
struct Helpers {
    dir: TempDir,
    marker: String,
}

impl Helpers {
    fn new(label: &str) -> Helpers {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let marker = format!("credtest{}x{n}x{nanos:08x}", std::process::id());
        Helpers { dir: TempDir::new(&format!("helpers-{label}")), marker }
    }

    /// Writes the executable `docker-credential-KIND-MARKER` running `body` (after exporting the marker) and
    /// returns its name for config.json (`KIND-MARKER`).
    fn add(&self, kind: &str, body: &str) -> String {
        let name = format!("{kind}-{}", self.marker);
        let script = format!("#!/bin/sh\n{MARKER_VAR}='{}'\nexport {MARKER_VAR}\n{body}\n", self.marker);
        let path = self.dir.join(program(&name));
        write_file(&path, script.as_bytes());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("chmod: {e}"));
        name
    }

    /// `PATH` with the helpers first, then `/usr/bin:/bin`.
    fn path_var(&self) -> String {
        format!("{}:/usr/bin:/bin", self.dir.path().display())
    }

    /// Every live process carrying the marker.
    fn processes(&self) -> Vec<MarkedProcess> {
        marked_processes(&self.marker)
    }

    /// Waits up to `grace` for every marked process to be gone; returns what is still there.
    fn leftovers_after(&self, grace: Duration) -> Vec<MarkedProcess> {
        let deadline = Instant::now() + grace;
        loop {
            let left = self.processes();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until at least `count` marked processes run (e.g. the helper's shell and its child).
    #[track_caller]
    fn wait_for(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.processes().len() < count {
            assert!(Instant::now() < deadline, "the helper was not running after {timeout:?}: {:?}", self.processes());
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_all(&self) {
        for process in self.processes() {
            kill(process.pid, "KILL");
        }
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// `docker-credential-NAME`, the program a helper name stands for.
fn program(name: &str) -> String {
    format!("docker-credential-{name}")
}

#[derive(Debug)]
#[allow(dead_code)] // Read through `Debug` in failure messages.
struct MarkedProcess {
    pid: u32,
    cmdline: String,
}

/// Live (non-zombie) processes other than this one whose command line or environment contains `marker`.
fn marked_processes(marker: &str) -> Vec<MarkedProcess> {
    let me = std::process::id();
    let needle = marker.as_bytes();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        // A zombie has exited and only waits to be reaped; its cmdline and environ read empty anyway.
        let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
        if stat.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with('Z')) {
            continue;
        }
        let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
        let environ = fs::read(dir.join("environ")).unwrap_or_default();
        if contains(&cmdline, needle) || contains(&environ, needle) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string();
            found.push(MarkedProcess { pid, cmdline });
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `kill -SIGNAL PID`; a process that is already gone is fine.
fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// What a watched run did.
struct Finished {
    output: Output,
    /// From the start of [`finish_within`] to the exit (or to the kill).
    elapsed: Duration,
    /// Whether it exited by itself within the limit.
    exited: bool,
    /// Marked processes still alive [`CLEANUP_GRACE`] after the exit (they are killed afterwards).
    leftovers: Vec<MarkedProcess>,
}

/// Waits up to `limit` for `running` to exit; past the limit kills it and then the marked processes (by
/// pid), so that a hanging helper never hangs the test. After an exit in time, gives the helpers
/// [`CLEANUP_GRACE`] to disappear and records those that did not, then kills them: a helper holding the
/// output pipes would otherwise keep the output from being collected.
fn finish_within(running: &mut Background, helpers: &Helpers, limit: Duration) -> Finished {
    let started = Instant::now();
    while running.running() && started.elapsed() < limit {
        thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let exited = !running.running();
    let leftovers = if exited {
        helpers.leftovers_after(CLEANUP_GRACE)
    } else {
        kill(running.pid(), "KILL");
        helpers.kill_all();
        Vec::new()
    };
    helpers.kill_all();
    let output = running.finish(Duration::from_secs(10));
    Finished { output, elapsed, exited, leftovers }
}

/// A registry that wants credentials, a small context and the target `HOST/ns/app:1`.
struct Setup {
    registry: Registry,
    tmp: TempDir,
    target: String,
}

impl Setup {
    fn new(label: &str) -> Setup {
        let registry = Registry::start(RegistryMode::basic(USER, PASSWORD));
        let tmp = TempDir::new(label);
        make_small_context(&tmp.subdir("ctx"), label);
        let target = registry.reference("ns/app:1");
        Setup { registry, tmp, target }
    }

    /// `docker-idpb push CTX -t TARGET -q EXTRA...` with `helpers` first on `PATH` and `config` as config.json.
    fn push(&self, helpers: &Helpers, config: &serde_json::Value, extra: &[&str]) -> IdpbCommand {
        let mut cmd = IdpbCommand::new();
        cmd.arg("push").arg(self.tmp.join("ctx")).args(["-t", &self.target, "-q"]).args(extra);
        write_file(&cmd.docker_config().join("config.json"), config.to_string().as_bytes());
        cmd.env("PATH", helpers.path_var());
        cmd
    }
}

/// A helper that never answers: a shell running `sleep 600` as a child (not `exec`), so that killing only
/// the shell would leave the `sleep` behind.
const HANGING_HELPER: &str = "sleep 600\nexit 1";

// ---------------------------------------------------------------------------------------------------------
// 1. A hanging helper is bounded by --timeout and killed with its children.

/// `--timeout 3s` bounds the helper too: the push fails within 3 + 2 s of wall time with one line naming
/// the helper, and neither the helper's shell nor its `sleep` child survives the run.
#[test]
fn a_hanging_helper_is_killed_after_the_timeout_with_its_children() {
    let setup = Setup::new("helper-hang");
    let helpers = Helpers::new("hang");
    let name = helpers.add("hang", HANGING_HELPER);
    let config = json!({ "credHelpers": { setup.registry.host(): name } });
    let mut cmd = setup.push(&helpers, &config, &["--timeout", "3s"]);

    let mut running = Background::spawn(&mut cmd, None);
    let limit = Duration::from_secs(3 + 2);
    let done = finish_within(&mut running, &helpers, limit);
    assert!(done.exited, "still running after {limit:?} of wall time with --timeout 3s, killed: {}", done.output);
    assert_one_line_error(&done.output, &[&program(&name)]);
    assert!(done.elapsed <= limit, "took {:?}: {}", done.elapsed, done.output);
    assert!(done.leftovers.is_empty(), "helper processes outlived the run: {:?}", done.leftovers);
}

// ---------------------------------------------------------------------------------------------------------
// 2. Ctrl-C while a helper hangs.

/// SIGINT while the helper hangs ends the run with 130 within 2 s and takes the helper and its children
/// with it.
#[test]
fn ctrl_c_while_a_helper_hangs_exits_130_and_kills_the_helper() {
    let setup = Setup::new("helper-sigint");
    let helpers = Helpers::new("sigint");
    let name = helpers.add("hang", HANGING_HELPER);
    let config = json!({ "credsStore": name });
    let mut cmd = setup.push(&helpers, &config, &[]);

    let mut running = Background::spawn(&mut cmd, None);
    // The helper's shell and its `sleep` child.
    helpers.wait_for(2, Duration::from_secs(30));
    kill(running.pid(), "INT");
    let limit = Duration::from_secs(2);
    let done = finish_within(&mut running, &helpers, limit);
    assert!(done.exited, "still running {limit:?} after SIGINT, killed: {}", done.output);
    done.output.assert_code(130);
    assert!(!done.output.stderr.contains("panicked"), "{}", done.output);
    assert!(done.output.stdout.trim().is_empty(), "no result printed: {}", done.output);
    assert!(done.leftovers.is_empty(), "helper processes outlived the run: {:?}", done.leftovers);
}

// ---------------------------------------------------------------------------------------------------------
// 3. A flooding helper.

/// A helper that prints 300 MB is cut off: the run fails within 20 s with one line naming the helper and
/// saying its answer is too large, and docker-idpb's peak RSS (GNU time's `%M`) stays under 64 MiB.
#[test]
fn a_flooding_helper_is_cut_off_and_memory_stays_bounded() {
    let gnu_time = Path::new("/usr/bin/time");
    assert!(gnu_time.is_file(), "/usr/bin/time is missing: install the `time` package (make deps)");
    let setup = Setup::new("helper-flood");
    let helpers = Helpers::new("flood");
    let name = helpers.add("flood", "head -c 300000000 /dev/zero | tr '\\0' a\nexit 0");
    let config = json!({ "credsStore": name });
    let time_file = setup.tmp.join("time.txt");

    // GNU time runs docker-idpb as its child and writes "%M" (peak RSS, KiB) as the last line of its file.
    let mut cmd = IdpbCommand::for_program(gnu_time);
    cmd.arg("-o").arg(&time_file).args(["-f", "%M"]).arg(bin());
    cmd.arg("push").arg(setup.tmp.join("ctx")).args(["-t", &setup.target, "-q"]);
    write_file(&cmd.docker_config().join("config.json"), config.to_string().as_bytes());
    // docker-idpb carries the marker too, so that an overrun kills it (time's child), not only time.
    cmd.env("PATH", helpers.path_var()).env(MARKER_VAR, &helpers.marker);

    let mut running = Background::spawn(&mut cmd, None);
    let limit = Duration::from_secs(20);
    let done = finish_within(&mut running, &helpers, limit);
    assert!(done.exited, "still running after {limit:?}, killed: {}", done.output);
    let times = fs::read_to_string(&time_file).unwrap_or_else(|e| panic!("no GNU time report ({e}): {}", done.output));
    let peak_kib: u64 = times
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no %M in the GNU time report {times:?}: {}", done.output));

    let mut problems = Vec::new();
    if peak_kib >= 64 * 1024 {
        problems.push(format!("peak RSS {} MiB, not under 64 MiB", peak_kib / 1024));
    }
    let lines: Vec<&str> = done.output.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let too_large = |l: &str| {
        let lower = l.to_lowercase();
        l.contains("1 MiB") || lower.contains("too large") || lower.contains("larger")
    };
    let one_line = match lines.as_slice() {
        [line] => line.starts_with("docker-idpb: ") && line.contains(&program(&name)) && too_large(line),
        _ => false,
    };
    if !one_line {
        problems.push("not one `docker-idpb: ` line naming the helper and saying its answer is too large".into());
    }
    if done.output.code.is_none_or(|c| c == 0) || !done.output.stdout.trim().is_empty() {
        problems.push("not a failure with an empty stdout".into());
    }
    assert!(problems.is_empty(), "{}: {}", problems.join("; "), done.output);
    assert!(done.elapsed <= limit, "took {:?}", done.elapsed);
}

// ---------------------------------------------------------------------------------------------------------
// 4. A failing helper's stdout is never shown.

/// A helper that exits 1 with credentials (or a message holding a secret) on stdout: the run fails, the
/// error names the helper, and the secret appears nowhere in what docker-idpb printed. (What the helper
/// prints on stderr may be shown.)
#[test]
fn a_failing_helper_never_shows_its_stdout() {
    let setup = Setup::new("helper-fail-secret");
    let helpers = Helpers::new("fail-secret");
    let answer = json!({ "ServerURL": setup.registry.host(), "Username": "u", "Secret": STDOUT_SECRET });
    let json_then_fail = helpers.add(
        "jsonfail",
        &format!("read -r server || :\nprintf '%s\\n' '{answer}'\necho 'keychain is locked' >&2\nexit 1"),
    );
    let message_then_fail = helpers.add(
        "msgfail",
        &format!("read -r server || :\necho \"error: the token {STDOUT_SECRET} for $server has expired\"\nexit 1"),
    );

    for name in [json_then_fail, message_then_fail] {
        let config = json!({ "credHelpers": { setup.registry.host(): name } });
        let output = setup.push(&helpers, &config, &[]).timeout(Duration::from_secs(60)).run();
        assert_no_secret(&output, &[STDOUT_SECRET]);
        assert_one_line_error(&output, &[&program(&name)]);
    }
    assert_eq!(stored_digest(&setup.registry, "ns/app", "1"), None);
}

// ---------------------------------------------------------------------------------------------------------
// 5. Regression guard: a helper that answers still works.

/// A well-behaved helper (reads the server URL, prints credentials JSON, exits 0) still gives the push
/// its credentials, and is asked for this registry.
#[test]
fn an_answering_helper_still_provides_credentials() {
    let setup = Setup::new("helper-ok");
    let helpers = Helpers::new("ok");
    let asked = setup.tmp.join("asked.log");
    let body = format!(
        "[ \"$1\" = get ] || {{ echo \"unsupported: $1\" >&2; exit 1; }}\n\
         read -r server || :\n\
         printf '%s\\n' \"$server\" >> '{asked}'\n\
         printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}\\n' \"$server\"",
        asked = asked.display(),
    );
    let name = helpers.add("ok", &body);

    for config in [json!({ "credsStore": name }), json!({ "credHelpers": { setup.registry.host(): name } })] {
        let mut cmd = setup.push(&helpers, &config, &[]);
        let output = cmd.timeout(Duration::from_secs(120)).run();
        let digest = pushed_digest(&output, &setup.target);
        assert_eq!(stored_digest(&setup.registry, "ns/app", "1"), Some(digest));
        assert_no_secret(&output, &[PASSWORD]);
    }
    let asked = fs::read_to_string(&asked).unwrap_or_else(|e| panic!("the helper was never run: {e}"));
    let host = setup.registry.host();
    assert!(!asked.is_empty() && asked.lines().all(|l| l == host), "the helper is asked for {host:?}: {asked:?}");
}
