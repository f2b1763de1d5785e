//! Three instances of the service on one PostgreSQL database and one emulator: every person is
//! followed by exactly one instance, a killed instance's people are taken over within the
//! lease, from the store (no window re-read, no second subscription), with one read of what
//! changed while nobody followed them.
//!
//! PostgreSQL is the server of `CALBRIDGE_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the test makes its own database and drops
//! it. Without a server the test says it skipped, unless `CALBRIDGE_REQUIRE_SERVICES=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use calbridge::service::RunningService;
use common::cluster::{free_port, Process, ProcessConfig};
use common::sip::PresenceServer;
use common::*;
use jiff::{SignedDuration, Timestamp};
use m365_emulator::{Emulator, EmulatorConfig};

const LEASE_SECONDS: u64 = 3;

/// Who each instance follows, by address.
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

/// Waits until every one of `people` is followed by exactly one of `instances`.
async fn wait_followed_once(
    what: &str,
    people: &[String],
    instances: &[(&str, &RunningService)],
    patience: Duration,
) -> BTreeMap<String, String> {
    wait_for(what, patience, || {
        let by_person = followed(instances);
        let once = people.iter().all(|person| {
            by_person
                .get(person)
                .is_some_and(|owners| owners.len() == 1)
        }) && by_person.len() == people.len();
        once.then(|| {
            by_person
                .into_iter()
                .map(|(person, owners)| (person, owners[0].clone()))
                .collect()
        })
    })
    .await
}

/// The subscription of every person as their owner knows it, once everyone has one.
async fn subscriptions_of(
    owners: &BTreeMap<String, String>,
    instances: &[(&str, &RunningService)],
) -> BTreeSet<String> {
    wait_for("a subscription per person", PATIENCE, || {
        let mut ids = BTreeSet::new();
        for (person, owner) in owners {
            let running = instances.iter().find(|(name, _)| name == owner)?.1;
            let sync = running.syncs.values().next()?;
            ids.insert(sync.health(&key(person))?.subscription_id?);
        }
        (ids.len() == owners.len()).then_some(ids)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_the_people_and_take_over_a_killed_ones() {
    init_logs();
    let Some(database) = common::postgres::database("calbridge_cluster").await else {
        return;
    };
    let emulator = Emulator::start(EmulatorConfig::generated(30, 5))
        .await
        .expect("the emulator starts");
    let graph = GraphClient::new(emulator.ready()).await;
    let group = emulator.ready().group_id.clone().expect("a group");
    let people = graph.group_members(&group).await;
    assert!(people.len() >= 20, "{people:?}");
    // One webhook endpoint for the three: each change must reach it once, in order.
    let received: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) {
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
    // One shared folder: the store's key file is the same for every instance.
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let mut instances = common::cluster::start_instances(
        &["a", "b", "c"],
        emulator.ready(),
        data_dir.path(),
        &database.url(),
        LEASE_SECONDS,
        &hook_url,
        "cluster-test-secret",
    )
    .await;
    let refs: Vec<(&str, &RunningService)> = instances
        .iter()
        .map(|(name, running)| (name.as_str(), running))
        .collect();

    // The first instance claimed everything; the others get their share within a few rounds.
    wait_followed_once(
        "everyone followed by exactly one of three instances",
        &people,
        &refs,
        Duration::from_secs(30),
    )
    .await;
    wait_for(
        "all three instances follow someone",
        Duration::from_secs(30),
        || {
            let by_owner: BTreeSet<String> = followed(&refs).values().flatten().cloned().collect();
            (by_owner.len() == 3).then_some(())
        },
    )
    .await;
    let owners = wait_followed_once("a stable split", &people, &refs, PATIENCE).await;
    // Each person's presence is decided where they are followed, and there is one live
    // subscription per mailbox, made once whatever the hand-overs.
    let ids = subscriptions_of(&owners, &refs).await;
    let live: BTreeSet<String> = emulator.subscription_ids().into_iter().collect();
    assert_eq!(
        ids, live,
        "one live subscription per mailbox, each known to its owner"
    );
    for (person, owner) in &owners {
        let running = refs.iter().find(|(name, _)| name == owner).map(|(_, r)| *r);
        assert!(
            running.is_some_and(|running| presence_of(running, person).is_some()),
            "{person}'s presence on {owner}"
        );
    }
    // The status page of any instance shows the three and their shards (as of its last round).
    let http = calbridge_net::build_http_client(None).expect("an HTTP client");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, a) = &instances[0];
        let status: serde_json::Value = http
            .get(format!("http://{}/api/v1/status", a.address))
            .bearer_auth(a.api_token.expose())
            .send()
            .await
            .expect("status answers")
            .json()
            .await
            .expect("status JSON");
        let shown: Vec<(String, u64)> = status["cluster"]["instances"]
            .as_array()
            .expect("the instances on the status")
            .iter()
            .map(|instance| {
                (
                    instance["name"].as_str().unwrap_or_default().to_string(),
                    instance["shards"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let names: Vec<&str> = shown.iter().map(|(name, _)| name.as_str()).collect();
        if names == ["a", "b", "c"] && shown.iter().map(|(_, shards)| shards).sum::<u64>() == 256 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Graph notifies the instance that made the subscription (a, which followed everyone at
    // first); for someone b follows now, a hands the notification over and b reads it.
    let at_b = owners
        .iter()
        .find(|(_, owner)| owner.as_str() == "b")
        .map(|(person, _)| person.clone())
        .expect("b follows someone");
    let now = Timestamp::now();
    graph.free_around(&at_b, now).await;
    let start = now - SignedDuration::from_mins(1);
    graph
        .create_event(
            &at_b,
            "Heard by a, read by b",
            start,
            start + SignedDuration::from_mins(45),
            "busy",
        )
        .await;
    wait_presence(&instances[1].1, &at_b, "busy", |note| {
        note.starts_with("Heard by a, read by b")
    })
    .await;
    // Any instance's API answers for everyone: a shows b's person as b decided it, and who
    // follows whom.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, a) = &instances[0];
        let users: serde_json::Value = http
            .get(format!("http://{}/api/v1/users", a.address))
            .bearer_auth(a.api_token.expose())
            .send()
            .await
            .expect("users answers")
            .json()
            .await
            .expect("users JSON");
        let list = users["users"].as_array().cloned().unwrap_or_default();
        let of_b = list.iter().find(|user| user["address"] == at_b.as_str());
        let shown_right = of_b.is_some_and(|user| {
            user["instance"] == "b"
                && user["presence"]["note"]
                    .as_str()
                    .is_some_and(|note| note.starts_with("Heard by a, read by b"))
        });
        let everyone = list.len() == people.len()
            && list
                .iter()
                .all(|user| !user["presence"].is_null() && user["instance"].is_string());
        if shown_right && everyone {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{users}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // c is killed: nothing given back. A meeting is booked for one of its people meanwhile.
    drop(refs);
    let (_, c) = instances.pop().expect("three instances");
    let c_people: Vec<String> = owners
        .iter()
        .filter(|(_, owner)| owner.as_str() == "c")
        .map(|(person, _)| person.clone())
        .collect();
    assert!(!c_people.is_empty(), "c followed someone: {owners:?}");
    let subscriptions_before = emulator
        .counters()
        .by_kind
        .get("subscriptions.create")
        .copied()
        .unwrap_or(0);
    c.abort();
    let killed_at = std::time::Instant::now();
    let changed = &c_people[0];
    let now = Timestamp::now();
    graph.free_around(changed, now).await;
    let start = now - SignedDuration::from_mins(1);
    graph
        .create_event(
            changed,
            "Booked while nobody followed",
            start,
            start + SignedDuration::from_mins(45),
            "busy",
        )
        .await;
    // Counted after the test's own calendarView reads (freeing the span above).
    let views_before = emulator
        .counters()
        .by_kind
        .get("calendar.view")
        .copied()
        .unwrap_or(0);

    let refs: Vec<(&str, &RunningService)> = instances
        .iter()
        .map(|(name, running)| (name.as_str(), running))
        .collect();
    let owners = wait_followed_once(
        "everyone followed again by one of the two survivors",
        &people,
        &refs,
        Duration::from_secs(LEASE_SECONDS + 10),
    )
    .await;
    let taken_over_in = killed_at.elapsed();
    eprintln!(
        "taken over in {:.1} s (lease {LEASE_SECONDS} s)",
        taken_over_in.as_secs_f64()
    );
    // The change made while nobody followed the person is read once at the take-over.
    let new_owner = owners[changed].clone();
    let running = refs
        .iter()
        .find(|(name, _)| *name == new_owner)
        .map(|(_, running)| *running)
        .expect("the new owner");
    wait_presence(running, changed, "busy", |note| {
        note.starts_with("Booked while nobody followed")
    })
    .await;
    // The new owner's own timer flips the person back at the meeting's end (nothing else is
    // booked from an hour ago to three hours on), not a poll's.
    let (decision, _) = running
        .hub
        .decision(&key(changed))
        .expect("the new owner decided");
    let ends = start + SignedDuration::from_mins(45);
    let next = decision.next_change_at.expect("a next change");
    assert!(
        next.duration_since(ends).abs() < SignedDuration::from_secs(1),
        "the next change is the meeting's end {ends}, not {next}"
    );
    let ids = subscriptions_of(&owners, &refs).await;
    let live: BTreeSet<String> = emulator.subscription_ids().into_iter().collect();
    assert_eq!(ids, live, "still one live subscription per mailbox");
    let counters = emulator.counters();
    assert_eq!(
        counters
            .by_kind
            .get("subscriptions.create")
            .copied()
            .unwrap_or(0),
        subscriptions_before,
        "no subscription was made anew: {:?}",
        counters.by_kind
    );
    assert_eq!(
        counters.by_kind.get("calendar.view").copied().unwrap_or(0),
        views_before,
        "no window was read anew: {:?}",
        counters.by_kind
    );
    // Webhooks: one instance at a time delivers the shared outbox, so every change arrived
    // once and in order, both hand-overs included.
    let events = wait_for("both changes at the webhook", PATIENCE, || {
        let events = received.lock().expect("lock").clone();
        let notes: Vec<&str> = events
            .iter()
            .filter_map(|event| event["note"].as_str())
            .collect();
        let both = ["Heard by a, read by b", "Booked while nobody followed"]
            .iter()
            .all(|wanted| notes.iter().any(|note| note.starts_with(wanted)));
        both.then_some(events)
    })
    .await;
    let ids: Vec<i64> = events
        .iter()
        .filter_map(|event| event["id"].as_i64())
        .collect();
    let mut once_in_order = ids.clone();
    once_in_order.sort_unstable();
    once_in_order.dedup();
    assert_eq!(ids, once_in_order, "each event once, in outbox order");
    for (_, running) in instances {
        running.shutdown().await;
    }
    drop(database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_calbridge_processes_and_a_kill_9() {
    init_logs();
    let Some(database) = common::postgres::database("calbridge_cluster").await else {
        return;
    };
    let emulator = Emulator::start(EmulatorConfig::generated(60, 6))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let graph = GraphClient::new(&ready).await;
    let people = graph
        .group_members(ready.group_id.as_deref().expect("a group"))
        .await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let http = calbridge_net::build_http_client(None).expect("an HTTP client");
    // Every instance publishes its people's presence to one SIP presence server.
    let sip = PresenceServer::start().await;
    let uri_of = |address: &str| {
        format!(
            "sip:{}@pbx.test",
            address.split('@').next().unwrap_or(address)
        )
    };
    let mut processes = Vec::new();
    for name in ["a", "b", "c"] {
        let port = free_port();
        let key_file = dir.path().join("calbridge.key");
        let public_url = format!("http://127.0.0.1:{port}");
        let store_url = database.url();
        let config = ProcessConfig {
            name,
            port,
            public_url: &public_url,
            store_url: &store_url,
            key_file: &key_file,
            lease_seconds: LEASE_SECONDS,
            ready: &ready,
            sip_server: Some(&sip.address),
        }
        .to_toml();
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("write the configuration");
        let process = Process::start(
            name,
            &path,
            format!("127.0.0.1:{port}"),
            dir.path().join(format!("{name}.log")),
        );
        // One after the other, so that the first makes the store's key for the others.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while process.get(&http, "/api/v1/status").await.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} does not answer: {}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        processes.push(process);
    }

    // Who follows whom, as instance `at` shows it: every person once, on a live instance.
    async fn split(
        http: &reqwest::Client,
        at: &Process,
        expected_people: usize,
        live: &[&str],
    ) -> Option<BTreeMap<String, String>> {
        let users = at.get(http, "/api/v1/users").await?;
        let list = users["users"].as_array()?;
        let owners: BTreeMap<String, String> = list
            .iter()
            .filter(|user| !user["presence"].is_null())
            .filter_map(|user| {
                Some((
                    user["address"].as_str()?.to_string(),
                    user["instance"].as_str()?.to_string(),
                ))
            })
            .collect();
        let used: BTreeSet<&str> = owners.values().map(String::as_str).collect();
        (owners.len() == expected_people && used.iter().all(|name| live.contains(name)))
            .then_some(owners)
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let owners = loop {
        if let Some(owners) = split(&http, &processes[0], people.len(), &["a", "b", "c"]).await {
            let used: BTreeSet<&String> = owners.values().collect();
            if used.len() == 3 {
                break owners;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the three never shared the people: {}",
            processes[0].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(owners.values().any(|owner| owner == "c"));
    let subscriptions_before = emulator.subscription_ids().len();
    // Everyone is published once, by the instance that follows them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !people
        .iter()
        .all(|person| sip.live_by_uri().get(&uri_of(person)).map(Vec::len) == Some(1))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not everyone has one publication: {:?}",
            sip.live_by_uri()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publisher_of = |address: &str| sip.live_by_uri()[&uri_of(address)][0];
    let c_people: Vec<&String> = owners
        .iter()
        .filter(|(_, owner)| owner.as_str() == "c")
        .map(|(address, _)| address)
        .collect();
    let c_sends_from = publisher_of(c_people[0]);
    for (address, owner) in &owners {
        assert_eq!(
            publisher_of(address) == c_sends_from,
            owner == "c",
            "{address}, followed by {owner}, is published by its instance only"
        );
    }
    let seen_before_kill = sip.seen().len();

    // kill -9 of c: its people are followed again by a and b within the lease and a round.
    let mut c = processes.pop().expect("c");
    c.child.kill().expect("SIGKILL");
    let _ = c.child.wait();
    let killed_at = std::time::Instant::now();
    let deadline = killed_at + Duration::from_secs(LEASE_SECONDS + 10);
    loop {
        if split(&http, &processes[0], people.len(), &["a", "b"])
            .await
            .is_some()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "c's people were not taken over within {} s: {}",
            LEASE_SECONDS + 10,
            processes[0].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "kill -9: everyone followed again after {:.1} s (lease {LEASE_SECONDS} s)",
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        emulator.subscription_ids().len(),
        subscriptions_before,
        "no second subscription for a mailbox"
    );
    // At the SIP presence server: each of c's people is published by a or b now, which
    // continued c's publication (SIP-If-Match with the entity-tag c saved) instead of adding a
    // second one, so that no presentity holds a dead instance's stale state.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let live = sip.live_by_uri();
        let moved = c_people.iter().all(|person| {
            live.get(&uri_of(person))
                .is_some_and(|peers| peers.len() == 1 && peers[0] != c_sends_from)
        });
        if moved {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "c's people are not published by the others alone: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live = sip.live_by_uri();
    for person in &people {
        assert_eq!(
            live.get(&uri_of(person)).map(Vec::len),
            Some(1),
            "{person} has one publication"
        );
    }
    let after_kill = sip.seen().split_off(seen_before_kill);
    for person in &c_people {
        let first = after_kill
            .iter()
            .find(|publish| publish.request_uri == uri_of(person))
            .expect("c's person is published again");
        assert!(
            first.if_match.is_some() && first.status == 200,
            "{person}: the new owner continues c's publication: {first:?}"
        );
    }
    drop(c);
    drop(processes);
    drop(database);
}
