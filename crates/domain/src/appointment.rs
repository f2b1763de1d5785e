use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::MailboxAddress;

/// How an appointment shows the person's time, as Exchange names it (`showAs` in Graph,
/// `LegacyFreeBusyStatus` in EWS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ShowAs {
    Free,
    Tentative,
    Busy,
    Oof,
    WorkingElsewhere,
    /// Graph's `unknown`, EWS's `NoData`.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Sensitivity {
    Normal,
    Personal,
    Private,
    Confidential,
}

impl Sensitivity {
    /// Private and confidential appointments never show their subject, whatever the rules say.
    pub fn hides_subject(self) -> bool {
        matches!(self, Sensitivity::Private | Sensitivity::Confidential)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AppointmentStatus {
    Active,
    Cancelled,
}

/// When an appointment takes place.
///
/// All-day appointments are kept as local dates, not instants: an all-day "Vacation" on
/// 24 December covers the 24th in the zone of whoever looks at it. Converting it to UTC at the
/// source is the classic bug of peer tools (all-day events shifted by the UTC offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppointmentTime {
    Timed {
        start: Timestamp,
        end: Timestamp,
    },
    /// `first_day` inclusive, `end_day` exclusive, as Exchange stores them.
    AllDay {
        first_day: Date,
        end_day: Date,
    },
}

impl AppointmentTime {
    /// Start and end as instants, all-day dates taken at local midnight in `zone`.
    ///
    /// A midnight that does not exist (a DST gap at 00:00, as in some American zones) is taken
    /// as the first instant of that day, which is what "start of day" means to a reader.
    pub fn instants(&self, zone: &TimeZone) -> (Timestamp, Timestamp) {
        match *self {
            AppointmentTime::Timed { start, end } => (start, end),
            AppointmentTime::AllDay { first_day, end_day } => {
                (start_of_day(first_day, zone), start_of_day(end_day, zone))
            }
        }
    }

    pub fn is_all_day(&self) -> bool {
        matches!(self, AppointmentTime::AllDay { .. })
    }
}

/// The first instant of `date` in `zone`.
pub fn start_of_day(date: Date, zone: &TimeZone) -> Timestamp {
    zone.to_ambiguous_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
        .compatible()
        .unwrap_or_else(|_| {
            // Only dates at the very ends of jiff's supported range fail; clamp to the edge
            // rather than panic on a nonsense date from a server.
            if date.year() < 0 {
                Timestamp::MIN
            } else {
                Timestamp::MAX
            }
        })
}

/// One appointment of one person, with only the fields presence needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appointment {
    /// The source's id for this occurrence (Graph event id, EWS ItemId).
    pub id: String,
    pub time: AppointmentTime,
    pub show_as: ShowAs,
    pub sensitivity: Sensitivity,
    /// `None` when the subject was not fetched (subjects hidden by configuration).
    pub subject: Option<String>,
    pub organizer: Option<MailboxAddress>,
    pub status: AppointmentStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_day_dates_become_local_midnights() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let time = AppointmentTime::AllDay {
            first_day: jiff::civil::date(2026, 12, 24),
            end_day: jiff::civil::date(2026, 12, 27),
        };
        let (start, end) = time.instants(&berlin);
        assert_eq!(start.to_string(), "2026-12-23T23:00:00Z");
        assert_eq!(end.to_string(), "2026-12-26T23:00:00Z");
    }

    #[test]
    fn missing_midnight_in_a_dst_gap_starts_the_day_at_the_first_real_instant() {
        // Santiago springs forward at 00:00 local time: 2026-09-06 00:00 does not exist.
        let santiago = TimeZone::get("America/Santiago").unwrap();
        let start = start_of_day(jiff::civil::date(2026, 9, 6), &santiago);
        let local = start.to_zoned(santiago);
        assert_eq!(local.date(), jiff::civil::date(2026, 9, 6));
        assert_eq!(local.hour(), 1);
    }
}
