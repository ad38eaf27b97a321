//! A signed manifest's `yanked` list, on a host: the versions it names are
//! recorded and never installed again; a host running one of them goes
//! back to the manifest's release, preferring an installed release
//! directory whose executable has the manifest's binary digest (nothing
//! downloaded). An unsigned list changes nothing, and the log says why; a
//! forged one never gets this far (its signature fails).

use super::{Error, Meta, Outcome, Step, Store};
use crate::fetchers::Info;

/// Records the versions a signed manifest yanks (when installing), so
/// that no later manifest installs them; says why an unsigned list is
/// ignored. Runs on every manifest read, even one naming the running
/// release.
pub(super) fn record(store: &Store, info: &Info, install: bool) -> Result<(), Error> {
    let Some(m) = info.manifest.as_ref().filter(|m| !m.yanked.is_empty()) else {
        return Ok(());
    };
    if !m.signed {
        tracing::warn!(
            event = "yank_ignored",
            "the manifest offering {} yanks {}, but it is not signed (verify.minisign_key \
             is not set): a yank is honoured only in a signed manifest, so nothing changes",
            info.source,
            list(&m.yanked)
        );
    } else if install {
        for v in &m.yanked {
            if !store.is_yanked(&v.to_string())? {
                store.mark_yanked(v)?;
                tracing::warn!(
                    event = "version_yanked",
                    version = %v,
                    "version {v} is yanked by the signed manifest offering {}: it will not \
                     be installed here again (`baton upgrade --force` forgets this)",
                    info.source
                );
            }
        }
    }
    Ok(())
}

/// Skips a candidate whose version was yanked here, and, when a signed
/// manifest yanks the running release, takes the host back (see
/// [`leave`]). `None`: the check goes on as usual.
pub(super) async fn decide(
    store: &Store,
    info: &Info,
    current: Option<&Meta>,
    install: bool,
) -> Result<Option<Step>, Error> {
    if let Some(v) = &info.version {
        if store.is_yanked(v)? {
            return Ok(Some(Step::Done(Outcome::Yanked { version: v.clone() })));
        }
    }
    let Some(m) = info.manifest.as_ref().filter(|m| m.signed) else {
        return Ok(None);
    };
    match current.filter(|c| c.version.as_deref().is_some_and(|v| m.yanks(v))) {
        Some(yanked) => leave(store, info, yanked.clone(), install).await.map(Some),
        None => Ok(None),
    }
}

/// The host leaves the yanked running release `yanked` for the
/// manifest's: holds the yanked digest (when installing), and reuses an
/// installed release directory when one has the manifest's version and
/// binary digest.
async fn leave(store: &Store, info: &Info, yanked: Meta, install: bool) -> Result<Step, Error> {
    let to = info.version.clone().unwrap_or_default();
    tracing::warn!(
        event = "leaving_yanked",
        release = %yanked.id,
        "release {} runs version {}, which the signed manifest offering {} yanks: going \
         back to version {to}",
        yanked.id,
        yanked.version.as_deref().unwrap_or_default(),
        info.source
    );
    if install {
        store.hold(&yanked.sha256)?;
    }
    let binary = info.manifest.as_ref().and_then(|m| m.binary());
    let reused = match binary {
        Some(digest) => installed(store, &to, &yanked.id, digest).await,
        None => None,
    };
    match reused {
        Some(release) if store.skipped(&release.sha256)? => Ok(Step::Done(Outcome::KnownBad {
            sha256: release.sha256,
        })),
        Some(release) => {
            tracing::info!(
                event = "release_reused",
                release = %release.id,
                "release {} is installed with version {to}'s binary digest: nothing to download",
                release.id
            );
            Ok(Step::Done(Outcome::Leaves {
                release,
                yanked,
                reused: true,
            }))
        }
        None => Ok(Step::Go {
            leaving: Some(yanked),
        }),
    }
}

/// An installed release of `version` (not `except`) whose executable, as
/// hashed now, has the digest `binary`.
async fn installed(store: &Store, version: &str, except: &str, binary: [u8; 32]) -> Option<Meta> {
    let want = crate::version::parse_version(version)?;
    let store = store.clone();
    let except = except.to_owned();
    tokio::task::spawn_blocking(move || {
        store.releases().into_iter().find(|r| {
            r.id != except
                && r.version.as_deref().and_then(crate::version::parse_version)
                    == Some(want.clone())
                && crate::fsutil::hash_file(&store.binary_in(&store.dir().join(&r.id)))
                    .is_ok_and(|(digest, _)| digest == binary)
        })
    })
    .await
    .ok()
    .flatten()
}

fn list(versions: &[semver::Version]) -> String {
    versions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
