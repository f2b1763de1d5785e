//! The admin page's Rooms tab and the room panel in headless Chromium: the emulator's
//! generated organisation with its meeting rooms, and the service on port 0 following them
//! (`[[directory]] rooms = "all"`), both on a clock fixed at a working morning, so that the
//! rooms' calendars and "now" are the same at any hour of any day. One room is made occupied
//! and one free by the test itself; what the browser shows is compared with what
//! `GET /api/v1/rooms` reports. Screenshots go to `docs/screenshots/` for the README.
//!
//! Needs Chromium (`common::browser`): without it the tests say they skipped, unless
//! `CALBRIDGE_REQUIRE_SERVICES=1`. Chromium does not start under libfaketime, so this binary
//! is left out of `.ci/at-instants`; it owns its instant instead.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use calbridge::clock::ManualClock;
use calbridge::config::DirectoryConfig;
use calbridge_domain::SourceId;
use common::browser::{chromium_installed, png_size, ChromeDriver, Session};
use common::sse::EventStream;
use common::*;
use jiff::{SignedDuration, Timestamp};
use m365_emulator::{Emulator, EmulatorConfig};
use serde_json::{json, Value};

/// A Thursday morning: the generated organisation has meetings around it.
const AT: &str = "2026-12-03T09:42:00Z";
/// The room the test books now, and the one it keeps free for three hours.
const OCCUPIED_ROOM: &str = "room.1@contoso.example";
const FREE_ROOM: &str = "room.2@contoso.example";
/// A room kept free until the test books it while the page is open.
const BOOKED_LIVE_ROOM: &str = "room.3@contoso.example";
const LIVE_MEETING: &str = "Walk-in";
const MEETING: &str = "Quarterly planning";
const NEXT_MEETING: &str = "Design review";

/// How long the browser may take to show something before the test fails.
const BROWSER_PATIENCE: Duration = Duration::from_secs(30);

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/screenshots")
        .join(name)
}

/// Saves a screenshot for the README after checking it is a real picture of the window.
fn save_screenshot(png: &[u8], name: &str, width: u32, height: u32) {
    // The picture is the page's viewport: the window's width, and its height less the
    // browser's own bars.
    let (shot_width, shot_height) = png_size(png);
    assert!(
        shot_width == width && shot_height * 4 >= height * 3 && shot_height <= height,
        "{name}: {shot_width}×{shot_height} for a window of {width}×{height}"
    );
    // A blank window compresses to a few kilobytes; a page with text does not.
    assert!(
        png.len() > 15_000,
        "{name}: the screenshot is suspiciously small ({} bytes)",
        png.len()
    );
    let path = screenshot_path(name);
    std::fs::create_dir_all(path.parent().expect("docs/screenshots")).expect("the folder");
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
}

fn rooms_entry() -> DirectoryConfig {
    DirectoryConfig {
        rooms: Some("all".to_string()),
        ..DirectoryConfig::new(SourceId(SOURCE.to_string()))
    }
}

/// The panel's colours: free and occupied.
const GREEN: &str = "rgb(15, 122, 53)";
const RED: &str = "rgb(179, 38, 30)";

/// Whether the panel shows a state and has finished fading to its colour (0.4 s); a panel that
/// never takes its state's colour makes the wait time out.
fn panel_settled(shown: &Value) -> bool {
    match shown["state"].as_str() {
        Some("occupied") => shown["background"] == RED,
        Some("free") => shown["background"] == GREEN,
        _ => false,
    }
}

/// `address → room` of a `GET /api/v1/rooms` answer.
fn rooms_by_address(body: &Value) -> BTreeMap<String, Value> {
    body["rooms"]
        .as_array()
        .expect("a rooms array")
        .iter()
        .map(|room| {
            (
                room["address"].as_str().expect("an address").to_string(),
                room.clone(),
            )
        })
        .collect()
}

/// The note as the page shows it: without its hash tags.
fn shown_note(note: &Value) -> String {
    note_text(note.as_str().unwrap_or_default())
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_tab_and_room_panels_show_what_the_rooms_api_reports() {
    if !chromium_installed() {
        return;
    }
    init_logs();
    let at: Timestamp = AT.parse().expect("an instant");
    // 400 people come with 4 rooms in 3 buildings; the emulator's calendars are laid out
    // around `at`, and its clock stands there.
    let mut emulator_config = EmulatorConfig::generated(400, 5);
    emulator_config.clock = m365_emulator::Clock::manual(at);
    let emulator = Emulator::start(emulator_config)
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let graph = GraphClient::new(&ready).await;
    // The occupied room: a meeting from 12 minutes ago for another 48, then another one in
    // the afternoon; the free room: nothing for three hours, then a meeting.
    for room in [OCCUPIED_ROOM, FREE_ROOM, BOOKED_LIVE_ROOM] {
        graph.free_around(room, at).await;
    }
    let meeting_end = at + SignedDuration::from_mins(48);
    graph
        .create_event(
            OCCUPIED_ROOM,
            MEETING,
            at - SignedDuration::from_mins(12),
            meeting_end,
            "busy",
        )
        .await;
    graph
        .create_event(
            OCCUPIED_ROOM,
            NEXT_MEETING,
            at + SignedDuration::from_mins(78),
            at + SignedDuration::from_mins(138),
            "busy",
        )
        .await;

    let data_dir = tempfile::tempdir().expect("a temp dir");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data_dir.path(), &public_url, None);
    config.directory = vec![rooms_entry()];
    config.presence.show_subject = true;
    config.rooms.show = calbridge_presence::RoomShow::Subject;
    let running = start_service(config, Arc::new(ManualClock::new(at)), listener).await;
    let n_rooms = running.store.list_rooms().await.expect("the rooms").len();
    assert_eq!(n_rooms, 4, "the generated organisation's rooms");
    let api = Api::new(&running);
    let base = format!("http://{}", running.address);

    // The API's answer, once every room has its state: this is what the browser must show.
    let listed = wait_for_rooms(&api, n_rooms).await;
    let occupied = &listed[OCCUPIED_ROOM];
    assert_eq!(occupied["state"]["occupied"], true, "{occupied}");
    assert_eq!(occupied["state"]["current"]["title"], MEETING, "{occupied}");
    assert_eq!(
        occupied["state"]["current"]["end"],
        meeting_end.to_string(),
        "{occupied}"
    );
    let free = &listed[FREE_ROOM];
    assert_eq!(free["state"]["occupied"], false, "{free}");
    let buildings: std::collections::BTreeSet<String> = listed
        .values()
        .filter_map(|room| room["building"].as_str().map(str::to_string))
        .collect();
    assert!(
        buildings.len() >= 2,
        "rooms in several buildings: {buildings:?}"
    );

    let driver = ChromeDriver::start(data_dir.path()).await;
    let session = Session::open(&driver, data_dir.path(), 1400, 900).await;

    // --- The Rooms tab: every room with the state the API reports.
    open_rooms_tab(&session, &running).await;
    let cards_probe =
        "return Array.from(document.querySelectorAll('#rooms .room[data-room]')).map(card => ({
        address: card.dataset.room,
        state: card.dataset.state,
        building: card.dataset.building,
        hidden: card.hidden,
        note: card.querySelector('[data-col=note]').textContent,
        current: card.querySelector('[data-col=current]').textContent,
        next: card.querySelector('[data-col=next]').textContent,
        bars: card.querySelectorAll('.timeline .busy').length,
        currentBars: card.querySelectorAll('.timeline .busy.current').length,
        now: (card.querySelector('.timeline .now') || {style: {}}).style.left || null }));";
    let cards = session
        .wait_until(
            "a card with its timeline for every room",
            cards_probe,
            BROWSER_PATIENCE,
            |cards| {
                cards.as_array().is_some_and(|cards| {
                    cards.len() == n_rooms && cards.iter().all(|card| !card["now"].is_null())
                })
            },
        )
        .await;
    let cards: BTreeMap<String, Value> = cards
        .as_array()
        .expect("the cards")
        .iter()
        .map(|card| {
            (
                card["address"].as_str().unwrap_or_default().to_string(),
                card.clone(),
            )
        })
        .collect();
    assert_eq!(
        cards.keys().collect::<Vec<_>>(),
        listed.keys().collect::<Vec<_>>(),
        "one card per room"
    );
    // The local day is UTC here: "now" (09:42) is 40.4 % into it.
    let expected_now = (9.0 * 60.0 + 42.0) / (24.0 * 60.0) * 100.0;
    for (address, room) in &listed {
        let card = &cards[address];
        let state = if room["state"]["occupied"] == true {
            "occupied"
        } else {
            "free"
        };
        assert_eq!(card["state"], state, "{address}: {card}");
        assert_eq!(
            card["note"],
            shown_note(&room["state"]["note"]),
            "{address}: {card}"
        );
        assert_eq!(card["building"], room["building"], "{address}: {card}");
        if let Some(title) = room["state"]["current"]["title"].as_str() {
            let current = card["current"].as_str().unwrap_or_default();
            assert!(current.contains(title), "{address}: {card}");
            assert_eq!(
                card["currentBars"], 1,
                "the current meeting is marked: {card}"
            );
        } else {
            assert_eq!(card["current"], "—", "{address}: {card}");
        }
        let now_left: f64 = card["now"]
            .as_str()
            .and_then(|left| left.trim_end_matches('%').parse().ok())
            .unwrap_or_else(|| panic!("{address}: the now line's position: {card}"));
        // The service's clock stands at 09:42; the page moves on from it with the browser's
        // seconds, a few of which pass during the test (0.07 % a minute).
        assert!(
            (now_left - expected_now).abs() < 0.3,
            "{address}: now at {now_left} %, expected {expected_now:.2} %"
        );
    }
    assert!(
        cards[OCCUPIED_ROOM]["bars"].as_u64() >= Some(2),
        "both meetings of the occupied room are on its timeline: {}",
        cards[OCCUPIED_ROOM]
    );
    assert!(
        cards[OCCUPIED_ROOM]["next"]
            .as_str()
            .is_some_and(|next| next.contains(NEXT_MEETING)),
        "{}",
        cards[OCCUPIED_ROOM]
    );
    let png = session.screenshot().await;
    save_screenshot(&png, "admin-rooms.png", 1400, 900);

    // The filter by building hides the rooms of the other buildings.
    let building = listed[FREE_ROOM]["building"]
        .as_str()
        .expect("the free room's building")
        .to_string();
    session
        .script(&format!(
            "const select = document.getElementById('room-building');
             select.value = {building};
             select.dispatchEvent(new Event('change'));
             return select.value;",
            building = json!(building)
        ))
        .await;
    let filtered = session
        .wait_until(
            "the building filter",
            cards_probe,
            BROWSER_PATIENCE,
            |cards| {
                cards.as_array().is_some_and(|cards| {
                    cards.iter().all(|card| {
                        (card["building"] == building.as_str()) != (card["hidden"] == true)
                    })
                })
            },
        )
        .await;
    let visible: Vec<&str> = filtered
        .as_array()
        .expect("the cards")
        .iter()
        .filter(|card| card["hidden"] == false)
        .filter_map(|card| card["address"].as_str())
        .collect();
    let in_building = api
        .get_authorized(&format!(
            "/api/v1/rooms?building={}",
            calbridge_net::percent::encode_query_value(&building)
        ))
        .await;
    let mut visible_sorted = visible.clone();
    visible_sorted.sort_unstable();
    assert_eq!(
        visible_sorted,
        rooms_by_address(&in_building)
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "the page's filter shows the rooms the API's filter lists"
    );
    assert!(visible.len() < n_rooms, "others are hidden: {filtered}");

    // A booking made while the page is open reaches the card through the live stream (Graph
    // notifies the service, which sends the room event): the service's clock stands still, so
    // only the stream can change what the card shows.
    let live_end = at + SignedDuration::from_mins(25);
    graph
        .create_event(
            BOOKED_LIVE_ROOM,
            LIVE_MEETING,
            at - SignedDuration::from_mins(5),
            live_end,
            "busy",
        )
        .await;
    let booked = session
        .wait_until(
            "the live booking on its room's card",
            cards_probe,
            Duration::from_secs(60),
            |cards| {
                cards.as_array().is_some_and(|cards| {
                    cards.iter().any(|card| {
                        card["address"] == BOOKED_LIVE_ROOM
                            && card["state"] == "occupied"
                            && card["current"]
                                .as_str()
                                .is_some_and(|current| current.contains(LIVE_MEETING))
                    })
                })
            },
        )
        .await;
    let api_after = wait_for_rooms(&api, n_rooms).await;
    assert_eq!(
        api_after[BOOKED_LIVE_ROOM]["state"]["current"]["end"],
        live_end.to_string(),
        "the API reports the booking the page shows: {booked}"
    );

    // --- The panels, on a tablet-sized window.
    session.resize(1280, 800).await;
    let panel_probe = "return {
        state: document.body.dataset.state || null,
        background: getComputedStyle(document.body).backgroundColor,
        status: document.getElementById('status').textContent,
        name: document.getElementById('name').textContent,
        note: document.getElementById('note').textContent,
        current: document.getElementById('current').hidden ? null : document.getElementById('current-title').textContent,
        who: document.getElementById('current-who').textContent,
        next: document.getElementById('next').textContent,
        checkIn: !document.getElementById('checkin').hidden };";
    let panel_of = |room: &str| {
        let api = &api;
        let room = room.to_string();
        async move {
            let answer = api
                .get_authorized(&format!("/api/v1/rooms/{room}/panel"))
                .await;
            assert_eq!(answer["room"], room.as_str(), "{answer}");
            answer["path"]
                .as_str()
                .expect("the panel's path")
                .to_string()
        }
    };
    let occupied_path = panel_of(OCCUPIED_ROOM).await;
    session.goto(&format!("{base}{occupied_path}")).await;
    let shown = session
        .wait_until(
            "the occupied room's panel",
            panel_probe,
            BROWSER_PATIENCE,
            panel_settled,
        )
        .await;
    assert_eq!(shown["state"], "occupied", "{shown}");
    assert_eq!(shown["background"], RED, "red: {shown}");
    assert_eq!(shown["status"], "Occupied", "{shown}");
    assert_eq!(
        shown["current"], occupied["state"]["current"]["title"],
        "{shown}"
    );
    assert_eq!(shown["name"], occupied["display_name"], "{shown}");
    assert!(
        shown["note"]
            .as_str()
            .is_some_and(|note| note.starts_with("until ")),
        "{shown}"
    );
    assert!(
        shown["next"]
            .as_str()
            .is_some_and(|next| next.contains(NEXT_MEETING)),
        "{shown}"
    );
    assert_eq!(
        shown["checkIn"], false,
        "no check-in without check_in.open: {shown}"
    );
    let png = session.screenshot().await;
    save_screenshot(&png, "panel-occupied.png", 1280, 800);

    let free_path = panel_of(FREE_ROOM).await;
    session.goto(&format!("{base}{free_path}")).await;
    let shown = session
        .wait_until(
            "the free room's panel",
            panel_probe,
            BROWSER_PATIENCE,
            panel_settled,
        )
        .await;
    assert_eq!(shown["state"], "free", "{shown}");
    assert_eq!(shown["background"], GREEN, "green: {shown}");
    assert_eq!(shown["status"], "Free", "{shown}");
    assert!(shown["current"].is_null(), "no current meeting: {shown}");
    let next_title = free["state"]["next"]["title"].as_str();
    match next_title {
        Some(title) => assert!(
            shown["next"]
                .as_str()
                .is_some_and(|next| next.contains(title)),
            "{shown}"
        ),
        None => assert_eq!(shown["next"], "Nothing more today", "{shown}"),
    }
    let png = session.screenshot().await;
    save_screenshot(&png, "panel-free.png", 1280, 800);
    session.close().await;
    driver.kill();

    // --- What a panel token opens: its room's panel, nothing else.
    let token_of = |path: &str| {
        path.split_once("?token=")
            .map(|(_, token)| token.to_string())
            .expect("a token in the path")
    };
    let occupied_token = token_of(&occupied_path);
    let free_token = token_of(&free_path);
    assert_ne!(occupied_token, free_token, "a token per room");
    let free_segment = calbridge_net::percent::encode_path_segment(FREE_ROOM);
    for path in [
        format!("/panel/{free_segment}?token={occupied_token}"),
        format!("/panel/{free_segment}/state?token={occupied_token}"),
        format!("/panel/{free_segment}/state?token=00{free_token}"),
    ] {
        let (status, body) = api.send(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 403, "{path}: {body}");
        if !path.contains("/state") {
            let page = body.as_str().unwrap_or_default();
            assert!(
                page.contains("Panel link not valid") && page.contains("does not open room"),
                "a page a screen can show: {page}"
            );
        }
        assert!(
            !body.to_string().contains(&occupied_token) && !body.to_string().contains(&free_token),
            "no token in the answer: {body}"
        );
    }
    for path in [
        format!("/panel/{free_segment}"),
        format!("/panel/{free_segment}/state?token="),
    ] {
        let (status, body) = api.send(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let (status, state) = api
        .send(
            reqwest::Method::GET,
            &format!("/panel/{free_segment}/state?token={free_token}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["address"], FREE_ROOM, "{state}");
    assert_eq!(state["state"]["occupied"], false, "{state}");
    // The panel token is no API token, however it is sent; the API token opens no panel.
    for path in ["/api/v1/rooms", "/api/v1/presence/stream"] {
        let (status, body) = api
            .send(reqwest::Method::GET, path, Some(&free_token))
            .await;
        assert_eq!(status, 401, "{path} with a panel token: {body}");
    }
    let (status, _) = api
        .send(
            reqwest::Method::GET,
            &format!("/api/v1/presence/stream?access_token={free_token}"),
            None,
        )
        .await;
    assert_eq!(status, 401, "the stream with a panel token");
    let (status, _) = api
        .send(
            reqwest::Method::GET,
            &format!(
                "/panel/{free_segment}/state?token={}",
                calbridge_net::percent::encode_query_value(running.api_token.expose())
            ),
            None,
        )
        .await;
    assert_eq!(status, 403, "the API token is no panel token");

    // Check-in is off in this configuration: the panel and the API say so alike.
    let occupied_segment = calbridge_net::percent::encode_path_segment(OCCUPIED_ROOM);
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            &format!("/panel/{occupied_segment}/check-in?token={occupied_token}"),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.starts_with("check-in is off: set [rooms] check_in_minutes")),
        "{body}"
    );
    let (status, _) = api
        .send(
            reqwest::Method::POST,
            &format!("/panel/{occupied_segment}/check-in?token={free_token}"),
            None,
        )
        .await;
    assert_eq!(status, 403, "another room's token checks nothing in");
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/rooms/{occupied_segment}/check-in"),
            Some(running.api_token.expose()),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    running.shutdown().await;
    emulator.shutdown().await;
}

/// A tenant whose places API lists no room: the Rooms tab says how to make room lists instead
/// of showing an empty page, and `GET /api/v1/rooms` carries the same hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_tab_of_a_tenant_without_rooms_says_how_to_make_room_lists() {
    if !chromium_installed() {
        return;
    }
    init_logs();
    let (emulator, running, _clock, data_dir) = start_on_scenario(
        tenant_without_rooms("rooms-browser-secret"),
        "rooms-browser-secret",
        |_| {},
    )
    .await;
    let api = Api::new(&running);
    let listed = api.get_authorized("/api/v1/rooms").await;
    assert_eq!(listed["rooms"], json!([]), "{listed}");
    let hint = listed["hints"][0].as_str().unwrap_or_default().to_string();
    assert!(hint.contains("New-DistributionGroup -RoomList"), "{listed}");
    assert!(hint.contains("Set-Place"), "{listed}");

    let driver = ChromeDriver::start(data_dir.path()).await;
    let session = Session::open(&driver, data_dir.path(), 1400, 900).await;
    open_rooms_tab(&session, &running).await;
    let shown = session
        .wait_until(
            "the note on room lists",
            "const hint = document.getElementById('rooms-hint');
             return {hint: hint.hidden ? null : hint.textContent,
                     cards: document.querySelectorAll('#rooms .room').length,
                     filters: !document.getElementById('room-filters').hidden};",
            BROWSER_PATIENCE,
            |shown| !shown["hint"].is_null(),
        )
        .await;
    let text = shown["hint"].as_str().unwrap_or_default();
    assert!(
        text.contains(&hint),
        "the API's hint is on the page: {shown}"
    );
    assert!(text.contains("New-DistributionGroup -RoomList"), "{shown}");
    assert!(text.contains("rooms = \"all\""), "{shown}");
    assert_eq!(shown["cards"], 0, "{shown}");
    assert_eq!(shown["filters"], false, "no filters without rooms: {shown}");
    session.close().await;
    driver.kill();
    running.shutdown().await;
    emulator.shutdown().await;
}

/// The two rooms of a [`two_rooms`] tenant: Room 1 in Building 1 and Room 2 in Building 2.
const ROOM_1: &str = "room.1@contoso.example";
const ROOM_2: &str = "room.2@contoso.example";
/// The check-in test checks in Room 1's meeting on its panel; nobody checks in Room 2's.
const CHECK_IN_ROOM: &str = ROOM_1;
const RELEASED_ROOM: &str = ROOM_2;
const SCENARIO_SECRET: &str = "rooms-browser-secret";

/// A tenant of Ada and the two rooms, its app granted `roles`, and `events` (scenario
/// `[[events]]` TOML): Ada's meetings, which the rooms among their attendees hold in their own
/// calendars too, so that declining one is the room's answer to its organizer.
fn two_rooms(roles: &[&str], events: &str) -> m365_emulator::Scenario {
    let text = format!(
        r#"
[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "calbridge"
roles = {roles}
secrets = [{{ value = "{SCENARIO_SECRET}" }}]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada Lovelace"

[[rooms]]
upn = "{ROOM_1}"
display_name = "Room 1"
office_location = "Building 1"

[[rooms]]
upn = "{ROOM_2}"
display_name = "Room 2"
office_location = "Building 2"
{events}"#,
        roles = json!(roles),
    );
    m365_emulator::Scenario::from_toml_str(&text).expect("the scenario parses")
}

/// A `[[events]]` entry of [`two_rooms`]: Ada's meeting `subject` in `room`, from `start`
/// (relative to the emulator's clock, such as `-3m`) for `duration`.
fn booking(room: &str, subject: &str, start: &str, duration: &str) -> String {
    format!(
        r#"
[[events]]
mailbox = "ada@contoso.example"
subject = "{subject}"
start = "{start}"
duration = "{duration}"
attendees = ["{room}"]
"#
    )
}

/// The emulator serving `scenario` (its app's secret `secret`) and the service following its
/// rooms, both on a clock at [`AT`] (the service's a [`ManualClock`] the test moves), after
/// `configure` changed the service's configuration; the temp dir holds the store.
async fn start_on_scenario(
    scenario: m365_emulator::Scenario,
    secret: &str,
    configure: impl FnOnce(&mut calbridge::config::Config),
) -> (
    m365_emulator::RunningEmulator,
    calbridge::service::RunningService,
    ManualClock,
    tempfile::TempDir,
) {
    let at: Timestamp = AT.parse().expect("an instant");
    let mut emulator_config = EmulatorConfig::scenario(scenario);
    emulator_config.clock = m365_emulator::Clock::manual(at);
    let emulator = Emulator::start(emulator_config)
        .await
        .expect("the emulator starts");
    let mut ready = emulator.ready().clone();
    ready.client_secret = Some(secret.to_string());
    let data_dir = tempfile::tempdir().expect("a temp dir");
    let unused_file = data_dir.path().join("unused.csv");
    std::fs::write(&unused_file, "address\n").expect("write");
    let (listener, public_url) = listen(0).await;
    let mut config = config_for(&ready, data_dir.path(), &public_url, Some(&unused_file));
    config.directory = vec![rooms_entry()];
    configure(&mut config);
    let clock = ManualClock::new(at);
    let running = start_service(config, Arc::new(clock.clone()), listener).await;
    (emulator, running, clock, data_dir)
}

/// Check-in on (`check_in_minutes = 10`): the panel's button checks the running meeting in (the
/// panel, the room's JSON and the check-in log say so, and the Rooms tab lists it); the other
/// room's meeting, which nobody checks in, is released when the service's clock reaches its
/// start + 10 minutes, and the Rooms tab's table says "released".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checking_in_on_the_panel_and_a_release_show_on_the_rooms_tab() {
    if !chromium_installed() {
        return;
    }
    init_logs();
    let at: Timestamp = AT.parse().expect("an instant");
    // Both rooms' meetings started a few minutes before the test's instant.
    let scenario = two_rooms(
        &["Calendars.ReadWrite", "User.Read.All", "Place.Read.All"],
        &[
            booking(CHECK_IN_ROOM, "Stand-up", "-3m", "30m"),
            booking(RELEASED_ROOM, "Budget review", "-2m", "40m"),
        ]
        .concat(),
    );
    let (emulator, running, clock, data_dir) =
        start_on_scenario(scenario, SCENARIO_SECRET, |config| {
            config.presence.show_subject = true;
            config.rooms.show = calbridge_presence::RoomShow::Subject;
            config.rooms.check_in_minutes = Some(10);
        })
        .await;
    let api = Api::new(&running);
    let base = format!("http://{}", running.address);

    // Both meetings run and wait for a check-in until their start + 10 minutes.
    let check_in_deadline = at + SignedDuration::from_mins(7);
    let release_deadline = at + SignedDuration::from_mins(8);
    let listed = wait_for_api(
        &api,
        "/api/v1/rooms",
        "both rooms open for check-in",
        |body| {
            let rooms = rooms_by_address(body);
            rooms.len() == 2 && rooms.values().all(|room| room["check_in"]["open"] == true)
        },
    )
    .await;
    assert_eq!(listed["check_in"]["minutes"], 10, "{listed}");
    assert_eq!(listed["check_in"]["refused_by"], json!([]), "{listed}");
    let rooms = rooms_by_address(&listed);
    assert_eq!(
        rooms[CHECK_IN_ROOM]["check_in"]["deadline"],
        check_in_deadline.to_string(),
        "{listed}"
    );
    assert_eq!(
        rooms[RELEASED_ROOM]["check_in"]["deadline"],
        release_deadline.to_string(),
        "{listed}"
    );
    assert_eq!(rooms[CHECK_IN_ROOM]["check_in"]["checked_in"], false);

    // --- The panel: the button, a click, and the meeting checked in.
    let driver = ChromeDriver::start(data_dir.path()).await;
    let session = Session::open(&driver, data_dir.path(), 1280, 800).await;
    let panel = api
        .get_authorized(&format!("/api/v1/rooms/{CHECK_IN_ROOM}/panel"))
        .await;
    let panel_path = panel["path"].as_str().expect("the panel's path");
    session.goto(&format!("{base}{panel_path}")).await;
    let panel_probe = "return {
        state: document.body.dataset.state || null,
        background: getComputedStyle(document.body).backgroundColor,
        current: document.getElementById('current').hidden ? null : document.getElementById('current-title').textContent,
        checkIn: !document.getElementById('checkin').hidden,
        checkedIn: !document.getElementById('checked-in').hidden,
        result: document.getElementById('checkin-result').hidden ? null : document.getElementById('checkin-result').textContent };";
    let shown = session
        .wait_until(
            "the panel's check-in button",
            panel_probe,
            BROWSER_PATIENCE,
            |shown| panel_settled(shown) && shown["checkIn"] == true,
        )
        .await;
    assert_eq!(shown["state"], "occupied", "{shown}");
    // The room's copy of a meeting is named as Exchange names it (the organizer by default).
    assert_eq!(
        shown["current"], rooms[CHECK_IN_ROOM]["state"]["current"]["title"],
        "{shown}"
    );
    assert_eq!(shown["checkedIn"], false, "{shown}");
    let png = session.screenshot().await;
    save_screenshot(&png, "room-panel-check-in.png", 1280, 800);

    // The live stream says so too, as the room's state with its check-in (an open admin page
    // shows it at once).
    let mut stream = EventStream::connect(&base, running.api_token.expose()).await;
    session.click("#checkin").await;
    let event = stream
        .wait_for(
            "the room event of the check-in",
            BROWSER_PATIENCE,
            |event| {
                event.name == "room"
                    && event.data["address"] == CHECK_IN_ROOM
                    && event.data["check_in"]["checked_in"] == true
            },
        )
        .await;
    assert_eq!(event.data["check_in"]["open"], false, "{:?}", event.data);
    let shown = session
        .wait_until(
            "the meeting checked in on the panel",
            panel_probe,
            BROWSER_PATIENCE,
            |shown| shown["checkedIn"] == true && shown["checkIn"] == false,
        )
        .await;
    assert_eq!(shown["result"], "Checked in", "{shown}");
    assert_eq!(shown["state"], "occupied", "still booked: {shown}");
    let room = api
        .get_authorized(&format!("/api/v1/rooms/{CHECK_IN_ROOM}"))
        .await;
    assert_eq!(room["check_in"]["checked_in"], true, "{room}");
    assert_eq!(room["check_in"]["open"], false, "{room}");
    let log = api.get_authorized("/api/v1/rooms/check-ins").await;
    let records = log["meetings"].as_array().expect("the log's meetings");
    assert_eq!(records.len(), 1, "{log}");
    assert_eq!(records[0]["room"], CHECK_IN_ROOM, "{log}");
    assert_eq!(records[0]["state"], "checked_in", "{log}");
    assert_eq!(records[0]["at"], at.to_string(), "{log}");
    assert_eq!(
        records[0]["meeting_start"],
        (at - SignedDuration::from_mins(3)).to_string(),
        "{log}"
    );

    // --- The Rooms tab: the rule, the badges, and the check-in in the table.
    session.resize(1400, 900).await;
    open_rooms_tab(&session, &running).await;
    let tab_probe = "return {
        rule: document.getElementById('check-in-rule').hidden ? null : document.getElementById('check-in-rule').textContent,
        refusals: document.querySelectorAll('#check-in-refusals [data-refused-by]').length,
        badges: Object.fromEntries(Array.from(document.querySelectorAll('#rooms .room[data-room]')).map(card => {
            const badge = card.querySelector('[data-col=check-in]');
            return [card.dataset.room, badge ? {kind: badge.dataset.checkIn, text: badge.textContent, deadline: badge.dataset.deadline || null} : null]; })),
        rows: Array.from(document.querySelectorAll('#check-in-rows tr[data-room]')).map(row => ({
            room: row.dataset.room, state: row.dataset.state,
            cells: Array.from(row.cells).map(cell => cell.textContent) })) };";
    let shown = session
        .wait_until(
            "the check-in on the Rooms tab",
            tab_probe,
            BROWSER_PATIENCE,
            |shown| {
                shown["rows"].as_array().is_some_and(|rows| rows.len() == 1)
                    && shown["badges"][RELEASED_ROOM].is_object()
            },
        )
        .await;
    assert_eq!(
        shown["rule"],
        "Check-in: meetings not checked in within 10 minutes of their start are released \
         (declined in the room's calendar, the room turns free).",
        "{shown}"
    );
    assert_eq!(shown["refusals"], 0, "{shown}");
    assert_eq!(
        shown["badges"][CHECK_IN_ROOM]["kind"], "checked_in",
        "{shown}"
    );
    assert_eq!(
        shown["badges"][CHECK_IN_ROOM]["text"], "✓ checked in",
        "{shown}"
    );
    assert_eq!(shown["badges"][RELEASED_ROOM]["kind"], "open", "{shown}");
    assert_eq!(
        shown["badges"][RELEASED_ROOM]["deadline"],
        release_deadline.to_string(),
        "{shown}"
    );
    assert!(
        shown["badges"][RELEASED_ROOM]["text"]
            .as_str()
            .is_some_and(|text| text.starts_with("check-in open until ")),
        "{shown}"
    );
    let row = &shown["rows"][0];
    assert_eq!(row["room"], CHECK_IN_ROOM, "{shown}");
    assert_eq!(row["state"], "checked_in", "{shown}");
    assert_eq!(row["cells"][1], "Room 1", "the room's name: {shown}");
    assert_eq!(row["cells"][3], "checked in", "{shown}");

    // --- The release: nobody checks in the other room's meeting; its deadline comes on the
    // service's clock. The page stays open: the room's event on the stream brings the release.
    let check_ins = running.check_ins.clone().expect("check-in is on");
    wait_for("the deadline known to the guard", PATIENCE, || {
        (check_ins.n_waiting() >= 1).then_some(())
    })
    .await;
    clock.set(release_deadline);
    let log = wait_for_api(&api, "/api/v1/rooms/check-ins", "the release", |log| {
        log["meetings"].as_array().is_some_and(|meetings| {
            meetings
                .iter()
                .any(|record| record["room"] == RELEASED_ROOM && record["state"] == "released")
        })
    })
    .await;
    let released = log["meetings"]
        .as_array()
        .and_then(|meetings| {
            meetings
                .iter()
                .find(|record| record["room"] == RELEASED_ROOM)
        })
        .expect("the release's record");
    assert_eq!(released["at"], release_deadline.to_string(), "{log}");
    let room = api
        .get_authorized(&format!("/api/v1/rooms/{RELEASED_ROOM}"))
        .await;
    assert_eq!(
        room["state"]["occupied"], false,
        "free once released: {room}"
    );
    let shown = session
        .wait_until(
            "the release on the Rooms tab",
            tab_probe,
            Duration::from_secs(60),
            |shown| {
                shown["rows"].as_array().is_some_and(|rows| {
                    rows.iter()
                        .any(|row| row["room"] == RELEASED_ROOM && row["state"] == "released")
                })
            },
        )
        .await;
    let rows = shown["rows"].as_array().expect("the rows");
    assert_eq!(rows.len(), 2, "the check-in and the release: {shown}");
    assert_eq!(rows[0]["room"], RELEASED_ROOM, "newest first: {shown}");
    assert_eq!(rows[0]["cells"][1], "Room 2", "{shown}");
    assert_eq!(rows[0]["cells"][3], "released", "{shown}");
    assert_eq!(
        rows[0]["cells"][4], released["detail"],
        "the rule as the log has it: {shown}"
    );
    assert_eq!(rows[1]["state"], "checked_in", "{shown}");
    // The released room's card flashes for its change; the picture waits for it to end.
    session
        .wait_until(
            "the cards' animations to end",
            "return document.getAnimations().length;",
            BROWSER_PATIENCE,
            |running| running == &json!(0),
        )
        .await;
    let png = session.screenshot().await;
    save_screenshot(&png, "admin-rooms-check-ins.png", 1400, 900);
    // The checked-in meeting was not released at its own deadline, which has passed too.
    let room = api
        .get_authorized(&format!("/api/v1/rooms/{CHECK_IN_ROOM}"))
        .await;
    assert_eq!(room["state"]["occupied"], true, "{room}");
    assert_eq!(room["check_in"]["checked_in"], true, "{room}");

    session.close().await;
    driver.kill();
    running.shutdown().await;
    emulator.shutdown().await;
}

/// A source that may only read calendars (`Calendars.Read`) releases nothing: the meeting stays
/// booked, and the Rooms tab shows a warning box naming the source with Graph's answer, and the
/// refused release in its table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_may_not_decline_is_a_warning_on_the_rooms_tab() {
    if !chromium_installed() {
        return;
    }
    init_logs();
    let at: Timestamp = AT.parse().expect("an instant");
    let scenario = two_rooms(
        &["Calendars.Read", "User.Read.All", "Place.Read.All"],
        &booking(RELEASED_ROOM, "Budget review", "-2m", "40m"),
    );
    let (emulator, running, clock, data_dir) =
        start_on_scenario(scenario, SCENARIO_SECRET, |config| {
            config.rooms.check_in_minutes = Some(10);
        })
        .await;
    let api = Api::new(&running);
    let check_ins = running.check_ins.clone().expect("check-in is on");
    wait_for("the deadline known to the guard", PATIENCE, || {
        (check_ins.n_waiting() == 1).then_some(())
    })
    .await;
    clock.set(at + SignedDuration::from_mins(8));
    let listed = wait_for_api(&api, "/api/v1/rooms", "the refusal", |body| {
        body["check_in"]["refused_by"]
            .as_array()
            .is_some_and(|refused| !refused.is_empty())
    })
    .await;
    let refusal = &listed["check_in"]["refused_by"][0];
    assert_eq!(refusal["source"], SOURCE, "{listed}");
    let error = refusal["error"].as_str().expect("the source's answer");
    assert_eq!(
        rooms_by_address(&listed)[RELEASED_ROOM]["state"]["occupied"],
        true,
        "still booked: {listed}"
    );

    let driver = ChromeDriver::start(data_dir.path()).await;
    let session = Session::open(&driver, data_dir.path(), 1400, 900).await;
    open_rooms_tab(&session, &running).await;
    let shown = session
        .wait_until(
            "the warning and the refused release",
            "return {
                badges: Object.fromEntries(Array.from(document.querySelectorAll('#rooms .room[data-room]')).map(card => [card.dataset.room, (card.querySelector('[data-col=check-in]') || {}).textContent || null])),
                warnings: Array.from(document.querySelectorAll('#check-in-refusals [data-refused-by]')).map(box => ({
                    source: box.dataset.refusedBy, text: box.textContent, visible: box.offsetParent !== null })),
                rows: Array.from(document.querySelectorAll('#check-in-rows tr[data-room]')).map(row => ({
                    room: row.dataset.room, state: row.dataset.state,
                    cells: Array.from(row.cells).map(cell => cell.textContent) })) };",
            BROWSER_PATIENCE,
            |shown| {
                shown["warnings"].as_array().is_some_and(|boxes| boxes.len() == 1)
                    && shown["rows"].as_array().is_some_and(|rows| rows.len() == 1)
            },
        )
        .await;
    let warning = &shown["warnings"][0];
    assert_eq!(warning["source"], SOURCE, "{shown}");
    assert_eq!(warning["visible"], true, "{shown}");
    let text = warning["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("Source {SOURCE} releases nothing"))
            && text.contains("Calendars.ReadWrite")
            && text.contains(error),
        "the source, the fix and its answer: {shown}"
    );
    // The meeting is still booked and may still be checked in.
    assert_eq!(
        shown["badges"][RELEASED_ROOM], "check-in open, not released",
        "{shown}"
    );
    let row = &shown["rows"][0];
    assert_eq!(row["room"], RELEASED_ROOM, "{shown}");
    assert_eq!(row["state"], "release_failed", "{shown}");
    assert_eq!(row["cells"][3], "release refused", "{shown}");

    session.close().await;
    driver.kill();
    running.shutdown().await;
    emulator.shutdown().await;
}

/// `GET /api/v1/rooms?agenda=today` (what the Rooms tab reads, one request for every room's
/// day): each listed room with the `agenda` its detail has, from the list's one store read; the
/// list without the option is as before, and another value is refused with the field and the
/// value it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agenda_today_lists_every_rooms_day_as_its_detail_does() {
    init_logs();
    let at: Timestamp = AT.parse().expect("an instant");
    // Room 1: a meeting running since half an hour ago, one in two hours and one tomorrow (the
    // stored calendar starts at the first sync, so today's agenda holds the first two);
    // Room 2: nothing.
    let events = [
        booking(ROOM_1, "Running", "-30m", "1h"),
        booking(ROOM_1, "Later", "+2h", "1h"),
        booking(ROOM_1, "Tomorrow", "+1d", "1h"),
    ]
    .concat();
    let scenario = two_rooms(
        &["Calendars.Read", "User.Read.All", "Place.Read.All"],
        &events,
    );
    let (emulator, running, _clock, _data_dir) =
        start_on_scenario(scenario, SCENARIO_SECRET, |_| {}).await;
    let api = Api::new(&running);

    let body = wait_for_api(
        &api,
        "/api/v1/rooms?agenda=today",
        "both rooms with a state",
        |body| every_room_has_a_state(body, 2),
    )
    .await;
    assert_eq!(body["timezone"], "UTC", "{body}");
    let rooms = rooms_by_address(&body);
    let day_start: Timestamp = "2026-12-03T00:00:00Z".parse().expect("an instant");
    let day_end: Timestamp = "2026-12-04T00:00:00Z".parse().expect("an instant");
    let agenda = &rooms[ROOM_1]["agenda"];
    assert_eq!(agenda["from"], day_start.to_string(), "{body}");
    assert_eq!(agenda["to"], day_end.to_string(), "{body}");
    let starts: Vec<&str> = agenda["meetings"]
        .as_array()
        .expect("the meetings")
        .iter()
        .filter_map(|meeting| meeting["start"].as_str())
        .collect();
    let running_start = (at - SignedDuration::from_mins(30)).to_string();
    let later_start = (at + SignedDuration::from_hours(2)).to_string();
    assert_eq!(
        starts,
        [running_start.as_str(), later_start.as_str()],
        "today's two meetings, not tomorrow's: {body}"
    );
    assert_eq!(rooms[ROOM_2]["agenda"]["meetings"], json!([]), "{body}");
    // Each room's agenda is its detail's.
    for (address, room) in &rooms {
        let detail = api
            .get_authorized(&format!("/api/v1/rooms/{address}"))
            .await;
        assert_eq!(room["agenda"], detail["agenda"], "{address}: {detail}");
        assert_eq!(body["timezone"], detail["timezone"], "{address}: {detail}");
        assert_eq!(room["state"], detail["state"], "{address}: {detail}");
    }

    // Without the option the list is as before: no agenda, no zone.
    let plain = api.get_authorized("/api/v1/rooms").await;
    assert!(plain.get("timezone").is_none(), "{plain}");
    assert!(
        rooms_by_address(&plain)
            .values()
            .all(|room| room.get("agenda").is_none()),
        "{plain}"
    );
    // With a filter: the rooms it leaves, each with its day.
    let filtered = api
        .get_authorized("/api/v1/rooms?building=Building%202&agenda=today")
        .await;
    let filtered_rooms = rooms_by_address(&filtered);
    assert_eq!(
        filtered_rooms.keys().collect::<Vec<_>>(),
        [ROOM_2],
        "{filtered}"
    );
    assert_eq!(
        filtered_rooms[ROOM_2]["agenda"]["from"],
        day_start.to_string(),
        "{filtered}"
    );

    // Another day is refused with the field and the one value it takes.
    for query in ["agenda=tomorrow", "agenda=", "agenda=TODAY"] {
        let (status, answer) = api
            .get(
                &format!("/api/v1/rooms?{query}"),
                Some(running.api_token.expose()),
            )
            .await;
        assert_eq!(status, 400, "{query}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("agenda: unknown variant") && error.contains("expected `today`"),
            "{query}: the field and its one value: {answer}"
        );
    }

    running.shutdown().await;
    emulator.shutdown().await;
}

/// `path`'s answer once `done` holds for it; fails after [`PATIENCE`] with the last answer.
async fn wait_for_api(api: &Api, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        let body = api.get_authorized(path).await;
        if done(&body) {
            return body;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: {path} still answers {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /api/v1/rooms` once every room has a state (the first presence of each is decided
/// shortly after the first sync).
async fn wait_for_rooms(api: &Api, n_rooms: usize) -> BTreeMap<String, Value> {
    let body = wait_for_api(
        api,
        "/api/v1/rooms",
        "every room listed with a state",
        |body| every_room_has_a_state(body, n_rooms),
    )
    .await;
    rooms_by_address(&body)
}

/// Whether a rooms list has `n_rooms` rooms, each with its state's note.
fn every_room_has_a_state(body: &Value, n_rooms: usize) -> bool {
    let listed = rooms_by_address(body);
    listed.len() == n_rooms
        && listed
            .values()
            .all(|room| room["state"]["note"].is_string())
}

/// Opens the admin page with the API token and switches to its Rooms tab.
async fn open_rooms_tab(session: &Session<'_>, running: &calbridge::service::RunningService) {
    session
        .goto(&format!(
            "http://{}/#token={}",
            running.address,
            calbridge_net::percent::encode_query_value(running.api_token.expose())
        ))
        .await;
    session
        .wait_until(
            "the admin page's tabs",
            "return !document.getElementById('tabs').hidden;",
            BROWSER_PATIENCE,
            |shown| shown == &json!(true),
        )
        .await;
    session
        .script("document.querySelector('#tabs button[data-tab=rooms]').click(); return true;")
        .await;
}
