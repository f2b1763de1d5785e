//! Who is calling EWS: NTLM (per connection, as IIS keeps it), Basic, or a Bearer token from
//! the emulator's own token endpoint (audience `https://outlook.office365.com`).

use std::sync::Mutex;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::Value;

use super::ntlm;
use super::setup::Account;
use crate::faults::{lock, ExtendedProtection};
use crate::state::AppState;

pub const OUTLOOK_RESOURCE: &str = "https://outlook.office365.com";

/// State kept per TCP connection: NTLM authenticates the connection, not the request.
#[derive(Default, Debug)]
pub struct ConnectionState {
    pub ntlm_pending: Mutex<Option<PendingNtlm>>,
    pub ntlm_account: Mutex<Option<usize>>,
    /// Over HTTPS: the channel binding hash of the certificate IIS (here, the emulator) has
    /// bound to the site, which Extended Protection compares with the client's. `None` on
    /// plain http, where there is no channel to bind to.
    pub channel_binding: Option<[u8; 16]>,
}

impl ConnectionState {
    /// A connection over TLS whose site certificate has `channel_binding`.
    pub fn over_tls(channel_binding: [u8; 16]) -> ConnectionState {
        ConnectionState {
            channel_binding: Some(channel_binding),
            ..ConnectionState::default()
        }
    }
}

/// A handshake between CHALLENGE and AUTHENTICATE: what the MIC covers.
#[derive(Debug)]
pub struct PendingNtlm {
    server_challenge: [u8; 8],
    negotiate: Vec<u8>,
    challenge: Vec<u8>,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An account (index into the setup's accounts) logged on with NTLM, Basic or a delegated token.
    Account(usize),
    /// An app-only token holding `full_access_as_app` in a tenant.
    App { tenant_index: usize },
}

pub enum AuthOutcome {
    Authenticated(Principal),
    /// The answer to send instead (401 challenge, NTLM CHALLENGE, …).
    Respond(Response),
}

fn unauthorized(state: &AppState, ntlm_token: Option<&str>, realm_host: &str) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, "").into_response();
    let headers = response.headers_mut();
    match ntlm_token {
        Some(token) => {
            if let Ok(value) = HeaderValue::from_str(&format!("NTLM {token}")) {
                headers.append(header::WWW_AUTHENTICATE, value);
            }
        }
        None => {
            headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("NTLM"));
            if let Ok(value) = HeaderValue::from_str(&format!("Basic realm=\"{realm_host}\"")) {
                headers.append(header::WWW_AUTHENTICATE, value);
            }
            if let Ok(value) = HeaderValue::from_str(&format!(
                "Bearer authorization_uri=\"{}/common/oauth2/authorize\", resource_id=\"{OUTLOOK_RESOURCE}\"",
                state.base_url
            )) {
                headers.append(header::WWW_AUTHENTICATE, value);
            }
        }
    }
    headers.insert("x-emulator-auth", HeaderValue::from_static("rejected"));
    response
}

/// Finds an account by logon name: `user@domain`, `DOMAIN\user` or a bare `user`.
pub fn find_account(state: &AppState, user: &str, domain: &str) -> Option<usize> {
    let accounts = &state.ews.setup.accounts;
    let (user, domain) = match user.split_once('\\') {
        Some((domain, user)) => (user, domain),
        None => (user, domain),
    };
    if user.contains('@') {
        return accounts.iter().position(|account| {
            account.user_principal_name.eq_ignore_ascii_case(user)
                || account.address.eq_ignore_ascii_case(user)
                || account.user_index.is_some_and(|index| {
                    state.directory.users[index]
                        .addresses()
                        .contains(&user.to_ascii_lowercase())
                })
        });
    }
    let domain_matches = |account: &Account| {
        if domain.is_empty() {
            return true;
        }
        let account_domain = account
            .user_principal_name
            .split_once('@')
            .map(|(_, domain)| domain)
            .unwrap_or_default();
        account_domain.eq_ignore_ascii_case(domain)
            || account_domain
                .split('.')
                .next()
                .is_some_and(|label| label.eq_ignore_ascii_case(domain))
    };
    accounts.iter().position(|account| {
        account.local_part().eq_ignore_ascii_case(user) && domain_matches(account)
    })
}

fn password_matches(account: &Account, password: &str) -> bool {
    account.password.as_deref() == Some(password)
}

/// Authenticates an EWS (or Autodiscover) request.
pub fn authenticate(
    state: &AppState,
    connection: Option<&ConnectionState>,
    headers: &HeaderMap,
) -> AuthOutcome {
    let realm_host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("localhost")
        .split(':')
        .next()
        .unwrap_or("localhost")
        .to_string();
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_string();
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value.as_str(), ""));
    let credentials = credentials.trim();
    match scheme.to_ascii_lowercase().as_str() {
        "" => {
            if let Some(account) = connection.and_then(|connection| *lock(&connection.ntlm_account))
            {
                return AuthOutcome::Authenticated(Principal::Account(account));
            }
            state.counters.count("ews.auth_challenges");
            AuthOutcome::Respond(unauthorized(state, None, &realm_host))
        }
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            let Some((user, password)) = decoded.as_deref().and_then(|text| text.split_once(':'))
            else {
                return AuthOutcome::Respond(unauthorized(state, None, &realm_host));
            };
            match find_account(state, user, "") {
                Some(index) if password_matches(&state.ews.setup.accounts[index], password) => {
                    AuthOutcome::Authenticated(Principal::Account(index))
                }
                _ => {
                    state.counters.count("ews.auth_failures");
                    tracing::info!(user, "EWS Basic logon failed");
                    AuthOutcome::Respond(unauthorized(state, None, &realm_host))
                }
            }
        }
        "ntlm" | "negotiate" => ntlm_step(state, connection, credentials, &realm_host),
        "bearer" => bearer(state, credentials, &realm_host),
        _ => AuthOutcome::Respond(unauthorized(state, None, &realm_host)),
    }
}

fn ntlm_step(
    state: &AppState,
    connection: Option<&ConnectionState>,
    credentials: &str,
    realm_host: &str,
) -> AuthOutcome {
    let engine = base64::engine::general_purpose::STANDARD;
    let Some(connection) = connection else {
        return AuthOutcome::Respond(unauthorized(state, None, realm_host));
    };
    let Ok(token) = engine.decode(credentials) else {
        return AuthOutcome::Respond(unauthorized(state, None, realm_host));
    };
    match ntlm::message_type(&token) {
        Some(1) => {
            let mut challenge = [0u8; 8];
            for byte in &mut challenge {
                *byte = (state.ids.unit() * 256.0) as u8;
            }
            *lock(&connection.ntlm_account) = None;
            let names = server_names(state);
            let message = ntlm::challenge_message(
                ntlm::negotiate_flags(&token),
                challenge,
                &names,
                state.clock.now().as_second(),
            );
            *lock(&connection.ntlm_pending) = Some(PendingNtlm {
                server_challenge: challenge,
                negotiate: token.clone(),
                challenge: message.clone(),
            });
            AuthOutcome::Respond(unauthorized(
                state,
                Some(&engine.encode(message)),
                realm_host,
            ))
        }
        Some(3) => {
            let pending = lock(&connection.ntlm_pending).take();
            match check_authenticate(state, connection, &token, pending) {
                Ok(index) => {
                    tracing::debug!(account = %state.ews.setup.accounts[index].address, "EWS NTLM logon");
                    *lock(&connection.ntlm_account) = Some(index);
                    AuthOutcome::Authenticated(Principal::Account(index))
                }
                Err(refusal) => {
                    state.counters.count("ews.auth_failures");
                    if matches!(refusal, NtlmRefusal::ChannelBinding(_)) {
                        state.counters.count("ews.channel_binding_refusals");
                    }
                    tracing::info!(reason = %refusal.reason(), "EWS NTLM logon failed");
                    // IIS answers a refused channel binding exactly like a wrong password: a
                    // plain 401 that offers the schemes again.
                    AuthOutcome::Respond(unauthorized(state, None, realm_host))
                }
            }
        }
        _ => AuthOutcome::Respond(unauthorized(state, None, realm_host)),
    }
}

/// Why an AUTHENTICATE was refused (for the log; the client only sees 401).
enum NtlmRefusal {
    /// Malformed, out of order, unknown user or wrong password.
    Credentials,
    /// The client said it sent a MIC and it does not match.
    Mic,
    /// Extended Protection: the binding is missing (`require`) or wrong.
    ChannelBinding(&'static str),
}

impl NtlmRefusal {
    fn reason(&self) -> &'static str {
        match self {
            NtlmRefusal::Credentials => "wrong or malformed credentials",
            NtlmRefusal::Mic => "the MIC does not match the handshake",
            NtlmRefusal::ChannelBinding(reason) => reason,
        }
    }
}

/// Checks an AUTHENTICATE as IIS does: the NTLMv2 proof, the MIC when one is claimed, then
/// Extended Protection's channel binding per `ews_extended_protection`.
fn check_authenticate(
    state: &AppState,
    connection: &ConnectionState,
    token: &[u8],
    pending: Option<PendingNtlm>,
) -> Result<usize, NtlmRefusal> {
    let message = ntlm::parse_authenticate(token).map_err(|_| NtlmRefusal::Credentials)?;
    tracing::debug!(user = %message.user, domain = %message.domain, workstation = %message.workstation, "NTLM AUTHENTICATE");
    let pending = pending.ok_or(NtlmRefusal::Credentials)?;
    let index =
        find_account(state, &message.user, &message.domain).ok_or(NtlmRefusal::Credentials)?;
    let password = state.ews.setup.accounts[index]
        .password
        .as_deref()
        .ok_or(NtlmRefusal::Credentials)?;
    if !message.verify(password, &pending.server_challenge) {
        return Err(NtlmRefusal::Credentials);
    }
    if message.claims_mic()
        && !message.mic_matches(password, &pending.negotiate, &pending.challenge)
    {
        return Err(NtlmRefusal::Mic);
    }
    // Plain http has no channel to bind to: only HTTPS logons are checked (Exchange requires
    // SSL on the virtual directories where Extended Protection is on).
    let Some(expected) = connection.channel_binding else {
        return Ok(index);
    };
    let sent = message.channel_binding();
    match (state.faults().ews_extended_protection, sent) {
        (ExtendedProtection::None, _) => Ok(index),
        (
            ExtendedProtection::Allow | ExtendedProtection::Require,
            ntlm::SentBinding::Hash(hash),
        ) if hash != expected => Err(NtlmRefusal::ChannelBinding(
            "Extended Protection: the channel binding does not match the server's certificate",
        )),
        (ExtendedProtection::Require, ntlm::SentBinding::None) => Err(NtlmRefusal::ChannelBinding(
            "Extended Protection (require): the logon carries no channel binding",
        )),
        _ => Ok(index),
    }
}

pub fn server_names(state: &AppState) -> ntlm::ServerNames {
    let domain = state
        .directory
        .tenants
        .first()
        .and_then(|tenant| tenant.domains.first())
        .cloned()
        .unwrap_or_else(|| "contoso.example".to_string());
    let netbios = domain
        .split('.')
        .next()
        .unwrap_or("CONTOSO")
        .to_ascii_uppercase();
    ntlm::ServerNames {
        netbios_domain: netbios,
        netbios_computer: "EXCH01".to_string(),
        dns_computer: format!("exch01.{domain}"),
        dns_domain: domain,
    }
}

fn bearer(state: &AppState, token: &str, realm_host: &str) -> AuthOutcome {
    let reject = |reason: &str| {
        state.counters.count("ews.auth_failures");
        tracing::info!(reason, "EWS bearer token rejected");
        let mut response = unauthorized(state, None, realm_host);
        if let Ok(value) = HeaderValue::from_str(reason) {
            response.headers_mut().insert("x-ms-diagnostics", value);
        }
        AuthOutcome::Respond(response)
    };
    let Ok(claims) = state.signer.verify(token) else {
        return reject("2000001;reason=\"The token signature is invalid.\"");
    };
    let audience = claims
        .get("aud")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !audience
        .trim_end_matches('/')
        .eq_ignore_ascii_case(OUTLOOK_RESOURCE)
    {
        return reject("2000008;reason=\"The token audience is not valid for EWS.\"");
    }
    let expiry = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if state.clock.now().as_second() >= expiry.saturating_add(300) {
        return reject("2000003;reason=\"The token has expired.\"");
    }
    let Some(tenant_index) = claims
        .get("tid")
        .and_then(Value::as_str)
        .and_then(|tenant| state.directory.tenant(tenant))
    else {
        return reject("2000001;reason=\"Unknown tenant.\"");
    };
    if let Some(scopes) = claims.get("scp").and_then(Value::as_str) {
        let allowed = scopes.split_whitespace().any(|scope| {
            scope.eq_ignore_ascii_case("EWS.AccessAsUser.All")
                || scope.eq_ignore_ascii_case("full_access_as_user")
        });
        let account = claims
            .get("oid")
            .and_then(Value::as_str)
            .and_then(|oid| state.directory.user(oid))
            .and_then(|user_index| {
                state
                    .ews
                    .setup
                    .accounts
                    .iter()
                    .position(|account| account.user_index == Some(user_index))
            });
        return match (allowed, account) {
            (true, Some(index)) => AuthOutcome::Authenticated(Principal::Account(index)),
            _ => reject("2000008;reason=\"The token lacks the EWS.AccessAsUser.All scope.\""),
        };
    }
    let has_role = claims
        .get("roles")
        .and_then(Value::as_array)
        .is_some_and(|roles| {
            roles
                .iter()
                .any(|role| role.as_str() == Some("full_access_as_app"))
        });
    if !has_role {
        return reject("2000008;reason=\"The token lacks the full_access_as_app role.\"");
    }
    AuthOutcome::Authenticated(Principal::App { tenant_index })
}
