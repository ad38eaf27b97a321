//! `[releases]`: the releases directory, the trial of a new release and its
//! health check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{command_path, duration, parse_duration, Error, Listen, ListenAddr, Program};

/// `[releases] trial_attempts` when unset.
pub const TRIAL_ATTEMPTS_DEFAULT: u32 = 3;

/// The releases directory: `<id>/` per release and the `current` symlink.
#[derive(Debug, Clone)]
pub struct Releases {
    /// The directory.
    pub dir: PathBuf,
    /// The executable's name in a release and in archives.
    pub binary: String,
    /// How many releases to keep (besides `current` and the previous one).
    pub keep: usize,
    /// How long a new release's worker must stay ready, with no unexpected
    /// exit, before `current` is swapped to it (`"0s"`: at ready).
    pub settle: Duration,
    /// A health check the worker of a release on trial must pass.
    pub health: Option<Health>,
    /// How many times the trial of a release may be begun when the
    /// master's own death keeps interrupting it and there is no `current`
    /// to go back to (a fresh host's first release); after the last one
    /// the release is quarantined (default 3).
    pub trial_attempts: u32,
}

/// A release's health check: `[releases] health` and its `health_*` keys.
/// During a trial it runs from the moment the trial worker serves alone
/// until `settle` ends; `failures` failures in a row fail the trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// What is checked.
    pub check: HealthCheck,
    /// Time between checks (`health_interval`, default 1 s).
    pub interval: Duration,
    /// How long one check may take (`health_timeout`, default 2 s).
    pub timeout: Duration,
    /// Consecutive failures that end a trial (`health_failures`, default 3).
    pub failures: u32,
    /// Also check after promotion, reporting only (`health_after`).
    pub after: bool,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// `http:/path` or `http:NAME:/path`: `GET path` on the first TCP socket
    /// (or the one named) answers 2xx.
    Http {
        /// The `listen` name of the socket, when given.
        socket: Option<String>,
        /// The request path.
        path: String,
    },
    /// `exec:CMD ARGS…`: the command exits 0.
    Exec {
        /// The executable (a path relative to the config file, or a name
        /// looked up in `PATH`).
        command: PathBuf,
        /// Its arguments (split on whitespace).
        args: Vec<String>,
    },
}

impl HealthCheck {
    fn parse(text: &str, base: &Path) -> Result<HealthCheck, String> {
        if let Some(rest) = text.strip_prefix("http:") {
            let (socket, path) = match rest.split_once(":/") {
                Some((name, path)) if !name.is_empty() && !name.contains('/') => {
                    (Some(name.to_owned()), format!("/{path}"))
                }
                _ => (None, rest.to_owned()),
            };
            if !path.starts_with('/') {
                return Err("expected http:/PATH or http:NAME:/PATH".to_owned());
            }
            Ok(HealthCheck::Http { socket, path })
        } else if let Some(rest) = text.strip_prefix("exec:") {
            let mut words = rest.split_whitespace();
            let command = words
                .next()
                .ok_or_else(|| "exec: needs a command".to_owned())?;
            Ok(HealthCheck::Exec {
                command: command_path(base, command),
                args: words.map(str::to_owned).collect(),
            })
        } else {
            Err("expected \"http:/PATH\", \"http:NAME:/PATH\" or \"exec:CMD ARGS…\"".to_owned())
        }
    }
}

/// `[releases]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReleases {
    dir: Option<String>,
    binary: String,
    keep: Option<usize>,
    settle: Option<String>,
    health: Option<String>,
    health_interval: Option<String>,
    health_timeout: Option<String>,
    health_failures: Option<u32>,
    health_after: Option<bool>,
    trial_attempts: Option<u32>,
}

impl RawReleases {
    /// Checks `[releases]`, and that `program` runs a release through the
    /// `current` symlink; the directory resolves against `base`.
    pub(super) fn parse(self, base: &Path, program: &Program) -> Result<Releases, Error> {
        if self.binary.is_empty()
            || self.binary.contains('/')
            || self.binary == "."
            || self.binary == ".."
        {
            return Err(Error::invalid(
                "releases.binary",
                &self.binary,
                "must be a plain file name",
            ));
        }
        let keep = self.keep.unwrap_or(3);
        if keep == 0 {
            return Err(Error::invalid(
                "releases.keep",
                keep,
                "keep at least 1 release",
            ));
        }
        let settle = match &self.settle {
            Some(text) => parse_duration(text)
                .map_err(|reason| Error::invalid("releases.settle", text, reason))?,
            None => Duration::from_secs(10),
        };
        let trial_attempts = self.trial_attempts.unwrap_or(TRIAL_ATTEMPTS_DEFAULT);
        if trial_attempts == 0 {
            return Err(Error::invalid(
                "releases.trial_attempts",
                trial_attempts,
                "a trial needs at least 1 attempt",
            ));
        }
        let health = self.parse_health(base, program)?;
        if let Some(h) = &health {
            check_settle_holds_health(settle, h)?;
        }
        let releases = Releases {
            dir: base.join(self.dir.as_deref().unwrap_or("releases")),
            binary: self.binary,
            keep,
            settle,
            health,
            trial_attempts,
        };
        check_command_through_current(program, &releases)?;
        Ok(releases)
    }

    /// `releases.health` and its `health_*` keys, which need it.
    fn parse_health(&self, base: &Path, program: &Program) -> Result<Option<Health>, Error> {
        let Some(text) = &self.health else {
            for (key, set) in [
                ("health_interval", self.health_interval.is_some()),
                ("health_timeout", self.health_timeout.is_some()),
                ("health_failures", self.health_failures.is_some()),
                ("health_after", self.health_after.is_some()),
            ] {
                if set {
                    return Err(Error::invalid(
                        &format!("releases.{key}"),
                        "…",
                        "only applies with releases.health",
                    ));
                }
            }
            return Ok(None);
        };
        let check = HealthCheck::parse(text, base)
            .map_err(|reason| Error::invalid("releases.health", text, reason))?;
        if let HealthCheck::Http { socket, .. } = &check {
            check_health_socket(text, socket.as_deref(), &program.listen)?;
        }
        let failures = self.health_failures.unwrap_or(3);
        if failures == 0 {
            return Err(Error::invalid(
                "releases.health_failures",
                0,
                "at least 1 failure must end a trial",
            ));
        }
        Ok(Some(Health {
            check,
            interval: duration(
                "releases.health_interval",
                &self.health_interval,
                Duration::from_secs(1),
            )?,
            timeout: duration(
                "releases.health_timeout",
                &self.health_timeout,
                Duration::from_secs(2),
            )?,
            failures,
            after: self.health_after.unwrap_or(false),
        }))
    }
}

/// An http health check needs a TCP socket: the one named, or any.
fn check_health_socket(text: &str, socket: Option<&str>, listen: &[Listen]) -> Result<(), Error> {
    let tcp = |l: &&Listen| matches!(l.addr, ListenAddr::Tcp(_));
    let found = match socket {
        Some(name) => listen.iter().filter(tcp).any(|l| l.name == name),
        None => listen.iter().any(|l| tcp(&l)),
    };
    if found {
        return Ok(());
    }
    Err(Error::invalid(
        "releases.health",
        text,
        match socket {
            Some(name) => format!("program.listen has no TCP address named {name:?}"),
            None => "http health checks need a TCP address in program.listen".to_owned(),
        },
    ))
}

/// The settle window must hold `failures` checks at `interval`, or a trial
/// could never fail on health.
fn check_settle_holds_health(settle: Duration, h: &Health) -> Result<(), Error> {
    let needed = h.interval * h.failures;
    if settle >= needed {
        return Ok(());
    }
    Err(Error::invalid(
        "releases.settle",
        humantime::format_duration(settle),
        format!(
            "with releases.health the settle window must hold at least \
             health_failures ({}) checks at health_interval ({}): {} or more",
            h.failures,
            humantime::format_duration(h.interval),
            humantime::format_duration(needed)
        ),
    ))
}

/// With releases, the program must run one through `<dir>/current/`, so that
/// a new release can be tried from its own directory before `current` names
/// it.
fn check_command_through_current(program: &Program, r: &Releases) -> Result<(), Error> {
    if program.command.starts_with(r.dir.join("current")) {
        return Ok(());
    }
    Err(Error::invalid(
        "program.command",
        program.command.display(),
        format!(
            "with a [releases] section the command must run a release through \
             {}/current/ (such as \"{}/current/{}\"), so that a new release can be \
             tried from its own directory before current names it",
            r.dir.display(),
            r.dir.display(),
            r.binary
        ),
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::testing::parse;
    use super::*;

    #[test]
    fn health_keys_are_parsed_and_checked() {
        let text = |keys: &str| {
            format!(
                "[program]\ncommand = \"releases/current/y\"\nlisten = [\"127.0.0.1:1\", \"admin=127.0.0.1:2\"]\n\
                 [releases]\nbinary = \"y\"\n{keys}"
            )
        };
        let health = |keys: &str| parse(&text(keys)).map(|c| c.releases.unwrap().health);
        let h = health("health = \"http:/healthz\"").unwrap().unwrap();
        assert_eq!(
            h.check,
            HealthCheck::Http {
                socket: None,
                path: "/healthz".to_owned()
            }
        );
        assert_eq!(
            (h.interval, h.timeout, h.failures, h.after),
            (Duration::from_secs(1), Duration::from_secs(2), 3, false)
        );
        let h = health("health = \"http:admin:/ok\"").unwrap().unwrap();
        assert_eq!(
            h.check,
            HealthCheck::Http {
                socket: Some("admin".to_owned()),
                path: "/ok".to_owned()
            }
        );
        let h = health("health = \"exec:bin/check --deep\"\nhealth_timeout = \"5s\"")
            .unwrap()
            .unwrap();
        assert_eq!(
            h.check,
            HealthCheck::Exec {
                command: Path::new("/srv/app/bin/check").to_owned(),
                args: vec!["--deep".to_owned()]
            }
        );
        for (keys, key) in [
            ("health = \"http:nope:/x\"", "releases.health"),
            ("health = \"tcp:1\"", "releases.health"),
            (
                "health = \"http:/x\"\nhealth_failures = 0",
                "releases.health_failures",
            ),
            ("health_interval = \"1s\"", "releases.health_interval"),
            // 3 checks a second do not fit in 2 s.
            ("health = \"http:/x\"\nsettle = \"2s\"", "releases.settle"),
        ] {
            let err = health(keys).unwrap_err().to_string();
            assert!(err.contains(key), "{keys}: {err}");
        }
    }

    #[test]
    fn releases_need_a_command_through_current() {
        let text = |command: &str, settle: &str| {
            format!(
                "[program]\ncommand = \"{command}\"\nlisten = [\"127.0.0.1:1\"]\n\
                 [releases]\nbinary = \"y\"\n{settle}"
            )
        };
        let err = parse(&text("bin/y", "")).unwrap_err().to_string();
        assert!(
            err.contains("program.command") && err.contains("/current/"),
            "{err}"
        );
        let config = parse(&text("releases/current/y", "settle = \"0s\"")).unwrap();
        assert_eq!(config.releases.unwrap().settle, Duration::ZERO);
        let config = parse(&text("releases/current/y", "")).unwrap();
        assert_eq!(config.releases.unwrap().settle, Duration::from_secs(10));
        let err = parse(&text("releases/current/y", "settle = \"soon\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("releases.settle"), "{err}");
        let config = parse(&text("releases/current/y", "")).unwrap();
        assert_eq!(
            config.releases.unwrap().trial_attempts,
            TRIAL_ATTEMPTS_DEFAULT
        );
        let config = parse(&text("releases/current/y", "trial_attempts = 5")).unwrap();
        assert_eq!(config.releases.unwrap().trial_attempts, 5);
        let err = parse(&text("releases/current/y", "trial_attempts = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("releases.trial_attempts"), "{err}");
    }
}
