//! The S3 fetcher against a real S3-protocol server (moto), uploading with
//! aws-sdk-s3 itself.

use std::time::Duration;

use crate::fleet::Publisher;
use crate::support::s3::{CountingProxy, S3Server, ENV};
use crate::support::{self, Baton, Load, LoadMode};

fn hello_bytes(version: &str) -> Vec<u8> {
    std::fs::read(support::hello(version)).unwrap()
}

fn config(endpoint: &str, what: &str, extra: &str) -> String {
    format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n\
         [releases]\nbinary = \"hello\"\nsettle = \"500ms\"\n[fetch]\nsource = \"s3\"\nbucket = \"releases\"\n{what}\nregion = \"us-east-1\"\n\
         endpoint_url = \"{endpoint}\"\nforce_path_style = true\ninterval = \"200ms\"\ntimeout = \"30s\"\n{extra}\n"
    )
}

/// moto with `releases/hello/hello` = 1.0.0, a proxy in front, and a master
/// serving it.
fn serving() -> (S3Server, CountingProxy, Baton) {
    let s3 = S3Server::start(None);
    s3.bucket("releases");
    s3.put("releases", "hello/hello", hello_bytes("1.0.0"), &[]);
    let proxy = CountingProxy::start(s3.addr());
    let baton = Baton::start_with_env(
        tempfile::tempdir().unwrap(),
        &config(&proxy.endpoint(), "key = \"hello/hello\"", ""),
        ENV,
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    baton.wait_current("1.0.0-");
    (s3, proxy, baton)
}

#[test]
fn new_object_upgrades_under_load() {
    let (s3, _proxy, baton) = serving();
    let load = Load::start(baton.addr(), 64, LoadMode::KeepAlive);
    load.wait_more(300);
    s3.put("releases", "hello/hello", hello_bytes("2.0.0"), &[]);
    support::wait_version(baton.addr(), "2.0.0");
    load.wait_more(300);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    baton.wait_current("2.0.0-");
}

#[test]
fn unchanged_object_costs_one_head_per_poll() {
    let (_s3, proxy, baton) = serving();
    let (heads, gets) = (proxy.heads(), proxy.gets());
    support::wait_for("20 more polls", Duration::from_secs(30), || {
        (proxy.heads() >= heads + 20).then_some(())
    });
    assert_eq!(
        proxy.gets(),
        gets,
        "an unchanged object was downloaded again"
    );
    assert_eq!(gets, 1, "one download for the first install");
    drop(baton);
}

#[test]
fn prefix_takes_the_highest_version() {
    let s3 = S3Server::start(None);
    s3.bucket("releases");
    s3.put(
        "releases",
        "hello/hello-1.0.0-x86_64-unknown-linux-gnu",
        hello_bytes("1.0.0"),
        &[],
    );
    s3.put(
        "releases",
        "hello/hello-2.0.0-x86_64-unknown-linux-gnu",
        hello_bytes("2.0.0"),
        &[],
    );
    s3.put(
        "releases",
        "hello/hello-10.0.0-rc.1-x86_64-unknown-linux-gnu",
        b"pre-release".to_vec(),
        &[],
    );
    s3.put(
        "releases",
        "hello/hello-2.0.0-x86_64-unknown-linux-gnu.sha256",
        b"not a binary".to_vec(),
        &[],
    );
    let baton = Baton::start_with_env(
        tempfile::tempdir().unwrap(),
        &config(&s3.endpoint(), "prefix = \"hello/\"", ""),
        ENV,
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "2.0.0");
    assert!(
        baton.log().contains("new candidate from s3"),
        "{}",
        baton.log()
    );
}

#[test]
fn signature_comes_from_the_minisig_object() {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let sign = |bytes: &[u8]| {
        minisign::sign(
            Some(&kp.pk),
            &kp.sk,
            std::io::Cursor::new(bytes),
            None,
            None,
        )
        .unwrap()
        .into_string()
        .into_bytes()
    };
    let s3 = S3Server::start(None);
    s3.bucket("releases");
    let one = hello_bytes("1.0.0");
    s3.put("releases", "hello/hello", one.clone(), &[]);
    s3.put("releases", "hello/hello.minisig", sign(&one), &[]);
    let verify = format!("[verify]\nminisign_key = \"{}\"", kp.pk.to_base64());
    let baton = Baton::start_with_env(
        tempfile::tempdir().unwrap(),
        &config(&s3.endpoint(), "key = \"hello/hello\"", &verify),
        ENV,
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    baton.wait_current("1.0.0-");
    // New bytes under the old signature are refused.
    s3.put("releases", "hello/hello", hello_bytes("2.0.0"), &[]);
    baton.wait_count("bad minisign signature", 1, Duration::from_secs(20));
    assert_eq!(support::version(baton.addr()), "1.0.0");
}

#[test]
fn wrong_sha256_metadata_is_refused() {
    let (s3, _proxy, baton) = serving();
    let wrong = "0".repeat(64);
    s3.put_with(
        "releases",
        "hello/hello",
        hello_bytes("2.0.0"),
        &[("sha256", &wrong)],
        false,
    );
    baton.wait_count(
        &format!("sha256 mismatch: the source expects {wrong}"),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(support::version(baton.addr()), "1.0.0");
    assert_eq!(baton.wait_current("1.0.0-"), baton.current().unwrap());
}

/// A master serving 1.0.0 whose source then breaks: the error is named and
/// the service keeps serving.
fn keeps_serving(expect: &str, breakage: impl FnOnce(&mut S3Server)) {
    let (mut s3, _proxy, baton) = serving();
    let load = Load::start(baton.addr(), 8, LoadMode::KeepAlive);
    load.wait_more(100);
    breakage(&mut s3);
    baton.wait_count(expect, 1, Duration::from_secs(30));
    load.wait_more(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(support::version(baton.addr()), "1.0.0");
}

#[test]
fn missing_key_is_named() {
    keeps_serving("no such key \"hello/hello\" in bucket \"releases\"", |s3| {
        s3.delete("releases", "hello/hello")
    });
}

#[test]
fn missing_bucket_is_named() {
    keeps_serving("no such bucket \"releases\"", |s3| {
        s3.delete("releases", "hello/hello");
        s3.delete_bucket("releases");
    });
}

#[test]
fn unreachable_endpoint_is_named() {
    keeps_serving(
        "cannot reach the S3 endpoint for s3://releases/hello/hello at http://127.0.0.1",
        |s3| s3.stop(),
    );
}

/// `baton check` on an S3 source at `endpoint`, in an environment with
/// nothing but `env` (no credentials, no profile, no instance metadata
/// unless given): its exit success and its error line (all of stderr when
/// it has none).
fn check_alone(endpoint: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("baton.toml"),
        config(endpoint, "key = \"hello/hello\"", ""),
    )
    .unwrap();
    let out = std::process::Command::new(support::baton_bin())
        .args(["check", "--config"])
        .arg(dir.path().join("baton.toml"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("baton: "))
        .map_or_else(|| stderr.clone(), str::to_owned);
    (out.status.success(), line)
}

/// An error line is one sentence a person can act on, not a dump.
fn readable(line: &str) {
    for dump in ["DispatchFailure(", "{ source", "ConnectorError", "Some("] {
        assert!(!line.contains(dump), "a Debug dump: {line}");
    }
    assert!(line.len() < 600, "too long to read: {line}");
}

#[test]
fn missing_credentials_name_the_chain_and_what_to_set() {
    let s3 = S3Server::start(None);
    s3.bucket("releases");
    s3.put("releases", "hello/hello", hello_bytes("1.0.0"), &[]);
    let (ok, line) = check_alone(&s3.endpoint(), &[("AWS_REGION", "us-east-1")]);
    assert!(!ok);
    assert!(
        line.contains("no AWS credentials for s3://releases/hello/hello at http://127.0.0.1"),
        "{line}"
    );
    assert!(
        line.contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"),
        "{line}"
    );
    readable(&line);
    // With them, the same check passes.
    let (ok, line) = check_alone(&s3.endpoint(), ENV);
    assert!(ok, "{line}");
}

#[test]
fn unreachable_and_throttled_endpoints_are_named_in_one_line() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (ok, line) = check_alone(&closed, ENV);
    assert!(!ok);
    assert!(
        line.contains("cannot reach the S3 endpoint for s3://releases/hello/hello"),
        "{line}"
    );
    assert!(line.contains("Connection refused"), "{line}");
    readable(&line);
    // An endpoint that answers every request as S3 does when it throttles.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = support::read_request(&stream);
                let body =
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                            <Message>Please reduce your request rate.</Message></Error>";
                let mut stream = stream;
                let _ = std::io::Write::write_all(
                    &mut stream,
                    format!(
                        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    let (ok, line) = check_alone(&endpoint, ENV);
    assert!(!ok);
    assert!(
        line.contains("S3 is throttling requests to s3://releases/hello/hello"),
        "{line}"
    );
    readable(&line);
}

#[test]
fn access_denied_is_named() {
    // moto checks credentials once its first requests are done; baton's
    // keys are not known to it.
    let s3 = S3Server::start(Some(2));
    s3.bucket("releases");
    s3.put("releases", "hello/hello", hello_bytes("1.0.0"), &[]);
    let baton = Baton::start_with_env(
        tempfile::tempdir().unwrap(),
        &config(&s3.endpoint(), "key = \"hello/hello\"", ""),
        ENV,
    );
    baton.wait_count(
        "access denied to s3://releases/hello/hello",
        1,
        Duration::from_secs(30),
    );
    assert!(
        !baton.log().contains("testing"),
        "credentials must never be logged"
    );
}

/// Uploads a publish directory under `prefix` as a publisher would:
/// artifacts first, then the signature, the manifest last.
fn upload(s3: &S3Server, dir: &std::path::Path, prefix: &str) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let rank = |n: &str| match n {
        "manifest.json" => 2,
        "manifest.json.minisig" => 1,
        _ => 0,
    };
    names.sort_by_key(|n| rank(n));
    for name in names {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        s3.put("releases", &format!("{prefix}{name}"), bytes, &[]);
    }
}

/// moto behind a counting proxy, and a master with 1.0.0 installed whose
/// source is the signed manifest `hello/manifest.json`, trusting `key`.
fn manifest_host(key: &str) -> (S3Server, CountingProxy, Baton) {
    let s3 = S3Server::start(None);
    s3.bucket("releases");
    let proxy = CountingProxy::start(s3.addr());
    let dir = tempfile::tempdir().unwrap();
    crate::trial::seed_release(dir.path(), "1.0.0");
    let baton = Baton::start_with_env(
        dir,
        &config(
            &proxy.endpoint(),
            "key = \"hello/manifest.json\"\nhost_id = \"web-1\"",
            &format!("[verify]\nminisign_key = \"{key}\""),
        ),
        ENV,
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    (s3, proxy, baton)
}

#[test]
fn a_signed_manifest_upgrades_and_then_costs_one_head_per_poll() {
    let p = Publisher::new();
    let key = p.keygen("release");
    let (s3, proxy, baton) = manifest_host(&key);
    // No manifest yet: named, and the service keeps serving.
    baton.wait_count(
        "no such key \"hello/manifest.json\"",
        1,
        Duration::from_secs(20),
    );
    p.publish(&[
        "--version",
        "2.0.0",
        "--expires",
        "30d",
        "--sign",
        &p.key("release"),
        &p.artifact("2.0.0"),
    ]);
    let load = Load::start(baton.addr(), 16, LoadMode::KeepAlive);
    load.wait_more(100);
    upload(&s3, &p.out(), "hello/");
    baton.wait_current("2.0.0-");
    assert_eq!(support::version(baton.addr()), "2.0.0");
    load.wait_more(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(
        baton.log().contains("this host is in the rollout"),
        "{}",
        baton.log()
    );
    // Unchanged from now on: one HeadObject per poll, nothing downloaded.
    let (heads, gets) = (proxy.heads(), proxy.gets());
    support::wait_for("20 more polls", Duration::from_secs(30), || {
        (proxy.heads() >= heads + 20).then_some(())
    });
    assert_eq!(proxy.gets(), gets, "an unchanged manifest was read again");
}

#[test]
fn rollout_zero_keeps_a_host_off_and_100_brings_it() {
    let p = Publisher::new();
    let key = p.keygen("release");
    let (s3, proxy, baton) = manifest_host(&key);
    p.publish(&[
        "--version",
        "2.0.0",
        "--rollout",
        "0",
        "--sign",
        &p.key("release"),
        &p.artifact("2.0.0"),
    ]);
    upload(&s3, &p.out(), "hello/");
    baton.wait_count(
        "the rollout is halted (rollout 0)",
        1,
        Duration::from_secs(20),
    );
    assert!(baton.log().contains("host web-1"), "{}", baton.log());
    // Manifest and signature read, the artifact never asked for.
    let gets = proxy.gets();
    assert_eq!(gets, 2, "manifest and signature only");
    let heads = proxy.heads();
    support::wait_for("10 more polls", Duration::from_secs(30), || {
        (proxy.heads() >= heads + 10).then_some(())
    });
    assert_eq!(proxy.gets(), gets, "a halted manifest is not read again");
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
    p.publish(&["--rollout", "100", "--sign", &p.key("release")]);
    upload(&s3, &p.out(), "hello/");
    baton.wait_current("2.0.0-");
    assert_eq!(support::version(baton.addr()), "2.0.0");
}

/// A master on 1.0.0 whose manifest source then offers `publish`ed bytes
/// (changed by `tamper`): refused with `expect`, and 1.0.0 keeps serving.
fn refused(expect: &str, sign_with: &str, args: &[&str], tamper: impl FnOnce(&std::path::Path)) {
    let p = Publisher::new();
    let trusted = p.keygen("trusted");
    if sign_with != "trusted" {
        p.keygen(sign_with);
    }
    let (s3, _proxy, baton) = manifest_host(&trusted);
    let key = p.key(sign_with);
    let artifact = p.artifact("2.0.0");
    let mut all = vec!["--version", "2.0.0", "--sign", &key];
    all.extend_from_slice(args);
    all.push(&artifact);
    p.publish(&all);
    tamper(&p.out().join("manifest.json"));
    let load = Load::start(baton.addr(), 8, LoadMode::KeepAlive);
    load.wait_more(100);
    upload(&s3, &p.out(), "hello/");
    baton.wait_count(expect, 1, Duration::from_secs(20));
    load.wait_more(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(support::version(baton.addr()), "1.0.0");
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
    assert!(
        baton
            .log()
            .contains("manifest s3://releases/hello/manifest.json at http://127.0.0.1"),
        "the error names the manifest: {}",
        baton.log()
    );
}

#[test]
fn a_tampered_manifest_is_refused() {
    refused("bad manifest signature", "trusted", &[], |manifest| {
        let text = std::fs::read_to_string(manifest)
            .unwrap()
            .replace("\"rollout\": 100", "\"rollout\": 99");
        std::fs::write(manifest, text).unwrap();
    });
}

#[test]
fn an_expired_manifest_is_refused() {
    refused(
        "the manifest expired at",
        "trusted",
        &["--expires", "0s"],
        |_| {},
    );
}

#[test]
fn a_manifest_signed_by_an_unknown_key_is_refused() {
    refused("signed by an unknown key", "stranger", &[], |_| {});
}

/// `baton publish` with the test credentials; panics with its output
/// unless it succeeds.
fn publish_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(support::baton_bin())
        .args(["publish"])
        .args(args)
        .envs(ENV.iter().copied())
        .env_remove("BATON_KEY_PASSWORD")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "baton publish {args:?} failed:\n{text}"
    );
    text
}

#[test]
fn publish_to_s3_then_a_host_upgrades_by_rollout() {
    let p = Publisher::new();
    let key = p.keygen("release");
    let (s3, proxy, baton) = manifest_host(&key);
    let endpoint = s3.endpoint();
    let to = ["--to", "s3://releases/hello/", "--endpoint-url", &endpoint];
    let sign = p.key("release");
    let artifact = p.artifact("2.0.0");
    let said = publish_cli(
        &[
            &to[..],
            &[
                "--version",
                "2.0.0",
                "--rollout",
                "0",
                "--sign",
                &sign,
                &artifact,
            ],
        ]
        .concat(),
    );
    assert!(
        said.contains("published 2.0.0 to s3://releases/hello/manifest.json"),
        "{said}"
    );
    // The artifact carries its sha256 as S3's own checksum.
    let digest = <sha2::Sha256 as sha2::Digest>::digest(hello_bytes("2.0.0"));
    assert_eq!(
        s3.checksum_sha256("releases", "hello/hello-2.0.0")
            .as_deref(),
        Some(base64(&digest).as_str())
    );
    baton.wait_count(
        "the rollout is halted (rollout 0)",
        1,
        Duration::from_secs(20),
    );
    let gets = proxy.gets();
    // Re-signed at 50 %: web-1 takes it exactly when its bucket says so.
    publish_cli(&[&to[..], &["--rollout", "50", "--sign", &sign]].concat());
    if crate::fleet::in_cohort("web-1", "2.0.0", 50) {
        baton.wait_current("2.0.0-");
    } else {
        baton.wait_count("not this host's turn yet", 1, Duration::from_secs(20));
        assert_eq!(proxy.gets(), gets + 2, "manifest and signature only");
        publish_cli(&[&to[..], &["--rollout", "100", "--sign", &sign]].concat());
        baton.wait_current("2.0.0-");
    }
    assert_eq!(support::version(baton.addr()), "2.0.0");
    // Re-signing a manifest changed in the bucket is refused.
    s3.put(
        "releases",
        "hello/manifest.json",
        b"{\"version\": \"9.9.9\", \"url\": \"x\"}".to_vec(),
        &[],
    );
    let out = std::process::Command::new(support::baton_bin())
        .args(["publish"])
        .args(to)
        .args(["--rollout", "100", "--sign", &sign])
        .envs(ENV.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot re-sign s3://releases/hello/manifest.json")
            && err.contains("does not verify with this key"),
        "{err}"
    );
}

/// Standard base64 with padding, as S3 states checksums.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut n = [0u8; 3];
        n[..chunk.len()].copy_from_slice(chunk);
        let v = u32::from(n[0]) << 16 | u32::from(n[1]) << 8 | u32::from(n[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(v >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}
