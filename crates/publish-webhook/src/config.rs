//! `[[webhooks]]` in `calbridge.toml`: where presence changes are POSTed and how.

use std::path::PathBuf;
use std::time::Duration;

use calbridge_domain::Secret;
use serde::Deserialize;

use crate::error::WebhookError;

/// One webhook endpoint.
///
/// ```toml
/// [[webhooks]]
/// name = "crm"
/// url = "https://crm.example.com/hooks/presence"
/// secret = "a long random string shared with the receiver"
/// mode = "latest_per_user"        # default "every_change"
/// timeout_seconds = 10            # default 10
/// max_backoff_seconds = 300       # default 300
/// extra_root_ca = "/etc/calbridge/crm-ca.pem"   # optional
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the endpoint in logs, the admin page and its outbox cursor (`webhook:<name>`):
    /// renaming an endpoint makes it a new consumer that starts from the outbox's beginning.
    pub name: String,
    /// `http://` or `https://` URL the events are POSTed to. It is never logged, because
    /// many webhook URLs carry a token in their path; the name stands for it.
    pub url: String,
    /// The HMAC-SHA256 key of `X-Calbridge-Signature`.
    pub secret: Secret,
    #[serde(default)]
    pub mode: DeliveryMode,
    /// How long one POST may take, connection included, before it counts as failed.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: f64,
    /// The first retry waits `first_backoff_seconds`; each further one doubles it up to
    /// this cap (both with jitter).
    #[serde(default = "default_max_backoff_seconds")]
    pub max_backoff_seconds: f64,
    #[serde(default = "default_first_backoff_seconds")]
    pub first_backoff_seconds: f64,
    /// PEM file of a CA trusted in addition to the system's roots (a private receiver).
    #[serde(default)]
    pub extra_root_ca: Option<PathBuf>,
}

/// What an endpoint receives after it was unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Every change, in the order it was decided; an event is retried until the endpoint
    /// accepts it and the next one is not sent before.
    #[default]
    EveryChange,
    /// Only the newest pending change of each person: after an outage a receiver that only
    /// shows the current state is not flooded with states that are already over.
    LatestPerUser,
}

impl DeliveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::EveryChange => "every_change",
            DeliveryMode::LatestPerUser => "latest_per_user",
        }
    }
}

fn default_timeout_seconds() -> f64 {
    10.0
}

fn default_max_backoff_seconds() -> f64 {
    300.0
}

fn default_first_backoff_seconds() -> f64 {
    1.0
}

/// A checked [`WebhookConfig`]: what a delivery task works with.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub name: String,
    pub url: reqwest::Url,
    pub secret: Secret,
    pub mode: DeliveryMode,
    pub timeout: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Endpoint {
    /// The outbox consumer whose cursor records what this endpoint has accepted.
    pub fn consumer(&self) -> String {
        consumer_name(&self.name)
    }
}

/// `webhook:<name>`, the outbox cursor of an endpoint.
pub fn consumer_name(endpoint_name: &str) -> String {
    format!("webhook:{endpoint_name}")
}

impl WebhookConfig {
    /// Checks the settings once, at start, so that the delivery loop never meets a bad one.
    pub(crate) fn validate(&self) -> Result<Endpoint, WebhookError> {
        let name = self.name.trim();
        let invalid = |setting: &'static str, problem: String| WebhookError::InvalidConfig {
            endpoint: name.to_string(),
            setting,
            problem,
        };
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "name",
                "must be a non-empty word without spaces (it names the endpoint's outbox cursor)"
                    .to_string(),
            ));
        }
        // The URL is not quoted in the message: it may carry the receiver's token.
        let url = reqwest::Url::parse(&self.url)
            .map_err(|error| invalid("url", format!("is not a URL ({error})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(
                "url",
                "must be an http:// or https:// URL with a host".to_string(),
            ));
        }
        if self.secret.is_empty() {
            return Err(invalid(
                "secret",
                "must not be empty: receivers verify X-Calbridge-Signature with it".to_string(),
            ));
        }
        let seconds = |setting: &'static str, value: f64| {
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|duration| !duration.is_zero())
                .ok_or_else(|| invalid(setting, format!("must be a positive number, not {value}")))
        };
        let timeout = seconds("timeout_seconds", self.timeout_seconds)?;
        let first_backoff = seconds("first_backoff_seconds", self.first_backoff_seconds)?;
        let max_backoff = seconds("max_backoff_seconds", self.max_backoff_seconds)?;
        if max_backoff < first_backoff {
            return Err(invalid(
                "max_backoff_seconds",
                format!(
                    "must be at least first_backoff_seconds ({})",
                    self.first_backoff_seconds
                ),
            ));
        }
        Ok(Endpoint {
            name: name.to_string(),
            url,
            secret: self.secret.clone(),
            mode: self.mode,
            timeout,
            first_backoff,
            max_backoff,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebhookConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults_are_every_change_with_ten_second_timeout_and_five_minute_cap() {
        let config = parse(
            r#"
            name = "crm"
            url = "https://crm.example.com/hook"
            secret = "s3cr3t"
            "#,
        )
        .expect("parses");
        let endpoint = config.validate().expect("valid");
        assert_eq!(endpoint.mode, DeliveryMode::EveryChange);
        assert_eq!(endpoint.timeout, Duration::from_secs(10));
        assert_eq!(endpoint.max_backoff, Duration::from_secs(300));
        assert_eq!(endpoint.first_backoff, Duration::from_secs(1));
        assert_eq!(endpoint.consumer(), "webhook:crm");
    }

    #[test]
    fn latest_per_user_and_integer_seconds_parse() {
        let config = parse(
            r#"
            name = "wallboard"
            url = "http://127.0.0.1:9000/"
            secret = "s"
            mode = "latest_per_user"
            timeout_seconds = 3
            max_backoff_seconds = 60
            "#,
        )
        .expect("parses");
        let endpoint = config.validate().expect("valid");
        assert_eq!(endpoint.mode, DeliveryMode::LatestPerUser);
        assert_eq!(endpoint.timeout, Duration::from_secs(3));
        assert_eq!(endpoint.max_backoff, Duration::from_secs(60));
    }

    #[test]
    fn unknown_fields_and_modes_are_refused() {
        assert!(parse("name = \"a\"\nurl = \"http://x/\"\nsecret = \"s\"\nretries = 3").is_err());
        assert!(
            parse("name = \"a\"\nurl = \"http://x/\"\nsecret = \"s\"\nmode = \"all\"").is_err()
        );
    }

    #[test]
    fn bad_settings_name_the_setting_and_never_the_url_or_secret() {
        let base = WebhookConfig {
            name: "crm".to_string(),
            url: "https://crm.example.com/hook/TOKEN123".to_string(),
            secret: Secret::new("hunter2"),
            mode: DeliveryMode::EveryChange,
            timeout_seconds: 10.0,
            max_backoff_seconds: 300.0,
            first_backoff_seconds: 1.0,
            extra_root_ca: None,
        };
        let cases = [
            WebhookConfig {
                url: "ftp://crm.example.com/TOKEN123".to_string(),
                ..base.clone()
            },
            WebhookConfig {
                secret: Secret::new(""),
                ..base.clone()
            },
            WebhookConfig {
                timeout_seconds: 0.0,
                ..base.clone()
            },
            WebhookConfig {
                max_backoff_seconds: -1.0,
                ..base.clone()
            },
            WebhookConfig {
                max_backoff_seconds: 0.5,
                ..base.clone()
            },
            WebhookConfig {
                name: "two words".to_string(),
                ..base.clone()
            },
        ];
        let expected_settings = [
            "url",
            "secret",
            "timeout_seconds",
            "max_backoff_seconds",
            "max_backoff_seconds",
            "name",
        ];
        for (config, setting) in cases.iter().zip(expected_settings) {
            let message = config.validate().expect_err("refused").to_string();
            assert!(message.contains(setting), "{message}");
            assert!(!message.contains("TOKEN123"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}
