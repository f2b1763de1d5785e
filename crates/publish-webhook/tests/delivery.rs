//! The publisher against a real HTTP receiver (axum on 127.0.0.1:0) that fails for a while:
//! 503 answers or a closed port, then acceptance. Backoffs are milliseconds so that every
//! test finishes in about a second of wall-clock time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use calbridge_domain::{MailboxAddress, Secret, SourceId};
use calbridge_publish_webhook::{
    DeliveryMode, PendingCount, PresenceEvent, WebhookConfig, WebhookPublisher,
};
use calbridge_store::{OutboxId, PersonKey, SecretKey, SqliteStore, Store};
use jiff::Timestamp;
use serde_json::Value;
use tokio::sync::oneshot;

const SECRET: &str = "shared-webhook-secret-for-tests";
const PATIENCE: Duration = Duration::from_secs(15);

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    event_id: String,
    signature: String,
    timestamp: String,
    content_type: String,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// A webhook receiver that answers 503 while `failures_left > 0` (counting down) or while
/// `down` is set, and 204 otherwise.
#[derive(Default)]
struct Receiver {
    failures_left: AtomicUsize,
    down: AtomicBool,
    /// Every request, accepted or not, in arrival order.
    attempts: Mutex<Vec<(Received, StatusCode)>>,
}

impl Receiver {
    fn accepted(&self) -> Vec<Received> {
        self.attempts
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|(_, status)| status.is_success())
            .map(|(received, _)| received.clone())
            .collect()
    }

    fn n_refused(&self) -> usize {
        self.attempts
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|(_, status)| !status.is_success())
            .count()
    }

    fn attempted_ids(&self) -> Vec<String> {
        self.attempts
            .lock()
            .expect("receiver lock")
            .iter()
            .map(|(received, _)| received.event_id.clone())
            .collect()
    }
}

async fn hook(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let received = Received {
        event_id: header("x-calbridge-event-id"),
        signature: header("x-calbridge-signature"),
        timestamp: header("x-calbridge-timestamp"),
        content_type: header("content-type"),
        body: body.to_vec(),
    };
    let failing = receiver.down.load(Ordering::SeqCst)
        || receiver
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
    let status = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::NO_CONTENT
    };
    receiver
        .attempts
        .lock()
        .expect("receiver lock")
        .push((received, status));
    status
}

/// Serves `receiver` on `listener` until the returned sender is dropped or fired.
fn serve(listener: tokio::net::TcpListener, receiver: Arc<Receiver>) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(receiver);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .expect("the receiver serves");
    });
    stop
}

async fn start_receiver(receiver: Arc<Receiver>) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let address = listener.local_addr().expect("receiver address");
    (address, serve(listener, receiver))
}

fn config(name: &str, address: SocketAddr, mode: DeliveryMode) -> WebhookConfig {
    let text = format!(
        r#"
        name = "{name}"
        url = "http://{address}/hook"
        secret = "{SECRET}"
        mode = "{}"
        timeout_seconds = 2
        first_backoff_seconds = 0.01
        max_backoff_seconds = 0.1
        "#,
        mode.as_str()
    );
    toml::from_str(&text).expect("the webhook config parses")
}

fn person(local: &str) -> PersonKey {
    PersonKey::new(
        SourceId("contoso".to_string()),
        MailboxAddress::parse(&format!("{local}@example.com")).expect("an address"),
    )
}

fn change(local: &str, activity: &str, minute: i64) -> PresenceEvent {
    let decided_at = Timestamp::from_second(1_767_261_600 + minute * 60).expect("a time");
    PresenceEvent {
        person: person(local),
        activity: activity.to_string(),
        note: format!("{local} is {activity} #{activity}"),
        until: (activity != "available").then(|| {
            decided_at
                .checked_add(jiff::SignedDuration::from_mins(30))
                .expect("a time")
        }),
        decided_at,
    }
}

async fn memory_store() -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open_in_memory(SecretKey::generate())
            .await
            .expect("an in-memory store"),
    )
}

/// Starts a publisher whose shutdown is the returned sender.
fn start(
    configs: Vec<WebhookConfig>,
    store: Arc<dyn Store>,
) -> (WebhookPublisher, oneshot::Sender<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let publisher = WebhookPublisher::start(configs, store, async move {
        let _ = stopped.await;
    })
    .expect("the publisher starts");
    (publisher, stop)
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < PATIENCE,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Verifies `X-Calbridge-Signature` the way a receiver would: with ring's constant-time check.
fn assert_signed(received: &Received) {
    let hex_tag = received
        .signature
        .strip_prefix("sha256=")
        .unwrap_or_else(|| panic!("signature header {:?}", received.signature));
    let tag = hex::decode(hex_tag).expect("hex signature");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    ring::hmac::verify(&key, &received.body, &tag)
        .unwrap_or_else(|_| panic!("signature of event {} does not verify", received.event_id));
    let wrong_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another secret");
    assert!(ring::hmac::verify(&wrong_key, &received.body, &tag).is_err());
}

fn ids_of(received: &[Received]) -> Vec<i64> {
    received
        .iter()
        .map(|received| {
            let from_header: i64 = received.event_id.parse().expect("a numeric event id");
            assert_eq!(received.json()["id"], from_header, "header and body agree");
            from_header
        })
        .collect()
}

async fn status_of(publisher: &WebhookPublisher) -> calbridge_publish_webhook::EndpointStatus {
    publisher
        .status()
        .await
        .expect("status")
        .into_iter()
        .next()
        .expect("one endpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_once_in_order_and_signed_after_the_receiver_fails_for_a_while() {
    let receiver = Arc::new(Receiver::default());
    receiver.failures_left.store(6, Ordering::SeqCst);
    let (address, _server) = start_receiver(receiver.clone()).await;
    let store = memory_store().await;
    let (publisher, stop) = start(
        vec![config("crm", address, DeliveryMode::EveryChange)],
        store.clone(),
    );

    let people = ["ada", "bob", "carol"];
    let activities = ["busy", "away", "available", "dnd"];
    let mut recorded = Vec::new();
    let mut changes = Vec::new();
    for index in 0..20 {
        let change = change(
            people[index % people.len()],
            activities[index % activities.len()],
            index as i64,
        );
        recorded.push(publisher.record(&change).await.expect("recorded").0);
        changes.push(change);
    }

    wait_until("20 accepted events", || receiver.accepted().len() >= 20).await;
    let final_status = {
        let started = Instant::now();
        loop {
            let status = status_of(&publisher).await;
            if status.pending == PendingCount::Exactly(0) {
                break status;
            }
            assert!(started.elapsed() < PATIENCE, "still pending: {status:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // Nothing more may arrive once the cursor is at the end.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let accepted = receiver.accepted();
    assert_eq!(ids_of(&accepted), recorded, "every change once, in order");
    assert_eq!(receiver.n_refused(), 6);
    // The refused attempts were all the first event: nothing was sent ahead of it.
    let attempted = receiver.attempted_ids();
    assert!(
        attempted[..7]
            .iter()
            .all(|id| *id == recorded[0].to_string()),
        "{attempted:?}"
    );
    for (received, change) in accepted.iter().zip(&changes) {
        assert_signed(received);
        assert_eq!(received.content_type, "application/json");
        let timestamp: i64 = received.timestamp.parse().expect("Unix seconds");
        assert!((timestamp - Timestamp::now().as_second()).abs() < 60);
        let body = received.json();
        assert_eq!(body["type"], "presence.changed");
        assert_eq!(body["address"], change.person.address.as_str());
        assert_eq!(body["source"], "contoso");
        assert_eq!(body["activity"], change.activity.as_str());
        assert_eq!(body["note"], change.note.as_str());
        assert_eq!(body["decided_at"], change.decided_at.to_string());
        match change.until {
            Some(until) => assert_eq!(body["until"], until.to_string()),
            None => assert_eq!(body["until"], Value::Null),
        }
    }

    assert_eq!(
        final_status.cursor,
        OutboxId(*recorded.last().expect("ids"))
    );
    assert_eq!(final_status.consecutive_failures, 0);
    assert_eq!(final_status.delivered_total, 20);
    assert!(final_status.last_success_at.is_some());
    let last_error = final_status.last_error.expect("the 503s were seen");
    assert!(last_error.contains("503"), "{last_error}");
    assert!(!last_error.contains(&address.to_string()), "{last_error}");
    assert_eq!(
        store
            .get_outbox_cursor("webhook:crm")
            .await
            .expect("cursor"),
        OutboxId(*recorded.last().expect("ids")),
        "the cursor is saved in the store"
    );

    let _ = stop.send(());
    let ends = publisher.wait_stopped().await;
    assert_eq!(ends.len(), 1);
    assert!(ends[0].outcome.is_ok(), "{ends:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_per_user_sends_only_the_newest_change_of_each_person_after_an_outage() {
    // Nothing listens on the port yet: connections are refused.
    let port_holder = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = port_holder.local_addr().expect("address");
    drop(port_holder);
    let store = memory_store().await;
    let (publisher, stop) = start(
        vec![config("wallboard", address, DeliveryMode::LatestPerUser)],
        store.clone(),
    );

    let sequence = [
        ("ada", "busy"),
        ("bob", "busy"),
        ("ada", "available"),
        ("carol", "away"),
        ("bob", "away"),
        ("ada", "dnd"),
        ("dave", "busy"),
    ];
    let mut recorded = Vec::new();
    for (minute, (local, activity)) in sequence.iter().enumerate() {
        recorded.push(
            publisher
                .record(&change(local, activity, minute as i64))
                .await
                .expect("recorded")
                .0,
        );
    }
    let started = Instant::now();
    loop {
        let status = status_of(&publisher).await;
        if status.consecutive_failures >= 3 {
            assert_eq!(status.pending, PendingCount::Exactly(7));
            assert_eq!(status.cursor, OutboxId(0));
            let error = status.last_error.expect("an error");
            assert!(error.contains("cannot deliver"), "{error}");
            break;
        }
        assert!(started.elapsed() < PATIENCE, "no failures seen: {status:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The receiver comes back on the same port.
    let receiver = Arc::new(Receiver::default());
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("bind the receiver's port again");
    let _server = serve(listener, receiver.clone());
    wait_until("the endpoint to catch up", || {
        receiver.accepted().len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let accepted = receiver.accepted();
    // Newest per person, in outbox order: carol away (4), bob away (5), ada dnd (6), dave (7).
    assert_eq!(
        ids_of(&accepted),
        vec![recorded[3], recorded[4], recorded[5], recorded[6]]
    );
    let shown: Vec<(String, String)> = accepted
        .iter()
        .map(|received| {
            assert_signed(received);
            let body = received.json();
            (
                body["address"].as_str().expect("address").to_string(),
                body["activity"].as_str().expect("activity").to_string(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("carol@example.com", "away"),
            ("bob@example.com", "away"),
            ("ada@example.com", "dnd"),
            ("dave@example.com", "busy"),
        ]
        .map(|(address, activity)| (address.to_string(), activity.to_string()))
    );

    // A later change is sent on its own, as in every mode.
    let next = publisher
        .record(&change("ada", "available", 10))
        .await
        .expect("recorded")
        .0;
    wait_until("the next change", || receiver.accepted().len() >= 5).await;
    assert_eq!(ids_of(&receiver.accepted())[4], next);
    let status = status_of(&publisher).await;
    assert_eq!(status.pending, PendingCount::Exactly(0));
    assert_eq!(status.cursor, OutboxId(next));

    let _ = stop.send(());
    publisher.wait_stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_publisher_resumes_from_the_saved_cursor_without_resending() {
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let path = data_dir.path().join("calbridge.sqlite");
    let key = SecretKey::generate();
    let receiver = Arc::new(Receiver::default());
    let (address, _server) = start_receiver(receiver.clone()).await;
    let configs = || vec![config("crm", address, DeliveryMode::EveryChange)];

    // First run: three changes delivered, then two more while the receiver is down.
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&path, key.clone())
            .await
            .expect("open the store"),
    );
    let (first, stop_first) = start(configs(), store.clone());
    let mut recorded = Vec::new();
    for minute in 0..3 {
        recorded.push(
            first
                .record(&change("ada", "busy", minute))
                .await
                .expect("recorded")
                .0,
        );
    }
    wait_until("three deliveries", || receiver.accepted().len() == 3).await;
    let started = Instant::now();
    while store
        .get_outbox_cursor("webhook:crm")
        .await
        .expect("cursor")
        != OutboxId(recorded[2])
    {
        assert!(started.elapsed() < PATIENCE, "the cursor was never saved");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    receiver.down.store(true, Ordering::SeqCst);
    for minute in 3..5 {
        recorded.push(
            first
                .record(&change("bob", "away", minute))
                .await
                .expect("recorded")
                .0,
        );
    }
    wait_until("refused attempts", || receiver.n_refused() >= 2).await;
    let _ = stop_first.send(());
    first.wait_stopped().await;
    drop(first);
    drop(store);

    // Second run on the same file: the receiver is back.
    receiver.down.store(false, Ordering::SeqCst);
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&path, key.clone())
            .await
            .expect("reopen the store"),
    );
    assert_eq!(
        store
            .get_outbox_cursor("webhook:crm")
            .await
            .expect("cursor"),
        OutboxId(recorded[2])
    );
    let (second, stop_second) = start(configs(), store.clone());
    recorded.push(
        second
            .record(&change("carol", "dnd", 5))
            .await
            .expect("recorded")
            .0,
    );
    wait_until("all six delivered", || receiver.accepted().len() >= 6).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let accepted = receiver.accepted();
    assert_eq!(
        ids_of(&accepted),
        recorded,
        "no event sent twice, none lost"
    );
    accepted.iter().for_each(assert_signed);
    let _ = stop_second.send(());
    second.wait_stopped().await;
}

#[tokio::test]
async fn misconfigured_endpoints_are_refused_at_start_without_leaking_url_or_secret() {
    let store = memory_store().await;
    let address: SocketAddr = "127.0.0.1:9".parse().expect("an address");
    let mut duplicate = vec![
        config("crm", address, DeliveryMode::EveryChange),
        config("crm", address, DeliveryMode::LatestPerUser),
    ];
    let error = WebhookPublisher::start(duplicate.clone(), store.clone(), std::future::pending())
        .err()
        .expect("two endpoints with one name are refused");
    assert!(error.to_string().contains("crm"), "{error}");

    duplicate.truncate(1);
    duplicate[0].extra_root_ca = Some("/nonexistent/ca.pem".into());
    duplicate[0].url = "https://hooks.example.com/T0KEN-in-path".to_string();
    duplicate[0].secret = Secret::new("hunter2");
    let error = WebhookPublisher::start(duplicate, store, std::future::pending())
        .err()
        .expect("a missing CA file is refused");
    let message = error.to_string();
    assert!(message.contains("/nonexistent/ca.pem"), "{message}");
    assert!(!message.contains("T0KEN"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}
