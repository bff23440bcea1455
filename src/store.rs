//! The local image store as a set of images: what it holds (`images`), forgetting names (`rm`), and
//! deleting what no name needs any more (`prune`).
//!
//! The store is an OCI layout at `$IDPB_HOME` plus caches under `cache/`. An image is an `index.json` entry
//! named by its `io.containerd.image.name`; what it needs is every blob reachable from that entry (an index
//! names manifests, a manifest names a config and layers). `images` walks that graph per entry and reports
//! the descriptor size of what the name points at (`size`) and the unique blobs it reaches (`total_size`),
//! with the entry's age from the `dev.idpb.stored` annotation the store's sink writes (else the manifest
//! file's mtime): builds are reproducible, so the config's `created` is usually 1970. `rm` only rewrites
//! `index.json` (under its lock, through a temp file and a rename) and is all-or-nothing: every name is
//! resolved before anything is written, so one typo removes nothing. Blobs are deleted by `prune` alone.
//!
//! `prune` keeps every blob reachable from any entry (following anything that parses as a manifest or
//! index, even of a media type it does not know) and deletes the other files of `blobs/sha256/`, plus temp
//! files older than an hour (left by killed runs) in the store, its blobs and its caches. The race that
//! matters is a build that found a blob present (a layer cache hit, a base layer, a config) or renamed a new
//! one into place, but has not written its index entry yet: to prune that blob would leave the new name
//! pointing at nothing. A grace period on blob mtimes cannot close it (a found blob can be years old), so
//! prune takes the lock every layout sink holds shared for its whole life (on `blobs/`) exclusively: it
//! waits for running builds and holds new ones back while it reads the index and deletes, which costs a
//! build at most the few milliseconds a prune takes. Caches are left alone: the layer cache maps a
//! context's fingerprint to a digest and every hit is confirmed by asking the sink for the blob, so a
//! pruned layer is simply built again; the base document and header caches are keyed by digest and hold
//! their own bytes, not blobs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::atomic::Locked;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, ANNOTATION_STORED, Descriptor, MediaType};
use crate::layout::{Layout, entry_matches};
use crate::reference::Reference;
use crate::signal::Cancel;

/// Temp files younger than this may belong to a run still writing them.
pub const TEMP_FILE_AGE: Duration = Duration::from_secs(3600);

/// The local image store at a directory (which may not exist yet: then it is empty).
pub struct Store {
    root: PathBuf,
}

/// One name in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// The repository in Docker's familiar form (`app`, `127.0.0.1:5000/ns/app`); `<none>` for an entry
    /// another tool wrote without a full name.
    pub name: String,
    pub tag: String,
    /// The manifest's (or a multi-platform image's index's) digest, media type and size.
    pub digest: Digest,
    pub media_type: MediaType,
    pub size: u64,
    /// Every blob the image reaches, each counted once (platforms share layers).
    pub total_size: u64,
    /// When the entry was written, in seconds since the epoch.
    pub stored: u64,
}

impl StoredImage {
    /// `NAME:TAG`, what `rm` and `push --image` take.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// What `prune` deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// Blobs no image reaches.
    pub blobs: u64,
    /// Leftover temp files.
    pub temp_files: u64,
    /// Bytes freed by both.
    pub freed: u64,
}

const NONE: &str = "<none>";

impl Store {
    pub fn new(root: &Path) -> Store {
        Store { root: root.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// The layout, or `None` while nothing was ever stored.
    fn layout(&self) -> Result<Option<Layout>> {
        if !self.root.join("oci-layout").is_file() {
            return Ok(None);
        }
        Layout::open(&self.root).map(Some)
    }

    fn entries(&self) -> Result<Vec<Descriptor>> {
        Ok(crate::layout::read_index(&self.index_path())?.manifests)
    }

    /// Every image, sorted by name then tag.
    pub fn images(&self) -> Result<Vec<StoredImage>> {
        let Some(layout) = self.layout()? else { return Ok(Vec::new()) };
        let mut images = Vec::new();
        for entry in self.entries()? {
            let mut blobs = BTreeMap::new();
            reach(&layout, &entry, &mut blobs).map_err(|e| unreadable(&entry, "cannot size", e))?;
            let (name, tag) = name_and_tag(&entry);
            images.push(StoredImage {
                name,
                tag,
                total_size: blobs.values().sum(),
                stored: stored_at(&layout, &entry),
                digest: entry.digest,
                media_type: entry.media_type,
                size: entry.size,
            });
        }
        images.sort_by(|a, b| (&a.name, &a.tag).cmp(&(&b.name, &b.tag)));
        Ok(images)
    }

    /// Every `NAME:TAG`, for error messages.
    fn held(entries: &[Descriptor]) -> Vec<String> {
        let mut held: Vec<String> = entries.iter().map(reference_of).collect();
        held.sort();
        held.dedup();
        held
    }

    /// Removes the entries named `names` (`NAME[:TAG]`, `:latest` by default) from the index and returns
    /// them as `NAME:TAG`. All or nothing: when any name is not in the store, nothing is removed and the
    /// error lists what the store holds. Blobs stay (see [`Store::prune`]).
    pub fn remove(&self, names: &[String]) -> Result<Vec<String>> {
        let mut wanted = Vec::new();
        for n in names {
            let r = Reference::parse(n)?;
            if r.digest.is_some() {
                return Err(Error::usage(format!(
                    "rm {n}: the store names images by NAME[:TAG]; drop the @sha256:... part"
                )));
            }
            if !wanted.iter().any(|(_, w): &(String, Reference)| *w == r) {
                wanted.push((n.clone(), r));
            }
        }
        let path = self.index_path();
        if !self.root.join("oci-layout").is_file() {
            return Err(self.not_in_store(wanted.into_iter().map(|(n, _)| n).collect(), Vec::new()));
        }
        let _lock = Locked::on(&path)?;
        let mut index = crate::layout::read_index(&path)?;
        let named = |d: &Descriptor, r: &Reference, given: &str| match d.annotations.get(ANNOTATION_CONTAINERD_NAME) {
            Some(full) => *full == r.full_name(),
            // Another tool's entry with only a tag: named by exactly that tag.
            None => d.annotations.get(ANNOTATION_REF_NAME).is_some_and(|t| t == given),
        };
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(given, r)| !index.manifests.iter().any(|d| named(d, r, given)))
            .map(|(given, _)| given.clone())
            .collect();
        if !missing.is_empty() {
            return Err(self.not_in_store(missing, Self::held(&index.manifests)));
        }
        let mut removed = Vec::new();
        index.manifests.retain(|d| {
            let hit = wanted.iter().any(|(given, r)| named(d, r, given));
            if hit {
                removed.push(reference_of(d));
            }
            !hit
        });
        let bytes = serde_json::to_vec(&index).map_err(|e| Error::Layout(format!("cannot encode index: {e}")))?;
        crate::atomic::write(&path, &bytes, 0o644)?;
        Ok(removed)
    }

    fn not_in_store(&self, wanted: Vec<String>, held: Vec<String>) -> Error {
        Error::NotInStore {
            wanted,
            held,
            store: self.root.clone(),
            hint: "see `docker-idpb images` for the names it holds".to_string(),
        }
    }

    /// The entry `name` names (a tag, a full or familiar name); with `None`, the store's only image. The
    /// errors list what the store holds and how to choose (`push --image`).
    pub fn find(&self, name: Option<&str>) -> Result<Descriptor> {
        let entries = if self.layout()?.is_some() { self.entries()? } else { Vec::new() };
        let matching: Vec<&Descriptor> = match name {
            Some(want) => entries.iter().filter(|d| entry_matches(d, want)).collect(),
            None => entries.iter().collect(),
        };
        let store = crate::progress::escaped(&self.root.display().to_string());
        match (matching.as_slice(), name) {
            ([one], _) => Ok((*one).clone()),
            // Kept a usage error (exit 2), as before the store could be listed: the fix is another argument.
            ([], _) if entries.is_empty() => Err(Error::usage(format!(
                "nothing to push: {}the local store {store} is empty; give a CONTEXT directory, build the image \
                 first (`docker-idpb build DIR -t NAME:TAG`), or use --oci-layout DIR",
                name.map(|n| format!("no image {}: ", crate::progress::escaped(n))).unwrap_or_default()
            ))),
            // `want` is always given here: without a name, every entry matches.
            ([], want) => Err(Error::NotInStore {
                wanted: want.into_iter().map(str::to_string).collect(),
                held: Self::held(&entries),
                store: self.root.clone(),
                hint: "choose one with --image NAME:TAG (`docker-idpb images` lists them)".to_string(),
            }),
            (several, want) => {
                let names: Vec<String> = several.iter().map(|d| crate::progress::escaped(&reference_of(d))).collect();
                Err(Error::Layout(match want {
                    None => format!(
                        "the local store {store} holds several images ({}): choose one with --image NAME:TAG",
                        names.join(", ")
                    ),
                    Some(w) => format!(
                        "{} names several images in the local store {store} ({}): give one NAME:TAG with --image",
                        crate::progress::escaped(w),
                        names.join(", ")
                    ),
                }))
            }
        }
    }

    /// Deletes every blob no entry reaches and temp files older than [`TEMP_FILE_AGE`], holding the blobs
    /// lock exclusively (`waiting` is called if a build holds it first). Nothing is deleted when an image's
    /// manifest cannot be read, since what it needs would be unknown.
    pub fn prune(&self, cancel: &Cancel, waiting: impl FnOnce()) -> Result<Pruned> {
        let Some(layout) = self.layout()? else { return Ok(Pruned::default()) };
        let blobs_dir = self.root.join("blobs");
        if !blobs_dir.is_dir() {
            return Ok(Pruned::default());
        }
        let _lock = Locked::exclusive(&blobs_dir, cancel, waiting)?;
        let mut keep = BTreeMap::new();
        for entry in self.entries()? {
            reach(&layout, &entry, &mut keep)
                .map_err(|e| unreadable(&entry, "nothing pruned: cannot tell which blobs are needed by", e))?;
        }
        let mut pruned = Pruned::default();
        let now = SystemTime::now();
        let sha256 = blobs_dir.join("sha256");
        for (name, meta) in files(&sha256)? {
            cancel.check()?;
            let path = sha256.join(&name);
            if is_temp(&name) {
                if old(&meta, now) && remove(&path)? {
                    pruned.temp_files += 1;
                    pruned.freed += meta.len();
                }
                continue;
            }
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else { continue };
            if !keep.contains_key(&digest) && meta.file_type().is_file() && remove(&path)? {
                pruned.blobs += 1;
                pruned.freed += meta.len();
            }
        }
        for dir in [self.root.clone(), self.root.join("cache")] {
            for (name, meta) in files(&dir)? {
                if is_temp(&name) && meta.file_type().is_file() && old(&meta, now) && remove(&dir.join(&name))? {
                    pruned.temp_files += 1;
                    pruned.freed += meta.len();
                }
            }
        }
        Ok(pruned)
    }
}

/// The error for an image whose manifest or index cannot be read: what was being done, and the way out.
fn unreadable(entry: &Descriptor, doing: &str, e: Error) -> Error {
    let name = crate::progress::escaped(&reference_of(entry));
    Error::Layout(format!("{doing} image {name} ({e}); remove it with `docker-idpb rm {name}`"))
}

/// `NAME:TAG` of an entry: its full name in familiar form, else its tag, else its digest.
fn reference_of(d: &Descriptor) -> String {
    match name_and_tag(d) {
        (name, tag) if name != NONE => format!("{name}:{tag}"),
        (_, tag) if tag != NONE => tag,
        _ => d.digest.to_string(),
    }
}

/// An entry's repository (familiar form) and tag.
fn name_and_tag(d: &Descriptor) -> (String, String) {
    let tag = d.annotations.get(ANNOTATION_REF_NAME).cloned();
    match d.annotations.get(ANNOTATION_CONTAINERD_NAME).map(|n| Reference::parse(n)) {
        Some(Ok(r)) => (r.familiar_repository(), r.tag_or_latest().to_string()),
        Some(Err(_)) | None => (NONE.to_string(), tag.unwrap_or_else(|| NONE.to_string())),
    }
}

/// When the entry was written: its `dev.idpb.stored` annotation, else its manifest file's mtime.
fn stored_at(layout: &Layout, d: &Descriptor) -> u64 {
    if let Some(t) = d.annotations.get(ANNOTATION_STORED).and_then(|s| crate::image::parse_rfc3339(s)) {
        return t;
    }
    std::fs::metadata(layout.blob_path(&d.digest))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The links of a manifest or index, whatever its media type: what `prune` must keep.
#[derive(serde::Deserialize)]
struct Links {
    #[serde(default)]
    manifests: Vec<Link>,
    config: Option<Link>,
    #[serde(default)]
    layers: Vec<Link>,
    /// A referrer's subject (a signature or SBOM stored with the image it describes).
    subject: Option<Link>,
    /// OCI 1.1's artifact manifest.
    #[serde(default)]
    blobs: Vec<Link>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Link {
    #[serde(default)]
    media_type: MediaType,
    digest: Digest,
    #[serde(default)]
    size: u64,
}

/// Adds every blob `root` reaches (itself included) to `blobs`, with its descriptor size. Manifests and
/// indexes are read and followed; so is anything an index or `index.json` names that parses as one (an
/// artifact of a type this crate does not know). A missing blob is counted and not followed (there is
/// nothing under it to keep); a manifest or index that is there but unreadable is an error.
fn reach(layout: &Layout, root: &Descriptor, blobs: &mut BTreeMap<Digest, u64>) -> Result<()> {
    // (link, whether it may be a manifest worth reading)
    let mut stack = vec![(root.media_type.clone(), root.digest.clone(), root.size, true)];
    while let Some((media_type, digest, size, manifest_like)) = stack.pop() {
        if blobs.insert(digest.clone(), size).is_some() || !manifest_like {
            continue;
        }
        let known = media_type.is_index() || media_type.is_image();
        if !layout.blob_path(&digest).exists() || (!known && size > crate::atomic::IMAGE_JSON_CAP) {
            continue;
        }
        let links = match layout.read_blob(&digest) {
            Ok(bytes) => serde_json::from_slice::<Links>(&bytes)
                .map_err(|e| Error::Layout(format!("{media_type} {digest} is not valid: {e}"))),
            Err(e) => Err(e),
        };
        let links = match links {
            Ok(links) => links,
            Err(e) if known => return Err(e),
            // Not a manifest after all (a plain blob an index named): nothing below it.
            Err(_) => continue,
        };
        for l in links.manifests.into_iter().chain(links.subject) {
            stack.push((l.media_type, l.digest, l.size, true));
        }
        for l in links.config.into_iter().chain(links.layers).chain(links.blobs) {
            stack.push((l.media_type, l.digest, l.size, false));
        }
    }
    Ok(())
}

/// The entries of `dir` (none if it does not exist) with their metadata (not following links).
fn files(dir: &Path) -> Result<Vec<(String, std::fs::Metadata)>> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, "read", e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| Error::io(dir, "read", e))?;
        // A name that is not UTF-8 is neither a blob nor one of our temp files.
        let Ok(name) = entry.file_name().into_string() else { continue };
        match std::fs::symlink_metadata(entry.path()) {
            Ok(meta) => out.push((name, meta)),
            // Gone since the listing (another prune): nothing to do.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(entry.path(), "read", e)),
        }
    }
    Ok(out)
}

/// A temp file of [`crate::atomic::temp_file`]: `.NAME.tmp-RANDOM`.
fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

fn old(meta: &std::fs::Metadata, now: SystemTime) -> bool {
    meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age >= TEMP_FILE_AGE)
}

/// Removes `path`; `false` when it was already gone.
fn remove(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, "remove", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Index, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST};
    use crate::reference::Reference;
    use crate::sink::{ManifestBlob, Sink};

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("idpb-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Stores an image of one config and the given layers under `name`; returns its manifest digest.
    fn put_image(sink: &mut dyn Sink, name: &str, layers: &[&[u8]]) -> Digest {
        let config = format!("{{\"n\":{name:?}}}").into_bytes();
        sink.put_blob(&config, &Digest::of(&config)).unwrap();
        let mut descs = Vec::new();
        for l in layers {
            sink.put_blob(l, &Digest::of(l)).unwrap();
            descs.push(Descriptor::new(MEDIA_TYPE_LAYER_GZIP, Digest::of(l), l.len() as u64));
        }
        let manifest = crate::image::Manifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_MANIFEST.into(),
            config: Descriptor::new(MEDIA_TYPE_CONFIG, Digest::of(&config), config.len() as u64),
            layers: descs,
            annotations: Default::default(),
        };
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let blob =
            ManifestBlob { digest: Digest::of(&bytes), bytes, media_type: MEDIA_TYPE_MANIFEST.into(), platform: None };
        sink.put_manifest(&blob, &Reference::parse(name).unwrap()).unwrap();
        blob.digest
    }

    fn blob_names(root: &Path) -> std::collections::BTreeSet<String> {
        std::fs::read_dir(root.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    #[test]
    fn images_rm_and_prune_follow_what_the_index_reaches() {
        let root = scratch("cycle");
        let store = Store::new(&root);
        assert_eq!(store.images().unwrap(), vec![], "a store never written to is empty");
        assert_eq!(store.prune(&Cancel::new(), || {}).unwrap(), Pruned::default());
        {
            let mut sink = crate::layout::LayoutSink::store(&root).unwrap();
            put_image(&mut sink, "b:1", &[b"shared", b"only-b"]);
            put_image(&mut sink, "a", &[b"shared", b"only-a"]);
        }
        let images = store.images().unwrap();
        let refs: Vec<String> = images.iter().map(StoredImage::reference).collect();
        assert_eq!(refs, ["a:latest", "b:1"], "sorted by name, then tag");
        let a = &images[0];
        let manifest_len = std::fs::metadata(root.join("blobs/sha256").join(a.digest.hex())).unwrap().len();
        assert_eq!(a.size, manifest_len);
        assert_eq!(a.total_size, manifest_len + br#"{"n":"a"}"#.len() as u64 + 6 + 6);
        let age = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - a.stored;
        assert!(age < 60, "stored just now: {a:?}");

        // All or nothing: one missing name removes nothing.
        let before = std::fs::read(root.join("index.json")).unwrap();
        let err = store.remove(&["a".into(), "nope:2".into()]).unwrap_err().to_string();
        assert!(err.contains("nope:2") && err.contains("it holds a:latest, b:1"), "{err}");
        assert_eq!(std::fs::read(root.join("index.json")).unwrap(), before);

        let blobs_before = blob_names(&root);
        assert_eq!(store.remove(&["docker.io/library/a:latest".into()]).unwrap(), ["a:latest"]);
        assert_eq!(blob_names(&root), blobs_before, "rm deletes no blob");
        // A temp file a killed run left an hour ago goes; a fresh one (a run writing it now) stays.
        let stale = root.join("blobs/sha256/.blob.tmp-0123456789abcdef");
        let fresh = root.join("cache/.layer-x.json.tmp-0123456789abcdef");
        std::fs::create_dir_all(root.join("cache")).unwrap();
        std::fs::write(&stale, b"partial").unwrap();
        std::fs::write(&fresh, b"partial").unwrap();
        let hour_ago = SystemTime::now() - TEMP_FILE_AGE - Duration::from_secs(5);
        std::fs::File::options().write(true).open(&stale).unwrap().set_modified(hour_ago).unwrap();

        let before_prune = blob_names(&root);
        let pruned = store.prune(&Cancel::new(), || {}).unwrap();
        let gone: Vec<String> = before_prune.difference(&blob_names(&root)).cloned().collect();
        let mut want = vec![
            a.digest.hex().to_string(),
            Digest::of(br#"{"n":"a"}"#).hex().to_string(),
            Digest::of(b"only-a").hex().to_string(),
            ".blob.tmp-0123456789abcdef".to_string(),
        ];
        want.sort();
        assert_eq!(gone, want);
        assert_eq!(pruned, Pruned { blobs: 3, temp_files: 1, freed: a.total_size - 6 + 7 });
        assert!(fresh.exists());
        assert_eq!(store.prune(&Cancel::new(), || {}).unwrap(), Pruned::default(), "a second prune finds nothing");
        assert_eq!(store.images().unwrap().len(), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_index_keeps_its_platforms_and_unknown_artifacts_keep_their_blobs() {
        let root = scratch("index");
        let store = Store::new(&root);
        let mut sink = crate::layout::LayoutSink::store(&root).unwrap();
        let one = put_image(&mut sink, "x:one", &[b"l1"]);
        let two = put_image(&mut sink, "x:two", &[b"l1", b"l2"]);
        let sizes = |d: &Digest| std::fs::metadata(root.join("blobs/sha256").join(d.hex())).unwrap().len();
        let index = Index {
            manifests: vec![
                Descriptor::new(MEDIA_TYPE_MANIFEST, one.clone(), sizes(&one)),
                Descriptor::new(MEDIA_TYPE_MANIFEST, two.clone(), sizes(&two)),
            ],
            ..Index::empty()
        };
        let bytes = serde_json::to_vec(&index).unwrap();
        let blob =
            ManifestBlob { digest: Digest::of(&bytes), bytes, media_type: MEDIA_TYPE_INDEX.into(), platform: None };
        sink.put_manifest(&blob, &Reference::parse("multi:1").unwrap()).unwrap();
        // An artifact manifest of a type no one here knows, naming a blob of its own.
        let extra = b"sbom";
        sink.put_blob(extra, &Digest::of(extra)).unwrap();
        let artifact = format!(r#"{{"blobs":[{{"mediaType":"x","digest":"{}","size":4}}]}}"#, Digest::of(extra));
        let artifact_blob = ManifestBlob {
            digest: Digest::of(artifact.as_bytes()),
            bytes: artifact.into_bytes(),
            media_type: "application/x-unknown+json".into(),
            platform: None,
        };
        sink.put_manifest(&artifact_blob, &Reference::parse("sbom:1").unwrap()).unwrap();
        drop(sink);
        store.remove(&["x:one".into(), "x:two".into(), "x:two".into()]).unwrap();
        let before = blob_names(&root);
        assert_eq!(store.prune(&Cancel::new(), || {}).unwrap().blobs, 0, "the index and the artifact reach everything");
        assert_eq!(blob_names(&root), before);
        let multi = store.images().unwrap().into_iter().find(|i| i.name == "multi").unwrap();
        let configs = (br#"{"n":"x:one"}"#.len() + br#"{"n":"x:two"}"#.len()) as u64;
        assert_eq!(multi.total_size, blob.bytes.len() as u64 + sizes(&one) + sizes(&two) + configs + 2 + 2);
        assert_eq!(multi.size, blob.bytes.len() as u64);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn prune_waits_for_a_running_build_and_can_be_cancelled_meanwhile() {
        let root = scratch("lock");
        let store = Store::new(&root);
        let sink = crate::layout::LayoutSink::store(&root).unwrap();
        let cancel = Cancel::new();
        let waited = std::cell::Cell::new(false);
        let canceller = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            canceller.cancel();
        });
        let result = store.prune(&cancel, || waited.set(true));
        t.join().unwrap();
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        assert!(waited.get(), "told the user it was waiting");
        drop(sink);
        assert!(store.prune(&Cancel::new(), || panic!("no build holds the lock")).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn find_lists_what_the_store_holds() {
        let root = scratch("find");
        let store = Store::new(&root);
        let empty = store.find(None).unwrap_err().to_string();
        assert!(empty.contains("is empty"), "{empty}");
        let mut sink = crate::layout::LayoutSink::store(&root).unwrap();
        put_image(&mut sink, "a:1", &[b"x"]);
        assert!(store.find(None).is_ok(), "the only image");
        put_image(&mut sink, "b:2", &[b"x"]);
        let several = store.find(None).unwrap_err().to_string();
        assert!(several.contains("a:1, b:2") && several.contains("--image"), "{several}");
        let missing = store.find(Some("127.0.0.1:5000/ns/c:1")).unwrap_err().to_string();
        assert!(missing.contains("it holds a:1, b:2") && missing.contains("--image NAME:TAG"), "{missing}");
        assert!(store.find(Some("b:2")).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
