//! First contact with the command line (issue 12), end to end against the real binary: help, version,
//! suggestions, and errors in the user's words.
//!
//! Help is checked for every command `docker-idpb --help` lists, so a command added later is covered
//! without touching this file: `-h` and `--help` print the same text on stdout, the usage line is short, and
//! there is an Examples section. That help and parsing cannot drift apart is checked from the outside too:
//! every flag a command's help shows is given back to that command, followed by a flag that does not exist,
//! and the parser must get past the shown flag (and its value) to complain about the unknown one. Errors
//! are read the way a user reads them: one `docker-idpb: ` line that names what was being done and the
//! fix that fits what the user typed, never an internal operation name (`check blob`), never a hint to
//! pass flags that were just passed. Registry failures come from a real `docker-registry`, refusals from
//! its htpasswd and token auth, 403s from the fault proxy in front of it; `--plain-http` meets a real TLS
//! port. Plugin framing goes through the real docker CLI, which execs the binary from a temp
//! `$DOCKER_CONFIG/cli-plugins`.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

// ---------------------------------------------------------------------------------------------------------
// Helpers

const USER: &str = "alice";
const PASSWORD: &str = "c0rrect-h0rse:PW@1";
const WRONG_PASSWORD: &str = "Wr0ng-Secret-zz9";

/// The names the binary used for what it was doing before issue 12: none may reach a user.
const INTERNAL_NAMES: &[&str] = &[
    "check blob",
    "start blob upload",
    "upload blob",
    "finish blob upload",
    "push manifest",
    "mount blob",
    "registry ping",
    "token request",
    "read blob",
    "read manifest",
    "for check",
];

/// `docker-idpb ARGS` in an isolated environment, run to completion.
fn idpb_run<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    IdpbCommand::new().args(args).run()
}

/// The commands `docker-idpb --help` lists under `Commands:`.
fn listed_commands() -> Vec<String> {
    let output = idpb_run(["--help"]);
    output.assert_success();
    let section = output.stdout.split("\nCommands:\n").nth(1).unwrap_or_else(|| panic!("no Commands: {output}"));
    let commands: Vec<String> = section
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    for expected in ["build", "push", "login", "logout", "catalog", "tags", "inspect", "credential", "version"] {
        assert!(commands.iter().any(|c| c == expected), "--help lists {expected}: {output}");
    }
    commands
}

/// The lines of section `title` of a help text (from `TITLE:` up to the next blank line).
fn help_section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    let start = format!("\n{title}:\n");
    let Some(at) = help.find(&start) else { return Vec::new() };
    help[at + start.len()..].lines().take_while(|l| !l.trim().is_empty()).collect()
}

/// The flags a help text shows, with the value name each one takes (`--chunk-size` -> `Some("SIZE")`).
fn shown_flags(help: &str) -> Vec<(String, Option<String>)> {
    let mut flags = Vec::new();
    for line in help.lines().filter(|l| l.starts_with("  -")) {
        let label: Vec<&str> = line.trim_start().split("  ").next().unwrap_or_default().split_whitespace().collect();
        // `-t, --tag REF...` or `--insecure`.
        let Some(at) = label.iter().position(|w| w.starts_with("--")) else { continue };
        let value = label.get(at + 1).map(|v| v.trim_end_matches("...").to_string());
        flags.push((label[at].to_string(), value));
    }
    flags
}

/// A value the parser accepts for a flag whose help shows `value_name`.
fn sample_value(value_name: &str) -> &'static str {
    match value_name {
        "SIZE" => "1MiB",
        "N" | "LEVEL" => "1",
        "BOOL" => "true",
        "DURATION" => "5s",
        _ => "x",
    }
}

/// Asserts `output` mentions none of [`INTERNAL_NAMES`].
#[track_caller]
fn assert_no_internal_names(output: &Output) {
    for name in INTERNAL_NAMES {
        assert!(!output.stderr.contains(name), "the internal name {name:?} reached the user: {output}");
    }
}

/// The argument a POSIX shell makes of `fragment` (a quoted word as a user would paste it).
fn shell_word(fragment: &str) -> String {
    let script = format!("set -- {fragment}; [ $# -eq 1 ] || exit 3; printf %s \"$1\"");
    let output = checked(Command::new("/bin/sh").arg("-c").arg(&script));
    output.stdout
}

/// The `FLAG '...'` the error suggests (everything after `e.g. FLAG `), as a shell word.
#[track_caller]
fn suggested_value(output: &Output, flag: &str) -> String {
    let marker = format!("e.g. {flag} ");
    let at = output.stderr.find(&marker).unwrap_or_else(|| panic!("no `{marker}` suggestion: {output}"));
    let fragment = output.stderr[at + marker.len()..].trim_end();
    shell_word(fragment)
}

/// `config.json` in `dir` holding `user:pass` for `host`, as `docker login` writes it.
fn write_config_json(dir: &Path, host: &str, user: &str, pass: &str) -> PathBuf {
    let path = dir.join("config.json");
    let config = json!({ "auths": { host: { "auth": base64(format!("{user}:{pass}").as_bytes()) } } });
    write_file(&path, config.to_string().as_bytes());
    path
}

/// The config blob of the image built as `NAME:TAG` into the OCI layout `layout` (which names it by TAG).
fn layout_config(layout: &Path, name_tag: &str) -> Value {
    skopeo_inspect_layout_config(layout, layout_tag(name_tag))
}

/// The layout's name for an image built as `NAME:TAG` (its `org.opencontainers.image.ref.name`): TAG.
fn layout_tag(name_tag: &str) -> &str {
    name_tag.rsplit(':').next().unwrap_or(name_tag)
}

/// `build CONTEXT --oci-layout LAYOUT -t TAG EXTRA...` in an isolated environment (not checked).
fn build(context: &Path, layout: &Path, tag: &str, extra: &[&str]) -> Output {
    let mut cmd = IdpbCommand::new();
    cmd.arg("build").arg(context).arg("--oci-layout").arg(layout).args(["-t", tag]).args(extra);
    cmd.run()
}

// ---------------------------------------------------------------------------------------------------------
// 1. Help, -h, version, suggestions.

#[test]
fn every_command_answers_h_and_help_alike_with_a_short_usage_and_examples() {
    let top = idpb_run(["--help"]);
    top.assert_success();
    for args in [&["-h"][..], &["help"], &[]] {
        let output = idpb_run(args);
        output.assert_success();
        assert_eq!(output.stdout, top.stdout, "`docker-idpb {}` is the main help: {output}", args.join(" "));
    }
    assert!(top.stdout.starts_with("Usage: docker-idpb COMMAND"), "{top}");

    for command in listed_commands() {
        let long = idpb_run([&command, "--help"]);
        let short = idpb_run([&command, "-h"]);
        let topic = idpb_run(["help", &command]);
        for output in [&long, &short, &topic] {
            output.assert_success();
            assert_eq!(output.stderr, "", "help goes to stdout only: {output}");
        }
        assert_eq!(short.stdout, long.stdout, "`{command} -h` and `{command} --help` differ");
        assert_eq!(topic.stdout, long.stdout, "`help {command}` and `{command} --help` differ");

        let usage = long.stdout.lines().next().unwrap_or_default();
        assert!(usage.starts_with(&format!("Usage: docker-idpb {command}")), "{long}");
        assert!(usage.len() < 80, "the usage line of {command} is {} characters: {usage:?}", usage.len());
        let examples = help_section(&long.stdout, "Examples");
        assert!(!examples.is_empty(), "{command} has an Examples section: {long}");
        let invocation = format!("docker-idpb {command}");
        assert!(examples.iter().any(|e| e.contains(&invocation)), "an example runs {invocation}: {long}");
        assert!(!long.stdout.contains("{command_name}"), "placeholders are filled in: {long}");

        // -h after other arguments is still help, and nothing runs.
        let late = idpb_run([command.as_str(), "some-arg", "-h"]);
        late.assert_success();
        assert_eq!(late.stdout, long.stdout, "`{command} some-arg -h` is its help");
    }
}

#[test]
fn push_help_is_grouped_and_shows_each_options_value() {
    let output = idpb_run(["push", "--help"]);
    output.assert_success();
    let help = &output.stdout;
    assert_eq!(help.lines().next(), Some("Usage: docker-idpb push [OPTIONS] [CONTEXT]"), "{output}");

    let in_section = |title: &str, label: &str| help_section(help, title).iter().any(|l| l.contains(label));
    let expected = [
        ("Target", &["-t, --tag REF", "--oci-layout DIR", "--image NAME:TAG"][..]),
        ("Image", &["--base REF", "--cmd CMD", "--user USER", "--layer PATTERN", "--prefix DIR"]),
        ("Registry and TLS", &["--plain-http", "--ca-file FILE", "--chunk-size SIZE", "--timeout DURATION"]),
        ("Credentials", &["-u, --username USER", "--password-stdin", "--config DIR"]),
        ("Output", &["--format FORMAT", "-q, --quiet", "-h, --help"]),
    ];
    for (title, labels) in expected {
        assert!(!help_section(help, title).is_empty(), "a {title} section: {output}");
        for label in labels {
            assert!(in_section(title, label), "{label:?} under {title}: {output}");
        }
    }
    // Every option is in a group: no catch-all list for push.
    assert!(help_section(help, "Options").is_empty(), "push has no ungrouped options: {output}");
    assert!(!help_section(help, "Examples").is_empty(), "{output}");
    assert!(help.lines().all(|l| l.len() <= 100), "help fits 100 columns: {output}");
}

#[test]
fn every_flag_the_help_shows_is_one_the_command_parses() {
    for command in listed_commands() {
        let help = idpb_run([&command, "--help"]);
        help.assert_success();
        let flags = shown_flags(&help.stdout);
        assert!(flags.iter().any(|(f, _)| f == "--help"), "{command} shows --help: {help}");
        for (flag, value) in flags.iter().filter(|(f, _)| f != "--help") {
            let mut args = vec![command.clone(), flag.clone()];
            args.extend(value.as_deref().map(|v| sample_value(v).to_string()));
            args.push("--zz-no-such-flag".to_string());
            let output = idpb_run(&args);
            // The parser took FLAG (and its value) and stopped at the unknown flag after it.
            output.assert_code(2);
            let unknown = format!("unknown flag --zz-no-such-flag for {command}");
            assert!(output.stderr.contains(&unknown), "`{}` is shown in help but not parsed: {output}", args.join(" "));
        }
    }
}

#[test]
fn docker_idpb_push_h_is_the_plugins_help() {
    let standalone = idpb_run(["push", "--help"]);
    standalone.assert_success();
    for flag in ["-h", "--help"] {
        let output = docker_cli().args(["idpb", "push", flag]).run();
        output.assert_success();
        assert_eq!(output.stdout.lines().next(), Some("Usage: docker idpb push [OPTIONS] [CONTEXT]"), "{output}");
        // The same help, naming the command as the user typed it.
        assert_eq!(output.stdout, standalone.stdout.replace("docker-idpb push", "docker idpb push"), "{output}");
    }

    // A usage error through docker names the command as typed there too.
    let output = docker_cli().args(["idpb", "login", "127.0.0.1:1", "-p", "secret"]).run();
    output.assert_code(2);
    assert!(output.stderr.contains("--password-stdin"), "{output}");
    assert!(output.stderr.contains("docker idpb login"), "the hint names `docker idpb login`: {output}");

    // So does an error from the library: a push from an empty store points to `docker idpb images`...
    let home = TempDir::new("cli-plugin-store");
    let mut cmd = docker_cli();
    cmd.env("IDPB_HOME", home.path()).args(["idpb", "push", "--image", "missing:1", "-t", "127.0.0.1:1/ns/x:1"]);
    let output = cmd.run();
    output.assert_failure();
    assert!(output.stderr.contains("docker idpb build"), "{output}");
    assert!(!output.stderr.contains("docker-idpb build"), "{output}");
    // ...and the same command standalone names `docker-idpb`.
    let mut cmd = IdpbCommand::new();
    cmd.env("IDPB_HOME", home.path()).args(["push", "--image", "missing:1", "-t", "127.0.0.1:1/ns/x:1"]);
    let output = cmd.run();
    assert!(output.stderr.contains("docker-idpb build"), "{output}");
}

#[test]
fn version_flag_and_command_print_the_version() {
    let expected = format!("docker-idpb {}\n", env!("CARGO_PKG_VERSION"));
    for args in [&["--version"][..], &["version"]] {
        let output = idpb_run(args);
        output.assert_success();
        assert_eq!(output.stdout, expected, "{output}");
        assert_eq!(output.stderr, "", "{output}");
    }
}

#[test]
fn an_unknown_command_or_flag_suggests_the_closest() {
    let output = idpb_run(["pusj", "./site"]);
    assert_clean_error(&output, 2, &["\"pusj\"", "docker-idpb push"]);

    let output = idpb_run(["bulid"]);
    assert_clean_error(&output, 2, &["\"bulid\"", "docker-idpb build"]);

    // Nothing close: no guess, still where to look.
    let output = idpb_run(["deploy"]);
    assert_clean_error(&output, 2, &["\"deploy\"", "docker-idpb --help"]);
    assert!(!output.stderr.contains("did you mean"), "{output}");

    let output = idpb_run(["push", ".", "--chunksize", "1M"]);
    assert_clean_error(&output, 2, &["--chunksize", "--chunk-size", "push --help"]);

    let output = idpb_run(["build", ".", "--prefx", "/app"]);
    assert_clean_error(&output, 2, &["--prefx", "--prefix", "build --help"]);
}

#[test]
fn a_password_flag_points_to_password_stdin_before_any_contact() {
    let tmp = TempDir::new("cli-login-p");
    for flag in ["-p", "--password"] {
        let mut cmd = IdpbCommand::new();
        cmd.args(["login", "127.0.0.1:1", "-u", USER, flag, "s3cret-on-argv"]);
        let output = cmd.run();
        assert_clean_error(&output, 2, &[flag, "--password-stdin", "docker-idpb login"]);
        assert!(!cmd.docker_config().join("config.json").exists(), "nothing saved: {output}");
    }
    // push has --password-stdin too: the same pointer.
    let output = idpb_run(["push", &path_str(tmp.path()), "-t", "127.0.0.1:1/ns/x:1", "-p", "x"]);
    assert_clean_error(&output, 2, &["--password-stdin", "docker-idpb push"]);
}

// ---------------------------------------------------------------------------------------------------------
// 2. push with no CONTEXT; --image from the store; a missing context.

#[test]
fn push_without_a_context_pushes_the_current_directory() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("cli-push-cwd");
    let context = tmp.subdir("site");
    make_small_context(&context, "cwd");

    let target = registry.reference("ns/cwd:1");
    let mut cmd = IdpbCommand::new();
    cmd.current_dir(&context).args(["push", "-t", &target]);
    let output = cmd.run();
    let digest = pushed_digest(&output, &target);
    assert_eq!(stored_digest(&registry, "ns/cwd", "1"), Some(digest.clone()), "{output}");

    let manifest = skopeo_inspect_raw(&registry, "ns/cwd:1");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1), "one layer: {manifest}");
    let config = skopeo_inspect_config(&registry, "ns/cwd:1");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(1), "{config}");
    assert_pulls_as(&registry, "ns/cwd:1", &context, &[], &tmp);

    // The same image as naming the directory.
    let target2 = registry.reference("ns/cwd:2");
    let output = idpb_run(["push", &path_str(&context), "-t", &target2]);
    assert_eq!(pushed_digest(&output, &target2), digest, "`push` in DIR and `push DIR` give one image");
}

#[test]
fn push_image_takes_a_name_from_the_store_and_lists_it_when_missing() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("cli-push-image");
    let context = tmp.subdir("site");
    make_small_context(&context, "store");
    let store = tmp.subdir("store");

    let mut cmd = IdpbCommand::new();
    cmd.env("IDPB_HOME", &store).arg("build").arg(&context).args(["-t", "site:1", "-q"]);
    let built = cmd.run();
    built.assert_success();
    let built_digest = built_lines(&built)[0].1.clone();

    // --image NAME, from a directory that is itself a context: the store's image, not the directory.
    let target = registry.reference("ns/stored:1");
    let mut cmd = IdpbCommand::new();
    cmd.env("IDPB_HOME", &store).current_dir(tmp.path()).args(["push", "--image", "site:1", "-t", &target]);
    let output = cmd.run();
    assert_eq!(pushed_digest(&output, &target), built_digest, "the stored image went out: {output}");

    let target = registry.reference("ns/stored:2");
    let mut cmd = IdpbCommand::new();
    cmd.env("IDPB_HOME", &store).current_dir(&context).args(["push", "--image", "missing:1", "-t", &target, "-q"]);
    let output = cmd.run();
    assert_one_line_error(&output, &["missing:1", "site:1", "local store"]);
    assert_eq!(stored_digest(&registry, "ns/stored", "2"), None, "the current directory was not pushed instead");
}

#[test]
fn a_push_error_about_the_context_speaks_of_push_not_build() {
    let tmp = TempDir::new("cli-push-missing");
    let missing = tmp.join("no-such-dir");
    let output = idpb_run(["push", &path_str(&missing), "-t", "127.0.0.1:1/ns/x:1", "-q"]);
    let line = assert_one_line_error(&output, &[&path_str(&missing), "does not exist"]);
    assert!(!line.contains("build"), "a push error shows no build example: {output}");

    let file = tmp.join("file.txt");
    write_file(&file, b"not a directory\n");
    let output = idpb_run(["push", &path_str(&file), "-t", "127.0.0.1:1/ns/x:1", "-q"]);
    let line = assert_one_line_error(&output, &[&path_str(&file), "not a directory"]);
    assert!(!line.contains("build"), "a push error shows no build example: {output}");
}

// ---------------------------------------------------------------------------------------------------------
// 3. Refusals and registry errors in the user's words.

#[test]
fn a_wrong_password_from_the_flags_is_refused_without_telling_to_pass_them() {
    let registry = Registry::start(RegistryMode::basic(USER, PASSWORD));
    let ca = registry.ca().unwrap_or_else(|| panic!("an HTTPS registry has a CA"));
    let tmp = TempDir::new("cli-refused-flags");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "refused");
    let host = registry.host();
    let target = registry.reference("ns/refused:1");

    let mut cmd = IdpbCommand::new();
    cmd.arg("push").arg(&context).args(["-t", &target, "-u", USER, "--password-stdin", "--ca-file"]).arg(ca);
    cmd.arg("-q");
    let output = run_with_stdin(&mut cmd, &format!("{WRONG_PASSWORD}\n"));
    let line = assert_one_line_error(&output, &[&host, "refused the user name or password", "to push to ns/refused"]);
    output.assert_code(1);
    for hint in ["-u USER", "--password-stdin", "docker login"] {
        assert!(!line.contains(hint), "no {hint:?} for a user who just gave -u and --password-stdin: {output}");
    }
    assert_no_internal_names(&output);
    assert_no_secret(&output, &[WRONG_PASSWORD, PASSWORD]);
    assert_eq!(stored_digest(&registry, "ns/refused", "1"), None);

    // The same wrong password stored by `docker login`: the fix is to log in again.
    let mut cmd = IdpbCommand::new();
    let config = write_config_json(&cmd.docker_config(), &host, USER, WRONG_PASSWORD);
    cmd.arg("push").arg(&context).args(["-t", &target, "--ca-file"]).arg(ca).arg("-q");
    let output = cmd.run();
    assert_one_line_error(&output, &[&path_str(&config), &format!("docker login {host}"), "to push to ns/refused"]);
    output.assert_code(1);
    assert_no_internal_names(&output);
    assert_no_secret(&output, &[WRONG_PASSWORD, PASSWORD]);
    assert_eq!(stored_digest(&registry, "ns/refused", "1"), None);
}

#[test]
fn a_failed_login_says_the_user_name_or_password_was_refused() {
    for mode in [RegistryMode::basic(USER, PASSWORD), RegistryMode::token(USER, PASSWORD)] {
        let registry = Registry::start(mode.clone());
        let ca = registry.ca().unwrap_or_else(|| panic!("an HTTPS registry has a CA"));
        let host = registry.host();

        let mut cmd = IdpbCommand::new();
        cmd.args(["login", &host, "-u", USER, "--password-stdin", "--ca-file"]).arg(ca);
        let output = run_with_stdin(&mut cmd, &format!("{WRONG_PASSWORD}\n"));
        let line = assert_one_line_error(&output, &[&host, "refused the user name or password"]);
        output.assert_code(1);
        for hint in ["docker login", "-u USER", "--password-stdin"] {
            assert!(!line.contains(hint), "{mode:?}: a failed login does not say {hint:?}: {output}");
        }
        assert_no_internal_names(&output);
        assert_no_secret(&output, &[WRONG_PASSWORD, PASSWORD]);
        assert!(!cmd.docker_config().join("config.json").exists(), "nothing saved: {output}");

        // The right password logs in: the refusal above was the password's doing.
        let mut cmd = IdpbCommand::new();
        cmd.args(["login", &host, "-u", USER, "--password-stdin", "--ca-file"]).arg(ca);
        let output = run_with_stdin(&mut cmd, &format!("{PASSWORD}\n"));
        output.assert_success();
        assert!(output.stderr.contains("Login Succeeded"), "{output}");
    }
}

#[test]
fn registry_errors_name_what_was_being_done_not_internal_operations() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("cli-registry-errors");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "errors");

    let cases = [
        // The registry forbids uploads.
        (Rule::every("POST", "/blobs/uploads/", Fault::error(403, "DENIED", "no")), &["403", "DENIED", "upload"][..]),
        // The registry forbids the manifest.
        (Rule::every("PUT", "/manifests/", Fault::error(403, "DENIED", "no")), &["403", "DENIED", "manifest"]),
        // A registry that wants a login it never announced (a 401 with no challenge) on the first blob check.
        (
            Rule::every("HEAD", "/blobs/", Fault::error(401, "UNAUTHORIZED", "authentication required")),
            &["requires a login", "to push to ns/errors"],
        ),
    ];
    for (rule, needles) in cases {
        let label = format!("{} {}", rule.method, rule.path);
        let proxy = FaultProxy::start(registry.port(), ProxyOptions::default().rule(rule));
        let target = proxy.reference("ns/errors:1");
        let output = idpb_run(["push", &path_str(&context), "-t", &target, "-q", "--retries", "0"]);
        let mut needles = needles.to_vec();
        let host = proxy.host();
        needles.push(&host);
        assert_one_line_error(&output, &needles);
        assert!(!proxy.faults().is_empty(), "{label}: the fault fired:\n{}", proxy.log());
        assert_no_internal_names(&output);
        assert_eq!(stored_digest(&registry, "ns/errors", "1"), None, "{label}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// 4. Image flags: --cmd with quotes, --user by name on scratch.

#[test]
fn cmd_with_quotes_or_shell_syntax_points_to_the_json_form_and_builds_nothing() {
    let tmp = TempDir::new("cli-cmd");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "cmd");
    let layout = tmp.join("out");

    let cases: [(&str, &str, &str, &[&str]); 4] = [
        ("--cmd", r#"sh -c "echo hi""#, r#"["sh", "-c", "echo hi"]"#, &["sh", "-c", "echo hi"]),
        (
            "--cmd",
            "echo $HOME && ls",
            r#"["/bin/sh", "-c", "echo $HOME && ls"]"#,
            &["/bin/sh", "-c", "echo $HOME && ls"],
        ),
        ("--entrypoint", "python3 -c 'print(1)'", r#"["python3", "-c", "print(1)"]"#, &["python3", "-c", "print(1)"]),
        ("--cmd", "echo it's", r#"["/bin/sh", "-c", "echo it"#, &["/bin/sh", "-c", "echo it's"]),
    ];
    for (n, (flag, value, shown, words)) in cases.into_iter().enumerate() {
        let output = build(&context, &layout, "app:1", &[flag, value, "-q"]);
        assert_clean_error(&output, 2, &[flag, shown, "JSON"]);
        assert!(!layout.exists(), "{flag} {value:?}: nothing was built: {output}");

        // The suggestion, pasted into a shell, is a value the same flag takes, giving the words meant.
        let suggested = suggested_value(&output, flag);
        let tag = format!("app:{n}");
        let built = build(&context, &layout, &tag, &[flag, &suggested, "-q"]);
        built.assert_success();
        let key = if flag == "--cmd" { "Cmd" } else { "Entrypoint" };
        assert_eq!(strings(&layout_config(&layout, &tag)["config"][key]), words, "{flag} {suggested:?}: {built}");
        fs::remove_dir_all(&layout).unwrap_or_else(|e| panic!("cannot remove {}: {e}", layout.display()));
    }

    // A plain string with no quotes is still split on whitespace.
    let output = build(&context, &layout, "app:plain", &["--cmd", "/app -v", "-q"]);
    output.assert_success();
    assert_eq!(strings(&layout_config(&layout, "app:plain")["config"]["Cmd"]), ["/app", "-v"], "{output}");
}

#[test]
fn cmd_with_quotes_is_refused_by_push_before_any_request() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("cli-cmd-push");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "cmd-push");
    let before = registry.requests().len();
    let target = registry.reference("ns/cmd:1");
    let output = idpb_run(["push", &path_str(&context), "-t", &target, "--cmd", r#"sh -c "echo hi""#, "-q"]);
    assert_clean_error(&output, 2, &[r#"["sh", "-c", "echo hi"]"#]);
    assert_eq!(registry.requests().len(), before, "the registry heard nothing: {:?}", registry.requests());
}

#[test]
fn user_by_name_on_scratch_warns_that_there_is_no_etc_passwd() {
    let tmp = TempDir::new("cli-user");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "user");
    let layout = tmp.join("out");

    for user in ["nobody", "nobody:nogroup", "0:wheel"] {
        let output = build(&context, &layout, "app:named", &["--user", user]);
        output.assert_success();
        assert_eq!(built_lines(&output).len(), 1, "it still builds: {output}");
        let warning = output.stderr.lines().find(|l| l.starts_with("warning: ") && l.contains("/etc/passwd"));
        let warning = warning.unwrap_or_else(|| panic!("--user {user}: no /etc/passwd warning: {output}"));
        assert!(warning.contains(user) && warning.contains("--base"), "{warning}");
        assert_eq!(layout_config(&layout, "app:named")["config"]["User"], user, "{output}");
    }

    // Numeric ids need no /etc/passwd.
    for user in ["65534:65534", "1000", "0:0"] {
        let output = build(&context, &layout, "app:numeric", &["--user", user]);
        output.assert_success();
        assert!(!output.stderr.contains("/etc/passwd"), "--user {user}: no warning: {output}");
    }

    // A context that brings its own /etc/passwd (at the root, or under --prefix /etc) needs no warning.
    let with_passwd = tmp.subdir("with-passwd");
    make_small_context(&with_passwd, "passwd");
    write_file(&with_passwd.join("etc/passwd"), b"nobody:x:65534:65534:nobody:/:/sbin/nologin\n");
    let output = build(&with_passwd, &layout, "app:passwd", &["--user", "nobody"]);
    output.assert_success();
    assert!(!output.stderr.contains("/etc/passwd"), "the context has etc/passwd: {output}");

    let etc = tmp.subdir("etc-dir");
    write_file(&etc.join("passwd"), b"nobody:x:65534:65534:nobody:/:/sbin/nologin\n");
    let output = build(&etc, &layout, "app:prefix", &["--user", "nobody", "--prefix", "/etc"]);
    output.assert_success();
    assert!(!output.stderr.contains("/etc/passwd"), "--prefix /etc puts passwd at /etc/passwd: {output}");
    // ... but the same file elsewhere is not /etc/passwd.
    let output = build(&etc, &layout, "app:elsewhere", &["--user", "nobody", "--prefix", "/srv"]);
    output.assert_success();
    assert!(output.stderr.contains("/etc/passwd"), "/srv/passwd is not /etc/passwd: {output}");
}

#[test]
fn user_by_name_on_scratch_warns_on_push_too() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("cli-user-push");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "user-push");
    let target = registry.reference("ns/user:1");
    let output = idpb_run(["push", &path_str(&context), "-t", &target, "--user", "nobody"]);
    let digest = pushed_digest(&output, &target);
    assert!(output.stderr.contains("warning: ") && output.stderr.contains("/etc/passwd"), "{output}");
    assert_eq!(stored_digest(&registry, "ns/user", "1"), Some(digest));
    assert_eq!(skopeo_inspect_config(&registry, "ns/user:1")["config"]["User"], "nobody");

    let target = registry.reference("ns/user:2");
    let output = idpb_run(["push", &path_str(&context), "-t", &target, "--user", "65534:65534"]);
    pushed_digest(&output, &target);
    assert!(!output.stderr.contains("/etc/passwd"), "{output}");
}

// ---------------------------------------------------------------------------------------------------------
// 5. --plain-http to a TLS port; build --list under --prefix and --layer.

#[test]
fn plain_http_to_a_tls_port_says_it_speaks_tls_at_once() {
    let registry = Registry::start(RegistryMode::Https);
    let tmp = TempDir::new("cli-plain-http");
    let context = tmp.subdir("ctx");
    make_small_context(&context, "plain-http");
    let host = registry.host();
    let target = registry.reference("ns/plain:1");

    let commands: [Vec<String>; 2] = [
        vec!["push".into(), path_str(&context), "-t".into(), target.clone(), "--plain-http".into(), "-q".into()],
        vec!["catalog".into(), host.clone(), "--plain-http".into(), "-q".into()],
    ];
    for args in commands {
        let started = Instant::now();
        let output = idpb_run(&args);
        let took = started.elapsed();
        assert_clean_error(&output, 2, &[&host, "speaks TLS", "--plain-http"]);
        assert!(took < Duration::from_secs(5), "`{}` took {took:?} (no retries): {output}", args.join(" "));
        assert!(!output.stderr.contains("attempts"), "{output}");
    }
    assert_eq!(stored_digest(&registry, "ns/plain", "1"), None);
}

#[test]
fn build_list_shows_the_paths_under_prefix_by_layer() {
    let tmp = TempDir::new("cli-list");
    let context = tmp.subdir("ctx");
    write_file(&context.join("a/one.txt"), b"1\n");
    write_file(&context.join("a/sub/two.txt"), b"2\n");
    write_file(&context.join("b/three.txt"), b"3\n");
    write_file(&context.join("top.txt"), b"4\n");
    let layout = tmp.join("out");
    let list = |extra: &[&str]| {
        let mut cmd = IdpbCommand::new();
        cmd.arg("build").arg(&context).args(["--list", "--prefix", "/srv/www"]).args(extra);
        let output = cmd.run();
        output.assert_success();
        output
    };

    let output = list(&[]);
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert!(lines.iter().all(|l| l.starts_with("srv/www/")), "every path is under the prefix: {output}");
    for path in ["srv/www/a/", "srv/www/a/one.txt", "srv/www/a/sub/two.txt", "srv/www/b/three.txt", "srv/www/top.txt"] {
        assert!(lines.contains(&path), "{path} listed: {output}");
    }
    assert!(!layout.exists(), "--list builds nothing");

    let output = list(&["--layer", "a/"]);
    let mut layers: Vec<(String, BTreeSet<String>)> = Vec::new();
    for line in output.stdout.lines() {
        if let Some(header) = line.strip_prefix("# layer ") {
            layers.push((header.to_string(), BTreeSet::new()));
        } else {
            let (_, paths) = layers.last_mut().unwrap_or_else(|| panic!("a path before any # layer header: {output}"));
            paths.insert(line.to_string());
        }
    }
    assert_eq!(layers.len(), 2, "two layers: {output}");
    assert!(layers[0].0.contains("a/"), "the first is --layer a/: {output}");
    assert!(layers[0].1.iter().all(|p| p.starts_with("srv/www/a/")), "{output}");
    assert!(layers[1].1.contains("srv/www/top.txt") && layers[1].1.contains("srv/www/b/three.txt"), "{output}");

    // What --list prints is what a build stores, layer by layer (less the prefix's own directories).
    let built = build(&context, &layout, "site:1", &["--prefix", "/srv/www", "--layer", "a/", "-q"]);
    built.assert_success();
    let manifest = skopeo_inspect_layout_raw(&layout, layout_tag("site:1"));
    let digests: Vec<String> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["digest"].as_str().map(String::from))
        .collect();
    assert_eq!(digests.len(), layers.len(), "{manifest}");
    for (digest, (header, listed)) in digests.iter().zip(&layers) {
        let blob = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        let tar = checked(Command::new(require_tool("tar")).arg("-tzf").arg(&blob));
        let stored: BTreeSet<String> =
            tar.stdout.lines().filter(|l| !matches!(*l, "srv/" | "srv/www/")).map(str::to_string).collect();
        assert_eq!(&stored, listed, "layer {header}: --list and the layer differ");
    }
}
