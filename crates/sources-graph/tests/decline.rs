//! Declining a meeting through Graph's `event: decline` against the in-process emulator: the
//! meeting leaves the room's calendar and the organizer's copy shows the room declined; an app
//! without `Calendars.ReadWrite` gets the error that names it; a meeting already gone is
//! `NotFound`.

use std::sync::Arc;

use calbridge_domain::{MailboxAddress, Secret};
use calbridge_sources_graph::{
    GraphCredential, GraphError, GraphSource, GraphSourceConfig, SourceOptions, SubjectFetch,
    SystemClock,
};
use jiff::Timestamp;
use m365_emulator::{Clock, Emulator, EmulatorConfig, RunningEmulator, Scenario};

const WRITER: &str = "22222222-2222-4222-8222-222222222222";
const READER: &str = "33333333-3333-4333-8333-333333333333";
const SECRET: &str = "decline-secret";

fn scenario() -> Scenario {
    let text = format!(
        r#"
[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "writer"
client_id = "{WRITER}"
roles = ["Calendars.ReadWrite", "User.Read.All"]
secrets = [{{ value = "{SECRET}" }}]

[[apps]]
name = "reader"
client_id = "{READER}"
roles = ["Calendars.Read", "User.Read.All"]
secrets = [{{ value = "{SECRET}" }}]

[[users]]
upn = "ada@contoso.example"

[[rooms]]
upn = "room.1@contoso.example"
display_name = "Room 1"

[[events]]
mailbox = "ada@contoso.example"
subject = "Design review"
start = "2026-06-01T10:00:00Z"
duration = "1h"
attendees = ["room.1@contoso.example"]
"#
    );
    Scenario::from_toml_str(&text).expect("the scenario parses")
}

fn source_for(emulator: &RunningEmulator, client_id: &str) -> GraphSource {
    let ready = emulator.ready();
    let mut config = GraphSourceConfig::new(
        &ready.tenant_id,
        client_id,
        GraphCredential::ClientSecret(Secret::new(SECRET)),
    );
    config.authority_url = ready.base_url.clone();
    config.graph_url = ready.base_url.clone();
    config.extra_root_ca = Some(ready.ca_cert.clone());
    config.token_scope = Some("https://graph.microsoft.com/.default".to_string());
    GraphSource::with_options(&config, Arc::new(SystemClock), SourceOptions::default())
        .expect("a source")
}

/// The room's answer on Ada's copy of the meeting, as Graph shows it to the writer app.
async fn organizer_sees(emulator: &RunningEmulator, source: &GraphSource) -> String {
    let ready = emulator.ready();
    let token: serde_json::Value = source
        .http_client()
        .post(&ready.token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", WRITER),
            ("client_secret", SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("the token answer")
        .json()
        .await
        .expect("token JSON");
    let events: serde_json::Value = source
        .http_client()
        .get(format!(
            "{}/users/ada@contoso.example/events",
            ready.graph_url
        ))
        .bearer_auth(token["access_token"].as_str().unwrap_or_default())
        .send()
        .await
        .expect("the events")
        .json()
        .await
        .expect("events JSON");
    events["value"][0]["attendees"][0]["status"]["response"]
        .as_str()
        .unwrap_or_else(|| panic!("no attendee status: {events}"))
        .to_string()
}

#[tokio::test]
async fn a_room_declines_a_meeting_only_with_calendars_readwrite() {
    let mut config = EmulatorConfig::scenario(scenario());
    config.clock = Clock::manual("2026-06-01T08:00:00Z".parse().expect("an instant"));
    let emulator = Emulator::start(config).await.expect("the emulator starts");
    let writer = source_for(&emulator, WRITER);
    let reader = source_for(&emulator, READER);
    let room = writer
        .resolve_user(&MailboxAddress::parse("room.1@contoso.example").expect("an address"))
        .await
        .expect("the room resolves");
    let start: Timestamp = "2026-06-01T00:00:00Z".parse().expect("an instant");
    let end: Timestamp = "2026-06-02T00:00:00Z".parse().expect("an instant");
    let read = |source: &GraphSource| {
        let people = vec![((), room.id.clone())];
        let source = source.clone();
        async move {
            let mut results = source
                .read_windows(&people, start, end, SubjectFetch::Fetch)
                .await;
            results.pop().expect("one result").1.expect("the window")
        }
    };
    let booked = read(&writer).await;
    let [meeting] = booked.as_slice() else {
        panic!("one booking: {booked:?}")
    };

    let refused = reader
        .decline(&room.id, &meeting.id, "Nobody checked in.")
        .await
        .expect_err("refused");
    assert!(
        matches!(refused, GraphError::DeclineRefused { .. }),
        "{refused:?}"
    );
    assert_eq!(refused.graph_code(), Some("ErrorAccessDenied"));
    assert!(
        refused.to_string().contains("Calendars.ReadWrite"),
        "{refused}"
    );
    assert_eq!(read(&writer).await.len(), 1, "nothing changed");
    // Still the room's acceptance of the request (its default calendar processing).
    assert_eq!(organizer_sees(&emulator, &writer).await, "accepted");

    writer
        .decline(&room.id, &meeting.id, "Nobody checked in.")
        .await
        .expect("declined");
    assert!(
        read(&writer).await.is_empty(),
        "the room's calendar no longer holds it"
    );
    assert_eq!(organizer_sees(&emulator, &writer).await, "declined");
    let again = writer
        .decline(&room.id, &meeting.id, "Nobody checked in.")
        .await
        .expect_err("gone");
    assert!(matches!(again, GraphError::NotFound { .. }), "{again:?}");
}
