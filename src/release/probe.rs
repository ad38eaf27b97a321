//! Runs `<candidate> <probe args>` to prove it runs on this host: no
//! sockets, stdin closed, the children's environment ([`ChildEnv`]: no
//! fetch credentials) with `BATON_PROBE=1`, in its own process group, which
//! is killed when the probe exits or times out, before the probe is reaped.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal as Sig};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::Error;
use crate::protocol::{self, ChildEnv};
use crate::reaper::{self, Own};

const OUTPUT_LIMIT: usize = 64 << 10;

/// Runs the probe; returns the last non-empty line of its output (which
/// names its version: see [`super::verify::probe_version`]).
pub async fn run(
    binary: &Path,
    args: &[String],
    timeout: Duration,
    env: &ChildEnv,
) -> Result<String, Error> {
    let io_error = |source| Error::Io {
        what: "wait for",
        path: binary.to_owned(),
        source,
    };
    // Created before the child exists, so its exit cannot go unnoticed.
    let mut sigchld = signal(SignalKind::child()).map_err(io_error)?;
    let (mut child, _own) = spawn(binary, args, env).await?;
    let pid = child.id().map(|p| p as i32);
    // Read both pipes while waiting, so a chatty probe never blocks on a
    // full pipe; stop at the exit (plus a short grace), not at the pipes'
    // end, which a background process may hold open.
    let out = tokio::spawn(read_capped(child.stdout.take().expect("piped")));
    let err = tokio::spawn(read_capped(child.stderr.take().expect("piped")));
    let result = match pid {
        Some(pid) => {
            let exited = tokio::time::timeout(timeout, exit_unreaped(pid, &mut sigchld)).await;
            // Whatever the probe left behind in its group goes, timeout or
            // not, while the unreaped probe still holds the group id.
            let _ = kill(Pid::from_raw(-pid), Sig::SIGKILL);
            match exited {
                Ok(Ok(())) => Ok(child.wait().await),
                Ok(Err(e)) => Ok(Err(e)),
                Err(elapsed) => Err(elapsed),
            }
        }
        None => tokio::time::timeout(timeout, child.wait()).await,
    };
    let status = match result {
        Ok(status) => status,
        Err(_) => {
            let _ = child.wait().await;
            out.abort();
            err.abort();
            return Err(Error::ProbeTimeout { limit: timeout });
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
    let status = status.map_err(io_error)?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let err = String::from_utf8_lossy(&err).into_owned();
    if !status.success() {
        return Err(Error::ProbeFailed {
            status: crate::protocol::describe_exit(&status),
            output: tail(&format!("{out}{err}")),
        });
    }
    Ok(out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned())
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

/// Waits until the probe `pid` has exited, without reaping it.
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
    env: &ChildEnv,
) -> Result<(tokio::process::Child, Own), Error> {
    // A freshly written file can be briefly "busy" when another thread forks
    // while it is open for writing; retry that case only.
    let mut attempts = 0;
    loop {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(args)
            .env_clear()
            .envs(env.vars().iter().map(|(k, v)| (k, v)))
            .env(protocol::BATON_PROBE, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        match reaper::spawn_own(|| cmd.spawn(), |c| c.id()) {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(source) => {
                return Err(Error::ProbeSpawn {
                    path: binary.to_owned(),
                    source,
                })
            }
        }
    }
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(5);
    if lines.is_empty() {
        "no output".to_owned()
    } else {
        lines[start..].join(" | ")
    }
}
