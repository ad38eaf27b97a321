//! The delta path of the pipeline: when the manifest offers a patch made
//! against the running release's binary, download it (size-capped, its
//! sha256 checked), apply it with [`crate::delta::apply`] into a staging
//! file and check the result against the manifest's `binary_sha256`.
//!
//! Every failure is logged with its cause and answered with `None`: the
//! pipeline then downloads the full artifact in the same check. A pair
//! (running binary, patch) that failed once is recorded in the store and
//! never tried again.

use std::io::BufWriter;
use std::path::Path;

use super::stage::{self, Staged};
use super::{Error, Meta, Store};
use crate::config::Verify;
use crate::fetchers::{Info, Opener};
use crate::fsutil::IoError;
use crate::manifest::Patch;

/// A binary made from a patch.
pub(super) struct Patched {
    /// The patched binary, in a temp file; its `sha256` is the manifest's
    /// `binary_sha256`.
    pub staged: Staged,
    /// The patch applied.
    pub patch: Patch,
}

/// What the delta path needs from the pipeline.
pub(super) struct Context<'a> {
    pub store: &'a Store,
    pub verify: &'a Verify,
    pub work_dir: &'a Path,
    pub current: &'a Meta,
    /// Whether the check installs (only then is a failed pair recorded).
    pub install: bool,
}

/// The patched binary for `info`, or `None` (after logging why) when no
/// patch applies or applying one failed: the caller then downloads the
/// full artifact.
pub(super) async fn fetch(
    cx: &Context<'_>,
    info: &Info,
    opener: &Opener,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Option<Patched> {
    let manifest = info.manifest.as_ref()?;
    if manifest.patches.is_empty() {
        return None;
    }
    let (Some(artifact), Some(binary)) = (manifest.sha256, manifest.binary()) else {
        return None;
    };
    if binary != artifact {
        // The artifact is an archive: a patch would install its binary
        // alone, without the archive's other files.
        tracing::info!(
            "delta: the artifact is an archive (binary_sha256 differs from sha256); \
             downloading the full artifact"
        );
        return None;
    }
    if !manifest.signed && !cx.verify.minisign_keys.is_empty() {
        // The binary's own signature covers the full artifact only.
        tracing::info!(
            "delta: the manifest is not signed and verify.minisign_key is set; downloading \
             the full artifact"
        );
        return None;
    }
    let reference = cx.store.binary_in(&cx.store.dir().join(&cx.current.id));
    let from = match running_digest(cx.current, &reference).await {
        Ok(from) => from,
        Err(e) => {
            tracing::warn!(
                "delta: {}; downloading the full artifact",
                crate::errors::display_chain(&e)
            );
            return None;
        }
    };
    let from_hex = hex::encode(from);
    let Some(patch) = manifest.patches.iter().find(|p| p.from == from) else {
        tracing::info!(
            "delta: none of the {} patches applies to the running binary {from_hex} \
             ({}); downloading the full artifact",
            manifest.patches.len(),
            cx.current.id
        );
        return None;
    };
    let patch_hex = hex::encode(patch.sha256);
    match cx.store.patch_failed(&from_hex, &patch_hex) {
        Ok(false) => {}
        Ok(true) => {
            tracing::info!(
                "delta: patch {} failed against {} before; downloading the full artifact",
                patch.url,
                cx.current.id
            );
            return None;
        }
        Err(e) => {
            tracing::warn!(
                "delta: {}; downloading the full artifact",
                crate::errors::display_chain(&e)
            );
            return None;
        }
    }
    match apply(cx, &reference, patch, binary, opener, progress).await {
        Ok(staged) => {
            tracing::info!(
                "delta: applied patch {} ({} bytes) to {}: {} bytes, sha256 {}",
                patch.url,
                patch.size,
                cx.current.id,
                staged.size,
                hex::encode(staged.sha256)
            );
            Some(Patched {
                staged,
                patch: patch.clone(),
            })
        }
        Err(e) => {
            tracing::warn!(
                "delta: patch {} failed against {}: {}; downloading the full artifact",
                patch.url,
                cx.current.id,
                crate::errors::display_chain(&e)
            );
            // A dry run (`baton check` without `--install`) leaves the
            // releases directory as it found it.
            if !cx.install {
                return None;
            }
            if let Err(e) = cx.store.mark_patch_failed(&from_hex, &patch_hex) {
                tracing::warn!(
                    "delta: cannot record the failed patch: {}",
                    crate::errors::display_chain(&e)
                );
            }
            None
        }
    }
}

/// The running release's binary digest: recorded at install, else hashed.
async fn running_digest(current: &Meta, reference: &Path) -> Result<[u8; 32], Error> {
    if let Some(d) = current
        .binary_sha256
        .as_deref()
        .and_then(crate::config::parse_sha256)
    {
        return Ok(d);
    }
    let path = reference.to_owned();
    tokio::task::spawn_blocking(move || crate::fsutil::hash_file(&path).map(|(d, _)| d))
        .await
        .map_err(|e| {
            Error::Io(IoError {
                what: "hash",
                path: reference.to_owned(),
                source: std::io::Error::other(e),
            })
        })?
        .map_err(Error::from)
}

/// Why the delta path failed, for the log.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("downloading it failed")]
    Download(#[source] Error),
    #[error("its sha256 is {actual}, the manifest states {expected}")]
    Checksum { expected: String, actual: String },
    #[error(transparent)]
    Apply(#[from] crate::delta::Error),
    #[error("cannot write the patched binary")]
    Write(#[source] std::io::Error),
    #[error("cannot create a temp file in {}", .0.display())]
    Create(std::path::PathBuf, #[source] std::io::Error),
    #[error("applying it stopped: {0}")]
    Task(String),
}

async fn apply(
    cx: &Context<'_>,
    reference: &Path,
    patch: &Patch,
    binary: [u8; 32],
    opener: &Opener,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Staged, Failure> {
    let v = cx.verify;
    // The stated size is the cap: a longer body is refused as it arrives.
    let downloaded = stage::stage(
        opener(&patch.url),
        cx.work_dir,
        &format!("patch {}", patch.url),
        patch.size.min(v.max_size),
        v.download_timeout,
        Some(patch.size),
        progress,
    )
    .await
    .map_err(Failure::Download)?;
    if downloaded.sha256 != patch.sha256 {
        return Err(Failure::Checksum {
            expected: hex::encode(patch.sha256),
            actual: hex::encode(downloaded.sha256),
        });
    }
    let out = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(cx.work_dir)
        .map_err(|e| Failure::Create(cx.work_dir.to_owned(), e))?;
    let (reference, from, max_size) = (reference.to_owned(), patch.from, v.max_size);
    let input = downloaded.file.reopen().map_err(Failure::Write)?;
    let target = out.as_file().try_clone().map_err(Failure::Write)?;
    let applied = tokio::task::spawn_blocking(move || -> Result<_, Failure> {
        let spec = crate::delta::Spec {
            reference: &reference,
            from: Some(from),
            sha256: binary,
            max_size,
        };
        let mut writer = BufWriter::with_capacity(1 << 16, target);
        let applied = crate::delta::apply(&spec, std::io::BufReader::new(input), &mut writer)?;
        let target = writer
            .into_inner()
            .map_err(|e| Failure::Write(e.into_error()))?;
        target.sync_all().map_err(Failure::Write)?;
        Ok(applied)
    })
    .await
    .map_err(|e| Failure::Task(e.to_string()))??;
    Ok(Staged {
        file: out,
        sha256: binary,
        size: applied.size,
    })
}
