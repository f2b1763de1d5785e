//! `/v1.0/subscriptions`: change-notification subscriptions on `/users/{id}/events`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use super::{authenticate, enter_mailbox, Caller, GraphError, Identity, Need};
use crate::calendar::{ChangeRecord, ChangeType};
use crate::faults::lock;
use crate::notify::{percent_encode, redact, Delivery, DeliveryKind};
use crate::state::AppState;
use crate::timefmt::{graph_instant, parse_instant};

#[derive(Clone, Debug)]
pub struct Subscription {
    pub id: String,
    pub app_index: usize,
    pub user_index: usize,
    /// The resource as the subscriber wrote it.
    pub resource: String,
    pub change_types: Vec<ChangeType>,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    pub client_state: Option<String>,
    pub expiration: Timestamp,
    pub creator_id: String,
}

/// Lifecycle events Graph sends to `lifecycleNotificationUrl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LifecycleEvent {
    ReauthorizationRequired,
    SubscriptionRemoved,
    Missed,
}

impl LifecycleEvent {
    pub fn name(self) -> &'static str {
        match self {
            LifecycleEvent::ReauthorizationRequired => "reauthorizationRequired",
            LifecycleEvent::SubscriptionRemoved => "subscriptionRemoved",
            LifecycleEvent::Missed => "missed",
        }
    }
}

#[derive(Default)]
pub struct SubscriptionStore {
    by_id: Mutex<HashMap<String, Subscription>>,
}

impl SubscriptionStore {
    pub fn all(&self) -> Vec<Subscription> {
        lock(&self.by_id).values().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Subscription> {
        lock(&self.by_id).get(id).cloned()
    }

    pub fn remove(&self, id: &str) -> Option<Subscription> {
        lock(&self.by_id).remove(id)
    }
}

fn subscription_json(state: &AppState, subscription: &Subscription, with_context: bool) -> Value {
    let mut body = json!({
        "id": subscription.id,
        "resource": subscription.resource,
        "applicationId": state.directory.apps[subscription.app_index].client_id,
        "changeType": subscription.change_types.iter().map(|change| change.name()).collect::<Vec<_>>().join(","),
        "clientState": subscription.client_state,
        "notificationUrl": subscription.notification_url,
        "notificationQueryOptions": null,
        "lifecycleNotificationUrl": subscription.lifecycle_notification_url,
        "expirationDateTime": graph_instant(subscription.expiration),
        "creatorId": subscription.creator_id,
        "includeResourceData": null,
        "latestSupportedTlsVersion": "v1_2",
        "encryptionCertificate": null,
        "encryptionCertificateId": null,
        "notificationUrlAppId": null,
    });
    if with_context {
        body["@odata.context"] = json!(format!(
            "{}/$metadata#subscriptions/$entity",
            state.graph_url
        ));
    }
    body
}

fn extension_error(status: StatusCode, operation: &str, reason: &str) -> GraphError {
    let status_name = match status {
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        _ => "BadRequest",
    };
    GraphError::new(
        status,
        "ExtensionError",
        format!(
            "Operation: {operation}; Exception: [Status Code: {status_name}; Reason: {reason}]"
        ),
    )
}

/// Notification URLs must be https; loopback http is allowed so tests can listen locally.
fn check_url(url: &str, property: &str) -> Result<(), GraphError> {
    let lower = url.to_ascii_lowercase();
    let loopback_http = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|prefix| {
            lower.starts_with(prefix)
                && matches!(lower.as_bytes().get(prefix.len()), Some(b':' | b'/') | None)
        });
    if lower.starts_with("https://") || loopback_http {
        return Ok(());
    }
    Err(GraphError::bad_request(
        "ValidationError",
        format!("The {property} must be an https URL (the emulator also allows http on loopback)."),
    ))
}

/// The mailbox a resource like `/users/{id}/events` or `users/{id}/calendar/events` names.
fn resource_mailbox(
    state: &AppState,
    caller: &Caller,
    resource: &str,
) -> Result<usize, GraphError> {
    let trimmed = resource.trim().trim_start_matches('/');
    let parts: Vec<&str> = trimmed.split('/').collect();
    let unsupported = || {
        GraphError::bad_request("InvalidRequest", format!("The resource '{resource}' is not supported by the emulator: use /users/{{id}}/events."))
    };
    let user_key = match parts.as_slice() {
        [users, key, events]
            if users.eq_ignore_ascii_case("users") && events.eq_ignore_ascii_case("events") =>
        {
            key.to_string()
        }
        [users, key, calendar, events]
            if users.eq_ignore_ascii_case("users")
                && calendar.eq_ignore_ascii_case("calendar")
                && events.eq_ignore_ascii_case("events") =>
        {
            key.to_string()
        }
        [me, events] if me.eq_ignore_ascii_case("me") && events.eq_ignore_ascii_case("events") => {
            match &caller.identity {
                Identity::Delegated { user_index, .. } => {
                    state.directory.users[*user_index].id.clone()
                }
                Identity::App { .. } => {
                    return Err(GraphError::bad_request(
                        "BadRequest",
                        "/me request is only valid with delegated authentication flow.",
                    ))
                }
            }
        }
        _ => return Err(unsupported()),
    };
    let user_key = user_key
        .trim_start_matches("('")
        .trim_end_matches("')")
        .to_string();
    super::resolve_mailbox(state, caller, &user_key).map_err(|_| {
        extension_error(
            StatusCode::NOT_FOUND,
            "Create",
            &format!("The requested user '{user_key}' is invalid."),
        )
    })
}

fn validation_failed() -> GraphError {
    GraphError::bad_request("ValidationError", "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.")
}

async fn validate_endpoint(state: &AppState, url: &str) -> Result<(), GraphError> {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        state.ids.guid()
    );
    let separator = if url.contains('?') { '&' } else { '?' };
    let validation_url = format!("{url}{separator}validationToken={}", percent_encode(&token));
    state.counters.count("notifications.validation");
    match state
        .notifier
        .client
        .post(
            &validation_url,
            "text/plain; charset=utf-8",
            Vec::new(),
            state.notifier.validation_timeout,
        )
        .await
    {
        Ok((200, body)) if body == token.as_bytes() => Ok(()),
        Ok((status, _)) => {
            tracing::info!(url = %redact(url), status, "subscription validation answered wrongly");
            Err(validation_failed())
        }
        Err(error) => {
            tracing::info!(%error, "subscription validation failed");
            Err(validation_failed())
        }
    }
}

fn max_expiration(state: &AppState, now: Timestamp) -> Timestamp {
    now.checked_add(SignedDuration::from_mins(
        state.settings.subscription_max_minutes,
    ))
    .unwrap_or(now)
}

fn parse_expiration(
    state: &AppState,
    body: &Value,
    now: Timestamp,
) -> Result<Timestamp, GraphError> {
    let text = body
        .get("expirationDateTime")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            GraphError::bad_request(
                "InvalidRequest",
                "expirationDateTime is a required property for subscription creation.",
            )
        })?;
    let expiration = parse_instant(text).map_err(|_| {
        GraphError::bad_request(
            "InvalidRequest",
            format!("'{text}' is not a valid expirationDateTime."),
        )
    })?;
    if expiration <= now {
        return Err(GraphError::bad_request(
            "InvalidRequest",
            "Subscription expiration can only be in the future.",
        ));
    }
    if expiration > max_expiration(state, now) {
        return Err(GraphError::bad_request(
            "InvalidRequest",
            format!(
                "Subscription expiration can only be {} minutes in the future.",
                state.settings.subscription_max_minutes
            ),
        ));
    }
    Ok(expiration)
}

/// `POST /v1.0/subscriptions`
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "subscriptions.create", Need::AnyToken).await?;
        let body: Value = serde_json::from_slice(&body).map_err(|error| {
            GraphError::bad_request(
                "BadRequest",
                format!("The request body is not valid JSON: {error}"),
            )
        })?;
        let text = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_string);
        let resource = text("resource").ok_or_else(|| {
            GraphError::bad_request(
                "InvalidRequest",
                "resource is a required property for subscription creation.",
            )
        })?;
        let change_type_text = text("changeType").ok_or_else(|| {
            GraphError::bad_request(
                "InvalidRequest",
                "changeType is a required property for subscription creation.",
            )
        })?;
        let mut change_types = Vec::new();
        for name in change_type_text.split(',') {
            let change = match name.trim() {
                "created" => ChangeType::Created,
                "updated" => ChangeType::Updated,
                "deleted" => ChangeType::Deleted,
                other => {
                    return Err(GraphError::bad_request(
                        "InvalidRequest",
                        format!(
                            "'{other}' is not a valid change type: use created, updated, deleted."
                        ),
                    ))
                }
            };
            if !change_types.contains(&change) {
                change_types.push(change);
            }
        }
        let notification_url = text("notificationUrl").ok_or_else(|| {
            GraphError::bad_request(
                "InvalidRequest",
                "notificationUrl is a required property for subscription creation.",
            )
        })?;
        check_url(&notification_url, "notificationUrl")?;
        let lifecycle_notification_url = text("lifecycleNotificationUrl");
        if let Some(url) = &lifecycle_notification_url {
            check_url(url, "lifecycleNotificationUrl")?;
        }
        let client_state = text("clientState");
        if client_state
            .as_ref()
            .is_some_and(|value| value.chars().count() > 128)
        {
            return Err(GraphError::bad_request(
                "InvalidRequest",
                "clientState must be at most 128 characters.",
            ));
        }
        let now = state.clock.now();
        let expiration = parse_expiration(&state, &body, now)?;
        let user_index = resource_mailbox(&state, &caller, &resource)?;
        // "Change notifications for Outlook resources": delegated permissions subscribe only
        // to items in the signed-in user's own mailbox; the `.Shared` permissions do not
        // support subscriptions on shared or delegated folders.
        if let Identity::Delegated {
            user_index: own, ..
        } = &caller.identity
        {
            if *own != user_index {
                state.counters.count("subscriptions.delegated_refused");
                return Err(extension_error(
                    StatusCode::FORBIDDEN,
                    "Create",
                    "Access is denied. Check credentials and try again.",
                ));
            }
        }
        if !caller.holds(Need::CalendarRead) {
            return Err(extension_error(
                StatusCode::FORBIDDEN,
                "Create",
                "Access is denied. Check credentials and try again.",
            ));
        }
        {
            let _slot = enter_mailbox(&state, &caller, user_index)
                .await
                .map_err(|error| match error.status {
                    StatusCode::FORBIDDEN => {
                        extension_error(StatusCode::FORBIDDEN, "Create", &error.message)
                    }
                    _ => error,
                })?;
        }
        validate_endpoint(&state, &notification_url).await?;
        if let Some(url) = &lifecycle_notification_url {
            if url != &notification_url {
                validate_endpoint(&state, url).await?;
            }
        }
        let creator_id = match &caller.identity {
            Identity::App { .. } => state.directory.apps[caller.app_index]
                .service_principal_id
                .clone(),
            Identity::Delegated { user_index, .. } => state.directory.users[*user_index].id.clone(),
        };
        let subscription = Subscription {
            id: state.ids.guid(),
            app_index: caller.app_index,
            user_index,
            resource,
            change_types,
            notification_url,
            lifecycle_notification_url,
            client_state,
            expiration,
            creator_id,
        };
        let response_body = subscription_json(&state, &subscription, true);
        lock(&state.subscriptions.by_id).insert(subscription.id.clone(), subscription);
        Ok::<_, GraphError>((StatusCode::CREATED, Json(response_body)).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

fn not_found(id: &str) -> GraphError {
    GraphError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!("The object was not found. Subscription '{id}' does not exist or has expired."),
    )
}

/// A subscription of the caller's app that has not expired (expired ones are removed).
fn owned_subscription(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Subscription, GraphError> {
    let now = state.clock.now();
    let mut table = lock(&state.subscriptions.by_id);
    match table.get(id) {
        Some(subscription) if subscription.expiration <= now => {
            table.remove(id);
            Err(not_found(id))
        }
        Some(subscription) if subscription.app_index == caller.app_index => {
            Ok(subscription.clone())
        }
        _ => Err(not_found(id)),
    }
}

/// `GET /v1.0/subscriptions/{id}`
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "subscriptions.get", Need::AnyToken).await?;
        let subscription = owned_subscription(&state, &caller, &id)?;
        Ok::<_, GraphError>(Json(subscription_json(&state, &subscription, true)).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Subscriptions per page of `GET /v1.0/subscriptions`, as Graph pages its collections.
const SUBSCRIPTIONS_PER_PAGE: usize = 100;

/// `GET /v1.0/subscriptions`: the caller's app's live subscriptions (an app-only token lists
/// the subscriptions the app made for any user, as Microsoft's "List subscriptions" page
/// describes), ordered by id, 100 per page with `@odata.nextLink` (`$skiptoken`).
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "subscriptions.list", Need::AnyToken).await?;
        let now = state.clock.now();
        let mut mine: Vec<Subscription> = state
            .subscriptions
            .all()
            .into_iter()
            .filter(|subscription| {
                subscription.app_index == caller.app_index && subscription.expiration > now
            })
            .collect();
        mine.sort_by(|a, b| a.id.cmp(&b.id));
        let skip = match query.get("$skiptoken") {
            None => 0,
            Some(token) => token.parse::<usize>().map_err(|_| {
                GraphError::bad_request("BadRequest", "The $skiptoken is not valid.")
            })?,
        };
        let items: Vec<Value> = mine
            .iter()
            .skip(skip)
            .take(SUBSCRIPTIONS_PER_PAGE)
            .map(|subscription| subscription_json(&state, subscription, false))
            .collect();
        let mut body = json!({
            "@odata.context": format!("{}/$metadata#subscriptions", state.graph_url),
            "value": items,
        });
        let next = skip + SUBSCRIPTIONS_PER_PAGE;
        if next < mine.len() {
            body["@odata.nextLink"] = json!(format!(
                "{}/subscriptions?$skiptoken={next}",
                state.graph_url
            ));
        }
        Ok::<_, GraphError>(Json(body).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `PATCH /v1.0/subscriptions/{id}`: renews (new `expirationDateTime`).
pub async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "subscriptions.update", Need::AnyToken).await?;
        let body: Value = serde_json::from_slice(&body).map_err(|error| {
            GraphError::bad_request(
                "BadRequest",
                format!("The request body is not valid JSON: {error}"),
            )
        })?;
        owned_subscription(&state, &caller, &id)?;
        let now = state.clock.now();
        let expiration = parse_expiration(&state, &body, now)?;
        let notification_url = body
            .get("notificationUrl")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(url) = &notification_url {
            check_url(url, "notificationUrl")?;
            validate_endpoint(&state, url).await?;
        }
        let mut table = lock(&state.subscriptions.by_id);
        let subscription = table.get_mut(&id).ok_or_else(|| not_found(&id))?;
        subscription.expiration = expiration;
        if let Some(url) = notification_url {
            subscription.notification_url = url;
        }
        let response_body = subscription_json(&state, subscription, true);
        Ok::<_, GraphError>(Json(response_body).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /v1.0/subscriptions/{id}`
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "subscriptions.delete", Need::AnyToken).await?;
        owned_subscription(&state, &caller, &id)?;
        state.subscriptions.remove(&id);
        Ok::<_, GraphError>(StatusCode::NO_CONTENT.into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

fn lifecycle_body(state: &AppState, subscription: &Subscription, event: LifecycleEvent) -> Value {
    let tenant_id =
        &state.directory.tenants[state.directory.apps[subscription.app_index].tenant_index].id;
    json!({"value": [{
        "subscriptionId": subscription.id,
        "subscriptionExpirationDateTime": graph_instant(subscription.expiration),
        "tenantId": tenant_id,
        "organizationId": tenant_id,
        "clientState": subscription.client_state,
        "resource": subscription.resource,
        "lifecycleEvent": event.name(),
    }]})
}

/// Enqueues change notifications for every live subscription on the mailbox.
pub fn notify_change(state: &AppState, user_index: usize, change: &ChangeRecord) {
    crate::ews::streaming::notify_change(state, user_index, change);
    let now = state.clock.now();
    let user = &state.directory.users[user_index];
    let subscriptions: Vec<Subscription> = lock(&state.subscriptions.by_id)
        .values()
        .filter(|subscription| {
            subscription.user_index == user_index
                && subscription.expiration > now
                && subscription.change_types.contains(&change.change_type)
        })
        .cloned()
        .collect();
    for subscription in subscriptions {
        let tenant_id = &state.directory.tenants[user.tenant_index].id;
        let resource = format!("Users/{}/Events/{}", user.id, change.event_id);
        let body = json!({"value": [{
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": graph_instant(subscription.expiration),
            "changeType": change.change_type.name(),
            "resource": resource,
            "resourceData": {
                "@odata.type": "#Microsoft.Graph.Event",
                "@odata.id": resource,
                "@odata.etag": format!("W/\"{}\"", change.change_key),
                "id": change.event_id,
            },
            "clientState": subscription.client_state,
            "tenantId": tenant_id,
        }]});
        state.notifier.enqueue(Delivery {
            url: subscription.notification_url.clone(),
            body,
            kind: DeliveryKind::Change,
            missed_url: subscription.lifecycle_notification_url.clone(),
            missed_body: Some(lifecycle_body(state, &subscription, LifecycleEvent::Missed)),
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no subscription with id '{0}'")]
    UnknownSubscription(String),
    #[error("subscription '{0}' has no lifecycleNotificationUrl, so Graph would not send lifecycle notifications for it")]
    NoLifecycleUrl(String),
}

/// Sends a lifecycle notification; `subscriptionRemoved` also removes the subscription.
pub fn send_lifecycle(
    state: &AppState,
    subscription_id: &str,
    event: LifecycleEvent,
) -> Result<(), LifecycleError> {
    let subscription = state
        .subscriptions
        .get(subscription_id)
        .ok_or_else(|| LifecycleError::UnknownSubscription(subscription_id.to_string()))?;
    let url = subscription
        .lifecycle_notification_url
        .clone()
        .ok_or_else(|| LifecycleError::NoLifecycleUrl(subscription_id.to_string()))?;
    if event == LifecycleEvent::SubscriptionRemoved {
        state.subscriptions.remove(subscription_id);
    }
    state.notifier.enqueue(Delivery {
        url,
        body: lifecycle_body(state, &subscription, event),
        kind: DeliveryKind::Lifecycle,
        missed_url: None,
        missed_body: None,
    });
    Ok(())
}
