//! Microsoft Graph endpoints: users, groups, calendarView, events, delta, getSchedule,
//! $batch, subscriptions, access policies, throttling and the admin endpoint.

mod support;

use std::collections::BTreeMap;

use jiff::SignedDuration;
use m365_emulator::{EmulatorConfig, LifecycleEvent};
use serde_json::{json, Value};
use support::*;

const MARCH: &str = "startDateTime=2030-03-04T00:00:00Z&endDateTime=2030-04-15T00:00:00Z";

fn subjects(page: &Value) -> Vec<String> {
    page["value"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item["subject"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn users_are_found_by_upn_alias_and_filters_with_select_and_paging() {
    let harness = start().await;
    let token = harness.token().await;
    let by_upn = harness
        .get(&harness.graph("/users/ada%40contoso.example"), &token, &[])
        .await;
    assert_eq!(by_upn.status, 200);
    assert_eq!(by_upn.json()["id"], json!(ADA_ID));
    assert_eq!(by_upn.json()["displayName"], json!("Ada Lovelace"));
    assert!(
        by_upn.json().get("proxyAddresses").is_none(),
        "proxyAddresses only with $select"
    );
    let by_alias = harness
        .get(
            &harness.graph("/users/ada.l@contoso.example?$select=id,proxyAddresses"),
            &token,
            &[],
        )
        .await;
    assert_eq!(
        by_alias.json()["proxyAddresses"],
        json!(["SMTP:ada@contoso.example", "smtp:ada.l@contoso.example"])
    );
    let missing = harness
        .get(&harness.graph("/users/nobody@contoso.example"), &token, &[])
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json()["error"]["code"],
        json!("Request_ResourceNotFound")
    );

    let filter = encode(
        "proxyAddresses/any(x:x eq 'smtp:ada.l@contoso.example') or mail eq 'bob@contoso.example'",
    );
    let filtered = harness
        .get(
            &harness.graph(&format!("/users?$filter={filter}&$select=mail")),
            &token,
            &[],
        )
        .await;
    let mut mails: Vec<String> = filtered.json()["value"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item["mail"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    mails.sort();
    assert_eq!(mails, vec!["ada@contoso.example", "bob@contoso.example"]);
    let (all, pages) = collect_pages(&harness, &harness.graph("/users?$top=2"), &token, &[]).await;
    assert_eq!((all.len(), pages), (4, 2));
    let bad_filter = harness
        .get(
            &harness.graph(&format!("/users?$filter={}", encode("mail gt 'a'"))),
            &token,
            &[],
        )
        .await;
    assert_eq!(bad_filter.status, 400);
}

#[tokio::test]
async fn group_members_are_listed_as_users() {
    let harness = start().await;
    let token = harness.token().await;
    let reply = harness
        .get(
            &harness.graph(&format!(
                "/groups/{PHONES_GROUP_ID}/members?$select=id,mail"
            )),
            &token,
            &[],
        )
        .await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    let mut members: Vec<&str> = body["value"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item["mail"].as_str())
                .collect()
        })
        .unwrap_or_default();
    members.sort();
    assert_eq!(
        members,
        vec!["ada@contoso.example", "room.1@contoso.example"]
    );
    assert_eq!(
        reply.json()["value"][0]["@odata.type"],
        json!("#microsoft.graph.user")
    );
    assert_eq!(
        harness
            .get(
                &harness.graph("/groups/00000000-0000-4000-8000-000000000000/members"),
                &token,
                &[]
            )
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn group_members_cast_to_users_lists_the_same_people_paged() {
    let harness = start().await;
    let token = harness.token().await;
    let ids = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|item| item["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (members, _) = collect_pages(
        &harness,
        &harness.graph(&format!("/groups/{PHONES_GROUP_ID}/members")),
        &token,
        &[],
    )
    .await;
    assert_eq!(members.len(), 2);
    // The documented cast, and the short form Kiota's SDKs send, one member per page.
    for cast in ["microsoft.graph.user", "graph.user"] {
        let url = harness.graph(&format!("/groups/{PHONES_GROUP_ID}/members/{cast}?$top=1"));
        let first = harness.get(&url, &token, &[]).await;
        assert_eq!(first.status, 200, "{cast}: {}", first.text());
        assert!(
            first.json()["@odata.context"]
                .as_str()
                .is_some_and(|context| context.ends_with("/$metadata#users")),
            "{}",
            first.text()
        );
        let (users, pages) = collect_pages(&harness, &url, &token, &[]).await;
        assert_eq!(pages, 2, "{cast}");
        assert_eq!(ids(&users), ids(&members), "{cast}");
        assert_eq!(users[0]["mail"], members[0]["mail"]);
    }
}

#[tokio::test]
async fn calendar_view_expands_the_series_with_exceptions_across_dst() {
    let harness = start().await;
    let token = harness.token().await;
    let url = harness.graph(&format!(
        "/users/ada@contoso.example/calendarView?{MARCH}&$top=4"
    ));
    let (items, pages) = collect_pages(&harness, &url, &token, &[]).await;
    assert_eq!(pages, 3, "11 items at 4 per page");
    let summary: Vec<(String, String, String)> = items
        .iter()
        .map(|item| {
            (
                item["subject"].as_str().unwrap_or_default().to_string(),
                item["start"]["dateTime"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                item["type"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let weekly: Vec<&(String, String, String)> = summary
        .iter()
        .filter(|(subject, _, _)| subject.starts_with("Weekly"))
        .collect();
    assert_eq!(
        weekly,
        vec![
            &(
                "Weekly sync".to_string(),
                "2030-03-04T09:00:00.0000000".to_string(),
                "occurrence".to_string()
            ),
            &(
                "Weekly sync (moved)".to_string(),
                "2030-03-18T13:00:00.0000000".to_string(),
                "exception".to_string()
            ),
            &(
                "Weekly sync".to_string(),
                "2030-03-25T09:00:00.0000000".to_string(),
                "occurrence".to_string()
            ),
            // Europe changes to summer time on 2030-03-31: 10:00 local is now 08:00 UTC.
            &(
                "Weekly sync".to_string(),
                "2030-04-01T08:00:00.0000000".to_string(),
                "occurrence".to_string()
            ),
            &(
                "Weekly sync".to_string(),
                "2030-04-08T08:00:00.0000000".to_string(),
                "occurrence".to_string()
            ),
        ]
    );
    let show_as: BTreeMap<String, String> = items
        .iter()
        .map(|item| {
            (
                item["subject"].as_str().unwrap_or_default().to_string(),
                item["showAs"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(show_as.get("Holiday").map(String::as_str), Some("oof"));
    assert_eq!(show_as.get("Maybe").map(String::as_str), Some("tentative"));
    assert_eq!(
        show_as.get("From home").map(String::as_str),
        Some("workingElsewhere")
    );
    assert_eq!(show_as.get("Reminder").map(String::as_str), Some("free"));
    assert_eq!(show_as.get("Unknown").map(String::as_str), Some("unknown"));
    let holiday = items
        .iter()
        .find(|item| item["subject"] == json!("Holiday"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(holiday["isAllDay"], json!(true));
    assert_eq!(
        holiday["start"],
        json!({"dateTime": "2030-03-06T00:00:00.0000000", "timeZone": "UTC"})
    );
    assert_eq!(
        holiday["end"]["dateTime"],
        json!("2030-03-08T00:00:00.0000000")
    );
    let doctor = items
        .iter()
        .find(|item| item["subject"] == json!("Doctor"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(doctor["sensitivity"], json!("private"));
    let occurrence = &items[0];
    assert!(occurrence["seriesMasterId"].is_string());
    assert_eq!(
        occurrence["organizer"]["emailAddress"]["address"],
        json!("ada@contoso.example")
    );
}

#[tokio::test]
async fn calendar_view_honours_prefer_time_zone_page_size_and_select() {
    let harness = start().await;
    let token = harness.token().await;
    let url = harness.graph(&format!(
        "/users/ada@contoso.example/calendar/calendarView?{MARCH}&$select=subject,start"
    ));
    let prefer = [
        ("prefer", "outlook.timezone=\"Pacific Standard Time\""),
        ("prefer", "odata.maxpagesize=5"),
    ];
    let reply = harness.get(&url, &token, &prefer).await;
    assert_eq!(reply.status, 200);
    let applied = reply.header("preference-applied").unwrap_or_default();
    assert!(
        applied.contains("outlook.timezone=\"Pacific Standard Time\"")
            && applied.contains("odata.maxpagesize=5"),
        "{applied}"
    );
    let body = reply.json();
    assert_eq!(body["value"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        body["value"][0]["start"],
        json!({"dateTime": "2030-03-04T01:00:00.0000000", "timeZone": "Pacific Standard Time"})
    );
    let keys: Vec<String> = body["value"][0]
        .as_object()
        .map(|object| object.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(keys, vec!["@odata.etag", "id", "start", "subject"]);
    let (all, pages) = collect_pages(&harness, &url, &token, &prefer).await;
    assert_eq!((all.len(), pages), (11, 3));
    let no_window = harness
        .get(
            &harness.graph("/users/ada@contoso.example/calendarView"),
            &token,
            &[],
        )
        .await;
    assert_eq!(no_window.status, 400);
    assert_eq!(
        no_window.json()["error"]["code"],
        json!("ErrorInvalidParameter")
    );
    let unknown_user = harness
        .get(
            &harness.graph(&format!("/users/zed@contoso.example/calendarView?{MARCH}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(unknown_user.status, 404);
    assert_eq!(
        unknown_user.json()["error"]["code"],
        json!("ErrorInvalidUser")
    );
    let no_mailbox = harness
        .get(
            &harness.graph(&format!(
                "/users/carol@contoso.example/calendarView?{MARCH}"
            )),
            &token,
            &[],
        )
        .await;
    assert_eq!(
        no_mailbox.json()["error"]["code"],
        json!("MailboxNotEnabledForRESTAPI")
    );
}

#[tokio::test]
async fn created_updated_and_deleted_events_show_in_calendar_view_and_delta() {
    let harness = start().await;
    let token = harness.token().await;
    let window = "startDateTime=2030-05-01T00:00:00Z&endDateTime=2030-05-31T00:00:00Z";
    let delta_url = harness.graph(&format!(
        "/users/ada@contoso.example/calendarView/delta?{window}"
    ));
    let (initial_items, _) = collect_pages(&harness, &delta_url, &token, &[]).await;
    assert!(initial_items.is_empty());
    let first = harness.get(&delta_url, &token, &[]).await.json();
    let delta_link = first["@odata.deltaLink"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(delta_link.contains("$deltatoken="), "{first}");

    let created = harness
        .send_json(
            "POST",
            &harness.graph("/users/ada@contoso.example/events"),
            &token,
            &json!({
                "subject": "Planning",
                "start": {"dateTime": "2030-05-06T09:00:00", "timeZone": "W. Europe Standard Time"},
                "end": {"dateTime": "2030-05-06T10:00:00", "timeZone": "W. Europe Standard Time"},
                "showAs": "busy",
                "recurrence": {"pattern": {"type": "daily", "interval": 1}, "range": {"type": "numbered", "numberOfOccurrences": 3, "startDate": "2030-05-06"}}
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["type"], json!("seriesMaster"));
    let master_id = created.json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let view = harness
        .get(
            &harness.graph(&format!("/users/ada@contoso.example/calendarView?{window}")),
            &token,
            &[],
        )
        .await
        .json();
    assert_eq!(subjects(&view), vec!["Planning", "Planning", "Planning"]);
    let second_occurrence = view["value"][1]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let round = harness.get(&delta_link, &token, &[]).await.json();
    assert_eq!(subjects(&round), vec!["Planning", "Planning", "Planning"]);
    let delta_link = round["@odata.deltaLink"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let patched = harness
        .send_json(
            "PATCH",
            &harness.graph(&format!(
                "/users/ada@contoso.example/events/{second_occurrence}"
            )),
            &token,
            &json!({"subject": "Planning (changed)", "showAs": "tentative"}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["type"], json!("exception"));
    let third_occurrence = view["value"][2]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        harness
            .delete(
                &harness.graph(&format!(
                    "/users/ada@contoso.example/events/{third_occurrence}"
                )),
                &token
            )
            .await
            .status,
        204
    );

    let round = harness.get(&delta_link, &token, &[]).await.json();
    let changes = round["value"].as_array().cloned().unwrap_or_default();
    assert_eq!(changes.len(), 2, "{round}");
    assert_eq!(changes[0]["subject"], json!("Planning (changed)"));
    assert_eq!(
        changes[1],
        json!({"@odata.type": "#microsoft.graph.event", "id": third_occurrence, "@removed": {"reason": "deleted"}})
    );

    assert_eq!(
        harness
            .delete(
                &harness.graph(&format!("/users/ada@contoso.example/events/{master_id}")),
                &token
            )
            .await
            .status,
        204
    );
    let after = harness
        .get(
            &harness.graph(&format!("/users/ada@contoso.example/calendarView?{window}")),
            &token,
            &[],
        )
        .await
        .json();
    assert!(subjects(&after).is_empty());
    assert_eq!(
        harness
            .get(
                &harness.graph(&format!("/users/ada@contoso.example/events/{master_id}")),
                &token,
                &[]
            )
            .await
            .status,
        404
    );
    let bad = harness
        .send_json(
            "POST",
            &harness.graph("/users/ada@contoso.example/events"),
            &token,
            &json!({"subject": "no times"}),
        )
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn delta_pages_then_expires_tokens_by_age_and_by_fault() {
    let harness = start().await;
    let token = harness.token().await;
    let url = harness.graph(&format!(
        "/users/ada@contoso.example/calendarView/delta?{MARCH}"
    ));
    let first = harness
        .get(&url, &token, &[("prefer", "odata.maxpagesize=4")])
        .await
        .json();
    assert_eq!(first["value"].as_array().map(Vec::len), Some(4));
    let next = first["@odata.nextLink"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(next.contains("$skiptoken="));
    let (rest, _) = collect_pages(&harness, &next, &token, &[]).await;
    assert_eq!(rest.len(), 7);
    let last = harness
        .get(&url, &token, &[("prefer", "odata.maxpagesize=50")])
        .await
        .json();
    let delta_link = last["@odata.deltaLink"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        harness.get(&delta_link, &token, &[]).await.json()["value"],
        json!([]),
        "nothing changed"
    );

    harness.emulator.expire_delta_tokens();
    let gone = harness.get(&delta_link, &token, &[]).await;
    assert_eq!(gone.status, 410);
    assert_eq!(gone.json()["error"]["code"], json!("syncStateNotFound"));

    let fresh = harness
        .get(&url, &token, &[("prefer", "odata.maxpagesize=50")])
        .await
        .json();
    let delta_link = fresh["@odata.deltaLink"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(harness
        .emulator
        .clock()
        .advance(SignedDuration::from_hours(24 * 7))
        .is_ok());
    let token = harness.token().await;
    assert_eq!(
        harness.get(&delta_link, &token, &[]).await.status,
        410,
        "a week-old token has expired"
    );
}

/// Walks a delta round from `first_url` to its deltaLink: every item, and the deltaLink.
async fn delta_round(harness: &Harness, first_url: &str, token: &str) -> (Vec<Value>, String) {
    let mut items = Vec::new();
    let mut url = first_url.to_string();
    for _ in 0..100 {
        let reply = harness
            .get(&url, token, &[("prefer", "odata.maxpagesize=4")])
            .await;
        assert_eq!(reply.status, 200, "{url}: {}", reply.text());
        let body = reply.json();
        items.extend(body["value"].as_array().cloned().unwrap_or_default());
        if let Some(delta_link) = body["@odata.deltaLink"].as_str() {
            return (items, delta_link.to_string());
        }
        url = body["@odata.nextLink"]
            .as_str()
            .unwrap_or_else(|| panic!("neither nextLink nor deltaLink: {body}"))
            .to_string();
    }
    panic!("delta paging does not end");
}

#[tokio::test]
async fn delta_called_as_an_odata_function_answers_as_the_bare_delta() {
    let harness = start().await;
    let token = harness.token().await;
    let bare = harness.graph(&format!(
        "/users/ada@contoso.example/calendarView/delta?{MARCH}"
    ));
    let (bare_items, bare_link) = delta_round(&harness, &bare, &token).await;
    assert_eq!(bare_items.len(), 11, "{bare_items:?}");
    // The form Microsoft's Kiota-generated SDKs send, under both calendarView paths, in any case.
    for function_form in [
        format!("/users/ada@contoso.example/calendarView/delta()?{MARCH}"),
        format!("/users/ada%40contoso.example/calendar/calendarView/delta()?{MARCH}"),
        format!("/users/ada@contoso.example/calendarview/Delta%28%29?{MARCH}"),
    ] {
        let (items, delta_link) =
            delta_round(&harness, &harness.graph(&function_form), &token).await;
        assert_eq!(items, bare_items, "{function_form}");
        assert!(delta_link.contains("$deltatoken="), "{delta_link}");
    }
    let (function_items, function_link) = delta_round(
        &harness,
        &harness.graph(&format!(
            "/users/ada@contoso.example/calendarView/delta()?{MARCH}"
        )),
        &token,
    )
    .await;
    assert_eq!(function_items, bare_items);

    let created = harness
        .send_json(
            "POST",
            &harness.graph("/users/ada@contoso.example/events"),
            &token,
            &json!({
                "subject": "Seen by both forms",
                "start": {"dateTime": "2030-03-05T13:00:00", "timeZone": "UTC"},
                "end": {"dateTime": "2030-03-05T13:30:00", "timeZone": "UTC"}
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let (bare_changes, _) = delta_round(&harness, &bare_link, &token).await;
    let (function_changes, _) = delta_round(&harness, &function_link, &token).await;
    assert_eq!(
        subjects(&json!({"value": bare_changes})),
        vec!["Seen by both forms"]
    );
    assert_eq!(function_changes, bare_changes);

    // Inside $batch too, where the SDK's request builders put the same URL.
    let batch = json!({"requests": [
        {"id": "bare", "method": "GET", "url": format!("/users/ada@contoso.example/calendarView/delta?{MARCH}")},
        {"id": "function", "method": "GET", "url": format!("/users/ada@contoso.example/calendarView/delta()?{MARCH}")}
    ]});
    let reply = harness
        .send_json("POST", &harness.graph("/$batch"), &token, &batch)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let responses = reply.json()["responses"].clone();
    assert_eq!(responses[0]["status"], json!(200), "{responses}");
    assert_eq!(responses[1]["status"], json!(200), "{responses}");
    assert_eq!(responses[0]["body"]["value"], responses[1]["body"]["value"]);
    // A first page of the default ten; the rest follows the nextLink.
    assert_eq!(
        responses[1]["body"]["value"].as_array().map(Vec::len),
        Some(10)
    );
    assert!(responses[1]["body"]["@odata.nextLink"].is_string());
}

#[tokio::test]
async fn get_schedule_reports_availability_digits_and_hides_private_subjects() {
    let harness = start().await;
    let token = harness.token().await;
    let request = json!({
        "schedules": ["ada@contoso.example", "nobody@contoso.example"],
        "startTime": {"dateTime": "2030-03-07T08:00:00", "timeZone": "UTC"},
        "endTime": {"dateTime": "2030-03-07T13:00:00", "timeZone": "UTC"},
        "availabilityViewInterval": 60
    });
    let reply = harness
        .send_json(
            "POST",
            &harness.graph("/users/bob@contoso.example/calendar/getSchedule"),
            &token,
            &request,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    // 08:00 tentative (09:00 Berlin), 09:00 working elsewhere, 10:00 free, 11:00 unknown, 12:00 nothing; the holiday is oof all day
    // on 03-06 and 03-07 in Berlin, which overrides everything.
    assert_eq!(body["value"][0]["availabilityView"], json!("33333"));
    assert_eq!(
        body["value"][1]["error"]["responseCode"],
        json!("ErrorMailRecipientNotFound")
    );
    let private_request = json!({
        "schedules": ["ada@contoso.example"],
        "startTime": {"dateTime": "2030-03-05T00:00:00", "timeZone": "W. Europe Standard Time"},
        "endTime": {"dateTime": "2030-03-05T12:00:00", "timeZone": "W. Europe Standard Time"},
        "availabilityViewInterval": 120
    });
    let private = harness
        .send_json(
            "POST",
            &harness.graph("/users/ada@contoso.example/calendar/getSchedule"),
            &token,
            &private_request,
        )
        .await
        .json();
    assert_eq!(private["value"][0]["availabilityView"], json!("000020"));
    let item = &private["value"][0]["scheduleItems"][0];
    assert_eq!(item["isPrivate"], json!(true));
    assert!(item.get("subject").is_none());
    let too_many: Vec<String> = (0..21)
        .map(|index| format!("user{index}@contoso.example"))
        .collect();
    let rejected = harness.send_json("POST", &harness.graph("/users/ada@contoso.example/calendar/getSchedule"), &token, &json!({"schedules": too_many, "startTime": request["startTime"], "endTime": request["endTime"]})).await;
    assert_eq!(rejected.status, 400);
}

#[tokio::test]
async fn batch_runs_sub_requests_with_their_own_status_including_429() {
    let harness = start().await;
    let token = harness.token().await;
    let mut faults = harness.emulator.faults();
    faults.throttled_mailboxes = vec!["bob@contoso.example".to_string()];
    faults.throttled_mailbox_retry_after_seconds = 17;
    harness.emulator.set_faults(faults);
    let batch = json!({"requests": [
        {"id": "1", "method": "GET", "url": format!("/users/ada@contoso.example/calendarView?{MARCH}&$top=2")},
        {"id": "2", "method": "GET", "url": format!("/users/bob@contoso.example/calendarView?{MARCH}")},
        {"id": "3", "method": "GET", "url": "/users/nobody@contoso.example"},
        {"id": "4", "method": "GET", "url": "/users/ada@contoso.example", "dependsOn": ["3"]},
        {"id": "5", "method": "POST", "url": "/users/ada@contoso.example/events", "headers": {"Content-Type": "application/json"},
         "body": {"subject": "From batch", "start": {"dateTime": "2030-06-01T09:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2030-06-01T09:30:00", "timeZone": "UTC"}}}
    ]});
    let reply = harness
        .send_json("POST", &harness.graph("/$batch"), &token, &batch)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let responses: BTreeMap<String, Value> = reply.json()["responses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|item| (item["id"].as_str().unwrap_or_default().to_string(), item))
        .collect();
    assert_eq!(responses["1"]["status"], json!(200));
    assert_eq!(
        responses["1"]["body"]["value"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(responses["1"]["body"]["@odata.nextLink"].is_string());
    assert_eq!(responses["2"]["status"], json!(429));
    assert_eq!(responses["2"]["headers"]["Retry-After"], json!("17"));
    assert_eq!(
        responses["2"]["body"]["error"]["code"],
        json!("ApplicationThrottled")
    );
    assert_eq!(responses["3"]["status"], json!(404));
    assert_eq!(responses["4"]["status"], json!(424));
    assert_eq!(responses["5"]["status"], json!(201));

    // A sub-request's url is relative to the version's root; Graph fails on the first segment
    // of one that repeats the version or is absolute (msgraph-sdk for Python sends the latter).
    let graph_url = harness.emulator.ready().graph_url.clone();
    let batch = json!({"requests": [
        {"id": "relative", "method": "GET", "url": "users/ada@contoso.example"},
        {"id": "versioned", "method": "GET", "url": "/v1.0/users/ada@contoso.example"},
        {"id": "absolute", "method": "GET", "url": format!("{graph_url}/users/ada@contoso.example")},
        {"id": "after", "method": "GET", "url": "/users/ada@contoso.example", "dependsOn": ["versioned"]}
    ]});
    let reply = harness
        .send_json("POST", &harness.graph("/$batch"), &token, &batch)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let responses = reply.json()["responses"].clone();
    assert_eq!(responses[0]["status"], json!(200), "{responses}");
    assert_eq!(responses[1]["status"], json!(400), "{responses}");
    assert_eq!(
        responses[1]["body"]["error"]["message"],
        json!("Resource not found for the segment 'v1.0'.")
    );
    assert_eq!(responses[2]["status"], json!(400), "{responses}");
    assert_eq!(
        responses[2]["body"]["error"]["message"],
        json!("Resource not found for the segment 'https:'.")
    );
    assert_eq!(responses[3]["status"], json!(424), "{responses}");
    let too_big: Vec<Value> = (0..21).map(|index| json!({"id": index.to_string(), "method": "GET", "url": "/users/ada@contoso.example"})).collect();
    assert_eq!(
        harness
            .send_json(
                "POST",
                &harness.graph("/$batch"),
                &token,
                &json!({"requests": too_big})
            )
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn application_access_policy_blocks_mailboxes_outside_the_group() {
    let harness = start().await;
    let token = harness
        .token_for(RESTRICTED_APP_ID, "restricted-secret")
        .await;
    let inside = harness
        .get(
            &harness.graph(&format!("/users/ada@contoso.example/calendarView?{MARCH}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(inside.status, 200);
    let outside = harness
        .get(
            &harness.graph(&format!("/users/bob@contoso.example/calendarView?{MARCH}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(outside.status, 403);
    assert_eq!(outside.json()["error"]["code"], json!("ErrorAccessDenied"));
    assert!(outside.json()["error"]["message"]
        .as_str()
        .is_some_and(|message| message.starts_with("Access to OData is disabled")));
    let write = harness
        .send_json(
            "POST",
            &harness.graph("/users/ada@contoso.example/events"),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(write.status, 403, "Calendars.Read cannot write");
}

#[tokio::test]
async fn mailbox_request_rate_limit_answers_429_until_the_window_passes() {
    let mut config = EmulatorConfig::scenario(scenario());
    config.clock = manual_clock();
    config.faults = Some(m365_emulator::FaultSettings {
        mailbox_requests_per_window: 3,
        ..Default::default()
    });
    let harness = start_with(config).await;
    let token = harness.token().await;
    let url = harness.graph(&format!("/users/ada@contoso.example/calendarView?{MARCH}"));
    for _ in 0..3 {
        assert_eq!(harness.get(&url, &token, &[]).await.status, 200);
    }
    assert!(harness
        .emulator
        .clock()
        .advance(SignedDuration::from_secs(100))
        .is_ok());
    let throttled = harness.get(&url, &token, &[]).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after").as_deref(), Some("500"));
    let other_mailbox = harness
        .get(
            &harness.graph(&format!("/users/bob@contoso.example/calendarView?{MARCH}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(other_mailbox.status, 200, "limits are per mailbox");
    assert!(harness
        .emulator
        .clock()
        .advance(SignedDuration::from_secs(500))
        .is_ok());
    assert_eq!(harness.get(&url, &token, &[]).await.status, 200);
    let counters = harness.emulator.counters();
    assert_eq!(counters.by_kind.get("throttled.rate"), Some(&1));
    assert_eq!(counters.by_mailbox.get("ada@contoso.example"), Some(&5));
}

#[tokio::test]
async fn more_than_four_concurrent_requests_to_one_mailbox_are_throttled() {
    let mut config = EmulatorConfig::scenario(scenario());
    config.faults = Some(m365_emulator::FaultSettings {
        latency_ms: 400,
        ..Default::default()
    });
    let harness = start_with(config).await;
    let token = harness.token().await;
    let url = harness.graph(&format!("/users/ada@contoso.example/calendarView?{MARCH}"));
    let requests = (0..8).map(|_| harness.get(&url, &token, &[]));
    let mut statuses = Vec::new();
    for reply in futures_join(requests.collect()).await {
        statuses.push(reply.status);
    }
    statuses.sort();
    // The slot is held for 400 ms, far longer than it takes to send eight requests.
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|status| **status == 429).count(),
        4,
        "{statuses:?}"
    );
}

/// Runs futures concurrently on this task (the futures borrow the harness).
async fn futures_join<F: std::future::Future<Output = Reply>>(futures: Vec<F>) -> Vec<Reply> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<Reply>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut pending = false;
        for (index, future) in pinned.iter_mut().enumerate() {
            if results[index].is_none() {
                match future.as_mut().poll(context) {
                    std::task::Poll::Ready(reply) => results[index] = Some(reply),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

#[tokio::test]
async fn server_error_fault_answers_503_or_504_and_admin_endpoint_switches_it() {
    let harness = start().await;
    let token = harness.token().await;
    let patched = harness
        .client
        .send(
            "POST",
            &harness.admin("/faults"),
            &[],
            Some((
                "application/json",
                br#"{"server_error_rate": 1.0}"#.to_vec(),
            )),
        )
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.json()["server_error_rate"], json!(1.0));
    assert_eq!(
        patched.json()["mailbox_concurrency_limit"],
        json!(4),
        "unnamed settings keep their values"
    );
    let failed = harness
        .get(&harness.graph("/users/ada@contoso.example"), &token, &[])
        .await;
    assert!([503, 504].contains(&failed.status), "{}", failed.status);
    let rejected = harness
        .client
        .send(
            "POST",
            &harness.admin("/faults"),
            &[],
            Some(("application/json", br#"{"server_error_rate": 3}"#.to_vec())),
        )
        .await;
    assert_eq!(rejected.status, 400);
    harness
        .client
        .send(
            "POST",
            &harness.admin("/faults"),
            &[],
            Some(("application/json", br#"{"server_error_rate": 0}"#.to_vec())),
        )
        .await;
    assert_eq!(
        harness
            .get(&harness.graph("/users/ada@contoso.example"), &token, &[])
            .await
            .status,
        200
    );
    let counters = harness
        .client
        .send("GET", &harness.admin("/counters"), &[], None)
        .await
        .json();
    assert_eq!(counters["by_kind"]["users.get"], json!(2));
    assert_eq!(counters["by_kind"]["identity.token"], json!(1));
    assert_eq!(counters["by_kind"]["faults.server_errors"], json!(1));
    let expire = harness
        .client
        .send("POST", &harness.admin("/delta/expire"), &[], None)
        .await;
    assert_eq!(expire.status, 204);
    let clock = harness
        .client
        .send(
            "POST",
            &harness.admin("/clock/advance"),
            &[],
            Some(("application/json", br#"{"seconds": 60}"#.to_vec())),
        )
        .await;
    assert_eq!(clock.json()["now"], json!("2026-06-01T08:01:00.0000000Z"));
}

#[tokio::test]
async fn subscription_validates_notifies_with_client_state_renews_and_expires() {
    let harness = start().await;
    let token = harness.token().await;
    let mut receiver = start_receiver(Validation::Answer).await;
    let expiration = "2026-06-03T08:00:00Z";
    let created = harness
        .send_json(
            "POST",
            &harness.graph("/subscriptions"),
            &token,
            &json!({"changeType": "created,updated,deleted", "notificationUrl": receiver.url, "lifecycleNotificationUrl": receiver.url,
                    "resource": "/users/ada@contoso.example/events", "expirationDateTime": expiration, "clientState": "opaque-state"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let subscription_id = created.json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let validation = receiver.validations.recv().await.unwrap_or_default();
    assert!(
        validation.starts_with("Validation: "),
        "the decoded token reached the receiver: {validation}"
    );

    let event = harness
        .send_json("POST", &harness.graph("/users/ada@contoso.example/events"), &token, &json!({"subject": "Notify me", "start": {"dateTime": "2030-06-01T09:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2030-06-01T09:30:00", "timeZone": "UTC"}}))
        .await;
    let event_id = event.json()["id"].as_str().unwrap_or_default().to_string();
    let notification = receiver.next().await;
    let first = &notification["value"][0];
    assert_eq!(first["subscriptionId"], json!(subscription_id));
    assert_eq!(first["clientState"], json!("opaque-state"));
    assert_eq!(first["changeType"], json!("created"));
    assert_eq!(first["resourceData"]["id"], json!(event_id));
    assert_eq!(first["tenantId"], json!(TENANT_ID));

    harness
        .delete(
            &harness.graph(&format!("/users/ada@contoso.example/events/{event_id}")),
            &token,
        )
        .await;
    assert_eq!(
        receiver.next().await["value"][0]["changeType"],
        json!("deleted")
    );

    let renewed = harness
        .send_json(
            "PATCH",
            &harness.graph(&format!("/subscriptions/{subscription_id}")),
            &token,
            &json!({"expirationDateTime": "2026-06-04T06:00:00Z"}),
        )
        .await;
    assert_eq!(renewed.status, 200, "{}", renewed.text());
    assert_eq!(
        renewed.json()["expirationDateTime"],
        json!("2026-06-04T06:00:00.0000000Z")
    );
    let too_long = harness
        .send_json(
            "PATCH",
            &harness.graph(&format!("/subscriptions/{subscription_id}")),
            &token,
            &json!({"expirationDateTime": "2026-06-30T08:00:00Z"}),
        )
        .await;
    assert_eq!(too_long.status, 400);

    assert!(harness
        .emulator
        .send_lifecycle_notification(&subscription_id, LifecycleEvent::ReauthorizationRequired)
        .is_ok());
    let lifecycle = receiver.next().await;
    assert_eq!(
        lifecycle["value"][0]["lifecycleEvent"],
        json!("reauthorizationRequired")
    );
    assert_eq!(lifecycle["value"][0]["clientState"], json!("opaque-state"));

    assert!(harness
        .emulator
        .clock()
        .advance(SignedDuration::from_hours(72))
        .is_ok());
    let token = harness.token().await;
    let expired = harness
        .send_json(
            "PATCH",
            &harness.graph(&format!("/subscriptions/{subscription_id}")),
            &token,
            &json!({"expirationDateTime": "2026-06-05T08:00:00Z"}),
        )
        .await;
    assert_eq!(expired.status, 404);
}

#[tokio::test]
async fn subscription_fails_when_the_endpoint_does_not_echo_the_validation_token() {
    let harness = start().await;
    let token = harness.token().await;
    let receiver = start_receiver(Validation::Refuse).await;
    let reply = harness
        .send_json("POST", &harness.graph("/subscriptions"), &token, &json!({"changeType": "created", "notificationUrl": receiver.url, "resource": "/users/ada@contoso.example/events", "expirationDateTime": "2026-06-02T08:00:00Z"}))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], json!("ValidationError"));
    let plain_http = harness
        .send_json("POST", &harness.graph("/subscriptions"), &token, &json!({"changeType": "created", "notificationUrl": "http://hooks.example/notify", "resource": "/users/ada@contoso.example/events", "expirationDateTime": "2026-06-02T08:00:00Z"}))
        .await;
    assert_eq!(plain_http.status, 400, "only loopback may use http");
}

#[tokio::test]
async fn dropped_notifications_fault_loses_them_and_removed_lifecycle_deletes_the_subscription() {
    let harness = start().await;
    let token = harness.token().await;
    let mut receiver = start_receiver(Validation::Answer).await;
    let created = harness
        .send_json("POST", &harness.graph("/subscriptions"), &token, &json!({"changeType": "created", "notificationUrl": receiver.url, "lifecycleNotificationUrl": receiver.url, "resource": "users/ada@contoso.example/events", "expirationDateTime": "2026-06-02T08:00:00Z"}))
        .await;
    let subscription_id = created.json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut faults = harness.emulator.faults();
    faults.drop_notifications_rate = 1.0;
    harness.emulator.set_faults(faults);
    harness
        .send_json("POST", &harness.graph("/users/ada@contoso.example/events"), &token, &json!({"subject": "Lost", "start": {"dateTime": "2030-06-01T09:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2030-06-01T09:30:00", "timeZone": "UTC"}}))
        .await;
    assert!(harness
        .emulator
        .send_lifecycle_notification(&subscription_id, LifecycleEvent::SubscriptionRemoved)
        .is_ok());
    // Deliveries are ordered per queue: the lifecycle notification arrives, the dropped change never does.
    assert_eq!(
        receiver.next().await["value"][0]["lifecycleEvent"],
        json!("subscriptionRemoved")
    );
    assert_eq!(
        harness
            .emulator
            .counters()
            .by_kind
            .get("notifications.dropped"),
        Some(&1)
    );
    assert!(harness.emulator.subscription_ids().is_empty());
    assert_eq!(
        harness
            .get(
                &harness.graph(&format!("/subscriptions/{subscription_id}")),
                &token,
                &[]
            )
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn the_example_scenario_loads_and_serves_its_calendars() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/scenario.toml");
    let harness = start_with(EmulatorConfig::scenario_file(path)).await;
    let ready = harness.emulator.ready().clone();
    assert_eq!(ready.client_id, "6e2a0c1d-5b4f-4a39-9e8d-7c6b5a493827");
    assert_eq!(
        ready.client_secret.as_deref(),
        Some("calbridge-demo-secret")
    );
    let token = harness
        .token_for(&ready.client_id, "calbridge-demo-secret")
        .await;
    let now = jiff::Timestamp::now();
    let start = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let end = now
        .checked_add(SignedDuration::from_hours(24 * 8))
        .unwrap_or(now)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let url = harness.graph(&format!(
        "/users/ada@contoso.example/calendarView?startDateTime={start}&endDateTime={end}&$top=100"
    ));
    let view = harness.get(&url, &token, &[]).await.json();
    let subjects = subjects(&view);
    assert!(
        subjects.iter().any(|subject| subject == "Customer call"),
        "{subjects:?}"
    );
    assert!(
        subjects.iter().any(|subject| subject == "Daily stand-up"),
        "{subjects:?}"
    );
}

#[tokio::test]
async fn ten_thousand_generated_users_start_and_are_in_the_all_people_group() {
    // How long generating them takes is a figure of `calbridge bench` (its "emulator s"
    // column), not an assertion here.
    let harness = start_with(EmulatorConfig::generated(10_000, 5)).await;
    let ready = harness.emulator.ready().clone();
    let token = harness
        .token_for(
            &ready.client_id,
            ready.client_secret.as_deref().unwrap_or_default(),
        )
        .await;
    let group_id = ready.group_id.clone().unwrap_or_default();
    let members = harness
        .get(
            &harness.graph(&format!("/groups/{group_id}/members?$top=999&$select=mail")),
            &token,
            &[],
        )
        .await
        .json();
    assert_eq!(members["value"].as_array().map(Vec::len), Some(999));
    assert!(members["@odata.nextLink"].is_string());
    let first_mail = members["value"][0]["mail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let now = jiff::Timestamp::now();
    let window_start = now
        .checked_sub(SignedDuration::from_hours(24 * 7))
        .unwrap_or(now)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let window_end = now
        .checked_add(SignedDuration::from_hours(24 * 14))
        .unwrap_or(now)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let view = harness.get(&harness.graph(&format!("/users/{first_mail}/calendarView?startDateTime={window_start}&endDateTime={window_end}&$top=200")), &token, &[]).await.json();
    assert!(
        view["value"]
            .as_array()
            .is_some_and(|items| items.len() >= 3),
        "{view}"
    );
}

/// The id of the event with `subject` in `mailbox`'s events.
async fn event_with_subject(harness: &Harness, token: &str, mailbox: &str, subject: &str) -> Value {
    let reply = harness
        .get(
            &harness.graph(&format!("/users/{mailbox}/events?$top=100")),
            token,
            &[],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    body["value"]
        .as_array()
        .and_then(|events| events.iter().find(|event| event["subject"] == subject))
        .cloned()
        .unwrap_or_else(|| panic!("no '{subject}' in {mailbox}: {body}"))
}

fn attendee_status<'a>(event: &'a Value, address: &str) -> &'a Value {
    event["attendees"]
        .as_array()
        .and_then(|attendees| {
            attendees
                .iter()
                .find(|attendee| attendee["emailAddress"]["address"] == address)
        })
        .map(|attendee| &attendee["status"])
        .unwrap_or_else(|| panic!("{address} is no attendee: {event}"))
}

async fn delegated_token(harness: &Harness, scope: &str) -> String {
    let reply = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("grant_type", "password"),
            ("username", "ada@contoso.example"),
            ("password", "ada-password"),
            ("scope", scope),
        ])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_room_declining_a_meeting_loses_it_and_the_organizers_copy_shows_declined() {
    let harness = start().await;
    let token = harness.token().await;
    let room = "room.1@contoso.example";
    // The scenario's "Weekly sync" is Ada's, with the room among its attendees: the room's
    // calendar holds the booking under the same iCalUId, with Ada's name for a subject (the
    // room's default calendar processing), and Ada's copy shows the room's acceptance.
    let booking = event_with_subject(&harness, &token, room, "Ada Lovelace").await;
    let original = event_with_subject(&harness, &token, "ada@contoso.example", "Weekly sync").await;
    assert_eq!(booking["iCalUId"], original["iCalUId"]);
    assert_eq!(attendee_status(&original, room)["response"], "accepted");
    let booking_id = booking["id"].as_str().unwrap_or_default().to_string();
    let original_id = original["id"].as_str().unwrap_or_default().to_string();
    let (seen, room_delta) = delta_round(
        &harness,
        &harness.graph(&format!("/users/{room}/calendarView/delta?{MARCH}")),
        &token,
    )
    .await;
    assert_eq!(seen.len(), 5, "five occurrences are left of six: {seen:?}");
    let mut receiver = start_receiver(Validation::Answer).await;
    let subscribed = harness
        .send_json(
            "POST",
            &harness.graph("/subscriptions"),
            &token,
            &json!({"changeType": "updated", "notificationUrl": receiver.url,
                    "resource": "/users/ada@contoso.example/events", "expirationDateTime": "2026-06-03T08:00:00Z"}),
        )
        .await;
    assert_eq!(subscribed.status, 201, "{}", subscribed.text());
    let _validation = receiver.validations.recv().await;

    let decline_url = harness.graph(&format!("/users/{room}/events/{booking_id}/decline"));
    let body = json!({"comment": "Nobody checked in.", "sendResponse": true});
    // Without Calendars.ReadWrite: 403, and nothing changes.
    let read_only = harness
        .token_for(RESTRICTED_APP_ID, "restricted-secret")
        .await;
    let refused = harness
        .send_json("POST", &decline_url, &read_only, &body)
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "ErrorAccessDenied");
    let unknown = harness
        .send_json(
            "POST",
            &harness.graph(&format!("/users/{room}/events/AAMkAGnothing/decline")),
            &token,
            &body,
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert_eq!(unknown.json()["error"]["code"], "ErrorItemNotFound");

    let declined = harness.send_json("POST", &decline_url, &token, &body).await;
    assert_eq!(declined.status, 202, "{}", declined.text());
    assert!(declined.text().is_empty(), "{}", declined.text());

    let gone = harness
        .get(
            &harness.graph(&format!("/users/{room}/events/{booking_id}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(
        gone.status, 404,
        "the declined meeting left the room's calendar"
    );
    let after = harness
        .get(
            &harness.graph(&format!("/users/ada@contoso.example/events/{original_id}")),
            &token,
            &[],
        )
        .await
        .json();
    let status = attendee_status(&after, room);
    assert_eq!(status["response"], "declined", "{after}");
    assert!(
        status["time"]
            .as_str()
            .is_some_and(|time| time.starts_with("2026-06-01T08:00:00")),
        "answered at the emulator's now: {status}"
    );
    assert_eq!(
        attendee_status(&after, "bob@contoso.example")["response"],
        "none"
    );
    assert_ne!(after["changeKey"], original["changeKey"]);
    // The organizer's subscription hears of the update; the room's delta removes the meeting.
    let notification = receiver.next().await;
    assert_eq!(notification["value"][0]["changeType"], "updated");
    assert_eq!(
        notification["value"][0]["resourceData"]["id"],
        json!(original_id)
    );
    let (changes, _) = delta_round(&harness, &room_delta, &token).await;
    assert_eq!(changes.len(), 5, "{changes:?}");
    assert!(
        changes
            .iter()
            .all(|change| change["@removed"]["reason"] == "deleted"),
        "{changes:?}"
    );

    // A delegated token: without Calendars.ReadWrite 403; the organizer cannot decline her own
    // meeting (400).
    let reader = delegated_token(&harness, "https://graph.microsoft.com/Calendars.Read").await;
    let own_url = harness.graph(&format!("/me/events/{original_id}/decline"));
    let refused = harness.send_json("POST", &own_url, &reader, &body).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    let writer = delegated_token(&harness, "https://graph.microsoft.com/Calendars.ReadWrite").await;
    let own = harness.send_json("POST", &own_url, &writer, &body).await;
    assert_eq!(own.status, 400, "{}", own.text());
    assert_eq!(own.json()["error"]["code"], "ErrorInvalidRequest");
}
