//! JSON batching (`POST /v1.0/$batch`): building the request, reading the answer, and a small
//! engine that keeps several batches in flight and retries sub-requests Graph throttled.
//!
//! Graph throttles each sub-request on its own: a `200` batch answer may hold `429`s with their
//! own `Retry-After`. Those sub-requests are put back and sent again in a later batch once their
//! mailbox may be asked again; the rest of the batch is not held up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::{parse_retry_after, GraphAnswer, GraphError};
use crate::http::{AtomicCounters, GraphHttp, GraphRequest};

/// Graph's limit of sub-requests per batch.
pub const MAX_BATCH_SIZE: usize = 20;

/// One sub-request, its URL relative to the API version (`/users/…/calendarView?…`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchJob {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<serde_json::Value>,
    /// The mailbox the sub-request touches, for parking after a 429.
    pub mailbox: String,
    /// Names the object in errors.
    pub what: String,
}

/// Builds the `$batch` body; sub-request ids are the given numbers.
pub fn batch_request_body<'a>(
    jobs: impl IntoIterator<Item = (usize, &'a BatchJob)>,
) -> serde_json::Value {
    let requests: Vec<serde_json::Value> = jobs
        .into_iter()
        .map(|(id, job)| {
            let mut headers = serde_json::Map::new();
            for (name, value) in &job.headers {
                headers.insert(
                    (*name).to_string(),
                    serde_json::Value::String(value.clone()),
                );
            }
            let mut request = serde_json::json!({
                "id": id.to_string(),
                "method": job.method,
                "url": job.url,
            });
            if let Some(body) = &job.body {
                // Graph requires a Content-Type on every sub-request that has a body.
                headers.insert(
                    "Content-Type".to_string(),
                    serde_json::Value::String("application/json".to_string()),
                );
                request["body"] = body.clone();
            }
            if !headers.is_empty() {
                request["headers"] = serde_json::Value::Object(headers);
            }
            request
        })
        .collect();
    serde_json::json!({ "requests": requests })
}

/// One sub-response of a `$batch` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSubResponse {
    pub id: String,
    pub http_status: u16,
    pub retry_after: Option<Duration>,
    pub body: serde_json::Value,
}

#[derive(Deserialize)]
struct BatchAnswer {
    responses: Vec<RawSubResponse>,
}

#[derive(Deserialize)]
struct RawSubResponse {
    id: String,
    status: u16,
    #[serde(default)]
    headers: HashMap<String, serde_json::Value>,
    #[serde(default)]
    body: serde_json::Value,
}

/// Reads a `$batch` answer. Header names are matched without regard to case, as HTTP does.
pub fn parse_batch_response(body: &[u8]) -> Result<Vec<BatchSubResponse>, String> {
    let answer: BatchAnswer = serde_json::from_slice(body).map_err(|error| {
        format!(
            "not a $batch answer ({error}): {}",
            crate::error::shorten(&String::from_utf8_lossy(body), 200)
        )
    })?;
    Ok(answer
        .responses
        .into_iter()
        .map(|raw| {
            let retry_after = raw
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, value)| match value {
                    serde_json::Value::String(text) => parse_retry_after(text),
                    serde_json::Value::Number(number) => number.as_u64().map(Duration::from_secs),
                    _ => None,
                });
            BatchSubResponse {
                id: raw.id,
                http_status: raw.status,
                retry_after,
                body: raw.body,
            }
        })
        .collect())
}

/// What the caller makes of a successful sub-response.
pub enum SubResult {
    /// The job is complete.
    Done,
    /// Send this follow-up (an `@odata.nextLink`, made relative) for the same job.
    FollowUp(String),
}

struct JobState {
    url: String,
    attempts: u32,
    error: Option<GraphError>,
}

type BatchTaskOutput = Result<Vec<BatchSubResponse>, GraphError>;

/// Runs `jobs` through `$batch` requests, at most `max_in_flight` batches at once.
/// `on_success(job index, status, body)` consumes each 2xx sub-response. Returns, per job, the
/// error that ended it (`None` when it succeeded).
pub(crate) async fn run_batches(
    http: &Arc<GraphHttp>,
    batch_url: &str,
    jobs: &[BatchJob],
    max_in_flight: usize,
    mut on_success: impl FnMut(usize, u16, &serde_json::Value) -> Result<SubResult, GraphError>,
) -> Vec<Option<GraphError>> {
    let mut states: Vec<JobState> = jobs
        .iter()
        .map(|job| JobState {
            url: job.url.clone(),
            attempts: 0,
            error: None,
        })
        .collect();
    let mut ready: VecDeque<usize> = (0..jobs.len()).collect();
    let mut waiting: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut in_flight: JoinSet<BatchTaskOutput> = JoinSet::new();
    let mut chunks_in_flight: HashMap<tokio::task::Id, Vec<usize>> = HashMap::new();
    let max_in_flight = max_in_flight.max(1);

    loop {
        let now = Instant::now();
        while let Some(Reverse((due, _))) = waiting.peek() {
            if *due > now {
                break;
            }
            if let Some(Reverse((_, index))) = waiting.pop() {
                ready.push_back(index);
            }
        }
        while in_flight.len() < max_in_flight && !ready.is_empty() {
            let mut chunk = Vec::with_capacity(MAX_BATCH_SIZE);
            while chunk.len() < MAX_BATCH_SIZE {
                let Some(index) = ready.pop_front() else {
                    break;
                };
                // A mailbox Graph told to wait (here or in a direct request) waits its turn.
                match http.mailbox_parked_until(&jobs[index].mailbox) {
                    Some(until) => waiting.push(Reverse((until, index))),
                    None => chunk.push(index),
                }
            }
            if chunk.is_empty() {
                continue;
            }
            let body = batch_request_body(chunk.iter().map(|&index| (index, &jobs[index])));
            // The follow-up URL (nextLink) replaces the job's first URL.
            let body = replace_urls(body, &chunk, &states);
            let request = GraphRequest::get(
                batch_url.to_string(),
                format!("$batch of {} requests", chunk.len()),
            )
            .json(reqwest::Method::POST, body);
            AtomicCounters::add(&http.counters.batch_sub_requests, chunk.len() as u64);
            let task_http = Arc::clone(http);
            let handle = in_flight.spawn(async move {
                let response = task_http.send(&request, None).await?;
                parse_batch_response(&response.body).map_err(|detail| GraphError::BadAnswer {
                    what: request.what.clone(),
                    detail,
                })
            });
            chunks_in_flight.insert(handle.id(), chunk);
        }
        if in_flight.is_empty() {
            match waiting.peek() {
                Some(Reverse((due, _))) => {
                    tokio::time::sleep_until(*due).await;
                    continue;
                }
                None if ready.is_empty() => break,
                None => continue,
            }
        }
        let next_due = waiting.peek().map(|Reverse((due, _))| *due);
        let joined = tokio::select! {
            joined = in_flight.join_next_with_id() => joined,
            () = sleep_until_option(next_due) => continue,
        };
        let Some(joined) = joined else {
            continue;
        };
        let (task_id, output) = match joined {
            Ok((task_id, output)) => (task_id, output),
            Err(join_error) => (
                join_error.id(),
                Err(GraphError::BadAnswer {
                    what: "$batch".to_string(),
                    detail: format!("the batch task ended abnormally: {join_error}"),
                }),
            ),
        };
        let chunk = chunks_in_flight.remove(&task_id).unwrap_or_default();
        let responses = match output {
            Ok(responses) => responses,
            Err(error) => {
                for &index in &chunk {
                    states[index].error = Some(error.clone());
                }
                continue;
            }
        };
        let mut by_id: HashMap<String, BatchSubResponse> = responses
            .into_iter()
            .map(|response| (response.id.clone(), response))
            .collect();
        for index in chunk {
            let job = &jobs[index];
            let Some(response) = by_id.remove(&index.to_string()) else {
                states[index].error = Some(GraphError::BadAnswer {
                    what: job.what.clone(),
                    detail: format!("the $batch answer has no response with id {index}"),
                });
                continue;
            };
            let state = &mut states[index];
            match response.http_status {
                200..=299 => match on_success(index, response.http_status, &response.body) {
                    Ok(SubResult::Done) => {}
                    Ok(SubResult::FollowUp(url)) => {
                        state.url = url;
                        state.attempts = 0;
                        ready.push_back(index);
                    }
                    Err(error) => state.error = Some(error),
                },
                429 | 502 | 503 | 504 => {
                    state.attempts += 1;
                    let delay = http.delay_for(response.retry_after, state.attempts);
                    if response.http_status == 429 {
                        AtomicCounters::add(&http.counters.throttled_answers, 1);
                        http.park_mailbox(&job.mailbox, delay);
                    }
                    if state.attempts >= http.retry.max_attempts {
                        let mut error = GraphError::from_answer(
                            &job.what,
                            GraphAnswer::from_json(response.http_status, &response.body),
                            response.retry_after,
                        );
                        if let GraphError::Throttled { attempts, .. } = &mut error {
                            *attempts = state.attempts;
                        }
                        state.error = Some(error);
                    } else {
                        AtomicCounters::add(&http.counters.retries, 1);
                        waiting.push(Reverse((Instant::now() + delay, index)));
                    }
                }
                http_status => {
                    state.error = Some(
                        GraphError::from_answer(
                            &job.what,
                            GraphAnswer::from_json(http_status, &response.body),
                            response.retry_after,
                        )
                        .seen_by_account(http.tokens().is_delegated()),
                    );
                }
            }
        }
    }
    states.into_iter().map(|state| state.error).collect()
}

fn replace_urls(
    mut body: serde_json::Value,
    chunk: &[usize],
    states: &[JobState],
) -> serde_json::Value {
    if let Some(requests) = body
        .get_mut("requests")
        .and_then(|requests| requests.as_array_mut())
    {
        for (request, &index) in requests.iter_mut().zip(chunk) {
            request["url"] = serde_json::Value::String(states[index].url.clone());
        }
    }
    body
}

async fn sleep_until_option(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_body_has_ids_urls_headers_and_json_content_type_for_bodies() {
        let get = BatchJob {
            method: "GET",
            url: "/users/ann@contoso.com/calendarView?startDateTime=2026-11-23T00:00:00Z".into(),
            headers: vec![("Prefer", "outlook.timezone=\"UTC\"".into())],
            body: None,
            mailbox: "ann@contoso.com".into(),
            what: "mailbox ann@contoso.com".into(),
        };
        let post = BatchJob {
            method: "POST",
            url: "/subscriptions".into(),
            headers: vec![],
            body: Some(serde_json::json!({"changeType":"created"})),
            mailbox: "bob".into(),
            what: "subscription".into(),
        };
        let body = batch_request_body([(0, &get), (7, &post)]);
        assert_eq!(
            body,
            serde_json::json!({"requests":[
                {"id":"0","method":"GET","url":"/users/ann@contoso.com/calendarView?startDateTime=2026-11-23T00:00:00Z",
                 "headers":{"Prefer":"outlook.timezone=\"UTC\""}},
                {"id":"7","method":"POST","url":"/subscriptions","body":{"changeType":"created"},
                 "headers":{"Content-Type":"application/json"}}
            ]})
        );
    }

    #[test]
    fn batch_answer_with_a_throttled_sub_request_keeps_its_retry_after() {
        // Shape of Microsoft's JSON batching documentation: sub-responses in any order, a 429
        // with its own Retry-After header inside a 200 batch answer.
        let answer = br#"{"responses":[
            {"id":"3","status":429,"headers":{"Retry-After":"5","Content-Type":"application/json"},
             "body":{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}},
            {"id":"1","status":200,"headers":{"Content-Type":"application/json;odata.metadata=minimal"},
             "body":{"@odata.context":"x","value":[]}},
            {"id":"2","status":204,"headers":{"retry-after":7}}
        ]}"#;
        let responses = parse_batch_response(answer).unwrap();
        assert_eq!(responses.len(), 3);
        assert_eq!(responses[0].id, "3");
        assert_eq!(responses[0].http_status, 429);
        assert_eq!(responses[0].retry_after, Some(Duration::from_secs(5)));
        assert_eq!(
            GraphAnswer::from_json(429, &responses[0].body).code,
            "ApplicationThrottled"
        );
        assert_eq!(responses[1].retry_after, None);
        assert_eq!(responses[2].retry_after, Some(Duration::from_secs(7)));
        assert_eq!(responses[2].body, serde_json::Value::Null);
        let error = parse_batch_response(b"<html>").unwrap_err();
        assert!(error.contains("<html>"), "{error}");
    }
}
