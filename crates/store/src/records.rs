//! The records the store keeps, as the rest of calbridge sees them.
//!
//! These are plain data: no database types leak out, so that a PostgreSQL implementation of
//! [`crate::Store`] returns exactly the same values.

use std::fmt;

use calbridge_domain::{Appointment, MailboxAddress, Secret, SourceId};
use jiff::civil::Date;
use jiff::Timestamp;

/// Who a record belongs to: the address the directory gave, within one source.
///
/// The same address may appear in two sources (two tenants during a migration), so the
/// address alone is not a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersonKey {
    pub source: SourceId,
    pub address: MailboxAddress,
}

impl PersonKey {
    pub fn new(source: SourceId, address: MailboxAddress) -> Self {
        PersonKey { source, address }
    }
}

impl fmt::Display for PersonKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (source {})", self.address, self.source)
    }
}

/// What the directory says about a person; written by [`crate::Store::upsert_person`].
///
/// Re-reading the directory must not forget how the address was resolved, which is why the
/// resolution is not part of this and has its own method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonUpsert {
    pub key: PersonKey,
    pub display_name: Option<String>,
    pub sip_uri: Option<String>,
}

/// Whether the directory's address was turned into the mailbox's primary SMTP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Not tried yet, or to be tried again.
    Pending,
    Resolved {
        primary_smtp: MailboxAddress,
        /// The source's own id of the mailbox (Graph's user object id), when it has one.
        source_user_id: Option<String>,
    },
    /// The lookup failed; the text is shown in the admin view.
    Failed { error: String },
}

/// A person as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub key: PersonKey,
    pub display_name: Option<String>,
    pub sip_uri: Option<String>,
    pub resolution: Resolution,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a [`crate::Store::remove_person`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    NotFound,
}

/// The span of time a full read covered; the stored appointments are those of this window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppointmentWindow {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// The last error a person's sync met, for the admin view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncError {
    pub message: String,
    pub at: Timestamp,
}

/// How far a person's calendar sync has come, so that a restart resumes instead of re-reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// Opaque to the store: a Graph `@odata.deltaLink`, an EWS sync state, a CalDAV sync token.
    pub delta_link: Option<String>,
    pub subscription_id: Option<String>,
    pub subscription_expires_at: Option<Timestamp>,
    /// The webhook `clientState`; sealed with the store's key at rest.
    pub client_state: Option<Secret>,
    pub last_full_sync_at: Option<Timestamp>,
    pub last_delta_at: Option<Timestamp>,
    pub last_error: Option<SyncError>,
    pub consecutive_failures: u32,
    /// The window of the last [`crate::Store::replace_appointments`]. Read-only here:
    /// `set_sync_state` ignores it, so a caller that builds a fresh `SyncState` cannot erase it.
    pub appointment_window: Option<AppointmentWindow>,
}

/// One person's full read of a window, for [`crate::Store::replace_appointments_many`]: the
/// arguments of one [`crate::Store::replace_appointments`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowReplacement {
    pub key: PersonKey,
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    pub appointments: Vec<Appointment>,
}

/// Whether a source's credentials currently get a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TokenState {
    #[default]
    Unknown,
    Ok,
    Failed {
        error: String,
    },
}

/// Running totals of a source's requests, for the admin view and metrics after a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceCounters {
    pub n_requests: u64,
    pub n_throttled: u64,
    pub n_failures: u64,
}

/// The state of one source (a tenant, an Exchange organisation) as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceState {
    pub token: TokenState,
    pub token_checked_at: Option<Timestamp>,
    /// When the client secret or certificate expires, to warn 30 days before.
    pub secret_expires_on: Option<Date>,
    pub last_throttled_at: Option<Timestamp>,
    pub counters: SourceCounters,
}

/// The presence last decided for a person, and what was last published of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentPresence {
    pub activity: String,
    pub note: Option<String>,
    pub until: Option<Timestamp>,
    pub why: String,
    pub next_change_at: Option<Timestamp>,
    pub decided_at: Timestamp,
    /// A digest of what publishers last sent, so that an unchanged decision is not re-sent.
    pub published_fingerprint: Option<String>,
}

/// The position of an event in the outbox. Ids only grow; `OutboxId(0)` is before the first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxId(pub i64);

/// An event to append to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOutboxEvent {
    pub topic: String,
    pub person: Option<PersonKey>,
    pub payload: serde_json::Value,
    pub created_at: Timestamp,
}

/// An event read back from the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub id: OutboxId,
    pub topic: String,
    pub person: Option<PersonKey>,
    pub payload: serde_json::Value,
    pub created_at: Timestamp,
}

/// A presentity's publication at the SIP presence server (RFC 3903), as the publisher last saw
/// it: whoever publishes the URI next modifies it with `SIP-If-Match: etag` while it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipPublication {
    pub uri: String,
    /// `None`: the server holds nothing for this URI (removed, or it forgot the tag).
    pub etag: Option<String>,
    pub expires_at: Timestamp,
}

/// What became of a room's meeting under `[rooms] check_in_minutes`: someone checked it in,
/// or nobody did and calbridge released it (declined it in the room's calendar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckInState {
    CheckedIn,
    Released,
    /// The release was tried and the source refused it (no write right, say); `detail` says
    /// what it answered. The meeting stays; a later check-in replaces this record.
    ReleaseFailed,
}

impl CheckInState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckInState::CheckedIn => "checked_in",
            CheckInState::Released => "released",
            CheckInState::ReleaseFailed => "release_failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "checked_in" => Some(CheckInState::CheckedIn),
            "released" => Some(CheckInState::Released),
            "release_failed" => Some(CheckInState::ReleaseFailed),
            _ => None,
        }
    }
}

/// One room meeting's check-in record; a meeting is the appointment id with its start (one
/// occurrence of a series keeps its id in some sources' views).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCheckIn {
    pub appointment_id: String,
    pub meeting_start: Timestamp,
    pub meeting_end: Timestamp,
    pub state: CheckInState,
    /// When it was checked in or released.
    pub at: Timestamp,
    /// For a release: the rule and the meeting ("nobody checked in within 10 minutes"); for a
    /// failed one: what the source answered.
    pub detail: Option<String>,
}
