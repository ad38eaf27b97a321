//! `[fetch]`: where new builds come from, and how often to look.
//!
//! The keys of `[fetch]` depend on its `source`: besides the keys every
//! source takes (`source`, `interval`, `jitter`, `timeout`, `host_id`), each
//! source has its own raw struct. [`RawFetch::read`] reads the section in
//! three steps: the key names are checked against every source's (an unknown
//! key is a TOML error, as in any other section); the common keys are read;
//! then the keys of the source named are read into its raw struct. A key of
//! another source is noted, and refused when the section is parsed:
//! `fetch.bucket: only applies to source = "s3"`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::de::{
    DeserializeOwned, Error as _, IgnoredAny, MapAccess, SeqAccess, Unexpected, Visitor,
};
use serde::{Deserialize, Deserializer};
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::{duration, parse_duration, Error};

/// The fetcher and its schedule.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// Which source, with its settings.
    pub source: Source,
    /// Time between checks.
    pub interval: Duration,
    /// Up to this much random time is added to every interval.
    pub jitter: Duration,
    /// Connect and read timeout of one request.
    pub timeout: Duration,
    /// This host's identity for rollout cohorts (`fetch.host_id`); by
    /// default a random one kept in the releases directory.
    pub host_id: Option<String>,
    /// Write a trial report per trial event beside the manifest
    /// (`fetch.report`; the `file` and `s3` sources).
    pub report: bool,
}

/// A credential from the config (a token, a header value). Its `Debug` and
/// `Display` print `<redacted>`, so neither logs nor `{:?}` of a config
/// show it; [`Secret::expose`] gives the value to the one place that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The credential itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A source of new builds.
#[derive(Debug, Clone)]
pub enum Source {
    /// A local file, watched.
    File {
        /// The file (followed if it is a symlink).
        path: PathBuf,
    },
    /// An HTTP(S) URL of a binary, an archive or a JSON manifest.
    Http {
        /// The URL.
        url: String,
        /// Extra request headers (authorization); never logged.
        headers: BTreeMap<String, Secret>,
        /// Allow plain http to hosts other than loopback.
        allow_http: bool,
        /// Fetch the expected sha256 from `<url>.sha256`.
        checksum_url: bool,
        /// Redirects followed at most.
        max_redirects: usize,
    },
    /// GitHub releases (feature `github`).
    Github {
        /// `owner/name`.
        repo: String,
        /// The asset's name pattern: `*` and `{version}`, `{os}`, `{arch}`,
        /// `{target}`. Optional when every release carries a manifest asset.
        asset: Option<String>,
        /// The name of the release manifest asset (`fetch.manifest_asset`,
        /// default `manifest.json`): when a release has it, it names the
        /// artifact, and its signature is the `<name>.minisig` asset.
        manifest_asset: String,
        /// A token from the config (prefer `token_env`); never logged.
        token: Option<Secret>,
        /// The variable holding the token (default `GITHUB_TOKEN`).
        token_env: String,
        /// The API's base URL (GitHub Enterprise: `https://host/api/v3`).
        api_url: String,
        /// Consider pre-releases.
        prerelease: bool,
        /// Take the highest semver tag instead of the latest release.
        semver: bool,
    },
    /// An S3 object, or the highest semver key under a prefix (feature `s3`).
    S3 {
        /// The bucket.
        bucket: String,
        /// One object's key.
        key: Option<String>,
        /// Or a prefix whose keys carry versions; the highest wins.
        prefix: Option<String>,
        /// The region (else from the environment or profile).
        region: Option<String>,
        /// A custom endpoint (MinIO, Ceph, R2, a local server).
        endpoint_url: Option<String>,
        /// Path-style addressing (`endpoint/bucket/key`).
        force_path_style: bool,
    },
}

impl Source {
    /// The source's name in the config: `file`, `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::File { .. } => "file",
            Source::Http { .. } => "http",
            Source::Github { .. } => "github",
            Source::S3 { .. } => "s3",
        }
    }
}

/// The keys every source takes: [`RawCommon`]'s fields.
const COMMON_KEYS: &[&str] = &[
    "source", "interval", "jitter", "timeout", "host_id", "report",
];

/// Each source with its own keys (its raw struct's fields), in the order a
/// key of another source is looked for.
const SOURCE_KEYS: [(&str, &[&str]); 4] = [
    ("file", &["path"]),
    (
        "http",
        &[
            "url",
            "headers",
            "allow_http",
            "checksum_url",
            "max_redirects",
        ],
    ),
    (
        "github",
        &[
            "repo",
            "asset",
            "token",
            "token_env",
            "api_url",
            "prerelease",
            "semver",
            "manifest_asset",
        ],
    ),
    (
        "s3",
        &[
            "bucket",
            "key",
            "prefix",
            "region",
            "endpoint_url",
            "force_path_style",
        ],
    ),
];

/// Every key of `[fetch]`: the common ones, then each source's.
fn all_keys() -> &'static [&'static str] {
    static ALL: OnceLock<Vec<&'static str>> = OnceLock::new();
    ALL.get_or_init(|| {
        let own = SOURCE_KEYS.iter().flat_map(|(_, keys)| keys.iter());
        COMMON_KEYS.iter().chain(own).copied().collect()
    })
}

/// The keys of `source`.
fn keys_of(source: &str) -> &'static [&'static str] {
    SOURCE_KEYS
        .iter()
        .find(|(name, _)| *name == source)
        .map_or(&[], |(_, keys)| *keys)
}

/// `[fetch]` as written, split by source.
pub(super) struct RawFetch {
    common: RawCommon,
    own: RawSource,
    /// The first key set (in [`SOURCE_KEYS`] order) that belongs to another
    /// source than the one named, with that source.
    misplaced: Option<(&'static str, &'static str)>,
}

/// The keys every source takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommon {
    source: String,
    interval: Option<String>,
    jitter: Option<String>,
    timeout: Option<String>,
    host_id: Option<String>,
    report: Option<bool>,
}

/// The named source's own keys.
enum RawSource {
    File(RawFile),
    Http(RawHttp),
    Github(RawGithub),
    S3(RawS3),
    /// A source baton does not know: it has no keys of its own.
    Unknown,
}

/// `source = "file"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Option<String>,
}

/// `source = "http"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    allow_http: Option<bool>,
    checksum_url: Option<bool>,
    max_redirects: Option<usize>,
}

/// `source = "github"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithub {
    repo: Option<String>,
    asset: Option<String>,
    token: Option<String>,
    token_env: Option<String>,
    api_url: Option<String>,
    prerelease: Option<bool>,
    semver: Option<bool>,
    manifest_asset: Option<String>,
}

/// `source = "s3"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    bucket: Option<String>,
    key: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    force_path_style: Option<bool>,
}

impl RawFetch {
    /// Reads `[fetch]` from its place in the document. Errors carry their
    /// span in the document; the caller gives them its text.
    pub(super) fn read<'i>(section: Spanned<DeValue<'i>>) -> Result<RawFetch, toml::de::Error> {
        ValueDeserializer::from(section.clone()).deserialize_struct(
            "RawFetch",
            all_keys(),
            KeyNames,
        )?;
        let span = section.span();
        // A table: `KeyNames` took nothing else.
        let table = match section.into_inner() {
            DeValue::Table(table) => table,
            _ => DeTable::new(),
        };
        let pick = |keys: &[&str]| -> Spanned<DeValue<'i>> {
            let picked = table
                .iter()
                .filter(|(key, _)| keys.contains(&key.get_ref().as_ref()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            Spanned::new(span.clone(), DeValue::Table(picked))
        };
        let common: RawCommon = read(pick(COMMON_KEYS))?;
        let keys = keys_of(&common.source);
        let own = match common.source.as_str() {
            "file" => RawSource::File(read(pick(keys))?),
            "http" => RawSource::Http(read(pick(keys))?),
            "github" => RawSource::Github(read(pick(keys))?),
            "s3" => RawSource::S3(read(pick(keys))?),
            _ => RawSource::Unknown,
        };
        let misplaced = SOURCE_KEYS
            .iter()
            .filter(|(name, _)| *name != common.source)
            .flat_map(|(name, keys)| keys.iter().map(|key| (*key, *name)))
            .find(|(key, _)| table.get(*key).is_some_and(|v| sets_something(v.get_ref())));
        Ok(RawFetch {
            common,
            own,
            misplaced,
        })
    }

    /// Checks `[fetch]`; a file source's path resolves against `base`.
    pub(super) fn parse(self, base: &Path) -> Result<Fetch, Error> {
        if let Some((key, source)) = self.misplaced {
            return Err(Error::invalid(
                &format!("fetch.{key}"),
                "…",
                format!("only applies to source = \"{source}\""),
            ));
        }
        let name = self.common.source.as_str();
        let source = match self.own {
            RawSource::File(raw) => raw.parse(base)?,
            RawSource::Http(raw) => raw.parse()?,
            RawSource::Github(_) if !cfg!(feature = "github") => {
                return Err(without_feature(name, "github"))
            }
            RawSource::Github(raw) => raw.parse()?,
            RawSource::S3(_) if !cfg!(feature = "s3") => return Err(without_feature(name, "s3")),
            RawSource::S3(raw) => raw.parse()?,
            RawSource::Unknown => {
                return Err(Error::invalid(
                    "fetch.source",
                    name,
                    "expected \"file\", \"http\", \"github\" or \"s3\"",
                ))
            }
        };
        self.common.parse(source)
    }
}

/// A value that sets something: anything but the empty table, which
/// `headers = {}` was always accepted as with any source.
fn sets_something(value: &DeValue<'_>) -> bool {
    value.as_table().is_none_or(|table| !table.is_empty())
}

/// Reads a raw struct from (part of) the section.
fn read<T: DeserializeOwned>(value: Spanned<DeValue<'_>>) -> Result<T, toml::de::Error> {
    T::deserialize(ValueDeserializer::from(value))
}

/// Checks the names of `[fetch]`'s keys as serde's `deny_unknown_fields`
/// does, as if `[fetch]` were one struct of every source's keys: an unknown
/// key gets the same message, line and column as in any other section.
struct KeyNames;

impl<'de> Visitor<'de> for KeyNames {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct RawFetch")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<KeyName>()?.is_some() {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    /// As serde's derive reads a struct from a sequence, `source` first
    /// (`[[fetch]]` tells "invalid type: map, expected a string").
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        seq.next_element::<String>()?;
        Err(A::Error::invalid_type(Unexpected::Seq, &self))
    }
}

/// One of [`all_keys`].
struct KeyName;

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KeyName, D::Error> {
        let name = String::deserialize(deserializer)?;
        if all_keys().contains(&name.as_str()) {
            Ok(KeyName)
        } else {
            Err(D::Error::unknown_field(&name, all_keys()))
        }
    }
}

/// `source` names a source this build left out.
fn without_feature(source: &str, feature: &str) -> Error {
    Error::invalid(
        "fetch.source",
        source,
        format!("this baton was built without the `{feature}` feature"),
    )
}

impl RawCommon {
    /// The schedule around `source`.
    fn parse(self, source: Source) -> Result<Fetch, Error> {
        let report = self.report.unwrap_or(false);
        if report && matches!(source, Source::Http { .. } | Source::Github { .. }) {
            return Err(Error::invalid(
                "fetch.report",
                true,
                format!(
                    "source = \"{}\" is read-only to a host, so it cannot take reports (the \
                     file and s3 sources can); every host exports baton_trials_total on \
                     /metrics instead",
                    source.kind()
                ),
            ));
        }
        Ok(Fetch {
            report,
            source,
            interval: duration("fetch.interval", &self.interval, Duration::from_secs(60))?,
            jitter: match &self.jitter {
                Some(j) => {
                    parse_duration(j).map_err(|reason| Error::invalid("fetch.jitter", j, reason))?
                }
                None => Duration::ZERO,
            },
            timeout: duration("fetch.timeout", &self.timeout, Duration::from_secs(30))?,
            host_id: match self.host_id {
                Some(id) if id.trim().is_empty() || id.len() > 256 => {
                    return Err(Error::invalid(
                        "fetch.host_id",
                        &id,
                        "expected a non-empty name of at most 256 bytes",
                    ))
                }
                other => other,
            },
        })
    }
}

impl RawFile {
    fn parse(self, base: &Path) -> Result<Source, Error> {
        let path = self.path.ok_or_else(|| {
            Error::invalid("fetch.path", "", "source = \"file\" needs the file's path")
        })?;
        Ok(Source::File {
            path: base.join(path),
        })
    }
}

impl RawHttp {
    fn parse(self) -> Result<Source, Error> {
        let url = self
            .url
            .ok_or_else(|| Error::invalid("fetch.url", "", "source = \"http\" needs a url"))?;
        let allow_http = self.allow_http.unwrap_or(false);
        crate::url::check_url(&url, allow_http)
            .map_err(|reason| Error::invalid("fetch.url", &url, reason))?;
        for (name, value) in &self.headers {
            if http::HeaderName::try_from(name.as_str()).is_err() {
                return Err(Error::invalid(
                    "fetch.headers",
                    name,
                    "not a valid header name",
                ));
            }
            if http::HeaderValue::try_from(value.as_str()).is_err() {
                return Err(Error::invalid(
                    "fetch.headers",
                    name,
                    "the value is not a valid header value",
                ));
            }
        }
        Ok(Source::Http {
            url,
            headers: self
                .headers
                .into_iter()
                .map(|(k, v)| (k, Secret(v)))
                .collect(),
            allow_http,
            checksum_url: self.checksum_url.unwrap_or(false),
            max_redirects: self.max_redirects.unwrap_or(5),
        })
    }
}

impl RawGithub {
    fn parse(self) -> Result<Source, Error> {
        let repo = self.repo.ok_or_else(|| {
            Error::invalid(
                "fetch.repo",
                "",
                "source = \"github\" needs repo = \"owner/name\"",
            )
        })?;
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !repo
            .split_once('/')
            .is_some_and(|(o, n)| valid(o) && valid(n))
        {
            return Err(Error::invalid("fetch.repo", &repo, "expected owner/name"));
        }
        let manifest_asset = self
            .manifest_asset
            .unwrap_or_else(|| "manifest.json".to_owned());
        if manifest_asset.trim().is_empty() || manifest_asset.contains('/') {
            return Err(Error::invalid(
                "fetch.manifest_asset",
                &manifest_asset,
                "expected an asset's file name, such as \"manifest.json\"",
            ));
        }
        let api_url = self
            .api_url
            .unwrap_or_else(|| "https://api.github.com".to_owned());
        crate::url::check_url(&api_url, false)
            .map_err(|reason| Error::invalid("fetch.api_url", &api_url, reason))?;
        Ok(Source::Github {
            repo,
            asset: self.asset,
            manifest_asset,
            token: self.token.map(Secret),
            token_env: self.token_env.unwrap_or_else(|| "GITHUB_TOKEN".to_owned()),
            api_url,
            prerelease: self.prerelease.unwrap_or(false),
            semver: self.semver.unwrap_or(false),
        })
    }
}

impl RawS3 {
    fn parse(self) -> Result<Source, Error> {
        let bucket = self
            .bucket
            .filter(|b| !b.is_empty())
            .ok_or_else(|| Error::invalid("fetch.bucket", "", "source = \"s3\" needs a bucket"))?;
        match (&self.key, &self.prefix) {
            (Some(_), Some(prefix)) => {
                return Err(Error::invalid(
                    "fetch.prefix",
                    prefix,
                    "give key or prefix, not both",
                ))
            }
            (None, None) => {
                return Err(Error::invalid(
                    "fetch.key",
                    "",
                    "source = \"s3\" needs a key (or a prefix)",
                ))
            }
            _ => {}
        }
        if let Some(url) = &self.endpoint_url {
            crate::url::check_url(url, false)
                .map_err(|reason| Error::invalid("fetch.endpoint_url", url, reason))?;
        }
        Ok(Source::S3 {
            bucket,
            key: self.key,
            prefix: self.prefix,
            region: self.region,
            endpoint_url: self.endpoint_url,
            force_path_style: self.force_path_style.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::de::Error as _;

    use super::super::testing::parse;
    use super::*;

    const BASE: &str = "[program]\ncommand = \"releases/current/y\"\nlisten = [\"127.0.0.1:1\"]\n[releases]\nbinary = \"y\"\n";

    #[test]
    fn reports_need_a_store_a_host_can_write() {
        let file = parse(&format!(
            "{BASE}[fetch]\nsource = \"file\"\npath = \"dist/manifest.json\"\nreport = true\n"
        ))
        .unwrap();
        assert!(file.fetch.unwrap().report);
        let http = parse(&format!(
            "{BASE}[fetch]\nsource = \"http\"\nurl = \"https://example.com/m.json\"\nreport = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(http.contains("fetch.report"), "{http}");
        assert!(
            http.contains("source = \"http\" is read-only to a host"),
            "{http}"
        );
        assert!(
            http.contains("baton_trials_total"),
            "the alternative: {http}"
        );
        let off = parse(&format!(
            "{BASE}[fetch]\nsource = \"http\"\nurl = \"https://example.com/m.json\"\nreport = false\n"
        ));
        assert!(off.is_ok());
    }

    #[test]
    fn left_out_sources_are_named() {
        let base = BASE;
        for (source, keys, feature) in [
            (
                "github",
                "repo = \"a/b\"\nasset = \"x\"",
                cfg!(feature = "github"),
            ),
            ("s3", "bucket = \"b\"\nkey = \"k\"", cfg!(feature = "s3")),
        ] {
            let result = parse(&format!("{base}[fetch]\nsource = \"{source}\"\n{keys}\n"));
            if feature {
                assert!(result.is_ok(), "{source}: {:?}", result.err());
            } else {
                let err = result.unwrap_err().to_string();
                assert!(
                    err.contains(&format!("built without the `{source}` feature")),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let base = BASE;
        let github = parse(&format!(
            "{base}[fetch]\nsource = \"github\"\nrepo = \"a/b\"\nasset = \"x\"\ntoken = \"ghp_s3cret\"\n"
        ));
        let http = parse(&format!(
            "{base}[fetch]\nsource = \"http\"\nurl = \"https://example.com/m.json\"\nheaders = {{ Authorization = \"Bearer hunter2\" }}\n"
        ))
        .unwrap();
        let shown = format!("{http:?}");
        assert!(
            shown.contains("Authorization") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        if cfg!(feature = "github") {
            let shown = format!("{:?}", github.unwrap());
            assert!(!shown.contains("ghp_s3cret"), "{shown}");
        }
        let Some(Fetch {
            source: Source::Http { headers, .. },
            ..
        }) = &http.fetch
        else {
            panic!("an http source")
        };
        assert_eq!(headers["Authorization"].expose(), "Bearer hunter2");
        assert_eq!(headers["Authorization"].to_string(), "<redacted>");
    }

    #[test]
    fn a_key_of_another_source_names_its_source() {
        let fetch = |keys: &str| parse(&format!("{BASE}[fetch]\n{keys}\n"));
        for (keys, message) in [
            (
                "source = \"file\"\npath = \"p\"\nbucket = \"b\"",
                "invalid `fetch.bucket` = \"…\": only applies to source = \"s3\"",
            ),
            (
                "source = \"s3\"\nbucket = \"b\"\nkey = \"k\"\nheaders = { A = \"b\" }",
                "invalid `fetch.headers` = \"…\": only applies to source = \"http\"",
            ),
            // Several: the first in the order of the sources and their keys.
            (
                "source = \"file\"\npath = \"p\"\nforce_path_style = true\nrepo = \"a/b\"\nurl = \"u\"",
                "invalid `fetch.url` = \"…\": only applies to source = \"http\"",
            ),
            // A source baton does not know has no keys of its own.
            (
                "source = \"ftp\"\npath = \"p\"",
                "invalid `fetch.path` = \"…\": only applies to source = \"file\"",
            ),
            (
                "source = \"ftp\"",
                "invalid `fetch.source` = \"ftp\": expected \"file\", \"http\", \"github\" or \"s3\"",
            ),
        ] {
            assert_eq!(fetch(keys).unwrap_err().to_string(), message, "{keys}");
        }
        // `headers = {}` sets nothing, and never was refused.
        let c = fetch("source = \"file\"\npath = \"p\"\nheaders = {}").unwrap();
        assert!(matches!(c.fetch.unwrap().source, Source::File { .. }));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_toml_errors_with_their_line() {
        let fetch = |keys: &str| parse(&format!("{BASE}[fetch]\n{keys}\n"));
        let err = fetch("source = \"file\"\npath = \"p\"\npaht = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 9, column 1")
                && err.contains("unknown field `paht`, expected one of `source`, `interval`, ")
                && err.contains(", `path`, `url`, ")
                && err.ends_with(", `endpoint_url`, `force_path_style`"),
            "{err}"
        );
        let err = fetch("source = \"http\"\nurl = \"https://e.com\"\nallow_http = \"yes\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 9, column 14")
                && err.ends_with("invalid type: string \"yes\", expected a boolean"),
            "{err}"
        );
        let err = fetch("path = \"p\"").unwrap_err().to_string();
        assert!(err.ends_with("missing field `source`"), "{err}");
        let err = parse(&format!("fetch = 3\n{BASE}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("invalid type: integer `3`, expected struct RawFetch"),
            "{err}"
        );
    }

    #[test]
    fn the_key_lists_are_the_raw_structs_fields() {
        // serde's unknown-field error lists a struct's fields.
        fn fields<T: DeserializeOwned>() -> String {
            toml::from_str::<T>("\"?\" = 0")
                .err()
                .unwrap()
                .message()
                .to_owned()
        }
        let listed =
            |keys: &'static [&'static str]| toml::de::Error::unknown_field("?", keys).to_string();
        assert_eq!(fields::<RawCommon>(), listed(COMMON_KEYS).trim_end());
        assert_eq!(fields::<RawFile>(), listed(keys_of("file")).trim_end());
        assert_eq!(fields::<RawHttp>(), listed(keys_of("http")).trim_end());
        assert_eq!(fields::<RawGithub>(), listed(keys_of("github")).trim_end());
        assert_eq!(fields::<RawS3>(), listed(keys_of("s3")).trim_end());
    }
}
