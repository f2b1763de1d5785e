//! The publisher against a scripted SIP responder on loopback: rate limit, ordering,
//! coalescing of bursts, retransmission, 412/423 handling and digest authentication. These need
//! no external service and always run.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calbridge_domain::Secret;
use calbridge_publish_sip::{Activity, PresenceState, SipPublisher, SipPublisherConfig};
use md5::{Digest as _, Md5};
use tokio::net::UdpSocket;
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Received {
    uri: String,
    head: String,
    body: String,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// What the responder does with the n-th request (0-based): `None` drops it, `Some((status
/// line, extra headers))` answers.
type Script = dyn Fn(&Received, usize) -> Option<(String, Vec<String>)> + Send + Sync;

struct Responder {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    async fn start(script: Box<Script>) -> Responder {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind responder");
        let address = socket.local_addr().expect("responder address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buffer).await else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let uri = head.split(' ').nth(1).unwrap_or_default().to_owned();
                let request = Received {
                    uri,
                    head: head.to_owned(),
                    body: body.to_owned(),
                    at: Instant::now(),
                };
                let index = {
                    let mut log = log.lock().expect("log");
                    log.push(request.clone());
                    log.len() - 1
                };
                let Some((status, extra)) = script(&request, index) else {
                    continue;
                };
                let mut response = format!("SIP/2.0 {status}\r\n");
                for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
                    if let Some(value) = request.header(name) {
                        let value = if name == "To" {
                            format!("{value};tag=responder")
                        } else {
                            value.to_owned()
                        };
                        response.push_str(&format!("{name}: {value}\r\n"));
                    }
                }
                for header in extra {
                    response.push_str(&header);
                    response.push_str("\r\n");
                }
                response.push_str("Content-Length: 0\r\n\r\n");
                let _ = socket.send_to(response.as_bytes(), from).await;
            }
        });
        Responder {
            address,
            received,
            task,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("log").clone()
    }

    async fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "only {} of {count} requests within {within:?}",
            self.received().len()
        );
    }
}

fn ok_with_etag(request: &Received, index: usize) -> Option<(String, Vec<String>)> {
    let expires = request.header("Expires").unwrap_or("3600").to_owned();
    Some((
        "200 OK".into(),
        vec![
            format!("SIP-ETag: etag-{index}"),
            format!("Expires: {expires}"),
        ],
    ))
}

fn config(server: SocketAddr, max_requests_per_second: u32) -> SipPublisherConfig {
    let mut config = SipPublisherConfig::new(server.to_string(), "pbx.example.com");
    config.max_requests_per_second = max_requests_per_second;
    config.t1_milliseconds = 50;
    config.transaction_timeout_milliseconds = 2_000;
    config
}

fn state(note: &str) -> PresenceState {
    PresenceState {
        activity: Activity::Busy,
        category: None,
        note: note.to_owned(),
        until: None,
    }
}

async fn wait_published(publisher: &SipPublisher, uri: &str, note: &str) {
    for _ in 0..400 {
        if publisher
            .status(uri)
            .and_then(|s| s.published_note)
            .as_deref()
            == Some(note)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{uri} never published {note:?}: {:?}",
        publisher.status(uri)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_changes_goes_out_in_order_at_the_configured_rate() {
    let responder = Responder::start(Box::new(ok_with_etag)).await;
    let rate = 100;
    let publisher = SipPublisher::start(config(responder.address, rate))
        .await
        .expect("start");
    let uris: Vec<String> = (0..200)
        .map(|i| format!("sip:user-{i:03}@pbx.example.com"))
        .collect();
    for uri in &uris {
        publisher.set(uri.clone(), state("Busy #busy"));
    }
    let received = responder.wait_for(200, Duration::from_secs(20)).await;
    // Give a stray duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = responder.received().len().max(received.len());
    assert_eq!(received, 200, "each change published exactly once");
    let requests = responder.received();
    let order: Vec<&str> = requests.iter().map(|r| r.uri.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        uris.iter().map(String::as_str).collect::<Vec<_>>(),
        "every change published once"
    );
    // The worker starts the transactions in the order set, one every 10 ms; each sends from
    // its own task, so on a loaded machine neighbours can swap (CI once saw 041, 042, 040).
    // Nothing may arrive more than a few places from where it was set.
    let displaced: Vec<(usize, &str)> = order
        .iter()
        .enumerate()
        .filter(|(at, uri)| {
            let set_at = uris.iter().position(|u| u == *uri).unwrap_or(usize::MAX);
            set_at.abs_diff(*at) > 3
        })
        .map(|(at, uri)| (at, *uri))
        .collect();
    assert!(
        displaced.is_empty(),
        "published far out of the order set: {displaced:?}"
    );
    // No one-second window holds more than the configured rate (+1 for the window's edges).
    // A slow machine only lowers these counts, so the assertion does not depend on speed.
    let most_in_a_second = (0..requests.len())
        .map(|i| {
            requests[i..]
                .iter()
                .take_while(|r| r.at - requests[i].at < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most_in_a_second <= rate as usize + 1,
        "{most_in_a_second} requests within one second"
    );
    let counters = publisher.counters();
    assert_eq!(
        (counters.requests_sent, counters.successes, counters.queued),
        (200, 200, 0),
        "{counters:?}"
    );
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_state_wins_after_a_burst_of_changes_for_one_uri() {
    let responder = Responder::start(Box::new(ok_with_etag)).await;
    let publisher = SipPublisher::start(config(responder.address, 5))
        .await
        .expect("start");
    let uri = "sip:burst@pbx.example.com".to_owned();
    for i in 0..100 {
        publisher.set(uri.clone(), state(&format!("change {i}")));
    }
    wait_published(&publisher, &uri, "change 99").await;
    let requests = responder.received();
    assert!(
        requests.len() <= 3,
        "a burst is coalesced, not replayed: {} requests",
        requests.len()
    );
    let last = requests.last().expect("at least one request");
    assert!(last.body.contains("change 99</"), "{}", last.body);
    assert_eq!(
        requests[0].header("SIP-If-Match"),
        None,
        "the first is an initial PUBLISH"
    );
    for later in &requests[1..] {
        assert!(
            later.header("SIP-If-Match").is_some(),
            "later ones modify: {}",
            later.head
        );
    }
    // Setting the same state again publishes nothing.
    publisher.set(uri.clone(), state("change 99"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(responder.received().len(), requests.len());
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_are_retransmitted_and_412_leads_to_a_fresh_initial_publish() {
    let responder = Responder::start(Box::new(|request: &Received, index: usize| match index {
        // The first two datagrams are lost.
        0 | 1 => None,
        // The modify meets a server that forgot the publication.
        3 => Some(("412 Conditional Request Failed".into(), vec![])),
        _ => ok_with_etag(request, index),
    }))
    .await;
    let publisher = SipPublisher::start(config(responder.address, 50))
        .await
        .expect("start");
    let uri = "sip:lossy@pbx.example.com".to_owned();
    publisher.set(uri.clone(), state("first"));
    wait_published(&publisher, &uri, "first").await;
    assert!(
        publisher.counters().retransmissions >= 2,
        "{:?}",
        publisher.counters()
    );
    publisher.set(uri.clone(), state("second"));
    wait_published(&publisher, &uri, "second").await;
    let requests = responder.received();
    assert_eq!(
        requests.len(),
        5,
        "3 copies of the initial, the modify, the fresh initial"
    );
    assert_eq!(
        requests[0].header("Via"),
        requests[2].header("Via"),
        "retransmissions reuse the branch"
    );
    assert_eq!(requests[3].header("SIP-If-Match"), Some("etag-2"));
    assert!(requests[3].body.contains("second</"));
    assert_eq!(
        requests[4].header("SIP-If-Match"),
        None,
        "after 412 the publish starts over"
    );
    assert!(
        requests[4].body.contains("second</"),
        "{}",
        requests[4].body
    );
    assert_eq!(
        publisher.status(&uri).and_then(|s| s.etag).as_deref(),
        Some("etag-4")
    );
    assert_eq!(publisher.counters().conditional_request_failed, 1);
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_too_brief_raises_expires_to_min_expires() {
    let responder = Responder::start(Box::new(|request: &Received, index: usize| match index {
        0 => Some((
            "423 Interval Too Brief".into(),
            vec!["Min-Expires: 7200".into()],
        )),
        _ => ok_with_etag(request, index),
    }))
    .await;
    let publisher = SipPublisher::start(config(responder.address, 50))
        .await
        .expect("start");
    let uri = "sip:brief@pbx.example.com".to_owned();
    publisher.set(uri.clone(), state("busy"));
    wait_published(&publisher, &uri, "busy").await;
    let requests = responder.received();
    assert_eq!(requests[0].header("Expires"), Some("3600"));
    assert_eq!(requests[1].header("Expires"), Some("7200"));
    publisher.shutdown().await;
}

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn auth_param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(", ").find_map(|part| {
        let part = part.strip_prefix("Digest ").unwrap_or(part);
        let (key, value) = part.split_once('=')?;
        (key == name).then(|| value.trim_matches('"'))
    })
}

/// A registrar-like responder that demands digest credentials for `calbridge` / `password`.
fn digest_checker(password: &'static str) -> Box<Script> {
    Box::new(move |request: &Received, index: usize| {
        let Some(credentials) = request.header("Authorization") else {
            return Some((
                "401 Unauthorized".into(),
                vec![r#"WWW-Authenticate: Digest realm="pbx.example.com", nonce="abc123", qop="auth", opaque="xyz""#.into()],
            ));
        };
        let ha1 = md5_hex(&format!("calbridge:pbx.example.com:{password}"));
        let ha2 = md5_hex(&format!(
            "PUBLISH:{}",
            auth_param(credentials, "uri").unwrap_or_default()
        ));
        let expected = md5_hex(&format!(
            "{ha1}:abc123:{}:{}:auth:{ha2}",
            auth_param(credentials, "nc").unwrap_or_default(),
            auth_param(credentials, "cnonce").unwrap_or_default()
        ));
        if auth_param(credentials, "response") == Some(expected.as_str())
            && auth_param(credentials, "opaque") == Some("xyz")
        {
            ok_with_etag(request, index)
        } else {
            Some(("403 Forbidden".into(), vec![]))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_challenges_are_answered_with_md5_qop_auth_credentials() {
    let responder = Responder::start(digest_checker("Circle Of Life")).await;
    let mut config = config(responder.address, 50);
    config.username = Some("calbridge".into());
    config.password = Some(Secret::new("Circle Of Life"));
    let publisher = SipPublisher::start(config).await.expect("start");
    let uri = "sip:guarded@pbx.example.com".to_owned();
    publisher.set(uri.clone(), state("busy"));
    wait_published(&publisher, &uri, "busy").await;
    let requests = responder.received();
    assert_eq!(requests.len(), 2);
    let credentials = requests[1]
        .header("Authorization")
        .expect("credentials on the retry");
    assert!(
        credentials.contains("qop=auth, nc=00000001"),
        "{credentials}"
    );
    assert_eq!(
        auth_param(credentials, "uri"),
        Some("sip:guarded@pbx.example.com")
    );
    assert_ne!(
        requests[0].header("CSeq"),
        requests[1].header("CSeq"),
        "the retry is a new request"
    );
    assert_eq!(publisher.counters().auth_challenges, 1);
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_become_an_error_that_does_not_show_the_password() {
    let responder = Responder::start(Box::new(|request: &Received, index: usize| {
        if request.header("Authorization").is_some() {
            return Some((
                "401 Unauthorized".into(),
                vec![
                    r#"WWW-Authenticate: Digest realm="pbx.example.com", nonce="n2", qop="auth""#
                        .into(),
                ],
            ));
        }
        let _ = index;
        Some((
            "401 Unauthorized".into(),
            vec![
                r#"WWW-Authenticate: Digest realm="pbx.example.com", nonce="n1", qop="auth""#
                    .into(),
            ],
        ))
    }))
    .await;
    let mut config = config(responder.address, 50);
    config.username = Some("calbridge".into());
    config.password = Some(Secret::new("hunter2-wrong"));
    let publisher = SipPublisher::start(config).await.expect("start");
    let uri = "sip:denied@pbx.example.com".to_owned();
    publisher.set(uri.clone(), state("busy"));
    let mut error = None;
    for _ in 0..100 {
        error = publisher.status(&uri).and_then(|s| s.last_error);
        if error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = error.expect("an error is reported");
    assert!(error.contains("rejected the credentials"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    assert_eq!(publisher.status(&uri).and_then(|s| s.etag), None);
    publisher.shutdown().await;
}
