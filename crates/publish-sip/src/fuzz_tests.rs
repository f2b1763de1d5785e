//! Property-based fuzzing of what a SIP presence server (or anyone who can reach calbridge's
//! port) sends: responses over UDP and TCP framing, and digest challenges. Arbitrary bytes and
//! mutated real answers must give a message or `SipError`, never a panic; a frame is never
//! longer than the buffer it was cut from.
//!
//! In the crate, not in `tests/`, because the parser is private.

#[path = "../../net/tests/support/mutate.rs"]
mod mutate;

use mutate::{apply_bytes, byte_edits, config};
use proptest::prelude::*;

use crate::digest::Challenge;
use crate::message::{framed_len, parse_message, SipMessage};

/// Kamailio's challenge to a PUBLISH.
const CHALLENGE: &str = "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK776asdhds;rport=5060;received=10.0.0.5\r\nFrom: <sip:ann@example.com>;tag=1928301774\r\nTo: <sip:ann@example.com>;tag=a6c85cf\r\nCall-ID: a84b4c76e66710\r\nCSeq: 1 PUBLISH\r\nWWW-Authenticate: Digest realm=\"example.com\", nonce=\"ZWsEZWsD4h3l0Pq2\\\"x\", qop=\"auth,auth-int\", opaque=\"5ccc069c\", algorithm=MD5\r\nServer: kamailio (5.8.2 (x86_64/linux))\r\nContent-Length: 0\r\n\r\n";

/// A 200 to a PUBLISH, compact header forms, with its entity-tag and a body.
const ACCEPTED: &str = "SIP/2.0 200 OK\r\nv: SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bKnashds8\r\nf: <sip:ann@example.com>;tag=1928301774\r\nt: <sip:ann@example.com>;tag=a6c85cf\r\ni: a84b4c76e66710\r\nCSeq: 2 PUBLISH\r\nSIP-ETag: a.1700000000.1234.5.0\r\nExpires: 3600\r\nMin-Expires: 60\r\nc: text/plain\r\nl: 5\r\n\r\nhello";

/// Two messages back to back on a TCP stream, the second one cut short.
const STREAM: &str = "SIP/2.0 412 Conditional Request Failed\r\nVia: SIP/2.0/TCP 10.0.0.5;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\nSIP/2.0 100 Trying\r\nVia: SIP/2.0/TCP 10.0.0.5;branch=z9hG4bK2\r\nContent-Length: 10\r\n\r\nabc";

const SAMPLES: [&str; 3] = [CHALLENGE, ACCEPTED, STREAM];

/// Parses `bytes` as a datagram and as a stream, and reads what the publisher reads.
fn parse_everything(bytes: &[u8]) {
    let parsed = parse_message(bytes);
    if let Err(error) = &parsed {
        assert_short(error);
    }
    if let Ok(SipMessage::Response(response)) = parsed {
        assert!((100..700).contains(&response.status));
        // The reason phrase goes into `SipError::Rejected`, shortened.
        assert!(response.reason.chars().count() <= 201);
        let _ = response.branch();
        let _ = response.seconds("Expires");
        let _ = response.seconds("Min-Expires");
        let _ = response.header("SIP-ETag");
        for name in ["WWW-Authenticate", "Proxy-Authenticate"] {
            for value in response.headers_named(name) {
                if let Err(error) = Challenge::parse(value) {
                    assert_short(&error);
                }
            }
        }
    }
    let mut buffer = bytes;
    // Cut frames off the stream as the TCP transport does, until one is incomplete or bad.
    if let Err(error) = framed_len(buffer) {
        assert_short(&error);
    }
    while let Ok(Some(length)) = framed_len(buffer) {
        assert!(length <= buffer.len(), "{length} > {}", buffer.len());
        assert!(length > 0);
        let _ = parse_message(&buffer[..length]);
        buffer = &buffer[length..];
    }
}

/// An error quotes what the server sent shortened: it goes into a warning per datagram, and
/// anyone can send datagrams.
fn assert_short(error: &crate::SipError) {
    let message = error.to_string();
    assert!(
        message.chars().count() <= 400,
        "{} characters",
        message.len()
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_sip_parser(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        parse_everything(&bytes);
    }

    #[test]
    fn mutated_sip_answers_parse_or_are_malformed(sample in 0usize..SAMPLES.len(), edits in byte_edits()) {
        parse_everything(&apply_bytes(SAMPLES[sample].as_bytes(), &edits));
    }

    #[test]
    fn arbitrary_challenges_never_panic(value in ".{0,200}", repeat in 1usize..200) {
        for challenge in [value.clone(), format!("Digest {value}"), value.repeat(repeat), format!("Digest algorithm={}", value.repeat(repeat))] {
            if let Err(error) = Challenge::parse(&challenge) {
                assert_short(&error);
            }
        }
    }

    #[test]
    fn challenge_soup_never_panics(
        parts in prop::collection::vec(
            prop_oneof![
                Just("Digest "), Just("realm"), Just("nonce"), Just("qop"), Just("opaque"),
                Just("algorithm"), Just("="), Just("\""), Just("\\"), Just(","), Just(" "),
                Just("auth"), Just("MD5"), Just("é"), Just("\u{10ffff}"),
            ],
            0..40,
        )
    ) {
        let _ = Challenge::parse(&parts.concat());
    }
}

#[test]
fn huge_or_negative_content_lengths_are_malformed_not_allocated() {
    for length in [
        "99999999999999999999999",
        "18446744073709551615",
        "-1",
        "1048577",
    ] {
        let message = format!("SIP/2.0 200 OK\r\nContent-Length: {length}\r\n\r\n");
        assert!(parse_message(message.as_bytes()).is_err(), "{length}");
        assert!(framed_len(message.as_bytes()).is_err(), "{length}");
    }
}

#[test]
fn an_endless_head_is_refused_at_64_kib() {
    let mut head = b"SIP/2.0 200 OK\r\n".to_vec();
    while head.len() <= 64 * 1024 {
        head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    assert!(framed_len(&head).is_err());
    head.extend_from_slice(b"\r\n");
    assert!(parse_message(&head).is_err());
}
