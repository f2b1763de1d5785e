//! NTLM over HTTP (MS-NLMP): the server's CHALLENGE message and the check of the client's
//! AUTHENTICATE message (NTLMv2 only), as IIS does for Exchange's `WWW-Authenticate: NTLM`:
//! the NTLMv2 proof, the MIC when the client says it sent one ([MS-NLMP] 3.2.5.1.2), and the
//! channel binding (`MsvAvChannelBindings`) that Extended Protection compares with the
//! server's own certificate.

use hmac::{Hmac, Mac};
use md4::{Digest, Md4};
use md5::Md5;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const NEGOTIATE_OEM: u32 = 0x0000_0002;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_SIGN: u32 = 0x0000_0010;
const NEGOTIATE_SEAL: u32 = 0x0000_0020;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
const NEGOTIATE_EXTENDED_SESSION_SECURITY: u32 = 0x0008_0000;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_VERSION: u32 = 0x0200_0000;
const NEGOTIATE_128: u32 = 0x2000_0000;
const NEGOTIATE_KEY_EXCH: u32 = 0x4000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

/// The NetBIOS and DNS names the server announces in its challenge.
pub struct ServerNames {
    pub netbios_domain: String,
    pub netbios_computer: String,
    pub dns_domain: String,
    pub dns_computer: String,
}

fn utf16(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn from_utf16(bytes: &[u8]) -> Option<String> {
    if bytes.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

/// A `len, maxlen, offset` field pointing into the message.
fn field(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let length = usize::from(u16_at(bytes, at)?);
    let offset = usize::try_from(u32_at(bytes, at + 4)?).ok()?;
    if length == 0 {
        return Some(&[]);
    }
    bytes.get(offset..offset.checked_add(length)?)
}

/// The message type (1, 2 or 3) of a token, if it is an NTLM message at all.
pub fn message_type(token: &[u8]) -> Option<u32> {
    if token.get(..8)? != SIGNATURE {
        return None;
    }
    u32_at(token, 8)
}

/// Flags of a NEGOTIATE message.
pub fn negotiate_flags(token: &[u8]) -> u32 {
    u32_at(token, 12).unwrap_or(NEGOTIATE_UNICODE)
}

/// Windows FILETIME (100 ns since 1601) for the given Unix seconds.
pub fn filetime(unix_seconds: i64) -> u64 {
    let seconds = unix_seconds.saturating_add(11_644_473_600).max(0);
    u64::try_from(seconds)
        .unwrap_or(0)
        .saturating_mul(10_000_000)
}

/// Builds the CHALLENGE message answering a NEGOTIATE with `client_flags`.
pub fn challenge_message(
    client_flags: u32,
    server_challenge: [u8; 8],
    names: &ServerNames,
    unix_now: i64,
) -> Vec<u8> {
    let mut flags = REQUEST_TARGET
        | NEGOTIATE_NTLM
        | NEGOTIATE_ALWAYS_SIGN
        | TARGET_TYPE_DOMAIN
        | NEGOTIATE_EXTENDED_SESSION_SECURITY
        | NEGOTIATE_TARGET_INFO
        | NEGOTIATE_VERSION;
    flags |= if client_flags & NEGOTIATE_UNICODE != 0 || client_flags & NEGOTIATE_OEM == 0 {
        NEGOTIATE_UNICODE
    } else {
        NEGOTIATE_OEM
    };
    // Echo what the client asked for among the options a Windows server grants.
    flags |= client_flags
        & (NEGOTIATE_SIGN | NEGOTIATE_SEAL | NEGOTIATE_128 | NEGOTIATE_56 | NEGOTIATE_KEY_EXCH);
    let target_name = utf16(&names.netbios_domain);
    let mut target_info = Vec::new();
    let mut pair = |id: u16, value: &[u8]| {
        target_info.extend_from_slice(&id.to_le_bytes());
        target_info.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_le_bytes());
        target_info.extend_from_slice(value);
    };
    pair(2, &utf16(&names.netbios_domain));
    pair(1, &utf16(&names.netbios_computer));
    pair(4, &utf16(&names.dns_domain));
    pair(3, &utf16(&names.dns_computer));
    pair(5, &utf16(&names.dns_domain));
    pair(7, &filetime(unix_now).to_le_bytes());
    pair(0, &[]);
    let header_length = 56usize;
    let target_name_offset = header_length;
    let target_info_offset = target_name_offset + target_name.len();
    let mut message = Vec::with_capacity(target_info_offset + target_info.len());
    message.extend_from_slice(SIGNATURE);
    message.extend_from_slice(&2u32.to_le_bytes());
    let length = |bytes: &Vec<u8>| u16::try_from(bytes.len()).unwrap_or(0).to_le_bytes();
    message.extend_from_slice(&length(&target_name));
    message.extend_from_slice(&length(&target_name));
    message.extend_from_slice(&u32::try_from(target_name_offset).unwrap_or(0).to_le_bytes());
    message.extend_from_slice(&flags.to_le_bytes());
    message.extend_from_slice(&server_challenge);
    message.extend_from_slice(&[0; 8]);
    message.extend_from_slice(&length(&target_info));
    message.extend_from_slice(&length(&target_info));
    message.extend_from_slice(&u32::try_from(target_info_offset).unwrap_or(0).to_le_bytes());
    // Version: Windows 10.0 build 17763, NTLM revision 15.
    message.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
    message.extend_from_slice(&target_name);
    message.extend_from_slice(&target_info);
    message
}

/// AV pair ids of [MS-NLMP] 2.2.2.1 the server reads back.
const AV_EOL: u16 = 0;
const AV_FLAGS: u16 = 6;
const AV_CHANNEL_BINDINGS: u16 = 10;
/// `MsvAvFlags` bit: the AUTHENTICATE message carries a MIC.
const AV_FLAG_MIC_PROVIDED: u32 = 0x0000_0002;
/// [MS-NLMP] 2.2.1.3: VERSION at 64, the MIC at 72, payload from 88 on.
const MIC_OFFSET: usize = 72;

/// What an AUTHENTICATE message says before its proof is checked.
#[derive(Debug)]
pub struct Authenticate {
    pub user: String,
    pub domain: String,
    pub workstation: String,
    nt_response: Vec<u8>,
    flags: u32,
    encrypted_session_key: Vec<u8>,
    /// The whole message, for the MIC.
    message: Vec<u8>,
    /// Where the first payload starts: a MIC fits only if that is at 88 or later.
    payload_start: usize,
}

/// What the client bound its logon to, as Extended Protection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentBinding {
    /// No `MsvAvChannelBindings`, or sixteen zero bytes (what Windows sends when it has no
    /// channel to bind to).
    None,
    /// The MD5 of the client's `gss_channel_bindings_struct`.
    Hash([u8; 16]),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NtlmError {
    #[error("the NTLM message is malformed")]
    Malformed,
    #[error("anonymous NTLM logons are not accepted")]
    Anonymous,
    #[error("only NTLMv2 responses are accepted (LAN Manager / NTLMv1 is disabled)")]
    NotVersion2,
}

pub fn parse_authenticate(token: &[u8]) -> Result<Authenticate, NtlmError> {
    if message_type(token) != Some(3) {
        return Err(NtlmError::Malformed);
    }
    let flags = u32_at(token, 60).ok_or(NtlmError::Malformed)?;
    let text = |bytes: &[u8]| -> Result<String, NtlmError> {
        if flags & NEGOTIATE_UNICODE != 0 {
            from_utf16(bytes).ok_or(NtlmError::Malformed)
        } else {
            Ok(String::from_utf8_lossy(bytes).to_string())
        }
    };
    let nt_response = field(token, 20).ok_or(NtlmError::Malformed)?.to_vec();
    let encrypted_session_key = field(token, 52).ok_or(NtlmError::Malformed)?.to_vec();
    // The lowest offset of the six payload fields (empty ones say nothing).
    let payload_start = [12usize, 20, 28, 36, 44, 52]
        .into_iter()
        .filter(|at| u16_at(token, *at).is_some_and(|length| length > 0))
        .filter_map(|at| u32_at(token, at + 4))
        .filter_map(|offset| usize::try_from(offset).ok())
        .min()
        .unwrap_or(token.len());
    let domain = text(field(token, 28).ok_or(NtlmError::Malformed)?)?;
    let user = text(field(token, 36).ok_or(NtlmError::Malformed)?)?;
    let workstation = text(field(token, 44).ok_or(NtlmError::Malformed)?)?;
    if user.is_empty() {
        return Err(NtlmError::Anonymous);
    }
    if nt_response.len() <= 24 {
        return Err(NtlmError::NotVersion2);
    }
    Ok(Authenticate {
        user,
        domain,
        workstation,
        nt_response,
        flags,
        encrypted_session_key,
        message: token.to_vec(),
        payload_start,
    })
}

/// RC4 (for the key exchange of [MS-NLMP] 3.4.5.1 `RC4K`): no maintained crate is worth a
/// dependency for twenty lines only the emulator's MIC check uses.
fn rc4(key: &[u8], data: &[u8]) -> Vec<u8> {
    if key.is_empty() {
        return data.to_vec();
    }
    let mut state: [u8; 256] = std::array::from_fn(|index| index as u8);
    let mut j = 0u8;
    for i in 0..256 {
        j = j.wrapping_add(state[i]).wrapping_add(key[i % key.len()]);
        state.swap(i, usize::from(j));
    }
    let (mut i, mut j) = (0u8, 0u8);
    data.iter()
        .map(|byte| {
            i = i.wrapping_add(1);
            j = j.wrapping_add(state[usize::from(i)]);
            state.swap(usize::from(i), usize::from(j));
            let k = state[usize::from(state[usize::from(i)].wrapping_add(state[usize::from(j)]))];
            byte ^ k
        })
        .collect()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = <Hmac<Md5> as Mac>::new_from_slice(key) else {
        return [0; 16];
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// NT hash: MD4 over the UTF-16LE password.
pub fn nt_hash(password: &str) -> [u8; 16] {
    Md4::digest(utf16(password)).into()
}

/// NTOWFv2: HMAC-MD5 keyed with the NT hash over UPPER(user) + domain in UTF-16LE.
pub fn ntowf_v2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let identity = utf16(&format!("{}{domain}", user.to_uppercase()));
    hmac_md5(&nt_hash(password), &[&identity])
}

impl Authenticate {
    /// The AV pairs the client sent inside its NTLMv2 response (after the proof and the
    /// 28-byte header of the client challenge structure, [MS-NLMP] 2.2.2.7).
    fn av_pairs(&self) -> Vec<(u16, &[u8])> {
        let mut pairs = Vec::new();
        let Some(target_info) = self.nt_response.get(44..) else {
            return pairs;
        };
        let mut at = 0;
        while let (Some(id), Some(length)) = (u16_at(target_info, at), u16_at(target_info, at + 2))
        {
            if id == AV_EOL {
                break;
            }
            let Some(value) = target_info.get(at + 4..at + 4 + usize::from(length)) else {
                break;
            };
            pairs.push((id, value));
            at += 4 + usize::from(length);
        }
        pairs
    }

    /// The channel binding the client sent.
    pub fn channel_binding(&self) -> SentBinding {
        let sent = self
            .av_pairs()
            .into_iter()
            .find(|(id, _)| *id == AV_CHANNEL_BINDINGS)
            .and_then(|(_, value)| <[u8; 16]>::try_from(value).ok());
        match sent {
            Some(hash) if hash != [0; 16] => SentBinding::Hash(hash),
            _ => SentBinding::None,
        }
    }

    /// Whether the client says the message carries a MIC (`MsvAvFlags` bit 0x2).
    pub fn claims_mic(&self) -> bool {
        self.av_pairs()
            .into_iter()
            .find(|(id, _)| *id == AV_FLAGS)
            .and_then(|(_, value)| <[u8; 4]>::try_from(value).ok())
            .is_some_and(|flags| u32::from_le_bytes(flags) & AV_FLAG_MIC_PROVIDED != 0)
    }

    /// Checks the MIC ([MS-NLMP] 3.2.5.1.2): HMAC-MD5 keyed with the exported session key over
    /// NEGOTIATE, CHALLENGE and this message with a zero MIC. Call after [`Self::verify`]
    /// succeeded with the same password.
    pub fn mic_matches(&self, password: &str, negotiate: &[u8], challenge: &[u8]) -> bool {
        if self.payload_start < MIC_OFFSET + 16 || self.nt_response.len() < 16 {
            return false;
        }
        let Some(sent) = self.message.get(MIC_OFFSET..MIC_OFFSET + 16) else {
            return false;
        };
        let key = ntowf_v2(password, &self.user, &self.domain);
        // NTLMv2: the key exchange key is the session base key, HMAC-MD5 of the proof.
        let key_exchange_key = hmac_md5(&key, &[&self.nt_response[..16]]);
        let exported =
            if self.flags & NEGOTIATE_KEY_EXCH != 0 && self.encrypted_session_key.len() == 16 {
                rc4(&key_exchange_key, &self.encrypted_session_key)
            } else {
                key_exchange_key.to_vec()
            };
        let mut zeroed = self.message.clone();
        zeroed[MIC_OFFSET..MIC_OFFSET + 16].fill(0);
        let expected = hmac_md5(&exported, &[negotiate, challenge, &zeroed]);
        expected
            .iter()
            .zip(sent)
            .fold(0u8, |acc, (left, right)| acc | (left ^ right))
            == 0
    }

    /// Checks the NTLMv2 proof against `password` for the challenge this server sent.
    pub fn verify(&self, password: &str, server_challenge: &[u8; 8]) -> bool {
        let (proof, blob) = self.nt_response.split_at(16);
        let key = ntowf_v2(password, &self.user, &self.domain);
        let expected = hmac_md5(&key, &[server_challenge, blob]);
        // Constant time is not a concern for an emulator, but it costs nothing.
        expected
            .iter()
            .zip(proof)
            .fold(0u8, |acc, (left, right)| acc | (left ^ right))
            == 0
    }
}

/// Builds an NTLMv2 AUTHENTICATE message without channel binding or MIC (the client side,
/// for tests; an NTLM client from before Extended Protection).
pub fn client_authenticate(
    user: &str,
    domain: &str,
    password: &str,
    challenge: &[u8],
    client_challenge: [u8; 8],
) -> Option<Vec<u8>> {
    client_authenticate_bound(user, domain, password, challenge, client_challenge, None)
}

/// As [`client_authenticate`], with `MsvAvChannelBindings` set to `channel_binding` (the MD5
/// of a `gss_channel_bindings_struct`) when given.
pub fn client_authenticate_bound(
    user: &str,
    domain: &str,
    password: &str,
    challenge: &[u8],
    client_challenge: [u8; 8],
    channel_binding: Option<[u8; 16]>,
) -> Option<Vec<u8>> {
    if message_type(challenge)? != 2 {
        return None;
    }
    let server_challenge: [u8; 8] = challenge.get(24..32)?.try_into().ok()?;
    let mut target_info = field(challenge, 40)?.to_vec();
    if let Some(binding) = channel_binding {
        // Before the server's closing MsvAvEOL (four zero bytes).
        let end = target_info.len().saturating_sub(4);
        let mut pair = AV_CHANNEL_BINDINGS.to_le_bytes().to_vec();
        pair.extend_from_slice(&16u16.to_le_bytes());
        pair.extend_from_slice(&binding);
        target_info.splice(end..end, pair);
    }
    let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
    blob.extend_from_slice(&filetime(0).to_le_bytes());
    blob.extend_from_slice(&client_challenge);
    blob.extend_from_slice(&[0; 4]);
    blob.extend_from_slice(&target_info);
    blob.extend_from_slice(&[0; 4]);
    let key = ntowf_v2(password, user, domain);
    let proof = hmac_md5(&key, &[&server_challenge, &blob]);
    let mut nt_response = proof.to_vec();
    nt_response.extend_from_slice(&blob);
    let lm_response = vec![0u8; 24];
    let domain_bytes = utf16(domain);
    let user_bytes = utf16(user);
    let workstation = utf16("TESTHOST");
    let header = 72usize;
    let mut payload = Vec::new();
    let mut fields = Vec::new();
    for part in [
        &lm_response,
        &nt_response,
        &domain_bytes,
        &user_bytes,
        &workstation,
        &Vec::new(),
    ] {
        let offset = header + payload.len();
        fields.push((part.len(), offset));
        payload.extend_from_slice(part);
    }
    let mut message = Vec::new();
    message.extend_from_slice(SIGNATURE);
    message.extend_from_slice(&3u32.to_le_bytes());
    for (length, offset) in fields {
        let length = u16::try_from(length).ok()?.to_le_bytes();
        message.extend_from_slice(&length);
        message.extend_from_slice(&length);
        message.extend_from_slice(&u32::try_from(offset).ok()?.to_le_bytes());
    }
    message.extend_from_slice(
        &(NEGOTIATE_UNICODE | NEGOTIATE_NTLM | NEGOTIATE_EXTENDED_SESSION_SECURITY).to_le_bytes(),
    );
    message.extend_from_slice(&[10, 0, 0x63, 0x45, 0, 0, 0, 15]);
    message.extend_from_slice(&payload);
    Some(message)
}

/// The channel binding hash of a TLS server certificate as [MS-NLMP] 3.1.5.1.2 sends it: the
/// MD5 of a `gss_channel_bindings_struct` (RFC 2744 3.11, addresses empty) whose application
/// data is RFC 5929's `tls-server-end-point:` + the certificate's hash. `certificate_hash` is
/// that hash (SHA-256 for the emulator's ECDSA P-256/SHA-256 certificates).
pub fn channel_binding_hash(certificate_hash: &[u8]) -> [u8; 16] {
    let mut application_data = b"tls-server-end-point:".to_vec();
    application_data.extend_from_slice(certificate_hash);
    let mut packed = vec![0u8; 16];
    packed.extend_from_slice(
        &u32::try_from(application_data.len())
            .unwrap_or(0)
            .to_le_bytes(),
    );
    packed.extend_from_slice(&application_data);
    Md5::digest(&packed).into()
}

/// A NEGOTIATE message (the client side, for tests).
pub fn client_negotiate() -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(SIGNATURE);
    message.extend_from_slice(&1u32.to_le_bytes());
    message.extend_from_slice(
        &(NEGOTIATE_UNICODE
            | REQUEST_TARGET
            | NEGOTIATE_NTLM
            | NEGOTIATE_EXTENDED_SESSION_SECURITY)
            .to_le_bytes(),
    );
    message.extend_from_slice(&[0; 16]);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_hash_matches_the_ms_nlmp_example() {
        // MS-NLMP 4.2.1: password "Password" → NT hash a4f49c406510bdcab6824ee7c30fd852.
        let hash = nt_hash("Password");
        let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(hex, "a4f49c406510bdcab6824ee7c30fd852");
        // MS-NLMP 4.2.4.1.1: NTOWFv2("Password", "User", "Domain") = 0c868a403bfd7a93a3001ef22ef02e3f.
        let key = ntowf_v2("Password", "User", "Domain");
        let hex: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(hex, "0c868a403bfd7a93a3001ef22ef02e3f");
    }

    fn names() -> ServerNames {
        ServerNames {
            netbios_domain: "CONTOSO".into(),
            netbios_computer: "EXCH01".into(),
            dns_domain: "contoso.example".into(),
            dns_computer: "exch01.contoso.example".into(),
        }
    }

    #[test]
    fn a_round_trip_verifies_only_the_right_password() {
        let server_challenge = [1, 2, 3, 4, 5, 6, 7, 8];
        let challenge = challenge_message(
            negotiate_flags(&client_negotiate()),
            server_challenge,
            &names(),
            0,
        );
        assert_eq!(message_type(&challenge), Some(2));
        let token =
            client_authenticate("ada", "CONTOSO", "secret", &challenge, [9; 8]).unwrap_or_default();
        let parsed = parse_authenticate(&token);
        assert!(parsed.is_ok(), "{parsed:?}");
        if let Ok(parsed) = parsed {
            assert_eq!(parsed.user, "ada");
            assert_eq!(parsed.domain, "CONTOSO");
            assert!(parsed.verify("secret", &server_challenge));
            assert!(!parsed.verify("wrong", &server_challenge));
            assert!(!parsed.verify("secret", &[0; 8]));
        }
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        assert_eq!(
            parse_authenticate(b"NTLMSSP\0\x03\0\0\0").err(),
            Some(NtlmError::Malformed)
        );
        assert!(parse_authenticate(&[]).is_err());
        let mut truncated = client_authenticate(
            "a",
            "B",
            "c",
            &challenge_message(0, [0; 8], &names(), 0),
            [0; 8],
        )
        .unwrap_or_default();
        truncated.truncate(80);
        assert!(parse_authenticate(&truncated).is_err());
    }

    #[test]
    fn rc4_matches_the_published_test_vector() {
        // Key "Key", plaintext "Plaintext" → BBF316E8D940AF0AD3 (the usual RC4 example).
        let hex: String = rc4(b"Key", b"Plaintext")
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect();
        assert_eq!(hex, "BBF316E8D940AF0AD3");
    }

    #[test]
    fn the_channel_binding_is_read_back_and_zeroes_mean_none() {
        let challenge = challenge_message(0, [3; 8], &names(), 0);
        for (sent, seen) in [
            (None, SentBinding::None),
            (Some([0; 16]), SentBinding::None),
            (Some([7; 16]), SentBinding::Hash([7; 16])),
        ] {
            let token = client_authenticate_bound("ada", "CONTOSO", "pw", &challenge, [1; 8], sent)
                .unwrap_or_default();
            let parsed = parse_authenticate(&token);
            assert!(
                matches!(&parsed, Ok(message) if message.channel_binding() == seen && message.verify("pw", &[3; 8]) && !message.claims_mic()),
                "{parsed:?}"
            );
        }
    }
}
