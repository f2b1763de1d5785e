//! The request pipeline every Graph call goes through: token, concurrency limits, throttling
//! and retries, and the counters the metrics page shows. The TLS client and the back-off
//! arithmetic come from `calbridge_net`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calbridge_net::body::{read_capped, BodyError};
use calbridge_net::tls::error_chain;
use calbridge_net::Backoff;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::{parse_retry_after, GraphAnswer, GraphError};
use calbridge_net::entra::tokens::lock;
use calbridge_net::entra::TokenProvider;

/// How often and how long to retry throttled or failed requests.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First back-off when Graph gives no `Retry-After`; doubled per attempt, with jitter.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// A `Retry-After` longer than this is cut to it, so one odd answer cannot stall a
    /// mailbox for hours; Graph's own values are seconds to a few minutes.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The back-off between attempts: exponential with "equal jitter" (half fixed, half
    /// random), so many mailboxes throttled at once do not come back in lock-step; a
    /// `Retry-After` replaces it, cut to `max_retry_after`.
    pub fn backoff_policy(&self) -> Backoff {
        Backoff::doubling(self.first_backoff, self.max_backoff)
            .with_equal_jitter()
            .with_max_retry_after(self.max_retry_after)
    }

    /// The wait before attempt `attempt + 1` when Graph named no wait of its own.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff_policy().delay_for(attempt)
    }
}

/// The default cap on one Graph answer's body. A `$batch` of 20 calendar pages of 500 events
/// with subjects is a few MiB; 64 MiB leaves a wide margin and still bounds what one answer
/// (or a chunked body that never ends) can take.
pub const GRAPH_ANSWER_CAP: usize = 64 * 1024 * 1024;

/// Counters for the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GraphCounters {
    /// HTTP requests sent to Graph (a `$batch` counts once).
    pub requests_sent: u64,
    /// Sub-requests carried inside `$batch` requests.
    pub batch_sub_requests: u64,
    /// 429 answers seen, top-level and inside batches.
    pub throttled_answers: u64,
    /// Requests and sub-requests sent again after a 429, 5xx or network error.
    pub retries: u64,
    /// Token requests sent to Entra ID.
    pub token_requests: u64,
    /// Events Graph returned that could not be converted and were skipped.
    pub events_skipped: u64,
}

#[derive(Default)]
pub(crate) struct AtomicCounters {
    pub requests_sent: AtomicU64,
    pub batch_sub_requests: AtomicU64,
    pub throttled_answers: AtomicU64,
    pub retries: AtomicU64,
    pub events_skipped: AtomicU64,
}

impl AtomicCounters {
    pub fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

/// Per-mailbox state: Graph's MailboxConcurrency limit, and the time until which Graph asked
/// this mailbox to wait.
struct MailboxGate {
    permits: Semaphore,
    parked_until: Mutex<Option<Instant>>,
}

impl MailboxGate {
    fn park_until(&self, until: Instant) {
        let mut parked = lock(&self.parked_until);
        if parked.is_none_or(|current| current < until) {
            *parked = Some(until);
        }
    }

    async fn wait_until_unparked(&self) {
        loop {
            let until = *lock(&self.parked_until);
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }
}

/// One Graph request before the token is added.
#[derive(Debug, Clone)]
pub struct GraphRequest {
    pub method: reqwest::Method,
    /// Absolute URL.
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<serde_json::Value>,
    /// Names the object in errors: "mailbox ann@contoso.com", "$batch of 20 mailboxes".
    pub what: String,
}

impl GraphRequest {
    pub fn get(url: String, what: String) -> Self {
        GraphRequest {
            method: reqwest::Method::GET,
            url,
            headers: Vec::new(),
            body: None,
            what,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn json(mut self, method: reqwest::Method, body: serde_json::Value) -> Self {
        self.method = method;
        self.body = Some(body);
        self
    }
}

/// A successful (2xx) answer.
#[derive(Debug, Clone)]
pub struct GraphResponse {
    pub http_status: u16,
    pub body: Vec<u8>,
}

impl GraphResponse {
    pub fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, GraphError> {
        serde_json::from_slice(&self.body).map_err(|error| GraphError::BadAnswer {
            what: what.to_string(),
            detail: format!(
                "HTTP {} with unexpected JSON ({error}): {}",
                self.http_status,
                crate::error::shorten(&String::from_utf8_lossy(&self.body), 200)
            ),
        })
    }
}

/// The shared pipeline. Cheap to share behind an `Arc`.
pub struct GraphHttp {
    client: reqwest::Client,
    tokens: Arc<TokenProvider>,
    global_permits: Semaphore,
    per_mailbox_concurrency: usize,
    mailboxes: Mutex<HashMap<String, Arc<MailboxGate>>>,
    pub(crate) counters: AtomicCounters,
    pub(crate) retry: RetryPolicy,
    max_answer_bytes: usize,
}

enum Attempt {
    Answer {
        http_status: u16,
        retry_after: Option<Duration>,
        body: Vec<u8>,
    },
    NetworkError(String),
    /// The body passed the cap; what was read is dropped.
    TooLarge(calbridge_net::body::BodyError),
}

impl GraphHttp {
    pub fn new(
        client: reqwest::Client,
        tokens: Arc<TokenProvider>,
        max_concurrent_requests: usize,
        per_mailbox_concurrency: usize,
        retry: RetryPolicy,
    ) -> Self {
        GraphHttp {
            client,
            tokens,
            global_permits: Semaphore::new(max_concurrent_requests),
            per_mailbox_concurrency,
            mailboxes: Mutex::new(HashMap::new()),
            counters: AtomicCounters::default(),
            retry,
            max_answer_bytes: GRAPH_ANSWER_CAP,
        }
    }

    /// Caps every answer's body at `bytes` instead of [`GRAPH_ANSWER_CAP`].
    pub fn with_max_answer_bytes(mut self, bytes: usize) -> Self {
        self.max_answer_bytes = bytes;
        self
    }

    /// The HTTP client, which also posts the token requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    pub fn counters(&self) -> GraphCounters {
        GraphCounters {
            requests_sent: self.counters.requests_sent.load(Ordering::Relaxed),
            batch_sub_requests: self.counters.batch_sub_requests.load(Ordering::Relaxed),
            throttled_answers: self.counters.throttled_answers.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            token_requests: self.tokens.token_requests(),
            events_skipped: self.counters.events_skipped.load(Ordering::Relaxed),
        }
    }

    fn gate(&self, mailbox: &str) -> Arc<MailboxGate> {
        let mut mailboxes = lock(&self.mailboxes);
        mailboxes
            .entry(mailbox.to_ascii_lowercase())
            .or_insert_with(|| {
                Arc::new(MailboxGate {
                    permits: Semaphore::new(self.per_mailbox_concurrency),
                    parked_until: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Parks a mailbox: its later requests wait until then, other mailboxes go on.
    pub fn park_mailbox(&self, mailbox: &str, delay: Duration) {
        self.gate(mailbox).park_until(Instant::now() + delay);
    }

    /// When the mailbox may be asked again, if Graph told it to wait.
    pub fn mailbox_parked_until(&self, mailbox: &str) -> Option<Instant> {
        let gate = self.gate(mailbox);
        let parked = *lock(&gate.parked_until);
        parked.filter(|until| *until > Instant::now())
    }

    /// The wait Graph asked for, or the back-off for this attempt.
    pub(crate) fn delay_for(&self, retry_after: Option<Duration>, attempt: u32) -> Duration {
        self.retry
            .backoff_policy()
            .delay_obeying_retry_after(attempt, retry_after)
    }

    /// Sends a request with retries. `mailbox` (a user id or address) applies the per-mailbox
    /// limit and parking; requests that touch no single mailbox (`$batch`, subscriptions) pass
    /// `None`.
    pub async fn send(
        &self,
        request: &GraphRequest,
        mailbox: Option<&str>,
    ) -> Result<GraphResponse, GraphError> {
        let gate = mailbox.map(|mailbox| self.gate(mailbox));
        let mut attempt: u32 = 0;
        let mut token_refreshed_after_401 = false;
        loop {
            attempt += 1;
            if let Some(gate) = &gate {
                gate.wait_until_unparked().await;
            }
            let outcome = {
                // Closed semaphores never happen (they are never closed); treat as a bug-free
                // no-permit path rather than panicking.
                let _mailbox_permit = match &gate {
                    Some(gate) => gate.permits.acquire().await.ok(),
                    None => None,
                };
                let _global_permit = self.global_permits.acquire().await.ok();
                let token = self.tokens.access_token(&self.client).await?;
                AtomicCounters::add(&self.counters.requests_sent, 1);
                let outcome = self.attempt(request, &token).await;
                if let Attempt::Answer {
                    http_status: 401, ..
                } = &outcome
                {
                    self.tokens.forget_token(&token);
                }
                outcome
            };
            match outcome {
                Attempt::Answer {
                    http_status,
                    body,
                    retry_after: _,
                } if (200..300).contains(&http_status) => {
                    return Ok(GraphResponse { http_status, body })
                }
                Attempt::Answer {
                    http_status: 401, ..
                } if !token_refreshed_after_401 => {
                    // A token revoked or rotated early: one fresh token, then give up.
                    token_refreshed_after_401 = true;
                    AtomicCounters::add(&self.counters.retries, 1);
                    continue;
                }
                Attempt::Answer {
                    http_status,
                    retry_after,
                    body,
                } if matches!(http_status, 429 | 502 | 503 | 504) => {
                    if http_status == 429 {
                        AtomicCounters::add(&self.counters.throttled_answers, 1);
                    }
                    let delay = self.delay_for(retry_after, attempt);
                    if let Some(gate) = &gate {
                        if http_status == 429 {
                            gate.park_until(Instant::now() + delay);
                        }
                    }
                    if attempt >= self.retry.max_attempts {
                        let answer = GraphAnswer::from_body(http_status, &body);
                        let mut error = GraphError::from_answer(&request.what, answer, retry_after);
                        if let GraphError::Throttled { attempts, .. } = &mut error {
                            *attempts = attempt;
                        }
                        return Err(error);
                    }
                    tracing::debug!(what = %request.what, http_status, delay_ms = delay.as_millis() as u64, "Graph asked to wait; retrying");
                    AtomicCounters::add(&self.counters.retries, 1);
                    if gate.is_none() || http_status != 429 {
                        tokio::time::sleep(delay).await;
                    }
                }
                Attempt::Answer {
                    http_status,
                    retry_after,
                    body,
                } => {
                    return Err(GraphError::from_answer(
                        &request.what,
                        GraphAnswer::from_body(http_status, &body),
                        retry_after,
                    )
                    .seen_by_account(self.tokens.is_delegated()))
                }
                // Asking again would bring the same oversized answer.
                Attempt::TooLarge(error) => {
                    return Err(GraphError::AnswerTooLarge {
                        what: request.what.clone(),
                        detail: error.to_string(),
                    })
                }
                Attempt::NetworkError(detail) => {
                    if attempt >= self.retry.max_attempts {
                        return Err(GraphError::Network {
                            url: strip_query(&request.url),
                            detail,
                        });
                    }
                    AtomicCounters::add(&self.counters.retries, 1);
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                }
            }
        }
    }

    async fn attempt(&self, request: &GraphRequest, token: &calbridge_domain::Secret) -> Attempt {
        let mut builder = self
            .client
            .request(request.method.clone(), &request.url)
            .bearer_auth(token.expose());
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(error) => return Attempt::NetworkError(error_chain(&error)),
        };
        let http_status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        match read_capped(response, self.max_answer_bytes).await {
            Ok(body) => Attempt::Answer {
                http_status,
                retry_after,
                body,
            },
            Err(error @ BodyError::TooLarge { .. }) => Attempt::TooLarge(error),
            Err(BodyError::Network { detail, .. }) => Attempt::NetworkError(detail),
        }
    }
}

/// A URL without its query, for error messages: queries carry skip and delta tokens.
fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let policy = RetryPolicy::default();
        for attempt in 1..=10 {
            let full = Duration::from_millis(500)
                .saturating_mul(1 << (attempt - 1))
                .min(Duration::from_secs(30));
            let wait = policy.backoff(attempt);
            assert!(
                wait >= full / 2 && wait <= full,
                "attempt {attempt}: {wait:?}"
            );
        }
    }
}
