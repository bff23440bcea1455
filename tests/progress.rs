//! What a push shows while it runs: docker-style lines on a terminal, a readable log in CI, and a clean end
//! when it is interrupted.
//!
//! The terminal tests run the binary under a pseudo-terminal ([`Terminal`], util-linux `script`) and check
//! the screen that is left once the transcript is replayed ([`replay`] applies `\r`, erase-line and cursor
//! moves), not the bytes, so a line redrawn in place counts once and a half-drawn one shows. Slow transfers
//! are made by the fault proxy, which holds every upload PATCH's answer for a while: with 256 KiB chunks a
//! few MiB of incompressible data take several seconds whatever the machine, so heartbeats and a mid-push
//! signal happen for sure, and the test stays quick. The registry is Debian's `docker-registry` on loopback,
//! whose access log shows whether a cancelled push deleted its upload session.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const MIB: usize = 1024 * 1024;
const CHUNK: &str = "256KiB";
const UPLOADS: &str = "/blobs/uploads/";
/// How long the proxy holds each PATCH's answer: 256 KiB per ~0.3 s, under 1 MB/s.
const PATCH_DELAY: Duration = Duration::from_millis(300);
const README: &[u8] = b"progress test\n";

/// `mib` MiB of seeded random data as 1 MiB files in two directories, plus a README; returns the context's
/// total file bytes and file count (what the progress display is expected to count).
fn random_context(dir: &Path, seed: u64, mib: usize) -> (u64, u64) {
    let data = pseudo_random_bytes(seed, mib * MIB);
    for (i, part) in data.chunks(MIB).enumerate() {
        write_file(&dir.join(format!("data/set-{}/part-{i:03}.bin", i % 2)), part);
    }
    write_file(&dir.join("README.txt"), README);
    ((mib * MIB + README.len()) as u64, mib as u64 + 1)
}

/// Bytes as the display prints them: decimal units, one decimal place (as docker does).
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// A proxy in front of `registry` that holds every upload PATCH's answer for [`PATCH_DELAY`].
fn throttle(registry: &Registry) -> FaultProxy {
    let slow = Rule::every("PATCH", UPLOADS, Fault::Delay(PATCH_DELAY));
    FaultProxy::start(registry.port(), ProxyOptions::default().rule(slow))
}

/// `push CONTEXT -t HOST/TARGET --plain-http --chunk-size 256KiB EXTRA...`.
fn push_command(host: &str, context: &Path, target: &str, extra: &[&str]) -> IdpbCommand {
    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(context).args(["-t", &format!("{host}/{target}"), "--plain-http", "--chunk-size", CHUNK]);
    cmd.args(extra);
    cmd
}

/// The manifest `repo:tag` as the registry serves it: (digest, size in bytes).
fn stored_manifest(registry: &Registry, repo: &str, tag: &str) -> (String, usize) {
    let response =
        registry.request("GET", &format!("/v2/{repo}/manifests/{tag}"), &[("Accept", MANIFEST_ACCEPT)], None);
    assert_eq!(response.status, 200, "GET the manifest {repo}:{tag}: {}", response.text());
    let digest = response.header("docker-content-digest").unwrap_or_default().to_string();
    (digest, response.body.len())
}

/// Progress rows on a replayed screen: `NAME: STATE` lines drawn for blobs, whatever their state.
fn rows_ending_with<'a>(screen: &'a [String], state: &str) -> Vec<&'a String> {
    screen.iter().filter(|l| l.ends_with(state)).collect()
}

#[track_caller]
fn assert_no_leftover_progress(screen: &[String], transcript: &str) {
    // A line still showing a transfer (`Pushing [===>   ]`) was left behind instead of being finished.
    let live: Vec<&String> = screen.iter().filter(|l| l.contains("Pushing")).collect();
    assert!(live.is_empty(), "unfinished progress lines left on screen: {live:?}\n{screen:#?}\n{transcript:?}");
    let mut seen = std::collections::HashSet::new();
    for line in screen.iter().filter(|l| !l.is_empty()) {
        assert!(seen.insert(line), "the line {line:?} is on screen twice:\n{screen:#?}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// 1. A terminal: one line per blob ending in its state, totals while it moves, the tag line at the end.

#[test]
fn a_terminal_shows_a_line_per_blob_its_totals_and_the_tag_line() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("progress-tty");
    let context = tmp.subdir("ctx");
    let (total, files) = random_context(&context, 0x77, 3);
    // One IDPB_HOME for the three pushes: the layer cache and the record of where blobs were pushed.
    let home = tmp.subdir("idpb-home");
    let push = |target: &str| {
        let mut cmd = push_command(&registry.host(), &context, target, &[]);
        cmd.env("IDPB_HOME", &home);
        let output = Terminal::run(&mut cmd);
        output.assert_success();
        let screen = replay(&output.stdout);
        assert_no_leftover_progress(&screen, &output.stdout);
        (output, screen)
    };

    let (first, screen) = push("ns/first:1");
    // Totals while the layer streams: the context's bytes (`/ 3.1 MB`) and files (`/4 files`).
    let totals = format!("/ {}", human(total));
    assert!(first.stdout.contains(&totals), "the total size {totals:?} is shown: {first}");
    assert!(first.stdout.contains(&format!("/{files} files")), "the file count is shown: {first}");
    assert!(first.stdout.contains('%'), "a percentage is shown: {first}");
    let pushed = rows_ending_with(&screen, ": Pushed");
    assert!(pushed.len() >= 2, "a `Pushed` line for the layer and the config: {screen:#?}");
    let (digest, size) = stored_manifest(&registry, "ns/first", "1");
    let tag_line = format!("1: digest: {digest} size: {size}");
    assert!(screen.contains(&tag_line), "the tag line {tag_line:?}: {screen:#?}");
    // The line of each blob comes before the tag line.
    let tag_at = screen.iter().position(|l| *l == tag_line).unwrap_or_default();
    assert!(screen.iter().take(tag_at).filter(|l| l.ends_with(": Pushed")).count() >= 2, "{screen:#?}");

    // The same image again: the registry has every blob.
    let (_, again) = push("ns/first:1");
    assert!(!rows_ending_with(&again, ": Layer already exists").is_empty(), "{again:#?}");
    assert!(rows_ending_with(&again, ": Pushed").is_empty(), "nothing is sent again: {again:#?}");
    assert!(again.contains(&tag_line), "{again:#?}");

    // Into another repository of the same registry: the layer is mounted from the first.
    let (_, other) = push("ns/second:1");
    assert!(!rows_ending_with(&other, ": Mounted from ns/first").is_empty(), "{other:#?}");
    let (digest2, size2) = stored_manifest(&registry, "ns/second", "1");
    assert!(other.contains(&format!("1: digest: {digest2} size: {size2}")), "{other:#?}");
}

// ---------------------------------------------------------------------------------------------------------
// 2. CI logs (stderr not a terminal): a line when each blob starts and ends, a heartbeat while it moves.

/// A running push whose stderr lines are recorded with the time they arrived.
struct Timed {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<thread::JoinHandle<()>>,
    _cmd: IdpbCommand,
}

impl Timed {
    fn spawn(mut cmd: IdpbCommand) -> Timed {
        let mut child = cmd
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-idpb: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take();
        let sink = Arc::clone(&lines);
        let reader = thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line).into_owned();
                sink.lock().unwrap_or_else(|e| e.into_inner()).push((Instant::now(), text));
                line.clear();
            }
            // Whatever came without a final newline.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            if !rest.is_empty() {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), String::from_utf8_lossy(&rest).into()));
            }
        });
        Timed { child, lines, reader: Some(reader), _cmd: cmd }
    }

    /// The exit code and every stderr line with its arrival time.
    fn finish(&mut self, timeout: Duration) -> (Option<i32>, Vec<(Instant, String)>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (status.and_then(|s| s.code()), lines)
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_log_gets_a_start_line_heartbeats_and_an_end_line_per_blob() {
    let registry = Registry::start(RegistryMode::Http);
    let proxy = throttle(&registry);
    let tmp = TempDir::new("progress-log");
    let context = tmp.subdir("ctx");
    let (total, files) = random_context(&context, 0x10c, 8);

    let started = Instant::now();
    let mut push = Timed::spawn(push_command(&proxy.host(), &context, "ns/log:1", &["--no-cache"]));
    let (code, lines) = push.finish(Duration::from_secs(180));
    let took = started.elapsed();
    let text: String = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(code, Some(0), "the push succeeds: {text}\n{}", proxy.log());
    assert!(took > Duration::from_secs(6), "the throttle makes the push last over 6 s (took {took:?}): {text}");
    assert!(!text.contains('\r') && !text.contains('\u{1b}'), "no terminal control in a log: {text:?}");
    assert!(lines.iter().all(|(_, l)| l.ends_with('\n')), "every line is ended: {text:?}");

    // The layer's lines: one when it starts (with what there is to read), heartbeats, one when it ends.
    let layer: Vec<&(Instant, String)> = lines.iter().filter(|(_, l)| l.starts_with("layer")).collect();
    let first = layer.first().map(|(_, l)| l.as_str()).unwrap_or_default();
    assert!(first.contains("Pushing") && first.contains(&human(total)), "a start line with the total: {text}");
    let last = layer.last().map(|(_, l)| l.trim_end()).unwrap_or_default();
    assert!(last.contains(": Pushed"), "an end line: {text}");
    let totals = format!("/ {}", human(total));
    let beats: Vec<&str> = layer.iter().map(|(_, l)| l.as_str()).filter(|l| l.contains(&totals)).collect();
    assert!(!beats.is_empty(), "heartbeats show bytes of the total {totals:?}: {text}");
    for beat in &beats {
        assert!(beat.contains(&format!("/{files} files")) && beat.contains('%'), "{beat:?}: {text}");
        assert!(beat.contains("sent") && beat.contains("/s"), "bytes sent and the rate: {beat:?}: {text}");
    }
    // At least one line every ~5 s while bytes move (the proxy moves some every 0.3 s).
    for pair in layer.windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0);
        assert!(
            gap <= Duration::from_millis(6500),
            "{gap:?} without a line between {:?} and {:?}",
            pair[0].1,
            pair[1].1
        );
    }
    let expected = (took.as_secs() / 5).saturating_sub(2) as usize;
    assert!(beats.len() >= expected.max(1), "{} heartbeats in {took:?}: {text}", beats.len());
    // The config too has its end line.
    assert!(lines.iter().any(|(_, l)| l.starts_with("config") && l.contains(": Pushed")), "{text}");
    let (digest, size) = stored_manifest(&registry, "ns/log", "1");
    assert!(text.contains(&format!("1: digest: {digest} size: {size}\n")), "the tag line: {text}");
}

// ---------------------------------------------------------------------------------------------------------
// 3. Ctrl-C: a clean cancel that ends the progress line first.

/// After a cancelled push to `repo`: exit 130, `docker-idpb: cancelled` last on a line of its own, the
/// session deleted, no manifest.
#[track_caller]
fn assert_cancelled(registry: &Registry, repo: &str, code: Option<i32>, transcript: &str) {
    assert_eq!(code, Some(130), "exit 130 after SIGINT: {transcript:?}");
    let text = transcript.trim_end();
    assert!(text.ends_with("docker-idpb: cancelled"), "the error is the last line: {transcript:?}");
    let before = &text[..text.len() - "docker-idpb: cancelled".len()];
    assert!(before.is_empty() || before.ends_with('\n'), "the progress line was ended first: {transcript:?}");
    let requests = registry.requests();
    let deleted: Vec<&AccessLogEntry> =
        requests.iter().filter(|r| r.method == "DELETE" && r.path.contains(UPLOADS)).collect();
    assert!(!deleted.is_empty(), "the upload session is deleted: {requests:?}");
    // 404 when a PATCH abandoned by the cancel had moved the session past the Location the DELETE names:
    // the reference registry then cancels the upload as it answers. Either way no session may be left:
    // a cancelled one loses its `data` and `startedat` (the registry leaves its hash state behind).
    assert!(deleted.iter().all(|r| r.status == 204 || r.status == 404), "{deleted:?}");
    let left = registry.open_upload_sessions(repo);
    assert!(left.is_empty(), "upload sessions left: {left:?}\n{requests:?}");
    assert!(!requests.iter().any(|r| r.method == "PUT" && r.path.contains("/manifests/")), "{requests:?}");
}

#[test]
fn sigint_on_a_terminal_ends_the_progress_line_and_deletes_the_session() {
    let registry = Registry::start(RegistryMode::Http);
    let proxy = throttle(&registry);
    let tmp = TempDir::new("progress-sigint");
    let context = tmp.subdir("ctx");
    random_context(&context, 0x5167, 16);

    let mut cmd = push_command(&proxy.host(), &context, "ns/cancel:1", &["--no-cache"]);
    let mut running = Terminal::spawn(&mut cmd);
    let pid = running.pid(Duration::from_secs(30));
    assert!(proxy.wait_for("PATCH", UPLOADS, 3, Duration::from_secs(60)), "no upload started:\n{}", proxy.log());
    thread::sleep(Duration::from_secs(1));
    let status = Command::new("kill").args(["-INT", &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -INT {pid}");
    let output = running.finish(Duration::from_secs(30));
    let screen = replay(&output.stdout);
    assert_eq!(screen.last().map(String::as_str), Some("docker-idpb: cancelled"), "on a line of its own: {screen:#?}");
    assert_cancelled(&registry, "ns/cancel", output.code, &output.stdout.replace("\r\n", "\n"));
}

/// `timeout -s INT N docker idpb push` without a terminal: `timeout` signals docker, then docker's whole
/// process group, plugin included, and docker closes the plugin's socket on its SIGINT. Both reach the
/// plugin for one interruption: a clean cancel, not the "second Ctrl-C" that exits at once. Played here
/// as `timeout` does it (docker in a process group of its own, SIGINT to docker then to the group), once
/// the upload is under way, so a slow start cannot make the test pass vacuously.
#[test]
fn sigint_to_docker_and_the_plugin_together_is_one_clean_cancel() {
    let registry = Registry::start(RegistryMode::Http);
    let proxy = throttle(&registry);
    let tmp = TempDir::new("progress-plugin-sigint");
    let context = tmp.subdir("ctx");
    random_context(&context, 0xd0c, 16);

    let mut cmd = IdpbCommand::for_program(require_tool("docker"));
    let plugins = cmd.docker_config().join("cli-plugins");
    std::fs::create_dir_all(&plugins).unwrap_or_else(|e| panic!("cannot create {}: {e}", plugins.display()));
    std::fs::copy(bin(), plugins.join("docker-idpb")).unwrap_or_else(|e| panic!("cannot install the plugin: {e}"));
    cmd.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    cmd.args(["idpb", "push"]).arg(&context);
    cmd.args(["-t", &proxy.reference("ns/cancel:1"), "--plain-http", "--no-cache", "--chunk-size", CHUNK]);
    std::os::unix::process::CommandExt::process_group(cmd.command(), 0);
    let mut push = Background::spawn(&mut cmd, None);
    let patching = proxy.wait_for("PATCH", UPLOADS, 2, Duration::from_secs(120));
    assert!(patching, "no upload started: {}\n{}", proxy.log(), push.finish(DEFAULT_TIMEOUT));

    let docker = push.pid().to_string();
    for target in [docker.clone(), format!("-{docker}")] {
        let status = Command::new("kill").args(["-INT", "--", &target]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -INT -- {target}");
    }
    let output = push.finish(Duration::from_secs(60));
    // The docker CLI itself, signalled twice, may die of the signal after the plugin exited (no exit code):
    // what is checked is the plugin's clean cancel, its words and the registry's state.
    let code = output.code.or(Some(130));
    assert_cancelled(&registry, "ns/cancel", code, &output.stderr);
}
