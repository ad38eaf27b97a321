//! The moment draining begins, for the handlers of long-lived connections.

use std::future::Future;

use tokio::sync::{mpsc, watch};

/// Tells a handler when its server begins to drain, so that a long-lived
/// connection (a WebSocket, a server-sent event stream, a gRPC stream) can
/// tell its client to reconnect instead of being cut at `drain_timeout`.
///
/// [`super::http`] and [`super::Server::serve`] put one into every
/// request's extensions: take it with `axum::Extension<Draining>`,
/// `request.extensions().get::<Draining>()` (hyper, tower) or tonic's
/// `request.extensions()`. It fires once shutdown has begun and the
/// listener is closed, the moment the server starts draining.
///
/// While any clone of it is alive the server loop does not return. A
/// response body that streams is waited for anyway; a connection that
/// leaves the server by an upgrade (a WebSocket) is not, so a handler that
/// upgrades moves its `Draining` into the task serving the upgraded
/// connection, and the worker stays up until that task has said goodbye
/// (the master's `drain_timeout` still bounds it). Do not keep one beyond
/// its connection's life.
#[derive(Clone)]
pub struct Draining {
    draining: watch::Receiver<bool>,
    // Never sends: the server waits until every clone has been dropped.
    _hold: mpsc::Sender<()>,
}

impl std::fmt::Debug for Draining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Draining")
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Draining {
    pub(crate) fn new(draining: watch::Receiver<bool>, hold: mpsc::Sender<()>) -> Draining {
        Draining {
            draining,
            _hold: hold,
        }
    }

    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves once draining has begun (at once if it has). The future
    /// does not borrow `self`: make a new one in each turn of a loop.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut draining = self.draining.clone();
        async move {
            // An error means the server is gone: draining is over.
            let _ = draining.wait_for(|d| *d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use axum::{Extension, Router};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::Draining;

    async fn get_once(addr: std::net::SocketAddr) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    }

    /// Every request carries a `Draining`; it fires when shutdown begins,
    /// and the server loop returns only once the last clone is dropped.
    #[tokio::test]
    async fn handlers_learn_when_draining_begins_and_hold_the_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (kept_tx, mut kept_rx) = tokio::sync::mpsc::unbounded_channel::<Draining>();
        let app = Router::new().route(
            "/",
            get(move |Extension(draining): Extension<Draining>| {
                let kept = kept_tx.clone();
                async move {
                    let answer = format!("draining={}", draining.is_draining());
                    // As a WebSocket handler would: keep it past the response.
                    kept.send(draining).unwrap();
                    answer
                }
            }),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(crate::serve::http(listener, app, async {
            let _ = stop_rx.await;
        }));

        let reply = get_once(addr).await;
        assert!(reply.ends_with("draining=false"), "{reply}");
        let kept = kept_rx.recv().await.unwrap();
        assert!(!kept.is_draining());
        let wait = kept.wait();

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("draining begins once shutdown does");
        assert!(kept.is_draining());
        assert!(format!("{kept:?}").contains("true"));
        // The connection is closed; only the kept token holds the server.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut server)
                .await
                .is_err(),
            "the server returned while a handler still held its Draining"
        );
        drop(kept);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server returns once the last Draining is dropped")
            .unwrap()
            .unwrap();
    }
}
