//! Which URLs baton fetches from, and how it shows them: a leaf, used by the
//! config's validation, the HTTP and GitHub sources and `publish`.

use std::net::IpAddr;

use url::Url;

/// Checks that `url` may be fetched: https, or http to a loopback host, or
/// http anywhere with `allow_http`.
pub fn check_url(url: &str, allow_http: bool) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    allowed(&parsed, allow_http)
}

/// As [`check_url`], for a parsed URL (a redirect's target, say).
pub(crate) fn allowed(url: &Url, allow_http: bool) -> Result<(), String> {
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
}
