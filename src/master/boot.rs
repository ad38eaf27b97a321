//! Start-up: fresh, socket-activated, or inherited across a re-exec. Binds
//! (or adopts, or takes back) the sockets, opens the releases directory and
//! settles what a dead master left there, starts the control, metrics and
//! notify sockets, the store thread and the update loop, adopts the workers
//! a previous master handed over, and returns the driver with the core's
//! first event.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use super::core::{Core, Fixed, Settings};
use super::driver::{Driver, Fds, Inbox, Outbox, Responder, Running};
use super::event::{Adopted, Boot, Event, Recorded};
use super::notify::{NotifyServer, Supervisor};
use super::reexec::{self, Inherited, Taker};
use super::store_io::StoreIo;
use super::trial::{self, Fallback, Interrupted};
use super::worker::{Tail, Worker};
use super::{control, health, metrics, Error};
use crate::child_env::ChildEnv;
use crate::config::{Config, HealthCheck, Program, Ready};
use crate::release::{Meta, Store};
use crate::sockets::Sockets;

/// The signals the master handles, as buffered streams.
pub(super) struct Signals {
    pub hup: tokio::signal::unix::Signal,
    pub usr1: tokio::signal::unix::Signal,
    pub usr2: tokio::signal::unix::Signal,
    pub term: tokio::signal::unix::Signal,
    pub int: tokio::signal::unix::Signal,
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

/// Sets the master up; the driver, what it waits on, and the core's first
/// event. An error comes before any worker is spawned.
pub(super) async fn boot(
    config: Config,
    config_path: Option<PathBuf>,
    self_upgrade: bool,
) -> Result<(Driver, Inbox, Event), Error> {
    let Config {
        program,
        releases,
        fetch,
        verify,
        control,
        hooks,
        self_channel,
    } = config;
    let signals = prepare()?;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("baton"));
    // What a previous master handed over across its `execve`, if this is
    // one; its workers are claimed before the reaper could take them.
    let mut inherited = reexec::take().map_err(Error::Reexec)?;
    let mut taker = Taker::default();
    let claimed = match &inherited {
        Some(Inherited::Full(doc)) => doc.claim_workers(),
        Some(Inherited::Core(core, _)) => core.claim_workers(),
        None => Vec::new(),
    };
    let reaper = crate::reaper::start();
    let sockets = match &mut inherited {
        Some(Inherited::Full(doc)) => doc.sockets(&mut taker).map_err(Error::Reexec)?,
        Some(Inherited::Core(core, _)) => core.sockets(&mut taker).map_err(Error::Reexec)?,
        None => Sockets::open(&program.listen)?,
    };
    crate::sys::cloexec_inherited_fds().map_err(Error::Descriptors)?;
    for held in sockets.iter() {
        tracing::info!(event = "listening", name = %held.name, "listening on {}", held.describe);
    }
    warn_http_ready(&program);
    let full = match &inherited {
        Some(Inherited::Full(doc)) => Some(&**doc),
        _ => None,
    };
    let notify = match full {
        Some(doc) => {
            let (fd, path) = doc.notify(&mut taker).map_err(Error::Reexec)?;
            NotifyServer::resume(fd, path).map_err(Error::Notify)?
        }
        None => NotifyServer::bind().map_err(Error::Notify)?,
    };
    let resuming_trial = full.and_then(|doc| doc.trial_id()).map(str::to_owned);
    let child_env = ChildEnv::new(&program, fetch.as_ref());
    let checker = checker(releases.as_ref(), &sockets, &child_env, &program);
    let store = match (&releases, &fetch) {
        (None, None) => None,
        (releases, _) => Some(open_store(
            releases.as_ref(),
            &program,
            resuming_trial.as_deref(),
        )?),
    };
    let (store_io, store_done) = match &store {
        Some((store, _, _)) => {
            let (io, done) = StoreIo::start(store.clone()).map_err(Error::StoreThread)?;
            (Some(io), Some(done))
        }
        None => (None, None),
    };
    let first_fetcher = match (&store, &fetch) {
        (Some(_), Some(fetch)) => {
            Some(crate::fetchers::from_config(fetch, &verify).map_err(Error::Fetcher)?)
        }
        _ => None,
    };
    let (outbox, inbox, control_tx) = channels(signals, notify, store_done);
    let listeners = Listeners::open(&control, full, &mut taker, control_tx).await?;
    let waiting_for_release = first_fetcher.is_some()
        && store
            .as_ref()
            .is_some_and(|(s, _, _)| s.current().is_none());
    let (store, lock, found) = match store {
        Some((store, lock, found)) => (Some(store), Some(lock), found),
        None => (None, None, Found::default()),
    };
    // A self-upgrade under way (read under the releases directory's lock):
    // this master is the new build on trial, or the previous one started
    // again after the new one died.
    let own_dir = releases
        .as_ref()
        .map(|r| super::self_update::store_dir(&r.dir));
    let own_start = match &own_dir {
        Some(dir) => super::self_update::start(dir, &exe, inherited.is_some()),
        None => super::self_update::Start::None,
    };
    // The executable systemd or supervisord starts: a new build on trial
    // runs from baton's store, and `reexec` goes back to this path.
    let exe = match &own_start {
        super::self_update::Start::OnTrial(record) => record.home.clone(),
        super::self_update::Start::None => exe,
    };
    let fixed = Fixed {
        reloadable: config_path.is_some(),
        self_upgrade,
        has_store: store.is_some(),
        exe: exe.clone(),
        pid: std::process::id(),
    };
    let core = Core::new(
        Settings::new(&program, releases.as_ref()),
        fixed,
        Instant::now(),
    );
    let mut driver = Driver {
        core,
        config: Running {
            program,
            releases,
            fetch,
            verify,
            hooks,
            self_channel,
            path: config_path,
        },
        sockets,
        retired: Vec::new(),
        generations: 0,
        fds: Fds {
            notify: (inbox.notify.raw_fd(), inbox.notify.path().to_owned()),
            control: listeners.control.as_ref().map(control::Server::carry),
            metrics: listeners.metrics_fd,
        },
        exe,
        child_env,
        supervisor: Supervisor::from_env(),
        outbox,
        workers: BTreeMap::new(),
        ready_checks: BTreeMap::new(),
        checker,
        health_task: None,
        store,
        store_io,
        updater: None,
        reporter: None,
        check_now: Arc::new(tokio::sync::Notify::new()),
        replies: BTreeMap::new(),
        holds: BTreeMap::new(),
        next_token: 0,
        metrics_task: listeners.metrics_task,
        baton: None,
        _held: (listeners.control, lock, reaper),
    };
    driver.reporter =
        super::driver::reporter(driver.config.fetch.as_ref(), driver.store.as_ref(), None);
    if let Some(dir) = &own_dir {
        driver.baton = super::self_update::launch(
            driver.config.self_channel.as_ref(),
            dir,
            own_start,
            &driver.exe,
            driver.config.path.as_deref(),
            driver.child_env.clone(),
            driver.outbox.selfs.clone(),
        );
    }
    let current = driver.store.as_ref().and_then(Store::current);
    if let (Some(reporter), Some(current), None) = (&driver.reporter, &current, &found.recorded) {
        // A promotion whose report died with the previous master (the
        // record was gone, the report not yet kept) is reported now.
        reporter.serving(current.version.as_deref().unwrap_or(&current.id));
    }
    let adopted = match inherited {
        Some(Inherited::Full(doc)) => Some(adopt_full(&mut driver, *doc, claimed, &mut taker)),
        Some(Inherited::Core(core, why)) => {
            Some(adopt_core(&mut driver, core, claimed, why, &mut taker))
        }
        None => None,
    };
    let trial_resumed =
        matches!(&adopted, Some(Adopted::Full { carry, .. }) if carry.trial.is_some());
    let updater = first_fetcher.is_some();
    let hold = first_fetcher.and_then(|fetcher| {
        // A resumed or retried trial holds the update loop back until it
        // ends.
        let held = (trial_resumed || found.retry.is_some()).then(|| {
            let (tx, rx) = oneshot::channel();
            let token = driver.token();
            driver.holds.insert(token, tx);
            (token, rx)
        });
        let (token, gate) = held.unzip();
        driver.start_updater(fetcher, gate);
        token
    });
    let boot = Boot {
        current,
        waiting_for_release,
        retry: found.retry,
        stranded: found.stranded,
        recorded: found.recorded,
        updater,
        hold,
        adopted,
    };
    Ok((driver, inbox, Event::Boot(Box::new(boot))))
}

/// Raises the open-file limit and installs the signal streams: from here
/// on no signal is lost. A master started by its predecessor's `execve`
/// had them blocked across it.
fn prepare() -> Result<Signals, Error> {
    match crate::sys::raise_nofile() {
        Ok((before, now)) if before < now => {
            tracing::info!("open-file limit raised from {before} to {now} (workers keep {before})")
        }
        Ok((_, now)) => tracing::info!("open-file limit {now}"),
        Err(e) => tracing::warn!("cannot read or raise the open-file limit: {e}"),
    }
    let signals = Signals::install().map_err(Error::Signals)?;
    if let Err(e) = crate::sys::block_master_signals(false) {
        tracing::warn!("cannot unblock the master's signals: {e}");
    }
    Ok(signals)
}

/// The loop's channels: what tasks send on, what the loop waits on, and
/// the control requests' sender for the control and metrics servers.
fn channels(
    signals: Signals,
    notify: NotifyServer,
    store: Option<mpsc::UnboundedReceiver<super::store_io::Finished>>,
) -> (Outbox, Inbox, mpsc::UnboundedSender<control::Incoming>) {
    let (exits_tx, exits) = mpsc::unbounded_channel();
    let (ready_tx, ready) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (installed_tx, installed) = mpsc::unbounded_channel();
    let (health_tx, health) = mpsc::unbounded_channel();
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let (reexec_tx, reexec) = mpsc::unbounded_channel();
    let (selfs_tx, selfs) = mpsc::unbounded_channel();
    let outbox = Outbox {
        exits: exits_tx,
        ready: ready_tx,
        installed: installed_tx,
        health: health_tx,
        reports: reports_tx,
        reexec: reexec_tx,
        selfs: selfs_tx,
    };
    let inbox = Inbox {
        signals,
        notify,
        exits,
        ready,
        installed,
        store,
        health,
        control: control_rx,
        reports,
        reexec,
        selfs,
    };
    (outbox, inbox, control_tx)
}

/// The control socket and the metrics listener, bound or taken over.
struct Listeners {
    control: Option<control::Server>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    metrics_fd: Option<std::os::fd::RawFd>,
}

impl Listeners {
    async fn open(
        config: &crate::config::Control,
        inherited: Option<&reexec::Document>,
        taker: &mut Taker,
        to_loop: mpsc::UnboundedSender<control::Incoming>,
    ) -> Result<Listeners, Error> {
        let (inherited_control, inherited_metrics) = match inherited {
            Some(doc) => (
                doc.control(taker).map_err(Error::Reexec)?,
                doc.metrics(taker).map_err(Error::Reexec)?,
            ),
            None => (None, None),
        };
        let mut metrics_fd = None;
        let metrics_task = match config.metrics {
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
                Some(metrics::serve(listener, to_loop.clone()))
            }
            None => None,
        };
        let control = match (&config.socket, inherited_control) {
            (_, Some((fd, path))) => Some(
                control::Server::resume(fd, path.clone(), to_loop)
                    .map_err(|source| Error::Control { path, source })?,
            ),
            (Some(path), None) => {
                let server = control::serve(path, to_loop).map_err(|source| Error::Control {
                    path: path.clone(),
                    source,
                })?;
                tracing::info!("control socket at {}", path.display());
                Some(server)
            }
            (None, None) => None,
        };
        Ok(Listeners {
            control,
            metrics_task,
            metrics_fd,
        })
    }
}

/// Takes over the workers a previous master carried (the sockets, notify,
/// control and metrics sockets were taken when they were opened).
fn adopt_full(
    driver: &mut Driver,
    doc: reexec::Document,
    claimed: Vec<crate::reaper::Own>,
    taker: &mut Taker,
) -> Adopted {
    let mut adopted = Vec::new();
    let mut tails = Vec::new();
    for (w, own) in doc.workers().iter().zip(claimed) {
        let stderr = w
            .stderr_fd
            .and_then(|fd| taker.take(fd, "a worker's stderr").ok());
        let exits = driver.outbox.exits.clone();
        match Worker::adopt((w.id, w.pid), stderr, w.tail.clone(), own, exits) {
            Ok(worker) => {
                tails.push(worker.tail().clone());
                adopted.push(w.id);
                driver.workers.insert(w.id, worker);
            }
            Err(e) => tracing::error!(
                worker = w.id,
                pid = w.pid,
                "cannot adopt worker {}: {e}; it is reaped as an orphan",
                w.id
            ),
        }
    }
    let reply = reply_token(driver, doc.reply_fd(), taker);
    let (carry, took_ms) = doc.into_carry(&adopted);
    Adopted::Full {
        carry: Box::new(carry),
        tails,
        reply,
        took_ms,
    }
}

/// Takes over the workers a previous master's core names.
fn adopt_core(
    driver: &mut Driver,
    core: reexec::StableCore,
    claimed: Vec<crate::reaper::Own>,
    why: String,
    taker: &mut Taker,
) -> Adopted {
    let newest = core.workers().map(|(id, _, _)| id).max();
    let mut workers: Vec<(u64, u32, Tail)> = Vec::new();
    for ((id, pid, stderr_fd), own) in core.workers().zip(claimed) {
        let stderr = stderr_fd.and_then(|fd| taker.take(fd, "a worker's stderr").ok());
        let exits = driver.outbox.exits.clone();
        match Worker::adopt((id, pid), stderr, Vec::new(), own, exits) {
            Ok(worker) => {
                workers.push((id, pid, worker.tail().clone()));
                driver.workers.insert(id, worker);
            }
            Err(e) => tracing::error!(worker = id, "cannot adopt worker {id}: {e}"),
        }
    }
    let reply = reply_token(driver, core.reply_fd(), taker);
    Adopted::Core {
        workers,
        newest,
        reply,
        why,
    }
}

/// The re-exec request's connection, registered for the core's answer.
fn reply_token(
    driver: &mut Driver,
    fd: Option<std::os::fd::RawFd>,
    taker: &mut Taker,
) -> Option<super::event::Token> {
    let conn = fd.and_then(|fd| taker.take(fd, "the reexec connection").ok())?;
    let token = driver.token();
    driver.replies.insert(
        token,
        Responder::Conn(std::os::unix::net::UnixStream::from(conn)),
    );
    Some(token)
}

/// Warns about `http:` readiness, which the old worker may answer.
pub(super) fn warn_http_ready(program: &Program) {
    if let Ready::Http(path) = &program.ready {
        tracing::warn!(
            "ready = \"http:{path}\": during a cycle the old worker shares the socket and may \
             answer the health check for the new one; prefer ready = \"notify\""
        );
    }
}

/// The release health checker the config asks for.
pub(super) fn checker(
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
    /// The trial record kept, or found promoted, for the core.
    recorded: Option<Recorded>,
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
    if let Some(mut trial) = store.trial() {
        // Records written before they named the version: from the
        // release's directory, while it is there.
        if trial.version.is_none() {
            trial.version = store.release(&trial.id).and_then(|m| m.version);
        }
        if resuming_trial == Some(trial.id.as_str()) {
            tracing::info!("release {} stays on trial across the re-exec", trial.id);
            found.recorded = Some(Recorded::Kept(trial));
            return Ok((store, lock, found));
        }
        let current = store.current();
        let promoted = current.as_ref().is_some_and(|c| c.id == trial.id);
        let fallback = match (&current, &trial.leaves) {
            (None, _) => Fallback::Nothing,
            (Some(_), Some(_)) => Fallback::Yanked,
            (Some(_), None) => Fallback::Current,
        };
        match trial::interrupted(trial.attempts, promoted, fallback, limit) {
            Interrupted::Promoted => {
                tracing::info!(
                    "release {} had been promoted when the master stopped",
                    trial.id
                );
                found.recorded = Some(Recorded::Promoted(trial.clone()));
            }
            Interrupted::Fail => {
                tracing::error!(
                    "release {} was on trial when the master stopped; counting its trial as \
                     failed: sha256 {} will not be installed again{}",
                    trial.id,
                    trial.sha256,
                    match &trial.leaves {
                        Some(yanked) => format!(
                            " (its trial, the way back from the yanked version {yanked}, was \
                             interrupted {} times; the yanked release serves on)",
                            trial.attempts
                        ),
                        None => String::new(),
                    }
                );
                found.recorded = Some(Recorded::Failed {
                    record: trial.clone(),
                    why: format!(
                        "the master died during the trial (attempt {}), which counts as a failure",
                        trial.attempts
                    ),
                });
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
                         and {}: trying it again in {}",
                        trial.id,
                        trial.attempts,
                        match &trial.leaves {
                            Some(yanked) => format!(
                                "it is the way back from the yanked version {yanked}, which \
                                 serves meanwhile"
                            ),
                            None => "no other release is installed".to_owned(),
                        },
                        humantime::format_duration(after)
                    );
                    // The record stays: a master killed before the retry
                    // begins finds the same count.
                    found.retry = Some((meta, attempt, after));
                    found.recorded = Some(Recorded::Kept(trial));
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
                found.recorded = Some(Recorded::Failed {
                    record: trial.clone(),
                    why: format!("quarantined: {why}"),
                });
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
