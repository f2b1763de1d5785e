//! The emulator's own certificate authority and server certificate.
//!
//! msal refuses plain-http authorities, so the emulator always serves HTTPS. Each start makes a
//! fresh CA; clients trust it through the file named in the ready line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not create the emulator's certificates: {0}")]
    Certificate(String),
    #[error("could not write the CA certificate to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not configure TLS: {0}")]
    Config(String),
}

pub struct ServerIdentity {
    pub ca_der: CertificateDer<'static>,
    pub server_config: Arc<rustls::ServerConfig>,
    /// The Extended Protection channel binding of the server certificate.
    pub channel_binding: [u8; 16],
    /// What a TLS-terminating load balancer in front of the emulator shows: another
    /// certificate for the same names from the same CA.
    pub offload_config: Arc<rustls::ServerConfig>,
}

pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Creates a CA and a server certificate for loopback plus `host_names`, and writes the CA to `ca_path`.
pub fn create_identity(host_names: &[String], ca_path: &Path) -> Result<ServerIdentity, TlsError> {
    let failure = |error: rcgen::Error| TlsError::Certificate(error.to_string());
    let ca_key = KeyPair::generate().map_err(failure)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failure)?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "m365-emulator local CA");
    ca_name.push(DnType::OrganizationName, "calbridge m365-emulator");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_certificate = ca_params.self_signed(&ca_key).map_err(failure)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for name in host_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let (server_key, server_certificate) =
        make_server_certificate(&names, "m365-emulator", &issuer)?;
    let (offload_key, offload_certificate) =
        make_server_certificate(&names, "m365-emulator TLS offload", &issuer)?;

    let ca_pem = ca_certificate.pem();
    if let Some(parent) = ca_path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| TlsError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(ca_path, &ca_pem).map_err(|source| TlsError::Write {
        path: ca_path.to_path_buf(),
        source,
    })?;

    // RFC 5929 4.1: the certificate is hashed with its signature's hash, and rcgen signs with
    // ECDSA P-256 and SHA-256.
    let certificate_hash = ring::digest::digest(&ring::digest::SHA256, server_certificate.der());
    Ok(ServerIdentity {
        ca_der: ca_certificate.der().clone(),
        server_config: server_config(&server_key, &server_certificate, &ca_certificate)?,
        channel_binding: crate::ews::ntlm::channel_binding_hash(certificate_hash.as_ref()),
        offload_config: server_config(&offload_key, &offload_certificate, &ca_certificate)?,
    })
}

/// A server certificate for `names` signed by the CA.
fn make_server_certificate(
    names: &[String],
    common_name: &str,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(KeyPair, rcgen::Certificate), TlsError> {
    let failure = |error: rcgen::Error| TlsError::Certificate(error.to_string());
    let server_key = KeyPair::generate().map_err(failure)?;
    let mut server_params = CertificateParams::new(names.to_vec()).map_err(failure)?;
    let mut server_name = DistinguishedName::new();
    server_name.push(DnType::CommonName, common_name);
    server_params.distinguished_name = server_name;
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // Strict verifiers (Python 3.13's VERIFY_X509_STRICT) insist on an authority key identifier.
    server_params.use_authority_key_identifier_extension = true;
    let certificate = server_params
        .signed_by(&server_key, issuer)
        .map_err(failure)?;
    Ok((server_key, certificate))
}

fn server_config(
    key: &KeyPair,
    certificate: &rcgen::Certificate,
    ca_certificate: &rcgen::Certificate,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let chain = vec![certificate.der().clone(), ca_certificate.der().clone()];
    let mut server_config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server_config))
}
