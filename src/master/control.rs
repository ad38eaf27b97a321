//! The master's end of the control socket (see [`crate::control`]): a unix
//! stream socket, mode 0600, that refuses peers of another uid
//! (`SO_PEERCRED`), reads one request line per connection (bounded in size
//! and time), hands it to the event loop and writes the reply it gets back.
//! A malformed request gets an error reply and never reaches the loop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::control::Request;

/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request for the event loop, with where its reply goes.
#[derive(Debug)]
pub(crate) struct Incoming {
    /// What was asked.
    pub request: Request,
    /// The reply.
    pub reply: oneshot::Sender<Value>,
    /// For `reexec`: the connection itself, whose reply the next master
    /// writes (see [`answer`]).
    pub conn: Option<std::os::unix::net::UnixStream>,
}

/// Writes `reply` as one line on a connection taken over from the control
/// server (blocking: the reply is small and the client waits for it).
pub(crate) fn answer(mut conn: std::os::unix::net::UnixStream, reply: &Value) {
    use std::io::Write;
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = serde_json::to_vec(reply).expect("serializable");
    line.push(b'\n');
    let _ = conn.write_all(&line);
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// An error reply.
pub(crate) fn refuse(error: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": error.to_string()})
}

/// The bound control socket; the file is removed when this is dropped.
pub(crate) struct Server {
    path: PathBuf,
    /// The listener's descriptor (owned by the task), for `reexec`.
    fd: std::os::fd::RawFd,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The socket's path and the listener's descriptor, for handing over
    /// across `execve`.
    pub(crate) fn carry(&self) -> (PathBuf, std::os::fd::RawFd) {
        (self.path.clone(), self.fd)
    }

    /// Serves the listener a previous master bound at `path` (same process,
    /// before its `execve`): no client ever finds the socket closed.
    pub(crate) fn resume(
        fd: std::os::fd::OwnedFd,
        path: PathBuf,
        to_loop: mpsc::UnboundedSender<Incoming>,
    ) -> std::io::Result<Server> {
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener.set_nonblocking(true)?;
        Ok(start(UnixListener::from_std(listener)?, path, to_loop))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (replacing a stale socket file a dead master left, refusing
/// when another master answers on it) and serves it.
pub(crate) fn serve(
    path: &Path,
    to_loop: mpsc::UnboundedSender<Incoming>,
) -> std::io::Result<Server> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another master answers on {}", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(start(listener, path.to_owned(), to_loop))
}

/// Control connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// The longest request line read: requests are a few dozen bytes, so 64
/// connections buffer at most 4 MiB.
const MAX_REQUEST: usize = 64 << 10;

fn start(
    listener: UnixListener,
    path: PathBuf,
    to_loop: mpsc::UnboundedSender<Incoming>,
) -> Server {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    let task = tokio::spawn(async move {
        let mut gate = super::accept::Gate::new("control", MAX_CONNECTIONS);
        loop {
            let ((stream, _), permit) = gate.admit(|| listener.accept()).await;
            let to_loop = to_loop.clone();
            tokio::spawn(async move {
                handle(stream, to_loop).await;
                drop(permit);
            });
        }
    });
    Server { path, fd, task }
}

async fn handle(mut stream: UnixStream, to_loop: mpsc::UnboundedSender<Incoming>) {
    let reply = match read_request(&mut stream).await {
        Ok(request @ Request::Reexec { .. }) => {
            // The reply comes from the master after its execve, on this
            // very connection: hand it over.
            let conn = match stream.into_std() {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("cannot take over a control connection: {e}");
                    return;
                }
            };
            let (reply, _) = oneshot::channel();
            let incoming = Incoming {
                request,
                reply,
                conn: Some(conn),
            };
            if let Err(mpsc::error::SendError(incoming)) = to_loop.send(incoming) {
                if let Some(conn) = incoming.conn {
                    answer(conn, &refuse("the master is shutting down"));
                }
            }
            return;
        }
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            let incoming = Incoming {
                request,
                reply: tx,
                conn: None,
            };
            if to_loop.send(incoming).is_err() {
                refuse("the master is shutting down")
            } else {
                rx.await
                    .unwrap_or_else(|_| refuse("the master dropped the request"))
            }
        }
        Err(e) => refuse(e),
    };
    let mut line = serde_json::to_vec(&reply).expect("serializable");
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let me = crate::sys::current_uid();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == me => {}
        Ok(cred) => {
            return Err(format!(
                "refused: peer uid {} is not the master's uid {me}",
                cred.uid()
            ))
        }
        Err(e) => return Err(format!("refused: cannot read the peer's credentials: {e}")),
    }
    read_line(stream).await
}

/// Reads one request line, at most [`MAX_REQUEST`] bytes, within
/// [`READ_TIMEOUT`], and parses it.
pub(crate) async fn read_line(
    stream: impl tokio::io::AsyncRead + Unpin,
) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64);
    match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err("no request line within 10s".to_owned()),
        Ok(Err(e)) => return Err(format!("cannot read the request: {e}")),
        Ok(Ok(_)) => {}
    }
    serde_json::from_slice(&line).map_err(|e| {
        format!(
            "bad request {:?}: {e}; expected one JSON object such as {{\"cmd\": \"status\"}}",
            String::from_utf8_lossy(&line[..line.len().min(100)]).trim()
        )
    })
}
