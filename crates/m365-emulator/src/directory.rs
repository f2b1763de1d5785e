//! Who exists: tenants, app registrations, users (people and rooms) and groups.
//!
//! The directory is built once at start and read concurrently afterwards, so it needs no lock.

use std::collections::HashMap;

use jiff::civil::{Time, Weekday};
use jiff::Timestamp;

use crate::timefmt::NamedZone;

#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    pub display_name: String,
    /// Verified domains; the first is the default (`contoso.example`).
    pub domains: Vec<String>,
}

#[derive(Debug)]
pub struct ClientSecret {
    pub value: String,
    pub expires: Option<Timestamp>,
}

#[derive(Debug)]
pub struct AppCertificate {
    pub der: Vec<u8>,
    /// base64url of SHA-1 over the DER, as `x5t` carries it.
    pub x5t_sha1: String,
    /// base64url of SHA-256 over the DER, as `x5t#S256` carries it.
    pub x5t_sha256: String,
}

#[derive(Debug)]
pub struct AppRegistration {
    pub tenant_index: usize,
    pub client_id: String,
    /// Object id of the app's service principal, the `oid` of its app-only tokens.
    pub service_principal_id: String,
    pub display_name: String,
    pub secrets: Vec<ClientSecret>,
    pub certificates: Vec<AppCertificate>,
    /// Granted application permissions (`Calendars.ReadWrite`, `User.Read.All`, …).
    pub roles: Vec<String>,
    /// An application access policy: when set, only members of this group are reachable.
    pub access_policy_group: Option<usize>,
    /// Configured delegated permissions on Microsoft Graph (`Calendars.Read.Shared`, …).
    pub delegated_permissions: Vec<String>,
    /// "Grant admin consent" was pressed: the configured delegated permissions need no user's consent.
    pub admin_consent: bool,
    /// Registered redirect URIs (platform "Web"); the authorize endpoint accepts only these.
    pub redirect_uris: Vec<String>,
    /// "Allow public client flows": the device code and refresh grants work without a credential.
    pub public_client: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxKind {
    Person,
    Room,
}

#[derive(Debug, Clone)]
pub struct WorkingHours {
    pub days: Vec<Weekday>,
    pub start: Time,
    pub end: Time,
}

impl Default for WorkingHours {
    fn default() -> Self {
        WorkingHours {
            days: vec![
                Weekday::Monday,
                Weekday::Tuesday,
                Weekday::Wednesday,
                Weekday::Thursday,
                Weekday::Friday,
            ],
            start: Time::constant(8, 0, 0, 0),
            end: Time::constant(17, 0, 0, 0),
        }
    }
}

#[derive(Debug)]
pub struct User {
    pub id: String,
    pub tenant_index: usize,
    pub user_principal_name: String,
    pub mail: String,
    /// As Entra stores them: `SMTP:` marks the primary address, `smtp:` the aliases.
    pub proxy_addresses: Vec<String>,
    pub display_name: String,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub office_location: Option<String>,
    pub time_zone: NamedZone,
    pub password: Option<String>,
    pub kind: MailboxKind,
    /// False for users without an Exchange Online mailbox (`MailboxNotEnabledForRESTAPI`).
    pub has_mailbox: bool,
    pub working_hours: WorkingHours,
    /// How the mailbox answers meeting requests (`Set-CalendarProcessing`); meaningful for
    /// rooms only, since Exchange applies it only to resource mailboxes.
    pub calendar_processing: CalendarProcessing,
}

/// `AutomateProcessing` of `Set-CalendarProcessing`
/// (https://learn.microsoft.com/powershell/module/exchange/set-calendarprocessing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutomateProcessing {
    /// Calendar processing off: a request stays in the inbox, the calendar is not touched.
    None,
    /// Only the Calendar Attendant: a request is added as tentative, nobody answers it.
    AutoUpdate,
    /// The Resource Booking Attendant answers: free = accept, busy = decline. The default of
    /// room mailboxes in Exchange Online since November 2018.
    AutoAccept,
}

/// A resource mailbox's calendar processing, with the defaults `Set-CalendarProcessing`
/// documents (https://learn.microsoft.com/powershell/module/exchange/set-calendarprocessing):
/// `AutomateProcessing AutoAccept`, `AllowConflicts $false`, and on an accepted request
/// `DeleteSubject $true`, `AddOrganizerToSubject $true` (the organizer's name replaces the
/// subject), `DeleteComments $true` (the body is removed) and `RemovePrivateProperty $true`
/// (the private flag is cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalendarProcessing {
    pub automate_processing: AutomateProcessing,
    pub allow_conflicts: bool,
    pub delete_subject: bool,
    pub add_organizer_to_subject: bool,
    pub delete_comments: bool,
    pub remove_private_property: bool,
}

impl Default for CalendarProcessing {
    fn default() -> Self {
        CalendarProcessing {
            automate_processing: AutomateProcessing::AutoAccept,
            allow_conflicts: false,
            delete_subject: true,
            add_organizer_to_subject: true,
            delete_comments: true,
            remove_private_property: true,
        }
    }
}

impl User {
    /// Every address that reaches this mailbox, lower-cased.
    pub fn addresses(&self) -> Vec<String> {
        let mut addresses = vec![
            self.user_principal_name.to_ascii_lowercase(),
            self.mail.to_ascii_lowercase(),
        ];
        for proxy in &self.proxy_addresses {
            if let Some((scheme, address)) = proxy.split_once(':') {
                if scheme.eq_ignore_ascii_case("smtp") {
                    addresses.push(address.to_ascii_lowercase());
                }
            }
        }
        addresses.sort();
        addresses.dedup();
        addresses
    }
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub tenant_index: usize,
    pub display_name: String,
    pub mail_nickname: String,
    pub members: Vec<usize>,
}

/// The whole directory with lookup indexes.
#[derive(Debug, Default)]
pub struct Directory {
    pub tenants: Vec<Tenant>,
    pub apps: Vec<AppRegistration>,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    tenant_by_key: HashMap<String, usize>,
    user_by_key: HashMap<String, usize>,
    group_by_id: HashMap<String, usize>,
    /// Per group, its members as a sorted list for quick access-policy checks.
    group_member_sets: Vec<Vec<usize>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("two directory objects share the key '{0}': ids, user principal names and addresses must be unique")]
    DuplicateKey(String),
}

impl Directory {
    pub fn new(
        tenants: Vec<Tenant>,
        apps: Vec<AppRegistration>,
        users: Vec<User>,
        groups: Vec<Group>,
    ) -> Result<Directory, DirectoryError> {
        let mut directory = Directory {
            tenants,
            apps,
            users,
            groups,
            ..Directory::default()
        };
        for (index, tenant) in directory.tenants.iter().enumerate() {
            let mut keys = vec![tenant.id.to_ascii_lowercase()];
            keys.extend(
                tenant
                    .domains
                    .iter()
                    .map(|domain| domain.to_ascii_lowercase()),
            );
            for key in keys {
                if directory.tenant_by_key.insert(key.clone(), index).is_some() {
                    return Err(DirectoryError::DuplicateKey(key));
                }
            }
        }
        for (index, user) in directory.users.iter().enumerate() {
            let mut keys = user.addresses();
            keys.push(user.id.to_ascii_lowercase());
            for key in keys {
                if let Some(previous) = directory.user_by_key.insert(key.clone(), index) {
                    if previous != index {
                        return Err(DirectoryError::DuplicateKey(key));
                    }
                }
            }
        }
        for (index, group) in directory.groups.iter().enumerate() {
            if directory
                .group_by_id
                .insert(group.id.to_ascii_lowercase(), index)
                .is_some()
            {
                return Err(DirectoryError::DuplicateKey(group.id.clone()));
            }
        }
        directory.group_member_sets = directory
            .groups
            .iter()
            .map(|group| {
                let mut members = group.members.clone();
                members.sort_unstable();
                members.dedup();
                members
            })
            .collect();
        Ok(directory)
    }

    /// A tenant by id or verified domain (the `{tenant}` of identity URLs).
    pub fn tenant(&self, key: &str) -> Option<usize> {
        self.tenant_by_key.get(&key.to_ascii_lowercase()).copied()
    }

    /// A user by object id, user principal name, mail or any SMTP proxy address.
    pub fn user(&self, key: &str) -> Option<usize> {
        let trimmed = key.trim().trim_matches('\'');
        self.user_by_key.get(&trimmed.to_ascii_lowercase()).copied()
    }

    pub fn group(&self, id: &str) -> Option<usize> {
        self.group_by_id.get(&id.to_ascii_lowercase()).copied()
    }

    pub fn app(&self, tenant_index: usize, client_id: &str) -> Option<usize> {
        self.apps.iter().position(|app| {
            app.tenant_index == tenant_index && app.client_id.eq_ignore_ascii_case(client_id)
        })
    }

    pub fn app_by_client_id(&self, client_id: &str) -> Option<usize> {
        self.apps
            .iter()
            .position(|app| app.client_id.eq_ignore_ascii_case(client_id))
    }

    pub fn is_member(&self, group_index: usize, user_index: usize) -> bool {
        self.group_member_sets
            .get(group_index)
            .is_some_and(|members| members.binary_search(&user_index).is_ok())
    }
}
