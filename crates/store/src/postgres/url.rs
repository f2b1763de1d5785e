//! The PostgreSQL URL of `[store] url`, which may hold a password: parsed once, shown only
//! with the password replaced by `***`.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

use crate::{StoreError, StoreLocation};

/// A parsed `postgres://` (or `postgresql://`) URL. Its `Debug` and `Display` show the URL
/// without its password; the password only ever goes to the server.
#[derive(Clone)]
pub struct PostgresUrl {
    options: PgConnectOptions,
    redacted: String,
    location: StoreLocation,
}

impl PostgresUrl {
    /// Parses `text` the way sqlx does (libpq's URL form: user, password, host, port,
    /// database, and parameters such as `sslmode`). An error shows the URL redacted.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let text = text.trim();
        let redacted = redact_url(text);
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(invalid(
                "it does not start with postgres:// or postgresql://".to_string(),
            ));
        }
        // sqlx's messages name the part that is wrong (a port, an sslmode), not the URL.
        let mut options =
            PgConnectOptions::from_str(text).map_err(|error| invalid(error.to_string()))?;
        if options.get_application_name().is_none() {
            // Shown in pg_stat_activity, so that a DBA can tell calbridge's sessions apart.
            options = options.application_name("calbridge");
        }
        let host = match options.get_socket() {
            Some(folder) => folder.display().to_string(),
            None => options.get_host().to_string(),
        };
        let user = options.get_username().to_string();
        let location = StoreLocation::Postgres {
            host,
            port: options.get_port(),
            // The server's default for a URL without a database is the user's name.
            database: options
                .get_database()
                .map_or_else(|| user.clone(), str::to_string),
            user,
        };
        Ok(PostgresUrl {
            options,
            redacted,
            location,
        })
    }

    /// The URL with its password replaced by `***`, for messages.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The server, database and user.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    pub(crate) fn options(&self) -> &PgConnectOptions {
        &self.options
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PostgresUrl").field(&self.redacted).finish()
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `text` with the password of a URL replaced by `***`: the one in `user:password@` and any
/// `password=` parameter. Text that is not a URL (no `scheme://`) is not shown at all, since
/// it could be anything, a password included.
///
/// The user information is taken to end at the *last* `@`, so that a password with an
/// unescaped `@` or `/` is hidden whole; a stray `@` later in the URL hides more than the
/// password, never less.
pub fn redact_url(text: &str) -> String {
    const HIDDEN: &str = "***";
    let Some(scheme_end) = text.find("://") else {
        return "(not a URL, not shown)".to_string();
    };
    let authority_start = scheme_end + 3;
    let mut redacted = String::with_capacity(text.len());
    redacted.push_str(&text[..authority_start]);
    let rest = &text[authority_start..];
    let after_user_info = match rest.rfind('@') {
        Some(at) => {
            let user_info = &rest[..at];
            match user_info.find(':') {
                Some(colon) => {
                    redacted.push_str(&user_info[..colon]);
                    redacted.push(':');
                    redacted.push_str(HIDDEN);
                }
                None => redacted.push_str(user_info),
            }
            redacted.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    // Parameters: `?a=b&password=…&c=d`; the value ends at the next `&` or `#`.
    let (before_query, query) = match after_user_info.find('?') {
        Some(question) => after_user_info.split_at(question),
        None => (after_user_info, ""),
    };
    redacted.push_str(before_query);
    let mut remaining = query;
    while let Some(separator) = remaining.chars().next() {
        redacted.push(separator);
        remaining = &remaining[separator.len_utf8()..];
        let end = remaining.find(['&', '#']).unwrap_or(remaining.len());
        let parameter = &remaining[..end];
        match parameter.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                redacted.push_str(name);
                redacted.push('=');
                redacted.push_str(HIDDEN);
            }
            _ => redacted.push_str(parameter),
        }
        remaining = &remaining[end..];
        if remaining.starts_with('#') {
            redacted.push_str(remaining);
            break;
        }
    }
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_of_a_url_is_replaced_by_stars() {
        assert_eq!(
            redact_url("postgres://calbridge:s3cret@db.example.com:5432/calbridge"),
            "postgres://calbridge:***@db.example.com:5432/calbridge"
        );
        assert_eq!(
            redact_url("postgresql://calbridge:s3cret@db.example.com/calbridge?sslmode=require"),
            "postgresql://calbridge:***@db.example.com/calbridge?sslmode=require"
        );
    }

    #[test]
    fn a_url_without_a_password_is_shown_unchanged() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://db.example.com/calbridge?sslmode=disable&application_name=x",
            "postgres:///calbridge?host=/run/postgresql",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn a_password_with_at_signs_slashes_and_colons_is_hidden_whole() {
        let redacted = redact_url("postgres://u:p@ss/w:rd?x@db.example.com:5432/calbridge");
        assert_eq!(redacted, "postgres://u:***@db.example.com:5432/calbridge");
        assert!(!redacted.contains("ss/w"), "{redacted}");
    }

    #[test]
    fn a_password_parameter_is_hidden_too() {
        assert_eq!(
            redact_url(
                "postgres://u@db/calbridge?sslmode=require&password=s3cret&connect_timeout=5"
            ),
            "postgres://u@db/calbridge?sslmode=require&password=***&connect_timeout=5"
        );
        assert_eq!(
            redact_url("postgres://u:one@db/c?PASSWORD=two#fragment"),
            "postgres://u:***@db/c?PASSWORD=***#fragment"
        );
    }

    #[test]
    fn text_that_is_not_a_url_is_not_shown() {
        assert_eq!(
            redact_url("host=db password=s3cret"),
            "(not a URL, not shown)"
        );
    }

    #[test]
    fn a_parsed_url_names_its_server_and_database_but_never_shows_the_password() {
        let url = PostgresUrl::parse(" postgres://calbridge:s3cret@db.example.com:6432/presence\n")
            .unwrap();
        assert_eq!(
            url.location().to_string(),
            "PostgreSQL database `presence` on db.example.com:6432 (user calbridge)"
        );
        assert_eq!(
            url.to_string(),
            "postgres://calbridge:***@db.example.com:6432/presence"
        );
        assert!(!format!("{url:?}").contains("s3cret"));

        let defaulted = PostgresUrl::parse("postgres://alice@db.example.com").unwrap();
        assert_eq!(
            defaulted.location().to_string(),
            "PostgreSQL database `alice` on db.example.com:5432 (user alice)"
        );
    }

    #[test]
    fn a_url_that_is_not_postgres_is_refused_without_its_password() {
        let error = PostgresUrl::parse("mysql://root:s3cret@db/calbridge").unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("mysql://root:***@db/calbridge"),
            "{message}"
        );
        assert!(message.contains("postgres://"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");

        let error = PostgresUrl::parse("postgres://root:s3cret@db:notaport/calbridge").unwrap_err();
        let message = format!("{error} {error:?}");
        assert!(
            message.contains("postgres://root:***@db:notaport"),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
    }
}
