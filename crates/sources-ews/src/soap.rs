//! EWS SOAP envelopes out, response messages and faults in.

use std::time::Duration;

use crate::error::{shorten, EwsError};
use crate::xml::{self, escape, Element};

pub const NS_TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
pub const NS_MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
const NS_SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The version calbridge asks for: every operation it uses exists since Exchange 2013 SP1.
const REQUEST_VERSION: &str = "Exchange2013_SP1";
const DEFAULT_BACK_OFF: Duration = Duration::from_secs(5);
/// The operation name a [`Subject`] carries for the streaming connection.
pub const GET_STREAMING_EVENTS: &str = "GetStreamingEvents";

/// A complete request envelope; `impersonate` adds the `ExchangeImpersonation` header.
pub fn envelope(impersonate: Option<&str>, body: &str) -> String {
    let impersonation = impersonate
        .map(|address| {
            format!(
                "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>",
                escape(address)
            )
        })
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{NS_SOAP}" xmlns:t="{NS_TYPES}" xmlns:m="{NS_MESSAGES}"><soap:Header><t:RequestServerVersion Version="{REQUEST_VERSION}"/>{impersonation}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"#
    )
}

/// Who a failed request was about, for the error message.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub what: &'a str,
    pub user: &'a str,
    pub mailbox: &'a str,
}

/// Turns an EWS response code into an error.
pub fn code_error(
    code: &str,
    message: &str,
    values: &[(String, String)],
    subject: &Subject<'_>,
) -> EwsError {
    let value = |name: &str| {
        values
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    match code {
        "ErrorServerBusy" => EwsError::ServerBusy {
            what: subject.what.to_string(),
            back_off: value("BackOffMilliseconds")
                .and_then(|text| text.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_BACK_OFF),
        },
        "ErrorImpersonateUserDenied" | "ErrorImpersonationDenied" => {
            EwsError::ImpersonationDenied {
                user: subject.user.to_string(),
                mailbox: subject.mailbox.to_string(),
            }
        }
        "ErrorAccessDenied" | "ErrorFolderNotFound" => EwsError::AccessDenied {
            user: subject.user.to_string(),
            mailbox: subject.mailbox.to_string(),
            message: shorten(message, 200),
        },
        "ErrorNonExistentMailbox"
        | "ErrorMailRecipientNotFound"
        | "ErrorNameResolutionNoResults"
        | "ErrorInvalidSmtpAddress" => EwsError::NonExistentMailbox {
            address: value("SmtpAddress").unwrap_or_else(|| subject.mailbox.to_string()),
            code: code.to_string(),
        },
        "ErrorExceededSubscriptionCount" => EwsError::ExceededSubscriptionCount {
            mailbox: subject.mailbox.to_string(),
        },
        // On GetStreamingEvents the code means the hanging-connection limit. On other
        // operations Exchange uses it for EWSMaxConcurrency (too many requests at once), which
        // the streaming variant's advice does not fit; those stay unexpected answers.
        "ErrorExceededConnectionCount" if subject.what == GET_STREAMING_EVENTS => {
            EwsError::ExceededConnectionCount {
                // The caller knows whom the connection is charged to; this is who logged on.
                user: subject.user.to_string(),
                detail: shorten(message, 200),
            }
        }
        _ => EwsError::BadAnswer {
            what: subject.what.to_string(),
            detail: format!("{code}: {}", shorten(message, 300)),
        },
    }
}

fn message_values(element: &Element) -> Vec<(String, String)> {
    element
        .find("MessageXml")
        .map(|xml| {
            xml.children_named("Value")
                .filter_map(|value| {
                    value
                        .attribute("Name")
                        .map(|name| (name.to_string(), value.text.trim().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Parses an EWS answer into its response messages (the children of `ResponseMessages`),
/// turning SOAP faults and non-XML answers into errors.
pub fn response_messages(
    status: u16,
    body: &str,
    subject: &Subject<'_>,
) -> Result<Vec<Element>, EwsError> {
    let root = xml::parse(body).map_err(|error| EwsError::BadAnswer {
        what: subject.what.to_string(),
        detail: format!(
            "HTTP {status} that is not XML ({error}): {}",
            shorten(body, 200)
        ),
    })?;
    if let Some(error) = fault_error(&root, subject) {
        return Err(error);
    }
    messages_in(status, &root, body, subject)
}

/// The error a SOAP fault in `root` stands for, if there is one.
pub fn fault_error(root: &Element, subject: &Subject<'_>) -> Option<EwsError> {
    let fault = root.find("Fault")?;
    let code = fault
        .find("ResponseCode")
        .map(|code| code.text.trim().to_string())
        .or_else(|| {
            fault.child_text("faultcode").map(|code| {
                code.rsplit_once(':')
                    .map(|(_, local)| local)
                    .unwrap_or(code)
                    .to_string()
            })
        })
        .unwrap_or_default();
    let message = fault
        .find("Message")
        .map(|message| message.text.clone())
        .or_else(|| fault.child_text("faultstring").map(str::to_string))
        .unwrap_or_default();
    // Exchange's words go into errors and logs: never whole.
    Some(code_error(
        &shorten(&code, 100),
        &shorten(&message, 500),
        &message_values(fault),
        subject,
    ))
}

/// The response messages of a parsed answer without a fault; `body` is its text, for errors.
pub fn messages_in(
    status: u16,
    root: &Element,
    body: &str,
    subject: &Subject<'_>,
) -> Result<Vec<Element>, EwsError> {
    let messages = root
        .find("ResponseMessages")
        .ok_or_else(|| EwsError::BadAnswer {
            what: subject.what.to_string(),
            detail: format!(
                "HTTP {status} without ResponseMessages: {}",
                shorten(body, 200)
            ),
        })?;
    Ok(messages.children.clone())
}

/// Checks one response message: `Ok` for Success (and Warning), the mapped error otherwise.
pub fn check_message(message: &Element, subject: &Subject<'_>) -> Result<(), EwsError> {
    let class = message.attribute("ResponseClass").unwrap_or("Success");
    if class == "Error" {
        let code = message.child_text("ResponseCode").unwrap_or_default();
        let text = message.child_text("MessageText").unwrap_or_default();
        return Err(code_error(
            &shorten(code, 100),
            &shorten(text, 500),
            &message_values(message),
            subject,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_busy_fault_carries_the_back_off() {
        let body = r#"<s:Envelope xmlns:s="x"><s:Body><s:Fault><faultcode>a:ErrorServerBusy</faultcode><faultstring>busy</faultstring><detail><e:ResponseCode xmlns:e="e">ErrorServerBusy</e:ResponseCode><e:Message xmlns:e="e">busy</e:Message><t:MessageXml xmlns:t="t"><t:Value Name="BackOffMilliseconds">1234</t:Value></t:MessageXml></detail></s:Fault></s:Body></s:Envelope>"#;
        let subject = Subject {
            what: "FindItem",
            user: "svc",
            mailbox: "a@b.c",
        };
        let error = response_messages(500, body, &subject).unwrap_err();
        assert!(error.is_retryable());
        assert_eq!(error.retry_after(), Some(Duration::from_millis(1234)));
    }

    const EXCEEDED_CONNECTION_COUNT: &str = r#"<m:GetStreamingEventsResponseMessage ResponseClass="Error" xmlns:m="m"><m:MessageText>You have exceeded the available concurrent connections for your account. Try again once your other requests have completed.</m:MessageText><m:ResponseCode>ErrorExceededConnectionCount</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:GetStreamingEventsResponseMessage>"#;

    #[test]
    fn exceeded_connection_count_on_a_stream_is_the_connection_limit() {
        let message = crate::xml::parse(EXCEEDED_CONNECTION_COUNT).unwrap();
        let subject = Subject {
            what: GET_STREAMING_EVENTS,
            user: "CONTOSO\\svc",
            mailbox: "ada@contoso.example",
        };
        let error = check_message(&message, &subject).unwrap_err();
        assert!(error.is_connection_limit(), "{error}");
        assert!(error.is_retryable());
        assert_eq!(
            error.retry_after(),
            None,
            "the stream's own back-off applies"
        );
        match &error {
            EwsError::ExceededConnectionCount { user, detail } => {
                assert_eq!(user, "CONTOSO\\svc");
                assert!(detail.starts_with("You have exceeded"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let text = error.to_string();
        assert!(
            text.starts_with("Exchange allows only so many concurrent streaming connections for 'CONTOSO\\svc' (ErrorExceededConnectionCount"),
            "{text}"
        );
        assert!(text.contains("raise HangingConnectionLimit"), "{text}");
        assert!(text.contains("access = \"impersonation\""), "{text}");
        assert!(text.contains("by polling meanwhile"), "{text}");
        // As a SOAP fault, the other shape an error may come in, it means the same.
        let fault = r#"<s:Envelope xmlns:s="x"><s:Body><s:Fault><faultcode>a:ErrorExceededConnectionCount</faultcode><faultstring>You have exceeded the available concurrent connections for your account.</faultstring><detail><e:ResponseCode xmlns:e="e">ErrorExceededConnectionCount</e:ResponseCode></detail></s:Fault></s:Body></s:Envelope>"#;
        let error = response_messages(500, fault, &subject).unwrap_err();
        assert!(error.is_connection_limit(), "{error}");
    }

    #[test]
    fn exceeded_connection_count_on_other_operations_is_not_the_streaming_limit() {
        let message =
            crate::xml::parse(&EXCEEDED_CONNECTION_COUNT.replace("GetStreamingEvents", "FindItem"))
                .unwrap();
        let subject = Subject {
            what: "FindItem",
            user: "svc",
            mailbox: "ada@contoso.example",
        };
        let error = check_message(&message, &subject).unwrap_err();
        assert!(!error.is_connection_limit(), "{error}");
        assert!(
            error.to_string().contains("ErrorExceededConnectionCount"),
            "{error}"
        );
    }
}
