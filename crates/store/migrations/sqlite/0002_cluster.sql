-- Shard leases and handed work exist only on PostgreSQL (crates/store/src/cluster.rs): one
-- SQLite file has one instance, which follows everyone.

-- Finding the person of a change notification by its subscription.
CREATE INDEX sync_state_subscription ON sync_state (subscription_id);
