//! Mailbox calendars: stored events, recurrence expansion into instances, Graph's event JSON,
//! and the create/update/delete operations behind the REST API.

use std::collections::BTreeMap;

use jiff::civil::DateTime;
use jiff::{Timestamp, ToSpan, Zoned};
use serde_json::{json, Map, Value};

use crate::ids::RandomIds;
use crate::recurrence::{Recurrence, RecurrenceSpec};
use crate::timefmt::{graph_instant, graph_local, localize, parse_civil, resolve_zone, NamedZone};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShowAs {
    Free,
    Tentative,
    Busy,
    Oof,
    WorkingElsewhere,
    Unknown,
}

impl ShowAs {
    pub fn parse(text: &str) -> Option<ShowAs> {
        Some(match text.to_ascii_lowercase().as_str() {
            "free" => ShowAs::Free,
            "tentative" => ShowAs::Tentative,
            "busy" => ShowAs::Busy,
            "oof" => ShowAs::Oof,
            "workingelsewhere" => ShowAs::WorkingElsewhere,
            "unknown" => ShowAs::Unknown,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ShowAs::Free => "free",
            ShowAs::Tentative => "tentative",
            ShowAs::Busy => "busy",
            ShowAs::Oof => "oof",
            ShowAs::WorkingElsewhere => "workingElsewhere",
            ShowAs::Unknown => "unknown",
        }
    }

    /// The digit getSchedule's `availabilityView` uses.
    pub fn availability_digit(self) -> u8 {
        match self {
            ShowAs::Free | ShowAs::Unknown => 0,
            ShowAs::Tentative => 1,
            ShowAs::Busy => 2,
            ShowAs::Oof => 3,
            ShowAs::WorkingElsewhere => 4,
        }
    }

    /// Which status wins when two events overlap in a getSchedule slot.
    pub fn precedence(self) -> u8 {
        match self {
            ShowAs::Free | ShowAs::Unknown => 0,
            ShowAs::Tentative => 1,
            ShowAs::WorkingElsewhere => 2,
            ShowAs::Busy => 3,
            ShowAs::Oof => 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensitivity {
    Normal,
    Personal,
    Private,
    Confidential,
}

impl Sensitivity {
    pub fn parse(text: &str) -> Option<Sensitivity> {
        Some(match text.to_ascii_lowercase().as_str() {
            "normal" => Sensitivity::Normal,
            "personal" => Sensitivity::Personal,
            "private" => Sensitivity::Private,
            "confidential" => Sensitivity::Confidential,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Sensitivity::Normal => "normal",
            Sensitivity::Personal => "personal",
            Sensitivity::Private => "private",
            Sensitivity::Confidential => "confidential",
        }
    }

    pub fn is_private(self) -> bool {
        matches!(self, Sensitivity::Private | Sensitivity::Confidential)
    }
}

#[derive(Clone, Debug)]
pub struct EmailAddress {
    pub name: String,
    pub address: String,
}

#[derive(Clone, Debug)]
pub struct Attendee {
    pub email: EmailAddress,
    /// required | optional | resource
    pub kind: String,
    /// The attendee's answer as the organizer's copy records it.
    pub response: AttendeeResponse,
}

/// An attendee's answer to a meeting, as the organizer's copy records it: Graph's
/// `attendees[].status` (`responseStatus`: `response` and `time`), EWS's `ResponseType` and
/// `LastResponseTime` on the attendee.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttendeeResponse {
    /// No answer yet (Graph `none`, EWS `Unknown`).
    #[default]
    None,
    Accepted {
        at: Timestamp,
    },
    TentativelyAccepted {
        at: Timestamp,
    },
    Declined {
        at: Timestamp,
    },
}

impl AttendeeResponse {
    /// Graph's `responseType` name.
    pub fn graph_name(self) -> &'static str {
        match self {
            AttendeeResponse::None => "none",
            AttendeeResponse::Accepted { .. } => "accepted",
            AttendeeResponse::TentativelyAccepted { .. } => "tentativelyAccepted",
            AttendeeResponse::Declined { .. } => "declined",
        }
    }

    /// EWS's `ResponseTypeType` name.
    pub fn ews_name(self) -> &'static str {
        match self {
            AttendeeResponse::None => "Unknown",
            AttendeeResponse::Accepted { .. } => "Accept",
            AttendeeResponse::TentativelyAccepted { .. } => "Tentative",
            AttendeeResponse::Declined { .. } => "Decline",
        }
    }

    /// When the attendee answered; `None` before any answer.
    pub fn time(self) -> Option<Timestamp> {
        match self {
            AttendeeResponse::None => None,
            AttendeeResponse::Accepted { at }
            | AttendeeResponse::TentativelyAccepted { at }
            | AttendeeResponse::Declined { at } => Some(at),
        }
    }
}

/// Everything about an event that a PATCH can change; an exception carries its own copy.
#[derive(Clone, Debug)]
pub struct EventData {
    pub subject: String,
    pub body_html: String,
    pub location: String,
    pub show_as: ShowAs,
    pub sensitivity: Sensitivity,
    pub importance: String,
    pub is_all_day: bool,
    pub is_cancelled: bool,
    pub is_online_meeting: bool,
    pub categories: Vec<String>,
    /// Local wall-clock start and end in `zone`.
    pub start: DateTime,
    pub end: DateTime,
    pub zone: NamedZone,
    pub organizer: EmailAddress,
    pub attendees: Vec<Attendee>,
}

#[derive(Clone, Debug)]
pub enum Exception {
    /// The occurrence was deleted from the series (it no longer appears anywhere).
    Deleted,
    Modified {
        data: Box<EventData>,
        change_key: String,
        last_modified: Timestamp,
    },
}

#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub id: String,
    pub ical_uid: String,
    pub created: Timestamp,
    pub last_modified: Timestamp,
    pub change_key: String,
    pub data: EventData,
    pub recurrence: Option<Recurrence>,
    /// Keyed by the occurrence's original local start.
    pub exceptions: BTreeMap<DateTime, Exception>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceKind {
    SingleInstance,
    Occurrence,
    Exception,
    SeriesMaster,
}

impl InstanceKind {
    pub fn name(self) -> &'static str {
        match self {
            InstanceKind::SingleInstance => "singleInstance",
            InstanceKind::Occurrence => "occurrence",
            InstanceKind::Exception => "exception",
            InstanceKind::SeriesMaster => "seriesMaster",
        }
    }
}

/// One concrete appearance of an event in a calendar view.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub kind: InstanceKind,
    pub series_master_id: Option<String>,
    pub ical_uid: String,
    pub change_key: String,
    pub created: Timestamp,
    pub last_modified: Timestamp,
    pub data: EventData,
    pub start: Zoned,
    pub end: Zoned,
    pub recurrence: Option<Recurrence>,
}

/// The id of one occurrence of a series: the master id and the original local start.
pub fn occurrence_id(master_id: &str, original_start: DateTime) -> String {
    format!("{master_id}_{}", original_start.strftime("%Y%m%dT%H%M%S"))
}

/// Splits an occurrence id into its master id and original start.
pub fn parse_occurrence_id(id: &str) -> Option<(&str, DateTime)> {
    let (master, stamp) = id.rsplit_once('_')?;
    let datetime = DateTime::strptime("%Y%m%dT%H%M%S", stamp).ok()?;
    Some((master, datetime))
}

impl StoredEvent {
    fn span_of(data: &EventData) -> jiff::Span {
        // The wall-clock length: a meeting keeps its local end time across a DST change,
        // as Outlook and iCalendar clients both expect.
        data.start.until(data.end).unwrap_or_else(|_| 0.hours())
    }

    fn instance_from(
        &self,
        kind: InstanceKind,
        id: String,
        data: &EventData,
        change_key: &str,
        last_modified: Timestamp,
    ) -> Option<Instance> {
        let start = localize(data.start, &data.zone.zone).ok()?;
        let end = localize(data.end, &data.zone.zone).ok()?;
        Some(Instance {
            id,
            kind,
            series_master_id: match kind {
                InstanceKind::Occurrence | InstanceKind::Exception => Some(self.id.clone()),
                _ => None,
            },
            ical_uid: self.ical_uid.clone(),
            change_key: change_key.to_string(),
            created: self.created,
            last_modified,
            data: data.clone(),
            start,
            end,
            recurrence: if kind == InstanceKind::SeriesMaster {
                self.recurrence.clone()
            } else {
                None
            },
        })
    }

    /// The event itself as GET /events/{id} shows it (a single instance or a series master).
    pub fn as_item(&self) -> Option<Instance> {
        let kind = if self.recurrence.is_some() {
            InstanceKind::SeriesMaster
        } else {
            InstanceKind::SingleInstance
        };
        self.instance_from(
            kind,
            self.id.clone(),
            &self.data,
            &self.change_key,
            self.last_modified,
        )
    }

    /// The occurrence that originally started at `original_start`, with its exception applied.
    pub fn occurrence(&self, original_start: DateTime) -> Option<Instance> {
        let recurrence = self.recurrence.as_ref()?;
        if !recurrence
            .dates_until(original_start.date())
            .contains(&original_start.date())
            || original_start.time() != self.data.start.time()
        {
            return None;
        }
        let id = occurrence_id(&self.id, original_start);
        match self.exceptions.get(&original_start) {
            Some(Exception::Deleted) => None,
            Some(Exception::Modified {
                data,
                change_key,
                last_modified,
            }) => self.instance_from(
                InstanceKind::Exception,
                id,
                data,
                change_key,
                *last_modified,
            ),
            None => {
                let mut data = self.data.clone();
                data.start = original_start;
                data.end = original_start.checked_add(Self::span_of(&self.data)).ok()?;
                self.instance_from(
                    InstanceKind::Occurrence,
                    id,
                    &data,
                    &self.change_key,
                    self.last_modified,
                )
            }
        }
    }

    /// Instances overlapping `[window_start, window_end)`.
    pub fn instances_between(
        &self,
        window_start: Timestamp,
        window_end: Timestamp,
        output: &mut Vec<Instance>,
    ) {
        let overlaps = |instance: &Instance| {
            let start = instance.start.timestamp();
            let end = instance.end.timestamp();
            if start == end {
                start >= window_start && start < window_end
            } else {
                start < window_end && end > window_start
            }
        };
        let Some(recurrence) = &self.recurrence else {
            if let Some(instance) = self.as_item() {
                if overlaps(&instance) {
                    output.push(instance);
                }
            }
            return;
        };
        let span = Self::span_of(&self.data);
        // Occurrences that start up to a day after the window end cannot overlap it; a
        // generous margin covers zone offsets and multi-day occurrences.
        let until = window_end
            .to_zoned(self.data.zone.zone.clone())
            .date()
            .checked_add(2.days())
            .unwrap_or(jiff::civil::Date::MAX);
        for date in recurrence.dates_until(until) {
            let original_start = date.to_datetime(self.data.start.time());
            let id = occurrence_id(&self.id, original_start);
            let instance = match self.exceptions.get(&original_start) {
                Some(Exception::Deleted) => continue,
                Some(Exception::Modified {
                    data,
                    change_key,
                    last_modified,
                }) => self.instance_from(
                    InstanceKind::Exception,
                    id,
                    data,
                    change_key,
                    *last_modified,
                ),
                None => {
                    let mut data = self.data.clone();
                    data.start = original_start;
                    let Ok(end) = original_start.checked_add(span) else {
                        continue;
                    };
                    data.end = end;
                    self.instance_from(
                        InstanceKind::Occurrence,
                        id,
                        &data,
                        &self.change_key,
                        self.last_modified,
                    )
                }
            };
            if let Some(instance) = instance {
                if overlaps(&instance) {
                    output.push(instance);
                }
            }
        }
        // An exception moved into the window from an original date outside it.
        for (original_start, exception) in &self.exceptions {
            if let Exception::Modified {
                data,
                change_key,
                last_modified,
            } = exception
            {
                let id = occurrence_id(&self.id, *original_start);
                if output.iter().any(|existing| existing.id == id) {
                    continue;
                }
                if let Some(instance) = self.instance_from(
                    InstanceKind::Exception,
                    id,
                    data,
                    change_key,
                    *last_modified,
                ) {
                    if overlaps(&instance) {
                        output.push(instance);
                    }
                }
            }
        }
    }
}

/// One mailbox's calendar.
#[derive(Debug, Default)]
pub struct Mailbox {
    pub events: Vec<StoredEvent>,
}

impl Mailbox {
    /// All instances overlapping the window, ordered by start then id.
    pub fn view(&self, window_start: Timestamp, window_end: Timestamp) -> Vec<Instance> {
        let mut instances = Vec::new();
        for event in &self.events {
            event.instances_between(window_start, window_end, &mut instances);
        }
        instances.sort_by(|left, right| {
            left.start
                .timestamp()
                .cmp(&right.start.timestamp())
                .then_with(|| left.id.cmp(&right.id))
        });
        instances
    }

    pub fn find(&self, id: &str) -> Option<usize> {
        self.events.iter().position(|event| event.id == id)
    }

    /// An event or occurrence by id.
    pub fn item(&self, id: &str) -> Option<Instance> {
        if let Some(index) = self.find(id) {
            return self.events[index].as_item();
        }
        let (master_id, original_start) = parse_occurrence_id(id)?;
        let index = self.find(master_id)?;
        self.events[index].occurrence(original_start)
    }
}

/// What a change did, for change notifications (which name the series master for series).
#[derive(Clone, Debug)]
pub struct ChangeRecord {
    pub change_type: ChangeType,
    pub event_id: String,
    pub change_key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Created,
    Updated,
    Deleted,
}

impl ChangeType {
    pub fn name(self) -> &'static str {
        match self {
            ChangeType::Created => "created",
            ChangeType::Updated => "updated",
            ChangeType::Deleted => "deleted",
        }
    }
}

/// A request body that does not describe a valid event.
#[derive(Debug, thiserror::Error)]
pub enum EventInputError {
    #[error("{0}")]
    Invalid(String),
    #[error("The specified object was not found in the store.")]
    NotFound,
}

/// Reads `{dateTime, timeZone}`.
fn read_date_time_zone(
    value: &Value,
    property: &str,
) -> Result<(DateTime, NamedZone), EventInputError> {
    let date_time = value
        .get("dateTime")
        .and_then(Value::as_str)
        .ok_or_else(|| EventInputError::Invalid(format!("{property}.dateTime is required")))?;
    let zone_name = value
        .get("timeZone")
        .and_then(Value::as_str)
        .unwrap_or("UTC");
    let zone =
        resolve_zone(zone_name).map_err(|error| EventInputError::Invalid(error.to_string()))?;
    let civil =
        parse_civil(date_time).map_err(|error| EventInputError::Invalid(error.to_string()))?;
    Ok((civil, zone))
}

fn read_email(value: &Value) -> Option<EmailAddress> {
    let email = value.get("emailAddress")?;
    let address = email.get("address")?.as_str()?.to_string();
    let name = email
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(&address)
        .to_string();
    Some(EmailAddress { name, address })
}

/// Applies the properties present in a Graph event JSON object to `data`.
/// Used for POST (over defaults) and PATCH (over the current values).
pub fn apply_event_json(
    data: &mut EventData,
    body: &Value,
) -> Result<Option<Option<RecurrenceSpec>>, EventInputError> {
    let object = body.as_object().ok_or_else(|| {
        EventInputError::Invalid("The request body must be a JSON object.".to_string())
    })?;
    let text = |name: &str| object.get(name).and_then(Value::as_str);
    if let Some(subject) = object.get("subject") {
        data.subject = subject.as_str().unwrap_or_default().to_string();
    }
    if let Some(content) = object
        .get("body")
        .and_then(|body| body.get("content"))
        .and_then(Value::as_str)
    {
        data.body_html = content.to_string();
    }
    if let Some(location) = object
        .get("location")
        .and_then(|location| location.get("displayName"))
        .and_then(Value::as_str)
    {
        data.location = location.to_string();
    }
    if let Some(show_as) = text("showAs") {
        data.show_as = ShowAs::parse(show_as).ok_or_else(|| {
            EventInputError::Invalid(format!("'{show_as}' is not a valid showAs value"))
        })?;
    }
    if let Some(sensitivity) = text("sensitivity") {
        data.sensitivity = Sensitivity::parse(sensitivity).ok_or_else(|| {
            EventInputError::Invalid(format!("'{sensitivity}' is not a valid sensitivity value"))
        })?;
    }
    if let Some(importance) = text("importance") {
        data.importance = importance.to_string();
    }
    if let Some(is_all_day) = object.get("isAllDay").and_then(Value::as_bool) {
        data.is_all_day = is_all_day;
    }
    if let Some(is_online) = object.get("isOnlineMeeting").and_then(Value::as_bool) {
        data.is_online_meeting = is_online;
    }
    if let Some(categories) = object.get("categories").and_then(Value::as_array) {
        data.categories = categories
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
    }
    if let Some(attendees) = object.get("attendees").and_then(Value::as_array) {
        // An attendee named again keeps the answer the organizer's copy recorded.
        let previous = std::mem::take(&mut data.attendees);
        data.attendees = attendees
            .iter()
            .filter_map(|attendee| {
                let email = read_email(attendee)?;
                let kind = attendee
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("required")
                    .to_string();
                let response = previous
                    .iter()
                    .find(|known| known.email.address.eq_ignore_ascii_case(&email.address))
                    .map_or(AttendeeResponse::None, |known| known.response);
                Some(Attendee {
                    email,
                    kind,
                    response,
                })
            })
            .collect();
    }
    let start = object
        .get("start")
        .map(|value| read_date_time_zone(value, "start"))
        .transpose()?;
    let end = object
        .get("end")
        .map(|value| read_date_time_zone(value, "end"))
        .transpose()?;
    match (start, end) {
        (Some((start, zone)), Some((end, end_zone))) => {
            // Graph keeps both zones; the emulator stores one and converts the end into it.
            let end_in_start_zone = localize(end, &end_zone.zone)
                .map(|zoned| zoned.timestamp().to_zoned(zone.zone.clone()).datetime())
                .map_err(|error| EventInputError::Invalid(error.to_string()))?;
            data.start = start;
            data.end = end_in_start_zone;
            data.zone = zone;
        }
        (Some((start, zone)), None) => {
            let length = data.start.until(data.end).unwrap_or_else(|_| 0.hours());
            data.start = start;
            data.end = start
                .checked_add(length)
                .map_err(|error| EventInputError::Invalid(error.to_string()))?;
            data.zone = zone;
        }
        (None, Some((end, end_zone))) => {
            data.end = localize(end, &end_zone.zone)
                .map(|zoned| {
                    zoned
                        .timestamp()
                        .to_zoned(data.zone.zone.clone())
                        .datetime()
                })
                .map_err(|error| EventInputError::Invalid(error.to_string()))?;
        }
        (None, None) => {}
    }
    if data.end < data.start {
        return Err(EventInputError::Invalid(
            "The end of the event must not be before its start.".to_string(),
        ));
    }
    if data.is_all_day
        && (data.start.time() != jiff::civil::Time::midnight()
            || data.end.time() != jiff::civil::Time::midnight()
            || data.end <= data.start)
    {
        return Err(EventInputError::Invalid(
            "An all-day event must start and end at midnight and last at least one day."
                .to_string(),
        ));
    }
    match object.get("recurrence") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(value) => {
            let spec: RecurrenceSpec = serde_json::from_value(value.clone())
                .map_err(|error| EventInputError::Invalid(format!("recurrence: {error}")))?;
            Ok(Some(Some(spec)))
        }
    }
}

/// Defaults for an event created by POST in a mailbox.
pub fn default_event_data(organizer: EmailAddress, zone: NamedZone, now: Timestamp) -> EventData {
    let start = now.to_zoned(zone.zone.clone()).datetime();
    EventData {
        subject: String::new(),
        body_html: String::new(),
        location: String::new(),
        show_as: ShowAs::Busy,
        sensitivity: Sensitivity::Normal,
        importance: "normal".to_string(),
        is_all_day: false,
        is_cancelled: false,
        is_online_meeting: false,
        categories: vec![],
        start,
        end: start,
        zone,
        organizer,
        attendees: vec![],
    }
}

/// Creates an event in the mailbox from Graph JSON.
pub fn create_event(
    mailbox: &mut Mailbox,
    organizer: EmailAddress,
    mailbox_zone: NamedZone,
    body: &Value,
    now: Timestamp,
    ids: &RandomIds,
) -> Result<(Instance, ChangeRecord), EventInputError> {
    if body.get("start").is_none() || body.get("end").is_none() {
        return Err(EventInputError::Invalid(
            "An event needs both start and end.".to_string(),
        ));
    }
    let mut data = default_event_data(organizer, mailbox_zone, now);
    let recurrence_spec = apply_event_json(&mut data, body)?.flatten();
    let recurrence = recurrence_spec
        .map(|spec| Recurrence::from_spec(&spec, data.start.date(), &data.zone.name))
        .transpose()
        .map_err(|error| EventInputError::Invalid(error.to_string()))?;
    let event = StoredEvent {
        id: ids.item_id(),
        ical_uid: format!(
            "040000008200E00074C5B7101A82E008{}",
            ids.token(24).to_ascii_uppercase().replace(['-', '_'], "0")
        ),
        created: now,
        last_modified: now,
        change_key: ids.change_key(),
        data,
        recurrence,
        exceptions: BTreeMap::new(),
    };
    let change = ChangeRecord {
        change_type: ChangeType::Created,
        event_id: event.id.clone(),
        change_key: event.change_key.clone(),
    };
    let item = event.as_item().ok_or_else(|| {
        EventInputError::Invalid("The event's times are out of range.".to_string())
    })?;
    mailbox.events.push(event);
    Ok((item, change))
}

/// Applies a PATCH to an event or to one occurrence (which turns it into an exception).
pub fn update_event(
    mailbox: &mut Mailbox,
    id: &str,
    body: &Value,
    now: Timestamp,
    ids: &RandomIds,
) -> Result<(Instance, ChangeRecord), EventInputError> {
    if let Some(index) = mailbox.find(id) {
        let event = &mut mailbox.events[index];
        let mut data = event.data.clone();
        let recurrence_change = apply_event_json(&mut data, body)?;
        if let Some(spec) = recurrence_change {
            event.recurrence = spec
                .map(|spec| Recurrence::from_spec(&spec, data.start.date(), &data.zone.name))
                .transpose()
                .map_err(|error| EventInputError::Invalid(error.to_string()))?;
            event.exceptions.clear();
        }
        event.data = data;
        event.last_modified = now;
        event.change_key = ids.change_key();
        let change = ChangeRecord {
            change_type: ChangeType::Updated,
            event_id: event.id.clone(),
            change_key: event.change_key.clone(),
        };
        let item = event.as_item().ok_or(EventInputError::NotFound)?;
        return Ok((item, change));
    }
    let (master_id, original_start) = parse_occurrence_id(id).ok_or(EventInputError::NotFound)?;
    let index = mailbox.find(master_id).ok_or(EventInputError::NotFound)?;
    let event = &mut mailbox.events[index];
    let current = event
        .occurrence(original_start)
        .ok_or(EventInputError::NotFound)?;
    let mut data = current.data.clone();
    if body.get("recurrence").is_some() {
        return Err(EventInputError::Invalid(
            "An occurrence cannot have its own recurrence.".to_string(),
        ));
    }
    apply_event_json(&mut data, body)?;
    let change_key = ids.change_key();
    event.exceptions.insert(
        original_start,
        Exception::Modified {
            data: Box::new(data),
            change_key: change_key.clone(),
            last_modified: now,
        },
    );
    event.last_modified = now;
    let change = ChangeRecord {
        change_type: ChangeType::Updated,
        event_id: event.id.clone(),
        change_key,
    };
    let item = event
        .occurrence(original_start)
        .ok_or(EventInputError::NotFound)?;
    Ok((item, change))
}

/// Deletes an event (a whole series for a master id) or a single occurrence.
pub fn delete_event(
    mailbox: &mut Mailbox,
    id: &str,
    now: Timestamp,
    ids: &RandomIds,
) -> Result<ChangeRecord, EventInputError> {
    if let Some(index) = mailbox.find(id) {
        let event = mailbox.events.remove(index);
        return Ok(ChangeRecord {
            change_type: ChangeType::Deleted,
            event_id: event.id,
            change_key: event.change_key,
        });
    }
    let (master_id, original_start) = parse_occurrence_id(id).ok_or(EventInputError::NotFound)?;
    let index = mailbox.find(master_id).ok_or(EventInputError::NotFound)?;
    let event = &mut mailbox.events[index];
    event
        .occurrence(original_start)
        .ok_or(EventInputError::NotFound)?;
    event.exceptions.insert(original_start, Exception::Deleted);
    event.last_modified = now;
    event.change_key = ids.change_key();
    Ok(ChangeRecord {
        change_type: ChangeType::Updated,
        event_id: event.id.clone(),
        change_key: event.change_key.clone(),
    })
}

/// Declines the meeting `event_id` (an event, a series master or one occurrence) in the calendar
/// of `mailbox` (a user index), as Graph's `event: decline` and EWS's `DeclineItem` do:
///
/// - the meeting leaves the declining mailbox's calendar (a declined occurrence leaves it
///   alone), which is what Exchange does with a declined meeting and what a room's Resource
///   Booking Attendant leaves after a decline;
/// - the organizer's copy (the event in the organizer's calendar with the same iCalUId) records
///   the declining attendee's answer, `declined` at `now` (Graph's `attendees[].status`, EWS's
///   `ResponseType` `Decline`), for the whole series or for the one occurrence.
///
/// Both changes reach change notifications, delta and EWS streaming as any other write does.
/// `comment` is the text of the response message to the organizer; the emulator keeps no mail,
/// so it is only logged. The organizer cannot decline their own meeting ("A user cannot decline
/// a meeting request or calendar item for which the user is the organizer", DeclineItemType).
pub fn decline_event(
    state: &crate::state::AppState,
    mailbox: usize,
    event_id: &str,
    comment: &str,
    now: Timestamp,
) -> Result<(), EventInputError> {
    let directory = &state.directory;
    let (instance, removed) = {
        let mut calendar = crate::faults::lock(&state.mailboxes[mailbox]);
        let instance = calendar.item(event_id).ok_or(EventInputError::NotFound)?;
        if directory.user(&instance.data.organizer.address) == Some(mailbox) {
            return Err(EventInputError::Invalid(
                "Your request can't be completed. You can't respond to a meeting you organized."
                    .to_string(),
            ));
        }
        let removed = delete_event(&mut calendar, event_id, now, &state.ids)?;
        (instance, removed)
    };
    crate::graph::subscriptions::notify_change(state, mailbox, &removed);
    tracing::debug!(
        mailbox = %state.mailbox_name(mailbox),
        comment_chars = comment.chars().count(),
        "meeting declined"
    );
    let Some(organizer) = directory
        .user(&instance.data.organizer.address)
        .filter(|&index| index < state.mailboxes.len())
    else {
        // An organizer outside the organisation: the answer went out as mail only.
        return Ok(());
    };
    let is_declining =
        |attendee: &Attendee| directory.user(&attendee.email.address) == Some(mailbox);
    let mark = |data: &mut EventData| {
        let mut marked = false;
        for attendee in data
            .attendees
            .iter_mut()
            .filter(|attendee| is_declining(attendee))
        {
            attendee.response = AttendeeResponse::Declined { at: now };
            marked = true;
        }
        marked
    };
    let change = {
        let mut calendar = crate::faults::lock(&state.mailboxes[organizer]);
        let Some(event) = calendar.events.iter_mut().find(|event| {
            event.ical_uid == instance.ical_uid
                && directory.user(&event.data.organizer.address) == Some(organizer)
        }) else {
            return Ok(());
        };
        let original_start = match instance.kind {
            InstanceKind::Occurrence | InstanceKind::Exception => {
                parse_occurrence_id(&instance.id).map(|(_, start)| start)
            }
            InstanceKind::SingleInstance | InstanceKind::SeriesMaster => None,
        };
        let change_key = state.ids.change_key();
        let marked = match original_start {
            Some(original_start) => match event.occurrence(original_start) {
                Some(occurrence) => {
                    let mut data = occurrence.data;
                    let marked = mark(&mut data);
                    if marked {
                        event.exceptions.insert(
                            original_start,
                            Exception::Modified {
                                data: Box::new(data),
                                change_key: change_key.clone(),
                                last_modified: now,
                            },
                        );
                    }
                    marked
                }
                None => false,
            },
            None => {
                let mut marked = mark(&mut event.data);
                for exception in event.exceptions.values_mut() {
                    if let Exception::Modified {
                        data,
                        change_key: exception_key,
                        last_modified,
                    } = exception
                    {
                        if mark(data) {
                            *exception_key = change_key.clone();
                            *last_modified = now;
                            marked = true;
                        }
                    }
                }
                if marked {
                    event.change_key = change_key.clone();
                }
                marked
            }
        };
        if !marked {
            return Ok(());
        }
        event.last_modified = now;
        ChangeRecord {
            change_type: ChangeType::Updated,
            event_id: event.id.clone(),
            change_key,
        }
    };
    crate::graph::subscriptions::notify_change(state, organizer, &change);
    Ok(())
}

/// Renders an instance as Graph's event JSON with start/end in `output_zone`.
///
/// `select` limits the properties (`id` and `@odata.etag` are always there, as in Graph).
pub fn event_json(
    instance: &Instance,
    mailbox_address: &str,
    output_zone: &NamedZone,
    select: Option<&[String]>,
) -> Value {
    let data = &instance.data;
    let (start_local, end_local) = if data.is_all_day {
        // All-day events are floating dates: they come back at midnight in whatever zone
        // the caller asked for, not shifted by the zone difference.
        (data.start, data.end)
    } else {
        (
            instance
                .start
                .timestamp()
                .to_zoned(output_zone.zone.clone())
                .datetime(),
            instance
                .end
                .timestamp()
                .to_zoned(output_zone.zone.clone())
                .datetime(),
        )
    };
    let is_organizer = data.organizer.address.eq_ignore_ascii_case(mailbox_address);
    let body_preview: String = strip_tags(&data.body_html).chars().take(255).collect();
    let attendees: Vec<Value> = data
        .attendees
        .iter()
        .map(|attendee| {
            json!({
                "type": attendee.kind,
                "status": {
                    "response": attendee.response.graph_name(),
                    "time": attendee.response.time().map_or_else(
                        || "0001-01-01T00:00:00Z".to_string(),
                        graph_instant,
                    ),
                },
                "emailAddress": {"name": attendee.email.name, "address": attendee.email.address},
            })
        })
        .collect();
    let mut object = Map::new();
    object.insert(
        "@odata.etag".to_string(),
        json!(format!("W/\"{}\"", instance.change_key)),
    );
    object.insert("id".to_string(), json!(instance.id));
    let mut all = vec![
        ("createdDateTime", json!(graph_instant(instance.created))),
        (
            "lastModifiedDateTime",
            json!(graph_instant(instance.last_modified)),
        ),
        ("changeKey", json!(instance.change_key)),
        ("categories", json!(data.categories)),
        ("transactionId", Value::Null),
        ("originalStartTimeZone", json!(data.zone.name)),
        ("originalEndTimeZone", json!(data.zone.name)),
        ("iCalUId", json!(instance.ical_uid)),
        (
            "reminderMinutesBeforeStart",
            json!(if data.is_all_day { 1080 } else { 15 }),
        ),
        ("isReminderOn", json!(!data.is_all_day)),
        ("hasAttachments", json!(false)),
        ("subject", json!(data.subject)),
        ("bodyPreview", json!(body_preview)),
        ("importance", json!(data.importance)),
        ("sensitivity", json!(data.sensitivity.name())),
        ("isAllDay", json!(data.is_all_day)),
        ("isCancelled", json!(data.is_cancelled)),
        ("isOrganizer", json!(is_organizer)),
        ("responseRequested", json!(true)),
        ("seriesMasterId", json!(instance.series_master_id)),
        ("showAs", json!(data.show_as.name())),
        ("type", json!(instance.kind.name())),
        (
            "webLink",
            json!(format!(
                "https://outlook.office365.com/owa/?itemid={}&exvsurl=1&path=/calendar/item",
                instance.id
            )),
        ),
        ("onlineMeetingUrl", Value::Null),
        ("isOnlineMeeting", json!(data.is_online_meeting)),
        (
            "onlineMeetingProvider",
            json!(if data.is_online_meeting {
                "teamsForBusiness"
            } else {
                "unknown"
            }),
        ),
        ("allowNewTimeProposals", json!(true)),
        ("isDraft", json!(false)),
        ("hideAttendees", json!(false)),
        (
            "responseStatus",
            json!({"response": if is_organizer { "organizer" } else { "accepted" }, "time": "0001-01-01T00:00:00Z"}),
        ),
        (
            "body",
            json!({"contentType": "html", "content": data.body_html}),
        ),
        (
            "start",
            json!({"dateTime": graph_local(start_local), "timeZone": output_zone.name}),
        ),
        (
            "end",
            json!({"dateTime": graph_local(end_local), "timeZone": output_zone.name}),
        ),
        (
            "location",
            json!({"displayName": data.location, "locationType": "default", "uniqueIdType": "unknown", "address": {}, "coordinates": {}}),
        ),
        (
            "locations",
            if data.location.is_empty() {
                json!([])
            } else {
                json!([{"displayName": data.location, "locationType": "default", "uniqueIdType": "unknown", "address": {}, "coordinates": {}}])
            },
        ),
        (
            "recurrence",
            instance
                .recurrence
                .as_ref()
                .map(Recurrence::to_json)
                .unwrap_or(Value::Null),
        ),
        ("attendees", json!(attendees)),
        (
            "organizer",
            json!({"emailAddress": {"name": data.organizer.name, "address": data.organizer.address}}),
        ),
        ("onlineMeeting", Value::Null),
    ];
    for (name, value) in all.drain(..) {
        let wanted = match select {
            None => true,
            Some(names) => names
                .iter()
                .any(|selected| selected.eq_ignore_ascii_case(name)),
        };
        if wanted {
            object.insert(name.to_string(), value);
        }
    }
    Value::Object(object)
}

fn strip_tags(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for character in html.chars() {
        match character {
            '<' => in_tag = true,
            '>' => in_tag = false,
            other if !in_tag => text.push(other),
            _ => {}
        }
    }
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> NamedZone {
        resolve_zone("W. Europe Standard Time").unwrap_or_else(|_| NamedZone::utc())
    }

    fn organizer() -> EmailAddress {
        EmailAddress {
            name: "Ada".to_string(),
            address: "ada@contoso.example".to_string(),
        }
    }

    fn timestamp(text: &str) -> Timestamp {
        text.parse().unwrap_or_default()
    }

    #[test]
    fn daily_series_keeps_local_time_across_the_dst_change() {
        let mut mailbox = Mailbox::default();
        let body = json!({
            "subject": "Stand-up",
            "start": {"dateTime": "2026-03-27T09:00:00", "timeZone": "W. Europe Standard Time"},
            "end": {"dateTime": "2026-03-27T09:15:00", "timeZone": "W. Europe Standard Time"},
            "recurrence": {"pattern": {"type": "daily", "interval": 1}, "range": {"type": "numbered", "numberOfOccurrences": 4}}
        });
        let created = create_event(
            &mut mailbox,
            organizer(),
            berlin(),
            &body,
            timestamp("2026-03-01T00:00:00Z"),
            &RandomIds::default(),
        );
        assert!(created.is_ok());
        let view = mailbox.view(
            timestamp("2026-03-26T00:00:00Z"),
            timestamp("2026-04-05T00:00:00Z"),
        );
        let starts: Vec<String> = view
            .iter()
            .map(|instance| instance.start.timestamp().to_string())
            .collect();
        // 2026-03-29 is the spring-forward day in Europe: 09:00 local moves from 08:00Z to 07:00Z.
        assert_eq!(
            starts,
            vec![
                "2026-03-27T08:00:00Z",
                "2026-03-28T08:00:00Z",
                "2026-03-29T07:00:00Z",
                "2026-03-30T07:00:00Z"
            ]
        );
        assert!(view
            .iter()
            .all(|instance| instance.kind == InstanceKind::Occurrence));
    }

    #[test]
    fn deleting_and_moving_occurrences_changes_the_view() {
        let mut mailbox = Mailbox::default();
        let ids = RandomIds::default();
        let body = json!({
            "subject": "Weekly",
            "start": {"dateTime": "2026-05-04T10:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-05-04T11:00:00", "timeZone": "UTC"},
            "recurrence": {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]}, "range": {"type": "noEnd"}}
        });
        let now = timestamp("2026-05-01T00:00:00Z");
        let Ok((master, _)) = create_event(
            &mut mailbox,
            organizer(),
            NamedZone::utc(),
            &body,
            now,
            &ids,
        ) else {
            panic!("create failed");
        };
        let window = (
            timestamp("2026-05-01T00:00:00Z"),
            timestamp("2026-05-31T00:00:00Z"),
        );
        let view = mailbox.view(window.0, window.1);
        assert_eq!(view.len(), 4);
        let second = view[1].id.clone();
        let third = view[2].id.clone();
        assert!(delete_event(&mut mailbox, &second, now, &ids).is_ok());
        let moved = json!({"subject": "Weekly (moved)", "start": {"dateTime": "2026-05-19T15:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2026-05-19T16:00:00", "timeZone": "UTC"}});
        assert!(update_event(&mut mailbox, &third, &moved, now, &ids).is_ok());
        let view = mailbox.view(window.0, window.1);
        let summary: Vec<(String, &str)> = view
            .iter()
            .map(|instance| (instance.start.timestamp().to_string(), instance.kind.name()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("2026-05-04T10:00:00Z".to_string(), "occurrence"),
                ("2026-05-19T15:00:00Z".to_string(), "exception"),
                ("2026-05-25T10:00:00Z".to_string(), "occurrence"),
            ]
        );
        assert!(view
            .iter()
            .all(|instance| instance.series_master_id.as_deref() == Some(master.id.as_str())));
    }

    #[test]
    fn event_json_uses_graph_date_format_and_requested_zone() {
        let mut mailbox = Mailbox::default();
        let body = json!({
            "subject": "Review",
            "start": {"dateTime": "2026-11-23T09:00:00", "timeZone": "W. Europe Standard Time"},
            "end": {"dateTime": "2026-11-23T10:00:00", "timeZone": "W. Europe Standard Time"}
        });
        let Ok((item, _)) = create_event(
            &mut mailbox,
            organizer(),
            berlin(),
            &body,
            timestamp("2026-11-01T00:00:00Z"),
            &RandomIds::default(),
        ) else {
            panic!("create failed");
        };
        let in_utc = event_json(&item, "ada@contoso.example", &NamedZone::utc(), None);
        assert_eq!(
            in_utc["start"],
            json!({"dateTime": "2026-11-23T08:00:00.0000000", "timeZone": "UTC"})
        );
        assert_eq!(in_utc["type"], json!("singleInstance"));
        assert_eq!(in_utc["isOrganizer"], json!(true));
        let selected = event_json(
            &item,
            "ada@contoso.example",
            &berlin(),
            Some(&["subject".to_string(), "start".to_string()]),
        );
        let keys: Vec<&String> = selected
            .as_object()
            .map(|object| object.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_eq!(
            selected["start"]["dateTime"],
            json!("2026-11-23T09:00:00.0000000")
        );
    }
}
