//! Check-in and auto-release of room meetings (`[rooms] check_in_minutes`).
//!
//! A room's meeting is held for `N` minutes after its start. Someone checks it in on the room's
//! panel or through `POST /api/v1/rooms/{address}/check-in`; a meeting nobody checked in by
//! start + N is released: declined in the room's calendar (the organizer gets the comment) and
//! removed from the stored calendar, so the room is free from that second. This module keeps
//! the deadlines of the rooms this instance follows, with its own timer set beside the hub's
//! (a deadline is not a presence change), woken by the hub whenever a stored calendar changes.
//!
//! The store decides between a check-in and a release that meet at the same second: each
//! writes the meeting's record only if it has none ([`Store::claim_room_meeting`]), so on
//! several instances too, exactly one of them wins. A release the source refuses (no write
//! right to the rooms' calendars) releases nothing: the meeting stays, the refusal is recorded
//! on the meeting and shown per source, and a later check-in still counts.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use calbridge_domain::SourceId;
use calbridge_presence::{check_in_candidate, check_in_meetings, CheckInMeeting};
use calbridge_store::{CheckInState, PersonKey, RoomCheckIn, Store};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::{broadcast, Notify};

use crate::clock::Clock;
use crate::hub::PresenceHub;
use crate::shutdown::Shutdown;
use crate::sync::DirectoryTarget;

/// A deadline found later than this (calbridge was not running then, or the meeting was
/// booked after its deadline) releases nothing: a meeting is only released at its deadline.
const LATE_GRACE: SignedDuration = SignedDuration::from_secs(60);
/// How often every room's deadlines are computed again, whatever the hub said (one store read
/// for all rooms): catches a room the directory listed after its calendar was first read.
const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the list of which people are rooms is trusted.
const ROOMS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct CheckInCounters {
    pub check_ins: AtomicU64,
    pub released: AtomicU64,
    pub release_failures: AtomicU64,
}

/// The last release a source refused, shown until one succeeds.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub at: Timestamp,
    pub error: String,
}

/// Why a check-in was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CheckInError {
    #[error(
        "no meeting of room {room} can be checked in now: check-in opens {minutes} minutes \
         before a meeting's start and lasts until it ends, once per meeting"
    )]
    NoMeeting { room: String, minutes: u32 },
    #[error("the meeting of room {room} that started at {start} was released at {at}: nobody checked it in in time")]
    Released {
        room: String,
        start: Timestamp,
        at: Timestamp,
    },
    #[error("cannot check in: {0}")]
    Store(String),
}

/// One meeting due for release.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    deadline: Timestamp,
    room: PersonKey,
    appointment_id: String,
    start: Timestamp,
}

#[derive(Default)]
struct Rooms {
    read_at: Option<std::time::Instant>,
    keys: HashSet<PersonKey>,
}

pub struct CheckIns {
    minutes: u32,
    comment: String,
    store: Arc<dyn Store>,
    hub: Arc<PresenceHub>,
    clock: Arc<dyn Clock>,
    targets: HashMap<SourceId, Arc<dyn DirectoryTarget>>,
    due: Mutex<BTreeSet<Due>>,
    rooms: tokio::sync::Mutex<Rooms>,
    due_changed: Notify,
    refusals: Mutex<HashMap<SourceId, Refusal>>,
    /// Rooms whose meeting was just checked in, released or refused, for the live stream.
    recorded: tokio::sync::broadcast::Sender<PersonKey>,
    pub counters: CheckInCounters,
}

/// What the room JSON says about check-in (`check_in`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInStatus {
    pub minutes: u32,
    /// The meeting a check-in now would be for.
    pub open: Option<CheckInMeeting>,
    /// The meeting running now needs check-in and has been checked in.
    pub current_checked_in: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CheckIns {
    pub fn new(
        minutes: u32,
        comment: Option<String>,
        store: Arc<dyn Store>,
        hub: Arc<PresenceHub>,
        clock: Arc<dyn Clock>,
        targets: Vec<Arc<dyn DirectoryTarget>>,
    ) -> Arc<CheckIns> {
        let comment = comment.unwrap_or_else(|| default_comment(minutes));
        Arc::new(CheckIns {
            minutes,
            comment,
            store,
            hub,
            clock,
            targets: targets
                .into_iter()
                .map(|target| (target.source_id().clone(), target))
                .collect(),
            due: Mutex::default(),
            rooms: tokio::sync::Mutex::default(),
            due_changed: Notify::new(),
            refusals: Mutex::default(),
            recorded: tokio::sync::broadcast::channel(64).0,
            counters: CheckInCounters::default(),
        })
    }

    /// Rooms as their meeting is checked in, released or refused here (the live stream sends
    /// each as a `room` event, so an open admin page shows it at once).
    pub fn subscribe_records(&self) -> tokio::sync::broadcast::Receiver<PersonKey> {
        self.recorded.subscribe()
    }

    pub fn minutes(&self) -> u32 {
        self.minutes
    }

    /// The sources that refused their last release, with what they answered.
    pub fn refusals(&self) -> Vec<(SourceId, Refusal)> {
        let mut refusals: Vec<(SourceId, Refusal)> = lock(&self.refusals)
            .iter()
            .map(|(source, refusal)| (source.clone(), refusal.clone()))
            .collect();
        refusals.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
        refusals
    }

    /// The meetings waiting for their deadline here.
    pub fn n_waiting(&self) -> usize {
        lock(&self.due).len()
    }

    /// Check-in for a room from its calendar and the stored records of its meetings.
    pub fn status(
        &self,
        appointments: &[calbridge_domain::Appointment],
        records: &[RoomCheckIn],
        now: Timestamp,
    ) -> CheckInStatus {
        let meetings = check_in_meetings(appointments, &self.hub.locale(), self.minutes);
        let settled = |meeting: &CheckInMeeting| {
            records.iter().any(|record| {
                record.appointment_id == meeting.id
                    && record.meeting_start == meeting.start
                    && record.state != CheckInState::ReleaseFailed
            })
        };
        let current_checked_in = meetings
            .iter()
            .filter(|meeting| meeting.start <= now && now < meeting.end)
            .any(|meeting| {
                records.iter().any(|record| {
                    record.appointment_id == meeting.id
                        && record.meeting_start == meeting.start
                        && record.state == CheckInState::CheckedIn
                })
            });
        CheckInStatus {
            minutes: self.minutes,
            open: check_in_candidate(&meetings, self.minutes, now, settled).cloned(),
            current_checked_in,
        }
    }

    /// Checks in the room's meeting that check-in is open for now.
    pub async fn check_in(&self, room: &PersonKey) -> Result<CheckInMeeting, CheckInError> {
        let now = self.clock.now();
        let failed = |error: calbridge_store::StoreError| CheckInError::Store(error.to_string());
        let appointments = self.store.load_appointments(room).await.map_err(failed)?;
        let records = self.records_of(room, now).await.map_err(failed)?;
        let status = self.status(&appointments, &records, now);
        let Some(meeting) = status.open else {
            // Say so when the meeting running now was released: the panel shows why.
            if let Some(record) = records.iter().find(|record| {
                record.state == CheckInState::Released
                    && record.meeting_start <= now
                    && now < record.meeting_end
            }) {
                return Err(CheckInError::Released {
                    room: room.address.to_string(),
                    start: record.meeting_start,
                    at: record.at,
                });
            }
            return Err(CheckInError::NoMeeting {
                room: room.address.to_string(),
                minutes: self.minutes,
            });
        };
        let record = RoomCheckIn {
            appointment_id: meeting.id.clone(),
            meeting_start: meeting.start,
            meeting_end: meeting.end,
            state: CheckInState::CheckedIn,
            at: now,
            detail: None,
        };
        if !self
            .store
            .claim_room_meeting(room, &record)
            .await
            .map_err(failed)?
        {
            // The release won the same second.
            return Err(CheckInError::Released {
                room: room.address.to_string(),
                start: meeting.start,
                at: now,
            });
        }
        self.counters.check_ins.fetch_add(1, Ordering::Relaxed);
        // Nobody listening is fine.
        let _ = self.recorded.send(room.clone());
        tracing::info!(
            room = %room.address,
            meeting_start = %meeting.start,
            "meeting checked in"
        );
        Ok(meeting)
    }

    /// The records of one room's meetings that end after a day before `now`.
    pub async fn records_of(
        &self,
        room: &PersonKey,
        now: Timestamp,
    ) -> Result<Vec<RoomCheckIn>, calbridge_store::StoreError> {
        Ok(self
            .store
            .list_room_meetings(now - SignedDuration::from_hours(24))
            .await?
            .into_iter()
            .filter(|(key, _)| key == room)
            .map(|(_, record)| record)
            .collect())
    }

    /// The guard: computes deadlines as calendars change, releases what is due. Ends on
    /// `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let mut calendars = self.hub.subscribe_calendars();
        self.rescan().await;
        let mut rescan = tokio::time::interval(RESCAN_EVERY);
        rescan.tick().await;
        loop {
            self.release_due();
            let earliest = lock(&self.due).first().map(|due| due.deadline);
            let sleep = match earliest {
                Some(at) => self.clock.sleep_until(at),
                None => Box::pin(std::future::pending()),
            };
            tokio::select! {
                received = calendars.recv() => match received {
                    Ok(person) => self.recompute(&person).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.rescan().await,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = sleep => {}
                _ = self.due_changed.notified() => {}
                _ = rescan.tick() => self.rescan().await,
                _ = shutdown.wait() => return,
            }
        }
    }

    /// Every room's deadlines from the store, in one read.
    async fn rescan(&self) {
        let listed = match self.store.list_rooms_with_appointments().await {
            Ok(listed) => listed,
            Err(error) => {
                // Keep what is known; the next change or rescan reads again.
                tracing::warn!("check-in cannot read the rooms from the store: {error}");
                return;
            }
        };
        {
            let mut rooms = self.rooms.lock().await;
            rooms.keys = listed.iter().map(|(key, _, _)| key.clone()).collect();
            rooms.read_at = Some(std::time::Instant::now());
        }
        for (room, _, appointments) in listed {
            self.set_deadlines(&room, Some(&appointments));
        }
        let rooms = self.rooms.lock().await.keys.clone();
        lock(&self.due).retain(|due| rooms.contains(&due.room));
        self.due_changed.notify_one();
    }

    /// Replaces `room`'s deadlines with those of `appointments` (none when `None` or when
    /// another instance follows the room).
    fn set_deadlines(
        &self,
        room: &PersonKey,
        appointments: Option<&[calbridge_domain::Appointment]>,
    ) {
        let now = self.clock.now();
        let deadlines: Vec<Due> = match appointments {
            Some(appointments) if self.hub.follows(room) => {
                check_in_meetings(appointments, &self.hub.locale(), self.minutes)
                    .into_iter()
                    .filter(|meeting| meeting.deadline + LATE_GRACE >= now)
                    .map(|meeting| Due {
                        deadline: meeting.deadline,
                        room: room.clone(),
                        appointment_id: meeting.id,
                        start: meeting.start,
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut due = lock(&self.due);
        due.retain(|due| &due.room != room);
        due.extend(deadlines);
    }

    async fn read_rooms(&self, rooms: &mut Rooms) {
        match self.store.list_rooms().await {
            Ok(listed) => {
                rooms.keys = listed.into_iter().map(|(key, _)| key).collect();
                rooms.read_at = Some(std::time::Instant::now());
            }
            // Keep the last list; the next change or rescan reads again.
            Err(error) => tracing::warn!("check-in cannot read the rooms from the store: {error}"),
        }
    }

    async fn is_room(&self, person: &PersonKey) -> bool {
        let mut rooms = self.rooms.lock().await;
        if rooms.keys.contains(person) {
            return true;
        }
        if rooms
            .read_at
            .is_none_or(|read_at| read_at.elapsed() > ROOMS_MAX_AGE)
        {
            self.read_rooms(&mut rooms).await;
        }
        rooms.keys.contains(person)
    }

    /// One person's deadlines, after their calendar changed.
    async fn recompute(&self, person: &PersonKey) {
        if self.hub.follows(person) && self.is_room(person).await {
            match self.store.load_appointments(person).await {
                Ok(appointments) => self.set_deadlines(person, Some(&appointments)),
                Err(error) => {
                    // Keep the deadlines known; the next change or rescan reads again.
                    tracing::warn!(room = %person, "check-in cannot read the room's calendar: {error}");
                    return;
                }
            }
        } else {
            self.set_deadlines(person, None);
        }
        self.due_changed.notify_one();
    }

    /// Starts the release of every meeting whose deadline has come, each on its own task so
    /// that a slow server holds up no other room.
    fn release_due(self: &Arc<Self>) {
        for due in self.take_due() {
            let guard = self.clone();
            tokio::spawn(async move { guard.release(due).await });
        }
    }

    /// The meetings whose deadline has come, out of the set.
    fn take_due(&self) -> Vec<Due> {
        let now = self.clock.now();
        let mut due = lock(&self.due);
        let mut taken = Vec::new();
        while due.first().is_some_and(|first| first.deadline <= now) {
            taken.extend(due.pop_first());
        }
        taken
    }

    async fn release(&self, due: Due) -> Released {
        let now = self.clock.now();
        let room = &due.room;
        if now > due.deadline + LATE_GRACE || !self.hub.follows(room) {
            return Released::Not;
        }
        let appointments = match self.store.load_appointments(room).await {
            Ok(appointments) => appointments,
            Err(error) => {
                tracing::warn!(room = %room, "cannot release a meeting: the store does not answer: {error}");
                return Released::Not;
            }
        };
        let Some(meeting) = check_in_meetings(&appointments, &self.hub.locale(), self.minutes)
            .into_iter()
            .find(|meeting| meeting.id == due.appointment_id && meeting.start == due.start)
        else {
            // Moved or cancelled meanwhile: its new deadline is in the set already.
            return Released::Not;
        };
        let rule = format!(
            "nobody checked in within {} minutes of the start",
            self.minutes
        );
        let claim = RoomCheckIn {
            appointment_id: meeting.id.clone(),
            meeting_start: meeting.start,
            meeting_end: meeting.end,
            state: CheckInState::Released,
            at: now,
            detail: Some(rule.clone()),
        };
        match self.store.claim_room_meeting(room, &claim).await {
            Ok(true) => {}
            // Checked in (or released by another instance before it handed the room over).
            Ok(false) => return Released::Not,
            Err(error) => {
                tracing::warn!(room = %room, "cannot release a meeting: the store does not answer: {error}");
                return Released::Not;
            }
        }
        let declined = match self.targets.get(&room.source) {
            Some(target) => target.decline(room, &meeting.id, &self.comment).await,
            None => Err(format!("source {} is not running", room.source)),
        };
        match declined {
            Ok(()) => {
                if let Err(error) = self
                    .store
                    .apply_appointment_changes(room, Vec::new(), vec![meeting.id.clone()])
                    .await
                {
                    // The source's change notification removes it at the next read.
                    tracing::warn!(room = %room, "released meeting stays in the store until the next read: {error}");
                }
                self.hub.refresh(room).await;
                lock(&self.refusals).remove(&room.source);
                self.counters.released.fetch_add(1, Ordering::Relaxed);
                let _ = self.recorded.send(room.clone());
                tracing::info!(
                    room = %room.address,
                    source = %room.source,
                    meeting_start = %meeting.start,
                    meeting_end = %meeting.end,
                    "meeting released: {rule}; declined in the room's calendar"
                );
                Released::Declined
            }
            Err(error) => {
                let failed = RoomCheckIn {
                    state: CheckInState::ReleaseFailed,
                    detail: Some(error.clone()),
                    ..claim
                };
                if let Err(store_error) = self.store.set_room_meeting(room, &failed).await {
                    tracing::warn!(room = %room, "cannot record a refused release: {store_error}");
                }
                self.counters
                    .release_failures
                    .fetch_add(1, Ordering::Relaxed);
                let _ = self.recorded.send(room.clone());
                let first = lock(&self.refusals)
                    .insert(
                        room.source.clone(),
                        Refusal {
                            at: now,
                            error: error.clone(),
                        },
                    )
                    .is_none_or(|previous| previous.error != error);
                // Once per source and answer: a source without write rights refuses them all.
                if first {
                    tracing::warn!(
                        room = %room.address,
                        source = %room.source,
                        meeting_start = %meeting.start,
                        "cannot release a meeting nobody checked in; it stays booked: {error}"
                    );
                }
                Released::Refused
            }
        }
    }
}

/// What became of one deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Released {
    /// Checked in, moved, cancelled, late, or another instance's room.
    Not,
    Declined,
    Refused,
}

fn default_comment(minutes: u32) -> String {
    format!(
        "This room was released automatically: nobody checked in within {minutes} minutes of \
         the meeting's start."
    )
}

#[cfg(test)]
mod tests {
    //! The guard on the manual clock: the release comes at start + N exactly, not a second
    //! before; a check-in at start + N − 1 s keeps the meeting; a refusal releases nothing and
    //! gives way to a later check-in; a deadline found late releases nothing.

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::PresenceConfig;
    use crate::sync::Work;
    use calbridge_domain::{
        Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, RoomInfo, Sensitivity,
        ShowAs,
    };
    use calbridge_store::{PersonUpsert, SecretKey, SqliteStore};

    const SOURCE: &str = "m365";
    const ROOM: &str = "room.1@contoso.example";

    fn at(text: &str) -> Timestamp {
        text.parse().expect("an instant")
    }

    /// A source whose declines are written down, or refused with `refuse`.
    struct FakeTarget {
        source: SourceId,
        refuse: Option<String>,
        declined: Mutex<Vec<(PersonKey, String, String)>>,
    }

    #[async_trait::async_trait]
    impl DirectoryTarget for FakeTarget {
        fn source_id(&self) -> &SourceId {
            &self.source
        }
        fn enqueue(&self, _work: Work) {}
        async fn group_members(
            &self,
            _group: &str,
        ) -> Result<Vec<crate::sync::GroupMember>, String> {
            Err("no groups".to_string())
        }
        async fn record_resolved_members(
            &self,
            _members: Vec<(PersonKey, MailboxAddress, String)>,
        ) {
        }
        async fn decline(
            &self,
            person: &PersonKey,
            appointment_id: &str,
            comment: &str,
        ) -> Result<(), String> {
            lock(&self.declined).push((
                person.clone(),
                appointment_id.to_string(),
                comment.to_string(),
            ));
            match &self.refuse {
                Some(error) => Err(error.clone()),
                None => Ok(()),
            }
        }
    }

    fn meeting(id: &str, start: &str, end: &str) -> Appointment {
        Appointment {
            id: id.to_string(),
            time: AppointmentTime::Timed {
                start: at(start),
                end: at(end),
            },
            show_as: ShowAs::Busy,
            sensitivity: Sensitivity::Normal,
            subject: Some("Planning".to_string()),
            organizer: MailboxAddress::parse("ann.berg@contoso.example").ok(),
            status: AppointmentStatus::Active,
        }
    }

    struct Rig {
        guard: Arc<CheckIns>,
        target: Arc<FakeTarget>,
        store: Arc<dyn Store>,
        hub: Arc<PresenceHub>,
        clock: ManualClock,
        room: PersonKey,
    }

    async fn rig(refuse: Option<&str>, now: &str, calendar: Vec<Appointment>) -> Rig {
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open_in_memory(SecretKey::generate())
                .await
                .expect("an in-memory store"),
        );
        let source = SourceId(SOURCE.to_string());
        let room = PersonKey::new(
            source.clone(),
            MailboxAddress::parse(ROOM).expect("an address"),
        );
        store
            .upsert_person(&PersonUpsert {
                key: room.clone(),
                display_name: Some("Meeting room 1".to_string()),
                sip_uri: None,
            })
            .await
            .expect("the room stored");
        store
            .set_rooms(&source, &[RoomInfo::new(room.address.clone())])
            .await
            .expect("the room's details");
        store
            .apply_appointment_changes(&room, calendar.clone(), Vec::new())
            .await
            .expect("the calendar stored");
        let clock = ManualClock::new(at(now));
        let presence = PresenceConfig::default();
        let (hub, _persist) = PresenceHub::new(
            presence.rules(),
            presence.locale(),
            Arc::new(clock.clone()),
            store.clone(),
        );
        hub.set_appointments(&room, &calendar);
        let target = Arc::new(FakeTarget {
            source,
            refuse: refuse.map(str::to_string),
            declined: Mutex::default(),
        });
        let guard = CheckIns::new(
            10,
            None,
            store.clone(),
            hub.clone(),
            Arc::new(clock.clone()),
            vec![target.clone() as Arc<dyn DirectoryTarget>],
        );
        guard.rescan().await;
        Rig {
            guard,
            target,
            store,
            hub,
            clock,
            room,
        }
    }

    impl Rig {
        /// Releases what is due at `now`, as the guard's task does.
        async fn tick(&self, now: &str) -> Vec<Released> {
            self.clock.set(at(now));
            // The hub's timers, as its task fires them.
            self.hub.fire_due_timers().await;
            let mut outcomes = Vec::new();
            for due in self.guard.take_due() {
                outcomes.push(self.guard.release(due).await);
            }
            outcomes
        }

        fn occupied(&self) -> bool {
            let (decision, _) = self.hub.decision(&self.room).expect("a decision");
            decision.activity != calbridge_presence::Activity::Available
        }

        async fn records(&self) -> Vec<(String, CheckInState, Timestamp)> {
            self.store
                .list_room_meetings(at("2026-01-01T00:00:00Z"))
                .await
                .expect("the records")
                .into_iter()
                .map(|(_, record)| (record.appointment_id, record.state, record.at))
                .collect()
        }
    }

    #[tokio::test]
    async fn an_unchecked_meeting_is_declined_at_start_plus_n_exactly_and_the_room_is_free_then() {
        let rig = rig(
            None,
            "2026-12-07T08:30:00Z",
            vec![meeting(
                "m1",
                "2026-12-07T09:00:00Z",
                "2026-12-07T10:00:00Z",
            )],
        )
        .await;
        assert_eq!(rig.guard.n_waiting(), 1);
        assert!(rig.tick("2026-12-07T09:00:00Z").await.is_empty());
        assert!(rig.occupied());
        assert!(
            rig.tick("2026-12-07T09:09:59Z").await.is_empty(),
            "not a second before start + 10 minutes"
        );
        assert!(lock(&rig.target.declined).is_empty());
        assert_eq!(
            rig.tick("2026-12-07T09:10:00Z").await,
            vec![Released::Declined]
        );
        let declined = lock(&rig.target.declined).clone();
        assert_eq!(declined.len(), 1);
        assert_eq!(declined[0].0, rig.room);
        assert_eq!(declined[0].1, "m1");
        assert!(
            declined[0]
                .2
                .contains("nobody checked in within 10 minutes"),
            "{}",
            declined[0].2
        );
        // Free from that second: the meeting is gone from the store and the presence decided
        // at 09:10:00.
        assert!(rig
            .store
            .load_appointments(&rig.room)
            .await
            .expect("the calendar")
            .is_empty());
        let (decision, decided_at) = rig.hub.decision(&rig.room).expect("a decision");
        assert_eq!(decision.activity, calbridge_presence::Activity::Available);
        assert_eq!(decided_at, at("2026-12-07T09:10:00Z"));
        assert_eq!(
            rig.records().await,
            vec![(
                "m1".to_string(),
                CheckInState::Released,
                at("2026-12-07T09:10:00Z")
            )]
        );
        assert_eq!(rig.guard.counters.released.load(Ordering::Relaxed), 1);
        // A check-in now is told why there is nothing to check in.
        let error = rig.guard.check_in(&rig.room).await.unwrap_err();
        assert!(matches!(error, CheckInError::Released { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("released at 2026-12-07T09:10:00Z"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_meeting_checked_in_at_start_plus_n_minus_one_second_is_kept() {
        let rig = rig(
            None,
            "2026-12-07T08:30:00Z",
            vec![meeting(
                "m1",
                "2026-12-07T09:00:00Z",
                "2026-12-07T10:00:00Z",
            )],
        )
        .await;
        // Check-in opens 10 minutes before the start.
        rig.clock.set(at("2026-12-07T08:49:59Z"));
        assert!(matches!(
            rig.guard.check_in(&rig.room).await,
            Err(CheckInError::NoMeeting { .. })
        ));
        rig.clock.set(at("2026-12-07T09:09:59Z"));
        let status = rig.guard.status(
            &rig.store
                .load_appointments(&rig.room)
                .await
                .expect("calendar"),
            &[],
            at("2026-12-07T09:09:59Z"),
        );
        assert_eq!(
            status.open.as_ref().map(|meeting| meeting.deadline),
            Some(at("2026-12-07T09:10:00Z"))
        );
        let checked = rig.guard.check_in(&rig.room).await.expect("checked in");
        assert_eq!(checked.id, "m1");
        assert_eq!(rig.tick("2026-12-07T09:10:00Z").await, vec![Released::Not]);
        assert!(lock(&rig.target.declined).is_empty());
        assert!(rig.occupied());
        assert_eq!(
            rig.records().await,
            vec![(
                "m1".to_string(),
                CheckInState::CheckedIn,
                at("2026-12-07T09:09:59Z")
            )]
        );
        // The panel now shows the meeting checked in and no check-in button.
        let records = rig
            .guard
            .records_of(&rig.room, at("2026-12-07T09:30:00Z"))
            .await
            .expect("records");
        let status = rig.guard.status(
            &rig.store
                .load_appointments(&rig.room)
                .await
                .expect("calendar"),
            &records,
            at("2026-12-07T09:30:00Z"),
        );
        assert!(status.current_checked_in);
        assert_eq!(status.open, None);
        // A second check-in of the same meeting is refused with the reason.
        assert!(matches!(
            rig.guard.check_in(&rig.room).await,
            Err(CheckInError::NoMeeting { .. })
        ));
    }

    #[tokio::test]
    async fn a_refused_release_keeps_the_meeting_says_why_and_gives_way_to_a_check_in() {
        let refusal = "Graph answered 403 ErrorAccessDenied: the app needs Calendars.ReadWrite";
        let rig = rig(
            Some(refusal),
            "2026-12-07T08:30:00Z",
            vec![
                meeting("m1", "2026-12-07T09:00:00Z", "2026-12-07T10:00:00Z"),
                meeting("m2", "2026-12-07T11:00:00Z", "2026-12-07T12:00:00Z"),
            ],
        )
        .await;
        assert_eq!(
            rig.tick("2026-12-07T09:10:00Z").await,
            vec![Released::Refused]
        );
        assert!(rig.occupied(), "a refused release frees nothing");
        assert_eq!(
            rig.store
                .load_appointments(&rig.room)
                .await
                .expect("calendar")
                .len(),
            2
        );
        let refusals = rig.guard.refusals();
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].1.error, refusal);
        assert_eq!(
            rig.records().await,
            vec![(
                "m1".to_string(),
                CheckInState::ReleaseFailed,
                at("2026-12-07T09:10:00Z")
            )]
        );
        // Someone arrives late and checks in: that counts.
        rig.clock.set(at("2026-12-07T09:20:00Z"));
        assert_eq!(
            rig.guard.check_in(&rig.room).await.expect("checked in").id,
            "m1"
        );
        assert_eq!(
            rig.guard.counters.release_failures.load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_deadline_found_late_or_a_meeting_moved_meanwhile_releases_nothing() {
        // Started at 09:00 with calbridge down until 09:30: its 09:10 deadline is past.
        let rig = rig(
            None,
            "2026-12-07T09:30:00Z",
            vec![
                meeting("m1", "2026-12-07T09:00:00Z", "2026-12-07T10:00:00Z"),
                meeting("m2", "2026-12-07T11:00:00Z", "2026-12-07T12:00:00Z"),
            ],
        )
        .await;
        assert_eq!(rig.guard.n_waiting(), 1, "only the 11:00 meeting waits");
        // The 11:00 meeting moves to 13:00 before its deadline: the calendar change brings the
        // new deadline.
        let moved = vec![
            meeting("m1", "2026-12-07T09:00:00Z", "2026-12-07T10:00:00Z"),
            meeting("m2", "2026-12-07T13:00:00Z", "2026-12-07T14:00:00Z"),
        ];
        rig.store
            .apply_appointment_changes(&rig.room, moved.clone(), Vec::new())
            .await
            .expect("stored");
        rig.hub.set_appointments(&rig.room, &moved);
        rig.guard.recompute(&rig.room).await;
        assert!(rig.tick("2026-12-07T11:10:00Z").await.is_empty());
        assert_eq!(
            rig.tick("2026-12-07T13:10:00Z").await,
            vec![Released::Declined]
        );
        assert_eq!(lock(&rig.target.declined).len(), 1);
    }
}
