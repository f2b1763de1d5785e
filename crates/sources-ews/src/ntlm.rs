//! The client side of NTLMv2 (MS-NLMP): NEGOTIATE, then AUTHENTICATE answering the server's
//! CHALLENGE. No signing or sealing: EWS runs inside TLS, and Exchange asks for neither.

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
const NEGOTIATE_128: u32 = 0x2000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | NEGOTIATE_OEM
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_128
    | NEGOTIATE_56;

/// The NEGOTIATE message (type 1), without domain or workstation.
pub fn negotiate() -> Vec<u8> {
    let mut message = Vec::with_capacity(32);
    message.extend_from_slice(SIGNATURE);
    message.extend_from_slice(&1u32.to_le_bytes());
    message.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
    // Empty domain and workstation fields: length, max length, offset.
    for _ in 0..2 {
        message.extend_from_slice(&0u16.to_le_bytes());
        message.extend_from_slice(&0u16.to_le_bytes());
        message.extend_from_slice(&32u32.to_le_bytes());
    }
    message
}

/// What the CHALLENGE message (type 2) carries that the answer needs.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub server_challenge: [u8; 8],
    pub flags: u32,
    pub target_info: Vec<u8>,
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

/// The `MsvAvTimestamp` of the target info, if the server sent one.
fn target_timestamp(target_info: &[u8]) -> Option<[u8; 8]> {
    let mut at = 0;
    while at + 4 <= target_info.len() {
        let id = u16::from_le_bytes([target_info[at], target_info[at + 1]]);
        let length = u16::from_le_bytes([target_info[at + 2], target_info[at + 3]]) as usize;
        let value = target_info.get(at + 4..at + 4 + length)?;
        match id {
            0 => return None,
            7 => return value.try_into().ok(),
            _ => at += 4 + length,
        }
    }
    None
}

/// Splits `DOMAIN\user` into (user, domain); `user@domain` and bare names keep an empty domain,
/// which Exchange accepts for UPNs.
pub fn split_user(logon: &str) -> (&str, &str) {
    match logon.split_once('\\') {
        Some((domain, user)) => (user, domain),
        None => (logon, ""),
    }
}

/// The AUTHENTICATE message (type 3) answering `challenge` with NTLMv2.
pub fn authenticate(
    logon: &str,
    password: &str,
    challenge: &Challenge,
    client_challenge: [u8; 8],
    now_filetime: u64,
) -> Vec<u8> {
    let (user, domain) = split_user(logon);
    let timestamp = target_timestamp(&challenge.target_info);
    let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
    blob.extend_from_slice(&timestamp.unwrap_or(now_filetime.to_le_bytes()));
    blob.extend_from_slice(&client_challenge);
    blob.extend_from_slice(&[0; 4]);
    blob.extend_from_slice(&challenge.target_info);
    blob.extend_from_slice(&[0; 4]);
    let key = ntowf_v2(password, user, domain);
    let proof = hmac_md5(&key, &[&challenge.server_challenge, &blob]);
    let mut nt_response = proof.to_vec();
    nt_response.extend_from_slice(&blob);
    // With a server timestamp MS-NLMP asks for an all-zero LM response.
    let lm_response = if timestamp.is_some() {
        vec![0u8; 24]
    } else {
        let mut lm = hmac_md5(&key, &[&challenge.server_challenge, &client_challenge]).to_vec();
        lm.extend_from_slice(&client_challenge);
        lm
    };
    let flags = CLIENT_FLAGS & (challenge.flags | NEGOTIATE_UNICODE);
    let domain_bytes = utf16(domain);
    let user_bytes = utf16(user);
    let workstation = utf16("CALBRIDGE");
    let payloads: [&[u8]; 6] = [
        &lm_response,
        &nt_response,
        &domain_bytes,
        &user_bytes,
        &workstation,
        &[],
    ];
    let header = 64usize;
    let mut message = Vec::with_capacity(header + payloads.iter().map(|p| p.len()).sum::<usize>());
    message.extend_from_slice(SIGNATURE);
    message.extend_from_slice(&3u32.to_le_bytes());
    let mut offset = header;
    for payload in payloads {
        let length = payload.len() as u16;
        message.extend_from_slice(&length.to_le_bytes());
        message.extend_from_slice(&length.to_le_bytes());
        message.extend_from_slice(&(offset as u32).to_le_bytes());
        offset += payload.len();
    }
    message.extend_from_slice(&flags.to_le_bytes());
    for payload in payloads {
        message.extend_from_slice(payload);
    }
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
}
