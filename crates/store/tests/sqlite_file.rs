//! What is about SQLite files themselves: the bytes on disk, damaged or missing files, a
//! schema from a newer calbridge, and the lock that keeps a second process off the file. The
//! store contract itself runs on SQLite and PostgreSQL alike in `store.rs`.

mod common;

use common::*;

use std::path::Path;

use calbridge_store::{PersonKey, PersonUpsert, SecretKey, SqliteStore, Store, StoreError};

async fn add(store: &dyn Store, key: &PersonKey) {
    store
        .upsert_person(&PersonUpsert {
            key: key.clone(),
            display_name: Some("Alice Example".to_string()),
            sip_uri: Some("sip:alice@pbx.example.com".to_string()),
        })
        .await
        .unwrap();
}

/// Every byte SQLite wrote for this database, including a write-ahead log not yet merged.
fn raw_database_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    for suffix in ["-wal", "-journal"] {
        let mut side_file = path.as_os_str().to_owned();
        side_file.push(suffix);
        if let Ok(more) = std::fs::read(&side_file) {
            bytes.extend(more);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test]
async fn secrets_are_encrypted_in_the_database_file() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let store = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap();
    let alice = person("tenant-a", "alice@example.com");
    add(&store, &alice).await;
    write_secrets_marked_in_clear(&store, &alice).await;

    // Read the raw bytes with the store still open, when the write-ahead log holds the rows,
    // and again after closing, when they have been merged into the main file.
    for phase in ["open", "closed"] {
        if phase == "closed" {
            store.close().await;
        }
        let raw = raw_database_bytes(&path);
        assert!(
            contains(&raw, "tenant-a/client-secret"),
            "{phase}: name missing"
        );
        assert!(
            !contains(&raw, "client-secret-in-clear"),
            "{phase}: secret in clear"
        );
        assert!(
            !contains(&raw, "client-state-in-clear"),
            "{phase}: client state in clear"
        );
    }
}

#[tokio::test]
async fn a_database_from_a_newer_calbridge_is_refused_with_its_path() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap()
        .close()
        .await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let error = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        StoreError::SchemaTooNew {
            found: 9999,
            supported: 6,
            ..
        }
    ));
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("schema version 9999"), "{message}");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_with_its_path() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    std::fs::write(&path, "this is a text file, not SQLite\n".repeat(200)).unwrap();

    let error = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::NotADatabase { .. }),
        "{message}"
    );
    assert!(
        message.starts_with(&format!("{} is not a calbridge store", path.display())),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_directory_is_reported_with_the_path() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("missing").join("calbridge.sqlite");
    let error = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }));
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn a_second_store_on_the_same_file_is_refused_while_the_first_is_open() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let alice = person("tenant-a", "alice@example.com");
    let key = SecretKey::generate();
    let first = SqliteStore::open(&path, key.clone()).await.unwrap();
    add(&first, &alice).await;

    // flock belongs to the open file description, so a second open in the same process
    // conflicts just as another process's would.
    let error = SqliteStore::open(&path, key.clone()).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StoreError::InUse { .. }), "{message}");
    assert!(
        message.starts_with(&format!(
            "the store {} is used by another calbridge process (pid {}",
            path.display(),
            std::process::id()
        )),
        "{message}"
    );
    assert!(
        message.contains(&SqliteStore::lock_file_of(&path).display().to_string()),
        "{message}"
    );
    // The refused store touched nothing: the first one still works.
    assert_eq!(first.list_people().await.unwrap().len(), 1);

    drop(first);
    let second = SqliteStore::open(&path, key).await.unwrap();
    assert!(second.get_person(&alice).await.unwrap().is_some());
}

#[tokio::test]
async fn closing_a_store_frees_the_file_for_the_next() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let key = SecretKey::generate();
    let first = SqliteStore::open(&path, key.clone()).await.unwrap();
    first.close().await;
    let second = SqliteStore::open(&path, key.clone()).await.unwrap();
    assert!(matches!(
        SqliteStore::open(&path, key).await,
        Err(StoreError::InUse { .. })
    ));
    second.close().await;
}

#[tokio::test]
async fn a_lock_file_left_by_a_process_that_ended_does_not_block() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    // What a killed process leaves: the file with its pid, but no lock.
    std::fs::write(SqliteStore::lock_file_of(&path), "999999\n").unwrap();
    let store = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(SqliteStore::lock_file_of(&path))
            .unwrap()
            .trim(),
        std::process::id().to_string()
    );
    store.close().await;
}

#[tokio::test]
async fn in_memory_stores_take_no_lock() {
    let first = SqliteStore::open_in_memory(SecretKey::generate())
        .await
        .unwrap();
    let second = SqliteStore::open_in_memory(SecretKey::generate())
        .await
        .unwrap();
    add(&first, &person("tenant-a", "alice@example.com")).await;
    assert_eq!(first.list_people().await.unwrap().len(), 1);
    assert!(second.list_people().await.unwrap().is_empty());
    assert!(!Path::new(":memory:.lock").exists());
}
