//! The HTTP fetcher: a URL naming a binary, an archive, or a JSON manifest
//! (see [`crate::manifest`]; `url` relative to the manifest, its minisign
//! signature at `<url>.minisig` when a key is configured). Conditional
//! requests make an unchanged poll one 304; a server without validators is
//! still detected, by the manifest's digest or by the downloaded bytes'
//! hash. A manifest's artifact is requested only when the pipeline reads
//! it, so a host outside a release's rollout downloads nothing. Headers are
//! marked sensitive and never logged.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::TryStreamExt;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED,
};
use reqwest::{StatusCode, Url};

use super::{BoxFuture, Candidate, Error, Fetcher, Info, SMALL_FILE_LIMIT};
use crate::config::{Fetch, Secret, Source, Verify};
use crate::url::{allowed, redact};

/// Polls one URL.
pub struct HttpFetcher {
    conn: Arc<Conn>,
    checksum_url: bool,
    verify: Verify,
    /// Validators of the last full answer, for conditional requests.
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    /// The change token of the last candidate offered.
    last_token: Option<String>,
}

/// What every request needs; shared with lazily opened artifact bodies.
struct Conn {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    allow_http: bool,
    max_redirects: usize,
    /// `fetch.timeout`: the deadline for each whole small body.
    timeout: std::time::Duration,
}

/// Validators for a conditional request.
type Validators<'a> = (&'a Option<HeaderValue>, &'a Option<HeaderValue>);

impl HttpFetcher {
    /// A fetcher for the `http` source of `fetch`.
    pub fn new(fetch: &Fetch, verify: &Verify) -> Result<HttpFetcher, Error> {
        let Source::Http {
            url,
            headers,
            allow_http,
            checksum_url,
            max_redirects,
        } = &fetch.source
        else {
            return Err(Error::Other("not an http source".into()));
        };
        let url = Url::parse(url).map_err(|e| Error::Other(format!("invalid fetch.url: {e}")))?;
        let allow = *allow_http;
        let client = reqwest::Client::builder()
            // Redirects are followed by hand (see `get`), so that configured
            // headers never leave the configured origin.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(fetch.timeout)
            .read_timeout(fetch.timeout)
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Other(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpFetcher {
            conn: Arc::new(Conn {
                client,
                url,
                headers: header_map(headers)?,
                allow_http: allow,
                max_redirects: *max_redirects,
                timeout: fetch.timeout,
            }),
            checksum_url: *checksum_url,
            verify: verify.clone(),
            etag: None,
            last_modified: None,
            last_token: None,
        })
    }

    fn remember_validators(&mut self, response: &reqwest::Response) {
        self.etag = response.headers().get(ETAG).cloned();
        self.last_modified = response.headers().get(LAST_MODIFIED).cloned();
    }
}

impl Conn {
    /// GETs `url`, following redirects up to the limit. The configured
    /// headers go only to the configured URL's origin; a redirect may not
    /// downgrade to plain http. With `validators` the request is
    /// conditional and a 304 is returned as it is.
    async fn get(
        &self,
        url: &Url,
        validators: Option<Validators<'_>>,
    ) -> Result<reqwest::Response, Error> {
        let conditional = validators.is_some();
        let mut url = url.clone();
        let mut hops = 0;
        let response = loop {
            let mut request = self.client.get(url.clone());
            if url.origin() == self.url.origin() {
                request = request.headers(self.headers.clone());
            }
            if let Some((etag, last_modified)) = validators {
                if let Some(etag) = etag {
                    request = request.header(IF_NONE_MATCH, etag);
                }
                if let Some(lm) = last_modified {
                    request = request.header(IF_MODIFIED_SINCE, lm);
                }
            }
            let response = request.send().await.map_err(|e| Error::Request {
                url: redact(&url),
                source: Box::new(e.without_url()),
            })?;
            if !response.status().is_redirection() || response.status() == StatusCode::NOT_MODIFIED
            {
                break response;
            }
            let refused = |reason: String| Error::Request {
                url: redact(&url),
                source: reason.into(),
            };
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| {
                    refused(format!("{} without a Location header", response.status()))
                })?;
            let next = url
                .join(location)
                .map_err(|e| refused(format!("bad redirect Location: {e}")))?;
            hops += 1;
            if hops > self.max_redirects {
                return Err(refused(format!(
                    "too many redirects (more than {})",
                    self.max_redirects
                )));
            }
            allowed(&next, self.allow_http)
                .map_err(|reason| refused(format!("redirect refused: {reason}")))?;
            url = next;
        };
        let url = &url;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED && conditional {
            return Ok(response);
        }
        if !status.is_success() {
            return Err(Error::Status {
                url: redact(url),
                status: status.as_u16(),
            });
        }
        Ok(response)
    }

    /// Reads a small body (manifest, checksum file, signature) under
    /// [`SMALL_FILE_LIMIT`].
    async fn small_body(
        &self,
        response: reqwest::Response,
        url: &Url,
        what: &'static str,
    ) -> Result<Vec<u8>, Error> {
        if response
            .content_length()
            .is_some_and(|n| n > SMALL_FILE_LIMIT as u64)
        {
            return Err(super::too_large(what, &redact(url), SMALL_FILE_LIMIT));
        }
        let stream = response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(crate::errors::display_chain(&e.without_url())));
        let body = tokio_util::io::StreamReader::new(stream);
        super::read_bounded(body, SMALL_FILE_LIMIT, self.timeout, what, &redact(url)).await
    }

    /// `<url><suffix>` beside `url`.
    fn beside(url: &Url, suffix: &str) -> Url {
        let mut beside = url.clone();
        beside.set_path(&format!("{}{suffix}", url.path()));
        beside
    }

    async fn checksum_for(&self, artifact: &Url) -> Result<[u8; 32], Error> {
        let url = Conn::beside(artifact, ".sha256");
        let response = self.get(&url, None).await?;
        let text = self.small_body(response, &url, "checksum file").await?;
        std::str::from_utf8(&text)
            .ok()
            .and_then(super::parse_checksum_file)
            .ok_or_else(|| Error::Invalid {
                what: "checksum file",
                url: redact(&url),
                reason: "expected a sha256 of 64 hex digits first".into(),
            })
    }

    /// The manifest's detached signature, `None` when the server has none
    /// (404); any other failure is an error, so a signature that cannot be
    /// fetched is never taken for an absent one.
    async fn minisig_for(&self, manifest: &Url) -> Result<Option<Vec<u8>>, Error> {
        let url = Conn::beside(manifest, ".minisig");
        match self.get(&url, None).await {
            Ok(response) => Ok(Some(self.small_body(response, &url, "signature").await?)),
            Err(Error::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl HttpFetcher {
    async fn check_inner(&mut self) -> Result<Option<Candidate>, Error> {
        let conn = self.conn.clone();
        let url = conn.url.clone();
        let response = conn
            .get(&url, Some((&self.etag, &self.last_modified)))
            .await?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        self.remember_validators(&response);
        let is_manifest = super::is_manifest(
            url.path(),
            response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        if is_manifest {
            let bytes = conn.small_body(response, &url, "manifest").await?;
            let token = super::manifest_token(&bytes);
            if self.last_token.as_ref() == Some(&token) {
                return Ok(None);
            }
            let minisig = if self.verify.minisign_keys.is_empty() {
                None
            } else {
                conn.minisig_for(&url).await?
            };
            let manifest =
                super::load_manifest(&bytes, minisig.as_deref(), &self.verify, &redact(&url))?;
            let invalid = |reason: String| Error::Invalid {
                what: "manifest",
                url: redact(&url),
                reason,
            };
            let artifact = resolve(&url, &manifest.url, conn.allow_http)
                .map_err(|reason| invalid(format!("artifact url refused: {reason}")))?;
            let mut manifest = manifest;
            if manifest.sha256.is_none() && self.checksum_url {
                manifest.sha256 = Some(conn.checksum_for(&artifact).await?);
            }
            self.last_token = Some(token.clone());
            let name = file_name(&artifact);
            let source = format!("http {}", redact(&artifact));
            let opener: super::Opener = std::sync::Arc::new(move |relative: &str| {
                let target = match resolve(&url, relative, conn.allow_http) {
                    Ok(target) => target,
                    Err(reason) => return super::failing(reason),
                };
                let conn = conn.clone();
                Box::pin(super::Lazy::new(async move {
                    let response = conn
                        .get(&target, None)
                        .await
                        .map_err(|e| std::io::Error::other(crate::errors::display_chain(&e)))?;
                    Ok(body_of(response))
                }))
            });
            return Ok(Some(Candidate {
                body: opener(&manifest.url),
                info: super::manifest_info(manifest, token, name, source),
                opener: Some(opener),
            }));
        }
        let token = [
            response.headers().get(ETAG),
            response.headers().get(LAST_MODIFIED),
        ]
        .into_iter()
        .flatten()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(" ");
        if !token.is_empty() && self.last_token.as_ref() == Some(&token) {
            return Ok(None);
        }
        let sha256 = if self.checksum_url {
            Some(conn.checksum_for(&url).await?)
        } else {
            None
        };
        self.last_token = Some(token.clone());
        Ok(Some(candidate(response, &url, sha256, token)))
    }
}

/// `relative` resolved against the manifest's `url`, if baton may fetch it.
fn resolve(url: &Url, relative: &str, allow_http: bool) -> Result<Url, String> {
    let target = url
        .join(relative)
        .map_err(|e| format!("bad url {relative:?}: {e}"))?;
    allowed(&target, allow_http)?;
    Ok(target)
}

fn file_name(url: &Url) -> String {
    url.path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or_default()
        .to_owned()
}

fn body_of(response: reqwest::Response) -> super::Body {
    let stream = response
        .bytes_stream()
        .map_err(|e| std::io::Error::other(e.without_url()));
    Box::pin(tokio_util::io::StreamReader::new(stream))
}

fn candidate(
    response: reqwest::Response,
    url: &Url,
    sha256: Option<[u8; 32]>,
    token: String,
) -> Candidate {
    let size = response.content_length();
    Candidate {
        body: body_of(response),
        info: Info {
            version: None,
            sha256,
            size,
            signature: None,
            token,
            name: file_name(url),
            source: format!("http {}", redact(url)),
            manifest: None,
            host_id: None,
        },
        opener: None,
    }
}

fn header_map(headers: &BTreeMap<String, Secret>) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| Error::Other(format!("invalid header name {name:?}")))?;
        let mut value = HeaderValue::try_from(value.expose())
            .map_err(|_| Error::Other(format!("invalid value for header {name}")))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

impl Fetcher for HttpFetcher {
    fn check(&mut self) -> BoxFuture<'_, Result<Option<Candidate>, Error>> {
        Box::pin(self.check_inner())
    }

    fn retry(&mut self) {
        self.etag = None;
        self.last_modified = None;
        self.last_token = None;
    }

    fn describe(&self) -> String {
        format!("http {}", redact(&self.conn.url))
    }
}
