//! Black-box tests of the Graph source against the in-process Microsoft 365 emulator
//! (`crates/m365-emulator`), which shares no code with this crate.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use calbridge_domain::{MailboxAddress, Secret};
use calbridge_net::build_http_client;
use calbridge_sources_graph::{
    AuthError, Clock, DeltaCursor, DeltaOutcome, GraphCredential, GraphError, GraphSource,
    GraphSourceConfig, RenewOutcome, RetryPolicy, SourceOptions, SubjectFetch, SubscriptionRequest,
    SystemClock, TokenStatus,
};
use jiff::{SignedDuration, Timestamp};
use m365_emulator::{Emulator, EmulatorConfig, FaultSettings, RunningEmulator, Scenario};
use serde_json::json;

const SECRET: &str = "valid-secret-value~1";
const EXPIRED_SECRET: &str = "expired-secret-value~2";
const EVERYONE_GROUP_ID: &str = "0f2c7e51-9a4b-4c1d-8e3f-6b5a4d3c2b1a";
const CERTIFICATE_PEM: &str = include_str!("../../../crates/net/testdata/app-cert.pem");

/// A clock the test moves by hand, for token back-off.
#[derive(Default)]
struct ManualClock {
    offset_seconds: AtomicI64,
}

impl ManualClock {
    fn advance(&self, seconds: i64) {
        self.offset_seconds.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(SignedDuration::from_secs(
                self.offset_seconds.load(Ordering::SeqCst),
            ))
            .unwrap_or_else(|_| Timestamp::now())
    }
}

fn user_address(index: usize) -> String {
    format!("user{index:03}@contoso.example")
}

/// `n_users` people; person `i` has `i % 4` meetings starting at +1h, +2h, … (the last one
/// private), and person 0 also answers to an alias.
fn scenario(n_users: usize) -> Scenario {
    let users: Vec<serde_json::Value> = (0..n_users)
        .map(|index| {
            let mut user = json!({
                "upn": user_address(index),
                "display_name": format!("User {index}"),
            });
            if index == 0 {
                user["proxy_addresses"] = json!([
                    "SMTP:user000@contoso.example",
                    "smtp:alias.zero@contoso.example"
                ]);
            }
            user
        })
        .collect();
    let mut events = Vec::new();
    for index in 0..n_users {
        let count = index % 4;
        for meeting in 0..count {
            events.push(json!({
                "mailbox": user_address(index),
                "subject": format!("Meeting {index}-{meeting}"),
                "start": format!("+{}h", meeting + 1),
                "duration": "30m",
                "show_as": "busy",
                "sensitivity": if meeting + 1 == count { "private" } else { "normal" },
            }));
        }
    }
    serde_json::from_value(json!({
        "tenants": [{"name": "contoso", "domains": ["contoso.example"]}],
        "apps": [{
            "name": "calbridge",
            "tenant": "contoso",
            "roles": ["Calendars.ReadWrite", "User.Read.All", "Group.Read.All"],
            "secrets": [{"value": SECRET}, {"value": EXPIRED_SECRET, "expires": "-1d"}],
            "certificates": [{"pem": CERTIFICATE_PEM}],
        }],
        "users": users,
        "groups": [{"name": "everyone", "id": EVERYONE_GROUP_ID, "members": (0..n_users.min(30)).map(user_address).collect::<Vec<_>>()}],
        "events": events,
    }))
    .expect("the test scenario is valid JSON for the emulator")
}

async fn start(n_users: usize) -> RunningEmulator {
    let mut config = EmulatorConfig::scenario(scenario(n_users));
    config.faults = Some(FaultSettings::default());
    Emulator::start(config).await.expect("emulator starts")
}

fn config_for(emulator: &RunningEmulator, credential: GraphCredential) -> GraphSourceConfig {
    let ready = emulator.ready();
    let mut config = GraphSourceConfig::new(&ready.tenant_id, &ready.client_id, credential);
    config.authority_url = ready.base_url.clone();
    config.graph_url = ready.base_url.clone();
    config.token_scope = Some("https://graph.microsoft.com/.default".to_string());
    config.extra_root_ca = Some(ready.ca_cert.clone());
    config
}

fn fast_retries() -> SourceOptions {
    SourceOptions {
        retry: RetryPolicy {
            max_attempts: 8,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(2),
        },
        ..SourceOptions::default()
    }
}

fn source(emulator: &RunningEmulator) -> GraphSource {
    GraphSource::with_options(
        &config_for(emulator, GraphCredential::ClientSecret(Secret::new(SECRET))),
        Arc::new(SystemClock),
        fast_retries(),
    )
    .expect("source builds")
}

fn window() -> (Timestamp, Timestamp) {
    let now = Timestamp::now();
    (
        now - SignedDuration::from_hours(1),
        now + SignedDuration::from_hours(48),
    )
}

fn token_requests(emulator: &RunningEmulator) -> u64 {
    emulator
        .counters()
        .by_kind
        .get("identity.token")
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_by_secret_and_by_certificate_both_reach_graph() {
    let emulator = start(3).await;
    let by_secret = source(&emulator);
    let address = MailboxAddress::parse(&user_address(1)).unwrap();
    // Eight tasks asking at once share one token request (single flight).
    let mut concurrent = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let by_secret = by_secret.clone();
        let address = address.clone();
        concurrent.spawn(async move { by_secret.resolve_user(&address).await });
    }
    while let Some(joined) = concurrent.join_next().await {
        joined.unwrap().unwrap();
    }
    assert_eq!(token_requests(&emulator), 1);
    let user = by_secret.resolve_user(&address).await.unwrap();
    assert_eq!(user.primary_smtp, address);
    assert!(matches!(
        by_secret.token_status(),
        TokenStatus::Valid { .. }
    ));

    let key_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../net/testdata/app-key.pem");
    let certificate_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../net/testdata/app-cert.pem");
    let by_certificate = GraphSource::new(
        &config_for(
            &emulator,
            GraphCredential::Certificate {
                certificate_pem: certificate_path.into(),
                private_key_pem: key_path.into(),
            },
        ),
        Arc::new(SystemClock),
    )
    .unwrap();
    let same_user = by_certificate.resolve_user(&address).await.unwrap();
    assert_eq!(same_user.id, user.id);
    // One token each, reused for later requests.
    by_certificate.resolve_user(&address).await.unwrap();
    assert_eq!(token_requests(&emulator), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_classified_and_not_retried_in_a_tight_loop() {
    let emulator = start(2).await;
    let clock = Arc::new(ManualClock::default());
    let wrong = GraphSource::with_options(
        &config_for(
            &emulator,
            GraphCredential::ClientSecret(Secret::new("not-the-secret")),
        ),
        clock.clone(),
        fast_retries(),
    )
    .unwrap();
    let address = MailboxAddress::parse(&user_address(1)).unwrap();
    for _ in 0..20 {
        let error = wrong.resolve_user(&address).await.unwrap_err();
        match error {
            GraphError::Auth(auth) => {
                assert!(
                    matches!(*auth, AuthError::InvalidClientSecret { .. }),
                    "{auth}"
                );
                assert!(!auth.to_string().contains("not-the-secret"));
            }
            other => panic!("expected an auth error, got {other}"),
        }
    }
    assert_eq!(token_requests(&emulator), 1, "20 calls, one token request");
    match wrong.token_status() {
        TokenStatus::Failing { error, .. } => assert_eq!(error.aadsts_code(), Some(7000215)),
        other => panic!("expected failing, got {other:?}"),
    }
    // After the first back-off (60 s) one more attempt is made, then the back-off doubles.
    clock.advance(61);
    assert!(wrong.check_token().await.is_err());
    assert!(wrong.check_token().await.is_err());
    assert_eq!(token_requests(&emulator), 2);
    clock.advance(61);
    assert!(wrong.check_token().await.is_err());
    assert_eq!(token_requests(&emulator), 2, "second back-off is 120 s");

    let expired = GraphSource::new(
        &config_for(
            &emulator,
            GraphCredential::ClientSecret(Secret::new(EXPIRED_SECRET)),
        ),
        Arc::new(SystemClock),
    )
    .unwrap();
    let error = expired.check_token().await.unwrap_err();
    assert!(
        matches!(error, AuthError::ClientSecretExpired { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("Certificates & secrets"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_resolve_by_alias_and_groups_list_their_members() {
    let emulator = start(40).await;
    let source = source(&emulator);
    let alias = MailboxAddress::parse("Alias.Zero@contoso.example").unwrap();
    let user = source.resolve_user(&alias).await.unwrap();
    assert_eq!(user.primary_smtp.as_str(), "user000@contoso.example");
    let unknown = MailboxAddress::parse("nobody@contoso.example").unwrap();
    assert!(matches!(
        source.resolve_user(&unknown).await,
        Err(GraphError::NotFound { .. })
    ));

    let mut members: Vec<String> = source
        .group_members(EVERYONE_GROUP_ID)
        .await
        .unwrap()
        .into_iter()
        .map(|user| user.primary_smtp.to_string())
        .collect();
    members.sort();
    assert_eq!(members, (0..30).map(user_address).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_window_read_of_many_users_matches_the_calendars() {
    let n_users = 95;
    let emulator = start(n_users).await;
    let source = source(&emulator);
    let people: Vec<(usize, String)> = (0..n_users)
        .map(|index| (index, user_address(index)))
        .collect();
    let (start, end) = window();
    let results = source
        .read_windows(&people, start, end, SubjectFetch::Fetch)
        .await;
    assert_eq!(results.len(), n_users);
    for (index, result) in &results {
        let appointments = result.as_ref().unwrap();
        assert_eq!(appointments.len(), index % 4, "user {index}");
        let mut subjects: Vec<_> = appointments
            .iter()
            .map(|appointment| appointment.subject.clone().unwrap_or_default())
            .collect();
        subjects.sort();
        let expected: Vec<String> = (0..index % 4)
            .map(|meeting| format!("Meeting {index}-{meeting}"))
            .collect();
        assert_eq!(subjects, expected);
    }
    let counters = source.counters();
    // 95 people in batches of 20: five $batch requests and one token.
    assert_eq!(counters.requests_sent, 5);
    assert_eq!(emulator.counters().by_kind.get("batch").copied(), Some(5));
    assert_eq!(counters.token_requests, 1);

    let hidden = source
        .read_windows(&people[..10], start, end, SubjectFetch::Skip)
        .await;
    assert!(hidden
        .iter()
        .flat_map(|(_, result)| result.as_ref().unwrap())
        .all(|appointment| appointment.subject.is_none()));
    assert_eq!(
        hidden
            .iter()
            .map(|(_, result)| result.as_ref().unwrap().len())
            .sum::<usize>(),
        (0..10).map(|index| index % 4).sum::<usize>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_mailbox_fails_alone_and_a_concurrency_storm_is_ridden_out() {
    let emulator = start(25).await;
    let source = source(&emulator);
    emulator.set_faults(FaultSettings {
        throttled_mailboxes: vec![user_address(3)],
        throttled_mailbox_retry_after_seconds: 1,
        ..FaultSettings::default()
    });
    let people: Vec<(usize, String)> = (0..25).map(|index| (index, user_address(index))).collect();
    let (start, end) = window();
    let results = source
        .read_windows(&people, start, end, SubjectFetch::Skip)
        .await;
    for (index, result) in &results {
        if *index == 3 {
            let error = result.as_ref().unwrap_err();
            assert!(matches!(error, GraphError::Throttled { .. }), "{error}");
            assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
        } else {
            assert_eq!(result.as_ref().unwrap().len(), index % 4);
        }
    }
    assert!(source.counters().throttled_answers >= 2);

    // Above Graph's MailboxConcurrency limit of 4 the emulator answers 429 with Retry-After 1;
    // every read still ends with the right answer.
    emulator.set_faults(FaultSettings {
        latency_ms: 30,
        mailbox_concurrency_limit: 2,
        concurrency_retry_after_seconds: 1,
        ..FaultSettings::default()
    });
    let user = user_address(2);
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let source = source.clone();
        let user = user.clone();
        reads.spawn(async move {
            source
                .delta(&user, start, end, &DeltaCursor::Start, SubjectFetch::Skip)
                .await
        });
    }
    let throttled_before = source.counters().throttled_answers;
    while let Some(joined) = reads.join_next().await {
        match joined.unwrap().unwrap() {
            DeltaOutcome::Changes { upserts, .. } => assert_eq!(upserts.len(), 2),
            DeltaOutcome::ResyncRequired => panic!("no resync expected"),
        }
    }
    assert!(
        source.counters().throttled_answers > throttled_before,
        "the emulator's limit of 2 was exceeded by 4 per mailbox, so 429s were seen"
    );
}

async fn graph_call(
    emulator: &RunningEmulator,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let ready = emulator.ready();
    let client = build_http_client(Some(&ready.ca_cert)).unwrap();
    let token: serde_json::Value = client
        .post(&ready.token_url)
        .form(&[
            ("client_id", ready.client_id.as_str()),
            ("client_secret", SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut request = client
        .request(method, format!("{}{path}", ready.graph_url))
        .bearer_auth(token["access_token"].as_str().unwrap());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_reports_created_updated_and_deleted_events_then_410_means_resync() {
    let emulator = start(4).await;
    let source = source(&emulator);
    let user = user_address(3);
    let (start, end) = window();
    let DeltaOutcome::Changes { upserts, next, .. } = source
        .delta(&user, start, end, &DeltaCursor::Start, SubjectFetch::Skip)
        .await
        .unwrap()
    else {
        panic!("first delta must give changes");
    };
    assert_eq!(upserts.len(), 3);
    assert!(upserts
        .iter()
        .all(|appointment| appointment.subject.is_none()));
    let (first, second) = (upserts[0].id.clone(), upserts[1].id.clone());

    let meeting_start = Timestamp::now() + SignedDuration::from_hours(5);
    let created = graph_call(
        &emulator,
        reqwest::Method::POST,
        &format!("/users/{user}/events"),
        Some(json!({
            "subject": "New one",
            "showAs": "oof",
            "start": {"dateTime": meeting_start.strftime("%Y-%m-%dT%H:%M:%S").to_string(), "timeZone": "UTC"},
            "end": {"dateTime": (meeting_start + SignedDuration::from_mins(45)).strftime("%Y-%m-%dT%H:%M:%S").to_string(), "timeZone": "UTC"},
        })),
    )
    .await;
    let created_id = created["id"].as_str().unwrap().to_string();
    graph_call(
        &emulator,
        reqwest::Method::PATCH,
        &format!("/users/{user}/events/{first}"),
        Some(json!({"showAs": "tentative"})),
    )
    .await;
    graph_call(
        &emulator,
        reqwest::Method::DELETE,
        &format!("/users/{user}/events/{second}"),
        None,
    )
    .await;

    let DeltaOutcome::Changes {
        upserts,
        removed_ids,
        next,
    } = source
        .delta(
            &user,
            start,
            end,
            &DeltaCursor::Link(next),
            SubjectFetch::Fetch,
        )
        .await
        .unwrap()
    else {
        panic!("second delta must give changes");
    };
    let mut upserted: Vec<&str> = upserts
        .iter()
        .map(|appointment| appointment.id.as_str())
        .collect();
    upserted.sort();
    let mut expected = vec![created_id.as_str(), first.as_str()];
    expected.sort();
    assert_eq!(upserted, expected);
    let new_one = upserts
        .iter()
        .find(|appointment| appointment.id == created_id)
        .unwrap();
    assert_eq!(new_one.subject.as_deref(), Some("New one"));
    assert_eq!(new_one.show_as, calbridge_domain::ShowAs::Oof);
    assert_eq!(removed_ids, vec![second]);

    emulator.expire_delta_tokens();
    assert_eq!(
        source
            .delta(
                &user,
                start,
                end,
                &DeltaCursor::Link(next),
                SubjectFetch::Skip
            )
            .await
            .unwrap(),
        DeltaOutcome::ResyncRequired
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_reads_of_many_users_go_twenty_to_a_batch_and_continue_from_their_links() {
    let n_users = 45;
    let emulator = start(n_users).await;
    let source = source(&emulator);
    let (start, end) = window();
    let reads: Vec<(usize, String, DeltaCursor)> = (0..n_users)
        .map(|index| (index, user_address(index), DeltaCursor::Start))
        .collect();
    let first = source
        .delta_many(&reads, start, end, SubjectFetch::Fetch)
        .await;
    assert_eq!(first.len(), n_users);
    // 45 reads: three $batch requests (20, 20, 5), and one token.
    assert_eq!(emulator.counters().by_kind.get("batch").copied(), Some(3));
    assert_eq!(source.counters().requests_sent, 3);
    let mut links = Vec::new();
    for (index, outcome) in first {
        let Ok(DeltaOutcome::Changes {
            upserts,
            removed_ids,
            next,
        }) = outcome
        else {
            panic!("user {index}: {outcome:?}");
        };
        assert_eq!(upserts.len(), index % 4, "user {index}");
        assert!(removed_ids.is_empty());
        links.push((index, user_address(index), DeltaCursor::Link(next)));
    }

    // One new meeting for user 7 and one deleted for user 10: only they change.
    let meeting_start = Timestamp::now() + SignedDuration::from_hours(6);
    graph_call(
        &emulator,
        reqwest::Method::POST,
        &format!("/users/{}/events", user_address(7)),
        Some(json!({
            "subject": "Added later",
            "showAs": "busy",
            "start": {"dateTime": meeting_start.strftime("%Y-%m-%dT%H:%M:%S").to_string(), "timeZone": "UTC"},
            "end": {"dateTime": (meeting_start + SignedDuration::from_mins(30)).strftime("%Y-%m-%dT%H:%M:%S").to_string(), "timeZone": "UTC"},
        })),
    )
    .await;
    let events = graph_call(
        &emulator,
        reqwest::Method::GET,
        &format!("/users/{}/events?$select=id", user_address(10)),
        None,
    )
    .await;
    let deleted = events["value"][0]["id"]
        .as_str()
        .expect("an event")
        .to_string();
    graph_call(
        &emulator,
        reqwest::Method::DELETE,
        &format!("/users/{}/events/{deleted}", user_address(10)),
        None,
    )
    .await;
    let second = source
        .delta_many(&links, start, end, SubjectFetch::Fetch)
        .await;
    for (index, outcome) in &second {
        let Ok(DeltaOutcome::Changes {
            upserts,
            removed_ids,
            ..
        }) = outcome
        else {
            panic!("user {index}: {outcome:?}");
        };
        match index {
            7 => {
                assert_eq!(upserts.len(), 1, "{upserts:?}");
                assert_eq!(upserts[0].subject.as_deref(), Some("Added later"));
            }
            10 => assert_eq!(removed_ids, &vec![deleted.clone()]),
            _ => assert!(upserts.is_empty() && removed_ids.is_empty(), "user {index}"),
        }
    }
    assert_eq!(emulator.counters().by_kind.get("batch").copied(), Some(6));

    // Graph forgets the delta tokens: every read says so, none fails.
    emulator.expire_delta_tokens();
    let third = source
        .delta_many(&links[..3], start, end, SubjectFetch::Skip)
        .await;
    for (index, outcome) in third {
        assert_eq!(
            outcome.ok(),
            Some(DeltaOutcome::ResyncRequired),
            "user {index}"
        );
    }
}

/// A plain-HTTP webhook on loopback that answers Graph's validation handshake with
/// [`calbridge_sources_graph::validation_response`] and forwards notification bodies.
async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let Ok(read) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let head = text[..end].to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|line| {
                                let (name, value) = line.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buffer.len() >= end + 4 + length {
                            break (head, buffer[end + 4..end + 4 + length].to_vec());
                        }
                    }
                };
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let query = target.split_once('?').map(|(_, query)| query).unwrap_or("");
                let reply = match calbridge_sources_graph::validation_response(query) {
                    Some(token) => token,
                    None => {
                        let _ = sender.send(body);
                        String::new()
                    }
                };
                let status = if reply.is_empty() {
                    "202 Accepted"
                } else {
                    "200 OK"
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_created_renewed_and_deleted_and_notifications_parse() {
    let emulator = start(3).await;
    let source = source(&emulator);
    let (url, mut notifications) = webhook().await;
    let client_state = Secret::new("client-state-for-this-install");
    let expires_at = Timestamp::now() + SignedDuration::from_hours(24);
    let requests: Vec<SubscriptionRequest> = (0..3)
        .map(|index| SubscriptionRequest {
            user: user_address(index),
            notification_url: url.clone(),
            lifecycle_notification_url: Some(url.clone()),
            client_state: client_state.clone(),
            expires_at,
        })
        .collect();
    let created: Vec<_> = source
        .create_subscriptions(&requests)
        .await
        .into_iter()
        .map(|result| result.unwrap())
        .collect();
    assert_eq!(created.len(), 3);
    let mut live = emulator.subscription_ids();
    live.sort();
    let mut ours: Vec<String> = created
        .iter()
        .map(|subscription| subscription.id.clone())
        .collect();
    ours.sort();
    assert_eq!(live, ours);

    let later = expires_at + SignedDuration::from_hours(24);
    match source
        .renew_subscription(&created[0].id, later)
        .await
        .unwrap()
    {
        RenewOutcome::Renewed { expires_at } => {
            assert_eq!(expires_at.as_second(), later.as_second())
        }
        RenewOutcome::Gone => panic!("the subscription exists"),
    }

    // A change in user 1's calendar reaches the webhook as a notification for user 1.
    let meeting_start = Timestamp::now() + SignedDuration::from_hours(3);
    graph_call(
        &emulator,
        reqwest::Method::POST,
        &format!("/users/{}/events", user_address(1)),
        Some(json!({
            "subject": "Notify me",
            "start": {"dateTime": meeting_start.strftime("%Y-%m-%dT%H:%M:%S").to_string(), "timeZone": "UTC"},
            "end": {"dateTime": (meeting_start + SignedDuration::from_mins(30)).strftime("%Y-%m-%dT%H:%M:%S").to_string(), "timeZone": "UTC"},
        })),
    )
    .await;
    let body = tokio::time::timeout(Duration::from_secs(10), notifications.recv())
        .await
        .expect("a notification within 10 s")
        .expect("webhook alive");
    let parsed = calbridge_sources_graph::parse_notifications(&body, &client_state).unwrap();
    assert!(parsed.rejected_client_state.is_empty());
    assert_eq!(parsed.accepted[0].subscription_id(), created[1].id);
    let wrong_state =
        calbridge_sources_graph::parse_notifications(&body, &Secret::new("other")).unwrap();
    assert!(wrong_state.accepted.is_empty());

    source.delete_subscription(&created[2].id).await.unwrap();
    assert!(!emulator.subscription_ids().contains(&created[2].id));
    // Deleting again is fine, renewing a deleted one says to recreate it.
    source.delete_subscription(&created[2].id).await.unwrap();
    assert_eq!(
        source
            .renew_subscription(&created[2].id, later)
            .await
            .unwrap(),
        RenewOutcome::Gone
    );
}

/// The first-read figures: wall time and HTTP requests per user with 20 ms of latency on every
/// Graph request. `CALBRIDGE_GRAPH_BENCH_USERS` scales it (10,000 for the target; the
/// default keeps the test suite quick in debug builds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_read_of_a_generated_organisation_needs_few_requests_per_user() {
    let n_users: usize = std::env::var("CALBRIDGE_GRAPH_BENCH_USERS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000);
    let mut config = EmulatorConfig::generated(n_users, 7);
    config.faults = Some(FaultSettings {
        latency_ms: 20,
        ..FaultSettings::default()
    });
    let emulator = Emulator::start(config).await.unwrap();
    let ready = emulator.ready().clone();
    let mut graph_config = GraphSourceConfig::new(
        &ready.tenant_id,
        &ready.client_id,
        GraphCredential::ClientSecret(Secret::new(ready.client_secret.clone().unwrap())),
    );
    graph_config.authority_url = ready.base_url.clone();
    graph_config.graph_url = ready.base_url.clone();
    graph_config.token_scope = Some("https://graph.microsoft.com/.default".to_string());
    graph_config.extra_root_ca = Some(ready.ca_cert.clone());
    let source = GraphSource::new(&graph_config, Arc::new(SystemClock)).unwrap();
    let members = source
        .group_members(ready.group_id.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(members.len(), n_users);
    let people: Vec<(usize, String)> = members
        .iter()
        .enumerate()
        .map(|(index, user)| (index, user.id.clone()))
        .collect();
    let before = source.counters();
    let (start, end) = window();
    let started = std::time::Instant::now();
    let results = source
        .read_windows(&people, start, end, SubjectFetch::Skip)
        .await;
    let elapsed = started.elapsed();
    let after = source.counters();
    let failed = results.iter().filter(|(_, result)| result.is_err()).count();
    let appointments: usize = results
        .iter()
        .filter_map(|(_, result)| result.as_ref().ok())
        .map(Vec::len)
        .sum();
    let requests = after.requests_sent - before.requests_sent;
    let per_user = requests as f64 / n_users as f64;
    println!(
        "first read: {n_users} users, {appointments} appointments, {elapsed:?}, {requests} HTTP requests ({per_user:.3}/user), {} retries, {} 429s",
        after.retries - before.retries,
        after.throttled_answers - before.throttled_answers
    );
    assert_eq!(failed, 0);
    assert!(appointments > 0);
    assert!(per_user <= 0.2, "{per_user} requests per user");
    // How long it took is printed above, not asserted: on a shared machine a figure belongs in
    // `calbridge bench`, which measures the first sync side by side with the other sources.
}
