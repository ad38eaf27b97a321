//! Sources of new builds, behind one small object-safe trait so that a user
//! can plug a source of their own.

pub mod file;
#[cfg(feature = "github")]
pub mod github;
pub mod github_api;
pub mod http;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(feature = "s3")]
pub mod s3_error;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::config::{Fetch, Source, Verify};

/// A boxed future, as the trait's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A candidate's bytes.
pub type Body = Pin<Box<dyn AsyncRead + Send>>;

/// A source of new builds.
pub trait Fetcher: Send {
    /// Looks for a new build. `Ok(None)` means nothing changed since the last
    /// candidate this fetcher returned.
    fn check(&mut self) -> BoxFuture<'_, Result<Option<Candidate>, Error>>;

    /// Resolves when the source may have changed (a file event), so the
    /// master checks before the interval is up. The default never resolves.
    fn changed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }

    /// The last candidate failed for a passing reason (a broken download):
    /// offer it again on the next check instead of waiting for a change.
    fn retry(&mut self) {}

    /// The source, for logs: `file dist/hello`, `http https://…`.
    fn describe(&self) -> String;
}

/// A new build: its bytes and what the source states about them.
pub struct Candidate {
    /// The bytes, streamed.
    pub body: Body,
    /// What the source says about them.
    pub info: Info,
    /// Opens the other files the candidate's manifest names (its delta
    /// patches), when the candidate came from a manifest.
    pub opener: Option<Opener>,
}

/// Opens a file named relative to a candidate's manifest (the artifact, a
/// delta patch). The request starts on the body's first read, so a file
/// that is never read is never requested; a name that cannot be resolved
/// gives a body whose first read fails with the reason.
pub type Opener = std::sync::Arc<dyn Fn(&str) -> Body + Send + Sync>;

/// A body whose first read fails with `reason`.
pub(crate) fn failing(reason: String) -> Body {
    Box::pin(Lazy::new(async move { Err(std::io::Error::other(reason)) }))
}

/// What a source states about a candidate.
#[derive(Debug, Clone, Default)]
pub struct Info {
    /// The version, when the source names one.
    pub version: Option<String>,
    /// The expected sha256.
    pub sha256: Option<[u8; 32]>,
    /// The size, when known in advance.
    pub size: Option<u64>,
    /// A minisign signature (the `.minisig` file's text).
    pub signature: Option<String>,
    /// An opaque change token: ETag, mtime and size, VersionId.
    pub token: String,
    /// The artifact's file name, which tells archives from binaries.
    pub name: String,
    /// Where it came from, for logs and reports.
    pub source: String,
    /// The manifest that named the candidate, checked (signature, fields,
    /// expiry): its rollout decides whether this host takes it.
    pub manifest: Option<crate::manifest::Manifest>,
    /// This host's identity for rollout cohorts (`fetch.host_id`), when the
    /// config names one; else the releases directory keeps a random one.
    pub host_id: Option<String>,
}

/// Whether a file name is one a publisher puts beside artifacts and never
/// an artifact itself: a signature, a checksum file, a delta patch
/// (`.zst`), a manifest or `baton publish`'s `releases.json`. A source that
/// picks an artifact by name or version skips these.
#[cfg(any(feature = "s3", feature = "github"))]
pub(crate) fn is_beside_file(name: &str) -> bool {
    [".minisig", ".sha256", ".zst", ".json"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// Whether a source's object is a signed manifest rather than an artifact,
/// by the rule every source shares: its name ends in `.json`, or it is
/// served as `application/json` (`content_type`, where the source has one).
pub(crate) fn is_manifest(name: &str, content_type: Option<&str>) -> bool {
    name.ends_with(".json") || content_type.is_some_and(|t| t.starts_with("application/json"))
}

/// The token by which a source knows an object it offered before: `kind`
/// and the object's identifying parts, `:`-separated. Equal tokens mean
/// the same object, so a poll that finds it again offers nothing.
#[cfg_attr(not(any(feature = "github", feature = "s3")), allow(dead_code))]
pub(crate) fn change_token(kind: &str, parts: &[&dyn std::fmt::Display]) -> String {
    let mut token = kind.to_owned();
    for part in parts {
        token.push(':');
        token.push_str(&part.to_string());
    }
    token
}

/// The largest manifest, checksum file or signature read, in bytes.
pub const SMALL_FILE_LIMIT: usize = 1 << 20;

/// The first 64-hex-digit word of a checksum file (`sha256sum` output or a
/// bare digest).
pub fn parse_checksum_file(text: &str) -> Option<[u8; 32]> {
    text.split_whitespace()
        .next()
        .and_then(crate::config::parse_sha256)
}

/// Reads a small local file (a manifest, checksum file or signature) under
/// [`SMALL_FILE_LIMIT`]; `Ok(None)` when it does not exist.
pub(crate) async fn read_small(
    path: &std::path::Path,
    what: &'static str,
) -> Result<Option<Vec<u8>>, Error> {
    use tokio::io::AsyncReadExt;
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut bytes = Vec::new();
    file.take(SMALL_FILE_LIMIT as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() > SMALL_FILE_LIMIT {
        return Err(too_large(
            what,
            &path.display().to_string(),
            SMALL_FILE_LIMIT,
        ));
    }
    Ok(Some(bytes))
}

/// Reads a small remote body (a manifest, checksum file, signature or API
/// reply) from `reader`: at most `limit` bytes, all of it within `deadline`
/// (a server dripping a byte at a time outlives every per-read timeout, not
/// this). The one bounded reader every source uses; its errors name `what`
/// and `url`, and say which bound was hit.
pub(crate) async fn read_bounded(
    reader: impl AsyncRead + Send,
    limit: usize,
    deadline: std::time::Duration,
    what: &'static str,
    url: &str,
) -> Result<Vec<u8>, Error> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let mut reader = std::pin::pin!(reader.take(limit as u64 + 1));
    let read = reader.read_to_end(&mut bytes);
    let failed = |source: std::io::Error| Error::Request {
        url: url.to_owned(),
        source: Box::new(source),
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(failed(e)),
        Err(_) => {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                "the {what} was not read whole within {} (fetch.timeout bounds each small body)",
                humantime::format_duration(deadline)
            ),
            )))
        }
    }
    if bytes.len() > limit {
        return Err(too_large(what, url, limit));
    }
    Ok(bytes)
}

/// Resolves a manifest's relative `url` against the key or path of the
/// manifest (`hello/manifest.json` + `hello-2.0.0.tar.gz` →
/// `hello/hello-2.0.0.tar.gz`). `.` and `..` segments are applied; a URL
/// with a scheme, an absolute path or one climbing above the root is
/// refused with the reason.
pub(crate) fn resolve_relative(manifest: &str, url: &str) -> Result<String, String> {
    if url.contains("://") || url.starts_with('/') {
        return Err(format!(
            "url {url:?} must be a path relative to the manifest"
        ));
    }
    // The manifest's own key is read the same way, so that no dot segment
    // of it survives into the result either.
    let mut parts: Vec<&str> = Vec::new();
    let directory = manifest.rsplit_once('/').map(|(dir, _)| dir);
    for segment in directory.into_iter().flat_map(|dir| dir.split('/')) {
        match segment {
            "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("manifest {manifest:?} climbs above the root"));
                }
            }
            other => parts.push(other),
        }
    }
    for segment in url.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("url {url:?} climbs above the root"));
                }
            }
            other => parts.push(other),
        }
    }
    if parts.last().is_none_or(|p| p.is_empty()) {
        return Err(format!("url {url:?} names no object"));
    }
    Ok(parts.join("/"))
}

/// The one error for a small body over its `limit` in bytes.
pub(crate) fn too_large(what: &'static str, url: &str, limit: usize) -> Error {
    Error::Invalid {
        what,
        url: url.to_owned(),
        reason: format!("larger than {limit} bytes"),
    }
}

/// Checks a manifest's bytes and signature (see [`crate::manifest::load`]),
/// naming `url` in the error.
pub(crate) fn load_manifest(
    bytes: &[u8],
    minisig: Option<&[u8]>,
    verify: &Verify,
    url: &str,
) -> Result<crate::manifest::Manifest, Error> {
    let fail = |source| Error::Manifest {
        url: url.to_owned(),
        source,
    };
    let minisig = minisig
        .map(|b| {
            std::str::from_utf8(b).map_err(|_| {
                fail(crate::manifest::Error::UnreadableSignature {
                    reason: "not UTF-8 text".into(),
                })
            })
        })
        .transpose()?;
    crate::manifest::load(
        bytes,
        minisig,
        &verify.minisign_keys,
        std::time::SystemTime::now(),
    )
    .map_err(fail)
}

/// The change token of a manifest: its digest, so a re-signed manifest
/// (a new percentage) is a change.
pub(crate) fn manifest_token(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("manifest:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// What a checked manifest states, as a candidate's [`Info`].
pub(crate) fn manifest_info(
    manifest: crate::manifest::Manifest,
    token: String,
    name: String,
    source: String,
) -> Info {
    Info {
        version: manifest.version.clone(),
        sha256: manifest.sha256,
        size: manifest.size,
        signature: manifest.signature.clone(),
        token,
        name,
        source,
        manifest: Some(manifest),
        host_id: None,
    }
}

/// A body that starts its request only when first read, so a host that is
/// not in a release's rollout never downloads a byte of it.
pub(crate) struct Lazy {
    state: LazyState,
}

enum LazyState {
    Pending(BoxFuture<'static, std::io::Result<Body>>),
    Open(Body),
}

impl Lazy {
    /// A body opened by `open` on first read.
    pub(crate) fn new(open: impl Future<Output = std::io::Result<Body>> + Send + 'static) -> Lazy {
        Lazy {
            state: LazyState::Pending(Box::pin(open)),
        }
    }
}

impl AsyncRead for Lazy {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            match &mut self.state {
                LazyState::Pending(open) => {
                    let body = std::task::ready!(open.as_mut().poll(cx))?;
                    self.state = LazyState::Open(body);
                }
                LazyState::Open(body) => return body.as_mut().poll_read(cx, buf),
            }
        }
    }
}

/// Hands the configured host id to every candidate of the fetcher it wraps.
struct HostTagged {
    inner: Box<dyn Fetcher>,
    host_id: String,
}

impl Fetcher for HostTagged {
    fn check(&mut self) -> BoxFuture<'_, Result<Option<Candidate>, Error>> {
        Box::pin(async move {
            let mut candidate = self.inner.check().await?;
            if let Some(c) = &mut candidate {
                c.info.host_id = Some(self.host_id.clone());
            }
            Ok(candidate)
        })
    }

    fn changed(&mut self) -> BoxFuture<'_, ()> {
        self.inner.changed()
    }

    fn retry(&mut self) {
        self.inner.retry()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A request failed before an answer arrived.
    #[error("GET {url} failed")]
    Request {
        /// The URL, without its query string.
        url: String,
        /// Why (connect error, timeout, too many redirects, TLS).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an error status.
    #[error("GET {url} answered {status}")]
    Status {
        /// The URL, without its query string.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// A manifest or checksum file is not what baton expects.
    #[error("invalid {what} at {url}: {reason}")]
    Invalid {
        /// `manifest` or `checksum file`.
        what: &'static str,
        /// Where it came from.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A manifest failed one of its checks (signature, fields, expiry).
    #[error("manifest {url} refused")]
    Manifest {
        /// Where it came from.
        url: String,
        /// Which check failed.
        #[source]
        source: crate::manifest::Error,
    },
    /// The source answered that what was asked for is missing or
    /// forbidden (no such key, bucket, repository or asset; bad
    /// credentials): asking again will not help until someone changes the
    /// source or the credentials, so it is polled at the usual interval
    /// without backing off.
    #[error("{0}")]
    Refused(String),
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Whether asking again can help. A 401, 403, 404 or 410 will not
    /// change by itself; a broken connection, a server error or a manifest
    /// caught mid-publish (its signature not yet beside it) may.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            Error::Status {
                status: 401 | 403 | 404 | 410,
                ..
            } | Error::Refused(_)
        )
    }
}

/// Builds the fetcher the config names; `verify` tells it whether to fetch
/// signatures and which versions are wanted.
pub fn from_config(fetch: &Fetch, verify: &Verify) -> Result<Box<dyn Fetcher>, Error> {
    let fetcher = source(fetch, verify)?;
    Ok(match &fetch.host_id {
        Some(host_id) => Box::new(HostTagged {
            inner: fetcher,
            host_id: host_id.clone(),
        }),
        None => fetcher,
    })
}

fn source(fetch: &Fetch, verify: &Verify) -> Result<Box<dyn Fetcher>, Error> {
    Ok(match &fetch.source {
        Source::File { path } => Box::new(file::FileFetcher::new(path.clone(), verify)),
        Source::Http { .. } => Box::new(http::HttpFetcher::new(fetch, verify)?),
        #[cfg(feature = "github")]
        Source::Github { .. } => Box::new(github::GithubFetcher::new(fetch, verify)?),
        #[cfg(not(feature = "github"))]
        Source::Github { .. } => {
            let _ = verify;
            return Err(Error::Other(
                "this baton was built without the `github` feature".into(),
            ));
        }
        #[cfg(feature = "s3")]
        Source::S3 { .. } => Box::new(s3::S3Fetcher::new(fetch, verify)),
        #[cfg(not(feature = "s3"))]
        Source::S3 { .. } => {
            let _ = verify;
            return Err(Error::Other(
                "this baton was built without the `s3` feature".into(),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_urls_resolve_against_the_manifest_key() {
        let r = |m, u| resolve_relative(m, u);
        assert_eq!(
            r("hello/manifest.json", "hello-2.0.0").unwrap(),
            "hello/hello-2.0.0"
        );
        assert_eq!(r("manifest.json", "a/b.tar.gz").unwrap(), "a/b.tar.gz");
        assert_eq!(r("a/b/manifest.json", "../c").unwrap(), "a/c");
        assert_eq!(r("a/b/manifest.json", "./c").unwrap(), "a/b/c");
        assert!(r("a/manifest.json", "../../c")
            .unwrap_err()
            .contains("climbs above"));
        assert!(r("a/manifest.json", "https://x/y").is_err());
        assert!(r("a/manifest.json", "/etc/passwd").is_err());
        assert!(r("a/manifest.json", "..").is_err());
    }

    /// Found by the `paths` fuzz target: the manifest key's own dot
    /// segments survived into the object key.
    #[test]
    fn fuzz_paths_a_manifest_key_with_dot_segments_resolves_clean() {
        let r = |m, u| resolve_relative(m, u);
        assert_eq!(r(".json$.././%a/x", "y").unwrap(), ".json$../%a/y");
        assert_eq!(r("a/./b/manifest.json", "c").unwrap(), "a/b/c");
        assert!(r("../manifest.json", "c")
            .unwrap_err()
            .contains("climbs above"));
        assert_eq!(r("/manifest.json", "c").unwrap(), "/c");
    }

    #[tokio::test]
    async fn small_reads_are_bounded_in_size() {
        let long = std::time::Duration::from_secs(60);
        let ok = vec![b'x'; SMALL_FILE_LIMIT];
        let read = read_bounded(&ok[..], SMALL_FILE_LIMIT, long, "manifest", "u").await;
        assert_eq!(read.unwrap().len(), SMALL_FILE_LIMIT);
        let big = vec![b'x'; SMALL_FILE_LIMIT + 1];
        let err = read_bounded(&big[..], SMALL_FILE_LIMIT, long, "manifest", "s3://b/k")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid manifest at s3://b/k: larger than {SMALL_FILE_LIMIT} bytes")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dripped_body_fails_at_its_deadline() {
        use tokio::io::AsyncWriteExt;
        let (mut server, client) = tokio::io::duplex(64);
        tokio::spawn(async move {
            // One byte a second, forever: every single read is quick.
            while server.write_all(b"{").await.is_ok() {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        let deadline = std::time::Duration::from_secs(5);
        let err = read_bounded(client, 1024, deadline, "manifest", "http://h/m")
            .await
            .unwrap_err();
        assert_eq!(
            crate::errors::display_chain(&err),
            "GET http://h/m failed: the manifest was not read whole within 5s \
             (fetch.timeout bounds each small body)"
        );
    }

    #[cfg(any(feature = "s3", feature = "github"))]
    #[test]
    fn files_beside_artifacts_are_never_artifacts() {
        for name in [
            "hello-2.0.0.from-1.0.0.zst",
            "releases.json",
            "manifest.json",
            "hello-2.0.0.minisig",
            "hello-2.0.0.sha256",
        ] {
            assert!(is_beside_file(name), "{name}");
        }
        for name in ["hello-2.0.0", "hello-2.0.0.tar.gz", "hello-2.0.0.zip"] {
            assert!(!is_beside_file(name), "{name}");
        }
    }

    #[test]
    fn refusals_are_not_transient() {
        assert!(!Error::Refused("no such key".into()).is_transient());
        assert!(Error::Other("cannot reach".into()).is_transient());
    }

    #[test]
    fn every_source_knows_a_manifest_by_one_rule() {
        assert!(is_manifest("hello/manifest.json", None));
        assert!(is_manifest(
            "hello/latest",
            Some("application/json; charset=utf-8")
        ));
        assert!(!is_manifest("hello-2.0.0.tar.gz", Some("application/gzip")));
        assert!(!is_manifest("manifest.json.minisig", None));
    }

    #[test]
    fn change_tokens_join_their_parts() {
        assert_eq!(change_token("s3", &[&"k", &"\"e\"", &""]), "s3:k:\"e\":");
        assert_ne!(
            change_token("github", &[&1, &2]),
            change_token("github", &[&1, &3])
        );
    }

    #[test]
    fn checksum_files_parse() {
        let hex = "ab".repeat(32);
        assert_eq!(
            parse_checksum_file(&format!("{hex}  hello\n")),
            Some([0xab; 32])
        );
        assert_eq!(parse_checksum_file("nope"), None);
    }

    proptest::proptest! {
        /// The checksum-file parser never panics, whatever a server sends.
        #[test]
        fn checksum_parser_never_panics(text in ".{0,200}") {
            let _ = parse_checksum_file(&text);
        }
    }
}
