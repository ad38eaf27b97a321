//! The master: holds the sockets and a stable PID, runs workers, and drives
//! graceful cycles. One `select!` loop owns all state; worker processes report
//! through a channel, signals through tokio's buffered signal streams (a
//! signal is never lost; repeats of one signal while it is pending coalesce).

mod notify;
mod ready;
mod sockets;
mod update;
mod worker;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use std::sync::Arc;

use crate::config::{Config, Program, Ready};
use crate::release::{Pipeline, Store};
use notify::{NotifyServer, Supervisor};
pub(crate) use worker::describe_exit;
use worker::{Exit, State, Worker};

pub(crate) use notify::send as sd_notify;
pub(crate) use sockets::Sockets;
/// The first wait before restarting a crashed worker; it doubles per crash.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// A worker that served this long before crashing resets the backoff.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(10);
/// A worker of a new release that dies within this time of becoming ready
/// rolls the release back.
const SETTLE: Duration = Duration::from_secs(10);

/// Why the master could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `listen` address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address as configured.
        addr: String,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// Sockets passed by systemd could not be adopted.
    #[error("cannot adopt the sockets passed by the supervisor")]
    Adopt(#[source] std::io::Error),
    /// The master's own descriptors could not be prepared.
    #[error("cannot prepare the master's file descriptors")]
    Descriptors(#[source] std::io::Error),
    /// The notify socket for workers could not be created.
    #[error("cannot create the notify socket for workers")]
    Notify(#[source] std::io::Error),
    /// The releases directory could not be prepared.
    #[error("cannot prepare the releases directory")]
    Releases(#[source] crate::release::Error),
    /// The fetcher could not be set up.
    #[error("cannot set up the fetcher")]
    Fetcher(#[source] crate::fetchers::Error),
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// How the master ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM/SIGINT: every worker drained and exited.
    Graceful,
    /// A second SIGTERM/SIGINT: workers were killed.
    Hard,
}

/// Why a worker is being started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// The first worker, or a restart after a crash: nothing else serves.
    Start,
    /// A graceful cycle: the active worker keeps serving until this one is ready.
    Cycle,
}

/// A release being rolled out, and where to roll back. The update loop
/// waits until this is dropped (the release settled or was rolled back), so
/// `current` has one writer at a time.
#[derive(Debug)]
struct Upgrade {
    release: crate::release::Meta,
    previous: Option<String>,
    _done: tokio::sync::oneshot::Sender<()>,
}

struct Starting {
    id: u64,
    reason: Reason,
    upgrade: Option<Upgrade>,
    deadline: Instant,
    /// For `delay:` readiness: when it counts as ready.
    ready_at: Option<Instant>,
    /// For `http:` readiness: the polling task.
    checker: Option<tokio::task::JoinHandle<()>>,
}

/// What the master knows about itself, for logs and `STATUS=`.
#[derive(Debug, Default)]
struct Status {
    cycles: u64,
    last_failure: Option<String>,
}

/// Runs the master until SIGTERM/SIGINT. Binds (or adopts) the sockets first;
/// an error there is returned before any worker is spawned. With `[fetch]`,
/// new releases are fetched, installed and cycled onto.
pub async fn run(config: Config) -> Result<Stopped, Error> {
    let Config {
        program,
        releases,
        fetch,
        verify,
    } = config;
    // Signal streams first: from here on no signal is lost.
    let mut sig = Signals::install().map_err(Error::Signals)?;
    let sockets = Sockets::open(&program.listen)?;
    crate::sys::cloexec_inherited_fds().map_err(Error::Descriptors)?;
    for held in sockets.iter() {
        tracing::info!(name = %held.name, "listening on {}", held.describe);
    }
    if let Ready::Http(path) = &program.ready {
        tracing::warn!(
            "ready = \"http:{path}\": during a cycle the old worker shares the socket and may \
             answer the health check for the new one; prefer ready = \"notify\""
        );
    }
    let notify = NotifyServer::bind().map_err(Error::Notify)?;
    let store = match (&releases, &fetch) {
        (None, None) => None,
        (releases, _) => {
            let store = match releases {
                Some(r) => Store::open(r),
                None => Store::in_place(&program.command),
            }
            .map_err(Error::Releases)?;
            for left in store.sweep().map_err(Error::Releases)? {
                tracing::info!("removed {} left by an interrupted install", left.display());
            }
            Some(store)
        }
    };
    let (installed_tx, mut installed) = mpsc::unbounded_channel();
    let check_now = Arc::new(tokio::sync::Notify::new());
    let updater = match (&store, fetch) {
        (Some(store), Some(fetch)) => {
            let fetcher = crate::fetchers::from_config(&fetch, &verify).map_err(Error::Fetcher)?;
            let pipeline = Arc::new(Pipeline::new(store.clone(), verify));
            Some(tokio::spawn(update::run(
                fetch,
                fetcher,
                pipeline,
                installed_tx,
                check_now.clone(),
            )))
        }
        _ => None,
    };
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let waiting_for_release =
        updater.is_some() && store.as_ref().is_some_and(|s| s.current().is_none());
    let mut m = Master {
        program,
        sockets,
        notify_path: notify.path().to_owned(),
        supervisor: Supervisor::from_env(),
        exits: exits_tx,
        ready_tx,
        next_id: 1,
        workers: BTreeMap::new(),
        active: None,
        starting: None,
        cycle_pending: false,
        backoff: RESTART_BACKOFF_MIN,
        restart_at: None,
        stopping: None,
        status: Status::default(),
        store,
        pending_upgrade: None,
        settling: None,
        waiting_for_release,
    };
    if waiting_for_release {
        tracing::info!("no release is installed yet; waiting for the first one");
    } else {
        m.start_worker(Reason::Start);
    }
    let stopped = loop {
        let timer = m.next_deadline();
        tokio::select! {
            _ = sig.hup.recv() => m.request_cycle("SIGHUP"),
            _ = sig.usr2.recv() => m.request_cycle("SIGUSR2"),
            _ = sig.usr1.recv() => {
                if updater.is_some() {
                    check_now.notify_one();
                } else {
                    tracing::info!("SIGUSR1: no fetcher is configured, nothing to check");
                }
            }
            _ = sig.term.recv() => m.stop("SIGTERM"),
            _ = sig.int.recv() => m.stop("SIGINT"),
            Some(Exit::Exited { id, status }) = exits.recv() => m.on_exit(id, status),
            Some(id) = ready_rx.recv() => m.on_ready(id, "its health check answered"),
            Some(new) = installed.recv() => m.on_installed(new),
            msg = notify.recv() => match msg {
                Ok(msg) => m.on_notify(msg),
                Err(e) => tracing::warn!("cannot read the notify socket: {e}"),
            },
            _ = sleep_until(timer.unwrap_or_else(far_future).into()), if timer.is_some() => m.on_timer(),
        }
        if let Some(how) = m.stopping {
            if m.workers.is_empty() {
                tracing::info!("all workers have exited; master exiting");
                break how;
            }
        }
    };
    if let Some(u) = updater {
        u.abort();
    }
    Ok(stopped)
}
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

struct Master {
    program: Program,
    sockets: Sockets,
    notify_path: std::path::PathBuf,
    supervisor: Supervisor,
    exits: mpsc::UnboundedSender<Exit>,
    ready_tx: mpsc::UnboundedSender<u64>,
    next_id: u64,
    workers: BTreeMap<u64, Worker>,
    /// The worker that serves.
    active: Option<u64>,
    /// The worker being started, at most one at a time.
    starting: Option<Starting>,
    /// A cycle was asked for while one ran: run one more after it.
    cycle_pending: bool,
    backoff: Duration,
    restart_at: Option<Instant>,
    stopping: Option<Stopped>,
    status: Status,
    store: Option<Store>,
    /// An installed release waiting for its cycle.
    pending_upgrade: Option<Upgrade>,
    /// A release whose worker became ready recently: (upgrade, worker, ready at).
    settling: Option<(Upgrade, u64, Instant)>,
    /// No release is installed yet: the first worker waits for one.
    waiting_for_release: bool,
}

impl Master {
    fn next_deadline(&self) -> Option<Instant> {
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
            .chain([self.settling.as_ref().map(|(_, _, since)| *since + SETTLE)])
            .flatten()
            .min()
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
            tracing::info!("{why}: starting a graceful cycle");
            self.start_worker(Reason::Cycle);
        }
    }

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
            self.supervisor.reloading(&format!("starting worker {id}"));
        }
        let worker = match Worker::spawn(
            id,
            &self.program,
            &self.sockets,
            &self.notify_path,
            self.exits.clone(),
        ) {
            Ok(w) => w,
            Err(e) => {
                let failure = format!("worker {id} failed to start: {e}");
                let upgrade = self.pending_upgrade.take();
                self.start_failed(reason, failure, upgrade);
                return;
            }
        };
        tracing::info!(worker = id, pid = worker.pid, "started worker ({reason:?})");
        let now = Instant::now();
        let mut starting = Starting {
            id,
            reason,
            upgrade: self.pending_upgrade.take(),
            deadline: now + self.program.ready_timeout,
            ready_at: None,
            checker: None,
        };
        match &self.program.ready {
            Ready::Notify => {}
            Ready::Delay(d) => starting.ready_at = Some(now + *d),
            Ready::Http(path) => {
                if let Some(addr) = self.sockets.first_tcp() {
                    starting.checker = Some(ready::spawn_http_check(
                        id,
                        addr,
                        path.clone(),
                        self.ready_tx.clone(),
                    ));
                }
            }
        }
        self.workers.insert(id, worker);
        self.starting = Some(starting);
    }

    fn on_notify(&mut self, msg: notify::Message) {
        let Some(pid) = msg.pid else { return };
        let Some(id) = self.workers.values().find(|w| w.pid == pid).map(|w| w.id) else {
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
                "READY" if value == "1" && self.program.ready == Ready::Notify => {
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
        if let Some(checker) = starting.checker {
            checker.abort();
        }
        let now = Instant::now();
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.state = State::Serving { since: now };
        let pid = worker.pid;
        tracing::info!(worker = id, pid, "worker is ready: {how}");
        if let Some(upgrade) = starting.upgrade {
            tracing::info!(worker = id, "now serving release {}", upgrade.release.id);
            // With something to roll back to, watch it for a while; the
            // update loop waits meanwhile.
            if upgrade.previous.is_some() {
                self.settling = Some((upgrade, id, now));
            }
        }
        if let Some(old) = self.active.replace(id) {
            self.status.cycles += 1;
            self.drain(old);
        }
        let status = format!("serving with worker {id} (pid {pid})");
        self.supervisor.ready(&status);
        if self.cycle_pending {
            self.cycle_pending = false;
            self.request_cycle("coalesced request");
        }
    }

    fn drain(&mut self, id: u64) {
        if self.settling.as_ref().is_some_and(|(_, w, _)| *w == id) {
            // Replaced by a later cycle: its release served, it settled.
            self.settling = None;
        }
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        tracing::info!(
            worker = id,
            pid = w.pid,
            "asking worker to drain with {}",
            self.program.stop_signal
        );
        w.signal(self.program.stop_signal.0);
        w.state = State::Draining {
            deadline: Instant::now() + self.program.drain_timeout,
        };
    }

    fn on_exit(&mut self, id: u64, status: std::process::ExitStatus) {
        let Some(worker) = self.workers.remove(&id) else {
            return;
        };
        let how = describe_exit(&status);
        if self.starting.as_ref().is_some_and(|s| s.id == id) {
            let starting = self.starting.take().expect("checked above");
            if let Some(c) = starting.checker {
                c.abort();
            }
            let failure = failure_report(
                &format!(
                    "new worker {id} (pid {}) exited before it was ready: {how}",
                    worker.pid
                ),
                &worker,
            );
            self.start_failed(starting.reason, failure, starting.upgrade);
        } else if self.active == Some(id) {
            self.active = None;
            let served = match worker.state {
                State::Serving { since } => since.elapsed(),
                _ => Duration::ZERO,
            };
            let failure = failure_report(
                &format!("worker {id} (pid {}) died: {how}", worker.pid),
                &worker,
            );
            tracing::error!("{failure}");
            self.status.last_failure = Some(failure);
            if served >= RESTART_BACKOFF_RESET {
                self.backoff = RESTART_BACKOFF_MIN;
            }
            if let Some((upgrade, _, since)) = self.settling.take_if(|(_, w, _)| *w == id) {
                if since.elapsed() < SETTLE {
                    self.roll_back(upgrade, "its worker died right after it became ready");
                }
            }
            if self.stopping.is_none() && self.starting.is_none() {
                self.schedule_restart();
            }
        } else {
            tracing::info!(worker = id, pid = worker.pid, "worker exited: {how}");
        }
    }

    /// A worker could not start or become ready. During a cycle the active
    /// worker keeps serving; otherwise a restart is scheduled.
    fn start_failed(&mut self, reason: Reason, failure: String, upgrade: Option<Upgrade>) {
        tracing::error!("{failure}");
        if let Some(upgrade) = upgrade {
            self.roll_back(upgrade, "its worker did not start");
        }
        self.status.last_failure = Some(failure.clone());
        self.supervisor.status(&failure);
        if self.stopping.is_some() {
            return;
        }
        match (reason, self.active) {
            (Reason::Cycle, Some(active)) => {
                tracing::warn!(
                    worker = active,
                    "cycle failed; the running worker keeps serving"
                );
                let pid = self.workers.get(&active).map_or(0, |w| w.pid);
                self.supervisor.ready(&format!(
                    "serving with worker {active} (pid {pid}); last cycle failed"
                ));
                if self.cycle_pending {
                    self.cycle_pending = false;
                    self.request_cycle("coalesced request");
                }
            }
            _ => {
                self.cycle_pending = false;
                self.schedule_restart();
            }
        }
    }

    /// A new release was installed: cycle onto it (or start the first worker).
    fn on_installed(&mut self, new: update::Installed) {
        let mut upgrade = Upgrade {
            release: new.release,
            previous: new.previous,
            _done: new.done,
        };
        if let Some(older) = self.pending_upgrade.take() {
            // Two installs before one cycle: roll back to what actually serves.
            upgrade.previous = older.previous;
        }
        let why = format!("release {} installed", upgrade.release.id);
        self.pending_upgrade = Some(upgrade);
        if self.waiting_for_release {
            self.waiting_for_release = false;
            self.restart_at = None;
            tracing::info!("{why}: starting the first worker");
            self.start_worker(Reason::Start);
        } else {
            self.request_cycle(&why);
        }
    }

    /// Points `current` back at the release that served before `upgrade` and
    /// records the failed bytes so they are not installed again.
    fn roll_back(&mut self, upgrade: Upgrade, why: &str) {
        let Some(store) = &self.store else { return };
        let id = &upgrade.release.id;
        if store.current().is_some_and(|c| c.id != *id) {
            tracing::error!(
                "release {id} failed: {why}; current no longer names it, so it stays as it is"
            );
            let _ = store.mark_failed(&upgrade.release.sha256);
            return;
        }
        match &upgrade.previous {
            Some(previous) => match store.rollback(previous) {
                Ok(()) => {
                    tracing::error!("release {id} failed: {why}; rolled current back to {previous}")
                }
                Err(e) => tracing::error!(
                    "release {id} failed: {why}; cannot roll back to {previous}: {}",
                    crate::display_chain(&e)
                ),
            },
            None => tracing::error!(
                "release {id} failed: {why}; there is no earlier release to roll back to"
            ),
        }
        match store.mark_failed(&upgrade.release.sha256) {
            Ok(()) => tracing::warn!(
                "sha256 {} is marked failed and will not be installed again",
                upgrade.release.sha256
            ),
            Err(e) => tracing::error!(
                "cannot record the failed release: {}",
                crate::display_chain(&e)
            ),
        }
        self.status.last_failure = Some(format!("release {id} failed: {why}"));
    }

    fn schedule_restart(&mut self) {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(self.program.restart_backoff_max);
        tracing::info!(
            "restarting the worker in {}",
            humantime::format_duration(delay)
        );
        self.restart_at = Some(Instant::now() + delay);
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            if self.starting.is_none() {
                self.start_worker(Reason::Start);
            }
        }
        if let Some((upgrade, _, _)) = self
            .settling
            .take_if(|(_, _, since)| *since + SETTLE <= now)
        {
            tracing::info!("release {} settled", upgrade.release.id);
        }
        if let Some(s) = &self.starting {
            let id = s.id;
            if s.ready_at.is_some_and(|t| t <= now) {
                self.on_ready(id, "its start delay passed");
            } else if s.deadline <= now {
                let starting = self.starting.take().expect("checked above");
                if let Some(c) = starting.checker {
                    c.abort();
                }
                let timeout = humantime::format_duration(self.program.ready_timeout);
                let failure = match self.workers.get_mut(&id) {
                    Some(w) => {
                        w.kill();
                        failure_report(
                            &format!("new worker {id} (pid {}) was not ready within {timeout}; killed it", w.pid),
                            w,
                        )
                    }
                    None => format!("new worker {id} was not ready within {timeout}"),
                };
                self.start_failed(starting.reason, failure, starting.upgrade);
            }
        }
        for w in self.workers.values_mut() {
            if let State::Draining { deadline } = w.state {
                if deadline <= now {
                    tracing::warn!(
                        worker = w.id,
                        pid = w.pid,
                        "worker did not exit within drain_timeout ({}); killing it",
                        humantime::format_duration(self.program.drain_timeout)
                    );
                    w.kill();
                }
            }
        }
    }

    fn stop(&mut self, why: &str) {
        if self.stopping.is_some() {
            tracing::warn!("{why} again: killing all workers");
            self.stopping = Some(Stopped::Hard);
            for w in self.workers.values_mut() {
                w.kill();
            }
            return;
        }
        tracing::info!("{why}: stopping all workers gracefully");
        self.stopping = Some(Stopped::Graceful);
        self.settling = None;
        self.pending_upgrade = None;
        self.supervisor.stopping();
        self.cycle_pending = false;
        self.restart_at = None;
        if let Some(s) = self.starting.take() {
            if let Some(c) = s.checker {
                c.abort();
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

fn failure_report(what: &str, worker: &Worker) -> String {
    let tail = worker.stderr_tail();
    if tail.is_empty() {
        format!("{what} (no stderr output)")
    } else {
        format!("{what}; last stderr lines:\n  {}", tail.join("\n  "))
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stopped::Graceful => "graceful",
            Stopped::Hard => "hard",
        })
    }
}
