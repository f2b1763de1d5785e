//! One harness, two stores: every test of the store contract runs against SQLite and against
//! PostgreSQL through [`Backend`], and [`on_each_backend!`] makes a `sqlite::…` and a
//! `postgres::…` test of each.
//!
//! PostgreSQL is the server of `CALBRIDGE_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Each store gets a database of its own,
//! `calbridge_test_<random hex>`, dropped when the last handle on it goes, also when the test
//! fails. When the server does not answer, the PostgreSQL tests say they skipped and pass,
//! unless `CALBRIDGE_REQUIRE_SERVICES=1` (as in CI), where they fail naming the URL.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use calbridge_store::{
    redact_url, PostgresStore, PostgresUrl, SecretKey, SqliteStore, Store, StoreError,
};
use sqlx::{Connection, Row};

pub const DEFAULT_TEST_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Makes `sqlite::name` and `postgres::name` tests of each `async fn name(backend: Backend)`.
#[allow(unused_macros)]
macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(crate::common::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    if let Some(backend) = crate::common::Backend::postgres().await {
                        super::$test(backend).await;
                    }
                }
            )*
        }
    };
}

/// Which database a test runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A file in a temporary folder (a file rather than `:memory:`, so that it can be reopened
    /// and inspected like a PostgreSQL database).
    Sqlite,
    /// A server, by the URL of a database to connect to for creating and dropping others.
    Postgres { server_url: String },
}

impl Backend {
    /// The PostgreSQL server of `CALBRIDGE_TEST_POSTGRES`, or `None` after saying why the test
    /// skips; panics instead when `CALBRIDGE_REQUIRE_SERVICES=1`.
    pub async fn postgres() -> Option<Backend> {
        let server_url = std::env::var("CALBRIDGE_TEST_POSTGRES")
            .ok()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| DEFAULT_TEST_POSTGRES.to_string());
        match connect(&server_url).await {
            Ok(connection) => {
                let _ = connection.close().await;
                Some(Backend::Postgres { server_url })
            }
            Err(error) => {
                let url = redact_url(&server_url);
                if std::env::var("CALBRIDGE_REQUIRE_SERVICES").as_deref() == Ok("1") {
                    panic!(
                        "CALBRIDGE_REQUIRE_SERVICES=1 but PostgreSQL at {url} does not answer \
                         ({error}): start it, or point CALBRIDGE_TEST_POSTGRES at a server"
                    );
                }
                eprintln!(
                    "skipped: PostgreSQL at {url} does not answer ({error}); set \
                     CALBRIDGE_TEST_POSTGRES to a server's URL to run the PostgreSQL tests"
                );
                None
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres { .. } => "PostgreSQL",
        }
    }

    /// A new, empty database of this backend.
    pub async fn new_database(&self) -> Arc<TestDatabase> {
        Arc::new(match self {
            Backend::Sqlite => {
                let directory = tempfile::tempdir().unwrap();
                let path = directory.path().join("calbridge.sqlite");
                TestDatabase::Sqlite {
                    _directory: directory,
                    path,
                }
            }
            Backend::Postgres { server_url } => {
                let name = format!("calbridge_test_{}", random_hex());
                let mut admin = connect(server_url).await.unwrap();
                // An ICU English collation, where "tenant-a" sorts before "Tenant-B", so that
                // the tests notice an ORDER BY that depends on the database's collation
                // (SQLite compares bytes). A server built without ICU gets its default.
                let icu = sqlx::query(&format!(
                    "CREATE DATABASE \"{name}\" TEMPLATE template0 \
                     LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
                ))
                .execute(&mut admin)
                .await;
                if icu.is_err() {
                    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                        .execute(&mut admin)
                        .await
                        .unwrap();
                }
                // Commits need not wait for the disk in a database that is dropped in a moment.
                sqlx::query(&format!(
                    "ALTER DATABASE \"{name}\" SET synchronous_commit = off"
                ))
                .execute(&mut admin)
                .await
                .unwrap();
                let _ = admin.close().await;
                let url_text = with_database(server_url, &name);
                TestDatabase::Postgres {
                    server_url: server_url.clone(),
                    url: PostgresUrl::parse(&url_text).unwrap(),
                    url_text,
                    name,
                }
            }
        })
    }

    /// A store on a new, empty database, with a new key.
    pub async fn fresh_store(&self) -> TestStore {
        self.new_database()
            .await
            .open(SecretKey::generate())
            .await
            .unwrap()
    }
}

/// A database made for one test; a PostgreSQL database is dropped with the last handle.
// Made once per store, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum TestDatabase {
    Sqlite {
        _directory: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        server_url: String,
        name: String,
        url: PostgresUrl,
        /// The same URL as text, for the tests' own connections.
        url_text: String,
    },
}

impl TestDatabase {
    /// Opens a store on this database; several may be open at once on PostgreSQL.
    pub async fn open(self: &Arc<Self>, key: SecretKey) -> Result<TestStore, StoreError> {
        let store = match self.as_ref() {
            TestDatabase::Sqlite { path, .. } => {
                AnyStore::Sqlite(SqliteStore::open(path, key).await?)
            }
            TestDatabase::Postgres { url, .. } => {
                AnyStore::Postgres(PostgresStore::open(url, key).await?)
            }
        };
        Ok(TestStore {
            store,
            database: self.clone(),
        })
    }

    /// The SQLite file, for the tests that are about files.
    pub fn sqlite_path(&self) -> Option<&PathBuf> {
        match self {
            TestDatabase::Sqlite { path, .. } => Some(path),
            TestDatabase::Postgres { .. } => None,
        }
    }

    /// The PostgreSQL URL of this database.
    pub fn postgres_url(&self) -> Option<&PostgresUrl> {
        match self {
            TestDatabase::Sqlite { .. } => None,
            TestDatabase::Postgres { url, .. } => Some(url),
        }
    }

    /// Every row of `sql`, each column read as text (cast in the SQL where needed), through a
    /// connection of its own: what is in the database, not what the store says.
    pub async fn rows_as_text(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self {
            TestDatabase::Sqlite { path, .. } => {
                let mut connection =
                    sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
                        .await
                        .unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut connection).await.unwrap();
                let _ = connection.close().await;
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|column| row.try_get::<Option<String>, _>(column).unwrap())
                            .collect()
                    })
                    .collect()
            }
            TestDatabase::Postgres { url_text, .. } => {
                let mut connection = connect(url_text).await.unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut connection).await.unwrap();
                let _ = connection.close().await;
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|column| row.try_get::<Option<String>, _>(column).unwrap())
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// The number of rows in `table`.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let rows = self
            .rows_as_text(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"))
            .await;
        rows[0][0].as_deref().unwrap().parse().unwrap()
    }

    /// Runs `sql` through a connection of its own.
    pub async fn execute(&self, sql: &str) {
        match self {
            TestDatabase::Sqlite { path, .. } => {
                let mut connection =
                    sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
                        .await
                        .unwrap();
                sqlx::query(sql).execute(&mut connection).await.unwrap();
                let _ = connection.close().await;
            }
            TestDatabase::Postgres { url_text, .. } => {
                let mut connection = connect(url_text).await.unwrap();
                sqlx::query(sql).execute(&mut connection).await.unwrap();
                let _ = connection.close().await;
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let TestDatabase::Postgres {
            server_url, name, ..
        } = self
        else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread with a
        // runtime of its own drops the database. FORCE ends the sessions of stores still open.
        let (server_url, database) = (server_url.clone(), name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime.block_on(async {
                let mut admin = connect(&server_url).await.map_err(|e| e.to_string())?;
                sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                ))
                .execute(&mut admin)
                .await
                .map_err(|error| error.to_string())?;
                let _ = admin.close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop test database {name}: {error}"),
            Err(_) => {
                eprintln!("could not drop test database {name}: the dropping thread panicked")
            }
        }
    }
}

/// A store of either backend, used through `dyn Store`.
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// A store with the database it lives in, which stays until the store and every other
/// handle on it are gone.
pub struct TestStore {
    // Declared first so that it is dropped first: the store goes before its database.
    store: AnyStore,
    database: Arc<TestDatabase>,
}

impl TestStore {
    pub fn database(&self) -> &Arc<TestDatabase> {
        &self.database
    }

    /// The PostgreSQL store, for what only it has (shard leases).
    pub fn postgres(&self) -> Option<&PostgresStore> {
        match &self.store {
            AnyStore::Postgres(store) => Some(store),
            AnyStore::Sqlite(_) => None,
        }
    }

    /// Closes the store's connections (and, for SQLite, releases the file's lock).
    pub async fn close(&self) {
        match &self.store {
            AnyStore::Sqlite(store) => store.close().await,
            AnyStore::Postgres(store) => store.close().await,
        }
    }
}

impl Deref for TestStore {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        match &self.store {
            AnyStore::Sqlite(store) => store,
            AnyStore::Postgres(store) => store,
        }
    }
}

async fn connect(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(url)).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within 5 s",
        ))),
    }
}

/// `url` with its database (the path) replaced by `database`, parameters kept.
pub fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").unwrap() + 3;
    let after_user = url[authority_start..]
        .rfind('@')
        .map_or(authority_start, |at| authority_start + at + 1);
    let path_start = url[after_user..]
        .find(['/', '?'])
        .map_or(url.len(), |offset| after_user + offset);
    let query = url[path_start..]
        .find('?')
        .map_or("", |offset| &url[path_start + offset..]);
    format!("{}/{database}{query}", &url[..path_start])
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).unwrap();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
