-- The same table as migrations/sqlite/0006_room_check_ins.sql: what became of a room's meetings
-- under `[rooms] check_in_minutes`.
CREATE TABLE room_check_ins (
    person_id      bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    appointment_id text NOT NULL,
    meeting_start  bigint NOT NULL,
    meeting_end    bigint NOT NULL,
    state          text NOT NULL CHECK (state IN ('checked_in', 'released', 'release_failed')),
    at             bigint NOT NULL,
    detail         text,
    PRIMARY KEY (person_id, appointment_id, meeting_start)
);
CREATE INDEX room_check_ins_by_end ON room_check_ins (meeting_end);
