//! A token outage at start-up (issue "Hardening", probe 2): Entra's token endpoint is down when
//! the service starts, with a directory file or an Entra group. With a file the people stay
//! listed with the reason; with a group (which cannot be read without a token) the group is
//! read again with the back-off. Once Entra answers again everyone gets presence within
//! seconds, without a restart and without waiting for the five-minute regular refresh.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use m365_emulator::{Emulator, EmulatorConfig, FaultSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_outage_at_start_is_retried_and_everyone_gets_presence() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(5, 24))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let graph = GraphClient::new(&ready).await;
    let group = ready.group_id.clone().expect("a generated group");
    let members = graph.group_members(&group).await;
    assert_eq!(members.len(), 5);
    let data = tempfile::tempdir().expect("temp dir");
    let file = data.path().join("people.csv");
    std::fs::write(&file, format!("address\n{}\n", members.join("\n"))).expect("directory file");

    let working = emulator.faults();
    emulator.set_faults(FaultSettings {
        token_endpoint_outage: true,
        ..working.clone()
    });
    let (listener, public_url) = listen(0).await;
    let config = config_for(&ready, data.path(), &public_url, Some(&file));
    let running = try_start_service(config, Arc::new(calbridge::clock::SystemClock), listener)
        .await
        .expect("the service starts during the outage");
    let api = Api::new(&running);

    // During the outage: the token is tried again and again (1 s, 2 s, … apart), everyone
    // stays listed, and the source says its token is failing.
    wait_token_errors(&emulator, 3).await;
    let users = api.get_authorized("/api/v1/users").await;
    let listed = users["users"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, 5, "the people stay listed: {users}");
    let status = api.get_authorized("/api/v1/status").await;
    assert_eq!(
        status["sources"][0]["token"]["state"], "failing",
        "{status}"
    );

    emulator.set_faults(working);
    // The back-off of a passing trouble starts at 1 s and doubles; after three failed
    // attempts the next one is seconds away, far from the 5-minute retry of refused
    // credentials.
    wait_everyone_decided(&running, &members).await;
    let status = api.get_authorized("/api/v1/status").await;
    assert_eq!(status["sources"][0]["token"]["state"], "valid", "{status}");
    // Recovered people carry no error any more.
    let users = api.get_authorized("/api/v1/users").await;
    for user in users["users"].as_array().expect("users") {
        assert!(user["sync"]["last_error"].is_null(), "{user}");
        assert!(user["sync"]["last_error_at"].is_null(), "{user}");
        assert!(user["resolution_error"].is_null(), "{user}");
    }
    let person_errors: Vec<&serde_json::Value> = status["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter(|error| !error["person"].is_null())
        .collect();
    assert!(person_errors.is_empty(), "{person_errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_cannot_be_read_at_start_is_read_again_with_the_back_off() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(5, 25))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let graph = GraphClient::new(&ready).await;
    let group = ready.group_id.clone().expect("a generated group");
    let members = graph.group_members(&group).await;
    let data = tempfile::tempdir().expect("temp dir");

    let working = emulator.faults();
    emulator.set_faults(FaultSettings {
        token_endpoint_outage: true,
        ..working.clone()
    });
    let (listener, public_url) = listen(0).await;
    let config = config_for(&ready, data.path(), &public_url, None);
    let running = try_start_service(config, Arc::new(calbridge::clock::SystemClock), listener)
        .await
        .expect("the service starts during the outage");
    let api = Api::new(&running);
    wait_token_errors(&emulator, 3).await;
    let status = api.get_authorized("/api/v1/status").await;
    let errors = status["errors"].to_string();
    assert!(
        errors.contains(&format!("directory group {group}")) && errors.contains("tried again in"),
        "the failing group is named with its retry: {errors}"
    );

    emulator.set_faults(working);
    wait_everyone_decided(&running, &members).await;
}

/// Waits until every one of `members` has a presence, after the outage ended.
async fn wait_everyone_decided(running: &calbridge::service::RunningService, members: &[String]) {
    wait_for(
        "everyone's presence after the outage",
        Duration::from_secs(90),
        || {
            members
                .iter()
                .all(|member| presence_of(running, member).is_some())
                .then_some(())
        },
    )
    .await;
}
