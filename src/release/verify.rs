//! Checks on a staged candidate: expected sha256, minisign signature,
//! version order.

use std::io::Read;
use std::path::Path;

use super::Error;

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

/// With a key configured, a valid minisign signature over the file is
/// mandatory. The file is streamed, never read whole.
pub fn signature(key: Option<&str>, signature: Option<&str>, file: &Path) -> Result<(), Error> {
    let Some(key) = key else { return Ok(()) };
    let signature = signature.ok_or(Error::MissingSignature)?;
    let bad = |reason: String| Error::BadSignature { reason };
    let key =
        minisign_verify::PublicKey::from_base64(key).map_err(|e| bad(format!("bad key: {e}")))?;
    let signature = minisign_verify::Signature::decode(signature)
        .map_err(|e| bad(format!("unreadable signature: {e}")))?;
    let mut verifier = key
        .verify_stream(&signature)
        .map_err(|e| bad(e.to_string()))?;
    let mut f = std::fs::File::open(file).map_err(|source| Error::Io {
        what: "read",
        path: file.to_owned(),
        source,
    })?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(|source| Error::Io {
            what: "read",
            path: file.to_owned(),
            source,
        })?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n]);
    }
    verifier.finalize().map_err(|e| bad(e.to_string()))
}

/// Parses a version, allowing a leading `v`.
pub fn parse_version(text: &str) -> Option<semver::Version> {
    let text = text.trim();
    semver::Version::parse(text.strip_prefix('v').unwrap_or(text)).ok()
}

/// No downgrade unless allowed; the requirement, when set, must match.
pub fn version(
    running: Option<&str>,
    candidate: Option<&str>,
    allow_downgrade: bool,
    requirement: Option<&semver::VersionReq>,
) -> Result<(), Error> {
    let parsed = candidate.and_then(parse_version);
    if let Some(req) = requirement {
        match &parsed {
            Some(v) if req.matches(v) => {}
            _ => {
                return Err(Error::VersionRequirement {
                    requirement: req.to_string(),
                    version: candidate.unwrap_or("unknown").to_owned(),
                })
            }
        }
    }
    if let (Some(new), Some(old)) = (&parsed, running.and_then(parse_version)) {
        if *new < old && !allow_downgrade {
            return Err(Error::Downgrade {
                running: old.to_string(),
                candidate: new.to_string(),
            });
        }
    }
    Ok(())
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

    #[test]
    fn versions_order() {
        assert!(version(Some("1.2.0"), Some("1.10.0"), false, None).is_ok());
        assert!(matches!(
            version(Some("2.0.0"), Some("v1.0.0"), false, None),
            Err(Error::Downgrade { .. })
        ));
        assert!(version(Some("2.0.0"), Some("1.0.0"), true, None).is_ok());
        let req = semver::VersionReq::parse(">=1.4, <2").unwrap();
        assert!(version(None, Some("1.5.0"), false, Some(&req)).is_ok());
        assert!(version(None, Some("2.0.0"), false, Some(&req)).is_err());
        assert!(version(None, None, false, Some(&req)).is_err());
        assert!(version(Some("1.0.0"), Some("not-semver"), false, None).is_ok());
    }

    #[test]
    fn missing_signature_is_refused_once_a_key_is_set() {
        let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        let err = signature(Some(key), None, Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, Error::MissingSignature));
        assert!(signature(None, None, Path::new("/nonexistent")).is_ok());
    }
}
