//! The publisher: the desired state per URI, one worker task that turns differences into
//! PUBLISH transactions, and the status the admin page shows.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use calbridge_domain::Secret;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::config::{PresenceState, SipPublisherConfig, Transport};
use crate::digest::{authorization, Challenge};
use crate::message::{new_branch, random_token, SipRequest, SipResponse};
use crate::pidf::{pidf_document, CONTENT_TYPE};
use crate::transport::SipTransport;
use crate::SipError;

/// Which kind of PUBLISH a result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// With body, without `SIP-If-Match`.
    Initial,
    /// Without body, with `SIP-If-Match`.
    Refresh,
    /// With body and `SIP-If-Match`.
    Modify,
    /// `Expires: 0` with `SIP-If-Match`.
    Remove,
}

/// The end of the last PUBLISH transaction for a URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    pub kind: PublishKind,
    /// The final status code, or `None` when no answer came (timeout, connection failure).
    pub status: Option<u16>,
    pub at: jiff::Timestamp,
}

/// What the admin page and metrics show per URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishStatus {
    /// The entity tag of the live publication, if any.
    pub etag: Option<String>,
    /// When the server will drop the publication unless it is refreshed.
    pub expires_at: Option<jiff::Timestamp>,
    pub last_result: Option<PublishOutcome>,
    pub last_error: Option<String>,
    /// The note of the state the server currently holds.
    pub published_note: Option<String>,
}

/// Totals since start, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishCounters {
    /// PUBLISH transactions started (authentication retries included, retransmissions not).
    pub requests_sent: u64,
    pub retransmissions: u64,
    pub successes: u64,
    /// Failed transactions: timeouts, transport errors, error responses (412/423 excluded).
    pub failures: u64,
    /// 412 Conditional Request Failed answers, each followed by a fresh initial PUBLISH.
    pub conditional_request_failed: u64,
    /// 401/407 challenges answered.
    pub auth_challenges: u64,
    /// URIs waiting to be published right now.
    pub queued: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Desired {
    Publish(PresenceState),
    Remove,
}

struct Entry {
    desired: Desired,
    /// The state the server holds (meaningful while `etag` is set).
    published: Option<PresenceState>,
    etag: Option<String>,
    expires_at: Option<jiff::Timestamp>,
    /// The lifetime to ask for; raised by 423 Interval Too Brief.
    expires_request: u32,
    call_id: String,
    from_tag: String,
    cseq: u32,
    queued: bool,
    in_flight: bool,
    retry_at: Option<Instant>,
    refresh_at: Option<Instant>,
    failures: u32,
    last_result: Option<PublishOutcome>,
    last_error: Option<String>,
}

impl Entry {
    fn new(desired: Desired, expires_request: u32) -> Self {
        Entry {
            desired,
            published: None,
            etag: None,
            expires_at: None,
            expires_request,
            call_id: format!("{}@calbridge", random_token(24)),
            from_tag: random_token(12),
            cseq: 0,
            queued: false,
            in_flight: false,
            retry_at: None,
            refresh_at: None,
            failures: 0,
            last_result: None,
            last_error: None,
        }
    }

    /// Whether the server's state differs from the desired one.
    fn needs_publish(&self) -> bool {
        match &self.desired {
            Desired::Publish(state) => {
                self.etag.is_none() || self.published.as_ref() != Some(state)
            }
            Desired::Remove => self.etag.is_some(),
        }
    }
}

#[derive(Default)]
struct Table {
    entries: HashMap<String, Entry>,
    /// URIs with a change to publish, in the order the changes came.
    queue: VecDeque<String>,
    retries: BTreeSet<(Instant, String)>,
    refreshes: BTreeSet<(Instant, String)>,
}

impl Table {
    fn enqueue(&mut self, uri: &str) {
        if let Some(entry) = self.entries.get_mut(uri) {
            if !entry.queued && !entry.in_flight {
                if let Some(at) = entry.retry_at.take() {
                    self.retries.remove(&(at, uri.to_owned()));
                }
                entry.queued = true;
                self.queue.push_back(uri.to_owned());
            }
        }
    }

    fn schedule_refresh(&mut self, uri: &str, at: Option<Instant>) {
        if let Some(entry) = self.entries.get_mut(uri) {
            if let Some(old) = entry.refresh_at.take() {
                self.refreshes.remove(&(old, uri.to_owned()));
            }
            if let Some(at) = at {
                entry.refresh_at = Some(at);
                self.refreshes.insert((at, uri.to_owned()));
            }
        }
    }

    fn forget(&mut self, uri: &str) {
        self.schedule_refresh(uri, None);
        if let Some(entry) = self.entries.remove(uri) {
            if let Some(at) = entry.retry_at {
                self.retries.remove(&(at, uri.to_owned()));
            }
        }
    }

    /// The next transaction to start, if any is due. Marks its entry in flight.
    fn next_job(&mut self, now: Instant) -> Option<Job> {
        while let Some((at, uri)) = self.retries.first().cloned() {
            if at > now {
                break;
            }
            self.retries.remove(&(at, uri.clone()));
            if let Some(entry) = self.entries.get_mut(&uri) {
                entry.retry_at = None;
            }
            self.enqueue(&uri);
        }
        while let Some(uri) = self.queue.pop_front() {
            let Some(entry) = self.entries.get_mut(&uri) else {
                continue;
            };
            entry.queued = false;
            if entry.in_flight || !entry.needs_publish() {
                // In flight: its completion looks at the desired state again.
                continue;
            }
            let (kind, state) = match (&entry.desired, &entry.etag) {
                (Desired::Publish(state), None) => (PublishKind::Initial, Some(state.clone())),
                (Desired::Publish(state), Some(_)) => (PublishKind::Modify, Some(state.clone())),
                (Desired::Remove, Some(_)) => (PublishKind::Remove, None),
                (Desired::Remove, None) => continue,
            };
            return Some(self.start_job(uri, kind, state));
        }
        while let Some((at, uri)) = self.refreshes.first().cloned() {
            if at > now {
                break;
            }
            self.refreshes.remove(&(at, uri.clone()));
            let Some(entry) = self.entries.get_mut(&uri) else {
                continue;
            };
            entry.refresh_at = None;
            if entry.in_flight || entry.etag.is_none() {
                continue;
            }
            return Some(self.start_job(uri, PublishKind::Refresh, None));
        }
        None
    }

    fn start_job(&mut self, uri: String, kind: PublishKind, state: Option<PresenceState>) -> Job {
        // Callers only pass URIs that exist; an empty job is harmless if that ever changes.
        let entry = self.entries.get_mut(&uri);
        let (etag, expires, call_id, from_tag, cseq) = match entry {
            Some(entry) => {
                entry.in_flight = true;
                entry.cseq += 2; // one spare for a digest retry
                (
                    entry.etag.clone(),
                    entry.expires_request,
                    entry.call_id.clone(),
                    entry.from_tag.clone(),
                    entry.cseq,
                )
            }
            None => (None, 0, String::new(), String::new(), 1),
        };
        let expires = if kind == PublishKind::Remove {
            0
        } else {
            expires
        };
        Job {
            uri,
            kind,
            state,
            etag: if kind == PublishKind::Initial {
                None
            } else {
                etag
            },
            expires,
            call_id,
            from_tag,
            cseq,
        }
    }

    /// When the worker must look again even if nothing else happens.
    fn next_timer(&self) -> Option<Instant> {
        let retry = self.retries.first().map(|(at, _)| *at);
        let refresh = self.refreshes.first().map(|(at, _)| *at);
        match (retry, refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Clone)]
struct Job {
    uri: String,
    kind: PublishKind,
    state: Option<PresenceState>,
    etag: Option<String>,
    expires: u32,
    call_id: String,
    from_tag: String,
    cseq: u32,
}

enum JobResult {
    Success {
        etag: Option<String>,
        granted: u32,
    },
    ConditionalRequestFailed,
    IntervalTooBrief {
        min_expires: Option<u32>,
    },
    Failed {
        status: Option<u16>,
        error: SipError,
    },
}

#[derive(Default)]
struct Counters {
    requests_sent: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    conditional_request_failed: AtomicU64,
    auth_challenges: AtomicU64,
}

struct Shared {
    table: Mutex<Table>,
    wake: Notify,
    counters: Counters,
    /// Where changes of the server's entity-tags go, once someone watches them.
    publications: Mutex<Option<mpsc::UnboundedSender<Publication>>>,
}

/// What the presence server holds for a URI after a transaction changed it: a publication's
/// entity-tag and expiry, or (`etag: None`) nothing. Saved, they let another process (a
/// restart, or the instance that takes the person over) modify the same publication with
/// [`SipPublisher::adopt`] instead of adding a second one beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub uri: String,
    pub etag: Option<String>,
    pub expires_at: Option<jiff::Timestamp>,
}

impl Shared {
    fn announce(&self, uri: &str, entry: &Entry) {
        self.tell(Publication {
            uri: uri.to_string(),
            etag: entry.etag.clone(),
            expires_at: entry.etag.as_ref().and(entry.expires_at),
        });
    }

    fn tell(&self, publication: Publication) {
        let sender = self
            .publications
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = sender.as_ref() {
            // A watcher that went away only misses what it no longer wants.
            let _ = sender.send(publication);
        }
    }
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent enough to matter
        // more than stopping all publishing would.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Everything a transaction needs besides the job itself.
struct Context {
    transport: Arc<SipTransport>,
    config: SipPublisherConfig,
    credentials: Option<(String, Secret)>,
    shared: Arc<Shared>,
}

/// The running publisher. Cheap to call from any task; dropping it without
/// [`SipPublisher::shutdown`] stops the worker at its next wake-up.
pub struct SipPublisher {
    shared: Arc<Shared>,
    transport: Arc<SipTransport>,
    expires_seconds: u32,
    shutdown: Option<oneshot::Sender<()>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl SipPublisher {
    /// Validates the configuration, resolves the server, opens the socket and starts the
    /// worker. Nothing is sent until the first [`SipPublisher::set`].
    pub async fn start(config: SipPublisherConfig) -> Result<SipPublisher, SipError> {
        config.validate()?;
        let server_text = if config.server.contains(':') && !config.server.ends_with(']') {
            config.server.clone()
        } else {
            format!("{}:5060", config.server)
        };
        let server: SocketAddr = tokio::net::lookup_host(&server_text)
            .await
            .map_err(|e| {
                SipError::Config(format!("Failed to resolve server {server_text:?}: {e}"))
            })?
            .next()
            .ok_or_else(|| SipError::Config(format!("server {server_text:?} has no address")))?;
        let bind = bind_address(config.local_address.as_deref(), server)?;
        let transport = SipTransport::open(
            config.transport,
            server,
            bind,
            Duration::from_millis(config.t1_milliseconds),
            Duration::from_millis(config.transaction_timeout_milliseconds),
        )
        .await?;
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            _ => None,
        };
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            wake: Notify::new(),
            counters: Counters::default(),
            publications: Mutex::new(None),
        });
        let (shutdown, shutdown_rx) = oneshot::channel();
        let expires_seconds = config.expires_seconds;
        let context = Arc::new(Context {
            transport: transport.clone(),
            config,
            credentials,
            shared: shared.clone(),
        });
        let worker = tokio::spawn(run_worker(context, shutdown_rx));
        Ok(SipPublisher {
            shared,
            transport,
            expires_seconds,
            shutdown: Some(shutdown),
            worker: Some(worker),
        })
    }

    /// Records the desired presence for `uri` (e.g. `sip:alice@pbx.example.com`); the worker
    /// publishes it if it differs from what the server holds. Never blocks on the network.
    pub fn set(&self, uri: String, state: PresenceState) {
        let mut table = self.shared.table();
        let expires = self.expires_seconds;
        let entry = table
            .entries
            .entry(uri.clone())
            .or_insert_with(|| Entry::new(Desired::Remove, expires));
        entry.desired = Desired::Publish(state);
        if entry.needs_publish() {
            table.enqueue(&uri);
            drop(table);
            self.shared.wake.notify_one();
        }
    }

    /// Publishes `state` for `uri` by modifying the publication the server holds under
    /// `etag` (saved from an earlier process, see [`Publication`]) rather than making a new
    /// one. If the server no longer knows the tag (412), a new publication is made. A URI
    /// this publisher already publishes is simply [`SipPublisher::set`].
    pub fn adopt(
        &self,
        uri: String,
        state: PresenceState,
        etag: String,
        expires_at: jiff::Timestamp,
    ) {
        let mut table = self.shared.table();
        if !table.entries.contains_key(&uri) {
            let mut entry = Entry::new(Desired::Publish(state.clone()), self.expires_seconds);
            entry.etag = Some(etag);
            entry.expires_at = Some(expires_at);
            table.entries.insert(uri.clone(), entry);
        }
        drop(table);
        self.set(uri, state);
    }

    /// Stops publishing `uri` without withdrawing its publication: another process publishes
    /// it from now on (having adopted the saved entity-tag), or it expires on the server.
    pub fn forget(&self, uri: &str) {
        self.shared.table().forget(uri);
    }

    /// Changes of the server's entity-tags from now on (one watcher; a second call replaces
    /// the first).
    pub fn watch_publications(&self) -> mpsc::UnboundedReceiver<Publication> {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self
            .shared
            .publications
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sender);
        receiver
    }

    /// Withdraws the publication for `uri` (`Expires: 0`). A URI never published is forgotten.
    pub fn remove(&self, uri: &str) {
        let mut table = self.shared.table();
        let Some(entry) = table.entries.get_mut(uri) else {
            return;
        };
        entry.desired = Desired::Remove;
        table.enqueue(uri);
        drop(table);
        self.shared.wake.notify_one();
    }

    pub fn status(&self, uri: &str) -> Option<PublishStatus> {
        let table = self.shared.table();
        let entry = table.entries.get(uri)?;
        Some(PublishStatus {
            etag: entry.etag.clone(),
            expires_at: entry.etag.as_ref().and(entry.expires_at),
            last_result: entry.last_result.clone(),
            last_error: entry.last_error.clone(),
            published_note: entry
                .etag
                .as_ref()
                .and(entry.published.as_ref())
                .map(|state| state.note.clone()),
        })
    }

    pub fn counters(&self) -> PublishCounters {
        let counters = &self.shared.counters;
        let queued = self.shared.table().queue.len() as u64;
        PublishCounters {
            requests_sent: counters.requests_sent.load(Ordering::Relaxed),
            retransmissions: self.transport.retransmissions.load(Ordering::Relaxed),
            successes: counters.successes.load(Ordering::Relaxed),
            failures: counters.failures.load(Ordering::Relaxed),
            conditional_request_failed: counters.conditional_request_failed.load(Ordering::Relaxed),
            auth_challenges: counters.auth_challenges.load(Ordering::Relaxed),
            queued,
        }
    }

    /// Stops the worker and abandons transactions in flight. Publications are left to expire
    /// on the server (nothing is removed), so a restart of calbridge does not blink everyone.
    pub async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(worker) = self.worker.take() {
            if let Err(e) = worker.await {
                tracing::warn!(error = %e, "SIP publisher worker ended abnormally");
            }
        }
    }
}

impl Drop for SipPublisher {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}

fn bind_address(local: Option<&str>, server: SocketAddr) -> Result<SocketAddr, SipError> {
    let unspecified: SocketAddr = match server {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let Some(local) = local else {
        // Towards a loopback server, loopback is the only address it can answer.
        if server.ip().is_loopback() {
            return Ok((server.ip(), 0).into());
        }
        return Ok(unspecified);
    };
    if let Ok(address) = local.parse::<SocketAddr>() {
        return Ok(address);
    }
    local
        .parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::from((ip, 0)))
        .map_err(|_| {
            SipError::Config(format!(
                "local_address {local:?} is not an IP address or ip:port"
            ))
        })
}

/// Refresh at 80 % of the granted lifetime, at least one second from now.
fn refresh_delay(granted: u32) -> Duration {
    Duration::from_millis((u64::from(granted) * 800).max(1000))
}

/// 1 s, 2 s, 4 s … capped at 60 s.
fn retry_delay(failures: u32) -> Duration {
    RETRY_BACKOFF.delay_for(failures)
}

/// Failed PUBLISHes are retried after 1 s, doubling to a minute. No jitter: the worker sends
/// one request at a time under its own rate limit, so retries cannot bunch up.
const RETRY_BACKOFF: calbridge_net::Backoff =
    calbridge_net::Backoff::doubling(Duration::from_secs(1), Duration::from_secs(60));

async fn run_worker(context: Arc<Context>, mut shutdown: oneshot::Receiver<()>) {
    let spacing = Duration::from_secs_f64(1.0 / f64::from(context.config.max_requests_per_second));
    let mut next_send_at = Instant::now();
    let mut transactions: JoinSet<(Job, JobResult)> = JoinSet::new();
    loop {
        while let Some(done) = transactions.try_join_next() {
            if let Ok((job, result)) = done {
                apply_result(&context.shared, job, result);
            }
        }
        let now = Instant::now();
        if now >= next_send_at {
            let job = context.shared.table().next_job(now);
            if let Some(job) = job {
                // Spacing requests evenly keeps any one-second window at the configured rate.
                next_send_at = next_send_at.max(now) + spacing;
                let context = context.clone();
                transactions.spawn(async move {
                    let result = run_job(&context, &job).await;
                    (job, result)
                });
                continue;
            }
        }
        let (has_queued, timer) = {
            let table = context.shared.table();
            (!table.queue.is_empty(), table.next_timer())
        };
        let wake_at = match (has_queued, timer) {
            (true, _) => Some(next_send_at),
            (false, Some(timer)) => Some(timer.max(next_send_at)),
            (false, None) => None,
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = context.shared.wake.notified() => {}
            Some(done) = transactions.join_next(), if !transactions.is_empty() => {
                if let Ok((job, result)) = done {
                    apply_result(&context.shared, job, result);
                }
            }
            _ = sleep_until(wake_at.unwrap_or(now)), if wake_at.is_some() => {}
        }
    }
    transactions.abort_all();
}

fn apply_result(shared: &Shared, job: Job, result: JobResult) {
    let mut table = shared.table();
    let now = Instant::now();
    let Some(entry) = table.entries.get_mut(&job.uri) else {
        // Forgotten while in flight (handed over): what the server holds now is still told,
        // so that whoever publishes the URI next continues this publication.
        if let JobResult::Success { etag, granted } = result {
            let held = match (job.kind, etag) {
                (PublishKind::Remove, _) => Some((None, None)),
                (_, Some(etag)) => {
                    let granted = if granted == 0 { job.expires } else { granted };
                    let expires_at = jiff::Timestamp::now()
                        .checked_add(jiff::SignedDuration::from_secs(i64::from(granted)))
                        .ok();
                    Some((Some(etag), expires_at))
                }
                (_, None) => None,
            };
            if let Some((etag, expires_at)) = held {
                shared.tell(Publication {
                    uri: job.uri,
                    etag,
                    expires_at,
                });
            }
        }
        return;
    };
    entry.in_flight = false;
    let held_before = (entry.etag.clone(), entry.expires_at);
    let status = match &result {
        JobResult::Success { .. } => Some(200),
        JobResult::ConditionalRequestFailed => Some(412),
        JobResult::IntervalTooBrief { .. } => Some(423),
        JobResult::Failed { status, .. } => *status,
    };
    entry.last_result = Some(PublishOutcome {
        kind: job.kind,
        status,
        at: jiff::Timestamp::now(),
    });
    let mut refresh_at = None;
    let mut forget = false;
    match result {
        JobResult::Success { etag, granted } => {
            shared.counters.successes.fetch_add(1, Ordering::Relaxed);
            entry.failures = 0;
            entry.last_error = None;
            if job.kind == PublishKind::Remove {
                entry.etag = None;
                entry.published = None;
                entry.expires_at = None;
                forget = entry.desired == Desired::Remove;
            } else {
                // A 2xx without SIP-ETag breaks RFC 3903; keep the old tag rather than none,
                // and if there was none, the next change starts over with an initial PUBLISH.
                if let Some(etag) = etag {
                    entry.etag = Some(etag);
                }
                if let Some(state) = job.state {
                    entry.published = Some(state);
                }
                let granted = if granted == 0 { job.expires } else { granted };
                entry.expires_at = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(i64::from(granted)))
                    .ok();
                refresh_at = Some(now + refresh_delay(granted));
            }
        }
        JobResult::ConditionalRequestFailed => {
            // The server no longer knows our entity tag: start over with an initial PUBLISH.
            shared
                .counters
                .conditional_request_failed
                .fetch_add(1, Ordering::Relaxed);
            entry.etag = None;
            entry.published = None;
            entry.expires_at = None;
            entry.last_error = None;
            forget = entry.desired == Desired::Remove;
        }
        JobResult::IntervalTooBrief { min_expires } => match min_expires {
            Some(min_expires) if min_expires > entry.expires_request => {
                entry.expires_request = min_expires;
                entry.last_error = None;
                if job.kind == PublishKind::Refresh {
                    refresh_at = Some(now);
                }
            }
            _ => {
                shared.counters.failures.fetch_add(1, Ordering::Relaxed);
                entry.last_error =
                    Some("423 Interval Too Brief without a usable Min-Expires".into());
                entry.failures += 1;
            }
        },
        JobResult::Failed { error, .. } => {
            shared.counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(uri = %job.uri, kind = ?job.kind, error = %error, "SIP PUBLISH failed; will retry");
            entry.last_error = Some(error.to_string());
            entry.failures += 1;
            if job.kind == PublishKind::Refresh {
                refresh_at = Some(now + retry_delay(entry.failures));
            }
        }
    }
    if (entry.etag.clone(), entry.expires_at) != held_before {
        shared.announce(&job.uri, entry);
    }
    let failures = entry.failures;
    let needs_publish = entry.needs_publish();
    let uri = job.uri;
    if forget {
        table.forget(&uri);
        return;
    }
    table.schedule_refresh(&uri, refresh_at);
    if needs_publish {
        if failures > 0 && job.kind != PublishKind::Refresh {
            let at = now + retry_delay(failures);
            if let Some(entry) = table.entries.get_mut(&uri) {
                if entry.retry_at.is_none() && !entry.queued {
                    entry.retry_at = Some(at);
                    table.retries.insert((at, uri));
                }
            }
        } else {
            table.enqueue(&uri);
        }
    }
}

fn build_request(context: &Context, job: &Job, cseq: u32, branch: &str) -> SipRequest {
    let transport = &context.transport;
    let local = transport.local_addr();
    let (via_transport, contact_suffix) = match transport.kind() {
        Transport::Udp => ("UDP", ""),
        Transport::Tcp => ("TCP", ";transport=tcp"),
    };
    let mut request = SipRequest::new("PUBLISH", job.uri.clone())
        .header(
            "Via",
            format!("SIP/2.0/{via_transport} {local};branch={branch};rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", format!("<{}>;tag={}", job.uri, job.from_tag))
        .header("To", format!("<{}>", job.uri))
        .header("Call-ID", job.call_id.clone())
        .header("CSeq", format!("{cseq} PUBLISH"))
        .header(
            "Contact",
            format!("<sip:calbridge@{local}{contact_suffix}>"),
        )
        .header("Event", "presence")
        .header("Expires", job.expires.to_string())
        .header(
            "User-Agent",
            concat!("calbridge/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(etag) = &job.etag {
        request = request.header("SIP-If-Match", etag.clone());
    }
    if let Some(state) = &job.state {
        let body = pidf_document(&job.uri, state, &context.config.activity_mapping);
        request = request.with_body(CONTENT_TYPE, body.into_bytes());
    }
    request
}

async fn run_job(context: &Context, job: &Job) -> JobResult {
    match publish_once(context, job).await {
        Ok(response) => classify(response),
        Err(error) => {
            context.transport.reset_if_transport_error(&error).await;
            let status = match &error {
                SipError::Rejected { status, .. } => Some(*status),
                _ => None,
            };
            JobResult::Failed { status, error }
        }
    }
}

fn classify(response: SipResponse) -> JobResult {
    match response.status {
        200..=299 => JobResult::Success {
            etag: response
                .header("SIP-ETag")
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
            granted: response.seconds("Expires").unwrap_or(0),
        },
        412 => JobResult::ConditionalRequestFailed,
        423 => JobResult::IntervalTooBrief {
            min_expires: response.seconds("Min-Expires"),
        },
        status => JobResult::Failed {
            status: Some(status),
            error: SipError::Rejected {
                status,
                reason: response.reason,
            },
        },
    }
}

/// One PUBLISH, answering at most one digest challenge.
async fn publish_once(context: &Context, job: &Job) -> Result<SipResponse, SipError> {
    context.transport.prepare().await?;
    let branch = new_branch();
    let request = build_request(context, job, job.cseq - 1, &branch);
    context
        .shared
        .counters
        .requests_sent
        .fetch_add(1, Ordering::Relaxed);
    let response = context.transport.transact(&request, &branch).await?;
    let header = match response.status {
        401 => "WWW-Authenticate",
        407 => "Proxy-Authenticate",
        _ => return Ok(response),
    };
    let Some((username, password)) = &context.credentials else {
        return Err(SipError::Auth(format!(
            "the presence server asks for credentials ({} {}): set username and password in [publish.sip]",
            response.status, response.reason
        )));
    };
    let challenge = response
        .headers_named(header)
        .find_map(|value| Challenge::parse(value).ok())
        .ok_or_else(|| {
            SipError::Auth(format!(
                "{} without a usable MD5 digest challenge",
                response.status
            ))
        })?;
    context
        .shared
        .counters
        .auth_challenges
        .fetch_add(1, Ordering::Relaxed);
    let credentials_header = if response.status == 401 {
        "Authorization"
    } else {
        "Proxy-Authorization"
    };
    let credentials = authorization(username, password, &challenge, "PUBLISH", &job.uri, 1);
    let branch = new_branch();
    let mut request = build_request(context, job, job.cseq, &branch);
    request.set_header(credentials_header, credentials);
    context
        .shared
        .counters
        .requests_sent
        .fetch_add(1, Ordering::Relaxed);
    let response = context.transport.transact(&request, &branch).await?;
    if matches!(response.status, 401 | 407) {
        return Err(SipError::Auth(format!(
            "the presence server rejected the credentials of user {username:?} ({} {}): check username and password in [publish.sip]",
            response.status, response.reason
        )));
    }
    Ok(response)
}
