//! A room's state from its calendar: occupied stretches, the next meeting, the note in each
//! language, the naming policy, private meetings, and the instant of the next change.

mod common;

use calbridge_domain::ShowAs;
use calbridge_presence::{room_free_between, room_state, Language, RoomFilter, RoomShow};
use common::*;
use jiff::Timestamp;
use proptest::prelude::*;

fn day() -> Vec<calbridge_domain::Appointment> {
    vec![
        organised_by(
            timed(
                "a",
                "Sprint planning",
                "2026-12-07T09:00",
                "2026-12-07T10:00",
                ShowAs::Busy,
            ),
            "ann.berg@contoso.example",
        ),
        // Back to back with the first, then a gap.
        private(timed(
            "b",
            "Salary talk",
            "2026-12-07T10:00",
            "2026-12-07T10:30",
            ShowAs::Busy,
        )),
        // Not accepted yet: a room shows it tentative, and it holds the room.
        timed(
            "c",
            "Workshop",
            "2026-12-07T13:00",
            "2026-12-07T14:30",
            ShowAs::Tentative,
        ),
        cancelled(timed(
            "d",
            "Cancelled",
            "2026-12-07T15:00",
            "2026-12-07T16:00",
            ShowAs::Busy,
        )),
        timed(
            "e",
            "Shown as free",
            "2026-12-07T16:00",
            "2026-12-07T17:00",
            ShowAs::Free,
        ),
    ]
}

#[test]
fn a_free_room_says_until_when_and_an_occupied_one_until_the_end_of_the_stretch() {
    let english = locale(Language::En);
    let early = room_state(&day(), RoomShow::Reserved, &english, at("2026-12-07T08:15"));
    assert!(!early.occupied);
    assert_eq!(early.note, "Free until 09:00");
    assert_eq!(early.free_until, Some(at("2026-12-07T09:00")));
    assert_eq!(
        early.next.as_ref().map(|m| m.title.as_str()),
        Some("Reserved")
    );
    assert_eq!(early.next_change_at, Some(at("2026-12-07T09:00")));

    let planning = room_state(&day(), RoomShow::Reserved, &english, at("2026-12-07T09:00"));
    assert!(planning.occupied);
    assert_eq!(planning.note, "Reserved until 10:00");
    // The private talk follows at once: the room is free only at 10:30.
    assert_eq!(planning.occupied_until, Some(at("2026-12-07T10:30")));
    assert_eq!(planning.free_until, None);
    assert_eq!(planning.next_change_at, Some(at("2026-12-07T10:00")));
    assert_eq!(
        planning.current.as_ref().and_then(|m| m.organizer.clone()),
        None
    );

    let talk = room_state(&day(), RoomShow::Subject, &english, at("2026-12-07T10:10"));
    assert_eq!(talk.note, "Private until 10:30");
    let current = talk.current.expect("the talk");
    assert!(current.private);
    assert_eq!(current.organizer, None);
    assert_eq!(talk.next.map(|m| m.title), Some("Workshop".to_string()));

    // The cancelled and the free appointments do not hold the room.
    let afternoon = room_state(&day(), RoomShow::Subject, &english, at("2026-12-07T14:30"));
    assert!(!afternoon.occupied);
    assert_eq!(afternoon.note, "Free");
    assert_eq!(afternoon.free_until, None);
    assert_eq!(afternoon.next_change_at, None);
    assert!(room_free_between(
        &day(),
        &english,
        at("2026-12-07T14:30"),
        at("2026-12-07T18:00")
    ));
    assert!(!room_free_between(
        &day(),
        &english,
        at("2026-12-07T12:45"),
        at("2026-12-07T13:15")
    ));
    assert!(room_free_between(
        &day(),
        &english,
        at("2026-12-07T10:30"),
        at("2026-12-07T13:00")
    ));
}

#[test]
fn the_policy_names_the_meeting_and_each_language_has_its_words() {
    let at_nine = at("2026-12-07T09:30");
    let note = |show: RoomShow, language: Language| {
        room_state(&day(), show, &locale(language), at_nine).note
    };
    assert_eq!(
        note(RoomShow::Subject, Language::En),
        "Sprint planning until 10:00"
    );
    assert_eq!(
        note(RoomShow::Organizer, Language::En),
        "ann.berg@contoso.example until 10:00"
    );
    assert_eq!(
        note(RoomShow::Reserved, Language::De),
        "Reserviert bis 10:00"
    );
    assert_eq!(
        note(RoomShow::Reserved, Language::Fr),
        "Réservé jusqu'à 10:00"
    );
    assert_eq!(
        note(RoomShow::Reserved, Language::EnUs),
        "Reserved until 10:00 a.m."
    );
    // The next day's first meeting is written with its date.
    let evening = room_state(
        &day(),
        RoomShow::Reserved,
        &locale(Language::De),
        at("2026-12-06T20:00"),
    );
    assert_eq!(evening.note, "Frei bis 07.12.2026 09:00");
}

fn room(
    address: &str,
    building: &str,
    floor: i32,
    capacity: Option<u32>,
) -> calbridge_domain::RoomInfo {
    calbridge_domain::RoomInfo {
        building: Some(building.to_string()),
        floor_number: Some(floor),
        capacity,
        ..calbridge_domain::RoomInfo::new(calbridge_domain::MailboxAddress::parse(address).unwrap())
    }
}

#[test]
fn a_room_search_passes_rooms_that_pass_every_filter_set() {
    let english = locale(Language::En);
    let b2 = room("b2.1@contoso.example", "Building B", 2, Some(8));
    let unknown_seats = room("b2.2@contoso.example", "Building B", 2, None);
    let search = RoomFilter {
        building: Some(" building b ".to_string()),
        min_capacity: Some(8),
        free_between: Some((at("2026-12-07T10:30"), at("2026-12-07T11:00"))),
        ..RoomFilter::default()
    };
    // Free 10:30–13:00 in `day()`: passes, with its state at 10:40.
    let state = search
        .select(
            &b2,
            &day(),
            RoomShow::Reserved,
            &english,
            at("2026-12-07T10:40"),
        )
        .expect("free for the half hour");
    assert!(!state.occupied);
    assert!(search.details_match(&b2));
    assert!(
        !search.details_match(&unknown_seats),
        "unknown capacity is not enough seats"
    );
    // 10:00–10:30 is the private meeting: not free.
    let earlier = RoomFilter {
        free_between: Some((at("2026-12-07T10:00"), at("2026-12-07T10:30"))),
        ..search.clone()
    };
    assert!(earlier
        .select(
            &b2,
            &day(),
            RoomShow::Reserved,
            &english,
            at("2026-12-07T10:40")
        )
        .is_none());
    for (filter, passes) in [
        (
            RoomFilter {
                floor: Some(3),
                ..RoomFilter::default()
            },
            false,
        ),
        (
            RoomFilter {
                floor: Some(2),
                ..RoomFilter::default()
            },
            true,
        ),
        (
            RoomFilter {
                building: Some("Building A".to_string()),
                ..RoomFilter::default()
            },
            false,
        ),
        (
            RoomFilter {
                min_capacity: Some(9),
                ..RoomFilter::default()
            },
            false,
        ),
        (
            RoomFilter {
                free_now: Some(false),
                ..RoomFilter::default()
            },
            false,
        ),
        (
            RoomFilter {
                free_now: Some(true),
                ..RoomFilter::default()
            },
            true,
        ),
    ] {
        assert_eq!(
            filter
                .select(
                    &b2,
                    &day(),
                    RoomShow::Reserved,
                    &english,
                    at("2026-12-07T10:40")
                )
                .is_some(),
            passes,
            "{filter:?}"
        );
    }
}

proptest! {
    /// A search over a generated building answers what minute-by-minute inspection of every
    /// room's calendar answers.
    #[test]
    fn a_room_search_equals_looking_at_every_minute(
        rooms in proptest::collection::vec(
            (0usize..3, 0i32..4, proptest::option::of(2u32..20),
             proptest::collection::vec((0u32..40, 1u32..8, any::<bool>()), 0..6)),
            1..12,
        ),
        building in 0usize..3,
        seats in proptest::option::of(2u32..20),
        from_step in 0u32..100,
        minutes in 1u32..180,
        free_now in proptest::option::of(any::<bool>()),
    ) {
        let english = locale(Language::En);
        let clock = |minutes: u32| at("2026-12-07T08:00") + jiff::SignedDuration::from_mins(i64::from(minutes));
        let from = clock(from_step * 5);
        let to = from + jiff::SignedDuration::from_mins(i64::from(minutes));
        let now = from;
        let search = RoomFilter {
            building: Some(format!("Building {building}")),
            min_capacity: seats,
            free_between: Some((from, to)),
            free_now,
            ..RoomFilter::default()
        };
        for (index, (in_building, floor, capacity, meetings)) in rooms.iter().enumerate() {
            let info = room(&format!("room.{index}@contoso.example"), &format!("building {in_building}"), *floor, *capacity);
            let spans: Vec<(u32, u32, bool)> = meetings
                .iter()
                .map(|(start, length, free)| (start * 15, start * 15 + length * 15, *free))
                .collect();
            let appointments: Vec<_> = spans
                .iter()
                .enumerate()
                .map(|(n, (start, end, free))| {
                    let mut appointment = timed(&format!("m{n}"), "Meeting", "2026-12-07T08:00", "2026-12-07T09:00", if *free { ShowAs::Free } else { ShowAs::Busy });
                    appointment.time = calbridge_domain::AppointmentTime::Timed { start: clock(*start), end: clock(*end) };
                    appointment
                })
                .collect();
            let held_at = |minute: Timestamp| spans.iter().any(|(start, end, free)| !free && clock(*start) <= minute && minute < clock(*end));
            let mut minute = from;
            let mut free_throughout = true;
            while minute < to {
                free_throughout &= !held_at(minute);
                minute += jiff::SignedDuration::from_mins(1);
            }
            let seats_enough =
                seats.is_none_or(|seats| capacity.is_some_and(|capacity| capacity >= seats));
            let expected = *in_building == building
                && seats_enough
                && free_throughout
                && free_now.is_none_or(|free| free != held_at(now));
            prop_assert_eq!(
                search.select(&info, &appointments, RoomShow::Reserved, &english, now).is_some(),
                expected
            );
        }
    }
}

proptest! {
    /// Whatever the calendar, the state holds until `next_change_at` and the room is
    /// occupied exactly when no free span starts at now.
    #[test]
    fn the_state_is_constant_until_the_next_change(
        meetings in proptest::collection::vec((0u32..48, 1u32..8, any::<bool>()), 0..8),
        probe in 0u32..(48 * 4),
    ) {
        let appointments: Vec<_> = meetings
            .iter()
            .enumerate()
            .map(|(index, (start, length, tentative))| {
                let start_minutes = start * 15;
                let end_minutes = start_minutes + length * 15;
                let clock = |minutes: u32| format!("2026-12-07T{:02}:{:02}", 8 + minutes / 60, minutes % 60);
                timed(
                    &format!("m{index}"),
                    "Meeting",
                    &clock(start_minutes),
                    &clock(end_minutes),
                    if *tentative { ShowAs::Tentative } else { ShowAs::Busy },
                )
            })
            .collect();
        let english = locale(Language::En);
        let now = at("2026-12-07T08:00") + jiff::SignedDuration::from_mins(i64::from(probe) * 5);
        let state = room_state(&appointments, RoomShow::Reserved, &english, now);
        let one_second = jiff::SignedDuration::from_secs(1);
        prop_assert_eq!(
            state.occupied,
            !room_free_between(&appointments, &english, now, now + one_second)
        );
        if let Some(change) = state.next_change_at {
            prop_assert!(change > now);
            let before = room_state(&appointments, RoomShow::Reserved, &english, change - one_second);
            prop_assert_eq!(&before.note, &state.note);
            prop_assert_eq!(before.occupied, state.occupied);
        }
        if let Some(until) = state.occupied_until {
            prop_assert!(until > now);
            prop_assert!(!room_free_between(&appointments, &english, now, until));
            prop_assert!(!room_state(&appointments, RoomShow::Reserved, &english, until).occupied);
        }
        if let Some(until) = state.free_until {
            prop_assert!(room_free_between(&appointments, &english, now, until));
        }
    }
}

#[test]
fn check_in_applies_to_timed_meetings_that_outlast_the_deadline_and_opens_before_the_start() {
    let english = locale(Language::En);
    let mut calendar = day();
    // Shorter than the check-in time: it would be over before anything could be freed.
    calendar.push(timed(
        "short",
        "Quick sync",
        "2026-12-07T11:00",
        "2026-12-07T11:10",
        ShowAs::Busy,
    ));
    calendar.push(all_day(
        "holiday",
        "Closed",
        (2026, 12, 8),
        (2026, 12, 9),
        ShowAs::Busy,
    ));
    let meetings = calbridge_presence::check_in_meetings(&calendar, &english, 10);
    let described: Vec<(String, Timestamp, Timestamp)> = meetings
        .iter()
        .map(|meeting| (meeting.id.clone(), meeting.start, meeting.deadline))
        .collect();
    // Cancelled "d", free "e", the short meeting and the all-day booking need no check-in.
    assert_eq!(
        described,
        vec![
            (
                "a".to_string(),
                at("2026-12-07T09:00"),
                at("2026-12-07T09:10")
            ),
            (
                "b".to_string(),
                at("2026-12-07T10:00"),
                at("2026-12-07T10:10")
            ),
            (
                "c".to_string(),
                at("2026-12-07T13:00"),
                at("2026-12-07T13:10")
            ),
        ]
    );
    let candidate = |now: &str, settled: &[&str]| {
        calbridge_presence::check_in_candidate(&meetings, 10, at(now), |meeting| {
            settled.contains(&meeting.id.as_str())
        })
        .map(|meeting| meeting.id.clone())
    };
    assert_eq!(
        candidate("2026-12-07T08:49", &[]),
        None,
        "opens 10 minutes before"
    );
    assert_eq!(candidate("2026-12-07T08:50", &[]).as_deref(), Some("a"));
    // Back to back: once "a" is checked in, the next one can be checked in 10 minutes ahead.
    assert_eq!(candidate("2026-12-07T09:49", &["a"]), None);
    assert_eq!(candidate("2026-12-07T09:50", &["a"]).as_deref(), Some("b"));
    assert_eq!(candidate("2026-12-07T09:55", &[]).as_deref(), Some("a"));
    assert_eq!(
        candidate("2026-12-07T10:30", &["a"]),
        None,
        "over at its end"
    );
    assert_eq!(candidate("2026-12-07T12:59", &[]).as_deref(), Some("c"));
}
