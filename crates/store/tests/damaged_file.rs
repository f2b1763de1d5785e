//! A damaged or truncated SQLite file is refused at open with its path, what SQLite found and
//! the way out; `SqliteStore::rebuild` sets it aside and keeps the secrets it can still open;
//! the files the store creates are private to their owner.

mod common;

use common::*;

use std::path::{Path, PathBuf};

use calbridge_domain::Secret;
use calbridge_store::{
    PersonUpsert, SecretKey, SqliteStore, Store, StoreError, SyncState, WindowReplacement,
};

/// A store of `n_people` people with 20 appointments each and two sealed secrets, closed
/// (checkpointed) so that everything is in the main file.
async fn filled_store(path: &Path, key: &SecretKey, n_people: usize) {
    let store = SqliteStore::open(path, key.clone()).await.unwrap();
    store
        .put_secret("api.token", &Secret::new("token-kept"))
        .await
        .unwrap();
    store
        .put_secret("source.m365.client_state", &Secret::new("state-kept"))
        .await
        .unwrap();
    let people: Vec<PersonUpsert> = (0..n_people)
        .map(|index| PersonUpsert {
            key: person("m365", &format!("person{index}@example.com")),
            display_name: Some(format!(
                "Person {index} with a name long enough to fill pages"
            )),
            sip_uri: Some(format!("sip:person{index}@pbx.example.com")),
        })
        .collect();
    store.upsert_people(&people).await.unwrap();
    let windows: Vec<WindowReplacement> = people
        .iter()
        .map(|upsert| WindowReplacement {
            key: upsert.key.clone(),
            window_start: at("2026-12-01T00:00:00Z"),
            window_end: at("2026-12-31T00:00:00Z"),
            appointments: (0..20)
                .map(|n| {
                    timed(
                        &format!("appointment-{n}-of-{}", upsert.key.address),
                        "2026-12-04T09:00:00Z",
                        "2026-12-04T10:00:00Z",
                    )
                })
                .collect(),
        })
        .collect();
    store.replace_appointments_many(windows).await.unwrap();
    store.close().await;
}

/// Overwrites `length` bytes in the middle of the file with pseudo-random bytes (a fixed
/// seed, so that every run damages the file the same way), as a failing disk would.
fn damage_the_middle(path: &Path, length: usize) {
    // `close` merged the write-ahead log into the main file: the rows are there to damage.
    assert!(
        !sibling(path, "-wal").exists()
            || std::fs::metadata(sibling(path, "-wal")).unwrap().len() == 0
    );
    let mut bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() > 2 * length, "the store is too small to damage");
    let start = bytes.len() / 2 - length / 2;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for byte in &mut bytes[start..start + length] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(path, bytes).unwrap();
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[tokio::test]
async fn a_store_with_random_bytes_in_the_middle_is_refused_with_the_file_the_damage_and_the_way_out(
) {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let key = SecretKey::generate();
    filled_store(&path, &key, 400).await;
    damage_the_middle(&path, 64 * 1024);

    let error = SqliteStore::open(&path, key).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StoreError::Damaged { .. }), "{message}");
    assert!(
        message.starts_with(&format!("the store {} is damaged;", path.display())),
        "{message}"
    );
    // SQLite's own findings name pages or trees.
    assert!(
        message.contains("integrity check says: ") && !message.contains("says: ok"),
        "{message}"
    );
    assert!(
        message.contains("calbridge run --rebuild-store"),
        "{message}"
    );
}

#[tokio::test]
async fn a_truncated_store_is_refused_as_damaged() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let key = SecretKey::generate();
    filled_store(&path, &key, 400).await;
    let length = std::fs::metadata(&path).unwrap().len();
    assert!(length > 256 * 1024, "{length} bytes");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length / 2).unwrap();
    drop(file);

    let error = SqliteStore::open(&path, key).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StoreError::Damaged { .. }), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("--rebuild-store"), "{message}");
}

#[tokio::test]
async fn an_intact_store_passes_the_check_and_opens() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let key = SecretKey::generate();
    filled_store(&path, &key, 50).await;
    let store = SqliteStore::open(&path, key).await.unwrap();
    assert_eq!(store.list_people().await.unwrap().len(), 50);
}

#[tokio::test]
async fn a_rebuild_sets_the_damaged_file_aside_and_keeps_the_secrets_it_can_open() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let key = SecretKey::generate();
    filled_store(&path, &key, 400).await;
    let damaged_length = std::fs::metadata(&path).unwrap().len();
    damage_the_middle(&path, 64 * 1024);
    let damaged_bytes = std::fs::read(&path).unwrap();

    let rebuilt = SqliteStore::rebuild(&path, key.clone()).await.unwrap();
    let aside = rebuilt
        .set_aside
        .clone()
        .expect("the old file is set aside");
    assert!(
        aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("calbridge.sqlite.damaged-"),
        "{aside:?}"
    );
    assert_eq!(std::fs::metadata(&aside).unwrap().len(), damaged_length);
    assert_eq!(std::fs::read(&aside).unwrap()[..100], damaged_bytes[..100]);
    let mut kept = rebuilt.kept.clone();
    kept.sort();
    assert_eq!(kept, ["api.token", "source.m365.client_state"]);
    assert!(rebuilt.lost.is_empty(), "{:?}", rebuilt.lost);

    // The new store opens, holds the secrets and nothing else: the sources fill the rest.
    let store = SqliteStore::open(&path, key).await.unwrap();
    assert_eq!(
        store
            .get_secret("api.token")
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "token-kept"
    );
    assert_eq!(
        store
            .get_secret("source.m365.client_state")
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "state-kept"
    );
    assert!(store.list_people().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_rebuild_with_another_key_counts_the_secrets_it_cannot_open_as_lost() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    filled_store(&path, &SecretKey::generate(), 10).await;

    let rebuilt = SqliteStore::rebuild(&path, SecretKey::generate())
        .await
        .unwrap();
    assert!(rebuilt.kept.is_empty(), "{:?}", rebuilt.kept);
    let mut lost = rebuilt.lost.clone();
    lost.sort();
    assert_eq!(lost, ["api.token", "source.m365.client_state"]);
}

#[tokio::test]
async fn the_count_of_sealed_values_includes_secrets_and_client_states() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let store = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap();
    assert_eq!(store.count_sealed().await.unwrap(), 0);
    let alice = person("m365", "alice@example.com");
    store
        .upsert_person(&PersonUpsert {
            key: alice.clone(),
            display_name: None,
            sip_uri: None,
        })
        .await
        .unwrap();
    store
        .set_sync_state(
            &alice,
            &SyncState {
                client_state: Some(Secret::new("state")),
                ..SyncState::default()
            },
        )
        .await
        .unwrap();
    store
        .put_secret("api.token", &Secret::new("token"))
        .await
        .unwrap();
    assert_eq!(store.count_sealed().await.unwrap(), 2);
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_and_its_write_ahead_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let store = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap();
    store
        .put_secret("api.token", &Secret::new("token"))
        .await
        .unwrap();
    // With the store open and written, the write-ahead log and its index exist.
    for file in [path.clone(), sibling(&path, "-wal"), sibling(&path, "-shm")] {
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
}
