//! The batch writes: each backend's overrides (one transaction per batch) and the trait's
//! default implementations (one single-item call per element) must store exactly what the
//! single-item methods store, and refuse a batch that names an unknown person without
//! writing any of it. Every test runs on SQLite and on PostgreSQL (see `common/backends.rs`).

#[macro_use]
mod common;

use common::*;

use std::collections::HashMap;

use async_trait::async_trait;
use calbridge_domain::{Appointment, MailboxAddress, Secret, SourceId};
use calbridge_store::{
    AppointmentWindow, CurrentPresence, NewOutboxEvent, OutboxEvent, OutboxId, Person, PersonKey,
    PersonUpsert, Removal, Resolution, SipPublication, SourceState, Store, StoreError, SyncError,
    SyncState, WindowReplacement,
};
use jiff::Timestamp;

/// A `Store` that only has the single-item methods, so that the batch methods are the trait's
/// default implementations: what a new backend gets before it overrides them.
struct SingleItemsOnly(TestStore);

#[async_trait]
impl Store for SingleItemsOnly {
    async fn upsert_person(&self, person: &PersonUpsert) -> Result<(), StoreError> {
        self.0.upsert_person(person).await
    }
    async fn get_person(&self, key: &PersonKey) -> Result<Option<Person>, StoreError> {
        self.0.get_person(key).await
    }
    async fn set_rooms(
        &self,
        source: &SourceId,
        rooms: &[calbridge_domain::RoomInfo],
    ) -> Result<(), StoreError> {
        self.0.set_rooms(source, rooms).await
    }
    async fn list_rooms(&self) -> Result<Vec<(PersonKey, calbridge_domain::RoomInfo)>, StoreError> {
        self.0.list_rooms().await
    }
    async fn claim_room_meeting(
        &self,
        key: &PersonKey,
        record: &calbridge_store::RoomCheckIn,
    ) -> Result<bool, StoreError> {
        self.0.claim_room_meeting(key, record).await
    }
    async fn set_room_meeting(
        &self,
        key: &PersonKey,
        record: &calbridge_store::RoomCheckIn,
    ) -> Result<(), StoreError> {
        self.0.set_room_meeting(key, record).await
    }
    async fn list_room_meetings(
        &self,
        since: jiff::Timestamp,
    ) -> Result<Vec<(PersonKey, calbridge_store::RoomCheckIn)>, StoreError> {
        self.0.list_room_meetings(since).await
    }
    async fn list_people(&self) -> Result<Vec<Person>, StoreError> {
        self.0.list_people().await
    }
    async fn list_people_of_source(&self, source: &SourceId) -> Result<Vec<Person>, StoreError> {
        self.0.list_people_of_source(source).await
    }
    async fn remove_person(&self, key: &PersonKey) -> Result<Removal, StoreError> {
        self.0.remove_person(key).await
    }
    async fn mark_resolution(
        &self,
        key: &PersonKey,
        resolution: &Resolution,
    ) -> Result<(), StoreError> {
        self.0.mark_resolution(key, resolution).await
    }
    async fn replace_appointments(
        &self,
        key: &PersonKey,
        window_start: Timestamp,
        window_end: Timestamp,
        appointments: Vec<Appointment>,
    ) -> Result<(), StoreError> {
        self.0
            .replace_appointments(key, window_start, window_end, appointments)
            .await
    }
    async fn apply_appointment_changes(
        &self,
        key: &PersonKey,
        upserts: Vec<Appointment>,
        removed_ids: Vec<String>,
    ) -> Result<(), StoreError> {
        self.0
            .apply_appointment_changes(key, upserts, removed_ids)
            .await
    }
    async fn load_appointments(&self, key: &PersonKey) -> Result<Vec<Appointment>, StoreError> {
        self.0.load_appointments(key).await
    }
    async fn load_all_appointments(
        &self,
    ) -> Result<HashMap<PersonKey, Vec<Appointment>>, StoreError> {
        self.0.load_all_appointments().await
    }
    async fn get_sync_state(&self, key: &PersonKey) -> Result<SyncState, StoreError> {
        self.0.get_sync_state(key).await
    }
    async fn person_with_subscription(
        &self,
        source: &SourceId,
        subscription_id: &str,
    ) -> Result<Option<PersonKey>, StoreError> {
        self.0
            .person_with_subscription(source, subscription_id)
            .await
    }
    async fn set_sync_state(&self, key: &PersonKey, state: &SyncState) -> Result<(), StoreError> {
        self.0.set_sync_state(key, state).await
    }
    async fn get_source_state(&self, source: &SourceId) -> Result<SourceState, StoreError> {
        self.0.get_source_state(source).await
    }
    async fn set_source_state(
        &self,
        source: &SourceId,
        state: &SourceState,
    ) -> Result<(), StoreError> {
        self.0.set_source_state(source, state).await
    }
    async fn save_presence(
        &self,
        key: &PersonKey,
        presence: &CurrentPresence,
    ) -> Result<(), StoreError> {
        self.0.save_presence(key, presence).await
    }
    async fn load_presence(&self, key: &PersonKey) -> Result<Option<CurrentPresence>, StoreError> {
        self.0.load_presence(key).await
    }
    async fn list_presence(&self) -> Result<Vec<(PersonKey, CurrentPresence)>, StoreError> {
        self.0.list_presence().await
    }
    async fn put_secret(&self, name: &str, secret: &Secret) -> Result<(), StoreError> {
        self.0.put_secret(name, secret).await
    }
    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        self.0.get_secret(name).await
    }
    async fn append_outbox(&self, event: &NewOutboxEvent) -> Result<OutboxId, StoreError> {
        self.0.append_outbox(event).await
    }
    async fn read_outbox_after(
        &self,
        after: OutboxId,
        limit: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.0.read_outbox_after(after, limit).await
    }
    async fn get_outbox_cursor(&self, consumer: &str) -> Result<OutboxId, StoreError> {
        self.0.get_outbox_cursor(consumer).await
    }
    async fn set_outbox_cursor(&self, consumer: &str, cursor: OutboxId) -> Result<(), StoreError> {
        self.0.set_outbox_cursor(consumer, cursor).await
    }
    async fn save_sip_publications(
        &self,
        publications: &[SipPublication],
    ) -> Result<(), StoreError> {
        self.0.save_sip_publications(publications).await
    }
    async fn load_sip_publication(&self, uri: &str) -> Result<Option<SipPublication>, StoreError> {
        self.0.load_sip_publication(uri).await
    }
    async fn list_sip_publications(
        &self,
        now: Timestamp,
    ) -> Result<Vec<SipPublication>, StoreError> {
        self.0.list_sip_publications(now).await
    }
}

/// One of the two implementations of the batch methods under test.
enum BatchStore {
    Override(TestStore),
    TraitDefault(SingleItemsOnly),
}

impl std::ops::Deref for BatchStore {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        match self {
            BatchStore::Override(store) => &**store,
            BatchStore::TraitDefault(store) => store,
        }
    }
}

/// Both implementations of the batch methods on `backend`, by name for assertion messages.
async fn batch_stores(backend: &Backend) -> Vec<(String, BatchStore)> {
    vec![
        (
            format!("the {} override", backend.name()),
            BatchStore::Override(backend.fresh_store().await),
        ),
        (
            format!("the trait's default on {}", backend.name()),
            BatchStore::TraitDefault(SingleItemsOnly(backend.fresh_store().await)),
        ),
    ]
}

/// Everything the batch methods write, read back through the trait. The people's
/// `created_at`/`updated_at` are left out: they are the clock at the write.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    people: Vec<(PersonKey, Option<String>, Option<String>, Resolution)>,
    appointments: Vec<(PersonKey, Vec<Appointment>)>,
    sync_states: Vec<(PersonKey, SyncState)>,
    presence: Vec<(PersonKey, CurrentPresence)>,
}

async fn snapshot(store: &dyn Store) -> Snapshot {
    let people = store.list_people().await.unwrap();
    let mut appointments: Vec<_> = store
        .load_all_appointments()
        .await
        .unwrap()
        .into_iter()
        .collect();
    appointments.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sync_states = Vec::new();
    for person in &people {
        sync_states.push((
            person.key.clone(),
            store.get_sync_state(&person.key).await.unwrap(),
        ));
    }
    Snapshot {
        people: people
            .into_iter()
            .map(|p| (p.key, p.display_name, p.sip_uri, p.resolution))
            .collect(),
        appointments,
        sync_states,
        presence: store.list_presence().await.unwrap(),
    }
}

fn alice() -> PersonKey {
    person("tenant-a", "alice@example.com")
}
fn bob() -> PersonKey {
    person("tenant-a", "bob@example.com")
}
/// The same address as Alice's, in another source: a different person.
fn alice_elsewhere() -> PersonKey {
    person("tenant-b", "alice@example.com")
}
fn nobody() -> PersonKey {
    person("tenant-a", "nobody@example.com")
}

fn upserts() -> Vec<PersonUpsert> {
    vec![
        PersonUpsert {
            key: alice(),
            display_name: Some("Alice Example".to_string()),
            sip_uri: Some("sip:alice@pbx.example.com".to_string()),
        },
        PersonUpsert {
            key: bob(),
            display_name: None,
            sip_uri: None,
        },
        PersonUpsert {
            key: alice_elsewhere(),
            display_name: Some("Alice (B)".to_string()),
            sip_uri: None,
        },
    ]
}

fn resolutions() -> Vec<(PersonKey, Resolution)> {
    vec![
        (
            alice(),
            Resolution::Resolved {
                primary_smtp: MailboxAddress::parse("alice.example@example.com").unwrap(),
                source_user_id: Some("1f0e-user-id".to_string()),
            },
        ),
        (
            bob(),
            Resolution::Failed {
                error: "no mailbox for bob@example.com".to_string(),
            },
        ),
        (
            alice_elsewhere(),
            Resolution::Resolved {
                primary_smtp: MailboxAddress::parse("alice@example.com").unwrap(),
                source_user_id: None,
            },
        ),
    ]
}

fn windows() -> Vec<WindowReplacement> {
    vec![
        WindowReplacement {
            key: alice(),
            window_start: at("2026-06-01T00:00:00Z"),
            window_end: at("2026-06-03T00:00:00Z"),
            appointments: vec![
                timed("a1", "2026-06-01T09:00:00Z", "2026-06-01T10:00:00Z"),
                all_day("a2"),
                private_without_subject("a3"),
            ],
        },
        // Bob's full read found nothing: his earlier appointments must go.
        WindowReplacement {
            key: bob(),
            window_start: at("2026-06-01T00:00:00Z"),
            window_end: at("2026-06-03T00:00:00Z"),
            appointments: vec![],
        },
        // The same appointment id as Alice's in tenant-a, for another person.
        WindowReplacement {
            key: alice_elsewhere(),
            window_start: at("2026-06-02T00:00:00Z"),
            window_end: at("2026-06-04T00:00:00Z"),
            appointments: vec![
                private_without_subject("a1"),
                timed("b2", "2026-06-02T15:00:00Z", "2026-06-02T15:30:00Z"),
            ],
        },
    ]
}

fn sync_states() -> Vec<(PersonKey, SyncState)> {
    vec![
        (
            alice(),
            SyncState {
                delta_link: Some("https://graph.example/delta?$deltatoken=abc".to_string()),
                subscription_id: Some("sub-1".to_string()),
                subscription_expires_at: Some(at("2026-06-04T00:00:00Z")),
                client_state: Some(Secret::new("client-state-of-alice")),
                last_full_sync_at: Some(at("2026-06-01T00:00:10Z")),
                last_delta_at: Some(at("2026-06-01T08:00:00Z")),
                last_error: Some(SyncError {
                    message: "503 from Graph".to_string(),
                    at: at("2026-06-01T07:00:00Z"),
                }),
                consecutive_failures: 2,
                // Ignored, as by set_sync_state: only the window replacement writes it.
                appointment_window: Some(AppointmentWindow {
                    start: at("2020-01-01T00:00:00Z"),
                    end: at("2020-01-02T00:00:00Z"),
                }),
            },
        ),
        (bob(), SyncState::default()),
        (
            alice_elsewhere(),
            SyncState {
                client_state: Some(Secret::new("client-state-of-alice-in-b")),
                last_full_sync_at: Some(at("2026-06-02T00:00:05Z")),
                ..SyncState::default()
            },
        ),
    ]
}

fn presences() -> Vec<(PersonKey, CurrentPresence)> {
    vec![
        (
            alice(),
            CurrentPresence {
                activity: "busy".to_string(),
                note: Some("In a meeting until 10:00".to_string()),
                until: Some(at("2026-06-01T10:00:00Z")),
                why: "appointment a1 (busy)".to_string(),
                next_change_at: Some(at("2026-06-01T10:00:00Z")),
                decided_at: at("2026-06-01T09:00:01Z"),
                published_fingerprint: Some("f00d".to_string()),
            },
        ),
        (
            bob(),
            CurrentPresence {
                activity: "available".to_string(),
                note: None,
                until: None,
                why: "no appointment".to_string(),
                next_change_at: None,
                decided_at: at("2026-06-01T09:00:02Z"),
                published_fingerprint: None,
            },
        ),
    ]
}

/// What was stored before the batches: Bob and Alice have appointments of an older window
/// and a presence, so that the batches visibly replace them.
async fn earlier_state(store: &dyn Store) {
    for person in upserts().iter().take(2) {
        store
            .upsert_person(&PersonUpsert {
                display_name: Some("Old name".to_string()),
                ..person.clone()
            })
            .await
            .unwrap();
    }
    for key in [alice(), bob()] {
        store
            .replace_appointments(
                &key,
                at("2026-05-31T00:00:00Z"),
                at("2026-06-02T00:00:00Z"),
                vec![
                    timed("old", "2026-05-31T09:00:00Z", "2026-05-31T10:00:00Z"),
                    timed("a1", "2026-05-31T11:00:00Z", "2026-05-31T12:00:00Z"),
                ],
            )
            .await
            .unwrap();
    }
    store
        .save_presence(&bob(), &presences()[0].1)
        .await
        .unwrap();
}

/// The reference: the single-item methods, one call per element, in order.
async fn write_one_by_one(store: &dyn Store) {
    for person in &upserts() {
        store.upsert_person(person).await.unwrap();
    }
    for (key, resolution) in &resolutions() {
        store.mark_resolution(key, resolution).await.unwrap();
    }
    for window in windows() {
        store
            .replace_appointments(
                &window.key,
                window.window_start,
                window.window_end,
                window.appointments,
            )
            .await
            .unwrap();
    }
    for (key, state) in &sync_states() {
        store.set_sync_state(key, state).await.unwrap();
    }
    for (key, presence) in &presences() {
        store.save_presence(key, presence).await.unwrap();
    }
}

async fn write_in_batches(store: &dyn Store) {
    store.upsert_people(&upserts()).await.unwrap();
    store.mark_resolutions(&resolutions()).await.unwrap();
    store.replace_appointments_many(windows()).await.unwrap();
    store.set_sync_states(&sync_states()).await.unwrap();
    store.save_presences(&presences()).await.unwrap();
}

async fn each_batch_method_stores_exactly_what_the_single_item_methods_store(backend: Backend) {
    let reference = backend.fresh_store().await;
    earlier_state(&*reference).await;
    write_one_by_one(&*reference).await;
    let expected = snapshot(&*reference).await;

    // The reference itself holds what the data says, so that agreeing with it means something.
    assert_eq!(expected.people.len(), 3);
    assert_eq!(
        expected.appointments,
        vec![
            (
                alice(),
                vec![
                    timed("a1", "2026-06-01T09:00:00Z", "2026-06-01T10:00:00Z"),
                    all_day("a2"),
                    private_without_subject("a3"),
                ]
            ),
            (bob(), vec![]),
            (
                alice_elsewhere(),
                vec![
                    private_without_subject("a1"),
                    timed("b2", "2026-06-02T15:00:00Z", "2026-06-02T15:30:00Z"),
                ]
            ),
        ]
    );
    assert_eq!(
        expected.sync_states[0].1.appointment_window,
        Some(AppointmentWindow {
            start: at("2026-06-01T00:00:00Z"),
            end: at("2026-06-03T00:00:00Z"),
        })
    );
    assert_eq!(
        expected.sync_states[0].1.client_state,
        Some(Secret::new("client-state-of-alice"))
    );
    assert_eq!(expected.presence, presences());

    for (name, store) in batch_stores(&backend).await {
        earlier_state(&*store).await;
        write_in_batches(&*store).await;
        assert_eq!(snapshot(&*store).await, expected, "{name}");
    }
}

async fn a_batch_naming_an_unknown_person_writes_nothing_and_names_the_person(backend: Backend) {
    for (name, store) in batch_stores(&backend).await {
        let store = &*store;
        earlier_state(store).await;
        let before = snapshot(store).await;

        // The unknown person comes last, after elements that would otherwise be written.
        let mut resolutions = resolutions();
        resolutions.truncate(2);
        resolutions.push((nobody(), Resolution::Pending));
        let error = store.mark_resolutions(&resolutions).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::PersonNotFound { person, .. } if *person == nobody()),
            "{name}: {error:?}"
        );

        let mut windows = windows();
        windows.truncate(2);
        windows.push(WindowReplacement {
            key: nobody(),
            window_start: at("2026-06-01T00:00:00Z"),
            window_end: at("2026-06-03T00:00:00Z"),
            appointments: vec![all_day("n1")],
        });
        let error = store.replace_appointments_many(windows).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::PersonNotFound { person, .. } if *person == nobody()),
            "{name}: {error:?}"
        );

        let mut states = sync_states();
        states.truncate(2);
        states.push((nobody(), SyncState::default()));
        let error = store.set_sync_states(&states).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::PersonNotFound { person, .. } if *person == nobody()),
            "{name}: {error:?}"
        );

        let mut presences = presences();
        presences.push((nobody(), presences[1].1.clone()));
        let error = store.save_presences(&presences).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::PersonNotFound { person, .. } if *person == nobody()),
            "{name}: {error:?}"
        );

        assert_eq!(snapshot(store).await, before, "{name}");
        assert_eq!(store.get_person(&nobody()).await.unwrap(), None, "{name}");
    }
}

async fn a_window_batch_that_fails_midway_leaves_every_earlier_window_intact(backend: Backend) {
    let store = backend.fresh_store().await;
    earlier_state(&*store).await;
    let before = snapshot(&*store).await;

    // Bob's full read lists one id twice: a source bug that fails the whole batch, including
    // Alice's replacement before it.
    let mut windows = windows();
    windows.truncate(2);
    windows[1].appointments = vec![all_day("dup"), all_day("dup")];
    let error = store.replace_appointments_many(windows).await.unwrap_err();
    assert!(matches!(error, StoreError::Database { .. }), "{error:?}");

    assert_eq!(snapshot(&*store).await, before);
}

async fn a_person_listed_twice_in_a_batch_ends_with_the_later_entry_as_with_separate_calls(
    backend: Backend,
) {
    let first = WindowReplacement {
        key: alice(),
        window_start: at("2026-06-01T00:00:00Z"),
        window_end: at("2026-06-03T00:00:00Z"),
        appointments: vec![all_day("a1"), all_day("a2")],
    };
    // The same id again: separate calls replace, so this must not clash with the first.
    let second = WindowReplacement {
        key: alice(),
        window_start: at("2026-06-02T00:00:00Z"),
        window_end: at("2026-06-04T00:00:00Z"),
        appointments: vec![private_without_subject("a1")],
    };
    let upserts = vec![
        PersonUpsert {
            key: alice(),
            display_name: Some("First".to_string()),
            sip_uri: None,
        },
        upserts()[1].clone(),
        PersonUpsert {
            key: alice(),
            display_name: Some("Second".to_string()),
            sip_uri: Some("sip:alice@pbx.example.com".to_string()),
        },
    ];
    let states = vec![
        (alice(), sync_states()[0].1.clone()),
        (alice(), sync_states()[2].1.clone()),
    ];
    let presences = vec![
        (alice(), presences()[0].1.clone()),
        (alice(), presences()[1].1.clone()),
    ];

    let reference = backend.fresh_store().await;
    for person in &upserts {
        reference.upsert_person(person).await.unwrap();
    }
    for window in [first.clone(), second.clone()] {
        reference
            .replace_appointments(
                &window.key,
                window.window_start,
                window.window_end,
                window.appointments,
            )
            .await
            .unwrap();
    }
    for (key, state) in &states {
        reference.set_sync_state(key, state).await.unwrap();
    }
    for (key, presence) in &presences {
        reference.save_presence(key, presence).await.unwrap();
    }
    let expected = snapshot(&*reference).await;
    assert_eq!(
        expected.appointments[0],
        (alice(), vec![private_without_subject("a1")])
    );
    assert_eq!(expected.people[0].1.as_deref(), Some("Second"));

    for (name, store) in batch_stores(&backend).await {
        store.upsert_people(&upserts).await.unwrap();
        store
            .replace_appointments_many(vec![first.clone(), second.clone()])
            .await
            .unwrap();
        store.set_sync_states(&states).await.unwrap();
        store.save_presences(&presences).await.unwrap();
        assert_eq!(snapshot(&*store).await, expected, "{name}");
    }
}

async fn empty_batches_write_nothing_and_succeed(backend: Backend) {
    for (name, store) in batch_stores(&backend).await {
        let store = &*store;
        earlier_state(store).await;
        let before = snapshot(store).await;
        store.upsert_people(&[]).await.unwrap();
        store.mark_resolutions(&[]).await.unwrap();
        store.replace_appointments_many(Vec::new()).await.unwrap();
        store.set_sync_states(&[]).await.unwrap();
        store.save_presences(&[]).await.unwrap();
        assert_eq!(snapshot(store).await, before, "{name}");
    }
}

async fn batches_larger_than_one_sql_statement_store_what_single_calls_store(backend: Backend) {
    // 450 people with 3 appointments each: more keys than one lookup statement takes (400)
    // and more rows than one INSERT or upsert statement takes (100).
    let keys: Vec<PersonKey> = (0..450)
        .map(|n| person("tenant-a", &format!("user{n:03}@example.com")))
        .collect();
    let upserts: Vec<PersonUpsert> = keys
        .iter()
        .map(|key| PersonUpsert {
            key: key.clone(),
            display_name: Some(key.address.local_part().to_string()),
            sip_uri: None,
        })
        .collect();
    let resolutions: Vec<(PersonKey, Resolution)> = keys
        .iter()
        .map(|key| {
            (
                key.clone(),
                Resolution::Resolved {
                    primary_smtp: key.address.clone(),
                    source_user_id: Some(format!("id-{}", key.address)),
                },
            )
        })
        .collect();
    let windows: Vec<WindowReplacement> = keys
        .iter()
        .map(|key| WindowReplacement {
            key: key.clone(),
            window_start: at("2026-06-01T00:00:00Z"),
            window_end: at("2026-06-03T00:00:00Z"),
            appointments: vec![
                timed("t", "2026-06-01T09:00:00Z", "2026-06-01T10:00:00Z"),
                all_day("d"),
                private_without_subject(key.address.local_part()),
            ],
        })
        .collect();
    let states: Vec<(PersonKey, SyncState)> = keys
        .iter()
        .map(|key| {
            (
                key.clone(),
                SyncState {
                    delta_link: Some(format!("delta-of-{}", key.address)),
                    client_state: Some(Secret::new(format!("client-state-{}", key.address))),
                    ..SyncState::default()
                },
            )
        })
        .collect();
    let presences: Vec<(PersonKey, CurrentPresence)> = keys
        .iter()
        .map(|key| {
            (
                key.clone(),
                CurrentPresence {
                    why: format!("decided for {}", key.address),
                    ..presences()[1].1.clone()
                },
            )
        })
        .collect();

    let reference = backend.fresh_store().await;
    for person in &upserts {
        reference.upsert_person(person).await.unwrap();
    }
    for (key, resolution) in &resolutions {
        reference.mark_resolution(key, resolution).await.unwrap();
    }
    for window in windows.clone() {
        reference
            .replace_appointments(
                &window.key,
                window.window_start,
                window.window_end,
                window.appointments,
            )
            .await
            .unwrap();
    }
    for (key, state) in &states {
        reference.set_sync_state(key, state).await.unwrap();
    }
    for (key, presence) in &presences {
        reference.save_presence(key, presence).await.unwrap();
    }
    let expected = snapshot(&*reference).await;
    assert_eq!(expected.people.len(), 450);
    assert_eq!(
        expected
            .appointments
            .iter()
            .map(|(_, list)| list.len())
            .sum::<usize>(),
        1350
    );

    let store = backend.fresh_store().await;
    store.upsert_people(&upserts).await.unwrap();
    store.mark_resolutions(&resolutions).await.unwrap();
    store.replace_appointments_many(windows).await.unwrap();
    store.set_sync_states(&states).await.unwrap();
    store.save_presences(&presences).await.unwrap();
    assert_eq!(snapshot(&*store).await, expected);
}

on_each_backend!(
    each_batch_method_stores_exactly_what_the_single_item_methods_store,
    a_batch_naming_an_unknown_person_writes_nothing_and_names_the_person,
    a_window_batch_that_fails_midway_leaves_every_earlier_window_intact,
    a_person_listed_twice_in_a_batch_ends_with_the_later_entry_as_with_separate_calls,
    empty_batches_write_nothing_and_succeed,
    batches_larger_than_one_sql_statement_store_what_single_calls_store,
);
