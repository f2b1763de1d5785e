//! The presence engine: one person's appointments + rules + locale + `now` → a decision.
//!
//! **Invariant:** this crate is pure. It does no I/O, reads no clock (`now` is a parameter)
//! and cannot fail; it depends on nothing but the domain types and a time-zone database.
//! The note it writes follows the presence-string grammar of the innovaphone Calendar App
//! (see `docs/presence.md` for the grammar, the corrections to the seed's examples and every
//! choice made where the seed is silent).

mod decide;
mod locale;
mod room;
mod rules;

pub use decide::{decide, timeline, Activity, AppointmentSummary, Decision, Reason, Why};
pub use locale::{Language, Locale};
pub use room::{
    check_in_candidate, check_in_meetings, room_agenda, room_free_between, room_state,
    CheckInMeeting, RoomFilter, RoomMeeting, RoomShow, RoomState,
};
pub use rules::{Category, Keyword, MappedPresence, Mapping, Rules, SubjectVisibility};
