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

/// Adds `p.yank` to `doc`'s yanked list: `doc` is a fresh publish of the
/// release to go back to, with its artifacts (`--yank V --version W
/// ARTIFACT…`); every host goes back unless `--rollout` says otherwise.
pub(super) fn add(p: &Publish, doc: &mut Document, signed: bool) -> Result<(), Error> {
    if !signed {
        return Err(needs_a_key());
    }
    doc.yanked = with_yanks(p, std::mem::take(&mut doc.yanked))?;
    let version = doc.version.clone().unwrap_or_default();
    if listed(&doc.yanked, &version) {
        return Err(Error::Invalid(format!(
            "--version {version} is yanked itself"
        )));
    }
    if p.rollout.is_none() {
        doc.rollout = Some(Rollout::Percent(100));
    }
    Ok(())
}

fn needs_a_key() -> Error {
    Error::Invalid("--yank needs --sign KEY: hosts honour a yank only in a signed manifest".into())
}

/// `yanked` with `p.yank` added (each once, as semver).
fn with_yanks(p: &Publish, mut yanked: Vec<String>) -> Result<Vec<String>, Error> {
    for v in &p.yank {
        if crate::version::parse_version(v).is_none() {
            return Err(Error::Invalid(format!(
                "--yank {v:?} is not a semver version"
            )));
        }
        if !listed(&yanked, v) {
            yanked.push(v.trim().to_owned());
        }
    }
    Ok(yanked)
}

/// The manifest a yank publishes, from the target's manifest `old` (its
/// signature must verify with the signing key) and its `history` with
/// that history's signature (which must verify too: the manifest signs
/// the digests it takes from there).
pub(super) fn yank(
    p: &Publish,
    old: Option<Vec<u8>>,
    old_signature: Option<&[u8]>,
    history: Option<(Vec<u8>, Option<Vec<u8>>)>,
    key: Option<&(minisign::SecretKey, minisign::PublicKey)>,
    now: SystemTime,
) -> Result<Document, Error> {
    let invalid = |text: String| Err(Error::Invalid(text));
    let Some((_, pk)) = key else {
        return Err(needs_a_key());
    };
    let old = current(&p.to.show(MANIFEST), old, old_signature, key)?;
    let yanked = with_yanks(p, old.yanked.clone())?;
    let shown = p.to.show(super::HISTORY);
    let by_hand = "publish the release to go back to with its artifacts instead: \
                   baton publish --to TARGET --yank V --version W --sign KEY ARTIFACT…";
    let history: History = match history {
        Some((bytes, signature)) => {
            match signature.map(|s| super::verify_with(&bytes, &s, pk)) {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    return invalid(format!(
                        "{shown}'s signature does not verify with this key ({e}): its digests \
                         are not signed again; {by_hand}"
                    ))
                }
                None => {
                    return invalid(format!(
                        "{shown} is not signed (it was written by an unsigned publish, or before \
                         histories were signed), so its digests are not signed again; {by_hand}"
                    ))
                }
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::Invalid(format!("{shown} is not a release history: {e}")))?
        }
        None => {
            return invalid(format!(
                "there is no release history at {shown}, so no earlier release to go back to; \
                 {by_hand}"
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
