//! Re-executing the master (`baton reexec`, a library master's own
//! upgrade): when it may happen, and what crosses the `execve`.

use super::*;

impl Core {
    /// `reexec` was asked for: check the binary, then re-exec once nothing
    /// is half-done.
    pub(super) fn reexec_requested(&mut self, binary: Option<PathBuf>, reply: Token) {
        let refused = |why: &str| refuse(format!("reexec refused: {why}"));
        if self.stopping.is_some() {
            return self.reply(reply, refused("the master is stopping"));
        }
        if self.reexec.is_some() {
            return self.reply(reply, refused("a re-exec is already under way"));
        }
        if !self.fixed.reloadable {
            return self.reply(
                reply,
                refused(
                    "this master was not started by `baton run --config F`; \
                     only such a master can re-exec",
                ),
            );
        }
        let binary = binary.unwrap_or_else(|| self.fixed.exe.clone());
        tracing::info!(
            event = "reexec_requested",
            "re-exec requested: checking {} first",
            binary.display()
        );
        self.reexec = Some(self.pending_reexec(binary.clone(), Some(reply)));
        self.out.push(Action::CheckReexec(binary));
    }

    pub(super) fn pending_reexec(&self, binary: PathBuf, reply: Option<Token>) -> Reexec {
        Reexec {
            binary,
            reply,
            asked: self.now,
            checked: false,
            waiting: None,
            deadline: self.now + REEXEC_WAIT_LIMIT,
            upgrade: None,
        }
    }

    /// `[self]` offers a new build of baton that passed its checks:
    /// re-execute into it once nothing is half-done.
    pub(super) fn self_ready(&mut self, up: crate::master::self_update::Ready) {
        if self.reexec.is_some() || self.stopping.is_some() {
            tracing::info!(
                "baton {} waits: a re-exec is under way or the master is stopping",
                up.version
            );
            return;
        }
        let mut pending = self.pending_reexec(up.binary.clone(), None);
        pending.checked = true;
        pending.upgrade = Some(Box::new(up));
        self.reexec = Some(pending);
    }

    /// The checks of the new binary ended.
    pub(super) fn on_reexec_checked(&mut self, checked: crate::master::reexec::Checked) {
        let Some(pending) = self.reexec.as_mut() else {
            return;
        };
        match checked {
            Ok(version) => {
                tracing::info!("{} passed its checks ({version})", pending.binary.display());
                pending.checked = true;
            }
            Err(why) => {
                let pending = self.reexec.take().expect("checked above");
                let error = format!(
                    "reexec refused: {} failed its checks: {why}; the master runs on as it was",
                    pending.binary.display()
                );
                tracing::error!(event = "reexec_failed", error = %error, "{error}");
                if let Some(to) = pending.reply {
                    self.reply(to, refuse(error));
                }
            }
        }
    }

    /// A library master promoted a new build of its own executable:
    /// re-exec into it once its probe reports `version`.
    pub(super) fn reexec_self(&mut self, version: Option<String>) {
        if self.reexec.is_some() || self.stopping.is_some() {
            return;
        }
        let binary = self.fixed.exe.clone();
        tracing::info!(
            event = "reexec_requested",
            "the master's own executable was upgraded: re-executing {} once its probe answers",
            binary.display()
        );
        self.reexec = Some(self.pending_reexec(binary, None));
        self.out.push(Action::ProbeSelf(version));
    }

    /// Re-executes when a checked re-exec is pending and nothing is
    /// half-done; called after every event.
    pub(super) fn reexec_if_ready(&mut self) {
        if !self.reexec.as_ref().is_some_and(|p| p.checked) {
            return;
        }
        let answer_refusal = |core: &mut Core, error: String| {
            let pending = core.reexec.take().expect("checked above");
            if let Some(to) = pending.reply {
                core.reply(to, refuse(error));
            }
        };
        if self.stopping.is_some() {
            return answer_refusal(self, "reexec refused: the master is stopping".to_owned());
        }
        if let Some(why) = self.busy_with() {
            let now = self.now;
            let pending = self.reexec.as_mut().expect("checked above");
            if now >= pending.deadline {
                let error = format!(
                    "reexec refused: the master was not idle for {}s ({why}); \
                     it runs on as it was, {}",
                    REEXEC_WAIT_LIMIT.as_secs(),
                    if pending.upgrade.is_some() {
                        "and the self-upgrade is tried again at the next check"
                    } else {
                        "ask again"
                    }
                );
                tracing::error!(event = "reexec_failed", error = %error, "{error}");
                return answer_refusal(self, error);
            }
            if pending.waiting.as_deref() != Some(why.as_str()) {
                tracing::info!("re-exec waits: {why}");
                pending.waiting = Some(why);
            }
            return;
        }
        let pending = self.reexec.take().expect("checked above");
        let carry = self.carry();
        self.out.push(Action::Exec {
            binary: pending.binary,
            reply: pending.reply,
            asked: pending.asked,
            carry: Box::new(carry),
            upgrade: pending.upgrade,
        });
    }

    /// Why a re-exec must wait, if it must.
    pub(super) fn busy_with(&self) -> Option<String> {
        if let Some(s) = &self.starting {
            return Some(format!("worker {} is starting", s.id));
        }
        if self.reloading {
            return Some("the config is being reloaded".to_owned());
        }
        if self.cycle_pending || self.restart_at.is_some() {
            return Some("a worker restart is due".to_owned());
        }
        if self.store_pending > 0 || self.promoting.is_some() || self.promote_retry_at.is_some() {
            return Some("the releases directory is being written".to_owned());
        }
        if self.rolling_back.is_some() {
            return Some("a rollback is under way".to_owned());
        }
        if self.queued_install.is_some() {
            return Some("an installed release waits for its trial".to_owned());
        }
        if !self.retired.is_empty() {
            return Some("workers still hold sockets a reload removed".to_owned());
        }
        if !self.waiters.is_empty() {
            return Some("control requests wait for their outcome".to_owned());
        }
        if self.trials.on_trial().is_some() && self.trials.runnable().is_none() {
            return Some("a trial is being recorded".to_owned());
        }
        None
    }

    /// The state that crosses the `execve`.
    pub(super) fn carry(&self) -> Carry {
        let now = self.now;
        let workers = self
            .workers
            .values()
            .map(|w| CarriedWorker {
                id: w.id,
                pid: w.pid,
                stderr_fd: None,
                release: w.release.clone(),
                state: match w.state {
                    State::Serving { since } => CarriedState::Serving {
                        for_ms: now.saturating_duration_since(since).as_millis() as u64,
                    },
                    State::Draining { deadline, since } => CarriedState::Draining {
                        left_ms: deadline.saturating_duration_since(now).as_millis() as u64,
                        for_ms: now.saturating_duration_since(since).as_millis() as u64,
                    },
                    // Never carried: a re-exec waits while a worker starts.
                    State::Starting | State::Killed => CarriedState::Killed,
                },
                status: w.status.clone(),
                tail: w.tail.lines(),
            })
            .collect();
        Carry {
            next_id: self.next_id,
            active: self.active,
            status: self.status.clone(),
            trial: self.trials.carry(now),
            health_failed: self.health_failed,
            uptime_ms: now.saturating_duration_since(self.started).as_millis() as u64,
            workers,
        }
    }

    /// Takes over the workers, trial and counters a previous master carried.
    pub(super) fn resume(
        &mut self,
        carry: Carry,
        tails: Vec<Tail>,
        reply: Option<Token>,
        took_ms: u64,
    ) {
        let now = self.now;
        let mut adopted = Vec::new();
        for (w, tail) in carry.workers.into_iter().zip(tails) {
            let state = match w.state {
                CarriedState::Serving { for_ms } => State::Serving {
                    since: now
                        .checked_sub(Duration::from_millis(for_ms))
                        .unwrap_or(now),
                },
                CarriedState::Draining { left_ms, for_ms } => State::Draining {
                    deadline: now + Duration::from_millis(left_ms),
                    since: now
                        .checked_sub(Duration::from_millis(for_ms))
                        .unwrap_or(now),
                },
                CarriedState::Killed => State::Killed,
            };
            adopted.push(w.pid);
            self.workers.insert(
                w.id,
                WorkerView {
                    id: w.id,
                    pid: w.pid,
                    state,
                    status: w.status,
                    release: w.release,
                    tail,
                },
            );
            if state == State::Killed {
                self.out.push(Action::Kill(w.id));
            }
        }
        self.next_id = carry.next_id.max(self.next_id);
        self.active = carry.active.filter(|id| self.workers.contains_key(id));
        self.status = carry.status;
        self.status.reexecs += 1;
        self.started = now
            .checked_sub(Duration::from_millis(carry.uptime_ms))
            .unwrap_or(now);
        self.health_failed = carry.health_failed;
        if let Some(trial) = carry.trial {
            self.trials.resume(trial, now);
        }
        tracing::info!(
            event = "reexec_done",
            "re-executed {} in {took_ms} ms: adopted worker(s) {adopted:?}",
            self.fixed.exe.display()
        );
        self.reexec_done(reply, &adopted, took_ms, None);
    }

    /// Takes over the workers a previous master's core names: they keep
    /// serving until a fresh one is ready, then drain.
    pub(super) fn resume_core(
        &mut self,
        workers: Vec<(u64, u32, Tail)>,
        newest: Option<u64>,
        reply: Option<Token>,
        why: &str,
    ) {
        tracing::warn!(
            event = "reexec_fallback",
            "cannot read the state of the master before the re-exec ({why}): keeping its \
             sockets, starting a fresh worker and draining the old ones once it is ready"
        );
        let mut adopted = Vec::new();
        for (id, pid, tail) in workers {
            adopted.push(pid);
            self.workers.insert(
                id,
                WorkerView {
                    id,
                    pid,
                    state: State::Serving { since: self.now },
                    status: None,
                    release: None,
                    tail,
                },
            );
        }
        self.next_id = newest.map_or(1, |n| n + 1);
        self.active = newest.filter(|id| self.workers.contains_key(id));
        let others: Vec<u64> = self
            .workers
            .keys()
            .copied()
            .filter(|id| Some(*id) != self.active)
            .collect();
        for id in others {
            self.drain(id);
        }
        self.reexec_done(reply, &adopted, 0, Some(why));
    }

    pub(super) fn reexec_done(
        &mut self,
        reply: Option<Token>,
        adopted: &[u32],
        took_ms: u64,
        fallback: Option<&str>,
    ) {
        self.notice(Notice::Ready(format!(
            "re-executed {}; serving",
            self.fixed.exe.display()
        )));
        let Some(to) = reply else { return };
        let mut answer = json!({
            "ok": true,
            "pid": self.fixed.pid,
            "binary": self.fixed.exe,
            "version": crate::version::own(),
            "workers": adopted,
            "took_ms": took_ms,
        });
        if let Some(why) = fallback {
            answer["fallback"] = why.into();
        }
        self.reply(to, answer);
    }
}
