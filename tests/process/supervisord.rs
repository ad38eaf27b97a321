//! Under a real supervisord: `supervisorctl signal SIGUSR2` cycles the worker
//! and supervisord keeps seeing the same PID RUNNING.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::{self, Baton};

/// supervisord and supervisorctl: from `BATON_TEST_SUPERVISOR_BIN` (a
/// directory; ci/test installs supervisor there), else from PATH.
pub(crate) fn tool(name: &str) -> PathBuf {
    let path = match std::env::var_os("BATON_TEST_SUPERVISOR_BIN") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(name),
    };
    let found = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(_) => path.is_file(),
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join(name).is_file()),
    };
    assert!(
        found,
        "{} is not installed: run ci/test, which installs supervisor",
        path.display()
    );
    path
}

fn ctl(conf: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(tool("supervisorctl"))
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// deploy/supervisord/baton.conf, the program section baton ships, with
/// its install paths pointing into `root` and at the baton under test.
fn shipped_program_section(root: &std::path::Path) -> String {
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/supervisord/baton.conf");
    let mut text = std::fs::read_to_string(&shipped).unwrap();
    let root = root.display().to_string();
    for (from, to) in [
        (
            "/usr/local/bin/baton",
            support::baton_bin().display().to_string(),
        ),
        ("/etc/baton/baton.toml", format!("{root}/baton.toml")),
        ("directory=/etc/baton", format!("directory={root}")),
        ("/var/log/baton/baton.log", format!("{root}/baton.log")),
    ] {
        assert!(
            text.contains(from),
            "{} no longer has {from}",
            shipped.display()
        );
        text = text.replace(from, &to);
    }
    assert!(text.contains("[program:baton]"));
    text
}

#[test]
fn supervisorctl_signal_sigusr2_cycles_under_supervisord() {
    let dir = Baton::dir_with_hello();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = dir.path();
    std::fs::write(
        root.join("baton.toml"),
        format!("[program]\ncommand = \"bin/hello\"\nlisten = [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    let conf = root.join("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[unix_http_server]\nfile={root}/supervisor.sock\n\n[supervisord]\nlogfile={root}/supervisord.log\npidfile={root}/supervisord.pid\nnodaemon=false\n\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl=unix://{root}/supervisor.sock\n\n{program}",
            root = root.display(),
            program = shipped_program_section(root),
        ),
    )
    .unwrap();
    let status = Command::new(tool("supervisord"))
        .arg("-c")
        .arg(&conf)
        .status()
        .unwrap();
    assert!(status.success());
    let _shutdown = Shutdown(conf.clone());

    let pid_of = || {
        let out = ctl(&conf, &["status", "baton"]);
        out.contains("RUNNING")
            .then(|| {
                out.split("pid ")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .flatten()
    };
    let pid = support::wait_for("supervisord to run baton", Duration::from_secs(20), pid_of);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    support::wait_for("hello 1.0.0", Duration::from_secs(10), || {
        support::get(addr, "/")
            .ok()
            .filter(|(_, b)| b == "hello 1.0.0\n")
    });
    support::point(&root.join("bin/hello"), &support::hello("2.0.0"));
    let out = ctl(&conf, &["signal", "SIGUSR2", "baton"]);
    assert!(out.contains("signalled"), "supervisorctl: {out}");
    support::wait_version(addr, "2.0.0");
    assert_eq!(
        pid_of(),
        Some(pid),
        "supervisord no longer sees the same RUNNING pid"
    );
    let log = std::fs::read_to_string(root.join("baton.log")).unwrap();
    assert!(log.contains("SIGUSR2: starting a graceful cycle"), "{log}");
    // Upgrading baton itself: the program never appears to exit.
    let out = Command::new(support::baton_bin())
        .args(["reexec", "--config"])
        .arg(root.join("baton.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "baton reexec: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pid_of(), Some(pid), "supervisord sees the same RUNNING pid");
    assert_eq!(support::version(addr), "2.0.0");
    let events = std::fs::read_to_string(root.join("supervisord.log")).unwrap();
    assert_eq!(
        events.matches("exited: baton").count(),
        0,
        "supervisord saw baton exit: {events}"
    );
}

/// Shuts supervisord (started with this config) down when dropped.
pub(crate) struct Shutdown(pub(crate) PathBuf);
impl Drop for Shutdown {
    fn drop(&mut self) {
        let pid =
            std::fs::read_to_string(self.0.with_file_name("supervisord.pid")).unwrap_or_default();
        let _ = Command::new(tool("supervisorctl"))
            .arg("-c")
            .arg(&self.0)
            .arg("shutdown")
            .output();
        if let Ok(pid) = pid.trim().parse::<u32>() {
            support::wait_for_quietly(Duration::from_secs(30), || {
                support::process_state(pid).is_none()
            });
        }
    }
}
