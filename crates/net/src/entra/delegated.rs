//! Delegated sign-in of one account (Microsoft identity platform v2.0): the device
//! authorization grant ("OAuth 2.0 device authorization grant", RFC 8628) for headless servers,
//! the authorization code flow with PKCE ("OAuth 2.0 authorization code flow", RFC 7636) for the
//! admin page, and the refresh request that [`super::TokenProvider`] sends afterwards. Sending
//! stays with the caller's [`TokenPoster`], as for app-only tokens.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use calbridge_domain::Secret;
use serde::Deserialize;

use super::tokens::{classify_entra_error, AuthError, TokenPoster};
use super::{url_form, ClientCredential};

/// Entra ID's default polling interval when an answer names none.
const DEFAULT_INTERVAL_SECONDS: u64 = 5;
/// RFC 8628 §3.5: after `slow_down` the interval grows by five seconds.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// The refresh request's form (the auth code flow's "Refresh the access token").
pub fn refresh_request_form(
    client_id: &str,
    scope: &str,
    refresh_token: &str,
    credential: Option<ClientCredential<'_>>,
) -> String {
    with_credential(
        url_form(&[
            ("client_id", client_id),
            ("scope", scope),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_info", "1"),
        ]),
        credential,
    )
}

fn with_credential(mut form: String, credential: Option<ClientCredential<'_>>) -> String {
    let more = match credential {
        None => return form,
        Some(ClientCredential::Secret(secret)) => url_form(&[("client_secret", secret)]),
        Some(ClientCredential::Assertion(assertion)) => url_form(&[
            ("client_assertion_type", super::JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", assertion),
        ]),
    };
    form.push('&');
    form.push_str(&more);
    form
}

/// `{authority}/{tenant}/oauth2/v2.0/{endpoint}`
pub fn endpoint_url(authority_url: &str, tenant_id: &str, endpoint: &str) -> String {
    format!(
        "{}/{}/oauth2/v2.0/{endpoint}",
        authority_url.trim_end_matches('/'),
        tenant_id
    )
}

/// The device authorization answer. No `Debug`: the device code redeems a sign-in.
pub struct DeviceCode {
    pub device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    pub expires_in: Duration,
    pub interval: Duration,
    /// Entra ID's instruction for the person ("To sign in, use a web browser to open …").
    pub message: String,
}

#[derive(Deserialize)]
struct DeviceCodeBody {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    interval: Option<u64>,
    #[serde(default)]
    message: String,
}

/// Context of the errors a sign-in request can get.
pub struct SignInRequest<'a> {
    pub authority_url: &'a str,
    pub tenant_id: &'a str,
    pub client_id: &'a str,
    /// Delegated permissions plus `offline_access` (a refresh token) and `openid profile`
    /// (the account's name).
    pub scope: &'a str,
}

impl SignInRequest<'_> {
    fn token_url(&self) -> String {
        endpoint_url(self.authority_url, self.tenant_id, "token")
    }

    async fn post(
        &self,
        poster: &impl TokenPoster,
        url: &str,
        form: String,
    ) -> Result<(u16, Vec<u8>), AuthError> {
        let answer = poster
            .post_form(url, form)
            .await
            .map_err(|detail| AuthError::Network {
                token_url: url.to_string(),
                detail,
            })?;
        Ok((answer.http_status, answer.body))
    }

    fn refusal(&self, url: &str, http_status: u16, body: &[u8]) -> AuthError {
        classify_entra_error(url, self.tenant_id, self.client_id, http_status, body)
    }

    /// Asks for a device code (`/devicecode`).
    pub async fn start_device_flow(
        &self,
        poster: &impl TokenPoster,
    ) -> Result<DeviceCode, AuthError> {
        let url = endpoint_url(self.authority_url, self.tenant_id, "devicecode");
        let form = url_form(&[("client_id", self.client_id), ("scope", self.scope)]);
        let (http_status, body) = self.post(poster, &url, form).await?;
        if !(200..300).contains(&http_status) {
            return Err(self.refusal(&url, http_status, &body));
        }
        let parsed: DeviceCodeBody =
            serde_json::from_slice(&body).map_err(|error| AuthError::BadAnswer {
                token_url: url.clone(),
                http_status,
                detail: format!("not a device code answer: {error}"),
            })?;
        Ok(DeviceCode {
            device_code: Secret::new(parsed.device_code),
            user_code: parsed.user_code,
            verification_uri: parsed.verification_uri,
            expires_in: Duration::from_secs(parsed.expires_in.unwrap_or(900)),
            interval: Duration::from_secs(
                parsed.interval.unwrap_or(DEFAULT_INTERVAL_SECONDS).max(1),
            ),
            message: parsed.message,
        })
    }

    /// One poll of the token endpoint with the device code.
    pub async fn poll_device_code(
        &self,
        poster: &impl TokenPoster,
        device_code: &Secret,
        credential: Option<ClientCredential<'_>>,
    ) -> Result<DevicePoll, AuthError> {
        let url = self.token_url();
        let form = with_credential(
            url_form(&[
                ("client_id", self.client_id),
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code.expose()),
                ("client_info", "1"),
            ]),
            credential,
        );
        let (http_status, body) = self.post(poster, &url, form).await?;
        if (200..300).contains(&http_status) {
            return self
                .signed_in(&url, http_status, &body)
                .map(DevicePoll::SignedIn);
        }
        match super::read_refusal(&body).map(|refusal| refusal.error) {
            Some(error) if error == "authorization_pending" => Ok(DevicePoll::Pending),
            Some(error) if error == "slow_down" => Ok(DevicePoll::SlowDown),
            Some(error) if error == "expired_token" || error == "code_expired" => {
                Ok(DevicePoll::Expired)
            }
            Some(error) if error == "authorization_declined" || error == "access_denied" => {
                Ok(DevicePoll::Declined)
            }
            _ => Err(self.refusal(&url, http_status, &body)),
        }
    }

    /// Redeems an authorization code (with the PKCE verifier).
    pub async fn redeem_authorization_code(
        &self,
        poster: &impl TokenPoster,
        code: &str,
        redirect_uri: &str,
        code_verifier: &Secret,
        credential: Option<ClientCredential<'_>>,
    ) -> Result<SignedIn, AuthError> {
        let url = self.token_url();
        let form = with_credential(
            url_form(&[
                ("client_id", self.client_id),
                ("scope", self.scope),
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", code_verifier.expose()),
                ("client_info", "1"),
            ]),
            credential,
        );
        let (http_status, body) = self.post(poster, &url, form).await?;
        if (200..300).contains(&http_status) {
            return self.signed_in(&url, http_status, &body);
        }
        Err(self.refusal(&url, http_status, &body))
    }

    /// The URL the browser goes to: the authorize endpoint with PKCE and `state`.
    pub fn authorize_url(&self, redirect_uri: &str, state: &str, pkce: &Pkce) -> String {
        format!(
            "{}?{}",
            endpoint_url(self.authority_url, self.tenant_id, "authorize"),
            url_form(&[
                ("client_id", self.client_id),
                ("response_type", "code"),
                ("redirect_uri", redirect_uri),
                ("response_mode", "query"),
                ("scope", self.scope),
                ("state", state),
                ("code_challenge", &pkce.challenge),
                ("code_challenge_method", "S256"),
                ("prompt", "select_account"),
            ])
        )
    }

    // AuthError is what every token path returns (the async ones too, which clippy does not
    // measure); boxing it only here would give callers two shapes of one error.
    #[allow(clippy::result_large_err)]
    fn signed_in(&self, url: &str, http_status: u16, body: &[u8]) -> Result<SignedIn, AuthError> {
        let issued = super::read_issued_token(body).map_err(|detail| AuthError::BadAnswer {
            token_url: url.to_string(),
            http_status,
            detail,
        })?;
        let Some(refresh_token) = issued.refresh_token else {
            return Err(AuthError::BadAnswer {
                token_url: url.to_string(),
                http_status,
                detail: "no refresh_token: the scope must include offline_access".to_string(),
            });
        };
        let account = account_name(body, &issued.access_token);
        Ok(SignedIn {
            refresh_token: Secret::new(refresh_token),
            account,
        })
    }
}

/// A poll's outcome.
pub enum DevicePoll {
    /// Nobody entered the code yet: ask again after the interval.
    Pending,
    /// Too fast: ask again after the interval plus [`SLOW_DOWN_STEP`].
    SlowDown,
    /// The code expired before anybody signed in.
    Expired,
    /// The person declined.
    Declined,
    SignedIn(SignedIn),
}

/// A finished sign-in. No `Debug`: it holds the refresh token.
pub struct SignedIn {
    pub refresh_token: Secret,
    /// The account that signed in (`preferred_username` of the ID token, or the access
    /// token's `upn`), for messages and the admin page.
    pub account: Option<String>,
}

/// The account's name from the ID token, or else from the access token's claims. Read
/// without checking signatures: it only names the account in messages.
fn account_name(body: &[u8], access_token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Tokens {
        #[serde(default)]
        id_token: Option<String>,
    }
    let claims = |token: &str| -> Option<serde_json::Value> {
        let payload = token.split('.').nth(1)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let id_token = serde_json::from_slice::<Tokens>(body)
        .ok()
        .and_then(|tokens| tokens.id_token);
    let from_id = id_token.as_deref().and_then(claims).and_then(|claims| {
        claims
            .get("preferred_username")?
            .as_str()
            .map(str::to_string)
    });
    from_id.or_else(|| {
        claims(access_token).and_then(|claims| claims.get("upn")?.as_str().map(str::to_string))
    })
}

/// A PKCE pair (RFC 7636): the verifier stays here, the S256 challenge goes to the browser.
pub struct Pkce {
    pub verifier: Secret,
    pub challenge: String,
}

impl Pkce {
    pub fn generate() -> Pkce {
        let verifier = random_url_safe(32);
        let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
        Pkce {
            challenge: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            verifier: Secret::new(verifier),
        }
    }
}

/// `n_bytes` of system randomness, base64url (a PKCE verifier, an OAuth `state`).
pub fn random_url_safe(n_bytes: usize) -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = vec![0u8; n_bytes];
    // The system random source fails only without any entropy source; a zero-filled value
    // then still works, it is just guessable, which the state check's single use limits.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_form_carries_the_token_and_a_secret_only_when_there_is_one() {
        let public = refresh_request_form("app", "s offline_access", "r+t", None);
        assert_eq!(
            public,
            "client_id=app&scope=s+offline_access&grant_type=refresh_token&refresh_token=r%2Bt&client_info=1"
        );
        let confidential =
            refresh_request_form("app", "s", "r", Some(ClientCredential::Secret("x")));
        assert!(confidential.ends_with("&client_secret=x"), "{confidential}");
    }

    #[test]
    fn the_pkce_challenge_is_the_base64url_sha256_of_the_verifier() {
        let pkce = Pkce::generate();
        assert_eq!(pkce.verifier.expose().len(), 43);
        let digest = ring::digest::digest(&ring::digest::SHA256, pkce.verifier.expose().as_bytes());
        assert_eq!(pkce.challenge, URL_SAFE_NO_PAD.encode(digest.as_ref()));
        assert_ne!(Pkce::generate().challenge, pkce.challenge);
    }

    #[test]
    fn the_account_is_named_from_the_id_token_or_the_access_token() {
        let jwt = |claims: &str| format!("h.{}.s", URL_SAFE_NO_PAD.encode(claims));
        let body = format!(
            r#"{{"id_token":"{}"}}"#,
            jwt(r#"{"preferred_username":"monitor@contoso.example"}"#)
        );
        assert_eq!(
            account_name(body.as_bytes(), "x"),
            Some("monitor@contoso.example".to_string())
        );
        assert_eq!(
            account_name(b"{}", &jwt(r#"{"upn":"m@c.example"}"#)),
            Some("m@c.example".to_string())
        );
        assert_eq!(account_name(b"{}", "opaque"), None);
    }
}
