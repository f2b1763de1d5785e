//! The presence feed across instances on one PostgreSQL database: who changed, as it happens.
//!
//! Each instance decides the presence of the people it follows and saves it in the `presence`
//! table. A trigger (migration 0003) NOTIFYs `calbridge_presence` with the person's key when a
//! saved presence differs from the one before in what people see, at the writer's commit. Every
//! instance listens ([`PresenceFeed::listen`]) and reads the presence itself back from the table
//! ([`PresenceFeed::load`]), so that its live stream can show changes another instance decided.
//!
//! NOTIFY is not durable: what is sent while a listener's connection is down is lost. A listener
//! hears [`Heard::Lost`] when that happens and reads what was decided meanwhile again with
//! [`PresenceFeed::decided_since`].
//!
//! **Invariant:** the feed only reads; the presence is written by the instance that follows the
//! person, through [`crate::Store::save_presences`], never here.

use std::collections::HashSet;

use calbridge_domain::{MailboxAddress, SourceId};
use jiff::Timestamp;
use serde::Deserialize;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::PgPool;

use crate::codec::{decode_person_key, decode_presence};
use crate::{CurrentPresence, PersonKey, StoreError};

/// The NOTIFY channel of migration 0003's trigger.
pub const PRESENCE_CHANNEL: &str = "calbridge_presence";

/// At most this many people are taken from one burst of notifications (09:00 for half the
/// company), so that one read of their presence stays a reasonable statement.
const MAX_BATCH: usize = 500;

/// The presence feed of one database.
#[derive(Clone)]
pub struct PresenceFeed {
    pool: PgPool,
}

/// What a listener heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// People whose saved presence changed, without repeats, in the order they were heard.
    Changed(Vec<PersonKey>),
    /// The listening connection was lost and has been made again: what was saved in between
    /// was not heard (read it with [`PresenceFeed::decided_since`]).
    Lost,
}

/// A connection that listens on [`PRESENCE_CHANNEL`].
pub struct PresenceListener {
    listener: PgListener,
    /// Payloads that were not a person's key (only a foreign NOTIFY on our channel sends them).
    pub unreadable: u64,
}

#[derive(Deserialize)]
struct Payload {
    source: String,
    address: String,
}

fn parse_payload(payload: &str) -> Option<PersonKey> {
    let payload: Payload = serde_json::from_str(payload).ok()?;
    let address = MailboxAddress::parse(&payload.address).ok()?;
    Some(PersonKey::new(SourceId(payload.source), address))
}

fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::database(operation.to_string(), source)
}

fn decode_rows(rows: &[PgRow]) -> Result<Vec<(PersonKey, CurrentPresence)>, StoreError> {
    rows.iter()
        .map(|row| {
            let key = decode_person_key(row, "source_id", "address")?;
            let presence = decode_presence(row, &key)?;
            Ok((key, presence))
        })
        .collect()
}

impl PresenceFeed {
    pub(crate) fn new(pool: PgPool) -> PresenceFeed {
        PresenceFeed { pool }
    }

    /// A connection of its own that hears every saved presence change from now on.
    pub async fn listen(&self) -> Result<PresenceListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(database("listen for presence changes"))?;
        listener
            .listen(PRESENCE_CHANNEL)
            .await
            .map_err(database("listen for presence changes"))?;
        Ok(PresenceListener {
            listener,
            unreadable: 0,
        })
    }

    /// The saved presence of those of `people` who have one, in one read.
    pub async fn load(
        &self,
        people: &[PersonKey],
    ) -> Result<Vec<(PersonKey, CurrentPresence)>, StoreError> {
        if people.is_empty() {
            return Ok(Vec::new());
        }
        let sources: Vec<&str> = people.iter().map(|key| key.source.0.as_str()).collect();
        let addresses: Vec<&str> = people.iter().map(|key| key.address.as_str()).collect();
        let rows = sqlx::query(
            "SELECT p.source_id, p.address, r.activity, r.note, r.until_at, r.why, \
             r.next_change_at, r.decided_at, r.published_fingerprint \
             FROM presence r JOIN people p ON p.id = r.person_id \
             JOIN UNNEST($1::text[], $2::text[]) AS wanted (source_id, address) \
             ON p.source_id = wanted.source_id AND p.address = wanted.address",
        )
        .bind(&sources)
        .bind(&addresses)
        .fetch_all(&self.pool)
        .await
        .map_err(database("read changed presences"))?;
        decode_rows(&rows)
    }

    /// Every presence decided at or after `since` (the store keeps whole seconds), oldest
    /// decision first: what a listener may have missed while its connection was down.
    pub async fn decided_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(PersonKey, CurrentPresence)>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.source_id, p.address, r.activity, r.note, r.until_at, r.why, \
             r.next_change_at, r.decided_at, r.published_fingerprint \
             FROM presence r JOIN people p ON p.id = r.person_id \
             WHERE r.decided_at >= $1 ORDER BY r.decided_at, p.source_id, p.address",
        )
        .bind(since.as_second())
        .fetch_all(&self.pool)
        .await
        .map_err(database("read the presences decided while not listening"))?;
        decode_rows(&rows)
    }
}

impl PresenceListener {
    /// Waits for the next change, then takes the others sqlx already buffered (up to a batch;
    /// usually none: notifications are read one by one, so a caller that wants batches reads
    /// them on a task of its own and gathers what queued up meanwhile). After
    /// [`Heard::Lost`] the connection is already made again. An error means it could not be:
    /// drop the listener and [`PresenceFeed::listen`] again later.
    pub async fn next(&mut self) -> Result<Heard, StoreError> {
        loop {
            let Some(first) = self
                .listener
                .try_recv()
                .await
                .map_err(database("wait for presence changes"))?
            else {
                return Ok(Heard::Lost);
            };
            let mut seen = HashSet::new();
            let mut people = Vec::new();
            let mut notification = Some(first);
            while let Some(heard) = notification.take() {
                match parse_payload(heard.payload()) {
                    Some(person) => {
                        if seen.insert(person.clone()) {
                            people.push(person);
                        }
                    }
                    None => self.unreadable += 1,
                }
                if people.len() < MAX_BATCH {
                    notification = self.listener.next_buffered();
                }
            }
            if !people.is_empty() {
                return Ok(Heard::Changed(people));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_the_key_the_trigger_writes_and_nothing_else_is() {
        let key = parse_payload(r#"{"source" : "m365", "address" : "ada@contoso.example"}"#);
        assert_eq!(
            key,
            Some(PersonKey::new(
                SourceId("m365".to_string()),
                MailboxAddress::parse("ada@contoso.example").expect("an address"),
            ))
        );
        assert_eq!(parse_payload(""), None);
        assert_eq!(parse_payload(r#"{"source": "m365"}"#), None);
        assert_eq!(
            parse_payload(r#"{"source": "m365", "address": "not an address"}"#),
            None
        );
    }
}
