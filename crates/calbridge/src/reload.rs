//! Re-reading `calbridge.toml` while the service runs (SIGHUP, `calbridge reload`, `POST
//! /api/v1/reload`): what can change live is applied at once, what cannot is named as needing a
//! restart, and a file that does not parse changes nothing.
//!
//! Live: a source's client secret or certificate (the next token request uses it; a failing
//! credential's back-off ends), the `[[directory]]` entries and the files, groups and LDAP
//! directories they name (an LDAP bind password too)
//! (read again at every reload: people added and removed as on any directory change), and the `[presence]` rules, language and time zone (everyone decided anew
//! from the stored calendars). Everything else (listen address, store, sources added or removed,
//! endpoints, publishers, sync settings, `presence.show_subject`, which decides what is read)
//! keeps its running value until a restart, and the report says so.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use calbridge_domain::SourceId;
use calbridge_sources_graph::GraphCredential;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{Config, DirectoryConfig, SourceConfig};
use crate::hub::PresenceHub;
use crate::sync::ews::EwsSync;
use crate::sync::graph::GraphSync;

/// What a reload did. The directory is read again at every reload, so `applied` names it
/// whenever a source has entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changes in effect now, one line each.
    pub applied: Vec<String>,
    /// Changes that wait for a restart, one line each, naming the setting.
    pub needs_restart: Vec<String>,
}

impl ReloadReport {
    pub fn unchanged(&self) -> bool {
        self.applied.is_empty() && self.needs_restart.is_empty()
    }

    /// The report as lines for a terminal or a log.
    pub fn lines(&self) -> Vec<String> {
        if self.unchanged() {
            return vec!["nothing changed".to_string()];
        }
        self.applied
            .iter()
            .map(|line| format!("applied: {line}"))
            .chain(
                self.needs_restart
                    .iter()
                    .map(|line| format!("needs a restart: {line}")),
            )
            .collect()
    }
}

/// Holds the configuration in effect and the handles that take live changes.
pub struct Reloader {
    /// Set by `calbridge run` ([`Reloader::read_from`]); a service started from a
    /// configuration in memory (the demo, tests) has no file to read again.
    path: std::sync::OnceLock<PathBuf>,
    running: tokio::sync::Mutex<Running>,
    hub: Arc<PresenceHub>,
    graph: HashMap<SourceId, Arc<GraphSync>>,
    ews: HashMap<SourceId, Arc<EwsSync>>,
    directories: HashMap<SourceId, watch::Sender<Vec<DirectoryConfig>>>,
}

/// The configuration in effect, and the contents of each Graph source's certificate files
/// when they were loaded (a certificate renewed in place keeps its paths).
struct Running {
    config: Config,
    certificates: HashMap<SourceId, Option<Vec<u8>>>,
}

impl Reloader {
    pub fn new(
        config: Config,
        hub: Arc<PresenceHub>,
        graph: HashMap<SourceId, Arc<GraphSync>>,
        ews: HashMap<SourceId, Arc<EwsSync>>,
        directories: HashMap<SourceId, watch::Sender<Vec<DirectoryConfig>>>,
    ) -> Reloader {
        let certificates = certificate_contents(&config);
        Reloader {
            path: std::sync::OnceLock::new(),
            running: tokio::sync::Mutex::new(Running {
                config,
                certificates,
            }),
            hub,
            graph,
            ews,
            directories,
        }
    }

    /// Names the file the service was started from, which a reload reads again.
    pub fn read_from(&self, path: PathBuf) {
        let _ = self.path.set(path);
    }

    /// Reads the file again and applies what can be applied live. One reload at a time; an
    /// invalid file is an error and changes nothing.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let Some(path) = self.path.get() else {
            return Err(
                "this service was not started from a configuration file (`calbridge run --config FILE`), so there is nothing to read again"
                    .to_string(),
            );
        };
        let new = Config::load(path).map_err(|error| {
            format!(
                "{error}; nothing was changed, the service runs on with the configuration it has"
            )
        })?;
        let mut running = self.running.lock().await;
        let mut report = ReloadReport::default();
        let new_certificates = certificate_contents(&new);
        let mut effective = running.config.clone();
        let renewed = self.sources(
            &running,
            &new,
            &new_certificates,
            &mut effective,
            &mut report,
        );
        self.directory(&running.config, &new, &mut effective, &mut report);
        self.presence(&running.config, &new, &mut effective, &mut report)
            .await;
        let current = &running.config;
        for (section, old, now) in [
            ("[store]", debug(&current.store), debug(&new.store)),
            ("[api]", debug(&current.api), debug(&new.api)),
            ("[sync]", debug(&current.sync), debug(&new.sync)),
            ("[publish]", debug(&current.publish), debug(&new.publish)),
            ("[cluster]", debug(&current.cluster), debug(&new.cluster)),
            ("[rooms]", debug(&current.rooms), debug(&new.rooms)),
        ] {
            if old != now {
                report.needs_restart.push(format!("{section} changed"));
            }
        }
        // `[api] token` is a secret, which its Debug form hides.
        if secret_value(current.api.token.as_ref()) != secret_value(new.api.token.as_ref()) {
            report.needs_restart.push("[api] token changed".to_string());
        }
        // What waits for a restart keeps its running value, so the next reload names it again.
        running.config = effective;
        for id in renewed {
            let contents = new_certificates.get(&id).cloned().flatten();
            running.certificates.insert(id, contents);
        }
        for line in report.lines() {
            tracing::info!(file = %path.display(), "reload: {line}");
        }
        Ok(report)
    }

    fn sources(
        &self,
        running: &Running,
        new: &Config,
        new_certificates: &HashMap<SourceId, Option<Vec<u8>>>,
        effective: &mut Config,
        report: &mut ReloadReport,
    ) -> Vec<SourceId> {
        let mut renewed = Vec::new();
        let old: BTreeMap<&SourceId, &SourceConfig> =
            running.config.sources.iter().map(|s| (&s.id, s)).collect();
        let now: BTreeMap<&SourceId, &SourceConfig> =
            new.sources.iter().map(|s| (&s.id, s)).collect();
        for id in now.keys().filter(|id| !old.contains_key(*id)) {
            report
                .needs_restart
                .push(format!("[[sources]] `{id}` was added"));
        }
        for id in old.keys().filter(|id| !now.contains_key(*id)) {
            report
                .needs_restart
                .push(format!("[[sources]] `{id}` was removed"));
        }
        for source in &mut effective.sources {
            let id = source.id.clone();
            let (Some(before), Some(after)) = (old.get(&id), now.get(&id)) else {
                continue;
            };
            match (&before.graph, &after.graph, &before.ews, &after.ews) {
                (Some(was), Some(is), _, _) => {
                    let mut rest = is.clone();
                    rest.credential = was.credential.clone();
                    if debug(&rest) != debug(was)
                        || before.secret_expires_on != after.secret_expires_on
                    {
                        report.needs_restart.push(format!(
                            "[sources.graph] of `{id}`: settings other than the credential changed"
                        ));
                    }
                    let changed = credential_changed(&was.credential, &is.credential)
                        || running.certificates.get(&id) != new_certificates.get(&id);
                    if !changed {
                        continue;
                    }
                    let taken = match self.graph.get(&id) {
                        Some(sync) => sync
                            .source
                            .graph
                            .replace_credential(&is.credential)
                            // Whoever failed (with the old credential, most likely) is tried
                            // again now rather than after their back-off.
                            .map(|()| sync.retry_failed_now())
                            .map_err(|error| error.to_string()),
                        None => Err("the source does not run".to_string()),
                    };
                    match taken {
                        Ok(retried) => {
                            report.applied.push(format!(
                                "[sources.graph] of `{id}`: the new {} is used from the next token request{}",
                                credential_kind(&is.credential),
                                if retried > 0 {
                                    format!(
                                        "; {} that failed tried again now",
                                        crate::counted(retried, "person", "people")
                                    )
                                } else {
                                    String::new()
                                }
                            ));
                            if let Some(graph) = &mut source.graph {
                                graph.credential = is.credential.clone();
                            }
                            renewed.push(id.clone());
                        }
                        Err(error) => report.needs_restart.push(format!(
                            "[sources.graph] of `{id}`: the new credential was not taken ({error}); the old one stays in use"
                        )),
                    }
                }
                (_, _, Some(was), Some(is)) => {
                    let mut rest = is.clone();
                    rest.password = was.password.clone();
                    if debug(&rest) != debug(was) {
                        report.needs_restart.push(format!(
                            "[sources.ews] of `{id}`: settings other than the password changed"
                        ));
                    }
                    if secret_value(was.password.as_ref()) == secret_value(is.password.as_ref()) {
                        continue;
                    }
                    let taken: Result<(), String> = match (self.ews.get(&id), &is.password) {
                        (Some(_sync), Some(_password)) => {
                            Err("EWS takes a new password at a restart".to_string())
                        }
                        (Some(_), None) => Err("the new file has no password".to_string()),
                        (None, _) => Err("the source does not run".to_string()),
                    };
                    match taken {
                        Ok(()) => {
                            report.applied.push(format!(
                                "[sources.ews] of `{id}`: the new password is used from the next logon"
                            ));
                            if let Some(ews) = &mut source.ews {
                                ews.password = is.password.clone();
                            }
                        }
                        Err(error) => report.needs_restart.push(format!(
                            "[sources.ews] of `{id}`: the new password was not taken ({error}); the old one stays in use"
                        )),
                    }
                }
                _ => report
                    .needs_restart
                    .push(format!("[[sources]] `{id}` changed its kind (graph / ews)")),
            }
        }
        renewed
    }

    fn directory(
        &self,
        current: &Config,
        new: &Config,
        effective: &mut Config,
        report: &mut ReloadReport,
    ) {
        let of = |config: &Config, id: &SourceId| -> Vec<DirectoryConfig> {
            config
                .directory
                .iter()
                .filter(|entry| &entry.source == id)
                .cloned()
                .collect()
        };
        // Every source's files and groups are read again, changed entries or not: a reload is
        // also how an administrator says "I changed the people file, take it now".
        let mut ids: Vec<&SourceId> = self.directories.keys().collect();
        ids.sort();
        for id in ids {
            let (was, is) = (of(current, id), of(new, id));
            // An LDAP bind password is a secret, which the Debug form hides.
            let passwords = |entries: &[DirectoryConfig]| -> Vec<Option<String>> {
                entries
                    .iter()
                    .map(|entry| {
                        let ldap = entry.ldap.as_ref()?;
                        secret_value(ldap.password.as_ref()).map(str::to_string)
                    })
                    .collect()
            };
            let changed = debug(&was) != debug(&is) || passwords(&was) != passwords(&is);
            let n = is.len();
            if n == 0 && !changed {
                continue;
            }
            if let Some(sender) = self.directories.get(id) {
                sender.send_replace(is);
            }
            report.applied.push(format!(
                "[[directory]] of source `{id}`: {n} {} read again{}",
                if n == 1 { "entry" } else { "entries" },
                if changed {
                    " (the entries changed)"
                } else {
                    ""
                }
            ));
        }
        // Entries for a source that does not run start with it, at the restart.
        let mut waiting = Vec::new();
        for entry in &new.directory {
            if !self.directories.contains_key(&entry.source) && !waiting.contains(&&entry.source) {
                waiting.push(&entry.source);
                report.needs_restart.push(format!(
                    "[[directory]] for source `{}`, which does not run yet",
                    entry.source
                ));
            }
        }
        effective.directory = new
            .directory
            .iter()
            .filter(|entry| self.directories.contains_key(&entry.source))
            .cloned()
            .collect();
    }

    async fn presence(
        &self,
        current: &Config,
        new: &Config,
        effective: &mut Config,
        report: &mut ReloadReport,
    ) {
        if current.presence.show_subject != new.presence.show_subject {
            report.needs_restart.push(
                "[presence] show_subject changed (it decides whether subjects are read)"
                    .to_string(),
            );
        }
        let mut rest = new.presence.clone();
        rest.show_subject = current.presence.show_subject;
        if debug(&rest) == debug(&current.presence) {
            return;
        }
        let decided = self
            .hub
            .set_rules(new.presence.rules(), new.presence.locale())
            .await;
        report.applied.push(format!(
            "[presence]: new rules, language and time zone; {decided} {} decided anew",
            if decided == 1 { "person" } else { "people" }
        ));
        effective.presence = rest;
    }
}

/// The contents of every Graph source's certificate and key files (`None` for a secret, or
/// a file that cannot be read: loading it will say why).
fn certificate_contents(config: &Config) -> HashMap<SourceId, Option<Vec<u8>>> {
    config
        .sources
        .iter()
        .filter_map(|source| {
            let graph = source.graph.as_ref()?;
            let GraphCredential::Certificate {
                certificate_pem,
                private_key_pem,
            } = &graph.credential
            else {
                return Some((source.id.clone(), None));
            };
            let contents = std::fs::read(certificate_pem)
                .and_then(|mut bytes| {
                    bytes.extend(std::fs::read(private_key_pem)?);
                    Ok(bytes)
                })
                .ok();
            Some((source.id.clone(), contents))
        })
        .collect()
}

/// A configuration section's Debug form: secrets print as `<redacted>`, so two sections that
/// differ only in a secret compare equal here, and the secrets are compared on their own.
fn debug(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}")
}

fn secret_value(secret: Option<&calbridge_domain::Secret>) -> Option<&str> {
    secret.map(|secret| secret.expose())
}

fn credential_kind(credential: &GraphCredential) -> &'static str {
    match credential {
        GraphCredential::ClientSecret(_) => "client secret",
        GraphCredential::Certificate { .. } => "certificate",
        GraphCredential::None => "no credential",
    }
}

/// A secret whose value changed, or a certificate whose file paths changed (changed contents
/// at the same paths are compared by the caller).
fn credential_changed(was: &GraphCredential, is: &GraphCredential) -> bool {
    match (was, is) {
        (GraphCredential::ClientSecret(a), GraphCredential::ClientSecret(b)) => {
            a.expose() != b.expose()
        }
        (
            GraphCredential::Certificate {
                certificate_pem: cert_a,
                private_key_pem: key_a,
            },
            GraphCredential::Certificate {
                certificate_pem: cert_b,
                private_key_pem: key_b,
            },
        ) => cert_a != cert_b || key_a != key_b,
        (GraphCredential::None, GraphCredential::None) => false,
        _ => true,
    }
}
