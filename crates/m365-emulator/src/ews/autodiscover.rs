//! Autodiscover: POX (`POST /autodiscover/autodiscover.xml`) with settings, redirectAddr and
//! redirectUrl answers, the v2 JSON endpoint, and virtual hosts chosen by the Host header.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::auth::{self, AuthOutcome, ConnectionState};
use super::setup::HostAnswer;
use super::xml::{self, escape};
use crate::state::AppState;

const RESPONSE_NS: &str = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006";
const OUTLOOK_NS: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a";
/// Exchange 2016 (15.1.2507) as Autodiscover encodes it.
const SERVER_VERSION: &str = "73C189CB";

/// Marks requests that came in on the plain-http port.
#[derive(Clone, Copy, Debug)]
pub struct PlainHttp;

fn host_of(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .rsplit_once(':')
        .map(|(host, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                host.to_string()
            } else {
                format!("{host}:{port}")
            }
        })
        .unwrap_or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string()
        })
        .to_ascii_lowercase()
}

fn xml_reply(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    response
}

fn redirect(url: &str) -> Response {
    let mut response = (StatusCode::FOUND, "").into_response();
    if let Ok(value) = HeaderValue::from_str(url) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn error_response(code: u16, message: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{RESPONSE_NS}"><Response><Error Time="00:00:00.0000000" Id="2477272013"><ErrorCode>{code}</ErrorCode><Message>{}</Message><DebugData /></Error></Response></Autodiscover>"#,
        escape(message)
    )
}

fn account_response(account: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{RESPONSE_NS}"><Response xmlns="{OUTLOOK_NS}">{account}</Response></Autodiscover>"#
    )
}

/// `POST` (or `GET`) `/autodiscover/autodiscover.xml` on any virtual host.
pub async fn pox(
    State(state): State<Arc<AppState>>,
    request: Request<axum::body::Body>,
) -> Response {
    // The added latency, once per request whatever the answer (302, 401, redirect, settings).
    state.apply_latency().await;
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let host = host_of(&headers);
    state.counters.count("autodiscover.pox");
    let rule = state
        .ews
        .setup
        .hosts
        .iter()
        .find(|(name, _)| *name == host)
        .map(|(_, answer)| answer.clone());
    match rule {
        Some(HostAnswer::HttpRedirect(url)) => return redirect(&url),
        Some(HostAnswer::NotFound) => return (StatusCode::NOT_FOUND, "Not found").into_response(),
        Some(HostAnswer::Error) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error").into_response()
        }
        Some(HostAnswer::Unauthorized) => {
            let mut response = (StatusCode::UNAUTHORIZED, "").into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("NTLM"));
            return response;
        }
        _ => {}
    }
    if parts.extensions.get::<PlainHttp>().is_some() {
        // Exchange's http Autodiscover only redirects to https.
        return redirect(&format!("{}/autodiscover/autodiscover.xml", state.base_url));
    }
    if parts.method != axum::http::Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "").into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return xml_reply(StatusCode::OK, error_response(600, "Invalid Request"));
    };
    let address = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| xml::parse(text).ok())
        .and_then(|root| {
            root.find("EMailAddress")
                .map(|element| element.text.trim().to_string())
        });
    let Some(address) = address.filter(|address| !address.is_empty()) else {
        return xml_reply(StatusCode::OK, error_response(600, "Invalid Request"));
    };
    if let Some(HostAnswer::RedirectUrl(url)) = rule {
        return xml_reply(
            StatusCode::OK,
            account_response(&format!(
                "<Account><AccountType>email</AccountType><Action>redirectUrl</Action><RedirectUrl>{}</RedirectUrl></Account>",
                escape(&url)
            )),
        );
    }
    if let Some((_, to)) = state
        .ews
        .setup
        .redirect_addr
        .iter()
        .find(|(from, _)| from.eq_ignore_ascii_case(&address))
    {
        return xml_reply(
            StatusCode::OK,
            account_response(&format!(
                "<Account><AccountType>email</AccountType><Action>redirectAddr</Action><RedirectAddr>{}</RedirectAddr></Account>",
                escape(to)
            )),
        );
    }
    let connection = parts.extensions.get::<Arc<ConnectionState>>().cloned();
    if let AuthOutcome::Respond(response) =
        auth::authenticate(&state, connection.as_deref(), &headers)
    {
        return response;
    }
    let found = state
        .directory
        .user(&address)
        .filter(|index| state.directory.users[*index].has_mailbox)
        .map(|index| {
            let user = &state.directory.users[index];
            (user.display_name.clone(), user.mail.clone())
        })
        .or_else(|| {
            state
                .ews
                .setup
                .accounts
                .iter()
                .find(|account| account.address.eq_ignore_ascii_case(&address))
                .map(|account| (account.display_name.clone(), account.address.clone()))
        });
    let Some((display_name, primary)) = found else {
        return xml_reply(
            StatusCode::OK,
            error_response(500, "The email address can't be found."),
        );
    };
    let internal = state
        .ews
        .setup
        .internal_ews_url
        .clone()
        .unwrap_or_else(|| state.ews.ews_url.clone());
    let external = state
        .ews
        .setup
        .external_ews_url
        .clone()
        .unwrap_or_else(|| state.ews.ews_url.clone());
    let server = auth::server_names(&state).dns_computer;
    xml_reply(
        StatusCode::OK,
        account_response(&format!(
            "<User><DisplayName>{name}</DisplayName><LegacyDN>/o=Emulated/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn={local}</LegacyDN><AutoDiscoverSMTPAddress>{primary}</AutoDiscoverSMTPAddress><DeploymentId>{tenant}</DeploymentId></User><Account><AccountType>email</AccountType><Action>settings</Action><MicrosoftOnline>False</MicrosoftOnline><Protocol><Type>EXCH</Type><Server>{server}</Server><ServerVersion>{SERVER_VERSION}</ServerVersion><EwsUrl>{internal}</EwsUrl><EmwsUrl>{internal}</EmwsUrl></Protocol><Protocol><Type>EXPR</Type><Server>{server}</Server><ServerVersion>{SERVER_VERSION}</ServerVersion><EwsUrl>{external}</EwsUrl><EmwsUrl>{external}</EmwsUrl></Protocol></Account>",
            name = escape(&display_name),
            local = escape(primary.split('@').next().unwrap_or_default()),
            primary = escape(&primary),
            tenant = state.directory.tenants.first().map(|tenant| tenant.id.clone()).unwrap_or_default(),
            internal = escape(&internal),
            external = escape(&external),
        )),
    )
}

/// `GET /autodiscover/autodiscover.json/v1.0/{email}?Protocol=EWS`
pub async fn json_v2(
    State(state): State<Arc<AppState>>,
    Path(email): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    state.apply_latency().await;
    state.counters.count("autodiscover.json");
    let protocol = query
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("protocol"))
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    if !protocol.eq_ignore_ascii_case("ews") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "ErrorCode": "InvalidProtocol",
                "ErrorMessage": format!("The given protocol value '{protocol}' is invalid. Supported values are 'ActiveSync,AutodiscoverV1,Ews,Rest,Substrate,SubstrateSearchService,SubstrateNotificationService,OutlookMeetingScheduler,OutlookPay,Actions,Connectors,ConnectorsProcessors,ConnectorsWebhook,NotesClient,OwaPoweredExperience,ToDo,Weve,OutlookLocationsService,OutlookCloudSettingsService,OutlookTailoredExperiences,OwaPoweredExperienceV2,Speedway,SpeedwayB2,OutlookWebContext,XrmApi'"),
            })),
        )
            .into_response();
    }
    let _ = email;
    let url = state
        .ews
        .setup
        .external_ews_url
        .clone()
        .unwrap_or_else(|| state.ews.ews_url.clone());
    Json(json!({"Protocol": "EWS", "Url": url})).into_response()
}
