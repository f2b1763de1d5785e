//! The service's SIP publishing end to end: calendars from the emulator become PUBLISH
//! requests (PIDF + RPID) at a presence server. The server here is a small in-test UDP
//! responder that records every request; the publisher itself is proven against a real
//! Kamailio in `crates/publish-sip/tests/kamailio.rs`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calbridge::clock::{Clock, ManualClock};
use common::*;
use m365_emulator::{Emulator, EmulatorConfig};

#[derive(Debug, Clone)]
struct Publish {
    request_uri: String,
    if_match: Option<String>,
    expires: Option<String>,
    body: String,
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// Answers every PUBLISH with 200 OK and a fresh entity tag, recording it.
async fn presence_server() -> (String, Arc<Mutex<Vec<Publish>>>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind UDP");
    let address = socket.local_addr().expect("local address").to_string();
    let seen: Arc<Mutex<Vec<Publish>>> = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65536];
        let mut n_etags = 0u64;
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
            n_etags += 1;
            let expires = header(head, "Expires").map(str::to_string);
            let response = format!(
                "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=server\r\nCall-ID: {}\r\nCSeq: {}\r\nSIP-ETag: etag{n_etags}\r\nExpires: {}\r\nContent-Length: 0\r\n\r\n",
                header(head, "Via").unwrap_or(""),
                header(head, "From").unwrap_or(""),
                header(head, "To").unwrap_or(""),
                header(head, "Call-ID").unwrap_or(""),
                header(head, "CSeq").unwrap_or(""),
                expires.clone().unwrap_or_else(|| "3600".to_string()),
            );
            record.lock().expect("lock").push(Publish {
                request_uri,
                if_match: header(head, "SIP-If-Match").map(str::to_string),
                expires,
                body: body.to_string(),
            });
            let _ = socket.send_to(response.as_bytes(), peer).await;
        }
    });
    (address, seen)
}

fn latest_by_uri(seen: &Arc<Mutex<Vec<Publish>>>) -> HashMap<String, Publish> {
    let mut latest = HashMap::new();
    for publish in seen.lock().expect("lock").iter() {
        if !publish.body.is_empty() {
            latest.insert(publish.request_uri.clone(), publish.clone());
        }
    }
    latest
}

fn xml_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_person_is_published_and_a_calendar_change_is_published_as_a_modify() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(12, 5))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let (sip_server, seen) = presence_server().await;
    let mut config = config_for(&ready, data_dir.path(), &public_url, None);
    let mut sip = calbridge_publish_sip::SipPublisherConfig::new(sip_server, "pbx.test");
    sip.max_requests_per_second = 1000;
    config.publish.sip = Some(sip);
    // The service's clock stands still, so that no meeting starts or ends between the
    // decisions read below and the PUBLISHes compared with them.
    let clock = ManualClock::new(whole_second(jiff::Timestamp::now()));
    // The person who gets a meeting below is free from an hour ago to three hours on.
    let graph = GraphClient::new(&ready).await;
    let members = graph
        .group_members(ready.group_id.as_deref().expect("a group"))
        .await;
    let user = members.first().expect("a generated person").clone();
    let now = clock.now();
    graph.free_around(&user, now).await;
    let running = start_service(config, Arc::new(clock.clone()), listener).await;

    // Every person with a decision reaches the presence server with their note.
    let people = running.hub.people();
    assert!(people.len() >= 12, "{} people", people.len());
    let expected: HashMap<String, (String, String)> = people
        .iter()
        .filter_map(|person| {
            let (decision, _) = running.hub.decision(person)?;
            Some((
                format!("sip:{}@pbx.test", person.address.local_part()),
                (
                    decision.activity.as_str().to_string(),
                    decision.note.clone(),
                ),
            ))
        })
        .collect();
    wait_for("a PUBLISH per person", Duration::from_secs(20), || {
        let latest = latest_by_uri(&seen);
        expected
            .keys()
            .all(|uri| latest.contains_key(uri))
            .then_some(())
    })
    .await;
    let latest = latest_by_uri(&seen);
    for (uri, (activity, note)) in &expected {
        let publish = &latest[uri];
        assert!(
            publish.body.contains(&xml_escaped(note)),
            "{uri}: the PIDF carries the note {note:?}: {}",
            publish.body
        );
        let basic = if activity == "busy" || activity == "dnd" {
            "closed"
        } else {
            "open"
        };
        assert!(
            publish.body.contains(&format!("<basic>{basic}</basic>")),
            "{uri} ({activity}) is {basic}: {}",
            publish.body
        );
        assert_eq!(
            publish.if_match, None,
            "the first PUBLISH of {uri} is an initial one"
        );
    }

    // A meeting created now makes a free person busy: a modify with SIP-If-Match and RPID.
    let free = people
        .iter()
        .find(|person| person.address.as_str() == user)
        .expect("the free person is followed")
        .clone();
    assert!(
        running.hub.decision(&free).is_some_and(|(decision, _)| {
            decision.activity.as_str() == "available" && decision.current.is_none()
        }),
        "{user} is free"
    );
    graph
        .create_event(
            &user,
            "Escalation <call> & review",
            now - jiff::SignedDuration::from_mins(5),
            now + jiff::SignedDuration::from_mins(30),
            "busy",
        )
        .await;
    let uri = format!("sip:{}@pbx.test", free.address.local_part());
    let modify = wait_for("the modify PUBLISH", Duration::from_secs(20), || {
        let published = seen.lock().expect("lock").clone();
        published
            .into_iter()
            .rev()
            .find(|publish| publish.request_uri == uri && publish.body.contains("meeting"))
    })
    .await;
    assert!(
        modify.if_match.is_some(),
        "a change to a live publication is a modify"
    );
    assert!(
        modify.body.contains("<basic>closed</basic>"),
        "{}",
        modify.body
    );
    assert!(
        modify
            .body
            .contains("Escalation &lt;call&gt; &amp; review until"),
        "the note is XML-escaped: {}",
        modify.body
    );
    assert!(
        modify.body.contains("until=\""),
        "RPID carries until: {}",
        modify.body
    );
    assert_eq!(modify.expires.as_deref(), Some("3600"));

    // The admin API shows the publish state.
    let api = Api::new(&running);
    let users = api.get_authorized("/api/v1/users").await;
    let row = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|row| row["address"] == free.address.as_str())
        .expect("the person is listed")
        .clone();
    assert_eq!(row["sip"]["uri"], uri.as_str());
    assert_eq!(row["sip"]["published"], true);
    running.shutdown().await;
    emulator.shutdown().await;
}
