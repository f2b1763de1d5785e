//! The sync engine: the one place that decides who is read, when, and with which back-off.
//!
//! Every source keeps people's calendars fresh the same way: restore what the store knew,
//! resolve the directory's addresses to mailboxes, read everyone's window, watch for changes
//! (webhooks, a stream, polling), read again what changed, try failures again after a back-off,
//! re-read everyone at local midnight and keep per-person health for the admin page. The engine
//! does all of that once. A source ([`CalendarSource`]) only says how to resolve a person, how
//! to read windows (one or a batch), how to read one person's changes, and how to watch people;
//! what it sees comes back to the engine as work ("re-read this person").
//!
//! One failing mailbox never blocks the others: every person's work is independent, errors are
//! recorded per person and retried per person.
//!
//! Several instances on one PostgreSQL share the people by shard leases
//! ([`crate::cluster::Ownership`]): an engine follows only the people its instance owns, takes
//! over a shard's people from the store when its instance gains the shard ([`Engine::take_over`])
//! and lets them go when it loses it ([`Engine::let_go`]); work for anyone else is dropped. With
//! one instance the ownership is everyone.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use calbridge_domain::{Appointment, MailboxAddress, SourceId};
use calbridge_store::{PersonKey, Resolution, Store, SyncError, WindowReplacement};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::{mpsc, Semaphore};

use crate::clock::Clock;
use crate::cluster::Ownership;
use crate::config::SyncConfig;
use crate::hub::PresenceHub;
use crate::shutdown::Shutdown;

/// Work for the engine, queued by webhooks, streams, the directory, timers and retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Work {
    /// A person appeared in the directory (or changed): resolve, read and watch them.
    Added(PersonKey),
    Removed(PersonKey),
    /// Read what changed in this person's calendar.
    Changed(PersonKey),
    /// Watch this person anew (their subscription vanished or never existed).
    Rewatch(PersonKey),
    /// Extend this person's subscription.
    Renew(PersonKey),
}

/// What the admin page shows of one person's sync.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PersonHealth {
    /// What the source reads the person by: Graph's user id, Exchange's primary SMTP address.
    #[serde(skip)]
    pub user: Option<String>,
    pub resolved_address: Option<String>,
    pub resolution_error: Option<String>,
    pub last_full_sync_at: Option<Timestamp>,
    pub last_delta_at: Option<Timestamp>,
    pub subscription_expires_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    pub consecutive_failures: u32,
    #[serde(skip)]
    pub subscription_id: Option<String>,
    /// Where the source's change reads go on from (Graph's delta link), bound to `window`.
    #[serde(skip)]
    pub change_cursor: Option<String>,
    #[serde(skip)]
    pub window: Option<(Timestamp, Timestamp)>,
}

/// Where the first sync stands, for the progress bar and the admin page.
#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicUsize,
    pub done: AtomicUsize,
    pub failed: AtomicUsize,
    /// Every window of the first sync is read (or failed): presence is right from here on;
    /// subscriptions may still be in the making (a later delta covers the gap).
    pub windows_read: AtomicBool,
    pub finished: AtomicBool,
}

/// Why a person's resolution, read or watch failed, in the terms the engine decides by.
#[derive(Debug, Clone)]
pub struct Trouble {
    pub message: String,
    /// Trying again later may succeed without anyone changing anything.
    pub retryable: bool,
    /// The source's credentials were refused: tried again every [`RETRY_MAX`].
    pub credentials: bool,
    /// The source as a whole is in trouble (credentials, discovery, the token endpoint), not
    /// this mailbox: logged once for everyone, not once per person.
    pub source_wide: bool,
    /// How long the server asked to wait.
    pub retry_after: Option<Duration>,
}

impl Trouble {
    /// A trouble of this one mailbox that trying again cannot mend.
    pub fn lasting(message: String) -> Trouble {
        Trouble {
            message,
            retryable: false,
            credentials: false,
            source_wide: false,
            retry_after: None,
        }
    }
}

/// A person a source found: the primary SMTP address and what the source reads them by.
pub struct Resolved {
    pub primary_smtp: MailboxAddress,
    /// Graph's object id; None where the source reads by address (Exchange).
    pub source_user_id: Option<String>,
}

impl Resolved {
    fn user(&self) -> String {
        self.source_user_id
            .clone()
            .unwrap_or_else(|| self.primary_smtp.to_string())
    }
}

/// What a change read found.
pub enum ChangeRead {
    /// The whole window, replacing what is stored.
    Window(Vec<Appointment>),
    /// Changes since the cursor, and where the next read goes on from.
    Changes {
        upserts: Vec<Appointment>,
        removed_ids: Vec<String>,
        cursor: String,
    },
    /// The source forgot where it was: the window is read anew.
    ReadWindowAgain,
}

/// One person's change read, as the engine hands it to [`CalendarSource::read_changes_many`].
pub struct ChangeReadJob {
    pub person: PersonKey,
    pub user: String,
    pub window: (Timestamp, Timestamp),
    pub cursor: Option<String>,
}

/// People per reconciliation step: one Graph `$batch` holds 20 requests.
pub const RECONCILE_BATCH: usize = 20;

/// What a kind of source (Graph, EWS) does its own way. Everything else is the engine's.
#[async_trait::async_trait]
pub trait CalendarSource: Send + Sync + Sized + 'static {
    /// How many people's work runs at once.
    fn parallel_people(&self) -> usize;
    /// People per window-read call (results are stored per call).
    fn read_chunk(&self) -> usize;
    /// Whether a window read today can be resumed after a restart (a change cursor keeps it
    /// fresh); otherwise the first sync reads everyone.
    fn resumes_after_restart(&self) -> bool;
    /// Whether every person's changes are read every `sync.poll_interval_seconds`, because no
    /// change notification can reach us.
    fn polls_for_changes(&self) -> bool {
        false
    }
    /// Whether the reconciliation sweep reads one person's changes per step.
    fn reconciles(&self) -> bool {
        true
    }
    /// A person restored from the store at start.
    fn restored(&self, _person: &PersonKey, _health: &PersonHealth) {}
    /// Further addresses of a person from the directory, for resolution.
    fn set_alternates(&self, _person: &PersonKey, _alternates: Vec<String>) {}
    /// The members of a directory group.
    async fn group_members(&self, group: &str) -> Result<Vec<super::GroupMember>, String>;
    /// The meeting rooms of the tenant, or of one room list.
    async fn rooms(
        &self,
        _list: Option<&MailboxAddress>,
    ) -> Result<Vec<calbridge_domain::RoomInfo>, String> {
        Err("this source cannot list rooms".to_string())
    }
    /// Declines the meeting `appointment_id` in the calendar of `user` (the id [`Resolved::user`]
    /// gave: Graph's user id, EWS's primary SMTP address) with `comment` to the organizer: the
    /// release of a meeting nobody checked in. An error names what the server answered (a
    /// missing `Calendars.ReadWrite` right, impersonation refused).
    async fn decline(
        &self,
        _user: &str,
        _appointment_id: &str,
        _comment: &str,
    ) -> Result<(), String> {
        Err("this source cannot decline meetings".to_string())
    }

    /// Resolves directory addresses to mailboxes; one result per person.
    async fn resolve(&self, people: Vec<PersonKey>) -> Vec<(PersonKey, Result<Resolved, Trouble>)>;
    /// Reads the windows of `(person, user)` pairs; one result per person.
    async fn read_windows(
        &self,
        people: Vec<(PersonKey, String)>,
        start: Timestamp,
        end: Timestamp,
    ) -> Vec<(PersonKey, Result<Vec<Appointment>, Trouble>)>;
    /// Reads what changed for one person since `cursor` (None: from the window's start).
    async fn read_changes(
        &self,
        person: &PersonKey,
        user: &str,
        window: (Timestamp, Timestamp),
        cursor: Option<&str>,
    ) -> Result<ChangeRead, Trouble>;
    /// Reads what changed for several people at once (the reconciliation sweep, polling);
    /// one result per read, in input order. Sources that can combine reads (Graph's
    /// `$batch`) do; the default reads one person after the other.
    async fn read_changes_many(
        &self,
        reads: Vec<ChangeReadJob>,
    ) -> Vec<(PersonKey, Result<ChangeRead, Trouble>)> {
        let mut results = Vec::with_capacity(reads.len());
        for read in reads {
            let outcome = self
                .read_changes(
                    &read.person,
                    &read.user,
                    read.window,
                    read.cursor.as_deref(),
                )
                .await;
            results.push((read.person, outcome));
        }
        results
    }
    /// Starts watching people (subscriptions, streams) who are not watched yet.
    async fn watch(self: Arc<Self>, engine: &Arc<Engine<Self>>, people: Vec<PersonKey>);
    /// Watches a person anew whose watch the source lost (a removed subscription).
    async fn rewatch(self: Arc<Self>, engine: &Arc<Engine<Self>>, person: PersonKey) {
        self.watch(engine, vec![person]).await;
    }
    /// Stops watching a person who left the directory.
    async fn forget(&self, person: &PersonKey, health: &PersonHealth);
    /// Stops following a person another instance now owns: local bookkeeping only, the
    /// subscription stays for the new owner, who resumes it from the store.
    fn let_go(&self, _person: &PersonKey, _health: &PersonHealth) {}
    /// Renews a person's subscription.
    async fn renew(self: Arc<Self>, _engine: &Arc<Engine<Self>>, _person: PersonKey) {}
    /// Every minute: renewals and other upkeep.
    fn housekeeping(&self, _engine: &Engine<Self>) {}
    /// The service stops.
    async fn shutdown(&self) {}
}

/// The longest wait before a failed resolution, read or subscription is tried again; also
/// the wait after refused credentials (an account locked out for a while recovers by itself).
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// How long to wait before trying again after `trouble`, the `failures`-th in a row; `None`
/// when trying again cannot help (no such mailbox, no rights): such a person waits for a
/// change of the directory or the midnight re-read.
pub fn retry_delay(trouble: &Trouble, failures: u32) -> Option<Duration> {
    if trouble.credentials {
        return Some(RETRY_MAX);
    }
    if !trouble.retryable {
        return None;
    }
    Some(RETRY_BACKOFF.delay_at_least_retry_after(failures, trouble.retry_after))
}

/// Passing troubles: 1 s doubling to [`RETRY_MAX`], at least what the server asked for (but
/// no longer than `RETRY_MAX` either).
const RETRY_BACKOFF: calbridge_net::Backoff =
    calbridge_net::Backoff::doubling(Duration::from_secs(1), RETRY_MAX);

/// Runs `job` for every item and returns the results in the items' order: how every source
/// sends one request per person or batch. The first request goes alone: a wrong password or
/// secret is then refused once and the source's credential back-off stops the rest before they
/// are sent, instead of `parallel` refused logons at once. When the first is done the rest run
/// up to `parallel` at a time.
pub(crate) async fn fan_out<T, R, F, Fut>(parallel: usize, items: Vec<T>, job: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
    R: Send + 'static,
{
    let limiter = Arc::new(Semaphore::new(1));
    let mut tasks = Vec::with_capacity(items.len());
    for item in items {
        let Ok(permit) = limiter.clone().acquire_owned().await else {
            break;
        };
        let first = tasks.is_empty();
        let opening = limiter.clone();
        let request = job(item);
        tasks.push(tokio::spawn(async move {
            let result = request.await;
            drop(permit);
            if first {
                opening.add_permits(parallel.max(1) - 1);
            }
            result
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(result) = task.await {
            results.push(result);
        }
    }
    results
}

/// One source's people and the loop that keeps their calendars fresh.
pub struct Engine<S: CalendarSource> {
    pub source_id: SourceId,
    pub source: Arc<S>,
    store: Arc<dyn Store>,
    hub: Arc<PresenceHub>,
    clock: Arc<dyn Clock>,
    pub(crate) settings: SyncConfig,
    people: Mutex<HashMap<PersonKey, PersonHealth>>,
    /// Who a source's user (Graph id, Exchange address) is.
    by_user: Mutex<HashMap<String, PersonKey>>,
    queue: mpsc::UnboundedSender<Work>,
    /// Work waiting in the queue, so that the same work is not queued twice.
    pending: Mutex<HashSet<Work>>,
    pub progress: Progress,
    /// The last source-wide trouble logged and when.
    source_wide_logged: Mutex<Option<(String, Timestamp)>>,
    /// Reads are numbered as they start. One person can be read by several reads at once (a
    /// streamed change, a group re-read after a reconnect, polling, the midnight re-read), and
    /// they may finish in any order: a person's calendar is stored only from a read that
    /// started after the one stored last, so that a slow earlier read never overwrites what a
    /// later one found. The lock is held from that check until the hub has the result.
    read_numbers: AtomicU64,
    stored_reads: tokio::sync::Mutex<HashMap<PersonKey, u64>>,
    /// Group re-reads (after a reconnect, or polling) run one at a time, so that groups coming
    /// back together do not multiply the parallel requests.
    group_reads: Semaphore,
    /// People read by polling because the source cannot watch them (see [`Engine::poll`]).
    pub polled_people: Arc<AtomicUsize>,
    /// Whom this instance follows: everyone, or the people of the shards it leases.
    ownership: Mutex<Arc<Ownership>>,
    /// People whose changes the reconciliation sweep or polling read (batched), for the
    /// status page's cost figures.
    pub reconciled: AtomicU64,
    /// A reconciliation step or a poll round is running: the next tick of the same kind is
    /// skipped rather than piling up.
    reconciling: Arc<AtomicBool>,
    polling: Arc<AtomicBool>,
}

/// A group of people read every `sync.poll_interval_seconds` while the source cannot watch
/// them; dropping it stops the polling.
pub struct Polling {
    task: tokio::task::JoinHandle<()>,
    counter: Arc<AtomicUsize>,
    n_people: usize,
}

impl Drop for Polling {
    fn drop(&mut self) {
        self.task.abort();
        self.counter.fetch_sub(self.n_people, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked while holding plain data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S: CalendarSource> Engine<S> {
    /// The engine for one source, and the receiver its `run` task serves.
    pub fn with_source(
        source_id: SourceId,
        source: S,
        store: Arc<dyn Store>,
        hub: Arc<PresenceHub>,
        clock: Arc<dyn Clock>,
        settings: SyncConfig,
    ) -> (Arc<Engine<S>>, mpsc::UnboundedReceiver<Work>) {
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let engine = Engine {
            source_id,
            source: Arc::new(source),
            store,
            hub,
            clock,
            settings,
            people: Mutex::new(HashMap::new()),
            by_user: Mutex::new(HashMap::new()),
            queue,
            pending: Mutex::new(HashSet::new()),
            progress: Progress::default(),
            source_wide_logged: Mutex::new(None),
            reconciled: AtomicU64::new(0),
            reconciling: Arc::new(AtomicBool::new(false)),
            polling: Arc::new(AtomicBool::new(false)),
            read_numbers: AtomicU64::new(1),
            stored_reads: tokio::sync::Mutex::new(HashMap::new()),
            group_reads: Semaphore::new(1),
            polled_people: Arc::new(AtomicUsize::new(0)),
            ownership: Mutex::new(Ownership::everyone()),
        };
        (Arc::new(engine), queue_rx)
    }

    /// Follows only the people `ownership` says this instance owns; set before `run`.
    pub fn share_by(&self, ownership: Arc<Ownership>) {
        *lock(&self.ownership) = ownership;
    }

    /// Whether this instance follows `person`.
    pub fn owns(&self, person: &PersonKey) -> bool {
        lock(&self.ownership).owns(person)
    }

    /// The people this engine follows now.
    pub fn followed_people(&self) -> Vec<PersonKey> {
        self.people().keys().cloned().collect()
    }

    pub(crate) fn people(&self) -> MutexGuard<'_, HashMap<PersonKey, PersonHealth>> {
        lock(&self.people)
    }

    pub fn health(&self, person: &PersonKey) -> Option<PersonHealth> {
        self.people().get(person).cloned()
    }

    /// Changes a person's health (if followed) and returns the result.
    pub(crate) fn update_health(
        &self,
        person: &PersonKey,
        change: impl FnOnce(&mut PersonHealth),
    ) -> Option<PersonHealth> {
        let mut people = self.people();
        let health = people.get_mut(person)?;
        change(health);
        Some(health.clone())
    }

    pub fn n_subscriptions(&self) -> usize {
        self.people()
            .values()
            .filter(|health| health.subscription_id.is_some())
            .count()
    }

    /// The person a source's user (Graph id, Exchange address) belongs to.
    pub(crate) fn person_of_user(&self, user: &str) -> Option<PersonKey> {
        lock(&self.by_user).get(user).cloned()
    }

    pub(crate) fn user_of(&self, person: &PersonKey) -> Option<String> {
        self.people()
            .get(person)
            .and_then(|health| health.user.clone())
    }

    /// Queues work unless the same work is already waiting.
    /// After the source's credential was replaced (a reload): everyone whose last attempt
    /// failed is tried now, not when their back-off ends (five minutes after refused
    /// credentials). Returns how many were queued.
    pub fn retry_failed_now(&self) -> usize {
        let failed: Vec<PersonKey> = self
            .people()
            .iter()
            .filter(|(_, health)| {
                health.consecutive_failures > 0 || health.resolution_error.is_some()
            })
            .map(|(person, _)| person.clone())
            .collect();
        for person in &failed {
            self.enqueue(Work::Added(person.clone()));
        }
        failed.len()
    }

    pub fn enqueue(&self, work: Work) {
        let fresh = lock(&self.pending).insert(work.clone());
        if fresh {
            // The receiver only goes away at shutdown; then the work is moot.
            let _ = self.queue.send(work);
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn window_now(&self) -> (Timestamp, Timestamp) {
        super::window_from(self.clock.now(), self.settings.window_hours)
    }

    fn next_midnight(&self) -> Timestamp {
        super::next_local_midnight(self.clock.now(), self.hub.locale().zone.zone())
    }

    /// The task: restore, resolve, read, watch, then serve work and timers until shutdown.
    pub async fn run(self: Arc<Self>, mut work: mpsc::UnboundedReceiver<Work>, shutdown: Shutdown) {
        // A stop during the first sync abandons it: what was stored stays (each write is one
        // transaction), and the next start resumes from the store and reads the rest.
        tokio::select! {
            () = self.start() => {}
            _ = shutdown.wait() => {
                self.source.shutdown().await;
                return;
            }
        }
        self.progress.finished.store(true, Ordering::Relaxed);
        crate::memory::release_free_memory();
        let limiter = Arc::new(Semaphore::new(self.source.parallel_people()));
        let mut next_midnight = self.next_midnight();
        let poll_every = Duration::from_secs(self.settings.poll_interval_seconds.max(1));
        let mut poll = tokio::time::interval(poll_every);
        poll.tick().await;
        let mut housekeeping = tokio::time::interval(Duration::from_secs(60));
        housekeeping.tick().await;
        let reconcile_step = self.reconcile_step();
        let mut reconcile =
            tokio::time::interval(reconcile_step.unwrap_or(Duration::from_secs(3600)));
        reconcile.tick().await;
        let mut reconcile_cursor = 0usize;
        let polls = self.source.polls_for_changes();
        loop {
            let midnight = self.clock.sleep_until(next_midnight);
            tokio::select! {
                _ = shutdown.wait() => {
                    self.source.shutdown().await;
                    return;
                }
                Some(item) = work.recv() => {
                    lock(&self.pending).remove(&item);
                    let Ok(permit) = limiter.clone().acquire_owned().await else { return };
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.do_work(item).await;
                        drop(permit);
                    });
                }
                _ = midnight => {
                    next_midnight = self.next_midnight();
                    let me = self.clone();
                    tokio::spawn(async move { me.midnight().await });
                }
                _ = poll.tick(), if polls => {
                    // Everyone's changes, in batched reads (one request per 20 people on
                    // Graph), a chunk at a time so that results reach the store as they come.
                    let people: Vec<PersonKey> = self.people().keys().cloned().collect();
                    self.sweep(people, self.source.read_chunk().max(RECONCILE_BATCH), &self.polling);
                }
                _ = reconcile.tick(), if reconcile_step.is_some() => {
                    let people: Vec<PersonKey> = {
                        let mut keys: Vec<PersonKey> = self.people().keys().cloned().collect();
                        keys.sort();
                        keys
                    };
                    if !people.is_empty() {
                        reconcile_cursor %= people.len();
                        let step: Vec<PersonKey> = people
                            .iter()
                            .cycle()
                            .skip(reconcile_cursor)
                            .take(RECONCILE_BATCH.min(people.len()))
                            .cloned()
                            .collect();
                        reconcile_cursor += step.len();
                        self.sweep(step, RECONCILE_BATCH, &self.reconciling);
                    }
                }
                _ = housekeeping.tick() => self.source.housekeeping(&self),
            }
        }
    }

    /// [`RECONCILE_BATCH`] people per step, so that every person is checked once per
    /// reconcile interval, with one batched request per step.
    fn reconcile_step(&self) -> Option<Duration> {
        if self.settings.reconcile_interval_minutes == 0 || !self.source.reconciles() {
            return None;
        }
        let steps = self.people().len().div_ceil(RECONCILE_BATCH).max(1) as u64;
        let period_ms = self.settings.reconcile_interval_minutes * 60_000;
        Some(Duration::from_millis((period_ms / steps).max(100)))
    }

    /// Reads the changes of `people` in the background, `chunk` at a time, unless the last
    /// sweep of the same kind (`running`) is not done (then this one is skipped: the next
    /// tick comes soon enough).
    fn sweep(self: &Arc<Self>, people: Vec<PersonKey>, chunk: usize, running: &Arc<AtomicBool>) {
        if people.is_empty() || running.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let running = running.clone();
        tokio::spawn(async move {
            for part in people.chunks(chunk.max(1)) {
                me.read_changes_of(part).await;
            }
            running.store(false, Ordering::Release);
        });
    }

    /// The first sync: everyone this instance owns, taken over from the store.
    async fn start(self: &Arc<Self>) {
        let people = match self.store.list_people_of_source(&self.source_id).await {
            Ok(people) => people,
            Err(error) => {
                tracing::error!(source = %self.source_id, "first sync failed: cannot read people: {error}");
                return;
            }
        };
        let owned: Vec<calbridge_store::Person> = people
            .into_iter()
            .filter(|person| self.owns(&person.key))
            .collect();
        self.follow(owned, Some(&self.progress)).await;
    }

    /// Takes over the people of shards this instance has just gained, as a restart would:
    /// from the store, without a second subscription, with one read of what changed.
    pub async fn take_over(self: &Arc<Self>, shards: &HashSet<u32>) {
        let people = match self.store.list_people_of_source(&self.source_id).await {
            Ok(people) => people,
            Err(error) => {
                tracing::error!(source = %self.source_id, "cannot take over people: {error}");
                return;
            }
        };
        let gained: Vec<calbridge_store::Person> = {
            let followed = self.people();
            people
                .into_iter()
                .filter(|person| {
                    shards.contains(&calbridge_store::cluster::shard_of(&person.key))
                        && !followed.contains_key(&person.key)
                })
                .collect()
        };
        if gained.is_empty() {
            return;
        }
        tracing::info!(source = %self.source_id, people = gained.len(), "taking over people");
        self.follow(gained, None).await;
    }

    /// Stops following the people of shards this instance lost; their new owner takes them
    /// over from the store.
    pub async fn let_go(&self, shards: &HashSet<u32>) {
        let released: Vec<(PersonKey, PersonHealth)> = {
            let mut people = self.people();
            let keys: Vec<PersonKey> = people
                .keys()
                .filter(|person| shards.contains(&calbridge_store::cluster::shard_of(person)))
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|key| people.remove(&key).map(|health| (key, health)))
                .collect()
        };
        if released.is_empty() {
            return;
        }
        tracing::info!(source = %self.source_id, people = released.len(), "letting people go to another instance");
        // No waiting for reads in flight: one may hang on a store that does not answer (which
        // is when leases run out), and presence must stop here now. A read that finishes
        // later looks again before it leaves anything in the hub (`hub_unless_let_go`).
        for (person, health) in &released {
            if let Some(user) = &health.user {
                lock(&self.by_user).remove(user);
            }
            self.source.let_go(person, health);
            self.hub.hand_over(person);
        }
        // Their read numbers only keep older reads out; later reads have higher numbers, so
        // an entry left while a read holds the lock does no harm.
        if let Ok(mut stored_reads) = self.stored_reads.try_lock() {
            for (person, _) in &released {
                stored_reads.remove(person);
            }
        }
    }

    /// Takes `person` out of the hub again if they were let go while their calendar was set
    /// there: `let_go` removes the person from `people` before the hub, so either it removed
    /// what was set, or this sees that they are gone.
    fn hub_unless_let_go(&self, person: &PersonKey) {
        if !self.people().contains_key(person) {
            self.hub.remove(person);
        }
    }

    /// Starts following `people`: what the store knew, resolution of whoever is not resolved,
    /// a window read of whoever cannot be resumed, one read of what changed for whoever is
    /// resumed (changes made while nobody followed them), then watching everyone.
    async fn follow(
        self: &Arc<Self>,
        people: Vec<calbridge_store::Person>,
        progress: Option<&Progress>,
    ) {
        let mut stored_appointments = if self.source.resumes_after_restart() {
            match self.store.load_all_appointments().await {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::warn!(source = %self.source_id, "cannot read stored calendars, reading everyone anew: {error}");
                    HashMap::new()
                }
            }
        } else {
            HashMap::new()
        };
        let today_start = {
            let locale = self.hub.locale();
            let zone = locale.zone.zone();
            calbridge_domain::start_of_day(zone.to_datetime(self.clock.now()).date(), zone)
        };
        // Everyone's saved sync state in one read, not one read per person.
        let mut saved_states = match self.store.sync_states_of_source(&self.source_id).await {
            Ok(states) => states,
            Err(error) => {
                tracing::warn!(source = %self.source_id, "cannot read the sync states, syncing everyone anew: {error}");
                HashMap::new()
            }
        };
        let mut to_read = Vec::new();
        let mut to_resolve = Vec::new();
        let mut to_catch_up = Vec::new();
        for person in &people {
            let state = saved_states.remove(&person.key).unwrap_or_default();
            let mut health = PersonHealth {
                last_full_sync_at: state.last_full_sync_at,
                last_delta_at: state.last_delta_at,
                subscription_expires_at: state.subscription_expires_at,
                subscription_id: state.subscription_id.clone(),
                change_cursor: state.delta_link.clone(),
                last_error: state.last_error.as_ref().map(|e| e.message.clone()),
                last_error_at: state.last_error.as_ref().map(|e| e.at),
                consecutive_failures: state.consecutive_failures,
                window: state.appointment_window.map(|w| (w.start, w.end)),
                ..PersonHealth::default()
            };
            match &person.resolution {
                Resolution::Resolved {
                    primary_smtp,
                    source_user_id,
                } => {
                    let resolved = Resolved {
                        primary_smtp: primary_smtp.clone(),
                        source_user_id: source_user_id.clone(),
                    };
                    health.resolved_address = Some(primary_smtp.to_string());
                    health.user = Some(resolved.user());
                    lock(&self.by_user).insert(resolved.user(), person.key.clone());
                }
                Resolution::Failed { error } => {
                    health.resolution_error = Some(error.clone());
                    to_resolve.push(person.key.clone());
                }
                Resolution::Pending => to_resolve.push(person.key.clone()),
            }
            // A window read today is still good: resume from it (and its change cursor)
            // instead of re-reading everything after a restart.
            let resumable = self.source.resumes_after_restart()
                && health.window.is_some_and(|(start, _)| start >= today_start);
            {
                let mut followed = self.people();
                if !self.owns(&person.key) {
                    // Its shard went to another instance while the people before were
                    // restored: following them here too would make two followers. Checked
                    // under the lock `let_go` takes, so it cannot slip in between.
                    continue;
                }
                self.source.restored(&person.key, &health);
                followed.insert(person.key.clone(), health);
            }
            if resumable {
                let appointments = stored_appointments.remove(&person.key).unwrap_or_default();
                self.hub.set_appointments(&person.key, &appointments);
                self.hub_unless_let_go(&person.key);
                to_catch_up.push(person.key.clone());
            } else {
                to_read.push(person.key.clone());
            }
        }
        drop(stored_appointments);
        drop(saved_states);
        if let Some(progress) = progress {
            progress.total.store(to_read.len(), Ordering::Relaxed);
        }
        let started = std::time::Instant::now();
        self.resolve(&to_resolve).await;
        let resolved = started.elapsed();
        self.read_windows(&to_read, progress).await;
        if let Some(progress) = progress {
            progress.windows_read.store(true, Ordering::Relaxed);
        }
        let read = started.elapsed();
        let everyone: Vec<PersonKey> = people.into_iter().map(|person| person.key).collect();
        let n_people = everyone.len();
        self.source.clone().watch(self, everyone).await;
        let n_caught_up = to_catch_up.len();
        for person in to_catch_up {
            self.enqueue(Work::Changed(person));
        }
        tracing::info!(
            source = %self.source_id,
            people = n_people,
            resolved = to_resolve.len(),
            read = to_read.len(),
            caught_up = n_caught_up,
            "{}: resolution {:.2} s, window reads {:.2} s, watching {:.2} s",
            if progress.is_some() { "first sync" } else { "take-over" },
            resolved.as_secs_f64(),
            (read - resolved).as_secs_f64(),
            (started.elapsed() - read).as_secs_f64()
        );
    }

    /// Resolves people through the source and records the outcome in the store and health.
    pub(crate) async fn resolve(&self, people: &[PersonKey]) {
        if people.is_empty() {
            return;
        }
        let results = self.source.resolve(people.to_vec()).await;
        let mut resolutions = Vec::with_capacity(results.len());
        for (person, result) in results {
            let resolution = match result {
                Ok(resolved) => {
                    let user = resolved.user();
                    lock(&self.by_user).insert(user.clone(), person.clone());
                    // Only who is still followed here: someone let go meanwhile is another
                    // instance's now, and an entry made here would follow them twice.
                    if let Some(health) = self.people().get_mut(&person) {
                        health.resolved_address = Some(resolved.primary_smtp.to_string());
                        health.user = Some(user);
                        health.resolution_error = None;
                    }
                    Resolution::Resolved {
                        primary_smtp: resolved.primary_smtp,
                        source_user_id: resolved.source_user_id,
                    }
                }
                Err(trouble) => {
                    let message = format!("cannot resolve {}: {}", person.address, trouble.message);
                    {
                        let mut people = self.people();
                        if let Some(health) = people.get_mut(&person) {
                            health.resolution_error = Some(message.clone());
                            health.user = None;
                            if trouble.retryable || trouble.credentials {
                                health.consecutive_failures += 1;
                            }
                        }
                    }
                    self.log_trouble(None, &trouble, &message);
                    // A busy server, a network hiccup or a locked-out account is not the
                    // address's fault: try the whole person (resolution, read, watch) again.
                    self.retry_later(&person, Work::Added(person.clone()), &trouble);
                    Resolution::Failed { error: message }
                }
            };
            resolutions.push((person, resolution));
        }
        if let Err(error) = self.store.mark_resolutions(&resolutions).await {
            tracing::warn!(source = %self.source_id, "cannot store {} resolutions: {error}", resolutions.len());
        }
    }

    /// Stores the resolutions of directory group members (already resolved by the source).
    pub async fn record_resolved_members(&self, members: Vec<(PersonKey, MailboxAddress, String)>) {
        let resolutions: Vec<(PersonKey, Resolution)> = members
            .iter()
            .map(|(person, primary_smtp, id)| {
                (
                    person.clone(),
                    Resolution::Resolved {
                        primary_smtp: primary_smtp.clone(),
                        source_user_id: Some(id.clone()),
                    },
                )
            })
            .collect();
        if let Err(error) = self.store.mark_resolutions(&resolutions).await {
            tracing::warn!(source = %self.source_id, "cannot store {} resolutions: {error}", resolutions.len());
        }
        let mut by_user = lock(&self.by_user);
        let mut people = self.people();
        // The store has everyone's resolution; only the people this instance follows are
        // followed here (the others' owners take them from the store).
        for (person, primary_smtp, id) in members {
            if !self.owns(&person) {
                continue;
            }
            by_user.insert(id.clone(), person.clone());
            let health = people.entry(person).or_default();
            health.resolved_address = Some(primary_smtp.to_string());
            health.user = Some(id);
            health.resolution_error = None;
        }
    }

    /// Full reads of the given people's windows, in the source's chunks, into the store and
    /// the hub; failures are recorded per person and tried again after a back-off.
    pub(crate) async fn read_windows(&self, people: &[PersonKey], progress: Option<&Progress>) {
        let (window_start, window_end) = self.window_now();
        let readable: Vec<(PersonKey, String)> = people
            .iter()
            .filter_map(|person| self.user_of(person).map(|user| (person.clone(), user)))
            .collect();
        if let Some(progress) = progress {
            // People who could not be resolved are not read; count them as done with an error.
            let unreadable = people.len() - readable.len();
            progress.done.fetch_add(unreadable, Ordering::Relaxed);
            progress.failed.fetch_add(unreadable, Ordering::Relaxed);
        }
        for chunk in readable.chunks(self.source.read_chunk().max(1)) {
            let read_number = self.read_numbers.fetch_add(1, Ordering::Relaxed);
            let results = self
                .source
                .read_windows(chunk.to_vec(), window_start, window_end)
                .await;
            let mut windows = Vec::with_capacity(results.len());
            for (person, result) in results {
                match result {
                    Ok(appointments) => windows.push(WindowReplacement {
                        key: person,
                        window_start,
                        window_end,
                        appointments,
                    }),
                    Err(trouble) => {
                        if let Some(progress) = progress {
                            progress.failed.fetch_add(1, Ordering::Relaxed);
                            progress.done.fetch_add(1, Ordering::Relaxed);
                        }
                        let retry = Work::Changed(person.clone());
                        self.record_failure(&person, &trouble, Some(retry)).await;
                    }
                }
            }
            self.save_windows(windows, progress, read_number).await;
        }
    }

    /// Re-reads a group's windows (after a reconnect, or polling); one group at a time.
    pub(crate) async fn read_group(&self, people: &[PersonKey]) {
        let Ok(_turn) = self.group_reads.acquire().await else {
            return;
        };
        self.read_windows(people, None).await;
    }

    /// How often people the source cannot watch are read: `sync.poll_interval_seconds`.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.settings.poll_interval_seconds.max(1))
    }

    /// Reads `people` every [`Engine::poll_interval`] until the returned guard is dropped (the
    /// source watches them again); the first read is one interval from now, because whoever
    /// asks has just read them. Counted in `polled_people` meanwhile.
    pub(crate) fn poll(self: &Arc<Self>, people: Vec<PersonKey>) -> Polling {
        let n_people = people.len();
        self.polled_people.fetch_add(n_people, Ordering::Relaxed);
        let every = self.poll_interval();
        let engine = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                engine.read_group(&people).await;
            }
        });
        Polling {
            task,
            counter: self.polled_people.clone(),
            n_people,
        }
    }

    /// Stores full reads in one transaction, then decides presence from them. The store goes
    /// first: a timer that fires meanwhile reads the store, never older data.
    async fn save_windows(
        &self,
        windows: Vec<WindowReplacement>,
        progress: Option<&Progress>,
        read_number: u64,
    ) {
        let (windows, refused) = super::without_repeated_ids(windows);
        for (person, id) in refused {
            if let Some(progress) = progress {
                progress.done.fetch_add(1, Ordering::Relaxed);
                progress.failed.fetch_add(1, Ordering::Relaxed);
            }
            let trouble = Trouble::lasting(format!(
                "the source listed appointment {id} twice in one read; the previous window is kept"
            ));
            self.record_failure(&person, &trouble, None).await;
        }
        let mut stored_reads = self.stored_reads.lock().await;
        // Windows of people let go to another instance during the read are dropped too: they
        // are the new owner's now. Someone let go after this point is taken out of the hub
        // again below (`hub_unless_let_go`).
        let (windows, stale): (Vec<WindowReplacement>, Vec<WindowReplacement>) = {
            let followed = self.people();
            windows.into_iter().partition(|window| {
                followed.contains_key(&window.key)
                    && stored_reads
                        .get(&window.key)
                        .is_none_or(|stored| *stored < read_number)
            })
        };
        if !stale.is_empty() {
            tracing::debug!(source = %self.source_id, "{} windows dropped: read before a newer read of the same people, or of people let go meanwhile", stale.len());
            if let Some(progress) = progress {
                progress.done.fetch_add(stale.len(), Ordering::Relaxed);
            }
        }
        if windows.is_empty() {
            return;
        }
        let now = self.clock.now();
        let keys: Vec<PersonKey> = windows.iter().map(|window| window.key.clone()).collect();
        let decided: Vec<(PersonKey, Vec<Appointment>)> = windows
            .iter()
            .map(|window| (window.key.clone(), window.appointments.clone()))
            .collect();
        let bounds: Vec<(Timestamp, Timestamp)> = windows
            .iter()
            .map(|window| (window.window_start, window.window_end))
            .collect();
        match self.store.replace_appointments_many(windows).await {
            Ok(()) => {}
            Err(calbridge_store::StoreError::Fenced { people }) => {
                // Nothing was stored: some of these people now belong to another instance.
                // Whoever of the others is still ours is read again.
                let fenced: HashSet<&PersonKey> = people.iter().collect();
                tracing::info!(source = %self.source_id, "{} calendars read here belong to another instance now and were not stored", fenced.len());
                for person in keys.iter().filter(|person| !fenced.contains(person)) {
                    if self.owns(person) {
                        self.enqueue(Work::Changed(person.clone()));
                    }
                }
                return;
            }
            Err(error) => {
                tracing::warn!(source = %self.source_id, "cannot store {} calendars: {error}", keys.len());
                return;
            }
        }
        for (person, appointments) in &decided {
            stored_reads.insert(person.clone(), read_number);
            self.hub.set_appointments(person, appointments);
            self.hub_unless_let_go(person);
        }
        drop(stored_reads);
        if let Some(progress) = progress {
            progress.done.fetch_add(keys.len(), Ordering::Relaxed);
        }
        let updates: Vec<(PersonKey, PersonHealth)> = {
            let mut people = self.people();
            keys.iter()
                .zip(bounds)
                .filter_map(|(person, bounds)| {
                    let health = people.get_mut(person)?;
                    health.window = Some(bounds);
                    health.last_full_sync_at = Some(now);
                    // A new window invalidates the change cursor, which is bound to the old one.
                    health.change_cursor = None;
                    health.last_error = None;
                    health.last_error_at = None;
                    health.consecutive_failures = 0;
                    Some((person.clone(), health.clone()))
                })
                .collect()
        };
        self.persist_healths(&updates).await;
    }

    /// Reads what changed for one person and applies it.
    async fn read_changes(&self, person: &PersonKey) {
        let Some((job, read_number)) = self.change_read_job(person) else {
            return;
        };
        let outcome = self
            .source
            .read_changes(person, &job.user, job.window, job.cursor.as_deref())
            .await;
        self.apply_change_read(person, job.window, job.cursor, read_number, outcome)
            .await;
    }

    /// Reads what changed for several people with as few requests as the source can (the
    /// reconciliation sweep and polling), and applies each result as [`Engine::read_changes`]
    /// does.
    pub(crate) async fn read_changes_of(&self, people: &[PersonKey]) {
        let mut jobs = Vec::with_capacity(people.len());
        let mut numbers = HashMap::with_capacity(people.len());
        for person in people {
            if let Some((job, read_number)) = self.change_read_job(person) {
                numbers.insert(
                    person.clone(),
                    (job.window, job.cursor.clone(), read_number),
                );
                jobs.push(job);
            }
        }
        if jobs.is_empty() {
            return;
        }
        self.reconciled
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        for (person, outcome) in self.source.read_changes_many(jobs).await {
            if let Some((window, cursor, read_number)) = numbers.remove(&person) {
                self.apply_change_read(&person, window, cursor, read_number, outcome)
                    .await;
            }
        }
    }

    /// What a change read of `person` needs (the source's user, the window, the cursor) and
    /// its number; `None` for someone not followed or not resolved.
    fn change_read_job(&self, person: &PersonKey) -> Option<(ChangeReadJob, u64)> {
        let user = self.user_of(person)?;
        let (window, cursor) = {
            let people = self.people();
            let health = people.get(person)?;
            (
                health.window.unwrap_or_else(|| self.window_now()),
                health.change_cursor.clone(),
            )
        };
        let read_number = self.read_numbers.fetch_add(1, Ordering::Relaxed);
        Some((
            ChangeReadJob {
                person: person.clone(),
                user,
                window,
                cursor,
            },
            read_number,
        ))
    }

    /// Stores what a change read found (or records its failure) and moves the person's cursor.
    async fn apply_change_read(
        &self,
        person: &PersonKey,
        window: (Timestamp, Timestamp),
        cursor: Option<String>,
        read_number: u64,
        outcome: Result<ChangeRead, Trouble>,
    ) {
        let now = self.clock.now();
        let (stored, next_cursor) = match outcome {
            Ok(ChangeRead::Window(appointments)) => {
                self.save_windows(
                    vec![WindowReplacement {
                        key: person.clone(),
                        window_start: window.0,
                        window_end: window.1,
                        appointments,
                    }],
                    None,
                    read_number,
                )
                .await;
                return;
            }
            Ok(ChangeRead::ReadWindowAgain) => {
                tracing::info!(person = %person, "the source forgot where its changes stood; reading the window anew");
                self.read_windows(std::slice::from_ref(person), None).await;
                return;
            }
            Ok(ChangeRead::Changes {
                upserts,
                removed_ids,
                cursor: next,
            }) => {
                let mut stored_reads = self.stored_reads.lock().await;
                if stored_reads
                    .get(person)
                    .is_some_and(|stored| *stored > read_number)
                {
                    // A newer read was stored meanwhile; these changes are older than it.
                    return;
                }
                if !self.people().contains_key(person) {
                    // Let go to another instance during the read: its changes are the new
                    // owner's to read (see `save_windows`).
                    return;
                }
                stored_reads.insert(person.clone(), read_number);
                let stored = match cursor {
                    // Changes from the window's start list the whole window: they replace.
                    None => self
                        .store
                        .replace_appointments(person, window.0, window.1, upserts.clone())
                        .await
                        .map(|()| Some(upserts)),
                    Some(_) => self
                        .store
                        .apply_appointment_changes(person, upserts, removed_ids)
                        .await
                        .map(|()| None),
                };
                let stored = match stored {
                    Ok(Some(complete)) => {
                        self.hub.set_appointments(person, &complete);
                        self.hub_unless_let_go(person);
                        Ok(())
                    }
                    Ok(None) => {
                        self.hub.refresh(person).await;
                        self.hub_unless_let_go(person);
                        Ok(())
                    }
                    Err(error) => Err(error),
                };
                drop(stored_reads);
                (stored, next)
            }
            Err(trouble) => {
                let retry = Work::Changed(person.clone());
                self.record_failure(person, &trouble, Some(retry)).await;
                return;
            }
        };
        match stored {
            Ok(()) => {}
            Err(calbridge_store::StoreError::Fenced { .. }) => {
                tracing::info!(person = %person, "calendar changes read here not stored: the person belongs to another instance now");
                return;
            }
            Err(error) => {
                tracing::warn!(person = %person, "cannot store calendar changes: {error}");
                return;
            }
        }
        let update = self.update_health(person, |health| {
            health.change_cursor = Some(next_cursor);
            health.last_delta_at = Some(now);
            health.window = Some(window);
            health.last_error = None;
            health.last_error_at = None;
            health.consecutive_failures = 0;
        });
        if let Some(update) = update {
            self.persist_health(person, &update).await;
        }
    }

    pub(crate) async fn persist_healths(&self, updates: &[(PersonKey, PersonHealth)]) {
        if updates.is_empty() {
            return;
        }
        let states: Vec<(PersonKey, calbridge_store::SyncState)> = updates
            .iter()
            .map(|(person, health)| (person.clone(), sync_state_of(health)))
            .collect();
        let mut states = states;
        // Fenced out people (another instance's now) are dropped and the rest stored again,
        // once: a second refusal means the leases are changing hands right now.
        for attempt in 0..2 {
            match self.store.set_sync_states(&states).await {
                Ok(()) => return,
                Err(calbridge_store::StoreError::Fenced { people }) if attempt == 0 => {
                    let fenced: HashSet<PersonKey> = people.into_iter().collect();
                    tracing::info!(source = %self.source_id, "the sync state of {} people not stored: they belong to another instance now", fenced.len());
                    states.retain(|(person, _)| !fenced.contains(person));
                    if states.is_empty() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(source = %self.source_id, "cannot store the sync state of {} people: {error}", states.len());
                    return;
                }
            }
        }
    }

    pub(crate) async fn persist_health(&self, person: &PersonKey, health: &PersonHealth) {
        if let Err(error) = self
            .store
            .set_sync_state(person, &sync_state_of(health))
            .await
        {
            if matches!(error, calbridge_store::StoreError::Fenced { .. }) {
                tracing::info!(person = %person, "sync state not stored: the person belongs to another instance now");
            } else {
                tracing::warn!(person = %person, "cannot store the sync state: {error}");
            }
        }
    }

    /// Records a person's failure in their health (and the store), logs it and, with `retry`,
    /// queues that work again after the back-off (see [`Engine::retry_later`]). The retry is
    /// scheduled together with the health update, so that whoever sees the failure counted
    /// knows its retry is on the clock.
    pub(crate) async fn record_failure(
        &self,
        person: &PersonKey,
        trouble: &Trouble,
        retry: Option<Work>,
    ) {
        let now = self.clock.now();
        let update = {
            let mut people = self.people();
            people.get_mut(person).map(|health| {
                health.last_error = Some(trouble.message.clone());
                health.last_error_at = Some(now);
                health.consecutive_failures += 1;
                if let Some(work) = retry {
                    self.schedule_retry(work, trouble, health.consecutive_failures);
                }
                health.clone()
            })
        };
        self.log_trouble(Some(person), trouble, &trouble.message);
        if let Some(update) = update {
            self.persist_health(person, &update).await;
        }
    }

    /// Logs a person's trouble. A source-wide one (a wrong password, discovery failing, the
    /// token endpoint down) fails every person alike, so it is logged once per `RETRY_MAX`
    /// for the whole source (and when its message changes), not once per person; each
    /// person's health still shows it.
    fn log_trouble(&self, person: Option<&PersonKey>, trouble: &Trouble, message: &str) {
        if trouble.source_wide {
            let now = self.clock.now();
            let mut logged = lock(&self.source_wide_logged);
            let recently = logged.as_ref().is_some_and(|(last, at)| {
                last == &trouble.message
                    && now.duration_since(*at)
                        < jiff::SignedDuration::from_secs(RETRY_MAX.as_secs() as i64)
            });
            if recently {
                tracing::debug!(source = %self.source_id, "{message}");
                return;
            }
            *logged = Some((trouble.message.clone(), now));
            tracing::error!(source = %self.source_id, "{message}");
            return;
        }
        match person {
            Some(person) => tracing::warn!(source = %self.source_id, person = %person, "{message}"),
            None => tracing::warn!(source = %self.source_id, "{message}"),
        }
    }

    /// Queues `work` again when the trouble may pass, counting the person's failures so far.
    pub(crate) fn retry_later(&self, person: &PersonKey, work: Work, trouble: &Trouble) {
        let failures = self
            .people()
            .get(person)
            .map_or(1, |health| health.consecutive_failures);
        self.schedule_retry(work, trouble, failures);
    }

    /// Queues `work` again when the trouble may pass: after a back-off that doubles with every
    /// failure in a row (1 s … 5 min, at least what the server asked for); after refused
    /// credentials every `RETRY_MAX`. Lasting troubles (no such mailbox, no rights) wait for a
    /// change of the directory or the midnight re-read.
    fn schedule_retry(&self, work: Work, trouble: &Trouble, failures: u32) {
        let Some(delay) = retry_delay(trouble, failures) else {
            return;
        };
        let queue = self.queue.clone();
        // On the injected clock, so that tests move time instead of waiting for it.
        let due = self
            .clock
            .now()
            .checked_add(SignedDuration::try_from(delay).unwrap_or(SignedDuration::MAX))
            .unwrap_or(Timestamp::MAX);
        let wake = self.clock.sleep_until(due);
        tokio::spawn(async move {
            wake.await;
            // The receiver only goes away at shutdown; then the retry is moot.
            let _ = queue.send(work);
        });
    }

    /// At local midnight every window moves on: re-read everyone (spread over
    /// `midnight_spread_minutes` in the source's chunks, so that the server is not hit at
    /// once), and resolve again whoever could not be resolved (a mailbox created since, an
    /// account unlocked).
    async fn midnight(&self) {
        let mut resolved = Vec::new();
        let mut unresolved = Vec::new();
        for (person, health) in self.people().iter() {
            if health.user.is_some() {
                resolved.push(person.clone());
            } else {
                unresolved.push(person.clone());
            }
        }
        resolved.sort();
        for person in unresolved {
            self.enqueue(Work::Added(person));
        }
        let chunk = self.source.read_chunk().max(1);
        let spread = Duration::from_secs(self.settings.midnight_spread_minutes * 60);
        let n_chunks = resolved.len().div_ceil(chunk).max(1);
        let pause = spread / n_chunks as u32;
        tracing::info!(source = %self.source_id, people = resolved.len(), "midnight re-read");
        for (index, people) in resolved.chunks(chunk).enumerate() {
            if index > 0 {
                tokio::time::sleep(pause).await;
            }
            self.read_windows(people, None).await;
        }
        crate::memory::release_free_memory();
    }

    async fn do_work(self: &Arc<Self>, work: Work) {
        if let Work::Added(person)
        | Work::Changed(person)
        | Work::Rewatch(person)
        | Work::Renew(person) = &work
        {
            if !self.owns(person) {
                // Another instance follows this person; it has the same work to do.
                return;
            }
        }
        match work {
            Work::Added(person) => {
                self.people().entry(person.clone()).or_default();
                if self.user_of(&person).is_none() {
                    self.resolve(std::slice::from_ref(&person)).await;
                }
                self.read_windows(std::slice::from_ref(&person), None).await;
                self.source.clone().watch(self, vec![person]).await;
            }
            Work::Removed(person) => {
                let health = self.people().remove(&person);
                self.stored_reads.lock().await.remove(&person);
                if let Some(health) = health {
                    if let Some(user) = &health.user {
                        lock(&self.by_user).remove(user);
                    }
                    self.source.forget(&person, &health).await;
                }
                self.hub.remove(&person);
            }
            Work::Changed(person) => self.read_changes(&person).await,
            Work::Rewatch(person) => self.source.clone().rewatch(self, person).await,
            Work::Renew(person) => self.source.clone().renew(self, person).await,
        }
    }
}

/// What the directory needs from any source's engine.
#[async_trait::async_trait]
impl<S: CalendarSource> super::DirectoryTarget for Engine<S> {
    fn source_id(&self) -> &SourceId {
        &self.source_id
    }

    fn enqueue(&self, work: Work) {
        Engine::enqueue(self, work);
    }

    async fn group_members(&self, group: &str) -> Result<Vec<super::GroupMember>, String> {
        self.source.group_members(group).await
    }

    async fn rooms(
        &self,
        list: Option<&MailboxAddress>,
    ) -> Result<Vec<calbridge_domain::RoomInfo>, String> {
        self.source.rooms(list).await
    }

    async fn record_resolved_members(&self, members: Vec<(PersonKey, MailboxAddress, String)>) {
        Engine::record_resolved_members(self, members).await;
    }

    async fn decline(
        &self,
        person: &PersonKey,
        appointment_id: &str,
        comment: &str,
    ) -> Result<(), String> {
        let Some(user) = self.user_of(person) else {
            return Err(format!(
                "{} is not resolved to a mailbox yet",
                person.address
            ));
        };
        self.source.decline(&user, appointment_id, comment).await
    }

    fn set_alternates(&self, person: &PersonKey, alternates: Vec<String>) {
        self.source.set_alternates(person, alternates);
    }
}

#[async_trait::async_trait]
impl<S: CalendarSource> crate::cluster::ShardFollower for Engine<S> {
    async fn take_over(self: Arc<Self>, shards: HashSet<u32>) {
        Engine::take_over(&self, &shards).await;
    }

    async fn let_go(&self, shards: &HashSet<u32>) {
        Engine::let_go(self, shards).await;
    }
}

fn sync_state_of(health: &PersonHealth) -> calbridge_store::SyncState {
    calbridge_store::SyncState {
        delta_link: health.change_cursor.clone(),
        subscription_id: health.subscription_id.clone(),
        subscription_expires_at: health.subscription_expires_at,
        client_state: None,
        last_full_sync_at: health.last_full_sync_at,
        last_delta_at: health.last_delta_at,
        last_error: match (&health.last_error, health.last_error_at) {
            (Some(message), Some(at)) => Some(SyncError {
                message: message.clone(),
                at,
            }),
            _ => None,
        },
        consecutive_failures: health.consecutive_failures,
        appointment_window: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trouble(retryable: bool, credentials: bool, retry_after: Option<u64>) -> Trouble {
        Trouble {
            message: "test".to_string(),
            retryable,
            credentials,
            source_wide: credentials,
            retry_after: retry_after.map(Duration::from_millis),
        }
    }

    #[test]
    fn passing_troubles_back_off_doubling_up_to_five_minutes() {
        let busy = trouble(true, false, None);
        let delays: Vec<u64> = [0, 1, 2, 3, 9, 40]
            .into_iter()
            .map(|failures| retry_delay(&busy, failures).map_or(0, |delay| delay.as_secs()))
            .collect();
        assert_eq!(delays, vec![1, 1, 2, 4, 256, 300]);
    }

    #[test]
    fn the_servers_back_off_is_honoured() {
        let busy = trouble(true, false, Some(30_000));
        assert_eq!(retry_delay(&busy, 1), Some(Duration::from_secs(30)));
        let long = trouble(true, false, Some(3_600_000));
        assert_eq!(retry_delay(&long, 1), Some(RETRY_MAX));
    }

    #[test]
    fn refused_credentials_are_tried_again_every_five_minutes_and_lasting_troubles_never() {
        assert_eq!(
            retry_delay(&trouble(false, true, Some(1_000)), 1),
            Some(RETRY_MAX)
        );
        assert_eq!(retry_delay(&trouble(false, true, None), 7), Some(RETRY_MAX));
        assert_eq!(retry_delay(&trouble(false, false, None), 1), None);
    }
}
