use std::fmt;
use std::path::PathBuf;

use crate::PersonKey;

/// Where a store lives, as error messages name it: a file, or a PostgreSQL database named by
/// its server and database, never by its URL (which may hold a password).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreLocation {
    /// An SQLite file (`:memory:` for a private in-memory database).
    File(PathBuf),
    Postgres {
        /// Host name, or the folder of a Unix socket.
        host: String,
        port: u16,
        database: String,
        user: String,
    },
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::File(path) => write!(f, "{}", path.display()),
            StoreLocation::Postgres {
                host,
                port,
                database,
                user,
            } => write!(
                f,
                "PostgreSQL database `{database}` on {host}:{port} (user {user})"
            ),
        }
    }
}

/// Everything that can go wrong in the store.
///
/// Messages name the operation and the person or field, and never contain a secret: sealed
/// values are only ever named, a PostgreSQL URL is shown without its password, and the
/// databases' own messages carry column names, not bound values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open the store at {location}: {source}")]
    Open {
        location: Box<StoreLocation>,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "{path} is not a calbridge store or is damaged ({source}): \
         point the configuration at the right file, restore it from a backup, or run \
         `calbridge run --rebuild-store` to set it aside and build a new store from the sources"
    )]
    NotADatabase {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },

    /// SQLite's `quick_check` found damage (or could not read the file to the end).
    #[error(
        "the store {path} is damaged; SQLite's integrity check says: {findings}. \
         Run `calbridge run --rebuild-store` to set the damaged file aside and build a new \
         store (people and calendars are read again from the sources, the sealed secrets that \
         can still be read are kept), or stop calbridge and restore the file from a backup"
    )]
    Damaged {
        path: PathBuf,
        /// The first lines of the check, joined with "; ".
        findings: String,
    },

    /// The key file is missing but the store holds values sealed with a key.
    #[error(
        "the store key {key_path} is missing, but the store at {location} holds {n_sealed} \
         secret(s) sealed with a key: a new key would make them unreadable, so none is made. \
         Restore the key file from where you keep it (it is deliberately not beside the \
         database's backups), or {way_out}"
    )]
    KeyMissing {
        key_path: PathBuf,
        location: Box<StoreLocation>,
        n_sealed: u64,
        /// What to run to give the sealed secrets up, which depends on the backend.
        way_out: &'static str,
    },

    #[error(
        "the store at {location} has schema version {found}, newer than version {supported} \
         that this calbridge knows: run the calbridge version that last wrote it, or a newer one"
    )]
    SchemaTooNew {
        location: Box<StoreLocation>,
        found: i64,
        supported: i64,
    },

    #[error("cannot bring the schema of the store at {location} up to date: {source}")]
    Migrate {
        location: Box<StoreLocation>,
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    #[error(
        "the store {path} is used by another calbridge process ({holder}, holding {lock_file}): \
         stop that process, or give this one its own [store] path; two processes on one file \
         would both sync and publish the same people"
    )]
    InUse {
        path: PathBuf,
        lock_file: PathBuf,
        /// "pid N" as the holder wrote it into the lock file, or "pid unknown".
        holder: String,
    },

    #[error("cannot lock the store {path} through {lock_file}: {source}")]
    Lock {
        path: PathBuf,
        lock_file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "store url {url} is not a PostgreSQL URL ({reason}): \
         write it as postgres://user:password@host:5432/database"
    )]
    InvalidUrl {
        /// The URL with its password replaced by `***`.
        url: String,
        reason: String,
    },

    #[error("store: {operation} failed: {source}")]
    Database {
        operation: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("store: cannot {operation}: {person} is not in the store (upsert the person first)")]
    PersonNotFound {
        operation: &'static str,
        person: PersonKey,
    },

    #[error(
        "store: {} belong to shards this instance no longer holds (another instance claimed \
         them); nothing was written, their new owner writes them",
        people_list(people)
    )]
    Fenced { people: Vec<PersonKey> },

    #[error("store: {what} holds an unreadable {field} value: {reason}")]
    InvalidRow {
        what: String,
        field: &'static str,
        reason: String,
    },

    #[error(
        "secret {name} cannot be decrypted with this key: the store's key changed since the \
         secret was written; use the old key file or variable, or run `calbridge run \
         --rebuild-store`, which keeps the secrets this key opens and makes the others anew"
    )]
    SecretUndecryptable { name: String },

    #[error("secret {name} cannot be encrypted: {reason}")]
    SecretUnencryptable { name: String, reason: String },

    #[error("cannot read the store key from file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },

    #[error(
        "the store key {path} can be read by other users (mode {mode:o}): run `chmod 600 {path}` \
         (and check who could have read it meanwhile)"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },

    #[error("cannot read the store key from environment variable {variable}: {reason}")]
    KeyVariable { variable: String, reason: String },

    #[error("cannot write a new store key to {path}: {reason}")]
    KeyGenerate { path: PathBuf, reason: String },
}

impl StoreError {
    /// Whether trying the same operation again later can succeed: the database was busy or
    /// locked by another writer, a PostgreSQL transaction lost a race (deadlock, serialization
    /// failure), or no connection was free in time.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database { source, .. } | StoreError::Open { source, .. } => {
                is_busy_or_locked(source)
            }
            _ => false,
        }
    }

    /// Built inside `map_err` closures so that the operation text is only formatted on failure.
    pub(crate) fn database(operation: String, source: sqlx::Error) -> Self {
        StoreError::Database { operation, source }
    }
}

/// SQLite's primary result codes live in the low byte of the extended code sqlx reports.
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
pub(crate) const SQLITE_CORRUPT: i64 = 11;
pub(crate) const SQLITE_NOTADB: i64 = 26;

/// PostgreSQL's SQLSTATEs for a transaction that lost a race and may simply be tried again:
/// serialization_failure, deadlock_detected, lock_not_available, and the server refusing
/// connections for a while (too_many_connections, cannot_connect_now).
const POSTGRES_RETRYABLE: &[&str] = &["40001", "40P01", "55P03", "53300", "57P03"];

pub(crate) fn sqlite_primary_code(error: &sqlx::Error) -> Option<i64> {
    let database_error = error.as_database_error()?;
    database_error.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    let code = database_error.code()?;
    code.parse::<i64>().ok().map(|extended| extended & 0xff)
}

fn postgres_code(error: &sqlx::Error) -> Option<&str> {
    let database_error = error.as_database_error()?;
    let postgres_error = database_error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
    Some(postgres_error.code())
}

fn is_busy_or_locked(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut => true,
        other => {
            matches!(
                sqlite_primary_code(other),
                Some(SQLITE_BUSY | SQLITE_LOCKED)
            ) || postgres_code(other).is_some_and(|code| POSTGRES_RETRYABLE.contains(&code))
        }
    }
}

/// "ada@… (mail)" for one person, "3 people (ada@…, …)" for more; a few names at most.
fn people_list(people: &[PersonKey]) -> String {
    const NAMED: usize = 3;
    let named: Vec<String> = people.iter().take(NAMED).map(ToString::to_string).collect();
    match people.len() {
        1 => named.join(""),
        n if n <= NAMED => format!("{n} people ({})", named.join(", ")),
        n => format!("{n} people ({}, …)", named.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_timeout_is_retryable_and_a_missing_person_is_not() {
        let timed_out =
            StoreError::database("save presence".to_string(), sqlx::Error::PoolTimedOut);
        assert!(timed_out.is_retryable());
        let missing = StoreError::SecretUndecryptable {
            name: "x".to_string(),
        };
        assert!(!missing.is_retryable());
        let closed = StoreError::database("save presence".to_string(), sqlx::Error::PoolClosed);
        assert!(!closed.is_retryable());
    }
}
