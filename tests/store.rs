//! The local store, visible: `images`, `rm` and `prune` end to end, on a store the real binary built.
//!
//! Nothing here trusts the binary's own accounting: what an image needs is worked out by reading the
//! store's JSON files (index -> manifests -> config and layers) and its size by summing those blob files,
//! digests come from `build --format json`, and "prune deleted exactly the unreachable blobs" is a
//! comparison of the sets of files in `blobs/sha256/` before and after. What is left must still be a
//! valid image: pushed to a real registry and read back by skopeo, and rebuilt through the layer cache
//! whose blob prune deleted. Builds racing prunes check the store's lock: a build's image never ends up
//! naming a blob a concurrent prune deleted.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use serde_json::Value;
use support::*;

/// `docker-idpb ARGS` with `IDPB_HOME=store`.
fn idpb_in<S: AsRef<std::ffi::OsStr>>(store: &Path, args: impl IntoIterator<Item = S>) -> Output {
    store_command(store, args).run()
}

fn store_command<S: AsRef<std::ffi::OsStr>>(store: &Path, args: impl IntoIterator<Item = S>) -> IdpbCommand {
    let mut cmd = IdpbCommand::new();
    cmd.args(args).env("IDPB_HOME", store);
    cmd
}

/// The blob files of the store (temp files left out), name -> size.
fn blob_files(store: &Path) -> BTreeMap<String, u64> {
    let dir = store.join("blobs/sha256");
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            let size = e.metadata().unwrap_or_else(|err| panic!("{}: {err}", e.path().display())).len();
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect()
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{digest:?} is not a sha256 digest"))
}

/// Every blob `digest` (a manifest or index) reaches, read from the store's files: hex -> file size. Each
/// blob must be there and hold what its name says.
#[track_caller]
fn reachable(store: &Path, digest: &str) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    let mut todo = vec![(digest.to_string(), true)];
    while let Some((digest, is_manifest)) = todo.pop() {
        let path = store.join("blobs/sha256").join(hex(&digest));
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("blob {digest} is missing from the store: {e}"));
        assert_eq!(sha256_digest(&bytes), digest, "{} holds what its name says", path.display());
        found.insert(hex(&digest).to_string(), bytes.len() as u64);
        if !is_manifest {
            continue;
        }
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{digest} is not JSON: {e}"));
        for m in doc["manifests"].as_array().into_iter().flatten() {
            todo.push((m["digest"].as_str().unwrap_or_default().to_string(), true));
        }
        let leaves = doc["layers"].as_array().into_iter().flatten().chain(Some(&doc["config"]));
        for l in leaves.filter(|l| !l.is_null()) {
            todo.push((l["digest"].as_str().unwrap_or_default().to_string(), false));
        }
    }
    found
}

/// The `dev.idpb.stored` annotation of the index entry naming `digest`.
fn stored_annotation(store: &Path, digest: &str) -> String {
    let index = read_json(&store.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["digest"] == digest)
        .unwrap_or_else(|| panic!("no entry for {digest} in {index}"));
    entry["annotations"]["dev.idpb.stored"].as_str().unwrap_or_else(|| panic!("no stamp: {entry}")).to_string()
}

fn build_json(store: &Path, args: &[&str]) -> Value {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json", "-q"]);
    json_result(&idpb_in(store, all))
}

fn text(output: &Output) -> &str {
    output.assert_success();
    &output.stdout
}

#[test]
fn images_rm_prune_and_what_is_left_still_pushes() {
    let registry = Registry::start(RegistryMode::Http);
    let tmp = TempDir::new("store-cycle");
    let store = tmp.subdir("store");
    let app_ctx = tmp.subdir("app");
    make_small_context(&app_ctx, "app");
    let multi_ctx = tmp.subdir("multi");
    make_small_context(&multi_ctx, "multi");
    write_file(&multi_ctx.join("more.bin"), &pseudo_random_bytes(7, 32 * 1024));

    // Empty: a header and nothing else; JSON says so too; prune has nothing to do.
    assert_eq!(text(&idpb_in(&store, ["images"])), "NAME   TAG   DIGEST   STORED   SIZE\n");
    assert_eq!(text(&idpb_in(&store, ["images", "--format", "json"])).trim(), "[]");
    assert_eq!(text(&idpb_in(&store, ["prune"])), "Deleted 0 blobs, freed 0 B\n");

    let app = build_json(&store, &[&path_str(&app_ctx), "-t", "app:1"]);
    let multi = build_json(&store, &[&path_str(&multi_ctx), "-t", "multi:2", "--platform", "linux/amd64,linux/arm64"]);
    let app_digest = app["digest"].as_str().unwrap_or_default().to_string();
    let multi_digest = multi["digest"].as_str().unwrap_or_default().to_string();
    let app_blobs = reachable(&store, &app_digest);
    let multi_blobs = reachable(&store, &multi_digest);
    assert_eq!(multi_blobs.len(), 1 + 2 * 2 + 1, "an index, two manifests and configs, one shared layer");

    // JSON: full digests, the descriptor's size, every blob once in total_size, sorted by name.
    let listed = json_result(&idpb_in(&store, ["images", "--format", "json"]));
    let listed = listed.as_array().unwrap_or_else(|| panic!("an array: {listed}"));
    assert_eq!(listed.len(), 2, "{listed:?}");
    let expect = [
        ("app", "1", &app_digest, &app_blobs, &app, "application/vnd.oci.image.manifest.v1+json"),
        ("multi", "2", &multi_digest, &multi_blobs, &multi, "application/vnd.oci.image.index.v1+json"),
    ];
    for (image, (name, tag, digest, blobs, built, media_type)) in listed.iter().zip(expect) {
        assert_eq!(image["name"], name, "{image}");
        assert_eq!(image["tag"], tag, "{image}");
        assert_eq!(image["reference"], format!("{name}:{tag}"), "{image}");
        assert_eq!(image["digest"], digest.as_str(), "{image}");
        assert_eq!(image["mediaType"], media_type, "{image}");
        assert_eq!(image["size"], blobs[hex(digest)], "the manifest's (index's) own size: {image}");
        assert_eq!(image["size"], built["size"], "{image}");
        let total: u64 = blobs.values().sum();
        assert_eq!(image["total_size"], total, "every blob it reaches, once: {image}");
        assert_eq!(image["total_size"], built["total_size"], "as build counted it: {image}");
        assert_eq!(image["stored"], stored_annotation(&store, digest), "{image}");
        let stored = image["stored"].as_str().unwrap_or_default();
        assert!(stored.len() == 20 && stored.ends_with('Z'), "RFC 3339 UTC: {image}");
    }

    // Text: docker's columns, short digests, an age, the total in human units.
    let table = idpb_in(&store, ["images"]);
    let lines: Vec<&str> = text(&table).lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("NAME ") && lines[0].ends_with(" SIZE"), "{table}");
    for (line, (name, tag, digest)) in lines[1..].iter().zip([("app", "1", &app_digest), ("multi", "2", &multi_digest)])
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[..3], [name, tag, &hex(digest)[..12]], "{table}");
        assert!(line.contains(" ago "), "an age: {table}");
        assert!(line.ends_with(" kB") || line.ends_with(" B"), "a size: {table}");
    }
    assert_eq!(text(&idpb_in(&store, ["images", "-q"])), "app:1\nmulti:2\n");

    // rm with one name the store lacks: a one-line error listing what it holds; nothing removed.
    let index_before = fs::read(store.join("index.json")).unwrap_or_default();
    let blobs_before = blob_files(&store);
    let output = idpb_in(&store, ["rm", "app:1", "nope:3"]);
    assert_clean_error(&output, 1, &["nope:3", "app:1, multi:2", "docker-idpb images"]);
    assert_eq!(fs::read(store.join("index.json")).unwrap_or_default(), index_before, "all or nothing");

    // rm: the name goes, its blobs stay until prune.
    assert_eq!(text(&idpb_in(&store, ["rm", "app:1"])), "Untagged: app:1\n");
    assert_eq!(text(&idpb_in(&store, ["images", "-q"])), "multi:2\n");
    assert_eq!(blob_files(&store), blobs_before, "rm deletes no blob");

    // A push by a name the store lacks lists what it holds and says how to choose.
    let target = registry.reference("ns/multi:2");
    let output = idpb_in(&store, ["push", "--image", "app:1", "-t", &target, "-q"]);
    assert_clean_error(&output, 1, &["app:1", "it holds multi:2", "--image NAME:TAG", "docker-idpb images"]);
    let output = idpb_in(&store, ["push", "--image", "other:1", "-t", &registry.reference("ns/other:1"), "-q"]);
    assert_clean_error(&output, 1, &["other:1", "it holds multi:2", "--image NAME:TAG"]);

    // prune: exactly the blobs only app:1 reached, and the bytes it says.
    let pruned = json_result(&idpb_in(&store, ["prune", "--format", "json"]));
    let after = blob_files(&store);
    let kept: BTreeSet<&String> = after.keys().collect();
    assert_eq!(kept, multi_blobs.keys().collect::<BTreeSet<_>>(), "what multi:2 reaches, nothing else");
    let deleted: BTreeMap<&String, &u64> = blobs_before.iter().filter(|(k, _)| !after.contains_key(*k)).collect();
    assert_eq!(deleted.keys().copied().collect::<BTreeSet<_>>(), app_blobs.keys().collect::<BTreeSet<_>>());
    assert_eq!(pruned["deleted"], deleted.len(), "{pruned}");
    assert_eq!(pruned["freed"], deleted.values().copied().sum::<u64>(), "{pruned}");
    assert_eq!(pruned["temp_files"], 0, "{pruned}");
    assert_eq!(text(&idpb_in(&store, ["prune"])), "Deleted 0 blobs, freed 0 B\n", "nothing left to prune");
    assert_eq!(json_result(&idpb_in(&store, ["prune", "--format", "json"]))["deleted"], 0);

    // What is left is whole: pushed from the store, read back by skopeo.
    let output = idpb_in(&store, ["push", "--image", "multi:2", "-t", &target, "-q"]);
    assert_eq!(pushed_digest(&output, &target), multi_digest);
    assert_eq!(stored_digest(&registry, "ns/multi", "2").as_deref(), Some(multi_digest.as_str()));
    let index = skopeo_inspect_raw(&registry, "ns/multi:2");
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(2), "{index}");
    let config = skopeo_inspect_config(&registry, "ns/multi:2");
    assert_eq!(config["os"], "linux", "{config}");

    // Rebuilding app:1: the layer cache still names the pruned layer, the store lacks it, so it is built
    // again and the image is whole (and, reproducible, the same).
    let again = build_json(&store, &[&path_str(&app_ctx), "-t", "app:1"]);
    assert_eq!(again["digest"], app_digest.as_str());
    assert_eq!(reachable(&store, &app_digest), app_blobs, "every blob is back");
    let manifest = skopeo_inspect_layout_raw(&store, "1");
    assert_eq!(manifest["layers"][0]["digest"], last_layer(&app)["digest"], "{manifest}");
}

/// Builds racing prunes. The image has two layers: a small one the build finds at once (a layer cache hit
/// on a blob no entry names any more, since `rm` untagged the image that had it; or, with `--no-cache`,
/// written again and renamed into place) and a big one it then streams for a while. A prune running in
/// that while must not delete the first layer's blob: the build's index entry would name a missing blob.
#[test]
fn a_build_racing_prunes_never_loses_a_blob() {
    let tmp = TempDir::new("store-race");
    let store = tmp.subdir("store");
    let ctx = tmp.subdir("ctx");
    write_file(&ctx.join("stable/small.txt"), b"the same every round\n");
    let build_args = |no_cache: bool| {
        let mut args = vec!["build".to_string(), path_str(&ctx), "-t".into(), "race:1".into()];
        args.extend(["--layer".into(), "stable/".into(), "-q".into()]);
        if no_cache {
            args.push("--no-cache".into());
        }
        args
    };
    for round in 0..4u64 {
        // A new big layer each round, big enough that prunes run while it streams.
        write_file(&ctx.join("big.bin"), &pseudo_random_bytes(round, 8 * 1024 * 1024));
        if round > 0 {
            text(&idpb_in(&store, ["rm", "race:1", "-q"]));
        }
        let mut build_cmd = store_command(&store, build_args(round % 2 == 1));
        let mut build = Background::spawn(&mut build_cmd, None);
        let mut prunes = 0;
        while build.running() || prunes == 0 {
            json_result(&idpb_in(&store, ["prune", "--format", "json", "-q"]));
            prunes += 1;
        }
        let built = build.finish(DEFAULT_TIMEOUT);
        let digest = build_digest_line(&built);
        // Every blob the image names is there and whole, after any number of prunes, and stays so.
        let blobs = reachable(&store, &digest);
        assert_eq!(blobs.len(), 4, "manifest, config, two layers: {blobs:?}");
        json_result(&idpb_in(&store, ["prune", "--format", "json", "-q"]));
        assert_eq!(reachable(&store, &digest), blobs, "round {round}");
        assert_eq!(json_result(&idpb_in(&store, ["prune", "--format", "json"]))["deleted"], 0, "round {round}");
        assert_eq!(text(&idpb_in(&store, ["images", "-q"])), "race:1\n");
    }
}

/// The digest of a `build -q` line, `NAME@DIGEST SIZE`.
#[track_caller]
fn build_digest_line(output: &Output) -> String {
    let lines = built_lines(output);
    assert_eq!(lines.len(), 1, "{output}");
    lines[0].1.clone()
}
