//! HTTP/2 through `baton::serve::http`: the example serves HTTP/1.1 and
//! cleartext HTTP/2 (prior knowledge) on the same socket. A real HTTP/2
//! client (hyper's, through reqwest) sees no failed request across graceful
//! cycles: each draining worker sends GOAWAY, finishes the streams it took,
//! and the client opens a new connection for the rest, as HTTP/2 clients do.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{self, Baton};

/// Upper bounds of the load.
const MAX_REQUESTS: u64 = 200_000;
const MAX_TIME: Duration = Duration::from_secs(120);

#[test]
fn http2_clients_lose_nothing_across_cycles() {
    let baton = Baton::start(Baton::dir_with_hello(), &Baton::hello_config(""));
    baton.wait_ready();
    // HTTP/1.1 on the same socket.
    assert_eq!(support::version(baton.addr()), "1.0.0");
    let url = format!("http://{}/", baton.addr());
    let (ok, failed, h1) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let load = {
        let (ok, failed, h1, stop, errors) = (
            ok.clone(),
            failed.clone(),
            h1.clone(),
            stop.clone(),
            errors.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = reqwest::Client::builder()
                    .http2_prior_knowledge()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap();
                let started = Instant::now();
                let mut tasks = Vec::new();
                for _ in 0..32 {
                    let (client, url, ok, failed, h1, stop, errors) = (
                        client.clone(),
                        url.clone(),
                        ok.clone(),
                        failed.clone(),
                        h1.clone(),
                        stop.clone(),
                        errors.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        while !stop.load(Ordering::SeqCst)
                            && started.elapsed() < MAX_TIME
                            && ok.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst)
                                < MAX_REQUESTS
                        {
                            match client.get(&url).send().await {
                                Ok(r) if r.status().is_success() => {
                                    if r.version() != reqwest::Version::HTTP_2 {
                                        h1.fetch_add(1, Ordering::SeqCst);
                                    }
                                    match r.bytes().await {
                                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                                        Err(e) => {
                                            errors.lock().unwrap().push(format!("body: {e:?}"));
                                            failed.fetch_add(1, Ordering::SeqCst)
                                        }
                                    };
                                }
                                Ok(r) => {
                                    errors.lock().unwrap().push(format!("status {}", r.status()));
                                    failed.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(e) => {
                                    errors.lock().unwrap().push(format!("{e:?}"));
                                    failed.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
    };
    let wait_more = |n: u64| {
        let target = ok.load(Ordering::SeqCst) + n;
        support::wait_for("more HTTP/2 requests", Duration::from_secs(60), || {
            (ok.load(Ordering::SeqCst) >= target).then_some(())
        });
    };
    wait_more(500);
    for _ in 0..4 {
        baton.cycle();
        wait_more(500);
    }
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    let errors = errors.lock().unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "first errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert_eq!(h1.load(Ordering::SeqCst), 0, "every reply came over HTTP/2");
    assert!(ok.load(Ordering::SeqCst) >= 2500);
}
