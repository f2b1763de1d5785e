//! The HTTP API's limits (issue "Hardening"): the token is taken from the query only on the
//! live stream, every route has a body limit (the webhook what Graph sends), live streams are
//! capped, forged notifications are counted in `/metrics`, the validation echo is not sniffed,
//! readiness says what is wrong, and a blank or short API token never starts the service.

mod common;

use std::sync::Arc;
use std::time::Duration;

use calbridge::clock::ManualClock;
use calbridge_domain::Secret;
use common::*;
use m365_emulator::{Emulator, EmulatorConfig};
use serde_json::{json, Value};

struct Rig {
    _emulator: m365_emulator::RunningEmulator,
    running: calbridge::service::RunningService,
    http: reqwest::Client,
    base: String,
    _data: tempfile::TempDir,
}

async fn rig(max_streams: usize) -> Rig {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(6, 21))
        .await
        .expect("the emulator starts");
    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(emulator.ready(), data.path(), &public_url, None);
    config.api.max_streams = max_streams;
    let clock = ManualClock::new(whole_second(jiff::Timestamp::now()));
    let running = start_service(config, Arc::new(clock), listener).await;
    Rig {
        _emulator: emulator,
        base: format!("http://{}", running.address),
        running,
        http: calbridge_net::build_http_client(None).expect("an HTTP client"),
        _data: data,
    }
}

impl Rig {
    fn token(&self) -> String {
        self.running.api_token.expose().to_string()
    }

    async fn status_of(&self, request: reqwest::RequestBuilder) -> (u16, String) {
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Opens the live stream; the response is kept open by the caller.
    async fn open_stream(&self) -> reqwest::Response {
        self.http
            .get(format!("{}/api/v1/presence/stream", self.base))
            .bearer_auth(self.token())
            .send()
            .await
            .expect("the stream answers")
    }

    /// Sends only the head of a POST that announces `length` bytes, and returns the status
    /// line of the answer: the limit answers from the announced length, before any body is
    /// read (a client sending the body could see its connection closed under it instead).
    async fn announce_post(&self, path: &str, length: usize, token: Option<&str>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = self.running.address;
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let authorization = token
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n{authorization}Content-Length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
            .await
            .expect("an answer before the body")
            .expect("read");
        String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_taken_from_the_query_only_on_the_live_stream() {
    let rig = rig(8).await;
    let token = rig.token();
    let (status, body) = rig
        .status_of(
            rig.http
                .get(format!("{}/api/v1/users?access_token={token}", rig.base)),
        )
        .await;
    assert_eq!(status, 401, "a token in the query of /api/v1/users: {body}");
    let (status, _) = rig
        .status_of(
            rig.http
                .get(format!("{}/api/v1/users", rig.base))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(status, 200, "the same token as a header");
    let response = rig
        .http
        .get(format!(
            "{}/api/v1/presence/stream?access_token={token}",
            rig.base
        ))
        .send()
        .await
        .expect("the stream answers");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok()),
        Some("text/event-stream")
    );
    let (status, _) = rig
        .status_of(rig.http.get(format!(
            "{}/api/v1/presence/stream?access_token=wrong-token-of-some-length",
            rig.base
        )))
        .await;
    assert_eq!(status, 401, "a wrong token in the stream's query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_limited_per_route_and_forged_notifications_are_counted() {
    let rig = rig(8).await;
    let notifications = format!("{}/notifications/graph/{SOURCE}", rig.base);

    // What Graph sends: a batch of notifications, here with a clientState of someone else.
    let forged = |n: usize| {
        let value: Vec<Value> = (0..n)
            .map(|i| {
                json!({
                    "subscriptionId": format!("forged-{i}"),
                    "clientState": "not-ours",
                    "changeType": "updated",
                    "resource": "Users/x/Events/y",
                    "tenantId": "00000000-0000-0000-0000-000000000000",
                })
            })
            .collect();
        json!({ "value": value }).to_string()
    };
    let before = rig.metric("calbridge_notifications_rejected_total").await;
    for _ in 0..50 {
        let (status, body) = rig
            .status_of(
                rig.http
                    .post(&notifications)
                    .header("content-type", "application/json")
                    .body(forged(20)),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let after = rig.metric("calbridge_notifications_rejected_total").await;
    assert_eq!(
        after - before,
        1000.0,
        "every forged notification is counted"
    );

    // 1,500 notifications fit (about 250 bytes each here); 2 MB does not.
    let (status, body) = rig
        .status_of(
            rig.http
                .post(&notifications)
                .header("content-type", "application/json")
                .body(forged(1500)),
        )
        .await;
    assert_eq!(status, 202, "a large batch from Graph is taken: {body}");
    let path = format!("/notifications/graph/{SOURCE}");
    assert_eq!(
        rig.announce_post(&path, 2 * 1024 * 1024, None).await,
        "HTTP/1.1 413 Payload Too Large",
        "2 MB to the webhook"
    );
    assert_eq!(
        rig.announce_post("/api/v1/reload", 100 * 1024, Some(&rig.token()))
            .await,
        "HTTP/1.1 413 Payload Too Large",
        "100 KB to the reload, which takes no body"
    );

    // The validation echo is text that a browser must not take for HTML.
    let response = rig
        .http
        .post(format!(
            "{notifications}?validationToken=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        ))
        .send()
        .await
        .expect("the echo answers");
    assert_eq!(response.status().as_u16(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(header("content-type").as_deref(), Some("text/plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_capped_and_a_closed_one_frees_its_place() {
    let rig = rig(2).await;
    let first = rig.open_stream().await;
    let second = rig.open_stream().await;
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(second.status().as_u16(), 200);
    // Both streams hold a connection, and so does the request for the metrics.
    assert!(rig.metric("calbridge_http_connections").await >= 3.0);
    let third = rig.open_stream().await;
    assert_eq!(third.status().as_u16(), 503);
    let body = third.text().await.unwrap_or_default();
    assert!(body.contains("max_streams"), "{body}");
    drop(first);
    // The server notices the closed connection when it next writes to it (a keep-alive
    // comment at the latest), so the place comes free soon, not at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let again = rig.open_stream().await;
        if again.status().as_u16() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream's place did not come free within 40 s"
        );
        drop(again);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_ready_after_the_first_sync_and_health_stays_liveness() {
    let rig = rig(8).await;
    let (status, body) = rig
        .status_of(rig.http.get(format!("{}/readyz", rig.base)))
        .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["problems"], json!([]));
    assert!(body["people"].as_u64().unwrap_or(0) > 0, "{body}");
    let (status, _) = rig
        .status_of(rig.http.get(format!("{}/healthz", rig.base)))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_makes_the_service_not_ready_and_says_why() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(4, 22))
        .await
        .expect("the emulator starts");
    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(emulator.ready(), data.path(), &public_url, None);
    for source in &mut config.sources {
        if let Some(graph) = &mut source.graph {
            graph.credential = calbridge_sources_graph::GraphCredential::ClientSecret(Secret::new(
                "a-wrong-secret".to_string(),
            ));
        }
    }
    let running = try_start_service(config, Arc::new(calbridge::clock::SystemClock), listener)
        .await
        .expect("the service starts, and keeps trying");
    let http = calbridge_net::build_http_client(None).expect("an HTTP client");
    let url = format!("http://{}/readyz", running.address);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let response = http.get(&url).send().await.expect("readyz answers");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON");
        let problems = body["problems"].to_string();
        if problems.contains("no access token:") {
            assert_eq!(status, 503, "{body}");
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never named the failing token: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["status"], "not_ready");
    let problems = body["problems"].to_string();
    assert!(problems.contains(&format!("source {SOURCE}")), "{problems}");
    assert!(!problems.contains("a-wrong-secret"), "{problems}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_or_short_api_token_never_starts_the_service() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(2, 23))
        .await
        .expect("the emulator starts");
    for (token, expected) in [
        ("", "api.token is empty"),
        ("   ", "api.token is empty"),
        ("short-token", "api.token is too short (11 characters)"),
        (" sixteen-or-more-characters ", "white space"),
    ] {
        let data = tempfile::tempdir().expect("temp dir");
        let (listener, public_url) = listen(0).await;
        let mut config = config_for(emulator.ready(), data.path(), &public_url, None);
        config.api.token = Some(Secret::new(token.to_string()));
        let error = match try_start_service(
            config,
            Arc::new(calbridge::clock::SystemClock),
            listener,
        )
        .await
        {
            Ok(_) => panic!("the service started with api.token = {token:?}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(expected), "{token:?}: {error}");
    }
}
