//! App-only tokens from Entra ID (OAuth 2.0 client-credentials grant), for every source that
//! asks Entra ID: the Graph source and EWS's bearer authentication.
//!
//! One [`TokenProvider`] per app and token URL caches the access token, refreshes it ahead of
//! expiry with a single request however many tasks ask at once, and — after a credential
//! error — fails fast with the same error until a back-off passes, because retrying a wrong or
//! expired secret in a loop gets the app (and in delegated setups the account) locked out.
//!
//! Sending the request is the caller's ([`TokenPoster`]): the Graph source posts with reqwest,
//! the EWS transport on its own connections (with their host overrides and protocol log).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use calbridge_domain::Secret;
use jiff::{SignedDuration, Timestamp};

use super::certificate::CertificateSigner;
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::tls::error_chain;

/// The token is refreshed this long before it expires, because Entra ID rejects a token whose
/// `exp` passed while a request (or a retry after `Retry-After`) was still on its way.
const REFRESH_AHEAD: SignedDuration = SignedDuration::from_secs(5 * 60);
/// Back-off after a credential error: the first retry after a minute, doubling up to an hour.
/// No jitter: one credential has one retry loop, so there is nothing to spread out.
const CREDENTIAL_BACKOFF: Backoff =
    Backoff::doubling(Duration::from_secs(60), Duration::from_secs(60 * 60));

/// What Entra ID said about a rejected token request, without anything secret: Entra never
/// echoes the client secret or the assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraAnswer {
    pub http_status: u16,
    /// OAuth error, e.g. `invalid_client`.
    pub error: String,
    /// The AADSTS number, e.g. 7000222.
    pub aadsts_code: Option<u64>,
    /// The first line of `error_description`.
    pub description: String,
    pub trace_id: Option<String>,
    pub correlation_id: Option<String>,
}

impl std::fmt::Display for EntraAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.http_status, self.error)?;
        if !self.description.is_empty() {
            write!(f, ": {}", self.description)?;
        }
        if let Some(trace_id) = &self.trace_id {
            write!(f, " (trace id {trace_id}")?;
            if let Some(correlation_id) = &self.correlation_id {
                write!(f, ", correlation id {correlation_id}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Why no token could be had, worded for the operator: what is wrong and where to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Client secret for app {client_id} is wrong (AADSTS7000215): copy the secret's Value (not its Secret ID) from Entra ID → App registrations → Certificates & secrets into calbridge.toml. Entra ID said: {answer}")]
    InvalidClientSecret {
        client_id: String,
        answer: EntraAnswer,
    },
    #[error("Client secret for app {client_id} expired (AADSTS7000222): create a new secret in Entra ID → App registrations → Certificates & secrets and put its value in calbridge.toml. Entra ID said: {answer}")]
    ClientSecretExpired {
        client_id: String,
        answer: EntraAnswer,
    },
    #[error("App {client_id} is not known in tenant {tenant_id} (AADSTS700016): check the client id, and that an administrator granted consent in that tenant (Entra ID → App registrations → API permissions → Grant admin consent). Entra ID said: {answer}")]
    ApplicationNotFoundInTenant {
        client_id: String,
        tenant_id: String,
        answer: EntraAnswer,
    },
    #[error("Tenant {tenant_id} does not exist (AADSTS90002): use the Directory (tenant) ID from the app's overview page in Entra ID. Entra ID said: {answer}")]
    TenantNotFound {
        tenant_id: String,
        answer: EntraAnswer,
    },
    #[error("Certificate of app {client_id} was rejected: upload the certificate's public part in Entra ID → App registrations → Certificates & secrets, and check this machine's clock. Entra ID said: {answer}")]
    CertificateRejected {
        client_id: String,
        answer: EntraAnswer,
    },
    #[error("Entra ID is throttling token requests for tenant {tenant_id} (AADSTS90055); calbridge backs off. Entra ID said: {answer}")]
    Throttled {
        tenant_id: String,
        answer: EntraAnswer,
    },
    #[error("Entra ID rejected the token request of app {client_id}: {answer}")]
    Rejected {
        client_id: String,
        answer: EntraAnswer,
    },
    #[error("Entra ID at {token_url} answered HTTP {http_status}, a server error; calbridge retries: {detail}")]
    ServerError {
        token_url: String,
        http_status: u16,
        detail: String,
    },
    #[error("Entra ID at {token_url} cannot be reached: {detail}")]
    Network { token_url: String, detail: String },
    #[error("Entra ID at {token_url} gave an answer calbridge does not understand (HTTP {http_status}): {detail}")]
    BadAnswer {
        token_url: String,
        http_status: u16,
        detail: String,
    },
    #[error("The client assertion for app {client_id} cannot be signed: {detail}")]
    Signing { client_id: String, detail: String },
    #[error("No account has signed in for app {client_id} yet: sign in once with `calbridge login --source <id>` (device code) or \"Sign in with Microsoft\" on the admin page")]
    NotSignedIn { client_id: String },
    #[error("The account's sign-in for app {client_id} is no longer valid ({reason}): sign in again with `calbridge login --source <id>` or \"Sign in with Microsoft\" on the admin page. Entra ID said: {answer}")]
    SignInExpired {
        client_id: String,
        reason: &'static str,
        answer: EntraAnswer,
    },
    #[error("Nobody consented to the delegated permissions of app {client_id} (AADSTS65001): grant consent (Entra ID → App registrations → API permissions → Grant admin consent for Calendars.Read.Shared and User.ReadBasic.All), or sign in again and accept. Entra ID said: {answer}")]
    ConsentRequired {
        client_id: String,
        answer: EntraAnswer,
    },
}

impl AuthError {
    /// Errors that another try with the same credential cannot fix: they wait for an
    /// administrator, so they back off for minutes to an hour.
    pub fn is_credential_problem(&self) -> bool {
        matches!(
            self,
            AuthError::InvalidClientSecret { .. }
                | AuthError::ClientSecretExpired { .. }
                | AuthError::ApplicationNotFoundInTenant { .. }
                | AuthError::TenantNotFound { .. }
                | AuthError::CertificateRejected { .. }
                | AuthError::Rejected { .. }
                | AuthError::Signing { .. }
                | AuthError::NotSignedIn { .. }
                | AuthError::SignInExpired { .. }
                | AuthError::ConsentRequired { .. }
        )
    }

    /// Errors that only a new sign-in of the account (or consent) ends.
    pub fn needs_sign_in(&self) -> bool {
        matches!(
            self,
            AuthError::NotSignedIn { .. }
                | AuthError::SignInExpired { .. }
                | AuthError::ConsentRequired { .. }
        )
    }

    /// The AADSTS number Entra ID gave, if any.
    pub fn aadsts_code(&self) -> Option<u64> {
        match self {
            AuthError::InvalidClientSecret { answer, .. }
            | AuthError::ClientSecretExpired { answer, .. }
            | AuthError::ApplicationNotFoundInTenant { answer, .. }
            | AuthError::TenantNotFound { answer, .. }
            | AuthError::CertificateRejected { answer, .. }
            | AuthError::Throttled { answer, .. }
            | AuthError::SignInExpired { answer, .. }
            | AuthError::ConsentRequired { answer, .. }
            | AuthError::Rejected { answer, .. } => answer.aadsts_code,
            _ => None,
        }
    }

    /// The same kind of failure, ignoring trace ids and timestamps that differ per answer.
    pub fn same_problem(&self, other: &AuthError) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.aadsts_code() == other.aadsts_code()
    }

    /// How long callers are answered with this error before Entra ID is asked again. A
    /// network or server error heals by itself and each caller retries with its own policy
    /// (the Graph pipeline's, EWS's network retry, the engine's per-person back-off), so it is
    /// not held; only the callers that were waiting for that request share its failure.
    fn backoff_after(&self, failures: u32) -> Duration {
        if self.is_credential_problem() || matches!(self, AuthError::Throttled { .. }) {
            CREDENTIAL_BACKOFF.delay_for(failures)
        } else {
            Duration::ZERO
        }
    }
}

/// The token state for the admin page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStatus {
    /// No token was asked for yet.
    NotRequested,
    /// A token is cached and valid until then.
    Valid { valid_until: Timestamp },
    /// Token requests fail since `since`; the next request to Entra ID is made no earlier than
    /// `next_attempt_at` (callers until then get `error` at once).
    Failing {
        since: Timestamp,
        error: AuthError,
        next_attempt_at: Timestamp,
    },
}

struct CachedToken {
    value: Secret,
    expires_at: Timestamp,
    refresh_at: Timestamp,
}

struct Failure {
    error: AuthError,
    since: Timestamp,
    next_attempt_at: Timestamp,
    /// Failures in a row with this same problem.
    failures: u32,
}

#[derive(Default)]
struct TokenState {
    token: Option<CachedToken>,
    failure: Option<Failure>,
    /// Requests to Entra ID that have been answered (or failed), so that a caller who waited
    /// for someone else's request takes its outcome instead of asking again.
    answered_requests: u64,
}

/// How the app proves who it is, loaded and checked before the first request.
pub enum AppCredential {
    /// The client secret's value.
    ClientSecret(Secret),
    /// The app's certificate and key, which sign a client assertion per request.
    Certificate(Box<CertificateSigner>),
    /// Nothing: a public client ("Allow public client flows"), only for delegated sign-in.
    PublicClient,
}

/// Where a delegated sign-in's refresh token lives. Entra ID answers every refresh with a new
/// refresh token; [`RefreshTokenKeeper::keep`] is called with it before the access token is
/// handed out, so the newest one is the one kept (sealed in the store by calbridge).
pub trait RefreshTokenKeeper: Send + Sync {
    /// The refresh token of the signed-in account; `None` while nobody signed in.
    fn current(&self) -> Option<Secret>;
    /// Keeps a new refresh token (from a refresh or a new sign-in) in place of the old one.
    fn keep(&self, refresh_token: Secret);
}

/// Which grant the provider asks Entra ID with.
pub enum Grant {
    /// App-only: the client-credentials grant.
    ClientCredentials,
    /// Delegated: the refresh token of an account that signed in once (device code or
    /// authorization code), rotated at every refresh.
    RefreshToken(Arc<dyn RefreshTokenKeeper>),
}

/// What a token endpoint answered: its HTTP status and body.
pub struct PostedAnswer {
    pub http_status: u16,
    pub body: Vec<u8>,
}

/// Sends a token request. The error describes a network failure (never the form, which holds
/// the credential).
pub trait TokenPoster: Sync {
    fn post_form(
        &self,
        url: &str,
        form: String,
    ) -> impl Future<Output = Result<PostedAnswer, String>> + Send;
}

impl TokenPoster for reqwest::Client {
    async fn post_form(&self, url: &str, form: String) -> Result<PostedAnswer, String> {
        let response = self
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            // reqwest's error names the URL and the cause, never the form body.
            .map_err(|error| error_chain(&error))?;
        let http_status = response.status().as_u16();
        let body = crate::body::read_capped(response, crate::body::TOKEN_ANSWER_CAP)
            .await
            .map_err(|error| error.to_string())?;
        Ok(PostedAnswer { http_status, body })
    }
}

/// Caches and refreshes the app-only token of one app at one token URL.
pub struct TokenProvider {
    token_url: String,
    scope: String,
    tenant_id: String,
    client_id: String,
    /// Replaced when the configuration is reloaded with a new secret or certificate.
    credential: Mutex<Arc<AppCredential>>,
    grant: Grant,
    clock: Arc<dyn Clock>,
    state: Mutex<TokenState>,
    /// Held while one task asks Entra ID, so concurrent callers share that one answer.
    refresh_in_flight: tokio::sync::Mutex<()>,
    token_requests: AtomicU64,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    /// A provider for `token_url` (Entra ID's is `{authority}/{tenant}/oauth2/v2.0/token`);
    /// `tenant_id` is only named in errors.
    pub fn new(
        token_url: &str,
        scope: &str,
        tenant_id: &str,
        client_id: &str,
        credential: AppCredential,
        clock: Arc<dyn Clock>,
    ) -> Self {
        TokenProvider {
            token_url: token_url.to_string(),
            scope: scope.to_string(),
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            credential: Mutex::new(Arc::new(credential)),
            grant: Grant::ClientCredentials,
            clock,
            state: Mutex::new(TokenState::default()),
            refresh_in_flight: tokio::sync::Mutex::new(()),
            token_requests: AtomicU64::new(0),
        }
    }

    /// A provider of delegated tokens for the account whose refresh token `keeper` holds;
    /// `scope` names the delegated permissions (and `offline_access`).
    pub fn delegated(
        token_url: &str,
        scope: &str,
        tenant_id: &str,
        client_id: &str,
        credential: AppCredential,
        keeper: Arc<dyn RefreshTokenKeeper>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        TokenProvider {
            grant: Grant::RefreshToken(keeper),
            ..TokenProvider::new(token_url, scope, tenant_id, client_id, credential, clock)
        }
    }

    /// True for a delegated (signed-in account) provider.
    pub fn is_delegated(&self) -> bool {
        matches!(self.grant, Grant::RefreshToken(_))
    }

    /// The app's client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The delegated permissions (or `/.default` resource) asked for.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// How the app proves itself, for the sign-in flows that send it too.
    pub fn credential(&self) -> Arc<AppCredential> {
        Arc::clone(&lock(&self.credential))
    }

    /// An account signed in anew: its refresh token is kept, the cached access token dropped
    /// and a sign-in failure's back-off ended, so the next call refreshes at once.
    pub fn signed_in(&self, refresh_token: Secret) {
        if let Grant::RefreshToken(keeper) = &self.grant {
            keeper.keep(refresh_token);
        }
        let mut state = lock(&self.state);
        state.token = None;
        if state.failure.take().is_some() {
            tracing::info!(client_id = %self.client_id, "an account signed in again");
        }
    }

    /// The token URL of an authority (`https://login.microsoftonline.com`) and tenant.
    pub fn entra_token_url(authority_url: &str, tenant_id: &str) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            authority_url.trim_end_matches('/'),
            tenant_id
        )
    }

    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// How many token requests were sent to Entra ID.
    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::Relaxed)
    }

    /// A valid access token: the cached one, or a fresh one from Entra ID, asked through
    /// `poster`.
    pub async fn access_token(&self, poster: &impl TokenPoster) -> Result<Secret, AuthError> {
        if let Some(token) = self.fresh_cached_token(self.clock.now()) {
            return Ok(token);
        }
        let answered_before = lock(&self.state).answered_requests;
        let _single_flight = self.refresh_in_flight.lock().await;
        // Another task may have refreshed (or failed) while this one waited for the lock.
        let now = self.clock.now();
        if let Some(token) = self.fresh_cached_token(now) {
            return Ok(token);
        }
        if let Some(outcome) = self.answer_during_backoff(now) {
            return outcome;
        }
        if let Some(outcome) = self.outcome_waited_for(answered_before, now) {
            return outcome;
        }
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        let result = self.request_token(poster, now).await;
        let now = self.clock.now();
        let mut state = lock(&self.state);
        state.answered_requests += 1;
        match result {
            Ok((value, lifetime)) => {
                let expires_at = now.saturating_add(lifetime).unwrap_or(now);
                // Short-lived tokens (emulators, tests) are refreshed at half their life.
                let ahead = if lifetime > REFRESH_AHEAD * 2 {
                    REFRESH_AHEAD
                } else {
                    lifetime / 2
                };
                let refresh_at = expires_at.saturating_sub(ahead).unwrap_or(now);
                if state.failure.take().is_some() {
                    tracing::info!(client_id = %self.client_id, "Entra ID issues tokens again");
                }
                state.token = Some(CachedToken {
                    value: value.clone(),
                    expires_at,
                    refresh_at,
                });
                Ok(value)
            }
            Err(error) => {
                let (since, failures) = match &state.failure {
                    Some(previous) if previous.error.same_problem(&error) => {
                        (previous.since, previous.failures.saturating_add(1))
                    }
                    Some(previous) => (previous.since, 1),
                    None => (now, 1),
                };
                let backoff = error.backoff_after(failures);
                // Logged when it starts or changes, not on every fast-failed call.
                if state
                    .failure
                    .as_ref()
                    .is_none_or(|previous| !previous.error.same_problem(&error))
                {
                    tracing::error!(client_id = %self.client_id, backoff_seconds = backoff.as_secs(), "{error}");
                }
                let next_attempt_at = now
                    .saturating_add(
                        SignedDuration::try_from(backoff).unwrap_or(SignedDuration::MAX),
                    )
                    .unwrap_or(now);
                state.failure = Some(Failure {
                    error: error.clone(),
                    since,
                    next_attempt_at,
                    failures,
                });
                // A token that is due for refresh but not yet expired still works meanwhile.
                match &state.token {
                    Some(token) if now < token.expires_at => Ok(token.value.clone()),
                    _ => Err(error),
                }
            }
        }
    }

    /// Takes a new credential (a reloaded configuration with a rotated secret or certificate).
    /// A credential failure's back-off ends: the next call asks Entra ID with the new one at
    /// once. A token already issued stays in use until it is due for refresh.
    pub fn replace_credential(&self, credential: AppCredential) {
        *lock(&self.credential) = Arc::new(credential);
        lock(&self.state).failure = None;
    }

    /// Drops the cached token after Graph answered 401 with it, so the next call asks anew.
    pub fn forget_token(&self, rejected: &Secret) {
        let mut state = lock(&self.state);
        if state
            .token
            .as_ref()
            .is_some_and(|token| token.value == *rejected)
        {
            state.token = None;
        }
    }

    /// The state for the admin page.
    pub fn token_status(&self) -> TokenStatus {
        let now = self.clock.now();
        let state = lock(&self.state);
        if let Some(failure) = &state.failure {
            return TokenStatus::Failing {
                since: failure.since,
                error: failure.error.clone(),
                next_attempt_at: failure.next_attempt_at,
            };
        }
        match &state.token {
            Some(token) if now < token.expires_at => TokenStatus::Valid {
                valid_until: token.expires_at,
            },
            _ => TokenStatus::NotRequested,
        }
    }

    fn fresh_cached_token(&self, now: Timestamp) -> Option<Secret> {
        let state = lock(&self.state);
        state
            .token
            .as_ref()
            .filter(|token| now < token.refresh_at)
            .map(|token| token.value.clone())
    }

    /// The failure of a request that was sent while this caller waited for the single flight.
    fn outcome_waited_for(
        &self,
        answered_before: u64,
        now: Timestamp,
    ) -> Option<Result<Secret, AuthError>> {
        let state = lock(&self.state);
        if state.answered_requests == answered_before {
            return None;
        }
        let failure = state.failure.as_ref()?;
        Some(match &state.token {
            Some(token) if now < token.expires_at => Ok(token.value.clone()),
            _ => Err(failure.error.clone()),
        })
    }

    fn answer_during_backoff(&self, now: Timestamp) -> Option<Result<Secret, AuthError>> {
        let state = lock(&self.state);
        let failure = state.failure.as_ref()?;
        if now >= failure.next_attempt_at {
            return None;
        }
        Some(match &state.token {
            Some(token) if now < token.expires_at => Ok(token.value.clone()),
            _ => Err(failure.error.clone()),
        })
    }

    async fn request_token(
        &self,
        poster: &impl TokenPoster,
        now: Timestamp,
    ) -> Result<(Secret, SignedDuration), AuthError> {
        let current = Arc::clone(&lock(&self.credential));
        let assertion = client_assertion(&current, &self.client_id, &self.token_url, now)?;
        let credential = client_credential(&current, assertion.as_ref());
        let refresh_token;
        let form = match &self.grant {
            Grant::ClientCredentials => {
                let Some(credential) = credential else {
                    return Err(AuthError::Signing {
                        client_id: self.client_id.clone(),
                        detail: "app-only sign-in needs a client secret or a certificate"
                            .to_string(),
                    });
                };
                super::token_request_form(&self.client_id, &self.scope, credential)
            }
            Grant::RefreshToken(keeper) => {
                refresh_token = keeper.current().ok_or_else(|| AuthError::NotSignedIn {
                    client_id: self.client_id.clone(),
                })?;
                super::delegated::refresh_request_form(
                    &self.client_id,
                    &self.scope,
                    refresh_token.expose(),
                    credential,
                )
            }
        };
        let answer = poster
            .post_form(&self.token_url, form)
            .await
            .map_err(|detail| AuthError::Network {
                token_url: self.token_url.clone(),
                detail,
            })?;
        let http_status = answer.http_status;
        if (200..300).contains(&http_status) {
            let issued =
                super::read_issued_token(&answer.body).map_err(|detail| AuthError::BadAnswer {
                    token_url: self.token_url.clone(),
                    http_status,
                    detail,
                })?;
            let lifetime = i64::try_from(issued.lifetime_seconds).unwrap_or(i64::MAX);
            if let (Grant::RefreshToken(keeper), Some(rotated)) =
                (&self.grant, issued.refresh_token)
            {
                keeper.keep(Secret::new(rotated));
            }
            return Ok((
                Secret::new(issued.access_token),
                SignedDuration::from_secs(lifetime),
            ));
        }
        // Entra ID never repeats the secret, but a proxy or another token service in front of
        // it might: what is kept of the answer must not carry it.
        let mut body = match current.as_ref() {
            AppCredential::ClientSecret(secret) if !secret.is_empty() => {
                String::from_utf8_lossy(&answer.body)
                    .replace(secret.expose(), "<redacted>")
                    .into_bytes()
            }
            _ => answer.body,
        };
        if let Grant::RefreshToken(keeper) = &self.grant {
            if let Some(refresh_token) = keeper.current().filter(|token| !token.is_empty()) {
                body = String::from_utf8_lossy(&body)
                    .replace(refresh_token.expose(), "<redacted>")
                    .into_bytes();
            }
        }
        Err(self.classify_failure(http_status, &body))
    }

    /// Turns Entra ID's error answer into an [`AuthError`].
    pub fn classify_failure(&self, http_status: u16, body: &[u8]) -> AuthError {
        classify_entra_error(
            &self.token_url,
            &self.tenant_id,
            &self.client_id,
            http_status,
            body,
        )
    }
}

/// The signed client assertion of a certificate credential (none for the others).
// AuthError is what every token path returns; see `delegated::SignInRequest::signed_in`.
#[allow(clippy::result_large_err)]
pub fn client_assertion(
    credential: &AppCredential,
    client_id: &str,
    token_url: &str,
    now: Timestamp,
) -> Result<Option<Secret>, AuthError> {
    match credential {
        AppCredential::Certificate(signer) => signer
            .client_assertion(client_id, token_url, now)
            .map(Some)
            .map_err(|detail| AuthError::Signing {
                client_id: client_id.to_string(),
                detail,
            }),
        _ => Ok(None),
    }
}

/// What the form sends to prove the app: the secret, the assertion, or nothing.
pub fn client_credential<'a>(
    credential: &'a AppCredential,
    assertion: Option<&'a Secret>,
) -> Option<super::ClientCredential<'a>> {
    match (credential, assertion) {
        (AppCredential::ClientSecret(secret), _) => {
            Some(super::ClientCredential::Secret(secret.expose()))
        }
        (AppCredential::Certificate(_), Some(assertion)) => {
            Some(super::ClientCredential::Assertion(assertion.expose()))
        }
        _ => None,
    }
}

/// Classifies an Entra ID error answer by its AADSTS code.
pub fn classify_entra_error(
    token_url: &str,
    tenant_id: &str,
    client_id: &str,
    http_status: u16,
    body: &[u8],
) -> AuthError {
    let Some(refusal) = super::read_refusal(body) else {
        let detail = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return if http_status >= 500 {
            AuthError::ServerError {
                token_url: token_url.to_string(),
                http_status,
                detail,
            }
        } else {
            AuthError::BadAnswer {
                token_url: token_url.to_string(),
                http_status,
                detail: format!("not an OAuth error answer: {detail}"),
            }
        };
    };
    let aadsts_code = refusal.aadsts_code;
    let answer = EntraAnswer {
        http_status,
        error: refusal.error,
        aadsts_code,
        description: refusal.description,
        trace_id: refusal.trace_id,
        correlation_id: refusal.correlation_id,
    };
    let client_id = client_id.to_string();
    let tenant_id = tenant_id.to_string();
    match aadsts_code {
        Some(7000215) => AuthError::InvalidClientSecret { client_id, answer },
        Some(7000222) => AuthError::ClientSecretExpired { client_id, answer },
        Some(700016) => AuthError::ApplicationNotFoundInTenant {
            client_id,
            tenant_id,
            answer,
        },
        Some(90002) => AuthError::TenantNotFound { tenant_id, answer },
        Some(90055) => AuthError::Throttled { tenant_id, answer },
        // 700027: assertion signature invalid / certificate not registered;
        // 700024: assertion outside its validity (clock skew); 700023: bad audience.
        Some(700027 | 700024 | 700023) => AuthError::CertificateRejected { client_id, answer },
        Some(65001) => AuthError::ConsentRequired { client_id, answer },
        Some(code @ (70008 | 700082 | 50173 | 54005 | 9002313 | 70000 | 50076 | 50079))
            if answer.error == "invalid_grant" =>
        {
            AuthError::SignInExpired {
                client_id,
                reason: match code {
                    700082 | 70008 => "the refresh token expired after 90 days without use",
                    50173 => "the grant was revoked: a password change or \"revoke sessions\"",
                    50076 | 50079 => "multi-factor authentication is required",
                    _ => "the refresh token is not valid",
                },
                answer,
            }
        }
        _ if answer.error == "invalid_grant" => AuthError::SignInExpired {
            client_id,
            reason: "Entra ID refused the grant",
            answer,
        },
        _ if http_status >= 500 => AuthError::ServerError {
            token_url: token_url.to_string(),
            http_status,
            detail: answer.to_string(),
        },
        _ if http_status == 429 => AuthError::Throttled { tenant_id, answer },
        _ => AuthError::Rejected { client_id, answer },
    }
}

/// A poisoned lock only means another task panicked mid-update; the token state is still
/// consistent enough to go on with (worst case one extra token request).
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    /// A token endpoint that answers from a script, and a clock moved by hand.
    struct ScriptedEndpoint {
        answers: Mutex<Vec<(u16, String)>>,
        posted: Mutex<Vec<(String, String)>>,
    }

    impl ScriptedEndpoint {
        fn new(answers: &[(u16, &str)]) -> Self {
            ScriptedEndpoint {
                answers: Mutex::new(
                    answers
                        .iter()
                        .rev()
                        .map(|(status, body)| (*status, (*body).to_string()))
                        .collect(),
                ),
                posted: Mutex::new(Vec::new()),
            }
        }

        fn posts(&self) -> usize {
            lock(&self.posted).len()
        }
    }

    impl TokenPoster for ScriptedEndpoint {
        async fn post_form(&self, url: &str, form: String) -> Result<PostedAnswer, String> {
            lock(&self.posted).push((url.to_string(), form));
            // Lets concurrent callers pile up behind the single flight.
            tokio::task::yield_now().await;
            let (http_status, body) = lock(&self.answers)
                .pop()
                .ok_or_else(|| "connection refused".to_string())?;
            Ok(PostedAnswer {
                http_status,
                body: body.into_bytes(),
            })
        }
    }

    #[derive(Default)]
    struct HandClock(AtomicI64);

    impl Clock for HandClock {
        fn now(&self) -> Timestamp {
            Timestamp::from_second(1_800_000_000 + self.0.load(Ordering::SeqCst))
                .unwrap_or(Timestamp::UNIX_EPOCH)
        }
    }

    fn provider(secret: &str, clock: Arc<HandClock>) -> TokenProvider {
        TokenProvider::new(
            "https://login.example/contoso/oauth2/v2.0/token",
            "https://outlook.office365.com/.default",
            "contoso",
            "app-1",
            AppCredential::ClientSecret(Secret::new(secret.to_string())),
            clock,
        )
    }

    #[derive(Default)]
    struct MemoryKeeper(Mutex<Option<Secret>>);

    impl RefreshTokenKeeper for MemoryKeeper {
        fn current(&self) -> Option<Secret> {
            lock(&self.0).clone()
        }
        fn keep(&self, refresh_token: Secret) {
            *lock(&self.0) = Some(refresh_token);
        }
    }

    #[tokio::test]
    async fn a_delegated_provider_refreshes_with_the_kept_token_keeps_the_rotated_one_and_backs_off_on_invalid_grant(
    ) {
        let clock = Arc::new(HandClock::default());
        let keeper = Arc::new(MemoryKeeper::default());
        let tokens = TokenProvider::delegated(
            "https://login.example/contoso/oauth2/v2.0/token",
            "https://graph.microsoft.com/Calendars.Read.Shared offline_access",
            "contoso",
            "app-1",
            AppCredential::PublicClient,
            Arc::clone(&keeper) as Arc<dyn RefreshTokenKeeper>,
            Arc::clone(&clock) as Arc<dyn Clock>,
        );
        let endpoint = ScriptedEndpoint::new(&[
            (
                200,
                r#"{"access_token":"a1","expires_in":3600,"refresh_token":"r2"}"#,
            ),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.","error_codes":[700082]}"#,
            ),
            (
                200,
                r#"{"access_token":"a3","expires_in":3600,"refresh_token":"r4"}"#,
            ),
        ]);
        // Nobody signed in: no request at all.
        assert!(matches!(
            tokens.access_token(&endpoint).await,
            Err(AuthError::NotSignedIn { .. })
        ));
        assert_eq!(endpoint.posts(), 0);
        tokens.signed_in(Secret::new("r1".to_string()));
        let first = tokens
            .access_token(&endpoint)
            .await
            .map(|t| t.expose().to_string());
        assert_eq!(first, Ok("a1".to_string()));
        let form = lock(&endpoint.posted)[0].1.clone();
        assert!(
            form.contains("grant_type=refresh_token&refresh_token=r1"),
            "{form}"
        );
        assert!(!form.contains("client_secret"), "{form}");
        assert_eq!(
            keeper.current().map(|t| t.expose().to_string()),
            Some("r2".to_string())
        );

        clock.0.store(3600, Ordering::SeqCst);
        let expired = tokens.access_token(&endpoint).await;
        let Err(error) = expired else {
            panic!("expected a sign-in error")
        };
        assert!(error.needs_sign_in(), "{error}");
        assert!(error.to_string().contains("sign in again"), "{error}");
        assert!(!error.to_string().contains("r2"), "{error}");
        // Within the back-off Entra ID is not asked again.
        assert!(tokens.access_token(&endpoint).await.is_err());
        assert_eq!(endpoint.posts(), 2);
        // A new sign-in ends the back-off at once.
        tokens.signed_in(Secret::new("r3".to_string()));
        let again = tokens
            .access_token(&endpoint)
            .await
            .map(|t| t.expose().to_string());
        assert_eq!(again, Ok("a3".to_string()));
        assert_eq!(
            keeper.current().map(|t| t.expose().to_string()),
            Some("r4".to_string())
        );
    }

    #[test]
    fn consent_and_revocation_answers_say_what_to_do() {
        let classify = |body: &str| classify_entra_error("u", "t", "app", 400, body.as_bytes());
        let consent = classify(
            r#"{"error":"invalid_grant","suberror":"consent_required","error_codes":[65001],"error_description":"AADSTS65001: The user or administrator has not consented."}"#,
        );
        assert!(matches!(consent, AuthError::ConsentRequired { .. }));
        assert!(
            consent.to_string().contains("Grant admin consent"),
            "{consent}"
        );
        let revoked = classify(
            r#"{"error":"invalid_grant","error_codes":[50173],"error_description":"AADSTS50173: The provided grant has expired due to it being revoked."}"#,
        );
        assert!(revoked.to_string().contains("revoked"), "{revoked}");
        assert!(revoked.needs_sign_in() && revoked.is_credential_problem());
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_request_and_the_token_is_reused_until_refresh() {
        let clock = Arc::new(HandClock::default());
        let tokens = provider("s3cret", Arc::clone(&clock));
        let endpoint = ScriptedEndpoint::new(&[
            (200, r#"{"access_token":"first","expires_in":3600}"#),
            (200, r#"{"access_token":"second","expires_in":3600}"#),
        ]);
        let answers =
            futures_util::future::join_all((0..8).map(|_| tokens.access_token(&endpoint))).await;
        assert!(answers
            .iter()
            .all(|answer| answer.as_ref().map(Secret::expose) == Ok("first")));
        assert_eq!(endpoint.posts(), 1);
        let (url, form) = lock(&endpoint.posted)[0].clone();
        assert_eq!(url, "https://login.example/contoso/oauth2/v2.0/token");
        assert!(form.contains("client_secret=s3cret"), "{form}");
        // Five minutes before expiry a new token is asked for.
        clock.0.store(3600 - 301, Ordering::SeqCst);
        assert_eq!(
            tokens
                .access_token(&endpoint)
                .await
                .map(|t| t.expose().to_string()),
            Ok("first".to_string())
        );
        clock.0.store(3600 - 299, Ordering::SeqCst);
        assert_eq!(
            tokens
                .access_token(&endpoint)
                .await
                .map(|t| t.expose().to_string()),
            Ok("second".to_string())
        );
        assert_eq!(endpoint.posts(), 2);
        // A token the resource refused is dropped and asked for again.
        tokens.forget_token(&Secret::new("second".to_string()));
        assert!(tokens.access_token(&endpoint).await.is_err());
        assert_eq!(endpoint.posts(), 3);
    }

    #[tokio::test]
    async fn an_outage_is_shared_by_the_callers_waiting_for_it_but_not_held_after() {
        let clock = Arc::new(HandClock::default());
        let tokens = provider("s3cret", Arc::clone(&clock));
        let endpoint = ScriptedEndpoint::new(&[
            (503, "<html>Service Unavailable</html>"),
            (200, r#"{"access_token":"back","expires_in":3600}"#),
        ]);
        let answers =
            futures_util::future::join_all((0..8).map(|_| tokens.access_token(&endpoint))).await;
        assert!(answers.iter().all(|answer| matches!(
            answer,
            Err(AuthError::ServerError {
                http_status: 503,
                ..
            })
        )));
        assert_eq!(endpoint.posts(), 1, "one request for the eight callers");
        // The next caller, at the same instant, asks again: no hold after a server error.
        let token = tokens.access_token(&endpoint).await;
        assert_eq!(
            token.map(|t| t.expose().to_string()),
            Ok("back".to_string())
        );
        assert_eq!(endpoint.posts(), 2);
    }

    #[tokio::test]
    async fn a_wrong_secret_backs_off_a_minute_then_two_and_its_echo_is_redacted() {
        let clock = Arc::new(HandClock::default());
        let tokens = provider("hunter2", Arc::clone(&clock));
        let refusal = r#"{"error":"invalid_client","error_codes":[7000215],"error_description":"AADSTS7000215: Invalid client secret provided: hunter2"}"#;
        let endpoint = ScriptedEndpoint::new(&[(401, refusal), (401, refusal), (401, refusal)]);
        let error = tokens.access_token(&endpoint).await.err();
        assert!(
            matches!(error, Some(AuthError::InvalidClientSecret { .. })),
            "{error:?}"
        );
        let message = error.map(|error| error.to_string()).unwrap_or_default();
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains("<redacted>"), "{message}");
        // Until the back-off passes, callers get the same error without a request.
        clock.0.store(59, Ordering::SeqCst);
        assert!(tokens.access_token(&endpoint).await.is_err());
        assert_eq!(endpoint.posts(), 1);
        clock.0.store(60, Ordering::SeqCst);
        assert!(tokens.access_token(&endpoint).await.is_err());
        assert_eq!(endpoint.posts(), 2);
        match tokens.token_status() {
            TokenStatus::Failing {
                next_attempt_at, ..
            } => assert_eq!(next_attempt_at.as_second() - clock.now().as_second(), 120),
            other => panic!("{other:?}"),
        }
    }

    fn classify(body: &str) -> AuthError {
        classify_entra_error(
            "https://login.example/t/oauth2/v2.0/token",
            "contoso-tenant",
            "1a2b3c4d-app",
            400,
            body.as_bytes(),
        )
    }

    #[test]
    fn expired_secret_tells_the_operator_where_to_make_a_new_one() {
        // Shape from Microsoft's documentation of the client-credentials error answer.
        let error = classify(
            r#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys for app '1a2b3c4d-app' are expired. Visit the Azure portal to create new keys for your app.\r\nTrace ID: 0000aaaa-11bb-cccc-dd22-eeeeee333333\r\nCorrelation ID: 1111bbbb-22cc-dddd-ee33-ffffff444444\r\nTimestamp: 2026-10-01 08:00:00Z","error_codes":[7000222],"timestamp":"2026-10-01 08:00:00Z","trace_id":"0000aaaa-11bb-cccc-dd22-eeeeee333333","correlation_id":"1111bbbb-22cc-dddd-ee33-ffffff444444"}"#,
        );
        assert!(matches!(error, AuthError::ClientSecretExpired { .. }));
        let message = error.to_string();
        assert!(message.starts_with("Client secret for app 1a2b3c4d-app expired"));
        assert!(message.contains("App registrations → Certificates & secrets"));
        assert!(message.contains("trace id 0000aaaa-11bb-cccc-dd22-eeeeee333333"));
        // Only the first line of Entra's description is kept.
        assert!(!message.contains("Timestamp:"), "{message}");
        assert!(error.is_credential_problem());
        assert_eq!(error.aadsts_code(), Some(7000222));
    }

    #[test]
    fn aadsts_codes_are_classified_even_without_error_codes() {
        assert!(matches!(
            classify(
                r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#
            ),
            AuthError::InvalidClientSecret { .. }
        ));
        assert!(matches!(
            classify(
                r#"{"error":"unauthorized_client","error_codes":[700016],"error_description":"AADSTS700016: Application with identifier 'x' was not found in the directory 'y'."}"#
            ),
            AuthError::ApplicationNotFoundInTenant { .. }
        ));
        assert!(matches!(
            classify(
                r#"{"error":"invalid_request","error_codes":[90002],"error_description":"AADSTS90002: Tenant 'x' not found."}"#
            ),
            AuthError::TenantNotFound { .. }
        ));
        let throttled = classify(
            r#"{"error":"temporarily_unavailable","error_codes":[90055],"error_description":"AADSTS90055: TenantThrottlingThreshold"}"#,
        );
        assert!(matches!(throttled, AuthError::Throttled { .. }));
        assert!(!throttled.is_credential_problem());
        assert!(matches!(
            classify(
                r#"{"error":"invalid_scope","error_codes":[1002012],"error_description":"AADSTS1002012: bad scope"}"#
            ),
            AuthError::Rejected { .. }
        ));
        let html = classify_entra_error("u", "t", "c", 502, b"<html>Bad gateway</html>");
        assert!(matches!(
            html,
            AuthError::ServerError {
                http_status: 502,
                ..
            }
        ));
        assert!(html.to_string().contains("Bad gateway"));
    }
}
