//! The service's clock: "now" and waiting for an instant, injectable so that tests move time
//! forward instead of sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
    /// Completes at or after `at`. Callers re-check `now()` after waking: a wall clock may jump.
    fn sleep_until(&self, at: Timestamp) -> Sleep;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let wait = at.duration_since(Timestamp::now());
        let wait = std::time::Duration::try_from(wait).unwrap_or_default();
        // Wake a little after the boundary rather than a little before: waking early would
        // just mean sleeping again, while the boundary itself must already have passed.
        Box::pin(tokio::time::sleep(
            wait + std::time::Duration::from_millis(1),
        ))
    }
}

/// The system clock shifted to read a chosen instant now and run on at real speed from there:
/// `calbridge demo --at`, and tests that need a particular moment of the week while the rest of
/// the service (timers, retries, streams) runs as it does in production.
#[derive(Debug, Clone, Copy)]
pub struct ShiftedClock {
    offset: SignedDuration,
}

impl ShiftedClock {
    pub fn starting_at(start: Timestamp) -> Self {
        ShiftedClock {
            offset: start.duration_since(Timestamp::now()),
        }
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.offset)
            .unwrap_or_else(|_| Timestamp::now())
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        SystemClock.sleep_until(at.checked_sub(self.offset).unwrap_or(at))
    }
}

/// A clock that only moves when told to; sleepers wake when it passes their instant.
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
    moved: watch::Sender<Timestamp>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        let (moved, _) = watch::channel(start);
        ManualClock {
            now: Arc::new(Mutex::new(start)),
            moved,
        }
    }

    pub fn advance(&self, by: SignedDuration) -> Timestamp {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now = now.checked_add(by).unwrap_or(*now);
        self.moved.send_replace(*now);
        *now
    }

    pub fn set(&self, to: Timestamp) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now = to;
        self.moved.send_replace(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sleep_until(&self, at: Timestamp) -> Sleep {
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            loop {
                if *moved.borrow_and_update() >= at {
                    return;
                }
                if moved.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

/// Lets the Graph source read the service's clock for token lifetimes.
pub struct GraphClockAdapter(pub Arc<dyn Clock>);

impl calbridge_sources_graph::clock::Clock for GraphClockAdapter {
    fn now(&self) -> Timestamp {
        self.0.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shifted_clock_starts_at_its_instant_and_wakes_its_sleepers_in_real_time() {
        let start: Timestamp = "2026-12-07T08:05:00Z".parse().expect("an instant");
        let clock = ShiftedClock::starting_at(start);
        let read = clock.now();
        assert!(read >= start, "{read} is before {start}");
        assert!(
            read.duration_since(start) < SignedDuration::from_secs(60),
            "{read} is far from {start}"
        );
        let wake_at = clock.now() + SignedDuration::from_millis(30);
        clock.sleep_until(wake_at).await;
        assert!(clock.now() >= wake_at, "woke before {wake_at}");
    }
}
