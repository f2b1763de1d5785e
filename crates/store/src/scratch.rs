//! A PostgreSQL database of one's own for a test or a benchmark run: created with a random
//! name on a server, dropped at the end (also when the run fails or panics).
//!
//! The server comes from `CALBRIDGE_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, the project's machines' server) unless the
//! caller names one. The user needs the right to create databases.

use std::time::Duration;

use sqlx::Connection;

use crate::postgres::redact_url;

/// The environment variable naming the PostgreSQL server of tests and benchmarks.
pub const SERVER_ENV: &str = "CALBRIDGE_TEST_POSTGRES";
/// The server used when `CALBRIDGE_TEST_POSTGRES` is not set.
pub const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server of `CALBRIDGE_TEST_POSTGRES`, or the default.
pub fn server_url_from_env() -> String {
    std::env::var(SERVER_ENV)
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVER.to_string())
}

/// Why no scratch database could be made.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The server does not answer or refuses the login: tests skip on this one.
    #[error("PostgreSQL at {server} does not answer ({reason}): start it, or name a server with {SERVER_ENV} (or the command's --postgres-url)")]
    Unreachable { server: String, reason: String },
    /// The server answered but the database could not be made.
    #[error(
        "cannot create a database on PostgreSQL at {server}: {reason} (the user needs CREATEDB)"
    )]
    Create { server: String, reason: String },
    /// The server URL has no database part to replace.
    #[error("{server} is not a PostgreSQL URL of the form postgres://user@host:port/database")]
    BadUrl { server: String },
}

/// A database with a random name, dropped by [`ScratchDatabase::drop_now`] or, failing
/// that, when the value is dropped.
#[derive(Debug)]
pub struct ScratchDatabase {
    server: String,
    name: String,
    dropped: bool,
}

impl ScratchDatabase {
    /// Creates `{prefix}_{random}` on `server` (a URL whose database the connection to make it
    /// goes to, usually `postgres`). Gives up after 5 s without an answer.
    pub async fn create(server: &str, prefix: &str) -> Result<ScratchDatabase, ScratchError> {
        let shown = redact_url(server);
        split_database(server).ok_or_else(|| ScratchError::BadUrl {
            server: shown.clone(),
        })?;
        let connected =
            tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(server)).await;
        let mut admin = match connected {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                return Err(ScratchError::Unreachable {
                    server: shown,
                    reason: error.to_string(),
                })
            }
            Err(_) => {
                return Err(ScratchError::Unreachable {
                    server: shown,
                    reason: "no answer within 5 s".to_string(),
                })
            }
        };
        let name = format!("{prefix}_{}", random_suffix());
        let created = sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await;
        let _ = admin.close().await;
        if let Err(error) = created {
            return Err(ScratchError::Create {
                server: shown,
                reason: error.to_string(),
            });
        }
        Ok(ScratchDatabase {
            server: server.to_string(),
            name,
            dropped: false,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the database (the server's URL with the database replaced; its query, such
    /// as `sslmode`, kept).
    pub fn url(&self) -> String {
        match split_database(&self.server) {
            Some((base, query)) => format!("{base}/{}{query}", self.name),
            None => self.server.clone(),
        }
    }

    /// Drops the database, ending any connection still open to it.
    pub async fn drop_now(mut self) {
        drop_database(&self.server, &self.name).await;
        self.dropped = true;
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // On a thread of its own with its own runtime: the caller's runtime may be going
        // away (a failing test unwinds through here).
        let server = self.server.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(drop_database(&server, &name));
        })
        .join();
    }
}

async fn drop_database(server: &str, name: &str) {
    let connected =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(server)).await;
    if let Ok(Ok(mut admin)) = connected {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        let _ = admin.close().await;
    }
}

/// `postgres://user@host:5432/postgres?sslmode=x` → (`postgres://user@host:5432`, `?sslmode=x`).
fn split_database(server: &str) -> Option<(&str, &str)> {
    let (without_query, query) = match server.find('?') {
        Some(at) => server.split_at(at),
        None => (server, ""),
    };
    let after_scheme = without_query.find("://")? + 3;
    let slash = without_query[after_scheme..].rfind('/')? + after_scheme;
    Some((&without_query[..slash], query))
}

/// 16 hex digits from the system's random source, with the time as a fallback so that a
/// broken random source still gives distinct names.
fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        bytes.copy_from_slice(&(nanos as u64 ^ u64::from(std::process::id())).to_le_bytes());
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::split_database;

    #[test]
    fn the_database_part_of_a_server_url_is_found_with_its_query_kept_apart() {
        assert_eq!(
            split_database("postgres://postgres@127.0.0.1:5432/postgres"),
            Some(("postgres://postgres@127.0.0.1:5432", ""))
        );
        assert_eq!(
            split_database("postgres://u:p@db/x?sslmode=require"),
            Some(("postgres://u:p@db", "?sslmode=require"))
        );
        assert_eq!(split_database("postgres://host-without-database"), None);
    }
}
