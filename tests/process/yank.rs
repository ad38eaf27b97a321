//! A signed yank: `baton publish --yank V` re-signs the manifest to name
//! the release before V. Real masters on a `file` source: a host on V goes
//! back through a trial under keep-alive load with 0 failed requests,
//! reusing its installed release (the artifact is gone from the store, so a
//! download would fail); it reports `yanked` and never takes V again, not
//! even from a replayed manifest. A forged or unsigned yank changes
//! nothing; a yank of a version a host never ran does nothing; a host on
//! trial of V ends its trial.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::control::ok;
use crate::fleet::Publisher;
use crate::release::sha256;
use crate::support::load::{Load, LoadMode};
use crate::support::{self, Baton};
use crate::trial::seed_release;

/// A host serving a seeded 1.0.0 from `publisher`'s directory; `key` is
/// trusted when given.
fn host(publisher: &Publisher, host_id: &str, key: Option<&str>, settle: &str) -> Baton {
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let baton = Baton::start(dir, &host_config(publisher, host_id, key, settle));
    baton.wait_ready();
    baton
}

/// The config of a host reading `publisher`'s manifest.
fn host_config(publisher: &Publisher, host_id: &str, key: Option<&str>, settle: &str) -> String {
    let verify = key
        .map(|k| format!("[verify]\nminisign_key = \"{k}\"\n"))
        .unwrap_or_default();
    format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"{settle}\"\n\
         [fetch]\nsource = \"file\"\npath = \"{}\"\ninterval = \"200ms\"\nhost_id = \"{host_id}\"\nreport = true\n{verify}",
        publisher.out().join("manifest.json").display()
    )
}

/// A publisher with 1.0.0 then 2.0.0 published, signed with key `k`;
/// 2.0.0 at `rollout2`.
fn publisher(rollout2: &str) -> (Publisher, String) {
    let p = Publisher::new();
    let public = p.keygen("k");
    let key = p.key("k");
    p.publish(&["--version", "1.0.0", "--sign", &key, &p.artifact("1.0.0")]);
    p.publish(&[
        "--version",
        "2.0.0",
        "--rollout",
        rollout2,
        "--sign",
        &key,
        &p.artifact("2.0.0"),
    ]);
    (p, public)
}

fn status(baton: &Baton) -> Value {
    serde_json::from_str(&ok(baton.dir.path(), &["status", "--json"])).unwrap()
}

/// Waits until a check of the source has ended with `outcome` (later
/// checks of an unchanged source end `nothing_new`).
fn wait_checks(baton: &Baton, outcome: &str) {
    support::wait_for(
        &format!("a check that ends {outcome}"),
        Duration::from_secs(30),
        || (status(baton)["checks"][outcome].as_u64() >= Some(1)).then_some(()),
    );
}

fn lines(path: PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[test]
fn a_yank_takes_a_host_back_to_its_installed_release_under_load() {
    let (publisher, public) = publisher("100");
    let key = publisher.key("k");
    let baton = host(&publisher, "yank-host", Some(&public), "300ms");
    baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");
    let out = publisher.out();
    // What a replay would send: the signed 2.0.0 manifest.
    let replay = (
        std::fs::read(out.join("manifest.json")).unwrap(),
        std::fs::read(out.join("manifest.json.minisig")).unwrap(),
    );
    // 1.0.0's artifact is gone: only the installed release can serve.
    std::fs::remove_file(out.join("hello-1.0.0")).unwrap();
    let load = Load::start(baton.addr(), 16, LoadMode::KeepAlive);
    load.wait_more(200);
    publisher.publish(&["--yank", "2.0.0", "--sign", &key]);
    baton.wait_current("1.0.0-");
    support::wait_version(baton.addr(), "1.0.0");
    load.wait_more(200);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
    let yanked = support::wait_for("the yanked report", Duration::from_secs(30), || {
        read_json(&out.join("reports/2.0.0/yanked/yank-host.json"))
    });
    assert_eq!(yanked["outcome"], "yanked");
    assert_eq!(yanked["from"], "2.0.0");
    assert_eq!(yanked["detail"], "back to 1.0.0");
    let seen: Value = serde_json::from_str(&crate::fleet::baton(&[
        "rollout",
        "status",
        "--from",
        out.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let two = seen["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "2.0.0")
        .unwrap();
    assert_eq!(two["yanked"], 1, "{seen}");
    let releases = baton.dir.path().join("releases");
    assert_eq!(lines(releases.join(".yanked")), vec!["2.0.0"]);
    assert_eq!(status(&baton)["yanked"][0], "2.0.0");
    let sha2 = hex::encode(sha256(&crate::release::hello_bytes("2.0.0")));
    assert!(lines(releases.join(".held")).contains(&sha2));
    assert!(baton.failed().is_empty(), "{:?}", baton.failed());
    assert_eq!(status(&baton)["trials"]["2.0.0"]["yanked"], 1);
    // No host takes a yanked version again, not even from a replayed
    // manifest that a trusted key signed.
    std::fs::write(out.join("manifest.json.minisig"), &replay.1).unwrap();
    std::fs::write(out.join("manifest.json"), &replay.0).unwrap();
    wait_checks(&baton, "skipped");
    assert!(baton.count("offers version 2.0.0 was yanked") >= 1);
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
}

#[test]
fn a_forged_or_unsigned_yank_changes_nothing() {
    let (publisher, public) = publisher("100");
    let out = publisher.out();
    let baton = host(&publisher, "forged-host", Some(&public), "300ms");
    baton.wait_current("2.0.0-");
    // Forged: the manifest rewritten to name 1.0.0 and yank 2.0.0, under
    // 2.0.0's signature.
    let mut doc: Value = read_json(&out.join("manifest.json")).unwrap();
    let one = hex::encode(sha256(&crate::release::hello_bytes("1.0.0")));
    doc["version"] = "1.0.0".into();
    doc["url"] = "hello-1.0.0".into();
    doc["sha256"] = one.clone().into();
    doc["yanked"] = serde_json::json!(["2.0.0"]);
    std::fs::write(out.join("manifest.json"), doc.to_string()).unwrap();
    wait_checks(&baton, "error");
    assert!(baton.count("bad manifest signature") >= 1);
    let releases = baton.dir.path().join("releases");
    assert!(!releases.join(".yanked").exists());
    assert!(baton.current().unwrap().starts_with("2.0.0-"));
    support::wait_version(baton.addr(), "2.0.0");
    drop(baton);

    // Unsigned, on a host that trusts no key: the list is ignored, and
    // the lower version is an ordinary refused downgrade.
    let (publisher, _) = publisher_unsigned();
    let baton = host(&publisher, "unsigned-host", None, "300ms");
    baton.wait_current("2.0.0-");
    let out = publisher.out();
    let doc = serde_json::json!({
        "version": "1.0.0", "url": "hello-1.0.0", "sha256": one, "yanked": ["2.0.0"],
    });
    std::fs::write(out.join("manifest.json"), doc.to_string()).unwrap();
    wait_checks(&baton, "error");
    assert!(baton.count("refusing downgrade from 2.0.0 to 1.0.0") >= 1);
    assert!(baton.count("a yank is honoured only in a signed manifest") >= 1);
    assert!(!baton.dir.path().join("releases/.yanked").exists());
    assert!(baton.current().unwrap().starts_with("2.0.0-"));
}

/// 1.0.0 then 2.0.0 published unsigned.
fn publisher_unsigned() -> (Publisher, ()) {
    let p = Publisher::new();
    p.publish(&["--version", "1.0.0", &p.artifact("1.0.0")]);
    p.publish(&["--version", "2.0.0", &p.artifact("2.0.0")]);
    (p, ())
}

#[test]
fn a_yank_of_a_version_a_host_never_ran_does_nothing() {
    // 2.0.0 at 0 %: the host never takes it.
    let (publisher, public) = publisher("0");
    let key = publisher.key("k");
    let baton = host(&publisher, "bystander", Some(&public), "300ms");
    let pid = status(&baton)["workers"][0]["pid"].clone();
    wait_checks(&baton, "not_in_rollout");
    publisher.publish(&["--yank", "2.0.0", "--sign", &key]);
    wait_checks(&baton, "unchanged");
    let releases = baton.dir.path().join("releases");
    assert_eq!(
        lines(releases.join(".yanked")),
        vec!["2.0.0"],
        "recorded, so a replay is refused"
    );
    let s = status(&baton);
    assert_eq!(s["workers"][0]["pid"], pid, "no cycle");
    assert_eq!(s["workers"].as_array().unwrap().len(), 1);
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
    assert!(!publisher.out().join("reports/2.0.0").exists());
}

#[test]
fn a_host_on_trial_of_the_yanked_version_ends_its_trial() {
    let (publisher, public) = publisher("0");
    let key = publisher.key("k");
    // A long settle: the trial is still running when the yank comes.
    let baton = host(&publisher, "trial-host", Some(&public), "120s");
    publisher.publish(&["--rollout", "100", "--sign", &key]);
    support::wait_for("the trial of 2.0.0", Duration::from_secs(30), || {
        (status(&baton)["on_trial"]["id"]
            .as_str()
            .is_some_and(|t| t.starts_with("2.0.0-")))
        .then_some(())
    });
    support::wait_version(baton.addr(), "2.0.0");
    // Another change comes first (a re-sign): the host notes it waits for
    // the trial, and keeps polling.
    publisher.publish(&["--rollout", "90", "--sign", &key]);
    wait_checks(&baton, "waiting");
    publisher.publish(&["--yank", "2.0.0", "--sign", &key]);
    let failed = support::wait_for("the trial's end", Duration::from_secs(30), || {
        read_json(&publisher.out().join("reports/2.0.0/failed/trial-host.json"))
    });
    assert_eq!(failed["stage"], "yank");
    support::wait_version(baton.addr(), "1.0.0");
    assert!(
        baton.current().unwrap().starts_with("1.0.0-"),
        "current never moved"
    );
    let sha2 = hex::encode(sha256(&crate::release::hello_bytes("2.0.0")));
    assert!(baton.failed().contains(&sha2));
    assert!(status(&baton)["on_trial"].is_null());
}

#[test]
fn a_way_back_cut_short_by_the_masters_death_is_retried_and_reported() {
    let (publisher, public) = publisher("100");
    let key = publisher.key("k");
    // A host that already runs 2.0.0, with 1.0.0 installed before it.
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    std::fs::remove_file(dir.path().join("releases/current")).unwrap();
    seed_release(dir.path(), "2.0.0");
    // A settle far longer than the test: the kill lands inside it.
    let baton = Baton::start(
        dir,
        &host_config(&publisher, "back-host", Some(&public), "10m"),
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "2.0.0");
    publisher.publish(&["--yank", "2.0.0", "--sign", &key]);
    let record = support::wait_for(
        "the way back's trial record",
        Duration::from_secs(30),
        || read_json(&baton.dir.path().join("releases/.trial")),
    );
    assert_eq!(record["leaves"], "2.0.0", "{record}");
    assert_eq!(record["from"], "2.0.0", "{record}");
    support::wait_version(baton.addr(), "1.0.0");
    let dir = baton.kill9();
    std::fs::write(
        dir.path().join("baton.toml"),
        host_config(&publisher, "back-host", Some(&public), "1s"),
    )
    .unwrap();
    let baton = Baton::restart(dir);
    // The way back is tried again (the yanked release serves meanwhile),
    // not failed: the host does not stay on the yanked release.
    baton.wait_current("1.0.0-");
    support::wait_version(baton.addr(), "1.0.0");
    let out = publisher.out();
    let yanked = support::wait_for("the yanked report", Duration::from_secs(30), || {
        read_json(&out.join("reports/2.0.0/yanked/back-host.json"))
    });
    assert_eq!(yanked["detail"], "back to 1.0.0");
    let promoted = support::wait_for("the promoted report", Duration::from_secs(30), || {
        read_json(&out.join("reports/1.0.0/promoted/back-host.json"))
    });
    assert_eq!(
        promoted["from"], "2.0.0",
        "the record kept what the host ran"
    );
    support::wait_for("the trial record to go", Duration::from_secs(20), || {
        (!baton.trial_recorded()).then_some(())
    });
    assert!(baton.failed().is_empty(), "{:?}", baton.failed());
    assert_eq!(status(&baton)["trials"]["2.0.0"]["yanked"], 1);
}

#[test]
fn a_yanked_version_offered_without_a_stated_version_is_refused_after_its_probe() {
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    // A yank this host learned earlier.
    std::fs::write(dir.path().join("releases/.yanked"), "2.0.0\n").unwrap();
    // A bare binary: only its probe says it is 2.0.0.
    std::fs::create_dir(dir.path().join("dist")).unwrap();
    std::fs::copy(support::hello("2.0.0"), dir.path().join("dist/hello")).unwrap();
    let config = "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\n\
                  ready_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\n\
                  [fetch]\nsource = \"file\"\npath = \"dist/hello\"\ninterval = \"200ms\"\n";
    let baton = Baton::start(dir, config);
    baton.wait_ready();
    let check = support::wait_for(
        "a check of the bare binary",
        Duration::from_secs(30),
        || {
            let status = status(&baton);
            (status["checks"]["skipped"].as_u64() >= Some(1)).then(|| status["last_check"].clone())
        },
    );
    assert!(
        check["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("version 2.0.0 was yanked"),
        "{check}"
    );
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
    assert_eq!(support::version(baton.addr()), "1.0.0");
    let installed: Vec<String> = std::fs::read_dir(baton.dir.path().join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("2.0.0"))
        .collect();
    assert!(
        installed.is_empty(),
        "nothing of 2.0.0 is installed: {installed:?}"
    );
}
