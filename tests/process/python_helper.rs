//! Python services on the `batonworker` helper (workers/python) under
//! `baton run`, on real gunicorn and uvicorn: gunicorn 20.1, 23 and 27 with
//! `--worker-class batonworker.gunicorn.ThreadWorker`, uvicorn through
//! `python -m batonworker.uvicorn`, each cycled under keep-alive load with
//! zero failures; and, as the contrast, gunicorn's own gthread worker and
//! plain `uvicorn --fd 3`, whose losses are printed, not asserted.
//!
//! The servers come from `BATON_TEST_PY_VENVS`, a directory holding the
//! venvs `venv-gunicorn-20.1`, `venv-gunicorn-23`, `venv-gunicorn-27` and
//! `venv-uvicorn`, each with workers/python installed (ci/test makes them);
//! without it the tests are skipped with a note.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::client::Client;
use crate::support::{self, Baton, Load, LoadMode};

const GUNICORNS: [&str; 3] = ["20.1", "23", "27"];

const WSGI_APP: &str = r#"import os
VERSION = os.environ["HELLO_VERSION"]

def app(environ, start_response):
    body = f"hello {VERSION}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

const ASGI_APP: &str = r#"import os
VERSION = os.environ["HELLO_VERSION"]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"hello {VERSION}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"#;

/// The venv directory, or a note on stderr and `None`: the caller returns.
fn venvs_or_skip(test: &str) -> Option<PathBuf> {
    match std::env::var_os("BATON_TEST_PY_VENVS") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!(
                "SKIPPED {test}: BATON_TEST_PY_VENVS is unset (ci/test makes the gunicorn and \
                 uvicorn venvs with workers/python installed and sets it)"
            );
            None
        }
    }
}

/// The `bin` directory of venv `name`, checked.
fn venv_bin(venvs: &Path, name: &str) -> PathBuf {
    let bin = venvs.join(name).join("bin");
    assert!(
        bin.join("python").exists(),
        "{} is missing; run ci/test",
        bin.display()
    );
    bin
}

/// A Python server under baton: `run.sh` serves the version named in the
/// file `version`, exporting it as HELLO_VERSION, and `exec`s `command` so
/// that the server keeps the worker's PID.
struct PyServer {
    baton: Baton,
    version_file: PathBuf,
}

impl PyServer {
    fn start(command: &str, app: &str, ready: &str) -> PyServer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), app).unwrap();
        let version_file = dir.path().join("version");
        std::fs::write(&version_file, "1.0.0").unwrap();
        support::script(
            &dir.path().join("run.sh"),
            &format!("HELLO_VERSION=\"$(cat version)\"\nexport HELLO_VERSION\nexec {command}"),
        );
        let baton = Baton::start(
            dir,
            &format!(
                "[program]\ncommand = \"./run.sh\"\nlisten = [\"127.0.0.1:0\"]\nready = \"{ready}\"\n\
                 ready_timeout = \"30s\"\ndrain_timeout = \"30s\"\n"
            ),
        );
        baton.wait_count("worker is ready", 1, Duration::from_secs(30));
        support::wait_version(baton.addr(), "1.0.0");
        PyServer {
            baton,
            version_file,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.baton.addr()
    }

    /// Cycles to `version`: waits until fresh connections get it and the
    /// old worker (and its own children) are gone.
    fn cycle_to(&self, version: &str) {
        let old: Vec<u32> = self.baton.children().iter().map(|&(p, _)| p).collect();
        std::fs::write(&self.version_file, version).unwrap();
        self.baton.cycle();
        support::wait_version(self.addr(), version);
        support::wait_for("the old worker to exit", Duration::from_secs(30), || {
            old.iter()
                .all(|&pid| support::process_state(pid).is_none())
                .then_some(())
        });
    }
}

fn gunicorn(bin: &Path, worker_class: &str) -> String {
    format!(
        "{}/gunicorn --worker-class {worker_class} --workers 2 --threads 8 --keep-alive 5 app:app",
        bin.display()
    )
}

fn helper_uvicorn(bin: &Path) -> String {
    format!(
        "{}/python -m batonworker.uvicorn --no-access-log app:app",
        bin.display()
    )
}

/// HTTP/1.1 keep-alive clients (as wrk) and HTTP/1.0 keep-alive ones (as
/// `ab -k`) across `cycles` cycles; returns both reports and the versions
/// they were served by.
fn cycles_under_load(
    server: &PyServer,
    cycles: usize,
) -> Vec<(&'static str, support::load::Report)> {
    let http11 = Load::start(server.addr(), 25, LoadMode::KeepAlive);
    let http10 = Load::start(server.addr(), 25, LoadMode::KeepAlive10);
    http11.wait_more(200);
    http10.wait_more(200);
    for i in 0..cycles {
        server.cycle_to(if i % 2 == 0 { "2.0.0" } else { "1.0.0" });
        http11.wait_more(100);
        http10.wait_more(100);
    }
    vec![
        ("HTTP/1.1 keep-alive", http11.finish()),
        ("HTTP/1.0 keep-alive (ab -k)", http10.finish()),
    ]
}

fn assert_no_failures(what: &str, reports: &[(&str, support::load::Report)]) {
    for (name, report) in reports {
        assert_eq!(
            report.failed, 0,
            "{what}, {name}: failed requests: {:?}",
            report.errors
        );
        for v in ["hello 1.0.0", "hello 2.0.0"] {
            assert!(
                report.versions.contains_key(v),
                "{what}, {name}: {:?}",
                report.versions
            );
        }
    }
}

#[test]
fn gunicorn_thread_worker_cycles_under_keep_alive_load_with_zero_failures() {
    let test = "gunicorn_thread_worker_cycles_under_keep_alive_load_with_zero_failures";
    let Some(venvs) = venvs_or_skip(test) else {
        return;
    };
    for version in GUNICORNS {
        let bin = venv_bin(&venvs, &format!("venv-gunicorn-{version}"));
        let server = PyServer::start(
            &gunicorn(&bin, "batonworker.gunicorn.ThreadWorker"),
            WSGI_APP,
            "notify",
        );
        let reports = cycles_under_load(&server, 5);
        assert_no_failures(&format!("gunicorn {version}"), &reports);
        // Every old arbiter drained and exited on its own.
        server
            .baton
            .wait_count("worker exited: exit code 0", 5, Duration::from_secs(30));
        assert_eq!(
            server.baton.count("worker exited"),
            5,
            "{}",
            server.baton.log()
        );
    }
}

#[test]
fn uvicorn_helper_cycles_under_keep_alive_load_with_zero_failures() {
    let Some(venvs) =
        venvs_or_skip("uvicorn_helper_cycles_under_keep_alive_load_with_zero_failures")
    else {
        return;
    };
    let bin = venv_bin(&venvs, "venv-uvicorn");
    let server = PyServer::start(&helper_uvicorn(&bin), ASGI_APP, "notify");
    let reports = cycles_under_load(&server, 5);
    assert_no_failures("uvicorn through the helper", &reports);
    server
        .baton
        .wait_count("worker exited: exit code 0", 5, Duration::from_secs(30));
    assert_eq!(
        server.baton.count("worker exited"),
        5,
        "{}",
        server.baton.log()
    );
}

/// The drain rule itself, on one gunicorn and on uvicorn: a connection in
/// use gets `Connection: close` on its next request after the drain began,
/// then a clean close; an idle one is closed cleanly, and not before the
/// 1 s grace.
#[test]
fn helpers_answer_close_on_open_connections_and_close_idle_ones_after_the_grace() {
    let Some(venvs) = venvs_or_skip(
        "helpers_answer_close_on_open_connections_and_close_idle_ones_after_the_grace",
    ) else {
        return;
    };
    let gunicorn_bin = venv_bin(&venvs, "venv-gunicorn-23");
    let uvicorn_bin = venv_bin(&venvs, "venv-uvicorn");
    let servers = [
        (
            "gunicorn 23",
            // One worker: both connections are on it.
            format!(
                "{}/gunicorn --worker-class batonworker.gunicorn.ThreadWorker --threads 4 \
                 --keep-alive 30 app:app",
                gunicorn_bin.display()
            ),
            WSGI_APP,
        ),
        (
            "uvicorn",
            format!("{} --timeout-keep-alive 30", helper_uvicorn(&uvicorn_bin)),
            ASGI_APP,
        ),
    ];
    for (what, command, app) in servers {
        let server = PyServer::start(&command, app, "notify");
        let mut busy = Client::connect(server.addr());
        let mut idle = Client::connect(server.addr());
        assert_eq!(busy.get(), (false, "hello 1.0.0".to_owned()), "{what}");
        assert_eq!(idle.get(), (false, "hello 1.0.0".to_owned()), "{what}");
        std::fs::write(&server.version_file, "2.0.0").unwrap();
        server.baton.cycle();
        // The drain began a poll (20 ms) before this, or more on a busy
        // machine: the grace check below allows half a second for that.
        let drain_seen = Instant::now();
        let start = Instant::now();
        loop {
            let (close, body) = busy.get();
            assert_eq!(
                body, "hello 1.0.0",
                "{what}: a keep-alive connection stays on its worker"
            );
            if close {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{what}: no `Connection: close` within 15 s of the drain"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        busy.expect_eof(what);
        idle.expect_eof(what);
        assert!(
            drain_seen.elapsed() >= Duration::from_millis(500),
            "{what}: an idle connection was closed {:?} after the drain began, before its 1 s grace",
            drain_seen.elapsed()
        );
        support::wait_version(server.addr(), "2.0.0");
        server
            .baton
            .wait_count("worker exited: exit code 0", 1, Duration::from_secs(30));
    }
}

/// gunicorn says READY=1 as soon as its arbiter has the sockets; with the
/// helper it is said once the workers have loaded the application, so a
/// new version whose application cannot load never replaces the old one.
#[test]
fn gunicorn_helper_keeps_the_old_worker_when_the_new_application_cannot_load() {
    let Some(venvs) =
        venvs_or_skip("gunicorn_helper_keeps_the_old_worker_when_the_new_application_cannot_load")
    else {
        return;
    };
    let bin = venv_bin(&venvs, "venv-gunicorn-27");
    let server = PyServer::start(
        &gunicorn(&bin, "batonworker.gunicorn.ThreadWorker"),
        &format!(
            "{WSGI_APP}\nif VERSION == \"2.0.0\":\n    raise RuntimeError(\"this build is broken\")\n"
        ),
        "notify",
    );
    let load = Load::start(server.addr(), 10, LoadMode::KeepAlive);
    load.wait_more(100);
    std::fs::write(&server.version_file, "2.0.0").unwrap();
    server.baton.signal(libc::SIGHUP);
    server
        .baton
        .wait_count("exited before it was ready", 1, Duration::from_secs(60));
    load.wait_more(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(support::version(server.addr()), "1.0.0");
    assert_eq!(
        server.baton.count("asking worker to drain"),
        0,
        "{}",
        server.baton.log()
    );
}

/// The contrast: gunicorn's own gthread worker (20.1, 23, 27) and plain
/// `uvicorn --fd 3` (which does not notify: `ready = "delay:1s"`), under the
/// same load and cycles. Their losses are printed, not asserted: they
/// depend on timing.
#[test]
fn plain_gthread_and_uvicorn_contrast_is_measured() {
    let Some(venvs) = venvs_or_skip("plain_gthread_and_uvicorn_contrast_is_measured") else {
        return;
    };
    let mut kinds = Vec::new();
    for version in GUNICORNS {
        let bin = venv_bin(&venvs, &format!("venv-gunicorn-{version}"));
        kinds.push((
            format!("gunicorn {version}, plain gthread"),
            gunicorn(&bin, "gthread"),
            WSGI_APP,
            "notify",
        ));
    }
    let bin = venv_bin(&venvs, "venv-uvicorn");
    kinds.push((
        "uvicorn, plain --fd 3".to_owned(),
        format!("{}/uvicorn --fd 3 --no-access-log app:app", bin.display()),
        ASGI_APP,
        "delay:1s",
    ));
    for (what, command, app, ready) in kinds {
        let server = PyServer::start(&command, app, ready);
        let reports = cycles_under_load(&server, 5);
        for (name, report) in reports {
            eprintln!(
                "{what}, {name}: {} failed of {} over 5 cycles (not asserted){}",
                report.failed,
                report.failed + report.ok,
                report
                    .errors
                    .first()
                    .map(|e| format!("; first: {e}"))
                    .unwrap_or_default()
            );
        }
    }
}
