//! The cap on a webhook receiver's answer: a receiver that accepts an event (2xx) and then
//! sends a body that never ends has the event counted as delivered once; the read stops at
//! 64 KiB and the connection is dropped, instead of reading until the request timeout.

#[path = "../../net/tests/support/answer_server.rs"]
mod answer_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use answer_server::{Answer, AnswerServer};
use calbridge_domain::{MailboxAddress, SourceId};
use calbridge_publish_webhook::{
    PresenceEvent, WebhookConfig, WebhookPublisher, RECEIVER_ANSWER_CAP,
};
use calbridge_store::{PersonKey, SecretKey, SqliteStore, Store};
use jiff::Timestamp;
use tokio::sync::oneshot;

const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_to_an_accepted_event_is_cut_at_the_cap_and_the_event_counts_once() {
    assert_eq!(RECEIVER_ANSWER_CAP, 64 * 1024);
    let server = AnswerServer::start(|_| Answer::Endless).await;
    // A timeout of ten minutes: if the body were read to the end, the test would not pass
    // within its patience.
    let config: WebhookConfig = toml::from_str(&format!(
        r#"
        name = "endless"
        url = "{}/hook?key=RECEIVER-KEY"
        secret = "shared-webhook-secret-for-tests"
        timeout_seconds = 600
        first_backoff_seconds = 0.01
        max_backoff_seconds = 0.1
        "#,
        server.base_url
    ))
    .expect("the webhook config parses");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open_in_memory(SecretKey::generate())
            .await
            .expect("an in-memory store"),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let publisher = WebhookPublisher::start(vec![config], store, async move {
        let _ = stopped.await;
    })
    .expect("the publisher starts");
    let decided_at = Timestamp::from_second(1_767_261_600).expect("a time");
    publisher
        .record(&PresenceEvent {
            person: PersonKey::new(
                SourceId("contoso".to_string()),
                MailboxAddress::parse("ann@example.com").expect("an address"),
            ),
            activity: "busy".to_string(),
            note: "In a meeting".to_string(),
            until: None,
            decided_at,
        })
        .await
        .expect("the change is recorded");

    let written = tokio::time::timeout(PATIENCE, server.streamed_answer_ended())
        .await
        .expect("the publisher hangs up on the endless answer");
    assert!(written < 64 * 1024 * 1024, "{written} bytes were written");

    let started = Instant::now();
    let status = loop {
        let status = publisher
            .status()
            .await
            .expect("status")
            .into_iter()
            .next()
            .expect("one endpoint");
        if status.delivered_total > 0 || started.elapsed() > PATIENCE {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(status.delivered_total, 1, "{status:?}");
    assert_eq!(status.consecutive_failures, 0, "{status:?}");
    assert_eq!(server.requests(), 1, "the accepted event is not sent again");
    let _ = stop.send(());
}
