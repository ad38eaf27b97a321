//! Delta upgrades over a real HTTP server and the real S3 server (moto): a
//! host running 1.0.0 takes 2.0.0 as a zstd patch against its binary
//! without requesting the full artifact; every way the patch can fail
//! (missing, wrong digest, corrupt frame, wrong result) falls back to the
//! full artifact in the same check and is never tried again; a patch for
//! another binary is never requested.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::release::{hello_bytes, sha256};
use crate::support::http::HttpServer;
use crate::support::s3::{S3Server, ENV};
use crate::support::{self, Baton, Load, LoadMode};
use crate::trial::seed_release;

const PATCH: &str = "hello-1.0.0-to-2.0.0.zst";

/// A patch from hello 1.0.0 to `new`, as `zstd --patch-from` makes one
/// (a low level keeps the tests quick; hosts accept any level).
fn make_patch(new: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let new_path = dir.path().join("new");
    std::fs::write(&new_path, new).unwrap();
    let mut out = Vec::new();
    baton::delta::make(&support::hello("1.0.0"), &new_path, 3, &mut out).unwrap();
    out
}

/// A manifest entry for a patch whose file is `bytes`.
fn entry(from: [u8; 32], url: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "from": hex::encode(from), "url": url,
        "sha256": hex::encode(sha256(bytes)), "size": bytes.len(),
    })
}

/// The 2.0.0 manifest, its full artifact at `hello-2.0.0`, with `patches`.
fn manifest(patches: serde_json::Value) -> Vec<u8> {
    let two = hello_bytes("2.0.0");
    serde_json::to_vec(&serde_json::json!({
        "version": "2.0.0", "url": "hello-2.0.0",
        "sha256": hex::encode(sha256(&two)), "size": two.len(),
        "patches": patches,
    }))
    .unwrap()
}

/// A digest no installed binary has.
const ELSEWHERE: [u8; 32] = [0x5a; 32];

fn config(fetch: &str) -> String {
    format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"500ms\"\n[fetch]\n{fetch}\ninterval = \"200ms\"\n"
    )
}

fn http_config(server: &HttpServer) -> String {
    config(&format!(
        "source = \"http\"\nurl = \"{}\"",
        server.url("/manifest.json")
    ))
}

/// The release record of `releases/<id>`.
fn meta(dir: &Path, id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("releases").join(id).join("release.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The id of the one 2.0.0 release installed in `dir`.
fn installed_two(dir: &Path) -> String {
    let mut ids: Vec<String> = std::fs::read_dir(dir.join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("2.0.0-"))
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids.remove(0)
}

fn assert_patched(meta: &serde_json::Value, patch: &[u8]) {
    let two = hello_bytes("2.0.0");
    assert_eq!(meta["patch"]["url"], PATCH, "{meta}");
    assert_eq!(meta["patch"]["size"], patch.len() as u64, "{meta}");
    assert_eq!(meta["binary_sha256"], hex::encode(sha256(&two)), "{meta}");
    assert_eq!(meta["sha256"], hex::encode(sha256(&two)), "{meta}");
}

/// Waits for 2.0.0 to be current and served, then checks that the load
/// saw no failure and that the server gave out the patch once and never
/// the full artifact; returns the release id.
fn upgraded_by_patch(baton: &Baton, load: Load, server: &HttpServer, patch: &str) -> String {
    let id = baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");
    load.wait_more(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(server.seen(&format!("/{patch}")), vec![200]);
    assert!(
        server.seen("/hello-2.0.0").is_empty(),
        "the full artifact was requested"
    );
    id
}

#[test]
fn http_delta_upgrade_under_load_fetches_only_the_patch() {
    let server = HttpServer::start(true);
    let (one, two) = (hello_bytes("1.0.0"), hello_bytes("2.0.0"));
    server.body(
        "/manifest.json",
        crate::release::manifest("1.0.0", "hello-1.0.0", Some(sha256(&one)), None),
    );
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let baton = Baton::start(dir, &http_config(&server));
    baton.wait_ready();
    let patch = make_patch(&two);
    server.body(&format!("/{PATCH}"), patch.clone());
    server.body("/other.zst", b"never asked for".to_vec());
    server.body("/hello-2.0.0", two.clone());
    let load = Load::start(baton.addr(), 16, LoadMode::KeepAlive);
    load.wait_more(100);
    server.body(
        "/manifest.json",
        manifest(serde_json::json!([
            entry(ELSEWHERE, "other.zst", b"never asked for"),
            entry(sha256(&one), PATCH, &patch),
        ])),
    );
    let id = upgraded_by_patch(&baton, load, &server, PATCH);
    assert!(
        server.seen("/other.zst").is_empty(),
        "a patch for another binary was requested"
    );
    assert_patched(&meta(baton.dir.path(), &id), &patch);
    assert!(baton.leftovers().is_empty(), "{:?}", baton.leftovers());
}

/// `baton check [--install]` in `dir`; its stdout and stderr, after it
/// succeeded.
fn check(dir: &Path, install: bool) -> (String, String) {
    let mut cmd = Command::new(support::baton_bin());
    cmd.arg("check").arg("--config").arg(dir.join("baton.toml"));
    if install {
        cmd.arg("--install");
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

#[test]
fn each_delta_failure_falls_back_to_the_full_artifact_and_is_not_retried() {
    let (one, two) = (hello_bytes("1.0.0"), hello_bytes("2.0.0"));
    let patch = make_patch(&two);
    let mut flipped = patch.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    let garbage = b"this is not a zstd frame at all".repeat(8);
    let mut other_build = two.clone();
    let end = other_build.len() - 1;
    other_build[end] ^= 0xff;
    let wrong_result = make_patch(&other_build);
    // (what, what the manifest states, what the server holds, the cause logged)
    let cases: [(&str, serde_json::Value, Option<Vec<u8>>, &str); 4] = [
        (
            "missing",
            entry(sha256(&one), PATCH, &patch),
            None,
            "answered 404",
        ),
        (
            "wrong digest",
            entry(sha256(&one), PATCH, &patch),
            Some(flipped),
            "the manifest states",
        ),
        (
            "corrupt frame",
            entry(sha256(&one), PATCH, &garbage),
            Some(garbage.clone()),
            "corrupt patch",
        ),
        (
            "wrong result",
            entry(sha256(&one), PATCH, &wrong_result),
            Some(wrong_result.clone()),
            "binary_sha256",
        ),
    ];
    for (what, stated, served, cause) in cases {
        let server = HttpServer::start(true);
        server.body("/manifest.json", manifest(serde_json::json!([stated])));
        server.body("/hello-2.0.0", two.clone());
        if let Some(bytes) = served {
            server.body(&format!("/{PATCH}"), bytes);
        }
        let dir = tempfile::tempdir().unwrap();
        seed_release(dir.path(), "1.0.0");
        std::fs::write(dir.path().join("baton.toml"), http_config(&server)).unwrap();
        let (stdout, stderr) = check(dir.path(), true);
        assert!(
            stdout.contains("installed 2.0.0-"),
            "{what}: {stdout}{stderr}"
        );
        assert!(
            stderr.contains(cause) && stderr.contains("downloading the full artifact"),
            "{what}: the log does not name the cause {cause:?}:\n{stderr}"
        );
        assert_eq!(server.seen("/hello-2.0.0"), vec![200], "{what}");
        let patch_requests = server.seen(&format!("/{PATCH}")).len();
        assert_eq!(patch_requests, 1, "{what}");
        let m = meta(dir.path(), &installed_two(dir.path()));
        assert!(m["patch"].is_null(), "{what}: {m}");
        assert_eq!(m["binary_sha256"], hex::encode(sha256(&two)), "{what}");
        // The same pair is never tried again: the next check goes
        // straight to the full artifact.
        let (_, stderr) = check(dir.path(), false);
        assert!(stderr.contains("failed against"), "{what}: {stderr}");
        assert_eq!(
            server.seen(&format!("/{PATCH}")).len(),
            patch_requests,
            "{what}: the failed patch was requested again"
        );
        assert_eq!(server.seen("/hello-2.0.0"), vec![200, 200], "{what}");
    }
}

#[test]
fn a_patch_for_another_binary_is_never_requested() {
    let two = hello_bytes("2.0.0");
    let server = HttpServer::start(true);
    server.body(
        "/manifest.json",
        manifest(serde_json::json!([entry(ELSEWHERE, PATCH, b"x")])),
    );
    server.body("/hello-2.0.0", two.clone());
    server.body(&format!("/{PATCH}"), b"x".to_vec());
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    std::fs::write(dir.path().join("baton.toml"), http_config(&server)).unwrap();
    let (stdout, stderr) = check(dir.path(), true);
    assert!(stdout.contains("installed 2.0.0-"), "{stdout}{stderr}");
    assert!(server.seen(&format!("/{PATCH}")).is_empty());
    assert_eq!(server.seen("/hello-2.0.0"), vec![200]);
    assert!(!dir.path().join("releases/.failed-patches").exists());
}

fn s3_host(s3: &S3Server) -> Baton {
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let baton = Baton::start_with_env(
        dir,
        &config(&format!(
            "source = \"s3\"\nbucket = \"releases\"\nkey = \"hello/manifest.json\"\nregion = \"us-east-1\"\n\
             endpoint_url = \"{}\"\nforce_path_style = true\ntimeout = \"30s\"",
            s3.endpoint()
        )),
        ENV,
    );
    baton.wait_ready();
    baton
}

#[test]
fn s3_delta_upgrade_under_load_needs_no_full_artifact() {
    let (one, two) = (hello_bytes("1.0.0"), hello_bytes("2.0.0"));
    let s3 = S3Server::start(None);
    s3.bucket("releases");
    let baton = s3_host(&s3);
    let patch = make_patch(&two);
    // No full artifact in the bucket at all: only the patch can upgrade.
    s3.put("releases", &format!("hello/{PATCH}"), patch.clone(), &[]);
    let load = Load::start(baton.addr(), 16, LoadMode::NewConnection);
    load.wait_more(50);
    s3.put(
        "releases",
        "hello/manifest.json",
        manifest(serde_json::json!([entry(sha256(&one), PATCH, &patch)])),
        &[],
    );
    let id = baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");
    load.wait_more(50);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_patched(&meta(baton.dir.path(), &id), &patch);
}

#[test]
fn s3_missing_patch_falls_back_to_the_full_artifact() {
    let one = hello_bytes("1.0.0");
    let s3 = S3Server::start(None);
    s3.bucket("releases");
    let baton = s3_host(&s3);
    s3.put("releases", "hello/hello-2.0.0", hello_bytes("2.0.0"), &[]);
    s3.put(
        "releases",
        "hello/manifest.json",
        manifest(serde_json::json!([entry(sha256(&one), PATCH, b"gone")])),
        &[],
    );
    let id = baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");
    let m = meta(baton.dir.path(), &id);
    assert!(m["patch"].is_null(), "{m}");
    let failed = std::fs::read_to_string(baton.dir.path().join("releases/.failed-patches"))
        .unwrap_or_default();
    assert_eq!(failed.lines().count(), 1, "{failed}");
}

#[test]
fn a_published_patch_upgrades_a_signed_fleet_host_under_load() {
    let p = crate::fleet::Publisher::new();
    let key = p.keygen("release");
    let sign = p.key("release");
    p.publish(&["--version", "1.0.0", "--sign", &sign, &p.artifact("1.0.0")]);
    let server = HttpServer::start(true);
    crate::fleet::serve(&server, &p.out());
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let baton = Baton::start(
        dir,
        &format!(
            "{}[verify]\nminisign_key = \"{key}\"\n",
            http_config(&server)
        ),
    );
    baton.wait_ready();
    // The publisher makes the patch from 1.0.0, the release it published
    // last to the same directory.
    p.publish(&["--version", "2.0.0", "--sign", &sign, &p.artifact("2.0.0")]);
    let published: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.out().join("manifest.json")).unwrap()).unwrap();
    let patch = published["patches"][0]["url"].as_str().unwrap().to_owned();
    let load = Load::start(baton.addr(), 16, LoadMode::KeepAlive);
    load.wait_more(100);
    crate::fleet::serve(&server, &p.out());
    let id = upgraded_by_patch(&baton, load, &server, &patch);
    let m = meta(baton.dir.path(), &id);
    assert_eq!(m["patch"]["url"], patch.as_str(), "{m}");
}

#[test]
fn github_delta_upgrade_downloads_the_patch_asset_only() {
    use crate::support::github::FakeGithub;
    let (one, two) = (hello_bytes("1.0.0"), hello_bytes("2.0.0"));
    let patch = make_patch(&two);
    let gh = FakeGithub::start(Some(crate::github::TOKEN));
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let baton = Baton::start(
        dir,
        &crate::github::config(&gh, "acme/hello", crate::github::TOKEN, ""),
    );
    baton.wait_ready();
    gh.release(
        "v2.0.0",
        false,
        false,
        &[
            ("hello-2.0.0", two.clone(), false),
            (PATCH, patch.clone(), false),
            ("other.zst", b"never asked for".to_vec(), false),
            (
                "manifest.json",
                manifest(serde_json::json!([
                    entry(ELSEWHERE, "other.zst", b"never asked for"),
                    entry(sha256(&one), PATCH, &patch),
                ])),
                false,
            ),
        ],
    );
    let id = baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");
    // The manifest and the patch: nothing else was downloaded.
    assert_eq!(gh.downloads(), 2);
    assert_patched(&meta(baton.dir.path(), &id), &patch);
}
