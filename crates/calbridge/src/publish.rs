//! Publishers: the presence hub's changes going out to the phone system.
//!
//! Each publisher follows the hub's broadcast of changes and keeps its own delivery state
//! (the SIP publisher its entity tags and desired state per URI, the webhook publisher its
//! outbox cursor in the store). When a publisher falls behind the broadcast it re-reads every
//! current decision from the hub, so the last state is never lost.

use std::collections::HashMap;
use std::sync::Arc;

use calbridge_presence::{Activity, Category, Decision};
use calbridge_publish_sip::{PresenceState, ShowAsCategory, SipPublisher};
use calbridge_store::{PersonKey, Store};
use tokio::sync::broadcast::error::RecvError;

use crate::hub::{HubEvent, PresenceHub};
use crate::shutdown::Shutdown;

fn sip_activity(activity: Activity) -> calbridge_publish_sip::Activity {
    match activity {
        Activity::Available => calbridge_publish_sip::Activity::Available,
        Activity::Busy => calbridge_publish_sip::Activity::Busy,
        Activity::Away => calbridge_publish_sip::Activity::Away,
        Activity::Dnd => calbridge_publish_sip::Activity::Dnd,
    }
}

fn sip_category(category: Category) -> ShowAsCategory {
    match category {
        Category::Busy => ShowAsCategory::Busy,
        Category::Tentative => ShowAsCategory::Tentative,
        Category::TentativeException => ShowAsCategory::TentativeException,
        Category::Oof => ShowAsCategory::Oof,
        Category::WorkingElsewhere => ShowAsCategory::WorkingElsewhere,
        Category::NoData => ShowAsCategory::NoData,
    }
}

pub fn sip_state(decision: &Decision) -> PresenceState {
    PresenceState {
        activity: sip_activity(decision.activity),
        category: decision
            .current
            .as_ref()
            .map(|current| sip_category(current.category)),
        note: decision.note.clone(),
        until: decision.until,
    }
}

/// Maps people to SIP URIs: the directory's `sip_uri` column when given, else the template.
pub struct SipAddressBook {
    template: String,
    known: std::sync::Mutex<HashMap<PersonKey, String>>,
}

impl SipAddressBook {
    pub fn new(template: String) -> Self {
        SipAddressBook {
            template,
            known: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub async fn uri(&self, store: &dyn Store, person: &PersonKey) -> String {
        if let Some(uri) = self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(person)
        {
            return uri.clone();
        }
        let from_directory = match store.get_person(person).await {
            Ok(Some(stored)) => stored.sip_uri,
            _ => None,
        };
        let uri = from_directory
            .unwrap_or_else(|| calbridge_publish_sip::uri_for(&self.template, &person.address));
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(person.clone(), uri.clone());
        uri
    }

    pub fn cached(&self, person: &PersonKey) -> Option<String> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(person)
            .cloned()
    }

    fn forget(&self, person: &PersonKey) -> Option<String> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(person)
    }
}

/// The SIP publishing task: every current decision at start, then every change; removed people
/// are unpublished with `Expires: 0`, people handed over to another instance are left to it.
/// A URI this process has not published yet continues the publication saved in the store (by
/// an earlier run, or by the instance that followed the person before), so that the presence
/// server never holds two publications of calbridge for one person.
pub async fn run_sip(
    publisher: Arc<SipPublisher>,
    addresses: Arc<SipAddressBook>,
    hub: Arc<PresenceHub>,
    store: Arc<dyn Store>,
    shutdown: Shutdown,
) {
    let mut events = hub.subscribe_events();
    publish_everyone(&publisher, &addresses, &hub, store.as_ref()).await;
    loop {
        let event = tokio::select! {
            _ = shutdown.wait() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(HubEvent::Changed(change)) => {
                publish(
                    &publisher,
                    &addresses,
                    store.as_ref(),
                    &mut SavedPublications::OneByOne,
                    &change.person,
                    &change.decision,
                )
                .await;
            }
            Ok(HubEvent::Removed(person)) => {
                if let Some(uri) = addresses.forget(&person) {
                    publisher.remove(&uri);
                }
            }
            Ok(HubEvent::HandedOver(person)) => {
                if let Some(uri) = addresses.forget(&person) {
                    publisher.forget(&uri);
                }
            }
            Err(RecvError::Lagged(_)) => {
                publish_everyone(&publisher, &addresses, &hub, store.as_ref()).await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn publish_everyone(
    publisher: &SipPublisher,
    addresses: &SipAddressBook,
    hub: &PresenceHub,
    store: &dyn Store,
) {
    let mut saved = SavedPublications::all(store).await;
    for person in hub.people() {
        if let Some((decision, _)) = hub.decision(&person) {
            // Setting the same state again is free: the publisher only sends changes.
            publish(publisher, addresses, store, &mut saved, &person, &decision).await;
        }
    }
}

async fn publish(
    publisher: &SipPublisher,
    addresses: &SipAddressBook,
    store: &dyn Store,
    saved: &mut SavedPublications,
    person: &PersonKey,
    decision: &Decision,
) {
    let uri = addresses.uri(store, person).await;
    let state = sip_state(decision);
    if publisher.status(&uri).is_none() {
        if let Some((etag, expires_at)) = saved.take(store, &uri).await {
            publisher.adopt(uri, state, etag, expires_at);
            return;
        }
    }
    publisher.set(uri, state);
}

/// A publication this close to its expiry is not worth continuing: a new one is made.
const ADOPTION_MARGIN: jiff::SignedDuration = jiff::SignedDuration::from_secs(5);

/// The publications saved in the store: for a pass over everyone, all of them read at once;
/// otherwise (people taken over from another instance, who arrive while that instance's last
/// tags are being saved) each read when it is needed, so that none is stale.
enum SavedPublications {
    All(HashMap<String, (String, jiff::Timestamp)>),
    OneByOne,
}

impl SavedPublications {
    async fn all(store: &dyn Store) -> SavedPublications {
        match store.list_sip_publications(jiff::Timestamp::now()).await {
            Ok(publications) => SavedPublications::All(
                publications
                    .into_iter()
                    .filter_map(|saved| Some((saved.uri, (saved.etag?, saved.expires_at))))
                    .collect(),
            ),
            Err(error) => {
                tracing::warn!(
                    "cannot read the saved SIP publications (new ones are made): {error}"
                );
                SavedPublications::All(HashMap::new())
            }
        }
    }

    /// The saved publication of `uri`, if it lives long enough to be continued.
    async fn take(&mut self, store: &dyn Store, uri: &str) -> Option<(String, jiff::Timestamp)> {
        let saved = match self {
            SavedPublications::All(by_uri) => by_uri.remove(uri),
            SavedPublications::OneByOne => match store.load_sip_publication(uri).await {
                Ok(saved) => saved.and_then(|saved| Some((saved.etag?, saved.expires_at))),
                Err(error) => {
                    tracing::warn!(
                        uri,
                        "cannot read the saved SIP publication (a new one is made): {error}"
                    );
                    None
                }
            },
        };
        let (etag, expires_at) = saved?;
        // SIP expiry is the presence server's real time, not the service's clock.
        let worth = jiff::Timestamp::now()
            .checked_add(ADOPTION_MARGIN)
            .is_ok_and(|soon| expires_at > soon);
        worth.then_some((etag, expires_at))
    }
}

/// Saves every change of the presence server's entity-tags (see
/// [`calbridge_publish_sip::Publication`]), batching what queues up.
pub async fn save_publications(
    mut changes: tokio::sync::mpsc::UnboundedReceiver<calbridge_publish_sip::Publication>,
    store: Arc<dyn Store>,
    shutdown: Shutdown,
) {
    loop {
        let first = tokio::select! {
            change = changes.recv() => change,
            _ = shutdown.wait() => None,
        };
        let mut batch: HashMap<String, calbridge_store::SipPublication> = HashMap::new();
        let mut keep = |change: calbridge_publish_sip::Publication| {
            let saved = calbridge_store::SipPublication {
                expires_at: change.expires_at.unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                etag: change.etag,
                uri: change.uri,
            };
            batch.insert(saved.uri.clone(), saved);
        };
        let last = first.is_none();
        if let Some(first) = first {
            keep(first);
        }
        while let Ok(change) = changes.try_recv() {
            keep(change);
        }
        let batch: Vec<_> = batch.into_values().collect();
        if let Err(error) = store.save_sip_publications(&batch).await {
            tracing::warn!("cannot save {} SIP publications (after a restart or takeover they are made anew): {error}", batch.len());
        }
        if last {
            return;
        }
    }
}

/// The webhook task: every change goes into the store's outbox, from which the publisher's
/// delivery tasks POST it to each endpoint in order, surviving restarts and outages.
pub async fn run_webhooks(
    publisher: Arc<calbridge_publish_webhook::WebhookPublisher>,
    hub: Arc<PresenceHub>,
    shutdown: Shutdown,
) {
    let mut events = hub.subscribe_events();
    loop {
        let event = tokio::select! {
            _ = shutdown.wait() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(HubEvent::Changed(change)) => {
                let event = calbridge_publish_webhook::PresenceEvent {
                    person: change.person.clone(),
                    activity: change.decision.activity.as_str().to_string(),
                    note: change.decision.note.clone(),
                    until: change.decision.until,
                    decided_at: change.decided_at,
                };
                if let Err(error) = publisher.record(&event).await {
                    tracing::warn!(person = %change.person, "presence change not queued for webhooks: {error}");
                }
            }
            Ok(HubEvent::Removed(_) | HubEvent::HandedOver(_)) => {}
            Err(RecvError::Lagged(missed)) => {
                // The outbox missed some changes: queue everyone's current state so that the
                // receivers end with the right presence for all.
                tracing::warn!("{missed} changes passed the webhook queue by; queuing everyone's current presence");
                for person in hub.people() {
                    if let Some((decision, decided_at)) = hub.decision(&person) {
                        let event = calbridge_publish_webhook::PresenceEvent {
                            person: person.clone(),
                            activity: decision.activity.as_str().to_string(),
                            note: decision.note.clone(),
                            until: decision.until,
                            decided_at,
                        };
                        if let Err(error) = publisher.record(&event).await {
                            tracing::warn!(person = %person, "presence not queued for webhooks: {error}");
                        }
                    }
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
