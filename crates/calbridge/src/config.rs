//! `calbridge.toml`: parsed once at start-up into domain types.
//!
//! Every table rejects unknown keys (a misspelt key silently ignored is the worst kind of
//! configuration error); the error names the key and its line. `examples/calbridge.toml`
//! documents every key.

use std::path::{Path, PathBuf};

use calbridge_domain::{MailboxAddress, Secret, SecretOrigin, ZoneName};
use calbridge_presence::{Keyword, Language, Locale, Mapping, Rules, SubjectVisibility};
use calbridge_store::PostgresUrl;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The reason is part of the message, not a `source`: `{error:#}` would show it twice.
    #[error("cannot read configuration file {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("configuration file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub presence: PresenceConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    /// Calendar sources side by side (several tenants, later EWS servers and CalDAV).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Where the people come from; each entry feeds one source.
    #[serde(default)]
    pub directory: Vec<DirectoryConfig>,
    /// Where presence goes besides the API: SIP PUBLISH, webhooks.
    #[serde(default)]
    pub publish: PublishConfig,
    /// Several instances on one PostgreSQL store.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Meeting rooms: what their meetings are called in the API and on panels.
    #[serde(default)]
    pub rooms: RoomsConfig,
}

/// `[rooms]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsConfig {
    /// What a room's meetings are called in `/api/v1/rooms`: `"reserved"` (the default: only
    /// "Reserved"), `"subject"` or `"organizer"`. A private meeting is "Private" whatever this
    /// says. Subjects are only there when `presence.show_subject` lets them be read.
    #[serde(default)]
    pub show: calbridge_presence::RoomShow,
    /// Check-in and auto-release (off when absent): a room's meeting that nobody checked in
    /// (on its panel or `POST /api/v1/rooms/{address}/check-in`) within this many minutes of
    /// its start is declined in the room's calendar, and the room is free from that second.
    /// Needs write access to the rooms' calendars (Graph: `Calendars.ReadWrite`; EWS:
    /// impersonation of the rooms). 1 to 120.
    #[serde(default)]
    pub check_in_minutes: Option<u32>,
    /// The comment the organizer gets with a released meeting's decline (default: says that
    /// nobody checked in within `check_in_minutes`).
    #[serde(default)]
    pub release_comment: Option<String>,
}

/// The longest `[rooms] check_in_minutes`.
pub const MAX_CHECK_IN_MINUTES: u32 = 120;

/// `[cluster]`: how instances sharing one PostgreSQL store divide the people. Ignored with
/// SQLite, whose one instance follows everyone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// How long a shard lease lasts without renewal: the longest a failed instance's people
    /// wait for another owner. Renewed every third of it.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// The name this instance shows on the status page (default: host name and process id).
    #[serde(default)]
    pub instance_name: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            lease_seconds: default_lease_seconds(),
            instance_name: None,
        }
    }
}

fn default_lease_seconds() -> u64 {
    30
}

/// `[publish]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// `[publish.sip]`: SIP PUBLISH (PIDF + RPID) to a presence server.
    #[serde(default)]
    pub sip: Option<calbridge_publish_sip::SipPublisherConfig>,
    /// `[[publish.webhooks]]`: endpoints that receive every change as signed JSON.
    #[serde(default)]
    pub webhooks: Vec<calbridge_publish_webhook::WebhookConfig>,
}

/// `[store]`: an SQLite file (the default), or a PostgreSQL database given by `url`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file. Default `calbridge.sqlite` beside the configuration file. Not together
    /// with a PostgreSQL URL.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// PostgreSQL URL, `postgres://user:password@host:5432/database`: selects PostgreSQL.
    /// A `Secret` because it may hold the password (inline, `{ env = "…" }` or `{ file = "…" }`);
    /// it is only ever shown redacted.
    #[serde(default)]
    pub url: Option<Secret>,
    /// File with the 32-byte key that seals secrets at rest (base64 or hex). Created with
    /// mode 0600 on first start when missing. Default: the SQLite path with the extension
    /// `.key` (`calbridge.key` beside the configuration file with PostgreSQL).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name of an environment variable holding the key instead of a file.
    #[serde(default)]
    pub key_env: Option<String>,
}

/// Where the store lives, once `[store]` has been read (and the URL fetched from its
/// variable or file).
#[derive(Debug, Clone)]
pub enum StoreTarget {
    Sqlite(PathBuf),
    /// Shown only redacted (`PostgresUrl` has no clear-text `Debug` or `Display`).
    Postgres(Box<PostgresUrl>),
}

impl std::fmt::Display for StoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreTarget::Sqlite(path) => write!(f, "SQLite file {}", path.display()),
            StoreTarget::Postgres(url) => write!(f, "{}", url.location()),
        }
    }
}

impl StoreConfig {
    /// The SQLite file: `path`, or `calbridge.sqlite` (beside the configuration file once
    /// [`Config::resolve_paths`] ran).
    pub fn sqlite_path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_FILE))
    }

    /// The key file: `key_file`, or the SQLite path with the extension `.key`.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.sqlite_path().with_extension("key"))
    }

    fn check(&self) -> Result<(), String> {
        if let (Some(_), Some(_)) = (&self.url, &self.path) {
            return Err(
                "store: `path` is the SQLite file and `url` selects PostgreSQL: set one of them"
                    .to_string(),
            );
        }
        if let Some(url) = &self.url {
            PostgresUrl::parse(url.expose())
                .map_err(|error| format!("{error} (store.url, {})", url.origin()))?;
        }
        Ok(())
    }

    /// Where the store lives. Errors name the setting, and show a URL only with its password
    /// replaced by `***`.
    pub fn target(&self) -> Result<StoreTarget, String> {
        self.check()?;
        match &self.url {
            Some(url) => {
                let url = PostgresUrl::parse(url.expose()).map_err(|error| error.to_string())?;
                Ok(StoreTarget::Postgres(Box::new(url)))
            }
            None => Ok(StoreTarget::Sqlite(self.sqlite_path())),
        }
    }
}

const DEFAULT_STORE_FILE: &str = "calbridge.sqlite";

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the HTTP API, the admin page and the notification webhook.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token for `/api/v1/*` and the admin page (inline, `{ env = "…" }` or
    /// `{ file = "…" }`). Without it calbridge generates one and keeps it sealed in the store.
    #[serde(default)]
    pub token: Option<calbridge_domain::Secret>,
    /// The URL at which Microsoft Graph reaches this service (https in production), e.g.
    /// `https://calbridge.example.com`. With it calbridge subscribes to change notifications;
    /// without it, it reads changes by delta polling every `sync.poll_interval_seconds`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Live streams (`/api/v1/presence/stream`) open at once; one more is answered 503.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            token: None,
            public_url: None,
            max_streams: default_max_streams(),
        }
    }
}

fn default_max_streams() -> usize {
    256
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_string()
}

/// `[sync]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Hours of calendar kept from now on (the seed's 48 h).
    #[serde(default = "default_window_hours")]
    pub window_hours: u32,
    /// Delta polling interval when no `api.public_url` is set.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_seconds: u64,
    /// Every person's calendar is re-checked by delta once per this period, to catch what a
    /// lost notification missed; the reads go 20 to a Graph `$batch`, so the default 5 minutes
    /// costs 0.01 requests per person per minute. 0 turns it off.
    #[serde(default = "default_reconcile_minutes")]
    pub reconcile_interval_minutes: u64,
    /// The midnight re-read is spread over this many minutes so the tenant is not hit at once.
    #[serde(default = "default_midnight_spread")]
    pub midnight_spread_minutes: u64,
    /// Lifetime asked for new subscriptions (Graph's maximum for events is 4,230 minutes in
    /// the documented limits; newer tenants accept up to 10,080).
    #[serde(default = "default_subscription_minutes")]
    pub subscription_lifetime_minutes: u64,
    /// Subscriptions are renewed this long before they expire.
    #[serde(default = "default_renew_before")]
    pub renew_before_minutes: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            window_hours: default_window_hours(),
            poll_interval_seconds: default_poll_interval(),
            reconcile_interval_minutes: default_reconcile_minutes(),
            midnight_spread_minutes: default_midnight_spread(),
            subscription_lifetime_minutes: default_subscription_minutes(),
            renew_before_minutes: default_renew_before(),
        }
    }
}

fn default_window_hours() -> u32 {
    48
}
fn default_poll_interval() -> u64 {
    120
}
fn default_reconcile_minutes() -> u64 {
    5
}
fn default_midnight_spread() -> u64 {
    10
}
fn default_subscription_minutes() -> u64 {
    4230
}
fn default_renew_before() -> u64 {
    60
}

/// `[[sources]]`: one calendar source; exactly one kind table (`[sources.graph]`) is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A short name people refer to in `[[directory]]` (`source = "contoso"`).
    pub id: calbridge_domain::SourceId,
    /// When the client secret expires (Entra ID → App registrations → Certificates & secrets
    /// shows it). The admin page warns 30 days before.
    #[serde(default)]
    pub secret_expires_on: Option<jiff::civil::Date>,
    #[serde(default)]
    pub graph: Option<calbridge_sources_graph::GraphSourceConfig>,
    /// `[sources.ews]`: on-premises Exchange over EWS.
    #[serde(default)]
    pub ews: Option<calbridge_sources_ews::EwsSourceConfig>,
}

/// `[[directory]]`: who to follow, for one source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The `id` of the source these people's calendars live in.
    pub source: calbridge_domain::SourceId,
    /// A CSV file (header `address[,sip_uri,display_name]`) or a TOML file
    /// (`[[person]] address = "…"`), re-read when it changes.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An Entra ID group whose members are followed (needs `GroupMember.Read.All` or
    /// `Group.Read.All` and `User.Read.All`).
    #[serde(default)]
    pub group_id: Option<String>,
    /// An LDAP directory (Active Directory, OpenLDAP, a PBX's user list), read again every
    /// `refresh_seconds`.
    #[serde(default)]
    pub ldap: Option<crate::directory::ldap::LdapConfig>,
    /// Meeting rooms: `"all"` (every room of the tenant) or the address of one room list
    /// (`"rooms.building-1@contoso.com"`). A Graph source reads the places API (needs
    /// `Place.Read.All`; rooms come with capacity, building and floor), an EWS source
    /// `GetRoomLists` / `GetRooms` (names and addresses only).
    /// Read again every 5 minutes at most, like a group.
    #[serde(default)]
    pub rooms: Option<String>,
    /// How often the file, group or LDAP directory is checked for changes.
    #[serde(default = "default_directory_refresh")]
    pub refresh_seconds: u64,
    /// The shrink guard: a read of the source's directory that lists nobody, or drops more
    /// than this share (in percent) of the people followed now, is held until the next read
    /// confirms it. With several entries for one source, the smallest value counts.
    #[serde(default = "default_max_shrink_percent")]
    pub max_shrink_percent: u8,
}

impl DirectoryConfig {
    /// An entry for `source` with every setting at its default and no kind chosen yet.
    pub fn new(source: calbridge_domain::SourceId) -> DirectoryConfig {
        DirectoryConfig {
            source,
            file: None,
            group_id: None,
            ldap: None,
            rooms: None,
            refresh_seconds: default_directory_refresh(),
            max_shrink_percent: default_max_shrink_percent(),
        }
    }

    /// An entry that follows the people of a directory file.
    pub fn of_file(source: calbridge_domain::SourceId, file: PathBuf) -> DirectoryConfig {
        DirectoryConfig {
            file: Some(file),
            ..DirectoryConfig::new(source)
        }
    }

    /// What the entry reads, for messages: the file, the group, the LDAP server or the rooms.
    pub fn kind(&self) -> String {
        match (&self.file, &self.group_id, &self.ldap, &self.rooms) {
            (Some(file), _, _, _) => format!("file {}", file.display()),
            (_, Some(group), _, _) => format!("group {group}"),
            (_, _, Some(ldap), _) => ldap.describe(),
            (_, _, _, Some(_)) => match self.room_list() {
                Ok(Some(list)) => format!("the rooms of room list {list}"),
                _ => "every room of the tenant".to_string(),
            },
            _ => "an entry without a kind".to_string(),
        }
    }

    /// With `rooms`: `None` for every room, or the room list's address. An error names the
    /// setting and what it takes.
    pub fn room_list(&self) -> Result<Option<MailboxAddress>, String> {
        match self.rooms.as_deref().map(str::trim) {
            None => Ok(None),
            Some(all) if all.eq_ignore_ascii_case("all") => Ok(None),
            Some(list) => MailboxAddress::parse(list).map(Some).map_err(|error| {
                format!(
                    "[[directory]] for source `{}`: rooms = \"{}\" is neither \"all\" nor a room list's address ({error})",
                    self.source,
                    calbridge_domain::shorten(list, 80)
                )
            }),
        }
    }
}

fn default_directory_refresh() -> u64 {
    30
}

fn default_max_shrink_percent() -> u8 {
    20
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_path_buf(),
            reason,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses TOML text; the error names the key and shows the line, with the value of a
    /// secret hidden ([`toml_error`]).
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|error| {
            let message = toml_error(text, &error);
            match REPLACED_KEYS
                .iter()
                .find(|(key, _)| message.contains(&format!("unknown field `{key}`")))
            {
                Some((_, instead)) => format!("{message}\n(write {instead} instead)"),
                None => message,
            }
        })?;
        config.check()?;
        Ok(config)
    }

    /// Every secret the file sets, with the setting that holds it (`sources[graph].credential.
    /// client_secret`), for `check-config` and the start-up warning. Says where each came
    /// from through [`Secret::origin`]; never shows a value.
    pub fn secrets(&self) -> Vec<(String, &Secret)> {
        use calbridge_sources_ews::BearerConfig;
        use calbridge_sources_graph::GraphCredential;
        let mut found: Vec<(String, &Secret)> = Vec::new();
        if let Some(token) = &self.api.token {
            found.push(("api.token".to_string(), token));
        }
        if let Some(url) = &self.store.url {
            found.push(("store.url".to_string(), url));
        }
        for source in &self.sources {
            let at = format!("sources[{}]", source.id);
            if let Some(graph) = &source.graph {
                if let GraphCredential::ClientSecret(secret) = &graph.credential {
                    found.push((format!("{at}.graph.credential.client_secret"), secret));
                }
            }
            if let Some(ews) = &source.ews {
                if let Some(password) = &ews.password {
                    found.push((format!("{at}.ews.password"), password));
                }
                match &ews.bearer {
                    Some(BearerConfig::FixedToken(token)) => {
                        found.push((format!("{at}.ews.bearer.fixed_token"), token));
                    }
                    Some(BearerConfig::ClientCredentials { client_secret, .. }) => {
                        found.push((format!("{at}.ews.bearer.client_secret"), client_secret));
                    }
                    None => {}
                }
            }
        }
        for entry in &self.directory {
            if let Some(password) = entry.ldap.as_ref().and_then(|ldap| ldap.password.as_ref()) {
                found.push((
                    format!("directory[{}].ldap.password", entry.source),
                    password,
                ));
            }
        }
        if let Some(password) = self
            .publish
            .sip
            .as_ref()
            .and_then(|sip| sip.password.as_ref())
        {
            found.push(("publish.sip.password".to_string(), password));
        }
        for webhook in &self.publish.webhooks {
            found.push((
                format!("publish.webhooks[{}].secret", webhook.name),
                &webhook.secret,
            ));
        }
        found
    }

    /// The warning for secrets written inline in a configuration file that other users of the
    /// machine can read, naming the settings (`None` when there is nothing to warn about).
    pub fn inline_secrets_warning(&self, path: &Path) -> Option<String> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).ok()?.permissions().mode();
            if mode & 0o004 == 0 {
                return None;
            }
            let inline: Vec<String> = self
                .secrets()
                .into_iter()
                .filter(|(_, secret)| *secret.origin() == SecretOrigin::Inline)
                .map(|(setting, _)| setting)
                .collect();
            if inline.is_empty() {
                return None;
            }
            Some(format!(
                "{} is readable by every user of this machine (mode {:o}) and holds {} inline \
                 ({}): make it private (chmod 600) or give them as {{ env = \"NAME\" }} or \
                 {{ file = \"/run/credentials/…\" }}",
                path.display(),
                mode & 0o777,
                crate::counted(inline.len(), "secret", "secrets"),
                inline.join(", ")
            ))
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            None
        }
    }

    /// Rules that span tables, which serde cannot express.
    fn check(&self) -> Result<(), String> {
        if let Some(minutes) = self.rooms.check_in_minutes {
            if !(1..=MAX_CHECK_IN_MINUTES).contains(&minutes) {
                return Err(format!(
                    "rooms.check_in_minutes = {minutes} is out of range: use 1 to {MAX_CHECK_IN_MINUTES}, or leave it out to turn check-in off"
                ));
            }
        }
        if self
            .rooms
            .release_comment
            .as_deref()
            .is_some_and(|comment| comment.trim().is_empty() || comment.len() > 2000)
        {
            return Err(
                "rooms.release_comment must be 1 to 2000 characters (leave it out for the default)"
                    .to_string(),
            );
        }
        if !(3..=3600).contains(&self.cluster.lease_seconds) {
            return Err(format!(
                "cluster.lease_seconds = {} is out of range: use 3 to 3600 (default 30; renewed every third of it)",
                self.cluster.lease_seconds
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for source in &self.sources {
            if !ids.insert(source.id.clone()) {
                return Err(format!("[[sources]] id `{}` appears twice", source.id));
            }
            match (&source.graph, &source.ews) {
                (Some(_), None) | (None, Some(_)) => {}
                (None, None) => {
                    return Err(format!(
                        "[[sources]] `{}` needs a kind table: add [sources.graph] (Microsoft 365) or [sources.ews] (Exchange on premises)",
                        source.id
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "[[sources]] `{}` has both [sources.graph] and [sources.ews]: use one [[sources]] entry each",
                        source.id
                    ))
                }
            }
        }
        let ews_sources: std::collections::HashSet<&calbridge_domain::SourceId> = self
            .sources
            .iter()
            .filter(|source| source.ews.is_some())
            .map(|source| &source.id)
            .collect();
        for entry in &self.directory {
            entry.room_list()?;
            if entry.group_id.is_some() && ews_sources.contains(&entry.source) {
                return Err(format!(
                    "[[directory]] for EWS source `{}`: group_id needs a Graph source; list the people in a file",
                    entry.source
                ));
            }
            if !ids.contains(&entry.source) {
                return Err(format!(
                    "[[directory]] names source `{}`, but no [[sources]] has that id",
                    entry.source
                ));
            }
            let kinds = [
                entry.file.is_some(),
                entry.group_id.is_some(),
                entry.ldap.is_some(),
                entry.rooms.is_some(),
            ];
            if kinds.iter().filter(|set| **set).count() != 1 {
                return Err(format!(
                    "[[directory]] for source `{}` needs exactly one of `file`, `group_id`, `ldap` or `rooms`",
                    entry.source
                ));
            }
            if entry.max_shrink_percent > 100 {
                return Err(format!(
                    "[[directory]] for source `{}`: max_shrink_percent = {} is out of range: use 0 to 100 (default 20; 100 turns the share check off, an empty read is still held)",
                    entry.source, entry.max_shrink_percent
                ));
            }
            if let Some(ldap) = &entry.ldap {
                ldap.check().map_err(|error| {
                    format!("[[directory]] for source `{}`: ldap: {error}", entry.source)
                })?;
            }
        }
        if self.sync.window_hours == 0 || self.sync.window_hours > 24 * 62 {
            return Err(format!(
                "sync.window_hours = {} must be between 1 and 1488 (62 days, Graph's limit)",
                self.sync.window_hours
            ));
        }
        if let Some(token) = &self.api.token {
            check_api_token(token)?;
        }
        if !(1..=100_000).contains(&self.api.max_streams) {
            return Err(format!(
                "api.max_streams = {} is out of range: use 1 to 100000 (default 256)",
                self.api.max_streams
            ));
        }
        if !(1..=86_400).contains(&self.sync.poll_interval_seconds) {
            return Err(format!(
                "sync.poll_interval_seconds = {} is out of range: use 1 to 86400 (default 120)",
                self.sync.poll_interval_seconds
            ));
        }
        for source in &self.sources {
            if let Some(graph) = &source.graph {
                graph
                    .check()
                    .map_err(|error| format!("[[sources]] `{}`: {error}", source.id))?;
            }
        }
        if self.store.key_file.is_some() && self.store.key_env.is_some() {
            return Err("store: set either `key_file` or `key_env`, not both".to_string());
        }
        self.store.check()?;
        Ok(())
    }

    /// Resolves relative paths against the folder of the configuration file, so that the
    /// service finds its files whatever the working directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        // Defaults that are files beside the configuration become explicit here, so that the
        // service finds them whatever its working directory.
        if self.store.url.is_none() {
            self.store.path = Some(self.store.sqlite_path());
        }
        if self.store.key_env.is_none() {
            self.store.key_file = Some(self.store.key_path());
        }
        for path in [&mut self.store.path, &mut self.store.key_file]
            .into_iter()
            .flatten()
        {
            resolve(path);
        }
        for entry in &mut self.directory {
            if let Some(file) = &mut entry.file {
                resolve(file);
            }
            if let Some(ca) = entry
                .ldap
                .as_mut()
                .and_then(|ldap| ldap.extra_root_ca.as_mut())
            {
                resolve(ca);
            }
        }
        for source in &mut self.sources {
            if let Some(graph) = &mut source.graph {
                if let Some(ca) = &mut graph.extra_root_ca {
                    resolve(ca);
                }
                if let calbridge_sources_graph::GraphCredential::Certificate {
                    certificate_pem,
                    private_key_pem,
                } = &mut graph.credential
                {
                    resolve(certificate_pem);
                    resolve(private_key_pem);
                }
            }
        }
    }
}

/// The API token guards every calendar and subject: an empty or short one is refused, never
/// taken as "no authentication".
pub fn check_api_token(token: &Secret) -> Result<(), String> {
    const MIN_LEN: usize = 16;
    let setting = match token.origin() {
        SecretOrigin::Inline => "api.token".to_string(),
        origin => format!("api.token ({origin})"),
    };
    let token = token.expose();
    let advice = "use at least 16 characters (for example the output of `openssl rand -hex 24`), or remove the setting and calbridge generates a token and prints it at its first start";
    if token.trim().is_empty() {
        return Err(format!("{setting} is empty: {advice}"));
    }
    if token.trim() != token {
        return Err(format!(
            "{setting} starts or ends with white space, which no client sends back: remove it"
        ));
    }
    if token.chars().count() < MIN_LEN {
        return Err(format!(
            "{setting} is too short ({} characters): {advice}",
            token.chars().count()
        ));
    }
    Ok(())
}

/// Settings of earlier versions that a secret reference replaced, with what to write instead.
const REPLACED_KEYS: [(&str, &str); 3] = [
    ("token_env", "`token = { env = \"NAME\" }`"),
    ("url_env", "`url = { env = \"NAME\" }`"),
    ("url_file", "`url = { file = \"/absolute/path\" }`"),
];

/// Keys whose values are secrets (`api.token`, a Graph `client_secret`, the EWS and SIP
/// `password`, an EWS `fixed_token`, a webhook `secret`, the store `url` with its password).
/// A webhook `url` often carries a token too, so every `url` counts.
const SECRET_KEYS: [&str; 6] = [
    "token",
    "fixed_token",
    "client_secret",
    "password",
    "secret",
    "url",
];

/// Where the value of a secret key starts on a line (`client_secret = "…"`, also inside an
/// inline table), or `None` when the line sets no secret.
fn secret_value_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    SECRET_KEYS
        .iter()
        .flat_map(|key| line.match_indices(key).map(move |(at, _)| (at, key.len())))
        .filter(|&(at, len)| {
            let before = at.checked_sub(1).map(|i| bytes[i]);
            let starts_key =
                before.is_none_or(|b| b.is_ascii_whitespace() || b"{,.\"".contains(&b));
            let rest = line[at + len..].trim_start_matches([' ', '\t', '"']);
            starts_key && rest.starts_with('=')
        })
        .map(|(at, len)| {
            let rest = &line[at + len..];
            at + len + rest.find('=').map_or(0, |eq| eq + 1)
        })
        .min()
}

/// The values of secret keys as written in the file (without quotes), to be hidden wherever
/// an error message would repeat them.
fn secret_values(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let value = line[secret_value_start(line)?..].trim();
            let value = value.split(['#', ',', '}']).next().unwrap_or(value).trim();
            let value = value.trim_matches(['"', '\'']);
            (value.chars().count() >= 3).then(|| value.to_string())
        })
        .collect()
}

/// toml's own error shows the offending line, value and all, and serde's messages can quote a
/// value (`invalid type: string "…"`): with a secret on that line, the reader would see the
/// secret in a terminal or a log. The error is written here instead, in toml's layout, with
/// the value of every secret key replaced by `***`.
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let mut message = error.message().trim_end().to_string();
    let mut out = String::new();
    if let Some(span) = error.span() {
        let start = span.start.min(text.len());
        let before = text.get(..start).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |at| at + 1);
        let line_number = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        let end = span.end.clamp(start, text.len());
        let last_line_end = text[end..].find('\n').map_or(text.len(), |at| end + at);
        let lines = text.get(line_start..last_line_end).unwrap_or("");
        let secret = lines.lines().any(|line| secret_value_start(line).is_some());
        out.push_str(&format!(
            "TOML parse error at line {line_number}, column {column}\n"
        ));
        let width = line_number.to_string().len();
        let line = text[line_start..].lines().next().unwrap_or("");
        let shown = match secret_value_start(line) {
            Some(at) => format!("{} ***", &line[..at]),
            None => calbridge_domain::shorten(line, 200),
        };
        out.push_str(&format!("{:width$} |\n{line_number} | {shown}\n", ""));
        if !secret {
            let caret = " ".repeat(column.saturating_sub(1).min(200));
            out.push_str(&format!("{:width$} | {caret}^\n", ""));
        } else {
            // A message about a secret's own value may quote it.
            message = hide_quoted(&message);
        }
    }
    out.push_str(&message);
    for value in secret_values(text) {
        out = out.replace(&value, "***");
    }
    out
}

/// Replaces what stands between double quotes with `***`.
fn hide_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (index, part) in message.split('"').enumerate() {
        if index > 0 {
            out.push('"');
        }
        out.push_str(if index % 2 == 1 { "***" } else { part });
    }
    out
}

/// `[presence]`: how appointments become presence.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    #[serde(
        default = "default_language",
        deserialize_with = "deserialize_language"
    )]
    pub language: Language,
    #[serde(default = "default_zone")]
    pub timezone: ZoneName,
    #[serde(default = "default_true")]
    pub show_subject: bool,
    #[serde(default)]
    pub priority_keywords: Vec<String>,
    #[serde(default)]
    pub no_priority_keywords: Vec<String>,
    #[serde(default)]
    pub tentative_exception_organizers: Vec<MailboxAddress>,
    #[serde(default)]
    pub mapping: Mapping,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            language: default_language(),
            timezone: default_zone(),
            show_subject: true,
            priority_keywords: Vec::new(),
            no_priority_keywords: Vec::new(),
            tentative_exception_organizers: Vec::new(),
            mapping: Mapping::default(),
        }
    }
}

impl PresenceConfig {
    pub fn rules(&self) -> Rules {
        Rules {
            subjects: if self.show_subject {
                SubjectVisibility::Shown
            } else {
                SubjectVisibility::Hidden
            },
            priority_keywords: self
                .priority_keywords
                .iter()
                .filter_map(|k| Keyword::new(k))
                .collect(),
            no_priority_keywords: self
                .no_priority_keywords
                .iter()
                .filter_map(|k| Keyword::new(k))
                .collect(),
            tentative_exception_organizers: self.tentative_exception_organizers.clone(),
            mapping: self.mapping,
        }
    }

    pub fn locale(&self) -> Locale {
        Locale::new(self.language, self.timezone.clone())
    }
}

fn default_language() -> Language {
    Language::En
}

/// The machine's zone when the file names none: an administrator's server usually runs in the
/// zone its users live in. Falls back to UTC where the system zone cannot be read.
fn default_zone() -> ZoneName {
    jiff::tz::TimeZone::system()
        .iana_name()
        .and_then(|name| ZoneName::parse(name).ok())
        .unwrap_or_else(ZoneName::utc)
}

fn default_true() -> bool {
    true
}

fn deserialize_language<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Language, D::Error> {
    let code = String::deserialize(deserializer)?;
    Language::parse(&code).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown language `{code}`: use one of {}",
            Language::CODES.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use calbridge_presence::MappedPresence;

    #[test]
    fn the_example_configuration_parses_with_every_key() {
        let text = include_str!("../../../examples/calbridge.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(config.presence.language, Language::En);
        assert_eq!(config.presence.timezone.iana(), "Europe/Berlin");
        assert_eq!(
            config.presence.mapping.tentative_exception,
            MappedPresence::Away
        );
        assert_eq!(config.presence.rules().priority_keywords.len(), 2);
        assert_eq!(config.sources.len(), 1);
        assert_eq!(config.sources[0].id.0, "contoso");
        assert_eq!(config.directory[0].refresh_seconds, 30);
        assert_eq!(config.sync.window_hours, 48);
        assert_eq!(config.api.listen, "127.0.0.1:8080");
    }

    /// The example's EWS source is commented out (one kind per `[[sources]]` entry); with the
    /// comment marks removed it is a valid configuration with every EWS key.
    #[test]
    fn the_example_ews_source_parses_when_uncommented() {
        let text = include_str!("../../../examples/calbridge.toml");
        let start = text
            .find("# [[sources]]\n# id = \"headquarters\"")
            .expect("the EWS example");
        let block: String = text[start..]
            .lines()
            .take_while(|line| line.starts_with("# ") && !line.contains("(its [[directory]]"))
            .map(|line| format!("{}\n", &line[2..]))
            .collect();
        let config = Config::parse(&block).unwrap_or_else(|error| panic!("{error}\n{block}"));
        let ews = config.sources[0].ews.as_ref().expect("an EWS source");
        assert_eq!(ews.read, calbridge_sources_ews::WindowRead::CalendarView);
        assert_eq!(ews.resolve.len(), 1);
        assert!(matches!(
            ews.bearer,
            Some(calbridge_sources_ews::BearerConfig::ClientCredentials { .. })
        ));
    }

    /// The example's LDAP directory (for the commented EWS source) is valid with the comment
    /// marks removed, its password hidden from Debug.
    #[test]
    fn the_example_ldap_directory_parses_when_uncommented() {
        let text = include_str!("../../../examples/calbridge.toml");
        let uncomment = |start: &str, stop: &dyn Fn(&str) -> bool| -> String {
            let at = text.find(start).expect("the example block");
            text[at..]
                .lines()
                .take_while(|line| line.starts_with("# ") && !stop(line))
                .map(|line| format!("{}\n", &line[2..]))
                .collect()
        };
        let ews = uncomment("# [[sources]]\n# id = \"headquarters\"", &|line| {
            line.contains("(its [[directory]]")
        });
        let ldap = uncomment("# [[directory]]\n# source = \"headquarters\"", &|line| {
            line.starts_with("# (an OpenLDAP")
        });
        let block = format!("{ews}{ldap}");
        let config = Config::parse(&block).unwrap_or_else(|error| panic!("{error}\n{block}"));
        let entry = &config.directory[0];
        assert_eq!(entry.refresh_seconds, 300);
        let ldap = entry.ldap.as_ref().expect("an LDAP entry");
        assert_eq!(ldap.nested, crate::directory::ldap::Nesting::MatchingRule);
        assert_eq!(ldap.filter, crate::directory::ldap::DEFAULT_FILTER);
        assert!(!format!("{config:?}").contains("the-service-account-password"));
        // A syntax error on the password's line never shows it.
        let broken = block.replace(
            "password = \"the-service-account-password\"",
            "password = \"the-service-account-password",
        );
        let error = Config::parse(&broken).unwrap_err();
        assert!(!error.contains("service-account-password"), "{error}");
    }

    #[test]
    fn cross_table_mistakes_are_named() {
        let graph = "[sources.graph]\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"11111111-1111-1111-1111-111111111111\"\ncredential = { client_secret = \"s\" }\n";
        let text = format!(
            "[[sources]]\nid = \"a\"\n{graph}[[directory]]\nsource = \"b\"\nfile = \"x.csv\"\n"
        );
        let error = Config::parse(&text).unwrap_err();
        assert!(
            error.contains("names source `b`, but no [[sources]] has that id"),
            "{error}"
        );
        let text = format!("[[sources]]\nid = \"a\"\n{graph}[[directory]]\nsource = \"a\"\n");
        assert!(Config::parse(&text)
            .unwrap_err()
            .contains("exactly one of `file`, `group_id`, `ldap` or `rooms`"));
        let error = Config::parse("[[sources]]\nid = \"a\"\n").unwrap_err();
        assert!(error.contains("needs a kind table"), "{error}");
        let error = Config::parse("[sync]\nwindow_hours = 0\n").unwrap_err();
        assert!(error.contains("sync.window_hours = 0"), "{error}");
        let error = Config::parse(&format!("[[sources]]\nid = \"a\"\n{graph}credentail = 1\n"))
            .unwrap_err();
        assert!(error.contains("unknown field `credentail`"), "{error}");
        let error = Config::parse("[rooms]\ncheck_in_minutes = 0\n").unwrap_err();
        assert!(
            error.contains("rooms.check_in_minutes = 0 is out of range"),
            "{error}"
        );
        let error =
            Config::parse("[rooms]\ncheck_in_minutes = 10\nrelease_comment = \" \"\n").unwrap_err();
        assert!(error.contains("rooms.release_comment"), "{error}");
        let config = Config::parse("[rooms]\ncheck_in_minutes = 10\n").unwrap();
        assert_eq!(config.rooms.check_in_minutes, Some(10));
        assert_eq!(
            Config::parse("").unwrap().rooms.check_in_minutes,
            None,
            "off by default"
        );
    }

    #[test]
    fn an_ews_source_follows_rooms_too_and_a_bad_selector_is_named() {
        let ews = "[sources.ews]\nuser = \"svc@contoso.example\"\npassword = \"p\"\news_url = \"https://mail.contoso.example/EWS/Exchange.asmx\"\n";
        for selector in ["all", "rooms.building-1@contoso.example"] {
            let text = format!(
                "[[sources]]\nid = \"onprem\"\n{ews}[[directory]]\nsource = \"onprem\"\nrooms = \"{selector}\"\n"
            );
            let config = Config::parse(&text).unwrap_or_else(|error| panic!("{selector}: {error}"));
            assert_eq!(config.directory[0].rooms.as_deref(), Some(selector));
        }
        let text = format!(
            "[[sources]]\nid = \"onprem\"\n{ews}[[directory]]\nsource = \"onprem\"\nrooms = \"building 1\"\n"
        );
        let error = Config::parse(&text).unwrap_err();
        assert!(
            error.contains("rooms = \"building 1\" is neither \"all\" nor a room list's address"),
            "{error}"
        );
    }

    #[test]
    fn a_syntax_error_on_a_secret_line_never_shows_the_secret() {
        let graph = |credential: &str| {
            format!(
                "[[sources]]\nid = \"a\"\n[sources.graph]\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"11111111-1111-1111-1111-111111111111\"\n{credential}\n"
            )
        };
        for (text, line) in [
            // An unterminated string.
            (
                graph("credential = { client_secret = \"Sup3r-S3cret-Value }"),
                6,
            ),
            // Something after the value.
            (
                graph("credential = { client_secret = \"Sup3r-S3cret-Value\" } extra"),
                6,
            ),
            // The wrong type: serde's message quotes the value.
            (
                graph("credential = { client_secret = { value = \"Sup3r-S3cret-Value\" } }"),
                6,
            ),
            (
                "[api]\ntoken = \"Sup3r-S3cret-Value\" \"again\"\n".to_string(),
                2,
            ),
            ("[api]\ntoken = [\"Sup3r-S3cret-Value\"]\n".to_string(), 2),
            (
                "[store]\nurl = \"postgres://cb:Sup3r-S3cret-Value@db/x\" x\n".to_string(),
                2,
            ),
            (
                "[publish.sip]\npassword = \"Sup3r-S3cret-Value\n".to_string(),
                2,
            ),
        ] {
            let error = Config::parse(&text).unwrap_err();
            assert!(!error.contains("S3cret"), "{text}\n→ {error}");
            assert!(
                error.contains(&format!("line {line}")),
                "the line is named: {error}"
            );
        }
        // A line that holds no secret is shown as it is, with the caret.
        let error = Config::parse("[sync]\nwindow_hours = \"many\"\n").unwrap_err();
        assert!(error.contains("window_hours = \"many\""), "{error}");
        assert!(error.contains('^'), "{error}");
    }

    #[test]
    fn an_empty_or_short_api_token_and_a_zero_poll_interval_are_refused() {
        for (token, expected) in [
            ("", "api.token is empty"),
            ("  ", "api.token is empty"),
            ("change-me", "api.token is too short (9 characters)"),
            (" long-enough-token-value", "white space"),
        ] {
            let error = Config::parse(&format!("[api]\ntoken = \"{token}\"\n")).unwrap_err();
            assert!(error.contains(expected), "{token:?}: {error}");
            assert!(
                error.contains("16 characters") || error.contains("white space"),
                "{error}"
            );
        }
        Config::parse("[api]\ntoken = \"sixteen-chars-ok\"\n").unwrap();
        let error = Config::parse("[sync]\npoll_interval_seconds = 0\n").unwrap_err();
        assert!(
            error.contains("sync.poll_interval_seconds = 0 is out of range"),
            "{error}"
        );
        let error = Config::parse("[api]\nmax_streams = 0\n").unwrap_err();
        assert!(error.contains("api.max_streams = 0"), "{error}");
    }

    #[test]
    fn graph_ids_and_an_empty_secret_are_checked_by_check_config() {
        let source = |tenant: &str, secret: &str| {
            format!(
                "[[sources]]\nid = \"a\"\n[sources.graph]\ntenant_id = \"{tenant}\"\nclient_id = \"11111111-1111-1111-1111-111111111111\"\ncredential = {{ client_secret = \"{secret}\" }}\n"
            )
        };
        let error = Config::parse(&source("my tenant", "s3cret")).unwrap_err();
        assert!(error.contains("[[sources]] `a`: Graph source: `tenant_id` = `my tenant` is not the Directory (tenant) ID"), "{error}");
        let error = Config::parse(&source("contoso.onmicrosoft.com", "")).unwrap_err();
        assert!(
            error.contains("`credential.client_secret` must not be empty"),
            "{error}"
        );
        Config::parse(&source("00000000-0000-0000-0000-000000000001", "s3cret")).unwrap();
    }

    #[test]
    fn a_missing_file_is_named_once() {
        let error = Config::load(Path::new("/nonexistent/calbridge.toml")).unwrap_err();
        let shown = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(
            shown.matches("No such file").count(),
            1,
            "the operating system's error once: {shown}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let error = Config::parse("[presence]\nshow_subjects = false\n").unwrap_err();
        assert!(error.contains("unknown field `show_subjects`"), "{error}");
        let error =
            Config::parse("[presence.mapping]\nbusy = \"busy\"\nsleepy = \"away\"\n").unwrap_err();
        assert!(error.contains("unknown field `sleepy`"), "{error}");
        let error = Config::parse("[presense]\n").unwrap_err();
        assert!(error.contains("unknown field `presense`"), "{error}");
    }

    #[test]
    fn bad_values_name_the_value_and_the_choices() {
        let error = Config::parse("[presence]\nlanguage = \"xx\"\n").unwrap_err();
        assert!(
            error.contains("unknown language `xx`: use one of en, en-US, de, fr"),
            "{error}"
        );
        let error = Config::parse("[presence]\ntimezone = \"Mars/Base\"\n").unwrap_err();
        assert!(error.contains("unknown time zone `Mars/Base`"), "{error}");
        let error = Config::parse("[presence.mapping]\noof = \"asleep\"\n").unwrap_err();
        assert!(
            error.contains("asleep") && error.contains("available"),
            "{error}"
        );
        let error =
            Config::parse("[presence]\ntentative_exception_organizers = [\"hr\"]\n").unwrap_err();
        assert!(error.contains("`hr` must look like name@domain"), "{error}");
    }

    #[test]
    fn windows_zone_names_are_accepted() {
        let config = Config::parse("[presence]\ntimezone = \"W. Europe Standard Time\"\n").unwrap();
        assert_eq!(config.presence.timezone.iana(), "Europe/Berlin");
    }

    #[test]
    fn sqlite_beside_the_configuration_is_the_default_store() {
        let mut config = Config::parse("").unwrap();
        config.resolve_paths(Path::new("/etc/calbridge"));
        match config.store.target().unwrap() {
            StoreTarget::Sqlite(path) => {
                assert_eq!(path, Path::new("/etc/calbridge/calbridge.sqlite"))
            }
            StoreTarget::Postgres(url) => panic!("PostgreSQL by default: {url}"),
        }
        assert_eq!(
            config.store.key_path(),
            Path::new("/etc/calbridge/calbridge.key")
        );
    }

    #[test]
    fn a_store_url_selects_postgresql_and_never_shows_its_password() {
        let text = "[store]\nurl = \"postgres://calbridge:s3cret@db.example.com:5432/presence\"\n";
        let mut config = Config::parse(text).unwrap();
        config.resolve_paths(Path::new("/etc/calbridge"));
        assert_eq!(config.store.path, None);
        // The key stays a file beside the configuration: it never goes to the database.
        assert_eq!(
            config.store.key_path(),
            Path::new("/etc/calbridge/calbridge.key")
        );
        let StoreTarget::Postgres(url) = config.store.target().unwrap() else {
            panic!("not PostgreSQL");
        };
        assert_eq!(
            url.location().to_string(),
            "PostgreSQL database `presence` on db.example.com:5432 (user calbridge)"
        );
        for shown in [
            format!("{config:?}"),
            format!("{url:?}"),
            url.to_string(),
            format!("{:?}", config.store.target()),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }

        let error =
            Config::parse("[store]\nurl = \"mysql://root:s3cret@db/calbridge\"\n").unwrap_err();
        assert!(error.contains("mysql://root:***@db/calbridge"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn the_store_url_comes_from_a_variable_or_a_file() {
        let variable = "CALBRIDGE_TEST_CONFIG_STORE_URL";
        std::env::set_var(variable, "postgres://calbridge:s3cret@db-from-env/presence");
        let config =
            Config::parse(&format!("[store]\nurl = {{ env = \"{variable}\" }}\n")).unwrap();
        let Ok(StoreTarget::Postgres(url)) = config.store.target() else {
            panic!("not PostgreSQL");
        };
        assert!(url.to_string().contains("db-from-env"), "{url}");
        std::env::remove_var(variable);
        let error =
            Config::parse(&format!("[store]\nurl = {{ env = \"{variable}\" }}\n")).unwrap_err();
        assert!(
            error.contains(&format!("the environment variable {variable} is not set")),
            "{error}"
        );

        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("store-url");
        std::fs::write(&file, "postgres://calbridge:s3cret@db-from-file/presence\n").unwrap();
        let from_file = format!("[store]\nurl = {{ file = \"{}\" }}\n", file.display());
        let config = Config::parse(&from_file).unwrap();
        let Ok(StoreTarget::Postgres(url)) = config.store.target() else {
            panic!("not PostgreSQL");
        };
        assert!(url.to_string().contains("db-from-file"), "{url}");
        std::fs::write(&file, "s3cret").unwrap();
        let error = Config::parse(&from_file).unwrap_err();
        assert!(error.contains("not a PostgreSQL URL"), "{error}");
        assert!(
            error.contains(&format!("file {}", file.display())),
            "{error}"
        );
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn conflicting_store_settings_are_named() {
        let error =
            Config::parse("[store]\npath = \"calbridge.sqlite\"\nurl = \"postgres://db/x\"\n")
                .unwrap_err();
        assert!(
            error.contains("store: `path` is the SQLite file and `url` selects PostgreSQL"),
            "{error}"
        );
    }

    #[test]
    fn every_secret_is_listed_with_where_it_came_from_and_never_its_value() {
        let directory = tempfile::tempdir().unwrap();
        let credential = directory.path().join("sip-password");
        std::fs::write(&credential, "Sip-Pa55word\n").unwrap();
        let text = format!(
            r#"[api]
token = {{ env = "PATH" }}

[[sources]]
id = "m365"
[sources.graph]
tenant_id = "contoso.onmicrosoft.com"
client_id = "11111111-1111-1111-1111-111111111111"
credential = {{ client_secret = "Inline-Client-Secret" }}

[publish.sip]
server = "127.0.0.1:5060"
domain = "example.com"
username = "calbridge"
password = {{ file = "{}" }}

[[publish.webhooks]]
name = "crm"
url = "https://crm.example.com/hook"
secret = "Inline-Webhook-Key"
"#,
            credential.display()
        );
        let config = Config::parse(&text).unwrap();
        let listed: Vec<(String, String)> = config
            .secrets()
            .into_iter()
            .map(|(setting, secret)| (setting, secret.origin().to_string()))
            .collect();
        assert_eq!(
            listed,
            vec![
                (
                    "api.token".to_string(),
                    "environment variable PATH".to_string()
                ),
                (
                    "sources[m365].graph.credential.client_secret".to_string(),
                    "inline in the configuration file".to_string()
                ),
                (
                    "publish.sip.password".to_string(),
                    format!("file {}", credential.display())
                ),
                (
                    "publish.webhooks[crm].secret".to_string(),
                    "inline in the configuration file".to_string()
                ),
            ]
        );
        let sip = config
            .publish
            .sip
            .as_ref()
            .and_then(|sip| sip.password.as_ref());
        assert_eq!(sip.map(Secret::expose), Some("Sip-Pa55word"));

        // Inline secrets in a file others can read: a warning naming them, not their values.
        let file = directory.path().join("calbridge.toml");
        std::fs::write(&file, &text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = config.inline_secrets_warning(&file).expect("a warning");
        assert!(
            warning.contains(
                "holds 2 secrets inline (sources[m365].graph.credential.client_secret, \
                 publish.webhooks[crm].secret)"
            ),
            "{warning}"
        );
        assert!(!warning.contains("Inline-"), "{warning}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(config.inline_secrets_warning(&file), None);
        // No inline secret: nothing to warn about, whoever can read the file.
        let referenced = Config::parse("[api]\ntoken = { env = \"PATH\" }\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(referenced.inline_secrets_warning(&file), None);
    }

    #[test]
    fn a_setting_that_a_secret_reference_replaced_says_what_to_write() {
        let error = Config::parse("[api]\ntoken_env = \"CALBRIDGE_API_TOKEN\"\n").unwrap_err();
        assert!(
            error.contains("(write `token = { env = \"NAME\" }` instead)"),
            "{error}"
        );
    }
}
