//! Keeping calendars fresh: one engine (`engine.rs`) per source decides who is read, when and
//! with which back-off; `graph.rs` and `ews.rs` are the sources it reads through.

pub mod engine;
pub mod ews;
pub mod graph;

#[cfg(test)]
mod engine_tests;

use calbridge_domain::{MailboxAddress, SourceId};
use calbridge_store::PersonKey;

pub use self::engine::Work;

/// The synchronised window from `now`: `window_hours` ahead (the seed's 48 h).
pub(crate) fn window_from(
    now: jiff::Timestamp,
    window_hours: u32,
) -> (jiff::Timestamp, jiff::Timestamp) {
    let end = now
        .checked_add(jiff::SignedDuration::from_hours(i64::from(window_hours)))
        .unwrap_or(now);
    (now, end)
}

/// The next local midnight after `now` in `zone`, when every window is read again.
pub(crate) fn next_local_midnight(
    now: jiff::Timestamp,
    zone: &jiff::tz::TimeZone,
) -> jiff::Timestamp {
    match zone.to_datetime(now).date().tomorrow() {
        Ok(tomorrow) => calbridge_domain::start_of_day(tomorrow, zone),
        Err(_) => jiff::Timestamp::MAX,
    }
}

/// A member of a directory group, already resolved by the source.
pub struct GroupMember {
    pub primary_smtp: MailboxAddress,
    pub id: String,
    pub display_name: Option<String>,
}

/// What the directory needs from a source's sync task.
#[async_trait::async_trait]
pub trait DirectoryTarget: Send + Sync {
    fn source_id(&self) -> &SourceId;
    fn enqueue(&self, work: Work);
    /// The members of a directory group (Entra ID group for Graph).
    async fn group_members(&self, group: &str) -> Result<Vec<GroupMember>, String>;
    /// The meeting rooms of the tenant, or of one room list (Graph's places API, EWS's
    /// `GetRoomLists` / `GetRooms`).
    async fn rooms(
        &self,
        _list: Option<&MailboxAddress>,
    ) -> Result<Vec<calbridge_domain::RoomInfo>, String> {
        Err("this source cannot list rooms".to_string())
    }
    async fn record_resolved_members(&self, members: Vec<(PersonKey, MailboxAddress, String)>);
    /// Declines a meeting in `person`'s calendar (see [`engine::CalendarSource::decline`]).
    async fn decline(
        &self,
        _person: &PersonKey,
        _appointment_id: &str,
        _comment: &str,
    ) -> Result<(), String> {
        Err("this source cannot decline meetings".to_string())
    }
    /// Further addresses of a person from the directory, for name resolution.
    fn set_alternates(&self, _person: &PersonKey, _alternates: Vec<String>) {}
}

/// Splits off the windows whose appointments name one id twice (a source's mistake): the
/// store refuses such a window, and in a batch it would take everyone else's with it. The
/// others are returned for storing; each refused person comes with the repeated id.
pub(crate) fn without_repeated_ids(
    windows: Vec<calbridge_store::WindowReplacement>,
) -> (
    Vec<calbridge_store::WindowReplacement>,
    Vec<(calbridge_store::PersonKey, String)>,
) {
    let mut kept = Vec::with_capacity(windows.len());
    let mut refused = Vec::new();
    for window in windows {
        let mut seen = std::collections::HashSet::with_capacity(window.appointments.len());
        let repeated = window
            .appointments
            .iter()
            .find(|appointment| !seen.insert(appointment.id.as_str()))
            .map(|appointment| appointment.id.clone());
        match repeated {
            Some(id) => refused.push((window.key, id)),
            None => kept.push(window),
        }
    }
    (kept, refused)
}

#[cfg(test)]
mod repeated_id_tests {
    use super::*;
    use calbridge_domain::{Appointment, AppointmentStatus, AppointmentTime, Sensitivity, ShowAs};
    use calbridge_store::WindowReplacement;

    fn window(address: &str, ids: &[&str]) -> WindowReplacement {
        let start: jiff::Timestamp = "2026-06-01T09:00:00Z".parse().unwrap();
        let end: jiff::Timestamp = "2026-06-01T10:00:00Z".parse().unwrap();
        WindowReplacement {
            key: PersonKey {
                source: SourceId("s".to_string()),
                address: MailboxAddress::parse(address).unwrap(),
            },
            window_start: start,
            window_end: end,
            appointments: ids
                .iter()
                .map(|id| Appointment {
                    id: id.to_string(),
                    time: AppointmentTime::Timed { start, end },
                    show_as: ShowAs::Busy,
                    sensitivity: Sensitivity::Normal,
                    subject: None,
                    organizer: None,
                    status: AppointmentStatus::Active,
                })
                .collect(),
        }
    }

    #[test]
    fn a_window_naming_an_id_twice_is_refused_and_the_others_kept() {
        let (kept, refused) = without_repeated_ids(vec![
            window("a@x.example", &["1", "2"]),
            window("b@x.example", &["1", "2", "1"]),
            window("c@x.example", &[]),
        ]);
        let kept: Vec<&str> = kept.iter().map(|w| w.key.address.as_str()).collect();
        assert_eq!(kept, vec!["a@x.example", "c@x.example"]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0.address.as_str(), "b@x.example");
        assert_eq!(refused[0].1, "1");
    }
}
