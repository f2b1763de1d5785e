//! The emulator's notion of "now".
//!
//! Token lifetimes, secret expiry, subscription expiry, delta-token age and throttling windows
//! all read this clock, so tests can move time forward instead of sleeping for it.

use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};

/// A clock that is the system clock, the system clock shifted to start at a chosen instant, or a
/// manual one that only moves when told to.
#[derive(Clone, Debug)]
pub struct Clock {
    source: ClockSource,
}

#[derive(Clone, Debug)]
enum ClockSource {
    System,
    /// The system clock plus a fixed offset: it runs at real speed from a chosen instant.
    Shifted(SignedDuration),
    Manual(Arc<Mutex<Timestamp>>),
}

impl Clock {
    /// The real system clock.
    pub fn system() -> Clock {
        Clock {
            source: ClockSource::System,
        }
    }

    /// The system clock shifted so that it reads `start` now and runs on at real speed, for a
    /// demo or a test that needs a particular moment of the week (the generated organisation is
    /// laid out around it).
    pub fn starting_at(start: Timestamp) -> Clock {
        Clock {
            source: ClockSource::Shifted(start.duration_since(Timestamp::now())),
        }
    }

    /// A clock frozen at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: Timestamp) -> Clock {
        Clock {
            source: ClockSource::Manual(Arc::new(Mutex::new(start))),
        }
    }

    /// The current instant.
    pub fn now(&self) -> Timestamp {
        match &self.source {
            ClockSource::System => Timestamp::now(),
            ClockSource::Shifted(offset) => Timestamp::now()
                .checked_add(*offset)
                .unwrap_or_else(|_| Timestamp::now()),
            ClockSource::Manual(current) => *lock(current),
        }
    }

    /// Moves a manual clock forward (or backward for a negative duration).
    ///
    /// Returns `Err(ClockIsSystem)` for the system clock (shifted or not), which cannot be moved.
    pub fn advance(&self, by: SignedDuration) -> Result<Timestamp, ClockIsSystem> {
        match &self.source {
            ClockSource::System | ClockSource::Shifted(_) => Err(ClockIsSystem),
            ClockSource::Manual(current) => {
                let mut guard = lock(current);
                *guard = guard.saturating_add(by).map_err(|_| ClockIsSystem)?;
                Ok(*guard)
            }
        }
    }

    /// True when this clock can be moved with [`Clock::advance`].
    pub fn is_manual(&self) -> bool {
        matches!(self.source, ClockSource::Manual(_))
    }
}

/// The clock is the system clock and cannot be moved.
#[derive(Debug, thiserror::Error)]
#[error(
    "the emulator runs on the system clock, which cannot be moved: start it with a manual clock"
)]
pub struct ClockIsSystem;

fn lock(current: &Mutex<Timestamp>) -> std::sync::MutexGuard<'_, Timestamp> {
    // A poisoned lock only means another thread panicked while holding a plain value;
    // the timestamp itself is always valid, so keep using it.
    current
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_starting_at_an_instant_reads_it_and_cannot_be_moved() {
        let start: Timestamp = "2026-12-07T08:05:00Z".parse().unwrap_or_default();
        let clock = Clock::starting_at(start);
        let read = clock.now();
        assert!(read >= start, "{read} is before {start}");
        assert!(read.duration_since(start) < SignedDuration::from_secs(60));
        assert!(!clock.is_manual());
        assert!(clock.advance(SignedDuration::from_secs(1)).is_err());
    }
}
