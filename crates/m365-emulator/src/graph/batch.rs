//! `POST /v1.0/$batch`: up to 20 sub-requests, each run through the normal handlers (so each
//! is authenticated and throttled on its own, and may answer 429 inside a 200 batch).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::GraphError;
use crate::state::AppState;

const MAX_REQUESTS: usize = 20;
/// Graph runs at most four sub-requests against one mailbox at a time within a batch.
const PER_MAILBOX_PARALLELISM: usize = 4;

struct SubRequest {
    id: String,
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    depends_on: Vec<String>,
}

fn invalid_batch(message: impl Into<String>) -> GraphError {
    GraphError::bad_request("BadRequest", message)
}

fn parse_requests(body: &[u8]) -> Result<Vec<SubRequest>, GraphError> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|_| invalid_batch("Invalid batch payload format."))?;
    let requests = payload
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid_batch("Invalid batch payload format: 'requests' is missing."))?;
    if requests.is_empty() {
        return Err(invalid_batch(
            "The batch request must contain at least one request.",
        ));
    }
    if requests.len() > MAX_REQUESTS {
        return Err(invalid_batch(format!(
            "The batch request contains {} requests; the maximum is {MAX_REQUESTS}.",
            requests.len()
        )));
    }
    let mut parsed = Vec::new();
    let mut seen = HashSet::new();
    for request in requests {
        let id = match request.get("id") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Number(number)) => number.to_string(),
            _ => return Err(invalid_batch("Every batch request needs an 'id'.")),
        };
        if !seen.insert(id.clone()) {
            return Err(invalid_batch(format!(
                "Batch request id '{id}' is used more than once."
            )));
        }
        let method = request
            .get("method")
            .and_then(Value::as_str)
            .and_then(|text| Method::from_bytes(text.to_ascii_uppercase().as_bytes()).ok())
            .ok_or_else(|| {
                invalid_batch(format!("Batch request '{id}' needs a valid 'method'."))
            })?;
        let url = request
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid_batch(format!("Batch request '{id}' needs a 'url'.")))?
            .to_string();
        let headers = request
            .get("headers")
            .and_then(Value::as_object)
            .map(|object| {
                object
                    .iter()
                    .filter_map(|(name, value)| {
                        value.as_str().map(|text| (name.clone(), text.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let depends_on = request
            .get("dependsOn")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| {
                        item.as_str()
                            .map(str::to_string)
                            .or_else(|| item.as_i64().map(|n| n.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        parsed.push(SubRequest {
            id,
            method,
            url,
            headers,
            body: request.get("body").cloned(),
            depends_on,
        });
    }
    for request in &parsed {
        for dependency in &request.depends_on {
            if !seen.contains(dependency) {
                return Err(invalid_batch(format!(
                    "Batch request '{}' depends on unknown request '{dependency}'.",
                    request.id
                )));
            }
        }
    }
    Ok(parsed)
}

/// The sub-request's path below `/v1.0`. Graph reads a sub-request's `url` relative to the
/// version's root (`/users`, not `https://graph.microsoft.com/v1.0/users` nor `/v1.0/users`), so
/// an absolute URL or one that repeats the version fails on its first segment, as Graph's does
/// ("Resource not found for the segment 'v1.0'"); msgraph-sdk for Python sends absolute URLs
/// from `BatchRequestItem(request_information=…)`, which Graph refuses as well.
fn relative_path(url: &str) -> Result<String, GraphError> {
    let path = url.trim().trim_start_matches('/');
    let first_segment = path.split(['/', '?']).next().unwrap_or_default();
    let absolute = path.contains("://");
    let versioned = ["v1.0", "beta"]
        .iter()
        .any(|version| version.eq_ignore_ascii_case(first_segment));
    if absolute || versioned {
        return Err(GraphError::bad_request(
            "BadRequest",
            format!("Resource not found for the segment '{first_segment}'."),
        ));
    }
    Ok(format!("/v1.0/{path}"))
}

/// Which mailbox a sub-request touches, for the per-mailbox parallelism limit.
fn mailbox_key(path: &str) -> String {
    let parts: Vec<&str> = path
        .trim_start_matches("/v1.0/")
        .split(['/', '?'])
        .collect();
    match parts.as_slice() {
        [users, key, ..] if users.eq_ignore_ascii_case("users") => key.to_ascii_lowercase(),
        _ => String::new(),
    }
}

pub async fn batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.counters.count("batch");
    let requests = match parse_requests(&body) {
        Ok(requests) => requests,
        Err(error) => return error.into_response(),
    };
    let Some(router) = state.router.get().cloned() else {
        return GraphError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The emulator is starting.",
        )
        .into_response();
    };
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    let mut semaphores: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut results: HashMap<String, Value> = HashMap::new();
    let mut pending: Vec<SubRequest> = requests;
    let order: Vec<String> = pending.iter().map(|request| request.id.clone()).collect();
    while !pending.is_empty() {
        let (ready, waiting): (Vec<SubRequest>, Vec<SubRequest>) =
            pending.into_iter().partition(|request| {
                request
                    .depends_on
                    .iter()
                    .all(|dependency| results.contains_key(dependency))
            });
        if ready.is_empty() {
            for request in &waiting {
                results.insert(request.id.clone(), failed_dependency(&request.id));
            }
            break;
        }
        pending = waiting;
        let mut tasks = tokio::task::JoinSet::new();
        for request in ready {
            let failed = request.depends_on.iter().any(|dependency| {
                results
                    .get(dependency)
                    .and_then(|result| result["status"].as_u64())
                    .is_some_and(|status| status >= 400)
            });
            if failed {
                results.insert(request.id.clone(), failed_dependency(&request.id));
                continue;
            }
            let path = match relative_path(&request.url) {
                Ok(path) => path,
                Err(error) => {
                    results.insert(request.id.clone(), sub_error(&request.id, error));
                    continue;
                }
            };
            let semaphore = Arc::clone(
                semaphores
                    .entry(mailbox_key(&path))
                    .or_insert_with(|| Arc::new(Semaphore::new(PER_MAILBOX_PARALLELISM))),
            );
            let router = router.clone();
            let authorization = authorization.clone();
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                let id = request.id.clone();
                (id, run_one(router, request, path, authorization).await)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((id, result)) = joined {
                results.insert(id, result);
            }
        }
    }
    let responses: Vec<Value> = order.iter().filter_map(|id| results.remove(id)).collect();
    Json(json!({"responses": responses})).into_response()
}

fn failed_dependency(id: &str) -> Value {
    json!({
        "id": id,
        "status": 424,
        "headers": {"Content-Type": "application/json"},
        "body": GraphError::new(StatusCode::FAILED_DEPENDENCY, "FailedDependency", "A request this request depends on failed.").body(&crate::ids::RandomIds::default().guid()),
    })
}

async fn run_one(
    router: axum::Router,
    request: SubRequest,
    path: String,
    authorization: Option<HeaderValue>,
) -> Value {
    if path.to_ascii_lowercase().starts_with("/v1.0/$batch") {
        return sub_error(
            &request.id,
            GraphError::bad_request(
                "BadRequest",
                "A batch request cannot contain another batch request.",
            ),
        );
    }
    let uri = crate::server::normalize_path(&path);
    let mut builder = Request::builder().method(request.method.clone()).uri(uri);
    if let Some(value) = authorization {
        builder = builder.header(header::AUTHORIZATION, value);
    }
    let mut has_content_type = false;
    for (name, value) in &request.headers {
        if name.eq_ignore_ascii_case("content-type") {
            has_content_type = true;
        }
        builder = builder.header(name.as_str(), value.as_str());
    }
    let body = match &request.body {
        Some(Value::String(text)) => Body::from(text.clone()),
        Some(value) => Body::from(serde_json::to_vec(value).unwrap_or_default()),
        None => Body::empty(),
    };
    if request.body.is_some() && !has_content_type {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let Ok(http_request) = builder.body(body) else {
        return sub_error(
            &request.id,
            GraphError::bad_request(
                "BadRequest",
                format!(
                    "Batch request '{}' has an invalid url or header.",
                    request.id
                ),
            ),
        );
    };
    let response = match router.oneshot(http_request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let mut header_map = Map::new();
    for name in [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        header::LOCATION,
        header::HeaderName::from_static("preference-applied"),
    ] {
        if let Some(value) = response
            .headers()
            .get(&name)
            .and_then(|value| value.to_str().ok())
        {
            header_map.insert(canonical_header_name(name.as_str()), json!(value));
        }
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("json"));
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let mut result = json!({"id": request.id, "status": status, "headers": header_map});
    if !bytes.is_empty() {
        result["body"] = if is_json {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
        } else {
            json!(String::from_utf8_lossy(&bytes))
        };
    }
    result
}

fn canonical_header_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut characters = part.chars();
            match characters.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + characters.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn sub_error(id: &str, error: GraphError) -> Value {
    json!({"id": id, "status": error.status.as_u16(), "headers": {"Content-Type": "application/json"}, "body": error.body(&crate::ids::RandomIds::default().guid())})
}
