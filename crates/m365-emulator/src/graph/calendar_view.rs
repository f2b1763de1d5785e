//! `GET /v1.0/users/{id}/calendarView` (also `/calendar/calendarView`).

use std::sync::Arc;

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jiff::Timestamp;
use serde_json::{json, Value};

use super::{
    authenticate, enter_mailbox, parse_prefer, preference_applied, resolve_mailbox, GraphError,
    Need, QueryParameters,
};
use crate::calendar::event_json;
use crate::faults::lock;
use crate::state::AppState;
use crate::timefmt::{parse_instant, NamedZone};

/// Graph's default page size for event collections.
pub const DEFAULT_EVENT_PAGE_SIZE: usize = 10;
const MAX_EVENT_PAGE_SIZE: usize = 1000;

pub fn time_window(query: &QueryParameters) -> Result<(Timestamp, Timestamp), GraphError> {
    let missing = || {
        GraphError::bad_request(
            "ErrorInvalidParameter",
            "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.",
        )
    };
    let start_text = query.get("startDateTime").ok_or_else(missing)?;
    let end_text = query.get("endDateTime").ok_or_else(missing)?;
    let parse = |text: &str| {
        parse_instant(text).map_err(|_| {
            GraphError::bad_request(
                "ErrorInvalidParameter",
                format!(
                    "The value '{text}' of parameter 'StartDateTime' or 'EndDateTime' is invalid."
                ),
            )
        })
    };
    let (start, end) = (parse(start_text)?, parse(end_text)?);
    if end < start {
        return Err(GraphError::bad_request(
            "ErrorInvalidParameter",
            "The parameter 'EndDateTime' must be later than 'StartDateTime'.",
        ));
    }
    Ok((start, end))
}

pub async fn calendar_view(
    State(state): State<Arc<AppState>>,
    Path(user_key): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "calendar.view", Need::CalendarRead).await?;
        let user_index = resolve_mailbox(&state, &caller, &user_key)?;
        let _slot = enter_mailbox(&state, &caller, user_index).await?;
        let query = QueryParameters(query);
        let (window_start, window_end) = time_window(&query)?;
        let prefer = parse_prefer(&headers);
        let explicit_top = query.get("$top").is_some();
        let page_size = if explicit_top {
            query.top(DEFAULT_EVENT_PAGE_SIZE, MAX_EVENT_PAGE_SIZE)?
        } else {
            prefer
                .max_page_size
                .unwrap_or(DEFAULT_EVENT_PAGE_SIZE)
                .min(MAX_EVENT_PAGE_SIZE)
        };
        let skip = match query.get("$skip") {
            None => 0,
            Some(text) => text.parse::<usize>().map_err(|_| {
                GraphError::bad_request("BadRequest", format!("Invalid value '{text}' for $skip."))
            })?,
        };
        let select = query.select();
        let zone = prefer.time_zone.clone().unwrap_or_else(NamedZone::utc);
        let mailbox_address = state.directory.users[user_index].mail.clone();
        let instances = lock(&state.mailboxes[user_index]).view(window_start, window_end);
        let items: Vec<Value> = instances
            .iter()
            .skip(skip)
            .take(page_size)
            .map(|instance| event_json(instance, &mailbox_address, &zone, select.as_deref()))
            .collect();
        let context = match &select {
            Some(names) => format!(
                "{}/$metadata#users('{}')/calendarView({})",
                state.graph_url,
                user_key,
                names.join(",")
            ),
            None => format!(
                "{}/$metadata#users('{}')/calendarView",
                state.graph_url, user_key
            ),
        };
        let mut body = json!({"@odata.context": context, "value": items});
        if skip.saturating_add(page_size) < instances.len() {
            body["@odata.nextLink"] = json!(format!(
                "{}{}?{}",
                state.base_url,
                uri.path(),
                query.with(&[("$skip", (skip.saturating_add(page_size)).to_string())])
            ));
        }
        let mut response = Json(body).into_response();
        preference_applied(
            &mut response,
            prefer.time_zone.as_ref(),
            prefer.max_page_size.filter(|_| !explicit_top),
        );
        Ok::<_, GraphError>(response)
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}
