-- The same table as migrations/sqlite/0005_rooms.sql: what a directory of rooms says about the
-- people that are meeting rooms.
CREATE TABLE rooms (
    person_id    bigint PRIMARY KEY REFERENCES people (id) ON DELETE CASCADE,
    capacity     bigint CHECK (capacity IS NULL OR capacity >= 0),
    building     text,
    floor_number bigint,
    floor_label  text,
    room_list    text,
    bookable     boolean NOT NULL,
    updated_at   bigint NOT NULL
);
