-- What the SIP presence server holds for each presentity: the entity-tag (RFC 3903) of the
-- publication calbridge made and when it expires. The instance that takes a person over
-- modifies that publication (SIP-If-Match) instead of adding a second one beside it.
-- Instants are milliseconds since 1970 UTC.
CREATE TABLE sip_publications (
    uri           TEXT PRIMARY KEY,
    etag          TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
