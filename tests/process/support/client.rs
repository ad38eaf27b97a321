//! One keep-alive HTTP/1.1 connection, never retried: a test sees each
//! reset and each `Connection: close` the server sends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One keep-alive HTTP/1.1 connection.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    /// One request: (the server said close, trimmed body). Panics on any
    /// error or a non-200 status: a reset is a failed request.
    pub fn get(&mut self) -> (bool, String) {
        self.reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("send a request");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read the status");
        assert!(line.starts_with("HTTP/1.1 200"), "status line {line:?}");
        let (mut length, mut close) = (0, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("read a header");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').expect("a header");
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            } else if name.eq_ignore_ascii_case("connection") {
                close |= value.to_ascii_lowercase().contains("close");
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("read the body");
        (close, String::from_utf8(body).unwrap().trim().to_owned())
    }

    /// The server closes the connection cleanly: EOF, not a reset.
    pub fn expect_eof(&mut self, what: &str) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{what}: unexpected data {rest:?}"),
            Err(e) => panic!("{what}: want a clean close, got {e}"),
        }
    }
}
