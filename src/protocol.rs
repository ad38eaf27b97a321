//! The worker protocol's names in one place, shared by the master, the
//! library's worker side and the probe: the variables the master sets for a
//! child, the sd_notify datagram a worker sends, and how a child's end is
//! described. What else a child inherits is [`crate::ChildEnv`].
//!
//! A leaf module: it imports only `sys`, where the socket-activation names
//! are read.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::process::ExitStatus;

pub(crate) use crate::sys::{LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID};

/// The datagram socket a worker sends `READY=1` to.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The worker's sequence number, counting up per start.
pub(crate) const BATON_WORKER_ID: &str = "BATON_WORKER_ID";
/// `1` in a probe run.
pub(crate) const BATON_PROBE: &str = "BATON_PROBE";
/// The name of the signal that asks the worker to drain.
pub(crate) const BATON_STOP_SIGNAL: &str = "BATON_STOP_SIGNAL";
/// The id of the release a worker runs, when it runs one.
pub(crate) const BATON_RELEASE: &str = "BATON_RELEASE";
/// The sha256 (hex) of the release a worker runs, when it runs one.
pub(crate) const BATON_SHA256: &str = "BATON_SHA256";
/// systemd's watchdog variables: meant for the master, never for a child.
pub(crate) const WATCHDOG_PID: &str = "WATCHDOG_PID";
/// See [`WATCHDOG_PID`].
pub(crate) const WATCHDOG_USEC: &str = "WATCHDOG_USEC";

/// Every variable the master sets itself (or that describes the master's
/// own supervisor): never inherited from the master's environment.
pub(crate) const PROTOCOL_VARS: &[&str] = &[
    LISTEN_FDS,
    LISTEN_PID,
    LISTEN_FDNAMES,
    NOTIFY_SOCKET,
    BATON_WORKER_ID,
    BATON_PROBE,
    BATON_STOP_SIGNAL,
    BATON_RELEASE,
    BATON_SHA256,
    WATCHDOG_PID,
    WATCHDOG_USEC,
];

/// The credentials the s3 source reads from the environment.
pub(crate) const AWS_CREDENTIALS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// Whether `name` is one of the [`PROTOCOL_VARS`].
pub(crate) fn is_protocol_var(name: &str) -> bool {
    PROTOCOL_VARS.contains(&name)
}

/// Sends one sd_notify datagram to `socket` (a path, or `@name` for the
/// abstract namespace), as `sd_notify(3)` does.
pub(crate) fn notify(socket: &str, message: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        sock.send_to(message.as_bytes(), socket)?;
    }
    Ok(())
}

/// Describes an exit status as people read it: `exit code 3`, `signal 9 (SIGKILL)`.
pub(crate) fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("signal {sig} ({})", s.as_str()),
            Err(_) => format!("signal {sig}"),
        },
        _ => status.to_string(),
    }
}
