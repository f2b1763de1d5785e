//! The service's SIP publishing end to end: calendars from the emulator become PUBLISH
//! requests (PIDF + RPID) at a presence server, and a restarted service continues its
//! publications instead of adding new ones beside them. The server here is a small in-test
//! one (`common/sip.rs`); the publisher itself is proven against a real Kamailio in
//! `crates/publish-sip/tests/kamailio.rs`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use calbridge::clock::{Clock, ManualClock};
use common::sip::PresenceServer;
use common::*;
use m365_emulator::{Emulator, EmulatorConfig};

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
    let server = PresenceServer::start().await;
    let sip_server = server.address.clone();
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
        let latest = server.latest_by_uri();
        expected
            .keys()
            .all(|uri| latest.contains_key(uri))
            .then_some(())
    })
    .await;
    let latest = server.latest_by_uri();
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
        server
            .seen()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_service_continues_its_publications_instead_of_adding_new_ones() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(8, 5))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let server = PresenceServer::start().await;
    let clock = ManualClock::new(whole_second(jiff::Timestamp::now()));
    let config = |public_url: &str| {
        let mut config = config_for(&ready, data_dir.path(), public_url, None);
        let mut sip =
            calbridge_publish_sip::SipPublisherConfig::new(server.address.clone(), "pbx.test");
        sip.max_requests_per_second = 1000;
        config.publish.sip = Some(sip);
        config
    };
    let published_by_all = |running: &calbridge::service::RunningService| -> Vec<String> {
        let (publisher, addresses) = running.sip.as_ref().expect("SIP is configured");
        let uris: Vec<String> = running
            .hub
            .people()
            .iter()
            .filter_map(|person| addresses.cached(person))
            .collect();
        assert!(!uris.is_empty());
        uris.into_iter()
            .filter(|uri| {
                publisher
                    .status(uri)
                    .is_some_and(|status| status.etag.is_some())
            })
            .collect()
    };

    let (listener, public_url) = listen(0).await;
    let first = start_service(config(&public_url), Arc::new(clock.clone()), listener).await;
    let people = first.hub.n_people();
    let uris = wait_for("everyone published", PATIENCE, || {
        let published = published_by_all(&first);
        (published.len() == people).then_some(published)
    })
    .await;
    first.shutdown().await;
    let before = server.seen().len();
    assert!(
        uris.iter()
            .all(|uri| server.live_by_uri().get(uri).map(Vec::len) == Some(1)),
        "one publication per person before the restart"
    );

    let (listener, public_url) = listen(0).await;
    let second = start_service(config(&public_url), Arc::new(clock.clone()), listener).await;
    let after = wait_for("everyone published again", PATIENCE, || {
        let after = server.seen().split_off(before);
        uris.iter()
            .all(|uri| after.iter().any(|publish| &publish.request_uri == uri))
            .then_some(after)
    })
    .await;
    for uri in &uris {
        let first_again = after
            .iter()
            .find(|publish| &publish.request_uri == uri)
            .unwrap_or_else(|| panic!("{uri} is published after the restart"));
        assert!(
            first_again.if_match.is_some() && first_again.status == 200,
            "{uri}: the restarted service modifies the publication it made before: {first_again:?}"
        );
        assert_eq!(
            server.live_by_uri().get(uri).map(Vec::len),
            Some(1),
            "{uri} has one publication at the server, not two"
        );
    }
    second.shutdown().await;
    emulator.shutdown().await;
}
