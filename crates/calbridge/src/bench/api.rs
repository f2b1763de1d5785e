//! `calbridge bench --api`: how many requests a second the service answers for what phones
//! and consoles poll, `GET /api/v1/users` (everyone) and `GET /api/v1/users/{address}/presence`
//! (one person), with `--users` people (200 by default here) on its embedded SQLite store.
//!
//! The emulator runs in this process (it is idle once the first sync is done); the clients
//! run in this process too, `CLIENTS` connections asking one request after the other for
//! `SECONDS` each, over loopback HTTP, so the figure is what the machine gives to the service
//! and its clients together. Prints the figures; asserts nothing about them (issue 15's
//! targets: 5,000/s for the list of 200, 20,000/s for one person's presence).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{cpu_seconds, percentile};
use crate::clock::{Clock, SystemClock};
use crate::commands::demo_config;
use crate::service::{self, ServiceOptions};

/// Concurrent client connections.
const CLIENTS: usize = 16;
/// How long each request kind is measured, after one second unmeasured.
const SECONDS: u64 = 5;

struct Measured {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The process's CPU time (service and clients) per request.
    cpu_ms_per_request: f64,
}

/// `CLIENTS` connections asking `url` one request after the other: one second to warm up,
/// then `SECONDS` measured.
async fn hammer(url: &str, token: &str) -> anyhow::Result<Measured> {
    let client = calbridge_net::build_http_client(None)?;
    let failures = Arc::new(AtomicU64::new(0));
    let run = |seconds: u64, record: bool| {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let client = client.clone();
                let url = url.to_string();
                let token = token.to_string();
                let failures = failures.clone();
                tokio::spawn(async move {
                    let mut timings = Vec::new();
                    let until = Instant::now() + Duration::from_secs(seconds);
                    while Instant::now() < until {
                        let started = Instant::now();
                        let ok = match client.get(&url).bearer_auth(&token).send().await {
                            Ok(answer) => {
                                answer.status().is_success() && answer.bytes().await.is_ok()
                            }
                            Err(_) => false,
                        };
                        if !ok {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        if record {
                            timings.push(started.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    timings
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap_or_default());
            }
            all
        }
    };
    run(1, false).await;
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut timings = run(SECONDS, true).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        anyhow::bail!("{failed} requests to {url} failed");
    }
    timings.sort_by(f64::total_cmp);
    Ok(Measured {
        per_second: timings.len() as f64 / elapsed,
        p50_ms: percentile(&timings, 0.50),
        p99_ms: percentile(&timings, 0.99),
        cpu_ms_per_request: cpu * 1000.0 / timings.len().max(1) as f64,
    })
}

pub async fn run(users: usize, seed: u64) -> anyhow::Result<()> {
    let emulator =
        m365_emulator::Emulator::start(m365_emulator::EmulatorConfig::generated(users, seed))
            .await
            .context("the emulator")?;
    let ready = emulator.ready().clone();
    let data_dir = tempfile::tempdir().context("a temporary folder for the store")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let public_url = format!("http://{}", listener.local_addr()?);
    let config = demo_config(&ready, data_dir.path(), &public_url)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let running = service::start(
        config,
        ServiceOptions {
            clock,
            listener: Some(listener),
        },
    )
    .await?;
    running.first_sync_done().await;
    let people = running.hub.people();
    let person = people.first().context("nobody is followed")?;
    let token = running.api_token.expose().to_string();
    println!(
        "calbridge bench --api: the service on SQLite with {} people; {CLIENTS} client connections in the same process, one request after the other, {SECONDS} s per row after 1 s unmeasured, loopback HTTP",
        people.len()
    );
    println!(
        "{:<40} {:>12} {:>8} {:>8} {:>16}",
        "request", "requests/s", "p50 ms", "p99 ms", "CPU ms/request"
    );
    for (label, url) in [
        (
            format!("GET /api/v1/users ({} people)", people.len()),
            format!("{public_url}/api/v1/users"),
        ),
        (
            "GET /api/v1/users/{address}/presence".to_string(),
            format!("{public_url}/api/v1/users/{}/presence", person.address),
        ),
    ] {
        let measured = hammer(&url, &token).await?;
        println!(
            "{label:<40} {:>12.0} {:>8.2} {:>8.2} {:>16.3}",
            measured.per_second, measured.p50_ms, measured.p99_ms, measured.cpu_ms_per_request
        );
    }
    running.shutdown().await;
    emulator.shutdown().await;
    Ok(())
}
