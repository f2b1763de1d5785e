//! Prints how long the SQLite store takes to save and load 10,000 people with 10 appointments
//! each, the start-up load of a large installation.
//!
//! `cargo run -p calbridge-store --release --example bulk_timing [N_PEOPLE]`

use std::time::Instant;

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, ShowAs, SourceId,
};
use calbridge_store::{PersonKey, PersonUpsert, SecretKey, SqliteStore, Store};
use jiff::{SignedDuration, Timestamp};

const N_APPOINTMENTS_PER_PERSON: i64 = 10;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n_people: usize = match std::env::args().nth(1) {
        Some(text) => text.parse()?,
        None => 10_000,
    };
    let directory = tempfile::tempdir()?;
    let path = directory.path().join("calbridge.sqlite");
    let store = SqliteStore::open(&path, SecretKey::generate()).await?;
    let source = SourceId("tenant-a".to_string());
    let window_start: Timestamp = "2026-06-01T00:00:00Z".parse()?;
    let window_end = window_start + SignedDuration::from_hours(48);

    let people: Vec<PersonKey> = (0..n_people)
        .map(|n| {
            MailboxAddress::parse(&format!("user{n:05}@example.com"))
                .map(|address| PersonKey::new(source.clone(), address))
        })
        .collect::<Result<_, _>>()?;

    let started = Instant::now();
    for key in &people {
        store
            .upsert_person(&PersonUpsert {
                key: key.clone(),
                display_name: Some(key.address.local_part().to_string()),
                sip_uri: None,
            })
            .await?;
    }
    let upserted = started.elapsed();

    let started = Instant::now();
    for key in &people {
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
        store
            .replace_appointments(key, window_start, window_end, appointments)
            .await?;
    }
    let replaced = started.elapsed();

    let started = Instant::now();
    let all = store.load_all_appointments().await?;
    let loaded = started.elapsed();
    let n_loaded: usize = all.values().map(Vec::len).sum();

    println!("{n_people} people upserted one by one in {upserted:.2?}");
    println!(
        "{} appointments saved with one replace_appointments per person in {replaced:.2?}",
        n_people as i64 * N_APPOINTMENTS_PER_PERSON
    );
    println!(
        "{n_loaded} appointments of {} people loaded with load_all_appointments in {loaded:.2?}",
        all.len()
    );
    store.close().await;
    Ok(())
}
