//! idpbuilder's Gitea: the default push target and a credential helper that needs no `docker login`.
//!
//! idpbuilder keeps the Gitea admin's credentials in the cluster (Secret `gitea/gitea-credential`) and
//! prints them with `idpbuilder get secrets -p gitea -o json`. This module asks idpbuilder (or, when it is
//! absent, `kubectl get secret`) for them, for the hosts idpbuilder's registry answers on. The same code
//! serves three callers: the docker-credential-helpers protocol (`docker-credential-idpb get`, so plain
//! `docker push` works with `"credHelpers": {"gitea.cnoe.localtest.me:8443": "idpb"}`), the
//! `docker-idpb credential` command, and `docker-idpb push` itself as its last source of credentials for the
//! idpbuilder host. The cluster tools are run with the environment as is (KUBECONFIG and PATH decide which
//! cluster); their output is parsed, never echoed, so a secret cannot leak into a message.

use std::process::Command;

use serde_json::Value;

use crate::credentials::{Credential, Secret, base64_decode};
use crate::error::{Error, Result};

/// idpbuilder's registry host and its path-routing twin.
pub const DEFAULT_REGISTRY: &str = "gitea.cnoe.localtest.me:8443";
const PATH_ROUTING_REGISTRY: &str = "cnoe.localtest.me:8443";
/// The Gitea admin user idpbuilder creates; images go under it by default.
pub const DEFAULT_OWNER: &str = "giteaadmin";
/// What a helper prints when it has nothing for a host.
pub const NOT_FOUND: &str = "credentials not found in native keychain";

/// The registry commands default to: `IDPB_REGISTRY`, else idpbuilder's Gitea.
pub fn default_registry() -> String {
    std::env::var("IDPB_REGISTRY")
        .ok()
        .map(|v| normalize_host(&v))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_REGISTRY.to_string())
}

/// The hosts this helper answers for: idpbuilder's two, and `IDPB_REGISTRY` when set.
pub fn served_hosts() -> Vec<String> {
    let mut hosts = vec![DEFAULT_REGISTRY.to_string(), PATH_ROUTING_REGISTRY.to_string()];
    if let Ok(extra) = std::env::var("IDPB_REGISTRY") {
        let extra = normalize_host(&extra);
        if !extra.is_empty() && !hosts.contains(&extra) {
            hosts.push(extra);
        }
    }
    hosts
}

/// `https://host:port/v2/` -> `host:port` (what helpers are asked about varies by client).
pub fn normalize_host(server: &str) -> String {
    let s = server.trim();
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_ascii_lowercase()
}

/// Whether `server` is one of the hosts served.
pub fn serves(server: &str) -> bool {
    let host = normalize_host(server);
    served_hosts().contains(&host)
}

/// The Gitea admin credentials from the cluster, or None when neither idpbuilder nor kubectl can give them.
pub fn gitea_credentials() -> Result<Option<Credential>> {
    gitea_credentials_within(None, &crate::signal::Cancel::process())
}

/// [`gitea_credentials`] within `timeout` for both tools together (at most 30 s), stopped by `cancel`.
pub fn gitea_credentials_within(
    timeout: Option<std::time::Duration>,
    cancel: &crate::signal::Cancel,
) -> Result<Option<Credential>> {
    let limit = timeout.unwrap_or(crate::credentials::HELPER_TIMEOUT).min(crate::credentials::HELPER_TIMEOUT);
    let bounds = crate::child::Bounds {
        deadline: std::time::Instant::now() + limit,
        max_output: crate::credentials::HELPER_MAX_OUTPUT,
    };
    if let Some(out) = run("idpbuilder", &["get", "secrets", "-p", "gitea", "-o", "json"], &bounds, cancel)? {
        return parse_idpbuilder(&out).map(Some);
    }
    if let Some(out) =
        run("kubectl", &["get", "secret", "-n", "gitea", "gitea-credential", "-o", "json"], &bounds, cancel)?
    {
        return parse_kubectl(&out).map(Some);
    }
    Ok(None)
}

/// Where idpbuilder keeps the CA that signs Gitea's certificate.
pub const CA_SECRET: (&str, &str, &str) = ("default", "idpbuilder-cert", "ca.crt");

/// The idpbuilder cluster's CA (PEM) through `kubectl`, within `timeout` (at most 30 s); None when kubectl
/// is not installed. The Secret's other keys (the server's private key among them) are never kept.
pub fn cluster_ca_within(
    timeout: Option<std::time::Duration>,
    cancel: &crate::signal::Cancel,
) -> Result<Option<crate::tls::Anchor>> {
    let limit = timeout.unwrap_or(crate::credentials::HELPER_TIMEOUT).min(crate::credentials::HELPER_TIMEOUT);
    let bounds = crate::child::Bounds {
        deadline: std::time::Instant::now() + limit,
        max_output: crate::credentials::HELPER_MAX_OUTPUT,
    };
    let (namespace, name, key) = CA_SECRET;
    let Some(out) = run("kubectl", &["get", "secret", "-n", namespace, name, "-o", "json"], &bounds, cancel)? else {
        return Ok(None);
    };
    let source = format!("the idpbuilder cluster's CA (Secret {namespace}/{name})");
    let bad = || {
        Error::Tls(format!("`kubectl get secret -n {namespace} {name}` printed no PEM certificate under data.{key}"))
    };
    let v: Value = serde_json::from_slice(&out).map_err(|_| bad())?;
    let b64 = v.get("data").and_then(|d| d.get(key)).and_then(Value::as_str).ok_or_else(bad)?;
    let pem = base64_decode(b64).ok_or_else(bad)?;
    crate::tls::parse_certs(&pem, &source).map_err(|_| bad())?;
    Ok(Some(crate::tls::Anchor { source, pem }))
}

/// Runs a tool; None when it is not installed. A failing tool is an error with its first line of stderr.
fn run(
    tool: &str,
    args: &[&str],
    bounds: &crate::child::Bounds,
    cancel: &crate::signal::Cancel,
) -> Result<Option<Vec<u8>>> {
    let out = match crate::child::run(Command::new(tool).args(args), b"", bounds, cancel) {
        Ok(out) => out,
        Err(crate::child::Failure::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(f) => {
            let source = format!("`{tool} {}`", args.join(" "));
            return Err(crate::credentials::helper_failure(&source, "idpbuilder's Gitea", f));
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim();
        return Err(Error::Auth(format!(
            "`{tool} {}` failed: {line} (is the idpbuilder cluster running and your kubeconfig pointing at it?)",
            args.join(" ")
        )));
    }
    Ok(Some(out.stdout))
}

fn credential(username: String, password: String, source: &str) -> Credential {
    Credential { secret: Secret::Basic { username, password }, source: source.to_string() }
}

/// `[{"name","namespace","username","password","token"}]`, possibly with other packages' entries.
fn parse_idpbuilder(out: &[u8]) -> Result<Credential> {
    let bad = || Error::Auth("`idpbuilder get secrets -p gitea -o json` printed no Gitea username and password".into());
    let v: Value = serde_json::from_slice(out).map_err(|_| bad())?;
    let entries: Vec<&Value> = match &v {
        Value::Array(a) => a.iter().collect(),
        obj @ Value::Object(_) => vec![obj],
        _ => return Err(bad()),
    };
    let entry = entries
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str).is_some_and(|n| n.contains("gitea")))
        .or_else(|| entries.first())
        .ok_or_else(bad)?;
    let field = |k: &str| entry.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    match (field("username"), field("password")) {
        (Some(u), Some(p)) => Ok(credential(u, p, "idpbuilder get secrets -p gitea")),
        _ => Err(bad()),
    }
}

/// A Secret's JSON: `data.username` and `data.password`, base64.
fn parse_kubectl(out: &[u8]) -> Result<Credential> {
    let bad = || Error::Auth("secret gitea/gitea-credential has no username and password".into());
    let v: Value = serde_json::from_slice(out).map_err(|_| bad())?;
    let field = |k: &str| {
        v.get("data")
            .and_then(|d| d.get(k))
            .and_then(Value::as_str)
            .and_then(base64_decode)
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty())
    };
    match (field("username"), field("password")) {
        (Some(u), Some(p)) => Ok(credential(u, p, "kubectl get secret -n gitea gitea-credential")),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idpbuilder_output_shapes() {
        let out = br#"[{"name":"gitea-credential","namespace":"gitea","username":"giteaAdmin","password":"p:@x","token":"t"}]"#;
        let c = parse_idpbuilder(out).unwrap();
        assert_eq!(c.secret, Secret::Basic { username: "giteaAdmin".into(), password: "p:@x".into() });
        assert!(parse_idpbuilder(b"[]").is_err());
        assert!(parse_idpbuilder(b"not json").unwrap_err().to_string().contains("idpbuilder"));
    }

    #[test]
    fn kubectl_output_shape() {
        let out =
            br#"{"apiVersion":"v1","kind":"Secret","data":{"username":"Z2l0ZWFBZG1pbg==","password":"c2VjcmV0"}}"#;
        let c = parse_kubectl(out).unwrap();
        assert_eq!(c.secret, Secret::Basic { username: "giteaAdmin".into(), password: "secret".into() });
        assert!(parse_kubectl(br#"{"data":{}}"#).is_err());
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("https://gitea.cnoe.localtest.me:8443/v2/"), "gitea.cnoe.localtest.me:8443");
        assert_eq!(normalize_host("Gitea.cnoe.localtest.me:8443"), "gitea.cnoe.localtest.me:8443");
        assert!(serves("gitea.cnoe.localtest.me:8443"));
        assert!(serves("https://cnoe.localtest.me:8443"));
        assert!(!serves("registry.example.com"));
    }
}
