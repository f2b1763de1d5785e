use std::fmt;

/// An SMTP mailbox address, normalised to lower case.
///
/// Exchange treats addresses case-insensitively, and so do the organizer comparisons of the
/// presence rules; normalising once here means no layer compares raw strings.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MailboxAddress(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("mailbox address is empty")]
    Empty,
    #[error("mailbox address `{0}` must look like name@domain")]
    NotAnAddress(String),
    /// An SMTP address has at most 320 characters (64 before the `@`, 255 after it); a longer
    /// value is refused at the edge, and shown only by its start.
    #[error("mailbox address `{start}` is {length} characters long: an address has at most {MAX_ADDRESS_LEN}")]
    TooLong { start: String, length: usize },
}

/// The longest SMTP address (RFC 5321's 64-character local part, `@`, 255-character domain).
pub const MAX_ADDRESS_LEN: usize = 320;

/// An address as an error shows it: at most 80 characters, never an unbounded value.
fn shown(text: &str) -> String {
    crate::shorten(text, 80)
}

impl MailboxAddress {
    /// Parses `name@domain`, trimming white space and an optional `smtp:` prefix (the form
    /// Exchange uses in proxyAddresses).
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        let trimmed = raw.trim();
        let trimmed = trimmed
            .strip_prefix("smtp:")
            .or_else(|| trimmed.strip_prefix("SMTP:"))
            .unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(AddressError::Empty);
        }
        let length = trimmed.chars().count();
        if length > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong {
                start: shown(trimmed),
                length,
            });
        }
        let (local, domain) = trimmed
            .split_once('@')
            .ok_or_else(|| AddressError::NotAnAddress(shown(trimmed)))?;
        let well_formed = !local.is_empty()
            && !domain.is_empty()
            && !domain.contains('@')
            && !trimmed.chars().any(|c| c.is_whitespace() || c.is_control());
        if !well_formed {
            return Err(AddressError::NotAnAddress(shown(trimmed)));
        }
        Ok(MailboxAddress(trimmed.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `@`, used by SIP URI templates such as `sip:{local}@pbx`.
    pub fn local_part(&self) -> &str {
        self.0.split_once('@').map_or(&self.0, |(local, _)| local)
    }

    pub fn domain(&self) -> &str {
        self.0.split_once('@').map_or("", |(_, domain)| domain)
    }
}

impl fmt::Display for MailboxAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MailboxAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MailboxAddress({})", self.0)
    }
}

impl serde::Serialize for MailboxAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for MailboxAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        MailboxAddress::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_longer_than_smtp_allows_is_refused_and_shown_only_by_its_start() {
        let longest = format!("{}@{}.com", "a".repeat(64), "b".repeat(251));
        assert_eq!(longest.len(), MAX_ADDRESS_LEN);
        assert!(MailboxAddress::parse(&longest).is_ok());
        let huge = format!("{}@example.com", "x".repeat(5_000_000));
        let error = MailboxAddress::parse(&huge).unwrap_err();
        assert!(
            matches!(
                error,
                AddressError::TooLong {
                    length: 5_000_012,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().len() < 300, "{error}");
        let error = MailboxAddress::parse(&"y".repeat(300))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("must look like name@domain") && error.len() < 200,
            "{error}"
        );
    }

    #[test]
    fn address_is_lower_cased_and_trimmed() {
        let address = MailboxAddress::parse("  SMTP:Bob.Smith@Example.COM ").unwrap();
        assert_eq!(address.as_str(), "bob.smith@example.com");
        assert_eq!(address.local_part(), "bob.smith");
        assert_eq!(address.domain(), "example.com");
    }

    #[test]
    fn address_without_domain_is_rejected_with_the_input_named() {
        let error = MailboxAddress::parse("bob").unwrap_err();
        assert_eq!(
            error.to_string(),
            "mailbox address `bob` must look like name@domain"
        );
        assert!(MailboxAddress::parse("a@b@c").is_err());
        assert!(MailboxAddress::parse("a b@c").is_err());
        assert_eq!(MailboxAddress::parse(" "), Err(AddressError::Empty));
    }
}
