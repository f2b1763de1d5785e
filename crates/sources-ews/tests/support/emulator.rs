//! Reading a running emulator: its request counters by kind, and `resolve` entries that send
//! virtual host names (Autodiscover candidates) to its https and plain-http ports.

use std::collections::HashMap;
use std::net::SocketAddr;

use m365_emulator::RunningEmulator;

/// How many requests of `kind` (`ews.FindItem`, `autodiscover.pox`, …) the emulator counted.
pub fn counter(emulator: &RunningEmulator, kind: &str) -> u64 {
    emulator.counters().by_kind.get(kind).copied().unwrap_or(0)
}

/// The port of a `scheme://host:port` URL, as text.
pub fn port_of(url: &str) -> String {
    url.rsplit(':').next().unwrap_or_default().to_string()
}

/// `resolve` entries sending each of `hosts` to the emulator: `host:443` to its https port and
/// `host:80` to its plain-http port.
pub fn resolve_to_emulator(
    emulator: &RunningEmulator,
    hosts: &[&str],
) -> HashMap<String, SocketAddr> {
    let https_port = port_of(&emulator.ready().base_url);
    let http_port = port_of(emulator.ready().http_url.as_deref().unwrap());
    let mut resolve = HashMap::new();
    for host in hosts {
        resolve.insert(
            format!("{host}:443"),
            format!("127.0.0.1:{https_port}").parse().unwrap(),
        );
        resolve.insert(
            format!("{host}:80"),
            format!("127.0.0.1:{http_port}").parse().unwrap(),
        );
    }
    resolve
}
