//! The publisher the service holds: records changes in the outbox and owns the delivery tasks.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use calbridge_net::TlsError;
use calbridge_store::cluster::Turns;
use calbridge_store::{NewOutboxEvent, OutboxId, Store};
use jiff::Timestamp;
use tokio::sync::{watch, Notify};
use tokio::task::{JoinError, JoinHandle};

use crate::config::{consumer_name, DeliveryMode, WebhookConfig};
use crate::deliver::{lock, Deliverer, EndpointState};
use crate::error::WebhookError;
use crate::event::{PresenceEvent, StoredChange, TOPIC};

/// Pending events are counted up to this many; beyond, the status says "at least".
const PENDING_COUNT_CAP: u32 = 10_000;

/// Sends presence changes to the configured webhook endpoints.
///
/// Cloning is cheap and every clone records into the same outbox and reports the same tasks.
#[derive(Clone)]
pub struct WebhookPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    endpoints: Vec<EndpointHandle>,
    tasks: Mutex<Vec<(String, JoinHandle<()>)>>,
}

struct EndpointHandle {
    name: String,
    mode: DeliveryMode,
    wake: Arc<Notify>,
    state: Arc<Mutex<EndpointState>>,
}

/// How many presence changes an endpoint has not been sent (or skipped) yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingCount {
    Exactly(u64),
    /// More than the status page counts.
    AtLeast(u64),
}

/// One endpoint, for the admin page and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStatus {
    pub name: String,
    pub mode: DeliveryMode,
    /// The newest outbox id the endpoint accepted or no longer needs.
    pub cursor: OutboxId,
    /// Presence changes after the cursor. In `latest_per_user` mode some of them will be
    /// skipped rather than sent.
    pub pending: PendingCount,
    /// Events accepted since this calbridge started.
    pub delivered_total: u64,
    pub last_success_at: Option<Timestamp>,
    /// Why the last attempt failed (never the URL or the secret).
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    /// Failed attempts since the last accepted event; 0 when the endpoint is healthy.
    pub consecutive_failures: u32,
    /// When the next retry is due, while failing.
    pub next_attempt_at: Option<Timestamp>,
}

/// How a delivery task ended.
#[derive(Debug)]
pub struct DeliveryTaskEnd {
    pub endpoint: String,
    /// `Ok` after shutdown; `Err` if the task panicked or was cancelled.
    pub outcome: Result<(), JoinError>,
}

impl WebhookPublisher {
    /// Checks the configurations, builds each endpoint's HTTP client and spawns one delivery
    /// task per endpoint; they resume from their cursors in `store` and run until `shutdown`
    /// completes. Must be called within a Tokio runtime.
    pub fn start(
        configs: Vec<WebhookConfig>,
        store: Arc<dyn Store>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<WebhookPublisher, WebhookError> {
        Self::start_sharing(configs, store, Turns::Everyone, shutdown)
    }

    /// [`WebhookPublisher::start`] for one of several instances on one store: each endpoint is
    /// delivered by whichever instance holds its turn, from the shared outbox and cursor.
    pub fn start_sharing(
        configs: Vec<WebhookConfig>,
        store: Arc<dyn Store>,
        turns: Turns,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<WebhookPublisher, WebhookError> {
        let mut names = HashSet::new();
        let mut prepared = Vec::with_capacity(configs.len());
        for config in &configs {
            let endpoint = config.validate()?;
            if !names.insert(endpoint.name.clone()) {
                return Err(WebhookError::DuplicateName {
                    endpoint: endpoint.name,
                });
            }
            let http = calbridge_net::build_http_client(config.extra_root_ca.as_deref())
                .map_err(|error| client_error(&endpoint.name, error))?;
            prepared.push((endpoint, http));
        }

        let (stop_sender, stop_receiver) = watch::channel(false);
        let mut endpoints = Vec::with_capacity(prepared.len());
        let mut tasks = Vec::with_capacity(prepared.len());
        for (endpoint, http) in prepared {
            let handle = EndpointHandle {
                name: endpoint.name.clone(),
                mode: endpoint.mode,
                wake: Arc::new(Notify::new()),
                state: Arc::new(Mutex::new(EndpointState::default())),
            };
            let deliverer = Deliverer {
                endpoint,
                http,
                store: store.clone(),
                wake: handle.wake.clone(),
                shutdown: stop_receiver.clone(),
                state: handle.state.clone(),
                turns: turns.clone(),
            };
            tasks.push((handle.name.clone(), tokio::spawn(deliverer.run())));
            endpoints.push(handle);
        }
        // The watch sender lives in its own task, so the delivery tasks see shutdown even if
        // the publisher was dropped long before.
        drop(stop_receiver);
        tokio::spawn(async move {
            shutdown.await;
            // Fails only when no delivery task is left to tell.
            let _ = stop_sender.send(true);
        });
        Ok(WebhookPublisher {
            inner: Arc::new(Inner {
                store,
                endpoints,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// Appends a presence change to the outbox and wakes the delivery tasks. Once this
    /// returns, the change survives a restart and every endpoint will get it.
    pub async fn record(&self, change: &PresenceEvent) -> Result<OutboxId, WebhookError> {
        let payload = serde_json::to_value(StoredChange::from_event(change)).map_err(|error| {
            WebhookError::Encode {
                address: change.person.address.to_string(),
                problem: error.to_string(),
            }
        })?;
        let id = self
            .inner
            .store
            .append_outbox(&NewOutboxEvent {
                topic: TOPIC.to_string(),
                person: Some(change.person.clone()),
                payload,
                created_at: Timestamp::now(),
            })
            .await
            .map_err(|source| WebhookError::Record {
                address: change.person.address.to_string(),
                source,
            })?;
        for endpoint in &self.inner.endpoints {
            endpoint.wake.notify_one();
        }
        Ok(id)
    }

    /// Every endpoint's delivery state, in configuration order.
    pub async fn status(&self) -> Result<Vec<EndpointStatus>, WebhookError> {
        let mut statuses = Vec::with_capacity(self.inner.endpoints.len());
        for endpoint in &self.inner.endpoints {
            let state = lock(&endpoint.state).clone();
            let pending = self.count_pending(state.cursor).await?;
            statuses.push(EndpointStatus {
                name: endpoint.name.clone(),
                mode: endpoint.mode,
                cursor: state.cursor,
                pending,
                delivered_total: state.delivered_total,
                last_success_at: state.last_success_at,
                last_error: state.last_error,
                last_error_at: state.last_error_at,
                consecutive_failures: state.consecutive_failures,
                next_attempt_at: state.next_attempt_at,
            });
        }
        Ok(statuses)
    }

    /// The outbox consumer name of an endpoint (`webhook:<name>`).
    pub fn consumer_name(endpoint_name: &str) -> String {
        consumer_name(endpoint_name)
    }

    /// Waits until every delivery task ended (after shutdown) and says how each did. The
    /// tasks are handed out once: a second call returns an empty list.
    pub async fn wait_stopped(&self) -> Vec<DeliveryTaskEnd> {
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let mut ends = Vec::with_capacity(tasks.len());
        for (endpoint, task) in tasks {
            ends.push(DeliveryTaskEnd {
                endpoint,
                outcome: task.await,
            });
        }
        ends
    }

    async fn count_pending(&self, cursor: OutboxId) -> Result<PendingCount, WebhookError> {
        let events = self
            .inner
            .store
            .read_outbox_after(cursor, PENDING_COUNT_CAP)
            .await
            .map_err(|source| WebhookError::Store { source })?;
        let count = events.iter().filter(|event| event.topic == TOPIC).count() as u64;
        Ok(if events.len() as u64 >= u64::from(PENDING_COUNT_CAP) {
            PendingCount::AtLeast(count)
        } else {
            PendingCount::Exactly(count)
        })
    }
}

fn client_error(endpoint: &str, error: TlsError) -> WebhookError {
    match error {
        TlsError::ExtraRootCa { path, problem } => WebhookError::ExtraRootCa {
            endpoint: endpoint.to_string(),
            path,
            problem,
        },
        TlsError::Setup { problem } => WebhookError::HttpClient {
            endpoint: endpoint.to_string(),
            problem,
        },
    }
}
