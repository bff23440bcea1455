//! Verified TLS against hostile or unusual servers, certificates and machines (`trust`, loopback verification,
//! certificate errors in words). Every server here is on loopback: a real
//! registry (tests/support) behind a small TCP front that relays the first connection (the push's own
//! handshake) and treats later ones (the diagnosis probe's) as the test needs, or a tiny plain-HTTP server.

mod support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use idpb::tls::parse_certs;
use idpb::tls::x509::CertInfo;
use support::*;

/// What the loopback rule's note says.
const UNVERIFIED_NOTE: &str = "without certificate verification";

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Truncations, byte flips, inserted and deleted bytes and pure noise never panic or hang the DER reader
/// (it runs on whatever a server presents during the diagnosis handshake). Passes today: kept as a guard.
#[test]
fn the_der_reader_survives_hostile_input() {
    let der = parse_certs(include_bytes!("../src/tls/testdata/unit-ca.pem"), "unit-ca.pem").expect("a PEM certificate")
        [0]
    .der()
    .to_vec();
    assert!(CertInfo::parse(&der).is_some());
    for len in 0..der.len() {
        let _ = CertInfo::parse(&der[..len]);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..100_000 {
        let mut input = der.clone();
        for _ in 0..1 + rng.below(8) {
            match rng.below(4) {
                0 => {
                    let i = rng.below(input.len());
                    input[i] = rng.next() as u8;
                }
                1 => {
                    let i = rng.below(input.len());
                    input[i] ^= 1 << rng.below(8);
                }
                2 => {
                    let i = rng.below(input.len() + 1);
                    input.insert(i, rng.next() as u8);
                }
                _ => {
                    if input.len() > 1 {
                        let i = rng.below(input.len());
                        input.remove(i);
                    }
                }
            }
        }
        let _ = CertInfo::parse(&input);
        let cut = rng.below(input.len() + 1);
        let _ = CertInfo::parse(&input[..cut]);
    }
    for _ in 0..20_000 {
        let n = rng.below(64);
        let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        let _ = CertInfo::parse(&noise);
        let mut framed = vec![0x30, 0x82, (n >> 8) as u8, n as u8];
        framed.extend(&noise);
        let _ = CertInfo::parse(&framed);
        let _ = parse_certs(&noise, "noise");
    }
}

// ---------------------------------------------------------------------------------------------------------
// A TCP front for a registry.

/// Listens on a loopback port: the first connection is relayed to `upstream` (the push's handshake, which
/// fails on the certificate), every later one (the diagnosis probe) is handed to `later`.
fn front(upstream: u16, later: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).port();
    thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            if i == 0 {
                relay(conn, upstream);
            } else {
                thread::spawn(move || later(conn));
            }
        }
    });
    port
}

fn relay(client: TcpStream, upstream: u16) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else { return };
    thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    thread::spawn(move || {
        let (mut s_read, mut c_write) = (server, client);
        let _ = io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Write);
    });
}

/// A server that takes the ClientHello, announces a 16 KiB handshake record, then sends one byte a second:
/// every read succeeds within any per-read timeout, the record never completes.
fn trickle(mut conn: TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = conn.read(&mut buf);
    if conn.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
        return;
    }
    for _ in 0..600 {
        thread::sleep(Duration::from_secs(1));
        if conn.write_all(&[0x02]).is_err() {
            return;
        }
    }
}

/// A server that closes every connection at once (one connection allowed, a restarting server, or an
/// address the probe picks that the registry does not listen on).
fn refuse(conn: TcpStream) {
    drop(conn);
}

fn registry_serving(cert: ServerCert) -> Registry {
    Registry::start_with(RegistryMode::Https, &RegistryOptions { server_cert: Some(cert), ..Default::default() })
}

fn small_context(tmp: &TempDir) -> String {
    let dir = tmp.subdir("ctx");
    make_small_context(&dir, "review");
    path_str(&dir)
}

/// The extra handshake made to describe a rejected certificate must be bounded as a whole (by the
/// command's --timeout or a few seconds), and must stop on SIGTERM like every other wait. A server that
/// answers the probe one byte a second keeps it alive for hours today: each read has a 5 s timeout, the
/// handshake none, and the probe never looks at the cancellation flag, so `timeout 40 docker-idpb push
/// --timeout 5s` was still running 11 minutes later.
#[test]
fn the_diagnosis_probe_does_not_outlive_the_timeout() {
    let ca = TestCa::new();
    let registry = registry_serving(ca.issue("other-name", "other.example", "DNS:other.example", None));
    let port = front(registry.port(), trickle);
    let tmp = TempDir::new("review-trickle");
    let target = format!("localhost:{port}/ns/trickle:1");
    let started = Instant::now();
    let output = IdpbCommand::new()
        .args(["push", &small_context(&tmp), "-t", &target, "-q", "--timeout", "5s", "--ca-file"])
        .arg(&ca.ca_crt)
        .timeout(Duration::from_secs(60))
        .run();
    output.assert_code(1);
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}: {output}", started.elapsed());
}

/// When the probe cannot get the chain (the server closes the second connection), the names come from
/// rustls' context: they must still be plain names, not webpki's `DnsName("other.example")`.
#[test]
fn a_name_mismatch_without_the_probe_shows_plain_names() {
    let ca = TestCa::new();
    let registry = registry_serving(ca.issue("other-name", "other.example", "DNS:other.example", None));
    let port = front(registry.port(), refuse);
    let tmp = TempDir::new("review-noprobe");
    let target = format!("localhost:{port}/ns/noprobe:1");
    let output =
        IdpbCommand::new().args(["push", &small_context(&tmp), "-t", &target, "-q", "--ca-file"]).arg(&ca.ca_crt).run();
    output.assert_code(1);
    let line = assert_one_line_error(&output, &["other.example"]);
    for debug in ["DnsName(", "IpAddress(", "(\""] {
        assert!(!line.contains(debug), "no debug text ({debug:?}): {line}");
    }
}

/// A chain whose intermediate is not a CA (basicConstraints CA:FALSE) is rejected by webpki with an error
/// rustls wraps as `Other(OtherError(EndEntityUsedAsCa))`; the message shows that Debug text with its
/// closing parentheses: "was rejected (end entity used as ca)))".
#[test]
fn a_non_ca_intermediate_is_described_without_debug_residue() {
    let ca = TestCa::new();
    let inter = ca.issue("inter", "idpb review not-a-CA intermediate", "DNS:inter.example", None);
    let dir = ca.dir.path();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new(require_tool("openssl"))
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("openssl: {e}"));
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "[ext]\nbasicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key"]);
    openssl(&["req", "-new", "-key", "leaf.key", "-subj", "/CN=localhost", "-out", "leaf.csr"]);
    let inter_crt = path_str(&inter.crt);
    let inter_key = path_str(&inter.key);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        &inter_crt,
        "-CAkey",
        &inter_key,
        "-set_serial",
        "4242",
        "-days",
        "30",
        "-extfile",
        "leaf.ext",
        "-extensions",
        "ext",
        "-out",
        "leaf.crt",
    ]);
    let mut chain = std::fs::read(dir.join("leaf.crt")).unwrap_or_else(|e| panic!("read: {e}"));
    chain.extend(std::fs::read(&inter.crt).unwrap_or_else(|e| panic!("read: {e}")));
    std::fs::write(dir.join("chain.crt"), chain).unwrap_or_else(|e| panic!("write: {e}"));
    let registry = registry_serving(ServerCert { crt: dir.join("chain.crt"), key: dir.join("leaf.key") });

    let tmp = TempDir::new("review-chain");
    let target = format!("localhost:{}/ns/chain:1", registry.port());
    let output =
        IdpbCommand::new().args(["push", &small_context(&tmp), "-t", &target, "-q", "--ca-file"]).arg(&ca.ca_crt).run();
    output.assert_code(1);
    let line = assert_one_line_error(&output, &[]);
    assert!(!line.contains("))") && !line.contains("Other"), "no Debug residue: {line}");
}

/// `trust` shows a certificate valid from 1960 (UTCTime 600101000000Z) as valid from 1960, not 1970.
#[test]
fn trust_shows_dates_before_1970() {
    let ca = TestCa::new();
    let old = ca.issue("old", "idpb review old", LOOPBACK_NAMES, Some(("19600101000000Z", "20400101000000Z")));
    let mut cmd = IdpbCommand::new();
    cmd.args(["trust", "--from-file", &path_str(&old.crt), "localhost:5999"]);
    let output = cmd.run();
    output.assert_success();
    let valid = output.stdout.lines().find(|l| l.trim_start().starts_with("valid")).unwrap_or_default().to_string();
    assert!(valid.contains("1960-01-01"), "notBefore is 1960-01-01: {output}");
    let json = IdpbCommand::new()
        .args(["trust", "--from-file", &path_str(&old.crt), "localhost:5999", "--format", "json"])
        .run();
    json.assert_success();
    assert!(json.stdout.contains("1960-01-01"), "{json}");
}

// ---------------------------------------------------------------------------------------------------------
// Installed CAs that are not readable.

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// A CA installed in a certs.d directory this user cannot list (root's, made by `sudo docker-idpb trust
/// --system` under umask 077, as the next test shows) is still an installed CA: the push must not fall back
/// to Docker's loopback rule and reach the registry unverified, with a note telling the user to install the
/// CA they installed. Today `installed_cas` and `config` skip a directory they cannot read.
#[test]
fn an_unreadable_certs_d_is_not_an_unverified_fallback() {
    let setpriv = require_tool("setpriv");
    let registry = Registry::start(RegistryMode::Https);
    let ca = registry.ca().unwrap_or_else(|| panic!("an https registry has a CA")).to_path_buf();
    let host = format!("localhost:{}", registry.port());
    let tmp = TempDir::new("review-unreadable");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));
    let xdg = tmp.subdir("xdg");
    let host_dir = xdg.join("docker/certs.d").join(&host);
    write_file(&host_dir.join("ca.crt"), &std::fs::read(&ca).unwrap_or_else(|e| panic!("{e}")));
    std::fs::set_permissions(&host_dir, std::fs::Permissions::from_mode(0o700)).unwrap_or_else(|e| panic!("{e}"));
    let context = small_context(&tmp);

    let mut cmd = IdpbCommand::for_program(&setpriv);
    for dir in [cmd.home(), cmd.docker_config(), cmd.idpb_home()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap_or_else(|e| panic!("{e}"));
        if let Some(parent) = dir.parent() {
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let target = format!("{host}/ns/unreadable:1");
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(bin())
        .args(["push", &context, "-t", &target])
        .env("XDG_CONFIG_HOME", &xdg);
    let output = cmd.run();
    assert!(!output.stderr.contains(UNVERIFIED_NOTE), "an installed CA, so no unverified fallback: {output}");
    assert_eq!(stored_digest(&registry, "ns/unreadable", "1"), None, "nothing pushed unverified: {output}");
}

/// `sh -c` script run by `unshare`: `$1` is mount, `$2` the dir to see as `/etc/docker`, then the command.
const BIND_ETC_DOCKER: &str = "umask 077; \"$1\" --bind \"$2\" /etc/docker || { echo 'ns-setup: cannot bind-mount' >&2; \
                               exit 99; }; shift 2; exec \"$@\"";

/// `trust --system` writes a CA every user (and docker-idpb run by any user) can read, whatever root's
/// umask: today the file is created with mode 0644 & ~umask and the directory with 0777 & ~umask, so under
/// umask 077 (a hardened root) both are private to root.
#[test]
fn trust_system_installs_a_readable_ca_under_any_umask() {
    let ca = TestCa::new();
    let tmp = TempDir::new("review-umask");
    let etc_docker = tmp.subdir("etc-docker");
    let host = "localhost:5000";
    let mut cmd = IdpbCommand::for_program(require_tool("unshare"));
    cmd.args(["--user", "--map-root-user", "--mount", "/bin/sh", "-c", BIND_ETC_DOCKER, "sh"])
        .arg(require_tool("mount"))
        .arg(&etc_docker)
        .arg(bin())
        .args(["trust", "--system", "--from-file", &path_str(&ca.ca_crt), host]);
    let output = cmd.run();
    assert_ne!(output.code, Some(99), "needs `unshare --user --mount` and an existing /etc/docker: {output}");
    output.assert_success();
    let installed = etc_docker.join("certs.d").join(host).join("ca.crt");
    assert_eq!(mode(&installed), 0o644, "{}: {output}", installed.display());
    for dir in [etc_docker.join("certs.d").join(host), etc_docker.join("certs.d")] {
        assert_eq!(mode(&dir) & 0o005, 0o005, "{} is listable by others: {output}", dir.display());
    }
}

// ---------------------------------------------------------------------------------------------------------
// The cluster's CA, fetched for the idpbuilder host.

/// A plain-HTTP registry on loopback that challenges for Basic and records every Authorization it gets. A
/// TLS ClientHello gets an HTTP 400, as from any HTTP server.
fn plain_http_recorder() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}")).port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = vec![0u8; 65536];
            let n = conn.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let answer = if !head.starts_with(|c: char| c.is_ascii_uppercase()) {
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            } else if let Some(auth) = head.lines().find(|l| l.to_ascii_lowercase().starts_with("authorization:")) {
                if let Ok(mut s) = record.lock() {
                    s.push(auth.to_string());
                }
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_string()
            } else {
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"r\"\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
                    .to_string()
            };
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    (port, seen)
}

/// With the idpbuilder host as target and its CA fetched from the cluster to verify it, a server on that
/// port that speaks plain HTTP must not get the push (and the Gitea admin's password from the cluster) over
/// plain HTTP: the CA was fetched for this very host, so no plain-HTTP fallback applies. Before the fix the
/// push noted "verifying ... with the idpbuilder cluster's CA",
/// then "reached over plain HTTP", and sends `Authorization: Basic` in clear.
#[test]
fn a_fetched_cluster_ca_never_falls_back_to_plain_http() {
    let ca = TestCa::new();
    let (port, seen) = plain_http_recorder();
    let host = format!("localhost:{port}");
    let tmp = TempDir::new("review-cluster-http");
    let bin_dir = tmp.subdir("bin");
    let secret = |data: String| format!("{{\"data\":{{{data}}}}}");
    let ca_secret =
        secret(format!("\"ca.crt\":\"{}\"", base64(&std::fs::read(&ca.ca_crt).unwrap_or_else(|e| panic!("{e}")))));
    let gitea_secret =
        secret(format!("\"username\":\"{}\",\"password\":\"{}\"", base64(b"giteaAdmin"), base64(b"cluster-pw")));
    let script = format!(
        "#!/bin/sh\nif [ \"$*\" = 'get secret -n default idpbuilder-cert -o json' ]; then printf '%s\\n' '{ca_secret}'; \
         exit 0; fi\nif [ \"$*\" = 'get secret -n gitea gitea-credential -o json' ]; then printf '%s\\n' \
         '{gitea_secret}'; exit 0; fi\necho \"no such secret: $*\" >&2\nexit 1\n"
    );
    let kubectl = bin_dir.join("kubectl");
    write_file(&kubectl, script.as_bytes());
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("{e}"));

    let target = format!("{host}/ns/cluster:1");
    let output = IdpbCommand::new()
        .args(["push", &small_context(&tmp), "-t", &target, "--timeout", "10s"])
        .env("PATH", &bin_dir)
        .env("IDPB_REGISTRY", &host)
        .run();
    let sent = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(sent.is_empty(), "credentials sent over plain HTTP after fetching the CA to verify: {sent:?}\n{output}");
    assert!(!output.stderr.contains("over plain HTTP"), "{output}");
    assert_ne!(output.code, Some(0), "{output}");
}

/// A loopback registry with `--ca-file` is verified, with no fallback (the issue: "a loopback registry with
/// a CA installed (certs.d or --ca-file) is verified against it: no fallback"): a server on that port that
/// speaks plain HTTP gets no push and no credentials; the error says it does not speak TLS.
#[test]
fn a_ca_file_never_falls_back_to_plain_http() {
    let ca = TestCa::new();
    let (port, seen) = plain_http_recorder();
    let tmp = TempDir::new("review-ca-file-http");
    let target = format!("localhost:{port}/ns/cafile:1");
    let mut cmd = IdpbCommand::new();
    cmd.args(["push", &small_context(&tmp), "-t", &target, "--timeout", "10s", "-u", "me", "--password-stdin"]);
    cmd.arg("--ca-file").arg(&ca.ca_crt);
    let output = run_with_stdin(&mut cmd, "ca-file-pw");
    let sent = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(sent.is_empty(), "credentials sent over plain HTTP with --ca-file: {sent:?}\n{output}");
    output.assert_code(1);
    assert_one_line_error(&output, &["does not speak TLS"]);
}

// ---------------------------------------------------------------------------------------------------------
// A redirect to another loopback port.

/// An HTTPS server (python's ssl) serving `cert` that answers every GET with a 307 to `location` + path.
struct Redirector {
    child: std::process::Child,
    port: u16,
}

impl Drop for Redirector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const REDIRECTOR: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(307)
        self.send_header("Location", sys.argv[4] + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_HEAD = do_GET
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

fn redirector(cert: &ServerCert, location: &str) -> Redirector {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("free port: {e}"))
        .port();
    let child = std::process::Command::new(require_tool("python3"))
        .args(["-c", REDIRECTOR, &port.to_string(), &path_str(&cert.crt), &path_str(&cert.key), location])
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the redirector did not start");
        thread::sleep(Duration::from_millis(50));
    }
    Redirector { child, port }
}

/// A verified registry (its CA trusted) redirects /v2/ to `https://localhost:OTHER/`, whose certificate is
/// for other.example. The push must fail (it does: no fallback), and the error must be about the server
/// that presented the certificate. Today the error names the registry and the probe describes the
/// registry's own (good) certificate: "the TLS certificate of localhost:A is for localhost, 127.0.0.1, ::1,
/// not localhost", which contradicts itself and names neither other.example nor the port that failed.
#[test]
fn a_certificate_failure_after_a_redirect_describes_the_server_redirected_to() {
    let ca = TestCa::new();
    let bad = registry_serving(ca.issue("other-name", "other.example", "DNS:other.example", None));
    let other = format!("localhost:{}", bad.port());
    let front = redirector(&ca.server(), &format!("https://{other}"));
    let tmp = TempDir::new("review-redirect");
    let target = format!("localhost:{}/ns/redirect:1", front.port);
    let output = IdpbCommand::new()
        .args(["push", &small_context(&tmp), "-t", &target, "-q", "--timeout", "10s", "--ca-file"])
        .arg(&ca.ca_crt)
        .run();
    output.assert_code(1);
    let line = assert_one_line_error(&output, &[]);
    assert!(line.contains("other.example") && line.contains(&other), "names the server redirected to: {line}");
}
