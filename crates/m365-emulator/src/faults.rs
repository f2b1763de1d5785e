//! Faults and limits (throttling, error rates, latency, outages) and request counters.
//!
//! Both are shared by every request and switchable at run time through the admin endpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Faults and limits; every field has a default, so a scenario or a patch names only what it changes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Concurrent Graph requests per app per mailbox before 429 `MailboxConcurrency` (Graph: 4).
    /// 0 = no limit. Not applied to EWS, nor are the other mailbox limits below.
    pub mailbox_concurrency_limit: u32,
    /// Requests per app per mailbox per window before 429 (Graph: 10,000 per 10 minutes). 0 = no limit.
    pub mailbox_requests_per_window: u32,
    /// Length of the request-count window in seconds (Graph: 600).
    pub mailbox_window_seconds: u64,
    /// `Retry-After` seconds sent with a concurrency 429.
    pub concurrency_retry_after_seconds: u64,
    /// Mailboxes (any address or id) that answer every request with 429, for client tests.
    pub throttled_mailboxes: Vec<String>,
    /// `Retry-After` seconds for requests to `throttled_mailboxes`.
    pub throttled_mailbox_retry_after_seconds: u64,
    /// Fraction (0.0–1.0) of Graph requests answered 503 or 504 instead, and of authenticated
    /// EWS SOAP requests answered HTTP 503 (as IIS or Exchange's front end does).
    pub server_error_rate: f64,
    /// Added latency on every Graph, token, EWS and Autodiscover request, in milliseconds.
    pub latency_ms: u64,
    /// Extra random latency, uniformly 0..=jitter milliseconds.
    pub latency_jitter_ms: u64,
    /// When true the token endpoint answers 503 `temporarily_unavailable`.
    pub token_endpoint_outage: bool,
    /// Fraction (0.0–1.0) of change notifications silently dropped.
    pub drop_notifications_rate: f64,
    /// Age after which a delta token answers 410 `syncStateNotFound`.
    pub delta_token_max_age_seconds: u64,
    /// Fraction (0.0–1.0) of EWS requests answered with the `ErrorServerBusy` SOAP fault.
    pub ews_server_busy_rate: f64,
    /// `BackOffMilliseconds` sent with `ErrorServerBusy`.
    pub ews_back_off_milliseconds: u64,
    /// Streaming subscriptions per target mailbox before `ErrorExceededSubscriptionCount` (0 = no limit).
    pub ews_subscriptions_per_mailbox: usize,
    /// Open GetStreamingEvents connections per charged account before
    /// `ErrorExceededConnectionCount` (Exchange's `HangingConnectionLimit`: 10 in Exchange
    /// Online; on premises set in EWS's web.config). A connection is charged to the mailbox it
    /// impersonates, else to the account that logged on. 0 = no limit.
    pub ews_hanging_connection_limit: usize,
    /// When > 0, GetStreamingEvents connections close after this many seconds instead of the
    /// requested `ConnectionTimeout` minutes (for fast tests).
    pub ews_connection_timeout_seconds: u64,
    /// Seconds between `ConnectionStatus` OK keep-alive envelopes on a streaming connection.
    pub ews_heartbeat_seconds: u64,
    /// Extended Protection for Authentication on EWS and Autodiscover (IIS's
    /// `extendedProtection tokenChecking`): how the channel binding of an NTLM logon over
    /// HTTPS is checked against the emulator's certificate.
    pub ews_extended_protection: ExtendedProtection,
}

/// IIS's `tokenChecking` values, as Exchange's `ExtendedProtectionTokenChecking` names them.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExtendedProtection {
    /// Channel bindings are not checked.
    #[default]
    None,
    /// A wrong channel binding is refused; a logon without one is accepted.
    Allow,
    /// A logon without a channel binding, or with a wrong one, is refused.
    Require,
}

impl Default for FaultSettings {
    fn default() -> Self {
        FaultSettings {
            mailbox_concurrency_limit: 4,
            mailbox_requests_per_window: 10_000,
            mailbox_window_seconds: 600,
            concurrency_retry_after_seconds: 1,
            throttled_mailboxes: vec![],
            throttled_mailbox_retry_after_seconds: 30,
            server_error_rate: 0.0,
            latency_ms: 0,
            latency_jitter_ms: 0,
            token_endpoint_outage: false,
            drop_notifications_rate: 0.0,
            delta_token_max_age_seconds: 7 * 24 * 3600,
            ews_server_busy_rate: 0.0,
            ews_back_off_milliseconds: 5000,
            ews_subscriptions_per_mailbox: 20,
            ews_hanging_connection_limit: 10,
            ews_connection_timeout_seconds: 0,
            ews_heartbeat_seconds: 30,
            ews_extended_protection: ExtendedProtection::None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaultPatchError {
    #[error("the fault settings must be a JSON object")]
    NotAnObject,
    #[error("invalid fault settings: {0}")]
    Invalid(String),
}

impl FaultSettings {
    /// The latency to add to one request: `latency_ms` plus `unit` (uniform in 0..1) times
    /// 0..=`latency_jitter_ms`.
    pub fn added_latency(&self, unit: f64) -> Duration {
        let jitter = if self.latency_jitter_ms > 0 {
            ((unit * (self.latency_jitter_ms + 1) as f64) as u64).min(self.latency_jitter_ms)
        } else {
            0
        };
        Duration::from_millis(self.latency_ms.saturating_add(jitter))
    }

    /// Applies a partial JSON object (only the named fields change).
    pub fn patched(&self, patch: &Value) -> Result<FaultSettings, FaultPatchError> {
        let patch_object = patch.as_object().ok_or(FaultPatchError::NotAnObject)?;
        let mut current = serde_json::to_value(self)
            .map_err(|error| FaultPatchError::Invalid(error.to_string()))?;
        if let Some(current_object) = current.as_object_mut() {
            for (key, value) in patch_object {
                current_object.insert(key.clone(), value.clone());
            }
        }
        let updated: FaultSettings = serde_json::from_value(current)
            .map_err(|error| FaultPatchError::Invalid(error.to_string()))?;
        for rate in [
            updated.server_error_rate,
            updated.drop_notifications_rate,
            updated.ews_server_busy_rate,
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(FaultPatchError::Invalid(
                    "rates must be between 0.0 and 1.0".to_string(),
                ));
            }
        }
        Ok(updated)
    }
}

/// The outcome of asking the throttle for a slot.
pub enum Admission {
    Admitted(ThrottleGuard),
    Throttled {
        retry_after_seconds: u64,
        limit: ThrottleLimit,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleLimit {
    Concurrency,
    RequestRate,
    Forced,
}

#[derive(Default)]
struct MailboxUsage {
    in_flight: u32,
    window_start: Option<Timestamp>,
    requests_in_window: u32,
}

/// Per app and mailbox usage for Outlook's limits.
#[derive(Default)]
pub struct Throttle {
    usage: Mutex<HashMap<(usize, usize), MailboxUsage>>,
}

/// Holds one concurrency slot until dropped.
pub struct ThrottleGuard {
    throttle: Arc<Throttle>,
    key: (usize, usize),
}

impl Drop for ThrottleGuard {
    fn drop(&mut self) {
        let mut usage = lock(&self.throttle.usage);
        if let Some(entry) = usage.get_mut(&self.key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }
}

impl Throttle {
    pub fn admit(
        self: &Arc<Self>,
        app_index: usize,
        user_index: usize,
        now: Timestamp,
        settings: &FaultSettings,
    ) -> Admission {
        let key = (app_index, user_index);
        let mut usage = lock(&self.usage);
        let entry = usage.entry(key).or_default();
        if settings.mailbox_concurrency_limit > 0
            && entry.in_flight >= settings.mailbox_concurrency_limit
        {
            return Admission::Throttled {
                retry_after_seconds: settings.concurrency_retry_after_seconds,
                limit: ThrottleLimit::Concurrency,
            };
        }
        if settings.mailbox_requests_per_window > 0 {
            let window = SignedDuration::from_secs(
                i64::try_from(settings.mailbox_window_seconds).unwrap_or(i64::MAX),
            );
            let window_start = match entry.window_start {
                Some(start) if now.duration_since(start) < window => start,
                _ => {
                    entry.requests_in_window = 0;
                    entry.window_start = Some(now);
                    now
                }
            };
            if entry.requests_in_window >= settings.mailbox_requests_per_window {
                let remaining = window - now.duration_since(window_start);
                let seconds = u64::try_from(remaining.as_secs()).unwrap_or(0).max(1);
                return Admission::Throttled {
                    retry_after_seconds: seconds,
                    limit: ThrottleLimit::RequestRate,
                };
            }
            entry.requests_in_window += 1;
        }
        entry.in_flight += 1;
        Admission::Admitted(ThrottleGuard {
            throttle: Arc::clone(self),
            key,
        })
    }
}

/// Requests served, by kind and by mailbox, for benchmarks and tests.
#[derive(Default)]
pub struct Counters {
    inner: Mutex<CounterTables>,
}

#[derive(Default)]
struct CounterTables {
    by_kind: BTreeMap<String, u64>,
    by_mailbox: HashMap<usize, u64>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CountersSnapshot {
    pub total_requests: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// Requests that reached a mailbox, keyed by the mailbox's user principal name.
    pub by_mailbox: BTreeMap<String, u64>,
}

impl Counters {
    pub fn count(&self, kind: &str) {
        let mut tables = lock(&self.inner);
        *tables.by_kind.entry(kind.to_string()).or_default() += 1;
    }

    pub fn count_mailbox(&self, user_index: usize) {
        let mut tables = lock(&self.inner);
        *tables.by_mailbox.entry(user_index).or_default() += 1;
    }

    pub fn snapshot(&self, mailbox_name: impl Fn(usize) -> String) -> CountersSnapshot {
        let tables = lock(&self.inner);
        let total_requests = tables
            .by_kind
            .iter()
            .filter(|(kind, _)| {
                !kind.starts_with("notifications.")
                    && !kind.starts_with("throttled.")
                    && !kind.starts_with("faults.")
            })
            .map(|(_, count)| count)
            .sum();
        CountersSnapshot {
            total_requests,
            by_kind: tables.by_kind.clone(),
            by_mailbox: tables
                .by_mailbox
                .iter()
                .map(|(index, count)| (mailbox_name(*index), *count))
                .collect(),
        }
    }

    pub fn reset(&self) {
        let mut tables = lock(&self.inner);
        tables.by_kind.clear();
        tables.by_mailbox.clear();
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the emulator's tables stay usable, and
    // refusing every later request would turn one bug into a dead server.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifth_concurrent_request_is_throttled_and_a_released_slot_is_reused() {
        let throttle = Arc::new(Throttle::default());
        let settings = FaultSettings::default();
        let now = Timestamp::UNIX_EPOCH;
        let mut guards = Vec::new();
        for _ in 0..4 {
            match throttle.admit(0, 0, now, &settings) {
                Admission::Admitted(guard) => guards.push(guard),
                Admission::Throttled { .. } => panic!("throttled too early"),
            }
        }
        assert!(matches!(
            throttle.admit(0, 0, now, &settings),
            Admission::Throttled {
                limit: ThrottleLimit::Concurrency,
                ..
            }
        ));
        assert!(
            matches!(throttle.admit(0, 1, now, &settings), Admission::Admitted(_)),
            "another mailbox is not affected"
        );
        guards.pop();
        assert!(matches!(
            throttle.admit(0, 0, now, &settings),
            Admission::Admitted(_)
        ));
    }

    #[test]
    fn request_rate_window_resets_after_its_length() {
        let throttle = Arc::new(Throttle::default());
        let settings = FaultSettings {
            mailbox_requests_per_window: 2,
            mailbox_window_seconds: 600,
            ..FaultSettings::default()
        };
        let start = Timestamp::UNIX_EPOCH;
        assert!(matches!(
            throttle.admit(0, 0, start, &settings),
            Admission::Admitted(_)
        ));
        assert!(matches!(
            throttle.admit(0, 0, start, &settings),
            Admission::Admitted(_)
        ));
        let later = start
            .checked_add(SignedDuration::from_secs(100))
            .unwrap_or(start);
        match throttle.admit(0, 0, later, &settings) {
            Admission::Throttled {
                retry_after_seconds,
                limit,
            } => {
                assert_eq!(limit, ThrottleLimit::RequestRate);
                assert_eq!(retry_after_seconds, 500);
            }
            Admission::Admitted(_) => panic!("third request in the window was admitted"),
        }
        let next_window = start
            .checked_add(SignedDuration::from_secs(600))
            .unwrap_or(start);
        assert!(matches!(
            throttle.admit(0, 0, next_window, &settings),
            Admission::Admitted(_)
        ));
    }

    #[test]
    fn added_latency_is_the_base_plus_uniform_jitter_within_bounds() {
        let settings = FaultSettings {
            latency_ms: 200,
            latency_jitter_ms: 50,
            ..FaultSettings::default()
        };
        assert_eq!(settings.added_latency(0.0), Duration::from_millis(200));
        assert_eq!(settings.added_latency(0.5), Duration::from_millis(225));
        assert_eq!(
            settings.added_latency(0.999_999),
            Duration::from_millis(250)
        );
        assert_eq!(settings.added_latency(1.0), Duration::from_millis(250));
        assert_eq!(
            FaultSettings::default().added_latency(0.7),
            Duration::ZERO,
            "no latency by default"
        );
    }

    #[test]
    fn patch_changes_only_named_fields_and_rejects_bad_rates() {
        let settings = FaultSettings::default();
        let patched = settings.patched(&serde_json::json!({"latency_ms": 20}));
        assert!(
            matches!(&patched, Ok(updated) if updated.latency_ms == 20 && updated.mailbox_concurrency_limit == 4)
        );
        let patched = settings.patched(&serde_json::json!({"ews_hanging_connection_limit": 0}));
        assert!(
            matches!(&patched, Ok(updated) if updated.ews_hanging_connection_limit == 0 && updated.ews_subscriptions_per_mailbox == 20),
            "{patched:?}"
        );
        assert_eq!(
            settings.ews_hanging_connection_limit, 10,
            "Exchange Online's default"
        );
        assert!(settings
            .patched(&serde_json::json!({"server_error_rate": 2.0}))
            .is_err());
        assert!(settings
            .patched(&serde_json::json!({"no_such_switch": true}))
            .is_err());
    }
}
