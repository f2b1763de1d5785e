//! `calbridge bench`: the service's figures against the emulator with Graph's throttling on and
//! added latency: first-sync wall time and HTTP requests per user, notification-to-presence
//! latency, and resident memory per 1,000 users.
//!
//! The emulator runs in a child process (this same binary, hidden subcommand
//! `bench-emulator`) so that the memory measured is the service's alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use calbridge_presence::Activity;
use calbridge_store::PersonKey;
use jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::clock::{Clock, SystemClock};
use crate::commands::demo_config;
use crate::service::{self, ServiceOptions};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Organisation sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub users: Vec<usize>,
    /// Latency the emulator adds to every Graph and token request.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Calendar changes made to measure notification-to-presence latency.
    #[arg(long, default_value_t = 200)]
    pub notifications: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Debug, clap::Args)]
pub struct BenchEmulatorArgs {
    #[arg(long)]
    pub users: usize,
    #[arg(long)]
    pub seed: u64,
    #[arg(long)]
    pub latency_ms: u64,
}

/// The child: an emulator with Graph's throttling (its defaults) and the added latency; runs
/// until its standard input closes, which happens when the parent ends for any reason.
pub async fn run_emulator(args: BenchEmulatorArgs) -> anyhow::Result<()> {
    let mut config = m365_emulator::EmulatorConfig::generated(args.users, args.seed);
    let faults = m365_emulator::FaultSettings {
        latency_ms: args.latency_ms,
        ..m365_emulator::FaultSettings::default()
    };
    config.faults = Some(faults);
    let emulator = m365_emulator::Emulator::start(config).await?;
    println!("{}", emulator.ready_line());
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let _ = stdin.read_to_end(&mut sink).await;
    emulator.shutdown().await;
    Ok(())
}

fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    println!(
        "calbridge bench: emulator with Graph throttling (4 concurrent per mailbox, 10,000 per 10 min) and {} ms latency per request",
        args.latency_ms
    );
    println!(
        "{:>7} {:>14} {:>12} {:>12} {:>13} {:>13} {:>14} {:>12}",
        "users",
        "first sync s",
        "requests",
        "req/user",
        "notify p50 ms",
        "notify p99 ms",
        "RSS MB/1000",
        "throttled"
    );
    for &users in &args.users {
        let row = bench_one(users, &args)
            .await
            .with_context(|| format!("benchmark with {users} users"))?;
        println!(
            "{:>7} {:>14.2} {:>12} {:>12.3} {:>13.1} {:>13.1} {:>14.2} {:>12}",
            users,
            row.first_sync_seconds,
            row.requests,
            row.requests as f64 / users as f64,
            row.notify_p50_ms,
            row.notify_p99_ms,
            row.rss_mb_per_1000,
            row.throttled
        );
    }
    Ok(())
}

struct Row {
    first_sync_seconds: f64,
    requests: u64,
    notify_p50_ms: f64,
    notify_p99_ms: f64,
    rss_mb_per_1000: f64,
    throttled: u64,
}

async fn bench_one(users: usize, args: &BenchArgs) -> anyhow::Result<Row> {
    let exe = std::env::current_exe().context("cannot find the calbridge binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "bench-emulator",
            "--users",
            &users.to_string(),
            "--seed",
            &args.seed.to_string(),
            "--latency-ms",
            &args.latency_ms.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the emulator child process")?;
    let stdout = child.stdout.take().context("no stdout from the emulator")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready_line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .context("the emulator did not become ready within 120 s")??
        .context("the emulator ended before it was ready")?;
    let ready: m365_emulator::ReadyInfo =
        serde_json::from_str(&ready_line).context("the emulator's ready line is not JSON")?;

    let data_dir =
        std::env::temp_dir().join(format!("calbridge-bench-{}-{users}", std::process::id()));
    std::fs::create_dir_all(&data_dir)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let public_url = format!("http://{}", listener.local_addr()?);
    let config = demo_config(&ready, &data_dir, &public_url)?;
    let rss_before = resident_memory_bytes().unwrap_or(0);
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
    let first_sync_seconds = started.elapsed().as_secs_f64();
    let sync = running
        .syncs
        .values()
        .next()
        .context("the benchmark configuration has no source")?
        .clone();
    let counters = sync.graph.counters();
    let requests = counters.requests_sent + counters.token_requests;
    let rss_after = resident_memory_bytes().unwrap_or(0);
    let people = running.hub.n_people();
    if people < users {
        bail!("only {people} of {users} people have presence after the first sync");
    }

    // Notification latency: make free people busy through Graph and time until the hub
    // publishes it.
    let client = calbridge_sources_graph::http::build_http_client(Some(&ready.ca_cert))?;
    let token = graph_token(&client, &ready).await?;
    let mut candidates: Vec<PersonKey> = running
        .hub
        .people()
        .into_iter()
        .filter(|person| {
            running.hub.decision(person).is_some_and(|(decision, _)| {
                decision.activity == Activity::Available && decision.current.is_none()
            })
        })
        .collect();
    candidates.sort();
    candidates.truncate(args.notifications);
    let mut changes = running.hub.subscribe();
    let mut latencies = Vec::with_capacity(candidates.len());
    for person in &candidates {
        let Some(user) = sync.health(person).and_then(|health| health.user) else {
            continue;
        };
        let now = clock.now();
        let body = serde_json::json!({
            "subject": "Benchmark call",
            "showAs": "busy",
            "start": {"dateTime": format_graph(now - SignedDuration::from_mins(1)), "timeZone": "UTC"},
            "end": {"dateTime": format_graph(now + SignedDuration::from_mins(30)), "timeZone": "UTC"},
        });
        let sent = Instant::now();
        let response = client
            .post(format!("{}/users/{}/events", ready.graph_url, user))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .context("creating an event in the emulator failed")?;
        if !response.status().is_success() {
            bail!("the emulator refused the event: HTTP {}", response.status());
        }
        let created = Instant::now();
        let deadline = sent + Duration::from_secs(10);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, changes.recv()).await {
                Ok(Ok(change))
                    if &change.person == person && change.decision.activity == Activity::Busy =>
                {
                    latencies.push(created.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    continue
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => {
                    bail!("no presence change for {person} within 10 s of creating its event");
                }
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let throttled = sync.graph.counters().throttled_answers;
    let report = running.shutdown().await;
    for (task, ended) in report {
        if ended != "stopped" {
            eprintln!("task {task}: {ended}");
        }
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(Row {
        first_sync_seconds,
        requests,
        notify_p50_ms: percentile(&latencies, 0.50),
        notify_p99_ms: percentile(&latencies, 0.99),
        rss_mb_per_1000: (rss_after.saturating_sub(rss_before)) as f64
            / 1_048_576.0
            / (users as f64 / 1000.0),
        throttled,
    })
}

fn format_graph(instant: Timestamp) -> String {
    instant.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

async fn graph_token(
    client: &reqwest::Client,
    ready: &m365_emulator::ReadyInfo,
) -> anyhow::Result<String> {
    let secret = ready
        .client_secret
        .clone()
        .context("the emulator's app has no secret")?;
    let response = client
        .post(&ready.token_url)
        .form(&[
            ("client_id", ready.client_id.as_str()),
            ("client_secret", secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await?;
    let body: serde_json::Value = response.json().await?;
    body["access_token"]
        .as_str()
        .map(str::to_string)
        .context("the emulator's token endpoint gave no access_token")
}
