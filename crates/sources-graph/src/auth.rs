//! App-only tokens from Entra ID (OAuth 2.0 client-credentials grant).
//!
//! One [`TokenProvider`] per tenant caches the access token, refreshes it ahead of expiry with a
//! single request however many tasks ask at once, and — after a credential error — fails fast
//! with the same error until a back-off passes, because retrying a wrong or expired secret in a
//! loop gets the app (and in delegated setups the account) locked out.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use calbridge_domain::Secret;
use jiff::{SignedDuration, Timestamp};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::RsaKeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use calbridge_net::tls::error_chain;

use crate::clock::Clock;
use crate::config::{ConfigError, GraphCredential};

/// The token is refreshed this long before it expires, because Entra ID rejects a token whose
/// `exp` passed while a request (or a retry after `Retry-After`) was still on its way.
const REFRESH_AHEAD: SignedDuration = SignedDuration::from_secs(5 * 60);
/// A client assertion is valid this long; Entra ID accepts at most 10 minutes.
const ASSERTION_LIFETIME_SECONDS: i64 = 5 * 60;
/// Back-off after a credential error: the first retry after a minute, doubling up to an hour.
const CREDENTIAL_BACKOFF_FIRST: Duration = Duration::from_secs(60);
const CREDENTIAL_BACKOFF_MAX: Duration = Duration::from_secs(60 * 60);
/// Back-off after a network or server error: these heal by themselves, so retry sooner.
const TRANSIENT_BACKOFF_FIRST: Duration = Duration::from_secs(2);
const TRANSIENT_BACKOFF_MAX: Duration = Duration::from_secs(60);

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
            | AuthError::Rejected { answer, .. } => answer.aadsts_code,
            _ => None,
        }
    }

    /// The same kind of failure, ignoring trace ids and timestamps that differ per answer.
    pub fn same_problem(&self, other: &AuthError) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.aadsts_code() == other.aadsts_code()
    }

    fn backoff_range(&self) -> (Duration, Duration) {
        if self.is_credential_problem() || matches!(self, AuthError::Throttled { .. }) {
            (CREDENTIAL_BACKOFF_FIRST, CREDENTIAL_BACKOFF_MAX)
        } else {
            (TRANSIENT_BACKOFF_FIRST, TRANSIENT_BACKOFF_MAX)
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
    backoff: Duration,
}

#[derive(Default)]
struct TokenState {
    token: Option<CachedToken>,
    failure: Option<Failure>,
}

enum LoadedCredential {
    ClientSecret(Secret),
    Certificate(Box<CertificateSigner>),
}

/// The app certificate's private key and thumbprints, loaded once at start.
pub struct CertificateSigner {
    key_pair: RsaKeyPair,
    /// Base64url SHA-256 of the DER certificate (`x5t#S256`, what Entra ID prefers now).
    thumbprint_sha256: String,
    /// Base64url SHA-1 of the DER certificate (`x5t`, for older Entra ID deployments).
    thumbprint_sha1: String,
    random: SystemRandom,
}

impl std::fmt::Debug for CertificateSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSigner")
            .field("x5t#S256", &self.thumbprint_sha256)
            .finish_non_exhaustive()
    }
}

impl CertificateSigner {
    /// Loads a PEM certificate and its RSA private key (PKCS#8 or PKCS#1).
    pub fn from_pem_files(
        certificate_pem: &Path,
        private_key_pem: &Path,
    ) -> Result<Self, ConfigError> {
        let certificate_bytes =
            std::fs::read(certificate_pem).map_err(|error| ConfigError::File {
                setting: "credential.certificate.certificate_pem",
                path: certificate_pem.to_path_buf(),
                problem: error.to_string(),
            })?;
        let key_bytes = std::fs::read(private_key_pem).map_err(|error| ConfigError::File {
            setting: "credential.certificate.private_key_pem",
            path: private_key_pem.to_path_buf(),
            problem: error.to_string(),
        })?;
        Self::from_pem(&certificate_bytes, &key_bytes).map_err(|(setting, problem)| {
            ConfigError::File {
                setting,
                path: if setting.ends_with("certificate_pem") {
                    certificate_pem.to_path_buf()
                } else {
                    private_key_pem.to_path_buf()
                },
                problem,
            }
        })
    }

    /// Parses PEM text; the error names the setting at fault.
    pub fn from_pem(
        certificate_pem: &[u8],
        private_key_pem: &[u8],
    ) -> Result<Self, (&'static str, String)> {
        let certificate = CertificateDer::from_pem_slice(certificate_pem).map_err(|error| {
            (
                "credential.certificate.certificate_pem",
                format!("no PEM CERTIFICATE found: {error}"),
            )
        })?;
        // The key's own text never goes into the error: only what kind of problem it is.
        let key = PrivateKeyDer::from_pem_slice(private_key_pem).map_err(|error| {
            (
                "credential.certificate.private_key_pem",
                format!("no PEM private key found: {error}"),
            )
        })?;
        let key_pair =
            match &key {
                PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
                PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
                _ => return Err((
                    "credential.certificate.private_key_pem",
                    "the key is not an RSA key; Entra ID client assertions need RSA (PS256/RS256)"
                        .to_string(),
                )),
            }
            .map_err(|error| {
                (
                    "credential.certificate.private_key_pem",
                    format!("not a usable RSA private key: {error}"),
                )
            })?;
        let sha256 = ring::digest::digest(&ring::digest::SHA256, certificate.as_ref());
        let sha1 = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            certificate.as_ref(),
        );
        Ok(CertificateSigner {
            key_pair,
            thumbprint_sha256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
            thumbprint_sha1: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            random: SystemRandom::new(),
        })
    }

    /// The `x5t#S256` thumbprint (base64url of the certificate's SHA-256).
    pub fn thumbprint_sha256(&self) -> &str {
        &self.thumbprint_sha256
    }

    /// A signed client assertion (PS256) for `token_url`, valid from `now` for five minutes.
    pub fn client_assertion(
        &self,
        client_id: &str,
        token_url: &str,
        now: Timestamp,
    ) -> Result<Secret, String> {
        let header = serde_json::json!({
            "alg": "PS256",
            "typ": "JWT",
            "x5t#S256": self.thumbprint_sha256,
            "x5t": self.thumbprint_sha1,
        });
        let issued_at = now.as_second();
        let claims = serde_json::json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": random_uuid(&self.random).map_err(|()| "no random numbers".to_string())?,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + ASSERTION_LIFETIME_SECONDS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &ring::signature::RSA_PSS_SHA256,
                &self.random,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "RSA signing failed".to_string())?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }

    #[cfg(test)]
    fn public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair as _;
        self.key_pair.public_key().as_ref().to_vec()
    }
}

fn random_uuid(random: &SystemRandom) -> Result<String, ()> {
    let mut bytes = [0u8; 16];
    random.fill(&mut bytes).map_err(|_| ())?;
    // Version 4, variant 1: an ordinary random UUID, the form msal uses for `jti`.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Caches and refreshes the app-only token of one tenant.
pub struct TokenProvider {
    http: reqwest::Client,
    token_url: String,
    scope: String,
    tenant_id: String,
    client_id: String,
    credential: LoadedCredential,
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
    /// `authority_url` without a trailing slash; the token URL is
    /// `{authority_url}/{tenant}/oauth2/v2.0/token`.
    pub fn new(
        http: reqwest::Client,
        authority_url: &str,
        scope: &str,
        tenant_id: &str,
        client_id: &str,
        credential: &GraphCredential,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        let credential = match credential {
            GraphCredential::ClientSecret(secret) => {
                if secret.is_empty() {
                    return Err(ConfigError::Empty {
                        setting: "credential.client_secret",
                    });
                }
                LoadedCredential::ClientSecret(secret.clone())
            }
            GraphCredential::Certificate {
                certificate_pem,
                private_key_pem,
            } => LoadedCredential::Certificate(Box::new(CertificateSigner::from_pem_files(
                certificate_pem,
                private_key_pem,
            )?)),
        };
        Ok(TokenProvider {
            http,
            token_url: format!(
                "{}/{}/oauth2/v2.0/token",
                authority_url.trim_end_matches('/'),
                tenant_id
            ),
            scope: scope.to_string(),
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            credential,
            clock,
            state: Mutex::new(TokenState::default()),
            refresh_in_flight: tokio::sync::Mutex::new(()),
            token_requests: AtomicU64::new(0),
        })
    }

    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// How many token requests were sent to Entra ID.
    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::Relaxed)
    }

    /// A valid access token: the cached one, or a fresh one from Entra ID.
    pub async fn access_token(&self) -> Result<Secret, AuthError> {
        if let Some(token) = self.fresh_cached_token(self.clock.now()) {
            return Ok(token);
        }
        let _single_flight = self.refresh_in_flight.lock().await;
        // Another task may have refreshed (or failed) while this one waited for the lock.
        let now = self.clock.now();
        if let Some(token) = self.fresh_cached_token(now) {
            return Ok(token);
        }
        if let Some(outcome) = self.answer_during_backoff(now) {
            return outcome;
        }
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        let result = self.request_token(now).await;
        let now = self.clock.now();
        let mut state = lock(&self.state);
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
                let (first, max) = error.backoff_range();
                let (since, backoff) = match &state.failure {
                    Some(previous) if previous.error.same_problem(&error) => {
                        (previous.since, (previous.backoff * 2).min(max))
                    }
                    Some(previous) => (previous.since, first),
                    None => (now, first),
                };
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
                    backoff,
                });
                // A token that is due for refresh but not yet expired still works meanwhile.
                match &state.token {
                    Some(token) if now < token.expires_at => Ok(token.value.clone()),
                    _ => Err(error),
                }
            }
        }
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

    async fn request_token(&self, now: Timestamp) -> Result<(Secret, SignedDuration), AuthError> {
        let assertion;
        let credential = match &self.credential {
            LoadedCredential::ClientSecret(secret) => {
                calbridge_net::entra::ClientCredential::Secret(secret.expose())
            }
            LoadedCredential::Certificate(signer) => {
                assertion = signer
                    .client_assertion(&self.client_id, &self.token_url, now)
                    .map_err(|detail| AuthError::Signing {
                        client_id: self.client_id.clone(),
                        detail,
                    })?;
                calbridge_net::entra::ClientCredential::Assertion(assertion.expose())
            }
        };
        let form =
            calbridge_net::entra::token_request_form(&self.client_id, &self.scope, credential);
        let response = self
            .http
            .post(&self.token_url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|error| AuthError::Network {
                token_url: self.token_url.clone(),
                // reqwest's error names the URL and the cause, never the form body.
                detail: error_chain(&error),
            })?;
        let http_status = response.status().as_u16();
        let body = response.bytes().await.map_err(|error| AuthError::Network {
            token_url: self.token_url.clone(),
            detail: error_chain(&error),
        })?;
        if (200..300).contains(&http_status) {
            let issued = calbridge_net::entra::read_issued_token(&body).map_err(|detail| {
                AuthError::BadAnswer {
                    token_url: self.token_url.clone(),
                    http_status,
                    detail,
                }
            })?;
            let lifetime = i64::try_from(issued.lifetime_seconds).unwrap_or(i64::MAX);
            return Ok((
                Secret::new(issued.access_token),
                SignedDuration::from_secs(lifetime),
            ));
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

/// Classifies an Entra ID error answer by its AADSTS code.
pub fn classify_entra_error(
    token_url: &str,
    tenant_id: &str,
    client_id: &str,
    http_status: u16,
    body: &[u8],
) -> AuthError {
    let Some(refusal) = calbridge_net::entra::read_refusal(body) else {
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
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERTIFICATE: &[u8] = include_bytes!("../testdata/app-cert.pem");
    const KEY_PKCS8: &[u8] = include_bytes!("../testdata/app-key.pem");
    const KEY_PKCS1: &[u8] = include_bytes!("../testdata/app-key-pkcs1.pem");

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

    #[test]
    fn client_assertion_is_a_ps256_jwt_with_both_thumbprints_and_a_short_life() {
        let signer = CertificateSigner::from_pem(CERTIFICATE, KEY_PKCS8).unwrap();
        let now: Timestamp = "2026-11-23T08:00:00Z".parse().unwrap();
        let token_url = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
        let assertion = signer.client_assertion("app-1", token_url, now).unwrap();
        let parts: Vec<&str> = assertion.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header["alg"], "PS256");
        // Fingerprints as `openssl x509 -fingerprint -sha256 / -sha1` printed them for
        // testdata/app-cert.pem, re-encoded as base64url.
        let sha256_hex = "2548BE1F71D73578A5C21E91055680CF190B5695EC7C9EBD199E11A70F425D9B";
        let sha1_hex = "78AA98EA0A6E06DB433883F9F3FB7082ACA6C163";
        assert_eq!(header["x5t#S256"], URL_SAFE_NO_PAD.encode(hex(sha256_hex)));
        assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(hex(sha1_hex)));
        assert_eq!(claims["aud"], token_url);
        assert_eq!(claims["iss"], "app-1");
        assert_eq!(claims["sub"], "app-1");
        assert_eq!(claims["nbf"], now.as_second());
        let lifetime = claims["exp"].as_i64().unwrap() - now.as_second();
        assert!(lifetime > 0 && lifetime <= 600, "{lifetime}");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
        let signed = format!("{}.{}", parts[0], parts[1]);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PSS_2048_8192_SHA256,
            signer.public_key(),
        )
        .verify(signed.as_bytes(), &signature)
        .unwrap();
        // A tampered claim set fails verification, so the check above is meaningful.
        let tampered = format!("{}.{}x", parts[0], parts[1]);
        assert!(ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PSS_2048_8192_SHA256,
            signer.public_key(),
        )
        .verify(tampered.as_bytes(), &signature)
        .is_err());
    }

    #[test]
    fn pkcs1_keys_load_and_garbage_is_named_without_its_content() {
        let pkcs1 = CertificateSigner::from_pem(CERTIFICATE, KEY_PKCS1).unwrap();
        let pkcs8 = CertificateSigner::from_pem(CERTIFICATE, KEY_PKCS8).unwrap();
        assert_eq!(pkcs1.public_key(), pkcs8.public_key());
        let (setting, problem) =
            CertificateSigner::from_pem(CERTIFICATE, b"-----BEGIN NONSENSE-----\nhunter2\n")
                .unwrap_err();
        assert_eq!(setting, "credential.certificate.private_key_pem");
        assert!(!problem.contains("hunter2"), "{problem}");
        let (setting, _) = CertificateSigner::from_pem(b"", KEY_PKCS8).unwrap_err();
        assert_eq!(setting, "credential.certificate.certificate_pem");
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap())
            .collect()
    }
}
