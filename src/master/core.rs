//! The master's state and every decision it makes, apart from I/O: the
//! driver feeds [`Event`]s with the current `Instant` to [`Core::handle`]
//! and carries out the [`Action`]s it returns; [`Core::deadline`] says
//! when to come back with [`Event::Timer`]. Nothing here spawns, signals,
//! writes or reads a clock, so every decision (cycle, crash restart and
//! back-off, trial verdict, promotion, rollback, reload, re-exec, stop) is
//! unit-tested under a fake clock (see `core/tests.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::control::refuse;
use super::event::{Action, Adopted, AfterReload, Boot, Disk, Event, Notice, Reloaded, Sig, Token};
use super::notify;
use super::reexec::{CarriedState, CarriedWorker};
use super::store_io::{Done, Job};
use super::trial::{self, Trials, Verdict};
use super::update;
use super::worker::Tail;
use super::Stopped;
use crate::config::{Program, Ready, Releases};
use crate::control::{reply, Request};
use crate::protocol::describe_exit;
use crate::release::Meta;

#[cfg(test)]
mod tests;

/// The first wait before restarting a crashed worker; it doubles per crash.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// A worker that served this long before crashing resets the backoff.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(10);
/// How long a new release's worker must stay ready before it is promoted,
/// where the config does not say (in-place mode, library mode).
pub(crate) const SETTLE_DEFAULT: Duration = Duration::from_secs(10);
/// The wait before retrying a promotion whose store write failed.
const PROMOTE_RETRY: Duration = Duration::from_secs(1);
/// How long a re-exec waits for the master to be idle (no worker starting,
/// no write to the releases directory in flight) before it is refused.
const REEXEC_WAIT_LIMIT: Duration = Duration::from_secs(120);

/// What the core's decisions depend on in the config; a reload replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// How a worker says it is ready.
    pub ready: Ready,
    /// How long a starting worker has to be ready.
    pub ready_timeout: Duration,
    /// How long a draining worker has before SIGKILL.
    pub drain_timeout: Duration,
    /// The stop signal, for logs.
    pub stop_signal: String,
    /// The longest crash-restart back-off.
    pub restart_backoff_max: Duration,
    /// How long a trial worker must stay ready.
    pub settle: Duration,
    /// The release health check, when configured: failures in a row that
    /// fail a trial, and whether promoted releases are checked too.
    pub health: Option<HealthPolicy>,
}

/// What the core needs of `[releases] health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HealthPolicy {
    /// Failures in a row that fail a trial (or mark a release unhealthy).
    pub failures: u32,
    /// Check promoted releases too.
    pub after: bool,
}

impl Settings {
    /// The settings of a config.
    pub(crate) fn new(program: &Program, releases: Option<&Releases>) -> Settings {
        Settings {
            ready: program.ready.clone(),
            ready_timeout: program.ready_timeout,
            drain_timeout: program.drain_timeout,
            stop_signal: program.stop_signal.to_string(),
            restart_backoff_max: program.restart_backoff_max,
            settle: releases.map_or(SETTLE_DEFAULT, |r| r.settle),
            health: releases
                .and_then(|r| r.health.as_ref())
                .map(|h| HealthPolicy {
                    failures: h.failures,
                    after: h.after,
                }),
        }
    }
}

/// What stays for the master's whole life.
#[derive(Debug, Clone)]
pub(crate) struct Fixed {
    /// There is a config file to reload (and to validate a re-exec with).
    pub reloadable: bool,
    /// A library master re-executes into its own promoted executable.
    pub self_upgrade: bool,
    /// There is a releases directory (or an in-place state directory).
    pub has_store: bool,
    /// The binary this master runs.
    pub exe: PathBuf,
    /// The master's PID.
    pub pid: u32,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Started, not yet ready.
    Starting,
    /// Ready and serving.
    Serving {
        /// When it became ready.
        since: Instant,
    },
    /// Asked to stop; killed at the deadline.
    Draining {
        /// When SIGKILL is due.
        deadline: Instant,
    },
    /// Killed by the master (failed start or drain deadline); awaiting reap.
    Killed,
}

/// A worker as the core sees it.
#[derive(Debug, Clone)]
struct Worker {
    id: u64,
    /// 0 until the driver says it runs.
    pid: u32,
    state: State,
    /// Its last `STATUS=` message.
    status: Option<String>,
    /// The release it runs.
    release: Option<String>,
    tail: Tail,
}

/// Why a worker is being started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// The first worker, or a restart after a crash: nothing else serves.
    Start,
    /// A graceful cycle: the active worker keeps serving until this one is ready.
    Cycle,
}

#[derive(Debug)]
struct Starting {
    id: u64,
    reason: Reason,
    deadline: Instant,
    /// For `delay:` readiness: when it counts as ready.
    ready_at: Option<Instant>,
    /// For `http:` readiness: a check polls.
    polled: bool,
}

/// What the master knows about itself, for logs, `STATUS=` and `status`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Status {
    /// Graceful cycles that ended with a new worker serving.
    pub cycles: u64,
    /// Workers restarted after they died.
    pub crash_restarts: u64,
    /// Releases promoted.
    pub promotions: u64,
    /// Trials failed.
    pub failed_trials: u64,
    /// Rollbacks done.
    pub rollbacks: u64,
    /// Re-executions of the master's binary (`baton reexec`).
    #[serde(default)]
    pub reexecs: u64,
    /// Checks of the source by outcome.
    pub checks: BTreeMap<String, u64>,
    /// The last failure, described.
    pub last_failure: Option<String>,
}

/// Control requests waiting for an outcome.
#[derive(Debug, Default)]
struct Waiters {
    /// `restart`: answered when the next cycle ends.
    restart: Vec<Token>,
    /// `rollback`: answered when `previous` serves and is `current`.
    rollback: Option<Token>,
    /// `upgrade`: answered with the next check's outcome.
    upgrade: Vec<Token>,
}

impl Waiters {
    fn is_empty(&self) -> bool {
        self.restart.is_empty() && self.rollback.is_none() && self.upgrade.is_empty()
    }
}

/// A re-exec that was asked for.
#[derive(Debug)]
struct Reexec {
    binary: PathBuf,
    /// The control request that asked (none for a library master's own
    /// upgrade).
    reply: Option<Token>,
    asked_at_ms: u64,
    /// The new binary passed its checks.
    checked: bool,
    /// What it is waiting for, once logged.
    waiting: Option<String>,
    /// When waiting for the master to be idle gives up.
    deadline: Instant,
}

/// The state that crosses the master's `execve` (see `reexec`).
#[derive(Debug, Clone)]
pub(crate) struct Carry {
    /// The next worker id.
    pub next_id: u64,
    /// The worker that serves.
    pub active: Option<u64>,
    /// The counters.
    pub status: Status,
    /// The running trial.
    pub trial: Option<trial::Carried>,
    /// Health checks of a promoted release failed in a row.
    pub health_failed: u32,
    /// How long the master has run, in ms.
    pub uptime_ms: u64,
    /// The workers (their stderr descriptors are the driver's).
    pub workers: Vec<CarriedWorker>,
}

/// The master's state.
#[derive(Debug)]
pub(crate) struct Core {
    settings: Settings,
    fixed: Fixed,
    /// The time of the event being handled.
    now: Instant,
    /// What the event being handled asks for.
    out: Vec<Action>,
    /// When the master started.
    started: Instant,
    next_id: u64,
    workers: BTreeMap<u64, Worker>,
    /// The worker that serves.
    active: Option<u64>,
    /// The worker being started, at most one at a time.
    starting: Option<Starting>,
    /// A cycle was asked for while one ran: run one more after it.
    cycle_pending: bool,
    /// That cycle re-reads the config first.
    reload_pending: bool,
    /// Crash restarts in a row, for the restart back-off.
    restarts_in_a_row: u32,
    restart_at: Option<Instant>,
    stopping: Option<Stopped>,
    status: Status,
    /// What `current` names, as of the last write the master made.
    current: Option<Meta>,
    /// Writes to the releases directory not finished yet.
    store_pending: usize,
    /// The update loop runs.
    updater: bool,
    /// The last check of the source.
    last_check: Option<update::CheckReport>,
    /// Control requests waiting for an outcome.
    waiters: Waiters,
    /// `previous`, being cycled onto by a rollback.
    rolling_back: Option<Meta>,
    /// The trial of a new release: the policy.
    trials: Trials,
    /// The update loop's hold while a trial runs.
    trial_hold: Option<Token>,
    /// A release that passed its trial, until `current` names it.
    promoting: Option<Meta>,
    /// When to retry a promotion whose store write failed.
    promote_retry_at: Option<Instant>,
    /// A release installed while another was on trial: tried next.
    queued_install: Option<(Meta, Token)>,
    /// The worker whose health is being checked.
    health_checked: Option<u64>,
    /// Checks of a promoted release failed in a row (reported only).
    health_failed: u32,
    /// No release is installed yet: the first worker waits for one.
    waiting_for_release: bool,
    /// When to record the next attempt at an interrupted first trial.
    trial_retry_at: Option<Instant>,
    /// Why no worker can serve, when the only release is quarantined.
    stranded: Option<String>,
    /// Socket sets replaced by a reload (by generation), kept until the
    /// workers that were started with them (ids) have exited.
    retired: Vec<(u64, Vec<u64>)>,
    /// A re-exec asked for, until it happens or fails.
    reexec: Option<Reexec>,
}

impl Core {
    /// A master with no worker yet; [`Event::Boot`] decides what starts.
    pub(crate) fn new(settings: Settings, fixed: Fixed, now: Instant) -> Core {
        let trials = Trials::new(settings.settle, settings.health.map(|h| h.failures));
        Core {
            settings,
            fixed,
            now,
            out: Vec::new(),
            started: now,
            next_id: 1,
            workers: BTreeMap::new(),
            active: None,
            starting: None,
            cycle_pending: false,
            reload_pending: false,
            restarts_in_a_row: 0,
            restart_at: None,
            stopping: None,
            status: Status::default(),
            current: None,
            store_pending: 0,
            updater: false,
            last_check: None,
            waiters: Waiters::default(),
            rolling_back: None,
            trials,
            trial_hold: None,
            promoting: None,
            promote_retry_at: None,
            queued_install: None,
            health_checked: None,
            health_failed: 0,
            waiting_for_release: false,
            trial_retry_at: None,
            stranded: None,
            retired: Vec::new(),
            reexec: None,
        }
    }

    /// Handles one event at `now`; returns what to do, in order.
    pub(crate) fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        self.now = now;
        match event {
            Event::Boot(boot) => self.boot(*boot),
            Event::Signal(sig) => self.on_signal(sig),
            Event::Spawned { id, pid, tail } => self.on_spawned(id, pid, tail),
            Event::SpawnFailed { id, error } => self.on_spawn_failed(id, error),
            Event::Exited { id, status } => self.on_exit(id, status),
            Event::Ready(id) => self.on_ready(id, "its health check answered"),
            Event::Notify(msg) => self.on_notify(msg),
            Event::Installed { release, hold } => self.on_installed(release, hold),
            Event::Store { done, current } => {
                self.current = current;
                self.on_store(done)
            }
            Event::Health(report) => self.on_health(report),
            Event::Control {
                request,
                reply,
                disk,
            } => self.on_control(request, reply, disk),
            Event::Checked(report) => self.on_check(report),
            Event::ReexecChecked(checked) => self.on_reexec_checked(checked),
            Event::ExecFailed { error, reply } => {
                tracing::error!(event = "reexec_failed", error = %error, "{error}");
                self.notice(Notice::Ready(
                    "re-exec failed; serving as before".to_owned(),
                ));
                if let Some(to) = reply {
                    self.reply(to, refuse(error));
                }
            }
            Event::Reloaded { why, then, result } => self.on_reloaded(&why, then, result),
            Event::Timer => self.on_timer(),
        }
        self.update_health();
        self.release_retired_sockets();
        self.reexec_if_ready();
        if let Some(how) = self.stopping {
            if self.workers.is_empty() {
                tracing::info!(event = "stopped", "all workers have exited; master exiting");
                self.out.push(Action::Exit(how));
            }
        }
        std::mem::take(&mut self.out)
    }

    /// When to come back with [`Event::Timer`].
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let starting = self
            .starting
            .iter()
            .flat_map(|s| [Some(s.deadline), s.ready_at]);
        let draining = self.workers.values().map(|w| match w.state {
            State::Draining { deadline } => Some(deadline),
            _ => None,
        });
        starting
            .chain(draining)
            .chain([self.restart_at])
            .chain([self.trials.deadline()])
            .chain([self.promote_retry_at])
            .chain([self.trial_retry_at])
            .chain([self
                .reexec
                .as_ref()
                .filter(|r| r.checked)
                .map(|r| r.deadline)])
            .flatten()
            .min()
    }

    fn boot(&mut self, boot: Boot) {
        self.current = boot.current;
        self.waiting_for_release = boot.waiting_for_release;
        self.stranded = boot.stranded;
        self.updater = boot.updater;
        self.trial_hold = boot.hold;
        let resumed = match boot.adopted {
            Some(Adopted::Full {
                carry,
                tails,
                reply,
                took_ms,
            }) => {
                self.resume(*carry, tails, reply, took_ms);
                true
            }
            Some(Adopted::Core {
                workers,
                reply,
                why,
            }) => {
                self.resume_core(workers, reply, &why);
                false
            }
            None => false,
        };
        if let Some((release, attempt, after)) = boot.retry {
            // Begun again once its record counts the attempt, after the wait;
            // its worker is the first to start.
            if self.trials.begin_attempt(release, attempt).is_ok() {
                self.waiting_for_release = true;
                self.trial_retry_at = Some(self.now + after);
            }
        }
        if resumed && !self.workers.is_empty() {
            // The adopted workers serve on.
        } else if self.trial_retry_at.is_some() {
            // The interrupted first trial starts the first worker.
        } else if self.stranded.is_some() {
            // Said loudly at start-up; `baton status` and metrics say it too.
        } else if self.waiting_for_release {
            tracing::info!("no release is installed yet; waiting for the first one");
        } else {
            self.start_worker(Reason::Start);
        }
    }

    fn on_signal(&mut self, sig: Sig) {
        match sig {
            Sig::Hup | Sig::Usr2 => self.reload(sig.name()),
            Sig::Usr1 if self.updater => self.out.push(Action::CheckNow),
            Sig::Usr1 => tracing::info!("SIGUSR1: no fetcher is configured, nothing to check"),
            Sig::Term | Sig::Int => self.stop(sig.name()),
        }
    }

    fn notice(&mut self, notice: Notice) {
        self.out.push(Action::Notify(notice));
    }

    fn request_cycle(&mut self, why: &str) {
        if self.stopping.is_some() {
            tracing::info!("{why}: ignored while stopping");
        } else if self.waiting_for_release {
            tracing::info!("{why}: no release is installed yet; nothing to cycle");
        } else if self.starting.is_some() {
            tracing::info!("{why}: a worker is starting; one more cycle will follow it");
            self.cycle_pending = true;
        } else if self.active.is_none() {
            // Nothing serves: restart now instead of waiting out the backoff.
            tracing::info!("{why}: no worker is serving; starting one now");
            self.restart_at = None;
            self.start_worker(Reason::Start);
        } else {
            tracing::info!(event = "cycle_started", "{why}: starting a graceful cycle");
            self.start_worker(Reason::Cycle);
        }
    }

    /// Starts a worker: of the release on trial while there is one, else
    /// of `current` (through the configured command). The driver answers
    /// with `Spawned` or `SpawnFailed`.
    fn start_worker(&mut self, reason: Reason) {
        if let Some(s) = &self.starting {
            tracing::warn!(
                worker = s.id,
                "a worker is already starting; not starting another"
            );
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        if reason == Reason::Cycle {
            self.notice(Notice::Reloading(format!("starting worker {id}")));
        }
        // A release being promoted or rolled back to is run from its own
        // directory until `current` names it.
        let own_dir = self
            .trials
            .runnable()
            .cloned()
            .or_else(|| self.promoting.clone())
            .or_else(|| self.rolling_back.clone());
        let from_own_dir = own_dir.is_some();
        let release = own_dir.or_else(|| self.current.clone());
        let now = self.now;
        let ready_at = match &self.settings.ready {
            Ready::Delay(d) => Some(now + *d),
            _ => None,
        };
        self.workers.insert(
            id,
            Worker {
                id,
                pid: 0,
                state: State::Starting,
                status: None,
                release: release.as_ref().map(|r| r.id.clone()),
                tail: Tail::default(),
            },
        );
        self.starting = Some(Starting {
            id,
            reason,
            deadline: now + self.settings.ready_timeout,
            ready_at,
            polled: false,
        });
        self.out.push(Action::Spawn {
            id,
            release,
            own_dir: from_own_dir,
        });
    }

    fn on_spawned(&mut self, id: u64, pid: u32, tail: Tail) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.pid = pid;
        worker.tail = tail;
        let Some(starting) = self.starting.as_mut().filter(|s| s.id == id) else {
            return;
        };
        let reason = starting.reason;
        match self.trials.runnable().cloned() {
            Some(t) => {
                self.trials.started(id);
                tracing::info!(
                    event = "worker_started",
                    worker = id,
                    pid,
                    release = %t.id,
                    "started worker ({reason:?}) on trial of release {}",
                    t.id
                );
            }
            None => tracing::info!(
                event = "worker_started",
                worker = id,
                pid,
                "started worker ({reason:?})"
            ),
        }
        if let Ready::Http(path) = &self.settings.ready {
            starting.polled = true;
            let path = path.clone();
            self.out.push(Action::StartReadyCheck { id, path });
        }
    }

    fn on_spawn_failed(&mut self, id: u64, error: String) {
        let Some(starting) = self.starting.take_if(|s| s.id == id) else {
            return;
        };
        self.workers.remove(&id);
        let failure = format!("worker {id} failed to start: {error}");
        if self.trials.runnable().is_some() {
            if let Some(v) = self.trials.fail(&failure) {
                self.verdict(v);
            }
        }
        self.start_failed(starting.reason, failure);
    }

    fn on_notify(&mut self, msg: notify::Message) {
        let Some(pid) = msg.pid else { return };
        let Some(id) = self
            .workers
            .values()
            .find(|w| w.pid == pid && pid != 0)
            .map(|w| w.id)
        else {
            if msg.fields.iter().any(|(k, v)| k == "READY" && v == "1") {
                tracing::warn!(
                    pid,
                    "READY=1 from a process that is not a worker ignored; a wrapper script \
                     must exec the program so that it keeps the worker's PID"
                );
            }
            return;
        };
        for (key, value) in msg.fields {
            match key.as_str() {
                "READY" if value == "1" && self.settings.ready == Ready::Notify => {
                    self.on_ready(id, "it sent READY=1");
                }
                "STATUS" => {
                    tracing::debug!(worker = id, "status: {value}");
                    if let Some(w) = self.workers.get_mut(&id) {
                        w.status = Some(value);
                    }
                }
                "STOPPING" if value == "1" => tracing::debug!(worker = id, "worker is stopping"),
                _ => {}
            }
        }
    }

    fn on_ready(&mut self, id: u64, how: &str) {
        let Some(starting) = self.starting.take_if(|s| s.id == id) else {
            return;
        };
        if starting.polled {
            self.out.push(Action::StopReadyCheck(id));
        }
        let now = self.now;
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.state = State::Serving { since: now };
        let pid = worker.pid;
        tracing::info!(
            event = "worker_ready",
            worker = id,
            pid,
            "worker is ready: {how}"
        );
        if let Some(old) = self.active.replace(id) {
            self.status.cycles += 1;
            self.drain(old);
        }
        let status = format!("serving with worker {id} (pid {pid})");
        self.notice(Notice::Ready(status.clone()));
        self.worker_ready(id, &status);
        if let Some(release) = self.trials.on_trial().filter(|_| self.trials.watches(id)) {
            tracing::info!(
                worker = id,
                "release {} serves on trial; promoted if it stays up for {}",
                release.id,
                humantime::format_duration(self.trials.settle())
            );
        }
        if let Some(v) = self.trials.ready(id, now) {
            self.verdict(v);
        }
        if self.cycle_pending {
            self.run_pending_cycle();
        }
    }

    fn drain(&mut self, id: u64) {
        let deadline = self.now + self.settings.drain_timeout;
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        tracing::info!(
            event = "worker_draining",
            worker = id,
            pid = w.pid,
            "asking worker to drain with {}",
            self.settings.stop_signal
        );
        w.state = State::Draining { deadline };
        self.out.push(Action::Drain(id));
    }

    fn kill(&mut self, id: u64) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.state = State::Killed;
            self.out.push(Action::Kill(id));
        }
    }

    fn on_exit(&mut self, id: u64, status: std::process::ExitStatus) {
        let Some(worker) = self.workers.remove(&id) else {
            return;
        };
        let how = describe_exit(&status);
        if let Some(starting) = self.starting.take_if(|s| s.id == id) {
            if starting.polled {
                self.out.push(Action::StopReadyCheck(id));
            }
            let failure = failure_report(
                &format!(
                    "new worker {id} (pid {}) exited before it was ready: {how}",
                    worker.pid
                ),
                &worker,
            );
            if let Some(v) = self.trials.exited(id, &failure) {
                self.verdict(v);
            }
            self.start_failed(starting.reason, failure);
        } else if self.active == Some(id) {
            self.active = None;
            let served = match worker.state {
                State::Serving { since } => self.now.saturating_duration_since(since),
                _ => Duration::ZERO,
            };
            let failure = failure_report(
                &format!("worker {id} (pid {}) died: {how}", worker.pid),
                &worker,
            );
            tracing::error!(event = "worker_died", worker = id, error = %failure, "{failure}");
            self.status.last_failure = Some(failure.clone());
            if served >= RESTART_BACKOFF_RESET {
                self.restarts_in_a_row = 0;
            }
            self.status.crash_restarts += 1;
            // A worker of the release on trial that dies fails the trial,
            // also one a restart during the trial was replacing.
            let verdict = self.trials.exited(id, &failure).or_else(|| {
                let ran_trial = worker.release.is_some()
                    && self.trials.on_trial().map(|t| &t.id) == worker.release.as_ref();
                if ran_trial {
                    self.trials.fail(&failure)
                } else {
                    None
                }
            });
            if let Some(v) = verdict {
                // Back to `current` at once: it proved itself before.
                self.verdict(v);
            } else if self.stopping.is_none() && self.starting.is_none() {
                self.schedule_restart();
            }
        } else {
            if let Some(v) = self
                .trials
                .exited(id, &format!("worker {id} exited: {how}"))
            {
                self.verdict(v);
            }
            tracing::info!(
                event = "worker_exited",
                worker = id,
                pid = worker.pid,
                "worker exited: {how}"
            );
        }
    }

    /// A worker could not start or become ready. During a cycle the active
    /// worker keeps serving; otherwise a restart is scheduled.
    fn start_failed(&mut self, reason: Reason, failure: String) {
        tracing::error!(event = "start_failed", error = %failure, "{failure}");
        self.status.last_failure = Some(failure.clone());
        self.notice(Notice::Status(failure.clone()));
        self.start_ended_badly(&failure);
        if self.stopping.is_some() || self.starting.is_some() {
            // Stopping, or a failed trial already started `current`.
            return;
        }
        match (reason, self.active) {
            (Reason::Cycle, Some(active)) => {
                tracing::warn!(
                    event = "cycle_failed",
                    worker = active,
                    "cycle failed; the running worker keeps serving"
                );
                let pid = self.workers.get(&active).map_or(0, |w| w.pid);
                self.notice(Notice::Ready(format!(
                    "serving with worker {active} (pid {pid}); last cycle failed"
                )));
                if self.cycle_pending {
                    self.run_pending_cycle();
                }
            }
            _ if self.waiting_for_release => {}
            _ if self.trials.on_trial().is_none()
                && self.fixed.has_store
                && self.current.is_none() =>
            {
                // The first release failed its trial: nothing to go back to.
                self.waiting_for_release = true;
                self.cycle_pending = false;
                tracing::warn!("no release has proved itself yet; waiting for the next one");
                self.apply_pending_reload(AfterReload::Settle);
            }
            _ => {
                self.cycle_pending = false;
                if self.reload_pending {
                    self.apply_pending_reload(AfterReload::Restart);
                } else {
                    self.schedule_restart();
                }
            }
        }
    }

    /// Whether worker `id` runs a release that is neither on trial nor
    /// `current` (the trial it served failed): it must give way to `current`.
    fn runs_failed_release(&self, id: u64) -> bool {
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
    fn verdict(&mut self, verdict: Verdict) {
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
            Verdict::Fail { release, why } => {
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
                self.store_job(Job::Fail(release));
                self.back_to_current();
            }
        }
    }

    /// After a failed trial: a worker of the failed release that still
    /// serves gives way to `current` by a graceful cycle; with nothing
    /// serving, `current` starts now.
    fn back_to_current(&mut self) {
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
    fn update_health(&mut self) {
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
    fn on_health(&mut self, (worker, result): super::health::Report) {
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

    fn store_job(&mut self, job: Job) {
        if self.fixed.has_store {
            self.store_pending += 1;
            self.out.push(Action::Store(job));
        } else {
            tracing::error!("no releases directory to record {job:?} in");
        }
    }

    /// A write to the releases directory finished.
    fn on_store(&mut self, done: Done) {
        self.store_pending = self.store_pending.saturating_sub(1);
        match done {
            Done::TrialBegun(release, Ok(())) => {
                self.trials.recorded();
                if self.stopping.is_some() {
                    self.trials.fail("the master is stopping");
                    self.store_job(Job::Abandon(release));
                    return;
                }
                let why = format!("release {} on trial", release.id);
                self.stranded = None;
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
                self.trials.fail("its trial could not be recorded");
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
    fn trial_over(&mut self) {
        if let Some(hold) = self.trial_hold.take() {
            self.out.push(Action::Release(hold));
        }
        if let Some((release, hold)) = self.queued_install.take() {
            self.on_installed(release, hold);
        }
    }

    /// A new release was installed: record its trial on disk, then (in
    /// `on_store`) start its worker.
    fn on_installed(&mut self, release: Meta, hold: Token) {
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
                self.store_job(Job::BeginTrial(release, 1));
            }
            Err(release) => {
                tracing::info!(
                    "release {} installed while another trial runs; it waits for it to end",
                    release.id
                );
                if let Some((dropped, old)) = self.queued_install.replace((*release, hold)) {
                    tracing::info!(
                        "release {} no longer waits: a newer install replaces it",
                        dropped.id
                    );
                    self.out.push(Action::Release(old));
                }
            }
        }
    }

    fn schedule_restart(&mut self) {
        let delay = crate::time::backoff(
            RESTART_BACKOFF_MIN,
            self.restarts_in_a_row,
            self.settings.restart_backoff_max,
        );
        self.restarts_in_a_row = self.restarts_in_a_row.saturating_add(1);
        tracing::info!(
            event = "restart_scheduled",
            "restarting the worker in {}",
            humantime::format_duration(delay)
        );
        self.restart_at = Some(self.now + delay);
    }

    fn on_timer(&mut self) {
        let now = self.now;
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            if self.starting.is_none() {
                self.start_worker(Reason::Start);
            }
        }
        if let Some(v) = self.trials.tick(now) {
            self.verdict(v);
        }
        if self.trial_retry_at.is_some_and(|t| t <= now) {
            self.trial_retry_at = None;
            if let Some(release) = self.trials.on_trial().cloned() {
                let attempt = self.trials.attempt();
                tracing::info!(
                    event = "trial_started",
                    release = %release.id,
                    "release {}: recording attempt {attempt} at its trial",
                    release.id
                );
                self.store_job(Job::BeginTrial(release, attempt));
            }
        }
        if self.promote_retry_at.is_some_and(|t| t <= now) {
            self.promote_retry_at = None;
            if let Some(release) = self.promoting.clone() {
                self.store_job(Job::Promote(release));
            }
        }
        if let Some(s) = &self.starting {
            let id = s.id;
            if s.ready_at.is_some_and(|t| t <= now) {
                self.on_ready(id, "its start delay passed");
            } else if s.deadline <= now {
                let starting = self.starting.take().expect("checked above");
                if starting.polled {
                    self.out.push(Action::StopReadyCheck(id));
                }
                let timeout = humantime::format_duration(self.settings.ready_timeout);
                let failure = match self.workers.get(&id) {
                    Some(w) => failure_report(
                        &format!(
                            "new worker {id} (pid {}) was not ready within {timeout}; killed it",
                            w.pid
                        ),
                        w,
                    ),
                    None => format!("new worker {id} was not ready within {timeout}"),
                };
                self.kill(id);
                if let Some(v) = self.trials.exited(id, &failure) {
                    self.verdict(v);
                }
                self.start_failed(starting.reason, failure);
            }
        }
        let overdue: Vec<u64> = self
            .workers
            .values()
            .filter(|w| matches!(w.state, State::Draining { deadline } if deadline <= now))
            .map(|w| w.id)
            .collect();
        for id in overdue {
            if let Some(w) = self.workers.get(&id) {
                tracing::warn!(
                    event = "worker_killed",
                    worker = id,
                    pid = w.pid,
                    "worker did not exit within drain_timeout ({}); killing it",
                    humantime::format_duration(self.settings.drain_timeout)
                );
            }
            self.kill(id);
        }
    }

    fn stop(&mut self, why: &str) {
        if self.stopping.is_some() {
            tracing::warn!("{why} again: killing all workers");
            self.stopping = Some(Stopped::Hard);
            let ids: Vec<u64> = self.workers.keys().copied().collect();
            for id in ids {
                self.kill(id);
            }
            return;
        }
        tracing::info!(event = "stopping", "{why}: stopping all workers gracefully");
        self.stopping = Some(Stopped::Graceful);
        if let Some(release) = self.trials.on_trial().cloned() {
            // No verdict: the release is tried again at the next start.
            tracing::info!("the trial of release {} ends unfinished", release.id);
            self.trials.fail("the master is stopping");
            self.store_job(Job::Abandon(release));
        }
        self.notice(Notice::Stopping);
        self.cycle_pending = false;
        self.reload_pending = false;
        self.restart_at = None;
        if let Some(s) = self.starting.take() {
            if s.polled {
                self.out.push(Action::StopReadyCheck(s.id));
            }
        }
        let ids: Vec<u64> = self.workers.keys().copied().collect();
        for id in ids {
            if !matches!(
                self.workers[&id].state,
                State::Draining { .. } | State::Killed
            ) {
                self.drain(id);
            }
        }
        self.active = None;
    }
}

/// Reloads: whether one runs now, and what follows it.
impl Core {
    /// SIGHUP/SIGUSR2: re-read the config when there is a file, apply it if
    /// it is valid, then cycle. While a worker starts, the reload waits for
    /// it and the config is read once for the cycle that follows.
    fn reload(&mut self, why: &str) {
        if self.stopping.is_some() {
            tracing::info!("{why}: ignored while stopping");
            return;
        }
        if !self.fixed.reloadable {
            self.request_cycle(why);
            return;
        }
        if let Some(s) = &self.starting {
            tracing::info!(
                worker = s.id,
                "{why}: a worker is starting; the config is re-read for the cycle that follows it"
            );
            self.cycle_pending = true;
            self.reload_pending = true;
            return;
        }
        self.out.push(Action::Reload {
            why: why.to_owned(),
            then: AfterReload::Cycle,
            hold: self.trial_hold,
        });
    }

    /// Runs the cycle that coalesced while a worker was starting, reading
    /// the config first when a reload asked for it.
    fn run_pending_cycle(&mut self) {
        self.cycle_pending = false;
        if std::mem::take(&mut self.reload_pending) {
            self.reload("coalesced reload");
        } else {
            self.request_cycle("coalesced request");
        }
    }

    /// A reload was pending but no cycle follows (the starting worker
    /// failed): read the config for what follows.
    fn apply_pending_reload(&mut self, then: AfterReload) {
        if std::mem::take(&mut self.reload_pending) {
            self.out.push(Action::Reload {
                why: "coalesced reload".to_owned(),
                then,
                hold: self.trial_hold,
            });
        }
    }

    fn serving_status(&self) -> String {
        match self.active.and_then(|id| self.workers.get(&id)) {
            Some(w) => format!("serving with worker {} (pid {})", w.id, w.pid),
            None => "no worker is serving".to_owned(),
        }
    }

    /// The driver read the config: apply what the core keeps of it.
    fn on_reloaded(&mut self, why: &str, then: AfterReload, result: Result<Reloaded, String>) {
        let applied = match result {
            Ok(reloaded) => {
                tracing::info!(event = "reloaded", "{}", reloaded.summary);
                self.trials.configure(
                    reloaded.settings.settle,
                    reloaded.settings.health.map(|h| h.failures),
                );
                self.settings = reloaded.settings;
                self.updater = reloaded.updater;
                if let Some(generation) = reloaded.retired {
                    self.retired
                        .push((generation, self.workers.keys().copied().collect()));
                }
                if self.health_checked.take().is_some() {
                    // Restarted with the new check by `update_health`.
                    self.out.push(Action::StopHealth);
                }
                true
            }
            Err(message) => {
                tracing::error!(event = "reload_refused", error = %message, "{message}");
                self.notice(Notice::Status(message.clone()));
                self.status.last_failure = Some(message);
                false
            }
        };
        match then {
            AfterReload::Cycle => {
                if applied {
                    self.request_cycle(why);
                }
                if self.starting.is_none() {
                    // No cycle followed (nothing to cycle, or the reload was
                    // refused): the reload ends here.
                    self.notice(Notice::Ready(self.serving_status()));
                }
            }
            AfterReload::Settle => self.notice(Notice::Ready(self.serving_status())),
            AfterReload::Restart => {
                self.notice(Notice::Ready(self.serving_status()));
                self.schedule_restart();
            }
        }
    }

    /// Closes the socket sets replaced by a reload once no worker started
    /// with them is left.
    fn release_retired_sockets(&mut self) {
        let workers = &self.workers;
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(_, ids)| !ids.iter().any(|id| workers.contains_key(id)));
        self.retired = kept;
        for (generation, _) in gone {
            self.out.push(Action::CloseSockets(generation));
        }
    }
}

/// The control socket's requests.
impl Core {
    fn reply(&mut self, to: Token, answer: Value) {
        self.out.push(Action::Reply(to, answer));
    }

    fn on_control(&mut self, request: Request, reply: Token, disk: Disk) {
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

    fn restart(&mut self, reply: Token) {
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

    fn rollback(&mut self, reply: Token, disk: Disk) {
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
                Some(previous) if self.current.as_ref().is_some_and(|c| c.id == previous.id) => {
                    refused(format!("previous and current both name {}", previous.id))
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

    fn upgrade(&mut self, force: bool, reply: Token) {
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
    fn worker_ready(&mut self, id: u64, status: &str) {
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
    fn start_ended_badly(&mut self, failure: &str) {
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
    fn rolled_back(&mut self, to: Meta, result: Result<Option<String>, crate::release::Error>) {
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
    fn held_cleared(&mut self, result: Result<(), crate::release::Error>) {
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
    fn on_check(&mut self, report: update::CheckReport) {
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
        *self
            .status
            .checks
            .entry(report.outcome.to_owned())
            .or_default() += 1;
        self.last_check = Some(report);
    }

    /// The answer to `status`.
    fn status_reply(&self, disk: Disk) -> reply::Status {
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
                    release: w.release.clone(),
                    state: state.to_owned(),
                    ready_for_secs: since.map(|s| self.now.saturating_duration_since(s).as_secs()),
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
    fn releases_reply(&self, disk: Disk) -> Result<reply::Releases, &'static str> {
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

/// Re-executing the master (`baton reexec`, a library master's own
/// upgrade): when it may happen, and what crosses.
impl Core {
    /// `reexec` was asked for: check the binary, then re-exec once nothing
    /// is half-done.
    fn reexec_requested(&mut self, binary: Option<PathBuf>, reply: Token) {
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

    fn pending_reexec(&self, binary: PathBuf, reply: Option<Token>) -> Reexec {
        Reexec {
            binary,
            reply,
            asked_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            checked: false,
            waiting: None,
            deadline: self.now + REEXEC_WAIT_LIMIT,
        }
    }

    /// The checks of the new binary ended.
    fn on_reexec_checked(&mut self, checked: super::reexec::Checked) {
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
    fn reexec_self(&mut self, version: Option<String>) {
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
    fn reexec_if_ready(&mut self) {
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
                     it runs on as it was, ask again",
                    REEXEC_WAIT_LIMIT.as_secs()
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
            asked_at_ms: pending.asked_at_ms,
            carry: Box::new(carry),
        });
    }

    /// Why a re-exec must wait, if it must.
    fn busy_with(&self) -> Option<String> {
        if let Some(s) = &self.starting {
            return Some(format!("worker {} is starting", s.id));
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
    fn carry(&self) -> Carry {
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
                    State::Draining { deadline } => CarriedState::Draining {
                        left_ms: deadline.saturating_duration_since(now).as_millis() as u64,
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
    fn resume(&mut self, carry: Carry, tails: Vec<Tail>, reply: Option<Token>, took_ms: u64) {
        let now = self.now;
        let mut adopted = Vec::new();
        for (w, tail) in carry.workers.into_iter().zip(tails) {
            let state = match w.state {
                CarriedState::Serving { for_ms } => State::Serving {
                    since: now
                        .checked_sub(Duration::from_millis(for_ms))
                        .unwrap_or(now),
                },
                CarriedState::Draining { left_ms } => State::Draining {
                    deadline: now + Duration::from_millis(left_ms),
                },
                CarriedState::Killed => State::Killed,
            };
            adopted.push(w.pid);
            self.workers.insert(
                w.id,
                Worker {
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
    fn resume_core(&mut self, workers: Vec<(u64, u32, Tail)>, reply: Option<Token>, why: &str) {
        tracing::warn!(
            event = "reexec_fallback",
            "cannot read the state of the master before the re-exec ({why}): keeping its \
             sockets, starting a fresh worker and draining the old ones once it is ready"
        );
        let newest = workers.iter().map(|w| w.0).max();
        let mut adopted = Vec::new();
        for (id, pid, tail) in workers {
            adopted.push(pid);
            self.workers.insert(
                id,
                Worker {
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

    fn reexec_done(
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
            "version": env!("CARGO_PKG_VERSION"),
            "workers": adopted,
            "took_ms": took_ms,
        });
        if let Some(why) = fallback {
            answer["fallback"] = why.into();
        }
        self.reply(to, answer);
    }
}

/// Whether a reloaded config changes what only a restart can apply: the
/// releases directory's place, binary or `keep`, adding or removing
/// `[releases]`, adding `[fetch]` where there was no releases directory,
/// and, in in-place mode, `program.command`.
pub(crate) fn restart_needed(
    releases: Option<&Releases>,
    has_store: bool,
    command: &std::path::Path,
    new: &crate::config::Config,
) -> Result<(), String> {
    let restart = |what: String| Err(format!("{what}: a restart is needed to apply it"));
    match (releases, &new.releases) {
        (Some(old), Some(new)) if old.dir != new.dir => {
            return restart(format!(
                "releases.dir changed from {} to {}",
                old.dir.display(),
                new.dir.display()
            ))
        }
        (Some(old), Some(new)) if old.keep != new.keep => {
            return restart(format!(
                "releases.keep changed from {} to {}",
                old.keep, new.keep
            ))
        }
        (Some(old), Some(new)) if old.binary != new.binary => {
            return restart(format!(
                "releases.binary changed from {:?} to {:?}",
                old.binary, new.binary
            ))
        }
        (Some(_), None) => return restart("the [releases] section was removed".to_owned()),
        (None, Some(_)) => return restart("a [releases] section was added".to_owned()),
        _ => {}
    }
    if !has_store && new.fetch.is_some() {
        return restart("a [fetch] section was added".to_owned());
    }
    if releases.is_none() && has_store && new.program.command != command {
        return restart(format!(
            "program.command changed from {} in in-place mode",
            command.display()
        ));
    }
    Ok(())
}

fn failure_report(what: &str, worker: &Worker) -> String {
    let tail = worker.tail.lines();
    if tail.is_empty() {
        format!("{what} (no stderr output)")
    } else {
        format!("{what}; last stderr lines:\n  {}", tail.join("\n  "))
    }
}

fn ok(mut fields: Value) -> Value {
    fields["ok"] = true.into();
    fields
}

/// A typed answer on the wire: its fields with `"ok": true`.
fn ok_typed(answer: &impl serde::Serialize) -> Value {
    ok(serde_json::to_value(answer).expect("replies serialize"))
}
