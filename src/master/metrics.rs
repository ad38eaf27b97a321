//! `[control] metrics`: Prometheus metrics at `GET /metrics`, in the
//! OpenMetrics text format (prometheus-client). Each scrape asks the event
//! loop for its status, so the figures are the ones `baton status` shows.
//! Labels carry release ids, versions and digests: nothing secret.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::control::Incoming;
use crate::control::{reply, Request};

type Labels = Vec<(String, String)>;

/// Scrapers served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// The whole exchange of one scrape: request in, reply out.
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most bytes of a request buffered (hyper's smallest buffer); a longer
/// head is answered 431.
const MAX_HEAD: usize = 8192;

/// Serves scrapes on `listener`, at most [`MAX_CONNECTIONS`] at once, each
/// within [`EXCHANGE_TIMEOUT`].
pub(crate) fn serve(
    listener: TcpListener,
    to_loop: mpsc::UnboundedSender<Incoming>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut gate = super::accept::Gate::new("metrics", MAX_CONNECTIONS);
        loop {
            let ((stream, _), permit) = gate.admit(|| listener.accept()).await;
            let to_loop = to_loop.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, connection(stream, to_loop)).await;
                drop(permit);
            });
        }
    })
}

/// Serves one scraper's connection with hyper: one request (no
/// keep-alive), its head read within [`EXCHANGE_TIMEOUT`] and under
/// [`MAX_HEAD`] bytes. Any byte stream will do, which is how the fuzz
/// target drives it.
pub(crate) async fn connection(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    to_loop: mpsc::UnboundedSender<Incoming>,
) {
    let service = hyper::service::service_fn(move |request: http::Request<_>| {
        let to_loop = to_loop.clone();
        async move {
            Ok::<_, Infallible>(answer(request.method(), request.uri().path(), &to_loop).await)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_HEAD)
        .timer(TokioTimer::new())
        .header_read_timeout(EXCHANGE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// The reply to `method path`: the metrics for `GET` or `HEAD /metrics`
/// (hyper drops the body of a `HEAD`), 405 for another method there, 404
/// elsewhere.
async fn answer(
    method: &Method,
    path: &str,
    to_loop: &mpsc::UnboundedSender<Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain"),
        );
        response
    };
    if path != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "only GET /metrics is served here\n".into(),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "/metrics answers GET and HEAD\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let (tx, rx) = oneshot::channel();
    let _ = to_loop.send(Incoming {
        request: Request::Status,
        reply: tx,
        conn: None,
    });
    match rx.await.map(serde_json::from_value::<reply::Status>) {
        Ok(Ok(status)) => {
            let mut response = reply(StatusCode::OK, render(&status));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        Ok(Err(e)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the master's status could not be read: {e}\n"),
        ),
        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into()),
    }
}

/// Registers counter `name` labelled by `version` and `label`, from
/// `counts` (version, then label value).
fn by_version(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    counts: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
) {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    for (version, by) in counts {
        for (value, n) in by {
            family
                .get_or_create(&vec![
                    ("version".to_owned(), version.clone()),
                    (label.to_owned(), value.clone()),
                ])
                .inc_by(*n);
        }
    }
}

/// The metrics for a status snapshot (see `Master::status`).
pub(crate) fn render(status: &reply::Status) -> String {
    let mut registry = Registry::default();
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        registry.register(name, help, c);
    };
    let info = Family::<Labels, Gauge>::default();
    registry.register(
        "baton_release_info",
        "The release current names (1), with its version and digest",
        info.clone(),
    );
    if let Some(c) = &status.current {
        info.get_or_create(&vec![
            ("release".to_owned(), c.id.clone()),
            ("version".to_owned(), c.version.clone().unwrap_or_default()),
            ("sha256".to_owned(), c.sha256.clone()),
        ])
        .set(1);
    }
    let counters = &status.counters;
    counter(
        &mut registry,
        "baton_cycles",
        "Graceful cycles completed",
        counters.cycles,
    );
    counter(
        &mut registry,
        "baton_worker_restarts",
        "Restarts of a worker that died on its own",
        counters.crash_restarts,
    );
    counter(
        &mut registry,
        "baton_rollbacks",
        "Rollbacks asked for by an operator",
        counters.rollbacks,
    );
    counter(
        &mut registry,
        "baton_reexecs",
        "Re-executions of the master's own binary",
        counters.reexecs,
    );
    let upgrades = Family::<Labels, Counter>::default();
    registry.register(
        "baton_upgrades",
        "Trials ended, by result",
        upgrades.clone(),
    );
    for (result, n) in [
        ("promoted", counters.promotions),
        ("failed", counters.failed_trials),
    ] {
        upgrades
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc_by(n);
    }
    by_version(
        &mut registry,
        "baton_trials",
        "Trial events on this host, by version and outcome (started, promoted, failed, yanked)",
        "outcome",
        &status.trials,
    );
    by_version(
        &mut registry,
        "baton_trial_failures",
        "Failed trials on this host, by version and stage (probe, pre_install, start, ready, \
         settle, health, yank)",
        "stage",
        &status.trial_failures,
    );
    if let Some(id) = &status.host_id {
        let info = Family::<Labels, Gauge>::default();
        registry.register(
            "baton_host_info",
            "This host's id for rollouts and reports (always 1)",
            info.clone(),
        );
        info.get_or_create(&vec![("host_id".to_owned(), id.clone())])
            .set(1);
    }
    if let Some(reports) = &status.reports {
        counter(
            &mut registry,
            "baton_reports_written",
            "Trial reports written to the store",
            reports.written,
        );
        counter(
            &mut registry,
            "baton_report_write_failures",
            "Trial report writes that failed (each retry counts)",
            reports.failed_writes,
        );
        let g = Gauge::<i64>::default();
        g.set(reports.pending as i64);
        registry.register(
            "baton_reports_pending",
            "Trial reports waiting for a retry",
            g,
        );
    }
    let checks = Family::<Labels, Counter>::default();
    registry.register(
        "baton_checks",
        "Checks of the source, by outcome",
        checks.clone(),
    );
    for (outcome, n) in &status.checks {
        checks
            .get_or_create(&vec![("result".to_owned(), outcome.clone())])
            .inc_by(*n);
    }
    let stranded = Gauge::<i64>::default();
    stranded.set(i64::from(status.stranded.is_some()));
    registry.register(
        "baton_stranded",
        "1 when no worker can serve: the only release is quarantined (see baton status)",
        stranded,
    );
    let last_check = Gauge::<i64>::default();
    last_check.set(status.last_check.as_ref().map_or(0, |c| c.at as i64));
    registry.register(
        "baton_last_check_timestamp_seconds",
        "When the source was last checked (0: never)",
        last_check,
    );
    let workers = Family::<Labels, Gauge>::default();
    registry.register(
        "baton_workers",
        "Worker processes, by state",
        workers.clone(),
    );
    for state in ["starting", "ready", "on trial", "draining", "killed"] {
        let n = status
            .workers
            .iter()
            .filter(|w| w.state.starts_with(state))
            .count();
        workers
            .get_or_create(&vec![("state".to_owned(), state.replace(' ', "_"))])
            .set(n as i64);
    }
    let (rss, fds) = own_usage();
    let g = Gauge::<i64>::default();
    g.set(rss);
    registry.register(
        "process_resident_memory_bytes",
        "The master's resident memory",
        g,
    );
    let g = Gauge::<i64>::default();
    g.set(fds);
    registry.register("process_open_fds", "The master's open descriptors", g);
    let mut text = String::new();
    let _ = encode(&mut text, &registry);
    text
}

/// The master's RSS in bytes and its open descriptors.
fn own_usage() -> (i64, i64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
    (rss, fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The reply `connection` writes for `request`, with an event loop
    /// answering status requests with an empty status.
    async fn exchange(request: &[u8]) -> String {
        let (to_loop, mut incoming) = mpsc::unbounded_channel::<Incoming>();
        tokio::spawn(async move {
            while let Some(asked) = incoming.recv().await {
                let status = serde_json::to_value(reply::Status::default()).unwrap();
                let _ = asked.reply.send(status);
            }
        });
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(connection(server, to_loop));
        client.write_all(request).await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        served.await.unwrap();
        String::from_utf8_lossy(&reply).into_owned()
    }

    #[test]
    fn metrics_are_counted_from_the_typed_status() {
        let status = reply::Status {
            workers: vec![reply::WorkerStatus {
                id: 3,
                pid: 42,
                release: None,
                state: "starting (on trial)".into(),
                ready_for_secs: None,
                draining_for_secs: None,
            }],
            stranded: Some("why".into()),
            counters: reply::Counters {
                promotions: 2,
                ..Default::default()
            },
            checks: [("error".to_owned(), 5)].into(),
            trials: [(
                "2.0.0".to_owned(),
                [("failed".to_owned(), 1), ("started".to_owned(), 1)].into(),
            )]
            .into(),
            trial_failures: [("2.0.0".to_owned(), [("start".to_owned(), 1)].into())].into(),
            host_id: Some("web-7".into()),
            ..Default::default()
        };
        let text = render(&status);
        for line in [
            "baton_upgrades_total{result=\"promoted\"} 2",
            "baton_checks_total{result=\"error\"} 5",
            "baton_trials_total{version=\"2.0.0\",outcome=\"failed\"} 1",
            "baton_trial_failures_total{version=\"2.0.0\",stage=\"start\"} 1",
            "baton_host_info{host_id=\"web-7\"} 1",
            "baton_stranded 1",
            "baton_workers{state=\"starting\"} 1",
            "baton_workers{state=\"on_trial\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn requests_are_answered_by_method_and_path() {
        let status = |r: String| r.lines().next().unwrap_or_default().to_owned();
        let get = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status(get.clone()), "HTTP/1.1 200 OK");
        assert!(get.ends_with("# EOF\n"), "{get}");
        assert!(
            get.to_ascii_lowercase().contains("connection: close"),
            "{get}"
        );
        let q = exchange(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert_eq!(status(q), "HTTP/1.0 200 OK");
        let head = exchange(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(!head.contains("# EOF"), "a HEAD has no body: {head}");
        let post = exchange(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status(post), "HTTP/1.1 405 Method Not Allowed");
        let other = exchange(b"GET /metricsfoo HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status(other), "HTTP/1.1 404 Not Found");
        let garbage = exchange(b"\xff\x00\r\n\r\n").await;
        assert_eq!(status(garbage), "HTTP/1.1 400 Bad Request");
    }

    #[tokio::test]
    async fn a_head_over_the_cap_is_refused() {
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD * 4, b'a');
        let reply = exchange(&long).await;
        assert_eq!(
            reply.lines().next().unwrap_or_default(),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    }
}
