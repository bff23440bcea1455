//! The static binary `make static` leaves at `dist/docker-idpb`, checked as it ships: one file that runs in a
//! scratch container.
//!
//! The ELF headers are read directly (no `PT_INTERP`, no `DT_NEEDED`, no symbol table) rather than through
//! `file` or `ldd`, whose wording varies between versions. Then the binary runs in a `chroot` holding
//! nothing but itself, `/etc/hosts`, `/etc/resolv.conf`, a test CA and a copied build context, with an
//! empty environment: it must resolve names from `/etc/hosts` without NSS modules, verify TLS with only the
//! CA it is given, and push images that skopeo pulls back identical to the context. Chrooting needs root,
//! which is how the test suite runs; `make test` builds the binary first.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;
use support::*;

/// The name `/etc/hosts` in the chroot gives 127.0.0.1, which no DNS server knows.
const ALIAS: &str = "registry.idpb.test";

/// `dist/docker-idpb`, which must exist and be newer than the sources it was built from.
fn static_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = root.join("dist/docker-idpb");
    let built = fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{} is missing ({e}): run `make static` first", binary.display()));
    let mut sources = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    collect_files(&root.join("src"), &mut sources);
    for source in sources {
        let changed = fs::metadata(&source).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        assert!(
            changed <= built,
            "{} is older than {}: run `make static` first so the test checks the current code",
            binary.display(),
            source.display()
        );
    }
    binary
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next());
    assert_eq!(uid, Some("0"), "the static-binary test chroots, which needs root: run `make test` as root");
}

// ---------------------------------------------------------------------------------------------------------
// ELF: statically linked, stripped, x86_64.

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const SHT_SYMTAB: u32 = 2;

/// Little-endian integers at an offset, panicking (with what was being read) past the end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn get<const N: usize>(&self, at: u64, what: &str) -> [u8; N] {
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        let slice = at.checked_add(N).and_then(|end| self.0.get(at..end));
        let slice = slice.unwrap_or_else(|| panic!("the ELF file ends before {what} at offset {at}"));
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        out
    }
    fn u16(&self, at: u64, what: &str) -> u16 {
        u16::from_le_bytes(self.get(at, what))
    }
    fn u32(&self, at: u64, what: &str) -> u32 {
        u32::from_le_bytes(self.get(at, what))
    }
    fn u64(&self, at: u64, what: &str) -> u64 {
        u64::from_le_bytes(self.get(at, what))
    }
}

/// What the ELF headers say about linking.
#[derive(Debug)]
struct ElfFacts {
    machine: u16,
    interpreter: Option<String>,
    needed: usize,
    has_symtab: bool,
}

fn elf_facts(bytes: &[u8]) -> ElfFacts {
    assert_eq!(bytes.get(..4), Some(&b"\x7fELF"[..]), "not an ELF file");
    assert_eq!(bytes.get(4), Some(&2), "not a 64-bit ELF file");
    assert_eq!(bytes.get(5), Some(&1), "not a little-endian ELF file");
    let b = Bytes(bytes);
    let machine = b.u16(0x12, "e_machine");
    let (phoff, phentsize, phnum) = (b.u64(0x20, "e_phoff"), b.u16(0x36, "e_phentsize"), b.u16(0x38, "e_phnum"));
    let (shoff, shentsize, shnum) = (b.u64(0x28, "e_shoff"), b.u16(0x3a, "e_shentsize"), b.u16(0x3c, "e_shnum"));
    let mut facts = ElfFacts { machine, interpreter: None, needed: 0, has_symtab: false };
    for i in 0..u64::from(phnum) {
        let ph = phoff + i * u64::from(phentsize);
        let (kind, offset, size) = (b.u32(ph, "p_type"), b.u64(ph + 8, "p_offset"), b.u64(ph + 32, "p_filesz"));
        if kind == PT_INTERP {
            let path = (0..size).map(|j| b.get::<1>(offset + j, "PT_INTERP")[0]).take_while(|c| *c != 0);
            facts.interpreter = Some(String::from_utf8_lossy(&path.collect::<Vec<u8>>()).into_owned());
        }
        if kind == PT_DYNAMIC {
            // A static-pie binary has a dynamic section (for its own relocations) but needs no library.
            for entry in (offset..offset + size).step_by(16) {
                match b.u64(entry, "d_tag") {
                    DT_NULL => break,
                    DT_NEEDED => facts.needed += 1,
                    _ => {}
                }
            }
        }
    }
    for i in 0..u64::from(shnum) {
        let sh = shoff + i * u64::from(shentsize);
        facts.has_symtab |= b.u32(sh + 4, "sh_type") == SHT_SYMTAB;
    }
    facts
}

#[test]
fn static_binary_is_statically_linked_stripped_and_small() {
    let binary = static_binary();
    let bytes = fs::read(&binary).unwrap_or_else(|e| panic!("cannot read {}: {e}", binary.display()));
    let facts = elf_facts(&bytes);
    assert_eq!(facts.machine, 62, "x86_64 (EM_X86_64): {facts:?}");
    assert_eq!(facts.interpreter, None, "no dynamic loader: {facts:?}");
    assert_eq!(facts.needed, 0, "no shared library needed: {facts:?}");
    assert!(!facts.has_symtab, "stripped: {facts:?}");
    // The parser sees what it looks for: the cargo-built test binary is dynamic and unstripped.
    let dynamic = fs::read(bin()).unwrap_or_else(|e| panic!("cannot read {}: {e}", bin().display()));
    let dynamic = elf_facts(&dynamic);
    assert!(dynamic.interpreter.is_some() && dynamic.needed > 0 && dynamic.has_symtab, "{dynamic:?}");

    let size = bytes.len();
    assert!(size < 5 * 1024 * 1024, "{} is {size} bytes; the aim is under 5 MiB", binary.display());
    eprintln!("{}: {size} bytes ({:.2} MiB)", binary.display(), size as f64 / (1024.0 * 1024.0));

    let output = run(Command::new(&binary).arg("version").env_clear());
    output.assert_success();
    assert_eq!(output.stdout.trim(), format!("docker-idpb {}", env!("CARGO_PKG_VERSION")), "{output}");
}

// ---------------------------------------------------------------------------------------------------------
// A chroot with nothing but the binary: push over HTTP and HTTPS.

/// `DIR/{docker-idpb, etc/hosts, etc/resolv.conf, ca.crt, ctx/}` and nothing else.
struct Chroot {
    dir: TempDir,
}

impl Chroot {
    /// The binary, name resolution files, `ca` (if any) as `/ca.crt`, and `context` copied to `/ctx`.
    fn new(context: &Path, ca: Option<&Path>) -> Chroot {
        require_root();
        let dir = TempDir::new("chroot");
        let copy = |from: &Path, to: &str| {
            let dest = dir.join(to);
            fs::copy(from, &dest).unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", from.display(), to));
        };
        copy(&static_binary(), "docker-idpb");
        let etc = dir.subdir("etc");
        let hosts = format!("127.0.0.1\tlocalhost {ALIAS}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        fs::write(etc.join("hosts"), hosts).unwrap_or_else(|e| panic!("cannot write etc/hosts: {e}"));
        // The machine's resolver config, as a container gets it (nothing here should need DNS).
        let resolv = fs::read("/etc/resolv.conf").unwrap_or_else(|_| b"nameserver 127.0.0.1\n".to_vec());
        fs::write(etc.join("resolv.conf"), resolv).unwrap_or_else(|e| panic!("cannot write etc/resolv.conf: {e}"));
        if let Some(ca) = ca {
            copy(ca, "ca.crt");
        }
        let cp = run(Command::new("cp").arg("-a").arg(context).arg(dir.join("ctx")));
        cp.assert_success();
        Chroot { dir }
    }

    /// `chroot DIR /docker-idpb ARGS` with an empty environment.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(require_tool("chroot"));
        cmd.env_clear().arg(self.dir.path()).arg("/docker-idpb").args(args);
        run(&mut cmd)
    }

    /// Asserts the chroot still holds only what it was given (the binary wrote nothing, e.g. no cache).
    fn assert_untouched(&self) {
        let mut top: Vec<String> = fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        top.retain(|name| name != "ca.crt");
        assert_eq!(top, ["ctx", "docker-idpb", "etc"], "the chroot gained files");
        let mut etc: Vec<String> = fs::read_dir(self.dir.join("etc"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        etc.sort();
        assert_eq!(etc, ["hosts", "resolv.conf"]);
    }
}

#[test]
fn static_binary_in_an_empty_chroot_pushes_over_plain_http() {
    require_tool("skopeo");
    require_tool("umoci");
    let registry = Registry::start(RegistryMode::Http);
    let port = registry.port();
    let tmp = TempDir::new("static-http");
    let context = tmp.subdir("ctx");
    let excluded = make_rich_context(&context);
    let chroot = Chroot::new(&context, None);

    let version = chroot.run(&["version"]);
    assert_eq!(version.stdout.trim(), format!("docker-idpb {}", env!("CARGO_PKG_VERSION")), "{version}");

    let target = registry.reference("ns/static:http");
    let digest = pushed_digest(&chroot.run(&["push", "/ctx", "-t", &target]), &target);
    assert_pulls_as(&registry, "ns/static:http", &context, &excluded, &tmp);

    // Names come from the chroot's /etc/hosts: localhost (loopback by name), and an alias only it knows.
    let target = format!("localhost:{port}/ns/static:localhost");
    assert_eq!(pushed_digest(&chroot.run(&["push", "/ctx", "-t", &target]), &target), digest);
    let target = format!("{ALIAS}:{port}/ns/static:alias");
    assert_eq!(pushed_digest(&chroot.run(&["push", "/ctx", "-t", &target, "--plain-http"]), &target), digest);
    chroot.assert_untouched();

    // The same context pushed by the cargo-built binary outside the chroot gives the same image.
    let target = registry.reference("ns/static:dev");
    let output = IdpbCommand::new().arg("push").arg(&context).args(["-t", &target, "--no-cache"]).run();
    assert_eq!(pushed_digest(&output, &target), digest, "the static and the dev build agree");
}

#[test]
fn static_binary_in_an_empty_chroot_pushes_over_https_with_ca_file() {
    require_tool("skopeo");
    require_tool("umoci");
    let registry = Registry::start(RegistryMode::Https);
    let port = registry.port();
    let ca = registry.ca().unwrap_or_else(|| panic!("an HTTPS registry has a CA"));
    let tmp = TempDir::new("static-https");
    let context = tmp.subdir("ctx");
    let excluded = make_rich_context(&context);
    let chroot = Chroot::new(&context, Some(ca));

    let verify = ["--ca-file", "/ca.crt", "--tls-verify", "true"];
    let target = registry.reference("ns/static:https");
    let digest = pushed_digest(&chroot.run(&[&["push", "/ctx", "-t", &target], &verify[..]].concat()), &target);
    assert_pulls_as(&registry, "ns/static:https", &context, &excluded, &tmp);

    // The certificate names localhost too; the name resolves through the chroot's /etc/hosts.
    let target = format!("localhost:{port}/ns/static:localhost");
    let output = chroot.run(&[&["push", "/ctx", "-t", &target], &verify[..]].concat());
    assert_eq!(pushed_digest(&output, &target), digest);

    // Verification is real: the embedded roots do not include the test CA.
    let target = registry.reference("ns/static:unverified");
    let output = chroot.run(&["push", "/ctx", "-t", &target, "--tls-verify", "true", "-q", "--retries", "0"]);
    output.assert_code(1);
    assert!(output.stdout.is_empty(), "{output}");
    assert!(output.stderr.starts_with("docker-idpb: ") && output.stderr.contains("--ca-file"), "{output}");
    assert!(!output.stderr.contains("panicked"), "{output}");
    assert_eq!(registry.count_requests("PUT", "/manifests/"), 2, "{:?}", registry.requests());
    chroot.assert_untouched();
}

/// `make image`: docker-idpb packs its own static binary as a scratch image (entrypoint, CA bundle),
/// checked with skopeo and umoci.
#[test]
fn make_image_packs_the_static_binary_as_a_scratch_image() {
    let binary = static_binary();
    require_tool("umoci");
    require_tool("skopeo");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // `-o static`: the binary is already built (and checked current above); only the image recipe runs.
    let out = run(Command::new("make").current_dir(root).args(["-o", "static", "image"]));
    out.assert_success();
    let layout = root.join("dist/image");
    let tag = env!("CARGO_PKG_VERSION");
    let config = skopeo_inspect_layout_config(&layout, tag);
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/docker-idpb"]), "{config}");
    let tmp = TempDir::new("make-image");
    let rootfs = umoci_unpack(&layout, tag, &tmp.join("unpacked"));
    let packed = fs::read(rootfs.join("docker-idpb")).expect("the binary is in the image");
    assert!(packed == fs::read(&binary).expect("read dist/docker-idpb"), "the image holds dist/docker-idpb as built");
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file(), "the CA bundle is in the image");
}
