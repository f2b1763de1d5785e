//! The `[[sources]]` entry of a Microsoft Graph tenant in `calbridge.toml`.

use std::path::PathBuf;

use calbridge_domain::Secret;
use serde::Deserialize;

/// How calbridge reaches one Microsoft 365 tenant: the app registration and the endpoints.
///
/// The defaults are Microsoft's public cloud; tests and the bundled emulator point
/// `authority_url` and `graph_url` at a local HTTPS server signed by `extra_root_ca`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSourceConfig {
    /// Directory (tenant) id or a verified domain of the tenant.
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    pub credential: GraphCredential,
    #[serde(default = "default_authority_url")]
    pub authority_url: String,
    #[serde(default = "default_graph_url")]
    pub graph_url: String,
    /// The scope of the token request. Default `{graph_url}/.default`, which is right for
    /// Microsoft's clouds; an emulator or a proxy in front of Graph needs the real resource,
    /// `https://graph.microsoft.com/.default`.
    #[serde(default)]
    pub token_scope: Option<String>,
    /// A PEM file with one or more extra CA certificates to trust besides the system's
    /// (the emulator's self-signed CA, or a TLS-inspecting proxy's).
    #[serde(default)]
    pub extra_root_ca: Option<PathBuf>,
    /// Graph requests in flight at once for this source, all mailboxes together.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Requests in flight at once for one mailbox. Graph answers 429 "Application is over its
    /// MailboxConcurrency limit" above 4, so larger values only produce throttling.
    #[serde(default = "default_per_mailbox_concurrency")]
    pub per_mailbox_concurrency: usize,
}

/// The app's credential: a client secret, or a certificate whose private key signs a
/// client assertion (the more secure choice: nothing secret travels to Entra ID).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GraphCredential {
    ClientSecret(Secret),
    Certificate {
        /// The certificate uploaded to the app registration (PEM).
        certificate_pem: PathBuf,
        /// Its RSA private key (PEM, PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
        private_key_pem: PathBuf,
    },
}

pub fn default_authority_url() -> String {
    "https://login.microsoftonline.com".to_string()
}

pub fn default_graph_url() -> String {
    "https://graph.microsoft.com".to_string()
}

fn default_max_concurrent_requests() -> usize {
    32
}

fn default_per_mailbox_concurrency() -> usize {
    4
}

impl GraphSourceConfig {
    /// A configuration with the public-cloud endpoints and default limits.
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        credential: GraphCredential,
    ) -> Self {
        GraphSourceConfig {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            credential,
            authority_url: default_authority_url(),
            graph_url: default_graph_url(),
            token_scope: None,
            extra_root_ca: None,
            max_concurrent_requests: default_max_concurrent_requests(),
            per_mailbox_concurrency: default_per_mailbox_concurrency(),
        }
    }
}

/// A configuration that cannot be used, naming the setting and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("Graph source: `{setting}` = `{value}` is not an https URL: {problem}")]
    BadUrl {
        setting: &'static str,
        value: String,
        problem: String,
    },
    #[error("Graph source: `{setting}` must not be empty")]
    Empty { setting: &'static str },
    #[error("Graph source: `{setting}` must be at least 1")]
    ZeroLimit { setting: &'static str },
    #[error("Graph source: cannot read `{setting}` file {path}: {problem}")]
    File {
        setting: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("Graph source: the HTTP client cannot be built: {0}")]
    HttpClient(String),
}

impl From<calbridge_net::TlsError> for ConfigError {
    /// The TLS set-up's errors in this source's words: the CA file is the `extra_root_ca`
    /// setting of the `[[sources]]` entry.
    fn from(error: calbridge_net::TlsError) -> Self {
        match error {
            calbridge_net::TlsError::ExtraRootCa { path, problem } => ConfigError::File {
                setting: "extra_root_ca",
                path,
                problem,
            },
            calbridge_net::TlsError::Setup { problem } => ConfigError::HttpClient(problem),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapper {
        sources: Vec<GraphSourceConfig>,
    }

    #[test]
    fn secret_source_takes_defaults_and_keeps_the_secret_out_of_debug() {
        let wrapper: Wrapper = serde_json::from_value(serde_json::json!({"sources":[{
            "tenant_id": "contoso.onmicrosoft.com",
            "client_id": "1a2b3c4d",
            "credential": {"client_secret": "s3cr3t-value"}
        }]}))
        .unwrap();
        let config = &wrapper.sources[0];
        assert_eq!(config.authority_url, "https://login.microsoftonline.com");
        assert_eq!(config.graph_url, "https://graph.microsoft.com");
        assert_eq!(config.per_mailbox_concurrency, 4);
        assert_eq!(config.max_concurrent_requests, 32);
        match &config.credential {
            GraphCredential::ClientSecret(secret) => assert_eq!(secret.expose(), "s3cr3t-value"),
            other => panic!("expected a client secret, got {other:?}"),
        }
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn unknown_fields_and_certificate_credential() {
        let unknown = serde_json::from_value::<GraphSourceConfig>(serde_json::json!({
            "tenant_id": "t", "client_id": "c", "credential": {"client_secret": "x"},
            "graph_uri": "https://typo"
        }));
        assert!(unknown.unwrap_err().to_string().contains("graph_uri"));

        let config: GraphSourceConfig = serde_json::from_value(serde_json::json!({
            "tenant_id": "t", "client_id": "c",
            "credential": {"certificate": {"certificate_pem": "/etc/cb/app.crt", "private_key_pem": "/etc/cb/app.key"}},
            "extra_root_ca": "/etc/cb/ca.pem", "max_concurrent_requests": 8
        }))
        .unwrap();
        assert!(matches!(
            config.credential,
            GraphCredential::Certificate { .. }
        ));
        assert_eq!(config.max_concurrent_requests, 8);
    }
}
