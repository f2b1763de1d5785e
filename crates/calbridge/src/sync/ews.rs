//! On-premises Exchange over EWS as a source of the sync engine: name resolution to the
//! primary SMTP address, window reads (`FindItem` per mailbox, or `GetUserAvailability` for 100
//! mailboxes at a time), and streaming subscriptions grouped per connection (a re-read of the
//! affected mailbox on every change, of the whole group after a reconnect, polling while
//! Exchange refuses a connection), as the innovaphone seed describes.
//!
//! All SOAP, NTLM and Autodiscover details live in `calbridge-sources-ews`; when to read whom
//! is the engine's.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, SourceId,
};
use calbridge_sources_ews::{
    EwsError, EwsSource, FreeBusy, StreamEvent, SubscriptionId, WindowRead,
};
use calbridge_store::{PersonKey, Store};
use jiff::Timestamp;
use tokio::sync::mpsc;

use super::engine::{
    fan_out, CalendarSource, ChangeRead, Engine, PersonHealth, Resolved, Trouble, Work,
};
use crate::clock::Clock;
use crate::config::SyncConfig;
use crate::hub::PresenceHub;

/// One Exchange organisation's people, kept fresh by the engine.
pub type EwsSync = Engine<EwsCalendars>;

/// Exchange closes a streaming connection after at most 30 minutes; the seed re-establishes it
/// every 30 minutes.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const PARALLEL_PEOPLE: usize = 8;
/// Exchange answers `GetUserAvailability` for at most 100 mailboxes per request.
const FREE_BUSY_BATCH: usize = 100;

/// What the engine needs of Exchange, and the streaming connections that watch the people.
pub struct EwsCalendars {
    pub ews: Arc<EwsSource>,
    /// The directory's further addresses per person, tried by `ResolveNames` in order.
    alternates: Mutex<HashMap<PersonKey, Vec<String>>>,
    /// The streaming connections; aborting one ends it.
    streams: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Changes the streaming connections reported.
    pub changes_streamed: AtomicU64,
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

/// How the engine weighs an EWS error.
fn trouble(error: &EwsError) -> Trouble {
    // Autodiscover failing is the organisation's outage or set-up, not the mailbox's; the EWS
    // source caches the failure, so trying again later costs nothing until it is asked again.
    let autodiscover = matches!(error, EwsError::Autodiscover { .. });
    Trouble {
        message: error.to_string(),
        retryable: error.is_retryable() || autodiscover,
        credentials: error.is_credential_error(),
        source_wide: error.is_credential_error() || autodiscover,
        retry_after: error.retry_after(),
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
        let source = EwsCalendars {
            ews: Arc::new(ews),
            alternates: Mutex::new(HashMap::new()),
            streams: tokio::sync::Mutex::new(Vec::new()),
            changes_streamed: AtomicU64::new(0),
        };
        Engine::with_source(source_id, source, store, hub, clock, settings)
    }
}

impl EwsCalendars {
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

    /// A subscription that failed: recorded, and for passing troubles the person is brought
    /// up again later (read, subscribe, stream).
    async fn subscription_failed(&self, engine: &EwsSync, person: &PersonKey, error: &EwsError) {
        // A subscription id from before a restart (or a lost one) no longer streams anything.
        engine.update_health(person, |health| health.subscription_id = None);
        let trouble = trouble(error);
        engine
            .record_failure(person, &trouble, Some(Work::Added(person.clone())))
            .await;
    }

    async fn start_stream(
        self: &Arc<Self>,
        engine: &Arc<EwsSync>,
        group: Vec<(SubscriptionId, MailboxAddress)>,
    ) {
        let task = tokio::spawn(self.clone().follow_stream(engine.clone(), group));
        self.streams.lock().await.push(task);
    }

    /// Boxed because a lost subscription starts a new connection from inside this one.
    fn follow_stream(
        self: Arc<Self>,
        engine: Arc<EwsSync>,
        group: Vec<(SubscriptionId, MailboxAddress)>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move { self.follow_stream_inner(engine, group).await })
    }

    async fn follow_stream_inner(
        self: Arc<Self>,
        engine: Arc<EwsSync>,
        group: Vec<(SubscriptionId, MailboxAddress)>,
    ) {
        let mut connection = match self.ews.stream(group.clone(), STREAM_TIMEOUT) {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(source = %engine.source_id, "cannot open a streaming connection: {error}");
                return;
            }
        };
        let people: Vec<PersonKey> = group
            .iter()
            .filter_map(|(_, mailbox)| engine.person_of_user(mailbox.as_str()))
            .collect();
        // While Exchange refuses this connection (too many hanging connections), the group is
        // polled; the connection keeps trying with its back-off and takes over once it opens.
        let mut poller: Option<super::engine::Polling> = None;
        while let Some(event) = connection.next().await {
            match event {
                StreamEvent::Changed(mailbox) => {
                    self.changes_streamed.fetch_add(1, Ordering::Relaxed);
                    if let Some(person) = engine.person_of_user(mailbox.as_str()) {
                        engine.enqueue(Work::Changed(person));
                    }
                }
                StreamEvent::Connected { reopened } => {
                    let was_polled = poller.take().is_some();
                    if was_polled {
                        tracing::info!(source = %engine.source_id, "Exchange accepted the streaming connection for {} mailboxes: streaming instead of polling", people.len());
                    }
                    // Changes during the gap were not streamed: re-read the whole group, in
                    // one go (free/busy reads take 100 mailboxes per request).
                    if reopened || was_polled {
                        let engine = engine.clone();
                        let people = people.clone();
                        tokio::spawn(async move { engine.read_group(&people).await });
                    }
                }
                StreamEvent::Error(error) if error.is_connection_limit() => {
                    if poller.is_none() {
                        tracing::warn!(source = %engine.source_id, "{error}: {} mailboxes are read every {} s until Exchange accepts the connection", people.len(), engine.poll_interval().as_secs());
                        poller = Some(engine.poll(people.clone()));
                    }
                }
                StreamEvent::SubscriptionsLost(mailboxes) => {
                    // Exchange forgot them: subscribe again on a connection of their own and
                    // re-read what may have changed meanwhile.
                    let mut renewed = Vec::new();
                    for mailbox in mailboxes {
                        let Some(person) = engine.person_of_user(mailbox.as_str()) else {
                            continue;
                        };
                        match self.ews.subscribe(&mailbox).await {
                            Ok(id) => renewed.push((id, mailbox)),
                            Err(error) => self.subscription_failed(&engine, &person, &error).await,
                        }
                        engine.enqueue(Work::Changed(person));
                    }
                    if !renewed.is_empty() {
                        self.start_stream(&engine, renewed).await;
                    }
                }
                StreamEvent::ConnectionClosed => {}
                StreamEvent::Error(error) => {
                    tracing::warn!(source = %engine.source_id, "streaming connection: {error}");
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl CalendarSource for EwsCalendars {
    fn parallel_people(&self) -> usize {
        PARALLEL_PEOPLE
    }

    /// All at once: `fan_out` bounds the requests, and free/busy batches take 100 each.
    fn read_chunk(&self) -> usize {
        usize::MAX
    }

    /// EWS has no change cursor to resume from: the first read after a start is always a full
    /// one, as the seed's Calendar App does.
    fn resumes_after_restart(&self) -> bool {
        false
    }

    /// Every streaming group is re-read whole after each reconnect (at most every 30 minutes),
    /// which is the reconciliation Exchange needs.
    fn reconciles(&self) -> bool {
        false
    }

    fn set_alternates(&self, person: &PersonKey, alternates: Vec<String>) {
        self.alternates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(person.clone(), alternates);
    }

    async fn group_members(&self, group: &str) -> Result<Vec<super::GroupMember>, String> {
        Err(format!(
            "group {group}: directory groups are read through Microsoft Graph; list the people of an EWS source in a directory file"
        ))
    }

    /// The rooms of every room list, or of one (`GetRoomLists` / `GetRooms`): their names and
    /// addresses only, EWS knows no capacity, building or floor.
    async fn rooms(
        &self,
        list: Option<&MailboxAddress>,
    ) -> Result<Vec<calbridge_domain::RoomInfo>, String> {
        self.ews
            .rooms(list)
            .await
            .map_err(|error| error.to_string())
    }

    /// `CreateItem` with a `DeclineItem`, acting as the mailbox (`user` is its primary SMTP
    /// address, as [`Resolved::primary_smtp`] gave it).
    async fn decline(&self, user: &str, appointment_id: &str, comment: &str) -> Result<(), String> {
        let mailbox = MailboxAddress::parse(user).map_err(|error| {
            format!(
                "{} is not a mailbox address: {error}",
                calbridge_domain::shorten(user, 100)
            )
        })?;
        self.ews
            .decline(&mailbox, appointment_id, comment)
            .await
            .map_err(|error| error.to_string())
    }

    /// `ResolveNames` for each person: the directory's address, then alternatives.
    async fn resolve(&self, people: Vec<PersonKey>) -> Vec<(PersonKey, Result<Resolved, Trouble>)> {
        let jobs: Vec<(PersonKey, Vec<String>)> = people
            .into_iter()
            .map(|person| {
                let candidates = self.candidates(&person);
                (person, candidates)
            })
            .collect();
        fan_out(PARALLEL_PEOPLE, jobs, |(person, candidates)| {
            let ews = self.ews.clone();
            async move {
                let result = ews
                    .resolve_names(&candidates)
                    .await
                    .map(|primary_smtp| Resolved {
                        primary_smtp,
                        source_user_id: None,
                    })
                    .map_err(|error| trouble(&error));
                (person, result)
            }
        })
        .await
    }

    /// `FindItem`/`CalendarView` per mailbox, or `GetUserAvailability` in batches of 100 with
    /// `read = "free_busy"`.
    async fn read_windows(
        &self,
        people: Vec<(PersonKey, String)>,
        start: Timestamp,
        end: Timestamp,
    ) -> Vec<(PersonKey, Result<Vec<Appointment>, Trouble>)> {
        let mut readable = Vec::with_capacity(people.len());
        let mut results = Vec::new();
        for (person, user) in people {
            match MailboxAddress::parse(&user) {
                Ok(mailbox) => readable.push((person, mailbox)),
                Err(error) => results.push((
                    person,
                    Err(Trouble::lasting(format!("mailbox {user}: {error}"))),
                )),
            }
        }
        match self.ews.config().read {
            WindowRead::CalendarView => {
                results.extend(
                    fan_out(PARALLEL_PEOPLE, readable, |(person, mailbox)| {
                        let ews = self.ews.clone();
                        async move {
                            let result = ews
                                .read_window(&mailbox, start, end)
                                .await
                                .map_err(|error| trouble(&error));
                            (person, result)
                        }
                    })
                    .await,
                );
            }
            WindowRead::FreeBusy => {
                let batches: Vec<Vec<(PersonKey, MailboxAddress)>> = readable
                    .chunks(FREE_BUSY_BATCH)
                    .map(<[_]>::to_vec)
                    .collect();
                results.extend(
                    fan_out(PARALLEL_PEOPLE, batches, |batch| {
                        let ews = self.ews.clone();
                        async move { read_free_busy(&ews, batch, start, end).await }
                    })
                    .await
                    .into_iter()
                    .flatten(),
                );
            }
        }
        results
    }

    /// EWS has no change reads: a change is a re-read of the mailbox's window.
    async fn read_changes(
        &self,
        person: &PersonKey,
        user: &str,
        window: (Timestamp, Timestamp),
        _cursor: Option<&str>,
    ) -> Result<ChangeRead, Trouble> {
        let mut results = self
            .read_windows(vec![(person.clone(), user.to_string())], window.0, window.1)
            .await;
        match results.pop() {
            Some((_, result)) => result.map(ChangeRead::Window),
            None => Err(Trouble::lasting(format!("no answer read for {user}"))),
        }
    }

    /// Subscribes the people's mailboxes and opens streaming connections of at most
    /// `max_subscriptions_per_connection` subscriptions each.
    async fn watch(self: Arc<Self>, engine: &Arc<EwsSync>, people: Vec<PersonKey>) {
        let mailboxes: Vec<(MailboxAddress, PersonKey)> = people
            .into_iter()
            .filter_map(|person| {
                let user = engine.user_of(&person)?;
                let mailbox = MailboxAddress::parse(&user).ok()?;
                Some((mailbox, person))
            })
            .collect();
        let results = fan_out(PARALLEL_PEOPLE, mailboxes, |(mailbox, person)| {
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
                    engine.update_health(&person, |health| {
                        health.subscription_id = Some(id.0.clone());
                    });
                    subscribed.push((id, mailbox));
                }
                Err(error) => self.subscription_failed(engine, &person, &error).await,
            }
        }
        let per_connection = self.ews.config().max_subscriptions_per_connection.max(1);
        for group in subscribed.chunks(per_connection) {
            self.start_stream(engine, group.to_vec()).await;
        }
    }

    async fn forget(&self, _person: &PersonKey, _health: &PersonHealth) {}

    async fn shutdown(&self) {
        for stream in self.streams.lock().await.drain(..) {
            stream.abort();
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
            let trouble = trouble(&error);
            batch
                .into_iter()
                .map(|(person, _)| (person, Err(trouble.clone())))
                .collect()
        }
    }
}

#[cfg(test)]
#[path = "ews_tests.rs"]
mod tests;
