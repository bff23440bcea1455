//! Registries that fight back: what the binary must never do, whatever a registry (or whoever answers in its
//! name) sends.
//!
//! Each test starts `hostile.py` ([`HostileServer`]) in one scenario on a random loopback port, gives the
//! binary credentials for it through a `config.json` (so a leak is observable: the secret is known), runs
//! one command and reads back the server's request log. The rules checked are the ones a registry client
//! owes its user: credentials go only to the origin they were given for and never in clear text once
//! HTTPS was used (redirects, downgrading `Location`s, token realms that only look like loopback); memory
//! stays bounded whatever a registry sends (a 15 MiB manifest, a catalog of 128 MiB); `--timeout` bounds
//! the wall time even against a server that trickles or never answers; an unusable `Location` fails at
//! once instead of being retried; retries are announced on stderr unless `-q`. Failures end with one
//! `docker-idpb: ` line and never print the password. Only loopback is ever contacted: the token realms
//! name `tokens.example`, but `HTTP_PROXY` routes that traffic to a recording proxy on loopback.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::*;

const USER: &str = "hostile-user";
const PASS: &str = "Hostile-Pa55word-4242";
const REPO_TAG: &str = "ns/app:1";
/// The ceiling for peak RSS against registries that send too much.
const MAX_RSS_KIB: u64 = 64 * 1024;
/// How long a run may take at most, so a regression fails instead of hanging the suite.
const RUN_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// The secret in every form it could leak in: the password and the `user:pass` Basic blob.
fn secrets() -> Vec<String> {
    vec![PASS.to_string(), base64(format!("{USER}:{PASS}").as_bytes())]
}

/// The binary with `args` and a `config.json` holding [`USER`]:[`PASS`] for `server`.
fn idpb_with_creds<S: AsRef<std::ffi::OsStr>>(
    server: &HostileServer,
    args: impl IntoIterator<Item = S>,
) -> IdpbCommand {
    let mut cmd = IdpbCommand::new();
    server.write_docker_config(&cmd.docker_config(), USER, PASS);
    cmd.args(args).timeout(RUN_LIMIT);
    cmd
}

/// A small build context in a temp dir (kept alive by the returned guard).
fn small_context() -> (TempDir, PathBuf) {
    let tmp = TempDir::new("hostile-ctx");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "hostile");
    (tmp, context)
}

/// Whether the password or the Basic blob is on stdout or stderr.
fn leaked(output: &Output) -> Result<(), String> {
    match secrets().into_iter().find(|s| output.stdout.contains(s) || output.stderr.contains(s)) {
        Some(secret) => Err(format!("{secret:?} leaked: {output}")),
        None => Ok(()),
    }
}

#[track_caller]
fn assert_no_leak(output: &Output) {
    if let Err(e) = leaked(output) {
        panic!("{e}");
    }
}

/// Whether a recorded request carried `Authorization`, or the secret anywhere (target, headers, body).
fn credentials_sent(requests: &[Recorded], whom: &str) -> Result<(), String> {
    for r in requests {
        if r.authorization().is_some() {
            return Err(format!("{whom} received Authorization: {r:?}"));
        }
        for secret in secrets() {
            if r.path.contains(&secret) || r.body.contains(&secret) || r.headers.values().any(|v| v.contains(&secret)) {
                return Err(format!("{whom} received the secret: {r:?}"));
            }
        }
    }
    Ok(())
}

#[track_caller]
fn assert_no_credentials(requests: &[Recorded], whom: &str) {
    if let Err(e) = credentials_sent(requests, whom) {
        panic!("{e}");
    }
}

/// A failure that ends with one `docker-idpb: ` line (progress notes may come before it): a non-zero exit
/// code, nothing on stdout, no panic. Returns the error line.
fn one_line_error(output: &Output) -> Result<String, String> {
    let errors: Vec<&str> = output.stderr.lines().filter(|l| l.starts_with("docker-idpb: ")).collect();
    let last = output.stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    let problem = if output.code.is_none_or(|c| c == 0) {
        "expected a non-zero exit code"
    } else if output.stderr.contains("panicked") {
        "a panic"
    } else if !output.stdout.trim().is_empty() {
        "expected nothing on stdout"
    } else if errors.len() != 1 {
        "expected one `docker-idpb: ` line"
    } else if last != errors[0] {
        "expected the error as the last line"
    } else {
        return Ok(last.to_string());
    };
    Err(format!("{problem}: {output}"))
}

#[track_caller]
fn assert_one_line_error(output: &Output) -> String {
    match one_line_error(output) {
        Ok(line) => line,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `cmd` (the binary's arguments) under GNU time; returns the output and the peak RSS in KiB. time
/// writes to a file of its own, so stderr stays the binary's.
fn run_measured(server: &HostileServer, args: &[&str]) -> (Output, u64) {
    let time = PathBuf::from("/usr/bin/time");
    assert!(time.is_file(), "/usr/bin/time is missing: install the `time` package (make deps)");
    let tmp = TempDir::new("hostile-time");
    let report = tmp.join("time.txt");
    let mut cmd = IdpbCommand::for_program(&time);
    server.write_docker_config(&cmd.docker_config(), USER, PASS);
    cmd.arg("-o").arg(&report).args(["-f", "%M"]).arg(bin()).args(args).timeout(RUN_LIMIT);
    let output = cmd.run();
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("no report from time ({e}): {output}"));
    // "Command exited with non-zero status 1" (or "terminated by signal") comes before the number.
    let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    let rss = last.trim().parse().unwrap_or_else(|e| panic!("time reported {text:?} ({e}): {output}"));
    (output, rss)
}

/// Runs `cmd` and returns its output and wall time.
fn run_timed(cmd: &mut IdpbCommand) -> (Output, Duration) {
    let started = Instant::now();
    let output = cmd.run();
    (output, started.elapsed())
}

/// `retrying in 0.8s (attempt 2/6): REASON` -> (2, 6, REASON); None for any other shape.
fn parse_retry_line(line: &str) -> Option<(u32, u32, &str)> {
    let rest = line.strip_prefix("retrying in ")?;
    let (delay, rest) = rest.split_once("s (attempt ")?;
    let (whole, tenth) = delay.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || tenth.len() != 1 || !digits(tenth) {
        return None;
    }
    let (counts, reason) = rest.split_once("): ")?;
    let (attempt, max) = counts.split_once('/')?;
    if !digits(attempt) || !digits(max) || reason.trim().is_empty() {
        return None;
    }
    Some((attempt.parse().ok()?, max.parse().ok()?, reason))
}

/// The parser the retry test relies on accepts exactly the promised shape (one decimal, non-empty reason).
#[test]
fn retry_line_parser() {
    assert_eq!(parse_retry_line("retrying in 0.8s (attempt 2/6): 503"), Some((2, 6, "503")));
    assert_eq!(parse_retry_line("retrying in 12.0s (attempt 3/11): x y"), Some((3, 11, "x y")));
    assert_eq!(parse_retry_line("retrying in 0.85s (attempt 2/6): 503"), None);
    assert_eq!(parse_retry_line("retrying in 1s (attempt 2/6): 503"), None);
    assert_eq!(parse_retry_line("retrying in 0.8s (attempt 2/6): "), None);
}

// ---------------------------------------------------------------------------------------------------------
// 1. Redirects to another origin (same host, another port) carry no credentials.

/// A manifest GET that the registry redirects (307) to another origin is followed without the
/// registry's Basic credentials, and the manifest served there is shown.
#[test]
fn manifest_redirect_to_another_origin_carries_no_credentials() {
    let other = HostileServer::start(Scenario::Registry);
    let options = HostileOptions { auth: HostileAuth::basic(USER, PASS), ..Default::default() };
    let registry = HostileServer::start_with(Scenario::RedirectManifests { to: other.port() }, &options);

    let output = idpb_with_creds(&registry, ["inspect", &registry.reference(REPO_TAG), "--plain-http"]).run();

    let asked = registry.matching("GET", "/v2/ns/app/manifests/1");
    assert!(asked.iter().any(|r| r.authorization().is_some()), "the registry got the credentials: {asked:?}");
    assert_no_credentials(&other.requests(), "the redirect target");
    assert_no_leak(&output);
    output.assert_success();
}

/// A TLS registry, verified against its CA, that redirects a manifest GET to `http://`: the redirect is
/// refused (what the registry says over TLS is never fetched in clear), one line naming the downgrade, and
/// the plain-HTTP server is never asked.
#[test]
fn verified_https_registry_redirecting_to_plain_http_is_refused() {
    let ca = TestCa::new();
    let other = HostileServer::start(Scenario::Registry);
    let options = HostileOptions { tls: Some(&ca), ..Default::default() };
    let registry = HostileServer::start_with(Scenario::RedirectManifests { to: other.port() }, &options);
    let ca_file = path_str(&ca.ca_crt);
    let output = IdpbCommand::new()
        .args(["inspect", &registry.reference(REPO_TAG), "--tls-verify", "true", "--ca-file", &ca_file])
        .run();
    output.assert_code(1);
    assert_one_line_error(&output);
    assert!(output.stderr.contains("from HTTPS to plain HTTP"), "{output}");
    assert_eq!(other.count("GET", "/v2/ns/app/manifests/"), 0, "the plain-HTTP server was not asked: {output}");
}

/// A blob HEAD that the registry redirects (307) to another origin during a push is followed without
/// the registry's Basic credentials.
#[test]
fn blob_head_redirect_to_another_origin_carries_no_credentials() {
    let other = HostileServer::start(Scenario::Registry);
    let options = HostileOptions { auth: HostileAuth::basic(USER, PASS), ..Default::default() };
    let registry = HostileServer::start_with(Scenario::RedirectBlobHeads { to: other.port() }, &options);
    let (_tmp, context) = small_context();

    let target = registry.reference(REPO_TAG);
    let output = idpb_with_creds(&registry, ["push", &path_str(&context), "-t", &target, "--plain-http"]).run();

    let heads = registry.matching("HEAD", "/blobs/sha256:");
    assert!(heads.iter().any(|r| r.authorization().is_some()), "the registry got the credentials: {heads:?}");
    assert_no_credentials(&other.requests(), "the redirect target");
    assert_no_leak(&output);
    pushed_digest(&output, &target);
}

// ---------------------------------------------------------------------------------------------------------
// 2. An HTTPS registry whose upload Location says http:// on the same host and port.

/// Pushes to a TLS registry (Basic auth) whose upload `Location`s downgrade to `http://` on its own port,
/// trusting its CA with `--tls-verify true --ca-file` when `verify`, else by the loopback default (HTTPS
/// without verification). Asserts the downgrade was offered (an upload opened over TLS), no plain-text
/// request carried credentials, the secret was never printed, and no panic.
fn push_with_downgrading_location(verify: bool) {
    let ca = TestCa::new();
    let options = HostileOptions { auth: HostileAuth::basic(USER, PASS), tls: Some(&ca) };
    let registry = HostileServer::start_with(Scenario::PlainHttpLocation, &options);
    let (_tmp, context) = small_context();
    let target = registry.reference(REPO_TAG);
    let ca_file = path_str(&ca.ca_crt);

    let mut cmd = idpb_with_creds(&registry, ["push", &path_str(&context), "-t", &target]);
    if verify {
        cmd.args(["--tls-verify", "true", "--ca-file", &ca_file]);
    }
    let output = cmd.run();

    let requests = registry.requests();
    let opened = requests.iter().any(|r| r.tls && r.method == "POST" && r.path.contains("/blobs/uploads/"));
    assert!(opened, "an upload was opened over TLS: {requests:#?}\n{output}");
    let plain: Vec<Recorded> = requests.into_iter().filter(|r| !r.tls).collect();
    assert_no_credentials(&plain, "a plain-HTTP request to the TLS registry");
    assert_no_leak(&output);
    assert!(!output.stderr.contains("panicked"), "a panic: {output}");
}

/// Verified HTTPS (`--tls-verify true --ca-file`): a `Location: http://same-host:same-port/...` from the
/// upload POST never gets the credentials in clear text.
#[test]
fn verified_https_registry_never_sends_credentials_to_a_plain_http_location() {
    push_with_downgrading_location(true);
}

/// The loopback default (HTTPS without verification, HTTP only as a fallback): once the registry answered
/// over TLS, a downgrading `Location` still gets no credentials in clear text.
#[test]
fn loopback_https_registry_never_sends_credentials_to_a_plain_http_location() {
    push_with_downgrading_location(false);
}

// ---------------------------------------------------------------------------------------------------------
// 3. Token realms that only look like loopback.

/// Bearer realms whose text contains `.localtest.me` or `127.0.0.1` but whose host is `tokens.example`
/// (`?` starts the query, `#` the fragment, `@` ends the userinfo) get no credentials: the proxy that
/// carries all non-loopback traffic sees neither an `Authorization` nor the password in a form body,
/// and the run fails with exit code 1, one error line and no secret printed.
#[test]
fn bearer_realms_that_only_look_like_loopback_get_no_credentials() {
    let realms = [
        "http://tokens.example?.localtest.me/token",
        "http://tokens.example#.localtest.me/token",
        "http://127.0.0.1:80@tokens.example/token",
    ];
    let mut problems = Vec::new();
    for realm in realms {
        let proxy = HostileServer::start(Scenario::Proxy);
        let options = HostileOptions { auth: HostileAuth::bearer(realm), ..Default::default() };
        let registry = HostileServer::start_with(Scenario::Registry, &options);
        let args = ["inspect", &registry.reference(REPO_TAG), "--plain-http", "--retries", "1"];
        let mut cmd = idpb_with_creds(&registry, args);
        cmd.env("HTTP_PROXY", format!("http://{}", proxy.host())).env("NO_PROXY", "127.0.0.1,localhost");
        let output = cmd.run();

        let challenged = registry.matching("GET", "/v2/");
        assert!(!challenged.is_empty(), "{realm}: the registry was asked: {output}");
        let outcome = credentials_sent(&proxy.requests(), "the proxy (tokens.example)")
            .and_then(|()| leaked(&output))
            .and_then(|()| if output.code == Some(1) { Ok(()) } else { Err(format!("expected exit code 1: {output}")) })
            .and_then(|()| one_line_error(&output).map(drop));
        if let Err(problem) = outcome {
            problems.push(format!("realm {realm}: {problem}"));
        }
    }
    assert!(problems.is_empty(), "{} of {} realms failed:\n{}", problems.len(), realms.len(), problems.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------------------
// 4-5. Registries that send too much.

/// A 15 MiB manifest (the spec's limit is 4 MiB) is refused without reading it into memory: peak RSS
/// stays under 64 MiB and the run fails with one line that names the size limit.
#[test]
fn oversized_manifest_is_refused_within_bounded_memory() {
    let registry = HostileServer::start(Scenario::BigManifest);
    let reference = registry.reference("ns/big:1");

    let (output, rss) = run_measured(&registry, &["inspect", &reference, "--plain-http", "-q"]);

    assert_eq!(registry.count("GET", "/v2/ns/big/manifests/1"), 1, "the manifest was asked for once: {output}");
    let line = assert_one_line_error(&output).to_ascii_lowercase();
    let named = line.contains("4 mib") || line.contains("too large") || line.contains("larger");
    let bounded = rss < MAX_RSS_KIB;
    assert!(
        named && bounded,
        "expected an error naming the size limit (named: {named}) and a peak RSS under {MAX_RSS_KIB} KiB (was \
         {rss} KiB): {output}"
    );
}

/// Lists 32 pages of about 4 MiB each (`catalog` or `tags`) under GNU time: peak RSS stays under 64 MiB.
/// Failing is allowed (with one error line); succeeding means the first name of the first page and the
/// last name of the last page are on stdout.
fn huge_list_within_bounded_memory(args: &[&str], path: &str, first: &str, last: &str) {
    let registry = HostileServer::start(Scenario::HugeLists);
    let mut args: Vec<String> = args.iter().map(|a| a.replace("HOST", &registry.host())).collect();
    args.extend(["--plain-http".to_string(), "-q".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let (output, rss) = run_measured(&registry, &args);

    assert!(registry.count("GET", path) >= 1, "the list was asked for: {output}");
    if output.success() {
        let lines: Vec<&str> = output.stdout.lines().collect();
        assert!(
            lines.contains(&first) && lines.contains(&last),
            "{first} and {last} on stdout ({} lines)",
            lines.len()
        );
    } else {
        assert_one_line_error(&output);
    }
    let summary = format!("exit {:?}, {} bytes of stdout, stderr: {}", output.code, output.stdout.len(), output.stderr);
    assert!(rss < MAX_RSS_KIB, "peak RSS {rss} KiB, over {MAX_RSS_KIB} KiB ({summary})");
}

/// A catalog of 32 linked pages of ~4 MiB (2.8 million names) is listed within 64 MiB of RSS.
#[test]
fn huge_catalog_is_listed_within_bounded_memory() {
    huge_list_within_bounded_memory(
        &["catalog", "HOST"],
        "/v2/_catalog",
        "p00/platform-team/backend-service-name-000000",
        "p31/platform-team/backend-service-name-086999",
    );
}

/// A tag list of 32 linked pages of ~4 MiB is listed within 64 MiB of RSS.
#[test]
fn huge_tag_list_is_listed_within_bounded_memory() {
    huge_list_within_bounded_memory(
        &["tags", "HOST/ns/app"],
        "/v2/ns/app/tags/list",
        "t00-release-candidate-for-linux-amd64-000000",
        "t31-release-candidate-for-linux-amd64-086999",
    );
}

// ---------------------------------------------------------------------------------------------------------
// 6. --timeout bounds the wall time.

/// The `--timeout` under test and the slack allowed on top of it.
const TIMEOUT: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_secs(2);

/// `inspect --timeout 5s` against `scenario` (on the loopback default: HTTPS first, then HTTP) fails
/// within 5 + 2 seconds of wall time, with one error line. `asked` is the GET that must have reached the
/// server first (`None` when a client may spend its whole budget on the HTTPS attempt).
fn inspect_gives_up_in_time(scenario: Scenario, asked: Option<&str>) {
    let registry = HostileServer::start(scenario);
    let mut cmd = idpb_with_creds(&registry, ["inspect", &registry.reference(REPO_TAG), "--timeout", "5s"]);

    let (output, elapsed) = run_timed(&mut cmd);

    if let Some(asked) = asked {
        assert!(registry.count("GET", asked) >= 1, "GET {asked} reached the server: {output}");
    }
    assert_one_line_error(&output);
    assert!(elapsed <= TIMEOUT + SLACK, "gave up after {elapsed:?}, more than {:?}: {output}", TIMEOUT + SLACK);
}

/// A ping answered with headers and then one body byte per second is abandoned within `--timeout`.
#[test]
fn trickling_ping_is_abandoned_within_the_timeout() {
    inspect_gives_up_in_time(Scenario::TricklePing, Some("/v2/"));
}

/// A registry that accepts connections (TLS or not) and never answers is abandoned within `--timeout`,
/// HTTPS attempt and HTTP fallback together.
#[test]
fn silent_registry_is_abandoned_within_the_timeout() {
    inspect_gives_up_in_time(Scenario::Silent, None);
}

/// A manifest answered one byte per second (after a fine ping) is abandoned within `--timeout`.
#[test]
fn trickling_manifest_is_abandoned_within_the_timeout() {
    inspect_gives_up_in_time(Scenario::TrickleManifest, Some("/v2/ns/app/manifests/1"));
}

// ---------------------------------------------------------------------------------------------------------
// 7. A Location that cannot be used is not retried.

/// How long a push may take to fail on an unusable `Location`: no backoff fits in it.
const FAIL_FAST: Duration = Duration::from_millis(2500);

/// An upload POST answered 202 with an unparsable `Location` (`http://[::1`, port 99999) fails the push
/// at once: one upload POST, no `retrying` line, one error line that reports no attempts, all within 2.5 s
/// (less than the default backoff of one retried request).
#[test]
fn unusable_upload_location_fails_fast_without_retrying() {
    let mut problems = Vec::new();
    for location in ["http://[::1", "http://127.0.0.1:99999/x"] {
        let registry = HostileServer::start(Scenario::BadLocation(location.to_string()));
        let (_tmp, context) = small_context();
        let target = registry.reference(REPO_TAG);
        let mut cmd = idpb_with_creds(&registry, ["push", &path_str(&context), "-t", &target, "--plain-http"]);

        let (output, elapsed) = run_timed(&mut cmd);

        let posts = registry.count("POST", "/blobs/uploads/");
        let retries: Vec<&str> = output.stderr.lines().filter(|l| l.starts_with("retrying")).collect();
        let outcome = if posts != 1 {
            Err(format!("expected exactly one upload POST, got {posts}: {:#?}\n{output}", registry.requests()))
        } else if !retries.is_empty() {
            Err(format!("expected no retry: {output}"))
        } else {
            one_line_error(&output).and_then(|line| {
                if line.contains("gave up after") {
                    Err(format!("expected no retry: {output}"))
                } else if elapsed >= FAIL_FAST {
                    Err(format!("failed after {elapsed:?}, not at once: {output}"))
                } else {
                    Ok(())
                }
            })
        };
        if let Err(problem) = outcome {
            problems.push(format!("Location {location}: {problem}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------------------
// 8. Retries are visible.

/// A ping answered 503 twice, then 200: without `-q` each retry is announced on stderr as
/// `retrying in N.Ns (attempt K/M): REASON` (attempt 2 at least); with `-q` nothing starts with `retrying`.
/// Both runs succeed.
#[test]
fn retries_are_announced_unless_quiet() {
    let registry = HostileServer::start(Scenario::FlakyPing { failures: 2 });
    let output = idpb_with_creds(&registry, ["inspect", &registry.reference(REPO_TAG), "--plain-http"]).run();
    output.assert_success();
    assert!(registry.count("GET", "/v2/") >= 3, "two 503s then 200: {:#?}", registry.requests());
    let retries: Vec<&str> = output.stderr.lines().filter(|l| l.starts_with("retrying")).collect();
    for line in &retries {
        assert!(parse_retry_line(line).is_some(), "`retrying in N.Ns (attempt K/M): REASON`: {line:?}\n{output}");
    }
    let second = retries.iter().filter_map(|l| parse_retry_line(l)).any(|(attempt, max, _)| attempt == 2 && max >= 2);
    assert!(second, "a `retrying in N.Ns (attempt 2/M): REASON` line: {output}");

    let quiet_registry = HostileServer::start(Scenario::FlakyPing { failures: 2 });
    let args = ["inspect", &quiet_registry.reference(REPO_TAG), "--plain-http", "-q"];
    let quiet = idpb_with_creds(&quiet_registry, args).run();
    quiet.assert_success();
    assert!(quiet_registry.count("GET", "/v2/") >= 3, "two 503s then 200: {:#?}", quiet_registry.requests());
    assert!(!quiet.stderr.lines().any(|l| l.starts_with("retrying")), "-q hides retries: {quiet}");
}
