//! Streaming notifications: `Subscribe`, `Unsubscribe`, and a task that holds one
//! `GetStreamingEvents` connection for up to `max_subscriptions_per_connection` subscriptions,
//! re-opening it when Exchange closes it (every `ConnectionTimeout`) or it drops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use calbridge_domain::MailboxAddress;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;
use url::Url;

use crate::error::EwsError;
use crate::soap::{self, Subject};
use crate::source::{
    is_endpoint_failure, read_answer, Acting, AttemptFailed, EwsSource, SubscriptionId,
};
use crate::transport;
use crate::xml::escape;

/// What a streaming connection reports.
#[derive(Debug)]
pub enum StreamEvent {
    /// Something changed in this mailbox's calendar: re-read it.
    Changed(MailboxAddress),
    /// The connection is open (first time or again); after a re-open, re-read the mailboxes,
    /// since changes during the gap were not streamed.
    Connected { reopened: bool },
    /// The connection ended (Exchange's timeout, a drop); it is re-opened by itself.
    ConnectionClosed,
    /// Exchange no longer knows these subscriptions: subscribe again and re-read.
    SubscriptionsLost(Vec<MailboxAddress>),
    /// Opening or reading failed; the connection is retried after a back-off.
    Error(EwsError),
}

/// The owner of a streaming task: dropping it ends the task and its connection.
pub struct StreamingConnection {
    events: mpsc::Receiver<StreamEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl StreamingConnection {
    /// The next event; `None` once the task has ended.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.events.recv().await
    }

    /// Ends the task and closes the connection.
    pub fn close(self) {}
}

impl Drop for StreamingConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const EVENT_TYPES: [&str; 5] = [
    "CreatedEvent",
    "ModifiedEvent",
    "DeletedEvent",
    "MovedEvent",
    "CopiedEvent",
];
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between attempts to open a connection. A connection refused for
/// Exchange's hanging-connection limit waits for another one to end, which may take up to its
/// `ConnectionTimeout` (30 minutes): asking once a minute finds the free slot soon enough
/// without a burst of refused requests (and warnings) per group.
const MAX_RETRY: Duration = Duration::from_secs(60);
const _: () = assert!(
    MAX_RETRY.as_secs() <= 300,
    "the stream's back-off is at most 5 minutes"
);

/// The policy between attempts to open a connection, without jitter: each group has its own
/// connection, and groups start at different moments anyway.
const RECONNECT_BACKOFF: calbridge_net::Backoff =
    calbridge_net::Backoff::doubling(FIRST_RETRY, MAX_RETRY);

/// The wait before the next attempt to open a connection: doubling from [`FIRST_RETRY`] after
/// each failure, at most [`MAX_RETRY`], from the start again once a connection served.
#[derive(Debug)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { failures: 0 }
    }

    /// The wait after a failure (unless the error names its own); the next one is longer.
    fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        RECONNECT_BACKOFF.delay_for(self.failures)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

impl EwsSource {
    /// Subscribes to changes of `mailbox`'s calendar (streaming).
    pub async fn subscribe(&self, mailbox: &MailboxAddress) -> Result<SubscriptionId, EwsError> {
        let event_types: String = EVENT_TYPES
            .iter()
            .map(|kind| format!("<t:EventType>{kind}</t:EventType>"))
            .collect();
        let folder = match self.config.access {
            crate::config::MailboxAccess::Impersonation => {
                "<t:DistinguishedFolderId Id=\"calendar\"/>".to_string()
            }
            crate::config::MailboxAccess::Delegate => format!(
                "<t:DistinguishedFolderId Id=\"calendar\"><t:Mailbox><t:EmailAddress>{}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>",
                escape(mailbox.as_str())
            ),
        };
        let body = format!(
            "<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds>{folder}</t:FolderIds><t:EventTypes>{event_types}</t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"
        );
        let messages = self
            .call("Subscribe", Acting::Mailbox(mailbox), &body)
            .await?;
        let user = self.transport.user();
        let subject = Subject {
            what: "Subscribe",
            user: &user,
            mailbox: mailbox.as_str(),
        };
        let message = messages.first().ok_or_else(|| EwsError::BadAnswer {
            what: format!("Subscribe for {mailbox}"),
            detail: "no response message".to_string(),
        })?;
        soap::check_message(message, &subject)?;
        message
            .child_text("SubscriptionId")
            .filter(|id| !id.is_empty())
            .map(|id| SubscriptionId(id.to_string()))
            .ok_or_else(|| EwsError::BadAnswer {
                what: format!("Subscribe for {mailbox}"),
                detail: "no SubscriptionId".to_string(),
            })
    }

    /// Ends a subscription. One Exchange no longer knows counts as ended.
    pub async fn unsubscribe(
        &self,
        mailbox: &MailboxAddress,
        subscription: &SubscriptionId,
    ) -> Result<(), EwsError> {
        let body = format!(
            "<m:Unsubscribe><m:SubscriptionId>{}</m:SubscriptionId></m:Unsubscribe>",
            escape(&subscription.0)
        );
        let messages = self
            .call("Unsubscribe", Acting::Mailbox(mailbox), &body)
            .await?;
        for message in &messages {
            if message.child_text("ResponseCode") == Some("ErrorSubscriptionNotFound") {
                continue;
            }
            let user = self.transport.user();
            soap::check_message(
                message,
                &Subject {
                    what: "Unsubscribe",
                    user: &user,
                    mailbox: mailbox.as_str(),
                },
            )?;
        }
        Ok(())
    }

    /// Starts a task holding one `GetStreamingEvents` connection for `subscriptions`
    /// (at most `max_subscriptions_per_connection`), with `connection_timeout` (1–30 minutes)
    /// after which Exchange closes it and the task opens it again.
    pub fn stream(
        self: &Arc<Self>,
        subscriptions: Vec<(SubscriptionId, MailboxAddress)>,
        connection_timeout: Duration,
    ) -> Result<StreamingConnection, EwsError> {
        let limit = self.config.max_subscriptions_per_connection;
        if subscriptions.is_empty() || subscriptions.len() > limit {
            return Err(EwsError::BadAnswer {
                what: soap::GET_STREAMING_EVENTS.to_string(),
                detail: format!(
                    "{} subscriptions given; one connection serves 1 to {limit} (max_subscriptions_per_connection)",
                    subscriptions.len()
                ),
            });
        }
        let minutes = (connection_timeout.as_secs() / 60).clamp(1, 30);
        let (sender, events) = mpsc::channel(256);
        let source = Arc::clone(self);
        let task = tokio::spawn(async move {
            run(source, subscriptions, minutes, sender).await;
        });
        Ok(StreamingConnection { events, task })
    }
}

enum Ended {
    Closed,
    ReceiverGone,
    Failed(EwsError),
}

async fn run(
    source: Arc<EwsSource>,
    mut subscriptions: Vec<(SubscriptionId, MailboxAddress)>,
    minutes: u64,
    events: mpsc::Sender<StreamEvent>,
) {
    let mut opened_before = false;
    let mut backoff = Backoff::new();
    while !subscriptions.is_empty() {
        let ended = hold(
            &source,
            &mut subscriptions,
            minutes,
            &events,
            &mut opened_before,
        )
        .await;
        let wait = match ended {
            Ended::ReceiverGone => return,
            Ended::Closed => {
                backoff.reset();
                if events.send(StreamEvent::ConnectionClosed).await.is_err() {
                    return;
                }
                Duration::ZERO
            }
            // A refusal for the hanging-connection limit is retried like any failure: the
            // connection comes up once another one of the same account ends.
            Ended::Failed(error) => {
                let backoff_wait = backoff.failed();
                let wait = error.retry_after().unwrap_or(backoff_wait);
                if events.send(StreamEvent::Error(error)).await.is_err() {
                    return;
                }
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One connection, from open to close. A refusal for the hanging-connection limit names the
/// account Exchange charged the connection to: the anchor mailbox it impersonates, or else the
/// service account (delegate access), whatever `X-AnchorMailbox` says.
async fn hold(
    source: &Arc<EwsSource>,
    subscriptions: &mut Vec<(SubscriptionId, MailboxAddress)>,
    minutes: u64,
    events: &mpsc::Sender<StreamEvent>,
    opened_before: &mut bool,
) -> Ended {
    let anchor = subscriptions[0].1.clone();
    let charged = source
        .impersonation(Acting::Mailbox(&anchor))
        .map(str::to_string)
        .unwrap_or_else(|| source.transport.user());
    match hold_connection(
        source,
        subscriptions,
        &anchor,
        minutes,
        events,
        opened_before,
    )
    .await
    {
        Ended::Failed(EwsError::ExceededConnectionCount { detail, .. }) => {
            Ended::Failed(EwsError::ExceededConnectionCount {
                user: charged,
                detail,
            })
        }
        other => other,
    }
}

async fn hold_connection(
    source: &Arc<EwsSource>,
    subscriptions: &mut Vec<(SubscriptionId, MailboxAddress)>,
    anchor: &MailboxAddress,
    minutes: u64,
    events: &mpsc::Sender<StreamEvent>,
    opened_before: &mut bool,
) -> Ended {
    let ids: String = subscriptions
        .iter()
        .map(|(id, _)| format!("<t:SubscriptionId>{}</t:SubscriptionId>", escape(&id.0)))
        .collect();
    let body = format!(
        "<m:GetStreamingEvents><m:SubscriptionIds>{ids}</m:SubscriptionIds><m:ConnectionTimeout>{minutes}</m:ConnectionTimeout></m:GetStreamingEvents>"
    );
    // Exchange routes a streaming connection by its anchor mailbox, the first subscription's,
    // and with impersonation (always with a bearer token) the connection impersonates that
    // mailbox too, as Microsoft's guidance for grouped subscriptions says; Exchange then
    // charges the connection to that mailbox's hanging-connection budget.
    let envelope = Bytes::from(soap::envelope(
        source.impersonation(Acting::Mailbox(anchor)),
        &body,
    ));
    let headers = source.headers(Acting::Mailbox(anchor));
    let by_id: HashMap<String, MailboxAddress> = subscriptions
        .iter()
        .map(|(id, mailbox)| (id.0.clone(), mailbox.clone()))
        .collect();
    let user = source.transport.user();
    let subject = Subject {
        what: soap::GET_STREAMING_EVENTS,
        user: &user,
        mailbox: anchor.as_str(),
    };
    let (url, response) = match open(source, &headers, &envelope, &subject).await {
        Ok(opened) => opened,
        Err(error) => return Ended::Failed(error),
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    // Bytes, not text: a character may be split between two chunks.
    let mut buffer: Vec<u8> = Vec::new();
    // How far the search for an envelope's end has got in `buffer`.
    let mut searched = 0;
    let mut announced = false;
    // Whether a whole envelope arrived on this connection.
    let mut answered = false;
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                return Ended::Failed(EwsError::Network {
                    url: url.to_string(),
                    detail: format!("the streaming connection broke: {error}"),
                })
            }
            // A connection that ends before Exchange said anything is a failure, not
            // Exchange's timeout: opening it again at once would spin.
            None if !answered => {
                return Ended::Failed(transport::network(
                    &url,
                    "the streaming connection closed before Exchange answered",
                ))
            }
            None => return Ended::Closed,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = envelope_end(&buffer, searched) {
            let envelope_bytes: Vec<u8> = buffer.drain(..end).collect();
            searched = 0;
            let envelope = String::from_utf8_lossy(&envelope_bytes);
            answered = true;
            let messages = match soap::response_messages(status, envelope.trim(), &subject) {
                Ok(messages) => messages,
                Err(error) => return Ended::Failed(error),
            };
            for message in &messages {
                if message.attribute("ResponseClass") == Some("Error") {
                    let lost: Vec<MailboxAddress> = message
                        .find("ErrorSubscriptionIds")
                        .map(|list| {
                            list.children
                                .iter()
                                .filter_map(|id| by_id.get(id.text.trim()).cloned())
                                .collect()
                        })
                        .unwrap_or_default();
                    if lost.is_empty() {
                        if let Err(error) = soap::check_message(message, &subject) {
                            return Ended::Failed(error);
                        }
                        continue;
                    }
                    subscriptions.retain(|(_, mailbox)| !lost.contains(mailbox));
                    if events
                        .send(StreamEvent::SubscriptionsLost(lost))
                        .await
                        .is_err()
                    {
                        return Ended::ReceiverGone;
                    }
                    continue;
                }
                if !announced {
                    announced = true;
                    let reopened = *opened_before;
                    *opened_before = true;
                    if events
                        .send(StreamEvent::Connected { reopened })
                        .await
                        .is_err()
                    {
                        return Ended::ReceiverGone;
                    }
                }
                if let Some(notifications) = message.child("Notifications") {
                    let mut changed: Vec<MailboxAddress> = Vec::new();
                    for notification in notifications.children_named("Notification") {
                        let id = notification
                            .child_text("SubscriptionId")
                            .unwrap_or_default();
                        let has_events = notification.children.iter().any(|child| {
                            child.name.ends_with("Event") && child.name != "StatusEvent"
                        });
                        if let Some(mailbox) = by_id.get(id) {
                            if has_events && !changed.contains(mailbox) {
                                changed.push(mailbox.clone());
                            }
                        }
                    }
                    for mailbox in changed {
                        if events.send(StreamEvent::Changed(mailbox)).await.is_err() {
                            return Ended::ReceiverGone;
                        }
                    }
                }
                if message.child_text("ConnectionStatus") == Some("Closed") {
                    return Ended::Closed;
                }
            }
        }
        // What is left is the start of an envelope still arriving; one that outgrows the limit
        // is not Exchange's (its notification envelopes are kilobytes).
        if buffer.len() > STREAMING_ENVELOPE_LIMIT {
            return Ended::Failed(EwsError::AnswerTooLarge {
                url: transport::shown_url(&url),
                what: "one streaming notification envelope",
                limit_bytes: STREAMING_ENVELOPE_LIMIT,
            });
        }
        // The end tag may straddle the next chunk: search again from a little before the end.
        searched = buffer.len().saturating_sub(16);
        if events.is_closed() {
            return Ended::ReceiverGone;
        }
    }
}

/// The most of one streaming envelope calbridge keeps while waiting for its end: Exchange sends
/// a notification envelope per batch of events, kilobytes each; this leaves room for hundreds
/// of events in one.
pub const STREAMING_ENVELOPE_LIMIT: usize = 4 * 1024 * 1024;

/// Opens the connection at the current EWS URL. When that URL cannot be reached and came from
/// Autodiscover, Autodiscover is asked again (see [`EwsSource`]) and the connection opened once
/// more at the URL it names.
async fn open(
    source: &EwsSource,
    headers: &[(String, String)],
    envelope: &Bytes,
    subject: &Subject<'_>,
) -> Result<(Url, Response<Incoming>), EwsError> {
    let target = source.target().await?;
    let error = match open_at(source, &target.url, headers, envelope, subject).await {
        Ok(response) => return Ok((target.url, response)),
        Err(error) if is_endpoint_failure(&target.url, &error) => error,
        Err(error) => return Err(error),
    };
    let next = source.recover(&target, error).await?;
    let response = open_at(source, &next.url, headers, envelope, subject).await?;
    Ok((next.url, response))
}

/// Sends `GetStreamingEvents` to `url`: the answer whose body streams, or why there is none.
async fn open_at(
    source: &EwsSource,
    url: &Url,
    headers: &[(String, String)],
    envelope: &Bytes,
    subject: &Subject<'_>,
) -> Result<Response<Incoming>, EwsError> {
    let response = source
        .transport
        .open(url, headers, envelope.clone())
        .await?;
    let status = response.status().as_u16();
    if status == 200 {
        return Ok(response);
    }
    // Anything else is a whole answer (a SOAP fault, a proxy's error page), read like the
    // answer of any other request.
    let answer = source
        .transport
        .collect(url, response, transport::SOAP_ANSWER_LIMIT)
        .await?;
    let text = answer.text();
    let root = match read_answer(url, status, &text, subject, Duration::ZERO) {
        Ok(root) => root,
        Err(AttemptFailed::Retry(error, _) | AttemptFailed::Final(error)) => return Err(error),
    };
    for message in soap::messages_in(status, &root, &text, subject)? {
        soap::check_message(&message, subject)?;
    }
    Err(EwsError::BadAnswer {
        what: subject.what.to_string(),
        detail: format!("HTTP {status} instead of a stream"),
    })
}

/// The end (exclusive) of the first complete SOAP envelope in `buffer`, searching for its end
/// tag from `from` on (what an earlier search already passed need not be searched again).
fn envelope_end(buffer: &[u8], from: usize) -> Option<usize> {
    const END: &[u8] = b"Envelope>";
    let mut from = from;
    while let Some(found) = buffer
        .get(from..)?
        .windows(END.len())
        .position(|window| window == END)
    {
        let at = from + found;
        let tag_start = buffer[..at].iter().rposition(|byte| *byte == b'<')?;
        if buffer[tag_start..].starts_with(b"</") {
            return Some(at + END.len());
        }
        from = at + 1;
    }
    None
}

/// Parses a stream's text for tests of the framing.
#[cfg(test)]
fn split_envelopes(text: &str) -> Vec<String> {
    let mut buffer = text.as_bytes().to_vec();
    let mut out = Vec::new();
    while let Some(end) = envelope_end(&buffer, 0) {
        let envelope: Vec<u8> = buffer.drain(..end).collect();
        out.push(String::from_utf8_lossy(&envelope).trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_up_to_a_minute_and_starts_again_after_a_served_connection() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.failed()).collect();
        let expected: Vec<Duration> = [
            500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000,
        ]
        .into_iter()
        .map(Duration::from_millis)
        .collect();
        assert_eq!(waits, expected);
        backoff.reset();
        assert_eq!(backoff.failed(), FIRST_RETRY);
    }

    #[test]
    fn envelopes_are_split_where_they_end() {
        let one = r#"<?xml version="1.0"?><s:Envelope xmlns:s="x"><s:Body><a>1</a></s:Body></s:Envelope>"#;
        let stream = format!("{one}{one}<?xml version=\"1.0\"?><s:Envelope");
        let parts = split_envelopes(&stream);
        assert_eq!(parts.len(), 2);
        assert!(crate::xml::parse(&parts[1]).is_ok());
    }
}
