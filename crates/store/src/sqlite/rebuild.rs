//! `calbridge run --rebuild-store`: a damaged SQLite file is set aside (kept, never deleted)
//! and a new store takes its place, with the sealed secrets that can still be read from the old
//! one. Everything else (people, calendars, cursors, subscriptions) is read again from the
//! directory and the sources, which a start does anyway; subscriptions the old file knew are
//! then orphans at Graph, and the Graph source deletes those at start.

use std::path::{Path, PathBuf};

use calbridge_domain::Secret;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};

use super::{lock, SqliteStore};
use crate::codec::open_named_secret;
use crate::{SecretKey, Store, StoreError, StoreLocation};

/// More rows than any `secrets` table holds (a handful of names per source): a damaged page
/// that claims a huge row id must not keep the salvage going for ever.
const MAX_SECRET_ROWS: i64 = 10_000;

/// What a rebuild did.
#[derive(Debug, Default)]
pub struct Rebuilt {
    /// Where the old file was moved; `None` when there was no file to rebuild.
    pub set_aside: Option<PathBuf>,
    /// The names of the secrets copied into the new store.
    pub kept: Vec<String>,
    /// The secrets that could not be copied: their names, or `row N` when even the name
    /// was unreadable.
    pub lost: Vec<String>,
    /// Why the old file's secrets could not be listed at all, if they could not.
    pub unreadable: Option<String>,
}

impl SqliteStore {
    /// Sets the file at `path` aside as `<path>.damaged-<UTC instant>` (with its write-ahead
    /// log), creates a new store at `path`, and copies into it, row by row, every sealed secret
    /// of the old file that `key` still opens. The new store is closed again: the caller opens
    /// it as on any start.
    ///
    /// Fails with [`StoreError::InUse`] while another process has the store open.
    pub async fn rebuild(path: impl AsRef<Path>, key: SecretKey) -> Result<Rebuilt, StoreError> {
        let path = path.as_ref().to_path_buf();
        let lock = lock::lock(&path)?;
        if !path.exists() {
            return Ok(Rebuilt::default());
        }
        let aside = set_aside(&path)?;
        let (secrets, mut rebuilt) = salvage_secrets(&aside, &key).await;
        let store = SqliteStore::open_locked(path, key, lock).await?;
        for (name, secret) in secrets {
            match store.put_secret(&name, &secret).await {
                Ok(()) => rebuilt.kept.push(name),
                Err(_) => rebuilt.lost.push(name),
            }
        }
        store.close().await;
        rebuilt.set_aside = Some(aside);
        Ok(rebuilt)
    }
}

/// `<path>.damaged-20261204T134500Z` (a counter after it if that exists too).
fn aside_path(path: &Path) -> PathBuf {
    let instant = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let mut candidate = with_suffix(path, &format!(".damaged-{instant}"));
    let mut counter = 1;
    while candidate.exists() {
        counter += 1;
        candidate = with_suffix(path, &format!(".damaged-{instant}-{counter}"));
    }
    candidate
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Moves the database and its write-ahead log aside under the same new name, so that SQLite
/// still finds the log beside the old file. The shared-memory index is only a cache of the log
/// and is removed: SQLite builds it again when the old file is opened.
fn set_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let aside = aside_path(path);
    let move_error = |error: std::io::Error| StoreError::Open {
        location: Box::new(StoreLocation::File(path.to_path_buf())),
        source: sqlx::Error::Io(std::io::Error::new(
            error.kind(),
            format!("cannot move the damaged file aside: {error}"),
        )),
    };
    std::fs::rename(path, &aside).map_err(move_error)?;
    let wal = with_suffix(path, "-wal");
    if wal.exists() {
        std::fs::rename(&wal, with_suffix(&aside, "-wal")).map_err(move_error)?;
    }
    let _ = std::fs::remove_file(with_suffix(path, "-shm"));
    Ok(aside)
}

/// The secrets of the old file that `key` opens, read one row at a time so that one damaged
/// page loses the rows on it, not the whole table.
async fn salvage_secrets(aside: &Path, key: &SecretKey) -> (Vec<(String, Secret)>, Rebuilt) {
    let mut rebuilt = Rebuilt::default();
    let mut secrets = Vec::new();
    let options = SqliteConnectOptions::new()
        .filename(aside)
        .create_if_missing(false);
    let mut connection: SqliteConnection = match options.connect().await {
        Ok(connection) => connection,
        Err(error) => {
            rebuilt.unreadable = Some(error.to_string());
            return (secrets, rebuilt);
        }
    };
    let highest: Result<Option<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT MAX(rowid) FROM secrets")
            .fetch_one(&mut connection)
            .await;
    let highest = match highest {
        Ok(highest) => highest.unwrap_or(0).min(MAX_SECRET_ROWS),
        Err(error) => {
            rebuilt.unreadable = Some(error.to_string());
            let _ = connection.close().await;
            return (secrets, rebuilt);
        }
    };
    for row in 1..=highest {
        let found: Result<Option<(String, Vec<u8>)>, sqlx::Error> =
            sqlx::query_as("SELECT name, sealed FROM secrets WHERE rowid = ?")
                .bind(row)
                .fetch_optional(&mut connection)
                .await;
        match found {
            Ok(None) => {}
            Ok(Some((name, sealed))) => match open_named_secret(key, &name, &sealed) {
                Ok(secret) => secrets.push((name, secret)),
                Err(_) => rebuilt.lost.push(name),
            },
            Err(_) => rebuilt.lost.push(format!("row {row}")),
        }
    }
    let _ = connection.close().await;
    (secrets, rebuilt)
}
