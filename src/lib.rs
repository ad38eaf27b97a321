//! baton keeps a network service serving while its binary is replaced.
//!
//! A small master process holds the listening sockets and a PID that never
//! changes; the service runs as a worker child that inherits the sockets.
//! On a signal (SIGHUP or SIGUSR2) the master runs a graceful cycle: a new
//! worker starts on the same sockets and reports ready, and only then is the
//! old worker asked to drain and exit. If the new worker fails to start or to
//! become ready, it is killed and the old worker never stopped.
//!
//! # Two ways to use it
//!
//! 1. The daemon, `baton run --config baton.toml`, supervises any program that
//!    speaks the systemd protocols (see below).
//! 2. The library: call [`run`] from the service's own `main`. The same binary
//!    becomes master, worker or probe depending on how it was started:
//!
//! ```no_run
//! fn main() -> Result<(), baton::Error> {
//!     // Code here runs in the master, in every worker and in probes: keep
//!     // one-time jobs (migrations, cron-like tasks) out of it, or guard them
//!     // with `baton::role() == baton::Role::Master`.
//!     let options = baton::Options::new(env!("CARGO_PKG_VERSION")).listen("127.0.0.1:8080");
//!     baton::run(options, |mut worker| async move {
//!         // Per-worker setup goes here.
//!         let listener = worker.tcp(0)?;
//!         let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
//!         worker.ready()?;
//!         baton::serve::http(listener, app, worker.shutdown()).await
//!     })
//! }
//! ```
//!
//! The example service, `examples/hello.rs`, is this pattern grown up: it
//! takes `--listen`, `--standalone` (no master) and `--fetch-file PATH` (it
//! upgrades itself in place from that file, through [`Options::fetch`]),
//! answers `GET /` with its version and serves a `/healthz` for
//! health-gated trials. `demo/run` runs it under the daemon instead; the
//! same binary serves either way.
//!
//! The pieces, from the bottom up: [`Worker`] hands a worker its inherited
//! sockets, readiness and the stop signal; [`serve::http`] is the
//! keep-alive-safe server loop; [`Options`] and [`run`] make one binary
//! master, worker and probe. [`config`], [`fetchers`], [`manifest`],
//! [`release`] and [`master`] are the daemon's engine, public so that the
//! CLI is a thin layer over them. The reference is the repository's
//! `docs/` folder, one page per concept.
//!
//! # The worker protocol
//!
//! - Sockets arrive as fds 3, 4, … with `LISTEN_FDS`, `LISTEN_PID` (the
//!   worker's own PID) and `LISTEN_FDNAMES`, exactly as `sd_listen_fds(3)`
//!   expects. Every other descriptor of the master is close-on-exec.
//! - Readiness: `READY=1` sent to the datagram socket in `NOTIFY_SOCKET`, as
//!   `sd_notify(3)` does (`STATUS=` lines are shown in the master's log). Or
//!   a fixed delay (`ready = "delay:2s"`), or an HTTP health path on the first
//!   TCP socket (`ready = "http:/healthz"`).
//! - Stop: the configured stop signal (default SIGTERM). The worker stops
//!   accepting, answers the next request on each open keep-alive connection
//!   with `Connection: close`, closes connections only once they have been
//!   idle for a grace period, and exits when in-flight requests are done.
//!   After `drain_timeout` the master kills the worker's process group.
//! - Environment: `BATON_WORKER_ID`, and `BATON_STOP_SIGNAL` (the stop
//!   signal's name); `BATON_RELEASE` and `BATON_SHA256` when it runs a
//!   release. Otherwise a worker (and a probe) gets the master's
//!   environment without the fetch credentials (the github source's
//!   `token_env`, the AWS keys with the s3 source) unless `[program]
//!   pass_env` names them ([`ChildEnv`]).
//! - Probe: `<binary> --probe` with `BATON_PROBE=1` prints the version and
//!   exits 0; [`run`] does this before any user code.
//!
//! # Limitations
//!
//! - `http:` readiness during a cycle may be answered by the old worker,
//!   since both accept on the same socket; prefer `notify`.
//! - Workers live in their own process group; whatever is left in it when the
//!   worker exits is killed, before the worker is reaped. The master is a
//!   child subreaper and reaps what a worker orphans; a process that left
//!   the worker's group (`setsid`) is reaped when it exits, not killed.
//! - The library's server helper speaks HTTP/1.1.
#![deny(missing_docs)]

mod child_env;
mod command;
pub mod config;
pub mod control;
pub mod delta;
mod errors;
pub mod fetchers;
pub mod fleet;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
mod hooks;
pub mod logging;
pub mod manifest;
pub mod master;
mod protocol;
pub mod publish;
mod reaper;
pub mod release;
pub mod serve;
mod sockets;
mod sys;
mod time;
mod url;
pub mod version;
mod worker;

use std::future::Future;

#[cfg(test)]
mod layering;

pub use child_env::ChildEnv;
pub use config::{Config, Program, Secret};
pub use errors::display_chain;
pub use worker::Worker;

/// An error from [`run`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options or config are invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The master could not start.
    #[error(transparent)]
    Master(#[from] master::Error),
    /// The worker could not take its sockets.
    #[error("cannot set up the worker")]
    Worker(#[source] std::io::Error),
    /// The user's serving code returned an error.
    #[error("the service failed")]
    Serve(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The master was stopped hard (a second SIGTERM/SIGINT).
    #[error("stopped hard: workers were killed")]
    StoppedHard,
}

/// Which part this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `--probe` or `BATON_PROBE=1`: print the version and exit.
    Probe,
    /// Started by a master (or systemd) with sockets to serve on.
    Worker,
    /// Started by a person or a supervisor: hold the sockets, run workers.
    Master,
}

/// The part this process plays, from its arguments and environment.
pub fn role() -> Role {
    use protocol::{BATON_PROBE, BATON_WORKER_ID, LISTEN_PID};
    if std::env::var_os(BATON_PROBE).is_some_and(|v| v == "1")
        || std::env::args_os().nth(1).is_some_and(|a| a == "--probe")
    {
        Role::Probe
    } else if std::env::var_os(BATON_WORKER_ID).is_some()
        || std::env::var(LISTEN_PID).is_ok_and(|p| p == std::process::id().to_string())
    {
        Role::Worker
    } else {
        Role::Master
    }
}

/// Library-mode settings for [`run`].
#[derive(Debug, Clone)]
pub struct Options {
    version: String,
    listen: Vec<String>,
    program: Program,
    standalone: bool,
    fetch: Option<config::Fetch>,
    verify: config::Verify,
    reexec_on_upgrade: bool,
}

impl Options {
    /// Options for a service of this version (printed by `--probe`).
    pub fn new(version: impl Into<String>) -> Options {
        let mut program = Program::new("");
        program.ready = config::Ready::Notify;
        Options {
            version: version.into(),
            listen: Vec::new(),
            program,
            standalone: false,
            fetch: None,
            verify: config::Verify::default(),
            reexec_on_upgrade: false,
        }
    }

    /// Once a fetched build of this executable is promoted, the master
    /// re-executes into it as well (same PID; sockets and workers kept, as
    /// `baton reexec` does), so the master's own code is upgraded too, not
    /// only the workers'. The new build is probed (`--probe`) first; code
    /// before [`run`] in `main` runs again in the master. Off by default.
    pub fn reexec_on_upgrade(mut self, on: bool) -> Options {
        self.reexec_on_upgrade = on;
        self
    }

    /// Fetch new builds from this source; each verified build replaces
    /// this executable in place (self-replace) and the master cycles onto it.
    pub fn fetch(mut self, fetch: config::Fetch) -> Options {
        self.fetch = Some(fetch);
        self
    }

    /// What a fetched build must pass (defaults: probe `--probe`, no pin,
    /// no key, no downgrade, 512 MiB at most).
    pub fn verify(mut self, verify: config::Verify) -> Options {
        self.verify = verify;
        self
    }

    /// Adds an address to listen on (`[name=]127.0.0.1:8080`, `unix:PATH`,
    /// `udp:ADDR`), as in the config's `program.listen`.
    pub fn listen(mut self, addr: impl Into<String>) -> Options {
        self.listen.push(addr.into());
        self
    }

    /// How long a new worker has to call [`Worker::ready`] (default 30 s).
    pub fn ready_timeout(mut self, timeout: std::time::Duration) -> Options {
        self.program.ready_timeout = timeout;
        self
    }

    /// How long a draining worker has before it is killed (default 30 s).
    pub fn drain_timeout(mut self, timeout: std::time::Duration) -> Options {
        self.program.drain_timeout = timeout;
        self
    }

    /// Lets workers and probes see this fetch credential after all (as
    /// `[program] pass_env`): by default they get the master's environment
    /// without the fetch source's token or keys.
    pub fn pass_env(mut self, name: impl Into<String>) -> Options {
        self.program.pass_env.push(name.into());
        self
    }

    /// Serve directly without a master (no cycles): for development, and for
    /// measuring the service alone.
    pub fn standalone(mut self, standalone: bool) -> Options {
        self.standalone = standalone;
        self
    }

    fn program(&self) -> Result<Program, Error> {
        let mut program = self.program.clone();
        program.command = std::env::current_exe().map_err(Error::Runtime)?;
        program.args = std::env::args().skip(1).collect();
        program.workdir = std::env::current_dir().map_err(Error::Runtime)?;
        program.listen = self
            .listen
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let mut l: config::Listen =
                    text.parse().map_err(|reason| config::Error::Invalid {
                        key: "listen".into(),
                        value: text.clone(),
                        reason,
                    })?;
                if l.name.is_empty() {
                    l.name = format!("listen{i}");
                }
                Ok(l)
            })
            .collect::<Result<_, Error>>()?;
        if program.listen.is_empty() {
            return Err(config::Error::Invalid {
                key: "listen".into(),
                value: "[]".into(),
                reason: "give at least one address with Options::listen".into(),
            }
            .into());
        }
        Ok(program)
    }
}

/// Runs this process in the part [`role`] names:
///
/// - probe: prints the version and returns, before any user code;
/// - worker: takes the inherited sockets, installs the stop-signal handler,
///   and runs `serve` on a multi-threaded tokio runtime;
/// - master: binds the sockets and supervises workers (this same binary)
///   until SIGTERM/SIGINT, cycling on SIGHUP/SIGUSR2.
pub fn run<F, Fut, E>(options: Options, serve: F) -> Result<(), Error>
where
    F: FnOnce(Worker) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match role() {
        Role::Probe => {
            println!("{}", options.version);
            Ok(())
        }
        Role::Worker => run_worker(serve, |rx| Worker::from_env(rx).map_err(Error::Worker)),
        Role::Master if options.standalone => {
            let program = options.program()?;
            run_worker(serve, |rx| {
                Worker::standalone(&program.listen, rx).map_err(|e| Error::Master(e.into()))
            })
        }
        Role::Master => {
            let program = options.program()?;
            if !tracing::dispatcher::has_been_set() {
                let format = logging::LogFormat::from_env();
                logging::init(format.clone().unwrap_or_default());
                if let Err(e) = format {
                    tracing::warn!("{e}; logging as text");
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::Runtime)?;
            let config = Config {
                program,
                releases: None,
                fetch: options.fetch,
                verify: options.verify,
                control: config::Control::default(),
                hooks: config::Hooks::default(),
                self_channel: None,
            };
            match rt.block_on(master::run_library(config, options.reexec_on_upgrade))? {
                master::Stopped::Graceful => Ok(()),
                master::Stopped::Hard => Err(Error::StoppedHard),
            }
        }
    }
}

fn run_worker<F, Fut, E>(
    serve: F,
    make: impl FnOnce(tokio::sync::watch::Receiver<bool>) -> Result<Worker, Error>,
) -> Result<(), Error>
where
    F: FnOnce(Worker) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(async {
        let rx = stop_signals().map_err(Error::Worker)?;
        let worker = make(rx)?;
        serve(worker).await.map_err(|e| Error::Serve(e.into()))
    })
}

/// Installs handlers for SIGTERM, SIGINT and `BATON_STOP_SIGNAL` before any
/// user code runs, so a stop request is never lost nor kills the worker
/// outright.
fn stop_signals() -> std::io::Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut kinds = vec![SignalKind::terminate(), SignalKind::interrupt()];
    if let Some(sig) = std::env::var(protocol::BATON_STOP_SIGNAL)
        .ok()
        .and_then(|s| s.parse::<config::Signal>().ok())
    {
        kinds.push(SignalKind::from_raw(sig.number()));
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    for kind in kinds {
        let mut stream = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            if stream.recv().await.is_some() {
                let _ = tx.send(true);
            }
        });
    }
    Ok(rx)
}
