//! `EwsSource`: the operations calbridge needs, with domain types out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, ShowAs,
};
use http::Method;
use jiff::{Timestamp, ToSpan};
use tokio::time::Instant;
use url::Url;

use crate::autodiscover::{self, Discovered};
use crate::config::{validate_ews_url, AuthMethod, ConfigError, EwsSourceConfig, MailboxAccess};
use crate::error::{shorten, EwsError};
use crate::soap::{self, Subject};
use crate::transport::{
    self, Auth, BearerToken, Credentials, LogonProbe, Transport, SOAP_ANSWER_LIMIT,
};
use crate::xml::{escape, Element};

/// A streaming subscription id as Exchange issued it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub String);

/// Attempts per request when Exchange answers `ErrorServerBusy` or the network fails.
const MAX_ATTEMPTS: u32 = 6;
/// A `BackOffMilliseconds` longer than this is cut to it, so that one odd answer cannot
/// stall a mailbox for hours.
const MAX_BACK_OFF: Duration = Duration::from_secs(300);
const FIND_ITEM_LIMIT: usize = 1000;
const DEFAULT_NETWORK_RETRY_DELAY: Duration = Duration::from_millis(200);
/// How long a failed first Autodiscover is answered from the cache: doubling from
/// [`EwsSource::FIRST_DISCOVERY_RETRY`] to [`EwsSource::REDISCOVERY_INTERVAL`], without jitter
/// because one source has one discovery.
const DISCOVERY_BACKOFF: calbridge_net::Backoff = calbridge_net::Backoff::doubling(
    EwsSource::FIRST_DISCOVERY_RETRY,
    EwsSource::REDISCOVERY_INTERVAL,
);

/// Free/busy of one mailbox from `GetUserAvailability`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeBusy {
    pub mailbox: MailboxAddress,
    /// Busy periods (no subjects: the FreeBusy view carries none).
    pub busy: Result<Vec<(Timestamp, Timestamp, ShowAs)>, String>,
}

/// The EWS client of one Exchange organisation.
///
/// The EWS URL is `ews_url` when configured, else Autodiscover's answer, cached. Until a first
/// discovery succeeds, a failed one is cached too: callers meanwhile get its error at once, and
/// Autodiscover is asked again after [`EwsSource::FIRST_DISCOVERY_RETRY`], doubling after each
/// further failure up to [`EwsSource::REDISCOVERY_INTERVAL`]. When the
/// discovered URL stops answering (no connection, TLS or DNS failure, HTTP 404/410, or a
/// 5xx that is no SOAP fault, after the usual retries), Autodiscover is asked again, at most
/// every [`EwsSource::REDISCOVERY_INTERVAL`] and once for all requests failing together, and
/// the request is sent once more to the URL it names; streaming connections open at the
/// current URL the same way. Credential errors and Exchange's own faults never do this.
pub struct EwsSource {
    pub(crate) config: EwsSourceConfig,
    pub(crate) transport: Transport,
    fixed_ews_url: Option<Url>,
    /// Held while the first Autodiscover runs, so that concurrent callers wait for its answer.
    discovery: tokio::sync::Mutex<DiscoveryCache>,
    /// When Autodiscover last ran again. Held while it runs, so that requests failing at the
    /// same time share one run.
    rediscovery: tokio::sync::Mutex<Option<Instant>>,
    /// The wait after a request's first network failure.
    network_retry_delay: Duration,
    /// Whether the warning about settings taken over plain http was logged.
    warned_plain_http: AtomicBool,
}

/// Autodiscover's answer, cached.
#[derive(Default)]
struct DiscoveryCache {
    found: Option<Discovered>,
    /// Counts the answers that replaced the first, so that a request which failed on an older
    /// URL can tell that a newer one was found meanwhile.
    generation: u64,
    /// The last failed discovery while none has succeeded yet.
    failed: Option<FailedDiscovery>,
}

/// A failed first discovery, answered to every caller until `retry_at`.
struct FailedDiscovery {
    address: String,
    detail: String,
    failed_at: Instant,
    retry_at: Instant,
    /// Failed discoveries in a row; the next failure is kept for [`DISCOVERY_BACKOFF`]'s wait
    /// of one more.
    failures: u32,
}

impl FailedDiscovery {
    /// The cached failure as the error of a caller at `now`.
    fn error(&self, now: Instant) -> EwsError {
        EwsError::Autodiscover {
            address: self.address.clone(),
            detail: format!(
                "{} (Autodiscover failed {} s ago and is asked again in {} s)",
                self.detail,
                now.duration_since(self.failed_at).as_secs(),
                whole_seconds(self.retry_at.duration_since(now)),
            ),
        }
    }
}

/// A wait in seconds as a message shows it, rounded up so that "in 0 s" never appears early.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Where an EWS URL came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlOrigin {
    /// `ews_url`: Autodiscover is never asked.
    Configured,
    /// The cached Autodiscover answer of this generation.
    Discovered { generation: u64 },
}

/// The EWS URL a request is sent to.
#[derive(Debug, Clone)]
pub(crate) struct EwsTarget {
    pub(crate) url: Url,
    pub(crate) origin: UrlOrigin,
}

/// Why one attempt of a request failed, and whether another attempt at the same URL may help.
pub(crate) enum AttemptFailed {
    /// Worth another attempt after the delay (`ErrorServerBusy`, network, HTTP 5xx).
    Retry(EwsError, Duration),
    /// The same request to the same URL would fail the same way.
    Final(EwsError),
}

/// Whose request an EWS operation is, which decides its `ExchangeImpersonation` header and
/// its `X-AnchorMailbox`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Acting<'a> {
    /// About one mailbox (`FindItem`, `Subscribe`, `Unsubscribe`, `GetStreamingEvents` of a
    /// group through its anchor mailbox): impersonates it with `access = "impersonation"`.
    Mailbox(&'a MailboxAddress),
    /// About no single mailbox (`ResolveNames`, `GetUserAvailability` of many): the service
    /// account's own request; with a bearer token it impersonates `user`.
    Service,
}

/// A SOAP answer without a fault.
pub(crate) struct SoapAnswer {
    pub(crate) status: u16,
    pub(crate) text: String,
    pub(crate) root: Element,
}

/// Reads one HTTP answer of the EWS URL: its SOAP envelope, or why the attempt failed.
/// An answer that is no SOAP envelope with 404 or 410 means that EWS is not at this URL (any
/// more); with 5xx, that something in front of Exchange (a load balancer, IIS) cannot reach
/// it. Both are reported as network failures of the URL, which may send calbridge back to
/// Autodiscover. SOAP faults (HTTP 500 too) are Exchange's own answers and never do.
/// `network_delay` is the wait before the next attempt after a 5xx.
pub(crate) fn read_answer(
    url: &Url,
    status: u16,
    text: &str,
    subject: &Subject<'_>,
    network_delay: Duration,
) -> Result<Element, AttemptFailed> {
    let parsed = crate::xml::parse(text)
        .ok()
        .filter(|root| root.name == "Envelope");
    if let Some(root) = parsed {
        return match soap::fault_error(&root, subject) {
            Some(error @ EwsError::ServerBusy { back_off, .. }) => {
                Err(AttemptFailed::Retry(error, back_off.min(MAX_BACK_OFF)))
            }
            Some(error) => Err(AttemptFailed::Final(error)),
            None => Ok(root),
        };
    }
    match status {
        404 | 410 => Err(AttemptFailed::Final(transport::network(
            url,
            format!("HTTP {status}: there is no EWS endpoint at this URL"),
        ))),
        500..=599 => Err(AttemptFailed::Retry(
            transport::network(url, format!("HTTP {status}: {}", shorten(text, 200))),
            network_delay,
        )),
        _ => Err(AttemptFailed::Final(EwsError::BadAnswer {
            what: subject.what.to_string(),
            detail: format!(
                "HTTP {status} that is no SOAP envelope: {}",
                shorten(text, 200)
            ),
        })),
    }
}

/// True when `error` says that the EWS URL `url` itself could not be reached or is gone, as
/// opposed to Exchange refusing the request, or the token endpoint failing.
pub(crate) fn is_endpoint_failure(url: &Url, error: &EwsError) -> bool {
    matches!(error, EwsError::Network { url: failed, .. } if *failed == transport::shown_url(url))
}

/// Adds what calbridge did about a failure of the EWS URL to its message.
fn with_note(error: EwsError, note: &str) -> EwsError {
    match error {
        EwsError::Network { url, detail } => EwsError::Network {
            url,
            detail: format!("{detail}; {note}"),
        },
        other => other,
    }
}

impl EwsSource {
    /// Autodiscover runs again because EWS failed at most this often, however many requests
    /// fail meanwhile: during an outage every mailbox's read fails, and each asking
    /// Autodiscover would turn one outage into two.
    pub const REDISCOVERY_INTERVAL: Duration = Duration::from_secs(60);

    /// How long a failed first Autodiscover is answered from the cache before it is asked
    /// again; each further failure doubles it, up to [`Self::REDISCOVERY_INTERVAL`]. Without
    /// it, every mailbox starting during an Autodiscover outage would run the whole discovery
    /// in turn: a thousand mailboxes, a thousand runs through every candidate.
    pub const FIRST_DISCOVERY_RETRY: Duration = Duration::from_secs(10);

    /// Checks the configuration and builds the HTTPS client; sends nothing yet.
    pub fn new(config: EwsSourceConfig) -> Result<EwsSource, EwsError> {
        config.validate()?;
        let tls = calbridge_net::tls_client_config(config.extra_root_ca.as_deref())
            .map_err(ConfigError::from)?;
        let credentials = match config.auth {
            AuthMethod::Ntlm => Credentials::Ntlm {
                user: config.user.clone(),
                password: config
                    .password
                    .clone()
                    .ok_or(ConfigError::MissingPassword("ntlm"))?,
            },
            AuthMethod::Basic => Credentials::Basic {
                user: config.user.clone(),
                password: config
                    .password
                    .clone()
                    .ok_or(ConfigError::MissingPassword("basic"))?,
            },
            AuthMethod::Bearer => Credentials::Bearer(BearerToken::from_config(
                config.bearer.as_ref().ok_or(ConfigError::MissingBearer)?,
            )?),
        };
        let fixed_ews_url = config
            .ews_url
            .as_deref()
            .map(validate_ews_url)
            .transpose()?;
        let transport = Transport::new(
            tls,
            config.resolve.clone(),
            credentials,
            config.protocol_log,
        );
        Ok(EwsSource {
            config,
            transport,
            fixed_ews_url,
            discovery: tokio::sync::Mutex::new(DiscoveryCache::default()),
            rediscovery: tokio::sync::Mutex::new(None),
            network_retry_delay: DEFAULT_NETWORK_RETRY_DELAY,
            warned_plain_http: AtomicBool::new(false),
        })
    }

    /// Sets the wait after a request's first network failure (200 ms unless set); each
    /// further failure of the same request waits twice as long, up to eight times it (all
    /// jittered). Tests shorten it.
    pub fn with_network_retry_delay(mut self, first: Duration) -> EwsSource {
        self.network_retry_delay = first;
        self
    }

    pub fn config(&self) -> &EwsSourceConfig {
        &self.config
    }

    /// HTTP requests sent so far (each NTLM leg counts).
    pub fn requests_sent(&self) -> u64 {
        self.transport.requests_sent()
    }

    /// The EWS URL: the configured one, or Autodiscover's (cached after the first run, and
    /// replaced when EWS fails and Autodiscover then names another).
    pub async fn ews_url(&self) -> Result<Url, EwsError> {
        self.target().await.map(|target| target.url)
    }

    /// Logs on once more at the EWS URL with NTLM, without a TLS channel binding, and says
    /// whether Exchange accepted that. For `calbridge check` after a refused NTLM logon: if
    /// this one is accepted, Exchange's Extended Protection refused the channel binding, not
    /// the password (see [`Transport::probe_ntlm_without_channel_binding`]).
    pub async fn probe_ntlm_without_channel_binding(&self) -> Result<LogonProbe, EwsError> {
        let url = self.ews_url().await?;
        self.transport
            .probe_ntlm_without_channel_binding(&url)
            .await
    }

    /// What Autodiscover found last (None before the first run or with `ews_url`).
    pub async fn discovered(&self) -> Option<Discovered> {
        self.discovery.lock().await.found.clone()
    }

    /// For a status page, without waiting: the EWS URL in use and, when Autodiscover named
    /// it, the Autodiscover URL that answered. `(None, None)` before the first discovery and
    /// while Autodiscover runs.
    pub fn current_endpoint(&self) -> (Option<Url>, Option<Url>) {
        if let Some(url) = &self.fixed_ews_url {
            return (Some(url.clone()), None);
        }
        match self.discovery.try_lock() {
            Ok(cache) => match cache.found.as_ref() {
                Some(found) => (
                    self.url_in(Some(found)).ok(),
                    Some(found.answered_by.clone()),
                ),
                None => (None, None),
            },
            Err(_) => (None, None),
        }
    }

    /// Runs Autodiscover again now and uses its answer from here on. When it fails, the
    /// answer found before stays in use. Requests do this themselves when EWS fails (at most
    /// every [`Self::REDISCOVERY_INTERVAL`]); this is for an operator's "look again".
    pub async fn rediscover(&self) -> Result<Url, EwsError> {
        if let Some(url) = &self.fixed_ews_url {
            return Ok(url.clone());
        }
        let mut last_run = self.rediscovery.lock().await;
        *last_run = Some(Instant::now());
        self.discover_again().await.map(|target| target.url)
    }

    /// The EWS URL and where it came from, running Autodiscover the first time.
    pub(crate) async fn target(&self) -> Result<EwsTarget, EwsError> {
        if let Some(url) = &self.fixed_ews_url {
            return Ok(EwsTarget {
                url: url.clone(),
                origin: UrlOrigin::Configured,
            });
        }
        let mut cache = self.discovery.lock().await;
        if cache.found.is_none() {
            if let Some(failed) = &cache.failed {
                let now = Instant::now();
                if now < failed.retry_at {
                    return Err(failed.error(now));
                }
            }
            let found = match self.autodiscover().await {
                Ok(found) => found,
                Err(EwsError::Autodiscover { address, detail }) => {
                    let failures = cache
                        .failed
                        .as_ref()
                        .map_or(1, |before| before.failures.saturating_add(1));
                    let kept_for = DISCOVERY_BACKOFF.delay_for(failures);
                    let now = Instant::now();
                    let failed = FailedDiscovery {
                        address,
                        detail,
                        failed_at: now,
                        retry_at: now + kept_for,
                        failures,
                    };
                    let error = failed.error(now);
                    tracing::warn!(user = %self.config.user, "{error}");
                    cache.failed = Some(failed);
                    return Err(error);
                }
                // Refused credentials have their own back-off in the transport.
                Err(error) => return Err(error),
            };
            self.found(&found);
            cache.found = Some(found);
            cache.failed = None;
        }
        let url = self.url_in(cache.found.as_ref())?;
        Ok(EwsTarget {
            url,
            origin: UrlOrigin::Discovered {
                generation: cache.generation,
            },
        })
    }

    async fn autodiscover(&self) -> Result<Discovered, EwsError> {
        autodiscover::discover(
            &self.transport,
            &self.config.user,
            self.config.autodiscover_url.as_deref(),
        )
        .await
    }

    /// Logs what Autodiscover found, and once per source that its settings came over plain
    /// http (which only a configured `autodiscover_url` can give).
    fn found(&self, found: &Discovered) {
        tracing::info!(user = %self.config.user, answered_by = %found.answered_by, internal = ?found.internal.as_ref().map(Url::as_str), external = ?found.external.as_ref().map(Url::as_str), "Autodiscover found EWS");
        if found.answered_by.scheme() != "https"
            && !self.warned_plain_http.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(user = %self.config.user, answered_by = %found.answered_by, "Autodiscover settings were taken over plain http from the configured autodiscover_url: anyone on the network path could change them and send calbridge's requests and credentials elsewhere; use an https autodiscover_url or set ews_url");
        }
    }

    /// The EWS URL of the configured side in an Autodiscover answer.
    fn url_in(&self, found: Option<&Discovered>) -> Result<Url, EwsError> {
        found
            .and_then(|found| found.ews_url(self.config.server))
            .cloned()
            .ok_or_else(|| EwsError::Autodiscover {
                address: self.config.user.clone(),
                detail: "no EWS URL in the answer".to_string(),
            })
    }

    /// Runs Autodiscover and caches its answer, the old one staying when this one fails.
    /// The caller holds `rediscovery`.
    async fn discover_again(&self) -> Result<EwsTarget, EwsError> {
        let found = self.autodiscover().await?;
        let url = self.url_in(Some(&found))?;
        self.found(&found);
        let mut cache = self.discovery.lock().await;
        cache.found = Some(found);
        cache.failed = None;
        cache.generation += 1;
        let generation = cache.generation;
        drop(cache);
        // Idle connections lead to the old server.
        self.transport.forget_connections();
        Ok(EwsTarget {
            url,
            origin: UrlOrigin::Discovered { generation },
        })
    }

    /// After `failed` could not be reached: the URL to try once more, which Autodiscover
    /// names when asked again, or the error to give up with. Autodiscover runs again at most
    /// every [`Self::REDISCOVERY_INTERVAL`], and requests failing meanwhile share its answer.
    pub(crate) async fn recover(
        &self,
        failed: &EwsTarget,
        error: EwsError,
    ) -> Result<EwsTarget, EwsError> {
        let UrlOrigin::Discovered { generation } = failed.origin else {
            return Err(with_note(
                error,
                "this is the configured ews_url, so calbridge does not ask Autodiscover: check ews_url, or remove it to let Autodiscover find EWS",
            ));
        };
        let mut last_run = self.rediscovery.lock().await;
        {
            let cache = self.discovery.lock().await;
            if cache.generation != generation {
                // Autodiscover ran again after this request took its URL: try that answer.
                if let Ok(url) = self.url_in(cache.found.as_ref()) {
                    return Ok(EwsTarget {
                        url,
                        origin: UrlOrigin::Discovered {
                            generation: cache.generation,
                        },
                    });
                }
            }
        }
        let now = Instant::now();
        if let Some(at) = *last_run {
            let since = now.duration_since(at);
            if since < Self::REDISCOVERY_INTERVAL {
                return Err(with_note(
                    error,
                    &format!(
                        "Autodiscover was asked again {} s ago and is not asked again before {} s have passed",
                        since.as_secs(),
                        Self::REDISCOVERY_INTERVAL.as_secs()
                    ),
                ));
            }
        }
        *last_run = Some(now);
        match self.discover_again().await {
            Ok(next) if next.url == failed.url => {
                tracing::warn!(user = %self.config.user, "EWS at {} failed ({error}); Autodiscover still names it, trying once more", failed.url);
                Ok(next)
            }
            Ok(next) => {
                tracing::warn!(user = %self.config.user, "EWS at {} failed ({error}); Autodiscover found {}", failed.url, next.url);
                Ok(next)
            }
            Err(discover_error) => {
                tracing::warn!(user = %self.config.user, "EWS at {} failed ({error}); asking Autodiscover again failed too: {discover_error}", failed.url);
                Err(with_note(
                    error,
                    &format!("asking Autodiscover again failed too: {discover_error}"),
                ))
            }
        }
    }

    /// The mailbox a service request impersonates and is routed to: `user` with a bearer token,
    /// none otherwise. Exchange Online refuses an app-only token on every request without
    /// `ExchangeImpersonation` (`ErrorInvalidExchangeImpersonationHeaderData`), so even requests
    /// about no single mailbox must act in one; NTLM and Basic act as the service account itself.
    fn service_mailbox(&self) -> Option<&str> {
        match self.config.auth {
            AuthMethod::Bearer => self.config.user_mailbox(),
            AuthMethod::Ntlm | AuthMethod::Basic => None,
        }
    }

    /// The `ExchangeImpersonation` target of a request. Mailbox requests impersonate their
    /// mailbox with `access = "impersonation"` (the only access a bearer token may have) and
    /// name it in the folder id with `access = "delegate"`.
    pub(crate) fn impersonation<'a>(&'a self, acting: Acting<'a>) -> Option<&'a str> {
        match acting {
            Acting::Mailbox(mailbox) => match self.config.access {
                MailboxAccess::Impersonation => Some(mailbox.as_str()),
                MailboxAccess::Delegate => None,
            },
            Acting::Service => self.service_mailbox(),
        }
    }

    /// The mailbox Exchange routes a request to (`X-AnchorMailbox`), the impersonated one
    /// where there is one, as Microsoft asks of impersonating clients.
    fn anchor<'a>(&'a self, acting: Acting<'a>) -> Option<&'a str> {
        match acting {
            Acting::Mailbox(mailbox) => Some(mailbox.as_str()),
            Acting::Service => self.service_mailbox(),
        }
    }

    pub(crate) fn headers(&self, acting: Acting<'_>) -> Vec<(String, String)> {
        let mut headers = vec![(
            "Content-Type".to_string(),
            "text/xml; charset=utf-8".to_string(),
        )];
        if let Some(anchor) = self.anchor(acting) {
            headers.push(("X-AnchorMailbox".to_string(), anchor.to_string()));
            headers.push(("X-PreferServerAffinity".to_string(), "true".to_string()));
        }
        headers
    }

    /// What a failed service request means when it impersonated `user` and Exchange found no
    /// such mailbox: `user` is no mailbox, rather than the person asked about.
    fn service_error(&self, acting: Acting<'_>, error: EwsError) -> EwsError {
        let (Acting::Service, Some(user)) = (acting, self.service_mailbox()) else {
            return error;
        };
        match error {
            EwsError::NonExistentMailbox { address, .. } if address.eq_ignore_ascii_case(user) => {
                EwsError::Config(ConfigError::BearerUserWithoutMailbox(user.to_string()))
            }
            other => other,
        }
    }

    /// `<t:DistinguishedFolderId Id="calendar">` naming the mailbox with delegate access.
    fn calendar_folder(&self, mailbox: &MailboxAddress) -> String {
        match self.config.access {
            MailboxAccess::Impersonation => {
                "<t:DistinguishedFolderId Id=\"calendar\"/>".to_string()
            }
            MailboxAccess::Delegate => format!(
                "<t:DistinguishedFolderId Id=\"calendar\"><t:Mailbox><t:EmailAddress>{}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>",
                escape(mailbox.as_str())
            ),
        }
    }

    /// Sends one EWS operation, riding out `ErrorServerBusy` and network hiccups, and returns
    /// its response messages.
    pub(crate) async fn call(
        &self,
        what: &str,
        acting: Acting<'_>,
        body: &str,
    ) -> Result<Vec<Element>, EwsError> {
        let answer = self.send_soap(what, acting, body).await?;
        let user = self.transport.user();
        let subject = Subject {
            what,
            user: &user,
            mailbox: acting_mailbox(acting),
        };
        soap::messages_in(answer.status, &answer.root, &answer.text, &subject)
    }

    /// Posts one operation in its envelope, with the impersonation and routing `acting` asks for.
    pub(crate) async fn send_soap(
        &self,
        what: &str,
        acting: Acting<'_>,
        body: &str,
    ) -> Result<SoapAnswer, EwsError> {
        let envelope = Bytes::from(soap::envelope(self.impersonation(acting), body));
        let headers = self.headers(acting);
        let user = self.transport.user();
        let subject = Subject {
            what,
            user: &user,
            mailbox: acting_mailbox(acting),
        };
        self.post(&headers, &envelope, &subject)
            .await
            .map_err(|error| self.service_error(acting, error))
    }

    /// Posts a SOAP request to the EWS URL. When the URL cannot be reached (after the
    /// retries) and came from Autodiscover, Autodiscover is asked again and the request
    /// sent once more to the URL it names.
    async fn post(
        &self,
        headers: &[(String, String)],
        envelope: &Bytes,
        subject: &Subject<'_>,
    ) -> Result<SoapAnswer, EwsError> {
        let target = self.target().await?;
        let error = match self.post_to(&target.url, headers, envelope, subject).await {
            Err(error) if is_endpoint_failure(&target.url, &error) => error,
            other => return other,
        };
        let next = self.recover(&target, error).await?;
        self.post_to(&next.url, headers, envelope, subject).await
    }

    /// Posts a SOAP request to `url`, riding out `ErrorServerBusy` and network hiccups.
    async fn post_to(
        &self,
        url: &Url,
        headers: &[(String, String)],
        envelope: &Bytes,
        subject: &Subject<'_>,
    ) -> Result<SoapAnswer, EwsError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // After a network failure each attempt waits longer: doubling from the first delay
            // up to eight times it, jittered, so that the mailboxes that failed together do not
            // come back in lock-step.
            let network_delay = calbridge_net::Backoff::doubling(
                self.network_retry_delay,
                self.network_retry_delay * 8,
            )
            .with_equal_jitter()
            .delay_for(attempt);
            let failed = match self
                .transport
                .request(
                    Method::POST,
                    url,
                    headers,
                    envelope.clone(),
                    Auth::Authenticated,
                    SOAP_ANSWER_LIMIT,
                )
                .await
            {
                Ok(answer) => {
                    let text = answer.text();
                    match read_answer(url, answer.status, &text, subject, network_delay) {
                        Ok(root) => {
                            return Ok(SoapAnswer {
                                status: answer.status,
                                text,
                                root,
                            })
                        }
                        Err(failed) => failed,
                    }
                }
                Err(error @ EwsError::Network { .. }) => AttemptFailed::Retry(error, network_delay),
                Err(error) => return Err(error),
            };
            let (error, delay) = match failed {
                AttemptFailed::Retry(error, delay) => (error, delay),
                AttemptFailed::Final(error) => return Err(error),
            };
            if attempt >= MAX_ATTEMPTS {
                return Err(error);
            }
            tracing::debug!(
                what = subject.what,
                mailbox = subject.mailbox,
                delay_ms = delay.as_millis() as u64,
                %error,
                "EWS asked to wait or failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// The account that logs on, for error messages.
    pub(crate) fn transport_user(&self) -> String {
        self.transport.user()
    }

    /// The primary SMTP address of a user, trying each candidate in turn (each may hold
    /// several addresses separated by `;`, as a PBX keeps them).
    pub async fn resolve_names(&self, candidates: &[String]) -> Result<MailboxAddress, EwsError> {
        let entries: Vec<&str> = candidates
            .iter()
            .flat_map(|candidate| candidate.split(';'))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect();
        let mut last_error = None;
        for entry in &entries {
            let body = format!(
                "<m:ResolveNames ReturnFullContactData=\"false\" SearchScope=\"ActiveDirectory\"><m:UnresolvedEntry>{}</m:UnresolvedEntry></m:ResolveNames>",
                escape(&format!("smtp:{}", entry.trim_start_matches("smtp:").trim_start_matches("SMTP:")))
            );
            let messages = match self.call("ResolveNames", Acting::Service, &body).await {
                Ok(messages) => messages,
                Err(error @ (EwsError::NonExistentMailbox { .. } | EwsError::BadAnswer { .. })) => {
                    last_error = Some(error);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let user = self.transport.user();
            let subject = Subject {
                what: "ResolveNames",
                user: &user,
                mailbox: entry,
            };
            for message in &messages {
                if let Err(error) = soap::check_message(message, &subject) {
                    last_error = Some(error);
                    continue;
                }
                let addresses: Vec<&str> = message
                    .find("ResolutionSet")
                    .map(|set| {
                        set.children_named("Resolution")
                            .filter_map(|resolution| resolution.path(&["Mailbox", "EmailAddress"]))
                            .map(|element| element.text.trim())
                            .collect()
                    })
                    .unwrap_or_default();
                // Several results only count when one of them is the address asked for.
                let chosen = match addresses.as_slice() {
                    [only] => Some(*only),
                    many => many
                        .iter()
                        .find(|address| address.eq_ignore_ascii_case(entry))
                        .copied(),
                };
                if let Some(address) = chosen {
                    return MailboxAddress::parse(address).map_err(|error| EwsError::BadAnswer {
                        what: "ResolveNames".to_string(),
                        detail: format!("'{address}' is not an address: {error}"),
                    });
                }
            }
        }
        Err(match last_error {
            Some(EwsError::BadAnswer { detail, .. })
            | Some(EwsError::NonExistentMailbox { code: detail, .. }) => {
                EwsError::NonExistentMailbox {
                    address: entries.join(";"),
                    code: detail,
                }
            }
            Some(other) => other,
            None => EwsError::NonExistentMailbox {
                address: entries.join(";"),
                code: "no address to resolve".to_string(),
            },
        })
    }

    /// The appointments of `mailbox` overlapping `[start, end)`, recurrences expanded.
    pub async fn read_window(
        &self,
        mailbox: &MailboxAddress,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Vec<Appointment>, EwsError> {
        let body = format!(
            "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI=\"item:Subject\"/><t:FieldURI FieldURI=\"item:Sensitivity\"/><t:FieldURI FieldURI=\"calendar:Start\"/><t:FieldURI FieldURI=\"calendar:End\"/><t:FieldURI FieldURI=\"calendar:IsAllDayEvent\"/><t:FieldURI FieldURI=\"calendar:LegacyFreeBusyStatus\"/><t:FieldURI FieldURI=\"calendar:IsCancelled\"/><t:FieldURI FieldURI=\"calendar:Organizer\"/></t:AdditionalProperties></m:ItemShape><m:CalendarView MaxEntriesReturned=\"{FIND_ITEM_LIMIT}\" StartDate=\"{}\" EndDate=\"{}\"/><m:ParentFolderIds>{}</m:ParentFolderIds></m:FindItem>",
            ews_time(start),
            ews_time(end),
            self.calendar_folder(mailbox),
        );
        let messages = self
            .call("FindItem", Acting::Mailbox(mailbox), &body)
            .await?;
        let user = self.transport.user();
        let subject = Subject {
            what: "FindItem",
            user: &user,
            mailbox: mailbox.as_str(),
        };
        let message = messages.first().ok_or_else(|| EwsError::BadAnswer {
            what: format!("FindItem for {mailbox}"),
            detail: "no response message".to_string(),
        })?;
        soap::check_message(message, &subject)?;
        let items = message
            .path(&["RootFolder", "Items"])
            .ok_or_else(|| EwsError::BadAnswer {
                what: format!("FindItem for {mailbox}"),
                detail: "no RootFolder/Items".to_string(),
            })?;
        if message
            .child("RootFolder")
            .and_then(|folder| folder.attribute("IncludesLastItemInRange"))
            == Some("false")
        {
            tracing::warn!(%mailbox, "more than {FIND_ITEM_LIMIT} appointments in the window; the rest are left out");
        }
        let mut appointments = Vec::new();
        for item in items.children_named("CalendarItem") {
            match appointment(item) {
                Ok(appointment) => appointments.push(appointment),
                Err(problem) => {
                    tracing::warn!(%mailbox, problem, "skipping a calendar item calbridge cannot read")
                }
            }
        }
        Ok(appointments)
    }

    /// Free/busy of up to 100 mailboxes (`GetUserAvailability`, FreeBusy view), for set-ups
    /// where only busy times are needed. A window of at most 42 days.
    pub async fn free_busy_batch(
        &self,
        mailboxes: &[MailboxAddress],
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Vec<FreeBusy>, EwsError> {
        if mailboxes.len() > 100 {
            return Err(EwsError::BadAnswer {
                what: "GetUserAvailability".to_string(),
                detail: format!(
                    "{} mailboxes asked for; Exchange takes at most 100 per request",
                    mailboxes.len()
                ),
            });
        }
        let list: String = mailboxes
            .iter()
            .map(|mailbox| {
                format!(
                    "<t:MailboxData><t:Email><t:Address>{}</t:Address></t:Email><t:AttendeeType>Required</t:AttendeeType><t:ExcludeConflicts>false</t:ExcludeConflicts></t:MailboxData>",
                    escape(mailbox.as_str())
                )
            })
            .collect();
        let body = format!(
            "<m:GetUserAvailabilityRequest><t:TimeZone><t:Bias>0</t:Bias><t:StandardTime><t:Bias>0</t:Bias><t:Time>00:00:00</t:Time><t:DayOrder>1</t:DayOrder><t:Month>1</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:StandardTime><t:DaylightTime><t:Bias>0</t:Bias><t:Time>00:00:00</t:Time><t:DayOrder>1</t:DayOrder><t:Month>1</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:DaylightTime></t:TimeZone><m:MailboxDataArray>{list}</m:MailboxDataArray><t:FreeBusyViewOptions><t:TimeWindow><t:StartTime>{}</t:StartTime><t:EndTime>{}</t:EndTime></t:TimeWindow><t:MergedFreeBusyIntervalInMinutes>30</t:MergedFreeBusyIntervalInMinutes><t:RequestedView>FreeBusy</t:RequestedView></t:FreeBusyViewOptions></m:GetUserAvailabilityRequest>",
            start.strftime("%Y-%m-%dT%H:%M:%S"),
            end.strftime("%Y-%m-%dT%H:%M:%S"),
        );
        let root_messages = self.call_raw("GetUserAvailability", &body).await?;
        let mut result = Vec::new();
        for (mailbox, response) in mailboxes
            .iter()
            .zip(root_messages.children_named("FreeBusyResponse"))
        {
            let message = response.child("ResponseMessage");
            let error = message.and_then(|message| {
                (message.attribute("ResponseClass") == Some("Error")).then(|| {
                    format!(
                        "{}: {}",
                        message.child_text("ResponseCode").unwrap_or_default(),
                        message.child_text("MessageText").unwrap_or_default()
                    )
                })
            });
            let busy = match error {
                Some(error) => Err(error),
                None => Ok(response
                    .find("CalendarEventArray")
                    .map(|array| {
                        array
                            .children_named("CalendarEvent")
                            .filter_map(|event| {
                                let start = parse_time(event.child_text("StartTime")?)?;
                                let end = parse_time(event.child_text("EndTime")?)?;
                                Some((
                                    start,
                                    end,
                                    show_as(event.child_text("BusyType").unwrap_or_default()),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default()),
            };
            result.push(FreeBusy {
                mailbox: mailbox.clone(),
                busy,
            });
        }
        Ok(result)
    }

    /// For operations whose answer is not a list of `ResponseMessages` (GetUserAvailability).
    async fn call_raw(&self, what: &str, body: &str) -> Result<Element, EwsError> {
        let answer = self.send_soap(what, Acting::Service, body).await?;
        answer
            .root
            .find("FreeBusyResponseArray")
            .cloned()
            .ok_or_else(|| EwsError::BadAnswer {
                what: what.to_string(),
                detail: format!(
                    "HTTP {} without FreeBusyResponseArray: {}",
                    answer.status,
                    shorten(&answer.text, 200)
                ),
            })
    }
}

/// The mailbox a request is about, for error messages ("" for service requests).
fn acting_mailbox(acting: Acting<'_>) -> &str {
    match acting {
        Acting::Mailbox(mailbox) => mailbox.as_str(),
        Acting::Service => "",
    }
}

/// EWS wants `xs:dateTime`; UTC with `Z` is unambiguous.
pub(crate) fn ews_time(timestamp: Timestamp) -> String {
    timestamp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn parse_time(text: &str) -> Option<Timestamp> {
    text.trim().parse::<Timestamp>().ok().or_else(|| {
        // Local times (GetUserAvailability answers in the request's zone, UTC here).
        text.trim()
            .parse::<jiff::civil::DateTime>()
            .ok()
            .and_then(|civil| civil.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|zoned| zoned.timestamp())
    })
}

fn show_as(status: &str) -> ShowAs {
    match status {
        "Free" => ShowAs::Free,
        "Tentative" => ShowAs::Tentative,
        "Busy" => ShowAs::Busy,
        "OOF" => ShowAs::Oof,
        "WorkingElsewhere" => ShowAs::WorkingElsewhere,
        _ => ShowAs::Unknown,
    }
}

fn sensitivity(text: &str) -> Sensitivity {
    match text {
        "Personal" => Sensitivity::Personal,
        "Private" => Sensitivity::Private,
        "Confidential" => Sensitivity::Confidential,
        _ => Sensitivity::Normal,
    }
}

/// The local date an all-day boundary stands for. calbridge asks in UTC (no
/// `TimeZoneContext`), where Exchange gives all-day items at midnight; an item created in
/// another zone can come back a few hours off midnight, so the boundary is rounded to the
/// nearest midnight rather than truncated (truncating is the classic one-day shift).
fn all_day_date(timestamp: Timestamp) -> jiff::civil::Date {
    let rounded = timestamp.saturating_add(12.hours()).unwrap_or(timestamp);
    rounded.to_zoned(jiff::tz::TimeZone::UTC).date()
}

fn appointment(item: &Element) -> Result<Appointment, String> {
    let id = item
        .child("ItemId")
        .and_then(|id| id.attribute("Id"))
        .ok_or("no ItemId")?
        .to_string();
    let start = item
        .child_text("Start")
        .and_then(parse_time)
        .ok_or("no readable Start")?;
    let end = item
        .child_text("End")
        .and_then(parse_time)
        .ok_or("no readable End")?;
    let all_day = item
        .child_text("IsAllDayEvent")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    let time = if all_day {
        let first_day = all_day_date(start);
        let end_day = all_day_date(end).max(first_day.tomorrow().unwrap_or(first_day));
        AppointmentTime::AllDay { first_day, end_day }
    } else {
        AppointmentTime::Timed { start, end }
    };
    let cancelled = item
        .child_text("IsCancelled")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    Ok(Appointment {
        id,
        time,
        show_as: show_as(item.child_text("LegacyFreeBusyStatus").unwrap_or_default()),
        sensitivity: sensitivity(item.child_text("Sensitivity").unwrap_or_default()),
        subject: item.child_text("Subject").map(str::to_string),
        organizer: item
            .path(&["Organizer", "Mailbox", "EmailAddress"])
            .and_then(|address| MailboxAddress::parse(address.text.trim()).ok()),
        status: if cancelled {
            AppointmentStatus::Cancelled
        } else {
            AppointmentStatus::Active
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_day_boundaries_off_midnight_round_to_the_nearest_date() {
        let date = |text: &str| all_day_date(text.parse().unwrap()).to_string();
        assert_eq!(date("2026-06-01T00:00:00Z"), "2026-06-01");
        assert_eq!(date("2026-05-31T22:00:00Z"), "2026-06-01");
        assert_eq!(date("2026-06-01T05:00:00Z"), "2026-06-01");
    }
}
