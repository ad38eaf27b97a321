//! `/ws` and `/events`: long-lived connections that tell their clients to
//! reconnect when this worker begins to drain (docs/library.md,
//! "Long-lived connections").

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::Query;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use baton::serve::Draining;

use super::{Params, VERSION};

/// `GET /ws`: a WebSocket that greets with `hello <version>` and echoes
/// what it is sent. When draining begins it sends a close frame with code
/// 1012 ("service restart"), and the client reconnects to the new worker.
pub async fn ws(upgrade: WebSocketUpgrade, Extension(draining): Extension<Draining>) -> Response {
    // `draining` moves into the upgraded connection's task: the worker
    // stays up until that task has said goodbye.
    upgrade.on_upgrade(move |socket| echo(socket, draining))
}

async fn echo(mut socket: WebSocket, draining: Draining) {
    let hello = Message::Text(format!("hello {VERSION}").into());
    if socket.send(hello).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            biased;
            () = draining.wait() => break,
            message = socket.recv() => match message {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_) | Message::Ping(_) | Message::Pong(_))) => {}
                None | Some(Err(_)) => return,
            },
        }
    }
    let restart = CloseFrame {
        code: close_code::RESTART,
        reason: "service restart".into(),
    };
    if socket.send(Message::Close(Some(restart))).await.is_ok() {
        // Wait a little for the client's close frame, which ends it cleanly.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// `GET /events?ms=<ms>`: server-sent events, `event: tick` with
/// `data: hello <version>` at once and then every `ms` (default 1000). When
/// draining begins: a last `event: restart` with `retry: 100` (reconnect in
/// 100 ms), and the stream ends.
pub async fn events(
    Query(params): Query<Params>,
    Extension(draining): Extension<Draining>,
) -> Response {
    let every = Duration::from_millis(params.ms.unwrap_or(1000).clamp(10, 60_000));
    let events =
        futures_util::stream::unfold(Some((draining, Duration::ZERO)), move |state| async move {
            let (draining, delay) = state?;
            tokio::select! {
                biased;
                () = draining.wait() => {
                    let last = format!("event: restart\ndata: hello {VERSION}\nretry: 100\n\n");
                    Some((Ok::<_, Infallible>(last), None))
                }
                () = tokio::time::sleep(delay) => {
                    let tick = format!("event: tick\ndata: hello {VERSION}\n\n");
                    Some((Ok(tick), Some((draining, every))))
                }
            }
        });
    let headers = [
        (CONTENT_TYPE, "text/event-stream"),
        (CACHE_CONTROL, "no-cache"),
    ];
    (headers, Body::from_stream(events)).into_response()
}
