//! Test infrastructure for the EWS source's tests against the in-process emulator:
//!
//! - [`ews_source`]: an [`EwsSource`](calbridge_sources_ews::EwsSource) configured against a
//!   running emulator, and the streaming events a test waits for;
//! - [`emulator`]: what a test reads off a running emulator (its request counters) and
//!   `resolve` entries sending virtual host names to its ports;
//! - [`stub_server`]: servers standing in for a site's: a plain-http Autodiscover stub with
//!   scripted answers, and an EWS URL whose server is gone;
//! - [`tracing_capture`]: what calbridge logs on a test's thread, for log assertions;
//! - [`raw_https`]: one HTTPS request trusting the emulator's CA, without calbridge's client.

// Not every test binary uses every helper.
#![allow(dead_code)]

pub mod emulator;
pub mod ews_source;
pub mod raw_https;
pub mod stub_server;
pub mod tracing_capture;
