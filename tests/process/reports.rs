//! Trial reports: with `[fetch] report = true`, real masters write what
//! their trials came to beside the manifest they read (a directory, an S3
//! bucket on moto): `started` before the trial worker runs, then `promoted`
//! or `failed` with its stage, exit and last stderr line, each once. A
//! store that refuses the writes changes nothing about the trial.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::release::sha256;
use crate::support::s3::{S3Server, ENV};
use crate::support::{self, Baton};
use crate::trial::seed_release;

const HOST: &str = "web-7";

/// A store directory offering `bytes` as `version` through an unsigned
/// manifest.
fn offer(store: &Path, version: &str, bytes: &[u8]) {
    std::fs::create_dir_all(store).unwrap();
    let name = format!("hello-{version}");
    std::fs::write(store.join(&name), bytes).unwrap();
    let manifest = serde_json::json!({
        "version": version, "url": name, "sha256": hex::encode(sha256(bytes)),
    });
    let tmp = store.join(".manifest.tmp");
    std::fs::write(&tmp, manifest.to_string()).unwrap();
    std::fs::rename(&tmp, store.join("manifest.json")).unwrap();
}

/// A host serving a seeded 1.0.0 that reads `store/manifest.json`.
fn host(store: &Path) -> Baton {
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"300ms\"\n\
         [fetch]\nsource = \"file\"\npath = \"{}\"\ninterval = \"200ms\"\nhost_id = \"{HOST}\"\nreport = true\n",
        store.join("manifest.json").display()
    );
    let baton = Baton::start(dir, &config);
    baton.wait_ready();
    baton
}

fn hello_bytes(version: &str) -> Vec<u8> {
    std::fs::read(support::hello(version)).unwrap()
}

/// A build that probes as `version`, then fails at start, saying why.
fn failing_build(version: &str) -> Vec<u8> {
    format!(
        "#!/bin/sh\nif [ \"$BATON_PROBE\" = 1 ]; then echo {version}; exit 0; fi\n\
         echo 'warming up' >&2\necho 'cannot open database' >&2\nexit 3\n"
    )
    .into_bytes()
}

fn read_report(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn wait_report(store: &Path, version: &str, outcome: &str) -> Value {
    let path = store.join(format!("reports/{version}/{outcome}/{HOST}.json"));
    support::wait_for(
        &format!("the {outcome} report of {version}"),
        Duration::from_secs(30),
        || read_report(&path),
    )
}

#[test]
fn a_promoted_and_a_failed_trial_are_reported_beside_the_manifest() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    offer(store, "1.0.0", &hello_bytes("1.0.0"));
    let baton = host(store);
    offer(store, "2.0.0", &hello_bytes("2.0.0"));
    baton.wait_current("2.0.0-");
    let started = wait_report(store, "2.0.0", "started");
    let promoted = wait_report(store, "2.0.0", "promoted");
    for (report, outcome) in [(&started, "started"), (&promoted, "promoted")] {
        assert_eq!(report["host_id"], HOST);
        assert_eq!(report["version"], "2.0.0");
        assert_eq!(report["from"], "1.0.0");
        assert_eq!(report["outcome"], outcome);
        assert!(report["bucket"]
            .as_f64()
            .is_some_and(|b| (0.0..100.0).contains(&b)));
        assert!(report["at"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(report.get("stage").is_none(), "{report}");
    }
    // A build that fails at start: reported with its stage and last words.
    offer(store, "3.0.0", &failing_build("3.0.0"));
    let failed = wait_report(store, "3.0.0", "failed");
    assert_eq!(failed["stage"], "start");
    assert_eq!(failed["from"], "2.0.0");
    assert_eq!(failed["stderr"], "cannot open database");
    assert!(
        failed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("exited before it was ready: exit code 3")),
        "{failed}"
    );
    support::wait_version(baton.addr(), "2.0.0");
    assert!(!store.join("reports/3.0.0/promoted").exists());
    // Written once: the record survives a restart, so a new master that
    // settles the same history writes nothing again.
    let recorded = std::fs::read_to_string(baton.dir.path().join("releases/.reports")).unwrap();
    for key in [
        "reports/2.0.0/started/web-7.json",
        "reports/2.0.0/promoted/web-7.json",
        "reports/3.0.0/started/web-7.json",
        "reports/3.0.0/failed/web-7.json",
    ] {
        assert!(recorded.lines().any(|l| l == key), "{key} in {recorded}");
    }
}

#[test]
fn a_store_that_refuses_reports_changes_nothing_about_the_trial() {
    let store = tempfile::tempdir().unwrap();
    let store = store.path();
    offer(store, "1.0.0", &hello_bytes("1.0.0"));
    // A file where the reports directory goes: every write fails.
    std::fs::write(store.join("reports"), b"not a directory").unwrap();
    let baton = host(store);
    offer(store, "2.0.0", &hello_bytes("2.0.0"));
    baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");
    support::wait_for(
        "the failed writes to be logged",
        Duration::from_secs(30),
        || (baton.count("cannot write the trial report") >= 2).then_some(()),
    );
    assert!(baton.failed().is_empty(), "{:?}", baton.failed());
}

#[test]
fn an_s3_host_reports_under_the_manifests_prefix() {
    let s3 = S3Server::start(None);
    s3.bucket("releases");
    s3.put("releases", "hello/hello", hello_bytes("1.0.0"), &[]);
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"300ms\"\n\
         [fetch]\nsource = \"s3\"\nbucket = \"releases\"\nkey = \"hello/hello\"\nregion = \"us-east-1\"\n\
         endpoint_url = \"{}\"\nforce_path_style = true\ninterval = \"200ms\"\ntimeout = \"5s\"\n\
         host_id = \"{HOST}\"\nreport = true\n",
        s3.endpoint()
    );
    let baton = Baton::start_with_env(tempfile::tempdir().unwrap(), &config, ENV);
    baton.wait_ready();
    baton.wait_current("1.0.0-");
    s3.put("releases", "hello/hello", hello_bytes("2.0.0"), &[]);
    baton.wait_current("2.0.0-");
    let promoted: Value = support::wait_for(
        "the promoted report in the bucket",
        Duration::from_secs(30),
        || {
            let bytes = s3.get(
                "releases",
                &format!("hello/reports/2.0.0/promoted/{HOST}.json"),
            )?;
            serde_json::from_slice(&bytes).ok()
        },
    );
    assert_eq!(promoted["host_id"], HOST);
    assert_eq!(promoted["from"], "1.0.0");
    assert!(s3
        .get(
            "releases",
            &format!("hello/reports/2.0.0/started/{HOST}.json")
        )
        .is_some());
}
