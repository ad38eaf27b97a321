//! Fetch credentials stay with the master: workers and probes get its
//! environment without the github source's token, unless `[program]
//! pass_env` names it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::github::FakeGithub;
use crate::support::{self, Baton};

const TOKEN: &str = "ghp_credentials0123456789";

/// A release asset: a script that, run as the probe, writes its environment
/// to `probe_env` and prints its version; run as a worker, execs hello 1.0.0
/// (keeping its PID, so its /proc environ is the worker's).
fn candidate(probe_env: &Path) -> Vec<u8> {
    format!(
        "#!/bin/sh\nif [ \"$BATON_PROBE\" = 1 ]; then\n  env > '{env}.tmp' && mv '{env}.tmp' '{env}'\n  echo 1.0.0\n  exit 0\nfi\nexec '{hello}' \"$@\"\n",
        env = probe_env.display(),
        hello = support::hello("1.0.0").display()
    )
    .into_bytes()
}

/// A master whose first release comes from a private repo, with the token
/// only in its environment; returns it serving, and where the probe wrote
/// its environment.
fn serving(program_extra: &str) -> (FakeGithub, Baton, PathBuf) {
    let gh = FakeGithub::start(Some(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let probe_env = dir.path().join("probe-env.txt");
    let asset = format!(
        "hello-1.0.0-{}-{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    gh.release(
        "v1.0.0",
        false,
        false,
        &[(&asset, candidate(&probe_env), true)],
    );
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n{program_extra}\n\
         [releases]\nbinary = \"hello\"\n[fetch]\nsource = \"github\"\nrepo = \"acme/hello\"\n\
         asset = \"hello-{{version}}-{{os}}-{{arch}}\"\napi_url = \"{}\"\ninterval = \"1h\"\n",
        gh.api_url()
    );
    let baton = Baton::start_with_env(
        dir,
        &config,
        &[("GITHUB_TOKEN", TOKEN), ("BATON_TEST_MARK", "kept")],
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    (gh, baton, probe_env)
}

/// The serving worker's environment, from /proc.
fn worker_env(baton: &Baton) -> Vec<String> {
    let live: Vec<u32> = baton
        .children()
        .into_iter()
        .filter(|&(_, state)| state != 'Z')
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(live.len(), 1, "one worker expected: {live:?}");
    let environ = std::fs::read(format!("/proc/{}/environ", live[0])).unwrap();
    environ
        .split(|&b| b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn probe_env(path: &Path) -> Vec<String> {
    let text = support::wait_for("the probe's environment", Duration::from_secs(10), || {
        std::fs::read_to_string(path).ok()
    });
    text.lines().map(str::to_owned).collect()
}

#[test]
fn workers_and_probes_do_not_get_the_fetch_token() {
    let (_gh, baton, probe) = serving("");
    for (who, env) in [("worker", worker_env(&baton)), ("probe", probe_env(&probe))] {
        assert!(
            !env.iter()
                .any(|v| v.starts_with("GITHUB_TOKEN=") || v.contains(TOKEN)),
            "the {who} got the token: {env:?}"
        );
        assert!(
            env.iter().any(|v| v == "BATON_TEST_MARK=kept"),
            "the {who} lost the rest of the environment: {env:?}"
        );
    }
    assert!(probe_env(&probe).iter().any(|v| v == "BATON_PROBE=1"));
}

#[test]
fn pass_env_hands_the_token_on() {
    let (_gh, baton, probe) = serving("pass_env = [\"GITHUB_TOKEN\"]");
    let want = format!("GITHUB_TOKEN={TOKEN}");
    for (who, env) in [("worker", worker_env(&baton)), ("probe", probe_env(&probe))] {
        assert!(env.contains(&want), "the {who} lacks the token: {env:?}");
    }
}
