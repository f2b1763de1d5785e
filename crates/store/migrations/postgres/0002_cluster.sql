-- Shard leases for several instances on one database (crates/store/src/cluster.rs).
-- Instants are milliseconds since 1970 UTC, written from each instance's clock.

CREATE TABLE cluster_instances (
    instance_id     TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    started_at_ms   BIGINT NOT NULL,
    heartbeat_at_ms BIGINT NOT NULL
);

-- One row per virtual shard (cluster::SHARDS = 256), made here once: claims only update.
CREATE TABLE cluster_shards (
    shard         INTEGER PRIMARY KEY CHECK (shard >= 0 AND shard < 256),
    owner         TEXT,
    epoch         BIGINT NOT NULL DEFAULT 0,
    expires_at_ms BIGINT NOT NULL DEFAULT 0
);

INSERT INTO cluster_shards (shard) SELECT generate_series(0, 255);

CREATE INDEX cluster_shards_owner ON cluster_shards (owner);

-- Finding the person of a change notification by its subscription.
CREATE INDEX sync_state_subscription ON sync_state (subscription_id);

-- Work handed from the instance that received it (a Graph notification reaches any instance
-- behind the load balancer) to the owner of the person's shard. Rows are taken (deleted) by the
-- owner; a NOTIFY on `calbridge_work` wakes it.
CREATE TABLE cluster_work (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shard        integer NOT NULL,
    source_id    text COLLATE "C" NOT NULL,
    address      text COLLATE "C" NOT NULL,
    wanted       text NOT NULL CHECK (wanted IN ('changed', 'renew', 'resubscribe')),
    queued_at_ms bigint NOT NULL
);

CREATE INDEX cluster_work_shard ON cluster_work (shard, id);
