//! An [`EwsSource`] configured against a running emulator (patient, or retrying network
//! failures at once), mailbox addresses, and the next event of a streaming connection.

use std::sync::Arc;
use std::time::Duration;

use calbridge_domain::{MailboxAddress, Secret};
use calbridge_sources_ews::{EwsSource, EwsSourceConfig, StreamEvent, StreamingConnection};
use m365_emulator::RunningEmulator;

/// `user` logging on with `password` at the emulator's EWS URL (no Autodiscover), trusting its
/// CA, with the protocol log on.
pub fn config_for(emulator: &RunningEmulator, user: &str, password: &str) -> EwsSourceConfig {
    let mut config = EwsSourceConfig::new(user, Secret::new(password));
    config.ews_url = Some(emulator.ready().ews_url.clone());
    config.extra_root_ca = Some(emulator.ready().ca_cert.clone());
    config.protocol_log = true;
    config
}

pub fn source(config: EwsSourceConfig) -> Arc<EwsSource> {
    match EwsSource::new(config) {
        Ok(source) => Arc::new(source),
        Err(error) => panic!("source: {error}"),
    }
}

/// A source that retries network failures after a millisecond instead of 200 ms, so that
/// tests of failing servers do not wait through the retries.
pub fn impatient_source(config: EwsSourceConfig) -> Arc<EwsSource> {
    match EwsSource::new(config) {
        Ok(source) => Arc::new(source.with_network_retry_delay(Duration::from_millis(1))),
        Err(error) => panic!("source: {error}"),
    }
}

pub fn address(text: &str) -> MailboxAddress {
    MailboxAddress::parse(text).unwrap()
}

/// The next event of `connection`; the test fails if none comes within 10 s.
pub async fn next_event(connection: &mut StreamingConnection) -> StreamEvent {
    match tokio::time::timeout(Duration::from_secs(10), connection.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the streaming task ended"),
        Err(_) => panic!("no streaming event within 10 s"),
    }
}

/// The next event that is not a keep-alive of the connection's life cycle (an open connection
/// may close at Exchange's timeout and open again while the test waits).
pub async fn next_error_or_change(connection: &mut StreamingConnection) -> StreamEvent {
    loop {
        match next_event(connection).await {
            StreamEvent::ConnectionClosed | StreamEvent::Connected { reopened: true } => continue,
            other => return other,
        }
    }
}
