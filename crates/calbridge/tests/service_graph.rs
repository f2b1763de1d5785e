//! Black-box tests of the service against the bundled Microsoft 365 emulator: both run
//! in-process on port 0; the tests change calendars through Graph's own API and look at what
//! the service shows (its HTTP API, its presence hub, its store) and at the emulator's counters.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use calbridge::clock::{Clock, ManualClock, SystemClock};
use common::*;
use jiff::{SignedDuration, Timestamp};
use m365_emulator::{Emulator, EmulatorConfig, FaultSettings, LifecycleEvent, Scenario};

/// Six people with known calendars (times relative to the emulator's start), everyone in UTC.
const SCENARIO: &str = r#"
[settings]
seed = 7

[[apps]]
name = "calbridge"
roles = ["Calendars.ReadWrite", "User.Read.All", "Group.Read.All"]
secrets = [{ value = "calbridge-test-secret" }]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada"

[[users]]
upn = "bob@contoso.example"
display_name = "Bob"

[[users]]
upn = "carol@contoso.example"
display_name = "Carol"

[[users]]
upn = "dave@contoso.example"
display_name = "Dave"

[[users]]
upn = "erin@contoso.example"
display_name = "Erin"

[[users]]
upn = "frank@contoso.example"
display_name = "Frank"

[[events]]
mailbox = "ada@contoso.example"
subject = "Design review"
start = "-10m"
duration = "1h"

[[events]]
mailbox = "bob@contoso.example"
subject = "Dentist appointment"
start = "-10m"
duration = "1h"
sensitivity = "private"

[[events]]
mailbox = "carol@contoso.example"
subject = "Vacation"
start = "-1h"
end = "+3d"
show_as = "oof"

[[events]]
mailbox = "dave@contoso.example"
subject = "Later meeting"
start = "+3h"
duration = "30m"

[[events]]
mailbox = "frank@contoso.example"
subject = "Maybe lunch"
start = "-10m"
duration = "1h"
show_as = "tentative"
"#;

const PEOPLE: [&str; 6] = [
    "ada@contoso.example",
    "bob@contoso.example",
    "carol@contoso.example",
    "dave@contoso.example",
    "erin@contoso.example",
    "frank@contoso.example",
];
const GHOST: &str = "ghost@contoso.example";

/// The scenario emulator, the service on port 0 following its six people plus one address
/// that does not exist, and a Graph client.
struct ScenarioRig {
    emulator: m365_emulator::RunningEmulator,
    running: calbridge::service::RunningService,
    graph: GraphClient,
    data_dir: tempfile::TempDir,
}

fn directory_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    let path = data_dir.join("people.csv");
    let mut text = String::from("address\n");
    for person in PEOPLE.iter().chain([&GHOST]) {
        text.push_str(person);
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write the directory file");
    path
}

async fn scenario_rig(clock: Arc<dyn Clock>) -> ScenarioRig {
    init_logs();
    let scenario = Scenario::from_toml_str(SCENARIO).expect("the scenario parses");
    let emulator = Emulator::start(EmulatorConfig::scenario(scenario))
        .await
        .expect("the emulator starts");
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let (listener, public_url) = listen(0).await;
    let file = directory_file(data_dir.path());
    let config = config_for(emulator.ready(), data_dir.path(), &public_url, Some(&file));
    let running = start_service(config, clock, listener).await;
    let graph = GraphClient::new(emulator.ready()).await;
    ScenarioRig {
        emulator,
        running,
        graph,
        data_dir,
    }
}

fn counter(emulator: &m365_emulator::RunningEmulator, kind: &str) -> u64 {
    emulator.counters().by_kind.get(kind).copied().unwrap_or(0)
}

fn mailbox_counter(emulator: &m365_emulator::RunningEmulator, upn: &str) -> u64 {
    emulator
        .counters()
        .by_mailbox
        .get(upn)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_matches_the_scenario() {
    let rig = scenario_rig(Arc::new(SystemClock)).await;
    let running = &rig.running;

    // Ada is in a meeting now: busy, its title in the note, until its end.
    let (_, design_start, design_end) = rig.graph.events("ada@contoso.example").await[0].clone();
    let (activity, note, until) = presence_of(running, "ada@contoso.example").expect("Ada decided");
    assert_eq!(activity, "busy", "{note}");
    assert!(
        note_text(&note).starts_with("Design review until "),
        "{note}"
    );
    assert_eq!(until, Some(design_end));
    assert!(design_start <= Timestamp::now());
    // Bob's appointment is private: "Private", never its title.
    let (activity, note, _) = presence_of(running, "bob@contoso.example").expect("Bob decided");
    assert_eq!(activity, "busy", "{note}");
    assert!(note_text(&note).starts_with("Private until "), "{note}");
    assert!(!note.contains("Dentist"), "{note}");
    // Carol is out of office.
    let (activity, note, _) = presence_of(running, "carol@contoso.example").expect("Carol decided");
    assert_eq!(activity, "away", "{note}");
    assert!(note_text(&note).starts_with("Vacation until "), "{note}");
    // Dave is free now; his next meeting is announced.
    let (_, later_start, _) = rig.graph.events("dave@contoso.example").await[0].clone();
    let (activity, note, until) =
        presence_of(running, "dave@contoso.example").expect("Dave decided");
    assert_eq!(activity, "available", "{note}");
    assert!(
        note_text(&note).ends_with("(Busy: Later meeting)"),
        "{note}"
    );
    assert_eq!(until, Some(later_start));
    // Erin has nothing; Frank's tentative lunch does not count (mapping.tentative = ignore).
    for free in ["erin@contoso.example", "frank@contoso.example"] {
        let (activity, note, until) = presence_of(running, free).expect("decided");
        assert_eq!(activity, "available", "{free}: {note}");
        assert_eq!(until, None, "{free}: {note}");
        assert!(!note.contains("lunch"), "{free}: {note}");
    }
    // The address that cannot be resolved has no presence, but is not lost.
    assert!(presence_of(running, GHOST).is_none());

    // The store holds the appointments the hub decided on.
    let stored = running.store.load_all_appointments().await.expect("store");
    let ada = stored.get(&key("ada@contoso.example")).expect("Ada's rows");
    assert_eq!(ada.len(), 1);
    assert_eq!(ada[0].subject.as_deref(), Some("Design review"));

    // The API: everyone listed, the unresolvable address with its error.
    let api = Api::new(running);
    let listed = api.get_authorized("/api/v1/users").await;
    let users: BTreeMap<String, serde_json::Value> = listed["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|user| {
            (
                user["address"].as_str().unwrap_or("").to_string(),
                user.clone(),
            )
        })
        .collect();
    let mut expected: Vec<&str> = PEOPLE.to_vec();
    expected.push(GHOST);
    expected.sort();
    assert_eq!(
        users.keys().map(String::as_str).collect::<Vec<_>>(),
        expected
    );
    let ghost = &users[GHOST];
    assert_eq!(ghost["resolution"], "failed", "{ghost}");
    let error = ghost["resolution_error"].as_str().unwrap_or("");
    assert!(
        error.contains(GHOST),
        "the error names the address: {ghost}"
    );
    assert!(ghost["presence"].is_null(), "{ghost}");
    for person in PEOPLE {
        let user = &users[person];
        assert_eq!(user["resolution"], "resolved", "{user}");
        let (activity, note, _) = presence_of(running, person).expect("decided");
        assert_eq!(user["presence"]["activity"], activity.as_str(), "{user}");
        assert_eq!(user["presence"]["note"], note.as_str(), "{user}");
        let single = api
            .get_authorized(&format!("/api/v1/users/{person}/presence"))
            .await;
        assert_eq!(single["activity"], activity.as_str(), "{single}");
        assert_eq!(single["note"], note.as_str(), "{single}");
        assert_eq!(single["until"], user["presence"]["until"], "{single}");
    }
    let ada = api
        .get_authorized("/api/v1/users/ada@contoso.example/presence")
        .await;
    assert_eq!(ada["until"], design_end.to_string());
    // The unresolvable address has no presence to show (and none is invented).
    let (status, body) = api
        .get(
            &format!("/api/v1/users/{GHOST}/presence"),
            Some(running.api_token.expose()),
        )
        .await;
    assert!(
        status == 404 || (status == 200 && body["activity"].is_null()),
        "{status} {body}"
    );

    // No token, a wrong token: 401.
    let (status, _) = api.get("/api/v1/users", None).await;
    assert_eq!(status, 401);
    let (status, _) = api
        .get("/api/v1/users/ada@contoso.example/presence", Some("wrong"))
        .await;
    assert_eq!(status, 401);
    rig.running.shutdown().await;
    rig.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_created_through_graph_changes_presence_via_notification() {
    let rig = scenario_rig(Arc::new(SystemClock)).await;
    let erin = "erin@contoso.example";
    assert_eq!(
        presence_of(&rig.running, erin).expect("decided").0,
        "available"
    );
    let sync = rig
        .running
        .syncs
        .values()
        .next()
        .expect("one source")
        .clone();
    let received_before = sync
        .source
        .notifications_received
        .load(std::sync::atomic::Ordering::Relaxed);
    let sent_before = counter(&rig.emulator, "notifications.sent");
    let deltas_before = counter(&rig.emulator, "calendar.delta");
    let erin_before = mailbox_counter(&rig.emulator, erin);

    let now = whole_second(Timestamp::now());
    let start = now - SignedDuration::from_mins(1);
    let end = now + SignedDuration::from_mins(30);
    let id = rig
        .graph
        .create_event(erin, "Incident call", start, end, "busy")
        .await;
    let (_, note, until) = wait_presence(&rig.running, erin, "busy", |note| {
        note.starts_with("Incident call until ")
    })
    .await;
    assert_eq!(until, Some(end), "{note}");

    // It came by notification and a delta read of Erin's calendar only.
    assert!(counter(&rig.emulator, "notifications.sent") > sent_before);
    assert!(
        sync.source
            .notifications_received
            .load(std::sync::atomic::Ordering::Relaxed)
            > received_before
    );
    assert!(counter(&rig.emulator, "calendar.delta") > deltas_before);
    // The POST itself and at least one delta read reached Erin's mailbox.
    assert!(mailbox_counter(&rig.emulator, erin) >= erin_before + 2);
    // The new appointment is in the store (written after the hub was told).
    let started = std::time::Instant::now();
    loop {
        let rows = rig
            .running
            .store
            .load_appointments(&key(erin))
            .await
            .expect("the store answers");
        if rows.iter().any(|row| row.id == id) {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the event {id} never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.running.shutdown().await;
    rig.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_meeting_returns_the_user_to_available() {
    let rig = scenario_rig(Arc::new(SystemClock)).await;
    let running = &rig.running;
    // A meeting created through Graph, then deleted (the organiser cancels it).
    let erin = "erin@contoso.example";
    let now = whole_second(Timestamp::now());
    let id = rig
        .graph
        .create_event(
            erin,
            "Budget meeting",
            now - SignedDuration::from_mins(5),
            now + SignedDuration::from_mins(25),
            "busy",
        )
        .await;
    wait_presence(running, erin, "busy", |note| {
        note.starts_with("Budget meeting until ")
    })
    .await;
    rig.graph.delete_event(erin, &id).await;
    let (_, note, until) = wait_presence(running, erin, "available", |_| true).await;
    assert_eq!(until, None, "nothing left in Erin's calendar: {note}");
    assert!(!note.contains("Budget"), "{note}");

    // The scenario's own meeting: Ada's design review goes away, Ada becomes available.
    let ada = "ada@contoso.example";
    let answer = rig
        .graph
        .send(reqwest::Method::GET, &format!("/users/{ada}/events"), None)
        .await;
    let review = answer.body["value"][0]["id"]
        .as_str()
        .expect("Ada's design review")
        .to_string();
    assert_eq!(presence_of(running, ada).expect("decided").0, "busy");
    rig.graph.delete_event(ada, &review).await;
    wait_presence(running, ada, "available", |note| {
        !note.contains("Design review")
    })
    .await;
    // The store forgot it too.
    let started = std::time::Instant::now();
    while !running
        .store
        .load_appointments(&key(ada))
        .await
        .expect("store")
        .is_empty()
    {
        assert!(
            started.elapsed() < PATIENCE,
            "the deleted meeting stays in the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.running.shutdown().await;
    rig.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meeting_starting_in_two_seconds_flips_presence_at_its_start() {
    let clock = ManualClock::new(whole_second(Timestamp::now()));
    let rig = scenario_rig(Arc::new(clock.clone())).await;
    let running = &rig.running;
    let erin = "erin@contoso.example";
    let start = clock.now() + SignedDuration::from_secs(2);
    let end = start + SignedDuration::from_mins(30);
    rig.graph
        .create_event(erin, "Quick sync", start, end, "busy")
        .await;
    // The hub knows the meeting: free until its start, the meeting announced.
    let (_, note, until) = wait_presence(running, erin, "available", |note| {
        note.starts_with("Free until ") && note.ends_with("(Busy: Quick sync)")
    })
    .await;
    assert_eq!(until, Some(start), "{note}");
    // Real time passes, the service's clock does not: no flip.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        presence_of(running, erin).expect("decided").0,
        "available",
        "flipped before its start"
    );
    clock.advance(SignedDuration::from_millis(1999));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        presence_of(running, erin).expect("decided").0,
        "available",
        "flipped 1 ms before its start"
    );
    clock.advance(SignedDuration::from_millis(1));
    let (_, note, until) = wait_presence(running, erin, "busy", |note| {
        note.starts_with("Quick sync until ")
    })
    .await;
    assert_eq!(until, Some(end), "{note}");
    let (_, decided_at) = running.hub.decision(&key(erin)).expect("decided");
    assert_eq!(decided_at, start, "decided at the meeting's start");
    rig.running.shutdown().await;
    rig.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_without_a_full_re_read() {
    // The service's clock stands still, so both runs see the same day (no midnight re-read).
    let clock = ManualClock::new(whole_second(Timestamp::now()));
    let rig = scenario_rig(Arc::new(clock.clone())).await;
    let before: BTreeMap<&str, _> = PEOPLE
        .iter()
        .map(|person| (*person, presence_of(&rig.running, person).expect("decided")))
        .collect();
    let port = rig.running.address.port();
    let report = rig.running.shutdown().await;
    for (task, ended) in &report {
        assert_eq!(ended, "stopped", "task {task}");
    }
    rig.emulator.reset_counters();

    // Same data dir, same emulator, same public URL (the subscriptions point there).
    let (listener, public_url) = listen(port).await;
    let file = directory_file(rig.data_dir.path());
    let config = config_for(
        rig.emulator.ready(),
        rig.data_dir.path(),
        &public_url,
        Some(&file),
    );
    let running = start_service(config, Arc::new(clock.clone()), listener).await;
    let counters = rig.emulator.counters();
    assert_eq!(
        counters.by_kind.get("calendar.view").copied().unwrap_or(0),
        0,
        "calendar windows were read again: {:?}",
        counters.by_kind
    );
    assert_eq!(
        counters
            .by_kind
            .get("subscriptions.create")
            .copied()
            .unwrap_or(0),
        0,
        "subscriptions were created again: {:?}",
        counters.by_kind
    );
    for person in PEOPLE {
        assert_eq!(
            presence_of(&running, person).as_ref(),
            Some(&before[person]),
            "{person} after the restart"
        );
    }
    // The stored subscriptions still deliver: a change reaches the restarted service.
    let start = clock.now() - SignedDuration::from_mins(1);
    rig.graph
        .create_event(
            "erin@contoso.example",
            "After the restart",
            start,
            start + SignedDuration::from_mins(30),
            "busy",
        )
        .await;
    wait_presence(&running, "erin@contoso.example", "busy", |note| {
        note.starts_with("After the restart until ")
    })
    .await;
    assert_eq!(
        rig.emulator
            .counters()
            .by_kind
            .get("calendar.view")
            .copied()
            .unwrap_or(0),
        0,
        "the change was read by delta, not by a window read"
    );
    running.shutdown().await;
    rig.emulator.shutdown().await;
}

/// The presence `running` decides at `at` from the appointments it stored for `address`.
async fn decided_at(
    running: &calbridge::service::RunningService,
    address: &str,
    at: Timestamp,
) -> Option<(String, String, Option<Timestamp>)> {
    let appointments = running.store.load_appointments(&key(address)).await.ok()?;
    let decision = calbridge_presence::decide(
        &appointments,
        &running.hub.rules(),
        &running.hub.locale(),
        at,
    );
    Some((
        decision.activity.as_str().to_string(),
        decision.note,
        decision.until,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_mid_sync_end_with_the_correct_presence_for_everyone() {
    init_logs();
    let mut emulator_config = EmulatorConfig::generated(30, 11);
    // Short-lived tokens, so that an outage of the token endpoint bites within seconds.
    emulator_config.token_lifetime = Some(SignedDuration::from_secs(2));
    let emulator = Emulator::start(emulator_config)
        .await
        .expect("the emulator starts");
    let graph = GraphClient::new(emulator.ready()).await;
    let group = emulator.ready().group_id.clone().expect("a group");
    let people = graph.group_members(&group).await;
    assert!(people.len() >= 20, "{people:?}");
    // The thirteen people who get a meeting below have nothing else from an hour ago to three
    // hours on, so their presence is that meeting at whatever hour the test runs.
    let test_start = Timestamp::now();
    for person in &people[0..13] {
        graph.free_around(person, test_start).await;
    }

    // A throttling storm (one request per mailbox at a time, two mailboxes answering only
    // 429) and 10 % 503/504 while the first sync runs.
    let stormy = FaultSettings {
        mailbox_concurrency_limit: 1,
        concurrency_retry_after_seconds: 1,
        server_error_rate: 0.1,
        ..FaultSettings::default()
    };
    emulator.set_faults(FaultSettings {
        throttled_mailboxes: vec![people[0].clone(), people[1].clone()],
        throttled_mailbox_retry_after_seconds: 1,
        ..stormy.clone()
    });
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let (listener, public_url) = listen(0).await;
    let config = config_for(emulator.ready(), data_dir.path(), &public_url, None);
    let started = calbridge::service::start(
        config,
        calbridge::service::ServiceOptions {
            clock: Arc::new(SystemClock),
            listener: Some(listener),
        },
    )
    .await
    .expect("the service starts");
    // The storm over the two mailboxes ends while the first sync is still retrying.
    wait_for("429s for the throttled mailboxes", PATIENCE, || {
        (counter(&emulator, "throttled.forced") >= 2).then_some(())
    })
    .await;
    emulator.set_faults(stormy.clone());
    tokio::time::timeout(Duration::from_secs(40), started.first_sync_done())
        .await
        .expect("the first sync ends despite the storm");
    let running = started;
    let counters = emulator.counters();
    assert!(
        counters
            .by_kind
            .get("throttled.forced")
            .copied()
            .unwrap_or(0)
            > 0,
        "the storm happened: {:?}",
        counters.by_kind
    );
    let sync = running.syncs.values().next().expect("one source").clone();
    let wait_subscribed = |address: &str| {
        let sync = sync.clone();
        let person = key(address);
        move || {
            sync.health(&person)
                .and_then(|health| health.subscription_id)
        }
    };

    // The token endpoint goes down while a burst of changes is notified.
    let now = whole_second(Timestamp::now());
    let busy_from = now - SignedDuration::from_mins(1);
    let busy_to = now + SignedDuration::from_mins(40);
    let outage_people = &people[0..6];
    for person in outage_people {
        wait_for(
            &format!("a subscription for {person}"),
            PATIENCE,
            wait_subscribed(person),
        )
        .await;
    }
    let token_errors_before = counter(&emulator, "identity.token_errors");
    let sent_before = counter(&emulator, "notifications.sent");
    emulator.set_faults(FaultSettings {
        token_endpoint_outage: true,
        ..stormy.clone()
    });
    // The service's token (2 s) runs out during the outage.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for (index, person) in outage_people.iter().enumerate() {
        graph
            .create_event(
                person,
                &format!("Outage call {index}"),
                busy_from,
                busy_to,
                "busy",
            )
            .await;
    }
    wait_for("the burst of notifications", PATIENCE, || {
        (counter(&emulator, "notifications.sent") >= sent_before + outage_people.len() as u64)
            .then_some(())
    })
    .await;
    wait_for("the service to hit the token outage", PATIENCE, || {
        (counter(&emulator, "identity.token_errors") > token_errors_before).then_some(())
    })
    .await;
    emulator.set_faults(stormy.clone());

    // Dropped notifications: Graph then sends `missed` to the lifecycle URL.
    let dropped_people = &people[6..10];
    for person in dropped_people {
        wait_for(
            &format!("a subscription for {person}"),
            PATIENCE,
            wait_subscribed(person),
        )
        .await;
    }
    let dropped_before = counter(&emulator, "notifications.dropped");
    emulator.set_faults(FaultSettings {
        drop_notifications_rate: 1.0,
        ..stormy.clone()
    });
    for (index, person) in dropped_people.iter().enumerate() {
        graph
            .create_event(
                person,
                &format!("Unnoticed call {index}"),
                busy_from,
                busy_to,
                "busy",
            )
            .await;
    }
    wait_for("the notifications to be dropped", PATIENCE, || {
        (counter(&emulator, "notifications.dropped")
            >= dropped_before + dropped_people.len() as u64)
            .then_some(())
    })
    .await;
    emulator.set_faults(stormy.clone());
    for person in dropped_people {
        let subscription = sync
            .health(&key(person))
            .and_then(|health| health.subscription_id)
            .expect("subscribed");
        emulator
            .send_lifecycle_notification(&subscription, LifecycleEvent::Missed)
            .expect("a lifecycle notification");
    }

    // Graph forgets every delta token; the next change must still arrive.
    emulator.expire_delta_tokens();
    let expired_people = &people[10..13];
    for (index, person) in expired_people.iter().enumerate() {
        graph
            .create_event(
                person,
                &format!("After expiry {index}"),
                busy_from,
                busy_to,
                "busy",
            )
            .await;
    }

    // Everyone ends with the presence of their calendar as Graph holds it now: each changed
    // person is busy with their new meeting …
    let changed: Vec<(&String, String)> = outage_people
        .iter()
        .enumerate()
        .map(|(index, person)| (person, format!("Outage call {index} until ")))
        .chain(
            dropped_people
                .iter()
                .enumerate()
                .map(|(index, person)| (person, format!("Unnoticed call {index} until "))),
        )
        .chain(
            expired_people
                .iter()
                .enumerate()
                .map(|(index, person)| (person, format!("After expiry {index} until "))),
        )
        .collect();
    for (person, prefix) in &changed {
        let (_, _, until) = wait_presence(&running, person, "busy", |note| {
            note.starts_with(prefix.as_str())
        })
        .await;
        assert_eq!(until, Some(busy_to), "{person}");
    }
    // … and no one is lost or wrong: a fresh service without faults sees the same.
    emulator.set_faults(FaultSettings::default());
    let fresh_dir = tempfile::tempdir().expect("a temp dir");
    let (listener, fresh_url) = listen(0).await;
    let fresh = start_service(
        config_for(emulator.ready(), fresh_dir.path(), &fresh_url, None),
        Arc::new(SystemClock),
        listener,
    )
    .await;
    let at = Timestamp::now();
    let mut wrong = Vec::new();
    for person in &people {
        assert!(
            running.hub.decision(&key(person)).is_some(),
            "{person} has no presence after the faults"
        );
        let faulted = decided_at(&running, person, at).await;
        let truth = decided_at(&fresh, person, at).await;
        assert!(truth.is_some(), "the fresh service decided {person}");
        if faulted != truth {
            wrong.push(format!("{person}: {faulted:?} instead of {truth:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong presence after the faults:\n{}",
        wrong.join("\n")
    );
    assert_eq!(running.hub.n_people(), people.len());
    fresh.shutdown().await;
    running.shutdown().await;
    emulator.shutdown().await;
}
