//! Operating baton from the shell: `baton check --install` beside a
//! running master goes through its control socket, and `baton completions`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::release::{hello_bytes, publish};
use crate::support::http::HttpServer;
use crate::support::{self, Baton};
use crate::trial::seed_release;

pub(crate) fn baton(dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(support::baton_bin());
    cmd.args(args);
    if let Some(dir) = dir {
        cmd.arg("--config").arg(dir.join("baton.toml"));
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_install_beside_a_running_master_asks_it_through_the_socket() {
    let server = HttpServer::start(true);
    publish(&server, "1.0.0", "hello-1.0.0", hello_bytes("1.0.0"));
    let dir = tempfile::tempdir().unwrap();
    seed_release(dir.path(), "1.0.0");
    // Checks only when asked: the install below is the CLI's doing.
    let config = format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\n\
         drain_timeout = \"10s\"\n[releases]\nbinary = \"hello\"\nsettle = \"300ms\"\n\
         [fetch]\nsource = \"http\"\nurl = \"{}\"\ninterval = \"1h\"\n",
        server.url("/manifest.json")
    );
    let master = Baton::start(dir, &config);
    master.wait_ready();
    let d = master.dir.path().to_owned();
    publish(&server, "2.0.0", "hello-2.0.0", hello_bytes("2.0.0"));
    let out = baton(Some(&d), &["check", "--install"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("through") && said.contains(".baton.sock"),
        "{said}"
    );
    assert!(said.contains("installed"), "{said}");
    master.wait_current("2.0.0-");
    support::wait_version(master.addr(), "2.0.0");
    // Once more, as JSON: the master has nothing newer.
    let out = baton(Some(&d), &["check", "--install", "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert!(out.status.success(), "{report}");
    assert_eq!(report["outcome"], "unchanged", "{report}");
    assert_eq!(report["master"]["ok"], true, "{report}");
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "_baton()"),
        ("zsh", "#compdef baton"),
        ("fish", "complete -c baton"),
    ] {
        let out = baton(None, &["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for word in ["rollback", "status", "log-format"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let out = baton(None, &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = baton(None, &["--version"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("baton 0."),
        "{}",
        text(&out)
    );
}
