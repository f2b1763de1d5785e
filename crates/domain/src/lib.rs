//! Domain types shared by every calbridge layer.
//!
//! These are made once at the edge (config parsing, a source's wire format) and trusted
//! everywhere after: a [`MailboxAddress`] is always a lower-cased `local@domain`, a [`ZoneName`]
//! always resolves to a time zone, a [`Secret`] never prints itself. Wire formats (Graph JSON,
//! EWS XML) never appear here; sources convert into these types.

mod address;
mod appointment;
mod room;
mod secret;
mod zone;

pub use address::{AddressError, MailboxAddress};
pub use appointment::{
    start_of_day, Appointment, AppointmentStatus, AppointmentTime, Sensitivity, ShowAs,
};
pub use room::RoomInfo;
pub use secret::{Secret, SecretError, SecretOrigin};
pub use zone::{ZoneError, ZoneName};

/// At most `max_chars` characters of `text` (white space around it dropped), with `…` when
/// cut: how a value from outside (a server's answer, a file's line, an address) appears in an
/// error or a log line, never whole.
pub fn shorten(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    let mut shown: String = text.chars().take(max_chars).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    shown
}

/// The name of one configured calendar source (`[[sources]] id = "…"` in `calbridge.toml`):
/// a tenant, an Exchange organisation, a CalDAV server. Every person belongs to exactly one.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct SourceId(pub String);

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
