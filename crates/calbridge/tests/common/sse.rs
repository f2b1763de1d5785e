//! A client of the service's live presence stream (`/api/v1/presence/stream`), reading the
//! server-sent events as they arrive and keeping every one for later counting.

use std::time::{Duration, Instant};

use serde_json::Value;

/// One server-sent event: its `event:` name and its `data:` parsed as JSON.
#[derive(Debug, Clone)]
pub struct ServerEvent {
    pub name: String,
    pub data: Value,
}

pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
    /// Every event read so far, in order.
    pub seen: Vec<ServerEvent>,
}

impl EventStream {
    /// Opens the stream of the service at `base` (`http://host:port`). When this returns the
    /// service has answered, so it follows the hub's changes from here on.
    pub async fn connect(base: &str, token: &str) -> EventStream {
        let http = calbridge_net::build_http_client(None).expect("an HTTP client");
        let response = http
            .get(format!("{base}/api/v1/presence/stream"))
            .bearer_auth(token)
            .send()
            .await
            .expect("the stream answers");
        assert_eq!(response.status().as_u16(), 200, "the stream opens");
        EventStream {
            response,
            buffer: String::new(),
            seen: Vec::new(),
        }
    }

    /// Reads events until one satisfies `wanted` and returns it; fails the test with `what` and
    /// the events seen after `patience`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        patience: Duration,
        wanted: impl Fn(&ServerEvent) -> bool,
    ) -> ServerEvent {
        let deadline = Instant::now() + patience;
        loop {
            while let Some(event) = self.take_buffered() {
                self.seen.push(event.clone());
                if wanted(&event) {
                    return event;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) => panic!("the stream ended while waiting for {what}"),
                Ok(Err(error)) => panic!("the stream failed while waiting for {what}: {error}"),
                Err(_) => panic!(
                    "timed out after {patience:?} waiting for {what}; events seen: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// The next complete event in the buffer; comments (keep-alives) are skipped.
    fn take_buffered(&mut self) -> Option<ServerEvent> {
        loop {
            let normalized = self.buffer.replace("\r\n", "\n");
            self.buffer = normalized;
            let end = self.buffer.find("\n\n")?;
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut name = "message".to_string();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            if data.is_empty() {
                continue;
            }
            let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            return Some(ServerEvent { name, data });
        }
    }
}
