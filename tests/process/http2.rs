//! HTTP/2 through `baton::serve::http`: the example serves HTTP/1.1 and
//! cleartext HTTP/2 (prior knowledge) on the same socket. A real HTTP/2
//! client (hyper's, through reqwest) sees no failed request across graceful
//! cycles: each draining worker sends GOAWAY, finishes the streams it took,
//! and the client opens a new connection for the rest, as HTTP/2 clients do.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{self, Baton};

/// Upper bounds of a load run.
const MAX_REQUESTS: u64 = 200_000;
const MAX_TIME: Duration = Duration::from_secs(120);

/// What a load run counts.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Replies in another protocol version than expected.
    other_version: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// Runs 16 request loops on each of `clients` (a client, its URL, and the
/// version its replies must come in) while `baton` cycles `cycles` times;
/// asserts that no request failed and every reply came in its version.
pub(crate) fn no_failures_across_cycles(
    baton: &Baton,
    clients: Vec<(reqwest::Client, String, reqwest::Version)>,
    cycles: usize,
) {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (counts, stop) = (counts.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let started = Instant::now();
                let mut tasks = Vec::new();
                for (client, url, version) in clients {
                    for _ in 0..16 {
                        let (client, url) = (client.clone(), url.clone());
                        let (counts, stop) = (counts.clone(), stop.clone());
                        tasks.push(tokio::spawn(async move {
                            while !stop.load(Ordering::SeqCst)
                                && started.elapsed() < MAX_TIME
                                && counts.ok.load(Ordering::SeqCst)
                                    + counts.failed.load(Ordering::SeqCst)
                                    < MAX_REQUESTS
                            {
                                let fail = |what: String| {
                                    counts.errors.lock().unwrap().push(what);
                                    counts.failed.fetch_add(1, Ordering::SeqCst);
                                };
                                match client.get(&url).send().await {
                                    Ok(r) if r.status().is_success() => {
                                        if r.version() != version {
                                            counts.other_version.fetch_add(1, Ordering::SeqCst);
                                        }
                                        match r.bytes().await {
                                            Ok(_) => {
                                                counts.ok.fetch_add(1, Ordering::SeqCst);
                                            }
                                            Err(e) => fail(format!("body: {e:?}")),
                                        }
                                    }
                                    Ok(r) => fail(format!("status {}", r.status())),
                                    Err(e) => fail(format!("{e:?}")),
                                }
                            }
                        }));
                    }
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
    };
    let wait_more = |n: u64| {
        let target = counts.ok.load(Ordering::SeqCst) + n;
        support::wait_for("more requests", Duration::from_secs(60), || {
            (counts.ok.load(Ordering::SeqCst) >= target
                || counts.failed.load(Ordering::SeqCst) > 100)
                .then_some(())
        });
    };
    wait_more(500);
    for _ in 0..cycles {
        baton.cycle();
        wait_more(500);
    }
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    let errors = counts.errors.lock().unwrap();
    assert_eq!(
        counts.failed.load(Ordering::SeqCst),
        0,
        "first errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert_eq!(counts.other_version.load(Ordering::SeqCst), 0);
    assert!(counts.ok.load(Ordering::SeqCst) >= 500 * (cycles as u64 + 1));
}

#[test]
fn http2_clients_lose_nothing_across_cycles() {
    let baton = Baton::start(Baton::dir_with_hello(), &Baton::hello_config(""));
    baton.wait_ready();
    // HTTP/1.1 on the same socket.
    assert_eq!(support::version(baton.addr()), "1.0.0");
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = format!("http://{}/", baton.addr());
    no_failures_across_cycles(&baton, vec![(client, url, reqwest::Version::HTTP_2)], 4);
}
