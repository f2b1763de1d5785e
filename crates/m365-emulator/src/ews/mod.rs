//! Exchange Web Services (SOAP 1.1 at `/EWS/Exchange.asmx`) and Autodiscover over the same
//! scenario data as Graph: calendars, users, passwords, rights.

pub mod auth;
pub mod autodiscover;
pub mod ntlm;
pub mod ops;
pub mod respond;
pub mod rooms;
pub mod setup;
pub mod soap;
pub mod streaming;
pub mod tz;
pub mod xml;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Request};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use self::auth::{AuthOutcome, ConnectionState, Principal};
use self::setup::ExchangeSetup;
use self::soap::Fault;
use self::xml::{Element, NS_MESSAGES, NS_SOAP};
use crate::state::AppState;
use crate::timefmt::{resolve_zone, NamedZone};

/// Everything EWS keeps besides the calendars.
pub struct EwsState {
    pub setup: ExchangeSetup,
    pub streaming: streaming::StreamingStore,
    /// `https://host:port/EWS/Exchange.asmx`
    pub ews_url: String,
}

impl EwsState {
    pub fn new(setup: ExchangeSetup, ews_url: String) -> EwsState {
        EwsState {
            setup,
            streaming: streaming::StreamingStore::default(),
            ews_url,
        }
    }
}

/// What a request may touch in a mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rights {
    /// Its own mailbox, an impersonated one, or an app with `full_access_as_app`.
    Full,
    /// Reviewer on the calendar folder: read calendar items (private ones without details).
    Reviewer,
    None,
}

/// The caller after impersonation was applied.
pub struct Context<'a> {
    pub state: &'a AppState,
    pub principal: Principal,
    /// The account whose rights apply (the impersonated one, or the caller); `None` for an app.
    pub acting: Option<usize>,
    pub app_tenant: Option<usize>,
    /// `X-AnchorMailbox`: the default mailbox of a caller acting as no account (an app-only
    /// token never gets this far without `ExchangeImpersonation`, so in practice none).
    pub anchor: Option<usize>,
    /// The mailbox (user index) `ExchangeImpersonation` named, when the request impersonates.
    pub impersonated: Option<usize>,
    /// `TimeZoneContext` of the request (UTC when absent).
    pub zone: NamedZone,
}

impl Context<'_> {
    /// The mailbox `DistinguishedFolderId` means when it names no `Mailbox`.
    pub fn own_mailbox(&self) -> Option<usize> {
        match self.acting {
            Some(account) => self.state.ews.setup.accounts[account].user_index,
            None => self.anchor,
        }
    }

    /// The tenant the request acts in: the impersonated mailbox's, the app's, or the caller's
    /// (on-premises accounts without a mailbox belong to the first tenant).
    pub fn tenant(&self) -> usize {
        let users = &self.state.directory.users;
        if let Some(index) = self.impersonated {
            return users[index].tenant_index;
        }
        if let Some(tenant) = self.app_tenant {
            return tenant;
        }
        self.own_mailbox()
            .map_or(0, |index| users[index].tenant_index)
    }

    pub fn rights(&self, user_index: usize) -> Rights {
        if let Some(tenant) = self.app_tenant {
            return if self.state.directory.users[user_index].tenant_index == tenant {
                Rights::Full
            } else {
                Rights::None
            };
        }
        let Some(account) = self
            .acting
            .map(|index| &self.state.ews.setup.accounts[index])
        else {
            return Rights::None;
        };
        if account.user_index == Some(user_index) {
            Rights::Full
        } else if account.reviewer_of_all || account.reviewer_of.contains(&user_index) {
            Rights::Reviewer
        } else {
            Rights::None
        }
    }
}

/// `POST /EWS/Exchange.asmx` (any case).
pub async fn endpoint(
    State(state): State<Arc<AppState>>,
    request: Request<axum::body::Body>,
) -> Response {
    // The added latency, once per HTTP request and before anything is answered: every leg of
    // an NTLM handshake pays it (each is a round trip to a real server too), and
    // GetStreamingEvents pays it before its stream starts, not per notification. (Graph spends
    // it holding a mailbox concurrency slot; EWS has no such slot, its throttling is `ews_*`.)
    state.apply_latency().await;
    let (parts, body) = request.into_parts();
    let connection = parts.extensions.get::<Arc<ConnectionState>>().cloned();
    let headers = parts.headers;
    if parts.method != axum::http::Method::POST {
        // Exchange answers a GET on the endpoint with the service description page; a 401 first.
        if let AuthOutcome::Respond(response) =
            auth::authenticate(&state, connection.as_deref(), &headers)
        {
            return response;
        }
        return soap::xml_response(
            axum::http::StatusCode::OK,
            "<html><body>You have created a service.</body></html>".to_string(),
        );
    }
    let body = match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => return Fault::schema("the request body could not be read").into_response(),
    };
    state.counters.count("ews.requests");
    let principal = match auth::authenticate(&state, connection.as_deref(), &headers) {
        AuthOutcome::Authenticated(principal) => principal,
        AuthOutcome::Respond(response) => return response,
    };
    if let Some(response) = server_error(&state) {
        return response;
    }
    handle(&state, principal, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The page HTTP.sys answers a 503 with.
const SERVICE_UNAVAILABLE_PAGE: &str = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n<HTML><HEAD><TITLE>Service Unavailable</TITLE>\r\n<META HTTP-EQUIV=\"Content-Type\" Content=\"text/html; charset=us-ascii\"></HEAD>\r\n<BODY><h2>Service Unavailable</h2>\r\n<hr><p>HTTP Error 503. The service is unavailable.</p>\r\n</BODY></HTML>\r\n";

/// The `server_error_rate` fault on EWS: HTTP 503 with the plain page IIS (HTTP.sys) sends when
/// the application behind it cannot serve, which is also what a client sees when Exchange's
/// front end cannot reach the mailbox server. No SOAP body and no `Retry-After`, as there.
/// Drawn only for authenticated requests, so the 401 legs of a handshake are never replaced.
fn server_error(state: &AppState) -> Option<Response> {
    let rate = state.faults().server_error_rate;
    if rate <= 0.0 || state.ids.unit() >= rate {
        return None;
    }
    state.counters.count("faults.server_errors");
    let mut response = (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        SERVICE_UNAVAILABLE_PAGE,
    )
        .into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/html; charset=us-ascii"),
    );
    Some(response)
}

fn anchor_mailbox(state: &AppState, headers: &HeaderMap) -> Option<usize> {
    headers
        .get("x-anchormailbox")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            state.directory.user(
                value
                    .trim_start_matches("SMTP:")
                    .trim_start_matches("smtp:"),
            )
        })
}

async fn handle(
    state: &Arc<AppState>,
    principal: Principal,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, Fault> {
    let text =
        std::str::from_utf8(body).map_err(|_| Fault::schema("the request body is not UTF-8"))?;
    let envelope = xml::parse(text).map_err(Fault::schema)?;
    if envelope.name != "Envelope" || envelope.namespace != NS_SOAP {
        return Err(Fault::schema(
            "the root element must be a SOAP 1.1 Envelope (http://schemas.xmlsoap.org/soap/envelope/)",
        ));
    }
    let soap_body = envelope
        .child("Body")
        .ok_or_else(|| Fault::schema("the SOAP Envelope has no Body"))?;
    let operation = soap_body
        .children
        .first()
        .ok_or_else(|| Fault::schema("the SOAP Body is empty"))?;
    if operation.namespace != NS_MESSAGES {
        return Err(Fault::schema(format!(
            "the element '{}' is not in the EWS messages namespace",
            operation.name
        )));
    }
    let soap_header = envelope.child("Header");
    let faults = state.faults();
    if faults.ews_server_busy_rate > 0.0 && state.ids.unit() < faults.ews_server_busy_rate {
        state.counters.count("faults.ews_server_busy");
        return Err(Fault::new(
            "ErrorServerBusy",
            "The server cannot service this request right now. Try again later.",
        )
        .with_value(
            "BackOffMilliseconds",
            faults.ews_back_off_milliseconds.to_string(),
        ));
    }
    let context = context(state, principal, soap_header, headers)?;
    state.counters.count(&format!("ews.{}", operation.name));
    if let Some(user_index) = context.own_mailbox() {
        state.counters.count_mailbox(user_index);
    }
    match operation.name.as_str() {
        "GetFolder" => ops::get_folder(&context, operation),
        "FindItem" => ops::find_item(&context, operation),
        "GetItem" => ops::get_item(&context, operation),
        "ResolveNames" => ops::resolve_names(&context, operation),
        "GetUserAvailabilityRequest" => ops::get_user_availability(&context, operation),
        "GetServerTimeZones" => ops::get_server_time_zones(&context, operation),
        "GetRoomLists" => rooms::get_room_lists(&context, operation),
        "GetRooms" => rooms::get_rooms(&context, operation),
        "CreateItem" => respond::create_item(&context, operation),
        "ConvertId" => Err(Fault::new("ErrorInvalidIdMalformed", "Id is malformed.")),
        "Subscribe" => streaming::subscribe(&context, operation),
        "Unsubscribe" => streaming::unsubscribe(&context, operation),
        "GetStreamingEvents" => streaming::get_streaming_events(state, &context, operation),
        other => Err(Fault::new(
            "ErrorInvalidOperation",
            format!("The operation '{other}' is not supported by the emulator."),
        )),
    }
}

fn context<'a>(
    state: &'a AppState,
    principal: Principal,
    header: Option<&Element>,
    headers: &HeaderMap,
) -> Result<Context<'a>, Fault> {
    let anchor = anchor_mailbox(state, headers);
    let zone = header
        .and_then(|header| header.find("TimeZoneDefinition"))
        .and_then(|definition| definition.attribute("Id"))
        .and_then(|id| resolve_zone(id).ok())
        .unwrap_or_else(NamedZone::utc);
    let (caller_account, app_tenant) = match principal {
        Principal::Account(index) => (Some(index), None),
        Principal::App { tenant_index } => (None, Some(tenant_index)),
    };
    let mut context = Context {
        state,
        principal,
        acting: caller_account,
        app_tenant,
        anchor,
        impersonated: None,
        zone,
    };
    let Some(impersonation) = header.and_then(|header| header.child("ExchangeImpersonation"))
    else {
        if app_tenant.is_some() {
            // Exchange Online answers every request of an app-only token that does not say
            // whose mailbox it acts in with this fault, whatever the operation (ResolveNames and
            // GetUserAvailability included) and whatever X-AnchorMailbox says.
            state.counters.count("ews.impersonation_header_missing");
            return Err(Fault::new(
                "ErrorInvalidExchangeImpersonationHeaderData",
                "ExchangeImpersonation SOAP header must be present for this type of OAuth token.",
            ));
        }
        return Ok(context);
    };
    let sid = impersonation
        .child("ConnectingSID")
        .ok_or_else(|| Fault::schema("ExchangeImpersonation needs a ConnectingSID"))?;
    let target = ["PrimarySmtpAddress", "SmtpAddress", "PrincipalName"]
        .iter()
        .find_map(|name| sid.child_text(name))
        .ok_or_else(|| {
            Fault::schema("ConnectingSID needs a PrimarySmtpAddress, SmtpAddress or PrincipalName")
        })?;
    let allowed = match caller_account {
        Some(index) => state.ews.setup.accounts[index].impersonation,
        None => true,
    };
    if !allowed {
        state.counters.count("ews.impersonation_denied");
        return Err(Fault::new(
            "ErrorImpersonateUserDenied",
            "The account does not have permission to impersonate the requested user.",
        ));
    }
    let user_index = state
        .directory
        .user(target)
        .filter(|index| {
            app_tenant.is_none_or(|tenant| state.directory.users[*index].tenant_index == tenant)
        })
        .filter(|index| state.directory.users[*index].has_mailbox)
        .ok_or_else(|| {
            Fault::new(
                "ErrorNonExistentMailbox",
                "The SMTP address has no mailbox associated with it.",
            )
            .with_value("SmtpAddress", target)
        })?;
    let account = state
        .ews
        .setup
        .accounts
        .iter()
        .position(|account| account.user_index == Some(user_index))
        .ok_or_else(|| {
            Fault::new(
                "ErrorNonExistentMailbox",
                "The SMTP address has no mailbox associated with it.",
            )
            .with_value("SmtpAddress", target)
        })?;
    context.acting = Some(account);
    context.app_tenant = None;
    context.impersonated = Some(user_index);
    Ok(context)
}

/// EWS ids are opaque base64; the emulator's carry the mailbox's object id and the item id.
pub fn encode_id(kind: &str, user_id: &str, id: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("EMU{kind}:{user_id}:{id}"))
}

/// Splits an id made by [`encode_id`] into (kind, user id, id).
pub fn decode_id(id: &str) -> Option<(String, String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(id).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let rest = text.strip_prefix("EMU")?;
    let (kind, rest) = rest.split_once(':')?;
    let (user, id) = rest.split_once(':')?;
    Some((kind.to_string(), user.to_string(), id.to_string()))
}
