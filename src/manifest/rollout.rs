//! Phased rollout: the percentage a manifest puts in force at a given time,
//! and whether a host's stable bucket falls inside it.
//!
//! A host is in a release's rollout when
//! `u64(sha256("baton-rollout" ‖ host_id ‖ version)[0..8]) / 2^64 < percent/100`
//! (the first eight bytes of the digest read big-endian). The comparison is
//! done exactly in integers: `bucket · 100 < percent · 2^64`. So the cohort
//! at `p` % is contained in the cohort at any higher percentage, and a new
//! version draws a new canary set.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The domain separator hashed before the host id and version.
const DOMAIN: &[u8] = b"baton-rollout";

/// How much of the fleet a release is offered to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rollout {
    /// A fixed percentage, 0–100. `0` halts the rollout.
    Percent(u8),
    /// Steps counted from the manifest's `published_at`.
    Schedule(Vec<Step>),
}

impl Default for Rollout {
    fn default() -> Rollout {
        Rollout::Percent(100)
    }
}

/// One step of a schedule: from `after` past `published_at` on, `percent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A duration such as `"0s"`, `"24h"`, `"2d"`.
    pub after: String,
    /// The percentage in force from then on, 0–100.
    pub percent: u8,
}

impl Rollout {
    /// Checks percentages (at most 100) and that a schedule is monotone:
    /// its steps in increasing `after`, percentages never falling. Returns
    /// the schedule's offsets.
    pub fn validate(&self) -> Result<Vec<Duration>, String> {
        match self {
            Rollout::Percent(p) if *p > 100 => Err(format!("percentage {p} is above 100")),
            Rollout::Percent(_) => Ok(Vec::new()),
            Rollout::Schedule(steps) if steps.is_empty() => Err("the schedule is empty".into()),
            Rollout::Schedule(steps) => {
                let mut offsets = Vec::with_capacity(steps.len());
                let mut last: Option<(Duration, u8)> = None;
                for step in steps {
                    let after = crate::time::parse_duration(&step.after)
                        .or_else(|e| {
                            if step.after.trim() == "0" {
                                Ok(Duration::ZERO)
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| format!("step after {:?}: {e}", step.after))?;
                    if step.percent > 100 {
                        return Err(format!("step percent {} is above 100", step.percent));
                    }
                    if let Some((a, p)) = last {
                        if after <= a {
                            return Err(format!(
                                "steps must be in increasing `after` order ({:?} follows a later or equal step)",
                                step.after
                            ));
                        }
                        if step.percent < p {
                            return Err(format!(
                                "percentages may not fall along the schedule ({} after {p})",
                                step.percent
                            ));
                        }
                    }
                    last = Some((after, step.percent));
                    offsets.push(after);
                }
                Ok(offsets)
            }
        }
    }

    /// The percentage in force at `now`. A schedule gives 0 before its
    /// first step and before `published_at` (a clock behind the
    /// publisher's); without `published_at` a schedule gives 0.
    pub fn percent_at(&self, published_at: Option<SystemTime>, now: SystemTime) -> u8 {
        match self {
            Rollout::Percent(p) => (*p).min(100),
            Rollout::Schedule(steps) => {
                let (Some(start), Ok(offsets)) = (published_at, self.validate()) else {
                    return 0;
                };
                let Ok(elapsed) = now.duration_since(start) else {
                    return 0;
                };
                steps
                    .iter()
                    .zip(offsets)
                    .take_while(|(_, after)| *after <= elapsed)
                    .last()
                    .map_or(0, |(s, _)| s.percent)
            }
        }
    }

    /// When the percentage in force next changes, if it will.
    pub fn next_change(
        &self,
        published_at: Option<SystemTime>,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let (Rollout::Schedule(_), Some(start), Ok(offsets)) =
            (self, published_at, self.validate())
        else {
            return None;
        };
        offsets
            .into_iter()
            .filter_map(|after| start.checked_add(after))
            .find(|at| *at > now)
    }

    /// Whether this is an explicit halt (`"rollout": 0`).
    pub fn is_halt(&self) -> bool {
        matches!(self, Rollout::Percent(0))
    }
}

/// The host's bucket for `version`: the first eight bytes of
/// `sha256("baton-rollout" ‖ host_id ‖ version)`, big-endian.
pub fn bucket(host_id: &str, version: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(host_id.as_bytes())
        .chain_update(version.as_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"))
}

/// Whether `bucket / 2^64 < percent / 100`, computed exactly.
pub fn admits(bucket: u64, percent: u8) -> bool {
    u128::from(bucket) * 100 < u128::from(percent.min(100)) << 64
}

/// The bucket on the percentage scale (0 ≤ b < 100), for reports: the host
/// is in once the percentage in force exceeds it.
pub fn bucket_percent(bucket: u64) -> f64 {
    bucket as f64 / 2f64.powi(64) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schedule(steps: &[(&str, u8)]) -> Rollout {
        Rollout::Schedule(
            steps
                .iter()
                .map(|(after, percent)| Step {
                    after: (*after).to_owned(),
                    percent: *percent,
                })
                .collect(),
        )
    }

    #[test]
    fn edges_are_exact() {
        assert!(!admits(0, 0));
        assert!(admits(0, 1));
        assert!(admits(u64::MAX, 100));
        // 2^64 / 100 · 10 is the first bucket out at 10 %.
        let tenth = ((1u128 << 64) / 10) as u64;
        assert!(admits(tenth, 10));
        assert!(!admits(tenth + 1, 10));
    }

    #[test]
    fn bucket_is_the_stated_hash() {
        let digest = Sha256::digest(b"baton-rolloutweb-172.0.0");
        assert_eq!(
            bucket("web-17", "2.0.0"),
            u64::from_be_bytes(digest[..8].try_into().unwrap())
        );
    }

    #[test]
    fn schedules_step_from_published_at() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = schedule(&[("1h", 5), ("24h", 50), ("48h", 100)]);
        let at = |secs: u64| s.percent_at(Some(start), start + Duration::from_secs(secs));
        assert_eq!(at(0), 0);
        assert_eq!(at(3600), 5);
        assert_eq!(at(86_399), 5);
        assert_eq!(at(86_400), 50);
        assert_eq!(at(200_000), 100);
        assert_eq!(s.percent_at(Some(start), start - Duration::from_secs(1)), 0);
        assert_eq!(s.percent_at(None, start), 0);
        assert_eq!(
            s.next_change(Some(start), start + Duration::from_secs(4000)),
            Some(start + Duration::from_secs(86_400))
        );
        assert_eq!(
            s.next_change(Some(start), start + Duration::from_secs(200_000)),
            None
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        assert!(schedule(&[]).validate().is_err());
        assert!(schedule(&[("1h", 50), ("2h", 10)]).validate().is_err());
        assert!(schedule(&[("2h", 10), ("1h", 50)]).validate().is_err());
        assert!(schedule(&[("1h", 101)]).validate().is_err());
        assert!(schedule(&[("soon", 10)]).validate().is_err());
        assert!(Rollout::Percent(101).validate().is_err());
        assert!(schedule(&[("0s", 5), ("24h", 100)]).validate().is_ok());
        let absurd = schedule(&[("500000000000y", 10)]).validate().unwrap_err();
        assert!(absurd.contains("longer than the 3650 days"), "{absurd}");
    }

    #[test]
    fn far_published_times_never_overflow() {
        let s = schedule(&[("0s", 5), ("3650d", 100)]);
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64 / 2);
        // Whatever the clock and the publisher say, no panic.
        assert_eq!(s.next_change(Some(far), SystemTime::UNIX_EPOCH), Some(far));
        assert_eq!(s.percent_at(Some(far), SystemTime::UNIX_EPOCH), 0);
        assert_eq!(s.percent_at(Some(SystemTime::UNIX_EPOCH), far), 100);
    }

    proptest! {
        /// A host in at `low` % is in at every higher percentage.
        #[test]
        fn cohorts_nest(host in "[a-z0-9-]{1,24}", version in "[0-9]\\.[0-9]{1,2}\\.[0-9]", low in 0u8..=100, high in 0u8..=100) {
            let (low, high) = (low.min(high), low.max(high));
            let b = bucket(&host, &version);
            prop_assert!(!admits(b, low) || admits(b, high));
        }

        /// Any bucket is in at 100 % and out at 0 %.
        #[test]
        fn ends_are_all_or_nothing(b in any::<u64>()) {
            prop_assert!(admits(b, 100));
            prop_assert!(!admits(b, 0));
        }

        /// Across 2000 hosts, the share in is within 4.5 standard
        /// deviations of the percentage (binomial bounds).
        #[test]
        fn share_is_within_binomial_bounds(percent in 0u8..=100, salt in any::<u32>()) {
            let n = 2000.0;
            let version = format!("1.{salt}.0");
            let inside = (0..2000)
                .filter(|i| admits(bucket(&format!("host-{i}"), &version), percent))
                .count() as f64;
            let p = f64::from(percent) / 100.0;
            let sd = (n * p * (1.0 - p)).sqrt();
            prop_assert!((inside - n * p).abs() <= 4.5 * sd + 1.0, "{inside} of {n} at {percent} %");
        }

        /// A valid schedule never falls as time passes; any offsets, up
        /// to ones no clock can add, give an answer or an error, never a
        /// panic.
        #[test]
        fn schedules_are_monotone(
            mut steps in proptest::collection::vec(
                (prop_oneof![4 => 0u64..1_000_000, 1 => 0u64..u64::MAX / 2], 0u8..=100),
                1..6,
            ),
            t1 in prop_oneof![0u64..2_000_000, 0u64..u64::MAX / 8],
            dt in prop_oneof![0u64..2_000_000, 0u64..u64::MAX / 8],
        ) {
            steps.sort();
            steps.dedup_by_key(|s| s.0);
            let mut max = 0;
            let steps: Vec<Step> = steps
                .into_iter()
                .map(|(after, p)| {
                    max = max.max(p);
                    Step { after: format!("{after}s"), percent: max }
                })
                .collect();
            let s = Rollout::Schedule(steps);
            let within = s.validate().is_ok();
            let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
            let a = s.percent_at(Some(start), start + Duration::from_secs(t1));
            let b = s.percent_at(Some(start), start + Duration::from_secs(t1 + dt));
            let _ = s.next_change(Some(start), start + Duration::from_secs(t1));
            prop_assert!(a <= b);
            prop_assert!(within || (a, b) == (0, 0), "an invalid schedule admits nobody");
        }
    }
}
