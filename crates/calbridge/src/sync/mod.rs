//! Keeping calendars fresh, one task per source.

pub mod ews;
pub mod graph;

use calbridge_domain::{MailboxAddress, SourceId};
use calbridge_store::PersonKey;

use self::graph::Work;

/// The synchronised window from `now`: `window_hours` ahead (the seed's 48 h).
pub(crate) fn window_from(
    now: jiff::Timestamp,
    window_hours: u32,
) -> (jiff::Timestamp, jiff::Timestamp) {
    let end = now
        .checked_add(jiff::SignedDuration::from_hours(i64::from(window_hours)))
        .unwrap_or(now);
    (now, end)
}

/// The next local midnight after `now` in `zone`, when every window is read again.
pub(crate) fn next_local_midnight(
    now: jiff::Timestamp,
    zone: &jiff::tz::TimeZone,
) -> jiff::Timestamp {
    match zone.to_datetime(now).date().tomorrow() {
        Ok(tomorrow) => calbridge_domain::start_of_day(tomorrow, zone),
        Err(_) => jiff::Timestamp::MAX,
    }
}

/// A member of a directory group, already resolved by the source.
pub struct GroupMember {
    pub primary_smtp: MailboxAddress,
    pub id: String,
    pub display_name: Option<String>,
}

/// What the directory needs from a source's sync task.
#[async_trait::async_trait]
pub trait DirectoryTarget: Send + Sync {
    fn source_id(&self) -> &SourceId;
    fn enqueue(&self, work: Work);
    /// The members of a directory group (Entra ID group for Graph).
    async fn group_members(&self, group: &str) -> Result<Vec<GroupMember>, String>;
    async fn record_resolved_members(&self, members: Vec<(PersonKey, MailboxAddress, String)>);
    /// Further addresses of a person from the directory, for name resolution.
    fn set_alternates(&self, _person: &PersonKey, _alternates: Vec<String>) {}
}

#[async_trait::async_trait]
impl DirectoryTarget for graph::GraphSync {
    fn source_id(&self) -> &SourceId {
        &self.source_id
    }

    fn enqueue(&self, work: Work) {
        graph::GraphSync::enqueue(self, work);
    }

    async fn group_members(&self, group: &str) -> Result<Vec<GroupMember>, String> {
        self.graph
            .group_members(group)
            .await
            .map(|members| {
                members
                    .into_iter()
                    .map(|member| GroupMember {
                        primary_smtp: member.primary_smtp,
                        id: member.id,
                        display_name: member.display_name,
                    })
                    .collect()
            })
            .map_err(|error| error.to_string())
    }

    async fn record_resolved_members(&self, members: Vec<(PersonKey, MailboxAddress, String)>) {
        graph::GraphSync::record_resolved_members(self, members).await;
    }
}

#[async_trait::async_trait]
impl DirectoryTarget for ews::EwsSync {
    fn source_id(&self) -> &SourceId {
        &self.source_id
    }

    fn enqueue(&self, work: Work) {
        ews::EwsSync::enqueue(self, work);
    }

    async fn group_members(&self, group: &str) -> Result<Vec<GroupMember>, String> {
        Err(format!(
            "group {group}: directory groups are read through Microsoft Graph; list the people of an EWS source in a directory file"
        ))
    }

    async fn record_resolved_members(&self, _members: Vec<(PersonKey, MailboxAddress, String)>) {}

    fn set_alternates(&self, person: &PersonKey, alternates: Vec<String>) {
        ews::EwsSync::set_alternates(self, person, alternates);
    }
}
