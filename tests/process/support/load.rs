//! A bounded HTTP/1.1 load generator on loopback. Like `ab -k`, it never
//! retries: a connect error, a reset, an early EOF or a non-2xx reply is a
//! failed request. A `Connection: close` reply makes the next request open a
//! new connection, as any client does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Upper bounds for any load run.
const MAX_REQUESTS: u64 = 5_000_000;
const MAX_TIME: Duration = Duration::from_secs(180);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Connection reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Keep-alive connections, reused until the server says close.
    KeepAlive,
    /// A new connection per request (`Connection: close`).
    NewConnection,
    /// HTTP/1.0 with `Connection: Keep-Alive`, reusing a connection exactly
    /// when the reply's Connection header mentions keep-alive, as `ab -k`
    /// does.
    KeepAlive10,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// 2xx replies.
    pub ok: u64,
    /// Failed requests.
    pub failed: u64,
    /// The first few failures, described.
    pub errors: Vec<String>,
    /// Reply bodies (trimmed) and how often each was seen.
    pub versions: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    report: Mutex<Report>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut r = self.report.lock().unwrap();
        r.failed += 1;
        if r.errors.len() < 20 {
            r.errors.push(what);
        }
    }
}

/// A load run in the background.
pub struct Load {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `conns` clients against `addr` requesting `path`.
    pub fn start(addr: SocketAddr, conns: usize, mode: LoadMode) -> Load {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let start = Instant::now();
                let tasks: Vec<_> = (0..conns)
                    .map(|_| tokio::spawn(client(addr, mode, s.clone(), start)))
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            });
        });
        Load {
            shared,
            thread: Some(thread),
        }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.shared.ok.load(Ordering::SeqCst)
    }

    /// Failed requests so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` more requests have succeeded.
    pub fn wait_more(&self, n: u64) {
        let target = self.ok() + n;
        super::wait_for(
            &format!("{n} more successful requests"),
            Duration::from_secs(30),
            || (self.ok() >= target).then_some(()),
        );
    }

    /// Stops the clients and returns what they saw.
    pub fn finish(mut self) -> Report {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.shared.report.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

async fn client(addr: SocketAddr, mode: LoadMode, shared: Arc<Shared>, start: Instant) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut reused = false;
    while !shared.stop.load(Ordering::SeqCst)
        && start.elapsed() < MAX_TIME
        && shared.ok.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < MAX_REQUESTS
    {
        if conn.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(BufReader::new(s));
                    reused = false;
                }
                Err(e) => {
                    shared.fail(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let stream = conn.as_mut().unwrap();
        match tokio::time::timeout(REQUEST_TIMEOUT, request(stream, mode)).await {
            Ok(Ok((status, close, body))) => {
                if (200..300).contains(&status) {
                    shared.ok.fetch_add(1, Ordering::SeqCst);
                    let mut r = shared.report.lock().unwrap();
                    r.ok += 1;
                    *r.versions.entry(body.trim().to_owned()).or_default() += 1;
                } else {
                    shared.fail(format!("status {status}: {}", body.trim()));
                }
                if close || mode == LoadMode::NewConnection {
                    conn = None;
                } else {
                    reused = true;
                }
            }
            Ok(Err(e)) => {
                let on = if reused { "reused" } else { "new" };
                shared.fail(format!("request on a {on} connection: {e}"));
                conn = None;
            }
            Err(_) => {
                shared.fail("request timed out".to_owned());
                conn = None;
            }
        }
    }
}

/// One request: (status, server said close, body).
async fn request(
    stream: &mut BufReader<TcpStream>,
    mode: LoadMode,
) -> std::io::Result<(u16, bool, String)> {
    let request: &[u8] = match mode {
        LoadMode::KeepAlive => b"GET / HTTP/1.1\r\nHost: load\r\n\r\n",
        LoadMode::NewConnection => b"GET / HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n",
        LoadMode::KeepAlive10 => b"GET / HTTP/1.0\r\nHost: load\r\nConnection: Keep-Alive\r\n\r\n",
    };
    stream.get_mut().write_all(request).await?;
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before any reply",
        ));
    }
    let status: u16 = line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    let mut server_close = false;
    let mut server_keep_alive = false;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed inside the headers",
            ));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .parse()
                    .map_err(|_| std::io::Error::other("bad content-length"))?;
            } else if name.eq_ignore_ascii_case("connection") {
                let value = value.to_ascii_lowercase();
                server_close |= value.split(',').any(|t| t.trim() == "close");
                server_keep_alive |= value.contains("keep-alive");
            }
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    if mode == LoadMode::KeepAlive10 {
        // Like ab: reuse exactly when the reply mentions keep-alive.
        server_close = !server_keep_alive;
    }
    Ok((
        status,
        server_close,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}
