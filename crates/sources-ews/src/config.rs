//! The `[[sources]]` entry of an Exchange organisation reached over EWS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use calbridge_domain::Secret;
use serde::Deserialize;

/// How calbridge reaches one Exchange organisation over EWS: the service account, how it
/// authenticates, how it reaches other mailboxes, and where EWS lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EwsSourceConfig {
    /// The service account's address (`svc@example.com`, or `DOMAIN\user` for NTLM).
    /// Autodiscover starts from its domain, so it must be a full address unless `ews_url` is set.
    ///
    /// With `auth = "bearer"` it must be the address of a mailbox the app may impersonate, such
    /// as the service mailbox: Exchange Online refuses an app-only token on any request without
    /// `ExchangeImpersonation`, so the requests about no single mailbox (`ResolveNames`,
    /// `GetUserAvailability`) impersonate this mailbox and are routed to it (`X-AnchorMailbox`).
    pub user: String,
    /// The service account's password (NTLM and Basic).
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub auth: AuthMethod,
    #[serde(default)]
    pub access: MailboxAccess,
    /// An Autodiscover URL that overrides discovery from the user's domain.
    #[serde(default)]
    pub autodiscover_url: Option<String>,
    /// Which EWS URL of the Autodiscover answer to use.
    #[serde(default)]
    pub server: ServerSide,
    /// A direct EWS URL (`https://mail.example.com/EWS/Exchange.asmx`); skips Autodiscover.
    #[serde(default)]
    pub ews_url: Option<String>,
    /// Streaming subscriptions served by one `GetStreamingEvents` connection (Exchange's
    /// limit is 200).
    #[serde(default = "default_max_subscriptions_per_connection")]
    pub max_subscriptions_per_connection: usize,
    /// Logs every EWS request and response at debug level (target `calbridge::ews::protocol`),
    /// with `Authorization` headers and credentials redacted.
    #[serde(default)]
    pub protocol_log: bool,
    /// A PEM file with extra CA certificates to trust (an internal CA, the emulator's).
    #[serde(default)]
    pub extra_root_ca: Option<PathBuf>,
    /// Bearer token settings (`auth = "bearer"`).
    #[serde(default)]
    pub bearer: Option<BearerConfig>,
    /// Host names answered by a fixed address instead of DNS (tests, split-horizon set-ups).
    #[serde(default)]
    pub resolve: HashMap<String, SocketAddr>,
    /// How appointments are read: `calendar_view` (default) or `free_busy`.
    #[serde(default)]
    pub read: WindowRead,
}

/// How the appointments of a window are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowRead {
    /// `FindItem` with a `CalendarView`, one request per mailbox: subjects, sensitivity,
    /// organizer and all-day dates, so every presence rule applies. Needs impersonation or
    /// Reviewer rights on the calendar folder.
    #[default]
    CalendarView,
    /// `GetUserAvailability` (FreeBusy view) for up to 100 mailboxes per request: busy times
    /// and their kind only, so presence shows the activity word instead of a subject, keyword
    /// and organizer rules cannot apply, and all-day appointments count as timed. For large
    /// organisations where only busy/free matters.
    FreeBusy,
}

/// How the service account authenticates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// NTLMv2, what on-premises Exchange offers by default.
    #[default]
    Ntlm,
    Basic,
    /// An OAuth token (hybrid / Exchange Online), from `bearer`.
    Bearer,
}

/// How the service account reaches the users' mailboxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailboxAccess {
    /// `ExchangeImpersonation` (ApplicationImpersonation role): acts as each user.
    #[default]
    Impersonation,
    /// Delegate rights (Reviewer on the calendar folder): names each user's mailbox.
    Delegate,
}

impl AuthMethod {
    /// The setting's spelling in `calbridge.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Ntlm => "ntlm",
            AuthMethod::Basic => "basic",
            AuthMethod::Bearer => "bearer",
        }
    }
}

impl MailboxAccess {
    /// The setting's spelling in `calbridge.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxAccess::Impersonation => "impersonation",
            MailboxAccess::Delegate => "delegate",
        }
    }
}

impl WindowRead {
    /// The setting's spelling in `calbridge.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowRead::CalendarView => "calendar_view",
            WindowRead::FreeBusy => "free_busy",
        }
    }
}

/// Which of Autodiscover's EWS URLs to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerSide {
    /// `EXPR`, the URL for clients outside the network.
    #[default]
    External,
    /// `EXCH`, the URL inside the network.
    Internal,
}

/// Where a bearer token comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BearerConfig {
    /// A token obtained elsewhere (it is used until EWS rejects it).
    FixedToken(Secret),
    /// Entra ID client credentials.
    ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        #[serde(default = "default_scope")]
        scope: String,
    },
}

fn default_scope() -> String {
    "https://outlook.office365.com/.default".to_string()
}

fn default_max_subscriptions_per_connection() -> usize {
    200
}

/// A configuration mistake, found before any request is sent (or, for
/// [`ConfigError::BearerUserWithoutMailbox`], named by Exchange's answer).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("ews_url '{0}' is not an EWS endpoint: it must look like https://mail.example.com/EWS/Exchange.asmx (http or https, path /EWS/Exchange.asmx)")]
    EwsUrl(String),
    #[error("{setting} '{value}' is not a valid URL: {problem}")]
    Url {
        setting: &'static str,
        value: String,
        problem: String,
    },
    #[error("auth = \"{0}\" needs a password: set `password` for the service account")]
    MissingPassword(&'static str),
    #[error("auth = \"bearer\" needs a [bearer] section: `fixed_token` or `client_credentials`")]
    MissingBearer,
    #[error("auth = \"bearer\" cannot be combined with access = \"delegate\": an app-only token (full_access_as_app) holds no delegate rights and reaches each mailbox by impersonating it; remove `access` or set access = \"impersonation\"")]
    BearerWithDelegate,
    #[error("with auth = \"bearer\", user must be the address of a mailbox the app may impersonate (such as the service mailbox, svc@example.com), not '{0}': Exchange Online accepts an app-only token only on requests that impersonate a mailbox")]
    BearerUserNotAnAddress(String),
    /// Found by Exchange's answer rather than before sending: the impersonated `user` is no
    /// mailbox.
    #[error("Exchange has no mailbox for user '{0}' (ErrorNonExistentMailbox when impersonating it): with auth = \"bearer\", requests about no single mailbox (ResolveNames, GetUserAvailability) impersonate `user`, so it must be a mailbox the app may impersonate, such as the service mailbox")]
    BearerUserWithoutMailbox(String),
    #[error("user '{0}' has no domain: Autodiscover needs a full address (user@example.com), or set `ews_url` or `autodiscover_url`")]
    UserWithoutDomain(String),
    #[error(
        "max_subscriptions_per_connection must be between 1 and 200 (Exchange's limit), not {0}"
    )]
    MaxSubscriptions(usize),
    #[error("cannot read {setting} file {path}: {problem}")]
    File {
        setting: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("cannot build the HTTPS client: {0}")]
    HttpClient(String),
}

impl From<calbridge_net::TlsError> for ConfigError {
    /// The TLS set-up's errors in this source's words: the CA file is its `extra_root_ca`.
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

/// Checks that `url` is `http(s)://host[:port]/EWS/Exchange.asmx` (path case-insensitive).
pub fn validate_ews_url(url: &str) -> Result<url::Url, ConfigError> {
    let parsed = url::Url::parse(url.trim()).map_err(|_| ConfigError::EwsUrl(url.to_string()))?;
    let scheme_ok = matches!(parsed.scheme(), "http" | "https");
    let path_ok = parsed.path().eq_ignore_ascii_case("/ews/exchange.asmx");
    if !scheme_ok || !path_ok || parsed.host_str().is_none() || parsed.query().is_some() {
        return Err(ConfigError::EwsUrl(url.to_string()));
    }
    Ok(parsed)
}

impl EwsSourceConfig {
    /// A configuration for `user` with NTLM, impersonation and Autodiscover.
    pub fn new(user: impl Into<String>, password: Secret) -> Self {
        EwsSourceConfig {
            user: user.into(),
            password: Some(password),
            auth: AuthMethod::Ntlm,
            access: MailboxAccess::Impersonation,
            autodiscover_url: None,
            server: ServerSide::External,
            ews_url: None,
            max_subscriptions_per_connection: default_max_subscriptions_per_connection(),
            protocol_log: false,
            extra_root_ca: None,
            bearer: None,
            resolve: HashMap::new(),
            read: WindowRead::CalendarView,
        }
    }

    /// Checks everything that can be checked without the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.ews_url {
            validate_ews_url(url)?;
        }
        if let Some(url) = &self.autodiscover_url {
            url::Url::parse(url).map_err(|error| ConfigError::Url {
                setting: "autodiscover_url",
                value: url.clone(),
                problem: error.to_string(),
            })?;
        }
        match self.auth {
            AuthMethod::Ntlm | AuthMethod::Basic => {
                if self.password.as_ref().is_none_or(Secret::is_empty) {
                    return Err(ConfigError::MissingPassword(match self.auth {
                        AuthMethod::Ntlm => "ntlm",
                        _ => "basic",
                    }));
                }
            }
            AuthMethod::Bearer => {
                if self.bearer.is_none() {
                    return Err(ConfigError::MissingBearer);
                }
                if self.access == MailboxAccess::Delegate {
                    return Err(ConfigError::BearerWithDelegate);
                }
                if self.user_mailbox().is_none() {
                    return Err(ConfigError::BearerUserNotAnAddress(self.user.clone()));
                }
            }
        }
        if self.ews_url.is_none() && self.autodiscover_url.is_none() && self.user_domain().is_none()
        {
            return Err(ConfigError::UserWithoutDomain(self.user.clone()));
        }
        if !(1..=200).contains(&self.max_subscriptions_per_connection) {
            return Err(ConfigError::MaxSubscriptions(
                self.max_subscriptions_per_connection,
            ));
        }
        Ok(())
    }

    /// `user` as a mailbox address (`local@domain`, trimmed), when it is one; not for
    /// `DOMAIN\user` logon names.
    pub(crate) fn user_mailbox(&self) -> Option<&str> {
        let user = self.user.trim();
        let (local, domain) = user.split_once('@')?;
        let plain = |part: &str| {
            !part.is_empty()
                && !part
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '@' | '\\' | '<' | '>'))
        };
        (plain(local) && plain(domain)).then_some(user)
    }

    /// The domain of `user@domain`, lower-cased.
    pub fn user_domain(&self) -> Option<String> {
        self.user
            .rsplit_once('@')
            .map(|(_, domain)| domain.trim().to_ascii_lowercase())
            .filter(|domain| !domain.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ews_url_accepts_either_case_and_http() {
        assert!(validate_ews_url("https://mail.example.com/EWS/Exchange.asmx").is_ok());
        assert!(validate_ews_url("http://mail.example.com:8080/ews/exchange.asmx").is_ok());
    }

    #[test]
    fn ews_url_rejects_other_paths_and_schemes() {
        for bad in [
            "https://mail.example.com/owa",
            "ftp://mail.example.com/EWS/Exchange.asmx",
            "mail.example.com/EWS/Exchange.asmx",
            "https://mail.example.com/EWS/Exchange.asmx/extra",
        ] {
            let error = validate_ews_url(bad).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains("/EWS/Exchange.asmx"), "{bad}: {error}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let parsed: Result<EwsSourceConfig, _> =
            toml_like(r#"{"user":"a@b.c","password":"x","colour":"red"}"#);
        assert!(parsed.is_err());
    }

    fn toml_like(json: &str) -> Result<EwsSourceConfig, String> {
        serde_json::from_str(json).map_err(|error| error.to_string())
    }

    fn bearer(user: &str, access: &str) -> EwsSourceConfig {
        toml_like(&format!(
            r#"{{"user":"{user}","auth":"bearer","access":"{access}","ews_url":"https://mail.example.com/EWS/Exchange.asmx","bearer":{{"fixed_token":"t"}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn bearer_with_delegate_access_is_refused_naming_both_keys() {
        let error = bearer("svc@example.com", "delegate")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(error.contains("auth = \"bearer\""), "{error}");
        assert!(error.contains("access = \"delegate\""), "{error}");
        assert!(bearer("svc@example.com", "impersonation")
            .validate()
            .is_ok());
    }

    #[test]
    fn bearer_needs_a_mailbox_address_as_user_even_with_ews_url() {
        for user in ["CONTOSO\\\\svc", "svc", "svc@", "@example.com"] {
            let error = bearer(user, "impersonation")
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("mailbox the app may impersonate"),
                "{user}: {error}"
            );
        }
    }

    #[test]
    fn setting_names_read_back_as_written() {
        for (text, auth) in [
            ("ntlm", AuthMethod::Ntlm),
            ("basic", AuthMethod::Basic),
            ("bearer", AuthMethod::Bearer),
        ] {
            assert_eq!(auth.as_str(), text);
            let parsed: AuthMethod = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(parsed, auth);
        }
        for access in [MailboxAccess::Impersonation, MailboxAccess::Delegate] {
            let parsed: MailboxAccess =
                serde_json::from_str(&format!("\"{}\"", access.as_str())).unwrap();
            assert_eq!(parsed, access);
        }
        for read in [WindowRead::CalendarView, WindowRead::FreeBusy] {
            let parsed: WindowRead =
                serde_json::from_str(&format!("\"{}\"", read.as_str())).unwrap();
            assert_eq!(parsed, read);
        }
    }

    #[test]
    fn defaults_are_ntlm_impersonation_external_200() {
        let config: EwsSourceConfig =
            toml_like(r#"{"user":"svc@example.com","password":"x"}"#).unwrap();
        assert_eq!(config.auth, AuthMethod::Ntlm);
        assert_eq!(config.access, MailboxAccess::Impersonation);
        assert_eq!(config.server, ServerSide::External);
        assert_eq!(config.max_subscriptions_per_connection, 200);
        assert!(config.validate().is_ok());
    }
}
