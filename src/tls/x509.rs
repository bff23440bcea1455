//! Just enough of X.509 to talk about a certificate: subject, issuer, validity, names, whether it is a CA,
//! and its SHA-256 fingerprint.
//!
//! rustls and webpki verify certificates but do not describe them, and a full parser (x509-parser and
//! its nom/asn1-rs stack) would more than double the dependency tree for five fields. DER is a tag-length-
//! value format; this reader walks the few structures named in RFC 5280 §4.1 and ignores the rest. It is
//! used to explain, never to decide trust: verification stays with webpki, so a certificate this reader
//! misreads can only be described badly, not accepted.

use std::fmt::Write as _;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject as `CN=..., O=...`, in the certificate's order.
    pub subject: String,
    pub issuer: String,
    /// Seconds since the epoch (negative before 1970).
    pub not_before: i64,
    pub not_after: i64,
    /// subjectAltName dNSName entries.
    pub dns_names: Vec<String>,
    /// subjectAltName iPAddress entries.
    pub ip_addresses: Vec<IpAddr>,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// The issuer and subject are the same name: the certificate signed itself.
    pub self_issued: bool,
    /// SHA-256 of the DER encoding.
    pub sha256: [u8; 32],
}

impl CertInfo {
    /// Reads a DER certificate; None when it is not one.
    pub fn parse(der: &[u8]) -> Option<CertInfo> {
        let (cert, _) = Tlv::read(der)?;
        let (tbs, _) = Tlv::read(cert.expect(SEQUENCE)?)?;
        let mut rest = tbs.expect(SEQUENCE)?;
        let (mut field, mut after) = Tlv::read(rest)?;
        if field.tag == 0xa0 {
            // [0] EXPLICIT version
            (field, after) = Tlv::read(after)?;
        }
        // field = serialNumber
        field.expect(INTEGER)?;
        let (_signature, after) = Tlv::read(after)?;
        let (issuer, after) = Tlv::read(after)?;
        let (validity, after) = Tlv::read(after)?;
        let (subject, after) = Tlv::read(after)?;
        let (_spki, after) = Tlv::read(after)?;
        rest = after;
        let (not_before, validity_rest) = Tlv::read(validity.expect(SEQUENCE)?)?;
        let (not_after, _) = Tlv::read(validity_rest)?;
        let mut info = CertInfo {
            subject: name(subject.expect(SEQUENCE)?)?,
            issuer: name(issuer.expect(SEQUENCE)?)?,
            not_before: time(&not_before)?,
            not_after: time(&not_after)?,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            is_ca: false,
            self_issued: issuer.value == subject.value,
            sha256: Sha256::digest(der).into(),
        };
        while let Some((field, after)) = Tlv::read(rest) {
            rest = after;
            if field.tag == 0xa3 {
                let (exts, _) = Tlv::read(field.value)?;
                extensions(exts.expect(SEQUENCE)?, &mut info);
            }
        }
        Some(info)
    }

    /// The fingerprint as OpenSSL prints it: upper-case hex pairs joined by colons.
    pub fn fingerprint(&self) -> String {
        let mut out = String::with_capacity(95);
        for (i, b) in self.sha256.iter().enumerate() {
            if i > 0 {
                out.push(':');
            }
            let _ = write!(out, "{b:02X}");
        }
        out
    }

    /// The names a client may reach the holder by: DNS names, then addresses (the CN is ignored by
    /// webpki, as by browsers, so it is not one of them).
    pub fn names(&self) -> Vec<String> {
        let mut names = self.dns_names.clone();
        names.extend(self.ip_addresses.iter().map(IpAddr::to_string));
        names
    }

    /// The subject's CN, else the whole subject: how a person names this certificate.
    pub fn short_name(&self) -> &str {
        common_name(&self.subject).unwrap_or(&self.subject)
    }

    pub fn issuer_short_name(&self) -> &str {
        common_name(&self.issuer).unwrap_or(&self.issuer)
    }
}

fn common_name(dn: &str) -> Option<&str> {
    dn.split(", ").find_map(|part| part.strip_prefix("CN="))
}

/// A time as `2026-12-01 13:14:17 UTC`.
pub fn format_time(secs: i64) -> String {
    crate::image::rfc3339_signed(secs).replace('T', " ").replace('Z', " UTC")
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;

/// One DER element.
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// The first element of `input` and what follows it.
    fn read(input: &'a [u8]) -> Option<(Tlv<'a>, &'a [u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // multi-byte tags never occur in the structures read here
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((Tlv { tag, value: &rest[..len] }, &rest[len..]))
    }

    fn expect(&self, tag: u8) -> Option<&'a [u8]> {
        (self.tag == tag).then_some(self.value)
    }
}

/// The elements of a constructed value.
fn elements(mut input: &[u8]) -> impl Iterator<Item = Tlv<'_>> {
    std::iter::from_fn(move || {
        let (tlv, rest) = Tlv::read(input)?;
        input = rest;
        Some(tlv)
    })
}

/// An RDNSequence as `CN=..., O=...`.
fn name(rdns: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    for rdn in elements(rdns) {
        for atv in elements(rdn.expect(SET)?) {
            let mut fields = elements(atv.expect(SEQUENCE)?);
            let oid = fields.next()?;
            let value = fields.next()?;
            let key = match oid.expect(OID)? {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x06] => "C".to_string(),
                [0x55, 0x04, 0x07] => "L".to_string(),
                [0x55, 0x04, 0x08] => "ST".to_string(),
                [0x55, 0x04, 0x0a] => "O".to_string(),
                [0x55, 0x04, 0x0b] => "OU".to_string(),
                [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".to_string(),
                other => dotted(other),
            };
            let text = match value.tag {
                // BMPString: UTF-16BE
                0x1e => {
                    let units: Vec<u16> =
                        value.value.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
                    String::from_utf16_lossy(&units)
                }
                _ => String::from_utf8_lossy(value.value).into_owned(),
            };
            parts.push(format!("{key}={}", crate::progress::escaped(&text)));
        }
    }
    Some(parts.join(", "))
}

fn dotted(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    arcs.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

/// UTCTime (`YYMMDDHHMMSSZ`, 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as seconds since the epoch.
fn time(t: &Tlv<'_>) -> Option<i64> {
    let s = std::str::from_utf8(t.value).ok()?;
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match t.tag {
        0x17 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| -> Option<i64> { rest.get(r)?.parse().ok() };
    let (month, day, hour, min, sec) = (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(crate::image::days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// subjectAltName and basicConstraints; other extensions are not needed to describe a certificate.
fn extensions(exts: &[u8], info: &mut CertInfo) {
    for ext in elements(exts) {
        let Some(body) = ext.expect(SEQUENCE) else { continue };
        let mut fields = elements(body);
        let Some(oid) = fields.next().and_then(|f| f.expect(OID)) else { continue };
        let mut value = fields.next();
        if value.as_ref().is_some_and(|v| v.tag == BOOLEAN) {
            value = fields.next(); // critical
        }
        let Some(value) = value.and_then(|v| v.expect(OCTET_STRING)) else { continue };
        let Some((inner, _)) = Tlv::read(value) else { continue };
        let Some(inner) = inner.expect(SEQUENCE) else { continue };
        match oid {
            [0x55, 0x1d, 0x11] => {
                for general in elements(inner) {
                    match general.tag {
                        0x82 => info.dns_names.push(crate::progress::escaped(&String::from_utf8_lossy(general.value))),
                        0x87 => match general.value.len() {
                            4 => info
                                .ip_addresses
                                .push(IpAddr::from(<[u8; 4]>::try_from(general.value).unwrap_or_default())),
                            16 => info
                                .ip_addresses
                                .push(IpAddr::from(<[u8; 16]>::try_from(general.value).unwrap_or_default())),
                            _ => {}
                        },
                        _ => {}
                    }
                }
            }
            [0x55, 0x1d, 0x13] => {
                if let Some(first) = elements(inner).next() {
                    info.is_ca = first.tag == BOOLEAN && first.value.first().is_some_and(|&b| b != 0);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 1
    /// -subj "/CN=idpb unit CA/O=idpb" -addext "subjectAltName=DNS:localhost,DNS:*.cnoe.localtest.me,IP:127.0.0.1"
    /// -addext basicConstraints=critical,CA:TRUE` and fixed validity (see the asserts).
    const PEM: &str = include_str!("testdata/unit-ca.pem");

    #[test]
    fn reads_the_fields_openssl_shows() {
        let certs = crate::tls::parse_certs(PEM.as_bytes(), "unit-ca.pem").expect("a PEM certificate");
        assert_eq!(certs.len(), 1);
        let info = CertInfo::parse(certs[0].der()).expect("parses");
        assert_eq!(info.subject, "CN=idpb unit CA, O=idpb");
        assert_eq!(info.issuer, info.subject);
        assert!(info.self_issued && info.is_ca);
        assert_eq!(info.dns_names, ["localhost", "*.cnoe.localtest.me"]);
        assert_eq!(info.ip_addresses, [IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(info.short_name(), "idpb unit CA");
        assert_eq!(format_time(info.not_before), include_str!("testdata/unit-ca.not-before").trim());
        assert_eq!(format_time(info.not_after), include_str!("testdata/unit-ca.not-after").trim());
        assert_eq!(info.fingerprint(), include_str!("testdata/unit-ca.sha256").trim());
    }

    #[test]
    fn times_and_garbage() {
        let utc = Tlv { tag: 0x17, value: b"491231235959Z" };
        assert_eq!(format_time(time(&utc).unwrap()), "2049-12-31 23:59:59 UTC");
        let generalized = Tlv { tag: 0x18, value: b"19700101000000Z" };
        assert_eq!(time(&generalized), Some(0));
        assert_eq!(format_time(time(&Tlv { tag: 0x17, value: b"600101000000Z" }).unwrap()), "1960-01-01 00:00:00 UTC");
        assert_eq!(time(&Tlv { tag: 0x17, value: b"501301000000Z" }), None);
        assert!(CertInfo::parse(b"").is_none());
        assert!(CertInfo::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert_eq!(dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]), "1.2.840.113549");
    }
}
