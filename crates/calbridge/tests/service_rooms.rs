//! Rooms as a directory: `[[directory]] rooms = "all"` follows every room of the tenant from
//! Graph's places API, `rooms = "<room list address>"` the rooms of one list; each room gets a
//! presence like a person. A tenant whose places API lists no room gets the hint on how to
//! make room lists, and nobody is followed.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use calbridge::config::DirectoryConfig;
use calbridge_domain::SourceId;
use common::sse::EventStream;
use common::*;
use m365_emulator::{Emulator, EmulatorConfig};

fn rooms_entry(selector: &str) -> DirectoryConfig {
    DirectoryConfig {
        rooms: Some(selector.to_string()),
        ..DirectoryConfig::new(SourceId(SOURCE.to_string()))
    }
}

fn followed(running: &calbridge::service::RunningService) -> BTreeSet<String> {
    running
        .hub
        .people()
        .into_iter()
        .map(|person| person.address.as_str().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_room_or_one_room_lists_rooms_are_followed_with_a_presence() {
    init_logs();
    // 1,000 people come with 7 rooms in 3 buildings, one room list each.
    let emulator = Emulator::start(EmulatorConfig::generated(1000, 3))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let graph = GraphClient::new(&ready).await;
    let rooms: BTreeSet<String> = (1..=7)
        .map(|n| format!("room.{n}@contoso.example"))
        .collect();

    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data.path(), &public_url, None);
    config.directory = vec![rooms_entry("all")];
    let running = start_service(config, Arc::new(calbridge::clock::SystemClock), listener).await;
    assert_eq!(followed(&running), rooms);
    // The rooms' details from the places API are kept in the store.
    let stored = running.store.list_rooms().await.expect("the rooms");
    assert_eq!(
        stored
            .iter()
            .map(|(key, _)| key.address.as_str().to_string())
            .collect::<BTreeSet<_>>(),
        rooms
    );
    for (key, room) in &stored {
        assert!(room.capacity.is_some_and(|n| n >= 4), "{key}: {room:?}");
        assert!(
            room.building
                .as_deref()
                .is_some_and(|b| b.starts_with("Building ")),
            "{key}: {room:?}"
        );
        assert!(room
            .display_name
            .as_deref()
            .is_some_and(|name| name.starts_with("Meeting room")));
    }
    wait_for("a presence for every room", Duration::from_secs(30), || {
        rooms
            .iter()
            .all(|room| presence_of(&running, room).is_some())
            .then_some(())
    })
    .await;
    rooms_api_answers_from_the_store(&running, &graph, &rooms).await;

    // A booking made now reaches the live stream as the room's presence and as its state.
    let mut stream = EventStream::connect(
        &format!("http://{}", running.address),
        running.api_token.expose(),
    )
    .await;
    let room = "room.1@contoso.example";
    let now = whole_second(jiff::Timestamp::now());
    graph.free_around(room, now).await;
    let end = now + jiff::SignedDuration::from_mins(30);
    graph
        .create_event(
            room,
            "Ad-hoc",
            now - jiff::SignedDuration::from_mins(1),
            end,
            "busy",
        )
        .await;
    let event = stream
        .wait_for(
            "the room event of the booking",
            Duration::from_secs(60),
            |event| {
                event.name == "room"
                    && event.data["address"] == room
                    && event.data["state"]["occupied"] == true
                    && event.data["state"]["current"]["end"] == end.to_string()
            },
        )
        .await;
    assert_eq!(event.data["state"]["current"]["title"], "Reserved");
    assert!(
        stream
            .seen
            .iter()
            .any(|seen| seen.name == "presence" && seen.data["address"] == room),
        "the presence event comes too"
    );
    assert!(
        stream
            .seen
            .iter()
            .filter(|seen| seen.name == "room")
            .all(|seen| rooms.contains(seen.data["address"].as_str().unwrap_or_default())),
        "room events are for rooms only"
    );
    // A room is read through its calendar like anyone: the store holds what Graph's calendar
    // view shows for the room in the window that was read.
    for room in &rooms {
        let person = key(room);
        let window = running
            .store
            .get_sync_state(&person)
            .await
            .expect("the sync state")
            .appointment_window
            .expect("a window was read");
        let shown = graph.calendar_view(room, window.start, window.end).await;
        let stored = running
            .store
            .load_appointments(&person)
            .await
            .expect("the appointments");
        assert_eq!(
            stored.len(),
            shown.len(),
            "{room}: {stored:?} against {shown:?}"
        );
    }
    running.shutdown().await;

    // One room list: only its rooms.
    let list = "rooms.building-1@contoso.example";
    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data.path(), &public_url, None);
    config.directory = vec![rooms_entry(list)];
    let running = start_service(config, Arc::new(calbridge::clock::SystemClock), listener).await;
    let in_list = followed(&running);
    assert!(
        !in_list.is_empty() && in_list.len() < rooms.len(),
        "{in_list:?}"
    );
    assert!(in_list.is_subset(&rooms), "{in_list:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_rooms_in_places_gets_the_hint_and_nobody_followed() {
    init_logs();
    let scenario = tenant_without_rooms("rooms-test-secret");
    let emulator = Emulator::start(EmulatorConfig::scenario(scenario))
        .await
        .expect("the emulator starts");
    let mut ready = emulator.ready().clone();
    ready.client_secret = Some("rooms-test-secret".to_string());
    let data = tempfile::tempdir().expect("temp dir");
    let directory_file = data.path().join("unused.csv");
    std::fs::write(&directory_file, "address\n").expect("write");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data.path(), &public_url, Some(&directory_file));
    config.directory = vec![rooms_entry("all")];
    let running = try_start_service(config, Arc::new(calbridge::clock::SystemClock), listener)
        .await
        .expect("the service starts");
    let hint = wait_for("the hint about room lists", Duration::from_secs(30), || {
        running
            .problems
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(_, message)| message.clone())
            .find(|message| message.contains("lists no rooms"))
    })
    .await;
    assert!(hint.contains("New-DistributionGroup -RoomList"), "{hint}");
    assert!(followed(&running).is_empty());
    running.shutdown().await;
}

/// `/api/v1/rooms` with its filters, checked against the emulator's own calendars (so the
/// answer is right at any hour), and `/api/v1/rooms/{address}` with today's agenda.
async fn rooms_api_answers_from_the_store(
    running: &calbridge::service::RunningService,
    graph: &GraphClient,
    rooms: &BTreeSet<String>,
) {
    let api = Api::new(running);
    let all = api.get_authorized("/api/v1/rooms").await;
    let listed = all["rooms"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), rooms.len(), "{all}");
    for room in &listed {
        let note = room["state"]["note"].as_str().unwrap_or_default();
        assert!(
            note.starts_with("Free") || note.starts_with("Reserved") || note.starts_with("Private"),
            "{room}"
        );
    }
    let addresses = |body: &serde_json::Value| -> BTreeSet<String> {
        body["rooms"]
            .as_array()
            .map(|rooms| {
                rooms
                    .iter()
                    .filter_map(|room| room["address"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let by = |want: &dyn Fn(&serde_json::Value) -> bool| -> BTreeSet<String> {
        listed
            .iter()
            .filter(|room| want(room))
            .filter_map(|room| room["address"].as_str().map(str::to_string))
            .collect()
    };
    let big = api.get_authorized("/api/v1/rooms?min_capacity=12").await;
    assert_eq!(
        addresses(&big),
        by(&|room| room["capacity"].as_u64().is_some_and(|n| n >= 12))
    );
    let second = api
        .get_authorized("/api/v1/rooms?building=building%202")
        .await;
    assert!(!addresses(&second).is_empty());
    assert_eq!(
        addresses(&second),
        by(&|room| room["building"] == "Building 2")
    );

    // Free for the next 30 minutes from a whole second: exactly the rooms whose calendar view
    // at Graph has nothing that holds the room then.
    let from = whole_second(jiff::Timestamp::now());
    let to = from + jiff::SignedDuration::from_mins(30);
    let free = api
        .get_authorized(&format!("/api/v1/rooms?free_for_minutes=30&from={from}"))
        .await;
    let mut expected = BTreeSet::new();
    for room in rooms {
        let held = graph
            .calendar_view(room, from, to)
            .await
            .into_iter()
            .any(|event| {
                !event.cancelled && event.show_as != "free" && event.end > from && event.start < to
            });
        if !held {
            expected.insert(room.clone());
        }
    }
    eprintln!(
        "free for 30 minutes from {from}: {} of {} rooms",
        expected.len(),
        rooms.len()
    );
    assert_eq!(addresses(&free), expected, "{free}");
    let free_now = api.get_authorized("/api/v1/rooms?free_now=true").await;
    assert_eq!(
        addresses(&free_now),
        by(&|room| room["state"]["occupied"] == false)
    );

    let first = rooms.iter().next().expect("a room");
    let detail = api.get_authorized(&format!("/api/v1/rooms/{first}")).await;
    assert_eq!(detail["address"], first.as_str());
    for meeting in detail["agenda"]["meetings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        // The default policy names no meeting: "Reserved", or "Private".
        assert!(
            matches!(meeting["title"].as_str(), Some("Reserved" | "Private")),
            "{meeting}"
        );
        assert!(meeting["organizer"].is_null(), "{meeting}");
    }

    for (query, says) in [
        ("free_for_minutes=0", "out of range"),
        ("floor=ground", "floor"),
        ("seats=8", "seats"),
    ] {
        let (status, body) = api
            .get(
                &format!("/api/v1/rooms?{query}"),
                Some(running.api_token.expose()),
            )
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.to_string().contains(says), "{query}: {body}");
    }
    let (status, _) = api
        .get(
            "/api/v1/rooms/nobody@contoso.example",
            Some(running.api_token.expose()),
        )
        .await;
    assert_eq!(status, 404);
}

const WRITER_SECRET: &str = "rooms-processing-secret";
const ROOM_DEFAULTS: &str = "room.defaults@contoso.example";
const ROOM_KEEPS: &str = "room.keeps@contoso.example";

/// Ada and two rooms: one with Exchange's default calendar processing (`DeleteSubject`,
/// `AddOrganizerToSubject`, `RemovePrivateProperty` all `$true`), one that keeps subjects and
/// the private flag; an app that may write calendars, so that Ada can book the rooms.
fn calendar_processing_scenario() -> m365_emulator::Scenario {
    let text = format!(
        r#"
[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "writer"
roles = ["Calendars.ReadWrite", "User.Read.All", "Place.Read.All"]
secrets = [{{ value = "{WRITER_SECRET}" }}]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada Lovelace"

[[rooms]]
upn = "{ROOM_DEFAULTS}"
display_name = "Defaults"
office_location = "Building 1"

[[rooms]]
upn = "{ROOM_KEEPS}"
display_name = "Keeps"
office_location = "Building 1"
calendar_processing = {{ delete_subject = false, add_organizer_to_subject = false, remove_private_property = false }}
"#
    );
    m365_emulator::Scenario::from_toml_str(&text).expect("the scenario parses")
}

/// The room `address` of a `GET /api/v1/rooms` answer.
fn listed_room<'a>(body: &'a serde_json::Value, address: &str) -> Option<&'a serde_json::Value> {
    body["rooms"]
        .as_array()?
        .iter()
        .find(|room| room["address"] == address)
}

/// Ada books both rooms through Graph, as people do (the rooms' calendar processing makes
/// their copies): with `[rooms] show = "subject"`, the room whose subjects Exchange replaced
/// with the organizer's name shows the organizer's name, the room that keeps the private flag
/// shows "Private" (and never the subject), and Ada's cancellation frees the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_show_what_their_calendar_processing_left_and_private_meetings_stay_private() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::scenario(calendar_processing_scenario()))
        .await
        .expect("the emulator starts");
    let mut ready = emulator.ready().clone();
    ready.client_secret = Some(WRITER_SECRET.to_string());
    let graph = GraphClient::new(&ready).await;
    // Whole minutes an hour and more ahead: inside the window at any hour, and "next" for both.
    let start = whole_second(jiff::Timestamp::now()) + jiff::SignedDuration::from_hours(1);
    let book = |room: &'static str, subject: &'static str, sensitivity: &'static str| {
        let graph = &graph;
        async move {
            let answer = graph
                .send(
                    reqwest::Method::POST,
                    "/users/ada@contoso.example/events",
                    Some(serde_json::json!({
                        "subject": subject,
                        "sensitivity": sensitivity,
                        "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S").to_string(), "timeZone": "UTC"},
                        "end": {"dateTime": (start + jiff::SignedDuration::from_hours(1)).strftime("%Y-%m-%dT%H:%M:%S").to_string(), "timeZone": "UTC"},
                        "attendees": [{"emailAddress": {"address": room}, "type": "resource"}],
                    })),
                )
                .await;
            assert_eq!(answer.status, 201, "{}", answer.body);
            answer.body["id"].as_str().unwrap_or_default().to_string()
        }
    };
    let planning = book(ROOM_DEFAULTS, "Quarterly planning", "normal").await;
    book(ROOM_KEEPS, "Salary review with Bob", "private").await;

    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let unused_file = data.path().join("unused.csv");
    let mut config = config_for(&ready, data.path(), &public_url, Some(&unused_file));
    config.directory = vec![rooms_entry("all")];
    config.rooms.show = calbridge_presence::RoomShow::Subject;
    let running = start_service(config, Arc::new(calbridge::clock::SystemClock), listener).await;
    let api = Api::new(&running);
    let mut listed = api.get_authorized("/api/v1/rooms").await;
    let started = std::time::Instant::now();
    while [ROOM_DEFAULTS, ROOM_KEEPS]
        .iter()
        .any(|room| listed_room(&listed, room).is_none_or(|room| room["state"]["next"].is_null()))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "both rooms' meetings: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        listed = api.get_authorized("/api/v1/rooms").await;
    }
    let defaults = &listed_room(&listed, ROOM_DEFAULTS).expect("listed")["state"]["next"];
    assert_eq!(defaults["title"], "Ada Lovelace", "{listed}");
    assert_eq!(defaults["organizer"], "ada@contoso.example", "{listed}");
    assert_eq!(defaults["start"], start.to_string(), "{listed}");
    let keeps = &listed_room(&listed, ROOM_KEEPS).expect("listed")["state"]["next"];
    assert_eq!(keeps["title"], "Private", "{listed}");
    assert_eq!(keeps["private"], true, "{listed}");
    assert!(keeps["organizer"].is_null(), "{listed}");
    for room in [ROOM_DEFAULTS, ROOM_KEEPS] {
        let detail = api.get_authorized(&format!("/api/v1/rooms/{room}")).await;
        assert!(!detail.to_string().contains("Salary"), "{detail}");
        assert!(!detail.to_string().contains("Quarterly"), "{detail}");
    }
    assert!(!listed.to_string().contains("Salary"), "{listed}");

    // Ada cancels the planning: the room's copy is cancelled, and the room has nothing next.
    let deleted = graph
        .send(
            reqwest::Method::DELETE,
            &format!("/users/ada@contoso.example/events/{planning}"),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let started = std::time::Instant::now();
    loop {
        let listed = api.get_authorized("/api/v1/rooms").await;
        if listed_room(&listed, ROOM_DEFAULTS).is_some_and(|room| room["state"]["next"].is_null()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cancelled meeting gone: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.shutdown().await;
}
