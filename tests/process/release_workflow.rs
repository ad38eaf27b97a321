//! The release workflow's publish step, dry-run: the very command line
//! `.github/workflows/release.yml` runs (`ci/release-publish …`, taken
//! from the workflow file) with the workflow's environment, pointed at the
//! fake GitHub API with `--api-url`. The release it makes must hold the
//! signed manifest, its artifact, SHA256SUMS with a valid minisign
//! signature and the package, and a `baton check` of a host reading that
//! release through its manifest (a `github` source with `api_url`, as a
//! `[self]` host reads baton's own releases) must accept it.
//!
//! Needs the minisign CLI (Debian's package; ci/deb installs it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

use crate::github::TOKEN;
use crate::support::{self, github::FakeGithub};

const PASSWORD: &str = "release-key-password";

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workflow's `ci/release-publish …` command line.
fn publish_command() -> String {
    let workflow = std::fs::read_to_string(root().join(".github/workflows/release.yml")).unwrap();
    let lines: Vec<&str> = workflow
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ci/release-publish "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "the workflow runs ci/release-publish once:\n{workflow}"
    );
    lines[0].to_owned()
}

/// The version of the baton under test (`baton --version`).
fn version() -> String {
    let out = Command::new(support::baton_bin())
        .arg("--version")
        .output()
        .unwrap();
    let said = String::from_utf8(out.stdout).unwrap();
    said.trim().strip_prefix("baton ").unwrap().to_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A scratch directory laid out as the publish job's checkout: `ci/` (the
/// repository's), `dist/` (the build jobs' output: this baton as the
/// artifact of this host's triple, and a package), and an encrypted key.
struct Job {
    dir: tempfile::TempDir,
    public_key: String,
}

impl Job {
    fn new(version: &str) -> Job {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(root().join("ci"), dir.path().join("ci")).unwrap();
        let dist = dir.path().join("dist");
        std::fs::create_dir(&dist).unwrap();
        std::fs::copy(
            support::baton_bin(),
            dist.join(format!("baton-{}", baton::manifest::TARGET)),
        )
        .unwrap();
        std::fs::write(
            dist.join(format!("baton_{version}-1_amd64.deb")),
            b"!<arch>\nnot a real package\n",
        )
        .unwrap();
        let key = dir.path().join("baton.key");
        let out = Command::new(support::baton_bin())
            .arg("keygen")
            .arg(&key)
            .env("BATON_KEY_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(out.status.success(), "baton keygen: {out:?}");
        let public = std::fs::read_to_string(dir.path().join("baton.pub")).unwrap();
        let public_key = public.lines().nth(1).unwrap().trim().to_owned();
        Job { dir, public_key }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the workflow's publish command for `tag`, as its step does.
    fn publish(&self, gh: &FakeGithub, tag: &str) -> (Output, String) {
        let command = format!("{} --api-url {}", publish_command(), gh.api_url());
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &command])
            .current_dir(self.dir.path())
            .env("GITHUB_REPOSITORY", "acme/hello")
            .env("GITHUB_REF_NAME", tag)
            .env("GITHUB_TOKEN", TOKEN)
            .env("BATON_KEY", self.path("baton.key"))
            .env("BATON_KEY_PASSWORD", PASSWORD)
            .env("BATON", support::baton_bin())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out, text)
    }
}

/// A GET on the fake API with the token: the reply's JSON body.
fn api_get(gh: &FakeGithub, path: &str) -> serde_json::Value {
    let addr = gh.api_url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Accept: application/vnd.github+json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    serde_json::from_str(body).unwrap()
}

fn minisign_installed() -> bool {
    Command::new("minisign")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_workflow_publish_step_makes_a_release_a_host_accepts() {
    assert!(
        minisign_installed(),
        "the minisign CLI is needed (apt-get install minisign; ci/deb installs it)"
    );
    let version = version();
    let tag = format!("v{version}");
    let job = Job::new(&version);
    let gh = FakeGithub::start(Some(TOKEN));
    let (out, said) = job.publish(&gh, &tag);
    assert!(out.status.success(), "the publish step failed:\n{said}");
    assert!(
        said.contains(&format!(
            "published baton {version} to github:acme/hello@{tag}: 1 target(s), 1 package(s), SHA256SUMS signed"
        )),
        "{said}"
    );

    // The release: the manifest, its signature and artifact, the
    // publisher's history, and SHA256SUMS, its signature and the package,
    // each uploaded whole.
    let release = api_get(&gh, &format!("/repos/acme/hello/releases/tags/{tag}"));
    let artifact = format!("baton-{}", baton::manifest::TARGET);
    let deb = format!("baton_{version}-1_amd64.deb");
    let mut names: Vec<String> = release["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    let mut want = vec![
        artifact.clone(),
        deb.clone(),
        "SHA256SUMS".to_owned(),
        "SHA256SUMS.minisig".to_owned(),
        "manifest.json".to_owned(),
        "manifest.json.minisig".to_owned(),
        "releases.json".to_owned(),
        "releases.json.minisig".to_owned(),
    ];
    want.sort();
    assert_eq!(names, want);
    let dist = job.path("dist");
    for asset in release["assets"].as_array().unwrap() {
        let name = asset["name"].as_str().unwrap();
        if let Ok(bytes) = std::fs::read(dist.join(name)) {
            assert_eq!(
                asset["digest"].as_str().unwrap(),
                format!("sha256:{}", sha256_hex(&bytes)),
                "{name} was uploaded whole"
            );
        }
    }
    assert_eq!(gh.leaked_auth(), 0);

    // SHA256SUMS names the artifact and the package, and its signature is
    // good under the release key.
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    for name in [&artifact, &deb] {
        let bytes = std::fs::read(dist.join(name)).unwrap();
        assert!(
            sums.contains(&format!("{}  {name}\n", sha256_hex(&bytes))),
            "{sums}"
        );
    }
    let verified = Command::new("minisign")
        .args(["-V", "-q", "-P", &job.public_key, "-m"])
        .arg(dist.join("SHA256SUMS"))
        .output()
        .unwrap();
    assert!(verified.status.success(), "minisign -V: {verified:?}");

    // A host trusting the key, reading the release through its manifest,
    // probing the candidate as `[self]` does (`baton --version`).
    let host = tempfile::tempdir().unwrap();
    let config = host.path().join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "[program]\ncommand = \"releases/current/baton\"\nlisten = [\"127.0.0.1:0\"]\n\
             [releases]\nbinary = \"baton\"\n\
             [fetch]\nsource = \"github\"\nrepo = \"acme/hello\"\napi_url = \"{}\"\ntoken = \"{TOKEN}\"\n\
             [verify]\nminisign_key = \"{}\"\nprobe = [\"--version\"]\n",
            gh.api_url(),
            job.public_key
        ),
    )
    .unwrap();
    let out = Command::new(support::baton_bin())
        .args(["check", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reply: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "baton check --json printed no JSON ({e}):\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        reply["outcome"],
        "eligible",
        "{reply}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(reply["version"], version.as_str(), "{reply}");
}

#[test]
fn a_tag_that_is_not_the_built_version_is_refused() {
    let version = version();
    let job = Job::new(&version);
    let gh = FakeGithub::start(Some(TOKEN));
    let (out, said) = job.publish(&gh, "v99.0.0");
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "the tag v99.0.0 is not the version built (baton {version})"
        )),
        "{said}"
    );
    assert!(
        gh.seen("/").is_empty(),
        "nothing reached the API: {:?}",
        gh.seen("/")
    );
}

/// The workflow's other steps name what the publish step reads.
#[test]
fn the_workflow_builds_what_the_publish_step_reads() {
    let workflow = std::fs::read_to_string(root().join(".github/workflows/release.yml")).unwrap();
    for needle in [
        "tags: [\"v*\"]",
        "deb=$(ci/deb --build-only)",
        "cp target/release/baton \"dist/baton-${{ matrix.target }}\"",
        "target: x86_64-unknown-linux-gnu",
        "target: aarch64-unknown-linux-gnu",
        "BATON_KEY_PASSWORD: ${{ secrets.BATON_KEY_PASSWORD }}",
        "export BATON_KEY=",
    ] {
        assert!(workflow.contains(needle), "the workflow lacks {needle:?}");
    }
    assert!(Path::new(&root().join("ci/release-publish")).exists());
}
