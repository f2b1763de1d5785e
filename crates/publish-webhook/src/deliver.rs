//! One delivery task per endpoint: reads the outbox after the endpoint's cursor, POSTs, and
//! moves the cursor only past what the endpoint accepted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use calbridge_net::body::{describe_size, read_capped, BodyError};
use calbridge_net::Backoff;
use calbridge_store::cluster::Turns;
use calbridge_store::{OutboxEvent, OutboxId, PersonKey, Store, StoreError};
use jiff::Timestamp;
use tokio::sync::{watch, Notify};

use crate::config::{DeliveryMode, Endpoint};
use crate::event::{
    body_of, signature, EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, TOPIC,
};

/// The cap on a receiver's answer to a POST. Its content is not used; a receiver answers with
/// a few bytes or nothing.
pub const RECEIVER_ANSWER_CAP: usize = 64 * 1024;

/// Events read per outbox query in `every_change` mode.
const EVERY_CHANGE_BATCH: u32 = 100;

/// Events looked at together in `latest_per_user` mode. Only changes within one window are
/// collapsed: after a very long outage of a very large organisation a person may get a stale
/// state followed by the newest one, which is still correct, just not minimal.
const LATEST_WINDOW: u32 = 10_000;

/// With nothing to send, the outbox is read again this often even without a wake-up, so
/// that events appended by another process (a second instance on the same database) go out.
const IDLE_POLL: Duration = Duration::from_secs(30);
/// The same with several instances, whose changes reach the outbox without waking this one.
const SHARED_IDLE_POLL: Duration = Duration::from_secs(1);

/// What the status page shows of one endpoint; written only by its delivery task.
#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointState {
    pub cursor: OutboxId,
    pub delivered_total: u64,
    pub last_success_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub next_attempt_at: Option<Timestamp>,
}

/// A poisoned lock only means another thread panicked while holding it; the plain data
/// inside is still good enough for a status page.
pub(crate) fn lock(state: &Mutex<EndpointState>) -> MutexGuard<'_, EndpointState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Events chosen from the outbox, to be POSTed in this order.
#[derive(Default)]
struct Plan {
    deliveries: VecDeque<Delivery>,
    /// The last outbox id the plan covers. Events up to it that are not in `deliveries` need
    /// no delivery (another topic, an unreadable payload, superseded by a newer change).
    through: OutboxId,
}

struct Delivery {
    id: OutboxId,
    body: Vec<u8>,
}

/// Why one POST did not count as delivered.
struct Failure {
    message: String,
    retry_after: Option<Duration>,
}

/// Whether a wait ended normally or because the service is shutting down.
enum Wait {
    Elapsed,
    ShuttingDown,
}

pub(crate) struct Deliverer {
    pub endpoint: Endpoint,
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub wake: Arc<Notify>,
    pub shutdown: watch::Receiver<bool>,
    pub state: Arc<Mutex<EndpointState>>,
    /// Whose turn it is to deliver this endpoint when several instances share the store.
    pub turns: Turns,
}

impl Deliverer {
    /// Runs until shutdown, delivering while it is this instance's turn for the endpoint.
    /// Nothing an endpoint or the store does ends it: failures are retried with backoff and
    /// shown in the status.
    pub async fn run(mut self) {
        let consumer = self.endpoint.consumer();
        let mut shutdown = self.shutdown.clone();
        loop {
            let turn = tokio::select! {
                turn = self.turns.wait(&consumer) => turn,
                _ = shutting_down(&mut shutdown) => return,
            };
            let mut turn = match turn {
                Ok(turn) => turn,
                Err(error) => {
                    if let Wait::ShuttingDown = self.fail(store_failure(&error)).await {
                        return;
                    }
                    continue;
                }
            };
            tokio::select! {
                _ = self.deliver(&consumer) => return,
                _ = turn.lost() => {
                    tracing::warn!(endpoint = %self.endpoint.name, "lost the turn to deliver this endpoint (the connection to PostgreSQL broke); waiting for it again");
                }
            }
        }
    }

    /// Delivers from the stored cursor on, until shutdown.
    async fn deliver(&mut self, consumer: &str) {
        let consumer = consumer.to_string();
        let mut cursor = loop {
            match self.store.get_outbox_cursor(&consumer).await {
                Ok(cursor) => break cursor,
                Err(error) => {
                    if let Wait::ShuttingDown = self.fail(store_failure(&error)).await {
                        return;
                    }
                }
            }
        };
        lock(&self.state).cursor = cursor;
        tracing::info!(
            endpoint = %self.endpoint.name,
            mode = self.endpoint.mode.as_str(),
            cursor = cursor.0,
            "webhook delivery started"
        );
        let mut plan = Plan {
            deliveries: VecDeque::new(),
            through: cursor,
        };
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let Some(delivery) = plan.deliveries.front() else {
                if plan.through > cursor {
                    cursor = plan.through;
                    self.save_cursor(&consumer, cursor).await;
                }
                match self.plan_after(cursor).await {
                    Ok(next) if next.through > cursor => plan = next,
                    Ok(_) => {
                        if let Wait::ShuttingDown = self.idle().await {
                            return;
                        }
                    }
                    Err(error) => {
                        if let Wait::ShuttingDown = self.fail(store_failure(&error)).await {
                            return;
                        }
                    }
                }
                continue;
            };
            match self.post(delivery).await {
                Ok(()) => {
                    cursor = delivery.id;
                    plan.deliveries.pop_front();
                    self.succeeded(cursor);
                    self.save_cursor(&consumer, cursor).await;
                }
                Err(failure) => {
                    if self.endpoint.mode == DeliveryMode::LatestPerUser {
                        // Plan again before the retry: changes that arrive during the outage
                        // supersede the ones waiting.
                        plan = Plan {
                            deliveries: VecDeque::new(),
                            through: cursor,
                        };
                    }
                    if let Wait::ShuttingDown = self.fail(failure).await {
                        return;
                    }
                }
            }
        }
    }

    /// What to send after `cursor`, according to the endpoint's mode.
    async fn plan_after(&self, cursor: OutboxId) -> Result<Plan, StoreError> {
        let limit = match self.endpoint.mode {
            DeliveryMode::EveryChange => EVERY_CHANGE_BATCH,
            DeliveryMode::LatestPerUser => LATEST_WINDOW,
        };
        let events = self.store.read_outbox_after(cursor, limit).await?;
        let through = events.last().map_or(cursor, |event| event.id);
        let newest_of_person: HashMap<&PersonKey, OutboxId> = match self.endpoint.mode {
            DeliveryMode::EveryChange => HashMap::new(),
            // Ids grow along the list, so the last one seen per person is the newest.
            DeliveryMode::LatestPerUser => events
                .iter()
                .filter(|event| event.topic == TOPIC)
                .filter_map(|event| Some((event.person.as_ref()?, event.id)))
                .collect(),
        };
        let superseded = |event: &OutboxEvent| {
            event.person.as_ref().is_some_and(|person| {
                newest_of_person
                    .get(person)
                    .is_some_and(|newest| *newest != event.id)
            })
        };
        let mut deliveries = VecDeque::new();
        for event in events.iter().filter(|event| event.topic == TOPIC) {
            if superseded(event) {
                continue;
            }
            match body_of(event) {
                Ok(body) => deliveries.push_back(Delivery { id: event.id, body }),
                Err(unreadable) => tracing::warn!(
                    endpoint = %self.endpoint.name,
                    "{unreadable}; skipping it"
                ),
            }
        }
        Ok(Plan {
            deliveries,
            through,
        })
    }

    async fn post(&self, delivery: &Delivery) -> Result<(), Failure> {
        let response = self
            .http
            .post(self.endpoint.url.clone())
            .timeout(self.endpoint.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::USER_AGENT,
                concat!("calbridge-webhook/", env!("CARGO_PKG_VERSION")),
            )
            .header(
                SIGNATURE_HEADER,
                signature(&self.endpoint.secret, &delivery.body),
            )
            .header(EVENT_ID_HEADER, delivery.id.0.to_string())
            .header(TIMESTAMP_HEADER, Timestamp::now().as_second().to_string())
            .body(delivery.body.clone())
            .send()
            .await
            // `without_url`: webhook URLs often carry the receiver's token.
            .map_err(|error| Failure {
                message: format!("cannot deliver: {}", error_chain(&error.without_url())),
                retry_after: None,
            })?;
        let status = response.status();
        if status.is_success() {
            // Reading the answer lets the connection be reused; its content does not matter.
            // A receiver that answers with more than the cap (or a body that never ends) has
            // still accepted the event, so it counts as delivered: sending it again would only
            // repeat it. The read stops at the cap and the connection is dropped.
            if let Err(BodyError::TooLarge { cap, .. }) =
                read_capped(response, RECEIVER_ANSWER_CAP).await
            {
                // The URL is not named: webhook URLs often carry the receiver's token.
                tracing::warn!(
                    endpoint = %self.endpoint.name,
                    "webhook endpoint accepted the event but answered with more than {} \
                     (the cap on a receiver's answer); the rest was not read",
                    describe_size(cap)
                );
            }
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(Failure {
            message: format!("the endpoint answered HTTP {status}"),
            retry_after,
        })
    }

    fn succeeded(&self, cursor: OutboxId) {
        let mut state = lock(&self.state);
        if state.consecutive_failures > 0 {
            tracing::info!(
                endpoint = %self.endpoint.name,
                failures = state.consecutive_failures,
                "webhook endpoint accepts events again"
            );
        }
        state.cursor = cursor;
        state.delivered_total += 1;
        state.last_success_at = Some(Timestamp::now());
        state.consecutive_failures = 0;
        state.next_attempt_at = None;
    }

    /// The cursor is saved after every accepted event. If saving fails the task goes on (the
    /// cursor in memory is right) and the next save covers it; only a restart in between
    /// sends the event again, which its id lets the receiver recognise.
    async fn save_cursor(&self, consumer: &str, cursor: OutboxId) {
        lock(&self.state).cursor = cursor;
        if let Err(error) = self.store.set_outbox_cursor(consumer, cursor).await {
            tracing::warn!(
                endpoint = %self.endpoint.name,
                cursor = cursor.0,
                "cannot save the webhook's outbox cursor (an event may be sent twice after a \
                 restart): {error}"
            );
        }
    }

    /// Records a failure and waits the backoff it calls for.
    async fn fail(&mut self, failure: Failure) -> Wait {
        let backoff = {
            let mut state = lock(&self.state);
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
            // A receiver's `Retry-After` may lengthen the wait (up to `max_backoff`) but never
            // shorten it: an endpoint that keeps failing is not asked faster because it says so.
            let backoff = self
                .backoff_policy()
                .delay_at_least_retry_after(state.consecutive_failures, failure.retry_after);
            let now = Timestamp::now();
            state.last_error = Some(failure.message.clone());
            state.last_error_at = Some(now);
            state.next_attempt_at = jiff::SignedDuration::try_from(backoff)
                .ok()
                .and_then(|wait| now.checked_add(wait).ok());
            // The first failure and then every tenth are logged, so an endpoint that is down
            // for an hour does not fill the log.
            if state.consecutive_failures == 1 || state.consecutive_failures % 10 == 0 {
                tracing::warn!(
                    endpoint = %self.endpoint.name,
                    failures = state.consecutive_failures,
                    retry_in_ms = backoff.as_millis() as u64,
                    "webhook delivery failed: {}",
                    failure.message
                );
            }
            backoff
        };
        self.sleep(backoff).await
    }

    /// `first_backoff` doubled per consecutive failure, capped, then scaled by a random
    /// factor in [0.5, 1] so that endpoints that failed together do not retry together.
    fn backoff_policy(&self) -> Backoff {
        Backoff::doubling(self.endpoint.first_backoff, self.endpoint.max_backoff)
            .with_equal_jitter()
    }

    async fn sleep(&mut self, duration: Duration) -> Wait {
        tokio::select! {
            _ = tokio::time::sleep(duration) => Wait::Elapsed,
            _ = shutting_down(&mut self.shutdown) => Wait::ShuttingDown,
        }
    }

    /// Waits for a new event (or the idle poll).
    async fn idle(&mut self) -> Wait {
        // Other instances' changes do not wake this one: with several, look more often.
        let poll = match self.turns {
            Turns::Everyone => IDLE_POLL,
            Turns::Exclusive(_) => SHARED_IDLE_POLL,
        };
        tokio::select! {
            _ = self.wake.notified() => Wait::Elapsed,
            _ = tokio::time::sleep(poll) => Wait::Elapsed,
            _ = shutting_down(&mut self.shutdown) => Wait::ShuttingDown,
        }
    }
}

/// Completes when shutdown was asked for (or the publisher that could ask for it is gone).
async fn shutting_down(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

fn store_failure(error: &StoreError) -> Failure {
    Failure {
        message: format!("cannot use the outbox: {error}"),
        retry_after: None,
    }
}

/// The error and its causes on one line: reqwest's own message is often just "error sending
/// request", with the useful part ("connection refused") in a source.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
