//! A fresh host's first release, when the master dies during its trial
//! (SIGKILL: power loss, the OOM killer, a container restart). With no
//! `current` to go back to, an interrupted trial is counted, not failed:
//! it is begun again after a back-off, and only after `[releases]
//! trial_attempts` interrupted attempts is the release quarantined, loudly.

use std::path::Path;
use std::time::Duration;

use crate::control::{cli, ok};
use crate::release::sha256;
use crate::support::{self, Baton};

/// A fresh host: nothing installed, a file source offering `bytes`.
fn fresh_host(bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("dist")).unwrap();
    std::fs::write(dir.path().join("dist/.hello"), bytes).unwrap();
    std::fs::set_permissions(
        dir.path().join("dist/.hello"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(
        dir.path().join("dist/.hello"),
        dir.path().join("dist/hello"),
    )
    .unwrap();
    dir
}

fn config(settle: &str, interval: &str) -> String {
    format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\n\
         ready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n\
         [releases]\nbinary = \"hello\"\nsettle = \"{settle}\"\n\
         [fetch]\nsource = \"file\"\npath = \"dist/hello\"\ninterval = \"{interval}\"\n\
         [control]\nmetrics = \"127.0.0.1:0\"\n"
    )
}

/// The attempts the trial record on disk counts, if there is one.
fn recorded_attempts(dir: &Path) -> Option<u64> {
    let text = std::fs::read(dir.join("releases/.trial")).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&text).unwrap();
    Some(record["attempts"].as_u64().unwrap_or(1))
}

fn digest_list(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("releases").join(name))
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn a_first_trial_interrupted_once_is_tried_again_and_promoted() {
    let hello = std::fs::read(support::hello("1.0.0")).unwrap();
    // A settle far longer than the test: the kill lands inside it.
    let baton = Baton::start(fresh_host(&hello), &config("10m", "200ms"));
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    assert_eq!(baton.current(), None, "still on trial");
    assert_eq!(recorded_attempts(baton.dir.path()), Some(1));
    let dir = baton.kill9();
    // The restarted master (as systemd would start it) settles quickly.
    std::fs::write(dir.path().join("baton.toml"), config("1s", "200ms")).unwrap();
    let baton = Baton::restart(dir);
    support::wait_version(baton.addr(), "1.0.0");
    let one = baton.wait_current("1.0.0-");
    support::wait_for("the trial record to go", Duration::from_secs(20), || {
        (!baton.trial_recorded()).then_some(())
    });
    assert!(baton.failed().is_empty(), "{:?}", baton.failed());
    assert!(digest_list(baton.dir.path(), ".quarantined").is_empty());
    let status: serde_json::Value =
        serde_json::from_str(&ok(baton.dir.path(), &["status", "--json"])).unwrap();
    assert_eq!(status["current"]["id"], one.as_str());
    assert!(status["stranded"].is_null(), "{status:#}");
    // The source still offers the same bytes: the running release.
    assert_eq!(support::version(baton.addr()), "1.0.0");
}

#[test]
fn a_first_release_that_kills_its_master_at_each_start_is_quarantined() {
    // Probes fine; as a worker it SIGKILLs the master that started it.
    let script = b"#!/bin/sh\nif [ \"$BATON_PROBE\" = 1 ]; then echo 1.0.0; exit 0; fi\n\
                   kill -9 $PPID\nexec sleep 300\n";
    let sha = hex::encode(sha256(script));
    let mut baton = Baton::start(fresh_host(script), &config("10m", "200ms"));
    for attempt in 1..=3 {
        let dir = baton.died(Duration::from_secs(60));
        assert_eq!(
            recorded_attempts(dir.path()),
            Some(attempt),
            "attempt {attempt} is on record when its master dies"
        );
        assert!(digest_list(dir.path(), ".failed").is_empty());
        baton = Baton::restart(dir);
    }
    // The fourth master quarantines it and says so.
    let dir = baton.dir.path().to_owned();
    let status: serde_json::Value =
        support::wait_for("baton status", Duration::from_secs(20), || {
            let out = cli(&dir, &["status", "--json"]);
            out.status
                .success()
                .then(|| serde_json::from_slice(&out.stdout).unwrap())
        });
    let stranded = status["stranded"].as_str().unwrap_or_default();
    assert!(
        stranded.contains(&format!("release 1.0.0-{}", &sha[..8]))
            && stranded.contains("interrupted by the master's death 3 times")
            && stranded.contains("baton upgrade --force"),
        "{status:#}"
    );
    assert_eq!(status["quarantined"][0], sha.as_str(), "{status:#}");
    assert!(status["workers"].as_array().unwrap().is_empty());
    assert_eq!(digest_list(&dir, ".quarantined"), vec![sha.clone()]);
    assert!(
        digest_list(&dir, ".failed").is_empty(),
        "nothing proved it bad"
    );
    baton.wait_trial_ended();
    assert_eq!(baton.current(), None);
    let human = ok(&dir, &["status"]);
    assert!(human.contains("STRANDED   release 1.0.0-"), "{human}");
    let (code, metrics) = support::get(baton.metrics_addr(), "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.lines().any(|l| l == "baton_stranded 1"),
        "{metrics}"
    );
    // The source offers the same bytes again: skipped, no worker starts.
    support::wait_for("a skipped check", Duration::from_secs(20), || {
        let out = cli(&dir, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (status["checks"]["skipped"].as_u64() >= Some(1)).then_some(())
    });
    assert!(baton.children().is_empty(), "{:?}", baton.children());
}
