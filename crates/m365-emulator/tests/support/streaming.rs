//! GetStreamingEvents connections held open on their own [`Connection`]s: opening one and
//! telling an admitted stream from Exchange's refusal (`ErrorExceededConnectionCount`),
//! reading a stream up to a marker, and waiting for the emulator's count of open connections.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::BodyExt;

use super::ews::count;
use super::raw_connection::Connection;
use super::Harness;

/// Exchange's text for a stream refused for the hanging-connection limit.
pub const REFUSED_TEXT: &str = "You have exceeded the available concurrent connections for your account. Try again once your other requests have completed.";

/// A GetStreamingEvents connection that was admitted: its TCP connection and the stream.
pub struct OpenStream {
    _connection: Connection,
    pub body: hyper::body::Incoming,
    pub text: String,
}

/// What opening a stream gave: admitted (its first `ConnectionStatus` OK read), or the whole
/// answer of a refusal.
pub enum Opened {
    Stream(OpenStream),
    Refused(u16, String),
}

/// Sends `request` (a GetStreamingEvents envelope) as `auth` on a connection of its own.
pub async fn open_stream(
    harness: &Harness,
    auth: &str,
    headers: &[(&str, &str)],
    request: String,
) -> Opened {
    let mut connection = Connection::open(harness).await;
    let response = connection
        .send_with("POST", "/EWS/Exchange.asmx", Some(auth), headers, request)
        .await;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = String::new();
    // An admitted stream starts with OK; a refusal is one whole envelope and the end.
    loop {
        if text.contains("<m:ConnectionStatus>OK</m:ConnectionStatus>") {
            return Opened::Stream(OpenStream {
                _connection: connection,
                body,
                text,
            });
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(data));
                }
            }
            _ => return Opened::Refused(status, text),
        }
    }
}

/// The stream `opened` admitted; the test fails, naming `what`, if it was refused.
pub fn admitted(opened: Opened, what: &str) -> OpenStream {
    match opened {
        Opened::Stream(stream) => stream,
        Opened::Refused(status, text) => panic!("{what} was refused: HTTP {status} {text}"),
    }
}

/// Checks that `opened` is Exchange's refusal: HTTP 200 and one `GetStreamingEventsResponse`
/// whose message has `ResponseClass="Error"` and `ErrorExceededConnectionCount`.
pub fn assert_refused(opened: Opened, what: &str) {
    match opened {
        Opened::Stream(stream) => panic!("{what} was admitted: {}", stream.text),
        Opened::Refused(status, text) => {
            assert_eq!(status, 200, "{what}: {text}");
            assert!(
                text.contains(r#"<m:GetStreamingEventsResponseMessage ResponseClass="Error">"#),
                "{what}: {text}"
            );
            assert!(
                text.contains("<m:ResponseCode>ErrorExceededConnectionCount</m:ResponseCode>"),
                "{what}: {text}"
            );
            assert!(text.contains(REFUSED_TEXT), "{what}: {text}");
            assert!(!text.contains("ConnectionStatus"), "{what}: {text}");
            assert!(!text.contains("<s:Fault>"), "{what}: {text}");
        }
    }
}

/// Waits (at most 10 s) until the emulator's open streaming connections per charged account
/// satisfy `condition`.
pub async fn wait_for_connections(
    harness: &Harness,
    condition: impl Fn(&BTreeMap<String, usize>) -> bool,
) {
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        harness
            .emulator
            .wait_for_ews_streaming_connections(condition),
    )
    .await;
    assert!(
        waited.is_ok(),
        "the open connections never got there: {:?}",
        harness.emulator.ews_streaming_connections()
    );
}

/// Reads a streaming body until the text read so far contains `marker` `times` times.
pub async fn read_until(
    body: &mut hyper::body::Incoming,
    text: &mut String,
    marker: &str,
    times: usize,
) {
    while count(text, marker) < times {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(data));
                }
            }
            other => panic!("the stream ended before {marker} #{times}: {other:?}; read: {text}"),
        }
    }
}
