//! `EwsSource`: the operations calbridge needs, with domain types out.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use calbridge_domain::{
    Appointment, AppointmentStatus, AppointmentTime, MailboxAddress, Sensitivity, ShowAs,
};
use http::Method;
use jiff::{Timestamp, ToSpan};
use url::Url;

use crate::autodiscover::{self, Discovered};
use crate::config::{validate_ews_url, AuthMethod, ConfigError, EwsSourceConfig, MailboxAccess};
use crate::error::EwsError;
use crate::soap::{self, Subject};
use crate::transport::{self, lock, Auth, Credentials, Transport};
use crate::xml::{escape, Element};

/// A streaming subscription id as Exchange issued it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub String);

/// Attempts per request when Exchange answers `ErrorServerBusy` or the network fails.
const MAX_ATTEMPTS: u32 = 6;
/// A `BackOffMilliseconds` longer than this is cut to it, so that one odd answer cannot
/// stall a mailbox for hours.
const MAX_BACK_OFF: Duration = Duration::from_secs(300);
const FIND_ITEM_LIMIT: usize = 1000;

/// Free/busy of one mailbox from `GetUserAvailability`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeBusy {
    pub mailbox: MailboxAddress,
    /// Busy periods (no subjects: the FreeBusy view carries none).
    pub busy: Result<Vec<(Timestamp, Timestamp, ShowAs)>, String>,
}

/// The EWS client of one Exchange organisation.
pub struct EwsSource {
    pub(crate) config: EwsSourceConfig,
    pub(crate) transport: Transport,
    fixed_ews_url: Option<Url>,
    discovered: tokio::sync::Mutex<Option<Discovered>>,
    last_ews_url: Mutex<Option<Url>>,
}

impl EwsSource {
    /// Checks the configuration and builds the HTTPS client; sends nothing yet.
    pub fn new(config: EwsSourceConfig) -> Result<EwsSource, EwsError> {
        config.validate()?;
        let tls = transport::tls_config(config.extra_root_ca.as_deref())?;
        let credentials = match config.auth {
            AuthMethod::Ntlm => Credentials::Ntlm {
                user: config.user.clone(),
                password: config
                    .password
                    .clone()
                    .ok_or(ConfigError::MissingPassword("ntlm"))?,
            },
            AuthMethod::Basic => Credentials::Basic {
                user: config.user.clone(),
                password: config
                    .password
                    .clone()
                    .ok_or(ConfigError::MissingPassword("basic"))?,
            },
            AuthMethod::Bearer => {
                Credentials::Bearer(config.bearer.clone().ok_or(ConfigError::MissingBearer)?)
            }
        };
        let fixed_ews_url = config
            .ews_url
            .as_deref()
            .map(validate_ews_url)
            .transpose()?;
        let transport = Transport::new(
            tls,
            config.resolve.clone(),
            credentials,
            config.protocol_log,
        );
        Ok(EwsSource {
            config,
            transport,
            fixed_ews_url,
            discovered: tokio::sync::Mutex::new(None),
            last_ews_url: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &EwsSourceConfig {
        &self.config
    }

    /// HTTP requests sent so far (each NTLM leg counts).
    pub fn requests_sent(&self) -> u64 {
        self.transport.requests_sent()
    }

    /// The EWS URL: the configured one, or Autodiscover's (cached after the first run).
    pub async fn ews_url(&self) -> Result<Url, EwsError> {
        if let Some(url) = &self.fixed_ews_url {
            return Ok(url.clone());
        }
        let mut discovered = self.discovered.lock().await;
        if discovered.is_none() {
            let found = autodiscover::discover(
                &self.transport,
                &self.config.user,
                self.config.autodiscover_url.as_deref(),
            )
            .await?;
            tracing::info!(user = %self.config.user, answered_by = %found.answered_by, internal = ?found.internal.as_ref().map(Url::as_str), external = ?found.external.as_ref().map(Url::as_str), "Autodiscover found EWS");
            *discovered = Some(found);
        }
        let url = discovered
            .as_ref()
            .and_then(|found| found.ews_url(self.config.server))
            .cloned()
            .ok_or_else(|| EwsError::Autodiscover {
                address: self.config.user.clone(),
                detail: "no EWS URL in the answer".to_string(),
            })?;
        *lock(&self.last_ews_url) = Some(url.clone());
        Ok(url)
    }

    /// What Autodiscover found last (None before the first run or with `ews_url`).
    pub async fn discovered(&self) -> Option<Discovered> {
        self.discovered.lock().await.clone()
    }

    /// Forgets the cached Autodiscover answer and runs it again (when EWS starts failing).
    pub async fn rediscover(&self) -> Result<Url, EwsError> {
        *self.discovered.lock().await = None;
        self.transport.forget_connections();
        self.ews_url().await
    }

    fn headers(&self, anchor: Option<&str>) -> Vec<(String, String)> {
        let mut headers = vec![(
            "Content-Type".to_string(),
            "text/xml; charset=utf-8".to_string(),
        )];
        if let Some(anchor) = anchor {
            headers.push(("X-AnchorMailbox".to_string(), anchor.to_string()));
            headers.push(("X-PreferServerAffinity".to_string(), "true".to_string()));
        }
        headers
    }

    /// The impersonation header target, or None with delegate access.
    fn impersonate<'a>(&self, mailbox: &'a MailboxAddress) -> Option<&'a str> {
        match self.config.access {
            MailboxAccess::Impersonation => Some(mailbox.as_str()),
            MailboxAccess::Delegate => None,
        }
    }

    /// `<t:DistinguishedFolderId Id="calendar">` naming the mailbox with delegate access.
    fn calendar_folder(&self, mailbox: &MailboxAddress) -> String {
        match self.config.access {
            MailboxAccess::Impersonation => {
                "<t:DistinguishedFolderId Id=\"calendar\"/>".to_string()
            }
            MailboxAccess::Delegate => format!(
                "<t:DistinguishedFolderId Id=\"calendar\"><t:Mailbox><t:EmailAddress>{}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>",
                escape(mailbox.as_str())
            ),
        }
    }

    /// Sends one EWS operation, riding out `ErrorServerBusy` and network hiccups, and returns
    /// its response messages.
    pub(crate) async fn call(
        &self,
        what: &str,
        mailbox: &str,
        impersonate: Option<&str>,
        body: &str,
    ) -> Result<Vec<Element>, EwsError> {
        let url = self.ews_url().await?;
        let envelope = Bytes::from(soap::envelope(impersonate, body));
        let anchor = if mailbox.is_empty() {
            None
        } else {
            Some(mailbox)
        };
        let headers = self.headers(anchor);
        let user = self.transport.user();
        let subject = Subject {
            what,
            user: &user,
            mailbox,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match self
                .transport
                .request(
                    Method::POST,
                    &url,
                    &headers,
                    envelope.clone(),
                    Auth::Authenticated,
                )
                .await
            {
                Ok(answer) => soap::response_messages(answer.status, &answer.text(), &subject),
                Err(error) => Err(error),
            };
            let delay = match &outcome {
                Err(EwsError::ServerBusy { back_off, .. }) => (*back_off).min(MAX_BACK_OFF),
                Err(EwsError::Network { .. }) => Duration::from_millis(200 * u64::from(attempt)),
                _ => return outcome,
            };
            if attempt >= MAX_ATTEMPTS {
                return outcome;
            }
            tracing::debug!(
                what,
                mailbox,
                delay_ms = delay.as_millis() as u64,
                "EWS asked to wait or failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// The primary SMTP address of a user, trying each candidate in turn (each may hold
    /// several addresses separated by `;`, as a PBX keeps them).
    pub async fn resolve_names(&self, candidates: &[String]) -> Result<MailboxAddress, EwsError> {
        let entries: Vec<&str> = candidates
            .iter()
            .flat_map(|candidate| candidate.split(';'))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect();
        let mut last_error = None;
        for entry in &entries {
            let body = format!(
                "<m:ResolveNames ReturnFullContactData=\"false\" SearchScope=\"ActiveDirectory\"><m:UnresolvedEntry>{}</m:UnresolvedEntry></m:ResolveNames>",
                escape(&format!("smtp:{}", entry.trim_start_matches("smtp:").trim_start_matches("SMTP:")))
            );
            let messages = match self.call("ResolveNames", "", None, &body).await {
                Ok(messages) => messages,
                Err(error @ (EwsError::NonExistentMailbox { .. } | EwsError::BadAnswer { .. })) => {
                    last_error = Some(error);
                    continue;
                }
                Err(error) => return Err(error),
            };
            let user = self.transport.user();
            let subject = Subject {
                what: "ResolveNames",
                user: &user,
                mailbox: entry,
            };
            for message in &messages {
                if let Err(error) = soap::check_message(message, &subject) {
                    last_error = Some(error);
                    continue;
                }
                let addresses: Vec<&str> = message
                    .find("ResolutionSet")
                    .map(|set| {
                        set.children_named("Resolution")
                            .filter_map(|resolution| resolution.path(&["Mailbox", "EmailAddress"]))
                            .map(|element| element.text.trim())
                            .collect()
                    })
                    .unwrap_or_default();
                // Several results only count when one of them is the address asked for.
                let chosen = match addresses.as_slice() {
                    [only] => Some(*only),
                    many => many
                        .iter()
                        .find(|address| address.eq_ignore_ascii_case(entry))
                        .copied(),
                };
                if let Some(address) = chosen {
                    return MailboxAddress::parse(address).map_err(|error| EwsError::BadAnswer {
                        what: "ResolveNames".to_string(),
                        detail: format!("'{address}' is not an address: {error}"),
                    });
                }
            }
        }
        Err(match last_error {
            Some(EwsError::BadAnswer { detail, .. })
            | Some(EwsError::NonExistentMailbox { code: detail, .. }) => {
                EwsError::NonExistentMailbox {
                    address: entries.join(";"),
                    code: detail,
                }
            }
            Some(other) => other,
            None => EwsError::NonExistentMailbox {
                address: entries.join(";"),
                code: "no address to resolve".to_string(),
            },
        })
    }

    /// The appointments of `mailbox` overlapping `[start, end)`, recurrences expanded.
    pub async fn read_window(
        &self,
        mailbox: &MailboxAddress,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Vec<Appointment>, EwsError> {
        let body = format!(
            "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI=\"item:Subject\"/><t:FieldURI FieldURI=\"item:Sensitivity\"/><t:FieldURI FieldURI=\"calendar:Start\"/><t:FieldURI FieldURI=\"calendar:End\"/><t:FieldURI FieldURI=\"calendar:IsAllDayEvent\"/><t:FieldURI FieldURI=\"calendar:LegacyFreeBusyStatus\"/><t:FieldURI FieldURI=\"calendar:IsCancelled\"/><t:FieldURI FieldURI=\"calendar:Organizer\"/></t:AdditionalProperties></m:ItemShape><m:CalendarView MaxEntriesReturned=\"{FIND_ITEM_LIMIT}\" StartDate=\"{}\" EndDate=\"{}\"/><m:ParentFolderIds>{}</m:ParentFolderIds></m:FindItem>",
            ews_time(start),
            ews_time(end),
            self.calendar_folder(mailbox),
        );
        let messages = self
            .call(
                "FindItem",
                mailbox.as_str(),
                self.impersonate(mailbox),
                &body,
            )
            .await?;
        let user = self.transport.user();
        let subject = Subject {
            what: "FindItem",
            user: &user,
            mailbox: mailbox.as_str(),
        };
        let message = messages.first().ok_or_else(|| EwsError::BadAnswer {
            what: format!("FindItem for {mailbox}"),
            detail: "no response message".to_string(),
        })?;
        soap::check_message(message, &subject)?;
        let items = message
            .path(&["RootFolder", "Items"])
            .ok_or_else(|| EwsError::BadAnswer {
                what: format!("FindItem for {mailbox}"),
                detail: "no RootFolder/Items".to_string(),
            })?;
        if message
            .child("RootFolder")
            .and_then(|folder| folder.attribute("IncludesLastItemInRange"))
            == Some("false")
        {
            tracing::warn!(%mailbox, "more than {FIND_ITEM_LIMIT} appointments in the window; the rest are left out");
        }
        let mut appointments = Vec::new();
        for item in items.children_named("CalendarItem") {
            match appointment(item) {
                Ok(appointment) => appointments.push(appointment),
                Err(problem) => {
                    tracing::warn!(%mailbox, problem, "skipping a calendar item calbridge cannot read")
                }
            }
        }
        Ok(appointments)
    }

    /// Free/busy of up to 100 mailboxes (`GetUserAvailability`, FreeBusy view), for set-ups
    /// where only busy times are needed. A window of at most 42 days.
    pub async fn free_busy_batch(
        &self,
        mailboxes: &[MailboxAddress],
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Vec<FreeBusy>, EwsError> {
        if mailboxes.len() > 100 {
            return Err(EwsError::BadAnswer {
                what: "GetUserAvailability".to_string(),
                detail: format!(
                    "{} mailboxes asked for; Exchange takes at most 100 per request",
                    mailboxes.len()
                ),
            });
        }
        let list: String = mailboxes
            .iter()
            .map(|mailbox| {
                format!(
                    "<t:MailboxData><t:Email><t:Address>{}</t:Address></t:Email><t:AttendeeType>Required</t:AttendeeType><t:ExcludeConflicts>false</t:ExcludeConflicts></t:MailboxData>",
                    escape(mailbox.as_str())
                )
            })
            .collect();
        let body = format!(
            "<m:GetUserAvailabilityRequest><t:TimeZone><t:Bias>0</t:Bias><t:StandardTime><t:Bias>0</t:Bias><t:Time>00:00:00</t:Time><t:DayOrder>1</t:DayOrder><t:Month>1</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:StandardTime><t:DaylightTime><t:Bias>0</t:Bias><t:Time>00:00:00</t:Time><t:DayOrder>1</t:DayOrder><t:Month>1</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:DaylightTime></t:TimeZone><m:MailboxDataArray>{list}</m:MailboxDataArray><t:FreeBusyViewOptions><t:TimeWindow><t:StartTime>{}</t:StartTime><t:EndTime>{}</t:EndTime></t:TimeWindow><t:MergedFreeBusyIntervalInMinutes>30</t:MergedFreeBusyIntervalInMinutes><t:RequestedView>FreeBusy</t:RequestedView></t:FreeBusyViewOptions></m:GetUserAvailabilityRequest>",
            start.strftime("%Y-%m-%dT%H:%M:%S"),
            end.strftime("%Y-%m-%dT%H:%M:%S"),
        );
        let root_messages = self.call_raw("GetUserAvailability", &body).await?;
        let mut result = Vec::new();
        for (mailbox, response) in mailboxes
            .iter()
            .zip(root_messages.children_named("FreeBusyResponse"))
        {
            let message = response.child("ResponseMessage");
            let error = message.and_then(|message| {
                (message.attribute("ResponseClass") == Some("Error")).then(|| {
                    format!(
                        "{}: {}",
                        message.child_text("ResponseCode").unwrap_or_default(),
                        message.child_text("MessageText").unwrap_or_default()
                    )
                })
            });
            let busy = match error {
                Some(error) => Err(error),
                None => Ok(response
                    .find("CalendarEventArray")
                    .map(|array| {
                        array
                            .children_named("CalendarEvent")
                            .filter_map(|event| {
                                let start = parse_time(event.child_text("StartTime")?)?;
                                let end = parse_time(event.child_text("EndTime")?)?;
                                Some((
                                    start,
                                    end,
                                    show_as(event.child_text("BusyType").unwrap_or_default()),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default()),
            };
            result.push(FreeBusy {
                mailbox: mailbox.clone(),
                busy,
            });
        }
        Ok(result)
    }

    /// For operations whose answer is not a list of `ResponseMessages` (GetUserAvailability).
    async fn call_raw(&self, what: &str, body: &str) -> Result<Element, EwsError> {
        let url = self.ews_url().await?;
        let envelope = Bytes::from(soap::envelope(None, body));
        let headers = self.headers(None);
        let user = self.transport.user();
        let subject = Subject {
            what,
            user: &user,
            mailbox: "",
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let answer = self
                .transport
                .request(
                    Method::POST,
                    &url,
                    &headers,
                    envelope.clone(),
                    Auth::Authenticated,
                )
                .await?;
            let text = answer.text();
            let root = crate::xml::parse(&text).map_err(|error| EwsError::BadAnswer {
                what: what.to_string(),
                detail: format!("HTTP {} that is not XML: {error}", answer.status),
            })?;
            if root.find("Fault").is_some() {
                match soap::response_messages(answer.status, &text, &subject) {
                    Err(EwsError::ServerBusy { back_off, .. }) if attempt < MAX_ATTEMPTS => {
                        tokio::time::sleep(back_off.min(MAX_BACK_OFF)).await;
                        continue;
                    }
                    Err(error) => return Err(error),
                    Ok(_) => {}
                }
            }
            let response =
                root.find("FreeBusyResponseArray")
                    .cloned()
                    .ok_or_else(|| EwsError::BadAnswer {
                        what: what.to_string(),
                        detail: "no FreeBusyResponseArray".to_string(),
                    })?;
            return Ok(response);
        }
    }
}

/// EWS wants `xs:dateTime`; UTC with `Z` is unambiguous.
pub(crate) fn ews_time(timestamp: Timestamp) -> String {
    timestamp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn parse_time(text: &str) -> Option<Timestamp> {
    text.trim().parse::<Timestamp>().ok().or_else(|| {
        // Local times (GetUserAvailability answers in the request's zone, UTC here).
        text.trim()
            .parse::<jiff::civil::DateTime>()
            .ok()
            .and_then(|civil| civil.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|zoned| zoned.timestamp())
    })
}

fn show_as(status: &str) -> ShowAs {
    match status {
        "Free" => ShowAs::Free,
        "Tentative" => ShowAs::Tentative,
        "Busy" => ShowAs::Busy,
        "OOF" => ShowAs::Oof,
        "WorkingElsewhere" => ShowAs::WorkingElsewhere,
        _ => ShowAs::Unknown,
    }
}

fn sensitivity(text: &str) -> Sensitivity {
    match text {
        "Personal" => Sensitivity::Personal,
        "Private" => Sensitivity::Private,
        "Confidential" => Sensitivity::Confidential,
        _ => Sensitivity::Normal,
    }
}

/// The local date an all-day boundary stands for. calbridge asks in UTC (no
/// `TimeZoneContext`), where Exchange gives all-day items at midnight; an item created in
/// another zone can come back a few hours off midnight, so the boundary is rounded to the
/// nearest midnight rather than truncated (truncating is the classic one-day shift).
fn all_day_date(timestamp: Timestamp) -> jiff::civil::Date {
    let rounded = timestamp.saturating_add(12.hours()).unwrap_or(timestamp);
    rounded.to_zoned(jiff::tz::TimeZone::UTC).date()
}

fn appointment(item: &Element) -> Result<Appointment, String> {
    let id = item
        .child("ItemId")
        .and_then(|id| id.attribute("Id"))
        .ok_or("no ItemId")?
        .to_string();
    let start = item
        .child_text("Start")
        .and_then(parse_time)
        .ok_or("no readable Start")?;
    let end = item
        .child_text("End")
        .and_then(parse_time)
        .ok_or("no readable End")?;
    let all_day = item
        .child_text("IsAllDayEvent")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    let time = if all_day {
        let first_day = all_day_date(start);
        let end_day = all_day_date(end).max(first_day.tomorrow().unwrap_or(first_day));
        AppointmentTime::AllDay { first_day, end_day }
    } else {
        AppointmentTime::Timed { start, end }
    };
    let cancelled = item
        .child_text("IsCancelled")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"));
    Ok(Appointment {
        id,
        time,
        show_as: show_as(item.child_text("LegacyFreeBusyStatus").unwrap_or_default()),
        sensitivity: sensitivity(item.child_text("Sensitivity").unwrap_or_default()),
        subject: item.child_text("Subject").map(str::to_string),
        organizer: item
            .path(&["Organizer", "Mailbox", "EmailAddress"])
            .and_then(|address| MailboxAddress::parse(address.text.trim()).ok()),
        status: if cancelled {
            AppointmentStatus::Cancelled
        } else {
            AppointmentStatus::Active
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_day_boundaries_off_midnight_round_to_the_nearest_date() {
        let date = |text: &str| all_day_date(text.parse().unwrap()).to_string();
        assert_eq!(date("2026-06-01T00:00:00Z"), "2026-06-01");
        assert_eq!(date("2026-05-31T22:00:00Z"), "2026-06-01");
        assert_eq!(date("2026-06-01T05:00:00Z"), "2026-06-01");
    }
}
