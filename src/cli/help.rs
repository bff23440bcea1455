//! Help, version and "did you mean", rendered from the one declaration of each command's flags.
//!
//! argh parses, and its `ArgsInfo` derive describes the same structs: every flag's name, short form,
//! value name (`arg_name`), repeatability and doc comment, and each command's examples. argh's own help
//! prints every flag of `push` (40 of them) in one usage line and one list; this module renders that same
//! description as `docker-idpb push [OPTIONS] [CONTEXT]` with the options grouped (target, image, registry
//! and TLS, credentials, output) and an Examples section. Help is built from what argh parses, so the two
//! cannot drift apart; the only table here says which group a flag belongs to, and a flag missing from it
//! still shows, under "Options" (a unit test keeps the table complete). The same description gives the
//! switches [`super::argv`] must know to split `--flag=value`, and the names suggestions are drawn from.

use std::fmt::Write as _;

use argh::{ArgsInfo, FlagInfo, FlagInfoKind, Optionality};

use super::Cli;

/// Which section of a command's help each flag goes in, in display order.
const GROUPS: &[(&str, &[&str])] = &[
    ("Target", &["--tag", "--oci-layout", "--tar", "--image", "--list"]),
    (
        "Image",
        &[
            "--base",
            "--platform",
            "--entrypoint",
            "--cmd",
            "--env",
            "--workdir",
            "--user",
            "--label",
            "--annotation",
            "--expose",
            "--layer",
            "--prefix",
            "--preserve-mtime",
            "--chown",
            "--compression-level",
            "--no-cache",
            "--no-vcs",
        ],
    ),
    (
        "Registry and TLS",
        &["--insecure", "--plain-http", "--ca-file", "--tls-verify", "--retries", "--timeout", "--chunk-size"],
    ),
    ("Credentials", &["--username", "--password-stdin", "--config"]),
    ("Output", &["--format", "--digest-file", "--image-refs", "--quiet", "--help"]),
];

/// The whole command tree as argh describes it.
fn tree() -> argh::CommandInfoWithArgs {
    Cli::get_args_info()
}

/// The subcommand named `name`.
fn command(name: &str) -> Option<argh::CommandInfoWithArgs> {
    tree().commands.into_iter().find(|c| c.name == name).map(|c| c.command)
}

/// The names of the commands.
pub fn command_names() -> Vec<&'static str> {
    tree().commands.iter().map(|c| c.name).collect()
}

/// Every flag (long and short) that takes no value, in any command.
pub fn switches() -> Vec<String> {
    let mut out = vec!["--help".to_string(), "-h".to_string()];
    for c in tree().commands {
        for f in c.command.flags {
            if matches!(f.kind, FlagInfoKind::Switch) {
                out.push(f.long.to_string());
                if let Some(s) = f.short {
                    out.push(format!("-{s}"));
                }
            }
        }
    }
    out
}

/// The top-level help.
pub fn main_help(program: &str) -> String {
    let info = tree();
    let mut out = format!("Usage: {program} COMMAND [OPTIONS]\n\n{}\n\nCommands:\n", info.description);
    let width = info.commands.iter().map(|c| c.name.len()).max().unwrap_or(0) + 2;
    for c in &info.commands {
        // The summary is the description up to its first colon, parenthesis or full stop.
        let text = one_line(c.command.description);
        let end = [": ", " (", ". "].iter().filter_map(|p| text.find(p)).min().unwrap_or(text.len());
        let summary = text[..end].trim_end_matches('.');
        let _ = writeln!(out, "  {:width$}{summary}", c.name);
    }
    let _ = write!(
        out,
        "\nExamples:\n  {program} push ./site\n  {program} build ./site --tar site.tar\n  {program} trust\n\n\
         Run '{program} COMMAND --help' for a command's options.\n"
    );
    out
}

/// The help of command `name`; None when there is no such command.
pub fn command_help(program: &str, name: &str) -> Option<String> {
    let info = command(name)?;
    let mut usage = format!("Usage: {program} {name}");
    if info.flags.iter().any(|f| f.long != "--help") {
        usage.push_str(" [OPTIONS]");
    }
    for p in info.positionals {
        let arg = p.name.to_ascii_uppercase();
        match p.optionality {
            Optionality::Required => usage.push_str(&format!(" {arg}")),
            Optionality::Repeating | Optionality::Greedy => usage.push_str(&format!(" [{arg}...]")),
            Optionality::Optional => usage.push_str(&format!(" [{arg}]")),
        }
    }
    let mut out = format!("{usage}\n\n{}\n", wrap(&one_line(info.description), 0, 100));
    let rows = |flags: &[&FlagInfo<'_>]| -> Vec<(String, String)> {
        flags
            .iter()
            .map(|f| {
                let text = if f.long == "--help" { "print this help" } else { f.description };
                (flag_label(f), text.to_string())
            })
            .collect()
    };
    let mut sections: Vec<(&str, Vec<(String, String)>)> = Vec::new();
    if !info.positionals.is_empty() {
        let args = info.positionals.iter().map(|p| (p.name.to_ascii_uppercase(), p.description.to_string())).collect();
        sections.push(("Arguments", args));
    }
    let visible: Vec<&FlagInfo<'_>> = info.flags.iter().filter(|f| !f.hidden).collect();
    // A command with a handful of flags reads better as one list.
    let groups = if visible.len() > 8 { GROUPS } else { &[] };
    for (group, names) in groups {
        let members: Vec<&FlagInfo<'_>> =
            names.iter().filter_map(|n| visible.iter().copied().find(|f| f.long == *n)).collect();
        if !members.is_empty() {
            sections.push((group, rows(&members)));
        }
    }
    let grouped: Vec<&str> = groups.iter().flat_map(|(_, names)| names.iter().copied()).collect();
    let rest: Vec<&FlagInfo<'_>> = visible.iter().copied().filter(|f| !grouped.contains(&f.long)).collect();
    if !rest.is_empty() {
        // Options of commands with few flags, and any flag the table does not place.
        sections.insert(usize::from(!info.positionals.is_empty()), ("Options", rows(&rest)));
    }
    let width = sections.iter().flat_map(|(_, rows)| rows.iter().map(|(l, _)| l.len())).max().unwrap_or(0).min(30) + 2;
    for (title, rows) in sections {
        let _ = writeln!(out, "\n{title}:");
        for (label, description) in rows {
            let text = wrap(&one_line(&description), width + 2, 100);
            if label.len() + 2 > width {
                let _ = writeln!(out, "  {label}\n{}{}", " ".repeat(width + 2), text);
            } else {
                let _ = writeln!(out, "  {label:width$}{text}");
            }
        }
    }
    if !info.examples.is_empty() {
        out.push_str("\nExamples:\n");
        for e in info.examples {
            for line in e.lines() {
                let _ = writeln!(out, "  {}", line.replace("{command_name}", &format!("{program} {name}")));
            }
        }
    }
    Some(out)
}

/// `-t, --tag REF...` / `    --insecure`.
fn flag_label(f: &FlagInfo<'_>) -> String {
    if f.long == "--help" {
        return "-h, --help".to_string();
    }
    let mut label = match f.short {
        Some(s) => format!("-{s}, {}", f.long),
        None => format!("    {}", f.long),
    };
    if let FlagInfoKind::Option { arg_name } = f.kind {
        label.push(' ');
        label.push_str(arg_name);
    }
    if f.optionality == Optionality::Repeating {
        label.push_str("...");
    }
    label
}

/// Doc comments arrive with their line breaks; help re-flows them.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` wrapped at `width` columns, continuation lines indented by `indent`.
fn wrap(text: &str, indent: usize, width: usize) -> String {
    let room = width.saturating_sub(indent).max(30);
    let mut out = String::new();
    let mut line = 0;
    for word in text.split(' ') {
        if line > 0 && line + 1 + word.len() > room {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

/// The closest of `candidates` to `word`, if close enough to be a typo.
pub fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1) + 1;
    candidates
        .into_iter()
        .map(|c| (crate::image::edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The flags of command `name` (long and short forms).
pub fn flag_names(name: &str) -> Vec<String> {
    let Some(info) = command(name) else { return Vec::new() };
    let mut out = Vec::new();
    for f in info.flags {
        out.push(f.long.to_string());
        if let Some(s) = f.short {
            out.push(format!("-{s}"));
        }
    }
    out
}

/// Why parsing ended without a command to run.
#[derive(Debug)]
pub enum Early {
    /// Help or the version, for stdout; exit 0.
    Print(String),
    /// A usage error (exit 2).
    Fail(crate::error::Error),
}

/// Parses the command line, answering `-h`/`--help`/`help`/`--version` and typos before argh sees them.
pub fn parse(inv: &super::argv::Invocation) -> Result<Cli, Early> {
    use argh::FromArgs;
    let program = super::program_name(inv);
    let args: Vec<&str> = inv.args.iter().map(String::as_str).collect();
    let usage = |m: String| Early::Fail(crate::error::Error::usage(m));
    let names = command_names();
    let Some(&first) = args.first() else { return Err(Early::Print(main_help(program))) };
    match first {
        "-h" | "--help" => return Err(Early::Print(main_help(program))),
        "--version" | "-v" => return Err(Early::Print(version())),
        "help" => {
            return match args.get(1) {
                None => Err(Early::Print(main_help(program))),
                Some(name) => {
                    Err(command_help(program, name).map_or_else(|| usage(unknown_command(program, name)), Early::Print))
                }
            };
        }
        flag if flag.starts_with('-') => {
            return Err(usage(format!(
                "{flag:?} before the command: give the command first, as in `{program} push {flag} ...` (run \
                 '{program} --help' for the commands)"
            )));
        }
        name if !names.contains(&name) => return Err(usage(unknown_command(program, name))),
        _ => {}
    }
    let switches = switches();
    let mut rest = args[1..].iter();
    while let Some(&a) = rest.next() {
        match a {
            "--" => break,
            "-h" | "--help" => return Err(Early::Print(command_help(program, first).unwrap_or_default())),
            flag if flag.starts_with('-') && !switches.iter().any(|s| s == flag) => {
                rest.next(); // its value, which may itself look like a flag
            }
            _ => {}
        }
    }
    Cli::from_args(&[program], &args).map_err(|early| {
        if early.status.is_ok() {
            return Early::Print(early.output);
        }
        usage(explain_argh(program, first, &early.output))
    })
}

fn version() -> String {
    format!("docker-idpb {}\n", env!("CARGO_PKG_VERSION"))
}

fn unknown_command(program: &str, name: &str) -> String {
    let name = crate::progress::escaped(name);
    match suggestion(&name, command_names()) {
        Some(s) => {
            format!("unknown command {name:?}: did you mean `{program} {s}`? (run '{program} --help' for the commands)")
        }
        None => format!("unknown command {name:?} (run '{program} --help' for the commands)"),
    }
}

/// argh's error for `command`, in one line with the fix: the closest flag for a typo, `--password-stdin`
/// for a password flag, and where the command's help is.
fn explain_argh(program: &str, command: &str, output: &str) -> String {
    let message = output.split_whitespace().collect::<Vec<_>>().join(" ");
    let help = format!("run '{program} {command} --help' for its options");
    if let Some(arg) = message.strip_prefix("Unrecognized argument: ") {
        let arg = crate::progress::escaped(arg.trim());
        if matches!(arg.as_str(), "-p" | "--password") && flag_names(command).iter().any(|f| f == "--password-stdin") {
            return format!(
                "{arg}: a password is never taken on the command line (it would show in `ps` and shell history); \
                 pipe it in: echo \"$TOKEN\" | {program} {command} ... -u USER --password-stdin"
            );
        }
        let flags = flag_names(command);
        if arg.starts_with('-') {
            let name = arg.split('=').next().unwrap_or(&arg);
            return match suggestion(name, flags.iter().map(String::as_str)) {
                Some(s) => format!("unknown flag {name} for {command}: did you mean {s}? ({help})"),
                None => format!("unknown flag {name} for {command} ({help})"),
            };
        }
        return format!("unexpected argument {arg:?} for {command}: it takes fewer arguments ({help})");
    }
    if let Some(flag) = message.strip_prefix("No value provided for option '").and_then(|m| m.split('\'').next()) {
        return format!("{flag} needs a value ({help})");
    }
    format!("{message} ({help})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_a_group_and_a_value_name() {
        let grouped: Vec<&str> = GROUPS.iter().flat_map(|(_, names)| names.iter().copied()).collect();
        // Commands whose few flags need no grouping.
        let small = ["trust", "logout", "credential", "version", "images", "rm", "prune"];
        for c in tree().commands {
            for f in c.command.flags {
                if !small.contains(&c.name) {
                    assert!(grouped.contains(&f.long), "{} {} has no help group", c.name, f.long);
                }
                if let FlagInfoKind::Option { arg_name } = f.kind {
                    assert!(
                        arg_name.chars().all(|ch| ch.is_ascii_uppercase() || "_:=/[]".contains(ch)),
                        "{} {}: value name {arg_name:?} (give arg_name = \"VALUE\")",
                        c.name,
                        f.long
                    );
                }
            }
            assert!(!c.command.examples.is_empty() || small.contains(&c.name), "{} has no examples", c.name);
        }
    }

    #[test]
    fn push_help_is_short_grouped_and_has_examples() {
        let help = command_help("docker-idpb", "push").unwrap();
        let usage = help.lines().next().unwrap();
        assert_eq!(usage, "Usage: docker-idpb push [OPTIONS] [CONTEXT]");
        for section in ["\nTarget:\n", "\nImage:\n", "\nRegistry and TLS:\n", "\nCredentials:\n", "\nOutput:\n"] {
            assert!(help.contains(section), "{section:?} in\n{help}");
        }
        assert!(help.contains("--chunk-size SIZE"), "{help}");
        assert!(help.contains("-t, --tag REF..."), "{help}");
        assert!(help.contains("\nExamples:\n  docker-idpb push"), "{help}");
        assert!(help.lines().all(|l| l.len() <= 100), "{help}");
    }

    #[test]
    fn suggestions_are_for_typos_only() {
        assert_eq!(suggestion("pusj", command_names()), Some("push"));
        assert_eq!(suggestion("--chunksize", ["--chunk-size", "--config"]), Some("--chunk-size"));
        assert_eq!(suggestion("deploy", command_names()), None);
        assert!(switches().contains(&"--insecure".to_string()) && !switches().contains(&"--tag".to_string()));
    }
}
