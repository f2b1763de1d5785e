//! Property-based fuzzing of the Graph JSON this crate reads from outside: event and delta
//! pages, change notifications (POSTed by anyone who finds the webhook), `$batch` answers,
//! error answers and the validation query. Each property takes arbitrary bytes or a mutated
//! sample; the parser must return a value or its typed error, never panic, and deep nesting
//! must be an error, not a stack overflow.
//!
//! The paging, subscription and user answers `source.rs` reads are fuzzed next to it
//! (`src/source/fuzz_tests.rs`), since their types are private.

#[path = "../../net/tests/support/mutate.rs"]
mod mutate;
#[path = "../../net/tests/support/mutate_json.rs"]
mod mutate_json;

use calbridge_domain::Secret;
use calbridge_sources_graph::batch::parse_batch_response;
use calbridge_sources_graph::{
    parse_event_page, parse_notifications, validation_response, GraphAnswer,
};
use mutate::{apply_bytes, byte_edits, config};
use mutate_json::{apply_json, deep_json, json_edits};
use proptest::prelude::*;

/// A `calendarView` page as Graph sends it (shape of Microsoft's documentation and the
/// emulator's answers): a Windows zone, an all-day event, a cancelled one, a delta removal.
const EVENT_PAGE: &str = r#"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#users('u')/calendarView","value":[
 {"id":"AAMk1","subject":"Weekly","showAs":"busy","sensitivity":"normal","isAllDay":false,"isCancelled":false,
  "start":{"dateTime":"2026-11-23T09:00:00.0000000","timeZone":"W. Europe Standard Time"},
  "end":{"dateTime":"2026-11-23T10:30:00.0000000","timeZone":"W. Europe Standard Time"},
  "organizer":{"emailAddress":{"name":"Ann","address":"Ann@Example.com"}}},
 {"id":"AAMk2","isAllDay":true,"showAs":"oof","sensitivity":"private",
  "start":{"dateTime":"2026-12-24T00:00:00.0000000","timeZone":"UTC"},
  "end":{"dateTime":"2026-12-27T00:00:00.0000000","timeZone":"UTC"}},
 {"id":"AAMk3","isCancelled":true,"showAs":"tentative",
  "start":{"dateTime":"2026-11-23T09:00:00Z"},"end":{"dateTime":"2026-11-23T10:00:00+01:00","timeZone":"Europe/Berlin"}},
 {"id":"gone","@removed":{"reason":"deleted"}}],
 "@odata.nextLink":"https://graph.microsoft.com/v1.0/users/u/calendarView?$skip=10"}"#;

/// A change notification as Graph POSTs it, with lifecycle notifications.
const NOTIFICATIONS: &str = r##"{"value":[
 {"subscriptionId":"7f105c7d-2dc5-4530-97cd-4e7ae6534c07","subscriptionExpirationDateTime":"2026-11-20T18:23:45.9356913Z",
  "changeType":"updated","resource":"Users/87d349ed-44d7-43e1-9a83-5f2406dee5bd/Events/AAMkADk=",
  "resourceData":{"@odata.type":"#Microsoft.Graph.Event","@odata.id":"Users/87d349ed/Events/AAMkADk=","id":"AAMkADk="},
  "clientState":"right","tenantId":"bb8775a4-4d8c-42cf-a1d4-4d58c2bb668f"},
 {"subscriptionId":"b","clientState":"right","changeType":"created","resource":"users('abc')/events('e')"},
 {"subscriptionId":"c","clientState":"right","lifecycleEvent":"reauthorizationRequired"},
 {"subscriptionId":"d","clientState":"guess","lifecycleEvent":"missed"}]}"##;

/// A `$batch` answer: sub-responses in any order, a throttled one with its own Retry-After.
const BATCH_ANSWER: &str = r#"{"responses":[
 {"id":"3","status":429,"headers":{"Retry-After":"5","Content-Type":"application/json"},
  "body":{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}},
 {"id":"1","status":200,"headers":{"Content-Type":"application/json;odata.metadata=minimal"},
  "body":{"@odata.context":"x","value":[{"id":"e","start":{"dateTime":"2026-11-23T09:00:00"},"end":{"dateTime":"2026-11-23T10:00:00"}}]}},
 {"id":"2","status":204,"headers":{"retry-after":7}}]}"#;

const ERROR_ANSWER: &str = r#"{"error":{"code":"ErrorAccessDenied","message":"Access to OData is disabled.","innerError":{"request-id":"9b0c2c3e-1111","date":"2026-11-23T08:00:00"}}}"#;

/// Runs every public Graph parser on one input; none may panic.
fn parse_everything(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Err(error) = parse_event_page(&text) {
        // The error names an event and a field, in a line an operator can read.
        assert!(!error.event.is_empty());
        // It quotes what Graph sent, shortened: it ends up in a log line.
        let message = error.to_string();
        assert!(message.chars().count() <= 800, "{}", message.len());
    }
    let _ = parse_notifications(bytes, &Secret::new("right"));
    let _ = parse_batch_response(bytes);
    let answer = GraphAnswer::from_body(502, bytes);
    // What an error answer says goes into errors and logs: shortened, never whole.
    assert!(
        answer.message.chars().count() <= 301,
        "{}",
        answer.message.len()
    );
    assert!(answer.code.chars().count() <= 101, "{}", answer.code.len());
    assert!(
        answer
            .request_id
            .as_ref()
            .is_none_or(|id| id.chars().count() <= 101),
        "{:?}",
        answer.request_id.map(|id| id.len())
    );
    let _ = validation_response(&text);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_any_graph_parser(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        parse_everything(&bytes);
    }

    #[test]
    fn mutated_event_pages_parse_or_name_the_event_and_field(edits in json_edits(), bytes in byte_edits()) {
        let tree_edited = apply_json(EVENT_PAGE, &edits);
        parse_everything(tree_edited.as_bytes());
        parse_everything(&apply_bytes(tree_edited.as_bytes(), &bytes));
        parse_everything(&apply_bytes(EVENT_PAGE.as_bytes(), &bytes));
    }

    #[test]
    fn mutated_notifications_are_sorted_or_refused(edits in json_edits(), bytes in byte_edits()) {
        for body in [apply_json(NOTIFICATIONS, &edits).into_bytes(), apply_bytes(NOTIFICATIONS.as_bytes(), &bytes)] {
            if let Ok(parsed) = parse_notifications(&body, &Secret::new("right")) {
                // Whatever else changed, only entries with the right client state are accepted.
                // (A generic reading may refuse what the typed one skipped, e.g. a lone
                // surrogate escape in an ignored field; then there is nothing to compare.)
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    continue;
                };
                let n_right = value["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|entry| entry.get("clientState").and_then(|state| state.as_str()) == Some("right"))
                    .count();
                prop_assert!(parsed.accepted.len() <= n_right);
            }
            parse_everything(&body);
        }
    }

    #[test]
    fn mutated_batch_answers_and_errors_never_panic(edits in json_edits(), bytes in byte_edits()) {
        parse_everything(apply_json(BATCH_ANSWER, &edits).as_bytes());
        parse_everything(&apply_bytes(BATCH_ANSWER.as_bytes(), &bytes));
        parse_everything(apply_json(ERROR_ANSWER, &edits).as_bytes());
        parse_everything(&apply_bytes(ERROR_ANSWER.as_bytes(), &bytes));
    }

    #[test]
    fn validation_queries_decode_without_panicking(query in "[a-zA-Z=&%+0-9?]{0,64}", token in ".{0,64}") {
        let _ = validation_response(&query);
        let _ = validation_response(&format!("validationToken={token}"));
    }
}

#[test]
fn ten_thousand_deep_json_is_an_error_in_every_parser() {
    for object in [false, true] {
        let deep = deep_json(10_000, object);
        assert!(parse_event_page(&deep).is_err());
        assert!(parse_notifications(deep.as_bytes(), &Secret::new("right")).is_err());
        assert!(parse_batch_response(deep.as_bytes()).is_err());
        let answer = GraphAnswer::from_body(500, deep.as_bytes());
        assert!(answer.code.is_empty());
        // Deep inside an otherwise valid document too.
        let nested_event = format!(r#"{{"value":[{{"id":"x","subject":{deep}}}]}}"#);
        assert!(parse_event_page(&nested_event).is_err());
        let nested_notification = format!(
            r#"{{"value":[{{"subscriptionId":"a","clientState":"right","resourceData":{deep}}}]}}"#
        );
        // An ignored field is skipped without recursion: the entry is read, of an unknown kind.
        let parsed = parse_notifications(nested_notification.as_bytes(), &Secret::new("right"))
            .expect("the deep field is skipped");
        assert_eq!(parsed.unknown, 1);
        let nested_batch = format!(r#"{{"responses":[{{"id":"1","status":200,"body":{deep}}}]}}"#);
        assert!(parse_batch_response(nested_batch.as_bytes()).is_err());
    }
}
