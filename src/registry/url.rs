//! URLs the registry client follows, parsed once with the HTTP client's own parser.
//!
//! Every URL that comes from a registry (an upload `Location`, a redirect, a token realm, a `Link` page) is
//! parsed here with `http::Uri`, the parser ureq itself uses, so the host we judge is the host ureq will
//! connect to: no decision is ever made on URL text (`http://tokens.example?.localtest.me/` has the host
//! `tokens.example`, whatever its tail says). User info (`user@host`) is refused outright: a registry has
//! no business naming credentials in a URL, and `127.0.0.1:80@evil` is a classic way to fool a reader.
//! An [`Origin`] is scheme + host + port, the unit the auth layer decides on: Authorization goes only to
//! the registry's own origin, and no secret ever travels over plain HTTP to a host that is not loopback.

use std::fmt;

use ureq::http::Uri;

/// An absolute http(s) URL without user info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    origin: Origin,
    /// Path and query, starting with `/`.
    path_and_query: String,
}

/// Scheme, host and port: what "the same server" means.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub https: bool,
    /// Lowercased; IPv6 addresses keep their brackets.
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Whether the host is loopback by name or literal address (127.0.0.0/8, ::1, localhost, *.localtest.me).
    pub fn is_loopback(&self) -> bool {
        crate::reference::is_loopback_host(self.host.trim_start_matches('[').trim_end_matches(']'))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            write!(f, "{scheme}://{}", self.host)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Url {
    /// Parses an absolute `http://` or `https://` URL; the error says what is wrong, for messages.
    pub fn parse(s: &str) -> Result<Url, String> {
        let s = s.trim();
        let uri: Uri = s.parse().map_err(|e| format!("{e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(format!("the scheme {other:?} is not http or https")),
            None => return Err("it is not an absolute URL".into()),
        };
        let authority = uri.authority().ok_or("it has no host")?;
        if authority.as_str().contains('@') {
            return Err("it carries user info (user@host), which is refused".into());
        }
        let host = authority.host().to_ascii_lowercase();
        if host.is_empty() {
            return Err("it has no host".into());
        }
        // The text after the host's last `:` (past an IPv6 literal's `]`), which must be a whole u16:
        // `http::Uri` accepts `:99999` and just reports no port, which would mean port 80.
        let text = authority.as_str();
        let after_host = text.rfind(']').map_or(text, |i| &text[i + 1..]);
        let port = match after_host.rsplit_once(':') {
            Some((_, p)) => p.parse::<u16>().map_err(|_| format!("its port {p:?} is not a port number"))?,
            None if https => 443,
            None => 80,
        };
        let path_and_query = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") => "/".to_string(),
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
        };
        Ok(Url { origin: Origin { https, host, port }, path_and_query })
    }

    /// Resolves a `Location` (absolute, or a path) against this URL.
    pub fn join(&self, location: &str) -> Result<Url, String> {
        let location = location.trim();
        if location.contains("://") {
            return Url::parse(location);
        }
        if location.starts_with("//") {
            let scheme = if self.origin.https { "https:" } else { "http:" };
            return Url::parse(&format!("{scheme}{location}"));
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            // Relative to the current path's directory (RFC 3986 §5.2.3).
            let path = self.path();
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Url::parse(&format!("{}{path}", self.origin))
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn is_https(&self) -> bool {
        self.origin.https
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query.split('?').next().unwrap_or("/")
    }

    /// This URL with `key=value` appended to its query. The value goes as is: digests and repository
    /// names hold only characters a query may carry (`:`, `/`).
    pub fn with_query(&self, key: &str, value: &str) -> Url {
        let sep = if self.path_and_query.contains('?') { '&' } else { '?' };
        let mut url = self.clone();
        url.path_and_query = format!("{}{sep}{key}={value}", self.path_and_query);
        url
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin, self.path_and_query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> String {
        Url::parse(s).map(|u| u.origin().host.clone()).unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn hosts_are_what_the_client_connects_to_not_what_the_text_suggests() {
        assert_eq!(host("http://tokens.example?.localtest.me/token"), "tokens.example");
        assert!(!Url::parse("http://tokens.example?.localtest.me/token").unwrap().origin().is_loopback());
        // A fragment is not part of a request URL: refused by the parser, or at least not the host.
        let frag = Url::parse("http://tokens.example#.localtest.me/token");
        assert!(frag.as_ref().map_or(true, |u| !u.origin().is_loopback()), "{frag:?}");
        assert!(Url::parse("http://127.0.0.1:80@tokens.example/token").unwrap_err().contains("user info"));
        assert!(Url::parse("http://user:pw@127.0.0.1/").is_err());
        assert!(
            Url::parse("ftp://x/").is_err() && Url::parse("/relative").is_err() && Url::parse("http://[::1").is_err()
        );
        assert_eq!(host("HTTP://LocalHost:5000/v2/"), "localhost");
        assert!(Url::parse("http://[::1]:5000/v2/").unwrap().origin().is_loopback());
        assert!(Url::parse("http://127.0.0.2/").unwrap().origin().is_loopback());
        assert!(Url::parse("http://127.0.0.1:99999/x").is_err(), "a port out of range is no port 80");
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let a = Url::parse("https://r.example/v2/").unwrap();
        assert_eq!(a.origin(), Url::parse("https://R.example:443/x").unwrap().origin());
        assert_ne!(a.origin(), Url::parse("http://r.example:443/x").unwrap().origin());
        assert_ne!(a.origin(), Url::parse("https://r.example:444/x").unwrap().origin());
        assert_eq!(a.origin().to_string(), "https://r.example");
        assert_eq!(Url::parse("http://h:8080").unwrap().to_string(), "http://h:8080/");
    }

    #[test]
    fn locations_resolve_against_the_request() {
        let base = Url::parse("http://127.0.0.1:5000/v2/ns/app/blobs/uploads/").unwrap();
        assert_eq!(base.join("/v2/x?_state=1").unwrap().to_string(), "http://127.0.0.1:5000/v2/x?_state=1");
        assert_eq!(base.join("abc").unwrap().to_string(), "http://127.0.0.1:5000/v2/ns/app/blobs/uploads/abc");
        assert_eq!(base.join("https://other:1/p").unwrap().to_string(), "https://other:1/p");
        assert_eq!(base.join("//cdn.example/b").unwrap().to_string(), "http://cdn.example/b");
        assert!(base.join("http://a@b/").is_err());
        assert_eq!(
            base.with_query("digest", "sha256:ab").to_string(),
            "http://127.0.0.1:5000/v2/ns/app/blobs/uploads/?digest=sha256:ab"
        );
    }
}
