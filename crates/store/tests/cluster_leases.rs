//! Shard leases on a real PostgreSQL: every shard owned by exactly one live instance, fair
//! shares as instances join and leave, a dead instance's shards taken over after its lease,
//! epochs that fence a stalled owner out. Time is passed in, so no test waits for the clock.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use calbridge_store::cluster::{shard_of, Fence, LeaseChanges, Leases, Turns, Wanted, SHARDS};
use calbridge_store::{Store, StoreError};
use common::{Backend, TestStore};
use jiff::{SignedDuration, Timestamp};

const LEASE: SignedDuration = SignedDuration::from_secs(30);

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

async fn database() -> Option<TestStore> {
    let backend = Backend::postgres().await?;
    Some(backend.fresh_store().await)
}

fn leases(store: &TestStore, name: &str) -> Leases {
    store.postgres().expect("a PostgreSQL store").leases(
        Fence::new(name),
        format!("{name}-host:1"),
        LEASE,
        t(0),
    )
}

/// Who holds each shard in the database at `now` (expired leases count as nobody).
async fn owners(store: &TestStore, now: Timestamp) -> BTreeMap<String, BTreeSet<u32>> {
    let rows = store
        .database()
        .rows_as_text(&format!(
            "SELECT owner, shard::text FROM cluster_shards WHERE owner IS NOT NULL AND expires_at_ms > {}",
            now.as_millisecond()
        ))
        .await;
    let mut owners: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for row in rows {
        let owner = row[0].clone().unwrap();
        let shard: u32 = row[1].clone().unwrap().parse().unwrap();
        owners.entry(owner).or_default().insert(shard);
    }
    owners
}

/// Every shard has exactly one owner, and each instance's own view matches the database.
async fn assert_covered_once(store: &TestStore, now: Timestamp, instances: &[&Leases]) {
    let owners = owners(store, now).await;
    let total: usize = owners.values().map(BTreeSet::len).sum();
    assert_eq!(total, SHARDS as usize, "{owners:?}");
    for leases in instances {
        let held: BTreeSet<u32> = leases.held().iter().map(|held| held.shard).collect();
        assert_eq!(
            owners
                .get(leases.instance_id())
                .cloned()
                .unwrap_or_default(),
            held,
            "{} believes it holds what the database says",
            leases.instance_id()
        );
    }
}

fn count(leases: &Leases) -> usize {
    leases.held().len()
}

#[tokio::test]
async fn a_lone_instance_claims_every_shard_and_keeps_them_by_renewing() {
    let Some(store) = database().await else {
        return;
    };
    let mut a = leases(&store, "a");
    let changes = a.tick(t(0)).await.unwrap();
    assert_eq!(changes.gained.len(), SHARDS as usize);
    assert!(changes.gained.iter().all(|held| held.epoch == 1));
    // Renewed every 10 s, the leases never lapse.
    for second in [10, 20, 30, 40, 50] {
        assert_eq!(a.tick(t(second)).await.unwrap(), LeaseChanges::default());
    }
    assert_covered_once(&store, t(79), &[&a]).await;
    assert!(a.holds(7, 1, t(79)).await.unwrap());
    assert!(
        !a.holds(7, 1, t(81)).await.unwrap(),
        "expired 30 s after the last renewal"
    );
}

#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_known_again_at_the_next_round() {
    let Some(store) = database().await else {
        return;
    };
    // The claim committed, but its round never learnt it (the connection broke after the
    // commit, or the round was given up): the same instance with no memory of it.
    let mut claimed = leases(&store, "a");
    claimed.tick(t(0)).await.unwrap();
    let mut a = leases(&store, "a");
    let changes = a.tick(t(10)).await.unwrap();
    assert_eq!(changes.gained.len(), SHARDS as usize, "{changes:?}");
    assert!(changes.gained.iter().all(|held| held.epoch == 1));
    assert_covered_once(&store, t(11), &[&a]).await;
    assert!(a.holds(7, 1, t(11)).await.unwrap());
}

#[tokio::test]
async fn instances_that_join_get_a_fair_share_and_together_cover_every_shard() {
    let Some(store) = database().await else {
        return;
    };
    let (mut a, mut b, mut c) = (
        leases(&store, "a"),
        leases(&store, "b"),
        leases(&store, "c"),
    );
    a.tick(t(0)).await.unwrap();
    // b joins: nothing is free yet; a sees two live instances and gives back half.
    assert!(b.tick(t(1)).await.unwrap().gained.is_empty());
    let given_back = a.tick(t(2)).await.unwrap();
    assert_eq!(given_back.lost.len(), 128);
    assert_eq!(b.tick(t(3)).await.unwrap().gained.len(), 128);
    assert_covered_once(&store, t(3), &[&a, &b]).await;
    // c joins: a and b shrink to ⌈256/3⌉ = 86 each, c takes what they gave back.
    c.tick(t(4)).await.unwrap();
    a.tick(t(5)).await.unwrap();
    b.tick(t(6)).await.unwrap();
    c.tick(t(7)).await.unwrap();
    assert_eq!((count(&a), count(&b), count(&c)), (86, 86, 84));
    assert_covered_once(&store, t(7), &[&a, &b, &c]).await;
    let listed = a.instances(t(8)).await.unwrap();
    let summary: Vec<(String, u32, bool)> = listed
        .iter()
        .map(|instance| {
            (
                instance.instance_id.clone(),
                instance.shards,
                instance.alive,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a".to_string(), 86, true),
            ("b".to_string(), 86, true),
            ("c".to_string(), 84, true)
        ]
    );
    assert_eq!(listed[0].name, "a-host:1");
}

#[tokio::test]
async fn a_dead_instances_shards_are_claimed_after_its_lease_with_a_new_epoch() {
    let Some(store) = database().await else {
        return;
    };
    let (mut a, mut b, mut c) = (
        leases(&store, "a"),
        leases(&store, "b"),
        leases(&store, "c"),
    );
    for second in 0..3 {
        a.tick(t(second * 3)).await.unwrap();
        b.tick(t(second * 3 + 1)).await.unwrap();
        c.tick(t(second * 3 + 2)).await.unwrap();
    }
    let c_held = c.held();
    assert!(!c_held.is_empty());
    // c is killed at 8 s (its last renewal). Until its leases run out nobody takes them.
    for second in [10, 20, 30] {
        let a_changes = a.tick(t(second)).await.unwrap();
        let b_changes = b.tick(t(second + 1)).await.unwrap();
        assert!(a_changes.gained.is_empty() && b_changes.gained.is_empty());
    }
    // At 40 s c's leases (to 38 s) and heartbeat are over: a and b split everything.
    a.tick(t(40)).await.unwrap();
    b.tick(t(41)).await.unwrap();
    a.tick(t(42)).await.unwrap();
    assert_covered_once(&store, t(42), &[&a, &b]).await;
    assert_eq!(count(&a) + count(&b), SHARDS as usize);
    for held in &c_held {
        let new_epoch = a
            .epoch_of(held.shard)
            .or_else(|| b.epoch_of(held.shard))
            .unwrap();
        assert!(
            new_epoch > held.epoch,
            "shard {} was claimed anew",
            held.shard
        );
        // The fence: c's old epoch no longer holds, even if c wakes up.
        assert!(!c.holds(held.shard, held.epoch, t(42)).await.unwrap());
    }
    // c wakes up after the stall: it learns it lost everything and claims nothing held.
    let woke = c.tick(t(43)).await.unwrap();
    assert_eq!(woke.lost.len(), c_held.len());
    assert!(c.held().is_empty(), "nothing was free to claim");
    let listed = a.instances(t(43)).await.unwrap();
    assert!(listed.iter().all(|instance| instance.alive));
}

#[tokio::test]
async fn a_graceful_shutdown_hands_the_shards_over_at_once() {
    let Some(store) = database().await else {
        return;
    };
    let (mut a, mut b) = (leases(&store, "a"), leases(&store, "b"));
    a.tick(t(0)).await.unwrap();
    b.tick(t(1)).await.unwrap();
    a.tick(t(2)).await.unwrap();
    b.tick(t(3)).await.unwrap();
    assert_eq!((count(&a), count(&b)), (128, 128));
    b.release_all().await.unwrap();
    assert!(b.held().is_empty());
    // No lease to wait for: a's next round takes everything.
    let changes = a.tick(t(4)).await.unwrap();
    assert_eq!(changes.gained.len(), 128);
    assert_covered_once(&store, t(4), &[&a]).await;
    let listed = a.instances(t(4)).await.unwrap();
    assert_eq!(listed.len(), 1, "b left the instance list");
}

#[tokio::test]
async fn instances_claiming_at_the_same_moment_never_take_the_same_shard() {
    let Some(store) = database().await else {
        return;
    };
    let mut all: Vec<Leases> = (0..4).map(|n| leases(&store, &format!("i{n}"))).collect();
    // Everyone's heartbeat first, so each aims at a quarter; then all claim at once.
    for instance in all.iter_mut() {
        instance.tick(t(0)).await.unwrap();
        instance.release_all().await.unwrap();
    }
    let claims =
        futures_util::future::join_all(all.iter_mut().map(|instance| instance.tick(t(1)))).await;
    let mut seen = BTreeSet::new();
    for changes in claims {
        for held in changes.unwrap().gained {
            assert!(
                seen.insert(held.shard),
                "shard {} claimed twice",
                held.shard
            );
        }
    }
    let refs: Vec<&Leases> = all.iter().collect();
    let owners = owners(&store, t(1)).await;
    for instance in &refs {
        assert_eq!(
            owners
                .get(instance.instance_id())
                .cloned()
                .unwrap_or_default(),
            instance
                .held()
                .iter()
                .map(|held| held.shard)
                .collect::<BTreeSet<u32>>()
        );
    }
    // Later rounds even out what the race left: whoever holds more than its share gives it
    // back, the others claim it at their next round.
    for second in 2..5 {
        for instance in all.iter_mut() {
            instance.tick(t(second)).await.unwrap();
        }
    }
    let refs: Vec<&Leases> = all.iter().collect();
    assert_covered_once(&store, t(4), &refs).await;
    assert!(all.iter().all(|instance| count(instance) == 64));
}

#[tokio::test]
async fn handed_work_goes_to_the_owner_of_the_shard_once_and_wakes_it() {
    let Some(store) = database().await else {
        return;
    };
    let postgres = store.postgres().expect("a PostgreSQL store");
    let queue = postgres.work_queue();
    let mut wake_ups = queue.wake_ups().await.unwrap();
    let ada = common::person("m365", "ada@contoso.example");
    let bob = common::person("m365", "bob@contoso.example");
    assert_ne!(shard_of(&ada), shard_of(&bob));
    queue.hand_over(&ada, Wanted::Changed, t(0)).await.unwrap();
    queue.hand_over(&bob, Wanted::Renew, t(1)).await.unwrap();
    queue
        .hand_over(&ada, Wanted::Resubscribe, t(2))
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), wake_ups.next())
        .await
        .expect("a wake-up within 10 s")
        .unwrap();
    // The owner of Ada's shard takes her work, in order, and nothing of Bob's.
    let taken = queue.take(&[shard_of(&ada)], 100).await.unwrap();
    assert_eq!(
        taken.work,
        vec![
            (ada.clone(), Wanted::Changed),
            (ada.clone(), Wanted::Resubscribe)
        ]
    );
    assert_eq!(taken.unreadable, 0);
    assert!(
        queue
            .take(&[shard_of(&ada)], 100)
            .await
            .unwrap()
            .work
            .is_empty(),
        "taken once"
    );
    let for_bob = queue
        .take(&[shard_of(&ada), shard_of(&bob)], 100)
        .await
        .unwrap();
    assert_eq!(for_bob.work, vec![(bob, Wanted::Renew)]);
    assert!(queue.take(&[], 100).await.unwrap().work.is_empty());
}

#[tokio::test]
async fn a_job_is_one_instances_turn_at_a_time_and_passes_on_when_its_holder_goes() {
    let Some(store) = database().await else {
        return;
    };
    let postgres = store.postgres().expect("a PostgreSQL store");
    let (first, second) = (postgres.turns(), postgres.turns());
    let held = first.wait("webhook:crm").await.unwrap();
    // Another job is free meanwhile.
    let other = second.wait("webhook:wallboard").await.unwrap();
    drop(other);
    // The same job waits while the first holds it...
    let mut waiting = Box::pin(second.wait("webhook:crm"));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "two instances had the same turn"
    );
    // ...and gets it as soon as the holder goes.
    drop(held);
    let mut taken = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the turn passes on within 10 s")
        .unwrap();
    // A turn whose connection breaks (PostgreSQL restarted, the network went) knows it.
    store
        .database()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await;
    tokio::time::timeout(std::time::Duration::from_secs(10), taken.lost())
        .await
        .expect("the lost turn is noticed within 10 s");
    // With one instance every job is always its turn.
    let mut always = Turns::Everyone.wait("webhook:crm").await.unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), always.lost())
            .await
            .is_err()
    );
}

fn presence(activity: &str) -> calbridge_store::CurrentPresence {
    calbridge_store::CurrentPresence {
        activity: activity.to_string(),
        note: None,
        until: None,
        why: "test".to_string(),
        next_change_at: None,
        decided_at: t(0),
        published_fingerprint: None,
    }
}

#[tokio::test]
async fn a_stalled_owner_s_writes_are_fenced_out_once_another_instance_claimed_the_shard() {
    let Some(store) = database().await else {
        return;
    };
    let postgres = store.postgres().expect("a PostgreSQL store");
    let ada = common::person("graph", "ada@x.example");
    let bob = common::person("graph", "bob@x.example");
    assert_ne!(shard_of(&ada), shard_of(&bob), "the test needs two shards");
    for key in [&ada, &bob] {
        store
            .upsert_person(&calbridge_store::PersonUpsert {
                key: key.clone(),
                display_name: None,
                sip_uri: None,
            })
            .await
            .unwrap();
    }
    let (fence_a, fence_b) = (Fence::new("a"), Fence::new("b"));
    let (store_a, store_b) = (
        postgres.fenced(fence_a.clone()),
        postgres.fenced(fence_b.clone()),
    );
    let mut a = postgres.leases(fence_a.clone(), "a-host:1".into(), LEASE, t(0));
    a.tick(t(0)).await.unwrap();
    assert!(
        fence_a.holds(&ada) && fence_a.holds(&bob),
        "the fence follows the leases"
    );
    store_a
        .save_presence(&ada, &presence("busy"))
        .await
        .unwrap();

    // b writes nothing for people whose shards it does not hold.
    let refused = store_b.save_presence(&ada, &presence("away")).await;
    assert!(
        matches!(&refused, Err(StoreError::Fenced { people }) if people == &vec![ada.clone()]),
        "{refused:?}"
    );

    // a stalls past its lease; b claims everything. a still believes it holds Ada's shard, but
    // the database says otherwise: its writes are refused, whole batches included.
    let mut b = postgres.leases(fence_b.clone(), "b-host:1".into(), LEASE, t(40));
    b.tick(t(40)).await.unwrap();
    assert!(fence_b.holds(&ada));
    assert!(fence_a.holds(&ada), "a has not noticed yet");
    let refused = store_a
        .save_presences(&[
            (ada.clone(), presence("away")),
            (bob.clone(), presence("away")),
        ])
        .await;
    match refused {
        Err(StoreError::Fenced { mut people }) => {
            people.sort_by_key(|person| person.address.to_string());
            assert_eq!(people, vec![ada.clone(), bob.clone()]);
        }
        other => panic!("expected a fenced write, got {other:?}"),
    }
    let refused = store_a
        .set_sync_state(&ada, &calbridge_store::SyncState::default())
        .await;
    assert!(
        matches!(refused, Err(StoreError::Fenced { .. })),
        "{refused:?}"
    );
    assert!(
        refused.unwrap_err().to_string().contains("ada@x.example"),
        "the message names the person"
    );
    assert_eq!(
        store
            .load_presence(&ada)
            .await
            .unwrap()
            .map(|saved| saved.activity),
        Some("busy".to_string()),
        "nothing of the refused writes was stored"
    );
    store_b
        .save_presence(&ada, &presence("away"))
        .await
        .unwrap();

    // a's next round notices: its fence empties.
    let changes = a.tick(t(41)).await.unwrap();
    assert!(!changes.lost.is_empty());
    assert!(!fence_a.holds(&ada));
}

#[tokio::test]
async fn shards_given_back_leave_the_fence_before_the_database() {
    let Some(store) = database().await else {
        return;
    };
    let postgres = store.postgres().expect("a PostgreSQL store");
    let fence_a = Fence::new("a");
    let mut a = postgres.leases(fence_a.clone(), "a-host:1".into(), LEASE, t(0));
    let mut b = leases(&store, "b");
    a.tick(t(0)).await.unwrap();
    b.tick(t(1)).await.unwrap();
    assert_eq!(fence_a.held_shards().len(), SHARDS as usize);
    let changes = a.tick(t(2)).await.unwrap();
    assert_eq!(changes.lost.len(), (SHARDS / 2) as usize);
    let mut held = fence_a.held_shards();
    held.sort_unstable();
    let mut kept: Vec<u32> = a.held().iter().map(|held| held.shard).collect();
    kept.sort_unstable();
    assert_eq!(held, kept);
    for shard in &changes.lost {
        assert_eq!(fence_a.epoch_of_shard(*shard), None);
    }
}
