//! The HTTP face of the service: the REST + Server-Sent-Events API, the admin page, health and
//! metrics, and the Graph notification webhook.
//!
//! `/api/v1/*` needs the bearer token from the configuration (on the live stream also
//! accepted as `?access_token=`, because browsers' EventSource cannot send headers). The
//! webhook is authenticated by Graph's `clientState` instead; `/healthz`, `/readyz` and
//! `/metrics` are open so that load balancers and Prometheus can reach them.
//! A room panel (`/panel/{room}`, `panel.rs`) takes neither: its own per-room panel token.
//!
//! Every route has its own body limit (the webhook takes what Graph sends, the rest next to
//! nothing) and, but for the live stream, a time limit; live streams are capped by
//! `[api] max_streams`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use calbridge_domain::{AppointmentStatus, MailboxAddress, Secret, SourceId};
use calbridge_net::constant_time_equal;
use calbridge_net::percent::decode_form_value;
use calbridge_presence::SubjectVisibility;
use calbridge_sources_graph::TokenStatus;
use calbridge_store::{PersonKey, Resolution, Store};
use futures_util::StreamExt;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::BroadcastStream;
use tower_http::limit::RequestBodyLimitLayer;

use crate::clock::Clock;
use crate::hub::{PresenceChange, PresenceHub, StreamedChange};
use crate::sync::graph::GraphSync;

pub mod connections;
mod metrics;
pub mod panel;
mod rooms;

const ADMIN_PAGE: &str = include_str!("admin.html");

pub struct ApiState {
    pub hub: Arc<PresenceHub>,
    pub store: Arc<dyn Store>,
    pub syncs: HashMap<SourceId, Arc<GraphSync>>,
    pub ews_syncs: HashMap<SourceId, Arc<crate::sync::ews::EwsSync>>,
    pub token: Secret,
    pub clock: Arc<dyn Clock>,
    pub started_at: Timestamp,
    pub window_hours: u32,
    pub problems: crate::service::Problems,
    /// Each source's directory health (people, a held change, failing reads).
    pub directory_health: crate::service::DirectoryHealthMap,
    pub sip: Option<(
        Arc<calbridge_publish_sip::SipPublisher>,
        Arc<crate::publish::SipAddressBook>,
    )>,
    pub webhooks: Option<Arc<calbridge_publish_webhook::WebhookPublisher>>,
    /// The instances sharing a PostgreSQL store; `None` for one instance on SQLite.
    pub cluster: Option<crate::cluster::SharedClusterView>,
    /// Where notifications for people another instance follows go; `None` with one instance.
    pub handed_work: Option<calbridge_store::cluster::WorkQueue>,
    /// Re-reads the configuration file (`POST /api/v1/reload`, as SIGHUP does).
    pub reloader: Arc<crate::reload::Reloader>,
    /// One permit per open live stream (`[api] max_streams`).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Open HTTP connections (`[api] max_connections`).
    pub connections: Arc<connections::ConnectionStats>,
    /// `api.public_url`: the redirect URI of "Sign in with Microsoft" hangs below it.
    pub public_url: Option<String>,
    /// Delegated sign-ins started on the admin page, waiting for their callback.
    pub sign_ins: Arc<crate::sign_in::PendingSignIns>,
    /// `[rooms] show`: what a room's meetings are called.
    pub room_show: calbridge_presence::RoomShow,
    /// Which people are rooms, for the live stream's `room` events.
    pub room_keys: tokio::sync::Mutex<rooms::RoomKeys>,
    /// `[rooms] check_in_minutes`; `None` when check-in is off.
    pub check_ins: Option<Arc<crate::check_in::CheckIns>>,
}

/// The most a Graph notification POST may carry. Graph batches basic change notifications
/// (without resource data, about 700 bytes each) in one `value` array; its documentation
/// names no maximum, and 1 MiB holds well over a thousand of them.
pub const NOTIFICATION_BODY_LIMIT: usize = 1024 * 1024;
/// The most any other route takes: they are all GETs but for the reload, which has no body.
pub const OTHER_BODY_LIMIT: usize = 16 * 1024;
/// How long a request other than the live stream may take before it is answered 408.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The live stream's path, the one route that accepts `?access_token=`.
const STREAM_PATH: &str = "/api/v1/presence/stream";

pub fn router(state: Arc<ApiState>) -> Router {
    let timeout = || {
        tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        )
    };
    let api = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/users", get(users))
        .route("/api/v1/users/{address}/presence", get(presence))
        .route("/api/v1/users/{address}/calendar", get(calendar))
        .route("/api/v1/rooms", get(rooms::list))
        .route("/api/v1/rooms/check-ins", get(rooms::check_in_log))
        .route("/api/v1/rooms/{address}", get(rooms::detail))
        .route("/api/v1/rooms/{address}/panel", get(panel::api_panel_url))
        .route(
            "/api/v1/rooms/{address}/check-in",
            post(panel::api_check_in),
        )
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/sources/{source}/sign-in", post(start_sign_in))
        .layer(timeout())
        // A stream lasts as long as its reader wants: no time limit.
        .route(STREAM_PATH, get(stream))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(RequestBodyLimitLayer::new(OTHER_BODY_LIMIT));
    let notifications = Router::new()
        .route(
            "/notifications/graph/{source}",
            post(graph_notification).get(graph_validation),
        )
        .route(
            "/notifications/graph/{source}/lifecycle",
            post(graph_notification).get(graph_validation),
        )
        .layer(RequestBodyLimitLayer::new(NOTIFICATION_BODY_LIMIT));
    Router::new()
        .route("/", get(|| async { Html(ADMIN_PAGE) }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        // Entra ID sends the browser here; the single-use `state` stands in for the API token.
        .route("/oauth/callback", get(oauth_callback))
        // A room panel shows its room with a panel token instead of the API token.
        .route("/panel/{room}", get(panel::page))
        .route("/panel/{room}/state", get(panel::room_state))
        .route("/panel/{room}/check-in", post(panel::check_in))
        .layer(RequestBodyLimitLayer::new(OTHER_BODY_LIMIT))
        .merge(notifications)
        .layer(timeout())
        .merge(api)
        .with_state(state)
}

/// "Sign in with Microsoft" for a delegated Graph source: the authorization URL (code flow
/// with PKCE, redirect URI `{public_url}/oauth/callback`) the admin page sends the browser to.
async fn start_sign_in(State(state): State<Arc<ApiState>>, Path(source): Path<String>) -> Response {
    let Some(sync) = state.syncs.get(&SourceId(source.clone())) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": format!("no Graph source `{}`", calbridge_domain::shorten(&source, 80))}))).into_response();
    };
    if !sync.source.graph.is_delegated() {
        return (StatusCode::CONFLICT, Json(json!({"error": format!("source `{source}` signs in as the app (auth = \"app\"); only auth = \"delegated\" signs in an account")}))).into_response();
    }
    let Some(public_url) = &state.public_url else {
        return (StatusCode::CONFLICT, Json(json!({"error": "set api.public_url: the sign-in comes back to {public_url}/oauth/callback, which must be registered as a Web redirect URI of the app; or run `calbridge login --source <id>` (device code)"}))).into_response();
    };
    let url = state
        .sign_ins
        .start(&source, &sync.source.graph, public_url);
    Json(json!({
        "authorize_url": url,
        "redirect_uri": crate::sign_in::redirect_uri(public_url),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

fn callback_page(status: StatusCode, message: &str) -> Response {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    (
        status,
        Html(format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>calbridge sign-in</title></head><body><p id=\"result\">{escaped}</p><p><a href=\"/\">Back to the admin page</a></p></body></html>"
        )),
    )
        .into_response()
}

/// Where Entra ID sends the browser back: the code is redeemed if `state` is one this service
/// handed out (once, within ten minutes).
async fn oauth_callback(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<CallbackQuery>,
) -> Response {
    if let Some(error) = &query.error {
        let description = query.error_description.as_deref().unwrap_or("");
        return callback_page(
            StatusCode::BAD_REQUEST,
            &format!(
                "The sign-in did not finish: {} {}. Start it again from the admin page (an administrator may have to grant consent first).",
                calbridge_domain::shorten(error, 80),
                calbridge_domain::shorten(description, 300)
            ),
        );
    }
    let (Some(code), Some(sign_in_state), Some(public_url)) =
        (&query.code, &query.state, &state.public_url)
    else {
        return callback_page(
            StatusCode::BAD_REQUEST,
            "This address is where Microsoft sends the browser back after a sign-in started on the admin page; it needs `code` and `state`.",
        );
    };
    let syncs = state.syncs.clone();
    let finished = state
        .sign_ins
        .finish(sign_in_state, code, public_url, |source| {
            syncs
                .get(&SourceId(source.to_string()))
                .map(|sync| sync.source.graph.clone())
        })
        .await;
    match finished {
        Ok((account, source)) => {
            if let Some(sync) = state.syncs.get(&SourceId(source.clone())) {
                sync.retry_failed_now();
            }
            tracing::info!(source = %source, account = %account, "an account signed in for a delegated source");
            callback_page(
                StatusCode::OK,
                &format!("Signed in as {account}: source {source} reads the calendars shared with this account."),
            )
        }
        Err(message) => {
            tracing::warn!("a sign-in callback failed: {message}");
            callback_page(
                StatusCode::BAD_REQUEST,
                &format!("The sign-in did not finish: {message}"),
            )
        }
    }
}

/// Reads the configuration file again, as SIGHUP does: the answer says what was applied and
/// what waits for a restart; an invalid file is a 422 and changes nothing.
async fn reload(State(state): State<Arc<ApiState>>) -> Response {
    match state.reloader.reload().await {
        Ok(report) => Json(report).into_response(),
        Err(error) => api_error(StatusCode::UNPROCESSABLE_ENTITY, error),
    }
}

fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError(status, message.into()).into_response()
}

/// An error answer: `{"error": "…"}` with a status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

async fn require_token(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_string);
    // Only the live stream takes the token from the query (EventSource sends no headers):
    // elsewhere a token in a URL would end up in proxies' and browsers' histories for nothing.
    let from_query = request
        .uri()
        .query()
        .filter(|_| request.uri().path() == STREAM_PATH)
        .and_then(|query| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("access_token=").map(decode_form_value))
        });
    let presented = from_header.or(from_query);
    let accepted = presented.is_some_and(|token| {
        // Constant time, so response times do not tell how much of a guessed token was right.
        constant_time_equal(token.as_bytes(), state.token.expose().as_bytes())
    });
    if accepted {
        next.run(request).await
    } else {
        api_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token: send `Authorization: Bearer <token>` with the token from calbridge.toml [api] (calbridge prints it at start when it generated one)",
        )
    }
}

/// Readiness, for a load balancer or an orchestrator: 200 when the store answers, every
/// source has a working token and its first sync done, and someone is followed; otherwise
/// 503 with what is wrong, one line each. (`/healthz` is liveness: the process serves.)
async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let mut problems: Vec<String> = Vec::new();
    let mut ids: Vec<&SourceId> = state.syncs.keys().chain(state.ews_syncs.keys()).collect();
    ids.sort();
    for id in &ids {
        if let Err(error) = state.store.get_source_state(id).await {
            problems.push(format!("the store does not answer: {error}"));
            break;
        }
    }
    for (id, sync) in &state.syncs {
        match sync.token_status() {
            TokenStatus::Valid { .. } => {}
            TokenStatus::NotRequested => {
                problems.push(format!("source {id}: no access token yet"));
            }
            TokenStatus::Failing {
                error,
                next_attempt_at,
                ..
            } => problems.push(format!(
                "source {id}: no access token: {error} (next attempt at {next_attempt_at})"
            )),
        }
        if !sync.progress.finished.load(Relaxed) {
            problems.push(format!("source {id}: first sync not done"));
        }
    }
    for (id, sync) in &state.ews_syncs {
        if !sync.progress.finished.load(Relaxed) {
            problems.push(format!("source {id}: first sync not done"));
        }
    }
    if !ids.is_empty() && state.hub.n_people() == 0 {
        problems.push(
            "nobody is followed: the directory listed no one (see /api/v1/status for its errors)"
                .to_string(),
        );
    }
    if let Some(view) = &state.cluster {
        let view = view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(error) = &view.error {
            problems.push(format!("cluster: {error}"));
        }
    }
    problems.sort();
    let ready = problems.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "people": state.hub.n_people(),
            "problems": problems,
        })),
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    let first_sync_done = state.syncs.values().all(|sync| {
        sync.progress
            .finished
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    Json(json!({
        "status": "ok",
        "people": state.hub.n_people(),
        "first_sync_done": first_sync_done,
    }))
    .into_response()
}

/// What the reconciliation sweep costs: every calendar is re-checked by a delta read once per
/// interval, [`RECONCILE_BATCH`](crate::sync::engine::RECONCILE_BATCH) people per `$batch`.
fn reconcile_json(interval_minutes: u64, people_read: u64) -> Value {
    let per_person_per_minute = if interval_minutes == 0 {
        0.0
    } else {
        1.0 / (crate::sync::engine::RECONCILE_BATCH as f64 * interval_minutes as f64)
    };
    json!({
        "interval_minutes": interval_minutes,
        "requests_per_person_per_minute": (per_person_per_minute * 10_000.0).round() / 10_000.0,
        "people_read": people_read,
    })
}

fn token_json(status: TokenStatus) -> Value {
    match status {
        TokenStatus::NotRequested => {
            json!({"state": "not_requested", "valid_until": null, "error": null, "next_attempt_at": null})
        }
        TokenStatus::Valid { valid_until } => {
            json!({"state": "valid", "valid_until": valid_until.to_string(), "error": null, "next_attempt_at": null})
        }
        TokenStatus::Failing {
            since,
            error,
            next_attempt_at,
        } => json!({
            "state": "failing",
            "valid_until": null,
            "since": since.to_string(),
            "error": error.to_string(),
            "next_attempt_at": next_attempt_at.to_string(),
        }),
    }
}

/// "Client secret expires in 12 days": shown from 30 days before the date on.
pub fn secret_warning(
    expires_on: Option<jiff::civil::Date>,
    now: Timestamp,
    source: &SourceId,
) -> Option<String> {
    let expires_on = expires_on?;
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let days_left = (expires_on - today).get_days();
    let advice = "create a new secret in Entra ID → App registrations → Certificates & secrets, put it in calbridge.toml and update secret_expires_on";
    if days_left < 0 {
        Some(format!(
            "The client secret of source {source} expired on {expires_on}: {advice}."
        ))
    } else if days_left <= 30 {
        Some(format!("The client secret of source {source} expires in {days_left} days ({expires_on}): {advice}."))
    } else {
        None
    }
}

async fn status(State(state): State<Arc<ApiState>>) -> Response {
    let now = state.clock.now();
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    let mut ids: Vec<&SourceId> = state.syncs.keys().collect();
    ids.sort();
    for id in ids {
        let sync = &state.syncs[id];
        let counters = sync.source.graph.counters();
        let people = state.hub.people();
        let mine: Vec<&PersonKey> = people
            .iter()
            .filter(|person| &person.source == id)
            .collect();
        for person in &mine {
            if let Some(health) = sync.health(person) {
                if let (Some(message), Some(at)) = (health.last_error, health.last_error_at) {
                    errors.push((at, json!({"at": at.to_string(), "person": person.address.as_str(), "source": id.0, "message": message})));
                }
            }
        }
        let progress = &sync.progress;
        use std::sync::atomic::Ordering::Relaxed;
        sources.push(json!({
            "id": id.0,
            "kind": "graph",
            "mode": if sync.uses_notifications() { "notifications" } else { "polling" },
            "delegated": sync.source.graph.is_delegated(),
            "token": token_json(sync.token_status()),
            "secret_expires_on": sync.source.secret_expires_on.map(|date| date.to_string()),
            "secret_warning": secret_warning(sync.source.secret_expires_on, now, id),
            "people": mine.len(),
            "subscriptions": sync.n_subscriptions(),
            "first_sync": {
                "total": progress.total.load(Relaxed),
                "done": progress.done.load(Relaxed),
                "failed": progress.failed.load(Relaxed),
                "finished": progress.finished.load(Relaxed),
            },
            "requests": counters.requests_sent,
            "throttled": counters.throttled_answers,
            "retries": counters.retries,
            "notifications_received": sync.source.notifications_received.load(Relaxed),
            "notifications_rejected": sync.source.notifications_rejected.load(Relaxed),
            "reconcile": reconcile_json(sync.settings.reconcile_interval_minutes, sync.reconciled.load(Relaxed)),
        }));
    }
    for (at, message) in state
        .problems
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
    {
        errors.push((
            *at,
            json!({"at": at.to_string(), "person": null, "source": null, "message": message}),
        ));
    }
    let mut ews_ids: Vec<&SourceId> = state.ews_syncs.keys().collect();
    ews_ids.sort();
    for id in ews_ids {
        let sync = &state.ews_syncs[id];
        use std::sync::atomic::Ordering::Relaxed;
        let people = state.hub.people();
        let mine: Vec<&PersonKey> = people
            .iter()
            .filter(|person| &person.source == id)
            .collect();
        for person in &mine {
            if let Some(health) = sync.health(person) {
                if let (Some(message), Some(at)) = (health.last_error, health.last_error_at) {
                    errors.push((at, json!({"at": at.to_string(), "person": person.address.as_str(), "source": id.0, "message": message})));
                }
            }
        }
        let config = sync.source.ews.config();
        let (url, answered_by) = sync.source.ews.current_endpoint();
        let polled = sync.polled_people.load(Relaxed);
        sources.push(json!({
            "id": id.0,
            "kind": "ews",
            "mode": if polled > 0 { "streaming + polling" } else { "streaming" },
            "ews": {
                "polled_mailboxes": polled,
                "poll_interval_seconds": sync.poll_interval().as_secs(),
                "url": url.map(String::from),
                "autodiscover": answered_by.map(String::from),
                "configured_url": config.ews_url.is_some(),
                "auth": config.auth.as_str(),
                "access": config.access.as_str(),
                "read": config.read.as_str(),
            },
            "token": {"state": "not_requested", "valid_until": null, "error": null, "next_attempt_at": null},
            "secret_expires_on": null,
            "secret_warning": null,
            "people": mine.len(),
            "subscriptions": sync.n_subscriptions(),
            "first_sync": {
                "total": sync.progress.total.load(Relaxed),
                "done": sync.progress.done.load(Relaxed),
                "failed": sync.progress.failed.load(Relaxed),
                "finished": sync.progress.finished.load(Relaxed),
            },
            "requests": sync.source.ews.requests_sent(),
            "throttled": 0,
            "retries": 0,
            "notifications_received": sync.source.changes_streamed.load(Relaxed),
            "notifications_rejected": 0,
        }));
    }
    errors.sort_by_key(|error| std::cmp::Reverse(error.0));
    let errors: Vec<Value> = errors
        .into_iter()
        .take(200)
        .map(|(_, error)| error)
        .collect();
    let counters = state.hub.counters();
    use std::sync::atomic::Ordering::Relaxed;
    let webhooks: Vec<Value> = match &state.webhooks {
        None => Vec::new(),
        Some(publisher) => match publisher.status().await {
            Ok(endpoints) => endpoints
                .into_iter()
                .map(|endpoint| {
                    json!({
                        "name": endpoint.name,
                        "mode": endpoint.mode.as_str(),
                        "cursor": endpoint.cursor.0,
                        "pending": format!("{:?}", endpoint.pending),
                        "delivered_total": endpoint.delivered_total,
                        "last_success_at": endpoint.last_success_at.map(|at| at.to_string()),
                        "last_error": endpoint.last_error,
                        "last_error_at": endpoint.last_error_at.map(|at| at.to_string()),
                        "consecutive_failures": endpoint.consecutive_failures,
                        "next_attempt_at": endpoint.next_attempt_at.map(|at| at.to_string()),
                    })
                })
                .collect(),
            Err(error) => vec![json!({ "error": error.to_string() })],
        },
    };
    let cluster = state.cluster.as_ref().map(|view| {
        let view = view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        json!({
            "instance_id": view.instance_id,
            "shards_held": view.shards_held,
            "shards": calbridge_store::cluster::SHARDS,
            "renewed_at": view.renewed_at.map(|at| at.to_string()),
            "error": view.error,
            "instances": view.instances.iter().map(|instance| json!({
                "instance_id": instance.instance_id,
                "name": instance.name,
                "started_at": instance.started_at.to_string(),
                "heartbeat_age_seconds": now.duration_since(instance.heartbeat_at).as_secs_f64().max(0.0),
                "shards": instance.shards,
                "alive": instance.alive,
            })).collect::<Vec<Value>>(),
        })
    });
    // Each source's directory: how many people it lists, a change the shrink guard holds
    // (with why), and the entries whose last read failed (their people stay).
    let directory: Vec<Value> = state
        .directory_health
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .map(|(source, health)| {
            json!({
                "source": source.0,
                "people": health.people,
                "applied_at": health.applied_at.map(|at| at.to_string()),
                "held": health.held.as_ref().map(|held| json!({
                    "reason": held.reason,
                    "since": held.since.to_string(),
                })),
                "failing": health.failing,
            })
        })
        .collect();
    Json(json!({
        "directory": directory,
        "webhooks": webhooks,
        "cluster": cluster,
        "started_at": state.started_at.to_string(),
        "people": state.hub.n_people(),
        "timers": state.hub.n_timers(),
        "decisions": counters.decisions.load(Relaxed),
        "changes": counters.changes.load(Relaxed),
        "sources": sources,
        "errors": errors,
    }))
    .into_response()
}

fn presence_json(state: &ApiState, person: &PersonKey) -> Value {
    match state.hub.decision(person) {
        Some((decision, decided_at)) => json!({
            "activity": decision.activity,
            "note": decision.note,
            "until": decision.until.map(|until| until.to_string()),
            "next_change_at": decision.next_change_at.map(|at| at.to_string()),
            "why": decision.explain(),
            "decided_at": decided_at.to_string(),
        }),
        None => Value::Null,
    }
}

/// A presence another instance decided, as it saved it.
fn stored_presence_json(presence: &calbridge_store::CurrentPresence) -> Value {
    json!({
        "activity": presence.activity,
        "note": presence.note,
        "until": presence.until.map(|until| until.to_string()),
        "next_change_at": presence.next_change_at.map(|at| at.to_string()),
        "why": presence.why,
        "decided_at": presence.decided_at.to_string(),
    })
}

/// With several instances: the instance that follows `person` (as of the last lease round).
fn instance_json(state: &ApiState, person: &PersonKey) -> Value {
    let Some(view) = &state.cluster else {
        return Value::Null;
    };
    let view = view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    view.owner_of(person)
        .map_or(Value::Null, |name| json!(name))
}

async fn users(State(state): State<Arc<ApiState>>) -> Response {
    let people = match state.store.list_people().await {
        Ok(people) => people,
        Err(error) => {
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the store: {error}"),
            )
        }
    };
    // With several instances, the people another instance follows are shown as it saved them.
    let stored: HashMap<PersonKey, calbridge_store::CurrentPresence> = if state.cluster.is_some() {
        state
            .store
            .list_presence()
            .await
            .map(|presences| presences.into_iter().collect())
            .unwrap_or_default()
    } else {
        HashMap::new()
    };
    let users: Vec<Value> = people
        .iter()
        .map(|person| {
            let (resolution, resolved_address, resolution_error) = match &person.resolution {
                Resolution::Pending => ("pending", None, None),
                Resolution::Resolved { primary_smtp, .. } => {
                    ("resolved", Some(primary_smtp.to_string()), None)
                }
                Resolution::Failed { error } => ("failed", None, Some(error.clone())),
            };
            let sync = state
                .syncs
                .get(&person.key.source)
                .and_then(|sync| sync.health(&person.key))
                .or_else(|| {
                    state
                        .ews_syncs
                        .get(&person.key.source)
                        .and_then(|sync| sync.health(&person.key))
                })
                .map(|health| serde_json::to_value(health).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            json!({
                "address": person.key.address.as_str(),
                "source": person.key.source.0,
                "display_name": person.display_name,
                "resolution": resolution,
                "resolved_address": resolved_address,
                "resolution_error": resolution_error,
                "presence": match (presence_json(&state, &person.key), stored.get(&person.key)) {
                    (Value::Null, Some(saved)) => stored_presence_json(saved),
                    (decided, _) => decided,
                },
                "instance": instance_json(&state, &person.key),
                "sync": sync,
                "sip": sip_json(&state, &person.key),
            })
        })
        .collect();
    Json(json!({ "users": users })).into_response()
}

fn sip_json(state: &ApiState, person: &PersonKey) -> Value {
    let Some((publisher, addresses)) = &state.sip else {
        return Value::Null;
    };
    let Some(uri) = addresses.cached(person) else {
        return Value::Null;
    };
    let status = publisher.status(&uri);
    json!({
        "uri": uri,
        "published": status.as_ref().is_some_and(|status| status.etag.is_some()),
        "expires_at": status.as_ref().and_then(|status| status.expires_at).map(|at| at.to_string()),
        "last_status": status.as_ref().and_then(|status| status.last_result.as_ref()).and_then(|result| result.status),
        "last_error": status.as_ref().and_then(|status| status.last_error.clone()),
    })
}

async fn find_person(state: &ApiState, raw: &str) -> Result<PersonKey, ApiError> {
    let address = MailboxAddress::parse(raw)
        .map_err(|error| ApiError(StatusCode::BAD_REQUEST, error.to_string()))?;
    // The store knows everyone in the directory, including people whose address could not be
    // resolved and who therefore have no presence yet.
    let people = state.store.list_people().await.map_err(|error| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the store: {error}"),
        )
    })?;
    people
        .into_iter()
        .map(|person| person.key)
        .find(|person| person.address == address)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no user {address} is followed"),
            )
        })
}

async fn presence(State(state): State<Arc<ApiState>>, Path(address): Path<String>) -> Response {
    let person = match find_person(&state, &address).await {
        Ok(person) => person,
        Err(error) => return error.into_response(),
    };
    let mut body = presence_json(&state, &person);
    if body.is_null() && state.cluster.is_some() {
        // Another instance follows this person: what it saved.
        if let Ok(Some(saved)) = state.store.load_presence(&person).await {
            body = stored_presence_json(&saved);
        }
    }
    if let Value::Object(map) = &mut body {
        map.insert("address".into(), json!(person.address.as_str()));
        map.insert("source".into(), json!(person.source.0));
    }
    Json(body).into_response()
}

#[derive(Deserialize)]
struct CalendarQuery {
    from: Option<String>,
    to: Option<String>,
}

fn parse_query_instant(
    name: &str,
    raw: Option<&str>,
    default: Timestamp,
) -> Result<Timestamp, ApiError> {
    match raw {
        None => Ok(default),
        Some(raw) => raw.parse::<Timestamp>().map_err(|error| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("query parameter `{name}` = `{raw}` is not an RFC 3339 instant like 2026-11-23T08:00:00Z: {error}"),
            )
        }),
    }
}

async fn calendar(
    State(state): State<Arc<ApiState>>,
    Path(address): Path<String>,
    Query(query): Query<CalendarQuery>,
) -> Response {
    let person = match find_person(&state, &address).await {
        Ok(person) => person,
        Err(error) => return error.into_response(),
    };
    let now = state.clock.now();
    let (_, window_end) = crate::sync::window_from(now, state.window_hours);
    let (from, to) = match (
        parse_query_instant("from", query.from.as_deref(), now),
        parse_query_instant("to", query.to.as_deref(), window_end),
    ) {
        (Ok(from), Ok(to)) => (from, to),
        (Err(error), _) | (_, Err(error)) => return error.into_response(),
    };
    let appointments = match state.store.load_appointments(&person).await {
        Ok(appointments) => appointments,
        Err(error) => {
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the calendar of {}: {error}", person.address),
            )
        }
    };
    let zone = state.hub.locale().zone.zone().clone();
    let subjects_shown = state.hub.rules().subjects == SubjectVisibility::Shown;
    let mut blocks: Vec<(Timestamp, Value)> = appointments
        .iter()
        .filter(|appointment| appointment.status == AppointmentStatus::Active)
        .filter_map(|appointment| {
            let (start, end) = appointment.time.instants(&zone);
            if end <= from || start >= to {
                return None;
            }
            let private = appointment.sensitivity.hides_subject();
            let subject = if subjects_shown && !private {
                appointment.subject.clone()
            } else {
                None
            };
            Some((
                start,
                json!({
                    "start": start.to_string(),
                    "end": end.to_string(),
                    "all_day": appointment.time.is_all_day(),
                    "show_as": appointment.show_as,
                    "subject": subject,
                    "private": private,
                }),
            ))
        })
        .collect();
    blocks.sort_by_key(|(start, _)| *start);
    Json(json!({
        "address": person.address.as_str(),
        "from": from.to_string(),
        "to": to.to_string(),
        "blocks": blocks.into_iter().map(|(_, block)| block).collect::<Vec<_>>(),
    }))
    .into_response()
}

pub fn change_json(change: &PresenceChange) -> Value {
    json!({
        "address": change.person.address.as_str(),
        "source": change.person.source.0,
        "activity": change.decision.activity,
        "note": change.decision.note,
        "until": change.decision.until.map(|until| until.to_string()),
        "next_change_at": change.decision.next_change_at.map(|at| at.to_string()),
        "why": change.decision.explain(),
        "decided_at": change.decided_at.to_string(),
    })
}

/// A change as the live stream shows it: the same fields whether this instance decided it or
/// another one did (then as that one saved it).
fn streamed_json(change: &StreamedChange) -> Value {
    match change {
        StreamedChange::Decided(change) => change_json(change),
        StreamedChange::Relayed(relayed) => {
            let mut body = stored_presence_json(&relayed.presence);
            if let Value::Object(map) = &mut body {
                map.insert("address".into(), json!(relayed.person.address.as_str()));
                map.insert("source".into(), json!(relayed.person.source.0));
            }
            body
        }
    }
}

/// Every presence change, whoever follows the person: with several instances the hub's stream
/// also carries what the others decided (see `crate::feed`).
async fn stream(State(state): State<Arc<ApiState>>) -> Response {
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live streams are open: close one, or raise [api] max_streams",
        );
    };
    let records_state = state.clone();
    let changes = BroadcastStream::new(state.hub.subscribe_stream())
        .then(move |item| {
            // The permit lives as long as the stream: dropped with it when the client goes.
            let _permit = &permit;
            let state = state.clone();
            async move {
                let events = match item {
                    Ok(change) => {
                        let mut events = vec![Event::default()
                            .event("presence")
                            .data(streamed_json(&change).to_string())];
                        // A room's change comes again as its room state.
                        if let Some(room) = rooms::room_event(&state, change.person()).await {
                            events.push(Event::default().event("room").data(room.to_string()));
                        }
                        events
                    }
                    // A slow client that fell behind gets told so and can re-read /api/v1/users.
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(
                        missed,
                    )) => vec![Event::default()
                        .event("lagged")
                        .data(json!({ "missed": missed }).to_string())],
                };
                futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>))
            }
        })
        .flatten();
    // A room's check-in, release or refused release comes as the room's state too (no presence
    // changes with a check-in).
    let records = records_state
        .check_ins
        .as_ref()
        .map(|check_ins| check_ins.subscribe_records());
    let room_records = futures_util::stream::iter(records)
        .flat_map(BroadcastStream::new)
        .filter_map(|item| async move { item.ok() })
        .then(move |room| {
            let state = records_state.clone();
            async move {
                rooms::room_event(&state, &room).await.map(|body| {
                    Ok::<_, Infallible>(Event::default().event("room").data(body.to_string()))
                })
            }
        })
        .filter_map(|event| async move { event });
    let changes = futures_util::stream::select(changes, room_records);
    Sse::new(changes)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize)]
struct ValidationQuery {
    #[serde(rename = "validationToken")]
    validation_token: Option<String>,
}

/// Graph's validation handshake: echo the token as text/plain within 10 s.
async fn graph_validation(Query(query): Query<ValidationQuery>) -> Response {
    match query.validation_token {
        Some(token) => validation_echo(token),
        None => api_error(
            StatusCode::BAD_REQUEST,
            "expected a validationToken query parameter",
        ),
    }
}

/// The validation token echoed as plain text, as Graph asks. The text comes from whoever
/// calls, so browsers are told not to sniff it into HTML.
fn validation_echo(token: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        token,
    )
        .into_response()
}

async fn graph_notification(
    State(state): State<Arc<ApiState>>,
    Path(source): Path<String>,
    Query(query): Query<ValidationQuery>,
    _headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(token) = query.validation_token {
        return validation_echo(token);
    }
    let Some(sync) = state.syncs.get(&SourceId(source.clone())) else {
        return api_error(StatusCode::NOT_FOUND, format!("no Graph source `{source}`"));
    };
    let for_others = match sync.accept_notifications(&body) {
        Ok(for_others) => for_others,
        Err(error) => return api_error(StatusCode::BAD_REQUEST, error),
    };
    // Several instances: what this one does not follow goes to the owner, durably, before
    // Graph hears 202; if that fails Graph is asked to send again.
    if let (Some(queue), false) = (&state.handed_work, for_others.is_empty()) {
        let source = SourceId(source);
        for (subscription, wanted) in for_others {
            let handed = match state
                .store
                .person_with_subscription(&source, &subscription)
                .await
            {
                Ok(Some(person)) => queue.hand_over(&person, wanted, state.clock.now()).await,
                Ok(None) => {
                    tracing::debug!(subscription = %subscription, "notification for an unknown subscription");
                    Ok(())
                }
                Err(error) => Err(error),
            };
            if let Err(error) = handed {
                tracing::warn!(subscription = %subscription, "cannot hand a notification to its owner: {error}");
                return api_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the notification cannot be handed to the instance that follows this person; send it again",
                );
            }
        }
    }
    StatusCode::ACCEPTED.into_response()
}
