//! The release pipeline end to end: file drop and HTTP publish upgrade a
//! running service; every bad input is refused with a clear error while the
//! old worker keeps serving; crashes leave `current` on a complete release.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::http::{HttpServer, Reply};
use crate::support::{self, Baton, Load, LoadMode};

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(crate) fn hello_bytes(version: &str) -> Vec<u8> {
    std::fs::read(support::hello(version)).unwrap()
}

pub(crate) fn manifest(
    version: &str,
    url: &str,
    sha: Option<[u8; 32]>,
    signature: Option<&str>,
) -> Vec<u8> {
    let mut m = serde_json::json!({ "version": version, "url": url });
    if let Some(sha) = sha {
        m["sha256"] = hex::encode(sha).into();
    }
    if let Some(sig) = signature {
        m["signature"] = sig.into();
    }
    serde_json::to_vec(&m).unwrap()
}

/// Serves `bytes` as `version` at `/<name>` and points the manifest at it.
pub(crate) fn publish(server: &HttpServer, version: &str, name: &str, bytes: Vec<u8>) {
    let sha = sha256(&bytes);
    server.body(&format!("/{name}"), bytes);
    server.body("/manifest.json", manifest(version, name, Some(sha), None));
}

fn release_config(fetch: &str, verify: &str) -> String {
    format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n\
         [releases]\nbinary = \"hello\"\nsettle = \"500ms\"\n[fetch]\n{fetch}\n[verify]\n{verify}\n"
    )
}

/// A master fed by an HTTP manifest, serving 1.0.0 (its first install).
fn http_baton(validators: bool, fetch_extra: &str, verify: &str) -> (HttpServer, Baton) {
    let server = HttpServer::start(validators);
    publish(&server, "1.0.0", "hello-1.0.0", hello_bytes("1.0.0"));
    let fetch = format!(
        "source = \"http\"\nurl = \"{}\"\ninterval = \"200ms\"\n{fetch_extra}",
        server.url("/manifest.json")
    );
    let baton = Baton::start(
        tempfile::tempdir().unwrap(),
        &release_config(&fetch, verify),
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    baton.wait_current("1.0.0-");
    (server, baton)
}

#[test]
fn file_drop_upgrades_under_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("dist")).unwrap();
    let drop_in = |version: &str| {
        std::fs::copy(support::hello(version), dir.path().join("dist/.hello")).unwrap();
        std::fs::rename(
            dir.path().join("dist/.hello"),
            dir.path().join("dist/hello"),
        )
        .unwrap();
    };
    drop_in("1.0.0");
    let config = release_config(
        "source = \"file\"\npath = \"dist/hello\"\ninterval = \"1s\"",
        "",
    );
    let dir_path = dir.path().to_owned();
    let baton = Baton::start(dir, &config);
    baton.wait_ready();
    let load = Load::start(baton.addr(), 64, LoadMode::KeepAlive);
    load.wait_more(300);
    std::fs::copy(support::hello("2.0.0"), dir_path.join("dist/.hello")).unwrap();
    std::fs::rename(dir_path.join("dist/.hello"), dir_path.join("dist/hello")).unwrap();
    support::wait_version(baton.addr(), "2.0.0");
    load.wait_more(300);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    baton.wait_current("2.0.0-");
    let releases = baton.dir.path().join("releases");
    let previous = std::fs::read_link(releases.join("previous")).unwrap();
    assert!(previous.to_string_lossy().starts_with("1.0.0-"));
    assert!(
        releases.join(&previous).join("hello").exists(),
        "the old release stays for rollback"
    );
    assert!(baton.leftovers().is_empty(), "{:?}", baton.leftovers());
}

#[test]
fn http_publish_upgrades_under_load() {
    let (server, baton) = http_baton(true, "", "");
    let load = Load::start(baton.addr(), 64, LoadMode::KeepAlive);
    load.wait_more(300);
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    support::wait_version(baton.addr(), "2.0.0");
    load.wait_more(300);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    baton.wait_current("2.0.0-");
    assert!(baton.log().contains("new candidate from http"));
}

/// Publishes a bad 2.0.0 (set up by `publish_bad`) while 1.0.0 serves under
/// load; asserts the error text, `current` unchanged, zero failed requests,
/// nothing left behind.
fn refused(
    validators: bool,
    fetch_extra: &str,
    verify: &str,
    expect: &[&str],
    publish_bad: impl FnOnce(&HttpServer),
) -> Baton {
    let (server, baton) = http_baton(validators, fetch_extra, verify);
    let before = baton.current().unwrap();
    let load = Load::start(baton.addr(), 8, LoadMode::KeepAlive);
    load.wait_more(100);
    publish_bad(&server);
    baton.wait_count(expect[0], 1, Duration::from_secs(30));
    load.wait_more(100);
    let report = load.finish();
    let log = baton.log();
    for text in expect {
        assert!(log.contains(text), "log lacks {text:?}:\n{log}");
    }
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.versions.keys().collect::<Vec<_>>(), ["hello 1.0.0"]);
    assert_eq!(baton.current().unwrap(), before, "current moved");
    assert_eq!(support::version(baton.addr()), "1.0.0");
    // A retry's download may be under way: what one left must go.
    let clean = support::wait_for_quietly(Duration::from_secs(20), || baton.leftovers().is_empty());
    assert!(clean, "left behind: {:?}", baton.leftovers());
    assert_eq!(
        baton.count("started worker"),
        1,
        "a bad candidate reached a worker"
    );
    drop(server);
    baton
}

#[test]
fn sha256_mismatch_is_refused() {
    refused(
        true,
        "",
        "",
        &["sha256 mismatch: the source expects 0000"],
        |s| {
            s.body("/hello-2.0.0", hello_bytes("2.0.0"));
            s.body(
                "/manifest.json",
                manifest("2.0.0", "hello-2.0.0", Some([0; 32]), None),
            );
        },
    );
}

pub(crate) fn keypair() -> minisign::KeyPair {
    minisign::KeyPair::generate_unencrypted_keypair().unwrap()
}

pub(crate) fn sign(kp: &minisign::KeyPair, bytes: &[u8]) -> String {
    minisign::sign(
        Some(&kp.pk),
        &kp.sk,
        std::io::Cursor::new(bytes),
        Some("baton test"),
        None,
    )
    .unwrap()
    .into_string()
}

/// A master whose key is `trusted`; 1.0.0 is published signed by it.
fn signed_refusal(expect: &str, signature_for_2: impl FnOnce(&[u8]) -> Option<String>) {
    let trusted = keypair();
    let key = trusted.pk.to_base64();
    let server = HttpServer::start(true);
    let one = hello_bytes("1.0.0");
    let sig = sign(&trusted, &one);
    server.body("/hello-1.0.0", one.clone());
    server.body(
        "/manifest.json",
        manifest("1.0.0", "hello-1.0.0", Some(sha256(&one)), Some(&sig)),
    );
    let fetch = format!(
        "source = \"http\"\nurl = \"{}\"\ninterval = \"200ms\"",
        server.url("/manifest.json")
    );
    let baton = Baton::start(
        tempfile::tempdir().unwrap(),
        &release_config(&fetch, &format!("minisign_key = \"{key}\"")),
    );
    baton.wait_ready();
    assert_eq!(
        support::version(baton.addr()),
        "1.0.0",
        "a good signature is accepted"
    );
    baton.wait_current("1.0.0-");
    let two = hello_bytes("2.0.0");
    let sig2 = signature_for_2(&two);
    server.body("/hello-2.0.0", two.clone());
    server.body(
        "/manifest.json",
        manifest("2.0.0", "hello-2.0.0", Some(sha256(&two)), sig2.as_deref()),
    );
    baton.wait_count(expect, 1, Duration::from_secs(20));
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
    assert_eq!(support::version(baton.addr()), "1.0.0");
    assert!(baton.leftovers().is_empty());
}

#[test]
fn bad_signature_is_refused() {
    let other = keypair();
    signed_refusal("bad minisign signature", |bytes| Some(sign(&other, bytes)));
}

#[test]
fn missing_signature_is_refused_when_a_key_is_set() {
    signed_refusal(
        "no minisign signature, and verify.minisign_key makes one mandatory",
        |_| None,
    );
}

/// With a key set, an old, validly signed build offered again must not
/// bring a host back: under a label that is not semver, under a higher
/// label, and with no label at all.
fn signed_replay(label: Option<&str>, expect: &str) {
    let trusted = keypair();
    let key = trusted.pk.to_base64();
    let server = HttpServer::start(true);
    let signed = |version: Option<&str>, name: &str, bytes: Vec<u8>| {
        let sig = sign(&trusted, &bytes);
        let mut m = serde_json::json!({ "url": name, "sha256": hex::encode(sha256(&bytes)), "signature": sig });
        if let Some(v) = version {
            m["version"] = v.into();
        }
        server.body(&format!("/{name}"), bytes);
        server.body("/manifest.json", serde_json::to_vec(&m).unwrap());
    };
    signed(Some("1.0.0"), "hello-1.0.0", hello_bytes("1.0.0"));
    let fetch = format!(
        "source = \"http\"\nurl = \"{}\"\ninterval = \"200ms\"",
        server.url("/manifest.json")
    );
    let baton = Baton::start(
        tempfile::tempdir().unwrap(),
        &release_config(&fetch, &format!("minisign_key = \"{key}\"")),
    );
    baton.wait_ready();
    baton.wait_current("1.0.0-");
    signed(Some("2.0.0"), "hello-2.0.0", hello_bytes("2.0.0"));
    let two = baton.wait_current("2.0.0-");
    // The old build, signed by the same key, offered again.
    signed(label, "hello-old", hello_bytes("1.0.0"));
    baton.wait_count(expect, 1, Duration::from_secs(20));
    assert_eq!(baton.current(), Some(two));
    assert_eq!(support::version(baton.addr()), "2.0.0");
    assert!(baton.leftovers().is_empty(), "{:?}", baton.leftovers());
}

#[test]
fn signed_old_build_under_a_non_semver_label_is_refused() {
    signed_replay(
        Some("1.0"),
        "the source states version \"1.0\", which is not semver",
    );
}

#[test]
fn signed_old_build_under_a_higher_label_is_refused() {
    signed_replay(
        Some("3.0.0"),
        "the source states version 3.0.0, but the probe printed \"1.0.0\"",
    );
}

#[test]
fn signed_old_build_without_a_label_is_refused() {
    signed_replay(None, "refusing downgrade from 2.0.0 to 1.0.0");
}

#[test]
fn truncated_body_is_refused() {
    refused(
        true,
        "",
        "",
        &[
            "download from http http://127.0.0.1",
            "/hello-2.0.0 (hello-2.0.0) failed: error decoding response body",
        ],
        |s| {
            let two = hello_bytes("2.0.0");
            let sha = sha256(&two);
            s.set("/hello-2.0.0", Reply::Truncate(Arc::new(two), 100_000));
            s.body(
                "/manifest.json",
                manifest("2.0.0", "hello-2.0.0", Some(sha), None),
            );
        },
    );
}

#[test]
fn server_error_on_the_manifest_is_reported() {
    refused(
        true,
        "",
        "",
        &["GET http://127.0.0.1", "/manifest.json answered 500"],
        |s| {
            s.set("/manifest.json", Reply::Status(500));
        },
    );
}

#[test]
fn missing_artifact_is_reported() {
    refused(true, "", "", &["/hello-9.9.9 answered 404"], |s| {
        s.body(
            "/manifest.json",
            manifest("9.9.9", "hello-9.9.9", None, None),
        );
    });
}

#[test]
fn stalled_download_times_out() {
    refused(
        true,
        "timeout = \"1s\"",
        "",
        &[
            "(hello-2.0.0) failed: error decoding response body",
            "timed out",
        ],
        |s| {
            let two = hello_bytes("2.0.0");
            let sha = sha256(&two);
            s.set("/hello-2.0.0", Reply::Stall(Arc::new(two), 50_000));
            s.body(
                "/manifest.json",
                manifest("2.0.0", "hello-2.0.0", Some(sha), None),
            );
        },
    );
}

#[test]
fn a_dripped_manifest_fails_at_the_overall_timeout() {
    // A byte every 300 ms: no single read waits the 2 s `fetch.timeout`,
    // but the whole manifest would take minutes.
    refused(
        true,
        "timeout = \"2s\"",
        "",
        &["/manifest.json failed: the manifest was not read whole within 2s"],
        |s| {
            let body = manifest("2.0.0", "hello-2.0.0", None, None);
            s.set(
                "/manifest.json",
                Reply::Drip(Arc::new(body), Duration::from_millis(300)),
            );
        },
    );
}

#[test]
fn an_absurd_rollout_schedule_is_refused_without_a_panic() {
    // 500 000 000 000 years once overflowed the clock and panicked.
    refused(
        true,
        "host_id = \"web-1\"",
        "",
        &["longer than the 3650 days"],
        |s| {
            let two = hello_bytes("2.0.0");
            let sha = sha256(&two);
            s.body("/hello-2.0.0", two);
            let mut m: serde_json::Value =
                serde_json::from_slice(&manifest("2.0.0", "hello-2.0.0", Some(sha), None)).unwrap();
            m["published_at"] = "2026-01-01T00:00:00Z".into();
            m["rollout"] = serde_json::json!([
                {"after": "0s", "percent": 0},
                {"after": "500000000000y", "percent": 100}
            ]);
            s.body("/manifest.json", serde_json::to_vec(&m).unwrap());
        },
    );
}

#[test]
fn redirect_loop_is_refused() {
    refused(true, "", "", &["too many redirects"], |s| {
        s.set("/loop", Reply::Redirect("/loop".into()));
        s.body("/manifest.json", manifest("2.0.0", "loop", None, None));
    });
}

#[test]
fn oversized_download_is_refused() {
    // The cap admits the example (whatever its size in this build) and
    // refuses one MiB more.
    let limit = hello_bytes("1.0.0").len() as u64 + (1 << 20);
    let expect = format!("larger than verify.max_size ({limit} bytes)");
    let baton = refused(
        true,
        "",
        &format!("max_size = \"{limit}\""),
        &[&expect],
        |s| {
            let big = vec![7u8; limit as usize + (1 << 20)];
            publish(s, "2.0.0", "hello-2.0.0", big);
        },
    );
    drop(baton);
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            t.append_data(&mut h, name, *data).unwrap();
        }
        t.into_inner().unwrap().finish().unwrap();
    }
    out
}

#[test]
fn zip_slip_archive_is_refused() {
    let baton = refused(
        true,
        "",
        "",
        &["bad archive: entry ../../escaped would escape the release directory"],
        |s| {
            let mut out = std::io::Cursor::new(Vec::new());
            {
                let mut w = zip::ZipWriter::new(&mut out);
                w.start_file("../../escaped", zip::write::SimpleFileOptions::default())
                    .unwrap();
                std::io::Write::write_all(&mut w, b"owned").unwrap();
                w.finish().unwrap();
            }
            publish(s, "2.0.0", "hello-2.0.0.zip", out.into_inner());
        },
    );
    let root = baton.dir.path();
    assert!(!root.join("escaped").exists() && !root.parent().unwrap().join("escaped").exists());
}

#[test]
fn archive_without_the_binary_is_refused() {
    refused(
        true,
        "",
        "",
        &["bad archive: no file named \"hello\" in the archive (it holds: README)"],
        |s| {
            publish(
                s,
                "2.0.0",
                "hello-2.0.0.tar.gz",
                tar_gz(&[("README", b"read me")]),
            );
        },
    );
}

#[test]
fn archive_with_the_binary_upgrades() {
    let (server, baton) = http_baton(true, "", "");
    let two = hello_bytes("2.0.0");
    publish(
        &server,
        "2.0.0",
        "hello-2.0.0.tar.gz",
        tar_gz(&[("hello-2.0.0/README", b"x"), ("hello-2.0.0/hello", &two)]),
    );
    support::wait_version(baton.addr(), "2.0.0");
    baton.wait_current("2.0.0-");
    let current = baton.dir.path().join("releases/current");
    assert_eq!(std::fs::read(current.join("hello")).unwrap(), two);
}

#[test]
fn random_bytes_are_refused_with_exec_format_error() {
    refused(
        true,
        "",
        "",
        &["cannot run probe", "Exec format error"],
        |s| {
            let noise: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            publish(s, "2.0.0", "hello-2.0.0", noise);
        },
    );
}

#[test]
fn failing_probe_is_refused() {
    refused(
        true,
        "",
        "",
        &["probe failed with exit code 1: cannot load config.toml"],
        |s| {
            publish(
                s,
                "2.0.0",
                "hello-2.0.0",
                b"#!/bin/sh\necho 'cannot load config.toml' >&2\nexit 1\n".to_vec(),
            );
        },
    );
}

#[test]
fn hanging_probe_is_killed_with_its_children() {
    let pids = tempfile::tempdir().unwrap();
    let pidfile = pids.path().join("pids");
    let script = format!(
        "#!/bin/sh\nsleep 300 &\necho $! >> {p}\necho $$ >> {p}\nwait\n",
        p = pidfile.display()
    );
    refused(
        true,
        "",
        "probe_timeout = \"1s\"",
        &["probe did not exit within 1s; killed it and its process group"],
        |s| {
            publish(s, "2.0.0", "hello-2.0.0", script.into_bytes());
        },
    );
    let text = std::fs::read_to_string(&pidfile).unwrap();
    for pid in text.split_whitespace().map(|p| p.parse::<u32>().unwrap()) {
        support::wait_for(
            &format!("probe process {pid} to be gone"),
            Duration::from_secs(5),
            || support::process_state(pid).is_none().then_some(()),
        );
    }
}

#[test]
fn downgrade_is_refused() {
    refused(
        true,
        "",
        "",
        &["refusing downgrade from 1.0.0 to 0.9.0 (set verify.allow_downgrade to allow)"],
        |s| {
            publish(
                s,
                "0.9.0",
                "hello-0.9.0",
                b"#!/bin/sh\necho 0.9.0\n".to_vec(),
            );
        },
    );
}

#[test]
fn new_worker_that_crashes_on_start_fails_its_trial_and_is_not_retried() {
    let (server, baton) = http_baton(true, "", "");
    let first = baton.current().unwrap();
    let load = Load::start(baton.addr(), 8, LoadMode::KeepAlive);
    let bad = b"#!/bin/sh\nif [ \"$BATON_PROBE\" = 1 ]; then echo 3.0.0; exit 0; fi\necho 'segfault in init' >&2\nexit 139\n".to_vec();
    let sha = hex::encode(sha256(&bad));
    publish(&server, "3.0.0", "hello-3.0.0", bad.clone());
    support::wait_for(
        "3.0.0 to be recorded as failed",
        Duration::from_secs(20),
        || baton.failed().contains(&sha).then_some(()),
    );
    assert_eq!(baton.current().unwrap(), first);
    assert!(baton.log().contains("segfault in init"));
    // The same bytes under another name are skipped without a download
    // reaching a worker again.
    publish(&server, "3.0.0", "hello-3.0.0-again", bad);
    baton.wait_count("which failed before; skipped", 1, Duration::from_secs(20));
    assert_eq!(baton.count("installed release 3.0.0"), 1);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(support::version(baton.addr()), "1.0.0");
}

/// Configured headers (tokens) go to the configured origin only: not to an
/// artifact on another host, not across a redirect to another host.
#[test]
fn configured_headers_stay_on_their_origin() {
    let manifests = HttpServer::start(true);
    let cdn = HttpServer::start(true);
    let one = hello_bytes("1.0.0");
    cdn.body("/hello-1.0.0", one.clone());
    manifests.body(
        "/manifest.json",
        manifest("1.0.0", &cdn.url("/hello-1.0.0"), Some(sha256(&one)), None),
    );
    let fetch = format!(
        "source = \"http\"\nurl = \"{}\"\ninterval = \"200ms\"\nheaders = {{ X-Api-Key = \"s3cret\" }}",
        manifests.url("/manifest.json")
    );
    let baton = Baton::start(tempfile::tempdir().unwrap(), &release_config(&fetch, ""));
    baton.wait_ready();
    baton.wait_current("1.0.0-");
    // 2.0.0 sits behind a redirect from the manifest's host to the CDN.
    let two = hello_bytes("2.0.0");
    cdn.body("/hello-2.0.0", two.clone());
    manifests.set("/hello-2.0.0", Reply::Redirect(cdn.url("/hello-2.0.0")));
    manifests.body(
        "/manifest.json",
        manifest("2.0.0", "hello-2.0.0", Some(sha256(&two)), None),
    );
    support::wait_version(baton.addr(), "2.0.0");
    let sent = |server: &HttpServer, path: &str| -> Vec<bool> {
        server
            .headers(path)
            .iter()
            .map(|h| h.get("x-api-key").is_some_and(|v| v == "s3cret"))
            .collect()
    };
    assert!(
        sent(&manifests, "/manifest.json").iter().all(|&s| s),
        "the manifest's host gets the header"
    );
    assert_eq!(sent(&manifests, "/hello-2.0.0"), [true]);
    assert_eq!(
        sent(&cdn, "/hello-1.0.0"),
        [false],
        "an absolute artifact URL on another host"
    );
    assert_eq!(
        sent(&cdn, "/hello-2.0.0"),
        [false],
        "a redirect to another host"
    );
    assert!(
        !baton.log().contains("s3cret"),
        "the header's value is never logged"
    );
}

#[test]
fn unchanged_url_is_polled_with_304s_and_no_downloads() {
    let (server, baton) = http_baton(true, "", "");
    let start = server.seen("/manifest.json").len();
    support::wait_for("20 more polls", Duration::from_secs(30), || {
        (server.seen("/manifest.json").len() >= start + 20).then_some(())
    });
    let polls = server.seen("/manifest.json");
    assert!(polls[start..].iter().all(|&s| s == 304), "{polls:?}");
    assert_eq!(
        server.seen("/hello-1.0.0"),
        [200],
        "the artifact was downloaded more than once"
    );
    drop(baton);
}

#[test]
fn server_without_validators_still_costs_no_download() {
    let (server, baton) = http_baton(false, "", "");
    let start = server.seen("/manifest.json").len();
    support::wait_for("10 more polls", Duration::from_secs(30), || {
        (server.seen("/manifest.json").len() >= start + 10).then_some(())
    });
    assert_eq!(server.seen("/hello-1.0.0"), [200]);
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    support::wait_version(baton.addr(), "2.0.0");
}

fn assert_serves_current(baton: &Baton) {
    let current = baton.current().expect("current exists");
    let dir = baton.dir.path().join("releases").join(&current);
    assert!(
        dir.join("hello").exists() && dir.join("release.json").exists(),
        "{current} is incomplete"
    );
    let version = current.split('-').next().unwrap();
    support::wait_version(baton.addr(), version);
    assert!(
        baton.leftovers().is_empty(),
        "left behind: {:?}",
        baton.leftovers()
    );
}

#[test]
fn kill9_during_download_leaves_current_intact() {
    let (server, baton) = http_baton(true, "", "");
    let two = hello_bytes("2.0.0");
    let sha = sha256(&two);
    server.set("/hello-2.0.0", Reply::Stall(Arc::new(two), 1 << 20));
    server.body(
        "/manifest.json",
        manifest("2.0.0", "hello-2.0.0", Some(sha), None),
    );
    support::wait_for("a partial download", Duration::from_secs(20), || {
        (!baton.leftovers().is_empty()).then_some(())
    });
    let dir = baton.kill9();
    server.body(
        "/manifest.json",
        manifest(
            "1.0.0",
            "hello-1.0.0",
            Some(sha256(&hello_bytes("1.0.0"))),
            None,
        ),
    );
    let baton = Baton::restart(dir);
    baton.wait_ready();
    assert!(
        baton.log().contains("left by an interrupted install"),
        "{}",
        baton.log()
    );
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
    assert_serves_current(&baton);
}

#[test]
fn kill9_after_staging_before_the_swap_leaves_current_intact() {
    let pids = tempfile::tempdir().unwrap();
    let pidfile = pids.path().join("pid");
    let (server, baton) = http_baton(true, "", "probe_timeout = \"60s\"");
    let script = format!(
        "#!/bin/sh\necho $$ > {}\nexec sleep 300\n",
        pidfile.display()
    );
    publish(&server, "2.0.0", "hello-2.0.0", script.into_bytes());
    support::wait_for("the probe to run", Duration::from_secs(20), || {
        pidfile.exists().then_some(())
    });
    assert!(
        !baton.leftovers().is_empty(),
        "the staging directory exists while probing"
    );
    let dir = baton.kill9();
    let probe: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) has no memory preconditions; the orphaned probe is ours.
    unsafe { libc::kill(probe as i32, libc::SIGKILL) };
    server.body(
        "/manifest.json",
        manifest(
            "1.0.0",
            "hello-1.0.0",
            Some(sha256(&hello_bytes("1.0.0"))),
            None,
        ),
    );
    let baton = Baton::restart(dir);
    baton.wait_ready();
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
    assert_serves_current(&baton);
}

#[test]
fn first_start_without_a_release_waits_for_one() {
    let server = HttpServer::start(true);
    server.set("/manifest.json", Reply::Status(404));
    let fetch = format!(
        "source = \"http\"\nurl = \"{}\"\ninterval = \"200ms\"",
        server.url("/manifest.json")
    );
    let baton = Baton::start(tempfile::tempdir().unwrap(), &release_config(&fetch, ""));
    baton.wait_count("manifest.json answered 404", 1, Duration::from_secs(10));
    assert_eq!(baton.count("started worker"), 0);
    // Regression: a cycle request before the first release started a worker
    // that later ran beside the real one, untracked.
    baton.signal(libc::SIGHUP);
    baton.wait_count(
        "no release is installed yet; nothing to cycle",
        1,
        Duration::from_secs(5),
    );
    publish(&server, "1.0.0", "hello-1.0.0", hello_bytes("1.0.0"));
    // Errors back the polling off; SIGUSR1 checks at once.
    baton.signal(libc::SIGUSR1);
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    baton.wait_current("1.0.0-");
    assert!(Path::new(&baton.dir.path().join("releases/current/hello")).exists());
    assert_eq!(baton.children().len(), 1, "{}", baton.log());
    assert_eq!(baton.count("started worker"), 1);
}
