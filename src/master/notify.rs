//! The sd_notify protocol, both ends: the datagram socket workers report to
//! (`NOTIFY_SOCKET` in their environment), and the messages the master sends
//! to its own supervisor when systemd runs it as `Type=notify-reload`.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};

use tokio::io::Interest;
use tokio::net::UnixDatagram;

use crate::protocol::{self, notify as send};
use crate::sys;

/// The master's end of the workers' `NOTIFY_SOCKET`.
pub(crate) struct NotifyServer {
    socket: UnixDatagram,
    path: PathBuf,
    // Removed (with the socket file) when the master exits.
    _dir: PrivateDir,
}

/// The private directory of the notify socket, removed when dropped (not
/// by an `execve`: the next master takes it over).
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One datagram from a worker.
#[derive(Debug)]
pub(crate) struct Message {
    /// The sender's PID, from the kernel's credentials.
    pub pid: Option<u32>,
    /// `KEY=value` lines.
    pub fields: Vec<(String, String)>,
}

impl NotifyServer {
    /// Binds a datagram socket in a fresh private directory (mode 0700) under
    /// `$XDG_RUNTIME_DIR` or the system temp dir.
    pub(crate) fn bind() -> io::Result<NotifyServer> {
        let parent = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("baton-")
            .tempdir_in(parent)?;
        let path = dir.path().join("notify.sock");
        let std = StdDatagram::bind(&path)?;
        nix::sys::socket::setsockopt(&std, nix::sys::socket::sockopt::PassCred, &true)
            .map_err(io::Error::from)?;
        std.set_nonblocking(true)?;
        Ok(NotifyServer {
            socket: UnixDatagram::from_std(std)?,
            path,
            _dir: PrivateDir(dir.keep()),
        })
    }

    /// Takes over the socket a previous master bound (same process, before
    /// its `execve`): workers keep reporting to the same path.
    pub(crate) fn resume(fd: std::os::fd::OwnedFd, path: PathBuf) -> io::Result<NotifyServer> {
        let std = StdDatagram::from(fd);
        std.set_nonblocking(true)?;
        let dir = path
            .parent()
            .map(Path::to_owned)
            .ok_or_else(|| io::Error::other("the notify socket path has no directory"))?;
        Ok(NotifyServer {
            socket: UnixDatagram::from_std(std)?,
            path,
            _dir: PrivateDir(dir),
        })
    }

    /// The socket's descriptor, for handing over across `execve`.
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// The path workers get as `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next datagram.
    pub(crate) async fn recv(&self) -> io::Result<Message> {
        let mut buf = vec![0u8; 4096];
        let (len, pid) = self
            .socket
            .async_io(Interest::READABLE, || {
                sys::recv_with_pid(self.socket.as_raw_fd(), &mut buf)
            })
            .await?;
        Ok(Message {
            pid,
            fields: parse(&buf[..len]),
        })
    }
}

fn parse(datagram: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The master's own supervisor, when it set `NOTIFY_SOCKET` for us.
pub(crate) struct Supervisor {
    socket: Option<String>,
}

impl Supervisor {
    /// Reads `NOTIFY_SOCKET` from the master's environment.
    pub(crate) fn from_env() -> Supervisor {
        Supervisor {
            socket: std::env::var(protocol::NOTIFY_SOCKET)
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }

    fn send(&self, message: &str) {
        if let Some(socket) = &self.socket {
            if let Err(e) = send(socket, message) {
                tracing::warn!("cannot notify the supervisor at {socket}: {e}");
            }
        }
    }

    /// `READY=1` with a status line.
    pub(crate) fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`, as `Type=notify-reload` expects.
    pub(crate) fn reloading(&self, status: &str) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
            .unwrap_or(0);
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={now}\nSTATUS={status}"
        ));
    }

    /// A `STATUS=` line.
    pub(crate) fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// `STOPPING=1`.
    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_carry_the_senders_pid() {
        let server = NotifyServer::bind().unwrap();
        send(server.path().to_str().unwrap(), "READY=1\nSTATUS=serving\n").unwrap();
        let msg = server.recv().await.unwrap();
        assert_eq!(msg.pid, Some(std::process::id()));
        assert_eq!(
            msg.fields,
            [
                ("READY".into(), "1".into()),
                ("STATUS".into(), "serving".into())
            ]
        );
    }

    #[tokio::test]
    async fn abstract_sockets_are_reachable() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("baton-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = StdDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "READY=1").unwrap();
        let mut buf = [0u8; 16];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
