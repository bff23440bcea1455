//! One output vocabulary: what `build`, `push` and `inspect` print, held against one schema.
//!
//! Each command's `--format json` result, for a single image and for a two-platform index, must have the
//! same required keys with the same JSON types (plus only its own documented extras: `output` for build,
//! `sent` for push, `created`/`config`/`annotations` per image for inspect), and the numbers must be the
//! blobs' own: `size` is the byte length of the manifest or index the reference names (read from the
//! layout, or fetched from the registry), `total_size` the sum of every blob it reaches, each once. Tags
//! given twice give one tag and one reference; `tags` holds tags, not references. The text output of
//! `build` and `push` is exactly one `REF@sha256:DIGEST` line per tag, `-q` does not change it, and
//! `--image-refs FILE` holds the same lines. The same image built into a layout, pushed to a registry and
//! inspected there is described with the same values.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use support::*;

// ---------------------------------------------------------------------------------------------------------
// The schema

/// The JSON type a key must have.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    Num,
    Strs,
    Layers,
    Images,
}

use Kind::*;

/// Every result: what names it, and what it names.
const COMMON: &[(&str, Kind)] = &[
    ("name", Str),
    ("tags", Strs),
    ("references", Strs),
    ("digest", Str),
    ("mediaType", Str),
    ("size", Num),
    ("total_size", Num),
];

/// One image: at the top of a single image's result, and each entry of an index's `platforms`.
const IMAGE: &[(&str, Kind)] = &[
    ("digest", Str),
    ("mediaType", Str),
    ("size", Num),
    ("platform", Str),
    ("config_digest", Str),
    ("config_size", Num),
    ("layers", Layers),
];

const LAYER: &[(&str, Kind)] = &[("mediaType", Str), ("digest", Str), ("size", Num), ("diff_id", Str)];

/// The keys a command may add: at the top of its result, and to each image.
struct Extras {
    top: &'static [&'static str],
    image: &'static [&'static str],
}

const BUILD: Extras = Extras { top: &["output"], image: &[] };
const PUSH: Extras = Extras { top: &["sent"], image: &[] };
const INSPECT: Extras = Extras { top: &[], image: &["created", "config", "annotations"] };

#[track_caller]
fn check_kind(value: &Value, key: &str, kind: Kind, whole: &Value) {
    let v = &value[key];
    let ok = match kind {
        Str => v.as_str().is_some_and(|s| !s.is_empty()),
        Num => v.is_u64(),
        Strs => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        Layers => v.as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter().all(|l| {
                    check_keys(l, LAYER, &[], whole);
                    true
                })
        }),
        Images => v.as_array().is_some_and(|a| !a.is_empty()),
    };
    assert!(ok, "{key} must be {kind:?}, is {v}: {whole}");
}

/// Asserts `value` has every key of `required` with its type, and no key beyond those and `extra`.
#[track_caller]
fn check_keys(value: &Value, required: &[(&str, Kind)], extra: &[&str], whole: &Value) {
    let obj = value.as_object().unwrap_or_else(|| panic!("an object: {value} in {whole}"));
    for (key, kind) in required {
        check_kind(value, key, *kind, whole);
    }
    let unexpected: Vec<&String> =
        obj.keys().filter(|k| !required.iter().any(|(r, _)| r == k) && !extra.contains(&k.as_str())).collect();
    assert!(unexpected.is_empty(), "keys outside the schema: {unexpected:?} in {whole}");
}

/// Asserts the result of one command fits the schema: a single image, or an index (with `platforms`).
#[track_caller]
fn check_schema(result: &Value, extras: &Extras) {
    if result.get("platforms").is_some() {
        let mut required = COMMON.to_vec();
        required.push(("platforms", Images));
        check_keys(result, &required, extras.top, result);
        for image in result["platforms"].as_array().into_iter().flatten() {
            check_keys(image, IMAGE, extras.image, result);
        }
    } else {
        let mut required = COMMON.to_vec();
        required.extend(IMAGE.iter().filter(|(k, _)| !COMMON.iter().any(|(c, _)| c == k)));
        let extra: Vec<&str> = extras.top.iter().chain(extras.image).copied().collect();
        check_keys(result, &required, &extra, result);
    }
    let references = strings(&result["references"]);
    let mut unique = references.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), references.len(), "no reference twice: {result}");
    let digest = result["digest"].as_str().unwrap_or_default();
    assert!(references.iter().all(|r| r.ends_with(&format!("@{digest}"))), "references pin the digest: {result}");
}

/// What two results must agree on when they describe the same image: everything but the names and the
/// command's extras.
fn described(result: &Value) -> Value {
    let keep = |v: &Value, keys: &[(&str, Kind)]| -> Value {
        let mut out = serde_json::Map::new();
        for (k, _) in keys {
            out.insert(k.to_string(), v[*k].clone());
        }
        Value::Object(out)
    };
    let mut top = keep(result, IMAGE);
    top["total_size"] = result["total_size"].clone();
    if let Some(platforms) = result["platforms"].as_array() {
        top = keep(result, &[("digest", Str), ("mediaType", Str), ("size", Num), ("total_size", Num)]);
        top["platforms"] = Value::Array(platforms.iter().map(|p| keep(p, IMAGE)).collect());
    }
    top
}

// ---------------------------------------------------------------------------------------------------------
// Blobs, from a layout or a registry

/// Every blob the manifest or index `digest` reaches (itself included), with its size, each once.
fn reachable(fetch: &dyn Fn(&str) -> Vec<u8>, digest: &str) -> BTreeMap<String, u64> {
    let mut blobs = BTreeMap::new();
    let bytes = fetch(digest);
    blobs.insert(digest.to_string(), bytes.len() as u64);
    let doc: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{digest} is not JSON: {e}"));
    let manifests: Vec<(String, Value)> = match doc["manifests"].as_array() {
        Some(list) => list
            .iter()
            .map(|m| {
                let d = m["digest"].as_str().unwrap_or_default().to_string();
                let bytes = fetch(&d);
                assert_eq!(m["size"], bytes.len(), "the index names {d} with its size");
                blobs.insert(d.clone(), bytes.len() as u64);
                (d, serde_json::from_slice(&bytes).unwrap_or_default())
            })
            .collect(),
        None => vec![(digest.to_string(), doc)],
    };
    for (_, m) in manifests {
        for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().into_iter().flatten()) {
            blobs.insert(d["digest"].as_str().unwrap_or_default().to_string(), d["size"].as_u64().unwrap_or(0));
        }
    }
    blobs
}

/// A blob of the OCI layout at `layout`, checked against its digest.
fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let path = layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap_or(digest));
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert_eq!(sha256_digest(&bytes), digest, "{}", path.display());
    bytes
}

/// Asserts `size` and `total_size` (and each platform's `size`) are the blobs' own.
#[track_caller]
fn check_sizes(result: &Value, fetch: &dyn Fn(&str) -> Vec<u8>) {
    let digest = result["digest"].as_str().unwrap_or_default();
    let blobs = reachable(fetch, digest);
    assert_eq!(result["size"], blobs[digest], "size: the bytes of what the reference names: {result}");
    assert_eq!(result["total_size"], blobs.values().sum::<u64>(), "total_size: every blob once: {result}");
    for image in result["platforms"].as_array().into_iter().flatten() {
        let d = image["digest"].as_str().unwrap_or_default();
        assert_eq!(image["size"], blobs[d], "a platform's size is its manifest's: {result}");
        let manifest: Value = serde_json::from_slice(&fetch(d)).unwrap_or_default();
        assert_eq!(image["config_digest"], manifest["config"]["digest"], "{result}");
        assert_eq!(image["config_size"], manifest["config"]["size"], "{result}");
    }
    if result.get("platforms").is_none() {
        let manifest: Value = serde_json::from_slice(&fetch(digest)).unwrap_or_default();
        assert_eq!(result["config_digest"], manifest["config"]["digest"], "{result}");
        assert_eq!(result["config_size"], manifest["config"]["size"], "{result}");
        assert_eq!(result["layers"].as_array().map(Vec::len), manifest["layers"].as_array().map(Vec::len));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Running the commands

fn idpb_run(args: &[&str]) -> Output {
    let mut cmd = IdpbCommand::new();
    cmd.args(args);
    cmd.run()
}

fn json_of(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json", "-q"]);
    let output = idpb_run(&all);
    assert_eq!(output.stdout.lines().count(), 1, "one JSON line: {output}");
    json_result(&output)
}

/// Asserts `output` succeeded with exactly `expected` (REF, one per line) pinned to one digest, and that
/// `refs_file` holds the same; returns the digest.
#[track_caller]
fn check_text(output: &Output, expected: &[String], refs_file: &Path) -> String {
    output.assert_success();
    let lines = pushed_lines(output);
    let digest = lines.first().map(|l| l.1.clone()).unwrap_or_else(|| panic!("no result line: {output}"));
    let want: String = expected.iter().map(|r| format!("{r}@{digest}\n")).collect();
    assert_eq!(output.stdout, want, "REF@sha256:DIGEST per tag, nothing else: {output}");
    let written = fs::read_to_string(refs_file).unwrap_or_else(|e| panic!("no --image-refs file ({e}): {output}"));
    assert_eq!(written, output.stdout, "--image-refs holds what stdout printed");
    digest
}

// ---------------------------------------------------------------------------------------------------------
// build

#[test]
fn build_prints_references_and_one_schema_for_an_image_and_an_index() {
    let tmp = TempDir::new("output-build");
    let ctx = tmp.subdir("ctx");
    make_small_context(&ctx, "output");
    let layout = tmp.join("layout");
    let (ctx_s, layout_s) = (path_str(&ctx), path_str(&layout));
    let refs = tmp.join("refs.txt");
    let refs_s = path_str(&refs);
    let fetch = |d: &str| layout_blob(&layout, d);

    // Text: one line per tag (the tag given twice counts once), -q changes nothing on stdout.
    let tags = ["-t", "out:1", "-t", "out:1", "-t", "out"];
    let text_args: Vec<&str> =
        ["build", &ctx_s, "--oci-layout", &layout_s].into_iter().chain(tags).chain(["--image-refs", &refs_s]).collect();
    let loud = idpb_run(&text_args);
    let digest = check_text(&loud, &["out:1".into(), "out:latest".into()], &refs);
    let quiet = idpb_run(&[text_args.as_slice(), &["-q"]].concat());
    assert_eq!(quiet.stdout, loud.stdout, "-q only silences stderr: {quiet}");

    let image = json_of(&[&["build", &ctx_s, "--oci-layout", &layout_s], &tags[..]].concat());
    check_schema(&image, &BUILD);
    check_sizes(&image, &fetch);
    assert_eq!(image["digest"], digest.as_str(), "{image}");
    assert_eq!(image["name"], "out", "the repository: {image}");
    assert_eq!(image["tags"], serde_json::json!(["1", "latest"]), "tags, each once: {image}");
    assert_eq!(strings(&image["references"]), [format!("out:1@{digest}"), format!("out:latest@{digest}")]);

    let multi_refs = tmp.join("multi-refs.txt");
    let platforms = ["--platform", "linux/amd64,linux/arm64"];
    let multi_args: Vec<&str> = ["build", &ctx_s, "--oci-layout", &layout_s, "-t", "multi:1", "-t", "multi:1"]
        .into_iter()
        .chain(platforms)
        .collect();
    let text = idpb_run(&[multi_args.as_slice(), &["--image-refs", &path_str(&multi_refs)]].concat());
    let index_digest = check_text(&text, &["multi:1".into()], &multi_refs);
    let index = json_of(&multi_args);
    check_schema(&index, &BUILD);
    check_sizes(&index, &fetch);
    assert_eq!(index["digest"], index_digest.as_str(), "{index}");
    assert_eq!(index["tags"], serde_json::json!(["1"]), "{index}");
    let shown: Vec<&str> =
        index["platforms"].as_array().into_iter().flatten().filter_map(|p| p["platform"].as_str()).collect();
    assert_eq!(shown, ["linux/amd64", "linux/arm64"], "{index}");
}

// ---------------------------------------------------------------------------------------------------------
// push and inspect

#[test]
fn push_and_inspect_print_the_same_schema_as_build() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("output-push");
    let ctx = tmp.subdir("ctx");
    make_small_context(&ctx, "output");
    let ctx_s = path_str(&ctx);
    let layout = tmp.join("layout");
    let fetch = |d: &str| stored_by_digest(&registry, d);
    let (one, two) = (registry.reference("ns/one:1"), registry.reference("ns/one:2"));

    // Text: full references, one per tag, the repeated tag once; --image-refs holds the same.
    let refs = tmp.join("refs.txt");
    let text = idpb_run(&["push", &ctx_s, "-t", &one, "-t", &one, "-t", &two, "--image-refs", &path_str(&refs)]);
    let digest = check_text(&text, &[one.clone(), two.clone()], &refs);

    let pushed = json_of(&["push", &ctx_s, "-t", &one, "-t", &one, "-t", &two]);
    check_schema(&pushed, &PUSH);
    check_sizes(&pushed, &fetch);
    assert_eq!(pushed["digest"], digest.as_str(), "{pushed}");
    assert_eq!(pushed["name"], registry.reference("ns/one"), "{pushed}");
    assert_eq!(pushed["tags"], serde_json::json!(["1", "2"]), "{pushed}");
    assert_eq!(strings(&pushed["references"]), [format!("{one}@{digest}"), format!("{two}@{digest}")]);

    let inspected = json_of(&["inspect", &one]);
    check_schema(&inspected, &INSPECT);
    check_sizes(&inspected, &fetch);
    assert_eq!(described(&inspected), described(&pushed), "inspect describes what push pushed");
    assert_eq!(inspected["tags"], serde_json::json!(["1"]), "{inspected}");
    let by_digest = format!("{}@{digest}", registry.reference("ns/one"));
    let pinned = json_of(&["inspect", &by_digest]);
    check_schema(&pinned, &INSPECT);
    assert_eq!(pinned["tags"], serde_json::json!([]), "a digest names no tag: {pinned}");
    assert_eq!(strings(&pinned["references"]), [by_digest], "{pinned}");

    // The same image built into a layout is described with the same values.
    let built = json_of(&["build", &ctx_s, "--oci-layout", &path_str(&layout), "-t", "one:1"]);
    assert_eq!(described(&built), described(&pushed), "build and push describe one image alike");

    let multi = registry.reference("ns/multi:1");
    let platforms = "linux/amd64,linux/arm64";
    let multi_refs = tmp.join("multi-refs.txt");
    let text =
        idpb_run(&["push", &ctx_s, "-t", &multi, "--platform", platforms, "--image-refs", &path_str(&multi_refs)]);
    let index_digest = check_text(&text, std::slice::from_ref(&multi), &multi_refs);
    let pushed_index = json_of(&["push", &ctx_s, "-t", &multi, "--platform", platforms]);
    check_schema(&pushed_index, &PUSH);
    check_sizes(&pushed_index, &fetch);
    assert_eq!(pushed_index["digest"], index_digest.as_str(), "{pushed_index}");

    let inspected_index = json_of(&["inspect", &multi]);
    check_schema(&inspected_index, &INSPECT);
    check_sizes(&inspected_index, &fetch);
    assert_eq!(described(&inspected_index), described(&pushed_index), "inspect describes the index push pushed");
    let built_index =
        json_of(&["build", &ctx_s, "--oci-layout", &path_str(&layout), "-t", "multi:1", "--platform", platforms]);
    assert_eq!(described(&built_index), described(&pushed_index), "build and push describe one index alike");

    // Pushed from the layout (no build in this run): the same result again, read from the layout's blobs.
    let from_layout = json_of(&["push", "--oci-layout", &path_str(&layout), "--image", "multi:1", "-t", &multi]);
    check_schema(&from_layout, &PUSH);
    assert_eq!(described(&from_layout), described(&pushed_index), "{from_layout}");
}

/// A manifest or index by digest, from whichever of the test's two repositories has it.
fn stored_by_digest(registry: &Registry, digest: &str) -> Vec<u8> {
    for repo in ["ns/one", "ns/multi"] {
        let response =
            registry.request("GET", &format!("/v2/{repo}/manifests/{digest}"), &[("Accept", MANIFEST_ACCEPT)], None);
        if response.status == 200 {
            return response.body;
        }
    }
    panic!("{digest} is in neither repository");
}
