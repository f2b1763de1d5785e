//! Exchange Web Services source.
//!
//! **Invariant:** this is the only calbridge code that speaks SOAP, EWS or Autodiscover. It hands
//! out `calbridge_domain` types: [`MailboxAddress`](calbridge_domain::MailboxAddress),
//! [`Appointment`](calbridge_domain::Appointment) (all-day items as local dates).
//!
//! - [`EwsSource`]: Autodiscover (answers trusted over https only; cached, failures too;
//!   [`EwsSource::rediscover`]), `ResolveNames`, `FindItem` + `CalendarView`,
//!   `GetUserAvailability`, `Subscribe`/`Unsubscribe`; with a bearer token every request
//!   impersonates a mailbox, as Exchange Online requires.
//! - [`StreamingConnection`]: one `GetStreamingEvents` connection, re-opened after every close;
//!   one refused for Exchange's hanging-connection limit ([`EwsError::ExceededConnectionCount`],
//!   [`EwsError::is_connection_limit`]) is reported and retried with the back-off (doubling to
//!   a minute) until a slot frees.
//! - NTLMv2, Basic or Bearer, on connections this crate owns (NTLM authenticates a socket).

mod autodiscover;
mod config;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod ntlm;
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
pub use source::{EwsSource, FreeBusy, SubscriptionId};
pub use streaming::{StreamEvent, StreamingConnection};
pub use transport::{FIRST_CREDENTIAL_BACKOFF, MAX_CREDENTIAL_BACKOFF};
