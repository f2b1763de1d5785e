//! The directory: whose calendars to follow.
//!
//! A file (CSV with a header `address[,sip_uri,display_name]`, or TOML with `[[person]]`
//! tables) re-read when it changes, an Entra ID group read through Graph, or an LDAP directory
//! (`ldap.rs`) read again on an interval. Lines that cannot be used are reported (with their
//! line number) and skipped; the rest still works. Whatever the kind, a read that would drop
//! everyone or a large share waits for the next read to confirm it (`guard.rs`).

pub mod guard;
pub mod ldap;

use std::path::Path;

use calbridge_domain::MailboxAddress;
use serde::Deserialize;

/// One entry of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryPerson {
    pub address: MailboxAddress,
    /// Further addresses of the same person (the PBX keeps several separated by `;`), tried
    /// in order when the first cannot be resolved.
    pub alternates: Vec<String>,
    pub sip_uri: Option<String>,
    pub display_name: Option<String>,
}

/// What a directory file yields: the people, and the problems of the lines that were skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryListing {
    pub people: Vec<DirectoryPerson>,
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cannot read directory file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("directory file {path} is invalid: {message}")]
    Invalid { path: String, message: String },
}

pub fn read_file(path: &Path) -> Result<DirectoryListing, DirectoryError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DirectoryError::Read {
        path: shown.clone(),
        source,
    })?;
    let is_toml = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("toml"));
    if is_toml {
        parse_toml(&text).map_err(|message| DirectoryError::Invalid {
            path: shown,
            message,
        })
    } else {
        parse_csv(&text).map_err(|message| DirectoryError::Invalid {
            path: shown,
            message,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlDirectory {
    #[serde(default)]
    person: Vec<TomlPerson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlPerson {
    address: String,
    #[serde(default)]
    sip_uri: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
}

fn parse_toml(text: &str) -> Result<DirectoryListing, String> {
    let parsed: TomlDirectory = toml::from_str(text).map_err(|error| error.to_string())?;
    let mut listing = DirectoryListing::default();
    for (index, person) in parsed.person.into_iter().enumerate() {
        push_person(
            &mut listing,
            &format!("[[person]] #{}", index + 1),
            &person.address,
            person.sip_uri,
            person.display_name,
        );
    }
    Ok(listing)
}

/// A deliberately small CSV reader: comma-separated, optional double quotes around a field
/// (with `""` for a quote), `#` comment lines. The PBX exports this shape; a full CSV crate
/// would add little.
fn parse_csv(text: &str) -> Result<DirectoryListing, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim_start_matches('\u{feff}').trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
    let Some((_, header)) = lines.next() else {
        return Ok(DirectoryListing::default());
    };
    let columns: Vec<String> = split_csv_line(header)
        .into_iter()
        .map(|column| column.trim().to_ascii_lowercase())
        .collect();
    let position = |name: &str| columns.iter().position(|column| column == name);
    let address_column = position("address").ok_or_else(|| {
        format!(
            "the first line must be a header naming an `address` column (optional: sip_uri, display_name); it is `{}`",
            calbridge_domain::shorten(header, 200)
        )
    })?;
    let sip_column = position("sip_uri");
    let name_column = position("display_name");
    for column in &columns {
        if !["address", "sip_uri", "display_name"].contains(&column.as_str()) {
            return Err(format!(
                "unknown column `{}` in the header: use address, sip_uri, display_name",
                calbridge_domain::shorten(column, 100)
            ));
        }
    }
    let mut listing = DirectoryListing::default();
    for (number, line) in lines {
        let fields = split_csv_line(line);
        let field = |column: Option<usize>| {
            column
                .and_then(|index| fields.get(index))
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty())
        };
        let address = field(Some(address_column)).unwrap_or_default();
        push_person(
            &mut listing,
            &format!("line {number}"),
            &address,
            field(sip_column),
            field(name_column),
        );
    }
    Ok(listing)
}

fn push_person(
    listing: &mut DirectoryListing,
    place: &str,
    raw_address: &str,
    sip_uri: Option<String>,
    display_name: Option<String>,
) {
    // The PBX keeps several addresses separated by `;`: the first names the person, the
    // others are tried when it cannot be resolved.
    let mut addresses = raw_address
        .split(';')
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let first = addresses.next().unwrap_or("");
    let alternates: Vec<String> = addresses.map(str::to_string).collect();
    match MailboxAddress::parse(first) {
        Ok(address) => {
            if listing
                .people
                .iter()
                .any(|person| person.address == address)
            {
                listing.problems.push(format!(
                    "{place}: {address} is listed twice; the first entry is used"
                ));
                return;
            }
            listing.people.push(DirectoryPerson {
                address,
                alternates,
                sip_uri,
                display_name,
            });
        }
        Err(error) => listing.problems.push(format!("{place}: {error}")),
    }
}

fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    fields.push(current);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_optional_columns_and_bad_lines_keeps_the_good_ones() {
        let text = "\u{feff}address,display_name,sip_uri\n# comment\nBob@Example.com,\"Smith, Bob\",sip:bob@pbx\nnot-an-address,X,\nann@example.com;a.l@example.com,Ann,\nbob@example.com,dup,\n";
        let listing = parse_csv(text).unwrap();
        let addresses: Vec<&str> = listing.people.iter().map(|p| p.address.as_str()).collect();
        assert_eq!(addresses, vec!["bob@example.com", "ann@example.com"]);
        assert_eq!(
            listing.people[0].display_name.as_deref(),
            Some("Smith, Bob")
        );
        assert_eq!(listing.people[0].sip_uri.as_deref(), Some("sip:bob@pbx"));
        assert_eq!(
            listing.people[1].alternates,
            vec!["a.l@example.com".to_string()]
        );
        assert_eq!(listing.problems.len(), 2);
        assert!(
            listing.problems[0].starts_with("line 4: mailbox address `not-an-address`"),
            "{:?}",
            listing.problems
        );
        assert!(listing.problems[1].contains("listed twice"));
    }

    #[test]
    fn csv_without_an_address_header_is_rejected_clearly() {
        let error = parse_csv("bob@example.com\n").unwrap_err();
        assert!(
            error.contains("header naming an `address` column"),
            "{error}"
        );
        let error = parse_csv("address,phone\n").unwrap_err();
        assert!(error.contains("unknown column `phone`"), "{error}");
    }

    #[test]
    fn toml_directory_reads_people_tables() {
        let listing = parse_toml("[[person]]\naddress = \"a@x.org\"\nsip_uri = \"sip:a@pbx\"\n[[person]]\naddress = \"broken\"\n").unwrap();
        assert_eq!(listing.people.len(), 1);
        assert_eq!(
            listing.problems,
            vec!["[[person]] #2: mailbox address `broken` must look like name@domain"]
        );
        assert!(parse_toml("[[person]]\nadress = \"a@x.org\"\n")
            .unwrap_err()
            .contains("unknown field `adress`"));
    }
}
