//! The health check of a release's worker (`[releases] health`): `GET` on
//! one of the master's TCP sockets answering 2xx, or a command exiting 0.
//! One task per checked worker sends each result to the master, which
//! feeds it to the trial (during one) or only reports it
//! (after promotion, with `health_after`).

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::command::{self, Failure};
use crate::config::{Health, HealthCheck};
use crate::protocol::{self, describe_exit};

/// The worker a check looks at.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Its id.
    pub worker: u64,
    /// Its PID (`BATON_WORKER_PID` for `exec:` checks).
    pub pid: u32,
    /// Its release id and version, when it runs one.
    pub release: Option<(String, Option<String>)>,
}

/// What a check needs besides its target.
#[derive(Debug, Clone)]
pub(crate) struct Checker {
    /// The check and its timing.
    pub health: Health,
    /// Where `http:` checks connect.
    pub addr: Option<SocketAddr>,
    /// The children's environment, for `exec:` checks.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory of `exec:` checks.
    pub workdir: PathBuf,
}

/// One check's result for one worker.
pub(crate) type Report = (u64, Result<(), String>);

/// Checks `target` now and then every `interval` until aborted.
pub(crate) fn spawn(
    checker: Checker,
    target: Target,
    results: mpsc::UnboundedSender<Report>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let result = checker.check(&target).await;
            if results.send((target.worker, result)).is_err() {
                return;
            }
            tokio::time::sleep(checker.health.interval).await;
        }
    })
}

impl Checker {
    async fn check(&self, target: &Target) -> Result<(), String> {
        let timeout = self.health.timeout;
        let limit = humantime::format_duration(timeout);
        match &self.health.check {
            HealthCheck::Http { path, .. } => {
                let addr = self
                    .addr
                    .ok_or_else(|| "no TCP socket to check".to_owned())?;
                let agent = format!("baton-health/{}", env!("CARGO_PKG_VERSION"));
                match tokio::time::timeout(timeout, get_status(addr, path, &agent)).await {
                    Ok(Ok(code)) if (200..300).contains(&code) => Ok(()),
                    Ok(Ok(code)) => Err(format!("GET {path} answered {code}")),
                    Ok(Err(e)) => Err(format!("GET {path} failed: {e}")),
                    Err(_) => Err(format!("GET {path} did not answer within {limit}")),
                }
            }
            HealthCheck::Exec { command: cmd, args } => {
                let mut env = self.env.clone();
                if let Some((id, version)) = &target.release {
                    env.push((protocol::BATON_RELEASE.into(), id.into()));
                    if let Some(v) = version {
                        env.push(("BATON_VERSION".into(), v.into()));
                    }
                }
                env.push(("BATON_WORKER_PID".into(), target.pid.to_string().into()));
                let shown = cmd.display();
                match command::run(cmd, args, &env, Some(&self.workdir), timeout).await {
                    Ok(out) if out.status.success() => Ok(()),
                    Ok(out) => Err(format!(
                        "{shown} exited with {}: {}",
                        describe_exit(&out.status),
                        command::tail(&format!("{}{}", out.stdout, out.stderr))
                    )),
                    Err(Failure::Timeout) => {
                        Err(format!("{shown} did not exit within {limit}; killed it"))
                    }
                    Err(Failure::Spawn(e)) => Err(format!("cannot run {shown}: {e}")),
                    Err(Failure::Wait(e)) => Err(format!("cannot wait for {shown}: {e}")),
                }
            }
        }
    }
}

/// A wildcard bind address is reached through loopback.
pub(crate) fn reachable(mut addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    addr
}

/// `GET path` on a connection of its own (`Connection: close`, never
/// reused); the reply's status code.
pub(crate) async fn get_status(addr: SocketAddr, path: &str, agent: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 32];
    let mut len = 0;
    while len < 12 {
        let n = stream.read(&mut head[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP reply: {line:?}")))
}
