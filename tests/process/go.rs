//! A Go worker on the `batonworker` helper (workers/go) under `baton run`,
//! and, as the contrast, the same service drained with plain
//! `http.Server.Shutdown`.
//!
//! The Go programs come from `BATON_TEST_GO_BINS` (ci/test builds them);
//! without it they are built here with `go` into `target/go-bins`, and the
//! tests are skipped only when there is no `go` either.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::client::Client;
use crate::support::{self, Baton, Load, LoadMode};

/// The directory holding `hello-<v>` (the helper) and `shutdown-<v>` (the
/// contrast) for 1.0.0 and 2.0.0, or `None` when they cannot be had.
fn go_bins() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("BATON_TEST_GO_BINS") {
            return Some(PathBuf::from(dir));
        }
        if Command::new("go").arg("version").output().is_err() {
            return None;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = root.join("target/go-bins");
        std::fs::create_dir_all(&out).unwrap();
        for kind in ["hello", "shutdown"] {
            for version in ["1.0.0", "2.0.0"] {
                let status = Command::new("go")
                    .args(["build", "-ldflags"])
                    .arg(format!("-X main.version={version}"))
                    .arg("-o")
                    .arg(out.join(format!("{kind}-{version}")))
                    .arg(format!("./{kind}"))
                    .current_dir(root.join("workers/go/example"))
                    .envs([
                        ("GOFLAGS", "-mod=mod"),
                        ("GOPROXY", "off"),
                        ("GOTOOLCHAIN", "local"),
                    ])
                    .status()
                    .expect("run go build");
                assert!(status.success(), "building the Go {kind} {version} failed");
            }
        }
        Some(out)
    })
    .as_deref()
}

/// The Go binaries, or a note on stderr and `None`: the caller returns.
fn go_bins_or_skip(test: &str) -> Option<&'static Path> {
    let bins = go_bins();
    if bins.is_none() {
        eprintln!(
            "SKIPPED {test}: BATON_TEST_GO_BINS is unset and there is no `go` to build \
             workers/go/example (ci/test installs Go and sets it)"
        );
    }
    bins
}

/// baton running `bin/hello`, a symlink to the Go `kind` at 1.0.0.
fn start(bins: &Path, kind: &str) -> Baton {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    support::point(
        &dir.path().join("bin/hello"),
        &bins.join(format!("{kind}-1.0.0")),
    );
    let baton = Baton::start(dir, &Baton::hello_config(""));
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    baton
}

/// Points `bin/hello` at `kind`-`version`, cycles, waits until fresh
/// connections get `version` and the old worker is gone.
fn cycle_to(baton: &Baton, bins: &Path, kind: &str, version: &str) {
    let old: Vec<u32> = baton.children().iter().map(|&(pid, _)| pid).collect();
    support::point(
        &baton.dir.path().join("bin/hello"),
        &bins.join(format!("{kind}-{version}")),
    );
    baton.cycle();
    support::wait_version(baton.addr(), version);
    support::wait_for("the old worker to exit", Duration::from_secs(15), || {
        old.iter()
            .all(|&pid| support::process_state(pid).is_none())
            .then_some(())
    });
}

#[test]
fn go_helper_cycles_under_keep_alive_load_with_zero_failures() {
    let Some(bins) = go_bins_or_skip("go_helper_cycles_under_keep_alive_load_with_zero_failures")
    else {
        return;
    };
    let baton = start(bins, "hello");
    let addr = baton.addr();
    // wrk-style HTTP/1.1 keep-alive clients and ab -k-style HTTP/1.0 ones.
    let http11 = Load::start(addr, 32, LoadMode::KeepAlive);
    let http10 = Load::start(addr, 32, LoadMode::KeepAlive10);
    http11.wait_more(300);
    http10.wait_more(300);
    let cycles = 10;
    for i in 0..cycles {
        let version = if i % 2 == 0 { "2.0.0" } else { "1.0.0" };
        cycle_to(&baton, bins, "hello", version);
        http11.wait_more(100);
        http10.wait_more(100);
    }
    for (name, load) in [("HTTP/1.1", http11), ("HTTP/1.0 keep-alive", http10)] {
        let report = load.finish();
        assert_eq!(
            report.failed, 0,
            "{name}: failed requests: {:?}",
            report.errors
        );
        for v in ["hello 1.0.0", "hello 2.0.0"] {
            assert!(
                report.versions.contains_key(v),
                "{name}: {:?}",
                report.versions
            );
        }
    }
    // Every old worker drained and exited on its own, none was killed.
    baton.wait_count(
        "worker exited: exit code 0",
        cycles,
        Duration::from_secs(15),
    );
    assert_eq!(baton.count("worker exited"), cycles, "{}", baton.log());
}

#[test]
fn go_helper_answers_close_on_open_connections_and_closes_idle_ones_after_the_grace() {
    let Some(bins) = go_bins_or_skip(
        "go_helper_answers_close_on_open_connections_and_closes_idle_ones_after_the_grace",
    ) else {
        return;
    };
    let baton = start(bins, "hello");
    let addr = baton.addr();
    let mut busy = Client::connect(addr);
    let mut idle = Client::connect(addr);
    assert_eq!(busy.get(), (false, "hello 1.0.0".to_owned()));
    let idle_since = Instant::now();
    assert_eq!(idle.get(), (false, "hello 1.0.0".to_owned()));

    support::point(
        &baton.dir.path().join("bin/hello"),
        &bins.join("hello-2.0.0"),
    );
    baton.cycle();
    // The busy connection keeps asking: every answer succeeds, and once the
    // old worker drains one says `Connection: close`, after which it closes.
    let start = Instant::now();
    loop {
        let (close, body) = busy.get();
        assert_eq!(
            body, "hello 1.0.0",
            "a keep-alive connection stays on its worker"
        );
        if close {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no `Connection: close` within 15 s of the drain"
        );
    }
    busy.expect_eof("the connection");
    // The idle connection is closed cleanly, and not before the grace.
    idle.expect_eof("the connection");
    assert!(
        idle_since.elapsed() >= Duration::from_secs(1),
        "an idle connection was closed before its 1 s grace"
    );
    support::wait_version(addr, "2.0.0");
    baton.wait_count("worker exited: exit code 0", 1, Duration::from_secs(15));
}

/// The contrast: the same service drained with `http.Server.Shutdown`, as
/// a go-systemd program does. Its losses are printed (BENCHMARKS.md has the
/// measured table), not asserted: they depend on timing.
#[test]
fn go_plain_shutdown_contrast_is_measured() {
    let Some(bins) = go_bins_or_skip("go_plain_shutdown_contrast_is_measured") else {
        return;
    };
    let baton = start(bins, "shutdown");
    let addr = baton.addr();
    let http11 = Load::start(addr, 32, LoadMode::KeepAlive);
    let http10 = Load::start(addr, 32, LoadMode::KeepAlive10);
    http11.wait_more(300);
    http10.wait_more(300);
    for i in 0..6 {
        let version = if i % 2 == 0 { "2.0.0" } else { "1.0.0" };
        cycle_to(&baton, bins, "shutdown", version);
        http11.wait_more(100);
        http10.wait_more(100);
    }
    for (name, load) in [("HTTP/1.1", http11), ("HTTP/1.0 keep-alive", http10)] {
        let report = load.finish();
        eprintln!(
            "plain http.Server.Shutdown, 6 cycles, {name}: {} failed of {} ({:?})",
            report.failed,
            report.ok + report.failed,
            report.errors.first()
        );
        assert!(report.versions.len() >= 2, "{:?}", report.versions);
    }
}
