//! Outgoing HTTP: subscription validation handshakes, change notifications and lifecycle
//! notifications, with retries and the drop-notifications fault.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::faults::lock;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("'{0}' is not an absolute http(s) URL")]
    BadUrl(String),
    #[error("could not connect to {0}")]
    Connect(String),
    #[error("TLS handshake with {0} failed")]
    Tls(String),
    #[error("HTTP exchange with {0} failed")]
    Http(String),
    #[error("{0} did not answer in time")]
    Timeout(String),
}

/// A minimal HTTP/1.1 client: one connection per request, which is all notifications need.
pub struct HttpClient {
    tls: Arc<rustls::ClientConfig>,
}

impl HttpClient {
    /// Trusts the given CA certificates (the emulator's own plus any configured extra ones).
    pub fn new(trusted: Vec<rustls_pki_types::CertificateDer<'static>>) -> HttpClient {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in trusted {
            // A certificate the store rejects is simply not trusted; the handshake then fails
            // with a clear error for that URL, which is the right place to report it.
            let _ = roots.add(certificate);
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map(|builder| builder.with_root_certificates(roots).with_no_client_auth());
        let config = match config {
            Ok(config) => config,
            // The ring provider always supports the default versions; an empty config
            // is only reachable if that ever changes, and would fail every https handshake.
            Err(_) => rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        HttpClient {
            tls: Arc::new(config),
        }
    }

    /// POSTs `body` and returns the status and body of the answer.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), DeliveryError> {
        match tokio::time::timeout(timeout, self.post_inner(url, content_type, body)).await {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::Timeout(redact(url))),
        }
    }

    async fn post_inner(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), DeliveryError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| DeliveryError::BadUrl(redact(url)))?;
        let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        let host = uri
            .host()
            .ok_or_else(|| DeliveryError::BadUrl(redact(url)))?
            .trim_matches(['[', ']'])
            .to_string();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(DeliveryError::BadUrl(redact(url))),
        };
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = uri
            .authority()
            .map(|authority| authority.as_str().to_string())
            .unwrap_or_else(|| host.clone());
        let path = uri
            .path_and_query()
            .map(|path| path.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        let stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|_| DeliveryError::Connect(authority.clone()))?;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, &authority)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(
                hyper::header::USER_AGENT,
                "m365-emulator (Microsoft Graph change notifications)",
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| DeliveryError::BadUrl(redact(url)))?;
        if scheme == "https" {
            let server_name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|_| DeliveryError::BadUrl(redact(url)))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls));
            let tls_stream = connector
                .connect(server_name, stream)
                .await
                .map_err(|_| DeliveryError::Tls(authority.clone()))?;
            exchange(TokioIo::new(tls_stream), request, &authority).await
        } else {
            exchange(TokioIo::new(stream), request, &authority).await
        }
    }
}

async fn exchange<Io>(
    io: Io,
    request: hyper::Request<Full<Bytes>>,
    authority: &str,
) -> Result<(u16, Vec<u8>), DeliveryError>
where
    Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| DeliveryError::Http(authority.to_string()))?;
    tokio::spawn(async move {
        // The connection ends when the exchange is done or the peer hangs up; either is fine.
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| DeliveryError::Http(authority.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| DeliveryError::Http(authority.to_string()))?
        .to_bytes();
    Ok((status, body.to_vec()))
}

/// Drops the query from a URL for messages: subscribers put secrets in query strings.
pub fn redact(url: &str) -> String {
    url.split('?').next().unwrap_or_default().to_string()
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
pub fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len() * 3);
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

/// One notification POST to make.
pub struct Delivery {
    pub url: String,
    pub body: Value,
    pub kind: DeliveryKind,
    /// Where to send `missed` if every attempt fails (the subscription's lifecycle URL).
    pub missed_url: Option<String>,
    pub missed_body: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryKind {
    Change,
    Lifecycle,
}

pub struct Notifier {
    sender: mpsc::UnboundedSender<Delivery>,
    pub client: Arc<HttpClient>,
    pub retry_delays: Vec<Duration>,
    pub delivery_timeout: Duration,
    pub validation_timeout: Duration,
}

impl Notifier {
    pub fn new(
        client: HttpClient,
        retry_delays: Vec<Duration>,
    ) -> (Notifier, mpsc::UnboundedReceiver<Delivery>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let notifier = Notifier {
            sender,
            client: Arc::new(client),
            retry_delays,
            // Graph wants an answer within 3 seconds for notifications and 10 for validation.
            delivery_timeout: Duration::from_secs(3),
            validation_timeout: Duration::from_secs(10),
        };
        (notifier, receiver)
    }

    pub fn enqueue(&self, delivery: Delivery) {
        // The receiver only goes away at shutdown, when losing notifications is expected.
        let _ = self.sender.send(delivery);
    }
}

/// Runs until shutdown, making each delivery in its own task so one slow subscriber never
/// delays another.
pub async fn run_deliveries(
    mut receiver: mpsc::UnboundedReceiver<Delivery>,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            delivery = receiver.recv() => {
                let Some(delivery) = delivery else { break };
                let state = Arc::clone(&state);
                tokio::spawn(async move { deliver(delivery, state).await });
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn deliver(delivery: Delivery, state: Arc<AppState>) {
    if delivery.kind == DeliveryKind::Change {
        let drop_rate = lock(&state.faults).drop_notifications_rate;
        if drop_rate > 0.0 && state.ids.unit() < drop_rate {
            state.counters.count("notifications.dropped");
            tracing::debug!(url = %redact(&delivery.url), "dropped a change notification (fault)");
            return;
        }
    }
    let body = serde_json::to_vec(&delivery.body).unwrap_or_default();
    let mut attempt = 0usize;
    loop {
        let result = state
            .notifier
            .client
            .post(
                &delivery.url,
                "application/json; charset=utf-8",
                body.clone(),
                state.notifier.delivery_timeout,
            )
            .await;
        match result {
            Ok((status, _)) if (200..300).contains(&status) => {
                state.counters.count(match delivery.kind {
                    DeliveryKind::Change => "notifications.sent",
                    DeliveryKind::Lifecycle => "notifications.lifecycle_sent",
                });
                return;
            }
            Ok((status, _)) => {
                tracing::info!(url = %redact(&delivery.url), status, "notification endpoint refused a notification")
            }
            Err(error) => tracing::info!(%error, "notification delivery failed"),
        }
        let Some(delay) = state.notifier.retry_delays.get(attempt) else {
            break;
        };
        attempt += 1;
        tokio::time::sleep(*delay).await;
    }
    state.counters.count("notifications.failed");
    // Graph tells a subscriber it missed notifications through its lifecycle endpoint.
    if let (Some(url), Some(body)) = (delivery.missed_url, delivery.missed_body) {
        state.notifier.enqueue(Delivery {
            url,
            body,
            kind: DeliveryKind::Lifecycle,
            missed_url: None,
            missed_body: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved_characters() {
        assert_eq!(
            percent_encode("Validation: a b/c"),
            "Validation%3A%20a%20b%2Fc"
        );
        assert_eq!(percent_encode("A-z_0.9~"), "A-z_0.9~");
    }

    #[test]
    fn redact_drops_the_query() {
        assert_eq!(
            redact("https://hook.example/path?code=secret"),
            "https://hook.example/path"
        );
    }
}
