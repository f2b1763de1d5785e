//! Several instances on one PostgreSQL: who follows whom.
//!
//! The store's shard leases (`calbridge_store::cluster`) say which shards this instance holds;
//! [`Ownership`] turns that into "does this instance follow this person", which every sync
//! engine asks before it reads, watches or renews anyone. [`keep_leases`] renews the leases a
//! few times per lease, and when shards change hands it first lets the lost shards' people go
//! (so that nothing more is done for them here) and then takes the gained shards' people over
//! from the store.
//!
//! **Invariants:**
//! - An engine follows a person only while its instance holds the person's shard.
//! - An instance that could not renew its leases for a whole lease stops following everyone:
//!   by then another instance may hold them.
//! - With one instance (SQLite) the ownership is everyone and there are no leases.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calbridge_store::cluster::{shard_of, Fence, InstanceInfo, Leases, Wanted, WorkQueue};
use calbridge_store::PersonKey;
use jiff::{SignedDuration, Timestamp};

use crate::clock::Clock;
use crate::shutdown::Shutdown;
use crate::sync::{DirectoryTarget, Work};

/// Whom this instance follows.
#[derive(Debug)]
pub struct Ownership {
    /// `None`: everyone (one instance). Otherwise the held shards and their epochs, shared
    /// with the store's fenced writes.
    shards: Option<Fence>,
}

impl Ownership {
    /// Everyone: a single instance.
    pub fn everyone() -> Arc<Ownership> {
        Arc::new(Ownership { shards: None })
    }

    /// The people of the shards this instance leases, as `fence` holds them; nobody until the
    /// first lease round.
    pub fn by_leases(fence: Fence) -> Arc<Ownership> {
        Arc::new(Ownership {
            shards: Some(fence),
        })
    }

    pub fn owns(&self, person: &PersonKey) -> bool {
        match &self.shards {
            None => true,
            Some(fence) => fence.holds(person),
        }
    }

    /// The epoch under which this instance holds the person's shard (`None` for a single
    /// instance, or when it does not hold it).
    pub fn epoch_of(&self, person: &PersonKey) -> Option<i64> {
        self.shards.as_ref()?.epoch_of_shard(shard_of(person))
    }

    /// The shards held now (none for "everyone", which has no leases).
    pub fn held_shards(&self) -> Vec<u32> {
        match &self.shards {
            None => Vec::new(),
            Some(fence) => fence.held_shards(),
        }
    }
}

/// What a sync engine does when shards change hands.
#[async_trait::async_trait]
pub trait ShardFollower: Send + Sync {
    /// Starts following the people of `shards`, from the store.
    async fn take_over(self: Arc<Self>, shards: HashSet<u32>);
    /// Stops following the people of `shards`.
    async fn let_go(&self, shards: &HashSet<u32>);
}

/// The cluster as the status page and metrics show it.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub instance_id: String,
    /// Shards this instance holds.
    pub shards_held: usize,
    /// Every instance with a heartbeat, as of the last lease round.
    pub instances: Vec<InstanceInfo>,
    /// When the leases were last renewed.
    pub renewed_at: Option<Timestamp>,
    /// The last failure to renew, while it lasts.
    pub error: Option<String>,
    /// The name of the instance that holds each shard, as of the last round.
    pub shard_owners: HashMap<u32, String>,
}

impl ClusterView {
    /// The name of the instance that follows `person`, as of the last round.
    pub fn owner_of(&self, person: &PersonKey) -> Option<&str> {
        self.shard_owners.get(&shard_of(person)).map(String::as_str)
    }
}

pub type SharedClusterView = Arc<Mutex<ClusterView>>;

/// Renews the leases every third of `lease` until `shutdown`, then gives every shard back.
/// The leases keep their fence (which the engines' [`Ownership`] reads) up to date.
pub async fn keep_leases(
    mut leases: Leases,
    followers: Vec<Arc<dyn ShardFollower>>,
    clock: Arc<dyn Clock>,
    lease: Duration,
    view: SharedClusterView,
    shutdown: Shutdown,
) {
    let every = (lease / 3).max(Duration::from_millis(200));
    let lease = SignedDuration::try_from(lease).unwrap_or(SignedDuration::from_secs(30));
    let mut renewed_at: Option<Timestamp> = None;
    loop {
        let now = clock.now();
        // While PostgreSQL is gone the pool keeps retrying a refused connection until its own
        // timeout (30 s), far past the lease: a round may take only as long as the leases it
        // renews still hold, so that the check below lets everyone go in time.
        let patience = renewed_at
            .and_then(|at| at.checked_add(lease).ok())
            .and_then(|until| Duration::try_from(until.duration_since(now)).ok())
            .unwrap_or_default()
            .max(every);
        let round = match tokio::time::timeout(patience, leases.tick(now)).await {
            Ok(round) => round.map_err(|error| error.to_string()),
            Err(_) => Err(format!(
                "PostgreSQL did not answer within {:.1} s",
                patience.as_secs_f64()
            )),
        };
        match round {
            Ok(changes) => {
                renewed_at = Some(now);
                let lost: HashSet<u32> = changes.lost.iter().copied().collect();
                if !lost.is_empty() {
                    for follower in &followers {
                        follower.let_go(&lost).await;
                    }
                }
                let gained: HashSet<u32> = changes.gained.iter().map(|held| held.shard).collect();
                if !gained.is_empty() {
                    tracing::info!(
                        shards = gained.len(),
                        held = leases.held().len(),
                        "claimed shards"
                    );
                    for follower in &followers {
                        // Taking over reads calendars: the leases must not wait for it.
                        tokio::spawn(follower.clone().take_over(gained.clone()));
                    }
                }
                let instances = within(every, leases.instances(now)).await;
                let names: HashMap<&str, &str> = instances
                    .iter()
                    .map(|instance| (instance.instance_id.as_str(), instance.name.as_str()))
                    .collect();
                let shard_owners: HashMap<u32, String> = within(every, leases.shard_owners(now))
                    .await
                    .into_iter()
                    .map(|(shard, owner)| {
                        let name = names
                            .get(owner.as_str())
                            .map_or(owner.clone(), |name| (*name).to_string());
                        (shard, name)
                    })
                    .collect();
                {
                    let mut shown = view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    shown.instance_id = leases.instance_id().to_string();
                    shown.shards_held = leases.held().len();
                    shown.instances = instances;
                    shown.shard_owners = shard_owners;
                    shown.renewed_at = Some(now);
                    shown.error = None;
                }
            }
            Err(message) => {
                {
                    let mut shown = view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    if shown.error.as_deref() != Some(message.as_str()) {
                        tracing::warn!("cannot renew the shard leases: {message}");
                    }
                    shown.error = Some(message);
                }
                // After a whole lease without renewal another instance may hold every shard.
                let expired = renewed_at
                    .and_then(|at| at.checked_add(lease).ok())
                    .is_none_or(|until| until <= now);
                if expired && !leases.held().is_empty() {
                    tracing::warn!("the shard leases ran out while PostgreSQL did not answer: following nobody until they are claimed again");
                    let all: HashSet<u32> = leases.held().iter().map(|held| held.shard).collect();
                    leases.forget_held();
                    for follower in &followers {
                        follower.let_go(&all).await;
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    if let Err(error) = leases.release_all().await {
        tracing::warn!("cannot give the shards back on shutdown (the others take them over when the leases run out): {error}");
    }
}

/// What the status page shows of the cluster, read for at most `patience`: empty when
/// PostgreSQL does not answer (the next round shows it again).
async fn within<T: Default>(
    patience: Duration,
    read: impl std::future::Future<Output = Result<T, calbridge_store::StoreError>>,
) -> T {
    match tokio::time::timeout(patience, read).await {
        Ok(Ok(value)) => value,
        _ => T::default(),
    }
}

/// A new instance's id: random, so that a restarted process is a new instance and never
/// mistakes the leases of its previous life for its own.
pub fn new_instance_id() -> anyhow::Result<String> {
    Ok(crate::service::random_token()?.chars().take(16).collect())
}

/// `host:pid`, for the operator.
pub fn default_instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "calbridge".to_string());
    format!("{host}:{}", std::process::id())
}

/// How often the owner looks for handed work without a wake-up (a NOTIFY can be missed while
/// the listening connection reconnects).
const HANDED_WORK_POLL: Duration = Duration::from_secs(2);
/// Handed work taken in one statement; more is taken at once while a batch comes back full.
const HANDED_WORK_BATCH: u32 = 500;

/// Takes the work other instances handed to this one's shards and queues it on the engine of
/// its source, until `shutdown`.
pub async fn serve_handed_work(
    queue: WorkQueue,
    ownership: Arc<Ownership>,
    engines: Vec<Arc<dyn DirectoryTarget>>,
    shutdown: Shutdown,
) {
    let engines: HashMap<calbridge_domain::SourceId, Arc<dyn DirectoryTarget>> = engines
        .into_iter()
        .map(|engine| (engine.source_id().clone(), engine))
        .collect();
    let mut wake_ups = None;
    loop {
        if wake_ups.is_none() {
            match queue.wake_ups().await {
                Ok(listening) => wake_ups = Some(listening),
                Err(error) => tracing::warn!(
                    "cannot listen for handed work (looking every {} s instead): {error}",
                    HANDED_WORK_POLL.as_secs()
                ),
            }
        }
        loop {
            let taken = match queue
                .take(&ownership.held_shards(), HANDED_WORK_BATCH)
                .await
            {
                Ok(taken) => taken,
                Err(error) => {
                    tracing::warn!("cannot take handed work: {error}");
                    break;
                }
            };
            if taken.unreadable > 0 {
                tracing::warn!(
                    rows = taken.unreadable,
                    "dropped handed work that cannot be read"
                );
            }
            let n_taken = taken.work.len();
            for (person, wanted) in taken.work {
                let Some(engine) = engines.get(&person.source) else {
                    continue;
                };
                match wanted {
                    Wanted::Changed => engine.enqueue(Work::Changed(person)),
                    Wanted::Renew => engine.enqueue(Work::Renew(person)),
                    Wanted::Resubscribe => {
                        engine.enqueue(Work::Rewatch(person.clone()));
                        engine.enqueue(Work::Changed(person));
                    }
                }
            }
            if n_taken < HANDED_WORK_BATCH as usize {
                break;
            }
        }
        let woken = async {
            match wake_ups.as_mut() {
                Some(listening) => listening.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            result = woken => {
                if let Err(error) = result {
                    tracing::warn!("lost the wake-ups for handed work: {error}");
                    wake_ups = None;
                }
            }
            _ = tokio::time::sleep(HANDED_WORK_POLL) => {}
        }
    }
}
