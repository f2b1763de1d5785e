//! Structure-aware mutations of sample documents for the fuzz suites (`tests/fuzz.rs` of the
//! Graph source, the SIP publisher's and EWS's in-crate fuzz modules, the directory and
//! `calbridge.toml`): a valid sample is truncated, has bytes flipped, fragments inserted,
//! deleted or repeated, and tokens that break parsers spliced in (huge numbers, escapes,
//! brackets, markup). JSON samples are also edited as trees: a node replaced by another type,
//! a huge number, a long string or a deep nest; a key removed; an array element repeated.
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

/// What a JSON node is replaced with.
#[derive(Debug, Clone)]
pub enum Replacement {
    Null,
    Bool(bool),
    Integer(i64),
    Unsigned(u64),
    Float(f64),
    Text(String),
    /// A string of this many characters.
    LongText(usize),
    EmptyObject,
    EmptyArray,
    /// Arrays nested this deep.
    Deep(usize),
    /// A copy of another node of the same document.
    CopyOf(Index),
}

/// One edit of a JSON tree; the index picks a node in depth-first order.
#[derive(Debug, Clone)]
pub enum JsonEdit {
    Replace(Index, Replacement),
    RemoveKey(Index),
    RenameKey(Index, String),
    /// An array's first element repeated this many times.
    RepeatElement(Index, usize),
}

fn replacement() -> impl Strategy<Value = Replacement> {
    prop_oneof![
        Just(Replacement::Null),
        any::<bool>().prop_map(Replacement::Bool),
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(-1i64),
            Just(0i64),
            any::<i64>()
        ]
        .prop_map(Replacement::Integer),
        prop_oneof![Just(u64::MAX), any::<u64>()].prop_map(Replacement::Unsigned),
        prop_oneof![
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
            Just(-0.0f64),
            any::<f64>()
        ]
        .prop_map(Replacement::Float),
        ".{0,40}".prop_map(Replacement::Text),
        prop_oneof![
            Just("2026-11-23T09:00:00".to_string()),
            Just("9999-12-31T23:59:59.9999999".to_string()),
            Just("-009999-01-01T00:00:00".to_string()),
            Just("2026-02-30T25:61:61".to_string()),
            Just("W. Europe Standard Time".to_string()),
            Just("Etc/GMT+14".to_string()),
            Just("reauthorizationRequired".to_string()),
            Just("Users('')/Events".to_string()),
            Just(
                "https://graph.microsoft.com/v1.0/users/x/calendarView/delta?$deltatoken=1"
                    .to_string()
            ),
        ]
        .prop_map(Replacement::Text),
        (1usize..200_000).prop_map(Replacement::LongText),
        Just(Replacement::EmptyObject),
        Just(Replacement::EmptyArray),
        (1usize..300).prop_map(Replacement::Deep),
        any::<Index>().prop_map(Replacement::CopyOf),
    ]
}

pub fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        4 => (any::<Index>(), replacement()).prop_map(|(at, with)| JsonEdit::Replace(at, with)),
        1 => any::<Index>().prop_map(JsonEdit::RemoveKey),
        1 => (any::<Index>(), "[a-zA-Z@.]{0,12}").prop_map(|(at, name)| JsonEdit::RenameKey(at, name)),
        1 => (any::<Index>(), 2usize..2000).prop_map(|(at, times)| JsonEdit::RepeatElement(at, times)),
    ]
}

/// One to five tree edits.
pub fn json_edits() -> impl Strategy<Value = Vec<JsonEdit>> {
    prop::collection::vec(json_edit(), 1..5)
}

fn count_nodes(value: &serde_json::Value) -> usize {
    1 + match value {
        serde_json::Value::Array(items) => items.iter().map(count_nodes).sum(),
        serde_json::Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn node_mut(value: &mut serde_json::Value, mut target: usize) -> Option<&mut serde_json::Value> {
    // Walks depth-first with an explicit stack: mutated documents may already be deep.
    let mut stack: Vec<&mut serde_json::Value> = vec![value];
    while let Some(node) = stack.pop() {
        if target == 0 {
            return Some(node);
        }
        target -= 1;
        match node {
            serde_json::Value::Array(items) => stack.extend(items.iter_mut().rev()),
            serde_json::Value::Object(map) => stack.extend(map.values_mut().rev()),
            _ => {}
        }
    }
    None
}

fn deep(depth: usize) -> serde_json::Value {
    let mut value = serde_json::Value::Null;
    for _ in 0..depth {
        value = serde_json::Value::Array(vec![value]);
    }
    value
}

/// Applies tree edits to `sample` (which must be JSON) and writes the result.
pub fn apply_json(sample: &str, edits: &[JsonEdit]) -> String {
    let mut value: serde_json::Value = serde_json::from_str(sample).expect("the sample is JSON");
    for edit in edits {
        let n_nodes = count_nodes(&value);
        match edit {
            JsonEdit::Replace(at, with) => {
                let copied = match with {
                    Replacement::CopyOf(other) => {
                        node_mut(&mut value, other.index(n_nodes)).map(|node| node.clone())
                    }
                    _ => None,
                };
                let new = match with {
                    Replacement::Null => serde_json::Value::Null,
                    Replacement::Bool(flag) => serde_json::Value::Bool(*flag),
                    Replacement::Integer(number) => serde_json::json!(number),
                    Replacement::Unsigned(number) => serde_json::json!(number),
                    Replacement::Float(number) => serde_json::json!(number),
                    Replacement::Text(text) => serde_json::Value::String(text.clone()),
                    Replacement::LongText(n) => serde_json::Value::String("x".repeat(*n)),
                    Replacement::EmptyObject => serde_json::json!({}),
                    Replacement::EmptyArray => serde_json::json!([]),
                    Replacement::Deep(depth) => deep(*depth),
                    Replacement::CopyOf(_) => copied.unwrap_or(serde_json::Value::Null),
                };
                if let Some(node) = node_mut(&mut value, at.index(n_nodes)) {
                    *node = new;
                }
            }
            JsonEdit::RemoveKey(at) => {
                if let Some(serde_json::Value::Object(map)) =
                    node_mut(&mut value, at.index(n_nodes))
                {
                    if !map.is_empty() {
                        let key = map.keys().nth(at.index(map.len())).cloned();
                        if let Some(key) = key {
                            map.remove(&key);
                        }
                    }
                }
            }
            JsonEdit::RenameKey(at, name) => {
                if let Some(serde_json::Value::Object(map)) =
                    node_mut(&mut value, at.index(n_nodes))
                {
                    let key = map.keys().next().cloned();
                    if let Some(key) = key {
                        if let Some(moved) = map.remove(&key) {
                            map.insert(name.clone(), moved);
                        }
                    }
                }
            }
            JsonEdit::RepeatElement(at, times) => {
                if let Some(serde_json::Value::Array(items)) =
                    node_mut(&mut value, at.index(n_nodes))
                {
                    if let Some(first) = items.first().cloned() {
                        items.extend(std::iter::repeat_n(first, *times));
                    }
                }
            }
        }
    }
    // A document nested deeper than serde_json's writer allows is written by hand.
    serde_json::to_string(&value).unwrap_or_else(|_| "[".repeat(10_000))
}

/// `[[[…]]]` or `{"a":{"a":…}}` `depth` levels deep, for the explicit deep-nesting tests.
pub fn deep_json(depth: usize, object: bool) -> String {
    if object {
        format!("{}null{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
    } else {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }
}

/// `<a><a>…</a></a>` `depth` levels deep inside `prefix`/`suffix` (an envelope's start and end).
pub fn deep_xml(depth: usize, prefix: &str, suffix: &str) -> String {
    format!(
        "{prefix}{}{}{suffix}",
        "<a>".repeat(depth),
        "</a>".repeat(depth)
    )
}
