//! The EWS source against the in-process emulator: NTLM, Basic and Bearer tokens from the
//! emulator's Entra endpoint (every request impersonating a mailbox, as Exchange Online and the
//! emulator require), impersonation and delegate access, Autodiscover through the seed's order
//! (answers trusted over https only, failures cached) and again when EWS moves, name
//! resolution, streaming (and Exchange's limit on streaming connections per charged account),
//! `ErrorServerBusy` storms, a wrong password and a wrong client secret.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use calbridge_domain::{
    AppointmentStatus, AppointmentTime, MailboxAddress, Secret, Sensitivity, ShowAs,
};
use calbridge_sources_ews::{
    AuthMethod, BearerConfig, EwsError, EwsSource, EwsSourceConfig, MailboxAccess, StreamEvent,
};
use jiff::Timestamp;
use m365_emulator::{Clock, Emulator, EmulatorConfig, FaultSettings, RunningEmulator, Scenario};
use support::emulator::{counter, port_of, resolve_to_emulator};
use support::ews_source::{
    address, config_for, impatient_source, next_error_or_change, next_event, source,
};
use support::raw_https::https;
use support::stub_server::{
    autodiscover_stub, autodiscover_stub_answering, dead_ews, AutodiscoverStub, DeadEws,
    StubAnswer, STUB,
};
use support::tracing_capture::{install_log_capture, LogCapture};

const SERVICE: &str = "svc@contoso.example";
const SERVICE_PASSWORD: &str = "svc-Passw0rd";
const MONITOR: &str = "monitor@contoso.example";
const MONITOR_PASSWORD: &str = "monitor-Passw0rd";
const APP_ID: &str = "22222222-2222-4222-8222-222222222222";
const APP_SECRET: &str = "app-secret";
/// An app granted `full_access_as_app` on Office 365 Exchange Online.
const EWS_APP_ID: &str = "33333333-3333-4333-8333-333333333333";
const EWS_APP_SECRET: &str = "ews-app-Secret-value";
const NOW: &str = "2026-06-01T08:00:00Z";
/// The mailbox an app-only token impersonates for requests about no single mailbox.
const SERVICE_MAILBOX: &str = "calbridge@contoso.example";

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

[[apps]]
name = "calbridge-ews"
client_id = "{EWS_APP_ID}"
roles = ["full_access_as_app"]
secrets = [{{ value = "{EWS_APP_SECRET}" }}]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada Lovelace"
aliases = ["ada.lovelace@contoso.example"]

[[users]]
upn = "bob@contoso.example"
display_name = "Bob Builder"

[[users]]
upn = "{SERVICE_MAILBOX}"
display_name = "calbridge service mailbox"

[[exchange.accounts]]
address = "{SERVICE}"
password = "{SERVICE_PASSWORD}"
impersonation = true

[[exchange.accounts]]
address = "{MONITOR}"
password = "{MONITOR_PASSWORD}"
reviewer_of = ["ada@contoso.example"]

[[exchange.autodiscover_hosts]]
host = "autodiscover.contoso.example"
answer = "not_found"

[[exchange.autodiscover_hosts]]
host = "contoso.example"
answer = "redirect_url"
url = "https://mail.contoso.example/autodiscover/autodiscover.xml"

[[exchange.autodiscover_hosts]]
host = "mail.contoso.example"
answer = "settings"

[[exchange.autodiscover_hosts]]
host = "legacy.example"
answer = "http_redirect"
url = "https://mail.contoso.example/autodiscover/autodiscover.xml"

[[exchange.autodiscover_hosts]]
host = "downgrade.example"
answer = "http_redirect"
url = "http://legacy.example/autodiscover/autodiscover.xml"

[[exchange.autodiscover_hosts]]
host = "downgrade-url.example"
answer = "redirect_url"
url = "http://mail.contoso.example/autodiscover/autodiscover.xml"

[[exchange.redirect_addr]]
address = "{MONITOR}"
to = "ada@contoso.example"

[[events]]
mailbox = "ada@contoso.example"
subject = "Stand-up"
start = "2026-06-01T09:00:00Z"
duration = "15m"
recurrence = {{ pattern = {{ type = "daily", interval = 1 }}, range = {{ type = "numbered", startDate = "2026-06-01", numberOfOccurrences = 3 }} }}

[[events]]
mailbox = "ada@contoso.example"
subject = "Conference"
start = "2026-06-02"
end = "2026-06-03"
all_day = true
show_as = "oof"

[[events]]
mailbox = "ada@contoso.example"
subject = "Doctor"
start = "2026-06-01T14:00:00Z"
duration = "1h"
sensitivity = "private"

[[events]]
mailbox = "ada@contoso.example"
subject = "Cancelled review"
start = "2026-06-01T16:00:00Z"
duration = "30m"
show_as = "tentative"
is_cancelled = true

[[events]]
mailbox = "bob@contoso.example"
subject = "Bob's meeting"
start = "2026-06-01T10:00:00Z"
duration = "1h"
"#
    );
    match Scenario::from_toml_str(&text) {
        Ok(scenario) => scenario,
        Err(error) => panic!("scenario does not parse: {error}"),
    }
}

async fn start(faults: Option<FaultSettings>) -> RunningEmulator {
    install_log_capture();
    let mut config = EmulatorConfig::scenario(scenario());
    config.clock = Clock::manual(NOW.parse().unwrap());
    config.faults = faults;
    match Emulator::start(config).await {
        Ok(emulator) => emulator,
        Err(error) => panic!("emulator did not start: {error}"),
    }
}

fn window() -> (Timestamp, Timestamp) {
    (
        "2026-06-01T00:00:00Z".parse().unwrap(),
        "2026-06-04T00:00:00Z".parse().unwrap(),
    )
}

#[tokio::test]
async fn window_read_with_ntlm_and_impersonation_matches_the_scenario() {
    let emulator = start(None).await;
    let source = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let (start, end) = window();
    let mut appointments = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap();
    appointments.sort_by_key(|appointment| appointment.time.instants(&jiff::tz::TimeZone::UTC).0);
    let subjects: Vec<&str> = appointments
        .iter()
        .map(|appointment| appointment.subject.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        subjects,
        [
            "Stand-up",
            "Doctor",
            "Cancelled review",
            "Conference",
            "Stand-up",
            "Stand-up"
        ]
    );
    let conference = &appointments[3];
    assert_eq!(
        conference.time,
        AppointmentTime::AllDay {
            first_day: "2026-06-02".parse().unwrap(),
            end_day: "2026-06-03".parse().unwrap(),
        }
    );
    assert_eq!(conference.show_as, ShowAs::Oof);
    assert_eq!(appointments[1].sensitivity, Sensitivity::Private);
    assert_eq!(appointments[2].status, AppointmentStatus::Cancelled);
    assert_eq!(appointments[2].show_as, ShowAs::Tentative);
    assert_eq!(
        appointments[0].time,
        AppointmentTime::Timed {
            start: "2026-06-01T09:00:00Z".parse().unwrap(),
            end: "2026-06-01T09:15:00Z".parse().unwrap(),
        }
    );
    assert_eq!(
        appointments[0]
            .organizer
            .as_ref()
            .map(MailboxAddress::as_str),
        Some("ada@contoso.example")
    );
    // Impersonation reaches every mailbox, and the NTLM logon happened once: later requests
    // ride the authenticated connection.
    let bob = source
        .read_window(&address("bob@contoso.example"), start, end)
        .await
        .unwrap();
    assert_eq!(bob.len(), 1);
    assert_eq!(counter(&emulator, "ews.FindItem"), 2);
    // The AUTHENTICATE leg carries the first FindItem.
    assert_eq!(
        source.requests_sent(),
        3,
        "NEGOTIATE, AUTHENTICATE, then one request"
    );
}

#[tokio::test]
async fn delegate_access_reads_reviewer_calendars_and_reports_others_as_denied() {
    let emulator = start(None).await;
    let mut config = config_for(&emulator, MONITOR, MONITOR_PASSWORD);
    config.access = MailboxAccess::Delegate;
    config.auth = AuthMethod::Basic;
    let source = source(config);
    let (start, end) = window();
    let appointments = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap();
    assert_eq!(appointments.len(), 6);
    let private: Vec<_> = appointments
        .iter()
        .filter(|appointment| appointment.sensitivity == Sensitivity::Private)
        .collect();
    assert_eq!(private.len(), 1);
    assert_ne!(
        private[0].subject.as_deref(),
        Some("Doctor"),
        "a reviewer must not see private subjects"
    );
    let error = source
        .read_window(&address("bob@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert!(matches!(error, EwsError::AccessDenied { .. }), "{error}");
    assert!(error.to_string().contains("Reviewer"), "{error}");
}

#[tokio::test]
async fn impersonation_without_the_right_is_reported_as_such() {
    let emulator = start(None).await;
    let source = source(config_for(&emulator, MONITOR, MONITOR_PASSWORD));
    let (start, end) = window();
    let error = source
        .read_window(&address("bob@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert!(
        matches!(error, EwsError::ImpersonationDenied { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("ApplicationImpersonation"));
}

#[tokio::test]
async fn names_resolve_through_an_alternate_address_and_the_username_fallback() {
    let emulator = start(None).await;
    let source = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let resolved = source
        .resolve_names(&["nobody@contoso.example; ada.lovelace@contoso.example".to_string()])
        .await
        .unwrap();
    assert_eq!(resolved.as_str(), "ada@contoso.example");
    let resolved = source
        .resolve_names(&[
            "bob.b@elsewhere.example".to_string(),
            "bob@contoso.example".to_string(),
        ])
        .await
        .unwrap();
    assert_eq!(resolved.as_str(), "bob@contoso.example");
    let error = source
        .resolve_names(&["ghost@contoso.example".to_string()])
        .await
        .unwrap_err();
    assert!(
        matches!(error, EwsError::NonExistentMailbox { .. }),
        "{error}"
    );
}

/// Maps the scenario's virtual host names to the emulator's https and http ports.
fn virtual_hosts(emulator: &RunningEmulator) -> HashMap<String, SocketAddr> {
    resolve_to_emulator(
        emulator,
        &[
            "autodiscover.contoso.example",
            "contoso.example",
            "mail.contoso.example",
            "legacy.example",
            "downgrade.example",
            "downgrade-url.example",
        ],
    )
}

#[tokio::test]
async fn autodiscover_follows_the_seed_order_through_a_redirect_url() {
    let emulator = start(None).await;
    let mut config = config_for(&emulator, SERVICE, SERVICE_PASSWORD);
    config.ews_url = None;
    config.resolve = virtual_hosts(&emulator);
    let source = source(config);
    // https://autodiscover.contoso.example answers 404, https://contoso.example a
    // redirectUrl to mail.contoso.example, which answers with settings.
    let url = source.ews_url().await.unwrap();
    assert_eq!(url.as_str(), emulator.ready().ews_url);
    let discovered = source.discovered().await.unwrap();
    assert_eq!(
        discovered.answered_by.as_str(),
        "https://mail.contoso.example/autodiscover/autodiscover.xml"
    );
    assert_eq!(
        counter(&emulator, "autodiscover.pox"),
        4,
        "404, redirectUrl, then NTLM's two legs"
    );
    let (start, end) = window();
    let appointments = source
        .read_window(&address("bob@contoso.example"), start, end)
        .await
        .unwrap();
    assert_eq!(appointments.len(), 1);
    // Cached: a second lookup asks nobody; rediscover asks again.
    let before = counter(&emulator, "autodiscover.pox");
    source.ews_url().await.unwrap();
    assert_eq!(counter(&emulator, "autodiscover.pox"), before);
    source.rediscover().await.unwrap();
    assert!(counter(&emulator, "autodiscover.pox") > before);
}

#[tokio::test]
async fn a_configured_http_autodiscover_url_is_followed_through_its_302() {
    let emulator = start(None).await;
    let mut config = config_for(&emulator, SERVICE, SERVICE_PASSWORD);
    config.ews_url = None;
    config.autodiscover_url =
        Some("http://legacy.example/autodiscover/autodiscover.xml".to_string());
    config.resolve = virtual_hosts(&emulator);
    config.server = calbridge_sources_ews::ServerSide::Internal;
    let source = source(config);
    let url = source.ews_url().await.unwrap();
    assert_eq!(url.as_str(), emulator.ready().ews_url);
    assert_eq!(
        source.discovered().await.unwrap().answered_by.as_str(),
        "https://mail.contoso.example/autodiscover/autodiscover.xml"
    );
}

#[tokio::test]
async fn configured_ews_url_must_be_an_exchange_asmx_endpoint() {
    let mut config = EwsSourceConfig::new(SERVICE, Secret::new("x"));
    config.ews_url = Some("https://mail.contoso.example/owa/".to_string());
    let error = EwsSource::new(config).map(|_| ()).unwrap_err();
    assert!(error.to_string().contains("/EWS/Exchange.asmx"), "{error}");
}

// ---------------------------------------------------------------------------------------
// Autodiscover trusts answers over https only.

/// `resolve` entries sending both https candidates of contoso.example to a port that refuses
/// connections and both http candidates to `http_server`.
fn only_http_candidates_answer(
    dead: &DeadEws,
    http_server: SocketAddr,
) -> HashMap<String, SocketAddr> {
    let dead_address = dead.address();
    let mut resolve = HashMap::new();
    for host in ["autodiscover.contoso.example", "contoso.example"] {
        resolve.insert(format!("{host}:443"), dead_address);
        resolve.insert(format!("{host}:80"), http_server);
    }
    resolve
}

#[tokio::test]
async fn settings_over_plain_http_from_a_discovered_candidate_are_refused_naming_each_candidate() {
    let emulator = start(None).await;
    let dead = dead_ews();
    // Plain http answers settings that name a working EWS: a forger on the path could do this.
    let stub = autodiscover_stub(vec![emulator.ready().ews_url.clone()]).await;
    let mut config = config_for(&emulator, SERVICE, SERVICE_PASSWORD);
    config.ews_url = None;
    config.resolve = only_http_candidates_answer(&dead, stub.address());
    let source = impatient_source(config);
    let (start, end) = window();
    let error = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert!(matches!(error, EwsError::Autodiscover { .. }), "{error}");
    let message = error.to_string();
    for candidate in [
        "https://autodiscover.contoso.example/autodiscover/autodiscover.xml could not be reached",
        "https://contoso.example/autodiscover/autodiscover.xml could not be reached",
    ] {
        assert!(message.contains(candidate), "{message}");
    }
    let refused = format!(
        "answered settings (EWS at {}) over plain http, which is refused",
        emulator.ready().ews_url
    );
    for candidate in [
        "http://autodiscover.contoso.example/autodiscover/autodiscover.xml",
        "http://contoso.example/autodiscover/autodiscover.xml",
    ] {
        assert!(
            message.contains(&format!("{candidate} {refused}")),
            "{message}"
        );
    }
    assert_eq!(stub.asked(), 2, "both http candidates were asked");
    assert_eq!(
        counter(&emulator, "ews.requests"),
        0,
        "nothing went to the EWS URL they named"
    );
    assert!(source.discovered().await.is_none());
}

#[tokio::test]
async fn a_discovered_http_candidate_redirecting_to_https_is_followed() {
    let emulator = start(None).await;
    let dead = dead_ews();
    let stub = autodiscover_stub_answering(vec![StubAnswer::Redirect(
        "https://mail.contoso.example/autodiscover/autodiscover.xml".to_string(),
    )])
    .await;
    let mut config = config_for(&emulator, SERVICE, SERVICE_PASSWORD);
    config.ews_url = None;
    config.resolve = only_http_candidates_answer(&dead, stub.address());
    let https_port = port_of(&emulator.ready().base_url);
    config.resolve.insert(
        "mail.contoso.example:443".to_string(),
        format!("127.0.0.1:{https_port}").parse().unwrap(),
    );
    let source = source(config);
    let url = source.ews_url().await.unwrap();
    assert_eq!(url.as_str(), emulator.ready().ews_url);
    assert_eq!(
        source.discovered().await.unwrap().answered_by.as_str(),
        "https://mail.contoso.example/autodiscover/autodiscover.xml"
    );
    assert_eq!(stub.asked(), 1);
}

#[tokio::test]
async fn an_https_answer_redirecting_to_http_is_refused_by_302_and_by_redirect_url() {
    let emulator = start(None).await;
    for (host, answered) in [
        (
            "downgrade.example",
            "answered HTTP 302 redirecting to http://legacy.example/autodiscover/autodiscover.xml, which is refused",
        ),
        (
            "downgrade-url.example",
            "answered a redirectUrl to http://mail.contoso.example/autodiscover/autodiscover.xml, which is refused",
        ),
    ] {
        let before = counter(&emulator, "autodiscover.pox");
        let mut config = config_for(&emulator, SERVICE, SERVICE_PASSWORD);
        config.ews_url = None;
        let configured = format!("https://{host}/autodiscover/autodiscover.xml");
        config.autodiscover_url = Some(configured.clone());
        config.resolve = virtual_hosts(&emulator);
        let source = source(config);
        let error = source.ews_url().await.unwrap_err();
        assert!(matches!(error, EwsError::Autodiscover { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains(&format!("{configured} {answered}")),
            "{message}"
        );
        assert!(message.contains("only to https"), "{message}");
        assert_eq!(
            counter(&emulator, "autodiscover.pox"),
            before + 1,
            "the http URL was not asked"
        );
    }
}

#[tokio::test]
async fn a_redirect_addr_from_an_https_answer_is_followed() {
    let emulator = start(None).await;
    let mut config = config_for(&emulator, MONITOR, MONITOR_PASSWORD);
    config.ews_url = None;
    config.resolve = virtual_hosts(&emulator);
    let source = source(config);
    // mail.contoso.example answers the monitor's address with a redirectAddr to ada's, and
    // discovery starts over for ada: 404, redirectUrl, then settings (NTLM's two legs).
    let url = source.ews_url().await.unwrap();
    assert_eq!(url.as_str(), emulator.ready().ews_url);
    assert_eq!(counter(&emulator, "autodiscover.pox"), 7);
}

#[tokio::test]
async fn a_configured_http_autodiscover_url_may_give_settings_with_one_warning() {
    let logs = LogCapture::start();
    let emulator = start(None).await;
    let live = emulator.ready().ews_url.clone();
    let stub = autodiscover_stub(vec![live.clone()]).await;
    let source = source(discovering_config(&emulator, &stub));
    assert_eq!(source.ews_url().await.unwrap().as_str(), live);
    assert_eq!(source.rediscover().await.unwrap().as_str(), live);
    assert_eq!(stub.asked(), 2);
    let warnings: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|line| line.starts_with("WARN") && line.contains("plain http"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains(&stub.url), "{}", warnings[0]);
}

// ---------------------------------------------------------------------------------------
// A failed first Autodiscover is cached.

#[tokio::test]
async fn a_failed_first_autodiscover_is_answered_from_the_cache_backing_off_doubling() {
    let emulator = start(None).await;
    let live = emulator.ready().ews_url.clone();
    let stub = autodiscover_stub_answering(vec![
        StubAnswer::Down,
        StubAnswer::Down,
        StubAnswer::Settings(live.clone()),
    ])
    .await;
    let source = impatient_source(discovering_config(&emulator, &stub));
    let (start, end) = window();

    // Fifty mailboxes start during the outage: one discovery, fifty failures.
    let reads: Vec<_> = (0..50)
        .map(|n| {
            let source = Arc::clone(&source);
            let mailbox = address(["ada@contoso.example", "bob@contoso.example"][n % 2]);
            tokio::spawn(async move { source.read_window(&mailbox, start, end).await })
        })
        .collect();
    for read in reads {
        let error = read.await.unwrap().unwrap_err();
        assert!(matches!(error, EwsError::Autodiscover { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("answered HTTP 503"), "{message}");
        assert!(
            message.contains("Autodiscover failed") && message.contains("is asked again in"),
            "{message}"
        );
    }
    assert_eq!(stub.asked(), 1);

    // Once the first back-off has passed, one caller asks again; it fails, and the next
    // back-off is twice as long. Nothing is in flight, so the paused clock moves nothing else.
    tokio::time::pause();
    tokio::time::advance(EwsSource::FIRST_DISCOVERY_RETRY).await;
    tokio::time::resume();
    let error = source.ews_url().await.unwrap_err();
    assert_eq!(stub.asked(), 2);
    let message = error.to_string();
    assert!(
        message.contains("Autodiscover failed 0 s ago and is asked again in 20 s"),
        "{message}"
    );

    tokio::time::pause();
    tokio::time::advance(EwsSource::FIRST_DISCOVERY_RETRY).await;
    tokio::time::resume();
    let error = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("Autodiscover failed 10 s ago"),
        "{error}"
    );
    assert_eq!(stub.asked(), 2, "still within the doubled back-off");

    tokio::time::pause();
    tokio::time::advance(EwsSource::FIRST_DISCOVERY_RETRY).await;
    tokio::time::resume();
    let appointments = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap();
    assert_eq!(appointments.len(), 6);
    assert_eq!(stub.asked(), 3);
    assert_eq!(source.ews_url().await.unwrap().as_str(), live);
    assert_eq!(counter(&emulator, "ews.FindItem"), 1);
}

/// Creates an event through Graph, as a user's Outlook would.
async fn create_event(emulator: &RunningEmulator, mailbox: &str, subject: &str) {
    let ready = emulator.ready();
    let form = format!(
        "grant_type=client_credentials&client_id={APP_ID}&client_secret={APP_SECRET}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
    );
    let (status, token_body) = https(
        ready,
        "POST",
        &ready.token_url,
        "application/x-www-form-urlencoded",
        None,
        form,
    )
    .await;
    assert_eq!(status, 200, "{token_body}");
    let json: serde_json::Value = serde_json::from_str(&token_body).unwrap();
    let token = json["access_token"].as_str().unwrap().to_string();
    let event = serde_json::json!({
        "subject": subject,
        "start": {"dateTime": "2026-06-01T11:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-06-01T12:00:00", "timeZone": "UTC"},
    });
    let (status, body) = https(
        ready,
        "POST",
        &format!("{}/users/{mailbox}/events", ready.graph_url),
        "application/json",
        Some(&token),
        event.to_string(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_change_arrives_on_the_streaming_connection() {
    let emulator = start(None).await;
    let source = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let ada = address("ada@contoso.example");
    let bob = address("bob@contoso.example");
    let ada_id = source.subscribe(&ada).await.unwrap();
    let bob_id = source.subscribe(&bob).await.unwrap();
    assert_eq!(emulator.ews_subscription_ids().len(), 2);
    let mut connection = source
        .stream(
            vec![(ada_id.clone(), ada.clone()), (bob_id, bob.clone())],
            Duration::from_secs(30 * 60),
        )
        .unwrap();
    assert!(matches!(
        next_event(&mut connection).await,
        StreamEvent::Connected { reopened: false }
    ));
    create_event(&emulator, "bob@contoso.example", "Walk-in").await;
    match next_event(&mut connection).await {
        StreamEvent::Changed(mailbox) => assert_eq!(mailbox, bob),
        other => panic!("expected a change of bob, got {other:?}"),
    }
    let (start, end) = window();
    let appointments = source.read_window(&bob, start, end).await.unwrap();
    assert!(appointments
        .iter()
        .any(|appointment| appointment.subject.as_deref() == Some("Walk-in")));
    drop(connection);
    source.unsubscribe(&ada, &ada_id).await.unwrap();
    assert_eq!(emulator.ews_subscription_ids().len(), 1);
}

#[tokio::test]
async fn a_closed_stream_is_reopened_and_still_delivers() {
    let faults = FaultSettings {
        ews_connection_timeout_seconds: 1,
        ..FaultSettings::default()
    };
    let emulator = start(Some(faults)).await;
    let source = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let ada = address("ada@contoso.example");
    let id = source.subscribe(&ada).await.unwrap();
    let mut connection = source
        .stream(vec![(id, ada.clone())], Duration::from_secs(60))
        .unwrap();
    assert!(matches!(
        next_event(&mut connection).await,
        StreamEvent::Connected { reopened: false }
    ));
    assert!(matches!(
        next_event(&mut connection).await,
        StreamEvent::ConnectionClosed
    ));
    assert!(matches!(
        next_event(&mut connection).await,
        StreamEvent::Connected { reopened: true }
    ));
    create_event(&emulator, "ada@contoso.example", "After the reconnect").await;
    loop {
        match next_event(&mut connection).await {
            StreamEvent::Changed(mailbox) => {
                assert_eq!(mailbox, ada);
                break;
            }
            StreamEvent::ConnectionClosed | StreamEvent::Connected { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(counter(&emulator, "ews.streaming_connections") >= 2);
}

#[tokio::test]
async fn a_server_busy_storm_is_ridden_out() {
    // Every request is refused until two were; then Exchange lets them through. (A random
    // rate would let a read meet six refusals in a row now and then.)
    let faults = FaultSettings {
        ews_server_busy_rate: 1.0,
        ews_back_off_milliseconds: 20,
        ..FaultSettings::default()
    };
    let emulator = start(Some(faults)).await;
    let source = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let (start, end) = window();
    let reader = {
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            source
                .read_window(&address("ada@contoso.example"), start, end)
                .await
        })
    };
    while counter(&emulator, "faults.ews_server_busy") < 2 {
        tokio::task::yield_now().await;
    }
    emulator.set_faults(FaultSettings::default());
    let appointments = reader.await.unwrap().unwrap();
    assert_eq!(appointments.len(), 6);
    assert_eq!(
        counter(&emulator, "ews.FindItem"),
        1,
        "one answer after the refusals"
    );
    // With every request refused the error says so and names the back-off.
    emulator.set_faults(FaultSettings {
        ews_server_busy_rate: 1.0,
        ews_back_off_milliseconds: 5,
        ..FaultSettings::default()
    });
    let error = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(error.retry_after(), Some(Duration::from_millis(5)));
}

#[tokio::test]
async fn a_wrong_password_is_reported_once_and_not_retried_in_a_tight_loop() {
    let emulator = start(None).await;
    let source = source(config_for(&emulator, SERVICE, "wrong-password"));
    let (start, end) = window();
    let ada = address("ada@contoso.example");
    let error = source.read_window(&ada, start, end).await.unwrap_err();
    assert!(matches!(error, EwsError::Unauthorized { .. }), "{error}");
    let message = error.to_string();
    assert!(!message.contains("wrong-password"), "{message}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(60)));
    let sent = source.requests_sent();
    for _ in 0..20 {
        let error = source.read_window(&ada, start, end).await.unwrap_err();
        assert!(matches!(error, EwsError::Unauthorized { .. }));
        assert!(error.retry_after().unwrap() <= Duration::from_secs(60));
    }
    assert_eq!(
        source.requests_sent(),
        sent,
        "no request during the back-off"
    );
    assert_eq!(counter(&emulator, "ews.auth_failures"), 1);
}

// ---------------------------------------------------------------------------------------
// Autodiscover again when EWS moves.

fn discovering_config(emulator: &RunningEmulator, stub: &AutodiscoverStub) -> EwsSourceConfig {
    let mut config = config_for(emulator, SERVICE, SERVICE_PASSWORD);
    config.ews_url = None;
    config.autodiscover_url = Some(stub.url.clone());
    config
}

#[tokio::test]
async fn a_dead_discovered_ews_url_sends_calbridge_back_to_autodiscover() {
    let logs = LogCapture::start();
    let emulator = start(None).await;
    let dead_server = dead_ews();
    let dead = dead_server.url.clone();
    let live = emulator.ready().ews_url.clone();
    let stub = autodiscover_stub(vec![dead.clone(), live.clone()]).await;
    let source = impatient_source(discovering_config(&emulator, &stub));
    let (start, end) = window();
    let ada = address("ada@contoso.example");

    // Four reads fail on the dead server together; they share one new Autodiscover answer.
    let reads: Vec<_> = (0..4)
        .map(|n| {
            let source = Arc::clone(&source);
            let mailbox = address(["ada@contoso.example", "bob@contoso.example"][n % 2]);
            tokio::spawn(async move { source.read_window(&mailbox, start, end).await })
        })
        .collect();
    let mut n_appointments = Vec::new();
    for read in reads {
        n_appointments.push(read.await.unwrap().unwrap().len());
    }
    assert_eq!(n_appointments, [6, 1, 6, 1]);
    assert_eq!(
        stub.asked(),
        2,
        "once at the start, once after {dead} failed"
    );
    assert_eq!(source.ews_url().await.unwrap().as_str(), live);
    assert_eq!(
        source
            .discovered()
            .await
            .and_then(|found| found.external)
            .map(String::from),
        Some(live.clone())
    );
    let moved: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|line| line.contains(&format!("EWS at {dead} failed")))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(
        moved[0].contains(&format!("Autodiscover found {live}")),
        "{}",
        moved[0]
    );

    // The new URL is cached: the next read goes there directly.
    let appointments = source.read_window(&ada, start, end).await.unwrap();
    assert_eq!(appointments.len(), 6);
    assert_eq!(stub.asked(), 2);
    assert_eq!(counter(&emulator, "ews.FindItem"), 5);
}

#[tokio::test]
async fn autodiscover_is_asked_again_once_for_requests_failing_together_and_then_once_a_minute() {
    let emulator = start(None).await;
    let dead_server = dead_ews();
    let dead = dead_server.url.clone();
    // Autodiscover keeps naming the dead server.
    let stub = autodiscover_stub(vec![dead.clone()]).await;
    let source = impatient_source(discovering_config(&emulator, &stub));
    let (start, end) = window();
    let mailboxes = ["ada@contoso.example", "bob@contoso.example"];

    let reads: Vec<_> = (0..4)
        .map(|n| {
            let source = Arc::clone(&source);
            let mailbox = address(mailboxes[n % 2]);
            tokio::spawn(async move { source.read_window(&mailbox, start, end).await })
        })
        .collect();
    for read in reads {
        let error = read.await.unwrap().unwrap_err();
        assert!(
            matches!(&error, EwsError::Network { url, .. } if *url == dead),
            "{error}"
        );
    }
    assert_eq!(
        stub.asked(),
        2,
        "once at the start, once for all four failed reads"
    );

    // Within the minute, a failure does not ask again, and says so.
    let error = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert_eq!(stub.asked(), 2);
    let message = error.to_string();
    assert!(message.contains(&dead), "{message}");
    assert!(
        message.contains("Autodiscover was asked again"),
        "{message}"
    );

    // A minute passes. Nothing is in flight, so the paused clock moves nothing else.
    tokio::time::pause();
    tokio::time::advance(EwsSource::REDISCOVERY_INTERVAL).await;
    tokio::time::resume();
    let error = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert_eq!(
        stub.asked(),
        3,
        "a minute later Autodiscover is asked again"
    );
    assert_eq!(counter(&emulator, "ews.requests"), 0);
}

#[tokio::test]
async fn an_ews_url_answering_404_sends_free_busy_back_to_autodiscover() {
    let emulator = start(None).await;
    let live = emulator.ready().ews_url.clone();
    // The first answer names the stub itself, which has no EWS (404).
    let stub = autodiscover_stub(vec![format!("{STUB}/EWS/Exchange.asmx"), live.clone()]).await;
    let source = impatient_source(discovering_config(&emulator, &stub));
    let (start, end) = window();
    let busy = source
        .free_busy_batch(&[address("bob@contoso.example")], start, end)
        .await
        .unwrap();
    assert_eq!(
        busy[0].busy.as_ref().unwrap(),
        &vec![(
            "2026-06-01T10:00:00Z".parse().unwrap(),
            "2026-06-01T11:00:00Z".parse().unwrap(),
            ShowAs::Busy
        )]
    );
    assert_eq!(stub.asked(), 2);
    assert_eq!(
        stub.other_requests(),
        1,
        "a 404 is not retried at the same URL"
    );
    assert_eq!(source.ews_url().await.unwrap().as_str(), live);
}

#[tokio::test]
async fn a_load_balancer_answering_503_is_retried_and_then_autodiscover_is_asked_again() {
    let emulator = start(None).await;
    let live = emulator.ready().ews_url.clone();
    let stub =
        autodiscover_stub(vec![format!("{STUB}/down/EWS/Exchange.asmx"), live.clone()]).await;
    let source = impatient_source(discovering_config(&emulator, &stub));
    let resolved = source
        .resolve_names(&["bob@contoso.example".to_string()])
        .await
        .unwrap();
    assert_eq!(resolved.as_str(), "bob@contoso.example");
    assert_eq!(
        stub.other_requests(),
        6,
        "a 5xx page is retried like a network failure first"
    );
    assert_eq!(stub.asked(), 2);
}

#[tokio::test]
async fn exchange_being_busy_does_not_send_calbridge_back_to_autodiscover() {
    let emulator = start(Some(FaultSettings {
        ews_server_busy_rate: 1.0,
        ews_back_off_milliseconds: 5,
        ..FaultSettings::default()
    }))
    .await;
    let stub = autodiscover_stub(vec![emulator.ready().ews_url.clone()]).await;
    let source = impatient_source(discovering_config(&emulator, &stub));
    let (start, end) = window();
    let error = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert!(matches!(error, EwsError::ServerBusy { .. }), "{error}");
    assert!(counter(&emulator, "faults.ews_server_busy") > 1);
    assert_eq!(stub.asked(), 1, "only the first Autodiscover");
}

#[tokio::test]
async fn a_dead_configured_ews_url_is_named_and_autodiscover_is_not_asked() {
    let emulator = start(None).await;
    let dead_server = dead_ews();
    let dead = dead_server.url.clone();
    // Autodiscover would name the live server, so asking it would hide the failure.
    let stub = autodiscover_stub(vec![emulator.ready().ews_url.clone()]).await;
    let mut config = discovering_config(&emulator, &stub);
    config.ews_url = Some(dead.clone());
    let source = impatient_source(config);
    let (start, end) = window();
    let error = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert!(matches!(error, EwsError::Network { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot reach {dead}")),
        "{message}"
    );
    assert!(message.contains("configured ews_url"), "{message}");
    assert_eq!(stub.asked(), 0);
    assert!(source.discovered().await.is_none());
}

#[tokio::test]
async fn a_stream_opens_where_autodiscover_points_after_the_old_server_died() {
    let emulator = start(None).await;
    let ada = address("ada@contoso.example");
    let subscriber = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let id = subscriber.subscribe(&ada).await.unwrap();
    let dead_server = dead_ews();
    let dead = dead_server.url.clone();
    let live = emulator.ready().ews_url.clone();
    let stub = autodiscover_stub(vec![dead, live.clone()]).await;
    let source = impatient_source(discovering_config(&emulator, &stub));
    let mut connection = source
        .stream(vec![(id, ada.clone())], Duration::from_secs(30 * 60))
        .unwrap();
    match next_event(&mut connection).await {
        StreamEvent::Connected { reopened: false } => {}
        other => panic!("expected the connection to open at {live}, got {other:?}"),
    }
    assert_eq!(stub.asked(), 2);
    create_event(&emulator, "ada@contoso.example", "Moved server").await;
    match next_event(&mut connection).await {
        StreamEvent::Changed(mailbox) => assert_eq!(mailbox, ada),
        other => panic!("expected a change of ada, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Bearer tokens (hybrid / Exchange Online) from the emulator's Entra token endpoint.

/// `auth = "bearer"` with client credentials as a configuration file gives them (the scope
/// left to its default, Exchange Online's `.default`), and the service mailbox as `user`.
fn bearer_config(emulator: &RunningEmulator, client_id: &str, secret: &str) -> EwsSourceConfig {
    let mut config = config_for(emulator, SERVICE_MAILBOX, "unused");
    config.password = None;
    config.auth = AuthMethod::Bearer;
    let bearer: BearerConfig = serde_json::from_value(serde_json::json!({
        "client_credentials": {
            "token_url": emulator.ready().token_url,
            "client_id": client_id,
            "client_secret": secret,
        }
    }))
    .unwrap();
    config.bearer = Some(bearer);
    config
}

#[tokio::test]
async fn an_app_with_full_access_as_app_resolves_reads_and_gets_free_busy_on_one_token() {
    let logs = LogCapture::start();
    let emulator = start(None).await;
    let source = source(bearer_config(&emulator, EWS_APP_ID, EWS_APP_SECRET));
    let (start, end) = window();

    let resolved = source
        .resolve_names(&["ada.lovelace@contoso.example".to_string()])
        .await
        .unwrap();
    assert_eq!(resolved.as_str(), "ada@contoso.example");

    // App-only tokens reach a mailbox by impersonating it, as Exchange Online requires.
    let mut appointments = source.read_window(&resolved, start, end).await.unwrap();
    appointments.sort_by_key(|appointment| appointment.time.instants(&jiff::tz::TimeZone::UTC).0);
    let subjects: Vec<&str> = appointments
        .iter()
        .map(|appointment| appointment.subject.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        subjects,
        [
            "Stand-up",
            "Doctor",
            "Cancelled review",
            "Conference",
            "Stand-up",
            "Stand-up"
        ]
    );
    assert_eq!(counter(&emulator, "ews.FindItem"), 1);

    let busy = source
        .free_busy_batch(
            &[
                address("bob@contoso.example"),
                address("ada@contoso.example"),
            ],
            start,
            end,
        )
        .await
        .unwrap();
    assert_eq!(busy[0].mailbox.as_str(), "bob@contoso.example");
    assert_eq!(
        busy[0].busy.as_ref().unwrap(),
        &vec![(
            "2026-06-01T10:00:00Z".parse().unwrap(),
            "2026-06-01T11:00:00Z".parse().unwrap(),
            ShowAs::Busy
        )]
    );
    let ada_busy = busy[1].busy.as_ref().unwrap();
    assert!(
        ada_busy.contains(&(
            "2026-06-01T14:00:00Z".parse().unwrap(),
            "2026-06-01T15:00:00Z".parse().unwrap(),
            ShowAs::Busy
        )),
        "{ada_busy:?}"
    );

    // One token served all three operations, and each impersonated a mailbox: the emulator
    // refuses an app-only token without ExchangeImpersonation, as Exchange Online does.
    assert_eq!(counter(&emulator, "identity.token"), 1);
    assert_eq!(counter(&emulator, "ews.auth_failures"), 0);
    assert_eq!(counter(&emulator, "ews.impersonation_header_missing"), 0);
    assert_eq!(counter(&emulator, "ews.ResolveNames"), 1);
    assert_eq!(counter(&emulator, "ews.GetUserAvailabilityRequest"), 1);
    // The protocol log shows the exchange but never the token or the secret.
    let lines = logs.lines().join("\n");
    assert!(lines.contains("EWS answer"), "nothing was logged: {lines}");
    assert!(!lines.contains("eyJ"), "a JWT in the log: {lines}");
    assert!(!lines.contains(EWS_APP_SECRET), "the secret in the log");
    // ResolveNames and GetUserAvailability act in the service mailbox and are routed there.
    let requests: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|line| line.contains("EWS request"))
        .collect();
    for operation in ["<m:ResolveNames", "<m:GetUserAvailabilityRequest"] {
        let request = requests
            .iter()
            .find(|line| line.contains(operation))
            .unwrap_or_else(|| panic!("no {operation} request logged: {requests:?}"));
        assert!(
            request.contains(&format!(
                "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{SERVICE_MAILBOX}</t:PrimarySmtpAddress>"
            )),
            "{request}"
        );
        assert!(
            request.contains(&format!("X-AnchorMailbox: {SERVICE_MAILBOX}")),
            "{request}"
        );
    }
}

#[tokio::test]
async fn an_app_only_token_streams_changes_impersonating_each_mailbox_and_the_groups_anchor() {
    let logs = LogCapture::start();
    let emulator = start(None).await;
    let source = source(bearer_config(&emulator, EWS_APP_ID, EWS_APP_SECRET));
    let ada = address("ada@contoso.example");
    let bob = address("bob@contoso.example");
    let ada_id = source.subscribe(&ada).await.unwrap();
    let bob_id = source.subscribe(&bob).await.unwrap();
    assert_eq!(emulator.ews_subscription_ids().len(), 2);
    let mut connection = source
        .stream(
            vec![(ada_id.clone(), ada.clone()), (bob_id, bob.clone())],
            Duration::from_secs(30 * 60),
        )
        .unwrap();
    match next_event(&mut connection).await {
        StreamEvent::Connected { reopened: false } => {}
        other => panic!("expected the stream to open, got {other:?}"),
    }
    create_event(&emulator, "bob@contoso.example", "Walk-in").await;
    match next_event(&mut connection).await {
        StreamEvent::Changed(mailbox) => assert_eq!(mailbox, bob),
        other => panic!("expected a change of bob, got {other:?}"),
    }
    drop(connection);
    source.unsubscribe(&ada, &ada_id).await.unwrap();
    assert_eq!(emulator.ews_subscription_ids().len(), 1);
    assert_eq!(counter(&emulator, "ews.impersonation_header_missing"), 0);
    assert_eq!(counter(&emulator, "ews.streaming_connections"), 1);
    // The group's connection acts in its first subscription's mailbox.
    let stream_request = logs
        .lines()
        .into_iter()
        .find(|line| line.contains("EWS request") && line.contains("<m:GetStreamingEvents>"))
        .expect("the GetStreamingEvents request is logged");
    assert!(
        stream_request.contains("<t:PrimarySmtpAddress>ada@contoso.example</t:PrimarySmtpAddress>"),
        "{stream_request}"
    );
    assert!(
        stream_request.contains("X-AnchorMailbox: ada@contoso.example"),
        "{stream_request}"
    );
}

#[tokio::test]
async fn an_app_only_token_with_a_user_that_has_no_mailbox_names_the_user_setting() {
    let emulator = start(None).await;
    // svc@contoso.example is an on-premises account without a mailbox.
    let mut config = bearer_config(&emulator, EWS_APP_ID, EWS_APP_SECRET);
    config.user = SERVICE.to_string();
    let source = source(config);
    let (start, end) = window();
    let error = source
        .resolve_names(&["ada@contoso.example".to_string()])
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, EwsError::Config(_)), "{message}");
    assert!(message.contains(&format!("user '{SERVICE}'")), "{message}");
    assert!(message.contains("may impersonate"), "{message}");
    let error = source
        .free_busy_batch(&[address("bob@contoso.example")], start, end)
        .await
        .unwrap_err();
    assert!(matches!(error, EwsError::Config(_)), "{error}");
    // A mailbox's own read impersonates that mailbox, so it does not depend on `user`.
    let appointments = source
        .read_window(&address("bob@contoso.example"), start, end)
        .await
        .unwrap();
    assert_eq!(appointments.len(), 1);
}

#[tokio::test]
async fn bearer_with_delegate_access_is_refused_before_anything_is_sent() {
    let emulator = start(None).await;
    let mut config = bearer_config(&emulator, EWS_APP_ID, EWS_APP_SECRET);
    config.access = MailboxAccess::Delegate;
    let error = EwsSource::new(config).map(|_| ()).unwrap_err().to_string();
    assert!(error.contains("auth = \"bearer\""), "{error}");
    assert!(error.contains("access = \"delegate\""), "{error}");
    assert_eq!(counter(&emulator, "identity.token"), 0);
}

#[tokio::test]
async fn a_wrong_client_secret_names_the_app_and_entras_answer_and_is_not_retried_at_once() {
    let logs = LogCapture::start();
    let emulator = start(None).await;
    let wrong = "not-the-Secret-value";
    let source = source(bearer_config(&emulator, EWS_APP_ID, wrong));
    let (start, end) = window();
    let ada = address("ada@contoso.example");

    let error = source.read_window(&ada, start, end).await.unwrap_err();
    assert!(error.is_credential_error(), "{error}");
    assert_eq!(error.retry_after(), Some(Duration::from_secs(60)));
    let message = error.to_string();
    assert!(message.contains(EWS_APP_ID), "{message}");
    assert!(message.contains("Entra ID refused"), "{message}");
    assert!(
        message.contains("AADSTS7000215: Invalid client secret provided"),
        "{message}"
    );
    assert!(!message.contains(wrong), "{message}");
    assert_eq!(counter(&emulator, "identity.token"), 1);
    assert_eq!(counter(&emulator, "identity.token_errors"), 1);
    assert_eq!(counter(&emulator, "ews.requests"), 0);

    // The credential back-off: no token request for the next reads.
    for _ in 0..5 {
        let error = source.read_window(&ada, start, end).await.unwrap_err();
        assert!(error.is_credential_error(), "{error}");
    }
    let error = source
        .resolve_names(&["bob@contoso.example".to_string()])
        .await
        .unwrap_err();
    assert!(error.is_credential_error(), "{error}");
    assert_eq!(counter(&emulator, "identity.token"), 1);
    let lines = logs.lines().join("\n");
    assert!(lines.contains("refused"), "{lines}");
    assert!(!lines.contains(wrong), "the secret in the log: {lines}");
}

#[tokio::test]
async fn an_app_without_full_access_as_app_is_told_it_needs_that_permission() {
    let emulator = start(None).await;
    // This app holds Graph roles only.
    let source = source(bearer_config(&emulator, APP_ID, APP_SECRET));
    let (start, end) = window();
    let ada = address("ada@contoso.example");
    let error = source.read_window(&ada, start, end).await.unwrap_err();
    assert!(error.is_credential_error(), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("needs the full_access_as_app permission"),
        "{message}"
    );
    assert!(message.contains(APP_ID), "{message}");
    assert!(
        message.contains("lacks the full_access_as_app role"),
        "{message}"
    );
    assert!(!message.contains(APP_SECRET), "{message}");
    // The cached token, then one fresh token in case the first was stale; then no more.
    assert_eq!(counter(&emulator, "identity.token"), 2);
    assert_eq!(counter(&emulator, "ews.auth_failures"), 2);
    let error = source.read_window(&ada, start, end).await.unwrap_err();
    assert!(error.is_credential_error(), "{error}");
    assert_eq!(counter(&emulator, "identity.token"), 2);
    assert_eq!(counter(&emulator, "ews.auth_failures"), 2);
}

#[tokio::test]
async fn an_entra_outage_is_retried_later_without_the_credential_back_off() {
    let emulator = start(Some(FaultSettings {
        token_endpoint_outage: true,
        ..FaultSettings::default()
    }))
    .await;
    let source = impatient_source(bearer_config(&emulator, EWS_APP_ID, EWS_APP_SECRET));
    let (start, end) = window();
    let ada = address("ada@contoso.example");
    let error = source.read_window(&ada, start, end).await.unwrap_err();
    assert!(!error.is_credential_error(), "{error}");
    assert!(error.is_retryable(), "{error}");
    let message = error.to_string();
    assert!(message.contains("HTTP 503"), "{message}");
    assert!(message.contains(&emulator.ready().token_url), "{message}");
    assert!(counter(&emulator, "identity.token") > 1, "retried");
    // Entra is back: the next read gets a token and succeeds at once.
    emulator.set_faults(FaultSettings::default());
    let appointments = source.read_window(&ada, start, end).await.unwrap();
    assert_eq!(appointments.len(), 6);
}

#[tokio::test]
async fn a_stream_that_ends_before_exchange_says_anything_is_a_failure_not_a_close() {
    let emulator = start(None).await;
    let ada = address("ada@contoso.example");
    let subscriber = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let id = subscriber.subscribe(&ada).await.unwrap();
    let stub = autodiscover_stub(vec![format!("{STUB}/empty/EWS/Exchange.asmx")]).await;
    let source = impatient_source(discovering_config(&emulator, &stub));
    let mut connection = source
        .stream(vec![(id, ada)], Duration::from_secs(30 * 60))
        .unwrap();
    // A close would be re-opened at once, and again, as fast as the server answers; a
    // failure waits its back-off.
    match next_event(&mut connection).await {
        StreamEvent::Error(error) => {
            assert!(
                error
                    .to_string()
                    .contains("closed before Exchange answered"),
                "{error}"
            );
            assert!(error.is_retryable(), "{error}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(stub.other_requests(), 1);
}

#[tokio::test]
async fn an_iis_503_page_is_retried_and_then_reported_as_the_url_being_unavailable() {
    let emulator = start(Some(FaultSettings {
        server_error_rate: 1.0,
        ..FaultSettings::default()
    }))
    .await;
    let source = impatient_source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let (start, end) = window();
    let ada = address("ada@contoso.example");
    let error = source.read_window(&ada, start, end).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "cannot reach {}: HTTP 503",
            emulator.ready().ews_url
        )),
        "{message}"
    );
    assert_eq!(counter(&emulator, "faults.server_errors"), 6);
    // IIS serves again.
    emulator.set_faults(FaultSettings::default());
    let appointments = source.read_window(&ada, start, end).await.unwrap();
    assert_eq!(appointments.len(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_stream_refused_for_the_connection_limit_retries_backing_off_and_comes_up_when_a_slot_frees(
) {
    // Delegate access: every connection is the monitor account's, so with Exchange allowing
    // it one hanging connection the second group's is refused.
    let emulator = start(Some(FaultSettings {
        ews_hanging_connection_limit: 1,
        ..FaultSettings::default()
    }))
    .await;
    let mut config = config_for(&emulator, MONITOR, MONITOR_PASSWORD);
    config.access = MailboxAccess::Delegate;
    let source = source(config);
    let ada = address("ada@contoso.example");
    let first_id = source.subscribe(&ada).await.unwrap();
    let second_id = source.subscribe(&ada).await.unwrap();
    let mut first = source
        .stream(vec![(first_id, ada.clone())], Duration::from_secs(30 * 60))
        .unwrap();
    assert!(matches!(
        next_event(&mut first).await,
        StreamEvent::Connected { reopened: false }
    ));

    let opened_at = tokio::time::Instant::now();
    let mut second = source
        .stream(vec![(second_id, ada.clone())], Duration::from_secs(30 * 60))
        .unwrap();
    let mut refusals = Vec::new();
    for _ in 0..3 {
        match next_error_or_change(&mut second).await {
            StreamEvent::Error(error) => {
                assert!(error.is_connection_limit(), "{error}");
                assert!(error.is_retryable(), "{error}");
                let message = error.to_string();
                assert!(
                    message.starts_with(&format!(
                        "Exchange allows only so many concurrent streaming connections for '{MONITOR}' (ErrorExceededConnectionCount"
                    )),
                    "{message}"
                );
                refusals.push(opened_at.elapsed());
            }
            other => panic!("expected the connection limit, got {other:?}"),
        }
    }
    // Each refusal waits its doubling back-off before the next attempt: no tight loop.
    assert_eq!(
        refusals,
        [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_millis(1500)
        ]
    );
    assert_eq!(counter(&emulator, "ews.connections_refused"), 3);

    // The first group's connection ends (its owner drops it): the next attempt, 2 s after the
    // third refusal, is admitted and the second group's changes arrive on it.
    drop(first);
    emulator
        .wait_for_ews_streaming_connections(|open| open.is_empty())
        .await;
    match next_error_or_change(&mut second).await {
        StreamEvent::Connected { reopened: false } => {}
        other => panic!("expected the connection to come up, got {other:?}"),
    }
    assert_eq!(opened_at.elapsed(), Duration::from_millis(3500));
    assert_eq!(
        emulator.ews_streaming_connections(),
        [(MONITOR.to_string(), 1)].into_iter().collect()
    );
    create_event(&emulator, "ada@contoso.example", "After the slot freed").await;
    match next_error_or_change(&mut second).await {
        StreamEvent::Changed(mailbox) => assert_eq!(mailbox, ada),
        other => panic!("expected a change of ada, got {other:?}"),
    }
    // Every refusal was reported once, and nothing was refused after the slot freed.
    assert_eq!(counter(&emulator, "ews.connections_refused"), 3);
}

#[tokio::test]
async fn with_impersonation_each_groups_anchor_mailbox_has_its_own_connection_budget() {
    let emulator = start(Some(FaultSettings {
        ews_hanging_connection_limit: 1,
        ..FaultSettings::default()
    }))
    .await;
    let source = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let ada = address("ada@contoso.example");
    let bob = address("bob@contoso.example");
    let ada_id = source.subscribe(&ada).await.unwrap();
    let bob_id = source.subscribe(&bob).await.unwrap();
    let ada_again_id = source.subscribe(&ada).await.unwrap();
    // Two groups anchored at different mailboxes: one connection each, though Exchange
    // allows the service account's budgets a single one.
    let mut ada_group = source
        .stream(vec![(ada_id, ada.clone())], Duration::from_secs(30 * 60))
        .unwrap();
    let mut bob_group = source
        .stream(vec![(bob_id, bob.clone())], Duration::from_secs(30 * 60))
        .unwrap();
    for group in [&mut ada_group, &mut bob_group] {
        match next_event(group).await {
            StreamEvent::Connected { reopened: false } => {}
            other => panic!("expected the group's connection to open, got {other:?}"),
        }
    }
    assert_eq!(
        emulator.ews_streaming_connections(),
        [
            ("ada@contoso.example (impersonated)".to_string(), 1),
            ("bob@contoso.example (impersonated)".to_string(), 1),
        ]
        .into_iter()
        .collect()
    );
    // A third group anchored at ada again is charged to ada, and the refusal says so.
    let mut third = source
        .stream(
            vec![(ada_again_id, ada.clone())],
            Duration::from_secs(30 * 60),
        )
        .unwrap();
    match next_event(&mut third).await {
        StreamEvent::Error(error) => {
            assert!(error.is_connection_limit(), "{error}");
            assert!(
                error.to_string().contains(
                    "concurrent streaming connections for 'ada@contoso.example' (ErrorExceededConnectionCount"
                ),
                "{error}"
            );
        }
        other => panic!("expected the connection limit, got {other:?}"),
    }
    assert_eq!(counter(&emulator, "ews.connections_refused"), 1);
}
