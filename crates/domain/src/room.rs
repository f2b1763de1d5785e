use crate::MailboxAddress;

/// A meeting room as a directory lists it (Graph's places API, EWS `GetRooms`, a file): the
/// mailbox whose calendar says when the room is booked, and what a receptionist or a panel
/// needs to choose one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub address: MailboxAddress,
    pub display_name: Option<String>,
    /// How many people it seats, when the directory says.
    pub capacity: Option<u32>,
    pub building: Option<String>,
    pub floor_number: Option<i32>,
    /// A floor's name where it is not a number ("P", "Mezzanine").
    pub floor_label: Option<String>,
    /// The room list (Graph / Exchange) the room was found in.
    pub room_list: Option<String>,
    /// False for a room used first come, first served, which cannot be booked (Graph's
    /// `bookingType = reserved`).
    pub bookable: bool,
}

impl RoomInfo {
    /// A room known only by its address.
    pub fn new(address: MailboxAddress) -> RoomInfo {
        RoomInfo {
            address,
            display_name: None,
            capacity: None,
            building: None,
            floor_number: None,
            floor_label: None,
            room_list: None,
            bookable: true,
        }
    }
}
