-- The presence feed across instances (crates/store/src/feed.rs): every instance's live stream
-- shows every presence change, whoever follows the person. Saving a presence that people see
-- differently from the saved one (activity, note or until: what the engine's `same_presence`
-- compares) NOTIFYs `calbridge_presence` with the person's key, at commit, to every instance
-- listening. The payload is only the key: a NOTIFY payload is limited to 8000 bytes and a
-- note is not, so listeners read the presence itself from this table.

CREATE FUNCTION calbridge_presence_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    person record;
BEGIN
    SELECT source_id, address INTO person FROM people WHERE id = NEW.person_id;
    IF FOUND THEN
        PERFORM pg_notify(
            'calbridge_presence',
            json_build_object('source', person.source_id, 'address', person.address)::text
        );
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER presence_feed_insert AFTER INSERT ON presence
    FOR EACH ROW EXECUTE FUNCTION calbridge_presence_changed();

-- An unchanged presence saved again (a new owner deciding what the old one had decided) wakes
-- nobody.
CREATE TRIGGER presence_feed_update AFTER UPDATE ON presence
    FOR EACH ROW
    WHEN (OLD.activity IS DISTINCT FROM NEW.activity
          OR OLD.note IS DISTINCT FROM NEW.note
          OR OLD.until_at IS DISTINCT FROM NEW.until_at)
    EXECUTE FUNCTION calbridge_presence_changed();

-- A listener that reconnects reads again what was decided while it was away.
CREATE INDEX presence_decided_at ON presence (decided_at);
