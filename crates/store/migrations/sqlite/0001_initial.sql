-- The first schema of the calbridge store.
--
-- Conventions: instants are INTEGER unix seconds (UTC), calendar dates are TEXT `YYYY-MM-DD`,
-- enumerations are lower-case TEXT with a CHECK so that a bad write fails loudly instead of
-- leaving a row the reader cannot decode. Secrets are BLOBs sealed with the store's key.

-- People are addressed by (source_id, address) in the API; the integer id exists so that the
-- large child tables (appointments) carry 8 bytes per row instead of two strings.
CREATE TABLE people (
    id               INTEGER PRIMARY KEY,
    source_id        TEXT    NOT NULL,
    address          TEXT    NOT NULL,
    display_name     TEXT,
    sip_uri          TEXT,
    resolution       TEXT    NOT NULL DEFAULT 'pending'
                             CHECK (resolution IN ('pending', 'resolved', 'failed')),
    primary_smtp     TEXT,
    -- The source's own id for the mailbox (Graph's user object id), used in later requests.
    source_user_id   TEXT,
    resolution_error TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (source_id, address),
    CHECK (resolution <> 'resolved' OR primary_smtp IS NOT NULL),
    CHECK (resolution <> 'failed' OR resolution_error IS NOT NULL)
);

-- Either both instants (a timed appointment) or both dates (an all-day one), never a mix.
CREATE TABLE appointments (
    person_id      INTEGER NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    appointment_id TEXT    NOT NULL CHECK (length(appointment_id) > 0),
    start_at       INTEGER,
    end_at         INTEGER,
    first_day      TEXT,
    end_day        TEXT,
    show_as        TEXT    NOT NULL
                           CHECK (show_as IN ('free', 'tentative', 'busy', 'oof',
                                              'working_elsewhere', 'unknown')),
    sensitivity    TEXT    NOT NULL
                           CHECK (sensitivity IN ('normal', 'personal', 'private', 'confidential')),
    -- NULL when the subject was not fetched (subjects hidden by configuration).
    subject        TEXT,
    organizer      TEXT,
    status         TEXT    NOT NULL CHECK (status IN ('active', 'cancelled')),
    PRIMARY KEY (person_id, appointment_id),
    CHECK ((start_at IS NOT NULL AND end_at IS NOT NULL AND first_day IS NULL AND end_day IS NULL)
        OR (start_at IS NULL AND end_at IS NULL AND first_day IS NOT NULL AND end_day IS NOT NULL))
) WITHOUT ROWID;

CREATE TABLE sync_state (
    person_id               INTEGER PRIMARY KEY REFERENCES people (id) ON DELETE CASCADE,
    delta_link              TEXT,
    subscription_id         TEXT,
    subscription_expires_at INTEGER,
    -- The webhook clientState is a shared secret: sealed like the secrets table.
    client_state_sealed     BLOB,
    last_full_sync_at       INTEGER,
    last_delta_at           INTEGER,
    last_error              TEXT,
    last_error_at           INTEGER,
    consecutive_failures    INTEGER NOT NULL DEFAULT 0,
    -- Written only by replace_appointments: the window the stored appointments cover.
    window_start            INTEGER,
    window_end              INTEGER
);

CREATE TABLE source_state (
    source_id         TEXT    PRIMARY KEY,
    token_status      TEXT    NOT NULL DEFAULT 'unknown'
                              CHECK (token_status IN ('unknown', 'ok', 'failed')),
    token_error       TEXT,
    token_checked_at  INTEGER,
    secret_expires_on TEXT,
    last_throttled_at INTEGER,
    n_requests        INTEGER NOT NULL DEFAULT 0,
    n_throttled       INTEGER NOT NULL DEFAULT 0,
    n_failures        INTEGER NOT NULL DEFAULT 0,
    updated_at        INTEGER NOT NULL
);

CREATE TABLE presence (
    person_id             INTEGER PRIMARY KEY REFERENCES people (id) ON DELETE CASCADE,
    activity              TEXT    NOT NULL,
    note                  TEXT,
    until_at              INTEGER,
    why                   TEXT    NOT NULL,
    next_change_at        INTEGER,
    decided_at            INTEGER NOT NULL,
    published_fingerprint TEXT
);

-- A sealed value is: format version (1 byte) || XChaCha20 nonce (24 bytes) || ciphertext+tag.
CREATE TABLE secrets (
    name       TEXT    PRIMARY KEY,
    sealed     BLOB    NOT NULL,
    updated_at INTEGER NOT NULL
);

-- AUTOINCREMENT (not just a rowid) so that ids are never reused after old events are pruned:
-- a consumer's cursor must never point at a newer event than the one it has seen.
-- The person is plain text, not a foreign key: an event outlives the person it talks about.
CREATE TABLE outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    topic          TEXT    NOT NULL,
    person_source  TEXT,
    person_address TEXT,
    payload        TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE outbox_cursors (
    consumer TEXT    PRIMARY KEY,
    last_id  INTEGER NOT NULL
);
