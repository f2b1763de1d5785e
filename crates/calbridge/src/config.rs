//! `calbridge.toml`: parsed once at start-up into domain types.
//!
//! Every table rejects unknown keys (a misspelt key silently ignored is the worst kind of
//! configuration error); the error names the key and its line. `examples/calbridge.toml`
//! documents every key.

use std::path::{Path, PathBuf};

use calbridge_domain::{MailboxAddress, ZoneName};
use calbridge_presence::{Keyword, Language, Locale, Mapping, Rules, SubjectVisibility};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
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
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text; the error is toml's, which names the key and shows the line.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|error| error.to_string())
    }
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
}
