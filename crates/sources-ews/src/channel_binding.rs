//! The TLS channel binding an NTLM logon carries for Extended Protection for Authentication.
//!
//! Exchange (IIS) compares the binding in the AUTHENTICATE message with the certificate it
//! presented itself. The binding is RFC 5929's `tls-server-end-point`: "tls-server-end-point:"
//! followed by a hash of the server's leaf certificate (RFC 5929 section 4.1: the hash of the
//! certificate's own signature algorithm, SHA-256 when that is MD5 or SHA-1). [MS-NLMP]
//! 3.1.5.1.2 puts it into a `gss_channel_bindings_struct` (RFC 2744 section 3.11; addresses
//! empty) and sends the MD5 of that structure as the `MsvAvChannelBindings` AV pair.
//!
//! A TLS-terminating proxy in front of Exchange shows calbridge another certificate, so the
//! binding cannot match there: the thumbprint kept here lets `calbridge check` say which
//! certificate calbridge saw.

use md5::{Digest, Md5};
use sha2::{Sha224, Sha256, Sha384, Sha512};

/// What calbridge bound a logon to: the MD5 that goes into `MsvAvChannelBindings`, and the
/// certificate's SHA-1 thumbprint (as `Get-ExchangeCertificate` and the Windows certificate
/// store show it) for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelBinding {
    pub md5: [u8; 16],
    pub thumbprint: String,
}

impl ChannelBinding {
    /// The binding for a TLS connection whose server presented `leaf_certificate` (DER).
    pub fn for_certificate(leaf_certificate: &[u8]) -> ChannelBinding {
        let mut application_data = b"tls-server-end-point:".to_vec();
        application_data.extend_from_slice(&certificate_hash(leaf_certificate));
        ChannelBinding {
            md5: gss_channel_bindings_md5(&application_data),
            thumbprint: ring::digest::digest(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                leaf_certificate,
            )
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect(),
        }
    }
}

/// MD5 of the `gss_channel_bindings_struct` with empty addresses ([MS-NLMP] 3.1.5.1.2: the
/// initiator and acceptor address types and lengths, then the application data's length and
/// bytes, all little-endian 32-bit as Windows packs them).
pub fn gss_channel_bindings_md5(application_data: &[u8]) -> [u8; 16] {
    let mut packed = Vec::with_capacity(20 + application_data.len());
    packed.extend_from_slice(&[0u8; 16]);
    packed.extend_from_slice(&(application_data.len() as u32).to_le_bytes());
    packed.extend_from_slice(application_data);
    Md5::digest(&packed).into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertificateHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// RFC 5929 section 4.1: hash the certificate with its signature algorithm's hash; MD5 and
/// SHA-1 become SHA-256. Ed25519 names no hash: SHA-256, as requests_ntlm does. RSA-PSS
/// carries its hash in parameters, which this does not read: SHA-256 is assumed, right for the
/// usual PSS-with-SHA-256 certificates and wrong (a refused logon under Extended Protection)
/// for PSS with SHA-384 or SHA-512, which Exchange certificates do not use in practice.
fn certificate_hash(certificate: &[u8]) -> Vec<u8> {
    match signature_hash(certificate).unwrap_or(CertificateHash::Sha256) {
        CertificateHash::Sha224 => Sha224::digest(certificate).to_vec(),
        CertificateHash::Sha256 => Sha256::digest(certificate).to_vec(),
        CertificateHash::Sha384 => Sha384::digest(certificate).to_vec(),
        CertificateHash::Sha512 => Sha512::digest(certificate).to_vec(),
    }
}

/// One DER element: (tag, contents, the rest after it).
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *bytes.first()?;
    let first_length = *bytes.get(1)?;
    let (length, header) = if first_length < 0x80 {
        (usize::from(first_length), 2)
    } else {
        let n_bytes = usize::from(first_length & 0x7f);
        if n_bytes == 0 || n_bytes > 4 {
            return None;
        }
        let length = bytes
            .get(2..2 + n_bytes)?
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
        (length, 2 + n_bytes)
    };
    let end = header.checked_add(length)?;
    Some((tag, bytes.get(header..end)?, bytes.get(end..)?))
}

/// The hash of `Certificate.signatureAlgorithm` (RFC 5280 4.1.1.2), for the algorithms whose
/// OID names one; `None` for others and for bytes that are not a certificate.
fn signature_hash(certificate: &[u8]) -> Option<CertificateHash> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (tag, certificate, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_tbs_tag, _tbs, rest) = der_element(certificate)?;
    let (tag, algorithm, _) = der_element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, _) = der_element(algorithm)?;
    if tag != OID {
        return None;
    }
    // 1.2.840.113549.1.1.x (PKCS #1) and 1.2.840.10045.4.x (ECDSA).
    const PKCS1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    if let Some([last]) = oid.strip_prefix(PKCS1) {
        return match last {
            // md2, md4, md5 and sha1 WithRSAEncryption.
            2..=5 => Some(CertificateHash::Sha256),
            11 => Some(CertificateHash::Sha256),
            12 => Some(CertificateHash::Sha384),
            13 => Some(CertificateHash::Sha512),
            14 => Some(CertificateHash::Sha224),
            _ => None,
        };
    }
    if oid == ECDSA_SHA1 {
        return Some(CertificateHash::Sha256);
    }
    if let Some([last]) = oid.strip_prefix(ECDSA_SHA2) {
        return match last {
            1 => Some(CertificateHash::Sha224),
            2 => Some(CertificateHash::Sha256),
            3 => Some(CertificateHash::Sha384),
            4 => Some(CertificateHash::Sha512),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate shape with only what `signature_hash` reads: an empty TBS and the
    /// signature algorithm's OID.
    fn certificate_signed_with(oid: &[u8]) -> Vec<u8> {
        let mut algorithm = vec![0x06, oid.len() as u8];
        algorithm.extend_from_slice(oid);
        algorithm.extend_from_slice(&[0x05, 0x00]);
        let mut body = vec![0x30, 0x00, 0x30, algorithm.len() as u8];
        body.extend_from_slice(&algorithm);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut certificate = vec![0x30, body.len() as u8];
        certificate.extend_from_slice(&body);
        certificate
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm_and_sha1_becomes_sha256() {
        let pkcs1 = |last: u8| {
            let mut oid = vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
            oid.push(last);
            certificate_signed_with(&oid)
        };
        assert_eq!(signature_hash(&pkcs1(5)), Some(CertificateHash::Sha256));
        assert_eq!(signature_hash(&pkcs1(4)), Some(CertificateHash::Sha256));
        assert_eq!(signature_hash(&pkcs1(11)), Some(CertificateHash::Sha256));
        assert_eq!(signature_hash(&pkcs1(12)), Some(CertificateHash::Sha384));
        assert_eq!(signature_hash(&pkcs1(13)), Some(CertificateHash::Sha512));
        let ecdsa_sha384 =
            certificate_signed_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]);
        assert_eq!(signature_hash(&ecdsa_sha384), Some(CertificateHash::Sha384));
        let certificate = pkcs1(12);
        assert_eq!(
            certificate_hash(&certificate),
            Sha384::digest(&certificate).to_vec()
        );
        // Ed25519 (1.3.101.112) names no hash: SHA-256.
        let ed25519 = certificate_signed_with(&[0x2b, 0x65, 0x70]);
        assert_eq!(signature_hash(&ed25519), None);
        assert_eq!(
            certificate_hash(&ed25519),
            Sha256::digest(&ed25519).to_vec()
        );
    }

    #[test]
    fn garbage_is_hashed_with_sha256_without_panicking() {
        for bytes in [
            &b""[..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x80],
        ] {
            assert_eq!(signature_hash(bytes), None);
            assert_eq!(certificate_hash(bytes), Sha256::digest(bytes).to_vec());
        }
    }

    /// The value pyspnego gives: `hashlib.md5(GssChannelBindings(application_data=
    /// b"tls-server-end-point:" + bytes([1, 2, 3, 4])).pack()).hexdigest()`.
    #[test]
    fn the_bindings_structure_is_packed_as_pyspnego_and_windows_do() {
        let mut data = b"tls-server-end-point:".to_vec();
        data.extend_from_slice(&[1, 2, 3, 4]);
        let hex: String = gss_channel_bindings_md5(&data)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(hex, "cfaba3b32393b0ca9f845cbb0bbae715");
    }
}
