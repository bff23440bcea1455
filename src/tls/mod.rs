//! Which transport to use for a registry, by Docker's rules, and the rustls trust it needs.
//!
//! Trust is the Mozilla roots (embedded, so a static binary in a scratch image needs no files) plus, in
//! Docker's and containers' order, `SSL_CERT_FILE`, every `*.crt` in `/etc/docker/certs.d/HOST[:PORT]/`,
//! `$XDG_CONFIG_HOME/docker/certs.d/...`, `/etc/containers/certs.d/...`, `~/.config/containers/certs.d/...`,
//! and `--ca-file`. A `NAME.cert` + `NAME.key` pair in one of those directories is the client certificate.
//! Which scheme to try is a [`Transport`] decision made once per host. A loopback registry (127.0.0.0/8,
//! ::1, `localhost`, `*.localtest.me`) with a CA of its own (a `*.crt` in one of its certs.d directories,
//! or the idpbuilder cluster's CA fetched for it) is verified like any other, with no fallback: that is
//! better than Docker, which never verifies loopback, and it is what `docker idpb trust` sets up. A
//! certs.d directory that exists but cannot be read is an error, never "no CA". `--ca-file` is given for
//! the whole command, so it makes every loopback registry of the command a verified one (a push to a
//! TLS registry and a plain-HTTP one at once puts the CA in the first's certs.d instead). A loopback
//! registry with no CA is treated as Docker treats it, HTTPS without verification and then plain HTTP, and
//! the note that says so names `docker idpb trust`. `--insecure` does that for any host; `--plain-http` is
//! HTTP only; everything else is verified HTTPS with no fallback, and a verification failure is an error in
//! words ([`diagnose`]). [`x509`] reads certificates to describe them; [`trust`] installs and removes CAs.

pub mod diagnose;
pub mod trust;
pub mod x509;

use std::fs;
use std::path::{Path, PathBuf};

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::error::{Error, Result};
use crate::reference::is_loopback_host;

/// TLS-related flags of a command.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// `--insecure`: skip verification and allow plain HTTP for every registry.
    pub insecure: bool,
    /// `--plain-http`: use HTTP.
    pub plain_http: bool,
    /// `--ca-file`: extra CA certificates (PEM).
    pub ca_files: Vec<PathBuf>,
    /// `--tls-verify`: `Some(true)` forces verification even on loopback, `Some(false)` is `--insecure`.
    pub verify: Option<bool>,
    /// CAs obtained for this host at connect time (the idpbuilder cluster's), trusted like `--ca-file`.
    pub anchors: Vec<Anchor>,
}

/// A CA certificate held in memory, with where it came from (for messages).
#[derive(Debug, Clone)]
pub struct Anchor {
    pub source: String,
    pub pem: Vec<u8>,
}

/// How to talk to one registry host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS with verification.
    Https,
    /// HTTPS without verification, falling back to HTTP if the server does not speak TLS.
    InsecureHttps,
    /// Plain HTTP.
    Http,
}

impl TlsOptions {
    /// The transport for `host` (with optional `:port`). An error when one of its certs.d directories
    /// cannot be read: a CA that may be there must not turn into "no CA", hence an unverified connection.
    pub fn transport(&self, host: &str) -> Result<Transport> {
        Ok(if self.plain_http {
            Transport::Http
        } else if self.verify == Some(true) {
            Transport::Https
        } else if self.insecure || self.verify == Some(false) {
            Transport::InsecureHttps
        } else if !is_loopback(host)
            || !self.anchors.is_empty()
            || !self.ca_files.is_empty()
            || !installed_cas(host)?.is_empty()
        {
            // A CA given (certs.d, --ca-file, or fetched from the idpbuilder cluster): verified, no fallback.
            Transport::Https
        } else {
            Transport::InsecureHttps
        })
    }

    /// Whether `host` would be reached unverified only because it is loopback: the case where fetching a
    /// CA for it (idpbuilder's) turns the connection into a verified one.
    pub fn loopback_unverified(&self, host: &str) -> Result<bool> {
        Ok(!self.plain_http
            && !self.insecure
            && self.verify.is_none()
            && self.transport(host)? == Transport::InsecureHttps)
    }

    /// The rustls configuration for `host`.
    pub fn config(&self, host: &str, transport: &Transport) -> Result<TlsConfig> {
        let mut builder = TlsConfig::builder();
        if *transport == Transport::InsecureHttps {
            builder = builder.disable_verification(true);
        }
        let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
            // A missing SSL_CERT_FILE is ignored, as OpenSSL does; an unreadable one is an error.
            let file = PathBuf::from(file);
            if file.exists() {
                roots.extend(read_certs(&file)?);
            }
        }
        let mut client = None;
        for dir in cert_dirs(host) {
            let mut names = dir_entries(&dir)?;
            names.sort();
            for path in names {
                match path.extension().and_then(|e| e.to_str()) {
                    Some("crt") => roots.extend(read_certs(&path)?),
                    Some("cert") if client.is_none() => {
                        let key = path.with_extension("key");
                        if !key.exists() {
                            return Err(Error::Tls(format!(
                                "client certificate {} has no matching key {} (add it or remove the .cert)",
                                path.display(),
                                key.display()
                            )));
                        }
                        client = Some(ClientCert::new_with_certs(&read_certs(&path)?, read_key(&key)?));
                    }
                    _ => {}
                }
            }
        }
        for file in &self.ca_files {
            roots.extend(read_certs(file)?);
        }
        for anchor in &self.anchors {
            roots.extend(parse_certs(&anchor.pem, &anchor.source)?);
        }
        Ok(builder.root_certs(RootCerts::new_with_certs(&roots)).client_cert(client).build())
    }
}

/// Whether `host` is loopback as Docker decides it: by name (127.0.0.0/8, ::1, localhost, *.localtest.me)
/// or because every address it resolves to is loopback.
pub fn is_loopback(host: &str) -> bool {
    is_loopback_host(host) || resolves_to_loopback(host)
}

/// Whether every address `host` resolves to is loopback (Docker decides by address, so a name mapped to
/// 127.0.0.1 in /etc/hosts counts). A name that does not resolve is not loopback.
fn resolves_to_loopback(host: &str) -> bool {
    use std::net::ToSocketAddrs;
    let with_port = if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !host.ends_with(']') {
        host.to_string()
    } else {
        format!("{host}:443")
    };
    match with_port.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// The `*.crt` files in `host`'s certs.d directories; an error for a directory that exists but cannot
/// be read.
pub fn installed_cas(host: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for dir in cert_dirs(host) {
        let mut files: Vec<PathBuf> =
            dir_entries(&dir)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "crt")).collect();
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

/// The entries of a certs.d directory: none when it does not exist, an error when it cannot be listed.
fn dir_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            entries.map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, "read CA directory", err))).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::NotADirectory => {
            Ok(Vec::new())
        }
        Err(e) => Err(Error::io(dir, "read CA directory", e)),
    }
}

/// The certs.d directories consulted for `host`, in order.
pub fn cert_dirs(host: &str) -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let config_home = env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config")));
    let mut dirs = vec![Path::new("/etc/docker/certs.d").join(host)];
    if let Some(c) = &config_home {
        dirs.push(c.join("docker/certs.d").join(host));
    }
    dirs.push(Path::new("/etc/containers/certs.d").join(host));
    if let Some(c) = &config_home {
        dirs.push(c.join("containers/certs.d").join(host));
    }
    dirs
}

/// The largest CA file read: a bundle of every public root is about 200 KiB.
pub const CA_FILE_CAP: u64 = 4 * 1024 * 1024;

fn read_certs(path: &Path) -> Result<Vec<Certificate<'static>>> {
    let pem = crate::atomic::read_capped(path, CA_FILE_CAP).map_err(|e| e.for_path(path, "read CA file"))?;
    parse_certs(&pem, &path.display().to_string())
}

/// The certificates of a PEM text; `source` names it in errors.
pub fn parse_certs(pem: &[u8], source: &str) -> Result<Vec<Certificate<'static>>> {
    let path = crate::progress::escaped(source);
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(Error::Tls(format!("{path} is not a valid PEM certificate file: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(Error::Tls(format!("{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKey<'static>> {
    let pem = fs::read(path).map_err(|e| Error::io(path, "read key", e))?;
    PrivateKey::from_pem(&pem)
        .map_err(|e| Error::Tls(format!("{} is not a valid PEM private key: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TlsOptions {
        fn transport_ok(&self, host: &str) -> Transport {
            self.transport(host).unwrap()
        }
    }

    #[test]
    fn transport_rules() {
        let default = TlsOptions::default();
        assert_eq!(default.transport_ok("registry.example.com"), Transport::Https);
        assert_eq!(default.transport_ok("127.0.0.1:5000"), Transport::InsecureHttps);
        assert_eq!(default.transport_ok("gitea.cnoe.localtest.me:8443"), Transport::InsecureHttps);
        assert_eq!(default.transport_ok("[::1]:5000"), Transport::InsecureHttps);
        let verify = TlsOptions { verify: Some(true), ..Default::default() };
        assert_eq!(verify.transport_ok("127.0.0.1:5000"), Transport::Https);
        let insecure = TlsOptions { insecure: true, ..Default::default() };
        assert_eq!(insecure.transport_ok("registry.example.com"), Transport::InsecureHttps);
        let plain = TlsOptions { plain_http: true, ..Default::default() };
        assert_eq!(plain.transport_ok("registry.example.com"), Transport::Http);
        let ca = TlsOptions { ca_files: vec!["ca.crt".into()], ..Default::default() };
        assert_eq!(ca.transport_ok("127.0.0.1:5999"), Transport::Https);
        assert_eq!(ca.transport_ok("registry.example.com"), Transport::Https);
        let anchor = TlsOptions { anchors: vec![Anchor { source: "x".into(), pem: vec![] }], ..Default::default() };
        assert_eq!(anchor.transport_ok("localhost:5999"), Transport::Https);
        assert!(
            !anchor.loopback_unverified("localhost:5999").unwrap()
                && default.loopback_unverified("localhost:5999").unwrap()
        );
    }

    #[test]
    fn bad_ca_file_is_named() {
        let dir = std::env::temp_dir().join(format!("idpb-tls-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.crt");
        fs::write(&f, "not a cert").unwrap();
        let opts = TlsOptions { ca_files: vec![f.clone()], ..Default::default() };
        let err = opts.config("example.com", &Transport::Https).unwrap_err().to_string();
        assert!(err.contains("bad.crt") && err.contains("no PEM certificate"), "{err}");
        let missing = TlsOptions { ca_files: vec![dir.join("missing.crt")], ..Default::default() };
        assert!(missing.config("example.com", &Transport::Https).unwrap_err().to_string().contains("missing.crt"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
