-- What became of a room's meetings under `[rooms] check_in_minutes`: checked in, released
-- (declined in the room's calendar because nobody checked in) or a release the source refused.
-- One row per meeting, the first word wins (`Store::claim_room_meeting`), so that a check-in and
-- a release at the same second exclude each other, across instances too.
CREATE TABLE room_check_ins (
    person_id      INTEGER NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    appointment_id TEXT NOT NULL,
    meeting_start  INTEGER NOT NULL,
    meeting_end    INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('checked_in', 'released', 'release_failed')),
    at             INTEGER NOT NULL,
    detail         TEXT,
    PRIMARY KEY (person_id, appointment_id, meeting_start)
);
CREATE INDEX room_check_ins_by_end ON room_check_ins (meeting_end);
