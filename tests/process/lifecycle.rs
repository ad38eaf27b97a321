//! Crash restarts, stopping, and resource hygiene.

use std::time::Duration;

use crate::support::{self, Baton, Load, LoadMode};

#[test]
fn killed_worker_is_restarted() {
    let baton = Baton::start(Baton::dir_with_hello(), &Baton::hello_config(""));
    baton.wait_ready();
    let (worker, _) = baton.children()[0];
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    baton.wait_count("worker is ready", 2, Duration::from_secs(10));
    assert!(
        baton.log().contains("died: signal 9 (SIGKILL)"),
        "{}",
        baton.log()
    );
    assert!(baton.log().contains("restarting the worker in 100ms"));
    assert_eq!(support::version(baton.addr()), "1.0.0");
    let now: Vec<u32> = baton.children().iter().map(|c| c.0).collect();
    assert!(!now.contains(&worker) && now.len() == 1, "{now:?}");
}

#[test]
fn crash_looping_worker_does_not_make_the_master_spin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    support::script(&dir.path().join("bin/hello"), "echo crashing >&2\nexit 1");
    let baton = Baton::start(dir, &Baton::hello_config("restart_backoff_max = \"1s\""));
    // The waits double up to the cap and stay there: wait for the state
    // (the cap reached twice), then read the whole sequence.
    baton.wait_count("restarting the worker in 1s", 2, Duration::from_secs(30));
    let delays: Vec<String> = baton
        .log()
        .lines()
        .filter_map(|l| l.split("restarting the worker in ").nth(1))
        // The delay, without the fields that follow it.
        .filter_map(|d| d.split_whitespace().next().map(str::to_owned))
        .take(6)
        .collect();
    assert_eq!(delays, ["100ms", "200ms", "400ms", "800ms", "1s", "1s"]);
    let cpu = cpu_seconds(baton.pid());
    assert!(
        cpu < 1.0,
        "the master used {cpu} s of CPU while its worker crash-looped"
    );
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5); here 11 and 12.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no memory preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let mut baton = Baton::start(Baton::dir_with_hello(), &Baton::hello_config(""));
    baton.wait_ready();
    let workers = baton.children();
    let addr = baton.addr();
    let slow = std::thread::spawn(move || support::get(addr, "/?sleep=1500"));
    support::wait_for(
        "the slow request to reach the worker",
        Duration::from_secs(5),
        || {
            // Accepted by the worker, not just queued: a connection still
            // in the backlog has no socket inode yet. Once accepted, the
            // drain's grace lets its request arrive.
            (tcp_accepted_to(addr) >= 1).then_some(())
        },
    );
    baton.signal(libc::SIGTERM);
    let reply = slow
        .join()
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(reply, (200, "hello 1.0.0\n".to_owned()));
    let status = baton.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", baton.log());
    for (pid, _) in workers {
        assert_eq!(support::process_state(pid), None, "worker {pid} survived");
    }
    assert!(
        support::get(addr, "/").is_err(),
        "nothing listens after the master exits"
    );
}

/// Established connections to `addr` that its server accepted (from
/// /proc/net/tcp: one still in the accept queue has inode 0).
fn tcp_accepted_to(addr: std::net::SocketAddr) -> usize {
    let port = format!(":{:04X}", addr.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[1].ends_with(&port) && f[3] == "01" && f[9] != "0"
        })
        .count()
}

#[test]
fn second_sigterm_stops_hard() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    // A worker that ignores SIGTERM and says it is ready after a delay.
    support::script(
        &dir.path().join("bin/hello"),
        "trap '' TERM\nexec sleep 600",
    );
    let mut baton = Baton::start(
        dir,
        "[program]\ncommand = \"bin/hello\"\nlisten = [\"127.0.0.1:0\"]\nready = \"delay:100ms\"\ndrain_timeout = \"60s\"\n",
    );
    baton.wait_ready();
    let workers = baton.children();
    baton.signal(libc::SIGTERM);
    baton.wait_count("stopping all workers gracefully", 1, Duration::from_secs(5));
    baton.signal(libc::SIGTERM);
    let status = baton.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    for (pid, _) in workers {
        assert_eq!(
            support::process_state(pid),
            None,
            "worker {pid} survived a hard stop"
        );
    }
}

#[test]
fn fifty_cycles_leak_no_fd_and_leave_no_zombie() {
    let dir = Baton::dir_with_hello();
    let baton = Baton::start(dir, &Baton::hello_config(""));
    baton.wait_ready();
    let load = Load::start(baton.addr(), 8, LoadMode::KeepAlive);
    baton.cycle();
    support::wait_for(
        "the first old worker to exit",
        Duration::from_secs(15),
        || (baton.children().len() == 1).then_some(()),
    );
    let fds = baton.fd_count();
    for _ in 0..49 {
        baton.cycle();
    }
    support::wait_for("old workers to exit", Duration::from_secs(20), || {
        (baton.children().len() == 1).then_some(())
    });
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    // An exited worker's stderr pipe closes shortly after it is reaped.
    let back = support::wait_for_quietly(Duration::from_secs(10), || baton.fd_count() <= fds);
    assert!(
        back,
        "the master's fd count grew over 50 cycles: {} from {fds}",
        baton.fd_count()
    );
    assert!(
        baton.children().iter().all(|(_, state)| *state != 'Z'),
        "zombie children: {:?}",
        baton.children()
    );
}

#[test]
fn worker_inherits_only_the_sockets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    let out = dir.path().join("env.txt");
    // Python lists its descriptors first thing; the listing's own directory
    // fd takes the lowest free number, so a leaked master fd shows either as
    // itself or by pushing the listing's fd above 7.
    std::fs::write(
        dir.path().join("bin/report.py"),
        format!(
            r#"import os, time
fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
env = {{k: v for k, v in os.environ.items() if k.startswith(("LISTEN_", "BATON_", "NOTIFY_SOCKET"))}}
with open({out:?}, "w") as f:
    f.write(repr((os.getpid(), fds, env)))
time.sleep(600)
"#
        ),
    )
    .unwrap();
    let baton = Baton::start(
        dir,
        "[program]\ncommand = \"python3\"\nargs = [\"bin/report.py\"]\nready = \"delay:300ms\"\nlisten = [\"127.0.0.1:0\", \"web6=[::1]:0\", \"unix:app.sock\", \"udp:127.0.0.1:0\"]\n",
    );
    baton.wait_ready();
    let text = support::wait_for("the report", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).ok().filter(|t| !t.is_empty())
    });
    let pid = baton.children()[0].0;
    assert!(
        text.starts_with(&format!("({pid}, [0, 1, 2, 3, 4, 5, 6, 7], ")),
        "{text}"
    );
    for var in [
        format!("'LISTEN_PID': '{pid}'"),
        "'LISTEN_FDS': '4'".to_owned(),
        "'LISTEN_FDNAMES': 'listen0:web6:listen2:listen3'".to_owned(),
        "'BATON_WORKER_ID': '1'".to_owned(),
        "'NOTIFY_SOCKET': '/".to_owned(),
    ] {
        assert!(text.contains(&var), "{var} missing in {text}");
    }
}

#[test]
fn worker_that_ignores_the_stop_signal_is_killed_at_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    support::script(
        &dir.path().join("bin/hello"),
        "trap '' TERM\nexec sleep 600",
    );
    let baton = Baton::start(
        dir,
        "[program]\ncommand = \"bin/hello\"\nlisten = [\"127.0.0.1:0\"]\nready = \"delay:100ms\"\ndrain_timeout = \"1s\"\n",
    );
    baton.wait_ready();
    let (old, _) = baton.children()[0];
    baton.cycle();
    baton.wait_count(
        "did not exit within drain_timeout (1s); killing it",
        1,
        Duration::from_secs(10),
    );
    support::wait_for("the old worker to be gone", Duration::from_secs(5), || {
        support::process_state(old).is_none().then_some(())
    });
    assert_eq!(baton.children().len(), 1);
}
