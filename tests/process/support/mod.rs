//! Helpers shared by the process tests: temp dirs, the example binaries in
//! two versions, a running `baton` master, and the load generator.

pub mod client;
pub mod github;
pub mod http;
pub mod load;
pub mod prometheus;
pub mod s3;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use load::{Load, LoadMode};

/// The `baton` binary under test.
pub fn baton_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

/// Directory holding `hello-1.0.0` and `hello-2.0.0`: `BATON_TEST_BINS` (set
/// by ci/test), else built here once into `target/test-bins`.
pub fn hello_bins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("BATON_TEST_BINS") {
            return PathBuf::from(dir);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = root.join("target/test-bins");
        std::fs::create_dir_all(&out).unwrap();
        for version in ["1.0.0", "2.0.0"] {
            let target_dir = root.join("target/test-bins/build");
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--example", "hello", "--target-dir"])
                .arg(&target_dir)
                .env("HELLO_VERSION", version)
                .current_dir(root)
                .status()
                .expect("run cargo to build the hello example");
            assert!(status.success(), "building hello {version} failed");
            std::fs::copy(
                target_dir.join("release/examples/hello"),
                out.join(format!("hello-{version}")),
            )
            .unwrap();
        }
        out
    })
}

/// Path of the hello example of `version` ("1.0.0" or "2.0.0").
pub fn hello(version: &str) -> PathBuf {
    let path = hello_bins().join(format!("hello-{version}"));
    assert!(path.exists(), "{} is missing; run ci/test", path.display());
    path
}

/// Points the symlink `link` at `target` atomically.
pub fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Copies an executable with `cp`, not in this process: a fork by another
/// test thread never inherits the new file open for writing, which would
/// make its exec fail with ETXTBSY ("text file busy").
pub fn copy_executable(from: &Path, to: &Path) {
    let copied = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(copied.success(), "cp {} {}", from.display(), to.display());
}

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A request as the test servers see it.
pub struct HttpRequest {
    /// The request target, with its query.
    pub path: String,
    /// Headers, names lowercased.
    pub headers: std::collections::HashMap<String, String>,
}

/// Reads one request's line and headers (the test servers' requests have
/// no body).
pub fn read_request(stream: &TcpStream) -> std::io::Result<HttpRequest> {
    use std::io::BufRead;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = std::collections::HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    Ok(HttpRequest { path, headers })
}

/// Polls `done` every 20 ms for up to `timeout`; whether it came true.
pub fn wait_for_quietly(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running `baton run` master in a temp dir.
pub struct Baton {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
    pub addr: Option<SocketAddr>,
}

impl Baton {
    /// A temp dir with `bin/hello` pointing at hello 1.0.0; returns the dir.
    pub fn dir_with_hello() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        point(&dir.path().join("bin/hello"), &hello("1.0.0"));
        dir
    }

    /// Writes `baton.toml` into `dir` and starts the master; waits until it
    /// listens (the address comes from its log: configs use port 0).
    pub fn start(dir: tempfile::TempDir, config: &str) -> Baton {
        Baton::start_with_env(dir, config, &[])
    }

    /// As `start`, with extra environment for the master.
    pub fn start_with_env(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Baton {
        std::fs::write(dir.path().join("baton.toml"), config).unwrap();
        Baton::launch(dir, env)
    }

    /// Starts the master again in a dir that already has its config; the
    /// earlier log moves to `baton.prev.log`.
    pub fn restart(dir: tempfile::TempDir) -> Baton {
        let _ = std::fs::rename(
            dir.path().join("baton.log"),
            dir.path().join("baton.prev.log"),
        );
        Baton::launch(dir, &[])
    }

    /// As `start`, running the master from `binary` (a copy of baton the
    /// test may replace).
    pub fn start_from(
        dir: tempfile::TempDir,
        config: &str,
        binary: &Path,
        env: &[(&str, &str)],
    ) -> Baton {
        std::fs::write(dir.path().join("baton.toml"), config).unwrap();
        Baton::launch_bin(dir, env, binary)
    }

    fn launch(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Baton {
        Baton::launch_bin(dir, env, &baton_bin())
    }

    fn launch_bin(dir: tempfile::TempDir, env: &[(&str, &str)], binary: &Path) -> Baton {
        let log = dir.path().join("baton.log");
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(dir.path().join("baton.toml"))
            .env("BATON_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut baton = Baton {
            dir,
            child: Some(child),
            log,
            addr: None,
        };
        let log_path = baton.log.clone();
        let child = baton.child.as_mut().unwrap();
        baton.addr = wait_for("the master to listen", Duration::from_secs(10), || {
            // Exited is checked first and the log read after: a master
            // that listened and then died quickly still gives its address.
            let exited = child.try_wait().ok().flatten();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let addr = log.lines().find_map(|l| {
                let rest = l.split("listening on ").nth(1)?;
                rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
            });
            if let (None, Some(status)) = (addr, exited) {
                panic!("baton exited with {status} before listening:\n{log}");
            }
            addr
        })
        .into();
        baton
    }

    /// A config for `bin/hello` on an ephemeral port, plus `extra` lines.
    pub fn hello_config(extra: &str) -> String {
        format!(
            "[program]\ncommand = \"bin/hello\"\nlisten = [\"127.0.0.1:0\"]\nready_timeout = \"10s\"\ndrain_timeout = \"10s\"\n{extra}\n"
        )
    }

    /// The TCP address the master listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the master listens on TCP")
    }

    /// Kills the master with SIGKILL (its workers get SIGTERM through their
    /// parent-death signal and drain) and hands back its directory.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let mut child = self.child.take().unwrap();
        let kids = children(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        for (pid, _) in kids {
            wait_for_quietly(Duration::from_secs(15), || process_state(pid).is_none());
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Waits for the master to exit by itself (a worker that kills it, as
    /// a crash would) and hands back its directory, as `kill9` does.
    pub fn died(mut self, timeout: Duration) -> tempfile::TempDir {
        self.wait_exit(timeout);
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// The address `[control] metrics` listens on (configs use port 0).
    pub fn metrics_addr(&self) -> SocketAddr {
        wait_for("the metrics address", Duration::from_secs(10), || {
            self.log().lines().find_map(|l| {
                l.split("serving metrics on ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
    }

    /// Where `current` points, as a directory name.
    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.dir.path().join("releases/current"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// Waits until `current` names a release whose id starts with `prefix`
    /// (a release is promoted only after its trial); returns the id.
    pub fn wait_current(&self, prefix: &str) -> String {
        wait_for(
            &format!("current to name a {prefix}* release"),
            Duration::from_secs(30),
            || self.current().filter(|c| c.starts_with(prefix)),
        )
    }

    /// The digests recorded as failed in the releases directory.
    pub fn failed(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("releases/.failed"))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Whether a trial record exists.
    pub fn trial_recorded(&self) -> bool {
        self.dir.path().join("releases/.trial").exists()
    }

    /// Waits for the trial record to go: a trial's end is recorded in
    /// steps (`current` or the failed list first, then the record).
    pub fn wait_trial_ended(&self) {
        wait_for("the trial record to go", Duration::from_secs(10), || {
            (!self.trial_recorded()).then_some(())
        });
    }

    /// Temp files and staging dirs left in the releases directory.
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("releases"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        n.starts_with(".download-")
                            || n.starts_with(".staging-")
                            || n.ends_with(".tmp-link")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The master's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything the master logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `text`.
    pub fn count(&self, text: &str) -> usize {
        self.log().lines().filter(|l| l.contains(text)).count()
    }

    /// Waits until `count(text) >= n`.
    pub fn wait_count(&self, text: &str, n: usize, timeout: Duration) {
        wait_for(&format!("{n} log lines with {text:?}"), timeout, || {
            (self.count(text) >= n).then_some(())
        });
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) has no memory preconditions.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }

    /// Waits for the first worker to be ready.
    pub fn wait_ready(&self) {
        self.wait_count("worker is ready", 1, Duration::from_secs(15));
    }

    /// Sends SIGHUP and waits for the cycle's new worker to be ready and the
    /// old one to be told to drain.
    pub fn cycle(&self) {
        let drains = self.count("asking worker to drain");
        self.signal(libc::SIGHUP);
        self.wait_count(
            "asking worker to drain",
            drains + 1,
            Duration::from_secs(30),
        );
    }

    /// The master's live child processes (pid, state letter).
    pub fn children(&self) -> Vec<(u32, char)> {
        children(self.pid())
    }

    /// Open descriptors of the master.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Waits for the master to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let status = wait_for("the master to exit", timeout, || child.try_wait().unwrap());
        self.child = None;
        status
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let kids = children(child.id());
            // SAFETY: kill(2) has no memory preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
            for (pid, _) in kids {
                // SAFETY: as above; the worker's group id is its pid.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
        }
        if std::thread::panicking() {
            eprintln!("--- baton log ---\n{}", self.log());
        }
    }
}

/// Live children of `pid`: (pid, state letter from /proc/<pid>/stat).
pub fn children(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            if let Some(state) = process_state(child) {
                out.push((child, state));
            }
        }
    }
    out
}

/// The state letter of a process, `None` once it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// One GET on a new connection: (status, body).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    parse_reply(&reply)
}

fn parse_reply(reply: &str) -> std::io::Result<(u16, String)> {
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("incomplete reply {reply:?}")))?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// The version a fresh connection is served by.
pub fn version(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/").expect("GET /");
    assert_eq!(status, 200, "GET / answered {status}: {body}");
    body.trim().trim_start_matches("hello ").to_owned()
}

/// Waits until fresh connections are served by `want` (a connection reset
/// by a worker that is being killed counts as "not yet").
pub fn wait_version(addr: SocketAddr, want: &str) {
    wait_for(
        &format!("version {want} to be served"),
        Duration::from_secs(15),
        || match get(addr, "/") {
            Ok((200, body)) => (body.trim().trim_start_matches("hello ") == want).then_some(()),
            _ => None,
        },
    );
}

/// A stand-in for systemd's notify socket: the datagrams baton sends its
/// own supervisor (`NOTIFY_SOCKET`).
pub struct NotifyListener {
    socket: std::os::unix::net::UnixDatagram,
    seen: Vec<String>,
}

impl NotifyListener {
    /// Binds `path`.
    pub fn bind(path: &Path) -> NotifyListener {
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifyListener {
            socket,
            seen: Vec::new(),
        }
    }

    /// Waits for the next message containing `what` (skipping earlier
    /// ones) and returns it.
    pub fn wait(&mut self, what: &str) -> String {
        let (socket, seen) = (&self.socket, &mut self.seen);
        wait_for(what, Duration::from_secs(20), || {
            let mut buf = [0u8; 4096];
            if let Ok(n) = socket.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            seen.iter()
                .position(|m| m.contains(what))
                .map(|i| seen.drain(..=i).next_back().unwrap())
        })
    }
}

/// Waits until the master logging to `log` says where it listens.
pub fn wait_listening(log: &Path) -> SocketAddr {
    wait_for("the master to listen", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines().find_map(|l| {
            l.split("listening on ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    })
}

/// The test venv's python (`BATON_TEST_MOTO_BIN`, set by ci/test): it has
/// moto, boto3, grpcio and websockets.
pub fn venv_python() -> PathBuf {
    PathBuf::from(
        std::env::var_os("BATON_TEST_MOTO_BIN").expect("BATON_TEST_MOTO_BIN (ci/test sets it)"),
    )
    .join("python")
}

/// Starts `tests/process/scripts/<script> <addr> <progress> <stop>` on the
/// venv's python, its output piped: a client that writes its progress to a
/// file and ends once `stop` exists.
pub fn python_client(script: &str, addr: SocketAddr, progress: &Path, stop: &Path) -> Child {
    Command::new(venv_python())
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/process/scripts")
                .join(script),
        )
        .arg(addr.to_string())
        .args([progress, stop])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
