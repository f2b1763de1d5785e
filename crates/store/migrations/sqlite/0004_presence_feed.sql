-- The presence feed across instances exists only on PostgreSQL (crates/store/src/feed.rs): one
-- SQLite file has one instance, whose live stream already carries every change it decides.
-- This version changes nothing; it keeps both backends' schema versions in step.
SELECT 1;
