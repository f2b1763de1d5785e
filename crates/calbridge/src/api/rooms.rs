//! `GET /api/v1/rooms` and `GET /api/v1/rooms/{address}`: the meeting rooms of the directory's
//! `rooms` entries with their state now, answered from the store (never by asking Microsoft),
//! so that "a free room for 8 people for the next 30 minutes in building B" costs one store
//! read and no request to Graph.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use calbridge_domain::{MailboxAddress, RoomInfo};
use calbridge_presence::{room_agenda, room_state, RoomFilter, RoomMeeting, RoomState};
use calbridge_store::{PersonKey, RoomCheckIn};

use crate::check_in::CheckInError;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{api_error, parse_query_instant, ApiState};

/// The filters of `GET /api/v1/rooms`; all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomQuery {
    /// The building, as the directory names it (compared without regard to case).
    building: Option<String>,
    /// The floor number.
    floor: Option<i32>,
    /// At least this many seats.
    min_capacity: Option<u32>,
    /// Only rooms free now (`true`) or occupied now (`false`).
    free_now: Option<bool>,
    /// Only rooms free for this many minutes from `from` (default now).
    free_for_minutes: Option<u32>,
    /// RFC 3339 instant for `free_for_minutes`.
    from: Option<String>,
    /// `today`: each room with its local day's meetings (`agenda`), as the detail has it, so
    /// that a page of hundreds of rooms draws their days from one request.
    agenda: Option<AgendaDay>,
}

/// The days `agenda=` can ask for: only today (the local day of `presence.timezone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AgendaDay {
    Today,
}

/// The longest `free_for_minutes`: a week. Longer asks about a calendar calbridge does not hold.
const MAX_FREE_FOR_MINUTES: u32 = 7 * 24 * 60;

fn meeting_json(meeting: &RoomMeeting) -> Value {
    json!({
        "start": meeting.start.to_string(),
        "end": meeting.end.to_string(),
        "title": meeting.title,
        "organizer": meeting.organizer.as_ref().map(MailboxAddress::as_str),
        "private": meeting.private,
    })
}

fn state_json(state: &RoomState) -> Value {
    json!({
        "occupied": state.occupied,
        "note": state.note,
        "free_until": state.free_until.map(|at| at.to_string()),
        "occupied_until": state.occupied_until.map(|at| at.to_string()),
        "current": state.current.as_ref().map(meeting_json),
        "next": state.next.as_ref().map(meeting_json),
        "next_change_at": state.next_change_at.map(|at| at.to_string()),
    })
}

fn room_json(key: &PersonKey, room: &RoomInfo, state: &RoomState) -> Value {
    json!({
        "address": key.address.as_str(),
        "source": key.source.0,
        "display_name": room.display_name,
        "capacity": room.capacity,
        "building": room.building,
        "floor_number": room.floor_number,
        "floor_label": room.floor_label,
        "room_list": room.room_list,
        "bookable": room.bookable,
        "state": state_json(state),
    })
}

async fn stored_rooms(state: &ApiState) -> Result<Vec<(PersonKey, RoomInfo)>, Response> {
    state.store.list_rooms().await.map_err(|error| {
        api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the rooms from the store: {error}"),
        )
    })
}

/// `GET /api/v1/rooms?building=…&floor=…&min_capacity=…&free_now=…&free_for_minutes=…&from=…&agenda=today`
pub async fn list(
    State(state): State<Arc<ApiState>>,
    query: Result<Query<RoomQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: the query takes building, floor, min_capacity, free_now (true or \
                     false), free_for_minutes, from (an RFC 3339 instant) and agenda (only \
                     agenda=today)",
                    calbridge_domain::shorten(&rejection.body_text(), 200)
                ),
            )
        }
    };
    let now = state.clock.now();
    let span = match query.free_for_minutes {
        None => None,
        Some(minutes) if minutes == 0 || minutes > MAX_FREE_FOR_MINUTES => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "free_for_minutes = {minutes} is out of range: use 1 to {MAX_FREE_FOR_MINUTES}"
                ),
            )
        }
        Some(minutes) => match parse_query_instant("from", query.from.as_deref(), now) {
            Ok(from) => Some((from, from + SignedDuration::from_mins(i64::from(minutes)))),
            Err(error) => return error.into_response(),
        },
    };
    // One store read for every room and its calendar.
    let rooms = match state.store.list_rooms_with_appointments().await {
        Ok(rooms) => rooms,
        Err(error) => {
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the rooms from the store: {error}"),
            )
        }
    };
    let locale = state.hub.locale();
    let records = match check_in_records(&state, now).await {
        Ok(records) => records,
        Err(response) => return response,
    };
    let search = RoomFilter {
        building: query.building.clone(),
        floor: query.floor,
        min_capacity: query.min_capacity,
        free_now: query.free_now,
        free_between: span,
    };
    let mut listed = Vec::new();
    for (key, room, appointments) in &rooms {
        let Some(room_now) = search.select(room, appointments, state.room_show, &locale, now)
        else {
            continue;
        };
        let mut body = room_json(key, room, &room_now);
        body["check_in"] = check_in_json(&state, appointments, records.get(key), now);
        if query.agenda == Some(AgendaDay::Today) {
            body["agenda"] = today_agenda(&state, &locale, appointments, now);
        }
        listed.push(body);
    }
    // No room at all (not: none left by the filters): how to make rooms appear.
    let hints: Vec<&str> = if rooms.is_empty() {
        vec![crate::service::ROOM_LISTS_HINT]
    } else {
        Vec::new()
    };
    let mut body = json!({
        "at": now.to_string(),
        "free_between": span.map(|(from, to)| json!({"from": from.to_string(), "to": to.to_string()})),
        "check_in": check_in_summary(&state),
        "rooms": listed,
        "hints": hints,
    });
    if query.agenda.is_some() {
        // The zone the agendas' days are local to, as the detail names it.
        body["timezone"] = json!(locale.zone.iana());
    }
    Json(body).into_response()
}

/// A room's `agenda`: its meetings of the local day (of `presence.timezone`) around `now`,
/// with the day's bounds (`from`, `to`), as `[rooms] show` names them.
fn today_agenda(
    state: &ApiState,
    locale: &calbridge_presence::Locale,
    appointments: &[calbridge_domain::Appointment],
    now: Timestamp,
) -> Value {
    let zone = locale.zone.zone();
    let today = now.to_zoned(zone.clone()).date();
    let day_start = calbridge_domain::start_of_day(today, zone);
    let day_end = today
        .tomorrow()
        .map(|tomorrow| calbridge_domain::start_of_day(tomorrow, zone))
        .unwrap_or(Timestamp::MAX);
    json!({
        "from": day_start.to_string(),
        "to": day_end.to_string(),
        "meetings": room_agenda(appointments, state.room_show, locale, day_start, day_end)
            .iter()
            .map(meeting_json)
            .collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/rooms/{address}`: the room, its state, and today's meetings (the local day of
/// `presence.timezone`).
pub async fn detail(State(state): State<Arc<ApiState>>, Path(address): Path<String>) -> Response {
    let address = match MailboxAddress::parse(&address) {
        Ok(address) => address,
        Err(error) => return api_error(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let rooms = match stored_rooms(&state).await {
        Ok(rooms) => rooms,
        Err(response) => return response,
    };
    let Some((key, room)) = rooms.iter().find(|(key, _)| key.address == address) else {
        return api_error(
            StatusCode::NOT_FOUND,
            format!("no room {address} is followed (rooms come from a [[directory]] rooms entry)"),
        );
    };
    let appointments = match state.store.load_appointments(key).await {
        Ok(appointments) => appointments,
        Err(error) => {
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the calendar of room {address}: {error}"),
            )
        }
    };
    let now = state.clock.now();
    let locale = state.hub.locale();
    let room_now = room_state(&appointments, state.room_show, &locale, now);
    let records = match check_in_records(&state, now).await {
        Ok(records) => records,
        Err(response) => return response,
    };
    let mut body = room_json(key, room, &room_now);
    body["check_in"] = check_in_json(&state, &appointments, records.get(key), now);
    // The instant and zone the state was computed at and in, for panels to draw "now".
    body["at"] = json!(now.to_string());
    body["timezone"] = json!(locale.zone.iana());
    body["agenda"] = today_agenda(&state, &locale, &appointments, now);
    Json(body).into_response()
}

/// The rooms and their details, read from the store at most every [`ROOMS_MAX_AGE`], so that a
/// presence change on the live stream can say whether it is a room's (and show the room)
/// without reading every room for each change.
#[derive(Default)]
pub struct RoomKeys {
    read_at: Option<std::time::Instant>,
    rooms: std::collections::HashMap<PersonKey, RoomInfo>,
}

const ROOMS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30);

/// The `room` event of the live stream for a presence change of `person`, or a check-in or
/// release in `person`'s calendar, when `person` is a room: the room with its state now (and
/// its `check_in` when check-in is on), as `GET /api/v1/rooms` lists it.
pub async fn room_event(state: &ApiState, person: &PersonKey) -> Option<Value> {
    let room = {
        let mut cache = state.room_keys.lock().await;
        if cache
            .read_at
            .is_none_or(|read_at| read_at.elapsed() > ROOMS_MAX_AGE)
        {
            // A store that does not answer keeps the last list; the next change tries again.
            if let Ok(rooms) = state.store.list_rooms().await {
                cache.rooms = rooms.into_iter().collect();
                cache.read_at = Some(std::time::Instant::now());
            }
        }
        cache.rooms.get(person)?.clone()
    };
    let appointments = state.store.load_appointments(person).await.ok()?;
    let locale = state.hub.locale();
    let now = state.clock.now();
    let mut body = room_json(
        person,
        &room,
        &room_state(&appointments, state.room_show, &locale, now),
    );
    if state.check_ins.is_some() {
        // As the list shows it; a store that does not answer leaves it out of this event.
        if let Ok(records) = check_in_records(state, now).await {
            body["check_in"] = check_in_json(state, &appointments, records.get(person), now);
        }
    }
    Some(body)
}

/// The check-in records of every room's meetings of the last day, by room (none when
/// check-in is off).
async fn check_in_records(
    state: &ApiState,
    now: Timestamp,
) -> Result<std::collections::HashMap<PersonKey, Vec<RoomCheckIn>>, Response> {
    let mut by_room: std::collections::HashMap<PersonKey, Vec<RoomCheckIn>> = Default::default();
    if state.check_ins.is_none() {
        return Ok(by_room);
    }
    for (key, record) in recent_check_ins(state, now).await? {
        by_room.entry(key).or_default().push(record);
    }
    Ok(by_room)
}

/// A room's `check_in`: `null` when check-in is off; otherwise whether a check-in is open now
/// (for which meeting, released when at `deadline`) and whether the meeting running now was
/// checked in.
fn check_in_json(
    state: &ApiState,
    appointments: &[calbridge_domain::Appointment],
    records: Option<&Vec<RoomCheckIn>>,
    now: Timestamp,
) -> Value {
    let Some(check_ins) = &state.check_ins else {
        return Value::Null;
    };
    let records = records.map(Vec::as_slice).unwrap_or_default();
    let status = check_ins.status(appointments, records, now);
    json!({
        "minutes": status.minutes,
        "open": status.open.is_some(),
        "meeting_start": status.open.as_ref().map(|meeting| meeting.start.to_string()),
        "deadline": status.open.as_ref().map(|meeting| meeting.deadline.to_string()),
        "checked_in": status.current_checked_in,
    })
}

/// Check-in for the whole service: off (`null`), or the minutes and the sources that refuse
/// releases (no write right to the rooms' calendars), with what they answered.
fn check_in_summary(state: &ApiState) -> Value {
    let Some(check_ins) = &state.check_ins else {
        return Value::Null;
    };
    json!({
        "minutes": check_ins.minutes(),
        "refused_by": check_ins
            .refusals()
            .into_iter()
            .map(|(source, refusal)| json!({
                "source": source.0,
                "at": refusal.at.to_string(),
                "error": refusal.error,
            }))
            .collect::<Vec<_>>(),
    })
}

/// Checks in the meeting of `room` that check-in is open for (`POST /api/v1/rooms/{address}/check-in`
/// and the panel's button): 200 with the meeting, 409 when
/// check-in is off or there is no such meeting (or it was released), 503 when the store does
/// not answer.
pub async fn check_in(state: &ApiState, room: &PersonKey) -> Response {
    let Some(check_ins) = &state.check_ins else {
        return api_error(
            StatusCode::CONFLICT,
            "check-in is off: set [rooms] check_in_minutes to hold meetings for a check-in",
        );
    };
    match check_ins.check_in(room).await {
        Ok(meeting) => Json(json!({
            "room": room.address.as_str(),
            "checked_in": {
                "start": meeting.start.to_string(),
                "end": meeting.end.to_string(),
                "deadline": meeting.deadline.to_string(),
            },
        }))
        .into_response(),
        Err(error @ CheckInError::Store(_)) => {
            api_error(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        }
        Err(error) => api_error(StatusCode::CONFLICT, error.to_string()),
    }
}

/// `GET /api/v1/rooms/check-ins`: every room meeting's check-in or release of the last day,
/// releases with their rule and refusals with the source's answer (the admin page's log).
pub async fn check_in_log(State(state): State<Arc<ApiState>>) -> Response {
    if state.check_ins.is_none() {
        return Json(json!({"check_in": Value::Null, "meetings": []})).into_response();
    }
    let records = match recent_check_ins(&state, state.clock.now()).await {
        Ok(records) => records,
        Err(response) => return response,
    };
    let meetings: Vec<Value> = records
        .iter()
        .map(|(key, record)| {
            json!({
                "room": key.address.as_str(),
                "source": key.source.0,
                "meeting_start": record.meeting_start.to_string(),
                "meeting_end": record.meeting_end.to_string(),
                "state": record.state.as_str(),
                "at": record.at.to_string(),
                "detail": record.detail,
            })
        })
        .collect();
    Json(json!({"check_in": check_in_summary(&state), "meetings": meetings})).into_response()
}

/// Every room meeting's check-in record of the day before `now`: one store read.
async fn recent_check_ins(
    state: &ApiState,
    now: Timestamp,
) -> Result<Vec<(PersonKey, RoomCheckIn)>, Response> {
    state
        .store
        .list_room_meetings(now - SignedDuration::from_hours(24))
        .await
        .map_err(|error| {
            api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the rooms' check-ins from the store: {error}"),
            )
        })
}
