//! Servers standing in for misbehaving peers.

pub mod answer_server;
