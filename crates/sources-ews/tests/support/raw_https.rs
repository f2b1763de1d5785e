//! One HTTPS request to the emulator on a fresh connection trusting only its CA, without
//! calbridge's own client: for what a test does as someone else (a user's Outlook creating an
//! event through Graph, say).

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Sends `method url` with `body` of `content_type` (and `token` as a Bearer token, if any);
/// returns the status and the body as text.
pub async fn https(
    ready: &m365_emulator::ReadyInfo,
    method: &str,
    url: &str,
    content_type: &str,
    token: Option<&str>,
    body: String,
) -> (u16, String) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(&ready.ca_cert).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let uri: http::Uri = url.parse().unwrap();
    let host = uri.host().unwrap().to_string();
    let port = uri.port_u16().unwrap();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(
            rustls_pki_types::ServerName::try_from(host.clone()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri.path())
        .header("host", format!("{host}:{port}"))
        .header("content-type", content_type);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Full::new(bytes::Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
