//! The S3 fetcher (aws-sdk-s3, credentials from aws-config's standard chain:
//! environment, profile, IMDS; never logged). An unchanged object costs one
//! HeadObject (its ETag and VersionId are the change token); a new one is
//! streamed from GetObject. With a prefix, the key whose name carries the
//! highest semver wins. The checksum comes from `ChecksumSHA256` (asked for
//! with checksum mode) or the `sha256` user metadata; the signature from
//! `<key>.minisig`.
//!
//! A `key` ending in `.json` (or an object stored as `application/json`)
//! names a release manifest (see [`crate::manifest`]): its signature is the
//! `<key>.minisig` object, and the artifact's key resolves relative to the
//! manifest's key. The artifact is requested only when the pipeline reads
//! it, so a host outside a release's rollout downloads nothing, and an
//! unchanged manifest still costs one HeadObject.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::ChecksumMode;

use super::{BoxFuture, Candidate, Error, Fetcher, Info};
use crate::config::{Fetch, Source, Verify};

/// Polls one object, or the newest versioned key under a prefix.
pub struct S3Fetcher {
    client: Option<aws_sdk_s3::Client>,
    at: Location,
    key: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    force_path_style: bool,
    timeout: std::time::Duration,
    verify: Verify,
    last_token: Option<String>,
}

/// A bucket at an endpoint: names objects in messages and errors.
#[derive(Clone)]
struct Location {
    bucket: String,
    endpoint_url: Option<String>,
}

impl Location {
    fn of(&self, key: &str) -> String {
        match &self.endpoint_url {
            Some(url) => format!("s3://{}/{key} at {url}", self.bucket),
            None => format!("s3://{}/{key}", self.bucket),
        }
    }

    /// Names the cause of a failed call: no such bucket or key, access
    /// denied, endpoint unreachable.
    fn error<E>(&self, key: &str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match super::s3_error::explain(&err, &self.of(key), &self.bucket, key) {
            super::s3_error::Failure::Refused(m) => Error::Refused(m),
            super::s3_error::Failure::Transient(m) => Error::Other(m),
        }
    }
}

impl S3Fetcher {
    /// A fetcher for the `s3` source of `fetch`; the client (and the
    /// credential chain) is set up at the first check.
    pub fn new(fetch: &Fetch, verify: &Verify) -> S3Fetcher {
        let Source::S3 {
            bucket,
            key,
            prefix,
            region,
            endpoint_url,
            force_path_style,
        } = &fetch.source
        else {
            unreachable!("S3Fetcher::new takes an s3 source");
        };
        S3Fetcher {
            client: None,
            at: Location {
                bucket: bucket.clone(),
                endpoint_url: endpoint_url.clone(),
            },
            key: key.clone(),
            prefix: prefix.clone(),
            region: region.clone(),
            force_path_style: *force_path_style,
            timeout: fetch.timeout,
            verify: verify.clone(),
            last_token: None,
        }
    }

    async fn client(&mut self) -> aws_sdk_s3::Client {
        if let Some(client) = &self.client {
            return client.clone();
        }
        let client = build_client(
            self.region.as_deref(),
            self.at.endpoint_url.as_deref(),
            self.force_path_style,
            self.timeout,
        )
        .await;
        self.client = Some(client.clone());
        client
    }

    fn location(&self, key: &str) -> String {
        self.at.of(key)
    }

    fn error<E>(&self, key: &str, err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.at.error(key, err)
    }

    /// The key under the prefix whose name carries the highest version.
    async fn newest_key(
        &mut self,
        client: &aws_sdk_s3::Client,
        prefix: &str,
    ) -> Result<(String, String), Error> {
        let mut best: Option<(semver::Version, String)> = None;
        let mut pages = client
            .list_objects_v2()
            .bucket(&self.at.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                if super::is_beside_file(key) {
                    continue;
                }
                let Some(version) = version_in(&key[prefix.len().min(key.len())..]) else {
                    continue;
                };
                if !version.pre.is_empty()
                    || self
                        .verify
                        .version
                        .as_ref()
                        .is_some_and(|r| !r.matches(&version))
                {
                    continue;
                }
                if best.as_ref().is_none_or(|(v, _)| version > *v) {
                    best = Some((version, key.to_owned()));
                }
            }
        }
        best.map(|(v, k)| (k, v.to_string())).ok_or_else(|| {
            Error::Other(format!(
                "no key with a version under {}",
                self.location(prefix)
            ))
        })
    }

    /// A small object's bytes (a signature, a manifest), read under
    /// [`super::SMALL_FILE_LIMIT`]; `None` when there is no such key.
    /// `etag`, when given, pins the bytes a HeadObject described.
    async fn small_object(
        &self,
        client: &aws_sdk_s3::Client,
        key: &str,
        what: &'static str,
        etag: Option<&str>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let mut get = client.get_object().bucket(&self.at.bucket).key(key);
        if let Some(etag) = etag {
            get = get.if_match(etag);
        }
        match get.send().await {
            Ok(out) => {
                if out
                    .content_length()
                    .is_some_and(|n| n > super::SMALL_FILE_LIMIT as i64)
                {
                    return Err(super::too_large(
                        what,
                        &self.location(key),
                        super::SMALL_FILE_LIMIT,
                    ));
                }
                super::read_bounded(
                    out.body.into_async_read(),
                    super::SMALL_FILE_LIMIT,
                    self.timeout,
                    what,
                    &self.location(key),
                )
                .await
                .map(Some)
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(self.error(key, e)),
        }
    }

    async fn check_inner(&mut self) -> Result<Option<Candidate>, Error> {
        let client = self.client().await;
        let (key, listed_version) = match (self.key.clone(), self.prefix.clone()) {
            (Some(key), _) => (key, None),
            (None, Some(prefix)) => {
                let (key, version) = self.newest_key(&client, &prefix).await?;
                (key, Some(version))
            }
            (None, None) => unreachable!("validated: key or prefix"),
        };
        let head = client
            .head_object()
            .bucket(&self.at.bucket)
            .key(&key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await;
        let head = match head {
            Ok(head) => head,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                // HeadObject's 404 has no error code: ask about the bucket.
                let bucket = client.head_bucket().bucket(&self.at.bucket).send().await;
                let at = self.location(&key);
                return Err(match bucket {
                    Ok(_) => Error::Refused(format!(
                        "no such key {key:?} in bucket {:?} ({at})",
                        self.at.bucket
                    )),
                    Err(b) if b.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                        Error::Refused(format!("no such bucket {:?} ({at})", self.at.bucket))
                    }
                    Err(b) => self.error(&key, b),
                });
            }
            Err(e) => return Err(self.error(&key, e)),
        };
        let token = super::change_token(
            "s3",
            &[
                &key,
                &head.e_tag().unwrap_or(""),
                &head.version_id().unwrap_or(""),
            ],
        );
        if self.last_token.as_ref() == Some(&token) {
            return Ok(None);
        }
        let is_manifest = self.prefix.is_none() && super::is_manifest(&key, head.content_type());
        if is_manifest {
            let candidate = self.named_by_manifest(&client, &key, head.e_tag()).await?;
            self.last_token = Some(token);
            return Ok(Some(candidate));
        }
        let metadata = head.metadata();
        let sha256 = head
            .checksum_sha256()
            .filter(|c| !c.contains('-'))
            .and_then(decode_base64_sha256)
            .or_else(|| {
                metadata
                    .and_then(|m| m.get("sha256"))
                    .and_then(|h| crate::config::parse_sha256(h))
            });
        let version = listed_version.or_else(|| metadata.and_then(|m| m.get("version")).cloned());
        let signature = if self.verify.minisign_keys.is_empty() {
            None
        } else {
            self.small_object(&client, &format!("{key}.minisig"), "signature", None)
                .await?
                .map(|b| {
                    String::from_utf8(b).map_err(|_| Error::Invalid {
                        what: "signature",
                        url: self.location(&format!("{key}.minisig")),
                        reason: "not UTF-8 text".into(),
                    })
                })
                .transpose()?
        };
        let mut get = client.get_object().bucket(&self.at.bucket).key(&key);
        if let Some(etag) = head.e_tag() {
            // The bytes HeadObject described, not a newer upload.
            get = get.if_match(etag);
        }
        if let Some(id) = head.version_id() {
            get = get.version_id(id);
        }
        let object = get.send().await.map_err(|e| self.error(&key, e))?;
        self.last_token = Some(token.clone());
        Ok(Some(Candidate {
            body: Box::pin(object.body.into_async_read()),
            info: Info {
                version,
                sha256,
                size: head.content_length().and_then(|n| u64::try_from(n).ok()),
                signature,
                token,
                name: key.rsplit('/').next().unwrap_or(&key).to_owned(),
                source: format!("s3 {}", self.location(&key)),
                manifest: None,
                host_id: None,
            },
            opener: None,
        }))
    }

    /// The candidate the manifest at `key` names: the manifest (the bytes
    /// HeadObject described) and its `.minisig` are read and checked; the
    /// artifact is opened only when the pipeline reads it.
    async fn named_by_manifest(
        &self,
        client: &aws_sdk_s3::Client,
        key: &str,
        etag: Option<&str>,
    ) -> Result<Candidate, Error> {
        let shown = self.location(key);
        let bytes = self
            .small_object(client, key, "manifest", etag)
            .await?
            .ok_or_else(|| {
                Error::Refused(format!(
                    "no such key {key:?} in bucket {:?} ({shown})",
                    self.at.bucket
                ))
            })?;
        let minisig = if self.verify.minisign_keys.is_empty() {
            None
        } else {
            self.small_object(client, &format!("{key}.minisig"), "signature", None)
                .await?
        };
        let manifest = super::load_manifest(&bytes, minisig.as_deref(), &self.verify, &shown)?;
        let artifact =
            super::resolve_relative(key, &manifest.url).map_err(|reason| Error::Invalid {
                what: "manifest",
                url: shown.clone(),
                reason,
            })?;
        let name = artifact.rsplit('/').next().unwrap_or(&artifact).to_owned();
        let source = format!("s3 {}", self.location(&artifact));
        let (client, at, manifest_key) = (client.clone(), self.at.clone(), key.to_owned());
        let opener: super::Opener = std::sync::Arc::new(move |relative: &str| {
            let key = match super::resolve_relative(&manifest_key, relative) {
                Ok(key) => key,
                Err(reason) => return super::failing(reason),
            };
            let (client, at) = (client.clone(), at.clone());
            Box::pin(super::Lazy::new(async move {
                let object = client
                    .get_object()
                    .bucket(&at.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| {
                        std::io::Error::other(crate::errors::display_chain(&at.error(&key, e)))
                    })?;
                Ok(Box::pin(object.body.into_async_read()) as super::Body)
            }))
        });
        Ok(Candidate {
            body: opener(&manifest.url),
            info: super::manifest_info(manifest, super::manifest_token(&bytes), name, source),
            opener: Some(opener),
        })
    }
}

/// A client for `region` (else the environment's) at `endpoint_url` (else
/// AWS), with `timeout` for connecting and reading; credentials come from
/// the standard chain at the first request.
async fn build_client(
    region: Option<&str>,
    endpoint_url: Option<&str>,
    force_path_style: bool,
    timeout: std::time::Duration,
) -> aws_sdk_s3::Client {
    let mut loader = config_loader().timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build(),
    );
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_s3::config::Builder::from(&shared).force_path_style(force_path_style);
    if let Some(url) = endpoint_url {
        config = config.endpoint_url(url);
    }
    aws_sdk_s3::Client::from_conf(config.build())
}

/// The bucket an `s3` source reads, as a place to write small objects to
/// (trial reports): the same endpoint, region, addressing and credentials.
#[derive(Clone)]
pub struct Endpoint {
    at: Location,
    region: Option<String>,
    force_path_style: bool,
    timeout: std::time::Duration,
    client: std::sync::Arc<tokio::sync::OnceCell<aws_sdk_s3::Client>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.at.of(""))
    }
}

impl Endpoint {
    /// `bucket` at `endpoint_url` (else AWS) in `region` (else the
    /// environment's), addressed path-style when an endpoint is given.
    pub fn new(
        bucket: &str,
        endpoint_url: Option<String>,
        region: Option<String>,
        timeout: std::time::Duration,
    ) -> Endpoint {
        Endpoint {
            force_path_style: endpoint_url.is_some(),
            at: Location {
                bucket: bucket.to_owned(),
                endpoint_url,
            },
            region,
            timeout,
            client: Default::default(),
        }
    }

    /// The "directories" right under `prefix` (the common prefixes with
    /// `/` as delimiter), at most 1 000.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, String> {
        let out = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.at.bucket)
            .prefix(prefix)
            .delimiter("/")
            .send()
            .await
            .map_err(|e| self.at.error(prefix, e).to_string())?;
        Ok(out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix()?.strip_prefix(prefix)?.strip_suffix('/'))
            .map(str::to_owned)
            .collect())
    }

    /// The bucket of `fetch`'s `s3` source.
    pub fn of(fetch: &Fetch) -> Option<Endpoint> {
        let Source::S3 {
            bucket,
            region,
            endpoint_url,
            force_path_style,
            ..
        } = &fetch.source
        else {
            return None;
        };
        Some(Endpoint {
            at: Location {
                bucket: bucket.clone(),
                endpoint_url: endpoint_url.clone(),
            },
            region: region.clone(),
            force_path_style: *force_path_style,
            timeout: fetch.timeout,
            client: Default::default(),
        })
    }

    /// Names `key` in this bucket, for messages.
    pub fn describe(&self, key: &str) -> String {
        self.at.of(key)
    }

    async fn client(&self) -> &aws_sdk_s3::Client {
        self.client
            .get_or_init(|| {
                build_client(
                    self.region.as_deref(),
                    self.at.endpoint_url.as_deref(),
                    self.force_path_style,
                    self.timeout,
                )
            })
            .await
    }

    /// The keys under `prefix` with their times, at most `max` (one
    /// request); whether there were more.
    pub async fn list(
        &self,
        prefix: &str,
        max: i32,
    ) -> Result<(Vec<(String, std::time::SystemTime)>, bool), String> {
        let out = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.at.bucket)
            .prefix(prefix)
            .max_keys(max)
            .send()
            .await
            .map_err(|e| self.at.error(prefix, e).to_string())?;
        let keys = out
            .contents()
            .iter()
            .filter_map(|o| {
                let at = o
                    .last_modified()
                    .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                    .unwrap_or(std::time::UNIX_EPOCH);
                Some((o.key()?.to_owned(), at))
            })
            .collect();
        Ok((keys, out.is_truncated().unwrap_or(false)))
    }

    /// A small object's bytes; `None` when it is missing or over `cap`
    /// bytes (as its length says: an object that does not say is not read).
    pub async fn get_small(&self, key: &str, cap: u64) -> Result<Option<Vec<u8>>, String> {
        let out = match self
            .client()
            .await
            .get_object()
            .bucket(&self.at.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(self.at.error(key, e).to_string()),
        };
        if out.content_length().is_none_or(|n| n < 0 || n as u64 > cap) {
            return Ok(None);
        }
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| format!("cannot read {}: {e}", self.at.of(key)))?
            .into_bytes();
        Ok((bytes.len() as u64 <= cap).then(|| bytes.to_vec()))
    }

    /// Puts `body` (JSON) at `key`; why not, in one sentence.
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), String> {
        self.client()
            .await
            .put_object()
            .bucket(&self.at.bucket)
            .key(key)
            .content_type("application/json")
            .body(body.into())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.at.error(key, e).to_string())
    }
}

/// The AWS SDK's config loader with baton's HTTPS client (see
/// [`http_client`]); credentials and region come from the usual chain.
pub fn config_loader() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http_client())
}

/// The HTTPS client every S3 request goes through: rustls with ring, the
/// TLS stack reqwest and octocrab already use, so a build compiles one
/// crypto library and needs no C toolchain for a second (aws-lc).
pub fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The first `x.y.z` (with an optional pre-release) in a key's name:
/// `hello-1.4.2-x86_64-unknown-linux-gnu.tar.gz` → 1.4.2.
fn version_in(name: &str) -> Option<semver::Version> {
    let bytes = name.as_bytes();
    (0..bytes.len())
        .filter(|&i| {
            let boundary = |j: usize| j == 0 || !bytes[j - 1].is_ascii_alphanumeric();
            bytes[i].is_ascii_digit() && (boundary(i) || (bytes[i - 1] == b'v' && boundary(i - 1)))
        })
        .find_map(|start| {
            let rest = &name[start..];
            let core_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let core = rest[..core_len].trim_end_matches('.');
            if core.split('.').count() != 3 {
                return None;
            }
            // A pre-release part (`-rc.1`) is told from a target triple
            // (`-x86_64-…`) by its customary names.
            let after = &rest[core.len()..];
            let pre = after.strip_prefix('-').filter(|p| {
                ["alpha", "beta", "rc", "pre", "dev", "nightly"]
                    .iter()
                    .any(|tag| p.starts_with(tag))
            });
            match pre {
                Some(p) => {
                    let ident = &p[..p
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
                        .unwrap_or(p.len())];
                    let ident = [".tar.gz", ".tgz", ".zip", ".gz"]
                        .iter()
                        .fold(ident, |i, ext| i.strip_suffix(ext).unwrap_or(i))
                        .trim_end_matches('.');
                    semver::Version::parse(&format!("{core}-{ident}")).ok()
                }
                None => semver::Version::parse(core).ok(),
            }
        })
}

/// S3's `ChecksumSHA256`: a sha256 in standard base64.
fn decode_base64_sha256(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    bytes.try_into().ok()
}

impl Fetcher for S3Fetcher {
    fn check(&mut self) -> BoxFuture<'_, Result<Option<Candidate>, Error>> {
        Box::pin(self.check_inner())
    }

    fn retry(&mut self) {
        self.last_token = None;
    }

    fn describe(&self) -> String {
        match (&self.key, &self.prefix) {
            (Some(key), _) => format!("s3 {}", self.location(key)),
            (_, Some(prefix)) => format!("s3 {}*", self.location(prefix)),
            _ => "s3".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_found_in_key_names() {
        assert_eq!(
            version_in("hello-1.4.2-x86_64-unknown-linux-gnu.tar.gz"),
            Some(semver::Version::new(1, 4, 2))
        );
        assert_eq!(
            version_in("1.10.0/hello"),
            Some(semver::Version::new(1, 10, 0))
        );
        assert_eq!(
            version_in("hello-v2.0.1.zip"),
            Some(semver::Version::new(2, 0, 1))
        );
        assert_eq!(
            version_in("hellov2.0.1.zip"),
            None,
            "a v glued to letters is not a boundary"
        );
        assert_eq!(version_in("hello-x86_64.tar.gz"), None);
        assert_eq!(
            version_in("hello-10.0.0-rc.1-x86_64-linux")
                .unwrap()
                .pre
                .as_str(),
            "rc.1"
        );
        assert_eq!(
            version_in("hello-1.0.0-beta.2.tar.gz")
                .unwrap()
                .pre
                .as_str(),
            "beta.2"
        );
    }

    #[test]
    fn base64_digests_decode() {
        // sha256("") in base64.
        let d = decode_base64_sha256("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").unwrap();
        assert_eq!(
            hex::encode(d),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(decode_base64_sha256("abc"), None);
    }
}
