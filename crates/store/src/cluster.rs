//! Sharing the people among several instances on one PostgreSQL database: shard leases.
//!
//! Every person belongs to one of [`SHARDS`] virtual shards, by a hash of their source and
//! address that every instance and every version computes alike. Each shard has a lease row
//! (owner, epoch, expiry). An instance proves it is alive with a heartbeat, renews the leases it
//! holds, claims expired or free shards up to its fair share (`FOR UPDATE SKIP LOCKED`, so two
//! instances claiming at once never take the same shard), gives back what it holds beyond its
//! share when instances join, and releases everything on a graceful shutdown.
//!
//! **Invariants:**
//! - A shard has at most one owner whose lease has not expired.
//! - Each claim raises the shard's epoch, so an instance that lost a shard (it stalled past its
//!   lease, and another claimed it) holds an older epoch than the owner: its writes for that
//!   shard's people are refused by [`Leases::holds`] and by fenced writes, never silently mixed.
//! - Time is the caller's injected clock, compared only with values the same kind of clock
//!   wrote. Instances' clocks must agree to well within a lease (NTP does).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use jiff::{SignedDuration, Timestamp};
use sqlx::PgPool;

use crate::{PersonKey, StoreError};

/// The number of virtual shards. Fixed: it is part of the database's meaning (which lease
/// covers which person). 256 spreads 100,000 people about 400 to a shard and lets up to a few
/// dozen instances share them evenly.
pub const SHARDS: u32 = 256;

/// The shard of a person: FNV-1a (32-bit) of `source`, a NUL, and the address, modulo
/// [`SHARDS`]. Written out rather than taken from `std::hash`, whose hashers are seeded per
/// process, or from a crate, because the value must never change between versions: it is
/// stored implicitly in every lease.
pub fn shard_of(person: &PersonKey) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let mut hash = OFFSET;
    let bytes = person
        .source
        .0
        .as_bytes()
        .iter()
        .chain(std::iter::once(&0u8))
        .chain(person.address.as_str().as_bytes());
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash % SHARDS
}

/// A shard this instance holds, with the epoch of its claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldShard {
    pub shard: u32,
    pub epoch: i64,
}

/// The shards (and their epochs) an instance believes it holds, shared between its lease
/// upkeep, which replaces them after every round, its engines, which ask whom they follow, and
/// its store, which writes a person's calendar, sync state and presence only while the
/// database agrees (see [`crate::PostgresStore::fenced`]).
#[derive(Debug, Clone)]
pub struct Fence {
    instance_id: Arc<str>,
    held: Arc<RwLock<HashMap<u32, i64>>>,
}

impl Fence {
    /// Holding nothing until the first [`Fence::set_held`].
    pub fn new(instance_id: &str) -> Fence {
        Fence {
            instance_id: Arc::from(instance_id),
            held: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<u32, i64>> {
        // A poisoned lock only means a panic while the map was replaced; it is still a map.
        self.held
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the held shards (after each lease round).
    pub fn set_held(&self, held: &[HeldShard]) {
        let mut shards = self
            .held
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *shards = held.iter().map(|held| (held.shard, held.epoch)).collect();
    }

    pub fn epoch_of_shard(&self, shard: u32) -> Option<i64> {
        self.read().get(&shard).copied()
    }

    pub fn holds(&self, person: &PersonKey) -> bool {
        self.read().contains_key(&shard_of(person))
    }

    pub fn held_shards(&self) -> Vec<u32> {
        self.read().keys().copied().collect()
    }

    /// In one transaction, before writing `people`'s rows: locks the lease rows of their shards
    /// (`FOR SHARE`, so that no other instance can claim them until the write commits) and
    /// checks that this instance still holds each under the epoch it believes. Those it does
    /// not are returned in a [`StoreError::Fenced`], and the caller writes nothing.
    pub(crate) async fn check<'k>(
        &self,
        tx: &mut sqlx::PgConnection,
        people: impl IntoIterator<Item = &'k PersonKey>,
    ) -> Result<(), StoreError> {
        let mut wanted: BTreeMap<u32, i64> = BTreeMap::new();
        let mut not_held: Vec<PersonKey> = Vec::new();
        let people: Vec<&PersonKey> = people.into_iter().collect();
        {
            let held = self.read();
            for person in &people {
                let shard = shard_of(person);
                match held.get(&shard) {
                    Some(epoch) => {
                        wanted.insert(shard, *epoch);
                    }
                    None => not_held.push((*person).clone()),
                }
            }
        }
        if !wanted.is_empty() {
            let shards: Vec<i32> = wanted
                .keys()
                .map(|shard| i32::try_from(*shard).unwrap_or(i32::MAX))
                .collect();
            let epochs: Vec<i64> = wanted.values().copied().collect();
            let confirmed: Vec<(i32,)> = sqlx::query_as(
                "SELECT s.shard FROM cluster_shards AS s
                 JOIN UNNEST($1::int4[], $2::int8[]) AS f(shard, epoch)
                   ON s.shard = f.shard AND s.epoch = f.epoch
                 WHERE s.owner = $3
                 FOR SHARE OF s",
            )
            .bind(&shards)
            .bind(&epochs)
            .bind(&*self.instance_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(database("check the shard leases before a write"))?;
            for (shard,) in confirmed {
                wanted.remove(&u32::try_from(shard).unwrap_or(u32::MAX));
            }
            not_held.extend(
                people
                    .iter()
                    .filter(|person| wanted.contains_key(&shard_of(person)))
                    .map(|person| (*person).clone()),
            );
        }
        if not_held.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Fenced { people: not_held })
        }
    }
}

/// What one round of lease upkeep changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseChanges {
    /// Shards claimed in this round (free, expired, or given back by another instance).
    pub gained: Vec<HeldShard>,
    /// Shards held before this round and no longer: expired before renewal (this instance
    /// stalled), or given back to make room for other instances.
    pub lost: Vec<u32>,
}

impl LeaseChanges {
    pub fn is_empty(&self) -> bool {
        self.gained.is_empty() && self.lost.is_empty()
    }
}

/// An instance as the admin page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub instance_id: String,
    /// Host and process id, for the operator.
    pub name: String,
    pub started_at: Timestamp,
    pub heartbeat_at: Timestamp,
    /// Shards whose lease it holds and that have not expired.
    pub shards: u32,
    /// Whether its heartbeat is younger than a lease.
    pub alive: bool,
}

/// One instance's leases.
pub struct Leases {
    pool: PgPool,
    /// What the engines and the fenced store see; kept equal to `held`, and shrunk before
    /// shards are given back, so that no write starts for a shard being handed on.
    fence: Fence,
    name: String,
    lease: SignedDuration,
    started_at: Timestamp,
    held: BTreeMap<u32, i64>,
}

fn database(operation: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |source| StoreError::Database {
        operation: operation.to_string(),
        source,
    }
}

fn millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

fn instant(milliseconds: i64) -> Timestamp {
    Timestamp::from_millisecond(milliseconds).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Leases {
    /// Leases for a new instance; nothing is written until [`Leases::tick`].
    pub fn new(
        pool: PgPool,
        fence: Fence,
        name: String,
        lease: SignedDuration,
        now: Timestamp,
    ) -> Leases {
        fence.set_held(&[]);
        Leases {
            pool,
            fence,
            name,
            lease,
            started_at: now,
            held: BTreeMap::new(),
        }
    }

    pub fn instance_id(&self) -> &str {
        self.fence.instance_id()
    }

    /// Shows `held` to the engines and the fenced store.
    fn publish_held(&self) {
        self.fence.set_held(&self.held());
    }

    /// The shards held after the last round, with their epochs.
    pub fn held(&self) -> Vec<HeldShard> {
        self.held
            .iter()
            .map(|(shard, epoch)| HeldShard {
                shard: *shard,
                epoch: *epoch,
            })
            .collect()
    }

    /// Forgets what this instance believed it held, after its leases ran out unrenewed: the
    /// next round claims afresh (with new epochs) whatever is free by then.
    pub fn forget_held(&mut self) {
        self.held.clear();
        self.publish_held();
    }

    /// The epoch under which this instance holds `shard`, if it does (as of the last round).
    pub fn epoch_of(&self, shard: u32) -> Option<i64> {
        self.held.get(&shard).copied()
    }

    /// One round of upkeep: heartbeat, renew what is held, give back what is beyond the fair
    /// share, claim free or expired shards up to it. Run it every few seconds (a third of the
    /// lease at most), so a lease never expires while its instance is well.
    pub async fn tick(&mut self, now: Timestamp) -> Result<LeaseChanges, StoreError> {
        let expires = now.saturating_add(self.lease).unwrap_or(now);
        sqlx::query(
            "INSERT INTO cluster_instances (instance_id, name, started_at_ms, heartbeat_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at_ms = EXCLUDED.heartbeat_at_ms",
        )
        .bind(self.fence.instance_id())
        .bind(&self.name)
        .bind(millis(self.started_at))
        .bind(millis(now))
        .execute(&self.pool)
        .await
        .map_err(database("send the instance's heartbeat"))?;

        // Renew: only leases still held under the epoch we claimed them with and not expired.
        let renewed: Vec<(i32, i64)> = sqlx::query_as(
            "UPDATE cluster_shards SET expires_at_ms = $2
             WHERE owner = $1 AND expires_at_ms > $3
             RETURNING shard, epoch",
        )
        .bind(self.fence.instance_id())
        .bind(millis(expires))
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await
        .map_err(database("renew the shard leases"))?;
        let mut still: BTreeMap<u32, i64> = BTreeMap::new();
        let mut gained = Vec::new();
        for (shard, epoch) in renewed {
            let shard = u32::try_from(shard).unwrap_or(u32::MAX);
            if self.held.get(&shard) != Some(&epoch) {
                // A claim whose answer never arrived (the connection broke after the commit,
                // or the caller gave the round up): the lease is this instance's all the same,
                // and left unknown it would be renewed for ever with nobody following its
                // people.
                gained.push(HeldShard { shard, epoch });
            }
            still.insert(shard, epoch);
        }
        let mut changes = LeaseChanges {
            gained,
            lost: self
                .held
                .keys()
                .filter(|shard| !still.contains_key(shard))
                .copied()
                .collect(),
        };
        self.held = still;
        self.publish_held();

        let fair = self.fair_share(now).await?;
        let held = u32::try_from(self.held.len()).unwrap_or(u32::MAX);
        if held > fair {
            // Give back the highest shards: the others claim them at their next round.
            let surplus: Vec<i32> = self
                .held
                .keys()
                .rev()
                .take((held - fair) as usize)
                .map(|shard| i32::try_from(*shard).unwrap_or(i32::MAX))
                .collect();
            // Fenced first: a write already past its check holds the rows, and the update
            // below waits for it; no new one starts.
            let before = self.held.clone();
            for shard in &surplus {
                self.held.remove(&u32::try_from(*shard).unwrap_or(u32::MAX));
            }
            self.publish_held();
            let given_back = sqlx::query(
                "UPDATE cluster_shards SET owner = NULL, expires_at_ms = 0
                 WHERE owner = $1 AND shard = ANY($2)",
            )
            .bind(self.fence.instance_id())
            .bind(&surplus)
            .execute(&self.pool)
            .await;
            if let Err(error) = given_back {
                // Still ours in the database: keep following them.
                self.held = before;
                self.publish_held();
                return Err(database("give back shards beyond the fair share")(error));
            }
            for shard in surplus {
                changes.lost.push(u32::try_from(shard).unwrap_or(u32::MAX));
            }
        } else if held < fair {
            let claimed: Vec<(i32, i64)> = sqlx::query_as(
                "WITH free AS (
                     SELECT shard FROM cluster_shards
                     WHERE owner IS NULL OR expires_at_ms <= $3
                     ORDER BY shard
                     LIMIT $4
                     FOR UPDATE SKIP LOCKED
                 )
                 UPDATE cluster_shards AS s
                 SET owner = $1, epoch = s.epoch + 1, expires_at_ms = $2
                 FROM free WHERE s.shard = free.shard
                 RETURNING s.shard, s.epoch",
            )
            .bind(self.fence.instance_id())
            .bind(millis(expires))
            .bind(millis(now))
            .bind(i64::from(fair - held))
            .fetch_all(&self.pool)
            .await
            .map_err(database("claim free shards"))?;
            for (shard, epoch) in claimed {
                let shard = u32::try_from(shard).unwrap_or(u32::MAX);
                self.held.insert(shard, epoch);
                changes.gained.push(HeldShard { shard, epoch });
            }
            self.publish_held();
        }
        changes.lost.sort_unstable();
        changes.gained.sort_unstable();
        Ok(changes)
    }

    /// The shards divided by the live instances (this one included), rounded up, so that
    /// together they always cover every shard.
    async fn fair_share(&self, now: Timestamp) -> Result<u32, StoreError> {
        let alive_since = now.saturating_sub(self.lease).unwrap_or(now);
        let (alive,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM cluster_instances WHERE heartbeat_at_ms > $1 OR instance_id = $2",
        )
        .bind(millis(alive_since))
        .bind(self.fence.instance_id())
        .fetch_one(&self.pool)
        .await
        .map_err(database("count the live instances"))?;
        let alive = u32::try_from(alive.max(1)).unwrap_or(u32::MAX);
        Ok(SHARDS.div_ceil(alive))
    }

    /// Whether this instance holds `shard` under `epoch` in the database right now: the fence
    /// before a write that another owner must not be mixed with.
    pub async fn holds(&self, shard: u32, epoch: i64, now: Timestamp) -> Result<bool, StoreError> {
        let held: Option<(i32,)> = sqlx::query_as(
            "SELECT shard FROM cluster_shards
             WHERE shard = $1 AND owner = $2 AND epoch = $3 AND expires_at_ms > $4",
        )
        .bind(i32::try_from(shard).unwrap_or(i32::MAX))
        .bind(self.fence.instance_id())
        .bind(epoch)
        .bind(millis(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(database("check a shard lease"))?;
        Ok(held.is_some())
    }

    /// Gives back every shard and leaves: the others claim them at their next round instead of
    /// waiting for the leases to expire.
    pub async fn release_all(&mut self) -> Result<(), StoreError> {
        self.held.clear();
        self.publish_held();
        let mut transaction = self
            .pool
            .begin()
            .await
            .map_err(database("release the shards"))?;
        sqlx::query("UPDATE cluster_shards SET owner = NULL, expires_at_ms = 0 WHERE owner = $1")
            .bind(self.fence.instance_id())
            .execute(&mut *transaction)
            .await
            .map_err(database("release the shards"))?;
        sqlx::query("DELETE FROM cluster_instances WHERE instance_id = $1")
            .bind(self.fence.instance_id())
            .execute(&mut *transaction)
            .await
            .map_err(database("remove the instance"))?;
        transaction
            .commit()
            .await
            .map_err(database("release the shards"))
    }

    /// The owner of every shard whose lease has not expired, by instance id.
    pub async fn shard_owners(&self, now: Timestamp) -> Result<Vec<(u32, String)>, StoreError> {
        let rows: Vec<(i32, String)> = sqlx::query_as(
            "SELECT shard, owner FROM cluster_shards
             WHERE owner IS NOT NULL AND expires_at_ms > $1 ORDER BY shard",
        )
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await
        .map_err(database("list the shard owners"))?;
        Ok(rows
            .into_iter()
            .filter_map(|(shard, owner)| Some((u32::try_from(shard).ok()?, owner)))
            .collect())
    }

    /// Every instance that sent a heartbeat, with the shards it holds, oldest first.
    pub async fn instances(&self, now: Timestamp) -> Result<Vec<InstanceInfo>, StoreError> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT i.instance_id, i.name, i.started_at_ms, i.heartbeat_at_ms,
                    (SELECT count(*) FROM cluster_shards s
                     WHERE s.owner = i.instance_id AND s.expires_at_ms > $1)
             FROM cluster_instances i
             ORDER BY i.started_at_ms, i.instance_id",
        )
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await
        .map_err(database("list the instances"))?;
        let alive_since = now.saturating_sub(self.lease).unwrap_or(now);
        Ok(rows
            .into_iter()
            .map(
                |(instance_id, name, started, heartbeat, shards)| InstanceInfo {
                    instance_id,
                    name,
                    started_at: instant(started),
                    heartbeat_at: instant(heartbeat),
                    shards: u32::try_from(shards).unwrap_or(0),
                    alive: instant(heartbeat) > alive_since,
                },
            )
            .collect())
    }
}

/// What the owner of a person is asked to do by the instance that heard of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Read what changed (a change notification, a missed one).
    Changed,
    /// Renew the subscription (Graph asked for reauthorization).
    Renew,
    /// Subscribe anew and read what changed (Graph removed the subscription).
    Resubscribe,
}

impl Wanted {
    pub fn as_str(self) -> &'static str {
        match self {
            Wanted::Changed => "changed",
            Wanted::Renew => "renew",
            Wanted::Resubscribe => "resubscribe",
        }
    }

    fn parse(text: &str) -> Option<Wanted> {
        match text {
            "changed" => Some(Wanted::Changed),
            "renew" => Some(Wanted::Renew),
            "resubscribe" => Some(Wanted::Resubscribe),
            _ => None,
        }
    }
}

/// The NOTIFY channel that wakes owners when work is handed to them.
const WORK_CHANNEL: &str = "calbridge_work";

/// Work handed between instances: durable (a row, committed before the sender answers Graph),
/// taken by the owner of the person's shard.
#[derive(Clone)]
pub struct WorkQueue {
    pool: PgPool,
}

impl WorkQueue {
    pub(crate) fn new(pool: PgPool) -> WorkQueue {
        WorkQueue { pool }
    }

    /// Hands `wanted` for `person` to whoever owns their shard, and wakes the instances.
    pub async fn hand_over(
        &self,
        person: &PersonKey,
        wanted: Wanted,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let failed = database("hand work to the owner");
        let mut transaction = self.pool.begin().await.map_err(failed)?;
        sqlx::query(
            "INSERT INTO cluster_work (shard, source_id, address, wanted, queued_at_ms)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(i32::try_from(shard_of(person)).unwrap_or(i32::MAX))
        .bind(&person.source.0)
        .bind(person.address.as_str())
        .bind(wanted.as_str())
        .bind(millis(now))
        .execute(&mut *transaction)
        .await
        .map_err(database("hand work to the owner"))?;
        // Delivered at commit, to every instance listening.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(WORK_CHANNEL)
            .execute(&mut *transaction)
            .await
            .map_err(database("wake the owner"))?;
        transaction
            .commit()
            .await
            .map_err(database("hand work to the owner"))
    }

    /// Takes (removes) up to `limit` pieces of work for people of `shards`, oldest first. A
    /// piece taken by an instance that dies before doing it is not lost for long: the next
    /// owner reads every taken-over person's changes anyway. Rows no instance can read (only
    /// a damaged database has them) are dropped and counted, so that they cannot block the
    /// queue.
    pub async fn take(&self, shards: &[u32], limit: u32) -> Result<TakenWork, StoreError> {
        if shards.is_empty() {
            return Ok(TakenWork::default());
        }
        let shards: Vec<i32> = shards
            .iter()
            .map(|shard| i32::try_from(*shard).unwrap_or(i32::MAX))
            .collect();
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "DELETE FROM cluster_work WHERE id IN (
                 SELECT id FROM cluster_work WHERE shard = ANY($1)
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
             )
             RETURNING source_id, address, wanted",
        )
        .bind(&shards)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(database("take handed work"))?;
        let mut taken = TakenWork::default();
        for (source, address, wanted) in rows {
            let (Ok(address), Some(wanted)) = (
                calbridge_domain::MailboxAddress::parse(&address),
                Wanted::parse(&wanted),
            ) else {
                taken.unreadable += 1;
                continue;
            };
            taken.work.push((
                PersonKey::new(calbridge_domain::SourceId(source), address),
                wanted,
            ));
        }
        Ok(taken)
    }

    /// A connection that waits for the wake-ups of [`WorkQueue::hand_over`].
    pub async fn wake_ups(&self) -> Result<WakeUps, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(database("listen for handed work"))?;
        listener
            .listen(WORK_CHANNEL)
            .await
            .map_err(database("listen for handed work"))?;
        Ok(WakeUps { listener })
    }
}

/// What [`WorkQueue::take`] took.
#[derive(Debug, Default)]
pub struct TakenWork {
    pub work: Vec<(PersonKey, Wanted)>,
    /// Rows that could not be read and were dropped.
    pub unreadable: usize,
}

/// Wake-ups for handed work.
pub struct WakeUps {
    listener: sqlx::postgres::PgListener,
}

impl WakeUps {
    /// Waits for the next wake-up. After a lost connection sqlx reconnects and listens again;
    /// wake-ups sent meanwhile are missed, so callers also look for work on a timer.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        self.listener
            .recv()
            .await
            .map(|_| ())
            .map_err(database("wait for handed work"))
    }
}

/// Who may do a job that must run on one instance at a time (delivering one webhook endpoint,
/// in order, from the shared outbox): everyone when there is one instance, otherwise whoever
/// holds the job's PostgreSQL advisory lock. The lock lives on a connection of its own, so it
/// goes with the instance however that ends, and the next one waiting takes over at once.
#[derive(Clone)]
pub enum Turns {
    /// One instance: every job is always its turn.
    Everyone,
    /// Several instances on this database.
    Exclusive(PgPool),
}

/// A job's turn, held until dropped.
pub struct Turn {
    connection: Option<sqlx::PgConnection>,
}

/// How often a held turn checks that its connection (and so its lock) is still there.
const TURN_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

impl Turns {
    /// Waits until it is this instance's turn for `job`.
    pub async fn wait(&self, job: &str) -> Result<Turn, StoreError> {
        let Turns::Exclusive(pool) = self else {
            return Ok(Turn { connection: None });
        };
        let mut connection = pool
            .acquire()
            .await
            .map_err(database("wait for a turn"))?
            .detach();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(job_key(job))
            .execute(&mut connection)
            .await
            .map_err(database("wait for a turn"))?;
        Ok(Turn {
            connection: Some(connection),
        })
    }
}

impl Turn {
    /// Completes when the turn is lost: its connection broke (PostgreSQL restarted, the network
    /// went), and with it the lock. Never completes for [`Turns::Everyone`].
    pub async fn lost(&mut self) {
        let Some(connection) = self.connection.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(TURN_CHECK).await;
            if sqlx::query("SELECT 1")
                .execute(&mut *connection)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// The advisory lock key of a job: FNV-1a (64-bit) of `calbridge:` and its name, as a signed
/// number (what `pg_advisory_lock` takes). Fixed for the same reason as [`shard_of`].
fn job_key(job: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"calbridge:".iter().chain(job.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use calbridge_domain::{MailboxAddress, SourceId};

    fn person(source: &str, address: &str) -> PersonKey {
        PersonKey::new(
            SourceId(source.to_string()),
            MailboxAddress::parse(address).expect("an address"),
        )
    }

    #[test]
    fn shards_are_stable_and_spread_people_evenly() {
        // Fixed values, computed independently with a few lines of Python: a change here would
        // move every person to another shard after an upgrade, while the old version's
        // instances still hold the leases.
        assert_eq!(shard_of(&person("m365", "ada@contoso.example")), 31);
        assert_eq!(shard_of(&person("m365", "bob@contoso.example")), 72);
        assert_ne!(
            shard_of(&person("m365", "ada@contoso.example")),
            shard_of(&person("onprem", "ada@contoso.example"))
        );
        let mut counts = vec![0u32; SHARDS as usize];
        for index in 0..25_600 {
            let key = person("m365", &format!("user{index}@contoso.example"));
            counts[shard_of(&key) as usize] += 1;
        }
        let (least, most) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        assert!(least >= 60 && most <= 140, "{least}..{most} per shard");
    }
}
