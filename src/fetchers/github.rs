//! The GitHub releases fetcher (octocrab): the latest release, or the
//! highest semver tag; the asset picked by a name pattern; the checksum from
//! the asset's `digest` or a checksum asset; the signature from
//! `<asset>.minisig`. Polls are conditional (a 304 costs no rate limit); a
//! rate-limit reply pauses polling until the reset it names.
//!
//! A release carrying an asset named `fetch.manifest_asset` (default
//! `manifest.json`) is read through that release manifest (see
//! [`crate::manifest`]): its signature is the `<name>.minisig` asset, its
//! `url` names another asset of the same release, which is downloaded only
//! when the pipeline reads it (a host outside the rollout downloads
//! nothing). An unchanged release still costs one conditional request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{HeaderMap, HeaderValue, ACCEPT, ETAG, IF_NONE_MATCH};
use http::StatusCode;

use super::github_api::{
    choose, expand, glob, is_rate_limited, next_link, rate_limit_wait, Asset, Release,
};
use super::{BoxFuture, Candidate, Error, Fetcher, Info};
use crate::config::{Fetch, Source, Verify};
use error::Who;

/// GitHub's error replies and octocrab's errors as one line with what to
/// do, shared with `baton publish --to github:`.
#[path = "github_error.rs"]
pub mod error;

/// Pages of releases read at most in semver mode (100 per page).
const MAX_PAGES: usize = 10;

type Response = http::Response<http_body_util::combinators::BoxBody<Bytes, octocrab::Error>>;

/// Polls one repository's releases.
pub struct GithubFetcher {
    client: octocrab::Octocrab,
    owner: String,
    repo: String,
    pattern: Option<String>,
    manifest_asset: String,
    verify: Verify,
    /// The API's base URL, for messages.
    api_url: String,
    prerelease: bool,
    semver: bool,
    etag: Option<HeaderValue>,
    last_token: Option<String>,
    paused_until: Option<Instant>,
    /// `fetch.timeout`: the deadline for each whole small body and reply.
    timeout: std::time::Duration,
    /// Whether a token is sent (the advice on a 401, 403 or 404 differs).
    has_token: bool,
}

impl GithubFetcher {
    /// A fetcher for the `github` source of `fetch`.
    pub fn new(fetch: &Fetch, verify: &Verify) -> Result<GithubFetcher, Error> {
        let Source::Github {
            repo,
            asset,
            manifest_asset,
            token,
            token_env,
            api_url,
            prerelease,
            semver,
        } = &fetch.source
        else {
            return Err(Error::Other("not a github source".into()));
        };
        let (owner, name) = repo
            .split_once('/')
            .ok_or_else(|| Error::Other(format!("fetch.repo {repo:?} is not owner/name")))?;
        let mut builder = octocrab::Octocrab::builder()
            .base_uri(api_url.as_str())
            .map_err(|e| Error::Other(format!("invalid fetch.api_url {api_url:?}: {e}")))?
            .set_connect_timeout(Some(fetch.timeout))
            .set_read_timeout(Some(fetch.timeout));
        let token = token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .or_else(|| std::env::var(token_env).ok())
            .filter(|t| !t.trim().is_empty());
        let has_token = token.is_some();
        if let Some(token) = token {
            builder = builder.personal_token(token);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Other(format!("cannot build the GitHub client: {e}")))?;
        Ok(GithubFetcher {
            has_token,
            client,
            owner: owner.to_owned(),
            repo: name.to_owned(),
            pattern: asset.clone(),
            manifest_asset: manifest_asset.clone(),
            verify: verify.clone(),
            api_url: api_url.trim_end_matches('/').to_owned(),
            prerelease: *prerelease,
            semver: *semver,
            etag: None,
            last_token: None,
            paused_until: None,
            timeout: fetch.timeout,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_url)
    }

    async fn get(
        &self,
        path: &str,
        accept: &str,
        etag: Option<&HeaderValue>,
    ) -> Result<Response, Error> {
        get_with(&self.client, &self.api_url, path, accept, etag).await
    }
}

/// One API request with its headers; the error names the URL.
async fn get_with(
    client: &octocrab::Octocrab,
    api_url: &str,
    path: &str,
    accept: &str,
    etag: Option<&HeaderValue>,
) -> Result<Response, Error> {
    let mut headers = HeaderMap::new();
    headers.insert(
        ACCEPT,
        HeaderValue::from_str(accept).expect("a valid Accept value"),
    );
    headers.insert(
        "x-github-api-version",
        HeaderValue::from_static("2022-11-28"),
    );
    if let Some(etag) = etag {
        headers.insert(IF_NONE_MATCH, etag.clone());
    }
    client
        ._get_with_headers(path, Some(headers))
        .await
        .map_err(|e| Error::Request {
            url: format!("{api_url}{path}"),
            // Error statuses are replies, read by `status_error`: what
            // fails here got no reply (unreachable, timed out).
            source: Box::new(std::io::Error::other(error::explain(
                &e,
                "the API",
                api_url,
                true,
                Who::Source,
            ))),
        })
}

/// The change token of one asset of a release: a re-uploaded asset (same
/// name, new id or update time) is a new candidate.
fn asset_token(kind: &str, release: &Release, asset: &Asset) -> String {
    super::change_token(
        kind,
        &[
            &release.id,
            &asset.id,
            &asset.updated_at.as_deref().unwrap_or(""),
        ],
    )
}

/// A response's body as a byte stream.
fn body_of(response: Response) -> super::Body {
    let stream = http_body_util::BodyDataStream::new(response.into_body())
        .map_err(|e| std::io::Error::other(crate::errors::display_chain(&e)));
    Box::pin(tokio_util::io::StreamReader::new(stream))
}

/// The largest API reply read (a page of releases with their assets is
/// tens of KiB; GitHub's largest pages stay well under a MiB): a server
/// sending more is refused, not buffered.
const API_BODY_LIMIT: usize = 16 << 20;

impl GithubFetcher {
    async fn text(&self, response: Response, path: &str) -> Result<String, Error> {
        let url = self.url(path);
        let bytes = super::read_bounded(
            body_of(response),
            API_BODY_LIMIT,
            self.timeout,
            "reply",
            &url,
        )
        .await?;
        String::from_utf8(bytes).map_err(|_| Error::Invalid {
            what: "reply",
            url,
            reason: "not UTF-8".into(),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: Response,
        path: &str,
    ) -> Result<T, Error> {
        let text = self.text(response, path).await?;
        serde_json::from_str(&text).map_err(|e| Error::Invalid {
            what: "reply",
            url: self.url(path),
            reason: e.to_string(),
        })
    }

    /// Turns an error status into an error naming the cause; rate limits
    /// pause polling until their reset.
    async fn status_error(&mut self, response: Response, path: &str) -> Error {
        let status = response.status();
        let headers = response.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let limited = is_rate_limited(
            status.as_u16(),
            header("x-ratelimit-remaining").as_deref(),
            header("retry-after").as_deref(),
        );
        if limited {
            let wait = rate_limit_wait(
                header("retry-after").as_deref(),
                header("x-ratelimit-reset").as_deref(),
                crate::time::unix_now(),
            );
            self.paused_until = Instant::now().checked_add(Duration::from_secs(wait));
            return Error::Other(format!(
                "GitHub rate limit reached ({} on {}); pausing polls for {wait} s until the reset",
                status.as_u16(),
                self.url(path)
            ));
        }
        let repo = format!("{}/{}", self.owner, self.repo);
        match status {
            StatusCode::UNAUTHORIZED => Error::Refused(format!(
                "GitHub rejected the token (401 Bad credentials) for {repo}; check fetch.token_env"
            )),
            StatusCode::NOT_FOUND if path.ends_with("/releases/latest") => {
                let exists = self
                    .get(
                        &format!("/repos/{repo}"),
                        "application/vnd.github+json",
                        None,
                    )
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if exists {
                    Error::Refused(format!("repository {repo} has no published release"))
                } else {
                    Error::Refused(self.repo_not_found(&repo))
                }
            }
            StatusCode::NOT_FOUND if path.contains("/releases") && !path.contains("/assets/") => {
                Error::Refused(self.repo_not_found(&repo))
            }
            // Not a rate limit (above): the token lacks a permission, or
            // the organization restricts it (SAML SSO, IP allow list).
            StatusCode::FORBIDDEN => Error::Refused(error::explain_reply(
                &error::Reply {
                    status: 403,
                    ..error::Reply::default()
                },
                &format!("repository {repo} at {}", self.url("")),
                self.has_token,
                Who::Source,
            )),
            _ => Error::Status {
                url: self.url(path),
                status: status.as_u16(),
            },
        }
    }

    /// A 404 for the repository: it does not exist, the token cannot see
    /// it, or there is no token and it is private.
    fn repo_not_found(&self, repo: &str) -> String {
        if self.has_token {
            format!(
                "repository {repo} not found at {}, or the token cannot see it (404)",
                self.url("")
            )
        } else {
            format!(
                "repository {repo} not found at {} (404), and no token is set: a private \
                 repository needs fetch.token or fetch.token_env",
                self.url("")
            )
        }
    }

    /// The release to take, or `None` when the source is unchanged (304).
    async fn release(&mut self) -> Result<Option<Release>, Error> {
        let repo = format!("/repos/{}/{}", self.owner, self.repo);
        if !self.semver && !self.prerelease {
            let path = format!("{repo}/releases/latest");
            let etag = self.etag.clone();
            let response = self
                .get(&path, "application/vnd.github+json", etag.as_ref())
                .await?;
            if response.status() == StatusCode::NOT_MODIFIED {
                return Ok(None);
            }
            if !response.status().is_success() {
                return Err(self.status_error(response, &path).await);
            }
            self.etag = response.headers().get(ETAG).cloned();
            return self.json(response, &path).await.map(Some);
        }
        let mut releases: Vec<Release> = Vec::new();
        let mut path = format!("{repo}/releases?per_page=100");
        for page in 0..MAX_PAGES {
            let etag = if page == 0 { self.etag.clone() } else { None };
            let response = self
                .get(&path, "application/vnd.github+json", etag.as_ref())
                .await?;
            if page == 0 && response.status() == StatusCode::NOT_MODIFIED {
                return Ok(None);
            }
            if !response.status().is_success() {
                return Err(self.status_error(response, &path).await);
            }
            if page == 0 {
                self.etag = response.headers().get(ETAG).cloned();
            }
            let next = response
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            releases.extend(self.json::<Vec<Release>>(response, &path).await?);
            match next {
                Some(next) => path = next,
                None => break,
            }
        }
        let chosen = choose(
            releases,
            self.prerelease,
            self.semver,
            self.verify.version.as_ref(),
        );
        chosen.map(Some).ok_or_else(|| {
            Error::Other(format!(
                "repository {}/{} has no matching release",
                self.owner, self.repo
            ))
        })
    }

    /// A small asset's bytes (a manifest, checksum file, signature), read
    /// under [`super::SMALL_FILE_LIMIT`].
    async fn small_asset(&self, asset: &Asset, what: &'static str) -> Result<Vec<u8>, Error> {
        let path = format!(
            "/repos/{}/{}/releases/assets/{}",
            self.owner, self.repo, asset.id
        );
        let response = self.get(&path, "application/octet-stream", None).await?;
        if !response.status().is_success() {
            return Err(Error::Status {
                url: self.url(&path),
                status: response.status().as_u16(),
            });
        }
        super::read_bounded(
            body_of(response),
            super::SMALL_FILE_LIMIT,
            self.timeout,
            what,
            &self.url(&path),
        )
        .await
    }

    /// A small asset as text.
    async fn small_text(&self, asset: &Asset, what: &'static str) -> Result<String, Error> {
        String::from_utf8(self.small_asset(asset, what).await?).map_err(|_| Error::Invalid {
            what,
            url: asset.name.clone(),
            reason: "not UTF-8 text".into(),
        })
    }

    /// The candidate a release's manifest asset names.
    async fn named_by_manifest(
        &mut self,
        release: &Release,
        manifest_asset: &Asset,
    ) -> Result<Option<Candidate>, Error> {
        let token = asset_token("github-manifest", release, manifest_asset);
        if self.last_token.as_ref() == Some(&token) {
            return Ok(None);
        }
        let shown = format!(
            "{}/{} {} {}",
            self.owner, self.repo, release.tag_name, manifest_asset.name
        );
        let bytes = self.small_asset(manifest_asset, "manifest").await?;
        let sig_name = format!("{}.minisig", manifest_asset.name);
        let minisig = match release.assets.iter().find(|a| a.name == sig_name) {
            Some(sig) if !self.verify.minisign_keys.is_empty() => {
                Some(self.small_asset(sig, "signature").await?)
            }
            _ => None,
        };
        let manifest = super::load_manifest(&bytes, minisig.as_deref(), &self.verify, &shown)?;
        let names = || {
            release
                .assets
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if manifest.url.contains('/') {
            return Err(Error::Invalid {
                what: "manifest",
                url: shown,
                reason: format!(
                    "url {:?} must name another asset of the same release",
                    manifest.url
                ),
            });
        }
        let Some(artifact) = release.assets.iter().find(|a| a.name == manifest.url) else {
            return Err(Error::Refused(format!(
                "manifest {shown} names the asset {:?}, which release {} does not have; its assets: {}",
                manifest.url,
                release.tag_name,
                names()
            )));
        };
        let assets: Vec<(String, u64)> = release
            .assets
            .iter()
            .map(|a| (a.name.clone(), a.id))
            .collect();
        let (client, api_url, repo, tag) = (
            self.client.clone(),
            self.api_url.clone(),
            format!("{}/{}", self.owner, self.repo),
            release.tag_name.clone(),
        );
        let opener: super::Opener = std::sync::Arc::new(move |name: &str| {
            let Some((_, id)) = assets.iter().find(|(n, _)| n == name) else {
                return super::failing(format!("release {tag} has no asset {name:?}"));
            };
            let path = format!("/repos/{repo}/releases/assets/{id}");
            let (client, api_url) = (client.clone(), api_url.clone());
            Box::pin(super::Lazy::new(async move {
                let response = get_with(&client, &api_url, &path, "application/octet-stream", None)
                    .await
                    .map_err(|e| std::io::Error::other(crate::errors::display_chain(&e)))?;
                if !response.status().is_success() {
                    return Err(std::io::Error::other(format!(
                        "GET {api_url}{path} answered {}",
                        response.status().as_u16()
                    )));
                }
                Ok(body_of(response))
            }))
        });
        let body = opener(&artifact.name);
        let mut info = super::manifest_info(
            manifest,
            super::manifest_token(&bytes),
            artifact.name.clone(),
            format!("github {}/{} {}", self.owner, self.repo, release.tag_name),
        );
        if info.size.is_none() {
            info.size = artifact.size;
        }
        self.last_token = Some(token);
        Ok(Some(Candidate {
            body,
            info,
            opener: Some(opener),
        }))
    }

    async fn check_inner(&mut self) -> Result<Option<Candidate>, Error> {
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return Ok(None);
        }
        self.paused_until = None;
        let Some(release) = self.release().await? else {
            return Ok(None);
        };
        let version = release
            .tag_name
            .strip_prefix('v')
            .unwrap_or(&release.tag_name)
            .to_owned();
        if let Some(manifest) = release
            .assets
            .iter()
            .find(|a| a.name == self.manifest_asset)
            .cloned()
        {
            return self.named_by_manifest(&release, &manifest).await;
        }
        let Some(pattern) = &self.pattern else {
            return Err(Error::Refused(format!(
                "release {} has no {} asset, and no fetch.asset pattern names another; its assets: {}",
                release.tag_name,
                self.manifest_asset,
                release
                    .assets
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let wanted = expand(pattern, &version);
        let names: Vec<&str> = release.assets.iter().map(|a| a.name.as_str()).collect();
        let matching: Vec<&Asset> = release
            .assets
            .iter()
            .filter(|a| glob(&wanted, &a.name) && !super::is_beside_file(&a.name))
            .collect();
        let asset = match matching.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(Error::Refused(format!(
                    "release {} has no asset matching {wanted:?}; its assets: {}",
                    release.tag_name,
                    names.join(", ")
                )))
            }
            several => {
                return Err(Error::Other(format!(
                    "release {} has several assets matching {wanted:?}: {}",
                    release.tag_name,
                    several
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        let token = asset_token("github", &release, &asset);
        if self.last_token.as_ref() == Some(&token) {
            return Ok(None);
        }
        let sha256 = match asset
            .digest
            .as_deref()
            .and_then(|d| d.strip_prefix("sha256:"))
        {
            Some(hex) => Some(
                crate::config::parse_sha256(hex).ok_or_else(|| Error::Invalid {
                    what: "asset digest",
                    url: self.url(&format!(
                        "/repos/{}/{}/releases/assets/{}",
                        self.owner, self.repo, asset.id
                    )),
                    reason: format!("{hex:?} is not a sha256"),
                })?,
            ),
            None => self.checksum_from_assets(&release, &asset).await?,
        };
        let signature = match release
            .assets
            .iter()
            .find(|a| a.name == format!("{}.minisig", asset.name))
        {
            Some(sig) if !self.verify.minisign_keys.is_empty() => {
                Some(self.small_text(sig, "signature").await?)
            }
            _ => None,
        };
        let path = format!(
            "/repos/{}/{}/releases/assets/{}",
            self.owner, self.repo, asset.id
        );
        let response = self.get(&path, "application/octet-stream", None).await?;
        if !response.status().is_success() {
            return Err(self.status_error(response, &path).await);
        }
        let stream = http_body_util::BodyDataStream::new(response.into_body())
            .map_err(|e| std::io::Error::other(crate::errors::display_chain(&e)));
        self.last_token = Some(token.clone());
        Ok(Some(Candidate {
            body: Box::pin(tokio_util::io::StreamReader::new(stream)),
            info: Info {
                version: Some(version),
                sha256,
                size: asset.size,
                signature,
                token,
                name: asset.name.clone(),
                source: format!("github {}/{} {}", self.owner, self.repo, release.tag_name),
                manifest: None,
                host_id: None,
            },
            opener: None,
        }))
    }

    /// The digest from `SHA256SUMS`, `sha256sums.txt` or `<asset>.sha256`.
    async fn checksum_from_assets(
        &self,
        release: &Release,
        asset: &Asset,
    ) -> Result<Option<[u8; 32]>, Error> {
        let own = format!("{}.sha256", asset.name);
        let Some(sums) = release
            .assets
            .iter()
            .find(|a| a.name == own || a.name == "SHA256SUMS" || a.name == "sha256sums.txt")
        else {
            return Ok(None);
        };
        let text = self.small_text(sums, "checksum asset").await?;
        let found = if sums.name == own {
            super::parse_checksum_file(&text)
        } else {
            text.lines().find_map(|line| {
                let mut words = line.split_whitespace();
                let hex = words.next()?;
                let name = words.next()?.trim_start_matches('*');
                (name == asset.name)
                    .then(|| crate::config::parse_sha256(hex))
                    .flatten()
            })
        };
        found.map(Some).ok_or_else(|| Error::Invalid {
            what: "checksum asset",
            url: sums.name.clone(),
            reason: format!("no sha256 for {}", asset.name),
        })
    }
}

impl Fetcher for GithubFetcher {
    fn check(&mut self) -> BoxFuture<'_, Result<Option<Candidate>, Error>> {
        Box::pin(self.check_inner())
    }

    fn retry(&mut self) {
        self.etag = None;
        self.last_token = None;
    }

    fn describe(&self) -> String {
        format!("github {}/{}", self.owner, self.repo)
    }
}
