//! Time zones, Graph's date formats, and the scenario file's time expressions.

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

/// A time zone together with the name it was asked for by, so responses can echo that name
/// (Graph answers `"timeZone": "W. Europe Standard Time"` when that is what `Prefer` said).
#[derive(Clone, Debug)]
pub struct NamedZone {
    pub name: String,
    pub zone: TimeZone,
}

impl NamedZone {
    pub fn utc() -> NamedZone {
        NamedZone {
            name: "UTC".to_string(),
            zone: TimeZone::UTC,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TimeError {
    #[error("unknown time zone '{0}': use a Windows name such as 'W. Europe Standard Time' or an IANA name such as 'Europe/Berlin'")]
    UnknownZone(String),
    #[error("cannot read '{0}' as a date and time: use e.g. '2026-11-23T09:00:00', '2026-11-23T09:00:00Z', '+2h', 'tomorrow 09:00'")]
    BadExpression(String),
    #[error("'{0}' is out of the supported range of dates")]
    OutOfRange(String),
}

/// Resolves a Windows or IANA time zone name.
pub fn resolve_zone(name: &str) -> Result<NamedZone, TimeError> {
    let trimmed = name.trim().trim_matches('"');
    if trimmed.eq_ignore_ascii_case("utc") || trimmed.eq_ignore_ascii_case("etc/utc") {
        return Ok(NamedZone {
            name: trimmed.to_string(),
            zone: TimeZone::UTC,
        });
    }
    if let Ok(windows) = trimmed.parse::<windows_timezones::WindowsTimezone>() {
        if let Ok(zone) = TimeZone::get(windows.tzdb_id()) {
            return Ok(NamedZone {
                name: trimmed.to_string(),
                zone,
            });
        }
    }
    match TimeZone::get(trimmed) {
        Ok(zone) => Ok(NamedZone {
            name: trimmed.to_string(),
            zone,
        }),
        Err(_) => Err(TimeError::UnknownZone(trimmed.to_string())),
    }
}

/// Graph's local date-time format: seven fractional digits, no offset (`2026-11-23T09:00:00.0000000`).
pub fn graph_local(datetime: DateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}",
        datetime.year(),
        datetime.month(),
        datetime.day(),
        datetime.hour(),
        datetime.minute(),
        datetime.second(),
        datetime.subsec_nanosecond() / 100
    )
}

/// Graph's instant format for properties such as `createdDateTime` (`2026-11-23T09:00:00.1234567Z`).
pub fn graph_instant(timestamp: Timestamp) -> String {
    format!(
        "{}Z",
        graph_local(timestamp.to_zoned(TimeZone::UTC).datetime())
    )
}

/// Reads `startDateTime`/`endDateTime` query values and similar instants.
///
/// A value with an offset or `Z` is taken as that instant; a value without one is UTC,
/// which is how Graph reads calendarView bounds without an offset.
pub fn parse_instant(text: &str) -> Result<Timestamp, TimeError> {
    let trimmed = text.trim();
    if let Ok(timestamp) = trimmed.parse::<Timestamp>() {
        return Ok(timestamp);
    }
    let civil = parse_civil(trimmed)?;
    civil
        .to_zoned(TimeZone::UTC)
        .map(|zoned| zoned.timestamp())
        .map_err(|_| TimeError::OutOfRange(trimmed.to_string()))
}

/// Reads a local date-time without offset (`2026-11-23T09:00:00.0000000`, `2026-11-23T09:00`, `2026-11-23`).
pub fn parse_civil(text: &str) -> Result<DateTime, TimeError> {
    let trimmed = text.trim();
    if let Ok(datetime) = trimmed.parse::<DateTime>() {
        return Ok(datetime);
    }
    if let Ok(date) = trimmed.parse::<Date>() {
        return Ok(date.to_datetime(Time::midnight()));
    }
    // Graph clients sometimes send an offset or Z in a {dateTime, timeZone} pair; Graph
    // ignores it there and uses timeZone, so do the same.
    if let Ok(zoned_instant) = trimmed.parse::<Timestamp>() {
        return Ok(zoned_instant.to_zoned(TimeZone::UTC).datetime());
    }
    Err(TimeError::BadExpression(trimmed.to_string()))
}

/// Turns a local date-time in a zone into a zoned value; a time inside a DST gap moves
/// forward by the gap's length, as Outlook and RFC 5545 both do.
pub fn localize(datetime: DateTime, zone: &TimeZone) -> Result<Zoned, TimeError> {
    zone.to_ambiguous_zoned(datetime)
        .compatible()
        .map_err(|_| TimeError::OutOfRange(datetime.to_string()))
}

/// The scenario file's time expressions, evaluated against `now` in `zone`:
/// `now`, `+2h`, `-30m`, `+1d4h`, `today 09:00`, `tomorrow 09:00`, `yesterday`, `monday 10:30`
/// (the next Monday, today included), `2026-11-23T09:00:00` (local), `2026-11-23` (local
/// midnight) or `2026-11-23T08:00:00Z` / `…+01:00` (an absolute instant).
///
/// Relative results are truncated to the minute so generated calendars look like calendars.
pub fn parse_expression(
    expression: &str,
    now: Timestamp,
    zone: &TimeZone,
) -> Result<Zoned, TimeError> {
    let text = expression.trim();
    let bad = || TimeError::BadExpression(text.to_string());
    let now_local = now.to_zoned(zone.clone());
    if text.eq_ignore_ascii_case("now") {
        return truncate_to_minute(&now_local);
    }
    if text.starts_with('+') || text.starts_with('-') {
        let offset = parse_offset(text).ok_or_else(bad)?;
        let moved = now_local.checked_add(offset).map_err(|_| bad())?;
        return truncate_to_minute(&moved);
    }
    if let Ok(timestamp) = text.parse::<Timestamp>() {
        return Ok(timestamp.to_zoned(zone.clone()));
    }
    if let Ok(civil) = parse_civil(text) {
        return localize(civil, zone);
    }
    let mut words = text.split_whitespace();
    let day_word = words.next().ok_or_else(bad)?.to_ascii_lowercase();
    let time = match words.next() {
        Some(time_text) => parse_clock_time(time_text).ok_or_else(bad)?,
        None => Time::midnight(),
    };
    if words.next().is_some() {
        return Err(bad());
    }
    let today = now_local.date();
    let date = match day_word.as_str() {
        "today" => today,
        "tomorrow" => today.tomorrow().map_err(|_| bad())?,
        "yesterday" => today.yesterday().map_err(|_| bad())?,
        other => {
            let weekday = parse_weekday(other).ok_or_else(bad)?;
            let days_ahead =
                (weekday.to_monday_zero_offset() - today.weekday().to_monday_zero_offset() + 7) % 7;
            today
                .checked_add(jiff::Span::new().days(i64::from(days_ahead)))
                .map_err(|_| bad())?
        }
    };
    localize(date.to_datetime(time), zone)
}

/// Parses `+2h`, `-30m`, `+1d4h30m`, `+1w`, `+90s` into a signed duration.
pub fn parse_offset(text: &str) -> Option<SignedDuration> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1i64, &text[1..]),
        b'-' => (-1i64, &text[1..]),
        _ => (1i64, text),
    };
    parse_unsigned_duration(rest).map(|duration| duration * sign as i32)
}

/// Parses `1h`, `30m`, `1d4h`, `45s`, `2w` (no sign).
pub fn parse_unsigned_duration(text: &str) -> Option<SignedDuration> {
    if text.is_empty() {
        return None;
    }
    let mut total_seconds: i64 = 0;
    let mut number = String::new();
    for character in text.chars() {
        if character.is_ascii_digit() {
            number.push(character);
            continue;
        }
        let value: i64 = number.parse().ok()?;
        number.clear();
        let unit_seconds = match character {
            'w' => 7 * 86_400,
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total_seconds = total_seconds.checked_add(value.checked_mul(unit_seconds)?)?;
    }
    if !number.is_empty() {
        return None;
    }
    Some(SignedDuration::from_secs(total_seconds))
}

fn parse_clock_time(text: &str) -> Option<Time> {
    let (hours, minutes) = text.split_once(':')?;
    let hours: i8 = hours.parse().ok()?;
    let minutes: i8 = minutes.parse().ok()?;
    Time::new(hours, minutes, 0, 0).ok()
}

pub fn parse_weekday(text: &str) -> Option<Weekday> {
    Some(match text.to_ascii_lowercase().as_str() {
        "monday" => Weekday::Monday,
        "tuesday" => Weekday::Tuesday,
        "wednesday" => Weekday::Wednesday,
        "thursday" => Weekday::Thursday,
        "friday" => Weekday::Friday,
        "saturday" => Weekday::Saturday,
        "sunday" => Weekday::Sunday,
        _ => return None,
    })
}

pub fn weekday_name(weekday: Weekday) -> &'static str {
    match weekday {
        Weekday::Monday => "monday",
        Weekday::Tuesday => "tuesday",
        Weekday::Wednesday => "wednesday",
        Weekday::Thursday => "thursday",
        Weekday::Friday => "friday",
        Weekday::Saturday => "saturday",
        Weekday::Sunday => "sunday",
    }
}

fn truncate_to_minute(zoned: &Zoned) -> Result<Zoned, TimeError> {
    let datetime = zoned.datetime();
    let truncated = datetime
        .with()
        .second(0)
        .subsec_nanosecond(0)
        .build()
        .map_err(|_| TimeError::OutOfRange(datetime.to_string()))?;
    localize(truncated, zoned.time_zone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin() -> TimeZone {
        resolve_zone("W. Europe Standard Time")
            .map(|named| named.zone)
            .unwrap_or(TimeZone::UTC)
    }

    #[test]
    fn windows_and_iana_names_resolve_to_the_same_zone() {
        let windows = resolve_zone("W. Europe Standard Time")
            .map(|named| named.zone.iana_name().map(str::to_string));
        assert_eq!(windows, Ok(Some("Europe/Berlin".to_string())));
        assert!(resolve_zone("Europe/Berlin").is_ok());
        assert!(matches!(
            resolve_zone("Mars/Olympus"),
            Err(TimeError::UnknownZone(_))
        ));
    }

    #[test]
    fn graph_local_format_has_seven_fractional_digits() {
        let datetime: DateTime = "2026-11-23T09:00:00".parse().unwrap_or_default();
        assert_eq!(graph_local(datetime), "2026-11-23T09:00:00.0000000");
    }

    #[test]
    fn relative_expressions_are_relative_to_now_in_the_zone() {
        let now: Timestamp = "2026-03-10T08:17:45Z".parse().unwrap_or_default();
        let zone = berlin();
        let plus_two = parse_expression("+2h", now, &zone).map(|z| z.timestamp().to_string());
        assert_eq!(plus_two, Ok("2026-03-10T10:17:00Z".to_string()));
        let tomorrow =
            parse_expression("tomorrow 09:00", now, &zone).map(|z| z.datetime().to_string());
        assert_eq!(tomorrow, Ok("2026-03-11T09:00:00".to_string()));
        // 2026-03-10 is a Tuesday: "monday" is the following Monday, "tuesday" is today.
        let monday = parse_expression("monday 10:30", now, &zone).map(|z| z.date().to_string());
        assert_eq!(monday, Ok("2026-03-16".to_string()));
        let tuesday = parse_expression("tuesday 10:30", now, &zone).map(|z| z.date().to_string());
        assert_eq!(tuesday, Ok("2026-03-10".to_string()));
        let absolute =
            parse_expression("2026-11-23T08:00:00Z", now, &zone).map(|z| z.datetime().to_string());
        assert_eq!(absolute, Ok("2026-11-23T09:00:00".to_string()));
        assert!(parse_expression("next blue moon", now, &zone).is_err());
    }

    #[test]
    fn offsets_combine_units() {
        assert_eq!(
            parse_offset("+1d4h30m"),
            Some(SignedDuration::from_secs(86_400 + 4 * 3_600 + 1_800))
        );
        assert_eq!(
            parse_offset("-30m"),
            Some(SignedDuration::from_secs(-1_800))
        );
        assert_eq!(parse_offset("+4x"), None);
        assert_eq!(parse_offset("+"), None);
    }

    #[test]
    fn instants_without_offset_are_utc() {
        let parsed = parse_instant("2026-11-23T09:00:00.0000000").map(|t| t.to_string());
        assert_eq!(parsed, Ok("2026-11-23T09:00:00Z".to_string()));
        let with_offset = parse_instant("2026-11-23T09:00:00+01:00").map(|t| t.to_string());
        assert_eq!(with_offset, Ok("2026-11-23T08:00:00Z".to_string()));
    }
}
