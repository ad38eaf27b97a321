//! A real Prometheus server (Debian's `prometheus` package, installed by
//! ci/test) scraping the given baton masters' metrics every second, on
//! 127.0.0.1 with a free port and a scratch database, stopped with the test.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn prometheus_bin() -> PathBuf {
    let path = std::env::var_os("BATON_TEST_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    assert!(
        path.is_file(),
        "{} is not installed: run ci/test, which installs Debian's prometheus package",
        path.display()
    );
    path
}

/// A Prometheus server.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts one scraping `targets` (`host:port` of `[control] metrics`)
    /// every second; returns once it answers ready.
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: baton\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        super::wait_for("prometheus to be ready", Duration::from_secs(60), || {
            matches!(super::get(addr, "/-/ready"), Ok((200, _))).then_some(())
        });
        // Ready is not scraped: a query before the first scrape of every
        // target would find masters missing.
        super::wait_for("every target scraped", Duration::from_secs(60), || {
            if targets.is_empty() {
                return Some(());
            }
            let (code, body) = super::get(addr, "/api/v1/query?query=count(up%3D%3D1)").ok()?;
            let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
            let up = answer["data"]["result"][0]["value"][1].as_str()?.to_owned();
            (code == 200 && up == targets.len().to_string()).then_some(())
        });
        p
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
