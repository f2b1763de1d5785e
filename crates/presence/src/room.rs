//! A room's state from its calendar: free or occupied now, the current and the next meeting,
//! until when, and the instant the state next changes (so the same timers that flip people's
//! presence flip rooms at the exact second).
//!
//! A room is occupied while any of its appointments that is not cancelled and not shown as
//! free covers the instant (a room mailbox shows a booking it has not accepted yet as
//! tentative; that holds the room too). Back-to-back meetings make one occupied stretch:
//! `occupied_until` is the end of the stretch, while the note names the meeting running now.
//! What a meeting is called follows [`RoomShow`]; a private or confidential meeting is always
//! "Private", whatever the policy.

use calbridge_domain::{Appointment, AppointmentStatus, MailboxAddress, ShowAs};
use jiff::civil::DateTime;
use jiff::Timestamp;

use crate::locale::{Language, Locale};

/// What a room's meetings are called on panels, consoles and in the API (`[rooms] show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomShow {
    /// The subject (Exchange may already have replaced it with the organizer's name, when the
    /// room's calendar processing has `AddOrganizerToSubject`).
    Subject,
    /// The organizer's address.
    Organizer,
    /// Only "Reserved": the default, since a room panel hangs in a corridor.
    #[default]
    Reserved,
}

/// A meeting in a room, named as [`RoomShow`] allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMeeting {
    pub id: String,
    pub start: Timestamp,
    pub end: Timestamp,
    /// What people may read: the subject, the organizer, "Reserved" or "Private".
    pub title: String,
    /// Only with [`RoomShow::Organizer`] or [`RoomShow::Subject`], and never for a private
    /// meeting.
    pub organizer: Option<MailboxAddress>,
    pub private: bool,
}

/// A room at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomState {
    pub occupied: bool,
    /// The meeting running now (the one that started last, when several overlap).
    pub current: Option<RoomMeeting>,
    /// The next meeting that starts after now.
    pub next: Option<RoomMeeting>,
    /// While free: when the next meeting starts (`None`: free as far as the calendar goes).
    pub free_until: Option<Timestamp>,
    /// While occupied: when the room is free again (the end of back-to-back meetings).
    pub occupied_until: Option<Timestamp>,
    /// "Reserved until 14:30", "Free until 15:00", "Free": the people's note grammar's words
    /// and date-time form, without the machine tags.
    pub note: String,
    /// When the state must be computed again: the next start or end of a meeting.
    pub next_change_at: Option<Timestamp>,
}

/// One occupying appointment as instants.
struct Booking<'a> {
    appointment: &'a Appointment,
    start: Timestamp,
    end: Timestamp,
}

fn bookings<'a>(appointments: &'a [Appointment], locale: &Locale) -> Vec<Booking<'a>> {
    let zone = locale.zone.zone();
    let mut bookings: Vec<Booking<'a>> = appointments
        .iter()
        .filter(|appointment| {
            appointment.status != AppointmentStatus::Cancelled
                && appointment.show_as != ShowAs::Free
        })
        .map(|appointment| {
            let (start, end) = appointment.time.instants(zone);
            Booking {
                appointment,
                start,
                end,
            }
        })
        .filter(|booking| booking.end > booking.start)
        .collect();
    bookings.sort_by(|a, b| {
        (a.start, a.end, &a.appointment.id).cmp(&(b.start, b.end, &b.appointment.id))
    });
    bookings
}

fn meeting(booking: &Booking<'_>, show: RoomShow, language: Language) -> RoomMeeting {
    let appointment = booking.appointment;
    let words = language.words();
    let private = appointment.sensitivity.hides_subject();
    let subject = appointment
        .subject
        .as_deref()
        .map(str::trim)
        .filter(|subject| !subject.is_empty());
    let organizer = appointment.organizer.clone();
    let (title, organizer) = if private {
        (words.private.to_string(), None)
    } else {
        match show {
            RoomShow::Subject => (
                subject
                    .map(str::to_string)
                    .or_else(|| {
                        organizer
                            .as_ref()
                            .map(|address| address.as_str().to_string())
                    })
                    .unwrap_or_else(|| words.reserved.to_string()),
                organizer,
            ),
            RoomShow::Organizer => (
                organizer
                    .as_ref()
                    .map(|address| address.as_str().to_string())
                    .unwrap_or_else(|| words.reserved.to_string()),
                organizer,
            ),
            RoomShow::Reserved => (words.reserved.to_string(), None),
        }
    };
    RoomMeeting {
        id: appointment.id.clone(),
        start: booking.start,
        end: booking.end,
        title,
        organizer,
        private,
    }
}

/// The room's state at `now`.
pub fn room_state(
    appointments: &[Appointment],
    show: RoomShow,
    locale: &Locale,
    now: Timestamp,
) -> RoomState {
    let bookings = bookings(appointments, locale);
    let running: Vec<&Booking<'_>> = bookings
        .iter()
        .filter(|booking| booking.start <= now && now < booking.end)
        .collect();
    let next = bookings.iter().find(|booking| booking.start > now);
    let next_change_at = bookings
        .iter()
        .flat_map(|booking| [booking.start, booking.end])
        .filter(|instant| *instant > now)
        .min();
    let language = locale.language;
    let words = language.words();
    let zone = locale.zone.zone();
    let now_local = zone.to_datetime(now);
    let current = running
        .iter()
        .max_by_key(|booking| booking.start)
        .map(|booking| meeting(booking, show, language));
    // While occupied: the end of the stretch of overlapping or back-to-back meetings.
    let occupied_until = running
        .iter()
        .map(|booking| booking.end)
        .max()
        .map(|mut until| {
            for booking in &bookings {
                if booking.start <= until && booking.end > until {
                    until = booking.end;
                }
            }
            until
        });
    let occupied = current.is_some();
    let free_until = if occupied {
        None
    } else {
        next.map(|booking| booking.start)
    };
    let mut note = String::new();
    match (&current, free_until) {
        (Some(current), _) => {
            note.push_str(&current.title);
            note.push(' ');
            note.push_str(words.until);
            note.push(' ');
            write_date_time(
                &mut note,
                language,
                now_local,
                zone.to_datetime(current.end),
            );
        }
        (None, Some(until)) => {
            note.push_str(words.free);
            note.push(' ');
            note.push_str(words.until);
            note.push(' ');
            write_date_time(&mut note, language, now_local, zone.to_datetime(until));
        }
        (None, None) => note.push_str(words.free),
    }
    RoomState {
        occupied,
        current,
        next: next.map(|booking| meeting(booking, show, language)),
        free_until,
        occupied_until,
        note,
        next_change_at,
    }
}

/// The meetings that hold the room in `[from, to)` (a day's agenda for a panel), in order,
/// named by `show`.
pub fn room_agenda(
    appointments: &[Appointment],
    show: RoomShow,
    locale: &Locale,
    from: Timestamp,
    to: Timestamp,
) -> Vec<RoomMeeting> {
    bookings(appointments, locale)
        .iter()
        .filter(|booking| booking.end > from && booking.start < to)
        .map(|booking| meeting(booking, show, locale.language))
        .collect()
}

/// Whether the room is free for the whole of `[from, to)`: the question "which room is free
/// for the next 30 minutes", answered from the stored calendar.
pub fn room_free_between(
    appointments: &[Appointment],
    locale: &Locale,
    from: Timestamp,
    to: Timestamp,
) -> bool {
    bookings(appointments, locale)
        .iter()
        .all(|booking| booking.end <= from || booking.start >= to)
}

/// A room search: "a free room for 8 people for the next 30 minutes in building B". Every
/// filter is optional; a room passes when it passes all that are set. Pure, so that the API
/// and the benchmark (`cargo bench -p calbridge-presence --bench rooms`) run the same code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomFilter {
    /// The building, compared without regard to case or surrounding spaces.
    pub building: Option<String>,
    pub floor: Option<i32>,
    /// At least this many seats (a room whose capacity is unknown does not pass).
    pub min_capacity: Option<u32>,
    /// Free now (`true`) or occupied now (`false`).
    pub free_now: Option<bool>,
    /// Free for the whole of `[from, to)`.
    pub free_between: Option<(Timestamp, Timestamp)>,
}

impl RoomFilter {
    /// Whether the room's details pass (building, floor, seats): no calendar needed, so a
    /// search looks at the calendars of these rooms only.
    pub fn details_match(&self, room: &calbridge_domain::RoomInfo) -> bool {
        let building = self.building.as_deref().is_none_or(|wanted| {
            room.building
                .as_deref()
                .is_some_and(|building| building.trim().eq_ignore_ascii_case(wanted.trim()))
        });
        let floor = self
            .floor
            .is_none_or(|floor| room.floor_number == Some(floor));
        let seats = self
            .min_capacity
            .is_none_or(|seats| room.capacity.is_some_and(|capacity| capacity >= seats));
        building && floor && seats
    }

    /// The room's state at `now` when the room passes every filter, else `None`.
    pub fn select(
        &self,
        room: &calbridge_domain::RoomInfo,
        appointments: &[Appointment],
        show: RoomShow,
        locale: &Locale,
        now: Timestamp,
    ) -> Option<RoomState> {
        if !self.details_match(room) {
            return None;
        }
        if let Some((from, to)) = self.free_between {
            if !room_free_between(appointments, locale, from, to) {
                return None;
            }
        }
        let state = room_state(appointments, show, locale, now);
        if self.free_now.is_some_and(|free| free == state.occupied) {
            return None;
        }
        Some(state)
    }
}

/// A room meeting under `[rooms] check_in_minutes`: released at `deadline` (start + N minutes)
/// unless someone checked it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInMeeting {
    pub id: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub deadline: Timestamp,
}

/// The meetings of a room that need a check-in when check-in takes `minutes`: those that hold
/// the room (as for [`room_state`]) and have a time of day; an all-day booking needs none, and
/// neither does a meeting that ends by its deadline (there would be nothing left to free).
pub fn check_in_meetings(
    appointments: &[Appointment],
    locale: &Locale,
    minutes: u32,
) -> Vec<CheckInMeeting> {
    let after = jiff::SignedDuration::from_mins(i64::from(minutes));
    bookings(appointments, locale)
        .into_iter()
        .filter(|booking| {
            matches!(
                booking.appointment.time,
                calbridge_domain::AppointmentTime::Timed { .. }
            )
        })
        .filter_map(|booking| {
            let deadline = booking.start.checked_add(after).ok()?;
            (deadline < booking.end).then(|| CheckInMeeting {
                id: booking.appointment.id.clone(),
                start: booking.start,
                end: booking.end,
                deadline,
            })
        })
        .collect()
}

/// The meeting a check-in at `now` is for: the earliest one not yet `settled` (checked in or
/// released) whose check-in is open. Check-in opens `minutes` before the start, so people can
/// check in as they arrive, and stays open until the meeting ends.
pub fn check_in_candidate(
    meetings: &[CheckInMeeting],
    minutes: u32,
    now: Timestamp,
    settled: impl Fn(&CheckInMeeting) -> bool,
) -> Option<&CheckInMeeting> {
    let ahead = jiff::SignedDuration::from_mins(i64::from(minutes));
    meetings.iter().find(|meeting| {
        let opens = meeting.start.checked_sub(ahead).unwrap_or(meeting.start);
        opens <= now && now < meeting.end && !settled(meeting)
    })
}

/// Time only on the day the note is written, otherwise date and time (the people's grammar).
fn write_date_time(note: &mut String, language: Language, now_local: DateTime, at: DateTime) {
    if at.date() == now_local.date() {
        language.write_time(note, at);
    } else {
        language.write_date(note, at);
        note.push(' ');
        language.write_time(note, at);
    }
}
