//! EWS and Autodiscover: every operation, auth scheme, impersonation/delegate rule, fault
//! (the hanging-connection limit on streaming included) and Autodiscover answer, over HTTPS
//! against an in-process emulator.

mod support;

use std::time::Duration;

use m365_emulator::{EmulatorConfig, ExtendedProtection, FaultSettings, Scenario};
use serde_json::json;
use support::ews::{
    autodiscover, basic, calendar_view, count, envelope, ews, get_streaming_events, impersonating,
    subscribe_calendar, subscription_id, GET_CALENDAR_FOLDER,
};
use support::latency::{latency, timed};
use support::raw_connection::{
    ntlm_authenticate, ntlm_authenticate_bound, ntlm_exchange, ntlm_negotiate,
    tls_server_end_point_binding, Connection,
};
use support::streaming::{admitted, assert_refused, open_stream, read_until, wait_for_connections};
use support::{manual_clock, start_with, Harness, APP_ID};

const SERVICE: &str = "svc@contoso.example";
const SERVICE_PASSWORD: &str = "svc-password";
const MONITOR: &str = "monitor@contoso.example";
const MONITOR_PASSWORD: &str = "monitor-password";

fn scenario() -> Scenario {
    let text = format!(
        r#"{}
[[exchange.accounts]]
address = "{SERVICE}"
password = "{SERVICE_PASSWORD}"
impersonation = true

[[exchange.accounts]]
address = "{MONITOR}"
password = "{MONITOR_PASSWORD}"
reviewer_of = ["ada@contoso.example"]

[[exchange.redirect_addr]]
address = "old.ada@contoso.example"
to = "ada@contoso.example"

[[exchange.autodiscover_hosts]]
host = "contoso.example"
answer = "redirect_url"
url = "https://autodiscover.contoso.example/autodiscover/autodiscover.xml"

[[exchange.autodiscover_hosts]]
host = "legacy.example"
answer = "http_redirect"
url = "https://autodiscover.contoso.example/autodiscover/autodiscover.xml"
"#,
        support::scenario_toml()
    )
    .replace(
        "[apps]]\nname = \"calbridge\"\nclient_id = \"22222222-2222-4222-8222-222222222222\"\nroles = [\"Calendars.ReadWrite\", \"User.Read.All\", \"Group.Read.All\"]",
        "[apps]]\nname = \"calbridge\"\nclient_id = \"22222222-2222-4222-8222-222222222222\"\nroles = [\"Calendars.ReadWrite\", \"User.Read.All\", \"Group.Read.All\", \"full_access_as_app\"]",
    );
    match Scenario::from_toml_str(&text) {
        Ok(scenario) => scenario,
        Err(error) => panic!("EWS test scenario does not parse: {error}"),
    }
}

async fn start() -> Harness {
    let mut config = EmulatorConfig::scenario(scenario());
    config.clock = manual_clock();
    start_with(config).await
}

#[tokio::test]
async fn find_item_expands_recurrences_with_basic_auth_and_honours_max_entries() {
    let harness = start().await;
    let auth = basic("ada@contoso.example", "ada-password");
    let reply = ews(
        &harness,
        &auth,
        "",
        &calendar_view(None, "2030-03-01T00:00:00Z", "2030-04-01T00:00:00Z", None),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    assert!(
        text.contains("<h:ServerVersionInfo MajorVersion=\"15\""),
        "{text}"
    );
    assert!(text.contains(r#"ResponseClass="Success""#));
    // Mondays from 4 March: 11 March deleted, 18 March moved to 14:00 Berlin (13:00 UTC), 25 March.
    assert_eq!(
        count(&text, "<t:Subject>Weekly sync</t:Subject>"),
        2,
        "{text}"
    );
    assert!(text.contains("<t:Subject>Weekly sync (moved)</t:Subject>"));
    assert!(text.contains("<t:Start>2030-03-18T13:00:00Z</t:Start>"));
    assert!(text.contains("<t:CalendarItemType>Exception</t:CalendarItemType>"));
    assert!(text.contains("<t:LegacyFreeBusyStatus>OOF</t:LegacyFreeBusyStatus>"));
    assert!(text.contains("<t:LegacyFreeBusyStatus>WorkingElsewhere</t:LegacyFreeBusyStatus>"));
    assert!(text.contains(r#"IncludesLastItemInRange="true""#));

    let limited = ews(
        &harness,
        &auth,
        "",
        &calendar_view(
            None,
            "2030-03-01T00:00:00Z",
            "2030-04-01T00:00:00Z",
            Some(2),
        ),
    )
    .await
    .text();
    assert_eq!(count(&limited, "<t:CalendarItem>"), 2);
    assert!(limited.contains(r#"IncludesLastItemInRange="false""#));

    let too_big = ews(
        &harness,
        &auth,
        "",
        &calendar_view(None, "2030-01-01T00:00:00Z", "2032-06-01T00:00:00Z", None),
    )
    .await
    .text();
    assert!(
        too_big.contains("<m:ResponseCode>ErrorCalendarViewRangeTooBig</m:ResponseCode>"),
        "{too_big}"
    );
}

#[tokio::test]
async fn get_folder_and_get_item_round_trip_ids() {
    let harness = start().await;
    let auth = basic("ada@contoso.example", "ada-password");
    let folder = ews(&harness, &auth, "", r#"<m:GetFolder><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>"#).await.text();
    assert!(folder.contains("<t:CalendarFolder>"), "{folder}");
    assert!(folder.contains("<t:FolderClass>IPF.Appointment</t:FolderClass>"));
    let view = ews(
        &harness,
        &auth,
        "",
        &calendar_view(None, "2030-03-05T00:00:00Z", "2030-03-06T00:00:00Z", None),
    )
    .await
    .text();
    let start = view
        .find("<t:ItemId Id=\"")
        .map(|index| index + 14)
        .unwrap_or(0);
    let id = &view[start..start + view[start..].find('"').unwrap_or(0)];
    let item = ews(&harness, &auth, "", &format!(r#"<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#)).await.text();
    assert!(item.contains("<t:Subject>Doctor</t:Subject>"), "{item}");
    assert!(item.contains("<t:Sensitivity>Private</t:Sensitivity>"));
    let missing = ews(&harness, &auth, "", r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="bm90LWFuLWlk"/></m:ItemIds></m:GetItem>"#).await.text();
    assert!(missing.contains("ErrorInvalidIdMalformed"), "{missing}");
}

#[tokio::test]
async fn resolve_names_finds_aliases_and_reports_ambiguity() {
    let harness = start().await;
    let auth = basic("ada@contoso.example", "ada-password");
    let resolve = |entry: &str| {
        format!("<m:ResolveNames ReturnFullContactData=\"true\"><m:UnresolvedEntry>{entry}</m:UnresolvedEntry></m:ResolveNames>")
    };
    let alias = ews(&harness, &auth, "", &resolve("SMTP:ada.l@contoso.example"))
        .await
        .text();
    assert!(
        alias.contains("<t:EmailAddress>ada@contoso.example</t:EmailAddress>"),
        "{alias}"
    );
    assert!(alias.contains("<t:DisplayName>Ada Lovelace</t:DisplayName>"));
    let none = ews(&harness, &auth, "", &resolve("zed@nowhere.example"))
        .await
        .text();
    assert!(none.contains("ErrorNameResolutionNoResults"));
    let many = ews(&harness, &auth, "", &resolve("room")).await.text();
    assert!(
        many.contains("<m:ResponseCode>NoError</m:ResponseCode>")
            || many.contains("ErrorNameResolutionMultipleResults")
    );
    let service = ews(&harness, &auth, "", &resolve(SERVICE)).await.text();
    assert!(service.contains(&format!("<t:EmailAddress>{SERVICE}</t:EmailAddress>")));
}

#[tokio::test]
async fn get_user_availability_merges_free_busy_in_the_request_zone() {
    let harness = start().await;
    let auth = basic("ada@contoso.example", "ada-password");
    let mailbox = |address: &str| {
        format!("<t:MailboxData><t:Email><t:Address>{address}</t:Address></t:Email><t:AttendeeType>Required</t:AttendeeType></t:MailboxData>")
    };
    let request = |view: &str, mailboxes: String, end: &str| {
        format!(
        "<m:GetUserAvailabilityRequest><t:TimeZone><t:Bias>-60</t:Bias><t:StandardTime><t:Bias>0</t:Bias><t:Time>03:00:00</t:Time><t:DayOrder>5</t:DayOrder><t:Month>10</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:StandardTime><t:DaylightTime><t:Bias>-60</t:Bias><t:Time>02:00:00</t:Time><t:DayOrder>5</t:DayOrder><t:Month>3</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:DaylightTime></t:TimeZone><m:MailboxDataArray>{mailboxes}</m:MailboxDataArray><t:FreeBusyViewOptions><t:TimeWindow><t:StartTime>2030-03-07T08:00:00</t:StartTime><t:EndTime>{end}</t:EndTime></t:TimeWindow><t:MergedFreeBusyIntervalInMinutes>60</t:MergedFreeBusyIntervalInMinutes><t:RequestedView>{view}</t:RequestedView></t:FreeBusyViewOptions></m:GetUserAvailabilityRequest>"
    )
    };
    let text = ews(
        &harness,
        &auth,
        "",
        &request(
            "DetailedMerged",
            mailbox("ada@contoso.example") + &mailbox("nobody@contoso.example"),
            "2030-03-07T14:00:00",
        ),
    )
    .await
    .text();
    // 7 March is inside the all-day OOF "Holiday" (6–8 March), which wins every slot.
    assert!(
        text.contains("<t:MergedFreeBusy>333333</t:MergedFreeBusy>"),
        "{text}"
    );
    assert!(text.contains("<t:DayOfWeek>Sunday</t:DayOfWeek>"));
    assert!(text.contains("<t:StartTime>2030-03-07T09:00:00</t:StartTime>"));
    assert!(text.contains("<t:Subject>Maybe</t:Subject>"));
    assert!(text.contains("ErrorMailRecipientNotFound"));
    assert!(text.contains("<t:WorkingHours>"));
    // Without rights on bob's calendar, ada sees times only.
    let bob = ews(
        &harness,
        &auth,
        "",
        &request(
            "Detailed",
            mailbox("bob@contoso.example"),
            "2030-03-07T14:00:00",
        ),
    )
    .await
    .text();
    assert!(!bob.contains("<t:CalendarEventDetails>"), "{bob}");
    let many: String = (0..101).map(|_| mailbox("ada@contoso.example")).collect();
    let too_many = ews(
        &harness,
        &auth,
        "",
        &request("FreeBusy", many, "2030-03-07T14:00:00"),
    )
    .await;
    assert_eq!(too_many.status, 500);
    assert!(too_many.text().contains("ErrorMailboxDataArrayTooBig"));
    let too_long = ews(
        &harness,
        &auth,
        "",
        &request(
            "FreeBusy",
            mailbox("ada@contoso.example"),
            "2030-05-07T14:00:00",
        ),
    )
    .await;
    assert!(too_long.text().contains("ErrorTimeIntervalTooBig"));
}

#[tokio::test]
async fn impersonation_is_allowed_only_for_granted_accounts() {
    let harness = start().await;
    let view = calendar_view(None, "2030-03-01T00:00:00Z", "2030-04-01T00:00:00Z", None);
    let service = ews(
        &harness,
        &basic(SERVICE, SERVICE_PASSWORD),
        &impersonating("ada@contoso.example"),
        &view,
    )
    .await;
    assert_eq!(service.status, 200);
    assert!(service.text().contains("<t:Subject>Doctor</t:Subject>"));
    let denied = ews(
        &harness,
        &basic("ada@contoso.example", "ada-password"),
        &impersonating("bob@contoso.example"),
        &view,
    )
    .await;
    assert_eq!(denied.status, 500);
    assert!(denied.text().contains("<faultcode xmlns:a=\"http://schemas.microsoft.com/exchange/services/2006/types\">a:ErrorImpersonateUserDenied</faultcode>"), "{}", denied.text());
    let unknown = ews(
        &harness,
        &basic(SERVICE, SERVICE_PASSWORD),
        &impersonating("ghost@contoso.example"),
        &view,
    )
    .await;
    assert!(unknown.text().contains("ErrorNonExistentMailbox"));
    assert!(unknown
        .text()
        .contains(r#"<t:Value Name="SmtpAddress">ghost@contoso.example</t:Value>"#));
}

#[tokio::test]
async fn a_reviewer_reads_the_calendar_without_private_details_and_nothing_else() {
    let harness = start().await;
    let auth = basic(MONITOR, MONITOR_PASSWORD);
    let ada = ews(
        &harness,
        &auth,
        "",
        &calendar_view(
            Some("ada@contoso.example"),
            "2030-03-05T00:00:00Z",
            "2030-03-06T00:00:00Z",
            None,
        ),
    )
    .await
    .text();
    assert!(
        ada.contains("<t:Subject>Private Appointment</t:Subject>"),
        "{ada}"
    );
    assert!(!ada.contains("Doctor"));
    let bob = ews(
        &harness,
        &auth,
        "",
        &calendar_view(
            Some("bob@contoso.example"),
            "2030-03-01T00:00:00Z",
            "2030-04-01T00:00:00Z",
            None,
        ),
    )
    .await
    .text();
    assert!(
        bob.contains("<m:ResponseCode>ErrorAccessDenied</m:ResponseCode>"),
        "{bob}"
    );
    let nobody = ews(
        &harness,
        &auth,
        "",
        &calendar_view(
            Some("ghost@contoso.example"),
            "2030-03-01T00:00:00Z",
            "2030-04-01T00:00:00Z",
            None,
        ),
    )
    .await
    .text();
    assert!(nobody.contains("ErrorNonExistentMailbox"));
    let owner = ews(
        &harness,
        &basic("ada@contoso.example", "ada-password"),
        "",
        &calendar_view(
            Some("bob@contoso.example"),
            "2030-03-01T00:00:00Z",
            "2030-04-01T00:00:00Z",
            None,
        ),
    )
    .await
    .text();
    assert!(owner.contains("ErrorAccessDenied"));
}

#[tokio::test]
async fn unauthenticated_and_wrong_credentials_get_the_challenge() {
    let harness = start().await;
    let reply = harness
        .client
        .send(
            "POST",
            &harness.emulator.ready().ews_url,
            &[],
            Some(("text/xml", b"<x/>".to_vec())),
        )
        .await;
    assert_eq!(reply.status, 401);
    let schemes: Vec<String> = reply
        .headers
        .get_all("www-authenticate")
        .iter()
        .filter_map(|value| value.to_str().ok().map(str::to_string))
        .collect();
    assert!(schemes.iter().any(|scheme| scheme == "NTLM"), "{schemes:?}");
    assert!(schemes
        .iter()
        .any(|scheme| scheme.starts_with("Basic realm=")));
    let wrong = ews(
        &harness,
        &basic("ada@contoso.example", "nope"),
        "",
        "<m:GetFolder/>",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let no_password = ews(
        &harness,
        &basic("bob@contoso.example", ""),
        "",
        "<m:GetFolder/>",
    )
    .await;
    assert_eq!(no_password.status, 401);
}

#[tokio::test]
async fn malformed_soap_gets_a_fault_naming_the_problem() {
    let harness = start().await;
    let auth = basic("ada@contoso.example", "ada-password");
    for (body, problem) in [
        ("<not-closed>", "ends before its elements are closed"),
        ("<a xmlns=\"urn:x\"/>", "SOAP 1.1 Envelope"),
        ("<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body/></soap:Envelope>", "Body is empty"),
    ] {
        let reply = harness
            .client
            .send("POST", &harness.emulator.ready().ews_url, &[("authorization", auth.as_str())], Some(("text/xml", body.as_bytes().to_vec())))
            .await;
        assert_eq!(reply.status, 500);
        assert!(reply.text().contains("ErrorSchemaValidation") && reply.text().contains(problem), "{}", reply.text());
    }
    let missing = ews(&harness, &auth, "", "<m:FindItem Traversal=\"Shallow\"><m:CalendarView StartDate=\"x\" EndDate=\"y\"/></m:FindItem>").await;
    assert!(
        missing.text().contains("is not a valid xs:dateTime"),
        "{}",
        missing.text()
    );
    // The version probe exchangelib sends first: a fault that carries ServerVersionInfo.
    let probe = ews(&harness, &auth, "", r#"<m:ConvertId DestinationFormat="EntryId"><m:SourceIds><t:AlternateId Format="EwsId" Id="DUMMY" Mailbox="DUMMY"/></m:SourceIds></m:ConvertId>"#).await;
    assert_eq!(probe.status, 500);
    assert!(probe.text().contains("ServerVersionInfo") && probe.text().contains("<s:Fault>"));
}

#[tokio::test]
async fn server_busy_fault_carries_back_off_milliseconds() {
    let harness = start().await;
    harness.emulator.set_faults(FaultSettings {
        ews_server_busy_rate: 1.0,
        ews_back_off_milliseconds: 1234,
        ..FaultSettings::default()
    });
    let reply = ews(
        &harness,
        &basic("ada@contoso.example", "ada-password"),
        "",
        "<m:GetFolder/>",
    )
    .await;
    assert_eq!(reply.status, 500);
    let text = reply.text();
    assert!(text.contains("a:ErrorServerBusy"), "{text}");
    assert!(text.contains(r#"<t:Value Name="BackOffMilliseconds">1234</t:Value>"#));
    // The same switch through the admin endpoint.
    let off = harness
        .client
        .send(
            "POST",
            &harness.admin("/faults"),
            &[],
            Some((
                "application/json",
                json!({"ews_server_busy_rate": 0.0})
                    .to_string()
                    .into_bytes(),
            )),
        )
        .await;
    assert_eq!(off.status, 200);
    let reply = ews(&harness, &basic("ada@contoso.example", "ada-password"), "", r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>"#).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn bearer_tokens_for_outlook_with_full_access_as_app_work_with_impersonation() {
    let harness = start().await;
    let reply = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("client_secret", "good-secret"),
            ("grant_type", "client_credentials"),
            ("scope", "https://outlook.office365.com/.default"),
        ])
        .await;
    let token = reply.json()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let bearer = format!("Bearer {token}");
    let view = calendar_view(None, "2030-03-05T00:00:00Z", "2030-03-06T00:00:00Z", None);
    let text = ews(
        &harness,
        &bearer,
        &impersonating("ada@contoso.example"),
        &view,
    )
    .await
    .text();
    assert!(text.contains("<t:Subject>Doctor</t:Subject>"), "{text}");
    let graph_token = format!("Bearer {}", harness.token().await);
    assert_eq!(ews(&harness, &graph_token, "", &view).await.status, 401);
}

#[tokio::test]
async fn an_app_only_token_without_exchange_impersonation_gets_the_header_fault_on_every_operation()
{
    let harness = start().await;
    let reply = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("client_secret", "good-secret"),
            ("grant_type", "client_credentials"),
            ("scope", "https://outlook.office365.com/.default"),
        ])
        .await;
    let token = reply.json()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let bearer = format!("Bearer {token}");
    let resolve = "<m:ResolveNames ReturnFullContactData=\"false\"><m:UnresolvedEntry>ada@contoso.example</m:UnresolvedEntry></m:ResolveNames>";
    let availability = "<m:GetUserAvailabilityRequest><m:MailboxDataArray><t:MailboxData><t:Email><t:Address>bob@contoso.example</t:Address></t:Email><t:AttendeeType>Required</t:AttendeeType></t:MailboxData></m:MailboxDataArray><t:FreeBusyViewOptions><t:TimeWindow><t:StartTime>2030-03-07T08:00:00Z</t:StartTime><t:EndTime>2030-03-07T18:00:00Z</t:EndTime></t:TimeWindow><t:RequestedView>FreeBusy</t:RequestedView></t:FreeBusyViewOptions></m:GetUserAvailabilityRequest>";
    let view = calendar_view(None, "2030-03-05T00:00:00Z", "2030-03-06T00:00:00Z", None);
    let subscribe = "<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id=\"calendar\"/></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>";
    // Not even X-AnchorMailbox, which names the mailbox for routing, stands in for the header.
    for body in [resolve, availability, view.as_str(), subscribe] {
        let refused = harness
            .client
            .send(
                "POST",
                &harness.emulator.ready().ews_url,
                &[
                    ("authorization", bearer.as_str()),
                    ("x-anchormailbox", "ada@contoso.example"),
                ],
                Some(("text/xml; charset=utf-8", envelope("", body).into_bytes())),
            )
            .await;
        let text = refused.text();
        assert_eq!(refused.status, 500, "{text}");
        assert!(text.contains("<faultcode xmlns:a=\"http://schemas.microsoft.com/exchange/services/2006/types\">a:ErrorInvalidExchangeImpersonationHeaderData</faultcode>"), "{text}");
        assert!(
            text.contains("ErrorInvalidExchangeImpersonationHeaderData</e:ResponseCode>"),
            "{text}"
        );
        assert!(
            text.contains(
                "ExchangeImpersonation SOAP header must be present for this type of OAuth token."
            ),
            "{text}"
        );
    }
    let counters = harness.emulator.counters();
    assert_eq!(
        counters.by_kind.get("ews.impersonation_header_missing"),
        Some(&4)
    );
    assert_eq!(counters.by_kind.get("ews.ResolveNames"), None);
    assert_eq!(counters.by_kind.get("ews.FindItem"), None);

    // The same requests impersonating a mailbox of the tenant are answered.
    let header = impersonating("ada@contoso.example");
    let resolved = ews(&harness, &bearer, &header, resolve).await;
    assert_eq!(resolved.status, 200, "{}", resolved.text());
    assert!(resolved
        .text()
        .contains("<t:EmailAddress>ada@contoso.example</t:EmailAddress>"));
    let busy = ews(&harness, &bearer, &header, availability).await;
    assert_eq!(busy.status, 200, "{}", busy.text());
    assert!(
        busy.text().contains("<m:FreeBusyResponse>"),
        "{}",
        busy.text()
    );
    // A user's own logon needs no header, as on premises.
    let own = ews(
        &harness,
        &basic("ada@contoso.example", "ada-password"),
        "",
        resolve,
    )
    .await;
    assert_eq!(own.status, 200, "{}", own.text());
}

#[tokio::test]
async fn ntlm_v2_handshake_authenticates_the_connection() {
    let harness = start().await;
    assert_eq!(
        ntlm_exchange(&harness, "ada", "CONTOSO", "ada-password").await,
        (200, 200)
    );
    assert_eq!(
        ntlm_exchange(&harness, "svc@contoso.example", "", SERVICE_PASSWORD).await,
        (200, 200)
    );
    assert_eq!(
        ntlm_exchange(&harness, "ada", "CONTOSO", "wrong").await,
        (401, 401)
    );
}

/// How the AUTHENTICATE leg binds the logon: nothing, the certificate the connection saw, or
/// another one.
#[derive(Debug, Clone, Copy)]
enum Binding {
    Absent,
    OfThisConnection,
    Wrong,
}

/// One NTLM handshake as Ada on a new TLS connection to `url`, bound as `binding` says;
/// returns the AUTHENTICATE leg's status.
async fn bound_logon(harness: &Harness, url: &str, binding: Binding) -> u16 {
    let mut connection = Connection::open_at(harness, url).await;
    let seen =
        tls_server_end_point_binding(connection.peer_certificate.as_deref().unwrap_or_default());
    let (status, challenge) = ntlm_negotiate(&mut connection).await;
    assert_eq!(status, 401);
    let sent = match binding {
        Binding::Absent => None,
        Binding::OfThisConnection => Some(seen),
        Binding::Wrong => Some([0x42; 16]),
    };
    ntlm_authenticate_bound(
        &mut connection,
        &challenge,
        ("ada", "CONTOSO", "ada-password"),
        sent,
    )
    .await
}

#[tokio::test]
async fn extended_protection_checks_the_channel_binding_as_its_setting_says() {
    let mut config = EmulatorConfig::scenario(scenario());
    config.clock = manual_clock();
    config.tls_offload_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let harness = start_with(config).await;
    let ready = harness.emulator.ready().clone();
    let direct = ready.ews_url.clone();
    let behind_offload = format!(
        "{}/EWS/Exchange.asmx",
        ready.tls_offload_url.clone().unwrap_or_default()
    );
    let set = |protection| {
        harness.emulator.set_faults(FaultSettings {
            ews_extended_protection: protection,
            ..FaultSettings::default()
        })
    };
    // (setting, binding, the load balancer in between, expected status)
    let cases = [
        (ExtendedProtection::None, Binding::Absent, false, 200),
        (ExtendedProtection::None, Binding::Wrong, false, 200),
        (ExtendedProtection::Allow, Binding::Absent, false, 200),
        (
            ExtendedProtection::Allow,
            Binding::OfThisConnection,
            false,
            200,
        ),
        (ExtendedProtection::Allow, Binding::Wrong, false, 401),
        (ExtendedProtection::Require, Binding::Absent, false, 401),
        (
            ExtendedProtection::Require,
            Binding::OfThisConnection,
            false,
            200,
        ),
        (ExtendedProtection::Require, Binding::Wrong, false, 401),
        // Behind a TLS-terminating load balancer the client binds to the balancer's
        // certificate, which is not the site's.
        (
            ExtendedProtection::Require,
            Binding::OfThisConnection,
            true,
            401,
        ),
        (
            ExtendedProtection::Allow,
            Binding::OfThisConnection,
            true,
            401,
        ),
        (ExtendedProtection::Allow, Binding::Absent, true, 200),
        (
            ExtendedProtection::None,
            Binding::OfThisConnection,
            true,
            200,
        ),
    ];
    for (protection, binding, offloaded, expected) in cases {
        set(protection);
        harness.emulator.reset_counters();
        let url = if offloaded { &behind_offload } else { &direct };
        let status = bound_logon(&harness, url, binding).await;
        assert_eq!(
            status, expected,
            "{protection:?} with {binding:?} (load balancer: {offloaded})"
        );
        let refusals = harness
            .emulator
            .counters()
            .by_kind
            .get("ews.channel_binding_refusals")
            .copied()
            .unwrap_or(0);
        assert_eq!(
            refusals,
            u64::from(expected == 401),
            "{protection:?} {binding:?}"
        );
    }
    // A wrong password stays a credentials refusal, whatever the binding.
    set(ExtendedProtection::Require);
    harness.emulator.reset_counters();
    let mut connection = Connection::open(&harness).await;
    let seen =
        tls_server_end_point_binding(connection.peer_certificate.as_deref().unwrap_or_default());
    let (_, challenge) = ntlm_negotiate(&mut connection).await;
    let status = ntlm_authenticate_bound(
        &mut connection,
        &challenge,
        ("ada", "CONTOSO", "wrong"),
        Some(seen),
    )
    .await;
    assert_eq!(status, 401);
    let counters = harness.emulator.counters();
    assert_eq!(counters.by_kind.get("ews.auth_failures"), Some(&1));
    assert_eq!(counters.by_kind.get("ews.channel_binding_refusals"), None);
    // Basic is not covered by Extended Protection.
    let reply = ews(
        &harness,
        &basic(SERVICE, SERVICE_PASSWORD),
        "",
        GET_CALENDAR_FOLDER,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn streaming_notifications_follow_graph_changes_and_close_at_the_timeout() {
    let harness = start().await;
    harness.emulator.set_faults(FaultSettings {
        ews_connection_timeout_seconds: 2,
        ews_subscriptions_per_mailbox: 2,
        ..FaultSettings::default()
    });
    let auth = basic(SERVICE, SERVICE_PASSWORD);
    let subscribe = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="calendar"/></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType><t:EventType>ModifiedEvent</t:EventType><t:EventType>DeletedEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;
    let reply = ews(
        &harness,
        &auth,
        &impersonating("ada@contoso.example"),
        subscribe,
    )
    .await
    .text();
    let id = subscription_id(&reply);
    let _second = ews(
        &harness,
        &auth,
        &impersonating("ada@contoso.example"),
        subscribe,
    )
    .await;
    let third = ews(
        &harness,
        &auth,
        &impersonating("ada@contoso.example"),
        subscribe,
    )
    .await
    .text();
    assert!(third.contains("ErrorExceededSubscriptionCount"), "{third}");

    // Open the stream on its own connection and read it as it arrives.
    let ready = harness.emulator.ready().clone();
    let stream_body = envelope(&impersonating("ada@contoso.example"), &format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{id}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>"));
    let client = support::HttpsClient::trusting(&ready.ca_cert);
    let auth_for_stream = auth.clone();
    let url = ready.ews_url.clone();
    let reader = tokio::spawn(async move {
        client
            .send(
                "POST",
                &url,
                &[("authorization", auth_for_stream.as_str())],
                Some(("text/xml", stream_body.into_bytes())),
            )
            .await
    });
    // The change is made once the stream is open, so that it is streamed rather than missed.
    tokio::time::timeout(
        Duration::from_secs(10),
        harness
            .emulator
            .wait_for_ews_streaming_connections(|open| open.values().sum::<usize>() >= 1),
    )
    .await
    .expect("the streaming connection opens");
    let token = harness.token().await;
    let created = harness
        .send_json("POST", &harness.graph("/users/ada@contoso.example/events"), &token, &json!({"subject": "Streamed", "start": {"dateTime": "2030-03-12T09:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2030-03-12T09:30:00", "timeZone": "UTC"}}))
        .await;
    assert_eq!(created.status, 201);
    let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(10), reader).await else {
        panic!("stream did not end")
    };
    let text = reply.text();
    assert_eq!(
        reply.header("transfer-encoding").as_deref(),
        Some("chunked")
    );
    let ok = text
        .find("<m:ConnectionStatus>OK</m:ConnectionStatus>")
        .unwrap_or(usize::MAX);
    let event = text.find("<t:CreatedEvent>").unwrap_or(usize::MAX);
    let closed = text
        .find("<m:ConnectionStatus>Closed</m:ConnectionStatus>")
        .unwrap_or(usize::MAX);
    assert!(
        ok < event && event < closed && closed != usize::MAX,
        "{text}"
    );
    assert!(text.contains(&format!("<t:SubscriptionId>{id}</t:SubscriptionId>")));

    // FindItem sees the Graph change too.
    let view = ews(
        &harness,
        &auth,
        &impersonating("ada@contoso.example"),
        &calendar_view(None, "2030-03-12T00:00:00Z", "2030-03-13T00:00:00Z", None),
    )
    .await
    .text();
    assert!(view.contains("<t:Subject>Streamed</t:Subject>"));

    let unsubscribe =
        format!("<m:Unsubscribe><m:SubscriptionId>{id}</m:SubscriptionId></m:Unsubscribe>");
    assert!(ews(
        &harness,
        &auth,
        &impersonating("ada@contoso.example"),
        &unsubscribe
    )
    .await
    .text()
    .contains("NoError"));
    assert!(ews(
        &harness,
        &auth,
        &impersonating("ada@contoso.example"),
        &unsubscribe
    )
    .await
    .text()
    .contains("ErrorSubscriptionNotFound"));
}

#[tokio::test]
async fn autodiscover_answers_settings_redirects_and_json() {
    let harness = start().await;
    let auth = basic(SERVICE, SERVICE_PASSWORD);
    let challenge = autodiscover(
        &harness,
        "autodiscover.contoso.example",
        "ada@contoso.example",
        None,
    )
    .await;
    assert_eq!(challenge.status, 401);
    let settings = autodiscover(
        &harness,
        "autodiscover.contoso.example",
        "ada.l@contoso.example",
        Some(&auth),
    )
    .await
    .text();
    assert!(settings.contains("<Action>settings</Action>"), "{settings}");
    assert!(settings.contains("<Type>EXCH</Type>") && settings.contains("<Type>EXPR</Type>"));
    assert!(settings.contains(&format!(
        "<EwsUrl>{}</EwsUrl>",
        harness.emulator.ready().ews_url
    )));
    assert!(
        settings.contains("<AutoDiscoverSMTPAddress>ada@contoso.example</AutoDiscoverSMTPAddress>")
    );
    let redirect_url = autodiscover(&harness, "contoso.example", "ada@contoso.example", None)
        .await
        .text();
    assert!(
        redirect_url.contains("<Action>redirectUrl</Action>"),
        "{redirect_url}"
    );
    let redirect_addr = autodiscover(
        &harness,
        "autodiscover.contoso.example",
        "old.ada@contoso.example",
        None,
    )
    .await
    .text();
    assert!(
        redirect_addr.contains("<RedirectAddr>ada@contoso.example</RedirectAddr>"),
        "{redirect_addr}"
    );
    let moved = autodiscover(&harness, "legacy.example", "ada@contoso.example", None).await;
    assert_eq!(moved.status, 302);
    let unknown = autodiscover(
        &harness,
        "autodiscover.contoso.example",
        "ghost@contoso.example",
        Some(&auth),
    )
    .await
    .text();
    assert!(unknown.contains("<ErrorCode>500</ErrorCode>"));
    let json = harness
        .client
        .send(
            "GET",
            &format!(
                "{}/autodiscover/autodiscover.json/v1.0/ada@contoso.example?Protocol=EWS",
                harness.emulator.ready().base_url
            ),
            &[],
            None,
        )
        .await;
    assert_eq!(
        json.json(),
        json!({"Protocol": "EWS", "Url": harness.emulator.ready().ews_url})
    );
    let bad = harness
        .client
        .send(
            "GET",
            &format!(
                "{}/autodiscover/autodiscover.json/v1.0/ada@contoso.example?Protocol=Foo",
                harness.emulator.ready().base_url
            ),
            &[],
            None,
        )
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn plain_http_autodiscover_redirects_to_https_and_generated_orgs_have_service_accounts() {
    let mut config = EmulatorConfig::generated(20, 3);
    config.clock = manual_clock();
    let harness = start_with(config).await;
    let ready = harness.emulator.ready().clone();
    assert_eq!(
        ready.ews_user.as_deref(),
        Some("svc.calbridge@contoso.example")
    );
    assert_eq!(
        ready.ews_delegate_user.as_deref(),
        Some("monitor@contoso.example")
    );
    let mut plain = Connection::open_plain_http(&harness).await;
    let response = plain
        .send_with(
            "GET",
            "/autodiscover/autodiscover.xml",
            None,
            &[("host", "autodiscover.contoso.example")],
            String::new(),
        )
        .await;
    assert_eq!(response.status().as_u16(), 302);
    assert_eq!(
        response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok()),
        Some(ready.autodiscover_url.as_str())
    );
    // The generated service account impersonates anyone; the monitor reviews everyone.
    let first = "ada.adams@contoso.example";
    let view = calendar_view(None, "2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z", None);
    let service = ews(
        &harness,
        &basic(
            &ready.ews_user.clone().unwrap_or_default(),
            &ready.ews_password.clone().unwrap_or_default(),
        ),
        &impersonating(first),
        &view,
    )
    .await;
    assert!(
        service.status == 200 || service.text().contains("ErrorNonExistentMailbox"),
        "{}",
        service.text()
    );
    let monitor = ews(&harness, &basic(&ready.ews_delegate_user.clone().unwrap_or_default(), &ready.ews_delegate_password.clone().unwrap_or_default()), "", r#"<m:ResolveNames><m:UnresolvedEntry>room.1@contoso.example</m:UnresolvedEntry></m:ResolveNames>"#).await;
    assert!(
        monitor.text().contains("room.1@contoso.example"),
        "{}",
        monitor.text()
    );
}

// Fault parity with Graph. These tests run on tokio's paused clock: the emulator runs in the
// test's runtime, its added latency is a tokio sleep, and the paused clock jumps straight to
// it when nothing else can run, so the virtual time a request takes is exactly the latency
// the emulator added, without waiting for it.

#[tokio::test(start_paused = true)]
async fn latency_is_added_to_every_ews_request_and_every_ntlm_leg() {
    let harness = start().await;
    harness.emulator.set_faults(latency(250, 0));
    let expected = Duration::from_millis(250);
    let view = calendar_view(None, "2030-03-05T00:00:00Z", "2030-03-06T00:00:00Z", None);

    let (reply, took) = timed(ews(
        &harness,
        &basic("ada@contoso.example", "ada-password"),
        "",
        &view,
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(took, expected, "Basic FindItem");

    // The 401 challenge and a SOAP fault take it too.
    let (reply, took) = timed(harness.client.send(
        "POST",
        &harness.emulator.ready().ews_url,
        &[],
        Some(("text/xml", envelope("", &view).into_bytes())),
    ))
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(took, expected, "401 challenge");
    let (reply, took) = timed(ews(
        &harness,
        &basic("ada@contoso.example", "ada-password"),
        "",
        "<m:ConvertId/>",
    ))
    .await;
    assert_eq!(reply.status, 500);
    assert_eq!(took, expected, "SOAP fault");

    // Each of the three round trips of NTLM on one connection, as on a real network.
    let mut connection = Connection::open(&harness).await;
    let ((status, challenge), took) = timed(ntlm_negotiate(&mut connection)).await;
    assert_eq!(status, 401);
    assert_eq!(took, expected, "NEGOTIATE leg");
    let (status, took) = timed(ntlm_authenticate(
        &mut connection,
        &challenge,
        ("ada", "CONTOSO", "ada-password"),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(took, expected, "AUTHENTICATE leg");
    let ((status, _, _), took) = timed(connection.exchange(
        "/EWS/Exchange.asmx",
        None,
        envelope("", GET_CALENDAR_FOLDER),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(took, expected, "request on the authenticated connection");

    // Without the fault nothing is added.
    harness.emulator.set_faults(FaultSettings::default());
    let (reply, took) = timed(ews(
        &harness,
        &basic("ada@contoso.example", "ada-password"),
        "",
        &view,
    ))
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(took, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn ews_latency_jitter_stays_between_the_base_and_base_plus_jitter() {
    let harness = start().await;
    harness.emulator.set_faults(latency(100, 100));
    let auth = basic("ada@contoso.example", "ada-password");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let (reply, took) = timed(ews(&harness, &auth, "", GET_CALENDAR_FOLDER)).await;
        assert_eq!(reply.status, 200);
        assert!(
            (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&took),
            "{took:?}"
        );
        seen.insert(took);
    }
    assert!(seen.len() > 1, "the jitter varies: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn get_streaming_events_takes_the_latency_before_the_stream_not_per_notification() {
    let harness = start().await;
    harness.emulator.set_faults(FaultSettings {
        ews_connection_timeout_seconds: 600,
        ews_heartbeat_seconds: 300,
        ..latency(1000, 0)
    });
    let second = Duration::from_secs(1);
    let auth = basic(SERVICE, SERVICE_PASSWORD);
    let subscribe = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="calendar"/></t:FolderIds><t:EventTypes><t:EventType>CreatedEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;
    let reply = ews(
        &harness,
        &auth,
        &impersonating("ada@contoso.example"),
        subscribe,
    )
    .await
    .text();
    let id = subscription_id(&reply);
    let token = harness.token().await;

    let mut connection = Connection::open(&harness).await;
    let request = envelope(&impersonating("ada@contoso.example"), &format!("<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{id}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>30</m:ConnectionTimeout></m:GetStreamingEvents>"));
    let (response, took) =
        timed(connection.send("POST", "/EWS/Exchange.asmx", Some(&auth), request)).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(took, second, "the stream starts after the latency");
    let mut body = response.into_body();
    let mut text = String::new();
    let ((), took) = timed(read_until(
        &mut body,
        &mut text,
        "<m:ConnectionStatus>OK</m:ConnectionStatus>",
        1,
    ))
    .await;
    assert_eq!(took, Duration::ZERO, "the first envelope comes at once");

    // Each change costs Graph's latency (the POST), and reaches the open stream with no more.
    for (round, subject) in ["First", "Second"].into_iter().enumerate() {
        let changed = tokio::time::Instant::now();
        let created = harness
            .send_json("POST", &harness.graph("/users/ada@contoso.example/events"), &token, &json!({"subject": subject, "start": {"dateTime": "2030-03-12T09:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2030-03-12T09:30:00", "timeZone": "UTC"}}))
            .await;
        assert_eq!(created.status, 201);
        assert_eq!(changed.elapsed(), second, "Graph's own latency");
        let ((), took) = timed(read_until(
            &mut body,
            &mut text,
            "<t:CreatedEvent>",
            round + 1,
        ))
        .await;
        assert_eq!(
            took,
            Duration::ZERO,
            "notification {subject} waits for nothing"
        );
    }
    assert_eq!(count(&text, "<t:CreatedEvent>"), 2, "{text}");
    // The keep-alive comes its interval after the last envelope, without latency either.
    let last_envelope = tokio::time::Instant::now();
    read_until(
        &mut body,
        &mut text,
        "<m:ConnectionStatus>OK</m:ConnectionStatus>",
        2,
    )
    .await;
    assert_eq!(last_envelope.elapsed(), Duration::from_secs(300));
}

#[tokio::test(start_paused = true)]
async fn autodiscover_requests_take_the_latency_whatever_their_answer() {
    let harness = start().await;
    harness.emulator.set_faults(latency(300, 0));
    let expected = Duration::from_millis(300);
    let auth = basic(SERVICE, SERVICE_PASSWORD);
    let (reply, took) = timed(autodiscover(
        &harness,
        "autodiscover.contoso.example",
        "ada@contoso.example",
        Some(&auth),
    ))
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("<Action>settings</Action>"));
    assert_eq!(took, expected, "settings");
    let (reply, took) = timed(autodiscover(
        &harness,
        "autodiscover.contoso.example",
        "ada@contoso.example",
        None,
    ))
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(took, expected, "401 challenge");
    let (reply, took) = timed(autodiscover(
        &harness,
        "contoso.example",
        "ada@contoso.example",
        None,
    ))
    .await;
    assert!(reply.text().contains("redirectUrl"), "{}", reply.text());
    assert_eq!(took, expected, "redirectUrl");
    let json_url = format!(
        "{}/autodiscover/autodiscover.json/v1.0/ada@contoso.example?Protocol=EWS",
        harness.emulator.ready().base_url
    );
    let (reply, took) = timed(harness.client.send("GET", &json_url, &[], None)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(took, expected, "JSON");
    let mut plain = Connection::open_plain_http(&harness).await;
    let (response, took) =
        timed(plain.send("GET", "/autodiscover/autodiscover.xml", None, String::new())).await;
    assert_eq!(response.status().as_u16(), 302);
    assert_eq!(took, expected, "302 on the plain-http port");
}

#[tokio::test]
async fn server_error_rate_answers_authenticated_ews_requests_503_and_spares_the_handshake() {
    let harness = start().await;
    harness.emulator.set_faults(FaultSettings {
        server_error_rate: 1.0,
        ..FaultSettings::default()
    });
    let auth = basic("ada@contoso.example", "ada-password");
    let reply = ews(&harness, &auth, "", GET_CALENDAR_FOLDER).await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/html; charset=us-ascii")
    );
    assert!(reply
        .text()
        .contains("HTTP Error 503. The service is unavailable."));
    assert!(!reply.text().contains("Envelope"), "no SOAP body");
    assert_eq!(reply.header("retry-after"), None);
    // Whoever is not authenticated still gets the challenge, not the 503.
    let reply = harness
        .client
        .send(
            "POST",
            &harness.emulator.ready().ews_url,
            &[],
            Some(("text/xml", envelope("", GET_CALENDAR_FOLDER).into_bytes())),
        )
        .await;
    assert_eq!(reply.status, 401);
    // NTLM: the NEGOTIATE leg gets its CHALLENGE; the authenticated request fails, but the
    // connection is logged on and serves the next request once the fault is off.
    let mut connection = Connection::open(&harness).await;
    let (status, challenge) = ntlm_negotiate(&mut connection).await;
    assert_eq!(status, 401);
    assert!(!challenge.is_empty(), "a CHALLENGE message");
    let status = ntlm_authenticate(
        &mut connection,
        &challenge,
        ("ada", "CONTOSO", "ada-password"),
    )
    .await;
    assert_eq!(status, 503);
    // Autodiscover is not affected.
    let discovered = autodiscover(
        &harness,
        "autodiscover.contoso.example",
        "ada@contoso.example",
        Some(&auth),
    )
    .await;
    assert_eq!(discovered.status, 200);
    assert_eq!(
        harness
            .emulator
            .counters()
            .by_kind
            .get("faults.server_errors"),
        Some(&2)
    );

    harness.emulator.set_faults(FaultSettings::default());
    let (status, _, body) = connection
        .exchange(
            "/EWS/Exchange.asmx",
            None,
            envelope("", GET_CALENDAR_FOLDER),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("NoError"), "{body}");
}

// Exchange's limit on hanging (streaming) connections: `ews_hanging_connection_limit` open
// GetStreamingEvents connections per charged account, the impersonated mailbox or else the
// account that logged on.

#[tokio::test]
async fn a_delegate_accounts_eleventh_stream_is_refused_until_one_of_its_ten_closes() {
    let harness = start().await;
    assert_eq!(harness.emulator.faults().ews_hanging_connection_limit, 10);
    // The monitor account reads ada's calendar as a delegate (Reviewer), without
    // impersonation: every connection is charged to the monitor, whichever mailbox
    // X-AnchorMailbox names.
    let auth = basic(MONITOR, MONITOR_PASSWORD);
    let folder = r#"<t:DistinguishedFolderId Id="calendar"><t:Mailbox><t:EmailAddress>ada@contoso.example</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"#;
    let mut ids = Vec::new();
    for _ in 0..11 {
        ids.push(subscribe_calendar(&harness, &auth, "", folder).await);
    }
    let anchors = ["ada@contoso.example", "bob@contoso.example"];
    let mut streams = Vec::new();
    for (index, id) in ids.iter().take(10).enumerate() {
        let anchor = anchors[index % 2];
        let opened = open_stream(
            &harness,
            &auth,
            &[
                ("X-AnchorMailbox", anchor),
                ("X-PreferServerAffinity", "true"),
            ],
            get_streaming_events("", id),
        )
        .await;
        streams.push(admitted(opened, &format!("connection {}", index + 1)));
    }
    assert_eq!(
        harness.emulator.ews_streaming_connections(),
        [(MONITOR.to_string(), 10)].into_iter().collect()
    );

    // The eleventh, here for the first connection's subscription, is refused and takes
    // nothing over: the first connection still serves its subscription.
    let refused = open_stream(
        &harness,
        &auth,
        &[("X-AnchorMailbox", "bob@contoso.example")],
        get_streaming_events("", &ids[0]),
    )
    .await;
    assert_refused(refused, "the eleventh connection");
    assert_eq!(
        harness
            .emulator
            .counters()
            .by_kind
            .get("ews.connections_refused"),
        Some(&1)
    );
    assert_eq!(
        harness
            .emulator
            .counters()
            .by_kind
            .get("ews.streaming_connections"),
        Some(&10)
    );
    let token = harness.token().await;
    let created = harness
        .send_json("POST", &harness.graph("/users/ada@contoso.example/events"), &token, &json!({"subject": "While full", "start": {"dateTime": "2030-03-12T09:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2030-03-12T09:30:00", "timeZone": "UTC"}}))
        .await;
    assert_eq!(created.status, 201);
    let first = &mut streams[0];
    read_until(&mut first.body, &mut first.text, "<t:CreatedEvent>", 1).await;
    assert!(
        !first.text.contains("ErrorSubscriptionNotFound"),
        "{}",
        first.text
    );

    // The client of the last connection goes away: its slot is given back, and a new
    // connection of the same account is admitted.
    drop(streams.pop());
    wait_for_connections(&harness, |open| open.get(MONITOR) == Some(&9)).await;
    let opened = open_stream(
        &harness,
        &auth,
        &[("X-AnchorMailbox", "ada@contoso.example")],
        get_streaming_events("", &ids[10]),
    )
    .await;
    streams.push(admitted(opened, "the connection after one closed"));
    assert_eq!(
        harness.emulator.ews_streaming_connections().get(MONITOR),
        Some(&10)
    );

    // Another account's budget is its own: ada logging on herself still gets a stream.
    let ada_auth = basic("ada@contoso.example", "ada-password");
    let own = subscribe_calendar(
        &harness,
        &ada_auth,
        "",
        r#"<t:DistinguishedFolderId Id="calendar"/>"#,
    )
    .await;
    let opened = open_stream(&harness, &ada_auth, &[], get_streaming_events("", &own)).await;
    let _ada_stream = admitted(opened, "ada's own connection");
    assert_eq!(
        harness
            .emulator
            .counters()
            .by_kind
            .get("ews.connections_refused"),
        Some(&1)
    );
}

#[tokio::test]
async fn impersonated_connections_are_charged_to_each_anchor_mailbox_not_the_service_account() {
    let harness = start().await;
    let auth = basic(SERVICE, SERVICE_PASSWORD);
    let calendar = r#"<t:DistinguishedFolderId Id="calendar"/>"#;
    let as_ada = impersonating("ada@contoso.example");
    let as_bob = impersonating("bob@contoso.example");
    let mut ada_ids = Vec::new();
    for _ in 0..11 {
        ada_ids.push(subscribe_calendar(&harness, &auth, &as_ada, calendar).await);
    }
    let bob_id = subscribe_calendar(&harness, &auth, &as_bob, calendar).await;

    // Ten impersonating ada and one impersonating bob: eleven connections of one service
    // account, none refused.
    let mut streams = Vec::new();
    for (index, id) in ada_ids.iter().take(10).enumerate() {
        let opened = open_stream(
            &harness,
            &auth,
            &[("X-AnchorMailbox", "ada@contoso.example")],
            get_streaming_events(&as_ada, id),
        )
        .await;
        streams.push(admitted(opened, &format!("ada's connection {}", index + 1)));
    }
    let opened = open_stream(
        &harness,
        &auth,
        &[("X-AnchorMailbox", "bob@contoso.example")],
        get_streaming_events(&as_bob, &bob_id),
    )
    .await;
    streams.push(admitted(opened, "bob's connection (the eleventh)"));
    assert_eq!(streams.len(), 11);
    assert_eq!(
        harness.emulator.ews_streaming_connections(),
        [
            ("ada@contoso.example (impersonated)".to_string(), 10),
            ("bob@contoso.example (impersonated)".to_string(), 1),
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(
        harness
            .emulator
            .counters()
            .by_kind
            .get("ews.connections_refused"),
        None
    );

    // ada's copy of the budget is spent: an eleventh connection impersonating her is refused.
    let refused = open_stream(
        &harness,
        &auth,
        &[("X-AnchorMailbox", "ada@contoso.example")],
        get_streaming_events(&as_ada, &ada_ids[10]),
    )
    .await;
    assert_refused(refused, "ada's eleventh connection");
    assert_eq!(
        harness
            .emulator
            .counters()
            .by_kind
            .get("ews.connections_refused"),
        Some(&1)
    );

    // The limit is a fault setting: raised through the admin endpoint, it admits more.
    let patched = harness
        .client
        .send(
            "PATCH",
            &format!("{}/_emulator/faults", harness.emulator.ready().base_url),
            &[],
            Some((
                "application/json",
                br#"{"ews_hanging_connection_limit": 11}"#.to_vec(),
            )),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(harness.emulator.faults().ews_hanging_connection_limit, 11);
    let opened = open_stream(
        &harness,
        &auth,
        &[("X-AnchorMailbox", "ada@contoso.example")],
        get_streaming_events(&as_ada, &ada_ids[10]),
    )
    .await;
    let _eleventh = admitted(opened, "ada's eleventh connection under the raised limit");
    let listed = harness
        .client
        .send(
            "GET",
            &format!(
                "{}/_emulator/ews/connections",
                harness.emulator.ready().base_url
            ),
            &[],
            None,
        )
        .await;
    assert_eq!(listed.status, 200);
    let listed: serde_json::Value = serde_json::from_str(&listed.text()).unwrap_or_default();
    assert_eq!(
        listed,
        json!({"connections": {"ada@contoso.example (impersonated)": 11, "bob@contoso.example (impersonated)": 1}})
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_gives_its_slot_back_before_it_says_closed_at_the_timeout() {
    let harness = start().await;
    harness.emulator.set_faults(FaultSettings {
        ews_hanging_connection_limit: 1,
        ews_connection_timeout_seconds: 60,
        ews_heartbeat_seconds: 300,
        ..FaultSettings::default()
    });
    let auth = basic("ada@contoso.example", "ada-password");
    let calendar = r#"<t:DistinguishedFolderId Id="calendar"/>"#;
    let first_id = subscribe_calendar(&harness, &auth, "", calendar).await;
    let second_id = subscribe_calendar(&harness, &auth, "", calendar).await;
    let opened = open_stream(&harness, &auth, &[], get_streaming_events("", &first_id)).await;
    let mut first = admitted(opened, "the first connection");
    let refused = open_stream(&harness, &auth, &[], get_streaming_events("", &second_id)).await;
    assert_refused(refused, "the second connection while the first is open");

    // At the timeout the first connection ends; by the time its client reads Closed the
    // slot is free, so a client re-opening at once is admitted.
    let started = tokio::time::Instant::now();
    read_until(
        &mut first.body,
        &mut first.text,
        "<m:ConnectionStatus>Closed</m:ConnectionStatus>",
        1,
    )
    .await;
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert_eq!(
        harness.emulator.ews_streaming_connections(),
        std::collections::BTreeMap::new()
    );
    let opened = open_stream(&harness, &auth, &[], get_streaming_events("", &second_id)).await;
    let _second = admitted(opened, "the connection after the timeout");
    assert_eq!(
        harness.emulator.ews_streaming_connections(),
        [("ada@contoso.example".to_string(), 1)]
            .into_iter()
            .collect()
    );
}

#[tokio::test]
async fn a_hanging_connection_limit_of_zero_means_no_limit() {
    let harness = start().await;
    harness.emulator.set_faults(FaultSettings {
        ews_hanging_connection_limit: 0,
        ..FaultSettings::default()
    });
    let auth = basic("ada@contoso.example", "ada-password");
    let calendar = r#"<t:DistinguishedFolderId Id="calendar"/>"#;
    let mut streams = Vec::new();
    for index in 0..12 {
        let id = subscribe_calendar(&harness, &auth, "", calendar).await;
        let opened = open_stream(&harness, &auth, &[], get_streaming_events("", &id)).await;
        streams.push(admitted(opened, &format!("connection {}", index + 1)));
    }
    assert_eq!(
        harness
            .emulator
            .ews_streaming_connections()
            .get("ada@contoso.example"),
        Some(&12)
    );
}

/// The `Id` of every `ItemId` in an answer, in order.
fn item_ids(reply: &str) -> Vec<String> {
    reply
        .split("<t:ItemId Id=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_string))
        .collect()
}

fn decline_item(id: &str, disposition: Option<&str>) -> String {
    let disposition = disposition
        .map(|value| format!(r#" MessageDisposition="{value}""#))
        .unwrap_or_default();
    format!(
        r#"<m:CreateItem{disposition}><m:Items><t:DeclineItem><t:ReferenceItemId Id="{id}"/><t:Body BodyType="Text">Nobody checked in.</t:Body></t:DeclineItem></m:Items></m:CreateItem>"#
    )
}

#[tokio::test]
async fn get_room_lists_and_get_rooms_answer_as_exchange_documents_them() {
    let harness = start().await;
    let auth = basic(SERVICE, SERVICE_PASSWORD);
    let lists = ews(&harness, &auth, "", "<m:GetRoomLists/>").await;
    assert_eq!(lists.status, 200);
    let text = lists.text();
    assert!(
        text.contains(r#"<m:GetRoomListsResponse ResponseClass="Success""#)
            && text.contains("<m:ResponseCode>NoError</m:ResponseCode>"),
        "{text}"
    );
    // One room list: the building of the scenario's only room.
    assert!(text.contains("<m:RoomLists><t:Address><t:Name>Main building</t:Name><t:EmailAddress>rooms.main-building@contoso.example</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>PublicDL</t:MailboxType></t:Address></m:RoomLists>"), "{text}");
    let rooms = ews(
        &harness,
        &auth,
        "",
        "<m:GetRooms><m:RoomList><t:EmailAddress>ROOMS.main-building@contoso.example</t:EmailAddress></m:RoomList></m:GetRooms>",
    )
    .await
    .text();
    assert!(
        rooms.contains(r#"<m:GetRoomsResponse ResponseClass="Success""#),
        "{rooms}"
    );
    assert!(rooms.contains("<m:Rooms><t:Room><t:Id><t:Name>Room 1</t:Name><t:EmailAddress>room.1@contoso.example</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>Mailbox</t:MailboxType></t:Id></t:Room></m:Rooms>"), "{rooms}");
    let unknown = ews(
        &harness,
        &auth,
        "",
        "<m:GetRooms><m:RoomList><t:EmailAddress>rooms.nowhere@contoso.example</t:EmailAddress></m:RoomList></m:GetRooms>",
    )
    .await;
    assert_eq!(unknown.status, 200);
    let unknown = unknown.text();
    assert!(
        unknown.contains(r#"<m:GetRoomsResponse ResponseClass="Error""#),
        "{unknown}"
    );
    assert!(unknown.contains("<m:MessageText>No results were found.</m:MessageText><m:ResponseCode>ErrorNameResolutionNoResults</m:ResponseCode>"), "{unknown}");
    // The impersonation rules hold for these operations too.
    let denied = ews(
        &harness,
        &basic("ada@contoso.example", "ada-password"),
        &impersonating("bob@contoso.example"),
        "<m:GetRoomLists/>",
    )
    .await;
    assert_eq!(denied.status, 500);
    assert!(denied.text().contains("ErrorImpersonateUserDenied"));
}

#[tokio::test]
async fn a_room_declines_a_meeting_as_the_impersonated_room_and_the_organizer_sees_decline() {
    let harness = start().await;
    let service = basic(SERVICE, SERVICE_PASSWORD);
    let room = impersonating("room.1@contoso.example");
    let march = calendar_view(None, "2030-03-01T00:00:00Z", "2030-04-01T00:00:00Z", None);
    let before = ews(&harness, &service, &room, &march).await.text();
    // March holds three of the six Mondays: 4, 18 (moved) and 25 (11 was deleted). The room's
    // default calendar processing shows the organizer's name where Ada wrote "Weekly sync".
    assert_eq!(count(&before, "<t:Subject>Ada Lovelace"), 3, "{before}");
    assert_eq!(count(&before, "<t:Subject>Weekly sync"), 0, "{before}");
    let first_day = calendar_view(None, "2030-03-04T00:00:00Z", "2030-03-05T00:00:00Z", None);
    let ids = item_ids(&ews(&harness, &service, &room, &first_day).await.text());
    let [meeting] = ids.as_slice() else {
        panic!("one meeting on 4 March: {ids:?}")
    };

    // Ada may not act for the room, the reviewer may not impersonate, and a response object
    // needs its MessageDisposition.
    let ada = basic("ada@contoso.example", "ada-password");
    let refused = ews(&harness, &ada, "", &decline_item(meeting, Some("SendOnly")))
        .await
        .text();
    assert!(
        refused.contains(r#"ResponseClass="Error""#) && refused.contains("ErrorAccessDenied"),
        "{refused}"
    );
    let reviewer = ews(
        &harness,
        &basic(MONITOR, MONITOR_PASSWORD),
        &room,
        &decline_item(meeting, Some("SendOnly")),
    )
    .await;
    assert_eq!(reviewer.status, 500);
    assert!(reviewer.text().contains("ErrorImpersonateUserDenied"));
    let no_disposition = ews(&harness, &service, &room, &decline_item(meeting, None))
        .await
        .text();
    assert!(
        no_disposition.contains("ErrorMessageDispositionRequired"),
        "{no_disposition}"
    );
    assert_eq!(
        count(
            &ews(&harness, &service, &room, &march).await.text(),
            "<t:Subject>Ada Lovelace"
        ),
        3
    );

    // The room's streaming subscription is open while the meeting is declined.
    let subscribe = r#"<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="calendar"/></t:FolderIds><t:EventTypes><t:EventType>ModifiedEvent</t:EventType><t:EventType>DeletedEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"#;
    let subscription = subscription_id(&ews(&harness, &service, &room, subscribe).await.text());
    let mut stream = admitted(
        open_stream(
            &harness,
            &service,
            &[],
            get_streaming_events(&room, &subscription),
        )
        .await,
        "the room's stream",
    );

    let declined = ews(
        &harness,
        &service,
        &room,
        &decline_item(meeting, Some("SendAndSaveCopy")),
    )
    .await
    .text();
    assert!(
        declined.contains(r#"<m:CreateItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items/></m:CreateItemResponseMessage>"#),
        "{declined}"
    );
    // The stream tells of the change: a declined occurrence modifies the room's series.
    tokio::time::timeout(
        Duration::from_secs(10),
        read_until(&mut stream.body, &mut stream.text, "<t:ModifiedEvent>", 1),
    )
    .await
    .expect("the decline is streamed");
    // The declined occurrence left the room's calendar; the others stay.
    let after = ews(&harness, &service, &room, &march).await.text();
    assert_eq!(count(&after, "<t:Subject>Ada Lovelace"), 2, "{after}");
    assert!(item_ids(&ews(&harness, &service, &room, &first_day).await.text()).is_empty());
    // Ada's copy shows the room's answer on that occurrence only.
    let room_attendee = "<t:EmailAddress>room.1@contoso.example</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>Mailbox</t:MailboxType></t:Mailbox><t:ResponseType>";
    let organizer_day = ews(&harness, &ada, "", &first_day).await.text();
    assert!(
        organizer_day.contains(&format!("{room_attendee}Decline</t:ResponseType><t:LastResponseTime>2026-06-01T08:00:00Z</t:LastResponseTime>")),
        "{organizer_day}"
    );
    let organizer_later = ews(
        &harness,
        &ada,
        "",
        &calendar_view(None, "2030-03-25T00:00:00Z", "2030-03-26T00:00:00Z", None),
    )
    .await
    .text();
    assert!(
        // The other occurrences keep the room's acceptance of the request.
        organizer_later.contains(&format!("{room_attendee}Accept</t:ResponseType>")),
        "{organizer_later}"
    );
    let again = ews(
        &harness,
        &service,
        &room,
        &decline_item(meeting, Some("SendOnly")),
    )
    .await
    .text();
    assert!(again.contains("ErrorItemNotFound"), "{again}");
}
