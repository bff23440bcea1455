//! Registry authentication: reading `WWW-Authenticate` challenges and turning credentials into headers.
//!
//! A registry says how it wants to be authenticated in a 401's challenges. Several challenges may share one
//! header and parameter values may be quoted strings holding commas, so the header is tokenised by hand
//! rather than split. Basic is answered directly with the user's credentials. Bearer means fetching a token
//! from the challenge's realm for a scope (`repository:NAME:pull,push`): a GET with Basic credentials (or
//! none, anonymously), or for an identity token the OAuth2 refresh-token POST. Token responses are accepted
//! as `token` or `access_token` (Gitea sends only the former). Tokens are cached per scope for the run; the
//! registry client asks for a fresh one once when a cached one is refused.

use std::collections::BTreeMap;

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: "basic", "bearer".
    pub scheme: String,
    /// Lowercased parameter names with unquoted values.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses every challenge in a `WWW-Authenticate` header value (RFC 9110 §11.6.1).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut p = Parser { s: header.as_bytes(), i: 0 };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip(|b| b == b' ' || b == b'\t' || b == b',');
        let scheme = p.token();
        if scheme.is_empty() {
            break;
        }
        let mut challenge = Challenge { scheme: scheme.to_ascii_lowercase(), params: BTreeMap::new() };
        loop {
            p.skip(|b| b == b' ' || b == b'\t' || b == b',');
            if challenge.params.is_empty() && p.peek_token68() {
                // A token68 (`Negotiate abc==`): not used by registries, skipped.
                p.token();
                p.skip(|b| b == b'=');
                continue;
            }
            let save = p.i;
            let name = p.token();
            p.skip(|b| b == b' ' || b == b'\t');
            if name.is_empty() || !p.eat(b'=') {
                // Not `name=`: the next challenge's scheme.
                p.i = save;
                break;
            }
            p.skip(|b| b == b' ' || b == b'\t');
            let value = if p.eat(b'"') { p.quoted() } else { p.token() };
            challenge.params.insert(name.to_ascii_lowercase(), value);
        }
        out.push(challenge);
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.i < self.s.len() && f(self.s[self.i]) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn token(&mut self) -> String {
        let start = self.i;
        self.skip(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b));
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// Whether a token68 (`abc==`) follows rather than `name=value`: the `=` run reaches a separator.
    fn peek_token68(&self) -> bool {
        let mut j = self.i;
        while j < self.s.len() && (self.s[j].is_ascii_alphanumeric() || b"-._~+/".contains(&self.s[j])) {
            j += 1;
        }
        let eq = j;
        while j < self.s.len() && self.s[j] == b'=' {
            j += 1;
        }
        j > eq && (j == self.s.len() || self.s[j] == b',' || self.s[j] == b' ')
    }

    fn quoted(&mut self) -> String {
        let mut out = Vec::new();
        while self.i < self.s.len() {
            let b = self.s[self.i];
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' if self.i < self.s.len() => {
                    out.push(self.s[self.i]);
                    self.i += 1;
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A token endpoint's JSON answer (other fields ignored).
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The token in a token endpoint's JSON answer: `token`, else `access_token`.
pub fn token_from_response(body: &str) -> Option<String> {
    let v: TokenAnswer = serde_json::from_str(body).ok()?;
    [v.token, v.access_token].into_iter().flatten().find(|t| !t.is_empty())
}

/// Percent-encodes a query parameter value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:ns/app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example.com/token"));
        assert_eq!(c[0].param("service"), Some("registry.example.com"));
        assert_eq!(c[0].param("scope"), Some("repository:ns/app:pull,push"));
    }

    #[test]
    fn gitea_challenge_and_basic() {
        let c = parse_challenges(
            r#"Bearer realm="https://gitea.cnoe.localtest.me:8443/v2/token",service="container_registry",scope="*""#,
        );
        assert_eq!(c[0].param("service"), Some("container_registry"));
        assert_eq!(c[0].param("scope"), Some("*"));
        let b = parse_challenges(r#"Basic realm="Registry Realm""#);
        assert_eq!(b[0].scheme, "basic");
        assert_eq!(b[0].param("realm"), Some("Registry Realm"));
    }

    #[test]
    fn several_challenges_in_one_header() {
        let c = parse_challenges(
            r#"Basic realm="a, b", Bearer realm="https://x/token", service=svc, error="insufficient_scope""#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].param("realm"), Some("a, b"));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("service"), Some("svc"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
    }

    #[test]
    fn escapes_case_and_token68() {
        let c = parse_challenges(r#"BEARER Realm="a\"b""#);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("a\"b"));
        let t = parse_challenges("Negotiate abc==, Basic realm=x");
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[1].param("realm"), Some("x"));
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic")[0].scheme, "basic");
    }

    #[test]
    fn token_shapes() {
        assert_eq!(token_from_response(r#"{"token":"t1"}"#).as_deref(), Some("t1"));
        assert_eq!(token_from_response(r#"{"access_token":"t2","expires_in":60}"#).as_deref(), Some("t2"));
        assert_eq!(token_from_response(r#"{"token":"","access_token":"t3"}"#).as_deref(), Some("t3"));
        assert_eq!(token_from_response("<html>"), None);
    }

    #[test]
    fn escaping() {
        assert_eq!(query_escape("repository:ns/app:pull,push"), "repository%3Ans%2Fapp%3Apull%2Cpush");
    }
}
