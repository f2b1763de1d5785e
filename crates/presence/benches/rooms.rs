//! "A free room for 8 people for the next 30 minutes in building B" over a generated building
//! of 200 rooms (5 buildings, 8 floors, 4 to 20 seats, 6 to 12 meetings each on a working
//! day), the search `GET /api/v1/rooms` runs once its one store read is done.
//! Target (issue 14): under 10 ms for the whole search.
//! Run: `cargo bench -p calbridge-presence --bench rooms`.
//!
//! Before timing, the answer is checked against minute-by-minute inspection of every room's
//! calendar, so the figure is that of a right answer.

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, RoomInfo, Sensitivity, ShowAs,
    ZoneName,
};
use calbridge_presence::{Language, Locale, RoomFilter, RoomShow};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use jiff::{SignedDuration, Timestamp};

const ROOMS: usize = 200;
const BUILDINGS: [&str; 5] = [
    "Building A",
    "Building B",
    "Building C",
    "Building D",
    "Building E",
];
const SEATS: [u32; 7] = [4, 6, 8, 10, 12, 16, 20];

/// A small deterministic generator (xorshift64*), so that every run measures the same building.
struct Generator(u64);

impl Generator {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// The rooms and their calendars: meetings on quarter hours between 07:00 and 19:00 UTC of
/// the day of `day_start`, some tentative, some shown as free, one in twenty cancelled.
fn building(day_start: Timestamp) -> Vec<(RoomInfo, Vec<Appointment>)> {
    let mut generator = Generator(0x9e37_79b9_7f4a_7c15);
    (0..ROOMS)
        .map(|index| {
            let address =
                MailboxAddress::parse(&format!("room.{index}@contoso.example")).expect("address");
            let room = RoomInfo {
                display_name: Some(format!("Room {index}")),
                capacity: Some(SEATS[generator.below(SEATS.len() as u64) as usize]),
                building: Some(BUILDINGS[index % BUILDINGS.len()].to_string()),
                floor_number: Some(generator.below(8) as i32),
                ..RoomInfo::new(address)
            };
            let meetings = 6 + generator.below(7);
            let appointments = (0..meetings)
                .map(|n| {
                    let start = day_start
                        + SignedDuration::from_mins(7 * 60 + 15 * generator.below(48) as i64);
                    let end =
                        start + SignedDuration::from_mins(15 * (1 + generator.below(8)) as i64);
                    Appointment {
                        id: format!("AAMkRoom{index}Meeting{n}"),
                        time: AppointmentTime::Timed { start, end },
                        show_as: match generator.below(10) {
                            0 => ShowAs::Free,
                            1 => ShowAs::Tentative,
                            _ => ShowAs::Busy,
                        },
                        sensitivity: Sensitivity::Normal,
                        subject: Some("Ada Lovelace".to_string()),
                        organizer: MailboxAddress::parse("ada@contoso.example").ok(),
                        status: if generator.below(20) == 0 {
                            AppointmentStatus::Cancelled
                        } else {
                            AppointmentStatus::Active
                        },
                    }
                })
                .collect();
            (room, appointments)
        })
        .collect()
}

/// The search over every room, as the API runs it.
fn search(
    rooms: &[(RoomInfo, Vec<Appointment>)],
    filter: &RoomFilter,
    locale: &Locale,
    now: Timestamp,
) -> Vec<usize> {
    rooms
        .iter()
        .enumerate()
        .filter_map(|(index, (room, appointments))| {
            filter
                .select(room, appointments, RoomShow::Reserved, locale, now)
                .map(|_| index)
        })
        .collect()
}

/// The same answer by looking at every minute of every room's calendar.
fn by_every_minute(
    rooms: &[(RoomInfo, Vec<Appointment>)],
    building: &str,
    seats: u32,
    from: Timestamp,
    to: Timestamp,
) -> Vec<usize> {
    let utc = jiff::tz::TimeZone::UTC;
    rooms
        .iter()
        .enumerate()
        .filter(|(_, (room, appointments))| {
            let held_at = |minute: Timestamp| {
                appointments.iter().any(|appointment| {
                    let (start, end) = appointment.time.instants(&utc);
                    appointment.status == AppointmentStatus::Active
                        && appointment.show_as != ShowAs::Free
                        && start <= minute
                        && minute < end
                })
            };
            let mut minute = from;
            let mut free = true;
            while minute < to {
                free &= !held_at(minute);
                minute += SignedDuration::from_mins(1);
            }
            room.building.as_deref() == Some(building)
                && room.capacity.is_some_and(|capacity| capacity >= seats)
                && free
        })
        .map(|(index, _)| index)
        .collect()
}

fn bench_rooms(c: &mut Criterion) {
    let locale = Locale::new(Language::En, ZoneName::parse("UTC").expect("UTC"));
    let day_start: Timestamp = "2026-12-07T00:00:00Z".parse().expect("an instant");
    let rooms = building(day_start);
    let now = day_start + SignedDuration::from_mins(10 * 60 + 40);
    let to = now + SignedDuration::from_mins(30);
    let free_for_eight = RoomFilter {
        building: Some("building b".to_string()),
        min_capacity: Some(8),
        free_between: Some((now, to)),
        ..RoomFilter::default()
    };
    let found = search(&rooms, &free_for_eight, &locale, now);
    assert_eq!(
        found,
        by_every_minute(&rooms, "Building B", 8, now, to),
        "the search answers what the calendars say"
    );
    assert!(!found.is_empty(), "the building has a free room for eight");
    eprintln!(
        "{} of {ROOMS} rooms are free for 8 people from 10:40 to 11:10 in building B",
        found.len()
    );

    let mut group = c.benchmark_group("rooms_200");
    group.throughput(Throughput::Elements(1));
    group.bench_function("free_for_8_people_30_minutes_building_b", |b| {
        b.iter(|| search(black_box(&rooms), &free_for_eight, &locale, black_box(now)))
    });
    // Every room's state, no filter: what the Rooms tab asks.
    let everything = RoomFilter::default();
    group.bench_function("every_room_state", |b| {
        b.iter(|| search(black_box(&rooms), &everything, &locale, black_box(now)))
    });
    group.finish();
}

criterion_group!(benches, bench_rooms);
criterion_main!(benches);
