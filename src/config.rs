//! The TOML configuration: parsing, defaults and validation.
//!
//! Every problem is reported once, naming the key and what is wrong with it,
//! before anything is bound or spawned.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// A configuration error: the file could not be read, is not valid TOML, or a
/// key holds a value that baton cannot use.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has keys of the wrong type or name.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's description, with line and column.
        message: String,
    },
    /// A key holds a value baton cannot use.
    #[error("invalid `{key}` = {value:?}: {reason}")]
    Invalid {
        /// The dotted key, such as `program.ready_timeout`.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    fn invalid(key: &str, value: impl fmt::Display, reason: impl fmt::Display) -> Error {
        Error::Invalid {
            key: key.to_owned(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The supervised program: `[program]`.
    pub program: Program,
}

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

/// Parses a duration such as `30s`, `500ms` or `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration such as 30s, 500ms or 2m ({e})"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    program: RawProgram,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProgram {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    #[serde(default)]
    listen: Vec<String>,
    ready: Option<String>,
    ready_timeout: Option<String>,
    stop_signal: Option<String>,
    drain_timeout: Option<String>,
    restart_backoff_max: Option<String>,
}

impl Config {
    /// Reads and validates a config file; relative paths in it resolve against
    /// the file's own directory.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &base).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Error> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| Error::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let p = raw.program;
        let mut program = Program::new(PathBuf::new());
        if p.command.trim().is_empty() {
            return Err(Error::invalid(
                "program.command",
                &p.command,
                "must name the program to run",
            ));
        }
        program.command = if p.command.contains('/') {
            base.join(&p.command)
        } else {
            PathBuf::from(&p.command)
        };
        program.args = p.args;
        for key in p.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(Error::invalid(
                    "program.env",
                    key,
                    "not a valid variable name",
                ));
            }
        }
        program.env = p.env;
        program.workdir = base.join(p.workdir.as_deref().unwrap_or("."));
        if p.listen.is_empty() {
            return Err(Error::invalid(
                "program.listen",
                "[]",
                "list at least one address, such as \"127.0.0.1:8080\"",
            ));
        }
        for (i, text) in p.listen.iter().enumerate() {
            let mut listen: Listen = text
                .parse()
                .map_err(|reason| Error::invalid("program.listen", text, reason))?;
            if listen.name.is_empty() {
                listen.name = format!("listen{i}");
            }
            if let ListenAddr::Unix(path) = &listen.addr {
                listen.addr = ListenAddr::Unix(base.join(path));
            }
            if program
                .listen
                .iter()
                .any(|l: &Listen| l.addr == listen.addr)
            {
                return Err(Error::invalid("program.listen", text, "listed twice"));
            }
            program.listen.push(listen);
        }
        if let Some(ready) = &p.ready {
            program.ready = ready
                .parse()
                .map_err(|reason| Error::invalid("program.ready", ready, reason))?;
        }
        if let Ready::Http(_) = program.ready {
            if !program
                .listen
                .iter()
                .any(|l| matches!(l.addr, ListenAddr::Tcp(_)))
            {
                return Err(Error::invalid(
                    "program.ready",
                    p.ready.as_deref().unwrap_or_default(),
                    "http readiness needs a TCP address in program.listen",
                ));
            }
        }
        let duration = |key: &str, value: &Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(v) => match parse_duration(v) {
                Ok(d) if d.is_zero() => Err(Error::invalid(key, v, "must be more than zero")),
                Ok(d) => Ok(d),
                Err(reason) => Err(Error::invalid(key, v, reason)),
            },
        };
        program.ready_timeout = duration(
            "program.ready_timeout",
            &p.ready_timeout,
            program.ready_timeout,
        )?;
        program.drain_timeout = duration(
            "program.drain_timeout",
            &p.drain_timeout,
            program.drain_timeout,
        )?;
        program.restart_backoff_max = duration(
            "program.restart_backoff_max",
            &p.restart_backoff_max,
            program.restart_backoff_max,
        )?;
        if let Some(sig) = &p.stop_signal {
            program.stop_signal = sig
                .parse()
                .map_err(|reason| Error::invalid("program.stop_signal", sig, reason))?;
        }
        Ok(Config { program })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(text, Path::new("/srv/app"))
    }

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
