//! The embedded SQLite implementation of [`Store`].

mod codec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use calbridge_domain::{Appointment, Secret, SourceId};
use jiff::Timestamp;
use sqlx::migrate::Migrator;
use sqlx::query::Query;
use sqlx::sqlite::{
    Sqlite, SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqliteExecutor};

use crate::error::{sqlite_primary_code, SQLITE_CORRUPT, SQLITE_NOTADB};
use crate::migrations::{latest_version, EmbeddedMigrations};
use crate::{
    AppointmentWindow, CurrentPresence, NewOutboxEvent, OutboxEvent, OutboxId, Person, PersonKey,
    PersonUpsert, Removal, Resolution, SecretKey, SourceState, Store, StoreError, SyncError,
    SyncState, TokenState, WindowReplacement,
};
use codec::{
    decode_appointment, decode_date, decode_person_key, decode_timestamp, encode_appointment,
    opt_seconds, sensitivity_text, show_as_text, status_text, AppointmentColumns,
};

/// How long a statement waits for another connection's write lock before failing with a
/// retryable "database is locked". Writes are short, so a few seconds only expire when
/// something is badly wrong (another process holding the file).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite serialises writers anyway; a few connections let readers (the API, the admin page)
/// run beside a writer in WAL mode without queueing behind it.
const MAX_CONNECTIONS: u32 = 4;

/// Write transactions take the write lock up front. A deferred transaction that reads and then
/// writes can fail at once with SQLITE_BUSY when another connection wrote in between, and the
/// busy timeout cannot help it; BEGIN IMMEDIATE waits for the lock instead.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

const APPOINTMENT_COLUMNS: &str = "a.appointment_id, a.start_at, a.end_at, a.first_day, \
     a.end_day, a.show_as, a.sensitivity, a.subject, a.organizer, a.status";

const PERSON_COLUMNS: &str = "p.source_id, p.address, p.display_name, p.sip_uri, \
     p.resolution, p.primary_smtp, p.source_user_id, p.resolution_error, p.created_at, p.updated_at";

const INSERT_APPOINTMENT_PREFIX: &str = "INSERT INTO appointments (person_id, appointment_id, \
     start_at, end_at, first_day, end_day, show_as, sensitivity, subject, organizer, status) \
     VALUES";

const APPOINTMENT_PLACEHOLDERS: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// 11 parameters per row: 100 rows stay far below SQLite's limit of 32,766 per statement.
const ROWS_PER_INSERT: usize = 100;

const UPSERT_WINDOW_PREFIX: &str =
    "INSERT INTO sync_state (person_id, window_start, window_end) VALUES";

const UPSERT_WINDOW_SUFFIX: &str = "ON CONFLICT (person_id) DO UPDATE SET \
     window_start = excluded.window_start, window_end = excluded.window_end";

const UPSERT_APPOINTMENT: &str = "INSERT INTO appointments (person_id, appointment_id, \
     start_at, end_at, first_day, end_day, show_as, sensitivity, subject, organizer, status) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (person_id, appointment_id) DO UPDATE SET \
     start_at = excluded.start_at, end_at = excluded.end_at, first_day = excluded.first_day, \
     end_day = excluded.end_day, show_as = excluded.show_as, \
     sensitivity = excluded.sensitivity, subject = excluded.subject, \
     organizer = excluded.organizer, status = excluded.status";

/// The SQLite store. Cheap to share: hold it in an `Arc<dyn Store>`.
pub struct SqliteStore {
    pool: SqlitePool,
    key: SecretKey,
    /// For error messages only.
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and brings its schema up to
    /// date. `key` seals and opens the secrets; it must be the same key on every start.
    pub async fn open(path: impl AsRef<Path>, key: SecretKey) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL rather than FULL: in WAL mode a commit then costs no fsync (only a
            // checkpoint does), and WAL still keeps the database consistent after a crash or
            // a power cut; at worst the last transactions are lost, and everything here can be
            // re-read from the source (Microsoft 365), which the next sync does anyway.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // 1 MiB of page cache per connection instead of SQLite's 2 MiB: the service keeps
            // what it needs in memory and reads the store per person, so a big cache only
            // raises the resident size (measured by `calbridge bench`).
            .pragma("cache_size", "-1024");
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|source| open_error(&path, source))?;
        Self::migrate(pool, key, path).await
    }

    /// A private database that lives as long as the store; for tests.
    pub async fn open_in_memory(key: SecretKey) -> Result<Self, StoreError> {
        let path = PathBuf::from(":memory:");
        let options = SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(true);
        // Every connection to ":memory:" is a different database, so the pool must hold
        // exactly one connection and never close it.
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|source| open_error(&path, source))?;
        Self::migrate(pool, key, path).await
    }

    /// Where the database lives (`:memory:` for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for running operations and closes every connection, so that the file is
    /// checkpointed and another process (or a reopen in a test) sees everything.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(pool: SqlitePool, key: SecretKey, path: PathBuf) -> Result<Self, StoreError> {
        let supported = latest_version();
        if let Some(found) = applied_version(&pool)
            .await
            .map_err(|source| open_error(&path, source))?
        {
            if found > supported {
                return Err(StoreError::SchemaTooNew {
                    path,
                    found,
                    supported,
                });
            }
        }
        let migrate_error = |source| StoreError::Migrate {
            path: path.clone(),
            source,
        };
        let migrator = Migrator::new(EmbeddedMigrations)
            .await
            .map_err(migrate_error)?;
        migrator.run(&pool).await.map_err(migrate_error)?;
        Ok(SqliteStore { pool, key, path })
    }

    /// The sealed `client_state` of `state`, as `set_sync_state` stores it.
    fn seal_client_state(
        &self,
        key: &PersonKey,
        state: &SyncState,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match &state.client_state {
            Some(secret) => {
                let (name, aad) = Self::client_state_names(key);
                Ok(Some(self.key.seal(
                    &name,
                    &aad,
                    secret.expose().as_bytes(),
                )?))
            }
            None => Ok(None),
        }
    }

    fn client_state_names(key: &PersonKey) -> (String, String) {
        let name = format!("client_state of {key}");
        // Length-prefixed so that no choice of source id and address can collide.
        let aad = format!(
            "sync_state.client_state:{}:{}:{}",
            key.source.0.len(),
            key.source,
            key.address
        );
        (name, aad)
    }
}

fn open_error(path: &Path, source: sqlx::Error) -> StoreError {
    match sqlite_primary_code(&source) {
        Some(SQLITE_NOTADB | SQLITE_CORRUPT) => StoreError::NotADatabase {
            path: path.to_path_buf(),
            source,
        },
        _ => StoreError::Open {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// The highest migration a database has applied, `None` for a new database.
async fn applied_version(pool: &SqlitePool) -> Result<Option<i64>, sqlx::Error> {
    let has_table: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await?;
    if has_table.is_none() {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
        .fetch_one(pool)
        .await
}

async fn person_id<'e>(
    executor: impl SqliteExecutor<'e>,
    key: &PersonKey,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM people WHERE source_id = ? AND address = ?")
        .bind(&key.source.0)
        .bind(key.address.as_str())
        .fetch_optional(executor)
        .await
}

async fn require_person_id<'e>(
    executor: impl SqliteExecutor<'e>,
    key: &PersonKey,
    operation: &'static str,
) -> Result<i64, StoreError> {
    person_id(executor, key)
        .await
        .map_err(|source| StoreError::database(format!("{operation} for {key}"), source))?
        .ok_or_else(|| StoreError::PersonNotFound {
            operation,
            person: key.clone(),
        })
}

/// People per statement in `write_people`: 6 parameters per row.
const PEOPLE_PER_UPSERT: usize = 100;

/// `upsert_person` for each of `people`, in order, several rows per statement. SQLite applies
/// the rows of one statement one after another, so a key listed twice ends as its last entry,
/// as with one statement per person.
async fn write_people(
    connection: &mut SqliteConnection,
    people: &[PersonUpsert],
    now: i64,
) -> Result<(), StoreError> {
    for chunk in people.chunks(PEOPLE_PER_UPSERT) {
        // updated_at moves only when something changed, so it tells when the directory last
        // changed this person rather than when it was last re-read.
        let sql = format!(
            "INSERT INTO people (source_id, address, display_name, sip_uri, created_at, \
             updated_at) VALUES {} \
             ON CONFLICT (source_id, address) DO UPDATE SET \
             display_name = excluded.display_name, sip_uri = excluded.sip_uri, \
             updated_at = excluded.updated_at \
             WHERE display_name IS NOT excluded.display_name OR sip_uri IS NOT excluded.sip_uri",
            vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for person in chunk {
            query = query
                .bind(&person.key.source.0)
                .bind(person.key.address.as_str())
                .bind(person.display_name.as_deref())
                .bind(person.sip_uri.as_deref())
                .bind(now)
                .bind(now);
        }
        query.execute(&mut *connection).await.map_err(|source| {
            let what = match chunk {
                [person] => format!("upsert person {}", person.key),
                [first, ..] => format!("upsert {} people from {}", chunk.len(), first.key),
                [] => unreachable!("chunks are never empty"),
            };
            StoreError::database(what, source)
        })?;
    }
    Ok(())
}

/// `mark_resolution` of one person at `now`.
async fn write_resolution<'e>(
    executor: impl SqliteExecutor<'e>,
    key: &PersonKey,
    resolution: &Resolution,
    now: i64,
) -> Result<(), StoreError> {
    let source_user_id = match resolution {
        Resolution::Resolved { source_user_id, .. } => source_user_id.as_deref(),
        _ => None,
    };
    let (state, primary_smtp, error) = match resolution {
        Resolution::Pending => ("pending", None, None),
        Resolution::Resolved { primary_smtp, .. } => {
            ("resolved", Some(primary_smtp.as_str()), None)
        }
        Resolution::Failed { error } => ("failed", None, Some(error.as_str())),
    };
    let result = sqlx::query(
        "UPDATE people SET resolution = ?, primary_smtp = ?, source_user_id = ?, \
         resolution_error = ?, updated_at = ? WHERE source_id = ? AND address = ?",
    )
    .bind(state)
    .bind(primary_smtp)
    .bind(source_user_id)
    .bind(error)
    .bind(now)
    .bind(&key.source.0)
    .bind(key.address.as_str())
    .execute(executor)
    .await
    .map_err(|source| StoreError::database(format!("mark resolution of {key}"), source))?;
    if result.rows_affected() == 0 {
        return Err(StoreError::PersonNotFound {
            operation: "mark the resolution",
            person: key.clone(),
        });
    }
    Ok(())
}

/// The body of `replace_appointments`, inside the caller's transaction.
async fn write_window(
    connection: &mut SqliteConnection,
    key: &PersonKey,
    window_start: Timestamp,
    window_end: Timestamp,
    appointments: &[Appointment],
) -> Result<(), StoreError> {
    let failed = |source| StoreError::database(format!("replace appointments of {key}"), source);
    let person_id = require_person_id(&mut *connection, key, "replace the appointments").await?;
    sqlx::query("DELETE FROM appointments WHERE person_id = ?")
        .bind(person_id)
        .execute(&mut *connection)
        .await
        .map_err(failed)?;
    // A plain INSERT, not an upsert: a full read that lists one id twice is a source bug,
    // and failing the whole replacement keeps the previous, consistent window. Several
    // rows per statement, because the cost of a statement, not of a row, dominates.
    for chunk in appointments.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "{INSERT_APPOINTMENT_PREFIX} {}",
            vec![APPOINTMENT_PLACEHOLDERS; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for appointment in chunk {
            query = bind_appointment(query, person_id, appointment);
        }
        query.execute(&mut *connection).await.map_err(failed)?;
    }
    sqlx::query(&format!(
        "{UPSERT_WINDOW_PREFIX} (?, ?, ?) {UPSERT_WINDOW_SUFFIX}"
    ))
    .bind(person_id)
    .bind(window_start.as_second())
    .bind(window_end.as_second())
    .execute(&mut *connection)
    .await
    .map_err(failed)?;
    Ok(())
}

/// Keys per statement in `person_ids`: 2 parameters per key.
const KEYS_PER_LOOKUP: usize = 400;

/// Rows per statement in `write_sync_states` (10 parameters each), `write_presences` (8) and
/// the windows of `write_windows` (3), far below SQLite's limit of 32,766 parameters.
const ROWS_PER_UPSERT: usize = 100;

/// The people ids of `keys`, in the same order, with one statement per `KEYS_PER_LOOKUP` keys
/// instead of one per key; `PersonNotFound` names the first key that is not stored.
async fn person_ids<'k>(
    connection: &mut SqliteConnection,
    keys: impl Iterator<Item = &'k PersonKey>,
    operation: &'static str,
) -> Result<Vec<i64>, StoreError> {
    let keys: Vec<&PersonKey> = keys.collect();
    let mut found: HashMap<(&str, &str), i64> = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(KEYS_PER_LOOKUP) {
        let sql = format!(
            "SELECT id, source_id, address FROM people \
             WHERE (source_id, address) IN (VALUES {})",
            vec!["(?, ?)"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for key in chunk {
            query = query.bind(&key.source.0).bind(key.address.as_str());
        }
        let rows = query.fetch_all(&mut *connection).await.map_err(|source| {
            StoreError::database(format!("{operation} for {} people", chunk.len()), source)
        })?;
        // Matched back by the exact text bound, which is what `=` compared.
        let by_text: HashMap<(String, String), i64> = rows
            .iter()
            .map(|row| {
                let what = || "a person's id".to_string();
                Ok::<_, StoreError>((
                    (get(row, "source_id", &what)?, get(row, "address", &what)?),
                    get(row, "id", &what)?,
                ))
            })
            .collect::<Result<_, _>>()?;
        for key in chunk {
            let text = (key.source.0.clone(), key.address.as_str().to_string());
            if let Some(id) = by_text.get(&text) {
                found.insert((key.source.0.as_str(), key.address.as_str()), *id);
            }
        }
    }
    keys.iter()
        .map(|key| {
            found
                .get(&(key.source.0.as_str(), key.address.as_str()))
                .copied()
                .ok_or_else(|| StoreError::PersonNotFound {
                    operation,
                    person: (*key).clone(),
                })
        })
        .collect()
}

/// `replace_appointments` for each of `windows`, in order, inside the caller's transaction.
///
/// When every person appears once, the old appointments go with one DELETE per chunk of
/// people and the new ones come with multi-row INSERTs across people, which is what makes a
/// first sync of thousands of people fast. A person listed twice falls back to one
/// `write_window` per element, so that the later window replaces the earlier exactly as
/// separate calls would (a grouped INSERT would see both sets at once).
async fn write_windows(
    connection: &mut SqliteConnection,
    windows: &[WindowReplacement],
) -> Result<(), StoreError> {
    let operation = "replace the appointments";
    let ids = person_ids(
        &mut *connection,
        windows.iter().map(|window| &window.key),
        operation,
    )
    .await?;
    let mut distinct = std::collections::HashSet::with_capacity(ids.len());
    if !ids.iter().all(|id| distinct.insert(*id)) {
        for window in windows {
            write_window(
                &mut *connection,
                &window.key,
                window.window_start,
                window.window_end,
                &window.appointments,
            )
            .await?;
        }
        return Ok(());
    }
    let failed = |what: String| move |source| StoreError::database(what, source);
    let people_of = |first: &PersonKey, last: &PersonKey| {
        if first == last {
            format!("replace appointments of {first}")
        } else {
            format!("replace appointments of the people from {first} to {last}")
        }
    };
    for (chunk_ids, chunk) in ids
        .chunks(KEYS_PER_LOOKUP)
        .zip(windows.chunks(KEYS_PER_LOOKUP))
    {
        let sql = format!(
            "DELETE FROM appointments WHERE person_id IN ({})",
            vec!["?"; chunk_ids.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in chunk_ids {
            query = query.bind(*id);
        }
        query
            .execute(&mut *connection)
            .await
            .map_err(failed(people_of(
                &chunk[0].key,
                &chunk[chunk.len() - 1].key,
            )))?;
    }
    // A plain INSERT, as in `write_window`: an id listed twice in one window fails the batch.
    let rows: Vec<(i64, &PersonKey, &Appointment)> = ids
        .iter()
        .zip(windows)
        .flat_map(|(id, window)| {
            window
                .appointments
                .iter()
                .map(move |appointment| (*id, &window.key, appointment))
        })
        .collect();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "{INSERT_APPOINTMENT_PREFIX} {}",
            vec![APPOINTMENT_PLACEHOLDERS; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (person_id, _, appointment) in chunk {
            query = bind_appointment(query, *person_id, appointment);
        }
        let (first, last) = (chunk[0].1, chunk[chunk.len() - 1].1);
        query
            .execute(&mut *connection)
            .await
            .map_err(failed(people_of(first, last)))?;
    }
    for (chunk_ids, chunk) in ids
        .chunks(ROWS_PER_UPSERT)
        .zip(windows.chunks(ROWS_PER_UPSERT))
    {
        let sql = format!(
            "{UPSERT_WINDOW_PREFIX} {} {UPSERT_WINDOW_SUFFIX}",
            vec!["(?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (id, window) in chunk_ids.iter().zip(chunk) {
            query = query
                .bind(*id)
                .bind(window.window_start.as_second())
                .bind(window.window_end.as_second());
        }
        query
            .execute(&mut *connection)
            .await
            .map_err(failed(people_of(
                &chunk[0].key,
                &chunk[chunk.len() - 1].key,
            )))?;
    }
    Ok(())
}

/// `set_sync_state` for each row (person id, key, state, sealed `client_state`), in order,
/// several rows per statement; SQLite applies them one after another, so a person listed
/// twice ends with the later state, as with separate calls.
async fn write_sync_states(
    connection: &mut SqliteConnection,
    rows: &[(i64, &PersonKey, &SyncState, Option<Vec<u8>>)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_UPSERT) {
        let sql = format!(
            "INSERT INTO sync_state (person_id, delta_link, subscription_id, \
             subscription_expires_at, client_state_sealed, last_full_sync_at, last_delta_at, \
             last_error, last_error_at, consecutive_failures) VALUES {} \
             ON CONFLICT (person_id) DO UPDATE SET \
             delta_link = excluded.delta_link, subscription_id = excluded.subscription_id, \
             subscription_expires_at = excluded.subscription_expires_at, \
             client_state_sealed = excluded.client_state_sealed, \
             last_full_sync_at = excluded.last_full_sync_at, \
             last_delta_at = excluded.last_delta_at, last_error = excluded.last_error, \
             last_error_at = excluded.last_error_at, \
             consecutive_failures = excluded.consecutive_failures",
            vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (person_id, _, state, client_state_sealed) in chunk {
            query = query
                .bind(*person_id)
                .bind(state.delta_link.as_deref())
                .bind(state.subscription_id.as_deref())
                .bind(opt_seconds(state.subscription_expires_at))
                .bind(client_state_sealed.as_deref())
                .bind(opt_seconds(state.last_full_sync_at))
                .bind(opt_seconds(state.last_delta_at))
                .bind(
                    state
                        .last_error
                        .as_ref()
                        .map(|error| error.message.as_str()),
                )
                .bind(state.last_error.as_ref().map(|error| error.at.as_second()))
                .bind(i64::from(state.consecutive_failures));
        }
        query.execute(&mut *connection).await.map_err(|source| {
            let what = match chunk {
                [(_, key, _, _)] => format!("save sync state of {key}"),
                [(_, first, _, _), ..] => {
                    format!(
                        "save the sync states of {} people from {first}",
                        chunk.len()
                    )
                }
                [] => unreachable!("chunks are never empty"),
            };
            StoreError::database(what, source)
        })?;
    }
    Ok(())
}

/// `save_presence` for each row (person id, key, presence), in order, several rows per
/// statement; a person listed twice ends with the later presence.
async fn write_presences(
    connection: &mut SqliteConnection,
    rows: &[(i64, &PersonKey, &CurrentPresence)],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_UPSERT) {
        let sql = format!(
            "INSERT INTO presence (person_id, activity, note, until_at, why, next_change_at, \
             decided_at, published_fingerprint) VALUES {} \
             ON CONFLICT (person_id) DO UPDATE SET \
             activity = excluded.activity, note = excluded.note, until_at = excluded.until_at, \
             why = excluded.why, next_change_at = excluded.next_change_at, \
             decided_at = excluded.decided_at, \
             published_fingerprint = excluded.published_fingerprint",
            vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (person_id, _, presence) in chunk {
            query = query
                .bind(*person_id)
                .bind(&presence.activity)
                .bind(presence.note.as_deref())
                .bind(opt_seconds(presence.until))
                .bind(&presence.why)
                .bind(opt_seconds(presence.next_change_at))
                .bind(presence.decided_at.as_second())
                .bind(presence.published_fingerprint.as_deref());
        }
        query.execute(&mut *connection).await.map_err(|source| {
            let what = match chunk {
                [(_, key, _)] => format!("save presence of {key}"),
                [(_, first, _), ..] => {
                    format!("save the presences of {} people from {first}", chunk.len())
                }
                [] => unreachable!("chunks are never empty"),
            };
            StoreError::database(what, source)
        })?;
    }
    Ok(())
}

async fn write_appointment(
    connection: &mut SqliteConnection,
    statement: &'static str,
    person_id: i64,
    appointment: &Appointment,
) -> Result<(), sqlx::Error> {
    bind_appointment(sqlx::query(statement), person_id, appointment)
        .execute(connection)
        .await?;
    Ok(())
}

/// Binds the 11 parameters of one row of `appointments`, in `APPOINTMENT_PLACEHOLDERS` order.
fn bind_appointment<'q>(
    query: Query<'q, Sqlite, SqliteArguments<'q>>,
    person_id: i64,
    appointment: &'q Appointment,
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    let columns = encode_appointment(appointment);
    query
        .bind(person_id)
        .bind(appointment.id.as_str())
        .bind(columns.start_at)
        .bind(columns.end_at)
        .bind(columns.first_day)
        .bind(columns.end_day)
        .bind(show_as_text(appointment.show_as))
        .bind(sensitivity_text(appointment.sensitivity))
        .bind(appointment.subject.as_deref())
        .bind(appointment.organizer.as_ref().map(|o| o.as_str()))
        .bind(status_text(appointment.status))
}

fn decode_person(row: &SqliteRow) -> Result<Person, StoreError> {
    let key = decode_person_key(row, "source_id", "address")?;
    let what = || format!("person {key}");
    let resolution_text: String = get(row, "resolution", &what)?;
    let resolution = match resolution_text.as_str() {
        "pending" => Resolution::Pending,
        "resolved" => {
            let primary_smtp: Option<String> = get(row, "primary_smtp", &what)?;
            let primary_smtp = primary_smtp.unwrap_or_default();
            let primary_smtp =
                calbridge_domain::MailboxAddress::parse(&primary_smtp).map_err(|error| {
                    StoreError::InvalidRow {
                        what: what(),
                        field: "primary_smtp",
                        reason: error.to_string(),
                    }
                })?;
            Resolution::Resolved {
                primary_smtp,
                source_user_id: get(row, "source_user_id", &what)?,
            }
        }
        "failed" => Resolution::Failed {
            error: get::<Option<String>>(row, "resolution_error", &what)?.unwrap_or_default(),
        },
        other => {
            return Err(StoreError::InvalidRow {
                what: what(),
                field: "resolution",
                reason: format!("unknown state `{other}`"),
            })
        }
    };
    Ok(Person {
        display_name: get(row, "display_name", &what)?,
        sip_uri: get(row, "sip_uri", &what)?,
        resolution,
        created_at: decode_timestamp(get(row, "created_at", &what)?, "created_at", &what)?,
        updated_at: decode_timestamp(get(row, "updated_at", &what)?, "updated_at", &what)?,
        key,
    })
}

/// Reads one column, naming the record and field if SQLite holds an unexpected type.
fn get<'r, T>(
    row: &'r SqliteRow,
    column: &'static str,
    what: &dyn Fn() -> String,
) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(column).map_err(|error| StoreError::InvalidRow {
        what: what(),
        field: column,
        reason: error.to_string(),
    })
}

fn decode_opt_timestamp(
    seconds: Option<i64>,
    field: &'static str,
    what: &dyn Fn() -> String,
) -> Result<Option<Timestamp>, StoreError> {
    seconds
        .map(|seconds| decode_timestamp(seconds, field, what))
        .transpose()
}

fn to_i64(count: u64) -> i64 {
    // Counters that reach 2^63 saturate rather than wrap negative.
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn to_u64(value: i64, field: &'static str, what: &dyn Fn() -> String) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::InvalidRow {
        what: what(),
        field,
        reason: format!("{value} is negative"),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn upsert_person(&self, person: &PersonUpsert) -> Result<(), StoreError> {
        let mut connection = self.pool.acquire().await.map_err(|source| {
            StoreError::database(format!("upsert person {}", person.key), source)
        })?;
        write_people(
            &mut connection,
            std::slice::from_ref(person),
            Timestamp::now().as_second(),
        )
        .await
    }

    async fn upsert_people(&self, people: &[PersonUpsert]) -> Result<(), StoreError> {
        if people.is_empty() {
            return Ok(());
        }
        let failed =
            |source| StoreError::database(format!("upsert {} people", people.len()), source);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        write_people(&mut tx, people, Timestamp::now().as_second()).await?;
        tx.commit().await.map_err(failed)
    }

    async fn get_person(&self, key: &PersonKey) -> Result<Option<Person>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {PERSON_COLUMNS} FROM people p WHERE p.source_id = ? AND p.address = ?"
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
            "SELECT {PERSON_COLUMNS} FROM people p WHERE p.source_id = ? ORDER BY p.address"
        ))
        .bind(&source.0)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| StoreError::database(format!("list people of source {source}"), error))?;
        rows.iter().map(decode_person).collect()
    }

    async fn remove_person(&self, key: &PersonKey) -> Result<Removal, StoreError> {
        // Appointments, sync state and presence go with the person through ON DELETE CASCADE.
        let result = sqlx::query("DELETE FROM people WHERE source_id = ? AND address = ?")
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
        write_resolution(&self.pool, key, resolution, Timestamp::now().as_second()).await
    }

    async fn mark_resolutions(
        &self,
        resolutions: &[(PersonKey, Resolution)],
    ) -> Result<(), StoreError> {
        if resolutions.is_empty() {
            return Ok(());
        }
        let failed = |source| {
            StoreError::database(
                format!("mark the resolutions of {} people", resolutions.len()),
                source,
            )
        };
        let now = Timestamp::now().as_second();
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        for (key, resolution) in resolutions {
            write_resolution(&mut *tx, key, resolution, now).await?;
        }
        tx.commit().await.map_err(failed)
    }

    async fn replace_appointments(
        &self,
        key: &PersonKey,
        window_start: Timestamp,
        window_end: Timestamp,
        appointments: Vec<Appointment>,
    ) -> Result<(), StoreError> {
        let failed =
            |source| StoreError::database(format!("replace appointments of {key}"), source);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        write_window(&mut tx, key, window_start, window_end, &appointments).await?;
        tx.commit().await.map_err(failed)
    }

    async fn replace_appointments_many(
        &self,
        windows: Vec<WindowReplacement>,
    ) -> Result<(), StoreError> {
        if windows.is_empty() {
            return Ok(());
        }
        let failed = |source| {
            StoreError::database(
                format!("replace the appointments of {} people", windows.len()),
                source,
            )
        };
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        write_windows(&mut tx, &windows).await?;
        tx.commit().await.map_err(failed)
    }

    async fn apply_appointment_changes(
        &self,
        key: &PersonKey,
        upserts: Vec<Appointment>,
        removed_ids: Vec<String>,
    ) -> Result<(), StoreError> {
        let failed =
            |source| StoreError::database(format!("apply appointment changes of {key}"), source);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        let person_id = require_person_id(&mut *tx, key, "apply appointment changes").await?;
        for appointment in &upserts {
            write_appointment(&mut tx, UPSERT_APPOINTMENT, person_id, appointment)
                .await
                .map_err(|source| {
                    StoreError::database(
                        format!("upsert appointment {} of {key}", appointment.id),
                        source,
                    )
                })?;
        }
        for removed_id in &removed_ids {
            sqlx::query("DELETE FROM appointments WHERE person_id = ? AND appointment_id = ?")
                .bind(person_id)
                .bind(removed_id)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)
    }

    async fn load_appointments(&self, key: &PersonKey) -> Result<Vec<Appointment>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {APPOINTMENT_COLUMNS} FROM appointments a \
             JOIN people p ON p.id = a.person_id \
             WHERE p.source_id = ? AND p.address = ? ORDER BY a.appointment_id"
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
        // One row per person, with the appointments packed into a JSON array by SQLite: at
        // start-up this is 100,000 appointments for 10,000 people, and sqlx's cost per row
        // (a copy of every value, a hop between threads) made one row per appointment take
        // seconds, where building and parsing the JSON takes a fraction of that.
        let rows = sqlx::query(
            "SELECT p.source_id, p.address, \
             (SELECT json_group_array(json_array(a.appointment_id, a.start_at, a.end_at, \
                     a.first_day, a.end_day, a.show_as, a.sensitivity, a.subject, a.organizer, \
                     a.status)) \
              FROM appointments a WHERE a.person_id = p.id) AS appointments \
             FROM people p",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::database("load all appointments".to_string(), source))?;

        let mut by_person = HashMap::with_capacity(rows.len());
        for row in &rows {
            let key = decode_person_key(row, "source_id", "address")?;
            let json: String = get(row, "appointments", &|| format!("appointments of {key}"))?;
            let columns: Vec<AppointmentColumns> =
                serde_json::from_str(&json).map_err(|error| StoreError::InvalidRow {
                    what: format!("appointments of {key}"),
                    field: "appointments",
                    reason: error.to_string(),
                })?;
            let mut appointments = columns
                .into_iter()
                .map(|columns| columns.decode(&key))
                .collect::<Result<Vec<_>, _>>()?;
            // The same order as load_appointments, which sorts in SQL.
            appointments.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            by_person.insert(key, appointments);
        }
        Ok(by_person)
    }

    async fn get_sync_state(&self, key: &PersonKey) -> Result<SyncState, StoreError> {
        let failed = |source| StoreError::database(format!("read sync state of {key}"), source);
        let person_id = require_person_id(&self.pool, key, "read the sync state").await?;
        let Some(row) = sqlx::query(
            "SELECT delta_link, subscription_id, subscription_expires_at, client_state_sealed, \
             last_full_sync_at, last_delta_at, last_error, last_error_at, consecutive_failures, \
             window_start, window_end FROM sync_state WHERE person_id = ?",
        )
        .bind(person_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(failed)?
        else {
            return Ok(SyncState::default());
        };
        let what = || format!("sync state of {key}");
        let client_state = match get::<Option<Vec<u8>>>(&row, "client_state_sealed", &what)? {
            Some(sealed) => {
                let (name, aad) = Self::client_state_names(key);
                let clear = self.key.open(&name, &aad, &sealed)?;
                let text = String::from_utf8(clear.to_vec())
                    .map_err(|_| StoreError::SecretUndecryptable { name })?;
                Some(Secret::new(text))
            }
            None => None,
        };
        let last_error = match get::<Option<String>>(&row, "last_error", &what)? {
            Some(message) => Some(SyncError {
                message,
                at: decode_timestamp(
                    get::<Option<i64>>(&row, "last_error_at", &what)?.unwrap_or(0),
                    "last_error_at",
                    &what,
                )?,
            }),
            None => None,
        };
        let window_start =
            decode_opt_timestamp(get(&row, "window_start", &what)?, "window_start", &what)?;
        let window_end =
            decode_opt_timestamp(get(&row, "window_end", &what)?, "window_end", &what)?;
        let consecutive_failures: i64 = get(&row, "consecutive_failures", &what)?;
        Ok(SyncState {
            delta_link: get(&row, "delta_link", &what)?,
            subscription_id: get(&row, "subscription_id", &what)?,
            subscription_expires_at: decode_opt_timestamp(
                get(&row, "subscription_expires_at", &what)?,
                "subscription_expires_at",
                &what,
            )?,
            client_state,
            last_full_sync_at: decode_opt_timestamp(
                get(&row, "last_full_sync_at", &what)?,
                "last_full_sync_at",
                &what,
            )?,
            last_delta_at: decode_opt_timestamp(
                get(&row, "last_delta_at", &what)?,
                "last_delta_at",
                &what,
            )?,
            last_error,
            consecutive_failures: u32::try_from(consecutive_failures).unwrap_or(u32::MAX),
            appointment_window: window_start
                .zip(window_end)
                .map(|(start, end)| AppointmentWindow { start, end }),
        })
    }

    async fn set_sync_state(&self, key: &PersonKey, state: &SyncState) -> Result<(), StoreError> {
        let failed = |source| StoreError::database(format!("save sync state of {key}"), source);
        let client_state_sealed = self.seal_client_state(key, state)?;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        let person_id = require_person_id(&mut *tx, key, "save the sync state").await?;
        write_sync_states(&mut tx, &[(person_id, key, state, client_state_sealed)]).await?;
        tx.commit().await.map_err(failed)
    }

    async fn set_sync_states(&self, states: &[(PersonKey, SyncState)]) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let failed = |source| {
            StoreError::database(
                format!("save the sync states of {} people", states.len()),
                source,
            )
        };
        // Sealed before the transaction, as set_sync_state does, so that the write lock is not
        // held while encrypting.
        let sealed = states
            .iter()
            .map(|(key, state)| self.seal_client_state(key, state))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        let ids = person_ids(
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
        tx.commit().await.map_err(failed)
    }

    async fn get_source_state(&self, source: &SourceId) -> Result<SourceState, StoreError> {
        let row = sqlx::query(
            "SELECT token_status, token_error, token_checked_at, secret_expires_on, \
             last_throttled_at, n_requests, n_throttled, n_failures \
             FROM source_state WHERE source_id = ?",
        )
        .bind(&source.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| StoreError::database(format!("read state of source {source}"), error))?;
        let Some(row) = row else {
            return Ok(SourceState::default());
        };
        let what = || format!("state of source {source}");
        let token_status: String = get(&row, "token_status", &what)?;
        let token = match token_status.as_str() {
            "unknown" => TokenState::Unknown,
            "ok" => TokenState::Ok,
            "failed" => TokenState::Failed {
                error: get::<Option<String>>(&row, "token_error", &what)?.unwrap_or_default(),
            },
            other => {
                return Err(StoreError::InvalidRow {
                    what: what(),
                    field: "token_status",
                    reason: format!("unknown state `{other}`"),
                })
            }
        };
        let secret_expires_on = get::<Option<String>>(&row, "secret_expires_on", &what)?
            .map(|text| decode_date(&text, "secret_expires_on", &what))
            .transpose()?;
        Ok(SourceState {
            token,
            token_checked_at: decode_opt_timestamp(
                get(&row, "token_checked_at", &what)?,
                "token_checked_at",
                &what,
            )?,
            secret_expires_on,
            last_throttled_at: decode_opt_timestamp(
                get(&row, "last_throttled_at", &what)?,
                "last_throttled_at",
                &what,
            )?,
            counters: crate::SourceCounters {
                n_requests: to_u64(get(&row, "n_requests", &what)?, "n_requests", &what)?,
                n_throttled: to_u64(get(&row, "n_throttled", &what)?, "n_throttled", &what)?,
                n_failures: to_u64(get(&row, "n_failures", &what)?, "n_failures", &what)?,
            },
        })
    }

    async fn set_source_state(
        &self,
        source: &SourceId,
        state: &SourceState,
    ) -> Result<(), StoreError> {
        let (token_status, token_error) = match &state.token {
            TokenState::Unknown => ("unknown", None),
            TokenState::Ok => ("ok", None),
            TokenState::Failed { error } => ("failed", Some(error.as_str())),
        };
        sqlx::query(
            "INSERT INTO source_state (source_id, token_status, token_error, token_checked_at, \
             secret_expires_on, last_throttled_at, n_requests, n_throttled, n_failures, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
        .bind(to_i64(state.counters.n_requests))
        .bind(to_i64(state.counters.n_throttled))
        .bind(to_i64(state.counters.n_failures))
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
        let failed = |source| StoreError::database(format!("save presence of {key}"), source);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        let person_id = require_person_id(&mut *tx, key, "save the presence").await?;
        write_presences(&mut tx, &[(person_id, key, presence)]).await?;
        tx.commit().await.map_err(failed)
    }

    async fn save_presences(
        &self,
        presences: &[(PersonKey, CurrentPresence)],
    ) -> Result<(), StoreError> {
        if presences.is_empty() {
            return Ok(());
        }
        let failed = |source| {
            StoreError::database(
                format!("save the presences of {} people", presences.len()),
                source,
            )
        };
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        let ids = person_ids(
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
        tx.commit().await.map_err(failed)
    }

    async fn load_presence(&self, key: &PersonKey) -> Result<Option<CurrentPresence>, StoreError> {
        let row = sqlx::query(
            "SELECT r.activity, r.note, r.until_at, r.why, r.next_change_at, r.decided_at, \
             r.published_fingerprint FROM presence r JOIN people p ON p.id = r.person_id \
             WHERE p.source_id = ? AND p.address = ?",
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
        let sealed = self
            .key
            .seal(name, &secret_aad(name), secret.expose().as_bytes())?;
        sqlx::query(
            "INSERT INTO secrets (name, sealed, updated_at) VALUES (?, ?, ?) \
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
            sqlx::query_scalar("SELECT sealed FROM secrets WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| StoreError::database(format!("read secret {name}"), source))?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let clear = self.key.open(name, &secret_aad(name), &sealed)?;
        let text =
            String::from_utf8(clear.to_vec()).map_err(|_| StoreError::SecretUndecryptable {
                name: name.to_string(),
            })?;
        Ok(Some(Secret::new(text)))
    }

    async fn append_outbox(&self, event: &NewOutboxEvent) -> Result<OutboxId, StoreError> {
        let result = sqlx::query(
            "INSERT INTO outbox (topic, person_source, person_address, payload, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&event.topic)
        .bind(event.person.as_ref().map(|person| person.source.0.as_str()))
        .bind(event.person.as_ref().map(|person| person.address.as_str()))
        .bind(event.payload.to_string())
        .bind(event.created_at.as_second())
        .execute(&self.pool)
        .await
        .map_err(|source| {
            StoreError::database(
                format!("append {} event to the outbox", event.topic),
                source,
            )
        })?;
        Ok(OutboxId(result.last_insert_rowid()))
    }

    async fn read_outbox_after(
        &self,
        after: OutboxId,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, topic, person_source, person_address, payload, created_at \
             FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
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
            sqlx::query_scalar("SELECT last_id FROM outbox_cursors WHERE consumer = ?")
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
            "INSERT INTO outbox_cursors (consumer, last_id) VALUES (?, ?) \
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
}

fn secret_aad(name: &str) -> String {
    format!("secrets.sealed:{name}")
}

fn decode_presence(row: &SqliteRow, key: &PersonKey) -> Result<CurrentPresence, StoreError> {
    let what = || format!("presence of {key}");
    Ok(CurrentPresence {
        activity: get(row, "activity", &what)?,
        note: get(row, "note", &what)?,
        until: decode_opt_timestamp(get(row, "until_at", &what)?, "until_at", &what)?,
        why: get(row, "why", &what)?,
        next_change_at: decode_opt_timestamp(
            get(row, "next_change_at", &what)?,
            "next_change_at",
            &what,
        )?,
        decided_at: decode_timestamp(get(row, "decided_at", &what)?, "decided_at", &what)?,
        published_fingerprint: get(row, "published_fingerprint", &what)?,
    })
}

fn decode_outbox_event(row: &SqliteRow) -> Result<OutboxEvent, StoreError> {
    let id: i64 = get(row, "id", &|| "an outbox event".to_string())?;
    let what = || format!("outbox event {id}");
    let person_source: Option<String> = get(row, "person_source", &what)?;
    let person = match person_source {
        Some(_) => Some(decode_person_key(row, "person_source", "person_address")?),
        None => None,
    };
    let payload_text: String = get(row, "payload", &what)?;
    let payload = serde_json::from_str(&payload_text).map_err(|error| StoreError::InvalidRow {
        what: what(),
        field: "payload",
        reason: error.to_string(),
    })?;
    Ok(OutboxEvent {
        id: OutboxId(id),
        topic: get(row, "topic", &what)?,
        person,
        payload,
        created_at: decode_timestamp(get(row, "created_at", &what)?, "created_at", &what)?,
    })
}
