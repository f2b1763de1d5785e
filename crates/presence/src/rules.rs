//! The administrator's presence rules (`[presence]` in `calbridge.toml`).

use calbridge_domain::MailboxAddress;

/// What an appointment's show-as category maps to (`[presence.mapping]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MappedPresence {
    /// Handled as free, but the appointment's title is shown ("Homeoffice until 14:00").
    Available,
    Busy,
    Away,
    Dnd,
    /// The appointment does not count for presence at all.
    Ignore,
}

/// The show-as category that decided which mapping key applies to an appointment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Busy,
    Tentative,
    /// Tentative, organised by one of `tentative_exception_organizers` (HR entering "sick").
    TentativeException,
    Oof,
    WorkingElsewhere,
    /// Show-as `unknown` / EWS `NoData`.
    NoData,
}

impl Category {
    /// The `[presence.mapping]` key of this category, for explanations.
    pub fn mapping_key(self) -> &'static str {
        match self {
            Category::Busy => "busy",
            Category::Tentative => "tentative",
            Category::TentativeException => "tentative_exception",
            Category::Oof => "oof",
            Category::WorkingElsewhere => "working_elsewhere",
            Category::NoData => "no_data",
        }
    }
}

/// `[presence.mapping]`: one target per show-as category. The defaults are the seed's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mapping {
    pub busy: MappedPresence,
    pub tentative: MappedPresence,
    pub tentative_exception: MappedPresence,
    pub oof: MappedPresence,
    pub working_elsewhere: MappedPresence,
    pub no_data: MappedPresence,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            busy: MappedPresence::Busy,
            tentative: MappedPresence::Ignore,
            tentative_exception: MappedPresence::Away,
            oof: MappedPresence::Away,
            working_elsewhere: MappedPresence::Available,
            no_data: MappedPresence::Busy,
        }
    }
}

impl Mapping {
    pub fn target(&self, category: Category) -> MappedPresence {
        match category {
            Category::Busy => self.busy,
            Category::Tentative => self.tentative,
            Category::TentativeException => self.tentative_exception,
            Category::Oof => self.oof,
            Category::WorkingElsewhere => self.working_elsewhere,
            Category::NoData => self.no_data,
        }
    }
}

/// Whether appointment titles may appear in presence (`show_subject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectVisibility {
    Shown,
    /// Titles never appear; the note names the activity instead ("Busy until 12:30").
    Hidden,
}

/// A title keyword, matched case-insensitively anywhere in the title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyword {
    /// As configured, for explanations.
    pub given: String,
    lowered: String,
}

impl Keyword {
    /// `None` for a blank keyword, which would match every title.
    pub fn new(given: &str) -> Option<Keyword> {
        let trimmed = given.trim();
        if trimmed.is_empty() {
            return None;
        }
        Some(Keyword {
            given: trimmed.to_string(),
            lowered: trimmed.to_lowercase(),
        })
    }

    pub fn is_in(&self, title: &str) -> bool {
        contains_ignoring_case(title, &self.lowered)
    }
}

/// Case-insensitive substring test without allocating: the engine runs it for every appointment
/// of every decision, so it must not build a lower-cased copy of each title.
fn contains_ignoring_case(haystack: &str, lowered_needle: &str) -> bool {
    // An ASCII needle can only match ASCII bytes, and UTF-8 never puts an ASCII byte inside a
    // multi-byte character, so the byte search is exact for it even in a non-ASCII title
    // (except for the few non-ASCII letters whose lower case is ASCII, such as the Kelvin sign).
    if lowered_needle.is_ascii() {
        let needle = lowered_needle.as_bytes();
        let Some((&first, rest)) = needle.split_first() else {
            return true;
        };
        let haystack = haystack.as_bytes();
        if haystack.len() < needle.len() {
            return false;
        }
        // Scan for the first byte before comparing the rest: most positions fail there.
        return (0..=haystack.len() - needle.len()).any(|start| {
            haystack[start].to_ascii_lowercase() == first
                && haystack[start + 1..start + needle.len()].eq_ignore_ascii_case(rest)
        });
    }
    let first = lowered_needle.chars().next();
    haystack.char_indices().any(|(start, c)| {
        if c.to_lowercase().next() != first {
            return false;
        }
        let mut lowered = haystack[start..].chars().flat_map(char::to_lowercase);
        lowered_needle
            .chars()
            .all(|wanted| lowered.next() == Some(wanted))
    })
}

/// The complete rule set of one person (rules are per deployment today; per person later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub subjects: SubjectVisibility,
    pub priority_keywords: Vec<Keyword>,
    pub no_priority_keywords: Vec<Keyword>,
    pub tentative_exception_organizers: Vec<MailboxAddress>,
    pub mapping: Mapping,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            subjects: SubjectVisibility::Shown,
            priority_keywords: Vec::new(),
            no_priority_keywords: Vec::new(),
            tentative_exception_organizers: Vec::new(),
            mapping: Mapping::default(),
        }
    }
}

impl Rules {
    pub fn with_keywords(mut self, priority: &[&str], no_priority: &[&str]) -> Self {
        self.priority_keywords = priority.iter().filter_map(|k| Keyword::new(k)).collect();
        self.no_priority_keywords = no_priority.iter().filter_map(|k| Keyword::new(k)).collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_match_case_insensitively_including_umlauts() {
        let urlaub = Keyword::new(" Urlaub ").unwrap();
        assert!(urlaub.is_in("Sommer-URLAUB Mallorca"));
        let gruen = Keyword::new("GRÜN").unwrap();
        assert!(gruen.is_in("Tag im grünen"));
        assert!(!gruen.is_in("Tag im gruenen"));
        assert!(Keyword::new("   ").is_none());
    }
}
