//! Three `calbridge run` processes on one PostgreSQL, behind a load balancer that Graph posts
//! its notifications to, restarted in every way an operator or an outage restarts them:
//!
//! - 1,000 people: each followed by exactly one process, each with the presence the emulator's
//!   calendar gives at that moment; a notification that reaches a process that does not follow
//!   the person still reaches their presence;
//! - a rolling restart (SIGTERM, start again) of all three, one at a time, while meetings are
//!   booked through Graph: every one reaches presence;
//! - the PostgreSQL server stopped and started again mid-run (a server of the test's own): the
//!   processes renew their leases again, report healthy, and lose no meeting booked meanwhile.
//!
//! PostgreSQL is the server of `CALBRIDGE_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), or for the restart test one started from
//! `/usr/lib/postgresql/15/bin`; without them the tests say they skipped, unless
//! `CALBRIDGE_REQUIRE_SERVICES=1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{free_port, Balancer, OwnPostgres, Process, ProcessConfig};
use common::*;
use futures_util::StreamExt;
use jiff::{SignedDuration, Timestamp};
use m365_emulator::{Emulator, EmulatorConfig};
use serde_json::Value;

const LEASE_SECONDS: u64 = 3;

/// The tests of this file each run three processes; on a CI machine of two cores they take
/// turns rather than starve each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The three processes of a test, by name, with the load balancer in front of them.
struct Cluster<'a> {
    processes: BTreeMap<String, Process>,
    balancer: Balancer,
    http: reqwest::Client,
    dir: &'a Path,
    store_url: String,
    ready: &'a m365_emulator::ReadyInfo,
}

impl Cluster<'_> {
    /// Starts (or starts again) the process `name` on a new port, waits until it answers, and
    /// puts it behind the balancer.
    async fn start(&mut self, name: &str) {
        let port = free_port();
        let config = ProcessConfig {
            name,
            port,
            public_url: &self.balancer.url,
            store_url: &self.store_url,
            key_file: &self.dir.join("calbridge.key"),
            lease_seconds: LEASE_SECONDS,
            ready: self.ready,
            sip_server: None,
        };
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, config.to_toml()).expect("write the configuration");
        let address = format!("127.0.0.1:{port}");
        // Each life of a process logs to a file of its own, for the failure messages.
        let lives = self.dir.read_dir().map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| {
                    let file = entry.file_name().to_string_lossy().to_string();
                    file.starts_with(&format!("{name}.")) && file.ends_with(".log")
                })
                .count()
        });
        let process = Process::start(
            name,
            &path,
            address.clone(),
            self.dir.join(format!("{name}.{lives}.log")),
        );
        process
            .wait_answering(&self.http, Duration::from_secs(60))
            .await;
        self.balancer.add(name, &address);
        self.processes.insert(name.to_string(), process);
    }

    /// Each live process's users, by process name.
    async fn users(&self) -> BTreeMap<String, Vec<Value>> {
        let mut all = BTreeMap::new();
        for (name, process) in &self.processes {
            let users = process
                .get(&self.http, "/api/v1/users")
                .await
                .and_then(|users| users["users"].as_array().cloned())
                .unwrap_or_default();
            all.insert(name.clone(), users);
        }
        all
    }

    /// Who follows whom, if every one of `people` is followed by exactly one live process (the
    /// one whose users list shows their sync state, which only their follower has) and every
    /// live process follows someone; with each person's entry on their follower.
    async fn split(&self, people: &BTreeSet<String>) -> Option<BTreeMap<String, (String, Value)>> {
        self.split_or_why(people).await.ok()
    }

    /// [`Cluster::split`], or what keeps it from being one.
    async fn split_or_why(
        &self,
        people: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, (String, Value)>, String> {
        let mut followers: BTreeMap<String, (String, Value)> = BTreeMap::new();
        let mut counts = BTreeMap::new();
        let mut twice = BTreeSet::new();
        for (name, users) in self.users().await {
            let mut n_followed = 0;
            for user in users {
                if user["sync"].is_null() || user["presence"].is_null() {
                    continue;
                }
                let address = user["address"].as_str().unwrap_or_default().to_lowercase();
                n_followed += 1;
                if let Some((other, _)) = followers.insert(address.clone(), (name.clone(), user)) {
                    twice.insert(format!("{address} by {other} and {name}"));
                }
            }
            counts.insert(name, n_followed);
        }
        let missing: Vec<&String> = people
            .iter()
            .filter(|person| !followers.contains_key(*person))
            .collect();
        if twice.is_empty() && missing.is_empty() && counts.values().all(|n| *n > 0) {
            return Ok(followers);
        }
        Err(format!(
            "followed with presence per process {counts:?}; {} followed twice (e.g. {:?}); {} not followed (e.g. {:?})",
            twice.len(),
            twice.iter().take(3).collect::<Vec<_>>(),
            missing.len(),
            &missing[..missing.len().min(3)]
        ))
    }

    async fn wait_split(
        &self,
        what: &str,
        people: &BTreeSet<String>,
        patience: Duration,
    ) -> BTreeMap<String, (String, Value)> {
        let deadline = Instant::now() + patience;
        loop {
            let why = match self.split_or_why(people).await {
                Ok(split) => return split,
                Err(why) => why,
            };
            assert!(
                Instant::now() < deadline,
                "timed out after {patience:?} waiting for {what}: {why}\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_tails(&self) -> String {
        self.processes
            .values()
            .map(Process::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `person`'s follower shows them busy with a note that starts with `subject`.
    async fn wait_booked(&self, person: &str, subject: &str, patience: Duration) {
        let deadline = Instant::now() + patience;
        let mut last = Value::Null;
        loop {
            for users in self.users().await.values() {
                let Some(user) = users.iter().find(|user| {
                    user["address"]
                        .as_str()
                        .is_some_and(|address| address.eq_ignore_ascii_case(person))
                        && !user["sync"].is_null()
                }) else {
                    continue;
                };
                let presence = &user["presence"];
                let note = presence["note"].as_str().unwrap_or_default();
                if presence["activity"] == "busy" && note_text(note).starts_with(subject) {
                    return;
                }
                last = presence.clone();
            }
            assert!(
                Instant::now() < deadline,
                "\"{subject}\" never reached {person}'s presence within {patience:?}; last: {last}\n{}",
                self.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each process's status, by name (`None` while it does not answer).
    async fn statuses(&self) -> BTreeMap<String, Option<Value>> {
        let mut all = BTreeMap::new();
        for (name, process) in &self.processes {
            all.insert(
                name.clone(),
                process.get(&self.http, "/api/v1/status").await,
            );
        }
        all
    }
}

/// Books a 45-minute meeting that began a minute ago, in a span the test made free.
async fn book(graph: &GraphClient, person: &str, subject: &str) {
    let start = whole_second(Timestamp::now()) - SignedDuration::from_mins(1);
    graph
        .create_event(
            person,
            subject,
            start,
            start + SignedDuration::from_mins(45),
            "busy",
        )
        .await;
}

/// The activities the default presence rules may show at `at` for a calendar (several when
/// appointments of different kinds overlap, where the rules' precedence decides), or `None`
/// when an appointment begins or ends so close to `at` that the service may not have turned
/// yet: tentative and free time do not count, out-of-office is away, working elsewhere is
/// available, busy and unknown are busy.
fn expected_activities(events: &[ViewEvent], at: Timestamp) -> Option<BTreeSet<&'static str>> {
    let mut activities = BTreeSet::new();
    for event in events {
        let activity = match event.show_as.as_str() {
            _ if event.cancelled || event.end <= event.start => continue,
            "busy" | "unknown" => "busy",
            "oof" => "away",
            "workingElsewhere" => "available",
            _ => continue,
        };
        let near = |boundary: Timestamp| {
            boundary > at - SignedDuration::from_secs(30)
                && boundary < at + SignedDuration::from_secs(5)
        };
        if near(event.start) || near(event.end) {
            return None;
        }
        if event.start <= at && at < event.end {
            activities.insert(activity);
        }
    }
    if activities.is_empty() {
        activities.insert("available");
    }
    Some(activities)
}

/// Waits until every person's follower shows the presence their calendar gives (as Graph's
/// calendar view shows it) at the moment of looking; returns how many were checked (people
/// at an appointment's edge just then are not).
async fn wait_right_presence(
    cluster: &Cluster<'_>,
    graph: &GraphClient,
    people: &BTreeSet<String>,
) -> usize {
    let now = Timestamp::now();
    let (from, to) = (
        now - SignedDuration::from_hours(48),
        now + SignedDuration::from_hours(48),
    );
    let calendars: BTreeMap<String, Vec<ViewEvent>> =
        futures_util::stream::iter(people.iter().cloned())
            .map(|person| async move {
                let events = graph.calendar_view(&person, from, to).await;
                (person, events)
            })
            .buffer_unordered(8)
            .collect()
            .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let split = cluster.split(people).await;
        let at = Timestamp::now();
        let mut wrong = Vec::new();
        let mut checked = 0usize;
        if let Some(split) = &split {
            for (person, (follower, user)) in split {
                let Some(expected) = expected_activities(&calendars[person], at) else {
                    continue;
                };
                checked += 1;
                let shown = user["presence"]["activity"].as_str().unwrap_or("none");
                if !expected.contains(shown) {
                    wrong.push(format!(
                        "{person} on {follower}: {shown}, expected one of {expected:?}; {}",
                        user["presence"]
                    ));
                }
            }
        }
        if split.is_some() && wrong.is_empty() {
            return checked;
        }
        assert!(
            Instant::now() < deadline,
            "presence differs from the calendars for {} people, e.g. {:#?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_people_on_three_processes_survive_a_rolling_restart() {
    init_logs();
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(database) = common::postgres::database("calbridge_cluster").await else {
        return;
    };
    let emulator = Emulator::start(EmulatorConfig::generated(1000, 11))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let graph = GraphClient::new(&ready).await;
    let people: BTreeSet<String> = graph
        .group_members(ready.group_id.as_deref().expect("a group"))
        .await
        .into_iter()
        .collect();
    assert_eq!(people.len(), 1000);
    // The people the test books meetings for get a free span around now first, before any
    // process follows them: the generated calendars have meetings at working hours around the
    // real now, and the test must pass at 09:42 on a Thursday as at night.
    let to_book: Vec<String> = people.iter().step_by(41).take(20).cloned().collect();
    let now = Timestamp::now();
    for person in &to_book {
        graph.free_around(person, now).await;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut cluster = Cluster {
        processes: BTreeMap::new(),
        balancer: Balancer::start().await,
        http: calbridge_net::build_http_client(None).expect("an HTTP client"),
        dir: dir.path(),
        store_url: database.url(),
        ready: &ready,
    };
    let started = Instant::now();
    // One after the other, so that the first makes the store's key for the others.
    for name in ["a", "b", "c"] {
        cluster.start(name).await;
    }
    let split = cluster
        .wait_split(
            "1,000 people each followed by exactly one of three processes",
            &people,
            Duration::from_secs(120),
        )
        .await;
    eprintln!(
        "1,000 people followed once by three processes {:.1} s after the first started",
        started.elapsed().as_secs_f64()
    );
    let checked = wait_right_presence(&cluster, &graph, &people).await;
    eprintln!("presence as the calendars say for {checked} of 1,000 people (the others were at an appointment's edge)");
    assert!(checked >= 900, "only {checked} people could be checked");
    let to_book = to_book.into_iter();

    // Graph's notification reaches a process that does not follow the person: it hands the
    // work to the follower through PostgreSQL.
    let (person, (follower, _)) = split
        .iter()
        .find(|(person, (follower, _))| to_book.as_slice().contains(person) && follower != "a")
        .map(|(person, entry)| (person.clone(), entry.clone()))
        .expect("b or c follows someone the test books for");
    let received_before = cluster.processes["a"]
        .get(&cluster.http, "/api/v1/status")
        .await
        .map(|status| status["sources"][0]["notifications_received"].as_u64())
        .unwrap_or_default()
        .unwrap_or_default();
    cluster.balancer.only("a");
    book(&graph, &person, "Heard by a").await;
    cluster.wait_booked(&person, "Heard by a", PATIENCE).await;
    let received_after = cluster.processes["a"]
        .get(&cluster.http, "/api/v1/status")
        .await
        .map(|status| status["sources"][0]["notifications_received"].as_u64())
        .unwrap_or_default()
        .unwrap_or_default();
    assert!(
        received_after > received_before,
        "a heard the notification for {person}, whom {follower} follows"
    );
    let mut to_book: Vec<String> = to_book.filter(|booked| *booked != person).collect();
    for (name, process) in &cluster.processes {
        cluster.balancer.add(name, &process.address);
    }

    // The rolling restart: each process in turn is taken out of the balancer, stopped with
    // SIGTERM and started again, while meetings are booked for people it followed and for
    // others.
    let mut booked: Vec<(String, String)> = Vec::new();
    for victim in ["a", "b", "c"] {
        let split = cluster
            .wait_split("everyone followed once", &people, PATIENCE)
            .await;
        let mut pick = |of_victim: bool| {
            let index = to_book
                .iter()
                .position(|person| (split[person].0 == victim) == of_victim)
                .or((!to_book.is_empty()).then_some(0))
                .expect("people left to book for");
            to_book.remove(index)
        };
        let (theirs, others) = (pick(true), pick(false));
        cluster.balancer.remove(victim);
        let stopping = Instant::now();
        let mut process = cluster.processes.remove(victim).expect("the victim");
        let stopped = tokio::join!(process.terminate(Duration::from_secs(30)), async {
            let subject = format!("While {victim} stops");
            book(&graph, &theirs, &subject).await;
            booked.push((theirs.clone(), subject));
        })
        .0;
        assert!(
            stopped.success(),
            "{victim} stopped with {stopped}: {}",
            process.log_tail()
        );
        let stopped_in = stopping.elapsed();
        let subject = format!("While {victim} is down");
        book(&graph, &others, &subject).await;
        booked.push((others.clone(), subject));
        cluster
            .wait_split(
                "the two others follow everyone",
                &people,
                Duration::from_secs(LEASE_SECONDS + 20),
            )
            .await;
        let taken_over_in = stopping.elapsed();
        drop(process);
        let restarting = Instant::now();
        cluster.start(victim).await;
        let after = to_book.remove(0);
        let subject = format!("After {victim} is back");
        book(&graph, &after, &subject).await;
        booked.push((after, subject));
        cluster
            .wait_split(
                "everyone followed once by the three",
                &people,
                Duration::from_secs(LEASE_SECONDS + 30),
            )
            .await;
        eprintln!(
            "rolling restart of {victim}: stopped in {:.1} s, its people followed by the others {:.1} s after SIGTERM, \
             back and following its share {:.1} s after its start",
            stopped_in.as_secs_f64(),
            taken_over_in.as_secs_f64(),
            restarting.elapsed().as_secs_f64()
        );
        for (person, subject) in &booked {
            cluster.wait_booked(person, subject, PATIENCE).await;
        }
    }
    // Nothing was lost on the way: every meeting is still in its person's presence, wherever
    // they are followed now.
    cluster
        .wait_split("everyone followed once at the end", &people, PATIENCE)
        .await;
    for (person, subject) in &booked {
        cluster.wait_booked(person, subject, PATIENCE).await;
    }
    drop(cluster);
    drop(database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processes_reconnect_after_postgres_restarts_and_lose_nothing() {
    init_logs();
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(server) = OwnPostgres::start() else {
        return;
    };
    let Some(database) = common::postgres::database_on(&server.url(), "calbridge_cluster").await
    else {
        return;
    };
    let emulator = Emulator::start(EmulatorConfig::generated(60, 12))
        .await
        .expect("the emulator starts");
    let ready = emulator.ready().clone();
    let graph = GraphClient::new(&ready).await;
    let people: BTreeSet<String> = graph
        .group_members(ready.group_id.as_deref().expect("a group"))
        .await
        .into_iter()
        .collect();
    let mut to_book: Vec<String> = people.iter().step_by(7).take(6).cloned().collect();
    let now = Timestamp::now();
    for person in &to_book {
        graph.free_around(person, now).await;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut cluster = Cluster {
        processes: BTreeMap::new(),
        balancer: Balancer::start().await,
        http: calbridge_net::build_http_client(None).expect("an HTTP client"),
        dir: dir.path(),
        store_url: database.url(),
        ready: &ready,
    };
    for name in ["a", "b", "c"] {
        cluster.start(name).await;
    }
    cluster
        .wait_split("everyone followed once", &people, Duration::from_secs(60))
        .await;
    let mut booked: Vec<(String, String)> = Vec::new();
    let person = to_book.remove(0);
    book(&graph, &person, "Before the restart").await;
    booked.push((person, "Before the restart".to_string()));

    // The server goes away (fast shutdown: every connection is cut) and meetings are booked
    // while it is gone; it stays away until every process has let everyone go, as it must
    // once it could not renew its leases for a whole lease (another could hold them by then).
    server.pg_ctl_stop();
    let stopped_at = Instant::now();
    for index in 0..2 {
        let person = to_book.remove(0);
        let subject = format!("While PostgreSQL is down {index}");
        book(&graph, &person, &subject).await;
        booked.push((person, subject));
    }
    let patience = Duration::from_secs(LEASE_SECONDS + 10);
    loop {
        let statuses = cluster.statuses().await;
        let all_let_go = statuses.values().all(|status| {
            status.as_ref().is_some_and(|status| {
                !status["cluster"]["error"].is_null() && status["people"] == 0
            })
        });
        if all_let_go {
            break;
        }
        assert!(
            stopped_at.elapsed() < patience,
            "the processes still follow people {patience:?} after PostgreSQL went away: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let down_for = stopped_at.elapsed();
    server.pg_ctl_start();
    let started_at = Timestamp::now();
    let back = Instant::now();

    // Every process renews its leases again and says so on its status.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let statuses = cluster.statuses().await;
        let all_healthy = statuses.values().all(|status| {
            status.as_ref().is_some_and(|status| {
                let renewed_at: Option<Timestamp> = status["cluster"]["renewed_at"]
                    .as_str()
                    .and_then(|at| at.parse().ok());
                status["cluster"]["error"].is_null()
                    && renewed_at.is_some_and(|at| at >= started_at)
            })
        });
        if all_healthy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the processes did not renew their leases after PostgreSQL came back: {statuses:?}\n{}",
            cluster.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed_in = back.elapsed();
    cluster
        .wait_split(
            "everyone followed once after the restart",
            &people,
            Duration::from_secs(LEASE_SECONDS + 30),
        )
        .await;
    let followed_in = back.elapsed();
    eprintln!(
        "PostgreSQL down for {:.1} s: leases renewed by all three {:.1} s after it was back, everyone followed once again after {:.1} s",
        down_for.as_secs_f64(),
        renewed_in.as_secs_f64(),
        followed_in.as_secs_f64()
    );
    // The first meeting after the restart is heard by a process that does not follow the
    // person: the hand-over through PostgreSQL works again (wake-ups or the poll).
    let split = cluster
        .wait_split("everyone followed once", &people, PATIENCE)
        .await;
    let hearer = ["a", "b", "c"]
        .into_iter()
        .find(|name| split[&to_book[0]].0 != *name)
        .expect("another process");
    cluster.balancer.only(hearer);
    for (index, person) in to_book.iter().enumerate() {
        let subject = format!("After PostgreSQL is back {index}");
        book(&graph, person, &subject).await;
        if index == 0 {
            cluster.wait_booked(person, &subject, PATIENCE).await;
            for (name, process) in &cluster.processes {
                cluster.balancer.add(name, &process.address);
            }
        }
        booked.push((person.clone(), subject));
    }
    for (person, subject) in &booked {
        cluster.wait_booked(person, subject, PATIENCE).await;
    }
    drop(cluster);
    drop(database);
    drop(server);
}
