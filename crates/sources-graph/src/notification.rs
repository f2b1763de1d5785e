//! Change notifications Graph POSTs to calbridge's webhook, as pure functions: the HTTP
//! receiver lives in the service and only calls these.

use calbridge_domain::Secret;
use calbridge_net::constant_time_equal;
use calbridge_net::percent::decode_form_value;
use serde::Deserialize;

/// What one notification asks calbridge to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Something changed in a subscribed calendar: read that user's delta.
    Changed {
        subscription_id: String,
        /// The user id from the resource (`Users/{id}/Events/{event id}`), when present.
        user_hint: Option<String>,
    },
    /// The subscription's access token is about to expire: renew (PATCH) it.
    ReauthorizationRequired { subscription_id: String },
    /// Graph removed the subscription: create a new one and resync by delta.
    SubscriptionRemoved { subscription_id: String },
    /// Graph dropped notifications: resync the user by delta.
    Missed { subscription_id: String },
}

impl Notification {
    pub fn subscription_id(&self) -> &str {
        match self {
            Notification::Changed {
                subscription_id, ..
            }
            | Notification::ReauthorizationRequired { subscription_id }
            | Notification::SubscriptionRemoved { subscription_id }
            | Notification::Missed { subscription_id } => subscription_id,
        }
    }
}

/// A notification body sorted into what to act on and what to drop.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedNotifications {
    pub accepted: Vec<Notification>,
    /// Entries whose `clientState` did not match: forged or for another installation. They are
    /// dropped; their subscription ids are kept for the log.
    pub rejected_client_state: Vec<String>,
    /// Entries of a kind calbridge does not know (a future lifecycle event), dropped.
    pub unknown: usize,
}

/// A body that is not a Graph notification at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Microsoft Graph notification body: {0}")]
pub struct NotificationError(String);

#[derive(Deserialize)]
struct Envelope {
    value: Vec<RawNotification>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNotification {
    #[serde(default)]
    subscription_id: String,
    #[serde(default)]
    client_state: Option<String>,
    #[serde(default)]
    change_type: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    lifecycle_event: Option<String>,
}

/// Parses a notification POST body and checks every entry's `clientState` against
/// `expected_client_state` in constant time.
pub fn parse_notifications(
    body: &[u8],
    expected_client_state: &Secret,
) -> Result<ParsedNotifications, NotificationError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|error| NotificationError(error.to_string()))?;
    let mut parsed = ParsedNotifications::default();
    for raw in envelope.value {
        let client_state_matches = raw.client_state.as_deref().is_some_and(|given| {
            constant_time_equal(given.as_bytes(), expected_client_state.expose().as_bytes())
        });
        if !client_state_matches {
            parsed.rejected_client_state.push(raw.subscription_id);
            continue;
        }
        let subscription_id = raw.subscription_id;
        let notification = match raw.lifecycle_event.as_deref() {
            Some("reauthorizationRequired") => {
                Notification::ReauthorizationRequired { subscription_id }
            }
            Some("subscriptionRemoved") => Notification::SubscriptionRemoved { subscription_id },
            Some("missed") => Notification::Missed { subscription_id },
            Some(_) => {
                parsed.unknown += 1;
                continue;
            }
            None if raw.change_type.is_some() => Notification::Changed {
                subscription_id,
                user_hint: raw.resource.as_deref().and_then(user_from_resource),
            },
            None => {
                parsed.unknown += 1;
                continue;
            }
        };
        parsed.accepted.push(notification);
    }
    Ok(parsed)
}

/// `Users/{id}/Events/{event}` (Graph's spelling varies in case, a leading slash may come, and
/// older notifications write `Users('{id}')/Events('{event}')`).
fn user_from_resource(resource: &str) -> Option<String> {
    let mut segments = resource.trim_start_matches('/').split('/');
    let first = segments.next()?;
    let user = if first.eq_ignore_ascii_case("users") {
        segments.next()?
    } else {
        let (collection, key) = first.split_at_checked(5)?;
        if !collection.eq_ignore_ascii_case("users") {
            return None;
        }
        key.strip_prefix("('")?.strip_suffix("')")?
    };
    (!user.is_empty()).then(|| user.to_string())
}

/// The answer to Graph's validation request (`POST notificationUrl?validationToken=…`): the
/// decoded token, to be sent back as `200 text/plain` within 10 seconds. `None` when the query
/// has no validation token (an ordinary notification).
pub fn validation_response(query: &str) -> Option<String> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "validationToken").then(|| decode_form_value(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_notification_from_the_docs_is_accepted_with_its_user() {
        // Shape of Microsoft's "change notifications" documentation example for events.
        let body = br##"{"value":[{
            "subscriptionId":"7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "subscriptionExpirationDateTime":"2026-11-20T18:23:45.9356913Z",
            "changeType":"updated",
            "resource":"Users/87d349ed-44d7-43e1-9a83-5f2406dee5bd/Events/AAMkADk=",
            "resourceData":{"@odata.type":"#Microsoft.Graph.Event","@odata.id":"Users/87d349ed/Events/AAMkADk=","id":"AAMkADk="},
            "clientState":"secretClientValue",
            "tenantId":"bb8775a4-4d8c-42cf-a1d4-4d58c2bb668f"
        }]}"##;
        let parsed = parse_notifications(body, &Secret::new("secretClientValue")).unwrap();
        assert_eq!(
            parsed.accepted,
            vec![Notification::Changed {
                subscription_id: "7f105c7d-2dc5-4530-97cd-4e7ae6534c07".into(),
                user_hint: Some("87d349ed-44d7-43e1-9a83-5f2406dee5bd".into()),
            }]
        );
        assert!(parsed.rejected_client_state.is_empty());
    }

    #[test]
    fn wrong_or_missing_client_state_is_rejected_and_lifecycle_events_are_sorted() {
        let body = br#"{"value":[
            {"subscriptionId":"a","clientState":"guess","changeType":"created","resource":"Users/u/Events/e"},
            {"subscriptionId":"b","changeType":"created","resource":"Users/u/Events/e"},
            {"subscriptionId":"c","clientState":"right","lifecycleEvent":"reauthorizationRequired"},
            {"subscriptionId":"d","clientState":"right","lifecycleEvent":"subscriptionRemoved"},
            {"subscriptionId":"e","clientState":"right","lifecycleEvent":"missed"},
            {"subscriptionId":"f","clientState":"right","lifecycleEvent":"somethingNew"}
        ]}"#;
        let parsed = parse_notifications(body, &Secret::new("right")).unwrap();
        assert_eq!(parsed.rejected_client_state, vec!["a", "b"]);
        assert_eq!(
            parsed.accepted,
            vec![
                Notification::ReauthorizationRequired {
                    subscription_id: "c".into()
                },
                Notification::SubscriptionRemoved {
                    subscription_id: "d".into()
                },
                Notification::Missed {
                    subscription_id: "e".into()
                },
            ]
        );
        assert_eq!(parsed.unknown, 1);
        assert!(parse_notifications(b"{}", &Secret::new("x")).is_err());
    }

    #[test]
    fn validation_token_is_decoded_for_the_plain_text_reply() {
        assert_eq!(
            validation_response("validationToken=Validation%3a+Testing+client+application+reachability+for+subscription+Request-Id%3a+42"),
            Some("Validation: Testing client application reachability for subscription Request-Id: 42".to_string())
        );
        assert_eq!(
            validation_response("?a=1&validationToken=abc%2"),
            Some("abc%2".into())
        );
        assert_eq!(validation_response("a=1"), None);
        assert!(constant_time_equal(b"same", b"same"));
        assert!(!constant_time_equal(b"same", b"sane"));
        assert!(!constant_time_equal(b"same", b"same!"));
    }

    #[test]
    fn user_hint_handles_slashes_and_quoted_ids() {
        assert_eq!(
            user_from_resource("/users('abc')/events('e')"),
            Some("abc".to_string())
        );
        assert_eq!(user_from_resource("Users/abc/Events/e"), Some("abc".into()));
        assert_eq!(user_from_resource("groups/abc"), None);
    }
}
