//! The app certificate that signs Entra ID client assertions (RFC 7523; Microsoft identity
//! platform, "Microsoft identity platform application authentication certificate
//! credentials"): a PS256 JWT naming the certificate by its thumbprints.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use calbridge_domain::Secret;
use jiff::Timestamp;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::RsaKeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A client assertion is valid this long; Entra ID accepts at most 10 minutes.
const ASSERTION_LIFETIME_SECONDS: i64 = 5 * 60;

/// A certificate or key file that cannot be used, naming the setting at fault (never the key's
/// content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot use `{setting}` file {}: {problem}", path.display())]
pub struct CredentialFileError {
    pub setting: &'static str,
    pub path: PathBuf,
    pub problem: String,
}

/// The app certificate's private key and thumbprints, loaded once at start.
pub struct CertificateSigner {
    key_pair: RsaKeyPair,
    /// Base64url SHA-256 of the DER certificate (`x5t#S256`, what Entra ID prefers now).
    thumbprint_sha256: String,
    /// Base64url SHA-1 of the DER certificate (`x5t`, for older Entra ID deployments).
    thumbprint_sha1: String,
    random: SystemRandom,
}

impl std::fmt::Debug for CertificateSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSigner")
            .field("x5t#S256", &self.thumbprint_sha256)
            .finish_non_exhaustive()
    }
}

impl CertificateSigner {
    /// Loads a PEM certificate and its RSA private key (PKCS#8 or PKCS#1).
    pub fn from_pem_files(
        certificate_pem: &Path,
        private_key_pem: &Path,
    ) -> Result<Self, CredentialFileError> {
        let certificate_bytes =
            std::fs::read(certificate_pem).map_err(|error| CredentialFileError {
                setting: "credential.certificate.certificate_pem",
                path: certificate_pem.to_path_buf(),
                problem: error.to_string(),
            })?;
        let key_bytes = std::fs::read(private_key_pem).map_err(|error| CredentialFileError {
            setting: "credential.certificate.private_key_pem",
            path: private_key_pem.to_path_buf(),
            problem: error.to_string(),
        })?;
        Self::from_pem(&certificate_bytes, &key_bytes).map_err(|(setting, problem)| {
            CredentialFileError {
                setting,
                path: if setting.ends_with("certificate_pem") {
                    certificate_pem.to_path_buf()
                } else {
                    private_key_pem.to_path_buf()
                },
                problem,
            }
        })
    }

    /// Parses PEM text; the error names the setting at fault.
    pub fn from_pem(
        certificate_pem: &[u8],
        private_key_pem: &[u8],
    ) -> Result<Self, (&'static str, String)> {
        let certificate = CertificateDer::from_pem_slice(certificate_pem).map_err(|error| {
            (
                "credential.certificate.certificate_pem",
                format!("no PEM CERTIFICATE found: {error}"),
            )
        })?;
        // The key's own text never goes into the error: only what kind of problem it is.
        let key = PrivateKeyDer::from_pem_slice(private_key_pem).map_err(|error| {
            (
                "credential.certificate.private_key_pem",
                format!("no PEM private key found: {error}"),
            )
        })?;
        let key_pair =
            match &key {
                PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
                PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
                _ => return Err((
                    "credential.certificate.private_key_pem",
                    "the key is not an RSA key; Entra ID client assertions need RSA (PS256/RS256)"
                        .to_string(),
                )),
            }
            .map_err(|error| {
                (
                    "credential.certificate.private_key_pem",
                    format!("not a usable RSA private key: {error}"),
                )
            })?;
        let sha256 = ring::digest::digest(&ring::digest::SHA256, certificate.as_ref());
        let sha1 = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            certificate.as_ref(),
        );
        Ok(CertificateSigner {
            key_pair,
            thumbprint_sha256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
            thumbprint_sha1: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            random: SystemRandom::new(),
        })
    }

    /// The `x5t#S256` thumbprint (base64url of the certificate's SHA-256).
    pub fn thumbprint_sha256(&self) -> &str {
        &self.thumbprint_sha256
    }

    /// A signed client assertion (PS256) for `token_url`, valid from `now` for five minutes.
    pub fn client_assertion(
        &self,
        client_id: &str,
        token_url: &str,
        now: Timestamp,
    ) -> Result<Secret, String> {
        let header = serde_json::json!({
            "alg": "PS256",
            "typ": "JWT",
            "x5t#S256": self.thumbprint_sha256,
            "x5t": self.thumbprint_sha1,
        });
        let issued_at = now.as_second();
        let claims = serde_json::json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": random_uuid(&self.random).map_err(|()| "no random numbers".to_string())?,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + ASSERTION_LIFETIME_SECONDS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &ring::signature::RSA_PSS_SHA256,
                &self.random,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "RSA signing failed".to_string())?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }

    #[cfg(test)]
    fn public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair as _;
        self.key_pair.public_key().as_ref().to_vec()
    }
}

fn random_uuid(random: &SystemRandom) -> Result<String, ()> {
    let mut bytes = [0u8; 16];
    random.fill(&mut bytes).map_err(|_| ())?;
    // Version 4, variant 1: an ordinary random UUID, the form msal uses for `jti`.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERTIFICATE: &[u8] = include_bytes!("../../testdata/app-cert.pem");
    const KEY_PKCS8: &[u8] = include_bytes!("../../testdata/app-key.pem");
    const KEY_PKCS1: &[u8] = include_bytes!("../../testdata/app-key-pkcs1.pem");

    #[test]
    fn client_assertion_is_a_ps256_jwt_with_both_thumbprints_and_a_short_life() {
        let signer = CertificateSigner::from_pem(CERTIFICATE, KEY_PKCS8).unwrap();
        let now: Timestamp = "2026-11-23T08:00:00Z".parse().unwrap();
        let token_url = "https://login.microsoftonline.com/t/oauth2/v2.0/token";
        let assertion = signer.client_assertion("app-1", token_url, now).unwrap();
        let parts: Vec<&str> = assertion.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header["alg"], "PS256");
        // Fingerprints as `openssl x509 -fingerprint -sha256 / -sha1` printed them for
        // testdata/app-cert.pem, re-encoded as base64url.
        let sha256_hex = "2548BE1F71D73578A5C21E91055680CF190B5695EC7C9EBD199E11A70F425D9B";
        let sha1_hex = "78AA98EA0A6E06DB433883F9F3FB7082ACA6C163";
        assert_eq!(header["x5t#S256"], URL_SAFE_NO_PAD.encode(hex(sha256_hex)));
        assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(hex(sha1_hex)));
        assert_eq!(claims["aud"], token_url);
        assert_eq!(claims["iss"], "app-1");
        assert_eq!(claims["sub"], "app-1");
        assert_eq!(claims["nbf"], now.as_second());
        let lifetime = claims["exp"].as_i64().unwrap() - now.as_second();
        assert!(lifetime > 0 && lifetime <= 600, "{lifetime}");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
        let signed = format!("{}.{}", parts[0], parts[1]);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PSS_2048_8192_SHA256,
            signer.public_key(),
        )
        .verify(signed.as_bytes(), &signature)
        .unwrap();
        // A tampered claim set fails verification, so the check above is meaningful.
        let tampered = format!("{}.{}x", parts[0], parts[1]);
        assert!(ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PSS_2048_8192_SHA256,
            signer.public_key(),
        )
        .verify(tampered.as_bytes(), &signature)
        .is_err());
    }

    #[test]
    fn pkcs1_keys_load_and_garbage_is_named_without_its_content() {
        let pkcs1 = CertificateSigner::from_pem(CERTIFICATE, KEY_PKCS1).unwrap();
        let pkcs8 = CertificateSigner::from_pem(CERTIFICATE, KEY_PKCS8).unwrap();
        assert_eq!(pkcs1.public_key(), pkcs8.public_key());
        let (setting, problem) =
            CertificateSigner::from_pem(CERTIFICATE, b"-----BEGIN NONSENSE-----\nhunter2\n")
                .unwrap_err();
        assert_eq!(setting, "credential.certificate.private_key_pem");
        assert!(!problem.contains("hunter2"), "{problem}");
        let (setting, _) = CertificateSigner::from_pem(b"", KEY_PKCS8).unwrap_err();
        assert_eq!(setting, "credential.certificate.certificate_pem");
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap())
            .collect()
    }
}
