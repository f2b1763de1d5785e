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
//! The emulator's rooms are its room mailboxes; their place data comes from the scenario's
//! `office_location` ("Building 2") and, where a scenario gives none, is derived from the
//! address so that a generated building is the same on every run. Room lists group the rooms
//! by building, as administrators usually make them (`New-DistributionGroup -RoomList`).
//! `$filter` is not supported by this emulator and is refused rather than ignored.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{authenticate, GraphError, Need, QueryParameters};
use crate::directory::{MailboxKind, User};
use crate::state::AppState;

/// One room as the places API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomPlace {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub building: String,
    pub capacity: u32,
    pub floor_number: i32,
    pub bookable: bool,
    pub wheelchair_accessible: bool,
    pub tags: Vec<String>,
}

/// A room list: the rooms of one building.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomListPlace {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub rooms: Vec<RoomPlace>,
}

/// FNV-1a: a stable hash of an address, so that a derived capacity or floor is the same in
/// every run (std's hasher is seeded per process).
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A GUID-shaped id derived from a key, upper-case as the places API shows them.
fn place_id(key: &str) -> String {
    let a = stable_hash(key);
    let b = stable_hash(&format!("{key}#place"));
    format!(
        "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn room_place(user: &User) -> RoomPlace {
    let hash = stable_hash(&user.mail.to_ascii_lowercase());
    let building = user
        .office_location
        .clone()
        .unwrap_or_else(|| "Main building".to_string());
    let capacity = [4, 6, 8, 10, 12, 16, 20][(hash % 7) as usize];
    RoomPlace {
        id: place_id(&user.id),
        email: user.mail.clone(),
        display_name: user.display_name.clone(),
        building,
        capacity,
        floor_number: ((hash >> 8) % 5) as i32,
        // One room in eight is first come, first served (`reserved`: not bookable).
        bookable: (hash >> 16) % 8 != 0,
        wheelchair_accessible: (hash >> 24) % 3 != 0,
        tags: if capacity >= 12 {
            vec!["video conferencing".to_string()]
        } else {
            Vec::new()
        },
    }
}

/// The rooms of a tenant, in the order of the directory.
pub fn rooms(state: &AppState, tenant_index: usize) -> Vec<RoomPlace> {
    state
        .directory
        .users
        .iter()
        .filter(|user| user.tenant_index == tenant_index && user.kind == MailboxKind::Room)
        .map(room_place)
        .collect()
}

/// The room lists of a tenant: one per building, addressed `rooms.<building>@<domain>`.
pub fn room_lists(state: &AppState, tenant_index: usize) -> Vec<RoomListPlace> {
    let mut lists: Vec<RoomListPlace> = Vec::new();
    for room in rooms(state, tenant_index) {
        match lists
            .iter_mut()
            .find(|list| list.display_name == room.building)
        {
            Some(list) => list.rooms.push(room),
            None => {
                let domain = room.email.split_once('@').map_or("", |(_, domain)| domain);
                let local: String = room
                    .building
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_lowercase()
                        } else {
                            '-'
                        }
                    })
                    .collect();
                let email = format!("rooms.{local}@{domain}");
                lists.push(RoomListPlace {
                    id: place_id(&email),
                    email,
                    display_name: room.building.clone(),
                    rooms: vec![room],
                });
            }
        }
    }
    lists
}

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
