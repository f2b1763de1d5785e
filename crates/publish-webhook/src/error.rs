use std::path::PathBuf;

use calbridge_store::StoreError;

/// What can go wrong in the webhook publisher.
///
/// Messages name the endpoint by its configured name, never by its URL (webhook URLs often
/// carry a token) and never quote the secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    #[error("webhook {endpoint}: `{setting}` {problem}")]
    InvalidConfig {
        endpoint: String,
        setting: &'static str,
        problem: String,
    },

    #[error(
        "webhook {endpoint}: the name is used by two [[webhooks]] entries; give each its own \
         name (it names the endpoint's place in the outbox)"
    )]
    DuplicateName { endpoint: String },

    #[error("webhook {endpoint}: cannot read `extra_root_ca` file {path}: {problem}")]
    ExtraRootCa {
        endpoint: String,
        path: PathBuf,
        problem: String,
    },

    #[error("webhook {endpoint}: the HTTP client cannot be built: {problem}")]
    HttpClient { endpoint: String, problem: String },

    #[error("webhooks: cannot save the presence change of {address} in the outbox: {source}")]
    Record {
        address: String,
        #[source]
        source: StoreError,
    },

    #[error("webhooks: cannot encode the presence change of {address}: {problem}")]
    Encode { address: String, problem: String },

    #[error("webhooks: cannot read the outbox: {source}")]
    Store {
        #[source]
        source: StoreError,
    },
}
