//! `calbridge run` and `calbridge demo`: the service in the foreground.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use calbridge_domain::{Secret, SourceId};
use calbridge_sources_graph::{GraphCredential, GraphSourceConfig};
use m365_emulator::{Emulator, EmulatorConfig};

use crate::clock::{Clock, ShiftedClock, SystemClock};
use crate::config::{Config, DirectoryConfig, SourceConfig};
use crate::service::{self, RunningService, ServiceOptions};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[arg(long, default_value = "calbridge.toml")]
    pub config: PathBuf,
    /// Set a damaged SQLite store aside (it is kept) and start with a new one: the sealed
    /// secrets the key still opens are copied over, people and calendars are read again from
    /// the sources.
    #[arg(long)]
    pub rebuild_store: bool,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the API and admin page listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// People in the generated organisation.
    #[arg(long, default_value_t = 300)]
    pub users: usize,
    /// Seed of the generated organisation (the same seed gives the same people and meetings).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Folder for the demo's database and key; default: a new folder under the temp dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Stop after the first sync instead of running until Ctrl-C (for scripts).
    #[arg(long)]
    pub exit_after_sync: bool,
    /// How calbridge reaches the emulated organisation: Microsoft Graph (Microsoft 365), EWS
    /// (Exchange on premises: NTLM service account with impersonation, streaming
    /// notifications), or both side by side.
    #[arg(long, value_enum, default_value_t = DemoSource::Graph)]
    pub source: DemoSource,
    /// Run the demo as if it were this instant (RFC 3339, e.g. 2026-12-07T09:42:00Z): the
    /// organisation's calendars are laid out around it and the clock runs on from it, so that
    /// the same seed and instant show the same presence on any day.
    #[arg(long, value_name = "INSTANT")]
    pub at: Option<jiff::Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoSource {
    Graph,
    Ews,
    Both,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    if config.sources.is_empty() {
        anyhow::bail!(
            "{} has no [[sources]]: add one with a [sources.graph] table (see examples/calbridge.toml)",
            args.config.display()
        );
    }
    if let Some(warning) = config.inline_secrets_warning(&args.config) {
        tracing::warn!("{warning}");
    }
    // Listening before anything starts: a stop asked during start-up is not lost, and a
    // SIGHUP then (whose default action ends the process) waits for the service to be up.
    let stop = stop_signal();
    let hangups = hangup_signal();
    if args.rebuild_store {
        eprintln!("{}", service::rebuild_store(&config).await?);
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let running = service::start(
        config,
        ServiceOptions {
            clock,
            listener: None,
        },
    )
    .await?;
    running.reloader.read_from(args.config.clone());
    let reloads =
        hangups.map(|hangups| tokio::spawn(reload_on_hangup(hangups, running.reloader.clone())));
    eprintln!("calbridge listens on http://{}", running.address);
    if running.api_token_generated {
        println!("api-token: {}", running.api_token.expose());
        eprintln!(
            "(generated because calbridge.toml sets no [api] token; it is kept encrypted in the store)"
        );
    }
    let served = serve_until_interrupted(running, false, stop).await;
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    served
}

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// The running service's configuration file: its `[api]` says where the service listens
    /// and its token. The service reads its own file again, the one it was started with.
    #[arg(long, default_value = "calbridge.toml")]
    pub config: PathBuf,
    /// The service's address when the file does not say it (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    pub url: Option<String>,
    /// The API token, when calbridge.toml sets none (calbridge printed the one it generated at
    /// its first start). Also from the environment.
    #[arg(long, env = "CALBRIDGE_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `calbridge reload`: asks the running service to read its configuration again.
pub async fn reload(args: ReloadArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config).map_err(|error| {
        anyhow::anyhow!(
            "{error}\n(the running service would refuse this file too: fix it, then reload)"
        )
    })?;
    let url = match &args.url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("http://{}", local_address(&config.api.listen)),
    };
    let token = match (&args.token, &config.api.token) {
        (Some(token), _) => token.clone(),
        (None, Some(token)) => token.expose().to_string(),
        (None, None) => bail!(
            "{} sets no [api] token: pass the one calbridge generated with --token (or CALBRIDGE_API_TOKEN), or send the service SIGHUP (kill -HUP <pid>)",
            args.config.display()
        ),
    };
    let response = calbridge_net::build_http_client(None)?
        .post(format!("{url}/api/v1/reload"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .with_context(|| format!("cannot reach the service at {url}: is it running?"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.with_context(|| {
        format!("the service at {url} gave an answer that is not JSON (HTTP {status})")
    })?;
    if !status.is_success() {
        bail!(
            "the service refused the reload (HTTP {status}): {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    let report: crate::reload::ReloadReport = serde_json::from_value(body)
        .with_context(|| format!("the answer of {url} is not a reload report"))?;
    for line in report.lines() {
        println!("{line}");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct PanelUrlArgs {
    /// The room's address, as the directory's `rooms` entry follows it.
    pub room: String,
    /// Replace the panel key first: every panel link made before stops working (each panel
    /// then needs its new URL).
    #[arg(long)]
    pub rotate: bool,
    /// The service's configuration file: its `[store]` holds the panel key, its
    /// `api.public_url` (else `api.listen`) begins the URL.
    #[arg(long, default_value = "calbridge.toml")]
    pub config: PathBuf,
}

/// `calbridge panel-url`: the panel URL of a room, from the panel key in the store.
pub async fn panel_url(args: PanelUrlArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let room = calbridge_domain::MailboxAddress::parse(&args.room).map_err(|error| {
        anyhow::anyhow!(
            "the room `{}`: {error}",
            calbridge_domain::shorten(&args.room, 80)
        )
    })?;
    let opened = crate::service::open_store_for_command(&config)
        .await
        .context("the panel key is kept in the store, which cannot be opened: while `calbridge run` holds an SQLite store, copy the panel URL from the admin page's Rooms tab (or GET /api/v1/rooms/{room}/panel), or stop the service first")?;
    let key_choice = if args.rotate {
        PanelKeyChoice::Replace
    } else {
        PanelKeyChoice::Current
    };
    let made = panel_url_in(&config, opened.store().as_ref(), &room, key_choice).await;
    opened.close().await;
    let url = made?;
    if args.rotate {
        println!("The panel key was replaced: every panel link made before stops working; give each panel its new URL.");
    }
    println!("{url}");
    Ok(())
}

/// Which panel key a panel URL is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelKeyChoice {
    /// The store's key (made on its first use).
    Current,
    /// A new key, replacing the store's: every panel link made before stops working.
    Replace,
}

/// The panel URL of `room` (a followed room) under the store's panel key.
pub async fn panel_url_in(
    config: &Config,
    store: &dyn calbridge_store::Store,
    room: &calbridge_domain::MailboxAddress,
    key_choice: PanelKeyChoice,
) -> anyhow::Result<String> {
    let rooms = store
        .list_rooms()
        .await
        .context("cannot read the rooms from the store")?;
    if !rooms.iter().any(|(key, _)| &key.address == room) {
        bail!(
            "no room {room} is followed: rooms come from a [[directory]] entry with rooms = \"all\" or a room list's address, and are known once the service has read them"
        );
    }
    let key = match key_choice {
        PanelKeyChoice::Replace => crate::api::panel::rotate_panel_key(store).await?,
        PanelKeyChoice::Current => crate::api::panel::panel_key(store).await?,
    };
    let base = match &config.api.public_url {
        Some(public_url) => public_url.trim_end_matches('/').to_string(),
        None => format!("http://{}", local_address(&config.api.listen)),
    };
    Ok(format!(
        "{base}{}",
        crate::api::panel::panel_path(&key, room)
    ))
}

/// Where to reach a listen address from this machine: a wildcard address means loopback.
fn local_address(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(address) if address.ip().is_unspecified() => {
            let loopback: std::net::IpAddr = if address.is_ipv6() {
                std::net::Ipv6Addr::LOCALHOST.into()
            } else {
                std::net::Ipv4Addr::LOCALHOST.into()
            };
            std::net::SocketAddr::new(loopback, address.port()).to_string()
        }
        _ => listen.to_string(),
    }
}

/// SIGHUP, caught from this call on; `None` where there is no such signal.
#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<std::convert::Infallible> {
    None
}

/// Reads the configuration again at every SIGHUP; the reloader logs what it did.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reloader: Arc<crate::reload::Reloader>,
) {
    while hangups.recv().await.is_some() {
        // What was applied is logged by the reloader, line by line.
        if let Err(error) = reloader.reload().await {
            tracing::error!("reload: {error}");
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_: std::convert::Infallible, _: Arc<crate::reload::Reloader>) {}

pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("calbridge-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let stop = stop_signal();
    eprintln!(
        "Starting the Microsoft 365 emulator with {} generated people…",
        args.users
    );
    let mut emulator_config = EmulatorConfig::generated(args.users, args.seed);
    emulator_config.state_dir = Some(data_dir.join("emulator"));
    let clock: Arc<dyn Clock> = match args.at {
        Some(at) => {
            eprintln!("The demo's clock starts at {at} and runs on from there.");
            emulator_config.clock = m365_emulator::Clock::starting_at(at);
            Arc::new(ShiftedClock::starting_at(at))
        }
        None => Arc::new(SystemClock),
    };
    let emulator = Emulator::start(emulator_config)
        .await
        .context("the bundled Microsoft 365 emulator did not start")?;
    let ready = emulator.ready().clone();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (choose another with --listen)",
                args.listen
            )
        })?;
    let address = listener.local_addr()?;
    let mut config = demo_config(&ready, &data_dir, &format!("http://{address}"))?;
    if args.source != DemoSource::Graph {
        if args.source == DemoSource::Ews {
            config.sources.clear();
            config.directory.clear();
        }
        let (source, directory, _) = ews_demo_source(
            &ready,
            &data_dir,
            SourceId("onprem".to_string()),
            calbridge_sources_ews::WindowRead::CalendarView,
        )
        .await
        .context("cannot set up the demo's EWS source")?;
        config.sources.push(source);
        config.directory.push(directory);
    }
    let running = service::start(
        config,
        ServiceOptions {
            clock,
            listener: Some(listener),
        },
    )
    .await?;
    eprintln!(
        "Emulated tenant: {} (Graph at {}, EWS at {})",
        ready.tenant_id, ready.graph_url, ready.ews_url
    );
    eprintln!("Database: {}", data_dir.join("calbridge.sqlite").display());
    println!(
        "admin page: http://{}/#token={}",
        running.address,
        running.api_token.expose()
    );
    println!("api-token: {}", running.api_token.expose());
    let outcome = if args.exit_after_sync {
        show_progress(&running).await;
        print_summary(&running);
        let report = running.shutdown().await;
        report_tasks(&report);
        Ok(())
    } else {
        serve_until_interrupted(running, true, stop).await
    };
    emulator.shutdown().await;
    outcome
}

/// The configuration `demo` runs with: one Graph source pointed at the emulator, the
/// emulator's "all people" group as the directory, change notifications to our own port.
pub fn demo_config(
    ready: &m365_emulator::ReadyInfo,
    data_dir: &std::path::Path,
    public_url: &str,
) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.store.path = Some(data_dir.join("calbridge.sqlite"));
    config.api.public_url = Some(public_url.to_string());
    let source = demo_source(ready)?;
    let id = source.id.clone();
    config.sources.push(source);
    config.directory.push(DirectoryConfig {
        group_id: Some(
            ready
                .group_id
                .clone()
                .context("the generated organisation has no group")?,
        ),
        refresh_seconds: 300,
        ..DirectoryConfig::new(id)
    });
    Ok(config)
}

/// The Graph source `demo` on the emulator `ready`: its app's client secret, the emulator's
/// authority and Graph, and its CA.
pub fn demo_source(ready: &m365_emulator::ReadyInfo) -> anyhow::Result<SourceConfig> {
    let mut graph = GraphSourceConfig::new(
        ready.tenant_id.clone(),
        ready.client_id.clone(),
        GraphCredential::ClientSecret(Secret::new(
            ready
                .client_secret
                .clone()
                .context("the emulator's app has no client secret")?,
        )),
    );
    graph.authority_url = ready.base_url.clone();
    graph.graph_url = ready.base_url.clone();
    // The emulator checks the audience like Entra ID does: ask for Graph's real resource.
    graph.token_scope = Some("https://graph.microsoft.com/.default".to_string());
    graph.extra_root_ca = Some(ready.ca_cert.clone());
    Ok(SourceConfig {
        id: SourceId("demo".to_string()),
        secret_expires_on: None,
        graph: Some(graph),
        ews: None,
    })
}

/// An EWS source on the emulator's on-premises side, as an administrator would set it up: the
/// NTLM service account with impersonation, the direct `ews_url`, and a directory file with
/// the generated people's addresses (`people.csv` in `data_dir`). Returns the source, its
/// directory entry and the number of people.
pub async fn ews_demo_source(
    ready: &m365_emulator::ReadyInfo,
    data_dir: &std::path::Path,
    id: SourceId,
    read: calbridge_sources_ews::WindowRead,
) -> anyhow::Result<(SourceConfig, DirectoryConfig, usize)> {
    let client = calbridge_net::build_http_client(Some(&ready.ca_cert))?;
    let token = graph_token(&client, ready).await?;
    let group = ready
        .group_id
        .clone()
        .context("the generated organisation has no group")?;
    let addresses = group_mail_addresses(&client, &token, ready, &group).await?;
    let directory = data_dir.join(format!("{}-people.csv", id.0));
    let mut csv = String::from("address\n");
    for address in &addresses {
        csv.push_str(address);
        csv.push('\n');
    }
    std::fs::write(&directory, csv)
        .with_context(|| format!("cannot write {}", directory.display()))?;
    let mut ews = calbridge_sources_ews::EwsSourceConfig::new(
        ready
            .ews_user
            .clone()
            .context("the emulator has no EWS service account")?,
        Secret::new(
            ready
                .ews_password
                .clone()
                .context("the emulator's EWS service account has no password")?,
        ),
    );
    ews.auth = calbridge_sources_ews::AuthMethod::Ntlm;
    ews.access = calbridge_sources_ews::MailboxAccess::Impersonation;
    ews.ews_url = Some(ready.ews_url.clone());
    ews.extra_root_ca = Some(ready.ca_cert.clone());
    ews.read = read;
    let source = SourceConfig {
        id: id.clone(),
        secret_expires_on: None,
        graph: None,
        ews: Some(ews),
    };
    let entry = DirectoryConfig {
        refresh_seconds: 300,
        ..DirectoryConfig::of_file(id, directory)
    };
    Ok((source, entry, addresses.len()))
}

/// The `mail` of every member of `group`, following `@odata.nextLink`.
pub(crate) async fn group_mail_addresses(
    client: &reqwest::Client,
    token: &str,
    ready: &m365_emulator::ReadyInfo,
    group: &str,
) -> anyhow::Result<Vec<String>> {
    let mut addresses = Vec::new();
    let mut next = Some(format!(
        "{}/groups/{group}/members?$top=999&$select=mail",
        ready.graph_url
    ));
    let mut pages = 0;
    while let Some(url) = next.take() {
        pages += 1;
        if pages > 10_000 {
            bail!("the emulator's group listing does not end");
        }
        let response = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .context("listing the group's members failed")?;
        if !response.status().is_success() {
            bail!(
                "the emulator refused the group listing: HTTP {}",
                response.status()
            );
        }
        let page: serde_json::Value = response
            .json()
            .await
            .context("the group listing is not JSON")?;
        let members = page["value"]
            .as_array()
            .context("the group listing has no `value` array")?;
        addresses.extend(
            members
                .iter()
                .filter_map(|member| member["mail"].as_str())
                .filter(|mail| !mail.is_empty())
                .map(str::to_string),
        );
        next = page["@odata.nextLink"].as_str().map(str::to_string);
    }
    Ok(addresses)
}

/// An app-only Graph token from the emulator for its generated app.
pub(crate) async fn graph_token(
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

/// A progress bar on stderr while the first sync runs.
async fn show_progress(running: &RunningService) {
    let started = std::time::Instant::now();
    loop {
        let (mut total, mut done, mut failed, mut finished) = (0, 0, 0, true);
        let progresses = running
            .syncs
            .values()
            .map(|sync| &sync.progress)
            .chain(running.ews_syncs.values().map(|sync| &sync.progress));
        for progress in progresses {
            total += progress.total.load(Relaxed);
            done += progress.done.load(Relaxed);
            failed += progress.failed.load(Relaxed);
            finished &= progress.finished.load(Relaxed);
        }
        let width = 30;
        let filled = if total == 0 {
            width
        } else {
            done * width / total.max(1)
        };
        eprint!(
            "\rfirst sync [{}{}] {done}/{total} calendars, {failed} failed, {:.1} s ",
            "#".repeat(filled.min(width)),
            ".".repeat(width - filled.min(width)),
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        if finished {
            eprintln!();
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_summary(running: &RunningService) {
    let mut counts = std::collections::BTreeMap::new();
    for person in running.hub.people() {
        if let Some((decision, _)) = running.hub.decision(&person) {
            *counts.entry(decision.activity.as_str()).or_insert(0usize) += 1;
        }
    }
    let summary: Vec<String> = counts
        .iter()
        .map(|(activity, n)| format!("{n} {activity}"))
        .collect();
    eprintln!("presence now: {}", summary.join(", "));
}

fn report_tasks(report: &[(&'static str, String)]) {
    for (task, ended) in report {
        tracing::info!("task {task}: {ended}");
    }
}

/// Resolves when calbridge is asked to stop.
type StopSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Ctrl-C, or SIGTERM from a service manager (systemd, Docker), both stop gracefully. The
/// signals are caught from this call on (not from the first poll), so that one arriving while
/// the service starts is not lost to the default action, which kills the process.
fn stop_signal() -> StopSignal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            return Box::pin(async move {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            });
        }
    }
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn serve_until_interrupted(
    running: RunningService,
    print_changes: bool,
    mut stop: StopSignal,
) -> anyhow::Result<()> {
    // A service manager that stops calbridge during its first sync gets a graceful stop too
    // (the shard leases given back, the store closed), not a kill.
    let interrupted = tokio::select! {
        _ = &mut stop => true,
        _ = show_progress(&running) => false,
    };
    if !interrupted {
        follow_changes(&running, print_changes, &mut stop).await;
    }
    eprintln!("Stopping…");
    let report = running.shutdown().await;
    for (task, ended) in &report {
        eprintln!("  {task}: {ended}");
    }
    Ok(())
}

/// After the first sync: the presence summary, then (with `print_changes`) every change as
/// it happens, until `stop`.
async fn follow_changes(running: &RunningService, print_changes: bool, stop: &mut StopSignal) {
    print_summary(running);
    let mut changes = running.hub.subscribe();
    if print_changes {
        eprintln!("Presence changes as they happen (Ctrl-C to stop):");
    }
    loop {
        tokio::select! {
            _ = stop.as_mut() => break,
            change = changes.recv(), if print_changes => {
                match change {
                    Ok(change) => {
                        let local = change.decided_at.to_zoned(running.hub.locale().zone.zone().clone());
                        println!(
                            "{}  {:<32} {:<9} {}",
                            local.strftime("%H:%M:%S"),
                            change.person.address.as_str(),
                            change.decision.activity.as_str(),
                            change.decision.note.split(" #").next().unwrap_or("")
                        );
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        eprintln!("({missed} changes not shown: the terminal is too slow)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod panel_url_tests {
    use super::*;
    use calbridge_domain::{MailboxAddress, RoomInfo};
    use calbridge_store::{PersonKey, PersonUpsert, SecretKey, SqliteStore, Store};

    async fn store_with_room(room: &MailboxAddress) -> SqliteStore {
        let store = SqliteStore::open_in_memory(SecretKey::generate())
            .await
            .expect("a store");
        let source = SourceId("contoso".to_string());
        store
            .upsert_person(&PersonUpsert {
                key: PersonKey {
                    source: source.clone(),
                    address: room.clone(),
                },
                display_name: Some("Room 1".to_string()),
                sip_uri: None,
            })
            .await
            .expect("the room as a person");
        store
            .set_rooms(&source, &[RoomInfo::new(room.clone())])
            .await
            .expect("the room's details");
        store
    }

    fn config(public_url: Option<&str>) -> Config {
        let mut config = Config::parse(include_str!("../../../examples/calbridge.toml"))
            .expect("the example configuration");
        config.api.public_url = public_url.map(str::to_string);
        config.api.listen = "0.0.0.0:8080".to_string();
        config
    }

    #[tokio::test]
    async fn panel_url_opens_the_rooms_panel_and_rotation_replaces_it() {
        let room = MailboxAddress::parse("room.1@contoso.example").expect("an address");
        let store = store_with_room(&room).await;
        let first = panel_url_in(
            &config(Some("https://calbridge.example/")),
            &store,
            &room,
            PanelKeyChoice::Current,
        )
        .await
        .expect("a URL");
        assert!(
            first.starts_with("https://calbridge.example/panel/room.1@contoso.example?token="),
            "{first}"
        );
        let again = panel_url_in(&config(None), &store, &room, PanelKeyChoice::Current)
            .await
            .expect("a URL");
        assert_eq!(
            again,
            first.replace("https://calbridge.example", "http://127.0.0.1:8080"),
            "the same key, the listen address without a public URL"
        );
        let token = |url: &str| {
            url.split_once("?token=")
                .map(|(_, token)| token.to_string())
        };
        let rotated = panel_url_in(&config(None), &store, &room, PanelKeyChoice::Replace)
            .await
            .expect("a URL");
        assert_ne!(token(&rotated), token(&first), "a new key, a new token");
        let key = store
            .get_secret(crate::api::panel::PANEL_KEY_SECRET)
            .await
            .expect("the store answers");
        assert_eq!(
            crate::api::panel::check_panel_token(key.as_ref(), &room, token(&first).as_deref()),
            crate::api::panel::PanelAccess::Wrong,
            "the old link stops working"
        );
        assert_eq!(
            crate::api::panel::check_panel_token(key.as_ref(), &room, token(&rotated).as_deref()),
            crate::api::panel::PanelAccess::Granted
        );
    }

    #[tokio::test]
    async fn panel_url_of_an_address_that_is_no_room_names_the_directory_entry() {
        let room = MailboxAddress::parse("room.1@contoso.example").expect("an address");
        let store = store_with_room(&room).await;
        let person = MailboxAddress::parse("ann@contoso.example").expect("an address");
        let error = panel_url_in(&config(None), &store, &person, PanelKeyChoice::Current)
            .await
            .expect_err("no room");
        let message = error.to_string();
        assert!(
            message.contains("no room ann@contoso.example is followed"),
            "{message}"
        );
        assert!(message.contains("rooms = \"all\""), "{message}");
        assert!(
            store
                .get_secret(crate::api::panel::PANEL_KEY_SECRET)
                .await
                .expect("the store answers")
                .is_none(),
            "no key is made for nothing"
        );
    }
}
