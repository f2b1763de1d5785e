//! Graph `event` resources (as `calendarView`, `calendarView/delta` and `events` return them)
//! and their conversion into domain [`Appointment`]s.

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, ShowAs, ZoneName,
};
use jiff::civil::DateTime;
use jiff::Timestamp;
use serde::Deserialize;

/// An event as Graph serialises it. Only the fields presence needs are read; everything else
/// is ignored so that new Graph fields never break parsing.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphEvent {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub start: Option<DateTimeTimeZone>,
    #[serde(default)]
    pub end: Option<DateTimeTimeZone>,
    #[serde(default)]
    pub is_all_day: Option<bool>,
    #[serde(default)]
    pub is_cancelled: Option<bool>,
    #[serde(default)]
    pub show_as: Option<String>,
    #[serde(default)]
    pub sensitivity: Option<String>,
    #[serde(default)]
    pub organizer: Option<Recipient>,
    /// Present on delta entries for deleted events: `{"reason":"deleted"}`.
    #[serde(default, rename = "@removed")]
    pub removed: Option<serde_json::Value>,
}

/// Graph's `dateTimeTimeZone`: a local date-time and the (Windows or IANA) zone it is in.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DateTimeTimeZone {
    pub date_time: String,
    #[serde(default)]
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    #[serde(default)]
    pub email_address: Option<EmailAddress>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmailAddress {
    #[serde(default)]
    pub address: Option<String>,
}

/// A Graph event that cannot become an appointment, naming the event and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event}: field `{field}`: {problem}")]
pub struct EventError {
    /// The event's id in backticks, or its position in the list when it has no id.
    pub event: String,
    pub field: &'static str,
    pub problem: String,
}

impl EventError {
    /// The label and the problem are shortened: they quote what Graph sent (an id, a
    /// `showAs` value, serde's echo of a wrong value), which may be megabytes long, and the
    /// error ends up in a log line.
    fn new(event: &str, field: &'static str, problem: String) -> Self {
        EventError {
            event: crate::error::shorten(event, 200),
            field,
            problem: crate::error::shorten(&problem, 500),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EventPage {
    Page { value: Vec<serde_json::Value> },
    Bare(Vec<serde_json::Value>),
}

/// Parses either a bare JSON array of events or a `{"value":[…]}` page as `calendarView`
/// returns it. Every event is converted; the first bad one is reported by id and field.
pub fn parse_event_page(json: &str) -> Result<Vec<Appointment>, EventError> {
    let page: EventPage = serde_json::from_str(json).map_err(|error| {
        EventError::new(
            "list",
            "value",
            format!("not a JSON array of events or a {{\"value\":[…]}} page: {error}"),
        )
    })?;
    let values = match page {
        EventPage::Page { value } | EventPage::Bare(value) => value,
    };
    let mut appointments = Vec::with_capacity(values.len());
    for (index, value) in values.into_iter().enumerate() {
        let label = value
            .get("id")
            .and_then(|id| id.as_str())
            .map_or_else(|| format!("#{}", index + 1), |id| format!("`{id}`"));
        let event: GraphEvent = serde_json::from_value(value)
            .map_err(|error| EventError::new(&label, "event", error.to_string()))?;
        if event.removed.is_some() {
            continue;
        }
        appointments.push(event.to_appointment(&label)?);
    }
    Ok(appointments)
}

impl GraphEvent {
    /// Converts to a domain appointment; `label` names the event in errors.
    pub fn to_appointment(&self, label: &str) -> Result<Appointment, EventError> {
        let error = |field: &'static str, problem: String| EventError::new(label, field, problem);
        let id = self
            .id
            .clone()
            .ok_or_else(|| error("id", "missing".to_string()))?;
        let start = self
            .start
            .as_ref()
            .ok_or_else(|| error("start", "missing".to_string()))?;
        let end = self
            .end
            .as_ref()
            .ok_or_else(|| error("end", "missing".to_string()))?;
        let (start_local, start_zone) = parse_date_time(start).map_err(|(field, problem)| {
            error(
                if field == "dateTime" {
                    "start.dateTime"
                } else {
                    "start.timeZone"
                },
                problem,
            )
        })?;
        let (end_local, end_zone) = parse_date_time(end).map_err(|(field, problem)| {
            error(
                if field == "dateTime" {
                    "end.dateTime"
                } else {
                    "end.timeZone"
                },
                problem,
            )
        })?;
        let time = if self.is_all_day.unwrap_or(false) {
            // All-day events are floating dates: the midnight Graph reports is a date, not an
            // instant, whatever zone label it carries.
            let first_day = start_local.date();
            let end_day = end_local.date();
            if end_day <= first_day {
                return Err(error(
                    "end",
                    format!("all-day event ends on {end_day}, not after its first day {first_day}"),
                ));
            }
            AppointmentTime::AllDay { first_day, end_day }
        } else {
            let start = to_instant(start_local, &start_zone)
                .map_err(|problem| error("start.dateTime", problem))?;
            let end = to_instant(end_local, &end_zone)
                .map_err(|problem| error("end.dateTime", problem))?;
            if end < start {
                return Err(error(
                    "end",
                    format!("event ends at {end}, before it starts at {start}"),
                ));
            }
            AppointmentTime::Timed { start, end }
        };
        let show_as = match self.show_as.as_deref() {
            None => ShowAs::Unknown,
            Some(raw) => parse_show_as(raw).ok_or_else(|| {
                error(
                    "showAs",
                    format!("`{raw}` is not one of free, tentative, busy, oof, workingElsewhere, unknown"),
                )
            })?,
        };
        let sensitivity = match self.sensitivity.as_deref() {
            None => Sensitivity::Normal,
            Some(raw) => parse_sensitivity(raw).ok_or_else(|| {
                error(
                    "sensitivity",
                    format!("`{raw}` is not one of normal, personal, private, confidential"),
                )
            })?,
        };
        // An organizer address we cannot parse (an X.500 legacyExchangeDN, an empty string) is
        // treated as unknown rather than failing the whole event: it only matters for the
        // tentative-exception rule.
        let organizer = self
            .organizer
            .as_ref()
            .and_then(|organizer| organizer.email_address.as_ref())
            .and_then(|email| email.address.as_deref())
            .and_then(|address| MailboxAddress::parse(address).ok());
        Ok(Appointment {
            id,
            time,
            show_as,
            sensitivity,
            subject: self.subject.clone(),
            organizer,
            status: if self.is_cancelled.unwrap_or(false) {
                AppointmentStatus::Cancelled
            } else {
                AppointmentStatus::Active
            },
        })
    }
}

/// Graph's zone label: Windows or IANA name; absent means UTC.
fn parse_date_time(
    value: &DateTimeTimeZone,
) -> Result<(DateTime, ZoneName), (&'static str, String)> {
    let zone = match value.time_zone.as_deref() {
        None => ZoneName::utc(),
        Some(name) => ZoneName::parse(name).map_err(|error| ("timeZone", error.to_string()))?,
    };
    let raw = value.date_time.trim();
    // Graph writes `2026-11-23T09:00:00.0000000` without an offset; tolerate a trailing `Z` or
    // an explicit offset from hand-written files by converting that instant into the zone.
    if let Ok(instant) = raw.parse::<Timestamp>() {
        return Ok((zone.zone().to_datetime(instant), zone));
    }
    let local = raw.parse::<DateTime>().map_err(|error| {
        (
            "dateTime",
            format!("`{raw}` is not a date-time like 2026-11-23T09:00:00.0000000: {error}"),
        )
    })?;
    Ok((local, zone))
}

fn to_instant(local: DateTime, zone: &ZoneName) -> Result<Timestamp, String> {
    // A local time in a DST gap or overlap is resolved the way Outlook does: the earlier
    // offset for overlaps, pushed forward over a gap.
    zone.zone()
        .to_ambiguous_timestamp(local)
        .compatible()
        .map_err(|error| format!("`{local}` cannot be placed in {}: {error}", zone.iana()))
}

fn parse_show_as(raw: &str) -> Option<ShowAs> {
    Some(match raw.to_ascii_lowercase().as_str() {
        "free" => ShowAs::Free,
        "tentative" => ShowAs::Tentative,
        "busy" => ShowAs::Busy,
        "oof" => ShowAs::Oof,
        "workingelsewhere" => ShowAs::WorkingElsewhere,
        "unknown" => ShowAs::Unknown,
        _ => return None,
    })
}

fn parse_sensitivity(raw: &str) -> Option<Sensitivity> {
    Some(match raw.to_ascii_lowercase().as_str() {
        "normal" => Sensitivity::Normal,
        "personal" => Sensitivity::Personal,
        "private" => Sensitivity::Private,
        "confidential" => Sensitivity::Confidential,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_view_page_with_windows_zone_converts_to_utc_instants() {
        let json = r#"{"@odata.context":"x","value":[{
            "id":"AAMk1","subject":"Weekly","showAs":"busy","sensitivity":"normal",
            "isAllDay":false,"isCancelled":false,
            "start":{"dateTime":"2026-11-23T09:00:00.0000000","timeZone":"W. Europe Standard Time"},
            "end":{"dateTime":"2026-11-23T10:30:00.0000000","timeZone":"W. Europe Standard Time"},
            "organizer":{"emailAddress":{"name":"Ann","address":"Ann@Example.com"}}}]}"#;
        let appointments = parse_event_page(json).unwrap();
        assert_eq!(appointments.len(), 1);
        let appointment = &appointments[0];
        assert_eq!(
            appointment.time,
            AppointmentTime::Timed {
                start: "2026-11-23T08:00:00Z".parse().unwrap(),
                end: "2026-11-23T09:30:00Z".parse().unwrap(),
            }
        );
        assert_eq!(
            appointment.organizer.as_ref().unwrap().as_str(),
            "ann@example.com"
        );
        assert_eq!(appointment.show_as, ShowAs::Busy);
    }

    #[test]
    fn all_day_event_keeps_its_dates_whatever_the_zone_label() {
        let json = r#"[{"id":"x","isAllDay":true,"showAs":"oof",
            "start":{"dateTime":"2026-12-24T00:00:00.0000000","timeZone":"UTC"},
            "end":{"dateTime":"2026-12-27T00:00:00.0000000","timeZone":"UTC"}}]"#;
        let appointments = parse_event_page(json).unwrap();
        assert_eq!(
            appointments[0].time,
            AppointmentTime::AllDay {
                first_day: jiff::civil::date(2026, 12, 24),
                end_day: jiff::civil::date(2026, 12, 27),
            }
        );
    }

    #[test]
    fn bad_events_are_named_by_id_and_field() {
        let unknown_zone = r#"[{"id":"e1","start":{"dateTime":"2026-11-23T09:00:00","timeZone":"Nowhere"},
            "end":{"dateTime":"2026-11-23T10:00:00","timeZone":"UTC"}}]"#;
        let error = parse_event_page(unknown_zone).unwrap_err();
        assert_eq!(error.event, "`e1`");
        assert_eq!(error.field, "start.timeZone");

        let backwards = r#"[{"id":"e2","start":{"dateTime":"2026-11-23T09:00:00","timeZone":"UTC"},
            "end":{"dateTime":"2026-11-23T08:00:00","timeZone":"UTC"}}]"#;
        let error = parse_event_page(backwards).unwrap_err();
        assert_eq!(error.field, "end");
        assert!(
            error.to_string().starts_with("event `e2`: field `end`"),
            "{error}"
        );

        let no_id = r#"[{"start":{"dateTime":"2026-11-23T09:00:00"},"end":{"dateTime":"2026-11-23T10:00:00"}}]"#;
        assert_eq!(parse_event_page(no_id).unwrap_err().event, "#1");

        let bad_show_as = r#"[{"id":"e3","showAs":"sleepy","start":{"dateTime":"2026-11-23T09:00:00"},"end":{"dateTime":"2026-11-23T10:00:00"}}]"#;
        assert_eq!(parse_event_page(bad_show_as).unwrap_err().field, "showAs");

        assert_eq!(parse_event_page("{not json").unwrap_err().field, "value");
    }

    #[test]
    fn removed_entries_are_skipped_and_cancelled_ones_are_marked() {
        let json = r#"{"value":[{"id":"gone","@removed":{"reason":"deleted"}},
            {"id":"c","isCancelled":true,"start":{"dateTime":"2026-11-23T09:00:00"},"end":{"dateTime":"2026-11-23T10:00:00"}}]}"#;
        let appointments = parse_event_page(json).unwrap();
        assert_eq!(appointments.len(), 1);
        assert_eq!(appointments[0].status, AppointmentStatus::Cancelled);
        assert_eq!(appointments[0].show_as, ShowAs::Unknown);
    }
}
