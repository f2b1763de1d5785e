//! `calbridge bench`: the service's figures against the emulator with Graph's throttling on and
//! added latency: first-sync wall time and HTTP requests per user, notification-to-presence
//! latency, and resident memory per 1,000 users — for a Graph source, an EWS source (NTLM with
//! impersonation, streaming notifications; calendar view or free/busy reads), in one table.
//!
//! The emulator runs in a child process (this same binary, hidden subcommand
//! `bench-emulator`) so that the memory measured is the service's alone.
//!
//! With `--store`, [`stores`] compares one instance on SQLite with several on PostgreSQL,
//! each instance a process of its own; with `--rooms N`, [`rooms`] times the rooms API's
//! "which room is free" over N rooms; with `--api`, [`api`] the requests per second the API
//! answers.

mod api;
mod directory;
mod rooms;
pub mod slapd;
mod stores;

pub use directory::BenchDirectory;

pub use stores::{run_instance, BenchInstanceArgs, BenchStore};

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use calbridge_domain::SourceId;
use calbridge_presence::Activity;
use calbridge_sources_ews::WindowRead;
use calbridge_store::PersonKey;
use jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::clock::{Clock, SystemClock};
use crate::commands::{demo_config, ews_demo_source, graph_token};
use crate::config::Config;
use crate::service::{self, RunningService, ServiceOptions};

/// Which source kinds the benchmark measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchSource {
    Graph,
    /// EWS reading each calendar with `FindItem`.
    Ews,
    /// EWS reading free/busy for 100 mailboxes per `GetUserAvailability`.
    EwsFreeBusy,
    /// Graph and EWS (`FindItem`).
    Both,
    /// Graph, EWS and EWS free/busy.
    All,
}

impl BenchSource {
    /// The rows to measure, by the names the table shows.
    fn kinds(self) -> &'static [&'static str] {
        match self {
            BenchSource::Graph => &["graph"],
            BenchSource::Ews => &["ews"],
            BenchSource::EwsFreeBusy => &["ews-fb"],
            BenchSource::Both => &["graph", "ews"],
            BenchSource::All => &["graph", "ews", "ews-fb"],
        }
    }
}

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
    /// The source kinds to measure: Microsoft Graph, Exchange Web Services (calendar view or
    /// free/busy), Graph and EWS, or all three.
    #[arg(long, value_enum, default_value_t = BenchSource::Both)]
    pub source: BenchSource,
    /// Compare the stores instead: one instance on a SQLite file (`sqlite`), `--instances`
    /// instances sharing one PostgreSQL database (`postgres`), or both side by side, each
    /// instance a process of its own; adds the failover time after one of several instances is
    /// killed. Graph source only.
    #[arg(long, value_enum)]
    pub store: Option<BenchStore>,
    /// How many instances share the PostgreSQL database with `--store postgres|both` (SQLite
    /// serves one instance: its file is locked).
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    /// The PostgreSQL server on which `--store` makes a database of its own (and drops it at
    /// the end). Default: CALBRIDGE_TEST_POSTGRES, or postgres://postgres@127.0.0.1:5432/postgres.
    #[arg(long)]
    pub postgres_url: Option<String>,
    /// `[cluster] lease_seconds` of the PostgreSQL instances: bounds the failover time.
    #[arg(long, default_value_t = 30)]
    pub lease_seconds: u64,
    /// Measure the directory instead: `ldap` generates `--users` people (default 50,000 here) in
    /// an OpenLDAP slapd of its own, reads them in pages and applies them to an SQLite store,
    /// then reads again unchanged and counts the store writes (0 expected).
    #[arg(long, value_enum)]
    pub directory: Option<BenchDirectory>,
    /// Page size of `--directory ldap`'s paged search.
    #[arg(long, default_value_t = 500)]
    pub page_size: u32,
    /// Measure the rooms API instead: the service follows this many rooms (five buildings,
    /// booked around now), and "a free room for 8 people for the next 30 minutes in building
    /// 2" is checked against the calendars at Graph, then timed over HTTP.
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Measure the API instead: requests per second for `GET /api/v1/users` and one person's
    /// presence, with `--users` people (default 200 here) and the clients in this process.
    #[arg(long)]
    pub api: bool,
    /// One JSON object per row, with every column (`source`, `users`, `presence_right_s`,
    /// `first_sync_s`, `requests_per_user`, `notify_p99_ms`, `cpu_ms_per_person`,
    /// `rss_peak_mb`, `rss_steady_mb`, …), instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print only the rows (used for the fresh process each row of `--source both` runs in).
    #[arg(long, hide = true)]
    pub rows_only: bool,
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
    resident_memory_bytes_at("self")
}

/// `VmRSS` of `/proc/{process}/status` (`self` or a process id).
fn resident_memory_bytes_at(process: &str) -> Option<u64> {
    status_kilobytes(process, "VmRSS:").map(|kilobytes| kilobytes * 1024)
}

/// A `kB` field of `/proc/{process}/status`.
fn status_kilobytes(process: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user and system) this process has used so far, from `getrusage`.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the pointer it is given, which points to
    // memory of that type and size owned by this frame.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return f64::NAN;
        }
        usage.assume_init()
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1_000_000.0;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The process's figures around one first sync: CPU time, peak and steady resident memory.
/// The emulator runs in a child process, so all of them are calbridge's own.
struct ProcessMeter {
    started: Instant,
    cpu_before: f64,
    rss_before: u64,
}

/// What [`ProcessMeter::first_sync_done`] measured.
struct ProcessFigures {
    cpu_seconds: f64,
    /// `VmHWM` from the meter's start (the peak is reset then) to the end of the first sync.
    rss_peak: u64,
    /// `VmRSS` once the first sync is over, its garbage given back and two seconds passed.
    rss_steady: u64,
}

impl ProcessMeter {
    /// Starts measuring: resets the peak resident size (`echo 5 > /proc/self/clear_refs`, so
    /// that `VmHWM` is this first sync's, not the process's earlier rows').
    fn start() -> ProcessMeter {
        if std::fs::write("/proc/self/clear_refs", "5").is_err() {
            eprintln!("(cannot reset the peak resident size: rss_peak is the process's)");
        }
        ProcessMeter {
            started: Instant::now(),
            cpu_before: cpu_seconds(),
            rss_before: resident_memory_bytes().unwrap_or(0),
        }
    }

    fn elapsed_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// At the end of the first sync: the CPU it took, the peak, then the steady size.
    async fn first_sync_done(&self) -> ProcessFigures {
        let cpu_seconds = cpu_seconds() - self.cpu_before;
        let rss_peak = status_kilobytes("self", "VmHWM:").map_or(0, |kilobytes| kilobytes * 1024);
        crate::memory::release_free_memory();
        tokio::time::sleep(Duration::from_secs(2)).await;
        ProcessFigures {
            cpu_seconds,
            rss_peak,
            rss_steady: resident_memory_bytes().unwrap_or(0),
        }
    }
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchDirectory::Ldap) = args.directory {
        // `--users` keeps its default for the calendar rows; the directory's is 50,000.
        let sizes = if args.users == [1000, 10000] {
            vec![50_000]
        } else {
            args.users.clone()
        };
        return directory::run(&sizes, args.page_size).await;
    }
    if let Some(store) = args.store {
        return stores::run(&args, store).await;
    }
    if let Some(rooms_count) = args.rooms {
        return rooms::run(rooms_count).await;
    }
    if args.api {
        // `--users` keeps its default for the calendar rows; the API's is 200.
        let users = if args.users == [1000, 10000] {
            200
        } else {
            args.users.first().copied().unwrap_or(200)
        };
        return api::run(users, args.seed).await;
    }
    let kinds = args.source.kinds();
    let ews = kinds.iter().any(|kind| kind.starts_with("ews"));
    if !args.rows_only && !args.json {
        println!(
            "calbridge bench: emulator with Graph throttling (4 concurrent per mailbox, 10,000 per 10 min) and {} ms latency per request",
            args.latency_ms
        );
        if ews {
            println!(
                "EWS: NTLM service account with ApplicationImpersonation, direct ews_url, directory file; per user ResolveNames, FindItem (ews) or one GetUserAvailability per 100 users (ews-fb), and Subscribe; streaming notifications; the same latency on every EWS request"
            );
        }
        if kinds.len() > 1 {
            println!("(each row runs in a fresh process, so that one row's memory does not hide the next one's)");
        }
        println!(
            "{:>7} {:>7} {:>10} {:>10} {:>12} {:>9} {:>9} {:>10} {:>10} {:>11} {:>9} {:>11} {:>12} {:>10}",
            "source",
            "users",
            "emulator s",
            "presence s",
            "first sync s",
            "requests",
            "req/user",
            "notify p50",
            "notify p99",
            "CPU ms/pers",
            "RSS peak",
            "RSS steady",
            "RSS MB/1000",
            "throttled"
        );
    }
    for &users in &args.users {
        if kinds.len() > 1 {
            for kind in kinds {
                bench_in_child(kind, users, &args)
                    .await
                    .with_context(|| format!("{kind} benchmark with {users} users"))?;
            }
            continue;
        }
        let kind = kinds[0];
        let row = match kind {
            "graph" => bench_one(users, &args).await,
            "ews" => bench_ews(users, &args, WindowRead::CalendarView).await,
            _ => bench_ews(users, &args, WindowRead::FreeBusy).await,
        };
        let row = row.with_context(|| format!("{kind} benchmark with {users} users"))?;
        print_row(kind, &row, args.json)?;
    }
    Ok(())
}

/// Prints a row as a line of the table, or as one JSON object with `--json`.
fn print_row(kind: &str, row: &Row, json: bool) -> anyhow::Result<()> {
    if json {
        let mut object = serde_json::to_value(row)?;
        object["source"] = serde_json::json!(kind);
        println!("{object}");
        return Ok(());
    }
    println!(
        "{:>7} {:>7} {:>10.2} {:>10.2} {:>12.2} {:>9} {:>9.3} {:>10.1} {:>10.1} {:>11.3} {:>9.1} {:>11.1} {:>12.2} {:>10}",
        kind,
        row.users,
        row.emulator_start_s,
        row.presence_right_s,
        row.first_sync_s,
        row.requests,
        row.requests_per_user,
        row.notify_p50_ms,
        row.notify_p99_ms,
        row.cpu_ms_per_person,
        row.rss_peak_mb,
        row.rss_steady_mb,
        row.rss_mb_per_1000,
        row.throttled
            .map_or_else(|| "-".to_string(), |count| count.to_string())
    );
    Ok(())
}

/// One row of the table, and of `--json` (one object per row, with `source` added).
#[derive(serde::Serialize)]
struct Row {
    users: usize,
    /// From starting the emulator child until its ready line: generating the organisation.
    emulator_start_s: f64,
    /// From the service's start until every window of the first sync is read: everyone's
    /// presence is right from then on.
    presence_right_s: f64,
    /// Until every subscription is in place (EWS: and its streams open).
    first_sync_s: f64,
    requests: u64,
    requests_per_user: f64,
    notify_p50_ms: f64,
    notify_p99_ms: f64,
    /// calbridge's own CPU time (user and system, `getrusage`) in the first sync, per person.
    cpu_ms_per_person: f64,
    /// The process's peak resident size during the first sync (`VmHWM`).
    rss_peak_mb: f64,
    /// The resident size after the first sync, its garbage given back and 2 s passed.
    rss_steady_mb: f64,
    /// (steady − before the start) per 1,000 people.
    rss_mb_per_1000: f64,
    /// Throttled answers the source counted (Graph's 429s); None where it keeps no count.
    throttled: Option<u64>,
}

/// Runs one row (`kind`, `users`) in a fresh `calbridge bench` process, whose row goes
/// straight to our standard output.
async fn bench_in_child(kind: &str, users: usize, args: &BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the calbridge binary")?;
    let status = tokio::process::Command::new(exe)
        .args([
            "bench",
            "--rows-only",
            "--source",
            match kind {
                "ews-fb" => "ews-free-busy",
                other => other,
            },
            "--users",
            &users.to_string(),
            "--latency-ms",
            &args.latency_ms.to_string(),
            "--notifications",
            &args.notifications.to_string(),
            "--seed",
            &args.seed.to_string(),
        ])
        .args(args.json.then_some("--json"))
        .kill_on_drop(true)
        .status()
        .await
        .context("cannot start the benchmark child process")?;
    if !status.success() {
        bail!("the benchmark process ended with {status}");
    }
    Ok(())
}

/// Starts the emulator child for `users` people and reads its ready line; also returns the
/// seconds from its start until it was ready (generating the organisation included).
async fn spawn_emulator(
    users: usize,
    args: &BenchArgs,
) -> anyhow::Result<(tokio::process::Child, m365_emulator::ReadyInfo, f64)> {
    let started = Instant::now();
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
    Ok((child, ready, started.elapsed().as_secs_f64()))
}

async fn bench_one(users: usize, args: &BenchArgs) -> anyhow::Result<Row> {
    let (child, ready, emulator_start_seconds) = spawn_emulator(users, args).await?;
    let data_dir =
        std::env::temp_dir().join(format!("calbridge-bench-{}-{users}", std::process::id()));
    std::fs::create_dir_all(&data_dir)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let public_url = format!("http://{}", listener.local_addr()?);
    let config = demo_config(&ready, &data_dir, &public_url)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let meter = ProcessMeter::start();
    let running = service::start(
        config,
        ServiceOptions {
            clock: clock.clone(),
            listener: Some(listener),
        },
    )
    .await?;
    let (presence_right_seconds, first_sync_seconds) = tokio::join!(
        async {
            running.first_windows_read().await;
            meter.elapsed_seconds()
        },
        async {
            running.first_sync_done().await;
            meter.elapsed_seconds()
        }
    );
    let figures = meter.first_sync_done().await;
    let sync = running
        .syncs
        .values()
        .next()
        .context("the benchmark configuration has no source")?
        .clone();
    let counters = sync.source.graph.counters();
    let requests = counters.requests_sent + counters.token_requests;
    let people = running.hub.n_people();
    if people < users {
        bail!("only {people} of {users} people have presence after the first sync");
    }

    // Notification latency: make free people busy through Graph and time until the hub
    // publishes it.
    let client = calbridge_net::build_http_client(Some(&ready.ca_cert))?;
    let token = graph_token(&client, &ready).await?;
    let latencies = measure_notifications(
        &running,
        &client,
        &token,
        &ready,
        clock.as_ref(),
        args.notifications,
        |person| sync.health(person).and_then(|health| health.user),
    )
    .await?;
    let throttled = sync.source.graph.counters().throttled_answers;
    let measured = Measured {
        users,
        emulator_start_seconds,
        presence_right_seconds,
        first_sync_seconds,
        requests,
        rss_before: meter.rss_before,
        figures,
        latencies,
    };
    Ok(finish(running, child, &data_dir, measured, Some(throttled)).await)
}

/// Makes up to `n` free people busy through Graph, one after the other, and returns the
/// milliseconds from each event's creation until the hub published the person as busy.
/// `user_of` gives the Graph user (id or address) to create the event for.
async fn measure_notifications(
    running: &RunningService,
    client: &reqwest::Client,
    token: &str,
    ready: &m365_emulator::ReadyInfo,
    clock: &dyn Clock,
    n: usize,
    user_of: impl Fn(&PersonKey) -> Option<String>,
) -> anyhow::Result<Vec<f64>> {
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
    candidates.truncate(n);
    let mut changes = running.hub.subscribe();
    let mut latencies = Vec::with_capacity(candidates.len());
    for person in &candidates {
        let Some(user) = user_of(person) else {
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
            .bearer_auth(token)
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
                Ok(Ok(_)) => continue,
                // Changes were dropped (other people's timers fired meanwhile): ours may be
                // among them, so look at the person's presence itself.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    if running
                        .hub
                        .decision(person)
                        .is_some_and(|(decision, _)| decision.activity == Activity::Busy)
                    {
                        latencies.push(created.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => {
                    bail!("no presence change for {person} within 10 s of creating its event");
                }
            }
        }
    }
    Ok(latencies)
}

/// The same figures for an EWS source: NTLM with impersonation against the emulator's EWS,
/// the people in a directory file, changes made through Graph and streamed over EWS.
async fn bench_ews(users: usize, args: &BenchArgs, read: WindowRead) -> anyhow::Result<Row> {
    let (child, ready, emulator_start_seconds) = spawn_emulator(users, args).await?;
    let data_dir = std::env::temp_dir().join(format!(
        "calbridge-bench-ews-{}-{users}",
        std::process::id()
    ));
    std::fs::create_dir_all(&data_dir)?;

    let client = calbridge_net::build_http_client(Some(&ready.ca_cert))?;
    let token = graph_token(&client, &ready).await?;
    let (source, directory, people) =
        ews_demo_source(&ready, &data_dir, SourceId("bench-ews".to_string()), read).await?;
    if people < users {
        bail!("the emulator's group lists {people} of {users} people with an address");
    }
    let mut config = Config::default();
    config.store.path = Some(data_dir.join("calbridge.sqlite"));
    config.sources.push(source);
    config.directory.push(directory);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let meter = ProcessMeter::start();
    let running = service::start(
        config,
        ServiceOptions {
            clock: clock.clone(),
            listener: Some(listener),
        },
    )
    .await?;
    let (presence_right_seconds, ()) = tokio::join!(
        async {
            running.first_windows_read().await;
            meter.elapsed_seconds()
        },
        running.first_sync_done()
    );
    let sync = running
        .ews_syncs
        .values()
        .next()
        .context("the benchmark configuration has no EWS source")?
        .clone();
    // EWS subscribes after the window reads (one Subscribe per user) and then opens the
    // streaming connections; the first sync counts until they are open, as on Graph where it
    // includes the subscriptions.
    let streams_needed = users.div_ceil(200) as u64;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let subscribed = sync.n_subscriptions() >= users;
        if subscribed
            && emulator_counter(&client, &ready, "ews.streaming_connections").await?
                >= streams_needed
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {users} EWS subscriptions and their streams after 30 minutes",
                sync.n_subscriptions()
            );
        }
        tokio::time::sleep(Duration::from_millis(if subscribed { 20 } else { 100 })).await;
    }
    let first_sync_seconds = meter.elapsed_seconds();
    let figures = meter.first_sync_done().await;
    let requests = sync.source.ews.requests_sent();
    let people = running.hub.n_people();
    if people < users {
        bail!("only {people} of {users} people have presence after the first sync");
    }

    let latencies = measure_notifications(
        &running,
        &client,
        &token,
        &ready,
        clock.as_ref(),
        args.notifications,
        |person| Some(person.address.to_string()),
    )
    .await?;
    let measured = Measured {
        users,
        emulator_start_seconds,
        presence_right_seconds,
        first_sync_seconds,
        requests,
        rss_before: meter.rss_before,
        figures,
        latencies,
    };
    Ok(finish(running, child, &data_dir, measured, None).await)
}

/// One of the emulator's request counters (`GET /_emulator/counters`).
async fn emulator_counter(
    client: &reqwest::Client,
    ready: &m365_emulator::ReadyInfo,
    kind: &str,
) -> anyhow::Result<u64> {
    let response = client
        .get(format!("{}/counters?by_mailbox=false", ready.admin_url))
        .send()
        .await
        .context("reading the emulator's counters failed")?;
    if !response.status().is_success() {
        bail!(
            "the emulator refused its counters: HTTP {}",
            response.status()
        );
    }
    let counters: serde_json::Value = response
        .json()
        .await
        .context("the emulator's counters are not JSON")?;
    Ok(counters["by_kind"][kind].as_u64().unwrap_or(0))
}

fn format_graph(instant: Timestamp) -> String {
    instant.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

/// What one benchmark run measured before the service is stopped.
struct Measured {
    users: usize,
    emulator_start_seconds: f64,
    presence_right_seconds: f64,
    first_sync_seconds: f64,
    requests: u64,
    rss_before: u64,
    figures: ProcessFigures,
    latencies: Vec<f64>,
}

/// Stops the service and the emulator child, removes the run's data and makes the row.
async fn finish(
    running: crate::service::RunningService,
    child: tokio::process::Child,
    data_dir: &std::path::Path,
    mut measured: Measured,
    throttled: Option<u64>,
) -> Row {
    measured.latencies.sort_by(f64::total_cmp);
    for (task, ended) in running.shutdown().await {
        if ended != "stopped" {
            eprintln!("task {task}: {ended}");
        }
    }
    drop(child);
    let _ = std::fs::remove_dir_all(data_dir);
    let users = measured.users as f64;
    let megabytes = |bytes: u64| bytes as f64 / 1_048_576.0;
    Row {
        users: measured.users,
        emulator_start_s: measured.emulator_start_seconds,
        presence_right_s: measured.presence_right_seconds,
        first_sync_s: measured.first_sync_seconds,
        requests: measured.requests,
        requests_per_user: measured.requests as f64 / users,
        notify_p50_ms: percentile(&measured.latencies, 0.50),
        notify_p99_ms: percentile(&measured.latencies, 0.99),
        cpu_ms_per_person: measured.figures.cpu_seconds * 1000.0 / users,
        rss_peak_mb: megabytes(measured.figures.rss_peak),
        rss_steady_mb: megabytes(measured.figures.rss_steady),
        rss_mb_per_1000: megabytes(
            measured
                .figures
                .rss_steady
                .saturating_sub(measured.rss_before),
        ) / (users / 1000.0),
        throttled,
    }
}
