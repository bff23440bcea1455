//! `docker-idpb build` end to end: the real binary builds real contexts, and third-party tools judge the
//! result. `umoci unpack` must reproduce the context (minus `.dockerignore`d paths), `skopeo inspect` must
//! read every image flag back, and the `--tar` output must be a consistent OCI layout plus `manifest.json`.
//! The layer blob itself is also read here, with the `tar` crate behind a small gunzip (miniz_oxide for the
//! deflate stream, the gzip header and trailer checked by hand), to see what no unpacker shows: mtimes,
//! owners, entry order. Each test owns its temp dirs, so they run in parallel.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// `docker-idpb build ARGS` in an isolated environment plus `envs`.
fn build<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>, envs: &[(&str, &str)]) -> Output {
    let mut cmd = IdpbCommand::new();
    cmd.arg("build").args(args);
    for (key, value) in envs {
        cmd.env(key, value);
    }
    cmd.run()
}

/// Sets the access and modification time of everything under `dir` (links themselves, not their targets).
fn touch_all(dir: &Path, when: &str) {
    checked(Command::new(require_tool("find")).arg(dir).args(["-exec", "touch", "-h", "-d", when, "{}", "+"]));
}

/// An OCI image layout on disk, read the way a consumer would: index -> manifest -> blobs.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        Layout { dir: dir.to_path_buf() }
    }

    fn index(&self) -> serde_json::Value {
        read_json(&self.dir.join("index.json"))
    }

    /// The index entries, as an array.
    fn entries(&self) -> Vec<serde_json::Value> {
        self.index()["manifests"].as_array().cloned().unwrap_or_else(|| panic!("no manifests in the index"))
    }

    /// The one index entry whose `org.opencontainers.image.ref.name` is `tag`.
    #[track_caller]
    fn entry(&self, tag: &str) -> serde_json::Value {
        let matching: Vec<_> = self
            .entries()
            .into_iter()
            .filter(|e| e["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .collect();
        assert_eq!(matching.len(), 1, "one index entry for {tag:?} in {}", self.index());
        matching.into_iter().next().unwrap_or_default()
    }

    /// A blob's bytes, checked against its digest.
    #[track_caller]
    fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{digest:?} is not a sha256 digest"));
        let path = self.dir.join("blobs/sha256").join(hex);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("cannot read blob {}: {e}", path.display()));
        assert_eq!(sha256_digest(&bytes), digest, "blob {} holds what its name says", path.display());
        bytes
    }

    fn json_blob(&self, digest: &str) -> serde_json::Value {
        serde_json::from_slice(&self.blob(digest)).unwrap_or_else(|e| panic!("blob {digest} is not JSON: {e}"))
    }

    /// The manifest of `tag`.
    fn manifest(&self, tag: &str) -> serde_json::Value {
        let digest = self.entry(tag)["digest"].as_str().map(str::to_string).unwrap_or_default();
        self.json_blob(&digest)
    }

    /// The only layer of `tag`, decompressed.
    fn layer_tar(&self, tag: &str) -> Vec<u8> {
        let manifest = self.manifest(tag);
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        assert_eq!(layers.len(), 1, "one layer: {manifest}");
        assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let digest = layers[0]["digest"].as_str().unwrap_or_default();
        gunzip(&self.blob(digest))
    }

    fn layer_entries(&self, tag: &str) -> Vec<LayerEntry> {
        layer_entries(&self.layer_tar(tag))
    }
}

/// Decompresses a single-member gzip stream, checking the framing (RFC 1952) and the CRC-32 and size in
/// the trailer, so the binary's hand-made gzip header and trailer are judged too.
#[track_caller]
fn gunzip(gz: &[u8]) -> Vec<u8> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    assert!(gz.len() >= 18, "a gzip stream has at least 18 bytes, this one {}", gz.len());
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8], "gzip magic and deflate method");
    let flags = gz[3];
    let mut pos = 10;
    if flags & FEXTRA != 0 {
        pos += 2 + usize::from(u16::from_le_bytes([gz[pos], gz[pos + 1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            pos += gz[pos..].iter().position(|&b| b == 0).unwrap_or_else(|| panic!("unterminated gzip field")) + 1;
        }
    }
    if flags & FHCRC != 0 {
        pos += 2;
    }
    let trailer = &gz[gz.len() - 8..];
    let data = miniz_oxide::inflate::decompress_to_vec(&gz[pos..gz.len() - 8])
        .unwrap_or_else(|e| panic!("the layer's deflate stream is invalid: {e:?}"));
    let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let isize = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    assert_eq!(crc, crc32fast::hash(&data), "gzip trailer CRC-32");
    assert_eq!(isize, data.len() as u32, "gzip trailer ISIZE (length mod 2^32)");
    data
}

/// What a layer's tar says about one entry, PAX records applied.
#[derive(Debug, Clone)]
struct LayerEntry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    uname: String,
    gname: String,
    mtime: u64,
    link: Option<String>,
}

fn layer_entries(tar_bytes: &[u8]) -> Vec<LayerEntry> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap_or_else(|e| panic!("the layer is not a tar: {e}")) {
        let mut entry = entry.unwrap_or_else(|e| panic!("bad tar entry after {:?}: {e}", out.last()));
        let mut pax = BTreeMap::new();
        if let Ok(Some(extensions)) = entry.pax_extensions() {
            for ext in extensions.flatten() {
                if let (Ok(k), Ok(v)) = (ext.key(), ext.value()) {
                    pax.insert(k.to_string(), v.to_string());
                }
            }
        }
        let header = entry.header();
        let number = |key: &str, header_value: std::io::Result<u64>| -> u64 {
            match pax.get(key) {
                Some(v) => v.split('.').next().unwrap_or_default().parse().unwrap_or_else(|e| panic!("pax {key}: {e}")),
                None => header_value.unwrap_or_else(|e| panic!("bad {key} in a tar header: {e}")),
            }
        };
        let record = LayerEntry {
            path: entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|e| panic!("path: {e}")),
            kind: header.entry_type(),
            mode: header.mode().unwrap_or_else(|e| panic!("mode: {e}")),
            uid: number("uid", header.uid()),
            gid: number("gid", header.gid()),
            uname: header.username().ok().flatten().unwrap_or_default().to_string(),
            gname: header.groupname().ok().flatten().unwrap_or_default().to_string(),
            mtime: number("mtime", header.mtime()),
            link: entry.link_name().ok().flatten().map(|l| l.to_string_lossy().into_owned()),
        };
        let mut sink = Vec::new();
        entry.read_to_end(&mut sink).unwrap_or_else(|e| panic!("cannot read {}: {e}", record.path));
        out.push(record);
    }
    out
}

/// A path as `--list` prints it: directories end in `/`, nothing starts with `./`.
fn normalized(entry: &LayerEntry) -> String {
    let path = entry.path.trim_start_matches("./").trim_end_matches('/');
    if entry.kind.is_dir() { format!("{path}/") } else { path.to_string() }
}

/// A small context: a file, an executable, a nested dir, a symlink.
fn make_small_context(dir: &Path) {
    fs::create_dir_all(dir.join("sub/deeper")).unwrap_or_else(|e| panic!("cannot create the context: {e}"));
    fs::write(dir.join("hello.txt"), "hello\n").unwrap_or_else(|e| panic!("write: {e}"));
    fs::write(dir.join("sub/deeper/data.txt"), "data\n").unwrap_or_else(|e| panic!("write: {e}"));
    let run_sh = dir.join("run.sh");
    fs::write(&run_sh, "#!/bin/sh\necho hi\n").unwrap_or_else(|e| panic!("write: {e}"));
    fs::set_permissions(&run_sh, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("chmod: {e}"));
    std::os::unix::fs::symlink("hello.txt", dir.join("link")).unwrap_or_else(|e| panic!("symlink: {e}"));
}

/// The rich context without its 9 MiB file, for tests that build it many times (the binary under test is
/// a debug build; the big file is covered by the umoci round trip).
fn make_rich_context_without_big_file(dir: &Path) -> Vec<String> {
    let excluded = make_rich_context(dir);
    fs::write(dir.join("data/random.bin"), pseudo_random_bytes(7, 4096)).unwrap_or_else(|e| panic!("write: {e}"));
    excluded
}

fn is_root() -> bool {
    let output = run(Command::new("id").arg("-u"));
    output.stdout.trim() == "0"
}

// ---------------------------------------------------------------------------------------------------------
// 1. The rich context survives a round trip through umoci.

#[test]
fn rich_context_unpacks_with_umoci_to_the_same_tree_minus_ignored_paths() {
    require_tool("umoci");
    let tmp = TempDir::new("build-rich");
    let context = tmp.subdir("rich");
    let excluded = make_rich_context(&context);
    let layout = tmp.join("layout");

    let digest = build_digest(&context, &layout, "rich:1", &[], &[]);
    assert_eq!(Layout::new(&layout).entry("1")["digest"], digest.as_str());

    let rootfs = umoci_unpack(&layout, "1", &tmp.join("bundle"));
    for path in &excluded {
        assert!(fs::symlink_metadata(rootfs.join(path)).is_err(), "{path} is .dockerignored, yet it was unpacked");
    }
    for kept in ["build/keep.txt", "src/debug.log", ".dockerignore", "dangling-link", "empty-dir"] {
        assert!(fs::symlink_metadata(rootfs.join(kept)).is_ok(), "{kept} belongs in the image");
    }
    let ignore: Vec<&str> = excluded.iter().map(String::as_str).collect();
    assert_same_tree(&context, &rootfs, &ignore);

    // The listing compares hard-link groups; say it outright too, since it is the easiest thing to lose.
    let listing = tree_listing(&rootfs);
    let original = &listing["hard/original.txt"];
    assert_eq!(original.hardlink_group.as_deref(), Some("hard/linked.txt"), "{original}");
    assert_eq!(listing["data/random.bin"].size, RANDOM_FILE_SIZE as u64);
    assert_eq!(listing["bin/run.sh"].mode, 0o755);
    assert_eq!(listing["dangling-link"].link_target.as_deref(), Some("missing/nowhere.txt"));
    assert!(listing.keys().any(|p| p.len() > 255), "the long path made it");

    // The layer stores the pair once: one regular file, one link entry pointing at it.
    let entries = Layout::new(&layout).layer_entries("1");
    let hard: Vec<_> = entries.iter().filter(|e| e.path.starts_with("hard/") && !e.kind.is_dir()).collect();
    assert_eq!(hard.len(), 2, "{hard:?}");
    assert!(hard[0].kind.is_file(), "the first name carries the content: {hard:?}");
    assert_eq!(hard[1].kind, tar::EntryType::Link, "{hard:?}");
    assert_eq!(hard[1].link.as_deref(), Some(hard[0].path.as_str()), "{hard:?}");
}

// ---------------------------------------------------------------------------------------------------------
// 2. Every image flag, read back with skopeo.

#[test]
fn skopeo_shows_every_image_flag() {
    require_tool("skopeo");
    let tmp = TempDir::new("build-flags");
    let context = tmp.subdir("ctx");
    make_small_context(&context);
    let layout = tmp.join("layout");

    let (ctx, lay) = (path_str(&context), path_str(&layout));
    let json_form = build(
        [
            ctx.as_str(),
            "--oci-layout",
            &lay,
            "-t",
            "flags:json",
            "--format",
            "json",
            "--platform",
            "linux/arm64/v8",
            "--entrypoint",
            r#"["/bin/app", "hello world"]"#,
            "--cmd",
            r#"["--verbose"]"#,
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--workdir",
            "/srv/app",
            "--user",
            "1000:1000",
            "--label",
            "org.example.team=platform",
            "--label",
            "empty=",
            "--annotation",
            "org.opencontainers.image.source=https://example.com/repo",
            "--annotation",
            "org.example.note=a b=c",
            "--expose",
            "8080",
            "--expose",
            "53/udp",
        ],
        &[],
    );
    json_form.assert_success();
    let result: serde_json::Value =
        serde_json::from_str(&json_form.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {json_form}"));

    let config = skopeo_inspect_layout_config(&layout, "json");
    assert_eq!(config["os"], "linux", "{config}");
    assert_eq!(config["architecture"], "arm64", "{config}");
    assert_eq!(config["variant"], "v8", "{config}");
    assert_eq!(config["created"], "1970-01-01T00:00:00Z", "{config}");
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/app", "hello world"]), "{config}");
    assert_eq!(c["Cmd"], serde_json::json!(["--verbose"]), "{config}");
    let env: Vec<&str> = c["Env"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
    let mine: Vec<&str> = env.iter().copied().filter(|e| !e.starts_with("PATH=")).collect();
    assert_eq!(mine, ["A=1", "B=x=y"], "{config}");
    assert_eq!(c["WorkingDir"], "/srv/app", "{config}");
    assert_eq!(c["User"], "1000:1000", "{config}");
    assert_eq!(c["Labels"], serde_json::json!({"org.example.team": "platform", "empty": ""}), "{config}");
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}, "53/udp": {}}), "{config}");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([result["layers"][0]["diff_id"]]), "{config}");

    let manifest = skopeo_inspect_layout_raw(&layout, "json");
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{manifest}");
    assert_eq!(manifest["config"]["digest"], result["config_digest"], "{manifest}");
    assert_eq!(manifest["layers"][0]["digest"], result["layers"][0]["digest"], "{manifest}");
    assert_eq!(manifest["annotations"]["org.opencontainers.image.source"], "https://example.com/repo");
    assert_eq!(manifest["annotations"]["org.example.note"], "a b=c", "{manifest}");
    let entry = Layout::new(&layout).entry("json");
    assert_eq!(entry["platform"]["architecture"], "arm64", "{entry}");
    assert_eq!(entry["platform"]["variant"], "v8", "{entry}");

    // The whitespace forms, and SOURCE_DATE_EPOCH for `created`.
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
    let plain = ["--entrypoint", "/bin/sh  -c", "--cmd", " echo\thello   world ", "--platform", "linux/arm/v7"];
    build_digest(&context, &layout, "flags:plain", &plain, &epoch);
    let config = skopeo_inspect_layout_config(&layout, "plain");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]), "{config}");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["echo", "hello", "world"]), "{config}");
    assert_eq!(config["architecture"], "arm", "{config}");
    assert_eq!(config["variant"], "v7", "{config}");
    assert_eq!(config["created"], "2023-11-14T22:13:20Z", "SOURCE_DATE_EPOCH=1700000000: {config}");

    // No flags: linux on the host's architecture, nothing invented.
    build_digest(&context, &layout, "flags:none", &[], &[]);
    let config = skopeo_inspect_layout_config(&layout, "none");
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    assert_eq!(config["os"], "linux", "{config}");
    assert_eq!(config["architecture"], host_arch, "{config}");
    assert_eq!(config["created"], "1970-01-01T00:00:00Z", "{config}");
    for absent in ["Entrypoint", "Cmd", "WorkingDir", "User", "Labels", "ExposedPorts"] {
        let value = &config["config"][absent];
        assert!(
            value.is_null() || value.as_str() == Some("") || value.as_object().is_some_and(|o| o.is_empty()),
            "{absent} was not asked for: {config}"
        );
    }
    let manifest = skopeo_inspect_layout_raw(&layout, "none");
    assert!(manifest["annotations"].as_object().is_none_or(|a| a.is_empty()), "{manifest}");
}

// ---------------------------------------------------------------------------------------------------------
// 3. The docker-loadable tar.

#[test]
fn tar_output_is_a_consistent_layout_with_manifest_json() {
    require_tool("umoci");
    require_tool("skopeo");
    let tmp = TempDir::new("build-tar");
    let context = tmp.subdir("ctx");
    make_small_context(&context);
    let tar_file = tmp.join("image.tar");
    let tags = ["app:1", "registry.example.com:5000/team/app:2.0"];
    let full_names = ["docker.io/library/app:1", "registry.example.com:5000/team/app:2.0"];

    let output = build(
        [
            path_str(&context),
            "--tar".into(),
            path_str(&tar_file),
            "-t".into(),
            tags[0].into(),
            "-t".into(),
            tags[1].into(),
        ],
        &[],
    );
    output.assert_success();
    let lines = built_lines(&output);
    assert_eq!(lines.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(), tags, "{output}");
    let digest = lines[0].1.clone();
    assert!(lines.iter().all(|l| l.1 == digest), "one image, several names: {output}");

    // Extract with the tar crate, remembering what the archive held.
    let extracted = tmp.subdir("extracted");
    let bytes = fs::read(&tar_file).unwrap_or_else(|e| panic!("cannot read {}: {e}", tar_file.display()));
    let names: Vec<String> = layer_entries(&bytes).iter().map(|e| e.path.clone()).collect();
    tar::Archive::new(bytes.as_slice()).unpack(&extracted).unwrap_or_else(|e| panic!("cannot unpack the tar: {e}"));
    for required in ["oci-layout", "index.json", "manifest.json"] {
        assert!(names.iter().any(|n| n == required), "{required} is in the tar: {names:?}");
    }
    assert_eq!(read_json(&extracted.join("oci-layout"))["imageLayoutVersion"], "1.0.0");

    // manifest.json: Config and Layers are blobs in the tar, RepoTags lists every -t.
    let layout = Layout::new(&extracted);
    let docker_manifest = read_json(&extracted.join("manifest.json"));
    let images = docker_manifest.as_array().unwrap_or_else(|| panic!("manifest.json is an array: {docker_manifest}"));
    assert_eq!(images.len(), 1, "{docker_manifest}");
    let image = &images[0];
    let repo_tags: Vec<&str> = image["RepoTags"].as_array().into_iter().flatten().filter_map(|t| t.as_str()).collect();
    assert_eq!(repo_tags, tags, "{docker_manifest}");
    let blob_digest = |path: &serde_json::Value| -> String {
        let path = path.as_str().unwrap_or_else(|| panic!("a path string, not {path}"));
        assert!(names.iter().any(|n| n == path), "{path} is in the tar");
        let hex = path.strip_prefix("blobs/sha256/").unwrap_or_else(|| panic!("{path} is under blobs/sha256/"));
        let digest = format!("sha256:{hex}");
        layout.blob(&digest);
        digest
    };
    let config_digest = blob_digest(&image["Config"]);
    let layer_paths = image["Layers"].as_array().cloned().unwrap_or_default();
    assert_eq!(layer_paths.len(), 1, "{docker_manifest}");
    let layer_digest = blob_digest(&layer_paths[0]);

    // index.json: one entry per tag, both annotations, all pointing at the manifest that agrees.
    let entries = layout.entries();
    assert_eq!(entries.len(), tags.len(), "{}", layout.index());
    for (entry, (tag, full)) in entries.iter().zip(tags.iter().zip(full_names)) {
        let short_tag = tag.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], short_tag, "{entry}");
        assert_eq!(entry["annotations"]["io.containerd.image.name"], full, "{entry}");
        assert_eq!(entry["digest"], digest.as_str(), "{entry}");
        assert_eq!(entry["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{entry}");
        let manifest_bytes = layout.blob(&digest);
        assert_eq!(entry["size"], manifest_bytes.len(), "{entry}");
    }
    let manifest = layout.json_blob(&digest);
    assert_eq!(manifest["config"]["digest"], config_digest.as_str(), "{manifest}");
    assert_eq!(manifest["layers"][0]["digest"], layer_digest.as_str(), "{manifest}");
    let config = layout.json_blob(&config_digest);
    let diff_id = sha256_digest(&gunzip(&layout.blob(&layer_digest)));
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([diff_id]), "{config}");

    // And the peers accept the extracted layout.
    let rootfs = umoci_unpack(&extracted, "1", &tmp.join("bundle"));
    assert_same_tree(&context, &rootfs, &[]);
    let config = skopeo_inspect_layout_config(&extracted, "2.0");
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!([diff_id]), "{config}");
}

// ---------------------------------------------------------------------------------------------------------
// 4. Reproducibility.

#[test]
fn digest_depends_on_content_not_on_mtimes_paths_or_runs() {
    let tmp = TempDir::new("build-repro");
    let context = tmp.subdir("ctx");
    make_rich_context_without_big_file(&context);
    let layout = |name: &str| tmp.join(format!("layout-{name}"));

    let first = build_digest(&context, &layout("first"), "repro:1", &[], &[]);
    let second = build_digest(&context, &layout("second"), "repro:1", &[], &[]);
    assert_eq!(first, second, "two builds of the same context");
    let entries = Layout::new(&layout("first")).layer_entries("1");
    assert!(entries.iter().all(|e| e.mtime == 0), "mtime 0 by default: {entries:?}");

    touch_all(&context, "2021-02-03 04:05:06");
    let touched = build_digest(&context, &layout("touched"), "repro:1", &[], &[]);
    assert_eq!(first, touched, "after touching every file");

    let copy_parent = tmp.subdir("elsewhere/deeper");
    let copy = copy_parent.join("A_Copy");
    checked(Command::new("cp").arg("-a").arg(&context).arg(&copy));
    let copied = build_digest(&copy, &layout("copy"), "repro:1", &[], &[]);
    assert_eq!(first, copied, "a copy at another path, with another base name");
    // Running from inside the context with `.` is the same context too.
    let mut from_inside = IdpbCommand::new();
    let out =
        from_inside.current_dir(&copy).args(["build", ".", "--oci-layout"]).arg(layout("dot")).args(["-t", "repro:1"]);
    let out = out.run();
    out.assert_success();
    assert_eq!(built_lines(&out)[0].1, first, "built as `.`: {out}");

    // --preserve-mtime keeps the real times, so a touch shows.
    let preserved = build_digest(&context, &layout("preserve-a"), "repro:1", &["--preserve-mtime"], &[]);
    assert_ne!(preserved, first, "--preserve-mtime stores the 2021 mtimes, not 0");
    let entries = Layout::new(&layout("preserve-a")).layer_entries("1");
    let readme = entries.iter().find(|e| e.path == "README.md").unwrap_or_else(|| panic!("README.md: {entries:?}"));
    assert_eq!(readme.mtime, fs::metadata(context.join("README.md")).map_or(0, |m| mtime(&m)), "{readme:?}");
    touch_all(&context, "2022-03-04 05:06:07");
    let preserved_again = build_digest(&context, &layout("preserve-b"), "repro:1", &["--preserve-mtime"], &[]);
    assert_ne!(preserved, preserved_again, "with --preserve-mtime a touch changes the digest");
    let unpreserved = build_digest(&context, &layout("after-second-touch"), "repro:1", &[], &[]);
    assert_eq!(first, unpreserved, "without it, still the same");

    // SOURCE_DATE_EPOCH is the one time that is stored.
    let epoch = build_digest(&context, &layout("epoch"), "repro:1", &[], &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert_ne!(epoch, first, "SOURCE_DATE_EPOCH changes the layer and config");
    let entries = Layout::new(&layout("epoch")).layer_entries("1");
    assert!(!entries.is_empty());
    let wrong: Vec<_> = entries.iter().filter(|e| e.mtime != 1_700_000_000).collect();
    assert!(wrong.is_empty(), "every mtime is SOURCE_DATE_EPOCH: {wrong:?}");
    let epoch_again = build_digest(&copy, &layout("epoch2"), "repro:1", &[], &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert_eq!(epoch, epoch_again, "and is itself reproducible");
}

fn mtime(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime().try_into().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------------------
// 5. Adding to a layout.

#[test]
fn rebuilding_a_tag_replaces_its_layout_entry_and_keeps_the_others() {
    let tmp = TempDir::new("build-layout");
    let context = tmp.subdir("ctx");
    make_small_context(&context);
    let layout_dir = tmp.join("layout");
    let layout = Layout::new(&layout_dir);

    let a1 = build_digest(&context, &layout_dir, "a:1", &[], &[]);
    fs::write(context.join("second.txt"), "for a:2\n").unwrap_or_else(|e| panic!("write: {e}"));
    let a2 = build_digest(&context, &layout_dir, "a:2", &[], &[]);
    assert_ne!(a1, a2);
    fs::write(context.join("hello.txt"), "changed\n").unwrap_or_else(|e| panic!("write: {e}"));
    let a1_new = build_digest(&context, &layout_dir, "a:1", &[], &[]);
    assert_ne!(a1, a1_new, "changed content, new digest");

    let entries = layout.entries();
    assert_eq!(entries.len(), 2, "a:1 replaced, a:2 kept: {}", layout.index());
    let by_name: BTreeMap<String, String> = entries
        .iter()
        .map(|e| {
            let name = e["annotations"]["io.containerd.image.name"].as_str().unwrap_or_default().to_string();
            (name, e["digest"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    let expected: BTreeMap<String, String> =
        [("docker.io/library/a:1".to_string(), a1_new.clone()), ("docker.io/library/a:2".to_string(), a2.clone())]
            .into();
    assert_eq!(by_name, expected, "{}", layout.index());
    assert_eq!(layout.entry("1")["digest"], a1_new.as_str());
    assert_eq!(layout.entry("2")["digest"], a2.as_str());
    // The kept image is whole: its blobs are still there.
    let manifest = layout.manifest("2");
    layout.blob(manifest["config"]["digest"].as_str().unwrap_or_default());
    layout.layer_tar("2");
    assert_eq!(read_json(&layout_dir.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
}

// ---------------------------------------------------------------------------------------------------------
// 6. --list.

#[test]
fn list_prints_layer_order_honours_dockerignore_and_builds_nothing() {
    let tmp = TempDir::new("build-list");
    let context = tmp.subdir("ctx");
    let excluded = make_rich_context_without_big_file(&context);
    let unused_layout = tmp.join("never-created");

    let mut cmd = IdpbCommand::new();
    let listed = cmd.args(["build", "--list"]).arg(&context).arg("--oci-layout").arg(&unused_layout).run();
    listed.assert_success();
    assert!(!unused_layout.exists(), "--list builds nothing: {listed}");
    let store = fs::read_dir(cmd.idpb_home()).map_or(0, |d| d.count());
    assert_eq!(store, 0, "--list leaves the local store alone");
    let lines: Vec<&str> = listed.stdout.lines().collect();

    for path in &excluded {
        assert!(!lines.iter().any(|l| l.trim_end_matches('/') == path), "{path} is ignored: {lines:?}");
    }
    for path in ["build/", "build/keep.txt", "src/debug.log", ".dockerignore", "empty-dir/", "dangling-link"] {
        assert!(lines.contains(&path), "{path} is listed: {lines:?}");
    }
    // Parents before children, siblings in byte order.
    for (i, line) in lines.iter().enumerate() {
        let path = line.trim_end_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            let parent = format!("{parent}/");
            let at = lines.iter().position(|l| *l == parent);
            assert!(at.is_some_and(|at| at < i), "{parent} is listed before {line}: {lines:?}");
        }
    }
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in &lines {
        let path = line.trim_end_matches('/');
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        children.entry(parent).or_default().push(name);
    }
    for (parent, names) in &children {
        assert!(names.is_sorted(), "the entries of {parent:?}/ are in byte order: {names:?}");
    }

    // The listing is the layer, entry for entry.
    let layout = tmp.join("layout");
    build_digest(&context, &layout, "list:1", &[], &[]);
    let layer: Vec<String> = Layout::new(&layout).layer_entries("1").iter().map(normalized).collect();
    assert_eq!(lines, layer, "--list and the layer agree on paths and order");
}

// ---------------------------------------------------------------------------------------------------------
// 7. Bad inputs.

/// Asserts a failed build: the expected code, nothing on stdout, one `docker-idpb: ` line on stderr (the
/// build runs with -q) mentioning `fault`, no panic.
#[track_caller]
fn assert_clean_error(output: &Output, codes: &[i32], fault: &str) {
    assert!(output.code.is_some_and(|c| codes.contains(&c)), "expected exit code in {codes:?}: {output}");
    assert!(!output.stderr.contains("panicked"), "a panic: {output}");
    assert!(output.stdout.trim().is_empty(), "nothing on stdout: {output}");
    let lines: Vec<&str> = output.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "a one-line error: {output}");
    assert!(lines[0].starts_with("docker-idpb: "), "{output}");
    assert!(lines[0].contains(fault), "the error names {fault:?}: {output}");
}

#[track_caller]
fn assert_no_image(layout: &Path) {
    assert!(!layout.join("index.json").exists(), "no index.json in {} after a failed build", layout.display());
    let blobs: Vec<_> = fs::read_dir(layout.join("blobs/sha256")).into_iter().flatten().flatten().collect();
    assert!(blobs.is_empty(), "no blobs after a failed build: {blobs:?}");
}

#[test]
fn bad_inputs_fail_with_one_line_and_leave_no_image() {
    let tmp = TempDir::new("build-bad");
    let context = tmp.subdir("ctx");
    make_small_context(&context);
    let layout = tmp.join("layout");
    let ctx = path_str(&context);
    let lay = path_str(&layout);

    let missing = path_str(&tmp.join("no-such-dir"));
    let file = path_str(&context.join("hello.txt"));
    let cases: &[(&[&str], &[i32], &str)] = &[
        (&[&missing, "--oci-layout", &lay], &[1], "no-such-dir"),
        (&[&file, "--oci-layout", &lay], &[1], "hello.txt"),
        (&[&ctx, "--oci-layout", &lay, "-t", "Upper/Case:1"], &[2], "Upper/Case:1"),
        (&[&ctx, "--oci-layout", &lay, "-t", "ok:bad tag"], &[2], "ok:bad tag"),
        (&[&ctx, "--oci-layout", &lay, "-t", &format!("a@sha256:{}", "0".repeat(64))], &[2], "digest"),
        (&[&ctx, "--oci-layout", &lay, "--digest-file", "/nonexistent-dir/d"], &[2], "--digest-file"),
        (&[&ctx, "--oci-layout", &lay, "--bogus"], &[2], "--bogus"),
        (&[&ctx, "--oci-layout", &lay, "--platform", "linux"], &[2], "--platform"),
        (&[&ctx, "--oci-layout", &lay, "--platform", "linux/arm64/v8/extra"], &[2], "--platform"),
        (&[&ctx, "--oci-layout", &lay, "--env", "NO_EQUALS"], &[2], "NO_EQUALS"),
        (&[&ctx, "--oci-layout", &lay, "--cmd", r#"["unterminated","#], &[2], "--cmd"),
        (&[&ctx, "--oci-layout", &lay, "--cmd", r#"["a", 1]"#], &[2], "--cmd"),
        (&[&ctx, "--oci-layout", &lay, "--expose", "eighty"], &[2], "eighty"),
        (&[&ctx, "--oci-layout", &lay, "--chown", "root:root"], &[2], "--chown"),
    ];
    for (args, codes, fault) in cases {
        let output = build(args.iter().chain(&["-q"]), &[]);
        assert_clean_error(&output, codes, fault);
        assert!(!layout.exists(), "{} was created by a failed build: {output}", layout.display());
    }

    // --oci-layout with --tar: neither is written.
    let tar_file = tmp.join("image.tar");
    let output = build([ctx.as_str(), "--oci-layout", &lay, "--tar", &path_str(&tar_file), "-q"], &[]);
    assert_clean_error(&output, &[2], "--tar");
    assert!(!layout.exists() && !tar_file.exists(), "nothing written: {output}");

    // An invalid .dockerignore pattern names the file and the line.
    let ignored = tmp.subdir("bad-ignore");
    make_small_context(&ignored);
    fs::write(ignored.join(".dockerignore"), "# comment\n*.log\n\nsrc/[a-\n").unwrap_or_else(|e| panic!("write: {e}"));
    let output = build([path_str(&ignored), "--oci-layout".into(), lay.clone(), "-q".into()], &[]);
    assert_clean_error(&output, &[1], ".dockerignore:4");
    assert!(output.stderr.contains("[a-"), "the pattern is quoted: {output}");
    assert_no_image(&layout);
    let output = build([path_str(&ignored), "--tar".into(), path_str(&tar_file), "-q".into()], &[]);
    assert_clean_error(&output, &[1], ".dockerignore:4");
    assert!(!tar_file.exists(), "no tar after a failed build: {output}");
}

/// An unreadable file. Root reads anything (mode 000 included), so as root the binary runs as `nobody`
/// (uid 65534) through util-linux's `setpriv`; the temp dir's ancestors must then be traversable by others.
#[test]
fn unreadable_file_fails_naming_it_and_leaves_no_image() {
    let tmp = TempDir::new("build-unreadable");
    let context = tmp.subdir("ctx");
    make_small_context(&context);
    let secret = context.join("sub/secret.key");
    fs::write(&secret, "secret\n").unwrap_or_else(|e| panic!("write: {e}"));
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap_or_else(|e| panic!("chmod: {e}"));
    // `nobody` must be able to write the outputs.
    let out_dir = tmp.subdir("out");
    fs::set_permissions(&out_dir, fs::Permissions::from_mode(0o777)).unwrap_or_else(|e| panic!("chmod: {e}"));
    let layout = out_dir.join("layout");
    let tar_file = out_dir.join("image.tar");

    let (layout_arg, tar_arg) = (path_str(&layout), path_str(&tar_file));
    for sink in [["--oci-layout", layout_arg.as_str()], ["--tar", tar_arg.as_str()]] {
        let mut cmd = if is_root() {
            let mut cmd = IdpbCommand::for_program(require_tool("setpriv"));
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(bin());
            cmd
        } else {
            IdpbCommand::new()
        };
        let output = cmd.arg("build").arg(&context).args(sink).arg("-q").run();
        assert_clean_error(&output, &[1], "secret.key");
        assert_no_image(&layout);
        assert!(!tar_file.exists(), "no tar after a failed build: {output}");
        let leftovers: Vec<String> = fs::read_dir(&out_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "layout")
            .collect();
        assert!(leftovers.is_empty(), "no temp file left beside the tar: {leftovers:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// 8. Special files.

#[test]
fn fifos_and_sockets_are_skipped_with_a_warning() {
    let tmp = TempDir::new("build-special");
    let context = tmp.subdir("ctx");
    make_small_context(&context);
    checked(Command::new(require_tool("mkfifo")).arg(context.join("sub/a-fifo")));
    let _socket = std::os::unix::net::UnixListener::bind(context.join("a-socket"))
        .unwrap_or_else(|e| panic!("cannot make a socket: {e}"));
    let layout = tmp.join("layout");

    let output = build([path_str(&context), "--oci-layout".into(), path_str(&layout), "-t".into(), "s:1".into()], &[]);
    output.assert_success();
    for name in ["sub/a-fifo", "a-socket"] {
        let warned = output.stderr.lines().any(|l| l.contains("warning") && l.contains(name));
        assert!(warned, "a warning names {name}: {output}");
    }
    let paths: Vec<String> = Layout::new(&layout).layer_entries("1").iter().map(normalized).collect();
    assert!(!paths.iter().any(|p| p.contains("a-fifo") || p.contains("a-socket")), "{paths:?}");
    assert!(paths.contains(&"sub/deeper/data.txt".to_string()), "the rest is there: {paths:?}");

    let listed = build([path_str(&context), "--list".into()], &[]);
    listed.assert_success();
    assert!(!listed.stdout.contains("a-fifo") && !listed.stdout.contains("a-socket"), "{listed}");
    assert!(listed.stderr.contains("sub/a-fifo"), "--list warns too: {listed}");

    let quiet = build([path_str(&context), "--oci-layout".into(), path_str(&layout), "-q".into()], &[]);
    quiet.assert_success();
    assert_eq!(quiet.stderr, "", "-q silences warnings too: {quiet}");
}

// ---------------------------------------------------------------------------------------------------------
// 9. Default tag, -q, --digest-file, --format json, the local store.

#[test]
fn default_tag_quiet_digest_file_json_and_local_store() {
    require_tool("skopeo");
    let tmp = TempDir::new("build-output");
    let context = tmp.subdir("My_App");
    make_small_context(&context);
    let layout = tmp.join("layout");
    let digest_file = tmp.join("digest.txt");

    let loud = build([path_str(&context), "--oci-layout".into(), path_str(&layout)], &[]);
    loud.assert_success();
    assert!(!loud.stderr.is_empty(), "progress goes to stderr without -q: {loud}");
    let lines = built_lines(&loud);
    assert_eq!(lines.len(), 1, "{loud}");
    assert_eq!(lines[0].0, "my_app:latest", "the directory's name, lowercased: {loud}");
    let (_, digest) = lines[0].clone();
    assert_eq!(loud.stdout, format!("my_app:latest@{digest}\n"), "the reference and nothing else: {loud}");

    let quiet = build(
        [
            path_str(&context),
            "--oci-layout".into(),
            path_str(&layout),
            "-q".into(),
            "--digest-file".into(),
            path_str(&digest_file),
        ],
        &[],
    );
    quiet.assert_success();
    assert_eq!(quiet.stderr, "", "-q: {quiet}");
    assert_eq!(quiet.stdout, loud.stdout, "same result, same line");
    let written = fs::read_to_string(&digest_file).unwrap_or_else(|e| panic!("no digest file: {e}"));
    assert_eq!(written.trim(), digest, "the digest file holds the digest alone");

    let json_run = build(
        [path_str(&context), "--oci-layout".into(), path_str(&layout), "--format".into(), "json".into(), "-q".into()],
        &[],
    );
    json_run.assert_success();
    let result: serde_json::Value = serde_json::from_str(&json_run.stdout)
        .unwrap_or_else(|e| panic!("--format json is not JSON ({e}): {json_run}"));
    let keys = [
        "name",
        "tags",
        "references",
        "digest",
        "mediaType",
        "size",
        "platform",
        "config_digest",
        "config_size",
        "layers",
        "total_size",
        "output",
    ];
    for key in keys {
        assert!(!result[key].is_null(), "{key} is in {result}");
    }
    assert_eq!(result["digest"], written.trim(), "{result}");
    assert_eq!(result["name"], "my_app");
    assert_eq!(result["tags"], serde_json::json!(["latest"]));
    assert_eq!(result["references"], serde_json::json!([format!("my_app:latest@{digest}")]));
    assert_eq!(result["output"], path_str(&layout));

    // Every number in the JSON matches the layout.
    let l = Layout::new(&layout);
    let manifest_bytes = l.blob(&digest);
    let manifest = l.json_blob(&digest);
    let size = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("a size, not {v}"));
    assert_eq!(size(&result["size"]), manifest_bytes.len() as u64);
    assert_eq!(result["config_digest"], manifest["config"]["digest"]);
    assert_eq!(result["config_size"], manifest["config"]["size"]);
    let only_layer = &result["layers"][0];
    assert_eq!(result["layers"].as_array().map(Vec::len), Some(1), "{result}");
    assert_eq!(only_layer["digest"], manifest["layers"][0]["digest"]);
    assert_eq!(only_layer["size"], manifest["layers"][0]["size"]);
    let layer = l.blob(only_layer["digest"].as_str().unwrap_or_default());
    assert_eq!(size(&only_layer["size"]), layer.len() as u64);
    assert_eq!(only_layer["diff_id"], sha256_digest(&gunzip(&layer)));
    assert_eq!(
        size(&result["total_size"]),
        size(&result["size"]) + size(&result["config_size"]) + size(&only_layer["size"])
    );

    // With no output flag and no context argument: `.`, named after the directory, into $IDPB_HOME.
    let mut cmd = IdpbCommand::new();
    let stored = cmd.current_dir(&context).args(["build", "-q"]).run();
    stored.assert_success();
    assert_eq!(stored.stdout, loud.stdout, "`.` is the same context: {stored}");
    let store = cmd.idpb_home();
    let entry = Layout::new(&store).entry("latest");
    assert_eq!(entry["annotations"]["io.containerd.image.name"], "docker.io/library/my_app:latest");
    assert_eq!(entry["digest"], digest.as_str());
    let config = skopeo_inspect_layout_config(&store, "latest");
    assert_eq!(config["rootfs"]["diff_ids"][0], result["layers"][0]["diff_id"]);
}

// ---------------------------------------------------------------------------------------------------------
// 10. --prefix and --chown.

#[test]
fn prefix_moves_the_context_and_chown_sets_owners() {
    require_tool("umoci");
    let tmp = TempDir::new("build-prefix");
    let context = tmp.subdir("ctx");
    make_small_context(&context);
    let layout = tmp.join("layout");

    // Defaults first: root-owned, no names.
    build_digest(&context, &layout, "owners:default", &[], &[]);
    let entries = Layout::new(&layout).layer_entries("default");
    for e in &entries {
        assert_eq!((e.uid, e.gid, e.uname.as_str(), e.gname.as_str()), (0, 0, "", ""), "{e:?}");
        assert!(!e.path.starts_with('/'), "relative paths: {e:?}");
    }
    let run_sh = entries.iter().find(|e| e.path == "run.sh").unwrap_or_else(|| panic!("run.sh: {entries:?}"));
    assert_eq!(run_sh.mode & 0o7777, 0o755, "{run_sh:?}");

    build_digest(&context, &layout, "owners:app", &["--prefix", "/app", "--chown", "1000:1000"], &[]);
    let entries = Layout::new(&layout).layer_entries("app");
    assert!(!entries.is_empty());
    for e in &entries {
        assert!(e.path == "app/" || e.path == "app" || e.path.starts_with("app/"), "under app/: {e:?}");
        assert_eq!((e.uid, e.gid), (1000, 1000), "--chown 1000:1000: {e:?}");
    }
    let paths: Vec<String> = entries.iter().map(normalized).collect();
    for want in ["app/hello.txt", "app/sub/", "app/sub/deeper/data.txt", "app/link", "app/run.sh"] {
        assert!(paths.iter().any(|p| p == want), "{want} in {paths:?}");
    }

    let rootfs = umoci_unpack(&layout, "app", &tmp.join("bundle"));
    let top: Vec<String> = fs::read_dir(&rootfs)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", rootfs.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, ["app"], "only app/ at the root");
    assert_same_tree(&context, &rootfs.join("app"), &[]);
    assert_eq!(
        fs::read_link(rootfs.join("app/link")).ok(),
        Some(PathBuf::from("hello.txt")),
        "a relative symlink stays relative"
    );
}
