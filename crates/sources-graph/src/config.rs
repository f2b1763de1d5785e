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
    /// `app` (default): app-only, the application permission `Calendars.Read` on every
    /// mailbox. `delegated`: a service account signs in once and calbridge reads the calendars
    /// shared with it (delegated `Calendars.Read.Shared`, `User.ReadBasic.All`).
    #[serde(default)]
    pub auth: GraphAuth,
    /// The app's secret or certificate; a delegated app that allows public client flows may
    /// have none.
    #[serde(default)]
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GraphCredential {
    /// No credential (a public client; only with `auth = "delegated"`).
    #[default]
    #[serde(skip)]
    None,
    ClientSecret(Secret),
    Certificate {
        /// The certificate uploaded to the app registration (PEM).
        certificate_pem: PathBuf,
        /// Its RSA private key (PEM, PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
        private_key_pem: PathBuf,
    },
}

/// Whose rights Graph checks: the app's own (application permissions) or a signed-in account's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphAuth {
    #[default]
    App,
    Delegated,
}

/// The delegated permissions a delegated source asks for (on Graph's resource), with
/// `offline_access` for a refresh token and `openid profile` for the account's name.
pub const DELEGATED_PERMISSIONS: [&str; 2] = ["Calendars.Read.Shared", "User.ReadBasic.All"];

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
            auth: GraphAuth::App,
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

impl GraphSourceConfig {
    /// The scope of a delegated sign-in: the permissions on Graph's resource (the resource
    /// of `token_scope` when one is set, else `graph_url`), `offline_access`, `openid profile`.
    pub fn delegated_scope(&self) -> String {
        let resource = match &self.token_scope {
            Some(scope) => scope.trim().trim_end_matches("/.default").to_string(),
            None => self.graph_url.trim().trim_end_matches('/').to_string(),
        };
        let mut scope: Vec<String> = DELEGATED_PERMISSIONS
            .iter()
            .map(|permission| format!("{resource}/{permission}"))
            .collect();
        scope.extend(["offline_access", "openid", "profile"].map(str::to_string));
        scope.join(" ")
    }

    /// The checks that need no file and no network, for `check-config` and at start: the ids
    /// look like Entra's, the secret is not empty, the limits are at least 1.
    pub fn check(&self) -> Result<(), ConfigError> {
        let tenant = self.tenant_id.trim();
        if tenant.is_empty() {
            return Err(ConfigError::Empty {
                setting: "tenant_id",
            });
        }
        if ["common", "organizations", "consumers"].contains(&tenant.to_ascii_lowercase().as_str())
        {
            return Err(ConfigError::BadId {
                setting: "tenant_id",
                value: tenant.to_string(),
                expected: "the tenant's own id or domain: app-only sign-in needs a tenant-specific authority, not `common`, `organizations` or `consumers`",
            });
        }
        if !is_guid(tenant) && !is_domain_name(tenant) {
            return Err(ConfigError::BadId {
                setting: "tenant_id",
                value: calbridge_domain::shorten(tenant, 80),
                expected: "the Directory (tenant) ID, a GUID like 00000000-0000-0000-0000-000000000000 (Entra ID → Overview), or a verified domain such as contoso.onmicrosoft.com",
            });
        }
        let client = self.client_id.trim();
        if client.is_empty() {
            return Err(ConfigError::Empty {
                setting: "client_id",
            });
        }
        if !is_guid(client) {
            return Err(ConfigError::BadId {
                setting: "client_id",
                value: calbridge_domain::shorten(client, 80),
                expected: "the Application (client) ID of the app registration, a GUID like 11111111-1111-1111-1111-111111111111",
            });
        }
        if self.auth == GraphAuth::App && matches!(self.credential, GraphCredential::None) {
            return Err(ConfigError::Empty {
                setting: "credential (app-only sign-in needs { client_secret = \"…\" } or { certificate = { … } })",
            });
        }
        if matches!(&self.credential, GraphCredential::ClientSecret(secret) if secret.expose().trim().is_empty())
        {
            return Err(ConfigError::Empty {
                setting: "credential.client_secret",
            });
        }
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::ZeroLimit {
                setting: "max_concurrent_requests",
            });
        }
        if self.per_mailbox_concurrency == 0 {
            return Err(ConfigError::ZeroLimit {
                setting: "per_mailbox_concurrency",
            });
        }
        if matches!(&self.token_scope, Some(scope) if scope.trim().is_empty()) {
            return Err(ConfigError::Empty {
                setting: "token_scope",
            });
        }
        Ok(())
    }
}

/// `8-4-4-4-12` hexadecimal digits, as Entra writes tenant and application ids.
fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A DNS name with at least two labels (`contoso.onmicrosoft.com`, `example.com`).
fn is_domain_name(text: &str) -> bool {
    let labels: Vec<&str> = text.split('.').collect();
    text.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
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
    #[error("Graph source: `{setting}` = `{value}` is not {expected}")]
    BadId {
        setting: &'static str,
        value: String,
        expected: &'static str,
    },
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
    fn a_delegated_source_needs_no_credential_and_asks_for_shared_calendars_with_a_refresh_token() {
        let parsed: Wrapper = serde_json::from_value(serde_json::json!({"sources": [{
            "tenant_id": "contoso.onmicrosoft.com",
            "client_id": "11111111-1111-1111-1111-111111111111",
            "auth": "delegated",
            "token_scope": "https://graph.microsoft.com/.default",
        }]}))
        .expect("parses");
        let config = &parsed.sources[0];
        assert_eq!(config.auth, GraphAuth::Delegated);
        assert!(matches!(config.credential, GraphCredential::None));
        assert!(config.check().is_ok());
        assert_eq!(
            config.delegated_scope(),
            "https://graph.microsoft.com/Calendars.Read.Shared https://graph.microsoft.com/User.ReadBasic.All offline_access openid profile"
        );
        // App-only without a credential is refused, naming the setting.
        let mut app = config.clone();
        app.auth = GraphAuth::App;
        let error = app.check().expect_err("refused").to_string();
        assert!(error.contains("credential"), "{error}");
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
    fn ids_that_entra_would_not_know_are_named_before_any_request() {
        let config = |tenant: &str, client: &str, secret: &str| -> GraphSourceConfig {
            serde_json::from_value(serde_json::json!({
                "tenant_id": tenant, "client_id": client, "credential": {"client_secret": secret}
            }))
            .unwrap()
        };
        let client = "11111111-1111-1111-1111-111111111111";
        for tenant in [
            "00000000-0000-0000-0000-00000000000a",
            "contoso.onmicrosoft.com",
            "example.com",
        ] {
            config(tenant, client, "s3cret").check().unwrap();
        }
        for (tenant, expected) in [
            ("not a tenant", "is not the Directory (tenant) ID"),
            ("contoso", "is not the Directory (tenant) ID"),
            ("0000-0000", "is not the Directory (tenant) ID"),
            ("common", "tenant-specific authority"),
            ("  ", "`tenant_id` must not be empty"),
        ] {
            let error = config(tenant, client, "s3cret")
                .check()
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{tenant}: {error}");
        }
        let error = config("example.com", "my-app", "s3cret")
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`client_id` = `my-app` is not the Application (client) ID"),
            "{error}"
        );
        let error = config("example.com", client, " ")
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`credential.client_secret` must not be empty"),
            "{error}"
        );
        let long = "x".repeat(5000);
        let error = config(&long, client, "s3cret")
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            error.len() < 400,
            "an unbounded value is clipped: {} characters",
            error.len()
        );
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
