//! `calbridge bench --store sqlite|postgres|both`: one instance on a SQLite file beside
//! `--instances` instances sharing one PostgreSQL database, against the same emulator
//! organisation, in one table: first sync, notification-to-presence p50/p99, resident memory
//! per instance and in total, and (with several instances) the failover time after one is
//! killed.
//!
//! Every instance runs in a process of its own (this binary, hidden subcommand
//! `bench-instance`), so that each one's memory is its own and a kill is a real `SIGKILL`. An
//! instance talks to the benchmark over its standard streams, one JSON line each way:
//! it reports [`InstanceLine`]s (ready, its first-sync state, people who became busy) and
//! answers `candidates N`; it stops gracefully when its standard input closes.
//!
//! The PostgreSQL rows use a database of their own with a random name, dropped at the end of
//! the row whatever happened (also on Ctrl-C).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use calbridge_domain::Secret;
use calbridge_presence::Activity;
use calbridge_store::scratch::{ScratchDatabase, ScratchError};
use jiff::SignedDuration;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::{
    format_graph, percentile, resident_memory_bytes_at, spawn_emulator, BenchArgs, BenchSource,
};
use crate::clock::{Clock, SystemClock};
use crate::commands::{demo_config, graph_token};
use crate::service::{self, ServiceOptions};

/// The environment variable through which an instance gets the PostgreSQL URL (not its
/// command line, where any user of the machine could read a password in it).
const STORE_URL_ENV: &str = "CALBRIDGE_BENCH_STORE_URL";
/// The API token of the benchmark's instances (they listen on loopback only).
const API_TOKEN: &str = "calbridge-bench-token";
/// How often an instance looks at its first-sync state.
const STATE_EVERY: Duration = Duration::from_millis(100);
/// How often the benchmark says how far a long wait has come.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Which stores `--store` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchStore {
    /// One instance on a SQLite file.
    Sqlite,
    /// `--instances` instances on one PostgreSQL database.
    Postgres,
    /// Both, side by side.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// One row's set-up: a store and how many instances share it.
#[derive(Debug, Clone, Copy)]
struct Setup {
    store: StoreKind,
    instances: usize,
}

#[derive(Debug, clap::Args)]
pub struct BenchInstanceArgs {
    /// The emulator's ready line, as a file.
    #[arg(long)]
    pub ready: PathBuf,
    /// The folder of the store key (shared by the instances) and of the SQLite file.
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub lease_seconds: u64,
}

/// What an instance reports, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum InstanceLine {
    Ready {
        address: String,
    },
    /// Sent whenever it changes.
    State {
        first_sync: bool,
        followed: usize,
        subscribed: usize,
    },
    /// A person this instance follows became busy.
    Busy {
        person: String,
    },
    /// The answer to `candidates N`: people it follows who are free, with nothing current.
    Candidates {
        people: Vec<String>,
    },
}

/// The `bench-instance` child: the service with the benchmark's configuration, reporting on
/// its standard output until its standard input closes.
pub async fn run_instance(args: BenchInstanceArgs) -> anyhow::Result<()> {
    let ready_text = std::fs::read_to_string(&args.ready)
        .with_context(|| format!("cannot read {}", args.ready.display()))?;
    let ready: m365_emulator::ReadyInfo =
        serde_json::from_str(&ready_text).context("the emulator's ready file is not JSON")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let mut config = demo_config(&ready, &args.data_dir, &format!("http://{address}"))?;
    config.store.key_file = Some(args.data_dir.join("calbridge.key"));
    config.api.token = Some(Secret::new(API_TOKEN.to_string()));
    if let Ok(url) = std::env::var(STORE_URL_ENV) {
        config.store.path = None;
        config.store.url = Some(Secret::new(url));
        config.cluster.lease_seconds = args.lease_seconds;
        config.cluster.instance_name = Some(args.name.clone());
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let running = service::start(
        config,
        ServiceOptions {
            clock,
            listener: Some(listener),
        },
    )
    .await?;
    let sync = running
        .syncs
        .values()
        .next()
        .context("the benchmark configuration has no source")?
        .clone();
    let mut out = tokio::io::stdout();
    emit(
        &mut out,
        &InstanceLine::Ready {
            address: address.to_string(),
        },
    )
    .await?;
    let mut changes = running.hub.subscribe();
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    let mut every = tokio::time::interval(STATE_EVERY);
    let mut last_state = None;
    loop {
        tokio::select! {
            command = commands.next_line() => {
                let Ok(Some(command)) = command else {
                    break;
                };
                let Some(wanted) = command
                    .strip_prefix("candidates ")
                    .and_then(|n| n.trim().parse::<usize>().ok())
                else {
                    continue;
                };
                let mut people: Vec<String> = sync
                    .followed_people()
                    .into_iter()
                    .filter(|person| {
                        running.hub.decision(person).is_some_and(|(decision, _)| {
                            decision.activity == Activity::Available && decision.current.is_none()
                        })
                    })
                    .map(|person| person.address.to_string())
                    .collect();
                people.sort();
                people.truncate(wanted);
                emit(&mut out, &InstanceLine::Candidates { people }).await?;
            }
            change = changes.recv() => match change {
                Ok(change) if change.decision.activity == Activity::Busy => {
                    emit(&mut out, &InstanceLine::Busy { person: change.person.address.to_string() }).await?;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = every.tick() => {
                // Counted under the engine's lock without copying anyone: this runs ten times
                // a second beside the work being measured.
                // The guard of `people()` must end before `n_subscriptions` takes the lock.
                let followed = sync.people().len();
                let subscribed = sync.n_subscriptions();
                let first_sync = sync.progress.finished.load(std::sync::atomic::Ordering::Relaxed);
                let state = (first_sync, followed, subscribed);
                if last_state != Some(state) {
                    last_state = Some(state);
                    let (first_sync, followed, subscribed) = state;
                    emit(&mut out, &InstanceLine::State { first_sync, followed, subscribed }).await?;
                }
            }
        }
    }
    for (task, ended) in running.shutdown().await {
        if ended != "stopped" {
            eprintln!("instance {}: task {task}: {ended}", args.name);
        }
    }
    Ok(())
}

async fn emit(out: &mut tokio::io::Stdout, line: &InstanceLine) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    out.write_all(text.as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// One row of the table.
struct StoreRow {
    setup: Setup,
    users: usize,
    first_sync_seconds: f64,
    notify_p50_ms: f64,
    notify_p99_ms: f64,
    /// Resident memory of each instance after the first sync, in MB.
    rss_mb: Vec<f64>,
    /// From the kill of one instance until the others follow everyone; `None` with one
    /// instance.
    failover_seconds: Option<f64>,
}

/// `calbridge bench --store …`: the rows of every size and set-up, printed as they finish.
pub async fn run(args: &BenchArgs, store: BenchStore) -> anyhow::Result<()> {
    if args.source != BenchSource::Graph {
        bail!("--store compares the stores with the Graph source: add --source graph");
    }
    if args.instances == 0 {
        bail!("--instances must be at least 1");
    }
    let postgres = Setup {
        store: StoreKind::Postgres,
        instances: args.instances,
    };
    let sqlite = Setup {
        store: StoreKind::Sqlite,
        instances: 1,
    };
    let setups = match store {
        BenchStore::Sqlite => vec![sqlite],
        BenchStore::Postgres => vec![postgres],
        BenchStore::Both => vec![sqlite, postgres],
    };
    let server = args
        .postgres_url
        .clone()
        .unwrap_or_else(calbridge_store::scratch::server_url_from_env);
    println!(
        "calbridge bench: Graph source, emulator with Graph throttling (4 concurrent per mailbox, 10,000 per 10 min) and {} ms latency per request",
        args.latency_ms
    );
    println!(
        "each instance runs in a process of its own; PostgreSQL rows on a new database on {} (lease {} s), dropped at the end",
        calbridge_store::redact_url(&server),
        args.lease_seconds
    );
    println!(
        "{:>9} {:>9} {:>7} {:>13} {:>13} {:>13} {:>12} {:>12} {:>11}  RSS MB per instance",
        "store",
        "instances",
        "users",
        "first sync s",
        "notify p50 ms",
        "notify p99 ms",
        "RSS MB total",
        "RSS MB/1000",
        "failover s"
    );
    for &users in &args.users {
        for &setup in &setups {
            let row = measure(setup, users, args, &server)
                .await
                .with_context(|| {
                    format!(
                        "{} × {} with {users} users",
                        setup.instances,
                        setup.store.name()
                    )
                })?;
            print_row(&row);
        }
    }
    Ok(())
}

fn print_row(row: &StoreRow) {
    let total: f64 = row.rss_mb.iter().sum();
    let each: Vec<String> = row.rss_mb.iter().map(|mb| format!("{mb:.0}")).collect();
    println!(
        "{:>9} {:>9} {:>7} {:>13.2} {:>13.1} {:>13.1} {:>12.0} {:>12.2} {:>11}  {}",
        row.setup.store.name(),
        row.setup.instances,
        row.users,
        row.first_sync_seconds,
        row.notify_p50_ms,
        row.notify_p99_ms,
        total,
        total / (row.users as f64 / 1000.0),
        row.failover_seconds
            .map_or_else(|| "-".to_string(), |seconds| format!("{seconds:.1}")),
        each.join(" / ")
    );
}

/// One row: the emulator, the store, the instances, the measurements; everything started is
/// stopped and removed before returning, the PostgreSQL database included.
async fn measure(
    setup: Setup,
    users: usize,
    args: &BenchArgs,
    server: &str,
) -> anyhow::Result<StoreRow> {
    let database = match setup.store {
        StoreKind::Sqlite => None,
        StoreKind::Postgres => Some(
            ScratchDatabase::create(server, "calbridge_bench")
                .await
                .map_err(|error| match error {
                    ScratchError::Unreachable { .. } => anyhow::anyhow!(
                    "{error}; the PostgreSQL rows need a server (or measure --store sqlite alone)"
                ),
                    other => anyhow::Error::from(other),
                })?,
        ),
    };
    let data_dir = std::env::temp_dir().join(format!(
        "calbridge-bench-{}-{}-{users}",
        std::process::id(),
        setup.store.name()
    ));
    let measured = tokio::select! {
        measured = measure_in(
            setup,
            users,
            args,
            &data_dir,
            database.as_ref().map(ScratchDatabase::url),
        ) => measured,
        // Leaving `measure_in` kills its instances and its emulator; the folder and the
        // database go below.
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let _ = std::fs::remove_dir_all(&data_dir);
    if let Some(database) = database {
        database.drop_now().await;
    }
    measured
}

async fn measure_in(
    setup: Setup,
    users: usize,
    args: &BenchArgs,
    data_dir: &Path,
    store_url: Option<String>,
) -> anyhow::Result<StoreRow> {
    eprintln!(
        "[{} × {}, {users} users] starting the emulator…",
        setup.instances,
        setup.store.name()
    );
    let (_emulator, ready, _) = spawn_emulator(users, args).await?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let ready_file = data_dir.join("ready.json");
    std::fs::write(&ready_file, serde_json::to_string(&ready)?)
        .with_context(|| format!("cannot write {}", ready_file.display()))?;
    // Made before the instances start: each would otherwise make its own when none exists.
    calbridge_store::SecretKey::generate_to_file(data_dir.join("calbridge.key"))?;

    let started = Instant::now();
    let mut fleet = Fleet::start(setup, args, &ready_file, data_dir, store_url.as_deref())?;
    let label = format!(
        "[{} × {}, {users} users]",
        setup.instances,
        setup.store.name()
    );
    fleet
        .wait_until(
            &format!("{label} first sync"),
            Duration::from_secs(3600),
            |fleet| fleet.all_ready() && fleet.everyone_subscribed(users),
        )
        .await?;
    let first_sync_seconds = started.elapsed().as_secs_f64();
    let rss_mb = fleet
        .instances
        .iter()
        .map(|instance| instance.resident_mb())
        .collect();
    eprintln!("{label} first sync done in {first_sync_seconds:.1} s; measuring notifications…");

    let client = calbridge_net::build_http_client(Some(&ready.ca_cert))?;
    let token = graph_token(&client, &ready).await?;
    let candidates = fleet.candidates(args.notifications).await?;
    let mut latencies = Vec::with_capacity(candidates.len());
    let clock = SystemClock;
    for (index, person) in candidates.iter().enumerate() {
        fleet.drain();
        let now = clock.now();
        let body = serde_json::json!({
            "subject": "Benchmark call",
            "showAs": "busy",
            "start": {"dateTime": format_graph(now - SignedDuration::from_mins(1)), "timeZone": "UTC"},
            "end": {"dateTime": format_graph(now + SignedDuration::from_mins(30)), "timeZone": "UTC"},
        });
        let response = client
            .post(format!("{}/users/{}/events", ready.graph_url, person))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .context("creating an event in the emulator failed")?;
        if !response.status().is_success() {
            bail!("the emulator refused the event: HTTP {}", response.status());
        }
        let created = Instant::now();
        fleet
            .wait_until(
                &format!("{person} busy after its new event"),
                Duration::from_secs(10),
                |fleet| fleet.busy.contains(person),
            )
            .await?;
        latencies.push(created.elapsed().as_secs_f64() * 1000.0);
        if (index + 1) % 50 == 0 {
            eprintln!(
                "{label} {} of {} notifications",
                index + 1,
                candidates.len()
            );
        }
    }
    latencies.sort_by(f64::total_cmp);

    let failover_seconds = if setup.instances > 1 {
        // All instances start at once, so the first to claim may hold every shard when the
        // first sync is done; the others take their fair share over the next renewals. The
        // failover is measured on an instance that follows people, not on an idle one.
        fleet
            .wait_until(
                &format!("{label} every instance following people"),
                Duration::from_secs(args.lease_seconds * 4 + 120),
                |fleet| fleet.live().all(|instance| instance.followed > 0),
            )
            .await?;
        let (killed_at, name, followed) = fleet.kill_busiest().await;
        eprintln!(
            "{label} killed instance {name} (SIGKILL), which followed {followed} people; waiting for the others to follow them…"
        );
        fleet
            .wait_until(
                &format!("{label} failover"),
                Duration::from_secs(args.lease_seconds + 120),
                |fleet| fleet.followed_by_live() == users,
            )
            .await?;
        Some(killed_at.elapsed().as_secs_f64())
    } else {
        None
    };
    fleet.stop().await;
    Ok(StoreRow {
        setup,
        users,
        first_sync_seconds,
        notify_p50_ms: percentile(&latencies, 0.50),
        notify_p99_ms: percentile(&latencies, 0.99),
        rss_mb,
        failover_seconds,
    })
}

/// One instance process and what it last reported.
struct Instance {
    name: String,
    child: tokio::process::Child,
    commands: Option<tokio::process::ChildStdin>,
    address: Option<String>,
    first_sync: bool,
    followed: usize,
    subscribed: usize,
    alive: bool,
}

impl Instance {
    fn resident_mb(&self) -> f64 {
        self.child
            .id()
            .and_then(|pid| resident_memory_bytes_at(&pid.to_string()))
            .map_or(f64::NAN, |bytes| bytes as f64 / 1_048_576.0)
    }
}

/// The instances of one row and the lines they sent.
struct Fleet {
    instances: Vec<Instance>,
    lines: mpsc::UnboundedReceiver<(usize, InstanceLine)>,
    /// People reported busy since the last [`Fleet::drain`].
    busy: BTreeSet<String>,
    /// The last `candidates` answers, by instance.
    candidates: Vec<Option<Vec<String>>>,
}

impl Fleet {
    /// Starts all instances at once, as a cluster's machines come up after a reboot.
    fn start(
        setup: Setup,
        args: &BenchArgs,
        ready_file: &Path,
        data_dir: &Path,
        store_url: Option<&str>,
    ) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("cannot find the calbridge binary")?;
        let (sender, lines) = mpsc::unbounded_channel();
        let mut instances = Vec::new();
        for index in 0..setup.instances {
            let name = instance_name(index);
            let mut command = tokio::process::Command::new(&exe);
            command
                .arg("bench-instance")
                .arg("--ready")
                .arg(ready_file)
                .arg("--data-dir")
                .arg(data_dir)
                .args([
                    "--name",
                    &name,
                    "--lease-seconds",
                    &args.lease_seconds.to_string(),
                ])
                .env_remove(STORE_URL_ENV)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true);
            if let Some(url) = store_url {
                command.env(STORE_URL_ENV, url);
            }
            let mut child = command
                .spawn()
                .context("cannot start a benchmark instance process")?;
            let stdout = child.stdout.take().context("no stdout from an instance")?;
            let commands = child.stdin.take();
            let sender = sender.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    // Anything else on the instance's output is not ours to read.
                    if let Ok(parsed) = serde_json::from_str::<InstanceLine>(&line) {
                        if sender.send((index, parsed)).is_err() {
                            return;
                        }
                    }
                }
            });
            instances.push(Instance {
                name,
                child,
                commands,
                address: None,
                first_sync: false,
                followed: 0,
                subscribed: 0,
                alive: true,
            });
        }
        let n = instances.len();
        Ok(Fleet {
            instances,
            lines,
            busy: BTreeSet::new(),
            candidates: vec![None; n],
        })
    }

    fn take(&mut self, index: usize, line: InstanceLine) {
        let Some(instance) = self.instances.get_mut(index) else {
            return;
        };
        match line {
            InstanceLine::Ready { address } => instance.address = Some(address),
            InstanceLine::State {
                first_sync,
                followed,
                subscribed,
            } => {
                instance.first_sync = first_sync;
                instance.followed = followed;
                instance.subscribed = subscribed;
            }
            InstanceLine::Busy { person } => {
                self.busy.insert(person);
            }
            InstanceLine::Candidates { people } => {
                if let Some(slot) = self.candidates.get_mut(index) {
                    *slot = Some(people);
                }
            }
        }
    }

    /// Takes in what arrived, then forgets who was reported busy.
    fn drain(&mut self) {
        while let Ok((index, line)) = self.lines.try_recv() {
            self.take(index, line);
        }
        self.busy.clear();
    }

    fn live(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|instance| instance.alive)
    }

    fn all_ready(&self) -> bool {
        self.live()
            .all(|instance| instance.address.is_some() && instance.first_sync)
    }

    fn followed_by_live(&self) -> usize {
        self.live().map(|instance| instance.followed).sum()
    }

    /// Everyone followed and subscribed once over the live instances.
    fn everyone_subscribed(&self, users: usize) -> bool {
        self.followed_by_live() == users
            && self
                .live()
                .map(|instance| instance.subscribed)
                .sum::<usize>()
                == users
    }

    fn describe(&self) -> String {
        self.instances
            .iter()
            .map(|instance| {
                format!(
                    "{}: {}{} followed, {} subscribed{}",
                    instance.name,
                    if instance.alive { "" } else { "killed, " },
                    instance.followed,
                    instance.subscribed,
                    if instance.first_sync {
                        ", first sync finished"
                    } else {
                        ""
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Takes in the instances' lines until `done` holds; fails after `patience` (or when an
    /// instance ended by itself), saying where things stood. Says how far it came every few
    /// seconds.
    async fn wait_until(
        &mut self,
        what: &str,
        patience: Duration,
        done: impl Fn(&Fleet) -> bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let deadline = started + patience;
        let mut next_progress = started + PROGRESS_EVERY;
        loop {
            if done(self) {
                return Ok(());
            }
            for instance in self.instances.iter_mut().filter(|i| i.alive) {
                if let Ok(Some(status)) = instance.child.try_wait() {
                    bail!(
                        "instance {} ended by itself ({status}) while waiting for {what}",
                        instance.name
                    );
                }
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{what}: not done after {} s ({})",
                    patience.as_secs(),
                    self.describe()
                );
            }
            if now >= next_progress && patience > PROGRESS_EVERY * 2 {
                eprintln!(
                    "{what}: {:.0} s, {}",
                    started.elapsed().as_secs_f64(),
                    self.describe()
                );
                next_progress = now + PROGRESS_EVERY;
            }
            let wake = deadline.min(next_progress);
            match tokio::time::timeout_at(wake.into(), self.lines.recv()).await {
                Ok(Some((index, line))) => self.take(index, line),
                Ok(None) => bail!("every instance's output closed while waiting for {what}"),
                Err(_) => {}
            }
        }
    }

    /// Up to `n` free people, the first by address over all instances.
    async fn candidates(&mut self, n: usize) -> anyhow::Result<Vec<String>> {
        self.candidates.iter_mut().for_each(|slot| *slot = None);
        for instance in self.instances.iter_mut().filter(|i| i.alive) {
            let commands = instance
                .commands
                .as_mut()
                .context("an instance's input is closed")?;
            commands
                .write_all(format!("candidates {n}\n").as_bytes())
                .await
                .context("cannot ask an instance for free people")?;
            commands.flush().await?;
        }
        let alive: Vec<bool> = self.instances.iter().map(|i| i.alive).collect();
        self.wait_until(
            "the instances' free people",
            Duration::from_secs(60),
            move |fleet| {
                fleet
                    .candidates
                    .iter()
                    .zip(&alive)
                    .all(|(answer, alive)| answer.is_some() || !alive)
            },
        )
        .await?;
        let mut people: Vec<String> = self
            .candidates
            .iter()
            .flatten()
            .flatten()
            .cloned()
            .collect();
        people.sort();
        people.truncate(n);
        Ok(people)
    }

    /// Kills the live instance that follows the most people with SIGKILL, as a machine that
    /// fails: no shard is given back. Says when, which instance, and how many it followed.
    async fn kill_busiest(&mut self) -> (Instant, String, usize) {
        let Some(instance) = self
            .instances
            .iter_mut()
            .filter(|i| i.alive)
            .max_by_key(|i| i.followed)
        else {
            return (Instant::now(), String::new(), 0);
        };
        let _ = instance.child.start_kill();
        let _ = instance.child.wait().await;
        instance.alive = false;
        (Instant::now(), instance.name.clone(), instance.followed)
    }

    /// Closes every instance's input (a graceful stop that gives the shards back) and waits
    /// for them; one that does not stop within 15 s is killed.
    async fn stop(mut self) {
        for instance in &mut self.instances {
            instance.commands = None;
        }
        for instance in &mut self.instances {
            if !instance.alive {
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(15), instance.child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => eprintln!("instance {} ended with {status}", instance.name),
                Ok(Err(error)) => eprintln!("instance {}: {error}", instance.name),
                Err(_) => {
                    eprintln!(
                        "instance {} did not stop within 15 s: killed",
                        instance.name
                    );
                    let _ = instance.child.start_kill();
                    let _ = instance.child.wait().await;
                }
            }
        }
    }
}

fn instance_name(index: usize) -> String {
    match u8::try_from(index) {
        Ok(small) if small < 26 => char::from(b'a' + small).to_string(),
        _ => format!("i{index}"),
    }
}
