//! Exchange Web Services source.
//!
//! **Invariant:** this is the only calbridge code that speaks SOAP, EWS or Autodiscover. It hands
//! out `calbridge_domain` types: [`MailboxAddress`](calbridge_domain::MailboxAddress),
//! [`Appointment`](calbridge_domain::Appointment) (all-day items as local dates).
//!
//! - [`EwsSource`]: Autodiscover (answers trusted over https only; cached, failures too;
//!   [`EwsSource::rediscover`]), `ResolveNames`, `FindItem` + `CalendarView`,
//!   `GetUserAvailability`, `Subscribe`/`Unsubscribe`; with a bearer token every request
//!   impersonates a mailbox, as Exchange Online requires; `GetRoomLists`/`GetRooms`
//!   ([`EwsSource::rooms`]) and the decline of a meeting (`CreateItem` with a `DeclineItem`,
//!   [`EwsSource::decline`]) acting as the mailbox that holds it.
//! - [`StreamingConnection`]: one `GetStreamingEvents` connection, re-opened after every close;
//!   one refused for Exchange's hanging-connection limit ([`EwsError::ExceededConnectionCount`],
//!   [`EwsError::is_connection_limit`]) is reported and retried with the back-off (doubling to
//!   a minute) until a slot frees.
//! - NTLMv2, Basic or Bearer, on connections this crate owns (NTLM authenticates a socket).
//!   NTLM logons over TLS carry the channel binding and MIC that Exchange's Extended
//!   Protection checks.
//! - Every answer is read up to a limit by kind ([`SOAP_ANSWER_LIMIT`],
//!   [`AUTODISCOVER_ANSWER_LIMIT`], [`STREAMING_ENVELOPE_LIMIT`]); a bigger one is
//!   [`EwsError::AnswerTooLarge`], never read whole.

mod autodiscover;
mod channel_binding;
mod config;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod ntlm;
mod rooms;
mod soap;
mod source;
mod streaming;
mod transport;
mod xml;

pub use autodiscover::{candidates as autodiscover_candidates, Discovered};
pub use config::{
    validate_ews_url, AuthMethod, BearerConfig, ConfigError, EwsSourceConfig, MailboxAccess,
    ServerSide, WindowRead,
};
pub use error::EwsError;
pub use rooms::EwsRoomList;
pub use source::{EwsSource, FreeBusy, SubscriptionId};
pub use streaming::STREAMING_ENVELOPE_LIMIT;
pub use streaming::{StreamEvent, StreamingConnection};
pub use transport::{
    AnswerLimit, LogonProbe, AUTODISCOVER_ANSWER_LIMIT, FIRST_CREDENTIAL_BACKOFF,
    MAX_CREDENTIAL_BACKOFF, SOAP_ANSWER_LIMIT,
};
