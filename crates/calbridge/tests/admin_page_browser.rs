//! The admin page in a real browser: the emulator with a generated organisation, the service
//! on port 0, and headless Chromium loading `/#token=…`. The DOM after the page's scripts ran
//! must show, for every user, the activity `GET /api/v1/users` reports; a screenshot is saved
//! as `target/admin-page.png` for the reader.
//!
//! Needs `/usr/bin/chromium` (`.ci/services/chromium.sh install`); without it the test says
//! it skipped, unless `CALBRIDGE_REQUIRE_SERVICES=1` makes that a failure.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use calbridge::clock::SystemClock;
use common::*;
use m365_emulator::{Emulator, EmulatorConfig};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium is killed (with its whole process group) if one run takes longer than this.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// Virtual time the page gets to fetch `/api/v1/users` and render before the DOM is taken.
const VIRTUAL_TIME_BUDGET_MS: u32 = 8_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_chromium_shows_the_presence_the_api_reports_for_every_user() {
    if !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var("CALBRIDGE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "chromium not installed at {CHROMIUM} but CALBRIDGE_REQUIRE_SERVICES=1: \
             run .ci/services/chromium.sh install"
        );
        eprintln!("skipped: chromium not installed (run .ci/services/chromium.sh install)");
        return;
    }
    init_logs();
    let emulator = Emulator::start(EmulatorConfig::generated(30, 11))
        .await
        .expect("the emulator starts");
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let (listener, public_url) = listen(0).await;
    let config = config_for(emulator.ready(), data_dir.path(), &public_url, None);
    let running = start_service(config, Arc::new(SystemClock), listener).await;
    let api = Api::new(&running);
    let page_url = format!(
        "http://{}/#token={}",
        running.address,
        percent_encode(running.api_token.expose())
    );

    let before = api_activities(&api).await;
    assert!(before.len() >= 20, "a generated organisation: {before:?}");
    let dom = chromium(
        data_dir.path(),
        &[
            format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
            "--dump-dom".to_string(),
            page_url.clone(),
        ],
    )
    .await;
    let after = api_activities(&api).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the directory did not change during the test"
    );

    let table = table_activities(&dom);
    assert!(
        !dom.contains("<form id=\"login\">"),
        "the page shows the login form: the token from the fragment was not used\n{dom}"
    );
    assert_eq!(
        table.len(),
        before.len(),
        "one table row per user; rows: {:?}",
        table.iter().map(|(address, _)| address).collect::<Vec<_>>()
    );
    let table: BTreeMap<String, String> = table.into_iter().collect();
    assert_eq!(table.len(), before.len(), "no address twice in the table");
    // A meeting may start or end while the browser runs; such a user may show either state.
    // Everyone else must show exactly what the API said.
    let mut n_changed_meanwhile = 0;
    for (address, api_before) in &before {
        let api_after = &after[address];
        let shown = table
            .get(address)
            .unwrap_or_else(|| panic!("{address} is missing from the table"));
        if api_before == api_after {
            assert_eq!(shown, api_before, "activity of {address} in the admin page");
        } else {
            n_changed_meanwhile += 1;
            assert!(
                shown == api_before || shown == api_after,
                "{address}: the page shows {shown}, the API said {api_before} then {api_after}"
            );
        }
    }
    assert!(
        n_changed_meanwhile <= 3,
        "{n_changed_meanwhile} users changed during the test: the comparison proves little"
    );
    let n_busy_or_away = before
        .values()
        .filter(|activity| *activity != "available")
        .count();
    assert!(
        n_busy_or_away > 0,
        "the organisation has meetings, so the table compares more than one activity: {before:?}"
    );
    let count_text = format!("{n} of {n} users", n = before.len());
    assert!(dom.contains(&count_text), "the page says {count_text:?}");

    // The screenshot, for the reader (and the eye of whoever changes the page).
    let screenshot = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target")
        .join("admin-page.png");
    std::fs::create_dir_all(screenshot.parent().expect("target/")).expect("create target/");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        data_dir.path(),
        &[
            format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
            "--hide-scrollbars".to_string(),
            "--window-size=1400,900".to_string(),
            format!("--screenshot={}", screenshot.display()),
            page_url,
        ],
    )
    .await;
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|error| panic!("no screenshot at {}: {error}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    let height = u32::from_be_bytes([png[20], png[21], png[22], png[23]]);
    assert_eq!((width, height), (1400, 900), "the window size asked for");
    // An empty white page compresses to a few kilobytes; the table with 30 rows does not.
    assert!(
        png.len() > 40_000,
        "the screenshot is suspiciously small ({} bytes)",
        png.len()
    );
    eprintln!("screenshot: {}", screenshot.display());
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

/// Runs headless Chromium with a fresh profile and returns its standard output, killing its
/// process group after [`CHROMIUM_TIMEOUT`].
async fn chromium(scratch: &Path, arguments: &[String]) -> String {
    let profile = tempfile::tempdir_in(scratch).expect("a profile directory");
    let mut command = tokio::process::Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills the renderers too.
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().expect("chromium starts");
    let pid = child.id().expect("chromium's pid");
    let output = match tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("chromium's output"),
        Err(_) => {
            kill_process_group(pid);
            panic!("chromium did not finish within {CHROMIUM_TIMEOUT:?}: {arguments:?}");
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "chromium failed ({}): {arguments:?}\n{stderr}",
        output.status
    );
    String::from_utf8(output.stdout).expect("chromium prints UTF-8")
}

fn kill_process_group(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status();
}

/// `(address, activity)` of every `tr[data-address]` in the dumped DOM, in table order; the
/// activity is the text of the row's `td[data-col="activity"]`.
fn table_activities(dom: &str) -> Vec<(String, String)> {
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
            .find("data-col=\"activity\"")
            .unwrap_or_else(|| panic!("row of {address} has no activity cell: {row_html}"));
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

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
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
