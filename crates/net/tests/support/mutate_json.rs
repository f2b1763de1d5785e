//! Tree edits of JSON samples for the fuzz suites, next to the byte edits of `mutate.rs`: a
//! node replaced by another type, a huge number, a long string or a deep nest; a key removed
//! or renamed; an array element repeated. Included by `#[path]` where JSON is parsed (the
//! Graph source), so that crates without `serde_json` can include `mutate.rs` alone.

#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::Index;

/// The most bytes one [`JsonEdit::RepeatElement`] adds to a document.
const MAX_GROWTH: usize = 1024 * 1024;

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
                        // Repeating a repeated long string could reach gigabytes: each
                        // repetition adds at most MAX_GROWTH bytes, so a case stays small.
                        let size = serde_json::to_vec(&first).map_or(usize::MAX, |text| text.len());
                        let times = (*times).min(MAX_GROWTH / size.max(1));
                        items.extend(std::iter::repeat_n(first, times));
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
