//! Wiring the pipeline together: store → hub → sources → directory → API, each long-running
//! piece a task with a shutdown path.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use calbridge_domain::{Secret, SourceId};
use calbridge_sources_graph::{GraphSource, SubjectFetch};
use calbridge_store::{
    CurrentPresence, PersonKey, PersonUpsert, PostgresStore, SecretKey, SqliteStore, Store,
};
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState};
use crate::clock::{Clock, GraphClockAdapter};
use crate::config::{Config, DirectoryConfig, StoreTarget};
use crate::directory::guard::{self, ShrinkGuard, Verdict};
use crate::directory::{self, DirectoryPerson};
use crate::hub::{PresenceChange, PresenceHub};
use crate::reload::Reloader;
use crate::shutdown::{self, Shutdown, Trigger};
use crate::sync::ews::EwsSync;
use crate::sync::graph::GraphSync;
use crate::sync::DirectoryTarget;
use crate::sync::Work;

pub struct ServiceOptions {
    pub clock: Arc<dyn Clock>,
    /// A listener bound beforehand (tests and the demo bind port 0 first so that they know the
    /// address before the service starts); `None` binds `api.listen`.
    pub listener: Option<tokio::net::TcpListener>,
}

/// Problems that are not about one person's sync (directory lines, start-up), for the admin
/// page's error list.
pub type Problems = Arc<Mutex<Vec<(Timestamp, String)>>>;

pub struct RunningService {
    /// Re-reads the configuration file (SIGHUP, `calbridge reload`) once told where it is.
    pub reloader: Arc<Reloader>,
    pub address: SocketAddr,
    pub api_token: Secret,
    /// True when calbridge made the token up (none configured): `run` prints it then.
    pub api_token_generated: bool,
    pub hub: Arc<PresenceHub>,
    pub syncs: HashMap<SourceId, Arc<GraphSync>>,
    pub ews_syncs: HashMap<SourceId, Arc<EwsSync>>,
    pub store: Arc<dyn Store>,
    pub problems: Problems,
    /// Each source's directory: people, a change held by the shrink guard, failing reads.
    pub directory_health: DirectoryHealthMap,
    pub sip: Option<(
        Arc<calbridge_publish_sip::SipPublisher>,
        Arc<crate::publish::SipAddressBook>,
    )>,
    /// `[rooms] check_in_minutes`'s guard; `None` when check-in is off.
    pub check_ins: Option<Arc<crate::check_in::CheckIns>>,
    trigger: Trigger,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// Closed after the tasks ended: SQLite's file is checkpointed and its lock released even
    /// if something still holds an `Arc` of the store.
    store_backend: StoreBackend,
}

/// The opened store by its concrete type, for what `dyn Store` does not offer (closing).
enum StoreBackend {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
}

impl StoreBackend {
    async fn open(config: &Config, key: SecretKey) -> anyhow::Result<StoreBackend> {
        let target = config.store.target().map_err(anyhow::Error::msg)?;
        Ok(match target {
            StoreTarget::Sqlite(path) => {
                if let Some(parent) = path.parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent).with_context(|| {
                            format!("cannot create the folder of {}", path.display())
                        })?;
                    }
                }
                // The store's messages name the file and say what to do; their sources are
                // already in the text, so the chain is not repeated after it.
                let store = SqliteStore::open(&path, key)
                    .await
                    .map_err(|error| anyhow::anyhow!("{error}"))?;
                tracing::info!(path = %path.display(), "store: SQLite");
                StoreBackend::Sqlite(Arc::new(store))
            }
            StoreTarget::Postgres(url) => {
                // The location names server, database and user; the URL's password never
                // reaches a log line or a message.
                let store = PostgresStore::open(&url, key)
                    .await
                    .map_err(|error| anyhow::anyhow!("{error}"))?;
                tracing::info!(location = %url.location(), "store: PostgreSQL");
                StoreBackend::Postgres(Arc::new(store))
            }
        })
    }

    fn shared(&self) -> Arc<dyn Store> {
        match self {
            StoreBackend::Sqlite(store) => store.clone(),
            StoreBackend::Postgres(store) => store.clone(),
        }
    }

    async fn close(&self) {
        match self {
            StoreBackend::Sqlite(store) => store.close().await,
            StoreBackend::Postgres(store) => store.close().await,
        }
    }
}

impl RunningService {
    /// Waits until every source finished its first sync (resolution, window reads,
    /// subscriptions).
    pub async fn first_sync_done(&self) {
        self.first_sync_reached(|progress| &progress.finished).await;
    }

    /// Waits until every source read every window of its first sync: presence is right for
    /// everyone from then on, while subscriptions may still be in the making.
    pub async fn first_windows_read(&self) {
        self.first_sync_reached(|progress| &progress.windows_read)
            .await;
    }

    async fn first_sync_reached(
        &self,
        flag: impl Fn(&crate::sync::engine::Progress) -> &std::sync::atomic::AtomicBool,
    ) {
        let reached = |progress: &crate::sync::engine::Progress| {
            flag(progress).load(std::sync::atomic::Ordering::Relaxed)
        };
        loop {
            if self.ews_syncs.values().all(|sync| reached(&sync.progress))
                && self.syncs.values().all(|sync| reached(&sync.progress))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every task and reports how each ended.
    /// Stops every task at once without any goodbye, as `kill -9` would: no shard is given
    /// back, nothing is flushed. For tests of what the other instances do then.
    pub fn abort(self) {
        for (_, task) in self.tasks {
            task.abort();
        }
    }

    pub async fn shutdown(self) -> Vec<(&'static str, String)> {
        self.trigger.fire();
        let mut report = Vec::new();
        for (name, task) in self.tasks {
            let ended = match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(())) => "stopped".to_string(),
                Ok(Err(error)) if error.is_panic() => "panicked".to_string(),
                Ok(Err(error)) => format!("failed: {error}"),
                Err(_) => "did not stop within 10 s".to_string(),
            };
            report.push((name, ended));
        }
        self.store_backend.close().await;
        report
    }
}

/// How to make rooms appear in Graph's places API, for the status page when a `rooms` entry
/// finds none and for `GET /api/v1/rooms` (`hints`) when no room is followed. Microsoft's
/// "Configure rooms and workspaces for Places" and `Set-Place` documentation: rooms are listed
/// once they belong to a room list (a distribution group made with `-RoomList`), and changes to
/// rooms can take up to 24 hours to show.
pub const ROOM_LISTS_HINT: &str = "Rooms appear in Graph's places API once they are in a room list. \
In Exchange Online PowerShell, create a room list (New-DistributionGroup -RoomList -Name \"Building 1 rooms\"), \
add the room mailboxes to it (Add-DistributionGroupMember -Identity \"Building 1 rooms\" -Member room1@contoso.com), and give each room its building, floor and capacity \
(Set-Place -Identity room1@contoso.com -Building \"Building 1\" -Floor 2 -Capacity 8). \
Microsoft notes that new rooms and changes to them can take up to 24 hours to show. \
calbridge follows them through a [[directory]] entry with rooms = \"all\" or the room list's address \
(Graph application permission Place.Read.All)";

/// 24 random bytes from the operating system, as hex. There is no fallback: a token made
/// from anything guessable (a clock) would open every calendar to whoever guesses it.
pub(crate) fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        anyhow::anyhow!(
            "the operating system's random number generator failed, so no secret token can be made; set [api] token in calbridge.toml"
        )
    })?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The key that seals the store's secrets, as found at start.
enum KeyOpening {
    /// From the key file or the variable `store.key_env` names.
    Loaded(SecretKey),
    /// No key file yet: a key made in memory, written to `path` only once the store turns out
    /// to hold nothing sealed with another key (see [`keep_new_key`]).
    New { key: SecretKey, path: PathBuf },
}

fn open_key(config: &Config) -> anyhow::Result<KeyOpening> {
    if let Some(variable) = &config.store.key_env {
        return Ok(KeyOpening::Loaded(SecretKey::from_env(variable)?));
    }
    let path = config.store.key_path();
    if path.exists() {
        Ok(KeyOpening::Loaded(SecretKey::from_file(&path)?))
    } else {
        Ok(KeyOpening::New {
            key: SecretKey::generate(),
            path,
        })
    }
}

/// Writes the new key of a first start, unless the store already holds values sealed with a
/// key: then the key file was lost (or the configuration points elsewhere), and a new key
/// would make those values unreadable for good, so the start is refused instead. When another
/// instance on the same PostgreSQL database wrote the key file first, the store is opened again
/// with that key.
async fn keep_new_key(
    config: &Config,
    store_backend: StoreBackend,
    key: SecretKey,
    path: &std::path::Path,
) -> anyhow::Result<StoreBackend> {
    let (n_sealed, location, way_out) = match &store_backend {
        StoreBackend::Sqlite(store) => (
            store.count_sealed().await,
            calbridge_store::StoreLocation::File(store.path().to_path_buf()),
            "run `calbridge run --rebuild-store` to give them up: it sets the database aside and \
             builds a new store with a new key (people and calendars are read again from the \
             sources, a generated API token and the Graph subscriptions are made anew)",
        ),
        StoreBackend::Postgres(store) => (
            store.count_sealed().await,
            store.location().clone(),
            "give them up by re-creating the database (calbridge reads people and calendars \
             again from the sources); calbridge does not delete them for you",
        ),
    };
    let n_sealed = match n_sealed {
        Ok(n_sealed) => n_sealed,
        Err(error) => {
            store_backend.close().await;
            return Err(error.into());
        }
    };
    if n_sealed > 0 || path.exists() {
        store_backend.close().await;
        // Another instance starting beside this one may have made the key (and sealed with
        // it) since `open_key` looked: then that key is the store's.
        if path.exists() {
            return StoreBackend::open(config, SecretKey::from_file(path)?).await;
        }
        return Err(calbridge_store::StoreError::KeyMissing {
            key_path: path.to_path_buf(),
            location: Box::new(location),
            n_sealed,
            way_out,
        }
        .into());
    }
    match key.write_new_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new key for secrets at rest");
            Ok(store_backend)
        }
        Err(_) if path.exists() => {
            store_backend.close().await;
            StoreBackend::open(config, SecretKey::from_file(path)?).await
        }
        Err(error) => {
            store_backend.close().await;
            Err(error.into())
        }
    }
}

/// `calbridge run --rebuild-store`: sets a damaged SQLite file aside and makes a new store
/// with the sealed secrets of the old one that the key still opens; returns what to tell the
/// operator. Without a key file, a new key is made (and kept once the rebuild succeeded).
pub async fn rebuild_store(config: &Config) -> anyhow::Result<String> {
    let path = match config.store.target().map_err(anyhow::Error::msg)? {
        StoreTarget::Sqlite(path) => path,
        StoreTarget::Postgres(_) => anyhow::bail!(
            "--rebuild-store rebuilds an SQLite store; a PostgreSQL database is checked and \
             repaired with PostgreSQL's own tools (or re-created: calbridge reads people and \
             calendars again from the sources)"
        ),
    };
    let (key, new_key_path) = match open_key(config)? {
        KeyOpening::Loaded(key) => (key, None),
        KeyOpening::New { key, path } => (key, Some(path)),
    };
    let rebuilt = SqliteStore::rebuild(&path, key.clone())
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    if let Some(key_path) = &new_key_path {
        key.write_new_file(key_path)?;
    }
    let Some(aside) = &rebuilt.set_aside else {
        return Ok(format!(
            "store: {} did not exist; nothing to rebuild, a new store is made",
            path.display()
        ));
    };
    let mut report = format!(
        "store: the old file is kept as {} (delete it once the service runs well); a new store \
         was made at {}; sealed secrets kept: {}",
        aside.display(),
        path.display(),
        rebuilt.kept.len()
    );
    if !rebuilt.kept.is_empty() {
        report.push_str(&format!(" ({})", rebuilt.kept.join(", ")));
    }
    report.push_str(&format!(", lost: {}", rebuilt.lost.len()));
    if !rebuilt.lost.is_empty() {
        report.push_str(&format!(
            " ({}; made anew where calbridge made them)",
            rebuilt.lost.join(", ")
        ));
    }
    if let Some(reason) = &rebuilt.unreadable {
        report.push_str(&format!(
            "; the old file's secrets could not be read at all ({reason})"
        ));
    }
    if let Some(key_path) = &new_key_path {
        report.push_str(&format!(
            "; a new key was written to {}",
            key_path.display()
        ));
    }
    report.push_str("; people and calendars are read again from the sources");
    Ok(report)
}

/// The store opened for a command beside the service (`calbridge login`): SQLite's lock
/// refuses it while the service runs on the same file.
pub struct OpenedStore {
    backend: StoreBackend,
}

impl OpenedStore {
    pub fn store(&self) -> Arc<dyn Store> {
        self.backend.shared()
    }

    pub async fn close(self) {
        self.backend.close().await;
    }
}

/// Opens the configured store with its key, making key and store on a first use as `run` does.
pub async fn open_store_for_command(config: &Config) -> anyhow::Result<OpenedStore> {
    let backend = match open_key(config)? {
        KeyOpening::Loaded(key) => StoreBackend::open(config, key).await?,
        KeyOpening::New { key, path } => {
            let backend = StoreBackend::open(config, key.clone()).await?;
            keep_new_key(config, backend, key, &path).await?
        }
    };
    Ok(OpenedStore { backend })
}

/// The secret saved as `name`, or a new random one saved there; `true` when it was made now.
pub(crate) async fn secret_or_new(store: &dyn Store, name: &str) -> anyhow::Result<(Secret, bool)> {
    if let Some(secret) = store.get_secret(name).await? {
        return Ok((secret, false));
    }
    let secret = Secret::new(random_token()?);
    store.put_secret(name, &secret).await?;
    Ok((secret, true))
}

pub async fn start(config: Config, options: ServiceOptions) -> anyhow::Result<RunningService> {
    let clock = options.clock;
    let store_backend = match open_key(&config)? {
        KeyOpening::Loaded(key) => StoreBackend::open(&config, key).await?,
        KeyOpening::New { key, path } => {
            let store_backend = StoreBackend::open(&config, key.clone()).await?;
            keep_new_key(&config, store_backend, key, &path).await?
        }
    };
    // On PostgreSQL this instance's writes of a person's calendar, sync state and presence are
    // fenced by its shard leases (see `crate::cluster`); the fence is filled by the lease rounds.
    let fence = match &store_backend {
        StoreBackend::Postgres(_) => Some(calbridge_store::cluster::Fence::new(
            &crate::cluster::new_instance_id()?,
        )),
        StoreBackend::Sqlite(_) => None,
    };
    let store: Arc<dyn Store> = match (&store_backend, &fence) {
        (StoreBackend::Postgres(postgres), Some(fence)) => Arc::new(postgres.fenced(fence.clone())),
        _ => store_backend.shared(),
    };
    let (api_token, api_token_generated) = match &config.api.token {
        Some(token) => {
            crate::config::check_api_token(token).map_err(anyhow::Error::msg)?;
            (token.clone(), false)
        }
        None => secret_or_new(store.as_ref(), "api.token").await?,
    };
    let (trigger, shutdown) = shutdown::channel();
    let (hub, persist_rx) = PresenceHub::new(
        config.presence.rules(),
        config.presence.locale(),
        clock.clone(),
        store.clone(),
    );
    let listener = match options.listener {
        Some(listener) => listener,
        None => tokio::net::TcpListener::bind(&config.api.listen)
            .await
            .with_context(|| format!("cannot listen on api.listen = {}", config.api.listen))?,
    };
    let address = listener.local_addr()?;
    let subjects = if config.presence.show_subject {
        SubjectFetch::Fetch
    } else {
        SubjectFetch::Skip
    };
    let mut syncs = HashMap::new();
    let mut queues = Vec::new();
    let mut ews_syncs = HashMap::new();
    let mut ews_queues = Vec::new();
    for source in &config.sources {
        if let Some(ews_config) = &source.ews {
            let ews = calbridge_sources_ews::EwsSource::new(ews_config.clone())
                .with_context(|| format!("source `{}`", source.id))?;
            let (sync, queue) = EwsSync::new(
                source.id.clone(),
                ews,
                store.clone(),
                hub.clone(),
                clock.clone(),
                config.sync.clone(),
            );
            ews_syncs.insert(source.id.clone(), sync.clone());
            ews_queues.push((sync, queue));
            continue;
        }
        let Some(graph_config) = &source.graph else {
            continue;
        };
        let graph_clock = Arc::new(GraphClockAdapter(clock.clone()));
        let delegated = graph_config.auth == calbridge_sources_graph::GraphAuth::Delegated;
        let graph = if delegated {
            let keeper = crate::sign_in::StoreKeeper::load(store.clone(), &source.id.0).await?;
            if calbridge_net::entra::RefreshTokenKeeper::current(keeper.as_ref()).is_none() {
                tracing::warn!(source = %source.id, "no account has signed in for this delegated source yet: run `calbridge login --source {}` or use \"Sign in with Microsoft\" on the admin page", source.id);
            }
            GraphSource::delegated(graph_config, graph_clock, Default::default(), keeper)
        } else {
            GraphSource::new(graph_config, graph_clock)
        }
        .with_context(|| format!("source `{}`", source.id))?;
        let (client_state, _) = secret_or_new(
            store.as_ref(),
            &format!("source.{}.client_state", source.id),
        )
        .await?;
        let (sync, queue) = GraphSync::new(
            source.id.clone(),
            graph,
            store.clone(),
            hub.clone(),
            clock.clone(),
            config.sync.clone(),
            subjects,
            // Delegated permissions cannot subscribe to calendars shared with the account
            // ("Change notifications for Outlook resources"): such a source polls delta.
            if delegated {
                None
            } else {
                config.api.public_url.as_deref()
            },
            client_state,
            source.secret_expires_on,
        );
        syncs.insert(source.id.clone(), sync.clone());
        queues.push((sync, queue));
    }
    // Every sync engine, as the directory and handed-over work reach them.
    let targets: Vec<Arc<dyn DirectoryTarget>> = syncs
        .values()
        .map(|sync| sync.clone() as Arc<dyn DirectoryTarget>)
        .chain(
            ews_syncs
                .values()
                .map(|sync| sync.clone() as Arc<dyn DirectoryTarget>),
        )
        .collect();
    let problems: Problems = Arc::new(Mutex::new(Vec::new()));
    let directory_health: DirectoryHealthMap = Arc::default();
    let mut tasks: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
    // Several instances on one PostgreSQL divide the people by shard leases; the first round
    // of claims runs before the engines start, so that each begins with its own people.
    let cluster = match (&store_backend, &fence) {
        (StoreBackend::Postgres(postgres), Some(fence)) => {
            let instance_id = fence.instance_id().to_string();
            let ownership = crate::cluster::Ownership::by_leases(fence.clone());
            let ownership_for_work = ownership.clone();
            let ownership_for_feed = ownership.clone();
            for sync in syncs.values() {
                sync.share_by(ownership.clone());
                sync.subscribe_beside_other_instances();
            }
            for sync in ews_syncs.values() {
                sync.share_by(ownership.clone());
            }
            let lease = Duration::from_secs(config.cluster.lease_seconds);
            let name = config
                .cluster
                .instance_name
                .clone()
                .unwrap_or_else(crate::cluster::default_instance_name);
            let mut leases = postgres.leases(
                fence.clone(),
                name.clone(),
                jiff::SignedDuration::try_from(lease)
                    .unwrap_or(jiff::SignedDuration::from_secs(30)),
                clock.now(),
            );
            let first = leases
                .tick(clock.now())
                .await
                .map_err(|error| anyhow::anyhow!("cannot take part in the cluster: {error}"))?;
            tracing::info!(instance = %name, id = %instance_id, shards = first.gained.len(), "joined the cluster");
            let view: crate::cluster::SharedClusterView =
                Arc::new(Mutex::new(crate::cluster::ClusterView {
                    instance_id,
                    shards_held: leases.held().len(),
                    ..crate::cluster::ClusterView::default()
                }));
            let followers: Vec<Arc<dyn crate::cluster::ShardFollower>> = syncs
                .values()
                .map(|sync| sync.clone() as Arc<dyn crate::cluster::ShardFollower>)
                .chain(
                    ews_syncs
                        .values()
                        .map(|sync| sync.clone() as Arc<dyn crate::cluster::ShardFollower>),
                )
                .collect();
            tasks.push((
                "shard leases",
                tokio::spawn(crate::cluster::keep_leases(
                    leases,
                    followers,
                    clock.clone(),
                    lease,
                    view.clone(),
                    shutdown.clone(),
                )),
            ));
            tasks.push((
                "handed work",
                tokio::spawn(crate::cluster::serve_handed_work(
                    postgres.work_queue(),
                    ownership_for_work,
                    targets.clone(),
                    shutdown.clone(),
                )),
            ));
            // Every instance's live stream shows the changes the others decide.
            tasks.push((
                "presence feed",
                tokio::spawn(crate::feed::relay_presence(
                    postgres.presence_feed(),
                    ownership_for_feed,
                    hub.clone(),
                    clock.clone(),
                    shutdown.clone(),
                )),
            ));
            Some((view, postgres.work_queue()))
        }
        _ => None,
    };
    let (cluster, handed_work) = match cluster {
        Some((view, queue)) => (Some(view), Some(queue)),
        None => (None, None),
    };
    tasks.push((
        "presence store writer",
        tokio::spawn(persist_presence(
            store.clone(),
            persist_rx,
            shutdown.clone(),
        )),
    ));
    tasks.push((
        "presence timers",
        tokio::spawn(hub.clone().run_timers(shutdown.clone())),
    ));
    // `[rooms] check_in_minutes`: the guard that releases meetings nobody checked in.
    let check_ins = config.rooms.check_in_minutes.map(|minutes| {
        crate::check_in::CheckIns::new(
            minutes,
            config.rooms.release_comment.clone(),
            store.clone(),
            hub.clone(),
            clock.clone(),
            targets.clone(),
        )
    });
    if let Some(check_ins) = &check_ins {
        tasks.push((
            "room check-in guard",
            tokio::spawn(check_ins.clone().run(shutdown.clone())),
        ));
    }

    let sip = match &config.publish.sip {
        Some(sip_config) => {
            let publisher = Arc::new(
                calbridge_publish_sip::SipPublisher::start(sip_config.clone())
                    .await
                    .context("[publish.sip]")?,
            );
            let addresses = Arc::new(crate::publish::SipAddressBook::new(
                sip_config.effective_uri_template(),
            ));
            tasks.push((
                "sip publications saver",
                tokio::spawn(crate::publish::save_publications(
                    publisher.watch_publications(),
                    store.clone(),
                    shutdown.clone(),
                )),
            ));
            tasks.push((
                "sip publisher",
                tokio::spawn(crate::publish::run_sip(
                    publisher.clone(),
                    addresses.clone(),
                    hub.clone(),
                    store.clone(),
                    shutdown.clone(),
                )),
            ));
            Some((publisher, addresses))
        }
        None => None,
    };
    let webhooks = if config.publish.webhooks.is_empty() {
        None
    } else {
        let stop = shutdown.clone();
        let publisher = Arc::new(
            calbridge_publish_webhook::WebhookPublisher::start_sharing(
                config.publish.webhooks.clone(),
                store.clone(),
                match &store_backend {
                    StoreBackend::Postgres(postgres) => postgres.turns(),
                    StoreBackend::Sqlite(_) => calbridge_store::cluster::Turns::Everyone,
                },
                async move { stop.wait().await },
            )
            .context("[[publish.webhooks]]")?,
        );
        tasks.push((
            "webhook queue",
            tokio::spawn(crate::publish::run_webhooks(
                publisher.clone(),
                hub.clone(),
                shutdown.clone(),
            )),
        ));
        Some(publisher)
    };
    // Each source's directory entries, which a reload of the configuration can replace.
    let mut directory_channels = Vec::new();
    let mut directory_entries = HashMap::new();
    for sync in targets {
        let entries: Vec<DirectoryConfig> = config
            .directory
            .iter()
            .filter(|entry| &entry.source == sync.source_id())
            .cloned()
            .collect();
        let (entries_tx, entries_rx) = tokio::sync::watch::channel(entries);
        directory_entries.insert(sync.source_id().clone(), entries_tx);
        directory_channels.push((sync, entries_rx));
    }
    let reloader = Arc::new(Reloader::new(
        config.clone(),
        hub.clone(),
        syncs.clone(),
        ews_syncs.clone(),
        directory_entries,
    ));
    let connection_stats = Arc::new(crate::api::connections::ConnectionStats::default());
    tasks.push((
        "memory trim after connection bursts",
        tokio::spawn(crate::api::connections::trim_after_bursts(
            connection_stats.clone(),
            shutdown.clone(),
        )),
    ));
    let state = Arc::new(ApiState {
        hub: hub.clone(),
        store: store.clone(),
        syncs: syncs.clone(),
        ews_syncs: ews_syncs.clone(),
        token: api_token.clone(),
        clock: clock.clone(),
        started_at: clock.now(),
        window_hours: config.sync.window_hours,
        problems: problems.clone(),
        directory_health: directory_health.clone(),
        sip: sip.clone(),
        webhooks: webhooks.clone(),
        cluster: cluster.clone(),
        handed_work,
        reloader: reloader.clone(),
        streams: Arc::new(tokio::sync::Semaphore::new(config.api.max_streams.max(1))),
        connections: connection_stats.clone(),
        public_url: config.api.public_url.clone(),
        sign_ins: Arc::default(),
        room_show: config.rooms.show,
        room_keys: Default::default(),
        check_ins: check_ins.clone(),
    });
    let router = api::router(state);
    let api_shutdown = shutdown.clone();
    tasks.push((
        "http api",
        tokio::spawn(async move {
            let listener =
                crate::api::connections::CountingListener::new(listener, connection_stats);
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { api_shutdown.wait().await })
                .await;
            if let Err(error) = served {
                tracing::error!("the HTTP API stopped: {error}");
            }
        }),
    ));

    // The directory goes first so that the sources start with everyone in the store.
    for (sync, entries_rx) in directory_channels {
        // Each source has its own state: file times, retries and its shrink guard.
        let mut directory_state = DirectoryState::default();
        let entries = entries_rx.borrow().clone();
        refresh_directory(
            sync.as_ref(),
            store.as_ref(),
            &entries,
            &mut directory_state,
            &DirectoryReports {
                problems: &problems,
                health: &directory_health,
            },
            clock.as_ref(),
            Refresh::Start,
        )
        .await;
        tasks.push((
            "directory",
            tokio::spawn(follow_directory(
                sync.clone(),
                store.clone(),
                entries_rx,
                directory_state,
                (problems.clone(), directory_health.clone()),
                clock.clone(),
                shutdown.clone(),
            )),
        ));
    }
    for (sync, queue) in ews_queues {
        tasks.push(("ews sync", tokio::spawn(sync.run(queue, shutdown.clone()))));
    }
    for (sync, queue) in queues {
        tasks.push((
            "graph sync",
            tokio::spawn(sync.run(queue, shutdown.clone())),
        ));
    }
    Ok(RunningService {
        check_ins,
        reloader,
        address,
        api_token,
        api_token_generated,
        hub,
        syncs,
        ews_syncs,
        store,
        problems,
        directory_health,
        sip,
        trigger,
        tasks,
        store_backend,
    })
}

/// Re-reads one source's directory entries every `refresh_seconds` (the shortest of them),
/// and at once when a reload of the configuration changed them.
async fn follow_directory(
    sync: Arc<dyn DirectoryTarget>,
    store: Arc<dyn Store>,
    mut entries_rx: tokio::sync::watch::Receiver<Vec<DirectoryConfig>>,
    mut state: DirectoryState,
    (problems, health): (Problems, DirectoryHealthMap),
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
) {
    let period = |entries: &[DirectoryConfig]| {
        let seconds = entries
            .iter()
            .map(|entry| entry.refresh_seconds)
            .min()
            .unwrap_or(30)
            .max(1);
        Duration::from_secs(seconds)
    };
    let mut entries = entries_rx.borrow_and_update().clone();
    let mut every = tokio::time::interval(period(&entries));
    every.tick().await;
    loop {
        // A group or LDAP directory whose read failed is tried again after its back-off, which
        // can come before the next periodic check.
        let retry_in = state
            .next_retry()
            .map(|at| Duration::try_from(at.duration_since(clock.now())).unwrap_or(Duration::ZERO));
        let how = tokio::select! {
            _ = shutdown.wait() => return,
            _ = every.tick() => Refresh::Periodic,
            _ = tokio::time::sleep(retry_in.unwrap_or(Duration::MAX)), if retry_in.is_some() => Refresh::Periodic,
            changed = entries_rx.changed() => {
                if changed.is_err() {
                    // The reloader is gone: the service is stopping.
                    return;
                }
                entries = entries_rx.borrow_and_update().clone();
                every = tokio::time::interval(period(&entries));
                every.tick().await;
                Refresh::Reloaded
            }
        };
        refresh_directory(
            sync.as_ref(),
            store.as_ref(),
            &entries,
            &mut state,
            &DirectoryReports {
                problems: &problems,
                health: &health,
            },
            clock.as_ref(),
            how,
        )
        .await;
    }
}

/// Why the directory is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// At start-up, before the engines run: they start with everyone in the store.
    Start,
    /// The periodic check: a file is applied when it changed, a group or LDAP directory when
    /// it is due.
    Periodic,
    /// The entries changed in a reloaded configuration: everything is read and applied now.
    Reloaded,
}

/// What the directory task remembers between refreshes: file times, when each group or LDAP
/// directory was read and its retries, the problems last reported per entry, and the shrink
/// guard, so that an unchanged file is not re-applied, a group is not re-read too often and a
/// sudden shrink waits for confirmation.
#[derive(Clone, Default)]
pub(crate) struct DirectoryState {
    file_times: HashMap<PathBuf, SystemTime>,
    /// Groups and LDAP directories (by [`DirectoryConfig::kind`]): when they were last read.
    read_at: HashMap<String, Timestamp>,
    /// A group or LDAP directory whose read failed (no token yet, server down): when to try
    /// again, and how many reads failed in a row. It is read again after the back-off, not
    /// after its regular period: at start-up, nobody is followed until it is read.
    read_retry: HashMap<String, (Timestamp, u32)>,
    /// The problems an LDAP read reported last, so that the same ones are not logged at every
    /// read.
    reported: HashMap<String, Vec<String>>,
    /// The entries whose last read failed (by [`DirectoryConfig::kind`]), with why. An entry
    /// that is not due keeps its failure until it is read again.
    failures: std::collections::BTreeMap<String, String>,
    guard: ShrinkGuard,
    /// The room details last written to the store, so that an unchanged read writes nothing.
    stored_rooms: Option<Vec<calbridge_domain::RoomInfo>>,
}

impl DirectoryState {
    /// The earliest retry of a failed read, if any.
    fn next_retry(&self) -> Option<Timestamp> {
        self.read_retry.values().map(|(at, _)| *at).min()
    }

    /// Whether a group or LDAP directory read is due now.
    fn due(&self, kind: &str, period: jiff::SignedDuration, now: Timestamp) -> bool {
        match self.read_retry.get(kind) {
            Some((retry_at, _)) => now >= *retry_at,
            None => self.read_at.get(kind).is_none_or(|read| {
                // The task's ticks come a little early or late; a second of slack keeps a
                // directory read every period rather than every other.
                now.duration_since(*read) >= period - jiff::SignedDuration::from_secs(1)
            }),
        }
    }

    /// Notes a failed read: when to try again (a doubling back-off up to `longest`).
    fn failed(&mut self, kind: &str, now: Timestamp, longest: Duration) -> Duration {
        let failures = self.read_retry.get(kind).map_or(0, |(_, n)| *n) + 1;
        let delay = GROUP_RETRY
            .delay_for(failures)
            .min(longest.max(Duration::from_secs(1)));
        let retry_at = now
            .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or(GROUP_REFRESH))
            .unwrap_or(now);
        self.read_retry
            .insert(kind.to_string(), (retry_at, failures));
        delay
    }
}

/// What the admin page and `/api/v1/status` show of one source's directory.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DirectoryHealth {
    /// The people of the last list applied.
    pub people: usize,
    /// When a list was last applied (also one that changed nothing).
    pub applied_at: Option<Timestamp>,
    /// A read held by the shrink guard: why, and since when.
    pub held: Option<HeldView>,
    /// The entries whose last read failed, each with why; their people stay.
    pub failing: Vec<String>,
}

/// A held change as the status shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldView {
    pub reason: String,
    pub since: Timestamp,
}

/// Each source's [`DirectoryHealth`].
pub type DirectoryHealthMap = Arc<Mutex<std::collections::BTreeMap<SourceId, DirectoryHealth>>>;

/// What one refresh did to the store, for tests and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryApplied {
    /// People the read listed.
    pub listed: usize,
    /// People written to the store (new, or with a changed name or SIP URI).
    pub written: usize,
    /// People removed.
    pub removed: usize,
    /// The read was held by the shrink guard.
    pub held: bool,
}

/// Groups are re-read at most this often: every read costs Graph requests.
const GROUP_REFRESH: jiff::SignedDuration = jiff::SignedDuration::from_secs(300);
/// A failed group or LDAP read is tried again after 1 s, doubling up to the regular refresh.
const GROUP_RETRY: calbridge_net::Backoff =
    calbridge_net::Backoff::doubling(Duration::from_secs(1), Duration::from_secs(300));

fn note_problem(problems: &Problems, now: Timestamp, message: String) {
    tracing::warn!("{message}");
    let mut problems = problems
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    problems.push((now, message));
    let excess = problems.len().saturating_sub(200);
    problems.drain(..excess);
}

/// Where a refresh reports: the error list and the directory's health.
pub(crate) struct DirectoryReports<'a> {
    pub problems: &'a Problems,
    pub health: &'a DirectoryHealthMap,
}

/// Reads the directory entries of one source and brings the store (and, on refreshes, the
/// sync task) in line. A file, group or LDAP directory that cannot be read changes nothing:
/// people are only removed when every entry of the source was read, and a read that would
/// remove everyone or more than `max_shrink_percent` waits for the next read to confirm it
/// ([`ShrinkGuard`]). Only new people and people whose name or SIP URI changed are written.
pub(crate) async fn refresh_directory(
    sync: &dyn DirectoryTarget,
    store: &dyn Store,
    entries: &[DirectoryConfig],
    state: &mut DirectoryState,
    reports: &DirectoryReports<'_>,
    clock: &dyn Clock,
    how: Refresh,
) -> DirectoryApplied {
    let problems = reports.problems;
    let is_refresh = how != Refresh::Start;
    let forced = how != Refresh::Periodic;
    let now = clock.now();
    let mut listed: Vec<DirectoryPerson> = Vec::new();
    let mut resolved = Vec::new();
    let mut complete = true;
    let mut changed = forced;
    // The rooms' details, when every `rooms` entry of the source was read.
    let mut rooms_read: Vec<calbridge_domain::RoomInfo> = Vec::new();
    let mut rooms_complete = entries.iter().any(|entry| entry.rooms.is_some());
    for entry in entries {
        if let Some(path) = &entry.file {
            let modified = std::fs::metadata(path)
                .and_then(|meta| meta.modified())
                .ok();
            if modified.is_some() && state.file_times.get(path) != modified.as_ref() {
                changed = true;
            }
            match directory::read_file(path) {
                Ok(listing) => {
                    if changed {
                        for problem in listing.problems {
                            note_problem(
                                problems,
                                now,
                                format!("directory {}: {problem}", path.display()),
                            );
                        }
                    }
                    if let Some(modified) = modified {
                        state.file_times.insert(path.clone(), modified);
                    }
                    state.failures.remove(&entry.kind());
                    listed.extend(listing.people);
                }
                Err(error) => {
                    complete = false;
                    state.failures.insert(entry.kind(), error.to_string());
                    if changed || !is_refresh {
                        note_problem(problems, now, error.to_string());
                    }
                }
            }
        }
        if let Some(group) = &entry.group_id {
            if !forced && !state.due(group, GROUP_REFRESH, now) {
                complete = false;
                continue;
            }
            state.read_at.insert(group.clone(), now);
            match sync.group_members(group).await {
                Ok(members) => {
                    state.read_retry.remove(group);
                    state.failures.remove(&entry.kind());
                    changed = true;
                    for member in members {
                        listed.push(DirectoryPerson {
                            address: member.primary_smtp.clone(),
                            alternates: Vec::new(),
                            sip_uri: None,
                            display_name: member.display_name.clone(),
                        });
                        resolved.push(member);
                    }
                }
                Err(error) => {
                    complete = false;
                    let delay = state.failed(group, now, Duration::from_secs(300));
                    let message = format!(
                        "directory group {group} of source {}: {error} (tried again in {} s)",
                        sync.source_id(),
                        delay.as_secs().max(1)
                    );
                    state.failures.insert(entry.kind(), message.clone());
                    note_problem(problems, now, message);
                }
            }
        }
        if entry.rooms.is_some() {
            let kind = entry.kind();
            if !forced && !state.due(&kind, GROUP_REFRESH, now) {
                complete = false;
                rooms_complete = false;
                continue;
            }
            state.read_at.insert(kind.clone(), now);
            // The configuration was checked at load: the selector is valid here.
            let list = entry.room_list().ok().flatten();
            match sync.rooms(list.as_ref()).await {
                Ok(rooms) => {
                    state.read_retry.remove(&kind);
                    state.failures.remove(&kind);
                    changed = true;
                    if rooms.is_empty() && state.reported.get(&kind).is_none_or(Vec::is_empty) {
                        let hint = format!(
                            "directory of source {}: the source lists no rooms for {kind} \
                             (Graph's places API and EWS's GetRoomLists show rooms only once \
                             they are in a room list). {ROOM_LISTS_HINT}",
                            sync.source_id()
                        );
                        note_problem(problems, now, hint.clone());
                        state.reported.insert(kind.clone(), vec![hint]);
                    } else if !rooms.is_empty() {
                        state.reported.remove(&kind);
                    }
                    listed.extend(rooms.iter().map(|room| DirectoryPerson {
                        address: room.address.clone(),
                        alternates: Vec::new(),
                        sip_uri: None,
                        display_name: room.display_name.clone(),
                    }));
                    rooms_read.extend(rooms);
                }
                Err(error) => {
                    complete = false;
                    rooms_complete = false;
                    let delay = state.failed(&kind, now, Duration::from_secs(300));
                    let message = format!(
                        "directory of source {}: {kind}: {error}; nobody is removed, tried again in {} s",
                        sync.source_id(),
                        delay.as_secs().max(1)
                    );
                    state.failures.insert(kind.clone(), message.clone());
                    note_problem(problems, now, message);
                }
            }
        }
        if let Some(ldap) = &entry.ldap {
            let kind = entry.kind();
            let period = Duration::from_secs(entry.refresh_seconds.max(1));
            let period_signed = jiff::SignedDuration::try_from(period).unwrap_or(GROUP_REFRESH);
            if !forced && !state.due(&kind, period_signed, now) {
                complete = false;
                continue;
            }
            state.read_at.insert(kind.clone(), now);
            match directory::ldap::read(ldap).await {
                Ok(listing) => {
                    state.read_retry.remove(&kind);
                    state.failures.remove(&kind);
                    changed = true;
                    if state.reported.get(&kind) != Some(&listing.problems) {
                        for problem in &listing.problems {
                            note_problem(problems, now, format!("directory {kind}: {problem}"));
                        }
                        state
                            .reported
                            .insert(kind.clone(), listing.problems.clone());
                    }
                    listed.extend(listing.people);
                }
                Err(error) => {
                    complete = false;
                    let delay = state.failed(&kind, now, period);
                    let message = format!(
                        "directory of source {}: LDAP {error}; nobody is removed, tried again in {} s",
                        sync.source_id(),
                        delay.as_secs().max(1)
                    );
                    state.failures.insert(kind.clone(), message.clone());
                    note_problem(problems, now, message);
                }
            }
        }
    }
    // Entries no longer configured (a reload) have no failure to show.
    let kinds: HashSet<String> = entries.iter().map(DirectoryConfig::kind).collect();
    state.failures.retain(|kind, _| kinds.contains(kind));
    let failing: Vec<String> = state.failures.values().cloned().collect();
    let mut applied = DirectoryApplied {
        listed: listed.len(),
        ..DirectoryApplied::default()
    };
    // A held change is judged again at every refresh, also when a file did not change since.
    if state.guard.held().is_some() {
        changed = true;
    }
    let update_health = |people: Option<usize>, held: Option<HeldView>, failing: Vec<String>| {
        let mut health = reports
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = health.entry(sync.source_id().clone()).or_default();
        if let Some(people) = people {
            entry.people = people;
            entry.applied_at = Some(now);
        }
        entry.held = held;
        entry.failing = failing;
    };
    let held_view = |state: &DirectoryState| {
        state.guard.held().map(|held| HeldView {
            reason: held.reason.clone(),
            since: held.since,
        })
    };
    if !changed {
        update_health(None, held_view(&*state), failing);
        return applied;
    }
    let known: HashMap<PersonKey, calbridge_store::Person> =
        match store.list_people_of_source(sync.source_id()).await {
            Ok(people) => people
                .into_iter()
                .map(|person| (person.key.clone(), person))
                .collect(),
            Err(error) => {
                note_problem(
                    problems,
                    now,
                    format!("cannot read people from the store: {error}"),
                );
                update_health(None, held_view(&*state), failing);
                return applied;
            }
        };
    let mut wanted = HashSet::with_capacity(listed.len());
    let mut upserts = Vec::new();
    for person in &listed {
        let key = PersonKey {
            source: sync.source_id().clone(),
            address: person.address.clone(),
        };
        if !wanted.insert(key.clone()) {
            continue;
        }
        let same = known.get(&key).is_some_and(|stored| {
            stored.display_name == person.display_name && stored.sip_uri == person.sip_uri
        });
        if !same {
            upserts.push(PersonUpsert {
                key,
                display_name: person.display_name.clone(),
                sip_uri: person.sip_uri.clone(),
            });
        }
    }
    if complete {
        let n_removed = known.keys().filter(|key| !wanted.contains(*key)).count();
        let max_shrink_percent = entries
            .iter()
            .map(|entry| entry.max_shrink_percent)
            .min()
            .unwrap_or(20);
        let verdict = state.guard.judge(
            known.len(),
            wanted.len(),
            n_removed,
            guard::fingerprint(wanted.iter().map(|key| key.address.as_str())),
            max_shrink_percent,
            now,
        );
        match verdict {
            Verdict::Apply => {}
            Verdict::Hold { reason } => {
                note_problem(
                    problems,
                    now,
                    format!(
                        "directory of source {}: {reason}; the last good list is kept until the next read confirms the change",
                        sync.source_id()
                    ),
                );
                applied.held = true;
                update_health(None, held_view(&*state), failing);
                return applied;
            }
            Verdict::Confirmed { reason } => {
                note_problem(
                    problems,
                    now,
                    format!(
                        "directory of source {}: {reason}; a second read confirmed it, so it is applied now",
                        sync.source_id()
                    ),
                );
            }
        }
    }
    for person in &listed {
        if !person.alternates.is_empty() {
            sync.set_alternates(
                &PersonKey {
                    source: sync.source_id().clone(),
                    address: person.address.clone(),
                },
                person.alternates.clone(),
            );
        }
    }
    if !upserts.is_empty() {
        if let Err(error) = store.upsert_people(&upserts).await {
            note_problem(
                problems,
                now,
                format!(
                    "cannot store the directory of source {}: {error}",
                    sync.source_id()
                ),
            );
            update_health(None, held_view(&*state), failing);
            return applied;
        }
    }
    applied.written = upserts.len();
    if rooms_complete && state.stored_rooms.as_ref() != Some(&rooms_read) {
        match store.set_rooms(sync.source_id(), &rooms_read).await {
            Ok(()) => state.stored_rooms = Some(rooms_read),
            Err(error) => note_problem(
                problems,
                now,
                format!(
                    "cannot store the rooms of source {}: {error}",
                    sync.source_id()
                ),
            ),
        }
    }
    let n_new = upserts
        .iter()
        .filter(|upsert| !known.contains_key(&upsert.key))
        .count();
    if is_refresh {
        for upsert in upserts {
            if !known.contains_key(&upsert.key) {
                sync.enqueue(Work::Added(upsert.key));
            }
        }
    }
    if !resolved.is_empty() {
        let members: Vec<(PersonKey, calbridge_domain::MailboxAddress, String)> = resolved
            .into_iter()
            .map(|member| {
                (
                    PersonKey {
                        source: sync.source_id().clone(),
                        address: member.primary_smtp.clone(),
                    },
                    member.primary_smtp,
                    member.id,
                )
            })
            .collect();
        sync.record_resolved_members(members).await;
    }
    let mut n_people = known.len() + n_new;
    if complete {
        let n_gone = known.keys().filter(|key| !wanted.contains(*key)).count();
        if n_gone > 0 {
            tracing::info!(
                source = %sync.source_id(),
                "{} no longer in the directory",
                crate::counted(n_gone, "person is", "people are")
            );
        }
        for gone in known.keys().filter(|key| !wanted.contains(*key)) {
            tracing::debug!(person = %gone, "no longer in the directory");
            if let Err(error) = store.remove_person(gone).await {
                note_problem(problems, now, format!("cannot remove {gone}: {error}"));
            }
            sync.enqueue(Work::Removed(gone.clone()));
            applied.removed += 1;
        }
        n_people = wanted.len();
    }
    update_health(Some(n_people), held_view(&*state), failing);
    applied
}

/// Persists presence changes off the hot path, keeping only the newest per person when
/// several queue up (at start-up thousands arrive at once).
async fn persist_presence(
    store: Arc<dyn Store>,
    mut changes: mpsc::UnboundedReceiver<PresenceChange>,
    shutdown: Shutdown,
) {
    loop {
        let first = tokio::select! {
            change = changes.recv() => change,
            _ = shutdown.wait() => None,
        };
        let Some(first) = first else {
            // Drain what is left so that the last state survives the shutdown.
            let mut rest = HashMap::new();
            while let Ok(change) = changes.try_recv() {
                rest.insert(change.person.clone(), change);
            }
            save_all(store.as_ref(), rest).await;
            return;
        };
        let mut batch = HashMap::new();
        batch.insert(first.person.clone(), first);
        while let Ok(change) = changes.try_recv() {
            batch.insert(change.person.clone(), change);
        }
        save_all(store.as_ref(), batch).await;
    }
}

async fn save_all(store: &dyn Store, batch: HashMap<PersonKey, PresenceChange>) {
    let records: Vec<(PersonKey, CurrentPresence)> = batch
        .into_iter()
        .map(|(person, change)| {
            let record = CurrentPresence {
                activity: change.decision.activity.as_str().to_string(),
                note: Some(change.decision.note.clone()),
                until: change.decision.until,
                why: change.decision.explain(),
                next_change_at: change.decision.next_change_at,
                decided_at: change.decided_at,
                published_fingerprint: None,
            };
            (person, record)
        })
        .collect();
    for chunk in records.chunks(500) {
        if let Err(error) = store.save_presences(chunk).await {
            // Usually a person removed from the directory a moment ago; save the rest singly.
            tracing::debug!("presence batch not stored ({error}); storing one by one");
            for (person, record) in chunk {
                if let Err(error) = store.save_presence(person, record).await {
                    tracing::debug!(person = %person, "presence not stored: {error}");
                }
            }
        }
    }
}

/// A directory target without a sync engine: the directory is applied to the store alone. For
/// the LDAP benchmark and the directory's tests.
pub(crate) struct StoreOnlyTarget(pub SourceId);

#[async_trait::async_trait]
impl DirectoryTarget for StoreOnlyTarget {
    fn source_id(&self) -> &SourceId {
        &self.0
    }
    fn enqueue(&self, _work: Work) {}
    async fn group_members(&self, _group: &str) -> Result<Vec<crate::sync::GroupMember>, String> {
        Err("no groups without a source".to_string())
    }
    async fn record_resolved_members(
        &self,
        _members: Vec<(PersonKey, calbridge_domain::MailboxAddress, String)>,
    ) {
    }
}

/// Reads every entry of `entries` now (as a reload does, whatever their refresh period) and
/// applies the result to `store` as the service does (the shrink guard in `state` included),
/// without a sync engine. For the LDAP benchmark.
pub async fn apply_directory_once(
    source: &SourceId,
    store: &dyn Store,
    entries: &[DirectoryConfig],
    state: &mut DirectoryStateHandle,
    clock: &dyn Clock,
) -> DirectoryApplied {
    let problems: Problems = Arc::default();
    let health: DirectoryHealthMap = Arc::default();
    refresh_directory(
        &StoreOnlyTarget(source.clone()),
        store,
        entries,
        &mut state.0,
        &DirectoryReports {
            problems: &problems,
            health: &health,
        },
        clock,
        Refresh::Reloaded,
    )
    .await
}

/// The directory's memory between reads, for [`apply_directory_once`].
#[derive(Default)]
pub struct DirectoryStateHandle(DirectoryState);

#[cfg(test)]
mod directory_tests {
    use super::*;
    use crate::clock::ManualClock;

    struct Fixture {
        _folder: tempfile::TempDir,
        file: PathBuf,
        store: SqliteStore,
        entries: Vec<DirectoryConfig>,
        state: DirectoryState,
        problems: Problems,
        health: DirectoryHealthMap,
        clock: ManualClock,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let folder = tempfile::tempdir().unwrap();
            let file = folder.path().join("people.csv");
            let store = SqliteStore::open(folder.path().join("s.sqlite"), SecretKey::generate())
                .await
                .unwrap();
            let entries = vec![DirectoryConfig::of_file(source(), file.clone())];
            Fixture {
                _folder: folder,
                file,
                store,
                entries,
                state: DirectoryState::default(),
                problems: Problems::default(),
                health: DirectoryHealthMap::default(),
                clock: ManualClock::new("2026-12-04T09:00:00Z".parse().unwrap()),
            }
        }

        fn write(&self, n: usize) {
            let mut text = String::from("address,display_name\n");
            for i in 0..n {
                text.push_str(&format!("p{i}@x.example,Person {i}\n"));
            }
            std::fs::write(&self.file, text).unwrap();
        }

        async fn refresh(&mut self, how: Refresh) -> DirectoryApplied {
            self.clock.advance(jiff::SignedDuration::from_secs(30));
            refresh_directory(
                &StoreOnlyTarget(source()),
                &self.store,
                &self.entries,
                &mut self.state,
                &DirectoryReports {
                    problems: &self.problems,
                    health: &self.health,
                },
                &self.clock,
                how,
            )
            .await
        }

        async fn n_stored(&self) -> usize {
            self.store
                .list_people_of_source(&source())
                .await
                .unwrap()
                .len()
        }

        fn held(&self) -> Option<HeldView> {
            self.health.lock().unwrap().get(&source())?.held.clone()
        }
    }

    fn source() -> SourceId {
        SourceId("s".to_string())
    }

    #[tokio::test]
    async fn an_emptied_file_removes_no_one_until_the_next_read_confirms_it() {
        let mut fixture = Fixture::new().await;
        fixture.write(10);
        let applied = fixture.refresh(Refresh::Start).await;
        assert_eq!((applied.listed, applied.written), (10, 10));
        assert_eq!(fixture.n_stored().await, 10);

        // Truncated (a half-written export): held, with the reason and the instant.
        fixture.write(0);
        let applied = fixture.refresh(Refresh::Periodic).await;
        assert!(applied.held);
        assert_eq!(fixture.n_stored().await, 10);
        let held = fixture.held().expect("held");
        assert_eq!(
            held.reason,
            "the read lists nobody (10 people are followed now)"
        );
        assert_eq!(held.since, fixture.clock.now());
        // The file is read again at the next round although it did not change: confirmed.
        let applied = fixture.refresh(Refresh::Periodic).await;
        assert_eq!((applied.held, applied.removed), (false, 10));
        assert_eq!(fixture.n_stored().await, 0);
        assert!(fixture.held().is_none());
    }

    #[tokio::test]
    async fn a_shrink_undone_by_the_next_read_never_removes_anyone() {
        let mut fixture = Fixture::new().await;
        fixture.write(10);
        fixture.refresh(Refresh::Start).await;
        fixture.write(7); // 30 % gone: over the default 20 %.
        assert!(fixture.refresh(Refresh::Periodic).await.held);
        fixture.write(10);
        let applied = fixture.refresh(Refresh::Periodic).await;
        assert_eq!(
            (applied.held, applied.removed, applied.written),
            (false, 0, 0)
        );
        assert_eq!(fixture.n_stored().await, 10);
        assert!(fixture.held().is_none());
        // A small change goes through at once.
        fixture.write(9);
        let applied = fixture.refresh(Refresh::Periodic).await;
        assert_eq!((applied.held, applied.removed), (false, 1));
        let messages: Vec<String> = fixture
            .problems
            .lock()
            .unwrap()
            .iter()
            .map(|(_, message)| message.clone())
            .collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].contains("the read drops 3 of the 10 people followed now (30.0 %), more than max_shrink_percent = 20; the last good list is kept"), "{messages:?}");
    }

    #[tokio::test]
    async fn a_read_that_changes_nothing_writes_nothing() {
        let mut fixture = Fixture::new().await;
        fixture.write(10);
        fixture.refresh(Refresh::Start).await;
        // A reload reads the unchanged file again: nothing to write.
        let applied = fixture.refresh(Refresh::Reloaded).await;
        assert_eq!(
            applied,
            DirectoryApplied {
                listed: 10,
                written: 0,
                removed: 0,
                held: false
            }
        );
        // A changed display name is written, alone.
        std::fs::write(
            &fixture.file,
            "address,display_name\np0@x.example,Renamed\n".to_string()
                + &(1..10)
                    .map(|i| format!("p{i}@x.example,Person {i}\n"))
                    .collect::<String>(),
        )
        .unwrap();
        let applied = fixture.refresh(Refresh::Reloaded).await;
        assert_eq!(applied.written, 1);
    }
}
