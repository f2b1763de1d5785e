//! Microsoft Graph source.
//!
//! **Invariant:** this crate is the only calbridge code that speaks Graph JSON. Everything it
//! reads is converted into `calbridge_domain` types before it leaves.

pub mod event;

pub use event::{parse_event_page, EventError, GraphEvent};
