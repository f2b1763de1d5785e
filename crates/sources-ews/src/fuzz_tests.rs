//! Property-based fuzzing of what EWS and Autodiscover servers send: SOAP answers (response
//! messages, faults, streaming notifications) and Autodiscover's POX answer, through the
//! parsers every answer goes through (`xml::parse`, `soap::*`, `source::read_answer`).
//! Arbitrary bytes and mutated samples must give an element tree or a typed error, never a
//! panic, and deep nesting must be refused rather than overflow the stack.
//!
//! In the crate, not in `tests/`, because these parsers are private.

#[path = "../../net/tests/support/mutate.rs"]
mod mutate;

use std::time::Duration;

use mutate::{apply_bytes, byte_edits, config, deep_xml};
use proptest::prelude::*;
use url::Url;

use crate::soap::{self, Subject};
use crate::source::{read_answer, AttemptFailed};
use crate::xml;

const SUBJECT: Subject<'static> = Subject {
    what: "FindItem",
    user: "CONTOSO\\svc",
    mailbox: "ada@contoso.example",
};

/// A `FindItem` answer with a calendar view, as Exchange 2016 writes it.
const FIND_ITEM: &str = r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header><h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="6" Version="V2017_07_11" xmlns:h="http://schemas.microsoft.com/exchange/services/2006/types"/></s:Header><s:Body><m:FindItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages><m:FindItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:RootFolder TotalItemsInView="2" IncludesLastItemInRange="true"><t:Items><t:CalendarItem><t:ItemId Id="AAMk1" ChangeKey="DwAA"/><t:Subject>Weekly &amp; more</t:Subject><t:Sensitivity>Normal</t:Sensitivity><t:Start>2026-11-23T08:00:00Z</t:Start><t:End>2026-11-23T09:30:00Z</t:End><t:IsAllDayEvent>false</t:IsAllDayEvent><t:LegacyFreeBusyStatus>Busy</t:LegacyFreeBusyStatus><t:IsCancelled>false</t:IsCancelled><t:Organizer><t:Mailbox><t:Name>Ann</t:Name><t:EmailAddress>ann@contoso.example</t:EmailAddress></t:Mailbox></t:Organizer></t:CalendarItem><t:CalendarItem><t:ItemId Id="AAMk2"/><t:Start>2026-12-24T00:00:00Z</t:Start><t:End>2026-12-27T00:00:00Z</t:End><t:IsAllDayEvent>true</t:IsAllDayEvent><t:LegacyFreeBusyStatus>OOF</t:LegacyFreeBusyStatus><t:Subject><![CDATA[Holiday <3]]></t:Subject></t:CalendarItem></t:Items></m:RootFolder></m:FindItemResponseMessage><m:FindItemResponseMessage ResponseClass="Error"><m:MessageText>The SMTP address has no mailbox associated with it.</m:MessageText><m:ResponseCode>ErrorNonExistentMailbox</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:FindItemResponseMessage></m:ResponseMessages></m:FindItemResponse></s:Body></s:Envelope>"#;

/// A SOAP fault with `ErrorServerBusy` and its back-off.
const FAULT: &str = r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode><faultstring xml:lang="en-US">The server cannot service this request right now. Try again later.</faultstring><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode><e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">The server cannot service this request right now. Try again later.</e:Message><t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">29768</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#;

/// Two envelopes of a `GetStreamingEvents` stream: notifications, then the close.
const STREAM: &str = r#"<?xml version="1.0" encoding="utf-8"?><Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><soap11:Header xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/"><ServerVersionInfo xmlns="http://schemas.microsoft.com/exchange/services/2006/types" MajorVersion="15" MinorVersion="1"/></soap11:Header><soap11:Body xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/"><m:GetStreamingEventsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages><m:GetStreamingEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:ConnectionStatus>OK</m:ConnectionStatus><m:Notifications><m:Notification><t:SubscriptionId xmlns:t="t">GQBtYWlsMDE=</t:SubscriptionId><t:ModifiedEvent xmlns:t="t"><t:TimeStamp>2026-11-23T08:00:00Z</t:TimeStamp><t:ItemId Id="AAMk1"/></t:ModifiedEvent><t:StatusEvent xmlns:t="t"><t:Watermark>AQAAAA==</t:Watermark></t:StatusEvent></m:Notification></m:Notifications></m:GetStreamingEventsResponseMessage><m:GetStreamingEventsResponseMessage ResponseClass="Error"><m:MessageText>Subscription not found.</m:MessageText><m:ResponseCode>ErrorSubscriptionNotFound</m:ResponseCode><m:ErrorSubscriptionIds><t:SubscriptionId xmlns:t="t">GQBtYWlsMDI=</t:SubscriptionId></m:ErrorSubscriptionIds></m:GetStreamingEventsResponseMessage></m:ResponseMessages></m:GetStreamingEventsResponse></soap11:Body></Envelope><?xml version="1.0" encoding="utf-8"?><Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><soap11:Body xmlns:soap11="s"><m:GetStreamingEventsResponse xmlns:m="m"><m:ResponseMessages><m:GetStreamingEventsResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:ConnectionStatus>Closed</m:ConnectionStatus></m:GetStreamingEventsResponseMessage></m:ResponseMessages></m:GetStreamingEventsResponse></soap11:Body></Envelope>"#;

/// Autodiscover's POX answer with internal and external EWS URLs.
const AUTODISCOVER: &str = r#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"><User><DisplayName>Ada</DisplayName><AutoDiscoverSMTPAddress>ada@contoso.example</AutoDiscoverSMTPAddress></User><Account><AccountType>email</AccountType><Action>settings</Action><Protocol><Type>EXCH</Type><EwsUrl>https://mail.contoso.example/EWS/Exchange.asmx</EwsUrl></Protocol><Protocol><Type>EXPR</Type><EwsUrl>https://outlook.contoso.example/EWS/Exchange.asmx</EwsUrl></Protocol><Protocol><Type>WEB</Type></Protocol></Account></Response></Autodiscover>"#;

const SAMPLES: [&str; 4] = [FIND_ITEM, FAULT, STREAM, AUTODISCOVER];

/// Runs every answer parser on `bytes` and walks the tree the way the source, the stream and
/// Autodiscover do. None may panic.
fn parse_everything(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let url = Url::parse("https://mail.contoso.example/EWS/Exchange.asmx").expect("a URL");
    for status in [200, 404, 500, 503] {
        match read_answer(&url, status, &text, &SUBJECT, Duration::from_secs(1)) {
            Ok(root) => {
                if let Ok(messages) = soap::messages_in(status, &root, &text, &SUBJECT) {
                    for message in &messages {
                        let _ = soap::check_message(message, &SUBJECT);
                    }
                }
            }
            Err(AttemptFailed::Retry(error, delay)) => {
                // A server-named back-off is bounded, whatever the answer says.
                assert!(delay <= Duration::from_secs(3600), "{delay:?}");
                let _ = error.to_string();
            }
            Err(AttemptFailed::Final(error)) => {
                let _ = error.to_string();
            }
        }
    }
    let _ = soap::response_messages(200, &text, &SUBJECT);
    if let Ok(root) = xml::parse(&text) {
        let _ = soap::fault_error(&root, &SUBJECT);
        // What Autodiscover and the stream look for.
        for name in [
            "Error",
            "Account",
            "Notifications",
            "ErrorSubscriptionIds",
            "Protocol",
        ] {
            if let Some(found) = root.find(name) {
                for protocol in found.children_named("Protocol") {
                    let _ = protocol.child_text("EwsUrl").map(Url::parse);
                }
                let _ = found.child_text("Action");
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_an_ews_parser(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        parse_everything(&bytes);
    }

    #[test]
    fn mutated_ews_and_autodiscover_answers_parse_or_fail_with_a_typed_error(
        sample in 0usize..SAMPLES.len(),
        edits in byte_edits(),
    ) {
        parse_everything(&apply_bytes(SAMPLES[sample].as_bytes(), &edits));
    }

    #[test]
    fn element_soup_from_ews_names_never_panics(
        parts in prop::collection::vec(
            prop_oneof![
                Just("<s:Envelope>"), Just("</s:Envelope>"), Just("<s:Body>"), Just("</s:Body>"),
                Just("<s:Fault>"), Just("</s:Fault>"), Just("<m:ResponseMessages>"),
                Just("</m:ResponseMessages>"), Just("<m:FindItemResponseMessage ResponseClass=\"Error\">"),
                Just("</m:FindItemResponseMessage>"), Just("<m:ResponseCode>"), Just("</m:ResponseCode>"),
                Just("ErrorServerBusy"), Just("ErrorExceededConnectionCount"), Just("NoError"),
                Just("<t:Value Name=\"BackOffMilliseconds\">"), Just("</t:Value>"),
                Just("99999999999999999999999"), Just("<t:MessageXml>"), Just("</t:MessageXml>"),
                Just("<faultcode>"), Just("</faultcode>"), Just("a:"), Just("&amp;"), Just("&bogus;"),
                Just("<![CDATA[x]]>"), Just("<x/>"), Just("<Account>"), Just("</Account>"),
                Just("<Action>redirectUrl</Action>"), Just("<RedirectUrl>http://x</RedirectUrl>"),
            ],
            0..40,
        )
    ) {
        parse_everything(parts.concat().as_bytes());
    }
}

#[test]
fn ten_thousand_deep_xml_is_refused_without_overflowing_the_stack() {
    let envelope_start = r#"<s:Envelope xmlns:s="x"><s:Body><m:ResponseMessages>"#;
    let envelope_end = "</m:ResponseMessages></s:Body></s:Envelope>";
    let deep = deep_xml(10_000, envelope_start, envelope_end);
    let error = xml::parse(&deep).expect_err("10,000 levels are refused");
    assert!(error.contains("deeper than"), "{error}");
    let error = soap::response_messages(200, &deep, &SUBJECT).expect_err("not an EWS answer");
    assert!(error.to_string().contains("deeper than"), "{error}");
    parse_everything(deep.as_bytes());
    // Unclosed, as a stream that stops halfway.
    parse_everything(
        deep_xml(10_000, envelope_start, "")
            .replace("</a>", "")
            .as_bytes(),
    );
    // Real EWS answers are far shallower than the limit and still parse.
    assert!(xml::parse(FIND_ITEM).is_ok());
    assert!(xml::parse(&deep_xml(100, envelope_start, envelope_end)).is_ok());
}
