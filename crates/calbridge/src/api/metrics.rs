//! `/metrics` in the Prometheus text exposition format, written by hand: a dozen gauges and
//! counters do not justify a metrics framework.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use calbridge_sources_graph::TokenStatus;

use super::ApiState;

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// `{name="value"}`, the value escaped as the exposition format wants.
fn label(name: &str, value: &str) -> String {
    let value = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{{{name}=\"{value}\"}}")
}

pub async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    let mut out = String::with_capacity(4096);
    let counters = state.hub.counters();
    let none = String::new();
    metric(
        &mut out,
        "calbridge_people",
        "gauge",
        "People whose presence is kept.",
        &[(none.clone(), state.hub.n_people() as f64)],
    );
    metric(
        &mut out,
        "calbridge_http_connections",
        "gauge",
        "HTTP connections open now.",
        &[(
            none.clone(),
            state
                .connections
                .open
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        )],
    );
    if let Some(check_ins) = &state.check_ins {
        let counters = &check_ins.counters;
        metric(
            &mut out,
            "calbridge_room_check_ins_total",
            "counter",
            "Room meetings checked in (panel or API).",
            &[(none.clone(), counters.check_ins.load(Relaxed) as f64)],
        );
        metric(
            &mut out,
            "calbridge_room_releases_total",
            "counter",
            "Room meetings nobody checked in: released (declined in the room's calendar) or refused by the source.",
            &[
                (label("result", "released"), counters.released.load(Relaxed) as f64),
                (
                    label("result", "refused"),
                    counters.release_failures.load(Relaxed) as f64,
                ),
            ],
        );
        metric(
            &mut out,
            "calbridge_room_check_in_deadlines",
            "gauge",
            "Room meetings waiting for their check-in deadline on this instance.",
            &[(none.clone(), check_ins.n_waiting() as f64)],
        );
    }
    metric(
        &mut out,
        "calbridge_presence_timers",
        "gauge",
        "Pending presence timers (one per person with a coming change).",
        &[(none.clone(), state.hub.n_timers() as f64)],
    );
    metric(
        &mut out,
        "calbridge_presence_decisions_total",
        "counter",
        "Presence decisions computed.",
        &[(none.clone(), counters.decisions.load(Relaxed) as f64)],
    );
    metric(
        &mut out,
        "calbridge_presence_changes_total",
        "counter",
        "Presence changes published.",
        &[(none.clone(), counters.changes.load(Relaxed) as f64)],
    );
    metric(
        &mut out,
        "calbridge_presence_timer_fires_total",
        "counter",
        "Timers that fired at a boundary.",
        &[(none.clone(), counters.timer_fires.load(Relaxed) as f64)],
    );
    metric(
        &mut out,
        "calbridge_presence_relayed_total",
        "counter",
        "Presence changes other instances decided, put on this instance's SSE stream.",
        &[(none, counters.relayed.load(Relaxed) as f64)],
    );
    if let Some(view) = &state.cluster {
        let now = state.clock.now();
        let (held, alive, shards, heartbeat_ages) = {
            let view = view.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let by_instance = |value: &dyn Fn(&calbridge_store::cluster::InstanceInfo) -> f64| {
                view.instances
                    .iter()
                    .map(|instance| (label("instance", &instance.name), value(instance)))
                    .collect::<Vec<(String, f64)>>()
            };
            (
                view.shards_held,
                view.instances
                    .iter()
                    .filter(|instance| instance.alive)
                    .count(),
                by_instance(&|instance| f64::from(instance.shards)),
                by_instance(&|instance| {
                    now.duration_since(instance.heartbeat_at)
                        .as_secs_f64()
                        .max(0.0)
                }),
            )
        };
        metric(
            &mut out,
            "calbridge_cluster_shards_held",
            "gauge",
            "Shards whose lease this instance holds (of 256).",
            &[(String::new(), held as f64)],
        );
        metric(
            &mut out,
            "calbridge_cluster_instances_alive",
            "gauge",
            "Instances sharing the PostgreSQL store whose heartbeat is younger than a lease.",
            &[(String::new(), alive as f64)],
        );
        metric(
            &mut out,
            "calbridge_cluster_instance_shards",
            "gauge",
            "Shards each instance holds, as of this instance's last lease round.",
            &shards,
        );
        metric(
            &mut out,
            "calbridge_cluster_instance_heartbeat_age_seconds",
            "gauge",
            "Seconds since each instance's last heartbeat, as of this instance's last lease round.",
            &heartbeat_ages,
        );
    }
    let mut requests = Vec::new();
    let mut throttled = Vec::new();
    let mut retries = Vec::new();
    let mut notifications = Vec::new();
    let mut token_ok = Vec::new();
    let mut rejected = Vec::new();
    let mut subscriptions = Vec::new();
    let mut first_sync = Vec::new();
    for (id, sync) in &state.syncs {
        let label = format!(
            "{{source=\"{}\"}}",
            id.0.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let graph = sync.source.graph.counters();
        requests.push((label.clone(), graph.requests_sent as f64));
        throttled.push((label.clone(), graph.throttled_answers as f64));
        retries.push((label.clone(), graph.retries as f64));
        notifications.push((
            label.clone(),
            sync.source.notifications_received.load(Relaxed) as f64,
        ));
        rejected.push((
            label.clone(),
            sync.source.notifications_rejected.load(Relaxed) as f64,
        ));
        token_ok.push((
            label.clone(),
            f64::from(u8::from(matches!(
                sync.token_status(),
                TokenStatus::Valid { .. }
            ))),
        ));
        subscriptions.push((label.clone(), sync.n_subscriptions() as f64));
        first_sync.push((
            label,
            f64::from(u8::from(sync.progress.finished.load(Relaxed))),
        ));
    }
    metric(
        &mut out,
        "calbridge_graph_requests_total",
        "counter",
        "HTTP requests sent to Microsoft Graph ($batch counts once).",
        &requests,
    );
    metric(
        &mut out,
        "calbridge_graph_throttled_total",
        "counter",
        "429 answers from Graph, including inside $batch.",
        &throttled,
    );
    metric(
        &mut out,
        "calbridge_graph_retries_total",
        "counter",
        "Graph requests sent again after 429, 5xx or network errors.",
        &retries,
    );
    metric(
        &mut out,
        "calbridge_notifications_received_total",
        "counter",
        "Change notifications accepted from Graph.",
        &notifications,
    );
    metric(
        &mut out,
        "calbridge_notifications_rejected_total",
        "counter",
        "Notifications dropped for a wrong clientState (forged, or meant for another installation).",
        &rejected,
    );
    metric(
        &mut out,
        "calbridge_token_valid",
        "gauge",
        "1 when the source holds a valid access token.",
        &token_ok,
    );
    metric(
        &mut out,
        "calbridge_subscriptions",
        "gauge",
        "Active change-notification subscriptions.",
        &subscriptions,
    );
    metric(
        &mut out,
        "calbridge_first_sync_finished",
        "gauge",
        "1 once the first sync of the source is done.",
        &first_sync,
    );
    if let Some((publisher, _)) = &state.sip {
        let sip = publisher.counters();
        metric(
            &mut out,
            "calbridge_sip_publish_requests_total",
            "counter",
            "SIP PUBLISH transactions started.",
            &[(String::new(), sip.requests_sent as f64)],
        );
        metric(
            &mut out,
            "calbridge_sip_publish_failures_total",
            "counter",
            "SIP PUBLISH transactions that failed.",
            &[(String::new(), sip.failures as f64)],
        );
        metric(
            &mut out,
            "calbridge_sip_publish_queued",
            "gauge",
            "SIP URIs waiting to be published.",
            &[(String::new(), sip.queued as f64)],
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
