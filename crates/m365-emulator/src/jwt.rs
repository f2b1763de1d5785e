//! JSON Web Tokens: signing the emulator's access tokens and checking client assertions.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("could not create the token signing key")]
    KeyGeneration,
    #[error("could not sign a token")]
    Signing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token's algorithm '{0}' is not supported")]
    UnsupportedAlgorithm(String),
}

/// A token split into its parts, not yet trusted.
pub struct UnverifiedJwt<'a> {
    pub header: Value,
    pub claims: Value,
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

pub fn decode_unverified(token: &str) -> Result<UnverifiedJwt<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let signing_input = &token[..header.len() + 1 + claims.len()];
    let decode_json = |part: &str| -> Result<Value, JwtError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| JwtError::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
    };
    Ok(UnverifiedJwt {
        header: decode_json(header)?,
        claims: decode_json(claims)?,
        signing_input,
        signature: URL_SAFE_NO_PAD
            .decode(signature.trim_end_matches('='))
            .map_err(|_| JwtError::Malformed)?,
    })
}

/// Signs and verifies the emulator's own access tokens.
///
/// Entra signs with RS256; the emulator uses ES256 because `ring` cannot generate RSA keys
/// and a key baked into the source would be a key everyone has. Clients must treat Graph
/// access tokens as opaque, so the algorithm is not visible to a well-behaved client.
pub struct TokenSigner {
    key_pair: EcdsaKeyPair,
    random: SystemRandom,
    pub key_id: String,
}

impl TokenSigner {
    pub fn generate() -> Result<TokenSigner, JwtError> {
        let random = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random)
            .map_err(|_| JwtError::KeyGeneration)?;
        let key_pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &random)
                .map_err(|_| JwtError::KeyGeneration)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key_pair.public_key().as_ref());
        let key_id = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..20]);
        Ok(TokenSigner {
            key_pair,
            random,
            key_id,
        })
    }

    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        let header = json!({"typ": "JWT", "alg": "ES256", "kid": self.key_id, "x5t": self.key_id});
        let header_part =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(|_| JwtError::Signing)?);
        let claims_part =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(|_| JwtError::Signing)?);
        let signing_input = format!("{header_part}.{claims_part}");
        let signature = self
            .key_pair
            .sign(&self.random, signing_input.as_bytes())
            .map_err(|_| JwtError::Signing)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// Checks the signature of one of our own tokens and returns its claims (not their values).
    pub fn verify(&self, token: &str) -> Result<Value, JwtError> {
        let unverified = decode_unverified(token)?;
        let algorithm = unverified
            .header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if algorithm != "ES256" {
            return Err(JwtError::UnsupportedAlgorithm(algorithm.to_string()));
        }
        UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_FIXED,
            self.key_pair.public_key().as_ref(),
        )
        .verify(unverified.signing_input.as_bytes(), &unverified.signature)
        .map_err(|_| JwtError::BadSignature)?;
        Ok(unverified.claims)
    }

    /// The JSON Web Key Set published at `discovery/v2.0/keys`.
    pub fn jwks(&self) -> Value {
        let public_key = self.key_pair.public_key().as_ref();
        // An uncompressed P-256 point is 0x04 || x (32 bytes) || y (32 bytes).
        let (x, y) = if public_key.len() == 65 {
            (&public_key[1..33], &public_key[33..65])
        } else {
            (&[][..], &[][..])
        };
        json!({"keys": [{
            "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256",
            "kid": self.key_id, "x5t": self.key_id,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }
}

/// Verifies a client assertion's RSA signature against the registered certificate.
pub fn verify_certificate_signature(
    algorithm: &str,
    certificate_der: &[u8],
    signing_input: &[u8],
    signature: &[u8],
) -> Result<(), JwtError> {
    let verification: &dyn rustls_pki_types::SignatureVerificationAlgorithm = match algorithm {
        "PS256" => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        "RS256" => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        other => return Err(JwtError::UnsupportedAlgorithm(other.to_string())),
    };
    let der = rustls_pki_types::CertificateDer::from(certificate_der);
    let certificate = webpki::EndEntityCert::try_from(&der).map_err(|_| JwtError::Malformed)?;
    certificate
        .verify_signature(verification, signing_input, signature)
        .map_err(|_| JwtError::BadSignature)
}

/// The `x5t` (SHA-1) and `x5t#S256` thumbprints of a DER certificate, base64url.
pub fn thumbprints(certificate_der: &[u8]) -> (String, String) {
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, certificate_der);
    let sha256 = ring::digest::digest(&ring::digest::SHA256, certificate_der);
    (
        URL_SAFE_NO_PAD.encode(sha1.as_ref()),
        URL_SAFE_NO_PAD.encode(sha256.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_tampered_ones_do_not() {
        let Ok(signer) = TokenSigner::generate() else {
            panic!("key generation failed")
        };
        let Ok(token) = signer
            .sign(&json!({"aud": "https://graph.microsoft.com", "roles": ["Calendars.Read"]}))
        else {
            panic!("signing failed")
        };
        let claims = signer.verify(&token).ok();
        assert_eq!(
            claims.as_ref().and_then(|claims| claims["aud"].as_str()),
            Some("https://graph.microsoft.com")
        );
        let forged_claims = URL_SAFE_NO_PAD
            .encode(br#"{"aud":"https://graph.microsoft.com","roles":["Calendars.ReadWrite"]}"#);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert!(matches!(
            signer.verify(&forged),
            Err(JwtError::BadSignature)
        ));
        assert!(matches!(
            signer.verify("not-a-jwt"),
            Err(JwtError::Malformed)
        ));
    }
}
