//! `GetRoomLists` and `GetRooms`: the room lists of the organisation and the rooms of one list
//! (learn.microsoft.com/exchange/client-developer/web-service-reference/getroomlists-operation
//! and getrooms-operation), from the same rooms Graph's places API shows (`crate::places`).
//!
//! Unlike most operations these answer one response message without `ResponseMessages`:
//! `<m:GetRoomListsResponse ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>
//! <m:RoomLists><t:Address>…` (an organisation without room lists answers an empty
//! `RoomLists`, still `NoError`), and `<m:GetRoomsResponse …><m:Rooms><t:Room><t:Id>…` with each
//! room's name and address only. A room list nobody made answers `ResponseClass="Error"`,
//! `ErrorNameResolutionNoResults`, "No results were found.", as the GetRooms page shows.
//! Both read the directory, not a mailbox: any caller that logged on may ask, impersonating or
//! not (an app-only token still needs `ExchangeImpersonation`, checked before this).

use axum::response::Response;

use super::soap::{self, Fault};
use super::xml::{escape, Element, NS_MESSAGES, NS_TYPES};
use super::Context;
use crate::places::{room_lists, RoomListPlace};

fn address_xml(element: &str, name: &str, address: &str, mailbox_type: &str) -> String {
    format!(
        "<t:{element}><t:Name>{}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>{mailbox_type}</t:MailboxType></t:{element}>",
        escape(name),
        escape(address)
    )
}

fn response(name: &str, inner: &str) -> Response {
    soap::ok(&format!(
        r#"<m:{name}Response ResponseClass="Success" xmlns:m="{NS_MESSAGES}" xmlns:t="{NS_TYPES}"><m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{name}Response>"#
    ))
}

pub fn get_room_lists(context: &Context<'_>, _request: &Element) -> Result<Response, Fault> {
    let lists: String = room_lists(context.state, context.tenant())
        .iter()
        .map(|list| address_xml("Address", &list.display_name, &list.email, "PublicDL"))
        .collect();
    Ok(response(
        "GetRoomLists",
        &format!("<m:RoomLists>{lists}</m:RoomLists>"),
    ))
}

pub fn get_rooms(context: &Context<'_>, request: &Element) -> Result<Response, Fault> {
    let address = request
        .child("RoomList")
        .and_then(|list| list.child_text("EmailAddress"))
        .filter(|address| !address.is_empty())
        .ok_or_else(|| Fault::schema("GetRooms needs RoomList/EmailAddress"))?;
    let address = address
        .strip_prefix("SMTP:")
        .or_else(|| address.strip_prefix("smtp:"))
        .unwrap_or(address);
    let lists = room_lists(context.state, context.tenant());
    let Some(list) = lists
        .iter()
        .find(|list: &&RoomListPlace| list.email.eq_ignore_ascii_case(address))
    else {
        return Ok(soap::ok(&format!(
            r#"<m:GetRoomsResponse ResponseClass="Error" xmlns:m="{NS_MESSAGES}" xmlns:t="{NS_TYPES}"><m:MessageText>No results were found.</m:MessageText><m:ResponseCode>ErrorNameResolutionNoResults</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:GetRoomsResponse>"#
        )));
    };
    let rooms: String = list
        .rooms
        .iter()
        .map(|room| {
            format!(
                "<t:Room>{}</t:Room>",
                address_xml("Id", &room.display_name, &room.email, "Mailbox")
            )
        })
        .collect();
    Ok(response("GetRooms", &format!("<m:Rooms>{rooms}</m:Rooms>")))
}
