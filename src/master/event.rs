//! What the master's core is told ([`Event`]) and what it asks its driver
//! to do ([`Action`]). Events are the arms of the driver's `select!` plus
//! the outcomes of actions (a spawn that failed, a reload that was read);
//! actions are every side effect the master has. Both are plain data, so
//! the core is tested by feeding events and reading actions.

use std::path::PathBuf;
use std::process::ExitStatus;

use serde_json::Value;

use super::core::{Carry, Settings};
use super::notify;
use super::store_io::{Done, Job};
use super::update::CheckReport;
use super::worker::Tail;
use crate::control::Request;
use crate::release::{Meta, TrialRecord};

/// Something the driver keeps on the core's behalf and names by number:
/// a control request's reply channel, or the hold an installed release
/// keeps on the update loop until its trial ends.
pub(crate) type Token = u64;

/// A signal the master handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sig {
    /// SIGHUP: reload, then cycle.
    Hup,
    /// SIGUSR1: check the source now.
    Usr1,
    /// SIGUSR2: as SIGHUP.
    Usr2,
    /// SIGTERM: graceful stop (a second one: hard stop).
    Term,
    /// SIGINT: as SIGTERM.
    Int,
}

impl Sig {
    /// The signal's name, for logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Sig::Hup => "SIGHUP",
            Sig::Usr1 => "SIGUSR1",
            Sig::Usr2 => "SIGUSR2",
            Sig::Term => "SIGTERM",
            Sig::Int => "SIGINT",
        }
    }
}

/// What the releases directory held when a request that reads it came.
#[derive(Debug, Clone, Default)]
pub(crate) struct Disk {
    /// What `current` names.
    pub current: Option<Meta>,
    /// What `previous` names.
    pub previous: Option<Meta>,
    /// Every installed release (for `releases`).
    pub releases: Vec<Meta>,
    /// Digests recorded as failed.
    pub failed: Vec<String>,
    /// Digests held by a rollback.
    pub held: Vec<String>,
    /// Digests quarantined after interrupted trials.
    pub quarantined: Vec<String>,
    /// Versions yanked here.
    pub yanked: Vec<String>,
    /// The trial reports' writer's counters, with `[fetch] report`.
    pub reports: Option<crate::control::reply::Reports>,
    /// This host's id for rollouts, with a `[fetch]` source.
    pub host_id: Option<String>,
    /// baton itself (for `status`).
    pub baton: Box<crate::control::reply::Baton>,
}

/// What start-up found, for the core's first decision.
#[derive(Debug, Clone, Default)]
pub(crate) struct Boot {
    /// What `current` names.
    pub current: Option<Meta>,
    /// A fetcher is configured, with nothing installed yet: the first
    /// worker waits for the first release.
    pub waiting_for_release: bool,
    /// An interrupted first trial to try again: (release, attempt, after).
    pub retry: Option<(Meta, u32, std::time::Duration)>,
    /// Why nothing can serve (the only release is quarantined).
    pub stranded: Option<String>,
    /// Whether the update loop was started.
    pub updater: bool,
    /// With a resumed trial, the update loop's hold until it ends.
    pub hold: Option<Token>,
    /// What a previous master handed over across its `execve`.
    pub adopted: Option<Adopted>,
    /// The trial record start-up kept or found promoted: its `from` and
    /// `leaves` feed the trial's reports.
    pub recorded: Option<Recorded>,
}

/// A trial record a previous master left.
#[derive(Debug, Clone)]
pub(crate) enum Recorded {
    /// The trial goes on (resumed across a re-exec, or retried).
    Kept(TrialRecord),
    /// `current` names its release: the promotion's rename happened
    /// before the previous master died, its reports did not.
    Promoted(TrialRecord),
    /// The master's death ended the trial without promotion: failed, or
    /// quarantined (`why`).
    Failed {
        /// The record.
        record: TrialRecord,
        /// What became of it.
        why: String,
    },
}

/// Workers a previous master handed over across its `execve`.
#[derive(Debug, Clone)]
pub(crate) enum Adopted {
    /// The whole state: workers, trial, counters.
    Full {
        /// The carried state (workers whose adoption failed are left out).
        carry: Box<Carry>,
        /// The adopted workers' stderr tails, in `carry.workers`' order.
        tails: Vec<Tail>,
        /// The reexec request to answer.
        reply: Option<Token>,
        /// How long the re-exec took, in ms.
        took_ms: u64,
    },
    /// Only the core (`why` the rest could not be read): the workers keep
    /// serving until a fresh one is ready.
    Core {
        /// The adopted workers: (id, pid, stderr tail).
        workers: Vec<(u64, u32, Tail)>,
        /// The highest worker id the document names, adopted or not.
        newest: Option<u64>,
        /// The reexec request to answer.
        reply: Option<Token>,
        /// Why the whole state could not be read.
        why: String,
    },
}

/// A reload the driver read and applied.
#[derive(Debug, Clone)]
pub(crate) struct Reloaded {
    /// What changed, for the log.
    pub summary: String,
    /// The new settings.
    pub settings: Settings,
    /// Whether the update loop runs now.
    pub updater: bool,
    /// A socket set the reload replaced, by generation: closed once the
    /// workers running now have exited.
    pub retired: Option<u64>,
}

/// What the core does once a reload ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterReload {
    /// Cycle onto the new config (SIGHUP, SIGUSR2).
    Cycle,
    /// Only say the reload ended (a coalesced reload with no cycle).
    Settle,
    /// Say so, then schedule the crash restart that was due.
    Restart,
}

/// One thing that happened.
#[derive(Debug)]
pub(crate) enum Event {
    /// Start-up is done: decide what runs first.
    Boot(Box<Boot>),
    /// A signal arrived.
    Signal(Sig),
    /// A worker the core asked for runs.
    Spawned {
        /// Its id.
        id: u64,
        /// Its PID.
        pid: u32,
        /// Its last stderr lines, as they come.
        tail: Tail,
    },
    /// A worker the core asked for could not be started.
    SpawnFailed {
        /// Its id.
        id: u64,
        /// Why.
        error: String,
    },
    /// A worker was reaped.
    Exited {
        /// Its id.
        id: u64,
        /// Its exit status.
        status: ExitStatus,
    },
    /// A worker's `http:` readiness check answered.
    Ready(u64),
    /// A message on the notify socket.
    Notify(notify::Message),
    /// The update loop installed a release; `hold` keeps the loop waiting
    /// until the core releases it.
    Installed {
        /// The release.
        release: Meta,
        /// The yanked version it takes the host away from.
        leaves: Option<String>,
        /// The hold on the update loop.
        hold: Token,
    },
    /// A write to the releases directory ended; `current` is what the
    /// link names after it.
    Store {
        /// What became of the write.
        done: Done,
        /// What `current` names now.
        current: Option<Meta>,
    },
    /// A health check ended.
    Health(super::health::Report),
    /// A control request; `disk` is read for the requests that show it.
    Control {
        /// What was asked.
        request: Request,
        /// Where the answer goes.
        reply: Token,
        /// The releases directory, as the request found it.
        disk: Disk,
    },
    /// A check of the source ended.
    Checked(CheckReport),
    /// The checks of a re-exec's new binary ended.
    ReexecChecked(super::reexec::Checked),
    /// `[self]` offers a new build of baton that passed its checks.
    SelfReady(Box<super::self_update::Ready>),
    /// `execve` failed; the master runs on.
    ExecFailed {
        /// What failed.
        error: String,
        /// The request to answer.
        reply: Option<Token>,
    },
    /// A reload was read: applied, or refused with the message to show.
    Reloaded {
        /// Why it was read (the signal, or a coalesced reload).
        why: String,
        /// What follows it.
        then: AfterReload,
        /// The outcome.
        result: Result<Reloaded, String>,
    },
    /// A deadline of [`super::core::Core::deadline`] passed.
    Timer,
}

/// The master's notes to its own supervisor (systemd's `sd_notify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// `READY=1` with this status.
    Ready(String),
    /// `RELOADING=1` with this status.
    Reloading(String),
    /// `STATUS=` only.
    Status(String),
    /// `STOPPING=1`.
    Stopping,
}

/// One thing to do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Start worker `id`: of `release` from its own directory when
    /// `own_dir`, else through the configured command (`release` then
    /// names what `current` runs). The driver answers with
    /// [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn {
        /// The worker's id.
        id: u64,
        /// The release it runs, when known.
        release: Option<Meta>,
        /// Run it from the release's own directory.
        own_dir: bool,
    },
    /// Send the stop signal to a worker.
    Drain(u64),
    /// SIGKILL a worker's process group.
    Kill(u64),
    /// Tell the master's supervisor.
    Notify(Notice),
    /// Write to the releases directory; [`Event::Store`] follows.
    Store(Job),
    /// Poll a starting worker's `http:` readiness path.
    StartReadyCheck {
        /// The worker.
        id: u64,
        /// The path.
        path: String,
    },
    /// Stop polling a worker's readiness.
    StopReadyCheck(u64),
    /// Check a worker's health until told to stop.
    StartHealth {
        /// The worker.
        worker: u64,
        /// Its PID.
        pid: u32,
        /// The release it runs.
        release: Option<String>,
    },
    /// Stop the running health check.
    StopHealth,
    /// Answer a control request.
    Reply(Token, Value),
    /// Check the source now.
    CheckNow,
    /// Let the update loop go on (a trial ended, or its release was
    /// dropped).
    Release(Token),
    /// Read and apply the config file; [`Event::Reloaded`] follows. `hold`
    /// is the update loop's hold while a trial runs (a rebuilt loop waits
    /// for it too).
    Reload {
        /// Why, for the log.
        why: String,
        /// What follows it.
        then: AfterReload,
        /// The running trial's hold.
        hold: Option<Token>,
    },
    /// Close a socket set a reload retired.
    CloseSockets(u64),
    /// Run a re-exec's checks of `binary` (`--version`, `validate`).
    CheckReexec(PathBuf),
    /// Probe the master's own promoted executable for `version`.
    ProbeSelf(Option<String>),
    /// Execute `binary` with the carried state; [`Event::ExecFailed`]
    /// follows only if that failed.
    Exec {
        /// The new binary.
        binary: PathBuf,
        /// The request to answer from the new master.
        reply: Option<Token>,
        /// When it was asked for.
        asked: std::time::Instant,
        /// The state that crosses.
        carry: Box<Carry>,
        /// The new build of baton, for a self-upgrade.
        upgrade: Option<Box<super::self_update::Ready>>,
    },
    /// Run a `post_promote` or `post_rollback` hook.
    PostHook {
        /// Which.
        which: crate::hooks::Which,
        /// The release it is about.
        release: Meta,
        /// The release `current` named before.
        before: Option<String>,
    },
    /// Write a trial report (with `[fetch] report`); counted either way.
    Report(crate::fleet::Note),
    /// Every worker has exited: the master ends.
    Exit(super::Stopped),
}
