//! The presence feed across instances: every instance's live stream carries every change,
//! whoever follows the person.
//!
//! The instance that follows a person decides their presence and saves it; the store's feed
//! (`calbridge_store::feed`) tells every instance whose saved presence changed. [`relay_presence`]
//! reads the presence of the people this instance does not follow and puts it on the hub's live
//! stream ([`PresenceHub::relay`]), which SSE clients read; publishers never see it.
//!
//! **Invariants:**
//! - A change of a person this instance follows reaches the stream once, from the hub's own
//!   decision; the feed skips it.
//! - A person's saved presence is relayed only when it differs, in what people see, from what
//!   the stream last showed for them: however often it is heard or read again (after a
//!   reconnect, or two notifications before one read), and when a new owner saves it again.
//!
//! What the stream can miss: when several changes of one person are saved before the feed
//! reads them, only the newest is relayed (the stream shows presence, not history); a change
//! saved in the moment between the start-up read and the first `LISTEN` shows with the next
//! one. After the listening connection was lost, everything decided since shortly before the
//! last sign of life is read again, so nothing newer than that is lost.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use calbridge_store::feed::{Heard, PresenceFeed, PresenceListener};
use calbridge_store::{CurrentPresence, PersonKey};
use jiff::{SignedDuration, Timestamp};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::cluster::Ownership;
use crate::hub::PresenceHub;
use crate::shutdown::Shutdown;

/// How long to wait before listening again after PostgreSQL did not answer.
const LISTEN_RETRY: Duration = Duration::from_secs(2);

/// After a lost connection, what was decided this long before the last sign of life is read
/// again too: the owner saves a decision a moment after it made it (off the hot path), and
/// the instances' clocks differ a little.
const CATCH_UP_MARGIN: SignedDuration = SignedDuration::from_secs(60);

/// A digest of what people see of a saved presence (what the engine's `same_presence`
/// compares, and what the store's trigger NOTIFYs for): the same presence saved again by a
/// new owner is not news.
fn digest(presence: &CurrentPresence) -> u64 {
    let mut hasher = DefaultHasher::new();
    presence.activity.hash(&mut hasher);
    presence.note.hash(&mut hasher);
    presence.until.hash(&mut hasher);
    hasher.finish()
}

struct Relay {
    feed: PresenceFeed,
    ownership: Arc<Ownership>,
    hub: Arc<PresenceHub>,
    relayed: HashMap<PersonKey, u64>,
}

impl Relay {
    /// Relays what other instances saved for `people`, read from the store now.
    async fn relay_people(&mut self, people: Vec<PersonKey>) {
        if people.is_empty() {
            return;
        }
        let mut others = Vec::with_capacity(people.len());
        for person in people {
            if self.ownership.owns(&person) {
                // Its change went on the stream from the hub: what was relayed before is no
                // longer what the stream last showed.
                self.relayed.remove(&person);
            } else {
                others.push(person);
            }
        }
        match self.feed.load(&others).await {
            Ok(presences) => self.relay_presences(presences),
            Err(error) => tracing::warn!(
                people = others.len(),
                "cannot read the presence other instances saved; their SSE changes are skipped: {error}"
            ),
        }
    }

    fn relay_presences(&mut self, presences: Vec<(PersonKey, CurrentPresence)>) {
        for (person, presence) in presences {
            // Followed here: the hub's own decision is on the stream already.
            if self.ownership.owns(&person) {
                self.relayed.remove(&person);
                continue;
            }
            let digest = digest(&presence);
            if self.relayed.insert(person.clone(), digest) == Some(digest) {
                continue;
            }
            self.hub.relay(person, presence);
        }
    }

    /// Remembers, without relaying, the presence decided since `since`: what a catch-up after
    /// a lost connection reads again from before this instance listened is not news.
    async fn remember(&mut self, since: Timestamp) {
        match self.feed.decided_since(since).await {
            Ok(presences) => {
                for (person, presence) in presences {
                    if !self.ownership.owns(&person) {
                        self.relayed.insert(person, digest(&presence));
                    }
                }
            }
            Err(error) => tracing::debug!(
                "cannot read the recent presence (a reconnect may show some unchanged presences again): {error}"
            ),
        }
    }

    /// Reads again what was decided since `since`, after the connection was lost.
    async fn catch_up(&mut self, since: Timestamp) {
        match self.feed.decided_since(since).await {
            Ok(presences) => {
                tracing::info!(
                    read = presences.len(),
                    "the presence feed listens again; read what was decided meanwhile"
                );
                self.relay_presences(presences);
            }
            Err(error) => tracing::warn!(
                "cannot read the presence decided while the feed was not listening; SSE clients may miss those changes (they can read /api/v1/users): {error}"
            ),
        }
    }
}

/// What the listening task hands to the relay.
enum Pumped {
    /// People whose saved presence changed.
    Changed(Vec<PersonKey>),
    /// The feed was not heard for a while: what was decided since this instant may be missed.
    Missed { since: Timestamp },
}

/// The most people read in one statement; more wait for the next.
const MAX_BATCH: usize = 500;

/// Relays the presence changes other instances decide onto this instance's live stream, until
/// `shutdown`. Listening (and listening again when the connection is lost) runs beside the
/// relay, so that while the relay reads one change from the store the next ones queue up and
/// are read together.
pub async fn relay_presence(
    feed: PresenceFeed,
    ownership: Arc<Ownership>,
    hub: Arc<PresenceHub>,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
) {
    let mut relay = Relay {
        feed: feed.clone(),
        ownership,
        hub,
        relayed: HashMap::new(),
    };
    // Before listening: a change saved after this read is heard, and is news even when it
    // lands in the window of this read.
    let since = clock
        .now()
        .checked_sub(CATCH_UP_MARGIN)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    relay.remember(since).await;
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    // Both halves run in this one task, so that they end together, also when the task is
    // aborted; each ends on `shutdown`, the relay also when the listener has ended.
    let listening = listen(feed, clock, heard_tx, shutdown.clone());
    let relaying = async move {
        loop {
            let first = tokio::select! {
                _ = shutdown.wait() => return,
                first = heard.recv() => first,
            };
            let Some(first) = first else {
                return;
            };
            let mut people = Vec::new();
            let mut seen = HashSet::new();
            let mut missed_since: Option<Timestamp> = None;
            let mut next = Some(first);
            while let Some(pumped) = next.take() {
                match pumped {
                    Pumped::Changed(changed) => {
                        for person in changed {
                            if seen.insert(person.clone()) {
                                people.push(person);
                            }
                        }
                    }
                    Pumped::Missed { since } => {
                        missed_since =
                            Some(missed_since.map_or(since, |earlier| earlier.min(since)));
                    }
                }
                if people.len() < MAX_BATCH {
                    next = heard.try_recv().ok();
                }
            }
            if let Some(since) = missed_since {
                relay.catch_up(since).await;
            }
            relay.relay_people(people).await;
        }
    };
    tokio::join!(listening, relaying);
}

/// Listens to the feed until `shutdown`, handing what it hears to the relay; listens again
/// after a lost connection and then says since when changes may have been missed.
async fn listen(
    feed: PresenceFeed,
    clock: Arc<dyn Clock>,
    heard: mpsc::UnboundedSender<Pumped>,
    shutdown: Shutdown,
) {
    let mut listener: Option<PresenceListener> = None;
    // When the feed was last known to be heard.
    let mut alive_at = clock.now();
    let mut missed_since: Option<Timestamp> = None;
    let mut reported_failure = false;
    loop {
        let Some(listening) = listener.as_mut() else {
            match feed.listen().await {
                Ok(listening) => {
                    listener = Some(listening);
                    reported_failure = false;
                    if let Some(since) = missed_since.take() {
                        tracing::info!("listening again for other instances' presence changes");
                        let _ = heard.send(Pumped::Missed { since });
                    }
                    alive_at = clock.now();
                }
                Err(error) => {
                    if !reported_failure {
                        tracing::warn!(
                            "cannot listen for the presence changes of other instances (trying again every {} s; SSE shows only this instance's people meanwhile): {error}",
                            LISTEN_RETRY.as_secs()
                        );
                        reported_failure = true;
                    }
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(LISTEN_RETRY) => {}
                    }
                }
            }
            continue;
        };
        let next = tokio::select! {
            _ = shutdown.wait() => return,
            next = listening.next() => next,
        };
        let since = alive_at
            .checked_sub(CATCH_UP_MARGIN)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let pumped = match next {
            Ok(Heard::Changed(people)) => {
                alive_at = clock.now();
                Pumped::Changed(people)
            }
            Ok(Heard::Lost) => {
                // sqlx has listened again already.
                tracing::warn!(
                    "lost the connection that hears other instances' presence changes; listening again"
                );
                alive_at = clock.now();
                Pumped::Missed { since }
            }
            Err(error) => {
                tracing::warn!("lost the presence changes of other instances: {error}");
                listener = None;
                missed_since = Some(since);
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(LISTEN_RETRY) => {}
                }
                continue;
            }
        };
        if heard.send(pumped).is_err() {
            return;
        }
    }
}
