//! Sources of new builds, behind one small object-safe trait so that a user
//! can plug a source of their own.

pub mod file;
#[cfg(feature = "github")]
pub mod github;
pub mod http;
#[cfg(feature = "s3")]
pub mod s3;

use std::future::Future;
use std::pin::Pin;

use tokio::io::AsyncRead;

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
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

/// Builds the fetcher the config names; `verify` tells it whether to fetch
/// signatures and which versions are wanted.
pub fn from_config(fetch: &Fetch, verify: &Verify) -> Result<Box<dyn Fetcher>, Error> {
    Ok(match &fetch.source {
        Source::File { path } => Box::new(file::FileFetcher::new(path.clone())),
        Source::Http { .. } => Box::new(http::HttpFetcher::new(fetch)?),
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
