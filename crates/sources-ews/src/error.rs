//! What can go wrong talking to Exchange, each with what to do about it.

use std::time::Duration;

use crate::config::ConfigError;

/// One error enum for the EWS layer. Messages name the server's answer and what to change;
/// they never carry a password, hash or token.
#[derive(Debug, thiserror::Error)]
pub enum EwsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `ErrorServerBusy`: Exchange's throttling asks to wait `back_off`.
    #[error("Exchange is busy (ErrorServerBusy) for {what}: retry after {} ms", back_off.as_millis())]
    ServerBusy { what: String, back_off: Duration },
    /// Exchange (HTTP 401) or Entra ID (the token request) refused the credentials; `detail`
    /// says which.
    #[error("the server refused the credentials of '{user}' ({detail}): check the password or client secret and the authentication method (auth = ntlm|basic|bearer); calbridge waits {} s before trying again", retry_in.as_secs())]
    Unauthorized {
        user: String,
        detail: String,
        /// How long calbridge will not try again (credential back-off).
        retry_in: Duration,
        /// For an NTLM logon over TLS: the SHA-1 thumbprint of the certificate its channel
        /// binding named (Extended Protection compares it with Exchange's own).
        bound_to: Option<String>,
    },
    /// `ErrorImpersonateUserDenied`.
    #[error("'{user}' may not impersonate {mailbox} (ErrorImpersonateUserDenied): grant it the ApplicationImpersonation role (New-ManagementRoleAssignment -Role ApplicationImpersonation -User {user}) or use access = \"delegate\"")]
    ImpersonationDenied { user: String, mailbox: String },
    /// `ErrorAccessDenied`.
    #[error("access to {mailbox} denied (ErrorAccessDenied: {message}): give '{user}' Reviewer rights on the calendar (Add-MailboxFolderPermission {mailbox}:\\Calendar -User {user} -AccessRights Reviewer) or use impersonation")]
    AccessDenied {
        user: String,
        mailbox: String,
        message: String,
    },
    /// `ErrorNonExistentMailbox` or an address no name resolution found.
    #[error(
        "no Exchange mailbox for {address} ({code}): check the user's e-mail address in the PBX"
    )]
    NonExistentMailbox { address: String, code: String },
    /// `ErrorExceededSubscriptionCount`.
    #[error("Exchange refused another streaming subscription for {mailbox} (ErrorExceededSubscriptionCount): other applications hold too many; remove stale subscriptions or raise the throttling policy's EwsMaxSubscriptions")]
    ExceededSubscriptionCount { mailbox: String },
    /// `ErrorExceededConnectionCount` on `GetStreamingEvents`: the account the connection is
    /// charged to (`user`: the impersonated anchor mailbox, else the service account) holds as
    /// many open streaming connections as Exchange's `HangingConnectionLimit` allows. `detail`
    /// is Exchange's message. Passing: it succeeds once one of those connections ends.
    #[error("Exchange allows only so many concurrent streaming connections for '{user}' (ErrorExceededConnectionCount: {detail}): raise HangingConnectionLimit in the EWS web.config on premises (Exchange Online allows 10 per mailbox) or use impersonation (access = \"impersonation\") so connections are charged to each group's anchor mailbox; calbridge reads these mailboxes by polling meanwhile")]
    ExceededConnectionCount { user: String, detail: String },
    /// `GetRooms` of a room list Exchange does not know (`ErrorNameResolutionNoResults`).
    #[error("Exchange knows no room list {address} (ErrorNameResolutionNoResults): check the address in [[directory]] rooms against Get-DistributionGroup -RecipientTypeDetails RoomList, or use rooms = \"all\"")]
    UnknownRoomList { address: String },
    /// Exchange refused to let the account decline a meeting in `mailbox` (an access or
    /// impersonation refusal, `code` and `detail` as Exchange answered).
    #[error("Exchange refused to let '{user}' decline a meeting in {mailbox} ({code}: {detail}): the account needs to act as that mailbox: the ApplicationImpersonation role (New-ManagementRoleAssignment -Role ApplicationImpersonation -User {user}) with access = \"impersonation\", or FullAccess on it (Add-MailboxPermission {mailbox} -User {user} -AccessRights FullAccess)")]
    DeclineRefused {
        user: String,
        mailbox: String,
        code: String,
        detail: String,
    },
    /// The meeting to decline is no longer in the mailbox's calendar (`ErrorItemNotFound`):
    /// deleted, moved or declined already. An expected outcome for the caller to note.
    #[error("the meeting is no longer in the calendar of {mailbox} (ErrorItemNotFound): it was deleted, moved or declined already")]
    MeetingNotFound { mailbox: String },
    /// The connection failed or broke.
    #[error("cannot reach {url}: {detail}")]
    Network { url: String, detail: String },
    /// Autodiscover found nothing usable.
    #[error("Autodiscover for {address} failed: {detail}. Set `autodiscover_url` or `ews_url`")]
    Autodiscover { address: String, detail: String },
    /// An answer larger than calbridge reads for its kind; reading stopped at the limit.
    #[error("the answer from {url} is larger than the {} calbridge reads for {what}, so calbridge stopped reading it: check that this URL is Exchange (a wrong URL, a proxy or a load balancer can answer with something else)", size(*limit_bytes))]
    AnswerTooLarge {
        url: String,
        what: &'static str,
        limit_bytes: usize,
    },
    /// An answer calbridge does not understand, or an EWS error code without its own variant.
    #[error("unexpected answer from Exchange for {what}: {detail}")]
    BadAnswer { what: String, detail: String },
}

impl EwsError {
    /// True when the same request may succeed later without a change of configuration.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EwsError::ServerBusy { .. }
                | EwsError::Network { .. }
                | EwsError::ExceededConnectionCount { .. }
        )
    }

    /// True when Exchange refused a streaming connection because the account it is charged to
    /// already holds as many as `HangingConnectionLimit` allows (`ErrorExceededConnectionCount`).
    pub fn is_connection_limit(&self) -> bool {
        matches!(self, EwsError::ExceededConnectionCount { .. })
    }

    /// How long to wait before retrying, when the server or the back-off says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EwsError::ServerBusy { back_off, .. } => Some(*back_off),
            EwsError::Unauthorized { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }

    /// True for errors about the whole source (credentials, rights of the service account),
    /// as opposed to one mailbox.
    pub fn is_credential_error(&self) -> bool {
        matches!(self, EwsError::Unauthorized { .. })
    }
}

/// A size in the unit that reads best: "32 MiB", "256 KiB".
fn size(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// Cuts a server's text for an error message.
pub use calbridge_domain::shorten;
