//! Reading the configuration again while `calbridge run` runs (issue: "a changed secret needs
//! a restart"): the process is started with a wrong client secret and a directory of some of
//! the emulator's people; the file is then fixed and extended and `calbridge reload` (the
//! API) or SIGHUP makes the running process take it: the secret, the directory and the
//! presence language apply live, other changes are named as needing a restart, and a broken
//! file changes nothing while the service runs on.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{free_port, Process};
use common::GraphClient;
use jiff::{SignedDuration, Timestamp};
use m365_emulator::{Emulator, EmulatorConfig, ReadyInfo};
use serde_json::Value;

// The token `Process::get` presents.
const TOKEN: &str = "cluster-test-token";

struct Settings<'a> {
    port: u16,
    secret: &'a str,
    directory: &'a Path,
    language: &'a str,
    window_hours: u32,
}

fn config_text(ready: &ReadyInfo, data: &Path, settings: &Settings) -> String {
    format!(
        r#"[presence]
timezone = "UTC"
language = "{language}"

[store]
path = "{store}"

[api]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
token = "{TOKEN}"

[sync]
window_hours = {window}

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
file = "{directory}"
refresh_seconds = 3600
"#,
        language = settings.language,
        store = data.join("calbridge.sqlite").display(),
        port = settings.port,
        window = settings.window_hours,
        tenant = ready.tenant_id,
        client = ready.client_id,
        secret = settings.secret,
        base = ready.base_url,
        ca = ready.ca_cert.display(),
        directory = settings.directory.display(),
    )
}

fn write_directory(path: &Path, people: &[String]) {
    let mut text = String::from("address\n");
    for person in people {
        text.push_str(person);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write the directory file");
}

async fn users(process: &Process, http: &reqwest::Client) -> Vec<Value> {
    process
        .get(http, "/api/v1/users")
        .await
        .and_then(|body| body["users"].as_array().cloned())
        .unwrap_or_default()
}

/// Waits until `check` holds for the users the process lists, failing with the last listing.
async fn wait_users(
    process: &Process,
    http: &reqwest::Client,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = users(process, http).await;
        if check(&listed) {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s; users: {}\n{}",
            serde_json::to_string_pretty(&listed).unwrap_or_default(),
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has_presence(user: &Value) -> bool {
    user["presence"]["activity"].is_string()
}

fn reload_cli(config: &Path) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_calbridge"))
        .args(["reload", "--config"])
        .arg(config)
        .env_remove("CALBRIDGE_API_TOKEN")
        .output()
        .expect("calbridge reload runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_takes_a_fixed_secret_a_new_directory_and_rules_from_its_file() {
    let emulator = Emulator::start(EmulatorConfig::generated(20, 7))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let graph = GraphClient::new(&ready).await;
    let group = ready.group_id.clone().expect("a group");
    let mut people = graph.group_members(&group).await;
    people.sort();
    assert!(people.len() >= 12, "{people:?}");
    let data = tempfile::tempdir().expect("a temp dir");
    let directory = data.path().join("people.csv");
    write_directory(&directory, &people[..10]);
    let config = data.path().join("calbridge.toml");
    let port = free_port();
    let mut settings = Settings {
        port,
        secret: "not-the-secret",
        directory: &directory,
        language: "en",
        window_hours: 48,
    };
    std::fs::write(&config, config_text(&ready, data.path(), &settings)).expect("write config");
    let log = data.path().join("calbridge.log");
    let process = Process::start("reload", &config, format!("127.0.0.1:{port}"), log);
    let http = calbridge_net::build_http_client(None).expect("an HTTP client");
    process.wait_answering(&http, Duration::from_secs(60)).await;

    // A wrong secret: the people are listed, nobody has presence.
    wait_users(&process, &http, "ten people listed", |users| {
        users.len() == 10
    })
    .await;
    assert!(
        users(&process, &http)
            .await
            .iter()
            .all(|user| !has_presence(user)),
        "nobody can have presence with a wrong secret"
    );

    // The fixed secret, two more people, and a sync setting that waits for a restart.
    let secret = ready.client_secret.clone().expect("a secret");
    write_directory(&directory, &people[..12]);
    settings.secret = &secret;
    settings.window_hours = 24;
    std::fs::write(&config, config_text(&ready, data.path(), &settings)).expect("write config");
    let (success, stdout, stderr) = reload_cli(&config);
    assert!(success, "calbridge reload failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("applied: [sources.graph] of `demo`: the new client secret"),
        "{stdout}"
    );
    assert!(
        stdout.contains("applied: [[directory]] of source `demo`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("needs a restart: [sync] changed"),
        "{stdout}"
    );
    assert!(!stdout.contains(&secret), "the secret is never printed");
    wait_users(&process, &http, "twelve people with presence", |users| {
        users.len() == 12 && users.iter().all(has_presence)
    })
    .await;

    // A meeting now for one person, then the language changes: the note follows at once.
    let person = &people[0];
    let now = Timestamp::now();
    graph.free_around(person, now).await;
    graph
        .create_event(
            person,
            "Reload review",
            now - SignedDuration::from_mins(5),
            now + SignedDuration::from_mins(90),
            "busy",
        )
        .await;
    let note_of = |users: &[Value]| -> String {
        users
            .iter()
            .find(|user| user["address"].as_str() == Some(person.as_str()))
            .and_then(|user| user["presence"]["note"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    wait_users(&process, &http, "the meeting in English", |users| {
        note_of(users).contains("until")
    })
    .await;
    settings.language = "de";
    std::fs::write(&config, config_text(&ready, data.path(), &settings)).expect("write config");
    let (success, stdout, stderr) = reload_cli(&config);
    assert!(success, "calbridge reload failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "applied: [presence]: new rules, language and time zone; 12 people decided anew"
        ),
        "{stdout}"
    );
    // The sync setting still waits: the running value was kept.
    assert!(
        stdout.contains("needs a restart: [sync] changed"),
        "{stdout}"
    );
    wait_users(&process, &http, "the meeting in German", |users| {
        note_of(users).contains("bis")
    })
    .await;

    // A broken file, by SIGHUP: nothing changes, the service runs on and says why.
    std::fs::write(&config, "[presence\nlanguage = ").expect("write a broken config");
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &process.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&process.log).unwrap_or_default();
        if log.contains("nothing was changed, the service runs on") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reload error in the log after SIGHUP: {}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = users(&process, &http).await;
    assert_eq!(listed.len(), 12, "the service still lists everyone");
    assert!(note_of(&listed).contains("bis"), "{listed:?}");
    let (success, _, stderr) = reload_cli(&config);
    assert!(!success, "a broken file is refused");
    assert!(stderr.contains("is invalid"), "{stderr}");
}
