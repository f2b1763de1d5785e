//! The places API: `/places/microsoft.graph.room`, `/places/microsoft.graph.roomlist` and
//! `/places/{room-list-address}/microsoft.graph.roomlist/rooms`
//! (learn.microsoft.com/graph/api/place-list, resources/room, resources/roomlist).
//!
//! - Application or delegated `Place.Read.All` (or `Place.ReadWrite.All`); without it Exchange's
//!   403 `ErrorAccessDenied`.
//! - 100 places per page by default; `$top` sets the page size and `$skip` the offset, and a
//!   page that is not the last carries `@odata.nextLink` (Graph's paging, "Paging Microsoft Graph
//!   data in your app"). `$count=true` adds `@odata.count`; `$select` picks properties.
//! - The rooms of a room list are asked for by the list's **email address**, not its id ("you
//!   must specify the room list by its emailAddress property"); an unknown list is 404
//!   `ErrorItemNotFound`.
//! - A room is the room mailbox's place: `id`, `emailAddress`, `displayName`, `capacity`
//!   (Int32), `building`, `floorNumber`, `floorLabel`, `bookingType` (`standard` | `reserved`),
//!   `isWheelChairAccessible`, `label`, `nickname`, `tags` and the device names, as the room
//!   resource type lists them. Rooms hidden from the address list do not appear (not modelled:
//!   every room here is listed).
//!
//! The rooms and room lists come from `crate::places`, which EWS's `GetRoomLists` and
//! `GetRooms` read too, so both protocols always agree. `$filter` is not supported by this
//! emulator and is refused rather than ignored.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{authenticate, GraphError, Need, QueryParameters};
use crate::places::{room_lists, rooms, RoomListPlace, RoomPlace};
use crate::state::AppState;

/// Whether a path segment is the cast to `microsoft.graph.{type_name}`: Graph takes the full
/// namespace or its alias `graph` (Kiota-generated SDKs write `graph.roomList`), in any case.
fn is_cast(segment: &str, type_name: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    let name = lower
        .strip_prefix("microsoft.graph.")
        .or_else(|| lower.strip_prefix("graph."));
    name == Some(type_name)
}

fn room_json(room: &RoomPlace) -> Vec<(&'static str, Value)> {
    vec![
        ("id", json!(room.id)),
        ("emailAddress", json!(room.email)),
        ("displayName", json!(room.display_name)),
        ("address", Value::Null),
        ("geoCoordinates", Value::Null),
        ("phone", Value::Null),
        ("nickname", json!(room.display_name)),
        ("label", json!(room.display_name)),
        ("capacity", json!(room.capacity)),
        ("building", json!(room.building)),
        ("floorLabel", json!(room.floor_number.to_string())),
        ("floorNumber", json!(room.floor_number)),
        ("isWheelChairAccessible", json!(room.wheelchair_accessible)),
        (
            "bookingType",
            json!(if room.bookable {
                "standard"
            } else {
                "reserved"
            }),
        ),
        ("tags", json!(room.tags)),
        ("audioDeviceName", Value::Null),
        ("videoDeviceName", Value::Null),
        ("displayDeviceName", Value::Null),
    ]
}

fn room_list_json(list: &RoomListPlace) -> Vec<(&'static str, Value)> {
    vec![
        ("id", json!(list.id)),
        ("displayName", json!(list.display_name)),
        ("address", Value::Null),
        ("geoCoordinates", Value::Null),
        ("phone", Value::Null),
        ("emailAddress", json!(list.email)),
    ]
}

fn selected(properties: Vec<(&'static str, Value)>, select: Option<&[String]>) -> Value {
    let mut object = Map::new();
    for (name, value) in properties {
        let wanted = match select {
            Some(names) => {
                name == "id"
                    || names
                        .iter()
                        .any(|selected| selected.eq_ignore_ascii_case(name))
            }
            None => true,
        };
        if wanted {
            object.insert(name.to_string(), value);
        }
    }
    Value::Object(object)
}

/// One page of places with `$top`, `$skip`, `$count` and `$select`.
fn page(
    state: &AppState,
    path: &str,
    context: &str,
    query: &QueryParameters,
    items: Vec<Vec<(&'static str, Value)>>,
) -> Result<Response, GraphError> {
    if query.get("$filter").is_some() {
        return Err(GraphError::bad_request(
            "BadRequest",
            "$filter on places is not supported by the m365 emulator.",
        ));
    }
    let top = query.top(100, 999)?;
    let skip = match query.get("$skip") {
        None => 0,
        Some(text) => text.parse::<usize>().map_err(|_| {
            GraphError::bad_request("BadRequest", format!("Invalid value '{text}' for $skip."))
        })?,
    };
    let select = query.select();
    let total = items.len();
    let value: Vec<Value> = items
        .into_iter()
        .skip(skip)
        .take(top)
        .map(|properties| selected(properties, select.as_deref()))
        .collect();
    let mut body = json!({
        "@odata.context": format!("{}/$metadata#{context}", state.graph_url),
    });
    if query
        .get("$count")
        .is_some_and(|count| count.eq_ignore_ascii_case("true"))
    {
        body["@odata.count"] = json!(total);
    }
    body["value"] = Value::Array(value);
    if skip.saturating_add(top) < total {
        body["@odata.nextLink"] = json!(format!(
            "{}{path}?{}",
            state.graph_url,
            query.with(&[("$skip", skip.saturating_add(top).to_string())])
        ));
    }
    Ok(Json(body).into_response())
}

/// `GET /v1.0/places/microsoft.graph.room`, `…/microsoft.graph.roomlist`, or one place by id
/// or address.
pub async fn list_or_get(
    State(state): State<Arc<AppState>>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "places.list", Need::PlaceRead).await?;
        let query = QueryParameters(query);
        let tenant = caller.tenant_index;
        if is_cast(&segment, "room") {
            let items = rooms(&state, tenant).iter().map(room_json).collect();
            return page(
                &state,
                "/places/microsoft.graph.room",
                "places/microsoft.graph.room",
                &query,
                items,
            );
        }
        if is_cast(&segment, "roomlist") {
            let items = room_lists(&state, tenant)
                .iter()
                .map(room_list_json)
                .collect();
            return page(
                &state,
                "/places/microsoft.graph.roomlist",
                "places/microsoft.graph.roomList",
                &query,
                items,
            );
        }
        // One place by id or address (`GET /places/{id}`).
        let select = query.select();
        if let Some(room) = rooms(&state, tenant).iter().find(|room| {
            room.id.eq_ignore_ascii_case(&segment) || room.email.eq_ignore_ascii_case(&segment)
        }) {
            let mut body = selected(room_json(room), select.as_deref());
            body["@odata.context"] = json!(format!(
                "{}/$metadata#places/microsoft.graph.room/$entity",
                state.graph_url
            ));
            body["@odata.type"] = json!("#microsoft.graph.room");
            return Ok(Json(body).into_response());
        }
        if let Some(list) = room_lists(&state, tenant).iter().find(|list| {
            list.id.eq_ignore_ascii_case(&segment) || list.email.eq_ignore_ascii_case(&segment)
        }) {
            let mut body = selected(room_list_json(list), select.as_deref());
            body["@odata.context"] = json!(format!(
                "{}/$metadata#places/microsoft.graph.roomList/$entity",
                state.graph_url
            ));
            body["@odata.type"] = json!("#microsoft.graph.roomList");
            return Ok(Json(body).into_response());
        }
        Err(GraphError::item_not_found())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1.0/places/{room-list-address}/microsoft.graph.roomlist/rooms`
pub async fn rooms_of_list(
    State(state): State<Arc<AppState>>,
    Path((list, cast)): Path<(String, String)>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let caller =
            authenticate(&state, &headers, "places.roomlist.rooms", Need::PlaceRead).await?;
        if !is_cast(&cast, "roomlist") {
            return Err(GraphError::bad_request(
                "BadRequest",
                format!("Resource not found for the segment '{cast}'."),
            ));
        }
        let query = QueryParameters(query);
        let lists = room_lists(&state, caller.tenant_index);
        // By the list's address only: its id is refused, as the documentation warns.
        let Some(found) = lists
            .iter()
            .find(|candidate| candidate.email.eq_ignore_ascii_case(&list))
        else {
            return Err(GraphError::item_not_found());
        };
        let items = found.rooms.iter().map(room_json).collect();
        let path = format!(
            "/places/{}/microsoft.graph.roomlist/rooms",
            crate::notify::percent_encode(&found.email)
        );
        let context = format!(
            "places('{}')/microsoft.graph.roomList/rooms",
            crate::notify::percent_encode(&found.email)
        );
        page(&state, &path, &context, &query, items)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
