//! `calbridge bench --rooms 200`: "a free room for 8 people for the next 30 minutes in
//! building 2" asked of the running service over HTTP, as a receptionist's console would.
//!
//! The emulator (in this process) holds a scenario of `--rooms` rooms in five buildings, each
//! booked around now by people of the organisation; the service follows them all
//! (`[[directory]] rooms = "all"`) on its embedded SQLite store. The answer is first checked
//! against the rooms' calendars as Graph shows them (so the figure is that of a right answer),
//! then `GET /api/v1/rooms?building=…&min_capacity=8&free_for_minutes=30` is timed, one
//! request after the other, beside the whole list and the whole list with today's agendas.
//! Prints the figures; asserts nothing about them (issue 14's target: under 10 ms).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

use super::percentile;
use crate::clock::{Clock, SystemClock};
use crate::commands::{demo_source, graph_token};
use crate::config::{Config, DirectoryConfig};
use crate::service::{self, ServiceOptions};

const BUILDINGS: usize = 5;
const ORGANIZERS: usize = 20;
const SECRET: &str = "calbridge-bench-rooms-secret";
/// Requests timed per query, after as many unmeasured ones to warm up.
const ROUNDS: usize = 300;

/// The organisation: `rooms` rooms in five buildings ("Building 1" …), twenty organizers, and
/// for each room six to eleven meetings between four hours ago and eight hours ahead.
fn scenario(rooms: usize) -> anyhow::Result<m365_emulator::Scenario> {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut below = |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let users: Vec<Value> = (0..ORGANIZERS)
        .map(|n| json!({"upn": format!("person.{n}@contoso.example"), "display_name": format!("Person {n}")}))
        .collect();
    let room_specs: Vec<Value> = (0..rooms)
        .map(|n| {
            json!({
                "upn": format!("room.{n}@contoso.example"),
                "display_name": format!("Room {n}"),
                "office_location": format!("Building {}", 1 + n % BUILDINGS),
            })
        })
        .collect();
    let mut events = Vec::new();
    for room in 0..rooms {
        let mut start = -240 + 15 * below(8) as i64;
        for _ in 0..(6 + below(6)) {
            let minutes = 15 * (2 + below(6)) as i64;
            events.push(json!({
                "mailbox": format!("person.{}@contoso.example", below(ORGANIZERS as u64)),
                "subject": "Meeting",
                "start": if start < 0 { format!("-{}m", -start) } else { format!("+{start}m") },
                "duration": format!("{minutes}m"),
                "attendees": [format!("room.{room}@contoso.example")],
            }));
            start += minutes + 15 * below(6) as i64;
        }
    }
    serde_json::from_value(json!({
        "tenants": [{"name": "contoso", "domains": ["contoso.example"]}],
        "apps": [{
            "name": "calbridge",
            "roles": ["Calendars.Read", "User.Read.All", "Place.Read.All"],
            "secrets": [{"value": SECRET}],
        }],
        "users": users,
        "rooms": room_specs,
        "events": events,
    }))
    .context("the benchmark's scenario")
}

/// Milliseconds of `ROUNDS` sequential `GET path` after as many unmeasured ones, sorted.
async fn time_requests(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut timings = Vec::with_capacity(ROUNDS);
    for round in 0..2 * ROUNDS {
        let started = Instant::now();
        let answer = client.get(url).bearer_auth(token).send().await?;
        let status = answer.status();
        let body = answer.bytes().await?;
        if !status.is_success() {
            bail!("GET {url}: {status} {}", String::from_utf8_lossy(&body));
        }
        if round >= ROUNDS {
            timings.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    timings.sort_by(f64::total_cmp);
    Ok(timings)
}

pub async fn run(rooms: usize) -> anyhow::Result<()> {
    anyhow::ensure!((1..=5000).contains(&rooms), "--rooms takes 1 to 5000 rooms");
    let emulator =
        m365_emulator::Emulator::start(m365_emulator::EmulatorConfig::scenario(scenario(rooms)?))
            .await
            .context("the emulator")?;
    let mut ready = emulator.ready().clone();
    ready.client_secret = Some(SECRET.to_string());
    let data_dir = tempfile::tempdir().context("a temporary folder for the store")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let public_url = format!("http://{}", listener.local_addr()?);
    let mut config = Config::default();
    config.store.path = Some(data_dir.path().join("calbridge.sqlite"));
    config.api.public_url = Some(public_url.clone());
    let source = demo_source(&ready)?;
    config.directory.push(DirectoryConfig {
        rooms: Some("all".to_string()),
        ..DirectoryConfig::new(source.id.clone())
    });
    config.sources.push(source);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let started = Instant::now();
    let running = service::start(
        config,
        ServiceOptions {
            clock: clock.clone(),
            listener: Some(listener),
        },
    )
    .await?;
    running.first_sync_done().await;
    let patience = Instant::now();
    while running.hub.n_people() < rooms {
        if patience.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {rooms} rooms have a state after two minutes",
                running.hub.n_people()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_sync = started.elapsed().as_secs_f64();

    // The question, from a whole second now.
    let from = Timestamp::from_second(clock.now().as_second()).unwrap_or(clock.now());
    let to = from + SignedDuration::from_mins(30);
    let search = format!(
        "{public_url}/api/v1/rooms?building=Building%202&min_capacity=8&free_for_minutes=30&from={from}"
    );
    let client = calbridge_net::build_http_client(None)?;
    let token = running.api_token.expose().to_string();
    let answer: Value = client
        .get(&search)
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let found: BTreeSet<String> = answer["rooms"]
        .as_array()
        .context("a rooms array")?
        .iter()
        .filter_map(|room| room["address"].as_str().map(str::to_string))
        .collect();

    // The same answer from the rooms' details and their calendars at Graph.
    let graph = calbridge_net::build_http_client(Some(&ready.ca_cert))?;
    let graph_token = graph_token(&graph, &ready).await?;
    let mut expected = BTreeSet::new();
    for (key, room) in running
        .store
        .list_rooms()
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?
    {
        if room.building.as_deref() != Some("Building 2") || room.capacity.unwrap_or(0) < 8 {
            continue;
        }
        let view: Value = graph
            .get(format!(
                "{}/users/{}/calendarView?startDateTime={}&endDateTime={}&$top=100",
                ready.graph_url,
                key.address.as_str(),
                super::format_graph(from),
                super::format_graph(to)
            ))
            .bearer_auth(&graph_token)
            .header("Prefer", "outlook.timezone=\"UTC\"")
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let held = view["value"].as_array().is_some_and(|events| {
            events.iter().any(|event| {
                event["isCancelled"] != true && event["showAs"].as_str() != Some("free")
            })
        });
        if !held {
            expected.insert(key.address.as_str().to_string());
        }
    }
    if found != expected {
        bail!("the service answered {found:?}, the calendars at Graph say {expected:?}");
    }

    println!(
        "calbridge bench --rooms {rooms}: the service on SQLite follows {rooms} rooms in {BUILDINGS} buildings ({first_sync:.1} s to the first state of every room); {ROUNDS} sequential requests per row over loopback HTTP after {ROUNDS} unmeasured"
    );
    println!(
        "\"a free room for 8 people for the next 30 minutes in building 2\": {} rooms, the same as the calendars at Graph say",
        found.len()
    );
    println!(
        "{:<58} {:>8} {:>8} {:>8} {:>8}",
        "request", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for (label, url) in [
        ("free for 30 min, >= 8 seats, building 2", search.clone()),
        (
            "every room with its state",
            format!("{public_url}/api/v1/rooms"),
        ),
        (
            "every room with its state and today's agenda",
            format!("{public_url}/api/v1/rooms?agenda=today"),
        ),
    ] {
        match time_requests(&client, &url, &token).await {
            Ok(timings) => println!(
                "{label:<58} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                percentile(&timings, 0.50),
                percentile(&timings, 0.95),
                percentile(&timings, 0.99),
                timings.last().copied().unwrap_or_default()
            ),
            Err(error) => println!("{label:<58} failed: {error}"),
        }
    }
    running.shutdown().await;
    emulator.shutdown().await;
    Ok(())
}
