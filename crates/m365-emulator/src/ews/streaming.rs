//! Streaming notifications: Subscribe (StreamingSubscriptionRequest), GetStreamingEvents as a
//! long-lived chunked response of SOAP envelopes, Unsubscribe; fed by every calendar change.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use tokio::sync::{mpsc, watch};

use super::auth::Principal;
use super::ops::ews_time;
use super::soap::{self, envelope, error_message, operation, success, Fault};
use super::xml::{escape, Element, NS_MESSAGES, NS_TYPES};
use super::{encode_id, Context, Rights};
use crate::calendar::{ChangeRecord, ChangeType};
use crate::faults::lock;
use crate::state::AppState;

struct Subscription {
    owner: String,
    user_index: usize,
    event_types: Vec<String>,
    pending: Vec<String>,
    watermark: u64,
    /// Which GetStreamingEvents connection serves it (a newer one takes over).
    connection: u64,
}

pub struct StreamingStore {
    subscriptions: Mutex<HashMap<String, Subscription>>,
    changed: watch::Sender<u64>,
    next_connection: Mutex<u64>,
    /// Open GetStreamingEvents connections per charged account (see [`charged_account`]).
    connections: Mutex<BTreeMap<String, usize>>,
    /// Bumped whenever a connection is admitted or ends, for those who wait on the count.
    connections_changed: watch::Sender<u64>,
}

impl Default for StreamingStore {
    fn default() -> Self {
        StreamingStore {
            subscriptions: Mutex::default(),
            changed: watch::channel(0).0,
            next_connection: Mutex::new(0),
            connections: Mutex::default(),
            connections_changed: watch::channel(0).0,
        }
    }
}

impl StreamingStore {
    fn bump(&self) {
        self.changed
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// Live subscription ids (for the admin endpoint and tests).
    pub fn ids(&self) -> Vec<String> {
        lock(&self.subscriptions).keys().cloned().collect()
    }

    /// Open GetStreamingEvents connections per charged account (accounts without any are left
    /// out): `svc@contoso.example` for an account's own connections,
    /// `ada@contoso.example (impersonated)` for those impersonating that mailbox.
    pub fn connections(&self) -> BTreeMap<String, usize> {
        lock(&self.connections).clone()
    }

    /// Waits until the open connections satisfy `condition`; woken by every admission and end.
    pub async fn wait_for_connections(&self, condition: impl Fn(&BTreeMap<String, usize>) -> bool) {
        let mut changed = self.connections_changed.subscribe();
        loop {
            // Marks the current version seen before looking, so a change after the look wakes us.
            changed.borrow_and_update();
            if condition(&self.connections()) {
                return;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }
}

/// One open connection's place in its account's budget, given back when dropped: when the
/// connection task ends for any reason (the client went away, the timeout, all of its
/// subscriptions taken over), or when the request fails after admission.
struct ConnectionSlot {
    state: Arc<AppState>,
    charged: String,
}

impl ConnectionSlot {
    /// A slot for `charged`, or `None` when it already holds `limit` connections (0 = no limit).
    fn take(state: &Arc<AppState>, charged: String, limit: usize) -> Option<ConnectionSlot> {
        let streaming = &state.ews.streaming;
        {
            let mut connections = lock(&streaming.connections);
            let open = connections.entry(charged.clone()).or_default();
            if limit > 0 && *open >= limit {
                return None;
            }
            *open += 1;
        }
        streaming
            .connections_changed
            .send_modify(|version| *version = version.wrapping_add(1));
        Some(ConnectionSlot {
            state: Arc::clone(state),
            charged,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let streaming = &self.state.ews.streaming;
        {
            let mut connections = lock(&streaming.connections);
            if let Some(open) = connections.get_mut(&self.charged) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    connections.remove(&self.charged);
                }
            }
        }
        streaming
            .connections_changed
            .send_modify(|version| *version = version.wrapping_add(1));
    }
}

/// Whose hanging-connection budget a GetStreamingEvents request spends. Exchange charges it to
/// the mailbox the request impersonates (a copy of that mailbox's budget: the mailbox's own
/// logons keep theirs), else to the account that logged on, whatever `X-AnchorMailbox` says:
/// with delegate access every connection is the service account's.
fn charged_account(context: &Context<'_>) -> String {
    if let Some(user_index) = context.impersonated {
        return format!(
            "{} (impersonated)",
            context.state.directory.users[user_index].mail
        );
    }
    match context.principal {
        Principal::Account(index) => context.state.ews.setup.accounts[index].address.clone(),
        Principal::App { tenant_index } => format!("app of tenant {tenant_index}"),
    }
}

fn owner_key(principal: &Principal) -> String {
    match principal {
        Principal::Account(index) => format!("account:{index}"),
        Principal::App { tenant_index } => format!("app:{tenant_index}"),
    }
}

const EVENT_TYPES: [&str; 6] = [
    "CopiedEvent",
    "CreatedEvent",
    "DeletedEvent",
    "ModifiedEvent",
    "MovedEvent",
    "NewMailEvent",
];

/// Queues a change for every streaming subscription on the mailbox and wakes the connections.
pub fn notify_change(state: &AppState, user_index: usize, change: &ChangeRecord) {
    let event_type = match change.change_type {
        ChangeType::Created => "CreatedEvent",
        ChangeType::Updated => "ModifiedEvent",
        ChangeType::Deleted => "DeletedEvent",
    };
    let user = &state.directory.users[user_index];
    let now = ews_time(state.clock.now());
    let mut any = false;
    for subscription in lock(&state.ews.streaming.subscriptions).values_mut() {
        if subscription.user_index != user_index
            || !subscription
                .event_types
                .iter()
                .any(|kind| kind == event_type)
        {
            continue;
        }
        subscription.watermark += 1;
        subscription.pending.push(format!(
            "<t:{event_type}><t:Watermark>{}</t:Watermark><t:TimeStamp>{now}</t:TimeStamp><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/><t:ParentFolderId Id=\"{}\" ChangeKey=\"AgAAABQAAAA=\"/></t:{event_type}>",
            watermark(subscription.watermark),
            encode_id("I", &user.id, &change.event_id),
            escape(&change.change_key),
            encode_id("F", &user.id, "calendar"),
        ));
        any = true;
    }
    if any {
        state.ews.streaming.bump();
    }
}

fn watermark(counter: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("EMUWM{counter:016}"))
}

pub fn subscribe(context: &Context<'_>, request: &Element) -> Result<Response, Fault> {
    let Some(streaming) = request.child("StreamingSubscriptionRequest") else {
        let kind = request
            .children
            .first()
            .map(|child| child.name.clone())
            .unwrap_or_default();
        return Ok(soap::ok(&operation(
            "Subscribe",
            &error_message(
                "Subscribe",
                "ErrorInvalidSubscriptionRequest",
                &format!("The emulator supports streaming subscriptions only, not {kind}."),
            ),
        )));
    };
    let folders = streaming
        .child("FolderIds")
        .ok_or_else(|| Fault::schema("StreamingSubscriptionRequest needs FolderIds"))?;
    let folder = folders
        .children
        .first()
        .ok_or_else(|| Fault::schema("FolderIds is empty"))?;
    let user_index = match folder.name.as_str() {
        "DistinguishedFolderId" => match folder
            .child("Mailbox")
            .and_then(|mailbox| mailbox.child_text("EmailAddress"))
        {
            Some(address) => context.state.directory.user(address),
            None => context.own_mailbox(),
        },
        "FolderId" => folder
            .attribute("Id")
            .and_then(super::decode_id)
            .and_then(|(_, user_id, _)| context.state.directory.user(&user_id)),
        _ => None,
    };
    let Some(user_index) = user_index else {
        return Ok(soap::ok(&operation(
            "Subscribe",
            &error_message(
                "Subscribe",
                "ErrorNonExistentMailbox",
                "No mailbox with such guid.",
            ),
        )));
    };
    if context.rights(user_index) == Rights::None {
        return Ok(soap::ok(&operation(
            "Subscribe",
            &error_message(
                "Subscribe",
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            ),
        )));
    }
    let mut event_types: Vec<String> = streaming
        .child("EventTypes")
        .map(|types| {
            types
                .children
                .iter()
                .map(|kind| kind.text.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    if event_types.is_empty() {
        return Err(Fault::schema("EventTypes needs at least one EventType"));
    }
    if let Some(unknown) = event_types.iter().find(|kind| {
        !EVENT_TYPES.contains(&kind.as_str()) && kind.as_str() != "FreeBusyChangedEvent"
    }) {
        return Err(Fault::schema(format!("'{unknown}' is not an EventType")));
    }
    event_types.dedup();
    let limit = context.state.faults().ews_subscriptions_per_mailbox;
    let mut subscriptions = lock(&context.state.ews.streaming.subscriptions);
    let existing = subscriptions
        .values()
        .filter(|subscription| subscription.user_index == user_index)
        .count();
    if limit > 0 && existing >= limit {
        drop(subscriptions);
        context.state.counters.count("ews.subscriptions_refused");
        return Ok(soap::ok(&operation(
            "Subscribe",
            &error_message(
                "Subscribe",
                "ErrorExceededSubscriptionCount",
                "You have exceeded the available subscriptions for your account. Remove unnecessary subscriptions and try your request again.",
            ),
        )));
    }
    let user = &context.state.directory.users[user_index];
    let id = encode_id("S", &user.id, &context.state.ids.token(16));
    subscriptions.insert(
        id.clone(),
        Subscription {
            owner: owner_key(&context.principal),
            user_index,
            event_types,
            pending: vec![],
            watermark: 0,
            connection: 0,
        },
    );
    Ok(soap::ok(&operation(
        "Subscribe",
        &success(
            "Subscribe",
            &format!("<m:SubscriptionId>{}</m:SubscriptionId>", escape(&id)),
        ),
    )))
}

pub fn unsubscribe(context: &Context<'_>, request: &Element) -> Result<Response, Fault> {
    let id = request
        .child_text("SubscriptionId")
        .ok_or_else(|| Fault::schema("Unsubscribe needs SubscriptionId"))?;
    let owner = owner_key(&context.principal);
    let removed = {
        let mut subscriptions = lock(&context.state.ews.streaming.subscriptions);
        match subscriptions.get(id) {
            Some(subscription) if subscription.owner == owner => subscriptions.remove(id).is_some(),
            _ => false,
        }
    };
    context.state.ews.streaming.bump();
    let message = if removed {
        success("Unsubscribe", "")
    } else {
        error_message(
            "Unsubscribe",
            "ErrorSubscriptionNotFound",
            "The specified subscription was not found.",
        )
    };
    Ok(soap::ok(&operation("Unsubscribe", &message)))
}

/// A response body fed by a channel, so the handler can keep writing after it returned.
struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

fn streaming_envelope(message: &str) -> Bytes {
    Bytes::from(envelope(&format!(
        "<m:GetStreamingEventsResponse xmlns:m=\"{NS_MESSAGES}\" xmlns:t=\"{NS_TYPES}\"><m:ResponseMessages>{message}</m:ResponseMessages></m:GetStreamingEventsResponse>"
    )))
}

fn status_message(status: &str) -> Bytes {
    streaming_envelope(&success(
        "GetStreamingEvents",
        &format!("<m:ConnectionStatus>{status}</m:ConnectionStatus>"),
    ))
}

pub fn get_streaming_events(
    state: &Arc<AppState>,
    context: &Context<'_>,
    request: &Element,
) -> Result<Response, Fault> {
    let ids: Vec<String> = request
        .child("SubscriptionIds")
        .map(|ids| {
            ids.children
                .iter()
                .map(|id| id.text.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        return Err(Fault::schema("GetStreamingEvents needs SubscriptionIds"));
    }
    if ids.len() > 200 {
        return Ok(soap::ok(&operation(
            "GetStreamingEvents",
            &error_message(
                "GetStreamingEvents",
                "ErrorInvalidArgument",
                "At most 200 subscriptions can be served by one connection.",
            ),
        )));
    }
    let minutes: u64 = request
        .child_text("ConnectionTimeout")
        .ok_or_else(|| Fault::schema("GetStreamingEvents needs ConnectionTimeout"))?
        .parse()
        .map_err(|_| Fault::schema("ConnectionTimeout is not a number"))?;
    if !(1..=30).contains(&minutes) {
        return Ok(soap::ok(&operation(
            "GetStreamingEvents",
            &error_message(
                "GetStreamingEvents",
                "ErrorInvalidArgument",
                "ConnectionTimeout must be between 1 and 30 minutes.",
            ),
        )));
    }
    let faults = state.faults();
    // The connection is counted before its subscriptions are looked at (Microsoft does not
    // document the order), so a refused connection takes none of them over from the
    // connection serving them now: that one keeps streaming.
    let Some(slot) = ConnectionSlot::take(
        state,
        charged_account(context),
        faults.ews_hanging_connection_limit,
    ) else {
        state.counters.count("ews.connections_refused");
        return Ok(soap::ok(&operation(
            "GetStreamingEvents",
            &error_message(
                "GetStreamingEvents",
                "ErrorExceededConnectionCount",
                "You have exceeded the available concurrent connections for your account. Try again once your other requests have completed.",
            ),
        )));
    };
    let owner = owner_key(&context.principal);
    let connection = {
        let mut next = lock(&state.ews.streaming.next_connection);
        *next += 1;
        *next
    };
    {
        let mut subscriptions = lock(&state.ews.streaming.subscriptions);
        let unknown: Vec<&String> = ids
            .iter()
            .filter(|id| {
                subscriptions
                    .get(*id)
                    .is_none_or(|subscription| subscription.owner != owner)
            })
            .collect();
        if !unknown.is_empty() {
            let list: String = unknown
                .iter()
                .map(|id| format!("<m:SubscriptionId>{}</m:SubscriptionId>", escape(id)))
                .collect();
            return Ok(soap::ok(&operation(
                "GetStreamingEvents",
                &format!(
                    "<m:GetStreamingEventsResponseMessage ResponseClass=\"Error\"><m:MessageText>The specified subscription was not found.</m:MessageText><m:ResponseCode>ErrorSubscriptionNotFound</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:ErrorSubscriptionIds>{list}</m:ErrorSubscriptionIds></m:GetStreamingEventsResponseMessage>"
                ),
            )));
        }
        for id in &ids {
            if let Some(subscription) = subscriptions.get_mut(id) {
                subscription.connection = connection;
            }
        }
    }
    // Wake the connection that served these subscriptions before, so it closes.
    state.ews.streaming.bump();
    let timeout = if faults.ews_connection_timeout_seconds > 0 {
        Duration::from_secs(faults.ews_connection_timeout_seconds)
    } else {
        Duration::from_secs(minutes * 60)
    };
    let heartbeat = Duration::from_secs(faults.ews_heartbeat_seconds.max(1));
    let (sender, receiver) = mpsc::channel::<Bytes>(16);
    let state = Arc::clone(state);
    state.counters.count("ews.streaming_connections");
    tokio::spawn(async move {
        let mut changed = state.ews.streaming.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        if sender.send(status_message("OK")).await.is_err() {
            return;
        }
        let mut ids = ids;
        loop {
            // Drain what is pending for the subscriptions this connection still serves.
            let (notifications, lost) = {
                let mut subscriptions = lock(&state.ews.streaming.subscriptions);
                let mut notifications = String::new();
                let mut lost = Vec::new();
                for id in &ids {
                    match subscriptions.get_mut(id) {
                        Some(subscription) if subscription.connection == connection => {
                            if !subscription.pending.is_empty() {
                                let events: String = subscription.pending.drain(..).collect();
                                notifications.push_str(&format!(
                                    "<m:Notification><t:SubscriptionId>{}</t:SubscriptionId>{events}</m:Notification>",
                                    escape(id)
                                ));
                            }
                        }
                        _ => lost.push(id.clone()),
                    }
                }
                (notifications, lost)
            };
            if !notifications.is_empty() {
                state.counters.count("ews.notifications_sent");
                let chunk = streaming_envelope(&success(
                    "GetStreamingEvents",
                    &format!("<m:Notifications>{notifications}</m:Notifications>"),
                ));
                if sender.send(chunk).await.is_err() {
                    return;
                }
            }
            if !lost.is_empty() {
                ids.retain(|id| !lost.contains(id));
                let list: String = lost
                    .iter()
                    .map(|id| format!("<m:SubscriptionId>{}</m:SubscriptionId>", escape(id)))
                    .collect();
                let chunk = streaming_envelope(&format!(
                    "<m:GetStreamingEventsResponseMessage ResponseClass=\"Error\"><m:MessageText>The subscription is no longer served by this connection.</m:MessageText><m:ResponseCode>ErrorSubscriptionNotFound</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:ErrorSubscriptionIds>{list}</m:ErrorSubscriptionIds></m:GetStreamingEventsResponseMessage>"
                ));
                if sender.send(chunk).await.is_err() {
                    return;
                }
                if ids.is_empty() {
                    // The slot is free before the client reads Closed, so a client that
                    // re-opens at once is not refused by its own ending connection.
                    drop(slot);
                    let _ = sender.send(status_message("Closed")).await;
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    drop(slot);
                    let _ = sender.send(status_message("Closed")).await;
                    return;
                }
                _ = tokio::time::sleep(heartbeat) => {
                    if sender.send(status_message("OK")).await.is_err() {
                        return;
                    }
                }
                result = changed.changed() => {
                    if result.is_err() {
                        return;
                    }
                }
                _ = sender.closed() => return,
            }
        }
    });
    let mut response = (
        StatusCode::OK,
        axum::body::Body::new(ChannelBody { receiver }),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    Ok(response)
}
