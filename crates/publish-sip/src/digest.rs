//! HTTP Digest authentication as SIP uses it (RFC 2617, RFC 8760 for the algorithm names):
//! MD5 only, with `qop=auth` when the server offers it and the legacy RFC 2069 form otherwise.
//! The password and the computed response never leave this module in a log or error message.

use calbridge_domain::Secret;
use md5::{Digest as _, Md5};

use crate::message::{auth_params, quoted, random_token};
use crate::SipError;

/// A challenge from a 401 `WWW-Authenticate` or a 407 `Proxy-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) realm: String,
    pub(crate) nonce: String,
    pub(crate) opaque: Option<String>,
    pub(crate) algorithm: Option<String>,
    /// Whether the server offered `qop=auth` (the only protection quality we implement).
    pub(crate) qop_auth: bool,
}

impl Challenge {
    pub(crate) fn parse(header_value: &str) -> Result<Challenge, SipError> {
        let (scheme, params) = auth_params(header_value)
            .ok_or_else(|| SipError::Malformed("unreadable authentication challenge".into()))?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(SipError::Auth(format!(
                "unsupported authentication scheme {}",
                quoted(&scheme)
            )));
        }
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let algorithm = get("algorithm");
        if let Some(algorithm) = &algorithm {
            if !algorithm.eq_ignore_ascii_case("MD5") {
                return Err(SipError::Auth(format!(
                    "the server asks for digest algorithm {}; only MD5 is implemented",
                    quoted(algorithm)
                )));
            }
        }
        let qop = get("qop");
        let qop_auth = qop
            .as_deref()
            .is_some_and(|q| q.split(',').any(|v| v.trim().eq_ignore_ascii_case("auth")));
        if qop.is_some() && !qop_auth {
            return Err(SipError::Auth(
                "the server requires qop=auth-int, which is not implemented".into(),
            ));
        }
        Ok(Challenge {
            realm: get("realm")
                .ok_or_else(|| SipError::Malformed("challenge without realm".into()))?,
            nonce: get("nonce")
                .ok_or_else(|| SipError::Malformed("challenge without nonce".into()))?,
            opaque: get("opaque"),
            algorithm,
            qop_auth,
        })
    }
}

fn md5_hex(input: &str) -> String {
    let digest = Md5::digest(input.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `response` value (RFC 2617 section 3.2.2.1). With `qop` the nonce count and client
/// nonce take part; without it the RFC 2069 form is used.
pub(crate) fn digest_response(
    username: &str,
    password: &Secret,
    challenge: &Challenge,
    method: &str,
    uri: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = md5_hex(&format!(
        "{username}:{}:{}",
        challenge.realm,
        password.expose()
    ));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => md5_hex(&format!(
            "{ha1}:{}:{nc}:{cnonce}:auth:{ha2}",
            challenge.nonce
        )),
        None => md5_hex(&format!("{ha1}:{}:{ha2}", challenge.nonce)),
    }
}

/// The value of an `Authorization` / `Proxy-Authorization` header answering `challenge`.
pub(crate) fn authorization(
    username: &str,
    password: &Secret,
    challenge: &Challenge,
    method: &str,
    uri: &str,
    nonce_count: u32,
) -> String {
    let mut value = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\"",
        quote(username),
        quote(&challenge.realm),
        quote(&challenge.nonce),
        quote(uri)
    );
    if challenge.qop_auth {
        let nc = format!("{nonce_count:08x}");
        let cnonce = random_token(16);
        let response = digest_response(
            username,
            password,
            challenge,
            method,
            uri,
            Some((&nc, &cnonce)),
        );
        value.push_str(&format!(
            ", response=\"{response}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
        ));
    } else {
        let response = digest_response(username, password, challenge, method, uri, None);
        value.push_str(&format!(", response=\"{response}\""));
    }
    if let Some(algorithm) = &challenge.algorithm {
        value.push_str(&format!(", algorithm={algorithm}"));
    }
    if let Some(opaque) = &challenge.opaque {
        value.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
    }
    value
}

fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc2617_challenge() -> Challenge {
        Challenge::parse(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap()
    }

    #[test]
    fn rfc2617_worked_example_gives_the_published_response() {
        // RFC 2617 section 3.5: Mufasa / "Circle Of Life", GET /dir/index.html.
        let challenge = rfc2617_challenge();
        assert!(challenge.qop_auth);
        let response = digest_response(
            "Mufasa",
            &Secret::new("Circle Of Life"),
            &challenge,
            "GET",
            "/dir/index.html",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(response, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn authorization_header_carries_qop_nc_cnonce_and_opaque_but_not_the_password() {
        let challenge = rfc2617_challenge();
        let header = authorization(
            "Mufasa",
            &Secret::new("Circle Of Life"),
            &challenge,
            "PUBLISH",
            "sip:alice@example.com",
            2,
        );
        assert!(header.starts_with("Digest username=\"Mufasa\", realm=\"testrealm@host.com\""));
        assert!(
            header.contains("qop=auth, nc=00000002, cnonce=\""),
            "{header}"
        );
        assert!(
            header.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
            "{header}"
        );
        assert!(!header.contains("Circle"), "{header}");
    }

    #[test]
    fn challenge_without_qop_uses_the_rfc2069_form() {
        let challenge = Challenge::parse(r#"Digest realm="r", nonce="n""#).unwrap();
        assert!(!challenge.qop_auth);
        let header = authorization("u", &Secret::new("p"), &challenge, "PUBLISH", "sip:a@b", 1);
        let ha1 = md5_hex("u:r:p");
        let ha2 = md5_hex("PUBLISH:sip:a@b");
        assert!(
            header.contains(&md5_hex(&format!("{ha1}:n:{ha2}"))),
            "{header}"
        );
        assert!(!header.contains("qop"), "{header}");
    }

    #[test]
    fn unsupported_challenges_are_errors() {
        assert!(Challenge::parse("Basic realm=\"x\"").is_err());
        assert!(Challenge::parse(r#"Digest realm="r", nonce="n", algorithm=SHA-256"#).is_err());
        assert!(Challenge::parse(r#"Digest realm="r", nonce="n", qop="auth-int""#).is_err());
        assert!(Challenge::parse(r#"Digest nonce="n""#).is_err());
        assert!(Challenge::parse("Digest").is_err());
    }
}
