//! [`Connection`]: one raw HTTP/1.1 connection to the emulator (TLS, or its plain-http port)
//! carrying several requests, as NTLM needs, and handing out response bodies unread, as
//! streaming needs; and the legs of the NTLM handshake on it.

use std::sync::Arc;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::ews::{envelope, GET_CALENDAR_FOLDER};
use super::Harness;

/// One connection (TLS, or plain http for the second port) carrying several requests, as
/// NTLM needs, and handing out response bodies unread, as streaming needs.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    /// Over TLS: the leaf certificate the server presented (DER).
    pub peer_certificate: Option<Vec<u8>>,
}

impl Connection {
    /// A TLS connection to the emulator's https port, trusting its CA as the harness's
    /// client does.
    pub async fn open(harness: &Harness) -> Connection {
        Connection::open_at(harness, &harness.emulator.ready().ews_url).await
    }

    /// A TLS connection to the port of `url` (the emulator's own, or its TLS-terminating load
    /// balancer's).
    pub async fn open_at(harness: &Harness, url: &str) -> Connection {
        let uri: hyper::Uri = url.parse().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(443);
        let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            panic!("connect")
        };
        let Ok(name) = rustls_pki_types::ServerName::try_from("127.0.0.1") else {
            panic!("name")
        };
        let Ok(stream) = tokio_rustls::TlsConnector::from(Arc::clone(&harness.client.tls))
            .connect(name, stream)
            .await
        else {
            panic!("tls")
        };
        let peer_certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.as_ref().to_vec());
        let mut connection = Connection::over(stream, port).await;
        connection.peer_certificate = peer_certificate;
        connection
    }

    /// HTTP/1.1 over an open stream (TLS or plain) to the emulator's `port`.
    async fn over<S>(stream: S, port: u16) -> Connection
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Ok((sender, connection)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            panic!("handshake")
        };
        tokio::spawn(connection);
        Connection {
            sender,
            host: format!("127.0.0.1:{port}"),
            peer_certificate: None,
        }
    }

    /// A connection to the emulator's plain-http port.
    pub async fn open_plain_http(harness: &Harness) -> Connection {
        let http = harness
            .emulator
            .ready()
            .http_url
            .clone()
            .unwrap_or_default();
        let port: u16 = http
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or(0);
        let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            panic!("connect http")
        };
        Connection::over(stream, port).await
    }

    /// Sends a request and returns the answer with its body still to be read.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: String,
    ) -> hyper::Response<hyper::body::Incoming> {
        self.send_with(method, path, authorization, &[], body).await
    }

    /// [`Connection::send`] with more headers; a `host` among them replaces the connection's
    /// own (Autodiscover's Host-header routing).
    pub async fn send_with(
        &mut self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        headers: &[(&str, &str)],
        body: String,
    ) -> hyper::Response<hyper::body::Incoming> {
        let mut builder = hyper::Request::builder().method(method).uri(path);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            builder = builder.header("host", self.host.as_str());
        }
        builder = builder.header("content-type", "text/xml; charset=utf-8");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let Ok(request) = builder.body(Full::new(Bytes::from(body))) else {
            panic!("request")
        };
        match self.sender.send_request(request).await {
            Ok(response) => response,
            Err(error) => panic!("send: {error}"),
        }
    }

    /// Sends a request and reads the whole answer: (status, `WWW-Authenticate`, body).
    pub async fn exchange(
        &mut self,
        path: &str,
        authorization: Option<&str>,
        body: String,
    ) -> (u16, Option<String>, String) {
        let response = self.send("POST", path, authorization, body).await;
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let body = response
            .into_body()
            .collect()
            .await
            .map(|collected| String::from_utf8_lossy(&collected.to_bytes()).to_string())
            .unwrap_or_default();
        (status, challenge, body)
    }
}

/// The NEGOTIATE leg; returns the status and the server's CHALLENGE message.
pub async fn ntlm_negotiate(connection: &mut Connection) -> (u16, Vec<u8>) {
    let engine = base64::engine::general_purpose::STANDARD;
    let negotiate = format!(
        "NTLM {}",
        engine.encode(m365_emulator::ntlm_client::client_negotiate())
    );
    let (status, challenge, _) = connection
        .exchange(
            "/ews/exchange.asmx",
            Some(&negotiate),
            envelope("", GET_CALENDAR_FOLDER),
        )
        .await;
    let token = engine
        .decode(
            challenge
                .unwrap_or_default()
                .trim_start_matches("NTLM ")
                .trim(),
        )
        .unwrap_or_default();
    (status, token)
}

/// The AUTHENTICATE leg answering `challenge`; returns the status.
pub async fn ntlm_authenticate(
    connection: &mut Connection,
    challenge: &[u8],
    credentials: (&str, &str, &str),
) -> u16 {
    ntlm_authenticate_bound(connection, challenge, credentials, None).await
}

/// The channel binding of a TLS server certificate, computed here from the specifications
/// rather than with the emulator's code: RFC 5929's `tls-server-end-point` (SHA-256 for the
/// emulator's ECDSA/SHA-256 certificates) in a `gss_channel_bindings_struct` with empty
/// addresses, MD5-hashed as [MS-NLMP] 3.1.5.1.2 says.
pub fn tls_server_end_point_binding(certificate: &[u8]) -> [u8; 16] {
    use md5::Digest;
    let mut application_data = b"tls-server-end-point:".to_vec();
    application_data
        .extend_from_slice(ring::digest::digest(&ring::digest::SHA256, certificate).as_ref());
    let mut packed = vec![0u8; 16];
    packed.extend_from_slice(&(application_data.len() as u32).to_le_bytes());
    packed.extend_from_slice(&application_data);
    md5::Md5::digest(&packed).into()
}

/// The AUTHENTICATE leg answering `challenge` with `channel_binding` in its target info (or
/// none); returns the status.
pub async fn ntlm_authenticate_bound(
    connection: &mut Connection,
    challenge: &[u8],
    (user, domain, password): (&str, &str, &str),
    channel_binding: Option<[u8; 16]>,
) -> u16 {
    let engine = base64::engine::general_purpose::STANDARD;
    let authenticate = m365_emulator::ntlm_client::client_authenticate_bound(
        user,
        domain,
        password,
        challenge,
        [7; 8],
        channel_binding,
    )
    .unwrap_or_default();
    connection
        .exchange(
            "/ews/exchange.asmx",
            Some(&format!("NTLM {}", engine.encode(authenticate))),
            envelope("", GET_CALENDAR_FOLDER),
        )
        .await
        .0
}

/// One TLS connection carrying several requests, as NTLM needs: the handshake as `user`,
/// then a request without credentials. Returns the AUTHENTICATE leg's status and the
/// follow-up's.
pub async fn ntlm_exchange(
    harness: &Harness,
    user: &str,
    domain: &str,
    password: &str,
) -> (u16, u16) {
    let mut connection = Connection::open(harness).await;
    let (status, challenge) = ntlm_negotiate(&mut connection).await;
    assert_eq!(status, 401);
    let status = ntlm_authenticate(&mut connection, &challenge, (user, domain, password)).await;
    // The connection stays authenticated, as with IIS.
    let (follow_up, _, _) = connection
        .exchange(
            "/ews/exchange.asmx",
            None,
            envelope("", GET_CALENDAR_FOLDER),
        )
        .await;
    (status, follow_up)
}
