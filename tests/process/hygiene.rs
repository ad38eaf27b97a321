//! Process hygiene: a worker's process group is killed before the worker
//! is reaped, and the master, a child subreaper, reaps what a worker
//! orphans, so nothing a worker leaves behind outlives it or lingers as a
//! zombie.

use std::path::Path;
use std::time::Duration;

use crate::support::{self, Baton};

/// A worker that double-forks a grandchild ignoring SIGTERM (orphaned at
/// once: its parent subshell exits) and writes its PID to
/// `orphan-<worker id>.pid`; then `rest` runs.
fn worker(dir: &Path, rest: &str) {
    std::fs::create_dir(dir.join("bin")).unwrap();
    support::script(
        &dir.join("bin/hello"),
        &format!(
            "( sh -c 'trap \"\" TERM; echo $$ > orphan-$BATON_WORKER_ID.pid.tmp; \
             mv orphan-$BATON_WORKER_ID.pid.tmp orphan-$BATON_WORKER_ID.pid; exec sleep 600' & )\n{rest}"
        ),
    );
}

const CONFIG: &str = "[program]\ncommand = \"bin/hello\"\nlisten = [\"127.0.0.1:0\"]\nready = \"delay:100ms\"\ndrain_timeout = \"5s\"\n";

/// The orphan of worker `id`, once it is the master's child.
fn orphan(baton: &Baton, id: u64) -> u32 {
    let file = baton.dir.path().join(format!("orphan-{id}.pid"));
    let pid: u32 = support::wait_for("the orphan's pid", Duration::from_secs(10), || {
        std::fs::read_to_string(&file).ok()?.trim().parse().ok()
    });
    support::wait_for(
        "the orphan to be reparented to the master",
        Duration::from_secs(10),
        || (parent(pid) == Some(baton.pid())).then_some(()),
    );
    pid
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits until `pid` is gone (reaped, not a zombie) and the master has no
/// zombie children.
fn wait_reaped(baton: &Baton, pid: u32) {
    support::wait_for("the orphan to be reaped", Duration::from_secs(10), || {
        support::process_state(pid).is_none().then_some(())
    });
    support::wait_for("no zombie children", Duration::from_secs(10), || {
        (!baton.children().iter().any(|&(_, s)| s == 'Z')).then_some(())
    });
}

#[test]
fn a_cycled_workers_orphans_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    worker(dir.path(), "exec sleep 600");
    let baton = Baton::start(dir, CONFIG);
    baton.wait_ready();
    let first = orphan(&baton, 1);
    baton.cycle();
    wait_reaped(&baton, first);
    // The new worker's own orphan is left alone.
    let second = orphan(&baton, 2);
    assert_eq!(support::process_state(second).map(|s| s != 'Z'), Some(true));
}

#[test]
fn a_crashed_workers_orphans_go_with_it_and_its_status_is_its_own() {
    let dir = tempfile::tempdir().unwrap();
    worker(
        dir.path(),
        "[ \"$BATON_WORKER_ID\" = 1 ] && { while [ ! -e crash ]; do sleep 0.02; done; exit 3; }\nexec sleep 600",
    );
    let baton = Baton::start(dir, CONFIG);
    baton.wait_ready();
    let first = orphan(&baton, 1);
    std::fs::write(baton.dir.path().join("crash"), "").unwrap();
    baton.wait_count("worker is ready", 2, Duration::from_secs(15));
    wait_reaped(&baton, first);
    // The worker's exit status reached its owner, not the orphan reaper.
    assert_eq!(baton.count("died: exit code 3"), 1, "{}", baton.log());
}
