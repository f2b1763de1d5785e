//! A delegated Graph source against the emulator's generated organisation: its monitor account
//! signs in by device code (`calbridge_net::entra::delegated`), the source reads the calendars
//! shared with it in one `$batch`, names the one not shared for that person only, and keeps the
//! refresh token Entra ID rotated.

use std::sync::{Arc, Mutex};

use calbridge_domain::Secret;
use calbridge_net::entra::delegated::{DevicePoll, SignInRequest};
use calbridge_net::entra::RefreshTokenKeeper;
use calbridge_sources_graph::{
    GraphAuth, GraphCredential, GraphError, GraphSource, GraphSourceConfig, SubjectFetch,
    SystemClock,
};
use jiff::{SignedDuration, Timestamp};
use m365_emulator::{Emulator, EmulatorConfig, ReadyInfo};

#[derive(Default)]
struct MemoryKeeper(Mutex<Option<Secret>>);

impl RefreshTokenKeeper for MemoryKeeper {
    fn current(&self) -> Option<Secret> {
        self.0.lock().ok().and_then(|token| token.clone())
    }
    fn keep(&self, refresh_token: Secret) {
        if let Ok(mut token) = self.0.lock() {
            *token = Some(refresh_token);
        }
    }
}

fn config(ready: &ReadyInfo, auth: GraphAuth, credential: GraphCredential) -> GraphSourceConfig {
    let mut config = GraphSourceConfig::new(&ready.tenant_id, &ready.client_id, credential);
    config.auth = auth;
    config.authority_url = ready.base_url.clone();
    config.graph_url = ready.base_url.clone();
    config.token_scope = Some("https://graph.microsoft.com/.default".to_string());
    config.extra_root_ca = Some(ready.ca_cert.clone());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_source_reads_shared_calendars_and_names_the_one_not_shared() {
    let emulator = Emulator::start(EmulatorConfig::generated(30, 13))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    // The people, as the app itself lists them.
    let app = GraphSource::new(
        &config(
            &ready,
            GraphAuth::App,
            GraphCredential::ClientSecret(Secret::new(
                ready.client_secret.clone().expect("a secret"),
            )),
        ),
        Arc::new(SystemClock),
    )
    .expect("the app source");
    let people = app
        .group_members(ready.group_id.as_deref().expect("the group"))
        .await
        .expect("the group's members");
    assert_eq!(people.len(), 30);

    // The monitor signs in by device code; the code is entered on the verification page.
    let delegated_config = config(&ready, GraphAuth::Delegated, GraphCredential::None);
    let keeper = Arc::new(MemoryKeeper::default());
    let source = GraphSource::delegated(
        &delegated_config,
        Arc::new(SystemClock),
        Default::default(),
        Arc::clone(&keeper) as Arc<dyn RefreshTokenKeeper>,
    )
    .expect("the delegated source");
    let scope = delegated_config.delegated_scope();
    let request = SignInRequest {
        authority_url: &ready.base_url,
        tenant_id: &ready.tenant_id,
        client_id: &ready.client_id,
        scope: &scope,
    };
    let device = request
        .start_device_flow(source.http_client())
        .await
        .expect("a device code");
    let page = source
        .http_client()
        .post(&device.verification_uri)
        .form(&[
            ("otc", device.user_code.as_str()),
            (
                "login",
                ready.delegated_user.as_deref().expect("the monitor"),
            ),
            (
                "passwd",
                ready.delegated_password.as_deref().expect("its password"),
            ),
        ])
        .send()
        .await
        .expect("the verification page")
        .text()
        .await
        .expect("a page");
    assert!(page.contains("You have signed in"), "{page}");
    let DevicePoll::SignedIn(signed_in) = request
        .poll_device_code(source.http_client(), &device.device_code, None)
        .await
        .expect("the poll")
    else {
        panic!("the sign-in was finished before the poll");
    };
    assert_eq!(
        signed_in.account.as_deref(),
        ready.delegated_user.as_deref()
    );
    let first_refresh_token = signed_in.refresh_token.clone();
    source.tokens().signed_in(signed_in.refresh_token);

    // One $batch for all 30; the 25th person (index 24) did not share their calendar.
    let now = Timestamp::now();
    let keys: Vec<(usize, String)> = people
        .iter()
        .enumerate()
        .map(|(index, person)| (index, person.id.clone()))
        .collect();
    let results = source
        .read_windows(
            &keys,
            now,
            now + SignedDuration::from_hours(24),
            SubjectFetch::Skip,
        )
        .await;
    let refused: Vec<usize> = results
        .iter()
        .filter(|(_, result)| result.is_err())
        .map(|(index, _)| *index)
        .collect();
    assert_eq!(refused, vec![24]);
    let Some((_, Err(error))) = results.iter().find(|(index, _)| *index == 24) else {
        panic!("no refusal for the 25th person");
    };
    assert!(matches!(error, GraphError::NotShared { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("not shared with the signed-in account"),
        "{error}"
    );

    // The refresh that gave the access token rotated the refresh token, and the keeper has it.
    let kept = keeper.current().expect("a kept refresh token");
    assert_ne!(kept, first_refresh_token);
}
