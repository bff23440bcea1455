//! A throwaway certificate authority, made with the `openssl` CLI.
//!
//! rustls (through webpki) is stricter than curl or Go: it wants v3 certificates, a subjectAltName on the
//! leaf (the CN is ignored), `CA:FALSE` plus `serverAuth` on the leaf and a CA that is not itself the leaf.
//! So the CA and the server certificate are two EC P-256 keys with the extensions spelled out in one
//! config file below, and the server certificate names every way a test reaches a loopback server
//! (`localhost`, `127.0.0.1`, `::1`). Keys are PKCS#8 PEM, which Go, Python and rustls all read.

use super::TempDir;
use super::process::{require_tool, run};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = idpb test
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[signing_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
";

/// A CA and a server certificate it signed for `localhost`, `127.0.0.1` and `::1`.
#[derive(Debug)]
pub struct TestCa {
    pub dir: TempDir,
    /// The CA certificate: what a client passes as `--ca-cert`.
    pub ca_crt: PathBuf,
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
    /// A directory holding only `ca.crt`, for `skopeo --cert-dir` and `certs.d`-style lookups (the
    /// server key must not be in there: skopeo would take it for a client key).
    pub trust_dir: PathBuf,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        require_tool("openssl");
        let dir = TempDir::new("ca");
        let config = dir.join(CONFIG_FILE);
        fs::write(&config, OPENSSL_CONFIG).unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let (ca_crt, _) = self_signed(dir.path(), "ca", "idpb test CA", "ca_ext");
        let server_key = generate_key(dir.path(), "server");
        let csr = ["req", "-new", "-config", CONFIG_FILE, "-key", "server.key", "-subj", "/CN=localhost"];
        openssl(dir.path(), &csr, "server.csr");
        let serial = serial();
        let sign = [
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "825",
            "-extfile",
            CONFIG_FILE,
            "-extensions",
            "server_ext",
        ];
        let server_crt = openssl(dir.path(), &sign, "server.crt");

        let trust_dir = dir.subdir("trust");
        fs::copy(&ca_crt, trust_dir.join("ca.crt")).unwrap_or_else(|e| panic!("cannot copy the CA cert: {e}"));
        TestCa { dir, ca_crt, server_crt, server_key, trust_dir }
    }

    /// A self-signed ES256 certificate and key, `NAME.crt` and `NAME.key` in this CA's dir, for signing
    /// (the token server's JWTs), not for TLS.
    pub fn signing_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        self_signed(self.dir.path(), name, name, "signing_ext")
    }
}

const CONFIG_FILE: &str = "openssl.cnf";

/// `NAME.crt` and `NAME.key` in `dir` (which holds the config); file names are relative to `dir`.
fn self_signed(dir: &Path, name: &str, common_name: &str, extensions: &str) -> (PathBuf, PathBuf) {
    let key = generate_key(dir, name);
    let key_file = format!("{name}.key");
    let subject = format!("/CN={common_name}");
    let args = [
        "req",
        "-x509",
        "-new",
        "-config",
        CONFIG_FILE,
        "-extensions",
        extensions,
        "-key",
        &key_file,
        "-days",
        "3650",
        "-subj",
        &subject,
    ];
    (openssl(dir, &args, &format!("{name}.crt")), key)
}

/// An EC P-256 key in `dir/NAME.key`.
fn generate_key(dir: &Path, name: &str) -> PathBuf {
    openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], &format!("{name}.key"))
}

/// `openssl ARGS -out OUT` run in `dir`; returns `dir/OUT`, panics with openssl's output on failure.
fn openssl(dir: &Path, args: &[&str], out: &str) -> PathBuf {
    run(Command::new("openssl").args(args).args(["-out", out]).current_dir(dir)).assert_success();
    dir.join(out)
}

/// A positive serial that differs between runs, so a client caching certificates never sees two alike.
fn serial() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("0x{:x}{:04x}", nanos & 0xffff_ffff_ffff, std::process::id() & 0xffff)
}
