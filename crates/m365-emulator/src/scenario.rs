//! The scenario file: a declared tenant with apps, people, rooms, groups and calendars.
//!
//! TOML (`.toml`) or JSON (`.json`), same structure. README.md documents every field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::civil::{DateTime, Time};
use jiff::{Timestamp, ToSpan};
use serde::Deserialize;

use crate::calendar::{
    Attendee, AttendeeResponse, EmailAddress, EventData, Exception, Mailbox, Sensitivity, ShowAs,
    StoredEvent,
};
use crate::directory::{
    AppCertificate, AppRegistration, AutomateProcessing, CalendarProcessing, ClientSecret,
    Directory, Group, MailboxKind, Tenant, User, WorkingHours,
};
use crate::ews::setup::{ExchangeSetup, ExchangeSpec, UserRights};
use crate::faults::FaultSettings;
use crate::ids::{seeded_change_key, SeededRandom};
use crate::jwt::thumbprints;
use crate::recurrence::{Recurrence, RecurrenceSpec};
use crate::timefmt::{
    localize, parse_expression, parse_unsigned_duration, parse_weekday, resolve_zone, NamedZone,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub settings: SettingsSpec,
    #[serde(default)]
    pub faults: Option<FaultSettings>,
    #[serde(default)]
    pub tenants: Vec<TenantSpec>,
    #[serde(default)]
    pub apps: Vec<AppSpec>,
    #[serde(default)]
    pub users: Vec<UserSpec>,
    #[serde(default)]
    pub rooms: Vec<UserSpec>,
    #[serde(default)]
    pub groups: Vec<GroupSpec>,
    #[serde(default)]
    pub events: Vec<EventSpec>,
    /// The on-premises Exchange side: EWS accounts, URLs and Autodiscover answers.
    #[serde(default)]
    pub exchange: ExchangeSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SettingsSpec {
    /// Seed for ids not given in the file, so a scenario always yields the same ids.
    pub seed: u64,
    /// Lifetime of issued access tokens in seconds (Entra: 3599).
    pub token_lifetime_seconds: i64,
    /// Longest allowed subscription lifetime for Outlook events, in minutes (Graph: 10,080).
    pub subscription_max_minutes: i64,
    /// Extra DNS names the TLS certificate covers (besides 127.0.0.1, ::1 and localhost).
    pub host_names: Vec<String>,
    /// A refresh token unused for this long is refused with AADSTS700082 (Entra: 90 days).
    pub refresh_token_max_inactive_seconds: i64,
    /// The polling interval a device code answer names (Entra: 5 s).
    pub device_code_interval_seconds: i64,
    /// How long a device code can be redeemed (Entra: 900 s).
    pub device_code_lifetime_seconds: i64,
}

impl Default for SettingsSpec {
    fn default() -> Self {
        SettingsSpec {
            seed: 1,
            token_lifetime_seconds: 3599,
            subscription_max_minutes: 10_080,
            host_names: vec![],
            refresh_token_max_inactive_seconds: 90 * 24 * 3600,
            device_code_interval_seconds: 5,
            device_code_lifetime_seconds: 900,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// How other entries refer to this tenant.
    pub name: String,
    pub id: Option<String>,
    pub display_name: Option<String>,
    pub domains: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub name: String,
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    #[serde(default)]
    pub certificates: Vec<CertificateSpec>,
    /// Group name or id: the app may reach only members of this group.
    pub access_policy_group: Option<String>,
    /// Delegated permissions on Microsoft Graph configured for the app (`Calendars.Read.Shared`).
    #[serde(default)]
    pub delegated_permissions: Vec<String>,
    /// An administrator granted consent for `delegated_permissions` on behalf of everyone.
    #[serde(default)]
    pub admin_consent: bool,
    /// Redirect URIs of the app's "Web" platform.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// "Allow public client flows" (device code without a client secret).
    #[serde(default)]
    pub public_client: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    pub value: String,
    /// Time expression; absent means the secret never expires.
    pub expires: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    pub pem: Option<String>,
    /// Relative paths are relative to the scenario file.
    pub pem_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub upn: String,
    pub tenant: Option<String>,
    pub id: Option<String>,
    pub mail: Option<String>,
    #[serde(default)]
    pub proxy_addresses: Vec<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub job_title: Option<String>,
    pub department: Option<String>,
    pub office_location: Option<String>,
    pub time_zone: Option<String>,
    pub password: Option<String>,
    pub mailbox: Option<bool>,
    pub working_hours: Option<WorkingHoursSpec>,
    /// EWS: this account may impersonate every mailbox (ApplicationImpersonation).
    #[serde(default)]
    pub impersonation: bool,
    /// EWS: accounts (addresses) holding Reviewer rights on this user's calendar folder.
    #[serde(default)]
    pub delegates: Vec<String>,
    /// Outlook calendar sharing: users (addresses) this user shared their calendar with, who
    /// may then read it through Graph with delegated `Calendars.Read.Shared`.
    #[serde(default)]
    pub calendar_shared_with: Vec<String>,
    /// Rooms only: `Set-CalendarProcessing` of the room mailbox; omitted keys keep Exchange's
    /// defaults (`booking.rs`).
    pub calendar_processing: Option<CalendarProcessingSpec>,
}

/// `[rooms.calendar_processing]`: the `Set-CalendarProcessing` parameters the emulator models,
/// in snake case (`automate_processing = "auto_accept" | "auto_update" | "none"`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarProcessingSpec {
    pub automate_processing: Option<String>,
    pub allow_conflicts: Option<bool>,
    pub delete_subject: Option<bool>,
    pub add_organizer_to_subject: Option<bool>,
    pub delete_comments: Option<bool>,
    pub remove_private_property: Option<bool>,
}

impl CalendarProcessingSpec {
    fn build(&self, upn: &str) -> Result<CalendarProcessing, ScenarioError> {
        let defaults = CalendarProcessing::default();
        let automate_processing = match self.automate_processing.as_deref() {
            None => defaults.automate_processing,
            Some("auto_accept") => AutomateProcessing::AutoAccept,
            Some("auto_update") => AutomateProcessing::AutoUpdate,
            Some("none") => AutomateProcessing::None,
            Some(other) => {
                return Err(ScenarioError::Invalid(format!(
                    "room '{upn}': automate_processing '{other}' is not auto_accept, auto_update \
                     or none"
                )))
            }
        };
        Ok(CalendarProcessing {
            automate_processing,
            allow_conflicts: self.allow_conflicts.unwrap_or(defaults.allow_conflicts),
            delete_subject: self.delete_subject.unwrap_or(defaults.delete_subject),
            add_organizer_to_subject: self
                .add_organizer_to_subject
                .unwrap_or(defaults.add_organizer_to_subject),
            delete_comments: self.delete_comments.unwrap_or(defaults.delete_comments),
            remove_private_property: self
                .remove_private_property
                .unwrap_or(defaults.remove_private_property),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingHoursSpec {
    pub start: String,
    pub end: String,
    #[serde(default)]
    pub days: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    pub tenant: Option<String>,
    pub id: Option<String>,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    pub mailbox: String,
    pub subject: String,
    pub start: String,
    pub end: Option<String>,
    pub duration: Option<String>,
    pub id: Option<String>,
    pub time_zone: Option<String>,
    #[serde(default)]
    pub all_day: bool,
    pub show_as: Option<String>,
    pub sensitivity: Option<String>,
    pub importance: Option<String>,
    pub location: Option<String>,
    pub body: Option<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    pub organizer: Option<String>,
    #[serde(default)]
    pub attendees: Vec<String>,
    #[serde(default)]
    pub is_cancelled: bool,
    #[serde(default)]
    pub online_meeting: bool,
    pub recurrence: Option<RecurrenceSpec>,
    #[serde(default)]
    pub exceptions: Vec<ExceptionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionSpec {
    /// The occurrence's original start (a time expression in the event's zone).
    pub original_start: String,
    #[serde(default)]
    pub deleted: bool,
    pub subject: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub show_as: Option<String>,
    pub sensitivity: Option<String>,
    pub location: Option<String>,
    #[serde(default)]
    pub is_cancelled: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("scenario file {path} is not valid {format}: {message}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("scenario: {0}")]
    Invalid(String),
}

/// Everything the emulator serves, built from a scenario or the generator.
pub struct World {
    pub directory: Directory,
    pub mailboxes: Vec<Mailbox>,
    /// The app whose credentials the ready line shows.
    pub ready_app: usize,
    pub ready_secret: Option<String>,
    pub ready_group: Option<usize>,
    pub faults: FaultSettings,
    pub settings: SettingsSpec,
    /// Outlook calendar sharing: (owner, reader) pairs of user indexes.
    pub calendar_sharing: Vec<(usize, usize)>,
    pub exchange: ExchangeSetup,
}

impl Scenario {
    /// Parses scenario TOML text (certificates must be inline `pem`).
    pub fn from_toml_str(text: &str) -> Result<Scenario, ScenarioError> {
        toml::from_str(text).map_err(|error| ScenarioError::Parse {
            path: PathBuf::from("<text>"),
            format: "TOML",
            message: error.to_string(),
        })
    }

    /// Parses scenario JSON text (certificates must be inline `pem`).
    pub fn from_json_str(text: &str) -> Result<Scenario, ScenarioError> {
        serde_json::from_str(text).map_err(|error| ScenarioError::Parse {
            path: PathBuf::from("<text>"),
            format: "JSON",
            message: error.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("json"));
        let mut scenario: Scenario = if is_json {
            serde_json::from_str(&text).map_err(|error| ScenarioError::Parse {
                path: path.to_path_buf(),
                format: "JSON",
                message: error.to_string(),
            })?
        } else {
            toml::from_str(&text).map_err(|error| ScenarioError::Parse {
                path: path.to_path_buf(),
                format: "TOML",
                message: error.to_string(),
            })?
        };
        // Certificate files are read relative to the scenario so a scenario folder can move.
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        for app in &mut scenario.apps {
            for certificate in &mut app.certificates {
                if let Some(file) = &certificate.pem_file {
                    let full = if file.is_absolute() {
                        file.clone()
                    } else {
                        base.join(file)
                    };
                    let pem =
                        std::fs::read_to_string(&full).map_err(|source| ScenarioError::Read {
                            path: full.clone(),
                            source,
                        })?;
                    certificate.pem = Some(pem);
                }
            }
        }
        Ok(scenario)
    }

    /// Builds the world, evaluating relative times against `now`.
    pub fn build(&self, now: Timestamp) -> Result<World, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid(message);
        let mut random = SeededRandom::new(self.settings.seed);
        let mut tenants = Vec::new();
        let tenant_specs: Vec<TenantSpec> = if self.tenants.is_empty() {
            vec![TenantSpec {
                name: "contoso".to_string(),
                id: None,
                display_name: None,
                domains: vec!["contoso.example".to_string()],
            }]
        } else {
            self.tenants
                .iter()
                .map(|tenant| TenantSpec {
                    name: tenant.name.clone(),
                    id: tenant.id.clone(),
                    display_name: tenant.display_name.clone(),
                    domains: tenant.domains.clone(),
                })
                .collect()
        };
        for spec in &tenant_specs {
            if spec.domains.is_empty() {
                return Err(invalid(format!(
                    "tenant '{}' needs at least one domain",
                    spec.name
                )));
            }
            tenants.push(Tenant {
                id: spec.id.clone().unwrap_or_else(|| random.guid()),
                display_name: spec
                    .display_name
                    .clone()
                    .unwrap_or_else(|| spec.name.clone()),
                domains: spec.domains.clone(),
            });
        }
        let tenant_index = |reference: &Option<String>| -> Result<usize, ScenarioError> {
            match reference {
                None => Ok(0),
                Some(name) => tenant_specs
                    .iter()
                    .zip(&tenants)
                    .position(|(spec, tenant)| {
                        spec.name.eq_ignore_ascii_case(name) || tenant.id.eq_ignore_ascii_case(name)
                    })
                    .ok_or_else(|| invalid(format!("unknown tenant '{name}'"))),
            }
        };

        let mut users = Vec::new();
        for (spec, kind) in self
            .users
            .iter()
            .map(|user| (user, MailboxKind::Person))
            .chain(self.rooms.iter().map(|room| (room, MailboxKind::Room)))
        {
            users.push(build_user(
                spec,
                kind,
                tenant_index(&spec.tenant)?,
                &mut random,
            )?);
        }
        let user_index = |address: &str| {
            users.iter().position(|user: &User| {
                user.addresses().contains(&address.to_ascii_lowercase())
                    || user.id.eq_ignore_ascii_case(address)
            })
        };

        let mut groups = Vec::new();
        for spec in &self.groups {
            let mut members = Vec::new();
            for member in &spec.members {
                members.push(user_index(member).ok_or_else(|| {
                    invalid(format!(
                        "group '{}' lists unknown member '{member}'",
                        spec.name
                    ))
                })?);
            }
            groups.push(Group {
                id: spec.id.clone().unwrap_or_else(|| random.guid()),
                tenant_index: tenant_index(&spec.tenant)?,
                display_name: spec.name.clone(),
                mail_nickname: spec
                    .name
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .collect(),
                members,
            });
        }

        let mut apps = Vec::new();
        for spec in &self.apps {
            let mut secrets = Vec::new();
            for secret in &spec.secrets {
                let expires = secret
                    .expires
                    .as_deref()
                    .map(|expression| {
                        parse_expression(expression, now, &jiff::tz::TimeZone::UTC)
                            .map(|zoned| zoned.timestamp())
                    })
                    .transpose()
                    .map_err(|error| {
                        invalid(format!("app '{}' secret expiry: {error}", spec.name))
                    })?;
                secrets.push(ClientSecret {
                    value: secret.value.clone(),
                    expires,
                });
            }
            let mut certificates = Vec::new();
            for certificate in &spec.certificates {
                let pem = certificate.pem.as_deref().ok_or_else(|| {
                    invalid(format!(
                        "app '{}' has a certificate without pem or pem_file",
                        spec.name
                    ))
                })?;
                let der = certificate_der_from_pem(pem).ok_or_else(|| {
                    invalid(format!(
                        "app '{}' has a certificate that is not a PEM CERTIFICATE",
                        spec.name
                    ))
                })?;
                let (x5t_sha1, x5t_sha256) = thumbprints(&der);
                certificates.push(AppCertificate {
                    der,
                    x5t_sha1,
                    x5t_sha256,
                });
            }
            let access_policy_group = match &spec.access_policy_group {
                None => None,
                Some(reference) => Some(
                    groups
                        .iter()
                        .position(|group| {
                            group.display_name.eq_ignore_ascii_case(reference)
                                || group.id.eq_ignore_ascii_case(reference)
                        })
                        .ok_or_else(|| {
                            invalid(format!(
                                "app '{}' names unknown access policy group '{reference}'",
                                spec.name
                            ))
                        })?,
                ),
            };
            apps.push(AppRegistration {
                tenant_index: tenant_index(&spec.tenant)?,
                client_id: spec.client_id.clone().unwrap_or_else(|| random.guid()),
                service_principal_id: random.guid(),
                display_name: spec.name.clone(),
                secrets,
                certificates,
                roles: spec.roles.clone(),
                access_policy_group,
                delegated_permissions: spec.delegated_permissions.clone(),
                admin_consent: spec.admin_consent,
                redirect_uris: spec.redirect_uris.clone(),
                public_client: spec.public_client,
            });
        }
        if apps.is_empty() {
            return Err(invalid(
                "a scenario needs at least one app registration under [[apps]]".to_string(),
            ));
        }
        let ready_app = apps
            .iter()
            .position(|app| !app.secrets.is_empty())
            .unwrap_or(0);
        let ready_secret = apps[ready_app]
            .secrets
            .first()
            .map(|secret| secret.value.clone());

        let mut mailboxes: Vec<Mailbox> = users.iter().map(|_| Mailbox::default()).collect();
        for (position, spec) in self.events.iter().enumerate() {
            let owner = user_index(&spec.mailbox).ok_or_else(|| {
                invalid(format!(
                    "event {} '{}' is in unknown mailbox '{}'",
                    position + 1,
                    spec.subject,
                    spec.mailbox
                ))
            })?;
            let event = build_event(spec, &users, owner, now, &mut random).map_err(|message| {
                invalid(format!(
                    "event {} '{}': {message}",
                    position + 1,
                    spec.subject
                ))
            })?;
            // A room among the attendees holds the booking in its own calendar too (with the
            // same iCalUId) as its calendar processing leaves it (`booking.rs`), and the
            // organizer's copy shows the room's answer. A scenario's bookings are not checked
            // for conflicts: the scenario says what the room holds.
            let rooms_booked: Vec<usize> = event
                .data
                .attendees
                .iter()
                .filter_map(|attendee| user_index(&attendee.email.address))
                .filter(|&index| index != owner && users[index].kind == MailboxKind::Room)
                .collect();
            let mut event = event;
            for (n, room) in rooms_booked.into_iter().enumerate() {
                let processing = &users[room].calendar_processing;
                let id = format!("{}Room{}", event.id, n + 1);
                if let Some(booking) = crate::booking::room_copy(&event, processing, id) {
                    mailboxes[room].events.push(booking);
                    let answer = crate::booking::room_answer(processing, event.created);
                    let room_addresses = users[room].addresses();
                    for attendee in &mut event.data.attendees {
                        if room_addresses.contains(&attendee.email.address.to_ascii_lowercase()) {
                            attendee.response = answer;
                        }
                    }
                }
            }
            mailboxes[owner].events.push(event);
        }
        let rights: Vec<UserRights<'_>> = self
            .users
            .iter()
            .chain(self.rooms.iter())
            .map(|spec| UserRights {
                impersonation: spec.impersonation,
                delegates: &spec.delegates,
            })
            .collect();
        let exchange = ExchangeSetup::build(&self.exchange, &users, &rights).map_err(invalid)?;
        let mut calendar_sharing = Vec::new();
        for (owner, spec) in self.users.iter().chain(self.rooms.iter()).enumerate() {
            for reader in &spec.calendar_shared_with {
                let reader_index = user_index(reader).ok_or_else(|| {
                    invalid(format!(
                        "user '{}' shares their calendar with unknown user '{reader}'",
                        spec.upn
                    ))
                })?;
                calendar_sharing.push((owner, reader_index));
            }
        }
        let directory = Directory::new(tenants, apps, users, groups)
            .map_err(|error| invalid(error.to_string()))?;
        Ok(World {
            directory,
            mailboxes,
            ready_app,
            ready_secret,
            ready_group: None,
            faults: self.faults.clone().unwrap_or_default(),
            settings: self.settings.clone(),
            exchange,
            calendar_sharing,
        })
    }
}

fn certificate_der_from_pem(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|der| der.as_ref().to_vec())
}

fn build_user(
    spec: &UserSpec,
    kind: MailboxKind,
    tenant_index: usize,
    random: &mut SeededRandom,
) -> Result<User, ScenarioError> {
    let zone_name = spec.time_zone.clone().unwrap_or_else(|| "UTC".to_string());
    let time_zone = resolve_zone(&zone_name)
        .map_err(|error| ScenarioError::Invalid(format!("user '{}': {error}", spec.upn)))?;
    let mail = spec.mail.clone().unwrap_or_else(|| spec.upn.clone());
    let mut proxy_addresses = vec![format!("SMTP:{mail}")];
    for proxy in &spec.proxy_addresses {
        if !proxy.eq_ignore_ascii_case(&format!("smtp:{mail}")) {
            proxy_addresses.push(proxy.clone());
        }
    }
    for alias in &spec.aliases {
        proxy_addresses.push(format!("smtp:{alias}"));
    }
    let working_hours = match &spec.working_hours {
        None => WorkingHours::default(),
        Some(hours) => {
            let parse_time = |text: &str| {
                text.parse::<Time>().map_err(|_| {
                    ScenarioError::Invalid(format!(
                        "user '{}': working hours time '{text}' is not HH:MM",
                        spec.upn
                    ))
                })
            };
            let days = if hours.days.is_empty() {
                WorkingHours::default().days
            } else {
                hours
                    .days
                    .iter()
                    .map(|day| {
                        parse_weekday(day).ok_or_else(|| {
                            ScenarioError::Invalid(format!(
                                "user '{}': '{day}' is not a weekday",
                                spec.upn
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?
            };
            WorkingHours {
                days,
                start: parse_time(&hours.start)?,
                end: parse_time(&hours.end)?,
            }
        }
    };
    // "Note that this cmdlet is effective only on resource mailboxes" (Set-CalendarProcessing).
    let calendar_processing = match (&spec.calendar_processing, kind) {
        (None, _) => CalendarProcessing::default(),
        (Some(processing), MailboxKind::Room) => processing.build(&spec.upn)?,
        (Some(_), MailboxKind::Person) => {
            return Err(ScenarioError::Invalid(format!(
                "user '{}': calendar_processing applies to rooms only ([[rooms]])",
                spec.upn
            )))
        }
    };
    let local_part = spec.upn.split('@').next().unwrap_or_default().to_string();
    Ok(User {
        id: spec.id.clone().unwrap_or_else(|| random.guid()),
        tenant_index,
        user_principal_name: spec.upn.clone(),
        mail,
        proxy_addresses,
        display_name: spec.display_name.clone().unwrap_or(local_part),
        given_name: spec.given_name.clone(),
        surname: spec.surname.clone(),
        job_title: spec.job_title.clone(),
        department: spec.department.clone(),
        office_location: spec.office_location.clone(),
        time_zone,
        password: spec.password.clone(),
        kind,
        has_mailbox: spec.mailbox.unwrap_or(true),
        working_hours,
        calendar_processing,
    })
}

fn build_event(
    spec: &EventSpec,
    users: &[User],
    owner: usize,
    now: Timestamp,
    random: &mut SeededRandom,
) -> Result<StoredEvent, String> {
    let owner_user = &users[owner];
    let zone: NamedZone = match &spec.time_zone {
        Some(name) => resolve_zone(name).map_err(|error| error.to_string())?,
        None => owner_user.time_zone.clone(),
    };
    let start = parse_expression(&spec.start, now, &zone.zone)
        .map_err(|error| error.to_string())?
        .datetime();
    let start = if spec.all_day {
        start.date().to_datetime(Time::midnight())
    } else {
        start
    };
    let end = end_of(
        start,
        spec.end.as_deref(),
        spec.duration.as_deref(),
        spec.all_day,
        now,
        &zone,
    )?;
    let show_as = match &spec.show_as {
        Some(text) => ShowAs::parse(text).ok_or_else(|| format!("'{text}' is not a showAs value (free, tentative, busy, oof, workingElsewhere, unknown)"))?,
        None => ShowAs::Busy,
    };
    let sensitivity = match &spec.sensitivity {
        Some(text) => Sensitivity::parse(text).ok_or_else(|| {
            format!("'{text}' is not a sensitivity (normal, personal, private, confidential)")
        })?,
        None => Sensitivity::Normal,
    };
    let email_of = |address: &str| match users
        .iter()
        .find(|user| user.addresses().contains(&address.to_ascii_lowercase()))
    {
        Some(user) => EmailAddress {
            name: user.display_name.clone(),
            address: user.mail.clone(),
        },
        None => EmailAddress {
            name: address.to_string(),
            address: address.to_string(),
        },
    };
    let organizer = match &spec.organizer {
        Some(address) => email_of(address),
        None => EmailAddress {
            name: owner_user.display_name.clone(),
            address: owner_user.mail.clone(),
        },
    };
    let attendees = spec
        .attendees
        .iter()
        .map(|address| {
            let is_room = users.iter().any(|user| {
                user.kind == MailboxKind::Room
                    && user.addresses().contains(&address.to_ascii_lowercase())
            });
            Attendee {
                email: email_of(address),
                kind: if is_room { "resource" } else { "required" }.to_string(),
                response: AttendeeResponse::None,
            }
        })
        .collect();
    let data = EventData {
        subject: spec.subject.clone(),
        body_html: spec.body.clone().unwrap_or_default(),
        location: spec.location.clone().unwrap_or_default(),
        show_as,
        sensitivity,
        importance: spec
            .importance
            .clone()
            .unwrap_or_else(|| "normal".to_string()),
        is_all_day: spec.all_day,
        is_cancelled: spec.is_cancelled,
        is_online_meeting: spec.online_meeting,
        categories: spec.categories.clone(),
        start,
        end,
        zone: zone.clone(),
        organizer,
        attendees,
    };
    let recurrence = spec
        .recurrence
        .as_ref()
        .map(|recurrence_spec| Recurrence::from_spec(recurrence_spec, start.date(), &zone.name))
        .transpose()
        .map_err(|error| error.to_string())?;
    let change_key = seeded_change_key(random);
    let mut exceptions = BTreeMap::new();
    for exception in &spec.exceptions {
        if recurrence.is_none() {
            return Err("exceptions need a recurrence".to_string());
        }
        let original_start = parse_expression(&exception.original_start, now, &zone.zone)
            .map_err(|error| error.to_string())?
            .datetime();
        if exception.deleted {
            exceptions.insert(original_start, Exception::Deleted);
            continue;
        }
        let mut modified = data.clone();
        let length = data
            .start
            .until(data.end)
            .map_err(|error| error.to_string())?;
        modified.start = match &exception.start {
            Some(expression) => parse_expression(expression, now, &zone.zone)
                .map_err(|error| error.to_string())?
                .datetime(),
            None => original_start,
        };
        modified.end = match &exception.end {
            Some(expression) => end_of(
                modified.start,
                Some(expression),
                None,
                data.is_all_day,
                now,
                &zone,
            )?,
            None => modified
                .start
                .checked_add(length)
                .map_err(|error| error.to_string())?,
        };
        if let Some(subject) = &exception.subject {
            modified.subject = subject.clone();
        }
        if let Some(location) = &exception.location {
            modified.location = location.clone();
        }
        if let Some(text) = &exception.show_as {
            modified.show_as =
                ShowAs::parse(text).ok_or_else(|| format!("'{text}' is not a showAs value"))?;
        }
        if let Some(text) = &exception.sensitivity {
            modified.sensitivity =
                Sensitivity::parse(text).ok_or_else(|| format!("'{text}' is not a sensitivity"))?;
        }
        modified.is_cancelled = exception.is_cancelled;
        exceptions.insert(
            original_start,
            Exception::Modified {
                data: Box::new(modified),
                change_key: seeded_change_key(random),
                last_modified: now,
            },
        );
    }
    let created = now.checked_sub(7.days().hours(0)).unwrap_or(now);
    Ok(StoredEvent {
        id: spec.id.clone().unwrap_or_else(|| random.item_id()),
        ical_uid: format!(
            "040000008200E00074C5B7101A82E0080000000{:016X}",
            random.next_u64()
        ),
        created,
        last_modified: created,
        change_key,
        data,
        recurrence,
        exceptions,
    })
}

/// The end of an event: `end` (a leading `+`/`-` is relative to the start), else `duration`,
/// else one hour (one day for all-day events).
fn end_of(
    start: DateTime,
    end: Option<&str>,
    duration: Option<&str>,
    all_day: bool,
    now: Timestamp,
    zone: &NamedZone,
) -> Result<DateTime, String> {
    let relative = |text: &str| -> Result<DateTime, String> {
        let offset = crate::timefmt::parse_offset(text)
            .ok_or_else(|| format!("'{text}' is not a duration such as +30m or +1d"))?;
        if all_day {
            // Whole days stay whole days in local time, whatever DST does.
            let days = offset.as_secs() / 86_400;
            return start
                .checked_add(days.days())
                .map_err(|error| error.to_string());
        }
        let zoned = localize(start, &zone.zone).map_err(|error| error.to_string())?;
        zoned
            .checked_add(offset)
            .map(|moved| moved.datetime())
            .map_err(|error| error.to_string())
    };
    let result = match (end, duration) {
        (Some(text), _) if text.trim_start().starts_with(['+', '-']) => relative(text.trim())?,
        (Some(text), _) => parse_expression(text, now, &zone.zone)
            .map_err(|error| error.to_string())?
            .datetime(),
        (None, Some(text)) => {
            parse_unsigned_duration(text.trim())
                .ok_or_else(|| format!("'{text}' is not a duration such as 30m or 1h30m"))?;
            relative(&format!("+{}", text.trim()))?
        }
        (None, None) => relative(if all_day { "+1d" } else { "+1h" })?,
    };
    if result < start {
        return Err("the end is before the start".to_string());
    }
    Ok(result)
}
