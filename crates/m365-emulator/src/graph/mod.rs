//! Microsoft Graph v1.0: authentication of bearer tokens, authorization by role, Outlook
//! throttling, Graph's error body, and the endpoint modules.

pub mod batch;
pub mod calendar_view;
pub mod delta;
pub mod events;
pub mod places;
pub mod schedule;
pub mod subscriptions;
pub mod users;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::faults::{Admission, ThrottleGuard, ThrottleLimit};
use crate::identity::{GRAPH_APP_ID, GRAPH_RESOURCE};
use crate::state::AppState;
use crate::timefmt::{resolve_zone, NamedZone};

/// Graph's error answer: `{"error": {"code", "message", "innerError": {…}}}`.
#[derive(Debug)]
pub struct GraphError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub retry_after_seconds: Option<u64>,
    pub authenticate_challenge: bool,
}

impl GraphError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> GraphError {
        GraphError {
            status,
            code: code.to_string(),
            message: message.into(),
            retry_after_seconds: None,
            authenticate_challenge: false,
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> GraphError {
        GraphError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unauthorized(message: &str) -> GraphError {
        GraphError {
            authenticate_challenge: true,
            ..GraphError::new(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                message,
            )
        }
    }

    pub fn invalid_user(key: &str) -> GraphError {
        GraphError::new(
            StatusCode::NOT_FOUND,
            "ErrorInvalidUser",
            format!("The requested user '{key}' is invalid."),
        )
    }

    pub fn item_not_found() -> GraphError {
        GraphError::new(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    }

    pub fn calendar_access_denied() -> GraphError {
        GraphError::new(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )
    }

    pub fn throttled(retry_after_seconds: u64, limit: ThrottleLimit) -> GraphError {
        let message = match limit {
            ThrottleLimit::Concurrency => "Application is over its MailboxConcurrency limit.",
            ThrottleLimit::RequestRate | ThrottleLimit::Forced => {
                "Application is over its MailboxRequests limit."
            }
        };
        GraphError {
            retry_after_seconds: Some(retry_after_seconds),
            ..GraphError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ApplicationThrottled",
                message,
            )
        }
    }

    pub fn body(&self, request_id: &str) -> Value {
        json!({"error": {
            "code": self.code,
            "message": self.message,
            "innerError": {
                "date": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }})
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let request_id = crate::ids::RandomIds::default().guid();
        let mut response = (self.status, Json(self.body(&request_id))).into_response();
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            headers.insert("request-id", value.clone());
            headers.insert("client-request-id", value);
        }
        if let Some(seconds) = self.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.authenticate_challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\""),
            );
        }
        response
    }
}

/// What an endpoint needs the caller to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    UserRead,
    GroupRead,
    CalendarRead,
    CalendarWrite,
    /// The places API (rooms and room lists).
    PlaceRead,
    /// Any valid Graph token (subscriptions check their resource's need themselves).
    AnyToken,
}

impl Need {
    fn accepted(self) -> &'static [&'static str] {
        match self {
            Need::UserRead => &[
                "User.Read.All",
                "User.ReadWrite.All",
                "User.ReadBasic.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
                "User.Read",
            ],
            Need::GroupRead => &[
                "Group.Read.All",
                "Group.ReadWrite.All",
                "GroupMember.Read.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            ],
            Need::CalendarRead => &[
                "Calendars.Read",
                "Calendars.ReadWrite",
                "Calendars.ReadBasic",
                "Calendars.Read.Shared",
                "Calendars.ReadWrite.Shared",
            ],
            Need::CalendarWrite => &["Calendars.ReadWrite", "Calendars.ReadWrite.Shared"],
            Need::PlaceRead => &["Place.Read.All", "Place.ReadWrite.All"],
            Need::AnyToken => &[],
        }
    }
}

#[derive(Clone, Debug)]
pub enum Identity {
    App {
        roles: Vec<String>,
    },
    Delegated {
        user_index: usize,
        scopes: Vec<String>,
    },
}

/// Who is calling, from a verified token.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant_index: usize,
    pub app_index: usize,
    pub identity: Identity,
}

impl Caller {
    pub fn holds(&self, need: Need) -> bool {
        let granted: &[String] = match &self.identity {
            Identity::App { roles } => roles,
            Identity::Delegated { scopes, .. } => scopes,
        };
        need == Need::AnyToken
            || granted.iter().any(|held| {
                need.accepted()
                    .iter()
                    .any(|accepted| held.eq_ignore_ascii_case(accepted))
            })
    }

    pub fn denied(need: Need) -> GraphError {
        match need {
            Need::UserRead | Need::GroupRead => GraphError::new(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
            _ => GraphError::calendar_access_denied(),
        }
    }
}

/// Counts the request, applies latency and error-rate faults, verifies the token and the role.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    kind: &str,
    need: Need,
) -> Result<Caller, GraphError> {
    state.counters.count(kind);
    // Mailbox requests take their latency while holding a concurrency slot (see
    // `enter_mailbox`), as a slow Exchange backend would; the others take it here.
    if !matches!(need, Need::CalendarRead | Need::CalendarWrite) {
        state.apply_latency().await;
    }
    let faults = state.faults();
    if faults.server_error_rate > 0.0 && state.ids.unit() < faults.server_error_rate {
        state.counters.count("faults.server_errors");
        return Err(if state.ids.unit() < 0.5 {
            GraphError {
                retry_after_seconds: Some(2),
                ..GraphError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The service is temporarily unavailable. Please retry later.",
                )
            }
        } else {
            GraphError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "GatewayTimeout",
                "The gateway did not receive a response from the service in time.",
            )
        });
    }
    let caller = verify_bearer(state, headers)?;
    if !caller.holds(need) {
        return Err(Caller::denied(need));
    }
    Ok(caller)
}

fn verify_bearer(state: &AppState, headers: &HeaderMap) -> Result<Caller, GraphError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .trim();
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or_default()
        .trim();
    if token.is_empty() {
        return Err(GraphError::unauthorized("Access token is empty."));
    }
    if token.split('.').count() != 3 {
        return Err(GraphError::unauthorized(
            "CompactToken parsing failed with error code: 80049217",
        ));
    }
    let claims = state.signer.verify(token).map_err(|_| {
        GraphError::unauthorized("Access token validation failure. Invalid signature.")
    })?;
    let audience = claims
        .get("aud")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !(audience.eq_ignore_ascii_case(GRAPH_RESOURCE)
        || audience.eq_ignore_ascii_case(GRAPH_APP_ID)
        || audience.eq_ignore_ascii_case("https://graph.microsoft.com/"))
    {
        return Err(GraphError::unauthorized(
            "Access token validation failure. Invalid audience.",
        ));
    }
    // Graph tolerates five minutes of clock skew past `exp`.
    let expiry = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if state.clock.now().as_second() >= expiry.saturating_add(300) {
        return Err(GraphError::unauthorized(
            "Lifetime validation failed, the token is expired.",
        ));
    }
    let tenant_index = claims
        .get("tid")
        .and_then(Value::as_str)
        .and_then(|tenant| state.directory.tenant(tenant))
        .ok_or_else(|| {
            GraphError::unauthorized("Access token validation failure. Invalid tenant.")
        })?;
    let app_index = claims
        .get("appid")
        .and_then(Value::as_str)
        .and_then(|client_id| state.directory.app(tenant_index, client_id))
        .ok_or_else(|| {
            GraphError::unauthorized("Access token validation failure. Unknown application.")
        })?;
    let identity = if let Some(scopes) = claims.get("scp").and_then(Value::as_str) {
        let user_index = claims
            .get("oid")
            .and_then(Value::as_str)
            .and_then(|oid| state.directory.user(oid))
            .ok_or_else(|| {
                GraphError::unauthorized("Access token validation failure. Unknown user.")
            })?;
        Identity::Delegated {
            user_index,
            scopes: scopes.split_whitespace().map(str::to_string).collect(),
        }
    } else {
        let roles = claims
            .get("roles")
            .and_then(Value::as_array)
            .map(|roles| {
                roles
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Identity::App { roles }
    };
    Ok(Caller {
        tenant_index,
        app_index,
        identity,
    })
}

/// Resolves the `{user}` of a mailbox path within the caller's tenant.
pub fn resolve_mailbox(state: &AppState, caller: &Caller, key: &str) -> Result<usize, GraphError> {
    if key.eq_ignore_ascii_case("me") {
        return match &caller.identity {
            Identity::Delegated { user_index, .. } => Ok(*user_index),
            Identity::App { .. } => Err(GraphError::bad_request(
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
            )),
        };
    }
    state
        .directory
        .user(key)
        .filter(|index| state.directory.users[*index].tenant_index == caller.tenant_index)
        .ok_or_else(|| GraphError::invalid_user(key))
}

/// Mailbox-level checks: delegated reach, application access policy, mailbox existence, throttling.
/// Holds a concurrency slot for the request's duration; added latency is spent holding it.
pub async fn enter_mailbox(
    state: &AppState,
    caller: &Caller,
    user_index: usize,
) -> Result<ThrottleGuard, GraphError> {
    let guard = admit_to_mailbox(state, caller, user_index)?;
    state.apply_latency().await;
    Ok(guard)
}

fn admit_to_mailbox(
    state: &AppState,
    caller: &Caller,
    user_index: usize,
) -> Result<ThrottleGuard, GraphError> {
    state.counters.count_mailbox(user_index);
    let user = &state.directory.users[user_index];
    match &caller.identity {
        Identity::Delegated {
            user_index: own,
            scopes,
        } => {
            // Another user's calendar needs a `.Shared` permission and the owner's sharing
            // in Outlook ("Get shared or delegated Outlook calendar and its events").
            let shared_scope = scopes
                .iter()
                .any(|scope| scope.to_ascii_lowercase().ends_with(".shared"));
            if *own != user_index && !(shared_scope && state.signin.is_shared(user_index, *own)) {
                state.counters.count("graph.not_shared");
                return Err(GraphError::calendar_access_denied());
            }
        }
        Identity::App { .. } => {
            let app = &state.directory.apps[caller.app_index];
            if let Some(group) = app.access_policy_group {
                if !state.directory.is_member(group, user_index) {
                    return Err(GraphError::new(
                        StatusCode::FORBIDDEN,
                        "ErrorAccessDenied",
                        "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings.",
                    ));
                }
            }
        }
    }
    if !user.has_mailbox {
        return Err(GraphError::new(
            StatusCode::NOT_FOUND,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        ));
    }
    let faults = state.faults();
    if !faults.throttled_mailboxes.is_empty() {
        let addresses = user.addresses();
        let forced = faults.throttled_mailboxes.iter().any(|listed| {
            addresses.contains(&listed.to_ascii_lowercase())
                || listed.eq_ignore_ascii_case(&user.id)
        });
        if forced {
            state.counters.count("throttled.forced");
            return Err(GraphError::throttled(
                faults.throttled_mailbox_retry_after_seconds,
                ThrottleLimit::Forced,
            ));
        }
    }
    match state
        .throttle
        .admit(caller.app_index, user_index, state.clock.now(), &faults)
    {
        Admission::Admitted(guard) => Ok(guard),
        Admission::Throttled {
            retry_after_seconds,
            limit,
        } => {
            state.counters.count(match limit {
                ThrottleLimit::Concurrency => "throttled.concurrency",
                _ => "throttled.rate",
            });
            Err(GraphError::throttled(retry_after_seconds, limit))
        }
    }
}

/// The `Prefer` header values Graph's calendar endpoints honour.
#[derive(Default)]
pub struct Prefer {
    pub time_zone: Option<NamedZone>,
    pub max_page_size: Option<usize>,
}

pub fn parse_prefer(headers: &HeaderMap) -> Prefer {
    let mut prefer = Prefer::default();
    for value in headers.get_all("prefer") {
        let Ok(text) = value.to_str() else { continue };
        for part in split_preferences(text) {
            let Some((name, value)) = part.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "outlook.timezone" => prefer.time_zone = resolve_zone(value).ok(),
                "odata.maxpagesize" => {
                    prefer.max_page_size = value.parse().ok().filter(|size: &usize| *size > 0)
                }
                _ => {}
            }
        }
    }
    prefer
}

/// Splits on commas outside quotes (zone names never contain commas, but be safe).
fn split_preferences(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for character in text.chars() {
        match character {
            '"' => {
                quoted = !quoted;
                current.push(character);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    parts.push(current);
    parts
}

/// Adds `Preference-Applied` for the preferences the response honoured.
pub fn preference_applied(
    response: &mut Response,
    time_zone: Option<&NamedZone>,
    page_size: Option<usize>,
) {
    let mut applied = Vec::new();
    if let Some(zone) = time_zone {
        applied.push(format!("outlook.timezone=\"{}\"", zone.name));
    }
    if let Some(size) = page_size {
        applied.push(format!("odata.maxpagesize={size}"));
    }
    if !applied.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&applied.join(", ")) {
            response.headers_mut().insert("preference-applied", value);
        }
    }
}

/// Query parameters by name, ignoring case and an optional `$`.
pub struct QueryParameters(pub Vec<(String, String)>);

impl QueryParameters {
    pub fn get(&self, name: &str) -> Option<&str> {
        let wanted = name.trim_start_matches('$');
        self.0
            .iter()
            .find(|(key, _)| key.trim_start_matches('$').eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.as_str())
    }

    pub fn select(&self) -> Option<Vec<String>> {
        self.get("$select").map(|text| {
            text.split(',')
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty())
                .collect()
        })
    }

    pub fn top(&self, default: usize, max: usize) -> Result<usize, GraphError> {
        match self.get("$top") {
            None => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|top| *top > 0)
                .map(|top| top.min(max))
                .ok_or_else(|| {
                    GraphError::bad_request(
                        "BadRequest",
                        format!("Invalid value '{text}' for $top."),
                    )
                }),
        }
    }

    /// The same query with some parameters replaced, for `@odata.nextLink`.
    pub fn with(&self, replacements: &[(&str, String)]) -> String {
        let mut pairs: Vec<(String, String)> = self
            .0
            .iter()
            .filter(|(key, _)| {
                !replacements.iter().any(|(name, _)| {
                    key.trim_start_matches('$')
                        .eq_ignore_ascii_case(name.trim_start_matches('$'))
                })
            })
            .cloned()
            .collect();
        for (name, value) in replacements {
            pairs.push((name.to_string(), value.clone()));
        }
        pairs
            .iter()
            .map(|(key, value)| {
                format!(
                    "{}={}",
                    crate::notify::percent_encode(key).replace("%24", "$"),
                    crate::notify::percent_encode(value)
                )
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}
