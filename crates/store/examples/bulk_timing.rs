//! Prints how long the SQLite store takes to save and load 10,000 people with 10 appointments
//! each, the first sync and the start-up load of a large installation: once with the
//! single-item methods (one transaction per call) and once with the batch methods (one
//! transaction per chunk of people), each in its own fresh database file.
//!
//! `cargo run -p calbridge-store --release --example bulk_timing [N_PEOPLE] [CHUNK]`

use std::time::{Duration, Instant};

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, ShowAs, SourceId,
};
use calbridge_store::{
    CurrentPresence, PersonKey, PersonUpsert, Resolution, SecretKey, SqliteStore, Store, SyncState,
    WindowReplacement,
};
use jiff::{SignedDuration, Timestamp};

const N_APPOINTMENTS_PER_PERSON: i64 = 10;

/// What one person's first sync writes.
struct FirstSync {
    upsert: PersonUpsert,
    resolution: Resolution,
    appointments: Vec<Appointment>,
    sync_state: SyncState,
    presence: CurrentPresence,
}

/// Time spent in each kind of write, summed over all people.
#[derive(Default)]
struct Timings {
    upsert: Duration,
    resolution: Duration,
    appointments: Duration,
    sync_state: Duration,
    presence: Duration,
    load: Duration,
}

impl Timings {
    fn writes(&self) -> Duration {
        self.upsert + self.resolution + self.appointments + self.sync_state + self.presence
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n_people: usize = match std::env::args().nth(1) {
        Some(text) => text.parse()?,
        None => 10_000,
    };
    let chunk: usize = match std::env::args().nth(2) {
        Some(text) => text.parse()?,
        None => 500,
    };
    let window_start: Timestamp = "2026-06-01T00:00:00Z".parse()?;
    let window_end = window_start + SignedDuration::from_hours(48);
    let people = first_syncs(n_people, window_start)?;
    let directory = tempfile::tempdir()?;

    let store =
        SqliteStore::open(directory.path().join("one.sqlite"), SecretKey::generate()).await?;
    let mut one = Timings::default();
    let started = Instant::now();
    for person in &people {
        store.upsert_person(&person.upsert).await?;
    }
    one.upsert = started.elapsed();
    let started = Instant::now();
    for person in &people {
        store
            .mark_resolution(&person.upsert.key, &person.resolution)
            .await?;
    }
    one.resolution = started.elapsed();
    let started = Instant::now();
    for person in &people {
        store
            .replace_appointments(
                &person.upsert.key,
                window_start,
                window_end,
                person.appointments.clone(),
            )
            .await?;
    }
    one.appointments = started.elapsed();
    let started = Instant::now();
    for person in &people {
        store
            .set_sync_state(&person.upsert.key, &person.sync_state)
            .await?;
    }
    one.sync_state = started.elapsed();
    let started = Instant::now();
    for person in &people {
        store
            .save_presence(&person.upsert.key, &person.presence)
            .await?;
    }
    one.presence = started.elapsed();
    let (load, n_loaded_one) = time_load(&store).await?;
    one.load = load;
    store.close().await;

    let store =
        SqliteStore::open(directory.path().join("batch.sqlite"), SecretKey::generate()).await?;
    let mut batch = Timings::default();
    for people in people.chunks(chunk) {
        let upserts: Vec<PersonUpsert> = people.iter().map(|p| p.upsert.clone()).collect();
        let resolutions: Vec<(PersonKey, Resolution)> = people
            .iter()
            .map(|p| (p.upsert.key.clone(), p.resolution.clone()))
            .collect();
        let windows: Vec<WindowReplacement> = people
            .iter()
            .map(|p| WindowReplacement {
                key: p.upsert.key.clone(),
                window_start,
                window_end,
                appointments: p.appointments.clone(),
            })
            .collect();
        let states: Vec<(PersonKey, SyncState)> = people
            .iter()
            .map(|p| (p.upsert.key.clone(), p.sync_state.clone()))
            .collect();
        let presences: Vec<(PersonKey, CurrentPresence)> = people
            .iter()
            .map(|p| (p.upsert.key.clone(), p.presence.clone()))
            .collect();

        let started = Instant::now();
        store.upsert_people(&upserts).await?;
        batch.upsert += started.elapsed();
        let started = Instant::now();
        store.mark_resolutions(&resolutions).await?;
        batch.resolution += started.elapsed();
        let started = Instant::now();
        store.replace_appointments_many(windows).await?;
        batch.appointments += started.elapsed();
        let started = Instant::now();
        store.set_sync_states(&states).await?;
        batch.sync_state += started.elapsed();
        let started = Instant::now();
        store.save_presences(&presences).await?;
        batch.presence += started.elapsed();
    }
    let (load, n_loaded_batch) = time_load(&store).await?;
    batch.load = load;
    store.close().await;

    let n_appointments = n_people as i64 * N_APPOINTMENTS_PER_PERSON;
    println!(
        "{n_people} people, {n_appointments} appointments; batches of {chunk} people \
         (time of the building of the batches excluded)"
    );
    println!("{:<48} {:>12} {:>12}", "", "one by one", "batch");
    let rows = [
        ("upsert person / upsert_people", one.upsert, batch.upsert),
        (
            "mark resolution / mark_resolutions",
            one.resolution,
            batch.resolution,
        ),
        (
            "replace appointments / replace_appointments_many",
            one.appointments,
            batch.appointments,
        ),
        (
            "set sync state / set_sync_states",
            one.sync_state,
            batch.sync_state,
        ),
        (
            "save presence / save_presences",
            one.presence,
            batch.presence,
        ),
        ("all writes of the first sync", one.writes(), batch.writes()),
    ];
    for (what, one, batch) in rows {
        println!(
            "{what:<48} {:>12} {:>12}",
            format!("{one:.2?}"),
            format!("{batch:.2?}")
        );
    }
    println!(
        "{:<48} {:>12} {:>12}",
        "load_all_appointments afterwards",
        format!("{:.2?}", one.load),
        format!("{:.2?}", batch.load)
    );
    assert_eq!(n_loaded_one, n_loaded_batch);
    Ok(())
}

fn first_syncs(
    n_people: usize,
    window_start: Timestamp,
) -> Result<Vec<FirstSync>, Box<dyn std::error::Error>> {
    let source = SourceId("tenant-a".to_string());
    (0..n_people)
        .map(|n| {
            let address = MailboxAddress::parse(&format!("user{n:05}@example.com"))?;
            let key = PersonKey::new(source.clone(), address.clone());
            let appointments = (0..N_APPOINTMENTS_PER_PERSON)
                .map(|n| {
                    let start = window_start + SignedDuration::from_hours(n * 4);
                    Appointment {
                        id: format!("AAMkAGI2TG93AAA-{n}"),
                        time: AppointmentTime::Timed {
                            start,
                            end: start + SignedDuration::from_mins(45),
                        },
                        show_as: ShowAs::Busy,
                        sensitivity: Sensitivity::Normal,
                        subject: Some(format!("Meeting {n}")),
                        organizer: None,
                        status: AppointmentStatus::Active,
                    }
                })
                .collect();
            Ok(FirstSync {
                upsert: PersonUpsert {
                    display_name: Some(address.local_part().to_string()),
                    sip_uri: None,
                    key,
                },
                resolution: Resolution::Resolved {
                    primary_smtp: address,
                    source_user_id: Some(format!("00000000-0000-0000-0000-{n:012}")),
                },
                appointments,
                sync_state: SyncState {
                    delta_link: Some(format!(
                        "https://graph.microsoft.com/v1.0/users/{n}/calendarView/delta?$deltatoken=abc"
                    )),
                    last_full_sync_at: Some(window_start),
                    ..SyncState::default()
                },
                presence: CurrentPresence {
                    activity: "Busy".to_string(),
                    note: None,
                    until: Some(window_start + SignedDuration::from_mins(45)),
                    why: "Meeting 0".to_string(),
                    next_change_at: Some(window_start + SignedDuration::from_mins(45)),
                    decided_at: window_start,
                    published_fingerprint: None,
                },
            })
        })
        .collect()
}

async fn time_load(store: &SqliteStore) -> Result<(Duration, usize), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let all = store.load_all_appointments().await?;
    Ok((started.elapsed(), all.values().map(Vec::len).sum()))
}
