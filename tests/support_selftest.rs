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

// ---------------------------------------------------------------------------------------------------------
// The hostile registry (`hostile.py`): each scenario does what `tests/hostile.rs` relies on, for any client.

/// Sends `raw` on a fresh connection to `port` and reads until the peer closes or `within` has passed.
fn raw_exchange(port: u16, raw: &str, within: std::time::Duration) -> String {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + within;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the server listens");
    stream.write_all(raw.as_bytes()).expect("the request is sent");
    let mut answer = Vec::new();
    let mut buf = [0; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The baseline: a Basic challenge, credentials checked, manifests stored under their digest, and every
/// request recorded with its headers and body.
#[test]
fn hostile_registry_checks_basic_auth_and_records_requests() {
    let options = HostileOptions { auth: HostileAuth::basic("eve", "pw"), ..Default::default() };
    let server = HostileServer::start_with(Scenario::Registry, &options);
    let anonymous = http_get(&server.url("/v2/"));
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some(r#"Basic realm="x""#));
    let auth = basic_auth("eve", "pw");
    let headers = [("Authorization", auth.as_str())];
    assert_eq!(http_request("GET", &server.url("/v2/"), &headers, None).status, 200);
    let wrong = basic_auth("eve", "nope");
    assert_eq!(http_request("GET", &server.url("/v2/"), &[("Authorization", &wrong)], None).status, 401);

    let body = br#"{"schemaVersion":2}"#;
    let put = http_request("PUT", &server.url("/v2/ns/app/manifests/1"), &headers, Some(body));
    assert_eq!(put.status, 201);
    assert_eq!(put.header("docker-content-digest"), Some(sha256_digest(body).as_str()));
    assert_eq!(http_request("GET", &server.url("/v2/ns/app/manifests/1"), &headers, None).body, body);

    let requests = server.requests();
    let methods: Vec<&str> = requests.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["GET", "GET", "GET", "PUT", "GET"], "{requests:#?}");
    assert_eq!(requests[0].authorization(), None);
    assert_eq!(requests[1].authorization(), Some(auth.as_str()));
    assert_eq!(requests[3].body.as_bytes(), body);
    assert!(requests.iter().all(|r| !r.tls && r.tunnel.is_empty()), "{requests:#?}");
}

/// With TLS the port speaks HTTPS and plain HTTP at once, upload `Location`s downgrade to `http://` on the
/// same port, and the log tells the two apart.
#[test]
fn hostile_tls_port_also_hears_plain_http() {
    let ca = TestCa::new();
    let options = HostileOptions { tls: Some(&ca), ..Default::default() };
    let server = HostileServer::start_with(Scenario::PlainHttpLocation, &options);
    let url = server.url("/v2/ns/app/blobs/uploads/");
    let post = curl_request(Request::new("POST", &url).ca(Some(&ca.ca_crt)));
    assert_eq!(post.status, 202, "{post:?}");
    let location = post.header("location").expect("a Location").to_string();
    let downgraded = format!("http://{}/v2/ns/app/blobs/uploads/", server.host());
    assert!(location.starts_with(&downgraded), "{location}");
    assert_eq!(http_request("PATCH", &location, &[], Some(b"data")).status, 202);
    let tls: Vec<bool> = server.requests().iter().map(|r| r.tls).collect();
    assert_eq!(tls, [true, false]);
}

/// Redirects name the other origin with the same path, and the canned image there is consistent.
#[test]
fn hostile_redirects_lead_to_a_consistent_image() {
    let other = HostileServer::start(Scenario::Registry);
    let server = HostileServer::start(Scenario::RedirectManifests { to: other.port() });
    let redirect = http_get(&server.url("/v2/ns/app/manifests/1"));
    assert_eq!(redirect.status, 307);
    let location = redirect.header("location").expect("a Location").to_string();
    assert_eq!(location, other.url("/v2/ns/app/manifests/1"));
    let manifest = http_get(&location);
    assert_eq!(manifest.status, 200);
    assert_eq!(manifest.header("docker-content-digest"), Some(sha256_digest(&manifest.body).as_str()));
    let config_digest = manifest.json()["config"]["digest"].as_str().expect("a config digest").to_string();
    let config = http_get(&other.url(&format!("/v2/ns/app/blobs/{config_digest}")));
    assert_eq!(sha256_digest(&config.body), config_digest);

    let heads = HostileServer::start(Scenario::RedirectBlobHeads { to: other.port() });
    let head = http_request("HEAD", &heads.url(&format!("/v2/ns/app/blobs/{config_digest}")), &[], None);
    assert_eq!(head.status, 307);
}

/// The scenarios that send too much send what they promise.
#[test]
fn hostile_oversized_answers_are_what_they_claim() {
    let big = HostileServer::start(Scenario::BigManifest);
    let manifest = http_get(&big.url("/v2/ns/big/manifests/1"));
    assert_eq!(manifest.body.len(), 15 * 1024 * 1024);
    assert!(manifest.body.starts_with(b"{\"schemaVersion\": 2") && manifest.body.ends_with(b"{}]}"));
    assert_eq!(manifest.header("content-type"), Some("application/vnd.oci.image.manifest.v1+json"));

    let lists = HostileServer::start(Scenario::HugeLists);
    let first = http_get(&lists.url("/v2/_catalog?n=100"));
    assert!((3_900_000..4_400_000).contains(&first.body.len()), "{} bytes", first.body.len());
    let names = strings(&first.json()["repositories"]);
    assert_eq!(names.first().map(String::as_str), Some("p00/platform-team/backend-service-name-000000"));
    let link = first.header("link").expect("a Link to page 2").to_string();
    let next = link.strip_prefix('<').and_then(|l| l.split_once('>')).expect("<URL>; rel=\"next\"").0;
    assert!(link.ends_with(r#"rel="next""#), "{link}");
    assert!(next.contains(&format!("last={}", names.last().expect("names"))), "{link}");
    let last = http_get(&lists.url("/v2/_catalog?last=p30/platform-team/backend-service-name-086999&n=100"));
    assert!(last.header("link").is_none(), "page 32 is the last");
    let tags = strings(&last.json()["repositories"]);
    assert_eq!(tags.last().map(String::as_str), Some("p31/platform-team/backend-service-name-086999"));
    let tag_page = http_get(&lists.url("/v2/ns/app/tags/list?n=100"));
    assert_eq!(tag_page.json()["name"], "ns/app");

    let flaky = HostileServer::start(Scenario::FlakyPing { failures: 2 });
    let statuses: Vec<u16> = (0..3).map(|_| http_get(&flaky.url("/v2/")).status).collect();
    assert_eq!(statuses, [503, 503, 200]);
}

/// Trickling answers send their headers and then about a byte a second; silent ones send nothing; a bad
/// `Location` comes back verbatim.
#[test]
fn hostile_slow_and_broken_answers_are_what_they_claim() {
    let second = std::time::Duration::from_millis(1500);
    let trickle = HostileServer::start(Scenario::TricklePing);
    let answer = raw_exchange(trickle.port(), "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", second);
    assert!(answer.starts_with("HTTP/1.1 200 ") && answer.contains("Content-Length: 1048576"), "{answer:?}");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!((1..=3).contains(&body.len()), "a byte or two in 1.5 s: {body:?}");

    let manifest = HostileServer::start(Scenario::TrickleManifest);
    assert_eq!(http_get(&manifest.url("/v2/")).status, 200);
    let answer = raw_exchange(manifest.port(), "GET /v2/ns/app/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n", second);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");

    let silent = HostileServer::start(Scenario::Silent);
    assert_eq!(raw_exchange(silent.port(), "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", second), "");
    assert_eq!(silent.count("GET", "/v2/"), 1);

    let bad = HostileServer::start(Scenario::BadLocation("http://[::1".to_string()));
    let post = http_request("POST", &bad.url("/v2/ns/app/blobs/uploads/"), &[], None);
    assert_eq!((post.status, post.header("location")), (202, Some("http://[::1")));
}

/// The proxy recorder answers absolute-URI requests with 502, opens CONNECT tunnels and records the
/// plain-HTTP request inside one with its headers and the tunnel it came through.
#[test]
fn hostile_proxy_records_tunneled_requests() {
    let proxy = HostileServer::start(Scenario::Proxy);
    let timeout = std::time::Duration::from_secs(10);
    let direct =
        raw_exchange(proxy.port(), "GET http://tokens.example/token HTTP/1.1\r\nHost: tokens.example\r\n\r\n", timeout);
    assert!(direct.starts_with("HTTP/1.1 502 "), "{direct:?}");
    let tunneled = raw_exchange(
        proxy.port(),
        "CONNECT tokens.example:80 HTTP/1.1\r\nHost: tokens.example:80\r\n\r\n\
         GET /token?scope=x HTTP/1.1\r\nHost: tokens.example\r\nAuthorization: Basic eA==\r\n\r\n",
        timeout,
    );
    assert!(tunneled.starts_with("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 502 "), "{tunneled:?}");

    let requests = proxy.requests();
    let seen: Vec<(&str, &str, &str)> =
        requests.iter().map(|r| (r.method.as_str(), r.path.as_str(), r.tunnel.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("GET", "http://tokens.example/token", ""),
            ("CONNECT", "tokens.example:80", ""),
            ("GET", "/token?scope=x", "tokens.example:80"),
        ]
    );
    assert_eq!(requests[2].authorization(), Some("Basic eA=="));
}

#[test]
fn replay_applies_carriage_returns_erasures_and_cursor_moves() {
    // A line redrawn in place, then ended.
    assert_eq!(replay("layer: 10%\r\x1b[2Klayer: 50%\r\x1b[2Klayer: Pushed\r\n"), ["layer: Pushed"]);
    // Erase to the end of the line keeps what is before the cursor.
    assert_eq!(replay("abcdef\r\x1b[3C\rab\x1b[K\n"), ["ab"]);
    // Cursor up rewrites an earlier line; the later one stays.
    assert_eq!(replay("one\r\ntwo\r\n\x1b[2A\r\x1b[2Kuno\r\n\x1b[1B"), ["uno", "two"]);
    // A line left unended is continued by whatever comes next.
    assert_eq!(replay("\r\x1b[2Klayer: 1 MB\x1b[0Kdocker-idpb: cancelled\r\n"), ["layer: 1 MBdocker-idpb: cancelled"]);
    // Erase below.
    assert_eq!(replay("a\r\nb\r\nc\x1b[2A\r\x1b[J"), Vec::<String>::new());
}

#[test]
fn a_terminal_run_sees_a_tty_and_passes_the_exit_code_on() {
    let mut cmd = IdpbCommand::for_program("/bin/sh");
    cmd.args(["-c", "test -t 1 && test -t 2 && printf 'tty\\n' && exit 3"]);
    let output = Terminal::run(&mut cmd);
    assert_eq!(output.code, Some(3), "{output}");
    assert_eq!(replay(&output.stdout), ["tty"], "{output}");
}
