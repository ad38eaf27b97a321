//! GitHub's error replies and octocrab's errors as one line a person can
//! act on: what went wrong and what to do. A missing token, a token GitHub
//! rejects (401), access denied (403), no such repository, release or asset
//! (404), a rate limit (403 or 429 with rate-limit headers) and an API that
//! cannot be reached; anything else is GitHub's own message on one line,
//! never a `Debug` dump nor octocrab's multi-line display.
//!
//! The github source ([`crate::fetchers::github`]) and `baton publish --to
//! github:` (the publish module's GitHub target) both use it; each says how
//! its token is set ([`Who`]).

/// Who is asking, for the advice: how the token is set and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The github source: `fetch.token` or `fetch.token_env`, read access.
    Source,
    /// `baton publish`: `$GITHUB_TOKEN`, write access to releases.
    Publisher,
}

impl Who {
    fn token(self) -> &'static str {
        match self {
            Who::Source => "fetch.token or fetch.token_env",
            Who::Publisher => "$GITHUB_TOKEN",
        }
    }

    fn needs(self) -> &'static str {
        match self {
            Who::Source => "read access to the repository's contents (releases)",
            Who::Publisher => {
                "write access to the repository's contents (a fine-grained token's \
                 \"Contents: read and write\", a classic token's `repo` scope, or \
                 `permissions: contents: write` in a workflow)"
            }
        }
    }

    fn api_url(self) -> &'static str {
        match self {
            Who::Source => "fetch.api_url",
            Who::Publisher => "--api-url",
        }
    }
}

/// An API reply with an error status, as far as the advice needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// GitHub's `message`, when the body had one.
    pub message: String,
    /// `x-ratelimit-remaining`.
    pub remaining: Option<String>,
    /// `retry-after` (seconds).
    pub retry_after: Option<String>,
    /// `x-ratelimit-reset` (Unix seconds).
    pub reset: Option<u64>,
}

impl Reply {
    /// Whether GitHub says a rate limit was reached: 429, or 403 with no
    /// requests remaining or a `retry-after` (a secondary limit).
    pub fn rate_limited(&self) -> bool {
        crate::fetchers::github_api::is_rate_limited(
            self.status,
            self.remaining.as_deref(),
            self.retry_after.as_deref(),
        )
    }
}

/// GitHub's message on one line, at most 200 characters.
fn one_line(message: &str) -> String {
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = line.trim_end_matches('.');
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// Why a reply with an error status failed and what to do, for `subject`
/// (`repository acme/hello`, `release v1.2.3 of acme/hello`), with or
/// without a token.
pub fn explain_reply(reply: &Reply, subject: &str, has_token: bool, who: Who) -> String {
    let status = reply.status;
    let said = if reply.message.is_empty() {
        String::new()
    } else {
        format!(" {}", one_line(&reply.message))
    };
    let token = who.token();
    if reply.rate_limited() {
        let wait = crate::fetchers::github_api::rate_limit_wait(
            reply.retry_after.as_deref(),
            reply.reset.map(|r| r.to_string()).as_deref(),
            crate::time::unix_now(),
        );
        let hint = if has_token {
            String::new()
        } else {
            format!("; a token ({token}) raises the limit")
        };
        return format!(
            "GitHub rate limit reached ({status}) for {subject}; try again in {wait} s{hint}"
        );
    }
    match status {
        401 if !has_token => {
            format!("GitHub wants a token (401{said}) for {subject}; set {token}")
        }
        401 => format!(
            "GitHub rejected the token (401{said}) for {subject}; {token} must hold a valid, \
             unexpired token"
        ),
        403 if !has_token => format!(
            "access denied (403{said}) to {subject} without a token; set {token} to a token \
             with {}",
            who.needs()
        ),
        403 => format!(
            "access denied (403{said}) to {subject}; the token in {token} needs {}",
            who.needs()
        ),
        404 if !has_token => format!(
            "{subject} not found (404), and no token is set: a private repository needs {token}"
        ),
        404 => format!(
            "{subject} not found (404): check its name, or the token in {token} cannot see it"
        ),
        _ => format!("GitHub answered {status}{said} for {subject}"),
    }
}

/// The innermost cause of a transport error (`Connection refused (os
/// error 111)`, `dns error: …`, `request timed out`), each cause once.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    let text = last.to_string();
    one_line(&text)
}

/// Why a request that got no reply failed and what to do.
pub fn explain_unreachable(
    cause: &(dyn std::error::Error + 'static),
    api_url: &str,
    who: Who,
) -> String {
    format!(
        "cannot reach the GitHub API at {api_url}: {}; check {} and the network",
        innermost(cause),
        who.api_url()
    )
}

/// Explains an octocrab error for `subject`: an error reply as
/// [`explain_reply`], a request that got none as [`explain_unreachable`],
/// anything else as its causes on one line.
pub fn explain(
    err: &octocrab::Error,
    subject: &str,
    api_url: &str,
    has_token: bool,
    who: Who,
) -> String {
    match err {
        octocrab::Error::GitHub { source, .. } => {
            let header = |name: &str| {
                source
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let reply = Reply {
                status: source.status_code.as_u16(),
                message: source.message.clone(),
                remaining: header("x-ratelimit-remaining"),
                retry_after: header("retry-after"),
                reset: source
                    .rate_limit_reset
                    .or_else(|| header("x-ratelimit-reset").and_then(|r| r.parse().ok())),
            };
            explain_reply(&reply, subject, has_token, who)
        }
        octocrab::Error::Hyper { source, .. } => explain_unreachable(source, api_url, who),
        octocrab::Error::Service { source, .. } => {
            explain_unreachable(source.as_ref(), api_url, who)
        }
        other => one_line(&crate::errors::display_chain(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, message: &str) -> Reply {
        Reply {
            status,
            message: message.to_owned(),
            ..Reply::default()
        }
    }

    #[test]
    fn a_rejected_token_says_which_setting_holds_it() {
        let r = reply(401, "Bad credentials");
        assert_eq!(
            explain_reply(&r, "repository acme/hello", true, Who::Publisher),
            "GitHub rejected the token (401 Bad credentials) for repository acme/hello; \
             $GITHUB_TOKEN must hold a valid, unexpired token"
        );
        assert_eq!(
            explain_reply(&r, "repository acme/hello", false, Who::Source),
            "GitHub wants a token (401 Bad credentials) for repository acme/hello; set \
             fetch.token or fetch.token_env"
        );
    }

    #[test]
    fn access_denied_says_what_the_token_needs() {
        let r = reply(403, "Resource not accessible by integration");
        let said = explain_reply(&r, "release v1 of acme/hello", true, Who::Publisher);
        assert!(
            said.starts_with(
                "access denied (403 Resource not accessible by integration) to release v1 of \
                 acme/hello; the token in $GITHUB_TOKEN needs write access"
            ),
            "{said}"
        );
        assert!(said.contains("contents: write"), "{said}");
        let said = explain_reply(&r, "repository acme/hello", false, Who::Source);
        assert!(said.contains("without a token; set fetch.token"), "{said}");
    }

    #[test]
    fn not_found_without_a_token_names_the_missing_token() {
        let r = reply(404, "Not Found");
        assert_eq!(
            explain_reply(&r, "repository acme/hello", false, Who::Publisher),
            "repository acme/hello not found (404), and no token is set: a private repository \
             needs $GITHUB_TOKEN"
        );
        assert_eq!(
            explain_reply(&r, "repository acme/hello", true, Who::Source),
            "repository acme/hello not found (404): check its name, or the token in \
             fetch.token or fetch.token_env cannot see it"
        );
    }

    #[test]
    fn rate_limits_say_when_to_try_again() {
        let r = Reply {
            status: 403,
            message: "API rate limit exceeded for 127.0.0.1. (But here's the good news: …)".into(),
            remaining: Some("0".into()),
            reset: Some(crate::time::unix_now() + 60),
            ..Reply::default()
        };
        let said = explain_reply(&r, "repository acme/hello", false, Who::Publisher);
        assert!(
            said.starts_with(
                "GitHub rate limit reached (403) for repository acme/hello; try again in"
            ),
            "{said}"
        );
        assert!(
            said.ends_with("; a token ($GITHUB_TOKEN) raises the limit"),
            "{said}"
        );
        let r = Reply {
            status: 429,
            retry_after: Some("7".into()),
            ..Reply::default()
        };
        assert_eq!(
            explain_reply(&r, "repository acme/hello", true, Who::Source),
            "GitHub rate limit reached (429) for repository acme/hello; try again in 7 s"
        );
        // A 403 with requests left is access denied, not a rate limit.
        let r = Reply {
            status: 403,
            remaining: Some("4999".into()),
            ..Reply::default()
        };
        assert!(explain_reply(&r, "x", true, Who::Source).starts_with("access denied (403)"));
    }

    #[test]
    fn other_statuses_keep_githubs_message_on_one_line() {
        let r = reply(
            422,
            "Validation Failed\nDocumentation URL: https://docs.github.com/rest",
        );
        let said = explain_reply(&r, "release v1 of acme/hello", true, Who::Publisher);
        assert_eq!(
            said,
            "GitHub answered 422 Validation Failed Documentation URL: \
             https://docs.github.com/rest for release v1 of acme/hello"
        );
        assert!(!said.contains('\n'));
    }

    #[test]
    fn an_unreachable_api_names_the_innermost_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert_eq!(
            explain_unreachable(&err, "http://127.0.0.1:9", Who::Publisher),
            "cannot reach the GitHub API at http://127.0.0.1:9: Connection refused (os error \
             111); check --api-url and the network"
        );
    }
}
