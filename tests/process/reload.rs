//! SIGHUP re-reads baton.toml: a valid config is applied (program
//! settings, listen addresses, fetch settings) and the cycle that follows
//! starts workers with it; a broken one changes nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::release::{hello_bytes, publish};
use crate::support::http::HttpServer;
use crate::support::{self, Baton, Load, LoadMode};
use crate::trial::seed_release;

/// A config running the every-socket Python worker with `MARK` and args.
fn python_config(mark: &str, args: &[&str], listen: &[&str], extra: &str) -> String {
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/workers/every_socket.py");
    let mut argv = vec![format!("{:?}", worker.display().to_string())];
    argv.extend(args.iter().map(|a| format!("{a:?}")));
    let listen: Vec<String> = listen.iter().map(|l| format!("{l:?}")).collect();
    format!(
        "[program]\ncommand = \"python3\"\nargs = [{}]\nenv = {{ MARK = \"{mark}\" }}\nlisten = [{}]\n\
         ready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n{extra}\n",
        argv.join(", "),
        listen.join(", ")
    )
}

/// Writes the config and sends SIGHUP.
fn reload(baton: &Baton, config: &str) {
    std::fs::write(baton.dir.path().join("baton.toml"), config).unwrap();
    baton.signal(libc::SIGHUP);
}

/// The address the master logged for socket `name`, bound at start or
/// added by a reload.
fn logged_addr(baton: &Baton, name: &str) -> SocketAddr {
    support::wait_for(
        &format!("socket {name} to be listed"),
        Duration::from_secs(20),
        || {
            baton.log().lines().find_map(|l| {
                let rest = l.split("listening on ").nth(1)?;
                let word = rest.split_whitespace().next()?;
                let addr = match word.split_once('=') {
                    Some((n, addr)) if n == name => addr,
                    None if l.contains(&format!("name={name}")) => word,
                    _ => return None,
                };
                addr.parse().ok()
            })
        },
    )
}

fn refused(baton: &Baton, n: usize) {
    baton.wait_count(
        "refused, the running config stays",
        n,
        Duration::from_secs(20),
    );
}

#[test]
fn env_args_and_a_new_address_apply_to_the_next_worker_under_load() {
    let baton = Baton::start(
        tempfile::tempdir().unwrap(),
        &python_config("A", &["a1"], &["127.0.0.1:0"], ""),
    );
    baton.wait_ready();
    let addr = baton.addr();
    assert_eq!(support::version(addr), "A:a1");
    let load = Load::start(addr, 16, LoadMode::NewConnection);
    load.wait_more(100);
    reload(
        &baton,
        &python_config(
            "B",
            &["b1", "b2"],
            &["127.0.0.1:0", "extra=127.0.0.2:0"],
            "",
        ),
    );
    support::wait_version(addr, "B:b1,b2");
    let extra = logged_addr(&baton, "extra");
    assert_eq!(support::version(extra), "B:b1,b2");
    let (_, body) = support::get(extra, "/sockets").unwrap();
    assert!(body.contains("sockets=listen0:extra"), "{body}");
    load.wait_more(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(baton.addr(), addr, "the kept address is the same socket");
}

#[test]
fn a_removed_address_is_closed_after_the_old_worker_drained() {
    let baton = Baton::start(
        tempfile::tempdir().unwrap(),
        &python_config("A", &[], &["127.0.0.1:0", "extra=127.0.0.2:0"], ""),
    );
    baton.wait_ready();
    let extra = logged_addr(&baton, "extra");
    assert_eq!(support::version(extra), "A:");
    reload(&baton, &python_config("B", &[], &["127.0.0.1:0"], ""));
    support::wait_version(baton.addr(), "B:");
    support::wait_for("one worker left", Duration::from_secs(20), || {
        (baton.children().len() == 1).then_some(())
    });
    support::wait_for(
        "the removed address to be closed",
        Duration::from_secs(20),
        || {
            std::net::TcpStream::connect_timeout(&extra, Duration::from_secs(1))
                .is_err()
                .then_some(())
        },
    );
    let (_, body) = support::get(baton.addr(), "/sockets").unwrap();
    assert!(body.contains("sockets=listen0"), "{body}");
}

#[test]
fn broken_configs_and_unbindable_addresses_change_nothing() {
    let baton = Baton::start(
        tempfile::tempdir().unwrap(),
        &python_config("A", &[], &["127.0.0.1:0"], ""),
    );
    baton.wait_ready();
    let addr = baton.addr();
    let pids = |children: Vec<(u32, char)>| children.into_iter().map(|(pid, _)| pid).collect();
    let worker: Vec<u32> = pids(baton.children());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cases = [
        "[program\ncommand = ".to_owned(),
        python_config("B", &[], &["127.0.0.1:0"], "stop_signal = \"SIGSTOP\""),
        python_config(
            "B",
            &[],
            &[
                "127.0.0.1:0",
                &format!("busy={}", taken.local_addr().unwrap()),
            ],
            "",
        ),
    ];
    for (i, config) in cases.iter().enumerate() {
        reload(&baton, config);
        refused(&baton, i + 1);
        assert_eq!(support::version(addr), "A:", "case {i}");
        let children = baton.children();
        assert!(
            children.iter().all(|&(_, state)| state != 'T'),
            "case {i}: the worker was stopped: {children:?}"
        );
        assert_eq!(pids(children), worker, "case {i}: the worker changed");
    }
    let log = baton.log();
    assert!(log.contains("program.stop_signal"), "the key is named");
    assert!(log.contains(&format!("cannot listen on {}", taken.local_addr().unwrap())));
    // A fixed config applies.
    reload(&baton, &python_config("C", &[], &["127.0.0.1:0"], ""));
    support::wait_version(addr, "C:");
}

fn release_config(server: &HttpServer, dir: &str, interval: &str) -> String {
    format!(
        "[program]\ncommand = \"{dir}/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\ndir = \"{dir}\"\nbinary = \"hello\"\nsettle = \"300ms\"\n\
         [fetch]\nsource = \"http\"\nurl = \"{}\"\ninterval = \"{interval}\"\n",
        server.url("/manifest.json")
    )
}

#[test]
fn a_changed_releases_dir_is_refused_and_a_fetch_interval_change_applies() {
    let server = HttpServer::start(true);
    publish(&server, "1.0.0", "hello-1.0.0", hello_bytes("1.0.0"));
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let baton = Baton::start(dir, &release_config(&server, "releases", "1h"));
    baton.wait_ready();
    let current = baton.current().unwrap();
    reload(&baton, &release_config(&server, "elsewhere", "1h"));
    refused(&baton, 1);
    assert!(
        baton.log().contains("releases.dir changed"),
        "{}",
        baton.log()
    );
    // The rebuilt update loop checks once at once; 2.0.0, published after
    // that check, would wait an hour without the new interval.
    let polls = server.seen("/manifest.json").len();
    reload(&baton, &release_config(&server, "releases", "200ms"));
    support::wait_for(
        "the rebuilt loop's first check",
        Duration::from_secs(20),
        || (server.seen("/manifest.json").len() > polls).then_some(()),
    );
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    support::wait_version(baton.addr(), "2.0.0");
    baton.wait_current("2.0.0-");
    assert_ne!(baton.current(), Some(current));
}

/// The master's own supervisor protocol around reloads.
#[test]
fn systemd_sees_reloading_then_ready_and_the_refusal_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let mut notify = support::NotifyListener::bind(&socket_path);
    let baton = Baton::start_with_env(
        dir,
        &python_config("A", &[], &["127.0.0.1:0"], ""),
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut wait_message = |what: &str| notify.wait(what);
    wait_message("READY=1");
    reload(&baton, &python_config("B", &[], &["127.0.0.1:0"], ""));
    let reloading = wait_message("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    wait_message("READY=1");
    reload(&baton, "[program\n");
    wait_message("RELOADING=1");
    let status = wait_message("STATUS=");
    assert!(status.contains("refused"), "{status}");
    wait_message("READY=1");
    support::wait_version(baton.addr(), "B:");
}
