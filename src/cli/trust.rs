//! `docker-idpb trust`: show a registry's CA and install it (or remove it) where Docker and docker-idpb
//! look for it. The CA comes from `--from-file` or, by default, from the idpbuilder cluster.

use super::TrustArgs;
use crate::error::{Error, Result};
use crate::signal::Cancel;
use crate::tls::trust::{self, Ca, Scope};
use crate::tls::x509::format_time;

pub fn run(args: TrustArgs) -> Result<()> {
    let json = super::inspect::json_format(&args.format)?;
    let host = trust::checked_host(&args.host.clone().unwrap_or_else(crate::idpbuilder::default_registry))?;
    let scope = if args.system { Scope::System } else { Scope::User };
    if args.remove {
        if args.from_file.is_some() {
            return Err(Error::usage("--remove takes no --from-file: it removes the CA installed for HOST"));
        }
        let path = trust::remove(&host, scope)?;
        if json {
            println!("{}", serde_json::json!({ "host": host, "removed": path }));
        } else {
            println!("removed: {}", crate::progress::escaped(&path.display().to_string()));
        }
        return Ok(());
    }
    let ca = match &args.from_file {
        Some(file) => Ca::from_file(file)?,
        None => {
            let timeout = args.timeout.as_deref().map(|t| super::parse_duration("--timeout", t)).transpose()?;
            let fetched = crate::idpbuilder::cluster_ca_within(timeout, &Cancel::process()).map_err(|e| match e {
                Error::Cancelled => e,
                other => {
                    Error::Tls(format!("{other}; or give the CA with `docker-idpb trust {host} --from-file CA.pem`"))
                }
            });
            match fetched? {
                Some(anchor) => Ca::from_pem(&anchor.pem, &anchor.source)?,
                None => {
                    return Err(Error::Tls(format!(
                        "kubectl is not installed, so the idpbuilder cluster's CA cannot be fetched; give the CA \
                         with `docker-idpb trust {host} --from-file CA.pem`"
                    )));
                }
            }
        }
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut warnings = Vec::new();
    for c in &ca.certificates {
        if c.not_after < now {
            warnings.push(format!(
                "{} expired on {}: nothing it signed will verify",
                c.subject,
                format_time(c.not_after)
            ));
        }
    }
    let path = trust::install(&host, &ca, scope)?;
    if json {
        let certs: Vec<_> = ca
            .certificates
            .iter()
            .map(|c| {
                serde_json::json!({
                    "subject": c.subject, "issuer": c.issuer, "sha256": c.fingerprint(),
                    "not_before": crate::image::rfc3339_signed(c.not_before),
                    "not_after": crate::image::rfc3339_signed(c.not_after),
                    "ca": c.is_ca,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "host": host, "source": ca.source, "certificates": certs, "installed": path })
        );
    } else {
        println!("CA for {host}, from {}:", crate::progress::escaped(&ca.source));
        for c in &ca.certificates {
            println!("  subject: {}", c.subject);
            println!("  issuer:  {}", c.issuer);
            println!("  sha256:  {}", c.fingerprint());
            println!("  valid:   {} to {}", format_time(c.not_before), format_time(c.not_after));
        }
        println!("installed: {}", crate::progress::escaped(&path.display().to_string()));
    }
    if !args.quiet {
        for w in warnings {
            eprintln!("warning: {w}");
        }
        if scope == Scope::User {
            eprintln!(
                "note: docker-idpb now verifies {host} with this CA; for a Docker engine to trust it too, run with \
                 --system (as root)"
            );
        }
    }
    Ok(())
}
