-- What a directory of rooms (Graph's places API) says about the people that are meeting rooms:
-- how many they seat, where they are, whether they can be booked. A person without a row is
-- not known as a room. Written by `Store::set_rooms`, read by `Store::list_rooms`.
CREATE TABLE rooms (
    person_id    INTEGER PRIMARY KEY REFERENCES people (id) ON DELETE CASCADE,
    capacity     INTEGER CHECK (capacity IS NULL OR capacity >= 0),
    building     TEXT,
    floor_number INTEGER,
    floor_label  TEXT,
    room_list    TEXT,
    bookable     INTEGER NOT NULL CHECK (bookable IN (0, 1)),
    updated_at   INTEGER NOT NULL
);
