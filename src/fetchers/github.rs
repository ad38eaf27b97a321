//! The GitHub releases fetcher (octocrab): the latest release, or the
//! highest semver tag; the asset picked by a name pattern; the checksum from
//! the asset's `digest` or a checksum asset; the signature from
//! `<asset>.minisig`. Polls are conditional (a 304 costs no rate limit); a
//! rate-limit reply pauses polling until the reset it names.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{HeaderMap, HeaderValue, ACCEPT, ETAG, IF_NONE_MATCH};
use http::StatusCode;
use http_body_util::BodyExt;
use serde::Deserialize;

use super::{BoxFuture, Candidate, Error, Fetcher, Info};
use crate::config::{Fetch, Source, Verify};

/// Pages of releases read at most in semver mode (100 per page).
const MAX_PAGES: usize = 10;

type Response = http::Response<http_body_util::combinators::BoxBody<Bytes, octocrab::Error>>;

/// Polls one repository's releases.
pub struct GithubFetcher {
    client: octocrab::Octocrab,
    owner: String,
    repo: String,
    pattern: String,
    /// The API's base URL, for messages.
    api_url: String,
    prerelease: bool,
    semver: bool,
    requirement: Option<semver::VersionReq>,
    want_signature: bool,
    etag: Option<HeaderValue>,
    last_token: Option<String>,
    paused_until: Option<Instant>,
}

#[derive(Debug, Deserialize)]
struct Release {
    id: u64,
    tag_name: String,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    prerelease: bool,
    #[serde(default)]
    assets: Vec<Asset>,
}

#[derive(Debug, Deserialize, Clone)]
struct Asset {
    id: u64,
    name: String,
    size: Option<u64>,
    digest: Option<String>,
    updated_at: Option<String>,
}

impl GithubFetcher {
    /// A fetcher for the `github` source of `fetch`.
    pub fn new(fetch: &Fetch, verify: &Verify) -> Result<GithubFetcher, Error> {
        let Source::Github {
            repo,
            asset,
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
        if let Some(token) = token {
            builder = builder.personal_token(token);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Other(format!("cannot build the GitHub client: {e}")))?;
        Ok(GithubFetcher {
            client,
            owner: owner.to_owned(),
            repo: name.to_owned(),
            pattern: asset.clone(),
            api_url: api_url.trim_end_matches('/').to_owned(),
            prerelease: *prerelease,
            semver: *semver,
            requirement: verify.version.clone(),
            want_signature: !verify.minisign_keys.is_empty(),
            etag: None,
            last_token: None,
            paused_until: None,
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
        self.client
            ._get_with_headers(path, Some(headers))
            .await
            .map_err(|e| Error::Request {
                url: self.url(path),
                source: Box::new(std::io::Error::other(crate::display_chain(&e))),
            })
    }

    async fn text(&self, response: Response, path: &str) -> Result<String, Error> {
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Request {
                url: self.url(path),
                source: Box::new(std::io::Error::other(crate::display_chain(&e))),
            })?;
        String::from_utf8(bytes.to_bytes().to_vec()).map_err(|_| Error::Invalid {
            what: "reply",
            url: self.url(path),
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
        let limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN
                && (header("x-ratelimit-remaining").as_deref() == Some("0")
                    || header("retry-after").is_some()));
        if limited {
            let wait = header("retry-after")
                .and_then(|s| s.parse::<u64>().ok())
                .or_else(|| {
                    let reset = header("x-ratelimit-reset")?.parse::<u64>().ok()?;
                    Some(reset.saturating_sub(crate::release::install::now()))
                })
                .unwrap_or(60)
                .max(1);
            self.paused_until = Some(Instant::now() + Duration::from_secs(wait));
            return Error::Other(format!(
                "GitHub rate limit reached ({} on {}); pausing polls for {wait} s until the reset",
                status.as_u16(),
                self.url(path)
            ));
        }
        let repo = format!("{}/{}", self.owner, self.repo);
        match status {
            StatusCode::UNAUTHORIZED => Error::Other(format!(
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
                    Error::Other(format!("repository {repo} has no published release"))
                } else {
                    Error::Other(format!(
                        "repository {repo} not found at {}, or the token cannot see it (404)",
                        self.url("")
                    ))
                }
            }
            StatusCode::NOT_FOUND if path.contains("/releases") && !path.contains("/assets/") => {
                Error::Other(format!(
                    "repository {repo} not found at {}, or the token cannot see it (404)",
                    self.url("")
                ))
            }
            _ => Error::Status {
                url: self.url(path),
                status: status.as_u16(),
            },
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
        let eligible = releases
            .into_iter()
            .filter(|r| !r.draft && (self.prerelease || !r.prerelease));
        let chosen = if self.semver {
            eligible
                .filter_map(|r| crate::release::verify::parse_version(&r.tag_name).map(|v| (v, r)))
                .filter(|(v, _)| self.prerelease || v.pre.is_empty())
                .filter(|(v, _)| self.requirement.as_ref().is_none_or(|req| req.matches(v)))
                .max_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, r)| r)
        } else {
            // The list is newest first.
            eligible.into_iter().next()
        };
        chosen.map(Some).ok_or_else(|| {
            Error::Other(format!(
                "repository {}/{} has no matching release",
                self.owner, self.repo
            ))
        })
    }

    async fn small_asset(&self, asset: &Asset) -> Result<String, Error> {
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
        self.text(response, &path).await
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
        let wanted = expand(&self.pattern, &version);
        let names: Vec<&str> = release.assets.iter().map(|a| a.name.as_str()).collect();
        let matching: Vec<&Asset> = release
            .assets
            .iter()
            .filter(|a| glob(&wanted, &a.name))
            .collect();
        let asset = match matching.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(Error::Other(format!(
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
        let token = format!(
            "github:{}:{}:{}",
            release.id,
            asset.id,
            asset.updated_at.as_deref().unwrap_or("")
        );
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
            Some(sig) if self.want_signature => Some(self.small_asset(sig).await?),
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
            .map_err(|e| std::io::Error::other(crate::display_chain(&e)));
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
        let text = self.small_asset(sums).await?;
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

/// Replaces `{version}`, `{os}`, `{arch}` and `{target}` in a pattern.
fn expand(pattern: &str, version: &str) -> String {
    pattern
        .replace("{version}", version)
        .replace("{os}", std::env::consts::OS)
        .replace("{arch}", std::env::consts::ARCH)
        .replace("{target}", env!("BATON_TARGET"))
}

/// Matches `name` against a pattern where `*` stands for any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first)
        || !name[first.len()..].ends_with(last)
        || name.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// The `rel="next"` URL of a `Link` header, as a path and query (so the
/// client keeps sending the token to the API host only).
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        if !rel.contains("rel=\"next\"") {
            return None;
        }
        let url = url.trim().trim_start_matches('<').trim_end_matches('>');
        let parsed = url::Url::parse(url).ok()?;
        Some(match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand_and_match() {
        let p = expand("hello-{version}-{os}-*.tar.gz", "1.2.3");
        assert_eq!(p, format!("hello-1.2.3-{}-*.tar.gz", std::env::consts::OS));
        assert!(glob(
            "hello-*.tar.gz",
            "hello-x86_64-unknown-linux-gnu.tar.gz"
        ));
        assert!(!glob("hello-*.tar.gz", "hello-x86_64.zip"));
        assert!(glob("hello", "hello"));
        assert!(!glob("hello", "hello2"));
        assert!(glob("*a*b*", "xaxbx"));
        assert!(!glob("ab*ba", "aba"));
        assert!(expand("{target}", "").contains('-'));
    }

    #[test]
    fn next_links_become_paths() {
        let link = r#"<https://api.github.com/repositories/1/releases?per_page=100&page=2>; rel="next", <https://api.github.com/repositories/1/releases?per_page=100&page=5>; rel="last""#;
        assert_eq!(
            next_link(link).as_deref(),
            Some("/repositories/1/releases?per_page=100&page=2")
        );
        assert_eq!(next_link(r#"<https://x/y?page=1>; rel="prev""#), None);
    }
}
