//! The service on an on-premises Exchange source (EWS through the emulator): NTLM with
//! impersonation, resolution of the directory's addresses (a wrong one is reported, not
//! dropped), the first window read, and a calendar change reaching presence through the
//! streaming connection. The EWS client itself is proven in `crates/sources-ews/tests`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use calbridge::clock::SystemClock;
use calbridge::config::{DirectoryConfig, SourceConfig};
use calbridge_domain::SourceId;
use common::*;
use m365_emulator::{Emulator, EmulatorConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_on_premises_source_syncs_resolves_and_streams_changes() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(8, 21))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let graph = GraphClient::new(&ready).await;
    let members = graph
        .group_members(ready.group_id.as_deref().expect("a group"))
        .await;
    assert!(members.len() >= 5, "{members:?}");
    let people: Vec<String> = members.into_iter().take(5).collect();

    let data_dir = tempfile::tempdir().expect("temp dir");
    let directory = data_dir.path().join("people.csv");
    let mut csv = String::from("address,display_name\n");
    for person in &people {
        csv.push_str(&format!("{person},\n"));
    }
    csv.push_str("nobody.here@contoso.example,Ghost\n");
    std::fs::write(&directory, csv).expect("write the directory");

    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data_dir.path(), &public_url, Some(&directory));
    let ews_toml = format!(
        "user = \"{}\"\npassword = \"{}\"\nauth = \"ntlm\"\naccess = \"impersonation\"\news_url = \"{}\"\nextra_root_ca = \"{}\"\n",
        ready.ews_user.as_deref().expect("an impersonation account"),
        ready.ews_password.as_deref().expect("its password"),
        ready.ews_url,
        ready.ca_cert.display(),
    );
    let ews: calbridge_sources_ews::EwsSourceConfig =
        toml::from_str(&ews_toml).expect("EWS config");
    let source = SourceId("onprem".to_string());
    config.sources = vec![SourceConfig {
        id: source.clone(),
        secret_expires_on: None,
        graph: None,
        ews: Some(ews),
    }];
    config.directory = vec![DirectoryConfig {
        source: source.clone(),
        file: Some(directory.clone()),
        group_id: None,
        refresh_seconds: 300,
    }];
    let running = start_service(config, Arc::new(SystemClock), listener).await;

    let key = |address: &str| calbridge_store::PersonKey {
        source: source.clone(),
        address: calbridge_domain::MailboxAddress::parse(address).expect("address"),
    };
    for person in &people {
        assert!(
            running.hub.decision(&key(person)).is_some(),
            "{person} has presence after the first EWS sync"
        );
    }
    let api = Api::new(&running);
    let users = api.get_authorized("/api/v1/users").await;
    let ghost = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|user| user["address"] == "nobody.here@contoso.example")
        .expect("the unresolvable person is listed, not dropped")
        .clone();
    assert_eq!(ghost["resolution"], "failed", "{ghost}");
    assert!(ghost["resolution_error"]
        .as_str()
        .unwrap_or("")
        .contains("nobody.here@contoso.example"));
    let status = api.get_authorized("/api/v1/status").await;
    let card = status["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|card| card["id"] == "onprem")
        .expect("the EWS source is shown")
        .clone();
    assert_eq!(card["kind"], "ews");
    assert_eq!(card["subscriptions"], people.len());

    // A free person gets a meeting through Graph; EWS streams the change; presence follows.
    let free = people
        .iter()
        .find(|person| {
            running
                .hub
                .decision(&key(person))
                .is_some_and(|(decision, _)| decision.current.is_none())
        })
        .expect("someone is free now")
        .clone();
    let now = jiff::Timestamp::now();
    graph
        .create_event(
            &free,
            "Streamed change",
            now - jiff::SignedDuration::from_mins(2),
            now + jiff::SignedDuration::from_mins(40),
            "busy",
        )
        .await;
    wait_for(
        "presence from the streamed change",
        Duration::from_secs(20),
        || {
            running.hub.decision(&key(&free)).filter(|(decision, _)| {
                decision.activity.as_str() == "busy"
                    && decision.note.starts_with("Streamed change until")
            })
        },
    )
    .await;
    running.shutdown().await;
    emulator.shutdown().await;
}
