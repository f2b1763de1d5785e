//! calbridge: Exchange / Microsoft 365 calendars turned into live presence.
//!
//! This crate is the service and its command line; the pipeline's layers live in their own
//! crates (`calbridge-domain`, `calbridge-presence`, `calbridge-sources-graph`,
//! `calbridge-store`), see ARCHITECTURE.md.

pub mod api;
pub mod bench;
pub mod check;
pub mod check_in;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod directory;
pub mod feed;
pub mod hub;
pub mod log_gate;
pub mod memory;
pub mod publish;
pub mod reload;
pub mod service;
pub mod shutdown;
pub mod sign_in;
pub mod simulate;
pub mod sync;

/// "1 source", "3 sources", "0 directory entries": a count with its word, for messages.
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
