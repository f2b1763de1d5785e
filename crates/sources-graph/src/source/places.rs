//! Rooms from Graph's places API: every room of the tenant (`/places/microsoft.graph.room`) or
//! the rooms of one room list (`/places/{list-address}/microsoft.graph.roomlist/rooms`, by the
//! list's address, as the API wants it), and the room lists themselves. Needs the application
//! permission `Place.Read.All`.

use calbridge_domain::{MailboxAddress, RoomInfo};
use serde::Deserialize;

use calbridge_net::percent::encode_path_segment;

use super::{GraphSource, MAX_DELTA_PAGES};
use crate::error::GraphError;
use crate::http::GraphRequest;

/// A room list: its address (how its rooms are asked for) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomList {
    pub address: MailboxAddress,
    pub display_name: Option<String>,
}

#[derive(Deserialize)]
struct PlacePage {
    #[serde(default)]
    value: Vec<Place>,
    #[serde(default, rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// A room or room list as the places API answers; every field optional, because a room
/// without a capacity or building is still a room.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Place {
    #[serde(default)]
    email_address: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    capacity: Option<serde_json::Value>,
    #[serde(default)]
    building: Option<String>,
    #[serde(default)]
    floor_number: Option<serde_json::Value>,
    #[serde(default)]
    floor_label: Option<String>,
    #[serde(default)]
    booking_type: Option<String>,
}

/// A number that Microsoft's own examples sometimes show as text (`"capacity": "50"`); anything
/// else counts as not given.
fn number(value: Option<&serde_json::Value>) -> Option<i64> {
    match value? {
        serde_json::Value::Number(number) => number.as_i64(),
        serde_json::Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

impl Place {
    fn address(&self, what: &str) -> Option<MailboxAddress> {
        let text = self.email_address.as_deref()?;
        match MailboxAddress::parse(text) {
            Ok(address) => Some(address),
            Err(error) => {
                tracing::warn!("skipping a place of {what}: {error}");
                None
            }
        }
    }

    fn into_room(self, room_list: Option<&str>, what: &str) -> Option<RoomInfo> {
        let address = self.address(what)?;
        Some(RoomInfo {
            address,
            display_name: non_empty(self.display_name),
            capacity: number(self.capacity.as_ref())
                .and_then(|capacity| u32::try_from(capacity).ok()),
            building: non_empty(self.building),
            floor_number: number(self.floor_number.as_ref())
                .and_then(|floor| i32::try_from(floor).ok()),
            floor_label: non_empty(self.floor_label),
            room_list: room_list.map(str::to_string),
            bookable: !self
                .booking_type
                .as_deref()
                .is_some_and(|kind| kind.eq_ignore_ascii_case("reserved")),
        })
    }
}

impl GraphSource {
    /// Every page of a places listing. A refusal names the permission the places API needs
    /// (not `Calendars.Read`, which a refused mailbox read would).
    async fn places(&self, first: String, what: &str) -> Result<Vec<Place>, GraphError> {
        let mut url = self.absolute(&first);
        let mut places = Vec::new();
        for _ in 0..MAX_DELTA_PAGES {
            let page: PlacePage = match self
                .inner
                .http
                .send(&GraphRequest::get(url.clone(), what.to_string()), None)
                .await
            {
                Ok(response) => response.json(what)?,
                Err(
                    GraphError::AccessDenied { what, answer }
                    | GraphError::Forbidden { what, answer },
                ) => {
                    return Err(GraphError::Forbidden {
                        what: format!(
                            "{what}: grant the app the application permission Place.Read.All \
                             with admin consent"
                        ),
                        answer,
                    })
                }
                Err(error) => return Err(error),
            };
            places.extend(page.value);
            match page.next_link {
                Some(next) => url = self.absolute(&self.relative_link(&next, what)?),
                None => return Ok(places),
            }
        }
        Err(GraphError::BadAnswer {
            what: what.to_string(),
            detail: format!("more than {MAX_DELTA_PAGES} pages of places"),
        })
    }

    /// The rooms of the tenant, or of the room list at `list` (its address). Rooms without a
    /// usable address are skipped with a warning.
    pub async fn rooms(&self, list: Option<&MailboxAddress>) -> Result<Vec<RoomInfo>, GraphError> {
        let (path, what) = match list {
            Some(list) => (
                format!(
                    "/places/{}/microsoft.graph.roomlist/rooms?$top=100",
                    encode_path_segment(list.as_str())
                ),
                format!("the rooms of room list {list}"),
            ),
            None => (
                "/places/microsoft.graph.room?$top=100".to_string(),
                "the tenant's rooms".to_string(),
            ),
        };
        let list_name = list.map(MailboxAddress::as_str);
        Ok(self
            .places(path, &what)
            .await?
            .into_iter()
            .filter_map(|place| place.into_room(list_name, &what))
            .collect())
    }

    /// The tenant's room lists.
    pub async fn room_lists(&self) -> Result<Vec<RoomList>, GraphError> {
        let what = "the tenant's room lists";
        Ok(self
            .places(
                "/places/microsoft.graph.roomlist?$top=100".to_string(),
                what,
            )
            .await?
            .into_iter()
            .filter_map(|place| {
                Some(RoomList {
                    address: place.address(what)?,
                    display_name: non_empty(place.display_name),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Vec<RoomInfo> {
        let page: PlacePage = serde_json::from_str(json).expect("a page");
        page.value
            .into_iter()
            .filter_map(|place| place.into_room(Some("rooms.b1@contoso.com"), "test"))
            .collect()
    }

    #[test]
    fn a_room_takes_numbers_or_numeric_text_and_skips_what_it_cannot_use() {
        let rooms = parse(
            r#"{"value": [
                {"emailAddress": "CF100@contoso.com", "displayName": "Conf Room 100",
                 "capacity": "50", "building": "1", "floorNumber": 1, "bookingType": "standard"},
                {"emailAddress": "cf200@contoso.com", "capacity": 12, "floorNumber": "2",
                 "floorLabel": "P", "bookingType": "reserved", "building": " "},
                {"emailAddress": "cf300@contoso.com", "capacity": -4, "floorNumber": [1]},
                {"displayName": "no address"},
                {"emailAddress": "not an address"}
            ]}"#,
        );
        assert_eq!(rooms.len(), 3);
        assert_eq!(rooms[0].address.as_str(), "cf100@contoso.com");
        assert_eq!(
            (rooms[0].capacity, rooms[0].floor_number, rooms[0].bookable),
            (Some(50), Some(1), true)
        );
        assert_eq!(rooms[0].building.as_deref(), Some("1"));
        assert_eq!(rooms[0].room_list.as_deref(), Some("rooms.b1@contoso.com"));
        assert_eq!(
            (rooms[1].capacity, rooms[1].floor_number, rooms[1].bookable),
            (Some(12), Some(2), false)
        );
        assert_eq!(rooms[1].floor_label.as_deref(), Some("P"));
        assert_eq!(rooms[1].building, None);
        assert_eq!((rooms[2].capacity, rooms[2].floor_number), (None, None));
    }
}
