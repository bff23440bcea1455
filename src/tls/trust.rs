//! Installing a registry's CA where Docker and docker-idpb look for it: `certs.d/HOST/ca.crt`.
//!
//! The per-user directory (`$XDG_CONFIG_HOME/docker/certs.d`, what rootless Docker reads and
//! [`super::cert_dirs`] reads second) needs no privileges; `--system` writes `/etc/docker/certs.d`, which a
//! Docker engine reads too. Only the certificates of the source are written, re-encoded from DER, so a PEM
//! that also holds a private key (idpbuilder's Secret does, under another key; a user's bundle may) never
//! copies that key into a world-readable file. The file replaces any earlier one atomically. The host is
//! checked to be a registry host before it becomes a path component, so `../` cannot aim the write
//! elsewhere.

use std::path::{Path, PathBuf};

use super::x509::CertInfo;
use crate::error::{Error, Result};

/// Which certs.d tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `$XDG_CONFIG_HOME/docker/certs.d` (default `~/.config/docker/certs.d`).
    User,
    /// `/etc/docker/certs.d`, read by the Docker engine too.
    System,
}

/// A CA ready to install: its PEM (certificates only) and what they say.
#[derive(Debug, Clone)]
pub struct Ca {
    pub pem: Vec<u8>,
    pub certificates: Vec<CertInfo>,
    /// Where it came from, for messages.
    pub source: String,
}

impl Ca {
    /// The certificates of `pem`; an error naming `source` when there is none or one cannot be read.
    pub fn from_pem(pem: &[u8], source: &str) -> Result<Ca> {
        let shown = crate::progress::escaped(source);
        let mut certificates = Vec::new();
        let mut out = String::new();
        for cert in super::parse_certs(pem, source)? {
            let der = cert.der();
            let info = CertInfo::parse(der).ok_or_else(|| {
                Error::Tls(format!("{shown} holds a certificate that is not valid X.509; check the file"))
            })?;
            certificates.push(info);
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = crate::credentials::base64_encode(der);
            for line in b64.as_bytes().chunks(64) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        Ok(Ca { pem: out.into_bytes(), certificates, source: source.to_string() })
    }

    /// Reads a PEM file (at most [`super::CA_FILE_CAP`]).
    pub fn from_file(path: &Path) -> Result<Ca> {
        let pem = crate::atomic::read_capped(path, super::CA_FILE_CAP).map_err(|e| e.for_path(path, "read CA file"))?;
        Ca::from_pem(&pem, &path.display().to_string())
    }
}

/// `HOST[:PORT]` as a directory name, refusing anything that is not a registry host.
pub fn checked_host(host: &str) -> Result<String> {
    let trimmed = host.trim();
    let trimmed = trimmed.split_once("://").map_or(trimmed, |(_, rest)| rest);
    let host = trimmed.strip_suffix('/').unwrap_or(trimmed).to_ascii_lowercase();
    let ok = !host.is_empty()
        && !host.starts_with(['.', '-', ':'])
        && !host.contains("..")
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'));
    if !ok {
        return Err(Error::usage(format!(
            "invalid registry host {:?}: give HOST or HOST:PORT, e.g. gitea.cnoe.localtest.me:8443",
            crate::progress::escaped(&host)
        )));
    }
    Ok(host)
}

/// Where the CA for `host` goes in `scope`.
pub fn ca_path(host: &str, scope: Scope) -> Result<PathBuf> {
    let root = match scope {
        Scope::System => PathBuf::from("/etc/docker/certs.d"),
        Scope::User => {
            let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
            let config =
                env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config"))).ok_or_else(|| {
                    Error::usage("cannot find your config directory: set XDG_CONFIG_HOME or HOME, or use --system")
                })?;
            config.join("docker/certs.d")
        }
    };
    Ok(root.join(checked_host(host)?).join("ca.crt"))
}

/// Writes `ca` as `host`'s CA in `scope`; the path written.
pub fn install(host: &str, ca: &Ca, scope: Scope) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = ca_path(host, scope)?;
    let readable = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(p, "set the mode of", e))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
        // A certificate is public: whatever the umask, every user (and a Docker engine) must read it, or
        // a run as another user would find no CA and fall back to an unverified connection.
        readable(dir, 0o755)?;
        if let (Scope::System, Some(root)) = (scope, dir.parent()) {
            readable(root, 0o755)?; // /etc/docker/certs.d, read by every user's docker-idpb
        }
    }
    crate::atomic::write(&path, &ca.pem, 0o644)?;
    readable(&path, 0o644)?;
    Ok(path)
}

/// Removes `host`'s CA in `scope` (and its directory when that leaves it empty); the path removed.
pub fn remove(host: &str, scope: Scope) -> Result<PathBuf> {
    let path = ca_path(host, scope)?;
    match std::fs::remove_file(&path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir); // fails, as it should, when other files remain
            }
            Ok(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Tls(format!(
            "no CA is installed for {host} at {}{}",
            crate::progress::escaped(&path.display().to_string()),
            if scope == Scope::User { " (one installed with --system is removed with --system)" } else { "" }
        ))),
        Err(e) => Err(Error::io(&path, "remove", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = include_str!("testdata/unit-ca.pem");

    #[test]
    fn only_certificates_are_kept() {
        let with_key = format!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{PEM}");
        let ca = Ca::from_pem(with_key.as_bytes(), "bundle.pem").unwrap();
        let kept = String::from_utf8(ca.pem.clone()).unwrap();
        assert!(!kept.contains("PRIVATE KEY"));
        let ders = |pem: &[u8]| -> Vec<Vec<u8>> {
            crate::tls::parse_certs(pem, "x").unwrap().iter().map(|c| c.der().to_vec()).collect()
        };
        assert_eq!(ders(&ca.pem), ders(PEM.as_bytes()));
        assert_eq!(ca.certificates[0].subject, "CN=idpb unit CA, O=idpb");
        let err = Ca::from_pem(b"hello", "x.pem").unwrap_err().to_string();
        assert!(err.contains("x.pem holds no PEM certificate"), "{err}");
    }

    #[test]
    fn hosts_cannot_escape_certs_d() {
        for bad in ["../etc", "a/b", "", "..", "-x", "host name", "a\nb"] {
            assert!(checked_host(bad).is_err(), "{bad:?}");
        }
        assert_eq!(checked_host("https://Gitea.cnoe.localtest.me:8443/").unwrap(), "gitea.cnoe.localtest.me:8443");
        assert_eq!(checked_host("[::1]:5000").unwrap(), "[::1]:5000");
    }
}
