//! Trials: a new release runs from its own directory and is promoted only
//! after its worker stayed ready for `settle`; any earlier end, including a
//! master killed during it, leaves `current` where it was and quarantines
//! the digest. Only the master writes `current`, under the releases lock.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::release::{hello_bytes, manifest, publish, sha256};
use crate::support::http::{HttpServer, Reply};
use crate::support::{self, Baton};

/// Installs hello `version` as the current release of `dir`, as a master
/// would have after a promotion, so a test starts with a proven release.
pub(crate) fn seed_release(dir: &Path, version: &str) -> String {
    let bytes = hello_bytes(version);
    let sha = hex::encode(sha256(&bytes));
    let id = format!("{version}-{}", &sha[..8]);
    let release = dir.join("releases").join(&id);
    std::fs::create_dir_all(&release).unwrap();
    std::fs::copy(support::hello(version), release.join("hello")).unwrap();
    let meta = serde_json::json!({
        "id": id, "version": version, "sha256": sha, "size": bytes.len(),
        "source": "seeded by the test", "installed_at": 1
    });
    std::fs::write(release.join("release.json"), meta.to_string()).unwrap();
    std::os::unix::fs::symlink(&id, dir.join("releases/current")).unwrap();
    id
}

fn config(server: &HttpServer, settle: &str, extra_program: &str) -> String {
    format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n{extra_program}\n[releases]\nbinary = \"hello\"\nsettle = \"{settle}\"\n\
         [fetch]\nsource = \"http\"\nurl = \"{}\"\ninterval = \"200ms\"\n",
        server.url("/manifest.json")
    )
}

/// A master serving a seeded 1.0.0, fed by a manifest that offers it.
fn serving(settle: &str) -> (HttpServer, Baton) {
    let server = HttpServer::start(true);
    publish(&server, "1.0.0", "hello-1.0.0", hello_bytes("1.0.0"));
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    let baton = Baton::start(dir, &config(&server, settle, ""));
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    (server, baton)
}

/// The one worker that serves (waits until only one is left).
fn sole_worker(baton: &Baton) -> u32 {
    support::wait_for("a single worker", Duration::from_secs(20), || {
        match baton.children().as_slice() {
            [(pid, _)] => Some(*pid),
            _ => None,
        }
    })
}

/// argv[0] of a process: the path it was started from.
fn argv0(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(cmdline.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) has no memory preconditions; the process is the test's.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

fn sha_hex(version: &str) -> String {
    hex::encode(sha256(&hello_bytes(version)))
}

/// After a failed trial: `current` is the seeded 1.0.0 and serves, 2.0.0's
/// digest is quarantined, no trial record or temp file is left.
fn assert_back_on_one(baton: &Baton, current: &str) {
    support::wait_version(baton.addr(), "1.0.0");
    assert_eq!(baton.current().as_deref(), Some(current));
    support::wait_for(
        "2.0.0 to be recorded as failed",
        Duration::from_secs(20),
        || baton.failed().contains(&sha_hex("2.0.0")).then_some(()),
    );
    support::wait_for("the trial record to go", Duration::from_secs(20), || {
        (!baton.trial_recorded()).then_some(())
    });
    assert!(baton.leftovers().is_empty(), "{:?}", baton.leftovers());
}

#[test]
fn trial_runs_from_its_own_directory_and_is_promoted_after_settle() {
    // A settle long enough to look at the trial, short enough to wait for.
    let (server, baton) = serving("10s");
    let one = baton.current().unwrap();
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    support::wait_version(baton.addr(), "2.0.0");
    let worker = sole_worker(&baton);
    // On trial: the worker runs from the release's own directory, and
    // `current` has not moved.
    assert!(
        argv0(worker).contains("/releases/2.0.0-"),
        "{}",
        argv0(worker)
    );
    assert_eq!(
        baton.current().as_deref(),
        Some(one.as_str()),
        "promoted before settle"
    );
    assert!(baton.trial_recorded());
    let two = baton.wait_current("2.0.0-");
    assert_eq!(
        std::fs::read_link(baton.dir.path().join("releases/previous"))
            .unwrap()
            .to_string_lossy(),
        one
    );
    baton.wait_trial_ended();
    assert!(baton.failed().is_empty());
    assert!(baton
        .dir
        .path()
        .join("releases")
        .join(two)
        .join("hello")
        .exists());
}

#[test]
fn crash_inside_a_long_settle_goes_back_to_current() {
    let (server, baton) = serving("10m");
    let one = baton.current().unwrap();
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    support::wait_version(baton.addr(), "2.0.0");
    assert!(baton.trial_recorded());
    assert_eq!(
        baton.current().as_deref(),
        Some(one.as_str()),
        "current moved during the trial"
    );
    sigkill(sole_worker(&baton));
    assert_back_on_one(&baton, &one);
}

#[test]
fn kill9_while_the_trial_worker_starts_fails_the_trial_at_restart() {
    let (server, baton) = serving("300ms");
    let one = baton.current().unwrap();
    let pids = tempfile::tempdir().unwrap();
    let pidfile = pids.path().join("pid");
    // Probes fine as 2.0.0, then never becomes ready.
    let script = format!(
        "#!/bin/sh\nif [ \"$BATON_PROBE\" = 1 ]; then echo 2.0.0; exit 0; fi\necho $$ > {}\nexec sleep 300\n",
        pidfile.display()
    );
    let bytes = script.into_bytes();
    let sha = hex::encode(sha256(&bytes));
    publish(&server, "2.0.0", "hello-2.0.0", bytes);
    support::wait_for("the trial worker to run", Duration::from_secs(20), || {
        pidfile.exists().then_some(())
    });
    assert!(
        baton.trial_recorded(),
        "the trial is recorded before its worker starts"
    );
    let dir = baton.kill9();
    let baton = Baton::restart(dir);
    baton.wait_ready();
    support::wait_version(baton.addr(), "1.0.0");
    assert_eq!(baton.current(), Some(one));
    assert!(baton.failed().contains(&sha), "{:?}", baton.failed());
    baton.wait_trial_ended();
    assert!(baton.leftovers().is_empty(), "{:?}", baton.leftovers());
}

#[test]
fn kill9_during_settle_fails_the_trial_at_restart_and_it_is_not_retried() {
    let (server, baton) = serving("10m");
    let one = baton.current().unwrap();
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    support::wait_version(baton.addr(), "2.0.0");
    let dir = baton.kill9();
    let baton = Baton::restart(dir);
    baton.wait_ready();
    assert_back_on_one(&baton, &one);
    // The source still offers 2.0.0: known bad, skipped without a trial.
    baton.wait_count("which failed before; skipped", 1, Duration::from_secs(20));
    assert_eq!(baton.count("started worker"), 1, "{}", baton.log());
    assert_eq!(support::version(baton.addr()), "1.0.0");
}

#[test]
fn kill9_after_the_promotion_rename_keeps_the_promoted_release() {
    let (server, baton) = serving("300ms");
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    let two = baton.wait_current("2.0.0-");
    support::wait_for("the trial record to go", Duration::from_secs(20), || {
        (!baton.trial_recorded()).then_some(())
    });
    let dir = baton.kill9();
    // The state a kill between the rename of `current` and the removal of
    // the trial record leaves.
    let record = serde_json::json!({"id": two, "sha256": sha_hex("2.0.0"), "started_at": 1});
    std::fs::write(dir.path().join("releases/.trial"), record.to_string()).unwrap();
    let baton = Baton::restart(dir);
    baton.wait_ready();
    support::wait_version(baton.addr(), "2.0.0");
    assert_eq!(baton.current(), Some(two));
    baton.wait_trial_ended();
    assert!(baton.failed().is_empty(), "{:?}", baton.failed());
}

fn baton_check(dir: &Path, install: bool) -> std::process::Output {
    let mut cmd = Command::new(support::baton_bin());
    cmd.arg("check").arg("--config").arg(dir.join("baton.toml"));
    if install {
        cmd.arg("--install");
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn check_install_writes_a_release_the_next_master_tries() {
    let server = HttpServer::start(true);
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    let dir = tempfile::tempdir().unwrap();
    let one = seed_release(dir.path(), "1.0.0");
    std::fs::write(dir.path().join("baton.toml"), config(&server, "300ms", "")).unwrap();
    let out = baton_check(dir.path(), true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("installed 2.0.0-"), "{stdout}");
    let current = std::fs::read_link(dir.path().join("releases/current")).unwrap();
    assert_eq!(
        current.to_string_lossy(),
        one,
        "check --install moved current"
    );
    let baton = Baton::restart(dir);
    baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");
}

/// A running master is asked through its control socket (see
/// operate.rs); when that socket is gone, the releases lock refuses.
#[test]
fn check_install_beside_a_master_without_its_control_socket_is_refused() {
    let (_server, baton) = serving("300ms");
    std::fs::remove_file(baton.dir.path().join(".baton.sock")).unwrap();
    let out = baton_check(baton.dir.path(), true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("control socket")
            && stderr.contains("does not answer")
            && stderr.contains(&format!("locked by a running master (pid {})", baton.pid()))
            && stderr.contains(&format!("kill -USR1 {}", baton.pid())),
        "{stderr}"
    );
}

#[test]
fn dry_check_leaves_a_running_download_intact() {
    let (server, baton) = serving("300ms");
    let two = hello_bytes("2.0.0");
    let sha = sha256(&two);
    // The master's download stalls after 1 MiB...
    server.set(
        "/hello-2.0.0",
        Reply::Stall(std::sync::Arc::new(two.clone()), 1 << 20),
    );
    server.body(
        "/manifest.json",
        manifest("2.0.0", "hello-2.0.0", Some(sha), None),
    );
    let download = support::wait_for("a partial download", Duration::from_secs(20), || {
        baton
            .leftovers()
            .into_iter()
            .find(|n| n.starts_with(".download-"))
    });
    let before: Vec<String> = list(&baton.dir.path().join("releases"));
    // ...while `baton check` finds the same bytes at a mirror and checks them.
    server.body("/mirror/hello-2.0.0", two);
    server.body(
        "/manifest.json",
        manifest("2.0.0", "mirror/hello-2.0.0", Some(sha), None),
    );
    let out = baton_check(baton.dir.path(), false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("would install 2.0.0-"), "{stdout}");
    assert!(
        baton.leftovers().contains(&download),
        "the master's download {download} is gone"
    );
    assert_eq!(
        list(&baton.dir.path().join("releases")),
        before,
        "the check wrote in releases/"
    );
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn newer_candidate_during_a_trial_waits_for_it_to_end() {
    let (server, baton) = serving("10s");
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    support::wait_version(baton.addr(), "2.0.0");
    // 3.0.0 probes fine and then fails at start.
    let three =
        b"#!/bin/sh\nif [ \"$BATON_PROBE\" = 1 ]; then echo 3.0.0; exit 0; fi\nexit 3\n".to_vec();
    let sha3 = hex::encode(sha256(&three));
    publish(&server, "3.0.0", "hello-3.0.0", three);
    baton.wait_count(
        "waits for the trial of release 2.0.0-",
        1,
        Duration::from_secs(20),
    );
    // 2.0.0's trial ends on its own; then 3.0.0 is checked against it, tried
    // and fails, and 2.0.0 stays current.
    support::wait_for("3.0.0 to fail its trial", Duration::from_secs(60), || {
        baton.failed().contains(&sha3).then_some(())
    });
    assert!(baton.current().unwrap().starts_with("2.0.0-"));
    support::wait_version(baton.addr(), "2.0.0");
}
