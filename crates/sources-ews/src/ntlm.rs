//! The client side of NTLMv2 (MS-NLMP): NEGOTIATE, then AUTHENTICATE answering the server's
//! CHALLENGE. No signing or sealing: EWS runs inside TLS, and Exchange asks for neither.
//!
//! The AUTHENTICATE carries what Extended Protection for Authentication checks (on by default
//! since Exchange 2019 CU14): the TLS channel binding in `MsvAvChannelBindings` and a MIC over
//! the three messages ([MS-NLMP] 2.2.2.1, 3.1.5.1.2, 3.2.5.1.2). It is written here rather than
//! taken from a crate: the one maintained Rust NTLM implementation with channel bindings
//! (Devolutions' `sspi`) brings a whole SSPI/Kerberos/CredSSP stack for these hundred lines.

use hmac::{Hmac, Mac};
use md4::{Digest, Md4};
use md5::Md5;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const NEGOTIATE_OEM: u32 = 0x0000_0002;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_VERSION: u32 = 0x0200_0000;
const NEGOTIATE_128: u32 = 0x2000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | NEGOTIATE_OEM
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_VERSION
    | NEGOTIATE_128
    | NEGOTIATE_56;

/// [MS-NLMP] 2.2.2.10: the VERSION structure; what it says is informational only (here
/// Windows 10.0 build 17763 and NTLM revision 15, the revision that carries a MIC).
const VERSION: [u8; 8] = [10, 0, 0x63, 0x45, 0, 0, 0, 15];

/// AV pair ids of [MS-NLMP] 2.2.2.1.
const AV_EOL: u16 = 0;
const AV_TIMESTAMP: u16 = 7;
const AV_FLAGS: u16 = 6;
const AV_TARGET_NAME: u16 = 9;
const AV_CHANNEL_BINDINGS: u16 = 10;
/// `MsvAvFlags` bit: the AUTHENTICATE message carries a MIC.
const AV_FLAG_MIC_PROVIDED: u32 = 0x0000_0002;

/// Offsets of the AUTHENTICATE message ([MS-NLMP] 2.2.1.3): six fields, the flags, VERSION at
/// 64 and the MIC at 72; the payload follows at 88.
const MIC_OFFSET: usize = 72;
const AUTHENTICATE_HEADER: usize = 88;

/// The NEGOTIATE message (type 1), without domain or workstation, with VERSION.
pub fn negotiate() -> Vec<u8> {
    let mut message = Vec::with_capacity(40);
    message.extend_from_slice(SIGNATURE);
    message.extend_from_slice(&1u32.to_le_bytes());
    message.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
    // Empty domain and workstation fields: length, max length, offset.
    for _ in 0..2 {
        message.extend_from_slice(&0u16.to_le_bytes());
        message.extend_from_slice(&0u16.to_le_bytes());
        message.extend_from_slice(&40u32.to_le_bytes());
    }
    message.extend_from_slice(&VERSION);
    message
}

/// What the CHALLENGE message (type 2) carries that the answer needs.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub server_challenge: [u8; 8],
    pub flags: u32,
    pub target_info: Vec<u8>,
    /// The whole message as received: the MIC covers it.
    pub message: Vec<u8>,
}

fn field(message: &[u8], at: usize) -> Option<&[u8]> {
    let length = u16::from_le_bytes(message.get(at..at + 2)?.try_into().ok()?) as usize;
    let offset = u32::from_le_bytes(message.get(at + 4..at + 8)?.try_into().ok()?) as usize;
    message.get(offset..offset.checked_add(length)?)
}

/// Parses a CHALLENGE message; `None` when it is not one.
pub fn parse_challenge(message: &[u8]) -> Option<Challenge> {
    if message.get(0..8)? != SIGNATURE {
        return None;
    }
    if u32::from_le_bytes(message.get(8..12)?.try_into().ok()?) != 2 {
        return None;
    }
    let flags = u32::from_le_bytes(message.get(20..24)?.try_into().ok()?);
    let server_challenge: [u8; 8] = message.get(24..32)?.try_into().ok()?;
    let target_info = if flags & NEGOTIATE_TARGET_INFO != 0 {
        field(message, 40).map(<[u8]>::to_vec).unwrap_or_default()
    } else {
        Vec::new()
    };
    Some(Challenge {
        server_challenge,
        flags,
        target_info,
        message: message.to_vec(),
    })
}

fn utf16(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Md5> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 16],
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// NTOWFv2: HMAC-MD5 over the upper-cased user and the domain, keyed with the MD4 password hash.
fn ntowf_v2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let nt_hash: [u8; 16] = Md4::digest(utf16(password)).into();
    hmac_md5(&nt_hash, &[&utf16(&user.to_uppercase()), &utf16(domain)])
}

/// The AV pairs of a target info ([MS-NLMP] 2.2.2.1), up to `MsvAvEOL`; `None` when they run
/// past the end.
fn av_pairs(target_info: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut pairs = Vec::new();
    let mut at = 0;
    while at + 4 <= target_info.len() {
        let id = u16::from_le_bytes([target_info[at], target_info[at + 1]]);
        let length = u16::from_le_bytes([target_info[at + 2], target_info[at + 3]]) as usize;
        let value = target_info.get(at + 4..at + 4 + length)?;
        if id == AV_EOL {
            return Some(pairs);
        }
        pairs.push((id, value));
        at += 4 + length;
    }
    Some(pairs)
}

/// The target info the client sends back inside its NTLMv2 response ([MS-NLMP] 3.1.5.1.2):
/// the server's pairs, `MsvAvFlags` with "MIC provided", `MsvAvTargetName` (the SPN) and, on
/// TLS, `MsvAvChannelBindings`.
fn client_target_info(
    server_pairs: &[(u16, &[u8])],
    spn: &str,
    channel_binding: Option<&[u8; 16]>,
) -> Vec<u8> {
    let mut target_info = Vec::new();
    let mut pair = |id: u16, value: &[u8]| {
        target_info.extend_from_slice(&id.to_le_bytes());
        target_info.extend_from_slice(&(value.len() as u16).to_le_bytes());
        target_info.extend_from_slice(value);
    };
    let mut av_flags = AV_FLAG_MIC_PROVIDED;
    for (id, value) in server_pairs {
        match *id {
            AV_FLAGS => {
                if let Ok(bytes) = <[u8; 4]>::try_from(*value) {
                    av_flags |= u32::from_le_bytes(bytes);
                }
            }
            // The client supplies its own.
            AV_TARGET_NAME | AV_CHANNEL_BINDINGS => {}
            _ => pair(*id, value),
        }
    }
    pair(AV_FLAGS, &av_flags.to_le_bytes());
    pair(AV_TARGET_NAME, &utf16(spn));
    if let Some(binding) = channel_binding {
        pair(AV_CHANNEL_BINDINGS, binding);
    }
    pair(AV_EOL, &[]);
    target_info
}

/// Splits `DOMAIN\user` into (user, domain); `user@domain` and bare names keep an empty domain,
/// which Exchange accepts for UPNs.
pub fn split_user(logon: &str) -> (&str, &str) {
    match logon.split_once('\\') {
        Some((domain, user)) => (user, domain),
        None => (logon, ""),
    }
}

/// What the AUTHENTICATE answers and what it is bound to.
pub struct Logon<'a> {
    pub logon: &'a str,
    pub password: &'a str,
    /// The NEGOTIATE message as sent: the MIC covers it.
    pub negotiate: &'a [u8],
    pub challenge: &'a Challenge,
    /// `HTTP/<host>`: Extended Protection's service binding when no channel binding can be checked.
    pub spn: &'a str,
    /// The MD5 of the TLS channel bindings ([`crate::channel_binding`]); `None` on plain http.
    pub channel_binding: Option<&'a [u8; 16]>,
    pub client_challenge: [u8; 8],
    pub now_filetime: u64,
}

/// The AUTHENTICATE message (type 3) answering the challenge with NTLMv2, with a MIC.
pub fn authenticate(logon: &Logon<'_>) -> Vec<u8> {
    let challenge = logon.challenge;
    let (user, domain) = split_user(logon.logon);
    let server_pairs = av_pairs(&challenge.target_info).unwrap_or_default();
    let timestamp: Option<[u8; 8]> = server_pairs
        .iter()
        .find(|(id, _)| *id == AV_TIMESTAMP)
        .and_then(|(_, value)| (*value).try_into().ok());
    let target_info = client_target_info(&server_pairs, logon.spn, logon.channel_binding);
    // [MS-NLMP] 3.3.2: the NTLMv2 client challenge structure ("temp").
    let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
    blob.extend_from_slice(&timestamp.unwrap_or(logon.now_filetime.to_le_bytes()));
    blob.extend_from_slice(&logon.client_challenge);
    blob.extend_from_slice(&[0; 4]);
    blob.extend_from_slice(&target_info);
    blob.extend_from_slice(&[0; 4]);
    let key = ntowf_v2(logon.password, user, domain);
    let proof = hmac_md5(&key, &[&challenge.server_challenge, &blob]);
    let mut nt_response = proof.to_vec();
    nt_response.extend_from_slice(&blob);
    // With a MIC, [MS-NLMP] 3.1.5.1.2 asks for an all-zero LM response.
    let lm_response = vec![0u8; 24];
    // [MS-NLMP] 3.3.2: for NTLMv2 the key exchange key is the session base key; without
    // NEGOTIATE_KEY_EXCH it is also the exported session key that keys the MIC.
    let session_key = hmac_md5(&key, &[&proof]);
    let flags = CLIENT_FLAGS & (challenge.flags | NEGOTIATE_UNICODE | NEGOTIATE_VERSION);
    let domain_bytes = utf16(domain);
    let user_bytes = utf16(user);
    let workstation = utf16("CALBRIDGE");
    let payloads: [&[u8]; 6] = [
        &lm_response,
        &nt_response,
        &domain_bytes,
        &user_bytes,
        &workstation,
        // EncryptedRandomSessionKey: empty without key exchange.
        &[],
    ];
    let mut message =
        Vec::with_capacity(AUTHENTICATE_HEADER + payloads.iter().map(|p| p.len()).sum::<usize>());
    message.extend_from_slice(SIGNATURE);
    message.extend_from_slice(&3u32.to_le_bytes());
    let mut offset = AUTHENTICATE_HEADER;
    for payload in payloads {
        let length = payload.len() as u16;
        message.extend_from_slice(&length.to_le_bytes());
        message.extend_from_slice(&length.to_le_bytes());
        message.extend_from_slice(&(offset as u32).to_le_bytes());
        offset += payload.len();
    }
    message.extend_from_slice(&flags.to_le_bytes());
    message.extend_from_slice(&VERSION);
    // The MIC is computed over the message with a zero MIC, then written in ([MS-NLMP]
    // 3.1.5.1.2: HMAC_MD5(ExportedSessionKey, NEGOTIATE | CHALLENGE | AUTHENTICATE)).
    message.extend_from_slice(&[0; 16]);
    for payload in payloads {
        message.extend_from_slice(payload);
    }
    let mic = hmac_md5(
        &session_key,
        &[logon.negotiate, &challenge.message, &message],
    );
    message[MIC_OFFSET..MIC_OFFSET + 16].copy_from_slice(&mic);
    message
}

/// Now as a Windows FILETIME (100 ns since 1601).
pub fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|duration| duration.as_nanos() / 100)
        .unwrap_or(0) as u64;
    unix + 116_444_736_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MS-NLMP 4.2.4.1.1: NTOWFv2 of "Password" for "User" in "Domain".
    #[test]
    fn ntowf_v2_matches_the_specification_example() {
        let key = ntowf_v2("Password", "User", "Domain");
        assert_eq!(
            key,
            [
                0x0c, 0x86, 0x8a, 0x40, 0x3b, 0xfd, 0x7a, 0x93, 0xa3, 0x00, 0x1e, 0xf2, 0x2e, 0xf0,
                0x2e, 0x3f
            ]
        );
    }

    #[test]
    fn negotiate_has_the_signature_and_type_1() {
        let message = negotiate();
        assert_eq!(&message[0..8], SIGNATURE);
        assert_eq!(message[8], 1);
    }

    #[test]
    fn split_user_reads_down_level_names() {
        assert_eq!(split_user("CONTOSO\\svc"), ("svc", "CONTOSO"));
        assert_eq!(split_user("svc@contoso.com"), ("svc@contoso.com", ""));
    }
    fn challenge_with_timestamp() -> Challenge {
        // MS-NLMP 4.2.4's target info (domain "Domain", server "Server") plus a timestamp.
        let mut target_info = Vec::new();
        for (id, value) in [
            (2u16, utf16("Domain")),
            (1, utf16("Server")),
            (7, vec![0; 8]),
        ] {
            target_info.extend_from_slice(&id.to_le_bytes());
            target_info.extend_from_slice(&(value.len() as u16).to_le_bytes());
            target_info.extend_from_slice(&value);
        }
        target_info.extend_from_slice(&[0; 4]);
        Challenge {
            server_challenge: [1, 2, 3, 4, 5, 6, 7, 8],
            flags: 0xe28a_8233,
            target_info,
            message: b"NTLMSSP\0\x02\0\0\0 the challenge as received".to_vec(),
        }
    }

    fn logon<'a>(
        challenge: &'a Challenge,
        binding: Option<&'a [u8; 16]>,
        negotiate: &'a [u8],
    ) -> Logon<'a> {
        Logon {
            logon: "CONTOSO\\svc",
            password: "Passw0rd",
            negotiate,
            challenge,
            spn: "HTTP/mail.contoso.example",
            channel_binding: binding,
            client_challenge: [0xaa; 8],
            now_filetime: 0,
        }
    }

    /// The AV pairs inside the NTLMv2 response of an AUTHENTICATE message.
    fn sent_pairs(message: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let nt_response = field(message, 20).unwrap_or_default();
        av_pairs(nt_response.get(44..).unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .map(|(id, value)| (id, value.to_vec()))
            .collect()
    }

    #[test]
    fn authenticate_carries_the_channel_binding_the_spn_and_the_mic_flag() {
        let challenge = challenge_with_timestamp();
        let binding = [0x5a; 16];
        let negotiate = negotiate();
        let message = authenticate(&logon(&challenge, Some(&binding), &negotiate));
        let pairs = sent_pairs(&message);
        assert!(
            pairs.contains(&(AV_CHANNEL_BINDINGS, binding.to_vec())),
            "{pairs:?}"
        );
        assert!(pairs.contains(&(AV_FLAGS, AV_FLAG_MIC_PROVIDED.to_le_bytes().to_vec())));
        assert!(pairs.contains(&(AV_TARGET_NAME, utf16("HTTP/mail.contoso.example"))));
        // The server's pairs are kept, timestamp included.
        assert!(pairs.contains(&(7, vec![0; 8])));
        assert!(pairs.contains(&(1, utf16("Server"))));
        // On plain http there is nothing to bind to.
        let message = authenticate(&logon(&challenge, None, &negotiate));
        assert!(!sent_pairs(&message)
            .iter()
            .any(|(id, _)| *id == AV_CHANNEL_BINDINGS));
    }

    #[test]
    fn the_mic_covers_all_three_messages_with_the_session_base_key() {
        let challenge = challenge_with_timestamp();
        let negotiate = negotiate();
        let message = authenticate(&logon(&challenge, Some(&[1; 16]), &negotiate));
        let mic: [u8; 16] = message[72..88].try_into().unwrap_or_default();
        assert_ne!(mic, [0; 16]);
        // Recomputed as a server would: the session base key from the password and the proof.
        let nt_response = field(&message, 20).unwrap_or_default();
        let key = ntowf_v2("Passw0rd", "svc", "CONTOSO");
        let session_key = hmac_md5(&key, &[&nt_response[..16]]);
        let mut zeroed = message.clone();
        zeroed[72..88].copy_from_slice(&[0; 16]);
        assert_eq!(
            hmac_md5(&session_key, &[&negotiate, &challenge.message, &zeroed]),
            mic
        );
        // Another NEGOTIATE (a man in the middle dropping flags) gives another MIC.
        let mut altered = negotiate.clone();
        altered[12] ^= 0x01;
        assert_ne!(
            hmac_md5(&session_key, &[&altered, &challenge.message, &zeroed]),
            mic
        );
        // The payload starts after VERSION and MIC.
        let lm_offset = u32::from_le_bytes(message[16..20].try_into().unwrap_or_default());
        assert_eq!(lm_offset, 88);
        assert_eq!(&message[64..72], &VERSION);
    }
}
