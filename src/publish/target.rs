//! Where `baton publish` writes: a directory, an S3 prefix or a GitHub
//! release. Each target only stores and reads named files; the manifest
//! logic (what is written, signed and checked, and in which order) is
//! [`super::publish_async`]'s, the same for all of them.

use std::path::{Path, PathBuf};

use super::Error;
use crate::fetchers::BoxFuture;

/// Where a publish goes, as `--to` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A directory (served by any static HTTP host, or watched by a `file`
    /// source).
    Dir(PathBuf),
    /// `s3://bucket/prefix/`: objects under the prefix (feature `s3`).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix, empty or ending in `/`.
        prefix: String,
        /// A custom endpoint (MinIO, a local server), addressed path-style.
        endpoint_url: Option<String>,
        /// The region (else from the environment or profile).
        region: Option<String>,
    },
    /// `github:owner/repo@tag`: assets of the release with that tag,
    /// created when missing (feature `github`).
    Github {
        /// The owner.
        owner: String,
        /// The repository.
        repo: String,
        /// The release's tag.
        tag: String,
        /// The API's base URL (`https://api.github.com`, or GitHub
        /// Enterprise's `https://host/api/v3`).
        api_url: String,
    },
}

impl Default for Destination {
    fn default() -> Destination {
        Destination::Dir(PathBuf::new())
    }
}

/// The default GitHub API base URL.
pub const GITHUB_API: &str = "https://api.github.com";

impl Destination {
    /// Parses `--to`: `s3://bucket/prefix/`, `github:owner/repo@tag`, or a
    /// directory. `endpoint_url` and `region` apply to S3, `api_url` to
    /// GitHub; giving one for another target is refused.
    pub fn parse(
        to: &str,
        endpoint_url: Option<String>,
        region: Option<String>,
        api_url: Option<String>,
    ) -> Result<Destination, Error> {
        let invalid = |reason: String| Error::Invalid(format!("invalid --to {to:?}: {reason}"));
        let dest = if let Some(rest) = to.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("expected s3://bucket/prefix/".into()));
            }
            let mut prefix = prefix.trim_start_matches('/').to_owned();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            if let Some(url) = &endpoint_url {
                crate::url::check_url(url, false).map_err(|reason| {
                    Error::Invalid(format!("invalid --endpoint-url: {reason}"))
                })?;
            }
            Destination::S3 {
                bucket: bucket.to_owned(),
                prefix,
                endpoint_url: endpoint_url.clone(),
                region: region.clone(),
            }
        } else if let Some(rest) = to.strip_prefix("github:") {
            let (repo, tag) = rest
                .split_once('@')
                .ok_or_else(|| invalid("expected github:owner/repo@tag".into()))?;
            let (owner, name) = repo
                .split_once('/')
                .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
                .ok_or_else(|| invalid("expected github:owner/repo@tag".into()))?;
            if tag.is_empty() {
                return Err(invalid("the release's tag is missing after @".into()));
            }
            let api_url = api_url.clone().unwrap_or_else(|| GITHUB_API.to_owned());
            crate::url::check_url(&api_url, false)
                .map_err(|reason| Error::Invalid(format!("invalid --api-url: {reason}")))?;
            Destination::Github {
                owner: owner.to_owned(),
                repo: name.to_owned(),
                tag: tag.to_owned(),
                api_url: api_url.trim_end_matches('/').to_owned(),
            }
        } else {
            Destination::Dir(PathBuf::from(to))
        };
        let s3 = matches!(dest, Destination::S3 { .. });
        let github = matches!(dest, Destination::Github { .. });
        if (endpoint_url.is_some() || region.is_some()) && !s3 {
            return Err(invalid(
                "--endpoint-url and --region apply to s3:// targets only".into(),
            ));
        }
        if api_url.is_some() && !github {
            return Err(invalid("--api-url applies to github: targets only".into()));
        }
        Ok(dest)
    }

    /// Where the fleet's trial reports beside this target's manifest are.
    pub fn reports(&self) -> Result<crate::fleet::Sink, String> {
        match self {
            Destination::Dir(dir) => Ok(crate::fleet::Sink::Dir(dir.clone())),
            #[cfg(feature = "s3")]
            Destination::S3 {
                bucket,
                prefix,
                endpoint_url,
                region,
            } => Ok(crate::fleet::Sink::S3 {
                at: crate::fetchers::s3::Endpoint::new(
                    bucket,
                    endpoint_url.clone(),
                    region.clone(),
                    std::time::Duration::from_secs(30),
                ),
                prefix: prefix.clone(),
            }),
            _ => Err(format!(
                "{} holds no trial reports: only directories and s3:// prefixes do (every \
                 host exports baton_trials_total on /metrics instead)",
                self.show("")
            )),
        }
    }

    /// Where a file named `name` goes, for messages.
    pub fn show(&self, name: &str) -> String {
        match self {
            Destination::Dir(dir) => dir.join(name).display().to_string(),
            Destination::S3 {
                bucket,
                prefix,
                endpoint_url,
                ..
            } => match endpoint_url {
                Some(url) => format!("s3://{bucket}/{prefix}{name} at {url}"),
                None => format!("s3://{bucket}/{prefix}{name}"),
            },
            Destination::Github {
                owner, repo, tag, ..
            } => format!("github:{owner}/{repo}@{tag} asset {name}"),
        }
    }
}

/// A place that stores named files: what a publish needs of a target.
pub(crate) trait Target: Send {
    /// A small file's bytes (the manifest, its signature), `None` when absent.
    fn read<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, Error>>;

    /// Stores the file at `from` as `name`; `sha256` and `size` were
    /// computed before and are checked (or handed to the store to check).
    fn put_file<'a>(
        &'a mut self,
        name: &'a str,
        from: &'a Path,
        sha256: [u8; 32],
        size: u64,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Stores `bytes` as `name`, replacing it.
    fn put_bytes<'a>(
        &'a mut self,
        name: &'a str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Downloads a large file (an earlier release's artifact) into `dest`,
    /// created or truncated, streamed and hashed on the way; refuses more
    /// than `limit` bytes. Returns its sha256 and size, `None` when absent.
    fn get_file<'a>(
        &'a mut self,
        name: &'a str,
        dest: &'a Path,
        limit: u64,
    ) -> BoxFuture<'a, Result<Option<Fetched>, Error>>;
}

/// A downloaded file's sha256 and size.
pub(crate) type Fetched = ([u8; 32], u64);

/// A download in progress: written to a file and hashed, up to a limit.
pub(crate) struct Download {
    file: std::fs::File,
    path: PathBuf,
    shown: String,
    hasher: sha2::Sha256,
    size: u64,
    limit: u64,
}

impl Download {
    /// Creates (or truncates) `path` for the file shown as `shown`.
    pub(crate) fn create(path: &Path, shown: String, limit: u64) -> Result<Download, Error> {
        let file = std::fs::File::create(path).map_err(super::io("create", path))?;
        Ok(Download {
            file,
            path: path.to_owned(),
            shown,
            hasher: sha2::Sha256::default(),
            size: 0,
            limit,
        })
    }

    /// Appends `chunk`.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        use sha2::Digest;
        use std::io::Write;
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(Error::Invalid(format!(
                "{} is larger than the {} bytes expected",
                self.shown, self.limit
            )));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .map_err(super::io("write", &self.path))
    }

    /// The file's sha256 and size.
    pub(crate) fn finish(self) -> Result<Fetched, Error> {
        use sha2::Digest;
        self.file
            .sync_all()
            .map_err(super::io("write", &self.path))?;
        Ok((self.hasher.finalize().into(), self.size))
    }
}

/// Opens the target `dest` names.
pub(crate) async fn open(dest: &Destination) -> Result<Box<dyn Target>, Error> {
    match dest {
        Destination::Dir(dir) => {
            std::fs::create_dir_all(dir).map_err(super::io("create", dir))?;
            Ok(Box::new(DirTarget { dir: dir.clone() }))
        }
        #[cfg(feature = "s3")]
        Destination::S3 { .. } => Ok(Box::new(s3::S3Target::open(dest).await?)),
        #[cfg(not(feature = "s3"))]
        Destination::S3 { .. } => Err(Error::Invalid(
            "this baton was built without the `s3` feature".into(),
        )),
        #[cfg(feature = "github")]
        Destination::Github { .. } => Ok(Box::new(github::GithubTarget::open(dest).await?)),
        #[cfg(not(feature = "github"))]
        Destination::Github { .. } => Err(Error::Invalid(
            "this baton was built without the `github` feature".into(),
        )),
    }
}

/// A directory: every file goes through a temp file renamed into place.
struct DirTarget {
    dir: PathBuf,
}

impl Target for DirTarget {
    fn read<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, Error>> {
        Box::pin(async move {
            let path = self.dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(super::io("read", &path)(e)),
            }
        })
    }

    fn put_file<'a>(
        &'a mut self,
        name: &'a str,
        from: &'a Path,
        sha256: [u8; 32],
        size: u64,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let to = self.dir.join(name);
            let copied = super::copy_in(from, &to)?;
            if copied != (sha256, size) {
                return Err(Error::Invalid(format!(
                    "{} changed while it was being published; publish again",
                    from.display()
                )));
            }
            Ok(())
        })
    }

    fn put_bytes<'a>(
        &'a mut self,
        name: &'a str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move { super::write_atomic(&self.dir.join(name), &bytes) })
    }

    fn get_file<'a>(
        &'a mut self,
        name: &'a str,
        dest: &'a Path,
        limit: u64,
    ) -> BoxFuture<'a, Result<Option<Fetched>, Error>> {
        Box::pin(async move {
            use std::io::Read;
            let path = self.dir.join(name);
            let mut src = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(super::io("read", &path)(e)),
            };
            let mut out = Download::create(dest, path.display().to_string(), limit)?;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = src.read(&mut buf).map_err(super::io("read", &path))?;
                if n == 0 {
                    break;
                }
                out.write(&buf[..n])?;
            }
            out.finish().map(Some)
        })
    }
}

#[cfg(feature = "s3")]
mod s3 {
    use std::path::Path;

    use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
    use aws_sdk_s3::primitives::ByteStream;
    use base64::Engine as _;

    use super::{Destination, Error, Fetched, Target};
    use crate::fetchers::BoxFuture;

    /// Objects under a prefix of a bucket.
    pub(super) struct S3Target {
        client: aws_sdk_s3::Client,
        dest: Destination,
        bucket: String,
        prefix: String,
    }

    impl S3Target {
        pub(super) async fn open(dest: &Destination) -> Result<S3Target, Error> {
            let Destination::S3 {
                bucket,
                prefix,
                endpoint_url,
                region,
            } = dest
            else {
                unreachable!("S3Target::open takes an s3 destination");
            };
            let mut loader = crate::fetchers::s3::config_loader();
            if let Some(region) = region {
                loader = loader.region(aws_config::Region::new(region.clone()));
            }
            let shared = loader.load().await;
            let mut config = aws_sdk_s3::config::Builder::from(&shared);
            if let Some(url) = endpoint_url {
                config = config.endpoint_url(url).force_path_style(true);
            }
            Ok(S3Target {
                client: aws_sdk_s3::Client::from_conf(config.build()),
                dest: dest.clone(),
                bucket: bucket.clone(),
                prefix: prefix.clone(),
            })
        }

        fn fail(&self, what: &str, name: &str, reason: impl std::fmt::Display) -> Error {
            Error::Remote {
                what: format!("{what} {}", self.dest.show(name)),
                reason: reason.to_string(),
            }
        }

        /// A failed SDK call, explained (credentials, access, throttling…).
        fn sdk<E>(
            &self,
            what: &str,
            name: &str,
            err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        ) -> Error
        where
            E: ProvideErrorMetadata + std::error::Error + 'static,
        {
            let key = format!("{}{name}", self.prefix);
            let at = self.dest.show(name);
            let why = crate::fetchers::s3_error::explain(err, &at, &self.bucket, &key);
            self.fail(what, name, why.message())
        }

        async fn put(
            &self,
            name: &str,
            body: ByteStream,
            sha256: [u8; 32],
            size: u64,
        ) -> Result<(), Error> {
            let content_type = if name.ends_with(".json") {
                "application/json"
            } else if name.ends_with(".minisig") {
                "text/plain"
            } else {
                "application/octet-stream"
            };
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(format!("{}{name}", self.prefix))
                .content_type(content_type)
                .content_length(size as i64)
                // S3 checks the bytes against it and keeps it, so hosts
                // read it back from HeadObject.
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
                .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(sha256))
                .body(body)
                .send()
                .await
                .map_err(|e| self.sdk("upload", name, &e))?;
            Ok(())
        }
    }

    impl Target for S3Target {
        fn read<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, Error>> {
            Box::pin(async move {
                let got = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(format!("{}{name}", self.prefix))
                    .send()
                    .await;
                let out = match got {
                    Ok(out) => out,
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                        return Ok(None)
                    }
                    Err(e) => return Err(self.sdk("read", name, &e)),
                };
                if out
                    .content_length()
                    .is_some_and(|n| n > crate::fetchers::SMALL_FILE_LIMIT as i64)
                {
                    return Err(self.fail(
                        "read",
                        name,
                        format!("larger than {} bytes", crate::fetchers::SMALL_FILE_LIMIT),
                    ));
                }
                let bytes = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| self.fail("read", name, e))?;
                Ok(Some(bytes.to_vec()))
            })
        }

        fn put_file<'a>(
            &'a mut self,
            name: &'a str,
            from: &'a Path,
            sha256: [u8; 32],
            size: u64,
        ) -> BoxFuture<'a, Result<(), Error>> {
            Box::pin(async move {
                let body = ByteStream::from_path(from)
                    .await
                    .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", from.display())))?;
                self.put(name, body, sha256, size).await
            })
        }

        fn put_bytes<'a>(
            &'a mut self,
            name: &'a str,
            bytes: Vec<u8>,
        ) -> BoxFuture<'a, Result<(), Error>> {
            Box::pin(async move {
                use sha2::Digest;
                let sha256 = sha2::Sha256::digest(&bytes).into();
                let size = bytes.len() as u64;
                self.put(name, ByteStream::from(bytes), sha256, size).await
            })
        }

        fn get_file<'a>(
            &'a mut self,
            name: &'a str,
            dest: &'a Path,
            limit: u64,
        ) -> BoxFuture<'a, Result<Option<Fetched>, Error>> {
            Box::pin(async move {
                let got = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(format!("{}{name}", self.prefix))
                    .send()
                    .await;
                let mut out = match got {
                    Ok(out) => out,
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                        return Ok(None)
                    }
                    Err(e) => return Err(self.sdk("download", name, &e)),
                };
                let mut file = super::Download::create(dest, self.dest.show(name), limit)?;
                while let Some(chunk) =
                    out.body.try_next().await.map_err(|e| {
                        self.fail("download", name, crate::errors::display_chain(&e))
                    })?
                {
                    file.write(&chunk)?;
                }
                file.finish().map(Some)
            })
        }
    }
}

#[cfg(feature = "github")]
mod github {
    use std::path::Path;

    use http::header::{HeaderMap, HeaderValue, ACCEPT};
    use http_body_util::BodyExt;

    use super::{Destination, Error, Fetched, Target, GITHUB_API};
    use crate::fetchers::BoxFuture;

    /// An asset download as the API client answers it.
    type AssetResponse =
        http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, octocrab::Error>>;

    /// The environment variable holding the token.
    const TOKEN_ENV: &str = "GITHUB_TOKEN";

    /// The assets of one release, created when missing.
    pub(super) struct GithubTarget {
        client: octocrab::Octocrab,
        dest: Destination,
        owner: String,
        repo: String,
        release_id: u64,
        /// (name, id) of the release's assets.
        assets: Vec<(String, u64)>,
        has_token: bool,
    }

    impl GithubTarget {
        pub(super) async fn open(dest: &Destination) -> Result<GithubTarget, Error> {
            let Destination::Github {
                owner,
                repo,
                tag,
                api_url,
            } = dest
            else {
                unreachable!("GithubTarget::open takes a github destination");
            };
            // Uploads go to the release's upload_url: uploads.github.com
            // for github.com, the API's own host for GitHub Enterprise.
            let upload = if api_url == GITHUB_API {
                "https://uploads.github.com".to_owned()
            } else {
                let url = url::Url::parse(api_url)
                    .map_err(|e| Error::Invalid(format!("invalid --api-url: {e}")))?;
                url.origin().ascii_serialization()
            };
            let invalid = |e: octocrab::Error| Error::Invalid(format!("invalid --api-url: {e}"));
            let mut builder = octocrab::Octocrab::builder()
                .base_uri(api_url.as_str())
                .map_err(invalid)?
                .upload_uri(upload.as_str())
                .map_err(invalid)?;
            let token = std::env::var(TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty());
            let has_token = token.is_some();
            if let Some(token) = token {
                builder = builder.personal_token(token);
            }
            let client = builder
                .build()
                .map_err(|e| Error::Invalid(format!("cannot build the GitHub client: {e}")))?;
            let mut target = GithubTarget {
                client,
                dest: dest.clone(),
                owner: owner.clone(),
                repo: repo.clone(),
                release_id: 0,
                assets: Vec::new(),
                has_token,
            };
            let releases = || target.client.repos(owner, repo);
            let release = match releases().releases().get_by_tag(tag).await {
                Ok(release) => release,
                Err(octocrab::Error::GitHub { source, .. }) if source.status_code == 404 => {
                    releases()
                        .releases()
                        .create(tag)
                        .name(tag)
                        .send()
                        .await
                        .map_err(|e| target.api_fail("create the release", "", &e))?
                }
                Err(e) => return Err(target.api_fail("read the release", "", &e)),
            };
            target.release_id = release.id.into_inner();
            target.assets = release
                .assets
                .into_iter()
                .map(|a| (a.name, a.id.into_inner()))
                .collect();
            Ok(target)
        }

        /// Where `name` is (the release itself when empty).
        fn at(&self, name: &str) -> String {
            if name.is_empty() {
                let Destination::Github { tag, .. } = &self.dest else {
                    unreachable!()
                };
                format!("github:{}/{}@{tag}", self.owner, self.repo)
            } else {
                self.dest.show(name)
            }
        }

        fn fail(&self, what: &str, name: &str, reason: impl std::fmt::Display) -> Error {
            let hint = if self.has_token {
                String::new()
            } else {
                format!(" (${TOKEN_ENV} is not set)")
            };
            Error::Remote {
                what: format!("{what} {}", self.at(name)),
                reason: format!("{reason}{hint}"),
            }
        }

        /// A failed API call, explained on one line with what to do
        /// ([`crate::fetchers::github::error`]).
        fn api_fail(&self, what: &str, name: &str, e: &octocrab::Error) -> Error {
            let Destination::Github { api_url, .. } = &self.dest else {
                unreachable!()
            };
            Error::Remote {
                what: format!("{what} {}", self.at(name)),
                reason: self.explain(e, api_url),
            }
        }

        fn explain(&self, e: &octocrab::Error, api_url: &str) -> String {
            crate::fetchers::github::error::explain(
                e,
                &format!("repository {}/{}", self.owner, self.repo),
                api_url,
                self.has_token,
                crate::fetchers::github::error::Who::Publisher,
            )
        }

        /// The response to downloading asset `name`, `None` when the
        /// release has no such asset; an error status is an error.
        async fn download(&self, name: &str) -> Result<Option<AssetResponse>, Error> {
            let Some(id) = self.asset(name) else {
                return Ok(None);
            };
            let path = format!("/repos/{}/{}/releases/assets/{id}", self.owner, self.repo);
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_static("application/octet-stream"));
            let response = self
                .client
                ._get_with_headers(path.as_str(), Some(headers))
                .await
                .map_err(|e| self.api_fail("download", name, &e))?;
            if !response.status().is_success() {
                let reply = crate::fetchers::github::error::Reply {
                    status: response.status().as_u16(),
                    ..Default::default()
                };
                return Err(Error::Remote {
                    what: format!("download {}", self.at(name)),
                    reason: crate::fetchers::github::error::explain_reply(
                        &reply,
                        &format!("asset {name} of {}", self.at("")),
                        self.has_token,
                        crate::fetchers::github::error::Who::Publisher,
                    ),
                });
            }
            Ok(Some(response))
        }

        fn asset(&self, name: &str) -> Option<u64> {
            self.assets
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, id)| *id)
        }
    }

    impl Target for GithubTarget {
        fn read<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, Error>> {
            Box::pin(async move {
                let Some(response) = self.download(name).await? else {
                    return Ok(None);
                };
                let limited = http_body_util::Limited::new(
                    response.into_body(),
                    crate::fetchers::SMALL_FILE_LIMIT,
                );
                let bytes = limited
                    .collect()
                    .await
                    .map_err(|e| self.fail("download", name, e))?;
                Ok(Some(bytes.to_bytes().to_vec()))
            })
        }

        fn put_file<'a>(
            &'a mut self,
            name: &'a str,
            from: &'a Path,
            sha256: [u8; 32],
            size: u64,
        ) -> BoxFuture<'a, Result<(), Error>> {
            Box::pin(async move {
                let bytes = std::fs::read(from).map_err(super::super::io("read", from))?;
                use sha2::Digest;
                let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
                if (digest, bytes.len() as u64) != (sha256, size) {
                    return Err(Error::Invalid(format!(
                        "{} changed while it was being published; publish again",
                        from.display()
                    )));
                }
                self.put_bytes(name, bytes).await
            })
        }

        fn put_bytes<'a>(
            &'a mut self,
            name: &'a str,
            bytes: Vec<u8>,
        ) -> BoxFuture<'a, Result<(), Error>> {
            Box::pin(async move {
                // An asset's name is unique in its release: the old one
                // goes first (GitHub has no atomic replace).
                if let Some(id) = self.asset(name) {
                    self.client
                        .repos(&self.owner, &self.repo)
                        .release_assets()
                        .delete(id)
                        .await
                        .map_err(|e| self.api_fail("delete the old", name, &e))?;
                    self.assets.retain(|(n, _)| n != name);
                }
                let asset = self
                    .client
                    .repos(&self.owner, &self.repo)
                    .releases()
                    .upload_asset(self.release_id, name, bytes::Bytes::from(bytes))
                    .send()
                    .await
                    .map_err(|e| self.api_fail("upload", name, &e))?;
                self.assets.push((name.to_owned(), asset.id.into_inner()));
                Ok(())
            })
        }

        fn get_file<'a>(
            &'a mut self,
            name: &'a str,
            dest: &'a Path,
            limit: u64,
        ) -> BoxFuture<'a, Result<Option<Fetched>, Error>> {
            Box::pin(async move {
                let Some(response) = self.download(name).await? else {
                    return Ok(None);
                };
                let mut body = response.into_body();
                let mut file = super::Download::create(dest, self.dest.show(name), limit)?;
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| self.fail("download", name, e))?;
                    if let Ok(data) = frame.into_data() {
                        file.write(&data)?;
                    }
                }
                file.finish().map(Some)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert_eq!(
            Destination::parse("s3://b/hello", None, None, None).unwrap(),
            Destination::S3 {
                bucket: "b".into(),
                prefix: "hello/".into(),
                endpoint_url: None,
                region: None
            }
        );
        assert!(matches!(
            Destination::parse("s3://b", None, None, None).unwrap(),
            Destination::S3 { prefix, .. } if prefix.is_empty()
        ));
        assert_eq!(
            Destination::parse("github:acme/hello@v2.0.0", None, None, None).unwrap(),
            Destination::Github {
                owner: "acme".into(),
                repo: "hello".into(),
                tag: "v2.0.0".into(),
                api_url: GITHUB_API.into()
            }
        );
        assert!(Destination::parse("github:acme/hello", None, None, None).is_err());
        assert!(Destination::parse("github:acme@v1", None, None, None).is_err());
        assert!(Destination::parse("s3:///x", None, None, None).is_err());
        assert!(Destination::parse("out", Some("http://127.0.0.1:9".into()), None, None).is_err());
        assert_eq!(
            Destination::parse("out", None, None, None).unwrap(),
            Destination::Dir("out".into())
        );
    }
}
