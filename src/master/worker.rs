//! One worker process: spawning it with the sockets and the protocol's
//! environment, signalling it, and reporting its exit with its last stderr
//! lines. Its process group is killed before it is reaped (see the owner
//! task in [`Worker::spawn`]).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::child_env::ChildEnv;
use crate::config::Program;
use crate::protocol;
use crate::reaper;
use crate::sockets::Sockets;
use crate::sys::{self, ExecPlan};

/// How many stderr lines are kept for failure reports.
const TAIL_LINES: usize = 20;
/// The longest stderr line read at once.
const LINE_LIMIT: u64 = 8 << 10;

/// What a worker's owner task reports to the master loop.
#[derive(Debug)]
pub(crate) enum Exit {
    /// The worker with this id was reaped.
    Exited {
        /// Worker id.
        id: u64,
        /// Its exit status.
        status: ExitStatus,
    },
}

/// A worker's last stderr lines, kept as they are written: shared by the
/// task that forwards the stderr and whoever reports the worker's failure.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    /// A tail holding the last [`TAIL_LINES`] of `lines`.
    pub(crate) fn from_lines(lines: Vec<String>) -> Tail {
        let mut kept = VecDeque::with_capacity(TAIL_LINES);
        kept.extend(lines.into_iter().rev().take(TAIL_LINES).rev());
        Tail(Arc::new(Mutex::new(kept)))
    }

    /// Adds a line, dropping the oldest beyond [`TAIL_LINES`].
    pub(crate) fn push(&self, line: String) {
        let mut tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }

    /// The lines, oldest first.
    pub(crate) fn lines(&self) -> Vec<String> {
        let tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect()
    }
}

/// A running worker process, as the driver holds it (its state is the
/// core's).
pub(crate) struct Worker {
    /// Process id (also its process group id).
    pub pid: u32,
    signals: mpsc::UnboundedSender<(Signal, bool)>,
    tail: Tail,
    /// The read end of its stderr pipe (owned by the forwarding task), for
    /// handing over across the master's `execve`.
    stderr_fd: Option<RawFd>,
}

/// What every worker is started with: the program's settings, the
/// children's environment, the sockets, the notify socket, and where exits
/// are reported.
pub(crate) struct Launcher<'a> {
    /// `[program]`: arguments, workdir, stop signal.
    pub program: &'a Program,
    /// What workers inherit besides the protocol's variables.
    pub env: &'a ChildEnv,
    /// The listening sockets.
    pub sockets: &'a Sockets,
    /// The notify socket's path.
    pub notify_socket: &'a Path,
    /// Where the exit is reported.
    pub exits: &'a mpsc::UnboundedSender<Exit>,
}

/// A worker process that is this process's child, to be owned.
struct Child {
    id: u64,
    pid: u32,
    stderr: Option<OwnedFd>,
    tail: Tail,
    own: reaper::Own,
    sigchld: tokio::signal::unix::Signal,
}

impl Worker {
    /// Starts `command` (argv[0] as given; a bare name is looked up in
    /// `PATH`) with the program's arguments, workdir and stop signal, on
    /// the launcher's sockets. Its environment is the launcher's, then
    /// `extra_env` (such as `BATON_RELEASE`), then the protocol's
    /// variables.
    pub(crate) fn spawn(
        id: u64,
        command: &Path,
        extra_env: &[(String, String)],
        with: &Launcher<'_>,
    ) -> io::Result<Worker> {
        let program = with.program;
        let path = resolve_command(command)?;
        let fds = with.sockets.raw_fds();
        let count = fds.len().to_string();
        let (names, id_text) = (with.sockets.names(), id.to_string());
        let stop = program.stop_signal.to_string();
        let protocol = [
            (protocol::LISTEN_FDS, OsStr::new(&count)),
            (protocol::LISTEN_FDNAMES, OsStr::new(&names)),
            (protocol::NOTIFY_SOCKET, with.notify_socket.as_os_str()),
            (protocol::BATON_WORKER_ID, OsStr::new(&id_text)),
            (protocol::BATON_STOP_SIGNAL, OsStr::new(&stop)),
        ];
        let vars = with
            .env
            .vars()
            .iter()
            .map(|(k, v)| (k.as_os_str(), v.as_os_str()))
            .chain(
                extra_env
                    .iter()
                    .map(|(k, v)| (OsStr::new(k), OsStr::new(v))),
            )
            .chain(protocol.iter().map(|&(k, v)| (OsStr::new(k), v)));
        let argv = std::iter::once(command.as_os_str()).chain(program.args.iter().map(OsStr::new));
        let plan = ExecPlan::new(
            path.as_os_str(),
            argv,
            vars,
            fds,
            program.stop_signal.number(),
        )?;

        let mut cmd = std::process::Command::new(&path);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .current_dir(&program.workdir)
            .process_group(0);
        plan.attach(&mut cmd);
        // Created before the child exists, so its exit cannot go unnoticed.
        let sigchld = signal(SignalKind::child())?;
        let (mut child, own) =
            reaper::spawn_own(|| cmd.spawn(), |c| Some(c.id())).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot start {}: {e}", path.display()))
            })?;
        let pid = child.id();
        let stderr = child.stderr.take().map(OwnedFd::from);
        // The owner task reaps it by PID (see `own`), not through `child`.
        drop(child);
        let child = Child {
            id,
            pid,
            stderr,
            tail: Tail::default(),
            own,
            sigchld,
        };
        Ok(Worker::own(child, with.exits.clone()))
    }

    /// Takes over a worker that a previous master (this same process, before
    /// its `execve`) started: `pid` is still this process's child, `stderr`
    /// the read end of its stderr pipe. `tail` holds the last lines it wrote.
    pub(crate) fn adopt(
        (id, pid): (u64, u32),
        stderr: Option<OwnedFd>,
        tail: Vec<String>,
        own: reaper::Own,
        exits: mpsc::UnboundedSender<Exit>,
    ) -> io::Result<Worker> {
        // `own` registered it before anything could reap it.
        let sigchld = signal(SignalKind::child())?;
        let child = Child {
            id,
            pid,
            stderr,
            tail: Tail::from_lines(tail),
            own,
            sigchld,
        };
        Ok(Worker::own(child, exits))
    }

    /// Starts the tasks that own a worker: one forwards its stderr (keeping
    /// the last lines), one waits for its exit, signals it on request, kills
    /// its group and reaps it.
    fn own(child: Child, exits: mpsc::UnboundedSender<Exit>) -> Worker {
        let Child {
            id,
            pid,
            stderr,
            tail,
            own,
            mut sigchld,
        } = child;
        let raw = Pid::from_raw(pid as i32);
        let stderr_fd = stderr.as_ref().map(|fd| fd.as_raw_fd());
        let stderr = stderr
            .and_then(|e| pipe::Receiver::from_owned_fd(e).ok())
            .map(|stderr| {
                let tail = tail.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr);
                    let mut line = Vec::new();
                    let mut out = tokio::io::stderr();
                    // A line is cut at LINE_LIMIT bytes: a worker writing
                    // without newlines cannot grow the master's memory.
                    while (&mut lines)
                        .take(LINE_LIMIT)
                        .read_until(b'\n', &mut line)
                        .await
                        .unwrap_or(0)
                        > 0
                    {
                        let _ = out.write_all(&line).await;
                        tail.push(String::from_utf8_lossy(&line).trim_end().to_owned());
                        line.clear();
                    }
                })
            });

        let (signals, mut requests) = mpsc::unbounded_channel::<(Signal, bool)>();
        // The owner task is the only place that reaps this child. Until it
        // does, the worker's PID and group id (its PID) stay reserved, even
        // as a zombie: so it waits for the exit without reaping
        // (waitid WNOWAIT), kills the group, and only then reaps.
        tokio::spawn(async move {
            let exited = loop {
                match sys::has_exited(raw) {
                    Ok(false) => {}
                    Ok(true) => break true,
                    Err(e) => {
                        tracing::warn!(worker = id, pid, "cannot wait for the worker: {e}");
                        break false;
                    }
                }
                tokio::select! {
                    Some(()) = sigchld.recv() => {}
                    Some((sig, group)) = requests.recv() => {
                        let target = if group { -(pid as i32) } else { pid as i32 };
                        let _ = kill(Pid::from_raw(target), sig);
                    }
                    // The runtime is shutting down with the master.
                    else => return,
                }
            };
            if exited {
                // Whatever the worker left in its group goes with it; the
                // zombie still holds the group id.
                let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
            }
            let status = sys::reap_exited(raw).unwrap_or_else(|e| {
                // Nobody else reaps it (see `reaper`), so this is not
                // expected; say so rather than report a clean exit.
                tracing::error!(
                    worker = id,
                    pid,
                    "cannot read the worker's exit status: {e}; reporting it as exit code 255"
                );
                std::os::unix::process::ExitStatusExt::from_raw(255 << 8)
            });
            drop(own);
            if let Some(mut reader) = stderr {
                // Collect the last lines, unless a process outside the
                // group holds the pipe: then stop reading rather than leak
                // the task.
                if tokio::time::timeout(Duration::from_millis(200), &mut reader)
                    .await
                    .is_err()
                {
                    reader.abort();
                }
            }
            let _ = exits.send(Exit::Exited { id, status });
        });

        Worker {
            pid,
            signals,
            tail,
            stderr_fd,
        }
    }

    /// Sends `sig` to the worker process.
    pub(crate) fn signal(&self, sig: Signal) {
        let _ = self.signals.send((sig, false));
    }

    /// SIGKILL to the worker's whole process group.
    pub(crate) fn kill(&self) {
        let _ = self.signals.send((Signal::SIGKILL, true));
    }

    /// The read end of the worker's stderr pipe, while it is forwarded.
    pub(crate) fn stderr_fd(&self) -> Option<RawFd> {
        self.stderr_fd
    }

    /// The last lines the worker wrote to stderr, as they come.
    pub(crate) fn tail(&self) -> &Tail {
        &self.tail
    }
}

/// A command with a slash is used as written; a bare name is looked up in
/// `PATH`, as execvp would.
fn resolve_command(command: &Path) -> io::Result<PathBuf> {
    if command.as_os_str().as_bytes().contains(&b'/') {
        return Ok(command.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found in PATH", command.display()),
            )
        })
}
