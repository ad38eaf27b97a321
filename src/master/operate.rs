//! What the control socket asks of the master: status, releases, restart,
//! rollback, upgrade. Requests that wait for an outcome (a cycle, a
//! rollback, a check) are answered when it comes.

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::control::{refuse, Incoming};
use super::store_io::Job;
use super::worker::State;
use super::{update, Master};
use crate::control::{reply, Request};
use crate::release::{Meta, Store};

/// Control requests waiting for an outcome.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// `restart`: answered when the next cycle ends.
    restart: Vec<oneshot::Sender<Value>>,
    /// `rollback`: answered when `previous` serves and is `current`.
    rollback: Option<oneshot::Sender<Value>>,
    /// `upgrade`: answered with the next check's outcome.
    upgrade: Vec<oneshot::Sender<Value>>,
}

fn ok(mut fields: Value) -> Value {
    fields["ok"] = true.into();
    fields
}

impl Master {
    /// The hooks as configured now, with the workers' environment.
    pub(super) fn hook_runner(&self) -> crate::hooks::Hooks {
        crate::hooks::Hooks {
            config: self.hooks.clone(),
            env: self.child_env.vars().to_vec(),
            workdir: self.program.workdir.clone(),
        }
    }

    /// Runs the `post_promote` or `post_rollback` hook in the background.
    pub(super) fn post_hook(
        &self,
        which: crate::hooks::Which,
        release: &Meta,
        before: Option<String>,
    ) {
        if let Some(store) = &self.store {
            self.hook_runner()
                .spawn_post(which, release.clone(), before, store.clone());
        }
    }
}

impl Waiters {
    /// Whether no control request waits for an outcome.
    pub(crate) fn is_empty(&self) -> bool {
        self.restart.is_empty() && self.rollback.is_none() && self.upgrade.is_empty()
    }
}

impl Master {
    /// A request from the control socket.
    pub(super) fn on_control(
        &mut self,
        Incoming {
            request,
            reply,
            conn,
        }: Incoming,
    ) {
        tracing::debug!("control request: {request:?}");
        match request {
            Request::Status => {
                let _ = reply.send(ok_typed(&self.status()));
            }
            Request::Releases => {
                let _ = reply.send(match self.releases() {
                    Ok(releases) => ok_typed(&releases),
                    Err(why) => refuse(why),
                });
            }
            Request::Restart => self.restart(reply),
            Request::Rollback => self.rollback(reply),
            Request::Upgrade { force } => self.upgrade(force, reply),
            Request::Reexec { binary } => match conn {
                Some(conn) => self.reexec_requested(binary, conn),
                None => {
                    let _ = reply.send(refuse("reexec needs its own control connection"));
                }
            },
        }
    }

    fn restart(&mut self, reply: oneshot::Sender<Value>) {
        if self.stopping.is_some() {
            let _ = reply.send(refuse("the master is stopping"));
        } else if self.waiting_for_release {
            let _ = reply.send(refuse("no release is installed yet; nothing to restart"));
        } else {
            self.waiters.restart.push(reply);
            self.request_cycle("control: restart");
        }
    }

    fn rollback(&mut self, reply: oneshot::Sender<Value>) {
        let refused = |why: String| refuse(format!("rollback refused: {why}"));
        let Some(store) = &self.store else {
            let _ = reply.send(refused("there is no releases directory".to_owned()));
            return;
        };
        if let Some(t) = self.trials.on_trial() {
            let _ = reply.send(refused(format!(
                "release {} is on trial; wait for it to end",
                t.id
            )));
            return;
        }
        if self.rolling_back.is_some() || self.promoting.is_some() || self.stopping.is_some() {
            let _ = reply.send(refused("another change is under way".to_owned()));
            return;
        }
        let Some(previous) = store.previous() else {
            let _ = reply.send(refused("there is no previous release".to_owned()));
            return;
        };
        if store.current().is_some_and(|c| c.id == previous.id) {
            let _ = reply.send(refused(format!(
                "previous and current both name {}",
                previous.id
            )));
            return;
        }
        tracing::info!(event = "rollback_started", release = %previous.id, "control: rolling back to release {}", previous.id);
        self.rolling_back = Some(previous);
        self.waiters.rollback = Some(reply);
        self.request_cycle("control: rollback");
    }

    fn upgrade(&mut self, force: bool, reply: oneshot::Sender<Value>) {
        if self.updater.is_none() {
            let _ = reply.send(refuse("no [fetch] source is configured"));
            return;
        }
        self.waiters.upgrade.push(reply);
        if force {
            // The check starts once the held list is gone.
            self.store_job(Job::ClearHeld);
        } else {
            self.check_now.notify_one();
        }
    }

    /// A worker became ready: a restart waiting for a cycle is answered; a
    /// rollback's worker makes `previous` current.
    pub(super) fn worker_ready(&mut self, id: u64, status: &str) {
        for w in self.waiters.restart.drain(..) {
            let _ = w.send(ok(json!({ "outcome": status })));
        }
        let rolled = self
            .rolling_back
            .as_ref()
            .is_some_and(|r| self.releases_of.get(&id) == Some(&r.id));
        if rolled {
            let to = self.rolling_back.clone().expect("checked");
            let hold = self
                .store
                .as_ref()
                .and_then(Store::current)
                .filter(|c| c.id != to.id)
                .map(|c| c.sha256);
            self.store_job(Job::RollBack { to, hold });
        }
    }

    /// A worker could not start or become ready.
    pub(super) fn start_ended_badly(&mut self, failure: &str) {
        for w in self.waiters.restart.drain(..) {
            let _ = w.send(refuse(format!("the cycle failed: {failure}")));
        }
        if let Some(to) = self.rolling_back.take() {
            if let Some(w) = self.waiters.rollback.take() {
                let _ = w.send(refuse(format!(
                    "the rollback to {} failed: {failure}; current is unchanged",
                    to.id
                )));
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
                self.supervisor
                    .status(&format!("serving release {} (rolled back)", to.id));
                self.post_hook(crate::hooks::Which::PostRollback, &to, Some(from.clone()));
                ok(json!({ "current": to.id, "held": from }))
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
            let _ = w.send(answer);
        }
    }

    /// `upgrade --force` forgot the held and quarantined digests.
    pub(super) fn held_cleared(&mut self, result: Result<(), crate::release::Error>) {
        match result {
            Ok(()) => {
                tracing::info!("held and quarantined releases forgotten");
                self.check_now.notify_one();
            }
            Err(e) => {
                let e = crate::errors::display_chain(&e);
                tracing::error!("cannot forget the held releases: {e}");
                for w in self.waiters.upgrade.drain(..) {
                    let _ = w.send(refuse(format!("cannot forget the held releases: {e}")));
                }
            }
        }
    }

    /// A check of the source ended.
    pub(super) fn on_check(&mut self, report: update::CheckReport) {
        for w in self.waiters.upgrade.drain(..) {
            let answer = if report.outcome == "error" {
                refuse(format!("the check failed: {}", report.detail))
            } else if report.outcome == "refused" {
                refuse(report.detail.clone())
            } else {
                ok(json!({ "outcome": report.outcome, "detail": report.detail }))
            };
            let _ = w.send(answer);
        }
        if report.outcome == "refused" {
            self.status.last_failure = Some(report.detail.clone());
        }
        *self
            .status
            .checks
            .entry(report.outcome.to_owned())
            .or_default() += 1;
        self.last_check = Some(report);
    }

    /// The answer to `status`.
    pub(super) fn status(&self) -> reply::Status {
        let workers = self
            .workers
            .values()
            .map(|w| {
                let on_trial = self.trials.watches(w.id);
                let (state, since) = match w.state {
                    State::Starting if on_trial => ("starting (on trial)", None),
                    State::Starting => ("starting", None),
                    State::Serving { since } if on_trial => ("on trial", Some(since)),
                    State::Serving { since } => ("ready", Some(since)),
                    State::Draining { .. } => ("draining", None),
                    State::Killed => ("killed", None),
                };
                reply::WorkerStatus {
                    id: w.id,
                    pid: w.pid,
                    release: self.releases_of.get(&w.id).cloned(),
                    state: state.to_owned(),
                    ready_for_secs: since.map(|s| s.elapsed().as_secs()),
                }
            })
            .collect();
        let store = self.store.as_ref();
        let digests = |set: fn(&Store) -> std::collections::HashSet<String>| {
            store.map(|s| sorted(set(s))).unwrap_or_default()
        };
        let s = &self.status;
        reply::Status {
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            binary: self.exe.to_string_lossy().into_owned(),
            workers,
            current: store.and_then(Store::current),
            previous: store.and_then(Store::previous),
            on_trial: self.trials.on_trial().cloned(),
            last_check: self.last_check.as_ref().map(|c| reply::LastCheck {
                at: c.at,
                outcome: c.outcome.to_owned(),
                detail: c.detail.clone(),
            }),
            failed: digests(Store::failed),
            held: digests(Store::held),
            quarantined: digests(Store::quarantined),
            stranded: self.stranded.clone(),
            last_failure: s.last_failure.clone(),
            checks: s.checks.clone(),
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
    fn releases(&self) -> Result<reply::Releases, &'static str> {
        let store = self
            .store
            .as_ref()
            .ok_or("there is no releases directory")?;
        let current = store.current().map(|c| c.id);
        let previous = store.previous().map(|c| c.id);
        let trial = self.trials.on_trial().map(|t| t.id.clone());
        let (failed, held, quarantined) = (store.failed(), store.held(), store.quarantined());
        let releases = store
            .releases()
            .into_iter()
            .map(|m| {
                let marks = [
                    ("current", current.as_ref() == Some(&m.id)),
                    ("previous", previous.as_ref() == Some(&m.id)),
                    ("on trial", trial.as_ref() == Some(&m.id)),
                    ("held", held.contains(&m.sha256)),
                    ("failed", failed.contains(&m.sha256)),
                    ("quarantined", quarantined.contains(&m.sha256)),
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

/// A typed answer on the wire: its fields with `"ok": true`.
fn ok_typed(answer: &impl serde::Serialize) -> Value {
    ok(serde_json::to_value(answer).expect("replies serialize"))
}

fn sorted(set: std::collections::HashSet<String>) -> Vec<String> {
    let mut v: Vec<String> = set.into_iter().collect();
    v.sort();
    v
}
