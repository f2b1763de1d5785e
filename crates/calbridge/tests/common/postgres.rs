//! A PostgreSQL database of a test's own (`calbridge_store::scratch`, which the benchmark uses
//! too), on the server of `CALBRIDGE_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) or a test's own server, dropped when the test
//! ends (also when it fails). Without a server the test says it skipped, unless
//! `CALBRIDGE_REQUIRE_SERVICES=1` makes that a failure.

use calbridge_store::scratch::{server_url_from_env, ScratchDatabase, ScratchError};

pub type Database = ScratchDatabase;

/// Whether a missing service fails the test instead of skipping it.
pub fn services_required() -> bool {
    std::env::var("CALBRIDGE_REQUIRE_SERVICES").as_deref() == Ok("1")
}

pub fn server_url() -> String {
    server_url_from_env()
}

/// A new, empty database named `{prefix}_{random}` on the test server.
pub async fn database(prefix: &str) -> Option<Database> {
    database_on(&server_url(), prefix).await
}

/// The same on `server` (a test's own server).
pub async fn database_on(server: &str, prefix: &str) -> Option<Database> {
    match ScratchDatabase::create(server, prefix).await {
        Ok(database) => Some(database),
        Err(error @ ScratchError::Unreachable { .. }) => {
            assert!(
                !services_required(),
                "CALBRIDGE_REQUIRE_SERVICES=1 but {error}"
            );
            eprintln!("skipped: {error}");
            None
        }
        Err(error) => panic!("{error}"),
    }
}
