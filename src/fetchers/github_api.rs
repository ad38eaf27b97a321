//! The pure parts of GitHub's REST API as the github source reads it: the
//! release and asset objects, which release to take, the `Link` header's
//! next page, and how long a rate-limit reply pauses polls. None of it
//! needs the octocrab client, so the fuzz targets reach it without the
//! `github` feature.

use serde::Deserialize;

/// A release, as `GET /repos/{owner}/{repo}/releases` lists it.
#[derive(Debug, Deserialize, Clone)]
pub struct Release {
    /// The release's id.
    pub id: u64,
    /// Its tag, such as `v1.2.3`.
    pub tag_name: String,
    #[serde(default)]
    /// A draft, never taken.
    pub draft: bool,
    #[serde(default)]
    /// Marked a prerelease.
    pub prerelease: bool,
    #[serde(default)]
    /// Its files.
    pub assets: Vec<Asset>,
}

/// A release asset.
#[derive(Debug, Deserialize, Clone)]
pub struct Asset {
    /// The asset's id, for its download URL.
    pub id: u64,
    /// Its file name.
    pub name: String,
    /// Its size in bytes.
    pub size: Option<u64>,
    /// `sha256:<hex>`, when GitHub computed it.
    pub digest: Option<String>,
    /// When it last changed (RFC 3339).
    pub updated_at: Option<String>,
}

/// The release to take from `releases` (newest first, as the API lists
/// them): no drafts, no prereleases unless `prerelease`; with `semver`, the
/// highest tag that parses as a version (and matches `version`, when set),
/// else the newest.
pub fn choose(
    releases: Vec<Release>,
    prerelease: bool,
    semver: bool,
    version: Option<&semver::VersionReq>,
) -> Option<Release> {
    let eligible = releases
        .into_iter()
        .filter(|r| !r.draft && (prerelease || !r.prerelease));
    if semver {
        eligible
            .filter_map(|r| crate::version::parse_version(&r.tag_name).map(|v| (v, r)))
            .filter(|(v, _)| prerelease || v.pre.is_empty())
            .filter(|(v, _)| version.is_none_or(|req| req.matches(v)))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, r)| r)
    } else {
        // The list is newest first.
        eligible.into_iter().next()
    }
}

/// Whether a reply is GitHub's rate limit: a 429, or a 403 whose
/// `x-ratelimit-remaining` is 0 or that carries a `retry-after`.
pub fn is_rate_limited(status: u16, remaining: Option<&str>, retry_after: Option<&str>) -> bool {
    status == 429 || (status == 403 && (remaining == Some("0") || retry_after.is_some()))
}

/// The longest pause a rate-limit reply can impose: GitHub's windows are an
/// hour, and a server naming more (or a number that overflows a clock) is
/// not believed.
pub const MAX_RATE_LIMIT_PAUSE: u64 = 3600;

/// Seconds to pause polls after a rate-limit reply: its `Retry-After`, else
/// until its `X-RateLimit-Reset` (epoch seconds), else a minute; at least
/// one second and at most [`MAX_RATE_LIMIT_PAUSE`].
pub fn rate_limit_wait(retry_after: Option<&str>, reset: Option<&str>, now: u64) -> u64 {
    retry_after
        .and_then(|s| s.trim().parse::<u64>().ok())
        .or_else(|| {
            let reset = reset?.trim().parse::<u64>().ok()?;
            Some(reset.saturating_sub(now))
        })
        .unwrap_or(60)
        .clamp(1, MAX_RATE_LIMIT_PAUSE)
}

/// Replaces `{version}`, `{os}`, `{arch}` and `{target}` in a pattern.
pub fn expand(pattern: &str, version: &str) -> String {
    pattern
        .replace("{version}", version)
        .replace("{os}", std::env::consts::OS)
        .replace("{arch}", std::env::consts::ARCH)
        .replace("{target}", env!("BATON_TARGET"))
}

/// Matches `name` against a pattern where `*` stands for any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
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
pub fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, rel) = part.split_once(';')?;
        if !rel.contains("rel=\"next\"") {
            return None;
        }
        let url = url.trim().trim_start_matches('<').trim_end_matches('>');
        let parsed = url::Url::parse(url).ok()?;
        // Only a web URL has a path to ask the API for (`ps:w…` has none).
        if !matches!(parsed.scheme(), "http" | "https") {
            return None;
        }
        Some(match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `github` fuzz target: a `Link` URL without a web scheme
    /// gave a "path" that is not one.
    #[test]
    fn fuzz_github_a_link_without_a_web_scheme_is_no_next_page() {
        assert_eq!(
            next_link("<ps:w\0thub.com/repos/o/r/releases?page=2>; rel=\"next\""),
            None
        );
        assert_eq!(
            next_link("<https://api.example/repos/o/r/releases?page=2>; rel=\"next\""),
            Some("/repos/o/r/releases?page=2".into())
        );
    }

    #[test]
    fn rate_limit_waits_are_bounded() {
        let huge = "18446744073709551615";
        assert_eq!(rate_limit_wait(Some(huge), None, 0), MAX_RATE_LIMIT_PAUSE);
        assert_eq!(rate_limit_wait(None, Some(huge), 5), MAX_RATE_LIMIT_PAUSE);
        assert_eq!(rate_limit_wait(Some("0"), None, 0), 1);
        assert_eq!(rate_limit_wait(Some(" 30 "), None, 0), 30);
        assert_eq!(rate_limit_wait(None, Some("1000"), 900), 100);
        assert_eq!(
            rate_limit_wait(None, Some("10"), 900),
            1,
            "a reset in the past"
        );
        assert_eq!(rate_limit_wait(Some("soon"), None, 0), 60);
        assert_eq!(rate_limit_wait(None, None, 0), 60);
    }

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
    fn releases_are_chosen_by_kind_and_version() {
        let list: Vec<Release> = serde_json::from_str(
            r#"[{"id": 4, "tag_name": "v3.0.0", "draft": true},
                {"id": 3, "tag_name": "v2.1.0-rc.1", "prerelease": true},
                {"id": 2, "tag_name": "nightly"},
                {"id": 1, "tag_name": "v2.0.0", "assets": [{"id": 9, "name": "a"}]}]"#,
        )
        .unwrap();
        let take = |list: &[Release], pre, semver, req: Option<&str>| {
            let req = req.map(|r| semver::VersionReq::parse(r).unwrap());
            choose(list.to_vec(), pre, semver, req.as_ref()).map(|r| r.id)
        };
        assert_eq!(
            take(&list, false, false, None),
            Some(2),
            "the newest published"
        );
        assert_eq!(take(&list, true, false, None), Some(3));
        assert_eq!(
            take(&list, false, true, None),
            Some(1),
            "the highest version"
        );
        assert_eq!(take(&list, true, true, None), Some(3));
        assert_eq!(take(&list, true, true, Some("<2.1.0-rc.0")), Some(1));
        assert_eq!(take(&list, false, true, Some(">=5")), None);
        assert_eq!(list[3].assets[0].name, "a");
    }

    #[test]
    fn rate_limits_are_recognised() {
        assert!(is_rate_limited(429, None, None));
        assert!(is_rate_limited(403, Some("0"), None));
        assert!(is_rate_limited(403, None, Some("5")));
        assert!(!is_rate_limited(403, Some("12"), None), "a plain 403");
        assert!(!is_rate_limited(404, Some("0"), None));
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
