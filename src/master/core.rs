//! The master's state and every decision it makes, apart from I/O: the
//! driver feeds [`Event`]s with the current `Instant` to [`Core::handle`]
//! and carries out the [`Action`]s it returns; [`Core::deadline`] says
//! when to come back with [`Event::Timer`]. Nothing here spawns, signals,
//! writes or reads a clock (a worker's stderr tail is shared data the
//! driver's tasks fill), so every decision (cycle, crash restart and
//! back-off, trial verdict, promotion, rollback, reload, re-exec, stop) is
//! unit-tested under a fake clock (see `core/tests.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::control::refuse;
use super::event::{
    Action, Adopted, AfterReload, Boot, Disk, Event, Notice, Recorded, Reloaded, Sig, Token,
};
use super::notify;
use super::reexec::{CarriedState, CarriedWorker};
use super::store_io::{Done, Job};
use super::trial::{self, Trials, Verdict};
use super::update;
use super::worker::Tail;
use super::Stopped;
use crate::config::{Program, Ready, Releases};
use crate::control::{reply, Request};
use crate::fleet::{Note, Outcome, Stage};
use crate::protocol::describe_exit;
use crate::release::{Meta, TrialContext};

mod control;
mod reexec;
mod release;
use release::{same_version, version_of};
mod reload;
#[cfg(test)]
mod tests;

pub(crate) use reload::restart_needed;

/// The first wait before restarting a crashed worker; it doubles per crash.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// A worker that served this long before crashing resets the backoff.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(10);
/// How long a new release's worker must stay ready before it is promoted,
/// where the config does not say (in-place mode, library mode).
const SETTLE_DEFAULT: Duration = Duration::from_secs(10);
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
        /// When it was asked to drain.
        since: Instant,
    },
    /// Killed by the master (failed start or drain deadline); awaiting reap.
    Killed,
}

/// A worker as the core sees it.
#[derive(Debug, Clone)]
struct WorkerView {
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
    /// Trial events by version and outcome (`baton_trials_total`).
    #[serde(default)]
    pub trials: BTreeMap<String, BTreeMap<String, u64>>,
    /// Failed trials by version and stage (`baton_trial_failures_total`).
    #[serde(default)]
    pub trial_failures: BTreeMap<String, BTreeMap<String, u64>>,
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
    asked: Instant,
    /// The new binary passed its checks.
    checked: bool,
    /// What it is waiting for, once logged.
    waiting: Option<String>,
    /// When waiting for the master to be idle gives up.
    deadline: Instant,
    /// A new build of baton from `[self]`: a self-upgrade.
    upgrade: Option<Box<crate::master::self_update::Ready>>,
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
    workers: BTreeMap<u64, WorkerView>,
    /// The worker that serves.
    active: Option<u64>,
    /// The worker being started, at most one at a time.
    starting: Option<Starting>,
    /// A cycle was asked for while one ran: run one more after it.
    cycle_pending: bool,
    /// That cycle re-reads the config first.
    reload_pending: bool,
    /// A reload was asked of the driver and its outcome has not come.
    reloading: bool,
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
    /// The release on trial (by id) and the version it replaces, for its
    /// reports.
    trial_from: Option<(String, Option<String>)>,
    /// A release that passed its trial, until `current` names it.
    promoting: Option<Meta>,
    /// When to retry a promotion whose store write failed.
    promote_retry_at: Option<Instant>,
    /// A release installed while another was on trial: tried next.
    queued_install: Option<(Meta, Option<String>, Token)>,
    /// The release on trial that leaves a yanked version, and that version:
    /// reported `yanked` once it is promoted.
    leaving: Option<(String, String)>,
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
            reloading: false,
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
            trial_from: None,
            promoting: None,
            promote_retry_at: None,
            queued_install: None,
            leaving: None,
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
            Event::Installed {
                release,
                leaves,
                hold,
            } => self.on_installed(release, leaves, hold),
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
            Event::SelfReady(up) => self.self_ready(*up),
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
            State::Draining { deadline, .. } => Some(deadline),
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
                newest,
                reply,
                why,
            }) => {
                self.resume_core(workers, newest, reply, &why);
                false
            }
            None => false,
        };
        if let Some((release, attempt, after)) = boot.retry {
            // Begun again once its record counts the attempt, after the
            // wait; with nothing else to serve (no `current`, or a yanked
            // one that serves meanwhile) its worker is the first to start.
            if self.trials.begin_attempt(release, attempt).is_ok() {
                self.waiting_for_release = self.current.is_none();
                self.trial_retry_at = Some(self.now + after);
            }
        }
        self.recorded(boot.recorded);
        if resumed && !self.workers.is_empty() {
            // The adopted workers serve on.
        } else if self.trial_retry_at.is_some() && self.current.is_none() {
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
            WorkerView {
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
            if let Some(v) = self.trials.fail(&failure, Stage::Start) {
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
        let status = self.serving_status();
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
        w.state = State::Draining {
            deadline,
            since: self.now,
        };
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
            if let Some(v) = self.trials.exited(id, &failure, Stage::Start) {
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
            let verdict = self.trials.exited(id, &failure, Stage::Settle).or_else(|| {
                let ran_trial = worker.release.is_some()
                    && self.trials.on_trial().map(|t| &t.id) == worker.release.as_ref();
                if ran_trial {
                    self.trials.fail(&failure, Stage::Settle)
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
            if let Some(v) =
                self.trials
                    .exited(id, &format!("worker {id} exited: {how}"), Stage::Settle)
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
                let context = self.trial_context(&release, attempt);
                self.store_job(Job::BeginTrial(release, context));
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
                if let Some(v) = self.trials.exited(id, &failure, Stage::Ready) {
                    self.verdict(v);
                }
                self.start_failed(starting.reason, failure);
            }
        }
        let overdue: Vec<u64> = self
            .workers
            .values()
            .filter(|w| matches!(w.state, State::Draining { deadline, .. } if deadline <= now))
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
            self.trials.fail("the master is stopping", Stage::Settle);
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

/// What a failure report says before the stderr lines it quotes.
const STDERR_MARK: &str = "; last stderr lines:\n";
/// What it says when there are none.
const NO_STDERR: &str = " (no stderr output)";

fn failure_report(what: &str, worker: &WorkerView) -> String {
    let tail = worker.tail.lines();
    if tail.is_empty() {
        format!("{what}{NO_STDERR}")
    } else {
        format!("{what}{STDERR_MARK}  {}", tail.join("\n  "))
    }
}
