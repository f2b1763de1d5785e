//! Builders shared by the engine's table and property tests.
#![allow(dead_code)]

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, ShowAs, ZoneName,
};
use calbridge_presence::{Language, Locale};
use jiff::civil::{date, DateTime};
use jiff::Timestamp;

pub fn berlin() -> ZoneName {
    ZoneName::parse("Europe/Berlin").unwrap()
}

pub fn locale(language: Language) -> Locale {
    Locale::new(language, berlin())
}

/// A local Berlin date-time as an instant.
pub fn at(local: &str) -> Timestamp {
    let civil: DateTime = local.parse().unwrap();
    berlin()
        .zone()
        .to_ambiguous_timestamp(civil)
        .compatible()
        .unwrap()
}

pub fn timed(id: &str, subject: &str, start: &str, end: &str, show_as: ShowAs) -> Appointment {
    Appointment {
        id: id.to_string(),
        time: AppointmentTime::Timed {
            start: at(start),
            end: at(end),
        },
        show_as,
        sensitivity: Sensitivity::Normal,
        subject: Some(subject.to_string()),
        organizer: None,
        status: AppointmentStatus::Active,
    }
}

pub fn all_day(
    id: &str,
    subject: &str,
    first: (i16, i8, i8),
    end: (i16, i8, i8),
    show_as: ShowAs,
) -> Appointment {
    Appointment {
        id: id.to_string(),
        time: AppointmentTime::AllDay {
            first_day: date(first.0, first.1, first.2),
            end_day: date(end.0, end.1, end.2),
        },
        show_as,
        sensitivity: Sensitivity::Normal,
        subject: Some(subject.to_string()),
        organizer: None,
        status: AppointmentStatus::Active,
    }
}

pub fn private(mut appointment: Appointment) -> Appointment {
    appointment.sensitivity = Sensitivity::Private;
    appointment
}

pub fn organised_by(mut appointment: Appointment, organizer: &str) -> Appointment {
    appointment.organizer = Some(MailboxAddress::parse(organizer).unwrap());
    appointment
}

pub fn cancelled(mut appointment: Appointment) -> Appointment {
    appointment.status = AppointmentStatus::Cancelled;
    appointment
}

pub fn secs(local: &str) -> i64 {
    at(local).as_second()
}

/// The substring of `text` from character `position`, `length` characters long.
pub fn chars_slice(text: &str, position: usize, length: usize) -> String {
    text.chars().skip(position).take(length).collect()
}

/// Parses `#name:a:b:…` from a note into its numbers.
pub fn tag_numbers(note: &str, name: &str) -> Option<Vec<usize>> {
    let prefix = format!(" #{name}:");
    let start = note.rfind(&prefix)? + prefix.len();
    let rest = &note[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    rest[..end].split(':').map(|n| n.parse().ok()).collect()
}
