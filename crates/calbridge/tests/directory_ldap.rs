//! The directory from LDAP (issue #13, part 2) against a real OpenLDAP `slapd` of the test's
//! own on loopback (`calbridge::bench::slapd`): a generated tree of 2,000 people with several
//! addresses each, groups with a nested group, and a server size limit of 500 so that only
//! paged reads get everyone. StartTLS and ldaps with the test's own CA, a refused bind, the
//! nested-group rule OpenLDAP lacks, and in the running service a server stopped and started
//! again, a bind refused and a tree that suddenly shrinks: nobody is removed until a read
//! confirms it.
//!
//! Without `slapd` the tests say they skipped, unless `CALBRIDGE_REQUIRE_SERVICES=1`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use calbridge::bench::slapd::{self, TestSlapd};
use calbridge::config::DirectoryConfig;
use calbridge::directory::ldap::{self as reader, LdapConfig, Nesting};
use calbridge_domain::{Secret, SourceId};
use common::ldap::slapd_with;
use common::*;
use m365_emulator::{Emulator, EmulatorConfig};

const PEOPLE: usize = 2000;

/// The reader's settings for the test tree (OpenLDAP's schema: no objectCategory).
fn settings(url: &str, server: &TestSlapd) -> LdapConfig {
    let mut config = LdapConfig::new(url, &format!("ou=people,{}", slapd::SUFFIX));
    config.bind_dn = Some(slapd::BIND_DN.to_string());
    config.password = Some(Secret::new(slapd::BIND_PASSWORD));
    config.extra_root_ca = Some(server.ca_file.clone());
    config.filter = "(&(objectClass=inetOrgPerson)(mail=*))".to_string();
    config.page_size = 200;
    config.timeout_seconds = 10;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_read_over_starttls_gets_everyone_past_the_servers_size_limit() {
    let Some(server) = slapd_with(PEOPLE) else {
        return;
    };
    // The server's limit is real: a search without paging stops at 500 with sizeLimitExceeded.
    let (connection, mut plain) = ldap3::LdapConnAsync::new(&server.ldap_url)
        .await
        .expect("connect");
    ldap3::drive!(connection);
    plain
        .simple_bind(slapd::BIND_DN, slapd::BIND_PASSWORD)
        .await
        .expect("bind")
        .success()
        .expect("the bind account binds");
    let unpaged = plain
        .search(
            &format!("ou=people,{}", slapd::SUFFIX),
            ldap3::Scope::Subtree,
            "(mail=*)",
            vec!["mail"],
        )
        .await
        .expect("an answer");
    assert_eq!(unpaged.1.rc, 4, "sizeLimitExceeded: {}", unpaged.1);
    assert_eq!(unpaged.0.len(), slapd::SIZE_LIMIT);

    // ldap:// with StartTLS (the default) and the test's CA, pages of 200.
    let config = settings(&server.ldap_url, &server);
    assert_eq!(config.starttls, None, "StartTLS is the default for ldap://");
    let listing = reader::read(&config).await.expect("the paged read");
    assert_eq!(listing.people.len(), PEOPLE, "{:?}", listing.problems);
    assert!(listing.problems.is_empty(), "{:?}", listing.problems);
    let addresses: HashSet<&str> = listing.people.iter().map(|p| p.address.as_str()).collect();
    assert_eq!(addresses.len(), PEOPLE);
    let first = listing
        .people
        .iter()
        .find(|person| person.address.as_str() == slapd::address_of(0))
        .expect("person 0");
    // proxyAddresses: the primary SMTP is `mail` itself; the smtp: values follow in the
    // server's order, the X500: value is skipped.
    assert_eq!(
        first.alternates,
        vec!["person.0@corp.example", "p00000@legacy.example"]
    );
    assert_eq!(first.sip_uri.as_deref(), Some("sip:p00000@corp.example"));
    assert_eq!(first.display_name.as_deref(), Some("Person 0"));
    let odd = listing
        .people
        .iter()
        .find(|person| person.address.as_str() == slapd::address_of(1))
        .expect("person 1");
    assert_eq!(odd.sip_uri, None, "no msRTCSIP-PrimaryUserAddress");

    // A PBX schema: the SIP URI from a template over the phone number.
    let mut pbx = settings(&server.ldap_url, &server);
    pbx.sip_uri_template = Some("sip:{telephoneNumber}@pbx.example".to_string());
    let listing = reader::read(&pbx).await.expect("the read with a template");
    let odd = listing
        .people
        .iter()
        .find(|person| person.address.as_str() == slapd::address_of(1))
        .expect("person 1");
    assert_eq!(odd.sip_uri.as_deref(), Some("sip:+4930100001@pbx.example"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldaps_needs_the_extra_ca_and_a_refused_bind_names_the_account_not_the_password() {
    let Some(server) = slapd_with(PEOPLE) else {
        return;
    };
    let config = settings(&server.ldaps_url, &server);
    let listing = reader::read(&config).await.expect("the ldaps read");
    assert_eq!(listing.people.len(), PEOPLE);

    // Without the CA the server's certificate is not trusted, and the error says so.
    let mut untrusted = settings(&server.ldaps_url, &server);
    untrusted.extra_root_ca = None;
    let error = reader::read(&untrusted)
        .await
        .expect_err("an unknown CA")
        .to_string();
    assert!(error.contains(&server.ldaps_url), "{error}");
    assert!(error.contains("cannot connect"), "{error}");
    assert!(
        error.to_lowercase().contains("certificate"),
        "names the certificate: {error}"
    );

    let mut wrong = settings(&server.ldap_url, &server);
    wrong.password = Some(Secret::new("Wr0ng-Passw0rd-Value"));
    let error = reader::read(&wrong)
        .await
        .expect_err("a refused bind")
        .to_string();
    assert!(
        error.contains(&format!("the bind as `{}` was refused", slapd::BIND_DN)),
        "{error}"
    );
    assert!(
        error.contains("invalidCredentials (result code 49)"),
        "{error}"
    );
    assert!(error.contains("check bind_dn and password"), "{error}");
    assert!(
        !error.contains("Wr0ng"),
        "the password never shows: {error}"
    );
    assert!(!error.contains(slapd::BIND_PASSWORD), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_nested_group_members_are_read_and_the_active_directory_rule_is_refused_clearly()
{
    let Some(server) = slapd_with(PEOPLE) else {
        return;
    };
    let mut config = settings(&server.ldap_url, &server);
    config.member_of = Some(slapd::GROUP_DN.to_string());
    // Direct members only, through memberOf (the default).
    assert_eq!(config.nested, Nesting::None);
    let direct = reader::read(&config).await.expect("the direct read");
    let mut addresses: Vec<String> = direct
        .people
        .iter()
        .map(|person| person.address.to_string())
        .collect();
    addresses.sort();
    let expected: Vec<String> = (0..slapd::GROUP_DIRECT).map(slapd::address_of).collect();
    assert_eq!(addresses, expected);

    config.nested = Nesting::Expand;
    let listing = reader::read(&config).await.expect("the expanded read");
    let mut addresses: Vec<String> = listing
        .people
        .iter()
        .map(|person| person.address.to_string())
        .collect();
    addresses.sort();
    let expected: Vec<String> = (0..slapd::GROUP_DIRECT + slapd::GROUP_NESTED + slapd::GROUP_DEEP)
        .map(slapd::address_of)
        .collect();
    assert_eq!(
        addresses, expected,
        "direct members, the nested group's and the one inside it (which loops back)"
    );

    // OpenLDAP has no 1.2.840.113556.1.4.1941: it answers with nobody, and the reader says
    // what to do instead of listing no one.
    config.nested = Nesting::MatchingRule;
    let error = reader::read(&config)
        .await
        .expect_err("no nested rule on OpenLDAP")
        .to_string();
    assert!(
        error.contains("the nested-group rule (memberOf:1.2.840.113556.1.4.1941:=…) found no one"),
        "{error}"
    );
    assert!(error.contains("set nested = \"expand\""), "{error}");
}

/// The service with an LDAP directory for its Graph source (the emulator's small
/// organisation; the LDAP people are not in it, which is no matter for the directory).
async fn service_with_ldap(
    ready: &m365_emulator::ReadyInfo,
    data: &std::path::Path,
    ldap: LdapConfig,
) -> calbridge::service::RunningService {
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(ready, data, &public_url, None);
    let mut entry = DirectoryConfig::new(SourceId(SOURCE.to_string()));
    entry.ldap = Some(ldap);
    // Two seconds: a held change stays visible for at least that long between two reads.
    entry.refresh_seconds = 2;
    config.directory = vec![entry];
    try_start_service(config, Arc::new(calbridge::clock::SystemClock), listener)
        .await
        .expect("the service starts")
}

async fn people_in_store(running: &calbridge::service::RunningService) -> usize {
    running
        .store
        .list_people_of_source(&SourceId(SOURCE.to_string()))
        .await
        .expect("the store answers")
        .len()
}

/// Polls the status until `check` holds for its `directory[0]`, failing with the last one.
async fn wait_directory(
    api: &Api,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for_status(api, what, |status| check(&status["directory"][0])).await
}

/// Polls the status until `check` holds, failing with its directory part after 40 s.
async fn wait_for_status(
    api: &Api,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let status = api.get_authorized("/api/v1/status").await;
        if check(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            status["directory"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_a_refused_bind_or_a_shrunken_tree_removes_no_one_until_confirmed() {
    init_logs();
    let Some(mut server) = slapd_with(PEOPLE) else {
        return;
    };
    let emulator = Emulator::start(EmulatorConfig::generated(5, 31))
        .await
        .expect("the emulator starts");
    let data = tempfile::tempdir().expect("temp dir");
    let running = service_with_ldap(
        emulator.ready(),
        data.path(),
        settings(&server.ldap_url, &server),
    )
    .await;
    let api = Api::new(&running);
    wait_directory(&api, "everyone read", |d| d["people"] == PEOPLE).await;
    assert_eq!(people_in_store(&running).await, PEOPLE);

    // The server stops mid-run: the read fails, the status names the server, nobody goes.
    server.stop();
    let status = wait_directory(&api, "the failing read", |d| {
        d["failing"].as_array().is_some_and(|f| !f.is_empty())
    })
    .await;
    let failing = status["directory"][0]["failing"][0]
        .as_str()
        .expect("a message")
        .to_string();
    assert!(failing.contains(&server.ldap_url), "{failing}");
    assert!(failing.contains("cannot connect"), "{failing}");
    assert!(failing.contains("nobody is removed"), "{failing}");
    assert_eq!(people_in_store(&running).await, PEOPLE);
    // A second failed read (after the back-off), and still everyone, nothing applied.
    let applied_at = status["directory"][0]["applied_at"].clone();
    let status = wait_for_status(&api, "a second failed read", |status| {
        status["errors"].as_array().is_some_and(|errors| {
            errors
                .iter()
                .filter(|error| {
                    error["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("cannot connect"))
                })
                .count()
                >= 2
        })
    })
    .await;
    assert_eq!(people_in_store(&running).await, PEOPLE);
    assert_eq!(
        status["directory"][0]["applied_at"], applied_at,
        "nothing is applied while the server is away"
    );

    // Back: the next read (within the back-off, capped at refresh_seconds) recovers.
    server.resume().expect("slapd starts again");
    wait_directory(&api, "the recovered read", |d| {
        d["failing"].as_array().is_some_and(Vec::is_empty) && d["people"] == PEOPLE
    })
    .await;
    assert_eq!(people_in_store(&running).await, PEOPLE);

    // The bind account's password is changed on the server: the bind is refused, named,
    // and nobody is removed.
    let mut admin = server.as_admin().await.expect("admin connection");
    let set_password = |password: &'static str| {
        vec![ldap3::Mod::Replace(
            "userPassword",
            HashSet::from([password]),
        )]
    };
    admin
        .modify(slapd::BIND_DN, set_password("changed-elsewhere"))
        .await
        .expect("modify")
        .success()
        .expect("the password changes");
    let status = wait_directory(&api, "the refused bind", |d| {
        d["failing"][0]
            .as_str()
            .is_some_and(|f| f.contains("was refused"))
    })
    .await;
    let failing = status["directory"][0]["failing"][0].as_str().unwrap_or("");
    assert!(failing.contains(slapd::BIND_DN), "{failing}");
    assert!(failing.contains("invalidCredentials"), "{failing}");
    assert!(!failing.contains(slapd::BIND_PASSWORD), "{failing}");
    assert_eq!(people_in_store(&running).await, PEOPLE);
    admin
        .modify(slapd::BIND_DN, set_password(slapd::BIND_PASSWORD))
        .await
        .expect("modify")
        .success()
        .expect("the password is restored");
    wait_directory(&api, "the bind accepted again", |d| {
        d["failing"].as_array().is_some_and(Vec::is_empty)
    })
    .await;

    // A quarter of the people vanish at once (over the default 20 %; the tree is replaced
    // while the server is stopped for a moment): the change is held with its reason, then
    // applied once the next read lists the same people.
    let gone = PEOPLE / 4;
    server
        .replace_tree(PEOPLE - gone)
        .expect("the smaller tree is loaded");
    // While the change is held, the store keeps everyone.
    let mut held_with = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let status = api.get_authorized("/api/v1/status").await;
        let directory = &status["directory"][0];
        if directory["people"] == PEOPLE - gone {
            break;
        }
        if !directory["held"].is_null() && held_with.is_none() {
            let reason = directory["held"]["reason"]
                .as_str()
                .unwrap_or("")
                .to_string();
            held_with = Some((people_in_store(&running).await, reason));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the confirmed shrink: {directory}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (kept, reason) = held_with.expect("the held change is shown in the status");
    assert_eq!(kept, PEOPLE, "nobody removed while held ({reason})");
    assert!(
        reason.contains("more than max_shrink_percent = 20"),
        "{reason}"
    );
    assert_eq!(people_in_store(&running).await, PEOPLE - gone);
    let status = api.get_authorized("/api/v1/status").await;
    // Both steps are in the error list: first the hold, then the confirmation.
    let errors = status["errors"].as_array().expect("errors");
    let at_of = |needle: &str| -> jiff::Timestamp {
        errors
            .iter()
            .find(|error| {
                error["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle))
            })
            .and_then(|error| error["at"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("`{needle}` is reported: {errors:#?}"))
    };
    let shrink = format!("the read drops {gone} of the {PEOPLE} people followed now (25.0 %)");
    let held = at_of(&format!(
        "{shrink}, more than max_shrink_percent = 20; the last good list is kept"
    ));
    let confirmed = at_of(&format!(
        "{shrink}, more than max_shrink_percent = 20; a second read confirmed it"
    ));
    assert!(held < confirmed, "{errors:#?}");
    assert!(status["directory"][0]["held"].is_null(), "{status}");

    running.shutdown().await;
    drop(server);
}
