//! The master: holds the sockets and a stable PID, runs workers, and drives
//! graceful cycles. One `select!` loop owns all state; worker processes report
//! through a channel, signals through tokio's buffered signal streams (a
//! signal is never lost; repeats of one signal while it is pending coalesce).

mod accept;
pub(crate) mod control;
mod health;
pub(crate) mod metrics;
mod notify;
mod operate;
mod ready;
mod reexec;
mod reload;
mod store_io;
mod trial;
mod update;
mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use std::sync::Arc;

use crate::child_env::ChildEnv;
use crate::config::{Config, HealthCheck, Program, Ready};
use crate::protocol::describe_exit;
use crate::release::{Meta, Store};
use notify::{NotifyServer, Supervisor};
use store_io::{Done, Job, StoreIo};
use trial::{Interrupted, Trials, Verdict};
use worker::{Exit, State, Worker};

use crate::sockets::Sockets;
/// The first wait before restarting a crashed worker; it doubles per crash.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// A worker that served this long before crashing resets the backoff.
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(10);
/// How long a new release's worker must stay ready before it is promoted,
/// where the config does not say (in-place mode, library mode).
const SETTLE_DEFAULT: Duration = Duration::from_secs(10);
/// The wait before retrying a promotion whose store write failed.
const PROMOTE_RETRY: Duration = Duration::from_secs(1);

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
    /// The program's command does not run a release through `current`, so
    /// a new release could not be tried from its own directory.
    #[error(
        "program.command {} does not run through {}/current/, so a new release cannot be \
         tried from its own directory",
        .command.display(),
        .releases.display()
    )]
    Command {
        /// The command.
        command: std::path::PathBuf,
        /// The releases directory.
        releases: std::path::PathBuf,
    },
    /// The control socket could not be bound.
    #[error("cannot serve the control socket {}", .path.display())]
    Control {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// What a previous master handed over across its `execve` (`baton
    /// reexec`) could not be taken over.
    #[error("cannot take over from the master before the re-exec: {0}")]
    Reexec(String),
    /// The thread that writes the releases directory could not start.
    #[error("cannot start the releases directory's writer thread")]
    StoreThread(#[source] std::io::Error),
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

impl From<crate::sockets::Error> for Error {
    fn from(e: crate::sockets::Error) -> Error {
        match e {
            crate::sockets::Error::Bind { addr, source } => Error::Bind { addr, source },
            crate::sockets::Error::Adopt(e) => Error::Adopt(e),
            crate::sockets::Error::Descriptors(e) => Error::Descriptors(e),
        }
    }
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

struct Starting {
    id: u64,
    reason: Reason,
    deadline: Instant,
    /// For `delay:` readiness: when it counts as ready.
    ready_at: Option<Instant>,
    /// For `http:` readiness: the polling task.
    checker: Option<tokio::task::JoinHandle<()>>,
}

/// What the master knows about itself, for logs and `STATUS=`.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Status {
    cycles: u64,
    crash_restarts: u64,
    promotions: u64,
    failed_trials: u64,
    rollbacks: u64,
    /// Re-executions of the master's binary (`baton reexec`).
    #[serde(default)]
    reexecs: u64,
    /// Checks of the source by outcome.
    checks: BTreeMap<String, u64>,
    last_failure: Option<String>,
}

/// Runs the master until SIGTERM/SIGINT. Binds (or adopts) the sockets first;
/// an error there is returned before any worker is spawned. With `[fetch]`,
/// new releases are fetched, tried and promoted. SIGHUP/SIGUSR2 cycle the
/// worker with this same config.
pub async fn run(config: Config) -> Result<Stopped, Error> {
    run_inner(config, None, false).await
}

/// As [`run`], for a library master whose workers are this same
/// executable: with `reexec_on_upgrade`, once a new build of it is promoted
/// the master re-executes into it too (same PID, sockets and workers kept;
/// see `baton reexec`), so the master's own code is upgraded as well.
pub async fn run_library(config: Config, reexec_on_upgrade: bool) -> Result<Stopped, Error> {
    run_inner(config, None, reexec_on_upgrade).await
}

/// As [`run`], for a config read from `path`: SIGHUP/SIGUSR2 re-read it,
/// apply it if it is valid (keeping the running one if not), then cycle.
pub async fn run_with_reload(config: Config, path: PathBuf) -> Result<Stopped, Error> {
    run_inner(config, Some(path), false).await
}

async fn run_inner(
    config: Config,
    config_path: Option<PathBuf>,
    self_upgrade: bool,
) -> Result<Stopped, Error> {
    let Config {
        program,
        releases,
        fetch,
        verify,
        control,
        hooks,
    } = config;
    match crate::sys::raise_nofile() {
        Ok((before, now)) if before < now => {
            tracing::info!("open-file limit raised from {before} to {now} (workers keep {before})")
        }
        Ok((_, now)) => tracing::info!("open-file limit {now}"),
        Err(e) => tracing::warn!("cannot read or raise the open-file limit: {e}"),
    }
    // Signal streams first: from here on no signal is lost. A master
    // started by its predecessor's `execve` had them blocked across it.
    let mut sig = Signals::install().map_err(Error::Signals)?;
    if let Err(e) = crate::sys::block_master_signals(false) {
        tracing::warn!("cannot unblock the master's signals: {e}");
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("baton"));
    // What a previous master handed over across its `execve`, if this is
    // one; its workers are claimed before the reaper could take them.
    let mut inherited = reexec::take().map_err(Error::Reexec)?;
    let mut taker = reexec::Taker::default();
    let claimed = match &inherited {
        Some(reexec::Inherited::Full(doc)) => doc.claim_workers(),
        Some(reexec::Inherited::Core(core, _)) => core.claim_workers(),
        None => Vec::new(),
    };
    let _reaper = crate::reaper::start();
    let sockets = match &mut inherited {
        Some(reexec::Inherited::Full(doc)) => doc.sockets(&mut taker).map_err(Error::Reexec)?,
        Some(reexec::Inherited::Core(core, _)) => {
            core.sockets(&mut taker).map_err(Error::Reexec)?
        }
        None => Sockets::open(&program.listen)?,
    };
    crate::sys::cloexec_inherited_fds().map_err(Error::Descriptors)?;
    for held in sockets.iter() {
        tracing::info!(event = "listening", name = %held.name, "listening on {}", held.describe);
    }
    warn_http_ready(&program);
    let notify = match &inherited {
        Some(reexec::Inherited::Full(doc)) => {
            let (fd, path) = doc.notify(&mut taker).map_err(Error::Reexec)?;
            NotifyServer::resume(fd, path).map_err(Error::Notify)?
        }
        _ => NotifyServer::bind().map_err(Error::Notify)?,
    };
    let resuming_trial = match &inherited {
        Some(reexec::Inherited::Full(doc)) => doc.trial_id().map(str::to_owned),
        _ => None,
    };
    let child_env = ChildEnv::new(&program, fetch.as_ref());
    let settle = releases.as_ref().map_or(SETTLE_DEFAULT, |r| r.settle);
    let checker = checker(releases.as_ref(), &sockets, &child_env, &program);
    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let store = match (&releases, &fetch) {
        (None, None) => None,
        (releases, _) => Some(open_store(
            releases.as_ref(),
            &program,
            resuming_trial.as_deref(),
        )?),
    };
    let (store_io, mut store_done) = match &store {
        Some((store, _, _)) => {
            let (io, done) = StoreIo::start(store.clone()).map_err(Error::StoreThread)?;
            (Some(io), Some(done))
        }
        None => (None, None),
    };
    let (installed_tx, mut installed) = mpsc::unbounded_channel();
    let first_fetcher = match (&store, &fetch) {
        (Some(_), Some(fetch)) => {
            Some(crate::fetchers::from_config(fetch, &verify).map_err(Error::Fetcher)?)
        }
        _ => None,
    };
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let (inherited_control, inherited_metrics) = match &inherited {
        Some(reexec::Inherited::Full(doc)) => (
            doc.control(&mut taker).map_err(Error::Reexec)?,
            doc.metrics(&mut taker).map_err(Error::Reexec)?,
        ),
        _ => (None, None),
    };
    let mut metrics_fd = None;
    let metrics_task = match control.metrics {
        Some(addr) => {
            let listener = match inherited_metrics {
                Some(fd) => {
                    let std = std::net::TcpListener::from(fd);
                    std.set_nonblocking(true)
                        .and_then(|()| tokio::net::TcpListener::from_std(std))
                }
                None => tokio::net::TcpListener::bind(addr).await,
            }
            .map_err(|source| Error::Metrics { addr, source })?;
            metrics_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&listener));
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!("serving metrics on {bound} at /metrics");
            Some(metrics::serve(listener, control_tx.clone()))
        }
        None => None,
    };
    let control_server = match (&control.socket, inherited_control) {
        (_, Some((fd, path))) => Some(
            control::Server::resume(fd, path.clone(), control_tx)
                .map_err(|source| Error::Control { path, source })?,
        ),
        (Some(path), None) => {
            let server = control::serve(path, control_tx).map_err(|source| Error::Control {
                path: path.clone(),
                source,
            })?;
            tracing::info!("control socket at {}", path.display());
            Some(server)
        }
        (None, None) => None,
    };
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let (reexec_tx, mut reexec_rx) = mpsc::unbounded_channel();
    let waiting_for_release = first_fetcher.is_some()
        && store
            .as_ref()
            .is_some_and(|(s, _, _)| s.current().is_none());
    let (store, _lock, found) = match store {
        Some((store, lock, found)) => (Some(store), Some(lock), found),
        None => (None, None, Found::default()),
    };
    let mut m = Master {
        program,
        releases,
        fetch,
        verify,
        hooks,
        config_path,
        sockets,
        retired: Vec::new(),
        notify_path: notify.path().to_owned(),
        notify_fd: notify.raw_fd(),
        control_carry: control_server.as_ref().map(control::Server::carry),
        metrics_fd,
        exe,
        reexec: None,
        reexec_tx,
        self_upgrade,
        store_pending: 0,
        child_env,
        supervisor: Supervisor::from_env(),
        exits: exits_tx,
        ready_tx,
        next_id: 1,
        workers: BTreeMap::new(),
        releases_of: BTreeMap::new(),
        active: None,
        starting: None,
        cycle_pending: false,
        reload_pending: false,
        restarts_in_a_row: 0,
        restart_at: None,
        stopping: None,
        status: Status::default(),
        store,
        store_io,
        updater: None,
        installed_tx,
        check_now: Arc::new(tokio::sync::Notify::new()),
        reports_tx,
        started: Instant::now(),
        last_check: None,
        waiters: operate::Waiters::default(),
        rolling_back: None,
        trials: Trials::new(settle, checker.as_ref().map(|c| c.health.failures)),
        checker,
        health_tx,
        health_task: None,
        health_failed: 0,
        trial_done: None,
        promoting: None,
        promote_retry_at: None,
        queued_install: None,
        waiting_for_release,
        trial_retry_at: None,
        stranded: found.stranded,
    };
    let resumed = match inherited {
        Some(reexec::Inherited::Full(doc)) => {
            m.resume(*doc, claimed, &mut taker);
            true
        }
        Some(reexec::Inherited::Core(core, why)) => {
            m.resume_core(core, claimed, why, &mut taker);
            false
        }
        None => false,
    };
    if let Some((release, attempt, after)) = found.retry {
        // Begun again once its record counts the attempt, after the wait;
        // its worker is the first to start.
        if m.trials.begin_attempt(release, attempt).is_ok() {
            m.waiting_for_release = true;
            m.trial_retry_at = Some(Instant::now() + after);
        }
    }
    if let Some(fetcher) = first_fetcher {
        // A resumed trial holds the update loop back until it ends.
        let gate = m.trials.on_trial().is_some().then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            m.trial_done = Some(tx);
            rx
        });
        m.start_updater(fetcher, gate);
    }
    if resumed && !m.workers.is_empty() {
        // The adopted workers serve on.
    } else if m.trial_retry_at.is_some() {
        // The interrupted first trial starts the first worker.
    } else if m.stranded.is_some() {
        // Said loudly at start-up; `baton status` and metrics say it too.
    } else if waiting_for_release {
        tracing::info!("no release is installed yet; waiting for the first one");
    } else {
        m.start_worker(Reason::Start);
    }
    let stopped = loop {
        let timer = m.next_deadline();
        tokio::select! {
            _ = sig.hup.recv() => m.reload("SIGHUP"),
            _ = sig.usr2.recv() => m.reload("SIGUSR2"),
            _ = sig.usr1.recv() => {
                if m.updater.is_some() {
                    m.check_now.notify_one();
                } else {
                    tracing::info!("SIGUSR1: no fetcher is configured, nothing to check");
                }
            }
            _ = sig.term.recv() => m.stop("SIGTERM"),
            _ = sig.int.recv() => m.stop("SIGINT"),
            Some(Exit::Exited { id, status }) = exits.recv() => m.on_exit(id, status),
            Some(id) = ready_rx.recv() => m.on_ready(id, "its health check answered"),
            Some(new) = installed.recv() => m.on_installed(new),
            Some(done) = recv_opt(&mut store_done) => m.on_store(done),
            Some(report) = health_rx.recv() => m.on_health(report),
            Some(incoming) = control_rx.recv() => m.on_control(incoming),
            Some(report) = reports.recv() => m.on_check(report),
            Some(checked) = reexec_rx.recv() => m.on_reexec_checked(checked),
            msg = notify.recv() => match msg {
                Ok(msg) => m.on_notify(msg),
                Err(e) => tracing::warn!("cannot read the notify socket: {e}"),
            },
            _ = sleep_until(timer.unwrap_or_else(far_future).into()), if timer.is_some() => m.on_timer(),
        }
        m.update_health();
        m.release_retired_sockets();
        m.reexec_if_ready();
        if let Some(how) = m.stopping {
            if m.workers.is_empty() {
                tracing::info!(event = "stopped", "all workers have exited; master exiting");
                break how;
            }
        }
    };
    if let Some(u) = m.updater.take() {
        u.abort();
    }
    if let Some(io) = m.store_io.take() {
        io.finish();
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    Ok(stopped)
}

fn warn_http_ready(program: &Program) {
    if let Ready::Http(path) = &program.ready {
        tracing::warn!(
            "ready = \"http:{path}\": during a cycle the old worker shares the socket and may \
             answer the health check for the new one; prefer ready = \"notify\""
        );
    }
}

/// The release health checker the config asks for.
fn checker(
    releases: Option<&crate::config::Releases>,
    sockets: &Sockets,
    child_env: &ChildEnv,
    program: &Program,
) -> Option<health::Checker> {
    let health = releases?.health.clone()?;
    Some(health::Checker {
        addr: match &health.check {
            HealthCheck::Http {
                socket: Some(name), ..
            } => sockets.tcp_named(name),
            HealthCheck::Http { socket: None, .. } => sockets.first_tcp(),
            HealthCheck::Exec { .. } => None,
        }
        .map(health::reachable),
        env: child_env.vars().to_vec(),
        workdir: program.workdir.clone(),
        health,
    })
}

/// What start-up found in the releases directory besides the store.
#[derive(Default)]
struct Found {
    /// A first release whose trial the previous master's death
    /// interrupted: begun again as attempt `.1` after `.2`.
    retry: Option<(Meta, u32, Duration)>,
    /// Why nothing can serve: the only release was quarantined.
    stranded: Option<String>,
}

/// Opens the releases directory (or the in-place state directory), takes
/// its lock for the master's lifetime, removes what an interrupted install
/// left, and settles a trial that a dead master never finished (the trial
/// state machine decides: [`trial::interrupted`]).
fn open_store(
    releases: Option<&crate::config::Releases>,
    program: &Program,
    resuming_trial: Option<&str>,
) -> Result<(Store, crate::release::Lock, Found), Error> {
    let store = match releases {
        Some(r) => Store::open(r),
        None => Store::in_place(&program.command),
    }
    .map_err(Error::Releases)?;
    if store.command_for(&program.command, "current").is_none() {
        return Err(Error::Command {
            command: program.command.clone(),
            releases: store.dir().to_owned(),
        });
    }
    let lock = store.lock().map_err(Error::Releases)?;
    for left in store.sweep().map_err(Error::Releases)? {
        tracing::info!("removed {} left by an interrupted install", left.display());
    }
    let mut found = Found::default();
    let limit = releases.map_or(crate::config::TRIAL_ATTEMPTS_DEFAULT, |r| r.trial_attempts);
    if let Some(trial) = store.trial() {
        if resuming_trial == Some(trial.id.as_str()) {
            tracing::info!("release {} stays on trial across the re-exec", trial.id);
            return Ok((store, lock, found));
        }
        let current = store.current();
        let promoted = current.as_ref().is_some_and(|c| c.id == trial.id);
        match trial::interrupted(trial.attempts, promoted, current.is_some(), limit) {
            Interrupted::Promoted => tracing::info!(
                "release {} had been promoted when the master stopped",
                trial.id
            ),
            Interrupted::Fail => {
                tracing::error!(
                    "release {} was on trial when the master stopped; counting its trial as \
                     failed: sha256 {} will not be installed again",
                    trial.id,
                    trial.sha256
                );
                if let Err(e) = store.mark_failed(&trial.sha256) {
                    // Serve `current` anyway; the record stays and is settled at
                    // the next start.
                    tracing::error!(
                        "cannot record release {} as failed: {}",
                        trial.id,
                        crate::errors::display_chain(&e)
                    );
                    return Ok((store, lock, found));
                }
            }
            Interrupted::Retry { attempt, after } => match store.release(&trial.id) {
                Some(meta) => {
                    tracing::warn!(
                        event = "trial_interrupted",
                        release = %trial.id,
                        "release {} was on trial when the master stopped (attempt {} of {limit}) \
                         and no other release is installed: trying it again in {}",
                        trial.id,
                        trial.attempts,
                        humantime::format_duration(after)
                    );
                    // The record stays: a master killed before the retry
                    // begins finds the same count.
                    found.retry = Some((meta, attempt, after));
                    return Ok((store, lock, found));
                }
                None => tracing::warn!(
                    "release {} was on trial when the master stopped, and its directory is \
                     gone; waiting for the source to offer it again",
                    trial.id
                ),
            },
            Interrupted::Quarantine { why } => {
                let text = format!(
                    "release {} is quarantined: {why}; nothing else is installed, so no worker \
                     serves; `baton upgrade --force` tries it again",
                    trial.id
                );
                tracing::error!(event = "release_quarantined", release = %trial.id, "{text}");
                if let Err(e) = store.quarantine(&trial.sha256) {
                    tracing::error!(
                        "cannot record release {} as quarantined: {}",
                        trial.id,
                        crate::errors::display_chain(&e)
                    );
                    return Ok((store, lock, found));
                }
                found.stranded = Some(text);
            }
        }
        if let Err(e) = store.end_trial() {
            tracing::error!(
                "cannot remove the trial record of release {}: {}",
                trial.id,
                crate::errors::display_chain(&e)
            );
        }
    }
    if found.stranded.is_none() && store.current().is_none() {
        let mut quarantined: Vec<String> = store.quarantined().into_iter().collect();
        quarantined.sort();
        if !quarantined.is_empty() {
            let text = format!(
                "sha256 {} is quarantined after interrupted trials; nothing else is installed, \
                 so no worker serves; `baton upgrade --force` tries it again",
                quarantined.join(", ")
            );
            tracing::error!(event = "release_quarantined", "{text}");
            found.stranded = Some(text);
        }
    }
    Ok((store, lock, found))
}

/// Receives from an optional channel; pending for ever without one.
async fn recv_opt<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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
    /// `[releases]`, `[fetch]` and `[verify]` as running (a reload replaces
    /// them).
    releases: Option<crate::config::Releases>,
    fetch: Option<crate::config::Fetch>,
    verify: crate::config::Verify,
    /// `[hooks]` as running (a reload replaces them).
    hooks: crate::config::Hooks,
    /// The config file, when there is one to reload.
    config_path: Option<PathBuf>,
    sockets: Sockets,
    /// Socket sets replaced by a reload, kept until the workers that were
    /// started with them (ids) have exited.
    retired: Vec<(Sockets, Vec<u64>)>,
    notify_path: std::path::PathBuf,
    /// The notify socket's descriptor, for `reexec`.
    notify_fd: std::os::fd::RawFd,
    /// The control socket's path and listener, for `reexec`.
    control_carry: Option<(PathBuf, std::os::fd::RawFd)>,
    /// The metrics listener, for `reexec`.
    metrics_fd: Option<std::os::fd::RawFd>,
    /// The binary this master runs (what `reexec` executes by default).
    exe: PathBuf,
    /// A re-exec asked for, until it happens or fails.
    reexec: Option<reexec::Pending>,
    reexec_tx: mpsc::UnboundedSender<reexec::Checked>,
    /// A library master re-executes into its own promoted executable.
    self_upgrade: bool,
    /// Writes to the releases directory not finished yet.
    store_pending: usize,
    /// What workers inherit besides the protocol's variables.
    child_env: ChildEnv,
    supervisor: Supervisor,
    exits: mpsc::UnboundedSender<Exit>,
    ready_tx: mpsc::UnboundedSender<u64>,
    next_id: u64,
    workers: BTreeMap<u64, Worker>,
    /// The release each worker runs, by worker id.
    releases_of: BTreeMap<u64, String>,
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
    store: Option<Store>,
    /// Writes to the releases directory, off the event loop.
    store_io: Option<StoreIo>,
    /// The update loop's supervisor task.
    updater: Option<tokio::task::JoinHandle<()>>,
    installed_tx: mpsc::UnboundedSender<update::Installed>,
    check_now: Arc<tokio::sync::Notify>,
    reports_tx: mpsc::UnboundedSender<update::CheckReport>,
    /// When the master started.
    started: Instant,
    /// The last check of the source.
    last_check: Option<update::CheckReport>,
    /// Control requests waiting for an outcome.
    waiters: operate::Waiters,
    /// `previous`, being cycled onto by a rollback.
    rolling_back: Option<Meta>,
    /// The trial of a new release: the policy.
    trials: Trials,
    /// Dropped when the trial ends: the update loop waits for it.
    trial_done: Option<tokio::sync::oneshot::Sender<()>>,
    /// A release that passed its trial, until `current` names it.
    promoting: Option<Meta>,
    /// When to retry a promotion whose store write failed.
    promote_retry_at: Option<Instant>,
    /// A release installed while another was on trial: tried next.
    queued_install: Option<update::Installed>,
    /// The release health check, when configured.
    checker: Option<health::Checker>,
    health_tx: mpsc::UnboundedSender<health::Report>,
    /// The running check: (worker id, task).
    health_task: Option<(u64, tokio::task::JoinHandle<()>)>,
    /// Checks of a promoted release failed in a row (reported only).
    health_failed: u32,
    /// No release is installed yet: the first worker waits for one.
    waiting_for_release: bool,
    /// When to record the next attempt at an interrupted first trial (the
    /// rollout holds the release meanwhile).
    trial_retry_at: Option<Instant>,
    /// Why no worker can serve, when the only release is quarantined.
    stranded: Option<String>,
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
            .chain([self.trials.deadline()])
            .chain([self.promote_retry_at])
            .chain([self.trial_retry_at])
            .chain([self.reexec.as_ref().and_then(|p| p.deadline())])
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
            tracing::info!(event = "cycle_started", "{why}: starting a graceful cycle");
            self.start_worker(Reason::Cycle);
        }
    }

    /// Starts a worker: of the release on trial while there is one, else
    /// of `current` (through the configured command).
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
        let trial = self.trials.runnable().cloned();
        // A release being promoted is run from its own directory until
        // `current` names it.
        let own_dir = trial
            .clone()
            .or_else(|| self.promoting.clone())
            .or_else(|| self.rolling_back.clone());
        let release = own_dir
            .clone()
            .or_else(|| self.store.as_ref().and_then(Store::current));
        let command = match (&own_dir, &self.store) {
            (Some(r), Some(store)) => store
                .command_for(&self.program.command, &r.id)
                .unwrap_or_else(|| self.program.command.clone()),
            _ => self.program.command.clone(),
        };
        let extra: Vec<(String, String)> = release
            .iter()
            .flat_map(|r| {
                [
                    (crate::protocol::BATON_RELEASE.to_owned(), r.id.clone()),
                    (crate::protocol::BATON_SHA256.to_owned(), r.sha256.clone()),
                ]
            })
            .collect();
        if let Err(e) = self.sockets.ensure_reserved() {
            tracing::warn!("cannot reserve the descriptors workers' sockets land on: {e}");
        }
        let worker = match Worker::spawn(
            id,
            &self.program,
            &command,
            &extra,
            &self.child_env,
            &self.sockets,
            &self.notify_path,
            self.exits.clone(),
        ) {
            Ok(w) => w,
            Err(e) => {
                let failure = format!("worker {id} failed to start: {e}");
                if let Some(v) = trial.and_then(|_| self.trials.fail(&failure)) {
                    self.verdict(v);
                }
                self.start_failed(reason, failure);
                return;
            }
        };
        match &trial {
            Some(t) => {
                self.trials.started(id);
                tracing::info!(
                    event = "worker_started",
                    worker = id,
                    pid = worker.pid,
                    release = %t.id,
                    "started worker ({reason:?}) on trial of release {}",
                    t.id
                );
            }
            None => tracing::info!(
                event = "worker_started",
                worker = id,
                pid = worker.pid,
                "started worker ({reason:?})"
            ),
        }
        if let Some(r) = release {
            self.releases_of.insert(id, r.id);
        }
        let now = Instant::now();
        let mut starting = Starting {
            id,
            reason,
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
        self.supervisor.ready(&status);
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
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        tracing::info!(
            event = "worker_draining",
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
        let release = self.releases_of.remove(&id);
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
            if let Some(v) = self.trials.exited(id, &failure) {
                self.verdict(v);
            }
            self.start_failed(starting.reason, failure);
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
            tracing::error!(event = "worker_died", worker = id, error = %failure, "{failure}");
            self.status.last_failure = Some(failure.clone());
            if served >= RESTART_BACKOFF_RESET {
                self.restarts_in_a_row = 0;
            }
            self.status.crash_restarts += 1;
            // A worker of the release on trial that dies fails the trial,
            // also one a restart during the trial was replacing.
            let verdict = self.trials.exited(id, &failure).or_else(|| {
                let ran_trial =
                    release.is_some() && self.trials.on_trial().map(|t| &t.id) == release.as_ref();
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
        self.supervisor.status(&failure);
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
                self.supervisor.ready(&format!(
                    "serving with worker {active} (pid {pid}); last cycle failed"
                ));
                if self.cycle_pending {
                    self.run_pending_cycle();
                }
            }
            _ if self.waiting_for_release => {}
            _ if self.trials.on_trial().is_none()
                && self.store.as_ref().is_some_and(|s| s.current().is_none()) =>
            {
                // The first release failed its trial: nothing to go back to.
                self.waiting_for_release = true;
                self.cycle_pending = false;
                self.apply_pending_reload();
                tracing::warn!("no release has proved itself yet; waiting for the next one");
            }
            _ => {
                self.cycle_pending = false;
                self.apply_pending_reload();
                self.schedule_restart();
            }
        }
    }

    /// Whether worker `id` runs a release that is neither on trial nor
    /// `current` (the trial it served failed): it must give way to `current`.
    fn runs_failed_release(&self, id: u64) -> bool {
        let Some(release) = self.releases_of.get(&id) else {
            return false;
        };
        let on_trial = self.trials.on_trial().is_some_and(|t| t.id == *release)
            || self.promoting.as_ref().is_some_and(|p| p.id == *release);
        let current = self
            .store
            .as_ref()
            .and_then(Store::current)
            .is_some_and(|c| c.id == *release);
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
                let back = self.store.as_ref().and_then(Store::current).map_or_else(
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
                self.supervisor
                    .status(&format!("release {} failed its trial", release.id));
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
                if let Some(w) = self.workers.get_mut(&id) {
                    tracing::warn!(
                        worker = id,
                        pid = w.pid,
                        "killing the starting worker of the failed release"
                    );
                    w.kill();
                }
            }
            return;
        }
        match self.active {
            Some(active) if self.runs_failed_release(active) => {
                self.request_cycle("back to current");
            }
            Some(_) => {}
            None if self.store.as_ref().and_then(Store::current).is_some() => {
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
        let Some(checker) = &self.checker else { return };
        let target = self.active.filter(|id| {
            let alone = self.workers.len() == 1
                && self
                    .workers
                    .get(id)
                    .is_some_and(|w| matches!(w.state, State::Serving { .. }));
            let wanted = self.trials.watches(*id)
                || (checker.health.after && self.trials.on_trial().is_none());
            alone && wanted && self.stopping.is_none()
        });
        if self.health_task.as_ref().map(|(w, _)| *w) == target {
            return;
        }
        if let Some((_, task)) = self.health_task.take() {
            task.abort();
        }
        let Some(id) = target else { return };
        let Some(worker) = self.workers.get(&id) else {
            return;
        };
        let release = self.releases_of.get(&id).map(|r| {
            let version = self
                .store
                .as_ref()
                .and_then(|s| s.release(r))
                .and_then(|m| m.version);
            (r.clone(), version)
        });
        let target = health::Target {
            worker: id,
            pid: worker.pid,
            release,
        };
        self.health_failed = 0;
        self.trials.checking(id, Instant::now());
        let task = health::spawn(checker.clone(), target, self.health_tx.clone());
        self.health_task = Some((id, task));
    }

    /// A health check ended: during a trial the policy decides; after
    /// promotion it is only reported.
    fn on_health(&mut self, (worker, result): health::Report) {
        if self.trials.watches(worker) {
            if let Err(why) = &result {
                tracing::warn!(event = "health_failed", worker, error = %why, "health check of the release on trial failed: {why}");
            }
            if let Some(v) = self.trials.health(worker, result, Instant::now()) {
                self.verdict(v);
            }
            return;
        }
        if self.health_task.as_ref().map(|(w, _)| *w) != Some(worker) {
            return;
        }
        let limit = self.checker.as_ref().map_or(1, |c| c.health.failures);
        let release = self
            .releases_of
            .get(&worker)
            .cloned()
            .unwrap_or_else(|| "the program".to_owned());
        match result {
            Ok(()) => {
                if self.health_failed >= limit {
                    tracing::info!(worker, "release {release} is healthy again");
                    self.supervisor
                        .status(&format!("serving release {release}"));
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
                    self.supervisor
                        .status(&format!("release {release} is unhealthy"));
                    self.status.last_failure = Some(report);
                }
            }
        }
    }

    fn store_job(&mut self, job: Job) {
        match &self.store_io {
            Some(io) => {
                self.store_pending += 1;
                io.send(job)
            }
            None => tracing::error!("no releases directory to record {job:?} in"),
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
                self.supervisor
                    .status(&format!("serving release {}", release.id));
                self.promoting = None;
                self.trial_over();
                self.post_hook(crate::hooks::Which::PostPromote, &release, before);
                if self.self_upgrade {
                    self.reexec_self(release.version.clone());
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
                self.promote_retry_at = Some(Instant::now() + PROMOTE_RETRY);
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

    /// A new release was installed: record its trial on disk, then (in
    /// `on_store`) start its worker.
    /// The trial ended and its records are written: the update loop goes
    /// on, and a release installed meanwhile is tried now.
    fn trial_over(&mut self) {
        self.trial_done = None;
        if let Some(next) = self.queued_install.take() {
            self.on_installed(next);
        }
    }

    fn on_installed(&mut self, new: update::Installed) {
        if self.stopping.is_some() {
            tracing::info!(
                "release {} installed while stopping; not tried",
                new.release.id
            );
            return;
        }
        match self.trials.begin(new.release.clone()) {
            Ok(()) => {
                tracing::info!(event = "trial_started", release = %new.release.id, "release {} installed; recording its trial", new.release.id);
                self.trial_done = Some(new.done);
                self.store_job(Job::BeginTrial(new.release, 1));
            }
            Err(release) => {
                tracing::info!(
                    "release {} installed while another trial runs; it waits for it to end",
                    release.id
                );
                if let Some(dropped) = self.queued_install.replace(new) {
                    tracing::info!(
                        "release {} no longer waits: a newer install replaces it",
                        dropped.release.id
                    );
                }
            }
        }
    }

    fn schedule_restart(&mut self) {
        let delay = crate::time::backoff(
            RESTART_BACKOFF_MIN,
            self.restarts_in_a_row,
            self.program.restart_backoff_max,
        );
        self.restarts_in_a_row = self.restarts_in_a_row.saturating_add(1);
        tracing::info!(
            event = "restart_scheduled",
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
                if let Some(v) = self.trials.exited(id, &failure) {
                    self.verdict(v);
                }
                self.start_failed(starting.reason, failure);
            }
        }
        for w in self.workers.values_mut() {
            if let State::Draining { deadline } = w.state {
                if deadline <= now {
                    tracing::warn!(
                        event = "worker_killed",
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
        tracing::info!(event = "stopping", "{why}: stopping all workers gracefully");
        self.stopping = Some(Stopped::Graceful);
        if let Some(release) = self.trials.on_trial().cloned() {
            // No verdict: the release is tried again at the next start.
            tracing::info!("the trial of release {} ends unfinished", release.id);
            self.trials.fail("the master is stopping");
            self.store_job(Job::Abandon(release));
        }
        self.supervisor.stopping();
        self.cycle_pending = false;
        self.reload_pending = false;
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
