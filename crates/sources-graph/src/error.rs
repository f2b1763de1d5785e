//! What can go wrong talking to Microsoft Graph, and what to do about it.

use std::time::Duration;

use serde::Deserialize;

use calbridge_net::entra::AuthError;

/// Graph's code and message from an error answer `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GraphAnswer {
    pub http_status: u16,
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

impl std::fmt::Display for GraphAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.http_status)?;
        if !self.code.is_empty() {
            write!(f, " {}", self.code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(request_id) = &self.request_id {
            write!(f, " (request id {request_id})")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default, rename = "innerError", alias = "innererror")]
    inner_error: Option<InnerError>,
}

#[derive(Deserialize)]
struct InnerError {
    #[serde(default, rename = "request-id")]
    request_id: Option<String>,
}

impl GraphAnswer {
    /// Reads Graph's error JSON; a body that is not one (an HTML page from a proxy) is kept
    /// as the message, shortened.
    pub fn from_body(http_status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(envelope) => GraphAnswer::from_envelope(http_status, envelope),
            Err(_) => GraphAnswer {
                http_status,
                code: String::new(),
                message: shorten(&String::from_utf8_lossy(body), 300),
                request_id: None,
            },
        }
    }

    /// Graph's words, shortened: they go into errors and logs, and an answer (or a server
    /// pretending to be Graph) may make them megabytes long.
    fn from_envelope(http_status: u16, envelope: ErrorEnvelope) -> Self {
        GraphAnswer {
            http_status,
            code: shorten(&envelope.error.code, 100),
            message: shorten(&envelope.error.message, 300),
            request_id: envelope
                .error
                .inner_error
                .and_then(|inner| inner.request_id)
                .map(|id| shorten(&id, 100)),
        }
    }

    /// The same from an already-parsed JSON value (a `$batch` sub-response body).
    pub fn from_json(http_status: u16, body: &serde_json::Value) -> Self {
        match serde_json::from_value::<ErrorEnvelope>(body.clone()) {
            Ok(envelope) => GraphAnswer::from_envelope(http_status, envelope),
            Err(_) => GraphAnswer {
                http_status,
                code: String::new(),
                message: shorten(&body.to_string(), 300),
                request_id: None,
            },
        }
    }
}

pub(crate) use calbridge_domain::shorten;

/// A Graph request that did not give what was asked. Expected outcomes (not found, access
/// denied by an application access policy, resync needed) are variants of their own so callers
/// can match on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("no token for Microsoft Graph: {0}")]
    Auth(Box<AuthError>),
    #[error("Graph: {what} not found ({answer})")]
    NotFound {
        what: String,
        answer: Box<GraphAnswer>,
    },
    #[error("Graph denied access to {what} ({answer}): if an application access policy or RBAC for Applications scopes the app, add this mailbox to its group; otherwise grant the app the Calendars.Read application permission with admin consent")]
    AccessDenied {
        what: String,
        answer: Box<GraphAnswer>,
    },
    #[error("{what} is not shared with the signed-in account ({answer}): the owner shares their calendar with the account in Outlook (Calendar → Share → the account, \"Can view all details\"), or an administrator gives the account Reviewer rights (Add-MailboxFolderPermission <mailbox>:\\Calendar -User <account> -AccessRights Reviewer)")]
    NotShared {
        what: String,
        answer: Box<GraphAnswer>,
    },
    /// A decline refused (403): the app lacks `Calendars.ReadWrite` for that mailbox.
    #[error("Graph refused to decline {what} ({answer}): declining needs the Calendars.ReadWrite application permission with admin consent (an application access policy can scope it to the rooms: New-ApplicationAccessPolicy -AccessRight RestrictAccess -PolicyScopeGroupId <group of the rooms>), or the delegated Calendars.ReadWrite for a signed-in account")]
    DeclineRefused {
        what: String,
        answer: Box<GraphAnswer>,
    },
    #[error("Graph refused the request for {what} ({answer})")]
    Forbidden {
        what: String,
        answer: Box<GraphAnswer>,
    },
    #[error("Graph did not accept the app's token for {what} ({answer}): check the app's API permissions and admin consent")]
    Unauthorized {
        what: String,
        answer: Box<GraphAnswer>,
    },
    #[error("Graph no longer knows the sync state of {what} ({answer}): a full read is needed")]
    ResyncRequired {
        what: String,
        answer: Box<GraphAnswer>,
    },
    #[error(
        "Graph is throttling requests for {what} ({answer}); gave up after {attempts} attempts"
    )]
    Throttled {
        what: String,
        retry_after: Option<Duration>,
        attempts: u32,
        answer: Box<GraphAnswer>,
    },
    #[error("Graph failed on {what} ({answer})")]
    ServerError {
        what: String,
        answer: Box<GraphAnswer>,
    },
    #[error("Graph rejected the request for {what} ({answer})")]
    BadRequest {
        what: String,
        answer: Box<GraphAnswer>,
    },
    #[error("Graph at {url} cannot be reached: {detail}")]
    Network { url: String, detail: String },
    #[error("Graph's answer for {what} was not read: {detail}")]
    AnswerTooLarge { what: String, detail: String },
    #[error("Graph gave an answer for {what} that calbridge does not understand: {detail}")]
    BadAnswer { what: String, detail: String },
}

impl From<AuthError> for GraphError {
    fn from(error: AuthError) -> Self {
        GraphError::Auth(Box::new(error))
    }
}

impl GraphError {
    /// Builds the error for a non-2xx answer. `what` names the object ("mailbox ann@contoso.com").
    pub fn from_answer(what: &str, answer: GraphAnswer, retry_after: Option<Duration>) -> Self {
        let what = what.to_string();
        let code = answer.code.to_ascii_lowercase();
        let answer = Box::new(answer);
        match answer.http_status {
            410 => GraphError::ResyncRequired { what, answer },
            _ if code == "syncstatenotfound"
                || code == "resyncrequired"
                || code == "syncstateinvalid" =>
            {
                GraphError::ResyncRequired { what, answer }
            }
            404 => GraphError::NotFound { what, answer },
            401 => GraphError::Unauthorized { what, answer },
            403 if code == "erroraccessdenied" || code == "accessdenied" => {
                GraphError::AccessDenied { what, answer }
            }
            403 => GraphError::Forbidden { what, answer },
            429 => GraphError::Throttled {
                what,
                retry_after,
                attempts: 1,
                answer,
            },
            500..=599 => GraphError::ServerError { what, answer },
            _ => GraphError::BadRequest { what, answer },
        }
    }

    /// As a delegated source sees it: a mailbox refused to the signed-in account is one whose
    /// calendar is not shared with it ("Get shared or delegated Outlook calendar").
    pub fn seen_by_account(self, delegated: bool) -> GraphError {
        match self {
            GraphError::AccessDenied { what, answer } if delegated => {
                GraphError::NotShared { what, answer }
            }
            other => other,
        }
    }

    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            GraphError::Throttled { .. }
            | GraphError::ServerError { .. }
            | GraphError::Network { .. } => true,
            GraphError::Auth(auth) => !auth.is_credential_problem(),
            _ => false,
        }
    }

    /// How long Graph asked to wait, when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GraphError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Graph's error code, e.g. `ErrorAccessDenied`.
    pub fn graph_code(&self) -> Option<&str> {
        match self {
            GraphError::NotFound { answer, .. }
            | GraphError::AccessDenied { answer, .. }
            | GraphError::NotShared { answer, .. }
            | GraphError::DeclineRefused { answer, .. }
            | GraphError::Forbidden { answer, .. }
            | GraphError::Unauthorized { answer, .. }
            | GraphError::ResyncRequired { answer, .. }
            | GraphError::Throttled { answer, .. }
            | GraphError::ServerError { answer, .. }
            | GraphError::BadRequest { answer, .. } => Some(answer.code.as_str()),
            _ => None,
        }
    }
}

/// Reads `Retry-After` as seconds. Graph sends seconds; an HTTP date is not used by Graph and
/// is treated as absent (the caller's back-off applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_access_policy_denial_is_access_denied_with_graphs_words() {
        // As Graph answers when an application access policy excludes the mailbox.
        let body = br#"{"error":{"code":"ErrorAccessDenied","message":"Access to OData is disabled.","innerError":{"request-id":"9b0c2c3e-1111","date":"2026-11-23T08:00:00"}}}"#;
        let error = GraphError::from_answer(
            "mailbox ann@contoso.com",
            GraphAnswer::from_body(403, body),
            None,
        );
        assert!(matches!(error, GraphError::AccessDenied { .. }));
        assert_eq!(error.graph_code(), Some("ErrorAccessDenied"));
        let message = error.to_string();
        assert!(message.contains("HTTP 403 ErrorAccessDenied: Access to OData is disabled. (request id 9b0c2c3e-1111)"), "{message}");
        assert!(!error.is_retryable());
    }

    #[test]
    fn gone_and_sync_state_codes_mean_resync() {
        let gone = GraphError::from_answer(
            "delta of x",
            GraphAnswer::from_body(
                410,
                br#"{"error":{"code":"SyncStateNotFound","message":"The sync state could not be found."}}"#,
            ),
            None,
        );
        assert!(matches!(gone, GraphError::ResyncRequired { .. }));
        let bad_request = GraphError::from_answer(
            "delta of x",
            GraphAnswer::from_body(400, br#"{"error":{"code":"resyncRequired","message":"m"}}"#),
            None,
        );
        assert!(matches!(bad_request, GraphError::ResyncRequired { .. }));
    }

    #[test]
    fn throttling_is_retryable_and_carries_retry_after() {
        let error = GraphError::from_answer(
            "mailbox x",
            GraphAnswer::from_body(
                429,
                br#"{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}"#,
            ),
            parse_retry_after(" 7 "),
        );
        assert!(error.is_retryable());
        assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        let html = GraphAnswer::from_body(502, b"<html>proxy error</html>");
        assert_eq!(html.message, "<html>proxy error</html>");
        assert!(GraphError::from_answer("x", html, None).is_retryable());
    }

    #[test]
    fn a_refused_mailbox_is_a_calendar_not_shared_for_a_signed_in_account() {
        let body = br#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied. Check credentials and try again."}}"#;
        let answer = || GraphAnswer::from_body(403, body);
        let delegated = GraphError::from_answer("calendar of bob@contoso.example", answer(), None)
            .seen_by_account(true);
        assert!(matches!(delegated, GraphError::NotShared { .. }));
        let message = delegated.to_string();
        assert!(
            message.starts_with(
                "calendar of bob@contoso.example is not shared with the signed-in account"
            ),
            "{message}"
        );
        assert!(message.contains("Share"), "{message}");
        let app = GraphError::from_answer("calendar of bob@contoso.example", answer(), None)
            .seen_by_account(false);
        assert!(matches!(app, GraphError::AccessDenied { .. }));
    }
}
