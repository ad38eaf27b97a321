//! The gate: a signed rule in the manifest that stops a bad release at its
//! canaries. A host whose bucket is below `canary` (percent) takes the
//! release when its turn comes without looking; every other host first
//! reads the version's trial reports and takes it only while
//!
//! - `failed < max_failures`,
//! - `failed / (failed + promoted) ≤ max_failure_percent`, and
//! - `promoted ≥ min_promoted`.
//!
//! A `started` report with no outcome that is older than `silent_after`
//! counts as failed: a host that died in its trial is a failure, not a
//! wait. The verdict here is pure: the reports are read elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::rollout::Rollout;

/// `silent_after` where the gate does not say.
pub const SILENT_AFTER_DEFAULT: Duration = Duration::from_secs(15 * 60);

/// The gate as written in a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateDocument {
    /// Hosts whose bucket is below this percentage are canaries; default
    /// the schedule's first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u8>,
    /// Hold while this many or more trials failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    /// Hold while more than this percentage of ended trials failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_percent: Option<u8>,
    /// Hold until this many trials were promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_promoted: Option<u32>,
    /// A started trial with no outcome for this long counts as failed
    /// (`"15m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_after: Option<String>,
}

/// A checked gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// Hosts whose bucket is below this percentage are canaries.
    pub canary: u8,
    /// Hold while `failed >= max_failures`.
    pub max_failures: u32,
    /// Hold while `failed / (failed + promoted) > max_failure_percent`.
    pub max_failure_percent: u8,
    /// Hold while `promoted < min_promoted`.
    pub min_promoted: u32,
    /// A started trial silent this long counts as failed.
    pub silent_after: Duration,
}

impl GateDocument {
    /// Checks the gate against the manifest's rollout: `canary` defaults to
    /// a schedule's first step, and must be stated with a fixed
    /// percentage; a gate no host could ever open is refused.
    pub fn check(&self, rollout: &Rollout) -> Result<Gate, String> {
        let canary = match (self.canary, rollout) {
            (Some(c), _) => c,
            (None, Rollout::Schedule(steps)) => steps.first().map_or(0, |s| s.percent),
            (None, Rollout::Percent(_)) => {
                return Err("a gate on a fixed percentage must state `canary`".into())
            }
        };
        if canary > 100 {
            return Err(format!("canary {canary} is over 100 %"));
        }
        let max_failure_percent = self.max_failure_percent.unwrap_or(100);
        if max_failure_percent > 100 {
            return Err(format!(
                "max_failure_percent {max_failure_percent} is over 100 %"
            ));
        }
        let max_failures = self.max_failures.unwrap_or(u32::MAX);
        let min_promoted = self.min_promoted.unwrap_or(1);
        if max_failures == 0 {
            return Err(
                "max_failures 0 holds every host for ever: no trial may fail, \
                        and a failure is `failed >= max_failures`"
                    .into(),
            );
        }
        if canary == 0 && min_promoted > 0 {
            return Err(format!(
                "with canary 0 no host tries the release before the gate, so \
                 min_promoted {min_promoted} can never be met"
            ));
        }
        let silent_after = match &self.silent_after {
            Some(text) => crate::time::parse_duration(text)
                .map_err(|e| format!("silent_after {text:?}: {e}"))?,
            None => SILENT_AFTER_DEFAULT,
        };
        Ok(Gate {
            canary,
            max_failures,
            max_failure_percent,
            min_promoted,
            silent_after,
        })
    }
}

/// One report as the gate reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// The host that wrote it.
    pub host_id: String,
    /// When: the file's or the object's time.
    pub at: SystemTime,
    /// For a failure: where, why, and the last stderr line, as one line.
    pub reason: Option<String>,
}

/// A version's reports, as listed.
#[derive(Debug, Clone, Default)]
pub struct Reports {
    /// `failed/`.
    pub failed: Vec<Seen>,
    /// `promoted/`: the hosts.
    pub promoted: BTreeSet<String>,
    /// `started/`.
    pub started: Vec<Seen>,
    /// Reports skipped: malformed, oversized, or past a listing's bound.
    pub skipped: usize,
    /// The listing of `failed/` stopped at its bound: `failed` is a floor.
    pub failures_cut: bool,
}

/// The counts a verdict was reached on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Trials failed.
    pub failed: u32,
    /// Of them, started trials silent past `silent_after`.
    pub silent: u32,
    /// Trials promoted.
    pub promoted: u32,
    /// Trials started and not ended (nor silent yet).
    pub running: u32,
    /// Reports skipped: malformed, oversized, not a regular file, or past
    /// a listing's bound (a skipped failure still counts as one).
    #[serde(default)]
    pub skipped: u32,
    /// More failures were reported than a listing reads: `failed` is a
    /// floor, and the gate holds.
    #[serde(default)]
    pub failures_cut: bool,
}

/// Whether the gate lets a host take the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It does.
    Open(Counts),
    /// It holds, and why.
    Held {
        /// The counts.
        counts: Counts,
        /// Why, with the failures' reasons grouped.
        why: String,
    },
}

impl Gate {
    /// Whether a host in `bucket` (the cohort rule's) is a canary: the
    /// rollout's own exact comparison, at `canary` percent.
    pub fn is_canary(&self, bucket: u64) -> bool {
        super::rollout::admits(bucket, self.canary)
    }

    /// The verdict on `reports` at `now`.
    pub fn verdict(&self, reports: &Reports, now: SystemTime) -> Verdict {
        let failed_hosts: BTreeSet<&str> =
            reports.failed.iter().map(|s| s.host_id.as_str()).collect();
        let mut reasons: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for s in &reports.failed {
            let reason = s.reason.clone().unwrap_or_else(|| "no reason given".into());
            reasons.entry(reason).or_default().push(&s.host_id);
        }
        let mut counts = Counts {
            failed: failed_hosts.len() as u32,
            promoted: reports.promoted.len() as u32,
            skipped: u32::try_from(reports.skipped).unwrap_or(u32::MAX),
            failures_cut: reports.failures_cut,
            ..Counts::default()
        };
        for s in &reports.started {
            let ended =
                failed_hosts.contains(s.host_id.as_str()) || reports.promoted.contains(&s.host_id);
            if ended {
                continue;
            }
            let age = now.duration_since(s.at).unwrap_or_default();
            if age >= self.silent_after {
                counts.silent += 1;
                counts.failed += 1;
                let reason = format!(
                    "silent past silent_after ({}) since it started",
                    humantime::format_duration(self.silent_after)
                );
                reasons.entry(reason).or_default().push(&s.host_id);
            } else {
                counts.running += 1;
            }
        }
        let mut held = self.failures_hold(&counts);
        if counts.promoted < self.min_promoted {
            held.push(format!(
                "{} promoted (min_promoted {})",
                counts.promoted, self.min_promoted
            ));
        }
        if held.is_empty() {
            return Verdict::Open(counts);
        }
        let mut why = held.join(", ");
        if !reasons.is_empty() {
            let grouped: Vec<String> = reasons
                .iter()
                .map(|(reason, hosts)| format!("{}: {reason}", hosts.join(" ")))
                .collect();
            why = format!("{why}: {}", grouped.join("; "));
        }
        Verdict::Held { counts, why }
    }

    /// Whether failures alone close the gate (`max_failures`,
    /// `max_failure_percent`): the release is bad, as opposed to not yet
    /// proved (`min_promoted`). `baton rollout watch` halts on this.
    pub fn trips(&self, counts: &Counts) -> bool {
        !self.failures_hold(counts).is_empty()
    }

    /// The failure rules that hold at `counts`, described.
    fn failures_hold(&self, counts: &Counts) -> Vec<String> {
        let ended = counts.failed + counts.promoted;
        let mut held = Vec::new();
        if counts.failures_cut {
            held.push(format!(
                "at least {} failed trial{}, more than one listing of failed/ reads: the gate \
                 cannot count them all",
                counts.failed,
                plural(counts.failed)
            ));
        }
        if counts.failed >= self.max_failures {
            held.push(format!(
                "{} failed trial{} (max_failures {})",
                counts.failed,
                plural(counts.failed),
                self.max_failures
            ));
        }
        if ended > 0
            && u64::from(counts.failed) * 100
                > u64::from(self.max_failure_percent) * u64::from(ended)
        {
            held.push(format!(
                "{} % of ended trials failed (max_failure_percent {})",
                u64::from(counts.failed) * 100 / u64::from(ended),
                self.max_failure_percent
            ));
        }
        held
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Step;

    fn gate(max_failures: u32, pct: u8, min_promoted: u32) -> Gate {
        GateDocument {
            canary: Some(5),
            max_failures: Some(max_failures),
            max_failure_percent: Some(pct),
            min_promoted: Some(min_promoted),
            silent_after: Some("15m".into()),
        }
        .check(&Rollout::Percent(100))
        .unwrap()
    }

    fn seen(host: &str, ago: u64, reason: Option<&str>, now: SystemTime) -> Seen {
        Seen {
            host_id: host.into(),
            at: now - Duration::from_secs(ago),
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn canaries_decide_for_the_rest() {
        let g = gate(3, 10, 1);
        let at = |percent: f64| (percent / 100.0 * 2f64.powi(64)) as u64;
        assert!(g.is_canary(at(4.99)) && !g.is_canary(at(5.0)));
        let now = SystemTime::now();
        let mut r = Reports::default();
        assert!(
            matches!(g.verdict(&r, now), Verdict::Held { ref why, .. } if why == "0 promoted (min_promoted 1)")
        );
        r.promoted.insert("c1".into());
        assert!(matches!(g.verdict(&r, now), Verdict::Open(c) if c.promoted == 1));
        for (i, host) in ["a", "b", "c"].into_iter().enumerate() {
            r.failed.push(seen(
                host,
                i as u64,
                Some("start exit 3 \"cannot open database\""),
                now,
            ));
        }
        let Verdict::Held { counts, why } = g.verdict(&r, now) else {
            panic!("three failures hold");
        };
        assert_eq!(counts.failed, 3);
        assert!(why.starts_with("3 failed trials (max_failures 3)"), "{why}");
        assert!(
            why.contains("a b c: start exit 3 \"cannot open database\""),
            "{why}"
        );
    }

    #[test]
    fn the_failure_percentage_holds_a_release_that_mostly_fails() {
        let g = gate(100, 10, 1);
        let now = SystemTime::now();
        let mut r = Reports::default();
        for h in 0..9 {
            r.promoted.insert(format!("p{h}"));
        }
        r.failed.push(seen("f0", 0, None, now));
        assert!(
            matches!(g.verdict(&r, now), Verdict::Open(_)),
            "1 of 10 is 10 %"
        );
        r.failed.push(seen("f1", 0, None, now));
        assert!(
            matches!(g.verdict(&r, now), Verdict::Held { ref why, .. } if why.contains("18 % of ended trials failed"))
        );
    }

    #[test]
    fn failures_past_a_listings_bound_hold_whatever_the_limits() {
        let g = gate(u32::MAX, 100, 0);
        let now = SystemTime::now();
        let mut r = Reports::default();
        for h in 0..3 {
            r.promoted.insert(format!("p{h}"));
        }
        r.failed.push(seen("f0", 0, None, now));
        assert!(matches!(g.verdict(&r, now), Verdict::Open(_)));
        r.failures_cut = true;
        let Verdict::Held { counts, why } = g.verdict(&r, now) else {
            panic!("a count that is only a floor holds");
        };
        assert!(
            counts.failures_cut && why.contains("at least 1 failed trial"),
            "{why}"
        );
        assert!(g.trips(&counts), "the watch halts on it too");
    }

    #[test]
    fn a_silent_trial_counts_as_failed_after_silent_after() {
        let g = gate(1, 100, 0);
        let now = SystemTime::now();
        let mut r = Reports::default();
        r.started.push(seen("dead", 14 * 60, None, now));
        r.started.push(seen("done", 3600, None, now));
        r.promoted.insert("done".into());
        assert!(matches!(g.verdict(&r, now), Verdict::Open(c) if c.running == 1));
        let later = now + Duration::from_secs(60);
        let Verdict::Held { counts, why } = g.verdict(&r, later) else {
            panic!("a silent trial is a failure");
        };
        assert_eq!((counts.silent, counts.failed), (1, 1));
        assert!(
            why.contains("dead: silent past silent_after (15m) since it started"),
            "{why}"
        );
        assert_eq!(
            g.verdict(&r, later + Duration::from_secs(60)),
            g.verdict(&r, later),
            "the same reason at the next poll: said once"
        );
    }

    #[test]
    fn gates_no_host_could_open_are_refused() {
        let fixed = Rollout::Percent(100);
        assert!(GateDocument::default()
            .check(&fixed)
            .unwrap_err()
            .contains("must state `canary`"));
        let schedule = Rollout::Schedule(vec![
            Step {
                after: "0s".into(),
                percent: 1,
            },
            Step {
                after: "1h".into(),
                percent: 100,
            },
        ]);
        assert_eq!(GateDocument::default().check(&schedule).unwrap().canary, 1);
        let zero = GateDocument {
            canary: Some(0),
            ..GateDocument::default()
        };
        assert!(zero.check(&fixed).unwrap_err().contains("can never be met"));
        let none_may_fail = GateDocument {
            canary: Some(5),
            max_failures: Some(0),
            ..GateDocument::default()
        };
        assert!(none_may_fail.check(&fixed).is_err());
    }
}
