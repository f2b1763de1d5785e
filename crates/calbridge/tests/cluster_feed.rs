//! Two instances of the service on one PostgreSQL database and one emulator: the live stream
//! of either instance carries every presence change, whoever follows the person, and each
//! change once; the status, metrics and users API of either show the instances, their shards,
//! their heartbeats and who follows whom.
//!
//! PostgreSQL is the server of `CALBRIDGE_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the test makes its own database and drops
//! it. Without a server the test says it skipped, unless `CALBRIDGE_REQUIRE_SERVICES=1`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use calbridge::service::RunningService;
use common::sse::{EventStream, ServerEvent};
use common::*;
use jiff::{SignedDuration, Timestamp};
use m365_emulator::{Emulator, EmulatorConfig};
use serde_json::Value;
use sqlx::Connection;

const LEASE_SECONDS: u64 = 3;

/// Who follows each person, by address, over `instances`.
fn followed(instances: &[(&str, &RunningService)]) -> BTreeMap<String, Vec<String>> {
    let mut by_person: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, running) in instances {
        for sync in running.syncs.values() {
            for person in sync.followed_people() {
                by_person
                    .entry(person.address.to_string())
                    .or_default()
                    .push((*name).to_string());
            }
        }
    }
    by_person
}

/// A presence event of the stream for `address`.
fn about<'e>(event: &'e ServerEvent, address: &str) -> Option<&'e Value> {
    (event.name == "presence" && event.data["address"] == address).then_some(&event.data)
}

/// Whether `data` is busy with a note that begins with `subject`.
fn busy_with(data: &Value, subject: &str) -> bool {
    data["activity"] == "busy"
        && note_text(data["note"].as_str().unwrap_or_default()).starts_with(subject)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sse_client_of_one_instance_sees_once_a_change_the_other_instance_decides() {
    init_logs();
    let Some(database) = common::postgres::database("calbridge_feed").await else {
        return;
    };
    let emulator = Emulator::start(EmulatorConfig::generated(20, 7))
        .await
        .expect("the emulator starts");
    let graph = GraphClient::new(emulator.ready()).await;
    let group = emulator.ready().group_id.clone().expect("a group");
    let people = graph.group_members(&group).await;
    assert!(people.len() >= 10, "{people:?}");
    // One webhook endpoint for both: a change must reach it once, from the instance that
    // follows the person, never again from one that only relayed it to its stream.
    let received: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(event) = serde_json::from_slice::<Value>(&body) {
                    sink.lock().expect("lock").push(event);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_url = format!(
        "http://{}/hook",
        hook_listener.local_addr().expect("address")
    );
    tokio::spawn(async move {
        let _ = axum::serve(hook_listener, app).await;
    });
    // One shared folder: the store's key file is the same for both instances.
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let instances = common::cluster::start_instances(
        &["a", "b"],
        emulator.ready(),
        data_dir.path(),
        &database.url(),
        LEASE_SECONDS,
        &hook_url,
        "feed-test-secret",
    )
    .await;
    let refs: Vec<(&str, &RunningService)> = instances
        .iter()
        .map(|(name, running)| (name.as_str(), running))
        .collect();
    let (a, b) = (&instances[0].1, &instances[1].1);

    // The first instance claimed everyone; b gets its share within a few lease rounds.
    let owners: BTreeMap<String, String> = wait_for(
        "everyone followed once, by a or b, and both following someone",
        Duration::from_secs(30),
        || {
            let by_person = followed(&refs);
            let once = by_person.len() == people.len()
                && by_person.values().all(|owners| owners.len() == 1);
            let owners: BTreeMap<String, String> = by_person
                .into_iter()
                .map(|(person, owners)| (person, owners[0].clone()))
                .collect();
            let both = ["a", "b"]
                .iter()
                .all(|name| owners.values().any(|owner| owner == name));
            (once && both).then_some(owners)
        },
    )
    .await;
    let at_b = owners
        .iter()
        .find(|(_, owner)| owner.as_str() == "b")
        .map(|(person, _)| person.clone())
        .expect("b follows someone");
    let at_a = owners
        .iter()
        .find(|(_, owner)| owner.as_str() == "a")
        .map(|(person, _)| person.clone())
        .expect("a follows someone");
    wait_for("b decided its people", PATIENCE, || {
        presence_of(b, &at_b).map(|_| ())
    })
    .await;
    // The test owns its instant: both people are free around now, then get one meeting each.
    let now = Timestamp::now();
    graph.free_around(&at_b, now).await;
    graph.free_around(&at_a, now).await;
    let start = now - SignedDuration::from_mins(1);
    let end = start + SignedDuration::from_mins(45);

    let mut stream =
        EventStream::connect(&format!("http://{}", a.address), a.api_token.expose()).await;

    // A change b decides reaches a's stream, though a does not follow the person.
    let followed_by_b = "Decided by b, streamed by a";
    let event_id = graph
        .create_event(&at_b, followed_by_b, start, end, "busy")
        .await;
    let seen = stream
        .wait_for(&format!("{at_b} busy on a's stream"), PATIENCE, |event| {
            about(event, &at_b).is_some_and(|data| busy_with(data, followed_by_b))
        })
        .await;
    assert_eq!(seen.data["source"], SOURCE, "{seen:?}");
    assert!(
        seen.data["decided_at"].is_string() && seen.data["why"].is_string(),
        "the same fields as a change a decides: {seen:?}"
    );
    assert_eq!(
        presence_of(a, &at_b),
        None,
        "a does not follow {at_b}: the change came from b, through the store"
    );

    // A change a decides itself reaches its stream from its own hub; saved, it must not come
    // round a second time through the feed.
    let followed_by_a = "Decided by a itself";
    graph
        .create_event(&at_a, followed_by_a, start, end, "busy")
        .await;
    stream
        .wait_for(&format!("{at_a} busy on a's stream"), PATIENCE, |event| {
            about(event, &at_a).is_some_and(|data| busy_with(data, followed_by_a))
        })
        .await;
    let store = a.store.clone();
    let key_a = key(&at_a);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let saved = store
            .load_presence(&key_a)
            .await
            .expect("the store answers");
        if saved.as_ref().is_some_and(|saved| {
            saved.activity == "busy"
                && note_text(saved.note.as_deref().unwrap_or_default()).starts_with(followed_by_a)
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a saves {at_a}'s presence: {saved:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The end of b's person's meeting is saved after both changes above: by the time a's
    // stream shows it, any repeat of them would have come before it (the feed is heard in
    // commit order).
    graph.delete_event(&at_b, &event_id).await;
    stream
        .wait_for(
            &format!("{at_b} free again on a's stream"),
            PATIENCE,
            |event| about(event, &at_b).is_some_and(|data| data["activity"] == "available"),
        )
        .await;
    let count = |address: &str, subject: &str| {
        stream
            .seen
            .iter()
            .filter(|event| about(event, address).is_some_and(|data| busy_with(data, subject)))
            .count()
    };
    assert_eq!(count(&at_b, followed_by_b), 1, "{:#?}", stream.seen);
    assert_eq!(count(&at_a, followed_by_a), 1, "{:#?}", stream.seen);

    // The webhook heard b's change once: a relayed it to its stream only.
    let webhook_events = wait_for("the webhook hears the meeting end", PATIENCE, || {
        let events = received.lock().expect("lock").clone();
        events
            .iter()
            .any(|event| event["address"] == at_b.as_str() && event["activity"] == "available")
            .then_some(events)
    })
    .await;
    let delivered_busy = webhook_events
        .iter()
        .filter(|event| event["address"] == at_b.as_str() && busy_with(event, followed_by_b))
        .count();
    assert_eq!(delivered_busy, 1, "{webhook_events:#?}");

    // Either instance's users API says who follows whom, and its status shows both instances
    // with their shards and heartbeats, as of its last lease round (one per second here).
    let api = Api::new(a);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let users = api.get_authorized("/api/v1/users").await;
        let status = api.get_authorized("/api/v1/status").await;
        let instance_of = |address: &str| -> Value {
            users["users"]
                .as_array()
                .and_then(|users| users.iter().find(|user| user["address"] == address))
                .map_or(Value::Null, |user| user["instance"].clone())
        };
        let shown = status["cluster"]["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let names: Vec<&str> = shown
            .iter()
            .map(|instance| instance["name"].as_str().unwrap_or_default())
            .collect();
        let shards: u64 = shown
            .iter()
            .map(|instance| instance["shards"].as_u64().unwrap_or(0))
            .sum();
        let heartbeats_fresh = shown.iter().all(|instance| {
            instance["alive"] == true
                && instance["heartbeat_age_seconds"]
                    .as_f64()
                    .is_some_and(|age| (0.0..60.0).contains(&age))
        });
        if instance_of(&at_b) == "b"
            && instance_of(&at_a) == "a"
            && names == ["a", "b"]
            && shards == 256
            && heartbeats_fresh
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a's API names the instances: {at_b} → {}, {at_a} → {}; status: {status}",
            instance_of(&at_b),
            instance_of(&at_a)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let users = api.get_authorized("/api/v1/users").await;
    let presence_of_b_person = users["users"]
        .as_array()
        .and_then(|users| users.iter().find(|user| user["address"] == at_b.as_str()))
        .map(|user| user["presence"]["activity"].clone());
    assert_eq!(
        presence_of_b_person,
        Some(Value::from("available")),
        "a shows {at_b} as b saved them"
    );

    // The metrics of a show the same, per instance.
    let (code, metrics) = api.get("/metrics", None).await;
    assert_eq!(code, 200);
    let metrics = metrics.as_str().expect("text").to_string();
    let sample = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(line_start))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line_start} in\n{metrics}"))
    };
    let shards_a = sample("calbridge_cluster_instance_shards{instance=\"a\"}");
    let shards_b = sample("calbridge_cluster_instance_shards{instance=\"b\"}");
    assert_eq!(shards_a + shards_b, 256.0, "{metrics}");
    assert!(sample("calbridge_cluster_instance_heartbeat_age_seconds{instance=\"b\"}") >= 0.0);
    assert!(
        sample("calbridge_presence_relayed_total") >= 2.0,
        "{metrics}"
    );

    // PostgreSQL cuts the connections that listen to the feed, as a restart does: a listens
    // again, and reads what was decided meanwhile, so its stream still shows b's next change,
    // once (what it relayed before the cut is not relayed again).
    let mut admin = sqlx::PgConnection::connect(&database.url())
        .await
        .expect("connect to the test database");
    let cut: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query = 'LISTEN \"calbridge_presence\"'",
    )
    .fetch_all(&mut admin)
    .await
    .expect("cut the listeners");
    assert_eq!(cut.len(), 2, "both instances listen: {cut:?}");
    let _ = admin.close().await;
    let after_cut = "After the cut";
    let event_id = graph
        .create_event(&at_b, after_cut, start, end, "busy")
        .await;
    stream
        .wait_for(&format!("{at_b} busy after the cut"), PATIENCE, |event| {
            about(event, &at_b).is_some_and(|data| busy_with(data, after_cut))
        })
        .await;
    graph.delete_event(&at_b, &event_id).await;
    let n_seen = stream.seen.len();
    stream
        .wait_for(&format!("{at_b} free after the cut"), PATIENCE, |event| {
            about(event, &at_b).is_some_and(|data| data["activity"] == "available")
        })
        .await;
    let after: Vec<&ServerEvent> = stream.seen[n_seen..].iter().collect();
    let count = |subject: &str| {
        stream
            .seen
            .iter()
            .filter(|event| about(event, &at_b).is_some_and(|data| busy_with(data, subject)))
            .count()
    };
    assert_eq!(count(after_cut), 1, "{:#?}", stream.seen);
    assert_eq!(count(followed_by_b), 1, "{:#?}", stream.seen);
    assert!(
        after.iter().all(|event| about(event, &at_a).is_none()),
        "nothing about {at_a}, who did not change: {after:#?}"
    );

    drop(stream);
    for (_, running) in instances {
        running.shutdown().await;
    }
    emulator.shutdown().await;
}
