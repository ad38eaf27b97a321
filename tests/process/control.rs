//! The control socket: `baton status`, `releases`, `restart`, `rollback`
//! and `upgrade` against a running master.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::release::{hello_bytes, manifest, publish, sha256};
use crate::support::http::HttpServer;
use crate::support::{self, Baton, Load, LoadMode};
use crate::trial::seed_release;

pub(crate) fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(support::baton_bin())
        .args(args)
        .arg("--config")
        .arg(dir.join("baton.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs a control command that must succeed; its stdout.
pub(crate) fn ok(dir: &Path, args: &[&str]) -> String {
    let out = cli(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "baton {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn status(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(dir, &["status", "--json"])).unwrap()
}

/// A master serving a seeded 1.0.0 fed by a manifest offering it.
fn serving() -> (HttpServer, Baton) {
    let server = HttpServer::start(true);
    publish(&server, "1.0.0", "hello-1.0.0", hello_bytes("1.0.0"));
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"300ms\"\n\
         [fetch]\nsource = \"http\"\nurl = \"{}\"\ninterval = \"1h\"\n",
        server.url("/manifest.json")
    );
    let baton = Baton::start(dir, &config);
    baton.wait_ready();
    (server, baton)
}

#[test]
fn status_before_and_after_an_upgrade_and_a_refused_build() {
    let (server, baton) = serving();
    let dir = baton.dir.path();
    let s = status(dir);
    assert_eq!(s["pid"], baton.pid());
    assert_eq!(s["current"]["version"], "1.0.0");
    assert_eq!(s["workers"].as_array().unwrap().len(), 1, "{s:#}");
    assert_eq!(s["workers"][0]["state"], "ready");
    let human = ok(dir, &["status"]);
    assert!(human.contains("current    1.0.0-"), "{human}");

    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    let out = ok(dir, &["upgrade"]);
    assert!(out.starts_with("installed: release 2.0.0-"), "{out}");
    baton.wait_current("2.0.0-");
    let s = support::wait_for("the promotion in status", Duration::from_secs(20), || {
        let s = status(dir);
        (s["counters"]["promotions"] == 1).then_some(s)
    });
    assert_eq!(s["current"]["version"], "2.0.0");
    assert_eq!(s["previous"]["version"], "1.0.0");
    assert_eq!(s["last_check"]["outcome"], "installed");

    // A build whose digest does not match: refused, and status says why.
    let bad = hello_bytes("1.0.0");
    server.body("/hello-3.0.0", bad);
    server.body(
        "/manifest.json",
        manifest("3.0.0", "hello-3.0.0", Some([7; 32]), None),
    );
    let out = cli(dir, &["upgrade"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sha256 mismatch"), "{stderr}");
    let s = status(dir);
    assert_eq!(s["last_check"]["outcome"], "error");
    assert!(s["last_check"]["detail"]
        .as_str()
        .unwrap()
        .contains("sha256 mismatch"));
    assert_eq!(s["current"]["version"], "2.0.0");
}

#[test]
fn rollback_under_load_holds_the_release_it_left() {
    let (server, baton) = serving();
    let dir = baton.dir.path();
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    ok(dir, &["upgrade"]);
    let two = baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");
    let load = Load::start(baton.addr(), 16, LoadMode::KeepAlive);
    load.wait_more(200);
    let out = ok(dir, &["rollback"]);
    assert!(out.contains(&format!("{two} is held")), "{out}");
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
    support::wait_version(baton.addr(), "1.0.0");
    load.wait_more(200);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let sha2 = hex::encode(sha256(&hello_bytes("2.0.0")));
    assert_eq!(status(dir)["held"], serde_json::json!([sha2]));
    let releases = ok(dir, &["releases"]);
    assert!(releases.contains("held"), "{releases}");
    // The source still offers 2.0.0: not taken again...
    let out = ok(dir, &["upgrade"]);
    assert!(
        out.starts_with("skipped:") && out.contains("rollback holds"),
        "{out}"
    );
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
    // ...until an operator insists.
    let out = ok(dir, &["upgrade", "--force"]);
    assert!(out.starts_with("installed: release 2.0.0-"), "{out}");
    baton.wait_current("2.0.0-");
}

#[test]
fn restart_waits_for_its_cycle() {
    let (_server, baton) = serving();
    let pids = || -> Vec<u32> { baton.children().iter().map(|&(pid, _)| pid).collect() };
    let before = pids();
    let out = ok(baton.dir.path(), &["restart"]);
    assert!(out.starts_with("restarted: serving with worker 2"), "{out}");
    support::wait_for("the old worker to exit", Duration::from_secs(20), || {
        let now = pids();
        (now.len() == 1 && now != before).then_some(())
    });
}

#[test]
fn garbage_on_the_socket_gets_an_error_and_the_master_serves_on() {
    let (_server, baton) = serving();
    let socket = baton.dir.path().join(".baton.sock");
    for garbage in ["hello\n", "{\"cmd\": \"reboot\"}\n", "\n", "{\"cmd\":"] {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream.write_all(garbage.as_bytes()).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["ok"], false, "{garbage:?}");
        assert!(
            reply["error"].as_str().unwrap().contains("bad request"),
            "{reply}"
        );
    }
    assert_eq!(support::version(baton.addr()), "1.0.0");
    assert_eq!(status(baton.dir.path())["current"]["version"], "1.0.0");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn commands_without_a_master_say_so() {
    let (_server, baton) = serving();
    let dir = baton.kill9();
    let out = cli(dir.path(), &["status"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no master is running at"), "{stderr}");
    // A rollback with nothing to roll back to is refused with the reason.
    let baton = Baton::restart(dir);
    baton.wait_ready();
    let out = cli(baton.dir.path(), &["rollback"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rollback refused: there is no previous release"),
        "{stderr}"
    );
}

/// The Python interpreter of the test venv (ci/test installs
/// prometheus-client there), else `python3`.
fn python() -> std::path::PathBuf {
    match std::env::var_os("BATON_TEST_SUPERVISOR_BIN") {
        Some(dir) => std::path::PathBuf::from(dir).join("python"),
        None => "python3".into(),
    }
}

#[test]
fn metrics_parse_with_a_real_prometheus_parser() {
    let server = HttpServer::start(true);
    publish(&server, "1.0.0", "hello-1.0.0", hello_bytes("1.0.0"));
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\n\
         [releases]\nbinary = \"hello\"\nsettle = \"300ms\"\n\
         [fetch]\nsource = \"http\"\nurl = \"{}\"\ninterval = \"1h\"\n\
         [control]\nmetrics = \"127.0.0.1:0\"\n",
        server.url("/manifest.json")
    );
    let baton = Baton::start(dir, &config);
    baton.wait_ready();
    ok(baton.dir.path(), &["upgrade"]);
    let addr = baton.metrics_addr();
    let (code, body) = support::get(addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
        for f in parse(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       print(s.name, sorted(s.labels.items()), s.value)\n";
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let parsed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "baton_release_info [('release', '1.0.0-",
        "('version', '1.0.0')] 1",
        "baton_cycles_total [] 0",
        "baton_checks_total [('result', 'unchanged')] ",
        "baton_workers [('state', 'ready')] 1",
        "process_open_fds [] ",
    ] {
        assert!(parsed.contains(want), "{want:?} missing in:\n{parsed}");
    }
    assert!(!body.contains("token"), "{body}");
    let (code, _) = support::get(addr, "/other").unwrap();
    assert_eq!(code, 404);
}
