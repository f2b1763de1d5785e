//! The places API: rooms and room lists with paging, the rooms of a list by its address, and
//! the refusals (no `Place.Read.All`, a list asked for by id); EWS's `GetRoomLists` and
//! `GetRooms` answer the same lists and rooms.

mod support;

use std::collections::BTreeSet;

use m365_emulator::EmulatorConfig;
use serde_json::Value;
use support::ews::{basic, ews};
use support::*;

fn addresses(items: &[Value]) -> BTreeSet<String> {
    items
        .iter()
        .filter_map(|item| item["emailAddress"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn rooms_and_room_lists_page_and_a_list_gives_its_rooms_by_address() {
    // 1,000 people come with 7 rooms in 3 buildings.
    let harness = start_with(EmulatorConfig::generated(1000, 3)).await;
    let ready = harness.emulator.ready().clone();
    let token = harness
        .token_for(
            &ready.client_id,
            ready.client_secret.as_deref().expect("a secret"),
        )
        .await;

    let (rooms, pages) = collect_pages(
        &harness,
        &harness.graph("/places/microsoft.graph.room?$top=3&$count=true"),
        &token,
        &[],
    )
    .await;
    assert_eq!((rooms.len(), pages), (7, 3));
    let first = harness
        .get(&harness.graph("/places/microsoft.graph.room"), &token, &[])
        .await
        .json();
    assert_eq!(first["value"].as_array().map(Vec::len), Some(7));
    assert!(
        first["@odata.nextLink"].is_null(),
        "one page of 100 holds all"
    );
    for room in &rooms {
        assert!(room["capacity"].as_u64().is_some_and(|n| n >= 4), "{room}");
        assert!(
            room["building"]
                .as_str()
                .is_some_and(|b| b.starts_with("Building ")),
            "{room}"
        );
        assert!(room["floorNumber"].is_i64(), "{room}");
        assert!(
            matches!(room["bookingType"].as_str(), Some("standard" | "reserved")),
            "{room}"
        );
    }
    let counted = harness
        .get(
            &harness.graph("/places/microsoft.graph.room?$top=2&$count=true"),
            &token,
            &[],
        )
        .await
        .json();
    assert_eq!(counted["@odata.count"], 7);

    let (lists, _) = collect_pages(
        &harness,
        &harness.graph("/places/microsoft.graph.roomlist"),
        &token,
        &[],
    )
    .await;
    assert_eq!(lists.len(), 3, "{lists:?}");
    let mut in_lists = BTreeSet::new();
    for list in &lists {
        let address = list["emailAddress"].as_str().expect("an address");
        let (members, _) = collect_pages(
            &harness,
            &harness.graph(&format!(
                "/places/{address}/microsoft.graph.roomlist/rooms?$top=1"
            )),
            &token,
            &[],
        )
        .await;
        assert!(!members.is_empty(), "{address} has no rooms");
        for member in &members {
            assert_eq!(member["building"], list["displayName"], "{member}");
        }
        in_lists.extend(addresses(&members));
        // By id the list is not found: the documentation asks for its address.
        let id = list["id"].as_str().expect("an id");
        let by_id = harness
            .get(
                &harness.graph(&format!("/places/{id}/microsoft.graph.roomlist/rooms")),
                &token,
                &[],
            )
            .await;
        assert_eq!(by_id.status, 404, "{}", by_id.text());
        assert_eq!(by_id.json()["error"]["code"], "ErrorItemNotFound");
    }
    assert_eq!(
        in_lists,
        addresses(&rooms),
        "every room is in the list of its building"
    );

    // The same answers every run: the places are derived from the directory, not random.
    let again = start_with(EmulatorConfig::generated(1000, 3)).await;
    let again_ready = again.emulator.ready().clone();
    let again_token = again
        .token_for(
            &again_ready.client_id,
            again_ready.client_secret.as_deref().expect("a secret"),
        )
        .await;
    let (again_rooms, _) = collect_pages(
        &again,
        &again.graph("/places/microsoft.graph.room"),
        &again_token,
        &[],
    )
    .await;
    let shape = |rooms: &[Value]| -> Vec<(String, Value, Value)> {
        rooms
            .iter()
            .map(|room| {
                (
                    room["emailAddress"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    room["capacity"].clone(),
                    room["floorNumber"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&again_rooms), shape(&rooms));
}

#[tokio::test]
async fn places_need_place_read_all_and_refuse_a_filter_they_cannot_apply() {
    // The test scenario's app has Calendars.ReadWrite, User.Read.All and Group.Read.All only.
    let harness = start().await;
    let token = harness.token().await;
    let refused = harness
        .get(&harness.graph("/places/microsoft.graph.room"), &token, &[])
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "ErrorAccessDenied");

    let generated = start_with(EmulatorConfig::generated(10, 1)).await;
    let ready = generated.emulator.ready().clone();
    let token = generated
        .token_for(
            &ready.client_id,
            ready.client_secret.as_deref().expect("a secret"),
        )
        .await;
    let filtered = generated
        .get(
            &generated.graph("/places/microsoft.graph.room?$filter=capacity%20ge%208"),
            &token,
            &[],
        )
        .await;
    assert_eq!(filtered.status, 400, "{}", filtered.text());
    let bad_top = generated
        .get(
            &generated.graph("/places/microsoft.graph.room?$top=0"),
            &token,
            &[],
        )
        .await;
    assert_eq!(bad_top.status, 400);
}

/// The `(name, address)` pairs of every `<t:{element}>` in an EWS answer.
fn ews_entries(text: &str, element: &str) -> BTreeSet<(String, String)> {
    let between = |text: &str, tag: &str| -> String {
        text.split(&format!("<t:{tag}>"))
            .nth(1)
            .and_then(|rest| rest.split(&format!("</t:{tag}>")).next())
            .unwrap_or_default()
            .to_string()
    };
    text.split(&format!("<t:{element}>"))
        .skip(1)
        .map(|entry| (between(entry, "Name"), between(entry, "EmailAddress")))
        .collect()
}

#[tokio::test]
async fn ews_room_lists_and_rooms_agree_with_the_places_api() {
    let harness = start_with(EmulatorConfig::generated(1000, 3)).await;
    let ready = harness.emulator.ready().clone();
    let token = harness
        .token_for(
            &ready.client_id,
            ready.client_secret.as_deref().expect("a secret"),
        )
        .await;
    let auth = basic(
        ready.ews_user.as_deref().expect("an EWS service account"),
        ready.ews_password.as_deref().expect("its password"),
    );
    let (lists, _) = collect_pages(
        &harness,
        &harness.graph("/places/microsoft.graph.roomlist"),
        &token,
        &[],
    )
    .await;
    let graph_lists: BTreeSet<(String, String)> = lists
        .iter()
        .map(|list| {
            (
                list["displayName"].as_str().unwrap_or_default().to_string(),
                list["emailAddress"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let ews_lists = ews_entries(
        &ews(&harness, &auth, "", "<m:GetRoomLists/>").await.text(),
        "Address",
    );
    assert_eq!(ews_lists.len(), 3);
    assert_eq!(ews_lists, graph_lists);
    for (_, address) in &graph_lists {
        let (members, _) = collect_pages(
            &harness,
            &harness.graph(&format!("/places/{address}/microsoft.graph.roomlist/rooms")),
            &token,
            &[],
        )
        .await;
        let graph_rooms: BTreeSet<(String, String)> = members
            .iter()
            .map(|room| {
                (
                    room["displayName"].as_str().unwrap_or_default().to_string(),
                    room["emailAddress"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        let reply = ews(
            &harness,
            &auth,
            "",
            &format!("<m:GetRooms><m:RoomList><t:EmailAddress>{address}</t:EmailAddress></m:RoomList></m:GetRooms>"),
        )
        .await
        .text();
        assert!(!graph_rooms.is_empty());
        assert_eq!(ews_entries(&reply, "Id"), graph_rooms, "{address}: {reply}");
    }
}
