//! The service's webhooks end to end: every presence decision reaches a receiver as signed
//! JSON, in outbox order, also after the receiver refused the first deliveries. Delivery
//! semantics (modes, restarts) are proven in `crates/publish-webhook/tests`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use calbridge::clock::ManualClock;
use common::*;
use m365_emulator::{Emulator, EmulatorConfig};

struct Receiver {
    refuse_first: usize,
    seen: AtomicUsize,
    accepted: Mutex<Vec<serde_json::Value>>,
}

fn verify(secret: &str, body: &[u8], signature: &str) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(bytes) = (0..hex.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(hex.get(index..index + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    ring::hmac::verify(&key, body, &bytes).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_reaches_the_webhook_signed_and_in_order_after_refusals() {
    init_logs();
    let secret = "webhook-test-secret";
    let receiver = Arc::new(Receiver {
        refuse_first: 3,
        seen: AtomicUsize::new(0),
        accepted: Mutex::new(Vec::new()),
    });
    let state = receiver.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                if state.seen.fetch_add(1, Ordering::SeqCst) < state.refuse_first {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let signature = headers
                    .get("x-calbridge-signature")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("");
                assert!(verify(secret, &body, signature), "the signature verifies");
                let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
                state.accepted.lock().expect("lock").push(json);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_url = format!(
        "http://{}/hook",
        hook_listener.local_addr().expect("address")
    );
    tokio::spawn(async move {
        let _ = axum::serve(hook_listener, app).await;
    });

    let emulator = Emulator::start(EmulatorConfig::generated(10, 9))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data_dir.path(), &public_url, None);
    let webhook: calbridge_publish_webhook::WebhookConfig = toml::from_str(&format!(
        "name = \"crm\"\nurl = \"{hook_url}\"\nsecret = \"{secret}\"\nfirst_backoff_seconds = 0.05\nmax_backoff_seconds = 0.2\n"
    ))
    .expect("webhook config");
    config.publish.webhooks = vec![webhook];
    // The service's clock stands still, so that no meeting starts or ends between the
    // decisions read below and the deliveries compared with them.
    let clock = ManualClock::new(whole_second(jiff::Timestamp::now()));
    let running = start_service(config, Arc::new(clock), listener).await;

    let people = running.hub.people();
    let expected: HashMap<String, String> = people
        .iter()
        .filter_map(|person| {
            let (decision, _) = running.hub.decision(person)?;
            Some((person.address.to_string(), decision.note.clone()))
        })
        .collect();
    let accepted = wait_for(
        "every person's change at the webhook",
        Duration::from_secs(20),
        || {
            let accepted = receiver.accepted.lock().expect("lock").clone();
            let addresses: std::collections::HashSet<String> = accepted
                .iter()
                .filter_map(|event| event["address"].as_str().map(str::to_string))
                .collect();
            expected
                .keys()
                .all(|address| addresses.contains(address))
                .then_some(accepted)
        },
    )
    .await;
    assert!(
        receiver.seen.load(Ordering::SeqCst) > 3,
        "the refused deliveries were retried"
    );
    let ids: Vec<i64> = accepted
        .iter()
        .filter_map(|event| event["id"].as_i64())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "each event once, in outbox order");
    for event in &accepted {
        assert_eq!(event["type"], "presence.changed");
        let address = event["address"].as_str().expect("address");
        if let Some(note) = expected.get(address) {
            let latest_for_person = accepted
                .iter()
                .rev()
                .find(|other| other["address"] == address)
                .expect("an event for the person");
            assert_eq!(latest_for_person["note"].as_str(), Some(note.as_str()));
        }
    }
    running.shutdown().await;
    emulator.shutdown().await;
}
