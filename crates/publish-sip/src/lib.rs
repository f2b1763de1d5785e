//! The SIP presence publisher: each person's presence decision goes out as a SIP PUBLISH
//! (RFC 3903, `Event: presence`) carrying a PIDF document (RFC 3863) with RPID (RFC 4480), so
//! that any SIP presence server (Kamailio, OpenSIPS, FreeSWITCH, Asterisk, commercial PBXs)
//! can show it on phones and soft clients.
//!
//! **Invariant:** only this crate speaks SIP and PIDF. The service hands it
//! [`PresenceState`]s by SIP URI; nothing SIP-shaped leaves it except [`PublishStatus`].
//!
//! Life cycle per URI: an initial PUBLISH with the body and `Expires`, the `SIP-ETag` of the 2xx
//! is kept; a refresh at 80 % of the granted lifetime carries no body but `SIP-If-Match`; a
//! change is a modify (body + `SIP-If-Match`); 412 Conditional Request Failed (the server lost
//! the publication, e.g. after a restart) leads to a fresh initial PUBLISH; 423 Interval Too
//! Brief raises `Expires` to the server's `Min-Expires`; [`SipPublisher::remove`] sends
//! `Expires: 0`. 401/407 challenges are answered with MD5 digest credentials.
//!
//! [`SipPublisher::set`] never blocks: it records the desired state and wakes one worker task,
//! which publishes only changes, at most `max_requests_per_second`, retries failures with
//! backoff, and always sends the latest desired state (a burst of changes for one URI ends in
//! one PUBLISH of the last one).

mod config;
mod digest;
#[cfg(test)]
mod fuzz_tests;
mod message;
mod pidf;
mod publisher;
mod transport;

pub use config::{
    uri_for, Activity, ActivityMapping, Basic, PresenceState, RpidMapping, ShowAsCategory,
    SipPublisherConfig, Transport,
};
pub use publisher::{
    Publication, PublishCounters, PublishKind, PublishOutcome, PublishStatus, SipPublisher,
};

/// Everything that can go wrong while publishing. Messages never contain the digest password
/// or response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SipError {
    #[error("SIP publisher configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Transport(String),
    #[error("no answer from the presence server within {0:?}")]
    Timeout(std::time::Duration),
    #[error("malformed SIP message from the presence server: {0}")]
    Malformed(String),
    #[error("SIP digest authentication: {0}")]
    Auth(String),
    #[error("the presence server answered {status} {reason}")]
    Rejected { status: u16, reason: String },
}

impl SipError {
    /// Whether trying again later may succeed without a configuration change.
    pub fn is_retryable(&self) -> bool {
        match self {
            SipError::Io(_) | SipError::Transport(_) | SipError::Timeout(_) => true,
            SipError::Malformed(_) => true,
            SipError::Rejected { status, .. } => *status == 408 || *status >= 500,
            SipError::Config(_) | SipError::Auth(_) => false,
        }
    }
}
