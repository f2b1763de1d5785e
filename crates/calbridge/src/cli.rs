//! The `calbridge` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Work with the presence engine.
    #[command(subcommand)]
    Presence(PresenceCommand),
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
