//! The state every request handler shares.

use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use jiff::SignedDuration;

use crate::calendar::Mailbox;
use crate::clock::Clock;
use crate::directory::Directory;
use crate::faults::{lock, Counters, FaultSettings, Throttle};
use crate::graph::delta::DeltaStore;
use crate::graph::subscriptions::SubscriptionStore;
use crate::ids::RandomIds;
use crate::jwt::TokenSigner;
use crate::notify::Notifier;

pub struct Settings {
    pub token_lifetime: SignedDuration,
    pub subscription_max_minutes: i64,
    pub refresh_token_max_inactive: SignedDuration,
    pub device_code_interval_seconds: i64,
    pub device_code_lifetime: SignedDuration,
}

pub struct AppState {
    pub clock: Clock,
    /// `https://127.0.0.1:PORT`
    pub base_url: String,
    /// `https://127.0.0.1:PORT/v1.0`
    pub graph_url: String,
    pub signer: TokenSigner,
    pub directory: Directory,
    pub mailboxes: Vec<Mutex<Mailbox>>,
    pub faults: Mutex<FaultSettings>,
    pub throttle: Arc<Throttle>,
    pub counters: Counters,
    pub ids: RandomIds,
    pub subscriptions: SubscriptionStore,
    pub delta: DeltaStore,
    pub notifier: Notifier,
    pub settings: Settings,
    /// Delegated sign-ins: device codes, authorization codes, refresh tokens, consents and
    /// calendar sharing.
    pub signin: crate::signin::SignInStore,
    pub ews: crate::ews::EwsState,
    /// The router itself, so `$batch` can dispatch its sub-requests through the same handlers.
    pub router: OnceLock<Router>,
}

impl AppState {
    pub fn faults(&self) -> FaultSettings {
        lock(&self.faults).clone()
    }

    /// Waits `latency_ms` plus jitter (the `latency_*` fault settings; nothing when both are 0).
    /// Every Graph, token, EWS and Autodiscover request waits once.
    pub async fn apply_latency(&self) {
        let faults = self.faults();
        if faults.latency_ms == 0 && faults.latency_jitter_ms == 0 {
            return;
        }
        tokio::time::sleep(faults.added_latency(self.ids.unit())).await;
    }

    pub fn mailbox_name(&self, user_index: usize) -> String {
        self.directory
            .users
            .get(user_index)
            .map(|user| user.user_principal_name.clone())
            .unwrap_or_default()
    }
}
