//! The PostgreSQL implementation of [`Store`], for several calbridge instances on one database.
//!
//! It stores exactly what [`crate::SqliteStore`] stores, decoded by the same code
//! (`codec.rs`); only the SQL differs. Batches are written with one statement per table,
//! whatever their size, by binding each column as an array and reading it back with
//! `UNNEST`. PostgreSQL refuses an `INSERT … ON CONFLICT DO UPDATE` that would update one row
//! twice, so a batch that names a key twice is written as several statements, each without a
//! repeat, in order: the later entry wins, as with separate calls.
//!
//! Write transactions lock the people they write (`FOR NO KEY UPDATE`, in id order): a
//! concurrent `remove_person` waits for them instead of making them fail halfway, and two
//! instances writing the same person's appointments take turns as SQLite's single writer
//! would.

mod url;

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use async_trait::async_trait;
use calbridge_domain::{Appointment, Secret, SourceId};
use jiff::Timestamp;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgExecutor};

use crate::codec::{
    count_to_i64, decode_appointment, decode_appointment_list, decode_outbox_event, decode_person,
    decode_person_key, decode_presence, decode_source_state, decode_sync_state, has_repeats,
    ids_in_order, open_named_secret, opt_seconds, people_range, resolution_columns,
    seal_client_state, seal_named_secret, sip_publication, token_columns, AppointmentRow, StoreRow,
};
use crate::migrations::{self, latest_version, EmbeddedMigrations};
use crate::{
    CurrentPresence, NewOutboxEvent, OutboxEvent, OutboxId, Person, PersonKey, PersonUpsert,
    Removal, Resolution, SecretKey, SipPublication, SourceState, Store, StoreError, StoreLocation,
    SyncState, WindowReplacement,
};
pub use url::{redact_url, PostgresUrl};

/// How long the first connection may take before the start-up gives up with a clear error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an operation waits for a free connection before failing with a retryable error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Enough for the service's concurrent readers (API, admin page) beside its writers, and
/// small enough that several instances stay far below PostgreSQL's default of 100.
const MAX_CONNECTIONS: u32 = 8;

const PERSON_COLUMNS: &str = "p.source_id, p.address, p.display_name, p.sip_uri, \
     p.resolution, p.primary_smtp, p.source_user_id, p.resolution_error, p.created_at, p.updated_at";

/// Dates are read as `YYYY-MM-DD` text, whatever the session's DateStyle, so that both backends
/// hand the codec the same spelling.
const APPOINTMENT_COLUMNS: &str = "a.appointment_id, a.start_at, a.end_at, \
     to_char(a.first_day, 'YYYY-MM-DD') AS first_day, to_char(a.end_day, 'YYYY-MM-DD') AS end_day, \
     a.show_as, a.sensitivity, a.subject, a.organizer, a.status";

/// The rows of `appointments` from 11 arrays bound in [`AppointmentArrays::bind`]'s order.
const INSERT_APPOINTMENTS: &str = "INSERT INTO appointments (person_id, appointment_id, \
     start_at, end_at, first_day, end_day, show_as, sensitivity, subject, organizer, status) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], \
     $5::text[]::date[], $6::text[]::date[], $7::text[], $8::text[], $9::text[], $10::text[], \
     $11::text[])";

const UPSERT_APPOINTMENTS_SUFFIX: &str = "ON CONFLICT (person_id, appointment_id) DO UPDATE SET \
     start_at = excluded.start_at, end_at = excluded.end_at, first_day = excluded.first_day, \
     end_day = excluded.end_day, show_as = excluded.show_as, \
     sensitivity = excluded.sensitivity, subject = excluded.subject, \
     organizer = excluded.organizer, status = excluded.status";

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// The PostgreSQL store. Cheap to share: hold it in an `Arc<dyn Store>`.
pub struct PostgresStore {
    pool: PgPool,
    key: SecretKey,
    /// For error messages only; never the URL, which may hold a password.
    location: StoreLocation,
    /// When set, a person's calendar, sync state and presence are written only while this
    /// instance holds their shard's lease under the epoch it believes.
    fence: Option<crate::cluster::Fence>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database of `url` and brings its schema up to date (several instances
    /// starting at once take turns: sqlx migrates under an advisory lock). `key` seals and
    /// opens the secrets; every instance on one database must use the same key.
    ///
    /// A server that does not answer, refuses the login or has no such database fails here
    /// with [`StoreError::Open`], naming the host, port, database and user (never the
    /// password) and giving the server's answer.
    pub async fn open(url: &PostgresUrl, key: SecretKey) -> Result<Self, StoreError> {
        let location = url.location().clone();
        let open_error = |source| StoreError::Open {
            location: Box::new(location.clone()),
            source,
        };
        // One connection on its own first: a pool retries a refused connection until its
        // timeout and then only says that it timed out, where the operator needs the answer.
        let mut connection =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(url.options()))
                .await
                .map_err(|_| {
                    open_error(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no answer within {} s (is the server running, and is this \
                             address reachable from here?)",
                            CONNECT_TIMEOUT.as_secs()
                        ),
                    )))
                })?
                .map_err(open_error)?;
        let migrated = migrate(&mut connection, &location).await;
        // The session is only closed politely; a failure here changes nothing.
        let _ = connection.close().await;
        migrated?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(url.options().clone());
        Ok(PostgresStore {
            pool,
            key,
            location,
            fence: None,
        })
    }

    /// The same database, with every write of a person's calendar, sync state or presence
    /// fenced by `fence`: in the write's transaction, the lease rows of the people's shards
    /// are locked against claims and checked to be this instance's under the epochs `fence`
    /// holds. A write for anyone whose shard another instance has claimed since fails as a
    /// whole with [`StoreError::Fenced`], naming them, so that an instance that stalled past
    /// its lease cannot overwrite what the new owner wrote.
    pub fn fenced(&self, fence: crate::cluster::Fence) -> PostgresStore {
        PostgresStore {
            pool: self.pool.clone(),
            key: self.key.clone(),
            location: self.location.clone(),
            fence: Some(fence),
        }
    }

    async fn check_fence<'k>(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        people: impl IntoIterator<Item = &'k PersonKey>,
    ) -> Result<(), StoreError> {
        match &self.fence {
            Some(fence) => fence.check(tx, people).await,
            None => Ok(()),
        }
    }

    /// The server, database and user, for messages.
    /// Jobs that one instance at a time does on this database (see [`crate::cluster`]).
    pub fn turns(&self) -> crate::cluster::Turns {
        crate::cluster::Turns::Exclusive(self.pool.clone())
    }

    /// Work handed between the instances on this database (see [`crate::cluster`]).
    pub fn work_queue(&self) -> crate::cluster::WorkQueue {
        crate::cluster::WorkQueue::new(self.pool.clone())
    }

    /// The presence changes saved on this database, as they happen (see [`crate::feed`]).
    pub fn presence_feed(&self) -> crate::feed::PresenceFeed {
        crate::feed::PresenceFeed::new(self.pool.clone())
    }

    /// The shard leases of one instance on this database (see [`crate::cluster`]); they keep
    /// `fence` (which names the instance) equal to what they hold.
    pub fn leases(
        &self,
        fence: crate::cluster::Fence,
        name: String,
        lease: jiff::SignedDuration,
        now: jiff::Timestamp,
    ) -> crate::cluster::Leases {
        crate::cluster::Leases::new(self.pool.clone(), fence, name, lease, now)
    }

    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Waits for running operations and closes every connection. The store answers nothing
    /// after this.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// How many values the database holds sealed with a key (named secrets and webhook
    /// `clientState`s): a start without the key file must not make a new key then.
    pub async fn count_sealed(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(crate::codec::COUNT_SEALED)
            .fetch_one(&self.pool)
            .await
            .map_err(|source| StoreError::database("count sealed values".to_string(), source))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

async fn migrate(
    connection: &mut PgConnection,
    location: &StoreLocation,
) -> Result<(), StoreError> {
    let open_error = |source| StoreError::Open {
        location: Box::new(location.clone()),
        source,
    };
    let supported = latest_version(migrations::POSTGRES);
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *connection)
        .await
        .map_err(open_error)?;
    if has_table {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut *connection)
                .await
                .map_err(open_error)?;
        if let Some(found) = found.filter(|found| *found > supported) {
            return Err(StoreError::SchemaTooNew {
                location: Box::new(location.clone()),
                found,
                supported,
            });
        }
    }
    let migrate_error = |source| StoreError::Migrate {
        location: Box::new(location.clone()),
        source,
    };
    let migrator = Migrator::new(EmbeddedMigrations(migrations::POSTGRES))
        .await
        .map_err(migrate_error)?;
    migrator.run(connection).await.map_err(migrate_error)
}

/// Splits `items` into consecutive runs in which no key appears twice, keeping their order:
/// one statement per run then writes the whole batch as separate calls would.
fn runs_without_repeats<'a, T, K: Eq + Hash>(
    items: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a [T]> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut seen = std::collections::HashSet::new();
    for (index, item) in items.iter().enumerate() {
        if !seen.insert(key(item)) {
            runs.push(&items[start..index]);
            start = index;
            seen.clear();
            seen.insert(key(item));
        }
    }
    if start < items.len() {
        runs.push(&items[start..]);
    }
    runs
}

/// A person's id, read without a lock.
async fn person_id<'e>(
    executor: impl PgExecutor<'e>,
    key: &PersonKey,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM people WHERE source_id = $1 AND address = $2")
        .bind(&key.source.0)
        .bind(key.address.as_str())
        .fetch_optional(executor)
        .await
}

/// The people ids of `keys`, in the same order, locked until the transaction ends;
/// `PersonNotFound` names the first key that is not stored.
async fn lock_person_ids<'k>(
    connection: &mut PgConnection,
    keys: impl Iterator<Item = &'k PersonKey>,
    operation: &'static str,
) -> Result<Vec<i64>, StoreError> {
    let keys: Vec<&PersonKey> = keys.collect();
    let sources: Vec<&str> = keys.iter().map(|key| key.source.0.as_str()).collect();
    let addresses: Vec<&str> = keys.iter().map(|key| key.address.as_str()).collect();
    // Locked in id order, so that two transactions that lock the same people cannot wait for
    // each other.
    let rows: Vec<PgRow> = sqlx::query(
        "SELECT w.position, p.id \
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS w (source_id, address, position) \
         JOIN people p ON p.source_id = w.source_id AND p.address = w.address \
         ORDER BY p.id FOR NO KEY UPDATE OF p",
    )
    .bind(&sources)
    .bind(&addresses)
    .fetch_all(&mut *connection)
    .await
    .map_err(|source| match keys.as_slice() {
        [key] => StoreError::database(format!("{operation} for {key}"), source),
        _ => StoreError::database(format!("{operation} for {} people", keys.len()), source),
    })?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let what = || "a person's id".to_string();
        // WITH ORDINALITY counts from 1.
        let position: i64 = row.column("position", &what)?;
        let id: i64 = row.column("id", &what)?;
        if let Some(position) = usize::try_from(position)
            .ok()
            .and_then(|position| position.checked_sub(1))
        {
            found.insert(position, id);
        }
    }
    ids_in_order(&keys, &found, operation)
}

async fn lock_person_id(
    connection: &mut PgConnection,
    key: &PersonKey,
    operation: &'static str,
) -> Result<i64, StoreError> {
    let ids = lock_person_ids(connection, std::iter::once(key), operation).await?;
    // One id per key, or PersonNotFound above; the error here only keeps indexing out.
    ids.first()
        .copied()
        .ok_or_else(|| StoreError::PersonNotFound {
            operation,
            person: key.clone(),
        })
}

/// `upsert_person` for each of `people`, in order.
async fn write_people(
    connection: &mut PgConnection,
    people: &[PersonUpsert],
    now: i64,
) -> Result<(), StoreError> {
    for run in runs_without_repeats(people, |person| &person.key) {
        let sources: Vec<&str> = run.iter().map(|p| p.key.source.0.as_str()).collect();
        let addresses: Vec<&str> = run.iter().map(|p| p.key.address.as_str()).collect();
        let names: Vec<Option<&str>> = run.iter().map(|p| p.display_name.as_deref()).collect();
        let sip_uris: Vec<Option<&str>> = run.iter().map(|p| p.sip_uri.as_deref()).collect();
        // updated_at moves only when something changed, so it tells when the directory last
        // changed this person rather than when it was last re-read.
        sqlx::query(
            "INSERT INTO people (source_id, address, display_name, sip_uri, created_at, \
             updated_at) \
             SELECT u.source_id, u.address, u.display_name, u.sip_uri, $5, $5 \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
             AS u (source_id, address, display_name, sip_uri) \
             ON CONFLICT (source_id, address) DO UPDATE SET \
             display_name = excluded.display_name, sip_uri = excluded.sip_uri, \
             updated_at = excluded.updated_at \
             WHERE people.display_name IS DISTINCT FROM excluded.display_name \
             OR people.sip_uri IS DISTINCT FROM excluded.sip_uri",
        )
        .bind(&sources)
        .bind(&addresses)
        .bind(&names)
        .bind(&sip_uris)
        .bind(now)
        .execute(&mut *connection)
        .await
        .map_err(|source| {
            let what = match run {
                [person] => format!("upsert person {}", person.key),
                [first, ..] => format!("upsert {} people from {}", run.len(), first.key),
                [] => "upsert no people".to_string(),
            };
            StoreError::database(what, source)
        })?;
    }
    Ok(())
}

/// `mark_resolution` of each person, in order, at `now`.
async fn write_resolutions(
    connection: &mut PgConnection,
    resolutions: &[(PersonKey, Resolution)],
    now: i64,
) -> Result<(), StoreError> {
    let ids = lock_person_ids(
        &mut *connection,
        resolutions.iter().map(|(key, _)| key),
        "mark the resolution",
    )
    .await?;
    let rows: Vec<(i64, &PersonKey, &Resolution)> = ids
        .into_iter()
        .zip(resolutions)
        .map(|(id, (key, resolution))| (id, key, resolution))
        .collect();
    for run in runs_without_repeats(&rows, |(id, _, _)| *id) {
        let columns: Vec<_> = run
            .iter()
            .map(|(_, _, resolution)| resolution_columns(resolution))
            .collect();
        let ids: Vec<i64> = run.iter().map(|(id, _, _)| *id).collect();
        let states: Vec<&str> = columns.iter().map(|c| c.state).collect();
        let primary: Vec<Option<&str>> = columns.iter().map(|c| c.primary_smtp).collect();
        let user_ids: Vec<Option<&str>> = columns.iter().map(|c| c.source_user_id).collect();
        let errors: Vec<Option<&str>> = columns.iter().map(|c| c.error).collect();
        sqlx::query(
            "UPDATE people p SET resolution = u.state, primary_smtp = u.primary_smtp, \
             source_user_id = u.source_user_id, resolution_error = u.error, updated_at = $6 \
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) \
             AS u (id, state, primary_smtp, source_user_id, error) \
             WHERE p.id = u.id",
        )
        .bind(&ids)
        .bind(&states)
        .bind(&primary)
        .bind(&user_ids)
        .bind(&errors)
        .bind(now)
        .execute(&mut *connection)
        .await
        .map_err(|source| {
            let what = people_range("mark resolution", run[0].1, run[run.len() - 1].1);
            StoreError::database(what, source)
        })?;
    }
    Ok(())
}

/// The columns of many rows of `appointments`, one array per column, for `UNNEST`.
#[derive(Default)]
struct AppointmentArrays<'a> {
    person_ids: Vec<i64>,
    ids: Vec<&'a str>,
    start_at: Vec<Option<i64>>,
    end_at: Vec<Option<i64>>,
    first_day: Vec<Option<String>>,
    end_day: Vec<Option<String>>,
    show_as: Vec<&'static str>,
    sensitivity: Vec<&'static str>,
    subject: Vec<Option<&'a str>>,
    organizer: Vec<Option<&'a str>>,
    status: Vec<&'static str>,
}

impl<'a> AppointmentArrays<'a> {
    fn push(&mut self, person_id: i64, appointment: &'a Appointment) {
        let row = AppointmentRow::of(appointment);
        self.person_ids.push(person_id);
        self.ids.push(row.id);
        self.start_at.push(row.start_at);
        self.end_at.push(row.end_at);
        self.first_day.push(row.first_day);
        self.end_day.push(row.end_day);
        self.show_as.push(row.show_as);
        self.sensitivity.push(row.sensitivity);
        self.subject.push(row.subject);
        self.organizer.push(row.organizer);
        self.status.push(row.status);
    }

    fn is_empty(&self) -> bool {
        self.person_ids.is_empty()
    }

    /// Binds the 11 arrays of `INSERT_APPOINTMENTS`, in its order.
    fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.person_ids)
            .bind(&self.ids)
            .bind(&self.start_at)
            .bind(&self.end_at)
            .bind(&self.first_day)
            .bind(&self.end_day)
            .bind(&self.show_as)
            .bind(&self.sensitivity)
            .bind(&self.subject)
            .bind(&self.organizer)
            .bind(&self.status)
    }
}

/// `replace_appointments` for each of `windows`, in order, inside the caller's transaction.
///
/// When every person appears once, one DELETE, one INSERT and one window upsert write the
/// whole batch. A person listed twice falls back to one replacement per element, so that the
/// later window replaces the earlier exactly as separate calls would.
async fn write_windows(
    connection: &mut PgConnection,
    windows: &[WindowReplacement],
) -> Result<(), StoreError> {
    let ids = lock_person_ids(
        &mut *connection,
        windows.iter().map(|window| &window.key),
        "replace the appointments",
    )
    .await?;
    if has_repeats(&ids) {
        for (id, window) in ids.iter().zip(windows) {
            write_window_rows(&mut *connection, &[*id], std::slice::from_ref(window)).await?;
        }
        return Ok(());
    }
    write_window_rows(connection, &ids, windows).await
}

/// The statements of `write_windows` for people that each appear once.
async fn write_window_rows(
    connection: &mut PgConnection,
    ids: &[i64],
    windows: &[WindowReplacement],
) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (windows.first(), windows.last()) else {
        return Ok(());
    };
    let failed = |source| {
        StoreError::database(
            people_range("replace appointments", &first.key, &last.key),
            source,
        )
    };
    sqlx::query("DELETE FROM appointments WHERE person_id = ANY($1)")
        .bind(ids)
        .execute(&mut *connection)
        .await
        .map_err(failed)?;
    // A plain INSERT, not an upsert: a full read that lists one id twice is a source bug,
    // and failing the whole replacement keeps the previous, consistent window.
    let mut rows = AppointmentArrays::default();
    for (id, window) in ids.iter().zip(windows) {
        for appointment in &window.appointments {
            rows.push(*id, appointment);
        }
    }
    if !rows.is_empty() {
        rows.bind(sqlx::query(INSERT_APPOINTMENTS))
            .execute(&mut *connection)
            .await
            .map_err(failed)?;
    }
    let starts: Vec<i64> = windows.iter().map(|w| w.window_start.as_second()).collect();
    let ends: Vec<i64> = windows.iter().map(|w| w.window_end.as_second()).collect();
    sqlx::query(
        "INSERT INTO sync_state (person_id, window_start, window_end) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) \
         ON CONFLICT (person_id) DO UPDATE SET \
         window_start = excluded.window_start, window_end = excluded.window_end",
    )
    .bind(ids)
    .bind(&starts)
    .bind(&ends)
    .execute(&mut *connection)
    .await
    .map_err(failed)?;
    Ok(())
}

/// `set_sync_state` for each row (person id, key, state, sealed `client_state`), in order.
async fn write_sync_states(
    connection: &mut PgConnection,
    rows: &[(i64, &PersonKey, &SyncState, Option<Vec<u8>>)],
) -> Result<(), StoreError> {
    for run in runs_without_repeats(rows, |(id, _, _, _)| *id) {
        let ids: Vec<i64> = run.iter().map(|(id, _, _, _)| *id).collect();
        let states: Vec<&SyncState> = run.iter().map(|(_, _, state, _)| *state).collect();
        let delta_links: Vec<Option<&str>> =
            states.iter().map(|s| s.delta_link.as_deref()).collect();
        let subscription_ids: Vec<Option<&str>> = states
            .iter()
            .map(|s| s.subscription_id.as_deref())
            .collect();
        let expires: Vec<Option<i64>> = states
            .iter()
            .map(|s| opt_seconds(s.subscription_expires_at))
            .collect();
        let sealed: Vec<Option<&[u8]>> = run
            .iter()
            .map(|(_, _, _, sealed)| sealed.as_deref())
            .collect();
        let full_syncs: Vec<Option<i64>> = states
            .iter()
            .map(|s| opt_seconds(s.last_full_sync_at))
            .collect();
        let deltas: Vec<Option<i64>> = states
            .iter()
            .map(|s| opt_seconds(s.last_delta_at))
            .collect();
        let errors: Vec<Option<&str>> = states
            .iter()
            .map(|s| s.last_error.as_ref().map(|error| error.message.as_str()))
            .collect();
        let error_ats: Vec<Option<i64>> = states
            .iter()
            .map(|s| s.last_error.as_ref().map(|error| error.at.as_second()))
            .collect();
        let failures: Vec<i64> = states
            .iter()
            .map(|s| i64::from(s.consecutive_failures))
            .collect();
        sqlx::query(
            "INSERT INTO sync_state (person_id, delta_link, subscription_id, \
             subscription_expires_at, client_state_sealed, last_full_sync_at, last_delta_at, \
             last_error, last_error_at, consecutive_failures) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], \
             $5::bytea[], $6::bigint[], $7::bigint[], $8::text[], $9::bigint[], $10::bigint[]) \
             ON CONFLICT (person_id) DO UPDATE SET \
             delta_link = excluded.delta_link, subscription_id = excluded.subscription_id, \
             subscription_expires_at = excluded.subscription_expires_at, \
             client_state_sealed = excluded.client_state_sealed, \
             last_full_sync_at = excluded.last_full_sync_at, \
             last_delta_at = excluded.last_delta_at, last_error = excluded.last_error, \
             last_error_at = excluded.last_error_at, \
             consecutive_failures = excluded.consecutive_failures",
        )
        .bind(&ids)
        .bind(&delta_links)
        .bind(&subscription_ids)
        .bind(&expires)
        .bind(&sealed)
        .bind(&full_syncs)
        .bind(&deltas)
        .bind(&errors)
        .bind(&error_ats)
        .bind(&failures)
        .execute(&mut *connection)
        .await
        .map_err(|source| {
            let what = match run {
                [(_, key, _, _)] => format!("save sync state of {key}"),
                [(_, first, _, _), ..] => {
                    format!("save the sync states of {} people from {first}", run.len())
                }
                [] => "save no sync state".to_string(),
            };
            StoreError::database(what, source)
        })?;
    }
    Ok(())
}

/// `save_presence` for each row (person id, key, presence), in order.
async fn write_presences(
    connection: &mut PgConnection,
    rows: &[(i64, &PersonKey, &CurrentPresence)],
) -> Result<(), StoreError> {
    for run in runs_without_repeats(rows, |(id, _, _)| *id) {
        let ids: Vec<i64> = run.iter().map(|(id, _, _)| *id).collect();
        let presences: Vec<&CurrentPresence> = run.iter().map(|(_, _, p)| *p).collect();
        let activities: Vec<&str> = presences.iter().map(|p| p.activity.as_str()).collect();
        let notes: Vec<Option<&str>> = presences.iter().map(|p| p.note.as_deref()).collect();
        let untils: Vec<Option<i64>> = presences.iter().map(|p| opt_seconds(p.until)).collect();
        let whys: Vec<&str> = presences.iter().map(|p| p.why.as_str()).collect();
        let next_changes: Vec<Option<i64>> = presences
            .iter()
            .map(|p| opt_seconds(p.next_change_at))
            .collect();
        let decided: Vec<i64> = presences.iter().map(|p| p.decided_at.as_second()).collect();
        let fingerprints: Vec<Option<&str>> = presences
            .iter()
            .map(|p| p.published_fingerprint.as_deref())
            .collect();
        sqlx::query(
            "INSERT INTO presence (person_id, activity, note, until_at, why, next_change_at, \
             decided_at, published_fingerprint) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], \
             $5::text[], $6::bigint[], $7::bigint[], $8::text[]) \
             ON CONFLICT (person_id) DO UPDATE SET \
             activity = excluded.activity, note = excluded.note, until_at = excluded.until_at, \
             why = excluded.why, next_change_at = excluded.next_change_at, \
             decided_at = excluded.decided_at, \
             published_fingerprint = excluded.published_fingerprint",
        )
        .bind(&ids)
        .bind(&activities)
        .bind(&notes)
        .bind(&untils)
        .bind(&whys)
        .bind(&next_changes)
        .bind(&decided)
        .bind(&fingerprints)
        .execute(&mut *connection)
        .await
        .map_err(|source| {
            let what = match run {
                [(_, key, _)] => format!("save presence of {key}"),
                [(_, first, _), ..] => {
                    format!("save the presences of {} people from {first}", run.len())
                }
                [] => "save no presence".to_string(),
            };
            StoreError::database(what, source)
        })?;
    }
    Ok(())
}

impl PostgresStore {
    /// A transaction; dropping it without [`commit`] rolls it back.
    /// A room meeting's record: with `claim`, only where the meeting has none or a failed
    /// release (answering whether it wrote); otherwise whatever it held. Drops the records of
    /// meetings that ended a week before this one.
    async fn write_room_meeting(
        &self,
        key: &PersonKey,
        record: &crate::RoomCheckIn,
        claim: bool,
    ) -> Result<bool, StoreError> {
        let operation = || format!("record a room meeting of {key}");
        let failed = |error| StoreError::database(operation(), error);
        let mut tx = self.begin(&operation).await?;
        let person = lock_person_id(&mut tx, key, "record a room meeting").await?;
        let condition = if claim {
            "WHERE room_check_ins.state = 'release_failed'"
        } else {
            ""
        };
        let written = sqlx::query(&format!(
            "INSERT INTO room_check_ins (person_id, appointment_id, meeting_start, meeting_end, \
             state, at, detail) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (person_id, appointment_id, meeting_start) DO UPDATE SET \
             meeting_end = EXCLUDED.meeting_end, state = EXCLUDED.state, at = EXCLUDED.at, \
             detail = EXCLUDED.detail {condition}"
        ))
        .bind(person)
        .bind(&record.appointment_id)
        .bind(record.meeting_start.as_second())
        .bind(record.meeting_end.as_second())
        .bind(record.state.as_str())
        .bind(record.at.as_second())
        .bind(&record.detail)
        .execute(&mut *tx)
        .await
        .map_err(failed)?
        .rows_affected();
        sqlx::query("DELETE FROM room_check_ins WHERE meeting_end < $1")
            .bind(record.meeting_end.as_second() - crate::codec::ROOM_CHECK_INS_KEPT_SECONDS)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        commit(tx, &operation).await?;
        Ok(written > 0)
    }

    async fn begin(
        &self,
        operation: &(dyn Fn() -> String + Sync),
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool
            .begin()
            .await
            .map_err(|source| StoreError::database(operation(), source))
    }
}

async fn commit(
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    operation: &(dyn Fn() -> String + Sync),
) -> Result<(), StoreError> {
    tx.commit()
        .await
        .map_err(|source| StoreError::database(operation(), source))
}

#[async_trait]
impl Store for PostgresStore {
    async fn upsert_person(&self, person: &PersonUpsert) -> Result<(), StoreError> {
        self.upsert_people(std::slice::from_ref(person)).await
    }

    async fn upsert_people(&self, people: &[PersonUpsert]) -> Result<(), StoreError> {
        if people.is_empty() {
            return Ok(());
        }
        let operation = || match people {
            [person] => format!("upsert person {}", person.key),
            _ => format!("upsert {} people", people.len()),
        };
        let mut tx = self.begin(&operation).await?;
        write_people(&mut tx, people, Timestamp::now().as_second()).await?;
        commit(tx, &operation).await
    }

    async fn set_rooms(
        &self,
        source: &SourceId,
        rooms: &[calbridge_domain::RoomInfo],
    ) -> Result<(), StoreError> {
        let operation = || format!("set the rooms of source {source}");
        let failed = |error| StoreError::database(operation(), error);
        let mut tx = self.begin(&operation).await?;
        sqlx::query(
            "DELETE FROM rooms WHERE person_id IN (SELECT id FROM people WHERE source_id = $1)",
        )
        .bind(&source.0)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        let now = Timestamp::now().as_second();
        for room in rooms {
            sqlx::query(
                "INSERT INTO rooms (person_id, capacity, building, floor_number, floor_label, \
                 room_list, bookable, updated_at) \
                 SELECT id, $1, $2, $3, $4, $5, $6, $7 FROM people \
                 WHERE source_id = $8 AND address = $9 \
                 ON CONFLICT (person_id) DO UPDATE SET capacity = EXCLUDED.capacity, \
                 building = EXCLUDED.building, floor_number = EXCLUDED.floor_number, \
                 floor_label = EXCLUDED.floor_label, room_list = EXCLUDED.room_list, \
                 bookable = EXCLUDED.bookable, updated_at = EXCLUDED.updated_at",
            )
            .bind(room.capacity.map(i64::from))
            .bind(&room.building)
            .bind(room.floor_number.map(i64::from))
            .bind(&room.floor_label)
            .bind(&room.room_list)
            .bind(room.bookable)
            .bind(now)
            .bind(&source.0)
            .bind(room.address.as_str())
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        commit(tx, &operation).await
    }

    async fn claim_room_meeting(
        &self,
        key: &PersonKey,
        record: &crate::RoomCheckIn,
    ) -> Result<bool, StoreError> {
        self.write_room_meeting(key, record, true).await
    }

    async fn set_room_meeting(
        &self,
        key: &PersonKey,
        record: &crate::RoomCheckIn,
    ) -> Result<(), StoreError> {
        self.write_room_meeting(key, record, false).await.map(drop)
    }

    async fn list_room_meetings(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(PersonKey, crate::RoomCheckIn)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM room_check_ins c JOIN people p ON p.id = c.person_id \
             WHERE c.meeting_end > $1 ORDER BY c.meeting_start, p.source_id, p.address",
            crate::codec::ROOM_CHECK_IN_COLUMNS
        ))
        .bind(since.as_second())
        .fetch_all(&self.pool)
        .await
        .map_err(|error| StoreError::database("list room meetings".to_string(), error))?;
        rows.iter()
            .map(crate::codec::decode_room_check_in)
            .collect()
    }

    async fn list_rooms_with_appointments(
        &self,
    ) -> Result<Vec<(PersonKey, calbridge_domain::RoomInfo, Vec<Appointment>)>, StoreError> {
        // One row per room with its appointments packed as in `load_all_appointments`.
        let rows = sqlx::query(
            "SELECT p.source_id, p.address, p.display_name, r.capacity, r.building, \
             r.floor_number, r.floor_label, r.room_list, r.bookable, \
             COALESCE((SELECT json_agg(json_build_array(a.appointment_id, a.start_at, a.end_at, \
                     to_char(a.first_day, 'YYYY-MM-DD'), to_char(a.end_day, 'YYYY-MM-DD'), \
                     a.show_as, a.sensitivity, a.subject, a.organizer, a.status)) \
              FROM appointments a WHERE a.person_id = p.id), '[]'::json)::text AS appointments \
             FROM rooms r JOIN people p ON p.id = r.person_id ORDER BY p.source_id, p.address",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|error| StoreError::database("list rooms with appointments".to_string(), error))?;
        rows.iter()
            .map(|row| {
                let bookable: bool = row.column("bookable", &|| "a room".to_string())?;
                let (key, room) = crate::codec::decode_room(row, bookable)?;
                let json: String =
                    row.column("appointments", &|| format!("appointments of room {key}"))?;
                let appointments = decode_appointment_list(&json, &key)?;
                Ok((key, room, appointments))
            })
            .collect()
    }

    async fn list_rooms(&self) -> Result<Vec<(PersonKey, calbridge_domain::RoomInfo)>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.source_id, p.address, p.display_name, r.capacity, r.building, \
             r.floor_number, r.floor_label, r.room_list, r.bookable \
             FROM rooms r JOIN people p ON p.id = r.person_id ORDER BY p.source_id, p.address",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|error| StoreError::database("list rooms".to_string(), error))?;
        rows.iter()
            .map(|row| {
                let bookable: bool = row.column("bookable", &|| "a room".to_string())?;
                crate::codec::decode_room(row, bookable)
            })
            .collect()
    }

    async fn get_person(&self, key: &PersonKey) -> Result<Option<Person>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {PERSON_COLUMNS} FROM people p WHERE p.source_id = $1 AND p.address = $2"
        ))
        .bind(&key.source.0)
        .bind(key.address.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| StoreError::database(format!("read person {key}"), source))?;
        row.as_ref().map(decode_person).transpose()
    }

    async fn list_people(&self) -> Result<Vec<Person>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {PERSON_COLUMNS} FROM people p ORDER BY p.source_id, p.address"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::database("list people".to_string(), source))?;
        rows.iter().map(decode_person).collect()
    }

    async fn list_people_of_source(&self, source: &SourceId) -> Result<Vec<Person>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {PERSON_COLUMNS} FROM people p WHERE p.source_id = $1 ORDER BY p.address"
        ))
        .bind(&source.0)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| StoreError::database(format!("list people of source {source}"), error))?;
        rows.iter().map(decode_person).collect()
    }

    async fn remove_person(&self, key: &PersonKey) -> Result<Removal, StoreError> {
        // Appointments, sync state and presence go with the person through ON DELETE CASCADE.
        let result = sqlx::query("DELETE FROM people WHERE source_id = $1 AND address = $2")
            .bind(&key.source.0)
            .bind(key.address.as_str())
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::database(format!("remove person {key}"), source))?;
        Ok(if result.rows_affected() == 0 {
            Removal::NotFound
        } else {
            Removal::Removed
        })
    }

    async fn mark_resolution(
        &self,
        key: &PersonKey,
        resolution: &Resolution,
    ) -> Result<(), StoreError> {
        self.mark_resolutions(&[(key.clone(), resolution.clone())])
            .await
    }

    async fn mark_resolutions(
        &self,
        resolutions: &[(PersonKey, Resolution)],
    ) -> Result<(), StoreError> {
        if resolutions.is_empty() {
            return Ok(());
        }
        let operation = || match resolutions {
            [(key, _)] => format!("mark resolution of {key}"),
            _ => format!("mark the resolutions of {} people", resolutions.len()),
        };
        let mut tx = self.begin(&operation).await?;
        write_resolutions(&mut tx, resolutions, Timestamp::now().as_second()).await?;
        commit(tx, &operation).await
    }

    async fn replace_appointments(
        &self,
        key: &PersonKey,
        window_start: Timestamp,
        window_end: Timestamp,
        appointments: Vec<Appointment>,
    ) -> Result<(), StoreError> {
        self.replace_appointments_many(vec![WindowReplacement {
            key: key.clone(),
            window_start,
            window_end,
            appointments,
        }])
        .await
    }

    async fn replace_appointments_many(
        &self,
        windows: Vec<WindowReplacement>,
    ) -> Result<(), StoreError> {
        if windows.is_empty() {
            return Ok(());
        }
        let operation = || match windows.as_slice() {
            [window] => format!("replace appointments of {}", window.key),
            _ => format!("replace the appointments of {} people", windows.len()),
        };
        let mut tx = self.begin(&operation).await?;
        self.check_fence(&mut tx, windows.iter().map(|window| &window.key))
            .await?;
        write_windows(&mut tx, &windows).await?;
        commit(tx, &operation).await
    }

    async fn apply_appointment_changes(
        &self,
        key: &PersonKey,
        upserts: Vec<Appointment>,
        removed_ids: Vec<String>,
    ) -> Result<(), StoreError> {
        let operation = || format!("apply appointment changes of {key}");
        let failed = |source| StoreError::database(operation(), source);
        let mut tx = self.begin(&operation).await?;
        self.check_fence(&mut tx, [key]).await?;
        let person_id = lock_person_id(&mut tx, key, "apply appointment changes").await?;
        // Upserted in order; an id listed twice ends as its later entry.
        for run in runs_without_repeats(&upserts, |appointment| &appointment.id) {
            let mut rows = AppointmentArrays::default();
            for appointment in run {
                rows.push(person_id, appointment);
            }
            rows.bind(sqlx::query(&format!(
                "{INSERT_APPOINTMENTS} {UPSERT_APPOINTMENTS_SUFFIX}"
            )))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        if !removed_ids.is_empty() {
            sqlx::query(
                "DELETE FROM appointments WHERE person_id = $1 AND appointment_id = ANY($2)",
            )
            .bind(person_id)
            .bind(&removed_ids)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        commit(tx, &operation).await
    }

    async fn load_appointments(&self, key: &PersonKey) -> Result<Vec<Appointment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {APPOINTMENT_COLUMNS} FROM appointments a \
             JOIN people p ON p.id = a.person_id \
             WHERE p.source_id = $1 AND p.address = $2 ORDER BY a.appointment_id"
        ))
        .bind(&key.source.0)
        .bind(key.address.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::database(format!("load appointments of {key}"), source))?;
        rows.iter()
            .map(|row| decode_appointment(row, key))
            .collect()
    }

    async fn load_all_appointments(
        &self,
    ) -> Result<HashMap<PersonKey, Vec<Appointment>>, StoreError> {
        // One row per person with the appointments packed into a JSON array, as in SQLite: the
        // cost per row of the driver, not of the data, dominates a start-up read of 100,000
        // appointments.
        let rows = sqlx::query(
            "SELECT p.source_id, p.address, \
             COALESCE((SELECT json_agg(json_build_array(a.appointment_id, a.start_at, a.end_at, \
                     to_char(a.first_day, 'YYYY-MM-DD'), to_char(a.end_day, 'YYYY-MM-DD'), \
                     a.show_as, a.sensitivity, a.subject, a.organizer, a.status)) \
              FROM appointments a WHERE a.person_id = p.id), '[]'::json)::text AS appointments \
             FROM people p",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::database("load all appointments".to_string(), source))?;
        let mut by_person = HashMap::with_capacity(rows.len());
        for row in &rows {
            let key = decode_person_key(row, "source_id", "address")?;
            let json: String = row.column("appointments", &|| format!("appointments of {key}"))?;
            let appointments = decode_appointment_list(&json, &key)?;
            by_person.insert(key, appointments);
        }
        Ok(by_person)
    }

    async fn get_sync_state(&self, key: &PersonKey) -> Result<SyncState, StoreError> {
        let failed = |source| StoreError::database(format!("read sync state of {key}"), source);
        let person_id = person_id(&self.pool, key)
            .await
            .map_err(failed)?
            .ok_or_else(|| StoreError::PersonNotFound {
                operation: "read the sync state",
                person: key.clone(),
            })?;
        let Some(row) = sqlx::query(
            "SELECT delta_link, subscription_id, subscription_expires_at, client_state_sealed, \
             last_full_sync_at, last_delta_at, last_error, last_error_at, consecutive_failures, \
             window_start, window_end FROM sync_state WHERE person_id = $1",
        )
        .bind(person_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(failed)?
        else {
            return Ok(SyncState::default());
        };
        decode_sync_state(&row, key, &self.key)
    }

    async fn sync_states_of_source(
        &self,
        source: &SourceId,
    ) -> Result<HashMap<PersonKey, SyncState>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.source_id, p.address, s.delta_link, s.subscription_id, \
             s.subscription_expires_at, s.client_state_sealed, s.last_full_sync_at, \
             s.last_delta_at, s.last_error, s.last_error_at, s.consecutive_failures, \
             s.window_start, s.window_end \
             FROM sync_state s JOIN people p ON p.id = s.person_id WHERE p.source_id = $1",
        )
        .bind(&source.0)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| {
            StoreError::database(format!("read the sync states of source {source}"), error)
        })?;
        let mut states = HashMap::with_capacity(rows.len());
        for row in &rows {
            let key = decode_person_key(row, "source_id", "address")?;
            let state = decode_sync_state(row, &key, &self.key)?;
            states.insert(key, state);
        }
        Ok(states)
    }

    async fn person_with_subscription(
        &self,
        source: &SourceId,
        subscription_id: &str,
    ) -> Result<Option<PersonKey>, StoreError> {
        let row = sqlx::query(
            "SELECT p.source_id, p.address FROM sync_state s JOIN people p ON p.id = s.person_id \
             WHERE p.source_id = $1 AND s.subscription_id = $2",
        )
        .bind(&source.0)
        .bind(subscription_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| {
            StoreError::database(
                format!("find the person of subscription {subscription_id}"),
                error,
            )
        })?;
        row.as_ref()
            .map(|row| decode_person_key(row, "source_id", "address"))
            .transpose()
    }

    async fn set_sync_state(&self, key: &PersonKey, state: &SyncState) -> Result<(), StoreError> {
        self.set_sync_states(&[(key.clone(), state.clone())]).await
    }

    async fn set_sync_states(&self, states: &[(PersonKey, SyncState)]) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        // Sealed before the transaction, so that no row stays locked while encrypting.
        let sealed = states
            .iter()
            .map(|(key, state)| seal_client_state(&self.key, key, state))
            .collect::<Result<Vec<_>, _>>()?;
        let operation = || match states {
            [(key, _)] => format!("save sync state of {key}"),
            _ => format!("save the sync states of {} people", states.len()),
        };
        let mut tx = self.begin(&operation).await?;
        self.check_fence(&mut tx, states.iter().map(|(key, _)| key))
            .await?;
        let ids = lock_person_ids(
            &mut tx,
            states.iter().map(|(key, _)| key),
            "save the sync state",
        )
        .await?;
        let rows: Vec<_> = ids
            .into_iter()
            .zip(states)
            .zip(sealed)
            .map(|((id, (key, state)), sealed)| (id, key, state, sealed))
            .collect();
        write_sync_states(&mut tx, &rows).await?;
        commit(tx, &operation).await
    }

    async fn get_source_state(&self, source: &SourceId) -> Result<SourceState, StoreError> {
        let row = sqlx::query(
            "SELECT token_status, token_error, token_checked_at, \
             to_char(secret_expires_on, 'YYYY-MM-DD') AS secret_expires_on, \
             last_throttled_at, n_requests, n_throttled, n_failures \
             FROM source_state WHERE source_id = $1",
        )
        .bind(&source.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| StoreError::database(format!("read state of source {source}"), error))?;
        match row {
            Some(row) => decode_source_state(&row, source),
            None => Ok(SourceState::default()),
        }
    }

    async fn set_source_state(
        &self,
        source: &SourceId,
        state: &SourceState,
    ) -> Result<(), StoreError> {
        let (token_status, token_error) = token_columns(&state.token);
        sqlx::query(
            "INSERT INTO source_state (source_id, token_status, token_error, token_checked_at, \
             secret_expires_on, last_throttled_at, n_requests, n_throttled, n_failures, \
             updated_at) VALUES ($1, $2, $3, $4, $5::text::date, $6, $7, $8, $9, $10) \
             ON CONFLICT (source_id) DO UPDATE SET \
             token_status = excluded.token_status, token_error = excluded.token_error, \
             token_checked_at = excluded.token_checked_at, \
             secret_expires_on = excluded.secret_expires_on, \
             last_throttled_at = excluded.last_throttled_at, n_requests = excluded.n_requests, \
             n_throttled = excluded.n_throttled, n_failures = excluded.n_failures, \
             updated_at = excluded.updated_at",
        )
        .bind(&source.0)
        .bind(token_status)
        .bind(token_error)
        .bind(opt_seconds(state.token_checked_at))
        .bind(state.secret_expires_on.map(|date| date.to_string()))
        .bind(opt_seconds(state.last_throttled_at))
        .bind(count_to_i64(state.counters.n_requests))
        .bind(count_to_i64(state.counters.n_throttled))
        .bind(count_to_i64(state.counters.n_failures))
        .bind(Timestamp::now().as_second())
        .execute(&self.pool)
        .await
        .map_err(|error| StoreError::database(format!("save state of source {source}"), error))?;
        Ok(())
    }

    async fn save_presence(
        &self,
        key: &PersonKey,
        presence: &CurrentPresence,
    ) -> Result<(), StoreError> {
        self.save_presences(&[(key.clone(), presence.clone())])
            .await
    }

    async fn save_presences(
        &self,
        presences: &[(PersonKey, CurrentPresence)],
    ) -> Result<(), StoreError> {
        if presences.is_empty() {
            return Ok(());
        }
        let operation = || match presences {
            [(key, _)] => format!("save presence of {key}"),
            _ => format!("save the presences of {} people", presences.len()),
        };
        let mut tx = self.begin(&operation).await?;
        self.check_fence(&mut tx, presences.iter().map(|(key, _)| key))
            .await?;
        let ids = lock_person_ids(
            &mut tx,
            presences.iter().map(|(key, _)| key),
            "save the presence",
        )
        .await?;
        let rows: Vec<_> = ids
            .into_iter()
            .zip(presences)
            .map(|(id, (key, presence))| (id, key, presence))
            .collect();
        write_presences(&mut tx, &rows).await?;
        commit(tx, &operation).await
    }

    async fn load_presence(&self, key: &PersonKey) -> Result<Option<CurrentPresence>, StoreError> {
        let row = sqlx::query(
            "SELECT r.activity, r.note, r.until_at, r.why, r.next_change_at, r.decided_at, \
             r.published_fingerprint FROM presence r JOIN people p ON p.id = r.person_id \
             WHERE p.source_id = $1 AND p.address = $2",
        )
        .bind(&key.source.0)
        .bind(key.address.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| StoreError::database(format!("load presence of {key}"), source))?;
        row.map(|row| decode_presence(&row, key)).transpose()
    }

    async fn list_presence(&self) -> Result<Vec<(PersonKey, CurrentPresence)>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.source_id, p.address, r.activity, r.note, r.until_at, r.why, \
             r.next_change_at, r.decided_at, r.published_fingerprint \
             FROM presence r JOIN people p ON p.id = r.person_id \
             ORDER BY p.source_id, p.address",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::database("list presence".to_string(), source))?;
        rows.iter()
            .map(|row| {
                let key = decode_person_key(row, "source_id", "address")?;
                let presence = decode_presence(row, &key)?;
                Ok((key, presence))
            })
            .collect()
    }

    async fn put_secret(&self, name: &str, secret: &Secret) -> Result<(), StoreError> {
        let sealed = seal_named_secret(&self.key, name, secret)?;
        sqlx::query(
            "INSERT INTO secrets (name, sealed, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, \
             updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(sealed)
        .bind(Timestamp::now().as_second())
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::database(format!("save secret {name}"), source))?;
        Ok(())
    }

    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        let sealed: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT sealed FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| StoreError::database(format!("read secret {name}"), source))?;
        sealed
            .map(|sealed| open_named_secret(&self.key, name, &sealed))
            .transpose()
    }

    async fn append_outbox(&self, event: &NewOutboxEvent) -> Result<OutboxId, StoreError> {
        let operation = || format!("append {} event to the outbox", event.topic);
        let failed = |source| StoreError::database(operation(), source);
        let mut tx = self.begin(&operation).await?;
        // Appenders take turns until they commit, so that ids become visible in their order:
        // a reader that saw id N never later finds an N-1 it skipped. EXCLUSIVE leaves reads
        // of the outbox free.
        sqlx::query("LOCK TABLE outbox IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (topic, person_source, person_address, payload, created_at) \
             VALUES ($1, $2, $3, $4::text::json, $5) RETURNING id",
        )
        .bind(&event.topic)
        .bind(event.person.as_ref().map(|person| person.source.0.as_str()))
        .bind(event.person.as_ref().map(|person| person.address.as_str()))
        .bind(event.payload.to_string())
        .bind(event.created_at.as_second())
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
        commit(tx, &operation).await?;
        Ok(OutboxId(id))
    }

    async fn read_outbox_after(
        &self,
        after: OutboxId,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, topic, person_source, person_address, payload::text AS payload, \
             created_at FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after.0)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|source| {
            StoreError::database(format!("read the outbox after event {}", after.0), source)
        })?;
        rows.iter().map(decode_outbox_event).collect()
    }

    async fn get_outbox_cursor(&self, consumer: &str) -> Result<OutboxId, StoreError> {
        let last_id: Option<i64> =
            sqlx::query_scalar("SELECT last_id FROM outbox_cursors WHERE consumer = $1")
                .bind(consumer)
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| {
                    StoreError::database(format!("read the outbox cursor of {consumer}"), source)
                })?;
        Ok(OutboxId(last_id.unwrap_or(0)))
    }

    async fn set_outbox_cursor(&self, consumer: &str, cursor: OutboxId) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO outbox_cursors (consumer, last_id) VALUES ($1, $2) \
             ON CONFLICT (consumer) DO UPDATE SET last_id = excluded.last_id",
        )
        .bind(consumer)
        .bind(cursor.0)
        .execute(&self.pool)
        .await
        .map_err(|source| {
            StoreError::database(format!("save the outbox cursor of {consumer}"), source)
        })?;
        Ok(())
    }

    async fn save_sip_publications(
        &self,
        publications: &[SipPublication],
    ) -> Result<(), StoreError> {
        if publications.is_empty() {
            return Ok(());
        }
        let operation = || format!("save {} SIP publications", publications.len());
        let failed = |source| StoreError::database(operation(), source);
        let mut tx = self.begin(&operation).await?;
        for publication in publications {
            match &publication.etag {
                Some(etag) => sqlx::query(
                    "INSERT INTO sip_publications (uri, etag, expires_at_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (uri) DO UPDATE SET etag = excluded.etag, \
                     expires_at_ms = excluded.expires_at_ms",
                )
                .bind(&publication.uri)
                .bind(etag)
                .bind(publication.expires_at.as_millisecond()),
                None => sqlx::query("DELETE FROM sip_publications WHERE uri = $1")
                    .bind(&publication.uri),
            }
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        commit(tx, &operation).await
    }

    async fn load_sip_publication(&self, uri: &str) -> Result<Option<SipPublication>, StoreError> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT etag, expires_at_ms FROM sip_publications WHERE uri = $1")
                .bind(uri)
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| {
                    StoreError::database(format!("read the SIP publication of {uri}"), source)
                })?;
        row.map(|(etag, expires_at_ms)| sip_publication(uri.to_string(), etag, expires_at_ms))
            .transpose()
    }

    async fn list_sip_publications(
        &self,
        now: Timestamp,
    ) -> Result<Vec<SipPublication>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT uri, etag, expires_at_ms FROM sip_publications WHERE expires_at_ms > $1 ORDER BY uri",
        )
        .bind(now.as_millisecond())
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::database("list the SIP publications".into(), source))?;
        rows.into_iter()
            .map(|(uri, etag, expires_at_ms)| sip_publication(uri, etag, expires_at_ms))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::runs_without_repeats;

    #[test]
    fn a_batch_splits_where_a_key_repeats_and_keeps_its_order() {
        let items = ["a", "b", "a", "c", "b", "b"];
        let runs = runs_without_repeats(&items, |item| *item);
        assert_eq!(runs, vec![&["a", "b"][..], &["a", "c", "b"], &["b"]]);
        assert!(runs_without_repeats(&[] as &[&str], |item| *item).is_empty());
        assert_eq!(
            runs_without_repeats(&["x", "y"], |item| *item),
            vec![&["x", "y"][..]]
        );
    }
}
