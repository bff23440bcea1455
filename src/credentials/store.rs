//! Saving and removing credentials as `docker login` and `docker logout` do.
//!
//! CI images without docker still need somewhere to keep a login, and it has to be where every other tool
//! looks: Docker's `config.json`. If the config names a helper for the host (`credHelpers`) or for all
//! hosts (`credsStore`), the secret goes to `docker-credential-NAME store` and never touches the file;
//! otherwise it is written to `auths[HOST].auth` (base64 of `user:password`), in a file created with mode
//! 0600 and replaced atomically, keeping every other key of the config as it was.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value, json};

use super::base64_encode;
use crate::error::{Error, Result};

/// Where a login was stored, for the message to the user.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    Helper(String),
    File(PathBuf),
}

/// The config key for a registry host: Docker Hub's is its legacy URL.
pub fn config_key(host: &str) -> String {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/".to_string(),
        other => other.to_string(),
    }
}

fn read_config(path: &Path) -> Result<Map<String, Value>> {
    match crate::atomic::read_capped(path, crate::atomic::CREDENTIALS_CAP) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Map::new()),
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Error::Auth(format!("{} is not a JSON object; fix or remove it", path.display()))),
        },
        Err(e) if e.not_found() => Ok(Map::new()),
        Err(e) => Err(e.for_path(path, "read")),
    }
}

fn write_config(path: &Path, config: &Map<String, Value>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create directory", e))?;
    let mut bytes = serde_json::to_vec_pretty(config).map_err(|e| Error::Auth(format!("cannot encode config: {e}")))?;
    bytes.push(b'\n');
    // A config.json that is itself a symlink (dotfiles managers do this) is written at its target, as
    // docker does; the temp file beside it is new (O_EXCL, unpredictable name) and 0600 from its creation.
    let target = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    };
    crate::atomic::write(&target, &bytes, 0o600)
}

/// The helper configured for `key`: `credHelpers[key]`, else `credsStore`.
fn helper_for(config: &Map<String, Value>, key: &str) -> Option<String> {
    let named = config.get("credHelpers").and_then(|h| h.get(key)).and_then(Value::as_str);
    let store = config.get("credsStore").and_then(Value::as_str);
    named.or(store).filter(|s| !s.is_empty()).map(str::to_string)
}

fn run_helper(name: &str, action: &str, input: &str) -> Result<()> {
    let program = format!("docker-credential-{name}");
    let source = format!("{program} {action} (named in config.json)");
    let bounds = crate::child::Bounds {
        deadline: std::time::Instant::now() + super::HELPER_TIMEOUT,
        max_output: super::HELPER_MAX_OUTPUT,
    };
    let cancel = crate::signal::Cancel::process();
    let out = crate::child::run(Command::new(&program).arg(action), input.as_bytes(), &bounds, &cancel).map_err(
        |f| match f {
            crate::child::Failure::Spawn(e) => {
                Error::Auth(format!("cannot run {program} (named in config.json): {e}; install it or remove it"))
            }
            other => super::helper_failure(&source, "the registry", other),
        },
    )?;
    if !out.status.success() {
        // Never the helper's stdout: it may echo what it was given.
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = err.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no message on stderr");
        return Err(Error::Auth(format!("{program} {action} failed: {}", msg.chars().take(300).collect::<String>())));
    }
    Ok(())
}

/// Stores `username`/`secret` for `host` in the config at `dir/config.json` (or its helper).
pub fn save(dir: &Path, host: &str, username: &str, secret: &str) -> Result<Stored> {
    let path = dir.join("config.json");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create directory", e))?;
    let _lock = crate::atomic::Locked::on(&path)?;
    let mut config = read_config(&path)?;
    let key = config_key(host);
    if let Some(helper) = helper_for(&config, &key) {
        let input = json!({"ServerURL": key, "Username": username, "Secret": secret}).to_string();
        run_helper(&helper, "store", &input)?;
        return Ok(Stored::Helper(format!("docker-credential-{helper}")));
    }
    let auths = config.entry("auths").or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    if let Some(auths) = auths.as_object_mut() {
        auths.insert(key, json!({"auth": base64_encode(format!("{username}:{secret}").as_bytes())}));
    }
    write_config(&path, &config)?;
    Ok(Stored::File(path))
}

/// Removes what is stored for `host`; false if there was nothing.
pub fn remove(dir: &Path, host: &str) -> Result<bool> {
    let path = dir.join("config.json");
    if !dir.is_dir() {
        return Ok(false);
    }
    let _lock = crate::atomic::Locked::on(&path)?;
    let mut config = read_config(&path)?;
    let key = config_key(host);
    let mut removed = false;
    if let Some(helper) = helper_for(&config, &key) {
        run_helper(&helper, "erase", &key)?;
        removed = true;
    }
    if let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) {
        // The exact key and legacy keys naming the same host (`https://host/v2/`).
        let matching: Vec<String> = auths.keys().filter(|k| *k == &key || strip_url(k) == host).cloned().collect();
        for k in matching {
            auths.remove(&k);
            removed = true;
        }
        if removed {
            write_config(&path, &config)?;
        }
    }
    Ok(removed)
}

fn strip_url(key: &str) -> &str {
    let rest = key.split_once("://").map_or(key, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("idpb-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn save_writes_auths_with_0600_and_keeps_other_keys() {
        let d = scratch("save");
        std::fs::write(d.join("config.json"), r#"{"psFormat":"table","auths":{"other:1":{"auth":"eDp5"}}}"#).unwrap();
        assert_eq!(save(&d, "127.0.0.1:5000", "me", "p:a@ss").unwrap(), Stored::File(d.join("config.json")));
        let v: Value = serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "table");
        assert_eq!(v["auths"]["other:1"]["auth"], "eDp5");
        assert_eq!(v["auths"]["127.0.0.1:5000"]["auth"], base64_encode(b"me:p:a@ss"));
        let mode = std::fs::metadata(d.join("config.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(remove(&d, "127.0.0.1:5000").unwrap());
        assert!(!remove(&d, "127.0.0.1:5000").unwrap());
        let v: Value = serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
        assert!(v["auths"].get("127.0.0.1:5000").is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn docker_hub_key_and_legacy_removal() {
        assert_eq!(config_key("docker.io"), "https://index.docker.io/v1/");
        let d = scratch("legacy");
        std::fs::write(d.join("config.json"), r#"{"auths":{"https://reg.example.com/v2/":{"auth":"eDp5"}}}"#).unwrap();
        assert!(remove(&d, "reg.example.com").unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_config_is_named() {
        let d = scratch("bad");
        std::fs::write(d.join("config.json"), "[1,2]").unwrap();
        let err = save(&d, "h", "u", "secret-value").unwrap_err().to_string();
        assert!(err.contains("config.json") && !err.contains("secret-value"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
