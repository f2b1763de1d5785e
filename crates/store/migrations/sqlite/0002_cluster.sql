-- Shard leases exist only on PostgreSQL (crates/store/src/cluster.rs): one SQLite file has one
-- instance, which follows everyone. This step keeps both backends at the same schema version.
SELECT 1;
