//! The schema migrations, compiled into the binary.
//!
//! The files in `crates/store/migrations/` keep sqlx-cli's naming (`NNNN_description.sql`), but
//! they are embedded with `include_str!` and handed to sqlx as a [`MigrationSource`] instead of
//! through `sqlx::migrate!`: that macro needs sqlx's `macros` feature, which compiles a second
//! copy of SQLite and sqlx for the build host in every crate that depends on the store. The
//! result is the same: a `_sqlx_migrations` table with sqlx's checksums, so sqlx-cli can still
//! inspect a calbridge database. A test checks that every file in the folder is listed here.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType};

/// `(version, description, sql)`, in order. Append only: an applied migration that changes
/// fails every existing database's start-up with a checksum mismatch.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "initial", include_str!("../migrations/0001_initial.sql"))];

/// The newest schema version this build knows.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS
        .iter()
        .map(|(version, _, _)| *version)
        .max()
        .unwrap_or(0)
}

#[derive(Debug)]
pub(crate) struct EmbeddedMigrations;

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_with_its_version_and_description() {
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|(version, description, _)| format!("{version:04}_{description}.sql"))
            .collect();
        assert_eq!(files, embedded);
    }
}
