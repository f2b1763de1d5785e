//! What the store's integration tests share: appointment and person builders, and the
//! backends every contract test runs on (`backends.rs`).
#![allow(dead_code)]

use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, ShowAs, SourceId,
};
use calbridge_store::{PersonKey, Store, SyncState};
use jiff::civil::date;
use jiff::Timestamp;

pub fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

pub fn person(source: &str, address: &str) -> PersonKey {
    PersonKey::new(
        SourceId(source.to_string()),
        MailboxAddress::parse(address).unwrap(),
    )
}

pub fn timed(id: &str, start: &str, end: &str) -> Appointment {
    Appointment {
        id: id.to_string(),
        time: AppointmentTime::Timed {
            start: at(start),
            end: at(end),
        },
        show_as: ShowAs::Busy,
        sensitivity: Sensitivity::Normal,
        subject: Some(format!("Meeting {id}")),
        organizer: Some(MailboxAddress::parse("boss@example.com").unwrap()),
        status: AppointmentStatus::Active,
    }
}

pub fn all_day(id: &str) -> Appointment {
    Appointment {
        id: id.to_string(),
        time: AppointmentTime::AllDay {
            first_day: date(2026, 12, 24),
            end_day: date(2026, 12, 27),
        },
        show_as: ShowAs::Oof,
        sensitivity: Sensitivity::Personal,
        subject: Some("Vacation".to_string()),
        organizer: None,
        status: AppointmentStatus::Active,
    }
}

pub fn private_without_subject(id: &str) -> Appointment {
    Appointment {
        sensitivity: Sensitivity::Private,
        subject: None,
        show_as: ShowAs::WorkingElsewhere,
        status: AppointmentStatus::Cancelled,
        ..timed(id, "2026-06-01T12:00:00Z", "2026-06-01T13:00:00Z")
    }
}

#[macro_use]
mod backends;
#[allow(unused_imports)]
pub use backends::*;

/// Seals a named secret and a person's webhook clientState, both with "in-clear" in their
/// text, and reads the secret back: what the at-rest tests then look for in the raw database.
pub async fn write_secrets_marked_in_clear(store: &dyn Store, person: &PersonKey) {
    store
        .put_secret(
            "tenant-a/client-secret",
            &calbridge_domain::Secret::new("Xyz~client-secret-in-clear"),
        )
        .await
        .unwrap();
    store
        .set_sync_state(
            person,
            &SyncState {
                client_state: Some(calbridge_domain::Secret::new(
                    "webhook-client-state-in-clear",
                )),
                ..SyncState::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_secret("tenant-a/client-secret")
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "Xyz~client-secret-in-clear"
    );
}
