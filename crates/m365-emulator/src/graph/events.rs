//! `/v1.0/users/{id}/events`: list, get, create, update, delete.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::calendar_view::DEFAULT_EVENT_PAGE_SIZE;
use super::{
    authenticate, enter_mailbox, parse_prefer, preference_applied, resolve_mailbox, GraphError,
    Need, QueryParameters,
};
use crate::calendar::{
    create_event, decline_event, delete_event, event_json, update_event, EmailAddress,
    EventInputError,
};
use crate::faults::lock;
use crate::state::AppState;
use crate::timefmt::NamedZone;

fn input_error(error: EventInputError) -> GraphError {
    match error {
        EventInputError::NotFound => GraphError::item_not_found(),
        EventInputError::Invalid(message) => {
            GraphError::bad_request("ErrorInvalidRequest", message)
        }
    }
}

fn parse_json_body(body: &Bytes) -> Result<Value, GraphError> {
    serde_json::from_slice(body).map_err(|error| {
        GraphError::bad_request(
            "RequestBodyRead",
            format!("The request body is not valid JSON: {error}"),
        )
    })
}

/// `GET /v1.0/users/{id}/events`: events as stored (series masters, not occurrences).
pub async fn list_events(
    State(state): State<Arc<AppState>>,
    Path(user_key): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "events.list", Need::CalendarRead).await?;
        let user_index = resolve_mailbox(&state, &caller, &user_key)?;
        let _slot = enter_mailbox(&state, &caller, user_index).await?;
        let query = QueryParameters(query);
        let prefer = parse_prefer(&headers);
        let page_size = match query.get("$top") {
            Some(_) => query.top(DEFAULT_EVENT_PAGE_SIZE, 1000)?,
            None => prefer.max_page_size.unwrap_or(DEFAULT_EVENT_PAGE_SIZE),
        };
        let skip: usize = query
            .get("$skip")
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let zone = prefer.time_zone.clone().unwrap_or_else(NamedZone::utc);
        let select = query.select();
        let address = state.directory.users[user_index].mail.clone();
        let items: Vec<_> = lock(&state.mailboxes[user_index])
            .events
            .iter()
            .filter_map(|event| event.as_item())
            .collect();
        let page: Vec<Value> = items
            .iter()
            .skip(skip)
            .take(page_size)
            .map(|item| event_json(item, &address, &zone, select.as_deref()))
            .collect();
        let mut body = json!({"@odata.context": format!("{}/$metadata#users('{}')/events", state.graph_url, user_key), "value": page});
        if skip.saturating_add(page_size) < items.len() {
            body["@odata.nextLink"] = json!(format!(
                "{}{}?{}",
                state.base_url,
                uri.path(),
                query.with(&[("$skip", (skip.saturating_add(page_size)).to_string())])
            ));
        }
        let mut response = Json(body).into_response();
        preference_applied(&mut response, prefer.time_zone.as_ref(), None);
        Ok::<_, GraphError>(response)
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1.0/users/{id}/events/{event}`
pub async fn get_event(
    State(state): State<Arc<AppState>>,
    Path((user_key, event_id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "events.get", Need::CalendarRead).await?;
        let user_index = resolve_mailbox(&state, &caller, &user_key)?;
        let _slot = enter_mailbox(&state, &caller, user_index).await?;
        let query = QueryParameters(query);
        let prefer = parse_prefer(&headers);
        let zone = prefer.time_zone.clone().unwrap_or_else(NamedZone::utc);
        let item = lock(&state.mailboxes[user_index])
            .item(&event_id)
            .ok_or_else(GraphError::item_not_found)?;
        let select = query.select();
        let mut body = event_json(
            &item,
            &state.directory.users[user_index].mail,
            &zone,
            select.as_deref(),
        );
        body["@odata.context"] = json!(format!(
            "{}/$metadata#users('{}')/events/$entity",
            state.graph_url, user_key
        ));
        let mut response = Json(body).into_response();
        preference_applied(&mut response, prefer.time_zone.as_ref(), None);
        Ok::<_, GraphError>(response)
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1.0/users/{id}/events`
pub async fn create(
    State(state): State<Arc<AppState>>,
    Path(user_key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "events.create", Need::CalendarWrite).await?;
        let user_index = resolve_mailbox(&state, &caller, &user_key)?;
        let _slot = enter_mailbox(&state, &caller, user_index).await?;
        let json_body = parse_json_body(&body)?;
        let user = &state.directory.users[user_index];
        let organizer = EmailAddress {
            name: user.display_name.clone(),
            address: user.mail.clone(),
        };
        let (item, change) = {
            let mut mailbox = lock(&state.mailboxes[user_index]);
            create_event(
                &mut mailbox,
                organizer,
                user.time_zone.clone(),
                &json_body,
                state.clock.now(),
                &state.ids,
            )
            .map_err(input_error)?
        };
        super::subscriptions::notify_change(&state, user_index, &change);
        // The rooms among the attendees answer (`booking.rs`); the response shows the event
        // as sent, before their answers, as Exchange's does.
        crate::booking::sync_room_copies(&state, user_index, &item.ical_uid);
        let prefer = parse_prefer(&headers);
        let zone = prefer
            .time_zone
            .clone()
            .unwrap_or_else(|| item.data.zone.clone());
        let mut response_body = event_json(&item, &user.mail, &zone, None);
        response_body["@odata.context"] = json!(format!(
            "{}/$metadata#users('{}')/events/$entity",
            state.graph_url, user_key
        ));
        let mut response = (StatusCode::CREATED, Json(response_body)).into_response();
        let location = format!(
            "{}/users('{}')/events('{}')",
            state.graph_url, user.id, item.id
        );
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Ok::<_, GraphError>(response)
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `PATCH /v1.0/users/{id}/events/{event}`
pub async fn update(
    State(state): State<Arc<AppState>>,
    Path((user_key, event_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "events.update", Need::CalendarWrite).await?;
        let user_index = resolve_mailbox(&state, &caller, &user_key)?;
        let _slot = enter_mailbox(&state, &caller, user_index).await?;
        let json_body = parse_json_body(&body)?;
        let (item, change) = {
            let mut mailbox = lock(&state.mailboxes[user_index]);
            update_event(
                &mut mailbox,
                &event_id,
                &json_body,
                state.clock.now(),
                &state.ids,
            )
            .map_err(input_error)?
        };
        super::subscriptions::notify_change(&state, user_index, &change);
        crate::booking::sync_room_copies(&state, user_index, &item.ical_uid);
        let prefer = parse_prefer(&headers);
        let zone = prefer
            .time_zone
            .clone()
            .unwrap_or_else(|| item.data.zone.clone());
        let mut response_body =
            event_json(&item, &state.directory.users[user_index].mail, &zone, None);
        response_body["@odata.context"] = json!(format!(
            "{}/$metadata#users('{}')/events/$entity",
            state.graph_url, user_key
        ));
        Ok::<_, GraphError>(Json(response_body).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /v1.0/users/{id}/events/{event}`
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path((user_key, event_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "events.delete", Need::CalendarWrite).await?;
        let user_index = resolve_mailbox(&state, &caller, &user_key)?;
        let _slot = enter_mailbox(&state, &caller, user_index).await?;
        let (change, ical_uid) = {
            let mut mailbox = lock(&state.mailboxes[user_index]);
            // Only the organizer's delete is a cancellation.
            let ical_uid = mailbox
                .item(&event_id)
                .filter(|item| {
                    state.directory.user(&item.data.organizer.address) == Some(user_index)
                })
                .map(|item| item.ical_uid);
            let change = delete_event(&mut mailbox, &event_id, state.clock.now(), &state.ids)
                .map_err(input_error)?;
            (change, ical_uid)
        };
        super::subscriptions::notify_change(&state, user_index, &change);
        // The organizer's delete cancels the meeting for its rooms (`booking.rs`).
        if let Some(ical_uid) = ical_uid {
            crate::booking::sync_room_copies(&state, user_index, &ical_uid);
        }
        Ok::<_, GraphError>(StatusCode::NO_CONTENT.into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1.0/users/{id}/events/{event}/decline` (and `/me/events/{event}/decline`), Graph's
/// [event: decline](https://learn.microsoft.com/graph/api/event-decline): the body's `comment`
/// and `sendResponse` (both optional), `202 Accepted` with an empty body. Needs
/// `Calendars.ReadWrite` (application permission for app-only tokens, delegated scope
/// otherwise), else 403 `ErrorAccessDenied`; an unknown event is 404 `ErrorItemNotFound`. The
/// meeting leaves the mailbox's calendar and the organizer's copy shows the attendee declined
/// (`calendar::decline_event`).
pub async fn decline(
    State(state): State<Arc<AppState>>,
    Path((user_key, event_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "events.decline", Need::CalendarWrite).await?;
        let user_index = resolve_mailbox(&state, &caller, &user_key)?;
        let _slot = enter_mailbox(&state, &caller, user_index).await?;
        let json_body = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            parse_json_body(&body)?
        };
        if !json_body.is_object() {
            return Err(GraphError::bad_request(
                "RequestBodyRead",
                "The request body must be a JSON object.",
            ));
        }
        let comment = match json_body.get("comment") {
            None | Some(Value::Null) => "",
            Some(Value::String(comment)) => comment.as_str(),
            Some(_) => {
                return Err(GraphError::bad_request(
                    "RequestBodyRead",
                    "The property 'comment' must be a string.",
                ))
            }
        };
        if json_body
            .get("sendResponse")
            .is_some_and(|send| !send.is_boolean() && !send.is_null())
        {
            return Err(GraphError::bad_request(
                "RequestBodyRead",
                "The property 'sendResponse' must be a boolean.",
            ));
        }
        decline_event(&state, user_index, &event_id, comment, state.clock.now())
            .map_err(input_error)?;
        Ok::<_, GraphError>(StatusCode::ACCEPTED.into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}
