//! Language-dependent words and date/time formats of the presence note.
//!
//! The seed says the words and the date/time format follow the "presence language", while the
//! hash tags stay the same in every language so that a phone can rebuild the text in its own.
//! Appointment titles are never translated.

use std::fmt::Write;

use calbridge_domain::ZoneName;
use jiff::civil::DateTime;

/// Supported presence languages (`presence.language`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// English, day-first dates (`24/12/2026`) and a 24-hour clock.
    En,
    /// US English: month-first dates (`12/24/2026`) and a 12-hour clock (`02:30 p.m.`).
    EnUs,
    /// German: `24.12.2026`, 24-hour clock.
    De,
    /// French: `24/12/2026`, 24-hour clock.
    Fr,
}

impl Language {
    pub const CODES: &'static [&'static str] = &["en", "en-US", "de", "fr"];

    pub fn parse(code: &str) -> Option<Language> {
        match code.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "en" | "en-gb" => Some(Language::En),
            "en-us" => Some(Language::EnUs),
            "de" | "de-de" | "de-at" | "de-ch" => Some(Language::De),
            "fr" | "fr-fr" | "fr-ch" | "fr-be" => Some(Language::Fr),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::EnUs => "en-US",
            Language::De => "de",
            Language::Fr => "fr",
        }
    }

    pub(crate) fn words(self) -> &'static Words {
        match self {
            Language::En | Language::EnUs => &ENGLISH,
            Language::De => &GERMAN,
            Language::Fr => &FRENCH,
        }
    }

    /// Appends a date in this language's order (`Day "." Month "." Year` in the grammar).
    pub(crate) fn write_date(self, out: &mut String, local: DateTime) {
        let (day, month, year) = (local.day(), local.month(), local.year());
        // Writing into a String cannot fail.
        let _ = match self {
            Language::De => write!(out, "{day:02}.{month:02}.{year:04}"),
            Language::En | Language::Fr => write!(out, "{day:02}/{month:02}/{year:04}"),
            Language::EnUs => write!(out, "{month:02}/{day:02}/{year:04}"),
        };
    }

    pub(crate) fn write_time(self, out: &mut String, local: DateTime) {
        let (hour, minute) = (local.hour(), local.minute());
        let _ = match self {
            Language::EnUs => {
                let (hour12, suffix) = match hour {
                    0 => (12, "a.m."),
                    1..=11 => (hour, "a.m."),
                    12 => (12, "p.m."),
                    _ => (hour - 12, "p.m."),
                };
                write!(out, "{hour12:02}:{minute:02} {suffix}")
            }
            _ => write!(out, "{hour:02}:{minute:02}"),
        };
    }
}

pub(crate) struct Words {
    pub free: &'static str,
    pub until: &'static str,
    pub busy: &'static str,
    pub away: &'static str,
    pub do_not_disturb: &'static str,
    pub private: &'static str,
    /// A room held by a meeting whose subject is not shown.
    pub reserved: &'static str,
}

const ENGLISH: Words = Words {
    free: "Free",
    until: "until",
    busy: "Busy",
    away: "Away",
    do_not_disturb: "Do not disturb",
    private: "Private",
    reserved: "Reserved",
};

const GERMAN: Words = Words {
    free: "Frei",
    until: "bis",
    busy: "Beschäftigt",
    away: "Abwesend",
    do_not_disturb: "Nicht stören",
    private: "Privat",
    reserved: "Reserviert",
};

const FRENCH: Words = Words {
    free: "Libre",
    until: "jusqu'à",
    busy: "Occupé",
    away: "Absent",
    do_not_disturb: "Ne pas déranger",
    private: "Privé",
    reserved: "Réservé",
};

/// The presence language and time zone of one person (`presence.language`, `presence.timezone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locale {
    pub language: Language,
    pub zone: ZoneName,
}

impl Locale {
    pub fn new(language: Language, zone: ZoneName) -> Self {
        Locale { language, zone }
    }
}
