//! Against a real Kamailio presence server (presence + presence_xml, `.ci/services/kamailio.cfg`):
//! calbridge publishes, a watcher of our own subscribes, and the tests read the PIDF Kamailio
//! forwards in NOTIFY.
//!
//! ```sh
//! .ci/services/kamailio.sh install && .ci/services/kamailio.sh start
//! CALBRIDGE_KAMAILIO=127.0.0.1:35060 cargo test -p calbridge-publish-sip --test kamailio
//! ```
//!
//! Tests use distinct user names and run in parallel, except the restart test, which takes an
//! exclusive lock because it wipes every publication on the server.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use calbridge_publish_sip::{
    Activity, PresenceState, PublishKind, ShowAsCategory, SipPublisher, SipPublisherConfig,
    Transport,
};
use support::watcher::{Notify, Watcher};
use tokio::sync::RwLock;

const DOMAIN: &str = "calbridge.test";

/// Readers: ordinary tests. Writer: the restart test.
static SERVER: RwLock<()> = RwLock::const_new(());

fn kamailio() -> Option<SocketAddr> {
    match std::env::var("CALBRIDGE_KAMAILIO") {
        Ok(address) if !address.is_empty() => {
            Some(address.parse().expect("CALBRIDGE_KAMAILIO is ip:port"))
        }
        _ => {
            if std::env::var("CALBRIDGE_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("CALBRIDGE_REQUIRE_SERVICES=1 but CALBRIDGE_KAMAILIO is not set (see .ci/services/kamailio.sh)");
            }
            eprintln!("skipped: Kamailio not running (set CALBRIDGE_KAMAILIO, see .ci/services/kamailio.sh)");
            None
        }
    }
}

fn unique_user(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

fn config(server: SocketAddr, transport: Transport, expires: u32) -> SipPublisherConfig {
    let mut config = SipPublisherConfig::new(server.to_string(), DOMAIN);
    config.transport = transport;
    config.expires_seconds = expires;
    config.t1_milliseconds = 200;
    config.transaction_timeout_milliseconds = 4_000;
    config
}

fn busy_meeting(note: &str, until_second: i64) -> PresenceState {
    PresenceState {
        activity: Activity::Busy,
        category: Some(ShowAsCategory::Busy),
        note: note.to_owned(),
        until: Some(jiff::Timestamp::from_second(until_second).expect("valid instant")),
    }
}

/// Waits (polling, at most 10 s) until the publisher reports that `note` is on the server.
async fn published(publisher: &SipPublisher, uri: &str, note: &str) {
    for _ in 0..200 {
        if let Some(status) = publisher.status(uri) {
            if status.published_note.as_deref() == Some(note) && status.etag.is_some() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{uri} never published {note:?}: {:?}, {:?}",
        publisher.status(uri),
        publisher.counters()
    );
}

fn has_note(note: &str) -> impl Fn(&Notify) -> bool + '_ {
    move |n: &Notify| n.body.contains(&format!("{note}</"))
}

async fn publishes_activity_until_and_note(transport: Transport) {
    let Some(server) = kamailio() else { return };
    let _shared = SERVER.read().await;
    let user = unique_user(match transport {
        Transport::Udp => "alice-udp",
        Transport::Tcp => "alice-tcp",
    });
    let uri = format!("sip:{user}@{DOMAIN}");
    let publisher = SipPublisher::start(config(server, transport, 3600))
        .await
        .expect("start");
    let note = "Meeting until 12:30 #busy #len:7:7 #until:1795428000 & <more>";
    publisher.set(uri.clone(), busy_meeting(note, 1_795_428_000));
    published(&publisher, &uri, note).await;

    let mut watcher = Watcher::new(server, &uri).await;
    let status = watcher.subscribe(60).await;
    assert!((200..300).contains(&status), "SUBSCRIBE answered {status}");
    let escaped = "Meeting until 12:30 #busy #len:7:7 #until:1795428000 &amp; &lt;more&gt;";
    let notify = watcher
        .notify_where(Duration::from_secs(5), has_note(escaped))
        .await;
    let body = &notify.body;
    assert!(body.contains("<basic>closed</basic>"), "{body}");
    assert!(body.contains("meeting/>"), "RPID activity meeting: {body}");
    assert!(
        body.contains("until=\"2026-11-23T10:00:00Z\""),
        "until: {body}"
    );
    assert!(
        notify.subscription_state.starts_with("active"),
        "{}",
        notify.subscription_state
    );

    // A change is a modify (body + SIP-If-Match) and reaches the watcher too.
    let out_of_office = PresenceState {
        activity: Activity::Away,
        category: Some(ShowAsCategory::Oof),
        note: "Out of office until Monday #oof".into(),
        until: None,
    };
    publisher.set(uri.clone(), out_of_office);
    let notify = watcher
        .notify_where(
            Duration::from_secs(5),
            has_note("Out of office until Monday #oof"),
        )
        .await;
    assert!(notify.body.contains("vacation/>"), "{}", notify.body);
    assert!(
        notify.body.contains("<basic>open</basic>"),
        "{}",
        notify.body
    );
    assert!(
        !notify.body.contains("meeting/>"),
        "modify replaced the old person: {}",
        notify.body
    );
    // Kamailio may send the NOTIFY before its 200 to the PUBLISH reaches us.
    published(&publisher, &uri, "Out of office until Monday #oof").await;
    let status = publisher.status(&uri).expect("status");
    assert_eq!(
        status.last_result.map(|r| (r.kind, r.status)),
        Some((PublishKind::Modify, Some(200))),
        "{:?}",
        publisher.counters()
    );
    let counters = publisher.counters();
    assert_eq!(
        (counters.successes, counters.failures),
        (2, 0),
        "{counters:?}"
    );
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_forwards_activity_until_and_note_published_over_udp() {
    publishes_activity_until_and_note(Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_forwards_activity_until_and_note_published_over_tcp() {
    publishes_activity_until_and_note(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_keeps_the_publication_alive_past_its_first_expiry() {
    let Some(server) = kamailio() else { return };
    let _shared = SERVER.read().await;
    let refreshed_uri = format!("sip:{}@{DOMAIN}", unique_user("refreshed"));
    let abandoned_uri = format!("sip:{}@{DOMAIN}", unique_user("abandoned"));
    let expires = 6;
    let publisher = SipPublisher::start(config(server, Transport::Udp, expires))
        .await
        .expect("start");
    // The control: published with the same lifetime, then never refreshed. It must be gone by
    // the end, which proves the refreshed one survives because of the refreshes.
    let abandoned = SipPublisher::start(config(server, Transport::Udp, expires))
        .await
        .expect("start");
    publisher.set(
        refreshed_uri.clone(),
        busy_meeting("Refreshed meeting #busy", 1_795_428_000),
    );
    abandoned.set(
        abandoned_uri.clone(),
        busy_meeting("Abandoned meeting #busy", 1_795_428_000),
    );
    published(&publisher, &refreshed_uri, "Refreshed meeting #busy").await;
    published(&abandoned, &abandoned_uri, "Abandoned meeting #busy").await;
    abandoned.shutdown().await;

    // Two and a half lifetimes plus Kamailio's 2 s sweep (clean_period in kamailio.cfg).
    tokio::time::sleep(Duration::from_secs(u64::from(expires) * 5 / 2 + 3)).await;

    let status = publisher.status(&refreshed_uri).expect("status");
    assert_eq!(
        status.last_result.as_ref().map(|r| (r.kind, r.status)),
        Some((PublishKind::Refresh, Some(200))),
        "{status:?}"
    );
    assert!(
        publisher.counters().successes >= 3,
        "initial + at least two refreshes: {:?}",
        publisher.counters()
    );

    let mut watcher = Watcher::new(server, &refreshed_uri).await;
    watcher.subscribe(60).await;
    let notify = watcher.notify_where(Duration::from_secs(5), |_| true).await;
    assert!(
        notify.body.contains("Refreshed meeting #busy</"),
        "still published: {}",
        notify.body
    );
    assert!(notify.body.contains("meeting/>"), "{}", notify.body);

    let mut control = Watcher::new(server, &abandoned_uri).await;
    control.subscribe(60).await;
    let notify = control.notify_where(Duration::from_secs(5), |_| true).await;
    assert!(
        !notify.body.contains("Abandoned meeting"),
        "the unrefreshed one expired: {}",
        notify.body
    );
    publisher.shutdown().await;
}

fn kamailio_script(server: SocketAddr, command: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.ci/services/kamailio.sh"
    );
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg(command)
        .env("CALBRIDGE_KAMAILIO_PORT", server.port().to_string())
        .output()
        .expect("run .ci/services/kamailio.sh");
    assert!(
        output.status.success(),
        "kamailio.sh {command}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_restart_is_recovered_by_a_fresh_publish_after_412() {
    let Some(server) = kamailio() else { return };
    let _exclusive = SERVER.write().await;
    let uri = format!("sip:{}@{DOMAIN}", unique_user("restart"));
    for transport in [Transport::Udp, Transport::Tcp] {
        let publisher = SipPublisher::start(config(server, transport, 3600))
            .await
            .expect("start");
        publisher.set(
            uri.clone(),
            busy_meeting("Before the restart #busy", 1_795_428_000),
        );
        published(&publisher, &uri, "Before the restart #busy").await;
        let etag_before = publisher.status(&uri).and_then(|s| s.etag);

        kamailio_script(server, "restart");

        // The modify carries the old entity tag, which the restarted server does not know.
        publisher.set(
            uri.clone(),
            busy_meeting("After the restart #busy", 1_795_431_600),
        );
        published(&publisher, &uri, "After the restart #busy").await;
        let counters = publisher.counters();
        assert!(
            counters.conditional_request_failed >= 1,
            "{transport:?}: {counters:?}"
        );
        let status = publisher.status(&uri).expect("status");
        assert_eq!(
            status.last_result.as_ref().map(|r| (r.kind, r.status)),
            Some((PublishKind::Initial, Some(200))),
            "{transport:?}: {status:?}"
        );
        assert_ne!(status.etag, etag_before);

        let mut watcher = Watcher::new(server, &uri).await;
        watcher.subscribe(60).await;
        let notify = watcher
            .notify_where(Duration::from_secs(5), has_note("After the restart #busy"))
            .await;
        assert!(
            notify.body.contains("until=\"2026-11-23T11:00:00Z\""),
            "{}",
            notify.body
        );
        publisher.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_publishes_expires_zero_and_the_watcher_sees_it_go() {
    let Some(server) = kamailio() else { return };
    let _shared = SERVER.read().await;
    let uri = format!("sip:{}@{DOMAIN}", unique_user("removed"));
    let publisher = SipPublisher::start(config(server, Transport::Udp, 3600))
        .await
        .expect("start");
    publisher.set(
        uri.clone(),
        busy_meeting("Leaving soon #busy", 1_795_428_000),
    );
    published(&publisher, &uri, "Leaving soon #busy").await;
    let mut watcher = Watcher::new(server, &uri).await;
    watcher.subscribe(60).await;
    watcher
        .notify_where(Duration::from_secs(5), has_note("Leaving soon #busy"))
        .await;

    publisher.remove(&uri);
    let notify = watcher
        .notify_where(Duration::from_secs(5), |n| !n.body.contains("Leaving soon"))
        .await;
    assert!(
        notify.body.trim().is_empty() || notify.body.contains("<basic>closed</basic>"),
        "removed presentity shows nothing or closed: {}",
        notify.body
    );
    for _ in 0..100 {
        if publisher.status(&uri).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        publisher.status(&uri),
        None,
        "a removed URI is forgotten once the server confirmed"
    );
    assert_eq!(publisher.counters().failures, 0);
    publisher.shutdown().await;
}

/// What a second process (a restarted calbridge, or the instance that took a person over)
/// sends for a URI the first one published and left: with the first's saved entity-tag it
/// continues that publication; without it, Kamailio keeps both, and its watchers go on seeing
/// the first's stale state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_publisher_continues_a_saved_publication_instead_of_adding_one() {
    let Some(server) = kamailio() else { return };
    let _shared = SERVER.read().await;
    for adopting in [true, false] {
        let uri = format!(
            "sip:{}@{DOMAIN}",
            unique_user(if adopting { "adopted" } else { "doubled" })
        );
        let first = SipPublisher::start(config(server, Transport::Udp, 3600))
            .await
            .expect("start");
        let mut tags = first.watch_publications();
        first.set(uri.clone(), busy_meeting("Old state #busy", 1_795_428_000));
        published(&first, &uri, "Old state #busy").await;
        let saved = tokio::time::timeout(Duration::from_secs(5), tags.recv())
            .await
            .expect("the new entity-tag is told")
            .expect("a publication");
        assert_eq!(saved.uri, uri);
        assert_eq!(
            saved.etag,
            first.status(&uri).and_then(|status| status.etag)
        );
        // The first process goes away without withdrawing anything (as on a crash or a
        // restart).
        first.shutdown().await;

        let second = SipPublisher::start(config(server, Transport::Udp, 3600))
            .await
            .expect("start");
        let new_state = busy_meeting("New state #busy", 1_795_431_600);
        if adopting {
            second.adopt(
                uri.clone(),
                new_state,
                saved.etag.clone().expect("an entity-tag"),
                saved.expires_at.expect("an expiry"),
            );
        } else {
            second.set(uri.clone(), new_state);
        }
        published(&second, &uri, "New state #busy").await;
        let status = second.status(&uri).expect("status");
        let mut watcher = Watcher::new(server, &uri).await;
        watcher.subscribe(60).await;
        if adopting {
            let notify = watcher
                .notify_where(Duration::from_secs(5), has_note("New state #busy"))
                .await;
            assert_eq!(
                status.last_result.as_ref().map(|r| (r.kind, r.status)),
                Some((PublishKind::Modify, Some(200))),
                "{status:?}"
            );
            assert_eq!(second.counters().conditional_request_failed, 0);
            assert!(
                !notify.body.contains("Old state"),
                "one publication: the old state is gone: {}",
                notify.body
            );
        }
        // The second process withdraws its publication. With one publication nothing is left;
        // with two, Kamailio still holds the first's, and its watchers see the stale state again.
        // (While both exist, which one Kamailio shows is not fixed: it orders them by their
        // arrival second, and the two usually arrive within the same second.)
        second.remove(&uri);
        if adopting {
            let notify = watcher
                .notify_where(Duration::from_secs(5), |n| !n.body.contains("New state"))
                .await;
            assert!(
                !notify.body.contains("Old state"),
                "nothing of the first publication is left: {}",
                notify.body
            );
        } else {
            watcher
                .notify_where(Duration::from_secs(5), has_note("Old state #busy"))
                .await;
        }
        second.shutdown().await;
    }
}
