//! The store contract, on each backend: every test here runs once against SQLite and once
//! against PostgreSQL (`sqlite::…` and `postgres::…`, see `common/backends.rs`) and asserts
//! the same. What is about SQLite files or PostgreSQL servers themselves is in
//! `sqlite_file.rs` and `postgres_database.rs`.

#[macro_use]
mod common;

use common::*;

use std::collections::HashMap;

use calbridge_domain::{Appointment, MailboxAddress, Secret, SourceId};
use calbridge_store::{
    AppointmentWindow, CheckInState, CurrentPresence, NewOutboxEvent, OutboxId, PersonKey,
    PersonUpsert, Removal, Resolution, RoomCheckIn, SecretKey, SipPublication, SourceCounters,
    SourceState, Store, StoreError, SyncError, SyncState, TokenState,
};
use jiff::civil::date;

async fn store_with(backend: &Backend, key: &PersonKey) -> TestStore {
    let store = backend.fresh_store().await;
    add(&*store, key).await;
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

async fn an_upserted_person_reads_back_as_pending_with_the_directory_fields(backend: Backend) {
    let alice = person("tenant-a", "Alice@Example.com");
    let store = store_with(&backend, &alice).await;

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

async fn re_reading_the_directory_keeps_the_resolution_and_updates_the_names(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&backend, &alice).await;
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

async fn a_failed_resolution_keeps_its_error_text_for_the_admin_view(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&backend, &alice).await;
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

async fn people_are_listed_in_order_and_per_source(backend: Backend) {
    let store = backend.fresh_store().await;
    for (source, address) in [
        ("tenant-b", "zoe@b.example"),
        ("tenant-a", "bob@a.example"),
        ("tenant-a", "alice@a.example"),
        // The same address in a second source is a second person.
        ("tenant-b", "alice@a.example"),
    ] {
        add(&*store, &person(source, address)).await;
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

async fn timed_all_day_and_private_appointments_round_trip_exactly(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&backend, &alice).await;
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

async fn a_hidden_subject_is_stored_as_null_not_as_text(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&backend, &alice).await;
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

    let rows = store
        .database()
        .rows_as_text(
            "SELECT CASE WHEN subject IS NULL THEN 'null' ELSE 'text' END, \
             CAST(first_day AS TEXT) FROM appointments",
        )
        .await;
    assert_eq!(rows, [[Some("null".to_string()), None]]);
}

async fn all_day_dates_are_stored_as_plain_dates(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&backend, &alice).await;
    store
        .apply_appointment_changes(&alice, vec![all_day("v1")], vec![])
        .await
        .unwrap();
    store.close().await;

    // A date column in PostgreSQL, `YYYY-MM-DD` text in SQLite: the same text either way.
    let days = store
        .database()
        .rows_as_text(
            "SELECT CAST(first_day AS TEXT), CAST(end_day AS TEXT), CAST(start_at AS TEXT) \
             FROM appointments",
        )
        .await;
    assert_eq!(
        days,
        [[
            Some("2026-12-24".to_string()),
            Some("2026-12-27".to_string()),
            None
        ]]
    );
}

async fn a_delta_updates_adds_and_removes_single_appointments(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&backend, &alice).await;
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

async fn a_replacement_that_fails_midway_leaves_the_previous_window(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&backend, &alice).await;
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
    // The database's own reason: "UNIQUE constraint failed" (SQLite), "duplicate key value
    // violates unique constraint" (PostgreSQL).
    assert!(
        message.to_lowercase().contains("unique constraint"),
        "{message}"
    );
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

async fn a_replacement_drops_appointments_of_the_old_window_and_records_the_new_one(
    backend: Backend,
) {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&backend, &alice).await;
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

async fn appointments_of_an_unknown_person_are_refused_with_the_person_named(backend: Backend) {
    let store = backend.fresh_store().await;
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

async fn loading_all_appointments_groups_them_by_person_including_people_without_any(
    backend: Backend,
) {
    let store = backend.fresh_store().await;
    let alice = person("tenant-a", "alice@example.com");
    let bob = person("tenant-a", "bob@example.com");
    let carol = person("tenant-b", "carol@example.com");
    for key in [&alice, &bob, &carol] {
        add(&*store, key).await;
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

async fn sync_state_round_trips_and_a_fresh_state_does_not_erase_the_window(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&backend, &alice).await;
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

async fn source_state_round_trips_and_defaults_to_unknown(backend: Backend) {
    let store = backend.fresh_store().await;
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

async fn presence_is_saved_replaced_and_listed(backend: Backend) {
    let store = backend.fresh_store().await;
    let alice = person("tenant-a", "alice@example.com");
    let bob = person("tenant-a", "bob@example.com");
    add(&*store, &alice).await;
    add(&*store, &bob).await;
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

async fn removing_a_person_removes_their_appointments_sync_state_and_presence(backend: Backend) {
    let store = backend.fresh_store().await;
    let alice = person("tenant-a", "alice@example.com");
    let bob = person("tenant-a", "bob@example.com");
    add(&*store, &alice).await;
    add(&*store, &bob).await;
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
    for table in ["people", "appointments", "sync_state", "presence"] {
        let rows = store.database().count_rows(table).await;
        assert_eq!(rows, 1, "{table} should hold only bob's row");
    }
}

async fn a_wrong_key_fails_cleanly_without_showing_the_secret(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let store = store_with(&backend, &alice).await;
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

    let reopened = store.database().open(SecretKey::generate()).await.unwrap();
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

async fn reopening_the_database_keeps_everything(backend: Backend) {
    let database = backend.new_database().await;
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
        let store = database.open(key.clone()).await.unwrap();
        add(&*store, &alice).await;
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

    let store = database.open(key).await.unwrap();
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

async fn outbox_events_come_back_in_order_after_a_cursor_in_batches(backend: Backend) {
    let store = backend.fresh_store().await;
    let store: &dyn Store = &*store;
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

async fn keys_and_ids_sort_by_bytes_whatever_the_database_collation(backend: Backend) {
    let store = backend.fresh_store().await;
    // Byte order puts upper case first; a language's collation would not.
    let lower = person("tenant-a", "alice@example.com");
    let upper = person("Tenant-B", "bob@example.com");
    for key in [&lower, &upper] {
        add(&*store, key).await;
        store.save_presence(key, &presence_busy()).await.unwrap();
    }
    let appointments = vec![all_day("b1"), all_day("B2"), all_day("a1")];
    store
        .apply_appointment_changes(&lower, appointments, vec![])
        .await
        .unwrap();

    let people: Vec<PersonKey> = store
        .list_people()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(people, [upper.clone(), lower.clone()]);
    let presence: Vec<PersonKey> = store
        .list_presence()
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(presence, [upper, lower.clone()]);
    let ids = |list: &[Appointment]| list.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&store.load_appointments(&lower).await.unwrap()),
        ["B2", "a1", "b1"]
    );
    assert_eq!(
        ids(&store.load_all_appointments().await.unwrap()[&lower]),
        ["B2", "a1", "b1"]
    );
}

async fn a_notification_s_subscription_names_its_person_in_its_source(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let bob = person("tenant-b", "bob@example.com");
    let store = store_with(&backend, &alice).await;
    add(&*store, &bob).await;
    for (key, id) in [(&alice, "sub-a"), (&bob, "sub-b")] {
        let state = SyncState {
            subscription_id: Some(id.to_string()),
            ..SyncState::default()
        };
        store.set_sync_state(key, &state).await.unwrap();
    }
    let tenant_a = alice.source.clone();
    assert_eq!(
        store
            .person_with_subscription(&tenant_a, "sub-a")
            .await
            .unwrap(),
        Some(alice.clone())
    );
    // Another source's subscription, or one nobody holds, names nobody.
    assert_eq!(
        store
            .person_with_subscription(&tenant_a, "sub-b")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .person_with_subscription(&tenant_a, "sub-x")
            .await
            .unwrap(),
        None
    );
    // A renewed-anew subscription replaces the old id.
    let renewed = SyncState {
        subscription_id: Some("sub-a2".to_string()),
        ..SyncState::default()
    };
    store.set_sync_state(&alice, &renewed).await.unwrap();
    assert_eq!(
        store
            .person_with_subscription(&tenant_a, "sub-a")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .person_with_subscription(&tenant_a, "sub-a2")
            .await
            .unwrap(),
        Some(alice)
    );
}

async fn sip_publications_are_saved_replaced_removed_and_listed_while_they_live(backend: Backend) {
    let store = backend.fresh_store().await;
    let store: &dyn Store = &*store;
    let publication = |uri: &str, etag: Option<&str>, expires: &str| SipPublication {
        uri: uri.to_string(),
        etag: etag.map(str::to_string),
        expires_at: at(expires),
    };
    store
        .save_sip_publications(&[
            publication("sip:ada@x", Some("e1"), "2026-12-03T10:00:00Z"),
            publication("sip:bob@x", Some("e2"), "2026-12-03T11:00:00Z"),
            publication("sip:cy@x", Some("e3"), "2026-12-03T09:00:00Z"),
        ])
        .await
        .unwrap();
    // A modify's new tag replaces the old; a removal deletes the row.
    store
        .save_sip_publications(&[
            publication("sip:ada@x", Some("e4"), "2026-12-03T10:30:00Z"),
            publication("sip:bob@x", None, "2026-12-03T09:30:00Z"),
        ])
        .await
        .unwrap();
    assert_eq!(
        store
            .list_sip_publications(at("2026-12-03T09:30:00Z"))
            .await
            .unwrap(),
        vec![publication("sip:ada@x", Some("e4"), "2026-12-03T10:30:00Z")],
        "Cy's publication expired at 09:00 and Bob's was removed"
    );
    assert_eq!(
        store
            .list_sip_publications(at("2026-12-03T08:00:00Z"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store.load_sip_publication("sip:cy@x").await.unwrap(),
        Some(publication("sip:cy@x", Some("e3"), "2026-12-03T09:00:00Z")),
        "one URI's publication reads back expired or not"
    );
    assert_eq!(store.load_sip_publication("sip:bob@x").await.unwrap(), None);
}

async fn rooms_keep_their_details_are_replaced_per_source_and_go_with_their_person(
    backend: Backend,
) {
    let first = person("m365", "room.1@contoso.example");
    let store = store_with(&backend, &first).await;
    let second = person("m365", "room.2@contoso.example");
    let elsewhere = person("other", "room.9@contoso.example");
    add(&*store, &second).await;
    add(&*store, &elsewhere).await;
    let room = |key: &PersonKey, capacity: Option<u32>, floor: Option<i32>, bookable: bool| {
        calbridge_domain::RoomInfo {
            address: key.address.clone(),
            display_name: None,
            capacity,
            building: Some("Building 1".to_string()),
            floor_number: floor,
            floor_label: floor.map(|floor| format!("F{floor}")),
            room_list: Some("rooms.building-1@contoso.example".to_string()),
            bookable,
        }
    };
    let stranger = MailboxAddress::parse("not.a.person@contoso.example").unwrap();
    store
        .set_rooms(
            &SourceId("m365".to_string()),
            &[
                room(&first, Some(8), Some(-1), true),
                room(&second, None, None, false),
                calbridge_domain::RoomInfo::new(stranger),
            ],
        )
        .await
        .unwrap();
    store
        .set_rooms(
            &SourceId("other".to_string()),
            &[room(&elsewhere, Some(4), Some(2), true)],
        )
        .await
        .unwrap();
    let listed = store.list_rooms().await.unwrap();
    let with_name = |mut info: calbridge_domain::RoomInfo| {
        info.display_name = Some("Alice Example".to_string());
        info
    };
    assert_eq!(
        listed,
        vec![
            (
                first.clone(),
                with_name(room(&first, Some(8), Some(-1), true))
            ),
            (second.clone(), with_name(room(&second, None, None, false))),
            (
                elsewhere.clone(),
                with_name(room(&elsewhere, Some(4), Some(2), true))
            ),
        ],
        "a room that is not a person of the source is skipped"
    );

    // One read gives the rooms with their calendars, as reading each calendar would.
    let mut calendar = vec![
        timed("r1", "2026-12-07T09:00:00Z", "2026-12-07T10:00:00Z"),
        all_day("r2"),
        private_without_subject("r3"),
    ];
    store
        .apply_appointment_changes(&first, calendar.clone(), Vec::new())
        .await
        .unwrap();
    let with_calendars = store.list_rooms_with_appointments().await.unwrap();
    assert_eq!(with_calendars.len(), 3);
    for (key, info, mut appointments) in with_calendars {
        let listed_info = listed
            .iter()
            .find(|(listed, _)| listed == &key)
            .map(|(_, info)| info);
        assert_eq!(Some(&info), listed_info, "{key}");
        appointments.sort_by(|a, b| a.id.cmp(&b.id));
        let mut expected = store.load_appointments(&key).await.unwrap();
        expected.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(appointments, expected, "{key}");
    }
    calendar.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(store.load_appointments(&first).await.unwrap(), calendar);

    // A new read of one source replaces its rooms only.
    store
        .set_rooms(
            &SourceId("m365".to_string()),
            &[room(&second, Some(20), Some(3), true)],
        )
        .await
        .unwrap();
    let listed: Vec<PersonKey> = store
        .list_rooms()
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(listed, vec![second.clone(), elsewhere.clone()]);
    // A room that leaves the directory takes its details with it.
    store.remove_person(&second).await.unwrap();
    let listed: Vec<PersonKey> = store
        .list_rooms()
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(listed, vec![elsewhere]);
}

async fn a_room_meeting_s_first_record_wins_and_a_failed_release_gives_way(backend: Backend) {
    let room = person("m365", "room.1@contoso.example");
    let store = store_with(&backend, &room).await;
    let record = |id: &str, start: &str, state: CheckInState, at_text: &str| RoomCheckIn {
        appointment_id: id.to_string(),
        meeting_start: at(start),
        meeting_end: at(start) + jiff::SignedDuration::from_hours(1),
        state,
        at: at(at_text),
        detail: (state != CheckInState::CheckedIn).then(|| format!("{} detail", state.as_str())),
    };
    let checked_in = record(
        "m1",
        "2026-12-03T09:00:00Z",
        CheckInState::CheckedIn,
        "2026-12-03T09:09:59Z",
    );
    assert!(store.claim_room_meeting(&room, &checked_in).await.unwrap());
    // The release one second later finds the check-in and writes nothing.
    let late_release = record(
        "m1",
        "2026-12-03T09:00:00Z",
        CheckInState::Released,
        "2026-12-03T09:10:00Z",
    );
    assert!(!store
        .claim_room_meeting(&room, &late_release)
        .await
        .unwrap());
    // Another occurrence of the same id is another meeting.
    let next_day = record(
        "m1",
        "2026-12-04T09:00:00Z",
        CheckInState::Released,
        "2026-12-04T09:10:00Z",
    );
    assert!(store.claim_room_meeting(&room, &next_day).await.unwrap());
    // A claimed release that failed is written over, and then gives way to a check-in.
    let failed = record(
        "m1",
        "2026-12-04T09:00:00Z",
        CheckInState::ReleaseFailed,
        "2026-12-04T09:10:01Z",
    );
    store.set_room_meeting(&room, &failed).await.unwrap();
    let rescued = record(
        "m1",
        "2026-12-04T09:00:00Z",
        CheckInState::CheckedIn,
        "2026-12-04T09:12:00Z",
    );
    assert!(store.claim_room_meeting(&room, &rescued).await.unwrap());
    assert_eq!(
        store
            .list_room_meetings(at("2026-12-03T00:00:00Z"))
            .await
            .unwrap(),
        vec![
            (room.clone(), checked_in.clone()),
            (room.clone(), rescued.clone())
        ]
    );
    assert_eq!(
        store
            .list_room_meetings(at("2026-12-03T10:00:00Z"))
            .await
            .unwrap(),
        vec![(room.clone(), rescued)],
        "only meetings that end after `since` are listed"
    );
    // A week after a meeting ended, a new record drops it.
    let much_later = record(
        "m2",
        "2026-12-11T09:00:00Z",
        CheckInState::CheckedIn,
        "2026-12-11T09:01:00Z",
    );
    assert!(store.claim_room_meeting(&room, &much_later).await.unwrap());
    let left: Vec<String> = store
        .list_room_meetings(at("2026-01-01T00:00:00Z"))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, record)| format!("{} {}", record.appointment_id, record.meeting_start))
        .collect();
    assert_eq!(
        left,
        vec!["m1 2026-12-04T09:00:00Z", "m2 2026-12-11T09:00:00Z"]
    );
    // An unknown room is named.
    let stranger = person("m365", "nobody@contoso.example");
    let error = store
        .claim_room_meeting(&stranger, &much_later)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("nobody@contoso.example"),
        "{error}"
    );
    // A room that leaves the directory takes its records with it.
    store.remove_person(&room).await.unwrap();
    assert!(store
        .list_room_meetings(at("2026-01-01T00:00:00Z"))
        .await
        .unwrap()
        .is_empty());
}

async fn a_source_s_sync_states_read_at_once_are_what_each_person_s_read_says(backend: Backend) {
    let alice = person("tenant-a", "alice@example.com");
    let bob = person("tenant-a", "bob@example.com");
    let carol = person("tenant-a", "carol@example.com");
    let other = person("tenant-b", "alice@example.com");
    let store = store_with(&backend, &alice).await;
    for key in [&bob, &carol, &other] {
        add(&*store, key).await;
    }
    store
        .replace_appointments(
            &alice,
            at("2026-06-01T00:00:00Z"),
            at("2026-06-03T00:00:00Z"),
            vec![],
        )
        .await
        .unwrap();
    for (key, subscription) in [(&alice, "sub-a"), (&bob, "sub-b"), (&other, "sub-other")] {
        let state = SyncState {
            delta_link: Some(format!("https://graph.example/delta?{subscription}")),
            subscription_id: Some(subscription.to_string()),
            client_state: Some(Secret::new("client-state-shared-secret")),
            consecutive_failures: 1,
            ..SyncState::default()
        };
        store.set_sync_state(key, &state).await.unwrap();
    }
    let states = store
        .sync_states_of_source(&SourceId("tenant-a".to_string()))
        .await
        .unwrap();
    // Carol has none saved: absent, which means the default, as her own read says.
    assert_eq!(
        states
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        [alice.clone(), bob.clone()].into_iter().collect()
    );
    for key in [&alice, &bob] {
        assert_eq!(
            states[key],
            store.get_sync_state(key).await.unwrap(),
            "{key}"
        );
    }
    assert!(states[&alice].appointment_window.is_some());
    assert_eq!(
        store.get_sync_state(&carol).await.unwrap(),
        SyncState::default()
    );
    assert!(store
        .sync_states_of_source(&SourceId("tenant-c".to_string()))
        .await
        .unwrap()
        .is_empty());
}

on_each_backend!(
    a_source_s_sync_states_read_at_once_are_what_each_person_s_read_says,
    a_room_meeting_s_first_record_wins_and_a_failed_release_gives_way,
    rooms_keep_their_details_are_replaced_per_source_and_go_with_their_person,
    sip_publications_are_saved_replaced_removed_and_listed_while_they_live,
    a_notification_s_subscription_names_its_person_in_its_source,
    an_upserted_person_reads_back_as_pending_with_the_directory_fields,
    re_reading_the_directory_keeps_the_resolution_and_updates_the_names,
    a_failed_resolution_keeps_its_error_text_for_the_admin_view,
    people_are_listed_in_order_and_per_source,
    timed_all_day_and_private_appointments_round_trip_exactly,
    a_hidden_subject_is_stored_as_null_not_as_text,
    all_day_dates_are_stored_as_plain_dates,
    a_delta_updates_adds_and_removes_single_appointments,
    a_replacement_that_fails_midway_leaves_the_previous_window,
    a_replacement_drops_appointments_of_the_old_window_and_records_the_new_one,
    appointments_of_an_unknown_person_are_refused_with_the_person_named,
    loading_all_appointments_groups_them_by_person_including_people_without_any,
    sync_state_round_trips_and_a_fresh_state_does_not_erase_the_window,
    source_state_round_trips_and_defaults_to_unknown,
    presence_is_saved_replaced_and_listed,
    removing_a_person_removes_their_appointments_sync_state_and_presence,
    a_wrong_key_fails_cleanly_without_showing_the_secret,
    reopening_the_database_keeps_everything,
    outbox_events_come_back_in_order_after_a_cursor_in_batches,
    keys_and_ids_sort_by_bytes_whatever_the_database_collation,
);
