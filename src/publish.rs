//! The publisher's half: `baton keygen` and `baton publish` to a directory
//! (which any static HTTP host can serve, or a `file` source can watch), an
//! S3 prefix (`s3://bucket/prefix/`) or a GitHub release
//! (`github:owner/repo@tag`); see [`target`].
//!
//! A publish uploads the artifacts (into a directory each through a temp
//! file renamed into place; to S3 with its `ChecksumSHA256`, which S3
//! checks), writes the signature `manifest.json.minisig`, and replaces
//! `manifest.json` last, so a host never sees a manifest whose artifact is
//! missing. Between the last two writes a host may read the old manifest
//! with the new signature: it refuses that once and reads both again at its
//! next poll. Re-publishing without artifacts re-signs the current manifest
//! with a new rollout (`--rollout 0` halts). On GitHub an asset cannot be
//! replaced in place: the old one is deleted just before the new one is
//! uploaded, so a host polling in that moment finds no manifest once.
//!
//! # Delta patches and the release history
//!
//! Every publish with artifacts records what it published in
//! [`HISTORY`] (`releases.json`) at the target, newest first, at most
//! [`HISTORY_KEEP`] releases: each one's version and, per artifact, its
//! target triple (absent for a top-level artifact), `url`, `sha256`, `size`
//! and `binary_sha256` (the executable's digest, unpacked from an archive).
//! Only publishers read it; hosts never do.
//!
//! With [`Publish::patches`] = N > 0, each new artifact gets a zstd patch
//! ([`crate::delta::make`]) from the binaries of the last N other releases
//! in the history with an artifact for the same target: the old artifact is
//! downloaded from the target, checked against the history's `sha256`, its
//! binary extracted and checked against its `binary_sha256`. Archives get
//! no patches: a host applying one installs the binary alone, where one
//! downloading the archive installs all its files. A patch that
//! is not at least twice smaller than the compressed artifact (an archive's
//! own size; a plain binary's size compressed with zstd at level 3) is
//! skipped. A patch that cannot be made (the old artifact gone or replaced,
//! a digest mismatch) is a warning naming why, never a failed publish; a
//! patch that cannot be uploaded fails the publish like an artifact. Patches
//! are uploaded after the artifacts and before the signature and the
//! manifest, which lists them with the artifact's `binary_sha256`; the
//! history is written after the manifest.
//! Without patches for an artifact, the manifest carries neither field, as
//! before.

pub mod target;
pub mod watch;
pub mod yank;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{hash_file, IoError};
use crate::manifest::{self, rfc3339, Artifact, Document, PatchDocument, Rollout};
use crate::release::archive;
use yank::yank;

/// The manifest's file name in a publish directory.
pub const MANIFEST: &str = "manifest.json";
/// The signature's file name beside it.
pub const SIGNATURE: &str = "manifest.json.minisig";
/// The environment variable holding a secret key's password (empty or
/// unset: the key is not encrypted).
pub const PASSWORD_ENV: &str = "BATON_KEY_PASSWORD";
/// The publisher's release history beside the manifest (see the module
/// docs); hosts never read it.
pub const HISTORY: &str = "releases.json";
/// The history's detached minisign signature, written by a signed publish:
/// a yank takes artifact digests from the history only when it verifies.
pub const HISTORY_SIGNATURE: &str = "releases.json.minisig";
/// How many releases [`HISTORY`] keeps, newest first.
pub const HISTORY_KEEP: usize = 10;
/// How many earlier releases `baton publish` makes patches from when not
/// told (`--patches`).
pub const DEFAULT_PATCHES: usize = 3;
/// A patch must be at most this fraction (1/N) of the compressed artifact's
/// size, else it is not worth a host's trouble and is skipped.
pub const PATCH_MIN_RATIO: u64 = 2;
/// The zstd level a plain binary is compressed at to compare a patch with.
const COMPARE_LEVEL: i32 = 3;

/// Why a publish or keygen failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A key could not be made, read or used.
    #[error("key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The existing manifest cannot be re-signed.
    #[error("cannot re-sign {path}: {reason}")]
    Resign {
        /// The manifest.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The request does not make a valid manifest.
    #[error("{0}")]
    Invalid(String),
    /// The target (S3, GitHub) refused or failed a request.
    #[error("cannot {what}: {reason}")]
    Remote {
        /// What was being done, and where.
        what: String,
        /// Why, as the service or the connection said.
        reason: String,
    },
}

/// [`crate::fsutil::io`], into this module's error.
pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| IoError::new(what, path, source).into()
}

/// [`crate::fsutil::fsync_dir`], into this module's error.
fn fsync_dir(dir: &Path) -> Result<(), Error> {
    Ok(crate::fsutil::fsync_dir(dir)?)
}

/// One `baton publish`.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// Where to publish.
    pub to: target::Destination,
    /// The version; required with artifacts.
    pub version: Option<String>,
    /// Artifacts: `(target triple, path)`; one without a triple becomes the
    /// manifest's top-level `url`.
    pub artifacts: Vec<(Option<String>, PathBuf)>,
    /// The rollout; with artifacts, absent means 100 %; re-signing, absent
    /// keeps the current one.
    pub rollout: Option<Rollout>,
    /// How long the manifest stays valid, from now.
    pub expires: Option<Duration>,
    /// The gate; absent, the target's manifest keeps the one it has.
    pub gate: Option<manifest::gate::GateDocument>,
    /// A channel name.
    pub channel: Option<String>,
    /// The minisign secret key to sign with.
    pub sign: Option<PathBuf>,
    /// Now, for `published_at` and `expires`.
    pub now: Option<SystemTime>,
    /// Make delta patches from the binaries of the last this many releases
    /// published to the same target (0: none). `baton publish` defaults to
    /// [`DEFAULT_PATCHES`]; `Publish::default()` makes none.
    pub patches: usize,
    /// The executable's file name inside archive artifacts; absent, the
    /// only file with an executable mode bit in the archive.
    pub binary: Option<String>,
    /// Versions to yank: the manifest is re-signed to name the newest
    /// release in the history that is not yanked (or [`Publish::version`]),
    /// with these added to its signed `yanked` list (see [`yank`]).
    pub yank: Vec<String>,
}

/// What a publish did, for `baton publish` to print.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The manifest written.
    pub document: Document,
    /// The patches made and uploaded, in manifest order.
    pub patches: Vec<MadePatch>,
    /// Patches made and then not kept (not small enough, or the same binary
    /// as the new one), each saying why; also logged at info.
    pub skipped: Vec<String>,
    /// Patches that could not be made, and other problems that did not
    /// fail the publish, each naming its cause; also logged as warnings.
    pub warnings: Vec<String>,
}

/// A patch uploaded with a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadePatch {
    /// Its file name at the target.
    pub name: String,
    /// The artifact's target triple; `None` for a top-level artifact.
    pub target: Option<String>,
    /// The release whose binary it applies to.
    pub from_version: String,
    /// Its size in bytes.
    pub size: u64,
    /// The compressed size it was compared with: the archive's own, or the
    /// plain binary's compressed with zstd at level 3.
    pub compressed: u64,
}

/// The publisher's release history, [`HISTORY`] at the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Published releases, newest first, at most [`HISTORY_KEEP`].
    pub releases: Vec<Published>,
}

/// One release in [`History`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Its version.
    pub version: String,
    /// When it was published, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    /// Its artifacts.
    pub artifacts: Vec<PublishedArtifact>,
}

/// One artifact of a [`Published`] release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedArtifact {
    /// Its target triple; absent for a manifest's top-level artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Its name at the target (the manifest's `url`).
    pub url: String,
    /// Its sha256, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The sha256 of the executable it installs, hex (the artifact's own
    /// for a plain binary); absent when it could not be extracted, and then
    /// no patch is made from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_sha256: Option<String>,
}

/// Writes a new key pair: `<path>` (secret, mode 0600, encrypted with
/// `$BATON_KEY_PASSWORD` when set) and `<path>.pub`. Refuses to overwrite.
/// Returns the public key in base64, for `verify.minisign_key`.
pub fn keygen(path: &Path) -> Result<String, Error> {
    let public = path.with_extension("pub");
    for p in [path, public.as_path()] {
        if p.exists() {
            return Err(Error::Key {
                path: p.to_owned(),
                reason: "exists already; remove it first or choose another name".into(),
            });
        }
    }
    let key_err = |reason: String| Error::Key {
        path: path.to_owned(),
        reason,
    };
    let password = std::env::var(PASSWORD_ENV).unwrap_or_default();
    let pair = minisign::KeyPair::generate_encrypted_keypair(Some(password))
        .map_err(|e| key_err(e.to_string()))?;
    let secret = pair
        .sk
        .to_box(Some("baton secret key"))
        .map_err(|e| key_err(e.to_string()))?
        .into_string();
    let public_text = pair
        .pk
        .to_box()
        .map_err(|e| key_err(e.to_string()))?
        .into_string();
    write_new(path, secret.as_bytes(), 0o600)?;
    write_new(&public, public_text.as_bytes(), 0o644)?;
    Ok(pair.pk.to_base64())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io("write", path))
}

/// A secret key file and its public half.
fn load_key(path: &Path) -> Result<(minisign::SecretKey, minisign::PublicKey), Error> {
    let key_err = |reason: String| Error::Key {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    let password = std::env::var(PASSWORD_ENV).unwrap_or_default();
    let sk = minisign::SecretKeyBox::from_string(&text)
        .and_then(|b| b.into_secret_key(Some(password)))
        .map_err(|e| {
            key_err(format!(
                "not a usable minisign secret key ({e}); an encrypted key needs its password in ${PASSWORD_ENV}"
            ))
        })?;
    let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| key_err(e.to_string()))?;
    Ok((sk, pk))
}

/// Publishes to `p.to`; returns the manifest written. Starts its own
/// async runtime: call it outside one (or use [`publish_async`]).
pub fn publish(p: &Publish) -> Result<Document, Error> {
    publish_report(p).map(|r| r.document)
}

/// [`publish`], returning what it did.
pub fn publish_report(p: &Publish) -> Result<Report, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the async runtime: {e}")))?
        .block_on(publish_report_async(p))
}

/// Publishes to `p.to`, whatever the target: the manifest is built and
/// checked before anything is uploaded; artifacts go first, then patches,
/// the history, the signature, and the manifest last.
pub async fn publish_async(p: &Publish) -> Result<Document, Error> {
    publish_report_async(p).await.map(|r| r.document)
}

/// [`publish_async`], returning what it did.
pub async fn publish_report_async(p: &Publish) -> Result<Report, Error> {
    let now = p.now.unwrap_or_else(SystemTime::now);
    let key = p.sign.as_deref().map(load_key).transpose()?;
    let mut target = target::open(&p.to).await?;
    let old_signature = target.read(SIGNATURE).await?;
    if key.is_none() && old_signature.is_some() {
        return Err(Error::Invalid(format!(
            "{} exists: hosts that trust its key would refuse an unsigned manifest; pass --sign KEY",
            p.to.show(SIGNATURE)
        )));
    }
    let mut report = Report::default();
    // Patches are made here, and live here until they are uploaded.
    let work = tempfile::Builder::new()
        .prefix("baton-publish-")
        .tempdir()
        .map_err(io("create", &std::env::temp_dir()))?;
    let (mut doc, mut uploads) = if !p.yank.is_empty() && p.artifacts.is_empty() {
        let old = target.read(MANIFEST).await?;
        let history = target.read(HISTORY).await?;
        let history_signature = target.read(HISTORY_SIGNATURE).await?;
        let doc = yank(
            p,
            old,
            old_signature.as_deref(),
            history.map(|h| (h, history_signature)),
            key.as_ref(),
            now,
        )?;
        (doc, Vec::new())
    } else if p.artifacts.is_empty() {
        let old = target.read(MANIFEST).await?;
        let doc = resign(
            p,
            &p.to.show(MANIFEST),
            old,
            old_signature.as_deref(),
            key.as_ref(),
        )?;
        (doc, Vec::new())
    } else {
        let (mut doc, uploads) = fresh(p, now)?;
        // The fleet's gate is a policy, not a release's, and a yank stands
        // until a person lifts it: both carry over.
        let old = match target.read(MANIFEST).await? {
            Some(old) => carried(
                p,
                &p.to.show(MANIFEST),
                &old,
                old_signature.as_deref(),
                key.as_ref(),
            )?,
            None => None,
        };
        if let Some(old) = old {
            if p.gate.is_none() {
                doc.gate = old.gate;
            }
            doc.yanked = old.yanked;
        }
        let version = doc.version.clone().unwrap_or_default();
        if yank::listed(&doc.yanked, &version) {
            return Err(Error::Invalid(format!(
                "version {version} is yanked at {}: hosts refuse it for good; publish a new \
                 version",
                p.to.show(MANIFEST)
            )));
        }
        // A yank with the artifacts of the release to go back to: they are
        // hashed here, not taken from the history.
        if !p.yank.is_empty() {
            yank::add(p, &mut doc, key.is_some())?;
        }
        (doc, uploads)
    };
    if let Some(gate) = &p.gate {
        doc.gate = Some(gate.clone());
    }
    // A canary the schedule implied is written down, so that a later
    // re-sign at a fixed percentage (`--rollout 0` to halt) keeps it.
    if let (Some(gate), Some(manifest::Rollout::Schedule(steps))) = (&mut doc.gate, &doc.rollout) {
        if gate.canary.is_none() {
            gate.canary = steps.first().map(|s| s.percent);
        }
    }
    if let Some(rollout) = &p.rollout {
        doc.rollout = Some(rollout.clone());
    }
    if let Some(d) = p.expires {
        let expires = now
            .checked_add(d)
            .ok_or_else(|| Error::Invalid(format!("--expires {d:?} is past any date")))?;
        doc.expires = Some(rfc3339(expires));
    }
    if let Some(c) = &p.channel {
        doc.channel = Some(c.clone());
    }
    // Check what hosts will check, before anything is replaced (and before
    // patches take their time; again with them).
    let check = |doc: &Document| {
        manifest::Manifest::from_document_anywhere(doc.clone(), key.is_some())
            .map(drop)
            .map_err(|e| Error::Invalid(format!("the manifest would be refused: {e}")))
    };
    check(&doc)?;
    let history = if p.artifacts.is_empty() {
        None
    } else {
        let (history, read) = read_history(&p.to, &mut *target, &mut report).await.unzip();
        let binaries = make_patches(
            p,
            &mut *target,
            &mut doc,
            &mut uploads,
            history.as_ref(),
            work.path(),
            &mut report,
        )
        .await;
        check(&doc)?;
        // A signed history vouches for every release it lists: one this
        // key did not sign starts afresh (it served for patches only).
        let trusted = match &key {
            Some((_, pk)) => {
                let read = read.flatten();
                history_verifies(&p.to, &mut *target, read.as_deref(), pk, &mut report).await
            }
            None => true,
        };
        history.map(|h| {
            let mut h = if trusted { h } else { History::default() };
            record(&mut h, &doc, &uploads, &binaries);
            let mut bytes = serde_json::to_vec_pretty(&h).expect("a history serializes");
            bytes.push(b'\n');
            bytes
        })
    };
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("a manifest serializes");
    bytes.push(b'\n');
    let published = format!(
        "{} published {}",
        doc.version.as_deref().unwrap_or("?"),
        doc.published_at.as_deref().unwrap_or("?")
    );
    let signature = key
        .as_ref()
        .map(|k| sign(p, k, &bytes, &format!("baton manifest {published}")))
        .transpose()?;
    // The history is signed too: a yank names artifacts from it.
    let history = history
        .map(|h| -> Result<_, Error> {
            let signature = key
                .as_ref()
                .map(|k| sign(p, k, &h, &format!("baton release history {published}")))
                .transpose()?;
            Ok((h, signature))
        })
        .transpose()?;
    // Artifacts, then patches (in that order in `uploads`).
    for upload in &uploads {
        target
            .put_file(&upload.name, &upload.path, upload.sha256, upload.size)
            .await?;
    }
    if let Some(sig) = signature {
        target.put_bytes(SIGNATURE, sig).await?;
    }
    target.put_bytes(MANIFEST, bytes).await?;
    // The history only after the manifest: a publish that failed before it
    // must not list a release hosts never saw (a later publish would spend
    // a patch on it). Hosts never read it, so losing it costs only patches.
    if let Some((history, signature)) = history {
        let mut written = target.put_bytes(HISTORY, history).await;
        if let (Ok(()), Some(signature)) = (&written, signature) {
            written = target.put_bytes(HISTORY_SIGNATURE, signature).await;
        }
        if let Err(e) = written {
            let warning = format!(
                "cannot record this release in {}: {}; the next publish makes no patch from it",
                p.to.show(HISTORY),
                crate::errors::display_chain(&e)
            );
            tracing::warn!("{warning}");
            report.warnings.push(warning);
        }
    }
    report.document = doc;
    Ok(report)
}

/// Whether `signature` is a minisign signature of `bytes` by `pk`, and if
/// not, why.
pub(super) fn verify_with(
    bytes: &[u8],
    signature: &[u8],
    pk: &minisign::PublicKey,
) -> Result<(), String> {
    let signature =
        std::str::from_utf8(signature).map_err(|_| "the signature is not UTF-8 text".to_owned())?;
    manifest::verify_signature(bytes, signature, &[pk.to_base64()])
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Whether the target's history, `bytes` as read (none: there is no
/// history), is signed by `pk`. When it is not, the signed history written
/// next lists only the release being published, and the report says why.
async fn history_verifies(
    to: &target::Destination,
    target: &mut dyn target::Target,
    bytes: Option<&[u8]>,
    pk: &minisign::PublicKey,
    report: &mut Report,
) -> bool {
    let Some(bytes) = bytes else {
        return true;
    };
    let signature = target.read(HISTORY_SIGNATURE).await.ok().flatten();
    let verified = signature.is_some_and(|s| verify_with(bytes, &s, pk).is_ok());
    if !verified {
        warn(
            report,
            format!(
                "{} is not signed by this key (an unsigned publish, a key rotation, or an edit): \
                 a new signed history starts with this release, and a yank to an earlier one \
                 needs its artifacts in hand",
                to.show(HISTORY)
            ),
        );
    }
    verified
}

/// A minisign signature of `bytes` by `key` (`p.sign`), with `comment`
/// trusted.
fn sign(
    p: &Publish,
    (sk, pk): &(minisign::SecretKey, minisign::PublicKey),
    bytes: &[u8],
    comment: &str,
) -> Result<Vec<u8>, Error> {
    let sig = minisign::sign(
        Some(pk),
        sk,
        std::io::Cursor::new(bytes),
        Some(comment),
        None,
    )
    .map_err(|e| Error::Key {
        path: p.sign.clone().unwrap_or_default(),
        reason: format!("cannot sign: {e}"),
    })?;
    Ok(sig.into_string().into_bytes())
}

/// An artifact or a patch to upload, hashed before.
struct Upload {
    name: String,
    path: PathBuf,
    sha256: [u8; 32],
    size: u64,
    /// The artifact's target triple (a patch's: its artifact's).
    target: Option<String>,
    /// Whether it is a patch.
    patch: bool,
}

/// A new manifest for `p.artifacts`, and the uploads it needs.
fn fresh(p: &Publish, now: SystemTime) -> Result<(Document, Vec<Upload>), Error> {
    let version = p
        .version
        .clone()
        .ok_or_else(|| Error::Invalid("publishing artifacts needs --version".into()))?;
    if crate::version::parse_version(&version).is_none() {
        return Err(Error::Invalid(format!(
            "--version {version:?} is not semver"
        )));
    }
    let mut doc = Document {
        version: Some(version),
        published_at: Some(rfc3339(now)),
        rollout: Some(p.rollout.clone().unwrap_or_default()),
        ..Document::default()
    };
    let mut uploads: Vec<Upload> = Vec::new();
    for (target, path) in &p.artifacts {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::Invalid(format!("{} names no file", path.display())))?;
        if matches!(name.as_str(), MANIFEST | SIGNATURE | HISTORY) {
            return Err(Error::Invalid(format!(
                "an artifact may not be named {name}"
            )));
        }
        if uploads.iter().any(|u| u.name == name) {
            return Err(Error::Invalid(format!("two artifacts are named {name}")));
        }
        let (sha256, size) = hash_file(path)?;
        let artifact = Artifact {
            url: name.clone(),
            sha256: hex::encode(sha256),
            size: Some(size),
            binary_sha256: None,
            patches: Vec::new(),
        };
        uploads.push(Upload {
            name,
            path: path.clone(),
            sha256,
            size,
            target: target.clone(),
            patch: false,
        });
        match target {
            Some(triple) => {
                let targets = doc.targets.get_or_insert_with(Default::default);
                if targets.insert(triple.clone(), artifact).is_some() {
                    return Err(Error::Invalid(format!("two artifacts for {triple}")));
                }
            }
            None if doc.url.is_some() => {
                return Err(Error::Invalid(
                    "more than one artifact: name each one's target as TRIPLE=PATH".into(),
                ))
            }
            None => {
                doc.url = Some(artifact.url);
                doc.sha256 = Some(artifact.sha256);
                doc.size = artifact.size;
            }
        }
    }
    Ok((doc, uploads))
}

/// Logs `text` as a warning and keeps it in the report.
fn warn(report: &mut Report, text: String) {
    tracing::warn!("{text}");
    report.warnings.push(text);
}

/// Logs `text` and keeps it in the report's skipped patches.
fn skip(report: &mut Report, text: String) {
    tracing::info!("{text}");
    report.skipped.push(text);
}

/// The history at the target, and its bytes as read: empty when there is
/// none, or when it is not one (said in a warning; it is then replaced).
/// `None` when it cannot be read: then no patch is made and the history
/// is left alone.
async fn read_history(
    to: &target::Destination,
    target: &mut dyn target::Target,
    report: &mut Report,
) -> Option<(History, Option<Vec<u8>>)> {
    match target.read(HISTORY).await {
        Ok(None) => Some((History::default(), None)),
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(history) => Some((history, Some(bytes))),
            Err(e) => {
                warn(
                    report,
                    format!(
                        "{} is not a release history ({e}): no patches this time, and a new history replaces it",
                        to.show(HISTORY)
                    ),
                );
                Some((History::default(), Some(bytes)))
            }
        },
        Err(e) => {
            warn(
                report,
                format!(
                    "no patches, and the history is not updated: {}",
                    crate::errors::display_chain(&e)
                ),
            );
            None
        }
    }
}

/// Adds the release being published to the front of `history`, replacing
/// an entry of the same version; older entries lose the artifacts whose
/// names this publish replaces, and only [`HISTORY_KEEP`] are kept.
fn record(
    history: &mut History,
    doc: &Document,
    uploads: &[Upload],
    binaries: &[Option<[u8; 32]>],
) {
    let version = doc.version.clone().unwrap_or_default();
    let artifacts: Vec<PublishedArtifact> = uploads
        .iter()
        .filter(|u| !u.patch)
        .zip(binaries)
        .map(|(u, binary)| PublishedArtifact {
            target: u.target.clone(),
            url: u.name.clone(),
            sha256: hex::encode(u.sha256),
            size: u.size,
            binary_sha256: binary.map(hex::encode),
        })
        .collect();
    history.releases.retain_mut(|r| {
        r.artifacts
            .retain(|a| !uploads.iter().any(|u| u.name == a.url));
        r.version != version && !r.artifacts.is_empty()
    });
    history.releases.insert(
        0,
        Published {
            version,
            published_at: doc.published_at.clone(),
            artifacts,
        },
    );
    history.releases.truncate(HISTORY_KEEP);
}

/// An artifact's executable, as hosts install it.
struct Binary {
    /// The executable: the artifact itself, or unpacked from it.
    path: PathBuf,
    /// Its sha256.
    sha256: [u8; 32],
    /// Whether the artifact is an archive.
    archive: bool,
    /// The executable's name in the archive.
    name: Option<String>,
}

/// Runs blocking work (hashing, unpacking, compressing) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a publish task does not panic")
}

/// The executable of the artifact at `path` (named `name`), unpacked into
/// the new directory `dest` when it is an archive; `binary` names it in
/// the archive, else it is the archive's only executable file.
fn extract(path: &Path, name: &str, binary: Option<&str>, dest: &Path) -> Result<Binary, String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let kind = archive::kind(name, &mut file)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if kind == archive::Kind::Plain {
        let (sha256, _) = hash_file(path).map_err(|e| crate::errors::display_chain(&e))?;
        return Ok(Binary {
            path: path.to_owned(),
            sha256,
            archive: false,
            name: None,
        });
    }
    let binary = match binary {
        Some(b) => b.to_owned(),
        None => only_executable(path, kind)?,
    };
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    archive::unpack(file, kind, &binary, dest, archive::Limits::default())
        .map_err(|e| crate::errors::display_chain(&e))?;
    let unpacked = dest.join(&binary);
    let (sha256, _) = hash_file(&unpacked).map_err(|e| crate::errors::display_chain(&e))?;
    Ok(Binary {
        path: unpacked,
        sha256,
        archive: true,
        name: Some(binary),
    })
}

/// The file name of the only regular file with an executable mode bit in
/// an archive.
fn only_executable(path: &Path, kind: archive::Kind) -> Result<String, String> {
    let unreadable = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| unreadable(&e))?;
    let mut names: Vec<String> = Vec::new();
    let mut add = |entry: &str| {
        if let Some(n) = Path::new(entry).file_name() {
            let n = n.to_string_lossy().into_owned();
            if !names.contains(&n) {
                names.push(n);
            }
        }
    };
    match kind {
        archive::Kind::TarGz => {
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
            for entry in tar.entries().map_err(|e| unreadable(&e))? {
                let entry = entry.map_err(|e| unreadable(&e))?;
                let header = entry.header();
                if header.entry_type().is_file()
                    && header.mode().map_err(|e| unreadable(&e))? & 0o111 != 0
                {
                    add(&entry.path().map_err(|e| unreadable(&e))?.to_string_lossy());
                }
            }
        }
        archive::Kind::Zip => {
            let mut zip = zip::ZipArchive::new(file).map_err(|e| unreadable(&e))?;
            for i in 0..zip.len() {
                let entry = zip.by_index_raw(i).map_err(|e| unreadable(&e))?;
                if entry.is_file() && entry.unix_mode().is_some_and(|m| m & 0o111 != 0) {
                    add(entry.name());
                }
            }
        }
        archive::Kind::Plain => unreachable!("only archives hold executables"),
    }
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "{} holds no executable file; name the binary with --binary NAME",
            path.display()
        )),
        several => Err(format!(
            "{} holds several executable files ({}); name the binary with --binary NAME",
            path.display(),
            several.join(", ")
        )),
    }
}

/// `path`'s size compressed with zstd at [`COMPARE_LEVEL`].
fn compressed_size(path: &Path) -> Result<u64, String> {
    struct Count(u64);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut count = Count(0);
    zstd::stream::copy_encode(file, &mut count, COMPARE_LEVEL)
        .map_err(|e| format!("cannot compress {}: {e}", path.display()))?;
    Ok(count.0)
}

/// A patch's file name: `<artifact>.from-<version>.zst`, with characters
/// some stores rename (GitHub) replaced by `_`.
fn patch_name(artifact: &str, from_version: &str) -> String {
    format!("{artifact}.from-{from_version}.zst")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The manifest slots of the artifact for `target`: its `binary_sha256`
/// and `patches`.
fn slots<'d>(
    doc: &'d mut Document,
    target: &Option<String>,
) -> (&'d mut Option<String>, &'d mut Vec<PatchDocument>) {
    match target {
        Some(triple) => {
            let a = doc
                .targets
                .as_mut()
                .and_then(|t| t.get_mut(triple))
                .expect("fresh listed every artifact's target");
            (&mut a.binary_sha256, &mut a.patches)
        }
        None => (&mut doc.binary_sha256, &mut doc.patches),
    }
}

/// Makes the patches `p.patches` asks for, appends them to `uploads` and
/// lists them in `doc`; returns each artifact's binary digest (for the
/// history), in `uploads`' order. Nothing here fails the publish: every
/// patch not made is a warning in `report`.
async fn make_patches(
    p: &Publish,
    target: &mut dyn target::Target,
    doc: &mut Document,
    uploads: &mut Vec<Upload>,
    history: Option<&History>,
    work: &Path,
    report: &mut Report,
) -> Vec<Option<[u8; 32]>> {
    let version = doc.version.clone().unwrap_or_default();
    let mut binaries = Vec::new();
    let artifacts = uploads.len();
    for i in 0..artifacts {
        let (name, path, size, triple) = {
            let u = &uploads[i];
            (u.name.clone(), u.path.clone(), u.size, u.target.clone())
        };
        let new = {
            let (path, name, binary, dest) = (
                path.clone(),
                name.clone(),
                p.binary.clone(),
                work.join(format!("new-{i}")),
            );
            blocking(move || extract(&path, &name, binary.as_deref(), &dest)).await
        };
        let new = match new {
            Ok(new) => new,
            Err(reason) => {
                let text = format!("cannot extract the binary of {name}: {reason}");
                if p.patches > 0 {
                    warn(report, format!("no patches for {name}: {text}"));
                } else {
                    tracing::debug!("{text}");
                }
                binaries.push(None);
                continue;
            }
        };
        binaries.push(Some(new.sha256));
        let Some(history) = history.filter(|_| p.patches > 0) else {
            continue;
        };
        if new.archive {
            // A host applying a patch installs the binary alone, one
            // downloading the archive installs all its files: the two must
            // not differ, so archives get no patches.
            skip(
                report,
                format!(
                    "no patches for {name}: it is an archive, and a host taking a patch would \
                     install its binary without the archive's other files; publish the plain \
                     binary to get patches"
                ),
            );
            continue;
        }
        let bases = history
            .releases
            .iter()
            .filter(|r| r.version != version)
            .filter_map(|r| {
                r.artifacts
                    .iter()
                    .find(|a| a.target == triple)
                    .map(|a| (r.version.clone(), a.clone()))
            })
            .take(p.patches)
            .collect::<Vec<_>>();
        let mut compressed = new.archive.then_some(size);
        let mut done = vec![hex::encode(new.sha256)];
        let mut made = Vec::new();
        for (j, (from_version, old)) in bases.into_iter().enumerate() {
            let what = format!("patch for {name} from {from_version}");
            let Some(old_binary) = old.binary_sha256.clone() else {
                warn(
                    report,
                    format!(
                        "{what} not made: the history records no binary digest for {}",
                        old.url
                    ),
                );
                continue;
            };
            if done.contains(&old_binary.to_ascii_lowercase()) {
                skip(
                    report,
                    format!("{what} not made: its binary is the same as this release's or a newer one's"),
                );
                continue;
            }
            done.push(old_binary.to_ascii_lowercase());
            let dir = work.join(format!("old-{i}-{j}"));
            let binary = p.binary.clone().or_else(|| new.name.clone());
            let patch = match make_one(target, &old, &old_binary, &new, binary, &dir).await {
                Ok(patch) => patch,
                Err(reason) => {
                    warn(report, format!("{what} not made: {reason}"));
                    continue;
                }
            };
            let compressed = match compressed {
                Some(c) => c,
                None => {
                    let from = new.path.clone();
                    match blocking(move || compressed_size(&from)).await {
                        Ok(c) => *compressed.insert(c),
                        Err(reason) => {
                            warn(report, format!("no patches for {name}: {reason}"));
                            break;
                        }
                    }
                }
            };
            if patch.size.saturating_mul(PATCH_MIN_RATIO) > compressed {
                skip(
                    report,
                    format!(
                        "{what} skipped: it is {} bytes, not {PATCH_MIN_RATIO}× smaller than the {compressed}-byte compressed artifact",
                        patch.size
                    ),
                );
                continue;
            }
            let patch_file = patch_name(&name, &from_version);
            if [MANIFEST, SIGNATURE, HISTORY].contains(&patch_file.as_str())
                || uploads.iter().any(|u| u.name == patch_file)
            {
                warn(
                    report,
                    format!("{what} not made: its name {patch_file} is taken by another file of this publish"),
                );
                continue;
            }
            tracing::info!(
                "{what}: {patch_file}, {} bytes ({compressed} compressed)",
                patch.size
            );
            made.push(PatchDocument {
                from: old_binary.to_ascii_lowercase(),
                url: patch_file.clone(),
                sha256: hex::encode(patch.sha256),
                size: patch.size,
            });
            report.patches.push(MadePatch {
                name: patch_file.clone(),
                target: triple.clone(),
                from_version,
                size: patch.size,
                compressed,
            });
            uploads.push(Upload {
                name: patch_file,
                path: patch.path,
                sha256: patch.sha256,
                size: patch.size,
                target: triple.clone(),
                patch: true,
            });
        }
        if !made.is_empty() {
            let (binary_sha256, patches) = slots(doc, &triple);
            *binary_sha256 = Some(hex::encode(new.sha256));
            *patches = made;
        }
    }
    binaries
}

/// A patch from `old` (an artifact in the history, whose binary is
/// `old_binary`, hex) to `new`, made in the new directory `dir`. The error
/// says why it could not be made.
async fn make_one(
    target: &mut dyn target::Target,
    old: &PublishedArtifact,
    old_binary: &str,
    new: &Binary,
    binary: Option<String>,
    dir: &Path,
) -> Result<PatchFile, String> {
    let digest = |hex: &str, what: &str| {
        crate::config::parse_sha256(hex)
            .ok_or_else(|| format!("the history's {what} for {} is not 64 hex digits", old.url))
    };
    let want = digest(&old.sha256, "sha256")?;
    let want_binary = digest(old_binary, "binary_sha256")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let artifact = dir.join("artifact");
    let got = target
        .get_file(&old.url, &artifact, old.size)
        .await
        .map_err(|e| {
            format!(
                "cannot download {}: {}",
                old.url,
                crate::errors::display_chain(&e)
            )
        })?;
    let Some((sha256, _)) = got else {
        return Err(format!(
            "its artifact {} is no longer at the target",
            old.url
        ));
    };
    if sha256 != want {
        return Err(format!(
            "its artifact {} has sha256 {}, not the {} the history records (replaced since?)",
            old.url,
            hex::encode(sha256),
            old.sha256
        ));
    }
    let (name, unpack) = (old.url.clone(), dir.join("unpacked"));
    let old_bin = blocking(move || extract(&artifact, &name, binary.as_deref(), &unpack))
        .await
        .map_err(|reason| format!("cannot extract the binary of {}: {reason}", old.url))?;
    if old_bin.sha256 != want_binary {
        return Err(format!(
            "the binary in {} has sha256 {}, not the {} the history records",
            old.url,
            hex::encode(old_bin.sha256),
            old_binary
        ));
    }
    let patch = dir.join("patch.zst");
    let (from, to, out) = (old_bin.path, new.path.clone(), patch.clone());
    blocking(move || -> Result<(), String> {
        let file = std::fs::File::create(&out)
            .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        let mut writer = std::io::BufWriter::new(file);
        crate::delta::make(&from, &to, crate::delta::DEFAULT_LEVEL, &mut writer)
            .map_err(|e| crate::errors::display_chain(&e))?;
        writer
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", out.display()))
    })
    .await?;
    let (sha256, size) = hash_file(&patch).map_err(|e| crate::errors::display_chain(&e))?;
    Ok(PatchFile {
        path: patch,
        size,
        sha256,
    })
}

/// A patch made, before it is uploaded.
struct PatchFile {
    path: PathBuf,
    size: u64,
    sha256: [u8; 32],
}

/// The current manifest (`bytes`, read from `shown`), to be re-signed; its
/// signature must verify with the signing key, so re-signing never blesses
/// a changed file.
fn resign(
    p: &Publish,
    shown: &str,
    bytes: Option<Vec<u8>>,
    signature: Option<&[u8]>,
    key: Option<&(minisign::SecretKey, minisign::PublicKey)>,
) -> Result<Document, Error> {
    let fail = |reason: String| Error::Resign {
        path: PathBuf::from(shown),
        reason,
    };
    let doc = current(shown, bytes, signature, key)?;
    if let (Some(want), Some(have)) = (&p.version, &doc.version) {
        if want != have {
            return Err(fail(format!(
                "it states version {have}, not {want}; publish {want}'s artifacts instead"
            )));
        }
    }
    if p.rollout.is_none()
        && p.expires.is_none()
        && p.channel.is_none()
        && p.gate.is_none()
        && key.is_none()
    {
        return Err(Error::Invalid(
            "nothing to publish: give artifacts, or --rollout/--expires/--gate/--sign to re-sign"
                .into(),
        ));
    }
    Ok(doc)
}

/// The target's manifest (`bytes`, read from `shown`), whose signature
/// must verify with the signing key, so re-signing never blesses a
/// changed file.
fn current(
    shown: &str,
    bytes: Option<Vec<u8>>,
    signature: Option<&[u8]>,
    key: Option<&(minisign::SecretKey, minisign::PublicKey)>,
) -> Result<Document, Error> {
    let fail = |reason: String| Error::Resign {
        path: PathBuf::from(shown),
        reason,
    };
    let bytes = bytes.ok_or_else(|| {
        fail(
            "there is no manifest; publish artifacts first (baton publish --version V ARTIFACT)"
                .into(),
        )
    })?;
    match (key, signature) {
        (Some((_, pk)), Some(sig)) => verify_with(&bytes, sig, pk)
            .map_err(|e| fail(format!("its signature does not verify with this key: {e}")))?,
        (Some(_), None) => {
            return Err(fail(
                "it is not signed, and signing it now would vouch for bytes nobody signed \
                 (whoever can write the store could have written them); publish the artifacts \
                 with --sign to start signing"
                    .into(),
            ))
        }
        (None, _) => {}
    }
    serde_json::from_slice(&bytes).map_err(|e| fail(format!("not a manifest: {e}")))
}

/// What a fresh publish carries over from the target's manifest `old`:
/// its gate and yanked list, when `old` is as trusted as what is being
/// published (signed with this key when signing; anything when not).
/// Otherwise nothing is carried, and a gate or a yank that would be
/// dropped without a word refuses the publish (a key rotation, the first
/// signed publish of a store): `p` must state them again.
fn carried(
    p: &Publish,
    shown: &str,
    old: &[u8],
    signature: Option<&[u8]>,
    key: Option<&(minisign::SecretKey, minisign::PublicKey)>,
) -> Result<Option<Document>, Error> {
    let doc = serde_json::from_slice::<Document>(old).map_err(|e| {
        Error::Invalid(format!(
            "{shown} does not parse ({e}), so its gate and yanked list cannot be carried over; \
             remove it to start afresh"
        ))
    })?;
    let Some((_, pk)) = key else {
        return Ok(Some(doc));
    };
    let verified = signature.is_some_and(|s| verify_with(old, s, pk).is_ok());
    if verified {
        return Ok(Some(doc));
    }
    let gate_dropped = doc.gate.is_some() && p.gate.is_none();
    let yanks_dropped: Vec<&String> = doc
        .yanked
        .iter()
        .filter(|v| !yank::listed(&p.yank, v))
        .collect();
    if gate_dropped || !yanks_dropped.is_empty() {
        let mut state = Vec::new();
        if gate_dropped {
            state.push("its gate (--gate …)".to_owned());
        }
        if !yanks_dropped.is_empty() {
            let list: Vec<&str> = yanks_dropped.iter().map(|v| v.as_str()).collect();
            state.push(format!("its yanks (--yank {})", list.join(" --yank ")));
        }
        return Err(Error::Invalid(format!(
            "{shown} is not signed by this key (a key rotation, or a store signed for the first \
             time), so nothing in it is carried into a signed manifest: state {} again, or \
             remove it to start afresh",
            state.join(" and ")
        )));
    }
    Ok(None)
}

/// Copies `from` to `to` through a temp file beside it; returns its sha256
/// and size.
pub(crate) fn copy_in(from: &Path, to: &Path) -> Result<([u8; 32], u64), Error> {
    let mut src = std::fs::File::open(from).map_err(io("read", from))?;
    let dir = to.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".publish-")
        .tempfile_in(dir)
        .map_err(io("write", to))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = src.read(&mut buf).map_err(io("read", from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(io("write", to))?;
        size += n as u64;
    }
    let mode = src.metadata().map_err(io("read", from))?.permissions();
    tmp.as_file()
        .set_permissions(mode)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io("write", to))?;
    tmp.persist(to).map_err(|e| {
        Error::Io(IoError {
            what: "rename into",
            path: to.to_owned(),
            source: e.error,
        })
    })?;
    fsync_dir(dir)?;
    Ok((hasher.finalize().into(), size))
}

/// Writes a published file: readable by all (0644), atomically.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    Ok(crate::fsutil::write_atomic(
        path,
        bytes,
        ".publish-",
        Some(0o644),
    )?)
}

/// Parses `--gate`: `canary=5,max_failures=3,max_failure_percent=10,
/// min_promoted=1,silent_after=15m`, any of them (the manifest check says
/// whether the whole can ever open).
pub fn parse_gate(text: &str) -> Result<manifest::gate::GateDocument, String> {
    let mut gate = manifest::gate::GateDocument::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        let number = |what: &str| -> Result<u32, String> {
            value
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("{what} = {value:?} is not a whole number"))
        };
        let percent = |what: &str| -> Result<u8, String> {
            u8::try_from(number(what)?)
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("{what} = {value:?} is not a percentage 0-100"))
        };
        match key.trim() {
            "canary" => gate.canary = Some(percent("canary")?),
            "max_failures" => gate.max_failures = Some(number("max_failures")?),
            "max_failure_percent" => {
                gate.max_failure_percent = Some(percent("max_failure_percent")?)
            }
            "min_promoted" => gate.min_promoted = Some(number("min_promoted")?),
            "silent_after" => {
                crate::time::parse_duration(value.trim())
                    .map_err(|e| format!("silent_after = {value:?}: {e}"))?;
                gate.silent_after = Some(value.trim().to_owned());
            }
            other => {
                return Err(format!(
                    "unknown key {other:?} (canary, max_failures, max_failure_percent, \
                     min_promoted, silent_after)"
                ))
            }
        }
    }
    Ok(gate)
}

/// Parses `--rollout`: a percentage, or a schedule `0s=5,24h=50,48h=100`.
pub fn parse_rollout(text: &str) -> Result<Rollout, String> {
    let text = text.trim().trim_end_matches('%');
    if let Ok(p) = text.parse::<u8>() {
        let r = Rollout::Percent(p);
        r.validate()?;
        return Ok(r);
    }
    let steps = text
        .split(',')
        .map(|step| {
            let (after, percent) = step
                .split_once('=')
                .ok_or_else(|| format!("expected PERCENT or AFTER=PERCENT,… (such as 0s=5,24h=50,48h=100), not {step:?}"))?;
            Ok(manifest::Step {
                after: after.trim().to_owned(),
                percent: percent
                    .trim()
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|_| format!("{percent:?} is not a percentage 0–100"))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let r = Rollout::Schedule(steps);
    r.validate()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_signs_and_resigns() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.sec");
        let public = keygen(&key).unwrap();
        assert!(keygen(&key).is_err(), "never overwrites a key");
        let art = dir.path().join("hello-2.0.0");
        std::fs::write(&art, b"binary").unwrap();
        let out = dir.path().join("out");
        let mut p = Publish {
            to: target::Destination::Dir(out.clone()),
            version: Some("2.0.0".into()),
            artifacts: vec![(None, art)],
            rollout: Some(Rollout::Percent(10)),
            expires: Some(Duration::from_secs(86_400)),
            sign: Some(key.clone()),
            ..Publish::default()
        };
        publish(&p).unwrap();
        let load = || load_signed(&out, &public);
        let m = load();
        assert_eq!(m.rollout, Rollout::Percent(10));
        assert_eq!(m.sha256, Some(Sha256::digest(b"binary").into()));
        assert_eq!(std::fs::read(out.join("hello-2.0.0")).unwrap(), b"binary");
        p.artifacts.clear();
        p.version = None;
        p.rollout = Some(Rollout::Percent(100));
        publish(&p).unwrap();
        assert_eq!(load().rollout, Rollout::Percent(100));
        // A changed manifest is not re-signed.
        let mut text = std::fs::read_to_string(out.join(MANIFEST)).unwrap();
        text = text.replace("hello-2.0.0", "evil");
        std::fs::write(out.join(MANIFEST), text).unwrap();
        let err = publish(&p).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        // No unsigned publish over a signed one.
        p.sign = None;
        assert!(publish(&p).is_err());
    }

    #[test]
    fn a_yank_names_the_newest_release_not_yanked_and_the_list_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.sec");
        let public = keygen(&key).unwrap();
        let out = dir.path().join("out");
        let publish_version = |v: &str| {
            let art = dir.path().join(format!("hello-{v}"));
            std::fs::write(&art, v.as_bytes()).unwrap();
            Publish {
                sign: Some(key.clone()),
                rollout: Some(Rollout::Percent(30)),
                gate: Some(parse_gate("canary=5,max_failures=2").unwrap()),
                ..release(&out, v, &art, 0)
            }
        };
        for v in ["1.0.0", "1.1.0", "2.0.0"] {
            publish(&publish_version(v)).unwrap();
        }
        let yank = |versions: &[&str], version: Option<&str>| Publish {
            to: target::Destination::Dir(out.clone()),
            sign: Some(key.clone()),
            yank: versions.iter().map(|v| v.to_string()).collect(),
            version: version.map(str::to_owned),
            ..Publish::default()
        };
        // Without a key a yank is refused: hosts would ignore it.
        let err = publish(&Publish {
            sign: None,
            ..yank(&["2.0.0"], None)
        })
        .unwrap_err();
        assert!(err.to_string().contains("--sign"), "{err}");
        publish(&yank(&["2.0.0"], None)).unwrap();
        let m = load_signed(&out, &public);
        assert_eq!(m.version.as_deref(), Some("1.1.0"));
        assert_eq!(m.sha256, Some(Sha256::digest(b"1.1.0").into()));
        assert_eq!(m.url, "hello-1.1.0");
        assert_eq!(m.rollout, Rollout::Percent(100), "every host goes back");
        assert!(m.gate.is_some(), "the gate carries over");
        assert!(m.yanks("2.0.0") && m.signed);
        // Yanking 1.1.0 as well goes further back; the list grows.
        publish(&yank(&["v1.1.0"], None)).unwrap();
        let m = load_signed(&out, &public);
        assert_eq!(m.version.as_deref(), Some("1.0.0"));
        assert!(m.yanks("2.0.0") && m.yanks("1.1.0"));
        // --version must name an unyanked release the history lists.
        let err = publish(&yank(&["2.0.0"], Some("1.1.0"))).unwrap_err();
        assert!(err.to_string().contains("yanked itself"), "{err}");
        let err = publish(&yank(&["2.0.0"], Some("0.9.0"))).unwrap_err();
        assert!(
            err.to_string().contains("does not list version 0.9.0"),
            "{err}"
        );
        // Everything yanked: nothing to go back to.
        let err = publish(&yank(&["1.0.0"], None)).unwrap_err();
        assert!(err.to_string().contains("nothing to go back to"), "{err}");
        // A later publish keeps the list, and refuses a yanked version.
        let err = publish(&publish_version("2.0.0")).unwrap_err();
        assert!(err.to_string().contains("version 2.0.0 is yanked"), "{err}");
        publish(&publish_version("2.1.0")).unwrap();
        let m = load_signed(&out, &public);
        assert_eq!(m.version.as_deref(), Some("2.1.0"));
        assert!(m.yanks("2.0.0") && m.yanks("1.1.0"));
        // The history's digests are signed again only when its own
        // signature verifies: a store writer cannot slip in an artifact.
        let history = out.join(HISTORY);
        let honest = std::fs::read_to_string(&history).unwrap();
        let forged = honest.replacen(
            &hex::encode(Sha256::digest(b"1.0.0")),
            &hex::encode(Sha256::digest(b"evil")),
            1,
        );
        assert_ne!(forged, honest);
        std::fs::write(&history, &forged).unwrap();
        let err = publish(&yank(&["2.1.0"], None)).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        std::fs::remove_file(out.join(HISTORY_SIGNATURE)).unwrap();
        let err = publish(&yank(&["2.1.0"], None)).unwrap_err();
        assert!(err.to_string().contains("is not signed"), "{err}");
        assert_eq!(load_signed(&out, &public).version.as_deref(), Some("2.1.0"));
        // With the artifacts in hand, a yank hashes them itself.
        let err = publish(&Publish {
            artifacts: vec![(None, dir.path().join("hello-1.0.0"))],
            ..yank(&["2.1.0"], Some("2.1.0"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("yanked itself"), "{err}");
        publish(&Publish {
            artifacts: vec![(None, dir.path().join("hello-1.0.0"))],
            ..yank(&["2.1.0"], Some("1.0.0"))
        })
        .unwrap();
        let m = load_signed(&out, &public);
        assert_eq!(m.version.as_deref(), Some("1.0.0"));
        assert_eq!(m.sha256, Some(Sha256::digest(b"1.0.0").into()));
        assert_eq!(m.rollout, Rollout::Percent(100));
        assert!(m.yanks("2.1.0") && m.yanks("2.0.0") && m.yanks("1.1.0"));
        assert!(m.gate.is_some(), "the gate carries over");
        // The history written by it is signed again: a later yank works.
        assert!(out.join(HISTORY_SIGNATURE).exists());
    }

    #[test]
    fn an_unsigned_manifest_is_not_signed_by_a_re_sign_nor_carried_into_a_signed_one() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.sec");
        let public = keygen(&key).unwrap();
        let out = dir.path().join("out");
        let art = dir.path().join("hello-1.0.0");
        std::fs::write(&art, b"1.0.0").unwrap();
        // Unsigned, with a gate and a yank whoever wrote it chose.
        publish(&Publish {
            gate: Some(parse_gate("canary=100,max_failures=1000").unwrap()),
            ..release(&out, "1.0.0", &art, 0)
        })
        .unwrap();
        let resign = Publish {
            to: target::Destination::Dir(out.clone()),
            rollout: Some(Rollout::Percent(50)),
            sign: Some(key.clone()),
            ..Publish::default()
        };
        let err = publish(&resign).unwrap_err();
        assert!(err.to_string().contains("not signed"), "{err}");
        let err = publish(&Publish {
            yank: vec!["0.9.0".into()],
            ..resign.clone()
        })
        .unwrap_err();
        assert!(err.to_string().contains("not signed"), "{err}");
        // A signed publish of artifacts carries nothing from it, and does
        // not drop its gate without a word: the gate is stated again.
        let art2 = dir.path().join("hello-1.1.0");
        std::fs::write(&art2, b"1.1.0").unwrap();
        let signed = Publish {
            sign: Some(key.clone()),
            ..release(&out, "1.1.0", &art2, 0)
        };
        let err = publish(&signed).unwrap_err();
        assert!(err.to_string().contains("state its gate (--gate"), "{err}");
        publish(&Publish {
            gate: Some(parse_gate("canary=5,max_failures=2").unwrap()),
            ..signed
        })
        .unwrap();
        let m = load_signed(&out, &public);
        assert_eq!(m.version.as_deref(), Some("1.1.0"));
        assert_eq!(
            m.gate.unwrap().max_failures,
            2,
            "the gate stated, not the unsigned one"
        );
        // The unsigned history is not signed into the new one.
        let history: History =
            serde_json::from_slice(&std::fs::read(out.join(HISTORY)).unwrap()).unwrap();
        let versions: Vec<&str> = history
            .releases
            .iter()
            .map(|r| r.version.as_str())
            .collect();
        assert_eq!(versions, vec!["1.1.0"]);
    }

    /// `len` bytes of deterministic noise (incompressible).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A build of `v1` with a few bytes changed and some added.
    fn rebuild(v1: &[u8], seed: u64) -> Vec<u8> {
        let mut v2 = v1.to_vec();
        v2[1000..1010].copy_from_slice(b"version2.0");
        v2[200_000..200_016].copy_from_slice(&noise(seed, 16));
        v2.extend(noise(seed, 2000));
        v2
    }

    fn release(out: &Path, version: &str, artifact: &Path, patches: usize) -> Publish {
        Publish {
            to: target::Destination::Dir(out.to_owned()),
            version: Some(version.into()),
            artifacts: vec![(None, artifact.to_owned())],
            patches,
            ..Publish::default()
        }
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Applies the patch at `patch` to `old`; the result must be `new`.
    /// The manifest published in `out`, checked with `public`.
    fn load_signed(out: &Path, public: &str) -> manifest::Manifest {
        let bytes = std::fs::read(out.join(MANIFEST)).unwrap();
        let sig = std::fs::read_to_string(out.join(SIGNATURE)).unwrap();
        manifest::load(&bytes, Some(&sig), &[public.to_owned()], SystemTime::now()).unwrap()
    }

    fn check_patch(old: &Path, patch: &Path, new: &[u8]) {
        let mut out = Vec::new();
        let spec = crate::delta::Spec {
            reference: old,
            from: Some(Sha256::digest(std::fs::read(old).unwrap()).into()),
            sha256: Sha256::digest(new).into(),
            max_size: 1 << 30,
        };
        crate::delta::apply(&spec, std::fs::File::open(patch).unwrap(), &mut out).unwrap();
        assert!(out == new, "the patch gives the new binary");
    }

    fn history(out: &Path) -> History {
        serde_json::from_slice(&std::fs::read(out.join(HISTORY)).unwrap()).unwrap()
    }

    #[test]
    fn patches_from_earlier_releases() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let v1 = noise(1, 300_000);
        let v2 = rebuild(&v1, 2);
        let (a1, a2) = (
            dir.path().join("hello-1.0.0"),
            dir.path().join("hello-2.0.0"),
        );
        std::fs::write(&a1, &v1).unwrap();
        std::fs::write(&a2, &v2).unwrap();

        let r1 = publish_report(&release(&out, "1.0.0", &a1, 3)).unwrap();
        assert!(r1.patches.is_empty() && r1.warnings.is_empty(), "{r1:?}");
        assert!(r1.document.patches.is_empty() && r1.document.binary_sha256.is_none());
        let h = history(&out);
        assert_eq!(h.releases.len(), 1);
        assert_eq!(h.releases[0].version, "1.0.0");
        assert_eq!(h.releases[0].artifacts[0].url, "hello-1.0.0");
        assert_eq!(h.releases[0].artifacts[0].binary_sha256, Some(sha(&v1)));

        let r2 = publish_report(&release(&out, "2.0.0", &a2, 3)).unwrap();
        assert!(r2.warnings.is_empty() && r2.skipped.is_empty(), "{r2:?}");
        let doc = &r2.document;
        assert_eq!(doc.binary_sha256, Some(sha(&v2)));
        assert_eq!(doc.patches.len(), 1);
        let patch = &doc.patches[0];
        assert_eq!(patch.from, sha(&v1));
        assert_eq!(patch.url, "hello-2.0.0.from-1.0.0.zst");
        let bytes = std::fs::read(out.join(&patch.url)).unwrap();
        assert_eq!(
            (sha(&bytes), bytes.len() as u64),
            (patch.sha256.clone(), patch.size)
        );
        assert!(
            patch.size < 10_000,
            "a small change makes a small patch: {}",
            patch.size
        );
        assert_eq!(r2.patches.len(), 1);
        assert_eq!(r2.patches[0].from_version, "1.0.0");
        check_patch(&out.join("hello-1.0.0"), &out.join(&patch.url), &v2);
        // What hosts check.
        let written: Document =
            serde_json::from_slice(&std::fs::read(out.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(&written, doc);
        let m = manifest::Manifest::from_document(written, false).unwrap();
        assert_eq!(m.binary(), Some(Sha256::digest(&v2).into()));
        assert_eq!(m.patches.len(), 1);
        let h = history(&out);
        let versions: Vec<&str> = h.releases.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, ["2.0.0", "1.0.0"]);

        // Publishing 2.0.0 again replaces its entry, and still patches.
        let again = publish_report(&release(&out, "2.0.0", &a2, 3)).unwrap();
        assert_eq!(again.document.patches.len(), 1);
        assert_eq!(history(&out).releases.len(), 2);

        // --patches 0: none, and the manifest is as before patches existed.
        let v3 = rebuild(&v2, 3);
        let a3 = dir.path().join("hello-3.0.0");
        std::fs::write(&a3, &v3).unwrap();
        let r3 = publish_report(&release(&out, "3.0.0", &a3, 0)).unwrap();
        assert!(r3.patches.is_empty() && r3.skipped.is_empty() && r3.warnings.is_empty());
        assert!(r3.document.patches.is_empty() && r3.document.binary_sha256.is_none());
        assert!(!out.join("hello-3.0.0.from-2.0.0.zst").exists());
        assert_eq!(history(&out).releases.len(), 3, "recorded all the same");

        // --patches 2: from 3.0.0 and 2.0.0, not 1.0.0.
        let v4 = rebuild(&v3, 4);
        let a4 = dir.path().join("hello-4.0.0");
        std::fs::write(&a4, &v4).unwrap();
        let r4 = publish_report(&release(&out, "4.0.0", &a4, 2)).unwrap();
        let froms: Vec<&str> = r4.patches.iter().map(|p| p.from_version.as_str()).collect();
        assert_eq!(froms, ["3.0.0", "2.0.0"]);
        for (p, old) in r4
            .document
            .patches
            .iter()
            .zip(["hello-3.0.0", "hello-2.0.0"])
        {
            check_patch(&out.join(old), &out.join(&p.url), &v4);
        }
    }

    #[test]
    fn patches_not_small_enough_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (a1, a2) = (
            dir.path().join("hello-1.0.0"),
            dir.path().join("hello-2.0.0"),
        );
        std::fs::write(&a1, noise(1, 300_000)).unwrap();
        std::fs::write(&a2, noise(2, 300_000)).unwrap();
        publish_report(&release(&out, "1.0.0", &a1, 3)).unwrap();
        let r = publish_report(&release(&out, "2.0.0", &a2, 3)).unwrap();
        assert!(r.patches.is_empty() && r.warnings.is_empty(), "{r:?}");
        assert_eq!(r.skipped.len(), 1);
        assert!(r.skipped[0].contains("not 2× smaller"), "{}", r.skipped[0]);
        assert!(r.document.patches.is_empty() && r.document.binary_sha256.is_none());
        assert!(!out.join("hello-2.0.0.from-1.0.0.zst").exists());
    }

    #[test]
    fn missing_or_changed_old_artifacts_warn() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let v1 = noise(1, 300_000);
        let (a1, a2) = (
            dir.path().join("hello-1.0.0"),
            dir.path().join("hello-2.0.0"),
        );
        std::fs::write(&a1, &v1).unwrap();
        std::fs::write(&a2, rebuild(&v1, 2)).unwrap();
        publish_report(&release(&out, "1.0.0", &a1, 3)).unwrap();

        std::fs::write(out.join("hello-1.0.0"), noise(9, 300_000)).unwrap();
        let r = publish_report(&release(&out, "2.0.0", &a2, 3)).unwrap();
        assert!(r.patches.is_empty() && r.document.patches.is_empty());
        assert_eq!(r.warnings.len(), 1, "{r:?}");
        assert!(
            r.warnings[0].contains("replaced since"),
            "{}",
            r.warnings[0]
        );

        std::fs::remove_file(out.join("hello-1.0.0")).unwrap();
        let r = publish_report(&release(&out, "2.0.0", &a2, 3)).unwrap();
        assert!(r.patches.is_empty() && r.document.patches.is_empty());
        assert_eq!(r.warnings.len(), 1, "{r:?}");
        assert!(
            r.warnings[0].contains("hello-1.0.0 is no longer at the target"),
            "{}",
            r.warnings[0]
        );
        assert!(out.join(MANIFEST).exists());
    }

    /// A .tar.gz holding `hello` (mode 0755) and a README.
    fn tarball(path: &Path, binary: &[u8]) {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(path).unwrap(),
            flate2::Compression::default(),
        );
        let mut tar = tar::Builder::new(gz);
        for (name, bytes, mode) in [
            ("hello-x/README", &b"read me"[..], 0o644),
            ("hello-x/hello", binary, 0o755),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(mode);
            header.set_cksum();
            tar.append_data(&mut header, name, bytes).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn archives_get_no_patches() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let v1 = noise(1, 300_000);
        let v2 = rebuild(&v1, 2);
        let (a1, a2) = (
            dir.path().join("hello-1.0.0.tar.gz"),
            dir.path().join("hello-2.0.0.tar.gz"),
        );
        tarball(&a1, &v1);
        tarball(&a2, &v2);
        let mut p = Publish {
            to: target::Destination::Dir(out.clone()),
            version: Some("1.0.0".into()),
            artifacts: vec![(None, a1)],
            patches: 3,
            ..Publish::default()
        };
        publish_report(&p).unwrap();
        assert_eq!(
            history(&out).releases[0].artifacts[0].binary_sha256,
            Some(sha(&v1))
        );
        p.version = Some("2.0.0".into());
        p.artifacts = vec![(None, a2)];
        let r = publish_report(&p).unwrap();
        assert!(r.patches.is_empty(), "{r:?}");
        assert!(r.skipped[0].contains("it is an archive"), "{r:?}");
        assert!(r.document.patches.is_empty() && r.document.binary_sha256.is_none());
    }

    #[test]
    fn patches_per_target_and_resign_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let key = dir.path().join("k.sec");
        let public = keygen(&key).unwrap();
        let v1 = noise(1, 300_000);
        let v2 = rebuild(&v1, 2);
        let (a1, a2) = (
            dir.path().join("hello-1.0.0"),
            dir.path().join("hello-2.0.0"),
        );
        std::fs::write(&a1, &v1).unwrap();
        std::fs::write(&a2, &v2).unwrap();
        let triple = manifest::TARGET.to_owned();
        let mut p = Publish {
            to: target::Destination::Dir(out.clone()),
            version: Some("1.0.0".into()),
            artifacts: vec![(Some(triple.clone()), a1.clone())],
            sign: Some(key),
            patches: 3,
            ..Publish::default()
        };
        publish_report(&p).unwrap();
        p.version = Some("2.0.0".into());
        p.artifacts = vec![(Some(triple.clone()), a2)];
        let r = publish_report(&p).unwrap();
        assert!(r.warnings.is_empty() && r.skipped.is_empty(), "{r:?}");
        let artifact = &r.document.targets.as_ref().unwrap()[&triple];
        assert_eq!(artifact.binary_sha256, Some(sha(&v2)));
        assert_eq!(artifact.patches.len(), 1);
        assert_eq!(artifact.patches[0].from, sha(&v1));
        assert_eq!(artifact.patches[0].url, "hello-2.0.0.from-1.0.0.zst");
        check_patch(&a1, &out.join(&artifact.patches[0].url), &v2);

        let load = || load_signed(&out, &public);
        let before = load();
        assert_eq!(before.patches.len(), 1);
        assert_eq!(before.binary_sha256, Some(Sha256::digest(&v2).into()));
        // Re-signing with a new rollout keeps the patches, and the history.
        let history_before = history(&out);
        p.artifacts.clear();
        p.version = None;
        p.rollout = Some(Rollout::Percent(50));
        let r = publish_report(&p).unwrap();
        assert!(r.patches.is_empty() && r.warnings.is_empty());
        let after = load();
        assert_eq!(after.rollout, Rollout::Percent(50));
        assert_eq!(after.patches, before.patches);
        assert_eq!(after.binary_sha256, before.binary_sha256);
        assert_eq!(history(&out), history_before);
    }

    #[test]
    fn archives_name_their_binary() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.tar.gz");
        tarball(&a, b"\x7fELF");
        assert_eq!(only_executable(&a, archive::Kind::TarGz).unwrap(), "hello");
        let z = dir.path().join("a.zip");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&z).unwrap());
        for (name, mode) in [
            ("x/README", 0o644),
            ("x/bin/hello", 0o755),
            ("x/run", 0o755),
        ] {
            let options = zip::write::SimpleFileOptions::default().unix_permissions(mode);
            zip.start_file(name, options).unwrap();
            zip.write_all(b"bytes").unwrap();
        }
        zip.finish().unwrap();
        let err = only_executable(&z, archive::Kind::Zip).unwrap_err();
        assert!(
            err.contains("several executable files (hello, run)"),
            "{err}"
        );
        assert_eq!(
            patch_name("a.tar.gz", "2.0.0+b/1"),
            "a.tar.gz.from-2.0.0_b_1.zst"
        );
    }

    #[test]
    fn gates_parse_and_a_gate_no_host_could_open_is_refused() {
        let g = parse_gate(
            "canary=5,max_failures=3,max_failure_percent=10%,min_promoted=1,silent_after=15m",
        )
        .unwrap();
        assert_eq!(g.canary, Some(5));
        assert_eq!(g.max_failure_percent, Some(10));
        assert_eq!(g.silent_after.as_deref(), Some("15m"));
        assert!(parse_gate("canary=101").is_err());
        assert!(parse_gate("canaries=5")
            .unwrap_err()
            .contains("unknown key"));
        assert!(parse_gate("silent_after=soon").is_err());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let artifact = dir.path().join("a");
        std::fs::write(&artifact, b"bytes").unwrap();
        let mut p = Publish {
            to: target::Destination::Dir(out.clone()),
            version: Some("1.0.0".into()),
            artifacts: vec![(None, artifact)],
            gate: Some(parse_gate("max_failures=1").unwrap()),
            ..Publish::default()
        };
        let err = publish(&p).unwrap_err().to_string();
        assert!(
            err.contains("gate") && err.contains("must state `canary`"),
            "{err}"
        );
        p.gate = Some(parse_gate("canary=5,max_failures=1").unwrap());
        publish(&p).unwrap();
        // Re-signing and publishing again keep it.
        p.version = Some("1.0.1".into());
        p.gate = None;
        let doc = publish(&p).unwrap();
        assert_eq!(doc.gate.and_then(|g| g.max_failures), Some(1));
    }

    #[test]
    fn rollouts_parse() {
        assert_eq!(parse_rollout("10").unwrap(), Rollout::Percent(10));
        assert_eq!(parse_rollout("10%").unwrap(), Rollout::Percent(10));
        assert!(parse_rollout("101").is_err());
        let s = parse_rollout("0s=5,24h=50,48h=100").unwrap();
        assert!(matches!(s, Rollout::Schedule(ref v) if v.len() == 3));
        assert!(parse_rollout("24h=50,0s=5").is_err());
        assert!(parse_rollout("soon").is_err());
    }
}
