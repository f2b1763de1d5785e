//! The engine with a fake source: resolution failures, retries with back-off and the midnight
//! re-read on a manual clock the test moves, and one failing person never blocking the others.
//! The fake answers from maps the test fills and records every call.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, ShowAs, SourceId,
};
use calbridge_store::{PersonKey, PersonUpsert, SecretKey, SqliteStore, Store};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::mpsc;

use super::engine::{CalendarSource, ChangeRead, Engine, PersonHealth, Resolved, Trouble, Work};
use crate::clock::{Clock, ManualClock};
use crate::cluster::Ownership;
use crate::config::{PresenceConfig, SyncConfig};
use crate::hub::PresenceHub;
use crate::shutdown::{self, Trigger};

/// A source whose mailboxes are maps: `calendars` by address, people it cannot find, and
/// troubles it answers a read with (one per read, in order) before answering normally.
#[derive(Default)]
struct FakeSource {
    calendars: Mutex<HashMap<String, Vec<Appointment>>>,
    unknown: Mutex<HashSet<String>>,
    read_troubles: Mutex<HashMap<String, Vec<Trouble>>>,
    /// `(address, the manual clock's time)` of every read of one mailbox.
    reads: Mutex<Vec<(String, Timestamp)>>,
    clock: Mutex<Option<ManualClock>>,
    resolutions: Mutex<Vec<String>>,
    watched: Mutex<Vec<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeSource {
    fn read_one(&self, user: &str) -> Result<Vec<Appointment>, Trouble> {
        let now = lock(&self.clock)
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, Clock::now);
        lock(&self.reads).push((user.to_string(), now));
        if let Some(troubles) = lock(&self.read_troubles).get_mut(user) {
            if !troubles.is_empty() {
                return Err(troubles.remove(0));
            }
        }
        Ok(lock(&self.calendars).get(user).cloned().unwrap_or_default())
    }

    fn reads_of(&self, user: &str) -> Vec<Timestamp> {
        lock(&self.reads)
            .iter()
            .filter(|(address, _)| address == user)
            .map(|(_, at)| *at)
            .collect()
    }
}

#[async_trait::async_trait]
impl CalendarSource for Arc<FakeSource> {
    fn parallel_people(&self) -> usize {
        4
    }

    fn read_chunk(&self) -> usize {
        2
    }

    fn resumes_after_restart(&self) -> bool {
        false
    }

    async fn group_members(&self, group: &str) -> Result<Vec<super::GroupMember>, String> {
        Err(format!("no group {group}"))
    }

    async fn resolve(&self, people: Vec<PersonKey>) -> Vec<(PersonKey, Result<Resolved, Trouble>)> {
        people
            .into_iter()
            .map(|person| {
                let address = person.address.to_string();
                lock(&self.resolutions).push(address.clone());
                let result = if lock(&self.unknown).contains(&address) {
                    Err(Trouble::lasting(format!("no mailbox {address}")))
                } else {
                    Ok(Resolved {
                        primary_smtp: person.address.clone(),
                        source_user_id: None,
                    })
                };
                (person, result)
            })
            .collect()
    }

    async fn read_windows(
        &self,
        people: Vec<(PersonKey, String)>,
        _start: Timestamp,
        _end: Timestamp,
    ) -> Vec<(PersonKey, Result<Vec<Appointment>, Trouble>)> {
        people
            .into_iter()
            .map(|(person, user)| {
                let result = self.read_one(&user);
                (person, result)
            })
            .collect()
    }

    async fn read_changes(
        &self,
        _person: &PersonKey,
        user: &str,
        _window: (Timestamp, Timestamp),
        _cursor: Option<&str>,
    ) -> Result<ChangeRead, Trouble> {
        self.read_one(user).map(ChangeRead::Window)
    }

    async fn watch(self: Arc<Self>, engine: &Arc<Engine<Self>>, people: Vec<PersonKey>) {
        for person in people {
            if let Some(user) = engine.user_of(&person) {
                lock(&self.watched).push(user);
            }
        }
    }

    async fn forget(&self, _person: &PersonKey, _health: &PersonHealth) {}
}

const SOURCE: &str = "fake";

fn key(address: &str) -> PersonKey {
    PersonKey {
        source: SourceId(SOURCE.to_string()),
        address: MailboxAddress::parse(address).expect("an address"),
    }
}

fn meeting(id: &str, start: Timestamp) -> Appointment {
    Appointment {
        id: id.to_string(),
        time: AppointmentTime::Timed {
            start,
            end: start + SignedDuration::from_mins(30),
        },
        show_as: ShowAs::Busy,
        sensitivity: Sensitivity::Normal,
        subject: Some(format!("Meeting {id}")),
        organizer: None,
        status: AppointmentStatus::Active,
    }
}

fn passing(message: &str) -> Trouble {
    Trouble {
        message: message.to_string(),
        retryable: true,
        credentials: false,
        source_wide: false,
        retry_after: None,
    }
}

struct Rig {
    engine: Arc<Engine<Arc<FakeSource>>>,
    fake: Arc<FakeSource>,
    store: Arc<dyn Store>,
    clock: ManualClock,
    _stop: Trigger,
}

/// The engine over `fake` for `people` (as the directory would have stored them), running.
async fn rig(fake: Arc<FakeSource>, people: &[&str], now: Timestamp) -> Rig {
    rig_owning(fake, people, now, Ownership::everyone()).await
}

/// [`rig`] on an instance that follows only whom `ownership` says.
async fn rig_owning(
    fake: Arc<FakeSource>,
    people: &[&str],
    now: Timestamp,
    ownership: Arc<Ownership>,
) -> Rig {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open_in_memory(SecretKey::generate())
            .await
            .expect("an in-memory store"),
    );
    let upserts: Vec<PersonUpsert> = people
        .iter()
        .map(|address| PersonUpsert {
            key: key(address),
            display_name: None,
            sip_uri: None,
        })
        .collect();
    store.upsert_people(&upserts).await.expect("people stored");
    let clock = ManualClock::new(now);
    *lock(&fake.clock) = Some(clock.clone());
    let presence = PresenceConfig::default();
    let (hub, _persist) = PresenceHub::new(
        presence.rules(),
        presence.locale(),
        Arc::new(clock.clone()),
        store.clone(),
    );
    let settings = SyncConfig {
        reconcile_interval_minutes: 0,
        midnight_spread_minutes: 0,
        ..SyncConfig::default()
    };
    let (engine, queue): (_, mpsc::UnboundedReceiver<Work>) = Engine::with_source(
        SourceId(SOURCE.to_string()),
        fake.clone(),
        store.clone(),
        hub,
        Arc::new(clock.clone()),
        settings,
    );
    engine.share_by(ownership);
    let (stop, shutdown) = shutdown::channel();
    tokio::spawn(engine.clone().run(queue, shutdown));
    let rig = Rig {
        engine,
        fake,
        store,
        clock,
        _stop: stop,
    };
    eventually("the first sync", || {
        rig.engine
            .progress
            .finished
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    rig
}

/// Waits patiently for an outcome (20 s at most); never for a moment in time.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

async fn stored_ids(store: &Arc<dyn Store>, address: &str) -> Vec<String> {
    let mut ids: Vec<String> = store
        .load_appointments(&key(address))
        .await
        .expect("the store answers")
        .into_iter()
        .map(|appointment| appointment.id)
        .collect();
    ids.sort();
    ids
}

fn at(text: &str) -> Timestamp {
    text.parse().expect("an instant")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_person_is_reported_and_everyone_else_is_read_and_watched() {
    let now = at("2026-12-03T09:42:00Z");
    let fake = Arc::new(FakeSource::default());
    lock(&fake.calendars).insert("ada@x.example".into(), vec![meeting("a1", now)]);
    lock(&fake.calendars).insert("bob@x.example".into(), vec![meeting("b1", now)]);
    lock(&fake.unknown).insert("ghost@x.example".into());
    let rig = rig(
        fake,
        &["ada@x.example", "bob@x.example", "ghost@x.example"],
        now,
    )
    .await;

    assert_eq!(stored_ids(&rig.store, "ada@x.example").await, vec!["a1"]);
    assert_eq!(stored_ids(&rig.store, "bob@x.example").await, vec!["b1"]);
    let ghost = rig
        .engine
        .health(&key("ghost@x.example"))
        .expect("the ghost is followed, not dropped");
    let error = ghost.resolution_error.unwrap_or_default();
    assert!(error.contains("ghost@x.example"), "{error}");
    assert!(rig.fake.reads_of("ghost@x.example").is_empty());
    let mut watched = lock(&rig.fake.watched).clone();
    watched.sort();
    assert_eq!(watched, vec!["ada@x.example", "bob@x.example"]);
    let progress = &rig.engine.progress;
    assert_eq!(progress.total.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(progress.done.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(
        progress.failed.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // A lasting trouble is not tried again before midnight or a change of the directory.
    rig.clock.advance(SignedDuration::from_mins(10));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(lock(&rig.fake.resolutions).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_person_never_blocks_the_others() {
    let now = at("2026-12-03T09:42:00Z");
    let fake = Arc::new(FakeSource::default());
    for (address, id) in [
        ("ada@x.example", "a1"),
        ("bob@x.example", "b1"),
        ("cem@x.example", "c1"),
    ] {
        lock(&fake.calendars).insert(address.into(), vec![meeting(id, now)]);
    }
    // Bob's mailbox is gone for good: every read of it fails.
    lock(&fake.read_troubles).insert(
        "bob@x.example".into(),
        vec![Trouble::lasting("no such mailbox".to_string()); 10],
    );
    let rig = rig(
        fake,
        &["ada@x.example", "bob@x.example", "cem@x.example"],
        now,
    )
    .await;

    assert_eq!(stored_ids(&rig.store, "ada@x.example").await, vec!["a1"]);
    assert_eq!(stored_ids(&rig.store, "cem@x.example").await, vec!["c1"]);
    assert!(stored_ids(&rig.store, "bob@x.example").await.is_empty());
    let bob = rig.engine.health(&key("bob@x.example")).expect("followed");
    assert_eq!(bob.last_error.as_deref(), Some("no such mailbox"));
    assert_eq!(bob.consecutive_failures, 1);
    // The others' changes still come through while Bob keeps failing.
    lock(&rig.fake.calendars).insert(
        "cem@x.example".into(),
        vec![meeting("c1", now), meeting("c2", now)],
    );
    rig.engine.enqueue(Work::Changed(key("bob@x.example")));
    rig.engine.enqueue(Work::Changed(key("cem@x.example")));
    let store = rig.store.clone();
    let mut latest = Vec::new();
    for _ in 0..200 {
        latest = stored_ids(&store, "cem@x.example").await;
        if latest.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(latest, vec!["c1", "c2"]);
    let bob = rig.engine.health(&key("bob@x.example")).expect("followed");
    assert_eq!(
        bob.consecutive_failures, 2,
        "Bob's change was read and failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_failure_is_read_again_after_a_doubling_back_off() {
    let now = at("2026-12-03T09:42:00Z");
    let fake = Arc::new(FakeSource::default());
    lock(&fake.calendars).insert("ada@x.example".into(), vec![meeting("a1", now)]);
    lock(&fake.read_troubles).insert(
        "ada@x.example".into(),
        vec![passing("server busy"), passing("server busy")],
    );
    let rig = rig(fake, &["ada@x.example"], now).await;
    let reads = || rig.fake.reads_of("ada@x.example");
    // A failure is counted together with scheduling its retry: once the count shows, the
    // retry is on the clock and moving the clock may wake it.
    let failures = || {
        rig.engine
            .health(&key("ada@x.example"))
            .map_or(0, |health| health.consecutive_failures)
    };
    assert_eq!(reads().len(), 1, "the first read failed");
    assert_eq!(failures(), 1);

    // 1 s after the first failure, not a millisecond before.
    rig.clock.advance(SignedDuration::from_millis(999));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reads().len(), 1, "read again before its back-off");
    rig.clock.advance(SignedDuration::from_millis(1));
    eventually("the second read, failed", || failures() == 2).await;
    assert_eq!(reads().len(), 2);

    // 2 s after the second.
    rig.clock.advance(SignedDuration::from_millis(1_999));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reads().len(), 2, "read again before its doubled back-off");
    rig.clock.advance(SignedDuration::from_millis(1));
    eventually("the third read", || reads().len() == 3).await;
    assert_eq!(
        reads(),
        vec![
            now,
            now + SignedDuration::from_secs(1),
            now + SignedDuration::from_secs(3)
        ]
    );
    let store = rig.store.clone();
    let mut stored = Vec::new();
    for _ in 0..200 {
        stored = stored_ids(&store, "ada@x.example").await;
        if !stored.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stored, vec!["a1"], "read after two passing failures");
    let health = rig.engine.health(&key("ada@x.example")).expect("followed");
    assert_eq!(
        health.consecutive_failures, 0,
        "the success clears the count"
    );
    assert_eq!(health.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn midnight_reads_everyone_again_and_resolves_who_could_not_be_resolved() {
    // The hub's zone is the configuration's default: a whole day on crosses its midnight,
    // whatever that zone is.
    let now = at("2026-12-03T23:59:00Z");
    let fake = Arc::new(FakeSource::default());
    lock(&fake.calendars).insert("ada@x.example".into(), vec![meeting("a1", now)]);
    lock(&fake.unknown).insert("newcomer@x.example".into());
    let rig = rig(fake, &["ada@x.example", "newcomer@x.example"], now).await;
    assert_eq!(stored_ids(&rig.store, "ada@x.example").await, vec!["a1"]);
    assert!(rig
        .engine
        .health(&key("newcomer@x.example"))
        .is_some_and(|health| health.user.is_none()));

    // Overnight Ada's calendar changed unseen and the newcomer's mailbox was created.
    lock(&rig.fake.calendars).insert("ada@x.example".into(), vec![meeting("a2", now)]);
    lock(&rig.fake.unknown).clear();
    lock(&rig.fake.calendars).insert("newcomer@x.example".into(), vec![meeting("n1", now)]);
    let reads_before = rig.fake.reads_of("ada@x.example").len();
    rig.clock.advance(SignedDuration::from_hours(24));
    let store = rig.store.clone();
    let mut seen = (Vec::new(), Vec::new());
    for _ in 0..2_000 {
        seen = (
            stored_ids(&store, "ada@x.example").await,
            stored_ids(&store, "newcomer@x.example").await,
        );
        if seen.0 == vec!["a2"] && seen.1 == vec!["n1"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen.0,
        vec!["a2"],
        "Ada's window was read again at midnight"
    );
    assert_eq!(seen.1, vec!["n1"], "the newcomer was resolved and read");
    assert_eq!(rig.fake.reads_of("ada@x.example").len(), reads_before + 1);
    eventually("the newcomer watched", || {
        lock(&rig.fake.watched).contains(&"newcomer@x.example".to_string())
    })
    .await;
}

fn held(addresses: &[&str]) -> Vec<calbridge_store::cluster::HeldShard> {
    addresses
        .iter()
        .map(|address| calbridge_store::cluster::HeldShard {
            shard: calbridge_store::cluster::shard_of(&key(address)),
            epoch: 1,
        })
        .collect()
}

fn shards(addresses: &[&str]) -> HashSet<u32> {
    held(addresses).iter().map(|held| held.shard).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_follows_only_its_shards_takes_over_gained_ones_and_lets_lost_ones_go() {
    let now = at("2026-12-03T09:42:00Z");
    let (ada, bob) = ("ada@x.example", "bob@x.example");
    assert_ne!(shards(&[ada]), shards(&[bob]), "the test needs two shards");
    let fake = Arc::new(FakeSource::default());
    lock(&fake.calendars).insert(ada.into(), vec![meeting("a1", now)]);
    lock(&fake.calendars).insert(bob.into(), vec![meeting("b1", now)]);
    let fence = calbridge_store::cluster::Fence::new("this-instance");
    let ownership = Ownership::by_leases(fence.clone());
    fence.set_held(&held(&[ada]));
    let rig = rig_owning(fake, &[ada, bob], now, ownership.clone()).await;

    // Only Ada's shard is held: Bob is neither read nor watched, nor followed.
    assert_eq!(stored_ids(&rig.store, ada).await, vec!["a1"]);
    assert!(rig.fake.reads_of(bob).is_empty());
    assert!(rig.engine.health(&key(bob)).is_none());
    assert_eq!(lock(&rig.fake.watched).clone(), vec![ada.to_string()]);
    // Work for Bob that reaches this instance (a webhook, a retry) is left to his owner.
    let reads_of_ada = rig.fake.reads_of(ada).len();
    rig.engine.enqueue(Work::Changed(key(bob)));
    rig.engine.enqueue(Work::Changed(key(ada)));
    eventually("Ada's change is read", || {
        rig.fake.reads_of(ada).len() > reads_of_ada
    })
    .await;
    assert!(rig.fake.reads_of(bob).is_empty());

    // Bob's shard is gained: he is taken over, read and watched.
    fence.set_held(&held(&[ada, bob]));
    rig.engine.take_over(&shards(&[bob])).await;
    assert_eq!(stored_ids(&rig.store, bob).await, vec!["b1"]);
    assert!(rig.engine.health(&key(bob)).is_some());
    let mut watched = lock(&rig.fake.watched).clone();
    watched.sort();
    assert_eq!(watched, vec![ada.to_string(), bob.to_string()]);
    // Taking over again changes nothing: Bob is followed already.
    let reads_of_bob = rig.fake.reads_of(bob).len();
    rig.engine.take_over(&shards(&[bob])).await;
    assert_eq!(rig.fake.reads_of(bob).len(), reads_of_bob);

    // Ada's shard is lost: she is let go, and her changes are no longer read here.
    fence.set_held(&held(&[bob]));
    rig.engine.let_go(&shards(&[ada])).await;
    assert!(rig.engine.health(&key(ada)).is_none());
    let reads_of_ada = rig.fake.reads_of(ada).len();
    rig.engine.enqueue(Work::Changed(key(ada)));
    rig.engine.enqueue(Work::Changed(key(bob)));
    eventually("Bob's change is read", || {
        rig.fake.reads_of(bob).len() > reads_of_bob
    })
    .await;
    assert_eq!(rig.fake.reads_of(ada).len(), reads_of_ada);
    // What was stored for her stays for her new owner.
    assert_eq!(stored_ids(&rig.store, ada).await, vec!["a1"]);
}
