//! `calbridge check` on an EWS source, run as the real binary against the emulator with
//! Extended Protection required (Exchange's default since 2019 CU14): a good configuration
//! (found through Autodiscover) passes every step; a wrong password fails the sign-in step with
//! advice and without printing the password; behind a TLS-terminating load balancer the check
//! says that Extended Protection refused the channel binding, and names the certificate; a
//! source following rooms reads Exchange's room lists, and an unknown room list is named.

use std::path::Path;
use std::time::Duration;

use m365_emulator::{
    Emulator, EmulatorConfig, ExtendedProtection, FaultSettings, ReadyInfo, RunningEmulator,
};

/// A generated organisation whose EWS requires Extended Protection, with a TLS-terminating load
/// balancer in front (`tls_offload_url`).
async fn start_emulator(seed: u64) -> RunningEmulator {
    let mut config = EmulatorConfig::generated(6, seed);
    config.faults = Some(FaultSettings {
        ews_extended_protection: ExtendedProtection::Require,
        ..FaultSettings::default()
    });
    config.tls_offload_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    Emulator::start(config).await.expect("the emulator starts")
}

const WRONG_PASSWORD: &str = "Not-The-Right-0ne!";

/// Writes calbridge.toml with one `[sources.ews]` source and a directory file.
fn write_config(
    dir: &Path,
    ready: &ReadyInfo,
    password: &str,
    endpoint: &str,
    people: &[String],
) -> std::path::PathBuf {
    let directory = dir.join("people.csv");
    let mut csv = String::from("address,display_name\n");
    for person in people {
        csv.push_str(&format!("{person},\n"));
    }
    std::fs::write(&directory, csv).expect("write the directory");
    let toml = format!(
        r#"[store]
path = "{store}"

[[sources]]
id = "onprem"

[sources.ews]
user = "{user}"
password = "{password}"
auth = "ntlm"
access = "impersonation"
{endpoint}
extra_root_ca = "{ca}"

[[directory]]
source = "onprem"
file = "{directory}"
"#,
        store = dir.join("calbridge.sqlite").display(),
        user = ready.ews_user.as_deref().expect("an impersonation account"),
        ca = ready.ca_cert.display(),
        directory = directory.display(),
    );
    let path = dir.join("calbridge.toml");
    std::fs::write(&path, toml).expect("write calbridge.toml");
    path
}

async fn run_check(config: &Path) -> (bool, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_calbridge"))
            .arg("check")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("calbridge check finishes within 60 s")
    .expect("calbridge check runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn group_mail(ready: &ReadyInfo) -> Vec<String> {
    let client = calbridge_net::build_http_client(Some(&ready.ca_cert))
        .expect("an HTTP client trusting the emulator's CA");
    let secret = ready.client_secret.clone().expect("the app has a secret");
    let token: serde_json::Value = client
        .post(&ready.token_url)
        .form(&[
            ("client_id", ready.client_id.as_str()),
            ("client_secret", secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token JSON");
    let token = token["access_token"].as_str().expect("a token").to_string();
    let group = ready.group_id.as_deref().expect("a group");
    let members: serde_json::Value = client
        .get(format!(
            "{}/groups/{group}/members?$top=999&$select=mail",
            ready.graph_url
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("members request")
        .json()
        .await
        .expect("members JSON");
    members["value"]
        .as_array()
        .expect("a value array")
        .iter()
        .filter_map(|member| member["mail"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_walks_every_ews_step_and_names_a_wrong_password() {
    let emulator = start_emulator(31).await;
    let ready = emulator.ready().clone();
    let people = group_mail(&ready).await;
    assert!(!people.is_empty(), "the generated group has people");
    let password = ready.ews_password.clone().expect("its password");

    // Passing run: Autodiscover finds EWS.
    let good_dir = tempfile::tempdir().expect("temp dir");
    let endpoint = format!("autodiscover_url = \"{}\"", ready.autodiscover_url);
    let config = write_config(good_dir.path(), &ready, &password, &endpoint, &people);
    let (success, output) = run_check(&config).await;
    assert!(success, "check should pass:\n{output}");
    for name in [
        "ok   configuration",
        "ok   Autodiscover",
        "ok   sign-in",
        "ok   user lookup",
        "ok   calendar read",
        "ok   streaming subscription",
        "all checks passed",
    ] {
        assert!(output.contains(name), "missing `{name}` in:\n{output}");
    }
    assert!(output.contains(&ready.ews_url), "shows the URL:\n{output}");
    assert!(!output.contains("FAIL"), "{output}");
    assert!(
        !output.contains(&password),
        "the password is printed:\n{output}"
    );

    // Wrong password: the sign-in step fails, with advice, and the password is not shown.
    let bad_dir = tempfile::tempdir().expect("temp dir");
    let endpoint = format!("ews_url = \"{}\"", ready.ews_url);
    let config = write_config(bad_dir.path(), &ready, WRONG_PASSWORD, &endpoint, &people);
    let (success, output) = run_check(&config).await;
    assert!(!success, "check should fail:\n{output}");
    assert!(output.contains("ok   EWS URL"), "{output}");
    assert!(output.contains("FAIL sign-in"), "{output}");
    assert!(
        output.contains("lockout"),
        "advice about lockouts:\n{output}"
    );
    assert!(!output.contains("ok   calendar read"), "{output}");
    assert!(
        !output.contains(WRONG_PASSWORD),
        "the password is printed:\n{output}"
    );
    assert!(!output.contains(&password), "{output}");
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_tls_terminating_proxy_check_says_extended_protection_refused_the_binding() {
    let emulator = start_emulator(33).await;
    let ready = emulator.ready().clone();
    let people = group_mail(&ready).await;
    let password = ready.ews_password.clone().expect("its password");
    let behind_proxy = format!(
        "ews_url = \"{}/EWS/Exchange.asmx\"",
        ready.tls_offload_url.as_deref().expect("the load balancer")
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &ready, &password, &behind_proxy, &people);

    // `Allow`: the logon without a binding gets in, so the check knows the binding was refused.
    emulator.set_faults(FaultSettings {
        ews_extended_protection: ExtendedProtection::Allow,
        ..FaultSettings::default()
    });
    let (success, output) = run_check(&config).await;
    assert!(!success, "check should fail:\n{output}");
    assert!(output.contains("FAIL sign-in"), "{output}");
    assert!(output.contains("FAIL Extended Protection"), "{output}");
    assert!(output.contains("Extended Protection is on: "), "{output}");
    assert!(output.contains("TLS-terminating"), "{output}");
    assert!(output.contains("thumbprint "), "{output}");
    assert!(
        !output.contains(&password),
        "the password is printed:\n{output}"
    );

    // `Require`: a binding that cannot match and a wrong password look the same from outside;
    // the check names both.
    emulator.set_faults(FaultSettings {
        ews_extended_protection: ExtendedProtection::Require,
        ..FaultSettings::default()
    });
    let (success, output) = run_check(&config).await;
    assert!(!success, "check should fail:\n{output}");
    assert!(output.contains("FAIL sign-in"), "{output}");
    assert!(!output.contains("Extended Protection is on"), "{output}");
    assert!(
        output.contains("Extended Protection may be refusing the channel binding"),
        "{output}"
    );
    assert!(output.contains("lockout"), "{output}");
    assert!(
        !output.contains(&password),
        "the password is printed:\n{output}"
    );
    emulator.shutdown().await;
}

/// Rewrites the directory entry of `config` to follow `rooms` instead of the file.
fn follow_rooms(config: &Path, rooms: &str) {
    let text = std::fs::read_to_string(config).expect("read calbridge.toml");
    let (before, _) = text.split_once("file = ").expect("the directory file line");
    std::fs::write(config, format!("{before}rooms = \"{rooms}\"\n")).expect("write calbridge.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_the_rooms_of_exchanges_room_lists_and_names_an_unknown_list() {
    let emulator = start_emulator(35).await;
    let ready = emulator.ready().clone();
    let password = ready.ews_password.clone().expect("its password");
    let endpoint = format!("ews_url = \"{}\"", ready.ews_url);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &ready, &password, &endpoint, &[]);
    follow_rooms(&config, "all");
    let (success, output) = run_check(&config).await;
    assert!(success, "check should pass:\n{output}");
    // Six people come with two rooms, each in a building and room list of its own.
    assert!(output.contains("ok   directory rooms"), "{output}");
    assert!(output.contains("lists 2 rooms"), "{output}");
    assert!(output.contains("ok   user lookup"), "{output}");
    assert!(output.contains("room.1@contoso.example"), "{output}");

    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &ready, &password, &endpoint, &[]);
    follow_rooms(&config, "rooms.nowhere@contoso.example");
    let (success, output) = run_check(&config).await;
    assert!(!success, "check should fail:\n{output}");
    assert!(output.contains("FAIL directory rooms"), "{output}");
    assert!(
        output.contains("rooms.nowhere@contoso.example")
            && output.contains("ErrorNameResolutionNoResults"),
        "{output}"
    );
    assert!(
        output.contains("Get-DistributionGroup -RecipientTypeDetails RoomList"),
        "{output}"
    );
    emulator.shutdown().await;
}
