//! Turning the process's argv into what argh parses, for both ways docker-idpb is started.
//!
//! Standalone, argv is `docker-idpb push ./ctx`. As a Docker CLI plugin, the docker CLI execs the plugin
//! with its whole own argv: `docker --config X -D idpb push ./ctx` arrives as
//! `docker-idpb --config X -D idpb push ./ctx`, and `docker help idpb` as `docker-idpb help idpb`. This
//! module skips docker's global flags up to the literal `idpb` (keeping `--config`, which changes where
//! credentials are read), and splits `--flag=value` into two arguments because argh only takes the
//! spaced form while users of docker and skopeo type `--tls-verify=false`.

/// Docker's global flags that take a value.
const VALUE_FLAGS: &[&str] =
    &["--config", "-c", "--context", "-H", "--host", "-l", "--log-level", "--tlscacert", "--tlscert", "--tlskey"];
/// Docker's global switches.
const SWITCHES: &[&str] = &["-D", "--debug", "--tls", "--tlsverify"];

/// What the command line asks for once plugin framing is removed.
#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    /// Arguments for argh (without the program name).
    pub args: Vec<String>,
    /// `docker --config DIR`, when invoked as a plugin.
    pub docker_config: Option<String>,
    /// Whether docker started us as a plugin.
    pub plugin: bool,
}

/// Normalises argv (including the program name at index 0).
pub fn normalize(argv: &[String]) -> Invocation {
    let rest = argv.get(1..).unwrap_or_default();
    let (mut args, docker_config, plugin) = match strip_plugin_framing(rest) {
        Some((args, config)) => (args, config, true),
        None => (rest.to_vec(), None, false),
    };
    args = split_equals(args, &super::help::switches());
    Invocation { args, docker_config, plugin }
}

/// `[globals...] idpb CMD...` -> (`CMD...`, --config); `help idpb` -> `--help`. None if not plugin framing.
fn strip_plugin_framing(args: &[String]) -> Option<(Vec<String>, Option<String>)> {
    if args.len() >= 2 && args[0] == "help" && args[1] == "idpb" {
        return Some((vec!["--help".to_string()], None));
    }
    let mut config = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "idpb" {
            let mut rest = args[i + 1..].to_vec();
            if rest.is_empty() {
                rest.push("--help".to_string());
            }
            return Some((rest, config));
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with('-') => (n, Some(v.to_string())),
            _ => (a, None),
        };
        if VALUE_FLAGS.contains(&name) {
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i)?.clone()
                }
            };
            if name == "--config" {
                config = Some(value);
            }
        } else if !SWITCHES.contains(&name) {
            return None;
        }
        i += 1;
    }
    None
}

/// `--name=value` -> `--name value` for tokens in flag position (`switches` take no value; every other
/// flag is followed by its value), up to a `--` terminator. A token that is
/// the value of the flag before it (`--cmd --port=8080`) is left alone.
fn split_equals(args: Vec<String>, switches: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut literal = false;
    let mut value_expected = false;
    for a in args {
        if literal || value_expected || !a.starts_with("--") {
            literal |= a == "--" && !value_expected;
            value_expected = false;
            out.push(a);
            continue;
        }
        if a == "--" {
            literal = true;
            out.push(a);
            continue;
        }
        match a.split_once('=') {
            Some((name, value)) => {
                out.push(name.to_string());
                out.push(value.to_string());
            }
            None => {
                value_expected = !switches.contains(&a);
                out.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn standalone() {
        let inv = normalize(&argv("docker-idpb push ./ctx -t a/b:1 --tls-verify=false"));
        assert_eq!(inv.args, argv("push ./ctx -t a/b:1 --tls-verify false"));
        assert!(!inv.plugin);
    }

    #[test]
    fn plugin_with_globals() {
        let inv = normalize(&argv("docker-idpb --config /cfg -D --log-level=debug idpb push ./ctx"));
        assert_eq!(inv.args, argv("push ./ctx"));
        assert_eq!(inv.docker_config.as_deref(), Some("/cfg"));
        assert!(inv.plugin);
        let inv = normalize(&argv("docker-idpb --config=/c2 idpb version"));
        assert_eq!(inv.docker_config.as_deref(), Some("/c2"));
        assert_eq!(normalize(&argv("docker-idpb idpb")).args, argv("--help"));
        assert_eq!(normalize(&argv("docker-idpb help idpb")).args, argv("--help"));
        assert_eq!(normalize(&argv("docker-idpb -c ctx -H unix:///x idpb --help")).args, argv("--help"));
    }

    #[test]
    fn not_plugin_framing() {
        // A standalone command whose arguments contain "idpb" is not mistaken for plugin framing.
        let inv = normalize(&argv("docker-idpb push idpb -t x"));
        assert_eq!(inv.args, argv("push idpb -t x"));
        assert!(!inv.plugin);
        let inv = normalize(&argv("docker-idpb build -- --weird=dir"));
        assert_eq!(inv.args, argv("build -- --weird=dir"));
        // A value that looks like a flag is not split.
        let inv = normalize(&argv("docker-idpb build ctx --cmd --port=8080 --env=A=b --insecure --x=1"));
        assert_eq!(inv.args, argv("build ctx --cmd --port=8080 --env A=b --insecure --x 1"));
    }
}
