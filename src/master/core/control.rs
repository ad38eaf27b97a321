//! The control socket's requests: status, releases, restart, rollback,
//! upgrade, and the answers that wait for an outcome.

use super::*;

impl Core {
    pub(super) fn reply(&mut self, to: Token, answer: Value) {
        self.out.push(Action::Reply(to, answer));
    }

    pub(super) fn on_control(&mut self, request: Request, reply: Token, disk: Disk) {
        tracing::debug!("control request: {request:?}");
        match request {
            Request::Status => {
                let answer = ok_typed(&self.status_reply(disk));
                self.reply(reply, answer);
            }
            Request::Releases => {
                let answer = match self.releases_reply(disk) {
                    Ok(releases) => ok_typed(&releases),
                    Err(why) => refuse(why),
                };
                self.reply(reply, answer);
            }
            Request::Restart => self.restart(reply),
            Request::Rollback => self.rollback(reply, disk),
            Request::Upgrade { force } => self.upgrade(force, reply),
            Request::Reexec { binary } => self.reexec_requested(binary, reply),
        }
    }

    pub(super) fn restart(&mut self, reply: Token) {
        if self.stopping.is_some() {
            self.reply(reply, refuse("the master is stopping"));
        } else if self.waiting_for_release {
            self.reply(
                reply,
                refuse("no release is installed yet; nothing to restart"),
            );
        } else {
            self.waiters.restart.push(reply);
            self.request_cycle("control: restart");
        }
    }

    pub(super) fn rollback(&mut self, reply: Token, disk: Disk) {
        let refused = |why: String| refuse(format!("rollback refused: {why}"));
        let answer = if !self.fixed.has_store {
            refused("there is no releases directory".to_owned())
        } else if let Some(t) = self.trials.on_trial() {
            refused(format!("release {} is on trial; wait for it to end", t.id))
        } else if self.rolling_back.is_some() || self.promoting.is_some() || self.stopping.is_some()
        {
            refused("another change is under way".to_owned())
        } else {
            match disk.previous {
                None => refused("there is no previous release".to_owned()),
                Some(previous) if disk.current.as_ref().is_some_and(|c| c.id == previous.id) => {
                    refused(format!("previous and current both name {}", previous.id))
                }
                Some(previous)
                    if previous.version.as_deref().is_some_and(|v| {
                        disk.yanked
                            .iter()
                            .any(|y| super::release::same_version(y, v))
                    }) =>
                {
                    refused(format!(
                        "previous names release {}, whose version a signed manifest yanked \
                         (`baton upgrade --force` forgets the yank first)",
                        previous.id
                    ))
                }
                Some(previous) => {
                    tracing::info!(event = "rollback_started", release = %previous.id, "control: rolling back to release {}", previous.id);
                    self.rolling_back = Some(previous);
                    self.waiters.rollback = Some(reply);
                    self.request_cycle("control: rollback");
                    return;
                }
            }
        };
        self.reply(reply, answer);
    }

    pub(super) fn upgrade(&mut self, force: bool, reply: Token) {
        if !self.updater {
            self.reply(reply, refuse("no [fetch] source is configured"));
            return;
        }
        self.waiters.upgrade.push(reply);
        if force {
            // The check starts once the held list is gone.
            self.store_job(Job::ClearHeld);
        } else {
            self.out.push(Action::CheckNow);
        }
    }

    /// A worker became ready: a restart waiting for a cycle is answered; a
    /// rollback's worker makes `previous` current.
    pub(super) fn worker_ready(&mut self, id: u64, status: &str) {
        for w in std::mem::take(&mut self.waiters.restart) {
            self.reply(w, ok(json!({ "outcome": status })));
        }
        let runs = self.workers.get(&id).and_then(|w| w.release.as_ref());
        let rolled = self
            .rolling_back
            .as_ref()
            .is_some_and(|r| runs == Some(&r.id));
        if rolled {
            let to = self.rolling_back.clone().expect("checked");
            let hold = self
                .current
                .as_ref()
                .filter(|c| c.id != to.id)
                .map(|c| c.sha256.clone());
            self.store_job(Job::RollBack { to, hold });
        }
    }

    /// A worker could not start or become ready.
    pub(super) fn start_ended_badly(&mut self, failure: &str) {
        for w in std::mem::take(&mut self.waiters.restart) {
            self.reply(w, refuse(format!("the cycle failed: {failure}")));
        }
        if let Some(to) = self.rolling_back.take() {
            if let Some(w) = self.waiters.rollback.take() {
                self.reply(
                    w,
                    refuse(format!(
                        "the rollback to {} failed: {failure}; current is unchanged",
                        to.id
                    )),
                );
            }
        }
    }

    /// The rollback's store write ended.
    pub(super) fn rolled_back(
        &mut self,
        to: Meta,
        result: Result<Option<String>, crate::release::Error>,
    ) {
        self.rolling_back = None;
        let answer = match result {
            Ok(from) => {
                self.status.rollbacks += 1;
                let from = from.unwrap_or_default();
                tracing::warn!(
                    event = "rolled_back",
                    release = %to.id,
                    "rolled back from release {from} to {}: current names it; {from} is held \
                     (not installed again until a newer build appears or `baton upgrade --force`)",
                    to.id
                );
                self.notice(Notice::Status(format!(
                    "serving release {} (rolled back)",
                    to.id
                )));
                let answer = ok(json!({ "current": to.id, "held": from }));
                self.out.push(Action::PostHook {
                    which: crate::hooks::Which::PostRollback,
                    release: to,
                    before: Some(from),
                });
                answer
            }
            Err(e) => {
                let e = crate::errors::display_chain(&e);
                tracing::error!(event = "rollback_failed", release = %to.id, error = %e, "cannot record the rollback to {}: {e}", to.id);
                refuse(format!(
                    "release {} serves, but current could not be swapped: {e}",
                    to.id
                ))
            }
        };
        if let Some(w) = self.waiters.rollback.take() {
            self.reply(w, answer);
        }
    }

    /// `upgrade --force` forgot the held and quarantined digests.
    pub(super) fn held_cleared(&mut self, result: Result<(), crate::release::Error>) {
        match result {
            Ok(()) => {
                tracing::info!("held and quarantined releases forgotten");
                self.out.push(Action::CheckNow);
            }
            Err(e) => {
                let e = crate::errors::display_chain(&e);
                tracing::error!("cannot forget the held releases: {e}");
                for w in std::mem::take(&mut self.waiters.upgrade) {
                    self.reply(w, refuse(format!("cannot forget the held releases: {e}")));
                }
            }
        }
    }

    /// A check of the source ended.
    pub(super) fn on_check(&mut self, report: update::CheckReport) {
        for w in std::mem::take(&mut self.waiters.upgrade) {
            let answer = if report.outcome == "error" {
                refuse(format!("the check failed: {}", report.detail))
            } else if report.outcome == "refused" {
                refuse(report.detail.clone())
            } else {
                ok(json!({ "outcome": report.outcome, "detail": report.detail }))
            };
            self.reply(w, answer);
        }
        if report.outcome == "refused" {
            self.status.last_failure = Some(report.detail.clone());
        }
        let on_trial = self.trials.on_trial().map(version_of);
        if let Some(v) = on_trial.filter(|v| report.yanked.iter().any(|y| same_version(y, v))) {
            let why = format!("version {v} was yanked by a signed manifest");
            if let Some(verdict) = self.trials.fail(&why, Stage::Yank) {
                self.verdict(verdict);
            }
        }
        if let Some(failed) = &report.failed {
            self.report_version(
                failed.version.clone(),
                None,
                Outcome::Failed,
                Some((failed.stage, failed.detail.clone(), None)),
            );
        }
        *self
            .status
            .checks
            .entry(report.outcome.to_owned())
            .or_default() += 1;
        self.last_check = Some(report);
    }

    /// The answer to `status`.
    pub(super) fn status_reply(&self, disk: Disk) -> reply::Status {
        let workers = self
            .workers
            .values()
            .map(|w| {
                let on_trial = self.trials.watches(w.id);
                let (state, since, draining) = match w.state {
                    State::Starting if on_trial => ("starting (on trial)", None, None),
                    State::Starting => ("starting", None, None),
                    State::Serving { since } if on_trial => ("on trial", Some(since), None),
                    State::Serving { since } => ("ready", Some(since), None),
                    State::Draining { since, .. } => ("draining", None, Some(since)),
                    State::Killed => ("killed", None, None),
                };
                let secs = |t: Instant| self.now.saturating_duration_since(t).as_secs();
                reply::WorkerStatus {
                    id: w.id,
                    pid: w.pid,
                    release: w.release.clone(),
                    state: state.to_owned(),
                    ready_for_secs: since.map(secs),
                    draining_for_secs: draining.map(secs),
                }
            })
            .collect();
        let s = &self.status;
        reply::Status {
            pid: self.fixed.pid,
            uptime_secs: self.now.saturating_duration_since(self.started).as_secs(),
            binary: self.fixed.exe.to_string_lossy().into_owned(),
            workers,
            current: disk.current,
            previous: disk.previous,
            on_trial: self.trials.on_trial().cloned(),
            last_check: self.last_check.as_ref().map(|c| reply::LastCheck {
                at: c.at,
                outcome: c.outcome.to_owned(),
                detail: c.detail.clone(),
            }),
            failed: disk.failed,
            held: disk.held,
            quarantined: disk.quarantined,
            yanked: disk.yanked,
            stranded: self.stranded.clone(),
            last_failure: s.last_failure.clone(),
            checks: s.checks.clone(),
            trials: s.trials.clone(),
            trial_failures: s.trial_failures.clone(),
            host_id: disk.host_id,
            reports: disk.reports,
            baton: *disk.baton,
            counters: reply::Counters {
                cycles: s.cycles,
                crash_restarts: s.crash_restarts,
                promotions: s.promotions,
                failed_trials: s.failed_trials,
                rollbacks: s.rollbacks,
                reexecs: s.reexecs,
            },
        }
    }

    /// The answer to `releases`, or why there is none.
    pub(super) fn releases_reply(&self, disk: Disk) -> Result<reply::Releases, &'static str> {
        if !self.fixed.has_store {
            return Err("there is no releases directory");
        }
        let current = disk.current.map(|c| c.id);
        let previous = disk.previous.map(|c| c.id);
        let trial = self.trials.on_trial().map(|t| t.id.clone());
        let releases = disk
            .releases
            .into_iter()
            .map(|m| {
                let marks = [
                    ("current", current.as_ref() == Some(&m.id)),
                    ("previous", previous.as_ref() == Some(&m.id)),
                    ("on trial", trial.as_ref() == Some(&m.id)),
                    ("held", disk.held.contains(&m.sha256)),
                    ("failed", disk.failed.contains(&m.sha256)),
                    ("quarantined", disk.quarantined.contains(&m.sha256)),
                ]
                .into_iter()
                .filter(|(_, on)| *on)
                .map(|(mark, _)| mark.to_owned())
                .collect();
                reply::ReleaseEntry { release: m, marks }
            })
            .collect();
        Ok(reply::Releases { releases })
    }
}

pub(super) fn ok(mut fields: Value) -> Value {
    fields["ok"] = true.into();
    fields
}

/// A typed answer on the wire: its fields with `"ok": true`.
pub(super) fn ok_typed(answer: &impl serde::Serialize) -> Value {
    ok(serde_json::to_value(answer).expect("replies serialize"))
}
