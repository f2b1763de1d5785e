//! `--generate-users N --seed S`: a deterministic, realistic organisation.
//!
//! Calendars are laid out around "now" (the previous, current and next working week), so a
//! demo started at any time shows meetings, and some start within minutes of the start.

use std::collections::{BTreeMap, HashMap};

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::{Timestamp, ToSpan};

use crate::calendar::{
    Attendee, AttendeeResponse, EmailAddress, EventData, Mailbox, Sensitivity, ShowAs, StoredEvent,
};
use crate::directory::{
    AppRegistration, CalendarProcessing, ClientSecret, Directory, Group, MailboxKind, Tenant, User,
    WorkingHours,
};
use crate::ews::setup::{AccountSpec, ExchangeSetup, ExchangeSpec};
use crate::faults::FaultSettings;
use crate::ids::{seeded_change_key, SeededRandom};
use crate::recurrence::{Pattern, RangeEnd, Recurrence};
use crate::scenario::{ScenarioError, SettingsSpec, World};
use crate::timefmt::{resolve_zone, NamedZone};

const FIRST_NAMES: [&str; 40] = [
    "Ada", "Ben", "Chloe", "David", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Karin",
    "Luca", "Mia", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wim",
    "Xenia", "Yusuf", "Zoe", "Anton", "Birgit", "Carlos", "Dana", "Emil", "Fatima", "Georg",
    "Hanna", "Ivan", "Julia", "Kai", "Lena", "Marco", "Nora",
];
const LAST_NAMES: [&str; 40] = [
    "Meyer",
    "Novak",
    "Rossi",
    "Schmidt",
    "Dubois",
    "Jansen",
    "Kowalski",
    "Larsen",
    "Moreau",
    "Nielsen",
    "Olsen",
    "Petrov",
    "Quist",
    "Richter",
    "Silva",
    "Toth",
    "Urban",
    "Vogel",
    "Weber",
    "Xavier",
    "Young",
    "Zimmer",
    "Bauer",
    "Costa",
    "Engel",
    "Fischer",
    "Garcia",
    "Horvat",
    "Ivanova",
    "Jovanovic",
    "Keller",
    "Lang",
    "Mendes",
    "Nagy",
    "Ortiz",
    "Popescu",
    "Roth",
    "Santos",
    "Wagner",
    "Yilmaz",
];
const DEPARTMENTS: [&str; 6] = [
    "Sales",
    "Support",
    "Engineering",
    "Finance",
    "Operations",
    "Marketing",
];
const ZONES: [(&str, u64); 5] = [
    ("W. Europe Standard Time", 70),
    ("GMT Standard Time", 10),
    ("Eastern Standard Time", 10),
    ("Pacific Standard Time", 5),
    ("Romance Standard Time", 5),
];
const MEETING_SUBJECTS: [&str; 10] = [
    "Customer call",
    "Project sync",
    "Budget review",
    "Design review",
    "Interview",
    "Quarterly planning",
    "Vendor meeting",
    "Training",
    "Release retro",
    "Support escalation",
];
const PRIVATE_SUBJECTS: [&str; 4] = [
    "Doctor's appointment",
    "Dentist",
    "Parent-teacher meeting",
    "Bank appointment",
];

pub const GENERATED_DOMAIN: &str = "contoso.example";
pub const GENERATED_ROLES: [&str; 5] = [
    "Calendars.ReadWrite",
    "User.Read.All",
    "Group.Read.All",
    "Place.Read.All",
    "full_access_as_app",
];
/// Delegated permissions of the generated app (admin-consented), for a monitor account's sign-in.
pub const GENERATED_DELEGATED_PERMISSIONS: [&str; 2] =
    ["Calendars.Read.Shared", "User.ReadBasic.All"];
/// The Graph monitor account (a directory user with a password) for delegated sign-in.
pub const GENERATED_GRAPH_MONITOR: &str = "graph.monitor@contoso.example";
/// One generated person in this many has not shared their calendar with the monitor.
pub const GENERATED_NOT_SHARED_EVERY: usize = 25;
/// The on-premises service account with ApplicationImpersonation rights.
pub const GENERATED_EWS_USER: &str = "svc.calbridge@contoso.example";
/// The on-premises monitor account with Reviewer rights on every calendar.
pub const GENERATED_EWS_DELEGATE: &str = "monitor@contoso.example";

/// EWS accounts of a generated organisation: every person (no password) plus a service account
/// with impersonation rights and a monitor account with Reviewer rights on every calendar.
fn generated_exchange(users: &[User], seed: u64) -> Result<ExchangeSetup, ScenarioError> {
    // A separate random stream, so the directory and calendars stay as they were for the seed.
    let mut random = SeededRandom::new(seed ^ 0x4557_5345_5256_4943);
    let password = |random: &mut SeededRandom| format!("Ews!{:012x}", random.next_u64() >> 16);
    let spec = ExchangeSpec {
        accounts: vec![
            AccountSpec {
                address: GENERATED_EWS_USER.to_string(),
                password: password(&mut random),
                display_name: Some("calbridge service".to_string()),
                impersonation: true,
                reviewer_of: vec![],
            },
            AccountSpec {
                address: GENERATED_EWS_DELEGATE.to_string(),
                password: password(&mut random),
                display_name: Some("Calendar monitor".to_string()),
                impersonation: false,
                reviewer_of: vec!["*".to_string()],
            },
        ],
        ..ExchangeSpec::default()
    };
    ExchangeSetup::build(&spec, users, &[]).map_err(ScenarioError::Invalid)
}

pub fn generate(n_users: usize, seed: u64, now: Timestamp) -> Result<World, ScenarioError> {
    let mut random = SeededRandom::new(seed);
    let tenant = Tenant {
        id: random.guid(),
        display_name: "Contoso (emulated)".to_string(),
        domains: vec![GENERATED_DOMAIN.to_string()],
    };
    let client_id = random.guid();
    let secret = format!("emu~{:016x}{:016x}", random.next_u64(), random.next_u64());
    let app = AppRegistration {
        tenant_index: 0,
        client_id,
        service_principal_id: random.guid(),
        display_name: "calbridge".to_string(),
        secrets: vec![ClientSecret {
            value: secret.clone(),
            expires: None,
        }],
        certificates: vec![],
        roles: GENERATED_ROLES
            .iter()
            .map(|role| role.to_string())
            .collect(),
        access_policy_group: None,
        delegated_permissions: GENERATED_DELEGATED_PERMISSIONS
            .iter()
            .map(|permission| permission.to_string())
            .collect(),
        admin_consent: true,
        redirect_uris: vec![],
        public_client: true,
    };

    let mut zones: HashMap<&str, NamedZone> = HashMap::new();
    for (name, _) in ZONES {
        zones.insert(
            name,
            resolve_zone(name).map_err(|error| ScenarioError::Invalid(error.to_string()))?,
        );
    }
    let mut users = Vec::with_capacity(n_users + 16);
    let n_rooms = (2 + n_users / 200).min(10);
    for index in 0..n_users {
        let first = FIRST_NAMES[index % FIRST_NAMES.len()];
        let last = LAST_NAMES[(index / FIRST_NAMES.len() + index * 7) % LAST_NAMES.len()];
        let round = index / (FIRST_NAMES.len() * LAST_NAMES.len());
        let suffix = if round == 0 {
            String::new()
        } else {
            round.to_string()
        };
        let local = format!(
            "{}.{}{}",
            first.to_ascii_lowercase(),
            last.to_ascii_lowercase(),
            suffix
        );
        let mail = format!("{local}@{GENERATED_DOMAIN}");
        // "last.first" is unique whenever "first.last" is; initials would collide.
        let alias = format!(
            "{}.{}{}@{GENERATED_DOMAIN}",
            last.to_ascii_lowercase(),
            first.to_ascii_lowercase(),
            suffix
        );
        let mut zone_pick = random.below(100);
        let mut zone_name = ZONES[0].0;
        for (name, weight) in ZONES {
            if zone_pick < weight {
                zone_name = name;
                break;
            }
            zone_pick -= weight;
        }
        let time_zone = zones.get(zone_name).cloned().unwrap_or_else(NamedZone::utc);
        users.push(User {
            id: random.guid(),
            tenant_index: 0,
            user_principal_name: mail.clone(),
            mail: mail.clone(),
            proxy_addresses: vec![format!("SMTP:{mail}"), format!("smtp:{alias}")],
            display_name: format!(
                "{first} {last}{}",
                if suffix.is_empty() {
                    String::new()
                } else {
                    format!(" {suffix}")
                }
            ),
            given_name: Some(first.to_string()),
            surname: Some(last.to_string()),
            job_title: Some("Specialist".to_string()),
            department: Some(DEPARTMENTS[(index / 8) % DEPARTMENTS.len()].to_string()),
            office_location: Some(format!("Building {}", 1 + index % 3)),
            time_zone,
            password: None,
            kind: MailboxKind::Person,
            has_mailbox: true,
            working_hours: WorkingHours::default(),
            calendar_processing: CalendarProcessing::default(),
        });
    }
    let berlin = zones
        .get("W. Europe Standard Time")
        .cloned()
        .unwrap_or_else(NamedZone::utc);
    for room in 0..n_rooms {
        let mail = format!("room.{}@{GENERATED_DOMAIN}", room + 1);
        users.push(User {
            id: random.guid(),
            tenant_index: 0,
            user_principal_name: mail.clone(),
            mail: mail.clone(),
            proxy_addresses: vec![format!("SMTP:{mail}")],
            display_name: format!("Meeting room {}", room + 1),
            given_name: None,
            surname: None,
            job_title: None,
            department: None,
            office_location: Some(format!("Building {}", 1 + room % 3)),
            time_zone: berlin.clone(),
            password: None,
            kind: MailboxKind::Room,
            has_mailbox: true,
            working_hours: WorkingHours::default(),
            calendar_processing: CalendarProcessing::default(),
        });
    }
    // The Graph monitor account of `auth = "delegated"`: every person shares their calendar
    // with it but one in 25 (indexes 24, 49, …), whose reads it is refused.
    let monitor_index = users.len();
    let mut monitor_random = SeededRandom::new(seed ^ 0x4752_4150_484d_4f4e);
    let monitor_password = format!("Mon!{:012x}", monitor_random.next_u64() >> 16);
    users.push(User {
        id: monitor_random.guid(),
        tenant_index: 0,
        user_principal_name: GENERATED_GRAPH_MONITOR.to_string(),
        mail: GENERATED_GRAPH_MONITOR.to_string(),
        proxy_addresses: vec![format!("SMTP:{GENERATED_GRAPH_MONITOR}")],
        display_name: "Calendar monitor".to_string(),
        given_name: None,
        surname: None,
        job_title: None,
        department: None,
        office_location: None,
        time_zone: berlin.clone(),
        password: Some(monitor_password),
        kind: MailboxKind::Person,
        has_mailbox: true,
        working_hours: WorkingHours::default(),
        calendar_processing: CalendarProcessing::default(),
    });
    let calendar_sharing: Vec<(usize, usize)> = (0..n_users)
        .filter(|index| index % GENERATED_NOT_SHARED_EVERY != GENERATED_NOT_SHARED_EVERY - 1)
        .map(|index| (index, monitor_index))
        .collect();
    let group = Group {
        id: random.guid(),
        tenant_index: 0,
        display_name: "All people".to_string(),
        mail_nickname: "allpeople".to_string(),
        members: (0..n_users).collect(),
    };

    let mut mailboxes: Vec<Mailbox> = users.iter().map(|_| Mailbox::default()).collect();
    for index in 0..n_users {
        let mut events = Vec::new();
        person_calendar(
            index,
            &users,
            n_users,
            n_rooms,
            now,
            &mut random,
            &mut events,
            &mut mailboxes,
        );
        mailboxes[index].events.extend(events);
    }
    let exchange = generated_exchange(&users, seed)?;
    let directory = Directory::new(vec![tenant], vec![app], users, vec![group])
        .map_err(|error| ScenarioError::Invalid(error.to_string()))?;
    Ok(World {
        exchange,
        directory,
        mailboxes,
        ready_app: 0,
        ready_secret: Some(secret),
        ready_group: Some(0),
        faults: FaultSettings::default(),
        settings: SettingsSpec::default(),
        calendar_sharing,
    })
}

struct Planned<'a> {
    subject: &'a str,
    start: DateTime,
    end: DateTime,
    all_day: bool,
    show_as: ShowAs,
    sensitivity: Sensitivity,
    location: String,
    recurrence: Option<Recurrence>,
    organizer: usize,
    attendees: Vec<usize>,
}

#[allow(clippy::too_many_arguments)]
fn person_calendar(
    index: usize,
    users: &[User],
    n_users: usize,
    n_rooms: usize,
    now: Timestamp,
    random: &mut SeededRandom,
    events: &mut Vec<StoredEvent>,
    mailboxes: &mut [Mailbox],
) {
    let user = &users[index];
    let zone = &user.time_zone;
    let local_now = now.to_zoned(zone.zone.clone());
    let today = local_now.date();
    let monday = today
        .checked_sub(i64::from(today.weekday().to_monday_zero_offset()).days())
        .unwrap_or(today);
    let at = |date: Date, hour: i8, minute: i8| {
        date.to_datetime(Time::new(hour, minute, 0, 0).unwrap_or(Time::midnight()))
    };
    let weekday_in = |random: &mut SeededRandom, weeks_from: i64| -> Date {
        let offset = weeks_from * 7 + random.below(5) as i64;
        monday.checked_add(offset.days()).unwrap_or(monday)
    };
    let mut planned: Vec<Planned> = Vec::new();
    let team_start = index - index % 8;
    let team: Vec<usize> = (team_start..(team_start + 8).min(n_users)).collect();

    // Four teams in five have a daily stand-up, the same series in every member's calendar.
    if (index / 8) % 5 != 4 {
        let previous_monday = monday.checked_sub(7.days()).unwrap_or(monday);
        planned.push(Planned {
            subject: "Daily stand-up",
            start: at(previous_monday, 9, 30),
            end: at(previous_monday, 9, 45),
            all_day: false,
            show_as: ShowAs::Busy,
            sensitivity: Sensitivity::Normal,
            location: "Teams".to_string(),
            recurrence: Some(Recurrence {
                pattern: Pattern::Weekly {
                    days: vec![
                        Weekday::Monday,
                        Weekday::Tuesday,
                        Weekday::Wednesday,
                        Weekday::Thursday,
                        Weekday::Friday,
                    ],
                    first_day_of_week: Weekday::Monday,
                },
                interval: 1,
                start_date: previous_monday,
                end: RangeEnd::NoEnd,
                recurrence_time_zone: zone.name.clone(),
            }),
            organizer: team_start,
            attendees: team.clone(),
        });
    }
    // A weekly one-to-one with the team lead.
    if index != team_start {
        let day = monday
            .checked_add((1 + (index % 4) as i64).days())
            .unwrap_or(monday);
        let previous = day.checked_sub(7.days()).unwrap_or(day);
        planned.push(Planned {
            subject: "1:1",
            start: at(previous, 14, 0),
            end: at(previous, 14, 30),
            all_day: false,
            show_as: ShowAs::Busy,
            sensitivity: Sensitivity::Normal,
            location: String::new(),
            recurrence: Some(Recurrence {
                pattern: Pattern::Weekly {
                    days: vec![previous.weekday()],
                    first_day_of_week: Weekday::Monday,
                },
                interval: 1,
                start_date: previous,
                end: RangeEnd::Numbered(12),
                recurrence_time_zone: zone.name.clone(),
            }),
            organizer: team_start,
            attendees: vec![team_start, index],
        });
    }
    // Ordinary meetings across the previous, current and next week.
    let n_meetings = 3 + random.below(6);
    for _ in 0..n_meetings {
        let day = {
            let weeks = random.below(3) as i64 - 1;
            weekday_in(random, weeks)
        };
        let hour = 10 + random.below(7) as i8;
        let minutes = [30, 60, 60, 90][random.below(4) as usize];
        let start = at(day, hour, if random.chance(0.5) { 0 } else { 30 });
        let end = start
            .checked_add((minutes as i64).minutes())
            .unwrap_or(start);
        let show_as = if random.chance(0.15) {
            ShowAs::Tentative
        } else {
            ShowAs::Busy
        };
        let with_room = n_rooms > 0 && random.chance(0.3);
        let location = if with_room {
            format!("Meeting room {}", 1 + random.below(n_rooms as u64))
        } else {
            String::new()
        };
        planned.push(Planned {
            subject: MEETING_SUBJECTS[random.below(MEETING_SUBJECTS.len() as u64) as usize],
            start,
            end,
            all_day: false,
            show_as,
            sensitivity: Sensitivity::Normal,
            location,
            recurrence: None,
            organizer: index,
            attendees: vec![index, team[random.below(team.len() as u64) as usize]],
        });
    }
    // Live changes for a demo: some meetings start in the next minutes, some are running.
    if random.chance(0.15) {
        let start = (local_now
            .datetime()
            .checked_add((2 + random.below(18) as i64).minutes()))
        .unwrap_or(local_now.datetime());
        let start = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .unwrap_or(start);
        planned.push(Planned {
            subject: "Quick sync",
            start,
            end: start
                .checked_add((15 + 15 * random.below(2) as i64).minutes())
                .unwrap_or(start),
            all_day: false,
            show_as: ShowAs::Busy,
            sensitivity: Sensitivity::Normal,
            location: String::new(),
            recurrence: None,
            organizer: index,
            attendees: vec![index],
        });
    } else if random.chance(0.06) {
        let start = local_now
            .datetime()
            .checked_sub(10.minutes())
            .unwrap_or(local_now.datetime());
        let start = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .unwrap_or(start);
        planned.push(Planned {
            subject: "Customer call",
            start,
            end: start.checked_add(40.minutes()).unwrap_or(start),
            all_day: false,
            show_as: ShowAs::Busy,
            sensitivity: Sensitivity::Normal,
            location: String::new(),
            recurrence: None,
            organizer: index,
            attendees: vec![index],
        });
    }
    if random.chance(0.05) {
        let first_day = {
            let weeks = random.below(2) as i64;
            weekday_in(random, weeks)
        };
        let first_day = if random.chance(0.4) { today } else { first_day };
        planned.push(Planned {
            subject: "Out of office",
            start: first_day.to_datetime(Time::midnight()),
            end: first_day
                .checked_add((2 + random.below(4) as i64).days())
                .unwrap_or(first_day)
                .to_datetime(Time::midnight()),
            all_day: true,
            show_as: ShowAs::Oof,
            sensitivity: Sensitivity::Normal,
            location: String::new(),
            recurrence: None,
            organizer: index,
            attendees: vec![],
        });
    }
    if random.chance(0.2) {
        let day = {
            let weeks = random.below(2) as i64;
            weekday_in(random, weeks)
        };
        let start = at(day, 8, 0);
        planned.push(Planned {
            subject: PRIVATE_SUBJECTS[random.below(PRIVATE_SUBJECTS.len() as u64) as usize],
            start,
            end: start.checked_add(1.hours()).unwrap_or(start),
            all_day: false,
            show_as: ShowAs::Busy,
            sensitivity: Sensitivity::Private,
            location: String::new(),
            recurrence: None,
            organizer: index,
            attendees: vec![],
        });
    }
    if random.chance(0.1) {
        let day = {
            let weeks = random.below(2) as i64;
            weekday_in(random, weeks)
        };
        planned.push(Planned {
            subject: "Working from home",
            start: day.to_datetime(Time::midnight()),
            end: day
                .checked_add(1.days())
                .unwrap_or(day)
                .to_datetime(Time::midnight()),
            all_day: true,
            show_as: ShowAs::WorkingElsewhere,
            sensitivity: Sensitivity::Normal,
            location: String::new(),
            recurrence: None,
            organizer: index,
            attendees: vec![],
        });
    }
    if random.chance(0.1) {
        let day = weekday_in(random, 0);
        let start = at(day, 12, 0);
        planned.push(Planned {
            subject: "Focus time",
            start,
            end: start.checked_add(2.hours()).unwrap_or(start),
            all_day: false,
            show_as: ShowAs::Free,
            sensitivity: Sensitivity::Normal,
            location: String::new(),
            recurrence: None,
            organizer: index,
            attendees: vec![],
        });
    }

    let created = now.checked_sub(14.days().hours(0)).unwrap_or(now);
    for plan in planned {
        let email_of = |user_index: usize| EmailAddress {
            name: users[user_index].display_name.clone(),
            address: users[user_index].mail.clone(),
        };
        let mut attendees: Vec<Attendee> = plan
            .attendees
            .iter()
            .map(|&attendee| Attendee {
                email: email_of(attendee),
                kind: "required".to_string(),
                response: AttendeeResponse::None,
            })
            .collect();
        let room_index = plan
            .location
            .strip_prefix("Meeting room ")
            .and_then(|number| number.parse::<usize>().ok())
            .map(|number| n_users + number - 1);
        if let Some(room) = room_index {
            attendees.push(Attendee {
                email: email_of(room),
                kind: "resource".to_string(),
                response: AttendeeResponse::None,
            });
        }
        let mut event = StoredEvent {
            id: random.item_id(),
            ical_uid: format!(
                "040000008200E00074C5B7101A82E0080000000{:016X}",
                random.next_u64()
            ),
            created,
            last_modified: created,
            change_key: seeded_change_key(random),
            data: EventData {
                subject: plan.subject.to_string(),
                body_html: String::new(),
                location: plan.location.clone(),
                show_as: plan.show_as,
                sensitivity: plan.sensitivity,
                importance: "normal".to_string(),
                is_all_day: plan.all_day,
                is_cancelled: false,
                is_online_meeting: plan.location == "Teams",
                categories: vec![],
                start: plan.start,
                end: plan.end,
                zone: zone.clone(),
                organizer: email_of(plan.organizer),
                attendees,
            },
            recurrence: plan.recurrence,
            exceptions: BTreeMap::new(),
        };
        // The room's own calendar holds the booking too, as its calendar processing leaves it
        // (Exchange's defaults: the organizer's name for a subject, `booking.rs`), and the
        // organizer's copy shows the room's answer.
        if let Some(room) = room_index {
            let processing = users[room].calendar_processing;
            let id = random.item_id();
            if let (Some(room_mailbox), Some(booking)) = (
                mailboxes.get_mut(room),
                crate::booking::room_copy(&event, &processing, id),
            ) {
                room_mailbox.events.push(booking);
                let answer = crate::booking::room_answer(&processing, event.created);
                for attendee in &mut event.data.attendees {
                    if attendee.kind == "resource" {
                        attendee.response = answer;
                    }
                }
            }
        }
        events.push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_organisation() {
        let now: Timestamp = "2026-06-10T09:00:00Z".parse().unwrap_or_default();
        let (Ok(first), Ok(second)) = (generate(50, 3, now), generate(50, 3, now)) else {
            panic!("generation failed")
        };
        let ids = |world: &World| {
            world
                .directory
                .users
                .iter()
                .map(|user| user.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&first), ids(&second));
        let subjects = |world: &World| {
            world
                .mailboxes
                .iter()
                .flat_map(|mailbox| {
                    mailbox
                        .events
                        .iter()
                        .map(|event| event.data.subject.clone())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(subjects(&first), subjects(&second));
        let Ok(other) = generate(50, 4, now) else {
            panic!("generation failed")
        };
        assert_ne!(ids(&first), ids(&other));
    }

    #[test]
    fn every_person_has_meetings_and_addresses_are_unique() {
        let now: Timestamp = "2026-06-10T09:00:00Z".parse().unwrap_or_default();
        let Ok(world) = generate(2000, 1, now) else {
            panic!("generation failed (duplicate addresses?)")
        };
        let people = world
            .directory
            .users
            .iter()
            .filter(|user| user.kind == MailboxKind::Person)
            .filter(|user| user.user_principal_name != GENERATED_GRAPH_MONITOR)
            .count();
        assert_eq!(people, 2000);
        // The monitor reads every calendar but one in 25.
        assert_eq!(world.calendar_sharing.len(), 2000 - 2000 / 25);
        assert!(world
            .directory
            .users
            .iter()
            .any(|user| user.kind == MailboxKind::Room));
        assert!(world
            .mailboxes
            .iter()
            .take(2000)
            .all(|mailbox| mailbox.events.len() >= 3));
        assert_eq!(world.directory.groups[0].members.len(), 2000);
    }
}
