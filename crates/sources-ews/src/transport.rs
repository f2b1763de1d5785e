//! HTTP for EWS on hyper connections we own (TLS configured by `calbridge_net`), host overrides, NTLM per connection,
//! Basic and Bearer, the credential back-off, and the protocol log.
//!
//! NTLM authenticates a TCP connection, not a request: NEGOTIATE, CHALLENGE and AUTHENTICATE
//! must travel on one socket, and later requests on that socket need no header at all. A
//! general-purpose pool may hand the AUTHENTICATE to another socket when requests run in
//! parallel, so each connection here is owned and knows whether it is authenticated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use calbridge_domain::Secret;
use calbridge_net::Backoff;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::ServerName;
use tokio::time::Instant;
use url::Url;

use calbridge_net::clock::SystemClock;
use calbridge_net::entra::{AppCredential, AuthError, PostedAnswer, TokenPoster, TokenProvider};

use crate::channel_binding::ChannelBinding;
use crate::config::{BearerConfig, ConfigError};
use crate::error::{shorten, EwsError};
use crate::ntlm;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(100);
/// After a refused logon calbridge waits this long before trying again, doubling up to an hour:
/// a wrong password retried in a loop locks the account in Active Directory.
pub const FIRST_CREDENTIAL_BACKOFF: Duration = Duration::from_secs(60);
pub const MAX_CREDENTIAL_BACKOFF: Duration = Duration::from_secs(3600);
/// No jitter: one credential has one retry loop, so there is nothing to spread out.
const CREDENTIAL_BACKOFF: Backoff =
    Backoff::doubling(FIRST_CREDENTIAL_BACKOFF, MAX_CREDENTIAL_BACKOFF);

/// The most calbridge reads of one answer, by what the answer is. Exchange's answers are far
/// smaller; a bigger one is a wrong URL, a proxy's page or a hostile server, and reading it
/// whole would let the server decide how much memory calbridge uses.
#[derive(Debug, Clone, Copy)]
pub struct AnswerLimit {
    pub bytes: usize,
    /// What the answer is, for the error message.
    pub what: &'static str,
}

/// A SOAP answer: a `FindItem` of a full calendar window or a `GetUserAvailability` of many
/// mailboxes stays well below this.
pub const SOAP_ANSWER_LIMIT: AnswerLimit = AnswerLimit {
    bytes: 32 * 1024 * 1024,
    what: "a SOAP answer",
};
/// An Autodiscover answer (POX XML, JSON or a redirect) is a few kilobytes.
pub const AUTODISCOVER_ANSWER_LIMIT: AnswerLimit = AnswerLimit {
    bytes: 1024 * 1024,
    what: "an Autodiscover answer",
};
/// Entra ID's token answer is a few kilobytes.
const TOKEN_ANSWER_LIMIT: AnswerLimit = AnswerLimit {
    bytes: 1024 * 1024,
    what: "a token answer",
};
/// The body of a 401 (IIS's error page) read before the next handshake leg.
const ERROR_ANSWER_LIMIT: AnswerLimit = AnswerLimit {
    bytes: 256 * 1024,
    what: "an HTTP 401 answer",
};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How requests authenticate.
pub enum Credentials {
    Ntlm { user: String, password: Secret },
    Basic { user: String, password: Secret },
    Bearer(BearerToken),
}

/// Where a bearer token comes from, ready to use.
pub enum BearerToken {
    /// A token obtained elsewhere, used until EWS rejects it.
    Fixed(Secret),
    /// Entra ID's client-credentials grant, through the one token client every source shares.
    FromEntra {
        tokens: Box<TokenProvider>,
        token_url: Url,
        client_id: String,
    },
}

impl BearerToken {
    /// Checks the settings and loads the credential; asks Entra ID nothing yet.
    pub fn from_config(config: &BearerConfig) -> Result<BearerToken, ConfigError> {
        let (token_url, client_id, client_secret, scope) = match config {
            BearerConfig::FixedToken(token) => return Ok(BearerToken::Fixed(token.clone())),
            BearerConfig::ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => (token_url, client_id, client_secret, scope),
        };
        let url = Url::parse(token_url).map_err(|error| ConfigError::Url {
            setting: "token_url",
            value: token_url.clone(),
            problem: error.to_string(),
        })?;
        // Entra ID's token URL is `{authority}/{tenant}/oauth2/v2.0/token`; the tenant is only
        // named in errors.
        let tenant = url
            .path_segments()
            .and_then(|mut segments| segments.next())
            .unwrap_or_default()
            .to_string();
        let tokens = TokenProvider::new(
            url.as_str(),
            scope,
            &tenant,
            client_id,
            AppCredential::ClientSecret(client_secret.clone()),
            Arc::new(SystemClock),
        );
        Ok(BearerToken::FromEntra {
            tokens: Box::new(tokens),
            token_url: url,
            client_id: client_id.clone(),
        })
    }
}

impl Credentials {
    fn user(&self) -> String {
        match self {
            Credentials::Ntlm { user, .. } | Credentials::Basic { user, .. } => user.clone(),
            Credentials::Bearer(BearerToken::FromEntra { client_id, .. }) => {
                format!("app {client_id}")
            }
            Credentials::Bearer(BearerToken::Fixed(_)) => "the bearer token".to_string(),
        }
    }
}

struct Connection {
    sender: SendRequest<Full<Bytes>>,
    authenticated: bool,
    /// Over TLS: the binding to the certificate the server presented on this connection.
    channel_binding: Option<ChannelBinding>,
}

#[derive(Default)]
struct CredentialBackoff {
    locked_until: Option<Instant>,
    /// Refusals since the credentials last worked; the next wait is [`CREDENTIAL_BACKOFF`]'s
    /// for one more.
    refusals: u32,
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn location(&self) -> Option<String> {
        self.headers
            .get(http::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    }
}

/// Whether an NTLM logon carries the connection's TLS channel binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChannelBindingUse {
    Send,
    /// Only to tell a refused binding from refused credentials (`calbridge check`).
    Omit,
}

/// One request sent through an NTLM handshake.
#[derive(Clone, Copy)]
struct NtlmRequest<'a> {
    method: &'a Method,
    url: &'a Url,
    headers: &'a [(String, String)],
    body: &'a Bytes,
    user: &'a str,
    password: &'a Secret,
}

/// How an NTLM handshake ended.
enum NtlmOutcome {
    /// The AUTHENTICATE was accepted: the request's answer.
    Accepted(Response<Incoming>),
    /// The server answered the NEGOTIATE leg itself (no authentication asked here).
    NotAsked(Response<Incoming>),
    /// 401 without an NTLM challenge: the schemes offered.
    NoChallenge(String),
    /// 401 to the AUTHENTICATE: the schemes offered.
    Refused(String),
}

/// What [`Transport::probe_ntlm_without_channel_binding`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogonProbe {
    Accepted,
    Refused,
    /// The source does not log on with NTLM; nothing was tried.
    NotNtlm,
}

/// Whether a request carries credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Authenticated,
    Anonymous,
}

pub struct Transport {
    tls: tokio_rustls::TlsConnector,
    resolve: HashMap<String, SocketAddr>,
    credentials: Credentials,
    idle: Mutex<HashMap<String, Vec<Connection>>>,
    protocol_log: bool,
    backoff: Mutex<CredentialBackoff>,
    random: SystemRandom,
    requests_sent: AtomicU64,
}

fn origin(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// A URL as errors show it: without its query, which may carry a token.
pub(crate) fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

pub(crate) fn network(url: &Url, detail: impl Into<String>) -> EwsError {
    EwsError::Network {
        url: shown_url(url),
        detail: detail.into(),
    }
}

/// The `WWW-Authenticate: NTLM <token>` challenge of a 401.
fn ntlm_challenge(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("ntlm")
                .then(|| BASE64.decode(token.trim()).ok())
                .flatten()
        })
}

fn offered_schemes(headers: &HeaderMap) -> String {
    let schemes: Vec<&str> = headers
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.split_whitespace().next())
        .collect();
    if schemes.is_empty() {
        "HTTP 401".to_string()
    } else {
        format!("HTTP 401, server offers {}", schemes.join(", "))
    }
}

impl Transport {
    pub fn new(
        tls: rustls::ClientConfig,
        resolve: HashMap<String, SocketAddr>,
        credentials: Credentials,
        protocol_log: bool,
    ) -> Transport {
        Transport {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            resolve: resolve
                .into_iter()
                .map(|(host, address)| (host.to_ascii_lowercase(), address))
                .collect(),
            credentials,
            idle: Mutex::new(HashMap::new()),
            protocol_log,
            backoff: Mutex::new(CredentialBackoff::default()),
            random: SystemRandom::new(),
            requests_sent: AtomicU64::new(0),
        }
    }

    /// HTTP requests sent (every leg of an NTLM handshake counts).
    pub fn requests_sent(&self) -> u64 {
        self.requests_sent.load(Ordering::Relaxed)
    }

    pub fn user(&self) -> String {
        self.credentials.user()
    }

    async fn connect(&self, url: &Url) -> Result<Connection, EwsError> {
        let host = url
            .host_str()
            .ok_or_else(|| network(url, "the URL has no host"))?
            .to_ascii_lowercase();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| network(url, "the URL has no port"))?;
        let address = match self
            .resolve
            .get(&format!("{host}:{port}"))
            .or_else(|| self.resolve.get(&host))
        {
            Some(address) => *address,
            None => {
                let bare = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let mut found = tokio::net::lookup_host((bare.as_str(), port))
                    .await
                    .map_err(|error| network(url, format!("DNS lookup of {host}: {error}")))?;
                found
                    .next()
                    .ok_or_else(|| network(url, format!("DNS lookup of {host}: no address")))?
            }
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| network(url, format!("connecting to {address} timed out")))?
            .map_err(|error| network(url, format!("connecting to {address}: {error}")))?;
        let _ = tcp.set_nodelay(true);
        if url.scheme() == "https" {
            let bare = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let server_name = ServerName::try_from(bare)
                .map_err(|error| network(url, format!("invalid TLS name {host}: {error}")))?;
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(server_name, tcp))
                .await
                .map_err(|_| network(url, "the TLS handshake timed out"))?
                .map_err(|error| network(url, format!("TLS: {error}")))?;
            // The leaf comes first (RFC 8446 4.4.2); a verified connection always has one.
            let channel_binding = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(<[_]>::first)
                .map(|leaf| ChannelBinding::for_certificate(leaf.as_ref()));
            Ok(Connection {
                sender: self.handshake(url, TokioIo::new(tls)).await?,
                authenticated: false,
                channel_binding,
            })
        } else {
            Ok(Connection {
                sender: self.handshake(url, TokioIo::new(tcp)).await?,
                authenticated: false,
                channel_binding: None,
            })
        }
    }

    async fn handshake<T>(&self, url: &Url, io: T) -> Result<SendRequest<Full<Bytes>>, EwsError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|error| network(url, format!("HTTP handshake: {error}")))?;
        tokio::spawn(async move {
            // The connection ends when the server closes it or the sender is dropped.
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn take_connection(&self, url: &Url) -> Result<Connection, EwsError> {
        let key = origin(url);
        loop {
            let candidate = lock(&self.idle).get_mut(&key).and_then(Vec::pop);
            match candidate {
                Some(mut connection) => {
                    if connection.sender.is_closed() {
                        continue;
                    }
                    if connection.sender.ready().await.is_ok() {
                        return Ok(connection);
                    }
                }
                None => return self.connect(url).await,
            }
        }
    }

    fn give_back(&self, url: &Url, connection: Connection) {
        if !connection.sender.is_closed() {
            lock(&self.idle)
                .entry(origin(url))
                .or_default()
                .push(connection);
        }
    }

    /// Drops every idle connection (after a failure, or before re-discovery).
    pub fn forget_connections(&self) {
        lock(&self.idle).clear();
    }

    fn log_request(&self, method: &Method, url: &Url, headers: &[(String, String)], body: &[u8]) {
        if !self.protocol_log {
            return;
        }
        let shown: Vec<String> = headers
            .iter()
            .map(|(name, value)| {
                if name.eq_ignore_ascii_case("authorization") {
                    let scheme = value.split_whitespace().next().unwrap_or_default();
                    format!("{name}: {scheme} <redacted>")
                } else {
                    format!("{name}: {value}")
                }
            })
            .collect();
        let body_text = String::from_utf8_lossy(body);
        let body_shown = if body_text.contains("client_secret") || body_text.contains("password") {
            "<redacted: carries credentials>".to_string()
        } else {
            shorten(&body_text, 8000)
        };
        tracing::debug!(target: "calbridge::ews::protocol", %method, url = %url, headers = ?shown, body = %body_shown, "EWS request");
    }

    fn log_answer(&self, url: &Url, status: u16, body: &[u8]) {
        if !self.protocol_log {
            return;
        }
        let body_text = String::from_utf8_lossy(body);
        // The token endpoint's answer is the token itself.
        let body_shown = if body_text.contains("access_token") {
            "<redacted: carries a token>".to_string()
        } else {
            shorten(&body_text, 8000)
        };
        tracing::debug!(target: "calbridge::ews::protocol", url = %url, status, body = %body_shown, "EWS answer");
    }

    async fn send_on(
        &self,
        connection: &mut Connection,
        method: &Method,
        url: &Url,
        headers: &[(String, String)],
        body: &Bytes,
        authorization: Option<String>,
    ) -> Result<Response<Incoming>, EwsError> {
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            _ => return Err(network(url, "the URL has no host")),
        };
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let mut all_headers: Vec<(String, String)> = headers.to_vec();
        if let Some(authorization) = authorization {
            all_headers.push(("Authorization".to_string(), authorization));
        }
        self.log_request(method, url, &all_headers, body);
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, host);
        for (name, value) in &all_headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder
            .body(Full::new(body.clone()))
            .map_err(|error| network(url, format!("building the request: {error}")))?;
        self.requests_sent.fetch_add(1, Ordering::Relaxed);
        connection
            .sender
            .ready()
            .await
            .map_err(|error| network(url, error.to_string()))?;
        connection
            .sender
            .send_request(request)
            .await
            .map_err(|error| network(url, error.to_string()))
    }

    /// Reads the rest of an answer, at most `limit` of it: a larger one is an error and its
    /// connection is dropped unread.
    pub(crate) async fn collect(
        &self,
        url: &Url,
        response: Response<Incoming>,
        limit: AnswerLimit,
    ) -> Result<Answer, EwsError> {
        let (parts, body) = response.into_parts();
        let too_large = || EwsError::AnswerTooLarge {
            url: shown_url(url),
            what: limit.what,
            limit_bytes: limit.bytes,
        };
        // A declared length says it at once; `Limited` catches the rest (chunked answers and
        // lengths that lie) after reading at most the limit and one more frame.
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit.bytes as u64) {
            return Err(too_large());
        }
        let body =
            match tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(body, limit.bytes).collect())
                .await
            {
                Err(_) => return Err(network(url, "the answer timed out")),
                Ok(Err(error)) if error.is::<LengthLimitError>() => return Err(too_large()),
                Ok(Err(error)) => return Err(network(url, format!("reading the answer: {error}"))),
                Ok(Ok(collected)) => collected.to_bytes(),
            };
        self.log_answer(url, parts.status.as_u16(), &body);
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    fn check_backoff(&self) -> Result<(), EwsError> {
        let backoff = lock(&self.backoff);
        if let Some(until) = backoff.locked_until {
            let now = Instant::now();
            if until > now {
                return Err(EwsError::Unauthorized {
                    user: self.credentials.user(),
                    detail: "refused before; not asking again yet".to_string(),
                    retry_in: until - now,
                    bound_to: None,
                });
            }
        }
        Ok(())
    }

    fn refused(&self, detail: String, bound_to: Option<String>) -> EwsError {
        let mut backoff = lock(&self.backoff);
        backoff.refusals = backoff.refusals.saturating_add(1);
        let wait = CREDENTIAL_BACKOFF.delay_for(backoff.refusals);
        backoff.locked_until = Some(Instant::now() + wait);
        drop(backoff);
        let user = self.credentials.user();
        tracing::warn!(user = %user, detail = %detail, wait_s = wait.as_secs(), "Exchange refused the credentials");
        EwsError::Unauthorized {
            user,
            detail,
            retry_in: wait,
            bound_to,
        }
    }

    fn accepted(&self) {
        let mut backoff = lock(&self.backoff);
        backoff.locked_until = None;
        backoff.refusals = 0;
    }

    /// Sends a request and reads the whole answer.
    pub async fn request(
        &self,
        method: Method,
        url: &Url,
        headers: &[(String, String)],
        body: Bytes,
        auth: Auth,
        limit: AnswerLimit,
    ) -> Result<Answer, EwsError> {
        let (response, connection) = self.exchange(method, url, headers, body, auth).await?;
        let answer = self.collect(url, response, limit).await?;
        self.give_back(url, connection);
        Ok(answer)
    }

    /// Sends a request and hands back the answer's head and body unread (streaming), keeping
    /// its connection out of the pool.
    pub async fn open(
        &self,
        url: &Url,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Response<Incoming>, EwsError> {
        let (response, _connection) = self
            .exchange(Method::POST, url, headers, body, Auth::Authenticated)
            .await?;
        // The connection's sender is dropped here; hyper keeps the socket until the body ends.
        Ok(response)
    }

    async fn exchange(
        &self,
        method: Method,
        url: &Url,
        headers: &[(String, String)],
        body: Bytes,
        auth: Auth,
    ) -> Result<(Response<Incoming>, Connection), EwsError> {
        if auth == Auth::Anonymous {
            let mut connection = self.take_connection(url).await?;
            let response = self
                .send_on(&mut connection, &method, url, headers, &body, None)
                .await?;
            return Ok((response, connection));
        }
        self.check_backoff()?;
        match &self.credentials {
            Credentials::Ntlm { user, password } => {
                self.exchange_ntlm(method, url, headers, body, user, password)
                    .await
            }
            Credentials::Basic { user, password } => {
                let value = format!(
                    "Basic {}",
                    BASE64.encode(format!("{user}:{}", password.expose()))
                );
                let mut connection = self.take_connection(url).await?;
                let response = self
                    .send_on(&mut connection, &method, url, headers, &body, Some(value))
                    .await?;
                if response.status() == 401 {
                    let answer = self.collect(url, response, ERROR_ANSWER_LIMIT).await?;
                    return Err(self.refused(offered_schemes(&answer.headers), None));
                }
                self.accepted();
                Ok((response, connection))
            }
            Credentials::Bearer(bearer) => {
                let mut fresh_token_tried = false;
                loop {
                    let token = self.bearer_token(bearer).await?;
                    let mut connection = self.take_connection(url).await?;
                    let response = self
                        .send_on(
                            &mut connection,
                            &method,
                            url,
                            headers,
                            &body,
                            Some(format!("Bearer {}", token.expose())),
                        )
                        .await?;
                    if response.status() != 401 {
                        self.accepted();
                        return Ok((response, connection));
                    }
                    let answer = self.collect(url, response, ERROR_ANSWER_LIMIT).await?;
                    let fixed = match bearer {
                        BearerToken::Fixed(_) => true,
                        BearerToken::FromEntra { tokens, .. } => {
                            tokens.forget_token(&token);
                            false
                        }
                    };
                    if fresh_token_tried || fixed {
                        let diagnostics = answer
                            .headers
                            .get("x-ms-diagnostics")
                            .and_then(|value| value.to_str().ok())
                            .map(|value| format!(" ({value})"))
                            .unwrap_or_default();
                        return Err(self.refused(format!(
                            "the bearer token was rejected{diagnostics}: the app needs the full_access_as_app permission of Office 365 Exchange Online (Entra ID → App registrations → API permissions → Add → APIs my organization uses → Office 365 Exchange Online → Application permissions → full_access_as_app, then grant admin consent)"
                        ), None));
                    }
                    fresh_token_tried = true;
                }
            }
        }
    }

    async fn exchange_ntlm(
        &self,
        method: Method,
        url: &Url,
        headers: &[(String, String)],
        body: Bytes,
        user: &str,
        password: &Secret,
    ) -> Result<(Response<Incoming>, Connection), EwsError> {
        let mut connection = self.take_connection(url).await?;
        if connection.authenticated {
            let response = self
                .send_on(&mut connection, &method, url, headers, &body, None)
                .await?;
            if response.status() != 401 {
                return Ok((response, connection));
            }
            // The server forgot the connection's logon; log on again on the same socket.
            let _ = self.collect(url, response, ERROR_ANSWER_LIMIT).await?;
            connection.authenticated = false;
        }
        let request = NtlmRequest {
            method: &method,
            url,
            headers,
            body: &body,
            user,
            password,
        };
        match self
            .ntlm_handshake(&mut connection, &request, ChannelBindingUse::Send)
            .await?
        {
            NtlmOutcome::Accepted(response) => {
                self.accepted();
                connection.authenticated = true;
                Ok((response, connection))
            }
            NtlmOutcome::NotAsked(response) => Ok((response, connection)),
            NtlmOutcome::NoChallenge(offered) => Err(self.refused(
                format!("{offered} without an NTLM challenge: the server does not offer NTLM here; try auth = \"basic\""),
                None,
            )),
            NtlmOutcome::Refused(offered) => {
                let bound_to = connection
                    .channel_binding
                    .as_ref()
                    .map(|binding| binding.thumbprint.clone());
                let detail = match &bound_to {
                    Some(thumbprint) => format!(
                        "NTLM logon refused ({offered}); the logon was bound to the TLS certificate with thumbprint {thumbprint}, which Exchange's Extended Protection compares with its own, and `calbridge check` tells a refused binding from a wrong password"
                    ),
                    None => format!("NTLM logon refused ({offered})"),
                };
                Err(self.refused(detail, bound_to))
            }
        }
    }

    /// NEGOTIATE, CHALLENGE and AUTHENTICATE on `connection`, each leg carrying the request.
    async fn ntlm_handshake(
        &self,
        connection: &mut Connection,
        request: &NtlmRequest<'_>,
        binding: ChannelBindingUse,
    ) -> Result<NtlmOutcome, EwsError> {
        let NtlmRequest {
            method,
            url,
            headers,
            body,
            user,
            password,
        } = *request;
        let negotiate = ntlm::negotiate();
        let response = self
            .send_on(
                connection,
                method,
                url,
                headers,
                body,
                Some(format!("NTLM {}", BASE64.encode(&negotiate))),
            )
            .await?;
        if response.status() != 401 {
            // Anonymous access, or a server that does not do NTLM here.
            return Ok(NtlmOutcome::NotAsked(response));
        }
        let answer = self.collect(url, response, ERROR_ANSWER_LIMIT).await?;
        let Some(challenge) =
            ntlm_challenge(&answer.headers).and_then(|token| ntlm::parse_challenge(&token))
        else {
            return Ok(NtlmOutcome::NoChallenge(offered_schemes(&answer.headers)));
        };
        let mut client_challenge = [0u8; 8];
        self.random
            .fill(&mut client_challenge)
            .map_err(|_| network(url, "no random numbers for NTLM"))?;
        let spn = format!("HTTP/{}", url.host_str().unwrap_or_default());
        let channel_binding = match binding {
            ChannelBindingUse::Send => connection
                .channel_binding
                .as_ref()
                .map(|binding| &binding.md5),
            ChannelBindingUse::Omit => None,
        };
        let message = ntlm::authenticate(&ntlm::Logon {
            logon: user,
            password: password.expose(),
            negotiate: &negotiate,
            challenge: &challenge,
            spn: &spn,
            channel_binding,
            client_challenge,
            now_filetime: ntlm::filetime_now(),
        });
        let response = self
            .send_on(
                connection,
                method,
                url,
                headers,
                body,
                Some(format!("NTLM {}", BASE64.encode(message))),
            )
            .await?;
        if response.status() == 401 {
            let answer = self.collect(url, response, ERROR_ANSWER_LIMIT).await?;
            return Ok(NtlmOutcome::Refused(offered_schemes(&answer.headers)));
        }
        Ok(NtlmOutcome::Accepted(response))
    }

    /// Logs on once with NTLM on a new connection to `url` without a channel binding, posting
    /// an empty body, and says whether Exchange accepted the logon (any answer but 401). For
    /// `calbridge check` only: it tells a refused channel binding (Extended Protection set to
    /// `Allow` behind a TLS-terminating proxy) from refused credentials. It ignores the
    /// credential back-off on purpose and does not count towards it; it is one more logon
    /// attempt, which is why only the check asks for it, and only once.
    pub async fn probe_ntlm_without_channel_binding(
        &self,
        url: &Url,
    ) -> Result<LogonProbe, EwsError> {
        let Credentials::Ntlm { user, password } = &self.credentials else {
            return Ok(LogonProbe::NotNtlm);
        };
        let mut connection = self.connect(url).await?;
        let body = Bytes::new();
        let request = NtlmRequest {
            method: &Method::POST,
            url,
            headers: &[(
                "Content-Type".to_string(),
                "text/xml; charset=utf-8".to_string(),
            )],
            body: &body,
            user,
            password,
        };
        let outcome = self
            .ntlm_handshake(&mut connection, &request, ChannelBindingUse::Omit)
            .await?;
        Ok(match outcome {
            NtlmOutcome::Accepted(response) | NtlmOutcome::NotAsked(response) => {
                drop(response);
                LogonProbe::Accepted
            }
            NtlmOutcome::NoChallenge(_) | NtlmOutcome::Refused(_) => LogonProbe::Refused,
        })
    }

    async fn bearer_token(&self, bearer: &BearerToken) -> Result<Secret, EwsError> {
        let (tokens, token_url, client_id) = match bearer {
            BearerToken::Fixed(token) => return Ok(token.clone()),
            BearerToken::FromEntra {
                tokens,
                token_url,
                client_id,
            } => (tokens, token_url, client_id),
        };
        tokens.access_token(self).await.map_err(|error| match error {
            // Entra ID is unreachable or unavailable rather than refusing: no credential
            // back-off here, the caller retries as after any network failure.
            AuthError::Network { detail, .. } => network(token_url, detail),
            AuthError::ServerError { .. } | AuthError::Throttled { .. } => {
                network(token_url, error.to_string())
            }
            AuthError::BadAnswer { .. } => EwsError::BadAnswer {
                what: "the token request".to_string(),
                detail: error.to_string(),
            },
            _ => self.refused(format!(
                "Entra ID refused the token request for app {client_id}: {error} (the bearer settings of this source: client_id, client_secret, token_url)"
            ), None),
        })
    }
}

/// Token requests go out on EWS's own connections, with its host overrides and protocol log
/// (which redacts the answer's token).
impl TokenPoster for Transport {
    async fn post_form(&self, url: &str, form: String) -> Result<PostedAnswer, String> {
        let url = Url::parse(url).map_err(|error| format!("{url} is not a URL: {error}"))?;
        let headers = vec![(
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )];
        let mut connection = self
            .take_connection(&url)
            .await
            .map_err(|error| error.to_string())?;
        let response = self
            .send_on(
                &mut connection,
                &Method::POST,
                &url,
                &headers,
                &Bytes::from(form),
                None,
            )
            .await
            .map_err(|error| error.to_string())?;
        let answer = self
            .collect(&url, response, TOKEN_ANSWER_LIMIT)
            .await
            .map_err(|error| error.to_string())?;
        self.give_back(&url, connection);
        Ok(PostedAnswer {
            http_status: answer.status,
            body: answer.body.to_vec(),
        })
    }
}
