//! Reading back what the binary reported: `REF@sha256:HEX` result lines of `push` and `build`, digests, JSON
//! files and secrets that must not show up in its output.
//!
//! [`pushed_digest`] is the usual check of a text-mode push: success, exactly one line, for exactly the
//! expected reference, with a well-formed digest; [`build_digest`] builds into an OCI layout and checks
//! the same of the build's result line. [`sha256_digest`] computes a digest the way the binary
//! must have, to check a blob against its name.

use super::path_str;
use super::process::{Output, idpb};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;

/// Asserts `digest` is `sha256:` and 64 lowercase hex digits.
#[track_caller]
pub fn assert_digest(digest: &str) {
    let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{digest:?} is not a sha256 digest"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{digest:?} is not a sha256 digest"
    );
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The `REF@sha256:HEX` lines of a text-mode push, as (reference, digest); panics on any other line.
#[track_caller]
pub fn pushed_lines(output: &Output) -> Vec<(String, String)> {
    output
        .stdout
        .lines()
        .map(|line| {
            let (reference, digest) =
                line.rsplit_once('@').unwrap_or_else(|| panic!("no @digest in {line:?}: {output}"));
            assert_digest(digest);
            (reference.to_string(), digest.to_string())
        })
        .collect()
}

/// Asserts a successful push of exactly `target` (one `REF@DIGEST` line) and returns the manifest digest.
#[track_caller]
pub fn pushed_digest(output: &Output, target: &str) -> String {
    output.assert_success();
    let lines = pushed_lines(output);
    assert_eq!(lines.len(), 1, "one tag, one line: {output}");
    assert_eq!(lines[0].0, target, "{output}");
    lines[0].1.clone()
}

/// The `NAME:TAG@sha256:HEX` lines of a text-mode build (the same form as a push's), as (name, digest);
/// panics on any other line.
#[track_caller]
pub fn built_lines(output: &Output) -> Vec<(String, String)> {
    pushed_lines(output)
}

/// `docker-idpb build CONTEXT --oci-layout LAYOUT -t TAG EXTRA...` in an isolated environment plus `envs`:
/// asserts success and one result line for `tag`, and returns the manifest digest.
#[track_caller]
pub fn build_digest(context: &Path, layout: &Path, tag: &str, extra: &[&str], envs: &[(&str, &str)]) -> String {
    let mut args: Vec<String> = vec!["build".into(), path_str(context), "--oci-layout".into(), path_str(layout)];
    args.extend(["-t", tag].into_iter().chain(extra.iter().copied()).map(str::to_string));
    let output = idpb(&args, envs);
    output.assert_success();
    let lines = built_lines(&output);
    assert_eq!(lines.len(), 1, "one tag, one line: {output}");
    assert_eq!(lines[0].0, tag, "{output}");
    lines[0].1.clone()
}

/// Asserts none of `secrets` appears on stdout or stderr.
#[track_caller]
pub fn assert_no_secret(output: &Output, secrets: &[&str]) {
    for secret in secrets {
        assert!(!output.stdout.contains(secret) && !output.stderr.contains(secret), "{secret:?} leaked: {output}");
    }
}

/// A JSON array of strings as a `Vec` (null and non-strings give nothing).
pub fn strings(value: &serde_json::Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
}

/// The JSON document in the file at `path`.
#[track_caller]
pub fn read_json(path: &Path) -> serde_json::Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The last entry of a JSON result's `layers`: the layer docker-idpb wrote from the context (after a
/// base's layers; the rest of the context after any `--layer` ones).
#[track_caller]
pub fn last_layer(result: &serde_json::Value) -> &serde_json::Value {
    result["layers"].as_array().and_then(|l| l.last()).unwrap_or_else(|| panic!("no layers: {result}"))
}

/// The `--format json` result of a successful command (its stdout, one JSON object).
#[track_caller]
pub fn json_result(output: &Output) -> serde_json::Value {
    output.assert_success();
    serde_json::from_str(output.stdout.trim()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {output}"))
}

/// Asserts a failure with exit `code`, no panic, nothing on stdout and a stderr of exactly one
/// `docker-idpb: ` line (the command ran with -q) containing every one of `needles`.
#[track_caller]
pub fn assert_clean_error(output: &Output, code: i32, needles: &[&str]) {
    output.assert_code(code);
    assert_one_line_error(output, needles);
}

/// Asserts a failed run (non-zero exit, no panic, nothing on stdout) whose stderr is one `docker-idpb: `
/// line containing every one of `needles`; returns that line.
#[track_caller]
pub fn assert_one_line_error<'a>(output: &'a Output, needles: &[&str]) -> &'a str {
    assert!(output.code.is_some_and(|c| c != 0), "expected a failure: {output}");
    assert!(!output.stderr.contains("panicked"), "a panic: {output}");
    assert!(output.stdout.trim().is_empty(), "nothing on stdout: {output}");
    let lines: Vec<&str> = output.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "a one-line error: {output}");
    assert!(lines[0].starts_with("docker-idpb: "), "{output}");
    for needle in needles {
        assert!(lines[0].contains(needle), "the error mentions {needle:?}: {output}");
    }
    lines[0]
}
