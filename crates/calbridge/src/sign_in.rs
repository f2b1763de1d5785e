//! Delegated sign-in of a Graph source (`auth = "delegated"`): the account's refresh token,
//! sealed in the store and replaced at every rotation ([`StoreKeeper`]), and `calbridge login
//! --source ID`, the device code flow for headless servers.
//!
//! The protocol (forms, answers, PKCE) lives in `calbridge_net::entra::delegated`; this module
//! only decides where the refresh token is kept and talks to the operator.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use calbridge_domain::Secret;
use calbridge_net::entra::delegated::{DevicePoll, SignInRequest, SLOW_DOWN_STEP};
use calbridge_net::entra::tokens::{client_assertion, client_credential};
use calbridge_net::entra::RefreshTokenKeeper;
use calbridge_sources_graph::{GraphAuth, GraphSource, GraphSourceConfig};
use calbridge_store::Store;

use crate::config::Config;

/// The store's name of a source's refresh token.
pub fn refresh_token_name(source_id: &str) -> String {
    format!("source.{source_id}.refresh_token")
}

/// Keeps a source's refresh token: in memory for the token provider, sealed in the store for
/// the next start. Every rotation is saved (in a task of its own, so the token provider never
/// waits for the store; a failed save is logged and the next rotation saves again).
pub struct StoreKeeper {
    name: String,
    current: Mutex<Option<Secret>>,
    store: Arc<dyn Store>,
}

impl StoreKeeper {
    /// The keeper of `source_id`, with the refresh token the store holds (if any).
    pub async fn load(store: Arc<dyn Store>, source_id: &str) -> anyhow::Result<Arc<StoreKeeper>> {
        let name = refresh_token_name(source_id);
        let current = store.get_secret(&name).await.with_context(|| {
            format!("cannot read the sign-in of source `{source_id}` from the store")
        })?;
        Ok(Arc::new(StoreKeeper {
            name,
            current: Mutex::new(current),
            store,
        }))
    }
}

impl RefreshTokenKeeper for StoreKeeper {
    fn current(&self) -> Option<Secret> {
        lock(&self.current).clone()
    }

    fn keep(&self, refresh_token: Secret) {
        *lock(&self.current) = Some(refresh_token.clone());
        let store = Arc::clone(&self.store);
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(error) = store.put_secret(&name, &refresh_token).await {
                // The error names the store, never the secret.
                tracing::error!(secret = %name, "the rotated refresh token could not be saved: {error}");
            }
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `calbridge login --source ID`
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    #[arg(long, default_value = "calbridge.toml")]
    pub config: PathBuf,
    /// The `[[sources]]` id of a Graph source with `auth = "delegated"`.
    #[arg(long)]
    pub source: String,
}

/// The delegated Graph source `source_id` names, or what is wrong with the choice.
pub fn delegated_source<'a>(
    config: &'a Config,
    source_id: &str,
) -> anyhow::Result<&'a GraphSourceConfig> {
    let source = config
        .sources
        .iter()
        .find(|source| source.id.0 == source_id)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no [[sources]] entry has id `{source_id}`; the ids are: {}",
                config
                    .sources
                    .iter()
                    .map(|source| source.id.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let graph = source.graph.as_ref().ok_or_else(|| {
        anyhow::anyhow!("source `{source_id}` is not a Graph source: only [sources.graph] with auth = \"delegated\" signs in")
    })?;
    if graph.auth != GraphAuth::Delegated {
        anyhow::bail!("source `{source_id}` signs in as the app (auth = \"app\"): set auth = \"delegated\" in [sources.graph] to read as a signed-in account");
    }
    Ok(graph)
}

/// Runs the device code flow: prints where to go and the code, waits (at the interval Entra
/// ID names, longer after `slow_down`) until the account signed in, and saves its refresh
/// token sealed in the store. The service picks it up at its next start.
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let graph_config = delegated_source(&config, &args.source)?.clone();
    let opened = crate::service::open_store_for_command(&config)
        .await
        .context("the sign-in is kept in the store, which cannot be opened: while `calbridge run` holds an SQLite store, sign in with \"Sign in with Microsoft\" on the admin page instead, or stop the service first")?;
    let outcome = login_with(&graph_config, &args.source, opened.store(), &mut |line| {
        println!("{line}")
    })
    .await;
    opened.close().await;
    outcome
}

/// The device code flow against `graph_config`, saving into `store`; `say` prints for the
/// operator (a test collects the lines to enter the code).
pub async fn login_with(
    graph_config: &GraphSourceConfig,
    source_id: &str,
    store: Arc<dyn Store>,
    say: &mut (dyn FnMut(String) + Send),
) -> anyhow::Result<()> {
    let source = GraphSource::new(
        graph_config,
        Arc::new(crate::clock::GraphClockAdapter(Arc::new(
            crate::clock::SystemClock,
        ))),
    )
    .with_context(|| format!("source `{source_id}`"))?;
    let scope = graph_config.delegated_scope();
    let request = SignInRequest {
        authority_url: &graph_config.authority_url,
        tenant_id: graph_config.tenant_id.trim(),
        client_id: graph_config.client_id.trim(),
        scope: &scope,
    };
    let poster = source.http_client();
    let device = request.start_device_flow(poster).await?;
    say(if device.message.is_empty() {
        format!(
            "To sign in, open {} and enter the code {}.",
            device.verification_uri, device.user_code
        )
    } else {
        device.message.clone()
    });
    say(format!("code: {}", device.user_code));
    let deadline = tokio::time::Instant::now() + device.expires_in;
    let mut interval = device.interval;
    let credential = source.tokens().credential();
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("the code expired before anybody signed in: run `calbridge login --source {source_id}` again");
        }
        let token_url = calbridge_net::entra::delegated::endpoint_url(
            &graph_config.authority_url,
            graph_config.tenant_id.trim(),
            "token",
        );
        let assertion = client_assertion(
            &credential,
            graph_config.client_id.trim(),
            &token_url,
            jiff::Timestamp::now(),
        )?;
        let poll = request
            .poll_device_code(
                poster,
                &device.device_code,
                client_credential(&credential, assertion.as_ref()),
            )
            .await?;
        match poll {
            DevicePoll::Pending => {}
            DevicePoll::SlowDown => interval += SLOW_DOWN_STEP,
            DevicePoll::Expired => anyhow::bail!("the code expired before anybody signed in: run `calbridge login --source {source_id}` again"),
            DevicePoll::Declined => anyhow::bail!("the sign-in was declined; nothing was saved"),
            DevicePoll::SignedIn(signed_in) => {
                store
                    .put_secret(&refresh_token_name(source_id), &signed_in.refresh_token)
                    .await
                    .context("the sign-in succeeded but its refresh token could not be saved in the store")?;
                say(format!(
                    "signed in as {}; the refresh token is sealed in the store. Start (or restart) the service: source `{source_id}` reads the calendars shared with this account.",
                    signed_in.account.as_deref().unwrap_or("the account")
                ));
                return Ok(());
            }
        }
    }
}

/// How long a started "Sign in with Microsoft" may take until its callback.
const PENDING_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// The admin page's sign-ins in progress (authorization code with PKCE): per `state`, the
/// source and the PKCE verifier, taken once by the callback.
#[derive(Default)]
pub struct PendingSignIns {
    pending: Mutex<HashMap<String, PendingSignIn>>,
}

struct PendingSignIn {
    source_id: String,
    verifier: Secret,
    started: std::time::Instant,
}

/// `{public_url}/oauth/callback`, the redirect URI to register on the app ("Web" platform).
pub fn redirect_uri(public_url: &str) -> String {
    format!("{}/oauth/callback", public_url.trim_end_matches('/'))
}

/// The sign-in request of a delegated source, from what the source knows.
fn request_of(source: &GraphSource) -> (String, String, String, String) {
    let (authority, tenant) = source.sign_in_endpoint();
    (
        authority.to_string(),
        tenant.to_string(),
        source.tokens().client_id().to_string(),
        source.tokens().scope().to_string(),
    )
}

impl PendingSignIns {
    /// Starts a sign-in for `source_id`: the URL to send the browser to.
    pub fn start(&self, source_id: &str, source: &GraphSource, public_url: &str) -> String {
        let pkce = calbridge_net::entra::delegated::Pkce::generate();
        let state = calbridge_net::entra::delegated::random_url_safe(24);
        let (authority, tenant, client_id, scope) = request_of(source);
        let request = SignInRequest {
            authority_url: &authority,
            tenant_id: &tenant,
            client_id: &client_id,
            scope: &scope,
        };
        let url = request.authorize_url(&redirect_uri(public_url), &state, &pkce);
        let mut pending = lock(&self.pending);
        pending.retain(|_, entry| entry.started.elapsed() < PENDING_LIFETIME);
        pending.insert(
            state,
            PendingSignIn {
                source_id: source_id.to_string(),
                verifier: pkce.verifier,
                started: std::time::Instant::now(),
            },
        );
        url
    }

    /// Takes the sign-in `state` names (once; unknown, used or older than ten minutes: none).
    fn take(&self, state: &str) -> Option<PendingSignIn> {
        lock(&self.pending)
            .remove(state)
            .filter(|entry| entry.started.elapsed() < PENDING_LIFETIME)
    }

    /// The callback: checks `state`, redeems the code with the PKCE verifier, and gives the
    /// account's refresh token to the source (kept sealed in the store, back-off ended).
    /// Returns the signed-in account's name and the source id.
    pub async fn finish(
        &self,
        state: &str,
        code: &str,
        public_url: &str,
        source_of: impl Fn(&str) -> Option<GraphSource>,
    ) -> Result<(String, String), String> {
        let pending = self.take(state).ok_or_else(|| {
            "this sign-in is unknown, already used or older than ten minutes: start it again from the admin page".to_string()
        })?;
        let source = source_of(&pending.source_id)
            .ok_or_else(|| format!("source `{}` is gone", pending.source_id))?;
        let (authority, tenant, client_id, scope) = request_of(&source);
        let request = SignInRequest {
            authority_url: &authority,
            tenant_id: &tenant,
            client_id: &client_id,
            scope: &scope,
        };
        let credential = source.tokens().credential();
        let token_url = calbridge_net::entra::delegated::endpoint_url(&authority, &tenant, "token");
        let assertion =
            client_assertion(&credential, &client_id, &token_url, jiff::Timestamp::now())
                .map_err(|error| error.to_string())?;
        let signed_in = request
            .redeem_authorization_code(
                source.http_client(),
                code,
                &redirect_uri(public_url),
                &pending.verifier,
                client_credential(&credential, assertion.as_ref()),
            )
            .await
            .map_err(|error| error.to_string())?;
        source.tokens().signed_in(signed_in.refresh_token);
        Ok((
            signed_in
                .account
                .unwrap_or_else(|| "the account".to_string()),
            pending.source_id,
        ))
    }
}
