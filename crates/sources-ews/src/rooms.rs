//! Rooms and the decline of meetings: `GetRoomLists` and `GetRooms` (the organisation's room
//! lists and the rooms of one, learn.microsoft.com "GetRoomLists operation", "GetRooms
//! operation"), and `CreateItem` with a `DeclineItem` ("CreateItem operation (meeting
//! request)"), sent as the mailbox that holds the meeting.
//!
//! Unlike most operations, `GetRoomLists` and `GetRooms` answer one response message without
//! `ResponseMessages`: the `…Response` element carries `ResponseClass` and `ResponseCode`
//! itself. EWS gives a room's name and address only, so capacity, building and floor stay
//! unknown (Graph's places API has them).

use std::collections::HashSet;

use calbridge_domain::{MailboxAddress, RoomInfo};

use crate::error::{shorten, EwsError};
use crate::soap::{self, Subject};
use crate::source::{Acting, EwsSource};
use crate::xml::{escape, Element};

/// A room list as `GetRoomLists` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EwsRoomList {
    pub address: MailboxAddress,
    pub display_name: Option<String>,
}

/// The `(name, address)` of an EWS `EmailAddressType` (`t:Address`, `t:Id`).
fn name_and_address(element: &Element, what: &str) -> Option<(Option<String>, MailboxAddress)> {
    let text = element.child_text("EmailAddress")?;
    match MailboxAddress::parse(text) {
        Ok(address) => Some((
            element
                .child_text("Name")
                .filter(|name| !name.is_empty())
                .map(str::to_string),
            address,
        )),
        Err(error) => {
            tracing::warn!(what, address = %shorten(text, 100), %error, "skipping an entry that is no address");
            None
        }
    }
}

impl EwsSource {
    /// Sends a room operation and returns its single `…Response` message, checked: an
    /// `ErrorNameResolutionNoResults` is `unknown_list` (GetRooms of a list nobody made).
    async fn room_operation(
        &self,
        what: &str,
        body: &str,
        unknown_list: Option<&MailboxAddress>,
    ) -> Result<Element, EwsError> {
        let answer = self.send_soap(what, Acting::Service, body).await?;
        let name = format!("{what}Response");
        let message = answer
            .root
            .find(&name)
            .cloned()
            .ok_or_else(|| EwsError::BadAnswer {
                what: what.to_string(),
                detail: format!(
                    "HTTP {} without {name}: {}",
                    answer.status,
                    shorten(&answer.text, 200)
                ),
            })?;
        if let Some(list) = unknown_list {
            if message.attribute("ResponseClass") == Some("Error")
                && message.child_text("ResponseCode") == Some("ErrorNameResolutionNoResults")
            {
                return Err(EwsError::UnknownRoomList {
                    address: list.to_string(),
                });
            }
        }
        let user = self.transport_user();
        soap::check_message(
            &message,
            &Subject {
                what,
                user: &user,
                mailbox: unknown_list.map_or("", MailboxAddress::as_str),
            },
        )?;
        Ok(message)
    }

    /// The organisation's room lists (`GetRoomLists`); none is an empty list.
    pub async fn room_lists(&self) -> Result<Vec<EwsRoomList>, EwsError> {
        let message = self
            .room_operation("GetRoomLists", "<m:GetRoomLists/>", None)
            .await?;
        Ok(message
            .child("RoomLists")
            .map(|lists| {
                lists
                    .children_named("Address")
                    .filter_map(|entry| name_and_address(entry, "GetRoomLists"))
                    .map(|(display_name, address)| EwsRoomList {
                        address,
                        display_name,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The rooms of one room list (`GetRooms`), each named with that list as `room_list`.
    async fn rooms_of(&self, list: &MailboxAddress) -> Result<Vec<RoomInfo>, EwsError> {
        let body = format!(
            "<m:GetRooms><m:RoomList><t:EmailAddress>{}</t:EmailAddress></m:RoomList></m:GetRooms>",
            escape(list.as_str())
        );
        let message = self.room_operation("GetRooms", &body, Some(list)).await?;
        Ok(message
            .child("Rooms")
            .map(|rooms| {
                rooms
                    .children_named("Room")
                    .filter_map(|room| room.child("Id"))
                    .filter_map(|id| name_and_address(id, "GetRooms"))
                    .map(|(display_name, address)| RoomInfo {
                        display_name,
                        room_list: Some(list.to_string()),
                        ..RoomInfo::new(address)
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The rooms of room list `list`, or of every room list when `None` (a room in several
    /// lists once, with the first list that named it). Exchange gives a room's name and
    /// address only: capacity, building and floor are `None`, and every room counts as
    /// bookable. An unknown list is [`EwsError::UnknownRoomList`].
    pub async fn rooms(&self, list: Option<&MailboxAddress>) -> Result<Vec<RoomInfo>, EwsError> {
        if let Some(list) = list {
            return self.rooms_of(list).await;
        }
        let mut seen = HashSet::new();
        let mut rooms = Vec::new();
        for room_list in self.room_lists().await? {
            for room in self.rooms_of(&room_list.address).await? {
                if seen.insert(room.address.clone()) {
                    rooms.push(room);
                }
            }
        }
        Ok(rooms)
    }

    /// Declines the meeting `item_id` (an `ItemId` from [`EwsSource::read_window`]) in the
    /// calendar of `mailbox`, acting as that mailbox (impersonating it with
    /// `access = "impersonation"`), with `comment` as the answer's body to the organizer.
    /// Sent with `SendOnly`: the answer goes to the organizer, no copy is kept in the
    /// mailbox's Sent Items. A refusal is [`EwsError::DeclineRefused`] naming the right the
    /// account needs; a meeting no longer there is [`EwsError::MeetingNotFound`].
    pub async fn decline(
        &self,
        mailbox: &MailboxAddress,
        item_id: &str,
        comment: &str,
    ) -> Result<(), EwsError> {
        let body = format!(
            "<m:CreateItem MessageDisposition=\"SendOnly\"><m:Items><t:DeclineItem><t:ReferenceItemId Id=\"{}\"/><t:Body BodyType=\"Text\">{}</t:Body></t:DeclineItem></m:Items></m:CreateItem>",
            escape(item_id),
            escape(comment)
        );
        let user = self.transport_user();
        let refused = |code: &str, detail: String| EwsError::DeclineRefused {
            user: user.clone(),
            mailbox: mailbox.to_string(),
            code: code.to_string(),
            detail,
        };
        let messages = match self
            .call("CreateItem", Acting::Mailbox(mailbox), &body)
            .await
        {
            Ok(messages) => messages,
            Err(EwsError::ImpersonationDenied { .. }) => {
                return Err(refused(
                    "ErrorImpersonateUserDenied",
                    "the account may not impersonate this mailbox".to_string(),
                ))
            }
            Err(other) => return Err(other),
        };
        let message = messages.first().ok_or_else(|| EwsError::BadAnswer {
            what: format!("CreateItem (DeclineItem) for {mailbox}"),
            detail: "no response message".to_string(),
        })?;
        if message.attribute("ResponseClass") == Some("Error") {
            let code = message.child_text("ResponseCode").unwrap_or_default();
            let detail = shorten(message.child_text("MessageText").unwrap_or_default(), 200);
            return Err(match code {
                "ErrorItemNotFound" => EwsError::MeetingNotFound {
                    mailbox: mailbox.to_string(),
                },
                "ErrorAccessDenied" | "ErrorImpersonateUserDenied" | "ErrorImpersonationDenied" => {
                    refused(code, detail)
                }
                _ => {
                    let subject = Subject {
                        what: "CreateItem (DeclineItem)",
                        user: &user,
                        mailbox: mailbox.as_str(),
                    };
                    match soap::check_message(message, &subject) {
                        Err(error) => error,
                        Ok(()) => EwsError::BadAnswer {
                            what: "CreateItem (DeclineItem)".to_string(),
                            detail: format!("{code}: {detail}"),
                        },
                    }
                }
            });
        }
        Ok(())
    }
}
