-- The first schema of the calbridge store on PostgreSQL: the same tables, columns and checks as
-- migrations/sqlite/0001_initial.sql, in PostgreSQL's own types.
--
-- Conventions:
-- - Instants are bigint unix seconds (UTC), as in SQLite: whole seconds are all the store keeps
--   (calendar servers send nothing finer), both backends then read the same integer, and a
--   value round-trips exactly. `to_timestamp(start_at)` shows one as a time in psql.
-- - Calendar dates are `date`.
-- - Keys and the columns the store orders by use the "C" collation, so that ORDER BY sorts by
--   bytes as SQLite does, whatever the database's default collation.
-- - Enumerations are lower-case text with a CHECK, so that a bad write fails loudly instead of
--   leaving a row the reader cannot decode.
-- - Secrets are bytea sealed with the store's key; the key never reaches the database.

-- People are addressed by (source_id, address) in the API; the integer id exists so that the
-- large child tables (appointments) carry 8 bytes per row instead of two strings.
CREATE TABLE people (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id        text COLLATE "C" NOT NULL,
    address          text COLLATE "C" NOT NULL,
    display_name     text,
    sip_uri          text,
    resolution       text   NOT NULL DEFAULT 'pending'
                            CHECK (resolution IN ('pending', 'resolved', 'failed')),
    primary_smtp     text,
    -- The source's own id for the mailbox (Graph's user object id), used in later requests.
    source_user_id   text,
    resolution_error text,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL,
    UNIQUE (source_id, address),
    CHECK (resolution <> 'resolved' OR primary_smtp IS NOT NULL),
    CHECK (resolution <> 'failed' OR resolution_error IS NOT NULL)
);

-- Either both instants (a timed appointment) or both dates (an all-day one), never a mix.
CREATE TABLE appointments (
    person_id      bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    appointment_id text COLLATE "C" NOT NULL CHECK (length(appointment_id) > 0),
    start_at       bigint,
    end_at         bigint,
    first_day      date,
    end_day        date,
    show_as        text   NOT NULL
                          CHECK (show_as IN ('free', 'tentative', 'busy', 'oof',
                                             'working_elsewhere', 'unknown')),
    sensitivity    text   NOT NULL
                          CHECK (sensitivity IN ('normal', 'personal', 'private', 'confidential')),
    -- NULL when the subject was not fetched (subjects hidden by configuration).
    subject        text,
    organizer      text,
    status         text   NOT NULL CHECK (status IN ('active', 'cancelled')),
    PRIMARY KEY (person_id, appointment_id),
    CHECK ((start_at IS NOT NULL AND end_at IS NOT NULL AND first_day IS NULL AND end_day IS NULL)
        OR (start_at IS NULL AND end_at IS NULL AND first_day IS NOT NULL AND end_day IS NOT NULL))
);

CREATE TABLE sync_state (
    person_id               bigint PRIMARY KEY REFERENCES people (id) ON DELETE CASCADE,
    delta_link              text,
    subscription_id         text,
    subscription_expires_at bigint,
    -- The webhook clientState is a shared secret: sealed like the secrets table.
    client_state_sealed     bytea,
    last_full_sync_at       bigint,
    last_delta_at           bigint,
    last_error              text,
    last_error_at           bigint,
    consecutive_failures    bigint NOT NULL DEFAULT 0,
    -- Written only by replace_appointments: the window the stored appointments cover.
    window_start            bigint,
    window_end              bigint
);

CREATE TABLE source_state (
    source_id         text COLLATE "C" PRIMARY KEY,
    token_status      text   NOT NULL DEFAULT 'unknown'
                             CHECK (token_status IN ('unknown', 'ok', 'failed')),
    token_error       text,
    token_checked_at  bigint,
    secret_expires_on date,
    last_throttled_at bigint,
    n_requests        bigint NOT NULL DEFAULT 0,
    n_throttled       bigint NOT NULL DEFAULT 0,
    n_failures        bigint NOT NULL DEFAULT 0,
    updated_at        bigint NOT NULL
);

CREATE TABLE presence (
    person_id             bigint PRIMARY KEY REFERENCES people (id) ON DELETE CASCADE,
    activity              text   NOT NULL,
    note                  text,
    until_at              bigint,
    why                   text   NOT NULL,
    next_change_at        bigint,
    decided_at            bigint NOT NULL,
    published_fingerprint text
);

-- A sealed value is: format version (1 byte) || XChaCha20 nonce (24 bytes) || ciphertext+tag.
CREATE TABLE secrets (
    name       text COLLATE "C" PRIMARY KEY,
    sealed     bytea  NOT NULL,
    updated_at bigint NOT NULL
);

-- An identity column draws from a sequence, so ids only grow and are never reused after old
-- events are pruned: a consumer's cursor must never point at a newer event than the one it has
-- seen. The store appends under a table lock so that ids also become visible in their order.
-- The person is plain text, not a foreign key: an event outlives the person it talks about.
-- The payload is `json`, not `jsonb`, so that it comes back exactly as it was written.
CREATE TABLE outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic          text   NOT NULL,
    person_source  text,
    person_address text,
    payload        json   NOT NULL,
    created_at     bigint NOT NULL
);

CREATE TABLE outbox_cursors (
    consumer text COLLATE "C" PRIMARY KEY,
    last_id  bigint NOT NULL
);
