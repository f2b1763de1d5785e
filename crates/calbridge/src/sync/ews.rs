//! Keeping one on-premises Exchange organisation's calendars fresh over EWS: name resolution to
//! the primary SMTP address, the first window read, streaming subscriptions grouped per
//! connection (re-read of the affected mailbox on every change, of the whole group after a
//! reconnect), the midnight re-read and per-person health, as the innovaphone seed describes.
//!
//! All SOAP, NTLM and Autodiscover details live in `calbridge-sources-ews`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, SourceId,
};
use calbridge_sources_ews::{
    EwsError, EwsSource, FreeBusy, StreamEvent, SubscriptionId, WindowRead,
};
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
/// The longest wait before a failed resolution, read or subscription is tried again; also
/// the wait after refused credentials (an account locked out for a while recovers by itself).
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Exchange answers `GetUserAvailability` for at most 100 mailboxes per request.
const FREE_BUSY_BATCH: usize = 100;

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
    /// Whole-group re-reads (after a reconnect) run one at a time, so that connections
    /// re-opening together do not multiply the parallel requests.
    group_reads: Semaphore,
    /// Changes the streaming connections reported.
    pub changes_streamed: std::sync::atomic::AtomicU64,
    /// When a source-wide trouble was last logged.
    source_wide_logged_at: Mutex<Option<Timestamp>>,
    /// Mailboxes read by polling because Exchange refused their streaming connection.
    pub polled_mailboxes: Arc<AtomicUsize>,
}

/// Polls a group whose streaming connection Exchange refused; dropping it stops the polling.
struct Poller {
    task: tokio::task::JoinHandle<()>,
    counter: Arc<AtomicUsize>,
    mailboxes: usize,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
        self.counter.fetch_sub(self.mailboxes, Ordering::Relaxed);
    }
}

/// Runs `job` for every item and returns the results in the items' order. The first request
/// goes alone: a wrong password is then refused once and the credential back-off stops the
/// rest before they are sent, instead of `PARALLEL_PEOPLE` refused logons at once. When the
/// first is done the rest run up to `PARALLEL_PEOPLE` at a time.
async fn fan_out<T, R, F, Fut>(items: Vec<T>, job: F) -> Vec<R>
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
                opening.add_permits(PARALLEL_PEOPLE - 1);
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

/// Why one person's read failed, kept apart from [`EwsError`] because one failed
/// `GetUserAvailability` batch fails up to 100 people and a mailbox's own error inside a
/// batch is only Exchange's code and text.
#[derive(Debug, Clone)]
struct Trouble {
    message: String,
    retryable: bool,
    credentials: bool,
    /// The source as a whole is in trouble (credentials, Autodiscover), not this mailbox:
    /// logged once for everyone, not once per person.
    source_wide: bool,
    retry_after: Option<Duration>,
}

impl From<&EwsError> for Trouble {
    fn from(error: &EwsError) -> Self {
        // Autodiscover failing is the organisation's outage or set-up, not the mailbox's; the
        // EWS source caches the failure, so trying again later costs nothing until it is
        // asked again.
        let autodiscover = matches!(error, EwsError::Autodiscover { .. });
        Trouble {
            message: error.to_string(),
            retryable: error.is_retryable() || autodiscover,
            credentials: error.is_credential_error(),
            source_wide: error.is_credential_error() || autodiscover,
            retry_after: error.retry_after(),
        }
    }
}

/// How long to wait before trying again after `trouble`, the `failures`-th in a row; `None`
/// when trying again cannot help (see [`EwsSync::retry_later`]).
fn retry_delay(trouble: &Trouble, failures: u32) -> Option<Duration> {
    if trouble.credentials {
        return Some(RETRY_MAX);
    }
    if !trouble.retryable {
        return None;
    }
    let doubling = Duration::from_secs(1u64 << (failures.max(1) - 1).min(9));
    Some(
        doubling
            .max(trouble.retry_after.unwrap_or_default())
            .min(RETRY_MAX),
    )
}

/// One mailbox's free/busy answer as appointments without subjects.
fn free_busy_appointments(answer: FreeBusy) -> Result<Vec<Appointment>, Trouble> {
    match answer.busy {
        // Two meetings at the same time are two periods with the same times: the position
        // keeps their ids apart.
        Ok(periods) => Ok(periods
            .into_iter()
            .enumerate()
            .map(|(index, (start, end, show_as))| Appointment {
                id: format!("freebusy:{index}:{}:{}", start.as_second(), end.as_second()),
                time: AppointmentTime::Timed { start, end },
                show_as,
                sensitivity: Sensitivity::Normal,
                subject: None,
                organizer: None,
                status: AppointmentStatus::Active,
            })
            .collect()),
        Err(code) => Err(Trouble {
            retryable: code.starts_with("ErrorServerBusy"),
            message: format!("GetUserAvailability for {} failed: {code}", answer.mailbox),
            credentials: false,
            source_wide: false,
            retry_after: None,
        }),
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
            group_reads: Semaphore::new(1),
            changes_streamed: std::sync::atomic::AtomicU64::new(0),
            source_wide_logged_at: Mutex::new(None),
            polled_mailboxes: Arc::new(AtomicUsize::new(0)),
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
        // The first sync counts as finished once the subscriptions are made (their streaming
        // connections are opening), as on Graph: from then on every change is seen.
        self.open_streams().await;
        self.progress.finished.store(true, Ordering::Relaxed);
        crate::memory::release_free_memory();
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
                    let me = self.clone();
                    tokio::spawn(async move { me.midnight().await });
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
        let jobs: Vec<(PersonKey, Vec<String>)> = people
            .iter()
            .map(|person| (person.clone(), self.candidates(person)))
            .collect();
        let results = fan_out(jobs, |(person, candidates)| {
            let ews = self.ews.clone();
            async move {
                let result = ews.resolve_names(&candidates).await;
                (person, result)
            }
        })
        .await;
        let mut resolutions = Vec::new();
        for (person, result) in results {
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
                    let trouble = Trouble::from(&error);
                    {
                        let mut people = self.people();
                        let health = people.entry(person.clone()).or_default();
                        health.resolution_error = Some(message.clone());
                        if trouble.retryable || trouble.credentials {
                            health.consecutive_failures += 1;
                        }
                    }
                    self.log_trouble(None, &trouble, &message);
                    // A busy server, a network hiccup or a locked-out account is not the
                    // address's fault: try the whole person (resolution, read, subscription)
                    // again later.
                    self.retry_later(&person, Work::Added(person.clone()), &trouble);
                    Resolution::Failed { error: message }
                }
            };
            resolutions.push((person, resolution));
        }
        if let Err(error) = self.store.mark_resolutions(&resolutions).await {
            tracing::warn!(source = %self.source_id, "cannot store resolutions: {error}");
        }
    }

    /// Reads each person's window (`FindItem`/`CalendarView`, or `GetUserAvailability` in
    /// batches of 100 with `read = "free_busy"`), stores the windows in batches and decides.
    async fn read_windows(&self, people: &[PersonKey], progress: Option<&Progress>) {
        let (window_start, window_end) = self.window_now();
        let mut readable = Vec::with_capacity(people.len());
        for person in people {
            match self.mailbox_of(person) {
                Some(mailbox) => readable.push((person.clone(), mailbox)),
                None => {
                    if let Some(progress) = progress {
                        progress.done.fetch_add(1, Ordering::Relaxed);
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let results: Vec<(PersonKey, Result<Vec<Appointment>, Trouble>)> =
            match self.ews.config().read {
                WindowRead::CalendarView => {
                    fan_out(readable, |(person, mailbox)| {
                        let ews = self.ews.clone();
                        async move {
                            let result = ews
                                .read_window(&mailbox, window_start, window_end)
                                .await
                                .map_err(|error| Trouble::from(&error));
                            (person, result)
                        }
                    })
                    .await
                }
                WindowRead::FreeBusy => {
                    let batches: Vec<Vec<(PersonKey, MailboxAddress)>> = readable
                        .chunks(FREE_BUSY_BATCH)
                        .map(<[_]>::to_vec)
                        .collect();
                    fan_out(batches, |batch| {
                        let ews = self.ews.clone();
                        async move { read_free_busy(&ews, batch, window_start, window_end).await }
                    })
                    .await
                    .into_iter()
                    .flatten()
                    .collect()
                }
            };
        let mut windows = Vec::new();
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
                    }
                    self.record_failure(&person, &trouble);
                    self.retry_later(&person, Work::Delta(person.clone()), &trouble);
                }
            }
            if let Some(progress) = progress {
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (windows, refused) = super::without_repeated_ids(windows);
        for (person, id) in refused {
            let trouble = Trouble {
                message: format!("Exchange listed appointment {id} twice in one read; the previous window is kept"),
                retryable: false,
                credentials: false,
                source_wide: false,
                retry_after: None,
            };
            self.record_failure(&person, &trouble);
        }
        let decided: Vec<(PersonKey, Vec<Appointment>)> = windows
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

    fn record_failure(&self, person: &PersonKey, trouble: &Trouble) {
        let now = self.clock.now();
        let mut people = self.people();
        let health = people.entry(person.clone()).or_default();
        health.last_error = Some(trouble.message.clone());
        health.last_error_at = Some(now);
        health.consecutive_failures += 1;
        drop(people);
        self.log_trouble(Some(person), trouble, &trouble.message);
    }

    /// Logs a person's trouble; a source-wide one (a wrong password, Autodiscover failing)
    /// fails every person alike, so it is logged once per `RETRY_MAX` for the whole source,
    /// not once per person. Each person's health still shows it.
    fn log_trouble(&self, person: Option<&PersonKey>, trouble: &Trouble, message: &str) {
        if trouble.source_wide {
            let now = self.clock.now();
            let mut logged = self
                .source_wide_logged_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let recently = logged.is_some_and(|at| {
                now.duration_since(at) < jiff::SignedDuration::from_secs(RETRY_MAX.as_secs() as i64)
            });
            if recently {
                return;
            }
            *logged = Some(now);
        }
        match person {
            Some(person) => tracing::warn!(source = %self.source_id, person = %person, "{message}"),
            None => tracing::warn!(source = %self.source_id, "{message}"),
        }
    }

    /// Sends `work` again when the trouble may pass: after a back-off that doubles with every
    /// failure in a row (1 s … 5 min, at least what the server asked for), so that an
    /// `ErrorServerBusy` storm or an outage longer than the EWS client's own retries does not
    /// leave a person without presence or subscription; after refused credentials, every
    /// `RETRY_MAX` (the EWS source's credential back-off keeps that to one logon attempt for
    /// all people). Other troubles (no such mailbox, no rights) wait for a change of the
    /// directory or the midnight re-read.
    fn retry_later(&self, person: &PersonKey, work: Work, trouble: &Trouble) {
        let failures = self
            .people()
            .get(person)
            .map_or(1, |health| health.consecutive_failures);
        let Some(delay) = retry_delay(trouble, failures) else {
            return;
        };
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
        let trouble = Trouble::from(error);
        self.record_failure(person, &trouble);
        self.retry_later(person, Work::Added(person.clone()), &trouble);
    }

    /// The midnight re-read: everyone's new window, and another resolution for the people
    /// whose resolution failed (a mailbox created since, an account unlocked).
    async fn midnight(self: &Arc<Self>) {
        let mut resolved = Vec::new();
        let mut unresolved = Vec::new();
        for (person, health) in self.people().iter() {
            if health.resolved_address.is_some() {
                resolved.push(person.clone());
            } else {
                unresolved.push(person.clone());
            }
        }
        for person in unresolved {
            self.enqueue(Work::Added(person));
        }
        self.read_windows(&resolved, None).await;
        crate::memory::release_free_memory();
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
        let results = fan_out(mailboxes, |(mailbox, person)| {
            let ews = self.ews.clone();
            async move {
                let result = ews.subscribe(&mailbox).await;
                (mailbox, person, result)
            }
        })
        .await;
        let mut subscribed: Vec<(SubscriptionId, MailboxAddress)> = Vec::new();
        for (mailbox, person, result) in results {
            match result {
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

    /// Re-reads a streaming group's mailboxes (after a reconnect, or polling); one group at
    /// a time, so that groups re-opening together do not multiply the parallel requests.
    async fn read_group(&self, people: &[PersonKey]) {
        let Ok(_turn) = self.group_reads.acquire().await else {
            return;
        };
        self.read_windows(people, None).await;
    }

    /// How often a group without a streaming connection is read: `sync.poll_interval_seconds`.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.settings.poll_interval_seconds.max(1))
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
        let people: Vec<PersonKey> = {
            let mailboxes = self.mailboxes();
            group
                .iter()
                .filter_map(|(_, mailbox)| mailboxes.get(mailbox).cloned())
                .collect()
        };
        // While Exchange refuses this connection (too many hanging connections), the group is
        // polled; the connection keeps trying with its back-off and takes over once it opens.
        let mut poller: Option<Poller> = None;
        while let Some(event) = connection.next().await {
            match event {
                StreamEvent::Changed(mailbox) => {
                    self.changes_streamed.fetch_add(1, Ordering::Relaxed);
                    if let Some(person) = self.mailboxes().get(&mailbox).cloned() {
                        self.enqueue(Work::Delta(person));
                    }
                }
                StreamEvent::Connected { reopened } => {
                    let was_polled = poller.take().is_some();
                    if was_polled {
                        tracing::info!(source = %self.source_id, "Exchange accepted the streaming connection for {} mailboxes: streaming instead of polling", people.len());
                    }
                    // Changes during the gap were not streamed: re-read the whole group, in
                    // one go (free/busy reads take 100 mailboxes per request).
                    if reopened || was_polled {
                        let me = self.clone();
                        let people = people.clone();
                        tokio::spawn(async move { me.read_group(&people).await });
                    }
                }
                StreamEvent::Error(error) if error.is_connection_limit() => {
                    if poller.is_none() {
                        let every = self.poll_interval();
                        tracing::warn!(source = %self.source_id, "{error}: {} mailboxes are read every {} s until Exchange accepts the connection", people.len(), every.as_secs());
                        self.polled_mailboxes
                            .fetch_add(people.len(), Ordering::Relaxed);
                        let me = self.clone();
                        let polled = people.clone();
                        poller = Some(Poller {
                            task: tokio::spawn(async move {
                                let mut ticks = tokio::time::interval(every);
                                ticks.set_missed_tick_behavior(
                                    tokio::time::MissedTickBehavior::Delay,
                                );
                                // The first tick is now: the group was just read.
                                ticks.tick().await;
                                loop {
                                    ticks.tick().await;
                                    me.read_group(&polled).await;
                                }
                            }),
                            counter: self.polled_mailboxes.clone(),
                            mailboxes: people.len(),
                        });
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
                StreamEvent::ConnectionClosed => {}
                StreamEvent::Error(error) => {
                    tracing::warn!(source = %self.source_id, "streaming connection: {error}");
                }
            }
        }
    }
}

/// One `GetUserAvailability` request for up to 100 people; a failed request fails each of
/// them with the same trouble, a mailbox's own error only that mailbox.
async fn read_free_busy(
    ews: &EwsSource,
    batch: Vec<(PersonKey, MailboxAddress)>,
    start: Timestamp,
    end: Timestamp,
) -> Vec<(PersonKey, Result<Vec<Appointment>, Trouble>)> {
    let mailboxes: Vec<MailboxAddress> = batch.iter().map(|(_, mailbox)| mailbox.clone()).collect();
    match ews.free_busy_batch(&mailboxes, start, end).await {
        Ok(answers) => {
            let mut by_mailbox: HashMap<MailboxAddress, FreeBusy> = answers
                .into_iter()
                .map(|answer| (answer.mailbox.clone(), answer))
                .collect();
            batch
                .into_iter()
                .map(|(person, mailbox)| {
                    let result = match by_mailbox.remove(&mailbox) {
                        Some(answer) => free_busy_appointments(answer),
                        None => Err(Trouble {
                            message: format!("GetUserAvailability answered nothing for {mailbox}"),
                            retryable: true,
                            credentials: false,
                            source_wide: false,
                            retry_after: None,
                        }),
                    };
                    (person, result)
                })
                .collect()
        }
        Err(error) => {
            let trouble = Trouble::from(&error);
            batch
                .into_iter()
                .map(|(person, _)| (person, Err(trouble.clone())))
                .collect()
        }
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

    #[test]
    fn autodiscover_failures_are_source_wide_and_tried_again_and_a_missing_mailbox_is_not() {
        let autodiscover = Trouble::from(&EwsError::Autodiscover {
            address: "svc@contoso.example".to_string(),
            detail: "every candidate failed".to_string(),
        });
        assert!(autodiscover.retryable && autodiscover.source_wide);
        assert_eq!(retry_delay(&autodiscover, 3), Some(Duration::from_secs(4)));
        let missing = Trouble::from(&EwsError::NonExistentMailbox {
            address: "ghost@contoso.example".to_string(),
            code: "ErrorNonExistentMailbox".to_string(),
        });
        assert!(!missing.retryable && !missing.source_wide);
        assert_eq!(retry_delay(&missing, 1), None);
    }

    #[test]
    fn free_busy_periods_become_appointments_without_subjects_and_errors_name_the_mailbox() {
        let mailbox = MailboxAddress::parse("ada@contoso.example").unwrap();
        let start: Timestamp = "2026-06-01T09:00:00Z".parse().unwrap();
        let end: Timestamp = "2026-06-01T10:00:00Z".parse().unwrap();
        let appointments = free_busy_appointments(FreeBusy {
            mailbox: mailbox.clone(),
            busy: Ok(vec![
                (start, end, calbridge_domain::ShowAs::Oof),
                (start, end, calbridge_domain::ShowAs::Busy),
            ]),
        })
        .unwrap();
        assert_eq!(appointments.len(), 2);
        assert_ne!(
            appointments[0].id, appointments[1].id,
            "two meetings at the same time keep apart"
        );
        assert_eq!(appointments[0].time, AppointmentTime::Timed { start, end });
        assert_eq!(appointments[0].show_as, calbridge_domain::ShowAs::Oof);
        assert_eq!(appointments[0].subject, None);

        let busy = free_busy_appointments(FreeBusy {
            mailbox: mailbox.clone(),
            busy: Err("ErrorServerBusy: try later".to_string()),
        })
        .unwrap_err();
        assert!(busy.retryable);
        assert!(
            busy.message.contains("ada@contoso.example"),
            "{}",
            busy.message
        );
        let missing = free_busy_appointments(FreeBusy {
            mailbox,
            busy: Err("ErrorMailRecipientNotFound: no such mailbox".to_string()),
        })
        .unwrap_err();
        assert!(!missing.retryable);
    }
}
