//! The webhook wire format: the JSON body, its signature and its headers.
//!
//! A delivery is `POST <url>` with
//!
//! ```text
//! Content-Type: application/json
//! User-Agent: calbridge-webhook/<version>
//! X-Calbridge-Event-Id: 42
//! X-Calbridge-Timestamp: 1767261600          (Unix seconds of this attempt)
//! X-Calbridge-Signature: sha256=<64 lower-case hex digits>
//!
//! {"type":"presence.changed","id":42,"address":"bob@example.com","source":"contoso",
//!  "activity":"busy","note":"Design review until 10:30 #busy","until":"2026-01-01T10:30:00Z",
//!  "decided_at":"2026-01-01T10:00:00Z"}
//! ```
//!
//! - `id` is the event's outbox id: it grows with every change and is the same on every
//!   retry, so a receiver drops an id it has already seen (deliveries are at least once: an
//!   event whose acceptance calbridge could not record before a crash is sent again).
//! - `activity` is `available`, `busy`, `away` or `dnd`; `note` is the presence note (never
//!   null, possibly empty); `until` is when the activity is known to end, or null.
//! - Times are RFC 3339 in UTC.
//! - The signature is HMAC-SHA256 keyed with the endpoint's `secret` over the exact body
//!   bytes. The timestamp header is not signed; receivers use the body's `id` and
//!   `decided_at` to refuse replays.

use calbridge_domain::{MailboxAddress, Secret, SourceId};
use calbridge_store::{OutboxEvent, PersonKey};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The outbox topic of presence changes.
pub const TOPIC: &str = "presence";

/// `type` of a presence change in the body.
pub const EVENT_TYPE: &str = "presence.changed";

pub const SIGNATURE_HEADER: &str = "X-Calbridge-Signature";
pub const EVENT_ID_HEADER: &str = "X-Calbridge-Event-Id";
pub const TIMESTAMP_HEADER: &str = "X-Calbridge-Timestamp";

/// A decided presence change, as the service hands it to [`crate::WebhookPublisher::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    pub person: PersonKey,
    /// `available`, `busy`, `away` or `dnd` (the presence engine's `Activity::as_str`).
    pub activity: String,
    pub note: String,
    pub until: Option<Timestamp>,
    pub decided_at: Timestamp,
}

/// What the outbox keeps for a presence change: the body without its id, which the store
/// only assigns on append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredChange {
    #[serde(rename = "type")]
    pub event_type: String,
    pub address: MailboxAddress,
    pub source: SourceId,
    pub activity: String,
    pub note: String,
    pub until: Option<Timestamp>,
    pub decided_at: Timestamp,
}

impl StoredChange {
    pub fn from_event(event: &PresenceEvent) -> StoredChange {
        StoredChange {
            event_type: EVENT_TYPE.to_string(),
            address: event.person.address.clone(),
            source: event.person.source.clone(),
            activity: event.activity.clone(),
            note: event.note.clone(),
            until: event.until,
            decided_at: event.decided_at,
        }
    }
}

/// The body as sent; the field order is the documented one.
#[derive(Serialize)]
struct WireBody<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    id: i64,
    address: &'a MailboxAddress,
    source: &'a SourceId,
    activity: &'a str,
    note: &'a str,
    until: Option<Timestamp>,
    decided_at: Timestamp,
}

/// Why an outbox event cannot become a webhook body. Such an event is skipped (and logged):
/// retrying cannot repair it, and holding every later change back for it would be worse.
#[derive(Debug, thiserror::Error)]
#[error("outbox event {id} is not a presence change this calbridge can read: {problem}")]
pub(crate) struct UnreadableEvent {
    pub id: i64,
    pub problem: String,
}

/// The exact bytes POSTed for an outbox event.
pub(crate) fn body_of(event: &OutboxEvent) -> Result<Vec<u8>, UnreadableEvent> {
    let unreadable = |problem: String| UnreadableEvent {
        id: event.id.0,
        problem,
    };
    let stored: StoredChange = serde_json::from_value(event.payload.clone())
        .map_err(|error| unreadable(error.to_string()))?;
    if stored.event_type != EVENT_TYPE {
        return Err(unreadable(format!("unknown type `{}`", stored.event_type)));
    }
    serde_json::to_vec(&WireBody {
        event_type: &stored.event_type,
        id: event.id.0,
        address: &stored.address,
        source: &stored.source,
        activity: &stored.activity,
        note: &stored.note,
        until: stored.until,
        decided_at: stored.decided_at,
    })
    .map_err(|error| unreadable(error.to_string()))
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub(crate) fn signature(secret: &Secret, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let tag = ring::hmac::sign(&key, body);
    format!("sha256={}", hex::encode(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use calbridge_store::OutboxId;
    use serde_json::json;

    use super::*;

    fn sample_event() -> PresenceEvent {
        PresenceEvent {
            person: PersonKey::new(
                SourceId("contoso".to_string()),
                MailboxAddress::parse("Bob@Example.com").expect("an address"),
            ),
            activity: "busy".to_string(),
            note: "Design review until 10:30 #busy".to_string(),
            until: Some("2026-01-01T10:30:00Z".parse().expect("a time")),
            decided_at: "2026-01-01T10:00:00Z".parse().expect("a time"),
        }
    }

    fn outbox_event(id: i64, payload: serde_json::Value) -> OutboxEvent {
        OutboxEvent {
            id: OutboxId(id),
            topic: TOPIC.to_string(),
            person: None,
            payload,
            created_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn body_is_the_documented_json_in_the_documented_order() {
        let stored =
            serde_json::to_value(StoredChange::from_event(&sample_event())).expect("serialisable");
        let body = body_of(&outbox_event(42, stored)).expect("a body");
        assert_eq!(
            String::from_utf8(body).expect("UTF-8"),
            r#"{"type":"presence.changed","id":42,"address":"bob@example.com","source":"contoso","activity":"busy","note":"Design review until 10:30 #busy","until":"2026-01-01T10:30:00Z","decided_at":"2026-01-01T10:00:00Z"}"#
        );
    }

    #[test]
    fn unknown_until_is_null() {
        let mut event = sample_event();
        event.until = None;
        let stored = serde_json::to_value(StoredChange::from_event(&event)).expect("serialisable");
        let body: serde_json::Value =
            serde_json::from_slice(&body_of(&outbox_event(1, stored)).expect("a body"))
                .expect("JSON");
        assert_eq!(body["until"], serde_json::Value::Null);
    }

    #[test]
    fn a_payload_of_another_shape_is_unreadable_not_a_panic() {
        let error = body_of(&outbox_event(7, json!({"type": "sip.published"}))).expect_err("bad");
        assert!(error.to_string().contains("outbox event 7"), "{error}");
    }

    #[test]
    fn signature_matches_a_known_hmac_sha256_vector() {
        // RFC 4231 test case 2.
        let signed = signature(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            signed,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
