//! Keeping one Microsoft Graph tenant's calendars fresh: resolution, the initial window read,
//! change notifications (or delta polling), delta reads, the midnight re-read and the
//! reconciliation sweep.
//!
//! All Graph wire details live in `calbridge-sources-graph`; this task only decides *when* to
//! read *whom* and moves the results into the store and the presence hub. One failing mailbox
//! never blocks the others: every person's work is independent and errors are recorded per
//! person.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use calbridge_domain::{Appointment, MailboxAddress, Secret, SourceId};
use calbridge_sources_graph::{
    parse_notifications, DeltaCursor, DeltaLink, DeltaOutcome, GraphError, GraphSource,
    Notification, RenewOutcome, SubjectFetch, SubscriptionRequest, TokenStatus,
};
use calbridge_store::{PersonKey, Resolution, Store, SyncError, WindowReplacement};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::{mpsc, Semaphore};

use crate::clock::Clock;
use crate::config::SyncConfig;
use crate::hub::PresenceHub;
use crate::shutdown::Shutdown;

/// Work for the sync task, queued by the webhook, the directory and timers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Work {
    /// A person appeared in the directory (or changed): resolve and read them.
    Added(PersonKey),
    Removed(PersonKey),
    /// Read what changed in this person's calendar.
    Delta(PersonKey),
    /// Create a new subscription for this person (it vanished or never existed).
    Resubscribe(PersonKey),
    /// Extend this person's subscription.
    Renew(PersonKey),
}

/// What the admin page shows of one person's sync.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PersonHealth {
    /// Graph's user id (or the address until resolved).
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
    #[serde(skip)]
    pub delta_link: Option<DeltaLink>,
    #[serde(skip)]
    pub window: Option<(Timestamp, Timestamp)>,
}

/// Where the first sync stands, for the progress bar and the admin page.
#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicUsize,
    pub done: AtomicUsize,
    pub failed: AtomicUsize,
    pub finished: std::sync::atomic::AtomicBool,
}

pub struct GraphSync {
    pub source_id: SourceId,
    pub graph: GraphSource,
    store: Arc<dyn Store>,
    hub: Arc<PresenceHub>,
    clock: Arc<dyn Clock>,
    settings: SyncConfig,
    subjects: SubjectFetch,
    /// `(notification url, lifecycle url)` when Graph can reach us; `None` means polling.
    notification_urls: Option<(String, String)>,
    client_state: Secret,
    people: Mutex<HashMap<PersonKey, PersonHealth>>,
    by_subscription: Mutex<HashMap<String, PersonKey>>,
    queue: mpsc::UnboundedSender<Work>,
    pending: Mutex<HashSet<Work>>,
    pub progress: Progress,
    pub notifications_received: AtomicU64,
    pub notifications_rejected: AtomicU64,
    pub secret_expires_on: Option<jiff::civil::Date>,
    /// The last credential error logged, so that it is logged once.
    last_auth_error: Mutex<Option<String>>,
}

/// How many people are read, resolved or delta-synced at once; Graph limits per mailbox, the
/// source's semaphores bound the requests, this bounds the tasks.
const PARALLEL_PEOPLE: usize = 32;
/// People per window-read call: big enough for full `$batch` requests, small enough that
/// progress moves and results reach the store while the rest is still being read.
const READ_CHUNK: usize = 400;
/// The longest wait before a failed read is tried again.
const RETRY_MAX: Duration = Duration::from_secs(300);

impl GraphSync {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source_id: SourceId,
        graph: GraphSource,
        store: Arc<dyn Store>,
        hub: Arc<PresenceHub>,
        clock: Arc<dyn Clock>,
        settings: SyncConfig,
        subjects: SubjectFetch,
        public_url: Option<&str>,
        client_state: Secret,
        secret_expires_on: Option<jiff::civil::Date>,
    ) -> (Arc<GraphSync>, mpsc::UnboundedReceiver<Work>) {
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let notification_urls = public_url.map(|base| {
            let base = base.trim_end_matches('/');
            (
                format!("{base}/notifications/graph/{source_id}"),
                format!("{base}/notifications/graph/{source_id}/lifecycle"),
            )
        });
        let sync = GraphSync {
            source_id,
            graph,
            store,
            hub,
            clock,
            settings,
            subjects,
            notification_urls,
            client_state,
            people: Mutex::new(HashMap::new()),
            by_subscription: Mutex::new(HashMap::new()),
            queue,
            pending: Mutex::new(HashSet::new()),
            progress: Progress::default(),
            notifications_received: AtomicU64::new(0),
            notifications_rejected: AtomicU64::new(0),
            secret_expires_on,
            last_auth_error: Mutex::new(None),
        };
        (Arc::new(sync), queue_rx)
    }

    fn people(&self) -> MutexGuard<'_, HashMap<PersonKey, PersonHealth>> {
        self.people
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn subscriptions(&self) -> MutexGuard<'_, HashMap<String, PersonKey>> {
        self.by_subscription
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn health(&self, person: &PersonKey) -> Option<PersonHealth> {
        self.people().get(person).cloned()
    }

    pub fn n_subscriptions(&self) -> usize {
        self.subscriptions().len()
    }

    pub fn uses_notifications(&self) -> bool {
        self.notification_urls.is_some()
    }

    pub fn token_status(&self) -> TokenStatus {
        self.graph.token_status()
    }

    /// Queues work unless the same work is already waiting.
    pub fn enqueue(&self, work: Work) {
        let fresh = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(work.clone());
        if fresh {
            // The receiver only goes away at shutdown; then the work is moot.
            let _ = self.queue.send(work);
        }
    }

    fn window_now(&self) -> (Timestamp, Timestamp) {
        super::window_from(self.clock.now(), self.settings.window_hours)
    }

    /// A webhook POST: the validation handshake is answered by the HTTP layer; this checks
    /// clientState and only queues work, so the answer goes back within Graph's 3 s.
    pub fn accept_notifications(&self, body: &[u8]) -> Result<usize, String> {
        let parsed = parse_notifications(body, &self.client_state).map_err(|e| e.to_string())?;
        self.notifications_received
            .fetch_add(parsed.accepted.len() as u64, Ordering::Relaxed);
        if !parsed.rejected_client_state.is_empty() {
            self.notifications_rejected
                .fetch_add(parsed.rejected_client_state.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                source = %self.source_id,
                subscriptions = ?parsed.rejected_client_state,
                "dropped notifications with a wrong clientState (forged, or for another installation)"
            );
        }
        let accepted = parsed.accepted.len();
        for notification in parsed.accepted {
            let person = self
                .subscriptions()
                .get(notification.subscription_id())
                .cloned();
            let Some(person) = person else {
                tracing::debug!(
                    subscription = notification.subscription_id(),
                    "notification for an unknown subscription"
                );
                continue;
            };
            match notification {
                Notification::Changed { .. } | Notification::Missed { .. } => {
                    self.enqueue(Work::Delta(person))
                }
                Notification::ReauthorizationRequired { .. } => self.enqueue(Work::Renew(person)),
                Notification::SubscriptionRemoved { .. } => {
                    self.enqueue(Work::Resubscribe(person.clone()));
                    self.enqueue(Work::Delta(person));
                }
            }
        }
        Ok(accepted)
    }

    /// The task: restore, resolve, read, subscribe, then serve work and timers until shutdown.
    pub async fn run(self: Arc<Self>, mut work: mpsc::UnboundedReceiver<Work>, shutdown: Shutdown) {
        if let Err(error) = self.start().await {
            tracing::error!(source = %self.source_id, "first sync failed: {error:#}");
        }
        self.progress.finished.store(true, Ordering::Relaxed);
        crate::memory::release_free_memory();
        let limiter = Arc::new(Semaphore::new(PARALLEL_PEOPLE));
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
        loop {
            let midnight = self.clock.sleep_until(next_midnight);
            tokio::select! {
                _ = shutdown.wait() => return,
                Some(item) = work.recv() => {
                    self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&item);
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
                    tokio::spawn(async move { me.midnight_reread().await });
                }
                _ = poll.tick(), if self.notification_urls.is_none() => {
                    for person in self.people().keys() {
                        self.enqueue(Work::Delta(person.clone()));
                    }
                }
                _ = reconcile.tick(), if reconcile_step.is_some() => {
                    let people: Vec<PersonKey> = {
                        let mut keys: Vec<PersonKey> = self.people().keys().cloned().collect();
                        keys.sort();
                        keys
                    };
                    if !people.is_empty() {
                        reconcile_cursor %= people.len();
                        self.enqueue(Work::Delta(people[reconcile_cursor].clone()));
                        reconcile_cursor += 1;
                    }
                }
                _ = housekeeping.tick() => self.renew_expiring(),
            }
        }
    }

    /// One person per step so that every person is checked once per reconcile interval.
    fn reconcile_step(&self) -> Option<Duration> {
        if self.settings.reconcile_interval_minutes == 0 {
            return None;
        }
        let n_people = self.people().len().max(1) as u64;
        let period_ms = self.settings.reconcile_interval_minutes * 60_000;
        Some(Duration::from_millis((period_ms / n_people).max(100)))
    }

    fn next_midnight(&self) -> Timestamp {
        super::next_local_midnight(self.clock.now(), self.hub.locale().zone.zone())
    }

    async fn start(&self) -> anyhow::Result<()> {
        let people = self.store.list_people_of_source(&self.source_id).await?;
        let mut stored_appointments = self.store.load_all_appointments().await?;
        let today_start = {
            let zone = self.hub.locale().zone.zone();
            calbridge_domain::start_of_day(zone.to_datetime(self.clock.now()).date(), zone)
        };
        let mut to_read = Vec::new();
        let mut to_resolve = Vec::new();
        for person in &people {
            let state = self.store.get_sync_state(&person.key).await?;
            let mut health = PersonHealth {
                last_full_sync_at: state.last_full_sync_at,
                last_delta_at: state.last_delta_at,
                subscription_expires_at: state.subscription_expires_at,
                subscription_id: state.subscription_id.clone(),
                delta_link: state.delta_link.clone().map(DeltaLink::from_stored),
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
                    health.resolved_address = Some(primary_smtp.to_string());
                    health.user = Some(
                        source_user_id
                            .clone()
                            .unwrap_or_else(|| primary_smtp.to_string()),
                    );
                }
                Resolution::Failed { error } => {
                    health.resolution_error = Some(error.clone());
                    to_resolve.push(person.key.clone());
                }
                Resolution::Pending => to_resolve.push(person.key.clone()),
            }
            if let Some(id) = &state.subscription_id {
                self.subscriptions().insert(id.clone(), person.key.clone());
            }
            // A window read today is still good: resume from it (and its delta link) instead of
            // re-reading everything after a restart.
            let resumable = health.window.is_some_and(|(start, _)| start >= today_start);
            if resumable {
                let appointments = stored_appointments.remove(&person.key).unwrap_or_default();
                self.hub.set_appointments(&person.key, &appointments);
            } else {
                to_read.push(person.key.clone());
            }
            self.people().insert(person.key.clone(), health);
        }
        self.progress.total.store(to_read.len(), Ordering::Relaxed);
        let started = std::time::Instant::now();
        self.resolve(&to_resolve).await;
        let resolved = started.elapsed();
        self.read_windows(&to_read, Some(&self.progress)).await;
        let read = started.elapsed();
        self.subscribe_missing().await;
        tracing::info!(
            source = %self.source_id,
            people = people.len(),
            resolved = to_resolve.len(),
            read = to_read.len(),
            "first sync: resolution {:.2} s, window reads {:.2} s, subscriptions {:.2} s",
            resolved.as_secs_f64(),
            (read - resolved).as_secs_f64(),
            (started.elapsed() - read).as_secs_f64()
        );
        Ok(())
    }

    /// Resolves addresses to Graph users (primary SMTP address and object id).
    async fn resolve(&self, people: &[PersonKey]) {
        let limiter = Arc::new(Semaphore::new(PARALLEL_PEOPLE));
        let mut tasks = Vec::new();
        for person in people {
            let Ok(permit) = limiter.clone().acquire_owned().await else {
                return;
            };
            let graph = self.graph.clone();
            let person = person.clone();
            tasks.push(tokio::spawn(async move {
                let result = graph.resolve_user(&person.address).await;
                drop(permit);
                (person, result)
            }));
        }
        for task in tasks {
            let Ok((person, result)) = task.await else {
                continue;
            };
            self.record_resolution(&person, result.map(|user| (user.primary_smtp, user.id)))
                .await;
        }
    }

    /// Stores the resolutions of directory group members (already resolved by Graph) in one go.
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
        let mut people = self.people();
        for (person, primary_smtp, id) in members {
            let health = people.entry(person).or_default();
            health.resolved_address = Some(primary_smtp.to_string());
            health.user = Some(id);
            health.resolution_error = None;
        }
    }

    /// Stores a resolution result.
    pub async fn record_resolution(
        &self,
        person: &PersonKey,
        result: Result<(MailboxAddress, String), GraphError>,
    ) {
        let resolution = match &result {
            Ok((primary_smtp, id)) => Resolution::Resolved {
                primary_smtp: primary_smtp.clone(),
                source_user_id: Some(id.clone()),
            },
            Err(error) => Resolution::Failed {
                error: format!("cannot resolve {}: {error}", person.address),
            },
        };
        if let Err(error) = self.store.mark_resolution(person, &resolution).await {
            tracing::warn!(person = %person, "cannot store the resolution: {error}");
        }
        let mut people = self.people();
        let health = people.entry(person.clone()).or_default();
        match resolution {
            Resolution::Resolved {
                primary_smtp,
                source_user_id,
            } => {
                health.resolved_address = Some(primary_smtp.to_string());
                health.user = source_user_id;
                health.resolution_error = None;
            }
            Resolution::Failed { error } => {
                tracing::warn!(source = %self.source_id, "{error}");
                health.resolution_error = Some(error);
                health.user = None;
            }
            Resolution::Pending => {}
        }
    }

    fn user_of(&self, person: &PersonKey) -> Option<String> {
        self.people()
            .get(person)
            .and_then(|health| health.user.clone())
    }

    /// Full reads of the given people's windows, batched, into the store and the hub.
    async fn read_windows(&self, people: &[PersonKey], progress: Option<&Progress>) {
        let (window_start, window_end) = self.window_now();
        let readable: Vec<(PersonKey, String)> = people
            .iter()
            .filter_map(|person| self.user_of(person).map(|user| (person.clone(), user)))
            .collect();
        if let Some(progress) = progress {
            // People that could not be resolved are not read; count them as done-with-error.
            let unreadable = people.len() - readable.len();
            progress.done.fetch_add(unreadable, Ordering::Relaxed);
            progress.failed.fetch_add(unreadable, Ordering::Relaxed);
        }
        for chunk in readable.chunks(READ_CHUNK) {
            let results = self
                .graph
                .read_windows(chunk, window_start, window_end, self.subjects)
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
                    Err(error) => {
                        if let Some(progress) = progress {
                            progress.failed.fetch_add(1, Ordering::Relaxed);
                            progress.done.fetch_add(1, Ordering::Relaxed);
                        }
                        self.record_failure(&person, &error).await;
                        self.retry_later(&person);
                    }
                }
            }
            self.save_windows(windows, progress).await;
        }
    }

    /// Stores a chunk of full reads in one transaction, then decides presence from them. The
    /// store goes first: a timer that fires meanwhile reads the store, never older data.
    async fn save_windows(&self, windows: Vec<WindowReplacement>, progress: Option<&Progress>) {
        let (windows, refused) = super::without_repeated_ids(windows);
        for (person, id) in refused {
            tracing::warn!(source = %self.source_id, person = %person, "Graph listed event {id} twice in one read; the previous window is kept");
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
        if let Err(error) = self.store.replace_appointments_many(windows).await {
            tracing::warn!(source = %self.source_id, "cannot store {} calendars: {error}", keys.len());
            return;
        }
        for (person, appointments) in &decided {
            self.hub.set_appointments(person, appointments);
        }
        if let Some(progress) = progress {
            progress.done.fetch_add(keys.len(), Ordering::Relaxed);
        }
        let updates: Vec<(PersonKey, PersonHealth)> = {
            let mut people = self.people();
            keys.iter()
                .zip(bounds)
                .map(|(person, bounds)| {
                    let health = people.entry(person.clone()).or_default();
                    health.window = Some(bounds);
                    health.last_full_sync_at = Some(now);
                    // A new window invalidates the delta link, which is bound to the old one.
                    health.delta_link = None;
                    health.last_error = None;
                    health.consecutive_failures = 0;
                    (person.clone(), health.clone())
                })
                .collect()
        };
        self.persist_healths(&updates).await;
    }

    async fn persist_healths(&self, updates: &[(PersonKey, PersonHealth)]) {
        let states: Vec<(PersonKey, calbridge_store::SyncState)> = updates
            .iter()
            .map(|(person, health)| (person.clone(), sync_state_of(health)))
            .collect();
        if let Err(error) = self.store.set_sync_states(&states).await {
            tracing::warn!(source = %self.source_id, "cannot store the sync state of {} people: {error}", states.len());
        }
    }

    async fn persist_health(&self, person: &PersonKey, health: &PersonHealth) {
        if let Err(error) = self
            .store
            .set_sync_state(person, &sync_state_of(health))
            .await
        {
            tracing::warn!(person = %person, "cannot store the sync state: {error}");
        }
    }

    async fn record_failure(&self, person: &PersonKey, error: &GraphError) {
        let now = self.clock.now();
        let update = {
            let mut people = self.people();
            let health = people.entry(person.clone()).or_default();
            health.last_error = Some(error.to_string());
            health.last_error_at = Some(now);
            health.consecutive_failures += 1;
            health.clone()
        };
        self.log_failure(person, error);
        self.persist_health(person, &update).await;
    }

    /// A credential problem fails every mailbox with the same message: say it once (and again
    /// only when it changes), not ten thousand times. Other errors are per mailbox.
    fn log_failure(&self, person: &PersonKey, error: &GraphError) {
        if let GraphError::Auth(auth) = error {
            let message = auth.to_string();
            let mut last = self
                .last_auth_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.as_deref() == Some(message.as_str()) {
                tracing::debug!(source = %self.source_id, person = %person, "{error}");
            } else {
                tracing::error!(source = %self.source_id, "{message}");
                *last = Some(message);
            }
            return;
        }
        tracing::warn!(source = %self.source_id, person = %person, "{error}");
    }

    async fn do_work(&self, work: Work) {
        match work {
            Work::Added(person) => {
                if !self.people().contains_key(&person) {
                    self.people()
                        .insert(person.clone(), PersonHealth::default());
                }
                let resolved = self.user_of(&person).is_some();
                if !resolved {
                    self.resolve(std::slice::from_ref(&person)).await;
                }
                self.read_windows(std::slice::from_ref(&person), None).await;
                self.subscribe(&[person]).await;
            }
            Work::Removed(person) => {
                let health = self.people().remove(&person);
                if let Some(id) = health.and_then(|health| health.subscription_id) {
                    self.subscriptions().remove(&id);
                    if let Err(error) = self.graph.delete_subscription(&id).await {
                        tracing::info!(person = %person, "could not delete the subscription: {error}");
                    }
                }
                self.hub.remove(&person);
            }
            Work::Delta(person) => self.delta(&person).await,
            Work::Resubscribe(person) => {
                if let Some(health) = self.people().get_mut(&person) {
                    if let Some(id) = health.subscription_id.take() {
                        self.subscriptions().remove(&id);
                    }
                    health.subscription_expires_at = None;
                }
                self.subscribe(&[person]).await;
            }
            Work::Renew(person) => self.renew(&person).await,
        }
    }

    async fn delta(&self, person: &PersonKey) {
        let Some(user) = self.user_of(person) else {
            return;
        };
        let (window, cursor) = {
            let people = self.people();
            let Some(health) = people.get(person) else {
                return;
            };
            let window = health.window.unwrap_or_else(|| self.window_now());
            let cursor = match &health.delta_link {
                Some(link) => DeltaCursor::Link(link.clone()),
                None => DeltaCursor::Start,
            };
            (window, cursor)
        };
        let outcome = self
            .graph
            .delta(&user, window.0, window.1, &cursor, self.subjects)
            .await;
        let now = self.clock.now();
        match outcome {
            Ok(DeltaOutcome::Changes {
                upserts,
                removed_ids,
                next,
            }) => {
                let stored = match cursor {
                    // A delta from the start lists the whole window: it replaces.
                    DeltaCursor::Start => self
                        .store
                        .replace_appointments(person, window.0, window.1, upserts.clone())
                        .await
                        .map(|()| Some(upserts)),
                    DeltaCursor::Link(_) => self
                        .store
                        .apply_appointment_changes(person, upserts, removed_ids)
                        .await
                        .map(|()| None),
                };
                match stored {
                    Ok(Some(complete)) => self.hub.set_appointments(person, &complete),
                    Ok(None) => self.hub.refresh(person).await,
                    Err(error) => {
                        tracing::warn!(person = %person, "cannot store calendar changes: {error}");
                        return;
                    }
                }
                let update = {
                    let mut people = self.people();
                    let Some(health) = people.get_mut(person) else {
                        return;
                    };
                    health.delta_link = Some(next);
                    health.last_delta_at = Some(now);
                    health.window = Some(window);
                    health.last_error = None;
                    health.consecutive_failures = 0;
                    health.clone()
                };
                self.persist_health(person, &update).await;
            }
            Ok(DeltaOutcome::ResyncRequired) => {
                tracing::info!(person = %person, "Graph forgot the delta state; reading the window anew");
                self.read_windows(std::slice::from_ref(person), None).await;
            }
            Err(error) => {
                self.record_failure(person, &error).await;
                self.retry_later(person);
            }
        }
    }

    /// A read that failed (throttled beyond the retries, Graph or Entra ID down) is tried
    /// again by delta after a back-off that doubles with every failure in a row (1 s … 5 min),
    /// so that a change Graph notified during an outage is not lost until the reconciliation.
    fn retry_later(&self, person: &PersonKey) {
        let failures = self
            .people()
            .get(person)
            .map_or(1, |health| health.consecutive_failures.max(1));
        let delay = Duration::from_secs(1u64 << (failures - 1).min(8)).min(RETRY_MAX);
        let queue = self.queue.clone();
        let work = Work::Delta(person.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The receiver only goes away at shutdown; then the retry is moot.
            let _ = queue.send(work);
        });
    }

    fn subscription_expiry(&self) -> Timestamp {
        let minutes = i64::try_from(self.settings.subscription_lifetime_minutes).unwrap_or(4230);
        self.clock
            .now()
            .checked_add(SignedDuration::from_mins(minutes))
            .unwrap_or(Timestamp::MAX)
    }

    async fn subscribe_missing(&self) {
        if self.notification_urls.is_none() {
            return;
        }
        let now = self.clock.now();
        let missing: Vec<PersonKey> = self
            .people()
            .iter()
            .filter(|(_, health)| {
                health.user.is_some()
                    && health
                        .subscription_expires_at
                        .is_none_or(|expires| expires <= now)
            })
            .map(|(person, _)| person.clone())
            .collect();
        self.subscribe(&missing).await;
    }

    async fn subscribe(&self, people: &[PersonKey]) {
        let Some((notification_url, lifecycle_url)) = &self.notification_urls else {
            return;
        };
        let expires_at = self.subscription_expiry();
        let targets: Vec<(PersonKey, String)> = people
            .iter()
            .filter_map(|person| self.user_of(person).map(|user| (person.clone(), user)))
            .collect();
        let requests: Vec<SubscriptionRequest> = targets
            .iter()
            .map(|(_, user)| SubscriptionRequest {
                user: user.clone(),
                notification_url: notification_url.clone(),
                lifecycle_notification_url: Some(lifecycle_url.clone()),
                client_state: self.client_state.clone(),
                expires_at,
            })
            .collect();
        let results = self.graph.create_subscriptions(&requests).await;
        let mut updates = Vec::new();
        for ((person, _), result) in targets.into_iter().zip(results) {
            match result {
                Ok(subscription) => {
                    self.subscriptions()
                        .insert(subscription.id.clone(), person.clone());
                    let mut people = self.people();
                    let health = people.entry(person.clone()).or_default();
                    health.subscription_id = Some(subscription.id);
                    health.subscription_expires_at = Some(subscription.expires_at);
                    updates.push((person, health.clone()));
                }
                Err(error) => self.record_failure(&person, &error).await,
            }
        }
        self.persist_healths(&updates).await;
    }

    /// Queues renewals for subscriptions that expire within `renew_before_minutes`.
    fn renew_expiring(&self) {
        if self.notification_urls.is_none() {
            return;
        }
        let minutes = i64::try_from(self.settings.renew_before_minutes).unwrap_or(60);
        let horizon = self
            .clock
            .now()
            .checked_add(SignedDuration::from_mins(minutes))
            .unwrap_or(Timestamp::MAX);
        let due: Vec<(PersonKey, bool)> = self
            .people()
            .iter()
            .filter(|(_, health)| health.user.is_some())
            .filter_map(|(person, health)| match health.subscription_expires_at {
                Some(expires) if expires <= horizon => {
                    Some((person.clone(), health.subscription_id.is_some()))
                }
                None => Some((person.clone(), false)),
                Some(_) => None,
            })
            .collect();
        for (person, has_subscription) in due {
            self.enqueue(if has_subscription {
                Work::Renew(person)
            } else {
                Work::Resubscribe(person)
            });
        }
    }

    async fn renew(&self, person: &PersonKey) {
        let Some(id) = self
            .people()
            .get(person)
            .and_then(|h| h.subscription_id.clone())
        else {
            self.subscribe(std::slice::from_ref(person)).await;
            return;
        };
        match self
            .graph
            .renew_subscription(&id, self.subscription_expiry())
            .await
        {
            Ok(RenewOutcome::Renewed { expires_at }) => {
                let update = {
                    let mut people = self.people();
                    let Some(health) = people.get_mut(person) else {
                        return;
                    };
                    health.subscription_expires_at = Some(expires_at);
                    health.clone()
                };
                self.persist_health(person, &update).await;
            }
            Ok(RenewOutcome::Gone) => {
                // Renewing a subscription Graph dropped fails for ever: create a new one, and
                // read what happened while there was none.
                self.subscriptions().remove(&id);
                self.subscribe(std::slice::from_ref(person)).await;
                self.enqueue(Work::Delta(person.clone()));
            }
            Err(error) => self.record_failure(person, &error).await,
        }
    }

    /// At local midnight every window moves on: re-read everyone, spread over
    /// `midnight_spread_minutes` so that the tenant is not hit at once.
    async fn midnight_reread(&self) {
        let mut people: Vec<PersonKey> = self.people().keys().cloned().collect();
        people.sort();
        let spread = Duration::from_secs(self.settings.midnight_spread_minutes * 60);
        let n_chunks = people.len().div_ceil(READ_CHUNK).max(1);
        let pause = spread / n_chunks as u32;
        tracing::info!(source = %self.source_id, people = people.len(), "midnight re-read");
        for (index, chunk) in people.chunks(READ_CHUNK).enumerate() {
            if index > 0 {
                tokio::time::sleep(pause).await;
            }
            self.read_windows(chunk, None).await;
        }
        crate::memory::release_free_memory();
    }
}

fn sync_state_of(health: &PersonHealth) -> calbridge_store::SyncState {
    calbridge_store::SyncState {
        delta_link: health
            .delta_link
            .as_ref()
            .map(|link| link.as_str().to_string()),
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
