//! The `http:<path>` readiness check: `GET <path>` on the first TCP socket
//! until it answers 2xx.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How often the health path is asked.
const INTERVAL: Duration = Duration::from_millis(50);

/// Polls `GET path` on `addr` until a 2xx reply, then sends `id` on `ready`.
/// The master aborts the task when the worker exits or times out.
pub(crate) fn spawn_http_check(
    id: u64,
    addr: SocketAddr,
    path: String,
    ready: mpsc::UnboundedSender<u64>,
) -> tokio::task::JoinHandle<()> {
    let addr = reachable(addr);
    tokio::spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(2), get_status(addr, &path)).await {
                Ok(Ok(code)) if (200..300).contains(&code) => {
                    let _ = ready.send(id);
                    return;
                }
                Ok(Ok(code)) => tracing::debug!(worker = id, "health check answered {code}"),
                Ok(Err(e)) => tracing::debug!(worker = id, "health check failed: {e}"),
                Err(_) => tracing::debug!(worker = id, "health check timed out"),
            }
            tokio::time::sleep(INTERVAL).await;
        }
    })
}

/// A wildcard bind address is reached through loopback.
fn reachable(mut addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    addr
}

async fn get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: baton-health\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 32];
    let mut len = 0;
    while len < 12 {
        let n = stream.read(&mut head[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP reply: {line:?}")))
}
