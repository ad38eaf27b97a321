//! Long-lived connections across a cycle: the hello example's `/ws` (a
//! WebSocket echo) and `/events` (server-sent events) learn from
//! `baton::serve::Draining` that their worker began to drain and tell their
//! clients to reconnect: close code 1012 ("service restart"), a last
//! `event: restart`. The clients (a real WebSocket client, Python's
//! `websockets`; an SSE reader over reqwest) reconnect and are served by the
//! new version, and the old worker exits at once rather than at
//! `drain_timeout`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::support::{self, Baton};

/// hello 1.0.0 with a `drain_timeout` far longer than the test: a worker
/// that exits did so on its own.
fn start() -> Baton {
    let config =
        Baton::hello_config("").replace("drain_timeout = \"10s\"", "drain_timeout = \"60s\"");
    let baton = Baton::start(Baton::dir_with_hello(), &config);
    baton.wait_ready();
    baton
}

/// Points `bin/hello` at 2.0.0 and cycles; then waits for the old worker
/// to be gone, well before `drain_timeout`.
fn cycle_to_2(baton: &Baton) {
    support::point(
        &baton.dir.path().join("bin/hello"),
        &support::hello("2.0.0"),
    );
    baton.cycle();
    support::wait_for(
        "the draining worker to exit by itself",
        Duration::from_secs(20),
        || (baton.children().len() == 1).then_some(()),
    );
    assert_eq!(baton.count("did not exit within drain_timeout"), 0);
}

#[test]
fn websocket_clients_are_told_to_reconnect_and_reach_the_new_version() {
    let baton = start();
    let scratch = tempfile::tempdir().unwrap();
    let (progress, stop) = (scratch.path().join("progress"), scratch.path().join("stop"));
    let client = support::python_client("ws_client.py", baton.addr(), &progress, &stop);
    let seen = || -> serde_json::Value {
        std::fs::read(&progress)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    // Connected to 1.0.0 and echoing.
    support::wait_for("echoes from 1.0.0", Duration::from_secs(30), || {
        let s = seen();
        let first = &s["connections"][0];
        (first["version"] == "1.0.0" && first["echoes"].as_u64() >= Some(5)).then_some(())
    });
    cycle_to_2(&baton);
    // Closed with 1012, reconnected, echoing with 2.0.0.
    support::wait_for("echoes from 2.0.0", Duration::from_secs(30), || {
        let s = seen();
        let last = s["connections"].as_array()?.last()?.clone();
        (last["version"] == "2.0.0" && last["echoes"].as_u64() >= Some(5)).then_some(())
    });
    std::fs::write(&stop, b"").unwrap();
    // The client stops within a poll of the stop file (it bounds itself too).
    let out = client.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the WebSocket client failed: {stderr}"
    );
    let seen: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["mismatches"], 0, "{seen}");
    let conns = seen["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "one connection per worker: {seen}");
    assert_eq!(conns[0]["version"], "1.0.0", "{seen}");
    assert_eq!(conns[0]["close_code"], 1012, "{seen}");
    assert_eq!(conns[0]["close_reason"], "service restart", "{seen}");
    assert_eq!(conns[1]["version"], "2.0.0", "{seen}");
    assert_eq!(conns[1]["close_code"], "client", "{seen}");
}

/// One server-sent event as the reader saw it.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    /// Which connection (0 for the first).
    conn: usize,
    /// `tick`, `restart`, or `end` when the stream ended.
    event: String,
    data: String,
    retry: Option<u64>,
}

/// Reads `/events` and sends each event to `tx`; when a stream ends,
/// reconnects after its `retry:` (as a browser's EventSource does) until
/// `stop`.
fn read_events(url: String, tx: mpsc::Sender<Event>, stop: Arc<AtomicBool>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = reqwest::Client::new();
        let mut retry = 1000;
        for conn in 0..50 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let end = |event: &str, data: String| Event {
                conn,
                event: event.to_owned(),
                data,
                retry: None,
            };
            let mut response = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let _ = tx.send(end("error", format!("status {}", r.status())));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(end("error", format!("{e:?}")));
                    return;
                }
            };
            let mut buffer = String::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
                    Ok(None) => {
                        let _ = tx.send(end("end", buffer.clone()));
                        break;
                    }
                    Err(e) => {
                        let _ = tx.send(end("error", format!("{e:?}")));
                        return;
                    }
                }
                while let Some((block, rest)) = buffer.split_once("\n\n") {
                    let mut event = end("message", String::new());
                    for line in block.lines() {
                        match line.split_once(": ") {
                            Some(("event", v)) => event.event = v.to_owned(),
                            Some(("data", v)) => event.data = v.to_owned(),
                            Some(("retry", v)) => event.retry = v.parse().ok(),
                            _ => {}
                        }
                    }
                    retry = event.retry.unwrap_or(retry);
                    buffer = rest.to_owned();
                    if stop.load(Ordering::SeqCst) || tx.send(event).is_err() {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(retry)).await;
        }
    });
}

#[test]
fn event_streams_end_with_a_restart_event_and_reconnect_to_the_new_version() {
    let baton = start();
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let url = format!("http://{}/events?ms=50", baton.addr());
        let stop = stop.clone();
        std::thread::spawn(move || read_events(url, tx, stop))
    };
    let mut events: Vec<Event> = Vec::new();
    let mut next_until = |what: &str, done: &dyn Fn(&Event) -> bool| {
        support::wait_for(what, Duration::from_secs(30), || {
            while let Ok(event) = rx.try_recv() {
                events.push(event.clone());
                if done(&event) {
                    return Some(());
                }
            }
            None
        });
    };
    next_until("ticks from 1.0.0", &|e| {
        e.event == "tick" && e.data == "hello 1.0.0"
    });
    next_until("a second tick", &|e| e.event == "tick");
    cycle_to_2(&baton);
    next_until("a tick from 2.0.0", &|e| {
        e.event == "tick" && e.data == "hello 2.0.0"
    });
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();

    assert!(!events.iter().any(|e| e.event == "error"), "{events:#?}");
    // The first stream: ticks of 1.0.0, then the restart event, then its end.
    let first: Vec<&Event> = events.iter().filter(|e| e.conn == 0).collect();
    let n = first.len();
    assert!(n >= 4, "{events:#?}");
    assert!(first[..n - 2]
        .iter()
        .all(|e| e.event == "tick" && e.data == "hello 1.0.0"));
    assert_eq!(first[n - 2].event, "restart", "{events:#?}");
    assert_eq!(first[n - 2].data, "hello 1.0.0");
    assert_eq!(first[n - 2].retry, Some(100));
    assert_eq!(first[n - 1].event, "end", "{events:#?}");
    assert_eq!(first[n - 1].data, "", "nothing after the restart event");
    // Every stream that ended said restart first (a reconnect that reached
    // the draining worker on a kept-alive connection is told so at once),
    // and the last one is served by 2.0.0.
    for (i, e) in events.iter().enumerate() {
        if e.event == "end" {
            assert_eq!(events[i - 1].event, "restart", "{events:#?}");
        }
    }
    let last = events.last().unwrap();
    assert!(last.conn >= 1 && last.data == "hello 2.0.0", "{events:#?}");
}
