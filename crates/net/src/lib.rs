//! The network plumbing every calbridge edge shares, so that each piece exists once.
//!
//! **Invariant:** TLS set-up, Entra ID tokens, back-off, percent-encoding and constant-time
//! comparison live only here; sources and publishers use this crate, and no publisher depends
//! on a source crate to get an HTTP client.
//!
//! Map: [`tls`] (the rustls client configuration and the reqwest client: system roots plus an
//! optional extra CA), [`entra`] (Entra ID's client-credentials tokens: the request, the
//! answer, the cache with its refresh and credential back-off, certificate assertions),
//! [`clock`] (the injectable "now" of token lifetimes), [`body`] (answers read with a cap on
//! their size), [`backoff`] (the doubling back-off policy with optional jitter and
//! `Retry-After`), [`percent`] (percent-encoding sets for URL path segments and query values,
//! form decoding), [`constant_time_equal`] (secret comparison).
//!
//! This crate speaks no protocol of its own: wire formats (Graph JSON, SOAP, SIP) stay in the
//! crate of their edge.
//!
//! Entra ID's client-credentials grant has one client ([`entra::TokenProvider`]: secret or
//! certificate, one refresh for all callers, AADSTS classification, the credential back-off).
//! Only the sending is the source's: the Graph source posts with reqwest, the EWS transport on
//! its own connections with their host overrides and protocol log.

pub mod backoff;
pub mod body;
pub mod clock;
pub mod entra;
pub mod percent;
pub mod tls;

pub use backoff::{Backoff, Jitter};
pub use tls::{build_http_client, tls_client_config, TlsError};

/// Compares two secrets (an API token, a Graph `clientState`) in time that does not depend on
/// where they differ, so an attacker cannot learn from response times how much of a guess was
/// right. Their length is not hidden: it is not secret.
pub fn constant_time_equal(presented: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    presented.ct_eq(expected).into()
}

#[cfg(test)]
mod tests {
    use super::constant_time_equal;

    #[test]
    fn constant_time_equal_accepts_only_the_same_bytes() {
        assert!(constant_time_equal(b"same", b"same"));
        assert!(constant_time_equal(b"", b""));
        assert!(!constant_time_equal(b"same", b"sane"));
        assert!(!constant_time_equal(b"same", b"Same"));
        // A prefix is not a match, in either order.
        assert!(!constant_time_equal(b"same", b"same!"));
        assert!(!constant_time_equal(b"same!", b"same"));
        assert!(!constant_time_equal(b"", b"x"));
    }
}
