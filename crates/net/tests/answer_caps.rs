//! The cap on answers read through `calbridge_net::body`, against a server that sends too much:
//! a `Content-Length` beyond the cap, or a chunked body that never ends. The read stops, the
//! error names the cap and the URL (without its query), and the server sees the client hang up.

mod support;

use std::sync::Arc;
use std::time::Duration;

use calbridge_domain::Secret;
use calbridge_net::body::{read_capped, BodyError, TOKEN_ANSWER_CAP};
use calbridge_net::clock::SystemClock;
use calbridge_net::entra::{AppCredential, AuthError, TokenProvider};
use support::answer_server::{Answer, AnswerServer};

/// Long enough for any machine; a client that reads an endless body on never gets there.
const PATIENCE: Duration = Duration::from_secs(60);

fn client() -> reqwest::Client {
    calbridge_net::build_http_client(None).expect("calbridge's HTTP client")
}

#[tokio::test]
async fn an_endless_body_stops_at_the_cap_with_an_error_naming_cap_and_url() {
    let server = AnswerServer::start(|_| Answer::Endless).await;
    let url = format!("{}/v1.0/pages?$skiptoken=SECRET-TOKEN", server.base_url);
    let response = client().get(&url).send().await.expect("the head arrives");
    let read = tokio::time::timeout(PATIENCE, read_capped(response, 256 * 1024))
        .await
        .expect("the read stops at the cap");
    let error = read.expect_err("an endless body is refused");
    assert_eq!(
        error,
        BodyError::TooLarge {
            url: format!("{}/v1.0/pages", server.base_url),
            cap: 256 * 1024,
        }
    );
    let message = error.to_string();
    assert!(message.contains("larger than 256 KiB"), "{message}");
    assert!(!message.contains("SECRET-TOKEN"), "{message}");
    // The client hung up: the server's endless writer ended, having written little more than
    // the cap (the rest sat in socket buffers).
    let written = tokio::time::timeout(PATIENCE, server.streamed_answer_ended())
        .await
        .expect("the client hangs up");
    assert!(written < 64 * 1024 * 1024, "{written} bytes were written");
}

#[tokio::test]
async fn a_declared_length_beyond_the_cap_is_refused_before_reading() {
    let server = AnswerServer::start(|_| Answer::Declared(8 * 1024 * 1024 * 1024)).await;
    let response = client()
        .get(format!("{}/huge", server.base_url))
        .send()
        .await
        .expect("the head arrives");
    let error = read_capped(response, 1024 * 1024)
        .await
        .expect_err("8 GiB declared");
    assert!(matches!(error, BodyError::TooLarge { cap, .. } if cap == 1024 * 1024));
}

#[tokio::test]
async fn a_body_within_the_cap_is_read_whole() {
    let body = "x".repeat(1000);
    let answered = body.clone();
    let server = AnswerServer::start(move |_| Answer::json(200, &answered)).await;
    let response = client()
        .get(format!("{}/small", server.base_url))
        .send()
        .await
        .expect("an answer");
    let read = read_capped(response, 1000).await.expect("exactly the cap");
    assert_eq!(read, body.as_bytes());
}

#[tokio::test]
async fn an_endless_token_answer_is_a_network_error_naming_the_cap_and_not_the_secret() {
    let server = AnswerServer::start(|_| Answer::Endless).await;
    let token_url = format!("{}/tenant/oauth2/v2.0/token", server.base_url);
    let tokens = TokenProvider::new(
        &token_url,
        "https://graph.example/.default",
        "tenant",
        "client-id",
        AppCredential::ClientSecret(Secret::new("the-client-secret-value")),
        Arc::new(SystemClock),
    );
    let error = tokio::time::timeout(PATIENCE, tokens.access_token(&client()))
        .await
        .expect("the token read stops at the cap")
        .expect_err("no token from an endless answer");
    let message = error.to_string();
    assert!(matches!(error, AuthError::Network { .. }), "{message}");
    assert!(message.contains("larger than 1 MiB"), "{message}");
    assert!(message.contains(&token_url), "{message}");
    assert!(!message.contains("the-client-secret-value"), "{message}");
    let written = tokio::time::timeout(PATIENCE, server.streamed_answer_ended())
        .await
        .expect("the client hangs up");
    assert!(
        written < 64 * TOKEN_ANSWER_CAP as u64,
        "{written} bytes were written"
    );
}
