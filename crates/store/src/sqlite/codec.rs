//! Conversions between domain values and SQLite columns.
//!
//! The database spelling of each enumeration is written out here rather than borrowed from
//! serde, so that renaming a Rust variant or its serde name can never silently change what is
//! on disk (the CHECK constraints in the migrations list the same words).

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, ShowAs, SourceId,
};
use jiff::civil::Date;
use jiff::Timestamp;
use sqlx::sqlite::SqliteRow;

use super::get;
use crate::{PersonKey, StoreError};

pub(super) struct AppointmentTimeColumns {
    pub start_at: Option<i64>,
    pub end_at: Option<i64>,
    pub first_day: Option<String>,
    pub end_day: Option<String>,
}

/// Instants are whole unix seconds: calendar servers only ever send whole seconds, and an
/// integer compares and indexes faster than text.
pub(super) fn encode_appointment(appointment: &Appointment) -> AppointmentTimeColumns {
    match appointment.time {
        AppointmentTime::Timed { start, end } => AppointmentTimeColumns {
            start_at: Some(start.as_second()),
            end_at: Some(end.as_second()),
            first_day: None,
            end_day: None,
        },
        AppointmentTime::AllDay { first_day, end_day } => AppointmentTimeColumns {
            start_at: None,
            end_at: None,
            first_day: Some(first_day.to_string()),
            end_day: Some(end_day.to_string()),
        },
    }
}

pub(super) fn opt_seconds(instant: Option<Timestamp>) -> Option<i64> {
    instant.map(Timestamp::as_second)
}

pub(super) fn show_as_text(show_as: ShowAs) -> &'static str {
    match show_as {
        ShowAs::Free => "free",
        ShowAs::Tentative => "tentative",
        ShowAs::Busy => "busy",
        ShowAs::Oof => "oof",
        ShowAs::WorkingElsewhere => "working_elsewhere",
        ShowAs::Unknown => "unknown",
    }
}

fn parse_show_as(text: &str) -> Option<ShowAs> {
    Some(match text {
        "free" => ShowAs::Free,
        "tentative" => ShowAs::Tentative,
        "busy" => ShowAs::Busy,
        "oof" => ShowAs::Oof,
        "working_elsewhere" => ShowAs::WorkingElsewhere,
        "unknown" => ShowAs::Unknown,
        _ => return None,
    })
}

pub(super) fn sensitivity_text(sensitivity: Sensitivity) -> &'static str {
    match sensitivity {
        Sensitivity::Normal => "normal",
        Sensitivity::Personal => "personal",
        Sensitivity::Private => "private",
        Sensitivity::Confidential => "confidential",
    }
}

fn parse_sensitivity(text: &str) -> Option<Sensitivity> {
    Some(match text {
        "normal" => Sensitivity::Normal,
        "personal" => Sensitivity::Personal,
        "private" => Sensitivity::Private,
        "confidential" => Sensitivity::Confidential,
        _ => return None,
    })
}

pub(super) fn status_text(status: AppointmentStatus) -> &'static str {
    match status {
        AppointmentStatus::Active => "active",
        AppointmentStatus::Cancelled => "cancelled",
    }
}

fn parse_status(text: &str) -> Option<AppointmentStatus> {
    Some(match text {
        "active" => AppointmentStatus::Active,
        "cancelled" => AppointmentStatus::Cancelled,
        _ => return None,
    })
}

pub(super) fn decode_timestamp(
    seconds: i64,
    field: &'static str,
    what: &dyn Fn() -> String,
) -> Result<Timestamp, StoreError> {
    Timestamp::from_second(seconds).map_err(|error| StoreError::InvalidRow {
        what: what(),
        field,
        reason: error.to_string(),
    })
}

pub(super) fn decode_date(
    text: &str,
    field: &'static str,
    what: &dyn Fn() -> String,
) -> Result<Date, StoreError> {
    text.parse::<Date>()
        .map_err(|error| StoreError::InvalidRow {
            what: what(),
            field,
            reason: error.to_string(),
        })
}

pub(super) fn decode_person_key(
    row: &SqliteRow,
    source_column: &'static str,
    address_column: &'static str,
) -> Result<PersonKey, StoreError> {
    let what = || "a person".to_string();
    let source: String = get(row, source_column, &what)?;
    let address: String = get(row, address_column, &what)?;
    let address = MailboxAddress::parse(&address).map_err(|error| StoreError::InvalidRow {
        what: format!("a person of source {source}"),
        field: address_column,
        reason: error.to_string(),
    })?;
    Ok(PersonKey::new(SourceId(source), address))
}

/// The stored columns of one appointment, as read from a row or from the JSON array that
/// `load_all_appointments` builds in SQL.
#[derive(serde::Deserialize)]
pub(super) struct AppointmentColumns(
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
);

impl AppointmentColumns {
    /// Reads the columns of `APPOINTMENT_COLUMNS` from `row`.
    pub(super) fn from_row(row: &SqliteRow, person: &PersonKey) -> Result<Self, StoreError> {
        let what = || format!("appointments of {person}");
        Ok(AppointmentColumns(
            get(row, "appointment_id", &what)?,
            get(row, "start_at", &what)?,
            get(row, "end_at", &what)?,
            get(row, "first_day", &what)?,
            get(row, "end_day", &what)?,
            get(row, "show_as", &what)?,
            get(row, "sensitivity", &what)?,
            get(row, "subject", &what)?,
            get(row, "organizer", &what)?,
            get(row, "status", &what)?,
        ))
    }

    pub(super) fn decode(self, person: &PersonKey) -> Result<Appointment, StoreError> {
        let AppointmentColumns(
            id,
            start_at,
            end_at,
            first_day,
            end_day,
            show_as,
            sensitivity,
            subject,
            organizer,
            status,
        ) = self;
        let what = || format!("appointment {id} of {person}");
        let invalid = |field: &'static str, reason: String| StoreError::InvalidRow {
            what: what(),
            field,
            reason,
        };
        let time = match (start_at, end_at, first_day, end_day) {
            (Some(start), Some(end), None, None) => AppointmentTime::Timed {
                start: decode_timestamp(start, "start_at", &what)?,
                end: decode_timestamp(end, "end_at", &what)?,
            },
            (None, None, Some(first_day), Some(end_day)) => AppointmentTime::AllDay {
                first_day: decode_date(&first_day, "first_day", &what)?,
                end_day: decode_date(&end_day, "end_day", &what)?,
            },
            _ => {
                return Err(invalid(
                    "start_at",
                    "neither both instants nor both dates are set".to_string(),
                ))
            }
        };
        let organizer = organizer
            .map(|text| MailboxAddress::parse(&text))
            .transpose()
            .map_err(|error| invalid("organizer", error.to_string()))?;
        let show_as = parse_show_as(&show_as)
            .ok_or_else(|| invalid("show_as", format!("unknown value `{show_as}`")))?;
        let sensitivity = parse_sensitivity(&sensitivity)
            .ok_or_else(|| invalid("sensitivity", format!("unknown value `{sensitivity}`")))?;
        let status = parse_status(&status)
            .ok_or_else(|| invalid("status", format!("unknown value `{status}`")))?;
        Ok(Appointment {
            time,
            show_as,
            sensitivity,
            subject,
            organizer,
            status,
            id,
        })
    }
}

pub(super) fn decode_appointment(
    row: &SqliteRow,
    person: &PersonKey,
) -> Result<Appointment, StoreError> {
    AppointmentColumns::from_row(row, person)?.decode(person)
}
