//! The `baton` command: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Keeps a network service up while it upgrades its own binary.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
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
    /// installed. With --install, install its release directory (refused
    /// while a master runs: send it SIGUSR1 instead).
    Check {
        /// The config file.
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
        /// Install the candidate's release directory (`current` does not move:
        /// the master promotes a release after its trial).
        #[arg(long)]
        install: bool,
    },
    /// Validate a config file and exit.
    Validate {
        /// The config file.
        #[arg(long, short, default_value = "baton.toml")]
        config: PathBuf,
    },
}

/// Exit code for an invalid config or command line.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match &cli.command {
        Command::Run { config } | Command::Validate { config } | Command::Check { config, .. } => {
            config
        }
    };
    let config = match baton::Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton: {}", baton::display_chain(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Validate { .. } => {
            println!("config is valid");
            ExitCode::SUCCESS
        }
        Command::Run { config: path } => exit(run(config, path)),
        Command::Check { install, .. } => exit(check(config, install)),
    }
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn check(config: baton::Config, install: bool) -> anyhow::Result<()> {
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
            let lock = store.lock()?;
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
            println!("nothing at {}", fetcher.describe());
            return Ok(());
        };
        let bar = if std::io::stdout().is_terminal() {
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
        let mut pipeline = Pipeline::new(store, config.verify, child_env);
        if let Some(dir) = &scratch {
            pipeline = pipeline.with_scratch(dir.path());
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
            Outcome::KnownBad { sha256 } => {
                println!("sha256 {sha256} failed before; not installed")
            }
        }
        Ok(())
    })
}

fn run(config: baton::Config, path: PathBuf) -> anyhow::Result<()> {
    match runtime()?.block_on(baton::master::run_with_reload(config, path))? {
        baton::master::Stopped::Graceful => Ok(()),
        baton::master::Stopped::Hard => anyhow::bail!("stopped hard: workers were killed"),
    }
}
