//! The docker-credential-helpers protocol for idpbuilder's Gitea: `docker-credential-idpb ACTION` (the
//! binary installed under that name) and `docker-idpb credential ACTION` answer the same way.

use std::io::{Read, Write};

use serde_json::json;

use crate::credentials::Secret;
use crate::error::{Error, Result};
use crate::idpbuilder::{NOT_FOUND, gitea_credentials, normalize_host, served_hosts, serves};

/// Runs one helper action with stdin/stdout as the protocol says; the error text goes to stdout, as
/// docker expects from helpers.
pub fn run(action: &str) -> Result<()> {
    let mut input = String::new();
    if matches!(action, "get" | "store" | "erase") {
        std::io::stdin().read_to_string(&mut input).map_err(|e| Error::io("stdin", "read", e))?;
    }
    let answer = match action {
        "get" => get(input.trim()),
        "list" => list(),
        "store" | "erase" => Err(Error::Auth(
            "the idpb credential helper is read-only: credentials come from the idpbuilder cluster".into(),
        )),
        "version" => Ok(format!("docker-credential-idpb {}", env!("CARGO_PKG_VERSION"))),
        other => {
            Err(Error::usage(format!("unknown credential helper action {other:?}: use get, list, store or erase")))
        }
    };
    // Helpers report errors on stdout and exit 1: the binary prints the error there (see `main`).
    let text = answer?;
    let _ = writeln!(std::io::stdout(), "{text}");
    Ok(())
}

fn get(server: &str) -> Result<String> {
    if server.is_empty() || !serves(server) {
        return Err(Error::Auth(NOT_FOUND.into()));
    }
    match gitea_credentials()? {
        Some(c) => match c.secret {
            Secret::Basic { username, password } => {
                Ok(json!({"ServerURL": server, "Username": username, "Secret": password}).to_string())
            }
            _ => Err(Error::Auth(NOT_FOUND.into())),
        },
        None => Err(Error::Auth(NOT_FOUND.into())),
    }
}

fn list() -> Result<String> {
    let user = match gitea_credentials() {
        Ok(Some(c)) => match c.secret {
            Secret::Basic { username, .. } => username,
            _ => "giteaAdmin".into(),
        },
        _ => "giteaAdmin".into(),
    };
    let map: serde_json::Map<String, serde_json::Value> =
        served_hosts().into_iter().map(|h| (normalize_host(&h), json!(user.clone()))).collect();
    Ok(serde_json::Value::Object(map).to_string())
}
