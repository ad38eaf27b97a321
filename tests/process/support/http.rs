//! A real HTTP/1.1 server on 127.0.0.1 for the fetcher tests, with the
//! faults the bad-input tests need: error statuses, truncated and stalled
//! bodies, redirect loops. With validators on it sends ETag and
//! Last-Modified and answers conditional requests with 304.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a path answers.
#[derive(Clone)]
pub enum Reply {
    /// 200 with this body.
    Body(Arc<Vec<u8>>),
    /// This status and a short body.
    Status(u16),
    /// Content-Length of the whole body, but only `send` bytes, then close.
    Truncate(Arc<Vec<u8>>, usize),
    /// `send` bytes of the body, then silence for up to 30 s.
    Stall(Arc<Vec<u8>>, usize),
    /// 302 to this location.
    Redirect(String),
    /// The whole body, one byte per interval (each read is quick; the
    /// body never ends in time).
    Drip(Arc<Vec<u8>>, Duration),
}

/// One request as the server saw it: (path, status answered).
pub type Seen = (String, u16);

struct State {
    routes: HashMap<String, (Reply, u64)>,
    generation: u64,
    seen: Vec<Seen>,
    headers: Vec<(String, HashMap<String, String>)>,
}

/// The server; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    /// Starts a server; `validators` turns ETag/Last-Modified on.
    pub fn start(validators: bool) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            routes: HashMap::new(),
            generation: 0,
            seen: Vec::new(),
            headers: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = handle(stream, &s, validators);
                });
            }
        });
        HttpServer { addr, state, stop }
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sets what `path` answers; a new body gets new validators.
    pub fn set(&self, path: &str, reply: Reply) {
        let mut s = self.state.lock().unwrap();
        s.generation += 1;
        let generation = s.generation;
        s.routes.insert(path.to_owned(), (reply, generation));
    }

    /// Serves `bytes` at `path`.
    pub fn body(&self, path: &str, bytes: Vec<u8>) {
        self.set(path, Reply::Body(Arc::new(bytes)));
    }

    /// Request headers (lowercase names) of each request for `path`.
    pub fn headers(&self, path: &str) -> Vec<HashMap<String, String>> {
        let s = self.state.lock().unwrap();
        s.headers
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// Requests seen for `path`, with the status answered.
    pub fn seen(&self, path: &str) -> Vec<u16> {
        let s = self.state.lock().unwrap();
        s.seen
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, st)| *st)
            .collect()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn handle(stream: TcpStream, state: &Mutex<State>, validators: bool) -> std::io::Result<()> {
    let super::HttpRequest { path, headers } = super::read_request(&stream)?;
    let route = {
        let mut s = state.lock().unwrap();
        s.headers.push((path.clone(), headers.clone()));
        s.routes.get(&path).cloned()
    };
    let mut out = stream;
    let record = |status| state.lock().unwrap().seen.push((path.clone(), status));
    let Some((reply, generation)) = route else {
        record(404);
        return write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
        );
    };
    let etag = format!("\"g{generation}\"");
    let last_modified = format!(
        "Sun, 06 Nov 1994 08:{:02}:{:02} GMT",
        generation / 60 % 60,
        generation % 60
    );
    let content_type = if path.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let validator_headers = if validators {
        format!("ETag: {etag}\r\nLast-Modified: {last_modified}\r\n")
    } else {
        String::new()
    };
    match reply {
        Reply::Body(bytes) => {
            let fresh = headers.get("if-none-match") == Some(&etag)
                || (!headers.contains_key("if-none-match")
                    && headers.get("if-modified-since") == Some(&last_modified));
            if validators && fresh {
                record(304);
                return write!(
                    out,
                    "HTTP/1.1 304 Not Modified\r\n{validator_headers}Connection: close\r\n\r\n"
                );
            }
            record(200);
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{validator_headers}Connection: close\r\n\r\n",
                bytes.len()
            )?;
            out.write_all(&bytes)
        }
        Reply::Status(code) => {
            record(code);
            write!(
                out,
                "HTTP/1.1 {code} Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\nerror"
            )
        }
        Reply::Truncate(bytes, send) => {
            record(200);
            write!(out, "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bytes.len())?;
            out.write_all(&bytes[..send])
        }
        Reply::Stall(bytes, send) => {
            record(200);
            write!(out, "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bytes.len())?;
            out.write_all(&bytes[..send])?;
            out.flush()?;
            std::thread::sleep(Duration::from_secs(30));
            Ok(())
        }
        Reply::Drip(bytes, every) => {
            record(200);
            write!(out, "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bytes.len())?;
            for byte in bytes.iter() {
                out.write_all(&[*byte])?;
                out.flush()?;
                std::thread::sleep(every);
            }
            Ok(())
        }
        Reply::Redirect(location) => {
            record(302);
            write!(out, "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        }
    }
}
