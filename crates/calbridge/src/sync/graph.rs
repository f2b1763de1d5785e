//! Microsoft Graph as a source of the sync engine: resolution to Graph users, batched window
//! reads, delta reads of changes, and change notifications (subscriptions, their renewal and
//! lifecycle events), or delta polling when Graph cannot reach us.
//!
//! All Graph wire details live in `calbridge-sources-graph`; when to read whom is the engine's.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use calbridge_domain::{Appointment, Secret, SourceId};
use calbridge_sources_graph::{
    parse_notifications, DeltaCursor, DeltaLink, DeltaOutcome, GraphError, GraphSource,
    Notification, RenewOutcome, SubjectFetch, SubscriptionRequest, TokenStatus,
};
use calbridge_store::cluster::Wanted;
use calbridge_store::{PersonKey, Store};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::mpsc;

use super::engine::{
    fan_out, CalendarSource, ChangeRead, ChangeReadJob, Engine, PersonHealth, Resolved, Trouble,
    Work,
};
use crate::clock::Clock;
use crate::config::SyncConfig;
use crate::hub::PresenceHub;
use crate::log_gate::LogGate;

/// One Graph tenant's people, kept fresh by the engine.
pub type GraphSync = Engine<GraphCalendars>;

/// How many people are resolved, read or delta-synced at once; Graph limits per mailbox, the
/// source's semaphores bound the requests, this bounds the tasks.
const PARALLEL_PEOPLE: usize = 32;
/// People per window-read call: big enough for full `$batch` requests, small enough that
/// progress moves and results reach the store while the rest is still being read.
const READ_CHUNK: usize = 400;

/// What the engine needs of Graph, and the subscriptions that watch the people.
pub struct GraphCalendars {
    pub graph: GraphSource,
    subjects: SubjectFetch,
    /// `(notification url, lifecycle url)` when Graph can reach us; `None` means polling.
    notification_urls: Option<(String, String)>,
    client_state: Secret,
    subscription_lifetime_minutes: u64,
    renew_before_minutes: u64,
    by_subscription: Mutex<HashMap<String, PersonKey>>,
    pub notifications_received: AtomicU64,
    pub notifications_rejected: AtomicU64,
    /// The warning about rejected notifications, at most once a minute.
    rejected_warning: LogGate,
    pub secret_expires_on: Option<jiff::civil::Date>,
    /// For the sweep of orphaned subscriptions: which subscriptions the store knows.
    store: Arc<dyn Store>,
    /// Whether other instances subscribe for this source too (several on one PostgreSQL).
    peers: Mutex<SubscribingPeers>,
    /// Set by the first `watch`, which sweeps orphaned subscriptions before subscribing.
    orphans_swept: AtomicBool,
}

/// A delta read's outcome as the engine takes it.
fn change_read(outcome: Result<DeltaOutcome, GraphError>) -> Result<ChangeRead, Trouble> {
    match outcome {
        Ok(DeltaOutcome::Changes {
            upserts,
            removed_ids,
            next,
        }) => Ok(ChangeRead::Changes {
            upserts,
            removed_ids,
            cursor: next.as_str().to_string(),
        }),
        Ok(DeltaOutcome::ResyncRequired) => Ok(ChangeRead::ReadWindowAgain),
        Err(error) => Err(trouble(&error)),
    }
}

/// Who else creates subscriptions with this source's notification URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubscribingPeers {
    /// Only this process (SQLite: the store's lock keeps a second process off).
    None,
    /// Other instances on the same PostgreSQL database.
    OtherInstances,
}

/// How long a subscription that no store knows may be someone else's in the making: another
/// instance saves a subscription's id right after Graph created it (seconds), so one made or
/// renewed within this margin is left alone when instances share the source.
const PEER_SUBSCRIPTION_MARGIN: SignedDuration = SignedDuration::from_mins(10);

/// How the engine weighs a Graph error.
fn trouble(error: &GraphError) -> Trouble {
    Trouble {
        message: error.to_string(),
        retryable: error.is_retryable(),
        credentials: matches!(error, GraphError::Auth(auth) if auth.is_credential_problem()),
        source_wide: matches!(error, GraphError::Auth(_)),
        retry_after: error.retry_after(),
    }
}

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
        let notification_urls = public_url.map(|base| {
            let base = base.trim_end_matches('/');
            (
                format!("{base}/notifications/graph/{source_id}"),
                format!("{base}/notifications/graph/{source_id}/lifecycle"),
            )
        });
        let source = GraphCalendars {
            graph,
            subjects,
            notification_urls,
            client_state,
            subscription_lifetime_minutes: settings.subscription_lifetime_minutes,
            renew_before_minutes: settings.renew_before_minutes,
            by_subscription: Mutex::new(HashMap::new()),
            notifications_received: AtomicU64::new(0),
            notifications_rejected: AtomicU64::new(0),
            rejected_warning: LogGate::new(std::time::Duration::from_secs(60)),
            secret_expires_on,
            store: store.clone(),
            peers: Mutex::new(SubscribingPeers::None),
            orphans_swept: AtomicBool::new(false),
        };
        Engine::with_source(source_id, source, store, hub, clock, settings)
    }

    /// Other instances on the same database subscribe for this source too: the start-up
    /// sweep then leaves alone what they may be saving right now.
    pub fn subscribe_beside_other_instances(&self) {
        *self
            .source
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = SubscribingPeers::OtherInstances;
    }

    pub fn uses_notifications(&self) -> bool {
        self.source.notification_urls.is_some()
    }

    pub fn token_status(&self) -> TokenStatus {
        self.source.graph.token_status()
    }

    /// A webhook POST: the validation handshake is answered by the HTTP layer; this checks
    /// clientState and only queues work, so the answer goes back within Graph's 3 s. What is
    /// about subscriptions this instance does not hold comes back for the owner (several
    /// instances behind one load balancer).
    pub fn accept_notifications(&self, body: &[u8]) -> Result<Vec<(String, Wanted)>, String> {
        let source = &self.source;
        let parsed = parse_notifications(body, &source.client_state).map_err(|e| e.to_string())?;
        source
            .notifications_received
            .fetch_add(parsed.accepted.len() as u64, Ordering::Relaxed);
        if !parsed.rejected_client_state.is_empty() {
            source
                .notifications_rejected
                .fetch_add(parsed.rejected_client_state.len() as u64, Ordering::Relaxed);
            // Anyone can POST here: the warning is rate-limited, the metric counts them all.
            if let Some(held) = source.rejected_warning.pass(self.now()) {
                let shown: Vec<&str> = parsed
                    .rejected_client_state
                    .iter()
                    .take(3)
                    .map(|id| id.get(..64).unwrap_or(id))
                    .collect();
                tracing::warn!(
                    source = %self.source_id,
                    subscriptions = ?shown,
                    held_back = held,
                    "dropped notifications with a wrong clientState (forged, or for another installation); at most one such warning a minute, all of them counted in calbridge_notifications_rejected_total"
                );
            }
        }
        let mut for_others = Vec::new();
        for notification in parsed.accepted {
            let person = source
                .subscriptions()
                .get(notification.subscription_id())
                .cloned();
            let Some(person) = person else {
                let wanted = match notification {
                    Notification::Changed { .. } | Notification::Missed { .. } => Wanted::Changed,
                    Notification::ReauthorizationRequired { .. } => Wanted::Renew,
                    Notification::SubscriptionRemoved { .. } => Wanted::Resubscribe,
                };
                for_others.push((notification.subscription_id().to_string(), wanted));
                continue;
            };
            match notification {
                Notification::Changed { .. } | Notification::Missed { .. } => {
                    self.enqueue(Work::Changed(person))
                }
                Notification::ReauthorizationRequired { .. } => self.enqueue(Work::Renew(person)),
                Notification::SubscriptionRemoved { .. } => {
                    self.enqueue(Work::Rewatch(person.clone()));
                    self.enqueue(Work::Changed(person));
                }
            }
        }
        Ok(for_others)
    }
}

impl GraphCalendars {
    fn subscriptions(&self) -> MutexGuard<'_, HashMap<String, PersonKey>> {
        self.by_subscription
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn subscription_expiry(&self, now: Timestamp) -> Timestamp {
        let minutes = i64::try_from(self.subscription_lifetime_minutes).unwrap_or(4230);
        now.checked_add(SignedDuration::from_mins(minutes))
            .unwrap_or(Timestamp::MAX)
    }

    /// Deletes the subscriptions with this source's notification URL that no store knows.
    ///
    /// A process killed between Graph creating a subscription and the store saving its id
    /// leaves a live subscription behind; the next start subscribes that mailbox again, and
    /// every change would then be notified (and processed) twice. Recording an intent before
    /// creating cannot help, because Graph picks the id and a subscription cannot be named in
    /// advance; listing what Graph holds and deleting what nobody saved can, and it also
    /// clears what older versions or a rebuilt store left. It runs once, at the first `watch`
    /// of a start: the engine creates no subscription before that (work waits for the first
    /// sync), so every subscription this process made is already known. Subscriptions of
    /// other notification URLs (another source, another deployment with the same app) are
    /// never touched.
    async fn sweep_orphans(&self, engine: &GraphSync) {
        let Some((notification_url, _)) = &self.notification_urls else {
            return;
        };
        let listed = match self.graph.list_subscriptions().await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(
                    source = %engine.source_id,
                    "cannot list the app's subscriptions to delete those an earlier run left \
                     behind (they expire by themselves): {error}"
                );
                return;
            }
        };
        let peers = *self
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let known: HashSet<String> = self.subscriptions().keys().cloned().collect();
        let young_after = engine
            .now()
            .checked_add(SignedDuration::from_mins(
                i64::try_from(self.subscription_lifetime_minutes).unwrap_or(4230),
            ))
            .and_then(|expiry| expiry.checked_sub(PEER_SUBSCRIPTION_MARGIN))
            .unwrap_or(Timestamp::MAX);
        let mut orphans = Vec::new();
        for subscription in listed {
            if subscription.notification_url != *notification_url
                || known.contains(&subscription.id)
            {
                continue;
            }
            if peers == SubscribingPeers::OtherInstances {
                if subscription
                    .expires_at
                    .is_none_or(|expires| expires > young_after)
                {
                    continue;
                }
                match self
                    .store
                    .person_with_subscription(&engine.source_id, &subscription.id)
                    .await
                {
                    Ok(None) => {}
                    // Another instance's person, or a store that cannot say: keep it.
                    Ok(Some(_)) | Err(_) => continue,
                }
            }
            orphans.push(subscription);
        }
        if orphans.is_empty() {
            return;
        }
        let n_orphans = orphans.len();
        let results = fan_out(PARALLEL_PEOPLE, orphans, |subscription| {
            let graph = self.graph.clone();
            async move { graph.delete_subscription(&subscription.id).await }
        })
        .await;
        let failed: Vec<String> = results
            .into_iter()
            .filter_map(|result| result.err().map(|error| error.to_string()))
            .collect();
        tracing::info!(
            source = %engine.source_id,
            deleted = n_orphans - failed.len(),
            failed = failed.len(),
            "deleted the subscriptions an earlier run left at Graph without saving them"
        );
        if let Some(first) = failed.first() {
            tracing::warn!(source = %engine.source_id, "some subscriptions left by an earlier run could not be deleted (they expire by themselves): {first}");
        }
    }

    /// Creates subscriptions for the given people (those Graph knows).
    async fn subscribe(&self, engine: &GraphSync, people: &[PersonKey]) {
        let Some((notification_url, lifecycle_url)) = &self.notification_urls else {
            return;
        };
        let expires_at = self.subscription_expiry(engine.now());
        let targets: Vec<(PersonKey, String)> = people
            .iter()
            .filter_map(|person| engine.user_of(person).map(|user| (person.clone(), user)))
            .collect();
        if targets.is_empty() {
            return;
        }
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
                    let id = subscription.id.clone();
                    self.subscriptions()
                        .insert(subscription.id.clone(), person.clone());
                    let update = engine.update_health(&person, |health| {
                        health.subscription_id = Some(subscription.id);
                        health.subscription_expires_at = Some(subscription.expires_at);
                    });
                    match update {
                        Some(update) => updates.push((person, update)),
                        // Let go to another instance meanwhile: its notifications are handed
                        // to the owner, not kept here for someone nobody here follows.
                        None => {
                            self.subscriptions().remove(&id);
                        }
                    }
                }
                Err(error) => engine.record_failure(&person, &trouble(&error), None).await,
            }
        }
        engine.persist_healths(&updates).await;
    }
}

#[async_trait::async_trait]
impl CalendarSource for GraphCalendars {
    fn parallel_people(&self) -> usize {
        PARALLEL_PEOPLE
    }

    fn read_chunk(&self) -> usize {
        READ_CHUNK
    }

    fn resumes_after_restart(&self) -> bool {
        true
    }

    fn polls_for_changes(&self) -> bool {
        self.notification_urls.is_none()
    }

    fn restored(&self, person: &PersonKey, health: &PersonHealth) {
        if let Some(id) = &health.subscription_id {
            self.subscriptions().insert(id.clone(), person.clone());
        }
    }

    async fn group_members(&self, group: &str) -> Result<Vec<super::GroupMember>, String> {
        self.graph
            .group_members(group)
            .await
            .map(|members| {
                members
                    .into_iter()
                    .map(|member| super::GroupMember {
                        primary_smtp: member.primary_smtp,
                        id: member.id,
                        display_name: member.display_name,
                    })
                    .collect()
            })
            .map_err(|error| error.to_string())
    }

    async fn rooms(
        &self,
        list: Option<&calbridge_domain::MailboxAddress>,
    ) -> Result<Vec<calbridge_domain::RoomInfo>, String> {
        self.graph
            .rooms(list)
            .await
            .map_err(|error| error.to_string())
    }

    /// Graph's `event: decline`, sending the answer to the organizer.
    async fn decline(&self, user: &str, appointment_id: &str, comment: &str) -> Result<(), String> {
        self.graph
            .decline(user, appointment_id, comment)
            .await
            .map_err(|error| error.to_string())
    }

    async fn resolve(&self, people: Vec<PersonKey>) -> Vec<(PersonKey, Result<Resolved, Trouble>)> {
        fan_out(PARALLEL_PEOPLE, people, |person| {
            let graph = self.graph.clone();
            async move {
                let result = graph
                    .resolve_user(&person.address)
                    .await
                    .map(|user| Resolved {
                        primary_smtp: user.primary_smtp,
                        source_user_id: Some(user.id),
                    })
                    .map_err(|error| trouble(&error));
                (person, result)
            }
        })
        .await
    }

    async fn read_windows(
        &self,
        people: Vec<(PersonKey, String)>,
        start: Timestamp,
        end: Timestamp,
    ) -> Vec<(PersonKey, Result<Vec<Appointment>, Trouble>)> {
        self.graph
            .read_windows(&people, start, end, self.subjects)
            .await
            .into_iter()
            .map(|(person, result)| (person, result.map_err(|error| trouble(&error))))
            .collect()
    }

    async fn read_changes(
        &self,
        _person: &PersonKey,
        user: &str,
        window: (Timestamp, Timestamp),
        cursor: Option<&str>,
    ) -> Result<ChangeRead, Trouble> {
        let cursor = match cursor {
            Some(link) => DeltaCursor::Link(DeltaLink::from_stored(link.to_string())),
            None => DeltaCursor::Start,
        };
        change_read(
            self.graph
                .delta(user, window.0, window.1, &cursor, self.subjects)
                .await,
        )
    }

    /// Many people's changes in `$batch` requests of 20 delta reads. The reads share one
    /// window, so people whose window differs (read on another day) are grouped by it.
    async fn read_changes_many(
        &self,
        reads: Vec<ChangeReadJob>,
    ) -> Vec<(PersonKey, Result<ChangeRead, Trouble>)> {
        let mut by_window: Vec<(
            (Timestamp, Timestamp),
            Vec<(PersonKey, String, DeltaCursor)>,
        )> = Vec::new();
        for read in reads {
            let cursor = match read.cursor {
                Some(link) => DeltaCursor::Link(DeltaLink::from_stored(link)),
                None => DeltaCursor::Start,
            };
            let entry = (read.person, read.user, cursor);
            match by_window
                .iter_mut()
                .find(|(window, _)| *window == read.window)
            {
                Some((_, group)) => group.push(entry),
                None => by_window.push((read.window, vec![entry])),
            }
        }
        let mut results = Vec::new();
        for ((start, end), group) in by_window {
            for (person, outcome) in self
                .graph
                .delta_many(&group, start, end, self.subjects)
                .await
            {
                results.push((person, change_read(outcome)));
            }
        }
        results
    }

    /// Subscribes whoever Graph knows and has no live subscription.
    async fn watch(self: Arc<Self>, engine: &Arc<GraphSync>, people: Vec<PersonKey>) {
        if self.notification_urls.is_none() {
            return;
        }
        if !self.orphans_swept.swap(true, Ordering::AcqRel) {
            self.sweep_orphans(engine).await;
        }
        let now = engine.now();
        let missing: Vec<PersonKey> = people
            .into_iter()
            .filter(|person| {
                engine.health(person).is_some_and(|health| {
                    health.user.is_some()
                        && health
                            .subscription_expires_at
                            .is_none_or(|expires| expires <= now)
                })
            })
            .collect();
        self.subscribe(engine, &missing).await;
    }

    /// A subscription Graph removed: forget it and create a new one.
    async fn rewatch(self: Arc<Self>, engine: &Arc<GraphSync>, person: PersonKey) {
        let old = engine.update_health(&person, |health| {
            health.subscription_expires_at = None;
        });
        if let Some(id) = old.and_then(|health| health.subscription_id) {
            self.subscriptions().remove(&id);
            engine.update_health(&person, |health| health.subscription_id = None);
        }
        self.subscribe(engine, std::slice::from_ref(&person)).await;
    }

    async fn forget(&self, person: &PersonKey, health: &PersonHealth) {
        if let Some(id) = &health.subscription_id {
            self.subscriptions().remove(id);
            if let Err(error) = self.graph.delete_subscription(id).await {
                tracing::info!(person = %person, "could not delete the subscription: {error}");
            }
        }
    }

    fn let_go(&self, _person: &PersonKey, health: &PersonHealth) {
        // The subscription stays: the new owner resumes it and receives its notifications.
        if let Some(id) = &health.subscription_id {
            self.subscriptions().remove(id);
        }
    }

    async fn renew(self: Arc<Self>, engine: &Arc<GraphSync>, person: PersonKey) {
        let Some(id) = engine
            .health(&person)
            .and_then(|health| health.subscription_id)
        else {
            self.subscribe(engine, std::slice::from_ref(&person)).await;
            return;
        };
        match self
            .graph
            .renew_subscription(&id, self.subscription_expiry(engine.now()))
            .await
        {
            Ok(RenewOutcome::Renewed { expires_at }) => {
                let update = engine.update_health(&person, |health| {
                    health.subscription_expires_at = Some(expires_at);
                });
                if let Some(update) = update {
                    engine.persist_health(&person, &update).await;
                }
            }
            Ok(RenewOutcome::Gone) => {
                // Renewing a subscription Graph dropped fails for ever: create a new one, and
                // read what happened while there was none.
                self.subscriptions().remove(&id);
                self.subscribe(engine, std::slice::from_ref(&person)).await;
                engine.enqueue(Work::Changed(person));
            }
            Err(error) => engine.record_failure(&person, &trouble(&error), None).await,
        }
    }

    /// Queues renewals for subscriptions that expire within `renew_before_minutes`.
    fn housekeeping(&self, engine: &GraphSync) {
        if self.notification_urls.is_none() {
            return;
        }
        let minutes = i64::try_from(self.renew_before_minutes).unwrap_or(60);
        let horizon = engine
            .now()
            .checked_add(SignedDuration::from_mins(minutes))
            .unwrap_or(Timestamp::MAX);
        let due: Vec<(PersonKey, bool)> = engine
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
            engine.enqueue(if has_subscription {
                Work::Renew(person)
            } else {
                Work::Rewatch(person)
            });
        }
    }
}
