//! `[hooks]`: `pre_install` gates a new release before its trial (a
//! failure or a timeout refuses it, recorded like a failed build);
//! `post_promote` and `post_rollback` run after those events. Also the
//! JSON log format, whose `event` lines the hooks' tests read.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::release::{hello_bytes, publish, sha256};
use crate::support::http::HttpServer;
use crate::support::{self, Baton};
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

fn status(dir: &Path) -> serde_json::Value {
    let out = cli(dir, &["status", "--json"]);
    assert!(
        out.status.success(),
        "baton status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha_hex(version: &str) -> String {
    hex::encode(sha256(&hello_bytes(version)))
}

/// A master serving a seeded 1.0.0, fed by a manifest offering it, with
/// `hooks` as its `[hooks]` section; scripts go in `dir/hooks/` first.
fn serving(dir: tempfile::TempDir, hooks: &str) -> (HttpServer, Baton) {
    let server = HttpServer::start(true);
    publish(&server, "1.0.0", "hello-1.0.0", hello_bytes("1.0.0"));
    seed_release(dir.path(), "1.0.0");
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\nenv = {{ FROM_PROGRAM_ENV = \"yes\" }}\n\
         [releases]\nbinary = \"hello\"\nsettle = \"300ms\"\n\
         [fetch]\nsource = \"http\"\nurl = \"{}\"\ninterval = \"200ms\"\n[hooks]\n{hooks}\n",
        server.url("/manifest.json")
    );
    let baton = Baton::start_with_env(dir, &config, &[("HOOK_TEST_SECRET", "master-only")]);
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    (server, baton)
}

/// A temp dir with a `hooks/` directory holding `scripts` (name, body).
fn dir_with_hooks(scripts: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("hooks")).unwrap();
    for (name, body) in scripts {
        support::script(&dir.path().join("hooks").join(name), body);
    }
    dir
}

/// `KEY=value` lines written by `env` into a file, as a map.
fn read_env(path: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn a_failing_pre_install_hook_refuses_the_release_and_it_is_not_retried() {
    let dir = dir_with_hooks(&[(
        "refuse",
        "echo \"checking $BATON_VERSION\"\necho \"schema of $BATON_VERSION is incompatible\" >&2\nexit 1",
    )]);
    let (server, baton) = serving(dir, "pre_install = [\"hooks/refuse\"]\n");
    let one = baton.current().unwrap();
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    support::wait_for(
        "2.0.0 to be recorded as failed",
        Duration::from_secs(30),
        || baton.failed().contains(&sha_hex("2.0.0")).then_some(()),
    );
    // Its digest is skipped from now on: the hook is not run again.
    let out = cli(baton.dir.path(), &["upgrade"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("skipped") && said.contains("failed before"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(baton.count("schema of 2.0.0 is incompatible"), 1);
    assert_eq!(support::version(baton.addr()), "1.0.0");
    assert_eq!(baton.current().as_deref(), Some(one.as_str()));
    baton.wait_trial_ended();
    assert!(baton.leftovers().is_empty(), "{:?}", baton.leftovers());
    let s = status(baton.dir.path());
    assert_eq!(s["failed"], serde_json::json!([sha_hex("2.0.0")]));
    assert_eq!(s["current"]["id"], one.as_str());
    assert_eq!(s["on_trial"], serde_json::Value::Null);
    let failure = s["last_failure"].as_str().unwrap_or_default();
    for part in [
        "release 2.0.0-",
        "refused",
        "pre_install hook",
        "exit code 1",
        "checking 2.0.0 | schema of 2.0.0 is incompatible",
    ] {
        assert!(failure.contains(part), "{part:?} not in {failure:?}");
    }
    assert_eq!(s["checks"]["refused"], 1, "{s}");
    let releases = cli(baton.dir.path(), &["releases"]);
    let text = String::from_utf8_lossy(&releases.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("2.0.0-") && l.contains("failed")),
        "{text}"
    );
}

#[test]
fn a_passing_pre_install_hook_sees_the_release_and_post_hooks_run() {
    let dir = dir_with_hooks(&[
        (
            "check",
            "test -x \"$BATON_RELEASE_PATH\" || exit 3\nenv > pre_install.tmp && mv pre_install.tmp pre_install.env",
        ),
        ("promoted", "env > post_promote.tmp && mv post_promote.tmp post_promote.env"),
        ("rolled-back", "env > post_rollback.tmp && mv post_rollback.tmp post_rollback.env"),
    ]);
    let (server, baton) = serving(
        dir,
        "pre_install = [\"hooks/check\"]\npost_promote = [\"hooks/promoted\"]\n\
         post_rollback = [\"hooks/rolled-back\"]\n",
    );
    let d = baton.dir.path().to_owned();
    let one = baton.current().unwrap();
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    let two = baton.wait_current("2.0.0-");
    support::wait_version(baton.addr(), "2.0.0");

    // pre_install ran in program.workdir with the candidate's variables
    // and the workers' environment.
    let pre = read_env(&d.join("pre_install.env"));
    let releases = d.join("releases").canonicalize().unwrap();
    assert_eq!(pre["BATON_HOOK"], "pre_install");
    assert_eq!(pre["BATON_RELEASE"], two);
    assert_eq!(pre["BATON_VERSION"], "2.0.0");
    assert_eq!(pre["BATON_SHA256"], sha_hex("2.0.0"));
    assert_eq!(
        Path::new(&pre["BATON_RELEASE_DIR"]).canonicalize().unwrap(),
        releases.join(&two)
    );
    assert_eq!(
        Path::new(&pre["BATON_RELEASE_PATH"])
            .canonicalize()
            .unwrap(),
        releases.join(&two).join("hello")
    );
    assert_eq!(pre["BATON_PREVIOUS_RELEASE"], one);
    assert_eq!(pre["FROM_PROGRAM_ENV"], "yes");
    assert_eq!(pre["HOOK_TEST_SECRET"], "master-only");
    assert!(!pre.contains_key("LISTEN_FDS"), "{pre:?}");

    // post_promote ran once current named the release.
    let post = support::wait_for("the post_promote hook", Duration::from_secs(20), || {
        let p = d.join("post_promote.env");
        p.exists().then(|| read_env(&p))
    });
    assert_eq!(post["BATON_HOOK"], "post_promote");
    assert_eq!(post["BATON_RELEASE"], two);
    assert_eq!(post["BATON_PREVIOUS_RELEASE"], one);

    // A rollback runs post_rollback for the release it went back to.
    let out = cli(&d, &["rollback"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = support::wait_for("the post_rollback hook", Duration::from_secs(20), || {
        let p = d.join("post_rollback.env");
        p.exists().then(|| read_env(&p))
    });
    assert_eq!(back["BATON_HOOK"], "post_rollback");
    assert_eq!(back["BATON_RELEASE"], one);
    assert_eq!(back["BATON_VERSION"], "1.0.0");
    assert_eq!(back["BATON_PREVIOUS_RELEASE"], two);
    assert_eq!(baton.current().as_deref(), Some(one.as_str()));
}

#[test]
fn a_failing_post_promote_hook_is_logged_and_changes_nothing() {
    let dir = dir_with_hooks(&[("broken", "echo disk full >&2\nexit 7")]);
    let (server, baton) = serving(dir, "post_promote = [\"hooks/broken\"]\n");
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    baton.wait_current("2.0.0-");
    baton.wait_count("post_promote hook", 1, Duration::from_secs(20));
    let log = baton.log();
    let line = log
        .lines()
        .find(|l| l.contains("post_promote hook"))
        .unwrap();
    assert!(
        line.contains("exit code 7") && line.contains("disk full"),
        "{line}"
    );
    support::wait_version(baton.addr(), "2.0.0");
    assert!(baton.failed().is_empty());
}

#[test]
fn a_hanging_pre_install_hook_is_killed_at_its_timeout() {
    let dir = dir_with_hooks(&[(
        "hang",
        "echo $$ > hang.pid\nsleep 600 &\necho $! > child.pid\nwait",
    )]);
    let (server, baton) = serving(dir, "pre_install = [\"hooks/hang\"]\ntimeout = \"1s\"\n");
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    support::wait_for("2.0.0 to be refused", Duration::from_secs(30), || {
        baton.failed().contains(&sha_hex("2.0.0")).then_some(())
    });
    let failure = status(baton.dir.path())["last_failure"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        failure.contains("did not exit within 1s") && failure.contains("process group"),
        "{failure}"
    );
    // The hook and what it started are gone.
    for file in ["hang.pid", "child.pid"] {
        let pid: u32 = std::fs::read_to_string(baton.dir.path().join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        support::wait_for(
            &format!("{file} ({pid}) to be killed and reaped"),
            Duration::from_secs(10),
            || support::process_state(pid).is_none().then_some(()),
        );
    }
    assert_eq!(support::version(baton.addr()), "1.0.0");
}

/// `--log-format json`: every line the master writes is one JSON object
/// with `timestamp`, `level`, `message`, and stable top-level fields; lines
/// the worker itself writes are passed through as they are.
#[test]
fn json_logs_have_stable_top_level_fields() {
    let dir = Baton::dir_with_hello();
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, Baton::hello_config("")).unwrap();
    let log = dir.path().join("baton.log");
    let mut child = Command::new(support::baton_bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("BATON_LOG", "info")
        .env_remove("BATON_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let master_lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            // The hello worker's own lines start with its name.
            .filter(|l| !l.trim().is_empty() && !l.starts_with("hello:"))
            .filter(|l| l.ends_with('}'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let ready = support::wait_for("a worker_ready event", Duration::from_secs(15), || {
        master_lines()
            .into_iter()
            .find(|l| l["event"] == "worker_ready")
    });
    assert_eq!(ready["worker"], 1, "{ready}");
    assert!(ready["pid"].as_u64().is_some(), "{ready}");
    assert_eq!(ready["level"], "INFO");
    assert!(ready["timestamp"].is_string(), "{ready}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .starts_with("worker is ready"),
        "{ready}"
    );
    // SAFETY: kill(2) has no memory preconditions; the child is ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = support::wait_for("the master to exit", Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines().filter(|l| !l.starts_with("hello:")) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "message"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
        assert!(
            v.get("fields").is_none(),
            "fields are not flattened: {line}"
        );
    }
    let events: Vec<String> = master_lines()
        .iter()
        .filter_map(|l| l["event"].as_str().map(str::to_owned))
        .collect();
    for want in [
        "listening",
        "worker_started",
        "worker_ready",
        "stopping",
        "stopped",
    ] {
        assert!(events.iter().any(|e| e == want), "no {want} in {events:?}");
    }
}
