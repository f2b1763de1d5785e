//! [`GraphSource`]: the operations the sync layer calls, all returning domain types.

use std::sync::Arc;
use std::time::Duration;

use calbridge_domain::{Appointment, MailboxAddress, Secret};
use calbridge_net::build_http_client;
use calbridge_net::percent::{encode_path_segment, encode_query_value};
use jiff::Timestamp;
use serde::Deserialize;

use crate::batch::{run_batches, BatchJob, SubResult};
use crate::clock::Clock;
use crate::config::{ConfigError, GraphAuth, GraphCredential, GraphSourceConfig};
use crate::error::{GraphAnswer, GraphError};
use crate::event::GraphEvent;
use crate::http::{AtomicCounters, GraphCounters, GraphHttp, GraphRequest, RetryPolicy};
use calbridge_net::entra::{
    AppCredential, AuthError, CertificateSigner, RefreshTokenKeeper, TokenProvider, TokenStatus,
};

/// Fields `calendarView` is asked for; the subject only when it may be shown.
const EVENT_FIELDS: &str = "id,start,end,isAllDay,isCancelled,showAs,sensitivity,organizer";
const USER_FIELDS: &str = "id,mail,userPrincipalName,displayName";
/// A delta walk longer than this is a server bug (a nextLink loop), not a big calendar.
const MAX_DELTA_PAGES: usize = 10_000;
/// Graph lists at most 100 subscriptions per page and a tenant holds at most a few per
/// mailbox: this bounds a listing that never ends.
const MAX_SUBSCRIPTION_PAGES: usize = 10_000;

/// The changes of one delta read, gathered over its pages.
#[derive(Clone, Default)]
struct DeltaChanges {
    upserts: Vec<Appointment>,
    removed_ids: Vec<String>,
}

impl DeltaChanges {
    fn outcome(self, next: DeltaLink) -> DeltaOutcome {
        DeltaOutcome::Changes {
            upserts: self.upserts,
            removed_ids: self.removed_ids,
            next,
        }
    }
}

/// Where a delta read goes after a page.
enum DeltaPage {
    /// The next page, by its relative link.
    More(String),
    /// The read is complete; the delta link is where the next one starts.
    Last(DeltaLink),
}

/// Whether subjects are read at all. With `Skip` they are neither requested (`$select`) nor,
/// where Graph sends them anyway (delta), passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectFetch {
    Fetch,
    Skip,
}

/// A directory user with a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// Graph's object id: stable across renames, used in all later requests.
    pub id: String,
    pub primary_smtp: MailboxAddress,
    pub display_name: Option<String>,
}

/// An opaque `@odata.deltaLink`, stored between runs and handed back to [`GraphSource::delta`].
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct DeltaLink(String);

impl DeltaLink {
    /// Wraps a link read back from the store.
    pub fn from_stored(link: String) -> Self {
        DeltaLink(link)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DeltaLink {
    // The delta token is a capability for the mailbox's changes; print only where it points.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeltaLink({}?…)", self.0.split('?').next().unwrap_or(""))
    }
}

/// Where a delta read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaCursor {
    /// From nothing: every event in the window comes as an upsert.
    Start,
    /// From the link the previous round ended with.
    Link(DeltaLink),
}

/// The result of a delta read.
#[derive(Debug, Clone, PartialEq)]
pub enum DeltaOutcome {
    Changes {
        upserts: Vec<Appointment>,
        removed_ids: Vec<String>,
        next: DeltaLink,
    },
    /// Graph forgot the sync state (410 Gone, `syncStateNotFound`): read the window anew and
    /// start delta from [`DeltaCursor::Start`].
    ResyncRequired,
}

/// A change-notification subscription to ask for.
#[derive(Debug, Clone)]
pub struct SubscriptionRequest {
    /// User id or address.
    pub user: String,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    /// Sent back in every notification; checked with [`crate::notification::parse_notifications`].
    pub client_state: Secret,
    pub expires_at: Timestamp,
}

/// A subscription Graph created or renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub resource: String,
    pub expires_at: Timestamp,
}

/// A subscription as `GET /subscriptions` lists it: enough to tell ours from others'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSubscription {
    pub id: String,
    pub resource: String,
    pub notification_url: String,
    /// `None` when Graph sent no readable `expirationDateTime`.
    pub expires_at: Option<Timestamp>,
}

/// The result of a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewOutcome {
    Renewed {
        expires_at: Timestamp,
    },
    /// Graph no longer has the subscription (404): create a new one.
    Gone,
}

/// The keeper of a delegated source built without one: nobody has signed in.
struct NoSignIn;

impl RefreshTokenKeeper for NoSignIn {
    fn current(&self) -> Option<calbridge_domain::Secret> {
        None
    }
    fn keep(&self, _refresh_token: calbridge_domain::Secret) {}
}

/// Tuning that is not part of the operator's configuration.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub retry: RetryPolicy,
    /// `odata.maxpagesize` asked for in calendar reads.
    pub page_size: u32,
    /// `$batch` requests in flight at once during window reads; each also holds one of the
    /// global request permits.
    pub max_batches_in_flight: usize,
    /// The cap on one answer's body (a page, a `$batch` answer); a larger one is an error.
    pub max_answer_bytes: usize,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            retry: RetryPolicy::default(),
            page_size: 500,
            max_batches_in_flight: 16,
            max_answer_bytes: crate::http::GRAPH_ANSWER_CAP,
        }
    }
}

/// The Microsoft Graph source of one tenant. Cheap to clone; clones share the token cache,
/// limits and counters.
#[derive(Clone)]
pub struct GraphSource {
    inner: Arc<Inner>,
}

struct Inner {
    http: Arc<GraphHttp>,
    tokens: Arc<TokenProvider>,
    /// `https://graph.microsoft.com/v1.0`
    api_root: String,
    options: SourceOptions,
    /// `https://login.microsoftonline.com` and the tenant, for a delegated sign-in's endpoints.
    authority_url: String,
    tenant_id: String,
}

impl std::fmt::Debug for GraphSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSource")
            .field("api_root", &self.inner.api_root)
            .field("tokens", &self.inner.tokens)
            .finish_non_exhaustive()
    }
}

fn check_https(setting: &'static str, value: &str) -> Result<String, ConfigError> {
    let trimmed = value.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).map_err(|error| ConfigError::BadUrl {
        setting,
        value: value.to_string(),
        problem: error.to_string(),
    })?;
    // Like msal, refuse plain http: the token request carries the client secret.
    if parsed.scheme() != "https" {
        return Err(ConfigError::BadUrl {
            setting,
            value: value.to_string(),
            problem: "the scheme must be https".to_string(),
        });
    }
    Ok(trimmed.to_string())
}

/// Checks and loads the app's credential: a non-empty secret, or a certificate and key that
/// can be read and sign.
fn app_credential(credential: &GraphCredential) -> Result<AppCredential, ConfigError> {
    Ok(match credential {
        GraphCredential::None => AppCredential::PublicClient,
        GraphCredential::ClientSecret(secret) => {
            if secret.expose().trim().is_empty() {
                return Err(ConfigError::Empty {
                    setting: "credential.client_secret",
                });
            }
            AppCredential::ClientSecret(secret.clone())
        }
        GraphCredential::Certificate {
            certificate_pem,
            private_key_pem,
        } => AppCredential::Certificate(Box::new(
            CertificateSigner::from_pem_files(certificate_pem, private_key_pem).map_err(
                |error| ConfigError::File {
                    setting: error.setting,
                    path: error.path,
                    problem: error.problem,
                },
            )?,
        )),
    })
}

impl GraphSource {
    pub fn new(config: &GraphSourceConfig, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        Self::with_options(config, clock, SourceOptions::default())
    }

    pub fn with_options(
        config: &GraphSourceConfig,
        clock: Arc<dyn Clock>,
        options: SourceOptions,
    ) -> Result<Self, ConfigError> {
        Self::build(config, clock, options, None)
    }

    /// A source with `auth = "delegated"`: tokens of the account whose refresh token `keeper`
    /// holds (sealed in the store by calbridge), rotated at every refresh.
    pub fn delegated(
        config: &GraphSourceConfig,
        clock: Arc<dyn Clock>,
        options: SourceOptions,
        keeper: Arc<dyn RefreshTokenKeeper>,
    ) -> Result<Self, ConfigError> {
        Self::build(config, clock, options, Some(keeper))
    }

    fn build(
        config: &GraphSourceConfig,
        clock: Arc<dyn Clock>,
        options: SourceOptions,
        keeper: Option<Arc<dyn RefreshTokenKeeper>>,
    ) -> Result<Self, ConfigError> {
        config.check()?;
        let authority_url = check_https("authority_url", &config.authority_url)?;
        let graph_url = check_https("graph_url", &config.graph_url)?;
        let client = build_http_client(config.extra_root_ca.as_deref())?;
        let scope = match &config.token_scope {
            Some(scope) => scope.trim().to_string(),
            None => format!("{graph_url}/.default"),
        };
        let credential = app_credential(&config.credential)?;
        let tenant_id = config.tenant_id.trim();
        let token_url = TokenProvider::entra_token_url(&authority_url, tenant_id);
        let tokens = Arc::new(match (config.auth, keeper) {
            (GraphAuth::Delegated, Some(keeper)) => TokenProvider::delegated(
                &token_url,
                &config.delegated_scope(),
                tenant_id,
                config.client_id.trim(),
                credential,
                keeper,
                clock,
            ),
            (GraphAuth::Delegated, None) => TokenProvider::delegated(
                &token_url,
                &config.delegated_scope(),
                tenant_id,
                config.client_id.trim(),
                credential,
                Arc::new(NoSignIn),
                clock,
            ),
            (GraphAuth::App, _) => TokenProvider::new(
                &token_url,
                &scope,
                tenant_id,
                config.client_id.trim(),
                credential,
                clock,
            ),
        });
        let http = Arc::new(
            GraphHttp::new(
                client,
                Arc::clone(&tokens),
                config.max_concurrent_requests,
                config.per_mailbox_concurrency,
                options.retry.clone(),
            )
            .with_max_answer_bytes(options.max_answer_bytes),
        );
        Ok(GraphSource {
            inner: Arc::new(Inner {
                http,
                tokens,
                api_root: format!("{graph_url}/v1.0"),
                options,
                authority_url: authority_url.clone(),
                tenant_id: tenant_id.to_string(),
            }),
        })
    }

    /// Takes a new secret or certificate from a reloaded configuration: checked and loaded
    /// first (a bad one changes nothing), then used from the next token request on.
    pub fn replace_credential(&self, credential: &GraphCredential) -> Result<(), ConfigError> {
        let loaded = app_credential(credential)?;
        self.inner.tokens.replace_credential(loaded);
        Ok(())
    }

    /// True when the source reads as a signed-in account (`auth = "delegated"`).
    pub fn is_delegated(&self) -> bool {
        self.inner.tokens.is_delegated()
    }

    /// The token provider (for the delegated sign-in flows, which redeem through it).
    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.inner.tokens
    }

    /// The authority URL and tenant a delegated sign-in goes to.
    pub fn sign_in_endpoint(&self) -> (&str, &str) {
        (&self.inner.authority_url, &self.inner.tenant_id)
    }

    /// The HTTP client the source sends with (the sign-in flows post through it too).
    pub fn http_client(&self) -> &reqwest::Client {
        self.inner.http.client()
    }

    /// Token state for the admin page.
    pub fn token_status(&self) -> TokenStatus {
        self.inner.tokens.token_status()
    }

    /// Gets a token now (the first step of `calbridge check`).
    pub async fn check_token(&self) -> Result<(), AuthError> {
        self.inner
            .tokens
            .access_token(self.inner.http.client())
            .await
            .map(|_| ())
    }

    /// Counters for the metrics endpoint.
    pub fn counters(&self) -> GraphCounters {
        self.inner.http.counters()
    }

    /// When Graph's throttling lets this mailbox be asked again, if it is parked.
    pub fn mailbox_parked_until(&self, user: &str) -> Option<tokio::time::Instant> {
        self.inner.http.mailbox_parked_until(user)
    }

    fn absolute(&self, relative: &str) -> String {
        format!("{}{relative}", self.inner.api_root)
    }

    /// Turns a link Graph returned into a path relative to the API root, refusing links to
    /// other hosts: the bearer token must only ever go to the configured Graph endpoint.
    fn relative_link(&self, link: &str, what: &str) -> Result<String, GraphError> {
        link.strip_prefix(&self.inner.api_root)
            .filter(|rest| rest.starts_with('/'))
            .map(str::to_string)
            .ok_or_else(|| GraphError::BadAnswer {
                what: what.to_string(),
                detail: format!(
                    "a paging link outside {}: {}",
                    self.inner.api_root,
                    link.split('?').next().unwrap_or("")
                ),
            })
    }

    // ---- users -------------------------------------------------------------------------

    /// Resolves an address to the user's id and primary SMTP address: first as a UPN or primary
    /// address, then among proxy addresses (aliases).
    pub async fn resolve_user(&self, address: &MailboxAddress) -> Result<ResolvedUser, GraphError> {
        let what = format!("user {address}");
        let direct = GraphRequest::get(
            self.absolute(&format!(
                "/users/{}?$select={USER_FIELDS}",
                encode_path_segment(address.as_str())
            )),
            what.clone(),
        );
        match self.inner.http.send(&direct, None).await {
            Ok(response) => {
                let user: GraphUser = response.json(&what)?;
                return user.resolve(&what);
            }
            Err(GraphError::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
        // `proxyAddresses/any(…)` is an advanced query on some tenants: the header and $count
        // make it work on all of them.
        let filter = format!(
            "proxyAddresses/any(p:p eq 'smtp:{}')",
            address.as_str().replace('\'', "''")
        );
        let by_alias = GraphRequest::get(
            self.absolute(&format!(
                "/users?$filter={}&$count=true&$select={USER_FIELDS}",
                encode_query_value(&filter)
            )),
            what.clone(),
        )
        .header("ConsistencyLevel", "eventual");
        let page: UserPage = self.inner.http.send(&by_alias, None).await?.json(&what)?;
        match page.value.into_iter().next() {
            Some(user) => user.resolve(&what),
            None => Err(GraphError::NotFound {
                what,
                answer: Box::new(GraphAnswer {
                    http_status: 404,
                    code: "Request_ResourceNotFound".to_string(),
                    message:
                        "no user has this address as user principal name, mail or proxy address"
                            .to_string(),
                    request_id: None,
                }),
            }),
        }
    }

    /// The users in a group (direct members), following paging. Members that are not users
    /// (groups, devices, contacts) or have no address are left out.
    pub async fn group_members(&self, group_id: &str) -> Result<Vec<ResolvedUser>, GraphError> {
        let what = format!("group {group_id}");
        let mut url = self.absolute(&format!(
            "/groups/{}/members?$select={USER_FIELDS}&$top=999",
            encode_path_segment(group_id)
        ));
        let mut users = Vec::new();
        for _ in 0..MAX_DELTA_PAGES {
            let page: UserPage = self
                .inner
                .http
                .send(&GraphRequest::get(url.clone(), what.clone()), None)
                .await?
                .json(&what)?;
            for member in page.value {
                let is_user = member
                    .odata_type
                    .as_deref()
                    .is_none_or(|kind| kind == "#microsoft.graph.user");
                if !is_user {
                    continue;
                }
                match member.resolve(&what) {
                    Ok(user) => users.push(user),
                    Err(error) => tracing::warn!("skipping a member of {what}: {error}"),
                }
            }
            match page.next_link {
                Some(next) => {
                    url = self.absolute(&self.relative_link(&next, &what)?);
                }
                None => return Ok(users),
            }
        }
        Err(GraphError::BadAnswer {
            what,
            detail: format!("more than {MAX_DELTA_PAGES} pages of members"),
        })
    }

    // ---- calendars ---------------------------------------------------------------------

    fn prefer_header(&self) -> String {
        format!(
            "outlook.timezone=\"UTC\", odata.maxpagesize={}",
            self.inner.options.page_size
        )
    }

    /// The initial read: every person's appointments in `[window_start, window_end)`, through
    /// `$batch` requests of up to 20 `calendarView` reads. One result per person, in input
    /// order; one failing mailbox does not affect the others.
    pub async fn read_windows<K: Clone>(
        &self,
        people: &[(K, String)],
        window_start: Timestamp,
        window_end: Timestamp,
        subjects: SubjectFetch,
    ) -> Vec<(K, Result<Vec<Appointment>, GraphError>)> {
        let select = match subjects {
            SubjectFetch::Fetch => format!("{EVENT_FIELDS},subject"),
            SubjectFetch::Skip => EVENT_FIELDS.to_string(),
        };
        let prefer = self.prefer_header();
        let jobs: Vec<BatchJob> = people
            .iter()
            .map(|(_, user)| BatchJob {
                method: "GET",
                url: format!(
                    "/users/{}/calendarView?startDateTime={}&endDateTime={}&$select={select}",
                    encode_path_segment(user),
                    format_instant(window_start),
                    format_instant(window_end),
                ),
                headers: vec![("Prefer", prefer.clone())],
                body: None,
                mailbox: user.clone(),
                what: format!("calendar of {user}"),
            })
            .collect();
        let mut appointments: Vec<Vec<Appointment>> = vec![Vec::new(); people.len()];
        let batch_url = self.absolute("/$batch");
        let errors = run_batches(
            &self.inner.http,
            &batch_url,
            &jobs,
            self.inner.options.max_batches_in_flight,
            |index, _status, body| {
                let page: EventPage = serde_json::from_value(body.clone()).map_err(|error| {
                    GraphError::BadAnswer {
                        what: jobs[index].what.clone(),
                        detail: format!("not a page of events: {error}"),
                    }
                })?;
                for value in page.value {
                    if let Some(appointment) =
                        self.convert_event(value, subjects, &jobs[index].what)
                    {
                        appointments[index].push(appointment);
                    }
                }
                match page.next_link {
                    Some(next) => Ok(SubResult::FollowUp(
                        self.relative_link(&next, &jobs[index].what)?,
                    )),
                    None => Ok(SubResult::Done),
                }
            },
        )
        .await;
        people
            .iter()
            .zip(errors)
            .zip(appointments)
            .map(|(((key, _), error), appointments)| {
                (
                    key.clone(),
                    match error {
                        Some(error) => Err(error),
                        None => Ok(appointments),
                    },
                )
            })
            .collect()
    }

    /// Converts one event; an event that cannot be converted is skipped and counted rather
    /// than failing the whole mailbox, whose other appointments still matter for presence.
    fn convert_event(
        &self,
        value: serde_json::Value,
        subjects: SubjectFetch,
        what: &str,
    ) -> Option<Appointment> {
        let label = value
            .get("id")
            .and_then(|id| id.as_str())
            .map_or_else(|| "without id".to_string(), |id| format!("`{id}`"));
        let converted = serde_json::from_value::<GraphEvent>(value)
            .map_err(|error| error.to_string())
            .and_then(|event| {
                event
                    .to_appointment(&label)
                    .map_err(|error| error.to_string())
            });
        match converted {
            Ok(mut appointment) => {
                if subjects == SubjectFetch::Skip {
                    appointment.subject = None;
                }
                Some(appointment)
            }
            Err(problem) => {
                AtomicCounters::add(&self.inner.http.counters.events_skipped, 1);
                // Both quote what Graph sent (serde echoes a wrong value whole): shortened.
                tracing::warn!(
                    "{what}: skipping event {}: {}",
                    crate::error::shorten(&label, 200),
                    crate::error::shorten(&problem, 500)
                );
                None
            }
        }
    }

    /// Reads what changed in `user`'s window since `cursor`, walking every page to the new
    /// delta link. Delta ignores `$select`, so with [`SubjectFetch::Skip`] subjects are
    /// dropped here and never leave this crate.
    pub async fn delta(
        &self,
        user: &str,
        window_start: Timestamp,
        window_end: Timestamp,
        cursor: &DeltaCursor,
        subjects: SubjectFetch,
    ) -> Result<DeltaOutcome, GraphError> {
        let what = format!("calendar changes of {user}");
        let mut url = match cursor {
            DeltaCursor::Start => self.absolute(&format!(
                "/users/{}/calendarView/delta?startDateTime={}&endDateTime={}",
                encode_path_segment(user),
                format_instant(window_start),
                format_instant(window_end),
            )),
            DeltaCursor::Link(link) => {
                // Validated like every other link: the token only goes to Graph.
                self.absolute(&self.relative_link(link.as_str(), &what)?)
            }
        };
        let mut changes = DeltaChanges::default();
        for _ in 0..MAX_DELTA_PAGES {
            let request =
                GraphRequest::get(url.clone(), what.clone()).header("Prefer", self.prefer_header());
            let response = match self.inner.http.send(&request, Some(user)).await {
                Ok(response) => response,
                Err(GraphError::ResyncRequired { .. }) => return Ok(DeltaOutcome::ResyncRequired),
                Err(error) => return Err(error),
            };
            let page: EventPage = response.json(&what)?;
            match self.take_delta_page(&mut changes, page, subjects, &what)? {
                DeltaPage::Last(next) => return Ok(changes.outcome(next)),
                DeltaPage::More(next) => url = self.absolute(&next),
            }
        }
        Err(GraphError::BadAnswer {
            what,
            detail: format!("more than {MAX_DELTA_PAGES} delta pages"),
        })
    }

    /// What changed in several users' windows, 20 delta reads per `$batch` (the
    /// reconciliation and polling of many people: one request per 20 people instead of one
    /// per person). One result per read, in input order; a user whose delta token Graph
    /// forgot gets [`DeltaOutcome::ResyncRequired`], one failing user does not affect the
    /// others.
    pub async fn delta_many<K: Clone>(
        &self,
        reads: &[(K, String, DeltaCursor)],
        window_start: Timestamp,
        window_end: Timestamp,
        subjects: SubjectFetch,
    ) -> Vec<(K, Result<DeltaOutcome, GraphError>)> {
        let prefer = self.prefer_header();
        let mut results: Vec<Option<Result<DeltaOutcome, GraphError>>> =
            (0..reads.len()).map(|_| None).collect();
        let mut jobs = Vec::with_capacity(reads.len());
        let mut job_reads = Vec::with_capacity(reads.len());
        for (index, (_, user, cursor)) in reads.iter().enumerate() {
            let what = format!("calendar changes of {user}");
            let url = match cursor {
                DeltaCursor::Start => format!(
                    "/users/{}/calendarView/delta?startDateTime={}&endDateTime={}",
                    encode_path_segment(user),
                    format_instant(window_start),
                    format_instant(window_end),
                ),
                // Validated like every other link: the token only goes to Graph.
                DeltaCursor::Link(link) => match self.relative_link(link.as_str(), &what) {
                    Ok(url) => url,
                    Err(error) => {
                        results[index] = Some(Err(error));
                        continue;
                    }
                },
            };
            jobs.push(BatchJob {
                method: "GET",
                url,
                headers: vec![("Prefer", prefer.clone())],
                body: None,
                mailbox: user.clone(),
                what,
            });
            job_reads.push(index);
        }
        let mut changes: Vec<DeltaChanges> = vec![DeltaChanges::default(); jobs.len()];
        let mut next_links: Vec<Option<DeltaLink>> = vec![None; jobs.len()];
        let batch_url = self.absolute("/$batch");
        let errors = run_batches(
            &self.inner.http,
            &batch_url,
            &jobs,
            self.inner.options.max_batches_in_flight,
            |index, _status, body| {
                let what = &jobs[index].what;
                let page: EventPage = serde_json::from_value(body.clone()).map_err(|error| {
                    GraphError::BadAnswer {
                        what: what.clone(),
                        detail: format!("not a page of events: {error}"),
                    }
                })?;
                match self.take_delta_page(&mut changes[index], page, subjects, what)? {
                    DeltaPage::Last(next) => {
                        next_links[index] = Some(next);
                        Ok(SubResult::Done)
                    }
                    DeltaPage::More(next) => Ok(SubResult::FollowUp(next)),
                }
            },
        )
        .await;
        for (position, (((read, error), changes), next)) in job_reads
            .into_iter()
            .zip(errors)
            .zip(changes)
            .zip(next_links)
            .enumerate()
        {
            results[read] = Some(match (error, next) {
                (Some(GraphError::ResyncRequired { .. }), _) => Ok(DeltaOutcome::ResyncRequired),
                (Some(error), _) => Err(error),
                (None, Some(next)) => Ok(changes.outcome(next)),
                (None, None) => Err(GraphError::BadAnswer {
                    what: jobs[position].what.clone(),
                    detail: "the delta read ended without an @odata.deltaLink".to_string(),
                }),
            });
        }
        reads
            .iter()
            .zip(results)
            .map(|((key, user, _), result)| {
                (
                    key.clone(),
                    result.unwrap_or_else(|| {
                        Err(GraphError::BadAnswer {
                            what: format!("calendar changes of {user}"),
                            detail: "no answer in the $batch".to_string(),
                        })
                    }),
                )
            })
            .collect()
    }

    /// Takes one delta page into `changes`: a removal cancels an earlier upsert of the same
    /// event and the other way round. Says where the read goes on (a relative, validated
    /// link) or the delta link it ended with.
    fn take_delta_page(
        &self,
        changes: &mut DeltaChanges,
        page: EventPage,
        subjects: SubjectFetch,
        what: &str,
    ) -> Result<DeltaPage, GraphError> {
        for value in page.value {
            if value.get("@removed").is_some() {
                if let Some(id) = value.get("id").and_then(|id| id.as_str()) {
                    changes.upserts.retain(|appointment| appointment.id != id);
                    changes.removed_ids.push(id.to_string());
                }
                continue;
            }
            if let Some(appointment) = self.convert_event(value, subjects, what) {
                changes.removed_ids.retain(|id| *id != appointment.id);
                changes
                    .upserts
                    .retain(|earlier| earlier.id != appointment.id);
                changes.upserts.push(appointment);
            }
        }
        if let Some(delta_link) = page.delta_link {
            self.relative_link(&delta_link, what)?;
            return Ok(DeltaPage::Last(DeltaLink(delta_link)));
        }
        match page.next_link {
            Some(next) => Ok(DeltaPage::More(self.relative_link(&next, what)?)),
            None => Err(GraphError::BadAnswer {
                what: what.to_string(),
                detail: "a delta page with neither @odata.nextLink nor @odata.deltaLink"
                    .to_string(),
            }),
        }
    }

    // ---- subscriptions -----------------------------------------------------------------

    /// Creates change-notification subscriptions for the users' events, 20 per `$batch`.
    /// One result per request, in input order.
    pub async fn create_subscriptions(
        &self,
        requests: &[SubscriptionRequest],
    ) -> Vec<Result<Subscription, GraphError>> {
        let jobs: Vec<BatchJob> = requests
            .iter()
            .map(|request| {
                let mut body = serde_json::json!({
                    "changeType": "created,updated,deleted",
                    "notificationUrl": request.notification_url,
                    "resource": format!("/users/{}/events", encode_path_segment(&request.user)),
                    "expirationDateTime": format_instant(request.expires_at),
                    "clientState": request.client_state.expose(),
                });
                if let Some(lifecycle) = &request.lifecycle_notification_url {
                    body["lifecycleNotificationUrl"] = serde_json::Value::String(lifecycle.clone());
                }
                BatchJob {
                    method: "POST",
                    url: "/subscriptions".to_string(),
                    headers: Vec::new(),
                    body: Some(body),
                    mailbox: request.user.clone(),
                    what: format!("subscription for {}", request.user),
                }
            })
            .collect();
        let mut created: Vec<Option<Subscription>> = vec![None; requests.len()];
        let batch_url = self.absolute("/$batch");
        let errors = run_batches(
            &self.inner.http,
            &batch_url,
            &jobs,
            self.inner.options.max_batches_in_flight,
            |index, _status, body| {
                created[index] = Some(parse_subscription(body, &jobs[index].what)?);
                Ok(SubResult::Done)
            },
        )
        .await;
        errors
            .into_iter()
            .zip(created)
            .zip(&jobs)
            .map(|((error, created), job)| match (error, created) {
                (Some(error), _) => Err(error),
                (None, Some(subscription)) => Ok(subscription),
                (None, None) => Err(GraphError::BadAnswer {
                    what: job.what.clone(),
                    detail: "no subscription in the answer".to_string(),
                }),
            })
            .collect()
    }

    /// Every subscription of this app that Graph holds (`GET /subscriptions` with an
    /// application token lists the app's subscriptions for any user of the tenant), following
    /// `@odata.nextLink` page by page.
    pub async fn list_subscriptions(&self) -> Result<Vec<ListedSubscription>, GraphError> {
        let what = "the app's subscriptions".to_string();
        let mut url = self.absolute("/subscriptions");
        let mut listed = Vec::new();
        for _ in 0..MAX_SUBSCRIPTION_PAGES {
            let request = GraphRequest::get(url.clone(), what.clone());
            let response = self.inner.http.send(&request, None).await?;
            let page: EventPage = response.json(&what)?;
            for value in page.value {
                // A subscription we cannot read is not ours to judge: skip it.
                let text = |name: &str| value.get(name).and_then(|field| field.as_str());
                let (Some(id), Some(notification_url)) = (text("id"), text("notificationUrl"))
                else {
                    continue;
                };
                listed.push(ListedSubscription {
                    id: id.to_string(),
                    resource: text("resource").unwrap_or_default().to_string(),
                    notification_url: notification_url.to_string(),
                    expires_at: text("expirationDateTime").and_then(|text| text.parse().ok()),
                });
            }
            match page.next_link {
                Some(next) => url = self.absolute(&self.relative_link(&next, &what)?),
                None => return Ok(listed),
            }
        }
        Err(GraphError::BadAnswer {
            what,
            detail: format!("more than {MAX_SUBSCRIPTION_PAGES} pages of subscriptions"),
        })
    }

    /// Extends a subscription. A subscription Graph no longer has is [`RenewOutcome::Gone`].
    pub async fn renew_subscription(
        &self,
        subscription_id: &str,
        expires_at: Timestamp,
    ) -> Result<RenewOutcome, GraphError> {
        let what = format!("subscription {subscription_id}");
        let request = GraphRequest::get(
            self.absolute(&format!(
                "/subscriptions/{}",
                encode_path_segment(subscription_id)
            )),
            what.clone(),
        )
        .json(
            reqwest::Method::PATCH,
            serde_json::json!({ "expirationDateTime": format_instant(expires_at) }),
        );
        match self.inner.http.send(&request, None).await {
            Ok(response) => {
                let value: serde_json::Value = response.json(&what)?;
                let subscription = parse_subscription(&value, &what)?;
                Ok(RenewOutcome::Renewed {
                    expires_at: subscription.expires_at,
                })
            }
            Err(GraphError::NotFound { .. }) => Ok(RenewOutcome::Gone),
            Err(error) => Err(error),
        }
    }

    /// Deletes a subscription; one that is already gone counts as deleted.
    pub async fn delete_subscription(&self, subscription_id: &str) -> Result<(), GraphError> {
        let what = format!("subscription {subscription_id}");
        let mut request = GraphRequest::get(
            self.absolute(&format!(
                "/subscriptions/{}",
                encode_path_segment(subscription_id)
            )),
            what,
        );
        request.method = reqwest::Method::DELETE;
        match self.inner.http.send(&request, None).await {
            Ok(_) | Err(GraphError::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    // ---- decline -----------------------------------------------------------------------

    /// Declines the meeting `event_id` in the calendar of `user_id` with `comment` to the
    /// organizer (`POST /users/{id}/events/{id}/decline`, Graph's "event: decline", sending
    /// the response). Graph answers `202 Accepted`. A 403 is [`GraphError::DeclineRefused`],
    /// naming the `Calendars.ReadWrite` permission it needs; a meeting no longer there is
    /// [`GraphError::NotFound`].
    pub async fn decline(
        &self,
        user_id: &str,
        event_id: &str,
        comment: &str,
    ) -> Result<(), GraphError> {
        let what = format!("meeting {event_id} in the calendar of {user_id}");
        let request = GraphRequest::get(
            self.absolute(&format!(
                "/users/{}/events/{}/decline",
                encode_path_segment(user_id),
                encode_path_segment(event_id)
            )),
            what,
        )
        .json(
            reqwest::Method::POST,
            serde_json::json!({ "comment": comment, "sendResponse": true }),
        );
        match self.inner.http.send(&request, Some(user_id)).await {
            Ok(_) => Ok(()),
            Err(
                GraphError::AccessDenied { what, answer } | GraphError::Forbidden { what, answer },
            ) => Err(GraphError::DeclineRefused { what, answer }),
            Err(error) => Err(error),
        }
    }

    /// How long to wait before retrying after `error`, for callers that schedule retries.
    pub fn retry_delay(&self, error: &GraphError, attempt: u32) -> Duration {
        self.inner.http.delay_for(error.retry_after(), attempt)
    }
}

fn parse_subscription(body: &serde_json::Value, what: &str) -> Result<Subscription, GraphError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct RawSubscription {
        id: String,
        #[serde(default)]
        resource: String,
        expiration_date_time: String,
    }
    let raw: RawSubscription =
        serde_json::from_value(body.clone()).map_err(|error| GraphError::BadAnswer {
            what: what.to_string(),
            detail: format!("not a subscription: {error}"),
        })?;
    let expires_at = raw
        .expiration_date_time
        .parse::<Timestamp>()
        .map_err(|error| GraphError::BadAnswer {
            what: what.to_string(),
            detail: format!(
                "expirationDateTime `{}` is not a timestamp: {error}",
                raw.expiration_date_time
            ),
        })?;
    Ok(Subscription {
        id: raw.id,
        resource: raw.resource,
        expires_at,
    })
}

#[derive(Deserialize)]
struct EventPage {
    #[serde(default)]
    value: Vec<serde_json::Value>,
    #[serde(default, rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(default, rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

#[derive(Deserialize)]
struct UserPage {
    #[serde(default)]
    value: Vec<GraphUser>,
    #[serde(default, rename = "@odata.nextLink")]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphUser {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default)]
    user_principal_name: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default, rename = "@odata.type")]
    odata_type: Option<String>,
}

impl GraphUser {
    fn resolve(self, what: &str) -> Result<ResolvedUser, GraphError> {
        let bad = |detail: String| GraphError::BadAnswer {
            what: what.to_string(),
            detail,
        };
        let id = self
            .id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| bad("a user without id".to_string()))?;
        // `mail` is the primary SMTP address; a user without a mailbox has none, and then the
        // UPN is the best guess (it usually equals the address).
        let primary_smtp = self
            .mail
            .as_deref()
            .and_then(|mail| MailboxAddress::parse(mail).ok())
            .or_else(|| {
                self.user_principal_name
                    .as_deref()
                    .and_then(|upn| MailboxAddress::parse(upn).ok())
            })
            .ok_or_else(|| {
                bad(format!(
                    "user {id} has neither mail nor a usable userPrincipalName"
                ))
            })?;
        Ok(ResolvedUser {
            id,
            primary_smtp,
            display_name: self.display_name,
        })
    }
}

/// `2026-11-23T08:00:00Z`: whole seconds, as Graph's examples write query times.
pub fn format_instant(instant: Timestamp) -> String {
    instant.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_encode_quotes_and_spaces_but_keep_odata_punctuation() {
        assert_eq!(
            encode_query_value("proxyAddresses/any(p:p eq 'smtp:a@b.c')"),
            "proxyAddresses%2Fany(p:p%20eq%20%27smtp:a@b.c%27)"
        );
        assert_eq!(
            encode_path_segment("ann o'neil@x.com"),
            "ann%20o%27neil@x.com"
        );
        assert_eq!(
            format_instant("2026-11-23T08:00:00.123Z".parse().unwrap()),
            "2026-11-23T08:00:00Z"
        );
    }

    #[test]
    fn users_resolve_to_mail_then_upn() {
        let user: GraphUser = serde_json::from_str(
            r#"{"id":"87d349ed-44d7-43e1-9a83-5f2406dee5bd","displayName":"Adele Vance","mail":"AdeleV@contoso.com","userPrincipalName":"adelev@contoso.onmicrosoft.com"}"#,
        )
        .unwrap();
        let resolved = user.resolve("user x").unwrap();
        assert_eq!(resolved.primary_smtp.as_str(), "adelev@contoso.com");
        assert_eq!(resolved.display_name.as_deref(), Some("Adele Vance"));
        let no_mail: GraphUser =
            serde_json::from_str(r#"{"id":"1","mail":null,"userPrincipalName":"b@c.d"}"#).unwrap();
        assert_eq!(no_mail.resolve("x").unwrap().primary_smtp.as_str(), "b@c.d");
        let nothing: GraphUser = serde_json::from_str(r#"{"id":"1"}"#).unwrap();
        assert!(matches!(
            nothing.resolve("x"),
            Err(GraphError::BadAnswer { .. })
        ));
    }

    #[test]
    fn subscription_answer_parses_with_fractional_expiry() {
        // From the Graph "create subscription" documentation's response example.
        let body = serde_json::json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "resource": "me/mailFolders('Inbox')/messages",
            "applicationId": "24d3b144-21ae-4080-943f-7067b395b913",
            "changeType": "created",
            "clientState": "secretClientValue",
            "notificationUrl": "https://webhook.azurewebsites.net/api/send/myNotifyClient",
            "expirationDateTime": "2016-11-20T18:23:45.9356913Z",
            "creatorId": "8ee44408-0679-472c-bc2a-692812af3437"
        });
        let subscription = parse_subscription(&body, "s").unwrap();
        assert_eq!(subscription.id, "7f105c7d-2dc5-4530-97cd-4e7ae6534c07");
        assert_eq!(
            subscription.expires_at.as_second(),
            "2016-11-20T18:23:45Z"
                .parse::<Timestamp>()
                .unwrap()
                .as_second()
        );
    }
}

#[cfg(test)]
mod fuzz_tests;
mod places;
pub use places::RoomList;
