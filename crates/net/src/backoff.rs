//! The one back-off policy: a wait that doubles from `first` after each failure up to `max`,
//! optionally jittered, and the rules for a server's own `Retry-After`.
//!
//! It is a small hand-written type rather than `backon` or `backoff` because every caller
//! keeps its own failure count (per request, per endpoint, per credential, across restarts of
//! a loop) and asks for the wait of *that* attempt; `backon` is built around retrying a future
//! with an iterator that owns the count, and `backoff` is no longer maintained
//! (RUSTSEC-2025-0012). Twenty lines of arithmetic are easier to read than either adapter.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

/// How much of a wait is random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// The full wait every time: right for a single loop whose retries cannot bunch up with
    /// others (one credential, one streaming connection).
    None,
    /// "Equal jitter": half of the wait fixed, half random, so between half and all of it. Many
    /// mailboxes or endpoints failing together then do not come back in lock-step, yet none
    /// retries sooner than half the back-off.
    Equal,
}

/// A doubling back-off: attempt 1 waits `first`, attempt 2 twice that, … never more than
/// `max`; a server's `Retry-After` is honoured up to `max_retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest back-off, reached after a few doublings.
    pub max: Duration,
    pub jitter: Jitter,
    /// A server's `Retry-After` longer than this is cut to it, so that one odd answer cannot
    /// stall a mailbox or an endpoint for hours.
    pub max_retry_after: Duration,
}

/// Doublings beyond this change nothing (2^30 times even a millisecond is twelve days), and
/// stopping here keeps the shift far from overflowing.
const MAX_DOUBLINGS: u32 = 30;

impl Backoff {
    /// Doubling from `first` to `max` without jitter; a `Retry-After` is capped at `max`.
    pub const fn doubling(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            jitter: Jitter::None,
            max_retry_after: max,
        }
    }

    /// The same policy with [`Jitter::Equal`].
    pub const fn with_equal_jitter(self) -> Backoff {
        Backoff {
            jitter: Jitter::Equal,
            ..self
        }
    }

    /// The same policy honouring a `Retry-After` up to `max_retry_after` (which may exceed
    /// `max`: a server that asks for five minutes usually means it).
    pub const fn with_max_retry_after(self, max_retry_after: Duration) -> Backoff {
        Backoff {
            max_retry_after,
            ..self
        }
    }

    /// The un-jittered wait after `attempt` failures (1 for the first; 0 counts as 1):
    /// `first × 2^(attempt − 1)`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(MAX_DOUBLINGS);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The wait after `attempt` failures, with this policy's jitter drawn from the system's
    /// random numbers.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        match self.jitter {
            Jitter::None => self.ceiling(attempt),
            Jitter::Equal => self.delay_with_fraction(attempt, random_fraction()),
        }
    }

    /// The wait after `attempt` failures for a given random `fraction` in [0, 1] (clamped):
    /// with [`Jitter::Equal`], `fraction` 0 waits half the ceiling and 1 all of it. Tests use it
    /// to check the bounds without depending on chance.
    pub fn delay_with_fraction(&self, attempt: u32, fraction: f64) -> Duration {
        let full = self.ceiling(attempt);
        match self.jitter {
            Jitter::None => full,
            Jitter::Equal => {
                let fraction = if fraction.is_nan() {
                    1.0
                } else {
                    fraction.clamp(0.0, 1.0)
                };
                full / 2 + full.mul_f64(fraction / 2.0)
            }
        }
    }

    /// The server's wait, when it named one, replaces the back-off (capped at
    /// `max_retry_after`): Graph's `Retry-After` is the time its throttling needs, and waiting
    /// longer only delays the mailbox.
    pub fn delay_obeying_retry_after(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
    ) -> Duration {
        match retry_after {
            Some(wait) => wait.min(self.max_retry_after),
            None => self.delay_for(attempt),
        }
    }

    /// The longer of the back-off and the server's wait (capped at `max_retry_after`): for a
    /// receiver that may ask for less than our back-off while it keeps failing.
    pub fn delay_at_least_retry_after(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
    ) -> Duration {
        let backoff = self.delay_for(attempt);
        match retry_after {
            Some(wait) => backoff.max(wait.min(self.max_retry_after)),
            None => backoff,
        }
    }
}

/// A uniformly random fraction in [0, 1]. If the system has no random numbers (it always has
/// on the platforms calbridge runs on) the full wait is taken: waiting longer never overloads a
/// server.
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    match SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRAPH_LIKE: Backoff =
        Backoff::doubling(Duration::from_millis(500), Duration::from_secs(30))
            .with_equal_jitter()
            .with_max_retry_after(Duration::from_secs(300));

    #[test]
    fn the_wait_doubles_from_first_and_stops_at_max() {
        let policy = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(60));
        let waits: Vec<u64> = (1..=9)
            .map(|attempt| policy.delay_for(attempt).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // Attempt 0 (no failure counted yet) waits like the first.
        assert_eq!(policy.delay_for(0), Duration::from_secs(1));
        // Far beyond the last doubling nothing overflows.
        assert_eq!(policy.delay_for(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn equal_jitter_stays_between_half_and_all_of_the_ceiling() {
        for attempt in 1..=10 {
            let ceiling = GRAPH_LIKE.ceiling(attempt);
            assert_eq!(GRAPH_LIKE.delay_with_fraction(attempt, 0.0), ceiling / 2);
            assert_eq!(GRAPH_LIKE.delay_with_fraction(attempt, 1.0), ceiling);
            assert_eq!(
                GRAPH_LIKE.delay_with_fraction(attempt, 0.5),
                ceiling / 2 + ceiling / 4
            );
            // Out-of-range fractions are clamped, never leaving the bounds.
            assert_eq!(GRAPH_LIKE.delay_with_fraction(attempt, -3.0), ceiling / 2);
            assert_eq!(GRAPH_LIKE.delay_with_fraction(attempt, 7.0), ceiling);
            let drawn = GRAPH_LIKE.delay_for(attempt);
            assert!(
                drawn >= ceiling / 2 && drawn <= ceiling,
                "attempt {attempt}: {drawn:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        assert_eq!(GRAPH_LIKE.ceiling(3), Duration::from_secs(2));
        assert_eq!(GRAPH_LIKE.ceiling(20), Duration::from_secs(30));
    }

    #[test]
    fn without_jitter_the_fraction_does_not_matter() {
        let policy = Backoff::doubling(Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(policy.delay_with_fraction(2, 0.0), Duration::from_secs(120));
        assert_eq!(policy.delay_with_fraction(2, 1.0), Duration::from_secs(120));
    }

    #[test]
    fn retry_after_replaces_the_backoff_up_to_its_cap() {
        assert_eq!(
            GRAPH_LIKE.delay_obeying_retry_after(6, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        // Shorter than the back-off of this attempt: the server's word still wins.
        assert_eq!(
            GRAPH_LIKE.delay_obeying_retry_after(9, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        // An hour is cut to the five-minute cap, which is above the back-off's `max`.
        assert_eq!(
            GRAPH_LIKE.delay_obeying_retry_after(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(300)
        );
        let without = GRAPH_LIKE.delay_obeying_retry_after(1, None);
        assert!(without >= Duration::from_millis(250) && without <= Duration::from_millis(500));
    }

    #[test]
    fn retry_after_can_only_lengthen_the_backoff_when_asked_to() {
        let policy = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(300));
        // A Retry-After shorter than the back-off of the fourth failure (8 s) changes nothing.
        assert_eq!(
            policy.delay_at_least_retry_after(4, Some(Duration::from_secs(2))),
            Duration::from_secs(8)
        );
        assert_eq!(
            policy.delay_at_least_retry_after(1, Some(Duration::from_secs(20))),
            Duration::from_secs(20)
        );
        // The cap defaults to `max`.
        assert_eq!(
            policy.delay_at_least_retry_after(1, Some(Duration::from_secs(86_400))),
            Duration::from_secs(300)
        );
        assert_eq!(
            policy.delay_at_least_retry_after(2, None),
            Duration::from_secs(2)
        );
    }
}
