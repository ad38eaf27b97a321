//! The worker side for Rust services: the inherited sockets as tokio
//! listeners, readiness, and the shutdown future.

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;

use socket2::{Domain, Socket, Type};
use tokio::sync::watch;

use crate::config::Listen;
use crate::protocol::{self, notify as sd_notify};
use crate::sockets::Sockets;

/// What a worker gets from its master: the listening sockets (fds 3.. of the
/// socket-activation protocol), a way to report readiness, and a future that
/// resolves when it is asked to drain.
pub struct Worker {
    sockets: Vec<Option<OwnedFd>>,
    names: Vec<String>,
    notify_socket: Option<String>,
    id: Option<u64>,
    shutdown: watch::Receiver<bool>,
    // Standalone mode binds its own sockets and cleans them up on exit.
    _bound: Option<Sockets>,
}

impl Worker {
    /// Takes the sockets of the socket-activation protocol from this
    /// process's environment (set by `baton run`, by the library's master, or
    /// by systemd).
    pub(crate) fn from_env(shutdown: watch::Receiver<bool>) -> io::Result<Worker> {
        let fds = crate::sys::inherited_listen_fds()?.ok_or_else(|| {
            io::Error::other(
                "LISTEN_PID/LISTEN_FDS do not name this process: not started as a worker",
            )
        })?;
        let (sockets, names) = fds.into_iter().map(|(fd, name)| (Some(fd), name)).unzip();
        Ok(Worker {
            sockets,
            names,
            notify_socket: std::env::var(protocol::NOTIFY_SOCKET)
                .ok()
                .filter(|s| !s.is_empty()),
            id: std::env::var(protocol::BATON_WORKER_ID)
                .ok()
                .and_then(|id| id.parse().ok()),
            shutdown,
            _bound: None,
        })
    }

    /// Binds `listen` itself, for running without a master.
    pub(crate) fn standalone(
        listen: &[Listen],
        shutdown: watch::Receiver<bool>,
    ) -> Result<Worker, crate::sockets::Error> {
        let bound = Sockets::open(listen)?;
        let (sockets, names) = bound.take().map_err(crate::sockets::Error::Adopt)?;
        Ok(Worker {
            sockets: sockets.into_iter().map(Some).collect(),
            names,
            notify_socket: None,
            id: None,
            shutdown,
            _bound: Some(bound),
        })
    }

    /// `BATON_WORKER_ID`: 1 for the first worker, counting up per start.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// The sockets' names (`LISTEN_FDNAMES`), in fd order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Takes the TCP listener at `index` (0 is fd 3).
    pub fn tcp(&mut self, index: usize) -> io::Result<tokio::net::TcpListener> {
        let socket = self.take(
            index,
            Type::STREAM,
            &[Domain::IPV4, Domain::IPV6],
            "a TCP listener",
        )?;
        socket.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(socket.into())
    }

    /// Takes the TCP listener named `name` in `LISTEN_FDNAMES`.
    pub fn tcp_named(&mut self, name: &str) -> io::Result<tokio::net::TcpListener> {
        let index = self.index_of(name)?;
        self.tcp(index)
    }

    /// Takes the unix stream listener at `index`.
    pub fn unix(&mut self, index: usize) -> io::Result<tokio::net::UnixListener> {
        let socket = self.take(index, Type::STREAM, &[Domain::UNIX], "a unix listener")?;
        socket.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(socket.into())
    }

    /// Takes the unix stream listener named `name`.
    pub fn unix_named(&mut self, name: &str) -> io::Result<tokio::net::UnixListener> {
        let index = self.index_of(name)?;
        self.unix(index)
    }

    /// Takes the UDP socket at `index`.
    pub fn udp(&mut self, index: usize) -> io::Result<tokio::net::UdpSocket> {
        let socket = self.take(
            index,
            Type::DGRAM,
            &[Domain::IPV4, Domain::IPV6],
            "a UDP socket",
        )?;
        socket.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(socket.into())
    }

    fn index_of(&self, name: &str) -> io::Result<usize> {
        self.names.iter().position(|n| n == name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no socket named {name:?}; the sockets are {:?}", self.names),
            )
        })
    }

    fn take(
        &mut self,
        index: usize,
        ty: Type,
        domains: &[Domain],
        what: &str,
    ) -> io::Result<Socket> {
        let count = self.sockets.len();
        let slot = self.sockets.get_mut(index).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no socket {index}: the master passed {count}"),
            )
        })?;
        let fd = slot
            .take()
            .ok_or_else(|| io::Error::other(format!("socket {index} was already taken")))?;
        let socket = Socket::from(fd);
        let domain = socket.domain()?;
        if socket.r#type()? != ty || !domains.contains(&domain) {
            let desc = format!("socket {index} ({:?}) is not {what}", self.names[index]);
            *slot = Some(socket.into());
            return Err(io::Error::new(io::ErrorKind::InvalidInput, desc));
        }
        Ok(socket)
    }

    /// Tells the master this worker serves (`READY=1`). Until then the old
    /// worker keeps serving alone. A no-op without a master.
    pub fn ready(&self) -> io::Result<()> {
        self.notify("READY=1")
    }

    /// Sends a `STATUS=` line to the master, shown in its logs.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("STATUS={status}"))
    }

    fn notify(&self, message: &str) -> io::Result<()> {
        match &self.notify_socket {
            Some(socket) => sd_notify(socket, message).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot notify the master at {socket}: {e}"),
                )
            }),
            None => Ok(()),
        }
    }

    /// Resolves when the worker is asked to stop (the stop signal, SIGTERM or
    /// SIGINT): stop accepting, finish what is in flight, exit. Pass it to
    /// [`crate::serve::http`] or any graceful-shutdown hook.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}
