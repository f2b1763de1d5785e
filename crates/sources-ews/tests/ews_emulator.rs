//! The EWS source against the in-process emulator: NTLM and Basic, impersonation and
//! delegate access, Autodiscover through the seed's order, name resolution, streaming,
//! `ErrorServerBusy` storms and a wrong password.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use calbridge_domain::{
    AppointmentStatus, AppointmentTime, MailboxAddress, Secret, Sensitivity, ShowAs,
};
use calbridge_sources_ews::{
    AuthMethod, EwsError, EwsSource, EwsSourceConfig, MailboxAccess, StreamEvent,
};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use m365_emulator::{Clock, Emulator, EmulatorConfig, FaultSettings, RunningEmulator, Scenario};

const SERVICE: &str = "svc@contoso.example";
const SERVICE_PASSWORD: &str = "svc-Passw0rd";
const MONITOR: &str = "monitor@contoso.example";
const MONITOR_PASSWORD: &str = "monitor-Passw0rd";
const APP_ID: &str = "22222222-2222-4222-8222-222222222222";
const APP_SECRET: &str = "app-secret";
const NOW: &str = "2026-06-01T08:00:00Z";

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
aliases = ["ada.lovelace@contoso.example"]

[[users]]
upn = "bob@contoso.example"
display_name = "Bob Builder"

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
    let mut config = EmulatorConfig::scenario(scenario());
    config.clock = Clock::manual(NOW.parse().unwrap());
    config.faults = faults;
    match Emulator::start(config).await {
        Ok(emulator) => emulator,
        Err(error) => panic!("emulator did not start: {error}"),
    }
}

fn config_for(emulator: &RunningEmulator, user: &str, password: &str) -> EwsSourceConfig {
    let mut config = EwsSourceConfig::new(user, Secret::new(password));
    config.ews_url = Some(emulator.ready().ews_url.clone());
    config.extra_root_ca = Some(emulator.ready().ca_cert.clone());
    config.protocol_log = true;
    config
}

fn source(config: EwsSourceConfig) -> Arc<EwsSource> {
    match EwsSource::new(config) {
        Ok(source) => Arc::new(source),
        Err(error) => panic!("source: {error}"),
    }
}

fn address(text: &str) -> MailboxAddress {
    MailboxAddress::parse(text).unwrap()
}

fn window() -> (Timestamp, Timestamp) {
    (
        "2026-06-01T00:00:00Z".parse().unwrap(),
        "2026-06-04T00:00:00Z".parse().unwrap(),
    )
}

fn counter(emulator: &RunningEmulator, kind: &str) -> u64 {
    emulator.counters().by_kind.get(kind).copied().unwrap_or(0)
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

fn port_of(url: &str) -> String {
    url.rsplit(':').next().unwrap_or_default().to_string()
}

/// Maps the virtual host names to the emulator's https and http ports.
fn virtual_hosts(emulator: &RunningEmulator) -> HashMap<String, SocketAddr> {
    let https_port = port_of(&emulator.ready().base_url);
    let http_port = port_of(emulator.ready().http_url.as_deref().unwrap());
    let mut resolve = HashMap::new();
    for host in [
        "autodiscover.contoso.example",
        "contoso.example",
        "mail.contoso.example",
        "legacy.example",
    ] {
        resolve.insert(
            format!("{host}:443"),
            format!("127.0.0.1:{https_port}").parse().unwrap(),
        );
        resolve.insert(
            format!("{host}:80"),
            format!("127.0.0.1:{http_port}").parse().unwrap(),
        );
    }
    resolve
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

async fn https(
    ready: &m365_emulator::ReadyInfo,
    method: &str,
    url: &str,
    content_type: &str,
    token: Option<&str>,
    body: String,
) -> (u16, String) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(&ready.ca_cert).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let uri: http::Uri = url.parse().unwrap();
    let host = uri.host().unwrap().to_string();
    let port = uri.port_u16().unwrap();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(
            rustls_pki_types::ServerName::try_from(host.clone()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri.path())
        .header("host", format!("{host}:{port}"))
        .header("content-type", content_type);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Full::new(bytes::Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn next_event(connection: &mut calbridge_sources_ews::StreamingConnection) -> StreamEvent {
    match tokio::time::timeout(Duration::from_secs(10), connection.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the streaming task ended"),
        Err(_) => panic!("no streaming event within 10 s"),
    }
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
    let faults = FaultSettings {
        ews_server_busy_rate: 0.5,
        ews_back_off_milliseconds: 20,
        ..FaultSettings::default()
    };
    let emulator = start(Some(faults)).await;
    let source = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let (start, end) = window();
    for _ in 0..8 {
        let appointments = source
            .read_window(&address("ada@contoso.example"), start, end)
            .await
            .unwrap();
        assert_eq!(appointments.len(), 6);
    }
    assert!(counter(&emulator, "faults.ews_server_busy") > 0);
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
