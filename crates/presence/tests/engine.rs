//! Table tests of the presence engine: every rule of the seeds and every example of the
//! presence-string grammar (with the seed's slips corrected, see docs/presence.md).

mod common;

use calbridge_domain::{ShowAs, ZoneName};
use calbridge_presence::{
    decide, timeline, Activity, Language, Locale, MappedPresence, Reason, Rules, SubjectVisibility,
};
use common::*;

fn en() -> Locale {
    locale(Language::En)
}

#[test]
fn no_appointments_is_plain_free_without_tags() {
    let decision = decide(&[], &Rules::default(), &en(), at("2026-11-23T09:00"));
    assert_eq!(decision.activity, Activity::Available);
    assert_eq!(decision.note, "Free");
    assert_eq!(decision.until, None);
    assert_eq!(decision.next_change_at, None);
    assert_eq!(decision.why.reason, Reason::NothingAhead);
}

#[test]
fn free_until_the_next_meeting_matches_the_seed_example() {
    let meeting = timed(
        "m1",
        "Meeting with Caption Sparrow",
        "2017-08-21T10:30",
        "2017-08-21T12:30",
        ShowAs::Busy,
    );
    let decision = decide(&[meeting], &Rules::default(), &en(), at("2017-08-21T09:00"));
    assert_eq!(
        decision.note,
        format!(
            "Free until 10:30 (Busy: Meeting with Caption Sparrow) #free #until:{} #next-activity:busy #next:24:28:24:28",
            secs("2017-08-21T10:30")
        )
    );
    assert_eq!(decision.activity, Activity::Available);
    assert_eq!(decision.until, Some(at("2017-08-21T10:30")));
    assert_eq!(decision.next_change_at, Some(at("2017-08-21T10:30")));
    assert_eq!(decision.next.as_ref().unwrap().id, "m1");
    assert_eq!(decision.why.reason, Reason::FreeUntilNext);
}

#[test]
fn running_meeting_shows_its_title_until_its_end_as_in_the_seed() {
    let meeting = timed(
        "m1",
        "Meeting with Caption Sparrow",
        "2017-08-21T10:30",
        "2017-08-21T12:30",
        ShowAs::Busy,
    );
    let decision = decide(&[meeting], &Rules::default(), &en(), at("2017-08-21T11:00"));
    assert_eq!(
        decision.note,
        format!(
            "Meeting with Caption Sparrow until 12:30 #busy #len:28:28 #until:{}",
            secs("2017-08-21T12:30")
        )
    );
    assert_eq!(decision.activity, Activity::Busy);
    assert_eq!(decision.why.reason, Reason::OnlyAppointment);
}

#[test]
fn upcoming_whole_day_appointment_shows_only_its_date() {
    let christmas = all_day(
        "x",
        "Christmas",
        (2017, 12, 24),
        (2017, 12, 27),
        ShowAs::Busy,
    );
    let decision = decide(
        &[christmas],
        &Rules::default(),
        &en(),
        at("2017-12-23T10:00"),
    );
    assert_eq!(
        decision.note,
        format!(
            "Free until 24/12/2017 (Busy: Christmas) #free #until:{} #whole-day #next-activity:busy #next:29:9:29:9",
            secs("2017-12-24T00:00")
        )
    );
}

#[test]
fn running_whole_day_appointment_lasts_until_the_date_it_ends() {
    let christmas = all_day(
        "x",
        "Christmas",
        (2017, 12, 24),
        (2017, 12, 27),
        ShowAs::Busy,
    );
    let decision = decide(
        &[christmas],
        &Rules::default(),
        &locale(Language::De),
        at("2017-12-25T10:00"),
    );
    assert_eq!(
        decision.note,
        format!(
            "Christmas bis 27.12.2017 #busy #len:9:9 #until:{} #whole-day",
            secs("2017-12-27T00:00")
        )
    );
    // The date is written as a date on every day, so midnight changes nothing.
    assert_eq!(decision.next_change_at, Some(at("2017-12-27T00:00")));
}

#[test]
fn appointment_ending_on_another_day_shows_date_and_time() {
    let sleeping = timed(
        "s",
        "Sleeping",
        "2017-08-21T22:00",
        "2017-08-22T07:00",
        ShowAs::Oof,
    );
    let decision = decide(
        &[sleeping],
        &Rules::default(),
        &locale(Language::De),
        at("2017-08-21T23:00"),
    );
    assert_eq!(
        decision.note,
        format!(
            "Sleeping bis 22.08.2017 07:00 #away #len:8:8 #until:{}",
            secs("2017-08-22T07:00")
        )
    );
    assert_eq!(decision.activity, Activity::Away);
    // At midnight "22.08.2017 07:00" becomes today's "07:00".
    assert_eq!(decision.next_change_at, Some(at("2017-08-22T00:00")));
    let after_midnight = decide(
        &[timed(
            "s",
            "Sleeping",
            "2017-08-21T22:00",
            "2017-08-22T07:00",
            ShowAs::Oof,
        )],
        &Rules::default(),
        &locale(Language::De),
        at("2017-08-22T00:00"),
    );
    assert!(
        after_midnight.note.starts_with("Sleeping bis 07:00 #away"),
        "{}",
        after_midnight.note
    );
}

#[test]
fn german_words_count_umlauts_as_one_character_and_two_bytes() {
    let meeting = timed(
        "m",
        "Meeting",
        "2026-11-23T10:30",
        "2026-11-23T11:00",
        ShowAs::Busy,
    );
    let decision = decide(
        &[meeting],
        &Rules::default(),
        &locale(Language::De),
        at("2026-11-23T09:00"),
    );
    assert_eq!(
        decision.note,
        format!(
            "Frei bis 10:30 (Beschäftigt: Meeting) #free #until:{} #next-activity:busy #next:29:7:30:7",
            secs("2026-11-23T10:30")
        )
    );
}

#[test]
fn non_ascii_titles_are_measured_in_characters_and_bytes() {
    let title = "Café ☕ 会议 🎉";
    let meeting = timed(
        "m",
        title,
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Busy,
    );
    let now = decide(
        std::slice::from_ref(&meeting),
        &Rules::default(),
        &en(),
        at("2026-11-23T10:15"),
    );
    assert_eq!(
        now.note,
        format!(
            "{title} until 11:00 #busy #len:11:21 #until:{}",
            secs("2026-11-23T11:00")
        )
    );
    let before = decide(&[meeting], &Rules::default(), &en(), at("2026-11-23T09:00"));
    let numbers = tag_numbers(&before.note, "next").unwrap();
    assert_eq!(numbers, vec![24, 11, 24, 21]);
    assert_eq!(&before.note[24..45], title);
    assert_eq!(chars_slice(&before.note, 24, 11), title);
}

#[test]
fn private_and_confidential_appointments_never_show_their_title() {
    let secret = private(timed(
        "p",
        "Divorce lawyer",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Busy,
    ));
    let mut confidential = timed(
        "c",
        "Job interview",
        "2026-11-23T12:00",
        "2026-11-23T13:00",
        ShowAs::Busy,
    );
    confidential.sensitivity = calbridge_domain::Sensitivity::Confidential;
    let appointments = [secret, confidential];
    let before = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T09:00"),
    );
    assert!(
        before
            .note
            .starts_with("Free until 10:00 (Busy: Private) #free"),
        "{}",
        before.note
    );
    let during = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T10:30"),
    );
    assert!(
        during
            .note
            .starts_with("Private until 11:00 #busy #len:7:7"),
        "{}",
        during.note
    );
    let second = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T12:30"),
    );
    assert!(
        second.note.starts_with("Private until 13:00"),
        "{}",
        second.note
    );
    for decision in [&before, &during, &second] {
        let everything = format!("{} {} {:?}", decision.note, decision.explain(), decision);
        assert!(
            !everything.contains("Divorce") && !everything.contains("Job interview"),
            "{everything}"
        );
    }
}

#[test]
fn hidden_subjects_show_the_activity_word_instead() {
    let rules = Rules {
        subjects: SubjectVisibility::Hidden,
        ..Rules::default()
    };
    let meeting = timed(
        "m",
        "Board meeting",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Busy,
    );
    let trip = timed(
        "t",
        "Trip",
        "2026-11-23T12:00",
        "2026-11-23T13:00",
        ShowAs::Oof,
    );
    let appointments = [meeting, trip];
    let before = decide(&appointments, &rules, &en(), at("2026-11-23T09:00"));
    assert_eq!(
        before.note,
        format!(
            "Free until 10:00 (Busy) #free #until:{} #next-activity:busy #next:18:4:18:4",
            secs("2026-11-23T10:00")
        )
    );
    let during = decide(&appointments, &rules, &en(), at("2026-11-23T10:00"));
    assert!(
        during.note.starts_with("Busy until 11:00 #busy #len:4:4"),
        "{}",
        during.note
    );
    let away = decide(
        &appointments,
        &rules,
        &locale(Language::De),
        at("2026-11-23T12:00"),
    );
    assert!(
        away.note.starts_with("Abwesend bis 13:00 #away #len:8:8"),
        "{}",
        away.note
    );
}

#[test]
fn cancelled_and_free_appointments_never_count() {
    let gone = cancelled(timed(
        "c",
        "Cancelled",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Busy,
    ));
    let free = timed(
        "f",
        "Lunch",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Free,
    );
    let decision = decide(
        &[gone, free],
        &Rules::default(),
        &en(),
        at("2026-11-23T10:30"),
    );
    assert_eq!(decision.note, "Free");
    assert_eq!(decision.why.not_counted, 2);
}

#[test]
fn tentative_is_ignored_unless_the_organizer_is_an_exception() {
    let rules = Rules {
        tentative_exception_organizers: vec![calbridge_domain::MailboxAddress::parse(
            "HR@example.com",
        )
        .unwrap()],
        ..Rules::default()
    };
    let maybe = timed(
        "t",
        "Maybe",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Tentative,
    );
    let sick = organised_by(
        timed(
            "s",
            "Sick",
            "2026-11-24T08:00",
            "2026-11-24T17:00",
            ShowAs::Tentative,
        ),
        "hr@example.com",
    );
    let decision = decide(
        &[maybe.clone(), sick.clone()],
        &rules,
        &en(),
        at("2026-11-23T10:30"),
    );
    assert!(
        decision
            .note
            .starts_with("Free until 24/11/2026 08:00 (Away: Sick)"),
        "{}",
        decision.note
    );
    let sick_now = decide(&[maybe, sick], &rules, &en(), at("2026-11-24T09:00"));
    assert_eq!(sick_now.activity, Activity::Away);
    assert_eq!(
        sick_now.current.unwrap().category.mapping_key(),
        "tentative_exception"
    );
}

#[test]
fn working_elsewhere_shows_its_title_in_the_free_form() {
    let home = timed(
        "h",
        "Homeoffice",
        "2026-11-23T08:00",
        "2026-11-23T17:00",
        ShowAs::WorkingElsewhere,
    );
    let meeting = timed(
        "m",
        "Meeting",
        "2026-11-23T14:00",
        "2026-11-23T15:00",
        ShowAs::Busy,
    );
    let decision = decide(
        &[home, meeting],
        &Rules::default(),
        &en(),
        at("2026-11-23T09:00"),
    );
    assert_eq!(decision.activity, Activity::Available);
    assert_eq!(
        decision.note,
        format!(
            "Homeoffice until 14:00 (Busy: Meeting) #free #len:10:10 #until:{} #next-activity:busy #next:30:7:30:7",
            secs("2026-11-23T14:00")
        )
    );
}

#[test]
fn every_mapping_target_is_honoured() {
    let unknown = timed(
        "u",
        "Blocked",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Unknown,
    );
    let default = decide(
        std::slice::from_ref(&unknown),
        &Rules::default(),
        &en(),
        at("2026-11-23T10:30"),
    );
    assert_eq!(
        default.activity,
        Activity::Busy,
        "no_data maps to busy by default"
    );
    let mut rules = Rules::default();
    rules.mapping.no_data = MappedPresence::Dnd;
    let dnd = decide(
        std::slice::from_ref(&unknown),
        &rules,
        &en(),
        at("2026-11-23T10:30"),
    );
    assert_eq!(dnd.activity, Activity::Dnd);
    assert!(
        dnd.note.contains(" #busy "),
        "dnd is tagged busy in the grammar: {}",
        dnd.note
    );
    rules.mapping.no_data = MappedPresence::Ignore;
    assert_eq!(
        decide(&[unknown], &rules, &en(), at("2026-11-23T10:30")).note,
        "Free"
    );
    let mut oof_busy = Rules::default();
    oof_busy.mapping.oof = MappedPresence::Busy;
    let trip = timed(
        "t",
        "Trip",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Oof,
    );
    assert_eq!(
        decide(&[trip], &oof_busy, &en(), at("2026-11-23T10:30")).activity,
        Activity::Busy
    );
}

#[test]
fn priority_keyword_wins_over_a_concurrent_stronger_meeting() {
    let rules = Rules::default().with_keywords(&["vacation", "Urlaub"], &["home office"]);
    let vacation = all_day(
        "v",
        "Summer vacation",
        (2026, 11, 23),
        (2026, 11, 28),
        ShowAs::Oof,
    );
    let meeting = timed(
        "m",
        "Weekly",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Busy,
    );
    let decision = decide(&[vacation, meeting], &rules, &en(), at("2026-11-23T10:30"));
    assert_eq!(decision.activity, Activity::Away);
    assert!(
        decision
            .note
            .starts_with("Summer vacation until 28/11/2026 #away"),
        "{}",
        decision.note
    );
    assert_eq!(
        decision.why.reason,
        Reason::PriorityKeyword {
            keyword: "vacation".into()
        }
    );
    assert_eq!(decision.why.outranked, 1);
    assert!(
        decision.explain().contains("priority keyword \"vacation\""),
        "{}",
        decision.explain()
    );
}

#[test]
fn no_priority_keyword_never_wins_over_a_concurrent_appointment() {
    let rules = Rules::default().with_keywords(&[], &["home office"]);
    let home = timed(
        "h",
        "Home Office",
        "2026-11-23T08:00",
        "2026-11-23T17:00",
        ShowAs::Busy,
    );
    let dentist = timed(
        "d",
        "Dentist",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Oof,
    );
    let decision = decide(
        &[home.clone(), dentist.clone()],
        &rules,
        &en(),
        at("2026-11-23T10:30"),
    );
    assert!(
        decision.note.starts_with("Dentist until 11:00 #away"),
        "{}",
        decision.note
    );
    assert_eq!(
        decision.why.reason,
        Reason::RunnerUpHasNoPriorityKeyword {
            keyword: "home office".into()
        }
    );
    // Without the rule the stronger activity (busy) shows.
    let plain = decide(
        &[home.clone(), dentist],
        &Rules::default(),
        &en(),
        at("2026-11-23T10:30"),
    );
    assert!(
        plain.note.starts_with("Home Office until 17:00 #busy"),
        "{}",
        plain.note
    );
    // Alone it still shows.
    let alone = decide(&[home], &rules, &en(), at("2026-11-23T12:00"));
    assert!(
        alone.note.starts_with("Home Office until 17:00"),
        "{}",
        alone.note
    );
}

#[test]
fn overlapping_meetings_hand_over_at_the_later_start() {
    let a = timed(
        "a",
        "Alpha",
        "2026-11-23T10:00",
        "2026-11-23T12:00",
        ShowAs::Busy,
    );
    let b = timed(
        "b",
        "Beta",
        "2026-11-23T11:00",
        "2026-11-23T13:00",
        ShowAs::Busy,
    );
    let appointments = [a, b];
    let first = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T10:30"),
    );
    assert!(
        first.note.starts_with("Alpha until 11:00 #busy"),
        "{}",
        first.note
    );
    assert_eq!(first.next.as_ref().unwrap().id, "b");
    let second = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T11:30"),
    );
    assert!(
        second.note.starts_with("Beta until 13:00 #busy"),
        "{}",
        second.note
    );
    assert_eq!(second.why.reason, Reason::LaterStart);
}

#[test]
fn back_to_back_meetings_switch_at_the_exact_second() {
    let a = timed(
        "a",
        "Alpha",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Busy,
    );
    let b = timed(
        "b",
        "Beta",
        "2026-11-23T11:00",
        "2026-11-23T12:00",
        ShowAs::Oof,
    );
    let appointments = [a, b];
    let during_a = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T10:30"),
    );
    assert_eq!(during_a.next_change_at, Some(at("2026-11-23T11:00")));
    assert!(
        during_a.note.starts_with("Alpha until 11:00"),
        "{}",
        during_a.note
    );
    let one_second_before = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T10:59:59"),
    );
    assert_eq!(one_second_before.activity, Activity::Busy);
    let at_boundary = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T11:00"),
    );
    assert_eq!(at_boundary.activity, Activity::Away);
    assert!(
        at_boundary.note.starts_with("Beta until 12:00 #away"),
        "{}",
        at_boundary.note
    );
    let at_end = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T12:00"),
    );
    assert_eq!(at_end.note, "Free");
}

#[test]
fn meeting_inside_a_whole_day_absence_interrupts_it() {
    let trip = all_day("t", "Trip", (2026, 11, 23), (2026, 11, 24), ShowAs::Oof);
    let call = timed(
        "c",
        "Call",
        "2026-11-23T14:00",
        "2026-11-23T15:00",
        ShowAs::Busy,
    );
    let appointments = [trip, call];
    let morning = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T09:00"),
    );
    // The absence ends for the call at 14:00: a time, so no whole-day tag.
    assert_eq!(
        morning.note,
        format!(
            "Trip until 14:00 #away #len:4:4 #until:{}",
            secs("2026-11-23T14:00")
        )
    );
    let evening = decide(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T16:00"),
    );
    assert_eq!(
        evening.note,
        format!(
            "Trip until 24/11/2026 #away #len:4:4 #until:{} #whole-day",
            secs("2026-11-24T00:00")
        )
    );
}

#[test]
fn multi_day_timed_appointment_shows_date_and_time_of_its_end() {
    let conference = timed(
        "c",
        "Conference",
        "2026-11-23T09:00",
        "2026-11-25T17:00",
        ShowAs::Busy,
    );
    let decision = decide(
        &[conference],
        &Rules::default(),
        &en(),
        at("2026-11-23T12:00"),
    );
    assert!(
        decision
            .note
            .starts_with("Conference until 25/11/2026 17:00 #busy"),
        "{}",
        decision.note
    );
    assert_eq!(decision.next_change_at, Some(at("2026-11-24T00:00")));
}

#[test]
fn free_evening_before_a_morning_meeting_drops_the_date_at_midnight() {
    let standup = timed(
        "s",
        "Standup",
        "2026-11-24T09:00",
        "2026-11-24T09:15",
        ShowAs::Busy,
    );
    let appointments = [standup];
    let changes = timeline(
        &appointments,
        &Rules::default(),
        &en(),
        at("2026-11-23T22:00"),
        at("2026-11-24T10:00"),
    );
    let notes: Vec<(String, &str)> = changes
        .iter()
        .map(|(instant, decision)| {
            (
                instant.to_string(),
                decision.note.split(" #").next().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        notes,
        vec![
            (
                "2026-11-23T21:00:00Z".to_string(),
                "Free until 24/11/2026 09:00 (Busy: Standup)"
            ),
            (
                "2026-11-23T23:00:00Z".to_string(),
                "Free until 09:00 (Busy: Standup)"
            ),
            ("2026-11-24T08:00:00Z".to_string(), "Standup until 09:15"),
            ("2026-11-24T08:15:00Z".to_string(), "Free"),
        ]
    );
}

#[test]
fn meeting_across_the_autumn_dst_change_ends_at_the_right_instant() {
    // 25 October 2026: Berlin falls back from 03:00 CEST to 02:00 CET.
    let night = timed(
        "n",
        "Night shift",
        "2026-10-25T00:00",
        "2026-10-25T04:00",
        ShowAs::Busy,
    );
    let decision = decide(&[night], &Rules::default(), &en(), at("2026-10-25T01:00"));
    assert_eq!(
        decision.note,
        format!(
            "Night shift until 04:00 #busy #len:11:11 #until:{}",
            secs("2026-10-25T04:00")
        )
    );
    // Five real hours: 00:00 CEST (22:00Z) to 04:00 CET (03:00Z).
    assert_eq!(decision.until.unwrap().to_string(), "2026-10-25T03:00:00Z");
}

#[test]
fn whole_day_appointment_on_the_spring_dst_day_covers_twenty_three_hours() {
    let holiday = all_day("h", "Holiday", (2026, 3, 29), (2026, 3, 30), ShowAs::Oof);
    let decision = decide(&[holiday], &Rules::default(), &en(), at("2026-03-29T12:00"));
    let current = decision.current.unwrap();
    assert_eq!(
        (current.end.as_second() - current.start.as_second()) / 3600,
        23
    );
    assert_eq!(decision.until.unwrap().to_string(), "2026-03-29T22:00:00Z");
}

#[test]
fn appointment_starting_now_counts_and_one_ending_now_does_not() {
    let meeting = timed(
        "m",
        "Meeting",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Busy,
    );
    let at_start = decide(
        std::slice::from_ref(&meeting),
        &Rules::default(),
        &en(),
        at("2026-11-23T10:00"),
    );
    assert_eq!(at_start.activity, Activity::Busy);
    let at_end = decide(&[meeting], &Rules::default(), &en(), at("2026-11-23T11:00"));
    assert_eq!(at_end.activity, Activity::Available);
    assert_eq!(at_end.note, "Free");
}

#[test]
fn windows_zone_names_and_us_format_are_supported() {
    let zone = ZoneName::parse("Pacific Standard Time").unwrap();
    let locale = Locale::new(Language::EnUs, zone.clone());
    let start = zone
        .zone()
        .to_ambiguous_timestamp("2026-11-23T14:30".parse().unwrap())
        .compatible()
        .unwrap();
    let end = zone
        .zone()
        .to_ambiguous_timestamp("2026-11-24T09:00".parse().unwrap())
        .compatible()
        .unwrap();
    let meeting = calbridge_domain::Appointment {
        time: calbridge_domain::AppointmentTime::Timed { start, end },
        ..timed(
            "m",
            "Review",
            "2026-11-23T00:00",
            "2026-11-23T01:00",
            ShowAs::Busy,
        )
    };
    let now = zone
        .zone()
        .to_ambiguous_timestamp("2026-11-23T09:00".parse().unwrap())
        .compatible()
        .unwrap();
    let before = decide(
        std::slice::from_ref(&meeting),
        &Rules::default(),
        &locale,
        now,
    );
    assert!(
        before
            .note
            .starts_with("Free until 02:30 p.m. (Busy: Review)"),
        "{}",
        before.note
    );
    let during = decide(&[meeting], &Rules::default(), &locale, start);
    assert!(
        during
            .note
            .starts_with("Review until 11/24/2026 09:00 a.m. #busy"),
        "{}",
        during.note
    );
}

#[test]
fn titles_with_line_breaks_are_shown_on_one_line_and_measured_as_shown() {
    let meeting = timed(
        "m",
        "  Planning\nQ1\t ",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Busy,
    );
    let decision = decide(&[meeting], &Rules::default(), &en(), at("2026-11-23T10:30"));
    assert!(
        decision
            .note
            .starts_with("Planning Q1 until 11:00 #busy #len:11:11"),
        "{}",
        decision.note
    );
}

#[test]
fn explanation_names_the_appointment_and_the_mapping_rule() {
    let home = timed(
        "h1",
        "Homeoffice",
        "2026-11-23T08:00",
        "2026-11-23T17:00",
        ShowAs::WorkingElsewhere,
    );
    let meeting = timed(
        "m1",
        "Sync",
        "2026-11-23T10:00",
        "2026-11-23T11:00",
        ShowAs::Busy,
    );
    let decision = decide(
        &[home, meeting],
        &Rules::default(),
        &en(),
        at("2026-11-23T10:15"),
    );
    let why = decision.explain();
    assert!(why.starts_with("busy: appointment `m1` \"Sync\""), "{why}");
    assert!(why.contains("presence.mapping.busy"), "{why}");
    assert!(why.contains("stronger activity"), "{why}");
    assert_eq!(decision.why.reason, Reason::StrongerActivity);
}
