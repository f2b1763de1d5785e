//! Configuration (`[publish.sip]` in `calbridge.toml`) and the presence state handed in by the
//! service. These types know nothing of SIP's wire format.

use std::collections::BTreeMap;

use calbridge_domain::{MailboxAddress, Secret};
use serde::Deserialize;

use crate::SipError;

/// How the publisher reaches the presence server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Datagrams with RFC 3261 retransmissions (T1 doubling up to T2, timeout 64·T1).
    #[default]
    Udp,
    /// One persistent connection, messages framed by `Content-Length`, reconnected on failure.
    Tcp,
}

/// `[publish.sip]`: where and how to publish.
///
/// ```toml
/// server = "pbx.example.com:5060"
/// transport = "udp"                   # or "tcp"
/// domain = "pbx.example.com"
/// uri_template = "sip:{local}@pbx.example.com"
/// username = "calbridge"              # digest credentials, only if the server challenges
/// password = "…"
/// expires_seconds = 3600
/// max_requests_per_second = 50
/// [activity_mapping.busy]
/// basic = "closed"
/// activity = "meeting"
/// [activity_mapping.categories]
/// oof = "vacation"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipPublisherConfig {
    /// The presence server (registrar, proxy or PBX) as `host:port`; a missing port means 5060.
    pub server: String,
    #[serde(default)]
    pub transport: Transport,
    /// The SIP domain of the users; the default URI template is `sip:{local}@{domain}`.
    pub domain: String,
    /// The local address to bind (`ip` or `ip:port`); by default the system picks one.
    #[serde(default)]
    pub local_address: Option<String>,
    /// Digest user name, used when the server answers 401/407.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// Requested lifetime of each publication; refreshed at 80 % of what the server grants.
    #[serde(default = "default_expires_seconds")]
    pub expires_seconds: u32,
    /// At most this many PUBLISH requests per second (new, modify, refresh and remove alike),
    /// so a midnight re-read of every user does not flood the server.
    #[serde(default = "default_max_requests_per_second")]
    pub max_requests_per_second: u32,
    /// How a mailbox address becomes a SIP URI: `{local}`, `{address}`, `{mailbox_domain}` and
    /// `{domain}` (the `domain` key above) are replaced. See [`uri_for`].
    #[serde(default)]
    pub uri_template: Option<String>,
    #[serde(default)]
    pub activity_mapping: ActivityMapping,
    /// RFC 3261 timer T1 in milliseconds (first UDP retransmission); 500 unless a test shortens it.
    #[serde(default = "default_t1_milliseconds")]
    pub t1_milliseconds: u64,
    /// How long a request may stay unanswered before it counts as failed (64·T1 = 32 s).
    #[serde(default = "default_transaction_timeout_milliseconds")]
    pub transaction_timeout_milliseconds: u64,
}

fn default_expires_seconds() -> u32 {
    3600
}
fn default_max_requests_per_second() -> u32 {
    50
}
fn default_t1_milliseconds() -> u64 {
    500
}
fn default_transaction_timeout_milliseconds() -> u64 {
    32_000
}

impl SipPublisherConfig {
    /// A configuration with every default, for code and tests that build it by hand.
    pub fn new(server: impl Into<String>, domain: impl Into<String>) -> Self {
        SipPublisherConfig {
            server: server.into(),
            transport: Transport::default(),
            domain: domain.into(),
            local_address: None,
            username: None,
            password: None,
            expires_seconds: default_expires_seconds(),
            max_requests_per_second: default_max_requests_per_second(),
            uri_template: None,
            activity_mapping: ActivityMapping::default(),
            t1_milliseconds: default_t1_milliseconds(),
            transaction_timeout_milliseconds: default_transaction_timeout_milliseconds(),
        }
    }

    /// The template in effect: the configured one, or `sip:{local}@{domain}`.
    pub fn effective_uri_template(&self) -> String {
        self.uri_template
            .clone()
            .unwrap_or_else(|| "sip:{local}@{domain}".to_owned())
            .replace("{domain}", &self.domain)
    }

    pub(crate) fn validate(&self) -> Result<(), SipError> {
        if self.expires_seconds == 0 {
            return Err(SipError::Config(
                "expires_seconds must be at least 1".into(),
            ));
        }
        if self.max_requests_per_second == 0 {
            return Err(SipError::Config(
                "max_requests_per_second must be at least 1".into(),
            ));
        }
        if self.t1_milliseconds == 0 || self.transaction_timeout_milliseconds < self.t1_milliseconds
        {
            return Err(SipError::Config(
                "t1_milliseconds must be positive and below transaction_timeout_milliseconds"
                    .into(),
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(SipError::Config(
                "username and password go together: set both for digest authentication, or neither"
                    .into(),
            ));
        }
        if self.domain.is_empty()
            || self
                .domain
                .contains(|c: char| c.is_whitespace() || c == '@')
        {
            return Err(SipError::Config(format!(
                "domain {:?} is not a host name",
                self.domain
            )));
        }
        self.activity_mapping.validate()
    }
}

/// What the presence engine decided, in the terms the publisher needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activity {
    Available,
    Busy,
    Away,
    Dnd,
}

/// The show-as category that won the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShowAsCategory {
    Busy,
    Tentative,
    TentativeException,
    Oof,
    WorkingElsewhere,
    NoData,
}

/// The presence to publish for one URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceState {
    pub activity: Activity,
    pub category: Option<ShowAsCategory>,
    /// The presence note in the seed's grammar, e.g. `Meeting until 12:30 #busy #len:7:7`.
    pub note: String,
    /// When the current state ends, if known.
    pub until: Option<jiff::Timestamp>,
}

/// PIDF `<basic>` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Basic {
    Open,
    Closed,
}

/// How one activity is shown: the PIDF basic status and the RPID activity element (none for
/// `activity = ""` or when absent).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpidMapping {
    pub basic: Basic,
    #[serde(default)]
    pub activity: Option<String>,
}

impl RpidMapping {
    fn new(basic: Basic, activity: Option<&str>) -> Self {
        RpidMapping {
            basic,
            activity: activity.map(str::to_owned),
        }
    }
}

/// The activity → PIDF/RPID table. Defaults:
///
/// | activity  | `<basic>` | RPID activity |
/// |-----------|-----------|---------------|
/// | available | open      | (none)        |
/// | busy      | closed    | `meeting`     |
/// | away      | open      | `away`        |
/// | dnd       | closed    | `busy`        |
///
/// and per winning show-as category (replaces the RPID activity, keeps `<basic>`, not applied
/// when the activity is `available`): `oof` → `vacation`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivityMapping {
    pub available: RpidMapping,
    pub busy: RpidMapping,
    pub away: RpidMapping,
    pub dnd: RpidMapping,
    pub categories: BTreeMap<ShowAsCategory, String>,
}

impl Default for ActivityMapping {
    fn default() -> Self {
        ActivityMapping {
            available: RpidMapping::new(Basic::Open, None),
            busy: RpidMapping::new(Basic::Closed, Some("meeting")),
            away: RpidMapping::new(Basic::Open, Some("away")),
            dnd: RpidMapping::new(Basic::Closed, Some("busy")),
            categories: BTreeMap::from([(ShowAsCategory::Oof, "vacation".to_owned())]),
        }
    }
}

impl ActivityMapping {
    /// The basic status and RPID activity element name for a state.
    pub fn resolve(&self, state: &PresenceState) -> (Basic, Option<&str>) {
        let row = match state.activity {
            Activity::Available => &self.available,
            Activity::Busy => &self.busy,
            Activity::Away => &self.away,
            Activity::Dnd => &self.dnd,
        };
        let mut activity = row.activity.as_deref().filter(|a| !a.is_empty());
        if state.activity != Activity::Available {
            if let Some(by_category) = state.category.and_then(|c| self.categories.get(&c)) {
                activity = Some(by_category.as_str()).filter(|a| !a.is_empty());
            }
        }
        (row.basic, activity)
    }

    fn validate(&self) -> Result<(), SipError> {
        let names = [&self.available, &self.busy, &self.away, &self.dnd]
            .into_iter()
            .filter_map(|row| row.activity.as_deref())
            .chain(self.categories.values().map(String::as_str));
        for name in names {
            // The name becomes an element name (`<rpid:meeting/>`), so it must be a plain token.
            let valid = name.is_empty()
                || (name.starts_with(|c: char| c.is_ascii_lowercase())
                    && name.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
            if !valid {
                return Err(SipError::Config(format!(
                    "activity_mapping: {name:?} is not an RPID activity name (RFC 4480: \
                     appointment, away, busy, holiday, meeting, vacation, …)"
                )));
            }
        }
        Ok(())
    }
}

/// The SIP URI for a mailbox: `{local}` is the mailbox's local part (escaped for a SIP user
/// part), `{address}` the whole address, `{mailbox_domain}` the mailbox's domain.
///
/// `uri_for("sip:{local}@pbx.example.com", "anna.berg@contoso.com")` is
/// `sip:anna.berg@pbx.example.com`.
pub fn uri_for(template: &str, mailbox: &MailboxAddress) -> String {
    template
        .replace("{local}", &escape_user(mailbox.local_part()))
        .replace("{address}", &escape_user(mailbox.as_str()))
        .replace("{mailbox_domain}", mailbox.domain())
}

/// Percent-escapes what RFC 3261's `user` production does not allow unescaped.
fn escape_user(user: &str) -> String {
    calbridge_net::percent::encode(user, SIP_USER_ESCAPED)
}

/// Everything but RFC 3261's `unreserved` and `user-unreserved` characters. The set is SIP's
/// grammar, so it lives with the SIP publisher; the encoding itself is the shared one.
const SIP_USER_ESCAPED: &calbridge_net::percent::AsciiSet =
    &calbridge_net::percent::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')')
        .remove(b'&')
        .remove(b'=')
        .remove(b'+')
        .remove(b'$')
        .remove(b',')
        .remove(b';')
        .remove(b'?')
        .remove(b'/');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_template_uses_the_local_part() {
        let mailbox = MailboxAddress::parse("Anna.Berg@contoso.com").unwrap();
        // Mailbox addresses are case-folded when parsed, so the URI is lower case.
        assert_eq!(
            uri_for("sip:{local}@pbx.example.com", &mailbox),
            "sip:anna.berg@pbx.example.com"
        );
        assert_eq!(
            uri_for("sip:{address}@x", &mailbox),
            "sip:anna.berg%40contoso.com@x"
        );
        assert_eq!(
            uri_for("sip:{local}@{mailbox_domain}", &mailbox),
            "sip:anna.berg@contoso.com"
        );
    }

    #[test]
    fn config_reads_from_toml_with_defaults_and_rejects_unknown_keys() {
        let config: SipPublisherConfig = toml::from_str(
            r#"
            server = "127.0.0.1:5060"
            domain = "pbx.example.com"
            transport = "tcp"
            username = "calbridge"
            password = "s3cret"
            [activity_mapping.busy]
            basic = "closed"
            activity = "appointment"
            [activity_mapping.categories]
            oof = "holiday"
            "#,
        )
        .unwrap();
        assert_eq!(config.transport, Transport::Tcp);
        assert_eq!(config.expires_seconds, 3600);
        assert_eq!(config.max_requests_per_second, 50);
        assert_eq!(
            config.activity_mapping.busy.activity.as_deref(),
            Some("appointment")
        );
        assert_eq!(
            config.activity_mapping.dnd.activity.as_deref(),
            Some("busy")
        );
        assert_eq!(
            config.effective_uri_template(),
            "sip:{local}@pbx.example.com"
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        config.validate().unwrap();

        let unknown = toml::from_str::<SipPublisherConfig>(
            "server = \"a:1\"\ndomain = \"d\"\nexpire_seconds = 5\n",
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn invalid_activity_names_are_rejected() {
        let mut config = SipPublisherConfig::new("a:1", "d");
        config.activity_mapping.busy.activity = Some("<evil/>".into());
        assert!(config.validate().is_err());
    }

    #[test]
    fn category_overrides_the_activity_but_not_basic() {
        let mapping = ActivityMapping::default();
        let mut state = PresenceState {
            activity: Activity::Away,
            category: Some(ShowAsCategory::Oof),
            note: String::new(),
            until: None,
        };
        assert_eq!(mapping.resolve(&state), (Basic::Open, Some("vacation")));
        state.activity = Activity::Busy;
        state.category = Some(ShowAsCategory::Tentative);
        assert_eq!(mapping.resolve(&state), (Basic::Closed, Some("meeting")));
        state.activity = Activity::Available;
        state.category = Some(ShowAsCategory::Oof);
        assert_eq!(mapping.resolve(&state), (Basic::Open, None));
        state.activity = Activity::Dnd;
        state.category = None;
        assert_eq!(mapping.resolve(&state), (Basic::Closed, Some("busy")));
    }
}
