//! An axum service that reports its version, runnable under `baton run` or
//! on its own with baton as a library.
//!
//! ```text
//! HELLO_VERSION=2.0.0 cargo build --release --example hello
//! target/release/examples/hello --listen 127.0.0.1:8080          # library master
//! target/release/examples/hello --listen 127.0.0.1:8080 --standalone
//! target/release/examples/hello --probe                           # prints 2.0.0
//! target/release/examples/hello --fetch-file dist/hello           # upgrades itself in place
//! ```
//!
//! `GET /` answers `hello <version>`; `GET /?sleep=<ms>` answers after that
//! delay; `GET /stream?ms=<ms>` streams its answer over that long;
//! `GET /healthz` answers 200, or 503 while a file `unhealthy-<version>`
//! exists in the working directory (for health-gated trials).
//! `GET /ws` is a WebSocket echo and `GET /events?ms=<ms>` a server-sent
//! event stream of the version; both tell their client to reconnect when
//! this worker begins to drain (WebSocket close code 1012, a last
//! `event: restart`): see `hello/longlived.rs`.

use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

#[path = "hello/longlived.rs"]
mod longlived;

/// Baked in at build time: two builds give two versions.
const VERSION: &str = match option_env!("HELLO_VERSION") {
    Some(v) => v,
    None => "0.0.0",
};

#[derive(Deserialize)]
struct Params {
    sleep: Option<u64>,
    /// For `/stream`: spread the answer over this many milliseconds; for
    /// `/events`: the time between two ticks.
    ms: Option<u64>,
}

async fn hello(Query(params): Query<Params>) -> String {
    if let Some(ms) = params.sleep {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    format!("hello {VERSION}\n")
}

/// `GET /healthz`: 503 while `unhealthy-<version>` exists, else 200.
async fn healthz() -> (axum::http::StatusCode, &'static str) {
    if std::path::Path::new(&format!("unhealthy-{VERSION}")).exists() {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
    } else {
        (axum::http::StatusCode::OK, "ok\n")
    }
}

/// `GET /stream?ms=<ms>`: the answer in ten chunks spread over `ms`.
async fn stream(Query(params): Query<Params>) -> axum::body::Body {
    let step = Duration::from_millis(params.ms.unwrap_or(1000).min(60_000) / 10);
    let chunks = futures_util::stream::unfold(0u32, move |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(step).await;
        let chunk = if i == 9 {
            format!("hello {VERSION}\n")
        } else {
            ".".to_owned()
        };
        Some((Ok::<_, std::convert::Infallible>(chunk), i + 1))
    });
    axum::body::Body::from_stream(chunks)
}

fn main() -> std::process::ExitCode {
    let mut options = baton::Options::new(VERSION);
    let mut args = std::env::args().skip(1);
    let mut listen = Vec::new();
    let (mut tls_cert, mut tls_key) = (None::<std::path::PathBuf>, None::<std::path::PathBuf>);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen.extend(args.next()),
            "--tls-cert" => tls_cert = args.next().map(Into::into),
            "--tls-key" => tls_key = args.next().map(Into::into),
            "--standalone" => options = options.standalone(true),
            "--reexec-on-upgrade" => options = options.reexec_on_upgrade(true),
            "--probe" => {} // handled by baton::run before any serving code
            "--fetch-file" => {
                let Some(path) = args.next() else {
                    eprintln!("hello: --fetch-file needs a path");
                    return std::process::ExitCode::from(2);
                };
                options = options.fetch(baton::config::Fetch {
                    source: baton::config::Source::File { path: path.into() },
                    interval: Duration::from_secs(1),
                    jitter: Duration::ZERO,
                    timeout: Duration::from_secs(30),
                    host_id: None,
                    report: false,
                });
            }
            other => {
                eprintln!(
                    "hello: unknown argument {other:?}; use --listen ADDR, --standalone, --fetch-file PATH, --tls-cert PEM --tls-key PEM, --reexec-on-upgrade or --probe"
                );
                return std::process::ExitCode::from(2);
            }
        }
    }
    if listen.is_empty() {
        listen.push("127.0.0.1:8080".to_owned());
    }
    for addr in listen {
        options = options.listen(addr);
    }
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            eprintln!("hello: --tls-cert and --tls-key go together");
            return std::process::ExitCode::from(2);
        }
    };
    let result = baton::run(options, |mut worker| async move {
        let listener = worker.tcp(0)?;
        // Read at each worker's start: a cycle serves renewed files.
        let server = match &tls {
            Some((cert, key)) => baton::serve::Server::new()
                .tls(baton::serve::tls::config_from_pem(cert, key).map_err(std::io::Error::other)?),
            None => baton::serve::Server::new(),
        };
        let app = Router::new()
            .route("/", get(hello))
            .route("/stream", get(stream))
            .route("/ws", get(longlived::ws))
            .route("/events", get(longlived::events))
            .route("/healthz", get(healthz));
        worker.ready()?;
        server.serve(listener, app, worker.shutdown()).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            eprintln!("hello: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
