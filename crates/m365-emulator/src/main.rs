//! `m365-emulator`: serves the emulator and prints the ready line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use m365_emulator::{Clock, Emulator, EmulatorConfig};

/// A Microsoft 365 emulator (Entra ID tokens + Microsoft Graph calendars) for tests and demos.
#[derive(Parser)]
#[command(version, about)]
struct Arguments {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Scenario file (.toml or .json) declaring tenants, apps, users, groups and events.
    #[arg(
        long,
        conflicts_with = "generate_users",
        required_unless_present = "generate_users"
    )]
    scenario: Option<PathBuf>,
    /// Generate an organisation of N people (and a few rooms) instead of reading a scenario.
    #[arg(long)]
    generate_users: Option<usize>,
    /// Seed for --generate-users.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for the CA certificate (default: a fresh folder in the temp dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Freeze the clock at start; move it with POST /_emulator/clock/advance.
    #[arg(long)]
    manual_clock: bool,
    /// Start the clock at this instant (RFC 3339, e.g. 2026-12-07T09:42:00Z) instead of now;
    /// a generated organisation is laid out around it. Runs on from there unless
    /// --manual-clock freezes it.
    #[arg(long, value_name = "INSTANT")]
    at: Option<jiff::Timestamp>,
    /// Extra CA certificate (PEM) to trust for https notification URLs; repeatable.
    #[arg(long)]
    trust_ca: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("M365_EMULATOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let arguments = Arguments::parse();
    let mut config = match (&arguments.scenario, arguments.generate_users) {
        (Some(path), _) => EmulatorConfig::scenario_file(path),
        (None, Some(n_users)) => EmulatorConfig::generated(n_users, arguments.seed),
        (None, None) => {
            eprintln!("m365-emulator: give --scenario FILE or --generate-users N");
            return ExitCode::from(2);
        }
    };
    config.listen = arguments.listen;
    config.state_dir = arguments.state_dir;
    config.trusted_notification_ca_files = arguments.trust_ca;
    config.clock = match (arguments.manual_clock, arguments.at) {
        (true, at) => Clock::manual(at.unwrap_or_else(jiff::Timestamp::now)),
        (false, Some(at)) => Clock::starting_at(at),
        (false, None) => Clock::system(),
    };
    let emulator = match Emulator::start(config).await {
        Ok(emulator) => emulator,
        Err(error) => {
            eprintln!("m365-emulator: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{}", emulator.ready_line())
        .and_then(|_| stdout.flush())
        .is_err()
    {
        eprintln!("m365-emulator: cannot write the ready line to stdout");
        return ExitCode::FAILURE;
    }
    wait_for_stop_signal().await;
    emulator.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match terminate {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
