//! Verified TLS to loopback registries, idpbuilder's Gitea first among them: `docker-idpb trust` installs a
//! CA (from the cluster's `idpbuilder-cert` Secret through kubectl, or from `--from-file`) in Docker's
//! `certs.d` layout, and a loopback registry with a CA installed (or `--ca-file`) is verified against it:
//! no fallback to unverified HTTPS or plain HTTP, and a certificate that does not pass is a one-line error
//! that says what is wrong with it (expired, not yet valid, other names, unknown issuer, self-signed) and
//! the fix that fits. For the idpbuilder host with no CA installed, push fetches the cluster's CA itself;
//! only when that is impossible does Docker's loopback rule (unverified, with a note) apply.
//!
//! Each test plays one user on one machine ([`Machine`]): a HOME shared by its commands (so what `trust`
//! installs is what `push` finds) and a PATH holding only what the test put there, so the machine's real
//! kubectl never answers; the cluster is a fake `kubectl` script that prints the Secret for exactly
//! `kubectl get secret -n default idpbuilder-cert -o json` (and the Gitea credential Secret), logs every
//! call and fails for anything else. Registries are real (Debian's docker-registry) and reached as
//! `localhost:PORT`; the bad certificates are made with `openssl ca` by [`TestCa::issue`], served by a
//! registry through [`RegistryOptions::server_cert`]. Nothing here leaves loopback.

mod support;

use serde_json::json;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

/// The CN of the second CA, distinctive enough to be found in a message.
const OTHER_CA: &str = "idpb other CA";
/// What the loopback rule's note says (today's wording, kept by the feature).
const UNVERIFIED_NOTE: &str = "without certificate verification";
/// What a user-facing certificate error must never show: rustls' and webpki's debug output.
const DEBUG_TEXT: &[&str] = &["Context {", "DnsName(", "NotValidFor", "UnknownIssuer", "{"];
/// The kubectl arguments that fetch idpbuilder's CA, joined by spaces.
const CLUSTER_CA_ARGS: &str = "get secret -n default idpbuilder-cert -o json";
/// The kubectl arguments that fetch the Gitea admin's credentials (asked by push for the idpbuilder host).
const GITEA_SECRET_ARGS: &str = "get secret -n gitea gitea-credential -o json";
/// The default host of `trust` when `IDPB_REGISTRY` is not set.
const IDPBUILDER_HOST: &str = "gitea.cnoe.localtest.me:8443";
/// A bound for commands that must not read a file forever.
const SHORT_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// One user on one machine: a HOME (and optionally an `XDG_CONFIG_HOME`) shared by every command of a test,
/// and a PATH holding only `bin/`, where a test may put a fake `kubectl`.
struct Machine {
    tmp: TempDir,
    home: PathBuf,
    bin: PathBuf,
    xdg_config_home: Option<PathBuf>,
}

impl Machine {
    fn new(label: &str) -> Machine {
        let tmp = TempDir::new(&format!("trust-{label}"));
        let (home, bin) = (tmp.subdir("home"), tmp.subdir("bin"));
        Machine { tmp, home, bin, xdg_config_home: None }
    }

    /// The same with `XDG_CONFIG_HOME` set to a dir outside HOME.
    fn with_xdg_config_home(label: &str) -> Machine {
        let mut machine = Machine::new(label);
        machine.xdg_config_home = Some(machine.tmp.subdir("xdg-config"));
        machine
    }

    /// `docker-idpb ARGS` as this user (not run yet).
    fn command<S: AsRef<std::ffi::OsStr>>(&self, args: impl IntoIterator<Item = S>) -> IdpbCommand {
        let mut cmd = IdpbCommand::new();
        cmd.args(args).env("HOME", &self.home).env("PATH", &self.bin);
        if let Some(dir) = &self.xdg_config_home {
            cmd.env("XDG_CONFIG_HOME", dir);
        }
        cmd
    }

    /// `$XDG_CONFIG_HOME/docker/certs.d`, `XDG_CONFIG_HOME` defaulting to `$HOME/.config`.
    fn certs_d(&self) -> PathBuf {
        self.xdg_config_home.clone().unwrap_or_else(|| self.home.join(".config")).join("docker/certs.d")
    }

    /// Where `trust HOST` installs the CA: `certs.d/HOST/ca.crt`.
    fn installed(&self, host: &str) -> PathBuf {
        self.certs_d().join(host).join("ca.crt")
    }

    /// Installs `ca` for `host` by hand, the way Docker documents it (no `trust` involved).
    fn install_by_hand(&self, host: &str, ca: &Path) {
        write_file(&self.installed(host), &read(ca));
    }

    /// A small build context in this machine's temp dir.
    fn context(&self) -> String {
        let dir = self.tmp.subdir("ctx");
        if !dir.join("hello.txt").exists() {
            make_small_context(&dir, "trust");
        }
        path_str(&dir)
    }

    /// Puts a `kubectl` on PATH that plays an idpbuilder cluster: the `idpbuilder-cert` Secret holds `ca`
    /// as `ca.crt` (and `server_crt` as `tls.crt`, as the real one does), the Gitea credential Secret holds
    /// a user and password; any other command fails. Every call is logged for [`Machine::kubectl_calls`].
    fn cluster_kubectl(&self, ca: &Path, server_crt: &Path) {
        let cert_secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "idpbuilder-cert", "namespace": "default"},
            "type": "kubernetes.io/tls",
            "data": {"ca.crt": base64(&read(ca)), "tls.crt": base64(&read(server_crt))},
        });
        let gitea_secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "gitea-credential", "namespace": "gitea"},
            "data": {"username": base64(b"giteaAdmin"), "password": base64(b"not-used-by-an-open-registry")},
        });
        let answer = |args: &str, secret: &serde_json::Value| {
            format!("if [ \"$#\" -eq 7 ] && [ \"$*\" = '{args}' ]; then\n  printf '%s\\n' '{secret}'\n  exit 0\nfi\n")
        };
        let body = format!(
            "{}{}echo \"Error from server (NotFound): the fake cluster has nothing for: $*\" >&2\nexit 1\n",
            answer(CLUSTER_CA_ARGS, &cert_secret),
            answer(GITEA_SECRET_ARGS, &gitea_secret)
        );
        self.kubectl(&body);
    }

    /// Puts a `kubectl` on PATH that fails the way it does when no cluster runs.
    fn broken_kubectl(&self) {
        self.kubectl(
            "echo 'The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or \
             port?' >&2\nexit 1\n",
        );
    }

    /// Writes `bin/kubectl` running `body` after logging its arguments (shell builtins only: PATH has
    /// nothing else).
    fn kubectl(&self, body: &str) {
        let log = self.tmp.join("kubectl-calls.log");
        let script = format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\n{body}", log.display());
        let path = self.bin.join("kubectl");
        write_file(&path, script.as_bytes());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("chmod: {e}"));
    }

    /// The argument lists the fake kubectl was called with, in order.
    fn kubectl_calls(&self) -> Vec<String> {
        let log = fs::read_to_string(self.tmp.join("kubectl-calls.log")).unwrap_or_default();
        log.lines().map(str::to_string).collect()
    }
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `localhost:PORT`: the name the server certificates hold, and a loopback host by Docker's rule.
fn localhost(registry: &Registry) -> String {
    format!("localhost:{}", registry.port())
}

/// An HTTPS registry serving `cert` (from a CA made by the test).
fn registry_serving(cert: ServerCert) -> Registry {
    Registry::start_with(RegistryMode::Https, &RegistryOptions { server_cert: Some(cert), ..Default::default() })
}

/// The first line of stdout that starts with `label` (after spaces).
#[track_caller]
fn labelled_line<'a>(output: &'a Output, label: &str) -> &'a str {
    output
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?} on stdout: {output}"))
}

/// Asserts a successful `trust` that described `ca` (whose subject and issuer are `CN=common_name`) on
/// stdout (subject, issuer, SHA-256 fingerprint, validity, where it went) and installed the same
/// certificate, alone, at `installed`.
#[track_caller]
fn assert_trusted(output: &Output, ca: &Path, common_name: &str, installed: &Path) {
    output.assert_success();
    assert!(labelled_line(output, "subject").contains(common_name), "the subject names {common_name:?}: {output}");
    assert!(labelled_line(output, "issuer").contains(common_name), "the issuer names {common_name:?}: {output}");
    let fingerprint = certificate_fingerprint(ca);
    assert!(output.stdout.contains(&fingerprint), "the SHA-256 fingerprint {fingerprint} is shown: {output}");
    let (not_before, not_after) = certificate_validity(ca);
    let valid = labelled_line(output, "valid");
    for date in [&not_before[..10], &not_after[..10]] {
        assert!(valid.contains(date), "the validity shows {date} ({not_before} to {not_after}): {output}");
    }
    assert!(output.stdout.contains(&path_str(installed)), "the installed path is shown: {output}");

    assert!(installed.is_file(), "{} was installed: {output}", installed.display());
    let pem = String::from_utf8_lossy(&read(installed)).into_owned();
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 1, "one certificate, PEM:\n{pem}");
    assert!(!pem.contains("PRIVATE KEY"), "no key in a CA file:\n{pem}");
    assert_eq!(certificate_fingerprint(installed), fingerprint, "the installed certificate is the CA");
}

/// Asserts a failed push (run with `-q`): exit 1, one line, no debug text, no note about skipping
/// verification; returns the line.
#[track_caller]
fn assert_certificate_error(output: &Output, needles: &[&str]) -> String {
    output.assert_code(1);
    let line = assert_one_line_error(output, needles).to_string();
    for debug in DEBUG_TEXT {
        assert!(!line.contains(debug), "no debug text ({debug:?}) in a user's error: {output}");
    }
    assert!(!line.contains(UNVERIFIED_NOTE), "{output}");
    line
}

/// Asserts the registry got no upload and holds no `repo:tag`: a rejected certificate stops everything,
/// with no fallback to unverified HTTPS or to plain HTTP.
#[track_caller]
fn assert_nothing_pushed(registry: &Registry, repo: &str, tag: &str) {
    let requests = registry.requests();
    let writes: Vec<&AccessLogEntry> =
        requests.iter().filter(|r| ["POST", "PATCH", "PUT"].contains(&r.method.as_str())).collect();
    assert!(writes.is_empty(), "no upload reached the registry: {writes:?}");
    assert_eq!(stored_digest(registry, repo, tag), None, "{repo}:{tag} is not in the registry");
}

/// The loopback note lines on stderr.
fn unverified_notes(output: &Output) -> Vec<&str> {
    output.stderr.lines().filter(|l| l.contains(UNVERIFIED_NOTE)).collect()
}

/// Pushes a small context to a registry serving `cert` as `localhost:PORT` twice, each time as a new user
/// who trusts `ca`: first through certs.d, then through `--ca-file`. Both must fail as a certificate error
/// (exit 1, one line, no debug text) without touching the registry; returns both lines.
fn rejected_pushes(label: &str, cert: ServerCert, ca: &Path) -> [String; 2] {
    let registry = registry_serving(cert);
    let host = localhost(&registry);
    let target = format!("{host}/ns/{label}:1");
    let by_certs_d = Machine::new(label);
    by_certs_d.install_by_hand(&host, ca);
    let output = by_certs_d.command(["push", &by_certs_d.context(), "-t", &target, "-q"]).run();
    let certs_d_line = assert_certificate_error(&output, &[]);

    let by_flag = Machine::new(label);
    let args = ["push", &by_flag.context(), "-t", &target, "--ca-file", &path_str(ca), "-q"];
    let output = by_flag.command(args).run();
    let ca_file_line = assert_certificate_error(&output, &[]);

    assert_nothing_pushed(&registry, &format!("ns/{label}"), "1");
    [certs_d_line, ca_file_line]
}

/// Asserts every line contains each of `needles`.
#[track_caller]
fn assert_all_contain(lines: &[String], needles: &[&str]) {
    for line in lines {
        for needle in needles {
            assert!(line.contains(needle), "{needle:?} is in {line:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// 1. trust --from-file, then a verified push, then trust --remove.

/// `trust --from-file CA localhost:PORT` shows the CA and installs it under `$HOME/.config` (no
/// `XDG_CONFIG_HOME`); push then verifies the registry against it (no loopback note), and skopeo, trusting
/// the installed directory, reads the image back. `trust --remove` deletes the file, and the next push is
/// back to the loopback rule.
#[test]
fn trust_from_file_installs_the_ca_and_push_verifies_against_it() {
    let registry = Registry::start(RegistryMode::Https);
    let ca = registry.ca().unwrap_or_else(|| panic!("an https registry has a CA")).to_path_buf();
    let host = localhost(&registry);
    let machine = Machine::new("from-file");
    let installed = machine.installed(&host);

    let output = machine.command(["trust", "--from-file", &path_str(&ca), &host]).run();
    assert_trusted(&output, &ca, TEST_CA_NAME, &installed);

    let target = format!("{host}/ns/trusted:1");
    let output = machine.command(["push", &machine.context(), "-t", &target]).run();
    let digest = pushed_digest(&output, &target);
    assert!(unverified_notes(&output).is_empty(), "verified against the installed CA, so no note: {output}");
    assert_eq!(stored_digest(&registry, "ns/trusted", "1").as_deref(), Some(digest.as_str()));

    // A peer that verifies, trusting only the directory `trust` filled, reads the same image.
    let cert_dir = installed.parent().unwrap_or_else(|| panic!("{} has a parent", installed.display()));
    let mut skopeo = Command::new(require_tool("skopeo"));
    skopeo.args(["--insecure-policy", "inspect", "--no-creds", "--cert-dir"]).arg(cert_dir);
    let inspected = checked(skopeo.arg(format!("docker://{target}")));
    let inspected: serde_json::Value =
        serde_json::from_str(&inspected.stdout).unwrap_or_else(|e| panic!("skopeo printed no JSON ({e}): {inspected}"));
    assert_eq!(inspected["Digest"], digest.as_str(), "{inspected}");

    let output = machine.command(["trust", "--remove", &host]).run();
    output.assert_success();
    assert!(output.stdout.contains(&path_str(&installed)), "the removed path is shown: {output}");
    assert!(!installed.exists(), "{} was removed", installed.display());

    let again = format!("{host}/ns/trusted:2");
    let output = machine.command(["push", &machine.context(), "-t", &again]).run();
    pushed_digest(&output, &again);
    assert_eq!(unverified_notes(&output).len(), 1, "no CA any more: the loopback rule again: {output}");
}

// ---------------------------------------------------------------------------------------------------------
// 2. trust from the cluster.

/// With no `--from-file`, `trust` asks kubectl for the `idpbuilder-cert` Secret and installs its `ca.crt`
/// (not its `tls.crt`) for the default host, which `IDPB_REGISTRY` makes `localhost:PORT`, under
/// `XDG_CONFIG_HOME`; push then verifies.
#[test]
fn trust_fetches_the_ca_from_the_cluster_with_kubectl() {
    let ca = TestCa::new();
    let registry = registry_serving(ca.server());
    let host = localhost(&registry);
    let machine = Machine::with_xdg_config_home("kubectl");
    machine.cluster_kubectl(&ca.ca_crt, &ca.server_crt);
    let installed = machine.installed(&host);

    let output = machine.command(["trust"]).env("IDPB_REGISTRY", &host).run();
    assert_trusted(&output, &ca.ca_crt, TEST_CA_NAME, &installed);
    let calls = machine.kubectl_calls();
    assert!(calls.iter().any(|c| c == CLUSTER_CA_ARGS), "kubectl was asked for the Secret: {calls:?}");

    let target = format!("{host}/ns/cluster:1");
    let output = machine.command(["push", &machine.context(), "-t", &target]).env("IDPB_REGISTRY", &host).run();
    let digest = pushed_digest(&output, &target);
    assert!(unverified_notes(&output).is_empty(), "verified: {output}");
    assert_eq!(stored_digest(&registry, "ns/cluster", "1").as_deref(), Some(digest.as_str()));
}

/// With no HOST and no `IDPB_REGISTRY`, `trust` is for idpbuilder's Gitea.
#[test]
fn trust_without_a_host_is_for_idpbuilders_gitea() {
    let ca = TestCa::new();
    let machine = Machine::new("default-host");
    let output = machine.command(["trust", "--from-file", &path_str(&ca.ca_crt)]).run();
    assert_trusted(&output, &ca.ca_crt, TEST_CA_NAME, &machine.installed(IDPBUILDER_HOST));
}

/// No kubectl, or a kubectl that fails (no cluster): one line that says to use `--from-file`, exit 1, and
/// nothing installed.
#[test]
fn trust_without_a_working_kubectl_says_to_use_from_file() {
    let machine = Machine::new("no-kubectl");
    let host = "localhost:5000";
    let output = machine.command(["trust", host]).run();
    output.assert_code(1);
    assert_one_line_error(&output, &["--from-file"]);

    machine.broken_kubectl();
    let output = machine.command(["trust", host]).run();
    output.assert_code(1);
    assert_one_line_error(&output, &["--from-file"]);
    let calls = machine.kubectl_calls();
    assert!(calls.iter().any(|c| c == CLUSTER_CA_ARGS), "kubectl was asked for the CA: {calls:?}");
    assert!(!machine.certs_d().exists(), "nothing installed");
}

/// `sh -c` script run by `unshare`: `$1` is mount, `$2` the dir to see as `/etc/docker`, then the command.
const BIND_ETC_DOCKER: &str =
    "\"$1\" --bind \"$2\" /etc/docker || { echo 'ns-setup: cannot bind-mount' >&2; exit 99; }; shift 2; exec \"$@\"";

/// `--system` installs in `/etc/docker/certs.d/HOST/ca.crt` (and `--remove --system` deletes it). The
/// binary runs in a private mount namespace where a test dir is bind-mounted on `/etc/docker`, so the
/// machine's own `/etc/docker` is never written.
#[test]
fn trust_system_installs_under_etc_docker() {
    let ca = TestCa::new();
    let machine = Machine::new("system");
    let etc_docker = machine.tmp.subdir("etc-docker");
    let host = "localhost:5000";
    let in_namespace = |args: &[&str]| {
        let mut cmd = IdpbCommand::for_program(require_tool("unshare"));
        cmd.args(["--user", "--map-root-user", "--mount", "/bin/sh", "-c", BIND_ETC_DOCKER, "sh"])
            .arg(require_tool("mount"))
            .arg(&etc_docker)
            .arg(bin())
            .args(args);
        cmd.env("HOME", &machine.home).env("PATH", &machine.bin);
        let output = cmd.run();
        assert_ne!(
            output.code,
            Some(99),
            "this test needs `unshare --user --mount` and an existing /etc/docker (docker-registry's package \
             makes /etc/docker/registry): {output}"
        );
        output
    };
    let installed = etc_docker.join("certs.d").join(host).join("ca.crt");

    let output = in_namespace(&["trust", "--system", "--from-file", &path_str(&ca.ca_crt), host]);
    output.assert_success();
    assert!(installed.is_file(), "/etc/docker/certs.d/{host}/ca.crt was written: {output}");
    assert_eq!(certificate_fingerprint(&installed), certificate_fingerprint(&ca.ca_crt));
    assert!(output.stdout.contains(&format!("/etc/docker/certs.d/{host}/ca.crt")), "{output}");
    assert!(!machine.certs_d().exists(), "nothing in the user's config: {output}");

    let output = in_namespace(&["trust", "--system", "--remove", host]);
    output.assert_success();
    assert!(output.stdout.contains(&format!("/etc/docker/certs.d/{host}/ca.crt")), "{output}");
    assert!(!installed.exists(), "removed: {output}");
}

// ---------------------------------------------------------------------------------------------------------
// 3. An installed CA is final: a certificate it did not sign is an error, not a fallback.

/// CA B is installed for the host; the registry's certificate comes from CA A. The push fails in one line
/// naming the certificate's issuer (CA A), and nothing reaches the registry.
#[test]
fn a_ca_that_did_not_sign_the_certificate_is_an_error_not_a_fallback() {
    let registry = Registry::start(RegistryMode::Https);
    let host = localhost(&registry);
    let other = TestCa::named(OTHER_CA);
    let machine = Machine::new("wrong-installed-ca");
    machine.install_by_hand(&host, &other.ca_crt);

    let target = format!("{host}/ns/refused:1");
    let output = machine.command(["push", &machine.context(), "-t", &target, "-q"]).run();
    assert_certificate_error(&output, &[TEST_CA_NAME]);
    assert_nothing_pushed(&registry, "ns/refused", "1");

    // Without -q too: no note about skipping verification, because nothing was skipped.
    let output = machine.command(["push", &machine.context(), "-t", &target]).run();
    output.assert_code(1);
    assert!(unverified_notes(&output).is_empty(), "{output}");
    assert_nothing_pushed(&registry, "ns/refused", "1");
}

// ---------------------------------------------------------------------------------------------------------
// 4. The idpbuilder host with no CA installed: the cluster's CA, fetched by push.

/// `IDPB_REGISTRY=localhost:PORT` makes the registry idpbuilder's. With a cluster whose Secret holds the
/// right CA, push verifies (no note); with a cluster whose Secret holds another CA, push fails (no
/// fallback); with no kubectl at all, Docker's loopback rule applies and its note says how to get
/// verification (`idpb trust`). Each case is a fresh machine (nothing installed) on the same registry.
#[test]
fn push_to_the_idpbuilder_host_verifies_against_the_cluster_ca() {
    let ca = TestCa::new();
    let registry = registry_serving(ca.server());
    let host = localhost(&registry);

    let cluster = Machine::new("auto-right-ca");
    cluster.cluster_kubectl(&ca.ca_crt, &ca.server_crt);
    let target = format!("{host}/ns/auto:right-ca");
    let output = cluster.command(["push", &cluster.context(), "-t", &target]).env("IDPB_REGISTRY", &host).run();
    let digest = pushed_digest(&output, &target);
    assert!(unverified_notes(&output).is_empty(), "verified against the cluster's CA: {output}");
    let calls = cluster.kubectl_calls();
    assert!(calls.iter().any(|c| c == CLUSTER_CA_ARGS), "the CA came from the cluster: {calls:?}");
    assert_eq!(stored_digest(&registry, "ns/auto", "right-ca").as_deref(), Some(digest.as_str()));

    let other = TestCa::named(OTHER_CA);
    let wrong = Machine::new("auto-wrong-ca");
    wrong.cluster_kubectl(&other.ca_crt, &other.server_crt);
    let target = format!("{host}/ns/auto:wrong-ca");
    let output = wrong.command(["push", &wrong.context(), "-t", &target, "-q"]).env("IDPB_REGISTRY", &host).run();
    assert_certificate_error(&output, &[TEST_CA_NAME]);
    let calls = wrong.kubectl_calls();
    assert!(calls.iter().any(|c| c == CLUSTER_CA_ARGS), "the CA came from the cluster: {calls:?}");
    assert_eq!(stored_digest(&registry, "ns/auto", "wrong-ca"), None, "no fallback");

    // PATH holds nothing: no kubectl, no idpbuilder.
    let no_cluster = Machine::new("auto-no-kubectl");
    let target = format!("{host}/ns/auto:no-kubectl");
    let output = no_cluster.command(["push", &no_cluster.context(), "-t", &target]).env("IDPB_REGISTRY", &host).run();
    assert_eq!(pushed_digest(&output, &target), digest, "same context, same image");
    let notes = unverified_notes(&output);
    assert_eq!(notes.len(), 1, "the loopback rule, said once: {output}");
    assert!(notes[0].contains("idpb trust"), "the note says how to get verification: {output}");
}

// ---------------------------------------------------------------------------------------------------------
// 5. Certificate errors in words, each with the fix that fits.

/// A certificate from the installed CA that expired on 2021-01-01.
#[test]
fn an_expired_certificate_says_expired_and_when() {
    let ca = TestCa::new();
    let cert = ca.issue("expired", "localhost", LOOPBACK_NAMES, Some(("20200101000000Z", "20210101000000Z")));
    let lines = rejected_pushes("expired", cert, &ca.ca_crt);
    assert_all_contain(&lines, &["expired", "2021-01-01"]);
    for line in &lines {
        assert!(!line.contains("not yet valid"), "{line}");
    }
}

/// A certificate from the installed CA valid only from 2040-01-01.
#[test]
fn a_not_yet_valid_certificate_says_so_and_from_when() {
    let ca = TestCa::new();
    let cert = ca.issue("future", "localhost", LOOPBACK_NAMES, Some(("20400101000000Z", "20410101000000Z")));
    let lines = rejected_pushes("future", cert, &ca.ca_crt);
    assert_all_contain(&lines, &["2040-01-01"]);
    for line in &lines {
        assert!(line.contains("not yet valid") || line.contains("not valid"), "{line}");
        assert!(!line.contains("expired"), "{line}");
    }
}

/// A certificate from the installed CA for other names: the message lists them, and gives no CA advice,
/// because the CA was fine.
#[test]
fn a_certificate_for_other_names_lists_them_and_gives_no_ca_advice() {
    let ca = TestCa::new();
    let cert = ca.issue("other-name", "other.example", "DNS:other.example, DNS:*.other.example", None);
    let lines = rejected_pushes("other-name", cert, &ca.ca_crt);
    assert_all_contain(&lines, &["other.example"]);
    for line in &lines {
        assert!(!line.contains("--ca-file") && !line.contains("idpb trust"), "no CA advice: {line}");
    }
}

/// A certificate from CA B while CA A is installed: the message names the issuer it does not know.
#[test]
fn a_certificate_from_an_unknown_ca_names_its_issuer() {
    let ca = TestCa::new();
    let other = TestCa::named(OTHER_CA);
    let lines = rejected_pushes("unknown-issuer", other.server(), &ca.ca_crt);
    assert_all_contain(&lines, &[OTHER_CA]);
    for line in &lines {
        assert!(!line.contains("self-signed"), "{line}");
    }
}

/// A self-signed leaf while CA A is installed.
#[test]
fn a_self_signed_certificate_says_self_signed() {
    let ca = TestCa::new();
    let cert = ca.self_signed_server("self-signed");
    let lines = rejected_pushes("self-signed", cert, &ca.ca_crt);
    assert_all_contain(&lines, &["self-signed"]);
}

// ---------------------------------------------------------------------------------------------------------
// 6. Files that hold no certificate.

/// A text file, a PEM file holding only a private key, and `/dev/zero` (which never ends: the command must
/// stop reading) are each refused in one line naming the file, exit 1 or 2, nothing installed.
#[test]
fn trust_from_file_without_a_certificate_is_refused() {
    let ca = TestCa::new();
    let machine = Machine::new("not-a-cert");
    let text = machine.tmp.join("notes.txt");
    write_file(&text, b"this is not a certificate\n");
    let host = "localhost:5000";

    for file in [text.as_path(), ca.server_key.as_path(), Path::new("/dev/zero")] {
        let file = path_str(file);
        let output = machine.command(["trust", "--from-file", &file, host]).timeout(SHORT_TIMEOUT).run();
        assert!(matches!(output.code, Some(1 | 2)), "exit 1 or 2 for {file}: {output}");
        assert_one_line_error(&output, &[&file]);
        assert!(!machine.certs_d().exists(), "nothing installed for {file}: {output}");
    }
}
