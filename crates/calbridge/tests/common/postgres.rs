//! A PostgreSQL database of a test's own, on the server of `CALBRIDGE_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped when the test ends (also when it
//! fails). Without a server the test says it skipped, unless `CALBRIDGE_REQUIRE_SERVICES=1`
//! makes that a failure.

use std::time::Duration;

use sqlx::Connection;

pub fn server_url() -> String {
    std::env::var("CALBRIDGE_TEST_POSTGRES")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Whether a missing service fails the test instead of skipping it.
pub fn services_required() -> bool {
    std::env::var("CALBRIDGE_REQUIRE_SERVICES").as_deref() == Ok("1")
}

pub struct Database {
    server: String,
    name: String,
}

impl Database {
    /// A new, empty database named `{prefix}_{pid}_{n}`; `None` (the test skips) when the
    /// server does not answer and services are not required.
    pub async fn create(prefix: &str) -> Option<Database> {
        Database::create_on(&server_url(), prefix).await
    }

    /// The same on the server of `server` (a test's own server).
    pub async fn create_on(server: &str, prefix: &str) -> Option<Database> {
        let server = server.to_string();
        let connected =
            tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&server))
                .await;
        let mut admin = match connected {
            Ok(Ok(connection)) => connection,
            other => {
                let why = match other {
                    Ok(Err(error)) => error.to_string(),
                    _ => "no answer within 5 s".to_string(),
                };
                assert!(
                    !services_required(),
                    "CALBRIDGE_REQUIRE_SERVICES=1 but PostgreSQL does not answer: {why}"
                );
                eprintln!(
                    "skipped: PostgreSQL does not answer ({why}); set CALBRIDGE_TEST_POSTGRES"
                );
                return None;
            }
        };
        // The process id and a count: the tests of a file run side by side.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        Some(Database { server, name })
    }

    pub fn url(&self) -> String {
        let (base, _) = self.server.rsplit_once('/').expect("a URL with a database");
        format!("{base}/{}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Dropped on a thread of its own: the test's runtime may be going away.
        let server = self.server.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let connected = tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::PgConnection::connect(&server),
                )
                .await;
                if let Ok(Ok(mut admin)) = connected {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                }
            });
        })
        .join();
    }
}
