//! Polling and the reconciliation sweep read changes in batches (issue "Hardening", probe 6):
//! without a public URL the service reads everyone's changes every poll interval, 20 delta
//! reads to a Graph `$batch`, and a calendar change still reaches presence.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use jiff::{SignedDuration, Timestamp};
use m365_emulator::{Emulator, EmulatorConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_reads_everyone_twenty_to_a_request_and_finds_a_change() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(30, 31))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data.path(), &public_url, None);
    // No URL Graph could reach: changes are read by polling, every second here.
    config.api.public_url = None;
    config.sync.poll_interval_seconds = 1;
    let running = start_service(config, Arc::new(calbridge::clock::SystemClock), listener).await;
    let sync = running.syncs.values().next().expect("one source").clone();
    let people = running.hub.people();
    assert_eq!(people.len(), 30);

    // Three poll rounds: everyone read each time, in few requests.
    let requests_before = sync.source.graph.counters().requests_sent;
    let read_before = sync.reconciled.load(Ordering::Relaxed);
    wait_for("three poll rounds", Duration::from_secs(60), || {
        (sync.reconciled.load(Ordering::Relaxed) >= read_before + 90).then_some(())
    })
    .await;
    let read = sync.reconciled.load(Ordering::Relaxed) - read_before;
    let requests = sync.source.graph.counters().requests_sent - requests_before;
    assert!(
        requests >= 1 && requests * 10 <= read,
        "{requests} requests for {read} change reads: one per person would be {read}"
    );

    // A meeting now for one person reaches presence through the next round.
    let graph = GraphClient::new(&ready).await;
    let person = people[0].address.to_string();
    let now = Timestamp::now();
    graph.free_around(&person, now).await;
    graph
        .create_event(
            &person,
            "Found by polling",
            now - SignedDuration::from_mins(5),
            now + SignedDuration::from_mins(90),
            "busy",
        )
        .await;
    wait_for("the meeting in presence", Duration::from_secs(30), || {
        presence_of(&running, &person)
            .filter(|(_, note, _)| note.contains("Found by polling"))
            .map(|_| ())
    })
    .await;
}
