//! A small XML tree read with quick-xml (namespace-aware) and an escaping helper for writing.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

pub const NS_SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const NS_MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
pub const NS_TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
pub const NS_ERRORS: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

/// One element: its namespace URI, local name, attributes (by local name), children and text.
#[derive(Debug, Default, Clone)]
pub struct Element {
    pub namespace: String,
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|child| child.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The trimmed text of a child element.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|child| child.text.trim())
    }

    /// The first element named `name` anywhere below (depth first).
    pub fn find(&self, name: &str) -> Option<&Element> {
        for child in &self.children {
            if child.name == name {
                return Some(child);
            }
            if let Some(found) = child.find(name) {
                return Some(found);
            }
        }
        None
    }
}

fn namespace_of(resolved: ResolveResult<'_>) -> Result<String, String> {
    match resolved {
        ResolveResult::Bound(namespace) => {
            Ok(String::from_utf8_lossy(namespace.as_ref()).to_string())
        }
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(prefix) => Err(format!(
            "the namespace prefix '{}' is not declared",
            String::from_utf8_lossy(&prefix)
        )),
    }
}

fn element_from(
    decoder: quick_xml::encoding::Decoder,
    namespace: String,
    start: &BytesStart<'_>,
) -> Result<Element, String> {
    let name = String::from_utf8_lossy(start.local_name().as_ref()).to_string();
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|error| format!("bad attribute in <{name}>: {error}"))?;
        let key = attribute.key;
        if key.as_ref().starts_with(b"xmlns") {
            continue;
        }
        let value = attribute
            .decode_and_unescape_value(decoder)
            .map_err(|error| format!("bad attribute value in <{name}>: {error}"))?;
        attributes.push((
            String::from_utf8_lossy(key.local_name().as_ref()).to_string(),
            value.to_string(),
        ));
    }
    Ok(Element {
        namespace,
        name,
        attributes,
        children: vec![],
        text: String::new(),
    })
}

/// Parses a document into its root element; errors name the problem and position.
pub fn parse(text: &str) -> Result<Element, String> {
    let mut reader = NsReader::from_str(text);
    let decoder = reader.decoder();
    let mut stack: Vec<Element> = Vec::new();
    loop {
        let position = reader.buffer_position();
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|error| format!("the XML is not well-formed near byte {position}: {error}"))?;
        let namespace = match &event {
            Event::Start(_) | Event::Empty(_) => namespace_of(resolved)?,
            _ => String::new(),
        };
        match event {
            Event::Start(start) => {
                let element = element_from(decoder, namespace, &start)?;
                stack.push(element);
            }
            Event::Empty(start) => {
                let element = element_from(decoder, namespace, &start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return Ok(element),
                }
            }
            Event::End(_) => {
                let Some(element) = stack.pop() else {
                    return Err("the XML has an end tag without a start tag".to_string());
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return Ok(element),
                }
            }
            Event::Text(text) => {
                if let Some(current) = stack.last_mut() {
                    let value = text
                        .unescape()
                        .map_err(|error| format!("bad text near byte {position}: {error}"))?;
                    current.text.push_str(&value);
                }
            }
            Event::CData(data) => {
                if let Some(current) = stack.last_mut() {
                    current
                        .text
                        .push_str(&String::from_utf8_lossy(data.into_inner().as_ref()));
                }
            }
            Event::Eof => {
                return Err(if stack.is_empty() {
                    "the request body is empty or has no XML element".to_string()
                } else {
                    "the XML ends before its elements are closed".to_string()
                })
            }
            _ => {}
        }
    }
}

/// Escapes text for element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespaces_attributes_and_text() {
        let document = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body><t:A Id="x&amp;y">a &lt; b</t:A><t:B/></s:Body></s:Envelope>"#;
        let root = parse(document).unwrap_or_default();
        assert_eq!(root.name, "Envelope");
        assert_eq!(root.namespace, NS_SOAP);
        let a = root.find("A").cloned().unwrap_or_default();
        assert_eq!(a.namespace, NS_TYPES);
        assert_eq!(a.attribute("Id"), Some("x&y"));
        assert_eq!(a.text, "a < b");
        assert!(root.find("B").is_some());
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("").is_err());
        assert!(parse("<x:a/>").is_err());
        assert!(parse("<a>").is_err());
    }
}
