//! Exchange hardened and Exchange impersonated: NTLM logons under Extended Protection for
//! Authentication (the channel binding calbridge sends is accepted where `require` is set, and
//! refused behind a TLS-terminating load balancer, which `calbridge check`'s probe tells apart
//! from a wrong password), and answers larger than calbridge reads (SOAP, a streaming
//! envelope, Autodiscover), which end in an error naming the limit and the URL instead of
//! being read whole.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use calbridge_sources_ews::{
    EwsError, LogonProbe, StreamEvent, AUTODISCOVER_ANSWER_LIMIT, SOAP_ANSWER_LIMIT,
    STREAMING_ENVELOPE_LIMIT,
};
use jiff::Timestamp;
use m365_emulator::{
    Clock, Emulator, EmulatorConfig, ExtendedProtection, FaultSettings, RunningEmulator, Scenario,
};
use support::emulator::counter;
use support::ews_source::{address, config_for, impatient_source, next_error_or_change, source};
use support::stub_server::{autodiscover_stub, autodiscover_stub_answering, StubAnswer, STUB};
use support::tracing_capture::install_log_capture;

const SERVICE: &str = "svc@contoso.example";
const SERVICE_PASSWORD: &str = "svc-Passw0rd";

fn scenario() -> Scenario {
    let text = format!(
        r#"
[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "calbridge"
client_id = "22222222-2222-4222-8222-222222222222"
roles = ["Calendars.ReadWrite"]
secrets = [{{ value = "app-secret" }}]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada Lovelace"

[[exchange.accounts]]
address = "{SERVICE}"
password = "{SERVICE_PASSWORD}"
impersonation = true

[[events]]
mailbox = "ada@contoso.example"
subject = "Stand-up"
start = "2026-06-01T09:00:00Z"
duration = "15m"
"#
    );
    match Scenario::from_toml_str(&text) {
        Ok(scenario) => scenario,
        Err(error) => panic!("scenario does not parse: {error}"),
    }
}

/// The emulator with Extended Protection as `protection` says, and a TLS-terminating load
/// balancer in front of it.
async fn start(protection: ExtendedProtection) -> RunningEmulator {
    install_log_capture();
    let mut config = EmulatorConfig::scenario(scenario());
    config.clock = Clock::manual("2026-06-01T08:00:00Z".parse().unwrap());
    config.faults = Some(FaultSettings {
        ews_extended_protection: protection,
        ..FaultSettings::default()
    });
    config.tls_offload_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
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

fn behind_the_load_balancer(emulator: &RunningEmulator) -> String {
    format!(
        "{}/EWS/Exchange.asmx",
        emulator.ready().tls_offload_url.as_deref().unwrap()
    )
}

#[tokio::test]
async fn ntlm_logons_carry_the_channel_binding_that_extended_protection_requires() {
    let emulator = start(ExtendedProtection::Require).await;
    let source = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let (start, end) = window();
    let appointments = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap();
    assert_eq!(appointments.len(), 1);
    assert_eq!(counter(&emulator, "ews.auth_failures"), 0);
    assert_eq!(counter(&emulator, "ews.channel_binding_refusals"), 0);
    // The streaming connection logs on with its own binding too.
    let ada = address("ada@contoso.example");
    let id = source.subscribe(&ada).await.unwrap();
    let mut connection = source
        .stream(vec![(id, ada)], Duration::from_secs(60))
        .unwrap();
    match support::ews_source::next_event(&mut connection).await {
        StreamEvent::Connected { .. } => {}
        other => panic!("expected the stream to open, got {other:?}"),
    }
    assert_eq!(counter(&emulator, "ews.channel_binding_refusals"), 0);
}

#[tokio::test]
async fn behind_a_tls_terminating_load_balancer_require_refuses_the_logon_and_names_the_certificate(
) {
    let emulator = start(ExtendedProtection::Require).await;
    let mut config = config_for(&emulator, SERVICE, SERVICE_PASSWORD);
    config.ews_url = Some(behind_the_load_balancer(&emulator));
    let source = source(config);
    let (start, end) = window();
    let error = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap_err();
    let EwsError::Unauthorized { bound_to, .. } = &error else {
        panic!("expected a refused logon, got {error}");
    };
    let thumbprint = bound_to
        .clone()
        .expect("the certificate the logon was bound to");
    assert_eq!(thumbprint.len(), 40, "{thumbprint}");
    assert!(error.to_string().contains(&thumbprint), "{error}");
    assert!(!error.to_string().contains(SERVICE_PASSWORD));
    assert_eq!(counter(&emulator, "ews.channel_binding_refusals"), 1);
    // Without a binding `require` refuses too: the probe cannot tell this from a wrong password.
    assert_eq!(
        source.probe_ntlm_without_channel_binding().await.unwrap(),
        LogonProbe::Refused
    );
    assert_eq!(counter(&emulator, "ews.channel_binding_refusals"), 2);
}

#[tokio::test]
async fn behind_a_tls_terminating_load_balancer_allow_refuses_the_binding_and_the_probe_shows_it() {
    let emulator = start(ExtendedProtection::Allow).await;
    let mut config = config_for(&emulator, SERVICE, SERVICE_PASSWORD);
    config.ews_url = Some(behind_the_load_balancer(&emulator));
    let source = source(config);
    let (start, end) = window();
    let error = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert!(matches!(error, EwsError::Unauthorized { .. }), "{error}");
    assert_eq!(
        source.probe_ntlm_without_channel_binding().await.unwrap(),
        LogonProbe::Accepted
    );
    assert_eq!(counter(&emulator, "ews.channel_binding_refusals"), 1);

    // A wrong password is refused without a binding as well.
    let mut config = config_for(&emulator, SERVICE, "wrong-password");
    config.ews_url = Some(behind_the_load_balancer(&emulator));
    let wrong = self::source(config);
    assert!(wrong
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .is_err());
    assert_eq!(
        wrong.probe_ntlm_without_channel_binding().await.unwrap(),
        LogonProbe::Refused
    );
}

// ---------------------------------------------------------------------------------------
// Answers larger than calbridge reads.

fn assert_too_large(error: &EwsError, url_part: &str, limit_bytes: usize, shown: &str) {
    match error {
        EwsError::AnswerTooLarge {
            url,
            limit_bytes: limit,
            ..
        } => {
            assert!(url.contains(url_part), "{url}");
            assert_eq!(*limit, limit_bytes);
        }
        other => panic!("expected AnswerTooLarge, got {other}"),
    }
    let message = error.to_string();
    assert!(message.contains(shown), "{message}");
    assert!(message.contains(url_part), "{message}");
}

#[tokio::test]
async fn a_soap_answer_that_never_ends_is_cut_at_the_soap_limit() {
    let emulator = start(ExtendedProtection::None).await;
    let stub = autodiscover_stub(vec![format!("{STUB}/endless/EWS/Exchange.asmx")]).await;
    let mut config = config_for(&emulator, SERVICE, SERVICE_PASSWORD);
    config.ews_url = None;
    config.autodiscover_url = Some(stub.url.clone());
    let source = impatient_source(config);
    let (start, end) = window();
    let error = source
        .read_window(&address("ada@contoso.example"), start, end)
        .await
        .unwrap_err();
    assert_too_large(
        &error,
        "/endless/EWS/Exchange.asmx",
        SOAP_ANSWER_LIMIT.bytes,
        "32 MiB",
    );
    assert!(!error.is_retryable());
    // calbridge closed the connection instead of reading on: the endless answer ended.
    tokio::time::timeout(Duration::from_secs(30), stub.endless_answers_ended(1))
        .await
        .expect("the client stopped reading");
}

#[tokio::test]
async fn a_streaming_envelope_that_never_ends_is_cut_at_the_envelope_limit() {
    let emulator = start(ExtendedProtection::None).await;
    let ada = address("ada@contoso.example");
    let subscriber = source(config_for(&emulator, SERVICE, SERVICE_PASSWORD));
    let id = subscriber.subscribe(&ada).await.unwrap();
    let stub = autodiscover_stub(vec![format!("{STUB}/endless/EWS/Exchange.asmx")]).await;
    let mut config = config_for(&emulator, SERVICE, SERVICE_PASSWORD);
    config.ews_url = None;
    config.autodiscover_url = Some(stub.url.clone());
    let streaming = impatient_source(config);
    let mut connection = streaming
        .stream(vec![(id, ada)], Duration::from_secs(30 * 60))
        .unwrap();
    match next_error_or_change(&mut connection).await {
        StreamEvent::Error(error) => assert_too_large(
            &error,
            "/endless/EWS/Exchange.asmx",
            STREAMING_ENVELOPE_LIMIT,
            "4 MiB",
        ),
        other => panic!("expected an error, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(30), stub.endless_answers_ended(1))
        .await
        .expect("the client stopped reading");
}

#[tokio::test]
async fn an_autodiscover_answer_that_never_ends_is_cut_at_the_autodiscover_limit() {
    let emulator = start(ExtendedProtection::None).await;
    let stub = autodiscover_stub_answering(vec![StubAnswer::Endless]).await;
    let mut config = config_for(&emulator, SERVICE, SERVICE_PASSWORD);
    config.ews_url = None;
    config.autodiscover_url = Some(stub.url.clone());
    let source = impatient_source(config);
    let error = source.ews_url().await.unwrap_err();
    // Autodiscover names what each candidate answered.
    let message = error.to_string();
    assert!(matches!(error, EwsError::Autodiscover { .. }), "{message}");
    assert!(message.contains("1 MiB"), "{message}");
    assert!(message.contains(&stub.url), "{message}");
    assert_eq!(AUTODISCOVER_ANSWER_LIMIT.bytes, 1024 * 1024);
    tokio::time::timeout(Duration::from_secs(30), stub.endless_answers_ended(1))
        .await
        .expect("the client stopped reading");
}
