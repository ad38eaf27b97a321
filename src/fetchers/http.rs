//! The HTTP fetcher: a URL naming a binary, an archive, or a JSON manifest
//! (`{"version","url","sha256","signature"}`, `url` relative to the
//! manifest). Conditional requests make an unchanged poll one 304; a server
//! without validators is still detected, by the manifest's content or by the
//! downloaded bytes' hash. Headers are marked sensitive and never logged.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED,
};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::{BoxFuture, Candidate, Error, Fetcher, Info};
use crate::config::{Fetch, Secret, Source};

/// The largest manifest or checksum file read.
const SMALL_FILE_LIMIT: usize = 1 << 20;

/// Polls one URL.
pub struct HttpFetcher {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    checksum_url: bool,
    allow_http: bool,
    max_redirects: usize,
    /// Validators of the last full answer, for conditional requests.
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    /// The change token of the last candidate offered.
    last_token: Option<String>,
}

/// The JSON manifest.
#[derive(Debug, Deserialize)]
struct Manifest {
    version: Option<String>,
    url: String,
    sha256: Option<String>,
    signature: Option<String>,
}

/// Checks that `url` may be fetched: https, or http to a loopback host, or
/// http anywhere with `allow_http`.
pub fn check_url(url: &str, allow_http: bool) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    allowed(&parsed, allow_http)
}

fn allowed(url: &Url, allow_http: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http || is_loopback(url) => Ok(()),
        "http" => Err(
            "plain http is refused except to loopback; use https or set fetch.allow_http = true"
                .into(),
        ),
        other => Err(format!("the scheme {other:?} is not supported; use https")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The URL without query string or credentials, for messages.
pub(crate) fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

/// The first 64-hex-digit word of a checksum file (`sha256sum` output or a
/// bare digest).
pub(crate) fn parse_checksum_file(text: &str) -> Option<[u8; 32]> {
    text.split_whitespace()
        .next()
        .and_then(crate::config::parse_sha256)
}

impl HttpFetcher {
    /// A fetcher for the `http` source of `fetch`.
    pub fn new(fetch: &Fetch) -> Result<HttpFetcher, Error> {
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
            client,
            url,
            headers: header_map(headers)?,
            checksum_url: *checksum_url,
            allow_http: allow,
            max_redirects: *max_redirects,
            etag: None,
            last_modified: None,
            last_token: None,
        })
    }

    /// GETs `url`, following redirects up to the limit. The configured
    /// headers go only to the configured URL's origin; a redirect may not
    /// downgrade to plain http.
    async fn get(&self, url: &Url, conditional: bool) -> Result<reqwest::Response, Error> {
        let mut url = url.clone();
        let mut hops = 0;
        let response = loop {
            let mut request = self.client.get(url.clone());
            if url.origin() == self.url.origin() {
                request = request.headers(self.headers.clone());
            }
            if conditional {
                if let Some(etag) = &self.etag {
                    request = request.header(IF_NONE_MATCH, etag);
                }
                if let Some(lm) = &self.last_modified {
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

    async fn small_body(
        &self,
        response: reqwest::Response,
        url: &Url,
        what: &'static str,
    ) -> Result<String, Error> {
        let invalid = |reason: String| Error::Invalid {
            what,
            url: redact(url),
            reason,
        };
        if response
            .content_length()
            .is_some_and(|n| n > SMALL_FILE_LIMIT as u64)
        {
            return Err(invalid(format!("larger than {SMALL_FILE_LIMIT} bytes")));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.try_next().await.map_err(|e| Error::Request {
            url: redact(url),
            source: Box::new(e.without_url()),
        })? {
            body.extend_from_slice(&chunk);
            if body.len() > SMALL_FILE_LIMIT {
                return Err(invalid(format!("larger than {SMALL_FILE_LIMIT} bytes")));
            }
        }
        String::from_utf8(body).map_err(|_| invalid("not UTF-8 text".into()))
    }

    async fn checksum_for(&self, artifact: &Url) -> Result<[u8; 32], Error> {
        let mut url = artifact.clone();
        url.set_path(&format!("{}.sha256", artifact.path()));
        let response = self.get(&url, false).await?;
        let text = self.small_body(response, &url, "checksum file").await?;
        parse_checksum_file(&text).ok_or_else(|| Error::Invalid {
            what: "checksum file",
            url: redact(&url),
            reason: "expected a sha256 of 64 hex digits first".into(),
        })
    }

    fn remember_validators(&mut self, response: &reqwest::Response) {
        self.etag = response.headers().get(ETAG).cloned();
        self.last_modified = response.headers().get(LAST_MODIFIED).cloned();
    }

    async fn check_inner(&mut self) -> Result<Option<Candidate>, Error> {
        let url = self.url.clone();
        let response = self.get(&url, true).await?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        self.remember_validators(&response);
        let is_manifest = url.path().ends_with(".json")
            || response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
        if is_manifest {
            let text = self.small_body(response, &url, "manifest").await?;
            let manifest: Manifest = serde_json::from_str(&text).map_err(|e| Error::Invalid {
                what: "manifest",
                url: redact(&url),
                reason: e.to_string(),
            })?;
            let token = format!(
                "manifest:{}:{}:{}",
                manifest.version.as_deref().unwrap_or(""),
                manifest.sha256.as_deref().unwrap_or(""),
                manifest.url
            );
            if self.last_token.as_ref() == Some(&token) {
                return Ok(None);
            }
            let artifact = url.join(&manifest.url).map_err(|e| Error::Invalid {
                what: "manifest",
                url: redact(&url),
                reason: format!("bad url {:?}: {e}", manifest.url),
            })?;
            allowed(&artifact, self.allow_http).map_err(|reason| Error::Invalid {
                what: "manifest",
                url: redact(&url),
                reason: format!("artifact url refused: {reason}"),
            })?;
            let sha256 = match &manifest.sha256 {
                Some(hex) => {
                    Some(
                        crate::config::parse_sha256(hex).ok_or_else(|| Error::Invalid {
                            what: "manifest",
                            url: redact(&url),
                            reason: format!("sha256 {hex:?} is not 64 hex digits"),
                        })?,
                    )
                }
                None if self.checksum_url => Some(self.checksum_for(&artifact).await?),
                None => None,
            };
            let response = self.get(&artifact, false).await?;
            self.last_token = Some(token.clone());
            return Ok(Some(candidate(
                response,
                &artifact,
                manifest.version,
                sha256,
                manifest.signature,
                token,
            )));
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
            Some(self.checksum_for(&url).await?)
        } else {
            None
        };
        self.last_token = Some(token.clone());
        Ok(Some(candidate(response, &url, None, sha256, None, token)))
    }
}

fn candidate(
    response: reqwest::Response,
    url: &Url,
    version: Option<String>,
    sha256: Option<[u8; 32]>,
    signature: Option<String>,
    token: String,
) -> Candidate {
    let size = response.content_length();
    let name = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or_default()
        .to_owned();
    let stream = response
        .bytes_stream()
        .map_err(|e| std::io::Error::other(e.without_url()));
    Candidate {
        body: Box::pin(tokio_util::io::StreamReader::new(stream)),
        info: Info {
            version,
            sha256,
            size,
            signature,
            token,
            name,
            source: format!("http {}", redact(url)),
        },
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
        format!("http {}", redact(&self.url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_url("https://example.com/x", false).is_ok());
        assert!(check_url("http://127.0.0.1:8000/x", false).is_ok());
        assert!(check_url("http://[::1]:8000/x", false).is_ok());
        assert!(check_url("http://localhost/x", false).is_ok());
        assert!(check_url("http://example.com/x", false).is_err());
        assert!(check_url("http://example.com/x", true).is_ok());
        assert!(check_url("ftp://example.com/x", true).is_err());
    }

    #[test]
    fn redaction_drops_query_and_credentials() {
        let url = Url::parse("https://user:pw@example.com/a/b?X-Amz-Signature=secret").unwrap();
        assert_eq!(redact(&url), "https://example.com/a/b");
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
}
