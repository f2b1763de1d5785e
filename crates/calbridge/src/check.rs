//! `calbridge check`: walks the path to Microsoft 365 one step at a time, like Microsoft's
//! connectivity analyzer, and stops at the first step that fails with the server's answer and
//! what to change.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use calbridge_domain::MailboxAddress;
use calbridge_sources_graph::{GraphError, GraphSource, SubjectFetch};
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
        let Some(graph_config) = &source.graph else {
            continue;
        };
        println!("source {}:", source.id);
        if let Err(message) =
            check_graph_source(&config, source, graph_config, args.user.as_deref()).await
        {
            failures += 1;
            println!("     → {message}");
        }
    }
    if failures > 0 {
        bail!("{failures} source(s) failed the check");
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
    let graph = GraphSource::new(
        graph_config,
        Arc::new(GraphClockAdapter(Arc::new(SystemClock))),
    )
    .map_err(|error| {
        step(false, "set-up", &error.to_string());
        "fix the [sources.graph] settings named above".to_string()
    })?;
    match graph.check_token().await {
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
            return Err("the steps after the token were not tried".to_string());
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
                "{} appointment(s) in the next {} h",
                appointments.len(),
                config.sync.window_hours
            ),
        ),
        Some(Err(error)) => {
            step(false, "calendar read", &error.to_string());
            return Err(advice(&error).to_string());
        }
        None => {
            step(false, "calendar read", "no answer for the mailbox");
            return Err(String::new());
        }
    }
    match &config.api.public_url {
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
            let client = calbridge_sources_graph::http::build_http_client(
                graph_config.extra_root_ca.as_deref(),
            )
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
        if let Some(group) = &entry.group_id {
            match graph.group_members(group).await {
                Ok(members) => {
                    step(
                        true,
                        "directory group",
                        &format!(
                            "group {group} has {} member(s) with a mailbox",
                            members.len()
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
