//! The directory from LDAP: Active Directory, OpenLDAP, a PBX's user list.
//!
//! One read is: connect (`ldaps://`, or `ldap://` with StartTLS unless turned off), a simple
//! bind (or none), one paged search (RFC 2696) of `base_dn` with the filter, and, for nested
//! groups expanded here, base reads of the groups. Every entry becomes a
//! [`DirectoryPerson`] through the attribute mapping; entries that cannot be used are counted
//! as problems. A read that does not finish (server gone, bind refused, a size limit hit) is an
//! error as a whole: a partial list never reaches the store.
//!
//! Only this module speaks LDAP (through the `ldap3` crate); the rest of the service sees a
//! [`DirectoryListing`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use calbridge_domain::{shorten, MailboxAddress, Secret};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use serde::Deserialize;

use super::{DirectoryListing, DirectoryPerson};

/// `[directory.ldap]`: where the people are and how their attributes map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldaps://dc1.corp.example` (TLS from the start, port 636) or `ldap://host` (port 389,
    /// with StartTLS unless `starttls = false`).
    pub url: String,
    /// With `ldap://`: upgrade the connection with StartTLS before binding (default true, so
    /// that the password never crosses the network in clear).
    #[serde(default)]
    pub starttls: Option<bool>,
    /// A PEM file with further CA certificates to trust besides the system's (an internal CA).
    #[serde(default)]
    pub extra_root_ca: Option<PathBuf>,
    /// The account to bind as (simple bind), e.g. `CN=calbridge,OU=Service,DC=corp,DC=example`
    /// or `calbridge@corp.example` on Active Directory. Without it the read is anonymous.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// The bind password; never logged nor shown.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Where the people are searched (the whole subtree).
    pub base_dn: String,
    /// Which entries are people to follow.
    #[serde(default = "default_filter")]
    pub filter: String,
    /// Only members of this group (its DN).
    #[serde(default)]
    pub member_of: Option<String>,
    /// How members of groups inside `member_of` count: `none` (direct members, through the
    /// `memberOf` attribute), `matching_rule` (Active Directory's
    /// `1.2.840.113556.1.4.1941`, the server follows the nesting) or `expand` (calbridge reads
    /// the groups' `member` values itself; any server).
    #[serde(default)]
    pub nested: Nesting,
    /// Entries per page of the paged search.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// How long connecting, binding and each answer may take.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// The attribute with the person's mailbox address.
    #[serde(default = "default_address_attribute")]
    pub address_attribute: String,
    /// The attribute with further addresses; `smtp:` values are taken (the primary `SMTP:`
    /// first), other typed values (`X500:`, `SIP:`) skipped, values without a type taken.
    #[serde(default = "default_alternates_attribute")]
    pub alternates_attribute: String,
    /// The attribute with the SIP URI.
    #[serde(default = "default_sip_uri_attribute")]
    pub sip_uri_attribute: String,
    /// Instead of `sip_uri_attribute`: a template over attributes, e.g.
    /// `sip:{telephoneNumber}@pbx.example` (white space, `-`, `/`, `(` and `)` are removed
    /// from the values put in).
    #[serde(default)]
    pub sip_uri_template: Option<String>,
    /// The attribute with the display name.
    #[serde(default = "default_display_name_attribute")]
    pub display_name_attribute: String,
}

/// How nested groups count for `member_of`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nesting {
    /// Direct members only: `(memberOf=<group>)`.
    #[default]
    None,
    /// Active Directory's transitive rule: `(memberOf:1.2.840.113556.1.4.1941:=<group>)`.
    MatchingRule,
    /// calbridge reads the group and every group inside it (`member`, `uniqueMember`).
    Expand,
}

/// Active Directory's people with a mailbox, without disabled accounts.
pub const DEFAULT_FILTER: &str = "(&(objectCategory=person)(objectClass=user)(mail=*)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))";
/// Active Directory's "member of, at any depth" rule.
const TRANSITIVE_RULE: &str = "1.2.840.113556.1.4.1941";
/// Expanding nested groups stops after this many groups (a loop guard besides the visited set).
const MAX_GROUPS: usize = 10_000;

fn default_filter() -> String {
    DEFAULT_FILTER.to_string()
}
fn default_page_size() -> u32 {
    500
}
fn default_timeout_seconds() -> u64 {
    30
}
fn default_address_attribute() -> String {
    "mail".to_string()
}
fn default_alternates_attribute() -> String {
    "proxyAddresses".to_string()
}
fn default_sip_uri_attribute() -> String {
    "msRTCSIP-PrimaryUserAddress".to_string()
}
fn default_display_name_attribute() -> String {
    "displayName".to_string()
}

impl LdapConfig {
    /// A configuration with the defaults (Active Directory's attributes) for `url` and
    /// `base_dn`.
    pub fn new(url: &str, base_dn: &str) -> LdapConfig {
        LdapConfig {
            url: url.to_string(),
            starttls: None,
            extra_root_ca: None,
            bind_dn: None,
            password: None,
            base_dn: base_dn.to_string(),
            filter: default_filter(),
            member_of: None,
            nested: Nesting::None,
            page_size: default_page_size(),
            timeout_seconds: default_timeout_seconds(),
            address_attribute: default_address_attribute(),
            alternates_attribute: default_alternates_attribute(),
            sip_uri_attribute: default_sip_uri_attribute(),
            sip_uri_template: None,
            display_name_attribute: default_display_name_attribute(),
        }
    }

    /// Settings that serde cannot check; the error names the key.
    pub fn check(&self) -> Result<(), String> {
        let server = Server::parse(&self.url)?;
        if server.tls == Transport::Ldaps && self.starttls == Some(true) {
            return Err(
                "`starttls = true` with an ldaps:// URL: ldaps is TLS from the start; remove starttls"
                    .to_string(),
            );
        }
        match (&self.bind_dn, &self.password) {
            (Some(dn), None) => {
                return Err(format!(
                    "`bind_dn` = `{}` without `password`: a bind without a password is anonymous on most servers; set the password, or remove bind_dn to read anonymously",
                    shorten(dn, 200)
                ))
            }
            (Some(_), Some(password)) if password.is_empty() => {
                return Err("`password` is empty: set the bind password".to_string())
            }
            (None, Some(_)) => return Err("`password` without `bind_dn`: name the account to bind as".to_string()),
            _ => {}
        }
        if self.base_dn.trim().is_empty() {
            return Err(
                "`base_dn` is empty: name where the people are, e.g. `OU=Staff,DC=corp,DC=example`"
                    .to_string(),
            );
        }
        ldap3::parse_filter(&self.filter).map_err(|_| {
            format!(
                "`filter` = `{}` is not an LDAP filter (RFC 4515): check its parentheses, e.g. `(&(objectClass=inetOrgPerson)(mail=*))`",
                shorten(&self.filter, 200)
            )
        })?;
        if !(1..=100_000).contains(&self.page_size) {
            return Err(format!(
                "`page_size` = {} is out of range: use 1 to 100000 (default 500)",
                self.page_size
            ));
        }
        if !(1..=3600).contains(&self.timeout_seconds) {
            return Err(format!(
                "`timeout_seconds` = {} is out of range: use 1 to 3600 (default 30)",
                self.timeout_seconds
            ));
        }
        if self.nested != Nesting::None && self.member_of.is_none() {
            return Err("`nested` is set without `member_of`: name the group".to_string());
        }
        if let Some(template) = &self.sip_uri_template {
            if template_attributes(template).is_empty() {
                return Err(format!(
                    "`sip_uri_template` = `{}` names no attribute: write one in braces, e.g. `sip:{{telephoneNumber}}@pbx.example`",
                    shorten(template, 200)
                ));
            }
        }
        Ok(())
    }

    /// "LDAP ldaps://dc1.corp.example:636 (OU=Staff,DC=corp,DC=example)" for messages.
    pub fn describe(&self) -> String {
        let server = Server::parse(&self.url).map_or_else(|_| shorten(&self.url, 200), |s| s.shown);
        format!("LDAP {server} ({})", shorten(&self.base_dn, 200))
    }

    /// The filter sent: the configured one, narrowed to the group's members unless nested
    /// groups are expanded here.
    pub fn effective_filter(&self) -> String {
        match (&self.member_of, self.nested) {
            (Some(group), Nesting::None) => {
                format!("(&{}(memberOf={}))", self.filter, ldap3::ldap_escape(group))
            }
            (Some(group), Nesting::MatchingRule) => format!(
                "(&{}(memberOf:{TRANSITIVE_RULE}:={}))",
                self.filter,
                ldap3::ldap_escape(group)
            ),
            _ => self.filter.clone(),
        }
    }

    fn attributes(&self) -> Vec<String> {
        let mut attributes = vec![
            self.address_attribute.clone(),
            self.alternates_attribute.clone(),
            self.display_name_attribute.clone(),
        ];
        match &self.sip_uri_template {
            Some(template) => attributes.extend(template_attributes(template)),
            None => attributes.push(self.sip_uri_attribute.clone()),
        }
        let mut seen = HashSet::new();
        attributes.retain(|name| seen.insert(name.to_ascii_lowercase()));
        attributes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ldaps,
    Ldap,
}

/// The server of the URL: how it is shown (scheme, host, port; nothing else of the URL) and
/// reached.
struct Server {
    shown: String,
    tls: Transport,
}

impl Server {
    fn parse(url: &str) -> Result<Server, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!(
                "`url` = `{}` is not an LDAP URL: write ldaps://host or ldap://host",
                shorten(url, 200)
            )
        })?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "ldaps" => Transport::Ldaps,
            "ldap" => Transport::Ldap,
            other => {
                return Err(format!(
                    "`url` scheme `{}` is not ldap or ldaps",
                    shorten(other, 20)
                ))
            }
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "`url` = `{}` needs a host (and nothing else: the account goes in bind_dn)",
                shorten(url, 200)
            ));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()));
        let shown = if has_port {
            format!("{}://{authority}", scheme.to_ascii_lowercase())
        } else {
            let port = if tls == Transport::Ldaps { 636 } else { 389 };
            format!("{}://{authority}:{port}", scheme.to_ascii_lowercase())
        };
        Ok(Server { shown, tls })
    }
}

/// Why an LDAP read failed; each names the server and never the password.
#[derive(Debug, thiserror::Error)]
pub enum LdapReadError {
    #[error("{server}: cannot set up TLS: {problem}")]
    Tls { server: String, problem: String },
    #[error("{server}: cannot connect: {problem}")]
    Connect { server: String, problem: String },
    #[error("{server}: the bind as `{bind_dn}` was refused: {answer}; check bind_dn and password")]
    Bind {
        server: String,
        bind_dn: String,
        answer: String,
    },
    #[error("{server}: the search of `{base_dn}` failed after {n_entries} entries: {answer}")]
    Search {
        server: String,
        base_dn: String,
        n_entries: usize,
        answer: String,
    },
    #[error("{server}: the nested-group rule (memberOf:{TRANSITIVE_RULE}:=…) found no one in `{group}` ({answer}); Active Directory supports it, OpenLDAP and most other servers do not: set nested = \"expand\" to read the groups' members instead (if the group is really empty, that is why)")]
    NestedRuleUnsupported {
        server: String,
        group: String,
        answer: String,
    },
    #[error("{server}: reading the nested groups of `{group}` failed: {problem}")]
    Groups {
        server: String,
        group: String,
        problem: String,
    },
}

/// What the server answered, as a person reads it: the result name and code and the server's
/// own words, shortened.
fn answer_of(error: &ldap3::LdapError) -> String {
    match error {
        ldap3::LdapError::LdapResult { result } => result_text(result),
        other => shorten(&other.to_string(), 300),
    }
}

fn result_text(result: &ldap3::LdapResult) -> String {
    // The Display form is `rc=49 (invalidCredentials), dn: "", text: "…"`.
    let shown = result.to_string();
    let name = shown
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map_or("unknown", |(name, _)| name);
    if result.text.trim().is_empty() {
        format!("{name} (result code {})", result.rc)
    } else {
        format!(
            "{name} (result code {}): {}",
            result.rc,
            shorten(result.text.trim(), 300)
        )
    }
}

/// Reads the people of one LDAP directory entry.
pub async fn read(config: &LdapConfig) -> Result<DirectoryListing, LdapReadError> {
    let server = Server::parse(&config.url).map_err(|problem| LdapReadError::Connect {
        server: shorten(&config.url, 200),
        problem,
    })?;
    let shown = server.shown.clone();
    let timeout = Duration::from_secs(config.timeout_seconds.max(1));
    let mut settings = LdapConnSettings::new().set_conn_timeout(timeout);
    let use_starttls = server.tls == Transport::Ldap && config.starttls.unwrap_or(true);
    if server.tls == Transport::Ldaps || use_starttls {
        let mut tls =
            calbridge_net::tls_client_config(config.extra_root_ca.as_deref()).map_err(|error| {
                LdapReadError::Tls {
                    server: shown.clone(),
                    problem: error.to_string(),
                }
            })?;
        // LDAP negotiates no application protocol.
        tls.alpn_protocols.clear();
        settings = settings
            .set_config(Arc::new(tls))
            .set_starttls(use_starttls);
    }
    let connected =
        tokio::time::timeout(timeout, LdapConnAsync::with_settings(settings, &config.url)).await;
    let (connection, mut ldap) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(error)) => {
            return Err(LdapReadError::Connect {
                server: shown,
                problem: format!(
                    "{}{}",
                    shorten(&error.to_string(), 300),
                    if use_starttls { " (with StartTLS)" } else { "" }
                ),
            })
        }
        Err(_) => {
            return Err(LdapReadError::Connect {
                server: shown,
                problem: format!("no answer within {} s", timeout.as_secs()),
            })
        }
    };
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.drive().await {
            tracing::debug!("LDAP connection ended: {error}");
        }
    });
    let read = read_on(config, &shown, &mut ldap, timeout).await;
    // Unbinding is a courtesy; the connection closes with the driver either way.
    let _ = tokio::time::timeout(Duration::from_secs(2), ldap.unbind()).await;
    driver.abort();
    read
}

async fn read_on(
    config: &LdapConfig,
    server: &str,
    ldap: &mut ldap3::Ldap,
    timeout: Duration,
) -> Result<DirectoryListing, LdapReadError> {
    if let (Some(bind_dn), Some(password)) = (&config.bind_dn, &config.password) {
        let refused = |answer: String| LdapReadError::Bind {
            server: server.to_string(),
            bind_dn: shorten(bind_dn, 200),
            answer,
        };
        let bound = match ldap
            .with_timeout(timeout)
            .simple_bind(bind_dn, password.expose())
            .await
        {
            Ok(bound) => bound,
            Err(error @ ldap3::LdapError::LdapResult { .. }) => {
                return Err(refused(answer_of(&error)))
            }
            // No answer at all (the server went away, a time-out): not a refusal.
            Err(error) => {
                return Err(LdapReadError::Connect {
                    server: server.to_string(),
                    problem: format!("no answer to the bind: {}", answer_of(&error)),
                })
            }
        };
        if bound.rc != 0 {
            return Err(refused(result_text(&bound)));
        }
    }
    let filter = config.effective_filter();
    let attributes = config.attributes();
    let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(
            i32::try_from(config.page_size).unwrap_or(500),
        )),
    ];
    let failed = |n_entries: usize, answer: String| LdapReadError::Search {
        server: server.to_string(),
        base_dn: shorten(&config.base_dn, 200),
        n_entries,
        answer,
    };
    let mut search = ldap
        .with_timeout(timeout)
        .streaming_search_with(
            adapters,
            &config.base_dn,
            Scope::Subtree,
            &filter,
            attributes.clone(),
        )
        .await
        .map_err(|error| failed(0, answer_of(&error)))?;
    let mut entries = Vec::new();
    loop {
        match search.next().await {
            Ok(Some(entry)) => match entry_of(entry) {
                Some(entry) => entries.push(entry),
                None => {
                    return Err(failed(
                        entries.len(),
                        "the server sent an entry that cannot be read".to_string(),
                    ))
                }
            },
            Ok(None) => break,
            Err(error) => return Err(failed(entries.len(), answer_of(&error))),
        }
    }
    let finished = search.finish().await;
    if finished.rc != 0 {
        if config.nested == Nesting::MatchingRule && entries.is_empty() {
            return Err(nested_unsupported(config, server, result_text(&finished)));
        }
        return Err(failed(entries.len(), result_text(&finished)));
    }
    if config.nested == Nesting::MatchingRule && entries.is_empty() {
        return Err(nested_unsupported(
            config,
            server,
            "the server answered with no entries".to_string(),
        ));
    }
    let mut listing = DirectoryListing::default();
    let mut people = map_entries(config, entries, &mut listing.problems);
    if let (Some(group), Nesting::Expand) = (&config.member_of, config.nested) {
        let person_dns: HashSet<String> = people.iter().map(|(dn, _)| dn.clone()).collect();
        let members = expand_group(ldap, group, &person_dns, timeout)
            .await
            .map_err(|problem| LdapReadError::Groups {
                server: server.to_string(),
                group: shorten(group, 200),
                problem,
            })?;
        people.retain(|(dn, _)| members.contains(dn));
    }
    listing.people = people.into_iter().map(|(_, person)| person).collect();
    Ok(listing)
}

/// The entry's DN and attributes. `ldap3` panics on an entry whose structure is not what
/// RFC 4511 says; what a server sends must not end the directory task, so that is caught here
/// and becomes a failed read.
fn entry_of(raw: ldap3::ResultEntry) -> Option<SearchEntry> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| SearchEntry::construct(raw))).ok()
}

fn nested_unsupported(config: &LdapConfig, server: &str, answer: String) -> LdapReadError {
    LdapReadError::NestedRuleUnsupported {
        server: server.to_string(),
        group: shorten(config.member_of.as_deref().unwrap_or(""), 200),
        answer,
    }
}

/// A DN compared as servers write it: lower case, no spaces around `,` and `=`.
fn normal_dn(dn: &str) -> String {
    dn.split(',')
        .map(|part| part.split('=').map(str::trim).collect::<Vec<_>>().join("="))
        .collect::<Vec<_>>()
        .join(",")
        .to_lowercase()
}

/// The people (by normalised DN) of `group` and of every group inside it, read breadth first.
/// A member that is one of `people` is not read again; any other member is read once to see
/// whether it is a group.
async fn expand_group(
    ldap: &mut ldap3::Ldap,
    group: &str,
    people: &HashSet<String>,
    timeout: Duration,
) -> Result<HashSet<String>, String> {
    let mut members = HashSet::new();
    let mut visited = HashSet::new();
    let mut queue = VecDeque::from([group.to_string()]);
    while let Some(dn) = queue.pop_front() {
        if !visited.insert(normal_dn(&dn)) {
            continue;
        }
        if visited.len() > MAX_GROUPS {
            return Err(format!("more than {MAX_GROUPS} groups inside one another"));
        }
        let answer = match ldap
            .with_timeout(timeout)
            .search(
                &dn,
                Scope::Base,
                "(objectClass=*)",
                vec!["member", "uniqueMember"],
            )
            .await
        {
            Ok(result) => result.non_error().map(|(entries, _)| entries),
            Err(error) => Err(error),
        };
        let entries = match answer {
            Ok(entries) => entries,
            // A member that is gone (noSuchObject) is no group; only the top group must exist.
            Err(ldap3::LdapError::LdapResult { result }) if result.rc == 32 && dn != group => {
                Vec::new()
            }
            Err(error) => {
                return Err(format!(
                    "reading `{}`: {}",
                    shorten(&dn, 200),
                    answer_of(&error)
                ))
            }
        };
        for entry in entries {
            let Some(entry) = entry_of(entry) else {
                return Err(format!(
                    "reading `{}`: the server sent an entry that cannot be read",
                    shorten(&dn, 200)
                ));
            };
            for (name, values) in &entry.attrs {
                let name = name.to_ascii_lowercase();
                if name.starts_with("member;range=") {
                    return Err(format!(
                        "`{}` has more members than the server returns at once (ranged retrieval); on Active Directory use nested = \"matching_rule\"",
                        shorten(&dn, 200)
                    ));
                }
                if name != "member" && name != "uniquemember" {
                    continue;
                }
                for value in values {
                    // uniqueMember may carry `#'…'B` after the DN.
                    let member = value.split('#').next().unwrap_or(value);
                    let normal = normal_dn(member);
                    if people.contains(&normal) {
                        members.insert(normal);
                    } else if !visited.contains(&normal) {
                        queue.push_back(member.to_string());
                    }
                }
            }
        }
    }
    Ok(members)
}

/// The people of the entries, each with its normalised DN; entries without a usable address
/// become one problem line (with up to three DNs as examples) instead of one each.
fn map_entries(
    config: &LdapConfig,
    entries: Vec<SearchEntry>,
    problems: &mut Vec<String>,
) -> Vec<(String, DirectoryPerson)> {
    let mut people = Vec::with_capacity(entries.len());
    let mut seen = HashSet::with_capacity(entries.len());
    let mut without_address = Vec::new();
    let mut n_without_address = 0usize;
    let mut n_twice = 0usize;
    for entry in entries {
        let attributes: HashMap<String, Vec<String>> = entry
            .attrs
            .into_iter()
            .map(|(name, values)| (name.to_ascii_lowercase(), values))
            .collect();
        let values = |name: &str| -> &[String] {
            attributes
                .get(&name.to_ascii_lowercase())
                .map_or(&[], Vec::as_slice)
        };
        let first = |name: &str| {
            values(name)
                .iter()
                .map(|value| value.trim())
                .find(|value| !value.is_empty())
                .map(str::to_string)
        };
        let further = further_addresses(values(&config.alternates_attribute));
        let address = first(&config.address_attribute)
            .and_then(|value| MailboxAddress::parse(&value).ok())
            .or_else(|| {
                further
                    .first()
                    .and_then(|value| MailboxAddress::parse(value).ok())
            });
        let Some(address) = address else {
            n_without_address += 1;
            if without_address.len() < 3 {
                without_address.push(format!("`{}`", shorten(&entry.dn, 200)));
            }
            continue;
        };
        if !seen.insert(address.clone()) {
            n_twice += 1;
            continue;
        }
        let alternates: Vec<String> = further
            .into_iter()
            .filter(|value| !value.eq_ignore_ascii_case(address.as_str()))
            .collect();
        let sip_uri = match &config.sip_uri_template {
            Some(template) => fill_template(template, |name| first(name)),
            None => first(&config.sip_uri_attribute),
        };
        people.push((
            normal_dn(&entry.dn),
            DirectoryPerson {
                address,
                alternates,
                sip_uri,
                display_name: first(&config.display_name_attribute),
            },
        ));
    }
    if n_without_address > 0 {
        problems.push(format!(
            "{n_without_address} {} without a usable `{}` or `{}` address skipped (e.g. {})",
            if n_without_address == 1 {
                "entry"
            } else {
                "entries"
            },
            config.address_attribute,
            config.alternates_attribute,
            without_address.join(", ")
        ));
    }
    if n_twice > 0 {
        problems.push(format!(
            "{n_twice} {} an address another entry has; the first entry is used",
            if n_twice == 1 {
                "entry has"
            } else {
                "entries have"
            }
        ));
    }
    people
}

/// The addresses of a `proxyAddresses`-like attribute: the primary `SMTP:` first, then the
/// other `smtp:` values and untyped values in the server's order; other types skipped.
fn further_addresses(values: &[String]) -> Vec<String> {
    let mut primary = Vec::new();
    let mut others = Vec::new();
    for value in values {
        let value = value.trim();
        match value.split_once(':') {
            Some((kind, address)) if !kind.contains('@') => {
                if kind == "SMTP" {
                    primary.push(address.trim().to_string());
                } else if kind.eq_ignore_ascii_case("smtp") {
                    others.push(address.trim().to_string());
                }
            }
            _ if value.contains('@') => others.push(value.to_string()),
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    primary
        .into_iter()
        .chain(others)
        .filter(|address| !address.is_empty() && seen.insert(address.to_ascii_lowercase()))
        .collect()
}

/// The attribute names a template names in braces.
fn template_attributes(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = after[..close].trim();
        if !name.is_empty() {
            names.push(name.to_string());
        }
        rest = &after[close + 1..];
    }
    names
}

/// The template with each `{attribute}` replaced by the entry's value (white space, `-`, `/`,
/// `(` and `)` removed: a phone number as `+49 30 1234-56` becomes `+4930123456`); `None` when
/// a named attribute is missing.
fn fill_template(template: &str, value_of: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let value = value_of(after[..close].trim())?;
        let cleaned: String = value
            .chars()
            .filter(|c| !c.is_whitespace() && !"-/()".contains(*c))
            .collect();
        if cleaned.is_empty() {
            return None;
        }
        out.push_str(&cleaned);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dn: &str, attributes: &[(&str, &[&str])]) -> SearchEntry {
        SearchEntry {
            dn: dn.to_string(),
            attrs: attributes
                .iter()
                .map(|(name, values)| {
                    (
                        name.to_string(),
                        values.iter().map(|v| v.to_string()).collect(),
                    )
                })
                .collect(),
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn active_directory_attributes_map_with_the_primary_smtp_first() {
        let config = LdapConfig::new("ldaps://dc1.corp.example", "DC=corp,DC=example");
        let mut problems = Vec::new();
        let people = map_entries(
            &config,
            vec![
                entry(
                    "CN=Ann Berg,OU=Staff,DC=corp,DC=example",
                    &[
                        ("mail", &["Ann.Berg@corp.example"]),
                        (
                            "proxyAddresses",
                            &[
                                "smtp:ab@corp.example",
                                "X500:/o=Org/cn=ann",
                                "SIP:ann@corp.example",
                                "SMTP:ann.berg@corp.example",
                                "smtp:ann@legacy.example",
                            ],
                        ),
                        (
                            "msRTCSIP-PrimaryUserAddress",
                            &["sip:ann.berg@corp.example"],
                        ),
                        ("displayName", &["Ann Berg"]),
                    ],
                ),
                entry(
                    "CN=No Mail,OU=Staff,DC=corp,DC=example",
                    &[("displayName", &["No Mail"])],
                ),
                entry(
                    "CN=Only Proxy,OU=Staff,DC=corp,DC=example",
                    &[(
                        "proxyAddresses",
                        &["smtp:b@corp.example", "SMTP:only@corp.example"],
                    )],
                ),
            ],
            &mut problems,
        );
        assert_eq!(people.len(), 2);
        let ann = &people[0].1;
        assert_eq!(people[0].0, "cn=ann berg,ou=staff,dc=corp,dc=example");
        assert_eq!(ann.address.as_str(), "ann.berg@corp.example");
        assert_eq!(
            ann.alternates,
            vec!["ab@corp.example", "ann@legacy.example"]
        );
        assert_eq!(ann.sip_uri.as_deref(), Some("sip:ann.berg@corp.example"));
        assert_eq!(ann.display_name.as_deref(), Some("Ann Berg"));
        // Without `mail`, the primary SMTP address names the person.
        assert_eq!(people[1].1.address.as_str(), "only@corp.example");
        assert_eq!(people[1].1.alternates, vec!["b@corp.example"]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("1 entry without a usable `mail` or `proxyAddresses` address skipped (e.g. `CN=No Mail"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_sip_uri_template_fills_attributes_and_cleans_phone_numbers() {
        let mut config = LdapConfig::new("ldap://pbx.example", "dc=pbx");
        config.sip_uri_template = Some("sip:{telephoneNumber}@pbx.example".to_string());
        let mut problems = Vec::new();
        let people = map_entries(
            &config,
            vec![
                entry(
                    "uid=a,dc=pbx",
                    &[
                        ("mail", &["a@x.example"]),
                        ("telephoneNumber", &["+49 (30) 1234-56"]),
                    ],
                ),
                entry("uid=b,dc=pbx", &[("mail", &["b@x.example"])]),
            ],
            &mut problems,
        );
        assert_eq!(
            people[0].1.sip_uri.as_deref(),
            Some("sip:+4930123456@pbx.example")
        );
        assert_eq!(people[1].1.sip_uri, None);
        assert!(config.attributes().contains(&"telephoneNumber".to_string()));
        assert!(!config
            .attributes()
            .contains(&"msRTCSIP-PrimaryUserAddress".to_string()));
    }

    #[test]
    fn group_filters_are_built_and_escaped() {
        let mut config = LdapConfig::new("ldaps://dc1", "DC=corp");
        config.filter = "(objectClass=user)".to_string();
        config.member_of = Some("CN=Phones (all),DC=corp".to_string());
        assert_eq!(
            config.effective_filter(),
            "(&(objectClass=user)(memberOf=CN=Phones \\28all\\29,DC=corp))"
        );
        config.nested = Nesting::MatchingRule;
        assert_eq!(
            config.effective_filter(),
            "(&(objectClass=user)(memberOf:1.2.840.113556.1.4.1941:=CN=Phones \\28all\\29,DC=corp))"
        );
        config.nested = Nesting::Expand;
        assert_eq!(config.effective_filter(), "(objectClass=user)");
    }

    #[test]
    fn settings_mistakes_are_named() {
        let mut config = LdapConfig::new("ldaps://dc1.corp.example", "DC=corp");
        config.check().unwrap();
        assert_eq!(
            config.describe(),
            "LDAP ldaps://dc1.corp.example:636 (DC=corp)"
        );
        config.bind_dn = Some("CN=svc".to_string());
        assert!(config.check().unwrap_err().contains("without `password`"));
        config.password = Some(Secret::new("pw"));
        config.check().unwrap();
        config.starttls = Some(true);
        assert!(config
            .check()
            .unwrap_err()
            .contains("ldaps is TLS from the start"));
        config.starttls = None;
        config.filter = "(&(objectClass=user)".to_string();
        assert!(config
            .check()
            .unwrap_err()
            .contains("`filter` = `(&(objectClass=user)` is not an LDAP filter"));
        config.filter = "(objectClass=user)".to_string();
        config.url = "http://dc1".to_string();
        assert!(config.check().unwrap_err().contains("scheme `http`"));
        config.url = "ldap://dc1:3389/dc=x".to_string();
        assert_eq!(config.describe(), "LDAP ldap://dc1:3389 (DC=corp)");
        config.nested = Nesting::Expand;
        assert!(config.check().unwrap_err().contains("without `member_of`"));
    }
}
