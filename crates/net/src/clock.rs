//! Wall-clock time, injectable so token expiry and credential back-off can be tested without
//! sleeping. The service's own clock (`calbridge::clock`, which can also wait for an instant)
//! is handed in through an adapter.

use jiff::Timestamp;

/// The source of "now" for token lifetimes and the credential back-off. Waits between HTTP
/// retries use tokio's timer instead, which tests control with `tokio::time::pause`.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}
