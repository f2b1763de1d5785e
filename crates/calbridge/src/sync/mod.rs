//! Keeping calendars fresh, one task per source.

pub mod graph;
