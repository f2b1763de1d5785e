//! The cap on Graph's answers: every body the request pipeline reads (a page, a `$batch`
//! answer, a delta page) stops at `GraphHttp`'s cap. Against a plain-http server that sends a
//! chunked body that never ends, the request fails once, with an error naming the cap and the
//! URL without its query (which carries skip and delta tokens), and is not tried again.

#[path = "../../net/tests/support/answer_server.rs"]
mod answer_server;

use std::sync::Arc;
use std::time::Duration;

use answer_server::{Answer, AnswerServer};
use calbridge_domain::Secret;
use calbridge_net::clock::SystemClock;
use calbridge_net::entra::{AppCredential, TokenProvider};
use calbridge_sources_graph::http::{GraphHttp, GraphRequest, GRAPH_ANSWER_CAP};
use calbridge_sources_graph::{GraphError, RetryPolicy, SourceOptions};

const PATIENCE: Duration = Duration::from_secs(60);
const TOKEN: &str = r#"{"token_type":"Bearer","expires_in":3599,"access_token":"eyJ0.test.token"}"#;

async fn graph_behind(
    answer: impl Fn(&str) -> Answer + Send + Sync + 'static,
) -> (AnswerServer, GraphHttp) {
    let server = AnswerServer::start(move |target| {
        if target.contains("/oauth2/v2.0/token") {
            Answer::json(200, TOKEN)
        } else {
            answer(target)
        }
    })
    .await;
    let tokens = TokenProvider::new(
        &format!("{}/tenant/oauth2/v2.0/token", server.base_url),
        "https://graph.example/.default",
        "tenant",
        "client-id",
        AppCredential::ClientSecret(Secret::new("client-secret")),
        Arc::new(SystemClock),
    );
    let client = calbridge_net::build_http_client(None).expect("calbridge's HTTP client");
    let http = GraphHttp::new(client, Arc::new(tokens), 4, 4, RetryPolicy::default())
        .with_max_answer_bytes(256 * 1024);
    (server, http)
}

#[test]
fn graph_answers_are_capped_at_64_mib_unless_told_otherwise() {
    assert_eq!(GRAPH_ANSWER_CAP, 64 * 1024 * 1024);
    assert_eq!(SourceOptions::default().max_answer_bytes, GRAPH_ANSWER_CAP);
}

#[tokio::test]
async fn an_endless_delta_page_fails_once_naming_the_cap_and_the_url_without_its_token() {
    let (server, http) = graph_behind(|_| Answer::Endless).await;
    let url = format!(
        "{}/v1.0/users/u1/calendarView/delta?$deltatoken=SECRET-DELTA-TOKEN",
        server.base_url
    );
    let request = GraphRequest::get(url, "calendar changes of u1".to_string());
    let error = tokio::time::timeout(PATIENCE, http.send(&request, Some("u1")))
        .await
        .expect("the read stops at the cap")
        .expect_err("an endless page is refused");
    let message = error.to_string();
    assert!(
        matches!(error, GraphError::AnswerTooLarge { .. }),
        "{message}"
    );
    assert!(!error.is_retryable(), "{message}");
    assert!(message.contains("calendar changes of u1"), "{message}");
    assert!(message.contains("larger than 256 KiB"), "{message}");
    assert!(
        message.contains(&format!(
            "{}/v1.0/users/u1/calendarView/delta",
            server.base_url
        )),
        "{message}"
    );
    assert!(!message.contains("SECRET-DELTA-TOKEN"), "{message}");
    let written = tokio::time::timeout(PATIENCE, server.streamed_answer_ended())
        .await
        .expect("the client hangs up");
    assert!(written < 64 * 1024 * 1024, "{written} bytes were written");
    // One token request and one Graph request: an oversized answer is not asked again.
    assert_eq!(server.requests(), 2);
    assert_eq!(http.counters().retries, 0);
}

#[tokio::test]
async fn a_batch_answer_declaring_more_than_the_cap_is_refused_unread() {
    let (server, http) = graph_behind(|_| Answer::Declared(1024 * 1024 * 1024)).await;
    let request = GraphRequest::get(
        format!("{}/v1.0/$batch", server.base_url),
        "$batch of 20 requests".to_string(),
    )
    .json(reqwest::Method::POST, serde_json::json!({"requests": []}));
    let error = http.send(&request, None).await.expect_err("1 GiB declared");
    assert!(
        matches!(&error, GraphError::AnswerTooLarge { what, .. } if what == "$batch of 20 requests"),
        "{error}"
    );
}

#[tokio::test]
async fn an_answer_within_the_cap_is_read_whole() {
    let page = format!(r#"{{"value":[],"padding":"{}"}}"#, "x".repeat(200 * 1024));
    let answered = page.clone();
    let (server, http) = graph_behind(move |_| Answer::json(200, &answered)).await;
    let request = GraphRequest::get(format!("{}/v1.0/users", server.base_url), "users".into());
    let response = http
        .send(&request, None)
        .await
        .expect("200 KiB is within 256 KiB");
    assert_eq!(response.body, page.as_bytes());
}
