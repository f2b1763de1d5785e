//! Webhooks: every presence change POSTed as signed JSON to configured endpoints.
//!
//! The service calls [`WebhookPublisher::record`] for each change; it is appended to the
//! store's outbox (topic `presence`) before anything is sent, so a change survives a crash or
//! an endpoint that is down for an hour. One delivery task per endpoint reads the outbox after
//! the endpoint's cursor (consumer `webhook:<name>` in the store) and POSTs each event; only
//! a 2xx answer moves the cursor. A failed POST is retried with exponential backoff and
//! jitter, capped at `max_backoff_seconds`:
//!
//! - `every_change` (default): the same event is retried and nothing after it is sent before
//!   it, so the receiver sees every change in order.
//! - `latest_per_user`: before each retry the pending events are planned again and only the
//!   newest of each person is sent (still in outbox order), so a receiver that comes back
//!   gets the current state of everyone rather than the whole history.
//!
//! The wire format (body, signature, headers) is documented in [`event`].
//!
//! **Invariant:** an endpoint's cursor only moves past an event that the endpoint accepted
//! or that its mode says to skip. Delivery is at least once: if the store cannot save the
//! cursor and calbridge restarts, the event is sent again with the same id.

mod config;
mod deliver;
mod error;
pub mod event;
mod publisher;

pub use config::{consumer_name, DeliveryMode, WebhookConfig};
pub use deliver::RECEIVER_ANSWER_CAP;
pub use error::WebhookError;
pub use event::PresenceEvent;
pub use publisher::{DeliveryTaskEnd, EndpointStatus, PendingCount, WebhookPublisher};
