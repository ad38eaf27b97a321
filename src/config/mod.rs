//! The TOML configuration: parsing, defaults and validation.
//!
//! Every problem is reported once, naming the key and what is wrong with it,
//! before anything is bound or spawned. Each section has its file: its raw
//! serde struct, its public type and the checks between them. Reading is in
//! two steps: serde reads the text into the raw structs (syntax, key names,
//! value types: errors with line and column), then each raw section is
//! checked and turned into its public type, in the order of [`Config`]'s
//! fields.

mod control;
mod fetch;
mod hooks;
mod program;
mod releases;
mod self_channel;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;

pub use self::control::Control;
pub use self::fetch::{Fetch, Secret, Source};
pub use self::hooks::{Hook, Hooks};
pub use self::program::{Listen, ListenAddr, Program, Ready, Signal};
pub use self::releases::{Health, HealthCheck, Releases, TRIAL_ATTEMPTS_DEFAULT};
pub use self::self_channel::SelfChannel;
pub use self::verify::{parse_size, Verify, MAX_ENTRIES_DEFAULT, MAX_UNPACKED_FACTOR};
pub use crate::fsutil::parse_sha256;
pub use crate::time::{parse_duration, MAX_DURATION};

use self::control::RawControl;
use self::fetch::RawFetch;
use self::hooks::RawHooks;
use self::program::RawProgram;
use self::releases::RawReleases;
use self::self_channel::RawSelf;
use self::verify::RawVerify;

/// A configuration error: the file could not be read, is not valid TOML, or a
/// key holds a value that baton cannot use.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has keys of the wrong type or name.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's description, with line and column.
        message: String,
    },
    /// A key holds a value baton cannot use.
    #[error("invalid `{key}` = {value:?}: {reason}")]
    Invalid {
        /// The dotted key, such as `program.ready_timeout`.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    fn invalid(key: &str, value: impl fmt::Display, reason: impl fmt::Display) -> Error {
        Error::Invalid {
            key: key.to_owned(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The supervised program: `[program]`.
    pub program: Program,
    /// Where releases are installed: `[releases]`.
    pub releases: Option<Releases>,
    /// Where new builds come from: `[fetch]`.
    pub fetch: Option<Fetch>,
    /// What a candidate must pass: `[verify]`.
    pub verify: Verify,
    /// The operator's interface: `[control]`.
    pub control: Control,
    /// Commands run around installs, promotions and rollbacks: `[hooks]`.
    pub hooks: Hooks,
    /// baton's own channel: `[self]`.
    pub self_channel: Option<SelfChannel>,
}

/// The file as written, one raw struct per section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    program: RawProgram,
    releases: Option<RawReleases>,
    /// `[fetch]` for serde: only its name. Its keys depend on its `source`,
    /// so [`RawFetch::read`] reads it apart into `fetch`.
    #[serde(rename = "fetch")]
    _fetch: Option<IgnoredAny>,
    #[serde(skip)]
    fetch: Option<RawFetch>,
    #[serde(default)]
    verify: RawVerify,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    hooks: RawHooks,
    /// `[self]` for serde: only its name; [`RawSelf::read`] reads it.
    #[serde(rename = "self")]
    _self: Option<IgnoredAny>,
    #[serde(skip)]
    self_channel: Option<RawSelf>,
}

impl RawConfig {
    /// Reads the text into the raw sections: TOML syntax, key names and
    /// value types, each error with its line and column.
    fn read(text: &str) -> Result<RawConfig, toml::de::Error> {
        let doc = toml::de::DeTable::parse(text)?;
        let with_input = |mut e: toml::de::Error| {
            e.set_input(Some(text));
            e
        };
        // Serde stops at the first error, visiting the sections in key order,
        // and only `control` (or an unknown section) sorts before `fetch`:
        // read it first, so that of two errors the same one is told.
        let fetch = doc
            .get_ref()
            .get("fetch")
            .cloned()
            .map(RawFetch::read)
            .transpose()
            .map_err(with_input)?;
        let self_channel = doc
            .get_ref()
            .get("self")
            .cloned()
            .map(RawSelf::read)
            .transpose()
            .map_err(with_input)?;
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(doc)).map_err(with_input)?;
        Ok(RawConfig {
            fetch,
            self_channel,
            ..raw
        })
    }
}

impl Config {
    /// Reads and validates a config file; relative paths in it resolve against
    /// the file's own directory.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &base).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Error> {
        let raw = RawConfig::read(text).map_err(|e| Error::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let program = raw.program.parse(base)?;
        let releases = raw.releases.map(|r| r.parse(base, &program)).transpose()?;
        let fetch = raw.fetch.map(|f| f.parse(base)).transpose()?;
        if let (Some(fetch), None) = (&fetch, &releases) {
            if !program.command.as_os_str().to_string_lossy().contains('/') {
                return Err(Error::invalid(
                    "fetch.source",
                    fetch.source.kind(),
                    "without a [releases] section the program's binary is replaced in place, \
                     so program.command must be a path, not a name looked up in PATH",
                ));
            }
        }
        let self_channel = raw
            .self_channel
            .map(|s| s.parse(base, releases.is_some()))
            .transpose()?;
        Ok(Config {
            program,
            releases,
            fetch,
            verify: raw.verify.parse()?,
            control: raw.control.parse(base)?,
            hooks: raw.hooks.parse(base)?,
            self_channel,
        })
    }
}

/// A command as written in the config: a path (it has a `/`) resolves
/// against `base`, a bare name is left for a lookup in `PATH`.
fn command_path(base: &Path, command: &str) -> PathBuf {
    if command.contains('/') {
        base.join(command)
    } else {
        PathBuf::from(command)
    }
}

/// A duration key that must be more than zero; `default` when unset.
fn duration(key: &str, value: &Option<String>, default: Duration) -> Result<Duration, Error> {
    match value {
        None => Ok(default),
        Some(v) => match parse_duration(v) {
            Ok(d) if d.is_zero() => Err(Error::invalid(key, v, "must be more than zero")),
            Ok(d) => Ok(d),
            Err(reason) => Err(Error::invalid(key, v, reason)),
        },
    }
}

/// What the tests of every section share.
#[cfg(test)]
mod testing {
    use std::path::Path;

    use super::{Config, Error};

    /// Parses `text` as the config file `/srv/app/baton.toml`.
    pub(super) fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(text, Path::new("/srv/app"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::testing::parse;
    use super::*;

    #[test]
    fn full_config_parses() {
        let c = parse(
            r#"[program]
command = "releases/current/hello"
listen = ["127.0.0.1:8080"]
[releases]
binary = "hello"
keep = 5
[fetch]
source = "http"
url = "http://127.0.0.1:9000/manifest.json"
interval = "1s"
jitter = "500ms"
headers = { Authorization = "Bearer x" }
[verify]
max_size = "64MiB"
version = ">=1.4, <2"
allow_downgrade = true
"#,
        )
        .unwrap();
        let r = c.releases.unwrap();
        assert_eq!(r.dir, Path::new("/srv/app/releases"));
        assert_eq!(r.keep, 5);
        let f = c.fetch.unwrap();
        assert_eq!(f.interval, Duration::from_secs(1));
        assert_eq!(f.jitter, Duration::from_millis(500));
        assert!(matches!(f.source, Source::Http { .. }));
        assert_eq!(c.verify.max_size, 64 << 20);
        assert_eq!(c.verify.max_unpacked, 256 << 20, "4 x max_size");
        assert_eq!(c.verify.max_entries, MAX_ENTRIES_DEFAULT);
        assert!(c.verify.allow_downgrade);
        assert!(c
            .verify
            .version
            .unwrap()
            .matches(&semver::Version::new(1, 5, 0)));
    }

    #[test]
    fn fetch_without_releases_needs_a_command_path() {
        let text = |command: &str| {
            format!(
                "[program]\ncommand = \"{command}\"\nlisten = [\"127.0.0.1:1\"]\n\
                 [fetch]\nsource = \"file\"\npath = \"new/y\"\n"
            )
        };
        let err = parse(&text("y")).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid `fetch.source` = \"file\": without a [releases] section"),
            "{err}"
        );
        let c = parse(&text("bin/y")).unwrap();
        assert_eq!(c.program.command, Path::new("/srv/app/bin/y"));
        assert!(c.releases.is_none());
    }
}
