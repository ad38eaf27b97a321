//! New workers that fail: the old worker keeps serving, the failure is
//! reported, the bad worker is gone.

use std::time::Duration;

use crate::support::{self, Baton, Load, LoadMode};

fn failed_cycle(bad_script: &str, config_extra: &str, expect_in_log: &[&str]) {
    failed_cycle_to(
        |dir| {
            let bad = dir.join("bin/bad");
            support::script(&bad, bad_script);
            bad
        },
        config_extra,
        expect_in_log,
    );
}

/// Cycles under load onto what `target` makes in the service's directory:
/// the cycle fails with `expect_in_log`, the old worker serves throughout,
/// the bad one is gone, and a good build still cycles in afterwards.
fn failed_cycle_to(
    target: impl FnOnce(&std::path::Path) -> std::path::PathBuf,
    config_extra: &str,
    expect_in_log: &[&str],
) {
    let dir = Baton::dir_with_hello();
    let link = dir.path().join("bin/hello");
    let bad = target(dir.path());
    let baton = Baton::start(dir, &Baton::hello_config(config_extra));
    baton.wait_ready();
    let load = Load::start(baton.addr(), 64, LoadMode::KeepAlive);
    load.wait_more(300);

    support::point(&link, &bad);
    baton.signal(libc::SIGHUP);
    baton.wait_count(
        "cycle failed; the running worker keeps serving",
        1,
        Duration::from_secs(20),
    );
    load.wait_more(300);
    let report = load.finish();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(report.versions.keys().collect::<Vec<_>>(), ["hello 1.0.0"]);
    let log = baton.log();
    for text in expect_in_log {
        assert!(log.contains(text), "log lacks {text:?}:\n{log}");
    }
    support::wait_for("the bad worker to be gone", Duration::from_secs(10), || {
        (baton.children().len() == 1).then_some(())
    });
    assert_eq!(support::version(baton.addr()), "1.0.0");

    // The service can still be cycled onto a good build afterwards.
    support::point(&link, &support::hello("2.0.0"));
    baton.cycle();
    support::wait_version(baton.addr(), "2.0.0");
}

#[test]
fn new_worker_that_exits_at_once_leaves_the_old_one_serving() {
    failed_cycle(
        "echo 'boom: cannot open database' >&2\nexit 3",
        "",
        &[
            "exited before it was ready: exit code 3",
            "boom: cannot open database",
        ],
    );
}

#[test]
fn new_worker_that_cannot_be_executed_leaves_the_old_one_serving() {
    failed_cycle_to(
        |dir| dir.join("bin/missing"),
        "",
        &["failed to start: cannot start", "No such file or directory"],
    );
}

#[test]
fn http_readiness_starts_the_worker_once_its_health_path_answers() {
    let baton = Baton::start(
        Baton::dir_with_hello(),
        &Baton::hello_config("ready = \"http:/\""),
    );
    baton.wait_ready();
    assert!(
        baton
            .log()
            .contains("worker is ready: its health check answered"),
        "{}",
        baton.log()
    );
    assert_eq!(support::version(baton.addr()), "1.0.0");
}

#[test]
fn http_readiness_that_never_answers_2xx_times_out() {
    let dir = Baton::dir_with_hello();
    let config = "[program]\ncommand = \"bin/hello\"\nlisten = [\"127.0.0.1:0\"]\nready = \"http:/missing\"\nready_timeout = \"1s\"\n";
    let baton = Baton::start(dir, config);
    baton.wait_count(
        "was not ready within 1s; killed it",
        1,
        Duration::from_secs(10),
    );
    baton.wait_count("restarting the worker in", 1, Duration::from_secs(5));
}
