use std::fmt;

use jiff::tz::TimeZone;

/// A time zone named either by IANA (`Europe/Berlin`) or by Windows (`W. Europe Standard Time`).
///
/// Exchange and Graph name zones the Windows way (mailbox settings, `originalStartTimeZone`,
/// `{dateTime, timeZone}` pairs), administrators usually write IANA names; both resolve here
/// once, through the Unicode CLDR mapping for Windows names, so the core only sees a zone.
#[derive(Clone)]
pub struct ZoneName {
    /// The name as the user or server gave it, for messages and round trips.
    given: String,
    /// The IANA name it resolved to.
    iana: String,
    zone: TimeZone,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error("unknown time zone `{0}`: use an IANA name such as `Europe/Berlin` or a Windows name such as `W. Europe Standard Time`")]
    Unknown(String),
}

impl ZoneName {
    pub fn parse(raw: &str) -> Result<Self, ZoneError> {
        let given = raw.trim();
        if given.is_empty() {
            return Err(ZoneError::Unknown(raw.to_string()));
        }
        if given.eq_ignore_ascii_case("utc") || given.eq_ignore_ascii_case("etc/utc") {
            return Ok(ZoneName::utc());
        }
        let iana = match given.parse::<windows_timezones::WindowsTimezone>() {
            Ok(windows) => windows.tzdb_id().to_string(),
            Err(_) => given.to_string(),
        };
        let zone = TimeZone::get(&iana).map_err(|_| ZoneError::Unknown(given.to_string()))?;
        Ok(ZoneName {
            given: given.to_string(),
            iana,
            zone,
        })
    }

    pub fn utc() -> Self {
        ZoneName {
            given: "UTC".to_string(),
            iana: "UTC".to_string(),
            zone: TimeZone::UTC,
        }
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    pub fn iana(&self) -> &str {
        &self.iana
    }

    pub fn given(&self) -> &str {
        &self.given
    }
}

impl PartialEq for ZoneName {
    fn eq(&self, other: &Self) -> bool {
        self.iana == other.iana
    }
}

impl Eq for ZoneName {}

impl fmt::Debug for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneName({})", self.iana)
    }
}

impl fmt::Display for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.given)
    }
}

impl<'de> serde::Deserialize<'de> for ZoneName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        ZoneName::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for ZoneName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.given)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_iana_names_resolve_to_the_same_zone() {
        let windows = ZoneName::parse("W. Europe Standard Time").unwrap();
        let iana = ZoneName::parse("Europe/Berlin").unwrap();
        assert_eq!(windows, iana);
        assert_eq!(windows.iana(), "Europe/Berlin");
        assert_eq!(windows.given(), "W. Europe Standard Time");
        assert_eq!(
            ZoneName::parse("Pacific Standard Time").unwrap().iana(),
            "America/Los_Angeles"
        );
    }

    #[test]
    fn unknown_zone_names_the_input() {
        let error = ZoneName::parse("Mars/Olympus").unwrap_err();
        assert!(error.to_string().contains("`Mars/Olympus`"), "{error}");
    }

    #[test]
    fn utc_is_accepted_in_any_case() {
        assert_eq!(ZoneName::parse("utc").unwrap().iana(), "UTC");
        assert_eq!(ZoneName::parse("UTC").unwrap().zone(), &TimeZone::UTC);
    }
}
