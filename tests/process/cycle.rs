//! Graceful cycles under load: zero failed requests.

use std::time::Duration;

use crate::support::{self, Baton, Load, LoadMode};

/// 20 cycles while 64 clients hammer the service; the command's symlink
/// flips between two versions before each cycle.
fn cycles_under_load(mode: LoadMode) {
    let dir = Baton::dir_with_hello();
    let link = dir.path().join("bin/hello");
    let baton = Baton::start(dir, &Baton::hello_config(""));
    baton.wait_ready();
    let master = baton.pid();
    let addr = baton.addr();
    assert_eq!(support::version(addr), "1.0.0");

    let load = Load::start(addr, 64, mode);
    load.wait_more(500);
    for i in 0..20 {
        let next = if i % 2 == 0 { "2.0.0" } else { "1.0.0" };
        support::point(&link, &support::hello(next));
        baton.cycle();
        support::wait_version(addr, next);
        load.wait_more(200);
        assert_eq!(load.failed(), 0, "failures during cycle {i}");
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    // `wait_more` made requests complete around every cycle: load ran
    // through all of them, however slow the machine.
    assert!(report.ok >= 500 + 20 * 200, "{report:?}");
    assert!(
        report.versions.contains_key("hello 1.0.0") && report.versions.contains_key("hello 2.0.0")
    );
    assert_eq!(baton.pid(), master, "the master's PID changed");
    assert_eq!(baton.count("worker is ready"), 21);
    // Old workers all drain and exit: only the serving worker is left.
    support::wait_for("old workers to exit", Duration::from_secs(15), || {
        (baton.children().len() == 1).then_some(())
    });
}

#[test]
fn cycles_under_keepalive_load_fail_no_request() {
    cycles_under_load(LoadMode::KeepAlive);
}

/// Regression: hyper turned the draining `Connection: close` into
/// `close, keep-alive` for HTTP/1.0 keep-alive clients, and ab -k lost one
/// request per connection at every cycle.
#[test]
fn cycles_under_http10_keepalive_load_like_ab_fail_no_request() {
    cycles_under_load(LoadMode::KeepAlive10);
}

#[test]
fn cycles_under_new_connection_load_fail_no_request() {
    cycles_under_load(LoadMode::NewConnection);
}

/// Regression: a connection whose long streaming response was still being
/// sent counted as idle, so draining closed it right after the last byte and
/// the client's next request met a closed connection.
#[test]
fn keepalive_connection_after_a_streaming_response_gets_a_reply() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = Baton::dir_with_hello();
    let link = dir.path().join("bin/hello");
    let baton = Baton::start(dir, &Baton::hello_config(""));
    baton.wait_ready();
    let stream = std::net::TcpStream::connect(baton.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    writer
        .write_all(b"GET /stream?ms=6000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    support::point(&link, &support::hello("2.0.0"));
    baton.cycle();
    // Read the chunked reply to its end, then ask again at once.
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut body = String::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        reader.read_exact(&mut chunk).unwrap();
        body.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        if n == 0 {
            break;
        }
    }
    assert!(body.ends_with("hello 1.0.0\n"), "{body:?}");
    writer
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "the next request got {status:?}"
    );
}

/// A request in flight on the old worker when the cycle happens completes
/// with the old version's answer.
#[test]
fn slow_request_finishes_on_the_old_worker() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = Baton::dir_with_hello();
    let link = dir.path().join("bin/hello");
    let baton = Baton::start(dir, &Baton::hello_config(""));
    baton.wait_ready();
    // One request first on the same keep-alive connection: the second
    // request is then certainly on the old worker.
    let mut stream = std::net::TcpStream::connect(baton.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let read_reply = |reader: &mut BufReader<std::net::TcpStream>| {
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (head, String::from_utf8(body).unwrap())
    };
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut reader).1, "hello 1.0.0\n");
    stream
        .write_all(b"GET /?sleep=6000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    support::point(&link, &support::hello("2.0.0"));
    baton.cycle();
    support::wait_version(baton.addr(), "2.0.0");
    let (head, body) = read_reply(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "hello 1.0.0\n");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "draining reply must close: {head}"
    );
}
