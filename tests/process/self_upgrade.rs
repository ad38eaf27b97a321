//! `[self]`: baton upgrades itself from its own signed channel (a
//! directory written by `baton publish`). The new baton is a second build
//! that reports 9.9.9 (`BATON_BUILD_VERSION`, built by ci/test into the
//! test binaries). The master keeps its PID, sockets and workers, 0
//! requests fail under keep-alive load, and the executable it was started
//! from is replaced once the new build has stayed up for `self.settle`. A
//! new baton that dies right after its exec falls back to the previous one
//! under supervisord, which records it failed and never takes it again. A
//! bad signature or a `--version` that names another version changes
//! nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::control::ok;
use crate::fleet::Publisher;
use crate::release::sha256;
use crate::support::load::{Load, LoadMode};
use crate::support::{self, Baton};
use crate::trial::seed_release;

/// The second build of baton, reporting 9.9.9.
fn new_baton() -> PathBuf {
    let path = support::hello_bins().join("baton-9.9.9");
    assert!(
        path.is_file(),
        "{} is missing: run ci/test, which builds it with BATON_BUILD_VERSION=9.9.9",
        path.display()
    );
    path
}

/// A copy of the baton under test at `dir/bin/baton`: the executable the
/// master is started from, which a kept self-upgrade replaces.
fn home(dir: &Path) -> PathBuf {
    let home = dir.join("bin/baton");
    std::fs::create_dir_all(home.parent().unwrap()).unwrap();
    support::copy_executable(&support::baton_bin(), &home);
    home
}

fn config(publisher: &Publisher, key: &str) -> String {
    format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\n\
         ready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\n\
         [self]\nsource = \"file\"\npath = \"{}\"\ninterval = \"200ms\"\nsettle = \"2s\"\n\
         minisign_key = \"{key}\"\n",
        publisher.out().join("manifest.json").display()
    )
}

/// `baton publish` of `artifact` as baton `version`, signed with `key`.
fn publish(publisher: &Publisher, version: &str, key: &str, artifact: &Path) {
    publisher.publish(&[
        "--version",
        version,
        "--sign",
        &publisher.key(key),
        artifact.to_str().unwrap(),
    ]);
}

fn status(dir: &Path) -> Value {
    serde_json::from_str(&ok(dir, &["status", "--json"])).unwrap()
}

/// `status`, or `None` while the master cannot answer (a control
/// connection open across the `execve` is closed by it).
fn try_status(dir: &Path) -> Option<Value> {
    let out = crate::control::cli(dir, &["status", "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// The workers' PIDs a `status` names.
fn worker_pids(status: &Value) -> Vec<Value> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].clone())
        .collect()
}

fn digest(path: &Path) -> String {
    hex::encode(sha256(&std::fs::read(path).unwrap()))
}

/// The number of the last check of baton's own channel (`#N at …`).
fn self_checks(dir: &Path) -> u64 {
    status(dir)["baton"]["last_check"]
        .as_str()
        .and_then(|c| c.strip_prefix('#')?.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Waits until baton's own channel has been checked `n` more times.
fn wait_self_checks(dir: &Path, n: u64) -> Value {
    let from = self_checks(dir);
    support::wait_for(
        "more checks of baton's own channel",
        Duration::from_secs(30),
        || (self_checks(dir) >= from + n).then_some(()),
    );
    status(dir)
}

#[test]
fn baton_upgrades_itself_from_its_channel_keeping_pid_and_workers_under_load() {
    let publisher = Publisher::new();
    let public = publisher.keygen("self");
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let home = home(dir.path());
    let old_digest = digest(&home);
    let baton = Baton::start_from(dir, &config(&publisher, &public), &home, &[]);
    baton.wait_ready();
    let d = baton.dir.path().to_owned();
    let before = status(&d);
    assert_eq!(before["baton"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        before["baton"]["channel"]
            .as_str()
            .is_some_and(|c| c.contains("manifest.json")),
        "{before}"
    );
    let workers = worker_pids(&before);
    let load = Load::start(baton.addr(), 8, LoadMode::KeepAlive);
    load.wait_more(200);

    std::fs::copy(new_baton(), publisher.path("baton")).unwrap();
    let artifact = publisher.path("baton");
    publish(&publisher, "9.9.9", "self", &artifact);
    // The master re-executes into the new build, then keeps it after its
    // settle: the executable it was started from is the new build.
    let new_digest = digest(&new_baton());
    support::wait_for("the new baton to be kept", Duration::from_secs(60), || {
        let s = try_status(&d)?;
        (s["baton"]["version"] == "9.9.9"
            && s["baton"]["on_trial"].is_null()
            && digest(&home) == new_digest)
            .then_some(())
    });
    load.wait_more(200);
    let report = load.finish();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);

    let after = status(&d);
    assert_eq!(
        after["pid"].as_u64(),
        Some(u64::from(baton.pid())),
        "same PID"
    );
    assert_eq!(worker_pids(&after), workers, "the same workers serve");
    assert_eq!(after["counters"]["reexecs"], 1, "{after}");
    assert_eq!(support::version(baton.addr()), "1.0.0");
    let exe = std::fs::read_link(format!("/proc/{}/exe", baton.pid())).unwrap();
    assert_eq!(digest(&exe), new_digest, "the master runs the new build");
    // The previous baton stays in baton's own store.
    let kept = baton.dir.path().join("releases/.baton");
    let previous = std::fs::read_link(kept.join("previous")).unwrap();
    assert_eq!(digest(&kept.join(previous).join("baton")), old_digest);
    // Checks go on and find nothing new: no second re-exec.
    let later = wait_self_checks(&d, 3);
    assert_eq!(later["counters"]["reexecs"], 1, "{later}");
    assert!(later["baton"]["failed"].is_null(), "{later}");
}

#[test]
fn a_bad_signature_or_a_wrong_version_changes_nothing() {
    let publisher = Publisher::new();
    let public = publisher.keygen("self");
    publisher.keygen("other");
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let home = home(dir.path());
    let old_digest = digest(&home);
    let baton = Baton::start_from(dir, &config(&publisher, &public), &home, &[]);
    baton.wait_ready();
    let d = baton.dir.path().to_owned();

    // Signed with a key the channel does not trust.
    std::fs::copy(new_baton(), publisher.path("baton")).unwrap();
    let artifact = publisher.path("baton");
    publish(&publisher, "9.9.9", "other", &artifact);
    let s = wait_self_checks(&d, 2);
    let said = s["baton"]["last_check"].as_str().unwrap_or_default();
    assert!(
        said.contains("refused") && said.contains("unknown key"),
        "{s}"
    );
    assert_eq!(s["baton"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["counters"]["reexecs"], 0);
    assert_eq!(digest(&home), old_digest);

    // Signed by the right key, but the build names another version.
    publish(&publisher, "9.9.10", "self", &artifact);
    // Refused for good: `status` lists it with why, and later checks skip
    // its bytes.
    let said = support::wait_for(
        "the build that names another version to be refused",
        Duration::from_secs(30),
        || {
            let failed = status(&d)["baton"]["failed"].as_array()?.clone();
            failed
                .iter()
                .filter_map(Value::as_str)
                .find(|f| f.starts_with("9.9.10: "))
                .map(str::to_owned)
        },
    );
    assert!(said.contains("\"baton 9.9.9\""), "{said}");
    let s = wait_self_checks(&d, 2);
    let later = s["baton"]["last_check"].as_str().unwrap_or_default();
    assert!(
        later.contains("failed before") || later.contains("nothing new"),
        "{s}"
    );
    assert_eq!(s["baton"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["counters"]["reexecs"], 0);
    assert_eq!(digest(&home), old_digest);
    assert!(!d.join("releases/.baton/self-trial.json").exists());
    assert_eq!(support::version(baton.addr()), "1.0.0");
}

#[test]
fn a_new_baton_that_dies_after_its_exec_falls_back_under_supervisord() {
    falls_back_under_supervisord("echo 'the new baton dies' >&2; exit 70");
}

#[test]
fn a_new_baton_that_hangs_after_its_exec_is_stopped_and_falls_back() {
    // It never reaches its serving loop: the watchdog the old master left
    // kills it after self.settle, and supervisord starts the previous one.
    falls_back_under_supervisord("echo 'the new baton hangs' >&2; exec sleep 600");
}

/// A new baton that passes the checks (`--version`, `validate`), then runs
/// `as_master` when it runs as the master; supervisord starts the previous
/// baton, which records the version failed and never takes it again.
fn falls_back_under_supervisord(as_master: &str) {
    let publisher = Publisher::new();
    let public = publisher.keygen("self");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    seed_release(root, "1.0.0");
    let home = home(root);
    let old_digest = digest(&home);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        root.join("baton.toml"),
        config(&publisher, &public).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let crashing = publisher.path("baton");
    support::script(
        &crashing,
        &format!(
            "case \"$1\" in\n  --version) echo 'baton 9.9.9' ;;\n  validate) exec {} \"$@\" ;;\n  \
             *) {as_master} ;;\nesac",
            support::baton_bin().display()
        ),
    );
    let conf = root.join("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[unix_http_server]\nfile={root}/supervisor.sock\n\n[supervisord]\nlogfile={root}/supervisord.log\n\
             pidfile={root}/supervisord.pid\nnodaemon=false\n\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl=unix://{root}/supervisor.sock\n\n\
             [program:baton]\ncommand={home} run --config {root}/baton.toml\ndirectory={root}\n\
             autorestart=true\nstartsecs=0\nstartretries=5\nstopwaitsecs=30\n\
             redirect_stderr=true\nstdout_logfile={root}/baton.log\n",
            root = root.display(),
            home = home.display(),
        ),
    )
    .unwrap();
    let status_ok = Command::new(crate::supervisord::tool("supervisord"))
        .arg("-c")
        .arg(&conf)
        .status()
        .unwrap();
    assert!(status_ok.success());
    let _shutdown = crate::supervisord::Shutdown(conf.clone());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    support::wait_version(addr, "1.0.0");

    publish(&publisher, "9.9.9", "self", &crashing);
    // The new baton dies after its exec; supervisord starts the executable
    // it knows, the previous baton, which records 9.9.9 as failed.
    let failed = support::wait_for(
        "the previous baton to record the failed self-upgrade",
        Duration::from_secs(60),
        || {
            let s = try_status(root)?;
            s["baton"]["failed"]
                .as_array()
                .filter(|f| !f.is_empty())
                .cloned()
        },
    );
    assert!(
        failed[0].as_str().unwrap().starts_with("9.9.9: "),
        "{failed:?}"
    );
    support::wait_version(addr, "1.0.0");
    let s = status(root);
    assert_eq!(s["baton"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(digest(&home), old_digest, "the executable stays as it was");
    // It never takes 9.9.9 again: the manifest still offers it, and later
    // checks skip it (or find nothing new in the unchanged manifest).
    let s = wait_self_checks(root, 3);
    let said = s["baton"]["last_check"].as_str().unwrap_or_default();
    assert!(
        said.contains("failed before") || said.contains("nothing new"),
        "{s}"
    );
    assert_eq!(
        s["baton"]["failed"].as_array().map(Vec::len),
        Some(1),
        "{s}"
    );
    assert_eq!(s["baton"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(!root.join("releases/.baton/self-trial.json").exists());
    let log = std::fs::read_to_string(root.join("baton.log")).unwrap();
    assert_eq!(
        log.matches("re-executing").count(),
        1,
        "one exec into the new baton, never another: {log}"
    );
    let events = std::fs::read_to_string(root.join("supervisord.log")).unwrap();
    assert_eq!(
        events.matches("exited: baton").count(),
        1,
        "the new baton ended once, and only once: {events}"
    );
}
