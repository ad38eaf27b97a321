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
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::core::{Carry, Status};
use super::trial;
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
/// The largest state document read.
const STATE_LIMIT: u64 = 16 << 20;

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
pub(crate) struct StableCore {
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CarriedWorker {
    /// Its id.
    pub id: u64,
    /// Its PID.
    pub pid: u32,
    /// Its stderr pipe.
    pub stderr_fd: Option<RawFd>,
    /// The release it runs.
    pub release: Option<String>,
    /// Where it was in its life.
    pub state: CarriedState,
    /// Its last `STATUS=`.
    pub status: Option<String>,
    /// Its last stderr lines.
    pub tail: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CarriedState {
    /// Serving, for this long.
    Serving {
        /// How long, in ms.
        for_ms: u64,
    },
    /// Draining, with this long left.
    Draining {
        /// How long, in ms.
        left_ms: u64,
        /// How long it has drained, in ms (absent from a document an
        /// older baton wrote: then from now).
        #[serde(default)]
        for_ms: u64,
    },
    /// Killed, awaiting its reap.
    Killed,
}

/// What a master started by `execve` from a previous one takes over.
pub(crate) enum Inherited {
    /// The whole state.
    Full(Box<Document>),
    /// Only the core (why the rest could not be read).
    Core(StableCore, String),
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
    serde_json::from_slice::<StableCore>(bytes)
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

impl StableCore {
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

/// Runs a library master's new executable as a probe (`--probe`,
/// `BATON_PROBE=1`): it must exit 0 and print `version` as its last line.
pub(super) async fn probe(
    binary: &Path,
    version: Option<&str>,
    env: Vec<(OsString, OsString)>,
) -> Checked {
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

/// What the driver hands over besides the core's state: the descriptors.
pub(super) struct Handover {
    /// The listening sockets and the paths of the unix sockets it created.
    pub sockets: (Vec<sockets::Carried>, Vec<PathBuf>),
    /// The notify socket.
    pub notify: (RawFd, PathBuf),
    /// The control listener and its path.
    pub control: Option<(RawFd, PathBuf)>,
    /// The metrics listener.
    pub metrics: Option<RawFd>,
    /// Each worker's stderr pipe, by worker id.
    pub stderr: std::collections::BTreeMap<u64, RawFd>,
}

impl Document {
    /// The document for the core's `carry` and the driver's descriptors;
    /// `reply_fd` answers the request.
    pub(super) fn new(
        carry: Carry,
        handover: Handover,
        binary: &Path,
        asked_at_ms: u64,
        reply_fd: Option<RawFd>,
    ) -> Document {
        let Handover {
            sockets: (sockets, created),
            notify,
            control,
            metrics,
            stderr,
        } = handover;
        let workers = carry
            .workers
            .into_iter()
            .map(|w| CarriedWorker {
                stderr_fd: stderr.get(&w.id).copied(),
                ..w
            })
            .collect();
        let mut close = vec![notify.0];
        close.extend(control.as_ref().map(|c| c.0));
        close.extend(metrics);
        Document {
            version: std::env::var(TEST_VERSION_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(VERSION),
            sockets,
            workers,
            close,
            reply_fd,
            binary: binary.to_owned(),
            asked_at_ms,
            uptime_ms: carry.uptime_ms,
            created,
            notify,
            control,
            metrics,
            next_id: carry.next_id,
            active: carry.active,
            status: carry.status,
            trial: carry.trial,
            health_failed: carry.health_failed,
        }
    }

    /// What the core takes over, for the workers that were adopted (by id),
    /// and how long the re-exec took in ms.
    pub(super) fn into_carry(self, adopted: &[u64]) -> (Carry, u64) {
        let took = now_ms(SystemTime::now()).saturating_sub(self.asked_at_ms);
        let carry = Carry {
            next_id: self.next_id,
            active: self.active,
            status: self.status,
            trial: self.trial,
            health_failed: self.health_failed,
            uptime_ms: self.uptime_ms,
            workers: self
                .workers
                .into_iter()
                .filter(|w| adopted.contains(&w.id))
                .collect(),
        };
        (carry, took)
    }

    /// The workers as they crossed.
    pub(super) fn workers(&self) -> &[CarriedWorker] {
        &self.workers
    }

    /// The request to answer.
    pub(super) fn reply_fd(&self) -> Option<RawFd> {
        self.reply_fd
    }
}

impl StableCore {
    /// The workers it names: (id, pid, stderr descriptor).
    pub(super) fn workers(&self) -> impl Iterator<Item = (u64, u32, Option<RawFd>)> + '_ {
        self.workers.iter().map(|w| (w.id, w.pid, w.stderr_fd))
    }

    /// The request to answer.
    pub(super) fn reply_fd(&self) -> Option<RawFd> {
        self.reply_fd
    }
}

/// Executes `binary` with the state document `doc`; returns only when that
/// failed (why), leaving everything as it was. `conn` is the requesting
/// connection, handed over too; `just_before` runs right before `execve`.
pub(super) fn exec(
    binary: &Path,
    doc: &Document,
    conn: Option<RawFd>,
    just_before: impl FnOnce(),
) -> String {
    let bytes = serde_json::to_vec(doc).expect("serializable");
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "reexec of {} failed: {what}: {e}; the master runs on as it was",
            binary.display()
        )
    };
    let state = match sys::memfd("baton-state", &bytes) {
        Ok(fd) => fd,
        Err(e) => return fail("cannot write the state document", &e),
    };
    let mut handed: Vec<RawFd> = doc.sockets.iter().map(|s| s.fd).collect();
    handed.extend(doc.workers.iter().filter_map(|w| w.stderr_fd));
    handed.extend(&doc.close);
    handed.extend(conn);
    handed.push(state.as_raw_fd());
    let restore = |fds: &[RawFd]| {
        for &fd in fds {
            let _ = sys::set_inheritable(fd, false);
        }
    };
    for (i, &fd) in handed.iter().enumerate() {
        if let Err(e) = sys::set_inheritable(fd, true) {
            restore(&handed[..i]);
            return fail(&format!("descriptor {fd}"), &e);
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
        binary.display(),
        doc.workers.len()
    );
    just_before();
    let blocked = sys::block_master_signals(true);
    let error = sys::execve(binary, &argv, &env);
    // Still here: the old program runs on.
    if blocked.is_ok() {
        let _ = sys::block_master_signals(false);
    }
    restore(&handed);
    fail("execve", &error)
}

/// Runs the new binary with `--version` and `validate --config F`.
pub(super) async fn check(binary: &Path, config: &Path) -> Checked {
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
