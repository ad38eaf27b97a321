//! Runs a short-lived helper command (a candidate's probe, an `exec:`
//! health check) in its own process group, with the children's
//! environment, stdin closed and both pipes read (capped) while it runs.
//! At its exit or its timeout the whole group is killed while the command,
//! not yet reaped, still holds the group id; then it is reaped.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal as Sig};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::reaper::{self, Own};

const OUTPUT_LIMIT: usize = 64 << 10;

/// What a command printed and how it ended.
#[derive(Debug)]
pub(crate) struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output (the first 64 KiB), lossily decoded.
    pub stdout: String,
    /// Its standard error (the first 64 KiB), lossily decoded.
    pub stderr: String,
}

/// Why a command gave no [`Output`].
#[derive(Debug)]
pub(crate) enum Failure {
    /// It could not be started.
    Spawn(std::io::Error),
    /// Its exit could not be waited for.
    Wait(std::io::Error),
    /// It ran past its timeout; it was killed with its group.
    Timeout,
}

/// Runs `binary args` with exactly `env` as its environment (in `cwd` when
/// given), for at most `timeout`.
pub(crate) async fn run(
    binary: &Path,
    args: &[String],
    env: &[(OsString, OsString)],
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<Output, Failure> {
    // Created before the child exists, so its exit cannot go unnoticed.
    let mut sigchld = signal(SignalKind::child()).map_err(Failure::Wait)?;
    let (mut child, _own) = spawn(binary, args, env, cwd)
        .await
        .map_err(Failure::Spawn)?;
    let pid = child.id().map(|p| p as i32);
    // If this future is dropped (its caller aborted), the command's whole
    // group goes, while the unreaped leader still holds the group id.
    let mut guard = GroupGuard(pid);
    // Read both pipes while waiting, so a chatty command never blocks on a
    // full pipe; stop at the exit (plus a short grace), not at the pipes'
    // end, which a background process may hold open.
    let out = tokio::spawn(read_capped(child.stdout.take().expect("piped")));
    let err = tokio::spawn(read_capped(child.stderr.take().expect("piped")));
    let result = match pid {
        Some(pid) => {
            let exited = tokio::time::timeout(timeout, exit_unreaped(pid, &mut sigchld)).await;
            // Whatever the command left behind in its group goes, timeout or
            // not, while the unreaped command still holds the group id.
            let _ = kill(Pid::from_raw(-pid), Sig::SIGKILL);
            guard.0 = None;
            match exited {
                Ok(Ok(())) => Ok(child.wait().await),
                Ok(Err(e)) => Ok(Err(e)),
                Err(elapsed) => Err(elapsed),
            }
        }
        None => tokio::time::timeout(timeout, child.wait()).await,
    };
    let status = match result {
        Ok(status) => status.map_err(Failure::Wait)?,
        Err(_) => {
            let _ = child.wait().await;
            out.abort();
            err.abort();
            return Err(Failure::Timeout);
        }
    };
    let collect = |task: tokio::task::JoinHandle<Vec<u8>>| async move {
        let abort = task.abort_handle();
        match tokio::time::timeout(Duration::from_millis(500), task).await {
            Ok(Ok(bytes)) => bytes,
            _ => {
                abort.abort();
                Vec::new()
            }
        }
    };
    let (out, err) = (collect(out).await, collect(err).await);
    Ok(Output {
        status,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

/// Kills a command's process group when dropped before it was reaped.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(Pid::from_raw(-pid), Sig::SIGKILL);
        }
    }
}

/// The last (up to five) non-empty lines of `output`, joined with ` | `.
pub(crate) fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(5);
    if lines.is_empty() {
        "no output".to_owned()
    } else {
        lines[start..].join(" | ")
    }
}

/// Reads a pipe to its end, keeping the first `OUTPUT_LIMIT` bytes.
async fn read_capped(mut pipe: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Waits until the child `pid` has exited, without reaping it.
async fn exit_unreaped(pid: i32, sigchld: &mut Signal) -> std::io::Result<()> {
    while !crate::sys::has_exited(Pid::from_raw(pid))? {
        if sigchld.recv().await.is_none() {
            return Err(std::io::Error::other(
                "the runtime stopped watching SIGCHLD",
            ));
        }
    }
    Ok(())
}

async fn spawn(
    binary: &Path,
    args: &[String],
    env: &[(OsString, OsString)],
    cwd: Option<&Path>,
) -> std::io::Result<(tokio::process::Child, Own)> {
    // A freshly written file can be briefly "busy" when another thread forks
    // while it is open for writing; retry that case only.
    let mut attempts = 0;
    loop {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        match reaper::spawn_own(|| cmd.spawn(), |c| c.id()) {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}
