//! Bad config files: one clear error naming the key, exit code 2, nothing
//! bound or spawned.

use std::process::Command;

use crate::support::baton_bin;

fn run_with(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(baton_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_fail_with_exit_code_2_and_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"soon\"\n",
            "invalid `program.ready_timeout` = \"soon\": not a duration",
        ),
        (
            "[program]\ncommand = \"x\"\nlisten = [\"localhost\"]\n",
            "invalid `program.listen` = \"localhost\"",
        ),
        (
            "[program]\ncommand = \"x\"\nlisten = []\n",
            "invalid `program.listen`",
        ),
        (
            "[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:0\"]\nstop_signal = \"SIGSTOP\"\n",
            "invalid `program.stop_signal`",
        ),
        (
            "[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:0\"]\nready = \"maybe\"\n",
            "invalid `program.ready` = \"maybe\"",
        ),
        (
            "[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:0\"]\ndrain_timeout = \"0s\"\n",
            "must be more than zero",
        ),
        (
            "[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:0\"]\nready_timout = \"1s\"\n",
            "unknown field `ready_timout`",
        ),
        (
            "[program]\nlisten = [\"127.0.0.1:0\"]\n",
            "missing field `command`",
        ),
        (
            "[program]\ncommand = \"x\"\nlisten = \"127.0.0.1:0\"\n",
            "invalid type",
        ),
        ("[program\ncommand = \"x\"\n", "invalid config"),
    ];
    for (config, expected) in cases {
        let (code, stderr) = run_with(config);
        assert_eq!(code, Some(2), "config {config:?} gave {code:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "config {config:?}: stderr {stderr:?} lacks {expected:?}"
        );
        assert!(
            !stderr.contains("listening on"),
            "bound before validating: {stderr}"
        );
    }
}

#[test]
fn missing_config_file_fails_with_exit_code_2() {
    let out = Command::new(baton_bin())
        .args(["run", "--config", "/nonexistent/baton.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read config /nonexistent/baton.toml: No such file"),
        "{stderr}"
    );
}

#[test]
fn address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, stderr) = run_with(&format!(
        "[program]\ncommand = \"x\"\nlisten = [\"{addr}\"]\n"
    ));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("cannot listen on {addr}: Address already in use")),
        "{stderr}"
    );
}
