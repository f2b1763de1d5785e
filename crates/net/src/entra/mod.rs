//! Entra ID's client-credentials grant (RFC 6749 §4.4; Microsoft identity platform, "OAuth 2.0
//! client credentials flow"), once for every source: the form a token request sends and what
//! the token endpoint's answer says (this module), the token cache with its refresh and
//! credential back-off ([`tokens`]), and the certificate that signs client assertions
//! ([`certificate`]). Sending the request stays with the caller ([`TokenPoster`]), because the
//! Graph source sends it with reqwest while the EWS source sends it on its own connections
//! (with their host overrides and protocol log).

pub mod certificate;
pub mod delegated;
pub mod tokens;

use serde::Deserialize;

pub use certificate::{CertificateSigner, CredentialFileError};
pub use tokens::{
    AppCredential, AuthError, EntraAnswer, Grant, PostedAnswer, RefreshTokenKeeper, TokenPoster,
    TokenProvider, TokenStatus,
};

/// `client_assertion_type` for a certificate's signed JWT (RFC 7523).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Entra ID's tokens say how long they live; when an answer does not, an hour less a second is
/// what Entra ID issues by default.
const DEFAULT_LIFETIME_SECONDS: u64 = 3599;

/// How the app proves who it is.
#[derive(Clone, Copy)]
pub enum ClientCredential<'a> {
    /// The client secret's value.
    Secret(&'a str),
    /// A JWT signed with the app's certificate key.
    Assertion(&'a str),
}

/// The `application/x-www-form-urlencoded` body of a client-credentials token request.
pub fn token_request_form(
    client_id: &str,
    scope: &str,
    credential: ClientCredential<'_>,
) -> String {
    let mut form = url_form(&[
        ("client_id", client_id),
        ("scope", scope),
        ("grant_type", "client_credentials"),
    ]);
    let more = match credential {
        ClientCredential::Secret(secret) => url_form(&[("client_secret", secret)]),
        ClientCredential::Assertion(assertion) => url_form(&[
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", assertion),
        ]),
    };
    form.push('&');
    form.push_str(&more);
    form
}

pub(crate) fn url_form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| {
            format!(
                "{}={}",
                crate::percent::encode_form_value(name),
                crate::percent::encode_form_value(value)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A token the endpoint issued. No `Debug`: the token is a credential.
pub struct IssuedToken {
    pub access_token: String,
    pub lifetime_seconds: u64,
    /// A delegated grant's new refresh token (Entra ID rotates it at every use).
    pub refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// Reads a successful token answer; the error says what is missing (never the body, which
/// holds a token).
pub fn read_issued_token(body: &[u8]) -> Result<IssuedToken, String> {
    let parsed: TokenBody = serde_json::from_slice(body)
        .map_err(|error| format!("no access_token in the JSON answer: {error}"))?;
    let lifetime_seconds = match parsed.expires_in {
        Some(serde_json::Value::Number(number)) => number.as_u64(),
        // Some Entra ID endpoints (v1) send it as a string.
        Some(serde_json::Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(DEFAULT_LIFETIME_SECONDS);
    Ok(IssuedToken {
        access_token: parsed.access_token,
        lifetime_seconds,
        refresh_token: parsed.refresh_token.filter(|token| !token.is_empty()),
    })
}

/// Why the token endpoint refused, as its OAuth error answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The OAuth error, e.g. `invalid_client`.
    pub error: String,
    /// The AADSTS number, e.g. 7000222, from `error_codes` or the description's prefix.
    pub aadsts_code: Option<u64>,
    /// The first line of `error_description` (the rest is trace and correlation ids).
    pub description: String,
    pub trace_id: Option<String>,
    pub correlation_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
}

/// Reads an OAuth error answer; `None` when the body is not one (a proxy's page, an empty body).
pub fn read_refusal(body: &[u8]) -> Option<Refusal> {
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    if parsed.error.is_empty() {
        return None;
    }
    let aadsts_code = parsed.error_codes.first().copied().or_else(|| {
        // `AADSTS7000222: The provided client secret keys … are expired.`
        let rest = parsed.error_description.strip_prefix("AADSTS")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    Some(Refusal {
        error: parsed.error,
        aadsts_code,
        description: parsed
            .error_description
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        trace_id: parsed.trace_id,
        correlation_id: parsed.correlation_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_request_is_form_encoded_with_the_grant_and_scope() {
        let form = token_request_form(
            "app-1",
            "https://graph.microsoft.com/.default",
            ClientCredential::Secret("a+b&c=d ~é"),
        );
        assert_eq!(
            form,
            "client_id=app-1&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&grant_type=client_credentials&client_secret=a%2Bb%26c%3Dd+%7E%C3%A9"
        );
    }

    #[test]
    fn a_certificate_request_carries_the_assertion_and_its_type() {
        let form = token_request_form("app-1", "s", ClientCredential::Assertion("x.y.z"));
        assert!(form.ends_with(
            "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=x.y.z"
        ), "{form}");
        assert!(!form.contains("client_secret"), "{form}");
    }

    #[test]
    fn token_lifetimes_are_read_as_numbers_or_strings_with_an_hour_by_default() {
        let read = |body: &str| read_issued_token(body.as_bytes()).map(|t| t.lifetime_seconds);
        assert_eq!(read(r#"{"access_token":"t","expires_in":3600}"#), Ok(3600));
        assert_eq!(
            read(r#"{"access_token":"t","expires_in":"1200"}"#),
            Ok(1200)
        );
        assert_eq!(read(r#"{"access_token":"t"}"#), Ok(3599));
        assert_eq!(read(r#"{"access_token":"t","expires_in":-5}"#), Ok(3599));
        let missing = read_issued_token(br#"{"token_type":"Bearer"}"#)
            .err()
            .unwrap_or_default();
        assert!(missing.contains("access_token"), "{missing}");
    }

    #[test]
    fn refusals_give_the_aadsts_code_from_the_list_or_the_description() {
        let refusal = read_refusal(
            br#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys are expired.\r\nTrace ID: t\r\nCorrelation ID: c","trace_id":"t"}"#,
        );
        assert_eq!(
            refusal,
            Some(Refusal {
                error: "invalid_client".to_string(),
                aadsts_code: Some(7000222),
                description: "AADSTS7000222: The provided client secret keys are expired."
                    .to_string(),
                trace_id: Some("t".to_string()),
                correlation_id: None,
            })
        );
        let listed = read_refusal(
            br#"{"error":"unauthorized_client","error_codes":[700016],"error_description":"not found"}"#,
        );
        assert_eq!(listed.and_then(|r| r.aadsts_code), Some(700016));
        assert_eq!(read_refusal(b"<html>bad gateway</html>"), None);
        assert_eq!(read_refusal(br#"{"error":""}"#), None);
    }
}
