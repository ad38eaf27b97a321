//! `baton reexec`: the master replaces its own binary with `execve`, keeping
//! its PID, its sockets and its workers, under load and with zero failed
//! requests; a binary that fails its checks never replaces it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::release::{hello_bytes, publish};
use crate::support::http::HttpServer;
use crate::support::{self, Baton, Load, LoadMode};
use crate::trial::seed_release;

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(support::baton_bin())
        .args(args)
        .arg("--config")
        .arg(dir.join("baton.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn status(dir: &Path) -> serde_json::Value {
    let out = cli(dir, &["status", "--json"]);
    assert!(out.status.success(), "status failed: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (pid, state) of every worker `status` reports.
fn workers(dir: &Path) -> Vec<(u64, String)> {
    status(dir)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["pid"].as_u64().unwrap(),
                w["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Installs a copy of the baton under test at `dir/bin/baton`, as a new
/// file (a package manager's rename), and returns its path.
fn install_baton(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tmp = bin.join(".baton.new");
    support::copy_executable(&support::baton_bin(), &tmp);
    let path = bin.join("baton");
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// The file the master's PID now executes.
fn exe(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A master run from `dir/bin/baton`, serving hello 1.0.0 with a control
/// socket.
fn master(extra: &str, env: &[(&str, &str)]) -> Baton {
    let dir = Baton::dir_with_hello();
    let binary = install_baton(dir.path());
    let baton = Baton::start_from(dir, &Baton::hello_config(extra), &binary, env);
    baton.wait_ready();
    baton
}

/// Runs `baton reexec`; its output, asserting it succeeded.
fn reexec(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["reexec"];
    all.extend_from_slice(args);
    let out = cli(dir, &all);
    assert!(out.status.success(), "reexec failed: {}", text(&out));
    text(&out)
}

#[test]
fn reexec_under_load_keeps_pid_sockets_and_workers() {
    let baton = master("", &[]);
    let dir = baton.dir.path();
    let pid = baton.pid();
    let before = workers(dir);
    assert_eq!(before.len(), 1, "{before:?}");
    let mut fds = None;
    for mode in [LoadMode::KeepAlive, LoadMode::NewConnection] {
        let load = Load::start(baton.addr(), 8, mode);
        load.wait_more(200);
        // The package manager replaces the binary: a new file at the path.
        let old_exe = exe(pid);
        let binary = install_baton(dir);
        assert!(exe(pid).ends_with("(deleted)"), "{}", exe(pid));
        let said = reexec(dir, &[]);
        assert!(said.contains("re-executed"), "{said}");
        assert_eq!(baton.pid(), pid);
        assert_eq!(exe(pid), binary.to_string_lossy(), "was {old_exe}");
        assert_eq!(workers(dir), before, "the workers are the same processes");
        // A master started by a re-exec holds the same descriptors as the
        // one before it (the first may hold more, inherited from the test).
        let baseline = *fds.get_or_insert(baton.fd_count());
        support::wait_for(
            "the master's descriptors back to their count",
            Duration::from_secs(10),
            || (baton.fd_count() <= baseline).then_some(()),
        );
        load.wait_more(200);
        let report = load.finish();
        assert_eq!(report.failed, 0, "{mode:?}: {report:?}");
    }
    // SIGHUP still cycles onto a new worker; the counters carried over.
    let cycles = status(dir)["counters"]["cycles"].as_u64().unwrap();
    baton.signal(libc::SIGHUP);
    support::wait_for(
        "a new worker serving alone",
        Duration::from_secs(20),
        || {
            let now = workers(dir);
            (now.len() == 1 && now[0].0 != before[0].0 && now[0].1 == "ready").then_some(())
        },
    );
    assert_eq!(
        status(dir)["counters"]["cycles"].as_u64().unwrap(),
        cycles + 1
    );
    // SIGTERM still stops everything.
    let kids = baton.children();
    let mut baton = baton;
    baton.signal(libc::SIGTERM);
    assert!(baton.wait_exit(Duration::from_secs(20)).success());
    for (kid, _) in kids {
        assert!(
            support::wait_for_quietly(Duration::from_secs(10), || support::process_state(kid)
                .is_none()),
            "worker {kid} was left behind"
        );
    }
}

#[test]
fn a_binary_that_fails_its_checks_never_replaces_the_master() {
    let baton = master("", &[]);
    let dir = baton.dir.path();
    let pid = baton.pid();
    let exe_before = exe(pid);
    let before = workers(dir);
    let garbage = dir.join("garbage");
    std::fs::write(
        &garbage,
        (0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::set_permissions(
        &garbage,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let exits = dir.join("exits");
    support::script(&exits, "#!/bin/sh\nexit 1\n");
    let liar = dir.join("liar");
    support::script(&liar, "#!/bin/sh\necho 'hello 9.9.9'\n");
    let missing = dir.join("missing");
    for (binary, why) in [
        (&garbage, "cannot start"),
        (&exits, "exit"),
        (&liar, "not \"baton <version>\""),
        (&missing, "cannot start"),
    ] {
        let out = cli(dir, &["reexec", "--binary", binary.to_str().unwrap()]);
        assert!(!out.status.success(), "{}", text(&out));
        let said = text(&out);
        assert!(
            said.contains("failed its checks") && said.contains(why),
            "{said}"
        );
        assert!(said.contains("runs on as it was"), "{said}");
        assert_eq!(baton.pid(), pid);
        assert_eq!(exe(pid), exe_before);
        assert_eq!(workers(dir), before);
        assert_eq!(support::version(baton.addr()), "1.0.0");
    }
}

#[test]
fn reexec_during_a_cycle_waits_for_it_and_completes_both() {
    // A worker takes 2s to count as ready: the re-exec asked for during
    // that start waits for it.
    let baton = master("ready = \"delay:2s\"", &[]);
    let dir = baton.dir.path();
    let first = workers(dir);
    let load = Load::start(baton.addr(), 4, LoadMode::KeepAlive);
    baton.signal(libc::SIGHUP);
    support::wait_for("a second worker starting", Duration::from_secs(10), || {
        (workers(dir).len() == 2).then_some(())
    });
    let said = reexec(dir, &[]);
    assert!(said.contains("re-executed"), "{said}");
    let now = workers(dir);
    assert!(
        now.iter()
            .any(|(pid, state)| *pid != first[0].0 && state == "ready"),
        "the new worker serves: {now:?}"
    );
    support::wait_for("the old worker gone", Duration::from_secs(20), || {
        support::process_state(first[0].0 as u32)
            .is_none()
            .then_some(())
    });
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
}

#[test]
fn reexec_during_a_trial_keeps_the_trial_and_promotes_it() {
    let server = HttpServer::start(true);
    publish(&server, "1.0.0", "hello-1.0.0", hello_bytes("1.0.0"));
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let binary = install_baton(dir.path());
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"15s\"\n\
         [fetch]\nsource = \"http\"\nurl = \"{}\"\ninterval = \"200ms\"\n",
        server.url("/manifest.json")
    );
    let baton = Baton::start_from(dir, &config, &binary, &[]);
    baton.wait_ready();
    let dir = baton.dir.path();
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    let trial_worker = support::wait_for(
        "2.0.0 on trial and serving",
        Duration::from_secs(20),
        || {
            let s = status(dir);
            let on_trial = s["on_trial"]["version"].as_str() == Some("2.0.0");
            let worker = s["workers"]
                .as_array()?
                .iter()
                .find(|w| w["state"] == "on trial")?["pid"]
                .as_u64();
            on_trial.then_some(worker).flatten()
        },
    );
    let said = reexec(dir, &[]);
    assert!(said.contains("re-executed"), "{said}");
    let s = status(dir);
    assert_eq!(s["on_trial"]["version"], "2.0.0", "{s:#}");
    baton.wait_current("2.0.0");
    assert_eq!(support::version(baton.addr()), "2.0.0");
    assert!(
        workers(dir).iter().any(|(pid, _)| *pid == trial_worker),
        "the trial's worker kept serving"
    );
    assert!(baton.failed().is_empty(), "{:?}", baton.failed());
}

#[test]
fn twenty_reexecs_in_a_row_leak_nothing() {
    let baton = master("", &[]);
    let dir = baton.dir.path();
    let before = workers(dir);
    // The first master may hold descriptors inherited from the test; count
    // from the first re-exec on.
    reexec(dir, &[]);
    let fds = baton.fd_count();
    let kids = baton.children().len();
    let load = Load::start(baton.addr(), 4, LoadMode::KeepAlive);
    for _ in 0..20 {
        reexec(dir, &[]);
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(workers(dir), before);
    // A leak grows with every re-exec; a connection still closing does not.
    support::wait_for(
        "the master's descriptors back to their count",
        Duration::from_secs(10),
        || (baton.fd_count() <= fds).then_some(()),
    );
    assert_eq!(baton.children().len(), kids, "processes under the master");
}

#[test]
fn a_master_that_cannot_read_the_state_keeps_the_sockets_and_cycles() {
    // The old master writes a state version the new one does not know.
    let baton = master("", &[("BATON_TEST_REEXEC_VERSION", "99")]);
    let dir = baton.dir.path();
    let old = workers(dir);
    let load = Load::start(baton.addr(), 8, LoadMode::KeepAlive);
    load.wait_more(100);
    let out = cli(dir, &["reexec", "--json"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        reply["fallback"]
            .as_str()
            .unwrap_or("")
            .contains("version 99"),
        "{reply:#}"
    );
    support::wait_for(
        "a fresh worker serving alone",
        Duration::from_secs(20),
        || {
            let now = workers(dir);
            (now.len() == 1 && now[0].0 != old[0].0 && now[0].1 == "ready").then_some(())
        },
    );
    support::wait_for("the old worker gone", Duration::from_secs(20), || {
        support::process_state(old[0].0 as u32)
            .is_none()
            .then_some(())
    });
    load.wait_more(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
}

#[test]
fn under_systemd_reloading_and_ready_bracket_the_reexec() {
    let dir = Baton::dir_with_hello();
    let binary = install_baton(dir.path());
    let socket_path = dir.path().join("systemd-notify.sock");
    let mut notify = support::NotifyListener::bind(&socket_path);
    let baton = Baton::start_from(
        dir,
        &Baton::hello_config(""),
        &binary,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut wait_message = |what: &str| notify.wait(what);
    wait_message("READY=1");
    let pid = baton.pid();
    reexec(baton.dir.path(), &[]);
    let reloading = wait_message("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready = wait_message("READY=1");
    assert!(ready.contains("re-executed"), "{ready}");
    assert_eq!(baton.pid(), pid);
    assert_eq!(
        status(baton.dir.path())["counters"]["reexecs"].as_u64(),
        Some(1)
    );
}

#[test]
fn a_library_master_reexecs_into_its_own_promoted_build() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["app", "dist"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let app = dir.path().join("app/hello");
    support::copy_executable(&support::hello("1.0.0"), &app);
    let log = dir.path().join("hello.log");
    let mut master = Command::new(&app)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--reexec-on-upgrade",
            "--fetch-file",
        ])
        .arg(dir.path().join("dist/hello"))
        .env("BATON_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = master.id();
    let addr = support::wait_listening(&log);
    support::wait_version(addr, "1.0.0");
    let load = Load::start(addr, 4, LoadMode::KeepAlive);
    support::copy_executable(&support::hello("2.0.0"), &dir.path().join("dist/.hello"));
    std::fs::rename(
        dir.path().join("dist/.hello"),
        dir.path().join("dist/hello"),
    )
    .unwrap();
    support::wait_version(addr, "2.0.0");
    // The master itself now runs the promoted build, under the same PID.
    let two = std::fs::read(support::hello("2.0.0")).unwrap();
    // Settle, then the new binary's own checks, then the exec: generous on
    // a busy machine; the log says where it stopped if it never happens.
    let reexeced = support::wait_for_quietly(Duration::from_secs(120), || {
        std::fs::read(format!("/proc/{pid}/exe")).is_ok_and(|running| running == two)
            && exe(pid) == app.to_string_lossy()
    });
    assert!(
        reexeced,
        "the master never ran the 2.0.0 executable:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        master.try_wait().unwrap().is_none(),
        "the master kept its PID"
    );
    load.wait_more(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{report:?}");
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = support::wait_for("the master to exit", Duration::from_secs(15), || {
        master.try_wait().unwrap()
    });
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}
