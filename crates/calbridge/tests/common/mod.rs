//! Shared helpers for the black-box service tests: the emulator, the service on port 0, a
//! Graph client that changes calendars through Graph's own API, and polling with a deadline.

#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod ldap;
pub mod postgres;
pub mod sip;
pub mod sse;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calbridge::clock::Clock;
use calbridge::config::{Config, DirectoryConfig};
use calbridge::service::{self, RunningService, ServiceOptions};
use calbridge_domain::{MailboxAddress, SourceId};
use calbridge_store::PersonKey;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use m365_emulator::ReadyInfo;
use serde_json::{json, Value};

/// The id `demo_config` gives the Graph source.
pub const SOURCE: &str = "demo";

/// How long any one wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

pub fn key(address: &str) -> PersonKey {
    PersonKey {
        source: SourceId(SOURCE.to_string()),
        address: MailboxAddress::parse(address).expect("a valid address"),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test with `what` (and the
/// last state `describe` gives) after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The service's configuration for an emulator: `demo_config` (Graph source "demo", change
/// notifications to `public_url`), with a directory file instead of the group when given.
pub fn config_for(
    ready: &ReadyInfo,
    data_dir: &Path,
    public_url: &str,
    directory_file: Option<&Path>,
) -> Config {
    let mut ready = ready.clone();
    let has_group = ready.group_id.is_some();
    if !has_group {
        ready.group_id = Some("replaced-by-a-file".to_string());
    }
    let mut config =
        calbridge::commands::demo_config(&ready, data_dir, public_url).expect("demo config");
    if let Some(file) = directory_file {
        config.directory = vec![DirectoryConfig {
            refresh_seconds: 300,
            ..DirectoryConfig::of_file(SourceId(SOURCE.to_string()), file.to_path_buf())
        }];
    } else {
        assert!(has_group, "a scenario needs a directory file");
    }
    config.presence.timezone = calbridge_domain::ZoneName::parse("UTC").expect("UTC");
    config
}

/// Binds 127.0.0.1 on `port` (0 = any free port); returns the listener and its public URL.
pub async fn listen(port: u16) -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the API port");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    (listener, url)
}

/// Starts the service on `listener` and waits for its first sync.
pub async fn start_service(
    config: Config,
    clock: Arc<dyn Clock>,
    listener: tokio::net::TcpListener,
) -> RunningService {
    let running = try_start_service(config, clock, listener)
        .await
        .expect("the service starts");
    tokio::time::timeout(Duration::from_secs(30), running.first_sync_done())
        .await
        .expect("the first sync finishes within 30 s");
    running
}

/// Starts the service on `listener` without waiting for its first sync.
pub async fn try_start_service(
    config: Config,
    clock: Arc<dyn Clock>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<RunningService> {
    service::start(
        config,
        ServiceOptions {
            clock,
            listener: Some(listener),
        },
    )
    .await
}

/// Waits until the emulator's token endpoint has refused at least `n` requests.
pub async fn wait_token_errors(emulator: &m365_emulator::RunningEmulator, n: u64) {
    wait_for(
        &format!("{n} refused token requests"),
        Duration::from_secs(60),
        || {
            let errors = emulator
                .counters()
                .by_kind
                .get("identity.token_errors")
                .copied()
                .unwrap_or(0);
            (errors >= n).then_some(())
        },
    )
    .await;
}

/// `(activity, note, until)` of a person in the hub, if decided.
pub fn presence_of(
    running: &RunningService,
    address: &str,
) -> Option<(String, String, Option<Timestamp>)> {
    running.hub.decision(&key(address)).map(|(decision, _)| {
        (
            decision.activity.as_str().to_string(),
            decision.note.clone(),
            decision.until,
        )
    })
}

/// The note without its hash tags ("Design review until 10:30 #busy…" → "Design review until 10:30").
pub fn note_text(note: &str) -> &str {
    note.split(" #").next().unwrap_or(note)
}

/// Waits until the hub shows `activity` for `address` with a note for which `note_ok` holds.
pub async fn wait_presence(
    running: &RunningService,
    address: &str,
    activity: &str,
    note_ok: impl Fn(&str) -> bool,
) -> (String, String, Option<Timestamp>) {
    let mut last = None;
    let started = Instant::now();
    loop {
        let now = presence_of(running, address);
        if let Some((found, note, until)) = &now {
            if found == activity && note_ok(note_text(note)) {
                return (found.clone(), note.clone(), *until);
            }
        }
        if now != last {
            last = now;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "timed out after {PATIENCE:?} waiting for {address} to be {activity}; last presence: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Graph as another application would use it: changes calendars through `/users/{id}/events`.
pub struct GraphClient {
    http: reqwest::Client,
    graph_url: String,
    token: String,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl GraphClient {
    pub async fn new(ready: &ReadyInfo) -> GraphClient {
        let http = calbridge_net::build_http_client(Some(&ready.ca_cert))
            .expect("an HTTP client trusting the emulator's CA");
        let form = calbridge_net::entra::token_request_form(
            &ready.client_id,
            "https://graph.microsoft.com/.default",
            calbridge_net::entra::ClientCredential::Secret(
                ready
                    .client_secret
                    .as_deref()
                    .expect("the app has a secret"),
            ),
        );
        let answer = http
            .post(&ready.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .expect("the token endpoint answers");
        assert!(answer.status().is_success(), "token: {}", answer.status());
        let body: Value = answer.json().await.expect("token JSON");
        let token = body["access_token"]
            .as_str()
            .expect("an access token")
            .to_string();
        GraphClient {
            http,
            graph_url: ready.graph_url.clone(),
            token,
        }
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.graph_url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("Graph answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body }
    }

    /// `send`, retried (up to 20 times, 200 ms apart) while Graph answers 429, 503 or 504:
    /// the test's own writes share the app's limits with the service.
    pub async fn send_patiently(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut attempts = 0;
        loop {
            let answer = self.send(method.clone(), path, body.clone()).await;
            attempts += 1;
            if !matches!(answer.status, 429 | 503 | 504) || attempts >= 20 {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates a single event (UTC times, whole seconds) and returns its id.
    pub async fn create_event(
        &self,
        user: &str,
        subject: &str,
        start: Timestamp,
        end: Timestamp,
        show_as: &str,
    ) -> String {
        let body = json!({
            "subject": subject,
            "start": {"dateTime": graph_time(start), "timeZone": "UTC"},
            "end": {"dateTime": graph_time(end), "timeZone": "UTC"},
            "showAs": show_as,
        });
        let answer = self
            .send_patiently(
                reqwest::Method::POST,
                &format!("/users/{user}/events"),
                Some(body),
            )
            .await;
        assert_eq!(
            answer.status, 201,
            "create event for {user}: {}",
            answer.body
        );
        answer.body["id"].as_str().expect("an event id").to_string()
    }

    pub async fn delete_event(&self, user: &str, id: &str) {
        let answer = self
            .send_patiently(
                reqwest::Method::DELETE,
                &format!("/users/{user}/events/{id}"),
                None,
            )
            .await;
        assert_eq!(answer.status, 204, "delete event {id}: {}", answer.body);
    }

    /// Makes `[from, to)` free in a user's calendar: deletes what Graph's calendar view shows
    /// there (single events, and occurrences of a series one by one, as Outlook does), so that
    /// a meeting the test books is the only thing the person has in that span. The generated
    /// organisation lays its meetings at working hours around the real now, so a test that
    /// books "now" must create its free slot, or it passes at night and fails at 09:42.
    pub async fn clear_span(&self, user: &str, from: Timestamp, to: Timestamp) {
        let view = format!(
            "/users/{user}/calendarView?startDateTime={}Z&endDateTime={}Z&$select=id&$top=100",
            graph_time(from),
            graph_time(to)
        );
        // Deleting shifts the pages, so read the first page again until it is empty.
        for _ in 0..20 {
            let answer = self.send_patiently(reqwest::Method::GET, &view, None).await;
            assert_eq!(
                answer.status, 200,
                "calendar view of {user}: {}",
                answer.body
            );
            let ids: Vec<String> = answer.body["value"]
                .as_array()
                .expect("a value array")
                .iter()
                .filter_map(|event| event["id"].as_str().map(str::to_string))
                .collect();
            if ids.is_empty() {
                return;
            }
            for id in ids {
                self.delete_event(user, &id).await;
            }
        }
        panic!("the calendar of {user} still has events between {from} and {to}");
    }

    /// Makes a user free around `now`, from an hour before to three hours after: room for a
    /// meeting "now" of up to an hour, booked while the test runs, to be all the person has.
    pub async fn free_around(&self, user: &str, now: Timestamp) {
        self.clear_span(
            user,
            now - jiff::SignedDuration::from_hours(1),
            now + jiff::SignedDuration::from_hours(3),
        )
        .await;
    }

    /// `(subject, start, end)` of a user's events (single events only), read back from Graph.
    pub async fn events(&self, user: &str) -> Vec<(String, Timestamp, Timestamp)> {
        let answer = self
            .send(
                reqwest::Method::GET,
                &format!("/users/{user}/events?$top=100"),
                None,
            )
            .await;
        assert_eq!(answer.status, 200, "list events of {user}: {}", answer.body);
        answer.body["value"]
            .as_array()
            .expect("a value array")
            .iter()
            .map(|event| {
                (
                    event["subject"].as_str().unwrap_or_default().to_string(),
                    parse_graph_time(&event["start"]),
                    parse_graph_time(&event["end"]),
                )
            })
            .collect()
    }

    /// Mail addresses of a group's members, every page of them (Graph gives at most 999 a page).
    pub async fn group_members(&self, group: &str) -> Vec<String> {
        let mut members = Vec::new();
        let mut next = Some(format!("/groups/{group}/members?$top=999&$select=mail"));
        while let Some(path) = next.take() {
            let answer = self.send_patiently(reqwest::Method::GET, &path, None).await;
            assert_eq!(answer.status, 200, "group members: {}", answer.body);
            members.extend(
                answer.body["value"]
                    .as_array()
                    .expect("a value array")
                    .iter()
                    .filter_map(|member| member["mail"].as_str().map(str::to_lowercase)),
            );
            next = answer.body["@odata.nextLink"]
                .as_str()
                .and_then(|link| link.strip_prefix(self.graph_url.as_str()))
                .map(str::to_string);
        }
        members
    }

    /// What Graph's calendar view shows for a user in `[from, to)`, in UTC as calbridge asks for
    /// it (all-day events come back as floating dates at midnight), every page of it.
    pub async fn calendar_view(
        &self,
        user: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Vec<ViewEvent> {
        let mut events = Vec::new();
        let mut next = Some(format!(
            "/users/{user}/calendarView?startDateTime={}Z&endDateTime={}Z\
             &$select=subject,start,end,showAs,isAllDay,isCancelled&$top=200",
            graph_time(from),
            graph_time(to)
        ));
        let mut attempts = 0;
        while let Some(path) = next.take() {
            let answer = self
                .http
                .get(format!("{}{path}", self.graph_url))
                .bearer_auth(&self.token)
                .header("Prefer", "outlook.timezone=\"UTC\"")
                .send()
                .await
                .expect("Graph answers");
            let status = answer.status().as_u16();
            if matches!(status, 429 | 503 | 504) && attempts < 20 {
                attempts += 1;
                next = Some(path);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let body: Value = answer.json().await.expect("calendar view JSON");
            assert_eq!(status, 200, "calendar view of {user}: {body}");
            for event in body["value"].as_array().expect("a value array") {
                events.push(ViewEvent {
                    subject: event["subject"].as_str().unwrap_or_default().to_string(),
                    start: parse_graph_time(&event["start"]),
                    end: parse_graph_time(&event["end"]),
                    show_as: event["showAs"].as_str().unwrap_or("busy").to_string(),
                    cancelled: event["isCancelled"].as_bool().unwrap_or(false),
                });
            }
            next = body["@odata.nextLink"]
                .as_str()
                .and_then(|link| link.strip_prefix(self.graph_url.as_str()))
                .map(str::to_string);
        }
        events
    }
}

/// An event as Graph's calendar view shows it (in UTC).
#[derive(Debug, Clone)]
pub struct ViewEvent {
    pub subject: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub show_as: String,
    pub cancelled: bool,
}

pub fn graph_time(at: Timestamp) -> String {
    at.to_zoned(TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

fn parse_graph_time(value: &Value) -> Timestamp {
    let date_time: jiff::civil::DateTime = value["dateTime"]
        .as_str()
        .expect("dateTime")
        .parse()
        .expect("a Graph dateTime");
    let zone = value["timeZone"].as_str().unwrap_or("UTC");
    assert_eq!(zone, "UTC", "events are read in UTC");
    date_time
        .to_zoned(TimeZone::UTC)
        .expect("a UTC time")
        .timestamp()
}

/// A whole second at or after `at` (Graph event times carry no fractions here).
pub fn whole_second(at: Timestamp) -> Timestamp {
    let seconds = at.as_second() + i64::from(at.subsec_nanosecond() > 0);
    Timestamp::from_second(seconds).expect("a valid instant")
}

/// The service's HTTP API.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(running: &RunningService) -> Api {
        Api {
            // reqwest is built without a default TLS provider here; this client brings one.
            http: calbridge_net::build_http_client(None).expect("an HTTP client"),
            base: format!("http://{}", running.address),
            token: running.api_token.expose().to_string(),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, token).await
    }

    /// Any request to the service, with `token` as the bearer token when given; the status
    /// and the answer (JSON, or the text as a string).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get_authorized(&self, path: &str) -> Value {
        let (status, body) = self.get(path, Some(&self.token.clone())).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

/// A tenant of one person whose places API lists no room, its app allowed `Place.Read.All`
/// with the client secret `secret` (the ready info does not carry a scenario's secret).
pub fn tenant_without_rooms(secret: &str) -> m365_emulator::Scenario {
    serde_json::from_value(json!({
        "tenants": [{"name": "contoso", "domains": ["contoso.example"]}],
        "apps": [{
            "name": "calbridge",
            "tenant": "contoso",
            "roles": ["Calendars.Read", "User.Read.All", "Place.Read.All"],
            "secrets": [{"value": secret}],
        }],
        "users": [{"upn": "ada@contoso.example"}],
    }))
    .expect("a scenario")
}

/// Runs `calbridge bench …` (the binary) and returns (success, stdout, stderr); fails the test
/// when it takes more than 180 s.
pub async fn bench(arguments: &[&str]) -> (bool, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_calbridge"))
            .arg("bench")
            .args(arguments)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the benchmark ends within 180 s")
    .expect("calbridge runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
