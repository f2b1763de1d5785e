//! The embedded SQLite implementation of [`Store`].

mod lock;
mod rebuild;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use calbridge_domain::{Appointment, Secret, SourceId};
use jiff::Timestamp;
use sqlx::migrate::Migrator;
use sqlx::query::Query;
use sqlx::sqlite::{
    Sqlite, SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{SqliteConnection, SqliteExecutor};

use crate::codec::{
    count_to_i64, decode_appointment, decode_appointment_list, decode_outbox_event, decode_person,
    decode_person_key, decode_presence, decode_source_state, decode_sync_state, has_repeats,
    ids_in_order, open_named_secret, opt_seconds, people_range, resolution_columns,
    seal_client_state, seal_named_secret, sip_publication, token_columns, AppointmentRow, StoreRow,
};
use crate::error::{sqlite_primary_code, SQLITE_CORRUPT, SQLITE_NOTADB};
use crate::migrations::{self, latest_version, EmbeddedMigrations};
use crate::{
    CurrentPresence, NewOutboxEvent, OutboxEvent, OutboxId, Person, PersonKey, PersonUpsert,
    Removal, Resolution, SecretKey, SipPublication, SourceState, Store, StoreError, StoreLocation,
    SyncState, WindowReplacement,
};
use lock::DatabaseLock;
pub use rebuild::Rebuilt;

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
    /// Keeps other calbridge processes off the file until [`SqliteStore::close`] or drop;
    /// `None` for an in-memory database, which no other process can see.
    lock: Mutex<Option<DatabaseLock>>,
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
    ///
    /// The file is locked for as long as the store is open (see [`SqliteStore::lock_file_of`]):
    /// while one
    /// store has it, opening it again, from this process or another, fails with
    /// [`StoreError::InUse`].
    pub async fn open(path: impl AsRef<Path>, key: SecretKey) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        // Before connecting, so that a second process touches nothing of the database.
        let lock = lock::lock(&path)?;
        Self::open_locked(path, key, lock).await
    }

    async fn open_locked(
        path: PathBuf,
        key: SecretKey,
        lock: DatabaseLock,
    ) -> Result<Self, StoreError> {
        create_private_file(&path)?;
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
        if let Err(error) = check_integrity(&pool, &path).await {
            pool.close().await;
            return Err(error);
        }
        Self::migrate(pool, key, path, Some(lock)).await
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
        Self::migrate(pool, key, path, None).await
    }

    /// The lock file of the database at `database`: `<database>.lock` beside it.
    pub fn lock_file_of(database: &Path) -> PathBuf {
        lock::lock_file_of(database)
    }

    /// Where the database lives (`:memory:` for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for running operations, closes every connection and releases the file's lock,
    /// so that the file is checkpointed and another process (or a reopen in a test) sees
    /// everything. The store answers nothing after this.
    pub async fn close(&self) {
        // Closing the last connection would checkpoint too, but sqlx closes connections on
        // their worker threads after `close` returned; merging the log here means a copy or a
        // check of the main file right after sees everything. Best effort: a failure only
        // leaves the log for the next open to merge.
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await;
        self.pool.close().await;
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
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

    async fn migrate(
        pool: SqlitePool,
        key: SecretKey,
        path: PathBuf,
        lock: Option<DatabaseLock>,
    ) -> Result<Self, StoreError> {
        let supported = latest_version(migrations::SQLITE);
        if let Some(found) = applied_version(&pool)
            .await
            .map_err(|source| open_error(&path, source))?
        {
            if found > supported {
                return Err(StoreError::SchemaTooNew {
                    location: Box::new(StoreLocation::File(path)),
                    found,
                    supported,
                });
            }
        }
        let migrate_error = |source| StoreError::Migrate {
            location: Box::new(StoreLocation::File(path.clone())),
            source,
        };
        let migrator = Migrator::new(EmbeddedMigrations(migrations::SQLITE))
            .await
            .map_err(migrate_error)?;
        migrator.run(&pool).await.map_err(migrate_error)?;
        Ok(SqliteStore {
            pool,
            key,
            path,
            lock: Mutex::new(lock),
        })
    }
}

/// Creates a missing database file empty (which SQLite takes as a new database) and readable
/// by its owner only: the file holds people, calendars and sealed secrets. SQLite gives its
/// `-wal` and `-shm` files the mode of the database file, so they are private too. An
/// existing file keeps the mode its owner gave it.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(StoreError::Open {
            location: Box::new(StoreLocation::File(path.to_path_buf())),
            source: sqlx::Error::Io(error),
        }),
    }
}

/// SQLite's primary code for an input/output error, which a short read of a truncated file is.
const SQLITE_IOERR: i64 = 10;

/// How many lines of SQLite's findings a [`StoreError::Damaged`] shows.
const DAMAGE_LINES_SHOWN: usize = 5;

/// Runs SQLite's `quick_check` and fails with [`StoreError::Damaged`] on any finding.
///
/// `quick_check` rather than `integrity_check`: it reads every page and checks the b-trees,
/// the free list and the `NOT NULL`/`CHECK` constraints, but not that indexes match their
/// tables, which makes it O(N) instead of O(N log N); a start-up check must stay cheap on a
/// store of thousands of people (see the README for the figures). Damage that it misses is
/// an index out of step, which the next write of the row repairs or reports.
async fn check_integrity(pool: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    // The argument caps the findings SQLite collects: the first few say enough.
    let findings: Result<Vec<String>, sqlx::Error> =
        sqlx::query_scalar(&format!("PRAGMA quick_check({DAMAGE_LINES_SHOWN})"))
            .fetch_all(pool)
            .await;
    let findings = match findings {
        Ok(lines) => lines,
        Err(source) => match sqlite_primary_code(&source) {
            Some(SQLITE_NOTADB) => {
                return Err(StoreError::NotADatabase {
                    path: path.to_path_buf(),
                    source,
                })
            }
            // SQLite stops the check with an error when a page cannot be read at all (a
            // truncated file, a damaged page header): that is damage too.
            Some(SQLITE_CORRUPT | SQLITE_IOERR) => vec![source
                .as_database_error()
                .map(|error| error.message().to_string())
                .unwrap_or_else(|| source.to_string())],
            _ => return Err(open_error(path, source)),
        },
    };
    if findings.len() == 1 && findings[0] == "ok" {
        return Ok(());
    }
    let mut shown: Vec<String> = findings
        .iter()
        .take(DAMAGE_LINES_SHOWN)
        .map(|line| line.chars().take(200).collect())
        .collect();
    if findings.len() > DAMAGE_LINES_SHOWN {
        shown.push("…".to_string());
    }
    Err(StoreError::Damaged {
        path: path.to_path_buf(),
        findings: shown.join("; "),
    })
}

fn open_error(path: &Path, source: sqlx::Error) -> StoreError {
    match sqlite_primary_code(&source) {
        Some(SQLITE_NOTADB) => StoreError::NotADatabase {
            path: path.to_path_buf(),
            source,
        },
        Some(SQLITE_CORRUPT) => StoreError::Damaged {
            path: path.to_path_buf(),
            findings: source
                .as_database_error()
                .map(|error| error.message().to_string())
                .unwrap_or_else(|| source.to_string()),
        },
        _ => StoreError::Open {
            location: Box::new(StoreLocation::File(path.to_path_buf())),
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
    let columns = resolution_columns(resolution);
    let result = sqlx::query(
        "UPDATE people SET resolution = ?, primary_smtp = ?, source_user_id = ?, \
         resolution_error = ?, updated_at = ? WHERE source_id = ? AND address = ?",
    )
    .bind(columns.state)
    .bind(columns.primary_smtp)
    .bind(columns.source_user_id)
    .bind(columns.error)
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
    let mut found: HashMap<usize, i64> = HashMap::with_capacity(keys.len());
    for (chunk_number, chunk) in keys.chunks(KEYS_PER_LOOKUP).enumerate() {
        // Each key carries its position, so that the answer maps straight back to it.
        let sql = format!(
            "WITH wanted (position, source_id, address) AS (VALUES {}) \
             SELECT w.position, p.id FROM wanted w \
             JOIN people p ON p.source_id = w.source_id AND p.address = w.address",
            vec!["(?, ?, ?)"; chunk.len()].join(", ")
        );
        let first_position = chunk_number * KEYS_PER_LOOKUP;
        let mut query = sqlx::query(&sql);
        for (offset, key) in chunk.iter().enumerate() {
            query = query
                .bind(i64::try_from(first_position + offset).unwrap_or(i64::MAX))
                .bind(&key.source.0)
                .bind(key.address.as_str());
        }
        let rows = query.fetch_all(&mut *connection).await.map_err(|source| {
            StoreError::database(format!("{operation} for {} people", chunk.len()), source)
        })?;
        for row in &rows {
            let what = || "a person's id".to_string();
            let position: i64 = row.column("position", &what)?;
            let id: i64 = row.column("id", &what)?;
            if let Ok(position) = usize::try_from(position) {
                found.insert(position, id);
            }
        }
    }
    ids_in_order(&keys, &found, operation)
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
    if has_repeats(&ids) {
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
    let people_of =
        |first: &PersonKey, last: &PersonKey| people_range("replace appointments", first, last);
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
    let row = AppointmentRow::of(appointment);
    query
        .bind(person_id)
        .bind(row.id)
        .bind(row.start_at)
        .bind(row.end_at)
        .bind(row.first_day)
        .bind(row.end_day)
        .bind(row.show_as)
        .bind(row.sensitivity)
        .bind(row.subject)
        .bind(row.organizer)
        .bind(row.status)
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

    async fn set_rooms(
        &self,
        source: &SourceId,
        rooms: &[calbridge_domain::RoomInfo],
    ) -> Result<(), StoreError> {
        let failed =
            |error| StoreError::database(format!("set the rooms of source {source}"), error);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        sqlx::query(
            "DELETE FROM rooms WHERE person_id IN (SELECT id FROM people WHERE source_id = ?)",
        )
        .bind(&source.0)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        let now = Timestamp::now().as_second();
        for room in rooms {
            sqlx::query(
                "INSERT OR REPLACE INTO rooms (person_id, capacity, building, floor_number, \
                 floor_label, room_list, bookable, updated_at) \
                 SELECT id, ?, ?, ?, ?, ?, ?, ? FROM people WHERE source_id = ? AND address = ?",
            )
            .bind(room.capacity.map(i64::from))
            .bind(&room.building)
            .bind(room.floor_number.map(i64::from))
            .bind(&room.floor_label)
            .bind(&room.room_list)
            .bind(i64::from(room.bookable))
            .bind(now)
            .bind(&source.0)
            .bind(room.address.as_str())
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)
    }

    async fn list_rooms_with_appointments(
        &self,
    ) -> Result<Vec<(PersonKey, calbridge_domain::RoomInfo, Vec<Appointment>)>, StoreError> {
        // One row per room with its appointments packed as in `load_all_appointments`.
        let rows = sqlx::query(
            "SELECT p.source_id, p.address, p.display_name, r.capacity, r.building, \
             r.floor_number, r.floor_label, r.room_list, r.bookable, \
             (SELECT json_group_array(json_array(a.appointment_id, a.start_at, a.end_at, \
                     a.first_day, a.end_day, a.show_as, a.sensitivity, a.subject, a.organizer, \
                     a.status)) \
              FROM appointments a WHERE a.person_id = p.id) AS appointments \
             FROM rooms r JOIN people p ON p.id = r.person_id ORDER BY p.source_id, p.address",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|error| StoreError::database("list rooms with appointments".to_string(), error))?;
        rows.iter()
            .map(|row| {
                let bookable: i64 = row.column("bookable", &|| "a room".to_string())?;
                let (key, room) = crate::codec::decode_room(row, bookable != 0)?;
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
                let bookable: i64 = row.column("bookable", &|| "a room".to_string())?;
                crate::codec::decode_room(row, bookable != 0)
            })
            .collect()
    }

    async fn claim_room_meeting(
        &self,
        key: &PersonKey,
        record: &crate::RoomCheckIn,
    ) -> Result<bool, StoreError> {
        let failed = |error| StoreError::database(format!("record a room meeting of {key}"), error);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        let person = require_person_id(&mut *tx, key, "record a room meeting").await?;
        let written = write_room_meeting(&mut tx, person, record, true)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(written)
    }

    async fn set_room_meeting(
        &self,
        key: &PersonKey,
        record: &crate::RoomCheckIn,
    ) -> Result<(), StoreError> {
        let failed = |error| StoreError::database(format!("record a room meeting of {key}"), error);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        let person = require_person_id(&mut *tx, key, "record a room meeting").await?;
        write_room_meeting(&mut tx, person, record, false)
            .await
            .map_err(failed)?;
        tx.commit().await.map_err(failed)
    }

    async fn list_room_meetings(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(PersonKey, crate::RoomCheckIn)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM room_check_ins c JOIN people p ON p.id = c.person_id \
             WHERE c.meeting_end > ? ORDER BY c.meeting_start, p.source_id, p.address",
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
            let json: String = row.column("appointments", &|| format!("appointments of {key}"))?;
            let appointments = decode_appointment_list(&json, &key)?;
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
             FROM sync_state s JOIN people p ON p.id = s.person_id WHERE p.source_id = ?",
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
             WHERE p.source_id = ? AND s.subscription_id = ?",
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
        let failed = |source| StoreError::database(format!("save sync state of {key}"), source);
        let client_state_sealed = seal_client_state(&self.key, key, state)?;
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
            .map(|(key, state)| seal_client_state(&self.key, key, state))
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
        decode_source_state(&row, source)
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
        let sealed = seal_named_secret(&self.key, name, secret)?;
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
        open_named_secret(&self.key, name, &sealed).map(Some)
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

    async fn save_sip_publications(
        &self,
        publications: &[SipPublication],
    ) -> Result<(), StoreError> {
        if publications.is_empty() {
            return Ok(());
        }
        let operation = || format!("save {} SIP publications", publications.len());
        let failed = |source| StoreError::database(operation(), source);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await.map_err(failed)?;
        for publication in publications {
            match &publication.etag {
                Some(etag) => sqlx::query(
                    "INSERT INTO sip_publications (uri, etag, expires_at_ms) VALUES (?, ?, ?) \
                     ON CONFLICT (uri) DO UPDATE SET etag = excluded.etag, \
                     expires_at_ms = excluded.expires_at_ms",
                )
                .bind(&publication.uri)
                .bind(etag)
                .bind(publication.expires_at.as_millisecond()),
                None => {
                    sqlx::query("DELETE FROM sip_publications WHERE uri = ?").bind(&publication.uri)
                }
            }
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)
    }

    async fn load_sip_publication(&self, uri: &str) -> Result<Option<SipPublication>, StoreError> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT etag, expires_at_ms FROM sip_publications WHERE uri = ?")
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
            "SELECT uri, etag, expires_at_ms FROM sip_publications WHERE expires_at_ms > ? ORDER BY uri",
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

/// Writes a room meeting's record: with `claim`, only where the meeting has none or a failed
/// release (answering whether it wrote); otherwise whatever it held. Drops the records of
/// meetings that ended a week before this one.
async fn write_room_meeting(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    person: i64,
    record: &crate::RoomCheckIn,
    claim: bool,
) -> Result<bool, sqlx::Error> {
    let condition = if claim {
        "WHERE room_check_ins.state = 'release_failed'"
    } else {
        ""
    };
    let written = sqlx::query(&format!(
        "INSERT INTO room_check_ins (person_id, appointment_id, meeting_start, meeting_end, \
         state, at, detail) VALUES (?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (person_id, appointment_id, meeting_start) DO UPDATE SET \
         meeting_end = excluded.meeting_end, state = excluded.state, at = excluded.at, \
         detail = excluded.detail {condition}"
    ))
    .bind(person)
    .bind(&record.appointment_id)
    .bind(record.meeting_start.as_second())
    .bind(record.meeting_end.as_second())
    .bind(record.state.as_str())
    .bind(record.at.as_second())
    .bind(&record.detail)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM room_check_ins WHERE meeting_end < ?")
        .bind(record.meeting_end.as_second() - crate::codec::ROOM_CHECK_INS_KEPT_SECONDS)
        .execute(&mut **tx)
        .await?;
    Ok(written > 0)
}
