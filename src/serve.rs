//! An HTTP/1.1 and HTTP/2 server loop whose shutdown never resets a
//! keep-alive client.
//!
//! Both protocols are served on the same listener: HTTP/2 by prior
//! knowledge (cleartext `h2c`, or after TLS's ALPN), told from HTTP/1.1 by
//! its connection preface, as hyper-util's `auto` builder does.
//!
//! The usual graceful shutdown closes idle keep-alive connections at once,
//! racing the client's next request that may already be on the wire: the
//! client sees "connection reset by peer". Here, once shutdown begins:
//!
//! - the listener is closed (the master still holds the socket, so new
//!   connections queue for the next worker);
//! - every open HTTP/1.1 connection answers its next request with
//!   `Connection: close` and is closed after that response;
//! - every HTTP/2 connection gets GOAWAY, HTTP/2's own clean drain: hyper
//!   first sends one naming the highest stream id and a PING, then, once
//!   the PING returns, one naming the last stream it took, so a request
//!   already on the wire is still served and the client knows exactly which
//!   streams to retry elsewhere; the connection closes once its streams are
//!   done;
//! - a connection that stays idle (with no request yet, whatever its
//!   protocol) is closed only after it has been idle for the grace period
//!   (default 1 s), never in the instant after a response;
//! - requests in flight finish.
//!
//! Long-lived connections (a WebSocket, a server-sent event stream, a gRPC
//! stream) learn the moment draining begins from the [`Draining`] every
//! request carries in its extensions, and tell their clients to reconnect
//! (docs/library.md, "Long-lived connections").
//!
//! With [`Server::tls`] (a configuration from [`tls::config_from_pem`]),
//! each connection's TLS handshake runs in its own task, bounded by
//! [`HANDSHAKE_TIMEOUT`], and ALPN picks the protocol.
//!
//! Servers in other languages get the same behaviour by doing the same three
//! things on their stop signal.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

mod draining;
pub mod tls;

pub use draining::Draining;

/// The default idle grace period.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);
/// The longest a TLS handshake may take; a client that stalls it longer is
/// dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener the server loop can accept from.
pub trait Accept: Send + 'static {
    /// The accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Polls for the next connection.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        tokio::net::TcpListener::poll_accept(self, cx).map_ok(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            stream
        })
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        tokio::net::UnixListener::poll_accept(self, cx).map_ok(|(stream, _)| stream)
    }
}

/// Serves `service` (an axum `Router`, or any tower service over hyper's
/// request body) on `listener` until `shutdown` resolves, then drains as the
/// module docs describe, with the default idle grace. Returns when every
/// connection has closed and every [`Draining`] a handler kept is dropped.
pub async fn http<L, S, B>(
    listener: L,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    L: Accept,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Server::new().serve(listener, service, shutdown).await
}

/// The server loop with its settings.
#[derive(Clone)]
pub struct Server {
    idle_grace: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("idle_grace", &self.idle_grace)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Server {
    /// Default settings.
    pub fn new() -> Server {
        Server {
            idle_grace: DEFAULT_IDLE_GRACE,
            tls: None,
        }
    }

    /// Serves over TLS with `config` (see [`tls::config_from_pem`]).
    pub fn tls(mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Server {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// How long a connection must have been idle before shutdown closes it.
    pub fn idle_grace(mut self, grace: Duration) -> Server {
        self.idle_grace = grace;
        self
    }

    /// Serves until `shutdown`, then drains; see [`http`].
    pub async fn serve<L, S, B>(
        &self,
        mut listener: L,
        service: S,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()>
    where
        L: Accept,
        S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (drain_tx, drain_rx) = watch::channel(false);
        // Each request's Draining holds a sender: the loop returns once
        // the last one (an upgraded connection's, say) is dropped.
        let (hold_tx, mut hold_rx) = mpsc::channel::<()>(1);
        let token = Draining::new(drain_rx.clone(), hold_tx);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = poll_fn(|cx| listener.poll_accept(cx)) => match accepted {
                    Ok(io) => {
                        let conn = Arc::new(ConnState::new());
                        let svc = DrainService { inner: service.clone(), conn: conn.clone(), draining: token.clone() };
                        let (draining, grace) = (drain_rx.clone(), self.idle_grace);
                        match &self.tls {
                            None => {
                                conns.spawn(serve_connection(io, svc, conn, draining, grace));
                            }
                            Some(acceptor) => {
                                let handshake = acceptor.accept(io);
                                conns.spawn(async move {
                                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                                        Ok(Ok(io)) => serve_connection(io, svc, conn, draining, grace).await,
                                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                                        Err(_) => tracing::debug!("TLS handshake timed out"),
                                    }
                                });
                            }
                        }
                    }
                    Err(e) => {
                        // Out of fds or memory: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        let _ = drain_tx.send(true);
        while conns.join_next().await.is_some() {}
        drop(token);
        let _ = hold_rx.recv().await;
        Ok(())
    }
}

async fn serve_connection<IO, S, B>(
    io: IO,
    svc: DrainService<S>,
    state: Arc<ConnState>,
    mut draining: watch::Receiver<bool>,
    grace: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = draining.wait_for(|d| *d) => {}
    }
    // Draining: an HTTP/2 connection gets GOAWAY now; an HTTP/1.1 one says
    // `Connection: close` on its next response (DrainService); a connection
    // that stays idle for the grace period is closed.
    loop {
        if state.is_h2() {
            conn.as_mut().graceful_shutdown();
            break;
        }
        let wake = state
            .idle_since()
            .map_or(Instant::now() + grace, |t| t + grace);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep_until(wake) => {
                if state.idle_since().is_some_and(|t| t.elapsed() >= grace) {
                    conn.as_mut().graceful_shutdown();
                    break;
                }
            }
        }
    }
    let _ = conn.await;
}

/// Per-connection activity, so shutdown knows how long it has been idle,
/// and which protocol it speaks.
struct ConnState {
    in_flight: AtomicUsize,
    last_active: Mutex<Instant>,
    h2: AtomicBool,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            in_flight: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
            h2: AtomicBool::new(false),
        }
    }

    /// Whether a request came over HTTP/2.
    fn is_h2(&self) -> bool {
        self.h2.load(Ordering::SeqCst)
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        *self.last_active.lock().unwrap() = Instant::now();
    }

    fn end(&self) {
        *self.last_active.lock().unwrap() = Instant::now();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// When the connection became idle, or `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.last_active.lock().unwrap())
    }
}

/// Wraps the user's service: tracks activity, and adds `Connection: close`
/// to every response once draining has begun.
#[derive(Clone)]
struct DrainService<S> {
    inner: S,
    conn: Arc<ConnState>,
    draining: Draining,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for DrainService<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Tracked<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Tracked<B>>, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let mut inner = self.inner.clone();
        let draining = self.draining.clone();
        req.extensions_mut().insert(draining.clone());
        let version = req.version();
        if version == http::Version::HTTP_2 {
            self.conn.h2.store(true, Ordering::SeqCst);
        }
        // In flight until the response body is sent (or dropped).
        let active = Active::begin(self.conn.clone());
        Box::pin(async move {
            let result = match poll_fn(|cx| inner.poll_ready(cx)).await {
                Ok(()) => inner.call(req).await,
                Err(never) => Err(never),
            };
            result.map(|response| {
                let mut response = response.map(|body| Tracked {
                    body: Box::pin(body),
                    _active: active,
                });
                // HTTP/2 drains by GOAWAY and has no Connection header.
                if draining.is_draining() && version != http::Version::HTTP_2 {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                    // hyper appends `keep-alive` to the Connection header of a
                    // reply to an HTTP/1.0 keep-alive request unless the reply
                    // itself is HTTP/1.0; `close, keep-alive` makes clients
                    // such as ab reuse a connection that is about to close.
                    if version == http::Version::HTTP_10 {
                        *response.version_mut() = http::Version::HTTP_10;
                    }
                }
                response
            })
        })
    }
}

/// A request in flight on a connection; ends when dropped.
struct Active(Arc<ConnState>);

impl Active {
    fn begin(conn: Arc<ConnState>) -> Active {
        conn.begin();
        Active(conn)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that keeps its request in flight until it has been
/// sent, so that a long streaming response never counts as idle.
struct Tracked<B> {
    body: Pin<Box<B>>,
    _active: Active,
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SETTINGS: u8 = 4;
    const HEADERS: u8 = 1;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const WINDOW_UPDATE: u8 = 8;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// Answers every request with `ok`.
    #[derive(Clone)]
    struct Answer;

    impl tower_service::Service<Request<Incoming>> for Answer {
        type Response = Response<http_body_util::Full<&'static [u8]>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Incoming>) -> Self::Future {
            std::future::ready(Ok(Response::new(http_body_util::Full::new(&b"ok"[..]))))
        }
    }

    /// `GET /` with `:authority: a`, HPACK without the dynamic table.
    const REQUEST: [u8; 6] = [0x82, 0x86, 0x84, 0x01, 0x01, b'a'];

    async fn next_frame(c: &mut tokio::net::TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        c.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        c.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], stream, payload))
    }

    /// A graceful HTTP/2 shutdown sends GOAWAY(max) and a PING; a client
    /// that opened a stream before it saw them (grpcio does: HEADERS, then
    /// the stream's WINDOW_UPDATE) must see that stream ignored, not the
    /// connection failed with PROTOCOL_ERROR, which fails every call still
    /// being answered on it.
    #[tokio::test]
    async fn a_stream_opened_during_the_goaway_round_trip_fails_nothing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = Answer;
        let server = tokio::spawn(http(listener, service, async {
            let _ = stopped.await;
        }));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend(frame(HEADERS, 0x5, 1, &REQUEST));
        c.write_all(&hello).await.unwrap();
        // Stream 1 answered: the connection is known to speak HTTP/2.
        let answered = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some((kind, flags, stream, _)) = next_frame(&mut c).await {
                if kind == SETTINGS && flags & 1 == 0 {
                    c.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
                }
                if stream == 1 && flags & 1 == 1 && kind != SETTINGS && kind != PING {
                    return true;
                }
            }
            false
        });
        assert!(answered.await.unwrap(), "stream 1 was not answered");
        stop.send(()).unwrap();
        let mut errors = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some((kind, flags, _, payload)) = next_frame(&mut c).await {
                match kind {
                    PING if flags & 1 == 0 => {
                        // The ACK, then a stream the client had begun.
                        let mut burst = frame(PING, 1, 0, &payload);
                        burst.extend(frame(HEADERS, 0x4, 3, &REQUEST));
                        burst.extend(frame(WINDOW_UPDATE, 0, 3, &5u32.to_be_bytes()));
                        burst.extend(frame(0, 1, 3, &[]));
                        c.write_all(&burst).await.unwrap();
                    }
                    GOAWAY => errors.push(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
                    _ => {}
                }
            }
        });
        ended.await.expect("the connection closes once drained");
        assert!(!errors.is_empty(), "no GOAWAY was sent");
        assert!(
            errors.iter().all(|&code| code == 0),
            "GOAWAY error codes {errors:?} (1 is PROTOCOL_ERROR)"
        );
        server.abort();
    }
}
