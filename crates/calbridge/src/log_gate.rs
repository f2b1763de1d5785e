//! A warning that anyone on the network can cause at will (a forged notification, say) is
//! written at most once per period; the ones held back are counted and told with the next.
//! The counters in `/metrics` keep the full count, so nothing is lost by writing less.

use std::sync::Mutex;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

pub struct LogGate {
    period: SignedDuration,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    /// When the next warning may be written; `None` until the first.
    next_at: Option<Timestamp>,
    held: u64,
}

impl LogGate {
    pub fn new(period: Duration) -> LogGate {
        LogGate {
            period: SignedDuration::try_from(period).unwrap_or(SignedDuration::from_secs(60)),
            state: Mutex::new(GateState::default()),
        }
    }

    /// `Some(held)` when a warning may be written now, with how many were held back since
    /// the last one; `None` when this one is held back.
    pub fn pass(&self, now: Timestamp) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.next_at.is_some_and(|next_at| now < next_at) {
            state.held += 1;
            return None;
        }
        state.next_at = Some(now.checked_add(self.period).unwrap_or(Timestamp::MAX));
        Some(std::mem::take(&mut state.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_period_and_the_held_ones_are_counted() {
        let gate = LogGate::new(Duration::from_secs(60));
        let start: Timestamp = "2026-12-04T09:42:00Z".parse().unwrap();
        assert_eq!(gate.pass(start), Some(0));
        let written = (1..=1000)
            .filter(|i| gate.pass(start + SignedDuration::from_millis(*i)).is_some())
            .count();
        assert_eq!(written, 0);
        assert_eq!(gate.pass(start + SignedDuration::from_secs(60)), Some(1000));
        assert_eq!(gate.pass(start + SignedDuration::from_secs(61)), None);
        assert_eq!(gate.pass(start + SignedDuration::from_secs(125)), Some(1));
    }
}
