//! Domain types shared by every calbridge layer.
//!
//! These are made once at the edge (config parsing, a source's wire format) and trusted
//! everywhere after: a [`MailboxAddress`] is always a lower-cased `local@domain`, a [`ZoneName`]
//! always resolves to a time zone, a [`Secret`] never prints itself. Wire formats (Graph JSON,
//! EWS XML) never appear here; sources convert into these types.

mod address;
mod appointment;
mod secret;
mod zone;

pub use address::{AddressError, MailboxAddress};
pub use appointment::{
    start_of_day, Appointment, AppointmentStatus, AppointmentTime, Sensitivity, ShowAs,
};
pub use secret::Secret;
pub use zone::{ZoneError, ZoneName};

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
