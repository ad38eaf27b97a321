//! The `baton` command: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// This build's version: the crate's, unless `BATON_BUILD_VERSION` named
/// another when it was built (the tests build a second baton that way, to
/// upgrade baton through its own `[self]` channel).
const VERSION: &str = match option_env!("BATON_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Keeps a network service up while it upgrades its own binary.
#[derive(Parser)]
#[command(version = VERSION, about)]
struct Cli {
    /// Log lines as `text` or `json` (one object per line, with `event`,
    /// `release`, `version`, `worker` and `error` as top-level keys).
    /// Default: `$BATON_LOG_FORMAT`, else text.
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<baton::logging::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hold the sockets and supervise the program; SIGHUP/SIGUSR2 cycle it.
    Run {
        /// The config file.
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
    /// Fetch, stage, verify and probe one candidate; print what would be
    /// installed. With --install, install its release directory; beside a
    /// running master, ask it to check and install now through its control
    /// socket, as `baton upgrade` does, and print what came of it.
    Check {
        /// The config file.
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
        /// Install the candidate's release directory (`current` does not move:
        /// the master promotes a release after its trial).
        #[arg(long)]
        install: bool,
        /// Print one JSON object: `outcome` (eligible, not_in_rollout,
        /// unchanged or refused, with `error`), `version`, `host_id`,
        /// `bucket` and `percent`.
        #[arg(long)]
        json: bool,
    },
    /// Write a minisign key pair: KEY (secret, mode 0600; encrypted with
    /// $BATON_KEY_PASSWORD when set) and KEY's name with `.pub`.
    Keygen {
        /// The secret key file to create.
        #[arg(default_value = "baton.key")]
        key: PathBuf,
    },
    /// Upload artifacts with a signed manifest (written last) to a
    /// directory, an S3 prefix or a GitHub release; without artifacts,
    /// re-sign the manifest there with a new rollout.
    Publish(Box<PublishArgs>),
    /// How a release fares across the fleet, from its trial reports.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Show the running master: workers, releases, the last check, counters.
    Status {
        #[command(flatten)]
        to: Master,
        /// Print the master's JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// Graceful cycle of the worker; waits until it ended and says how.
    Restart {
        #[command(flatten)]
        to: Master,
    },
    /// Graceful cycle onto `previous`, which becomes `current`; the release
    /// rolled back from is held (not installed again from the source until a
    /// newer build appears or `baton upgrade --force`).
    Rollback {
        #[command(flatten)]
        to: Master,
    },
    /// The installed releases, newest first, marked current, previous, on
    /// trial, held, failed.
    Releases {
        #[command(flatten)]
        to: Master,
        /// Print the master's JSON reply.
        #[arg(long)]
        json: bool,
    },
    /// Check the source now and print the outcome.
    Upgrade {
        #[command(flatten)]
        to: Master,
        /// Forget releases held by a rollback, or quarantined after
        /// interrupted trials, first.
        #[arg(long)]
        force: bool,
    },
    /// Re-execute the running master's own binary in place: same PID, same
    /// sockets, the running workers adopted (after a package manager
    /// replaced the baton binary). Waits for the new master's answer.
    Reexec {
        #[command(flatten)]
        to: Master,
        /// Execute this binary instead of the path the master was started
        /// from.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Print the new master's reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The watchdog of a self-upgrade, started by the master before it
    /// re-executes into a new build of baton (internal).
    #[command(hide = true)]
    SelfWatchdog {
        /// The master's PID.
        #[arg(long)]
        pid: u32,
        /// The self-upgrade record.
        #[arg(long)]
        record: PathBuf,
        /// How long the new build has to reach its serving loop.
        #[arg(long)]
        within_ms: u64,
    },
    /// Print a shell completion script: `baton completions bash >
    /// /etc/bash_completion.d/baton` (zsh: into a `$fpath` dir as `_baton`;
    /// fish: `~/.config/fish/completions/baton.fish`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Validate a config file and exit.
    Validate {
        /// The config file.
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
}

/// Where a running master's control socket is.
#[derive(clap::Args)]
struct Master {
    /// The master's config file (its `[control] socket` is used).
    #[arg(long, short, default_value = "baton.toml")]
    config: PathBuf,
    /// The control socket itself, instead of reading the config.
    #[arg(long)]
    socket: Option<PathBuf>,
}

/// Exit code for an invalid config or command line.
const EXIT_USAGE: u8 = 2;
/// Exit code of `baton rollout watch` when failures tripped the gate.
const EXIT_TRIPPED: u8 = 3;

fn main() -> ExitCode {
    baton::version::set_own(VERSION);
    let cli = Cli::parse();
    let log_format = match cli.log_format {
        Some(format) => format,
        None => match baton::logging::LogFormat::from_env() {
            Ok(format) => format,
            Err(e) => {
                eprintln!("baton: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    baton::logging::init(log_format);
    let config = match &cli.command {
        Command::Run { config } | Command::Validate { config } | Command::Check { config, .. } => {
            config
        }
        Command::Keygen { key } => return exit(keygen(key)),
        Command::SelfWatchdog {
            pid,
            record,
            within_ms,
        } => {
            let within = std::time::Duration::from_millis(*within_ms);
            return exit(
                baton::master::self_watchdog(*pid, record, within).map_err(anyhow::Error::msg),
            );
        }
        Command::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cli, "baton", &mut script);
            // A closed pipe (`| head`) is no error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            return ExitCode::SUCCESS;
        }
        Command::Status { .. }
        | Command::Restart { .. }
        | Command::Rollback { .. }
        | Command::Releases { .. }
        | Command::Upgrade { .. }
        | Command::Reexec { .. } => return exit(operate(cli.command)),
        Command::Publish(_) => return exit(publish(cli.command)),
        Command::Rollout { command } => {
            return match rollout(command.clone()) {
                Ok(code) => code,
                Err(e) => exit(Err(e)),
            }
        }
    };
    let config = match baton::Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton: {}", baton::display_chain(&e));
            if matches!(cli.command, Command::Check { json: true, .. }) {
                let error = baton::display_chain(&e);
                println!(
                    "{}",
                    serde_json::json!({ "outcome": "refused", "error": error })
                );
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Validate { .. } => {
            println!("config is valid");
            ExitCode::SUCCESS
        }
        Command::Run { config: path } => exit(run(config, path)),
        Command::Check {
            install,
            json: false,
            ..
        } => exit(check(config, install)),
        Command::Check {
            install,
            json: true,
            ..
        } => check_json(config, install),
        Command::Keygen { .. }
        | Command::SelfWatchdog { .. }
        | Command::Completions { .. }
        | Command::Publish(_)
        | Command::Rollout { .. }
        | Command::Status { .. }
        | Command::Restart { .. }
        | Command::Rollback { .. }
        | Command::Releases { .. }
        | Command::Upgrade { .. }
        | Command::Reexec { .. } => unreachable!("handled above"),
    }
}

/// Sends a control request to the running master and prints its reply.
fn operate(command: Command) -> anyhow::Result<()> {
    use baton::control::Request;
    let (to, request, json) = match command {
        Command::Status { to, json } => (to, Request::Status, json),
        Command::Restart { to } => (to, Request::Restart, false),
        Command::Rollback { to } => (to, Request::Rollback, false),
        Command::Releases { to, json } => (to, Request::Releases, json),
        Command::Upgrade { to, force } => (to, Request::Upgrade { force }, false),
        Command::Reexec { to, binary, json } => {
            // The master resolves paths from its own directory: send an
            // absolute one.
            let binary = binary
                .map(|b| std::path::absolute(&b).with_context(|| format!("{}", b.display())))
                .transpose()?;
            (to, Request::Reexec { binary }, json)
        }
        _ => unreachable!("only control commands"),
    };
    let socket = match to.socket {
        Some(socket) => socket,
        None => baton::Config::load(&to.config)?
            .control
            .socket
            .context("the config names no control socket")?,
    };
    let reply = baton::control::request(&socket, &request)?;
    if json {
        println!("{reply:#}");
    } else {
        print!("{}", baton::control::render(&request, &reply));
    }
    Ok(())
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One thread runs every task (the master's event loop included); file
/// operations hop to tokio's blocking threads, which exit after 2 s idle
/// (tokio's default is 10 s) so that an idle master is down to its own
/// threads soon after a check.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
        .context("cannot start the async runtime")
}

fn keygen(key: &std::path::Path) -> anyhow::Result<()> {
    let public = baton::publish::keygen(key)?;
    println!(
        "wrote {} and {}",
        key.display(),
        key.with_extension("pub").display()
    );
    println!("trust it on each host with:\n\n[verify]\nminisign_key = \"{public}\"");
    Ok(())
}

fn publish(command: Command) -> anyhow::Result<()> {
    let Command::Publish(args) = command else {
        unreachable!("called for publish")
    };
    let PublishArgs {
        to,
        remote,
        version,
        rollout,
        expires,
        gate,
        channel,
        sign,
        patches,
        binary,
        yank,
        artifacts,
    } = *args;
    let p = baton::publish::Publish {
        to: remote.destination(&to)?,
        version,
        artifacts: artifacts
            .iter()
            .map(|a| match a.split_once('=') {
                Some((triple, path)) => (Some(triple.to_owned()), PathBuf::from(path)),
                None => (None, PathBuf::from(a)),
            })
            .collect(),
        rollout: rollout
            .as_deref()
            .map(baton::publish::parse_rollout)
            .transpose()
            .map_err(|e| anyhow::anyhow!("invalid --rollout: {e}"))?,
        expires: expires
            .as_deref()
            .map(baton::config::parse_duration)
            .transpose()
            .map_err(|e| anyhow::anyhow!("invalid --expires: {e}"))?,
        gate: gate
            .as_deref()
            .map(baton::publish::parse_gate)
            .transpose()
            .map_err(|e| anyhow::anyhow!("invalid --gate: {e}"))?,
        channel,
        sign,
        now: None,
        patches,
        binary,
        yank,
    };
    let report = baton::publish::publish_report(&p)?;
    let doc = &report.document;
    println!(
        "published {} to {} ({}{})",
        doc.version.as_deref().unwrap_or("?"),
        p.to.show(baton::publish::MANIFEST),
        match &doc.rollout {
            Some(baton::manifest::Rollout::Percent(n)) => format!("rollout {n} %"),
            Some(baton::manifest::Rollout::Schedule(s)) =>
                format!("rollout schedule of {} steps", s.len()),
            None => "rollout 100 %".to_owned(),
        },
        if p.sign.is_some() {
            ", signed"
        } else {
            ", unsigned"
        }
    );
    if !doc.yanked.is_empty() {
        println!("yanked: {}", doc.yanked.join(", "));
    }
    if !p.artifacts.is_empty() && p.patches > 0 {
        let not_made = report.skipped.len() + report.warnings.len();
        println!(
            "{} patch{}{}",
            report.patches.len(),
            if report.patches.len() == 1 { "" } else { "es" },
            if not_made > 0 {
                format!(" ({not_made} not made or skipped: see the log above)")
            } else {
                String::new()
            }
        );
        for patch in &report.patches {
            println!(
                "  {} from {}{}: {} bytes ({:.1}× smaller than the {}-byte compressed artifact)",
                patch.name,
                patch.from_version,
                patch
                    .target
                    .as_deref()
                    .map(|t| format!(" for {t}"))
                    .unwrap_or_default(),
                patch.size,
                patch.compressed as f64 / patch.size.max(1) as f64,
                patch.compressed
            );
        }
    }
    Ok(())
}

/// `baton check --json`: one JSON object on stdout whatever happens; exit
/// status 1 when refused.
fn check_json(config: baton::Config, install: bool) -> ExitCode {
    let mut report = serde_json::json!({});
    let result = check_inner(config, install, Some(&mut report));
    if let Err(e) = result {
        report["outcome"] = "refused".into();
        report["error"] = format!("{e:#}").into();
    }
    println!("{report}");
    if report["outcome"] == "refused" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check(config: baton::Config, install: bool) -> anyhow::Result<()> {
    check_inner(config, install, None)
}

fn check_inner(
    config: baton::Config,
    install: bool,
    mut json: Option<&mut serde_json::Value>,
) -> anyhow::Result<()> {
    use baton::release::{Outcome, Pipeline, Store};
    use std::io::IsTerminal;
    let releases = config
        .releases
        .context("baton check needs a [releases] section")?;
    let fetch = config
        .fetch
        .context("baton check needs a [fetch] section")?;
    runtime()?.block_on(async {
        let store = Store::open(&releases)?;
        // Installing writes the releases directory: only with its lock, so
        // never beside a running master. A dry run stages in a private temp
        // dir and leaves the releases directory as it is.
        let (_lock, scratch) = if install {
            let lock = match store.lock() {
                Ok(lock) => lock,
                // A running master owns the releases directory: it checks
                // and installs, asked through its control socket.
                Err(locked @ baton::release::Error::Locked { pid: Some(_), .. }) => {
                    return match config.control.socket.as_deref() {
                        Some(socket) => install_through_master(socket, locked, json),
                        None => Err(locked.into()),
                    };
                }
                Err(e) => return Err(e.into()),
            };
            for left in store.sweep()? {
                eprintln!("removed {} left by an interrupted install", left.display());
            }
            (Some(lock), None)
        } else {
            let scratch = tempfile::Builder::new()
                .prefix("baton-check-")
                .tempdir()
                .context("cannot create a temp dir for the check")?;
            (None, Some(scratch))
        };
        let mut fetcher = baton::fetchers::from_config(&fetch, &config.verify)?;
        let Some(candidate) = fetcher.check().await? else {
            anyhow::ensure!(json.is_none(), "nothing at {}", fetcher.describe());
            println!("nothing at {}", fetcher.describe());
            return Ok(());
        };
        let bar = if json.is_none() && std::io::stdout().is_terminal() {
            let bar = match candidate.info.size {
                Some(size) => indicatif::ProgressBar::new(size),
                None => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let child_env = baton::ChildEnv::new(&config.program, Some(&fetch));
        let mut pipeline = Pipeline::new(store, config.verify, child_env)
            .with_reports(baton::fleet::Sink::at(&fetch));
        if let Some(dir) = &scratch {
            pipeline = pipeline.with_scratch(dir.path());
        }
        if let Some(report) = json.as_deref_mut() {
            let d = pipeline.rollout(&candidate.info)?;
            *report = serde_json::json!({
                "outcome": "refused",
                "version": d.version,
                "host_id": d.host_id,
                "bucket": baton::manifest::rollout::bucket_percent(d.bucket),
                "percent": d.percent,
                "verdict": format!("{:?}", d.admission),
            });
        }
        let outcome = pipeline
            .run(candidate, install, &|n| bar.set_position(n))
            .await;
        bar.finish_and_clear();
        let show = |verb: &str, m: &baton::release::Meta| {
            println!("{verb} {}", m.id);
            println!("  version: {}", m.version.as_deref().unwrap_or("unknown"));
            println!("  sha256:  {}", m.sha256);
            println!("  size:    {} bytes", m.size);
            println!("  source:  {}", m.source);
        };
        if let Some(report) = json {
            report["outcome"] = match outcome? {
                Outcome::Installed(m) | Outcome::Verified(m) => {
                    report["sha256"] = m.sha256.into();
                    "eligible"
                }
                Outcome::Unchanged(_) => "unchanged",
                Outcome::NotInRollout(_) => "not_in_rollout",
                Outcome::HeldByGate { counts, why, .. } => {
                    report["gate"] = serde_json::json!({ "why": why, "counts": counts });
                    "held_by_gate"
                }
                Outcome::Leaves {
                    release, yanked, ..
                } => {
                    report["sha256"] = release.sha256.into();
                    report["leaves"] = yanked.version.unwrap_or(yanked.id).into();
                    "leaves_yanked"
                }
                Outcome::Yanked { version } => {
                    report["yanked"] = version.into();
                    "yanked"
                }
                Outcome::KnownBad { sha256 } => {
                    anyhow::bail!("sha256 {sha256} failed before; not installed")
                }
            }
            .into();
            return Ok(());
        }
        match outcome? {
            Outcome::Installed(release) => {
                show("installed", &release);
                println!(
                    "current is unchanged: `baton run` puts a release on trial and promotes it \
                     once it has proved itself"
                );
            }
            Outcome::Verified(m) => show("would install", &m),
            Outcome::Unchanged(m) => show("already current:", &m),
            Outcome::NotInRollout(d) => println!("not installed: {d}"),
            Outcome::HeldByGate { decision, why, .. } => println!(
                "not installed: version {} is held by its gate: {why}",
                decision.version.as_deref().unwrap_or("unknown")
            ),
            Outcome::Leaves {
                release,
                yanked,
                reused,
            } => {
                let verb = match (install, reused) {
                    (_, true) => "would go back to the installed release",
                    (true, false) => "installed",
                    (false, false) => "would install",
                };
                show(verb, &release);
                println!(
                    "  leaves:  release {} ({}), which the signed manifest yanks",
                    yanked.id,
                    yanked.version.as_deref().unwrap_or("unknown")
                );
            }
            Outcome::Yanked { version } => {
                println!("not installed: version {version} was yanked by a signed manifest")
            }
            Outcome::KnownBad { sha256 } => {
                println!("sha256 {sha256} failed before; not installed")
            }
        }
        Ok(())
    })
}

/// `baton check --install` beside a running master: asks it to check now
/// (as `baton upgrade` does) and reports what came of it. When its control
/// socket does not answer, the error is `locked`, the lock's own message.
fn install_through_master(
    socket: &std::path::Path,
    locked: baton::release::Error,
    json: Option<&mut serde_json::Value>,
) -> anyhow::Result<()> {
    use baton::control::{Error, Request};
    let request = Request::Upgrade { force: false };
    let reply = match baton::control::request(socket, &request) {
        Ok(reply) => reply,
        Err(Error::Refused(why)) => {
            anyhow::bail!("the running master refused to install: {why}")
        }
        Err(e) => {
            return Err(anyhow::Error::new(locked).context(format!(
                "cannot install beside a running master: its control socket {} does not \
                 answer ({})",
                socket.display(),
                baton::display_chain(&e)
            )))
        }
    };
    let outcome = reply["outcome"].as_str().unwrap_or_default();
    match json {
        Some(report) => {
            *report = serde_json::json!({
                "outcome": match outcome {
                    "installed" | "waiting" => "eligible",
                    "not_in_rollout" => "not_in_rollout",
                    "skipped" => "refused",
                    _ => "unchanged",
                },
                "master": reply,
            });
            if outcome == "skipped" {
                report["error"] = reply["detail"].clone();
            }
        }
        None => {
            eprintln!(
                "a master runs on this releases directory: asked it to check now through {}",
                socket.display()
            );
            print!("{}", baton::control::render(&request, &reply));
            if outcome == "installed" {
                println!("the master puts it on trial and promotes it once it has proved itself");
            }
        }
    }
    Ok(())
}

fn run(config: baton::Config, path: PathBuf) -> anyhow::Result<()> {
    match runtime()?.block_on(baton::master::run_with_reload(config, path))? {
        baton::master::Stopped::Graceful => Ok(()),
        baton::master::Stopped::Hard => anyhow::bail!("stopped hard: workers were killed"),
    }
}

/// `baton publish`'s arguments.
#[derive(clap::Args, Debug)]
struct PublishArgs {
    /// A directory (served by any static HTTP host), `s3://bucket/prefix/`
    /// or `github:owner/repo@tag` (token in $GITHUB_TOKEN).
    #[arg(long)]
    to: String,
    #[command(flatten)]
    remote: RemoteArgs,
    /// The release's version (semver); needed with artifacts.
    #[arg(long)]
    version: Option<String>,
    /// A percentage 0–100 (0 halts), or a schedule counted from
    /// publication: `0s=5,24h=50,48h=100`. Default with artifacts: 100.
    #[arg(long, alias = "schedule")]
    rollout: Option<String>,
    /// The manifest is refused by hosts after this long (`30d`).
    #[arg(long)]
    expires: Option<String>,
    /// The gate that stops a bad release at its canaries:
    /// `canary=5,max_failures=3,max_failure_percent=10,min_promoted=1,silent_after=15m`.
    /// Kept when re-signing or publishing without it.
    #[arg(long)]
    gate: Option<String>,
    /// A channel name, recorded in the manifest.
    #[arg(long)]
    channel: Option<String>,
    /// The minisign secret key to sign the manifest with.
    #[arg(long)]
    sign: Option<PathBuf>,
    /// Make delta patches from the binaries of the last N releases
    /// published to the same target (recorded in its releases.json);
    /// a patch not at least 2× smaller than the compressed artifact is
    /// skipped. 0: none.
    #[arg(long, value_name = "N", default_value_t = baton::publish::DEFAULT_PATCHES)]
    patches: usize,
    /// The executable's file name inside archive artifacts (default:
    /// the archive's only executable file).
    #[arg(long, value_name = "NAME")]
    binary: Option<String>,
    /// Pull VERSION back from the fleet: re-sign the manifest to name the
    /// newest release in the target's history that is not yanked (or
    /// --version), with VERSION in its signed `yanked` list. Hosts on it go
    /// back; none takes it again. Needs --sign; repeatable.
    #[arg(long, value_name = "VERSION")]
    yank: Vec<String>,
    /// Artifacts: PATH, or TRIPLE=PATH for a multi-target release.
    artifacts: Vec<String>,
}

/// `baton rollout …`.
#[derive(clap::Subcommand, Debug, Clone)]
enum RolloutCommand {
    /// Per version: trials started, promoted, failed and silent, the
    /// failure reasons with their hosts, the gate's verdict and the
    /// percentage in force, read from where `baton publish` wrote.
    Status {
        /// A directory or `s3://bucket/prefix/` (as `baton publish --to`).
        #[arg(long)]
        from: String,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The gate for stores that cannot take reports: evaluates the
    /// manifest's gate on the fleet's `baton_trials_total` through
    /// Prometheus and, when failures trip it, re-signs the manifest at
    /// rollout 0 (a halt). Never advances a rollout. Exits 0 while the gate
    /// is open or waits for promotions, 3 once it tripped, 1 when
    /// Prometheus or the manifest cannot be read (it fails closed).
    Watch {
        /// The Prometheus server's base URL (`http://127.0.0.1:9090`).
        #[arg(long)]
        prometheus: String,
        /// Where the manifest is published: a directory, `s3://bucket/prefix/`
        /// or `github:owner/repo@tag` (as `baton publish --to`).
        #[arg(long)]
        to: String,
        /// The minisign secret key the manifest is signed with.
        #[arg(long)]
        sign: PathBuf,
        /// Look once and exit (the default).
        #[arg(long, conflicts_with = "every")]
        once: bool,
        /// Look again after this long (`1m`), until an error.
        #[arg(long)]
        every: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// How to reach an S3 or GitHub target (`--to`, `--from`).
#[derive(clap::Args, Debug, Clone)]
struct RemoteArgs {
    /// S3: a custom endpoint (MinIO, a local server), addressed path-style.
    #[arg(long)]
    endpoint_url: Option<String>,
    /// S3: the region (else from the environment or profile).
    #[arg(long)]
    region: Option<String>,
    /// GitHub: the API's base URL (GitHub Enterprise: https://host/api/v3).
    #[arg(long)]
    api_url: Option<String>,
}

impl RemoteArgs {
    /// The target `to` names, reached this way.
    fn destination(self, to: &str) -> anyhow::Result<baton::publish::target::Destination> {
        Ok(baton::publish::target::Destination::parse(
            to,
            self.endpoint_url,
            self.region,
            self.api_url,
        )?)
    }
}

fn rollout(command: RolloutCommand) -> anyhow::Result<ExitCode> {
    let (from, remote, json) = match command {
        RolloutCommand::Status { from, remote, json } => (from, remote, json),
        RolloutCommand::Watch {
            prometheus,
            to,
            sign,
            once: _,
            every,
            remote,
        } => {
            let watch = baton::publish::watch::Watch {
                to: remote.destination(&to)?,
                prometheus,
                sign,
            };
            let every = every
                .as_deref()
                .map(baton::config::parse_duration)
                .transpose()
                .map_err(|e| anyhow::anyhow!("invalid --every: {e}"))?;
            return watch_rollout(&watch, every);
        }
    };
    let dest = remote.destination(&from)?;
    let sink = dest.reports().map_err(anyhow::Error::msg)?;
    let status = runtime()?
        .block_on(baton::fleet::status::read(&sink, baton::publish::MANIFEST))
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton rollout watch`: one look, or one every `every` until an error;
/// each look's finding is printed when it changes.
fn watch_rollout(
    watch: &baton::publish::watch::Watch,
    every: Option<std::time::Duration>,
) -> anyhow::Result<ExitCode> {
    use baton::publish::watch::Found;
    let rt = runtime()?;
    let mut said = String::new();
    loop {
        let look = rt.block_on(baton::publish::watch::look(watch))?;
        let text = look.to_string();
        if text != said {
            println!("{text}");
            said = text;
        }
        let tripped = matches!(look.found, Found::Halted | Found::AlreadyHalted);
        match every {
            None if tripped => return Ok(ExitCode::from(EXIT_TRIPPED)),
            None => return Ok(ExitCode::SUCCESS),
            Some(d) => std::thread::sleep(d),
        }
    }
}
