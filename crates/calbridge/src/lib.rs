//! calbridge: Exchange / Microsoft 365 calendars turned into live presence.
//!
//! This crate is the service and its command line; the pipeline's layers live in their own
//! crates (`calbridge-domain`, `calbridge-presence`, `calbridge-sources-graph`, …), see
//! ARCHITECTURE.md.

pub mod cli;
pub mod config;
pub mod simulate;
