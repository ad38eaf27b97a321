//! The `http:<path>` readiness check: `GET <path>` on the first TCP socket
//! until it answers 2xx.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;

use super::health::{get_status, reachable};

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
            match tokio::time::timeout(
                Duration::from_secs(2),
                get_status(addr, &path, "baton-ready"),
            )
            .await
            {
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
