//! Microsoft Graph source.
//!
//! **Invariant:** this crate is the only calbridge code that speaks Graph JSON (its tokens come
//! from `calbridge_net::entra`). Everything it reads is converted into `calbridge_domain` types
//! before it leaves.
//!
//! Map: [`config`] (the `[[sources]]` entry), [`http`] (the request pipeline: limits,
//! throttling, retries, counters), [`batch`] (`$batch`), [`source`] (the operations: users,
//! window reads, delta, subscriptions), [`notification`] (webhook bodies), [`event`] (Graph
//! events → appointments).

pub mod batch;
pub use calbridge_net::clock;
pub mod config;
pub mod error;
pub mod event;
pub mod http;
pub mod notification;
pub mod source;

pub use calbridge_net::entra::{AuthError, TokenStatus};
pub use clock::{Clock, SystemClock};
pub use config::{
    ConfigError, GraphAuth, GraphCredential, GraphSourceConfig, DELEGATED_PERMISSIONS,
};
pub use error::{GraphAnswer, GraphError};
pub use event::{parse_event_page, EventError, GraphEvent};
pub use http::{GraphCounters, RetryPolicy};
pub use notification::{
    parse_notifications, validation_response, Notification, ParsedNotifications,
};
pub use source::{
    DeltaCursor, DeltaLink, DeltaOutcome, GraphSource, ListedSubscription, RenewOutcome,
    ResolvedUser, RoomList, SourceOptions, SubjectFetch, Subscription, SubscriptionRequest,
};
