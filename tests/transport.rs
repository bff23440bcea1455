//! How docker-idpb talks to registries when things are not simple: a cross-repository mount under token
//! auth (the token must grant `pull` on the source repository), a host name that does not resolve (a
//! permanent failure: no retries), a registry that accepts connections and never answers (`--timeout`
//! bounds the whole command, not each of its attempts), and retries the user can see (`retrying in 0.8s
//! (attempt 2/4): ...` on stderr, silenced by `-q`).
//!
//! Nothing here leaves loopback. The unresolvable-name tests run the binary in private user, mount and
//! network namespaces (`unshare -rmn`) whose only interface is `lo` and whose `/etc/resolv.conf` points at
//! a tiny DNS server on 127.0.0.1 that answers NXDOMAIN to everything, so the lookup fails the way it does
//! for a typo, without asking the machine's real resolver.

mod support;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use support::*;

const USER: &str = "mounter";
const PASSWORD: &str = "t0ken-Pass-M9";
/// A typo of a registry name, under the TLD reserved to never resolve.
const UNRESOLVABLE: &str = "regsitry.example.invalid";

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// `docker-idpb ARGS` in an isolated environment (not run yet).
fn idpb_command<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> IdpbCommand {
    let mut cmd = IdpbCommand::new();
    cmd.args(args);
    cmd
}

/// Runs `cmd` with `limit` of wall time and returns its output and how long it took; panics (after killing
/// it) when it is still running at the limit.
#[track_caller]
fn run_within(cmd: &mut IdpbCommand, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut running = Background::spawn(cmd, None);
    while running.running() && started.elapsed() < limit {
        thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    if running.running() {
        let _ = Command::new("kill").arg("-KILL").arg(running.pid().to_string()).status();
        let output = running.finish(Duration::from_secs(10));
        panic!("still running after {limit:?} of wall time, killed: {output}");
    }
    (running.finish(Duration::from_secs(10)), elapsed)
}

/// The non-empty lines of stderr.
fn stderr_lines(output: &Output) -> Vec<&str> {
    output.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// A loopback port nobody listens on (bound, read, released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("no local address: {e}")).port()
}

/// `%XX` and `+` decoded (a query value).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| &bytes[i + 1..i + 3])
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------------------
// 6. Cross-repository mounts under token auth.

/// The scopes (`repository:NAME:ACTIONS`) of one token request, as (name, actions).
type Scopes = Vec<(String, Vec<String>)>;

/// The scope sets the token server saw: from each `GET /token?...scope=...` request line (URL-decoded,
/// repeated and space-separated scopes alike) and from each `granted ... access=[...]` line (which also
/// covers the OAuth2 POST grant, whose scope is in the body).
fn token_scope_sets(log: &str) -> Vec<Scopes> {
    let mut sets = Vec::new();
    for line in log.lines() {
        if let Some((_, rest)) = line.split_once("\"GET /token?") {
            let query = rest.split(' ').next().unwrap_or("");
            let mut scopes = Scopes::new();
            for pair in query.split('&') {
                let Some(value) = pair.strip_prefix("scope=") else { continue };
                for scope in percent_decode(value).split(' ').filter(|s| !s.is_empty()) {
                    // `repository:NAME:ACTIONS`; NAME may hold ':' (a port), ACTIONS never does.
                    let Some(rest) = scope.strip_prefix("repository:") else { continue };
                    let Some((name, actions)) = rest.rsplit_once(':') else { continue };
                    scopes.push((name.to_string(), actions.split(',').map(str::to_string).collect()));
                }
            }
            sets.push(scopes);
        } else if let Some((_, access)) = line.split_once(" access=") {
            let Ok(serde_json::Value::Array(access)) = serde_json::from_str(access.trim()) else { continue };
            let scopes = access
                .iter()
                .filter(|a| a["type"] == "repository")
                .map(|a| (a["name"].as_str().unwrap_or("").to_string(), strings(&a["actions"])))
                .collect();
            sets.push(scopes);
        }
    }
    sets
}

/// Whether `scopes` ask for every one of `actions` on `name`.
fn grants(scopes: &Scopes, name: &str, actions: &[&str]) -> bool {
    scopes.iter().any(|(n, a)| n == name && actions.iter().all(|want| a.iter().any(|have| have == want)))
}

/// Two repositories in one token-auth registry: the blobs go up once, into `ns/app`, and are mounted into
/// `other/mirror`, which needs a token asking `pull` on `ns/app` together with `pull,push` on
/// `other/mirror`. Both tags pull back as the context.
#[test]
fn mounts_across_repositories_work_under_token_auth() {
    require_tool("skopeo");
    require_tool("umoci");
    let registry = Registry::start(RegistryMode::token(USER, PASSWORD));
    let tmp = TempDir::new("transport-token-mount");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "token mounts");
    let (app, mirror) = (registry.reference("ns/app:1"), registry.reference("other/mirror:2"));

    let mut cmd = idpb_command(["push".to_string(), path_str(&context)]);
    cmd.args(["-t", &app, "-t", &mirror, "--format", "json"]);
    registry.write_docker_config(&cmd.docker_config());
    let output = cmd.run();
    output.assert_success();
    let result: serde_json::Value =
        serde_json::from_str(output.stdout.trim()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {output}"));
    let (layer, config) =
        (last_layer(&result)["digest"].as_str().unwrap_or(""), result["config_digest"].as_str().unwrap_or(""));
    assert_digest(layer);
    assert_digest(config);
    assert_eq!(strings(&result["sent"]["blobs_uploaded"]).len(), 2, "layer and config, once: {result}");
    let mut mounted = strings(&result["sent"]["blobs_mounted"]);
    mounted.sort();
    let mut expected = vec![format!("other/mirror@{layer}"), format!("other/mirror@{config}")];
    expected.sort();
    assert_eq!(mounted, expected, "{result}");
    assert_eq!(result["sent"]["manifests"], 2, "{result}");

    let requests = registry.requests();
    let blob_puts = requests.iter().filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/")).count();
    assert_eq!(blob_puts, 2, "layer and config uploaded once, into one repository: {requests:?}");
    for digest in [layer, config] {
        let mounted_here = requests.iter().any(|r| {
            let path = percent_decode(&r.path);
            r.method == "POST"
                && r.status == 201
                && path.starts_with("/v2/other/mirror/blobs/uploads/")
                && path.contains(&format!("mount={digest}"))
                && path.contains("from=ns/app")
        });
        assert!(mounted_here, "a mount POST of {digest} from ns/app answered 201: {requests:?}");
    }

    let token_log = registry.token_log().unwrap_or_default();
    let sets = token_scope_sets(&token_log);
    assert!(
        sets.iter().any(|s| grants(s, "ns/app", &["pull"]) && grants(s, "other/mirror", &["pull", "push"])),
        "one token asked for repository:ns/app:pull with repository:other/mirror:pull,push; token log:\n{token_log}"
    );

    let digest = result["digest"].as_str().unwrap_or_else(|| panic!("no digest: {result}"));
    assert_eq!(stored_digest(&registry, "ns/app", "1").as_deref(), Some(digest));
    assert_eq!(stored_digest(&registry, "other/mirror", "2").as_deref(), Some(digest));
    assert_pulls_as(&registry, "ns/app:1", &context, &[], &tmp);
    assert_pulls_as(&registry, "other/mirror:2", &context, &[], &tmp);
}

// ---------------------------------------------------------------------------------------------------------
// 7. A host name that does not resolve.

/// Answers every UDP query on 127.0.0.1:53 with NXDOMAIN (the question echoed); touches the file named by
/// its argument once listening.
const NXDOMAIN_SERVER: &str = r#"import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
open(sys.argv[1], "w").close()
while True:
    data, peer = s.recvfrom(4096)
    if len(data) < 12:
        continue
    end = 12
    while end < len(data) and data[end] != 0:
        end += 1 + data[end]
    flags = bytes([0x80 | (data[2] & 0x01), 0x80 | 3])
    s.sendto(data[:2] + flags + data[4:6] + bytes(6) + data[12:end + 5], peer)
"#;

/// Inside the namespaces: loopback up, resolv.conf replaced, the NXDOMAIN server started, then GNU time
/// running the binary (`"$@"`), so that only the binary's own wall time is reported.
const NAMESPACE_SCRIPT: &str = r#"fail() { echo "ns-setup: $*" >&2; exit 97; }
"$NS_IP" link set lo up || fail "cannot bring up lo"
mount --bind "$NS_RESOLV" /etc/resolv.conf || fail "cannot bind-mount $NS_RESOLV on /etc/resolv.conf"
/usr/bin/python3 "$NS_DNS" "$NS_READY" &
dns=$!
tries=0
while [ ! -e "$NS_READY" ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 1000 ]; then kill "$dns"; fail "the NXDOMAIN server did not start"; fi
  sleep 0.01
done
/usr/bin/time -o "$NS_TIME" -f %e "$@"
code=$?
kill "$dns"
exit "$code"
"#;

/// Runs `docker-idpb ARGS` where every DNS lookup answers NXDOMAIN and nothing but loopback exists (see
/// the module doc); returns its output and its own wall time.
fn run_without_dns(args: &[&str]) -> (Output, Duration) {
    let unshare = require_tool("unshare");
    let ip = require_tool("ip");
    require_tool("python3");
    assert!(Path::new("/usr/bin/time").is_file(), "/usr/bin/time is missing: install the `time` package (make deps)");
    let dir = TempDir::new("nodns");
    let (resolv, dns, ready, time) = (dir.join("resolv.conf"), dir.join("dns.py"), dir.join("ready"), dir.join("time"));
    let script = dir.join("in-namespace.sh");
    write_file(&resolv, b"nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
    write_file(&dns, NXDOMAIN_SERVER.as_bytes());
    write_file(&script, NAMESPACE_SCRIPT.as_bytes());

    let mut cmd = IdpbCommand::for_program(unshare);
    cmd.args(["--user", "--map-root-user", "--mount", "--net", "sh"]).arg(&script).arg(bin()).args(args);
    cmd.env("NS_IP", ip).env("NS_RESOLV", &resolv).env("NS_DNS", &dns).env("NS_READY", &ready).env("NS_TIME", &time);
    let output = cmd.timeout(Duration::from_secs(120)).run();
    assert!(
        !output.stderr.lines().any(|l| l.starts_with("unshare: ") || l.starts_with("ns-setup: ")),
        "cannot set up the DNS-less namespaces (this test needs `unshare -rmn`: user, mount and network \
         namespaces): {output}"
    );
    let report = fs::read_to_string(&time).unwrap_or_else(|e| panic!("no GNU time report ({e}): {output}"));
    let seconds: f64 = report
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no %e in the GNU time report {report:?}: {output}"));
    (output, Duration::from_secs_f64(seconds))
}

/// A push to a host that does not resolve fails at once (a typo is no transient error: no retries) with
/// one line naming the host.
#[test]
fn push_to_an_unresolvable_host_fails_at_once() {
    let tmp = TempDir::new("transport-nodns-push");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "nodns");
    let target = format!("{UNRESOLVABLE}/ns/app:1");
    let (output, elapsed) = run_without_dns(&["push", &path_str(&context), "-t", &target, "-q"]);
    assert_clean_error(&output, 1, &[UNRESOLVABLE]);
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}, not under 1 s: {output}");
}

/// The same for `inspect`.
#[test]
fn inspect_of_an_unresolvable_host_fails_at_once() {
    let reference = format!("{UNRESOLVABLE}/ns/app:1");
    let (output, elapsed) = run_without_dns(&["inspect", &reference, "-q"]);
    assert_clean_error(&output, 1, &[UNRESOLVABLE]);
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}, not under 1 s: {output}");
}

// ---------------------------------------------------------------------------------------------------------
// 8. A registry that accepts connections and never answers.

/// A loopback listener that accepts every connection and holds it open without reading or writing; the
/// sockets are closed and the thread stopped on drop.
struct SilentServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind: {e}"));
        let port = listener.local_addr().unwrap_or_else(|e| panic!("no local address: {e}")).port();
        listener.set_nonblocking(true).unwrap_or_else(|e| panic!("cannot make the listener non-blocking: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SilentServer { port, stop, thread: Some(thread) }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Asserts a failure (non-zero, no panic) whose last stderr line is a `docker-idpb: ` error naming `host`.
#[track_caller]
fn assert_failed_naming(output: &Output, host: &str) {
    assert!(output.code.is_some_and(|c| c != 0), "expected a failure: {output}");
    assert!(!output.stderr.contains("panicked"), "a panic: {output}");
    let last = stderr_lines(output).last().copied().unwrap_or("");
    assert!(last.starts_with("docker-idpb: ") && last.contains(host), "an error naming {host}: {output}");
}

/// `--timeout 4s` bounds the whole `inspect` against a registry that never answers: it fails within
/// 4 + 2 s of wall time, not after one timeout per scheme or attempt.
#[test]
fn inspect_against_a_silent_registry_ends_within_the_timeout() {
    let server = SilentServer::start();
    let reference = format!("{}/ns/app:1", server.host());
    let mut cmd = idpb_command(["inspect", &reference, "--timeout", "4s", "-q"]);
    let (output, elapsed) = run_within(&mut cmd, Duration::from_secs(4 + 2));
    assert_failed_naming(&output, &server.host());
    assert!(elapsed <= Duration::from_secs(6), "took {elapsed:?}: {output}");
}

/// The same for `push`.
#[test]
fn push_against_a_silent_registry_ends_within_the_timeout() {
    let server = SilentServer::start();
    let tmp = TempDir::new("transport-silent-push");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "silent");
    let target = format!("{}/ns/app:1", server.host());
    let mut cmd = idpb_command(["push".to_string(), path_str(&context)]);
    cmd.args(["-t", &target, "--timeout", "4s", "-q"]);
    let (output, elapsed) = run_within(&mut cmd, Duration::from_secs(4 + 2));
    assert_failed_naming(&output, &server.host());
    assert!(elapsed <= Duration::from_secs(6), "took {elapsed:?}: {output}");
}

// ---------------------------------------------------------------------------------------------------------
// 9. Visible retries.

/// Whether `line` is `retrying in S.Ds (attempt N/TOTAL): REASON` with one decimal, 2 <= N <= TOTAL and a
/// reason.
fn is_retry_line(line: &str, total: u32) -> bool {
    let Some(rest) = line.strip_prefix("retrying in ") else { return false };
    let Some((seconds, rest)) = rest.split_once("s (attempt ") else { return false };
    let Some((whole, tenths)) = seconds.split_once('.') else { return false };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some((attempt, reason)) = rest.split_once("): ") else { return false };
    let Some((n, of)) = attempt.split_once('/') else { return false };
    let (Ok(n), Ok(of)) = (n.parse::<u32>(), of.parse::<u32>()) else { return false };
    digits(whole)
        && digits(tenths)
        && tenths.len() == 1
        && of == total
        && (2..=total).contains(&n)
        && !reason.trim().is_empty()
}

/// Against a port where nothing listens (connection refused), each retry is announced on stderr as
/// `retrying in 0.8s (attempt 2/4): REASON` before the final one-line error; `-q` silences the
/// announcements but not the error.
#[test]
fn retries_are_announced_on_stderr_unless_quiet() {
    let tmp = TempDir::new("transport-retries");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "retries");
    let target = format!("127.0.0.1:{}/ns/app:1", free_port());
    let args =
        [path_str(&context), "-t".into(), target, "--timeout".into(), "3s".into(), "--retries".into(), "3".into()];

    let mut quiet = idpb_command(["push".to_string()].into_iter().chain(args.iter().cloned()));
    let output = quiet.arg("-q").timeout(Duration::from_secs(60)).run();
    assert!(!output.stderr.contains("retrying in "), "-q: no retry lines: {output}");
    assert_clean_error(&output, 1, &[]);

    let mut visible = idpb_command(["push".to_string()].into_iter().chain(args.iter().cloned()));
    let output = visible.timeout(Duration::from_secs(60)).run();
    output.assert_code(1);
    assert!(!output.stderr.contains("panicked"), "a panic: {output}");
    let lines = stderr_lines(&output);
    let retries: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("retrying in ")).collect();
    assert!(!retries.is_empty(), "at least one `retrying in ` line: {output}");
    for line in &retries {
        assert!(is_retry_line(line, 4), "`retrying in 0.8s (attempt 2/4): REASON`, got {line:?}: {output}");
    }
    let errors = lines.iter().filter(|l| l.starts_with("docker-idpb: ")).count();
    assert_eq!(errors, 1, "one error line: {output}");
    assert!(lines.last().is_some_and(|l| l.starts_with("docker-idpb: ")), "the error comes last: {output}");
}
