//! `calbridge bench --directory ldap`: an LDAP directory of `--users` people (50,000 by
//! default) in an OpenLDAP `slapd` of the benchmark's own ([`super::slapd`]: loopback, StartTLS,
//! a server size limit of 500), read in pages and applied to an SQLite store as the service
//! applies it; then read again unchanged, which must write nothing to the store. Prints the
//! time of each step; asserts nothing about it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use calbridge_domain::{Secret, SourceId};
use calbridge_store::{SecretKey, SqliteStore, Store};

use super::slapd::{self, TestSlapd};
use crate::clock::{Clock, SystemClock};
use crate::config::DirectoryConfig;
use crate::directory::ldap::LdapConfig;
use crate::service::{apply_directory_once, DirectoryStateHandle};

/// Which directory kind `--directory` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchDirectory {
    /// An OpenLDAP server of the benchmark's own, read with paged searches over StartTLS.
    Ldap,
}

pub async fn run(sizes: &[usize], page_size: u32) -> anyhow::Result<()> {
    anyhow::ensure!(
        slapd::available(),
        "the LDAP benchmark needs OpenLDAP's slapd: apt-get install slapd ldap-utils"
    );
    println!(
        "calbridge bench --directory ldap: OpenLDAP slapd on loopback (server size limit {}), StartTLS, pages of {page_size}, applied to an SQLite store",
        slapd::SIZE_LIMIT
    );
    println!(
        "{:>7} {:>12} {:>11} {:>12} {:>10} {:>14} {:>14} {:>13}",
        "people",
        "tree load s",
        "first s",
        "people/s",
        "written",
        "re-read s",
        "re-read writes",
        "re-read listed"
    );
    for &n_people in sizes {
        let load_started = Instant::now();
        let server = tokio::task::spawn_blocking(move || TestSlapd::start(n_people))
            .await
            .context("the slapd start task")??;
        let load = load_started.elapsed();
        let folder = tempfile::tempdir().context("a temporary folder for the store")?;
        let store = SqliteStore::open(folder.path().join("bench.sqlite"), SecretKey::generate())
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        let source = SourceId("bench".to_string());
        let mut ldap = LdapConfig::new(&server.ldap_url, &format!("ou=people,{}", slapd::SUFFIX));
        ldap.bind_dn = Some(slapd::BIND_DN.to_string());
        ldap.password = Some(Secret::new(slapd::BIND_PASSWORD));
        ldap.extra_root_ca = Some(server.ca_file.clone());
        ldap.filter = "(&(objectClass=inetOrgPerson)(mail=*))".to_string();
        ldap.page_size = page_size;
        let mut entry = DirectoryConfig::new(source.clone());
        entry.ldap = Some(ldap);
        let entries = vec![entry];
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let mut state = DirectoryStateHandle::default();

        let started = Instant::now();
        let first =
            apply_directory_once(&source, &store, &entries, &mut state, clock.as_ref()).await;
        let first_time = started.elapsed();
        let stored = store
            .list_people_of_source(&source)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?
            .len();
        anyhow::ensure!(
            stored == n_people && first.listed == n_people,
            "the first read listed {} and stored {stored} of {n_people} people (see the log for the LDAP error)",
            first.listed
        );
        anyhow::ensure!(
            first.written == n_people,
            "the first read wrote {} of {n_people} people",
            first.written
        );
        let started = Instant::now();
        let again =
            apply_directory_once(&source, &store, &entries, &mut state, clock.as_ref()).await;
        let again_time = started.elapsed();
        anyhow::ensure!(
            again.listed == n_people,
            "the re-read listed {} of {n_people} people (see the log for the LDAP error)",
            again.listed
        );
        println!(
            "{:>7} {:>12.2} {:>11.2} {:>12.0} {:>10} {:>14.2} {:>14} {:>13}",
            n_people,
            load.as_secs_f64(),
            first_time.as_secs_f64(),
            n_people as f64 / first_time.as_secs_f64().max(1e-9),
            first.written,
            again_time.as_secs_f64(),
            again.written + again.removed,
            again.listed
        );
        store.close().await;
        drop(server);
    }
    Ok(())
}
