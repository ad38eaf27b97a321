//! One worker process: spawning it with the sockets and the protocol's
//! environment, signalling it, and reporting its exit with its last stderr
//! lines.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::sockets::Sockets;
use crate::config::Program;
use crate::sys::ExecPlan;

/// How many stderr lines are kept for failure reports.
const TAIL_LINES: usize = 20;
/// The longest stderr line read at once.
const LINE_LIMIT: u64 = 8 << 10;

/// Variables of the master's own environment that must not leak into a
/// worker: they describe the master's sockets and supervisor, not the worker's.
const PRIVATE_VARS: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "BATON_WORKER_ID",
    "BATON_PROBE",
    "BATON_STOP_SIGNAL",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

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
    },
    /// Killed by the master (failed start or drain deadline); awaiting reap.
    Killed,
}

/// A running worker, as the master sees it.
pub(crate) struct Worker {
    /// Sequence number, also `BATON_WORKER_ID`.
    pub id: u64,
    /// Process id (also its process group id).
    pub pid: u32,
    /// Where it is in its life.
    pub state: State,
    /// The worker's last `STATUS=` message.
    pub status: Option<String>,
    signals: mpsc::UnboundedSender<(Signal, bool)>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Worker {
    /// Starts a worker; its exit will arrive on `exits`.
    pub(crate) fn spawn(
        id: u64,
        program: &Program,
        sockets: &Sockets,
        notify_socket: &Path,
        exits: mpsc::UnboundedSender<Exit>,
    ) -> io::Result<Worker> {
        let path = resolve_command(&program.command)?;
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !PRIVATE_VARS.iter().any(|p| OsStr::new(p) == k))
            .filter(|(k, _)| !program.env.contains_key(&*k.to_string_lossy()))
            .collect();
        env.extend(program.env.iter().map(|(k, v)| (k.into(), v.into())));
        let fds = sockets.raw_fds();
        env.push(("LISTEN_FDS".into(), fds.len().to_string().into()));
        env.push(("LISTEN_FDNAMES".into(), sockets.names().into()));
        env.push(("NOTIFY_SOCKET".into(), notify_socket.into()));
        env.push(("BATON_WORKER_ID".into(), id.to_string().into()));
        env.push((
            "BATON_STOP_SIGNAL".into(),
            program.stop_signal.to_string().into(),
        ));
        let argv0 = program.command.as_os_str();
        let argv = std::iter::once(argv0).chain(program.args.iter().map(OsStr::new));
        let mut plan = ExecPlan::new(
            path.as_os_str(),
            argv,
            env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())),
            fds,
            program.stop_signal.number(),
        )?;

        let mut cmd = tokio::process::Command::new(&path);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .current_dir(&program.workdir)
            .process_group(0);
        // SAFETY: the closure runs in the forked child and only makes the
        // async-signal-safe calls of `ExecPlan::exec_in_child`; it never
        // returns on success because it execs.
        unsafe {
            cmd.pre_exec(move || Err(plan.exec_in_child()));
        }
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e}", path.display()))
        })?;
        let pid = child.id().expect("a child that was just spawned has a pid");

        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let stderr = child.stderr.take().map(|stderr| {
            let tail = tail.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr);
                let mut line = Vec::new();
                let mut out = tokio::io::stderr();
                // A line is cut at LINE_LIMIT bytes: a worker writing without
                // newlines cannot grow the master's memory.
                while (&mut lines)
                    .take(LINE_LIMIT)
                    .read_until(b'\n', &mut line)
                    .await
                    .unwrap_or(0)
                    > 0
                {
                    let _ = out.write_all(&line).await;
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(text);
                    line.clear();
                }
            })
        });

        let (signals, mut requests) = mpsc::unbounded_channel::<(Signal, bool)>();
        // The owner task is the only place that reaps this child, so a signal
        // to the worker's own PID never reaches a recycled one. (The group
        // kill after the reap can, in theory, meet a recycled group id.)
        tokio::spawn(async move {
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    Some((sig, group)) = requests.recv() => {
                        let target = if group { -(pid as i32) } else { pid as i32 };
                        let _ = kill(Pid::from_raw(target), sig);
                    }
                }
            };
            if let Some(mut reader) = stderr {
                // Collect the last lines, unless a grandchild holds the pipe:
                // then stop reading rather than leak the task.
                if tokio::time::timeout(Duration::from_millis(200), &mut reader)
                    .await
                    .is_err()
                {
                    reader.abort();
                }
            }
            // Whatever the worker left in its group goes with it.
            let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
            let status =
                status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(0));
            let _ = exits.send(Exit::Exited { id, status });
        });

        Ok(Worker {
            id,
            pid,
            state: State::Starting,
            status: None,
            signals,
            tail,
        })
    }

    /// Sends `sig` to the worker process.
    pub(crate) fn signal(&self, sig: Signal) {
        let _ = self.signals.send((sig, false));
    }

    /// SIGKILL to the worker's whole process group.
    pub(crate) fn kill(&mut self) {
        let _ = self.signals.send((Signal::SIGKILL, true));
        self.state = State::Killed;
    }

    /// The last lines the worker wrote to stderr.
    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        self.tail.lock().unwrap().iter().cloned().collect()
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

/// Describes an exit status as people read it: `exit code 3`, `signal 9 (SIGKILL)`.
pub(crate) fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("signal {sig} ({})", s.as_str()),
            Err(_) => format!("signal {sig}"),
        },
        _ => status.to_string(),
    }
}
