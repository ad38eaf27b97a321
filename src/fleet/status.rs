//! `baton rollout status`: what the fleet's trial reports say, version by
//! version, read from the store a publish wrote to (a directory or an S3
//! prefix): started, promoted, failed and silent counts, the failure
//! reasons grouped with their hosts, the manifest's gate verdict, and the
//! percentage in force.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::report::Sink;
use crate::manifest::gate::{Gate, Verdict};
use crate::manifest::{Document, Manifest};

/// One version's reports.
#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    /// The version.
    pub version: String,
    /// Trials started.
    pub started: usize,
    /// Trials promoted.
    pub promoted: u32,
    /// Trials failed, silent ones included.
    pub failed: u32,
    /// Started trials silent past the gate's `silent_after`.
    pub silent: u32,
    /// Hosts that left this version after a signed yank.
    pub yanked: usize,
    /// The failure reasons, with the hosts that gave each.
    pub reasons: Vec<Reason>,
    /// Reports skipped: malformed, oversized, past a listing's bound.
    pub skipped: usize,
    /// The gate's verdict (the manifest's gate, else none): `open` or
    /// `held: why`.
    pub gate: Option<String>,
}

/// A failure reason and its hosts.
#[derive(Debug, Clone, Serialize)]
pub struct Reason {
    /// What the reports say.
    pub reason: String,
    /// The hosts that say it.
    pub hosts: Vec<String>,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    /// The manifest's version.
    pub manifest_version: Option<String>,
    /// The percentage in force now.
    pub percent: Option<u8>,
    /// The versions with reports, oldest name first.
    pub versions: Vec<VersionStatus>,
}

/// The largest manifest read.
const MANIFEST_LIMIT: u64 = 1 << 20;

/// Reads every version's reports under `sink`, judged by the gate of the
/// manifest beside them (`manifest`, its name), when there is one.
pub async fn read(sink: &Sink, manifest: &str) -> Result<RolloutStatus, String> {
    let manifest = sink.get(manifest, MANIFEST_LIMIT, false).await?;
    let manifest = manifest.as_deref();
    let manifest = manifest
        .map(|bytes| {
            let doc: Document = serde_json::from_slice(bytes)
                .map_err(|e| format!("the manifest is not a manifest: {e}"))?;
            Manifest::from_document_anywhere(doc, false)
                .map_err(|e| format!("the manifest does not check: {e}"))
        })
        .transpose()?;
    let now = SystemTime::now();
    let gate: Option<&Gate> = manifest.as_ref().and_then(|m| m.gate.as_ref());
    let mut versions = Vec::new();
    for version in sink.versions().await? {
        let reports = sink.read(&version).await?;
        let yanked = sink
            .list(
                &super::report::version_key(&version),
                super::Outcome::Yanked,
            )
            .await?;
        let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for seen in &reports.failed {
            by_reason
                .entry(
                    seen.reason
                        .clone()
                        .unwrap_or_else(|| "no reason read".into()),
                )
                .or_default()
                .push(seen.host_id.clone());
        }
        // Without a gate, silence counts from the default.
        let judge = gate.cloned().unwrap_or(Gate {
            canary: 0,
            max_failures: u32::MAX,
            max_failure_percent: 100,
            min_promoted: 0,
            silent_after: crate::manifest::gate::SILENT_AFTER_DEFAULT,
        });
        let (counts, verdict) = match judge.verdict(&reports, now) {
            Verdict::Open(c) => (c, "open".to_owned()),
            Verdict::Held { counts, why } => (counts, format!("held: {why}")),
        };
        versions.push(VersionStatus {
            version,
            started: reports.started.len(),
            promoted: counts.promoted,
            failed: counts.failed,
            silent: counts.silent,
            yanked: yanked.found.len(),
            reasons: by_reason
                .into_iter()
                .map(|(reason, hosts)| Reason { reason, hosts })
                .collect(),
            skipped: reports.skipped + yanked.skipped,
            gate: gate.map(|_| verdict),
        });
    }
    Ok(RolloutStatus {
        manifest_version: manifest.as_ref().and_then(|m| m.version.clone()),
        percent: manifest.as_ref().map(|m| m.percent_at(now)),
        versions,
    })
}

impl RolloutStatus {
    /// A short aligned table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match (&self.manifest_version, self.percent) {
            (Some(v), Some(p)) => out.push_str(&format!("manifest  {v}, rollout {p} % in force\n")),
            _ => out.push_str("manifest  none\n"),
        }
        if self.versions.is_empty() {
            out.push_str("no trial reports yet\n");
            return out;
        }
        out.push_str(&format!(
            "{:<16} {:>7} {:>8} {:>6} {:>6} {:>6}  gate\n",
            "version", "started", "promoted", "failed", "silent", "yanked"
        ));
        for v in &self.versions {
            out.push_str(&format!(
                "{:<16} {:>7} {:>8} {:>6} {:>6} {:>6}  {}\n",
                v.version,
                v.started,
                v.promoted,
                v.failed,
                v.silent,
                v.yanked,
                v.gate.as_deref().unwrap_or("-")
            ));
            for r in &v.reasons {
                out.push_str(&format!(
                    "  {} host{}: {}\n",
                    r.hosts.len(),
                    if r.hosts.len() == 1 { "" } else { "s" },
                    r.reason
                ));
            }
            if v.skipped > 0 {
                out.push_str(&format!("  {} report(s) skipped\n", v.skipped));
            }
        }
        out
    }
}

impl Sink {
    /// The versions that have reports.
    pub async fn versions(&self) -> Result<Vec<String>, String> {
        let mut versions: Vec<String> = match self {
            Sink::Dir(dir) => {
                let (dir, limit) = (dir.clone(), super::read::LIST_LIMIT);
                let listed = tokio::task::spawn_blocking(move || {
                    match super::beneath::open_dir(&dir, "reports", false)? {
                        Some(reports) => reports.list(limit).map(|(entries, _)| entries),
                        None => Ok(Vec::new()),
                    }
                })
                .await
                .map_err(|e| format!("the listing task failed: {e}"))??;
                listed
                    .into_iter()
                    .filter(|e| e.is_dir)
                    .map(|e| e.name)
                    .collect()
            }
            #[cfg(feature = "s3")]
            Sink::S3 { at, prefix } => at.list_dirs(&format!("{prefix}reports/")).await?,
        };
        versions.sort_by(|a, b| {
            match (
                crate::version::parse_version(a),
                crate::version::parse_version(b),
            ) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => a.cmp(b),
            }
        });
        Ok(versions)
    }
}
