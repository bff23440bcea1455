//! Checks the shared test fixtures themselves (`tests/support/`), so a failing integration test points at
//! docker-idpb rather than at a registry that never really started or a listing that sees nothing.

mod support;

use support::*;

#[test]
fn http_registry_answers_v2() {
    let registry = Registry::start(RegistryMode::Http);
    assert!(registry.ca().is_none());
    let response = http_get(&registry.url("/v2/"));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("docker-distribution-api-version"), Some("registry/2.0"));
    assert!(registry.count_requests("GET", "/v2/") >= 2, "the probe and ours: {:?}", registry.requests());
}

#[test]
fn https_registry_answers_v2_with_the_test_ca() {
    let registry = Registry::start(RegistryMode::Https);
    let ca = registry.ca().expect("an https registry has a CA");
    let response = curl_get(&registry.url("/v2/"), Some(ca));
    assert_eq!(response.status, 200, "{}", response.text());
    let localhost = curl_get(&format!("https://localhost:{}/v2/", registry.port()), Some(ca));
    assert_eq!(localhost.status, 200, "the certificate names localhost too");
}

#[test]
fn basic_registry_requires_its_credentials() {
    let registry = Registry::start(RegistryMode::basic("alice", "s3cret pass"));
    let anonymous = registry.request("GET", "/v2/", &[], None);
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").is_some_and(|h| h.starts_with("Basic ")), "{anonymous:?}");

    let auth = registry.auth_header(None).expect("basic mode has credentials");
    assert_eq!(registry.request("GET", "/v2/", &[("Authorization", &auth)], None).status, 200);
    let wrong = basic_auth("alice", "wrong");
    assert_eq!(registry.request("GET", "/v2/", &[("Authorization", &wrong)], None).status, 401);
    assert_eq!(registry.creds(), Some(("alice".to_string(), "s3cret pass".to_string())));
}

#[test]
fn token_registry_accepts_tokens_from_its_token_server() {
    let registry = Registry::start(RegistryMode::token("bob", "hunter2"));
    let challenge = registry.request("GET", "/v2/", &[], None);
    assert_eq!(challenge.status, 401);
    let realm = registry.token_realm().expect("token mode has a realm");
    let expected = format!("Bearer realm=\"{realm}\",service=\"{TOKEN_SERVICE}\"");
    assert_eq!(challenge.header("www-authenticate"), Some(expected.as_str()));

    let scope = "repository:ns/app:pull,push";
    let granted = registry.fetch_token(Some(scope), Some(("bob", "hunter2")));
    assert_eq!(granted.status, 200, "{}", granted.text());
    let body = granted.json();
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    let bearer = format!("Bearer {}", body["token"].as_str().expect("a token string"));
    let authorized = [("Authorization", bearer.as_str())];
    assert_eq!(registry.request("GET", "/v2/", &authorized, None).status, 200);
    let tags = registry.request("GET", "/v2/ns/app/tags/list", &authorized, None);
    assert_eq!(tags.status, 404, "the scope is granted, the repository just does not exist: {}", tags.text());

    assert_eq!(registry.fetch_token(Some(scope), Some(("bob", "wrong"))).status, 401);
    let anonymous = registry.fetch_token(Some(scope), None);
    assert_eq!(anonymous.status, 200, "anonymous requests get a token with no access");
    let anonymous_bearer = format!("Bearer {}", anonymous.json()["token"].as_str().expect("a token string"));
    let denied = registry.request("GET", "/v2/ns/app/tags/list", &[("Authorization", &anonymous_bearer)], None);
    assert_eq!(denied.status, 401);
    assert!(denied.header("www-authenticate").is_some_and(|h| h.contains("insufficient_scope")), "{denied:?}");
    assert!(registry.token_log().is_some_and(|log| log.contains("granted sub='bob'")));
}

#[test]
fn rich_context_has_every_edge_case() {
    let dir = TempDir::new("selftest-context");
    let excluded = make_rich_context(dir.path());
    assert_eq!(excluded, ["app.log", "build/out.o", "build/sub", "build/sub/deep.o"]);
    let listing = tree_listing(dir.path());
    for path in &excluded {
        assert!(listing.contains_key(path), "{path} exists, for .dockerignore to exclude it");
    }

    let entry = |path: &str| listing.get(path).unwrap_or_else(|| panic!("{path} missing from {listing:#?}"));
    assert_eq!(entry("src/lib/readme-link").link_target.as_deref(), Some("../../README.md"));
    assert_eq!(entry("dangling-link").kind, EntryKind::Symlink);
    assert_eq!(entry("bin/run.sh").mode, 0o755);
    assert_eq!(entry("private").mode, 0o700);
    assert_eq!(entry("private/read-only.txt").mode, 0o444);
    assert_eq!(entry("empty-dir").kind, EntryKind::Dir);
    assert_eq!(entry("data/random.bin").size, RANDOM_FILE_SIZE as u64);
    assert_eq!(entry("hard/linked.txt").hardlink_group.as_deref(), Some("hard/linked.txt"));
    assert_eq!(entry("hard/original.txt").hardlink_group.as_deref(), Some("hard/linked.txt"));
    assert!(listing.keys().any(|p| p.len() > 255), "a path past the ustar limits");
    assert!(entry("long-link").link_target.as_ref().is_some_and(|t| t.len() > 100));
    assert!(listing.contains_key("names/with space ünïcödé ✓.txt"));
    assert!(!listing.values().any(|e| e.kind == EntryKind::Other));

    let again = TempDir::new("selftest-context");
    make_rich_context(again.path());
    assert_same_tree(dir.path(), again.path(), &[]);
    std::fs::write(again.join("README.md"), "changed\n").expect("writable");
    let diffs = diff_listings(&listing, &tree_listing(again.path()));
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(diffs[0].contains("README.md"));
    assert_same_tree(dir.path(), again.path(), &["README.md"]);
}

#[test]
fn idpb_command_isolates_the_environment() {
    let mut cmd = IdpbCommand::for_program("env");
    let output = cmd.env("IDPB_SELFTEST", "kept").run();
    output.assert_success();
    let vars: Vec<&str> = output.stdout.lines().collect();
    assert!(vars.contains(&format!("HOME={}", cmd.home().display()).as_str()), "{output}");
    assert!(vars.contains(&format!("DOCKER_CONFIG={}", cmd.docker_config().display()).as_str()));
    assert!(vars.contains(&format!("IDPB_HOME={}", cmd.idpb_home().display()).as_str()));
    assert!(vars.contains(&"IDPB_SELFTEST=kept"), "explicit variables win");
    assert!(!vars.iter().any(|v| v.starts_with("SSL_CERT_FILE=")));
    assert!(bin().is_file(), "cargo built {}", bin().display());
}

/// Builds an image with umoci from the rich context, pushes it with skopeo, pulls it back and compares.
fn peer_round_trip(mode: RegistryMode) {
    let registry = Registry::start(mode);
    let work = TempDir::new("selftest-peers");
    let context = work.subdir("context");
    make_rich_context(&context);
    let layout = work.join("layout");
    umoci_build_layout(&context, &layout, "v1");
    skopeo_push_oci(&layout, "v1", &registry, "ns/rich:v1");

    let manifest = skopeo_inspect_raw(&registry, "ns/rich:v1");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1), "{manifest}");
    let config = skopeo_inspect_config(&registry, "ns/rich:v1");
    assert_eq!(config["rootfs"]["type"], "layers", "{config}");
    assert_eq!(skopeo_inspect_layout_config(&layout, "v1"), config);
    assert!(registry.count_requests("PUT", "/manifests/v1") >= 1, "{}", registry.log());

    let pulled = work.join("pulled");
    skopeo_copy_to_oci(&registry, "ns/rich:v1", &pulled, "v1");
    let rootfs = umoci_unpack(&pulled, "v1", &work.join("unpacked"));
    assert_same_tree(&context, &rootfs, &[]);
}

#[test]
fn peers_round_trip_over_http() {
    peer_round_trip(RegistryMode::Http);
}

#[test]
fn peers_round_trip_over_https() {
    peer_round_trip(RegistryMode::Https);
}

#[test]
fn peers_round_trip_with_basic_auth() {
    peer_round_trip(RegistryMode::basic("carol", "pw"));
}

#[test]
fn peers_round_trip_with_token_auth() {
    peer_round_trip(RegistryMode::token("dave", "pw"));
}
