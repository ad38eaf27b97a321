//! The master: holds the sockets and a stable PID, runs workers, and drives
//! graceful cycles. A core that decides (`core`: state in, actions out, no
//! I/O, tested under a fake clock) and a driver that does (`driver`: one
//! `select!` loop that owns every descriptor, channel and task). Worker
//! processes report through a channel, signals through tokio's buffered
//! signal streams (a signal is never lost; repeats of one signal while it
//! is pending coalesce). `boot` starts it all, fresh or across a re-exec.

mod accept;
mod boot;
pub(crate) mod control;
mod core;
mod driver;
mod event;
mod health;
pub(crate) mod metrics;
mod notify;
mod ready;
mod reexec;
mod self_update;
pub use self_update::watchdog as self_watchdog;
mod store_io;
mod trial;
mod update;
mod worker;

use std::path::PathBuf;

use crate::config::Config;

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
    let (driver, inbox, first) = boot::boot(config, config_path, self_upgrade).await?;
    Ok(driver.run(inbox, first).await)
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stopped::Graceful => "graceful",
            Stopped::Hard => "hard",
        })
    }
}
