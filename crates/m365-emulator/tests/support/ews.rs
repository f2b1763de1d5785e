//! EWS and Autodiscover requests over the harness's HTTPS client: the Basic header, SOAP
//! envelopes (impersonation header, calendar views, streaming subscriptions) and their
//! answers read back (the subscription id, how often a marker occurs).

use super::{Harness, Reply};

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

pub fn envelope(header: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><soap:Header><t:RequestServerVersion Version="Exchange2016"/>{header}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"#
    )
}

pub fn impersonating(address: &str) -> String {
    format!("<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{address}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>")
}

pub fn calendar_view(mailbox: Option<&str>, start: &str, end: &str, max: Option<u32>) -> String {
    let mailbox = mailbox
        .map(|address| format!("<t:Mailbox><t:EmailAddress>{address}</t:EmailAddress></t:Mailbox>"))
        .unwrap_or_default();
    let max = max
        .map(|max| format!(r#" MaxEntriesReturned="{max}""#))
        .unwrap_or_default();
    format!(
        r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:CalendarView{max} StartDate="{start}" EndDate="{end}"/><m:ParentFolderIds><t:DistinguishedFolderId Id="calendar">{mailbox}</t:DistinguishedFolderId></m:ParentFolderIds></m:FindItem>"#
    )
}

pub const GET_CALENDAR_FOLDER: &str = r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>"#;

/// POSTs `body` in an envelope with `header` to the emulator's EWS URL.
pub async fn ews(harness: &Harness, authorization: &str, header: &str, body: &str) -> Reply {
    harness
        .client
        .send(
            "POST",
            &harness.emulator.ready().ews_url,
            &[("authorization", authorization)],
            Some((
                "text/xml; charset=utf-8",
                envelope(header, body).into_bytes(),
            )),
        )
        .await
}

/// POSTs an Autodiscover (POX) request for `email` to the virtual host `host`.
pub async fn autodiscover(
    harness: &Harness,
    host: &str,
    email: &str,
    authorization: Option<&str>,
) -> Reply {
    let body = format!(
        r#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>{email}</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"#
    );
    let mut headers = vec![("host", host)];
    if let Some(value) = authorization {
        headers.push(("authorization", value));
    }
    harness
        .client
        .send(
            "POST",
            &harness
                .emulator
                .ready()
                .autodiscover_url
                .replace("autodiscover.xml", "Autodiscover.xml"),
            &headers,
            Some(("text/xml", body.into_bytes())),
        )
        .await
}

/// How often `needle` occurs in `text`.
pub fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Subscribes to ada's calendar as `auth` with `header` (impersonation or nothing) and
/// `folder` (the calendar, naming a mailbox for delegates); returns the subscription id.
pub async fn subscribe_calendar(
    harness: &Harness,
    auth: &str,
    header: &str,
    folder: &str,
) -> String {
    let subscribe = format!(
        r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds>{folder}</t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#
    );
    let reply = ews(harness, auth, header, &subscribe).await.text();
    subscription_id(&reply)
}

/// The `SubscriptionId` of a Subscribe answer; the test fails when there is none.
pub fn subscription_id(reply: &str) -> String {
    let Some(start) = reply.find("<m:SubscriptionId>").map(|index| index + 18) else {
        panic!("no subscription: {reply}")
    };
    let end = start + reply[start..].find('<').unwrap_or(0);
    let id = reply[start..end].to_string();
    assert!(!id.is_empty(), "{reply}");
    id
}

/// A GetStreamingEvents envelope for subscription `id` with a 30-minute connection timeout.
pub fn get_streaming_events(header: &str, id: &str) -> String {
    envelope(
        header,
        &format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{id}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>30</m:ConnectionTimeout></m:GetStreamingEvents>"),
    )
}
