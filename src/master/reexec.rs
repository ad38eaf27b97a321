//! `baton reexec`: the master replaces its own program with `execve`, so it
//! keeps its PID (systemd's `MAINPID`, supervisord's child), its listening
//! sockets and its workers.
//!
//! The old master first runs the new binary as a child (`--version`, then
//! `validate --config F`, each under a timeout); a binary that fails either
//! never reaches `execve`, and the old master serves on as it was. It then
//! waits until nothing is half-done (no worker starting, no write to the
//! releases directory in flight), writes its state as a small versioned
//! JSON document into a memfd, clears close-on-exec on every descriptor
//! the new master needs (sockets, the workers' notify socket, the control
//! and metrics listeners, each worker's stderr pipe, the requesting
//! connection), blocks its signals (they stay pending across `execve`
//! instead of killing a process with no handler yet) and executes the
//! binary with its own argument vector and `BATON_REEXEC_STATE=<fd>`.
//!
//! The new master takes every descriptor back by number, registers the
//! workers as its own children before anything can reap them (they are:
//! the PID did not change), and resumes their states, deadlines, the trial
//! and the counters. A master that cannot read the whole document (a
//! version it does not know) still reads its stable core — the sockets,
//! the workers' ids, PIDs and stderr pipes, the descriptors to close, the
//! reply connection — adopts the sockets, starts a fresh worker and drains
//! the old ones once it is ready.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::control::{answer, refuse};
use super::worker::State;
use super::{trial, Master, Status};
use crate::sockets;
use crate::sys;

/// The variable naming the state document's descriptor.
pub(crate) const STATE_ENV: &str = "BATON_REEXEC_STATE";
/// The document's version. A master reads the whole document only at its
/// own version; the core fields keep their names and meaning in every
/// version.
const VERSION: u32 = 1;
/// A test hook: the old master writes this version instead, so that the
/// fallback of a master that cannot read the document is exercised.
const TEST_VERSION_ENV: &str = "BATON_TEST_REEXEC_VERSION";
/// How long each check of the new binary may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a re-exec waits for the master to be idle (no worker starting,
/// no write to the releases directory in flight) before it is refused.
const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// The largest state document read.
const STATE_LIMIT: u64 = 16 << 20;

/// A re-exec that was asked for.
pub(super) struct Pending {
    binary: PathBuf,
    /// The control connection that asked (none for a library master's own
    /// upgrade).
    conn: Option<UnixStream>,
    asked: SystemTime,
    /// The new binary passed its checks.
    checked: bool,
    /// What it is waiting for, once logged.
    waiting: Option<String>,
    /// When waiting for the master to be idle gives up.
    deadline: Instant,
}

impl Pending {
    fn new(binary: PathBuf, conn: Option<UnixStream>) -> Pending {
        Pending {
            binary,
            conn,
            asked: SystemTime::now(),
            checked: false,
            waiting: None,
            deadline: Instant::now() + WAIT_LIMIT,
        }
    }

    /// When a checked re-exec stops waiting for the master to be idle.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.checked.then_some(self.deadline)
    }
}

/// The outcome of the checks of a new binary: its `--version` line.
pub(super) type Checked = Result<String, String>;

/// The whole state document.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Document {
    version: u32,
    // The core: every version keeps these.
    sockets: Vec<sockets::Carried>,
    workers: Vec<CarriedWorker>,
    /// Descriptors a master that rebinds its own control, metrics and
    /// notify sockets closes.
    close: Vec<RawFd>,
    /// The control connection that asked, answered by the new master.
    reply_fd: Option<RawFd>,
    // Version 1.
    binary: PathBuf,
    /// When the re-exec was asked for, in ms since the epoch.
    asked_at_ms: u64,
    uptime_ms: u64,
    created: Vec<PathBuf>,
    notify: (RawFd, PathBuf),
    control: Option<(RawFd, PathBuf)>,
    metrics: Option<RawFd>,
    next_id: u64,
    active: Option<u64>,
    status: Status,
    trial: Option<trial::Carried>,
    health_failed: u32,
}

/// The core of the document, as any version writes it.
#[derive(Debug, Deserialize)]
pub(crate) struct Core {
    sockets: Vec<CoreSocket>,
    workers: Vec<CoreWorker>,
    #[serde(default)]
    close: Vec<RawFd>,
    reply_fd: Option<RawFd>,
}

#[derive(Debug, Deserialize)]
struct CoreSocket {
    name: String,
    fd: RawFd,
}

#[derive(Debug, Deserialize)]
struct CoreWorker {
    id: u64,
    pid: u32,
    stderr_fd: Option<RawFd>,
}

/// One worker as it crosses the `execve`.
#[derive(Debug, Serialize, Deserialize)]
struct CarriedWorker {
    id: u64,
    pid: u32,
    stderr_fd: Option<RawFd>,
    release: Option<String>,
    state: CarriedState,
    status: Option<String>,
    tail: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CarriedState {
    Serving { for_ms: u64 },
    Draining { left_ms: u64 },
    Killed,
}

/// What a master started by `execve` from a previous one takes over.
pub(crate) enum Inherited {
    /// The whole state.
    Full(Box<Document>),
    /// Only the core (why the rest could not be read).
    Core(Core, String),
}

fn now_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Reads the state a previous master left, if this process was started by
/// its `execve`; removes the variable so no child sees it. `Err` when the
/// variable is set but nothing can be read: nothing is adopted then.
pub(crate) fn take() -> Result<Option<Inherited>, String> {
    let Some(value) = std::env::var_os(STATE_ENV) else {
        return Ok(None);
    };
    std::env::remove_var(STATE_ENV);
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{STATE_ENV}={value:?} is not a descriptor number"))?;
    let mut bytes = Vec::new();
    std::fs::File::from(sys::take_inherited(fd).map_err(|e| format!("{STATE_ENV}: {e}"))?)
        .take(STATE_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the state document: {e}"))?;
    let version = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| format!("the state document is not JSON: {e}"))?["version"]
        .as_u64();
    if version == Some(VERSION as u64) {
        match serde_json::from_slice::<Document>(&bytes) {
            Ok(doc) => return Ok(Some(Inherited::Full(Box::new(doc)))),
            Err(e) => {
                let why = format!("its version {VERSION} document does not parse: {e}");
                return core(&bytes, why).map(Some);
            }
        }
    }
    let why = match version {
        Some(v) => format!("it is version {v}; this baton reads version {VERSION}"),
        None => "it names no version".to_owned(),
    };
    core(&bytes, why).map(Some)
}

fn core(bytes: &[u8], why: String) -> Result<Inherited, String> {
    serde_json::from_slice::<Core>(bytes)
        .map(|c| Inherited::Core(c, why.clone()))
        .map_err(|e| format!("{why}, and even its core does not parse: {e}"))
}

/// Takes inherited descriptors by number, each at most once.
#[derive(Default)]
pub(crate) struct Taker(std::collections::BTreeSet<RawFd>);

impl Taker {
    /// The descriptor `fd`, now owned.
    pub(crate) fn take(&mut self, fd: RawFd, what: &str) -> Result<OwnedFd, String> {
        if !self.0.insert(fd) {
            return Err(format!("{what}: descriptor {fd} is named twice"));
        }
        sys::take_inherited(fd).map_err(|e| format!("{what}: {e}"))
    }
}

impl Document {
    /// The sockets, owned.
    pub(crate) fn sockets(&mut self, taker: &mut Taker) -> Result<crate::sockets::Sockets, String> {
        let carried = std::mem::take(&mut self.sockets);
        let fds = carried
            .iter()
            .map(|c| taker.take(c.fd, &format!("socket {}", c.name)))
            .collect::<Result<Vec<_>, _>>()?;
        crate::sockets::Sockets::resume(carried, fds, std::mem::take(&mut self.created))
            .map_err(|e| format!("cannot place the sockets: {e:?}"))
    }

    /// The notify socket.
    pub(crate) fn notify(&self, taker: &mut Taker) -> Result<(OwnedFd, PathBuf), String> {
        Ok((
            taker.take(self.notify.0, "notify socket")?,
            self.notify.1.clone(),
        ))
    }

    /// The control listener and its path.
    pub(crate) fn control(&self, taker: &mut Taker) -> Result<Option<(OwnedFd, PathBuf)>, String> {
        self.control
            .as_ref()
            .map(|(fd, path)| Ok((taker.take(*fd, "control socket")?, path.clone())))
            .transpose()
    }

    /// The metrics listener.
    pub(crate) fn metrics(&self, taker: &mut Taker) -> Result<Option<OwnedFd>, String> {
        self.metrics
            .map(|fd| taker.take(fd, "metrics listener"))
            .transpose()
    }

    /// The trial under way, if any: its release id.
    pub(crate) fn trial_id(&self) -> Option<&str> {
        self.trial.as_ref().map(|t| t.release_id())
    }

    /// Registers the workers as this process's own children, before the
    /// reaper could take their exit.
    pub(crate) fn claim_workers(&self) -> Vec<crate::reaper::Own> {
        self.workers
            .iter()
            .map(|w| crate::reaper::register(w.pid as i32))
            .collect()
    }
}

impl Core {
    /// The sockets, owned, with their names; every descriptor listed to be
    /// closed, closed.
    pub(crate) fn sockets(&self, taker: &mut Taker) -> Result<crate::sockets::Sockets, String> {
        for &fd in &self.close {
            if let Ok(fd) = taker.take(fd, "a descriptor to close") {
                drop(fd);
            }
        }
        let fds = self
            .sockets
            .iter()
            .map(|c| {
                Ok((
                    taker.take(c.fd, &format!("socket {}", c.name))?,
                    c.name.clone(),
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        crate::sockets::Sockets::resume_bare(fds)
            .map_err(|e| format!("cannot place the sockets: {e:?}"))
    }

    /// Registers the workers as this process's own children.
    pub(crate) fn claim_workers(&self) -> Vec<crate::reaper::Own> {
        self.workers
            .iter()
            .map(|w| crate::reaper::register(w.pid as i32))
            .collect()
    }
}

impl Master {
    /// `reexec` was asked for on `conn`: check the binary, then re-exec once
    /// nothing is half-done.
    pub(super) fn reexec_requested(&mut self, binary: Option<PathBuf>, conn: UnixStream) {
        let refused = |why: &str| refuse(format!("reexec refused: {why}"));
        if self.stopping.is_some() {
            return answer(conn, &refused("the master is stopping"));
        }
        if self.reexec.is_some() {
            return answer(conn, &refused("a re-exec is already under way"));
        }
        let Some(config) = self.config_path.clone() else {
            return answer(
                conn,
                &refused(
                    "this master was not started by `baton run --config F`; \
                     only such a master can re-exec",
                ),
            );
        };
        let binary = binary.unwrap_or_else(|| self.exe.clone());
        tracing::info!(
            event = "reexec_requested",
            "re-exec requested: checking {} first",
            binary.display()
        );
        self.reexec = Some(Pending::new(binary.clone(), Some(conn)));
        let done = self.reexec_tx.clone();
        tokio::spawn(async move {
            let _ = done.send(check(&binary, &config).await);
        });
    }

    /// The checks of the new binary ended.
    pub(super) fn on_reexec_checked(&mut self, checked: Checked) {
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
                reply_to(pending.conn, &refuse(error));
            }
        }
    }

    /// A library master (one binary that is master and worker) promoted a
    /// new build of its own executable: re-exec into it, so the master's
    /// code is upgraded too, once its probe reports `version`.
    pub(super) fn reexec_self(&mut self, version: Option<String>) {
        if self.reexec.is_some() || self.stopping.is_some() {
            return;
        }
        let binary = self.exe.clone();
        tracing::info!(
            event = "reexec_requested",
            "the master's own executable was upgraded: re-executing {} once its probe answers",
            binary.display()
        );
        self.reexec = Some(Pending::new(binary.clone(), None));
        let done = self.reexec_tx.clone();
        let env = self.child_env.vars().to_vec();
        tokio::spawn(async move {
            let _ = done.send(probe(&binary, version.as_deref(), env).await);
        });
    }

    /// Re-executes when a checked re-exec is pending and nothing is
    /// half-done; called after every event.
    pub(super) fn reexec_if_ready(&mut self) {
        if !self.reexec.as_ref().is_some_and(|p| p.checked) {
            return;
        }
        if self.stopping.is_some() {
            let pending = self.reexec.take().expect("checked above");
            reply_to(
                pending.conn,
                &refuse("reexec refused: the master is stopping"),
            );
            return;
        }
        let busy = busy_with(self);
        if let Some(why) = busy {
            let pending = self.reexec.as_mut().expect("checked above");
            if Instant::now() >= pending.deadline {
                let pending = self.reexec.take().expect("checked above");
                let error = format!(
                    "reexec refused: the master was not idle for {}s ({why}); \
                     it runs on as it was, ask again",
                    WAIT_LIMIT.as_secs()
                );
                tracing::error!(event = "reexec_failed", error = %error, "{error}");
                reply_to(pending.conn, &refuse(error));
                return;
            }
            if pending.waiting.as_deref() != Some(why.as_str()) {
                tracing::info!("re-exec waits: {why}");
                pending.waiting = Some(why);
            }
            return;
        }
        let pending = self.reexec.take().expect("checked above");
        let (conn, error) = self.exec(pending);
        tracing::error!(event = "reexec_failed", error = %error, "{error}");
        reply_to(conn, &refuse(error));
    }

    /// The state document; `reply_fd` answers the request.
    fn document(&self, pending: &Pending, reply_fd: Option<RawFd>) -> Document {
        let now = Instant::now();
        let (sockets, created) = self.sockets.carry();
        let workers = self
            .workers
            .values()
            .map(|w| CarriedWorker {
                id: w.id,
                pid: w.pid,
                stderr_fd: w.stderr_fd(),
                release: self.releases_of.get(&w.id).cloned(),
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
                tail: w.stderr_tail(),
            })
            .collect();
        let control = self.control_carry.clone().map(|(p, fd)| (fd, p));
        let mut close = vec![self.notify_fd];
        close.extend(control.as_ref().map(|c| c.0));
        close.extend(self.metrics_fd);
        Document {
            version: std::env::var(TEST_VERSION_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(VERSION),
            sockets,
            workers,
            close,
            reply_fd,
            binary: pending.binary.clone(),
            asked_at_ms: now_ms(pending.asked),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            created,
            notify: (self.notify_fd, self.notify_path.clone()),
            control,
            metrics: self.metrics_fd,
            next_id: self.next_id,
            active: self.active,
            status: self.status.clone(),
            trial: self.trials.carry(now),
            health_failed: self.health_failed,
        }
    }

    /// Executes the new binary; returns only when that failed (with the
    /// connection to answer), leaving everything as it was.
    fn exec(&mut self, pending: Pending) -> (Option<UnixStream>, String) {
        let doc = self.document(&pending, pending.conn.as_ref().map(AsRawFd::as_raw_fd));
        let bytes = serde_json::to_vec(&doc).expect("serializable");
        let fail = |conn, what: &str, e: &dyn std::fmt::Display| {
            (
                conn,
                format!(
                    "reexec of {} failed: {what}: {e}; the master runs on as it was",
                    pending.binary.display()
                ),
            )
        };
        let state = match sys::memfd("baton-state", &bytes) {
            Ok(fd) => fd,
            Err(e) => return fail(pending.conn, "cannot write the state document", &e),
        };
        let mut handed: Vec<RawFd> = doc.sockets.iter().map(|s| s.fd).collect();
        handed.extend(doc.workers.iter().filter_map(|w| w.stderr_fd));
        handed.extend(&doc.close);
        handed.extend(pending.conn.as_ref().map(AsRawFd::as_raw_fd));
        handed.push(state.as_raw_fd());
        let restore = |fds: &[RawFd]| {
            for &fd in fds {
                let _ = sys::set_inheritable(fd, false);
            }
        };
        for (i, &fd) in handed.iter().enumerate() {
            if let Err(e) = sys::set_inheritable(fd, true) {
                restore(&handed[..i]);
                return fail(pending.conn, &format!("descriptor {fd}"), &e);
            }
        }
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| k != STATE_ENV && k != TEST_VERSION_ENV)
            .collect();
        env.push((STATE_ENV.into(), state.as_raw_fd().to_string().into()));
        let argv: Vec<OsString> = std::env::args_os().collect();
        tracing::info!(
            event = "reexec",
            workers = doc.workers.len(),
            "re-executing {} with the same PID; {} worker(s) keep serving",
            pending.binary.display(),
            doc.workers.len()
        );
        self.supervisor
            .reloading(&format!("re-executing {}", pending.binary.display()));
        let blocked = sys::block_master_signals(true);
        let error = sys::execve(&pending.binary, &argv, &env);
        // Still here: the old program runs on.
        if blocked.is_ok() {
            let _ = sys::block_master_signals(false);
        }
        restore(&handed);
        self.supervisor.ready("re-exec failed; serving as before");
        fail(pending.conn, "execve", &error)
    }

    /// Takes over the workers, trial and counters a previous master carried
    /// (the sockets, notify, control and metrics sockets were taken when
    /// they were opened), and answers the request that asked for it.
    pub(super) fn resume(
        &mut self,
        doc: Document,
        mut own: Vec<crate::reaper::Own>,
        taker: &mut Taker,
    ) {
        let now = Instant::now();
        let mut adopted = Vec::new();
        for (w, own) in doc.workers.into_iter().zip(own.drain(..)) {
            let stderr = w
                .stderr_fd
                .and_then(|fd| taker.take(fd, "a worker's stderr").ok());
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
            match super::worker::Worker::adopt(
                w.id,
                w.pid,
                stderr,
                w.tail,
                state,
                own,
                self.exits.clone(),
            ) {
                Ok(mut worker) => {
                    worker.status = w.status;
                    if matches!(state, State::Killed) {
                        worker.kill();
                    }
                    if let Some(r) = w.release {
                        self.releases_of.insert(w.id, r);
                    }
                    adopted.push(w.pid);
                    self.workers.insert(w.id, worker);
                }
                Err(e) => tracing::error!(
                    worker = w.id,
                    pid = w.pid,
                    "cannot adopt worker {}: {e}; it is reaped as an orphan",
                    w.id
                ),
            }
        }
        self.next_id = doc.next_id.max(self.next_id);
        self.active = doc.active.filter(|id| self.workers.contains_key(id));
        self.status = doc.status;
        self.status.reexecs += 1;
        self.started = now
            .checked_sub(Duration::from_millis(doc.uptime_ms))
            .unwrap_or(now);
        self.health_failed = doc.health_failed;
        if let Some(trial) = doc.trial {
            self.trials.resume(trial, now);
        }
        let took = now_ms(SystemTime::now()).saturating_sub(doc.asked_at_ms);
        tracing::info!(
            event = "reexec_done",
            "re-executed {} in {took} ms: adopted worker(s) {adopted:?}",
            self.exe.display()
        );
        self.reply_reexec(doc.reply_fd, taker, &adopted, took, None);
    }

    /// Takes over what a previous master's core names: its workers keep
    /// serving until a fresh one is ready, then drain.
    pub(super) fn resume_core(
        &mut self,
        core: Core,
        mut own: Vec<crate::reaper::Own>,
        why: String,
        taker: &mut Taker,
    ) {
        tracing::warn!(
            event = "reexec_fallback",
            "cannot read the state of the master before the re-exec ({why}): keeping its \
             sockets, starting a fresh worker and draining the old ones once it is ready"
        );
        let newest = core.workers.iter().map(|w| w.id).max();
        let mut adopted = Vec::new();
        for (w, own) in core.workers.iter().zip(own.drain(..)) {
            let stderr = w
                .stderr_fd
                .and_then(|fd| taker.take(fd, "a worker's stderr").ok());
            let state = State::Serving {
                since: Instant::now(),
            };
            match super::worker::Worker::adopt(
                w.id,
                w.pid,
                stderr,
                Vec::new(),
                state,
                own,
                self.exits.clone(),
            ) {
                Ok(worker) => {
                    adopted.push(w.pid);
                    self.workers.insert(w.id, worker);
                }
                Err(e) => tracing::error!(worker = w.id, "cannot adopt worker {}: {e}", w.id),
            }
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
        self.reply_reexec(core.reply_fd, taker, &adopted, 0, Some(&why));
    }

    fn reply_reexec(
        &self,
        reply_fd: Option<RawFd>,
        taker: &mut Taker,
        adopted: &[u32],
        took: u64,
        fallback: Option<&str>,
    ) {
        self.supervisor
            .ready(&format!("re-executed {}; serving", self.exe.display()));
        let Some(conn) = reply_fd.and_then(|fd| taker.take(fd, "the reexec connection").ok())
        else {
            return;
        };
        let mut reply = json!({
            "ok": true,
            "pid": std::process::id(),
            "binary": self.exe,
            "version": env!("CARGO_PKG_VERSION"),
            "workers": adopted,
            "took_ms": took,
        });
        if let Some(why) = fallback {
            reply["fallback"] = why.into();
        }
        answer(UnixStream::from(conn), &reply);
    }
}

/// Answers a control connection, when the re-exec has one.
fn reply_to(conn: Option<UnixStream>, reply: &serde_json::Value) {
    if let Some(conn) = conn {
        answer(conn, reply);
    }
}

/// Runs a library master's new executable as a probe (`--probe`,
/// `BATON_PROBE=1`): it must exit 0 and print `version` as its last line.
async fn probe(binary: &Path, version: Option<&str>, env: Vec<(OsString, OsString)>) -> Checked {
    let mut env = env;
    env.push((crate::protocol::BATON_PROBE.into(), "1".into()));
    let what = format!("`{} --probe`", binary.display());
    let out = match crate::command::run(binary, &["--probe".to_owned()], &env, None, CHECK_TIMEOUT)
        .await
    {
        Ok(out) => out,
        Err(crate::command::Failure::Spawn(e)) => return Err(format!("{what} cannot start: {e}")),
        Err(crate::command::Failure::Wait(e)) => return Err(format!("{what}: {e}")),
        Err(crate::command::Failure::Timeout) => {
            return Err(format!("{what} ran past {}s", CHECK_TIMEOUT.as_secs()))
        }
    };
    if !out.status.success() {
        return Err(format!(
            "{what} {}",
            crate::protocol::describe_exit(&out.status)
        ));
    }
    let printed = out.stdout.lines().last().unwrap_or("").trim().to_owned();
    match version {
        Some(v) if printed != v => Err(format!(
            "{what} printed {printed:?}, not the promoted version {v}"
        )),
        _ => Ok(printed),
    }
}

/// Why a re-exec must wait, if it must.
fn busy_with(m: &Master) -> Option<String> {
    if let Some(s) = &m.starting {
        return Some(format!("worker {} is starting", s.id));
    }
    if m.cycle_pending || m.restart_at.is_some() {
        return Some("a worker restart is due".to_owned());
    }
    if m.store_pending > 0 || m.promoting.is_some() || m.promote_retry_at.is_some() {
        return Some("the releases directory is being written".to_owned());
    }
    if m.rolling_back.is_some() {
        return Some("a rollback is under way".to_owned());
    }
    if m.queued_install.is_some() {
        return Some("an installed release waits for its trial".to_owned());
    }
    if !m.retired.is_empty() {
        return Some("workers still hold sockets a reload removed".to_owned());
    }
    if !m.waiters.is_empty() {
        return Some("control requests wait for their outcome".to_owned());
    }
    if m.trials.on_trial().is_some() && m.trials.runnable().is_none() {
        return Some("a trial is being recorded".to_owned());
    }
    None
}

/// Runs the new binary with `--version` and `validate --config F`.
async fn check(binary: &Path, config: &Path) -> Checked {
    let env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != STATE_ENV)
        .collect();
    let run = |args: Vec<String>| {
        let env = env.clone();
        async move {
            let what = format!("`{} {}`", binary.display(), args.join(" "));
            match crate::command::run(binary, &args, &env, None, CHECK_TIMEOUT).await {
                Ok(out) if out.status.success() => Ok(out.stdout),
                Ok(out) => Err(format!(
                    "{what} {}: {}",
                    crate::protocol::describe_exit(&out.status),
                    crate::command::tail(&format!("{}\n{}", out.stdout, out.stderr))
                )),
                Err(crate::command::Failure::Spawn(e)) => Err(format!("{what} cannot start: {e}")),
                Err(crate::command::Failure::Wait(e)) => Err(format!("{what}: {e}")),
                Err(crate::command::Failure::Timeout) => Err(format!(
                    "{what} ran past {}s and was killed",
                    CHECK_TIMEOUT.as_secs()
                )),
            }
        }
    };
    let version = run(vec!["--version".to_owned()]).await?;
    let version = version.trim().to_owned();
    if !version.starts_with("baton ") {
        return Err(format!(
            "`{} --version` printed {version:?}, not \"baton <version>\"",
            binary.display()
        ));
    }
    let config = config.to_string_lossy().into_owned();
    run(vec!["validate".to_owned(), "--config".to_owned(), config]).await?;
    Ok(version)
}
