//! One decision for a person with 10 appointments in a 48-hour window.
//! Target (issue 2): at least 1,000,000 decisions per second on one core.
//! Run: `cargo bench -p calbridge-presence --bench decide`.

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, ShowAs, ZoneName,
};
use calbridge_presence::{decide, Language, Locale, Rules};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use jiff::{Timestamp, ToSpan};

fn ten_appointments(base: Timestamp) -> Vec<Appointment> {
    let shapes = [
        (0, 60, ShowAs::Busy, "Weekly sync with the platform team"),
        (90, 30, ShowAs::Tentative, "Maybe: coffee"),
        (120, 60, ShowAs::Busy, "Kundentermin Müller GmbH"),
        (150, 90, ShowAs::Oof, "Dentist"),
        (300, 45, ShowAs::Busy, "1:1"),
        (360, 480, ShowAs::WorkingElsewhere, "Home office"),
        (600, 30, ShowAs::Free, "Lunch"),
        (1500, 60, ShowAs::Busy, "会议 Planning"),
        (1620, 120, ShowAs::Unknown, "Blocked"),
        (2000, 60, ShowAs::Busy, "Retro 🎉"),
    ];
    shapes
        .iter()
        .enumerate()
        .map(|(index, (offset, length, show_as, subject))| Appointment {
            id: format!("AAMkAGI2TG93AAA{index}"),
            time: AppointmentTime::Timed {
                start: base + (*offset as i64).minutes(),
                end: base + (*offset as i64 + *length as i64).minutes(),
            },
            show_as: *show_as,
            sensitivity: if index == 4 {
                Sensitivity::Private
            } else {
                Sensitivity::Normal
            },
            subject: Some(subject.to_string()),
            organizer: MailboxAddress::parse("boss@example.com").ok(),
            status: AppointmentStatus::Active,
        })
        .collect()
}

fn bench_decide(c: &mut Criterion) {
    let zone = ZoneName::parse("W. Europe Standard Time").expect("known zone");
    let locale = Locale::new(Language::De, zone);
    let rules = Rules::default().with_keywords(&["vacation", "Urlaub"], &["home office"]);
    let base: Timestamp = "2026-11-23T07:00:00Z".parse().expect("valid instant");
    let appointments = ten_appointments(base);
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    for (label, minutes) in [
        ("in_meeting", 130i64),
        ("free_until_next", 80),
        ("home_office", 500),
    ] {
        let now = base + minutes.minutes();
        group.bench_function(format!("10_appointments/{label}"), |b| {
            b.iter(|| decide(black_box(&appointments), &rules, &locale, black_box(now)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
