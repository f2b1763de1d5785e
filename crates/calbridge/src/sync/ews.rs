//! Keeping one on-premises Exchange organisation's calendars fresh over EWS: name resolution to
//! the primary SMTP address, the first window read, streaming subscriptions grouped per
//! connection (re-read of the affected mailbox on every change, of the whole group after a
//! reconnect), the midnight re-read and per-person health, as the innovaphone seed describes.
//!
//! All SOAP, NTLM and Autodiscover details live in `calbridge-sources-ews`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use calbridge_domain::{MailboxAddress, SourceId};
use calbridge_sources_ews::{EwsError, EwsSource, StreamEvent, SubscriptionId};
use calbridge_store::{PersonKey, Resolution, Store, WindowReplacement};
use jiff::Timestamp;
use tokio::sync::{mpsc, Semaphore};

use super::graph::{PersonHealth, Progress, Work};
use crate::clock::Clock;
use crate::config::SyncConfig;
use crate::hub::PresenceHub;
use crate::shutdown::Shutdown;

/// Exchange closes a streaming connection after at most 30 minutes; the seed re-establishes it
/// every 30 minutes.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const PARALLEL_PEOPLE: usize = 8;
/// The longest wait before a failed resolution, read or subscription is tried again.
const RETRY_MAX: Duration = Duration::from_secs(300);

pub struct EwsSync {
    pub source_id: SourceId,
    pub ews: Arc<EwsSource>,
    store: Arc<dyn Store>,
    hub: Arc<PresenceHub>,
    clock: Arc<dyn Clock>,
    settings: SyncConfig,
    people: Mutex<HashMap<PersonKey, PersonHealth>>,
    by_mailbox: Mutex<HashMap<MailboxAddress, PersonKey>>,
    /// The directory's further addresses per person, tried by `ResolveNames` in order.
    alternates: Mutex<HashMap<PersonKey, Vec<String>>>,
    queue: mpsc::UnboundedSender<Work>,
    pub progress: Progress,
    /// The streaming connections; dropping one ends it.
    streams: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Batches start with one request alone (the limiter starts with one permit): a wrong password
/// is then refused once and the credential back-off stops the rest before they are sent,
/// instead of `PARALLEL_PEOPLE` refused logons at once. When the first request is done the
/// batch opens up to `PARALLEL_PEOPLE` at a time.
fn open_up(limiter: &Semaphore, first: bool) {
    if first {
        limiter.add_permits(PARALLEL_PEOPLE - 1);
    }
}

impl EwsSync {
    pub fn new(
        source_id: SourceId,
        ews: EwsSource,
        store: Arc<dyn Store>,
        hub: Arc<PresenceHub>,
        clock: Arc<dyn Clock>,
        settings: SyncConfig,
    ) -> (Arc<EwsSync>, mpsc::UnboundedReceiver<Work>) {
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let sync = EwsSync {
            source_id,
            ews: Arc::new(ews),
            store,
            hub,
            clock,
            settings,
            people: Mutex::new(HashMap::new()),
            by_mailbox: Mutex::new(HashMap::new()),
            alternates: Mutex::new(HashMap::new()),
            queue,
            progress: Progress::default(),
            streams: tokio::sync::Mutex::new(Vec::new()),
        };
        (Arc::new(sync), queue_rx)
    }

    fn people(&self) -> MutexGuard<'_, HashMap<PersonKey, PersonHealth>> {
        self.people
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mailboxes(&self) -> MutexGuard<'_, HashMap<MailboxAddress, PersonKey>> {
        self.by_mailbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_alternates(&self, person: &PersonKey, alternates: Vec<String>) {
        self.alternates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(person.clone(), alternates);
    }

    /// The names `ResolveNames` tries for a person, in the seed's order: the directory's
    /// address, its further addresses, then `username@domain` with the service account's
    /// domain.
    fn candidates(&self, person: &PersonKey) -> Vec<String> {
        let mut candidates = vec![person.address.to_string()];
        if let Some(more) = self
            .alternates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(person)
        {
            candidates.extend(more.iter().cloned());
        }
        let service_domain = self
            .ews
            .config()
            .user
            .rsplit_once('@')
            .map(|(_, domain)| domain.to_ascii_lowercase());
        if let Some(domain) = service_domain {
            let username = format!("{}@{domain}", person.address.local_part());
            if !candidates.contains(&username) {
                candidates.push(username);
            }
        }
        candidates
    }

    pub fn health(&self, person: &PersonKey) -> Option<PersonHealth> {
        self.people().get(person).cloned()
    }

    pub fn n_subscriptions(&self) -> usize {
        self.people()
            .values()
            .filter(|health| health.subscription_id.is_some())
            .count()
    }

    pub fn enqueue(&self, work: Work) {
        // The receiver only goes away at shutdown; then the work is moot.
        let _ = self.queue.send(work);
    }

    fn window_now(&self) -> (Timestamp, Timestamp) {
        super::window_from(self.clock.now(), self.settings.window_hours)
    }

    fn mailbox_of(&self, person: &PersonKey) -> Option<MailboxAddress> {
        self.people()
            .get(person)
            .and_then(|health| health.resolved_address.as_deref())
            .and_then(|address| MailboxAddress::parse(address).ok())
    }

    pub async fn run(self: Arc<Self>, mut work: mpsc::UnboundedReceiver<Work>, shutdown: Shutdown) {
        self.start().await;
        self.progress.finished.store(true, Ordering::Relaxed);
        crate::memory::release_free_memory();
        self.open_streams().await;
        let limiter = Arc::new(Semaphore::new(PARALLEL_PEOPLE));
        let mut next_midnight = self.next_midnight();
        loop {
            let midnight = self.clock.sleep_until(next_midnight);
            tokio::select! {
                _ = shutdown.wait() => {
                    for stream in self.streams.lock().await.drain(..) {
                        stream.abort();
                    }
                    return;
                }
                Some(item) = work.recv() => {
                    let Ok(permit) = limiter.clone().acquire_owned().await else { return };
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.do_work(item).await;
                        drop(permit);
                    });
                }
                _ = midnight => {
                    next_midnight = self.next_midnight();
                    let people: Vec<PersonKey> = self.people().keys().cloned().collect();
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.read_windows(&people, None).await;
                        crate::memory::release_free_memory();
                    });
                }
            }
        }
    }

    fn next_midnight(&self) -> Timestamp {
        super::next_local_midnight(self.clock.now(), self.hub.locale().zone.zone())
    }

    async fn start(&self) {
        let people = match self.store.list_people_of_source(&self.source_id).await {
            Ok(people) => people,
            Err(error) => {
                tracing::error!(source = %self.source_id, "cannot read people: {error}");
                return;
            }
        };
        let mut to_resolve = Vec::new();
        for person in &people {
            let mut health = PersonHealth::default();
            match &person.resolution {
                Resolution::Resolved { primary_smtp, .. } => {
                    health.resolved_address = Some(primary_smtp.to_string());
                    self.mailboxes()
                        .insert(primary_smtp.clone(), person.key.clone());
                }
                Resolution::Failed { error } => {
                    health.resolution_error = Some(error.clone());
                    to_resolve.push(person.key.clone());
                }
                Resolution::Pending => to_resolve.push(person.key.clone()),
            }
            self.people().insert(person.key.clone(), health);
        }
        self.resolve(&to_resolve).await;
        let everyone: Vec<PersonKey> = people.into_iter().map(|person| person.key).collect();
        self.progress.total.store(everyone.len(), Ordering::Relaxed);
        // EWS has no delta links to resume from: the first read after a start is always a full
        // one, as the seed's Calendar App does.
        self.read_windows(&everyone, Some(&self.progress)).await;
    }

    /// `ResolveNames` for each person: the directory's address, then alternatives.
    async fn resolve(&self, people: &[PersonKey]) {
        let limiter = Arc::new(Semaphore::new(1));
        let mut tasks = Vec::new();
        for person in people {
            let Ok(permit) = limiter.clone().acquire_owned().await else {
                return;
            };
            let ews = self.ews.clone();
            let person = person.clone();
            let candidates = self.candidates(&person);
            let first = tasks.is_empty();
            let opening = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let result = ews.resolve_names(&candidates).await;
                drop(permit);
                open_up(&opening, first);
                (person, result)
            }));
        }
        let mut resolutions = Vec::new();
        for task in tasks {
            let Ok((person, result)) = task.await else {
                continue;
            };
            let resolution = match result {
                Ok(primary_smtp) => {
                    self.mailboxes()
                        .insert(primary_smtp.clone(), person.clone());
                    let mut people = self.people();
                    let health = people.entry(person.clone()).or_default();
                    health.resolved_address = Some(primary_smtp.to_string());
                    health.resolution_error = None;
                    Resolution::Resolved {
                        primary_smtp,
                        source_user_id: None,
                    }
                }
                Err(error) => {
                    let message = format!("cannot resolve {}: {error}", person.address);
                    tracing::warn!(source = %self.source_id, "{message}");
                    {
                        let mut people = self.people();
                        let health = people.entry(person.clone()).or_default();
                        health.resolution_error = Some(message.clone());
                        if error.is_retryable() {
                            health.consecutive_failures += 1;
                        }
                    }
                    // A busy server or a network hiccup is not the address's fault: try the
                    // whole person (resolution, read, subscription) again later.
                    if error.is_retryable() {
                        self.retry_later(&person, Work::Added(person.clone()));
                    }
                    Resolution::Failed { error: message }
                }
            };
            resolutions.push((person, resolution));
        }
        if let Err(error) = self.store.mark_resolutions(&resolutions).await {
            tracing::warn!(source = %self.source_id, "cannot store resolutions: {error}");
        }
    }

    /// `FindItem`/`CalendarView` for each person, stored in batches and decided.
    async fn read_windows(&self, people: &[PersonKey], progress: Option<&Progress>) {
        let (window_start, window_end) = self.window_now();
        let limiter = Arc::new(Semaphore::new(1));
        let mut tasks = Vec::new();
        for person in people {
            let Some(mailbox) = self.mailbox_of(person) else {
                if let Some(progress) = progress {
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            let Ok(permit) = limiter.clone().acquire_owned().await else {
                return;
            };
            let ews = self.ews.clone();
            let person = person.clone();
            let first = tasks.is_empty();
            let opening = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let result = ews.read_window(&mailbox, window_start, window_end).await;
                drop(permit);
                open_up(&opening, first);
                (person, result)
            }));
        }
        let mut windows = Vec::new();
        for task in tasks {
            let Ok((person, result)) = task.await else {
                continue;
            };
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
                    }
                    self.record_failure(&person, &error);
                    if error.is_retryable() {
                        self.retry_later(&person, Work::Delta(person.clone()));
                    }
                }
            }
            if let Some(progress) = progress {
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
        }
        let decided: Vec<(PersonKey, Vec<calbridge_domain::Appointment>)> = windows
            .iter()
            .map(|window| (window.key.clone(), window.appointments.clone()))
            .collect();
        if decided.is_empty() {
            return;
        }
        if let Err(error) = self.store.replace_appointments_many(windows).await {
            tracing::warn!(source = %self.source_id, "cannot store {} calendars: {error}", decided.len());
            return;
        }
        let now = self.clock.now();
        for (person, appointments) in &decided {
            self.hub.set_appointments(person, appointments);
            let mut people = self.people();
            let health = people.entry(person.clone()).or_default();
            health.window = Some((window_start, window_end));
            health.last_full_sync_at = Some(now);
            health.last_error = None;
            health.consecutive_failures = 0;
        }
    }

    fn record_failure(&self, person: &PersonKey, error: &EwsError) {
        let now = self.clock.now();
        let mut people = self.people();
        let health = people.entry(person.clone()).or_default();
        health.last_error = Some(error.to_string());
        health.last_error_at = Some(now);
        health.consecutive_failures += 1;
        // A wrong password fails every mailbox alike; the EWS source already backs off and the
        // first failure is enough in the log.
        if !error.is_credential_error() || health.consecutive_failures == 1 {
            tracing::warn!(source = %self.source_id, person = %person, "{error}");
        }
    }

    /// Sends `work` again after a back-off that doubles with every failure in a row
    /// (1 s … 5 min), so that an `ErrorServerBusy` storm or an outage longer than the EWS
    /// client's own retries does not leave a person without presence or subscription.
    fn retry_later(&self, person: &PersonKey, work: Work) {
        let failures = self
            .people()
            .get(person)
            .map_or(1, |health| health.consecutive_failures.max(1));
        let delay = Duration::from_secs(1u64 << (failures - 1).min(8)).min(RETRY_MAX);
        let queue = self.queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The receiver only goes away at shutdown; then the retry is moot.
            let _ = queue.send(work);
        });
    }

    /// A subscription that failed: recorded, and for passing troubles the person is brought
    /// up again later (read, subscribe, stream).
    fn subscription_failed(&self, person: &PersonKey, error: &EwsError) {
        self.record_failure(person, error);
        if error.is_retryable() {
            self.retry_later(person, Work::Added(person.clone()));
        }
    }

    async fn do_work(self: &Arc<Self>, work: Work) {
        match work {
            Work::Added(person) => {
                self.people().entry(person.clone()).or_default();
                if self.mailbox_of(&person).is_none() {
                    self.resolve(std::slice::from_ref(&person)).await;
                }
                self.read_windows(std::slice::from_ref(&person), None).await;
                // A new person gets a subscription and a connection of their own at once, so
                // their changes stream from now on.
                if let Some(mailbox) = self.mailbox_of(&person) {
                    match self.ews.subscribe(&mailbox).await {
                        Ok(id) => {
                            if let Some(health) = self.people().get_mut(&person) {
                                health.subscription_id = Some(id.0.clone());
                            }
                            self.start_stream(vec![(id, mailbox)]).await;
                        }
                        Err(error) => self.subscription_failed(&person, &error),
                    }
                }
            }
            Work::Removed(person) => {
                if let Some(health) = self.people().remove(&person) {
                    if let Some(address) = health
                        .resolved_address
                        .and_then(|address| MailboxAddress::parse(&address).ok())
                    {
                        self.mailboxes().remove(&address);
                    }
                }
                self.hub.remove(&person);
            }
            Work::Delta(person) | Work::Resubscribe(person) | Work::Renew(person) => {
                self.read_windows(std::slice::from_ref(&person), None).await;
            }
        }
    }

    /// Subscribes every resolved mailbox and opens streaming connections of at most
    /// `max_subscriptions_per_connection` subscriptions each.
    async fn open_streams(self: &Arc<Self>) {
        let mailboxes: Vec<(MailboxAddress, PersonKey)> = self
            .mailboxes()
            .iter()
            .map(|(mailbox, person)| (mailbox.clone(), person.clone()))
            .collect();
        let mut subscribed: Vec<(SubscriptionId, MailboxAddress)> = Vec::new();
        for (mailbox, person) in mailboxes {
            match self.ews.subscribe(&mailbox).await {
                Ok(id) => {
                    if let Some(health) = self.people().get_mut(&person) {
                        health.subscription_id = Some(id.0.clone());
                    }
                    subscribed.push((id, mailbox));
                }
                Err(error) => self.subscription_failed(&person, &error),
            }
        }
        let per_connection = self.ews.config().max_subscriptions_per_connection.max(1);
        let mut streams = self.streams.lock().await;
        for group in subscribed.chunks(per_connection) {
            let group = group.to_vec();
            let me = self.clone();
            streams.push(tokio::spawn(me.follow_stream(group)));
        }
    }

    async fn start_stream(self: &Arc<Self>, group: Vec<(SubscriptionId, MailboxAddress)>) {
        let task = tokio::spawn(self.clone().follow_stream(group));
        self.streams.lock().await.push(task);
    }

    /// Boxed because a lost subscription starts a new connection from inside this one.
    fn follow_stream(
        self: Arc<Self>,
        group: Vec<(SubscriptionId, MailboxAddress)>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.follow_stream_inner(group).await })
    }

    async fn follow_stream_inner(self: Arc<Self>, group: Vec<(SubscriptionId, MailboxAddress)>) {
        let mut connection = match self.ews.stream(group.clone(), STREAM_TIMEOUT) {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(source = %self.source_id, "cannot open a streaming connection: {error}");
                return;
            }
        };
        while let Some(event) = connection.next().await {
            match event {
                StreamEvent::Changed(mailbox) => {
                    if let Some(person) = self.mailboxes().get(&mailbox).cloned() {
                        self.enqueue(Work::Delta(person));
                    }
                }
                StreamEvent::Connected { reopened: true } => {
                    // Changes during the gap were not streamed: re-read the whole group.
                    for (_, mailbox) in &group {
                        if let Some(person) = self.mailboxes().get(mailbox).cloned() {
                            self.enqueue(Work::Delta(person));
                        }
                    }
                }
                StreamEvent::SubscriptionsLost(mailboxes) => {
                    // Exchange forgot them: subscribe again on a connection of their own and
                    // re-read what may have changed meanwhile.
                    let mut renewed = Vec::new();
                    for mailbox in mailboxes {
                        let Some(person) = self.mailboxes().get(&mailbox).cloned() else {
                            continue;
                        };
                        match self.ews.subscribe(&mailbox).await {
                            Ok(id) => renewed.push((id, mailbox)),
                            Err(error) => self.subscription_failed(&person, &error),
                        }
                        self.enqueue(Work::Delta(person));
                    }
                    if !renewed.is_empty() {
                        let me = self.clone();
                        let task = tokio::spawn(me.follow_stream(renewed));
                        self.streams.lock().await.push(task);
                    }
                }
                StreamEvent::Connected { reopened: false } | StreamEvent::ConnectionClosed => {}
                StreamEvent::Error(error) => {
                    tracing::warn!(source = %self.source_id, "streaming connection: {error}");
                }
            }
        }
    }
}
