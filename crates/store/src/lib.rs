//! The store: what calbridge remembers between two runs.
//!
//! People from the directory, their appointments (only the fields presence needs), how far each
//! calendar sync has come (delta links, subscriptions), the presence last decided, secrets
//! sealed at rest, and an outbox of events for webhooks. Everything goes through the [`Store`]
//! trait so that the service holds an `Arc<dyn Store>`. Two backends fill it alike:
//! [`SqliteStore`], the embedded default (one file, locked against a second process), and
//! [`PostgresStore`], for several instances on one database. They share everything but their
//! SQL: the encoding of records and the sealing of secrets live once, in `codec.rs`, and each
//! has its own migrations (`migrations/sqlite/`, `migrations/postgres/`) with the same
//! version numbers. The tests of the contract run against both.
//!
//! **Invariant:** the store never holds what a source did not fetch: a hidden subject is NULL,
//! not an empty string, and no secret is ever written in clear.

pub mod cluster;
mod codec;
mod crypto;
mod error;
pub mod feed;
mod migrations;
mod postgres;
mod records;
pub mod scratch;
mod sqlite;

use std::collections::HashMap;

use async_trait::async_trait;
use calbridge_domain::{Appointment, Secret, SourceId};
use jiff::Timestamp;

pub use crypto::SecretKey;
pub use error::{StoreError, StoreLocation};
pub use postgres::{redact_url, PostgresStore, PostgresUrl};
pub use records::{
    AppointmentWindow, CheckInState, CurrentPresence, NewOutboxEvent, OutboxEvent, OutboxId,
    Person, PersonKey, PersonUpsert, Removal, Resolution, RoomCheckIn, SipPublication,
    SourceCounters, SourceState, SyncError, SyncState, TokenState, WindowReplacement,
};
pub use sqlite::{Rebuilt, SqliteStore};

/// The operations the service needs from persistent storage.
///
/// Methods that concern one person fail with [`StoreError::PersonNotFound`] when the person was
/// never upserted (or was removed), except `get_person`, `load_appointments` and
/// `load_presence`, which answer `None` or an empty list.
///
/// The batch methods (`upsert_people`, `mark_resolutions`, `replace_appointments_many`,
/// `set_sync_states`, `save_presences`) mean exactly what calling the single-item method once
/// per element, in order, means; an empty batch is a no-op. Their default implementations do
/// just that, after checking that every person named exists, so that an unknown person fails
/// the batch with [`StoreError::PersonNotFound`] before anything is written. The defaults are
/// not atomic against other failures (a database error halfway leaves the first elements
/// written) nor against a concurrent `remove_person`; an implementation with transactions
/// should override them to write the whole batch in one, as [`SqliteStore`] and
/// [`PostgresStore`] do.
///
/// `#[async_trait]` rather than native `async fn` because the trait must be usable as
/// `dyn Store`.
#[async_trait]
pub trait Store: Send + Sync {
    // People.

    /// Adds a person, or updates the directory's fields of a known one. The resolution of a
    /// new person starts as [`Resolution::Pending`] and is kept for a known one.
    async fn upsert_person(&self, person: &PersonUpsert) -> Result<(), StoreError>;
    async fn get_person(&self, key: &PersonKey) -> Result<Option<Person>, StoreError>;
    /// Every person, ordered by source then address.
    async fn list_people(&self) -> Result<Vec<Person>, StoreError>;
    /// The people of one source, ordered by address.
    async fn list_people_of_source(&self, source: &SourceId) -> Result<Vec<Person>, StoreError>;
    /// Removes a person with their appointments, sync state and presence.
    async fn remove_person(&self, key: &PersonKey) -> Result<Removal, StoreError>;
    async fn mark_resolution(
        &self,
        key: &PersonKey,
        resolution: &Resolution,
    ) -> Result<(), StoreError>;

    /// Sets what the directory says about the rooms of `source`: each listed room (a person
    /// of that source, by address) gets its details; the source's other people lose theirs.
    /// Rooms that are not people of the source are skipped. One transaction.
    async fn set_rooms(
        &self,
        source: &SourceId,
        rooms: &[calbridge_domain::RoomInfo],
    ) -> Result<(), StoreError>;
    /// Every room with its details (its display name from the person), ordered by source then
    /// address.
    async fn list_rooms(&self) -> Result<Vec<(PersonKey, calbridge_domain::RoomInfo)>, StoreError>;
    /// Every room with its details and its appointments, in one read: the rooms API answers
    /// "which room is free" for 200 rooms from this. The default reads each room's calendar.
    async fn list_rooms_with_appointments(
        &self,
    ) -> Result<Vec<(PersonKey, calbridge_domain::RoomInfo, Vec<Appointment>)>, StoreError> {
        let mut listed = Vec::new();
        for (key, room) in self.list_rooms().await? {
            let appointments = self.load_appointments(&key).await?;
            listed.push((key, room, appointments));
        }
        Ok(listed)
    }

    /// Records the first word on a room's meeting (`appointment_id` at `meeting_start`): a
    /// check-in, or calbridge's claim to release it. Answers whether it was written: `false`
    /// when the meeting already has a record, which stays, except that a
    /// [`CheckInState::ReleaseFailed`] record gives way to the new one. This is what makes a
    /// check-in and a release at the same second exclusive, across instances too.
    async fn claim_room_meeting(
        &self,
        key: &PersonKey,
        record: &RoomCheckIn,
    ) -> Result<bool, StoreError>;
    /// Writes a meeting's record whatever it held (a claimed release that failed).
    async fn set_room_meeting(
        &self,
        key: &PersonKey,
        record: &RoomCheckIn,
    ) -> Result<(), StoreError>;
    /// Every room meeting's record whose meeting ends after `since`, by meeting start. Records
    /// of meetings that ended a week before a new record's are deleted as it is written.
    async fn list_room_meetings(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(PersonKey, RoomCheckIn)>, StoreError>;

    /// [`Store::upsert_person`] for each element, in order, in one transaction where the
    /// implementation has them. Never fails with `PersonNotFound`: upserting creates.
    async fn upsert_people(&self, people: &[PersonUpsert]) -> Result<(), StoreError> {
        for person in people {
            self.upsert_person(person).await?;
        }
        Ok(())
    }

    /// [`Store::mark_resolution`] for each element, in order. One transaction for all; an
    /// unknown person fails the whole batch with `PersonNotFound` (nothing written).
    async fn mark_resolutions(
        &self,
        resolutions: &[(PersonKey, Resolution)],
    ) -> Result<(), StoreError> {
        require_people(
            self,
            resolutions.iter().map(|(key, _)| key),
            "mark the resolution",
        )
        .await?;
        for (key, resolution) in resolutions {
            self.mark_resolution(key, resolution).await?;
        }
        Ok(())
    }

    // Appointments.

    /// Replaces all of a person's appointments by the result of a full read of
    /// `[window_start, window_end)`, in one transaction: a failure leaves the old set intact.
    /// Appointments from an earlier window are dropped too, because the window moves at
    /// midnight and what fell out of it is no longer kept fresh by the source.
    async fn replace_appointments(
        &self,
        key: &PersonKey,
        window_start: Timestamp,
        window_end: Timestamp,
        appointments: Vec<Appointment>,
    ) -> Result<(), StoreError>;
    /// [`Store::replace_appointments`] for each element, in order, each window recorded as
    /// that method records it. One transaction for all; an unknown person fails the whole
    /// batch with `PersonNotFound` (nothing written), and so does any other failure.
    async fn replace_appointments_many(
        &self,
        windows: Vec<WindowReplacement>,
    ) -> Result<(), StoreError> {
        require_people(
            self,
            windows.iter().map(|window| &window.key),
            "replace the appointments",
        )
        .await?;
        for window in windows {
            self.replace_appointments(
                &window.key,
                window.window_start,
                window.window_end,
                window.appointments,
            )
            .await?;
        }
        Ok(())
    }

    /// Applies a delta in one transaction: upserts by appointment id, then removals.
    /// Removing an id that is not stored is not an error (deltas repeat themselves).
    async fn apply_appointment_changes(
        &self,
        key: &PersonKey,
        upserts: Vec<Appointment>,
        removed_ids: Vec<String>,
    ) -> Result<(), StoreError>;
    /// A person's appointments, ordered by id. Empty for an unknown person.
    async fn load_appointments(&self, key: &PersonKey) -> Result<Vec<Appointment>, StoreError>;
    /// Every person's appointments in one read, for start-up. Every stored person has an
    /// entry, with an empty list when they have no appointments.
    async fn load_all_appointments(
        &self,
    ) -> Result<HashMap<PersonKey, Vec<Appointment>>, StoreError>;

    // Sync state.

    /// A person's sync state; the default (nothing synced yet) when none was saved.
    async fn get_sync_state(&self, key: &PersonKey) -> Result<SyncState, StoreError>;
    /// The saved sync states of every person of `source` who has one, in one read: a start
    /// restores 10,000 people's states from this instead of 10,000 reads. The default reads
    /// each person's.
    async fn sync_states_of_source(
        &self,
        source: &SourceId,
    ) -> Result<HashMap<PersonKey, SyncState>, StoreError> {
        let mut states = HashMap::new();
        for person in self.list_people_of_source(source).await? {
            let state = self.get_sync_state(&person.key).await?;
            states.insert(person.key, state);
        }
        Ok(states)
    }
    /// The person of `source` whose saved sync state holds `subscription_id`, if any: how an
    /// instance that did not make a subscription finds whom its notification is about.
    async fn person_with_subscription(
        &self,
        source: &SourceId,
        subscription_id: &str,
    ) -> Result<Option<PersonKey>, StoreError>;
    /// Saves every field but `appointment_window`, which only `replace_appointments` writes.
    async fn set_sync_state(&self, key: &PersonKey, state: &SyncState) -> Result<(), StoreError>;
    /// [`Store::set_sync_state`] for each element, in order (so `appointment_window` is
    /// ignored here too). One transaction for all; an unknown person fails the whole batch with
    /// `PersonNotFound` (nothing written).
    async fn set_sync_states(&self, states: &[(PersonKey, SyncState)]) -> Result<(), StoreError> {
        require_people(
            self,
            states.iter().map(|(key, _)| key),
            "save the sync state",
        )
        .await?;
        for (key, state) in states {
            self.set_sync_state(key, state).await?;
        }
        Ok(())
    }

    /// A source's state; the default when none was saved.
    async fn get_source_state(&self, source: &SourceId) -> Result<SourceState, StoreError>;
    async fn set_source_state(
        &self,
        source: &SourceId,
        state: &SourceState,
    ) -> Result<(), StoreError>;

    // Presence.

    async fn save_presence(
        &self,
        key: &PersonKey,
        presence: &CurrentPresence,
    ) -> Result<(), StoreError>;
    /// [`Store::save_presence`] for each element, in order. One transaction for all; an
    /// unknown person fails the whole batch with `PersonNotFound` (nothing written).
    async fn save_presences(
        &self,
        presences: &[(PersonKey, CurrentPresence)],
    ) -> Result<(), StoreError> {
        require_people(
            self,
            presences.iter().map(|(key, _)| key),
            "save the presence",
        )
        .await?;
        for (key, presence) in presences {
            self.save_presence(key, presence).await?;
        }
        Ok(())
    }

    async fn load_presence(&self, key: &PersonKey) -> Result<Option<CurrentPresence>, StoreError>;
    /// Every saved presence, ordered by source then address.
    async fn list_presence(&self) -> Result<Vec<(PersonKey, CurrentPresence)>, StoreError>;

    // Secrets.

    /// Seals `secret` with the store's key (a fresh nonce each time) and saves it as `name`.
    async fn put_secret(&self, name: &str, secret: &Secret) -> Result<(), StoreError>;
    /// The secret saved as `name`; [`StoreError::SecretUndecryptable`] if the key changed.
    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError>;

    // Outbox.

    /// Appends an event; ids grow monotonically and are never reused.
    async fn append_outbox(&self, event: &NewOutboxEvent) -> Result<OutboxId, StoreError>;
    /// Up to `limit` events with an id greater than `after`, oldest first.
    async fn read_outbox_after(
        &self,
        after: OutboxId,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError>;
    /// The last event id `consumer` has handled; `OutboxId(0)` for a new consumer.
    async fn get_outbox_cursor(&self, consumer: &str) -> Result<OutboxId, StoreError>;
    async fn set_outbox_cursor(&self, consumer: &str, cursor: OutboxId) -> Result<(), StoreError>;

    // SIP publications.

    /// Saves what the presence server holds for each URI: a publication's entity-tag and
    /// expiry, or (`etag: None`) none any more.
    async fn save_sip_publications(
        &self,
        publications: &[SipPublication],
    ) -> Result<(), StoreError>;
    /// The saved publication of `uri`, expired or not.
    async fn load_sip_publication(&self, uri: &str) -> Result<Option<SipPublication>, StoreError>;
    /// The saved publications that have not expired at `now`, by URI.
    async fn list_sip_publications(
        &self,
        now: Timestamp,
    ) -> Result<Vec<SipPublication>, StoreError>;
}

/// For the default batch methods: fails with `PersonNotFound` for the first key that names no
/// stored person, so that a batch is refused before any of it is written.
async fn require_people<'k, S>(
    store: &S,
    keys: impl Iterator<Item = &'k PersonKey> + Send,
    operation: &'static str,
) -> Result<(), StoreError>
where
    S: Store + ?Sized,
{
    for key in keys {
        if store.get_person(key).await?.is_none() {
            return Err(StoreError::PersonNotFound {
                operation,
                person: key.clone(),
            });
        }
    }
    Ok(())
}
