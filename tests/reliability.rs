//! A push that survives the real world (issue 4): retries, resumable chunks, 413 proxies, Gitea's
//! conventions, bounded failure and clean cancellation, checked against the real registry.
//!
//! Most tests put the fault proxy ([`FaultProxy`]) between the binary and a plain-HTTP reference registry
//! and push a few MiB of seeded random data in 256 KiB chunks, so a layer takes a dozen PATCHes and a fault
//! can land in the middle of it. Success means three things: the push exits 0, its manifest digest equals
//! that of a fault-free push of the same context (the layer is deterministic, so a resent or restarted
//! blob must not change a byte), and skopeo + umoci pull back a tree identical to the context. Every fault
//! test also checks that the fault really happened, so a rule that stops matching fails loudly instead of
//! passing vacuously. Failures that must be quick (always 503, a 403, a 400) are timed and their one-line
//! message is checked for the operation, the status, the registry's code and the attempt count. Cancel
//! tests spawn the binary, send SIGINT through `kill` and watch the proxy's log for the session's DELETE.

mod support;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const REPO_TAG: &str = "ns/x:v1";
const CHUNK: &str = "256KiB";
/// About a dozen 256 KiB chunks: random data does not compress.
const SMALL_CONTEXT: usize = 3 * 1024 * 1024;
const MIB: usize = 1024 * 1024;
const UPLOADS: &str = "/blobs/uploads/";
const MANIFESTS: &str = "/manifests/";

// ---------------------------------------------------------------------------------------------------------
// Fixtures

/// Writes `size` bytes of seeded pseudo-random data as files of at most 1 MiB under a few directories.
fn random_context(dir: &Path, seed: u64, size: usize) {
    let data = pseudo_random_bytes(seed, size);
    for (i, part) in data.chunks(MIB).enumerate() {
        write_file(&dir.join(format!("data/set-{}/part-{i:03}.bin", i % 3)), part);
    }
    write_file(&dir.join("README.txt"), format!("seed {seed}, {size} bytes\n").as_bytes());
}

/// A finished push and how long it took.
struct Pushed {
    output: Output,
    elapsed: Duration,
}

/// `docker-idpb push CONTEXT -t HOST/TAG --plain-http --no-cache -q EXTRA...` in `cmd`'s environment.
fn push_with(cmd: &mut IdpbCommand, host: &str, context: &Path, tag: &str, extra: &[&str]) -> Pushed {
    cmd.arg("push")
        .arg(context)
        .arg("-t")
        .arg(format!("{host}/{tag}"))
        .args(["--plain-http", "--no-cache", "-q"])
        .args(extra);
    let started = Instant::now();
    let output = cmd.run();
    Pushed { output, elapsed: started.elapsed() }
}

fn push(host: &str, context: &Path, extra: &[&str]) -> Pushed {
    push_with(&mut IdpbCommand::new(), host, context, REPO_TAG, extra)
}

/// The digest printed by a successful text-mode push (`HOST/REPO:TAG@sha256:...`).
#[track_caller]
fn printed_digest(output: &Output) -> String {
    let digest = output.stdout.lines().last().and_then(|l| l.rsplit_once('@')).map(|(_, d)| d.trim().to_string());
    match digest {
        Some(d) if d.starts_with("sha256:") && d.len() == 71 => d,
        _ => panic!("no digest in the push output: {output}"),
    }
}

/// skopeo copies `reference` out of `registry`, umoci unpacks it, and the tree must equal `context`.
#[track_caller]
fn assert_pulls_back(registry: &Registry, reference: &str, context: &Path) {
    assert_pulls_as(registry, reference, context, &[], &TempDir::new("reliability-pull"));
}

/// A registry, a random context of [`SMALL_CONTEXT`] bytes in a temp dir, and the digest of a fault-free push
/// of it (straight to the registry, into `ns/baseline`).
struct Setup {
    registry: Registry,
    context: TempDir,
    baseline: String,
}

impl Setup {
    fn new(seed: u64) -> Setup {
        let registry = Registry::start(RegistryMode::Http);
        let context = TempDir::new("reliability-context");
        random_context(context.path(), seed, SMALL_CONTEXT);
        let mut cmd = IdpbCommand::new();
        let clean = push_with(&mut cmd, &registry.host(), context.path(), "ns/baseline:v1", &["--chunk-size", CHUNK]);
        clean.output.assert_success();
        let baseline = printed_digest(&clean.output);
        Setup { registry, context, baseline }
    }

    /// Pushes `ns/x:v1` through a proxy with `options` and checks the push: success, the fault-free digest,
    /// at least `min_faults` faults injected, and a tree identical to the context after skopeo + umoci.
    fn assert_survives(&self, options: ProxyOptions, extra: &[&str], min_faults: usize) -> FaultProxy {
        let proxy = FaultProxy::start(self.registry.port(), options);
        let mut args = vec!["--chunk-size", CHUNK];
        args.extend_from_slice(extra);
        let pushed = push(&proxy.host(), self.context.path(), &args);
        let log = proxy.log();
        assert!(pushed.output.success(), "the push did not survive: {}\nproxy log:\n{log}", pushed.output);
        let faults = proxy.faults();
        assert!(faults.len() >= min_faults, "expected at least {min_faults} injected faults; proxy log:\n{log}");
        assert_eq!(printed_digest(&pushed.output), self.baseline, "digest differs from a fault-free push:\n{log}");
        assert_pulls_back(&self.registry, REPO_TAG, self.context.path());
        eprintln!(
            "survived {} fault(s) in {} requests, {:.1?}: {:?}",
            faults.len(),
            proxy.requests().len(),
            pushed.elapsed,
            faults
                .iter()
                .map(|f| format!("{} {}", f.method, f.fault.as_deref().unwrap_or_default()))
                .collect::<Vec<_>>()
        );
        proxy
    }

    /// [`Setup::assert_survives`] with one rule that must fire exactly once.
    fn assert_survives_rule(&self, rule: Rule) -> FaultProxy {
        let proxy = self.assert_survives(ProxyOptions::default().rule(rule), &[], 1);
        assert_eq!(proxy.faults().len(), 1, "the rule fired more than once:\n{}", proxy.log());
        proxy
    }
}

/// A fresh [`Setup`] from `seed` whose push survives `rule`, which fires exactly once; the proxy, to check
/// how it recovered.
fn survives(seed: u64, rule: Rule) -> FaultProxy {
    Setup::new(seed).assert_survives_rule(rule)
}

/// A registry behind a fault proxy with `rule`, and a random context of `size` bytes from `seed`.
fn rigged(seed: u64, size: usize, rule: Rule) -> (Registry, TempDir, FaultProxy) {
    let registry = Registry::start(RegistryMode::Http);
    let context = TempDir::new("reliability-context");
    random_context(context.path(), seed, size);
    let proxy = FaultProxy::start(registry.port(), ProxyOptions::default().rule(rule));
    (registry, context, proxy)
}

fn unavailable() -> Fault {
    Fault::error(503, "UNAVAILABLE", "service unavailable (injected)")
}

/// Upload sessions opened: one per streamed blob (layer, config) without restarts.
fn sessions(proxy: &FaultProxy) -> usize {
    proxy.matching("POST", UPLOADS).iter().filter(|r| r.status == Some(202)).count()
}

// ---------------------------------------------------------------------------------------------------------
// The proxy itself: a fault test that passes only because the proxy did nothing would be worthless.

#[test]
fn proxy_counts_rules_and_keeps_registry_locations_pointing_at_itself() {
    let registry = Registry::start(RegistryMode::Http);
    let options = ProxyOptions::default()
        .rule(Rule::nth("GET", "/v2/", 2, Fault::status(503)))
        .rule(Rule::nth("HEAD", "/blobs/", 1, Fault::Reset { after: 0 }))
        .rule(Rule::nth("PATCH", UPLOADS, 1, Fault::DropResponse));
    let proxy = FaultProxy::start(registry.port(), options);
    let statuses: Vec<u16> = (0..3).map(|_| http_get(&proxy.url("/v2/")).status).collect();
    assert_eq!(statuses, [200, 503, 200], "only the 2nd GET /v2/ fails:\n{}", proxy.log());

    let digest = format!("sha256:{}", "0".repeat(64));
    let head = try_fetch(Request::new("HEAD", &proxy.url(&format!("/v2/ns/x/blobs/{digest}"))));
    assert!(head.is_err(), "a reset gives no answer: {head:?}");

    let started = http_request("POST", &proxy.url("/v2/ns/x/blobs/uploads/"), &[], Some(b""));
    assert_eq!(started.status, 202, "{}", started.text());
    let location = started.header("location").unwrap_or_default().to_string();
    assert!(
        location.starts_with(&proxy.url("/v2/ns/x/blobs/uploads/")),
        "the registry builds Location from the forwarded Host, so it names the proxy: {location}"
    );
    let headers = [("Content-Type", "application/octet-stream"), ("Content-Range", "0-3")];
    let patched = try_fetch(Request::new("PATCH", &location).headers(&headers).body(Some(b"abcd")));
    assert!(patched.is_err(), "a dropped answer is no answer: {patched:?}");
    // The registry stored the chunk (see the record below), so the `_state` in the client's last Location no
    // longer matches: the reference registry kills the session, as test-fixtures.md describes.
    let stale = http_get(&location);
    assert_eq!(stale.status, 404, "{}", stale.text());
    assert!(stale.text().contains("BLOB_UPLOAD_INVALID"), "{}", stale.text());

    let records = proxy.requests();
    let faults: Vec<_> = records.iter().filter_map(|r| r.fault.clone()).collect();
    assert_eq!(faults, ["503", "reset@0", "drop response"], "{}", proxy.log());
    let dropped = records.iter().find(|r| r.method == "PATCH").map(|r| (r.upstream_status, r.status));
    assert_eq!(dropped, Some((Some(202), None)), "{}", proxy.log());
}

#[test]
fn gitea_mode_enforces_its_conventions() {
    let registry = Registry::start(RegistryMode::Http);
    let proxy = FaultProxy::start(registry.port(), ProxyOptions::default().gitea());
    let started = http_request("POST", &proxy.url("/v2/ns/x/blobs/uploads/"), &[], Some(b""));
    assert_eq!(started.status, 202);
    let location = started.header("location").unwrap_or_default().to_string();
    assert!(location.starts_with("/v2/ns/x/blobs/uploads/"), "Gitea's Locations are relative: {location}");

    let patch = |location: &str, range: Option<&str>, body: &[u8]| {
        let mut headers = vec![("Content-Type", "application/octet-stream")];
        headers.extend(range.map(|r| ("Content-Range", r)));
        http_request("PATCH", &proxy.url(location), &headers, Some(body))
    };
    assert_eq!(patch(&location, Some("bytes=0-3"), b"abcd").status, 400, "bytes= prefix");
    let first = patch(&location, None, b"abcd");
    assert_eq!(first.status, 202, "a stream write is allowed as the first write: {}", first.text());
    let location = first.header("location").unwrap_or_default().to_string();
    let stream = patch(&location, None, b"efgh");
    assert_eq!(stream.status, 400);
    assert!(stream.text().contains("Stream uploads after first write are not allowed"), "{}", stream.text());
    assert_eq!(patch(&location, Some("2-5"), b"efgh").status, 416, "START must equal the bytes received");
    let second = patch(&location, Some("4-7"), b"efgh");
    assert_eq!(second.status, 202, "{}", second.text());
    let location = second.header("location").unwrap_or_default().to_string();
    let status = http_get(&proxy.url(&location));
    assert_eq!((status.status, status.header("range")), (204, Some("0-7")));
    assert_eq!(proxy.gitea_rejections().len(), 3, "{}", proxy.log());
}

// ---------------------------------------------------------------------------------------------------------
// Each fault kind on each step of a push: POST (open a session), PATCH (a chunk), PUT ?digest= (finish a
// blob) and the manifest PUT. The first POST and the first finishing PUT are the layer's.

#[test]
fn ping_503_is_retried() {
    // The first request of every push is `GET /v2/`; a 503 there is as transient as anywhere else.
    survives(15, Rule::nth("GET", "/v2/", 1, unavailable()));
}

#[test]
fn post_503_is_retried_after_retry_after() {
    let fault = unavailable().with_header("Retry-After", "1");
    let proxy = survives(1, Rule::nth("POST", UPLOADS, 1, fault));
    let posts = proxy.matching("POST", UPLOADS);
    let gap = posts[1].at.saturating_sub(posts[0].at);
    assert!(gap >= Duration::from_millis(900), "Retry-After: 1 was not honoured (retried after {gap:?})");
}

#[test]
fn post_reset_is_retried() {
    survives(2, Rule::nth("POST", UPLOADS, 1, Fault::Reset { after: 0 }));
}

#[test]
fn post_dropped_answer_is_retried() {
    survives(3, Rule::nth("POST", UPLOADS, 1, Fault::DropResponse));
}

#[test]
fn patch_503_resumes_from_the_registry_offset() {
    let proxy = survives(4, Rule::nth("PATCH", UPLOADS, 2, unavailable()));
    assert_eq!(sessions(&proxy), 2, "a refused chunk is resent in the same session:\n{}", proxy.log());
}

#[test]
fn patch_503_four_times_in_a_row_is_still_retried() {
    // Within the default 6 attempts; the status checks (GET) between the tries are not refused.
    let rule = Rule::nth("PATCH", UPLOADS, 2, unavailable()).times(4);
    let proxy = Setup::new(16).assert_survives(ProxyOptions::default().rule(rule), &[], 4);
    assert_eq!(proxy.faults().len(), 4, "{}", proxy.log());
    assert_eq!(sessions(&proxy), 2, "the chunk is resent in the same session:\n{}", proxy.log());
}

#[test]
fn patch_reset_mid_body_resumes_from_the_registry_offset() {
    let proxy = survives(5, Rule::nth("PATCH", UPLOADS, 2, Fault::Reset { after: 100_000 }));
    assert_eq!(sessions(&proxy), 2, "a chunk the registry never saw is resent in the same session:\n{}", proxy.log());
    assert!(proxy.count("GET", UPLOADS) >= 1, "the client asks the session where it stands:\n{}", proxy.log());
}

#[test]
fn patch_dropped_answer_after_the_registry_stored_it_restarts_the_blob() {
    // The reference registry's session dies with a lost acknowledgement (its `_state` no longer matches):
    // the only way on is a new session and the layer streamed again, to the same digest.
    let proxy = survives(6, Rule::nth("PATCH", UPLOADS, 2, Fault::DropResponse));
    assert_eq!(sessions(&proxy), 3, "the layer's upload is restarted once:\n{}", proxy.log());
}

#[test]
fn patch_truncated_on_its_way_to_the_registry_recovers() {
    survives(8, Rule::nth("PATCH", UPLOADS, 2, Fault::Truncate { after: 100_000 }));
}

#[test]
fn blob_finish_503_is_retried() {
    survives(9, Rule::nth("PUT", UPLOADS, 1, unavailable()));
}

#[test]
fn blob_finish_reset_is_retried() {
    survives(10, Rule::nth("PUT", UPLOADS, 1, Fault::Reset { after: 0 }));
}

#[test]
fn blob_finish_dropped_answer_after_the_commit_is_confirmed() {
    survives(11, Rule::nth("PUT", UPLOADS, 1, Fault::DropResponse));
}

#[test]
fn manifest_put_503_is_retried() {
    survives(12, Rule::nth("PUT", MANIFESTS, 1, unavailable()));
}

#[test]
fn manifest_put_reset_mid_body_is_retried() {
    survives(13, Rule::nth("PUT", MANIFESTS, 1, Fault::Reset { after: 100 }));
}

#[test]
fn manifest_put_dropped_answer_after_tagging_is_retried() {
    survives(14, Rule::nth("PUT", MANIFESTS, 1, Fault::DropResponse));
}

// ---------------------------------------------------------------------------------------------------------
// Random faults: 10% of all requests get a 503, a reset at a random point of the body or a dropped answer.

fn random_faults_survived(seed: u64) {
    Setup::new(100 + seed).assert_survives(ProxyOptions::default().random(10, seed), &[], 1);
}

#[test]
fn random_faults_seed_1() {
    random_faults_survived(1);
}

#[test]
fn random_faults_seed_2() {
    random_faults_survived(2);
}

#[test]
fn random_faults_seed_3() {
    random_faults_survived(3);
}

// ---------------------------------------------------------------------------------------------------------
// Proxies and registries with conventions of their own.

#[test]
fn nginx_with_a_1m_body_limit_takes_a_20mb_push_at_the_default_chunk_size() {
    let registry = Registry::start(RegistryMode::Http);
    let nginx = Nginx::start(registry.port());
    let context = TempDir::new("reliability-context");
    random_context(context.path(), 20, 20 * MIB);
    let pushed = push(&nginx.host(), context.path(), &[]);
    let log = || format!("{:#?}\nnginx error log:\n{}", nginx.requests(), nginx.error_log());
    assert!(pushed.output.success(), "push through nginx failed: {}\n{}", pushed.output, log());
    printed_digest(&pushed.output);
    assert_pulls_back(&registry, REPO_TAG, context.path());

    let patches: Vec<_> = nginx.requests().into_iter().filter(|r| r.method == "PATCH").collect();
    let refused = patches.iter().filter(|r| r.status == 413).count();
    assert!(refused >= 1, "the default chunk is over 1 MiB, so nginx must have refused one: {patches:#?}");
    assert!(refused <= 3, "8 -> 4 -> 2 -> 1 MiB takes three 413s, then the size is remembered: {patches:#?}");
    let too_big = patches.iter().filter(|r| r.status == 202 && r.request_length > (MIB + 4096) as u64).count();
    assert_eq!(too_big, 0, "accepted chunks fit the limit: {patches:#?}");
    eprintln!("20 MiB through nginx in {:.1?}, {} PATCHes, {refused} refused", pushed.elapsed, patches.len());
}

#[test]
fn gitea_conventions_push_succeeds() {
    let setup = Setup::new(21);
    let (user, pass) = ("giteaadmin", "p@ss:w0rd with spaces");
    let proxy = FaultProxy::start(setup.registry.port(), ProxyOptions::default().gitea_with_token(user, pass));
    let mut cmd = IdpbCommand::new();
    let config =
        serde_json::json!({ "auths": { proxy.host(): { "auth": base64(format!("{user}:{pass}").as_bytes()) } } });
    fs::write(cmd.docker_config().join("config.json"), config.to_string())
        .unwrap_or_else(|e| panic!("cannot write config.json: {e}"));
    let pushed = push_with(&mut cmd, &proxy.host(), setup.context.path(), REPO_TAG, &["--chunk-size", CHUNK]);
    let log = proxy.log();
    assert!(pushed.output.success(), "push with Gitea's conventions failed: {}\nproxy log:\n{log}", pushed.output);
    assert_eq!(printed_digest(&pushed.output), setup.baseline, "{log}");
    assert!(proxy.count("GET", "/v2/token") >= 1, "the token came from Gitea's endpoint:\n{log}");
    assert!(proxy.gitea_rejections().is_empty(), "requests Gitea would refuse:\n{log}");
    assert!(proxy.count("PATCH", UPLOADS) >= 10, "a chunked upload:\n{log}");
    assert_pulls_back(&setup.registry, REPO_TAG, setup.context.path());
}

// ---------------------------------------------------------------------------------------------------------
// Failing cleanly: within the bound, at once for what retrying cannot fix, with one line that says it all.

#[track_caller]
fn assert_one_line_error(output: &Output, parts: &[&str], log: &str) {
    assert_eq!(output.code, Some(1), "expected exit code 1: {output}\nproxy log:\n{log}");
    let stderr = output.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "one line on stderr with -q: {output}");
    for part in parts {
        assert!(stderr.contains(part), "the error should mention {part:?}: {stderr}\nproxy log:\n{log}");
    }
}

#[test]
fn registry_always_503_fails_within_the_bound_naming_operation_status_and_attempts() {
    let (_registry, context, proxy) = rigged(30, MIB, Rule::every("*", "", unavailable()));
    let pushed = push(&proxy.host(), context.path(), &["--retries", "2", "--timeout", "5s"]);
    let log = proxy.log();
    assert!(pushed.elapsed < Duration::from_secs(30), "gave up after {:?}:\n{log}", pushed.elapsed);
    // Every request fails, so the first one (the /v2/ ping) is the one that gives up, after 1 + 2 tries.
    assert_one_line_error(&pushed.output, &["/v2/", "503", "UNAVAILABLE", "3 attempts"], &log);
    assert_eq!(proxy.requests().len(), 3, "one try and two retries:\n{log}");
    eprintln!("always 503: gave up in {:.1?}: {}", pushed.elapsed, pushed.output.stderr.trim());
}

#[test]
fn post_always_503_fails_within_the_bound_naming_operation_status_and_attempts() {
    let (_registry, context, proxy) = rigged(31, MIB, Rule::every("POST", UPLOADS, unavailable()));
    let pushed = push(&proxy.host(), context.path(), &["--retries", "2", "--timeout", "5s"]);
    let log = proxy.log();
    assert!(pushed.elapsed < Duration::from_secs(30), "gave up after {:?}:\n{log}", pushed.elapsed);
    assert_one_line_error(&pushed.output, &["starting an upload", "POST", "503", "UNAVAILABLE", "3 attempts"], &log);
    assert_eq!(proxy.count("POST", UPLOADS), 3, "one try and two retries:\n{log}");
    assert_eq!(proxy.count("PUT", MANIFESTS), 0, "{log}");
    eprintln!("POST always 503: gave up in {:.1?}: {}", pushed.elapsed, pushed.output.stderr.trim());
}

#[test]
fn retry_after_longer_than_the_timeout_does_not_stretch_it() {
    let busy = unavailable().with_header("Retry-After", "60");
    let (_registry, context, proxy) = rigged(34, MIB, Rule::every("POST", UPLOADS, busy));
    let pushed = push(&proxy.host(), context.path(), &["--retries", "2", "--timeout", "5s"]);
    let log = proxy.log();
    assert_one_line_error(&pushed.output, &["starting an upload", "503"], &log);
    assert!(pushed.elapsed < Duration::from_secs(15), "--timeout 5s, gave up after {:?}:\n{log}", pushed.elapsed);
}

#[test]
fn registry_that_never_answers_fails_within_the_timeout_bound() {
    // Accepts every chunk and never answers: `--timeout` must bound the wait, not only the retries.
    let hang = Rule::every("PATCH", UPLOADS, Fault::Delay(Duration::from_secs(120)));
    let (_registry, context, proxy) = rigged(35, MIB, hang);
    let mut cmd = IdpbCommand::new();
    // Killed (and the test failed by `run`) if still waiting after 30 s.
    cmd.timeout(Duration::from_secs(30));
    let pushed = push_with(&mut cmd, &proxy.host(), context.path(), REPO_TAG, &["--retries", "1", "--timeout", "5s"]);
    let log = proxy.log();
    assert_one_line_error(&pushed.output, &["uploading a chunk"], &log);
    assert!(pushed.elapsed < Duration::from_secs(20), "--timeout 5s, gave up after {:?}:\n{log}", pushed.elapsed);
}

#[test]
fn forbidden_post_fails_at_once_after_one_attempt() {
    let denied = Fault::error(403, "DENIED", "requested access to the resource is denied");
    let (_registry, context, proxy) = rigged(32, MIB, Rule::every("POST", UPLOADS, denied));
    let pushed = push(&proxy.host(), context.path(), &["--retries", "5"]);
    let log = proxy.log();
    assert_one_line_error(&pushed.output, &["starting an upload", "403", "DENIED"], &log);
    assert_eq!(proxy.count("POST", UPLOADS), 1, "a 403 is not retried:\n{log}");
    assert!(pushed.elapsed < Duration::from_secs(10), "took {:?}", pushed.elapsed);
}

#[test]
fn bad_request_on_the_manifest_put_fails_at_once_after_one_attempt() {
    let invalid = Fault::error(400, "MANIFEST_INVALID", "manifest invalid");
    let (registry, context, proxy) = rigged(33, MIB, Rule::every("PUT", MANIFESTS, invalid));
    let pushed = push(&proxy.host(), context.path(), &["--retries", "5"]);
    let log = proxy.log();
    assert_one_line_error(&pushed.output, &["pushing the manifest", "400", "MANIFEST_INVALID"], &log);
    assert_eq!(proxy.count("PUT", MANIFESTS), 1, "a 400 is not retried:\n{log}");
    assert!(tag_list(&registry, "ns/x").is_empty(), "no tag after a refused manifest");
    assert!(pushed.elapsed < Duration::from_secs(10), "took {:?}", pushed.elapsed);
}

// ---------------------------------------------------------------------------------------------------------
// Cancel: SIGINT stops the push, deletes the open session, stores no manifest and exits 130.

/// A push running in the background; killed on drop if still running.
struct Running {
    child: Child,
    started: Instant,
    stderr: PathBuf,
    _cmd: IdpbCommand,
    _dir: TempDir,
}

impl Running {
    fn spawn(host: &str, context: &Path, extra: &[&str]) -> Running {
        let dir = TempDir::new("reliability-spawn");
        let stderr = dir.join("stderr");
        let file = File::create(&stderr).unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr.display()));
        let mut cmd = IdpbCommand::new();
        cmd.arg("push").arg(context).arg("-t").arg(format!("{host}/{REPO_TAG}"));
        cmd.args(["--plain-http", "--no-cache", "-q", "--chunk-size", CHUNK]).args(extra);
        let child = cmd
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-idpb: {e}"));
        Running { child, started: Instant::now(), stderr, _cmd: cmd, _dir: dir }
    }

    /// `kill -SIGNAL PID`, e.g. `INT` or `TERM`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.as_ref().is_ok_and(|s| s.success()), "kill -{signal} {} failed: {status:?}", self.child.id());
    }

    fn sigint(&self) {
        self.signal("INT");
    }

    /// The exit status, or `None` (after killing it) when it outlives `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return None;
                }
            }
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A push whose second PATCH the proxy holds for 10 s, caught in that request (with the registry and
/// context it needs kept alive).
fn hung_push(seed: u64) -> (Registry, TempDir, FaultProxy, Running) {
    let hang = Rule::nth("PATCH", UPLOADS, 2, Fault::Delay(Duration::from_secs(10)));
    let (registry, context, proxy) = rigged(seed, SMALL_CONTEXT, hang);
    let push = Running::spawn(&proxy.host(), context.path(), &[]);
    assert!(proxy.wait_for("PATCH", UPLOADS, 2, Duration::from_secs(60)), "no upload started:\n{}", proxy.log());
    thread::sleep(Duration::from_millis(200));
    (registry, context, proxy, push)
}

/// Sends `signal` in the middle of a slowed-down 50 MiB upload and checks the clean cancel.
fn cancel_mid_upload(signal: &str, seed: u64) {
    let slow = Rule::every("PATCH", UPLOADS, Fault::Delay(Duration::from_millis(250)));
    let (registry, context, proxy) = rigged(seed, 50 * MIB, slow);
    let mut push = Running::spawn(&proxy.host(), context.path(), &[]);
    assert!(proxy.wait_for("PATCH", UPLOADS, 3, Duration::from_secs(60)), "no upload started:\n{}", proxy.log());

    push.signal(signal);
    let signalled = Instant::now();
    let status = push.wait(Duration::from_secs(15));
    let took = signalled.elapsed();
    let log = proxy.log();
    assert_eq!(status.and_then(|s| s.code()), Some(130), "exit after SIG{signal}; stderr: {}\n{log}", push.stderr());
    assert!(took < Duration::from_secs(3), "took {took:?} to stop after SIG{signal}:\n{log}");
    assert!(push.stderr().contains("cancel"), "stderr: {}", push.stderr());

    let patched = proxy.matching("PATCH", UPLOADS);
    let session = patched.last().map(|r| r.path.split('?').next().unwrap_or_default().to_string());
    let session = session.unwrap_or_else(|| panic!("no PATCH recorded:\n{log}"));
    let deleted = proxy.matching("DELETE", &session);
    assert_eq!(deleted.len(), 1, "the open session {session} is deleted:\n{log}");
    // 404 when a PATCH abandoned by the cancel moved the session past the Location the DELETE names: the
    // reference registry then cancels the upload as it answers. The storage says whether a session is left.
    assert!(matches!(deleted[0].upstream_status, Some(204 | 404)), "the registry deleted it:\n{log}");
    let left = registry.open_upload_sessions("ns/x");
    assert!(left.is_empty(), "upload sessions left: {left:?}\n{log}");
    assert_eq!(registry.count_requests("DELETE", &session), 1, "the registry's access log shows the DELETE");
    assert_eq!(proxy.count("PUT", MANIFESTS), 0, "no manifest after a cancel:\n{log}");
    assert!(tag_list(&registry, "ns/x").is_empty(), "no tag after a cancel");
    eprintln!(
        "SIG{signal} after {:.1?} and {} PATCHes; exited {took:.2?} later",
        signalled.duration_since(push.started),
        patched.len()
    );
}

#[test]
fn sigint_mid_upload_deletes_the_session_stores_no_tag_and_exits_130() {
    cancel_mid_upload("INT", 40);
}

#[test]
fn sigterm_mid_upload_deletes_the_session_stores_no_tag_and_exits_130() {
    cancel_mid_upload("TERM", 43);
}

#[test]
fn sigint_during_a_hung_request_stops_within_a_second() {
    // The issue: "Ctrl-C ... stop the push within a second", even when the registry does not answer.
    let (_registry, _context, proxy, mut push) = hung_push(41);

    push.sigint();
    let signalled = Instant::now();
    let status = push.wait(Duration::from_secs(20));
    let took = signalled.elapsed();
    let log = proxy.log();
    assert_eq!(status.and_then(|s| s.code()), Some(130), "exit after SIGINT; stderr: {}\n{log}", push.stderr());
    assert!(took < Duration::from_millis(1500), "took {took:?} to stop after SIGINT:\n{log}");
    assert_eq!(proxy.count("PUT", MANIFESTS), 0, "{log}");
}

#[test]
fn second_sigint_exits_at_once() {
    let (_registry, _context, proxy, mut push) = hung_push(42);

    push.sigint();
    thread::sleep(Duration::from_millis(300));
    let second = Instant::now();
    if matches!(push.child.try_wait(), Ok(None)) {
        push.sigint();
    }
    let status = push.wait(Duration::from_secs(20));
    let took = second.elapsed();
    assert_eq!(status.and_then(|s| s.code()), Some(130), "stderr: {}", push.stderr());
    assert!(took < Duration::from_secs(1), "took {took:?} after the second SIGINT:\n{}", proxy.log());
}
