//! A throwaway certificate authority, made with the `openssl` CLI.
//!
//! rustls (through webpki) is stricter than curl or Go: it wants v3 certificates, a subjectAltName on the
//! leaf (the CN is ignored), `CA:FALSE` plus `serverAuth` on the leaf and a CA that is not itself the leaf.
//! So the CA and the server certificate are two EC P-256 keys with the extensions spelled out in one
//! config file below, and the server certificate names every way a test reaches a loopback server
//! (`localhost`, `127.0.0.1`, `::1`). Keys are PKCS#8 PEM, which Go, Python and rustls all read.
//!
//! For tests of what a client says about a bad certificate, [`TestCa::issue`] signs more server
//! certificates with any names and any validity window. OpenSSL 3.0's `x509 -req` only takes `-days` from
//! now, so these go through `openssl ca`, whose `-startdate`/`-enddate` set both ends (an expired or a
//! not-yet-valid certificate), with a minimal CA database (`ca-db/`) in the CA's dir.
//! [`TestCa::self_signed_server`] makes a leaf that is its own issuer, and [`certificate_fingerprint`] and
//! [`certificate_validity`] read back what `openssl x509` says of a certificate, to compare with what a
//! program printed.

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
[ca]
default_ca = test_ca
[test_ca]
database = ca-db/index.txt
new_certs_dir = ca-db
serial = ca-db/serial
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
[policy_any]
commonName = supplied
[signing_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
";

/// The subjectAltName of the default server certificate: every way a test reaches a loopback server.
pub const LOOPBACK_NAMES: &str = "DNS:localhost, IP:127.0.0.1, IP:::1";
/// The subject CN of [`TestCa::new`]'s CA.
pub const TEST_CA_NAME: &str = "idpb test CA";

/// A TLS server certificate (PEM, the leaf alone) and its key.
#[derive(Clone, Debug)]
pub struct ServerCert {
    pub crt: PathBuf,
    pub key: PathBuf,
}

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
    /// A CA called [`TEST_CA_NAME`].
    pub fn new() -> TestCa {
        TestCa::named(TEST_CA_NAME)
    }

    /// A CA whose subject (and issuer) is `CN=common_name`, e.g. to tell two CAs apart in a message.
    pub fn named(common_name: &str) -> TestCa {
        require_tool("openssl");
        let dir = TempDir::new("ca");
        let config = dir.join(CONFIG_FILE);
        fs::write(&config, OPENSSL_CONFIG).unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let (ca_crt, _) = self_signed(dir.path(), "ca", common_name, "ca_ext");
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

    /// The server certificate made with the CA (`localhost`, `127.0.0.1`, `::1`, valid from now).
    pub fn server(&self) -> ServerCert {
        ServerCert { crt: self.server_crt.clone(), key: self.server_key.clone() }
    }

    /// A server certificate signed by this CA, `NAME.crt` and `NAME.key` in its dir, for subject
    /// `CN=common_name` with the subjectAltName `names` (e.g. [`LOOPBACK_NAMES`] or `DNS:other.example`),
    /// valid from `not_before` to `not_after` (`YYYYMMDDHHMMSSZ`, UTC), or from now for 825 days when
    /// `validity` is `None`. The extensions are those of the default server certificate.
    pub fn issue(&self, name: &str, common_name: &str, names: &str, validity: Option<(&str, &str)>) -> ServerCert {
        let dir = self.dir.path();
        let db = dir.join("ca-db");
        if !db.join("index.txt").exists() {
            fs::create_dir_all(&db).unwrap_or_else(|e| panic!("cannot create {}: {e}", db.display()));
            fs::write(db.join("index.txt"), "").unwrap_or_else(|e| panic!("cannot create the CA database: {e}"));
            let first = serial();
            let hex = first.trim_start_matches("0x");
            // `openssl ca` wants an even number of hex digits.
            let padded = if hex.len() % 2 == 1 { format!("0{hex}") } else { hex.to_string() };
            fs::write(db.join("serial"), format!("{padded}\n"))
                .unwrap_or_else(|e| panic!("cannot write the serial: {e}"));
        }
        let extensions = format!("{name}.ext");
        let section = server_extensions(names);
        fs::write(dir.join(&extensions), section).unwrap_or_else(|e| panic!("cannot write {extensions}: {e}"));
        let key = generate_key(dir, name);
        let (key_file, csr) = (format!("{name}.key"), format!("{name}.csr"));
        let subject = format!("/CN={common_name}");
        openssl(dir, &["req", "-new", "-config", CONFIG_FILE, "-key", &key_file, "-subj", &subject], &csr);
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            CONFIG_FILE,
            "-cert",
            "ca.crt",
            "-keyfile",
            "ca.key",
            "-in",
            &csr,
            "-extfile",
            &extensions,
            "-extensions",
            "ext",
        ];
        match validity {
            Some((not_before, not_after)) => args.extend(["-startdate", not_before, "-enddate", not_after]),
            None => args.extend(["-days", "825"]),
        }
        let crt = openssl(dir, &args, &format!("{name}.crt"));
        ServerCert { crt, key }
    }

    /// A self-signed server certificate for `localhost`, `127.0.0.1` and `::1` (subject and issuer
    /// `CN=localhost`, `CA:FALSE`), `NAME.crt` and `NAME.key` in this CA's dir but not signed by the CA.
    pub fn self_signed_server(&self, name: &str) -> ServerCert {
        let (crt, key) = self_signed(self.dir.path(), name, "localhost", "server_ext");
        ServerCert { crt, key }
    }
}

/// An extension file for `openssl ca -extfile F -extensions ext`: a server leaf named by `names`.
fn server_extensions(names: &str) -> String {
    format!(
        "[ext]\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = {names}\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid:always\n"
    )
}

/// The SHA-256 fingerprint of the (first) certificate in `cert` as `openssl x509 -noout -fingerprint
/// -sha256` prints it after `=`: upper-case hex pairs joined by `:`.
pub fn certificate_fingerprint(cert: &Path) -> String {
    let output = run(Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(cert));
    output.assert_success();
    let line = output.stdout.trim();
    let (_, fingerprint) = line.split_once('=').unwrap_or_else(|| panic!("no fingerprint in {line:?}"));
    fingerprint.to_string()
}

/// notBefore and notAfter of the (first) certificate in `cert` as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn certificate_validity(cert: &Path) -> (String, String) {
    let output = run(Command::new("openssl").args(["x509", "-noout", "-startdate", "-enddate", "-in"]).arg(cert));
    output.assert_success();
    let field = |name: &str| {
        let line = output.stdout.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix('='));
        openssl_date(line.unwrap_or_else(|| panic!("no {name} in {output}")))
    };
    (field("notBefore"), field("notAfter"))
}

/// `Jan  1 00:00:00 2020 GMT` -> `2020-01-01 00:00:00`.
fn openssl_date(date: &str) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let words: Vec<&str> = date.split_whitespace().collect();
    let [month, day, time, year, "GMT"] = words[..] else { panic!("unexpected openssl date {date:?}") };
    let month = MONTHS.iter().position(|m| *m == month).unwrap_or_else(|| panic!("no month in {date:?}")) + 1;
    let day: u32 = day.parse().unwrap_or_else(|e| panic!("no day in {date:?}: {e}"));
    format!("{year}-{month:02}-{day:02} {time}")
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
