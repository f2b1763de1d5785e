//! `calbridge presence simulate`: run the presence engine over a file of Graph events, so
//! administrators can try their rules before pointing calbridge at real calendars.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use calbridge_presence::timeline;
use jiff::Timestamp;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Events in Microsoft Graph's JSON: a bare array or a `{"value":[…]}` page as
    /// calendarView returns it.
    #[arg(long)]
    pub events: PathBuf,
    /// The configuration whose `[presence]` rules apply (defaults when absent).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// First instant, RFC 3339 (`2026-11-23T08:00:00Z` or `2026-11-23T09:00:00+01:00`).
    #[arg(long)]
    pub from: String,
    /// Last instant, RFC 3339.
    #[arg(long)]
    pub to: String,
}

/// Prints one JSON line for the state at `--from`, then one per presence change up to `--to`.
pub fn run(args: &SimulateArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let from = parse_instant("--from", &args.from)?;
    let to = parse_instant("--to", &args.to)?;
    if to < from {
        bail!("--to ({to}) is before --from ({from})");
    }
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let text = std::fs::read_to_string(&args.events)
        .with_context(|| format!("cannot read events file {}", args.events.display()))?;
    let appointments = calbridge_sources_graph::parse_event_page(&text)
        .with_context(|| format!("events file {} is invalid", args.events.display()))?;
    let rules = config.presence.rules();
    let locale = config.presence.locale();
    for (at, decision) in timeline(&appointments, &rules, &locale, from, to) {
        let line = serde_json::json!({
            "at": at.to_string(),
            "activity": decision.activity,
            "note": decision.note,
            "until": decision.until.map(|until| until.to_string()),
            "why": decision.explain(),
        });
        writeln!(out, "{line}").context("cannot write to standard output")?;
    }
    Ok(())
}

fn parse_instant(flag: &str, raw: &str) -> anyhow::Result<Timestamp> {
    raw.trim().parse::<Timestamp>().map_err(|error| {
        anyhow::anyhow!(
            "{flag}: `{raw}` is not an RFC 3339 instant like 2026-11-23T08:00:00Z ({error})"
        )
    })
}
