//! The schema migrations of each backend, compiled into the binary.
//!
//! The files in `crates/store/migrations/sqlite/` and `crates/store/migrations/postgres/` keep
//! sqlx-cli's naming (`NNNN_description.sql`), but they are embedded with `include_str!` and
//! handed to sqlx as a [`MigrationSource`] instead of through `sqlx::migrate!`: that macro
//! needs sqlx's `macros` feature, which compiles a second copy of SQLite and sqlx for the build
//! host in every crate that depends on the store. The result is the same: a
//! `_sqlx_migrations` table with sqlx's checksums, so sqlx-cli can still inspect a calbridge
//! database. A test checks that every file in each folder is listed here.
//!
//! Both backends number their schema versions alike: version N of the SQLite schema and
//! version N of the PostgreSQL schema store the same records.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType};

/// `(version, description, sql)`, in order. Append only: an applied migration that changes
/// fails every existing database's start-up with a checksum mismatch.
type Migrations = &'static [(i64, &'static str, &'static str)];

pub(crate) const SQLITE: Migrations = &[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "cluster",
        include_str!("../migrations/sqlite/0002_cluster.sql"),
    ),
    (
        3,
        "sip_publications",
        include_str!("../migrations/sqlite/0003_sip_publications.sql"),
    ),
    (
        4,
        "presence_feed",
        include_str!("../migrations/sqlite/0004_presence_feed.sql"),
    ),
    (
        5,
        "rooms",
        include_str!("../migrations/sqlite/0005_rooms.sql"),
    ),
    (
        6,
        "room_check_ins",
        include_str!("../migrations/sqlite/0006_room_check_ins.sql"),
    ),
];

pub(crate) const POSTGRES: Migrations = &[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "cluster",
        include_str!("../migrations/postgres/0002_cluster.sql"),
    ),
    (
        3,
        "sip_publications",
        include_str!("../migrations/postgres/0003_sip_publications.sql"),
    ),
    (
        4,
        "presence_feed",
        include_str!("../migrations/postgres/0004_presence_feed.sql"),
    ),
    (
        5,
        "rooms",
        include_str!("../migrations/postgres/0005_rooms.sql"),
    ),
    (
        6,
        "room_check_ins",
        include_str!("../migrations/postgres/0006_room_check_ins.sql"),
    ),
];

/// The newest schema version this build knows of `migrations`.
pub(crate) fn latest_version(migrations: Migrations) -> i64 {
    migrations
        .iter()
        .map(|(version, _, _)| *version)
        .max()
        .unwrap_or(0)
}

#[derive(Debug)]
pub(crate) struct EmbeddedMigrations(pub Migrations);

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = self
            .0
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

    fn files_in(folder: &str) -> Vec<String> {
        let folder = format!("{}/migrations/{folder}", env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        files
    }

    fn embedded(migrations: Migrations) -> Vec<String> {
        migrations
            .iter()
            .map(|(version, description, _)| format!("{version:04}_{description}.sql"))
            .collect()
    }

    #[test]
    fn every_migration_file_is_embedded_with_its_version_and_description() {
        assert_eq!(files_in("sqlite"), embedded(SQLITE));
        assert_eq!(files_in("postgres"), embedded(POSTGRES));
    }

    #[test]
    fn both_backends_know_the_same_schema_versions() {
        let versions = |migrations: Migrations| -> Vec<(i64, &str)> {
            migrations
                .iter()
                .map(|(version, description, _)| (*version, *description))
                .collect()
        };
        assert_eq!(versions(SQLITE), versions(POSTGRES));
        assert_eq!(latest_version(SQLITE), latest_version(POSTGRES));
    }
}
