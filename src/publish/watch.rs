//! `baton rollout watch`: the gate, for stores that cannot take reports.
//! It reads the target's manifest (its signature must verify with the
//! signing key), evaluates the manifest's gate on the fleet's
//! `baton_trials_total` through Prometheus, and when failures trip it
//! (`max_failures`, `max_failure_percent`) re-signs the manifest at
//! `rollout: 0`, a halt, and says why. A gate not yet proved
//! (`min_promoted`) is reported, not halted: hosts on a read-only store
//! follow the schedule. It never advances a rollout, and fails closed: when
//! Prometheus cannot be read, or knows no baton master, it is an error.

use std::path::PathBuf;
use std::time::SystemTime;

use super::{current, load_key, target, Error, Publish, MANIFEST, SIGNATURE};
use crate::fleet::prometheus::Prometheus;
use crate::manifest::gate::Verdict;
use crate::manifest::{Manifest, Rollout};

/// One `baton rollout watch`.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Where the manifest is published.
    pub to: target::Destination,
    /// The Prometheus server's base URL.
    pub prometheus: String,
    /// The minisign secret key the manifest is signed (and re-signed) with.
    pub sign: PathBuf,
}

/// What one look found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The gate is open.
    Open,
    /// The gate holds for want of promotions; the schedule goes on.
    Waiting,
    /// Failures tripped the gate: the manifest was re-signed at rollout 0.
    Halted,
    /// Failures tripped the gate, and the manifest was already halted.
    AlreadyHalted,
}

/// A look's outcome, said.
#[derive(Debug, Clone)]
pub struct Look {
    /// The manifest's version.
    pub version: String,
    /// What it found.
    pub found: Found,
    /// The counts and the gate's reasons, as one line.
    pub why: String,
    /// Baton masters Prometheus scrapes.
    pub hosts: usize,
}

impl std::fmt::Display for Look {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.version;
        match self.found {
            Found::Open => write!(f, "{v}: gate open ({})", self.why),
            Found::Waiting => write!(f, "{v}: not proved yet, the schedule goes on: {}", self.why),
            Found::Halted => write!(
                f,
                "{v}: gate tripped: {}; halted: the manifest is re-signed at rollout 0",
                self.why
            ),
            Found::AlreadyHalted => {
                write!(
                    f,
                    "{v}: gate tripped: {}; the rollout is already halted",
                    self.why
                )
            }
        }?;
        write!(f, " [{} baton masters in Prometheus]", self.hosts)
    }
}

/// Looks once: reads the manifest, evaluates its gate from Prometheus, and
/// halts the rollout when failures trip it.
pub async fn look(w: &Watch) -> Result<Look, Error> {
    let key = load_key(&w.sign)?;
    let mut target = target::open(&w.to).await?;
    let bytes = target.read(MANIFEST).await?;
    let signature = target.read(SIGNATURE).await?;
    if signature.is_none() {
        return Err(Error::Invalid(format!(
            "{} is not signed: the watch re-signs what it halts, so it needs a signed manifest",
            w.to.show(MANIFEST)
        )));
    }
    let doc = current(
        &w.to.show(MANIFEST),
        bytes,
        signature.as_deref(),
        Some(&key),
    )?;
    let halted = doc.rollout == Some(Rollout::Percent(0));
    let manifest = Manifest::from_document_anywhere(doc, true)
        .map_err(|e| Error::Invalid(format!("{} is refused: {e}", w.to.show(MANIFEST))))?;
    let version = manifest.version.clone().unwrap_or_default();
    let gate = manifest.gate.ok_or_else(|| {
        Error::Invalid(format!(
            "the manifest of {version} has no gate to evaluate; publish it with --gate"
        ))
    })?;
    let prometheus = Prometheus::new(&w.prometheus).map_err(Error::Invalid)?;
    let now = SystemTime::now();
    let trials = prometheus
        .trials(&version, gate.silent_after, now)
        .await
        .map_err(|why| Error::Remote {
            what: "evaluate the gate".into(),
            reason: why,
        })?;
    let (counts, why) = match gate.verdict(&trials.reports, now) {
        Verdict::Open(counts) => (counts, String::new()),
        Verdict::Held { counts, why } => (counts, why),
    };
    let said = format!(
        "{} failed ({} silent), {} promoted, {} running{}",
        counts.failed,
        counts.silent,
        counts.promoted,
        counts.running,
        if why.is_empty() {
            String::new()
        } else {
            format!(": {why}")
        }
    );
    let found = if !gate.trips(&counts) {
        if why.is_empty() {
            Found::Open
        } else {
            Found::Waiting
        }
    } else if halted {
        Found::AlreadyHalted
    } else {
        drop(target);
        super::publish_report_async(&Publish {
            to: w.to.clone(),
            rollout: Some(Rollout::Percent(0)),
            sign: Some(w.sign.clone()),
            version: Some(version.clone()),
            ..Publish::default()
        })
        .await?;
        tracing::warn!(
            event = "rollout_halted",
            version = %version,
            "rollout of {version} halted by its gate: {said}"
        );
        Found::Halted
    };
    Ok(Look {
        version,
        found,
        why: said,
        hosts: trials.hosts,
    })
}
