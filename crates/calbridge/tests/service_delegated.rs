//! `auth = "delegated"` (issue #13): a monitor account signs in once with a device code
//! (`calbridge login`'s flow, the code entered on the emulator's verification page), its
//! refresh token is sealed in the store and rotated, the service reads the calendars shared
//! with it by delta polling, a calendar not shared is reported for that person only, and a
//! revoked sign-in is reported with what to do and retried with back-off.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use calbridge::sign_in::{login_with, refresh_token_name};
use calbridge_sources_graph::{GraphAuth, GraphCredential};
use common::*;
use m365_emulator::{Emulator, EmulatorConfig, ReadyInfo, Scenario};

const MONITOR: &str = "monitor@contoso.example";
const MONITOR_PASSWORD: &str = "Monitor-Pa55word";
const ADA: &str = "ada@contoso.example";
const BOB: &str = "bob@contoso.example";
const CAROL: &str = "carol@contoso.example";

fn scenario() -> Scenario {
    let text = format!(
        r#"
[settings]
device_code_interval_seconds = 1

[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "calbridge monitor"
secrets = [{{ value = "unused-by-a-public-client" }}]
delegated_permissions = ["Calendars.Read.Shared", "User.ReadBasic.All"]
admin_consent = true
public_client = true

[[users]]
upn = "{MONITOR}"
password = "{MONITOR_PASSWORD}"

[[users]]
upn = "{ADA}"
calendar_shared_with = ["{MONITOR}"]

[[users]]
upn = "{BOB}"

[[users]]
upn = "{CAROL}"
calendar_shared_with = ["{MONITOR}"]

# Laid around the emulator's start, which is this test's start: running now for two hours.
[[events]]
mailbox = "{ADA}"
subject = "Shared planning"
start = "-10m"
duration = "2h"

[[events]]
mailbox = "{BOB}"
subject = "Bob's own"
start = "-10m"
duration = "2h"
"#
    );
    Scenario::from_toml_str(&text).expect("the scenario parses")
}

/// The service's configuration for the scenario: a delegated public client, polling every second.
fn delegated_config(
    ready: &ReadyInfo,
    data: &std::path::Path,
    public_url: &str,
) -> calbridge::config::Config {
    let file = data.join("people.csv");
    std::fs::write(&file, format!("address\n{ADA}\n{BOB}\n{CAROL}\n")).expect("directory file");
    let mut config = config_for(ready, data, public_url, Some(&file));
    config.sync.poll_interval_seconds = 1;
    let graph = config.sources[0].graph.as_mut().expect("a Graph source");
    graph.auth = GraphAuth::Delegated;
    // A public client ("Allow public client flows"): no secret at all.
    graph.credential = GraphCredential::None;
    config
}

/// The person at the browser: enters the code on the verification page and signs in.
async fn enter_code(ready: &ReadyInfo, user_code: &str) {
    let http = calbridge_net::build_http_client(Some(&ready.ca_cert)).expect("an HTTPS client");
    let page = http
        .post(format!("{}/devicelogin", ready.base_url))
        .form(&[
            ("otc", user_code),
            ("login", MONITOR),
            ("passwd", MONITOR_PASSWORD),
        ])
        .send()
        .await
        .expect("the verification page answers")
        .text()
        .await
        .expect("a page");
    assert!(page.contains("You have signed in"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_account_signs_in_once_and_the_service_reads_the_calendars_shared_with_it() {
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::scenario(scenario()))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let config = delegated_config(&ready, data.path(), &public_url);
    let graph_config = config.sources[0].graph.clone().expect("a Graph source");

    // `calbridge login --source demo`: the code is printed, entered in a browser, and the
    // refresh token lands sealed in the store.
    let opened = calbridge::service::open_store_for_command(&config)
        .await
        .expect("the store opens");
    let store = opened.store();
    let printed = Arc::new(Mutex::new(Vec::<String>::new()));
    let lines = Arc::clone(&printed);
    let login = tokio::spawn({
        let store = Arc::clone(&store);
        let graph_config = graph_config.clone();
        async move {
            login_with(&graph_config, SOURCE, store, &mut move |line| {
                lines.lock().expect("lines").push(line)
            })
            .await
        }
    });
    let user_code = wait_for("the printed code", PATIENCE, || {
        printed
            .lock()
            .ok()?
            .iter()
            .find_map(|line| line.strip_prefix("code: ").map(str::to_string))
    })
    .await;
    let message = printed.lock().expect("lines")[0].clone();
    assert!(
        message.contains(&format!("{}/devicelogin", ready.base_url))
            && message.contains(&user_code),
        "{message}"
    );
    enter_code(&ready, &user_code).await;
    tokio::time::timeout(Duration::from_secs(30), login)
        .await
        .expect("the login ends")
        .expect("the login task")
        .expect("the login succeeds");
    let signed_in_line = printed
        .lock()
        .expect("lines")
        .last()
        .cloned()
        .unwrap_or_default();
    assert!(signed_in_line.contains(MONITOR), "{signed_in_line}");
    let saved = store
        .get_secret(&refresh_token_name(SOURCE))
        .await
        .expect("the store reads")
        .expect("a refresh token is saved");
    // Nothing of the token reached the operator's screen.
    assert!(printed
        .lock()
        .expect("lines")
        .iter()
        .all(|line| !line.contains(saved.expose())));
    opened.close().await;

    let running = start_service(config, Arc::new(calbridge::clock::SystemClock), listener).await;
    wait_presence(&running, ADA, "busy", |note| {
        note.contains("Shared planning")
    })
    .await;
    let sync = running.syncs.values().next().expect("one source").clone();
    assert!(sync.source.graph.is_delegated());

    // The refresh at start rotated the token, and the new one was saved.
    wait_for("the rotated refresh token in the store", PATIENCE, || {
        let store = Arc::clone(&running.store);
        let saved = saved.clone();
        let current =
            futures_now(async move { store.get_secret(&refresh_token_name(SOURCE)).await });
        match current {
            Some(Ok(Some(current))) if current != saved => Some(()),
            _ => None,
        }
    })
    .await;

    // Bob did not share his calendar: reported for Bob, with what to do; Carol is read.
    let bob = wait_for("Bob's trouble", PATIENCE, || {
        sync.health(&key(BOB))
            .and_then(|health| health.last_error)
            .filter(|error| error.contains("not shared"))
    })
    .await;
    assert!(bob.contains("Share"), "{bob}");
    let carol = sync.health(&key(CAROL)).expect("Carol's health");
    assert!(carol.last_error.is_none(), "{carol:?}");
    assert!(carol.last_full_sync_at.is_some(), "{carol:?}");
    assert!(presence_of(&running, BOB).is_none_or(|(_, note, _)| !note.contains("Bob's own")));
    // No subscription was tried: Graph has none for shared calendars.
    assert!(emulator.subscription_ids().is_empty());
    assert_eq!(
        emulator
            .counters()
            .by_kind
            .get("subscriptions.create")
            .copied()
            .unwrap_or(0),
        0
    );
    running.shutdown().await;
}

/// Runs a short future to completion from a synchronous check (the store answers at once).
fn futures_now<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let handle = tokio::runtime::Handle::current();
    std::thread::spawn(move || handle.block_on(future))
        .join()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_sign_in_is_shown_with_what_to_do_and_not_retried_in_a_loop() {
    init_logs();
    let mut emulator_config = EmulatorConfig::scenario(scenario());
    // Short tokens, so the service refreshes soon after the revocation.
    emulator_config.token_lifetime = Some(jiff::SignedDuration::from_secs(4));
    let emulator = Emulator::start(emulator_config)
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let config = delegated_config(&ready, data.path(), &public_url);
    let graph_config = config.sources[0].graph.clone().expect("a Graph source");
    let opened = calbridge::service::open_store_for_command(&config)
        .await
        .expect("the store opens");
    let printed = Arc::new(Mutex::new(Vec::<String>::new()));
    let lines = Arc::clone(&printed);
    let store = opened.store();
    let login = tokio::spawn(async move {
        login_with(&graph_config, SOURCE, store, &mut move |line| {
            lines.lock().expect("lines").push(line)
        })
        .await
    });
    let user_code = wait_for("the printed code", PATIENCE, || {
        printed
            .lock()
            .ok()?
            .iter()
            .find_map(|line| line.strip_prefix("code: ").map(str::to_string))
    })
    .await;
    enter_code(&ready, &user_code).await;
    login
        .await
        .expect("the login task")
        .expect("the login succeeds");
    opened.close().await;

    let running = start_service(config, Arc::new(calbridge::clock::SystemClock), listener).await;
    wait_presence(&running, ADA, "busy", |note| {
        note.contains("Shared planning")
    })
    .await;
    let sync = running.syncs.values().next().expect("one source").clone();
    let errors_before = emulator
        .counters()
        .by_kind
        .get("identity.token_errors")
        .copied()
        .unwrap_or(0);
    assert!(emulator.revoke_sign_in_sessions(MONITOR));
    let error = wait_for(
        "the refused refresh",
        Duration::from_secs(30),
        || match sync.source.graph.token_status() {
            calbridge_net::entra::TokenStatus::Failing { error, .. } => Some(error),
            _ => None,
        },
    )
    .await;
    let message = error.to_string();
    assert!(error.needs_sign_in(), "{message}");
    assert!(message.contains("AADSTS50173"), "{message}");
    assert!(message.contains("sign in again"), "{message}");
    assert!(message.contains("calbridge login"), "{message}");
    // The status the admin page shows names it too.
    let api = Api::new(&running);
    let status = api.get_authorized("/api/v1/status").await;
    assert!(status.to_string().contains("sign in again"), "{status}");
    // Every caller meanwhile (the engine's reads, `check`) gets an answer at once (the last
    // token while it lasts, then the same error): Entra ID is asked again only after the
    // back-off (a minute, doubling to an hour).
    for _ in 0..5 {
        let again = sync.source.graph.check_token().await;
        assert!(
            again
                .as_ref()
                .err()
                .is_none_or(|error| error.needs_sign_in()),
            "{again:?}"
        );
    }
    let errors_after = emulator
        .counters()
        .by_kind
        .get("identity.token_errors")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        errors_after - errors_before,
        1,
        "the refused grant was asked again in a loop"
    );
    running.shutdown().await;
}

/// The hidden fields of the emulator's sign-in form (`name="…" value="…"`, in that order).
fn hidden_fields(page: &str) -> Vec<(String, String)> {
    page.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|rest| {
            let name = rest.strip_prefix("name=\"")?.split('"').next()?;
            let value = rest.split("value=\"").nth(1)?.split('"').next()?;
            let unescape = |text: &str| {
                text.replace("&quot;", "\"")
                    .replace("&#39;", "'")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&")
            };
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_microsoft_on_the_admin_page_comes_back_to_the_callback_and_the_service_reads()
{
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::scenario(scenario()))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let data = tempfile::tempdir().expect("temp dir");
    let (listener, public_url) = listen(0).await;
    let config = delegated_config(&ready, data.path(), &public_url);
    // The app registration's "Web" redirect URI.
    assert!(emulator.add_redirect_uri(&ready.client_id, &format!("{public_url}/oauth/callback")));
    // Nobody signed in yet: the service starts and says so.
    let running = try_start_service(config, Arc::new(calbridge::clock::SystemClock), listener)
        .await
        .expect("the service starts");
    let api = Api::new(&running);
    let sync = running.syncs.values().next().expect("one source").clone();
    let not_signed_in = wait_for("the missing sign-in", PATIENCE, || {
        match sync.source.graph.token_status() {
            calbridge_net::entra::TokenStatus::Failing { error, .. } => Some(error.to_string()),
            _ => None,
        }
    })
    .await;
    assert!(
        not_signed_in.contains("Sign in with Microsoft"),
        "{not_signed_in}"
    );

    let http = calbridge_net::build_http_client(Some(&ready.ca_cert)).expect("an HTTPS client");
    let started: serde_json::Value = http
        .post(format!("{public_url}/api/v1/sources/{SOURCE}/sign-in"))
        .bearer_auth(running.api_token.expose())
        .send()
        .await
        .expect("the service answers")
        .json()
        .await
        .expect("JSON");
    let authorize_url = started["authorize_url"]
        .as_str()
        .expect("an authorize URL")
        .to_string();
    assert!(
        authorize_url.starts_with(&ready.authority),
        "{authorize_url}"
    );
    assert!(
        authorize_url.contains("code_challenge_method=S256"),
        "{authorize_url}"
    );

    // The browser: the sign-in page, the account and password, back to the callback.
    let page = http
        .get(&authorize_url)
        .send()
        .await
        .expect("the sign-in page")
        .text()
        .await
        .expect("a page");
    let mut fields = hidden_fields(&page);
    assert!(fields.iter().any(|(name, _)| name == "state"), "{page}");
    fields.push(("login".to_string(), MONITOR.to_string()));
    fields.push(("passwd".to_string(), MONITOR_PASSWORD.to_string()));
    let back = http
        .post(format!(
            "{}/{}/oauth2/v2.0/authorize",
            ready.base_url, ready.tenant_id
        ))
        .form(&fields)
        .send()
        .await
        .expect("the sign-in answers");
    assert_eq!(back.url().path(), "/oauth/callback");
    let text = back.text().await.expect("the callback page");
    assert!(text.contains(&format!("Signed in as {MONITOR}")), "{text}");
    wait_presence(&running, ADA, "busy", |note| {
        note.contains("Shared planning")
    })
    .await;
    let saved = running
        .store
        .get_secret(&refresh_token_name(SOURCE))
        .await
        .expect("the store reads");
    assert!(saved.is_some(), "the refresh token is kept in the store");

    // A callback whose state this service did not hand out (or that was used) is refused.
    let forged = http
        .get(format!(
            "{public_url}/oauth/callback?code=stolen&state=not-ours"
        ))
        .send()
        .await
        .expect("the service answers");
    assert_eq!(forged.status(), 400);
    assert!(forged
        .text()
        .await
        .unwrap_or_default()
        .contains("unknown, already used"));
    let status = api.get_authorized("/api/v1/status").await;
    assert_eq!(
        status["sources"][0]["delegated"],
        serde_json::json!(true),
        "{status}"
    );
    running.shutdown().await;
}

/// calbridge.toml for the scenario: one delegated Graph source `demo`, Ada and Bob.
fn write_config_file(dir: &std::path::Path, ready: &ReadyInfo) -> std::path::PathBuf {
    let directory = dir.join("people.csv");
    std::fs::write(&directory, format!("address\n{ADA}\n{BOB}\n")).expect("directory file");
    let toml = format!(
        r#"[store]
path = "{store}"

[[sources]]
id = "demo"

[sources.graph]
tenant_id = "{tenant}"
client_id = "{client}"
auth = "delegated"
authority_url = "{base}"
graph_url = "{base}"
token_scope = "https://graph.microsoft.com/.default"
extra_root_ca = "{ca}"

[[directory]]
source = "demo"
file = "{directory}"
"#,
        store = dir.join("calbridge.sqlite").display(),
        tenant = ready.tenant_id,
        client = ready.client_id,
        base = ready.base_url,
        ca = ready.ca_cert.display(),
        directory = directory.display(),
    );
    let path = dir.join("calbridge.toml");
    std::fs::write(&path, toml).expect("calbridge.toml");
    path
}

async fn run_calbridge(arguments: &[&str]) -> (bool, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_calbridge"))
            .args(arguments)
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("calbridge finishes within 60 s")
    .expect("calbridge runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calbridge_login_and_check_walk_the_delegated_path() {
    use tokio::io::AsyncBufReadExt as _;
    let emulator = Emulator::start(EmulatorConfig::scenario(scenario()))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config_file(dir.path(), &ready);
    let config_arg = config.to_str().expect("a UTF-8 path");

    // Before anyone signed in, check says how to sign in.
    let (passed, text) = run_calbridge(&["check", "--config", config_arg, "--user", ADA]).await;
    assert!(!passed, "{text}");
    assert!(text.contains("No account has signed in"), "{text}");
    assert!(text.contains("calbridge login --source demo"), "{text}");

    // `calbridge login`, the real binary: the code from its output is entered in a browser.
    let mut login = tokio::process::Command::new(env!("CARGO_BIN_EXE_calbridge"))
        .args(["login", "--config", config_arg, "--source", "demo"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("calbridge login starts");
    let stdout = login.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let user_code = loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("login prints within the patience")
            .expect("stdout reads")
            .expect("login prints the code before it ends");
        printed.push(line.clone());
        if let Some(code) = line.strip_prefix("code: ") {
            break code.to_string();
        }
    };
    enter_code(&ready, &user_code).await;
    while let Ok(Some(line)) = lines.next_line().await {
        printed.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), login.wait())
        .await
        .expect("login ends")
        .expect("login exit status");
    assert!(status.success(), "{printed:?}");
    assert!(
        printed
            .iter()
            .any(|line| line.contains(&format!("signed in as {MONITOR}"))),
        "{printed:?}"
    );

    let (passed, text) = run_calbridge(&["check", "--config", config_arg, "--user", ADA]).await;
    assert!(passed, "{text}");
    assert!(text.contains("delegated token"), "{text}");
    assert!(text.contains("delta polling"), "{text}");

    // Bob did not share his calendar: the check says so, and how to share it.
    let (passed, text) = run_calbridge(&["check", "--config", config_arg, "--user", BOB]).await;
    assert!(!passed, "{text}");
    assert!(text.contains("has not shared their calendar"), "{text}");
    assert!(text.contains("Add-MailboxFolderPermission"), "{text}");
}
