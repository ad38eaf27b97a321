//! `[program]`: the supervised program, its sockets, readiness and signals.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::{command_path, duration, parse_duration, Error};

/// How the worker is started, where it listens and how it is cycled.
#[derive(Debug, Clone)]
pub struct Program {
    /// The executable; a bare name is looked up in `PATH` at every start, a
    /// path is exec'd as written (through symlinks) at every start.
    pub command: PathBuf,
    /// Arguments after the command.
    pub args: Vec<String>,
    /// Extra environment for the worker, on top of the master's.
    pub env: BTreeMap<String, String>,
    /// Fetch credentials children may see after all: `[program] pass_env`.
    /// Workers and probes inherit the master's environment without the
    /// fetch credentials (the github source's `token_env` variable, and
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`
    /// with the s3 source); a variable named here is passed on anyway.
    pub pass_env: Vec<String>,
    /// The worker's working directory.
    pub workdir: PathBuf,
    /// The sockets the master holds and hands to every worker, in order.
    pub listen: Vec<Listen>,
    /// How a new worker says it is ready.
    pub ready: Ready,
    /// How long a new worker has to become ready.
    pub ready_timeout: Duration,
    /// The signal that asks a worker to drain and exit.
    pub stop_signal: Signal,
    /// How long a draining worker has before it is killed.
    pub drain_timeout: Duration,
    /// The longest wait between restarts of a crashing worker.
    pub restart_backoff_max: Duration,
}

impl Program {
    /// A program with the documented defaults: `ready = "notify"`,
    /// `ready_timeout = "30s"`, `stop_signal = "SIGTERM"`,
    /// `drain_timeout = "30s"`, workdir the current directory, no sockets.
    pub fn new(command: impl Into<PathBuf>) -> Program {
        Program {
            command: command.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            workdir: PathBuf::from("."),
            listen: Vec::new(),
            ready: Ready::Notify,
            ready_timeout: Duration::from_secs(30),
            stop_signal: Signal::TERM,
            drain_timeout: Duration::from_secs(30),
            restart_backoff_max: Duration::from_secs(30),
        }
    }
}

/// One socket the master holds: a name for `LISTEN_FDNAMES` and an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// The name workers see in `LISTEN_FDNAMES` (`name=` prefix in the config,
    /// else `listen<index>`).
    pub name: String,
    /// Where to bind.
    pub addr: ListenAddr,
}

/// A socket address to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP listener: `127.0.0.1:8080`, `[::1]:8080`.
    Tcp(SocketAddr),
    /// A UDP socket: `udp:127.0.0.1:5353`.
    Udp(SocketAddr),
    /// A unix stream listener: `unix:run/app.sock`.
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Udp(a) => write!(f, "udp:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for Listen {
    type Err = String;

    /// Parses `[name=]address`; the name defaults to the empty string and is
    /// filled in by position by the caller.
    fn from_str(s: &str) -> Result<Listen, String> {
        let (name, addr) = match s.split_once('=') {
            Some((name, addr)) => {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(format!(
                        "the name {name:?} must be letters, digits, '-', '_' or '.'"
                    ));
                }
                (name.to_owned(), addr)
            }
            None => (String::new(), s),
        };
        let addr = if let Some(path) = addr.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("a unix socket needs a path, as in unix:run/app.sock".into());
            }
            ListenAddr::Unix(PathBuf::from(path))
        } else if let Some(a) = addr.strip_prefix("udp:") {
            ListenAddr::Udp(parse_socket_addr(a)?)
        } else {
            ListenAddr::Tcp(parse_socket_addr(
                addr.strip_prefix("tcp:").unwrap_or(addr),
            )?)
        };
        Ok(Listen { name, addr })
    }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        "expected an IP address and port such as 127.0.0.1:8080 or [::1]:8080, \
         or unix:PATH, or udp:ADDRESS"
            .to_owned()
    })
}

/// How a new worker tells the master it is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// It sends `READY=1` to `$NOTIFY_SOCKET`, as `sd_notify(3)` does.
    Notify,
    /// It is considered ready this long after it started, if still running.
    Delay(Duration),
    /// `GET <path>` on the first TCP socket answers 2xx.
    Http(String),
}

impl FromStr for Ready {
    type Err = String;

    fn from_str(s: &str) -> Result<Ready, String> {
        if s == "notify" {
            Ok(Ready::Notify)
        } else if let Some(d) = s.strip_prefix("delay:") {
            Ok(Ready::Delay(parse_duration(d)?))
        } else if let Some(path) = s.strip_prefix("http:") {
            if !path.starts_with('/') {
                return Err("the health path must start with '/', as in http:/healthz".into());
            }
            Ok(Ready::Http(path.to_owned()))
        } else {
            Err("expected \"notify\", \"delay:<duration>\" or \"http:<path>\"".into())
        }
    }
}

/// A signal, by name (`SIGTERM` or `TERM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub(crate) nix::sys::signal::Signal);

impl Signal {
    /// SIGTERM.
    pub const TERM: Signal = Signal(nix::sys::signal::Signal::SIGTERM);

    /// The signal's number.
    pub fn number(self) -> i32 {
        self.0 as i32
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl FromStr for Signal {
    type Err = String;

    fn from_str(s: &str) -> Result<Signal, String> {
        let upper = s.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        let sig = nix::sys::signal::Signal::from_str(&full)
            .map_err(|_| "not a signal name such as SIGTERM, SIGINT or SIGQUIT".to_owned())?;
        if matches!(
            sig,
            nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP
        ) {
            return Err("the stop signal must be one a worker can catch to drain".into());
        }
        Ok(Signal(sig))
    }
}

/// `[program]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProgram {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    pass_env: Vec<String>,
    workdir: Option<String>,
    #[serde(default)]
    listen: Vec<String>,
    ready: Option<String>,
    ready_timeout: Option<String>,
    stop_signal: Option<String>,
    drain_timeout: Option<String>,
    restart_backoff_max: Option<String>,
}

impl RawProgram {
    /// Checks `[program]`; relative paths resolve against `base`.
    pub(super) fn parse(self, base: &Path) -> Result<Program, Error> {
        if self.command.trim().is_empty() {
            return Err(Error::invalid(
                "program.command",
                &self.command,
                "must name the program to run",
            ));
        }
        for key in self.env.keys() {
            check_var_name("program.env", key)?;
        }
        for name in &self.pass_env {
            check_var_name("program.pass_env", name)?;
        }
        let listen = parse_listen(&self.listen, base)?;
        let ready = parse_ready(self.ready.as_deref(), &listen)?;
        let defaults = Program::new(PathBuf::new());
        let ready_timeout = duration(
            "program.ready_timeout",
            &self.ready_timeout,
            defaults.ready_timeout,
        )?;
        let drain_timeout = duration(
            "program.drain_timeout",
            &self.drain_timeout,
            defaults.drain_timeout,
        )?;
        let restart_backoff_max = duration(
            "program.restart_backoff_max",
            &self.restart_backoff_max,
            defaults.restart_backoff_max,
        )?;
        let stop_signal = match &self.stop_signal {
            Some(sig) => sig
                .parse()
                .map_err(|reason| Error::invalid("program.stop_signal", sig, reason))?,
            None => defaults.stop_signal,
        };
        Ok(Program {
            command: command_path(base, &self.command),
            args: self.args,
            env: self.env,
            pass_env: self.pass_env,
            workdir: base.join(self.workdir.as_deref().unwrap_or(".")),
            listen,
            ready,
            ready_timeout,
            stop_signal,
            drain_timeout,
            restart_backoff_max,
        })
    }
}

/// `program.listen`: at least one address, each once; unnamed ones are
/// named by position, unix paths resolve against `base`.
fn parse_listen(texts: &[String], base: &Path) -> Result<Vec<Listen>, Error> {
    if texts.is_empty() {
        return Err(Error::invalid(
            "program.listen",
            "[]",
            "list at least one address, such as \"127.0.0.1:8080\"",
        ));
    }
    let mut listen: Vec<Listen> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let mut one: Listen = text
            .parse()
            .map_err(|reason| Error::invalid("program.listen", text, reason))?;
        if one.name.is_empty() {
            one.name = format!("listen{i}");
        }
        if let ListenAddr::Unix(path) = &one.addr {
            one.addr = ListenAddr::Unix(base.join(path));
        }
        if listen.iter().any(|l| l.addr == one.addr) {
            return Err(Error::invalid("program.listen", text, "listed twice"));
        }
        listen.push(one);
    }
    Ok(listen)
}

/// `program.ready` (default `notify`); http readiness needs a TCP socket.
fn parse_ready(text: Option<&str>, listen: &[Listen]) -> Result<Ready, Error> {
    let Some(text) = text else {
        return Ok(Ready::Notify);
    };
    let ready = text
        .parse()
        .map_err(|reason| Error::invalid("program.ready", text, reason))?;
    if let Ready::Http(_) = ready {
        if !listen.iter().any(|l| matches!(l.addr, ListenAddr::Tcp(_))) {
            return Err(Error::invalid(
                "program.ready",
                text,
                "http readiness needs a TCP address in program.listen",
            ));
        }
    }
    Ok(ready)
}

/// A variable name a child can be given: not empty, no `=` or NUL, and not
/// one of the protocol variables the master sets itself.
fn check_var_name(key: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        return Err(Error::invalid(key, name, "not a valid variable name"));
    }
    if crate::protocol::is_protocol_var(name) {
        return Err(Error::invalid(
            key,
            name,
            "baton sets this variable itself for each worker and probe",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::testing::parse;
    use super::*;

    #[test]
    fn minimal_config_gets_defaults_and_resolves_paths() {
        let c = parse(
            r#"[program]
command = "releases/current/hello"
listen = ["127.0.0.1:8080", "admin=[::1]:9090", "unix:run/hello.sock", "udp:127.0.0.1:5353"]
"#,
        )
        .unwrap();
        let p = c.program;
        assert_eq!(p.command, Path::new("/srv/app/releases/current/hello"));
        assert_eq!(p.workdir, Path::new("/srv/app/."));
        assert_eq!(p.ready, Ready::Notify);
        assert_eq!(p.ready_timeout, Duration::from_secs(30));
        assert_eq!(p.stop_signal, Signal::TERM);
        let names: Vec<_> = p.listen.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["listen0", "admin", "listen2", "listen3"]);
        assert_eq!(
            p.listen[2].addr,
            ListenAddr::Unix("/srv/app/run/hello.sock".into())
        );
        assert!(matches!(p.listen[3].addr, ListenAddr::Udp(_)));
    }

    #[test]
    fn bare_command_is_left_for_path_lookup() {
        let c = parse("[program]\ncommand = \"python3\"\nlisten = [\"127.0.0.1:1\"]\n").unwrap();
        assert_eq!(c.program.command, Path::new("python3"));
    }

    #[test]
    fn ready_modes_parse() {
        assert_eq!(
            "delay:2s".parse::<Ready>().unwrap(),
            Ready::Delay(Duration::from_secs(2))
        );
        assert_eq!(
            "http:/healthz".parse::<Ready>().unwrap(),
            Ready::Http("/healthz".into())
        );
        assert!("http:healthz".parse::<Ready>().is_err());
        assert!("sometimes".parse::<Ready>().is_err());
    }

    #[test]
    fn signals_parse_with_or_without_prefix() {
        assert_eq!("SIGQUIT".parse::<Signal>().unwrap().to_string(), "SIGQUIT");
        assert_eq!("int".parse::<Signal>().unwrap().to_string(), "SIGINT");
        assert!("SIGKILL".parse::<Signal>().is_err());
        assert!("SIGNOPE".parse::<Signal>().is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[program]\ncommand = \"x\"\nlisten = [\"nope\"]\n", "program.listen"),
            ("[program]\ncommand = \"x\"\nlisten = []\n", "program.listen"),
            ("[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:1\"]\nready_timeout = \"soon\"\n", "program.ready_timeout"),
            ("[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:1\"]\nstop_signal = \"SIGKILL\"\n", "program.stop_signal"),
            ("[program]\ncommand = \"x\"\nlisten = [\"unix:a\"]\nready = \"http:/\"\n", "program.ready"),
            ("[program]\ncommand = \"\"\nlisten = [\"127.0.0.1:1\"]\n", "program.command"),
            ("[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:1\"]\npass_env = [\"A=B\"]\n", "program.pass_env"),
            ("[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:1\"]\npass_env = [\"LISTEN_FDS\"]\n", "program.pass_env"),
            ("[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:1\"]\nenv = { NOTIFY_SOCKET = \"/x\" }\n", "program.env"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
        let err = parse("[program]\ncomand = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("comand"), "{err}");
    }
}
