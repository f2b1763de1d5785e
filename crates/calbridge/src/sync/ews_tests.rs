//! Unit tests of the EWS source: how its errors weigh and how free/busy periods read.

use super::super::engine::retry_delay;
use super::*;

#[test]
fn autodiscover_failures_are_source_wide_and_tried_again_and_a_missing_mailbox_is_not() {
    let autodiscover = trouble(&EwsError::Autodiscover {
        address: "svc@contoso.example".to_string(),
        detail: "every candidate failed".to_string(),
    });
    assert!(autodiscover.retryable && autodiscover.source_wide);
    assert_eq!(retry_delay(&autodiscover, 3), Some(Duration::from_secs(4)));
    let missing = trouble(&EwsError::NonExistentMailbox {
        address: "ghost@contoso.example".to_string(),
        code: "ErrorNonExistentMailbox".to_string(),
    });
    assert!(!missing.retryable && !missing.source_wide);
    assert_eq!(retry_delay(&missing, 1), None);
}

#[test]
fn free_busy_periods_become_appointments_without_subjects_and_errors_name_the_mailbox() {
    let mailbox = MailboxAddress::parse("ada@contoso.example").unwrap();
    let start: Timestamp = "2026-06-01T09:00:00Z".parse().unwrap();
    let end: Timestamp = "2026-06-01T10:00:00Z".parse().unwrap();
    let appointments = free_busy_appointments(FreeBusy {
        mailbox: mailbox.clone(),
        busy: Ok(vec![
            (start, end, calbridge_domain::ShowAs::Oof),
            (start, end, calbridge_domain::ShowAs::Busy),
        ]),
    })
    .unwrap();
    assert_eq!(appointments.len(), 2);
    assert_ne!(
        appointments[0].id, appointments[1].id,
        "two meetings at the same time keep apart"
    );
    assert_eq!(appointments[0].time, AppointmentTime::Timed { start, end });
    assert_eq!(appointments[0].show_as, calbridge_domain::ShowAs::Oof);
    assert_eq!(appointments[0].subject, None);

    let busy = free_busy_appointments(FreeBusy {
        mailbox: mailbox.clone(),
        busy: Err("ErrorServerBusy: try later".to_string()),
    })
    .unwrap_err();
    assert!(busy.retryable);
    assert!(
        busy.message.contains("ada@contoso.example"),
        "{}",
        busy.message
    );
    let missing = free_busy_appointments(FreeBusy {
        mailbox,
        busy: Err("ErrorMailRecipientNotFound: no such mailbox".to_string()),
    })
    .unwrap_err();
    assert!(!missing.retryable);
}
