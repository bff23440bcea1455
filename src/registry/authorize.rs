//! The auth layer: which Authorization a request gets, and tokens for the scopes it needs.
//!
//! Three rules, each written once here. **Origin**: Authorization goes only to the registry's own origin
//! (scheme + host + port, parsed, see [`super::url`]); a redirect to a storage host, another port, or the
//! same host over plain HTTP gets none, on every hop. **Secrets over plain HTTP**: only to a loopback host
//! (the registry when it is loopback by name or resolved address; any other host by its parsed name), so a
//! token realm `http://tokens.example?.localtest.me/` is judged by `tokens.example`. **Scopes**: a request
//! states what it does ([`Access`]), a mount asks `pull` on the source repository together with the
//! target's `pull,push` (distribution requires it), and the `scope` of a 401's challenge is merged into
//! the next token request, as go-containerregistry's bearer transport does. Tokens are cached per set of
//! scopes for the run; a refused token is fetched again once by the caller.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use super::exchange::{Body, Call, Exchange};
use super::retry::{Retrier, RetryPolicy, SystemClock};
use super::url::{Origin, Url};
use crate::auth::{Challenge, parse_challenges, query_escape, token_from_response};
use crate::credentials::{Credential, Secret, base64_encode};
use crate::error::{Error, Result, transient_status};

/// The most of a token answer read.
pub const TOKEN_LIMIT: usize = 64 * 1024;

/// What a request does, which decides the token scope it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Outside any scope (the ping, a login check).
    None,
    /// `registry:catalog:*`.
    Catalog,
    /// Read a repository.
    Pull(String),
    /// Write a repository.
    Push(String),
    /// Mount a blob into `repo` from `from`: push on one, pull on the other.
    Mount { repo: String, from: String },
}

impl Access {
    /// What the access is for, in the user's words (` to push to team/app`), empty outside any scope.
    pub fn purpose(&self) -> String {
        match self {
            Access::None => String::new(),
            Access::Catalog => " to list its repositories".to_string(),
            Access::Pull(repo) => format!(" to pull {repo}"),
            Access::Push(repo) | Access::Mount { repo, .. } => format!(" to push to {repo}"),
        }
    }

    /// The token scopes this access needs.
    pub fn scopes(&self) -> Vec<String> {
        match self {
            Access::None => Vec::new(),
            Access::Catalog => vec!["registry:catalog:*".to_string()],
            Access::Pull(repo) => vec![format!("repository:{repo}:pull")],
            Access::Push(repo) => vec![format!("repository:{repo}:pull,push")],
            Access::Mount { repo, from } => {
                vec![format!("repository:{repo}:pull,push"), format!("repository:{from}:pull")]
            }
        }
    }
}

/// How the registry wants to be authenticated, learned from a challenge.
#[derive(Debug, Clone)]
enum Scheme {
    None,
    Basic,
    /// `realm` as sent: parsed (and judged) when a token is fetched.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Credentials and tokens for one registry.
#[derive(Clone)]
pub struct Authorizer {
    host: String,
    credential: Option<Credential>,
    scheme: Scheme,
    tokens: HashMap<String, String>,
    origin: Origin,
    /// The registry is loopback (by name or resolved address).
    loopback: bool,
}

impl Authorizer {
    pub fn new(host: &str, credential: Option<Credential>, loopback: bool, origin: Origin) -> Authorizer {
        Authorizer {
            host: host.to_string(),
            credential,
            scheme: Scheme::None,
            tokens: HashMap::new(),
            origin,
            loopback,
        }
    }

    pub fn set_origin(&mut self, origin: Origin) {
        self.origin = origin;
    }

    pub fn credential(&self) -> Option<&Credential> {
        self.credential.as_ref()
    }

    /// Whether a secret may travel to `url`: over HTTPS, or over plain HTTP to a loopback host only.
    pub fn may_carry_secret(&self, url: &Url) -> bool {
        if url.is_https() {
            return true;
        }
        if url.origin().host == self.origin.host { self.loopback } else { url.origin().is_loopback() }
    }

    /// Whether `url` is the registry's own origin, where its Authorization may go.
    pub fn is_registry(&self, url: &Url) -> bool {
        *url.origin() == self.origin && self.may_carry_secret(url)
    }

    /// Learns the scheme from a 401's challenges; returns the scopes the challenge names (to be merged
    /// into the next token request). False when the registry wants a scheme we cannot answer.
    pub fn learn(&mut self, headers: &[(String, String)]) -> (bool, Vec<String>) {
        let challenges: Vec<Challenge> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
            .flat_map(|(_, v)| parse_challenges(v))
            .collect();
        let bearer = challenges.iter().find(|c| c.scheme == "bearer" && c.param("realm").is_some());
        if let Some(b) = bearer {
            self.scheme = Scheme::Bearer {
                realm: b.param("realm").unwrap_or_default().to_string(),
                service: b.param("service").map(str::to_string),
            };
            let scopes = b
                .param("scope")
                .map(|s| s.split(' ').filter(|x| !x.is_empty() && *x != "*").map(str::to_string).collect());
            return (true, scopes.unwrap_or_default());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            self.scheme = Scheme::Basic;
            return (true, Vec::new());
        }
        (challenges.is_empty(), Vec::new())
    }

    /// Whether a 401 can be answered by authenticating (again).
    pub fn can_answer(&self, sent_basic: bool) -> bool {
        match self.scheme {
            Scheme::Bearer { .. } => true,
            Scheme::Basic => self.credential.is_some() && !sent_basic,
            Scheme::None => false,
        }
    }

    pub fn is_anonymous_scheme(&self) -> bool {
        matches!(self.scheme, Scheme::None)
    }

    /// The Authorization for a registry request needing `scopes`, fetching a token if needed (`refresh`:
    /// even if one is cached). The token request shares the caller's `deadline`.
    pub fn header(&mut self, scopes: &[String], refresh: bool, ctx: &mut TokenContext<'_>) -> Result<Option<String>> {
        match self.scheme.clone() {
            Scheme::None => Ok(None),
            Scheme::Basic => Ok(self.credential.as_ref().and_then(basic_header)),
            Scheme::Bearer { realm, service } => {
                let set: BTreeSet<&String> = scopes.iter().collect();
                let key = set.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ");
                if !refresh && let Some(t) = self.tokens.get(&key) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let ordered: Vec<String> = set.into_iter().cloned().collect();
                let token = self.fetch_token(&realm, service.as_deref(), &ordered, ctx)?;
                self.tokens.insert(key, token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn fetch_token(
        &mut self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        ctx: &mut TokenContext<'_>,
    ) -> Result<String> {
        let host = self.host.clone();
        let url = Url::parse(realm)
            .map_err(|e| Error::Auth(format!("{host} sent a token realm that is not a usable URL ({e}): {realm:?}")))?;
        let realm_host = url.origin().host.clone();
        let secure = self.may_carry_secret(&url);
        let mut query = Vec::new();
        if let Some(s) = service {
            query.push(format!("service={}", query_escape(s)));
        }
        let (method, target, body, auth) = match self.credential.as_ref().map(|c| &c.secret) {
            Some(Secret::RegistryToken { token }) => return Ok(token.clone()),
            Some(_) if !secure => {
                return Err(Error::Auth(format!(
                    "refusing to send the credentials for {host} to the token server {realm_host} over plain HTTP; \
                     the registry's token realm must use HTTPS (or be on loopback)"
                )));
            }
            Some(Secret::IdentityToken { token }) => {
                let mut form =
                    format!("grant_type=refresh_token&refresh_token={}&client_id=docker-idpb", query_escape(token));
                query.push(format!("scope={}", query_escape(&scopes.join(" "))));
                for q in &query {
                    form.push('&');
                    form.push_str(q);
                }
                ("POST", url.clone(), Body::bytes(form.as_bytes()), None)
            }
            _ => {
                query.extend(scopes.iter().map(|s| format!("scope={}", query_escape(s))));
                let mut target = url.clone();
                for q in &query {
                    let (k, v) = q.split_once('=').unwrap_or((q, ""));
                    target = target.with_query(k, v);
                }
                ("GET", target, Body::Empty, self.credential.as_ref().and_then(basic_header))
            }
        };
        let mut retrier = Retrier::start(ctx.policy, &SystemClock, Some(ctx.deadline));
        // Credentials go to the realm's own origin only, never to where it redirects.
        let realm_origin = url.origin().clone();
        let result = loop {
            let headers = if method == "POST" {
                vec![("Content-Type", "application/x-www-form-urlencoded".to_string())]
            } else {
                Vec::new()
            };
            let body = match &body {
                Body::Shared(d, r) => Body::Shared(std::sync::Arc::clone(d), r.clone()),
                _ => Body::Empty,
            };
            let call = Call {
                method,
                url: target.clone(),
                headers,
                body,
                limit: TOKEN_LIMIT,
                stream: false,
                cancellable: true,
            };
            let mut authorize = |u: &Url| auth.clone().filter(|_| *u.origin() == realm_origin);
            let result = ctx
                .exchange
                .run(call, retrier.deadline(), &mut authorize)
                .map_err(|f| super::failure_error(&realm_host, "asking for a token", method, url.path(), f));
            let step = match &result {
                Ok(a) if transient_status(a.status) => Some((
                    format!("the token server {realm_host} answered {}", a.status),
                    super::retry_after(&a.headers),
                )),
                Err(e) if e.is_transient() => Some((e.to_string(), None)),
                _ => None,
            };
            let Some((reason, retry_after)) = step else { break result };
            if !retrier.again(&reason, retry_after, ctx.exchange.cancel(), ctx.announce)? {
                break result;
            }
        };
        let answer = result.map_err(|e| e.with_attempts(retrier.attempt()))?;
        if answer.status == 401 || answer.status == 403 {
            return Err(self.refused(&scopes_purpose(scopes), &super::registry_error_detail(&answer.body)));
        }
        if !(200..300).contains(&answer.status) {
            return Err(Error::Auth(format!(
                "token server {realm_host} answered {}: {}",
                answer.status,
                super::registry_error_detail(&answer.body)
            )));
        }
        if answer.truncated {
            return Err(Error::Auth(format!(
                "token server {realm_host} sent an answer larger than {} KiB; refusing it",
                TOKEN_LIMIT / 1024
            )));
        }
        token_from_response(&String::from_utf8_lossy(&answer.body))
            .ok_or_else(|| Error::Auth(format!("token server {realm_host} sent no token in its answer")))
    }

    /// The error for credentials the registry (or its token server) refused, or that are missing;
    /// `purpose` is [`Access::purpose`]. The hint fits where the credentials came from: a user who just
    /// gave `-u` and `--password-stdin` is told to check those, not to pass them.
    pub fn refused(&self, purpose: &str, detail: &str) -> Error {
        let detail = if detail.is_empty() { String::new() } else { format!(" ({detail})") };
        let host = &self.host;
        match &self.credential {
            Some(c) if c.source == crate::credentials::FLAGS_SOURCE => Error::Auth(format!(
                "{host} refused the user name or password{purpose}{detail}; check them (a token also needs the \
                 scopes to read and write packages)"
            )),
            Some(c) => Error::Auth(format!(
                "{host} refused the credentials from {}{purpose}{detail}; log in again with `docker login {host}`, \
                 or give others with -u USER --password-stdin",
                c.source
            )),
            None => Error::Auth(format!(
                "{host} requires a login{purpose}{detail} and no credentials were found; run `docker login {host}`, \
                 or pass -u USER --password-stdin"
            )),
        }
    }
}

/// [`Access::purpose`] read back from token scopes (`repository:team/app:pull,push`).
fn scopes_purpose(scopes: &[String]) -> String {
    let access = scopes.iter().find_map(|s| {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("repository"), Some(repo), Some(actions)) if actions.contains("push") => {
                Some(Access::Push(repo.to_string()))
            }
            (Some("repository"), Some(repo), Some(_)) => Some(Access::Pull(repo.to_string())),
            (Some("registry"), Some("catalog"), _) => Some(Access::Catalog),
            _ => None,
        }
    });
    access.unwrap_or(Access::None).purpose()
}

/// What a token request borrows from the request that needs it: the exchange, the retry policy, the
/// outer deadline and where retry lines go.
pub struct TokenContext<'a> {
    pub exchange: &'a Exchange,
    pub policy: &'a RetryPolicy,
    pub deadline: Instant,
    pub announce: &'a mut dyn FnMut(&str),
}

fn basic_header(c: &Credential) -> Option<String> {
    match &c.secret {
        Secret::Basic { username, password } => {
            Some(format!("Basic {}", base64_encode(format!("{username}:{password}").as_bytes())))
        }
        Secret::RegistryToken { token } => Some(format!("Bearer {token}")),
        Secret::IdentityToken { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_asks_pull_on_its_source_with_the_targets_push() {
        let m = Access::Mount { repo: "other/mirror".into(), from: "ns/app".into() };
        assert_eq!(m.scopes(), ["repository:other/mirror:pull,push", "repository:ns/app:pull"]);
        assert_eq!(Access::Pull("a/b".into()).scopes(), ["repository:a/b:pull"]);
        assert_eq!(Access::Push("a/b".into()).scopes(), ["repository:a/b:pull,push"]);
        assert_eq!(Access::Catalog.scopes(), ["registry:catalog:*"]);
        assert!(Access::None.scopes().is_empty());
    }

    fn authorizer(origin: &str, loopback: bool) -> Authorizer {
        let url = Url::parse(origin).unwrap();
        Authorizer::new(&url.origin().host.clone(), None, loopback, url.origin().clone())
    }

    #[test]
    fn authorization_goes_to_the_registry_origin_only() {
        let a = authorizer("https://r.example:5000", false);
        assert!(a.is_registry(&Url::parse("https://r.example:5000/v2/x").unwrap()));
        assert!(!a.is_registry(&Url::parse("http://r.example:5000/v2/x").unwrap()), "https -> http");
        assert!(!a.is_registry(&Url::parse("https://r.example:5001/v2/x").unwrap()), "another port");
        assert!(!a.is_registry(&Url::parse("https://cdn.example/blob").unwrap()), "another host");
        let local = authorizer("http://127.0.0.1:5000", true);
        assert!(local.is_registry(&Url::parse("http://127.0.0.1:5000/v2/").unwrap()));
        assert!(!local.is_registry(&Url::parse("http://127.0.0.1:5001/v2/").unwrap()));
    }

    #[test]
    fn plain_http_secrets_are_judged_on_the_parsed_host() {
        let a = authorizer("http://127.0.0.1:5000", true);
        for realm in ["http://tokens.example?.localtest.me/token", "http://tokens.example/x.localtest.me"] {
            assert!(!a.may_carry_secret(&Url::parse(realm).unwrap()), "{realm}");
        }
        assert!(a.may_carry_secret(&Url::parse("http://auth.localtest.me:9/token").unwrap()));
        assert!(a.may_carry_secret(&Url::parse("https://tokens.example/token").unwrap()));
        // A registry name that resolves to loopback counts as loopback for itself only.
        let resolved = authorizer("http://myregistry:5000", true);
        assert!(resolved.may_carry_secret(&Url::parse("http://myregistry:5000/v2/").unwrap()));
        assert!(!resolved.may_carry_secret(&Url::parse("http://other:5000/v2/").unwrap()));
    }

    fn learned(header: &str) -> (bool, String) {
        let mut a = authorizer("https://r.example", false);
        let (ok, _) = a.learn(&[("WWW-Authenticate".to_string(), header.to_string())]);
        let scheme = match &a.scheme {
            Scheme::None => "none".to_string(),
            Scheme::Basic => "basic".to_string(),
            Scheme::Bearer { realm, service } => format!("bearer {realm} {}", service.as_deref().unwrap_or("-")),
        };
        (ok, scheme)
    }

    #[test]
    fn several_challenges_prefer_bearer() {
        let want = (true, "bearer https://auth.example/token svc".to_string());
        assert_eq!(learned(r#"Basic realm="x", Bearer realm="https://auth.example/token",service="svc""#), want);
        assert_eq!(learned(r#"Bearer realm="https://auth.example/token",service="svc", Basic realm="x""#), want);
        assert_eq!(learned(r#"Basic realm="a, b", Bearer realm="https://auth.example/token", service=svc"#), want);
        assert_eq!(learned(r#"Basic realm="x""#), (true, "basic".to_string()));
        // A Bearer challenge without a realm cannot be answered; Basic can.
        assert_eq!(learned(r#"Bearer service="s", Basic realm="x""#), (true, "basic".to_string()));
        assert!(!learned(r#"Negotiate abc=="#).0);
    }

    #[test]
    fn a_challenge_scope_is_returned_for_merging() {
        let mut a = authorizer("https://r.example", false);
        let h = vec![(
            "WWW-Authenticate".to_string(),
            r#"Bearer realm="https://auth/token",service="r",scope="repository:ns/app:pull repository:x:pull""#
                .to_string(),
        )];
        let (ok, scopes) = a.learn(&h);
        assert!(ok);
        assert_eq!(scopes, ["repository:ns/app:pull", "repository:x:pull"]);
        let gitea =
            vec![("www-authenticate".to_string(), r#"Bearer realm="https://g/v2/token",scope="*""#.to_string())];
        assert!(a.learn(&gitea).1.is_empty(), "Gitea's `*` is no scope");
    }
}
