//! The real binary killed, damaged and restarted, as an operator's machine does it:
//!
//! - `kill -9` while the first sync subscribes: after a restart everyone has presence, nobody
//!   is lost, every mailbox has exactly one live subscription at Graph (the ones the killed
//!   process made but never saved are deleted), and no window the store holds from today is
//!   read again;
//! - `kill -9` while a directory change is applied (100 leave, 100 come): after a restart
//!   exactly the new people have one live subscription each, and the leavers none;
//! - `kill -9` while the midnight re-read runs (the process's wall clock set just before midnight
//!   with libfaketime): after a restart every window is the new day's, the ones read before
//!   the kill are not read again, and every mailbox keeps exactly one subscription;
//! - the files a first start makes are readable by their owner only; a key file others can
//!   read, or a missing key file beside a store with sealed secrets (SQLite or PostgreSQL),
//!   refuses the start;
//! - a store with random bytes in the middle, or cut short, refuses the start with the file,
//!   the damage and the way out; `--rebuild-store` sets it aside, keeps the sealed secret, and
//!   the service reads everyone again.
//!
//! Nothing here depends on the hour: the assertions are about who has a presence and a
//! subscription, not which one.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{free_port, Process};
use common::*;
use m365_emulator::{Emulator, EmulatorConfig, ReadyInfo, RunningEmulator};

/// How long a first sync or a restart may take on a busy CI machine.
const SYNC_PATIENCE: Duration = Duration::from_secs(120);

/// The binary tests of this file each run a service process; on two cores they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A folder with a `calbridge.toml` for an SQLite store in it (the key at its default place,
/// beside the database) and an API on a fixed port, so that a restarted process keeps the
/// notification URL its subscriptions were made for.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    lives: usize,
}

impl Site {
    fn new(ready: &ReadyInfo) -> Site {
        let group = ready.group_id.as_deref().expect("a group");
        Site::with_directory(ready, &format!("group_id = \"{group}\"\n"))
    }

    /// A site whose `[[directory]]` entry has `entry` besides its source.
    fn with_directory(ready: &ReadyInfo, entry: &str) -> Site {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let config = dir.path().join("calbridge.toml");
        let text = format!(
            r#"[presence]
timezone = "UTC"

[store]
path = "{db}"

[api]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
token = "cluster-test-token"

[[sources]]
id = "demo"

[sources.graph]
tenant_id = "{tenant}"
client_id = "{client}"
credential = {{ client_secret = "{secret}" }}
authority_url = "{base}"
graph_url = "{base}"
token_scope = "https://graph.microsoft.com/.default"
extra_root_ca = "{ca}"

[[directory]]
source = "demo"
{entry}"#,
            db = dir.path().join("calbridge.sqlite").display(),
            tenant = ready.tenant_id,
            client = ready.client_id,
            secret = ready.client_secret.as_deref().expect("a secret"),
            base = ready.base_url,
            ca = ready.ca_cert.display(),
        );
        std::fs::write(&config, text).expect("write the configuration");
        Site {
            dir,
            config,
            port,
            lives: 0,
        }
    }

    fn database(&self) -> PathBuf {
        self.dir.path().join("calbridge.sqlite")
    }

    /// Where the key is when `[store]` names none: beside the database.
    fn key(&self) -> PathBuf {
        self.dir.path().join("calbridge.key")
    }

    /// `calbridge run` (with `extra` arguments), logging to a file of this life's own.
    fn start(&mut self, extra: &[&str]) -> Process {
        self.start_with_env(extra, &[])
    }

    /// The same with environment variables set for the process.
    fn start_with_env(&mut self, extra: &[&str], vars: &[(&str, String)]) -> Process {
        self.lives += 1;
        let log = self.dir.path().join(format!("run.{}.log", self.lives));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_calbridge"))
            .args(["run", "--config"])
            .arg(&self.config)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(vars.iter().map(|(name, value)| (name, value)))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("calbridge runs");
        Process {
            child,
            name: format!("life {}", self.lives),
            address: format!("127.0.0.1:{}", self.port),
            log,
        }
    }

    /// Runs `calbridge run` expecting it to refuse to start; returns what it wrote to stderr.
    async fn refused(&mut self) -> String {
        let mut process = self.start(&[]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = process.child.try_wait().expect("the process's status") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "calbridge did not refuse to start: {}",
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let log = std::fs::read_to_string(&process.log).unwrap_or_default();
        assert!(!status.success(), "calbridge exited with success: {log}");
        log
    }
}

/// Waits until every one of `people` is listed with a presence and a live subscription, and
/// nobody else is listed.
async fn wait_converged(process: &Process, people: &BTreeSet<String>) {
    let http = calbridge_net::build_http_client(None).expect("an HTTP client");
    let deadline = Instant::now() + SYNC_PATIENCE;
    loop {
        let why = match process.get(&http, "/api/v1/users").await {
            None => "the API does not answer".to_string(),
            Some(body) => {
                let users = body["users"].as_array().cloned().unwrap_or_default();
                let listed: BTreeSet<String> = users
                    .iter()
                    .filter_map(|user| user["address"].as_str().map(str::to_lowercase))
                    .collect();
                let waiting: Vec<String> = users
                    .iter()
                    .filter(|user| {
                        user["presence"].is_null()
                            || user["sync"]["subscription_expires_at"].is_null()
                    })
                    .filter_map(|user| user["address"].as_str().map(str::to_string))
                    .collect();
                if listed == *people && waiting.is_empty() {
                    return;
                }
                format!(
                    "{} of {} listed, {} without presence or subscription (e.g. {:?})",
                    listed.len(),
                    people.len(),
                    waiting.len(),
                    waiting.first()
                )
            }
        };
        assert!(
            Instant::now() < deadline,
            "not everyone converged within {SYNC_PATIENCE:?}: {why}\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each mailbox with a live subscription other than exactly one, with its count.
fn not_one_subscription(
    emulator: &RunningEmulator,
    people: &BTreeSet<String>,
) -> Vec<(String, usize)> {
    let counts = emulator.live_subscriptions_per_mailbox();
    people
        .iter()
        .map(|person| (person.clone(), counts.get(person).copied().unwrap_or(0)))
        .chain(
            counts
                .iter()
                .filter(|(mailbox, _)| !people.contains(&mailbox.to_lowercase()))
                .map(|(mailbox, count)| (mailbox.clone(), *count)),
        )
        .filter(|(_, count)| *count != 1)
        .collect()
}

async fn start_emulator(n_users: usize, seed: u64) -> (RunningEmulator, BTreeSet<String>) {
    let emulator = Emulator::start(EmulatorConfig::generated(n_users, seed))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let people: BTreeSet<String> = GraphClient::new(&ready)
        .await
        .group_members(ready.group_id.as_deref().expect("a group"))
        .await
        .into_iter()
        .collect();
    assert_eq!(people.len(), n_users);
    (emulator, people)
}

/// The start of today in UTC, the tests' zone.
fn start_of_today() -> jiff::Timestamp {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .start_of_day()
        .expect("a start of day")
        .timestamp()
}

/// What the store of a stopped process holds: the subscription ids it saved and the people
/// whose window was read since `today_start` (the process's day), which a restart must not
/// read again.
async fn stored_state(site: &Site, today_start: jiff::Timestamp) -> (BTreeSet<String>, usize) {
    let key = calbridge_store::SecretKey::from_file(site.key()).expect("the key");
    let store = calbridge_store::SqliteStore::open(site.database(), key)
        .await
        .expect("the store opens after the kill");
    let mut subscriptions = BTreeSet::new();
    let mut n_fresh = 0;
    use calbridge_store::Store;
    for person in store.list_people().await.expect("people") {
        let state = store.get_sync_state(&person.key).await.expect("sync state");
        if let Some(id) = state.subscription_id {
            subscriptions.insert(id);
        }
        if state
            .appointment_window
            .is_some_and(|window| window.start >= today_start)
        {
            n_fresh += 1;
        }
    }
    store.close().await;
    (subscriptions, n_fresh)
}

fn write_people(path: &Path, people: &[String]) {
    let mut text = String::from("address\n");
    for person in people {
        text.push_str(person);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write the directory file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_the_directory_changes_leaves_exactly_the_new_people_subscribed() {
    init_logs();
    let _turn = ONE_AT_A_TIME.lock().await;
    let (emulator, everyone) = start_emulator(300, 23).await;
    let everyone: Vec<String> = everyone.into_iter().collect();
    let (before, after) = (&everyone[..200], &everyone[100..]);
    let file_dir = tempfile::tempdir().expect("a temp dir");
    let file = file_dir.path().join("people.csv");
    write_people(&file, before);
    let mut site = Site::with_directory(
        emulator.ready(),
        &format!("file = \"{}\"\nrefresh_seconds = 1\n", file.display()),
    );
    let first = site.start(&[]);
    let before_set: BTreeSet<String> = before.iter().cloned().collect();
    wait_converged(&first, &before_set).await;

    // The directory changes: 100 people leave, 100 others come. Every Graph request takes a
    // while, so that the kill lands while subscriptions are deleted and made.
    let mut faults = emulator.faults();
    faults.latency_ms = 40;
    emulator.set_faults(faults.clone());
    let live_before: BTreeSet<String> = emulator.subscription_ids().into_iter().collect();
    let mut first = first;
    write_people(&file, after);
    let deadline = Instant::now() + SYNC_PATIENCE;
    loop {
        let live: BTreeSet<String> = emulator.subscription_ids().into_iter().collect();
        let changed = live.symmetric_difference(&live_before).count();
        if changed >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the directory change made no subscription change within {SYNC_PATIENCE:?}: {}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.child.kill().expect("kill -9");
    first.child.wait().expect("the killed process is reaped");
    let counts = emulator.live_subscriptions_per_mailbox();
    let still_watched = everyone[..100]
        .iter()
        .filter(|person| counts.get(*person).copied().unwrap_or(0) > 0)
        .count();
    let not_yet_watched = everyone[200..]
        .iter()
        .filter(|person| counts.get(*person).copied().unwrap_or(0) == 0)
        .count();
    assert!(
        still_watched + not_yet_watched > 0,
        "the kill came after the change was complete"
    );
    eprintln!(
        "killed with {still_watched} leavers still subscribed and {not_yet_watched} newcomers not yet"
    );

    faults.latency_ms = 0;
    emulator.set_faults(faults);
    let second = site.start(&[]);
    let after_set: BTreeSet<String> = after.iter().cloned().collect();
    wait_converged(&second, &after_set).await;
    assert_eq!(
        not_one_subscription(&emulator, &after_set),
        Vec::<(String, usize)>::new(),
        "mailboxes without exactly one live subscription after the restart\n{}",
        second.log_tail()
    );
    let counts = emulator.live_subscriptions_per_mailbox();
    let left_watched: Vec<&String> = everyone[..100]
        .iter()
        .filter(|person| counts.get(*person).copied().unwrap_or(0) > 0)
        .collect();
    assert!(
        left_watched.is_empty(),
        "people who left the directory still have a live subscription: {left_watched:?}"
    );
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_subscribing_leaves_one_subscription_per_mailbox_after_the_restart() {
    init_logs();
    let _turn = ONE_AT_A_TIME.lock().await;
    let (emulator, people) = start_emulator(300, 21).await;
    // Every Graph request takes a while, so that the kill lands while subscriptions are being
    // made: Graph has created some, the process has saved none of that round yet.
    let mut faults = emulator.faults();
    faults.latency_ms = 40;
    emulator.set_faults(faults.clone());
    let mut site = Site::new(emulator.ready());
    let mut first = site.start(&[]);
    let deadline = Instant::now() + SYNC_PATIENCE;
    while emulator.subscription_ids().len() < 30 {
        assert!(
            Instant::now() < deadline,
            "no subscriptions within {SYNC_PATIENCE:?}: {}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.child.kill().expect("kill -9");
    first.child.wait().expect("the killed process is reaped");

    let (saved, n_fresh) = stored_state(&site, start_of_today()).await;
    let live: BTreeSet<String> = emulator.subscription_ids().into_iter().collect();
    let n_orphans = live.difference(&saved).count();
    assert!(
        n_orphans > 0,
        "the kill came too late to leave unsaved subscriptions ({} live, {} saved)",
        live.len(),
        saved.len()
    );

    faults.latency_ms = 0;
    emulator.set_faults(faults);
    emulator.reset_counters();
    let second = site.start(&[]);
    wait_converged(&second, &people).await;

    assert_eq!(
        not_one_subscription(&emulator, &people),
        Vec::<(String, usize)>::new(),
        "mailboxes without exactly one live subscription after the restart ({n_orphans} \
         orphans were left by the kill)\n{}",
        second.log_tail()
    );
    // Windows read today before the kill are resumed from the store (with a read of the
    // changes since), not read again; only the others are.
    let n_window_reads = emulator
        .counters()
        .by_kind
        .get("calendar.view")
        .copied()
        .unwrap_or(0);
    let n_not_fresh = people.len() - n_fresh;
    assert!(
        n_window_reads <= n_not_fresh as u64,
        "{n_window_reads} window reads after the restart, but only {n_not_fresh} of {} people \
         had no window from today in the store",
        people.len()
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_makes_private_files_and_a_lost_or_readable_key_refuses_the_next() {
    use std::os::unix::fs::PermissionsExt;
    init_logs();
    let _turn = ONE_AT_A_TIME.lock().await;
    let (emulator, people) = start_emulator(20, 22).await;
    let mut site = Site::new(emulator.ready());
    let mut running = site.start(&[]);
    wait_converged(&running, &people).await;
    let database = site.database();
    for file in [
        database.clone(),
        sibling(&database, "-wal"),
        sibling(&database, "-shm"),
        site.key(),
    ] {
        assert_eq!(mode_of(&file), 0o600, "{}", file.display());
    }
    running.terminate(Duration::from_secs(30)).await;

    // A key others can read.
    std::fs::set_permissions(site.key(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = site.refused().await;
    assert!(
        log.contains(&format!("run `chmod 600 {}`", site.key().display())),
        "{log}"
    );
    std::fs::set_permissions(site.key(), std::fs::Permissions::from_mode(0o600)).unwrap();

    // No key beside a store with a sealed clientState.
    let kept_apart = site.dir.path().join("elsewhere.key");
    std::fs::rename(site.key(), &kept_apart).unwrap();
    let log = site.refused().await;
    assert!(
        log.contains(&format!(
            "the store key {} is missing",
            site.key().display()
        )),
        "{log}"
    );
    assert!(
        log.contains("a new key would make them unreadable"),
        "{log}"
    );
    assert!(log.contains("calbridge run --rebuild-store"), "{log}");
    assert!(!site.key().exists(), "no new key was made");

    // With the key back, the service starts on its store again.
    std::fs::rename(&kept_apart, site.key()).unwrap();
    let running = site.start(&[]);
    wait_converged(&running, &people).await;
    assert_eq!(
        not_one_subscription(&emulator, &people),
        Vec::<(String, usize)>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_and_rebuilt_with_its_sealed_secret() {
    init_logs();
    let _turn = ONE_AT_A_TIME.lock().await;
    // More than one page of subscriptions (100), so that the sweep after the rebuild pages.
    let (emulator, people) = start_emulator(150, 23).await;
    let graph = GraphClient::new(emulator.ready()).await;
    let mut site = Site::new(emulator.ready());
    let mut running = site.start(&[]);
    wait_converged(&running, &people).await;
    let client_states = || async {
        let mut states = BTreeSet::new();
        let mut next = Some("/subscriptions".to_string());
        while let Some(path) = next.take() {
            let answer = graph.send(reqwest::Method::GET, &path, None).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            for subscription in answer.body["value"].as_array().cloned().unwrap_or_default() {
                states.insert(
                    subscription["clientState"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                );
            }
            next = answer.body["@odata.nextLink"]
                .as_str()
                .and_then(|link| link.split_once("/v1.0").map(|(_, path)| path.to_string()));
        }
        states
    };
    let states_before = client_states().await;
    assert_eq!(states_before.len(), 1, "one clientState for the source");
    running.terminate(Duration::from_secs(30)).await;

    // Random bytes in the middle of the file, as a failing disk leaves them.
    let database = site.database();
    let mut bytes = std::fs::read(&database).unwrap();
    let length = (64 * 1024).min(bytes.len() / 4);
    let start = bytes.len() / 2 - length / 2;
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for byte in &mut bytes[start..start + length] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(&database, &bytes).unwrap();
    let log = site.refused().await;
    assert!(
        log.contains(&format!("the store {} is damaged", database.display())),
        "{log}"
    );
    assert!(log.contains("integrity check says: "), "{log}");
    assert!(log.contains("calbridge run --rebuild-store"), "{log}");

    let rebuilt = site.start(&["--rebuild-store"]);
    wait_converged(&rebuilt, &people).await;
    let log = std::fs::read_to_string(&rebuilt.log).unwrap_or_default();
    let aside_name = log
        .split("the old file is kept as ")
        .nth(1)
        .and_then(|rest| rest.split(" (").next())
        .unwrap_or_else(|| panic!("the rebuild names the old file: {log}"));
    assert!(
        std::fs::read(aside_name).is_ok_and(|aside| aside == bytes),
        "the damaged file is kept unchanged as {aside_name}"
    );
    assert!(
        log.contains("sealed secrets kept: 1 (source.demo.client_state), lost: 0"),
        "{log}"
    );
    // The old subscriptions were nobody's after the rebuild and are gone; the new ones carry
    // the clientState that was kept.
    assert_eq!(
        not_one_subscription(&emulator, &people),
        Vec::<(String, usize)>::new()
    );
    assert_eq!(client_states().await, states_before);

    // A store cut short is damaged too.
    let mut rebuilt = rebuilt;
    rebuilt.terminate(Duration::from_secs(30)).await;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&database)
        .unwrap();
    let length = file.metadata().unwrap().len();
    file.set_len(length / 2).unwrap();
    drop(file);
    let log = site.refused().await;
    assert!(
        log.contains(&format!("the store {} is damaged", database.display())),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_with_sealed_secrets_and_no_key_file_refuses_to_start() {
    init_logs();
    let Some(database) = common::postgres::database("calbridge_key_missing").await else {
        return;
    };
    let (emulator, _people) = start_emulator(10, 24).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let key_file = dir.path().join("calbridge.key");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(emulator.ready(), dir.path(), &public_url, None);
    config.store.path = None;
    config.store.key_file = Some(key_file.clone());
    config.store.url = Some(calbridge_domain::Secret::new(database.url()));
    // The first start makes the key and seals the source's clientState with it.
    let running = start_service(
        config.clone(),
        std::sync::Arc::new(calbridge::clock::SystemClock),
        listener,
    )
    .await;
    running.shutdown().await;
    assert!(key_file.exists());

    std::fs::remove_file(&key_file).expect("the key goes missing");
    let (listener, _) = listen(0).await;
    let refused = calbridge::service::start(
        config,
        calbridge::service::ServiceOptions {
            clock: std::sync::Arc::new(calbridge::clock::SystemClock),
            listener: Some(listener),
        },
    )
    .await;
    let message = match refused {
        Ok(_) => panic!("the service started without its key"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        message.contains(&format!("the store key {} is missing", key_file.display())),
        "{message}"
    );
    assert!(message.contains("PostgreSQL database"), "{message}");
    assert!(
        message.contains("a new key would make them unreadable"),
        "{message}"
    );
    assert!(
        !message.contains("postgres://"),
        "no URL in the message: {message}"
    );
    assert!(!key_file.exists(), "no new key was made");
}

/// libfaketime's preload library, which sets a process's wall clock (Debian's `faketime`).
fn libfaketime() -> Option<PathBuf> {
    let found = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|path| path.exists());
    if found.is_none() {
        assert!(
            std::env::var("CALBRIDGE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "CALBRIDGE_REQUIRE_SERVICES=1 but libfaketime is missing (apt-get install faketime)"
        );
        eprintln!("skipped: libfaketime is missing (apt-get install faketime)");
    }
    found
}

/// The environment that starts a process's wall clock at `at` (UTC) and lets it run on at
/// real speed; its timers keep the real monotonic clock.
fn clock_starting_at(library: &Path, at: jiff::Timestamp) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", library.display().to_string()),
        ("FAKETIME", format!("@{}", at.strftime("%Y-%m-%d %H:%M:%S"))),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ("FAKETIME_DONT_RESET", "1".to_string()),
        ("TZ", "UTC".to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_the_midnight_re_read_leaves_the_new_days_windows_after_the_restart() {
    init_logs();
    let Some(library) = libfaketime() else {
        return;
    };
    let _turn = ONE_AT_A_TIME.lock().await;
    let (emulator, people) = start_emulator(160, 25).await;
    // The process's clock starts shortly before a UTC midnight (the test's zone), whatever
    // the hour of the machine: its first sync is done before, then the re-read begins.
    let midnight = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .tomorrow()
        .and_then(|day| day.start_of_day())
        .expect("a next midnight")
        .timestamp();
    let lead = jiff::SignedDuration::from_secs(40);
    let started_at = midnight - lead;
    let started = Instant::now();
    // The re-read is spread over a minute (Graph reads 20 people per `$batch`: 8 chunks, 7.5 s
    // apart), so that the kill lands in the middle of it. Subscriptions live a day: their
    // expiry is reckoned on the process's clock, hours ahead of the emulator's.
    let group = emulator.ready().group_id.clone().expect("a group");
    let mut site = Site::with_directory(
        emulator.ready(),
        &format!(
            "group_id = \"{group}\"\n\n[sync]\nmidnight_spread_minutes = 1\n\
             subscription_lifetime_minutes = 1440\n"
        ),
    );
    let mut first = site.start_with_env(&[], &clock_starting_at(&library, started_at));
    wait_converged(&first, &people).await;
    assert!(
        started.elapsed() < Duration::try_from(lead).expect("a duration") - Duration::from_secs(2),
        "the first sync took {:?}, past the process's midnight: the test cannot kill during \
         the midnight re-read",
        started.elapsed()
    );
    emulator.reset_counters();

    let window_reads = || {
        emulator
            .counters()
            .by_kind
            .get("calendar.view")
            .copied()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::try_from(lead).expect("a duration") + SYNC_PATIENCE;
    while window_reads() < 20 {
        assert!(
            Instant::now() < deadline,
            "no midnight re-read: {}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.child.kill().expect("kill -9");
    first.child.wait().expect("the killed process is reaped");
    let n_read_before_the_kill = window_reads();
    assert!(
        (n_read_before_the_kill as usize) < people.len(),
        "the kill came after the re-read was complete ({n_read_before_the_kill} windows read)"
    );
    let (_, n_fresh) = stored_state(&site, midnight).await;
    eprintln!(
        "killed after {n_read_before_the_kill} of {} windows were read again at midnight",
        people.len()
    );

    // The second life's clock runs on from where the first one's would be now.
    emulator.reset_counters();
    let resumed_at =
        started_at + jiff::SignedDuration::try_from(started.elapsed()).expect("an elapsed time");
    let mut second = site.start_with_env(&[], &clock_starting_at(&library, resumed_at));
    wait_converged(&second, &people).await;
    assert_eq!(
        not_one_subscription(&emulator, &people),
        Vec::<(String, usize)>::new(),
        "mailboxes without exactly one live subscription after the restart\n{}",
        second.log_tail()
    );
    // Who was read again before the kill is resumed from the store; everyone else is read.
    let n_window_reads = window_reads();
    assert!(
        n_window_reads <= (people.len() - n_fresh) as u64,
        "{n_window_reads} window reads after the restart, but {n_fresh} of {} people had \
         the new day's window in the store",
        people.len()
    );
    second.terminate(SYNC_PATIENCE).await;
    let key = calbridge_store::SecretKey::from_file(site.key()).expect("the key");
    let store = calbridge_store::SqliteStore::open(site.database(), key)
        .await
        .expect("the store opens");
    use calbridge_store::Store;
    let mut old_windows = Vec::new();
    for person in store.list_people().await.expect("people") {
        let state = store.get_sync_state(&person.key).await.expect("sync state");
        match state.appointment_window {
            Some(window) if window.start >= midnight => {}
            other => old_windows.push((person.key, other.map(|window| window.start))),
        }
    }
    store.close().await;
    assert!(
        old_windows.is_empty(),
        "people whose stored window does not start on the new day ({midnight}): {old_windows:?}"
    );
}
