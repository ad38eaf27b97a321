//! The master's children: its own, and the orphans it adopts.
//!
//! The master is a child subreaper (`PR_SET_CHILD_SUBREAPER`; as PID 1 in a
//! container it is one anyway): what a worker or probe leaves behind is
//! reparented to the master instead of init, and must be reaped here or it
//! stays a zombie. So the master has two kinds of children:
//!
//! - its own — workers and probes — each waited for by the code that started
//!   it, which needs the exit status (and, for a worker, needs the zombie to
//!   keep holding its PID and group id until the group is killed);
//! - adopted orphans, which nobody else waits for.
//!
//! A blanket `waitpid(-1)` would steal the exit status of its own children.
//! Instead, every child the master waits for itself is started through
//! [`spawn_own`], which records its PID in a registry under a lock held
//! across the spawn; and the reaper task, on every SIGCHLD, peeks at the
//! first exited child with `waitid(P_ALL, WNOHANG | WNOWAIT)` (which reaps
//! nothing) and reaps it with `waitpid(pid, WNOHANG)` only when it is not
//! registered, then peeks again. When the first exited child is a registered
//! one, its owner is about to reap it (it saw the same SIGCHLD), and the
//! reaper looks again shortly after. The peek and the reap run under the
//! registry's lock, so no child is reaped between its spawn and its
//! registration, and a peeked zombie's PID cannot be reused before the reap.
//!
//! A child in the master's own process group is never reaped here either:
//! only code in this process starts those (a library spawning a helper and
//! waiting for it), while a worker's orphans are in the worker's group or
//! one of their own.
//!
//! A process that left the worker's group (`setsid`) is not killed with the
//! group; it is reaped when it exits.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use crate::sys;

/// PIDs of the children whose owners reap them.
static OWN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// How soon the reaper looks again while an owned child's exit is pending.
const RETRY: Duration = Duration::from_millis(50);

fn own() -> MutexGuard<'static, BTreeSet<i32>> {
    OWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a child's PID registered as owned until dropped: drop it after the
/// child is reaped.
#[derive(Debug)]
pub(crate) struct Own(Option<i32>);

impl Drop for Own {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            own().remove(&pid);
        }
    }
}

/// Starts a child that the caller reaps itself (`spawn`, whose result names
/// the PID through `pid`), so that the reaper never takes its exit status.
pub(crate) fn spawn_own<T>(
    spawn: impl FnOnce() -> io::Result<T>,
    pid: impl FnOnce(&T) -> Option<u32>,
) -> io::Result<(T, Own)> {
    let mut registry = own();
    let child = spawn()?;
    let pid = pid(&child).map(|p| p as i32);
    if let Some(p) = pid {
        registry.insert(p);
    }
    Ok((child, Own(pid)))
}

/// Registers `pid`, a child this process already has (a worker adopted
/// across the master's own `execve`), as reaped by its owner.
pub(crate) fn register(pid: i32) -> Own {
    own().insert(pid);
    Own(Some(pid))
}

/// The running reaper; dropping it stops the task (the process stays a
/// subreaper).
#[derive(Debug)]
pub(crate) struct Reaper(tokio::task::JoinHandle<()>);

impl Drop for Reaper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Makes this process a child subreaper and starts reaping adopted orphans.
/// Failures are logged: the master runs on without them.
pub(crate) fn start() -> Reaper {
    if let Err(e) = sys::become_subreaper() {
        tracing::warn!("cannot become a child subreaper; orphans of workers go to init: {e}");
    }
    Reaper(tokio::spawn(async move {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch SIGCHLD; orphans of workers are not reaped: {e}");
                return;
            }
        };
        loop {
            if reap_orphans() {
                tokio::select! {
                    Some(()) = sigchld.recv() => {}
                    _ = tokio::time::sleep(RETRY) => {}
                }
            } else if sigchld.recv().await.is_none() {
                return;
            }
        }
    }))
}

/// Reaps every exited child that is not owned; true when an owned child's
/// exit stands first in line (its owner will reap it; look again soon).
fn reap_orphans() -> bool {
    let registry = own();
    while let Some(pid) = sys::first_exited_child() {
        // Children in the master's own process group were started by code
        // in this process that waits for them itself (a library spawning a
        // helper, such as an AWS credential_process): never take their
        // exit status. Orphans of workers are in a worker's group, or in
        // one of their own.
        if registry.contains(&pid.as_raw()) || sys::in_own_group(pid) {
            return true;
        }
        if !reap_one(pid) {
            return false;
        }
    }
    false
}

fn reap_one(pid: Pid) -> bool {
    match sys::reap(pid) {
        Ok(status) => {
            tracing::debug!(pid = pid.as_raw(), "reaped an orphan: {status:?}");
            true
        }
        Err(e) => {
            tracing::warn!(pid = pid.as_raw(), "cannot reap an orphan: {e}");
            false
        }
    }
}
