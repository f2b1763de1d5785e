//! `POST /v1.0/users/{id}/calendar/getSchedule`: free/busy with `availabilityView`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use super::{
    authenticate, enter_mailbox, parse_prefer, preference_applied, resolve_mailbox, GraphError,
    Need,
};
use crate::calendar::ShowAs;
use crate::faults::lock;
use crate::state::AppState;
use crate::timefmt::{graph_local, localize, parse_civil, resolve_zone, weekday_name, NamedZone};

const MAX_SCHEDULES: usize = 20;
const MAX_WINDOW_DAYS: i64 = 62;

fn invalid(message: impl Into<String>) -> GraphError {
    GraphError::bad_request("ErrorInvalidParameter", message)
}

fn read_instant(body: &Value, name: &str) -> Result<Timestamp, GraphError> {
    let value = body
        .get(name)
        .ok_or_else(|| invalid(format!("{name} is required.")))?;
    let date_time = value
        .get("dateTime")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{name}.dateTime is required.")))?;
    let zone = resolve_zone(
        value
            .get("timeZone")
            .and_then(Value::as_str)
            .unwrap_or("UTC"),
    )
    .map_err(|error| invalid(error.to_string()))?;
    let civil = parse_civil(date_time).map_err(|error| invalid(error.to_string()))?;
    localize(civil, &zone.zone)
        .map(|zoned| zoned.timestamp())
        .map_err(|error| invalid(error.to_string()))
}

pub async fn get_schedule(
    State(state): State<Arc<AppState>>,
    Path(user_key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let caller =
            authenticate(&state, &headers, "calendar.getSchedule", Need::CalendarRead).await?;
        let user_index = resolve_mailbox(&state, &caller, &user_key)?;
        let _slot = enter_mailbox(&state, &caller, user_index).await?;
        let body: Value = serde_json::from_slice(&body).map_err(|error| {
            GraphError::bad_request(
                "RequestBodyRead",
                format!("The request body is not valid JSON: {error}"),
            )
        })?;
        let schedules: Vec<String> = body
            .get("schedules")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if schedules.is_empty() {
            return Err(invalid("schedules must name at least one mailbox."));
        }
        if schedules.len() > MAX_SCHEDULES {
            return Err(invalid(format!(
                "The number of schedules requested ({}) exceeds the maximum of {MAX_SCHEDULES}.",
                schedules.len()
            )));
        }
        let start = read_instant(&body, "startTime")?;
        let end = read_instant(&body, "endTime")?;
        if end <= start {
            return Err(invalid("endTime must be later than startTime."));
        }
        if end.duration_since(start) > SignedDuration::from_hours(24 * MAX_WINDOW_DAYS) {
            return Err(invalid(format!(
                "The requested time window exceeds the maximum of {MAX_WINDOW_DAYS} days."
            )));
        }
        let interval_minutes = body
            .get("availabilityViewInterval")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        if !(5..=1440).contains(&interval_minutes) {
            return Err(invalid(
                "availabilityViewInterval must be between 5 and 1440 minutes.",
            ));
        }
        let prefer = parse_prefer(&headers);
        let zone = prefer.time_zone.clone().unwrap_or_else(NamedZone::utc);
        let interval = SignedDuration::from_mins(interval_minutes);
        let slots =
            (end.duration_since(start).as_secs() + interval.as_secs() - 1) / interval.as_secs();
        let mut results = Vec::new();
        for schedule in &schedules {
            let target = state
                .directory
                .user(schedule)
                .filter(|index| state.directory.users[*index].tenant_index == caller.tenant_index);
            let Some(target) = target.filter(|index| state.directory.users[*index].has_mailbox)
            else {
                results.push(json!({
                    "scheduleId": schedule,
                    "availabilityView": "",
                    "scheduleItems": [],
                    "error": {"message": "The specified recipient is not found.", "responseCode": "ErrorMailRecipientNotFound"},
                }));
                continue;
            };
            let instances = lock(&state.mailboxes[target]).view(start, end);
            let instances: Vec<_> = instances
                .into_iter()
                .filter(|instance| !instance.data.is_cancelled)
                .collect();
            let mut view = String::with_capacity(slots as usize);
            for slot in 0..slots {
                let slot_start = start.checked_add(interval * slot as i32).unwrap_or(end);
                let slot_end = slot_start.checked_add(interval).unwrap_or(end).min(end);
                let busiest = instances
                    .iter()
                    .filter(|instance| {
                        instance.start.timestamp() < slot_end
                            && instance.end.timestamp() > slot_start
                    })
                    .map(|instance| instance.data.show_as)
                    .max_by_key(|show_as| show_as.precedence())
                    .unwrap_or(ShowAs::Free);
                view.push(char::from(b'0' + busiest.availability_digit()));
            }
            let items: Vec<Value> = instances
                .iter()
                .filter(|instance| !matches!(instance.data.show_as, ShowAs::Free | ShowAs::Unknown))
                .map(|instance| {
                    let is_private = instance.data.sensitivity.is_private();
                    let mut item = json!({
                        "isPrivate": is_private,
                        "status": instance.data.show_as.name(),
                        "start": {"dateTime": graph_local(instance.start.timestamp().to_zoned(zone.zone.clone()).datetime()), "timeZone": zone.name},
                        "end": {"dateTime": graph_local(instance.end.timestamp().to_zoned(zone.zone.clone()).datetime()), "timeZone": zone.name},
                    });
                    if !is_private {
                        item["subject"] = json!(instance.data.subject);
                        item["location"] = json!(instance.data.location);
                    }
                    item
                })
                .collect();
            let user = &state.directory.users[target];
            let hours = &user.working_hours;
            results.push(json!({
                "scheduleId": schedule,
                "availabilityView": view,
                "scheduleItems": items,
                "workingHours": {
                    "daysOfWeek": hours.days.iter().map(|day| weekday_name(*day)).collect::<Vec<_>>(),
                    "startTime": format!("{}.0000000", hours.start.strftime("%H:%M:%S")),
                    "endTime": format!("{}.0000000", hours.end.strftime("%H:%M:%S")),
                    "timeZone": {"name": user.time_zone.name},
                },
            }));
        }
        let mut response = Json(json!({
            "@odata.context": format!("{}/$metadata#Collection(microsoft.graph.scheduleInformation)", state.graph_url),
            "value": results,
        }))
        .into_response();
        preference_applied(&mut response, prefer.time_zone.as_ref(), None);
        Ok::<_, GraphError>(response)
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}
