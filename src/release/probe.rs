//! Runs `<candidate> <probe args>` to prove it runs on this host: no
//! sockets, stdin closed, `BATON_PROBE=1`, in its own process group, killed
//! as a group at the timeout.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

use super::Error;

const OUTPUT_LIMIT: usize = 64 << 10;

/// Runs the probe; returns the last non-empty line of its output. When
/// `expected` is given, that line must contain it.
pub async fn run(
    binary: &Path,
    args: &[String],
    timeout: Duration,
    expected: Option<&str>,
) -> Result<String, Error> {
    let mut child = spawn(binary, args).await?;
    let pid = child.id().map(|p| p as i32);
    // Read both pipes while waiting, so a chatty probe never blocks on a
    // full pipe; stop at the exit (plus a short grace), not at the pipes'
    // end, which a background process may hold open.
    let out = tokio::spawn(read_capped(child.stdout.take().expect("piped")));
    let err = tokio::spawn(read_capped(child.stderr.take().expect("piped")));
    let result = tokio::time::timeout(timeout, child.wait()).await;
    // Whatever the probe left behind in its group goes, timeout or not.
    if let Some(pid) = pid {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    }
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
    let status = status.map_err(|source| Error::Io {
        what: "wait for",
        path: binary.to_owned(),
        source,
    })?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let err = String::from_utf8_lossy(&err).into_owned();
    if !status.success() {
        return Err(Error::ProbeFailed {
            status: crate::master::describe_exit(&status),
            output: tail(&format!("{out}{err}")),
        });
    }
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned();
    if let Some(version) = expected {
        if !last.contains(version) {
            return Err(Error::ProbeVersion {
                expected: version.to_owned(),
                output: tail(&out),
            });
        }
    }
    Ok(last)
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

async fn spawn(binary: &Path, args: &[String]) -> Result<tokio::process::Child, Error> {
    // A freshly written file can be briefly "busy" when another thread forks
    // while it is open for writing; retry that case only.
    let mut attempts = 0;
    loop {
        let spawned = tokio::process::Command::new(binary)
            .args(args)
            .env("BATON_PROBE", "1")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("BATON_WORKER_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        match spawned {
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
