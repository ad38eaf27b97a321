//! The S3 fetcher against a real S3-protocol server (moto), uploading with
//! aws-sdk-s3 itself.

use std::time::Duration;

use crate::support::s3::{CountingProxy, S3Server, ENV};
use crate::support::{self, Baton, Load, LoadMode};

fn hello_bytes(version: &str) -> Vec<u8> {
    std::fs::read(support::hello(version)).unwrap()
}

fn config(endpoint: &str, what: &str, extra: &str) -> String {
    format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n\
         [releases]\nbinary = \"hello\"\nsettle = \"500ms\"\n[fetch]\nsource = \"s3\"\nbucket = \"releases\"\n{what}\nregion = \"us-east-1\"\n\
         endpoint_url = \"{endpoint}\"\nforce_path_style = true\ninterval = \"200ms\"\ntimeout = \"5s\"\n{extra}\n"
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
