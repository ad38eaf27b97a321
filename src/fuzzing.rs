//! Entry points for the fuzz targets in `fuzz/`: each takes raw bytes, runs
//! one parser the way the daemon runs it on what a remote store, an API
//! endpoint or a local peer sent, and panics only when an invariant breaks
//! (so a fuzzer's crash is a bug in baton, never in the harness). They are
//! public for the fuzz crate only and are not part of baton's API.
//!
//! None of them needs the `s3` or `github` feature: the fuzz build compiles
//! the library without its default features.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::release::archive::{self, Kind, Limits};

/// The limits the archive target unpacks under: small, so that a bomb hits
/// them at once.
const LIMITS: Limits = Limits {
    bytes: 1 << 20,
    entries: 256,
};

/// The binary every archive must hold.
const BINARY: &str = "hello";

/// What a path outside the release directory is, for the before/after
/// comparison: its type, mode and content (or link target).
type Snapshot = BTreeMap<PathBuf, (u32, Vec<u8>)>;

fn snapshot(root: &Path, skip: &[&Path], into: &mut Snapshot) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if skip.contains(&path.as_path()) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let content = if meta.file_type().is_symlink() {
            std::fs::read_link(&path)
                .map(|t| t.into_os_string().into_encoded_bytes())
                .unwrap_or_default()
        } else if meta.is_file() {
            std::fs::read(&path).unwrap_or_default()
        } else {
            Vec::new()
        };
        into.insert(path.clone(), (meta.permissions().mode(), content));
        if meta.is_dir() {
            snapshot(&path, skip, into);
        }
    }
}

/// A scratch tree: sentinel files at every level around the release
/// directory `root/a/b/release`, which is where an escaping entry lands.
struct Scratch {
    dir: tempfile::TempDir,
    release: PathBuf,
    archive: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let mut level = dir.path().to_owned();
        for name in ["a", "b"] {
            std::fs::write(level.join("secret"), b"the secret\n").expect("a sentinel");
            level.push(name);
            std::fs::create_dir(&level).expect("a sentinel level");
        }
        std::fs::write(level.join("secret"), b"the secret\n").expect("a sentinel");
        let release = level.join("release");
        std::fs::create_dir(&release).expect("the release directory");
        Scratch {
            archive: dir.path().join("archive"),
            dir,
            release,
        }
    }

    fn outside(&self) -> Snapshot {
        let mut s = Snapshot::new();
        snapshot(self.dir.path(), &[&self.release, &self.archive], &mut s);
        s
    }
}

/// Normalizes `path` by its text: `.` dropped, `..` applied.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Asserts what an unpacked release may hold: every link resolves inside
/// it (through the real tree where its target exists, by its text where it
/// does not), and no file keeps a setuid, setgid or world-writable bit.
fn assert_contained(release: &Path) {
    let root = std::fs::canonicalize(release).expect("the release directory");
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("a release directory")
            .flatten()
        {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).expect("an entry");
            let ft = meta.file_type();
            if ft.is_symlink() {
                let resolved = match std::fs::canonicalize(&path) {
                    Ok(real) => real,
                    Err(_) => {
                        let target = std::fs::read_link(&path).expect("a link");
                        lexical(&dir.join(target))
                    }
                };
                assert!(
                    resolved.starts_with(&root),
                    "{} resolves to {}, outside {}",
                    path.display(),
                    resolved.display(),
                    root.display()
                );
            } else {
                assert!(
                    ft.is_dir() || ft.is_file(),
                    "{} is neither a file, a directory nor a link",
                    path.display()
                );
                let mode = meta.permissions().mode();
                assert_eq!(mode & 0o7002, 0, "{} kept mode {mode:o}", path.display());
                if ft.is_dir() {
                    stack.push(path);
                }
            }
        }
    }
}

/// Unpacks `bytes` as an archive of `kind` (tar.gz or zip) into a release
/// directory ringed by sentinels. Whatever it holds, nothing outside the
/// release changes; when it is accepted, every link in it resolves inside
/// it and no mode keeps setuid, setgid or world-writable bits. Returns
/// the unpacker's verdict.
pub fn archive(bytes: &[u8], zip: bool) -> Result<(), String> {
    let scratch = Scratch::new();
    std::fs::write(&scratch.archive, bytes).expect("the archive file");
    let before = scratch.outside();
    let file = std::fs::File::open(&scratch.archive).expect("the archive file");
    let kind = if zip { Kind::Zip } else { Kind::TarGz };
    let unpacked = archive::unpack(file, kind, BINARY, &scratch.release, LIMITS);
    assert_eq!(
        scratch.outside(),
        before,
        "the archive changed files outside the release ({unpacked:?})"
    );
    if unpacked.is_ok() {
        assert_contained(&scratch.release);
        let binary = scratch.release.join(BINARY);
        let meta = std::fs::symlink_metadata(&binary).expect("the binary");
        assert!(meta.is_file(), "the binary is a regular file");
    }
    unpacked.map(drop).map_err(|e| e.to_string())
}

/// Applies `bytes` as a delta patch to a small reference binary, under a
/// small `max_size`, and reads its frame header. Refusals are fine;
/// panics and output over `max_size` are not.
pub fn delta(bytes: &[u8]) {
    let _ = crate::delta::parse_header(bytes);
    let dir = tempfile::tempdir().expect("a scratch directory");
    let reference = dir.path().join("reference");
    std::fs::write(&reference, b"hello, reference binary\n".repeat(64)).expect("a reference");
    let max_size = 64 << 10;
    let spec = crate::delta::Spec {
        reference: &reference,
        from: None,
        sha256: [0; 32],
        max_size,
    };
    let mut out = Vec::new();
    if let Ok(applied) = crate::delta::apply(&spec, bytes, &mut out) {
        assert!(applied.size <= max_size, "{} bytes written", applied.size);
    }
    assert!(out.len() as u64 <= max_size, "{} bytes written", out.len());
}

/// A clock reading from fuzzer bytes: any second a `SystemTime` can hold.
fn clock(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(seconds))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Parses `bytes` as a manifest (as a signed one, so that every field is
/// reachable, and as an unsigned one) and, when it parses, computes its
/// rollout at clock `now` and the cohort decision of a host.
pub fn manifest(bytes: &[u8], now: u64) {
    let now = clock(now);
    let _ = crate::manifest::Manifest::parse(bytes, false);
    let Ok(manifest) = crate::manifest::Manifest::parse(bytes, true) else {
        return;
    };
    let _ = manifest.check_expiry(now);
    let percent = manifest.percent_at(now);
    assert!(percent <= 100, "{percent} %");
    if let Some(next) = manifest.rollout.next_change(manifest.published_at, now) {
        assert!(next > now, "the next change is in the future");
    }
    let dir = tempfile::tempdir().expect("a scratch directory");
    let releases = crate::config::Releases {
        dir: dir.path().to_owned(),
        binary: BINARY.into(),
        keep: 3,
        settle: Duration::ZERO,
        health: None,
        trial_attempts: crate::config::TRIAL_ATTEMPTS_DEFAULT,
    };
    let store = crate::release::Store::open(&releases).expect("a store");
    let info = crate::fetchers::Info {
        version: manifest.version.clone(),
        host_id: Some("fuzz-host".into()),
        manifest: Some(manifest),
        ..Default::default()
    };
    let decision = crate::release::cohort::decide(&store, &info, now).expect("a decision");
    assert!(decision.percent <= 100);
}

/// Parses `bytes` as a config file and validates it, relative to a base
/// directory that does not exist.
pub fn config(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let _ = crate::config::Config::parse(text, Path::new("/nonexistent/baton-fuzz"));
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
}

/// Reads `bytes` as a control-socket request, as the master reads a
/// connection's first line.
pub fn control_request(bytes: &[u8]) {
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let _ = crate::master::control::read_line(bytes).await;
        })
    });
}

/// Serves `bytes` as a scraper's connection to the metrics listener, with
/// an event loop answering an empty status: whatever arrives, the reply is
/// HTTP or nothing.
pub fn metrics_request(bytes: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (to_loop, mut incoming) =
                tokio::sync::mpsc::unbounded_channel::<crate::master::control::Incoming>();
            let answering = tokio::spawn(async move {
                while let Some(asked) = incoming.recv().await {
                    let _ = asked.reply.send(serde_json::json!({}));
                }
            });
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let served = tokio::spawn(crate::master::metrics::connection(server, to_loop));
            let _ = client.write_all(bytes).await;
            let _ = client.shutdown().await;
            let mut reply = Vec::new();
            let _ = client.read_to_end(&mut reply).await;
            served.await.expect("the connection task");
            answering.abort();
            assert!(
                reply.is_empty() || reply.starts_with(b"HTTP/1."),
                "{:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(80)])
            );
        })
    });
}

/// Reads `bytes` as GitHub's answers: the first line as a `Link` header,
/// the next two as `Retry-After` and `X-RateLimit-Reset`, the fourth as an
/// asset pattern, the rest as a release list (and as one release).
pub fn github(bytes: &[u8]) {
    use crate::fetchers::github_api as api;
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.splitn(5, '\n');
    let link = lines.next().unwrap_or("");
    let retry_after = lines.next();
    let reset = lines.next();
    let pattern = lines.next().unwrap_or("*");
    let json = lines.next().unwrap_or("");
    if let Some(next) = api::next_link(link) {
        assert!(next.starts_with('/'), "{next:?} is a path");
    }
    for now in [0, u64::MAX] {
        let wait = api::rate_limit_wait(retry_after, reset, now);
        assert!((1..=api::MAX_RATE_LIMIT_PAUSE).contains(&wait), "{wait} s");
    }
    let _ = api::is_rate_limited(403, retry_after, reset);
    let _ = serde_json::from_str::<api::Release>(json);
    if let Ok(releases) = serde_json::from_str::<Vec<api::Release>>(json) {
        let req = semver::VersionReq::parse(pattern).ok();
        for (pre, semver) in [(false, false), (false, true), (true, false), (true, true)] {
            if let Some(r) = api::choose(releases.clone(), pre, semver, req.as_ref()) {
                assert!(!r.draft && (pre || !r.prerelease));
                let wanted = api::expand(pattern, &r.tag_name);
                for asset in &r.assets {
                    let _ = api::glob(&wanted, &asset.name);
                }
            }
        }
    }
}

/// Reads `bytes` as a manifest key and the `url` it names (split at the
/// first newline), as the S3 and GitHub sources resolve one, and as a
/// checksum file.
pub fn paths(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let _ = crate::fetchers::parse_checksum_file(&text);
    let (manifest, url) = text.split_once('\n').unwrap_or((&text, ""));
    match crate::fetchers::resolve_relative(manifest, url) {
        Ok(key) => {
            assert!(
                !url.contains("://") && !url.starts_with('/'),
                "{url:?} taken"
            );
            assert!(!key.ends_with('/'), "{key:?} names an object");
            assert!(
                !key.split('/').any(|s| s == ".." || s == "."),
                "{key:?} keeps a dot segment"
            );
        }
        Err(why) => assert!(!why.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs `entry` over every file of `fuzz/corpus/<target>`.
    fn corpus(target: &str, entry: impl Fn(&[u8])) {
        corpus_named(target, |_, bytes| entry(bytes));
    }

    /// Runs `entry` over every file of `fuzz/corpus/<target>`, with its name.
    fn corpus_named(target: &str, entry: impl Fn(&str, &[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut seen = 0;
        for file in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = file.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            entry(&path.file_name().unwrap().to_string_lossy(), &bytes);
            seen += 1;
        }
        assert!(seen > 0, "{} is empty", dir.display());
    }

    /// The seed corpus and every crash the fuzzers found, kept running on
    /// the stable toolchain: each input goes through its target's entry
    /// point as the fuzz target sends it.
    #[test]
    fn every_corpus_input_keeps_its_invariants() {
        corpus_named("archive_raw", |name, b| {
            let (which, bytes) = b.split_first().unwrap();
            let verdict = super::archive(bytes, which % 2 == 1);
            // The seeds are named for what the unpacker must do with them.
            let refused = [
                "chain_escape",
                "dotdot",
                "absolute",
                "hardlink",
                "fifo",
                "bomb",
            ];
            let accepted = ["plain", "nested", "link_inside", "suid"];
            if refused.iter().any(|r| name.starts_with(r)) {
                assert!(verdict.is_err(), "{name} was accepted");
            } else if accepted.iter().any(|a| name.starts_with(a)) {
                assert_eq!(verdict, Ok(()), "{name}");
            }
        });
        corpus("delta", super::delta);
        corpus("manifest", |b| {
            if b.len() >= 8 {
                let (now, manifest) = b.split_at(8);
                super::manifest(manifest, u64::from_le_bytes(now.try_into().unwrap()));
            }
        });
        corpus("config", super::config);
        corpus("control", super::control_request);
        corpus("metrics", super::metrics_request);
        corpus("github", super::github);
        corpus("paths", super::paths);
    }
}
