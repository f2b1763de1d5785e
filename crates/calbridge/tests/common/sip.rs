//! A small in-test SIP presence server (an RFC 3903 event state compositor): it answers every
//! PUBLISH, keeps each publication under its entity-tag as a real one does (a modify or
//! refresh with a known `SIP-If-Match` gets a new tag for the same publication, an unknown tag
//! gets 412, `Expires: 0` removes it), and records every request. The publisher itself is
//! proven against a real Kamailio in `crates/publish-sip/tests/kamailio.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Publish {
    pub request_uri: String,
    pub if_match: Option<String>,
    pub expires: Option<String>,
    pub body: String,
    /// Who sent it: one address per calbridge process.
    pub peer: SocketAddr,
    /// The answer's status code.
    pub status: u16,
}

/// A living publication: its URI, who last sent it, when it expires.
#[derive(Debug, Clone)]
struct Publication {
    uri: String,
    peer: SocketAddr,
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    seen: Vec<Publish>,
    /// By entity-tag.
    live: HashMap<String, Publication>,
    next_tag: u64,
}

#[derive(Clone)]
pub struct PresenceServer {
    pub address: String,
    state: Arc<Mutex<State>>,
}

pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

impl PresenceServer {
    /// On a random UDP port of 127.0.0.1, until the test's runtime ends.
    pub async fn start() -> PresenceServer {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind UDP");
        let address = socket.local_addr().expect("local address").to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let server = PresenceServer {
            address,
            state: state.clone(),
        };
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 65536];
            loop {
                let Ok((length, peer)) = socket.recv_from(&mut buffer).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&buffer[..length]).to_string();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let request_line = head.lines().next().unwrap_or("");
                if !request_line.starts_with("PUBLISH ") {
                    continue;
                }
                let request_uri = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let expires = header(head, "Expires").map(str::to_string);
                let if_match = header(head, "SIP-If-Match").map(str::to_string);
                let lifetime: u64 = expires
                    .as_deref()
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(3600);
                let (status, etag) = {
                    let mut state = state.lock().expect("lock");
                    let known = if_match
                        .as_ref()
                        .and_then(|tag| state.live.remove(tag))
                        .filter(|publication| publication.expires_at > Instant::now());
                    let answer = match (&if_match, known) {
                        (Some(_), None) => (412, None),
                        (_, _) if lifetime == 0 => (200, None),
                        (_, _) => {
                            state.next_tag += 1;
                            let tag = format!("etag{}", state.next_tag);
                            state.live.insert(
                                tag.clone(),
                                Publication {
                                    uri: request_uri.clone(),
                                    peer,
                                    expires_at: Instant::now() + Duration::from_secs(lifetime),
                                },
                            );
                            (200, Some(tag))
                        }
                    };
                    state.seen.push(Publish {
                        request_uri,
                        if_match,
                        expires: expires.clone(),
                        body: body.to_string(),
                        peer,
                        status: answer.0,
                    });
                    answer
                };
                let reason = if status == 200 {
                    "OK"
                } else {
                    "Conditional Request Failed"
                };
                let tag_line = etag
                    .map(|tag| format!("SIP-ETag: {tag}\r\n"))
                    .unwrap_or_default();
                let response = format!(
                    "SIP/2.0 {status} {reason}\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=server\r\nCall-ID: {}\r\nCSeq: {}\r\n{tag_line}Expires: {lifetime}\r\nContent-Length: 0\r\n\r\n",
                    header(head, "Via").unwrap_or(""),
                    header(head, "From").unwrap_or(""),
                    header(head, "To").unwrap_or(""),
                    header(head, "Call-ID").unwrap_or(""),
                    header(head, "CSeq").unwrap_or(""),
                );
                let _ = socket.send_to(response.as_bytes(), peer).await;
            }
        });
        server
    }

    /// Every PUBLISH so far, in order.
    pub fn seen(&self) -> Vec<Publish> {
        self.state.lock().expect("lock").seen.clone()
    }

    /// The last PUBLISH with a body per URI.
    pub fn latest_by_uri(&self) -> HashMap<String, Publish> {
        let mut latest = HashMap::new();
        for publish in self.seen() {
            if !publish.body.is_empty() {
                latest.insert(publish.request_uri.clone(), publish);
            }
        }
        latest
    }

    /// The publications alive now per URI, with who sent each.
    pub fn live_by_uri(&self) -> HashMap<String, Vec<SocketAddr>> {
        let now = Instant::now();
        let mut live: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for publication in self.state.lock().expect("lock").live.values() {
            if publication.expires_at > now {
                live.entry(publication.uri.clone())
                    .or_default()
                    .push(publication.peer);
            }
        }
        live
    }
}
