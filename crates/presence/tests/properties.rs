//! Property tests: invariants of the engine over random calendars.

mod common;

use calbridge_domain::{Appointment, AppointmentStatus, AppointmentTime, Sensitivity, ShowAs};
use calbridge_presence::{decide, Language, Locale, Rules, SubjectVisibility};
use common::*;
use jiff::{Timestamp, ToSpan};
use proptest::prelude::*;

/// Titles exercising ASCII, umlauts, CJK, emoji and combining marks. None contains the
/// secret marker, so a marker in the output can only come from a hidden title.
const TITLES: &[&str] = &[
    "Weekly",
    "Besprechung Müller",
    "会议室 A",
    "Party 🎉🎂",
    "Cafe\u{301} au lait",
    "Vacation",
    "Home office",
    "Quux Sync",
];
const SECRET: &str = "SECRET-Ω";

fn base() -> Timestamp {
    at("2026-03-28T00:00")
}

fn appointment_strategy() -> impl Strategy<Value = Appointment> {
    (
        0i64..(4 * 96),           // start in quarter hours over four days around a DST change
        1i64..(2 * 96),           // length in quarter hours
        0usize..6,                // show-as
        0usize..4,                // sensitivity
        0usize..TITLES.len() + 1, // title, or the secret for a private one
        any::<bool>(),            // all-day
        0usize..10,               // status: mostly active
        0usize..1000,             // id
    )
        .prop_map(
            |(start, length, show_as, sensitivity, title, all_day, status, id)| {
                let show_as = [
                    ShowAs::Free,
                    ShowAs::Tentative,
                    ShowAs::Busy,
                    ShowAs::Oof,
                    ShowAs::WorkingElsewhere,
                    ShowAs::Unknown,
                ][show_as];
                let sensitivity = [
                    Sensitivity::Normal,
                    Sensitivity::Personal,
                    Sensitivity::Private,
                    Sensitivity::Confidential,
                ][sensitivity];
                // The secret title only ever goes on private or confidential appointments.
                let subject = if title == TITLES.len() {
                    if sensitivity.hides_subject() {
                        SECRET.to_string()
                    } else {
                        TITLES[0].to_string()
                    }
                } else {
                    TITLES[title].to_string()
                };
                let start_at = base() + (start * 15).minutes();
                let time = if all_day {
                    let first_day = berlin().zone().to_datetime(start_at).date();
                    let days = (length / 96).clamp(1, 3) as i8;
                    AppointmentTime::AllDay {
                        first_day,
                        end_day: first_day.checked_add(jiff::Span::new().days(days)).unwrap(),
                    }
                } else {
                    AppointmentTime::Timed {
                        start: start_at,
                        end: start_at + (length * 15).minutes(),
                    }
                };
                Appointment {
                    id: format!("id{id}"),
                    time,
                    show_as,
                    sensitivity,
                    subject: Some(subject),
                    organizer: None,
                    status: if status == 0 {
                        AppointmentStatus::Cancelled
                    } else {
                        AppointmentStatus::Active
                    },
                }
            },
        )
}

fn rules_strategy() -> impl Strategy<Value = Rules> {
    (any::<bool>(), any::<bool>()).prop_map(|(hidden, keywords)| {
        let mut rules = Rules::default();
        if hidden {
            rules.subjects = SubjectVisibility::Hidden;
        }
        if keywords {
            rules = rules.with_keywords(&["vacation"], &["home office"]);
        }
        rules
    })
}

fn language_strategy() -> impl Strategy<Value = Language> {
    prop_oneof![
        Just(Language::En),
        Just(Language::EnUs),
        Just(Language::De),
        Just(Language::Fr)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn len_and_next_positions_index_the_exact_shown_text(
        appointments in prop::collection::vec(appointment_strategy(), 0..8),
        rules in rules_strategy(),
        language in language_strategy(),
        now_minutes in 0i64..(5 * 24 * 60),
    ) {
        let now = base() + now_minutes.minutes();
        let decision = decide(&appointments, &rules, &Locale::new(language, berlin()), now);
        let note = &decision.note;
        if let Some(numbers) = tag_numbers(note, "len") {
            let current = decision.current.as_ref().expect("#len only with a current appointment");
            prop_assert_eq!(numbers.len(), 2);
            prop_assert_eq!(chars_slice(note, 0, numbers[0]), current.shown_as.clone());
            prop_assert_eq!(&note[..numbers[1]], current.shown_as.as_str());
        }
        if let Some(numbers) = tag_numbers(note, "next") {
            let next = decision.next.as_ref().expect("#next only with a next appointment");
            prop_assert_eq!(numbers.len(), 4);
            prop_assert_eq!(chars_slice(note, numbers[0], numbers[1]), next.shown_as.clone());
            prop_assert_eq!(&note[numbers[2]..numbers[2] + numbers[3]], next.shown_as.as_str());
        }
    }

    #[test]
    fn hidden_subjects_never_appear_anywhere_in_the_output(
        appointments in prop::collection::vec(appointment_strategy(), 0..8),
        rules in rules_strategy(),
        now_minutes in 0i64..(5 * 24 * 60),
    ) {
        let now = base() + now_minutes.minutes();
        let decision = decide(&appointments, &rules, &Locale::new(Language::En, berlin()), now);
        let everything = format!("{} {} {:?}", decision.note, decision.explain(), decision);
        prop_assert!(!everything.contains(SECRET), "{}", everything);
        if rules.subjects == SubjectVisibility::Hidden {
            for title in TITLES {
                prop_assert!(!decision.note.contains(title), "{}", decision.note);
                prop_assert!(!decision.explain().contains(title));
            }
        }
    }

    #[test]
    fn nothing_changes_between_now_and_next_change_at(
        appointments in prop::collection::vec(appointment_strategy(), 0..8),
        rules in rules_strategy(),
        language in language_strategy(),
        now_minutes in 0i64..(5 * 24 * 60),
        fractions in prop::collection::vec(0.0f64..1.0, 4),
    ) {
        let locale = Locale::new(language, berlin());
        let now = base() + now_minutes.minutes() + 17.seconds();
        let decision = decide(&appointments, &rules, &locale, now);
        if let Some(next_change_at) = decision.next_change_at {
            prop_assert!(next_change_at > now);
            let gap = next_change_at.as_second() - now.as_second();
            let mut probes: Vec<i64> = fractions.iter().map(|f| (gap as f64 * f) as i64).collect();
            probes.push(gap - 1);
            for offset in probes.into_iter().filter(|offset| *offset >= 0 && *offset < gap) {
                let later = now + offset.seconds();
                let again = decide(&appointments, &rules, &locale, later);
                prop_assert!(
                    again.same_presence(&decision),
                    "at {} (next change {}): {:?} became {:?}", later, next_change_at, decision.note, again.note
                );
            }
        } else {
            // Nothing known changes it: the same holds a week later.
            let later = decide(&appointments, &rules, &locale, now + 168.hours());
            prop_assert!(later.same_presence(&decision));
        }
    }
}
