//! The rooms and room lists of a tenant, derived once from the directory for every protocol that
//! shows them: Graph's places API (`graph/places.rs`) and EWS's `GetRoomLists` / `GetRooms`
//! (`ews/rooms.rs`), so that both always agree.
//!
//! The emulator's rooms are its room mailboxes; their place data comes from the scenario's
//! `office_location` ("Building 2") and, where a scenario gives none, is derived from the
//! address so that a generated building is the same on every run. Room lists group the rooms
//! by building, as administrators usually make them (`New-DistributionGroup -RoomList`).

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
