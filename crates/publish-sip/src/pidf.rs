//! The PIDF (RFC 3863) document with RPID (RFC 4480) extensions that each PUBLISH carries.
//!
//! The tuple and person ids are fixed (`calbridge`, `p-calbridge`) so that a modify replaces
//! the previous document element by element on servers that merge publications.

use crate::config::{ActivityMapping, Basic, PresenceState};

pub(crate) const CONTENT_TYPE: &str = "application/pidf+xml";

/// Builds the document for `entity` (the presentity's SIP URI).
pub(crate) fn pidf_document(
    entity: &str,
    state: &PresenceState,
    mapping: &ActivityMapping,
) -> String {
    let (basic, activity) = mapping.resolve(state);
    let basic = match basic {
        Basic::Open => "open",
        Basic::Closed => "closed",
    };
    let note = xml_escape(&state.note);
    let mut xml = String::with_capacity(600 + 2 * note.len());
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str(
        "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" \
         xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"",
    );
    xml.push_str(&xml_escape(entity));
    xml.push_str("\">\n");
    xml.push_str("  <tuple id=\"calbridge\">\n    <status><basic>");
    xml.push_str(basic);
    xml.push_str("</basic></status>\n");
    // Many phones show the tuple's note rather than the person's; carry it in both places.
    if !note.is_empty() {
        xml.push_str("    <note>");
        xml.push_str(&note);
        xml.push_str("</note>\n");
    }
    xml.push_str("  </tuple>\n  <dm:person id=\"p-calbridge\">\n");
    if let Some(activity) = activity {
        xml.push_str("    <rpid:activities");
        if let Some(until) = state.until {
            // RFC 4480 `until` is an xs:dateTime; jiff prints RFC 3339 in UTC (`…Z`).
            xml.push_str(" until=\"");
            xml.push_str(&until.to_string());
            xml.push('"');
        }
        xml.push_str("><rpid:");
        xml.push_str(activity);
        xml.push_str("/></rpid:activities>\n");
    }
    if !note.is_empty() {
        xml.push_str("    <dm:note>");
        xml.push_str(&note);
        xml.push_str("</dm:note>\n");
    }
    xml.push_str("  </dm:person>\n</presence>\n");
    xml
}

/// Escapes text for element content and attribute values, and drops characters XML 1.0 does
/// not allow at all (control characters other than tab, line feed and carriage return).
pub(crate) fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Activity, ShowAsCategory};

    fn state(activity: Activity, note: &str) -> PresenceState {
        PresenceState {
            activity,
            category: Some(ShowAsCategory::Busy),
            note: note.into(),
            until: None,
        }
    }

    #[test]
    fn busy_meeting_with_until_and_note() {
        let mut busy = state(
            Activity::Busy,
            "Meeting until 12:30 #busy #len:7:7 #until:1795428000",
        );
        busy.until = Some(jiff::Timestamp::from_second(1_795_428_000).unwrap());
        let xml = pidf_document(
            "sip:alice@calbridge.test",
            &busy,
            &ActivityMapping::default(),
        );
        assert!(xml.contains("entity=\"sip:alice@calbridge.test\""), "{xml}");
        assert!(xml.contains("<basic>closed</basic>"), "{xml}");
        assert!(
            xml.contains(
                "<rpid:activities until=\"2026-11-23T10:00:00Z\"><rpid:meeting/></rpid:activities>"
            ),
            "{xml}"
        );
        assert!(
            xml.contains("<dm:note>Meeting until 12:30 #busy #len:7:7 #until:1795428000</dm:note>"),
            "{xml}"
        );
    }

    #[test]
    fn available_is_open_without_activities() {
        let xml = pidf_document(
            "sip:a@b",
            &state(Activity::Available, ""),
            &ActivityMapping::default(),
        );
        assert!(xml.contains("<basic>open</basic>"), "{xml}");
        assert!(!xml.contains("activities"), "{xml}");
        assert!(!xml.contains("note"), "{xml}");
    }

    #[test]
    fn notes_and_entities_are_escaped() {
        let xml = pidf_document(
            "sip:a&b@c",
            &state(Activity::Dnd, "Q&A <board> \"1:1\" it's\u{0007}done"),
            &ActivityMapping::default(),
        );
        assert!(xml.contains("entity=\"sip:a&amp;b@c\""), "{xml}");
        assert!(
            xml.contains("<dm:note>Q&amp;A &lt;board&gt; &quot;1:1&quot; it&apos;sdone</dm:note>"),
            "{xml}"
        );
        assert!(xml.contains("<rpid:busy/>"), "{xml}");
    }
}
