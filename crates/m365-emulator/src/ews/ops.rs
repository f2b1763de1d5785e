//! GetFolder, FindItem (CalendarView), GetItem, ResolveNames, GetUserAvailability, GetServerTimeZones.

use axum::response::Response;
use jiff::civil::DateTime;
use jiff::{SignedDuration, Timestamp};

use super::soap::{self, error_message, operation, success, Fault};
use super::tz::SerializableZone;
use super::xml::{escape, Element};
use super::{decode_id, encode_id, Context, Rights};
use crate::calendar::{Instance, InstanceKind, Sensitivity, ShowAs};
use crate::directory::MailboxKind;
use crate::faults::lock;
use crate::timefmt::resolve_zone;

/// A calendar view may span at most two years (Exchange's limit).
const MAX_VIEW: SignedDuration = SignedDuration::from_hours(2 * 366 * 24);
const FIND_COUNT_LIMIT: usize = 1000;

/// Parses an EWS dateTime: with `Z` or an offset, or local in the request's time zone.
pub fn parse_time(context: &Context<'_>, text: &str) -> Result<Timestamp, Fault> {
    let text = text.trim();
    if let Ok(timestamp) = text.parse::<Timestamp>() {
        return Ok(timestamp);
    }
    let civil: DateTime = text
        .parse()
        .map_err(|_| Fault::schema(format!("'{text}' is not a valid xs:dateTime")))?;
    civil
        .to_zoned(context.zone.zone.clone())
        .map(|zoned| zoned.timestamp())
        .map_err(|_| Fault::schema(format!("'{text}' is not a valid xs:dateTime")))
}

pub fn ews_time(timestamp: Timestamp) -> String {
    timestamp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A folder a request names: (mailbox user index, distinguished name), or an error message.
enum FolderRef {
    Found(usize, String),
    Error(&'static str, String),
}

fn folder_ref(context: &Context<'_>, element: &Element) -> FolderRef {
    match element.name.as_str() {
        "DistinguishedFolderId" => {
            let name = element
                .attribute("Id")
                .unwrap_or_default()
                .to_ascii_lowercase();
            let mailbox = match element
                .child("Mailbox")
                .and_then(|mailbox| mailbox.child_text("EmailAddress"))
            {
                Some(address) => match context.state.directory.user(address) {
                    Some(index) if context.state.directory.users[index].has_mailbox => index,
                    _ => {
                        return FolderRef::Error(
                            "ErrorNonExistentMailbox",
                            "No mailbox with such guid.".to_string(),
                        )
                    }
                },
                None => match context.own_mailbox() {
                    Some(index) => index,
                    None => {
                        return FolderRef::Error(
                            "ErrorMissingEmailAddress",
                            "When making a request as an account that does not have a mailbox, you must specify the mailbox primary SMTP address for any distinguished folders.".to_string(),
                        )
                    }
                },
            };
            FolderRef::Found(mailbox, name)
        }
        "FolderId" => {
            let id = element.attribute("Id").unwrap_or_default();
            match decode_id(id) {
                Some((kind, user_id, name)) if kind == "F" => {
                    match context.state.directory.user(&user_id) {
                        Some(index) => FolderRef::Found(index, name),
                        None => FolderRef::Error(
                            "ErrorFolderNotFound",
                            "The specified folder could not be found in the store.".to_string(),
                        ),
                    }
                }
                _ => FolderRef::Error("ErrorInvalidIdMalformed", "Id is malformed.".to_string()),
            }
        }
        other => FolderRef::Error(
            "ErrorInvalidRequest",
            format!("'{other}' is not a folder id"),
        ),
    }
}

fn folder_ids(operation: &Element, container: &str) -> Result<Vec<Element>, Fault> {
    let ids = operation
        .child(container)
        .ok_or_else(|| Fault::schema(format!("{} needs {container}", operation.name)))?;
    if ids.children.is_empty() {
        return Err(Fault::schema(format!("{container} is empty")));
    }
    Ok(ids.children.clone())
}

/// Checks access to a folder; calendar folders accept reviewers, everything else needs full rights.
fn check_access(
    context: &Context<'_>,
    user_index: usize,
    folder: &str,
) -> Result<Rights, (&'static str, String)> {
    let rights = context.rights(user_index);
    match rights {
        Rights::Full => Ok(rights),
        Rights::Reviewer if folder == "calendar" => Ok(rights),
        _ => {
            context.state.counters.count("ews.access_denied");
            Err((
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.".to_string(),
            ))
        }
    }
}

fn folder_xml(context: &Context<'_>, user_index: usize, name: &str, rights: Rights) -> String {
    let user = &context.state.directory.users[user_index];
    let id = encode_id("F", &user.id, name);
    let root = encode_id("F", &user.id, "root");
    let full = rights == Rights::Full;
    let effective = format!(
        "<t:EffectiveRights><t:CreateAssociated>{full}</t:CreateAssociated><t:CreateContents>{full}</t:CreateContents><t:CreateHierarchy>{full}</t:CreateHierarchy><t:Delete>{full}</t:Delete><t:Modify>{full}</t:Modify><t:Read>true</t:Read><t:ViewPrivateItems>{full}</t:ViewPrivateItems></t:EffectiveRights>"
    );
    if name == "calendar" {
        let count = lock(&context.state.mailboxes[user_index]).events.len();
        format!(
            "<t:CalendarFolder><t:FolderId Id=\"{id}\" ChangeKey=\"AgAAABQAAAA=\"/><t:ParentFolderId Id=\"{root}\" ChangeKey=\"AQAAAA==\"/><t:FolderClass>IPF.Appointment</t:FolderClass><t:DisplayName>Calendar</t:DisplayName><t:TotalCount>{count}</t:TotalCount><t:ChildFolderCount>0</t:ChildFolderCount>{effective}</t:CalendarFolder>"
        )
    } else {
        let display = match name {
            "root" => "Root",
            "msgfolderroot" => "Top of Information Store",
            _ => name,
        };
        format!(
            "<t:Folder><t:FolderId Id=\"{id}\" ChangeKey=\"AQAAAA==\"/><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>{}</t:DisplayName><t:TotalCount>0</t:TotalCount><t:ChildFolderCount>1</t:ChildFolderCount>{effective}<t:UnreadCount>0</t:UnreadCount></t:Folder>",
            escape(display)
        )
    }
}

const KNOWN_FOLDERS: [&str; 3] = ["calendar", "root", "msgfolderroot"];

pub fn get_folder(context: &Context<'_>, request: &Element) -> Result<Response, Fault> {
    let mut messages = String::new();
    for id in folder_ids(request, "FolderIds")? {
        let message = match folder_ref(context, &id) {
            FolderRef::Error(code, text) => error_message("GetFolder", code, &text),
            FolderRef::Found(user_index, name) if KNOWN_FOLDERS.contains(&name.as_str()) => {
                match check_access(context, user_index, &name) {
                    Ok(rights) => success(
                        "GetFolder",
                        &format!(
                            "<m:Folders>{}</m:Folders>",
                            folder_xml(context, user_index, &name, rights)
                        ),
                    ),
                    Err((code, text)) => error_message("GetFolder", code, &text),
                }
            }
            FolderRef::Found(..) => error_message(
                "GetFolder",
                "ErrorFolderNotFound",
                "The specified folder could not be found in the store.",
            ),
        };
        messages.push_str(&message);
    }
    Ok(soap::ok(&operation("GetFolder", &messages)))
}

fn legacy_status(show_as: ShowAs) -> &'static str {
    match show_as {
        ShowAs::Free => "Free",
        ShowAs::Tentative => "Tentative",
        ShowAs::Busy => "Busy",
        ShowAs::Oof => "OOF",
        ShowAs::WorkingElsewhere => "WorkingElsewhere",
        ShowAs::Unknown => "NoData",
    }
}

fn sensitivity_name(sensitivity: Sensitivity) -> &'static str {
    match sensitivity {
        Sensitivity::Normal => "Normal",
        Sensitivity::Personal => "Personal",
        Sensitivity::Private => "Private",
        Sensitivity::Confidential => "Confidential",
    }
}

pub fn mailbox_xml(name: &str, address: &str) -> String {
    format!(
        "<t:Mailbox><t:Name>{}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>Mailbox</t:MailboxType></t:Mailbox>",
        escape(name),
        escape(address)
    )
}

/// A calendar item as EWS shows it; reviewers see private items without their details.
pub fn calendar_item_xml(
    context: &Context<'_>,
    user_index: usize,
    instance: &Instance,
    rights: Rights,
) -> String {
    let user = &context.state.directory.users[user_index];
    let data = &instance.data;
    let hidden = rights != Rights::Full && data.sensitivity.is_private();
    let subject = if hidden {
        "Private Appointment"
    } else {
        data.subject.as_str()
    };
    let mut xml = String::with_capacity(1024);
    xml.push_str("<t:CalendarItem>");
    xml.push_str(&format!(
        "<t:ItemId Id=\"{}\" ChangeKey=\"{}\"/><t:ParentFolderId Id=\"{}\" ChangeKey=\"AgAAABQAAAA=\"/><t:ItemClass>IPM.Appointment</t:ItemClass><t:Subject>{}</t:Subject><t:Sensitivity>{}</t:Sensitivity>",
        encode_id("I", &user.id, &instance.id),
        escape(&instance.change_key),
        encode_id("F", &user.id, "calendar"),
        escape(subject),
        sensitivity_name(data.sensitivity),
    ));
    if !hidden {
        xml.push_str(&format!(
            "<t:Body BodyType=\"HTML\">{}</t:Body>",
            escape(&data.body_html)
        ));
        if !data.categories.is_empty() {
            xml.push_str("<t:Categories>");
            for category in &data.categories {
                xml.push_str(&format!("<t:String>{}</t:String>", escape(category)));
            }
            xml.push_str("</t:Categories>");
        }
    }
    let importance = match data.importance.to_ascii_lowercase().as_str() {
        "low" => "Low",
        "high" => "High",
        _ => "Normal",
    };
    xml.push_str(&format!(
        "<t:Importance>{importance}</t:Importance><t:DateTimeCreated>{}</t:DateTimeCreated><t:LastModifiedTime>{}</t:LastModifiedTime><t:UID>{}</t:UID>",
        ews_time(instance.created),
        ews_time(instance.last_modified),
        escape(&instance.ical_uid),
    ));
    let original_start = match instance.kind {
        InstanceKind::Occurrence | InstanceKind::Exception => {
            crate::calendar::parse_occurrence_id(&instance.id)
                .and_then(|(_, start)| start.to_zoned(data.zone.zone.clone()).ok())
                .map(|zoned| zoned.timestamp())
        }
        _ => None,
    };
    if let Some(original) = original_start {
        xml.push_str(&format!(
            "<t:RecurrenceId>{}</t:RecurrenceId>",
            ews_time(original)
        ));
    }
    xml.push_str(&format!(
        "<t:Start>{}</t:Start><t:End>{}</t:End>",
        ews_time(instance.start.timestamp()),
        ews_time(instance.end.timestamp())
    ));
    if let Some(original) = original_start {
        xml.push_str(&format!(
            "<t:OriginalStart>{}</t:OriginalStart>",
            ews_time(original)
        ));
    }
    let item_type = match instance.kind {
        InstanceKind::SingleInstance => "Single",
        InstanceKind::Occurrence => "Occurrence",
        InstanceKind::Exception => "Exception",
        InstanceKind::SeriesMaster => "RecurringMaster",
    };
    let is_organizer = data.organizer.address.eq_ignore_ascii_case(&user.mail);
    xml.push_str(&format!(
        "<t:IsAllDayEvent>{}</t:IsAllDayEvent><t:LegacyFreeBusyStatus>{}</t:LegacyFreeBusyStatus>",
        data.is_all_day,
        legacy_status(data.show_as)
    ));
    if !hidden {
        xml.push_str(&format!(
            "<t:Location>{}</t:Location>",
            escape(&data.location)
        ));
    }
    xml.push_str(&format!(
        "<t:IsMeeting>{}</t:IsMeeting><t:IsCancelled>{}</t:IsCancelled><t:IsRecurring>{}</t:IsRecurring><t:CalendarItemType>{item_type}</t:CalendarItemType><t:MyResponseType>{}</t:MyResponseType><t:Organizer>{}</t:Organizer>",
        !data.attendees.is_empty(),
        data.is_cancelled,
        matches!(instance.kind, InstanceKind::Occurrence | InstanceKind::Exception),
        if is_organizer { "Organizer" } else { "Accept" },
        mailbox_xml(&data.organizer.name, &data.organizer.address),
    ));
    if !hidden {
        for (element, kind) in [
            ("RequiredAttendees", "required"),
            ("OptionalAttendees", "optional"),
            ("Resources", "resource"),
        ] {
            let attendees: String = data
                .attendees
                .iter()
                .filter(|attendee| attendee.kind.eq_ignore_ascii_case(kind))
                .map(|attendee| {
                    let last_response = attendee
                        .response
                        .time()
                        .map(|time| {
                            format!("<t:LastResponseTime>{}</t:LastResponseTime>", ews_time(time))
                        })
                        .unwrap_or_default();
                    format!(
                        "<t:Attendee>{}<t:ResponseType>{}</t:ResponseType>{last_response}</t:Attendee>",
                        mailbox_xml(&attendee.email.name, &attendee.email.address),
                        attendee.response.ews_name(),
                    )
                })
                .collect();
            if !attendees.is_empty() {
                xml.push_str(&format!("<t:{element}>{attendees}</t:{element}>"));
            }
        }
    }
    xml.push_str(&format!(
        "<t:IsOnlineMeeting>{}</t:IsOnlineMeeting></t:CalendarItem>",
        data.is_online_meeting
    ));
    xml
}

pub fn find_item(context: &Context<'_>, request: &Element) -> Result<Response, Fault> {
    let view = request.child("CalendarView");
    let window = match view {
        Some(view) => {
            let start = view
                .attribute("StartDate")
                .ok_or_else(|| Fault::schema("CalendarView needs StartDate"))?;
            let end = view
                .attribute("EndDate")
                .ok_or_else(|| Fault::schema("CalendarView needs EndDate"))?;
            let max = view
                .attribute("MaxEntriesReturned")
                .map(|text| {
                    text.parse::<usize>()
                        .ok()
                        .filter(|max| *max >= 1)
                        .ok_or_else(|| {
                            Fault::schema(format!(
                                "MaxEntriesReturned '{text}' is not a positive integer"
                            ))
                        })
                })
                .transpose()?;
            Some((parse_time(context, start)?, parse_time(context, end)?, max))
        }
        None => None,
    };
    let paging = request.child("IndexedPageItemView");
    let mut messages = String::new();
    for id in folder_ids(request, "ParentFolderIds")? {
        let (user_index, name) = match folder_ref(context, &id) {
            FolderRef::Found(user_index, name) => (user_index, name),
            FolderRef::Error(code, text) => {
                messages.push_str(&error_message("FindItem", code, &text));
                continue;
            }
        };
        if name != "calendar" {
            messages.push_str(&success(
                "FindItem",
                "<m:RootFolder TotalItemsInView=\"0\" IncludesLastItemInRange=\"true\"><t:Items/></m:RootFolder>",
            ));
            continue;
        }
        let rights = match check_access(context, user_index, &name) {
            Ok(rights) => rights,
            Err((code, text)) => {
                messages.push_str(&error_message("FindItem", code, &text));
                continue;
            }
        };
        let (instances, includes_last, total) = match window {
            Some((start, end, max)) => {
                if end < start {
                    messages.push_str(&error_message(
                        "FindItem",
                        "ErrorCalendarEndDateIsEarlierThanStartDate",
                        "EndDate is earlier than StartDate",
                    ));
                    continue;
                }
                if end.duration_since(start) > MAX_VIEW {
                    messages.push_str(&error_message(
                        "FindItem",
                        "ErrorCalendarViewRangeTooBig",
                        "The time range between the start date and the end date is too big. The maximum is two years.",
                    ));
                    continue;
                }
                let mut instances = lock(&context.state.mailboxes[user_index]).view(start, end);
                let limit = max.unwrap_or(FIND_COUNT_LIMIT).min(FIND_COUNT_LIMIT);
                let includes_last = instances.len() <= limit;
                instances.truncate(limit);
                let total = instances.len();
                (instances, includes_last, total)
            }
            None => {
                let mailbox = lock(&context.state.mailboxes[user_index]);
                let mut items: Vec<Instance> = mailbox
                    .events
                    .iter()
                    .filter_map(|event| event.as_item())
                    .collect();
                drop(mailbox);
                items.sort_by_key(|item| item.start.timestamp());
                let total = items.len();
                let offset = paging
                    .and_then(|paging| paging.attribute("Offset"))
                    .and_then(|text| text.parse::<usize>().ok())
                    .unwrap_or(0);
                let max = paging
                    .and_then(|paging| paging.attribute("MaxEntriesReturned"))
                    .and_then(|text| text.parse::<usize>().ok())
                    .unwrap_or(FIND_COUNT_LIMIT)
                    .min(FIND_COUNT_LIMIT);
                let page: Vec<Instance> = items.into_iter().skip(offset).take(max).collect();
                let includes_last = offset + page.len() >= total;
                (page, includes_last, total)
            }
        };
        let items: String = instances
            .iter()
            .map(|instance| calendar_item_xml(context, user_index, instance, rights))
            .collect();
        messages.push_str(&success(
            "FindItem",
            &format!(
                "<m:RootFolder TotalItemsInView=\"{total}\" IncludesLastItemInRange=\"{includes_last}\"><t:Items>{items}</t:Items></m:RootFolder>"
            ),
        ));
    }
    Ok(soap::ok(&operation("FindItem", &messages)))
}

pub fn get_item(context: &Context<'_>, request: &Element) -> Result<Response, Fault> {
    let ids = request
        .child("ItemIds")
        .ok_or_else(|| Fault::schema("GetItem needs ItemIds"))?;
    let mut messages = String::new();
    for id in &ids.children {
        let decoded = id
            .attribute("Id")
            .and_then(decode_id)
            .filter(|(kind, _, _)| kind == "I");
        let Some((_, user_id, item_id)) = decoded else {
            messages.push_str(&error_message(
                "GetItem",
                "ErrorInvalidIdMalformed",
                "Id is malformed.",
            ));
            continue;
        };
        let Some(user_index) = context.state.directory.user(&user_id) else {
            messages.push_str(&error_message(
                "GetItem",
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            ));
            continue;
        };
        let rights = match check_access(context, user_index, "calendar") {
            Ok(rights) => rights,
            Err((code, text)) => {
                messages.push_str(&error_message("GetItem", code, &text));
                continue;
            }
        };
        let item = lock(&context.state.mailboxes[user_index]).item(&item_id);
        match item {
            Some(instance) => messages.push_str(&success(
                "GetItem",
                &format!(
                    "<m:Items>{}</m:Items>",
                    calendar_item_xml(context, user_index, &instance, rights)
                ),
            )),
            None => messages.push_str(&error_message(
                "GetItem",
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            )),
        }
    }
    Ok(soap::ok(&operation("GetItem", &messages)))
}

struct Resolved {
    name: String,
    address: String,
    user_index: Option<usize>,
}

pub fn resolve_names(context: &Context<'_>, request: &Element) -> Result<Response, Fault> {
    let entry = request
        .child_text("UnresolvedEntry")
        .ok_or_else(|| Fault::schema("ResolveNames needs UnresolvedEntry"))?;
    let full_contact = request
        .attribute("ReturnFullContactData")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    let key = entry
        .strip_prefix("smtp:")
        .or_else(|| entry.strip_prefix("SMTP:"))
        .unwrap_or(entry)
        .trim();
    let directory = &context.state.directory;
    let mut results: Vec<Resolved> = Vec::new();
    let tenant = context
        .own_mailbox()
        .map(|index| directory.users[index].tenant_index);
    let in_tenant =
        |index: usize| tenant.is_none_or(|tenant| directory.users[index].tenant_index == tenant);
    if let Some(index) = directory.user(key).filter(|index| in_tenant(*index)) {
        let user = &directory.users[index];
        results.push(Resolved {
            name: user.display_name.clone(),
            address: user.mail.clone(),
            user_index: Some(index),
        });
    } else if let Some(account) =
        context.state.ews.setup.accounts.iter().find(|account| {
            account.user_index.is_none() && account.address.eq_ignore_ascii_case(key)
        })
    {
        results.push(Resolved {
            name: account.display_name.clone(),
            address: account.address.clone(),
            user_index: None,
        });
    } else if !key.contains('@') && !key.is_empty() {
        let needle = key.to_lowercase();
        for (index, user) in directory.users.iter().enumerate() {
            if !in_tenant(index) {
                continue;
            }
            let local = user
                .mail
                .split('@')
                .next()
                .unwrap_or_default()
                .to_lowercase();
            let matches = user.display_name.to_lowercase().starts_with(&needle)
                || user
                    .display_name
                    .to_lowercase()
                    .split_whitespace()
                    .any(|word| word.starts_with(&needle))
                || user
                    .given_name
                    .as_deref()
                    .is_some_and(|name| name.to_lowercase().starts_with(&needle))
                || user
                    .surname
                    .as_deref()
                    .is_some_and(|name| name.to_lowercase().starts_with(&needle))
                || local.starts_with(&needle);
            if matches {
                results.push(Resolved {
                    name: user.display_name.clone(),
                    address: user.mail.clone(),
                    user_index: Some(index),
                });
                if results.len() == 100 {
                    break;
                }
            }
        }
    }
    let resolutions: String = results
        .iter()
        .map(|resolved| {
            let contact = if full_contact {
                let user = resolved.user_index.map(|index| &directory.users[index]);
                format!(
                    "<t:Contact><t:DisplayName>{}</t:DisplayName><t:GivenName>{}</t:GivenName><t:Surname>{}</t:Surname><t:EmailAddresses><t:Entry Key=\"EmailAddress1\">SMTP:{}</t:Entry></t:EmailAddresses><t:ContactSource>ActiveDirectory</t:ContactSource></t:Contact>",
                    escape(&resolved.name),
                    escape(user.and_then(|user| user.given_name.as_deref()).unwrap_or_default()),
                    escape(user.and_then(|user| user.surname.as_deref()).unwrap_or_default()),
                    escape(&resolved.address),
                )
            } else {
                String::new()
            };
            format!("<t:Resolution>{}{contact}</t:Resolution>", mailbox_xml(&resolved.name, &resolved.address))
        })
        .collect();
    let set = format!(
        "<m:ResolutionSet TotalItemsInView=\"{}\" IncludesLastItemInRange=\"true\">{resolutions}</m:ResolutionSet>",
        results.len()
    );
    let message = match results.len() {
        0 => error_message("ResolveNames", "ErrorNameResolutionNoResults", "No results were found."),
        1 => success("ResolveNames", &set),
        _ => format!(
            "<m:ResolveNamesResponseMessage ResponseClass=\"Warning\"><m:MessageText>Multiple results were found.</m:MessageText><m:ResponseCode>ErrorNameResolutionMultipleResults</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{set}</m:ResolveNamesResponseMessage>"
        ),
    };
    Ok(soap::ok(&operation("ResolveNames", &message)))
}

fn merged_digit(show_as: ShowAs) -> u8 {
    match show_as {
        ShowAs::Free | ShowAs::Unknown | ShowAs::WorkingElsewhere => 0,
        ShowAs::Tentative => 1,
        ShowAs::Busy => 2,
        ShowAs::Oof => 3,
    }
}

fn busy_type(show_as: ShowAs) -> &'static str {
    match show_as {
        ShowAs::Free => "Free",
        ShowAs::Tentative => "Tentative",
        ShowAs::Busy => "Busy",
        ShowAs::Oof => "OOF",
        ShowAs::WorkingElsewhere => "WorkingElsewhere",
        ShowAs::Unknown => "NoData",
    }
}

pub fn get_user_availability(context: &Context<'_>, request: &Element) -> Result<Response, Fault> {
    let zone = match request.child("TimeZone") {
        Some(element) => SerializableZone::parse(element).map_err(Fault::schema)?,
        None => SerializableZone::utc(),
    };
    let mailboxes = request
        .child("MailboxDataArray")
        .ok_or_else(|| Fault::schema("GetUserAvailabilityRequest needs MailboxDataArray"))?;
    let count = mailboxes.children_named("MailboxData").count();
    if count == 0 {
        return Err(Fault::new(
            "ErrorMailboxDataArrayEmpty",
            "MailboxDataArray is empty.",
        ));
    }
    if count > 100 {
        return Err(Fault::new(
            "ErrorMailboxDataArrayTooBig",
            format!("The number of mailboxes ({count}) exceeds the limit of 100."),
        ));
    }
    let options = request.child("FreeBusyViewOptions").ok_or_else(|| {
        Fault::schema("only FreeBusyViewOptions is supported (SuggestionsViewOptions is not)")
    })?;
    let window = options
        .child("TimeWindow")
        .ok_or_else(|| Fault::schema("FreeBusyViewOptions needs TimeWindow"))?;
    let local = |name: &str| -> Result<Timestamp, Fault> {
        let text = window
            .child_text(name)
            .ok_or_else(|| Fault::schema(format!("TimeWindow needs {name}")))?;
        if let Ok(timestamp) = text.parse::<Timestamp>() {
            return Ok(timestamp);
        }
        let civil: DateTime = text
            .parse()
            .map_err(|_| Fault::schema(format!("'{text}' is not a valid xs:dateTime")))?;
        zone.to_timestamp(civil)
            .ok_or_else(|| Fault::schema(format!("'{text}' is out of range")))
    };
    let (start, end) = (local("StartTime")?, local("EndTime")?);
    if end <= start {
        return Err(Fault::new(
            "ErrorInvalidTimeInterval",
            "EndTime is earlier than or equal to StartTime.",
        ));
    }
    if end.duration_since(start) > SignedDuration::from_hours(42 * 24) {
        return Err(Fault::new(
            "ErrorTimeIntervalTooBig",
            "The time interval specified in the request is too big: at most 42 days.",
        ));
    }
    let interval = options
        .child_text("MergedFreeBusyIntervalInMinutes")
        .map(|text| {
            text.parse::<i64>()
                .map_err(|_| Fault::schema("MergedFreeBusyIntervalInMinutes is not a number"))
        })
        .transpose()?
        .unwrap_or(30);
    if !(5..=1440).contains(&interval) {
        return Err(Fault::schema(
            "MergedFreeBusyIntervalInMinutes must be between 5 and 1440",
        ));
    }
    let view = options
        .child_text("RequestedView")
        .unwrap_or("Detailed")
        .to_string();
    let (with_events, with_details, with_merged) = match view.as_str() {
        "MergedOnly" => (false, false, true),
        "FreeBusy" => (true, false, false),
        "FreeBusyMerged" => (true, false, true),
        "Detailed" => (true, true, false),
        "DetailedMerged" => (true, true, true),
        "None" => (false, false, false),
        other => {
            return Err(Fault::schema(format!(
                "'{other}' is not a FreeBusyViewType"
            )))
        }
    };
    let format_local = |timestamp: Timestamp| {
        zone.to_local(timestamp)
            .strftime("%Y-%m-%dT%H:%M:%S")
            .to_string()
    };
    let mut responses = String::new();
    for data in mailboxes.children_named("MailboxData") {
        let address = data
            .child("Email")
            .and_then(|email| email.child_text("Address"))
            .unwrap_or_default();
        let user_index = context
            .state
            .directory
            .user(address)
            .filter(|index| context.state.directory.users[*index].has_mailbox);
        let Some(user_index) = user_index else {
            responses.push_str(&format!(
                "<m:FreeBusyResponse><m:ResponseMessage ResponseClass=\"Error\"><m:MessageText>No mailbox with such SMTP address {}.</m:MessageText><m:ResponseCode>ErrorMailRecipientNotFound</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:ResponseMessage><m:FreeBusyView><t:FreeBusyViewType>None</t:FreeBusyViewType></m:FreeBusyView></m:FreeBusyResponse>",
                escape(address)
            ));
            continue;
        };
        let rights = context.rights(user_index);
        let details_allowed = with_details && rights != Rights::None;
        let instances: Vec<Instance> = lock(&context.state.mailboxes[user_index])
            .view(start, end)
            .into_iter()
            .filter(|instance| !instance.data.is_cancelled)
            .collect();
        let mut body = format!("<t:FreeBusyViewType>{}</t:FreeBusyViewType>", escape(&view));
        if with_merged {
            let mut merged = String::new();
            let mut slot = start;
            while slot < end {
                let slot_end = slot
                    .checked_add(SignedDuration::from_mins(interval))
                    .unwrap_or(end)
                    .min(end);
                let digit = instances
                    .iter()
                    .filter(|instance| {
                        instance.start.timestamp() < slot_end && instance.end.timestamp() > slot
                    })
                    .map(|instance| merged_digit(instance.data.show_as))
                    .max()
                    .unwrap_or(0);
                merged.push(char::from(b'0' + digit));
                slot = slot_end;
            }
            body.push_str(&format!("<t:MergedFreeBusy>{merged}</t:MergedFreeBusy>"));
        }
        if with_events {
            body.push_str("<t:CalendarEventArray>");
            for instance in &instances {
                if instance.data.show_as == ShowAs::Free {
                    continue;
                }
                body.push_str(&format!(
                    "<t:CalendarEvent><t:StartTime>{}</t:StartTime><t:EndTime>{}</t:EndTime><t:BusyType>{}</t:BusyType>",
                    format_local(instance.start.timestamp()),
                    format_local(instance.end.timestamp()),
                    busy_type(instance.data.show_as)
                ));
                if details_allowed {
                    let private = instance.data.sensitivity.is_private();
                    let show = !private || rights == Rights::Full;
                    body.push_str(&format!(
                        "<t:CalendarEventDetails><t:ID>{}</t:ID>{}{}<t:IsMeeting>{}</t:IsMeeting><t:IsRecurring>{}</t:IsRecurring><t:IsException>{}</t:IsException><t:IsReminderSet>false</t:IsReminderSet><t:IsPrivate>{private}</t:IsPrivate></t:CalendarEventDetails>",
                        escape(&instance.id),
                        if show { format!("<t:Subject>{}</t:Subject>", escape(&instance.data.subject)) } else { String::new() },
                        if show { format!("<t:Location>{}</t:Location>", escape(&instance.data.location)) } else { String::new() },
                        !instance.data.attendees.is_empty(),
                        matches!(instance.kind, InstanceKind::Occurrence | InstanceKind::Exception),
                        instance.kind == InstanceKind::Exception,
                    ));
                }
                body.push_str("</t:CalendarEvent>");
            }
            body.push_str("</t:CalendarEventArray>");
        }
        let user = &context.state.directory.users[user_index];
        if user.kind == MailboxKind::Person || with_events {
            let year = start.to_zoned(user.time_zone.zone.clone()).year();
            let user_zone = SerializableZone::from_zone(&user.time_zone.zone, year);
            let days: Vec<&str> = user
                .working_hours
                .days
                .iter()
                .map(|day| super::tz::ews_weekday(*day))
                .collect();
            let minutes =
                |time: jiff::civil::Time| i32::from(time.hour()) * 60 + i32::from(time.minute());
            body.push_str(&format!(
                "<t:WorkingHours>{}<t:WorkingPeriodArray><t:WorkingPeriod><t:DayOfWeek>{}</t:DayOfWeek><t:StartTimeInMinutes>{}</t:StartTimeInMinutes><t:EndTimeInMinutes>{}</t:EndTimeInMinutes></t:WorkingPeriod></t:WorkingPeriodArray></t:WorkingHours>",
                user_zone.to_xml(),
                days.join(" "),
                minutes(user.working_hours.start),
                minutes(user.working_hours.end),
            ));
        }
        responses.push_str(&format!(
            "<m:FreeBusyResponse><m:ResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode></m:ResponseMessage><m:FreeBusyView>{body}</m:FreeBusyView></m:FreeBusyResponse>"
        ));
    }
    context.state.counters.count("ews.availability_mailboxes");
    Ok(soap::ok(&format!(
        "<m:GetUserAvailabilityResponse xmlns:m=\"{}\" xmlns:t=\"{}\"><m:FreeBusyResponseArray>{responses}</m:FreeBusyResponseArray></m:GetUserAvailabilityResponse>",
        super::xml::NS_MESSAGES,
        super::xml::NS_TYPES
    )))
}

pub fn get_server_time_zones(context: &Context<'_>, request: &Element) -> Result<Response, Fault> {
    let year = context
        .state
        .clock
        .now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .year();
    let mut ids: Vec<String> = Vec::new();
    if let Some(list) = request.child("Ids") {
        ids.extend(list.children.iter().map(|id| id.text.trim().to_string()));
    }
    if ids.is_empty() {
        ids = [
            "UTC",
            "W. Europe Standard Time",
            "GMT Standard Time",
            "Eastern Standard Time",
            "Pacific Standard Time",
        ]
        .iter()
        .map(|id| id.to_string())
        .collect();
    }
    let mut definitions = String::new();
    for id in &ids {
        let Ok(zone) = resolve_zone(id) else {
            return Ok(soap::ok(&operation(
                "GetServerTimeZones",
                &error_message(
                    "GetServerTimeZones",
                    "ErrorTimeZone",
                    &format!("The time zone '{id}' is not known."),
                ),
            )));
        };
        definitions.push_str(&SerializableZone::from_zone(&zone.zone, year).definition_xml(id, id));
    }
    Ok(soap::ok(&operation(
        "GetServerTimeZones",
        &success(
            "GetServerTimeZones",
            &format!("<m:TimeZoneDefinitions>{definitions}</m:TimeZoneDefinitions>"),
        ),
    )))
}
