//! A fleet upgraded from signed manifests: `baton keygen` and `baton
//! publish` write a directory, a real HTTP server serves it, and hosts
//! (`baton check --json` with their own host ids, and a `baton run`
//! master) take the release according to their cohort. Manifests changed
//! after signing, expired, signed by an unknown key or naming a lower
//! version are refused with clear errors; two keys rotate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::release::hello_bytes;
use crate::support::http::HttpServer;
use crate::support::{self, Baton};
use crate::trial::seed_release;

/// Runs the `baton` CLI; panics with its output unless it succeeds.
pub(crate) fn baton(args: &[&str]) -> String {
    let (code, text) = baton_exit(args);
    assert_eq!(code, 0, "baton {args:?} failed:\n{text}");
    text
}

/// Runs the `baton` CLI: its exit code and its output (stdout, then
/// stderr).
pub(crate) fn baton_exit(args: &[&str]) -> (i32, String) {
    let out = Command::new(support::baton_bin())
        .args(args)
        .env_remove("BATON_KEY_PASSWORD")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A publisher's workspace: keys, artifacts, and the published directory.
pub(crate) struct Publisher {
    dir: tempfile::TempDir,
}

impl Publisher {
    pub(crate) fn new() -> Publisher {
        let p = Publisher {
            dir: tempfile::tempdir().unwrap(),
        };
        for version in ["1.0.0", "2.0.0"] {
            std::fs::copy(support::hello(version), p.path(&format!("hello-{version}"))).unwrap();
        }
        p
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn out(&self) -> PathBuf {
        self.path("out")
    }

    /// `baton keygen`; returns the public key for `verify.minisign_key`.
    pub(crate) fn keygen(&self, name: &str) -> String {
        let key = self.path(&format!("{name}.key"));
        let said = baton(&["keygen", key.to_str().unwrap()]);
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let b64 = public.lines().nth(1).unwrap().trim().to_owned();
        assert!(said.contains(&b64), "keygen names the key: {said}");
        b64
    }

    /// `baton publish --to out …`.
    pub(crate) fn publish(&self, args: &[&str]) {
        let out = self.out();
        let mut all = vec!["publish", "--to", out.to_str().unwrap()];
        all.extend_from_slice(args);
        baton(&all);
    }

    pub(crate) fn key(&self, name: &str) -> String {
        self.path(&format!("{name}.key"))
            .to_string_lossy()
            .into_owned()
    }

    pub(crate) fn artifact(&self, version: &str) -> String {
        self.path(&format!("hello-{version}"))
            .to_string_lossy()
            .into_owned()
    }
}

/// Serves every file of `dir` at `/<name>` (again after each publish:
/// changed files get new validators). The manifest comes last, as a
/// publish writes it: a host that polls meanwhile never reads a manifest
/// naming an artifact or patch not served yet.
pub(crate) fn serve(server: &HttpServer, dir: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort_by_key(|n| match n.as_str() {
        "manifest.json" => 2,
        "manifest.json.minisig" => 1,
        _ => 0,
    });
    for name in names {
        server.body(&format!("/{name}"), std::fs::read(dir.join(&name)).unwrap());
    }
}

/// A host's directory with `version` installed as current (or nothing).
fn host(
    server: &HttpServer,
    host_id: &str,
    keys: &[&str],
    installed: Option<&str>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(v) = installed {
        seed_release(dir.path(), v);
    }
    let keys = keys
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.path().join("baton.toml"),
        format!(
            "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\n[releases]\nbinary = \"hello\"\n\
             [fetch]\nsource = \"http\"\nurl = \"{}\"\nhost_id = \"{host_id}\"\n\
             [verify]\nminisign_key = [{keys}]\n",
            server.url("/manifest.json")
        ),
    )
    .unwrap();
    dir
}

/// `baton check --json` in a host's directory: the object it printed.
fn check(host: &Path) -> serde_json::Value {
    let out = Command::new(support::baton_bin())
        .args(["check", "--json", "--config"])
        .arg(host.join("baton.toml"))
        .env("BATON_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "baton check --json printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        out.status.success(),
        report["outcome"] != "refused",
        "exit status follows the outcome: {report}"
    );
    report
}

/// The rule, computed independently of baton.
pub(crate) fn in_cohort(host_id: &str, version: &str, percent: u8) -> bool {
    let digest = Sha256::new()
        .chain_update(b"baton-rollout")
        .chain_update(host_id.as_bytes())
        .chain_update(version.as_bytes())
        .finalize();
    let bucket = u64::from_be_bytes(digest[..8].try_into().unwrap());
    u128::from(bucket) * 100 < u128::from(percent) << 64
}

/// Three hosts inside the cohort at `percent` and three outside.
fn pick_hosts(version: &str, percent: u8) -> (Vec<String>, Vec<String>) {
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for i in 0.. {
        let id = format!("host-{i}");
        if in_cohort(&id, version, percent) {
            if inside.len() < 3 {
                inside.push(id);
            }
        } else if outside.len() < 3 {
            outside.push(id);
        }
        if inside.len() == 3 && outside.len() == 3 {
            break;
        }
    }
    (inside, outside)
}

fn refused_with(report: &serde_json::Value, text: &str) {
    assert_eq!(report["outcome"], "refused", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(error.contains(text), "expected {text:?} in {error:?}");
}

#[test]
fn hosts_upgrade_by_cohort_as_the_rollout_rises() {
    let p = Publisher::new();
    let key = p.keygen("release");
    p.publish(&[
        "--version",
        "2.0.0",
        "--rollout",
        "30",
        "--expires",
        "30d",
        "--sign",
        &p.key("release"),
        &p.artifact("2.0.0"),
    ]);
    let server = HttpServer::start(true);
    serve(&server, &p.out());
    let (inside, outside) = pick_hosts("2.0.0", 30);
    let hosts: Vec<_> = inside
        .iter()
        .chain(&outside)
        .map(|id| (id.clone(), host(&server, id, &[&key], Some("1.0.0"))))
        .collect();
    for (id, dir) in &hosts {
        let report = check(dir.path());
        let want = if inside.contains(id) {
            "eligible"
        } else {
            "not_in_rollout"
        };
        assert_eq!(report["outcome"], want, "{id}: {report}");
        assert_eq!(report["host_id"], id.as_str());
        assert_eq!(report["version"], "2.0.0");
        assert_eq!(report["percent"], 30);
        let bucket = report["bucket"].as_f64().unwrap();
        assert_eq!(bucket < 30.0, inside.contains(id), "{id}: {report}");
    }
    // Hosts outside never asked for the artifact: only the eligible ones did.
    let downloads = server.seen("/hello-2.0.0").len();
    assert_eq!(downloads, inside.len(), "one download per eligible host");
    // A host with nothing installed takes the release at once.
    let fresh = host(&server, &outside[0], &[&key], None);
    assert_eq!(check(fresh.path())["outcome"], "eligible");
    // Re-signed at 100 %: everyone is in.
    p.publish(&["--rollout", "100", "--sign", &p.key("release")]);
    serve(&server, &p.out());
    for (id, dir) in &hosts {
        assert_eq!(check(dir.path())["outcome"], "eligible", "{id}");
    }
    // Halted: hosts that have not taken it do not.
    p.publish(&["--rollout", "0", "--sign", &p.key("release")]);
    serve(&server, &p.out());
    assert_eq!(check(hosts[0].1.path())["outcome"], "not_in_rollout");
}

#[test]
fn a_running_master_waits_for_its_turn() {
    let p = Publisher::new();
    let key = p.keygen("release");
    let server = HttpServer::start(true);
    p.publish(&[
        "--version",
        "2.0.0",
        "--rollout",
        "0",
        "--sign",
        &p.key("release"),
        &p.artifact("2.0.0"),
    ]);
    serve(&server, &p.out());
    let dir = host(&server, "web-1", &[&key], Some("1.0.0"));
    let config = std::fs::read_to_string(dir.path().join("baton.toml"))
        .unwrap()
        .replace(
            "[program]\n",
            "[program]\nready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n",
        )
        .replace(
            "binary = \"hello\"\n",
            "binary = \"hello\"\nsettle = \"200ms\"\n",
        )
        .replace("host_id = ", "interval = \"200ms\"\nhost_id = ");
    let baton = Baton::start(dir, &config);
    baton.wait_ready();
    baton.wait_count(
        "the rollout is halted (rollout 0)",
        1,
        Duration::from_secs(20),
    );
    assert!(
        baton.log().contains("host web-1"),
        "the decision names the host"
    );
    assert!(baton.current().unwrap().starts_with("1.0.0-"));
    assert!(server.seen("/hello-2.0.0").is_empty(), "nothing downloaded");
    p.publish(&["--rollout", "100", "--sign", &p.key("release")]);
    serve(&server, &p.out());
    baton.wait_current("2.0.0-");
    assert_eq!(support::version(baton.addr()), "2.0.0");
    assert!(baton.log().contains("this host is in the rollout"));
}

#[test]
fn a_manifest_changed_after_signing_is_refused() {
    let p = Publisher::new();
    let key = p.keygen("release");
    p.publish(&[
        "--version",
        "2.0.0",
        "--rollout",
        "10",
        "--sign",
        &p.key("release"),
        &p.artifact("2.0.0"),
    ]);
    let manifest = p.out().join("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"rollout\": 10", "\"rollout\": 100");
    std::fs::write(&manifest, text).unwrap();
    let server = HttpServer::start(true);
    serve(&server, &p.out());
    let dir = host(&server, "h", &[&key], Some("1.0.0"));
    refused_with(&check(dir.path()), "bad manifest signature");
}

#[test]
fn an_expired_manifest_is_refused() {
    let p = Publisher::new();
    let key = p.keygen("release");
    p.publish(&[
        "--version",
        "2.0.0",
        "--expires",
        "0s",
        "--sign",
        &p.key("release"),
        &p.artifact("2.0.0"),
    ]);
    let server = HttpServer::start(true);
    serve(&server, &p.out());
    let dir = host(&server, "h", &[&key], Some("1.0.0"));
    refused_with(&check(dir.path()), "the manifest expired at");
}

#[test]
fn a_manifest_signed_by_an_unknown_key_is_refused() {
    let p = Publisher::new();
    let trusted = p.keygen("trusted");
    p.keygen("stranger");
    p.publish(&[
        "--version",
        "2.0.0",
        "--sign",
        &p.key("stranger"),
        &p.artifact("2.0.0"),
    ]);
    let server = HttpServer::start(true);
    serve(&server, &p.out());
    let dir = host(&server, "h", &[&trusted], Some("1.0.0"));
    refused_with(&check(dir.path()), "signed by an unknown key");
}

#[test]
fn a_signed_manifest_naming_a_lower_version_is_refused() {
    let p = Publisher::new();
    let key = p.keygen("release");
    p.publish(&[
        "--version",
        "1.0.0",
        "--sign",
        &p.key("release"),
        &p.artifact("1.0.0"),
    ]);
    let server = HttpServer::start(true);
    serve(&server, &p.out());
    let dir = host(&server, "h", &[&key], Some("2.0.0"));
    refused_with(&check(dir.path()), "refusing downgrade from 2.0.0 to 1.0.0");
    assert!(
        server.seen("/hello-1.0.0").is_empty(),
        "refused before downloading"
    );
}

#[test]
fn an_unsigned_manifest_with_a_rollout_is_refused_when_a_key_is_set() {
    let p = Publisher::new();
    let key = p.keygen("release");
    p.publish(&[
        "--version",
        "2.0.0",
        "--rollout",
        "100",
        &p.artifact("2.0.0"),
    ]);
    let server = HttpServer::start(true);
    serve(&server, &p.out());
    let dir = host(&server, "h", &[&key], Some("1.0.0"));
    refused_with(&check(dir.path()), "has no signature");
}

#[test]
fn two_trusted_keys_rotate() {
    let p = Publisher::new();
    let old = p.keygen("old");
    let new = p.keygen("new");
    let server = HttpServer::start(true);
    let both = host(&server, "h", &[&old, &new], Some("1.0.0"));
    let only_new = host(&server, "h", &[&new], Some("1.0.0"));
    p.publish(&[
        "--version",
        "2.0.0",
        "--sign",
        &p.key("old"),
        &p.artifact("2.0.0"),
    ]);
    serve(&server, &p.out());
    assert_eq!(check(both.path())["outcome"], "eligible");
    refused_with(&check(only_new.path()), "signed by an unknown key");
    // Publish again under the new key (re-signing needs the old signature
    // to verify with the signing key, so the release is published anew).
    p.publish(&[
        "--version",
        "2.0.0",
        "--sign",
        &p.key("new"),
        &p.artifact("2.0.0"),
    ]);
    serve(&server, &p.out());
    assert_eq!(check(both.path())["outcome"], "eligible");
    assert_eq!(check(only_new.path())["outcome"], "eligible");
    assert_eq!(
        hello_bytes("2.0.0").len() as u64,
        std::fs::metadata(p.out().join("hello-2.0.0"))
            .unwrap()
            .len()
    );
}
