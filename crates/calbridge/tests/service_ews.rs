//! The service on an on-premises Exchange source (EWS through the emulator): NTLM with
//! impersonation, resolution of the directory's addresses (a wrong one is reported, not
//! dropped), the first window read, and a calendar change reaching presence through the
//! streaming connection. The EWS client itself is proven in `crates/sources-ews/tests`.
//!
//! Every emulator here requires Extended Protection on EWS, as Exchange 2019 CU14 and later do
//! by default ([`exchange_defaults`]): the service's NTLM logons pass only with a correct
//! channel binding, and each test asserts at its end that none was refused.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calbridge::clock::{Clock, ManualClock, SystemClock};
use calbridge::config::{DirectoryConfig, SourceConfig};
use calbridge::service::RunningService;
use calbridge_domain::SourceId;
use common::*;
use m365_emulator::{
    Emulator, EmulatorConfig, ExtendedProtection, FaultSettings, ReadyInfo, RunningEmulator,
};

/// Exchange's settings as it ships since 2019 CU14: Extended Protection required on EWS.
fn exchange_defaults() -> FaultSettings {
    FaultSettings {
        ews_extended_protection: ExtendedProtection::Require,
        ..FaultSettings::default()
    }
}

/// An emulator configuration with [`exchange_defaults`].
fn hardened(mut config: EmulatorConfig) -> EmulatorConfig {
    config.faults = Some(exchange_defaults());
    config
}

/// No NTLM logon was refused for its channel binding.
fn assert_no_channel_binding_refused(emulator: &RunningEmulator) {
    let counters = emulator.counters();
    assert_eq!(
        counters.by_kind.get("ews.channel_binding_refusals"),
        None,
        "{:?}",
        counters.by_kind
    );
}
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_on_premises_source_syncs_resolves_and_streams_changes() {
    init_logs();
    let emulator = Emulator::start(hardened(EmulatorConfig::generated(8, 21)))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let graph = GraphClient::new(&ready).await;
    let members = graph
        .group_members(ready.group_id.as_deref().expect("a group"))
        .await;
    assert!(members.len() >= 5, "{members:?}");
    let people: Vec<String> = members.into_iter().take(5).collect();
    // The person who gets a meeting below is free from an hour ago to three hours on, by
    // construction, whatever the hour.
    let free = people[0].clone();
    let test_start = jiff::Timestamp::now();
    graph.free_around(&free, test_start).await;

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
        refresh_seconds: 300,
        ..DirectoryConfig::of_file(source.clone(), directory.clone())
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
    let card = ews_card(&api).await;
    assert_eq!(card["kind"], "ews");
    assert_eq!(card["subscriptions"], people.len());

    // The free person gets a meeting through Graph; EWS streams the change; presence follows.
    assert!(
        running
            .hub
            .decision(&key(&free))
            .is_some_and(|(decision, _)| decision.current.is_none()),
        "{free} is free"
    );
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
    let card = ews_card(&api).await;
    assert!(
        card["notifications_received"].as_u64() >= Some(1),
        "the streamed change is counted: {card}"
    );
    assert_eq!(card["ews"]["configured_url"], true, "{card}");
    running.shutdown().await;
    assert_no_channel_binding_refused(&emulator);
    emulator.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Helpers for the tests below: one emulator (a small generated organisation), a directory CSV,
// and the service on `[sources.ews]` with NTLM impersonation.

const EWS_SOURCE: &str = "onprem";

fn ews_key(address: &str) -> calbridge_store::PersonKey {
    calbridge_store::PersonKey {
        source: SourceId(EWS_SOURCE.to_string()),
        address: calbridge_domain::MailboxAddress::parse(address).expect("address"),
    }
}

/// `(activity, note without hash tags)` of a person on the EWS source, if decided.
fn ews_presence(running: &RunningService, address: &str) -> Option<(String, String)> {
    running
        .hub
        .decision(&ews_key(address))
        .map(|(decision, _)| {
            (
                decision.activity.as_str().to_string(),
                note_text(&decision.note).to_string(),
            )
        })
}

struct Organisation {
    emulator: RunningEmulator,
    ready: ReadyInfo,
    graph: GraphClient,
    /// Mail addresses of the generated group's members.
    people: Vec<String>,
    data_dir: tempfile::TempDir,
    directory: PathBuf,
    /// The services' clock: the system clock unless a test pins it.
    clock: Arc<dyn Clock>,
}

impl Organisation {
    async fn start(n_users: usize, seed: u64, faults: Option<FaultSettings>) -> Organisation {
        init_logs();
        let mut config = EmulatorConfig::generated(n_users, seed);
        config.faults = Some(faults.unwrap_or_else(exchange_defaults));
        let emulator = Emulator::start(config).await.expect("the emulator starts");
        let ready = emulator.ready().clone();
        let graph = GraphClient::new(&ready).await;
        let people = graph
            .group_members(ready.group_id.as_deref().expect("a group"))
            .await;
        assert!(!people.is_empty());
        let data_dir = tempfile::tempdir().expect("temp dir");
        let directory = data_dir.path().join("people.csv");
        Organisation {
            emulator,
            ready,
            graph,
            people,
            data_dir,
            directory,
            clock: Arc::new(SystemClock),
        }
    }

    fn write_directory(&self, lines: &[String]) {
        write_csv(&self.directory, lines);
    }

    /// Starts the service (and waits for its first sync) with the directory as written.
    async fn service(&self, password: Option<&str>, refresh_seconds: u64) -> RunningService {
        self.service_in(self.data_dir.path(), password, refresh_seconds)
            .await
    }

    async fn service_in(
        &self,
        data_dir: &Path,
        password: Option<&str>,
        refresh_seconds: u64,
    ) -> RunningService {
        self.service_with(data_dir, password, refresh_seconds, "")
            .await
    }

    /// As `service_in`, with further `[sources.ews]` lines.
    async fn service_with(
        &self,
        data_dir: &Path,
        password: Option<&str>,
        refresh_seconds: u64,
        more_toml: &str,
    ) -> RunningService {
        let (listener, public_url) = listen(0).await;
        let mut config = config_for(&self.ready, data_dir, &public_url, Some(&self.directory));
        let ews_toml = format!(
            "user = \"{}\"\npassword = \"{}\"\nauth = \"ntlm\"\naccess = \"impersonation\"\news_url = \"{}\"\nextra_root_ca = \"{}\"\n{more_toml}",
            self.ready.ews_user.as_deref().expect("an impersonation account"),
            password.unwrap_or(self.ready.ews_password.as_deref().expect("its password")),
            self.ready.ews_url,
            self.ready.ca_cert.display(),
        );
        let ews: calbridge_sources_ews::EwsSourceConfig =
            toml::from_str(&ews_toml).expect("EWS config");
        let source = SourceId(EWS_SOURCE.to_string());
        config.sources = vec![SourceConfig {
            id: source.clone(),
            secret_expires_on: None,
            graph: None,
            ews: Some(ews),
        }];
        config.directory = vec![DirectoryConfig {
            refresh_seconds,
            ..DirectoryConfig::of_file(source, self.directory.clone())
        }];
        start_service(config, self.clock.clone(), listener).await
    }

    fn counter(&self, kind: &str) -> u64 {
        self.emulator
            .counters()
            .by_kind
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// Gives a person a meeting from now on through Graph (EWS sees the same calendar), in a
    /// span the test first makes free, so that the meeting is what the person shows.
    async fn meeting(&self, person: &str, subject: &str) {
        let now = self.clock.now();
        self.graph.free_around(person, now).await;
        self.graph
            .create_event(
                person,
                subject,
                now - jiff::SignedDuration::from_mins(2),
                now + jiff::SignedDuration::from_mins(40),
                "busy",
            )
            .await;
    }
}

fn write_csv(path: &Path, lines: &[String]) {
    let mut csv = String::from("address,display_name\n");
    for line in lines {
        csv.push_str(line);
        csv.push('\n');
    }
    std::fs::write(path, csv).expect("write the directory");
}

async fn user_entry(api: &Api, address: &str) -> Value {
    let users = api.get_authorized("/api/v1/users").await;
    users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|user| user["address"] == address)
        .unwrap_or_else(|| panic!("{address} is listed in {users}"))
        .clone()
}

/// Waits until a person has a meeting called `subject` as presence.
async fn wait_for_meeting(running: &RunningService, person: &str, subject: &str) {
    let prefix = format!("{subject} until");
    wait_for(&format!("{person} to show {subject}"), PATIENCE, || {
        ews_presence(running, person)
            .filter(|(activity, note)| activity == "busy" && note.starts_with(&prefix))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_goes_through_further_addresses() {
    let org = Organisation::start(4, 31, None).await;
    let real = org.people[0].clone();
    org.write_directory(&[
        format!("wrong.address@contoso.example;{real},Moved Person"),
        "nobody.one@contoso.example;nobody.two@contoso.example,Ghost".to_string(),
    ]);
    let running = org.service(None, 300).await;
    let api = Api::new(&running);

    let moved = user_entry(&api, "wrong.address@contoso.example").await;
    assert_eq!(moved["resolution"], "resolved", "{moved}");
    assert_eq!(moved["resolved_address"], real.as_str(), "{moved}");
    assert!(
        ews_presence(&running, "wrong.address@contoso.example").is_some(),
        "the person found through a further address has presence"
    );

    let ghost = user_entry(&api, "nobody.one@contoso.example").await;
    assert_eq!(ghost["resolution"], "failed", "{ghost}");
    let error = ghost["resolution_error"].as_str().unwrap_or_default();
    assert!(error.contains("nobody.one@contoso.example"), "{ghost}");
    assert!(ews_presence(&running, "nobody.one@contoso.example").is_none());

    // The real mailbox streams under the directory's (wrong) first address.
    org.meeting(&real, "Found through an alias").await;
    wait_for_meeting(
        &running,
        "wrong.address@contoso.example",
        "Found through an alias",
    )
    .await;
    running.shutdown().await;
    assert_no_channel_binding_refused(&org.emulator);
    org.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_reestablished_and_nothing_is_lost() {
    let faults = FaultSettings {
        ews_connection_timeout_seconds: 1,
        ..exchange_defaults()
    };
    let org = Organisation::start(4, 32, Some(faults)).await;
    let people: Vec<String> = org.people.iter().take(3).cloned().collect();
    org.write_directory(&people.iter().map(|p| format!("{p},")).collect::<Vec<_>>());
    let running = org.service(None, 300).await;
    for person in &people {
        assert!(ews_presence(&running, person).is_some(), "{person}");
    }
    // The server closes the streaming connection after a second; calbridge opens a new one.
    let opened = org.counter("ews.GetStreamingEvents");
    wait_for(
        "a second streaming connection after the server closed the first",
        PATIENCE,
        || (org.counter("ews.GetStreamingEvents") >= opened + 2).then_some(()),
    )
    .await;
    for (index, person) in people.iter().enumerate() {
        org.meeting(person, &format!("After the cut {index}")).await;
    }
    for (index, person) in people.iter().enumerate() {
        wait_for_meeting(&running, person, &format!("After the cut {index}")).await;
    }
    assert_eq!(
        org.emulator.ews_subscription_ids().len(),
        people.len(),
        "the subscriptions survive the reconnects"
    );
    running.shutdown().await;
    assert_no_channel_binding_refused(&org.emulator);
    org.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_server_busy_storms_are_ridden_out() {
    let org = Organisation::start(8, 33, None).await;
    let lines: Vec<String> = org.people.iter().map(|p| format!("{p},")).collect();
    org.write_directory(&lines);

    // A fault-free read first, in a data folder of its own: what presence should be.
    let reference_dir = tempfile::tempdir().expect("temp dir");
    let reference = org.service_in(reference_dir.path(), None, 300).await;
    let expected: Vec<(String, Option<(String, String)>)> = org
        .people
        .iter()
        .map(|person| (person.clone(), ews_presence(&reference, person)))
        .collect();
    reference.shutdown().await;
    for (person, presence) in &expected {
        assert!(
            presence.is_some(),
            "{person} has presence on a fault-free read"
        );
    }

    org.emulator.set_faults(FaultSettings {
        ews_server_busy_rate: 0.6,
        ews_back_off_milliseconds: 10,
        ..exchange_defaults()
    });
    let running = org.service(None, 300).await;
    assert!(
        org.counter("faults.ews_server_busy") > 0,
        "the storm happened"
    );
    org.emulator.set_faults(exchange_defaults());
    wait_for(
        "everyone's presence as on a fault-free read",
        PATIENCE,
        || {
            expected
                .iter()
                .all(|(person, presence)| &ews_presence(&running, person) == presence)
                .then_some(())
        },
    )
    .await;
    let api = Api::new(&running);
    let card = wait_for_card(&api, org.people.len()).await;
    assert_eq!(card["kind"], "ews", "{card}");
    running.shutdown().await;
    assert_no_channel_binding_refused(&org.emulator);
    org.emulator.shutdown().await;
}

/// The EWS source card once every person has a subscription.
async fn wait_for_card(api: &Api, subscriptions: usize) -> Value {
    let started = Instant::now();
    loop {
        let card = ews_card(api).await;
        if card["subscriptions"] == subscriptions {
            return card;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "not every person got a subscription: {card}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_reported_once_and_not_retried_in_a_tight_loop() {
    let org = Organisation::start(6, 34, None).await;
    let lines: Vec<String> = org.people.iter().map(|p| format!("{p},")).collect();
    org.write_directory(&lines);
    let wrong = "Wr0ng-Passw0rd-4711";
    let running = org.service(Some(wrong), 300).await;
    let api = Api::new(&running);
    let users = api.get_authorized("/api/v1/users").await;
    let listed = users["users"].as_array().expect("users");
    assert_eq!(listed.len(), org.people.len(), "{users}");
    for user in listed {
        let error = user["resolution_error"]
            .as_str()
            .or(user["sync"]["last_error"].as_str())
            .unwrap_or_default();
        assert!(
            error.contains("refused the credentials"),
            "the authentication problem is named for {}: {user}",
            user["address"]
        );
    }
    // Six people to resolve, one refused logon: the credential back-off stopped the other
    // five before they were sent. (The back-off itself and the five-minute retry of refused
    // credentials are unit-tested, without waiting for the wall clock.)
    let failures = org.counter("ews.auth_failures");
    assert_eq!(failures, 1, "one refused logon, not one per person");
    let requests = org.counter("ews.requests");
    assert!(
        requests <= 3,
        "no request per person once the password was refused: {requests}"
    );
    for path in ["/api/v1/users", "/api/v1/status"] {
        let body = api.get_authorized(path).await.to_string();
        assert!(!body.contains(wrong), "{path} shows the password: {body}");
    }
    let (_, metrics) = api.get("/metrics", Some(running.api_token.expose())).await;
    assert!(!metrics.to_string().contains(wrong));
    running.shutdown().await;
    assert_no_channel_binding_refused(&org.emulator);
    org.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_added_to_the_directory_streams_changes() {
    let org = Organisation::start(4, 35, None).await;
    let (first, newcomer) = (org.people[0].clone(), org.people[1].clone());
    org.write_directory(&[format!("{first},")]);
    let running = org.service(None, 1).await;
    assert!(ews_presence(&running, &first).is_some());
    assert!(ews_presence(&running, &newcomer).is_none());

    org.write_directory(&[format!("{first},"), format!("{newcomer},Newcomer")]);
    wait_for("the newcomer's presence", PATIENCE, || {
        ews_presence(&running, &newcomer)
    })
    .await;
    wait_for("the newcomer's subscription", PATIENCE, || {
        (org.emulator.ews_subscription_ids().len() >= 2).then_some(())
    })
    .await;
    org.meeting(&newcomer, "First day meeting").await;
    wait_for_meeting(&running, &newcomer, "First day meeting").await;
    running.shutdown().await;
    assert_no_channel_binding_refused(&org.emulator);
    org.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_busy_reads_a_hundred_mailboxes_per_request_and_hides_subjects() {
    let mut org = Organisation::start(150, 36, None).await;
    assert_eq!(org.people.len(), 150);
    let lines: Vec<String> = org.people.iter().map(|p| format!("{p},")).collect();
    org.write_directory(&lines);
    // Both services decide at one instant, so that their answers can be compared even when a
    // meeting starts between the two first syncs.
    org.clock = Arc::new(ManualClock::new(whole_second(jiff::Timestamp::now())));
    // By construction, one person is busy and another free now, whatever the hour.
    let (busy_person, free) = (org.people[0].clone(), org.people[1].clone());
    org.meeting(&busy_person, "Board meeting").await;
    let now = org.clock.now();
    org.graph.free_around(&free, now).await;

    // What the calendar view decides, for comparison.
    let reference_dir = tempfile::tempdir().expect("temp dir");
    let reference = org.service_in(reference_dir.path(), None, 300).await;
    let expected: Vec<Option<String>> = org
        .people
        .iter()
        .map(|person| ews_presence(&reference, person).map(|(activity, _)| activity))
        .collect();
    reference.shutdown().await;
    let find_items = org.counter("ews.FindItem");
    assert!(find_items >= 150, "the calendar view reads every mailbox");

    let running = org
        .service_with(org.data_dir.path(), None, 300, "read = \"free_busy\"\n")
        .await;
    assert_eq!(
        org.counter("ews.GetUserAvailabilityRequest"),
        2,
        "150 mailboxes in two requests"
    );
    assert_eq!(
        org.counter("ews.FindItem"),
        find_items,
        "no FindItem in free/busy mode"
    );
    let mut busy = 0;
    for (person, expected) in org.people.iter().zip(&expected) {
        let activity = ews_presence(&running, person).map(|(activity, _)| activity);
        assert_eq!(
            &activity, expected,
            "{person}: free/busy and calendar view agree"
        );
        if activity.as_deref() == Some("busy") {
            busy += 1;
        }
    }
    assert!(busy > 0, "some of 150 people are busy now");
    assert_eq!(
        ews_presence(&running, &busy_person).map(|(activity, _)| activity),
        Some("busy".to_string()),
        "{busy_person} has a meeting now"
    );

    // A change still streams in; the subject is never fetched, so it cannot show.
    wait_for_card(&Api::new(&running), org.people.len()).await;
    assert!(
        running
            .hub
            .decision(&ews_key(&free))
            .is_some_and(|(decision, _)| decision.current.is_none()),
        "{free} is free now"
    );
    org.meeting(&free, "Secret merger talks").await;
    let (_, note) = wait_for("the streamed free/busy change", PATIENCE, || {
        ews_presence(&running, &free).filter(|(activity, _)| activity == "busy")
    })
    .await;
    assert!(!note.contains("Secret merger"), "{note}");
    assert_eq!(
        org.counter("ews.GetUserAvailabilityRequest"),
        3,
        "one more, for one mailbox"
    );
    running.shutdown().await;
    assert_no_channel_binding_refused(&org.emulator);
    org.emulator.shutdown().await;
}

/// A small organisation whose Autodiscover answers come from virtual hosts on the emulator's
/// ports, as `https://autodiscover.<domain>`, `https://<domain>` and the hosts they point to.
const DISCOVERY_SCENARIO: &str = r#"
[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "calbridge"
client_id = "33333333-3333-4333-8333-333333333333"
roles = ["Calendars.ReadWrite", "User.Read.All"]
secrets = [{ value = "app-secret" }]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada Lovelace"
aliases = ["ada.lovelace@contoso.example"]

[[users]]
upn = "bob@contoso.example"
display_name = "Bob Builder"

[[exchange.accounts]]
address = "svc@contoso.example"
password = "Svc-Passw0rd"
impersonation = true

[[exchange.autodiscover_hosts]]
host = "autodiscover.contoso.example"
answer = "not_found"

[[exchange.autodiscover_hosts]]
host = "contoso.example"
answer = "redirect_url"
url = "https://legacy.example/autodiscover/autodiscover.xml"

[[exchange.autodiscover_hosts]]
host = "legacy.example"
answer = "http_redirect"
url = "https://mail.contoso.example/autodiscover/autodiscover.xml"

[[exchange.autodiscover_hosts]]
host = "mail.contoso.example"
answer = "settings"

[[events]]
mailbox = "ada@contoso.example"
subject = "Board meeting"
start = "-10m"
duration = "1h"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_goes_through_autodiscover_redirects_from_the_service_accounts_domain() {
    init_logs();
    let scenario =
        m365_emulator::Scenario::from_toml_str(DISCOVERY_SCENARIO).expect("the scenario parses");
    let emulator = Emulator::start(hardened(EmulatorConfig::scenario(scenario)))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let directory = data_dir.path().join("people.csv");
    // The directory knows Ada by an alias; ResolveNames finds her primary address.
    write_csv(
        &directory,
        &[
            "ada.lovelace@contoso.example,Ada".to_string(),
            "bob@contoso.example,Bob".to_string(),
        ],
    );
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data_dir.path(), &public_url, Some(&directory));
    // No ews_url and no autodiscover_url: discovery starts from the account's domain.
    let ews_toml = format!(
        "user = \"svc@contoso.example\"\npassword = \"Svc-Passw0rd\"\nextra_root_ca = \"{}\"\n",
        ready.ca_cert.display(),
    );
    let mut ews: calbridge_sources_ews::EwsSourceConfig =
        toml::from_str(&ews_toml).expect("EWS config");
    let port = |url: &str| url.rsplit(':').next().unwrap_or_default().to_string();
    let https = port(&ready.base_url);
    let http = port(ready.http_url.as_deref().expect("the emulator's http port"));
    for host in [
        "autodiscover.contoso.example",
        "contoso.example",
        "legacy.example",
        "mail.contoso.example",
    ] {
        for (outside, inside) in [(443, &https), (80, &http)] {
            ews.resolve.insert(
                format!("{host}:{outside}"),
                format!("127.0.0.1:{inside}").parse().expect("address"),
            );
        }
    }
    let source = SourceId(EWS_SOURCE.to_string());
    config.sources = vec![SourceConfig {
        id: source.clone(),
        secret_expires_on: None,
        graph: None,
        ews: Some(ews),
    }];
    config.directory = vec![DirectoryConfig {
        refresh_seconds: 300,
        ..DirectoryConfig::of_file(source, directory)
    }];
    let running = start_service(config, Arc::new(SystemClock), listener).await;

    let (activity, note) =
        ews_presence(&running, "ada.lovelace@contoso.example").expect("Ada has presence");
    assert_eq!(activity, "busy");
    assert!(note.starts_with("Board meeting until"), "{note}");
    let bob = ews_presence(&running, "bob@contoso.example").expect("Bob has presence");
    assert_eq!(bob.0, "available");
    let api = Api::new(&running);
    let ada = user_entry(&api, "ada.lovelace@contoso.example").await;
    assert_eq!(ada["resolved_address"], "ada@contoso.example", "{ada}");
    let pox = emulator
        .counters()
        .by_kind
        .get("autodiscover.pox")
        .copied()
        .unwrap_or(0);
    assert!(
        pox >= 4,
        "404, redirectUrl, 302, then settings: {pox} Autodiscover requests"
    );
    let card = ews_card(&api).await;
    assert_eq!(card["ews"]["url"], ready.ews_url.as_str(), "{card}");
    assert_eq!(
        card["ews"]["autodiscover"], "https://mail.contoso.example/autodiscover/autodiscover.xml",
        "{card}"
    );
    running.shutdown().await;
    assert_no_channel_binding_refused(&emulator);
    emulator.shutdown().await;
}

/// The EWS source card of a running service.
async fn ews_card(api: &Api) -> Value {
    let status = api.get_authorized("/api/v1/status").await;
    status["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .find(|card| card["id"] == EWS_SOURCE)
        .expect("the EWS source is shown")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_streaming_connection_is_polled_until_exchange_accepts_it() {
    // A monitor account with delegate access: every streaming connection is charged to it,
    // and this Exchange allows it one.
    let faults = FaultSettings {
        ews_hanging_connection_limit: 1,
        ..exchange_defaults()
    };
    let org = Organisation::start(4, 37, Some(faults)).await;
    let people: Vec<String> = org.people.iter().take(4).cloned().collect();
    org.write_directory(&people.iter().map(|p| format!("{p},")).collect::<Vec<_>>());
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(
        &org.ready,
        org.data_dir.path(),
        &public_url,
        Some(&org.directory),
    );
    config.sync.poll_interval_seconds = 1;
    let ews_toml = format!(
        "user = \"{}\"\npassword = \"{}\"\naccess = \"delegate\"\news_url = \"{}\"\nextra_root_ca = \"{}\"\nmax_subscriptions_per_connection = 2\n",
        org.ready.ews_delegate_user.as_deref().expect("a monitor account"),
        org.ready.ews_delegate_password.as_deref().expect("its password"),
        org.ready.ews_url,
        org.ready.ca_cert.display(),
    );
    let source = SourceId(EWS_SOURCE.to_string());
    config.sources = vec![SourceConfig {
        id: source.clone(),
        secret_expires_on: None,
        graph: None,
        ews: Some(toml::from_str(&ews_toml).expect("EWS config")),
    }];
    config.directory = vec![DirectoryConfig {
        refresh_seconds: 300,
        ..DirectoryConfig::of_file(source, org.directory.clone())
    }];
    let running = start_service(config, Arc::new(SystemClock), listener).await;
    let api = Api::new(&running);
    let polled = || {
        running.ews_syncs[&SourceId(EWS_SOURCE.to_string())]
            .polled_people
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_for("two mailboxes polled", PATIENCE, || {
        (polled() == 2).then_some(())
    })
    .await;
    let card = ews_card(&api).await;
    assert_eq!(card["mode"], "streaming + polling", "{card}");
    assert_eq!(card["ews"]["polled_mailboxes"], 2, "{card}");
    assert!(org.counter("ews.connections_refused") >= 1);

    // Streamed or polled, every change reaches presence.
    for (index, person) in people.iter().enumerate() {
        org.meeting(person, &format!("Limited {index}")).await;
    }
    for (index, person) in people.iter().enumerate() {
        wait_for_meeting(&running, person, &format!("Limited {index}")).await;
    }

    // Exchange allows more: the refused connection opens and polling stops.
    org.emulator.set_faults(FaultSettings {
        ews_hanging_connection_limit: 0,
        ..exchange_defaults()
    });
    wait_for("streaming for everyone", PATIENCE * 4, || {
        (polled() == 0).then_some(())
    })
    .await;
    let card = ews_card(&api).await;
    assert_eq!(card["mode"], "streaming", "{card}");
    assert_eq!(
        org.emulator
            .ews_streaming_connections()
            .values()
            .sum::<usize>(),
        2,
        "both connections are open"
    );
    running.shutdown().await;
    assert_no_channel_binding_refused(&org.emulator);
    org.emulator.shutdown().await;
}
