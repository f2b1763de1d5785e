//! Autodiscover (POX v1) in the order the innovaphone Calendar App uses: https on
//! `autodiscover.<domain>`, https on `<domain>`, then the same over http, following
//! `redirectAddr`, `redirectUrl` and HTTP redirects, at most ten in all. Answers are trusted
//! only over https (see [`discover`]).

use bytes::Bytes;
use http::Method;
use url::Url;

use crate::config::ServerSide;
use crate::error::{shorten, EwsError};
use crate::transport::{Auth, Transport, AUTODISCOVER_ANSWER_LIMIT};
use crate::xml::{self, escape};

const MAX_REDIRECTS: usize = 10;
const REQUEST_NS: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006";
const RESPONSE_NS: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a";

/// The EWS URLs Autodiscover found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub internal: Option<Url>,
    pub external: Option<Url>,
    /// The Autodiscover URL that answered with settings.
    pub answered_by: Url,
}

impl Discovered {
    /// The URL for `side`, falling back to the other side when only one is published.
    pub fn ews_url(&self, side: ServerSide) -> Option<&Url> {
        match side {
            ServerSide::External => self.external.as_ref().or(self.internal.as_ref()),
            ServerSide::Internal => self.internal.as_ref().or(self.external.as_ref()),
        }
    }
}

/// The candidate URLs for a domain, in the seed's order.
pub fn candidates(domain: &str) -> Vec<String> {
    vec![
        format!("https://autodiscover.{domain}/autodiscover/autodiscover.xml"),
        format!("https://{domain}/autodiscover/autodiscover.xml"),
        format!("http://autodiscover.{domain}/autodiscover/autodiscover.xml"),
        format!("http://{domain}/autodiscover/autodiscover.xml"),
    ]
}

enum Step {
    Settings(Box<Discovered>),
    RedirectAddr(String),
    RedirectUrl(String),
}

fn request_body(address: &str) -> Bytes {
    Bytes::from(format!(
        r#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{REQUEST_NS}"><Request><EMailAddress>{}</EMailAddress><AcceptableResponseSchema>{RESPONSE_NS}</AcceptableResponseSchema></Request></Autodiscover>"#,
        escape(address)
    ))
}

fn parse_answer(url: &Url, body: &str) -> Result<Step, String> {
    let root = xml::parse(body).map_err(|error| format!("not XML ({error})"))?;
    if let Some(error) = root.find("Error") {
        return Err(format!(
            "error {}: {}",
            error.child_text("ErrorCode").unwrap_or("?"),
            error.child_text("Message").unwrap_or_default()
        ));
    }
    let account = root
        .find("Account")
        .ok_or_else(|| format!("no Account in the answer: {}", shorten(body, 200)))?;
    match account.child_text("Action").unwrap_or_default() {
        "redirectAddr" => account
            .child_text("RedirectAddr")
            .map(|address| Step::RedirectAddr(address.to_string()))
            .ok_or_else(|| "redirectAddr without RedirectAddr".to_string()),
        "redirectUrl" => account
            .child_text("RedirectUrl")
            .map(|url| Step::RedirectUrl(url.to_string()))
            .ok_or_else(|| "redirectUrl without RedirectUrl".to_string()),
        _ => {
            let mut internal = None;
            let mut external = None;
            for protocol in account.children_named("Protocol") {
                let ews = protocol
                    .child_text("EwsUrl")
                    .and_then(|text| Url::parse(text).ok());
                match protocol.child_text("Type") {
                    Some("EXCH") => internal = internal.or(ews),
                    Some("EXPR") => external = external.or(ews),
                    Some("WEB") | None | Some(_) => {}
                }
            }
            if internal.is_none() && external.is_none() {
                return Err("the settings name no EwsUrl (EXCH or EXPR)".to_string());
            }
            Ok(Step::Settings(Box::new(Discovered {
                internal,
                external,
                answered_by: url.clone(),
            })))
        }
    }
}

/// What an answer said, for an error message about a candidate whose answer was not used.
fn describe(step: &Result<Step, String>) -> String {
    match step {
        Ok(Step::Settings(found)) => match found.external.as_ref().or(found.internal.as_ref()) {
            Some(ews) => format!("settings (EWS at {ews})"),
            None => "settings".to_string(),
        },
        Ok(Step::RedirectUrl(next)) => format!("a redirectUrl to {}", shorten(next, 200)),
        Ok(Step::RedirectAddr(next)) => format!("a redirectAddr to {}", shorten(next, 200)),
        Err(detail) => format!("HTTP 200 ({detail})"),
    }
}

/// `text` as an https URL, the only kind of URL Autodiscover is redirected to.
fn https_url(text: &str) -> Option<Url> {
    Url::parse(text.trim())
        .ok()
        .filter(|url| url.scheme() == "https")
}

/// Runs Autodiscover for `address`, from `configured` or the address's domain.
///
/// As in Microsoft's documented process, answers are trusted only over https: a plain-http
/// candidate (`http://autodiscover.<domain>`) is asked anonymously and only its HTTP redirect
/// to an https URL is followed; settings, `redirectUrl` or `redirectAddr` it answers are refused,
/// since anyone on the network path could have written them to send the credentials elsewhere.
/// Redirects (HTTP or `redirectUrl`) lead only to https. The one exception is an http
/// `autodiscover_url` the administrator configured, whose answers are taken as they come.
pub async fn discover(
    transport: &Transport,
    address: &str,
    configured: Option<&str>,
) -> Result<Discovered, EwsError> {
    let failed = |detail: String| EwsError::Autodiscover {
        address: address.to_string(),
        detail,
    };
    let configured_url = configured.and_then(|url| Url::parse(url.trim()).ok());
    let mut address = address.to_string();
    let mut redirects = 0usize;
    let mut queue: Vec<String> = match configured {
        Some(url) => vec![url.to_string()],
        None => {
            let domain = address
                .rsplit_once('@')
                .map(|(_, domain)| domain.to_ascii_lowercase())
                .ok_or_else(|| failed("the address has no domain".to_string()))?;
            candidates(&domain)
        }
    };
    // What each candidate answered, for the error when none gave usable settings.
    let mut tried: Vec<String> = Vec::new();
    let mut index = 0;
    while index < queue.len() {
        let mut target = queue[index].clone();
        index += 1;
        loop {
            let url = match Url::parse(&target) {
                Ok(url) => url,
                Err(error) => {
                    tried.push(format!("{target} is no URL ({error})"));
                    break;
                }
            };
            let over_https = url.scheme() == "https";
            // The administrator's own choice of an http URL is trusted; a discovered one is not.
            let trusted_plain_http = !over_https && configured_url.as_ref() == Some(&url);
            let headers = vec![(
                "Content-Type".to_string(),
                "text/xml; charset=utf-8".to_string(),
            )];
            // Plain http is asked anonymously (a GET, as Microsoft's process says), so it never
            // sees the credentials.
            let (method, auth, body) = if over_https {
                (Method::POST, Auth::Authenticated, request_body(&address))
            } else {
                (Method::GET, Auth::Anonymous, Bytes::new())
            };
            let answer = match transport
                .request(
                    method,
                    &url,
                    &headers,
                    body,
                    auth,
                    AUTODISCOVER_ANSWER_LIMIT,
                )
                .await
            {
                Ok(answer) => answer,
                Err(error @ EwsError::Unauthorized { .. }) => return Err(error),
                Err(EwsError::Network { detail, .. }) => {
                    tracing::debug!(url = %url, %detail, "Autodiscover candidate failed");
                    tried.push(format!("{url} could not be reached ({detail})"));
                    break;
                }
                Err(error) => {
                    tracing::debug!(url = %url, %error, "Autodiscover candidate failed");
                    tried.push(format!("{url}: {error}"));
                    break;
                }
            };
            if matches!(answer.status, 301 | 302 | 303 | 307 | 308) {
                let Some(location) = answer.location() else {
                    tried.push(format!(
                        "{url} answered HTTP {} without Location",
                        answer.status
                    ));
                    break;
                };
                let Some(next) = url
                    .join(&location)
                    .ok()
                    .filter(|next| next.scheme() == "https")
                else {
                    tried.push(format!(
                        "{url} answered HTTP {} redirecting to {}, which is refused: Autodiscover follows redirects only to https",
                        answer.status,
                        shorten(&location, 200)
                    ));
                    break;
                };
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(failed(format!("more than {MAX_REDIRECTS} redirects")));
                }
                target = next.to_string();
                continue;
            }
            if answer.status != 200 {
                tried.push(format!("{url} answered HTTP {}", answer.status));
                break;
            }
            let step = parse_answer(&url, &answer.text());
            if !over_https && !trusted_plain_http {
                tried.push(format!(
                    "{url} answered {} over plain http, which is refused: from http only a redirect to https is followed, and settings are taken over https (or from an http autodiscover_url set in the configuration)",
                    describe(&step)
                ));
                break;
            }
            match step {
                Ok(Step::Settings(discovered)) => return Ok(*discovered),
                Ok(Step::RedirectUrl(next)) => {
                    let Some(next_url) = https_url(&next) else {
                        tried.push(format!(
                            "{url} answered a redirectUrl to {}, which is refused: Autodiscover follows redirects only to https",
                            shorten(&next, 200)
                        ));
                        break;
                    };
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(failed(format!("more than {MAX_REDIRECTS} redirects")));
                    }
                    target = next_url.to_string();
                }
                Ok(Step::RedirectAddr(next_address)) => {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(failed(format!("more than {MAX_REDIRECTS} redirects")));
                    }
                    address = next_address;
                    // A new address starts over at its own domain (unless a URL was configured).
                    if configured.is_none() {
                        if let Some((_, domain)) = address.rsplit_once('@') {
                            queue = candidates(&domain.to_ascii_lowercase());
                            index = 0;
                            break;
                        }
                    }
                }
                Err(detail) => {
                    tried.push(format!("{url} answered {detail}"));
                    break;
                }
            }
        }
    }
    Err(failed(format!(
        "no candidate gave usable settings: {}",
        tried.join("; ")
    )))
}
