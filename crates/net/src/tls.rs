//! The TLS client configuration every outgoing connection uses: rustls with the ring provider
//! (no OpenSSL, no aws-lc C build), the system's trust store plus an optional extra CA from a
//! PEM file (the emulator's self-signed CA, or a TLS-inspecting proxy's), HTTP/1.1 only.
//!
//! The Graph source and the webhook publisher use the reqwest client built here; the EWS source
//! uses the bare [`rustls::ClientConfig`] on its own hyper connections, because NTLM
//! authenticates a connection and so cannot go through a general-purpose pool. Both trust
//! exactly the same roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why no TLS client could be set up. Nothing in it is secret: CA certificates are public.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The extra CA file is missing, unreadable or holds no usable certificate.
    #[error("cannot read `extra_root_ca` file {path}: {problem}")]
    ExtraRootCa { path: PathBuf, problem: String },
    /// The trust store or the client could not be built (a broken system store, say).
    #[error("the TLS client cannot be set up: {problem}")]
    Setup { problem: String },
}

/// The rustls client configuration: ring, the platform's verifier with the system's roots plus
/// the certificates of `extra_root_ca`, safe default protocol versions, ALPN `http/1.1`.
pub fn tls_client_config(extra_root_ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra_roots = match extra_root_ca {
        Some(path) => read_extra_roots(path)?,
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .map_err(|error| TlsError::Setup {
                problem: format!("TLS trust store: {error}"),
            })?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Setup {
            problem: error.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // Only HTTP/1.1 is offered: EWS needs it for NTLM, and Graph's throttling is per request,
    // so HTTP/2's multiplexing would gain nothing.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The HTTPS client of the Graph source and the webhook publisher: [`tls_client_config`],
/// a connection pool, a 10 s connect and a 60 s request timeout.
pub fn build_http_client(extra_root_ca: Option<&Path>) -> Result<reqwest::Client, TlsError> {
    let tls = tls_client_config(extra_root_ca)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|error| TlsError::Setup {
            problem: error_chain(&error),
        })
}

/// Every certificate of a PEM file; an empty file or one without a `CERTIFICATE` block is an
/// error, because a configured CA that adds nothing is surely a mistake.
fn read_extra_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |problem: String| TlsError::ExtraRootCa {
        path: path.to_path_buf(),
        problem,
    };
    let certificates =
        CertificateDer::pem_file_iter(path).map_err(|error| file_error(error.to_string()))?;
    let mut extra_roots = Vec::new();
    for certificate in certificates {
        extra_roots.push(certificate.map_err(|error| file_error(error.to_string()))?);
    }
    if extra_roots.is_empty() {
        return Err(file_error("no PEM CERTIFICATE in the file".to_string()));
    }
    Ok(extra_roots)
}

/// The error with its causes, which is where reqwest and hyper put "connection refused" or
/// "invalid peer certificate".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTRA_CA: &[u8] = include_bytes!("../testdata/extra-ca.pem");

    fn write(directory: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
        let path = directory.path().join(name);
        std::fs::write(&path, content).expect("a writable temporary directory");
        path
    }

    #[test]
    fn a_missing_ca_file_is_named_in_the_error() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let missing = directory.path().join("no-such-ca.pem");
        let error = tls_client_config(Some(&missing)).unwrap_err();
        match &error {
            TlsError::ExtraRootCa { path, .. } => assert_eq!(path, &missing),
            other => panic!("expected an extra_root_ca error, got {other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains("extra_root_ca"), "{message}");
        assert!(message.contains("no-such-ca.pem"), "{message}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_says_so() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let not_pem = write(&directory, "notes.txt", b"this is not a certificate\n");
        let error = build_http_client(Some(&not_pem)).unwrap_err();
        assert_eq!(
            error,
            TlsError::ExtraRootCa {
                path: not_pem.clone(),
                problem: "no PEM CERTIFICATE in the file".to_string(),
            }
        );
        assert!(error.to_string().contains("notes.txt"));
    }

    #[test]
    fn a_ca_file_with_a_broken_certificate_block_is_refused() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let broken = write(
            &directory,
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
        );
        match tls_client_config(Some(&broken)) {
            Err(TlsError::ExtraRootCa { path, problem }) => {
                assert_eq!(path, broken);
                assert!(!problem.is_empty());
            }
            other => panic!("expected an extra_root_ca error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_ca_file_gives_an_http_1_1_configuration() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let ca = write(&directory, "ca.pem", EXTRA_CA);
        let config = tls_client_config(Some(&ca)).expect("the test CA loads");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(build_http_client(Some(&ca)).is_ok());
        assert!(build_http_client(None).is_ok());
    }
}
