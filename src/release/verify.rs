//! Checks on a staged candidate: expected sha256, minisign signature,
//! version order (failing closed).

use std::io::Read;
use std::path::Path;

use super::Error;
use crate::fsutil::IoError;

/// The sha256 must match what the source states and the configured pin.
pub fn checksum(
    stated: Option<[u8; 32]>,
    pinned: Option<[u8; 32]>,
    actual: [u8; 32],
) -> Result<(), Error> {
    for (expected, from) in [(stated, "the source"), (pinned, "verify.sha256")] {
        if let Some(expected) = expected.filter(|e| *e != actual) {
            return Err(Error::Checksum {
                from,
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            });
        }
    }
    Ok(())
}

/// With keys configured, a valid minisign signature over the file by one
/// of them is mandatory. The file is streamed, never read whole.
pub fn signature(keys: &[String], signature: Option<&str>, file: &Path) -> Result<(), Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let signature = signature.ok_or(Error::MissingSignature)?;
    let bad = |reason: String| Error::BadSignature { reason };
    let signature = minisign_verify::Signature::decode(signature)
        .map_err(|e| bad(format!("unreadable signature: {e}")))?;
    let keys = keys
        .iter()
        .map(|k| {
            minisign_verify::PublicKey::from_base64(k).map_err(|e| bad(format!("bad key: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // A key whose id differs from the signature's refuses to start.
    let mut verifier = keys
        .iter()
        .find_map(|k| k.verify_stream(&signature).ok())
        .ok_or_else(|| bad("signed by a key that verify.minisign_key does not trust".into()))?;
    let mut f = std::fs::File::open(file).map_err(|source| {
        Error::Io(IoError {
            what: "read",
            path: file.to_owned(),
            source,
        })
    })?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(|source| {
            Error::Io(IoError {
                what: "read",
                path: file.to_owned(),
                source,
            })
        })?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n]);
    }
    verifier.finalize().map_err(|e| bad(e.to_string()))
}

/// Refuses a stated version lower than the running release's, before
/// anything is downloaded. Versions that do not parse are left to
/// [`decide`], which checks the probe's.
pub fn not_lower(stated: &str, running: Option<&str>, allow_downgrade: bool) -> Result<(), Error> {
    if allow_downgrade {
        return Ok(());
    }
    match (parse_version(stated), running.and_then(parse_version)) {
        (Some(new), Some(old)) if new < old => Err(Error::Downgrade {
            running: old.to_string(),
            candidate: new.to_string(),
        }),
        _ => Ok(()),
    }
}

pub use crate::version::{parse_version, probe_version};

/// The release that serves now, for the order check.
#[derive(Debug, Clone, Copy)]
pub struct Running<'a> {
    /// Its directory name.
    pub id: &'a str,
    /// Its recorded version.
    pub version: Option<&'a str>,
}

/// Decides the version that counts for a candidate and checks it, failing
/// closed:
///
/// - the probe's version (see [`probe_version`]) must equal, as semver, the
///   version the source states, when it states one;
/// - with `verify.version`, the version must match the requirement;
/// - with downgrade protection on (`allow_downgrade` false), a candidate
///   whose version cannot be determined, or a running release whose version
///   cannot be, is refused, and a lower version than the running one is.
///
/// Returns the version to record in the release's metadata.
pub fn decide(
    stated: Option<&str>,
    probe_line: &str,
    running: Option<Running<'_>>,
    allow_downgrade: bool,
    requirement: Option<&semver::VersionReq>,
) -> Result<Option<semver::Version>, Error> {
    let probed = probe_version(probe_line);
    let version = match stated.map(|s| (s, parse_version(s))) {
        Some((_, Some(stated))) if probed.as_ref() == Some(&stated) => probed,
        Some((text, Some(_))) => {
            return Err(Error::ProbeVersion {
                expected: text.to_owned(),
                output: probe_line.to_owned(),
            })
        }
        Some((text, None)) if !allow_downgrade => {
            return Err(Error::VersionUnknown {
                subject: "the candidate".to_owned(),
                reason: format!(
                    "the source states version {text:?}, which is not semver (the probe printed {probe_line:?})"
                ),
            })
        }
        Some((text, None)) => {
            tracing::warn!(
                "the source states version {text:?}, which is not semver; accepted because \
                 verify.allow_downgrade is set, with the probe's version"
            );
            probed
        }
        None => probed,
    };
    if let Some(req) = requirement {
        match &version {
            Some(v) if req.matches(v) => {}
            _ => {
                return Err(Error::VersionRequirement {
                    requirement: req.to_string(),
                    version: version
                        .as_ref()
                        .map_or_else(|| "unknown".to_owned(), |v| v.to_string()),
                })
            }
        }
    }
    if allow_downgrade {
        return Ok(version);
    }
    let Some(new) = &version else {
        return Err(Error::VersionUnknown {
            subject: "the candidate".to_owned(),
            reason: format!("the probe printed {probe_line:?}, which names no semver version"),
        });
    };
    if let Some(running) = running {
        let old = running
            .version
            .and_then(parse_version)
            .ok_or_else(|| Error::VersionUnknown {
                subject: format!("the running release {}", running.id),
                reason: match running.version {
                    Some(v) => format!("its recorded version {v:?} is not semver"),
                    None => "it has no recorded version".to_owned(),
                },
            })?;
        if *new < old {
            return Err(Error::Downgrade {
                running: old.to_string(),
                candidate: new.to_string(),
            });
        }
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_mismatch_names_both_digests() {
        let err = checksum(Some([1; 32]), None, [2; 32])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&"01".repeat(32)) && err.contains(&"02".repeat(32)),
            "{err}"
        );
        assert!(checksum(Some([2; 32]), Some([2; 32]), [2; 32]).is_ok());
        assert!(checksum(None, Some([1; 32]), [2; 32])
            .unwrap_err()
            .to_string()
            .contains("verify.sha256"));
    }

    fn running(version: Option<&str>) -> Option<Running<'_>> {
        Some(Running { id: "r", version })
    }

    #[test]
    fn versions_order() {
        let v = |s: &str| Some(semver::Version::parse(s).unwrap());
        assert_eq!(
            decide(None, "1.10.0", running(Some("1.2.0")), false, None).unwrap(),
            v("1.10.0")
        );
        assert!(matches!(
            decide(None, "v1.0.0", running(Some("2.0.0")), false, None),
            Err(Error::Downgrade { .. })
        ));
        assert!(decide(None, "1.0.0", running(Some("2.0.0")), true, None).is_ok());
        let req = semver::VersionReq::parse(">=1.4, <2").unwrap();
        assert!(decide(None, "1.5.0", None, false, Some(&req)).is_ok());
        assert!(decide(None, "2.0.0", None, false, Some(&req)).is_err());
        assert!(decide(None, "", None, true, Some(&req)).is_err());
    }

    #[test]
    fn probe_names_its_version_in_three_forms() {
        for line in [
            "1.2.3",
            "v1.2.3",
            "myapp 1.2.3",
            "myapp v1.2.3 (built today)",
        ] {
            assert_eq!(
                probe_version(line),
                semver::Version::parse("1.2.3").ok(),
                "{line}"
            );
        }
        assert_eq!(probe_version("myapp"), None);
    }

    #[test]
    fn stated_version_must_equal_the_probed_one() {
        // A substring is not equality: "1.0" is in "hello 1.0.0".
        assert!(matches!(
            decide(
                Some("1.0"),
                "hello 1.0.0",
                running(Some("2.0.0")),
                false,
                None
            ),
            Err(Error::VersionUnknown { .. })
        ));
        // An old build relabelled as newer.
        assert!(matches!(
            decide(
                Some("3.0.0"),
                "hello 1.0.0",
                running(Some("2.0.0")),
                false,
                None
            ),
            Err(Error::ProbeVersion { .. })
        ));
        assert!(matches!(
            decide(Some("2.1.0"), "hello", running(Some("2.0.0")), true, None),
            Err(Error::ProbeVersion { .. })
        ));
        assert!(decide(
            Some("v2.1.0"),
            "hello 2.1.0",
            running(Some("2.0.0")),
            false,
            None
        )
        .is_ok());
    }

    #[test]
    fn unknown_versions_fail_closed() {
        let err = decide(None, "hello", running(Some("2.0.0")), false, None).unwrap_err();
        assert!(err.to_string().contains("allow_downgrade"), "{err}");
        let err = decide(None, "hello 3.0.0", running(None), false, None).unwrap_err();
        assert!(err.to_string().contains("running release r"), "{err}");
        assert!(matches!(
            decide(None, "hello 3.0.0", running(Some("1.0")), false, None),
            Err(Error::VersionUnknown { .. })
        ));
        // Opted out: recorded as found.
        assert_eq!(
            decide(None, "hello", running(None), true, None).unwrap(),
            None
        );
    }

    #[test]
    fn missing_signature_is_refused_once_a_key_is_set() {
        let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        let err = signature(&[key.to_owned()], None, Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, Error::MissingSignature));
        assert!(signature(&[], None, Path::new("/nonexistent")).is_ok());
    }

    #[test]
    fn lower_stated_versions_are_refused_early() {
        assert!(matches!(
            not_lower("1.0.0", Some("2.0.0"), false),
            Err(Error::Downgrade { .. })
        ));
        assert!(not_lower("1.0.0", Some("2.0.0"), true).is_ok());
        assert!(not_lower("2.0.0", Some("2.0.0"), false).is_ok());
        assert!(
            not_lower("1.0", Some("2.0.0"), false).is_ok(),
            "left to decide"
        );
    }
}
