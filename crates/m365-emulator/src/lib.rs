//! A Microsoft 365 emulator: the Entra ID token endpoint and the Microsoft Graph calendar
//! endpoints calbridge uses, over HTTPS, with faults and limits that tests can switch.
//!
//! Start it in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), m365_emulator::StartError> {
//! use m365_emulator::{Emulator, EmulatorConfig};
//! let emulator = Emulator::start(EmulatorConfig::generated(100, 1)).await?;
//! let ready = emulator.ready();
//! println!("Graph at {}, token URL {}, trust {}", ready.graph_url, ready.token_url, ready.ca_cert.display());
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! or as a process: `m365-emulator --listen 127.0.0.1:0 --generate-users 100`, which prints the
//! same [`ReadyInfo`] as one JSON line on stdout.

mod admin;
mod booking;
mod calendar;
mod clock;
mod directory;
mod ews;
mod faults;
mod generate;
mod graph;
mod identity;
mod ids;
mod jwt;
mod notify;
mod places;
mod recurrence;
mod scenario;
mod server;
mod signin;
mod state;
mod timefmt;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jiff::SignedDuration;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use clock::{Clock, ClockIsSystem};

/// The client side of NTLM (NEGOTIATE and an NTLMv2 AUTHENTICATE), for tests of the EWS endpoint.
pub mod ntlm_client {
    pub use crate::ews::ntlm::{
        channel_binding_hash, client_authenticate, client_authenticate_bound, client_negotiate,
    };
}
pub use faults::{CountersSnapshot, ExtendedProtection, FaultSettings};
pub use graph::subscriptions::{LifecycleError, LifecycleEvent};
pub use scenario::{Scenario, ScenarioError};

/// Where the emulator's directory and calendars come from.
#[derive(Debug)]
pub enum DataSource {
    /// A scenario file (`.toml` or `.json`).
    ScenarioFile(PathBuf),
    /// A scenario already parsed (e.g. built by a test).
    Scenario(Box<Scenario>),
    /// `--generate-users N --seed S`.
    Generated { n_users: usize, seed: u64 },
}

/// How to start an emulator.
#[derive(Debug)]
pub struct EmulatorConfig {
    /// Address to listen on; port 0 picks a free port (the ready info tells which).
    pub listen: SocketAddr,
    pub data: DataSource,
    /// The clock for token, secret, subscription and delta-token lifetimes and throttling windows.
    pub clock: Clock,
    /// Folder for the CA certificate file; default: a fresh folder under the system temp dir.
    pub state_dir: Option<PathBuf>,
    /// Replaces the scenario's `[faults]` at start.
    pub faults: Option<FaultSettings>,
    /// Replaces the scenario's token lifetime (Entra's is 3599 s).
    pub token_lifetime: Option<SignedDuration>,
    /// Replaces the scenario's refresh token inactivity limit (Entra's is 90 days).
    pub refresh_token_max_inactive: Option<SignedDuration>,
    /// Extra CA certificates (PEM files) trusted for https notification URLs.
    pub trusted_notification_ca_files: Vec<PathBuf>,
    /// Delays between notification delivery retries (after the first attempt).
    pub notification_retry_delays: Vec<Duration>,
    /// A second, plain-http listener (Autodiscover's http:// steps); `None` = no http port.
    pub http_listen: Option<SocketAddr>,
    /// A listener that plays a TLS-terminating load balancer in front of the emulator: same
    /// routes, but another certificate (from the same CA), so NTLM channel bindings made from
    /// what a client sees there do not match the site's certificate, as with SSL offloading
    /// in front of Exchange. `None` (the default) = no such listener.
    pub tls_offload_listen: Option<SocketAddr>,
}

impl EmulatorConfig {
    fn with_data(data: DataSource) -> EmulatorConfig {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data,
            clock: Clock::system(),
            state_dir: None,
            faults: None,
            token_lifetime: None,
            refresh_token_max_inactive: None,
            trusted_notification_ca_files: vec![],
            notification_retry_delays: vec![Duration::from_secs(1), Duration::from_secs(5)],
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            tls_offload_listen: None,
        }
    }

    /// A generated organisation of `n_users` people, deterministic for `seed`.
    pub fn generated(n_users: usize, seed: u64) -> EmulatorConfig {
        EmulatorConfig::with_data(DataSource::Generated { n_users, seed })
    }

    pub fn scenario_file(path: impl Into<PathBuf>) -> EmulatorConfig {
        EmulatorConfig::with_data(DataSource::ScenarioFile(path.into()))
    }

    pub fn scenario(scenario: Scenario) -> EmulatorConfig {
        EmulatorConfig::with_data(DataSource::Scenario(Box::new(scenario)))
    }
}

/// What a client needs to talk to a running emulator; printed as the ready line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReadyInfo {
    /// `https://127.0.0.1:PORT`
    pub base_url: String,
    /// `https://127.0.0.1:PORT/{tenant_id}/oauth2/v2.0/token`
    pub token_url: String,
    /// `https://127.0.0.1:PORT/v1.0`
    pub graph_url: String,
    /// PEM file of the CA that signed the server certificate.
    pub ca_cert: PathBuf,
    pub tenant_id: String,
    pub client_id: String,
    /// The first secret of the ready app (null when it has only certificates).
    pub client_secret: Option<String>,
    /// `https://127.0.0.1:PORT/{tenant_id}`, the msal authority.
    pub authority: String,
    /// `https://127.0.0.1:PORT/_emulator`
    pub admin_url: String,
    /// With `--generate-users`: the group holding every generated person.
    pub group_id: Option<String>,
    pub n_users: usize,
    /// `https://127.0.0.1:PORT/EWS/Exchange.asmx`
    #[serde(default)]
    pub ews_url: String,
    /// `https://127.0.0.1:PORT/autodiscover/autodiscover.xml`
    #[serde(default)]
    pub autodiscover_url: String,
    /// `http://127.0.0.1:PORT2` (plain http, same routes), when `http_listen` is set.
    #[serde(default)]
    pub http_url: Option<String>,
    /// `https://127.0.0.1:PORT3`, the TLS-terminating load balancer, when `tls_offload_listen`
    /// is set (its EWS URL is this followed by `/EWS/Exchange.asmx`).
    #[serde(default)]
    pub tls_offload_url: Option<String>,
    /// An on-premises account with ApplicationImpersonation rights (generated organisations:
    /// `svc.calbridge@contoso.example`; scenarios: the first account with `impersonation` and a password).
    #[serde(default)]
    pub ews_user: Option<String>,
    #[serde(default)]
    pub ews_password: Option<String>,
    /// An account with Reviewer rights on other users' calendars (generated: `monitor@contoso.example`).
    #[serde(default)]
    pub ews_delegate_user: Option<String>,
    #[serde(default)]
    pub ews_delegate_password: Option<String>,
    /// A directory user others shared their calendars with, for delegated sign-in
    /// (`--generate-users`: `graph.monitor@contoso.example`, which every person but one in 25
    /// shares with; scenarios: the first `calendar_shared_with` reader with a password).
    #[serde(default)]
    pub delegated_user: Option<String>,
    #[serde(default)]
    pub delegated_password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot read trusted CA file {path}: {message}")]
    TrustedCa { path: PathBuf, message: String },
    #[error("could not create the token signing key: {0}")]
    Signing(#[from] jwt::JwtError),
    #[error("building the organisation failed: {0}")]
    Build(String),
}

/// Starts emulators.
pub struct Emulator;

impl Emulator {
    /// Builds the data, binds the listener and serves until [`RunningEmulator::shutdown`]
    /// (or until the handle is dropped). Must run inside a tokio runtime.
    pub async fn start(config: EmulatorConfig) -> Result<RunningEmulator, StartError> {
        let now = config.clock.now();
        let world = match config.data {
            DataSource::ScenarioFile(path) => Scenario::load(&path)?.build(now)?,
            DataSource::Scenario(scenario) => scenario.build(now)?,
            DataSource::Generated { n_users, seed } => {
                tokio::task::spawn_blocking(move || generate::generate(n_users, seed, now))
                    .await
                    .map_err(|error| StartError::Build(error.to_string()))??
            }
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                address: config.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| StartError::Listen {
            address: config.listen,
            source,
        })?;
        let host = match local.ip() {
            ip if ip.is_unspecified() || ip.is_loopback() && ip.is_ipv4() => {
                "127.0.0.1".to_string()
            }
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            std::net::IpAddr::V4(ip) => ip.to_string(),
        };
        let base_url = format!("https://{host}:{}", local.port());
        let state_dir = config.state_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "m365-emulator-{}-{}",
                std::process::id(),
                local.port()
            ))
        });
        let ca_path = state_dir.join("ca.pem");
        let mut host_names = world.settings.host_names.clone();
        // Virtual Autodiscover hosts are answered by Host header, so the certificate covers them.
        for tenant in &world.directory.tenants {
            for domain in &tenant.domains {
                host_names.push(domain.clone());
                host_names.push(format!("autodiscover.{domain}"));
            }
        }
        for (host, _) in &world.exchange.hosts {
            host_names.push(host.clone());
        }
        host_names.sort();
        host_names.dedup();
        if !local.ip().is_unspecified() && !local.ip().is_loopback() {
            host_names.push(local.ip().to_string());
        }
        let identity = tls::create_identity(&host_names, &ca_path)?;
        let mut trusted = vec![identity.ca_der.clone()];
        for path in &config.trusted_notification_ca_files {
            use rustls_pki_types::pem::PemObject;
            let certificates =
                rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|error| {
                    StartError::TrustedCa {
                        path: path.clone(),
                        message: error.to_string(),
                    }
                })?;
            for certificate in certificates {
                trusted.push(certificate.map_err(|error| StartError::TrustedCa {
                    path: path.clone(),
                    message: error.to_string(),
                })?);
            }
        }
        let (notifier, deliveries) = notify::Notifier::new(
            notify::HttpClient::new(trusted),
            config.notification_retry_delays.clone(),
        );

        let tenant = &world.directory.tenants[world.directory.apps[world.ready_app].tenant_index];
        let n_users = world.directory.users.len();
        let ready_reader = world
            .calendar_sharing
            .iter()
            .map(|(_, reader)| *reader)
            .find(|reader| world.directory.users[*reader].password.is_some());
        let ready = ReadyInfo {
            base_url: base_url.clone(),
            token_url: format!("{base_url}/{}/oauth2/v2.0/token", tenant.id),
            graph_url: format!("{base_url}/v1.0"),
            ca_cert: ca_path,
            tenant_id: tenant.id.clone(),
            client_id: world.directory.apps[world.ready_app].client_id.clone(),
            client_secret: world.ready_secret.clone(),
            authority: format!("{base_url}/{}", tenant.id),
            admin_url: format!("{base_url}/_emulator"),
            group_id: world
                .ready_group
                .map(|index| world.directory.groups[index].id.clone()),
            n_users,
            ews_url: format!("{base_url}/EWS/Exchange.asmx"),
            autodiscover_url: format!("{base_url}/autodiscover/autodiscover.xml"),
            http_url: None,
            tls_offload_url: None,
            ews_user: world
                .exchange
                .ready_impersonation
                .map(|index| world.exchange.accounts[index].address.clone()),
            ews_password: world
                .exchange
                .ready_impersonation
                .and_then(|index| world.exchange.accounts[index].password.clone()),
            ews_delegate_user: world
                .exchange
                .ready_delegate
                .map(|index| world.exchange.accounts[index].address.clone()),
            ews_delegate_password: world
                .exchange
                .ready_delegate
                .and_then(|index| world.exchange.accounts[index].password.clone()),
            delegated_user: ready_reader
                .map(|index| world.directory.users[index].user_principal_name.clone()),
            delegated_password: ready_reader
                .and_then(|index| world.directory.users[index].password.clone()),
        };
        let mut ready = ready;
        let http_listener = match config.http_listen {
            Some(address) => {
                let (listener, port) = bind_extra_listener(address).await?;
                ready.http_url = Some(format!("http://{host}:{port}"));
                Some(listener)
            }
            None => None,
        };
        let offload_listener = match config.tls_offload_listen {
            Some(address) => {
                let (listener, port) = bind_extra_listener(address).await?;
                ready.tls_offload_url = Some(format!("https://{host}:{port}"));
                Some(listener)
            }
            None => None,
        };
        let token_lifetime = config.token_lifetime.unwrap_or(SignedDuration::from_secs(
            world.settings.token_lifetime_seconds,
        ));
        let state = Arc::new(state::AppState {
            clock: config.clock.clone(),
            graph_url: format!("{base_url}/v1.0"),
            base_url,
            signer: jwt::TokenSigner::generate()?,
            mailboxes: world.mailboxes.into_iter().map(Mutex::new).collect(),
            directory: world.directory,
            faults: Mutex::new(config.faults.unwrap_or(world.faults)),
            throttle: Arc::default(),
            counters: faults::Counters::default(),
            ids: ids::RandomIds::default(),
            subscriptions: graph::subscriptions::SubscriptionStore::default(),
            delta: graph::delta::DeltaStore::default(),
            notifier,
            settings: state::Settings {
                token_lifetime,
                subscription_max_minutes: world.settings.subscription_max_minutes,
                refresh_token_max_inactive: config.refresh_token_max_inactive.unwrap_or(
                    SignedDuration::from_secs(world.settings.refresh_token_max_inactive_seconds),
                ),
                device_code_interval_seconds: world.settings.device_code_interval_seconds.max(0),
                device_code_lifetime: SignedDuration::from_secs(
                    world.settings.device_code_lifetime_seconds,
                ),
            },
            signin: signin::SignInStore::new(world.calendar_sharing),
            router: OnceLock::new(),
            ews: ews::EwsState::new(world.exchange, ready.ews_url.clone()),
        });
        let router = server::router(Arc::clone(&state));
        // Setting can only fail if already set, which cannot happen for a fresh state.
        let _ = state.router.set(router.clone());
        let (shutdown_sender, shutdown_receiver) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&identity.server_config));
        let server_task = tokio::spawn(server::serve(
            listener,
            acceptor,
            identity.channel_binding,
            router.clone(),
            shutdown_receiver.clone(),
        ));
        let mut tasks = Vec::new();
        if let Some(listener) = offload_listener {
            tasks.push(tokio::spawn(server::serve(
                listener,
                tokio_rustls::TlsAcceptor::from(Arc::clone(&identity.offload_config)),
                identity.channel_binding,
                router.clone(),
                shutdown_receiver.clone(),
            )));
        }
        if let Some(listener) = http_listener {
            tasks.push(tokio::spawn(server::serve_plain(
                listener,
                router.clone(),
                shutdown_receiver.clone(),
            )));
        }
        let delivery_task = tokio::spawn(notify::run_deliveries(
            deliveries,
            Arc::clone(&state),
            shutdown_receiver,
        ));
        tracing::info!(base_url = %ready.base_url, users = n_users, "m365-emulator ready");
        Ok(RunningEmulator {
            ready,
            state,
            shutdown: shutdown_sender,
            tasks: {
                tasks.push(server_task);
                tasks.push(delivery_task);
                tasks
            },
        })
    }
}

/// A running emulator. Dropping it stops the server too.
pub struct RunningEmulator {
    ready: ReadyInfo,
    state: Arc<state::AppState>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningEmulator {
    pub fn ready(&self) -> &ReadyInfo {
        &self.ready
    }

    /// The ready line: one JSON object.
    pub fn ready_line(&self) -> String {
        serde_json::to_string(&self.ready).unwrap_or_default()
    }

    pub fn clock(&self) -> &Clock {
        &self.state.clock
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.state
            .counters
            .snapshot(|index| self.state.mailbox_name(index))
    }

    pub fn reset_counters(&self) {
        self.state.counters.reset();
    }

    pub fn faults(&self) -> FaultSettings {
        self.state.faults()
    }

    pub fn set_faults(&self, settings: FaultSettings) {
        *faults::lock(&self.state.faults) = settings;
    }

    /// Makes every delta and skip token issued so far answer 410 `syncStateNotFound`.
    pub fn expire_delta_tokens(&self) {
        self.state.delta.expire_all();
    }

    /// Ids of the live subscriptions.
    pub fn subscription_ids(&self) -> Vec<String> {
        self.state
            .subscriptions
            .all()
            .into_iter()
            .map(|subscription| subscription.id)
            .collect()
    }

    /// How many live (unexpired) Graph subscriptions each mailbox has, by user principal name;
    /// mailboxes without one are absent.
    pub fn live_subscriptions_per_mailbox(&self) -> std::collections::BTreeMap<String, usize> {
        let now = self.state.clock.now();
        let mut counts = std::collections::BTreeMap::new();
        for subscription in self.state.subscriptions.all() {
            if subscription.expiration > now {
                *counts
                    .entry(self.state.mailbox_name(subscription.user_index))
                    .or_insert(0) += 1;
            }
        }
        counts
    }

    /// Sends a lifecycle notification for a subscription (`subscriptionRemoved` also removes it).
    pub fn send_lifecycle_notification(
        &self,
        subscription_id: &str,
        event: LifecycleEvent,
    ) -> Result<(), LifecycleError> {
        graph::subscriptions::send_lifecycle(&self.state, subscription_id, event)
    }

    /// Ids of the live EWS streaming subscriptions.
    pub fn ews_subscription_ids(&self) -> Vec<String> {
        self.state.ews.streaming.ids()
    }

    /// Open `GetStreamingEvents` connections per charged account, as `ews_hanging_connection_limit`
    /// counts them: `svc@contoso.example` for an account's own connections,
    /// `ada@contoso.example (impersonated)` for those impersonating that mailbox. Accounts
    /// without an open connection are left out.
    pub fn ews_streaming_connections(&self) -> std::collections::BTreeMap<String, usize> {
        self.state.ews.streaming.connections()
    }

    /// Waits until the open `GetStreamingEvents` connections (as
    /// [`ews_streaming_connections`](Self::ews_streaming_connections) gives them) satisfy
    /// `condition`, woken by every connection admitted or ended rather than by polling.
    pub async fn wait_for_ews_streaming_connections(
        &self,
        condition: impl Fn(&std::collections::BTreeMap<String, usize>) -> bool,
    ) {
        self.state
            .ews
            .streaming
            .wait_for_connections(condition)
            .await;
    }

    /// Stops accepting connections and waits for the server tasks to end.
    /// Shares (or stops sharing) `owner`'s calendar with `reader` (addresses or ids); false
    /// when either is unknown.
    pub fn set_calendar_shared(&self, owner: &str, reader: &str, shared: bool) -> bool {
        match (
            self.state.directory.user(owner),
            self.state.directory.user(reader),
        ) {
            (Some(owner), Some(reader)) => {
                self.state.signin.set_shared(owner, reader, shared);
                true
            }
            _ => false,
        }
    }

    /// `revokeSignInSessions` for a user: their refresh tokens are refused (AADSTS50173).
    pub fn revoke_sign_in_sessions(&self, user: &str) -> bool {
        match self.state.directory.user(user) {
            Some(index) => {
                self.state
                    .signin
                    .revoke_sessions(index, self.state.clock.now());
                true
            }
            None => false,
        }
    }

    /// Adds a redirect URI to an app registration's "Web" platform.
    pub fn add_redirect_uri(&self, client_id: &str, uri: &str) -> bool {
        match self.state.directory.app_by_client_id(client_id) {
            Some(app) => {
                self.state.signin.add_redirect_uri(app, uri.to_string());
                true
            }
            None => false,
        }
    }

    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Binds one of the extra listeners (plain http, the TLS-offload front) and says its port.
async fn bind_extra_listener(
    address: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, u16), StartError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen { address, source })?;
    let port = listener
        .local_addr()
        .map_err(|source| StartError::Listen { address, source })?
        .port();
    Ok((listener, port))
}
