//! The shrink guard: a directory read that would drop everyone, or more than a configured
//! share of the people followed now, is not applied at once. The last good list stays, the
//! reason is shown, and the change is applied when the next read lists exactly the same
//! people. A server that answers "nobody" for a moment (a replication hiccup, a wrong
//! filter saved by mistake, a file truncated while being written) so never removes anyone,
//! while a real reorganisation takes effect one read later.
//!
//! The guard is pure: it judges counts and a fingerprint of the listed people, and takes `now`
//! from its caller.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use jiff::Timestamp;

/// A change that waits for confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldChange {
    /// Why it waits, for the admin page: "the read lists nobody (2,000 people are followed
    /// now)".
    pub reason: String,
    /// When the read that was held happened.
    pub since: Timestamp,
    fingerprint: u64,
}

/// What to do with a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it: it is no large shrink.
    Apply,
    /// Apply it: the previous read listed the same people, so the shrink is confirmed.
    Confirmed { reason: String },
    /// Keep the last good list; the reason says why.
    Hold { reason: String },
}

/// One source's guard: remembers the read that is held, if any.
#[derive(Debug, Clone, Default)]
pub struct ShrinkGuard {
    held: Option<HeldChange>,
}

/// The fingerprint of a list of people, independent of their order.
pub fn fingerprint<'a>(addresses: impl Iterator<Item = &'a str>) -> u64 {
    let mut sorted: Vec<&str> = addresses.collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut hasher = DefaultHasher::new();
    sorted.hash(&mut hasher);
    hasher.finish()
}

impl ShrinkGuard {
    /// The change held now, if any.
    pub fn held(&self) -> Option<&HeldChange> {
        self.held.as_ref()
    }

    /// Judges a complete read: `n_followed` people are followed now, the read lists
    /// `n_listed` (with `listed_fingerprint`, see [`fingerprint`]) and would remove
    /// `n_removed` of those followed.
    pub fn judge(
        &mut self,
        n_followed: usize,
        n_listed: usize,
        n_removed: usize,
        listed_fingerprint: u64,
        max_shrink_percent: u8,
        now: Timestamp,
    ) -> Verdict {
        let reason = shrink_reason(n_followed, n_listed, n_removed, max_shrink_percent);
        let Some(reason) = reason else {
            self.held = None;
            return Verdict::Apply;
        };
        match &self.held {
            Some(held) if held.fingerprint == listed_fingerprint => {
                self.held = None;
                Verdict::Confirmed { reason }
            }
            _ => {
                self.held = Some(HeldChange {
                    reason: reason.clone(),
                    since: now,
                    fingerprint: listed_fingerprint,
                });
                Verdict::Hold { reason }
            }
        }
    }

    /// Forgets a held change (the entries were replaced by a reload: a new list is judged
    /// afresh).
    pub fn forget(&mut self) {
        self.held = None;
    }
}

fn shrink_reason(
    n_followed: usize,
    n_listed: usize,
    n_removed: usize,
    max_shrink_percent: u8,
) -> Option<String> {
    if n_followed == 0 || n_removed == 0 {
        return None;
    }
    if n_listed == 0 {
        return Some(format!(
            "the read lists nobody ({} followed now)",
            crate::counted(n_followed, "person is", "people are")
        ));
    }
    // In whole per mille, so that 20 % of 5 people (1) is not a shrink but 2 of 5 are.
    let share = n_removed.saturating_mul(1000) / n_followed;
    if share > usize::from(max_shrink_percent) * 10 {
        return Some(format!(
            "the read drops {n_removed} of the {n_followed} people followed now ({}.{} %), more than max_shrink_percent = {max_shrink_percent}",
            share / 10,
            share % 10
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn list(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i}@x.example")).collect()
    }

    fn fp(list: &[String]) -> u64 {
        fingerprint(list.iter().map(String::as_str))
    }

    #[test]
    fn an_empty_read_is_held_until_the_next_read_confirms_it() {
        let clock = ManualClock::new("2026-12-04T09:00:00Z".parse().unwrap());
        let mut guard = ShrinkGuard::default();
        let empty = fp(&[]);
        let verdict = guard.judge(2000, 0, 2000, empty, 20, clock.now());
        assert_eq!(
            verdict,
            Verdict::Hold {
                reason: "the read lists nobody (2000 people are followed now)".to_string()
            }
        );
        assert_eq!(guard.held().map(|held| held.since), Some(clock.now()));
        clock.advance(jiff::SignedDuration::from_secs(300));
        let verdict = guard.judge(2000, 0, 2000, empty, 20, clock.now());
        assert!(matches!(verdict, Verdict::Confirmed { .. }), "{verdict:?}");
        assert_eq!(guard.held(), None);
    }

    #[test]
    fn a_shrink_over_the_share_is_held_and_a_different_next_read_is_held_anew() {
        let clock = ManualClock::new("2026-12-04T09:00:00Z".parse().unwrap());
        let mut guard = ShrinkGuard::default();
        let everyone = list(100);
        // 20 of 100 gone: exactly the share, applied.
        assert_eq!(
            guard.judge(100, 80, 20, fp(&everyone[..80]), 20, clock.now()),
            Verdict::Apply
        );
        // 21 gone: held.
        let Verdict::Hold { reason } =
            guard.judge(100, 79, 21, fp(&everyone[..79]), 20, clock.now())
        else {
            panic!("not held");
        };
        assert_eq!(reason, "the read drops 21 of the 100 people followed now (21.0 %), more than max_shrink_percent = 20");
        let first_hold = clock.now();
        clock.advance(jiff::SignedDuration::from_secs(30));
        // The next read lists other people: held again, from this read on.
        assert!(matches!(
            guard.judge(100, 50, 50, fp(&everyone[50..]), 20, clock.now()),
            Verdict::Hold { .. }
        ));
        let held = guard.held().expect("held");
        assert_ne!(held.since, first_hold);
        assert_eq!(held.since, clock.now());
        // The same people once more: confirmed and applied.
        assert!(matches!(
            guard.judge(100, 50, 50, fp(&everyone[50..]), 20, clock.now()),
            Verdict::Confirmed { .. }
        ));
        // A read that restores the list clears any hold.
        assert!(matches!(
            guard.judge(50, 0, 50, fp(&[]), 20, clock.now()),
            Verdict::Hold { .. }
        ));
        assert_eq!(
            guard.judge(50, 100, 0, fp(&everyone), 20, clock.now()),
            Verdict::Apply
        );
        assert_eq!(guard.held(), None);
    }

    #[test]
    fn growth_small_changes_and_a_first_read_are_never_held() {
        let now: Timestamp = "2026-12-04T09:00:00Z".parse().unwrap();
        let mut guard = ShrinkGuard::default();
        // Nobody followed yet (first start): an empty directory is just empty.
        assert_eq!(guard.judge(0, 0, 0, fp(&[]), 20, now), Verdict::Apply);
        assert_eq!(
            guard.judge(0, 10, 0, fp(&list(10)), 20, now),
            Verdict::Apply
        );
        assert_eq!(
            guard.judge(10, 20, 0, fp(&list(20)), 20, now),
            Verdict::Apply
        );
        // One of five is 20 %: applied; 0 % allowed holds any removal.
        assert_eq!(guard.judge(5, 4, 1, fp(&list(4)), 20, now), Verdict::Apply);
        assert!(matches!(
            guard.judge(5, 4, 1, fp(&list(4)), 0, now),
            Verdict::Hold { .. }
        ));
        // 100 % allows any share but still holds an empty read.
        assert_eq!(
            guard.judge(10, 1, 9, fp(&list(1)), 100, now),
            Verdict::Apply
        );
        assert!(matches!(
            guard.judge(10, 0, 10, fp(&[]), 100, now),
            Verdict::Hold { .. }
        ));
    }

    #[test]
    fn the_fingerprint_ignores_order_and_repeats() {
        let a = list(3);
        let mut b = a.clone();
        b.reverse();
        b.push(a[0].clone());
        assert_eq!(fp(&a), fp(&b));
        assert_ne!(fp(&a), fp(&a[..2]));
    }
}
