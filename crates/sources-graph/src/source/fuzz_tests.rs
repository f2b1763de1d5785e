//! Property-based fuzzing of the answers `source.rs` reads with private types: calendar and
//! delta pages (`EventPage`, each event converted as a read converts it), paging and delta
//! links, subscriptions and users. Mutated samples must give a value or a typed error, never a
//! panic; and whatever link a page carries, a request only ever goes to the configured Graph
//! host, since it carries the bearer token.

#[path = "../../../net/tests/support/mutate.rs"]
mod mutate;
#[path = "../../../net/tests/support/mutate_json.rs"]
mod mutate_json;

use std::sync::Arc;

use mutate::{apply_bytes, byte_edits, config};
use mutate_json::{apply_json, deep_json, json_edits};
use proptest::prelude::*;

use super::*;

const DELTA_PAGE: &str = r##"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#Collection(event)","value":[
 {"@odata.type":"#microsoft.graph.event","@odata.etag":"W/\"DwAAABYAAAA\"","id":"AAMk1","subject":"Weekly","showAs":"busy",
  "sensitivity":"normal","isAllDay":false,"isCancelled":false,
  "start":{"dateTime":"2026-11-23T08:00:00.0000000","timeZone":"UTC"},"end":{"dateTime":"2026-11-23T09:30:00.0000000","timeZone":"UTC"},
  "organizer":{"emailAddress":{"name":"Ann","address":"ann@example.com"}}},
 {"id":"AAMk2","@removed":{"reason":"deleted"}},
 {"id":"AAMk1","isAllDay":true,"start":{"dateTime":"2026-12-24T00:00:00.0000000","timeZone":"UTC"},"end":{"dateTime":"2026-12-25T00:00:00.0000000","timeZone":"UTC"}}],
 "@odata.deltaLink":"https://graph.microsoft.com/v1.0/users/u/calendarView/delta?$deltatoken=R0usmcCM996atia_s"}"##;

const SUBSCRIPTION: &str = r#"{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity","id":"7f105c7d-2dc5-4530-97cd-4e7ae6534c07","resource":"/users/u/events","applicationId":"24d3b144","changeType":"created,updated,deleted","clientState":"x","notificationUrl":"https://calbridge.example/api/v1/graph/notifications","expirationDateTime":"2026-11-25T18:23:45.9356913Z","creatorId":"8ee44408"}"#;

const USER_PAGE: &str = r##"{"value":[{"@odata.type":"#microsoft.graph.user","id":"87d349ed","mail":"Ann@Example.com","userPrincipalName":"ann@example.onmicrosoft.com","displayName":"Ann"},
 {"@odata.type":"#microsoft.graph.group","id":"g1"},{"id":"u2","mail":null,"userPrincipalName":"bob@example.com"}],
 "@odata.nextLink":"https://graph.microsoft.com/v1.0/groups/g/members?$skiptoken=X"}"##;

fn source() -> GraphSource {
    let config = GraphSourceConfig::new(
        "bb8775a4-4d8c-42cf-a1d4-4d58c2bb668f",
        "24d3b144-21ae-4080-943f-7067b395b913",
        GraphCredential::ClientSecret(Secret::new("client-secret")),
    );
    GraphSource::new(&config, Arc::new(crate::clock::SystemClock)).expect("a source")
}

/// A followed link stays on the configured Graph host (and under its API root).
fn assert_link_stays_on_graph(source: &GraphSource, link: &str) {
    if let Ok(relative) = source.relative_link(link, "fuzz") {
        let absolute = source.absolute(&relative);
        assert!(
            absolute.starts_with("https://graph.microsoft.com/v1.0/"),
            "{absolute}"
        );
        if let Ok(url) = reqwest::Url::parse(&absolute) {
            assert_eq!(url.host_str(), Some("graph.microsoft.com"), "{link}");
            assert_eq!(url.port(), None, "{link}");
        }
    }
}

/// Reads `bytes` as every kind of answer `source.rs` reads, as its operations do.
fn read_everything(source: &GraphSource, bytes: &[u8]) {
    if let Ok(page) = serde_json::from_slice::<EventPage>(bytes) {
        for value in page.value {
            if value.get("@removed").is_some() {
                let _ = value.get("id").and_then(|id| id.as_str());
                continue;
            }
            if let Some(appointment) =
                source.convert_event(value.clone(), SubjectFetch::Skip, "fuzz")
            {
                // A hidden subject never leaves this crate.
                assert_eq!(appointment.subject, None);
            }
            let _ = source.convert_event(value, SubjectFetch::Fetch, "fuzz");
        }
        for link in page.next_link.iter().chain(page.delta_link.iter()) {
            assert_link_stays_on_graph(source, link);
        }
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let _ = parse_subscription(&value, "fuzz");
    }
    if let Ok(page) = serde_json::from_slice::<UserPage>(bytes) {
        for user in page.value {
            if let Ok(resolved) = user.resolve("fuzz") {
                assert!(!resolved.id.is_empty());
            }
        }
        if let Some(link) = page.next_link {
            assert_link_stays_on_graph(source, &link);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_delta_pages_subscriptions_and_users_never_panic(
        sample in 0usize..3,
        edits in json_edits(),
        bytes in byte_edits(),
    ) {
        let source = source();
        let sample = [DELTA_PAGE, SUBSCRIPTION, USER_PAGE][sample];
        let tree_edited = apply_json(sample, &edits);
        read_everything(&source, tree_edited.as_bytes());
        read_everything(&source, &apply_bytes(tree_edited.as_bytes(), &bytes));
        read_everything(&source, &apply_bytes(sample.as_bytes(), &bytes));
    }

    #[test]
    fn any_paging_link_only_ever_leads_to_the_configured_graph_host(
        prefix in prop_oneof![
            Just("https://graph.microsoft.com/v1.0"), Just("https://graph.microsoft.com/v1.0/"),
            Just("https://graph.microsoft.com/v1.0@evil.example/"), Just("https://graph.microsoft.com.evil.example/v1.0/"),
            Just("https://graph.microsoft.com:444/v1.0/"), Just("http://graph.microsoft.com/v1.0/"),
            Just(""), Just("//evil.example/"),
        ],
        rest in "[a-zA-Z0-9/.@:%?#=&\\\\-]{0,40}",
    ) {
        assert_link_stays_on_graph(&source(), &format!("{prefix}{rest}"));
    }
}

#[test]
fn ten_thousand_deep_pages_are_errors() {
    let source = source();
    for object in [false, true] {
        let deep = deep_json(10_000, object);
        if object {
            // `{"a":{"a":…}}` is one unknown key, skipped without recursion: an empty page.
            let page = serde_json::from_str::<EventPage>(&deep).expect("an unknown key");
            assert!(page.value.is_empty() && page.delta_link.is_none());
        } else {
            assert!(serde_json::from_str::<EventPage>(&deep).is_err());
            assert!(serde_json::from_str::<UserPage>(&deep).is_err());
        }
        let in_page = format!(r#"{{"value":[{deep}]}}"#);
        assert!(serde_json::from_str::<EventPage>(&in_page).is_err());
        read_everything(&source, in_page.as_bytes());
    }
}
