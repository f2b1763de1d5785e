//! The presence hub: every person's appointments, their current decision, and a timer per
//! person at the decision's `next_change_at`.
//!
//! Sources hand in appointments; the hub runs the engine for that one person, publishes the
//! decision when it differs from the last one, and sets the person's timer. A single task
//! ([`PresenceHub::run_timers`]) sleeps until the earliest timer: there is no loop over all
//! users, and presence flips at the boundary itself, not at the next poll.
//!
//! Three kinds of listeners follow the hub, and they see different things:
//! - publishers (SIP, webhooks) and the store writer see only the decisions made here, for the
//!   people this instance follows ([`PresenceHub::subscribe_events`]);
//! - the live stream (SSE) sees those and also the changes other instances decided, relayed
//!   from the store by the presence feed ([`PresenceHub::subscribe_stream`],
//!   [`PresenceHub::relay`]).
//!
//! **Invariant:** a relayed change never reaches a publisher or the store: publishing a person
//! belongs to the instance that follows them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use calbridge_domain::Appointment;
use calbridge_presence::{decide, Decision, Locale, Rules};
use calbridge_store::{CurrentPresence, PersonKey, Store};
use futures_util::StreamExt;
use jiff::Timestamp;
use tokio::sync::{broadcast, mpsc, Notify};

use crate::clock::Clock;
use crate::shutdown::Shutdown;

/// A published presence change.
#[derive(Debug, Clone)]
pub struct PresenceChange {
    pub person: PersonKey,
    pub decision: Arc<Decision>,
    /// When the engine decided it (the service clock).
    pub decided_at: Timestamp,
}

/// A change another instance decided, as it saved it, relayed by the presence feed.
#[derive(Debug, Clone)]
pub struct RelayedChange {
    pub person: PersonKey,
    pub presence: Arc<CurrentPresence>,
}

/// What the live stream shows: every presence change, whoever follows the person.
#[derive(Debug, Clone)]
pub enum StreamedChange {
    /// Decided here: this instance follows the person.
    Decided(PresenceChange),
    /// Decided by the instance that follows the person.
    Relayed(RelayedChange),
}

impl StreamedChange {
    /// Whose presence changed.
    pub fn person(&self) -> &PersonKey {
        match self {
            StreamedChange::Decided(change) => &change.person,
            StreamedChange::Relayed(relayed) => &relayed.person,
        }
    }
}

/// What publishers follow: changes, and people who left the directory.
#[derive(Debug, Clone)]
pub enum HubEvent {
    Changed(PresenceChange),
    /// Left the directory: publications are withdrawn.
    Removed(PersonKey),
    /// Followed by another instance from now on: this one stops publishing them, leaving what
    /// it published for the new owner to continue.
    HandedOver(PersonKey),
}

struct PersonEntry {
    decision: Option<Arc<Decision>>,
    decided_at: Option<Timestamp>,
    timer: Option<Timestamp>,
    /// Bumped by every calendar update, so that a timer that loaded the appointments from the
    /// store does not overwrite a decision made from newer ones meanwhile.
    version: u64,
}

struct Timeline {
    people: HashMap<PersonKey, PersonEntry>,
    timers: BTreeSet<(Timestamp, PersonKey)>,
}

/// The hub keeps decisions and timers in memory, not appointments: those live in the store,
/// which the hub reads when a timer fires. That keeps memory per person small (a decision is a
/// few hundred bytes; a day of Graph events with their long ids is kilobytes).
pub struct PresenceHub {
    /// Replaced as a whole when the configuration is reloaded ([`PresenceHub::set_rules`]).
    rules: RwLock<(Arc<Rules>, Arc<Locale>)>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    state: Mutex<Timeline>,
    timers_changed: Notify,
    changes: broadcast::Sender<PresenceChange>,
    events: broadcast::Sender<HubEvent>,
    /// Every change decided here and every change relayed from other instances.
    stream: broadcast::Sender<StreamedChange>,
    /// Changes for the store's writer task, which persists them off the hot path.
    persist: mpsc::UnboundedSender<PresenceChange>,
    /// A person whose stored calendar changed (a read, a delta): for the check-in guard, which
    /// needs every meeting's start, not only the presence changes.
    calendars: broadcast::Sender<PersonKey>,
    counters: HubCounters,
}

#[derive(Debug, Default)]
pub struct HubCounters {
    pub decisions: std::sync::atomic::AtomicU64,
    pub changes: std::sync::atomic::AtomicU64,
    pub timer_fires: std::sync::atomic::AtomicU64,
    /// Changes other instances decided, put on the live stream here.
    pub relayed: std::sync::atomic::AtomicU64,
}

/// Timers due at the same instant (09:00 for half the company) load their appointments this
/// many at a time.
const PARALLEL_TIMER_LOADS: usize = 16;

impl PresenceHub {
    /// The hub and the receiving end of the persistence queue (for the store writer task).
    pub fn new(
        rules: Rules,
        locale: Locale,
        clock: Arc<dyn Clock>,
        store: Arc<dyn Store>,
    ) -> (Arc<PresenceHub>, mpsc::UnboundedReceiver<PresenceChange>) {
        let (changes, _) = broadcast::channel(4096);
        let (events, _) = broadcast::channel(4096);
        let (stream, _) = broadcast::channel(4096);
        let (persist, persist_rx) = mpsc::unbounded_channel();
        let (calendars, _) = broadcast::channel(4096);
        let hub = PresenceHub {
            rules: RwLock::new((Arc::new(rules), Arc::new(locale))),
            clock,
            store,
            state: Mutex::new(Timeline {
                people: HashMap::new(),
                timers: BTreeSet::new(),
            }),
            timers_changed: Notify::new(),
            changes,
            events,
            stream,
            persist,
            calendars,
            counters: HubCounters::default(),
        };
        (Arc::new(hub), persist_rx)
    }

    fn lock(&self) -> MutexGuard<'_, Timeline> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing presence for everyone, so keep going with the data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PresenceChange> {
        self.changes.subscribe()
    }

    /// Changes and removals, for publishers.
    pub fn subscribe_events(&self) -> broadcast::Receiver<HubEvent> {
        self.events.subscribe()
    }

    /// Every change for the live stream: those decided here and those relayed.
    pub fn subscribe_stream(&self) -> broadcast::Receiver<StreamedChange> {
        self.stream.subscribe()
    }

    /// People whose stored calendar changed, as they are decided anew.
    pub fn subscribe_calendars(&self) -> broadcast::Receiver<PersonKey> {
        self.calendars.subscribe()
    }

    /// Whether this instance decides `person`'s presence (follows them).
    pub fn follows(&self, person: &PersonKey) -> bool {
        self.lock().people.contains_key(person)
    }

    /// Puts a change another instance decided on the live stream, and nowhere else.
    pub fn relay(&self, person: PersonKey, presence: CurrentPresence) {
        self.counters
            .relayed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = self.stream.send(StreamedChange::Relayed(RelayedChange {
            person,
            presence: Arc::new(presence),
        }));
    }

    pub fn counters(&self) -> &HubCounters {
        &self.counters
    }

    pub fn rules(&self) -> Arc<Rules> {
        self.rules_and_locale().0
    }

    pub fn locale(&self) -> Arc<Locale> {
        self.rules_and_locale().1
    }

    fn rules_and_locale(&self) -> (Arc<Rules>, Arc<Locale>) {
        let guard = self
            .rules
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (guard.0.clone(), guard.1.clone())
    }

    /// New rules and locale from a reloaded configuration: everyone is decided anew with
    /// them (from the stored appointments), so that a changed mapping, keyword or time zone
    /// shows at once. Returns how many people were decided.
    pub async fn set_rules(&self, rules: Rules, locale: Locale) -> usize {
        *self
            .rules
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = (Arc::new(rules), Arc::new(locale));
        let people = self.people();
        let n = people.len();
        futures_util::stream::iter(people)
            .for_each_concurrent(PARALLEL_TIMER_LOADS, |person| async move {
                self.decide_from_store(&person, false).await;
            })
            .await;
        n
    }

    /// Decides a person's presence from their complete, already stored appointments (after a
    /// full read, a delta, or at start-up).
    pub fn set_appointments(&self, person: &PersonKey, appointments: &[Appointment]) {
        let now = self.clock.now();
        let mut state = self.lock();
        let entry = state.people.entry(person.clone()).or_insert(PersonEntry {
            decision: None,
            decided_at: None,
            timer: None,
            version: 0,
        });
        entry.version += 1;
        self.decide_locked(&mut state, person, appointments, now);
        drop(state);
        let _ = self.calendars.send(person.clone());
    }

    /// Reads a person's appointments from the store and decides anew, after their stored
    /// calendar changed.
    pub async fn refresh(&self, person: &PersonKey) {
        self.decide_from_store(person, true).await;
    }

    /// Reads a person's appointments from the store and decides anew: at a timer, after new
    /// rules, or (`calendar_changed`) after the stored calendar changed.
    async fn decide_from_store(&self, person: &PersonKey, calendar_changed: bool) {
        let version = self.lock().people.get(person).map(|entry| entry.version);
        match self.store.load_appointments(person).await {
            Ok(appointments) => {
                let now = self.clock.now();
                let mut state = self.lock();
                let current = state.people.get(person).map(|entry| entry.version);
                if current.is_some() && current == version {
                    self.decide_locked(&mut state, person, &appointments, now);
                    drop(state);
                    if calendar_changed {
                        let _ = self.calendars.send(person.clone());
                    }
                } else if current.is_none() {
                    drop(state);
                    self.set_appointments(person, &appointments);
                }
            }
            Err(error) => {
                // Try again shortly rather than leave the person without a timer.
                tracing::warn!(person = %person, "cannot read appointments to decide presence: {error}");
                let retry = self
                    .clock
                    .now()
                    .checked_add(jiff::SignedDuration::from_secs(5))
                    .ok();
                let mut state = self.lock();
                if let (Some(retry), Some(entry)) = (retry, state.people.get_mut(person)) {
                    let old = entry.timer.replace(retry);
                    if let Some(old) = old {
                        state.timers.remove(&(old, person.clone()));
                    }
                    state.timers.insert((retry, person.clone()));
                    self.timers_changed.notify_one();
                }
            }
        }
    }

    pub fn remove(&self, person: &PersonKey) {
        self.drop_person(person, HubEvent::Removed(person.clone()));
    }

    /// Stops deciding `person`'s presence here: another instance follows them now.
    pub fn hand_over(&self, person: &PersonKey) {
        self.drop_person(person, HubEvent::HandedOver(person.clone()));
    }

    fn drop_person(&self, person: &PersonKey, event: HubEvent) {
        let mut state = self.lock();
        if let Some(entry) = state.people.remove(person) {
            if let Some(at) = entry.timer {
                state.timers.remove(&(at, person.clone()));
            }
            let _ = self.events.send(event);
        }
    }

    pub fn decision(&self, person: &PersonKey) -> Option<(Arc<Decision>, Timestamp)> {
        let state = self.lock();
        let entry = state.people.get(person)?;
        Some((entry.decision.clone()?, entry.decided_at?))
    }

    pub fn people(&self) -> Vec<PersonKey> {
        self.lock().people.keys().cloned().collect()
    }

    pub fn n_people(&self) -> usize {
        self.lock().people.len()
    }

    pub fn n_timers(&self) -> usize {
        self.lock().timers.len()
    }

    /// Runs the engine for one person and reschedules their timer. Called with the lock held
    /// so that a timer and a calendar change for the same person cannot interleave.
    fn decide_locked(
        &self,
        state: &mut Timeline,
        person: &PersonKey,
        appointments: &[Appointment],
        now: Timestamp,
    ) {
        let Some(entry) = state.people.get_mut(person) else {
            return;
        };
        let (rules, locale) = self.rules_and_locale();
        let decision = decide(appointments, &rules, &locale, now);
        self.counters
            .decisions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let next_timer = decision.next_change_at;
        let changed = entry
            .decision
            .as_ref()
            .is_none_or(|previous| !previous.same_presence(&decision));
        let old_timer = entry.timer.take();
        entry.timer = next_timer;
        if changed {
            let decision = Arc::new(decision);
            entry.decision = Some(decision.clone());
            entry.decided_at = Some(now);
            let change = PresenceChange {
                person: person.clone(),
                decision,
                decided_at: now,
            };
            self.counters
                .changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // No subscriber is not an error: the API may simply have no stream open.
            let _ = self.changes.send(change.clone());
            let _ = self.stream.send(StreamedChange::Decided(change.clone()));
            let _ = self.events.send(HubEvent::Changed(change.clone()));
            let _ = self.persist.send(change);
        }
        if let Some(at) = old_timer {
            state.timers.remove(&(at, person.clone()));
        }
        if let Some(at) = next_timer {
            let earliest_before = state.timers.first().map(|(first, _)| *first);
            state.timers.insert((at, person.clone()));
            if earliest_before.is_none_or(|first| at < first) {
                self.timers_changed.notify_one();
            }
        }
    }

    /// Fires every due timer: each person's appointments are read from the store and decided
    /// at the current instant. Returns how many fired.
    pub async fn fire_due_timers(&self) -> usize {
        let now = self.clock.now();
        let due: Vec<PersonKey> = {
            let mut state = self.lock();
            let mut due = Vec::new();
            while let Some((at, person)) = state.timers.first().cloned() {
                if at > now {
                    break;
                }
                state.timers.remove(&(at, person.clone()));
                if let Some(entry) = state.people.get_mut(&person) {
                    entry.timer = None;
                }
                due.push(person);
            }
            due
        };
        let fired = due.len();
        futures_util::stream::iter(due)
            .for_each_concurrent(PARALLEL_TIMER_LOADS, |person| async move {
                self.decide_from_store(&person, false).await;
            })
            .await;
        self.counters
            .timer_fires
            .fetch_add(fired as u64, std::sync::atomic::Ordering::Relaxed);
        fired
    }

    /// The timer task: sleeps until the earliest `next_change_at`, fires what is due, and
    /// sleeps again; wakes early when a sooner timer is set. Ends on `shutdown`.
    pub async fn run_timers(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            self.fire_due_timers().await;
            let earliest = self.lock().timers.first().map(|(at, _)| *at);
            let sleep = match earliest {
                Some(at) => self.clock.sleep_until(at),
                None => Box::pin(std::future::pending()),
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.timers_changed.notified() => {}
                _ = shutdown.wait() => return,
            }
        }
    }
}
