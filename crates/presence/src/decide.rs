//! `decide`: one person's appointments + rules + locale + now → presence decision.
//!
//! The engine works on the person's timeline. At any instant the *winner* is the appointment
//! that shows: the best of those that count and are running then. The decision shows the winner
//! now, `until` is the first boundary (an appointment starting or ending) at which the winner
//! changes, and the *successor* is the winner from then on. Because the winner can only change
//! at boundaries and the text only depends on the local date besides, the decision is constant
//! until `next_change_at`, which is `until` or the next local midnight, whichever comes first.

use std::borrow::Cow;
use std::cell::OnceCell;

use calbridge_domain::{Appointment, AppointmentStatus, ShowAs};
use jiff::civil::DateTime;
use jiff::Timestamp;

use crate::locale::{Language, Locale, Words};
use crate::rules::{Category, Keyword, MappedPresence, Rules, SubjectVisibility};

/// The presence activity a decision sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activity {
    Available,
    Busy,
    Away,
    Dnd,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Available => "available",
            Activity::Busy => "busy",
            Activity::Away => "away",
            Activity::Dnd => "dnd",
        }
    }

    /// The activity as the note's hash tags name it. The seed's grammar only knows
    /// free / busy / away, so do-not-disturb is tagged `busy` (the decision's `activity` field
    /// still says `dnd`).
    pub fn tag(self) -> &'static str {
        match self {
            Activity::Available => "free",
            Activity::Busy | Activity::Dnd => "busy",
            Activity::Away => "away",
        }
    }

    /// Which activity shows when two appointments of the same priority tier overlap: the one
    /// that tells a caller most clearly not to disturb.
    fn strength(self) -> u8 {
        match self {
            Activity::Available => 1,
            Activity::Away => 2,
            Activity::Busy => 3,
            Activity::Dnd => 4,
        }
    }
}

/// An appointment as the decision shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppointmentSummary {
    pub id: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub all_day: bool,
    pub category: Category,
    pub activity: Activity,
    /// The Appointment-Info as it appears in the note: the title, "Private", or the activity
    /// word when titles are hidden. Never a hidden title.
    pub shown_as: String,
}

/// Why the current winner won (or why the person is free).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Reason {
    /// No appointment counts now or later in the known window.
    NothingAhead,
    /// Free now; the next appointment that counts starts at `until`.
    FreeUntilNext,
    /// The winner is the only appointment that counts right now.
    OnlyAppointment,
    /// Its title contains a priority keyword.
    PriorityKeyword { keyword: String },
    /// The runner-up's title contains a no-priority keyword.
    RunnerUpHasNoPriorityKeyword { keyword: String },
    /// Its mapped activity is stronger (dnd > busy > away > available).
    StrongerActivity,
    /// Same tier and activity: the appointment that started later shows.
    LaterStart,
    /// Same start: the one that ends later shows, so `until` tells the whole busy period.
    LaterEnd,
    /// Identical in every respect: the smaller id shows, so every run decides alike.
    SmallerId,
}

/// The explanation of a decision, for a "why is Bob busy?" view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Why {
    #[serde(flatten)]
    pub reason: Reason,
    /// Other appointments that count and run right now but do not show.
    pub outranked: u32,
    /// Appointments that run right now but never count: cancelled, show-as free, mapped to
    /// `ignore`, or mapped to `available` with a hidden title.
    pub not_counted: u32,
}

/// The presence of one person at one instant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub activity: Activity,
    /// The presence string in the seed's grammar, hash tags included.
    pub note: String,
    /// When the shown state ends: the winner's end, or the start of what takes over.
    pub until: Option<Timestamp>,
    /// The appointment that shows now.
    pub current: Option<AppointmentSummary>,
    /// The appointment that shows from `until` on.
    pub next: Option<AppointmentSummary>,
    /// The instant at which the decision must be computed again; `None` when nothing known
    /// will change it (only new calendar data can).
    pub next_change_at: Option<Timestamp>,
    pub why: Why,
}

impl Decision {
    /// Whether two decisions publish the same presence (publishers only send changes).
    pub fn same_presence(&self, other: &Decision) -> bool {
        self.activity == other.activity && self.note == other.note && self.until == other.until
    }

    /// One sentence for people: which appointment and which rule won.
    pub fn explain(&self) -> String {
        let Some(current) = &self.current else {
            return match (&self.why.reason, &self.next) {
                (Reason::FreeUntilNext, Some(next)) => format!(
                    "available: nothing counts right now{}; next is {} from {} ({} → {})",
                    ignored_clause(self.why.not_counted),
                    describe(next),
                    next.start,
                    next.category.mapping_key(),
                    next.activity.as_str()
                ),
                _ => format!(
                    "available: no appointment counts now or later in the synchronised window{}",
                    ignored_clause(self.why.not_counted)
                ),
            };
        };
        let rule = format!(
            "show-as {} maps to {} (presence.mapping.{})",
            current.category.mapping_key(),
            current.activity.as_str(),
            current.category.mapping_key()
        );
        let won = match &self.why.reason {
            Reason::PriorityKeyword { keyword } => {
                format!("; it wins over {} concurrent appointment(s) by the priority keyword \"{keyword}\"", self.why.outranked)
            }
            Reason::RunnerUpHasNoPriorityKeyword { keyword } => format!(
                "; it wins over {} concurrent appointment(s) because the other contains the no-priority keyword \"{keyword}\"",
                self.why.outranked
            ),
            Reason::StrongerActivity => format!(
                "; it wins over {} concurrent appointment(s) by its stronger activity",
                self.why.outranked
            ),
            Reason::LaterStart => format!(
                "; it wins over {} concurrent appointment(s) by starting later",
                self.why.outranked
            ),
            Reason::LaterEnd => format!(
                "; it wins over {} concurrent appointment(s) by ending later",
                self.why.outranked
            ),
            Reason::SmallerId => format!(
                "; it wins over {} identical appointment(s) by its id",
                self.why.outranked
            ),
            Reason::OnlyAppointment | Reason::FreeUntilNext | Reason::NothingAhead => {
                String::new()
            }
        };
        format!(
            "{}: {} {} → {}; {rule}{won}{}",
            self.activity.as_str(),
            describe(current),
            current.start,
            current.end,
            ignored_clause(self.why.not_counted)
        )
    }
}

fn describe(summary: &AppointmentSummary) -> String {
    format!("appointment `{}` \"{}\"", summary.id, summary.shown_as)
}

fn ignored_clause(not_counted: u32) -> String {
    if not_counted == 0 {
        String::new()
    } else {
        format!(" ({not_counted} running appointment(s) do not count)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    NoPriority,
    Normal,
    Priority,
}

/// An appointment that counts for presence, with everything the timeline needs precomputed.
struct Candidate<'a> {
    appointment: &'a Appointment,
    start: Timestamp,
    end: Timestamp,
    category: Category,
    activity: Activity,
    rules: &'a Rules,
    /// The priority tier and the keyword that put it there, worked out on first use: only
    /// appointments that overlap another one ever need it, and title scans are the costliest
    /// part of a decision.
    tier: OnceCell<(Tier, Option<&'a Keyword>)>,
}

impl Candidate<'_> {
    fn runs_at(&self, at: Timestamp) -> bool {
        self.start <= at && at < self.end
    }

    fn tier(&self) -> Tier {
        self.tier_and_keyword().0
    }

    fn tier_and_keyword(&self) -> (Tier, Option<&Keyword>) {
        *self.tier.get_or_init(|| {
            let title = self.appointment.subject.as_deref().unwrap_or("");
            // "Must not contain" wins over "need to contain": "Urlaub (home office)" has none.
            if let Some(keyword) = self
                .rules
                .no_priority_keywords
                .iter()
                .find(|k| k.is_in(title))
            {
                return (Tier::NoPriority, Some(keyword));
            }
            if let Some(keyword) = self.rules.priority_keywords.iter().find(|k| k.is_in(title)) {
                return (Tier::Priority, Some(keyword));
            }
            (Tier::Normal, None)
        })
    }

    /// True when `self` shows rather than `other` while both run.
    fn beats(&self, other: &Candidate<'_>) -> bool {
        let mine = (self.tier(), self.activity.strength(), self.start, self.end);
        let theirs = (
            other.tier(),
            other.activity.strength(),
            other.start,
            other.end,
        );
        match mine.cmp(&theirs) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self.appointment.id < other.appointment.id,
        }
    }
}

/// What a running appointment says about presence, or `None` when it does not count.
fn classify(appointment: &Appointment, rules: &Rules) -> Option<(Category, Activity)> {
    if appointment.status == AppointmentStatus::Cancelled {
        return None;
    }
    let category = match appointment.show_as {
        ShowAs::Free => return None,
        ShowAs::Busy => Category::Busy,
        ShowAs::Tentative => {
            let by_exception_organizer = appointment
                .organizer
                .as_ref()
                .is_some_and(|organizer| rules.tentative_exception_organizers.contains(organizer));
            if by_exception_organizer {
                Category::TentativeException
            } else {
                Category::Tentative
            }
        }
        ShowAs::Oof => Category::Oof,
        ShowAs::WorkingElsewhere => Category::WorkingElsewhere,
        ShowAs::Unknown => Category::NoData,
    };
    let activity = match rules.mapping.target(category) {
        MappedPresence::Ignore => return None,
        MappedPresence::Available => Activity::Available,
        MappedPresence::Busy => Activity::Busy,
        MappedPresence::Away => Activity::Away,
        MappedPresence::Dnd => Activity::Dnd,
    };
    if activity == Activity::Available && info_of(appointment, rules).is_activity_word() {
        // With its title hidden an "available" appointment looks exactly like free time, and
        // showing "Free until 14:00 (Free)" would only confuse the reader.
        return None;
    }
    Some((category, activity))
}

/// The Appointment-Info of the grammar: what stands for an appointment in the note.
enum Info<'a> {
    Title(Cow<'a, str>),
    Private,
    ActivityWord,
}

impl Info<'_> {
    fn is_activity_word(&self) -> bool {
        matches!(self, Info::ActivityWord)
    }

    fn text<'w>(&'w self, words: &'w Words, activity: Activity) -> &'w str {
        match self {
            Info::Title(title) => title,
            Info::Private => words.private,
            Info::ActivityWord => match activity {
                Activity::Available => words.free,
                Activity::Busy => words.busy,
                Activity::Away => words.away,
                Activity::Dnd => words.do_not_disturb,
            },
        }
    }
}

fn info_of<'a>(appointment: &'a Appointment, rules: &Rules) -> Info<'a> {
    if rules.subjects == SubjectVisibility::Hidden {
        return Info::ActivityWord;
    }
    if appointment.sensitivity.hides_subject() {
        return Info::Private;
    }
    match appointment.subject.as_deref().map(clean_title) {
        Some(title) if !title.is_empty() => Info::Title(title),
        _ => Info::ActivityWord,
    }
}

/// Titles go on one display line: control characters (line breaks, tabs) become spaces and
/// surrounding white space goes, so that `#len` measures exactly what the phone shows.
fn clean_title(title: &str) -> Cow<'_, str> {
    let trimmed = title.trim();
    if has_control_character(trimmed) {
        let replaced: String = trimmed
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Cow::Owned(replaced.trim().to_string())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Byte-level test for C0 and C1 control characters: C0 and DEL are single bytes, C1
/// (U+0080..=U+009F) is encoded as 0xC2 0x80..=0x9F. Much cheaper than decoding every char.
fn has_control_character(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(index, &byte)| {
        byte < 0x20
            || byte == 0x7f
            || (byte == 0xc2
                && bytes
                    .get(index + 1)
                    .is_some_and(|next| (0x80..=0x9f).contains(next)))
    })
}

fn winner_at(candidates: &[Candidate<'_>], at: Timestamp) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (index, candidate) in candidates.iter().enumerate() {
        if !candidate.runs_at(at) {
            continue;
        }
        best = match best {
            Some(current) if !candidate.beats(&candidates[current]) => Some(current),
            _ => Some(index),
        };
    }
    best
}

/// The presence string under construction, counting characters as it goes so that the
/// positions in `#len` and `#next` come out in both characters and bytes.
struct Note {
    text: String,
    chars: usize,
}

impl Note {
    fn push(&mut self, piece: &str) {
        self.text.push_str(piece);
        self.chars += piece.chars().count();
    }

    /// Appends a piece of text written by `write`, keeping the character count.
    fn push_with(&mut self, write: impl FnOnce(&mut String)) {
        let before = self.text.len();
        write(&mut self.text);
        self.chars += self.text[before..].chars().count();
    }

    /// Pushes `piece` and returns its position and length as `(chars, len_chars, bytes, len_bytes)`.
    fn push_marked(&mut self, piece: &str) -> (usize, usize, usize, usize) {
        let position = (self.chars, self.text.len());
        self.push(piece);
        (
            position.0,
            self.chars - position.0,
            position.1,
            self.text.len() - position.1,
        )
    }
}

/// Decides the presence of one person at `now`.
///
/// Pure: no I/O, no clock, cannot fail. Appointments may come in any order and may include
/// past, cancelled and free ones.
pub fn decide(
    appointments: &[Appointment],
    rules: &Rules,
    locale: &Locale,
    now: Timestamp,
) -> Decision {
    let zone = locale.zone.zone();
    let mut candidates: Vec<Candidate<'_>> = Vec::with_capacity(appointments.len());
    let mut not_counted = 0u32;
    for appointment in appointments {
        let (start, end) = appointment.time.instants(zone);
        if end <= start || end <= now {
            continue;
        }
        match classify(appointment, rules) {
            Some((category, activity)) => candidates.push(Candidate {
                appointment,
                start,
                end,
                category,
                activity,
                rules,
                tier: OnceCell::new(),
            }),
            None => {
                if start <= now {
                    not_counted += 1;
                }
            }
        }
    }

    let current = winner_at(&candidates, now);
    let mut boundaries: Vec<Timestamp> = Vec::with_capacity(candidates.len() * 2);
    for candidate in &candidates {
        if candidate.start > now {
            boundaries.push(candidate.start);
        }
        boundaries.push(candidate.end);
    }
    boundaries.sort_unstable();
    boundaries.dedup();
    let mut change: Option<(Timestamp, Option<usize>)> = None;
    for &boundary in &boundaries {
        let winner = winner_at(&candidates, boundary);
        if winner != current {
            change = Some((boundary, winner));
            break;
        }
    }
    let until = change.map(|(at, _)| at);
    let successor = change.and_then(|(_, winner)| winner);

    let why = explain_winner(&candidates, current, now, not_counted, until);
    let words = locale.language.words();
    let now_local = zone.to_datetime(now);
    let mut note = Note {
        text: String::with_capacity(96),
        chars: 0,
    };
    let mut date_only = false;

    let activity = match (current, until) {
        (None, None) => {
            note.push(words.free);
            Activity::Available
        }
        (Some(index), Some(until)) if candidates[index].activity != Activity::Available => {
            let winner = &candidates[index];
            let info = info_of(winner.appointment, rules);
            let (_, len_chars, _, len_bytes) = note.push_marked(info.text(words, winner.activity));
            note.push(" ");
            note.push(words.until);
            note.push(" ");
            date_only = winner.appointment.time.is_all_day() && until == winner.end;
            write_date_time(
                &mut note,
                locale.language,
                now_local,
                zone.to_datetime(until),
                date_only,
            );
            note.push(" #");
            note.push(winner.activity.tag());
            note.push_with(|text| push_len_tag(text, len_chars, len_bytes));
            note.push_with(|text| push_until_tag(text, until));
            if date_only {
                note.push(" #whole-day");
            }
            winner.activity
        }
        (current, until) => {
            // Free, or an appointment mapped to available: the free form, "Free until 10:30
            // (Busy: Meeting)" or "Homeoffice until 14:00 (Busy: Meeting)".
            let until = until.unwrap_or(now);
            let successor = successor.map(|index| &candidates[index]);
            let mut len_tag = None;
            match current {
                Some(index) => {
                    let winner = &candidates[index];
                    let info = info_of(winner.appointment, rules);
                    let (_, len_chars, _, len_bytes) =
                        note.push_marked(info.text(words, winner.activity));
                    len_tag = Some((len_chars, len_bytes));
                    date_only = match successor {
                        Some(next) => next.appointment.time.is_all_day(),
                        None => winner.appointment.time.is_all_day() && until == winner.end,
                    };
                }
                None => {
                    note.push(words.free);
                    date_only = successor.is_some_and(|next| next.appointment.time.is_all_day());
                }
            }
            note.push(" ");
            note.push(words.until);
            note.push(" ");
            write_date_time(
                &mut note,
                locale.language,
                now_local,
                zone.to_datetime(until),
                date_only,
            );
            let mut next_tag = None;
            if let Some(next) = successor {
                let info = info_of(next.appointment, rules);
                note.push(" (");
                if !info.is_activity_word() {
                    match next.activity {
                        Activity::Busy | Activity::Dnd => {
                            note.push(words.busy);
                            note.push(": ");
                        }
                        Activity::Away => {
                            note.push(words.away);
                            note.push(": ");
                        }
                        Activity::Available => {}
                    }
                }
                next_tag = Some((
                    next.activity,
                    note.push_marked(info.text(words, next.activity)),
                ));
                note.push(")");
            }
            note.push(" #free");
            if let Some((len_chars, len_bytes)) = len_tag {
                note.push_with(|text| push_len_tag(text, len_chars, len_bytes));
            }
            note.push_with(|text| push_until_tag(text, until));
            if date_only {
                note.push(" #whole-day");
            }
            if let Some((next_activity, (position, length, byte_position, byte_length))) = next_tag
            {
                note.push(" #next-activity:");
                note.push(next_activity.tag());
                note.push_with(|text| {
                    use std::fmt::Write;
                    let _ = write!(
                        text,
                        " #next:{position}:{length}:{byte_position}:{byte_length}"
                    );
                });
            }
            Activity::Available
        }
    };

    let next_change_at = until.map(|until| {
        // A date-time on a later day is written with its date; from the next local midnight
        // on it may be today's and lose it, so the text must be rebuilt then.
        let shows_other_day = !date_only && zone.to_datetime(until).date() != now_local.date();
        if shows_other_day {
            let midnight = next_local_midnight(now_local, zone);
            if midnight > now && midnight < until {
                return midnight;
            }
        }
        until
    });

    Decision {
        activity,
        note: note.text,
        until,
        current: current.map(|index| summarise(&candidates[index], rules, words)),
        next: successor.map(|index| summarise(&candidates[index], rules, words)),
        next_change_at,
        why,
    }
}

fn push_len_tag(text: &mut String, len_chars: usize, len_bytes: usize) {
    use std::fmt::Write;
    let _ = write!(text, " #len:{len_chars}:{len_bytes}");
}

fn push_until_tag(text: &mut String, until: Timestamp) {
    use std::fmt::Write;
    let _ = write!(text, " #until:{}", until.as_second());
}

/// The grammar's Date-Time: time only on the day the text is built, date only for whole-day
/// appointments, otherwise both.
fn write_date_time(
    note: &mut Note,
    language: Language,
    now_local: DateTime,
    at_local: DateTime,
    date_only: bool,
) {
    note.push_with(|text| {
        if date_only {
            language.write_date(text, at_local);
        } else if at_local.date() == now_local.date() {
            language.write_time(text, at_local);
        } else {
            language.write_date(text, at_local);
            text.push(' ');
            language.write_time(text, at_local);
        }
    });
}

fn next_local_midnight(now_local: DateTime, zone: &jiff::tz::TimeZone) -> Timestamp {
    match now_local.date().tomorrow() {
        Ok(tomorrow) => calbridge_domain::start_of_day(tomorrow, zone),
        Err(_) => Timestamp::MAX,
    }
}

fn summarise(candidate: &Candidate<'_>, rules: &Rules, words: &Words) -> AppointmentSummary {
    AppointmentSummary {
        id: candidate.appointment.id.clone(),
        start: candidate.start,
        end: candidate.end,
        all_day: candidate.appointment.time.is_all_day(),
        category: candidate.category,
        activity: candidate.activity,
        shown_as: info_of(candidate.appointment, rules)
            .text(words, candidate.activity)
            .to_string(),
    }
}

fn explain_winner(
    candidates: &[Candidate<'_>],
    current: Option<usize>,
    now: Timestamp,
    not_counted: u32,
    until: Option<Timestamp>,
) -> Why {
    let Some(winner_index) = current else {
        return Why {
            reason: if until.is_some() {
                Reason::FreeUntilNext
            } else {
                Reason::NothingAhead
            },
            outranked: 0,
            not_counted,
        };
    };
    let winner = &candidates[winner_index];
    let mut outranked = 0u32;
    let mut runner_up: Option<&Candidate<'_>> = None;
    for (index, candidate) in candidates.iter().enumerate() {
        if index == winner_index || !candidate.runs_at(now) {
            continue;
        }
        outranked += 1;
        runner_up = match runner_up {
            Some(best) if !candidate.beats(best) => Some(best),
            _ => Some(candidate),
        };
    }
    let reason = match runner_up {
        None => Reason::OnlyAppointment,
        Some(other) if winner.tier() != other.tier() => {
            if winner.tier() == Tier::Priority {
                Reason::PriorityKeyword {
                    keyword: keyword_of(winner),
                }
            } else {
                Reason::RunnerUpHasNoPriorityKeyword {
                    keyword: keyword_of(other),
                }
            }
        }
        Some(other) if winner.activity != other.activity => Reason::StrongerActivity,
        Some(other) if winner.start != other.start => Reason::LaterStart,
        Some(other) if winner.end != other.end => Reason::LaterEnd,
        Some(_) => Reason::SmallerId,
    };
    Why {
        reason,
        outranked,
        not_counted,
    }
}

fn keyword_of(candidate: &Candidate<'_>) -> String {
    candidate
        .tier_and_keyword()
        .1
        .map(|keyword| keyword.given.clone())
        .unwrap_or_default()
}

/// The presence changes from `from` to `to`: the decision at `from`, then every decision that
/// publishes a different presence, each with the instant it takes effect.
pub fn timeline(
    appointments: &[Appointment],
    rules: &Rules,
    locale: &Locale,
    from: Timestamp,
    to: Timestamp,
) -> Vec<(Timestamp, Decision)> {
    let mut changes = Vec::new();
    let mut at = from;
    let mut previous: Option<Decision> = None;
    loop {
        let decision = decide(appointments, rules, locale, at);
        let next = decision.next_change_at;
        if previous
            .as_ref()
            .is_none_or(|previous| !previous.same_presence(&decision))
        {
            changes.push((at, decision.clone()));
            previous = Some(decision);
        }
        match next {
            // `next_change_at` is always later than `at`, so the walk always advances.
            Some(next) if next <= to && next > at => at = next,
            _ => break,
        }
    }
    changes
}
