//! `[verify]`: what a candidate must pass before it is installed.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, parse_sha256, Error};

/// What a candidate must pass before it is installed.
#[derive(Debug, Clone)]
pub struct Verify {
    /// Arguments of the probe run (default `--probe`).
    pub probe: Vec<String>,
    /// How long the probe may run.
    pub probe_timeout: Duration,
    /// A pinned sha256: only these bytes are accepted.
    pub sha256: Option<[u8; 32]>,
    /// Trusted minisign public keys (base64), `verify.minisign_key` as one
    /// string or a list (two at once while a key is rotated). When any is
    /// set, a valid signature by one of them is mandatory.
    pub minisign_keys: Vec<String>,
    /// Accept versions lower than the running one.
    pub allow_downgrade: bool,
    /// Only versions matching this requirement are accepted.
    pub version: Option<semver::VersionReq>,
    /// The largest download accepted, in bytes.
    pub max_size: u64,
    /// The most an archive may unpack to, in bytes (`verify.max_unpacked`,
    /// default 4 × `max_size`): a small archive is no licence to fill the
    /// disk.
    pub max_unpacked: u64,
    /// The most entries an archive may hold (`verify.max_entries`).
    pub max_entries: u64,
    /// How long a whole download may take.
    pub download_timeout: Duration,
}

/// `verify.max_unpacked` is this many times `verify.max_size` when unset.
pub const MAX_UNPACKED_FACTOR: u64 = 4;
/// `verify.max_entries` when unset.
pub const MAX_ENTRIES_DEFAULT: u64 = 100_000;

impl Default for Verify {
    fn default() -> Verify {
        Verify {
            probe: vec!["--probe".to_owned()],
            probe_timeout: Duration::from_secs(10),
            sha256: None,
            minisign_keys: Vec::new(),
            allow_downgrade: false,
            version: None,
            max_size: 512 << 20,
            max_unpacked: (512 << 20) * MAX_UNPACKED_FACTOR,
            max_entries: MAX_ENTRIES_DEFAULT,
            download_timeout: Duration::from_secs(600),
        }
    }
}

/// Parses `512MiB`, `20MB`, `64KiB`, `1GiB` or a plain byte count.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor).filter(|&n| n > 0)
}

/// `[verify]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerify {
    probe: Option<Vec<String>>,
    probe_timeout: Option<String>,
    sha256: Option<String>,
    minisign_key: Option<OneOrMany>,
    allow_downgrade: Option<bool>,
    version: Option<String>,
    max_size: Option<String>,
    max_unpacked: Option<String>,
    max_entries: Option<u64>,
    download_timeout: Option<String>,
}

/// A string, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl RawVerify {
    /// Checks `[verify]`.
    pub(super) fn parse(self) -> Result<Verify, Error> {
        let defaults = Verify::default();
        let probe_timeout = duration(
            "verify.probe_timeout",
            &self.probe_timeout,
            defaults.probe_timeout,
        )?;
        let download_timeout = duration(
            "verify.download_timeout",
            &self.download_timeout,
            defaults.download_timeout,
        )?;
        let sha256 = match &self.sha256 {
            Some(hex_sum) => Some(parse_sha256(hex_sum).ok_or_else(|| {
                Error::invalid("verify.sha256", hex_sum, "expected 64 hex digits")
            })?),
            None => None,
        };
        let minisign_keys = parse_minisign_keys(self.minisign_key)?;
        let version = match &self.version {
            Some(req) => Some(semver::VersionReq::parse(req).map_err(|e| {
                Error::invalid(
                    "verify.version",
                    req,
                    format!("not a version requirement ({e})"),
                )
            })?),
            None => None,
        };
        let max_size = match &self.max_size {
            Some(size) => size_key("verify.max_size", size, "512MiB")?,
            None => defaults.max_size,
        };
        let max_unpacked = match &self.max_unpacked {
            Some(size) => size_key("verify.max_unpacked", size, "2GiB")?,
            None => max_size.saturating_mul(MAX_UNPACKED_FACTOR),
        };
        let max_entries = match self.max_entries {
            Some(0) => {
                return Err(Error::invalid(
                    "verify.max_entries",
                    0,
                    "an archive needs at least 1 entry",
                ))
            }
            Some(n) => n,
            None => defaults.max_entries,
        };
        Ok(Verify {
            probe: self.probe.unwrap_or(defaults.probe),
            probe_timeout,
            sha256,
            minisign_keys,
            allow_downgrade: self.allow_downgrade.unwrap_or(false),
            version,
            max_size,
            max_unpacked,
            max_entries,
            download_timeout,
        })
    }
}

/// A size key, such as `verify.max_size`; `example` leads the examples of
/// the error.
fn size_key(key: &str, text: &str, example: &str) -> Result<u64, Error> {
    parse_size(text).ok_or_else(|| {
        Error::invalid(
            key,
            text,
            format!("expected a size such as {example}, 20MB or 1048576"),
        )
    })
}

/// `verify.minisign_key`: one key or a non-empty list, each a minisign
/// public key.
fn parse_minisign_keys(keys: Option<OneOrMany>) -> Result<Vec<String>, Error> {
    let keys = match keys {
        None => Vec::new(),
        Some(OneOrMany::One(key)) => vec![key],
        Some(OneOrMany::Many(keys)) if keys.is_empty() => {
            return Err(Error::invalid(
                "verify.minisign_key",
                "[]",
                "an empty list trusts no key; leave the key out to verify no signatures",
            ))
        }
        Some(OneOrMany::Many(keys)) => keys,
    };
    keys.into_iter()
        .map(|key| {
            minisign_verify::PublicKey::from_base64(key.trim()).map_err(|e| {
                Error::invalid(
                    "verify.minisign_key",
                    &key,
                    format!("not a minisign public key ({e})"),
                )
            })?;
            Ok(key.trim().to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("20MB"), Some(20_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("1TB"), None);
    }
}
