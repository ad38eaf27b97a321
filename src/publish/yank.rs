//! `baton publish --yank V`: pulls a release back from the fleet. The
//! manifest is re-signed to name the newest release in the publisher's
//! history ([`super::HISTORY`]) that is not yanked, or the one `--version`
//! names, with V added to its signed `yanked` list. Hosts running V take
//! that release through a trial (from its installed directory when they
//! have it), whatever their bucket; no host takes V again. The list is kept
//! by every later publish, and a publish of a yanked version is refused.
//!
//! The named release's artifacts must still be at the target: they are
//! the history's, unchanged (a host that must download one checks its
//! digest as always). The rollout is 100 % unless `--rollout` says
//! otherwise; the gate, the channel and `expires` carry over.

use std::time::SystemTime;

use super::{current, Error, History, Publish, MANIFEST};
use crate::manifest::{rfc3339, Artifact, Document, Rollout};

/// Whether `list` names `version` (as semver: `v2.0.0` is `2.0.0`).
pub fn listed(list: &[String], version: &str) -> bool {
    let Some(v) = crate::version::parse_version(version) else {
        return false;
    };
    list.iter()
        .any(|y| crate::version::parse_version(y).as_ref() == Some(&v))
}

/// The manifest a yank publishes, from the target's manifest `old` (its
/// signature must verify with the signing key) and its `history`.
pub(super) fn yank(
    p: &Publish,
    old: Option<Vec<u8>>,
    old_signature: Option<&[u8]>,
    history: Option<Vec<u8>>,
    key: Option<&(minisign::SecretKey, minisign::PublicKey)>,
    now: SystemTime,
) -> Result<Document, Error> {
    let invalid = |text: String| Err(Error::Invalid(text));
    if !p.artifacts.is_empty() {
        return invalid(
            "--yank takes no artifacts: it names an earlier release from the target's history \
             (or the one --version names)"
                .into(),
        );
    }
    if key.is_none() {
        return invalid(
            "--yank needs --sign KEY: hosts honour a yank only in a signed manifest".into(),
        );
    }
    let old = current(&p.to.show(MANIFEST), old, old_signature, key)?;
    let mut yanked = old.yanked.clone();
    for v in &p.yank {
        if crate::version::parse_version(v).is_none() {
            return invalid(format!("--yank {v:?} is not a semver version"));
        }
        if !listed(&yanked, v) {
            yanked.push(v.trim().to_owned());
        }
    }
    let shown = p.to.show(super::HISTORY);
    let history: History = match history {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{shown} is not a release history: {e}")))?,
        None => {
            return invalid(format!(
                "there is no release history at {shown}, so no earlier release to go back to: \
                 publish the release to go back to with --version and its artifacts, then yank"
            ))
        }
    };
    let chosen = match &p.version {
        Some(want) => {
            if listed(&yanked, want) {
                return invalid(format!("--version {want} is yanked itself"));
            }
            history
                .releases
                .iter()
                .find(|r| listed(std::slice::from_ref(want), &r.version))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{shown} does not list version {want} (it lists {})",
                        versions(&history)
                    ))
                })?
        }
        None => history
            .releases
            .iter()
            .find(|r| !listed(&yanked, &r.version))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "every release {shown} lists is yanked ({}): nothing to go back to",
                    versions(&history)
                ))
            })?,
    };
    let mut doc = Document {
        version: Some(chosen.version.clone()),
        published_at: Some(rfc3339(now)),
        expires: old.expires,
        rollout: Some(p.rollout.clone().unwrap_or(Rollout::Percent(100))),
        channel: old.channel,
        gate: old.gate,
        yanked,
        ..Document::default()
    };
    for a in &chosen.artifacts {
        let binary_sha256 = a.binary_sha256.clone().filter(|b| *b != a.sha256);
        match &a.target {
            Some(triple) => {
                doc.targets.get_or_insert_with(Default::default).insert(
                    triple.clone(),
                    Artifact {
                        url: a.url.clone(),
                        sha256: a.sha256.clone(),
                        size: Some(a.size),
                        binary_sha256,
                        patches: Vec::new(),
                    },
                );
            }
            None => {
                doc.url = Some(a.url.clone());
                doc.sha256 = Some(a.sha256.clone());
                doc.size = Some(a.size);
                doc.binary_sha256 = binary_sha256;
            }
        }
    }
    if doc.url.is_none() && doc.targets.is_none() {
        return invalid(format!(
            "{shown} lists no artifact for version {}",
            chosen.version
        ));
    }
    tracing::info!(
        "yanking {}: the manifest names version {} again",
        p.yank.join(", "),
        chosen.version
    );
    Ok(doc)
}

fn versions(history: &History) -> String {
    history
        .releases
        .iter()
        .map(|r| r.version.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
