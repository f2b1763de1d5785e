//! The Microsoft identity platform (Entra ID v2.0 endpoints): OpenID discovery, keys and the
//! token endpoint with client credentials (secret or certificate) and the password grant.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use crate::directory::AppRegistration;
use crate::jwt::{decode_unverified, verify_certificate_signature};
use crate::state::AppState;

pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";
const OUTLOOK_RESOURCE: &str = "https://outlook.office365.com";
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An error exactly in Entra's shape.
pub struct EntraError {
    pub status: StatusCode,
    pub error: &'static str,
    /// `suberror` (e.g. `consent_required` beside AADSTS65001), as msal reads it.
    pub suberror: Option<&'static str>,
    pub code: u32,
    pub description: String,
    pub now: Timestamp,
    pub base_url: String,
}

impl IntoResponse for EntraError {
    fn into_response(self) -> Response {
        let ids = crate::ids::RandomIds::default();
        let trace_id = ids.guid();
        let correlation_id = ids.guid();
        let timestamp = self.now.strftime("%Y-%m-%d %H:%M:%SZ").to_string();
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {timestamp}",
                self.code, self.description
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("{}/error?code={}", self.base_url, self.code),
        });
        let mut body = body;
        if let Some(suberror) = self.suberror {
            body["suberror"] = json!(suberror);
        }
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store, no-cache"),
        );
        response
    }
}

pub(crate) fn entra(
    state: &AppState,
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
) -> EntraError {
    EntraError {
        status,
        error,
        suberror: None,
        code,
        description,
        now: state.clock.now(),
        base_url: state.base_url.clone(),
    }
}

pub(crate) fn tenant_not_found(state: &AppState, tenant: &str) -> EntraError {
    entra(
        state,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        90002,
        format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
    )
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`
pub async fn openid_configuration(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
) -> Response {
    state.counters.count("identity.openid_configuration");
    let Some(tenant_index) = resolve_tenant(&state, &tenant) else {
        return tenant_not_found(&state, &tenant).into_response();
    };
    let tenant_id = &state.directory.tenants[tenant_index].id;
    let base = &state.base_url;
    Json(json!({
        "token_endpoint": format!("{base}/{tenant_id}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{tenant_id}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{tenant_id}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": format!("{base}/oidc/userinfo"),
        "authorization_endpoint": format!("{base}/{tenant_id}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{tenant_id}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/{tenant_id}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{base}/{tenant_id}/kerberos"),
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": state.base_url.trim_start_matches("https://"),
        "rbac_url": "https://pas.windows.net"
    }))
    .into_response()
}

/// `GET /{tenant}/discovery/v2.0/keys`
pub async fn keys(State(state): State<Arc<AppState>>) -> Response {
    Json(state.signer.jwks()).into_response()
}

/// `GET /common/discovery/instance`: msal's instance discovery, answered for the emulator's host.
pub async fn instance_discovery(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let host = state.base_url.trim_start_matches("https://").to_string();
    let endpoint = query
        .get("authorization_endpoint")
        .cloned()
        .unwrap_or_default();
    Json(json!({
        "tenant_discovery_endpoint": endpoint.replace("/oauth2/v2.0/authorize", "/v2.0/.well-known/openid-configuration"),
        "api-version": "1.1",
        "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}]
    }))
    .into_response()
}

pub(crate) fn resolve_tenant(state: &AppState, tenant: &str) -> Option<usize> {
    // "organizations" and "common" reach the single tenant when there is just one, which is
    // how a multi-tenant authority behaves for a one-tenant emulator.
    if (tenant.eq_ignore_ascii_case("organizations") || tenant.eq_ignore_ascii_case("common"))
        && state.directory.tenants.len() == 1
    {
        return Some(0);
    }
    state.directory.tenant(tenant)
}

pub(crate) fn missing_parameter(state: &AppState, name: &str) -> EntraError {
    entra(
        state,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{name}'."),
    )
}

/// The app registration `client_id` names in the tenant, or Entra's AADSTS700016.
pub(crate) fn find_app(
    state: &AppState,
    tenant_index: usize,
    client_id: &str,
) -> Result<usize, EntraError> {
    state.directory.app(tenant_index, client_id).ok_or_else(|| {
        entra(
            state,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", state.directory.tenants[tenant_index].display_name),
        )
    })
}

/// `POST /{tenant}/oauth2/v2.0/token`
pub async fn token(
    State(state): State<Arc<AppState>>,
    Path(tenant): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    state.counters.count("identity.token");
    state.apply_latency().await;
    match issue_token(&state, &tenant, &headers, &body) {
        Ok(body) => {
            let mut response = Json(body).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store, no-cache"),
            );
            response
        }
        Err(error) => {
            state.counters.count("identity.token_errors");
            error.into_response()
        }
    }
}

fn issue_token(
    state: &AppState,
    tenant: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<Value, EntraError> {
    if state.faults().token_endpoint_outage {
        return Err(entra(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            90033,
            "A transient error has occurred. Please try again.".to_string(),
        ));
    }
    let tenant_index =
        resolve_tenant(state, tenant).ok_or_else(|| tenant_not_found(state, tenant))?;
    let mut form: HashMap<String, String> = serde_urlencoded::from_bytes(body).map_err(|_| {
        entra(
            state,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.".to_string(),
        )
    })?;
    // client_secret_basic: credentials in an Authorization: Basic header.
    if let Some((client_id, client_secret)) = basic_credentials(headers) {
        form.entry("client_id".to_string()).or_insert(client_id);
        form.entry("client_secret".to_string())
            .or_insert(client_secret);
    }
    let missing = |name: &str| {
        entra(
            state,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| missing("grant_type"))?
        .clone();
    let client_id = form
        .get("client_id")
        .ok_or_else(|| missing("client_id"))?
        .clone();
    let tenant_record = &state.directory.tenants[tenant_index];
    let app_index = state.directory.app(tenant_index, &client_id).ok_or_else(|| {
        entra(
            state,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", tenant_record.display_name),
        )
    })?;
    let app = &state.directory.apps[app_index];
    let scope = form.get("scope").map(String::as_str).unwrap_or_default();
    match grant_type.as_str() {
        "client_credentials" => {
            let resource = single_resource(state, scope, true)?;
            let credential = check_client_credential(state, app, &form, tenant_index, true)?;
            Ok(app_token(state, app, &resource, credential))
        }
        "password" => {
            let resource = single_resource(state, scope, false)?;
            if form.contains_key("client_secret") || form.contains_key("client_assertion") {
                check_client_credential(state, app, &form, tenant_index, false)?;
            }
            let username = form.get("username").ok_or_else(|| missing("username"))?;
            let password = form.get("password").ok_or_else(|| missing("password"))?;
            let user_index = state
                .directory
                .user(username)
                .filter(|index| state.directory.users[*index].tenant_index == tenant_index)
                .ok_or_else(|| {
                    entra(state, StatusCode::BAD_REQUEST, "invalid_grant", 50034, format!("The user account {{EUII Hidden}} does not exist in the {} directory. To sign into this application, the account must be added to the directory.", tenant_record.id))
                })?;
            let user = &state.directory.users[user_index];
            if user.password.as_deref() != Some(password.as_str()) {
                return Err(entra(
                    state,
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    50126,
                    "Error validating credentials due to invalid username or password.".to_string(),
                ));
            }
            Ok(delegated_token(state, app, user_index, &resource, scope))
        }
        "urn:ietf:params:oauth:grant-type:device_code" | "authorization_code" | "refresh_token" => {
            // A confidential client proves itself; a public client (public client flows
            // allowed) may send nothing, but what it sends must be right.
            let sends_credential =
                form.contains_key("client_secret") || form.contains_key("client_assertion");
            if sends_credential || !app.public_client {
                check_client_credential(state, app, &form, tenant_index, true)?;
            }
            match grant_type.as_str() {
                "authorization_code" => {
                    crate::signin::redeem_authorization_code(state, app_index, &form)
                }
                "refresh_token" => crate::signin::redeem_refresh_token(state, app_index, &form),
                _ => crate::signin::redeem_device_code(state, app_index, &form),
            }
        }
        other => Err(entra(
            state,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{other}'."),
        )),
    }
}

fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

/// Checks that the scopes name exactly one resource and returns it.
fn single_resource(state: &AppState, scope: &str, app_only: bool) -> Result<String, EntraError> {
    let invalid_scope = |code: u32, description: String| {
        entra(
            state,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            code,
            description,
        )
    };
    let mut resources: Vec<String> = Vec::new();
    for item in scope.split_whitespace() {
        if ["openid", "profile", "offline_access", "email"].contains(&item) {
            continue;
        }
        let resource = match item.rsplit_once('/') {
            Some((resource, _)) if item.starts_with("https://") || item.starts_with("api://") => {
                resource.to_string()
            }
            _ => GRAPH_RESOURCE.to_string(),
        };
        if app_only && !item.ends_with("/.default") {
            return Err(invalid_scope(
                1002012,
                format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
            ));
        }
        if !resources.contains(&resource) {
            resources.push(resource);
        }
    }
    match resources.len() {
        0 => Err(invalid_scope(
            70011,
            "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid.".to_string(),
        )),
        1 => {
            let resource = resources.remove(0);
            let known = [GRAPH_RESOURCE, GRAPH_APP_ID, OUTLOOK_RESOURCE];
            if !known.iter().any(|known| resource.trim_end_matches('/').eq_ignore_ascii_case(known)) {
                return Err(entra(
                    state,
                    StatusCode::BAD_REQUEST,
                    "invalid_resource",
                    500011,
                    format!("The resource principal named {resource} was not found in the tenant. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."),
                ));
            }
            Ok(if resource.eq_ignore_ascii_case(GRAPH_APP_ID) { GRAPH_RESOURCE.to_string() } else { resource.trim_end_matches('/').to_string() })
        }
        _ => Err(invalid_scope(
            28000,
            format!("Provided value for the input parameter scope is not valid because it contains more than one resource. Scope {scope} is not valid."),
        )),
    }
}

#[derive(Clone, Copy)]
enum Credential {
    Secret,
    Certificate,
}

fn check_client_credential(
    state: &AppState,
    app: &AppRegistration,
    form: &HashMap<String, String>,
    tenant_index: usize,
    required: bool,
) -> Result<Credential, EntraError> {
    let now = state.clock.now();
    let invalid_client = |code: u32, description: String| {
        entra(
            state,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            description,
        )
    };
    if let Some(secret) = form.get("client_secret") {
        let matching = app
            .secrets
            .iter()
            .find(|candidate| constant_time_equal(candidate.value.as_bytes(), secret.as_bytes()));
        return match matching {
            None => Err(invalid_client(
                7000215,
                format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.", app.client_id),
            )),
            Some(found) if found.expires.is_some_and(|expires| expires <= now) => Err(invalid_client(
                7000222,
                format!("The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.", app.client_id),
            )),
            Some(_) => Ok(Credential::Secret),
        };
    }
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str) != Some(CLIENT_ASSERTION_TYPE) {
            return Err(entra(
                state,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                700026,
                format!("Client assertion type must be '{CLIENT_ASSERTION_TYPE}'."),
            ));
        }
        check_client_assertion(state, app, assertion, tenant_index, now)?;
        return Ok(Credential::Certificate);
    }
    if required {
        return Err(invalid_client(7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".to_string()));
    }
    Ok(Credential::Secret)
}

fn check_client_assertion(
    state: &AppState,
    app: &AppRegistration,
    assertion: &str,
    tenant_index: usize,
    now: Timestamp,
) -> Result<(), EntraError> {
    let invalid_client = |code: u32, description: String| {
        entra(
            state,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            description,
        )
    };
    let malformed = || invalid_client(50027, "JWT token is invalid or malformed.".to_string());
    let jwt = decode_unverified(assertion).map_err(|_| malformed())?;
    let algorithm = jwt
        .header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sha256 = jwt.header.get("x5t#S256").and_then(Value::as_str);
    let sha1 = jwt.header.get("x5t").and_then(Value::as_str);
    let thumbprint_text = sha256.or(sha1).unwrap_or_default().to_string();
    let certificate = app.certificates.iter().find(|certificate| {
        sha256.is_some_and(|value| value.trim_end_matches('=') == certificate.x5t_sha256)
            || sha1.is_some_and(|value| value.trim_end_matches('=') == certificate.x5t_sha1)
    });
    let Some(certificate) = certificate else {
        return Err(invalid_client(
            700027,
            format!("The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint_text}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'.]", app.client_id),
        ));
    };
    verify_certificate_signature(
        algorithm,
        &certificate.der,
        jwt.signing_input.as_bytes(),
        &jwt.signature,
    )
    .map_err(|_| {
        invalid_client(
            700027,
            "Client assertion failed signature validation.".to_string(),
        )
    })?;
    let claims = &jwt.claims;
    let text_claim = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    if !text_claim("iss").eq_ignore_ascii_case(&app.client_id)
        || !text_claim("sub").eq_ignore_ascii_case(&app.client_id)
    {
        return Err(invalid_client(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter."
                .to_string(),
        ));
    }
    let audience = text_claim("aud");
    let tenant = &state.directory.tenants[tenant_index];
    let accepted_audience = std::iter::once(tenant.id.as_str())
        .chain(tenant.domains.iter().map(String::as_str))
        .any(|key| {
            audience.eq_ignore_ascii_case(&format!("{}/{key}/oauth2/v2.0/token", state.base_url))
        });
    if !accepted_audience {
        return Err(invalid_client(700212, format!("Client assertion audience claim does not match Realm issuer. Review the documentation at https://aka.ms/certCreds. (audience '{audience}')")));
    }
    // Entra allows five minutes of clock skew on client assertions.
    let skew = SignedDuration::from_mins(5);
    // msal for Python writes `exp`/`nbf` as floats (seconds with a fraction); Entra accepts that.
    let seconds = |name: &str| {
        let value = claims.get(name)?;
        value
            .as_i64()
            .or_else(|| value.as_f64().map(|float| float.floor() as i64))
    };
    let now_seconds = now.as_second();
    let expiry = seconds("exp").ok_or_else(malformed)?;
    let not_before = seconds("nbf").unwrap_or(i64::MIN);
    if expiry.saturating_add(skew.as_secs()) < now_seconds
        || not_before.saturating_sub(skew.as_secs()) > now_seconds
    {
        return Err(invalid_client(
            700024,
            format!("Client assertion is not within its valid time range. Current time: {now}, assertion valid from {}, expiry time of assertion {}.", Timestamp::from_second(not_before.max(0)).unwrap_or(Timestamp::UNIX_EPOCH), Timestamp::from_second(expiry).unwrap_or(Timestamp::UNIX_EPOCH)),
        ));
    }
    Ok(())
}

pub(crate) fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    // Avoids leaking how many leading characters of a secret were right.
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

fn lifetime(state: &AppState) -> (i64, i64, i64) {
    let now = state.clock.now().as_second();
    let seconds = state.settings.token_lifetime.as_secs();
    (now, now + seconds, seconds)
}

fn app_token(
    state: &AppState,
    app: &AppRegistration,
    resource: &str,
    credential: Credential,
) -> Value {
    let tenant = &state.directory.tenants[app.tenant_index];
    let (now, expires, lifetime_seconds) = lifetime(state);
    let claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{}/", tenant.id),
        "iat": now, "nbf": now, "exp": expires,
        "aio": state.ids.token(24),
        "app_displayname": app.display_name,
        "appid": app.client_id,
        "appidacr": match credential { Credential::Secret => "1", Credential::Certificate => "2" },
        "idp": format!("https://sts.windows.net/{}/", tenant.id),
        "idtyp": "app",
        "oid": app.service_principal_id,
        "roles": app.roles,
        "sub": app.service_principal_id,
        "tid": tenant.id,
        "uti": state.ids.token(16),
        "ver": "1.0",
    });
    token_response(state, &claims, lifetime_seconds, None)
}

fn delegated_token(
    state: &AppState,
    app: &AppRegistration,
    user_index: usize,
    resource: &str,
    scope: &str,
) -> Value {
    let user = &state.directory.users[user_index];
    let tenant = &state.directory.tenants[app.tenant_index];
    let (now, expires, lifetime_seconds) = lifetime(state);
    let mut scopes: Vec<String> = scope
        .split_whitespace()
        .filter(|item| !["openid", "profile", "offline_access", "email"].contains(item))
        .map(|item| item.rsplit('/').next().unwrap_or(item).to_string())
        .collect();
    if scopes.iter().any(|item| item == ".default") {
        // `.default` grants what the app was consented to; the delegated names match the roles.
        scopes = app.roles.clone();
    }
    let claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{}/", tenant.id),
        "iat": now, "nbf": now, "exp": expires,
        "app_displayname": app.display_name,
        "appid": app.client_id,
        "appidacr": "0",
        "idtyp": "user",
        "name": user.display_name,
        "oid": user.id,
        "scp": scopes.join(" "),
        "sub": user.id,
        "tid": tenant.id,
        "unique_name": user.user_principal_name,
        "upn": user.user_principal_name,
        "uti": state.ids.token(16),
        "ver": "1.0",
    });
    let granted = scopes
        .iter()
        .map(|item| format!("{resource}/{item}"))
        .collect::<Vec<_>>()
        .join(" ");
    token_response(state, &claims, lifetime_seconds, Some(granted))
}

fn token_response(
    state: &AppState,
    claims: &Value,
    lifetime_seconds: i64,
    scope: Option<String>,
) -> Value {
    // Signing only fails if the key is unusable, which start-up already proved it is not;
    // an empty token then fails at Graph with a clear 401 rather than crashing the server.
    let access_token = state.signer.sign(claims).unwrap_or_default();
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime_seconds,
        "ext_expires_in": lifetime_seconds,
        "access_token": access_token,
    });
    if let Some(scope) = scope {
        body["scope"] = json!(scope);
    }
    body
}
