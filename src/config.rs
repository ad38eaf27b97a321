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
    /// Where releases are installed: `[releases]`.
    pub releases: Option<Releases>,
    /// Where new builds come from: `[fetch]`.
    pub fetch: Option<Fetch>,
    /// What a candidate must pass: `[verify]`.
    pub verify: Verify,
    /// The operator's interface: `[control]`.
    pub control: Control,
    /// Commands run around installs, promotions and rollbacks: `[hooks]`.
    pub hooks: Hooks,
}

/// Commands run at points of a release's life: `[hooks]`. Each runs with
/// the workers' environment (no fetch credentials) plus the release's
/// `BATON_*` variables, in `program.workdir`, in its own process group,
/// for at most `timeout` (then the group is killed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// Before a new release's trial: a non-zero exit (or a timeout)
    /// refuses the release, and its sha256 is recorded as failed.
    pub pre_install: Option<Hook>,
    /// After a release was promoted (`current` names it); failures are
    /// logged, never fatal.
    pub post_promote: Option<Hook>,
    /// After a rollback (`current` names `previous` again); failures are
    /// logged, never fatal.
    pub post_rollback: Option<Hook>,
    /// How long one hook may run (`hooks.timeout`, default 30 s).
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Hooks {
        Hooks {
            pre_install: None,
            post_promote: None,
            post_rollback: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// One hook: a command and its arguments, as `["cmd", "arg", …]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The executable (a path relative to the config file, or a name looked
    /// up in `PATH`).
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// The operator's interface: `[control]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    /// The unix control socket `baton status` and friends talk to (mode
    /// 0600). Default: `$RUNTIME_DIRECTORY/baton.sock` when systemd sets
    /// it, else `.baton.sock` beside the config file. `None` (library mode
    /// without a config file): no control socket.
    pub socket: Option<PathBuf>,
    /// Where to serve Prometheus metrics at `/metrics` (`None`: nowhere).
    pub metrics: Option<SocketAddr>,
}

/// `[releases] trial_attempts` when unset.
pub const TRIAL_ATTEMPTS_DEFAULT: u32 = 3;

/// The releases directory: `<id>/` per release and the `current` symlink.
#[derive(Debug, Clone)]
pub struct Releases {
    /// The directory.
    pub dir: PathBuf,
    /// The executable's name in a release and in archives.
    pub binary: String,
    /// How many releases to keep (besides `current` and the previous one).
    pub keep: usize,
    /// How long a new release's worker must stay ready, with no unexpected
    /// exit, before `current` is swapped to it (`"0s"`: at ready).
    pub settle: Duration,
    /// A health check the worker of a release on trial must pass.
    pub health: Option<Health>,
    /// How many times the trial of a release may be begun when the
    /// master's own death keeps interrupting it and there is no `current`
    /// to go back to (a fresh host's first release); after the last one
    /// the release is quarantined (default 3).
    pub trial_attempts: u32,
}

/// A release's health check: `[releases] health` and its `health_*` keys.
/// During a trial it runs from the moment the trial worker serves alone
/// until `settle` ends; `failures` failures in a row fail the trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// What is checked.
    pub check: HealthCheck,
    /// Time between checks (`health_interval`, default 1 s).
    pub interval: Duration,
    /// How long one check may take (`health_timeout`, default 2 s).
    pub timeout: Duration,
    /// Consecutive failures that end a trial (`health_failures`, default 3).
    pub failures: u32,
    /// Also check after promotion, reporting only (`health_after`).
    pub after: bool,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// `http:/path` or `http:NAME:/path`: `GET path` on the first TCP socket
    /// (or the one named) answers 2xx.
    Http {
        /// The `listen` name of the socket, when given.
        socket: Option<String>,
        /// The request path.
        path: String,
    },
    /// `exec:CMD ARGS…`: the command exits 0.
    Exec {
        /// The executable (a path relative to the config file, or a name
        /// looked up in `PATH`).
        command: PathBuf,
        /// Its arguments (split on whitespace).
        args: Vec<String>,
    },
}

impl HealthCheck {
    fn parse(text: &str, base: &Path) -> Result<HealthCheck, String> {
        if let Some(rest) = text.strip_prefix("http:") {
            let (socket, path) = match rest.split_once(":/") {
                Some((name, path)) if !name.is_empty() && !name.contains('/') => {
                    (Some(name.to_owned()), format!("/{path}"))
                }
                _ => (None, rest.to_owned()),
            };
            if !path.starts_with('/') {
                return Err("expected http:/PATH or http:NAME:/PATH".to_owned());
            }
            Ok(HealthCheck::Http { socket, path })
        } else if let Some(rest) = text.strip_prefix("exec:") {
            let mut words = rest.split_whitespace();
            let command = words
                .next()
                .ok_or_else(|| "exec: needs a command".to_owned())?;
            Ok(HealthCheck::Exec {
                command: if command.contains('/') {
                    base.join(command)
                } else {
                    PathBuf::from(command)
                },
                args: words.map(str::to_owned).collect(),
            })
        } else {
            Err("expected \"http:/PATH\", \"http:NAME:/PATH\" or \"exec:CMD ARGS…\"".to_owned())
        }
    }
}

/// The fetcher and its schedule.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// Which source, with its settings.
    pub source: Source,
    /// Time between checks.
    pub interval: Duration,
    /// Up to this much random time is added to every interval.
    pub jitter: Duration,
    /// Connect and read timeout of one request.
    pub timeout: Duration,
    /// This host's identity for rollout cohorts (`fetch.host_id`); by
    /// default a random one kept in the releases directory.
    pub host_id: Option<String>,
}

/// A credential from the config (a token, a header value). Its `Debug` and
/// `Display` print `<redacted>`, so neither logs nor `{:?}` of a config
/// show it; [`Secret::expose`] gives the value to the one place that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The credential itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A source of new builds.
#[derive(Debug, Clone)]
pub enum Source {
    /// A local file, watched.
    File {
        /// The file (followed if it is a symlink).
        path: PathBuf,
    },
    /// An HTTP(S) URL of a binary, an archive or a JSON manifest.
    Http {
        /// The URL.
        url: String,
        /// Extra request headers (authorization); never logged.
        headers: BTreeMap<String, Secret>,
        /// Allow plain http to hosts other than loopback.
        allow_http: bool,
        /// Fetch the expected sha256 from `<url>.sha256`.
        checksum_url: bool,
        /// Redirects followed at most.
        max_redirects: usize,
    },
    /// GitHub releases (feature `github`).
    Github {
        /// `owner/name`.
        repo: String,
        /// The asset's name pattern: `*` and `{version}`, `{os}`, `{arch}`,
        /// `{target}`. Optional when every release carries a manifest asset.
        asset: Option<String>,
        /// The name of the release manifest asset (`fetch.manifest_asset`,
        /// default `manifest.json`): when a release has it, it names the
        /// artifact, and its signature is the `<name>.minisig` asset.
        manifest_asset: String,
        /// A token from the config (prefer `token_env`); never logged.
        token: Option<Secret>,
        /// The variable holding the token (default `GITHUB_TOKEN`).
        token_env: String,
        /// The API's base URL (GitHub Enterprise: `https://host/api/v3`).
        api_url: String,
        /// Consider pre-releases.
        prerelease: bool,
        /// Take the highest semver tag instead of the latest release.
        semver: bool,
    },
    /// An S3 object, or the highest semver key under a prefix (feature `s3`).
    S3 {
        /// The bucket.
        bucket: String,
        /// One object's key.
        key: Option<String>,
        /// Or a prefix whose keys carry versions; the highest wins.
        prefix: Option<String>,
        /// The region (else from the environment or profile).
        region: Option<String>,
        /// A custom endpoint (MinIO, Ceph, R2, a local server).
        endpoint_url: Option<String>,
        /// Path-style addressing (`endpoint/bucket/key`).
        force_path_style: bool,
    },
}

impl Source {
    /// The source's name in the config: `file`, `http`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::File { .. } => "file",
            Source::Http { .. } => "http",
            Source::Github { .. } => "github",
            Source::S3 { .. } => "s3",
        }
    }
}

/// What a candidate must pass before it is installed.
#[derive(Debug, Clone)]
pub struct Verify {
    /// Arguments of the probe run (default `--probe`).
    pub probe: Vec<String>,
    /// How long the probe may run.
    pub probe_timeout: Duration,
    /// A pinned sha256: only these bytes are accepted.
    pub sha256: Option<[u8; 32]>,
    /// Trusted minisign public keys (base64), `verify.minisign_key` as one
    /// string or a list (two at once while a key is rotated). When any is
    /// set, a valid signature by one of them is mandatory.
    pub minisign_keys: Vec<String>,
    /// Accept versions lower than the running one.
    pub allow_downgrade: bool,
    /// Only versions matching this requirement are accepted.
    pub version: Option<semver::VersionReq>,
    /// The largest download accepted, in bytes.
    pub max_size: u64,
    /// The most an archive may unpack to, in bytes (`verify.max_unpacked`,
    /// default 4 × `max_size`): a small archive is no licence to fill the
    /// disk.
    pub max_unpacked: u64,
    /// The most entries an archive may hold (`verify.max_entries`).
    pub max_entries: u64,
    /// How long a whole download may take.
    pub download_timeout: Duration,
}

/// `verify.max_unpacked` is this many times `verify.max_size` when unset.
pub const MAX_UNPACKED_FACTOR: u64 = 4;
/// `verify.max_entries` when unset.
pub const MAX_ENTRIES_DEFAULT: u64 = 100_000;

impl Default for Verify {
    fn default() -> Verify {
        Verify {
            probe: vec!["--probe".to_owned()],
            probe_timeout: Duration::from_secs(10),
            sha256: None,
            minisign_keys: Vec::new(),
            allow_downgrade: false,
            version: None,
            max_size: 512 << 20,
            max_unpacked: (512 << 20) * MAX_UNPACKED_FACTOR,
            max_entries: MAX_ENTRIES_DEFAULT,
            download_timeout: Duration::from_secs(600),
        }
    }
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

pub use crate::time::{parse_duration, MAX_DURATION};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    program: RawProgram,
    releases: Option<RawReleases>,
    fetch: Option<RawFetch>,
    #[serde(default)]
    verify: RawVerify,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    hooks: RawHooks,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    pre_install: Option<Vec<String>>,
    post_promote: Option<Vec<String>>,
    post_rollback: Option<Vec<String>>,
    timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<String>,
    metrics: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReleases {
    dir: Option<String>,
    binary: String,
    keep: Option<usize>,
    settle: Option<String>,
    health: Option<String>,
    health_interval: Option<String>,
    health_timeout: Option<String>,
    health_failures: Option<u32>,
    health_after: Option<bool>,
    trial_attempts: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFetch {
    source: String,
    interval: Option<String>,
    jitter: Option<String>,
    timeout: Option<String>,
    host_id: Option<String>,
    path: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    allow_http: Option<bool>,
    checksum_url: Option<bool>,
    max_redirects: Option<usize>,
    repo: Option<String>,
    asset: Option<String>,
    token: Option<String>,
    token_env: Option<String>,
    api_url: Option<String>,
    prerelease: Option<bool>,
    semver: Option<bool>,
    manifest_asset: Option<String>,
    bucket: Option<String>,
    key: Option<String>,
    prefix: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    force_path_style: Option<bool>,
}

/// A string, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    probe: Option<Vec<String>>,
    probe_timeout: Option<String>,
    sha256: Option<String>,
    minisign_key: Option<OneOrMany>,
    allow_downgrade: Option<bool>,
    version: Option<String>,
    max_size: Option<String>,
    max_unpacked: Option<String>,
    max_entries: Option<u64>,
    download_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProgram {
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
            check_var_name("program.env", key)?;
        }
        program.env = p.env;
        for name in &p.pass_env {
            check_var_name("program.pass_env", name)?;
        }
        program.pass_env = p.pass_env;
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
        let releases = raw
            .releases
            .map(|r| parse_releases(r, base, &program))
            .transpose()?;
        if let Some(r) = &releases {
            if !program.command.starts_with(r.dir.join("current")) {
                return Err(Error::invalid(
                    "program.command",
                    program.command.display(),
                    format!(
                        "with a [releases] section the command must run a release through \
                         {}/current/ (such as \"{}/current/{}\"), so that a new release can be \
                         tried from its own directory before current names it",
                        r.dir.display(),
                        r.dir.display(),
                        r.binary
                    ),
                ));
            }
        }
        let fetch = raw.fetch.map(|f| parse_fetch(f, base)).transpose()?;
        if let (Some(fetch), None) = (&fetch, &releases) {
            if !program.command.as_os_str().to_string_lossy().contains('/') {
                return Err(Error::invalid(
                    "fetch.source",
                    fetch.source.kind(),
                    "without a [releases] section the program's binary is replaced in place, \
                     so program.command must be a path, not a name looked up in PATH",
                ));
            }
        }
        let verify = parse_verify(raw.verify)?;
        let metrics = match &raw.control.metrics {
            Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|e| {
                Error::invalid(
                    "control.metrics",
                    addr,
                    format!("expected an address such as 127.0.0.1:9464 ({e})"),
                )
            })?),
            None => None,
        };
        let control = Control {
            metrics,
            socket: Some(match &raw.control.socket {
                Some(path) if path.trim().is_empty() => {
                    return Err(Error::invalid("control.socket", path, "must be a path"))
                }
                Some(path) => base.join(path),
                None => match std::env::var_os("RUNTIME_DIRECTORY") {
                    // systemd's RuntimeDirectory= (the first, if several).
                    Some(dirs) => std::env::split_paths(&dirs)
                        .next()
                        .unwrap_or_else(|| base.to_owned())
                        .join("baton.sock"),
                    None => base.join(".baton.sock"),
                },
            }),
        };
        let hooks = parse_hooks(raw.hooks, base)?;
        Ok(Config {
            program,
            releases,
            fetch,
            verify,
            control,
            hooks,
        })
    }
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

fn duration(key: &str, value: &Option<String>, default: Duration) -> Result<Duration, Error> {
    match value {
        None => Ok(default),
        Some(v) => match parse_duration(v) {
            Ok(d) if d.is_zero() => Err(Error::invalid(key, v, "must be more than zero")),
            Ok(d) => Ok(d),
            Err(reason) => Err(Error::invalid(key, v, reason)),
        },
    }
}

fn parse_health(r: &RawReleases, base: &Path, program: &Program) -> Result<Option<Health>, Error> {
    let Some(text) = &r.health else {
        for (key, set) in [
            ("health_interval", r.health_interval.is_some()),
            ("health_timeout", r.health_timeout.is_some()),
            ("health_failures", r.health_failures.is_some()),
            ("health_after", r.health_after.is_some()),
        ] {
            if set {
                return Err(Error::invalid(
                    &format!("releases.{key}"),
                    "…",
                    "only applies with releases.health",
                ));
            }
        }
        return Ok(None);
    };
    let check = HealthCheck::parse(text, base)
        .map_err(|reason| Error::invalid("releases.health", text, reason))?;
    if let HealthCheck::Http { socket, .. } = &check {
        let tcp = |l: &&Listen| matches!(l.addr, ListenAddr::Tcp(_));
        let found = match socket {
            Some(name) => program.listen.iter().filter(tcp).any(|l| l.name == *name),
            None => program.listen.iter().any(|l| tcp(&l)),
        };
        if !found {
            return Err(Error::invalid(
                "releases.health",
                text,
                match socket {
                    Some(name) => format!("program.listen has no TCP address named {name:?}"),
                    None => "http health checks need a TCP address in program.listen".to_owned(),
                },
            ));
        }
    }
    let failures = r.health_failures.unwrap_or(3);
    if failures == 0 {
        return Err(Error::invalid(
            "releases.health_failures",
            0,
            "at least 1 failure must end a trial",
        ));
    }
    Ok(Some(Health {
        check,
        interval: duration(
            "releases.health_interval",
            &r.health_interval,
            Duration::from_secs(1),
        )?,
        timeout: duration(
            "releases.health_timeout",
            &r.health_timeout,
            Duration::from_secs(2),
        )?,
        failures,
        after: r.health_after.unwrap_or(false),
    }))
}

fn parse_releases(r: RawReleases, base: &Path, program: &Program) -> Result<Releases, Error> {
    if r.binary.is_empty() || r.binary.contains('/') || r.binary == "." || r.binary == ".." {
        return Err(Error::invalid(
            "releases.binary",
            &r.binary,
            "must be a plain file name",
        ));
    }
    let keep = r.keep.unwrap_or(3);
    if keep == 0 {
        return Err(Error::invalid(
            "releases.keep",
            keep,
            "keep at least 1 release",
        ));
    }
    let settle = match &r.settle {
        Some(text) => parse_duration(text)
            .map_err(|reason| Error::invalid("releases.settle", text, reason))?,
        None => Duration::from_secs(10),
    };
    let trial_attempts = r.trial_attempts.unwrap_or(TRIAL_ATTEMPTS_DEFAULT);
    if trial_attempts == 0 {
        return Err(Error::invalid(
            "releases.trial_attempts",
            trial_attempts,
            "a trial needs at least 1 attempt",
        ));
    }
    let health = parse_health(&r, base, program)?;
    if let Some(h) = &health {
        let needed = h.interval * h.failures;
        if settle < needed {
            return Err(Error::invalid(
                "releases.settle",
                humantime::format_duration(settle),
                format!(
                    "with releases.health the settle window must hold at least \
                     health_failures ({}) checks at health_interval ({}): {} or more",
                    h.failures,
                    humantime::format_duration(h.interval),
                    humantime::format_duration(needed)
                ),
            ));
        }
    }
    Ok(Releases {
        dir: base.join(r.dir.as_deref().unwrap_or("releases")),
        binary: r.binary,
        keep,
        settle,
        health,
        trial_attempts,
    })
}

fn parse_fetch(f: RawFetch, base: &Path) -> Result<Fetch, Error> {
    let only_for = |key: &str, set: bool, kind: &str| {
        if set && f.source != kind {
            Err(Error::invalid(
                &format!("fetch.{key}"),
                "…",
                format!("only applies to source = \"{kind}\""),
            ))
        } else {
            Ok(())
        }
    };
    only_for("path", f.path.is_some(), "file")?;
    only_for("url", f.url.is_some(), "http")?;
    only_for("headers", !f.headers.is_empty(), "http")?;
    only_for("allow_http", f.allow_http.is_some(), "http")?;
    only_for("checksum_url", f.checksum_url.is_some(), "http")?;
    only_for("max_redirects", f.max_redirects.is_some(), "http")?;
    only_for("repo", f.repo.is_some(), "github")?;
    only_for("asset", f.asset.is_some(), "github")?;
    only_for("token", f.token.is_some(), "github")?;
    only_for("token_env", f.token_env.is_some(), "github")?;
    only_for("api_url", f.api_url.is_some(), "github")?;
    only_for("prerelease", f.prerelease.is_some(), "github")?;
    only_for("semver", f.semver.is_some(), "github")?;
    only_for("manifest_asset", f.manifest_asset.is_some(), "github")?;
    only_for("bucket", f.bucket.is_some(), "s3")?;
    only_for("key", f.key.is_some(), "s3")?;
    only_for("prefix", f.prefix.is_some(), "s3")?;
    only_for("region", f.region.is_some(), "s3")?;
    only_for("endpoint_url", f.endpoint_url.is_some(), "s3")?;
    only_for("force_path_style", f.force_path_style.is_some(), "s3")?;
    let source = match f.source.as_str() {
        "file" => {
            let path = f.path.ok_or_else(|| {
                Error::invalid("fetch.path", "", "source = \"file\" needs the file's path")
            })?;
            Source::File {
                path: base.join(path),
            }
        }
        "http" => {
            let url = f
                .url
                .ok_or_else(|| Error::invalid("fetch.url", "", "source = \"http\" needs a url"))?;
            let allow_http = f.allow_http.unwrap_or(false);
            crate::url::check_url(&url, allow_http)
                .map_err(|reason| Error::invalid("fetch.url", &url, reason))?;
            for (name, value) in &f.headers {
                if http::HeaderName::try_from(name.as_str()).is_err() {
                    return Err(Error::invalid(
                        "fetch.headers",
                        name,
                        "not a valid header name",
                    ));
                }
                if http::HeaderValue::try_from(value.as_str()).is_err() {
                    return Err(Error::invalid(
                        "fetch.headers",
                        name,
                        "the value is not a valid header value",
                    ));
                }
            }
            Source::Http {
                url,
                headers: f.headers.into_iter().map(|(k, v)| (k, Secret(v))).collect(),
                allow_http,
                checksum_url: f.checksum_url.unwrap_or(false),
                max_redirects: f.max_redirects.unwrap_or(5),
            }
        }
        "github" if !cfg!(feature = "github") => {
            return Err(Error::invalid(
                "fetch.source",
                &f.source,
                "this baton was built without the `github` feature",
            ))
        }
        "github" => {
            let repo = f.repo.clone().ok_or_else(|| {
                Error::invalid(
                    "fetch.repo",
                    "",
                    "source = \"github\" needs repo = \"owner/name\"",
                )
            })?;
            let valid = |part: &str| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if !repo
                .split_once('/')
                .is_some_and(|(o, n)| valid(o) && valid(n))
            {
                return Err(Error::invalid("fetch.repo", &repo, "expected owner/name"));
            }
            let manifest_asset = f
                .manifest_asset
                .clone()
                .unwrap_or_else(|| "manifest.json".to_owned());
            if manifest_asset.trim().is_empty() || manifest_asset.contains('/') {
                return Err(Error::invalid(
                    "fetch.manifest_asset",
                    &manifest_asset,
                    "expected an asset's file name, such as \"manifest.json\"",
                ));
            }
            let asset = f.asset.clone();
            let api_url = f
                .api_url
                .clone()
                .unwrap_or_else(|| "https://api.github.com".to_owned());
            crate::url::check_url(&api_url, false)
                .map_err(|reason| Error::invalid("fetch.api_url", &api_url, reason))?;
            Source::Github {
                repo,
                asset,
                manifest_asset,
                token: f.token.clone().map(Secret),
                token_env: f
                    .token_env
                    .clone()
                    .unwrap_or_else(|| "GITHUB_TOKEN".to_owned()),
                api_url,
                prerelease: f.prerelease.unwrap_or(false),
                semver: f.semver.unwrap_or(false),
            }
        }
        "s3" if !cfg!(feature = "s3") => {
            return Err(Error::invalid(
                "fetch.source",
                &f.source,
                "this baton was built without the `s3` feature",
            ))
        }
        "s3" => {
            let bucket = f.bucket.clone().filter(|b| !b.is_empty()).ok_or_else(|| {
                Error::invalid("fetch.bucket", "", "source = \"s3\" needs a bucket")
            })?;
            match (&f.key, &f.prefix) {
                (Some(_), Some(_)) => {
                    return Err(Error::invalid(
                        "fetch.prefix",
                        f.prefix.as_deref().unwrap_or(""),
                        "give key or prefix, not both",
                    ))
                }
                (None, None) => {
                    return Err(Error::invalid(
                        "fetch.key",
                        "",
                        "source = \"s3\" needs a key (or a prefix)",
                    ))
                }
                _ => {}
            }
            if let Some(url) = &f.endpoint_url {
                crate::url::check_url(url, false)
                    .map_err(|reason| Error::invalid("fetch.endpoint_url", url, reason))?;
            }
            Source::S3 {
                bucket,
                key: f.key.clone(),
                prefix: f.prefix.clone(),
                region: f.region.clone(),
                endpoint_url: f.endpoint_url.clone(),
                force_path_style: f.force_path_style.unwrap_or(false),
            }
        }
        other => {
            return Err(Error::invalid(
                "fetch.source",
                other,
                "expected \"file\", \"http\", \"github\" or \"s3\"",
            ));
        }
    };
    Ok(Fetch {
        source,
        interval: duration("fetch.interval", &f.interval, Duration::from_secs(60))?,
        jitter: match &f.jitter {
            Some(j) => {
                parse_duration(j).map_err(|reason| Error::invalid("fetch.jitter", j, reason))?
            }
            None => Duration::ZERO,
        },
        timeout: duration("fetch.timeout", &f.timeout, Duration::from_secs(30))?,
        host_id: match f.host_id {
            Some(id) if id.trim().is_empty() || id.len() > 256 => {
                return Err(Error::invalid(
                    "fetch.host_id",
                    &id,
                    "expected a non-empty name of at most 256 bytes",
                ))
            }
            other => other,
        },
    })
}

fn parse_hooks(h: RawHooks, base: &Path) -> Result<Hooks, Error> {
    let hook = |key: &str, words: Option<Vec<String>>| -> Result<Option<Hook>, Error> {
        let Some(words) = words else { return Ok(None) };
        let key = format!("hooks.{key}");
        let Some((command, args)) = words.split_first() else {
            return Err(Error::invalid(
                &key,
                "[]",
                "list the command and its arguments, as [\"/usr/local/bin/migrate\", \"--check\"]",
            ));
        };
        if command.trim().is_empty() {
            return Err(Error::invalid(
                &key,
                command,
                "the first word must name a command",
            ));
        }
        Ok(Some(Hook {
            command: if command.contains('/') {
                base.join(command)
            } else {
                PathBuf::from(command)
            },
            args: args.to_vec(),
        }))
    };
    Ok(Hooks {
        pre_install: hook("pre_install", h.pre_install)?,
        post_promote: hook("post_promote", h.post_promote)?,
        post_rollback: hook("post_rollback", h.post_rollback)?,
        timeout: duration("hooks.timeout", &h.timeout, Hooks::default().timeout)?,
    })
}

fn parse_verify(v: RawVerify) -> Result<Verify, Error> {
    let mut verify = Verify::default();
    if let Some(probe) = v.probe {
        verify.probe = probe;
    }
    verify.probe_timeout = duration(
        "verify.probe_timeout",
        &v.probe_timeout,
        verify.probe_timeout,
    )?;
    verify.download_timeout = duration(
        "verify.download_timeout",
        &v.download_timeout,
        verify.download_timeout,
    )?;
    if let Some(hex_sum) = &v.sha256 {
        verify.sha256 =
            Some(parse_sha256(hex_sum).ok_or_else(|| {
                Error::invalid("verify.sha256", hex_sum, "expected 64 hex digits")
            })?);
    }
    let keys = match v.minisign_key {
        None => Vec::new(),
        Some(OneOrMany::One(key)) => vec![key],
        Some(OneOrMany::Many(keys)) if keys.is_empty() => {
            return Err(Error::invalid(
                "verify.minisign_key",
                "[]",
                "an empty list trusts no key; leave the key out to verify no signatures",
            ))
        }
        Some(OneOrMany::Many(keys)) => keys,
    };
    for key in keys {
        minisign_verify::PublicKey::from_base64(key.trim()).map_err(|e| {
            Error::invalid(
                "verify.minisign_key",
                &key,
                format!("not a minisign public key ({e})"),
            )
        })?;
        verify.minisign_keys.push(key.trim().to_owned());
    }
    verify.allow_downgrade = v.allow_downgrade.unwrap_or(false);
    if let Some(req) = &v.version {
        verify.version = Some(semver::VersionReq::parse(req).map_err(|e| {
            Error::invalid(
                "verify.version",
                req,
                format!("not a version requirement ({e})"),
            )
        })?);
    }
    if let Some(size) = &v.max_size {
        verify.max_size = parse_size(size).ok_or_else(|| {
            Error::invalid(
                "verify.max_size",
                size,
                "expected a size such as 512MiB, 20MB or 1048576",
            )
        })?;
    }
    verify.max_unpacked = match &v.max_unpacked {
        Some(size) => parse_size(size).ok_or_else(|| {
            Error::invalid(
                "verify.max_unpacked",
                size,
                "expected a size such as 2GiB, 20MB or 1048576",
            )
        })?,
        None => verify.max_size.saturating_mul(MAX_UNPACKED_FACTOR),
    };
    if let Some(n) = v.max_entries {
        if n == 0 {
            return Err(Error::invalid(
                "verify.max_entries",
                n,
                "an archive needs at least 1 entry",
            ));
        }
        verify.max_entries = n;
    }
    Ok(verify)
}

pub use crate::fsutil::parse_sha256;

/// Parses `512MiB`, `20MB`, `64KiB`, `1GiB` or a plain byte count.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor).filter(|&n| n > 0)
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
    fn full_config_parses() {
        let c = parse(
            r#"[program]
command = "releases/current/hello"
listen = ["127.0.0.1:8080"]
[releases]
binary = "hello"
keep = 5
[fetch]
source = "http"
url = "http://127.0.0.1:9000/manifest.json"
interval = "1s"
jitter = "500ms"
headers = { Authorization = "Bearer x" }
[verify]
max_size = "64MiB"
version = ">=1.4, <2"
allow_downgrade = true
"#,
        )
        .unwrap();
        let r = c.releases.unwrap();
        assert_eq!(r.dir, Path::new("/srv/app/releases"));
        assert_eq!(r.keep, 5);
        let f = c.fetch.unwrap();
        assert_eq!(f.interval, Duration::from_secs(1));
        assert_eq!(f.jitter, Duration::from_millis(500));
        assert!(matches!(f.source, Source::Http { .. }));
        assert_eq!(c.verify.max_size, 64 << 20);
        assert_eq!(c.verify.max_unpacked, 256 << 20, "4 x max_size");
        assert_eq!(c.verify.max_entries, MAX_ENTRIES_DEFAULT);
        assert!(c.verify.allow_downgrade);
        assert!(c
            .verify
            .version
            .unwrap()
            .matches(&semver::Version::new(1, 5, 0)));
    }

    #[test]
    fn left_out_sources_are_named() {
        let base = "[program]\ncommand = \"releases/current/y\"\nlisten = [\"127.0.0.1:1\"]\n[releases]\nbinary = \"y\"\n";
        for (source, keys, feature) in [
            (
                "github",
                "repo = \"a/b\"\nasset = \"x\"",
                cfg!(feature = "github"),
            ),
            ("s3", "bucket = \"b\"\nkey = \"k\"", cfg!(feature = "s3")),
        ] {
            let result = parse(&format!("{base}[fetch]\nsource = \"{source}\"\n{keys}\n"));
            if feature {
                assert!(result.is_ok(), "{source}: {:?}", result.err());
            } else {
                let err = result.unwrap_err().to_string();
                assert!(
                    err.contains(&format!("built without the `{source}` feature")),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn health_keys_are_parsed_and_checked() {
        let text = |keys: &str| {
            format!(
                "[program]\ncommand = \"releases/current/y\"\nlisten = [\"127.0.0.1:1\", \"admin=127.0.0.1:2\"]\n\
                 [releases]\nbinary = \"y\"\n{keys}"
            )
        };
        let health = |keys: &str| parse(&text(keys)).map(|c| c.releases.unwrap().health);
        let h = health("health = \"http:/healthz\"").unwrap().unwrap();
        assert_eq!(
            h.check,
            HealthCheck::Http {
                socket: None,
                path: "/healthz".to_owned()
            }
        );
        assert_eq!(
            (h.interval, h.timeout, h.failures, h.after),
            (Duration::from_secs(1), Duration::from_secs(2), 3, false)
        );
        let h = health("health = \"http:admin:/ok\"").unwrap().unwrap();
        assert_eq!(
            h.check,
            HealthCheck::Http {
                socket: Some("admin".to_owned()),
                path: "/ok".to_owned()
            }
        );
        let h = health("health = \"exec:bin/check --deep\"\nhealth_timeout = \"5s\"")
            .unwrap()
            .unwrap();
        assert_eq!(
            h.check,
            HealthCheck::Exec {
                command: Path::new("/srv/app/bin/check").to_owned(),
                args: vec!["--deep".to_owned()]
            }
        );
        for (keys, key) in [
            ("health = \"http:nope:/x\"", "releases.health"),
            ("health = \"tcp:1\"", "releases.health"),
            (
                "health = \"http:/x\"\nhealth_failures = 0",
                "releases.health_failures",
            ),
            ("health_interval = \"1s\"", "releases.health_interval"),
            // 3 checks a second do not fit in 2 s.
            ("health = \"http:/x\"\nsettle = \"2s\"", "releases.settle"),
        ] {
            let err = health(keys).unwrap_err().to_string();
            assert!(err.contains(key), "{keys}: {err}");
        }
    }

    #[test]
    fn releases_need_a_command_through_current() {
        let text = |command: &str, settle: &str| {
            format!(
                "[program]\ncommand = \"{command}\"\nlisten = [\"127.0.0.1:1\"]\n\
                 [releases]\nbinary = \"y\"\n{settle}"
            )
        };
        let err = parse(&text("bin/y", "")).unwrap_err().to_string();
        assert!(
            err.contains("program.command") && err.contains("/current/"),
            "{err}"
        );
        let config = parse(&text("releases/current/y", "settle = \"0s\"")).unwrap();
        assert_eq!(config.releases.unwrap().settle, Duration::ZERO);
        let config = parse(&text("releases/current/y", "")).unwrap();
        assert_eq!(config.releases.unwrap().settle, Duration::from_secs(10));
        let err = parse(&text("releases/current/y", "settle = \"soon\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("releases.settle"), "{err}");
        let config = parse(&text("releases/current/y", "")).unwrap();
        assert_eq!(
            config.releases.unwrap().trial_attempts,
            TRIAL_ATTEMPTS_DEFAULT
        );
        let config = parse(&text("releases/current/y", "trial_attempts = 5")).unwrap();
        assert_eq!(config.releases.unwrap().trial_attempts, 5);
        let err = parse(&text("releases/current/y", "trial_attempts = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("releases.trial_attempts"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let base = "[program]\ncommand = \"releases/current/y\"\nlisten = [\"127.0.0.1:1\"]\n[releases]\nbinary = \"y\"\n";
        let github = parse(&format!(
            "{base}[fetch]\nsource = \"github\"\nrepo = \"a/b\"\nasset = \"x\"\ntoken = \"ghp_s3cret\"\n"
        ));
        let http = parse(&format!(
            "{base}[fetch]\nsource = \"http\"\nurl = \"https://example.com/m.json\"\nheaders = {{ Authorization = \"Bearer hunter2\" }}\n"
        ))
        .unwrap();
        let shown = format!("{http:?}");
        assert!(
            shown.contains("Authorization") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        if cfg!(feature = "github") {
            let shown = format!("{:?}", github.unwrap());
            assert!(!shown.contains("ghp_s3cret"), "{shown}");
        }
        let Some(Fetch {
            source: Source::Http { headers, .. },
            ..
        }) = &http.fetch
        else {
            panic!("an http source")
        };
        assert_eq!(headers["Authorization"].expose(), "Bearer hunter2");
        assert_eq!(headers["Authorization"].to_string(), "<redacted>");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("20MB"), Some(20_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("1TB"), None);
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

    #[test]
    fn hooks_parse_and_are_checked() {
        let base = "[program]\ncommand = \"x\"\nlisten = [\"127.0.0.1:1\"]\n";
        let c = parse(base).unwrap();
        assert_eq!(c.hooks, Hooks::default());
        assert_eq!(c.hooks.timeout, Duration::from_secs(30));
        let c = parse(&format!(
            "{base}[hooks]\npre_install = [\"bin/check\", \"--strict\"]\n\
             post_promote = [\"logger\", \"promoted\"]\ntimeout = \"5s\"\n"
        ))
        .unwrap();
        let pre = c.hooks.pre_install.unwrap();
        assert_eq!(pre.command, Path::new("/srv/app/bin/check"));
        assert_eq!(pre.args, ["--strict"]);
        assert_eq!(
            c.hooks.post_promote.unwrap().command,
            Path::new("logger"),
            "a bare name is looked up in PATH"
        );
        assert_eq!(c.hooks.post_rollback, None);
        assert_eq!(c.hooks.timeout, Duration::from_secs(5));
        for (extra, key) in [
            ("pre_install = []", "hooks.pre_install"),
            ("post_rollback = [\"\"]", "hooks.post_rollback"),
            ("timeout = \"0s\"", "hooks.timeout"),
            ("pre_instal = [\"x\"]", "pre_instal"),
        ] {
            let err = parse(&format!("{base}[hooks]\n{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
    }
}
