//! Certificate failures in words, with the fix that fits the cause.
//!
//! rustls reports *that* a certificate failed and a little context (the expiry time, the names it holds);
//! its `Display` prints Rust debug structs, and "unknown issuer" does not say whose certificate it was. So
//! when a handshake fails on the certificate, [`describe`] opens one more connection to the same server
//! with a verifier that only records the chain the server presents and then aborts, reads the leaf with
//! [`super::x509`], and puts the rustls verdict and the certificate's own fields into one sentence: an
//! expiry with its date, a name mismatch with the names the certificate does hold (no CA advice, the CA was
//! fine), an unknown issuer with that issuer's name, a self-signed certificate as such. The extra
//! connection costs one handshake on a path that has already failed; when it cannot be made, the words
//! come from rustls' context alone.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::x509::{CertInfo, format_time};

/// How long the extra handshake may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The one line for a TLS failure with `host` (`name[:port]`).
pub fn describe(host: &str, err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(c) => certificate(host, c, peer_chain(host, PROBE_TIMEOUT).as_deref()),
        rustls::Error::AlertReceived(alert) => {
            let what = words(&format!("{alert:?}"));
            match alert {
                rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::AccessDenied => format!(
                    "{host} refused the TLS connection ({what}): it wants a client certificate it accepts; put \
                     NAME.cert and NAME.key in ~/.config/docker/certs.d/{host}/"
                ),
                _ => format!("{host} refused the TLS connection ({what})"),
            }
        }
        rustls::Error::PeerIncompatible(why) => format!(
            "{host} and this client have no TLS version or cipher suite in common ({})",
            words(&format!("{why:?}"))
        ),
        _ => format!("TLS with {host} failed: {}", words(&err.to_string())),
    }
}

/// The sentence for a rejected certificate, `chain` being what the server presented (leaf first).
fn certificate(host: &str, err: &CertificateError, chain: Option<&[CertInfo]>) -> String {
    let leaf = chain.and_then(|c| c.first());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let subject = leaf.map(|l| format!(" ({})", l.subject)).unwrap_or_default();
    let insecure = "or skip verification with --insecure";
    match err {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            let not_after = match err {
                CertificateError::ExpiredContext { not_after, .. } => Some(not_after.as_secs() as i64),
                _ => None,
            };
            // webpki reports the first certificate of the path that expired: the leaf, or a CA above it.
            let whose = match (leaf, not_after) {
                (Some(l), Some(t)) if l.not_after != t => match chain.and_then(|c| c.iter().find(|x| x.not_after == t))
                {
                    Some(ca) => format!("the CA certificate {} in its chain", ca.subject),
                    None => "a CA certificate that vouches for it".to_string(),
                },
                _ => format!("the TLS certificate of {host}{subject}"),
            };
            let when = not_after.or(leaf.map(|l| l.not_after));
            let date = when.map(|t| format!(" on {}", format_time(t))).unwrap_or_default();
            let whose = if whose.starts_with("the TLS") { whose } else { format!("{whose} of {host}") };
            format!(
                "{whose} expired{date} (it is now {}); the registry needs a renewed certificate (for idpbuilder, \
                 recreate the cluster), or this machine's clock is wrong",
                format_time(now)
            )
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            let not_before = match err {
                CertificateError::NotValidYetContext { not_before, .. } => Some(not_before.as_secs() as i64),
                _ => leaf.map(|l| l.not_before),
            };
            let date = not_before.map(|t| format!(" until {}", format_time(t))).unwrap_or_default();
            format!(
                "the TLS certificate of {host}{subject} is not valid{date} (it is now {}); check this machine's \
                 clock, or the registry's certificate was issued with a wrong start date",
                format_time(now)
            )
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            let mut names = leaf.map(CertInfo::names).unwrap_or_default();
            if names.is_empty()
                && let CertificateError::NotValidForNameContext { presented, .. } = err
            {
                names = presented.iter().map(|n| crate::progress::escaped(&presented_name(n))).collect();
            }
            let name = host_name(host);
            let held = if names.is_empty() {
                "holds no DNS name or address".to_string()
            } else {
                format!("is for {}", names.join(", "))
            };
            format!(
                "the TLS certificate of {host} {held}, not {name}; reach the registry by a name the certificate \
                 holds, or have its certificate reissued with {name} in its subjectAltName"
            )
        }
        CertificateError::UnknownIssuer => match leaf {
            Some(l) if l.self_issued && chain.is_some_and(|c| c.len() == 1) => format!(
                "{host} presents a self-signed certificate ({}), which no trusted CA vouches for; trust it with \
                 `docker-idpb trust {host} --from-file CERT.pem` (into certs.d) or --ca-file CERT.pem, {insecure}",
                l.subject
            ),
            Some(l) => {
                let top = chain.and_then(|c| c.last()).unwrap_or(l);
                format!(
                    "the TLS certificate of {host}{subject} was issued by \"{}\", a CA not trusted here; install \
                     that CA with `docker-idpb trust {host} --from-file CA.pem` (into certs.d) or pass --ca-file CA.pem, {insecure}",
                    top.issuer
                )
            }
            None => format!(
                "the TLS certificate of {host} was issued by a CA not trusted here; install that CA with \
                 `docker-idpb trust {host} --from-file CA.pem` (into certs.d) or pass --ca-file CA.pem, {insecure}"
            ),
        },
        CertificateError::BadSignature => {
            // webpki finds the issuer by name: a bad signature means a trusted CA has the issuer's name but
            // another key, as when a cluster is re-created and its new CA keeps the old name.
            let issuer = leaf.map(|l| format!(" \"{}\"", l.issuer)).unwrap_or_default();
            format!(
                "the TLS certificate of {host}{subject} was not signed by the CA trusted here under its issuer's \
                 name{issuer} (a CA re-created with the same name, as by a new idpbuilder cluster?); install the \
                 current CA with `docker-idpb trust {host}` (or --from-file CA.pem) or pass --ca-file CA.pem, {insecure}"
            )
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => format!(
            "the TLS certificate of {host}{subject} is not meant for TLS servers (its extended key usage lacks \
             serverAuth); the registry needs a server certificate"
        ),
        CertificateError::Revoked => format!("the TLS certificate of {host}{subject} has been revoked"),
        CertificateError::BadEncoding => format!("the TLS certificate of {host} is malformed"),
        CertificateError::UnhandledCriticalExtension => {
            format!("the TLS certificate of {host}{subject} has a critical extension this client does not understand")
        }
        other => {
            let debug = format!("{other:?}");
            let innermost = debug.trim_start_matches("Other(").trim_start_matches("OtherError(").trim_end_matches(')');
            let why = words(innermost);
            if why.contains("end entity used as ca") {
                format!(
                    "a certificate in the chain {host} presents{subject} is used as a CA but is not one (its \
                     basicConstraints say CA:FALSE); the registry's certificate chain must be reissued"
                )
            } else if why.contains("ca used as end entity") {
                match leaf {
                    Some(l) if l.self_issued => format!(
                        "{host} presents a self-signed CA certificate ({}) as its own; the registry needs a \
                         server certificate signed by a CA, {insecure}",
                        l.subject
                    ),
                    _ => format!(
                        "{host} presents a CA certificate{subject} as its own; the registry needs a server \
                         certificate signed by that CA"
                    ),
                }
            } else {
                format!("the TLS certificate of {host}{subject} was rejected ({why})")
            }
        }
    }
}

/// A name from rustls' `presented` list as the certificate holds it: webpki gives Debug text such as
/// `DnsName("other.example")` or `IpAddress(127.0.0.1)`.
fn presented_name(n: &str) -> String {
    let inner = n.split_once('(').map_or(n, |(_, rest)| rest.trim_end_matches(')'));
    inner.trim_matches('"').to_string()
}

/// `name` of `name:port` (brackets kept off an IPv6 address).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        _ => host,
    }
}

/// Debug-style identifiers (`NotValidForNameContext { .. }`) as lower-case words, for the rare variants
/// with no sentence of their own: whatever the library adds later, no struct reaches the user.
fn words(s: &str) -> String {
    let head = s.split(['{', '(']).next().unwrap_or(s).trim();
    let mut out = String::new();
    for (i, c) in head.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 && !out.ends_with(' ') {
                out.push(' ');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    let out = out.replace(" context", "");
    crate::progress::escaped(out.trim())
}

/// Whether `host` answers a TLS handshake (it presented a certificate): to tell a user who asked for plain
/// HTTP that the port speaks TLS.
pub fn speaks_tls(host: &str, limit: Duration) -> bool {
    // A TLS server answers a ClientHello at once; a plain-HTTP one may wait for a request line that never
    // comes, so the question gets 2 s at most.
    peer_chain(host, limit.min(Duration::from_secs(2))).is_some()
}

/// The certificates `host` presents, leaf first, read by a handshake that stops after the server's
/// Certificate message, within `limit` in all. None when the server cannot be reached or presents nothing
/// readable in time.
fn peer_chain(host: &str, limit: Duration) -> Option<Vec<CertInfo>> {
    let deadline = Instant::now() + limit;
    let name = host_name(host);
    let port = if host.starts_with('[') {
        host.rsplit_once("]:").and_then(|(_, p)| p.parse().ok()).unwrap_or(443)
    } else {
        host.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(443)
    };
    let server_name = ServerName::try_from(name.to_string()).ok()?;
    let left = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
    // Every address the name resolves to, as the client that failed may have used any of them.
    let sock = (name, port).to_socket_addrs().ok()?.find_map(|addr| TcpStream::connect_timeout(&addr, left()?).ok())?;
    let mut sock = Bounded { sock, deadline };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder { provider: provider.clone(), chain: Mutex::new(Vec::new()) });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).ok()?;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) => break, // the server closed the connection
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let chain = recorder.chain.lock().ok()?.clone();
    let infos: Vec<CertInfo> = chain.iter().filter_map(|der| CertInfo::parse(der)).collect();
    (!infos.is_empty()).then_some(infos)
}

/// A socket whose every read and write gets only what is left of one deadline: a server that trickles a
/// byte at a time cannot stretch the probe (rustls' `complete_io` reads in a loop of its own).
struct Bounded {
    sock: TcpStream,
    deadline: Instant,
}

impl Bounded {
    fn left(&self) -> std::io::Result<Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(ErrorKind::TimedOut, "probe deadline"))
    }
}

impl std::io::Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.set_read_timeout(Some(self.left()?))?;
        self.sock.read(buf)
    }
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sock.set_write_timeout(Some(self.left()?))?;
        self.sock.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}

/// A verifier that records the presented chain and refuses it, so the probe never completes a session.
#[derive(Debug)]
struct Recorder {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Mutex<Vec<Vec<u8>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            chain.push(end_entity.to_vec());
            chain.extend(intermediates.iter().map(|c| c.to_vec()));
        }
        Err(rustls::Error::General("certificate recorded".into()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(subject: &str, issuer: &str) -> CertInfo {
        CertInfo {
            subject: subject.into(),
            issuer: issuer.into(),
            not_before: 1_577_836_800,
            not_after: 1_609_459_200,
            dns_names: vec!["other.example".into(), "*.other.example".into()],
            ip_addresses: vec![],
            is_ca: false,
            self_issued: subject == issuer,
            sha256: [0; 32],
        }
    }

    fn no_struct(s: &str) {
        for bad in ["{", "Context", "DnsName", "UnknownIssuer", "NotValidFor"] {
            assert!(!s.contains(bad), "{bad:?} in {s}");
        }
    }

    #[test]
    fn each_cause_has_its_words() {
        let host = "localhost:5000";
        let l = leaf("CN=localhost", "CN=idpb test CA");
        let expired = CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_000)),
            not_after: UnixTime::since_unix_epoch(Duration::from_secs(1_609_459_200)),
        };
        let m = certificate(host, &expired, Some(std::slice::from_ref(&l)));
        assert!(m.contains("expired on 2021-01-01 00:00:00 UTC"), "{m}");
        no_struct(&m);
        let m = certificate(host, &expired, None);
        assert!(m.contains("expired on 2021-01-01"), "{m}");

        let name = CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("localhost").unwrap(),
            presented: vec!["DnsName(\"other.example\")".into()],
        };
        let m = certificate(host, &name, Some(std::slice::from_ref(&l)));
        assert!(m.contains("is for other.example, *.other.example, not localhost"), "{m}");
        assert!(!m.contains("--ca-file") && !m.contains("trust"), "{m}");
        no_struct(&m);

        let m = certificate(host, &CertificateError::UnknownIssuer, Some(std::slice::from_ref(&l)));
        assert!(m.contains("issued by \"CN=idpb test CA\"") && m.contains("docker-idpb trust localhost:5000"), "{m}");
        let selfie = leaf("CN=me", "CN=me");
        let m = certificate(host, &CertificateError::UnknownIssuer, Some(std::slice::from_ref(&selfie)));
        assert!(m.contains("self-signed certificate (CN=me)"), "{m}");

        let later = CertificateError::NotValidYetContext {
            time: UnixTime::since_unix_epoch(Duration::from_secs(1_500_000_000)),
            not_before: UnixTime::since_unix_epoch(Duration::from_secs(1_577_836_800)),
        };
        let m = certificate(host, &later, None);
        assert!(m.contains("not valid until 2020-01-01 00:00:00 UTC"), "{m}");
        no_struct(&m);
    }

    #[test]
    fn unknown_variants_become_words() {
        assert_eq!(
            words("UnsupportedSignatureAlgorithmContext { signature_algorithm_id: [1] }"),
            "unsupported signature algorithm"
        );
        assert_eq!(words("CaUsedAsEndEntity"), "ca used as end entity");
        assert_eq!(host_name("[::1]:5000"), "::1");
        assert_eq!(presented_name("DnsName(\"other.example\")"), "other.example");
        assert_eq!(presented_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        let name = CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("localhost").unwrap(),
            presented: vec!["DnsName(\"other.example\")".into()],
        };
        let m = certificate("localhost:1", &name, None);
        assert!(m.contains("is for other.example, not localhost"), "{m}");
        assert_eq!(host_name("localhost:5000"), "localhost");
    }
}
