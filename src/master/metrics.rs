//! `[control] metrics`: Prometheus metrics at `GET /metrics`, in the
//! OpenMetrics text format (prometheus-client). Each scrape asks the event
//! loop for its status, so the figures are the ones `baton status` shows.
//! Labels carry release ids, versions and digests: nothing secret.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::control::Incoming;
use crate::control::Request;

type Labels = Vec<(String, String)>;

/// Scrapers served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// The whole exchange of one scrape: request in, reply out.
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest request head read; a longer one is answered 431.
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
                let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, scrape(stream, to_loop)).await;
                drop(permit);
            });
        }
    })
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics,
    Other,
    /// No complete head within [`MAX_HEAD`] bytes.
    TooLarge,
}

/// Reads the request line of a head (the body, if any, is ignored).
fn parse_head(head: &[u8]) -> Asked {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Asked::TooLarge;
    };
    let line = String::from_utf8_lossy(&head[..end]);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next(), words.next().unwrap_or(""));
    if matches!(method, Some("GET" | "HEAD"))
        && (path == "/metrics" || path.starts_with("/metrics?"))
    {
        Asked::Metrics
    } else {
        Asked::Other
    }
}

async fn scrape(mut stream: tokio::net::TcpStream, to_loop: mpsc::UnboundedSender<Incoming>) {
    let mut head = vec![0u8; MAX_HEAD];
    let mut len = 0;
    while len < head.len() && !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut head[len..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let (status, ctype, body) = match parse_head(&head[..len]) {
        Asked::Metrics => {
            let (tx, rx) = oneshot::channel();
            let _ = to_loop.send(Incoming {
                request: Request::Status,
                reply: tx,
                conn: None,
            });
            match rx.await {
                Ok(status) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    render(&status),
                ),
                Err(_) => (
                    "503 Service Unavailable",
                    "text/plain",
                    "stopping\n".to_owned(),
                ),
            }
        }
        Asked::Other => (
            "404 Not Found",
            "text/plain",
            "only GET /metrics is served here\n".to_owned(),
        ),
        Asked::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain",
            format!("a request head is at most {MAX_HEAD} bytes\n"),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The metrics for a status snapshot (see `Master::status_json`).
pub(crate) fn render(status: &Value) -> String {
    let mut registry = Registry::default();
    let counter = |registry: &mut Registry, name: &str, help: &str, value: &Value| {
        let c = Counter::<u64>::default();
        c.inc_by(value.as_u64().unwrap_or(0));
        registry.register(name, help, c);
    };
    let info = Family::<Labels, Gauge>::default();
    registry.register(
        "baton_release_info",
        "The release current names (1), with its version and digest",
        info.clone(),
    );
    if let Some(c) = status["current"].as_object() {
        let label = |k: &str| {
            (
                k.to_owned(),
                c.get(k).and_then(Value::as_str).unwrap_or("").to_owned(),
            )
        };
        info.get_or_create(&vec![
            (
                "release".to_owned(),
                c.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
            ),
            label("version"),
            label("sha256"),
        ])
        .set(1);
    }
    let counters = &status["counters"];
    counter(
        &mut registry,
        "baton_cycles",
        "Graceful cycles completed",
        &counters["cycles"],
    );
    counter(
        &mut registry,
        "baton_worker_restarts",
        "Restarts of a worker that died on its own",
        &counters["crash_restarts"],
    );
    counter(
        &mut registry,
        "baton_rollbacks",
        "Rollbacks asked for by an operator",
        &counters["rollbacks"],
    );
    counter(
        &mut registry,
        "baton_reexecs",
        "Re-executions of the master's own binary",
        &counters["reexecs"],
    );
    let upgrades = Family::<Labels, Counter>::default();
    registry.register(
        "baton_upgrades",
        "Trials ended, by result",
        upgrades.clone(),
    );
    for (result, key) in [("promoted", "promotions"), ("failed", "failed_trials")] {
        upgrades
            .get_or_create(&vec![("result".to_owned(), result.to_owned())])
            .inc_by(counters[key].as_u64().unwrap_or(0));
    }
    let checks = Family::<Labels, Counter>::default();
    registry.register(
        "baton_checks",
        "Checks of the source, by outcome",
        checks.clone(),
    );
    if let Some(by) = status["checks"].as_object() {
        for (outcome, n) in by {
            checks
                .get_or_create(&vec![("result".to_owned(), outcome.clone())])
                .inc_by(n.as_u64().unwrap_or(0));
        }
    }
    let stranded = Gauge::<i64>::default();
    stranded.set(i64::from(status["stranded"].is_string()));
    registry.register(
        "baton_stranded",
        "1 when no worker can serve: the only release is quarantined (see baton status)",
        stranded,
    );
    let last_check = Gauge::<i64>::default();
    last_check.set(status["last_check"]["at"].as_i64().unwrap_or(0));
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
        let n = status["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["state"].as_str().is_some_and(|s| s.starts_with(state)))
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
    use super::{parse_head, Asked, MAX_HEAD};

    #[test]
    fn heads_are_read_by_their_request_line_only() {
        let head = |t: &str| parse_head(t.as_bytes());
        assert_eq!(
            head("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Asked::Metrics
        );
        assert_eq!(head("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Asked::Metrics);
        assert_eq!(head("POST /metrics HTTP/1.1\r\n\r\n"), Asked::Other);
        assert_eq!(head("GET /metricsfoo HTTP/1.1\r\n\r\n"), Asked::Other);
        assert_eq!(head("\r\n\r\n"), Asked::Other);
        assert_eq!(head("\u{fffd}\u{0}\r\n\r\n"), Asked::Other);
        // A head that never ends within the cap.
        assert_eq!(parse_head(&vec![b'a'; MAX_HEAD]), Asked::TooLarge);
        assert_eq!(head("GET /metrics HTTP/1.1\r\n"), Asked::TooLarge);
    }
}
