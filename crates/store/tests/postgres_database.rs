//! What is about PostgreSQL itself: secrets as the server holds them, a schema from a newer
//! calbridge, what an operator reads when the server or database is missing, and several
//! instances on one database. The store contract itself runs on SQLite and PostgreSQL alike
//! in `store.rs`; the PostgreSQL counterparts of `sqlite_file.rs` are here.

mod common;

use common::*;

use std::sync::Arc;

use calbridge_domain::Secret;
use calbridge_store::{
    NewOutboxEvent, OutboxId, PersonUpsert, PostgresStore, PostgresUrl, SecretKey, Store,
    StoreError,
};

/// A PostgreSQL backend, or `None` when the test skips (see `Backend::postgres`).
async fn postgres() -> Option<Backend> {
    Backend::postgres().await
}

fn hex(text: &str) -> String {
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test]
async fn secrets_are_encrypted_in_the_database() {
    let Some(backend) = postgres().await else {
        return;
    };
    let store = backend.fresh_store().await;
    let alice = person("tenant-a", "alice@example.com");
    store
        .upsert_person(&PersonUpsert {
            key: alice.clone(),
            display_name: None,
            sip_uri: None,
        })
        .await
        .unwrap();
    write_secrets_marked_in_clear(&*store, &alice).await;

    // The rows as the server holds them: every column as text, the sealed bytes in hex.
    let database = store.database();
    let secrets = database
        .rows_as_text("SELECT name, encode(sealed, 'hex') FROM secrets")
        .await;
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0][0].as_deref(), Some("tenant-a/client-secret"));
    let sealed = secrets[0][1].clone().unwrap();
    // Format byte, 24-byte nonce, ciphertext, 16-byte tag.
    assert_eq!(
        sealed.len() / 2,
        1 + 24 + "Xyz~client-secret-in-clear".len() + 16
    );
    assert!(!sealed.contains(&hex("client-secret-in-clear")), "{sealed}");
    let states = database
        .rows_as_text("SELECT encode(client_state_sealed, 'hex') FROM sync_state")
        .await;
    let sealed_state = states[0][0].clone().unwrap();
    assert!(
        !sealed_state.contains(&hex("client-state-in-clear")),
        "{sealed_state}"
    );
    for table in ["secrets", "sync_state"] {
        let rows = database
            .rows_as_text(&format!("SELECT CAST(t AS TEXT) FROM {table} t"))
            .await;
        let text = format!("{rows:?}");
        assert!(!text.contains("in-clear"), "{table}: {text}");
    }
}

#[tokio::test]
async fn a_database_from_a_newer_calbridge_is_refused_naming_the_database() {
    let Some(backend) = postgres().await else {
        return;
    };
    let database = backend.new_database().await;
    database
        .open(SecretKey::generate())
        .await
        .unwrap()
        .close()
        .await;
    database
        .execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (9999, 'from the future', true, '\\x00', 0)",
        )
        .await;

    let Err(error) = database.open(SecretKey::generate()).await else {
        panic!("a schema from the future was accepted");
    };
    assert!(
        matches!(
            error,
            StoreError::SchemaTooNew {
                found: 9999,
                supported: 6,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    let location = database.postgres_url().unwrap().location().to_string();
    assert!(
        message.starts_with(&format!("the store at {location} has schema version 9999")),
        "{message}"
    );
    assert!(
        location.starts_with("PostgreSQL database `calbridge_test_"),
        "{location}"
    );
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_named_with_its_answer_but_not_the_password() {
    // Port 1 on loopback: nothing listens, so the connection is refused at once. No server
    // is needed for this test.
    let url =
        PostgresUrl::parse("postgres://calbridge:s3cret-password@127.0.0.1:1/presence").unwrap();
    let error = PostgresStore::open(&url, SecretKey::generate())
        .await
        .unwrap_err();
    let message = format!("{error} {error:?}");
    assert!(matches!(error, StoreError::Open { .. }), "{message}");
    assert!(
        error.to_string().starts_with(
            "cannot open the store at PostgreSQL database `presence` on 127.0.0.1:1 \
             (user calbridge): "
        ),
        "{message}"
    );
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

#[tokio::test]
async fn a_database_that_does_not_exist_is_named_with_the_servers_answer() {
    let Some(backend) = postgres().await else {
        return;
    };
    let Backend::Postgres { server_url } = &backend else {
        unreachable!("a PostgreSQL backend");
    };
    // The password goes nowhere near the message, whether or not the server asks for it.
    let with_password = server_url.replacen("://postgres@", "://postgres:s3cret-password@", 1);
    let url =
        PostgresUrl::parse(&with_database(&with_password, "calbridge_no_such_database")).unwrap();
    let error = PostgresStore::open(&url, SecretKey::generate())
        .await
        .unwrap_err();
    let message = format!("{error} {error:?}");
    assert!(matches!(error, StoreError::Open { .. }), "{message}");
    assert!(
        message.contains("PostgreSQL database `calbridge_no_such_database` on "),
        "{message}"
    );
    assert!(
        message.contains("database \"calbridge_no_such_database\" does not exist"),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_on_one_database_share_it() {
    let Some(backend) = postgres().await else {
        return;
    };
    let database = backend.new_database().await;
    let key = SecretKey::generate();
    // Both migrate at once; sqlx's advisory lock makes one wait for the other.
    let (first, second) = tokio::join!(database.open(key.clone()), database.open(key.clone()));
    let (first, second) = (first.unwrap(), second.unwrap());

    let alice = person("tenant-a", "alice@example.com");
    first
        .upsert_person(&PersonUpsert {
            key: alice.clone(),
            display_name: Some("Alice".to_string()),
            sip_uri: None,
        })
        .await
        .unwrap();
    second
        .put_secret("shared", &Secret::new("sealed by the second"))
        .await
        .unwrap();
    assert_eq!(
        second
            .get_person(&alice)
            .await
            .unwrap()
            .unwrap()
            .display_name,
        Some("Alice".to_string())
    );
    assert_eq!(
        first.get_secret("shared").await.unwrap().unwrap().expose(),
        "sealed by the second"
    );

    // Both append to the outbox at once: every event gets its own id, and ids come back in
    // the order they were handed out.
    let stores = [Arc::new(first), Arc::new(second)];
    let mut appends = tokio::task::JoinSet::new();
    for n in 0..20 {
        let store = stores[n % 2].clone();
        appends.spawn(async move {
            store
                .append_outbox(&NewOutboxEvent {
                    topic: "presence.changed".to_string(),
                    person: None,
                    payload: serde_json::json!({ "n": n }),
                    created_at: at("2026-06-01T10:00:00Z"),
                })
                .await
                .unwrap()
        });
    }
    let mut ids: Vec<OutboxId> = appends.join_all().await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    let read: Vec<OutboxId> = stores[0]
        .read_outbox_after(OutboxId(0), 100)
        .await
        .unwrap()
        .iter()
        .map(|event| event.id)
        .collect();
    assert_eq!(read, ids);
}

#[tokio::test]
async fn sslmode_require_connects_over_tls_when_the_server_offers_it() {
    let Some(backend) = postgres().await else {
        return;
    };
    let database = backend.new_database().await;
    if database.rows_as_text("SHOW ssl").await[0][0].as_deref() != Some("on") {
        eprintln!("skipped: the PostgreSQL server has ssl = off");
        return;
    }
    let (Backend::Postgres { server_url }, TestDatabase::Postgres { name, .. }) =
        (&backend, database.as_ref())
    else {
        unreachable!("a PostgreSQL backend");
    };
    let url = with_database(server_url, name);
    let separator = if url.contains('?') { '&' } else { '?' };
    // `require` encrypts without checking the certificate (Debian's is self-signed); it fails
    // outright when calbridge cannot speak TLS.
    let url = PostgresUrl::parse(&format!("{url}{separator}sslmode=require")).unwrap();
    let store = PostgresStore::open(&url, SecretKey::generate())
        .await
        .unwrap();
    store
        .put_secret("over-tls", &Secret::new("sealed"))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_secret("over-tls")
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "sealed"
    );
    store.close().await;
}
