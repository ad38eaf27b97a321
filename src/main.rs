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
        Command::Run { config } | Command::Validate { config } => config,
    };
    let config = match baton::Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton: {}", chain(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.command {
        Command::Validate { .. } => {
            println!("config is valid");
            ExitCode::SUCCESS
        }
        Command::Run { .. } => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baton: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(config: baton::Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match rt.block_on(baton::master::run(config.program))? {
        baton::master::Stopped::Graceful => Ok(()),
        baton::master::Stopped::Hard => anyhow::bail!("stopped hard: workers were killed"),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
