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

use crate::control::{Request, MAX_LINE};

/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request for the event loop, with where its reply goes.
#[derive(Debug)]
pub(crate) struct Incoming {
    /// What was asked.
    pub request: Request,
    /// The reply.
    pub reply: oneshot::Sender<Value>,
}

/// An error reply.
pub(crate) fn refuse(error: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": error.to_string()})
}

/// The bound control socket; the file is removed when this is dropped.
pub(crate) struct Server {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
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
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(handle(stream, to_loop.clone()));
        }
    });
    Ok(Server {
        path: path.to_owned(),
        task,
    })
}

async fn handle(mut stream: UnixStream, to_loop: mpsc::UnboundedSender<Incoming>) {
    let reply = match read_request(&mut stream).await {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            if to_loop.send(Incoming { request, reply: tx }).is_err() {
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
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
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
