//! A release's way through the master: installed, recorded, on trial,
//! promoted or failed (back to `current`), health-checked, written to the
//! releases directory.

use super::*;

impl Core {
    /// Whether worker `id` runs a release that is neither on trial nor
    /// `current` (the trial it served failed): it must give way to `current`.
    pub(super) fn runs_failed_release(&self, id: u64) -> bool {
        let Some(release) = self.workers.get(&id).and_then(|w| w.release.as_ref()) else {
            return false;
        };
        let on_trial = self.trials.on_trial().is_some_and(|t| t.id == *release)
            || self.promoting.as_ref().is_some_and(|p| p.id == *release);
        let current = self.current.as_ref().is_some_and(|c| c.id == *release);
        !on_trial && !current
    }

    /// A trial ended. A promotion swaps `current`; a failure goes back to
    /// `current` (which never moved) and quarantines the digest.
    pub(super) fn verdict(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Promote(release) => {
                tracing::info!(
                    event = "trial_passed",
                    release = %release.id,
                    "release {} stayed ready for {}: promoting it",
                    release.id,
                    humantime::format_duration(self.trials.settle())
                );
                self.promoting = Some(release.clone());
                self.status.promotions += 1;
                self.store_job(Job::Promote(release));
            }
            Verdict::Fail {
                release,
                why,
                stage,
            } => {
                let back = self.current.as_ref().map_or_else(
                    || "no release (none has proved itself yet)".to_owned(),
                    |c| format!("release {}", c.id),
                );
                tracing::error!(
                    event = "trial_failed",
                    release = %release.id,
                    error = %why,
                    "release {} failed its trial: {why}; going back to {back}",
                    release.id
                );
                self.status.last_failure =
                    Some(format!("release {} failed its trial: {why}", release.id));
                self.notice(Notice::Status(format!(
                    "release {} failed its trial",
                    release.id
                )));
                self.status.failed_trials += 1;
                let (detail, stderr) = split_failure(&why);
                self.report(&release, Outcome::Failed, Some((stage, detail, stderr)));
                self.store_job(Job::Fail(release));
                self.back_to_current();
            }
        }
    }

    /// After a failed trial: a worker of the failed release that still
    /// serves gives way to `current` by a graceful cycle; with nothing
    /// serving, `current` starts now.
    pub(super) fn back_to_current(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if let Some(s) = &self.starting {
            // A starting worker's end decides (see `start_failed`); one of
            // the failed release must not become ready.
            let id = s.id;
            if self.runs_failed_release(id) {
                if let Some(w) = self.workers.get(&id) {
                    tracing::warn!(
                        worker = id,
                        pid = w.pid,
                        "killing the starting worker of the failed release"
                    );
                }
                self.kill(id);
            }
            return;
        }
        match self.active {
            Some(active) if self.runs_failed_release(active) => {
                self.request_cycle("back to current");
            }
            Some(_) => {}
            None if self.current.is_some() => {
                self.restart_at = None;
                self.start_worker(Reason::Start);
            }
            None => {
                self.waiting_for_release = true;
                tracing::warn!("no release has proved itself yet; waiting for the next one");
            }
        }
    }

    /// Runs the health check on the worker that should be checked now, and
    /// on no other: the trial's worker once it serves alone (the old one has
    /// drained), or with `health_after` a promoted release's worker when it
    /// serves alone.
    pub(super) fn update_health(&mut self) {
        let Some(policy) = self.settings.health else {
            if self.health_checked.take().is_some() {
                self.out.push(Action::StopHealth);
            }
            return;
        };
        let target = self.active.filter(|id| {
            let alone = self.workers.len() == 1
                && self
                    .workers
                    .get(id)
                    .is_some_and(|w| matches!(w.state, State::Serving { .. }));
            let wanted =
                self.trials.watches(*id) || (policy.after && self.trials.on_trial().is_none());
            alone && wanted && self.stopping.is_none()
        });
        if self.health_checked == target {
            return;
        }
        if self.health_checked.take().is_some() {
            self.out.push(Action::StopHealth);
        }
        let Some(id) = target else { return };
        let Some(worker) = self.workers.get(&id) else {
            return;
        };
        self.out.push(Action::StartHealth {
            worker: id,
            pid: worker.pid,
            release: worker.release.clone(),
        });
        self.health_failed = 0;
        self.trials.checking(id, self.now);
        self.health_checked = Some(id);
    }

    /// A health check ended: during a trial the policy decides; after
    /// promotion it is only reported.
    pub(super) fn on_health(&mut self, (worker, result): crate::master::health::Report) {
        if self.trials.watches(worker) {
            if let Err(why) = &result {
                tracing::warn!(event = "health_failed", worker, error = %why, "health check of the release on trial failed: {why}");
            }
            if let Some(v) = self.trials.health(worker, result, self.now) {
                self.verdict(v);
            }
            return;
        }
        if self.health_checked != Some(worker) {
            return;
        }
        let limit = self.settings.health.map_or(1, |h| h.failures);
        let release = self
            .workers
            .get(&worker)
            .and_then(|w| w.release.clone())
            .unwrap_or_else(|| "the program".to_owned());
        match result {
            Ok(()) => {
                if self.health_failed >= limit {
                    tracing::info!(worker, "release {release} is healthy again");
                    self.notice(Notice::Status(format!("serving release {release}")));
                }
                self.health_failed = 0;
            }
            Err(why) => {
                self.health_failed += 1;
                if self.health_failed == 1 {
                    tracing::warn!(worker, "health check of release {release} failed: {why}");
                }
                if self.health_failed == limit {
                    let report = format!(
                        "release {release} is unhealthy: its health check failed {limit} times \
                         in a row, last: {why}; it was promoted, so baton keeps it serving"
                    );
                    tracing::error!(event = "release_unhealthy", worker, error = %report, "{report}");
                    self.notice(Notice::Status(format!("release {release} is unhealthy")));
                    self.status.last_failure = Some(report);
                }
            }
        }
    }

    pub(super) fn store_job(&mut self, job: Job) {
        if self.fixed.has_store {
            self.store_pending += 1;
            self.out.push(Action::Store(job));
        } else {
            tracing::error!("no releases directory to record {job:?} in");
        }
    }

    /// A write to the releases directory finished.
    pub(super) fn on_store(&mut self, done: Done) {
        self.store_pending = self.store_pending.saturating_sub(1);
        match done {
            Done::TrialBegun(release, Ok(())) => {
                self.trials.recorded();
                if self.stopping.is_some() {
                    self.trials.fail("the master is stopping", Stage::Settle);
                    self.store_job(Job::Abandon(release));
                    return;
                }
                let why = format!("release {} on trial", release.id);
                self.stranded = None;
                self.report(&release, Outcome::Started, None);
                if self.waiting_for_release {
                    self.waiting_for_release = false;
                    self.restart_at = None;
                    tracing::info!("{why}: starting the first worker");
                    self.start_worker(Reason::Start);
                } else {
                    self.request_cycle(&why);
                }
            }
            Done::TrialBegun(release, Err(e)) => {
                tracing::error!(
                    "cannot record the trial of release {}: {}; not starting it",
                    release.id,
                    crate::errors::display_chain(&e)
                );
                self.trials
                    .fail("its trial could not be recorded", Stage::Start);
                self.trial_over();
            }
            Done::Promoted(release, Ok(before)) => {
                tracing::info!(
                    event = "release_promoted",
                    release = %release.id,
                    version = release.version.as_deref().unwrap_or_default(),
                    "release {} promoted: current names it{}",
                    release.id,
                    before
                        .clone()
                        .filter(|b| *b != release.id)
                        .map(|b| format!(", previous names {b}"))
                        .unwrap_or_default()
                );
                self.notice(Notice::Status(format!("serving release {}", release.id)));
                self.report(&release, Outcome::Promoted, None);
                if let Some((_, yanked)) = self.leaving.take().filter(|(id, _)| *id == release.id) {
                    tracing::info!(
                        event = "left_yanked",
                        "the yanked version {yanked} is left: release {} serves",
                        release.id
                    );
                    self.report_yanked(yanked, version_of(&release));
                }
                self.promoting = None;
                self.trial_over();
                let version = release.version.clone();
                self.out.push(Action::PostHook {
                    which: crate::hooks::Which::PostPromote,
                    release,
                    before,
                });
                if self.fixed.self_upgrade {
                    self.reexec_self(version);
                }
            }
            Done::Promoted(release, Err(e)) => {
                // Promotion is idempotent: try again until it holds (the
                // trial record stays meanwhile, so a master killed now
                // counts the trial as failed unless `current` names it).
                tracing::error!(
                    event = "promote_failed",
                    release = %release.id,
                    error = %crate::errors::display_chain(&e),
                    "cannot promote release {}: {}; it keeps serving; trying again in {}",
                    release.id,
                    crate::errors::display_chain(&e),
                    humantime::format_duration(PROMOTE_RETRY)
                );
                self.promote_retry_at = Some(self.now + PROMOTE_RETRY);
            }
            Done::Failed(release, result) => {
                match result {
                    Ok(()) => tracing::warn!(
                        event = "release_marked_failed",
                        release = %release.id,
                        "sha256 {} of release {} is recorded as failed and will not be installed again",
                        release.sha256,
                        release.id
                    ),
                    Err(e) => tracing::error!(
                        "cannot record release {} as failed: {}",
                        release.id,
                        crate::errors::display_chain(&e)
                    ),
                }
                self.trial_over();
            }
            Done::RolledBack(release, result) => self.rolled_back(release, result),
            Done::HeldCleared(result) => self.held_cleared(result),
            Done::Abandoned(release, result) => {
                if let Err(e) = result {
                    tracing::error!(
                        "cannot clear the trial record of release {}: {}",
                        release.id,
                        crate::errors::display_chain(&e)
                    );
                }
                self.trial_over();
            }
        }
    }

    /// The trial ended and its records are written: the update loop goes
    /// on, and a release installed meanwhile is tried now.
    pub(super) fn trial_over(&mut self) {
        if let Some(hold) = self.trial_hold.take() {
            self.out.push(Action::Release(hold));
        }
        if let Some((release, leaves, hold)) = self.queued_install.take() {
            self.on_installed(release, leaves, hold);
        }
    }

    /// A new release was installed: record its trial on disk, then (in
    /// `on_store`) start its worker.
    pub(super) fn on_installed(&mut self, release: Meta, leaves: Option<String>, hold: Token) {
        if self.stopping.is_some() {
            tracing::info!("release {} installed while stopping; not tried", release.id);
            self.out.push(Action::Release(hold));
            return;
        }
        match self.trials.begin(release.clone()) {
            Ok(()) => {
                tracing::info!(event = "trial_started", release = %release.id, "release {} installed; recording its trial", release.id);
                if let Some(old) = self.trial_hold.replace(hold) {
                    self.out.push(Action::Release(old));
                }
                self.leaving = leaves.map(|v| (release.id.clone(), v));
                let context = self.trial_context(&release, 1);
                self.store_job(Job::BeginTrial(release, context));
            }
            Err(release) => {
                tracing::info!(
                    "release {} installed while another trial runs; it waits for it to end",
                    release.id
                );
                if let Some((dropped, _, old)) =
                    self.queued_install.replace((*release, leaves, hold))
                {
                    tracing::info!(
                        "release {} no longer waits: a newer install replaces it",
                        dropped.id
                    );
                    self.out.push(Action::Release(old));
                }
            }
        }
    }

    /// Counts a trial event for `/metrics` and asks for its report. `from`
    /// is what `current` names now: the release the host ran before.
    pub(super) fn report(
        &mut self,
        release: &Meta,
        outcome: Outcome,
        failure: Option<(Stage, String, Option<String>)>,
    ) {
        self.report_version(version_of(release), Some(&release.id), outcome, failure);
    }

    /// As [`Core::report`], for a version (of release `id`, when one is
    /// installed).
    pub(super) fn report_version(
        &mut self,
        version: String,
        id: Option<&str>,
        outcome: Outcome,
        failure: Option<(Stage, String, Option<String>)>,
    ) {
        // One name per version in metrics and reports: `v2.0.0` is `2.0.0`
        // (what `rollout watch` asks Prometheus for).
        let version = crate::fleet::report::version_key(&version);
        // What ran before: as it was when the trial began (a promotion
        // has already moved `current` when it is reported).
        let from = match (&self.trial_from, id) {
            (Some((trial, from)), Some(id)) if trial == id && outcome != Outcome::Started => {
                from.clone()
            }
            _ => self
                .current
                .as_ref()
                .filter(|c| Some(c.id.as_str()) != id)
                .map(version_of),
        };
        if let (Outcome::Started, Some(id)) = (outcome, id) {
            self.trial_from = Some((id.to_owned(), from.clone()));
        }
        bump(&mut self.status.trials, &version, outcome.as_str());
        let (stage, detail, stderr) = match failure {
            Some((stage, detail, stderr)) => (Some(stage), Some(detail), stderr),
            None => (None, None, None),
        };
        if let (Outcome::Failed, Some(stage)) = (outcome, stage) {
            bump(&mut self.status.trial_failures, &version, stage.as_str());
        }
        self.out.push(Action::Report(Note {
            version,
            from,
            outcome,
            stage,
            detail,
            stderr,
        }));
    }
}

impl Core {
    /// What the trial record of `release`'s `attempt`-th attempt says
    /// besides the release: the version it replaces and the yanked one it
    /// leaves, so that a later master reports them.
    pub(super) fn trial_context(&self, release: &Meta, attempt: u32) -> TrialContext {
        let from = match &self.trial_from {
            Some((id, from)) if *id == release.id => from.clone(),
            _ => self
                .current
                .as_ref()
                .filter(|c| c.id != release.id)
                .map(version_of),
        };
        TrialContext {
            attempt,
            from,
            leaves: self
                .leaving
                .as_ref()
                .filter(|(id, _)| *id == release.id)
                .map(|(_, v)| v.clone()),
        }
    }

    /// Takes over what a previous master's trial record says: a kept
    /// trial's `from` and yanked version for its reports; for one whose
    /// promotion the master's death cut short, the reports it never wrote
    /// (a report already written is not written again); for one the
    /// master's death failed, its `failed` report.
    pub(super) fn recorded(&mut self, recorded: Option<Recorded>) {
        match recorded {
            Some(Recorded::Kept(record)) => {
                self.leaving = record.leaves.map(|v| (record.id.clone(), v));
                self.trial_from = Some((record.id, record.from));
            }
            Some(Recorded::Promoted(record)) => {
                let Some(current) = self.current.clone().filter(|c| c.id == record.id) else {
                    return;
                };
                self.trial_from = Some((record.id, record.from));
                self.report(&current, Outcome::Promoted, None);
                if let Some(yanked) = record.leaves {
                    self.report_yanked(yanked, version_of(&current));
                }
                self.trial_from = None;
            }
            Some(Recorded::Failed { record, why }) => {
                let version = record.version.clone().unwrap_or_else(|| record.id.clone());
                self.trial_from = Some((record.id.clone(), record.from));
                self.report_version(
                    version,
                    Some(&record.id),
                    Outcome::Failed,
                    Some((Stage::Settle, why, None)),
                );
                self.trial_from = None;
            }
            None => {}
        }
    }

    /// Counts and reports that the host left the yanked `version` for
    /// `to`: the report's `from` is the yanked version it ran.
    fn report_yanked(&mut self, version: String, to: String) {
        let version = crate::fleet::report::version_key(&version);
        bump(&mut self.status.trials, &version, Outcome::Yanked.as_str());
        self.out.push(Action::Report(Note {
            from: Some(version.clone()),
            version,
            outcome: Outcome::Yanked,
            stage: None,
            detail: Some(format!("back to {to}")),
            stderr: None,
        }));
    }
}

/// Counts one event of `version` under `what` (`baton_trials_total` and
/// its kin).
fn bump(counts: &mut BTreeMap<String, BTreeMap<String, u64>>, version: &str, what: &str) {
    *counts
        .entry(version.to_owned())
        .or_default()
        .entry(what.to_owned())
        .or_default() += 1;
}

/// Whether two version texts name the same version: as semver when both
/// parse (`v2.0.0` is `2.0.0`), else as text.
pub(super) fn same_version(a: &str, b: &str) -> bool {
    match (
        crate::version::parse_version(a),
        crate::version::parse_version(b),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// A release's version, or its id when it states none.
pub(super) fn version_of(release: &Meta) -> String {
    release
        .version
        .clone()
        .unwrap_or_else(|| release.id.clone())
}

/// A failure as [`failure_report`] wrote it: what happened, and the last
/// stderr line it quotes.
fn split_failure(why: &str) -> (String, Option<String>) {
    match why.split_once(STDERR_MARK) {
        Some((what, lines)) => (
            what.to_owned(),
            lines
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .map(str::to_owned),
        ),
        None => (why.strip_suffix(NO_STDERR).unwrap_or(why).to_owned(), None),
    }
}
