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
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::ServerName;
use tokio::time::Instant;
use url::Url;

use calbridge_net::clock::SystemClock;
use calbridge_net::entra::{AppCredential, AuthError, PostedAnswer, TokenPoster, TokenProvider};

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

    async fn connect(&self, url: &Url) -> Result<SendRequest<Full<Bytes>>, EwsError> {
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
            self.handshake(url, TokioIo::new(tls)).await
        } else {
            self.handshake(url, TokioIo::new(tcp)).await
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
                None => {
                    return Ok(Connection {
                        sender: self.connect(url).await?,
                        authenticated: false,
                    })
                }
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

    /// Reads the rest of an answer.
    pub(crate) async fn collect(
        &self,
        url: &Url,
        response: Response<Incoming>,
    ) -> Result<Answer, EwsError> {
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
            .await
            .map_err(|_| network(url, "the answer timed out"))?
            .map_err(|error| network(url, format!("reading the answer: {error}")))?
            .to_bytes();
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
                });
            }
        }
        Ok(())
    }

    fn refused(&self, detail: String) -> EwsError {
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
    ) -> Result<Answer, EwsError> {
        let (response, connection) = self.exchange(method, url, headers, body, auth).await?;
        let answer = self.collect(url, response).await?;
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
                    let answer = self.collect(url, response).await?;
                    return Err(self.refused(offered_schemes(&answer.headers)));
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
                    let answer = self.collect(url, response).await?;
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
                        )));
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
            let _ = self.collect(url, response).await?;
            connection.authenticated = false;
        }
        let negotiate = format!("NTLM {}", BASE64.encode(ntlm::negotiate()));
        let response = self
            .send_on(
                &mut connection,
                &method,
                url,
                headers,
                &body,
                Some(negotiate),
            )
            .await?;
        if response.status() != 401 {
            // Anonymous access, or a server that does not do NTLM here.
            return Ok((response, connection));
        }
        let answer = self.collect(url, response).await?;
        let challenge = ntlm_challenge(&answer.headers)
            .and_then(|token| ntlm::parse_challenge(&token))
            .ok_or_else(|| {
                self.refused(format!(
                    "{} without an NTLM challenge: the server does not offer NTLM here; try auth = \"basic\"",
                    offered_schemes(&answer.headers)
                ))
            })?;
        let mut client_challenge = [0u8; 8];
        self.random
            .fill(&mut client_challenge)
            .map_err(|_| network(url, "no random numbers for NTLM"))?;
        let message = ntlm::authenticate(
            user,
            password.expose(),
            &challenge,
            client_challenge,
            ntlm::filetime_now(),
        );
        let authenticate = format!("NTLM {}", BASE64.encode(message));
        let response = self
            .send_on(
                &mut connection,
                &method,
                url,
                headers,
                &body,
                Some(authenticate),
            )
            .await?;
        if response.status() == 401 {
            let answer = self.collect(url, response).await?;
            return Err(self.refused(format!(
                "NTLM logon refused ({})",
                offered_schemes(&answer.headers)
            )));
        }
        self.accepted();
        connection.authenticated = true;
        Ok((response, connection))
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
            )),
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
            .collect(&url, response)
            .await
            .map_err(|error| error.to_string())?;
        self.give_back(&url, connection);
        Ok(PostedAnswer {
            http_status: answer.status,
            body: answer.body.to_vec(),
        })
    }
}
