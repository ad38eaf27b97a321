//! `[self]`: baton's own channel. The same source keys as `[fetch]`,
//! pointing at a signed manifest of baton's own builds, plus the keys that
//! make it baton's: its own `minisign_key` (mandatory: baton never runs an
//! unsigned build of itself) and the `settle` a new baton must stay up for
//! after its `execve` before it is kept.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::fetch::RawFetch;
use super::verify::OneOrMany;
use super::{duration, Error, Fetch, Verify};

/// `[self]` as checked.
#[derive(Debug, Clone)]
pub struct SelfChannel {
    /// Where baton's own builds come from, and how often to look.
    pub fetch: Fetch,
    /// What a build of baton must pass: a signature by one of
    /// `self.minisign_key`, a version above the running one, a `--version`
    /// run that prints `baton <version>`.
    pub verify: Verify,
    /// How long a new baton must stay up after its `execve` before it
    /// replaces the executable for good (`self.settle`, default 30 s).
    pub settle: Duration,
}

/// The keys `[self]` takes beyond the source keys.
const OWN_KEYS: &[&str] = &["minisign_key", "settle"];

/// `[self]`'s own keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwn {
    minisign_key: Option<OneOrMany>,
    settle: Option<String>,
}

/// `[self]` as written: its source keys, read as `[fetch]`'s are, and its
/// own.
pub(super) struct RawSelf {
    fetch: RawFetch,
    own: RawOwn,
}

impl RawSelf {
    /// Reads `[self]` from its place in the document.
    pub(super) fn read(section: Spanned<DeValue<'_>>) -> Result<RawSelf, toml::de::Error> {
        let span = section.span();
        let table = match section.into_inner() {
            DeValue::Table(table) => table,
            other => {
                // Let the source reader say what is wrong with a non-table.
                RawFetch::read(Spanned::new(span.clone(), other))?;
                DeTable::new()
            }
        };
        let (own, rest): (DeTable<'_>, DeTable<'_>) = table
            .into_iter()
            .partition(|(key, _)| OWN_KEYS.contains(&key.get_ref().as_ref()));
        let own = RawOwn::deserialize(toml::de::ValueDeserializer::from(Spanned::new(
            span.clone(),
            DeValue::Table(own),
        )))?;
        let fetch = RawFetch::read(Spanned::new(span, DeValue::Table(rest)))?;
        Ok(RawSelf { fetch, own })
    }

    /// Checks `[self]`.
    pub(super) fn parse(self, base: &Path, has_releases: bool) -> Result<SelfChannel, Error> {
        let fetch = self.fetch.parse(base).map_err(renamed)?;
        if fetch.report {
            return Err(Error::invalid(
                "self.report",
                true,
                "baton's own trials are not reported; its status and metrics say how it fares",
            ));
        }
        if !has_releases {
            return Err(Error::invalid(
                "self.source",
                fetch.source.kind(),
                "baton's own builds are kept under the releases directory \
                 (`<releases.dir>/.baton/`), so [self] needs a [releases] section",
            ));
        }
        let minisign_keys = match self.own.minisign_key {
            Some(OneOrMany::One(key)) => vec![key],
            Some(OneOrMany::Many(keys)) => keys,
            None => Vec::new(),
        };
        if minisign_keys.iter().all(|k| k.trim().is_empty()) {
            return Err(Error::invalid(
                "self.minisign_key",
                "",
                "[self] needs the public key baton's own builds are signed with: \
                 baton never runs an unsigned build of itself",
            ));
        }
        for key in &minisign_keys {
            minisign_verify::PublicKey::from_base64(key.trim()).map_err(|e| {
                Error::invalid(
                    "self.minisign_key",
                    key,
                    format!("not a minisign public key: {e}"),
                )
            })?;
        }
        let verify = Verify {
            probe: vec!["--version".to_owned()],
            minisign_keys: minisign_keys.iter().map(|k| k.trim().to_owned()).collect(),
            ..Verify::default()
        };
        Ok(SelfChannel {
            fetch,
            verify,
            settle: duration("self.settle", &self.own.settle, Duration::from_secs(30))?,
        })
    }
}

/// A source key's error, named as a key of `[self]`.
fn renamed(e: Error) -> Error {
    match e {
        Error::Invalid { key, value, reason } => Error::Invalid {
            key: match key.strip_prefix("fetch.") {
                Some(k) => format!("self.{k}"),
                None => key,
            },
            value,
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::parse;

    const BASE: &str = "[program]\ncommand = \"releases/current/hello\"\n\
                        listen = [\"127.0.0.1:1\"]\n[releases]\nbinary = \"hello\"\n";
    const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

    #[test]
    fn a_self_channel_parses_with_its_key_and_settle() {
        let c = parse(&format!(
            "{BASE}[self]\nsource = \"file\"\npath = \"baton/manifest.json\"\n\
             minisign_key = \"{KEY}\"\nsettle = \"5s\"\ninterval = \"1h\"\n"
        ))
        .unwrap();
        let s = c.self_channel.unwrap();
        assert_eq!(s.settle, std::time::Duration::from_secs(5));
        assert_eq!(s.fetch.interval, std::time::Duration::from_secs(3600));
        assert_eq!(s.verify.minisign_keys, vec![KEY.to_owned()]);
        assert_eq!(s.verify.probe, vec!["--version".to_owned()]);
        assert!(!s.verify.allow_downgrade);
    }

    #[test]
    fn a_self_channel_needs_a_key_and_a_releases_dir() {
        let err = parse(&format!(
            "{BASE}[self]\nsource = \"file\"\npath = \"m.json\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("self.minisign_key"), "{err}");
        assert!(err.contains("never runs an unsigned build"), "{err}");
        let err = parse(&format!(
            "[program]\ncommand = \"./hello\"\nlisten = [\"127.0.0.1:1\"]\n\
             [self]\nsource = \"file\"\npath = \"m.json\"\nminisign_key = \"{KEY}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs a [releases] section"), "{err}");
        let err = parse(&format!(
            "{BASE}[self]\nsource = \"file\"\npath = \"m.json\"\nminisign_key = \"nope\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a minisign public key"), "{err}");
    }

    #[test]
    fn source_errors_name_the_self_section() {
        let err = parse(&format!(
            "{BASE}[self]\nsource = \"file\"\nminisign_key = \"{KEY}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("invalid `self.path`"), "{err}");
        let err = parse(&format!(
            "{BASE}[self]\nsource = \"file\"\npath = \"m\"\nreport = true\nminisign_key = \"{KEY}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("self.report"), "{err}");
        let err = parse(&format!(
            "{BASE}[self]\nsource = \"file\"\npath = \"m\"\nminisign_key = \"{KEY}\"\nbogus = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
