//! What both backends store, and how: the database spelling of each enumeration, the columns
//! of an appointment, how a row becomes a record, and how secrets are sealed under their names.
//!
//! The backends (`sqlite.rs`, `postgres.rs`) only write SQL and bind these values; both read
//! their rows through [`StoreRow`], so a record is decoded the same way whichever database it
//! came from. The column types are chosen so that this works: instants are 64-bit unix
//! seconds, dates are `YYYY-MM-DD` text when read, sealed values are bytes.
//!
//! The database spelling of each enumeration is written out here rather than borrowed from
//! serde, so that renaming a Rust variant or its serde name can never silently change what is
//! on disk (the CHECK constraints in the migrations list the same words).

use std::collections::HashMap;
use std::hash::Hash;

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Secret, Sensitivity, ShowAs,
    SourceId,
};
use jiff::civil::Date;
use jiff::Timestamp;
use sqlx::postgres::{PgRow, Postgres};
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{Decode, Row, Type};

use crate::{
    AppointmentWindow, CurrentPresence, OutboxEvent, OutboxId, Person, PersonKey, Resolution,
    SecretKey, SourceCounters, SourceState, StoreError, SyncError, SyncState, TokenState,
};

/// A value that both backends decode from a column: text, 64-bit integers, bytes, and their
/// `Option`s for nullable columns.
pub(crate) trait ColumnValue:
    for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

impl<T> ColumnValue for T where
    T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

/// A row of either backend, read by column name.
pub(crate) trait StoreRow {
    /// Reads one column, naming the record and field if the database holds an unexpected type.
    fn column<T: ColumnValue>(
        &self,
        column: &'static str,
        what: &dyn Fn() -> String,
    ) -> Result<T, StoreError>;
}

impl StoreRow for SqliteRow {
    fn column<T: ColumnValue>(
        &self,
        column: &'static str,
        what: &dyn Fn() -> String,
    ) -> Result<T, StoreError> {
        self.try_get(column)
            .map_err(|error| invalid(what, column, error))
    }
}

impl StoreRow for PgRow {
    fn column<T: ColumnValue>(
        &self,
        column: &'static str,
        what: &dyn Fn() -> String,
    ) -> Result<T, StoreError> {
        self.try_get(column)
            .map_err(|error| invalid(what, column, error))
    }
}

fn invalid(what: &dyn Fn() -> String, field: &'static str, error: sqlx::Error) -> StoreError {
    StoreError::InvalidRow {
        what: what(),
        field,
        reason: error.to_string(),
    }
}

// Instants, dates and counters.

/// Instants are whole unix seconds: calendar servers only ever send whole seconds, and an
/// integer compares and indexes fast in both databases.
pub(crate) fn opt_seconds(instant: Option<Timestamp>) -> Option<i64> {
    instant.map(Timestamp::as_second)
}

pub(crate) fn decode_timestamp(
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

fn decode_opt_timestamp(
    seconds: Option<i64>,
    field: &'static str,
    what: &dyn Fn() -> String,
) -> Result<Option<Timestamp>, StoreError> {
    seconds
        .map(|seconds| decode_timestamp(seconds, field, what))
        .transpose()
}

/// Reads an optional instant column.
fn instant_at<R: StoreRow>(
    row: &R,
    column: &'static str,
    what: &dyn Fn() -> String,
) -> Result<Option<Timestamp>, StoreError> {
    decode_opt_timestamp(row.column(column, what)?, column, what)
}

pub(crate) fn decode_date(
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

/// Counters that reach 2^63 saturate rather than wrap negative.
pub(crate) fn count_to_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn count_from_i64(
    value: i64,
    field: &'static str,
    what: &dyn Fn() -> String,
) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::InvalidRow {
        what: what(),
        field,
        reason: format!("{value} is negative"),
    })
}

// Enumerations.

pub(crate) fn show_as_text(show_as: ShowAs) -> &'static str {
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

pub(crate) fn sensitivity_text(sensitivity: Sensitivity) -> &'static str {
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

pub(crate) fn status_text(status: AppointmentStatus) -> &'static str {
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

/// The columns `resolution`, `primary_smtp`, `source_user_id`, `resolution_error` of a person.
pub(crate) struct ResolutionColumns<'a> {
    pub state: &'static str,
    pub primary_smtp: Option<&'a str>,
    pub source_user_id: Option<&'a str>,
    pub error: Option<&'a str>,
}

pub(crate) fn resolution_columns(resolution: &Resolution) -> ResolutionColumns<'_> {
    match resolution {
        Resolution::Pending => ResolutionColumns {
            state: "pending",
            primary_smtp: None,
            source_user_id: None,
            error: None,
        },
        Resolution::Resolved {
            primary_smtp,
            source_user_id,
        } => ResolutionColumns {
            state: "resolved",
            primary_smtp: Some(primary_smtp.as_str()),
            source_user_id: source_user_id.as_deref(),
            error: None,
        },
        Resolution::Failed { error } => ResolutionColumns {
            state: "failed",
            primary_smtp: None,
            source_user_id: None,
            error: Some(error.as_str()),
        },
    }
}

/// The columns `token_status` and `token_error` of a source.
pub(crate) fn token_columns(token: &TokenState) -> (&'static str, Option<&str>) {
    match token {
        TokenState::Unknown => ("unknown", None),
        TokenState::Ok => ("ok", None),
        TokenState::Failed { error } => ("failed", Some(error.as_str())),
    }
}

// Appointments.

/// The columns of one row of `appointments` but the person's id, in the order of the
/// backends' column lists: `appointment_id, start_at, end_at, first_day, end_day, show_as,
/// sensitivity, subject, organizer, status`.
///
/// Either both instants (a timed appointment) or both dates (an all-day one) are set.
pub(crate) struct AppointmentRow<'a> {
    pub id: &'a str,
    pub start_at: Option<i64>,
    pub end_at: Option<i64>,
    pub first_day: Option<String>,
    pub end_day: Option<String>,
    pub show_as: &'static str,
    pub sensitivity: &'static str,
    pub subject: Option<&'a str>,
    pub organizer: Option<&'a str>,
    pub status: &'static str,
}

impl<'a> AppointmentRow<'a> {
    pub(crate) fn of(appointment: &'a Appointment) -> Self {
        let (start_at, end_at, first_day, end_day) = match appointment.time {
            AppointmentTime::Timed { start, end } => {
                (Some(start.as_second()), Some(end.as_second()), None, None)
            }
            AppointmentTime::AllDay { first_day, end_day } => (
                None,
                None,
                Some(first_day.to_string()),
                Some(end_day.to_string()),
            ),
        };
        AppointmentRow {
            id: appointment.id.as_str(),
            start_at,
            end_at,
            first_day,
            end_day,
            show_as: show_as_text(appointment.show_as),
            sensitivity: sensitivity_text(appointment.sensitivity),
            subject: appointment.subject.as_deref(),
            organizer: appointment.organizer.as_ref().map(MailboxAddress::as_str),
            status: status_text(appointment.status),
        }
    }
}

/// The stored columns of one appointment, as read from a row or from the JSON array (one
/// array per appointment, in [`AppointmentRow`]'s order) that `load_all_appointments` builds
/// in SQL.
#[derive(serde::Deserialize)]
pub(crate) struct AppointmentColumns {
    id: String,
    start_at: Option<i64>,
    end_at: Option<i64>,
    first_day: Option<String>,
    end_day: Option<String>,
    show_as: String,
    sensitivity: String,
    subject: Option<String>,
    organizer: Option<String>,
    status: String,
}

impl AppointmentColumns {
    /// Reads the columns named as in [`AppointmentRow`] (`appointment_id` for the id).
    pub(crate) fn from_row<R: StoreRow>(row: &R, person: &PersonKey) -> Result<Self, StoreError> {
        let what = || format!("appointments of {person}");
        Ok(AppointmentColumns {
            id: row.column("appointment_id", &what)?,
            start_at: row.column("start_at", &what)?,
            end_at: row.column("end_at", &what)?,
            first_day: row.column("first_day", &what)?,
            end_day: row.column("end_day", &what)?,
            show_as: row.column("show_as", &what)?,
            sensitivity: row.column("sensitivity", &what)?,
            subject: row.column("subject", &what)?,
            organizer: row.column("organizer", &what)?,
            status: row.column("status", &what)?,
        })
    }

    pub(crate) fn decode(self, person: &PersonKey) -> Result<Appointment, StoreError> {
        let AppointmentColumns {
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
        } = self;
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

pub(crate) fn decode_appointment<R: StoreRow>(
    row: &R,
    person: &PersonKey,
) -> Result<Appointment, StoreError> {
    AppointmentColumns::from_row(row, person)?.decode(person)
}

/// Decodes the JSON array of appointment arrays that `load_all_appointments` builds, ordered
/// by id as `load_appointments` orders them.
pub(crate) fn decode_appointment_list(
    json: &str,
    person: &PersonKey,
) -> Result<Vec<Appointment>, StoreError> {
    let columns: Vec<AppointmentColumns> =
        serde_json::from_str(json).map_err(|error| StoreError::InvalidRow {
            what: format!("appointments of {person}"),
            field: "appointments",
            reason: error.to_string(),
        })?;
    let mut appointments = columns
        .into_iter()
        .map(|columns| columns.decode(person))
        .collect::<Result<Vec<_>, _>>()?;
    // Byte order, which is what both databases' ORDER BY gives (BINARY in SQLite, the "C"
    // collation of the id column in PostgreSQL).
    appointments.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    Ok(appointments)
}

// Records.

pub(crate) fn decode_person_key<R: StoreRow>(
    row: &R,
    source_column: &'static str,
    address_column: &'static str,
) -> Result<PersonKey, StoreError> {
    let what = || "a person".to_string();
    let source: String = row.column(source_column, &what)?;
    let address: String = row.column(address_column, &what)?;
    let address = MailboxAddress::parse(&address).map_err(|error| StoreError::InvalidRow {
        what: format!("a person of source {source}"),
        field: address_column,
        reason: error.to_string(),
    })?;
    Ok(PersonKey::new(SourceId(source), address))
}

/// A row of the backends' `list_rooms` query (`bookable` read by the caller: an integer in
/// SQLite, a boolean in PostgreSQL). Numbers out of range count as not given.
pub(crate) fn decode_room<R: StoreRow>(
    row: &R,
    bookable: bool,
) -> Result<(PersonKey, calbridge_domain::RoomInfo), StoreError> {
    let key = decode_person_key(row, "source_id", "address")?;
    let what = || format!("room {key}");
    let capacity: Option<i64> = row.column("capacity", &what)?;
    let floor_number: Option<i64> = row.column("floor_number", &what)?;
    let room = calbridge_domain::RoomInfo {
        address: key.address.clone(),
        display_name: row.column("display_name", &what)?,
        capacity: capacity.and_then(|n| u32::try_from(n).ok()),
        building: row.column("building", &what)?,
        floor_number: floor_number.and_then(|n| i32::try_from(n).ok()),
        floor_label: row.column("floor_label", &what)?,
        room_list: row.column("room_list", &what)?,
        bookable,
    };
    Ok((key, room))
}

/// Reads the columns of the backends' `PERSON_COLUMNS`.
pub(crate) fn decode_person<R: StoreRow>(row: &R) -> Result<Person, StoreError> {
    let key = decode_person_key(row, "source_id", "address")?;
    let what = || format!("person {key}");
    let resolution_text: String = row.column("resolution", &what)?;
    let resolution =
        match resolution_text.as_str() {
            "pending" => Resolution::Pending,
            "resolved" => {
                let primary_smtp: Option<String> = row.column("primary_smtp", &what)?;
                let primary_smtp = MailboxAddress::parse(&primary_smtp.unwrap_or_default())
                    .map_err(|error| StoreError::InvalidRow {
                        what: what(),
                        field: "primary_smtp",
                        reason: error.to_string(),
                    })?;
                Resolution::Resolved {
                    primary_smtp,
                    source_user_id: row.column("source_user_id", &what)?,
                }
            }
            "failed" => Resolution::Failed {
                error: row
                    .column::<Option<String>>("resolution_error", &what)?
                    .unwrap_or_default(),
            },
            other => {
                return Err(StoreError::InvalidRow {
                    what: what(),
                    field: "resolution",
                    reason: format!("unknown state `{other}`"),
                })
            }
        };
    Ok(Person {
        display_name: row.column("display_name", &what)?,
        sip_uri: row.column("sip_uri", &what)?,
        resolution,
        created_at: decode_timestamp(row.column("created_at", &what)?, "created_at", &what)?,
        updated_at: decode_timestamp(row.column("updated_at", &what)?, "updated_at", &what)?,
        key,
    })
}

/// Reads `delta_link, subscription_id, subscription_expires_at, client_state_sealed,
/// last_full_sync_at, last_delta_at, last_error, last_error_at, consecutive_failures,
/// window_start, window_end`, opening the sealed `client_state` with `secret_key`.
pub(crate) fn decode_sync_state<R: StoreRow>(
    row: &R,
    key: &PersonKey,
    secret_key: &SecretKey,
) -> Result<SyncState, StoreError> {
    let what = || format!("sync state of {key}");
    let client_state = row
        .column::<Option<Vec<u8>>>("client_state_sealed", &what)?
        .map(|sealed| {
            let (name, aad) = client_state_names(key);
            open_secret(secret_key, &name, &aad, &sealed)
        })
        .transpose()?;
    let last_error = match row.column::<Option<String>>("last_error", &what)? {
        Some(message) => Some(SyncError {
            message,
            at: decode_timestamp(
                row.column::<Option<i64>>("last_error_at", &what)?
                    .unwrap_or(0),
                "last_error_at",
                &what,
            )?,
        }),
        None => None,
    };
    let window_start = instant_at(row, "window_start", &what)?;
    let window_end = instant_at(row, "window_end", &what)?;
    let consecutive_failures: i64 = row.column("consecutive_failures", &what)?;
    Ok(SyncState {
        delta_link: row.column("delta_link", &what)?,
        subscription_id: row.column("subscription_id", &what)?,
        subscription_expires_at: instant_at(row, "subscription_expires_at", &what)?,
        client_state,
        last_full_sync_at: instant_at(row, "last_full_sync_at", &what)?,
        last_delta_at: instant_at(row, "last_delta_at", &what)?,
        last_error,
        consecutive_failures: u32::try_from(consecutive_failures).unwrap_or(u32::MAX),
        appointment_window: window_start
            .zip(window_end)
            .map(|(start, end)| AppointmentWindow { start, end }),
    })
}

/// Reads `token_status, token_error, token_checked_at, secret_expires_on (as text),
/// last_throttled_at, n_requests, n_throttled, n_failures`.
pub(crate) fn decode_source_state<R: StoreRow>(
    row: &R,
    source: &SourceId,
) -> Result<SourceState, StoreError> {
    let what = || format!("state of source {source}");
    let token_status: String = row.column("token_status", &what)?;
    let token = match token_status.as_str() {
        "unknown" => TokenState::Unknown,
        "ok" => TokenState::Ok,
        "failed" => TokenState::Failed {
            error: row
                .column::<Option<String>>("token_error", &what)?
                .unwrap_or_default(),
        },
        other => {
            return Err(StoreError::InvalidRow {
                what: what(),
                field: "token_status",
                reason: format!("unknown state `{other}`"),
            })
        }
    };
    let secret_expires_on = row
        .column::<Option<String>>("secret_expires_on", &what)?
        .map(|text| decode_date(&text, "secret_expires_on", &what))
        .transpose()?;
    let count =
        |column: &'static str| count_from_i64(row.column::<i64>(column, &what)?, column, &what);
    Ok(SourceState {
        token,
        token_checked_at: instant_at(row, "token_checked_at", &what)?,
        secret_expires_on,
        last_throttled_at: instant_at(row, "last_throttled_at", &what)?,
        counters: SourceCounters {
            n_requests: count("n_requests")?,
            n_throttled: count("n_throttled")?,
            n_failures: count("n_failures")?,
        },
    })
}

/// Reads `activity, note, until_at, why, next_change_at, decided_at, published_fingerprint`.
pub(crate) fn decode_presence<R: StoreRow>(
    row: &R,
    key: &PersonKey,
) -> Result<CurrentPresence, StoreError> {
    let what = || format!("presence of {key}");
    Ok(CurrentPresence {
        activity: row.column("activity", &what)?,
        note: row.column("note", &what)?,
        until: instant_at(row, "until_at", &what)?,
        why: row.column("why", &what)?,
        next_change_at: instant_at(row, "next_change_at", &what)?,
        decided_at: decode_timestamp(row.column("decided_at", &what)?, "decided_at", &what)?,
        published_fingerprint: row.column("published_fingerprint", &what)?,
    })
}

/// Reads `id, topic, person_source, person_address, payload (as text), created_at`.
pub(crate) fn decode_outbox_event<R: StoreRow>(row: &R) -> Result<OutboxEvent, StoreError> {
    let id: i64 = row.column("id", &|| "an outbox event".to_string())?;
    let what = || format!("outbox event {id}");
    let person_source: Option<String> = row.column("person_source", &what)?;
    let person = match person_source {
        Some(_) => Some(decode_person_key(row, "person_source", "person_address")?),
        None => None,
    };
    let payload_text: String = row.column("payload", &what)?;
    let payload = serde_json::from_str(&payload_text).map_err(|error| StoreError::InvalidRow {
        what: what(),
        field: "payload",
        reason: error.to_string(),
    })?;
    Ok(OutboxEvent {
        id: OutboxId(id),
        topic: row.column("topic", &what)?,
        person,
        payload,
        created_at: decode_timestamp(row.column("created_at", &what)?, "created_at", &what)?,
    })
}

// Secrets.

/// The name (for messages) and associated data of a person's sealed `client_state`.
fn client_state_names(key: &PersonKey) -> (String, String) {
    let name = format!("client_state of {key}");
    // Length-prefixed so that no choice of source id and address can collide.
    let aad = format!(
        "sync_state.client_state:{}:{}:{}",
        key.source.0.len(),
        key.source,
        key.address
    );
    (name, aad)
}

/// The sealed `client_state` of `state`, as `set_sync_state` stores it.
pub(crate) fn seal_client_state(
    secret_key: &SecretKey,
    key: &PersonKey,
    state: &SyncState,
) -> Result<Option<Vec<u8>>, StoreError> {
    state
        .client_state
        .as_ref()
        .map(|secret| {
            let (name, aad) = client_state_names(key);
            secret_key.seal(&name, &aad, secret.expose().as_bytes())
        })
        .transpose()
}

fn secret_aad(name: &str) -> String {
    format!("secrets.sealed:{name}")
}

/// A named secret of the `secrets` table, sealed.
pub(crate) fn seal_named_secret(
    secret_key: &SecretKey,
    name: &str,
    secret: &Secret,
) -> Result<Vec<u8>, StoreError> {
    secret_key.seal(name, &secret_aad(name), secret.expose().as_bytes())
}

/// Counts what is sealed with the store's key, in either backend's SQL.
pub(crate) const COUNT_SEALED: &str = "SELECT (SELECT COUNT(*) FROM secrets) + \
     (SELECT COUNT(*) FROM sync_state WHERE client_state_sealed IS NOT NULL)";

/// A named secret of the `secrets` table, opened.
pub(crate) fn open_named_secret(
    secret_key: &SecretKey,
    name: &str,
    sealed: &[u8],
) -> Result<Secret, StoreError> {
    open_secret(secret_key, name, &secret_aad(name), sealed)
}

fn open_secret(
    secret_key: &SecretKey,
    name: &str,
    aad: &str,
    sealed: &[u8],
) -> Result<Secret, StoreError> {
    let clear = secret_key.open(name, aad, sealed)?;
    let text = String::from_utf8(clear.to_vec()).map_err(|_| StoreError::SecretUndecryptable {
        name: name.to_string(),
    })?;
    Ok(Secret::new(text))
}

// Batches.

/// The people ids of `keys`, in order, from what a lookup `found` (by position in `keys`);
/// `PersonNotFound` names the first key that is not stored.
pub(crate) fn ids_in_order(
    keys: &[&PersonKey],
    found: &HashMap<usize, i64>,
    operation: &'static str,
) -> Result<Vec<i64>, StoreError> {
    keys.iter()
        .enumerate()
        .map(|(position, key)| {
            found
                .get(&position)
                .copied()
                .ok_or_else(|| StoreError::PersonNotFound {
                    operation,
                    person: (*key).clone(),
                })
        })
        .collect()
}

/// Whether some key appears twice.
pub(crate) fn has_repeats<K: Eq + Hash>(keys: impl IntoIterator<Item = K>) -> bool {
    let mut seen = std::collections::HashSet::new();
    !keys.into_iter().all(|key| seen.insert(key))
}

/// What a statement over the people from `first` to `last` did, for error messages.
pub(crate) fn people_range(verb: &str, first: &PersonKey, last: &PersonKey) -> String {
    if first == last {
        format!("{verb} of {first}")
    } else {
        format!("{verb} of the people from {first} to {last}")
    }
}

/// A row of `sip_publications`.
pub(crate) fn sip_publication(
    uri: String,
    etag: String,
    expires_at_ms: i64,
) -> Result<crate::SipPublication, StoreError> {
    let expires_at =
        Timestamp::from_millisecond(expires_at_ms).map_err(|error| StoreError::InvalidRow {
            what: format!("the SIP publication of {uri}"),
            field: "expires_at_ms",
            reason: error.to_string(),
        })?;
    Ok(crate::SipPublication {
        uri,
        etag: Some(etag),
        expires_at,
    })
}

/// How long a room meeting's check-in record is kept after the meeting ended.
pub(crate) const ROOM_CHECK_INS_KEPT_SECONDS: i64 = 7 * 24 * 3600;

/// The columns of `room_check_ins` joined with the person's key, in both backends.
pub(crate) const ROOM_CHECK_IN_COLUMNS: &str = "p.source_id, p.address, c.appointment_id, \
     c.meeting_start, c.meeting_end, c.state, c.at, c.detail";

pub(crate) fn decode_room_check_in<R: StoreRow>(
    row: &R,
) -> Result<(PersonKey, crate::RoomCheckIn), StoreError> {
    let key = decode_person_key(row, "source_id", "address")?;
    let what = || format!("room meeting record of {key}");
    let state: String = row.column("state", &what)?;
    let state = crate::CheckInState::parse(&state).ok_or_else(|| StoreError::InvalidRow {
        what: what(),
        field: "state",
        reason: format!("unknown state {state:?}"),
    })?;
    let record = crate::RoomCheckIn {
        appointment_id: row.column("appointment_id", &what)?,
        meeting_start: decode_timestamp(
            row.column("meeting_start", &what)?,
            "meeting_start",
            &what,
        )?,
        meeting_end: decode_timestamp(row.column("meeting_end", &what)?, "meeting_end", &what)?,
        state,
        at: decode_timestamp(row.column("at", &what)?, "at", &what)?,
        detail: row.column("detail", &what)?,
    };
    Ok((key, record))
}
