//! `calbridge check`: walks the path to Microsoft 365 (Graph) or to Exchange on premises (EWS)
//! one step at a time, like Microsoft's connectivity analyzer, and stops at the first step that
//! fails with the server's answer and what to change.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use calbridge_domain::MailboxAddress;
use calbridge_sources_ews::{
    EwsError, EwsSource, EwsSourceConfig, LogonProbe, StreamEvent, WindowRead,
};
use calbridge_sources_graph::{GraphAuth, GraphError, GraphSource, SubjectFetch};
use jiff::{SignedDuration, Timestamp};

use crate::clock::{GraphClockAdapter, SystemClock};
use crate::config::Config;
use crate::directory;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(long, default_value = "calbridge.toml")]
    pub config: PathBuf,
    /// The mailbox to try; default: the first person of the source's directory.
    #[arg(long)]
    pub user: Option<String>,
    /// Also print the log (requests, retries) on stderr; the step report alone by default.
    #[arg(long)]
    pub verbose: bool,
}

/// One line of the report.
fn step(ok: bool, name: &str, detail: &str) {
    println!("{} {name}: {detail}", if ok { "ok  " } else { "FAIL" });
}

/// Advice for Graph failures beyond what the error itself says.
fn advice(error: &GraphError) -> &'static str {
    match error {
        GraphError::NotFound { .. } => {
            "no such mailbox in the tenant: check the address, or whether it is only an alias (calbridge also searches proxyAddresses)"
        }
        GraphError::Forbidden { .. } | GraphError::Unauthorized { .. } => {
            "grant the app the application permissions Calendars.Read and User.Read.All in Entra ID → App registrations → API permissions, then 'Grant admin consent'"
        }
        GraphError::Network { .. } => {
            "check DNS, the firewall and any proxy between this machine and graph.microsoft.com (HTTPS, port 443)"
        }
        GraphError::Throttled { .. } => "Graph is throttling this app: try again in a few minutes",
        _ => "",
    }
}

pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    step(
        true,
        "configuration",
        &format!("{} is valid", args.config.display()),
    );
    if config.sources.is_empty() {
        bail!("no [[sources]] to check");
    }
    let mut failures = 0;
    for source in &config.sources {
        let outcome = if let Some(graph_config) = &source.graph {
            println!("source {}:", source.id);
            check_graph_source(&config, source, graph_config, args.user.as_deref()).await
        } else if let Some(ews_config) = &source.ews {
            println!("source {} (Exchange Web Services):", source.id);
            check_ews_source(&config, source, ews_config, args.user.as_deref()).await
        } else {
            continue;
        };
        if let Err(message) = outcome {
            failures += 1;
            println!("     → {message}");
        }
    }
    if failures > 0 {
        bail!(
            "{} failed the check",
            crate::counted(failures, "source", "sources")
        );
    }
    println!("all checks passed");
    Ok(())
}

async fn check_graph_source(
    config: &Config,
    source: &crate::config::SourceConfig,
    graph_config: &calbridge_sources_graph::GraphSourceConfig,
    user: Option<&str>,
) -> Result<(), String> {
    let clock = Arc::new(GraphClockAdapter(Arc::new(SystemClock)));
    let delegated = graph_config.auth == GraphAuth::Delegated;
    // A delegated source's sign-in is in the store; held open until the check ends, so a
    // rotated refresh token is saved.
    let mut _opened_store = None;
    let built = if delegated {
        let opened = crate::service::open_store_for_command(config)
            .await
            .map_err(|error| {
                step(false, "sign-in", &format!("the store with the account's sign-in cannot be opened: {error:#}"));
                "while `calbridge run` holds an SQLite store, the admin page shows the sign-in state".to_string()
            })?;
        let keeper = crate::sign_in::StoreKeeper::load(opened.store(), &source.id.0)
            .await
            .map_err(|error| {
                step(false, "sign-in", &format!("{error:#}"));
                String::new()
            })?;
        _opened_store = Some(opened);
        GraphSource::delegated(graph_config, clock, Default::default(), keeper)
    } else {
        GraphSource::new(graph_config, clock)
    };
    let graph = built.map_err(|error| {
        step(false, "set-up", &error.to_string());
        "fix the [sources.graph] settings named above".to_string()
    })?;
    match graph.check_token().await {
        Ok(()) if delegated => step(
            true,
            "token",
            &format!(
                "Entra ID refreshed the signed-in account's delegated token for app {} in tenant {}",
                graph_config.client_id, graph_config.tenant_id
            ),
        ),
        Ok(()) => step(
            true,
            "token",
            &format!(
                "Entra ID issued an app-only token for app {} in tenant {}",
                graph_config.client_id, graph_config.tenant_id
            ),
        ),
        Err(error) => {
            step(false, "token", &error.to_string());
            return Err(if error.needs_sign_in() {
                format!("sign in again: `calbridge login --source {}` (device code) or \"Sign in with Microsoft\" on the admin page; then the steps after the token are tried", source.id)
            } else {
                "the steps after the token were not tried".to_string()
            });
        }
    }
    if let Some(warning) =
        crate::api::secret_warning(source.secret_expires_on, Timestamp::now(), &source.id)
    {
        println!("warn secret: {warning}");
    }
    let address = match user {
        Some(raw) => MailboxAddress::parse(raw).map_err(|error| {
            step(false, "user", &error.to_string());
            "give --user as name@domain".to_string()
        })?,
        None => first_directory_person(config, source, &graph).await?,
    };
    let resolved = match graph.resolve_user(&address).await {
        Ok(user) => {
            step(
                true,
                "user lookup",
                &format!("{address} is {} (id {})", user.primary_smtp, user.id),
            );
            user
        }
        Err(error) => {
            step(false, "user lookup", &error.to_string());
            return Err(advice(&error).to_string());
        }
    };
    let now = Timestamp::now();
    let end = now
        .checked_add(SignedDuration::from_hours(i64::from(
            config.sync.window_hours,
        )))
        .unwrap_or(now);
    let subjects = if config.presence.show_subject {
        SubjectFetch::Fetch
    } else {
        SubjectFetch::Skip
    };
    let people = [((), resolved.id.clone())];
    let read = graph.read_windows(&people, now, end, subjects).await;
    match read.into_iter().next().map(|(_, result)| result) {
        Some(Ok(appointments)) => step(
            true,
            "calendar read",
            &format!(
                "{} in the next {} h",
                crate::counted(appointments.len(), "appointment", "appointments"),
                config.sync.window_hours
            ),
        ),
        Some(Err(error)) => {
            step(false, "calendar read", &error.to_string());
            if delegated
                && matches!(
                    error,
                    GraphError::NotShared { .. }
                        | GraphError::AccessDenied { .. }
                        | GraphError::Forbidden { .. }
                )
            {
                return Err(format!("{address} has not shared their calendar with the signed-in account: in Outlook they share it (Calendar → Share → the account, \"Can view all details\"), or an administrator runs Add-MailboxFolderPermission {address}:\\Calendar -User <account> -AccessRights Reviewer"));
            }
            return Err(advice(&error).to_string());
        }
        None => {
            step(false, "calendar read", "no answer for the mailbox");
            return Err(String::new());
        }
    }
    match &config.api.public_url {
        _ if delegated => step(
            true,
            "notifications",
            &format!(
                "delegated: Graph offers no change notifications for calendars shared with an account, so changes are read by delta polling every {} s",
                config.sync.poll_interval_seconds
            ),
        ),
        None => step(
            true,
            "notifications",
            &format!(
                "no api.public_url: changes are read by delta polling every {} s",
                config.sync.poll_interval_seconds
            ),
        ),
        Some(public_url) => {
            let url = format!(
                "{}/notifications/graph/{}?validationToken=calbridge-check",
                public_url.trim_end_matches('/'),
                source.id
            );
            let client = calbridge_net::build_http_client(graph_config.extra_root_ca.as_deref())
                .map_err(|error| error.to_string())?;
            match client.post(&url).send().await {
                Ok(response) if response.status().is_success() => {
                    let body = response.text().await.unwrap_or_default();
                    if body == "calbridge-check" {
                        step(
                            true,
                            "notification URL",
                            &format!("{url} answers the validation handshake"),
                        );
                    } else {
                        step(
                            false,
                            "notification URL",
                            &format!(
                                "{url} answered, but not with the validation token (got `{}`)",
                                body.chars().take(80).collect::<String>()
                            ),
                        );
                        return Err("api.public_url must lead to this calbridge (check the reverse proxy's path)".to_string());
                    }
                }
                Ok(response) => {
                    step(
                        false,
                        "notification URL",
                        &format!("{url} answered HTTP {}", response.status()),
                    );
                    return Err("api.public_url must lead to a running calbridge (start it with `calbridge run`)".to_string());
                }
                Err(error) => {
                    step(
                        false,
                        "notification URL",
                        &format!("{url} cannot be reached: {error}"),
                    );
                    return Err("Graph must reach api.public_url over HTTPS from the internet; start calbridge and check DNS, firewall and reverse proxy".to_string());
                }
            }
        }
    }
    Ok(())
}

/// Reports what a directory's `rooms` entry (`kind`) listed through `lister`; the first room,
/// if there is one, is whose calendar the check reads.
fn first_room(
    kind: &str,
    lister: &str,
    rooms: Vec<calbridge_domain::RoomInfo>,
) -> Option<MailboxAddress> {
    if rooms.is_empty() {
        step(
            false,
            "directory rooms",
            &format!(
                "{lister} lists no rooms for {kind}: rooms appear there once they are in a room list (New-DistributionGroup -RoomList, Add-DistributionGroupMember)"
            ),
        );
        return None;
    }
    step(
        true,
        "directory rooms",
        &format!(
            "{kind} lists {}",
            crate::counted(rooms.len(), "room", "rooms")
        ),
    );
    rooms.into_iter().next().map(|room| room.address)
}

async fn first_directory_person(
    config: &Config,
    source: &crate::config::SourceConfig,
    graph: &GraphSource,
) -> Result<MailboxAddress, String> {
    for entry in config
        .directory
        .iter()
        .filter(|entry| entry.source == source.id)
    {
        if let Some(path) = &entry.file {
            match directory::read_file(path) {
                Ok(listing) => {
                    if let Some(person) = listing.people.into_iter().next() {
                        return Ok(person.address);
                    }
                }
                Err(error) => {
                    step(false, "directory", &error.to_string());
                    return Err("fix the directory file or pass --user".to_string());
                }
            }
        }
        if let Some(ldap) = &entry.ldap {
            if let Some(person) = ldap_directory_person(ldap).await? {
                return Ok(person.address);
            }
        }
        if entry.rooms.is_some() {
            let list = entry.room_list()?;
            match graph.rooms(list.as_ref()).await {
                Ok(rooms) => {
                    if let Some(room) = first_room(&entry.kind(), "Graph's places API", rooms) {
                        return Ok(room);
                    }
                }
                Err(error) => {
                    step(false, "directory rooms", &error.to_string());
                    return Err(
                        "grant Place.Read.All with admin consent, or pass --user".to_string()
                    );
                }
            }
        }
        if let Some(group) = &entry.group_id {
            match graph.group_members(group).await {
                Ok(members) => {
                    step(
                        true,
                        "directory group",
                        &format!(
                            "group {group} has {} with a mailbox",
                            crate::counted(members.len(), "member", "members")
                        ),
                    );
                    if let Some(member) = members.into_iter().next() {
                        return Ok(member.primary_smtp);
                    }
                }
                Err(error) => {
                    step(false, "directory group", &error.to_string());
                    return Err("grant GroupMember.Read.All or Group.Read.All with admin consent, or pass --user".to_string());
                }
            }
        }
    }
    step(false, "user", "the directory of this source is empty");
    Err("pass --user someone@example.com".to_string())
}

/// Reads an LDAP directory as the service would and says how many people it lists; the
/// first person, if any.
async fn ldap_directory_person(
    ldap: &crate::directory::ldap::LdapConfig,
) -> Result<Option<crate::directory::DirectoryPerson>, String> {
    match crate::directory::ldap::read(ldap).await {
        Ok(listing) => {
            let mut found = format!(
                "{} lists {}",
                ldap.describe(),
                crate::counted(listing.people.len(), "person", "people")
            );
            for problem in &listing.problems {
                found.push_str(&format!("; {problem}"));
            }
            step(true, "directory LDAP", &found);
            Ok(listing.people.into_iter().next())
        }
        Err(error) => {
            step(false, "directory LDAP", &error.to_string());
            Err("fix [directory.ldap] as the message says, or pass --user".to_string())
        }
    }
}

/// Advice for EWS failures beyond what the error itself says.
fn ews_advice(error: &EwsError, config: &EwsSourceConfig) -> String {
    match error {
        EwsError::Config(_) => "fix the [sources.ews] settings named above".to_string(),
        EwsError::Unauthorized { .. } => format!(
            "check the service account '{}' and its password in [sources.ews] (auth = \"{}\"; NTLM accepts user@domain or DOMAIN\\user). Do not retry over and over: every failed logon counts towards the account lockout threshold of Active Directory",
            config.user,
            config.auth.as_str()
        ),
        EwsError::ImpersonationDenied { .. } => format!(
            "grant '{}' the ApplicationImpersonation role (New-ManagementRoleAssignment -Name calbridge -Role ApplicationImpersonation -User {}), or set access = \"delegate\" and give it Reviewer rights on each calendar (Add-MailboxFolderPermission <user>:\\Calendar -User {} -AccessRights Reviewer)",
            config.user, config.user, config.user
        ),
        EwsError::AccessDenied { mailbox, .. } => format!(
            "give '{}' Reviewer rights on the calendar: Add-MailboxFolderPermission {mailbox}:\\Calendar -User {} -AccessRights Reviewer (or use access = \"impersonation\" with the ApplicationImpersonation role)",
            config.user, config.user
        ),
        EwsError::NonExistentMailbox { .. } => {
            "check the address in the directory (or --user); when Exchange knows the person under another address, list the alternatives separated by `;` (name@example.com;n.ame@example.com)".to_string()
        }
        EwsError::Autodiscover { .. } => {
            "set `autodiscover_url` (https://autodiscover.example.com/autodiscover/autodiscover.xml) or a direct `ews_url` (https://mail.example.com/EWS/Exchange.asmx) in [sources.ews]".to_string()
        }
        EwsError::Network { .. } => {
            "check DNS, the firewall and any proxy between this machine and Exchange; for a certificate from an internal CA set `extra_root_ca`".to_string()
        }
        EwsError::ServerBusy { .. } => {
            "Exchange is throttling this account: try again in a few minutes, or give the service account a throttling policy with higher limits".to_string()
        }
        EwsError::ExceededSubscriptionCount { .. } => {
            "remove stale subscriptions of other applications, or raise EwsMaxSubscriptions in the service account's throttling policy".to_string()
        }
        EwsError::ExceededConnectionCount { .. } => {
            "use access = \"impersonation\" so that each group's streaming connection is charged to its anchor mailbox, or raise HangingConnectionLimit in the EWS web.config; meanwhile the service polls the mailboxes it cannot stream".to_string()
        }
        EwsError::UnknownRoomList { .. } => {
            "list the room lists with Get-DistributionGroup -RecipientTypeDetails RoomList and put one's address in [[directory]] rooms, or use rooms = \"all\"".to_string()
        }
        EwsError::DeclineRefused { mailbox, .. } => format!(
            "grant '{}' the ApplicationImpersonation role and use access = \"impersonation\", or FullAccess on the room: Add-MailboxPermission {mailbox} -User {} -AccessRights FullAccess",
            config.user, config.user
        ),
        EwsError::MeetingNotFound { .. } => {
            "nothing to do: the meeting was deleted, moved or declined already".to_string()
        }
        EwsError::BadAnswer { .. } => {
            "check that the URL is Exchange's EWS endpoint (…/EWS/Exchange.asmx); `protocol_log = true` logs the exchange (credentials redacted)".to_string()
        }
        EwsError::AnswerTooLarge { .. } => {
            "check that the URL is Exchange's EWS or Autodiscover endpoint and that no proxy answers in its place; `protocol_log = true` logs the exchange (credentials redacted)".to_string()
        }
    }
}

/// What to say after Exchange refused an NTLM logon that carried a channel binding.
///
/// Since Exchange 2019 CU14, Extended Protection is on by default, and IIS answers a channel
/// binding it refuses with the same plain 401 as a wrong password: nothing in the answer tells
/// them apart. calbridge binds its logons to the certificate it sees, so a refused binding
/// almost always means that certificate is not Exchange's own: a TLS-terminating load
/// balancer, reverse proxy or TLS-inspecting firewall sits in between. One more logon, without
/// the binding, tells the cases apart as far as they can be told from outside:
/// - accepted: the password is right and Extended Protection (`Allow`) refused the binding;
/// - refused: a wrong password, or `Require` with a binding that cannot match; both are named,
///   with the certificate calbridge saw, so that an administrator can compare it with the one
///   `Get-ExchangeCertificate` shows for IIS, and IIS's log tells them apart.
///
/// The extra logon costs one more failed attempt towards the account lockout threshold when
/// the password is wrong; the check runs once, by hand, so that is one attempt, and it is
/// the difference between "check the password" and the actual cause.
async fn explain_refused_ntlm_logon(
    ews: &EwsSource,
    error: &EwsError,
    config: &EwsSourceConfig,
    thumbprint: &str,
) -> String {
    match ews.probe_ntlm_without_channel_binding().await {
        Ok(LogonProbe::Accepted) => {
            step(
                false,
                "Extended Protection",
                &format!(
                    "Exchange accepted '{}' without a channel binding but refused the one calbridge sent for the TLS certificate it was shown (thumbprint {thumbprint}): that is not the certificate of Exchange's IIS site",
                    config.user
                ),
            );
            format!(
                "Extended Protection is on: a TLS-terminating load balancer, reverse proxy or TLS-inspecting firewall between calbridge and Exchange shows calbridge its own certificate (thumbprint {thumbprint}), which breaks channel binding. Point ews_url (or Autodiscover) at Exchange directly or through a load balancer that passes TLS through, or let the proxy present Exchange's own certificate (compare with Get-ExchangeCertificate); Microsoft's \"Configure Windows Extended Protection in Exchange Server\" lists SSL offloading as unsupported with Extended Protection. Turning Extended Protection off for EWS is the last resort"
            )
        }
        Ok(LogonProbe::Refused) => format!(
            "{}. If the password is right, Extended Protection may be refusing the channel binding: Exchange 2019 CU14 and later check it by default, and a TLS-terminating load balancer or proxy in front of Exchange shows calbridge another certificate than Exchange's (calbridge saw thumbprint {thumbprint}; Get-ExchangeCertificate shows the one bound to IIS). Exchange answers both with the same 401; the IIS log of the refused request tells them apart (SEC_E_BAD_BINDINGS for a refused binding)",
            ews_advice(error, config)
        ),
        Ok(LogonProbe::NotNtlm) | Err(_) => ews_advice(error, config),
    }
}

/// Names the step an error belongs to: credential errors are the sign-in's, whatever
/// operation met them.
fn ews_step_failed(default_step: &str, error: &EwsError) {
    let name = match error {
        EwsError::Unauthorized { .. } => "sign-in",
        EwsError::Autodiscover { .. } => "Autodiscover",
        _ => default_step,
    };
    step(false, name, &error.to_string());
}

async fn check_ews_source(
    config: &Config,
    source: &crate::config::SourceConfig,
    ews_config: &EwsSourceConfig,
    user: Option<&str>,
) -> Result<(), String> {
    let ews = EwsSource::new(ews_config.clone()).map_err(|error| {
        step(false, "set-up", &error.to_string());
        ews_advice(&error, ews_config)
    })?;
    let ews = Arc::new(ews);

    // Where EWS lives: the configured URL or Autodiscover's answer.
    match ews.ews_url().await {
        Ok(url) => match ews.discovered().await {
            Some(found) => step(
                true,
                "Autodiscover",
                &format!(
                    "{} answered: EWS at {url} (internal {}, external {}; using the {} one)",
                    found.answered_by,
                    found
                        .internal
                        .as_ref()
                        .map_or("none".to_string(), ToString::to_string),
                    found
                        .external
                        .as_ref()
                        .map_or("none".to_string(), ToString::to_string),
                    match ews_config.server {
                        calbridge_sources_ews::ServerSide::External => "external",
                        calbridge_sources_ews::ServerSide::Internal => "internal",
                    }
                ),
            ),
            None => step(
                true,
                "EWS URL",
                &format!("{url} (ews_url, no Autodiscover)"),
            ),
        },
        Err(error) => {
            ews_step_failed("Autodiscover", &error);
            return Err(ews_advice(&error, ews_config));
        }
    }

    // Sign-in and user lookup: ResolveNames needs an authenticated account.
    let candidates: Vec<String> = match user {
        Some(raw) => vec![raw.to_string()],
        None => first_ews_directory_person(config, source, &ews).await?,
    };
    let shown = candidates.join(";");
    let mailbox = match ews.resolve_names(&candidates).await {
        Ok(mailbox) => {
            step(
                true,
                "sign-in",
                &format!(
                    "Exchange accepted '{}' ({}, {})",
                    ews_config.user,
                    ews_config.auth.as_str(),
                    match ews_config.access {
                        calbridge_sources_ews::MailboxAccess::Impersonation => "impersonation",
                        calbridge_sources_ews::MailboxAccess::Delegate => "delegate access",
                    }
                ),
            );
            step(
                true,
                "user lookup",
                &format!("{shown} resolves to {mailbox} (ResolveNames)"),
            );
            mailbox
        }
        Err(error) => {
            ews_step_failed("user lookup", &error);
            if let EwsError::Unauthorized {
                bound_to: Some(thumbprint),
                ..
            } = &error
            {
                return Err(explain_refused_ntlm_logon(&ews, &error, ews_config, thumbprint).await);
            }
            return Err(ews_advice(&error, ews_config));
        }
    };

    let now = Timestamp::now();
    let end = now
        .checked_add(SignedDuration::from_hours(i64::from(
            config.sync.window_hours,
        )))
        .unwrap_or(now);
    let read = match ews_config.read {
        WindowRead::CalendarView => ews
            .read_window(&mailbox, now, end)
            .await
            .map(|appointments| (appointments.len(), "FindItem, CalendarView")),
        WindowRead::FreeBusy => ews
            .free_busy_batch(std::slice::from_ref(&mailbox), now, end)
            .await
            .and_then(
                |mut answers| match answers.pop().map(|answer| answer.busy) {
                    Some(Ok(periods)) => Ok((periods.len(), "GetUserAvailability, FreeBusy view")),
                    Some(Err(code)) => Err(EwsError::BadAnswer {
                        what: format!("GetUserAvailability for {mailbox}"),
                        detail: code,
                    }),
                    None => Err(EwsError::BadAnswer {
                        what: format!("GetUserAvailability for {mailbox}"),
                        detail: "no answer for the mailbox".to_string(),
                    }),
                },
            ),
    };
    match read {
        Ok((count, how)) => step(
            true,
            "calendar read",
            &format!(
                "{} of {mailbox} in the next {} h ({how})",
                crate::counted(count, "appointment", "appointments"),
                config.sync.window_hours
            ),
        ),
        Err(error) => {
            ews_step_failed("calendar read", &error);
            return Err(ews_advice(&error, ews_config));
        }
    }

    // Streaming: Subscribe, open GetStreamingEvents until Exchange confirms, Unsubscribe.
    let subscription = match ews.subscribe(&mailbox).await {
        Ok(subscription) => subscription,
        Err(error) => {
            ews_step_failed("streaming subscription", &error);
            return Err(ews_advice(&error, ews_config));
        }
    };
    let outcome = open_stream(&ews, &mailbox, &subscription).await;
    let ended = ews.unsubscribe(&mailbox, &subscription).await;
    match outcome {
        Ok(()) => {}
        Err(error) => {
            ews_step_failed("streaming subscription", &error);
            return Err(ews_advice(&error, ews_config));
        }
    }
    match ended {
        Ok(()) => step(
            true,
            "streaming subscription",
            &format!(
                "Subscribe, GetStreamingEvents (connection status OK) and Unsubscribe work for {mailbox}"
            ),
        ),
        Err(error) => {
            ews_step_failed("streaming subscription", &error);
            return Err(ews_advice(&error, ews_config));
        }
    }
    Ok(())
}

/// Opens one streaming connection for `subscription` and waits until Exchange says it is open.
async fn open_stream(
    ews: &Arc<EwsSource>,
    mailbox: &MailboxAddress,
    subscription: &calbridge_sources_ews::SubscriptionId,
) -> Result<(), EwsError> {
    let mut connection = ews.stream(
        vec![(subscription.clone(), mailbox.clone())],
        std::time::Duration::from_secs(60),
    )?;
    let patience = std::time::Duration::from_secs(15);
    let waited = tokio::time::timeout(patience, async {
        loop {
            match connection.next().await {
                Some(StreamEvent::Connected { .. }) => return Ok(()),
                Some(StreamEvent::Error(error)) => return Err(error),
                Some(StreamEvent::SubscriptionsLost(_)) => {
                    return Err(EwsError::BadAnswer {
                        what: "GetStreamingEvents".to_string(),
                        detail: "Exchange no longer knows the subscription it just issued"
                            .to_string(),
                    })
                }
                Some(StreamEvent::Changed(_)) | Some(StreamEvent::ConnectionClosed) => continue,
                None => {
                    return Err(EwsError::BadAnswer {
                        what: "GetStreamingEvents".to_string(),
                        detail: "the streaming connection ended before it opened".to_string(),
                    })
                }
            }
        }
    })
    .await;
    connection.close();
    match waited {
        Ok(result) => result,
        Err(_) => Err(EwsError::BadAnswer {
            what: "GetStreamingEvents".to_string(),
            detail: format!(
                "no ConnectionStatus within {} s (a proxy that buffers chunked responses breaks streaming)",
                patience.as_secs()
            ),
        }),
    }
}

/// The first person of the source's directory (a file, LDAP or its rooms) with their further
/// addresses.
async fn first_ews_directory_person(
    config: &Config,
    source: &crate::config::SourceConfig,
    ews: &EwsSource,
) -> Result<Vec<String>, String> {
    for entry in config
        .directory
        .iter()
        .filter(|entry| entry.source == source.id)
    {
        if let Some(path) = &entry.file {
            match directory::read_file(path) {
                Ok(listing) => {
                    if let Some(person) = listing.people.into_iter().next() {
                        let mut candidates = vec![person.address.to_string()];
                        candidates.extend(person.alternates);
                        return Ok(candidates);
                    }
                }
                Err(error) => {
                    step(false, "directory", &error.to_string());
                    return Err("fix the directory file or pass --user".to_string());
                }
            }
        }
        if let Some(ldap) = &entry.ldap {
            if let Some(person) = ldap_directory_person(ldap).await? {
                let mut candidates = vec![person.address.to_string()];
                candidates.extend(person.alternates);
                return Ok(candidates);
            }
        }
        if entry.rooms.is_some() {
            let list = entry.room_list()?;
            match ews.rooms(list.as_ref()).await {
                Ok(rooms) => {
                    if let Some(room) = first_room(&entry.kind(), "Exchange's GetRoomLists", rooms)
                    {
                        return Ok(vec![room.to_string()]);
                    }
                }
                Err(error) => {
                    step(false, "directory rooms", &error.to_string());
                    return Err(ews_advice(&error, ews.config()));
                }
            }
        }
        if entry.group_id.is_some() {
            step(
                false,
                "directory",
                "an EWS source cannot read an Entra ID group",
            );
            return Err("list the people of an EWS source in a directory file (`file = \"people.csv\"`), or pass --user".to_string());
        }
    }
    step(false, "user", "the directory of this source is empty");
    Err("pass --user someone@example.com".to_string())
}
