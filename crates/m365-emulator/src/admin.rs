//! The emulator's own admin endpoint under `/_emulator`: faults, counters, delta expiry,
//! lifecycle notifications and the manual clock. It needs no token (it is a test tool).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::SignedDuration;
use serde_json::{json, Value};

use crate::faults::lock;
use crate::graph::subscriptions::{send_lifecycle, LifecycleEvent};
use crate::state::AppState;
use crate::timefmt::graph_instant;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_emulator/health", get(health))
        .route("/_emulator/counters", get(counters))
        .route("/_emulator/counters/reset", post(reset_counters))
        .route(
            "/_emulator/faults",
            get(get_faults).post(patch_faults).patch(patch_faults),
        )
        .route("/_emulator/delta/expire", post(expire_delta))
        .route("/_emulator/subscriptions", get(list_subscriptions))
        .route("/_emulator/ews/connections", get(ews_connections))
        .route("/_emulator/subscriptions/{id}/lifecycle", post(lifecycle))
        .route("/_emulator/clock", get(clock))
        .route("/_emulator/clock/advance", post(advance_clock))
        .route(
            "/_emulator/users/{user}/revokeSignInSessions",
            post(revoke_sign_in_sessions),
        )
        .route("/_emulator/users/{user}/signin", get(user_sign_in))
        .route("/_emulator/consents/revoke", post(revoke_consent))
        .route("/_emulator/sharing", post(set_sharing))
        .route(
            "/_emulator/apps/{client_id}/redirect_uris",
            post(add_redirect_uri),
        )
}

fn admin_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn counters(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let snapshot = state.counters.snapshot(|index| state.mailbox_name(index));
    let mut body = serde_json::to_value(&snapshot).unwrap_or_default();
    if query
        .get("by_mailbox")
        .is_some_and(|value| value == "false")
    {
        if let Some(object) = body.as_object_mut() {
            object.remove("by_mailbox");
        }
    }
    Json(body).into_response()
}

async fn reset_counters(State(state): State<Arc<AppState>>) -> Response {
    state.counters.reset();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_faults(State(state): State<Arc<AppState>>) -> Response {
    Json(state.faults()).into_response()
}

/// Applies a partial settings object; `"expire_delta_tokens": true` also expires delta tokens.
async fn patch_faults(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let Ok(mut patch) = serde_json::from_slice::<Value>(&body) else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object of fault settings",
        );
    };
    let expire = patch
        .as_object_mut()
        .and_then(|object| object.remove("expire_delta_tokens"))
        .and_then(|value| value.as_bool())
        .unwrap_or(false);
    let mut faults = lock(&state.faults);
    match faults.patched(&patch) {
        Ok(updated) => {
            *faults = updated.clone();
            drop(faults);
            if expire {
                state.delta.expire_all();
            }
            Json(updated).into_response()
        }
        Err(error) => admin_error(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

async fn expire_delta(State(state): State<Arc<AppState>>) -> Response {
    state.delta.expire_all();
    StatusCode::NO_CONTENT.into_response()
}

async fn list_subscriptions(State(state): State<Arc<AppState>>) -> Response {
    let items: Vec<Value> = state
        .subscriptions
        .all()
        .iter()
        .map(|subscription| {
            json!({
                "id": subscription.id,
                "resource": subscription.resource,
                "mailbox": state.mailbox_name(subscription.user_index),
                "applicationId": state.directory.apps[subscription.app_index].client_id,
                "expirationDateTime": graph_instant(subscription.expiration),
                "notificationUrl": crate::notify::redact(&subscription.notification_url),
                "hasLifecycleNotificationUrl": subscription.lifecycle_notification_url.is_some(),
            })
        })
        .collect();
    Json(json!({"value": items})).into_response()
}

/// Open GetStreamingEvents connections per charged account.
async fn ews_connections(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({"connections": state.ews.streaming.connections()})).into_response()
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecycleRequest {
    lifecycle_event: LifecycleEvent,
}

async fn lifecycle(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<LifecycleRequest>(&body) else {
        return admin_error(StatusCode::BAD_REQUEST, "the body must be {\"lifecycleEvent\": \"reauthorizationRequired\" | \"subscriptionRemoved\" | \"missed\"}");
    };
    match send_lifecycle(&state, &id, request.lifecycle_event) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(error) => admin_error(StatusCode::NOT_FOUND, error.to_string()),
    }
}

async fn clock(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({"now": graph_instant(state.clock.now()), "manual": state.clock.is_manual()}))
        .into_response()
}

async fn advance_clock(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let seconds = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|value| value.get("seconds").and_then(Value::as_i64));
    let Some(seconds) = seconds else {
        return admin_error(StatusCode::BAD_REQUEST, "the body must be {\"seconds\": N}");
    };
    match state.clock.advance(SignedDuration::from_secs(seconds)) {
        Ok(now) => Json(json!({"now": graph_instant(now)})).into_response(),
        Err(error) => admin_error(StatusCode::CONFLICT, error.to_string()),
    }
}

/// A user by address or id; the error is the 404 answer's message.
fn user_index(state: &AppState, key: &str) -> Result<usize, String> {
    state
        .directory
        .user(key)
        .ok_or_else(|| format!("no user '{key}'"))
}

fn app_index(state: &AppState, client_id: &str) -> Result<usize, String> {
    state
        .directory
        .app_by_client_id(client_id)
        .ok_or_else(|| format!("no app '{client_id}'"))
}

fn not_found(message: String) -> Response {
    admin_error(StatusCode::NOT_FOUND, message)
}

/// Like Graph's `POST /users/{id}/revokeSignInSessions` or a password reset: every refresh
/// token the user holds is refused from now on (AADSTS50173).
async fn revoke_sign_in_sessions(
    State(state): State<Arc<AppState>>,
    Path(user): Path<String>,
) -> Response {
    match user_index(&state, &user) {
        Ok(index) => {
            state.signin.revoke_sessions(index, state.clock.now());
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => not_found(message),
    }
}

/// How many refresh tokens the emulator keeps for a user (issued and not yet found expired).
async fn user_sign_in(State(state): State<Arc<AppState>>, Path(user): Path<String>) -> Response {
    match user_index(&state, &user) {
        Ok(index) => {
            Json(json!({"refresh_tokens": state.signin.refresh_token_count(index)})).into_response()
        }
        Err(message) => not_found(message),
    }
}

#[derive(serde::Deserialize)]
struct ConsentRevocation {
    client_id: String,
    user: Option<String>,
}

/// Removes consent: `{"client_id", "user"}` one user's, `{"client_id"}` the admin's and everyone's.
async fn revoke_consent(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<ConsentRevocation>(&body) else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "the body must be {\"client_id\": \"…\", \"user\": \"…\" (optional)}",
        );
    };
    let app = match app_index(&state, &request.client_id) {
        Ok(app) => app,
        Err(message) => return not_found(message),
    };
    let user = match request
        .user
        .as_deref()
        .map(|user| user_index(&state, user))
        .transpose()
    {
        Ok(user) => user,
        Err(message) => return not_found(message),
    };
    state.signin.revoke_consent(app, user);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Deserialize)]
struct Sharing {
    owner: String,
    reader: String,
    shared: bool,
}

/// Shares (or stops sharing) `owner`'s calendar with `reader`, as Outlook's sharing dialog does.
async fn set_sharing(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Sharing>(&body) else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "the body must be {\"owner\": \"…\", \"reader\": \"…\", \"shared\": true|false}",
        );
    };
    let (owner, reader) = match (
        user_index(&state, &request.owner),
        user_index(&state, &request.reader),
    ) {
        (Ok(owner), Ok(reader)) => (owner, reader),
        (Err(message), _) | (_, Err(message)) => return not_found(message),
    };
    state.signin.set_shared(owner, reader, request.shared);
    StatusCode::NO_CONTENT.into_response()
}

/// Adds a redirect URI to an app's "Web" platform (the portal's Authentication page).
async fn add_redirect_uri(
    State(state): State<Arc<AppState>>,
    Path(client_id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let uri = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|value| value.get("uri").and_then(Value::as_str).map(str::to_string));
    let Some(uri) = uri else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "the body must be {\"uri\": \"https://…\"}",
        );
    };
    match app_index(&state, &client_id) {
        Ok(app) => {
            state.signin.add_redirect_uri(app, uri);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => not_found(message),
    }
}
