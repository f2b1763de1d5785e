//! The `calbridge` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{DemoArgs, RunArgs};
use crate::simulate::SimulateArgs;

#[derive(Debug, Parser)]
#[command(
    name = "calbridge",
    version,
    about = "Exchange / Microsoft 365 calendars as live presence for phone systems"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service with a configuration file.
    Run(RunArgs),
    /// Run the service against the bundled Microsoft 365 emulator with a generated organisation.
    Demo(DemoArgs),
    /// Walk the path to Microsoft 365 step by step (token, user, calendar, webhook) and say
    /// which step fails and what to change.
    Check(crate::check::CheckArgs),
    /// Measure first sync, notification latency and memory against the emulator.
    Bench(crate::bench::BenchArgs),
    /// The emulator child process of `bench` (internal).
    #[command(hide = true)]
    BenchEmulator(crate::bench::BenchEmulatorArgs),
    /// An instance process of `bench --store` (internal).
    #[command(hide = true)]
    BenchInstance(crate::bench::BenchInstanceArgs),
    /// Work with the presence engine.
    #[command(subcommand)]
    Presence(PresenceCommand),
    /// Sign a delegated Graph source's account in with a device code (for headless servers):
    /// prints a URL and a code to enter there, waits for the sign-in and keeps the refresh
    /// token sealed in the store.
    Login(crate::sign_in::LoginArgs),
    /// Tell a running service to read its configuration file again (as SIGHUP does) and print
    /// what was applied and what waits for a restart.
    Reload(crate::commands::ReloadArgs),
    /// Print the URL of a meeting room's panel (`/panel/{room}?token=…`); `--rotate` replaces
    /// the panel key first, so that every panel link made before stops working.
    PanelUrl(crate::commands::PanelUrlArgs),
    /// Check a configuration file and print what it resolves to.
    CheckConfig {
        #[arg(long, default_value = "calbridge.toml")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PresenceCommand {
    /// Print the presence a calendar produces over a period, one JSON line per change.
    Simulate(SimulateArgs),
}
