//! Room mailboxes answering meeting requests: what Exchange's Calendar Attendant and Resource
//! Booking Attendant do when a meeting names a room, as `Set-CalendarProcessing` documents it
//! (https://learn.microsoft.com/powershell/module/exchange/set-calendarprocessing):
//!
//! - `AutomateProcessing AutoAccept` (the default of room mailboxes): the room accepts a request
//!   that does not conflict with its calendar (`AllowConflicts $false`, `MaximumConflictInstances
//!   0`: one conflicting occurrence declines a series) and declines one that does; `AutoUpdate`:
//!   the request is added as tentative (`AddNewRequestsTentatively $true`) and nobody answers;
//!   `None`: the calendar is not touched.
//! - The room's copy of an accepted request is what calendar processing leaves of it:
//!   `DeleteSubject` removes the subject, `AddOrganizerToSubject` puts the organizer's name in
//!   its place ("replaces any existing Subject value"), `DeleteComments` removes the body and
//!   `RemovePrivateProperty` clears the private flag. All four are `$true` by default, so a room
//!   calendar shows "Ada Lovelace" where the organizer wrote "Quarterly planning".
//! - The organizer's copy records the room's answer (`attendees[].status`).
//!
//! The organizer's later writes reach the room as Exchange's updates and cancellations do: a
//! change replaces the room's copy (processed again), and deleting the meeting in the
//! organizer's calendar (Graph: "deleting the event on the organizer's calendar sends a
//! cancellation message to the meeting attendees", https://learn.microsoft.com/graph/api/event-delete)
//! leaves the room's copy cancelled (`RemoveCanceledMeetings $false`, the default).
//!
//! Exchange answers requests asynchronously, a few seconds after they are sent; the emulator
//! answers at once, before the organizer's `POST` returns its (unanswered) event.

use jiff::{SignedDuration, Timestamp};

use crate::calendar::{
    AttendeeResponse, ChangeRecord, ChangeType, EventData, Exception, Mailbox, Sensitivity, ShowAs,
    StoredEvent,
};
use crate::directory::{AutomateProcessing, CalendarProcessing, MailboxKind};
use crate::faults::lock;
use crate::state::AppState;

/// How far ahead a room checks a request against its calendar: `BookingWindowInDays`' default.
const BOOKING_WINDOW: SignedDuration = SignedDuration::from_hours(180 * 24);

/// What calendar processing leaves of one request's (or one occurrence's) data in the room.
fn processed(data: &EventData, processing: &CalendarProcessing) -> EventData {
    let mut data = data.clone();
    if processing.delete_subject {
        data.subject = String::new();
    }
    if processing.add_organizer_to_subject {
        data.subject = data.organizer.name.clone();
    }
    if processing.delete_comments {
        data.body_html = String::new();
    }
    if processing.remove_private_property && data.sensitivity == Sensitivity::Private {
        data.sensitivity = Sensitivity::Normal;
    }
    if processing.automate_processing == AutomateProcessing::AutoUpdate {
        data.show_as = ShowAs::Tentative;
    }
    data
}

/// The room's copy of `request` (with the room's own `id`), or `None` when calendar processing
/// is off (`AutomateProcessing None`: the request waits in the inbox).
pub fn room_copy(
    request: &StoredEvent,
    processing: &CalendarProcessing,
    id: String,
) -> Option<StoredEvent> {
    if processing.automate_processing == AutomateProcessing::None {
        return None;
    }
    let mut copy = request.clone();
    copy.id = id;
    copy.data = processed(&request.data, processing);
    for exception in copy.exceptions.values_mut() {
        if let Exception::Modified { data, .. } = exception {
            **data = processed(data, processing);
        }
    }
    Some(copy)
}

/// The answer the organizer's copy records for a room that processed a request.
pub fn room_answer(processing: &CalendarProcessing, at: Timestamp) -> AttendeeResponse {
    match processing.automate_processing {
        AutomateProcessing::AutoAccept => AttendeeResponse::Accepted { at },
        AutomateProcessing::AutoUpdate | AutomateProcessing::None => AttendeeResponse::None,
    }
}

/// Whether an occurrence of `request` in the booking window overlaps something that holds the
/// room (not cancelled, not free, not this meeting). The window starts at `now` or at the
/// request's start, whichever is later: the emulator does not refuse requests beyond
/// `BookingWindowInDays` (a known deviation, so that scenarios may book far ahead).
fn conflicts(room: &Mailbox, request: &StoredEvent, now: Timestamp) -> bool {
    let from = request
        .as_item()
        .map_or(now, |first| first.start.timestamp().max(now));
    let mut wanted = Vec::new();
    request.instances_between(from, from + BOOKING_WINDOW, &mut wanted);
    wanted
        .iter()
        .filter(|instance| !instance.data.is_cancelled)
        .any(|instance| {
            room.view(instance.start.timestamp(), instance.end.timestamp())
                .iter()
                .any(|held| {
                    held.ical_uid != request.ical_uid
                        && !held.data.is_cancelled
                        && held.data.show_as != ShowAs::Free
                })
        })
}

/// After the organizer (`organizer`, a user index) wrote the meeting `ical_uid` through Graph:
/// every room among its attendees processes it (books, updates or cancels its copy), and the
/// organizer's copy records the answers. A meeting no longer in the organizer's calendar was
/// deleted by them (the caller checks the organizer before deleting) and is cancelled; a write
/// to an attendee's copy changes nothing for the rooms. Every change reaches notifications, delta and EWS
/// streaming. Locks one mailbox at a time.
pub fn sync_room_copies(state: &AppState, organizer: usize, ical_uid: &str) {
    let now = state.clock.now();
    let directory = &state.directory;
    let request = {
        let calendar = lock(&state.mailboxes[organizer]);
        calendar
            .events
            .iter()
            .find(|event| event.ical_uid == ical_uid)
            .cloned()
    };
    // An attendee's own copy: only the organizer's writes reach the rooms.
    if request
        .as_ref()
        .is_some_and(|event| directory.user(&event.data.organizer.address) != Some(organizer))
    {
        return;
    }
    let tenant = directory.users[organizer].tenant_index;
    let rooms: Vec<usize> = match &request {
        Some(request) => {
            let mut rooms: Vec<usize> = request
                .data
                .attendees
                .iter()
                .filter_map(|attendee| directory.user(&attendee.email.address))
                .filter(|&index| {
                    let user = &directory.users[index];
                    index != organizer
                        && index < state.mailboxes.len()
                        && user.kind == MailboxKind::Room
                        && user.tenant_index == tenant
                })
                .collect();
            rooms.sort_unstable();
            rooms.dedup();
            rooms
        }
        // Deleted: every room of the tenant that holds a copy gets the cancellation.
        None => (0..state.mailboxes.len().min(directory.users.len()))
            .filter(|&index| {
                directory.users[index].kind == MailboxKind::Room
                    && directory.users[index].tenant_index == tenant
            })
            .collect(),
    };
    let mut answers: Vec<(usize, AttendeeResponse)> = Vec::new();
    for room in rooms {
        let processing = directory.users[room].calendar_processing;
        let change = {
            let mut calendar = lock(&state.mailboxes[room]);
            let held = calendar
                .events
                .iter()
                .position(|event| event.ical_uid == ical_uid);
            match (&request, held) {
                // Cancelled by the organizer: the copy stays, cancelled.
                (None, Some(index)) => {
                    let copy = &mut calendar.events[index];
                    if copy.data.is_cancelled {
                        continue;
                    }
                    copy.data.is_cancelled = true;
                    copy.data.subject = format!("Canceled: {}", copy.data.subject);
                    copy.last_modified = now;
                    copy.change_key = state.ids.change_key();
                    Some(ChangeRecord {
                        change_type: ChangeType::Updated,
                        event_id: copy.id.clone(),
                        change_key: copy.change_key.clone(),
                    })
                }
                (None, None) => None,
                (Some(request), Some(index)) => {
                    let id = calendar.events[index].id.clone();
                    room_copy(request, &processing, id).map(|mut copy| {
                        copy.created = calendar.events[index].created;
                        copy.last_modified = now;
                        copy.change_key = state.ids.change_key();
                        let change = ChangeRecord {
                            change_type: ChangeType::Updated,
                            event_id: copy.id.clone(),
                            change_key: copy.change_key.clone(),
                        };
                        calendar.events[index] = copy;
                        change
                    })
                }
                (Some(request), None) => {
                    let accepting =
                        processing.automate_processing == AutomateProcessing::AutoAccept;
                    if accepting
                        && !processing.allow_conflicts
                        && conflicts(&calendar, request, now)
                    {
                        answers.push((room, AttendeeResponse::Declined { at: now }));
                        None
                    } else {
                        room_copy(request, &processing, state.ids.item_id()).map(|mut copy| {
                            copy.created = now;
                            copy.last_modified = now;
                            copy.change_key = state.ids.change_key();
                            answers.push((room, room_answer(&processing, now)));
                            let change = ChangeRecord {
                                change_type: ChangeType::Created,
                                event_id: copy.id.clone(),
                                change_key: copy.change_key.clone(),
                            };
                            calendar.events.push(copy);
                            change
                        })
                    }
                }
            }
        };
        if let Some(change) = change {
            crate::graph::subscriptions::notify_change(state, room, &change);
        }
    }
    let answers: Vec<(usize, AttendeeResponse)> = answers
        .into_iter()
        .filter(|(_, answer)| *answer != AttendeeResponse::None)
        .collect();
    if answers.is_empty() {
        return;
    }
    let change = {
        let mut calendar = lock(&state.mailboxes[organizer]);
        let Some(event) = calendar.events.iter_mut().find(|event| {
            event.ical_uid == ical_uid
                && directory.user(&event.data.organizer.address) == Some(organizer)
        }) else {
            return;
        };
        for attendee in &mut event.data.attendees {
            if let Some((_, answer)) = answers
                .iter()
                .find(|(room, _)| directory.user(&attendee.email.address) == Some(*room))
            {
                attendee.response = *answer;
            }
        }
        event.last_modified = now;
        event.change_key = state.ids.change_key();
        ChangeRecord {
            change_type: ChangeType::Updated,
            event_id: event.id.clone(),
            change_key: event.change_key.clone(),
        }
    };
    crate::graph::subscriptions::notify_change(state, organizer, &change);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{default_event_data, EmailAddress};
    use crate::timefmt::resolve_zone;
    use std::collections::BTreeMap;

    fn request(subject: &str, sensitivity: Sensitivity) -> StoredEvent {
        let zone = resolve_zone("UTC").expect("UTC");
        let now: Timestamp = "2026-12-03T09:00:00Z".parse().expect("an instant");
        let mut data = default_event_data(
            EmailAddress {
                name: "Ada Lovelace".to_string(),
                address: "ada@contoso.example".to_string(),
            },
            zone,
            now,
        );
        data.subject = subject.to_string();
        data.body_html = "<p>Agenda: budgets</p>".to_string();
        data.sensitivity = sensitivity;
        StoredEvent {
            id: "organizer-copy".to_string(),
            ical_uid: "uid-1".to_string(),
            created: now,
            last_modified: now,
            change_key: "ck".to_string(),
            data,
            recurrence: None,
            exceptions: BTreeMap::new(),
        }
    }

    #[test]
    fn exchange_defaults_replace_the_subject_with_the_organizer_and_clear_private() {
        let copy = room_copy(
            &request("Quarterly planning", Sensitivity::Private),
            &CalendarProcessing::default(),
            "room-copy".to_string(),
        )
        .expect("auto-accept books");
        assert_eq!(copy.id, "room-copy");
        assert_eq!(copy.ical_uid, "uid-1");
        assert_eq!(copy.data.subject, "Ada Lovelace");
        assert_eq!(copy.data.body_html, "");
        assert_eq!(copy.data.sensitivity, Sensitivity::Normal);
    }

    #[test]
    fn each_setting_keeps_what_it_is_told_to_keep() {
        let keep_all = CalendarProcessing {
            delete_subject: false,
            add_organizer_to_subject: false,
            delete_comments: false,
            remove_private_property: false,
            ..CalendarProcessing::default()
        };
        let copy = room_copy(
            &request("Quarterly planning", Sensitivity::Private),
            &keep_all,
            "c".to_string(),
        )
        .expect("books");
        assert_eq!(copy.data.subject, "Quarterly planning");
        assert_eq!(copy.data.body_html, "<p>Agenda: budgets</p>");
        assert_eq!(copy.data.sensitivity, Sensitivity::Private);
        // DeleteSubject alone leaves no subject at all.
        let delete_only = CalendarProcessing {
            add_organizer_to_subject: false,
            ..CalendarProcessing::default()
        };
        let copy = room_copy(
            &request("Quarterly planning", Sensitivity::Normal),
            &delete_only,
            "c".to_string(),
        )
        .expect("books");
        assert_eq!(copy.data.subject, "");
        // Confidential is not the private flag.
        let copy = room_copy(
            &request("x", Sensitivity::Confidential),
            &CalendarProcessing::default(),
            "c".to_string(),
        )
        .expect("books");
        assert_eq!(copy.data.sensitivity, Sensitivity::Confidential);
    }

    #[test]
    fn auto_update_books_tentatively_without_an_answer_and_none_books_nothing() {
        let now: Timestamp = "2026-12-03T09:00:00Z".parse().expect("an instant");
        let update = CalendarProcessing {
            automate_processing: AutomateProcessing::AutoUpdate,
            ..CalendarProcessing::default()
        };
        let copy =
            room_copy(&request("x", Sensitivity::Normal), &update, "c".to_string()).expect("books");
        assert_eq!(copy.data.show_as, ShowAs::Tentative);
        assert_eq!(room_answer(&update, now), AttendeeResponse::None);
        let off = CalendarProcessing {
            automate_processing: AutomateProcessing::None,
            ..CalendarProcessing::default()
        };
        assert!(room_copy(&request("x", Sensitivity::Normal), &off, "c".to_string()).is_none());
        assert_eq!(
            room_answer(&CalendarProcessing::default(), now),
            AttendeeResponse::Accepted { at: now }
        );
    }
}
