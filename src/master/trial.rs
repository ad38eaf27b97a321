//! The trial, apart from process supervision: a release on trial
//! is promoted once its worker has been ready for `settle` with no
//! unexpected exit; any exit before that, a failed start or a missed ready
//! deadline fails it. With a health check, `failures` failed checks in a
//! row fail it too, and promotion waits for the last check to have passed.
//! Plain state fed with events and the current `Instant`; it returns
//! verdicts and the master does the I/O.

use std::time::{Duration, Instant};

use crate::fleet::Stage;
use crate::release::Meta;

/// The end of a trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The release proved itself: swap `current` to it.
    Promote(Meta),
    /// The release failed: go back to `current` and quarantine its digest.
    Fail {
        /// The release.
        release: Meta,
        /// Why, for logs and status.
        why: String,
        /// Where it failed, for its report.
        stage: Stage,
    },
}

/// A release on trial.
#[derive(Debug)]
struct Trial {
    release: Meta,
    /// The worker running it, once started.
    worker: Option<u64>,
    /// When that worker became ready.
    ready_since: Option<Instant>,
    /// Health checks failed in a row.
    failed_checks: u32,
    /// Whether the last health check passed.
    healthy: bool,
    /// Whether the trial record is on disk: no worker runs the release
    /// before.
    recorded: bool,
    /// Which attempt at this trial this is (1 unless the master's death
    /// interrupted earlier ones).
    attempt: u32,
}

/// The trials' state: at most one trial at a time.
#[derive(Debug)]
pub(crate) struct Trials {
    settle: Duration,
    /// With a health check: how many failures in a row fail a trial.
    health_failures: Option<u32>,
    trial: Option<Trial>,
}

impl Trials {
    /// No trial; trials settle for `settle`, and with `health_failures`
    /// are gated on a health check.
    pub(crate) fn new(settle: Duration, health_failures: Option<u32>) -> Trials {
        Trials {
            settle,
            health_failures,
            trial: None,
        }
    }

    /// New settings from a reloaded config, for the trials that follow (and
    /// the running one, whose worker the reload's cycle restarts).
    pub(crate) fn configure(&mut self, settle: Duration, health_failures: Option<u32>) {
        self.settle = settle;
        self.health_failures = health_failures;
    }

    /// How long a trial worker must stay ready.
    pub(crate) fn settle(&self) -> Duration {
        self.settle
    }

    /// Puts `release` on trial. Refuses (returning it) while another trial
    /// runs: one release at a time.
    pub(crate) fn begin(&mut self, release: Meta) -> Result<(), Box<Meta>> {
        self.begin_attempt(release, 1)
    }

    /// As [`Trials::begin`], for the `attempt`-th attempt at a trial whose
    /// earlier attempts the master's death interrupted (see
    /// [`interrupted`]).
    pub(crate) fn begin_attempt(&mut self, release: Meta, attempt: u32) -> Result<(), Box<Meta>> {
        if self.trial.is_some() {
            return Err(Box::new(release));
        }
        self.trial = Some(Trial {
            release,
            worker: None,
            ready_since: None,
            failed_checks: 0,
            healthy: false,
            recorded: false,
            attempt,
        });
        Ok(())
    }

    /// The release on trial.
    pub(crate) fn on_trial(&self) -> Option<&Meta> {
        self.trial.as_ref().map(|t| &t.release)
    }

    /// Which attempt the running trial is (what its record on disk says).
    pub(crate) fn attempt(&self) -> u32 {
        self.trial.as_ref().map_or(1, |t| t.attempt)
    }

    /// The trial record is on disk.
    pub(crate) fn recorded(&mut self) {
        if let Some(t) = &mut self.trial {
            t.recorded = true;
        }
    }

    /// The release whose worker may run: on trial, and recorded.
    pub(crate) fn runnable(&self) -> Option<&Meta> {
        self.trial
            .as_ref()
            .filter(|t| t.recorded)
            .map(|t| &t.release)
    }

    /// The health check of the watched worker starts now: with a health
    /// check, the settle clock counts from here (checks only run once the
    /// trial worker serves alone), so `settle` always holds `failures`
    /// checks.
    pub(crate) fn checking(&mut self, worker: u64, now: Instant) {
        if self.health_failures.is_none() {
            return;
        }
        if let Some(t) = self.trial.as_mut().filter(|t| t.worker == Some(worker)) {
            if t.ready_since.is_some() {
                t.ready_since = Some(now);
            }
        }
    }

    /// Whether `worker` is the one the trial watches.
    pub(crate) fn watches(&self, worker: u64) -> bool {
        self.trial
            .as_ref()
            .is_some_and(|t| t.worker == Some(worker))
    }

    /// A worker for the release on trial was started: it is the one
    /// watched from now on, and the settle clock starts again when it is
    /// ready (a restart during a trial proves nothing about the old one).
    pub(crate) fn started(&mut self, worker: u64) {
        if let Some(t) = &mut self.trial {
            t.worker = Some(worker);
            t.ready_since = None;
            t.failed_checks = 0;
            t.healthy = false;
        }
    }

    /// A worker became ready. With `settle` zero the trial passes at once.
    pub(crate) fn ready(&mut self, worker: u64, now: Instant) -> Option<Verdict> {
        let t = self.trial.as_mut().filter(|t| t.worker == Some(worker))?;
        t.ready_since = Some(now);
        self.tick(now)
    }

    /// A worker exited (or could not start, or missed its ready deadline).
    /// The watched one fails the trial.
    pub(crate) fn exited(&mut self, worker: u64, why: &str, stage: Stage) -> Option<Verdict> {
        if !self.watches(worker) {
            return None;
        }
        self.fail(why, stage)
    }

    /// Ends the trial as failed, whatever its state (a worker that could
    /// not even be spawned, a master stopping).
    pub(crate) fn fail(&mut self, why: &str, stage: Stage) -> Option<Verdict> {
        let t = self.trial.take()?;
        Some(Verdict::Fail {
            release: t.release,
            why: why.to_owned(),
            stage,
        })
    }

    /// A health check of `worker` ended. Failures in a row fail the
    /// trial; a pass after `settle` promotes it.
    pub(crate) fn health(
        &mut self,
        worker: u64,
        result: Result<(), String>,
        now: Instant,
    ) -> Option<Verdict> {
        let limit = self.health_failures?;
        let t = self.trial.as_mut().filter(|t| t.worker == Some(worker))?;
        match result {
            Ok(()) => {
                t.failed_checks = 0;
                t.healthy = true;
                self.tick(now)
            }
            Err(why) => {
                t.failed_checks += 1;
                t.healthy = false;
                if t.failed_checks < limit {
                    return None;
                }
                let n = t.failed_checks;
                self.fail(
                    &format!(
                        "its health check failed {n} time{} in a row, last: {why}",
                        if n == 1 { "" } else { "s" }
                    ),
                    Stage::Health,
                )
            }
        }
    }

    /// Time passed: a trial ready for `settle` (and healthy at its last
    /// check, when checked) passes.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Verdict> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        let t = self.trial.take()?;
        Some(Verdict::Promote(t.release))
    }

    /// When `tick` may next return a verdict: `settle` after ready; never
    /// while a health-checked trial's last check did not pass (the next
    /// passing check decides).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let t = self.trial.as_ref()?;
        if self.health_failures.is_some() && !t.healthy {
            return None;
        }
        Some(t.ready_since? + self.settle)
    }
}

/// A running trial as it crosses the master's `execve` (see `reexec`):
/// instants become ages.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Carried {
    release: Meta,
    worker: Option<u64>,
    /// How long its worker had been ready, in milliseconds.
    ready_for_ms: Option<u64>,
    failed_checks: u32,
    healthy: bool,
    recorded: bool,
    #[serde(default = "first_attempt")]
    attempt: u32,
}

fn first_attempt() -> u32 {
    1
}

impl Carried {
    /// The id of the release on trial.
    pub(crate) fn release_id(&self) -> &str {
        &self.release.id
    }
}

impl Trials {
    /// The running trial, for the next master.
    pub(crate) fn carry(&self, now: Instant) -> Option<Carried> {
        let t = self.trial.as_ref()?;
        Some(Carried {
            release: t.release.clone(),
            worker: t.worker,
            ready_for_ms: t
                .ready_since
                .map(|since| now.saturating_duration_since(since).as_millis() as u64),
            failed_checks: t.failed_checks,
            healthy: t.healthy,
            recorded: t.recorded,
            attempt: t.attempt,
        })
    }

    /// Resumes a trial the previous master ran: its settle clock keeps
    /// counting from when its worker became ready.
    pub(crate) fn resume(&mut self, carried: Carried, now: Instant) {
        self.trial = Some(Trial {
            release: carried.release,
            worker: carried.worker,
            ready_since: carried
                .ready_for_ms
                .map(|ms| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now)),
            failed_checks: carried.failed_checks,
            healthy: carried.healthy,
            recorded: carried.recorded,
            attempt: carried.attempt,
        });
    }
}

/// The wait before the first retry of an interrupted trial; it doubles
/// with each attempt, up to [`INTERRUPTED_BACKOFF_MAX`].
pub(crate) const INTERRUPTED_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait before retrying an interrupted trial.
pub(crate) const INTERRUPTED_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What a starting master does with a trial its predecessor never
/// finished: the record on disk says it was on trial, and the master died
/// (SIGKILL, power loss, the OOM killer) before a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Interrupted {
    /// `current` names the release: the promotion's rename happened, only
    /// the record was left. Nothing to decide.
    Promoted,
    /// There is a `current` to go back to: fail closed, as a crash would
    /// (the digest is recorded as failed and never tried again).
    Fail,
    /// Nothing else to run: begin the trial again, as attempt `attempt`,
    /// after waiting `after` (so a release that takes the machine down at
    /// each start does not crash-loop it).
    Retry {
        /// The attempt about to begin (2 for the first retry).
        attempt: u32,
        /// How long to wait before it.
        after: Duration,
    },
    /// Nothing else to run, and every attempt was interrupted:
    /// quarantine the digest until an operator forces it.
    Quarantine {
        /// Why, for the log and `baton status`.
        why: String,
    },
}

/// What a host whose trial was interrupted has to serve besides the
/// release on trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// Nothing: no `current`.
    Nothing,
    /// A `current` that a signed manifest yanked: the trial was the way
    /// back from it.
    Yanked,
    /// A `current` to go back to.
    Current,
}

/// Decides on an interrupted trial: `attempts` were begun (the record's
/// count), `promoted` says whether `current` names the release, `fallback`
/// what else there is to serve, and `limit` is `[releases]
/// trial_attempts`. Interrupted trials are counted, as A/B boot counting
/// does, not judged at once: only a host with a good release to serve
/// fails one immediately. The way back from a yanked release is retried
/// too, while the yanked release serves; once its attempts are used up it
/// fails, and the yanked release keeps serving.
pub(crate) fn interrupted(
    attempts: u32,
    promoted: bool,
    fallback: Fallback,
    limit: u32,
) -> Interrupted {
    if promoted {
        return Interrupted::Promoted;
    }
    match fallback {
        Fallback::Current => return Interrupted::Fail,
        Fallback::Yanked if attempts >= limit => return Interrupted::Fail,
        Fallback::Nothing if attempts >= limit => {
            return Interrupted::Quarantine {
                why: format!(
                    "its trial was interrupted by the master's death {attempts} time{} with no \
                     other release to serve",
                    if attempts == 1 { "" } else { "s" }
                ),
            }
        }
        Fallback::Yanked | Fallback::Nothing => {}
    }
    let doublings = attempts.saturating_sub(1).min(16);
    let after = crate::time::backoff(INTERRUPTED_BACKOFF_MIN, doublings, INTERRUPTED_BACKOFF_MAX);
    Interrupted::Retry {
        attempt: attempts.max(1) + 1,
        after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> Meta {
        Meta {
            id: id.to_owned(),
            version: Some("2.0.0".to_owned()),
            sha256: "ab".repeat(32),
            size: 1,
            source: "test".to_owned(),
            installed_at: 0,
            binary_sha256: None,
            patch: None,
        }
    }

    const SETTLE: Duration = Duration::from_secs(10);

    #[test]
    fn a_carried_trial_keeps_its_clock() {
        let t0 = Instant::now();
        let mut r = Trials::new(SETTLE, None);
        r.begin(meta("b")).unwrap();
        r.recorded();
        r.started(7);
        r.ready(7, t0);
        let carried = r.carry(t0 + Duration::from_secs(4)).unwrap();
        let mut next = Trials::new(SETTLE, None);
        let later = t0 + Duration::from_secs(100);
        next.resume(carried, later);
        assert!(next.watches(7));
        assert_eq!(next.runnable(), Some(&meta("b")));
        assert_eq!(next.deadline(), Some(later + Duration::from_secs(6)));
    }

    #[test]
    fn promoted_after_settle_not_before() {
        let t0 = Instant::now();
        let mut r = Trials::new(SETTLE, None);
        r.begin(meta("b")).unwrap();
        r.started(7);
        assert_eq!(r.deadline(), None, "no clock before ready");
        assert_eq!(r.ready(7, t0), None);
        assert_eq!(r.deadline(), Some(t0 + SETTLE));
        assert_eq!(r.tick(t0 + SETTLE - Duration::from_millis(1)), None);
        assert_eq!(r.tick(t0 + SETTLE), Some(Verdict::Promote(meta("b"))));
        assert_eq!(r.on_trial(), None);
        // After promotion an exit is an ordinary crash, not the trial's.
        assert_eq!(r.exited(7, "crash", Stage::Settle), None);
    }

    #[test]
    fn zero_settle_promotes_at_ready() {
        let mut r = Trials::new(Duration::ZERO, None);
        r.begin(meta("b")).unwrap();
        r.started(1);
        assert_eq!(
            r.ready(1, Instant::now()),
            Some(Verdict::Promote(meta("b")))
        );
    }

    #[test]
    fn any_exit_of_the_watched_worker_fails_the_trial() {
        let t0 = Instant::now();
        for ready in [false, true] {
            let mut r = Trials::new(SETTLE, None);
            r.begin(meta("b")).unwrap();
            r.started(3);
            if ready {
                r.ready(3, t0);
            }
            // Another worker (the old one, draining) exiting is no verdict.
            assert_eq!(r.exited(2, "drained", Stage::Settle), None);
            assert_eq!(
                r.exited(3, "exit code 1", Stage::Settle),
                Some(Verdict::Fail {
                    release: meta("b"),
                    why: "exit code 1".to_owned(),
                    stage: Stage::Settle,
                })
            );
            assert_eq!(r.on_trial(), None);
        }
    }

    #[test]
    fn a_restart_during_the_trial_restarts_the_clock() {
        let t0 = Instant::now();
        let mut r = Trials::new(SETTLE, None);
        r.begin(meta("b")).unwrap();
        r.started(1);
        r.ready(1, t0);
        r.started(2);
        assert_eq!(r.deadline(), None);
        assert!(!r.watches(1), "the replaced worker may drain and exit");
        assert_eq!(r.exited(1, "drained", Stage::Settle), None);
        assert_eq!(r.tick(t0 + SETTLE), None);
        r.ready(2, t0 + SETTLE);
        assert_eq!(r.tick(t0 + SETTLE * 2), Some(Verdict::Promote(meta("b"))));
    }

    #[test]
    fn health_gates_promotion_and_failures_in_a_row_fail() {
        let t0 = Instant::now();
        let mut r = Trials::new(SETTLE, Some(3));
        r.begin(meta("b")).unwrap();
        r.started(1);
        r.ready(1, t0);
        assert_eq!(r.tick(t0 + SETTLE), None, "no passing check yet");
        assert_eq!(r.deadline(), None);
        // Two failures, then a pass: the streak resets.
        for _ in 0..2 {
            assert_eq!(r.health(1, Err("503".into()), t0), None);
        }
        assert_eq!(r.health(1, Ok(()), t0), None, "settle has not passed");
        assert_eq!(r.deadline(), Some(t0 + SETTLE));
        for _ in 0..2 {
            assert_eq!(r.health(1, Err("503".into()), t0), None);
        }
        let v = r.health(1, Err("answered 503".into()), t0).unwrap();
        match v {
            Verdict::Fail { why, .. } => {
                assert_eq!(
                    why,
                    "its health check failed 3 times in a row, last: answered 503"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn with_health_settle_counts_from_the_first_check() {
        let t0 = Instant::now();
        let mut r = Trials::new(SETTLE, Some(3));
        r.begin(meta("b")).unwrap();
        assert_eq!(r.runnable(), None, "not before the record is on disk");
        r.recorded();
        assert_eq!(r.runnable(), Some(&meta("b")));
        r.started(1);
        r.ready(1, t0);
        // The old worker drained for a long time; checks start late.
        let late = t0 + SETTLE;
        r.checking(1, late);
        assert_eq!(r.health(1, Ok(()), late), None, "one pass is not settle");
        assert_eq!(r.deadline(), Some(late + SETTLE));
        assert_eq!(
            r.health(1, Ok(()), late + SETTLE),
            Some(Verdict::Promote(meta("b")))
        );
    }

    #[test]
    fn a_pass_after_settle_promotes() {
        let t0 = Instant::now();
        let mut r = Trials::new(SETTLE, Some(3));
        r.begin(meta("b")).unwrap();
        r.started(1);
        r.ready(1, t0);
        assert_eq!(r.health(9, Err("other worker".into()), t0), None);
        assert_eq!(r.health(1, Err("slow".into()), t0 + SETTLE), None);
        assert_eq!(
            r.health(1, Ok(()), t0 + SETTLE),
            Some(Verdict::Promote(meta("b")))
        );
    }

    #[test]
    fn an_interrupted_trial_with_a_current_fails_closed() {
        assert_eq!(
            interrupted(1, false, Fallback::Current, 3),
            Interrupted::Fail
        );
        // However many attempts are left.
        assert_eq!(
            interrupted(1, false, Fallback::Current, 100),
            Interrupted::Fail
        );
    }

    #[test]
    fn the_way_back_from_a_yanked_release_is_retried_then_fails() {
        assert_eq!(
            interrupted(1, false, Fallback::Yanked, 3),
            Interrupted::Retry {
                attempt: 2,
                after: Duration::from_secs(1)
            }
        );
        // The yanked release serves on: never quarantined, never stranded.
        assert_eq!(
            interrupted(3, false, Fallback::Yanked, 3),
            Interrupted::Fail
        );
        assert_eq!(
            interrupted(2, true, Fallback::Yanked, 3),
            Interrupted::Promoted
        );
    }

    #[test]
    fn a_promoted_release_left_only_its_record() {
        assert_eq!(
            interrupted(1, true, Fallback::Current, 3),
            Interrupted::Promoted
        );
        assert_eq!(
            interrupted(3, true, Fallback::Nothing, 3),
            Interrupted::Promoted
        );
    }

    #[test]
    fn an_interrupted_first_trial_is_retried_with_back_off() {
        assert_eq!(
            interrupted(1, false, Fallback::Nothing, 3),
            Interrupted::Retry {
                attempt: 2,
                after: Duration::from_secs(1)
            }
        );
        assert_eq!(
            interrupted(2, false, Fallback::Nothing, 3),
            Interrupted::Retry {
                attempt: 3,
                after: Duration::from_secs(2)
            }
        );
        // The wait is capped, whatever the limit.
        assert_eq!(
            interrupted(40, false, Fallback::Nothing, u32::MAX),
            Interrupted::Retry {
                attempt: 41,
                after: INTERRUPTED_BACKOFF_MAX
            }
        );
        // A record from before attempts were counted reads as 1; a
        // corrupt 0 is no better.
        assert_eq!(
            interrupted(0, false, Fallback::Nothing, 3),
            Interrupted::Retry {
                attempt: 2,
                after: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn the_last_interrupted_attempt_quarantines() {
        match interrupted(3, false, Fallback::Nothing, 3) {
            Interrupted::Quarantine { why } => assert_eq!(
                why,
                "its trial was interrupted by the master's death 3 times with no other \
                 release to serve"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            interrupted(1, false, Fallback::Nothing, 1),
            Interrupted::Quarantine { .. }
        ));
    }

    #[test]
    fn a_real_failure_of_a_retried_first_release_stays_a_failure() {
        // The retry is an ordinary trial: its crash is a verdict, not
        // another interruption.
        let Interrupted::Retry { attempt, .. } = interrupted(1, false, Fallback::Nothing, 3) else {
            panic!("a first trial is retried");
        };
        let mut r = Trials::new(SETTLE, None);
        r.begin_attempt(meta("b"), attempt).unwrap();
        assert_eq!(r.attempt(), 2);
        r.recorded();
        r.started(1);
        assert_eq!(
            r.exited(1, "exit code 3", Stage::Settle),
            Some(Verdict::Fail {
                release: meta("b"),
                why: "exit code 3".to_owned(),
                stage: Stage::Settle,
            })
        );
        // And one interrupted again after settle would have been promoted:
        // a retried trial promotes like any other.
        let t0 = Instant::now();
        let mut r = Trials::new(SETTLE, None);
        r.begin_attempt(meta("b"), 3).unwrap();
        r.started(1);
        r.ready(1, t0);
        assert_eq!(r.tick(t0 + SETTLE), Some(Verdict::Promote(meta("b"))));
    }

    #[test]
    fn one_trial_at_a_time() {
        let mut r = Trials::new(SETTLE, None);
        r.begin(meta("b")).unwrap();
        assert_eq!(r.begin(meta("c")), Err(Box::new(meta("c"))));
        assert!(r.fail("stopping", Stage::Settle).is_some());
        assert!(r.begin(meta("c")).is_ok());
    }
}
