//! Health-gated trials: a release must also pass `[releases] health` while
//! its worker serves alone during `settle`; failures in a row end the trial
//! as an exit would. After promotion, failures are only reported.

use std::path::Path;
use std::time::Duration;

use crate::release::{hello_bytes, publish, sha256};
use crate::support::http::HttpServer;
use crate::support::{self, Baton, Load, LoadMode};
use crate::trial::seed_release;

/// A master serving a seeded 1.0.0 with these `[releases]` keys, fed by a
/// manifest that offers 1.0.0; `setup` prepares the dir first.
fn serving(releases: &str, setup: impl FnOnce(&Path)) -> (HttpServer, Baton) {
    let server = HttpServer::start(true);
    publish(&server, "1.0.0", "hello-1.0.0", hello_bytes("1.0.0"));
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    setup(dir.path());
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nhealth_interval = \"200ms\"\n{releases}\n\
         [fetch]\nsource = \"http\"\nurl = \"{}\"\ninterval = \"200ms\"\n",
        server.url("/manifest.json")
    );
    let baton = Baton::start(dir, &config);
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    (server, baton)
}

fn sha2() -> String {
    hex::encode(sha256(&hello_bytes("2.0.0")))
}

fn wait_failed(baton: &Baton, sha: &str) {
    support::wait_for(
        "2.0.0 to be recorded as failed",
        Duration::from_secs(30),
        || baton.failed().iter().any(|f| f == sha).then_some(()),
    );
}

fn executable(path: &Path, body: &str) {
    support::script(path, body);
}

#[test]
fn unhealthy_release_is_not_promoted_and_current_serves_again_under_load() {
    let (server, baton) = serving("health = \"http:/healthz\"\nsettle = \"10m\"", |dir| {
        std::fs::write(dir.join("unhealthy-2.0.0"), "").unwrap();
    });
    let one = baton.current().unwrap();
    let load = Load::start(baton.addr(), 16, LoadMode::KeepAlive);
    load.wait_more(200);
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    wait_failed(&baton, &sha2());
    support::wait_version(baton.addr(), "1.0.0");
    load.wait_more(200);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(
        report.versions.contains_key("hello 2.0.0"),
        "2.0.0 served during its trial: {report:?}"
    );
    assert_eq!(baton.current(), Some(one));
    baton.wait_trial_ended();
    assert!(
        baton.log().contains("GET /healthz answered 503"),
        "the reason is logged"
    );
}

#[test]
fn release_that_turns_unhealthy_after_two_good_checks_is_caught() {
    // Passes twice, then fails; records what it was told.
    let (server, baton) = serving("health = \"exec:bin/check\"\nsettle = \"10m\"", |dir| {
        std::fs::create_dir(dir.join("bin")).unwrap();
        executable(
            &dir.join("bin/check"),
            "n=$(cat count 2>/dev/null || echo 0)\necho $((n+1)) > count\n\
             echo \"$BATON_VERSION $BATON_WORKER_PID\" > seen\n[ \"$n\" -lt 2 ] || { echo 'pool broken' >&2; exit 1; }",
        );
    });
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    wait_failed(&baton, &sha2());
    support::wait_version(baton.addr(), "1.0.0");
    let dir = baton.dir.path();
    let checks: u32 = std::fs::read_to_string(dir.join("count"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(checks >= 5, "2 good and 3 bad checks, got {checks}");
    let seen = std::fs::read_to_string(dir.join("seen")).unwrap();
    assert!(seen.starts_with("2.0.0 "), "{seen}");
    assert!(
        baton.log().contains("pool broken"),
        "the check's output is logged"
    );
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
}

#[test]
fn hanging_exec_check_is_killed_at_its_timeout_and_counts_as_a_failure() {
    let (server, baton) = serving(
        "health = \"exec:bin/check\"\nhealth_timeout = \"300ms\"\nhealth_failures = 2\nsettle = \"10m\"",
        |dir| {
            std::fs::create_dir(dir.join("bin")).unwrap();
            executable(&dir.join("bin/check"), "echo $$ >> pids\nexec sleep 300");
        },
    );
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    wait_failed(&baton, &sha2());
    support::wait_version(baton.addr(), "1.0.0");
    let pids = std::fs::read_to_string(baton.dir.path().join("pids")).unwrap();
    for pid in pids.split_whitespace().map(|p| p.parse::<u32>().unwrap()) {
        support::wait_for("the hung check to be gone", Duration::from_secs(10), || {
            support::process_state(pid).is_none().then_some(())
        });
    }
    assert!(baton.log().contains("did not exit within 300ms; killed it"));
}

#[test]
fn kill9_during_a_health_gated_trial_fails_it_at_restart() {
    let (server, baton) = serving("health = \"http:/healthz\"\nsettle = \"10m\"", |_| {});
    let one = baton.current().unwrap();
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    support::wait_version(baton.addr(), "2.0.0");
    assert!(baton.trial_recorded());
    let dir = baton.kill9();
    let baton = Baton::restart(dir);
    baton.wait_ready();
    support::wait_version(baton.addr(), "1.0.0");
    assert_eq!(baton.current(), Some(one));
    wait_failed(&baton, &sha2());
    baton.wait_trial_ended();
}

#[test]
fn unhealthy_promoted_release_is_reported_not_rolled_back() {
    let (server, baton) = serving(
        "health = \"http:/healthz\"\nsettle = \"1s\"\nhealth_after = true",
        |_| {},
    );
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    let two = baton.wait_current("2.0.0-");
    std::fs::write(baton.dir.path().join("unhealthy-2.0.0"), "").unwrap();
    baton.wait_count("is unhealthy", 1, Duration::from_secs(20));
    assert_eq!(baton.current(), Some(two));
    assert_eq!(support::version(baton.addr()), "2.0.0");
    assert!(baton.failed().is_empty(), "{:?}", baton.failed());
    std::fs::remove_file(baton.dir.path().join("unhealthy-2.0.0")).unwrap();
    baton.wait_count("is healthy again", 1, Duration::from_secs(20));
}
