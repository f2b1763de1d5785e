//! The SQLite store against real SQLite: in memory where the file does not matter, in a
//! temporary directory where it does (restart, encryption at rest, damaged files).

mod common;

use common::*;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use calbridge_domain::{Appointment, MailboxAddress, Secret, SourceId};
use calbridge_store::{
    AppointmentWindow, CurrentPresence, NewOutboxEvent, OutboxId, PersonKey, PersonUpsert, Removal,
    Resolution, SecretKey, SourceCounters, SourceState, SqliteStore, Store, StoreError, SyncError,
    SyncState, TokenState,
};
use jiff::civil::date;

async fn memory_store() -> SqliteStore {
    SqliteStore::open_in_memory(SecretKey::generate())
        .await
        .unwrap()
}

async fn store_with(key: &PersonKey) -> SqliteStore {
    let store = memory_store().await;
    add(&store, key).await;
    store
}

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

fn presence_busy() -> CurrentPresence {
    CurrentPresence {
        activity: "busy".to_string(),
        note: Some("In a meeting until 11:00".to_string()),
        until: Some(at("2026-06-01T11:00:00Z")),
        why: "appointment a1 (busy)".to_string(),
        next_change_at: Some(at("2026-06-01T11:00:00Z")),
        decided_at: at("2026-06-01T10:00:05Z"),
        published_fingerprint: Some("f00d".to_string()),
    }
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
async fn an_upserted_person_reads_back_as_pending_with_the_directory_fields() {
    let alice = person("tenant-a", "Alice@Example.com");
    let store = store_with(&alice).await;

    let stored = store.get_person(&alice).await.unwrap().unwrap();
    assert_eq!(stored.key, alice);
    assert_eq!(stored.key.address.as_str(), "alice@example.com");
    assert_eq!(stored.display_name.as_deref(), Some("Alice Example"));
    assert_eq!(stored.sip_uri.as_deref(), Some("sip:alice@pbx.example.com"));
    assert_eq!(stored.resolution, Resolution::Pending);
    assert!(stored.created_at <= stored.updated_at);
    assert_eq!(
        store
            .get_person(&person("tenant-a", "nobody@example.com"))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn re_reading_the_directory_keeps_the_resolution_and_updates_the_names() {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&alice).await;
    let primary = MailboxAddress::parse("alice.example@example.com").unwrap();
    store
        .mark_resolution(
            &alice,
            &Resolution::Resolved {
                primary_smtp: primary.clone(),
                source_user_id: Some("graph-id-1".to_string()),
            },
        )
        .await
        .unwrap();

    store
        .upsert_person(&PersonUpsert {
            key: alice.clone(),
            display_name: Some("Alice Renamed".to_string()),
            sip_uri: None,
        })
        .await
        .unwrap();

    let stored = store.get_person(&alice).await.unwrap().unwrap();
    assert_eq!(stored.display_name.as_deref(), Some("Alice Renamed"));
    assert_eq!(stored.sip_uri, None);
    assert_eq!(
        stored.resolution,
        Resolution::Resolved {
            primary_smtp: primary,
            source_user_id: Some("graph-id-1".to_string()),
        }
    );
}

#[tokio::test]
async fn a_failed_resolution_keeps_its_error_text_for_the_admin_view() {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&alice).await;
    let failed = Resolution::Failed {
        error: "user not found in tenant (404)".to_string(),
    };
    store.mark_resolution(&alice, &failed).await.unwrap();
    assert_eq!(
        store.get_person(&alice).await.unwrap().unwrap().resolution,
        failed
    );

    let error = store
        .mark_resolution(&person("tenant-a", "ghost@example.com"), &failed)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::PersonNotFound { .. }));
    assert_eq!(
        error.to_string(),
        "store: cannot mark the resolution: ghost@example.com (source tenant-a) is not in the \
         store (upsert the person first)"
    );
}

#[tokio::test]
async fn people_are_listed_in_order_and_per_source() {
    let store = memory_store().await;
    for (source, address) in [
        ("tenant-b", "zoe@b.example"),
        ("tenant-a", "bob@a.example"),
        ("tenant-a", "alice@a.example"),
        // The same address in a second source is a second person.
        ("tenant-b", "alice@a.example"),
    ] {
        add(&store, &person(source, address)).await;
    }

    let all: Vec<String> = store
        .list_people()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key.to_string())
        .collect();
    assert_eq!(
        all,
        [
            "alice@a.example (source tenant-a)",
            "bob@a.example (source tenant-a)",
            "alice@a.example (source tenant-b)",
            "zoe@b.example (source tenant-b)",
        ]
    );
    let of_b: Vec<String> = store
        .list_people_of_source(&SourceId("tenant-b".to_string()))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key.address.to_string())
        .collect();
    assert_eq!(of_b, ["alice@a.example", "zoe@b.example"]);
}

#[tokio::test]
async fn timed_all_day_and_private_appointments_round_trip_exactly() {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&alice).await;
    let appointments = vec![
        timed("a1", "2026-06-01T09:00:00Z", "2026-06-01T10:30:00Z"),
        all_day("a2"),
        private_without_subject("a3"),
    ];
    store
        .replace_appointments(
            &alice,
            at("2026-06-01T00:00:00Z"),
            at("2026-06-03T00:00:00Z"),
            appointments.clone(),
        )
        .await
        .unwrap();

    let loaded = store.load_appointments(&alice).await.unwrap();
    assert_eq!(loaded, appointments);
    assert!(loaded[1].time.is_all_day());
    assert_eq!(loaded[2].subject, None);
}

#[tokio::test]
async fn a_hidden_subject_is_stored_as_null_not_as_text() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let alice = person("tenant-a", "alice@example.com");
    let store = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap();
    add(&store, &alice).await;
    store
        .replace_appointments(
            &alice,
            at("2026-06-01T00:00:00Z"),
            at("2026-06-03T00:00:00Z"),
            vec![private_without_subject("a3")],
        )
        .await
        .unwrap();
    store.close().await;

    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let (subject_is_null, first_day): (bool, Option<String>) =
        sqlx::query_as("SELECT subject IS NULL, first_day FROM appointments")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(subject_is_null);
    assert_eq!(first_day, None);
    pool.close().await;
}

#[tokio::test]
async fn all_day_dates_are_stored_as_plain_dates() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let alice = person("tenant-a", "alice@example.com");
    let store = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap();
    add(&store, &alice).await;
    store
        .apply_appointment_changes(&alice, vec![all_day("v1")], vec![])
        .await
        .unwrap();
    store.close().await;

    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let days: (String, String, Option<i64>) =
        sqlx::query_as("SELECT first_day, end_day, start_at FROM appointments")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        days,
        ("2026-12-24".to_string(), "2026-12-27".to_string(), None)
    );
    pool.close().await;
}

#[tokio::test]
async fn a_delta_updates_adds_and_removes_single_appointments() {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&alice).await;
    store
        .replace_appointments(
            &alice,
            at("2026-06-01T00:00:00Z"),
            at("2026-06-03T00:00:00Z"),
            vec![
                timed("a1", "2026-06-01T09:00:00Z", "2026-06-01T10:00:00Z"),
                timed("a2", "2026-06-01T11:00:00Z", "2026-06-01T12:00:00Z"),
            ],
        )
        .await
        .unwrap();

    let moved = timed("a1", "2026-06-01T14:00:00Z", "2026-06-01T15:00:00Z");
    let added = all_day("a3");
    store
        .apply_appointment_changes(
            &alice,
            vec![moved.clone(), added.clone()],
            // "gone" was never stored: deltas repeat removals, which must not fail.
            vec!["a2".to_string(), "gone".to_string()],
        )
        .await
        .unwrap();

    assert_eq!(
        store.load_appointments(&alice).await.unwrap(),
        vec![moved, added]
    );
}

#[tokio::test]
async fn a_replacement_that_fails_midway_leaves_the_previous_window() {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&alice).await;
    let before = vec![timed("a1", "2026-06-01T09:00:00Z", "2026-06-01T10:00:00Z")];
    store
        .replace_appointments(
            &alice,
            at("2026-06-01T00:00:00Z"),
            at("2026-06-03T00:00:00Z"),
            before.clone(),
        )
        .await
        .unwrap();

    // The old rows are deleted before the insert of the new ones fails on the duplicate.
    let error = store
        .replace_appointments(
            &alice,
            at("2026-06-02T00:00:00Z"),
            at("2026-06-04T00:00:00Z"),
            vec![
                timed("b1", "2026-06-02T09:00:00Z", "2026-06-02T10:00:00Z"),
                timed("b2", "2026-06-02T11:00:00Z", "2026-06-02T12:00:00Z"),
                timed("b2", "2026-06-02T13:00:00Z", "2026-06-02T14:00:00Z"),
            ],
        )
        .await
        .unwrap_err();

    let message = error.to_string();
    assert!(
        message.starts_with(
            "store: replace appointments of alice@example.com (source tenant-a) failed"
        ),
        "{message}"
    );
    assert!(message.contains("UNIQUE constraint failed"), "{message}");
    assert!(!error.is_retryable());
    assert_eq!(store.load_appointments(&alice).await.unwrap(), before);
    assert_eq!(
        store
            .get_sync_state(&alice)
            .await
            .unwrap()
            .appointment_window,
        Some(AppointmentWindow {
            start: at("2026-06-01T00:00:00Z"),
            end: at("2026-06-03T00:00:00Z"),
        })
    );
}

#[tokio::test]
async fn a_replacement_drops_appointments_of_the_old_window_and_records_the_new_one() {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&alice).await;
    store
        .replace_appointments(
            &alice,
            at("2026-06-01T00:00:00Z"),
            at("2026-06-03T00:00:00Z"),
            vec![timed("old", "2026-06-01T09:00:00Z", "2026-06-01T10:00:00Z")],
        )
        .await
        .unwrap();
    let new = vec![timed("new", "2026-06-02T09:00:00Z", "2026-06-02T10:00:00Z")];
    store
        .replace_appointments(
            &alice,
            at("2026-06-02T00:00:00Z"),
            at("2026-06-04T00:00:00Z"),
            new.clone(),
        )
        .await
        .unwrap();

    assert_eq!(store.load_appointments(&alice).await.unwrap(), new);
    let window = store
        .get_sync_state(&alice)
        .await
        .unwrap()
        .appointment_window;
    assert_eq!(
        window,
        Some(AppointmentWindow {
            start: at("2026-06-02T00:00:00Z"),
            end: at("2026-06-04T00:00:00Z"),
        })
    );
}

#[tokio::test]
async fn appointments_of_an_unknown_person_are_refused_with_the_person_named() {
    let store = memory_store().await;
    let ghost = person("tenant-a", "ghost@example.com");
    let error = store
        .replace_appointments(
            &ghost,
            at("2026-06-01T00:00:00Z"),
            at("2026-06-03T00:00:00Z"),
            vec![],
        )
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("ghost@example.com (source tenant-a)"),
        "{error}"
    );
    assert_eq!(store.load_appointments(&ghost).await.unwrap(), vec![]);
}

#[tokio::test]
async fn loading_all_appointments_groups_them_by_person_including_people_without_any() {
    let store = memory_store().await;
    let alice = person("tenant-a", "alice@example.com");
    let bob = person("tenant-a", "bob@example.com");
    let carol = person("tenant-b", "carol@example.com");
    for key in [&alice, &bob, &carol] {
        add(&store, key).await;
    }
    let alices = vec![
        timed("a1", "2026-06-01T09:00:00Z", "2026-06-01T10:00:00Z"),
        all_day("a2"),
    ];
    let carols = vec![private_without_subject("c1")];
    store
        .apply_appointment_changes(&alice, alices.clone(), vec![])
        .await
        .unwrap();
    store
        .apply_appointment_changes(&carol, carols.clone(), vec![])
        .await
        .unwrap();

    let all = store.load_all_appointments().await.unwrap();
    let expected: HashMap<PersonKey, Vec<Appointment>> =
        HashMap::from([(alice, alices), (bob, vec![]), (carol, carols)]);
    assert_eq!(all, expected);
}

#[tokio::test]
async fn sync_state_round_trips_and_a_fresh_state_does_not_erase_the_window() {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&alice).await;
    assert_eq!(
        store.get_sync_state(&alice).await.unwrap(),
        SyncState::default()
    );
    store
        .replace_appointments(
            &alice,
            at("2026-06-01T00:00:00Z"),
            at("2026-06-03T00:00:00Z"),
            vec![],
        )
        .await
        .unwrap();

    let state = SyncState {
        delta_link: Some("https://graph.example/delta?$deltatoken=abc".to_string()),
        subscription_id: Some("sub-1".to_string()),
        subscription_expires_at: Some(at("2026-06-04T00:00:00Z")),
        client_state: Some(Secret::new("client-state-shared-secret")),
        last_full_sync_at: Some(at("2026-06-01T00:00:10Z")),
        last_delta_at: Some(at("2026-06-01T08:00:00Z")),
        last_error: Some(SyncError {
            message: "503 from Graph".to_string(),
            at: at("2026-06-01T07:00:00Z"),
        }),
        consecutive_failures: 2,
        appointment_window: None,
    };
    store.set_sync_state(&alice, &state).await.unwrap();

    let loaded = store.get_sync_state(&alice).await.unwrap();
    assert_eq!(
        loaded,
        SyncState {
            appointment_window: Some(AppointmentWindow {
                start: at("2026-06-01T00:00:00Z"),
                end: at("2026-06-03T00:00:00Z"),
            }),
            ..state
        }
    );
}

#[tokio::test]
async fn source_state_round_trips_and_defaults_to_unknown() {
    let store = memory_store().await;
    let tenant = SourceId("tenant-a".to_string());
    assert_eq!(
        store.get_source_state(&tenant).await.unwrap(),
        SourceState::default()
    );
    let state = SourceState {
        token: TokenState::Failed {
            error: "AADSTS7000222: the client secret keys are expired".to_string(),
        },
        token_checked_at: Some(at("2026-06-01T10:00:00Z")),
        secret_expires_on: Some(date(2026, 10, 1)),
        last_throttled_at: Some(at("2026-06-01T09:59:00Z")),
        counters: SourceCounters {
            n_requests: 12_345,
            n_throttled: 17,
            n_failures: 3,
        },
    };
    store.set_source_state(&tenant, &state).await.unwrap();
    assert_eq!(store.get_source_state(&tenant).await.unwrap(), state);

    let recovered = SourceState {
        token: TokenState::Ok,
        ..state
    };
    store.set_source_state(&tenant, &recovered).await.unwrap();
    assert_eq!(store.get_source_state(&tenant).await.unwrap(), recovered);
}

#[tokio::test]
async fn presence_is_saved_replaced_and_listed() {
    let store = memory_store().await;
    let alice = person("tenant-a", "alice@example.com");
    let bob = person("tenant-a", "bob@example.com");
    add(&store, &alice).await;
    add(&store, &bob).await;
    assert_eq!(store.load_presence(&alice).await.unwrap(), None);

    store.save_presence(&bob, &presence_busy()).await.unwrap();
    let available = CurrentPresence {
        activity: "available".to_string(),
        note: None,
        until: None,
        why: "no appointment".to_string(),
        next_change_at: None,
        decided_at: at("2026-06-01T11:00:00Z"),
        published_fingerprint: None,
    };
    store.save_presence(&alice, &presence_busy()).await.unwrap();
    store.save_presence(&alice, &available).await.unwrap();

    assert_eq!(
        store.load_presence(&alice).await.unwrap(),
        Some(available.clone())
    );
    assert_eq!(
        store.list_presence().await.unwrap(),
        vec![(alice, available), (bob, presence_busy())]
    );
}

#[tokio::test]
async fn removing_a_person_removes_their_appointments_sync_state_and_presence() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let store = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap();
    let alice = person("tenant-a", "alice@example.com");
    let bob = person("tenant-a", "bob@example.com");
    add(&store, &alice).await;
    add(&store, &bob).await;
    for key in [&alice, &bob] {
        store
            .replace_appointments(
                key,
                at("2026-06-01T00:00:00Z"),
                at("2026-06-03T00:00:00Z"),
                vec![timed("a1", "2026-06-01T09:00:00Z", "2026-06-01T10:00:00Z")],
            )
            .await
            .unwrap();
        store
            .set_sync_state(
                key,
                &SyncState {
                    delta_link: Some("delta".to_string()),
                    ..SyncState::default()
                },
            )
            .await
            .unwrap();
        store.save_presence(key, &presence_busy()).await.unwrap();
    }

    assert_eq!(store.remove_person(&alice).await.unwrap(), Removal::Removed);
    assert_eq!(
        store.remove_person(&alice).await.unwrap(),
        Removal::NotFound
    );
    store.close().await;

    // Count rows directly: the API cannot tell an orphaned row from a missing one.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    for table in ["people", "appointments", "sync_state", "presence"] {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 1, "{table} should hold only bob's row");
    }
    pool.close().await;
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
    store
        .put_secret(
            "tenant-a/client-secret",
            &Secret::new("Xyz~client-secret-in-clear"),
        )
        .await
        .unwrap();
    store
        .set_sync_state(
            &alice,
            &SyncState {
                client_state: Some(Secret::new("webhook-client-state-in-clear")),
                ..SyncState::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_secret("tenant-a/client-secret")
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "Xyz~client-secret-in-clear"
    );

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
async fn a_wrong_key_fails_cleanly_without_showing_the_secret() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let alice = person("tenant-a", "alice@example.com");
    let store = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap();
    add(&store, &alice).await;
    store
        .put_secret("tenant-a/client-secret", &Secret::new("hunter2-secret"))
        .await
        .unwrap();
    store
        .set_sync_state(
            &alice,
            &SyncState {
                client_state: Some(Secret::new("hunter2-state")),
                ..SyncState::default()
            },
        )
        .await
        .unwrap();
    store.close().await;

    let reopened = SqliteStore::open(&path, SecretKey::generate())
        .await
        .unwrap();
    let error = reopened
        .get_secret("tenant-a/client-secret")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::SecretUndecryptable { .. }));
    let message = format!("{error} {error:?}");
    assert!(
        message.starts_with("secret tenant-a/client-secret cannot be decrypted with this key"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");

    let error = reopened.get_sync_state(&alice).await.unwrap_err();
    let message = format!("{error} {error:?}");
    assert!(
        message.starts_with(
            "secret client_state of alice@example.com (source tenant-a) cannot be decrypted"
        ),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert_eq!(reopened.get_secret("never-stored").await.unwrap(), None);
}

#[tokio::test]
async fn reopening_the_file_keeps_everything() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("calbridge.sqlite");
    let key = SecretKey::generate();
    let alice = person("tenant-a", "alice@example.com");
    let tenant = SourceId("tenant-a".to_string());
    let appointments = vec![all_day("a1"), private_without_subject("a2")];
    let sync_state = SyncState {
        delta_link: Some("delta-link".to_string()),
        client_state: Some(Secret::new("client-state")),
        consecutive_failures: 1,
        ..SyncState::default()
    };
    let source_state = SourceState {
        token: TokenState::Ok,
        ..SourceState::default()
    };
    {
        let store = SqliteStore::open(&path, key.clone()).await.unwrap();
        add(&store, &alice).await;
        store
            .replace_appointments(
                &alice,
                at("2026-06-01T00:00:00Z"),
                at("2026-06-03T00:00:00Z"),
                appointments.clone(),
            )
            .await
            .unwrap();
        store.set_sync_state(&alice, &sync_state).await.unwrap();
        store
            .set_source_state(&tenant, &source_state)
            .await
            .unwrap();
        store.save_presence(&alice, &presence_busy()).await.unwrap();
        store
            .put_secret("api-token", &Secret::new("token"))
            .await
            .unwrap();
        store
            .append_outbox(&NewOutboxEvent {
                topic: "presence.changed".to_string(),
                person: Some(alice.clone()),
                payload: serde_json::json!({"activity": "busy"}),
                created_at: at("2026-06-01T10:00:00Z"),
            })
            .await
            .unwrap();
        store
            .set_outbox_cursor("webhook-1", OutboxId(1))
            .await
            .unwrap();
        store.close().await;
    }

    let store = SqliteStore::open(&path, key).await.unwrap();
    assert_eq!(store.list_people().await.unwrap().len(), 1);
    assert_eq!(store.load_appointments(&alice).await.unwrap(), appointments);
    let reloaded_sync = store.get_sync_state(&alice).await.unwrap();
    assert_eq!(reloaded_sync.delta_link.as_deref(), Some("delta-link"));
    assert_eq!(
        reloaded_sync.client_state.as_ref().map(Secret::expose),
        Some("client-state")
    );
    assert_eq!(reloaded_sync.consecutive_failures, 1);
    assert_eq!(store.get_source_state(&tenant).await.unwrap(), source_state);
    assert_eq!(
        store.load_presence(&alice).await.unwrap(),
        Some(presence_busy())
    );
    assert_eq!(
        store
            .get_secret("api-token")
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "token"
    );
    assert_eq!(
        store.get_outbox_cursor("webhook-1").await.unwrap(),
        OutboxId(1)
    );
    assert_eq!(
        store.read_outbox_after(OutboxId(0), 10).await.unwrap()[0].person,
        Some(alice)
    );
}

#[tokio::test]
async fn outbox_events_come_back_in_order_after_a_cursor_in_batches() {
    let store: Arc<dyn Store> = Arc::new(memory_store().await);
    let alice = person("tenant-a", "alice@example.com");
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = store
            .append_outbox(&NewOutboxEvent {
                topic: "presence.changed".to_string(),
                person: (n % 2 == 0).then(|| alice.clone()),
                payload: serde_json::json!({ "n": n }),
                created_at: at("2026-06-01T10:00:00Z"),
            })
            .await
            .unwrap();
        ids.push(id);
    }
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");

    assert_eq!(
        store.get_outbox_cursor("webhook-1").await.unwrap(),
        OutboxId(0)
    );
    let first_batch = store.read_outbox_after(OutboxId(0), 2).await.unwrap();
    let numbers: Vec<i64> = first_batch
        .iter()
        .map(|event| event.payload["n"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [0, 1]);
    assert_eq!(first_batch[0].person, Some(alice));
    assert_eq!(first_batch[1].person, None);

    let cursor = first_batch[1].id;
    store.set_outbox_cursor("webhook-1", cursor).await.unwrap();
    let cursor = store.get_outbox_cursor("webhook-1").await.unwrap();
    let rest: Vec<i64> = store
        .read_outbox_after(cursor, 100)
        .await
        .unwrap()
        .iter()
        .map(|event| event.payload["n"].as_i64().unwrap())
        .collect();
    assert_eq!(rest, [2, 3, 4]);
    // Another consumer has its own cursor.
    assert_eq!(
        store.get_outbox_cursor("webhook-2").await.unwrap(),
        OutboxId(0)
    );
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
            supported: 1,
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
