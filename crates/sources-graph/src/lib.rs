//! Microsoft Graph source.
//!
//! **Invariant:** this crate is the only calbridge code that speaks Graph JSON or talks to
//! Entra ID. Everything it reads is converted into `calbridge_domain` types before it leaves.
//!
//! Map: [`config`] (the `[[sources]]` entry), [`auth`] (tokens from Entra ID), [`http`] (the
//! request pipeline: limits, throttling, retries, counters), [`batch`] (`$batch`),
//! [`source`] (the operations: users, window reads, delta, subscriptions), [`notification`]
//! (webhook bodies), [`event`] (Graph events → appointments).

pub mod auth;
pub mod batch;
pub mod clock;
pub mod config;
pub mod error;
pub mod event;
pub mod http;
pub mod notification;
pub mod source;

pub use auth::{AuthError, TokenStatus};
pub use clock::{Clock, SystemClock};
pub use config::{ConfigError, GraphCredential, GraphSourceConfig};
pub use error::{GraphAnswer, GraphError};
pub use event::{parse_event_page, EventError, GraphEvent};
pub use http::{GraphCounters, RetryPolicy};
pub use notification::{
    parse_notifications, validation_response, Notification, ParsedNotifications,
};
pub use source::{
    DeltaCursor, DeltaLink, DeltaOutcome, GraphSource, RenewOutcome, ResolvedUser, SourceOptions,
    SubjectFetch, Subscription, SubscriptionRequest,
};
