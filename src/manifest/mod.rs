//! The release manifest: a small JSON document naming a release's version
//! and artifact, signed with minisign over its exact bytes (the detached
//! signature at `<manifest>.minisig`).
//!
//! ```json
//! {
//!   "version": "2.0.0",
//!   "url": "hello-2.0.0-x86_64-unknown-linux-gnu.tar.gz",
//!   "sha256": "…", "size": 12345678,
//!   "published_at": "2026-11-23T10:00:00Z",
//!   "expires": "2026-12-23T10:00:00Z",
//!   "rollout": 10,
//!   "channel": "stable"
//! }
//! ```
//!
//! Trust is established in named steps, each with its own error:
//! [`verify_signature`] (the exact bytes, by one of the trusted keys),
//! [`Manifest::parse`] (types, required fields, this host's artifact),
//! [`Manifest::check_expiry`]. The stated version is then bound by the
//! pipeline: it must equal what the probe reports, and must not be lower
//! than the running release's. [`load`] runs the steps in order.
//!
//! The unsigned form of earlier versions (`url`, `sha256`, and the binary's
//! own minisign `signature`) is still read: with a key configured the
//! binary's signature is then mandatory, and the fields only a signed
//! manifest may carry (`rollout`, `expires`, …) are refused.

pub mod gate;
pub mod rollout;

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use rollout::{Rollout, Step};

pub use crate::time::rfc3339;

/// The target triple this baton was built for, which picks an entry of
/// `targets`.
pub const TARGET: &str = env!("BATON_TARGET");

/// Why a manifest is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not the JSON object baton expects.
    #[error("not a valid manifest: {reason}")]
    Parse {
        /// The parser's message.
        reason: String,
    },
    /// A field holds a value baton cannot use.
    #[error("invalid manifest field `{field}`: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A field a signed manifest must carry is absent.
    #[error("a signed manifest must state `{field}`")]
    Missing {
        /// The field.
        field: &'static str,
    },
    /// The manifest has no artifact for this host.
    #[error("the manifest has no artifact for {target} (it lists {available})")]
    NoTarget {
        /// This host's target triple.
        target: &'static str,
        /// The triples it lists.
        available: String,
    },
    /// A key is configured and the manifest carries fields only a signed
    /// manifest may carry, with no signature beside it.
    #[error(
        "the manifest states `{field}` but has no signature (.minisig beside it), and \
         verify.minisign_key makes one mandatory"
    )]
    Unsigned {
        /// The first such field.
        field: &'static str,
    },
    /// The signature was made by a key that is not trusted.
    #[error(
        "the manifest is signed by an unknown key {key_id} (verify.minisign_key trusts {trusted})"
    )]
    UnknownKey {
        /// The signature's key id, hex as minisign prints it.
        key_id: String,
        /// The trusted keys' ids.
        trusted: String,
    },
    /// The signature does not verify over the manifest's bytes.
    #[error("bad manifest signature by key {key_id}: {reason} (the manifest was changed after signing, or the signature belongs to another one)")]
    BadSignature {
        /// The signature's key id.
        key_id: String,
        /// Why.
        reason: String,
    },
    /// The signature file cannot be read.
    #[error("unreadable manifest signature: {reason}")]
    UnreadableSignature {
        /// Why.
        reason: String,
    },
    /// The manifest's `expires` has passed.
    #[error("the manifest expired at {expires} (now {now}); a frozen mirror or a replayed manifest is refused")]
    Expired {
        /// `expires`, RFC 3339.
        expires: String,
        /// This host's clock, RFC 3339.
        now: String,
    },
}

/// A manifest as written on disk: what `baton publish` writes and
/// re-signs. Unknown fields are refused, so a misspelt `rollout` never
/// silently means 100 %.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// The release's version (semver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The artifact, relative to the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The artifact's sha256, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The artifact's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The binary's own minisign signature (the unsigned manifest form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// When it was published, RFC 3339 (`2026-11-23T10:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    /// After this, RFC 3339, the manifest is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// A percentage or a schedule; absent means 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// A channel name, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Per-target artifacts, keyed by target triple.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<BTreeMap<String, Artifact>>,
    /// The sha256 of the executable the release installs, hex; absent, it
    /// is `sha256` (a plain binary artifact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_sha256: Option<String>,
    /// Delta patches against earlier releases' binaries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<PatchDocument>,
    /// The gate that stops a bad release at its canaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<gate::GateDocument>,
    /// Versions pulled back from the fleet: a host running one of them
    /// takes this manifest's release even though it is lower, and no host
    /// takes them again. Honoured only in a signed manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub yanked: Vec<String>,
}

/// A delta patch as written in a manifest: a zstd `--patch-from` frame
/// that turns the binary whose sha256 is `from` into this release's binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchDocument {
    /// The sha256 of the binary it applies to, hex.
    pub from: String,
    /// The patch, relative to the manifest.
    pub url: String,
    /// The patch file's sha256, hex.
    pub sha256: String,
    /// The patch file's size in bytes.
    pub size: u64,
}

/// A checked delta patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// The sha256 of the binary it applies to.
    pub from: [u8; 32],
    /// The patch, relative to the manifest.
    pub url: String,
    /// The patch file's sha256.
    pub sha256: [u8; 32],
    /// The patch file's size in bytes.
    pub size: u64,
}

/// One artifact of a multi-target manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Relative to the manifest.
    pub url: String,
    /// sha256, hex.
    pub sha256: String,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The sha256 of the executable it installs, hex; absent, `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_sha256: Option<String>,
    /// Delta patches against earlier releases' binaries for this target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<PatchDocument>,
}

/// A checked manifest, with this host's artifact picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Whether its signature was verified by a trusted key: then its
    /// `sha256` binds the artifact and the binary needs no signature.
    pub signed: bool,
    /// The stated version.
    pub version: Option<String>,
    /// The artifact's URL or path, relative to the manifest.
    pub url: String,
    /// The artifact's sha256.
    pub sha256: Option<[u8; 32]>,
    /// The artifact's size.
    pub size: Option<u64>,
    /// The binary's own signature (the unsigned form).
    pub signature: Option<String>,
    /// When it was published.
    pub published_at: Option<SystemTime>,
    /// When it stops being trusted.
    pub expires: Option<SystemTime>,
    /// The rollout.
    pub rollout: Rollout,
    /// The channel, informational.
    pub channel: Option<String>,
    /// The sha256 of the executable the release installs, when the
    /// manifest states it apart from `sha256` (see [`Manifest::binary`]).
    pub binary_sha256: Option<[u8; 32]>,
    /// Delta patches against earlier binaries, for this host's target.
    pub patches: Vec<Patch>,
    /// The gate, when the manifest has one.
    pub gate: Option<gate::Gate>,
    /// The versions it yanks (see [`Document::yanked`]); a host acts on
    /// them only when [`Manifest::signed`].
    pub yanked: Vec<semver::Version>,
}

/// Verifies a minisign signature over `bytes` by one of `keys` (base64
/// public keys). Returns the key id that signed.
pub fn verify_signature(bytes: &[u8], signature: &str, keys: &[String]) -> Result<String, Error> {
    let unreadable = |reason: String| Error::UnreadableSignature { reason };
    let key_id = minisign::SignatureBox::from_string(signature)
        .map(|b| key_id(b.keynum()))
        .map_err(|e| unreadable(e.to_string()))?;
    let decoded =
        minisign_verify::Signature::decode(signature).map_err(|e| unreadable(e.to_string()))?;
    let mut trusted = Vec::new();
    for key in keys {
        let id = minisign::PublicKey::from_base64(key)
            .map(|k| key_id_of(&k))
            .unwrap_or_default();
        if id == key_id {
            let pk =
                minisign_verify::PublicKey::from_base64(key).map_err(|e| Error::BadSignature {
                    key_id: key_id.clone(),
                    reason: format!("bad key: {e}"),
                })?;
            return pk
                .verify(bytes, &decoded, false)
                .map(|()| key_id.clone())
                .map_err(|e| Error::BadSignature {
                    key_id: key_id.clone(),
                    reason: e.to_string(),
                });
        }
        trusted.push(id);
    }
    Err(Error::UnknownKey {
        key_id,
        trusted: trusted.join(", "),
    })
}

/// A key id as minisign prints it.
fn key_id(keynum: &[u8]) -> String {
    let mut le = [0u8; 8];
    le.copy_from_slice(&keynum[..8.min(keynum.len())]);
    format!("{:016X}", u64::from_le_bytes(le))
}

/// A public key's id, as minisign prints it.
pub fn key_id_of(key: &minisign::PublicKey) -> String {
    key_id(key.keynum())
}

impl Manifest {
    /// Parses `bytes`; `signed` says whether [`verify_signature`] passed
    /// over them. Picks the artifact for [`TARGET`].
    pub fn parse(bytes: &[u8], signed: bool) -> Result<Manifest, Error> {
        let doc: Document = serde_json::from_slice(bytes).map_err(|e| Error::Parse {
            reason: e.to_string(),
        })?;
        Manifest::from_document(doc, signed)
    }

    /// Checks a parsed document, picking the artifact for [`TARGET`].
    pub fn from_document(doc: Document, signed: bool) -> Result<Manifest, Error> {
        Manifest::from_document_on(doc, signed, TARGET)
    }

    /// Checks a parsed document as a host of any target it serves would
    /// (a publisher's or an operator's machine may be of another one):
    /// every target's artifact, then the manifest with [`TARGET`]'s when
    /// it has one, else the first target's.
    pub fn from_document_anywhere(doc: Document, signed: bool) -> Result<Manifest, Error> {
        let targets: Vec<String> = doc
            .targets
            .as_ref()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        for target in &targets {
            Manifest::from_document_on(doc.clone(), signed, target)?;
        }
        let on = if doc.url.is_some() || targets.iter().any(|t| t == TARGET) {
            TARGET
        } else {
            targets.first().map_or(TARGET, String::as_str)
        };
        Manifest::from_document_on(doc.clone(), signed, on)
    }

    /// Checks a parsed document, picking the artifact for `target`.
    pub fn from_document_on(doc: Document, signed: bool, target: &str) -> Result<Manifest, Error> {
        let field = |field: &'static str, reason: String| Error::Field { field, reason };
        let time =
            |name: &'static str, text: &Option<String>| -> Result<Option<SystemTime>, Error> {
                text.as_deref()
                    .map(|t| {
                        humantime::parse_rfc3339(t.trim()).map_err(|e| {
                            field(name, format!("{t:?} is not an RFC 3339 UTC time ({e})"))
                        })
                    })
                    .transpose()
            };
        let published_at = time("published_at", &doc.published_at)?;
        let expires = time("expires", &doc.expires)?;
        let rollout = doc.rollout.clone().unwrap_or_default();
        rollout.validate().map_err(|e| field("rollout", e))?;
        let gate = doc
            .gate
            .as_ref()
            .map(|g| g.check(&rollout))
            .transpose()
            .map_err(|e| field("gate", e))?;
        if matches!(rollout, Rollout::Schedule(_)) && published_at.is_none() {
            return Err(field(
                "rollout",
                "a schedule is counted from published_at, which is missing".into(),
            ));
        }
        if let Some(v) = &doc.version {
            if v.trim().is_empty() {
                return Err(field("version", "empty".into()));
            }
        }
        let yanked = yanked_versions(&doc)?;
        let chosen = doc.targets.as_ref().and_then(|t| t.get(target));
        let (url, sha256, size, binary_sha256, patches) = match (chosen, &doc.url) {
            (Some(a), _) => (
                a.url.clone(),
                Some(a.sha256.clone()),
                a.size,
                a.binary_sha256.clone(),
                &a.patches,
            ),
            (None, Some(url)) => (
                url.clone(),
                doc.sha256.clone(),
                doc.size,
                doc.binary_sha256.clone(),
                &doc.patches,
            ),
            (None, None) => {
                return Err(match &doc.targets {
                    Some(t) => Error::NoTarget {
                        target: TARGET,
                        available: t.keys().cloned().collect::<Vec<_>>().join(", "),
                    },
                    None => Error::Missing { field: "url" },
                })
            }
        };
        if url.trim().is_empty() {
            return Err(field("url", "empty".into()));
        }
        let digest = |name: &'static str, hex: &str| {
            crate::fsutil::parse_sha256(hex)
                .ok_or_else(|| field(name, format!("{hex:?} is not 64 hex digits")))
        };
        let sha256 = sha256.map(|hex| digest("sha256", &hex)).transpose()?;
        let binary_sha256 = binary_sha256
            .map(|hex| digest("binary_sha256", &hex))
            .transpose()?;
        let patches = patches
            .iter()
            .map(|p| {
                if p.url.trim().is_empty() {
                    return Err(field("patches", "a patch has an empty url".into()));
                }
                if p.size == 0 {
                    return Err(field("patches", format!("patch {} has size 0", p.url)));
                }
                Ok(Patch {
                    from: digest("patches", &p.from)?,
                    url: p.url.clone(),
                    sha256: digest("patches", &p.sha256)?,
                    size: p.size,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !patches.is_empty() && binary_sha256.or(sha256).is_none() {
            return Err(field(
                "patches",
                "patches need binary_sha256 (or sha256) to check what they produce".into(),
            ));
        }
        if signed {
            if doc.version.is_none() {
                return Err(Error::Missing { field: "version" });
            }
            if sha256.is_none() {
                return Err(Error::Missing { field: "sha256" });
            }
        }
        Ok(Manifest {
            signed,
            version: doc.version,
            url,
            sha256,
            size,
            signature: doc.signature,
            published_at,
            expires,
            rollout,
            channel: doc.channel,
            binary_sha256,
            patches,
            gate,
            yanked,
        })
    }

    /// Whether this manifest yanks `version` (compared as semver; a version
    /// that does not parse is never yanked). Says nothing about trust: see
    /// [`Manifest::signed`].
    pub fn yanks(&self, version: &str) -> bool {
        crate::version::parse_version(version).is_some_and(|v| self.yanked.contains(&v))
    }

    /// Refuses a manifest whose `expires` is not after `now`.
    pub fn check_expiry(&self, now: SystemTime) -> Result<(), Error> {
        match self.expires {
            Some(expires) if expires <= now => Err(Error::Expired {
                expires: rfc3339(expires),
                now: rfc3339(now),
            }),
            _ => Ok(()),
        }
    }

    /// The sha256 the installed executable must have: `binary_sha256`, or
    /// `sha256` when the artifact is the binary itself.
    pub fn binary(&self) -> Option<[u8; 32]> {
        self.binary_sha256.or(self.sha256)
    }

    /// The percentage in force at `now`.
    pub fn percent_at(&self, now: SystemTime) -> u8 {
        self.rollout.percent_at(self.published_at, now)
    }
}

/// The `yanked` list, checked: each entry a semver version, and never the
/// manifest's own version (a release cannot both be offered and pulled).
fn yanked_versions(doc: &Document) -> Result<Vec<semver::Version>, Error> {
    let field = |reason: String| Error::Field {
        field: "yanked",
        reason,
    };
    let own = doc
        .version
        .as_deref()
        .and_then(crate::version::parse_version);
    let mut all = Vec::with_capacity(doc.yanked.len());
    for text in &doc.yanked {
        let v = crate::version::parse_version(text)
            .ok_or_else(|| field(format!("{text:?} is not a semver version")))?;
        if own.as_ref() == Some(&v) {
            return Err(field(format!(
                "it yanks {text}, the version the manifest itself offers"
            )));
        }
        if !all.contains(&v) {
            all.push(v);
        }
    }
    Ok(all)
}

/// Refuses an unsigned document that carries fields only a signed one may
/// (when a key is configured).
fn refuse_unsigned_fields(doc: &Document) -> Result<(), Error> {
    let only_signed = [
        ("published_at", doc.published_at.is_some()),
        ("expires", doc.expires.is_some()),
        ("rollout", doc.rollout.is_some()),
        ("targets", doc.targets.is_some()),
        ("channel", doc.channel.is_some()),
        ("size", doc.size.is_some()),
        ("binary_sha256", doc.binary_sha256.is_some()),
        ("patches", !doc.patches.is_empty()),
        ("gate", doc.gate.is_some()),
        ("yanked", !doc.yanked.is_empty()),
    ];
    match only_signed.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(Error::Unsigned { field }),
        None => Ok(()),
    }
}

/// Runs the steps in order: with `keys`, the signature over the exact
/// bytes (when there is one), then parse, then expiry. Without a
/// signature and with keys, only the unsigned form is accepted, and the
/// pipeline then demands the binary's own signature.
pub fn load(
    bytes: &[u8],
    minisig: Option<&str>,
    keys: &[String],
    now: SystemTime,
) -> Result<Manifest, Error> {
    let signed = match (keys.is_empty(), minisig) {
        (true, _) => false,
        (false, Some(sig)) => {
            verify_signature(bytes, sig, keys)?;
            true
        }
        (false, None) => {
            let doc: Document = serde_json::from_slice(bytes).map_err(|e| Error::Parse {
                reason: e.to_string(),
            })?;
            refuse_unsigned_fields(&doc)?;
            false
        }
    };
    let manifest = Manifest::parse(bytes, signed)?;
    manifest.check_expiry(now)?;
    Ok(manifest)
}

/// Whether `bytes` look like a manifest rather than an artifact: a JSON
/// object (after leading whitespace).
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

#[cfg(test)]
mod tests;
