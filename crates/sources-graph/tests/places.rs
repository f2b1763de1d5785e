//! Rooms and room lists through the places API of the in-process emulator: every page
//! followed, a list's rooms by its address, and the refusal without `Place.Read.All` named.

use std::collections::BTreeSet;
use std::sync::Arc;

use calbridge_domain::Secret;
use calbridge_sources_graph::{
    GraphCredential, GraphError, GraphSource, GraphSourceConfig, SourceOptions, SystemClock,
};
use m365_emulator::{Emulator, EmulatorConfig, RunningEmulator, Scenario};

fn source_for(emulator: &RunningEmulator, client_id: &str, secret: &str) -> GraphSource {
    let ready = emulator.ready();
    let mut config = GraphSourceConfig::new(
        &ready.tenant_id,
        client_id,
        GraphCredential::ClientSecret(Secret::new(secret)),
    );
    config.authority_url = ready.base_url.clone();
    config.graph_url = ready.base_url.clone();
    config.extra_root_ca = Some(ready.ca_cert.clone());
    config.token_scope = Some("https://graph.microsoft.com/.default".to_string());
    GraphSource::with_options(&config, Arc::new(SystemClock), SourceOptions::default())
        .expect("a source")
}

#[tokio::test]
async fn every_room_and_each_lists_rooms_come_with_their_building_and_capacity() {
    // 1,000 people come with 7 rooms in 3 buildings.
    let emulator = Emulator::start(EmulatorConfig::generated(1000, 3))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let source = source_for(
        &emulator,
        &ready.client_id,
        ready.client_secret.as_deref().expect("a secret"),
    );
    let rooms = source.rooms(None).await.expect("the rooms");
    assert_eq!(rooms.len(), 7);
    assert!(rooms
        .iter()
        .all(|room| room.capacity.is_some_and(|n| n >= 4)));
    assert!(rooms.iter().all(|room| room
        .building
        .as_deref()
        .is_some_and(|b| b.starts_with("Building "))));
    assert!(rooms.iter().all(|room| room.room_list.is_none()));

    let lists = source.room_lists().await.expect("the room lists");
    assert_eq!(lists.len(), 3);
    let mut listed = BTreeSet::new();
    for list in &lists {
        let members = source
            .rooms(Some(&list.address))
            .await
            .expect("a list's rooms");
        assert!(!members.is_empty());
        for member in &members {
            assert_eq!(member.building, list.display_name);
            assert_eq!(member.room_list.as_deref(), Some(list.address.as_str()));
        }
        listed.extend(members.into_iter().map(|room| room.address));
    }
    let all: BTreeSet<_> = rooms.into_iter().map(|room| room.address).collect();
    assert_eq!(listed, all);
    assert!(
        emulator
            .counters()
            .by_kind
            .get("places.list")
            .copied()
            .unwrap_or(0)
            >= 2,
        "the listings went to the places API"
    );
}

#[tokio::test]
async fn without_place_read_all_the_refusal_names_the_permission() {
    let scenario: Scenario = serde_json::from_value(serde_json::json!({
        "tenants": [{"name": "contoso", "domains": ["contoso.example"]}],
        "apps": [{
            "name": "calbridge",
            "tenant": "contoso",
            "roles": ["Calendars.Read", "User.Read.All"],
            "secrets": [{"value": "places-test-secret"}],
        }],
        "users": [{"upn": "ada@contoso.example"}],
        "rooms": [{"upn": "room.1@contoso.example", "office_location": "Building 1"}],
    }))
    .expect("a scenario");
    let emulator = Emulator::start(EmulatorConfig::scenario(scenario))
        .await
        .expect("the emulator starts");
    let client_id = emulator.ready().client_id.clone();
    let source = source_for(&emulator, &client_id, "places-test-secret");
    let error = source.rooms(None).await.expect_err("refused");
    let shown = error.to_string();
    assert!(matches!(error, GraphError::Forbidden { .. }), "{shown}");
    assert!(shown.contains("Place.Read.All"), "{shown}");
    assert!(shown.contains("ErrorAccessDenied"), "{shown}");
    let error = source.room_lists().await.expect_err("refused");
    assert!(error.to_string().contains("Place.Read.All"), "{error}");
}
