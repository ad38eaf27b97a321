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

pub mod target;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::manifest::{self, Artifact, Document, Rollout};

/// The manifest's file name in a publish directory.
pub const MANIFEST: &str = "manifest.json";
/// The signature's file name beside it.
pub const SIGNATURE: &str = "manifest.json.minisig";
/// The environment variable holding a secret key's password (empty or
/// unset: the key is not encrypted).
pub const PASSWORD_ENV: &str = "BATON_KEY_PASSWORD";

/// Why a publish or keygen failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("cannot {what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
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

pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
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
    /// A channel name.
    pub channel: Option<String>,
    /// The minisign secret key to sign with.
    pub sign: Option<PathBuf>,
    /// Now, for `published_at` and `expires`.
    pub now: Option<SystemTime>,
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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the async runtime: {e}")))?
        .block_on(publish_async(p))
}

/// Publishes to `p.to`, whatever the target: the manifest is built and
/// checked before anything is uploaded; artifacts go first, the signature
/// next, the manifest last.
pub async fn publish_async(p: &Publish) -> Result<Document, Error> {
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
    let (mut doc, uploads) = if p.artifacts.is_empty() {
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
        fresh(p, now)?
    };
    if let Some(rollout) = &p.rollout {
        doc.rollout = Some(rollout.clone());
    }
    if let Some(d) = p.expires {
        doc.expires = Some(rfc3339(now + d));
    }
    if let Some(c) = &p.channel {
        doc.channel = Some(c.clone());
    }
    // Check what hosts will check, before anything is replaced.
    manifest::Manifest::from_document(doc.clone(), key.is_some())
        .map_err(|e| Error::Invalid(format!("the manifest would be refused: {e}")))?;
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("a manifest serializes");
    bytes.push(b'\n');
    let signature = match &key {
        Some((sk, pk)) => {
            let comment = format!(
                "baton manifest {} published {}",
                doc.version.as_deref().unwrap_or("?"),
                doc.published_at.as_deref().unwrap_or("?")
            );
            let sig = minisign::sign(
                Some(pk),
                sk,
                std::io::Cursor::new(&bytes),
                Some(&comment),
                None,
            )
            .map_err(|e| Error::Key {
                path: p.sign.clone().unwrap_or_default(),
                reason: format!("cannot sign: {e}"),
            })?;
            Some(sig.into_string().into_bytes())
        }
        None => None,
    };
    for upload in &uploads {
        target
            .put_file(&upload.name, &upload.path, upload.sha256, upload.size)
            .await?;
    }
    if let Some(sig) = signature {
        target.put_bytes(SIGNATURE, sig).await?;
    }
    target.put_bytes(MANIFEST, bytes).await?;
    Ok(doc)
}

/// An artifact to upload, hashed before.
struct Upload {
    name: String,
    path: PathBuf,
    sha256: [u8; 32],
    size: u64,
}

/// A new manifest for `p.artifacts`, and the uploads it needs.
fn fresh(p: &Publish, now: SystemTime) -> Result<(Document, Vec<Upload>), Error> {
    let version = p
        .version
        .clone()
        .ok_or_else(|| Error::Invalid("publishing artifacts needs --version".into()))?;
    if crate::release::verify::parse_version(&version).is_none() {
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
        if matches!(name.as_str(), MANIFEST | SIGNATURE) {
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
    let bytes = bytes.ok_or_else(|| {
        fail(
            "there is no manifest; publish artifacts first (baton publish --version V ARTIFACT)"
                .into(),
        )
    })?;
    if let (Some((_, pk)), Some(sig)) = (key, signature) {
        let sig =
            std::str::from_utf8(sig).map_err(|_| fail("its signature is not UTF-8 text".into()))?;
        manifest::verify_signature(&bytes, sig, &[pk.to_base64()])
            .map_err(|e| fail(format!("its signature does not verify with this key: {e}")))?;
    }
    let doc: Document =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("not a manifest: {e}")))?;
    if let (Some(want), Some(have)) = (&p.version, &doc.version) {
        if want != have {
            return Err(fail(format!(
                "it states version {have}, not {want}; publish {want}'s artifacts instead"
            )));
        }
    }
    if p.rollout.is_none() && p.expires.is_none() && p.channel.is_none() && key.is_none() {
        return Err(Error::Invalid(
            "nothing to publish: give artifacts, or --rollout/--expires/--sign to re-sign".into(),
        ));
    }
    Ok(doc)
}

/// A file's sha256 and size.
fn hash_file(path: &Path) -> Result<([u8; 32], u64), Error> {
    let mut src = std::fs::File::open(path).map_err(io("read", path))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut src, &mut hasher).map_err(io("read", path))?;
    Ok((hasher.finalize().into(), size))
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
    tmp.persist(to).map_err(|e| Error::Io {
        what: "rename into",
        path: to.to_owned(),
        source: e.error,
    })?;
    fsync_dir(dir)?;
    Ok((hasher.finalize().into(), size))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".publish-")
        .tempfile_in(dir)
        .map_err(io("write", path))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io("write", path))?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io("write", path))?;
    tmp.persist(path).map_err(|e| Error::Io {
        what: "rename into",
        path: path.to_owned(),
        source: e.error,
    })?;
    fsync_dir(dir)
}

fn fsync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
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
        let load = || {
            let bytes = std::fs::read(out.join(MANIFEST)).unwrap();
            let sig = std::fs::read_to_string(out.join(SIGNATURE)).unwrap();
            manifest::load(
                &bytes,
                Some(&sig),
                std::slice::from_ref(&public),
                SystemTime::now(),
            )
            .unwrap()
        };
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
