//! baton as PID 1 of a new pid namespace, as in deploy/container: it
//! serves, reaps the orphans a worker leaves (nobody else would: there is
//! no init above it), and stops gracefully on SIGTERM (PID 1 gets no
//! default signal actions, so this needs baton's own handlers).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support;

/// Whether `unshare --pid --fork --mount-proc` works here (it needs root or
/// user namespaces).
fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn baton_as_pid_1_serves_reaps_orphans_and_stops_on_sigterm() {
    if !unshare_works() {
        eprintln!("skipped: `unshare --pid --fork --mount-proc` does not work here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("bin")).unwrap();
    // The worker leaves an orphan that exits ten seconds later, then becomes
    // the hello server (exec keeps its PID, as LISTEN_PID requires).
    support::script(
        &root.join("bin/orphaner"),
        &format!("(sleep 10 &)\nexec {}", support::hello("1.0.0").display()),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "[program]\ncommand = \"bin/orphaner\"\nlisten = [\"127.0.0.1:{port}\"]\n\
         ready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n"
    );
    std::fs::write(root.join("baton.toml"), config).unwrap();
    let log = root.join("baton.log");
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(support::baton_bin())
        .args(["run", "--config"])
        .arg(root.join("baton.toml"))
        .env("BATON_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill(2) has no memory preconditions. Killing PID 1
            // of the namespace kills everything in it.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let baton = support::wait_for("baton under unshare", Duration::from_secs(10), || {
        support::children(unshare.id())
            .into_iter()
            .map(|(pid, _)| pid)
            .find(|pid| comm(*pid) == "baton")
    });
    let _kill = Kill(baton);
    // PID 1 inside: its status file lists its pid in each namespace.
    let status = std::fs::read_to_string(format!("/proc/{baton}/status")).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap_or_default()
        .to_owned();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    support::wait_for("hello 1.0.0 behind PID 1", Duration::from_secs(15), || {
        support::get(addr, "/")
            .ok()
            .filter(|(_, body)| body == "hello 1.0.0\n")
    });
    // The orphan was adopted by baton (no init above it), exits, and is
    // reaped: no zombie stays among baton's children.
    support::wait_for("baton to adopt the orphan", Duration::from_secs(10), || {
        support::children(baton)
            .iter()
            .any(|(pid, _)| comm(*pid) == "sleep")
            .then_some(())
    });
    support::wait_for(
        "the worker's orphan to exit and be reaped",
        Duration::from_secs(30),
        || {
            let kids = support::children(baton);
            let sleeping = kids.iter().any(|(pid, _)| comm(*pid) == "sleep");
            let zombies = kids.iter().any(|(_, state)| *state == 'Z');
            (!sleeping && !zombies && kids.len() == 1).then_some(())
        },
    );
    // SAFETY: as above; SIGTERM asks baton to drain and exit.
    unsafe { libc::kill(baton as i32, libc::SIGTERM) };
    let status = support::wait_for("baton to exit", Duration::from_secs(20), || {
        unshare.try_wait().unwrap()
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}:\n{text}");
    assert!(
        text.contains("SIGTERM: stopping all workers gracefully"),
        "{text}"
    );
}
