//! `CreateItem` with a meeting response object: `DeclineItem`
//! (learn.microsoft.com/exchange/client-developer/web-service-reference/createitem-operation-meeting-request,
//! declineitem). `ReferenceItemId` names the meeting (a calendar item id from FindItem/GetItem),
//! `Body` is the comment to the organizer, `MessageDisposition` (`SendOnly` or
//! `SendAndSaveCopy`) is required for a response object. The meeting is declined in the
//! mailbox that holds it (`calendar::decline_event`): it leaves that calendar and the
//! organizer's copy shows the attendee's `ResponseType` `Decline`. The caller needs full
//! access to that mailbox (its own, or an impersonated one); a reviewer gets `ErrorAccessDenied`.
//! Success is `CreateItemResponseMessage` `NoError` with an empty `Items`, as the page shows.

use axum::response::Response;

use super::soap::{self, operation, Fault};
use super::xml::{escape, Element};
use super::{decode_id, Context, Rights};
use crate::calendar::{decline_event, EventInputError};

pub fn create_item(context: &Context<'_>, request: &Element) -> Result<Response, Fault> {
    let items = request
        .child("Items")
        .ok_or_else(|| Fault::schema("CreateItem needs Items"))?;
    if items.children.is_empty() {
        return Err(Fault::schema("Items is empty"));
    }
    let disposition = request.attribute("MessageDisposition");
    let mut messages = String::new();
    for item in &items.children {
        let message = match item.name.as_str() {
            "DeclineItem" => match disposition {
                Some("SendOnly" | "SendAndSaveCopy") => decline(context, item),
                Some("SaveOnly") => failed(
                    "ErrorInvalidOperation",
                    "Saving a meeting response as a draft (SaveOnly) is not supported by the emulator; send it with SendOnly or SendAndSaveCopy.",
                ),
                Some(other) => {
                    return Err(Fault::schema(format!(
                        "'{other}' is not a MessageDispositionType"
                    )))
                }
                None => failed(
                    "ErrorMessageDispositionRequired",
                    "MessageDisposition attribute is required.",
                ),
            },
            other => failed(
                "ErrorInvalidOperation",
                &format!("CreateItem of '{other}' is not supported by the emulator (only DeclineItem)."),
            ),
        };
        messages.push_str(&message);
    }
    Ok(soap::ok(&operation("CreateItem", &messages)))
}

/// An error message of CreateItem: as the page's example, with an empty `Items`.
fn failed(code: &str, text: &str) -> String {
    format!(
        r#"<m:CreateItemResponseMessage ResponseClass="Error"><m:MessageText>{}</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:Items/></m:CreateItemResponseMessage>"#,
        escape(text)
    )
}

fn decline(context: &Context<'_>, item: &Element) -> String {
    let Some(id) = item
        .child("ReferenceItemId")
        .and_then(|reference| reference.attribute("Id"))
    else {
        return failed(
            "ErrorMissingInformationReferenceItemId",
            "The ReferenceItemId is missing.",
        );
    };
    let Some((kind, user_id, item_id)) = decode_id(id) else {
        return failed("ErrorInvalidIdMalformed", "Id is malformed.");
    };
    if kind != "I" {
        return failed("ErrorInvalidIdMalformed", "Id is malformed.");
    }
    let Some(user_index) = context.state.directory.user(&user_id) else {
        return failed(
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        );
    };
    if context.rights(user_index) != Rights::Full {
        context.state.counters.count("ews.access_denied");
        return failed(
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        );
    }
    let comment = item.child_text("Body").unwrap_or_default();
    match decline_event(
        context.state,
        user_index,
        &item_id,
        comment,
        context.state.clock.now(),
    ) {
        Ok(()) => soap::success("CreateItem", "<m:Items/>"),
        Err(EventInputError::NotFound) => failed(
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
        Err(EventInputError::Invalid(text)) => failed("ErrorInvalidOperation", &text),
    }
}
