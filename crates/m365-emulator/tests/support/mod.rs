//! Test infrastructure shared by the emulator's test binaries (`graph`, `identity`, `ews`): a
//! scenario exercising every field the tests need, a [`Harness`] starting the emulator with a
//! small HTTPS client that trusts its CA, and a notification receiver. For the EWS tests:
//!
//! - [`ews`]: EWS and Autodiscover requests (SOAP envelopes, Basic, impersonation) and their
//!   answers read back;
//! - [`raw_connection`]: one raw HTTP/1.1 connection carrying several requests, and the NTLM
//!   handshake's legs on it;
//! - [`streaming`]: GetStreamingEvents connections held open, admitted or refused;
//! - [`latency`]: latency faults and the virtual time a request takes under them.
//!
//! Not every test binary uses every helper, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod ews;
pub mod latency;
pub mod raw_connection;
pub mod streaming;

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use m365_emulator::{Clock, Emulator, EmulatorConfig, RunningEmulator, Scenario};
use serde_json::Value;
use tokio::sync::mpsc;

pub const TENANT_ID: &str = "11111111-1111-4111-8111-111111111111";
pub const APP_ID: &str = "22222222-2222-4222-8222-222222222222";
pub const USER_ONLY_APP_ID: &str = "33333333-3333-4333-8333-333333333333";
pub const RESTRICTED_APP_ID: &str = "44444444-4444-4444-8444-444444444444";
pub const ADA_ID: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
pub const PHONES_GROUP_ID: &str = "99999999-9999-4999-8999-999999999999";
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

pub fn app_certificate_pem() -> &'static str {
    include_str!("../fixtures/app-cert.pem")
}

pub fn scenario_toml() -> String {
    format!(
        r#"
[settings]
seed = 7
token_lifetime_seconds = 600
subscription_max_minutes = 4230

[[tenants]]
name = "contoso"
id = "{TENANT_ID}"
domains = ["contoso.example"]

[[apps]]
name = "calbridge"
client_id = "{APP_ID}"
roles = ["Calendars.ReadWrite", "User.Read.All", "Group.Read.All"]
secrets = [{{ value = "good-secret" }}, {{ value = "old-secret", expires = "-1d" }}]
certificates = [{{ pem = """{cert}""" }}]

[[apps]]
name = "directory-only"
client_id = "{USER_ONLY_APP_ID}"
roles = ["User.Read.All"]
secrets = [{{ value = "directory-secret" }}]

[[apps]]
name = "restricted"
client_id = "{RESTRICTED_APP_ID}"
roles = ["Calendars.Read"]
secrets = [{{ value = "restricted-secret" }}]
access_policy_group = "Phones"

[[users]]
upn = "ada@contoso.example"
id = "{ADA_ID}"
display_name = "Ada Lovelace"
aliases = ["ada.l@contoso.example"]
time_zone = "W. Europe Standard Time"
password = "ada-password"

[[users]]
upn = "bob@contoso.example"
display_name = "Bob Builder"
time_zone = "Eastern Standard Time"

[[users]]
upn = "carol@contoso.example"
mailbox = false

[[rooms]]
upn = "room.1@contoso.example"
display_name = "Room 1"
time_zone = "W. Europe Standard Time"

[[groups]]
name = "Phones"
id = "{PHONES_GROUP_ID}"
members = ["ada@contoso.example", "room.1@contoso.example"]

[[events]]
mailbox = "ada@contoso.example"
subject = "Weekly sync"
start = "2030-03-04T10:00:00"
end = "+1h"
attendees = ["bob@contoso.example", "room.1@contoso.example"]
location = "Room 1"
recurrence = {{ pattern = {{ type = "weekly", interval = 1, daysOfWeek = ["monday"] }}, range = {{ type = "numbered", numberOfOccurrences = 6 }} }}
exceptions = [
  {{ original_start = "2030-03-11T10:00:00", deleted = true }},
  {{ original_start = "2030-03-18T10:00:00", start = "2030-03-18T14:00:00", subject = "Weekly sync (moved)" }},
]

[[events]]
mailbox = "ada@contoso.example"
subject = "Holiday"
start = "2030-03-06"
end = "+2d"
all_day = true
show_as = "oof"

[[events]]
mailbox = "ada@contoso.example"
subject = "Doctor"
start = "2030-03-05T08:00:00"
duration = "1h"
sensitivity = "private"

[[events]]
mailbox = "ada@contoso.example"
subject = "Maybe"
start = "2030-03-07T09:00:00"
show_as = "tentative"

[[events]]
mailbox = "ada@contoso.example"
subject = "From home"
start = "2030-03-07T10:00:00"
show_as = "workingElsewhere"

[[events]]
mailbox = "ada@contoso.example"
subject = "Reminder"
start = "2030-03-07T11:00:00"
show_as = "free"

[[events]]
mailbox = "ada@contoso.example"
subject = "Unknown"
start = "2030-03-07T12:00:00"
show_as = "unknown"
"#,
        cert = app_certificate_pem()
    )
}

pub fn scenario() -> Scenario {
    match Scenario::from_toml_str(&scenario_toml()) {
        Ok(scenario) => scenario,
        Err(error) => panic!("test scenario does not parse: {error}"),
    }
}

pub fn manual_clock() -> Clock {
    Clock::manual("2026-06-01T08:00:00Z".parse().unwrap_or_default())
}

pub struct Harness {
    pub emulator: RunningEmulator,
    pub client: HttpsClient,
}

pub async fn start_with(mut config: EmulatorConfig) -> Harness {
    config.notification_retry_delays = vec![];
    let emulator = match Emulator::start(config).await {
        Ok(emulator) => emulator,
        Err(error) => panic!("emulator did not start: {error}"),
    };
    let client = HttpsClient::trusting(&emulator.ready().ca_cert);
    Harness { emulator, client }
}

pub async fn start() -> Harness {
    let mut config = EmulatorConfig::scenario(scenario());
    config.clock = manual_clock();
    start_with(config).await
}

impl Harness {
    pub fn graph(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.ready().graph_url)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("{}{path}", self.emulator.ready().admin_url)
    }

    pub async fn token_request(&self, form: &[(&str, &str)]) -> Reply {
        let body = form
            .iter()
            .map(|(key, value)| format!("{key}={}", encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        self.client
            .send(
                "POST",
                &self.emulator.ready().token_url,
                &[],
                Some(("application/x-www-form-urlencoded", body.into_bytes())),
            )
            .await
    }

    pub async fn token_for(&self, client_id: &str, secret: &str) -> String {
        let reply = self
            .token_request(&[
                ("client_id", client_id),
                ("client_secret", secret),
                ("grant_type", "client_credentials"),
                ("scope", GRAPH_SCOPE),
            ])
            .await;
        assert_eq!(reply.status, 200, "token request failed: {}", reply.text());
        reply.json()["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn token(&self) -> String {
        self.token_for(APP_ID, "good-secret").await
    }

    pub async fn get(&self, url: &str, token: &str, extra: &[(&str, &str)]) -> Reply {
        let authorization = format!("Bearer {token}");
        let mut headers = vec![("authorization", authorization.as_str())];
        headers.extend_from_slice(extra);
        self.client.send("GET", url, &headers, None).await
    }

    pub async fn send_json(&self, method: &str, url: &str, token: &str, body: &Value) -> Reply {
        let authorization = format!("Bearer {token}");
        self.client
            .send(
                method,
                url,
                &[("authorization", authorization.as_str())],
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await
    }

    pub async fn delete(&self, url: &str, token: &str) -> Reply {
        let authorization = format!("Bearer {token}");
        self.client
            .send(
                "DELETE",
                url,
                &[("authorization", authorization.as_str())],
                None,
            )
            .await
    }
}

pub fn encode(value: &str) -> String {
    let mut encoded = String::new();
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(byte as char)
            }
            other => encoded.push_str(&format!("%{other:02X}")),
        }
    }
    encoded
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    }
}

/// A one-connection-per-request HTTPS client trusting only the emulator's CA file.
pub struct HttpsClient {
    tls: Arc<rustls::ClientConfig>,
}

impl HttpsClient {
    pub fn trusting(ca_path: &std::path::Path) -> HttpsClient {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let certificate = match rustls_pki_types::CertificateDer::from_pem_file(ca_path) {
            Ok(certificate) => certificate,
            Err(error) => panic!("CA file {} unreadable: {error}", ca_path.display()),
        };
        assert!(
            roots.add(certificate).is_ok(),
            "CA certificate rejected by rustls"
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = match rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
            Err(error) => panic!("TLS config: {error}"),
        };
        HttpsClient {
            tls: Arc::new(config),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Reply {
        let uri: hyper::Uri = match url.parse() {
            Ok(uri) => uri,
            Err(error) => panic!("bad url {url}: {error}"),
        };
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let authority = uri
            .authority()
            .map(|authority| authority.to_string())
            .unwrap_or_default();
        let stream = match tokio::net::TcpStream::connect((host.as_str(), port)).await {
            Ok(stream) => stream,
            Err(error) => panic!("connect {authority}: {error}"),
        };
        let server_name = match rustls_pki_types::ServerName::try_from(host.clone()) {
            Ok(name) => name,
            Err(error) => panic!("server name {host}: {error}"),
        };
        let tls = match tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(server_name, stream)
            .await
        {
            Ok(tls) => tls,
            Err(error) => panic!("TLS to {authority}: {error}"),
        };
        let (mut sender, connection) =
            match hyper::client::conn::http1::handshake(TokioIo::new(tls)).await {
                Ok(pair) => pair,
                Err(error) => panic!("HTTP handshake: {error}"),
            };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let path = uri
            .path_and_query()
            .map(|path| path.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        let mut builder = hyper::Request::builder().method(method).uri(path);
        // A test may name a virtual host itself (Autodiscover's Host-header routing).
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            builder = builder.header("host", authority);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                builder = builder.header("content-type", content_type);
                bytes
            }
            None => Vec::new(),
        };
        let request = match builder.body(Full::new(Bytes::from(payload))) {
            Ok(request) => request,
            Err(error) => panic!("request: {error}"),
        };
        let response =
            match tokio::time::timeout(Duration::from_secs(30), sender.send_request(request)).await
            {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => panic!("request to {url} failed: {error}"),
                Err(_) => panic!("request to {url} timed out"),
            };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|collected| collected.to_bytes().to_vec())
            .unwrap_or_default();
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// A notification endpoint on loopback that answers validation requests and records the rest.
pub struct NotificationReceiver {
    pub url: String,
    pub received: mpsc::UnboundedReceiver<Value>,
    pub validations: mpsc::UnboundedReceiver<String>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Validation {
    Answer,
    Refuse,
}

pub async fn start_receiver(validation: Validation) -> NotificationReceiver {
    use axum::extract::{Query, State};
    use axum::response::IntoResponse;
    type Channels = (
        mpsc::UnboundedSender<Value>,
        mpsc::UnboundedSender<String>,
        Validation,
    );
    async fn handle(
        State(channels): State<Arc<Channels>>,
        Query(query): Query<Vec<(String, String)>>,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        if let Some((_, token)) = query.iter().find(|(key, _)| key == "validationToken") {
            let _ = channels.1.send(token.clone());
            return match channels.2 {
                Validation::Answer => {
                    ([("content-type", "text/plain")], token.clone()).into_response()
                }
                Validation::Refuse => axum::http::StatusCode::FORBIDDEN.into_response(),
            };
        }
        let _ = channels
            .0
            .send(serde_json::from_slice(&body).unwrap_or(Value::Null));
        axum::http::StatusCode::ACCEPTED.into_response()
    }
    let (sender, received) = mpsc::unbounded_channel();
    let (validation_sender, validations) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(handle).with_state(Arc::new((
        sender,
        validation_sender,
        validation,
    )));
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(error) => panic!("receiver bind: {error}"),
    };
    let port = listener
        .local_addr()
        .map(|address| address.port())
        .unwrap_or_default();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    NotificationReceiver {
        url: format!("http://127.0.0.1:{port}/notify"),
        received,
        validations,
    }
}

impl NotificationReceiver {
    /// The next notification, waiting at most ten seconds (delivery is asynchronous).
    pub async fn next(&mut self) -> Value {
        match tokio::time::timeout(Duration::from_secs(10), self.received.recv()).await {
            Ok(Some(value)) => value,
            _ => panic!("no notification arrived within 10 s"),
        }
    }
}

/// Follows `@odata.nextLink` from `first_url`; returns every item and the number of pages.
pub async fn collect_pages(
    harness: &Harness,
    first_url: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut url = first_url.to_string();
    let mut pages = 0;
    loop {
        let reply = harness.get(&url, token, headers).await;
        assert_eq!(reply.status, 200, "{url}: {}", reply.text());
        let body = reply.json();
        pages += 1;
        items.extend(body["value"].as_array().cloned().unwrap_or_default());
        match body["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => return (items, pages),
        }
        assert!(pages < 100, "paging does not end");
    }
}
