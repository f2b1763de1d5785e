//! Rooms through EWS against the in-process emulator: every room list's rooms (`GetRoomLists`
//! then `GetRooms`, a room in two lists once) or one list's, an unknown list named as such, and
//! the decline of a meeting in a room's calendar acting as the room: it leaves the room's
//! calendar and the organizer's copy shows the room declined; without the right to act for the
//! room the error names the rights that would do.

mod support;

use std::collections::BTreeSet;

use calbridge_sources_ews::{EwsError, MailboxAccess};
use jiff::Timestamp;
use m365_emulator::{Clock, Emulator, EmulatorConfig, RunningEmulator, Scenario};
use support::ews_source::{address, config_for, source};
use support::raw_https::https;

const SERVICE: &str = "svc@contoso.example";
const SERVICE_PASSWORD: &str = "svc-Passw0rd";
const MONITOR: &str = "monitor@contoso.example";
const MONITOR_PASSWORD: &str = "monitor-Passw0rd";
const APP_ID: &str = "22222222-2222-4222-8222-222222222222";
const APP_SECRET: &str = "app-secret";

fn scenario() -> Scenario {
    let text = format!(
        r#"
[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "calbridge"
client_id = "{APP_ID}"
roles = ["Calendars.ReadWrite", "User.Read.All"]
secrets = [{{ value = "{APP_SECRET}" }}]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada Lovelace"

[[rooms]]
upn = "room.a1@contoso.example"
display_name = "A1"
office_location = "Building A"

[[rooms]]
upn = "room.a2@contoso.example"
display_name = "A2"
office_location = "Building A"

[[rooms]]
upn = "room.b1@contoso.example"
display_name = "B1"
office_location = "Building B"

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
start = "2026-06-01T10:00:00Z"
duration = "1h"
attendees = ["room.a1@contoso.example"]
"#
    );
    match Scenario::from_toml_str(&text) {
        Ok(scenario) => scenario,
        Err(error) => panic!("scenario does not parse: {error}"),
    }
}

async fn start() -> RunningEmulator {
    let mut config = EmulatorConfig::scenario(scenario());
    config.clock = Clock::manual("2026-06-01T08:00:00Z".parse().unwrap());
    match Emulator::start(config).await {
        Ok(emulator) => emulator,
        Err(error) => panic!("emulator did not start: {error}"),
    }
}

fn window() -> (Timestamp, Timestamp) {
    (
        "2026-06-01T00:00:00Z".parse().unwrap(),
        "2026-06-02T00:00:00Z".parse().unwrap(),
    )
}

/// The response of `room` among the attendees of Ada's "Design review", read through Graph.
async fn organizer_sees(emulator: &RunningEmulator, room: &str) -> String {
    let ready = emulator.ready();
    let form = format!(
        "grant_type=client_credentials&client_id={APP_ID}&client_secret={APP_SECRET}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
    );
    let (status, body) = https(
        ready,
        "POST",
        &ready.token_url,
        "application/x-www-form-urlencoded",
        None,
        form,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, body) = https(
        ready,
        "GET",
        &format!("{}/users/ada@contoso.example/events", ready.graph_url),
        "application/json",
        token["access_token"].as_str(),
        String::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    events["value"]
        .as_array()
        .and_then(|events| {
            events
                .iter()
                .find(|event| event["subject"] == "Design review")
        })
        .and_then(|event| event["attendees"].as_array())
        .and_then(|attendees| {
            attendees
                .iter()
                .find(|attendee| attendee["emailAddress"]["address"] == room)
        })
        .and_then(|attendee| attendee["status"]["response"].as_str())
        .unwrap_or_else(|| panic!("no {room} on the organizer's copy: {body}"))
        .to_string()
}

#[tokio::test]
async fn rooms_come_from_every_room_list_or_one_and_an_unknown_list_is_named() {
    let emulator = start().await;
    let source = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let all = source.rooms(None).await.unwrap();
    let by_list: BTreeSet<(String, Option<String>, Option<String>)> = all
        .iter()
        .map(|room| {
            (
                room.address.to_string(),
                room.display_name.clone(),
                room.room_list.clone(),
            )
        })
        .collect();
    let a = Some("rooms.building-a@contoso.example".to_string());
    let b = Some("rooms.building-b@contoso.example".to_string());
    assert_eq!(
        by_list,
        BTreeSet::from([
            (
                "room.a1@contoso.example".to_string(),
                Some("A1".to_string()),
                a.clone()
            ),
            (
                "room.a2@contoso.example".to_string(),
                Some("A2".to_string()),
                a.clone()
            ),
            (
                "room.b1@contoso.example".to_string(),
                Some("B1".to_string()),
                b
            ),
        ])
    );
    assert_eq!(all.len(), 3, "each room once");
    // EWS knows a room's name and address only.
    assert!(all.iter().all(|room| room.capacity.is_none()
        && room.building.is_none()
        && room.floor_number.is_none()));

    let one = source
        .rooms(Some(&address("rooms.building-a@contoso.example")))
        .await
        .unwrap();
    assert_eq!(
        one.iter()
            .map(|room| room.address.to_string())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "room.a1@contoso.example".to_string(),
            "room.a2@contoso.example".to_string()
        ])
    );
    assert!(one.iter().all(|room| room.room_list == a));

    let error = source
        .rooms(Some(&address("rooms.nowhere@contoso.example")))
        .await
        .unwrap_err();
    assert!(
        matches!(error, EwsError::UnknownRoomList { .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("rooms.nowhere@contoso.example")
            && text.contains("ErrorNameResolutionNoResults"),
        "{text}"
    );
}

#[tokio::test]
async fn a_declined_meeting_leaves_the_room_and_the_organizer_sees_the_decline() {
    let emulator = start().await;
    let room = address("room.a1@contoso.example");
    let (start, end) = window();

    // A reviewer of every calendar reads the room but may not decline for it.
    let mut config = config_for(&emulator, MONITOR, MONITOR_PASSWORD);
    config.access = MailboxAccess::Delegate;
    let reviewer = source(config);
    let booked = reviewer.read_window(&room, start, end).await.unwrap();
    let [meeting] = booked.as_slice() else {
        panic!("one booking: {booked:?}")
    };
    let refused = reviewer
        .decline(&room, &meeting.id, "Nobody checked in.")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, EwsError::DeclineRefused { .. }),
        "{refused:?}"
    );
    let text = refused.to_string();
    assert!(text.contains("ErrorAccessDenied"), "{text}");
    assert!(
        text.contains("ApplicationImpersonation") && text.contains("FullAccess"),
        "{text}"
    );
    // Impersonation by an account without the role is refused the same way.
    let not_impersonating = source(config_for(&emulator, MONITOR, MONITOR_PASSWORD));
    let refused = not_impersonating
        .decline(&room, &meeting.id, "Nobody checked in.")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, EwsError::DeclineRefused { ref code, .. } if code == "ErrorImpersonateUserDenied"),
        "{refused:?}"
    );
    // Still the room's acceptance of the request (its default calendar processing).
    assert_eq!(organizer_sees(&emulator, room.as_str()).await, "accepted");

    let service = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    service
        .decline(&room, &meeting.id, "Nobody checked in.")
        .await
        .unwrap();
    assert!(service
        .read_window(&room, start, end)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(organizer_sees(&emulator, room.as_str()).await, "declined");
    let again = service
        .decline(&room, &meeting.id, "Nobody checked in.")
        .await
        .unwrap_err();
    assert!(
        matches!(again, EwsError::MeetingNotFound { .. }),
        "{again:?}"
    );
}
