//! The GitHub releases fetcher against a local server that answers as
//! GitHub's REST API does (fixtures/github/), with asset downloads redirected
//! to a separate storage host.

use std::time::Duration;

use crate::support::github::{FakeGithub, Fault};
use crate::support::{self, Baton, Load, LoadMode};

pub(crate) const TOKEN: &str = "ghp_testtoken0123456789";
const PATTERN: &str = "hello-{version}-{os}-{arch}";

fn asset_name(version: &str) -> String {
    format!(
        "hello-{version}-{}-{}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn hello_bytes(version: &str) -> Vec<u8> {
    std::fs::read(support::hello(version)).unwrap()
}

fn publish(gh: &FakeGithub, version: &str) {
    gh.release(
        &format!("v{version}"),
        false,
        false,
        &[(&asset_name(version), hello_bytes(version), true)],
    );
}

pub(crate) fn config(gh: &FakeGithub, repo: &str, token: &str, extra: &str) -> String {
    format!(
        "[program]\ncommand = \"releases/current/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n\
         [releases]\nbinary = \"hello\"\nsettle = \"500ms\"\n[fetch]\nsource = \"github\"\nrepo = \"{repo}\"\nasset = \"{PATTERN}\"\napi_url = \"{}\"\n\
         token = \"{token}\"\ninterval = \"200ms\"\n{extra}\n",
        gh.api_url()
    )
}

/// A master on a private repo serving v1.0.0.
fn serving(extra: &str) -> (FakeGithub, Baton) {
    let gh = FakeGithub::start(Some(TOKEN));
    publish(&gh, "1.0.0");
    let baton = Baton::start(
        tempfile::tempdir().unwrap(),
        &config(&gh, "acme/hello", TOKEN, extra),
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    baton.wait_current("1.0.0-");
    (gh, baton)
}

#[test]
fn new_release_upgrades_under_load() {
    let (gh, baton) = serving("");
    let load = Load::start(baton.addr(), 64, LoadMode::KeepAlive);
    load.wait_more(300);
    publish(&gh, "2.0.0");
    support::wait_version(baton.addr(), "2.0.0");
    load.wait_more(300);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    baton.wait_current("2.0.0-");
    assert_eq!(gh.downloads(), 2);
    assert_eq!(
        gh.leaked_auth(),
        0,
        "the token was sent to the storage host"
    );
    assert!(gh.seen("/repos/acme/hello/releases/assets/").contains(&302));
}

#[test]
fn unchanged_release_is_polled_with_304s_and_no_downloads() {
    let (gh, baton) = serving("");
    let start = gh.seen("/repos/acme/hello/releases/latest").len();
    support::wait_for("20 more polls", Duration::from_secs(30), || {
        (gh.seen("/repos/acme/hello/releases/latest").len() >= start + 20).then_some(())
    });
    let polls = gh.seen("/repos/acme/hello/releases/latest");
    assert!(polls[start..].iter().all(|&s| s == 304), "{polls:?}");
    assert_eq!(gh.downloads(), 1);
    drop(baton);
}

#[test]
fn semver_mode_takes_the_highest_tag_across_pages() {
    let gh = FakeGithub::start(None);
    gh.page_size(2);
    publish(&gh, "1.0.0");
    gh.release(
        "v2.0.0",
        false,
        false,
        &[(&asset_name("2.0.0"), hello_bytes("2.0.0"), true)],
    );
    // Newer by date but lower, a pre-release, a draft, and a tag that is
    // not semver: none of them wins.
    gh.release(
        "v1.5.0",
        false,
        false,
        &[(&asset_name("1.5.0"), b"not taken".to_vec(), true)],
    );
    gh.release(
        "v3.0.0-rc.1",
        true,
        false,
        &[(&asset_name("3.0.0-rc.1"), b"not taken".to_vec(), true)],
    );
    gh.release(
        "v9.0.0",
        false,
        true,
        &[(&asset_name("9.0.0"), b"not taken".to_vec(), true)],
    );
    gh.release("nightly", false, false, &[]);
    let baton = Baton::start(
        tempfile::tempdir().unwrap(),
        &config(&gh, "acme/hello", "", "semver = true"),
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "2.0.0");
    assert!(
        gh.seen("/repositories/1296269/releases").len() >= 2,
        "later pages were read through Link"
    );
}

#[test]
fn checksum_and_signature_come_from_sibling_assets() {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let sign = |bytes: &[u8]| {
        minisign::sign(
            Some(&kp.pk),
            &kp.sk,
            std::io::Cursor::new(bytes),
            None,
            None,
        )
        .unwrap()
        .into_string()
        .into_bytes()
    };
    let gh = FakeGithub::start(None);
    let one = hello_bytes("1.0.0");
    let name = asset_name("1.0.0");
    let sums = format!(
        "{}  {name}\n{}  other-file\n",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&one)),
        "0".repeat(64)
    );
    gh.release(
        "v1.0.0",
        false,
        false,
        &[
            (&name, one.clone(), false),
            ("SHA256SUMS", sums.into_bytes(), false),
            (&format!("{name}.minisig"), sign(&one), false),
        ],
    );
    let extra = format!("[verify]\nminisign_key = \"{}\"", kp.pk.to_base64());
    let baton = Baton::start(
        tempfile::tempdir().unwrap(),
        &config(&gh, "acme/hello", "", &extra),
    );
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    baton.wait_current("1.0.0-");
    // A release whose SHA256SUMS disagrees with its asset is refused.
    let two = hello_bytes("2.0.0");
    let name = asset_name("2.0.0");
    gh.release(
        "v2.0.0",
        false,
        false,
        &[
            (&name, two.clone(), false),
            (
                "SHA256SUMS",
                format!("{}  {name}\n", "ab".repeat(32)).into_bytes(),
                false,
            ),
            (&format!("{name}.minisig"), sign(&two), false),
        ],
    );
    baton.wait_count(
        "sha256 mismatch: the source expects abab",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(support::version(baton.addr()), "1.0.0");
}

/// A master serving v1.0.0 under load whose source then breaks as
/// `breakage` says: the error is named and the service keeps serving.
fn keeps_serving(expect: &str, breakage: impl FnOnce(&FakeGithub)) -> Baton {
    let (gh, baton) = serving("");
    let load = Load::start(baton.addr(), 8, LoadMode::KeepAlive);
    load.wait_more(100);
    breakage(&gh);
    baton.wait_count(expect, 1, Duration::from_secs(20));
    load.wait_more(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(support::version(baton.addr()), "1.0.0");
    assert_eq!(baton.wait_current("1.0.0-"), baton.current().unwrap());
    baton
}

#[test]
fn missing_repository_is_named() {
    keeps_serving(
        "repository acme/hello not found at http://127.0.0.1",
        |gh| gh.remove_repo(),
    );
}

#[test]
fn bad_token_is_named() {
    keeps_serving(
        "GitHub rejected the token (401 Bad credentials) for acme/hello",
        |gh| gh.set_token(Some("ghp_rotated")),
    );
}

#[test]
fn repository_without_release_is_named() {
    keeps_serving("repository acme/hello has no published release", |gh| {
        gh.clear()
    });
}

#[test]
fn release_without_matching_asset_lists_the_assets() {
    let expect = format!(
        "release v2.0.0 has no asset matching \"{}\"; its assets: hello-2.0.0-plan9.zip, README.md",
        asset_name("2.0.0")
    );
    keeps_serving(&expect, |gh| {
        gh.release(
            "v2.0.0",
            false,
            false,
            &[
                ("hello-2.0.0-plan9.zip", b"x".to_vec(), true),
                ("README.md", b"y".to_vec(), true),
            ],
        )
    });
}

#[test]
fn rate_limit_403_pauses_polling_and_says_so_once() {
    let baton = keeps_serving("GitHub rate limit reached (403", |gh| {
        gh.fault(Some(Fault::RateLimit403(30)))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        baton.count("rate limit reached"),
        1,
        "the pause is logged once:\n{}",
        baton.log()
    );
}

#[test]
fn rate_limit_429_honours_retry_after() {
    let baton = keeps_serving("pausing polls for 2 s", |gh| {
        gh.fault(Some(Fault::RateLimit429(2)))
    });
    assert!(baton.log().contains("GitHub rate limit reached (429"));
}

#[test]
fn rate_limit_429_with_an_overflowing_retry_after_pauses_an_hour_at_most() {
    // u64::MAX seconds once overflowed `Instant + Duration` and panicked.
    let baton = keeps_serving("pausing polls for 3600 s", |gh| {
        gh.fault(Some(Fault::RateLimit429(u64::MAX)))
    });
    assert!(!baton.log().contains("panicked"), "{}", baton.log());
}

/// The files of a publish directory as release assets.
fn assets_of(dir: &std::path::Path) -> Vec<(String, Vec<u8>, bool)> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap(), false))
        .collect()
}

fn release_from(gh: &FakeGithub, tag: &str, dir: &std::path::Path) {
    let assets = assets_of(dir);
    let refs: Vec<(&str, Vec<u8>, bool)> = assets
        .iter()
        .map(|(n, b, d)| (n.as_str(), b.clone(), *d))
        .collect();
    gh.release(tag, false, false, &refs);
}

/// A master with 1.0.0 installed, reading releases through their manifest
/// asset (no asset pattern), trusting `key`.
fn manifest_host(gh: &FakeGithub, key: &str) -> Baton {
    manifest_host_with_token(gh, key, "")
}

/// As [`manifest_host`], sending `token`.
fn manifest_host_with_token(gh: &FakeGithub, key: &str, token: &str) -> Baton {
    let dir = tempfile::tempdir().unwrap();
    crate::trial::seed_release(dir.path(), "1.0.0");
    let config = config(
        gh,
        "acme/hello",
        token,
        &format!("host_id = \"web-1\"\n[verify]\nminisign_key = \"{key}\""),
    )
    .replace(&format!("asset = \"{PATTERN}\"\n"), "");
    let baton = Baton::start(dir, &config);
    baton.wait_ready();
    assert_eq!(support::version(baton.addr()), "1.0.0");
    baton
}

#[test]
fn a_release_manifest_asset_names_the_artifact_by_rollout() {
    let p = crate::fleet::Publisher::new();
    let key = p.keygen("release");
    let gh = FakeGithub::start(None);
    p.publish(&[
        "--version",
        "2.0.0",
        "--rollout",
        "0",
        "--expires",
        "30d",
        "--sign",
        &p.key("release"),
        &p.artifact("2.0.0"),
    ]);
    release_from(&gh, "v2.0.0", &p.out());
    let baton = manifest_host(&gh, &key);
    baton.wait_count(
        "the rollout is halted (rollout 0)",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(
        gh.downloads(),
        2,
        "manifest and signature, not the artifact"
    );
    // Unchanged: one conditional request per poll, answered 304.
    let start = gh.seen("/repos/acme/hello/releases/latest").len();
    support::wait_for("10 more polls", Duration::from_secs(30), || {
        (gh.seen("/repos/acme/hello/releases/latest").len() >= start + 10).then_some(())
    });
    let polls = gh.seen("/repos/acme/hello/releases/latest");
    assert!(polls[start..].iter().all(|&s| s == 304), "{polls:?}");
    assert_eq!(gh.downloads(), 2);
    assert_eq!(support::version(baton.addr()), "1.0.0");
    // The same release at 100 %.
    p.publish(&["--rollout", "100", "--sign", &p.key("release")]);
    release_from(&gh, "v2.0.1", &p.out());
    baton.wait_current("2.0.0-");
    assert_eq!(support::version(baton.addr()), "2.0.0");
    assert!(baton.log().contains("this host is in the rollout"));
}

#[test]
fn a_tampered_release_manifest_is_refused() {
    let p = crate::fleet::Publisher::new();
    let key = p.keygen("release");
    let gh = FakeGithub::start(None);
    let baton = manifest_host(&gh, &key);
    p.publish(&[
        "--version",
        "2.0.0",
        "--sign",
        &p.key("release"),
        &p.artifact("2.0.0"),
    ]);
    let manifest = p.out().join("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("hello-2.0.0", "hello-1.0.0");
    std::fs::write(&manifest, text).unwrap();
    release_from(&gh, "v2.0.0", &p.out());
    baton.wait_count(
        "manifest acme/hello v2.0.0 manifest.json refused: bad manifest signature",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(support::version(baton.addr()), "1.0.0");
}

/// `baton publish --to github:acme/hello@TAG` against the fake API.
fn publish_cli(gh: &FakeGithub, tag: &str, args: &[&str]) -> String {
    let to = format!("github:acme/hello@{tag}");
    let out = std::process::Command::new(support::baton_bin())
        .args(["publish", "--to", &to, "--api-url", &gh.api_url()])
        .args(args)
        .env("GITHUB_TOKEN", TOKEN)
        .env_remove("BATON_KEY_PASSWORD")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "baton publish {args:?} failed:\n{text}"
    );
    text
}

#[test]
fn publish_to_a_github_release_then_a_host_upgrades() {
    let p = crate::fleet::Publisher::new();
    let key = p.keygen("release");
    let gh = FakeGithub::start(Some(TOKEN));
    let baton = manifest_host_with_token(&gh, &key, TOKEN);
    let sign = p.key("release");
    let said = publish_cli(
        &gh,
        "v2.0.0",
        &[
            "--version",
            "2.0.0",
            "--rollout",
            "0",
            "--sign",
            &sign,
            &p.artifact("2.0.0"),
        ],
    );
    assert!(
        said.contains("published 2.0.0 to github:acme/hello@v2.0.0 asset manifest.json"),
        "{said}"
    );
    assert_eq!(
        gh.seen("/repos/acme/hello/releases")
            .iter()
            .filter(|&&s| s == 201)
            .count(),
        1,
        "the release was created"
    );
    baton.wait_count(
        "the rollout is halted (rollout 0)",
        1,
        Duration::from_secs(20),
    );
    // Re-signed at 100 %: the release's manifest assets are replaced.
    publish_cli(&gh, "v2.0.0", &["--rollout", "100", "--sign", &sign]);
    baton.wait_current("2.0.0-");
    assert_eq!(support::version(baton.addr()), "2.0.0");
    assert_eq!(gh.leaked_auth(), 0, "the token went to the storage host");
    assert_eq!(
        gh.seen("/uploads/").iter().filter(|&&s| s == 201).count(),
        7,
        "artifact, signature, manifest, the publisher's history and its signature, then signature \
         and manifest again"
    );
}

/// `baton publish --to github:acme/hello@v2.0.0` against `api_url` that
/// fails: its error line, once checked to be the only one and no dump.
fn publish_fails(api_url: &str, token: Option<&str>) -> String {
    let p = crate::fleet::Publisher::new();
    p.keygen("release");
    let mut command = std::process::Command::new(support::baton_bin());
    command
        .args([
            "publish",
            "--to",
            "github:acme/hello@v2.0.0",
            "--api-url",
            api_url,
            "--version",
            "2.0.0",
            "--sign",
            &p.key("release"),
            &p.artifact("2.0.0"),
        ])
        .env_remove("BATON_KEY_PASSWORD")
        .env_remove("GITHUB_TOKEN");
    if let Some(token) = token {
        command.env("GITHUB_TOKEN", token);
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the publish succeeded:\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("baton: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    for dump in [
        "Documentation URL",
        "GitHubError",
        "Service Error",
        "status_code",
        "backtrace",
    ] {
        assert!(!stderr.contains(dump), "{dump:?} in:\n{stderr}");
    }
    errors[0].to_owned()
}

/// An address nothing listens on.
fn closed_api_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[test]
fn publish_without_a_token_to_a_private_repository_names_the_token() {
    let gh = FakeGithub::start(Some(TOKEN));
    let said = publish_fails(&gh.api_url(), None);
    assert!(
        said.ends_with(
            "repository acme/hello not found (404), and no token is set: a private \
             repository needs $GITHUB_TOKEN"
        ),
        "{said}"
    );
}

#[test]
fn publish_with_a_rejected_token_says_so() {
    let gh = FakeGithub::start(Some(TOKEN));
    let said = publish_fails(&gh.api_url(), Some("ghp_revoked"));
    assert_eq!(
        said,
        "baton: cannot read the release github:acme/hello@v2.0.0: GitHub rejected the token \
         (401 Bad credentials) for repository acme/hello; $GITHUB_TOKEN must hold a valid, \
         unexpired token"
    );
}

#[test]
fn publish_to_a_missing_repository_says_so() {
    let gh = FakeGithub::start(Some(TOKEN));
    gh.remove_repo();
    let said = publish_fails(&gh.api_url(), Some(TOKEN));
    assert_eq!(
        said,
        "baton: cannot create the release github:acme/hello@v2.0.0: repository acme/hello \
         not found (404): check its name, or the token in $GITHUB_TOKEN cannot see it"
    );
}

#[test]
fn publish_when_rate_limited_says_when_to_try_again() {
    let gh = FakeGithub::start(Some(TOKEN));
    gh.fault(Some(Fault::RateLimit403(120)));
    let said = publish_fails(&gh.api_url(), Some(TOKEN));
    assert!(
        said.starts_with(
            "baton: cannot read the release github:acme/hello@v2.0.0: GitHub rate limit \
             reached (403) for repository acme/hello; try again in 1"
        ) && said.ends_with(" s"),
        "{said}"
    );
    gh.fault(Some(Fault::RateLimit429(30)));
    let said = publish_fails(&gh.api_url(), Some(TOKEN));
    assert!(
        said.ends_with(
            "GitHub rate limit reached (429) for repository acme/hello; try again in 30 s"
        ),
        "{said}"
    );
}

#[test]
fn publish_to_an_unreachable_api_names_the_cause() {
    let url = closed_api_url();
    let said = publish_fails(&url, Some(TOKEN));
    assert_eq!(
        said,
        format!(
            "baton: cannot read the release github:acme/hello@v2.0.0: cannot reach the GitHub \
             API at {url}: Connection refused (os error 111); check --api-url and the network"
        )
    );
}

#[test]
fn an_unreachable_api_is_named_in_the_log() {
    let gh = FakeGithub::start(None);
    let url = closed_api_url();
    let config = config(&gh, "acme/hello", "", "").replace(&gh.api_url(), &url);
    let baton = Baton::start(tempfile::tempdir().unwrap(), &config);
    baton.wait_count(
        &format!(
            "cannot reach the GitHub API at {url}: Connection refused (os error 111); check \
             fetch.api_url and the network"
        ),
        1,
        Duration::from_secs(20),
    );
    assert!(!baton.log().contains("Service Error"), "{}", baton.log());
}

#[test]
fn a_private_repository_without_a_token_names_the_token_settings() {
    let gh = FakeGithub::start(Some(TOKEN));
    publish(&gh, "1.0.0");
    let baton = Baton::start(
        tempfile::tempdir().unwrap(),
        &config(&gh, "acme/hello", "", ""),
    );
    baton.wait_count(
        "repository acme/hello not found at http://127.0.0.1",
        1,
        Duration::from_secs(20),
    );
    assert!(
        baton.log().contains(
            "(404), and no token is set: a private repository needs fetch.token or fetch.token_env"
        ),
        "{}",
        baton.log()
    );
    assert_eq!(baton.count("started worker"), 0);
}
