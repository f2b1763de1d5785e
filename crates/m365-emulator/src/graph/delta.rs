//! `GET /v1.0/users/{id}/calendarView/delta`: initial sync, pages, delta links, removals and
//! expiry of old sync state.
//!
//! Sync state lives on the server: a token names a snapshot of what the client has seen
//! (instance id → change key), so the next round reports exactly what changed since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use super::calendar_view::{time_window, DEFAULT_EVENT_PAGE_SIZE};
use super::{
    authenticate, enter_mailbox, parse_prefer, preference_applied, resolve_mailbox, GraphError,
    Need, QueryParameters,
};
use crate::calendar::event_json;
use crate::faults::lock;
use crate::state::AppState;
use crate::timefmt::NamedZone;

type Baseline = HashMap<String, String>;

enum Entry {
    /// A finished round: the client holds `baseline`.
    Delta { baseline: Baseline },
    /// A round in progress: items still to hand out, then `baseline` becomes the delta state.
    Pages {
        remaining: Vec<Value>,
        baseline: Baseline,
        page_size: usize,
    },
}

struct Session {
    entry: Entry,
    app_index: usize,
    user_index: usize,
    window: (Timestamp, Timestamp),
    issued: Timestamp,
    generation: u64,
}

#[derive(Default)]
pub struct DeltaStore {
    inner: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    sessions: HashMap<String, Session>,
    /// Bumped to expire every token issued so far (the forced-expiry fault).
    generation: u64,
    inserts: u64,
}

impl DeltaStore {
    /// Makes every existing delta and skip token answer 410 from now on.
    pub fn expire_all(&self) {
        let mut tables = lock(&self.inner);
        tables.generation += 1;
        tables.sessions.clear();
    }
}

fn sync_state_not_found() -> GraphError {
    GraphError::new(
        StatusCode::GONE,
        "syncStateNotFound",
        "The sync state generation is not found or has expired. Restart the synchronization without a delta token.",
    )
}

pub async fn calendar_view_delta(
    State(state): State<Arc<AppState>>,
    Path(user_key): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "calendar.delta", Need::CalendarRead).await?;
        let user_index = resolve_mailbox(&state, &caller, &user_key)?;
        let _slot = enter_mailbox(&state, &caller, user_index).await?;
        let query = QueryParameters(query);
        let prefer = parse_prefer(&headers);
        let zone = prefer.time_zone.clone().unwrap_or_else(NamedZone::utc);
        let now = state.clock.now();
        let max_age = SignedDuration::from_secs(
            i64::try_from(state.faults().delta_token_max_age_seconds).unwrap_or(i64::MAX),
        );
        let requested_page_size = prefer.max_page_size.unwrap_or(DEFAULT_EVENT_PAGE_SIZE);
        let address = state.directory.users[user_index].mail.clone();

        let continuation = query.get("$skiptoken").or_else(|| query.get("$deltatoken"));
        let (items, baseline, window, page_size) = match continuation {
            Some(token) => {
                let mut tables = lock(&state.delta.inner);
                let generation = tables.generation;
                let session = tables
                    .sessions
                    .remove(token)
                    .ok_or_else(sync_state_not_found)?;
                if session.user_index != user_index || session.app_index != caller.app_index {
                    return Err(sync_state_not_found());
                }
                if session.generation < generation || now.duration_since(session.issued) >= max_age
                {
                    return Err(sync_state_not_found());
                }
                match session.entry {
                    Entry::Pages {
                        remaining,
                        baseline,
                        page_size,
                    } => (remaining, baseline, session.window, page_size),
                    Entry::Delta { baseline } => {
                        // Delta links stay usable until they expire, like Graph's: keep it.
                        let previous = baseline.clone();
                        tables.sessions.insert(
                            token.to_string(),
                            Session {
                                entry: Entry::Delta { baseline },
                                ..session
                            },
                        );
                        drop(tables);
                        let (items, current) = diff(
                            &state,
                            user_index,
                            session.window,
                            &previous,
                            &address,
                            &zone,
                        );
                        (items, current, session.window, requested_page_size)
                    }
                }
            }
            None => {
                let window = time_window(&query)?;
                let (items, current) = diff(
                    &state,
                    user_index,
                    window,
                    &Baseline::new(),
                    &address,
                    &zone,
                );
                (items, current, window, requested_page_size)
            }
        };
        let page_size = page_size.max(1);
        let mut items = items;
        let rest = if items.len() > page_size {
            items.split_off(page_size)
        } else {
            Vec::new()
        };
        let token = state.ids.token(48);
        let path = format!(
            "{}/users/{}/calendarView/delta",
            state.graph_url,
            crate::notify::percent_encode(&user_key)
        );
        let mut body = json!({"@odata.context": format!("{}/$metadata#Collection(event)", state.graph_url), "value": items});
        let entry = if rest.is_empty() {
            body["@odata.deltaLink"] = json!(format!("{path}?$deltatoken={token}"));
            Entry::Delta { baseline }
        } else {
            body["@odata.nextLink"] = json!(format!("{path}?$skiptoken={token}"));
            Entry::Pages {
                remaining: rest,
                baseline,
                page_size,
            }
        };
        {
            let mut tables = lock(&state.delta.inner);
            let generation = tables.generation;
            tables.sessions.insert(
                token,
                Session {
                    entry,
                    app_index: caller.app_index,
                    user_index,
                    window,
                    issued: now,
                    generation,
                },
            );
            tables.inserts += 1;
            if tables.inserts % 1000 == 0 {
                tables.sessions.retain(|_, session| {
                    now.duration_since(session.issued) < max_age && session.generation == generation
                });
            }
        }
        let mut response = Json(body).into_response();
        preference_applied(
            &mut response,
            prefer.time_zone.as_ref(),
            prefer.max_page_size,
        );
        Ok::<_, GraphError>(response)
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Items the client lacks compared with `previous`, and the new baseline.
fn diff(
    state: &AppState,
    user_index: usize,
    window: (Timestamp, Timestamp),
    previous: &Baseline,
    address: &str,
    zone: &NamedZone,
) -> (Vec<Value>, Baseline) {
    let instances = lock(&state.mailboxes[user_index]).view(window.0, window.1);
    let mut items = Vec::new();
    let mut current = Baseline::with_capacity(instances.len());
    for instance in &instances {
        // What a client sees of the instance, not the master's change key: deleting one
        // occurrence bumps the master but leaves the other occurrences as they were.
        let data = &instance.data;
        let fingerprint = format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            instance.start.timestamp(),
            instance.end.timestamp(),
            data.subject,
            data.show_as.name(),
            data.sensitivity.name(),
            data.is_cancelled,
            data.location,
            data.is_all_day
        );
        if previous.get(&instance.id) != Some(&fingerprint) {
            items.push(event_json(instance, address, zone, None));
        }
        current.insert(instance.id.clone(), fingerprint);
    }
    let mut removed: Vec<&String> = previous
        .keys()
        .filter(|id| !current.contains_key(*id))
        .collect();
    removed.sort();
    for id in removed {
        items.push(json!({"@odata.type": "#microsoft.graph.event", "id": id, "@removed": {"reason": "deleted"}}));
    }
    (items, current)
}
