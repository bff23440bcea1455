//! `docker-idpb login` and `logout`: Docker's config.json without docker.

use super::{LoginArgs, LogoutArgs, RegistryFlags};
use crate::credentials::store::{self, Stored};
use crate::credentials::{Credential, Secret, docker_config_dir};
use crate::error::{Error, Result};
use crate::idpbuilder::normalize_host;
use crate::progress::Progress;
use crate::registry::{Registry, Request};

pub fn login(args: LoginArgs) -> Result<()> {
    let host = normalize_host(&args.host);
    let connect = args.connect_options()?;
    let lookup = args.credential_lookup()?;
    let (Some(username), Some(password)) = (lookup.username.clone(), lookup.password.clone()) else {
        return Err(Error::usage(format!(
            "give the credentials: echo \"$TOKEN\" | docker-idpb login {host} -u USER --password-stdin"
        )));
    };
    let dir = docker_config_dir(lookup.config_dir.as_deref()).ok_or_else(|| {
        Error::usage("cannot find the docker config directory: set DOCKER_CONFIG or HOME, or pass --config")
    })?;
    let mut progress = Progress::new(false);
    // Like docker login: check the credentials before saving them.
    let credential = Credential {
        secret: Secret::Basic { username: username.clone(), password: password.clone() },
        source: crate::credentials::FLAGS_SOURCE.into(),
    };
    let mut registry = Registry::connect(&host, Some(credential), &connect, &mut progress)?;
    let req = Request::new("GET", "/v2/", "logging in");
    let resp = registry.send(&req)?;
    if !resp.ok() {
        return Err(registry.status_error(&req, &resp));
    }
    match store::save(&dir, &host, &username, &password)? {
        Stored::Helper(h) => eprintln!("Login Succeeded (credentials stored with {h})"),
        Stored::File(p) => eprintln!("Login Succeeded (credentials stored in {}, mode 0600)", p.display()),
    }
    Ok(())
}

pub fn logout(args: LogoutArgs) -> Result<()> {
    let host = normalize_host(&args.host);
    let dir = docker_config_dir(args.config.as_deref()).ok_or_else(|| {
        Error::usage("cannot find the docker config directory: set DOCKER_CONFIG or HOME, or pass --config")
    })?;
    if store::remove(&dir, &host)? {
        eprintln!("Removing login credentials for {host}");
    } else {
        eprintln!("Not logged in to {host}");
    }
    Ok(())
}
