//! The admin page in a real browser: the emulator with a generated organisation, the service
//! on port 0, and headless Chromium loading `/#token=…`. The DOM after the page's scripts ran
//! must show, for every user, the activity `GET /api/v1/users` reports; a screenshot is saved
//! as `target/admin-page.png` for the reader.
//!
//! Chromium is driven through chromedriver (`common::browser`); without Chromium the test says
//! it skipped, unless `CALBRIDGE_REQUIRE_SERVICES=1` makes that a failure. The test on
//! PostgreSQL (a cluster of one instance) also needs the server of `CALBRIDGE_TEST_POSTGRES`,
//! and skips alike without it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calbridge::clock::{Clock, ManualClock};
use common::browser::{base64_decode, chromium_installed, png_size, ChromeDriver, Session};
use common::*;
use m365_emulator::{Emulator, EmulatorConfig};
use serde_json::Value;

/// The whole browser session (start, page load, checks, screenshot) must end within this;
/// otherwise chromedriver and the browsers it started are killed and the test fails.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(150);

/// Where the service under test keeps its state.
enum Storage<'d> {
    /// One instance, alone: no cluster, so no instances panel and no instance column.
    Sqlite,
    /// An instance of a cluster (of one) on this database, named [`INSTANCE`].
    Postgres(&'d common::postgres::Database),
}

/// The name of the instance on PostgreSQL.
const INSTANCE: &str = "admin-page-instance";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_chromium_shows_the_presence_the_api_reports_for_every_user() {
    let Some(page) = admin_page(
        false,
        Storage::Sqlite,
        "admin-page.png",
        ExtraDirectory::UnreachableLdap,
    )
    .await
    else {
        return;
    };
    // The LDAP entry beside the group cannot be read: the page says so (naming the server),
    // and everyone of the group stays.
    let notes = page
        .dom
        .split("id=\"directory-notes\"")
        .nth(1)
        .and_then(|rest| rest.split("</div></div>").next())
        .expect("the directory notes");
    assert!(
        notes.contains("LDAP ldap://127.0.0.1:") && notes.contains("cannot connect"),
        "{notes}"
    );
    assert!(notes.contains("nobody is removed"), "{notes}");
    assert_eq!(page.layout["directoryNotes"], true, "{}", page.layout);
    assert!(
        page.dom.contains("token valid"),
        "the Graph card shows its token"
    );
    assert_eq!(
        page.layout["instanceColumn"], "none",
        "one instance: no instance column"
    );
    assert_eq!(
        page.layout["clusterPanel"], false,
        "one instance: no instances panel"
    );
}

/// With PostgreSQL the page shows the instances panel, and an instance column naming for
/// every user the instance that follows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_chromium_shows_the_instance_that_follows_each_user() {
    let Some(database) = common::postgres::database("calbridge_admin_page").await else {
        return;
    };
    let Some(page) = admin_page(
        false,
        Storage::Postgres(&database),
        "admin-page-cluster.png",
        ExtraDirectory::None,
    )
    .await
    else {
        return;
    };
    assert_eq!(page.layout["clusterPanel"], true, "{}", page.layout);
    assert_ne!(page.layout["instanceColumn"], "none", "{}", page.layout);
    let instances = page
        .dom
        .split("id=\"instance-rows\"")
        .nth(1)
        .expect("the instances table");
    assert!(
        instances.contains(&format!("data-instance=\"{INSTANCE}\"")),
        "the instance is listed: {instances}"
    );
    let cells = table_cells(&page.dom, "instance");
    assert!(!cells.is_empty());
    for (address, instance) in cells {
        assert_eq!(instance, INSTANCE, "the instance that follows {address}");
    }
}

/// The same on an EWS source: every user's presence, and the source card naming the EWS URL
/// in use and how it was found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_chromium_shows_an_ews_source_and_its_users() {
    let Some(page) = admin_page(
        true,
        Storage::Sqlite,
        "admin-page-ews.png",
        ExtraDirectory::None,
    )
    .await
    else {
        return;
    };
    assert_eq!(
        page.layout["directoryNotes"], false,
        "no directory trouble, no notes: {}",
        page.layout
    );
    let card = page
        .dom
        .split("data-source=\"onprem\"")
        .nth(1)
        .expect("the EWS source card");
    assert!(
        card.contains("data-ews-url=\"https://127.0.0.1:"),
        "the EWS URL is shown: {card}"
    );
    assert!(card.contains("configured URL"), "{card}");
    assert!(
        card.contains("ntlm · impersonation · read calendar_view"),
        "{card}"
    );
}

/// A directory entry besides the organisation's own.
enum ExtraDirectory {
    None,
    /// An LDAP directory whose server does not answer (a loopback port nobody listens on).
    UnreachableLdap,
}

/// What the browser showed: the DOM, and what the page laid out (see [`browse`]).
struct Page {
    dom: String,
    layout: Value,
}

/// Runs the service on a generated organisation (Graph, or EWS with `ews`), opens the admin
/// page in Chromium and checks every user's row against the API; returns the page, or None
/// when Chromium is not installed (and not required).
async fn admin_page(
    ews: bool,
    storage: Storage<'_>,
    screenshot: &str,
    extra: ExtraDirectory,
) -> Option<Page> {
    if !chromium_installed() {
        return None;
    }
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(30, 11))
        .await
        .expect("the emulator starts");
    // The service's clock stands still while the browser runs, so the page and the API speak
    // of one instant; one person has a meeting then by construction, so that more than one
    // activity is compared at any hour.
    let clock = ManualClock::new(whole_second(jiff::Timestamp::now()));
    let graph = GraphClient::new(emulator.ready()).await;
    let members = graph
        .group_members(emulator.ready().group_id.as_deref().expect("a group"))
        .await;
    let busy_person = members.first().expect("a generated person").clone();
    let now = clock.now();
    graph.free_around(&busy_person, now).await;
    graph
        .create_event(
            &busy_person,
            "Board meeting",
            now - jiff::SignedDuration::from_mins(5),
            now + jiff::SignedDuration::from_mins(55),
            "busy",
        )
        .await;
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(emulator.ready(), data_dir.path(), &public_url, None);
    if ews {
        let (source, directory, _) = calbridge::commands::ews_demo_source(
            emulator.ready(),
            data_dir.path(),
            calbridge_domain::SourceId("onprem".to_string()),
            calbridge_sources_ews::WindowRead::CalendarView,
        )
        .await
        .expect("the EWS source");
        config.sources = vec![source];
        config.directory = vec![directory];
    }
    if let ExtraDirectory::UnreachableLdap = extra {
        // A port that was free a moment ago: connecting is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut ldap = calbridge::directory::ldap::LdapConfig::new(
            &format!("ldap://127.0.0.1:{port}"),
            "dc=example,dc=org",
        );
        ldap.filter = "(mail=*)".to_string();
        let mut entry = calbridge::config::DirectoryConfig::new(config.sources[0].id.clone());
        entry.ldap = Some(ldap);
        config.directory.push(entry);
    }
    if let Storage::Postgres(database) = &storage {
        config.store.path = None;
        config.store.key_file = Some(data_dir.path().join("calbridge.key"));
        config.store.url = Some(calbridge_domain::Secret::new(database.url()));
        config.cluster.instance_name = Some(INSTANCE.to_string());
    }
    let running = start_service(config, Arc::new(clock), listener).await;
    let api = Api::new(&running);
    let page_url = format!(
        "http://{}/#token={}",
        running.address,
        calbridge_net::percent::encode_query_value(running.api_token.expose())
    );
    let screenshot_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target")
        .join(screenshot);

    if matches!(storage, Storage::Postgres(_)) {
        // The owners of the shards are known from the first lease round on.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let users = api.get_authorized("/api/v1/users").await;
            let all_owned = users["users"]
                .as_array()
                .is_some_and(|users| users.iter().all(|user| user["instance"] == INSTANCE));
            if all_owned {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "every user has an instance: {users}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let before = api_activities(&api).await;
    assert!(before.len() >= 20, "a generated organisation: {before:?}");
    let driver = ChromeDriver::start(data_dir.path()).await;
    let browsed = tokio::time::timeout(
        BROWSER_TIMEOUT,
        browse(&driver, data_dir.path(), &page_url, before.len()),
    )
    .await;
    let (dom, png, layout) = match browsed {
        Ok(result) => result,
        Err(_) => driver.fail(&format!(
            "the browser session did not finish within {BROWSER_TIMEOUT:?}"
        )),
    };
    driver.kill();
    let after = api_activities(&api).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the directory did not change during the test"
    );

    let table = table_activities(&dom);
    assert_eq!(
        table.len(),
        before.len(),
        "one table row per user; rows: {:?}",
        table.iter().map(|(address, _)| address).collect::<Vec<_>>()
    );
    let table: BTreeMap<String, String> = table.into_iter().collect();
    assert_eq!(table.len(), before.len(), "no address twice in the table");
    // The clock stood still: everyone shows exactly what the API said, before and after.
    assert_eq!(
        before, after,
        "the API's answers did not change during the test"
    );
    for (address, api_before) in &before {
        let shown = table
            .get(address)
            .unwrap_or_else(|| panic!("{address} is missing from the table"));
        assert_eq!(shown, api_before, "activity of {address} in the admin page");
    }
    assert_eq!(
        before.get(&busy_person).map(String::as_str),
        Some("busy"),
        "{busy_person} has a meeting now"
    );
    let n_not_available = before
        .values()
        .filter(|activity| *activity != "available")
        .count();
    assert!(
        n_not_available > 0,
        "the organisation has meetings, so more than one activity is compared: {before:?}"
    );
    let count_text = format!("{n} of {n} users", n = before.len());
    assert!(dom.contains(&count_text), "the page says {count_text:?}");

    // The screenshot, for the reader (and the eye of whoever changes the page).
    let (width, height) = png_size(&png);
    assert!(
        width >= 1200 && height >= 700,
        "the window size asked for: {width}×{height}"
    );
    std::fs::create_dir_all(screenshot_path.parent().expect("target/")).expect("create target/");
    std::fs::write(&screenshot_path, &png).expect("write the screenshot");
    let written = std::fs::metadata(&screenshot_path).expect("the screenshot exists");
    // An empty page compresses to a few kilobytes; thirty rows of text do not.
    assert!(
        written.len() > 40_000,
        "the screenshot is suspiciously small ({} bytes)",
        written.len()
    );
    eprintln!("screenshot: {}", screenshot_path.display());
    running.shutdown().await;
    emulator.shutdown().await;
    Some(Page { dom, layout })
}

/// Opens the page in a fresh headless Chromium, waits until the table has `n_users` rows
/// whose activity cells are filled, and returns the DOM, a PNG screenshot, and what the page
/// laid out: `instanceColumn` (the CSS display of the instance column's header) and
/// `clusterPanel` (whether the instances panel shows), `directoryNotes` (whether the
/// directory's notes show: a held change or a failing read).
async fn browse(
    driver: &ChromeDriver,
    scratch: &Path,
    page_url: &str,
    n_users: usize,
) -> (String, Vec<u8>, Value) {
    let session = Session::open(driver, scratch, 1400, 900).await;
    session.goto(page_url).await;
    // What the page shows, read in the browser: rows with an activity, the counter, and
    // whether the login form (a refused token) is visible.
    let probe = "return {
        rows: document.querySelectorAll('#rows tr[data-address] td[data-col=activity] .badge').length,
        count: document.getElementById('user-count').textContent,
        login: !document.getElementById('login').hidden,
        neterr: document.getElementById('neterr').textContent };";
    let shown = session
        .wait_until(
            &format!("the table to show {n_users} users"),
            probe,
            Duration::from_secs(30),
            |state| state["login"] != false || state["rows"].as_u64() == Some(n_users as u64),
        )
        .await;
    if shown["login"] != false {
        driver.fail(&format!("the page asks for a token: {shown}"));
    }
    let dom = session.source().await;
    let layout = session
        .script(
            "return {
        instanceColumn: getComputedStyle(document.querySelector('#users th[data-col=instance]')).display,
        clusterPanel: !document.getElementById('cluster-panel').hidden,
        directoryNotes: !document.getElementById('directory-notes').hidden };",
        )
        .await;
    let png = session.screenshot().await;
    session.close().await;
    (dom, png, layout)
}

/// `address → activity` as `GET /api/v1/users` reports it ("unknown" without a decision, as
/// the page shows it).
async fn api_activities(api: &Api) -> BTreeMap<String, String> {
    let body = api.get_authorized("/api/v1/users").await;
    body["users"]
        .as_array()
        .expect("a users array")
        .iter()
        .map(|user| {
            let address = user["address"].as_str().expect("an address").to_string();
            let activity = user["presence"]["activity"]
                .as_str()
                .unwrap_or("unknown")
                .to_string();
            (address, activity)
        })
        .collect()
}

/// `(address, activity)` of every `tr[data-address]` in the dumped DOM, in table order; the
/// activity is the text of the row's `td[data-col="activity"]`.
fn table_activities(dom: &str) -> Vec<(String, String)> {
    table_cells(dom, "activity")
}

/// `(address, text)` of every `tr[data-address]` in the dumped DOM, in table order; the text
/// is that of the row's `td[data-col="{column}"]`.
fn table_cells(dom: &str, column: &str) -> Vec<(String, String)> {
    let body_start = dom
        .find("id=\"rows\"")
        .unwrap_or_else(|| panic!("no tbody#rows in the DOM:\n{dom}"));
    let body_end = dom[body_start..]
        .find("</tbody>")
        .map_or(dom.len(), |end| body_start + end);
    let body = &dom[body_start..body_end];
    let mut rows = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find("<tr ") {
        let row = &rest[start..];
        let row_end = row.find("</tr>").unwrap_or(row.len());
        let tag_end = row.find('>').unwrap_or(row.len());
        let (tag, row_html) = (&row[..tag_end], &row[..row_end]);
        rest = &row[row_end..];
        let Some(address) = attribute(tag, "data-address") else {
            continue; // a detail row
        };
        let cell_start = row_html
            .find(&format!("data-col=\"{column}\""))
            .unwrap_or_else(|| panic!("row of {address} has no {column} cell: {row_html}"));
        let cell = &row_html[cell_start..];
        let cell = &cell[cell.find('>').map_or(0, |end| end + 1)..];
        let cell = &cell[..cell.find("</td>").unwrap_or(cell.len())];
        rows.push((address, text_of(cell).trim().to_string()));
    }
    rows
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = tag[start..].find('"')? + start;
    Some(decode_entities(&tag[start..end]))
}

/// The text of an HTML fragment: tags dropped, the entities Chromium writes decoded.
fn text_of(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for character in html.chars() {
        match character {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => text.push(character),
            _ => {}
        }
    }
    decode_entities(&text)
}

fn decode_entities(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

#[test]
fn base64_decodes_padded_and_unpadded_input() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk"), b"hi");
    assert_eq!(base64_decode("AAEC/w=="), [0, 1, 2, 255]);
}

#[test]
fn the_dom_scan_reads_rows_and_skips_detail_rows() {
    let dom = r#"<table id="users"><tbody id="rows"><tr data-address="a&amp;b@x.example" data-source="demo"><td data-col="address"><div class="addr">a&amp;b@x.example</div></td><td data-col="activity"><span class="badge a-busy">busy</span></td></tr><tr class="detail" data-detail-for="a&amp;b@x.example"><td colspan="8">why</td></tr><tr data-source="demo" data-address="c@x.example" hidden=""><td data-col="activity"><span class="badge a-unknown">unknown</span></td></tr></tbody></table>"#;
    assert_eq!(
        table_activities(dom),
        vec![
            ("a&b@x.example".to_string(), "busy".to_string()),
            ("c@x.example".to_string(), "unknown".to_string()),
        ]
    );
}
