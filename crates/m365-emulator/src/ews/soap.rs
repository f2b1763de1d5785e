//! SOAP envelopes, faults and response messages as Exchange writes them.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::xml::{escape, NS_ERRORS, NS_MESSAGES, NS_SOAP, NS_TYPES};

/// The build the emulator claims: Exchange Server 2016 CU23 (its `Version` is one of the
/// `V2017_…` strings real servers send; clients fall back to the version they asked for).
pub const SERVER_VERSION_INFO: &str = r#"<h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="6" Version="V2017_07_11" xmlns:h="http://schemas.microsoft.com/exchange/services/2006/types" xmlns="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>"#;

/// A complete envelope around `body` (which declares `m:` and `t:` itself via [`operation`]).
pub fn envelope(body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{NS_SOAP}"><s:Header>{SERVER_VERSION_INFO}</s:Header><s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">{body}</s:Body></s:Envelope>"#
    )
}

/// `<m:{name}Response …><m:ResponseMessages>{messages}</m:ResponseMessages></m:{name}Response>`
pub fn operation(name: &str, messages: &str) -> String {
    format!(
        r#"<m:{name}Response xmlns:m="{NS_MESSAGES}" xmlns:t="{NS_TYPES}"><m:ResponseMessages>{messages}</m:ResponseMessages></m:{name}Response>"#
    )
}

/// A successful response message with `inner` after the response code.
pub fn success(name: &str, inner: &str) -> String {
    format!(
        r#"<m:{name}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>{inner}</m:{name}ResponseMessage>"#
    )
}

/// A response message carrying an error code (the HTTP status stays 200, as in Exchange).
pub fn error_message(name: &str, code: &str, text: &str) -> String {
    format!(
        r#"<m:{name}ResponseMessage ResponseClass="Error"><m:MessageText>{}</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey></m:{name}ResponseMessage>"#,
        escape(text)
    )
}

pub fn xml_response(status: StatusCode, text: String) -> Response {
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    response
}

pub fn ok(body: &str) -> Response {
    xml_response(StatusCode::OK, envelope(body))
}

/// A SOAP fault (HTTP 500) with Exchange's detail: response code, message and optional
/// `MessageXml` values.
#[derive(Debug, Clone)]
pub struct Fault {
    pub code: String,
    pub message: String,
    pub values: Vec<(String, String)>,
    /// `a:` (an EWS response code) or `s:Client` style codes.
    pub fault_code: Option<String>,
}

impl Fault {
    pub fn new(code: &str, message: impl Into<String>) -> Fault {
        Fault {
            code: code.to_string(),
            message: message.into(),
            values: vec![],
            fault_code: None,
        }
    }

    pub fn with_value(mut self, name: &str, value: impl Into<String>) -> Fault {
        self.values.push((name.to_string(), value.into()));
        self
    }

    /// Malformed requests: Exchange answers schema validation failures this way.
    pub fn schema(problem: impl Into<String>) -> Fault {
        let problem = problem.into();
        Fault {
            fault_code: Some("a:ErrorSchemaValidation".to_string()),
            ..Fault::new(
                "ErrorSchemaValidation",
                format!("The request failed schema validation: {problem}"),
            )
            .with_value("Violation", problem)
        }
    }

    pub fn body(&self) -> String {
        let fault_code = self
            .fault_code
            .clone()
            .unwrap_or_else(|| format!("a:{}", self.code));
        let values: String = self
            .values
            .iter()
            .map(|(name, value)| {
                format!(
                    r#"<t:Value Name="{}">{}</t:Value>"#,
                    escape(name),
                    escape(value)
                )
            })
            .collect();
        let message_xml = if values.is_empty() {
            String::new()
        } else {
            format!(r#"<t:MessageXml xmlns:t="{NS_TYPES}">{values}</t:MessageXml>"#)
        };
        format!(
            r#"<s:Fault><faultcode xmlns:a="{NS_TYPES}">{fault_code}</faultcode><faultstring xml:lang="en-US">{message}</faultstring><detail><e:ResponseCode xmlns:e="{NS_ERRORS}">{code}</e:ResponseCode><e:Message xmlns:e="{NS_ERRORS}">{message}</e:Message>{message_xml}</detail></s:Fault>"#,
            message = escape(&self.message),
            code = escape(&self.code),
        )
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        xml_response(StatusCode::INTERNAL_SERVER_ERROR, envelope(&self.body()))
    }
}
