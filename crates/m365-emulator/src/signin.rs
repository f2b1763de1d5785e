//! Delegated sign-in on the Microsoft identity platform (v2.0): the authorize endpoint with a
//! small sign-in and consent form for scenario users, the device code endpoint with its
//! verification page, and the state behind the token endpoint's `device_code`,
//! `authorization_code` (with PKCE) and `refresh_token` grants: refresh tokens with rotation,
//! an inactivity lifetime and revocation, user and admin consent, and Outlook calendar sharing.
//!
//! Microsoft's pages this follows (cited in the README): "OAuth 2.0 device authorization grant",
//! "OAuth 2.0 authorization code flow", "Refresh tokens in the Microsoft identity platform" and
//! "Microsoft Entra authentication and authorization error codes".

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use jiff::Timestamp;
use serde_json::{json, Value};

use crate::faults::lock;
use crate::identity::{entra, EntraError, GRAPH_RESOURCE};
use crate::notify::percent_encode;
use crate::state::AppState;

/// Entra's authorization codes live about ten minutes.
const AUTHORIZATION_CODE_MINUTES: i64 = 10;

#[derive(Default)]
pub struct SignInStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    device_codes: HashMap<String, DeviceCode>,
    authorization_codes: HashMap<String, AuthorizationCode>,
    refresh_tokens: HashMap<String, RefreshGrant>,
    /// Per (app, user): the Graph permissions the user consented to, lower-cased.
    user_consents: HashMap<(usize, usize), BTreeSet<String>>,
    /// Apps whose admin consent an administrator removed while the emulator runs.
    admin_consent_revoked: BTreeSet<usize>,
    /// Per user: refresh tokens issued before this instant are revoked (`revokeSignInSessions`,
    /// a password reset).
    tokens_valid_from: HashMap<usize, Timestamp>,
    /// Outlook calendar sharing: (owner, reader).
    sharing: BTreeSet<(usize, usize)>,
    /// Redirect URIs added while the emulator runs, per app.
    extra_redirect_uris: Vec<(usize, String)>,
}

struct DeviceCode {
    user_code: String,
    app_index: usize,
    request: ScopeRequest,
    expires: Timestamp,
    interval_seconds: i64,
    last_poll: Option<std::time::Instant>,
    status: DeviceStatus,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DeviceStatus {
    Pending,
    Approved { user_index: usize },
    Declined,
}

struct AuthorizationCode {
    app_index: usize,
    user_index: usize,
    redirect_uri: String,
    request: ScopeRequest,
    code_challenge: Option<(String, String)>,
    nonce: Option<String>,
    expires: Timestamp,
    redeemed: bool,
}

#[derive(Clone)]
struct RefreshGrant {
    app_index: usize,
    user_index: usize,
    /// Granted Graph permissions (short names).
    scopes: Vec<String>,
    issued: Timestamp,
    last_used: Timestamp,
}

/// A `scope` parameter split into Graph permissions and the sign-in scopes.
#[derive(Clone, Debug, Default)]
pub struct ScopeRequest {
    /// Short names (`Calendars.Read.Shared`); `.default` stays as `.default`.
    pub graph: Vec<String>,
    pub openid: bool,
    pub offline_access: bool,
    pub profile: bool,
    pub email: bool,
}

impl ScopeRequest {
    pub fn parse(scope: &str) -> Result<ScopeRequest, String> {
        let mut request = ScopeRequest::default();
        for item in scope.split_whitespace() {
            match item.to_ascii_lowercase().as_str() {
                "openid" => request.openid = true,
                "offline_access" => request.offline_access = true,
                "profile" => request.profile = true,
                "email" => request.email = true,
                _ => {
                    let name = match item.rsplit_once('/') {
                        Some((resource, name)) => {
                            let resource = resource.trim_end_matches('/');
                            if !(resource.eq_ignore_ascii_case(GRAPH_RESOURCE)
                                || resource.eq_ignore_ascii_case(crate::identity::GRAPH_APP_ID))
                            {
                                return Err(resource.to_string());
                            }
                            name
                        }
                        None => item,
                    };
                    if !request
                        .graph
                        .iter()
                        .any(|known| known.eq_ignore_ascii_case(name))
                    {
                        request.graph.push(name.to_string());
                    }
                }
            }
        }
        Ok(request)
    }

    fn is_default(&self) -> bool {
        self.graph.iter().any(|name| name == ".default")
    }
}

impl SignInStore {
    pub fn new(sharing: Vec<(usize, usize)>) -> SignInStore {
        SignInStore {
            inner: Mutex::new(Inner {
                sharing: sharing.into_iter().collect(),
                ..Inner::default()
            }),
        }
    }

    /// True when `owner` shared their calendar with `reader` in Outlook.
    pub fn is_shared(&self, owner: usize, reader: usize) -> bool {
        lock(&self.inner).sharing.contains(&(owner, reader))
    }

    pub fn set_shared(&self, owner: usize, reader: usize, shared: bool) {
        let mut inner = lock(&self.inner);
        if shared {
            inner.sharing.insert((owner, reader));
        } else {
            inner.sharing.remove(&(owner, reader));
        }
    }

    /// `revokeSignInSessions`: every refresh token the user holds stops working.
    pub fn revoke_sessions(&self, user_index: usize, now: Timestamp) {
        lock(&self.inner).tokens_valid_from.insert(user_index, now);
    }

    /// Removes consent: one user's for an app, or (no user) the admin's and every user's.
    pub fn revoke_consent(&self, app_index: usize, user_index: Option<usize>) {
        let mut inner = lock(&self.inner);
        match user_index {
            Some(user) => {
                inner.user_consents.remove(&(app_index, user));
            }
            None => {
                inner.admin_consent_revoked.insert(app_index);
                inner.user_consents.retain(|(app, _), _| *app != app_index);
            }
        }
    }

    pub fn add_redirect_uri(&self, app_index: usize, uri: String) {
        lock(&self.inner).extra_redirect_uris.push((app_index, uri));
    }

    /// Live refresh tokens per user index (for the admin API).
    pub fn refresh_token_count(&self, user_index: usize) -> usize {
        lock(&self.inner)
            .refresh_tokens
            .values()
            .filter(|grant| grant.user_index == user_index)
            .count()
    }
}

fn redirect_uri_registered(state: &AppState, app_index: usize, uri: &str) -> bool {
    let app = &state.directory.apps[app_index];
    app.redirect_uris.iter().any(|known| known == uri)
        || lock(&state.signin.inner)
            .extra_redirect_uris
            .iter()
            .any(|(app, known)| *app == app_index && known == uri)
}

/// The Graph permissions of `request` that neither the admin nor the user consented to.
fn missing_consent(
    state: &AppState,
    app_index: usize,
    user_index: usize,
    request: &ScopeRequest,
) -> Vec<String> {
    let app = &state.directory.apps[app_index];
    let inner = lock(&state.signin.inner);
    let admin = app.admin_consent && !inner.admin_consent_revoked.contains(&app_index);
    let user = inner.user_consents.get(&(app_index, user_index));
    let wanted: Vec<String> = if request.is_default() {
        app.delegated_permissions.clone()
    } else {
        request.graph.clone()
    };
    wanted
        .into_iter()
        .filter(|name| {
            let by_admin = admin
                && app
                    .delegated_permissions
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(name));
            let by_user = user.is_some_and(|set| set.contains(&name.to_ascii_lowercase()));
            !(by_admin || by_user)
        })
        .collect()
}

fn record_consent(state: &AppState, app_index: usize, user_index: usize, names: &[String]) {
    let mut inner = lock(&state.signin.inner);
    let set = inner
        .user_consents
        .entry((app_index, user_index))
        .or_default();
    for name in names {
        set.insert(name.to_ascii_lowercase());
    }
}

/// The permissions a token gets for `request`: the named ones, or for `.default` all consented.
fn granted_scopes(
    state: &AppState,
    app_index: usize,
    user_index: usize,
    request: &ScopeRequest,
) -> Vec<String> {
    if !request.is_default() {
        return request.graph.clone();
    }
    let app = &state.directory.apps[app_index];
    let inner = lock(&state.signin.inner);
    let mut scopes: Vec<String> =
        if app.admin_consent && !inner.admin_consent_revoked.contains(&app_index) {
            app.delegated_permissions.clone()
        } else {
            vec![]
        };
    if let Some(user) = inner.user_consents.get(&(app_index, user_index)) {
        for name in user {
            if !scopes.iter().any(|known| known.eq_ignore_ascii_case(name)) {
                // Consents are kept lower-case; the configured spelling reads better.
                scopes.push(
                    app.delegated_permissions
                        .iter()
                        .find(|known| known.eq_ignore_ascii_case(name))
                        .cloned()
                        .unwrap_or_else(|| name.clone()),
                );
            }
        }
    }
    scopes
}

// ---------------------------------------------------------------------------------------------
// Tokens for a signed-in user

/// What the token answer carries besides the access token.
pub struct UserTokenRequest<'a> {
    pub app_index: usize,
    pub user_index: usize,
    pub scopes: Vec<String>,
    pub request: &'a ScopeRequest,
    pub nonce: Option<String>,
    pub client_info: bool,
    /// When the grant behind a refreshed token began (kept across rotation).
    pub issued: Option<Timestamp>,
}

pub fn user_tokens(state: &AppState, ask: UserTokenRequest<'_>) -> Value {
    let app = &state.directory.apps[ask.app_index];
    let user = &state.directory.users[ask.user_index];
    let tenant = &state.directory.tenants[app.tenant_index];
    let now = state.clock.now();
    let now_seconds = now.as_second();
    let lifetime = state.settings.token_lifetime.as_secs();
    let claims = json!({
        "aud": GRAPH_RESOURCE,
        "iss": format!("https://sts.windows.net/{}/", tenant.id),
        "iat": now_seconds, "nbf": now_seconds, "exp": now_seconds + lifetime,
        "acr": "1",
        "amr": ["pwd"],
        "app_displayname": app.display_name,
        "appid": app.client_id,
        "appidacr": if app.secrets.is_empty() && app.certificates.is_empty() { "0" } else { "1" },
        "idtyp": "user",
        "name": user.display_name,
        "oid": user.id,
        "scp": ask.scopes.join(" "),
        "sub": user.id,
        "tid": tenant.id,
        "unique_name": user.user_principal_name,
        "upn": user.user_principal_name,
        "uti": state.ids.token(16),
        "ver": "1.0",
    });
    // Signing only fails with an unusable key, which start-up already proved it is not.
    let access_token = state.signer.sign(&claims).unwrap_or_default();
    let mut scope_words: Vec<String> = ask.scopes.clone();
    for (wanted, word) in [
        (ask.request.profile || ask.request.openid, "profile"),
        (ask.request.openid, "openid"),
        (ask.request.email || ask.request.openid, "email"),
    ] {
        if wanted {
            scope_words.push(word.to_string());
        }
    }
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scope_words.join(" "),
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    });
    if ask.request.offline_access {
        let refresh_token = format!("1.A{}", state.ids.token(96));
        lock(&state.signin.inner).refresh_tokens.insert(
            refresh_token.clone(),
            RefreshGrant {
                app_index: ask.app_index,
                user_index: ask.user_index,
                scopes: ask.scopes.clone(),
                issued: ask.issued.unwrap_or(now),
                last_used: now,
            },
        );
        body["refresh_token"] = json!(refresh_token);
    }
    if ask.request.openid {
        let mut id_claims = json!({
            "aud": app.client_id,
            "iss": format!("{}/{}/v2.0", state.base_url, tenant.id),
            "iat": now_seconds, "nbf": now_seconds, "exp": now_seconds + lifetime,
            "name": user.display_name,
            "oid": user.id,
            "preferred_username": user.user_principal_name,
            "sub": user.id,
            "tid": tenant.id,
            "ver": "2.0",
        });
        if let Some(nonce) = ask.nonce {
            id_claims["nonce"] = json!(nonce);
        }
        body["id_token"] = json!(state.signer.sign(&id_claims).unwrap_or_default());
    }
    if ask.client_info {
        use base64::Engine;
        let info = json!({"uid": user.id, "utid": tenant.id}).to_string();
        body["client_info"] =
            json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(info.as_bytes()));
    }
    body
}

fn invalid_grant(state: &AppState, code: u32, description: String) -> EntraError {
    entra(
        state,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        code,
        description,
    )
}

fn consent_required(state: &AppState, app_index: usize) -> EntraError {
    let app = &state.directory.apps[app_index];
    let mut error = entra(
        state,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        65001,
        format!("The user or administrator has not consented to use the application with ID '{}' named '{}'. Send an interactive authorization request for this user and resource.", app.client_id, app.display_name),
    );
    error.suberror = Some("consent_required");
    error
}

fn form_flag(form: &HashMap<String, String>, name: &str) -> bool {
    form.get(name).is_some_and(|value| value == "1")
}

/// `grant_type=urn:ietf:params:oauth:grant-type:device_code`
pub fn redeem_device_code(
    state: &AppState,
    app_index: usize,
    form: &HashMap<String, String>,
) -> Result<Value, EntraError> {
    let device_code = form
        .get("device_code")
        .ok_or_else(|| crate::identity::missing_parameter(state, "device_code"))?;
    let now = state.clock.now();
    let mut inner = lock(&state.signin.inner);
    let Some(entry) = inner.device_codes.get_mut(device_code) else {
        return Err(entra(
            state,
            StatusCode::BAD_REQUEST,
            "bad_verification_code",
            70000,
            "The provided value for the input parameter 'device_code' is not valid.".to_string(),
        ));
    };
    if entry.app_index != app_index {
        return Err(entra(
            state,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            70000,
            "Provided grant is invalid or malformed: the device code was issued to another application.".to_string(),
        ));
    }
    if entry.expires <= now {
        inner.device_codes.remove(device_code);
        return Err(entra(
            state,
            StatusCode::BAD_REQUEST,
            "expired_token",
            70019,
            "Verification code expired.".to_string(),
        ));
    }
    // Polling faster than the interval earns `slow_down` and five more seconds (RFC 8628,
    // section 3.5); measured on the monotonic clock, since it is about request rates.
    let polled_at = std::time::Instant::now();
    let too_soon = entry.last_poll.is_some_and(|last| {
        polled_at.duration_since(last).as_millis()
            < u128::try_from(entry.interval_seconds.max(0)).unwrap_or(0) * 1000 - 200
    });
    entry.last_poll = Some(polled_at);
    match entry.status {
        DeviceStatus::Pending if too_soon => {
            entry.interval_seconds += 5;
            Err(entra(
                state,
                StatusCode::BAD_REQUEST,
                "slow_down",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Poll less often: wait the interval between requests.".to_string(),
            ))
        }
        DeviceStatus::Pending => Err(entra(
            state,
            StatusCode::BAD_REQUEST,
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.".to_string(),
        )),
        DeviceStatus::Declined => {
            inner.device_codes.remove(device_code);
            Err(entra(
                state,
                StatusCode::BAD_REQUEST,
                "authorization_declined",
                70000,
                "The user declined the authorization request.".to_string(),
            ))
        }
        DeviceStatus::Approved { user_index } => {
            let request = entry.request.clone();
            inner.device_codes.remove(device_code);
            drop(inner);
            let scopes = granted_scopes(state, app_index, user_index, &request);
            Ok(user_tokens(
                state,
                UserTokenRequest {
                    app_index,
                    user_index,
                    scopes,
                    request: &request,
                    nonce: None,
                    client_info: form_flag(form, "client_info"),
                    issued: None,
                },
            ))
        }
    }
}

/// `grant_type=authorization_code`
pub fn redeem_authorization_code(
    state: &AppState,
    app_index: usize,
    form: &HashMap<String, String>,
) -> Result<Value, EntraError> {
    let code = form
        .get("code")
        .ok_or_else(|| crate::identity::missing_parameter(state, "code"))?;
    let redirect_uri = form
        .get("redirect_uri")
        .ok_or_else(|| crate::identity::missing_parameter(state, "redirect_uri"))?;
    let now = state.clock.now();
    let mut inner = lock(&state.signin.inner);
    let Some(entry) = inner.authorization_codes.get_mut(code) else {
        return Err(invalid_grant(
            state,
            9002313,
            "Invalid request. Request is malformed or invalid.".to_string(),
        ));
    };
    if entry.app_index != app_index {
        return Err(invalid_grant(
            state,
            70000,
            "Provided grant is invalid or malformed: the code was issued to another application."
                .to_string(),
        ));
    }
    if entry.redeemed {
        return Err(invalid_grant(state, 54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.".to_string()));
    }
    if entry.expires <= now {
        return Err(invalid_grant(state, 70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.".to_string()));
    }
    if &entry.redirect_uri != redirect_uri {
        return Err(invalid_grant(state, 50011, format!("The redirect URI '{redirect_uri}' specified in the request does not match the redirect URI used to obtain the authorization code.")));
    }
    if let Some((challenge, method)) = &entry.code_challenge {
        let verifier = form.get("code_verifier").map(String::as_str).unwrap_or("");
        let expected = if method.eq_ignore_ascii_case("S256") {
            use base64::Engine;
            let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
        } else {
            verifier.to_string()
        };
        if verifier.is_empty() || &expected != challenge {
            return Err(invalid_grant(state, 501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request.".to_string()));
        }
    }
    entry.redeemed = true;
    let user_index = entry.user_index;
    let request = entry.request.clone();
    let nonce = entry.nonce.clone();
    drop(inner);
    let scopes = granted_scopes(state, app_index, user_index, &request);
    Ok(user_tokens(
        state,
        UserTokenRequest {
            app_index,
            user_index,
            scopes,
            request: &request,
            nonce,
            client_info: form_flag(form, "client_info"),
            issued: None,
        },
    ))
}

/// `grant_type=refresh_token`: a new access token and a new refresh token. The old refresh
/// token stays valid until its own inactivity ends, as Entra does not revoke used ones.
pub fn redeem_refresh_token(
    state: &AppState,
    app_index: usize,
    form: &HashMap<String, String>,
) -> Result<Value, EntraError> {
    let refresh_token = form
        .get("refresh_token")
        .ok_or_else(|| crate::identity::missing_parameter(state, "refresh_token"))?;
    let now = state.clock.now();
    let mut inner = lock(&state.signin.inner);
    let Some(grant) = inner.refresh_tokens.get(refresh_token).cloned() else {
        return Err(invalid_grant(
            state,
            9002313,
            "Invalid request. Request is malformed or invalid.".to_string(),
        ));
    };
    if grant.app_index != app_index {
        return Err(invalid_grant(state, 70000, "Provided grant is invalid or malformed: the refresh token was issued to another application.".to_string()));
    }
    let max_inactive = state.settings.refresh_token_max_inactive;
    if now.duration_since(grant.last_used) >= max_inactive {
        inner.refresh_tokens.remove(refresh_token);
        let days = max_inactive.as_secs() / 86_400;
        let rest = max_inactive.as_secs() % 86_400;
        return Err(invalid_grant(
            state,
            700082,
            format!(
                "The refresh token has expired due to inactivity. The token was issued on {} and was inactive for {days}.{:02}:{:02}:{:02}.",
                grant.issued,
                rest / 3600,
                (rest % 3600) / 60,
                rest % 60
            ),
        ));
    }
    if let Some(valid_from) = inner.tokens_valid_from.get(&grant.user_index) {
        if grant.issued < *valid_from {
            return Err(invalid_grant(
                state,
                50173,
                format!("The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '{}' and the TokensValidFrom date (before which tokens are not valid) for this user is '{valid_from}'.", grant.issued),
            ));
        }
    }
    if let Some(entry) = inner.refresh_tokens.get_mut(refresh_token) {
        entry.last_used = now;
    }
    drop(inner);
    let scope = form.get("scope").map(String::as_str).unwrap_or("");
    let mut request = ScopeRequest::parse(scope).map_err(|resource| {
        entra(
            state,
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            format!("The resource principal named {resource} was not found in the tenant."),
        )
    })?;
    // A refresh keeps giving refresh tokens: the grant came from an offline_access request.
    request.offline_access = true;
    if request.graph.is_empty() {
        request.graph = grant.scopes.clone();
    }
    if !missing_consent(state, app_index, grant.user_index, &request).is_empty() {
        return Err(consent_required(state, app_index));
    }
    let scopes = granted_scopes(state, app_index, grant.user_index, &request);
    Ok(user_tokens(
        state,
        UserTokenRequest {
            app_index,
            user_index: grant.user_index,
            scopes,
            request: &request,
            nonce: None,
            client_info: form_flag(form, "client_info"),
            issued: Some(grant.issued),
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// The device code endpoint and its verification page

/// `POST /{tenant}/oauth2/v2.0/devicecode`
pub async fn device_code(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    state.counters.count("identity.devicecode");
    match start_device_flow(&state, &tenant, &body) {
        Ok(body) => no_store(Json(body).into_response()),
        Err(error) => error.into_response(),
    }
}

fn start_device_flow(state: &AppState, tenant: &str, body: &[u8]) -> Result<Value, EntraError> {
    let tenant_index = crate::identity::resolve_tenant(state, tenant)
        .ok_or_else(|| crate::identity::tenant_not_found(state, tenant))?;
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(body)
        .map_err(|_| crate::identity::missing_parameter(state, "client_id"))?;
    let client_id = form
        .get("client_id")
        .ok_or_else(|| crate::identity::missing_parameter(state, "client_id"))?;
    let app_index = crate::identity::find_app(state, tenant_index, client_id)?;
    let scope = form
        .get("scope")
        .ok_or_else(|| crate::identity::missing_parameter(state, "scope"))?;
    let request = ScopeRequest::parse(scope).map_err(|resource| {
        entra(
            state,
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            format!("The resource principal named {resource} was not found in the tenant."),
        )
    })?;
    let now = state.clock.now();
    let device_code = state.ids.token(64);
    let user_code = user_code(state);
    let interval = state.settings.device_code_interval_seconds;
    let expires_in = state.settings.device_code_lifetime.as_secs();
    let verification_uri = format!("{}/devicelogin", state.base_url);
    lock(&state.signin.inner).device_codes.insert(
        device_code.clone(),
        DeviceCode {
            user_code: user_code.clone(),
            app_index,
            request,
            expires: now
                .checked_add(state.settings.device_code_lifetime)
                .unwrap_or(now),
            interval_seconds: interval,
            last_poll: None,
            status: DeviceStatus::Pending,
        },
    );
    Ok(json!({
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": verification_uri,
        "expires_in": expires_in,
        "interval": interval,
        "message": format!("To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."),
    }))
}

/// Nine characters from letters and digits that cannot be confused, like Entra's codes.
fn user_code(state: &AppState) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let random = state.ids.token(9);
    random
        .bytes()
        .map(|byte| ALPHABET[usize::from(byte) % ALPHABET.len()] as char)
        .collect()
}

/// `GET /devicelogin`: the page a user opens to enter the code and sign in.
pub async fn device_login_page() -> Response {
    Html(device_page("", "")).into_response()
}

/// `POST /devicelogin`: code, user name, password and consent from the page.
pub async fn device_login_submit(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("").trim();
    let code = field("otc").to_ascii_uppercase();
    let now = state.clock.now();
    let found = {
        let inner = lock(&state.signin.inner);
        inner
            .device_codes
            .iter()
            .find(|(_, entry)| entry.user_code == code && entry.expires > now)
            .map(|(key, entry)| {
                (
                    key.clone(),
                    entry.app_index,
                    entry.request.clone(),
                    entry.status,
                )
            })
    };
    let Some((key, app_index, request, status)) = found else {
        return page_error(
            StatusCode::BAD_REQUEST,
            &device_page(&code, "AADSTS70018: The code you entered is not valid or has expired. Check the code and try again."),
        );
    };
    if status != DeviceStatus::Pending {
        return page_error(
            StatusCode::BAD_REQUEST,
            &device_page(&code, "This code was already used."),
        );
    }
    if field("decline") == "1" {
        if let Some(entry) = lock(&state.signin.inner).device_codes.get_mut(&key) {
            entry.status = DeviceStatus::Declined;
        }
        return Html(result_page(
            "You declined the sign-in. You may close this window.",
        ))
        .into_response();
    }
    let user_index = match check_password(&state, app_index, field("login"), field("passwd")) {
        Ok(user_index) => user_index,
        Err(message) => {
            return page_error(StatusCode::OK, &device_page(&code, &message));
        }
    };
    let missing = missing_consent(&state, app_index, user_index, &request);
    if !missing.is_empty() {
        if field("consent") != "accept" {
            return page_error(
                StatusCode::OK,
                &device_page(&code, &format!("AADSTS65001: The app needs your consent to: {}. Tick \"Accept\" to grant it.", missing.join(", "))),
            );
        }
        record_consent(&state, app_index, user_index, &missing);
    }
    if let Some(entry) = lock(&state.signin.inner).device_codes.get_mut(&key) {
        entry.status = DeviceStatus::Approved { user_index };
    }
    Html(result_page(&format!(
        "You have signed in to {} on your device. You may now close this window.",
        html_escape(&state.directory.apps[app_index].display_name)
    )))
    .into_response()
}

fn check_password(
    state: &AppState,
    app_index: usize,
    login: &str,
    password: &str,
) -> Result<usize, String> {
    let tenant_index = state.directory.apps[app_index].tenant_index;
    let user_index = state
        .directory
        .user(login)
        .filter(|index| state.directory.users[*index].tenant_index == tenant_index)
        .ok_or_else(|| {
            "AADSTS50034: This user account does not exist in the directory.".to_string()
        })?;
    let user = &state.directory.users[user_index];
    match user.password.as_deref() {
        Some(known)
            if crate::identity::constant_time_equal(known.as_bytes(), password.as_bytes()) =>
        {
            Ok(user_index)
        }
        _ => Err(
            "AADSTS50126: Error validating credentials due to invalid username or password."
                .to_string(),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The authorize endpoint

/// `GET /{tenant}/oauth2/v2.0/authorize`: checks the request and shows the sign-in form.
pub async fn authorize_page(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    state.counters.count("identity.authorize");
    let parameters: HashMap<String, String> = query.into_iter().collect();
    match check_authorize_request(&state, &tenant, &parameters) {
        Ok(_) => Html(authorize_form(&tenant, &parameters, "", None)).into_response(),
        Err(response) => *response,
    }
}

/// `POST /{tenant}/oauth2/v2.0/authorize`: the form's answer; redirects with a code.
pub async fn authorize_submit(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let mut parameters: HashMap<String, String> =
        serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let login = parameters.remove("login").unwrap_or_default();
    let password = parameters.remove("passwd").unwrap_or_default();
    let consent = parameters.remove("consent").unwrap_or_default();
    let checked = match check_authorize_request(&state, &tenant, &parameters) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    let user_index = match check_password(&state, checked.app_index, login.trim(), &password) {
        Ok(user_index) => user_index,
        Err(message) => {
            return Html(authorize_form(&tenant, &parameters, &message, None)).into_response()
        }
    };
    let missing = missing_consent(&state, checked.app_index, user_index, &checked.request);
    if !missing.is_empty() {
        match consent.as_str() {
            "accept" => record_consent(&state, checked.app_index, user_index, &missing),
            "decline" => {
                return redirect_with(
                    &checked,
                    &[
                        ("error", "access_denied".to_string()),
                        (
                            "error_description",
                            "AADSTS65004: User declined to consent to access the app.".to_string(),
                        ),
                    ],
                )
            }
            _ => {
                return Html(authorize_form(&tenant, &parameters, "", Some(&missing)))
                    .into_response()
            }
        }
    }
    let code = format!("1.A{}", state.ids.token(64));
    let now = state.clock.now();
    lock(&state.signin.inner).authorization_codes.insert(
        code.clone(),
        AuthorizationCode {
            app_index: checked.app_index,
            user_index,
            redirect_uri: checked.redirect_uri.clone(),
            request: checked.request.clone(),
            code_challenge: checked.code_challenge.clone(),
            nonce: parameters.get("nonce").cloned(),
            expires: now
                .checked_add(jiff::SignedDuration::from_mins(AUTHORIZATION_CODE_MINUTES))
                .unwrap_or(now),
            redeemed: false,
        },
    );
    redirect_with(
        &checked,
        &[("code", code), ("session_state", state.ids.guid())],
    )
}

struct CheckedAuthorize {
    app_index: usize,
    redirect_uri: String,
    request: ScopeRequest,
    code_challenge: Option<(String, String)>,
    state: Option<String>,
    form_post: bool,
}

/// The checks Entra makes before showing the sign-in page. Errors about the app or the
/// redirect URI are shown as a page (the redirect URI is not trusted yet); the others go back
/// to the redirect URI as `error` and `error_description`.
fn check_authorize_request(
    state: &AppState,
    tenant: &str,
    parameters: &HashMap<String, String>,
) -> Result<CheckedAuthorize, Box<Response>> {
    let page = |code: u32, message: String| {
        Box::new(page_error(
            StatusCode::BAD_REQUEST,
            &result_page(&format!("AADSTS{code}: {}", html_escape(&message))),
        ))
    };
    let tenant_index = crate::identity::resolve_tenant(state, tenant)
        .ok_or_else(|| page(90002, format!("Tenant '{tenant}' not found.")))?;
    let client_id = parameters
        .get("client_id")
        .map(String::as_str)
        .unwrap_or("");
    let app_index = state.directory.app(tenant_index, client_id).ok_or_else(|| {
        page(700016, format!("Application with identifier '{client_id}' was not found in the directory '{}'.", state.directory.tenants[tenant_index].display_name))
    })?;
    let redirect_uri = parameters.get("redirect_uri").cloned().unwrap_or_default();
    if !redirect_uri_registered(state, app_index, &redirect_uri) {
        return Err(page(50011, format!("The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this.")));
    }
    let mut checked = CheckedAuthorize {
        app_index,
        redirect_uri,
        request: ScopeRequest::default(),
        code_challenge: None,
        state: parameters.get("state").cloned(),
        form_post: parameters
            .get("response_mode")
            .is_some_and(|mode| mode == "form_post"),
    };
    let fail = |checked: &CheckedAuthorize, error: &str, description: String| {
        Box::new(redirect_with(
            checked,
            &[
                ("error", error.to_string()),
                ("error_description", description),
            ],
        ))
    };
    if parameters.get("response_type").map(String::as_str) != Some("code") {
        return Err(fail(
            &checked,
            "unsupported_response_type",
            "AADSTS700054: response_type must be 'code' for this application.".to_string(),
        ));
    }
    let scope = parameters.get("scope").map(String::as_str).unwrap_or("");
    checked.request = ScopeRequest::parse(scope).map_err(|resource| {
        fail(&checked, "invalid_resource", format!("AADSTS500011: The resource principal named {resource} was not found in the tenant."))
    })?;
    if checked.request.graph.is_empty() && !checked.request.openid {
        return Err(fail(
            &checked,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'scope'."
                .to_string(),
        ));
    }
    if let Some(challenge) = parameters.get("code_challenge") {
        let method = parameters
            .get("code_challenge_method")
            .cloned()
            .unwrap_or_else(|| "plain".to_string());
        if !(method == "S256" || method == "plain") {
            return Err(fail(
                &checked,
                "invalid_request",
                "AADSTS501491: Invalid code_challenge_method: use S256 or plain.".to_string(),
            ));
        }
        checked.code_challenge = Some((challenge.clone(), method));
    }
    Ok(checked)
}

fn redirect_with(checked: &CheckedAuthorize, pairs: &[(&str, String)]) -> Response {
    let mut pairs: Vec<(&str, String)> = pairs.to_vec();
    if let Some(value) = &checked.state {
        pairs.push(("state", value.clone()));
    }
    if checked.form_post {
        let inputs: String = pairs
            .iter()
            .map(|(name, value)| {
                format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    html_escape(name),
                    html_escape(value)
                )
            })
            .collect();
        return Html(format!(
            "<!DOCTYPE html><html><body onload=\"document.forms[0].submit()\"><form method=\"post\" action=\"{}\">{inputs}<noscript><button>Continue</button></noscript></form></body></html>",
            html_escape(&checked.redirect_uri)
        ))
        .into_response();
    }
    let query: String = pairs
        .iter()
        .map(|(name, value)| format!("{name}={}", percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&");
    let separator = if checked.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!("{}{separator}{query}", checked.redirect_uri);
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Pages

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    response
}

fn page_error(status: StatusCode, html: &str) -> Response {
    (status, Html(html.to_string())).into_response()
}

pub fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const PAGE_STYLE: &str = "body{font-family:sans-serif;max-width:28em;margin:3em auto}label{display:block;margin:.6em 0}input[type=text],input[type=password]{width:100%}.error{color:#a00}";

fn device_page(code: &str, message: &str) -> String {
    let error = if message.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"error\" id=\"error\">{}</p>",
            html_escape(message)
        )
    };
    format!(
        "<!DOCTYPE html><html><head><title>Enter code</title><style>{PAGE_STYLE}</style></head><body>\
<h1>Enter code</h1><p>Enter the code displayed on your app or device, then sign in.</p>{error}\
<form method=\"post\" action=\"/devicelogin\">\
<label>Code <input type=\"text\" name=\"otc\" value=\"{}\"></label>\
<label>Email or phone <input type=\"text\" name=\"login\" autocomplete=\"username\"></label>\
<label>Password <input type=\"password\" name=\"passwd\" autocomplete=\"current-password\"></label>\
<label><input type=\"checkbox\" name=\"consent\" value=\"accept\"> Accept the permissions the app asks for</label>\
<button type=\"submit\">Sign in</button> <button type=\"submit\" name=\"decline\" value=\"1\">Decline</button>\
</form></body></html>",
        html_escape(code)
    )
}

fn authorize_form(
    tenant: &str,
    parameters: &HashMap<String, String>,
    message: &str,
    consent: Option<&[String]>,
) -> String {
    let mut names: Vec<&String> = parameters.keys().collect();
    names.sort();
    let hidden: String = names
        .into_iter()
        .map(|name| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                html_escape(name),
                html_escape(parameters.get(name).map(String::as_str).unwrap_or(""))
            )
        })
        .collect();
    let error = if message.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"error\" id=\"error\">{}</p>",
            html_escape(message)
        )
    };
    let consent_part = match consent {
        None => String::new(),
        Some(missing) => format!(
            "<h2>Permissions requested</h2><p id=\"consent\">This app would like to: {}</p>\
<label><input type=\"radio\" name=\"consent\" value=\"accept\"> Accept</label>\
<label><input type=\"radio\" name=\"consent\" value=\"decline\"> Cancel</label>",
            html_escape(&missing.join(", "))
        ),
    };
    format!(
        "<!DOCTYPE html><html><head><title>Sign in to your account</title><style>{PAGE_STYLE}</style></head><body>\
<h1>Sign in</h1>{error}<form method=\"post\" action=\"/{}/oauth2/v2.0/authorize\">{hidden}\
<label>Email or phone <input type=\"text\" name=\"login\" autocomplete=\"username\"></label>\
<label>Password <input type=\"password\" name=\"passwd\" autocomplete=\"current-password\"></label>\
{consent_part}<button type=\"submit\">Sign in</button></form></body></html>",
        percent_encode(tenant)
    )
}

fn result_page(message: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><title>Microsoft</title><style>{PAGE_STYLE}</style></head><body><p id=\"result\">{message}</p></body></html>"
    )
}
