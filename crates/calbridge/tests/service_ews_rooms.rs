//! Rooms on an on-premises Exchange source: `[[directory]] rooms = "all"` follows every room of
//! Exchange's room lists (`GetRoomLists`, `GetRooms`), `rooms = "<room list address>"` those of
//! one list, and `/api/v1/rooms` lists them with their state. Then the decline step
//! (`DirectoryTarget::decline`), on an EWS source and on a Graph source: a stored meeting of a
//! room is declined in the room's calendar and the organizer's copy shows the room declined;
//! without the right to act for the room the error names the right that would do.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use calbridge::clock::SystemClock;
use calbridge::config::{DirectoryConfig, SourceConfig};
use calbridge::service::RunningService;
use calbridge::sync::DirectoryTarget;
use calbridge_domain::{MailboxAddress, Secret, SourceId};
use calbridge_sources_ews::{AuthMethod, EwsSourceConfig, MailboxAccess, WindowRead};
use common::*;
use m365_emulator::{Emulator, EmulatorConfig, ReadyInfo, Scenario};

const ONPREM: &str = "onprem";

fn rooms_entry(source: &str, selector: &str) -> DirectoryConfig {
    DirectoryConfig {
        rooms: Some(selector.to_string()),
        ..DirectoryConfig::new(SourceId(source.to_string()))
    }
}

fn followed(running: &RunningService) -> BTreeSet<String> {
    running
        .hub
        .people()
        .into_iter()
        .map(|person| person.address.as_str().to_string())
        .collect()
}

fn onprem_key(address: &str) -> calbridge_store::PersonKey {
    calbridge_store::PersonKey {
        source: SourceId(ONPREM.to_string()),
        address: MailboxAddress::parse(address).expect("an address"),
    }
}

/// An EWS source `onprem` logging on as `user` over NTLM with `access`.
fn ews_source(
    ready: &ReadyInfo,
    user: &str,
    password: &str,
    access: MailboxAccess,
) -> SourceConfig {
    let mut ews = EwsSourceConfig::new(user, Secret::new(password));
    ews.auth = AuthMethod::Ntlm;
    ews.access = access;
    ews.ews_url = Some(ready.ews_url.clone());
    ews.extra_root_ca = Some(ready.ca_cert.clone());
    SourceConfig {
        id: SourceId(ONPREM.to_string()),
        secret_expires_on: None,
        graph: None,
        ews: Some(ews),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_room_or_one_room_lists_rooms_are_followed_through_ews_and_listed_with_their_state() {
    init_logs();
    // 1,000 people come with 7 rooms in 3 buildings, one room list each.
    let emulator = Emulator::start(EmulatorConfig::generated(1000, 3))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let rooms: BTreeSet<String> = (1..=7)
        .map(|n| format!("room.{n}@contoso.example"))
        .collect();
    let data = tempfile::tempdir().expect("temp dir");
    let (source, _, _) = calbridge::commands::ews_demo_source(
        &ready,
        data.path(),
        SourceId(ONPREM.to_string()),
        WindowRead::CalendarView,
    )
    .await
    .expect("the EWS source");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data.path(), &public_url, None);
    config.sources = vec![source.clone()];
    config.directory = vec![rooms_entry(ONPREM, "all")];
    let running = start_service(config, Arc::new(SystemClock), listener).await;
    assert_eq!(followed(&running), rooms);
    // EWS names each room's list; it knows no capacity, building or floor.
    let stored = running.store.list_rooms().await.expect("the rooms");
    assert_eq!(stored.len(), 7, "{stored:?}");
    for (key, room) in &stored {
        assert_eq!(key.source.0, ONPREM);
        assert!(
            room.room_list
                .as_deref()
                .is_some_and(|list| list.starts_with("rooms.building-")),
            "{key}: {room:?}"
        );
        assert!(
            room.capacity.is_none() && room.building.is_none(),
            "{room:?}"
        );
        assert!(room
            .display_name
            .as_deref()
            .is_some_and(|name| name.starts_with("Meeting room")));
    }
    wait_for("a presence for every room", Duration::from_secs(30), || {
        rooms
            .iter()
            .all(|room| running.hub.decision(&onprem_key(room)).is_some())
            .then_some(())
    })
    .await;
    let api = Api::new(&running);
    let listed = api.get_authorized("/api/v1/rooms").await;
    let entries = listed["rooms"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        entries
            .iter()
            .filter_map(|room| room["address"].as_str().map(str::to_string))
            .collect::<BTreeSet<_>>(),
        rooms,
        "{listed}"
    );
    for room in &entries {
        let note = room["state"]["note"].as_str().unwrap_or_default();
        assert!(
            note.starts_with("Free") || note.starts_with("Reserved") || note.starts_with("Private"),
            "{room}"
        );
        assert!(room["state"]["occupied"].is_boolean(), "{room}");
    }
    running.shutdown().await;

    // One room list: only its rooms.
    let list = "rooms.building-1@contoso.example";
    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data.path(), &public_url, None);
    config.sources = vec![source];
    config.directory = vec![rooms_entry(ONPREM, list)];
    let running = start_service(config, Arc::new(SystemClock), listener).await;
    let in_list = followed(&running);
    assert!(
        !in_list.is_empty() && in_list.len() < rooms.len(),
        "{in_list:?}"
    );
    assert!(in_list.is_subset(&rooms), "{in_list:?}");
    let stored = running.store.list_rooms().await.expect("the rooms");
    assert!(stored
        .iter()
        .all(|(_, room)| room.room_list.as_deref() == Some(list)));
    running.shutdown().await;
}

const WRITER: &str = "22222222-2222-4222-8222-222222222222";
const READER: &str = "33333333-3333-4333-8333-333333333333";
const APP_SECRET: &str = "rooms-decline-secret";
const SERVICE: &str = "svc@contoso.example";
const SERVICE_PASSWORD: &str = "svc-Passw0rd";
const MONITOR: &str = "monitor@contoso.example";
const MONITOR_PASSWORD: &str = "monitor-Passw0rd";
const ROOM: &str = "room.1@contoso.example";

/// Ada's "Design review" in room 1, an hour after the emulator starts (inside every window,
/// at any hour); a writer app and a reader app (Graph), a service account with impersonation
/// and a reviewer of every calendar (EWS).
fn decline_scenario() -> Scenario {
    let text = format!(
        r#"
[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "writer"
client_id = "{WRITER}"
roles = ["Calendars.ReadWrite", "User.Read.All", "Place.Read.All"]
secrets = [{{ value = "{APP_SECRET}" }}]

[[apps]]
name = "reader"
client_id = "{READER}"
roles = ["Calendars.Read", "User.Read.All", "Place.Read.All"]
secrets = [{{ value = "{APP_SECRET}" }}]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada Lovelace"

[[rooms]]
upn = "{ROOM}"
display_name = "Room 1"
office_location = "Building 1"

[[exchange.accounts]]
address = "{SERVICE}"
password = "{SERVICE_PASSWORD}"
impersonation = true

[[exchange.accounts]]
address = "{MONITOR}"
password = "{MONITOR_PASSWORD}"
reviewer_of = ["*"]

[[events]]
mailbox = "ada@contoso.example"
subject = "Design review"
start = "+1h"
duration = "30m"
attendees = ["{ROOM}"]
"#
    );
    Scenario::from_toml_str(&text).expect("the scenario parses")
}

/// The room's answer on Ada's copy of the meeting, and whether the room's calendar still
/// holds it, as Graph shows them.
async fn seen_at_graph(graph: &GraphClient) -> (String, bool) {
    let answer = graph
        .send(
            reqwest::Method::GET,
            "/users/ada@contoso.example/events",
            None,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let response = answer.body["value"][0]["attendees"]
        .as_array()
        .and_then(|attendees| {
            attendees
                .iter()
                .find(|attendee| attendee["emailAddress"]["address"] == ROOM)
        })
        .and_then(|attendee| attendee["status"]["response"].as_str())
        .unwrap_or_else(|| panic!("no room on Ada's copy: {}", answer.body))
        .to_string();
    let held = graph
        .events(ROOM)
        .await
        .iter()
        // The room's default calendar processing put Ada's name where she wrote the subject.
        .any(|(subject, _, _)| subject == "Ada Lovelace");
    (response, held)
}

/// Starts a service following room 1 through `source` (`None`: the emulator's Graph source
/// for `ready`'s app) and returns it with the room's meeting as its first sync stored it.
async fn service_with_the_rooms_meeting(
    ready: &ReadyInfo,
    source: Option<SourceConfig>,
) -> (RunningService, tempfile::TempDir, String) {
    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let unused_file = data.path().join("unused.csv");
    let mut config = config_for(ready, data.path(), &public_url, Some(&unused_file));
    if let Some(source) = source {
        config.sources = vec![source];
    }
    let id = config.sources[0].id.clone();
    config.directory = vec![rooms_entry(&id.0, "all")];
    let running = start_service(config, Arc::new(SystemClock), listener).await;
    let person = calbridge_store::PersonKey {
        source: id,
        address: MailboxAddress::parse(ROOM).expect("an address"),
    };
    let appointments = running
        .store
        .load_appointments(&person)
        .await
        .expect("the room's appointments");
    let [meeting] = appointments.as_slice() else {
        panic!("the room's one meeting after the first sync: {appointments:?}")
    };
    let id = meeting.id.clone();
    (running, data, id)
}

async fn decline(running: &RunningService, meeting: &str) -> Result<(), String> {
    let (source, target): (&SourceId, Arc<dyn DirectoryTarget>) =
        match running.ews_syncs.iter().next() {
            Some((source, sync)) => (source, sync.clone()),
            None => {
                let (source, sync) = running.syncs.iter().next().expect("a source");
                (source, sync.clone())
            }
        };
    let person = calbridge_store::PersonKey {
        source: source.clone(),
        address: MailboxAddress::parse(ROOM).expect("an address"),
    };
    target.decline(&person, meeting, "Nobody checked in.").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ews_source_declines_a_rooms_meeting_only_when_it_may_act_as_the_room() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::scenario(decline_scenario()))
        .await
        .expect("the emulator starts");
    let mut ready = emulator.ready().clone();
    ready.client_id = WRITER.to_string();
    ready.client_secret = Some(APP_SECRET.to_string());
    let graph = GraphClient::new(&ready).await;

    // A reviewer of every calendar reads the room but may not decline for it.
    let reviewer = ews_source(&ready, MONITOR, MONITOR_PASSWORD, MailboxAccess::Delegate);
    let (running, _data, meeting) = service_with_the_rooms_meeting(&ready, Some(reviewer)).await;
    let refused = decline(&running, &meeting).await.expect_err("refused");
    assert!(refused.contains("ErrorAccessDenied"), "{refused}");
    assert!(
        refused.contains("ApplicationImpersonation") && refused.contains("FullAccess"),
        "{refused}"
    );
    assert_eq!(seen_at_graph(&graph).await, ("accepted".to_string(), true));
    running.shutdown().await;

    let service = ews_source(
        &ready,
        SERVICE,
        SERVICE_PASSWORD,
        MailboxAccess::Impersonation,
    );
    let (running, _data, meeting) = service_with_the_rooms_meeting(&ready, Some(service)).await;
    decline(&running, &meeting).await.expect("declined");
    assert_eq!(seen_at_graph(&graph).await, ("declined".to_string(), false));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_source_declines_a_rooms_meeting_only_with_calendars_readwrite() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::scenario(decline_scenario()))
        .await
        .expect("the emulator starts");
    let mut writer = emulator.ready().clone();
    writer.client_id = WRITER.to_string();
    writer.client_secret = Some(APP_SECRET.to_string());
    let mut reader = writer.clone();
    reader.client_id = READER.to_string();
    let graph = GraphClient::new(&writer).await;

    let (running, _data, meeting) = service_with_the_rooms_meeting(&reader, None).await;
    let refused = decline(&running, &meeting).await.expect_err("refused");
    assert!(refused.contains("Calendars.ReadWrite"), "{refused}");
    assert!(refused.contains("ErrorAccessDenied"), "{refused}");
    assert_eq!(seen_at_graph(&graph).await, ("accepted".to_string(), true));
    running.shutdown().await;

    let (running, _data, meeting) = service_with_the_rooms_meeting(&writer, None).await;
    decline(&running, &meeting).await.expect("declined");
    assert_eq!(seen_at_graph(&graph).await, ("declined".to_string(), false));
    running.shutdown().await;
}

/// The whole release on the service's own clock: `[rooms] check_in_minutes = 10`, nobody checks
/// the room's meeting in, and at start + 10 minutes the guard declines it through Graph (Ada's
/// copy shows the room declined, the room's calendar no longer holds it), the room is free, and
/// the API, its log and `/metrics` say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchecked_meeting_is_released_through_graph_at_start_plus_n_minutes() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::scenario(decline_scenario()))
        .await
        .expect("the emulator starts");
    let mut writer = emulator.ready().clone();
    writer.client_id = WRITER.to_string();
    writer.client_secret = Some(APP_SECRET.to_string());
    let graph = GraphClient::new(&writer).await;

    let clock = calbridge::clock::ManualClock::new(whole_second(jiff::Timestamp::now()));
    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let unused_file = data.path().join("unused.csv");
    let mut config = config_for(&writer, data.path(), &public_url, Some(&unused_file));
    let id = config.sources[0].id.clone();
    config.directory = vec![rooms_entry(&id.0, "all")];
    config.rooms.check_in_minutes = Some(10);
    let running = start_service(config, Arc::new(clock.clone()), listener).await;
    let room = calbridge_store::PersonKey {
        source: id,
        address: MailboxAddress::parse(ROOM).expect("an address"),
    };
    let appointments = running
        .store
        .load_appointments(&room)
        .await
        .expect("the room's appointments");
    let [meeting] = appointments.as_slice() else {
        panic!("the room's one meeting after the first sync: {appointments:?}")
    };
    let (start, _) = meeting.time.instants(&jiff::tz::TimeZone::UTC);
    let deadline = start + jiff::SignedDuration::from_mins(10);
    let api = Api::new(&running);
    let listed = api.get_authorized(&format!("/api/v1/rooms/{ROOM}")).await;
    assert_eq!(listed["check_in"]["minutes"], 10, "{listed}");
    assert_eq!(
        listed["check_in"]["open"], false,
        "not open an hour ahead: {listed}"
    );

    // The meeting runs; nobody checks in; the deadline comes.
    clock.set(start + jiff::SignedDuration::from_mins(1));
    wait_for("the room occupied", Duration::from_secs(30), || {
        presence_of(&running, ROOM).filter(|(activity, _, _)| activity != "available")
    })
    .await;
    let listed = api.get_authorized(&format!("/api/v1/rooms/{ROOM}")).await;
    assert_eq!(listed["check_in"]["open"], true, "{listed}");
    assert_eq!(
        listed["check_in"]["deadline"],
        deadline.to_string(),
        "{listed}"
    );
    // The guard knows the deadline (the rooms list may come after the room's first read; its
    // rescan finds it then).
    let check_ins = running.check_ins.clone().expect("check-in is on");
    wait_for(
        "the meeting's deadline known",
        Duration::from_secs(30),
        || (check_ins.n_waiting() == 1).then_some(()),
    )
    .await;
    clock.set(deadline);
    wait_for("the room free again", Duration::from_secs(30), || {
        presence_of(&running, ROOM).filter(|(activity, _, _)| activity == "available")
    })
    .await;
    assert_eq!(seen_at_graph(&graph).await, ("declined".to_string(), false));
    let log = api.get_authorized("/api/v1/rooms/check-ins").await;
    assert_eq!(log["meetings"][0]["room"], ROOM, "{log}");
    assert_eq!(log["meetings"][0]["state"], "released", "{log}");
    assert_eq!(log["meetings"][0]["at"], deadline.to_string(), "{log}");
    let (status, metrics) = api.get("/metrics", Some(running.api_token.expose())).await;
    assert_eq!(status, 200);
    assert!(
        metrics.as_str().is_some_and(
            |text| text.contains("calbridge_room_releases_total{result=\"released\"} 1")
        ),
        "{metrics}"
    );
    // A check-in now is told the meeting was released.
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/rooms/{ROOM}/check-in"),
            Some(running.api_token.expose()),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("released"), "{body}");
    running.shutdown().await;
}
