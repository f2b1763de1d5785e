//! Structure-aware mutations of sample documents for the fuzz suites (`tests/fuzz.rs` of the
//! Graph source, the SIP publisher's and EWS's in-crate fuzz modules, the directory and
//! `calbridge.toml`): a valid sample is truncated, has bytes flipped, fragments inserted,
//! deleted or repeated, and tokens that break parsers spliced in (huge numbers, escapes,
//! brackets, markup). JSON samples are also edited as trees (`mutate_json.rs`).
//!
//! Included by `#[path]` from each crate's fuzz suite, so there is one copy. Failures are not
//! persisted (no `proptest-regressions` files): a failing case prints its minimal input, which
//! becomes an ordinary test next to the parser.

#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::Index;

/// Cases per property: enough to find what the mutations can reach in a debug build within
/// the suite's few seconds.
pub const CASES: u32 = 256;

pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Fragments that tend to break parsers: brackets and quotes of JSON, XML and TOML, escapes,
/// numbers beyond every integer type, control characters, invalid UTF-8, SIP line ends.
const NASTY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"true",
    b"1e999999",
    b"-1",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"340282366920938463463374607431768211456",
    b"0.000000000000000000000000000001",
    b"NaN",
    b"\\u0000",
    b"\\ud800",
    b"\\",
    b"<",
    b">",
    b"</",
    b"/>",
    b"<![CDATA[",
    b"]]>",
    b"<!--",
    b"<?xml version=\"1.0\"?>",
    b"<!DOCTYPE x [<!ENTITY a \"aaaaaaaaaa\">]>",
    b"&",
    b"&#0;",
    b"&#x110000;",
    b"&unknown;",
    b"&amp;",
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\0",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xc3",
    b"\xe2\x82",
    "é".as_bytes(),
    "\u{10ffff}".as_bytes(),
    b"=",
    b"'",
    b"\"\"\"",
    b"[[",
    b"]]",
    b";",
    b"\t",
    b"Content-Length: 99999999999999999999",
    b"Content-Length: -1",
    b"SIP/2.0 ",
    b"%",
    b"%zz",
];

/// One edit of a document's bytes.
#[derive(Debug, Clone)]
pub enum ByteEdit {
    Truncate(Index),
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Splice(Index, Index),
    Delete(Index, usize),
    Repeat(Index, usize, usize),
}

pub fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        1 => any::<Index>().prop_map(ByteEdit::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, mask)| ByteEdit::Flip(at, mask.max(1))),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| ByteEdit::Insert(at, bytes)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(at, which)| ByteEdit::Splice(at, which)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(at, n)| ByteEdit::Delete(at, n)),
        1 => (any::<Index>(), 1usize..64, 2usize..50).prop_map(|(at, n, times)| ByteEdit::Repeat(at, n, times)),
    ]
}

/// One to six byte edits.
pub fn byte_edits() -> impl Strategy<Value = Vec<ByteEdit>> {
    prop::collection::vec(byte_edit(), 1..6)
}

pub fn apply_bytes(sample: &[u8], edits: &[ByteEdit]) -> Vec<u8> {
    let mut bytes = sample.to_vec();
    for edit in edits {
        // Positions are taken among len + 1 places, so the end is reachable too.
        let place = |at: &Index, len: usize| at.index(len + 1);
        match edit {
            ByteEdit::Truncate(at) => {
                let at = place(at, bytes.len());
                bytes.truncate(at);
            }
            ByteEdit::Flip(at, mask) => {
                if !bytes.is_empty() {
                    let at = at.index(bytes.len());
                    bytes[at] ^= mask;
                }
            }
            ByteEdit::Insert(at, inserted) => {
                let at = place(at, bytes.len());
                bytes.splice(at..at, inserted.iter().copied());
            }
            ByteEdit::Splice(at, which) => {
                let at = place(at, bytes.len());
                let token = NASTY[which.index(NASTY.len())];
                bytes.splice(at..at, token.iter().copied());
            }
            ByteEdit::Delete(at, n) => {
                let at = place(at, bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            ByteEdit::Repeat(at, n, times) => {
                let at = place(at, bytes.len());
                let end = (at + n).min(bytes.len());
                let piece = bytes[at..end].to_vec();
                for _ in 1..*times {
                    bytes.splice(end..end, piece.iter().copied());
                }
            }
        }
    }
    bytes
}

/// `<a><a>…</a></a>` `depth` levels deep inside `prefix`/`suffix` (an envelope's start and end).
pub fn deep_xml(depth: usize, prefix: &str, suffix: &str) -> String {
    format!(
        "{prefix}{}{}{suffix}",
        "<a>".repeat(depth),
        "</a>".repeat(depth)
    )
}
