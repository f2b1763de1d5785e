//! `GET /api/v1/rooms?agenda=today`: every listed room with its local day's meetings from the
//! list's one store read, the same `agenda` as `GET /api/v1/rooms/{address}` gives one room, so
//! that the admin page draws the day of hundreds of rooms from one request. The emulator and the
//! service stand on one instant (a Thursday morning in UTC) that the test owns.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use calbridge::clock::ManualClock;
use calbridge::config::DirectoryConfig;
use calbridge_domain::SourceId;
use common::*;
use jiff::{SignedDuration, Timestamp};
use m365_emulator::{Emulator, EmulatorConfig, Scenario};
use serde_json::{json, Value};

const AT: &str = "2026-12-03T09:42:00Z";
const BUSY_ROOM: &str = "room.1@contoso.example";
const EMPTY_ROOM: &str = "room.2@contoso.example";
const SECRET: &str = "rooms-agenda-secret";

/// Two rooms: one booked by Ada from half an hour ago, in two hours and tomorrow (the stored
/// calendar starts at the first sync, so today's agenda holds the running meeting and the later
/// one); one never booked.
fn scenario() -> Scenario {
    let text = format!(
        r#"
[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "calbridge"
roles = ["Calendars.Read", "User.Read.All", "Place.Read.All"]
secrets = [{{ value = "{SECRET}" }}]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada Lovelace"

[[rooms]]
upn = "{BUSY_ROOM}"
display_name = "Room 1"
office_location = "Building 1"

[[rooms]]
upn = "{EMPTY_ROOM}"
display_name = "Room 2"
office_location = "Building 2"

[[events]]
mailbox = "ada@contoso.example"
subject = "Running"
start = "-30m"
duration = "1h"
attendees = ["{BUSY_ROOM}"]

[[events]]
mailbox = "ada@contoso.example"
subject = "Later"
start = "+2h"
duration = "1h"
attendees = ["{BUSY_ROOM}"]

[[events]]
mailbox = "ada@contoso.example"
subject = "Tomorrow"
start = "+1d"
duration = "1h"
attendees = ["{BUSY_ROOM}"]
"#
    );
    Scenario::from_toml_str(&text).expect("the scenario parses")
}

/// `address → room` of a `GET /api/v1/rooms` answer.
fn by_address(body: &Value) -> BTreeMap<String, Value> {
    body["rooms"]
        .as_array()
        .expect("a rooms array")
        .iter()
        .map(|room| {
            (
                room["address"].as_str().unwrap_or_default().to_string(),
                room.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agenda_today_lists_every_rooms_day_as_its_detail_does() {
    init_logs();
    let at: Timestamp = AT.parse().expect("an instant");
    let mut emulator_config = EmulatorConfig::scenario(scenario());
    emulator_config.clock = m365_emulator::Clock::manual(at);
    let emulator = Emulator::start(emulator_config)
        .await
        .expect("the emulator starts");
    let mut ready = emulator.ready().clone();
    ready.client_secret = Some(SECRET.to_string());
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let unused_file = data_dir.path().join("unused.csv");
    std::fs::write(&unused_file, "address\n").expect("write");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data_dir.path(), &public_url, Some(&unused_file));
    config.directory = vec![DirectoryConfig {
        rooms: Some("all".to_string()),
        ..DirectoryConfig::new(SourceId(SOURCE.to_string()))
    }];
    let running = start_service(config, Arc::new(ManualClock::new(at)), listener).await;
    let api = Api::new(&running);

    // Once both rooms have a state, the list with their days.
    let started = std::time::Instant::now();
    let body = loop {
        let body = api.get_authorized("/api/v1/rooms?agenda=today").await;
        let rooms = by_address(&body);
        if rooms.len() == 2 && rooms.values().all(|room| room["state"]["note"].is_string()) {
            break body;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "both rooms listed with a state: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(body["timezone"], "UTC", "{body}");
    let rooms = by_address(&body);
    let day_start: Timestamp = "2026-12-03T00:00:00Z".parse().expect("an instant");
    let day_end: Timestamp = "2026-12-04T00:00:00Z".parse().expect("an instant");
    let busy = &rooms[BUSY_ROOM]["agenda"];
    assert_eq!(busy["from"], day_start.to_string(), "{body}");
    assert_eq!(busy["to"], day_end.to_string(), "{body}");
    let starts: Vec<&str> = busy["meetings"]
        .as_array()
        .expect("the meetings")
        .iter()
        .filter_map(|meeting| meeting["start"].as_str())
        .collect();
    let running_start = (at - SignedDuration::from_mins(30)).to_string();
    let later = (at + SignedDuration::from_hours(2)).to_string();
    assert_eq!(
        starts,
        [running_start.as_str(), later.as_str()],
        "today's two meetings, not tomorrow's: {body}"
    );
    assert_eq!(rooms[EMPTY_ROOM]["agenda"]["meetings"], json!([]), "{body}");
    // Each room's agenda is its detail's, and the rest of the room is the list's without it.
    for (address, room) in &rooms {
        let detail = api
            .get_authorized(&format!("/api/v1/rooms/{address}"))
            .await;
        assert_eq!(room["agenda"], detail["agenda"], "{address}: {detail}");
        assert_eq!(body["timezone"], detail["timezone"], "{address}: {detail}");
        assert_eq!(room["state"], detail["state"], "{address}: {detail}");
    }

    // Without the option the list is as before: no agenda, no zone.
    let plain = api.get_authorized("/api/v1/rooms").await;
    assert!(plain.get("timezone").is_none(), "{plain}");
    assert!(
        by_address(&plain)
            .values()
            .all(|room| room.get("agenda").is_none()),
        "{plain}"
    );
    // With a filter, the rooms it leaves, each with its day.
    let filtered = api
        .get_authorized("/api/v1/rooms?building=Building%202&agenda=today")
        .await;
    let filtered_rooms = by_address(&filtered);
    assert_eq!(
        filtered_rooms.keys().collect::<Vec<_>>(),
        [EMPTY_ROOM],
        "{filtered}"
    );
    assert_eq!(
        filtered_rooms[EMPTY_ROOM]["agenda"]["from"],
        day_start.to_string()
    );

    // Another day is refused with the field and the value it takes.
    for query in ["agenda=tomorrow", "agenda=", "agenda=TODAY"] {
        let (status, answer) = api
            .get(
                &format!("/api/v1/rooms?{query}"),
                Some(running.api_token.expose()),
            )
            .await;
        assert_eq!(status, 400, "{query}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("agenda") && error.contains("`today`") && error.contains("agenda=today"),
            "{query}: the field and its one value: {answer}"
        );
    }

    running.shutdown().await;
    emulator.shutdown().await;
}
