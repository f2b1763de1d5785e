//! Graph's recurrence patterns and their expansion into occurrence dates.
//!
//! The JSON shape is Graph's own (`patternedRecurrence`), used both by the REST API and the
//! scenario file. Expansion follows Outlook: dates are computed in the event's own time zone
//! and the time of day stays fixed across DST changes.

use jiff::civil::{Date, Weekday};
use jiff::ToSpan;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::timefmt::{parse_weekday, weekday_name};

/// `patternedRecurrence` as Graph spells it (camelCase; snake_case accepted in scenario files).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecurrenceSpec {
    pub pattern: PatternSpec,
    pub range: RangeSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PatternSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "one")]
    pub interval: i64,
    #[serde(default, alias = "days_of_week")]
    pub days_of_week: Vec<String>,
    #[serde(default, alias = "day_of_month")]
    pub day_of_month: i64,
    #[serde(default)]
    pub month: i64,
    #[serde(default, alias = "first_day_of_week")]
    pub first_day_of_week: Option<String>,
    #[serde(default)]
    pub index: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeSpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, alias = "start_date")]
    pub start_date: Option<String>,
    #[serde(default, alias = "end_date")]
    pub end_date: Option<String>,
    #[serde(default, alias = "number_of_occurrences")]
    pub number_of_occurrences: i64,
    #[serde(default, alias = "recurrence_time_zone")]
    pub recurrence_time_zone: Option<String>,
}

fn one() -> i64 {
    1
}

#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    Daily,
    Weekly {
        days: Vec<Weekday>,
        first_day_of_week: Weekday,
    },
    AbsoluteMonthly {
        day_of_month: i8,
    },
    RelativeMonthly {
        index: WeekIndex,
        days: Vec<Weekday>,
    },
    AbsoluteYearly {
        month: i8,
        day_of_month: i8,
    },
    RelativeYearly {
        month: i8,
        index: WeekIndex,
        days: Vec<Weekday>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeekIndex {
    First,
    Second,
    Third,
    Fourth,
    Last,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RangeEnd {
    EndDate(Date),
    NoEnd,
    Numbered(u32),
}

/// A validated recurrence rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Recurrence {
    pub pattern: Pattern,
    pub interval: i32,
    pub start_date: Date,
    pub end: RangeEnd,
    pub recurrence_time_zone: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecurrenceError {
    #[error("recurrence pattern type '{0}' is not one of daily, weekly, absoluteMonthly, relativeMonthly, absoluteYearly, relativeYearly")]
    UnknownPattern(String),
    #[error("recurrence range type '{0}' is not one of endDate, noEnd, numbered")]
    UnknownRange(String),
    #[error("recurrence {0} is missing or invalid")]
    Invalid(&'static str),
}

impl Recurrence {
    /// Validates a spec; `event_start_date` is used when the range has no `startDate`.
    pub fn from_spec(
        spec: &RecurrenceSpec,
        event_start_date: Date,
        zone_name: &str,
    ) -> Result<Recurrence, RecurrenceError> {
        let interval = i32::try_from(spec.pattern.interval)
            .map_err(|_| RecurrenceError::Invalid("interval"))?;
        if !(1..=999).contains(&interval) {
            return Err(RecurrenceError::Invalid("interval"));
        }
        let days = || -> Result<Vec<Weekday>, RecurrenceError> {
            let days: Option<Vec<Weekday>> = spec
                .pattern
                .days_of_week
                .iter()
                .map(|day| parse_weekday(day))
                .collect();
            match days {
                Some(days) if !days.is_empty() => Ok(days),
                _ => Err(RecurrenceError::Invalid("daysOfWeek")),
            }
        };
        let index = || -> Result<WeekIndex, RecurrenceError> {
            match spec
                .pattern
                .index
                .as_deref()
                .unwrap_or("first")
                .to_ascii_lowercase()
                .as_str()
            {
                "first" => Ok(WeekIndex::First),
                "second" => Ok(WeekIndex::Second),
                "third" => Ok(WeekIndex::Third),
                "fourth" => Ok(WeekIndex::Fourth),
                "last" => Ok(WeekIndex::Last),
                _ => Err(RecurrenceError::Invalid("index")),
            }
        };
        let day_of_month = || -> Result<i8, RecurrenceError> {
            i8::try_from(spec.pattern.day_of_month)
                .ok()
                .filter(|day| (1..=31).contains(day))
                .ok_or(RecurrenceError::Invalid("dayOfMonth"))
        };
        let month = || -> Result<i8, RecurrenceError> {
            i8::try_from(spec.pattern.month)
                .ok()
                .filter(|month| (1..=12).contains(month))
                .ok_or(RecurrenceError::Invalid("month"))
        };
        let pattern = match spec.pattern.kind.as_str() {
            "daily" => Pattern::Daily,
            "weekly" => Pattern::Weekly {
                days: days()?,
                first_day_of_week: match &spec.pattern.first_day_of_week {
                    Some(name) => {
                        parse_weekday(name).ok_or(RecurrenceError::Invalid("firstDayOfWeek"))?
                    }
                    None => Weekday::Sunday,
                },
            },
            "absoluteMonthly" => Pattern::AbsoluteMonthly {
                day_of_month: day_of_month()?,
            },
            "relativeMonthly" => Pattern::RelativeMonthly {
                index: index()?,
                days: days()?,
            },
            "absoluteYearly" => Pattern::AbsoluteYearly {
                month: month()?,
                day_of_month: day_of_month()?,
            },
            "relativeYearly" => Pattern::RelativeYearly {
                month: month()?,
                index: index()?,
                days: days()?,
            },
            other => return Err(RecurrenceError::UnknownPattern(other.to_string())),
        };
        let start_date = match spec
            .range
            .start_date
            .as_deref()
            .filter(|text| !text.is_empty())
        {
            Some(text) => text
                .parse::<Date>()
                .map_err(|_| RecurrenceError::Invalid("range.startDate"))?,
            None => event_start_date,
        };
        let end = match spec.range.kind.as_str() {
            "endDate" => RangeEnd::EndDate(
                spec.range
                    .end_date
                    .as_deref()
                    .and_then(|text| text.parse::<Date>().ok())
                    .ok_or(RecurrenceError::Invalid("range.endDate"))?,
            ),
            "noEnd" => RangeEnd::NoEnd,
            "numbered" => RangeEnd::Numbered(
                u32::try_from(spec.range.number_of_occurrences)
                    .ok()
                    .filter(|count| *count > 0)
                    .ok_or(RecurrenceError::Invalid("range.numberOfOccurrences"))?,
            ),
            other => return Err(RecurrenceError::UnknownRange(other.to_string())),
        };
        let recurrence_time_zone = spec
            .range
            .recurrence_time_zone
            .clone()
            .unwrap_or_else(|| zone_name.to_string());
        Ok(Recurrence {
            pattern,
            interval,
            start_date,
            end,
            recurrence_time_zone,
        })
    }

    /// Graph's JSON for the `recurrence` property of a series master.
    pub fn to_json(&self) -> Value {
        let (kind, days, day_of_month, month, index, first_day) = match &self.pattern {
            Pattern::Daily => ("daily", vec![], 0, 0, "first", Weekday::Sunday),
            Pattern::Weekly {
                days,
                first_day_of_week,
            } => ("weekly", days.clone(), 0, 0, "first", *first_day_of_week),
            Pattern::AbsoluteMonthly { day_of_month } => (
                "absoluteMonthly",
                vec![],
                *day_of_month,
                0,
                "first",
                Weekday::Sunday,
            ),
            Pattern::RelativeMonthly { index, days } => (
                "relativeMonthly",
                days.clone(),
                0,
                0,
                index_name(*index),
                Weekday::Sunday,
            ),
            Pattern::AbsoluteYearly {
                month,
                day_of_month,
            } => (
                "absoluteYearly",
                vec![],
                *day_of_month,
                *month,
                "first",
                Weekday::Sunday,
            ),
            Pattern::RelativeYearly { month, index, days } => (
                "relativeYearly",
                days.clone(),
                0,
                *month,
                index_name(*index),
                Weekday::Sunday,
            ),
        };
        let (range_kind, end_date, count) = match &self.end {
            RangeEnd::EndDate(date) => ("endDate", date.to_string(), 0),
            RangeEnd::NoEnd => ("noEnd", "0001-01-01".to_string(), 0),
            RangeEnd::Numbered(count) => ("numbered", "0001-01-01".to_string(), *count),
        };
        json!({
            "pattern": {
                "type": kind,
                "interval": self.interval,
                "month": month,
                "dayOfMonth": day_of_month,
                "daysOfWeek": days.iter().map(|day| weekday_name(*day)).collect::<Vec<_>>(),
                "firstDayOfWeek": weekday_name(first_day),
                "index": index,
            },
            "range": {
                "type": range_kind,
                "startDate": self.start_date.to_string(),
                "endDate": end_date,
                "recurrenceTimeZone": self.recurrence_time_zone,
                "numberOfOccurrences": count,
            }
        })
    }

    /// All occurrence dates from the range start up to and including `until` (and never past
    /// the range's own end). Numbered ranges count from the first occurrence whatever `until` is.
    pub fn dates_until(&self, until: Date) -> Vec<Date> {
        let last_allowed = match &self.end {
            RangeEnd::EndDate(end) => (*end).min(until),
            _ => until,
        };
        let limit = match &self.end {
            RangeEnd::Numbered(count) => Some(*count as usize),
            _ => None,
        };
        let mut dates = Vec::new();
        let push = |date: Date, dates: &mut Vec<Date>| -> bool {
            if date < self.start_date {
                return true;
            }
            if date > last_allowed || limit.is_some_and(|limit| dates.len() >= limit) {
                return false;
            }
            dates.push(date);
            true
        };
        let interval = i64::from(self.interval);
        match &self.pattern {
            Pattern::Daily => {
                let mut step = 0i64;
                while let Ok(date) = self.start_date.checked_add((step * interval).days()) {
                    if !push(date, &mut dates) {
                        break;
                    }
                    step += 1;
                }
            }
            Pattern::Weekly {
                days,
                first_day_of_week,
            } => {
                let back = (self.start_date.weekday().to_monday_zero_offset()
                    - first_day_of_week.to_monday_zero_offset()
                    + 7)
                    % 7;
                let Ok(first_week_start) = self.start_date.checked_sub(i64::from(back).days())
                else {
                    return dates;
                };
                let mut offsets: Vec<i64> = days
                    .iter()
                    .map(|day| {
                        i64::from(
                            (day.to_monday_zero_offset()
                                - first_day_of_week.to_monday_zero_offset()
                                + 7)
                                % 7,
                        )
                    })
                    .collect();
                offsets.sort_unstable();
                offsets.dedup();
                let mut week = 0i64;
                'weeks: while let Ok(week_start) =
                    first_week_start.checked_add((week * 7 * interval).days())
                {
                    if week_start > last_allowed {
                        break;
                    }
                    for offset in &offsets {
                        let Ok(date) = week_start.checked_add(offset.days()) else {
                            break 'weeks;
                        };
                        if !push(date, &mut dates) {
                            break 'weeks;
                        }
                    }
                    week += 1;
                }
            }
            Pattern::AbsoluteMonthly { .. } | Pattern::RelativeMonthly { .. } => {
                let Ok(first_month) = self.start_date.first_of_month().checked_add(0.days()) else {
                    return dates;
                };
                let mut step = 0i64;
                while let Ok(month_start) = first_month.checked_add((step * interval).months()) {
                    if month_start > last_allowed {
                        break;
                    }
                    let candidates = self.dates_in_month(month_start);
                    if !candidates.into_iter().all(|date| push(date, &mut dates)) {
                        break;
                    }
                    step += 1;
                }
            }
            Pattern::AbsoluteYearly { month, .. } | Pattern::RelativeYearly { month, .. } => {
                let mut step = 0i64;
                loop {
                    let year = i64::from(self.start_date.year()) + step * interval;
                    let Ok(year) = i16::try_from(year) else { break };
                    let Ok(month_start) = Date::new(year, *month, 1) else {
                        break;
                    };
                    if month_start > last_allowed {
                        break;
                    }
                    let candidates = self.dates_in_month(month_start);
                    if !candidates.into_iter().all(|date| push(date, &mut dates)) {
                        break;
                    }
                    step += 1;
                }
            }
        }
        dates
    }

    /// The dates a monthly or yearly pattern selects within the month starting at `month_start`.
    fn dates_in_month(&self, month_start: Date) -> Vec<Date> {
        match &self.pattern {
            Pattern::AbsoluteMonthly { day_of_month }
            | Pattern::AbsoluteYearly { day_of_month, .. } => {
                // Outlook puts "day 31" on the last day of shorter months rather than skipping them.
                let day = (*day_of_month).min(month_start.days_in_month());
                month_start.with().day(day).build().into_iter().collect()
            }
            Pattern::RelativeMonthly { index, days }
            | Pattern::RelativeYearly { index, days, .. } => {
                let matching: Vec<Date> = (0..month_start.days_in_month())
                    .filter_map(|offset| month_start.checked_add(i64::from(offset).days()).ok())
                    .filter(|date| days.contains(&date.weekday()))
                    .collect();
                let chosen = match index {
                    WeekIndex::First => matching.first(),
                    WeekIndex::Second => matching.get(1),
                    WeekIndex::Third => matching.get(2),
                    WeekIndex::Fourth => matching.get(3),
                    WeekIndex::Last => matching.last(),
                };
                chosen.copied().into_iter().collect()
            }
            _ => vec![],
        }
    }
}

fn index_name(index: WeekIndex) -> &'static str {
    match index {
        WeekIndex::First => "first",
        WeekIndex::Second => "second",
        WeekIndex::Third => "third",
        WeekIndex::Fourth => "fourth",
        WeekIndex::Last => "last",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json_text: &str, start: &str) -> Recurrence {
        let spec: RecurrenceSpec = match serde_json::from_str(json_text) {
            Ok(spec) => spec,
            Err(error) => panic!("test spec does not parse: {error}"),
        };
        let start: Date = start.parse().unwrap_or_default();
        match Recurrence::from_spec(&spec, start, "UTC") {
            Ok(rule) => rule,
            Err(error) => panic!("test spec invalid: {error}"),
        }
    }

    fn dates(rule: &Recurrence, until: &str) -> Vec<String> {
        rule.dates_until(until.parse().unwrap_or_default())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn weekly_on_two_days_every_second_week() {
        let weekly = rule(
            r#"{"pattern":{"type":"weekly","interval":2,"daysOfWeek":["monday","thursday"],"firstDayOfWeek":"monday"},
                "range":{"type":"numbered","numberOfOccurrences":5}}"#,
            "2026-03-05",
        );
        assert_eq!(
            dates(&weekly, "2026-12-31"),
            vec![
                "2026-03-05",
                "2026-03-16",
                "2026-03-19",
                "2026-03-30",
                "2026-04-02"
            ]
        );
    }

    #[test]
    fn absolute_monthly_day_31_falls_on_the_last_day() {
        let monthly = rule(
            r#"{"pattern":{"type":"absoluteMonthly","interval":1,"dayOfMonth":31},
                "range":{"type":"endDate","endDate":"2026-04-30"}}"#,
            "2026-01-31",
        );
        assert_eq!(
            dates(&monthly, "2027-01-01"),
            vec!["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]
        );
    }

    #[test]
    fn relative_monthly_last_friday() {
        let monthly = rule(
            r#"{"pattern":{"type":"relativeMonthly","interval":1,"daysOfWeek":["friday"],"index":"last"},
                "range":{"type":"noEnd"}}"#,
            "2026-01-01",
        );
        assert_eq!(
            dates(&monthly, "2026-03-31"),
            vec!["2026-01-30", "2026-02-27", "2026-03-27"]
        );
    }

    #[test]
    fn daily_stops_at_until_for_open_ended_series() {
        let daily = rule(
            r#"{"pattern":{"type":"daily","interval":3},"range":{"type":"noEnd"}}"#,
            "2026-01-01",
        );
        assert_eq!(
            dates(&daily, "2026-01-10"),
            vec!["2026-01-01", "2026-01-04", "2026-01-07", "2026-01-10"]
        );
    }

    #[test]
    fn relative_yearly_fourth_thursday_of_november() {
        let yearly = rule(
            r#"{"pattern":{"type":"relativeYearly","interval":1,"month":11,"daysOfWeek":["thursday"],"index":"fourth"},
                "range":{"type":"numbered","numberOfOccurrences":2}}"#,
            "2026-01-01",
        );
        assert_eq!(
            dates(&yearly, "2030-01-01"),
            vec!["2026-11-26", "2027-11-25"]
        );
    }

    #[test]
    fn unknown_pattern_is_a_clear_error() {
        let spec: Result<RecurrenceSpec, _> =
            serde_json::from_str(r#"{"pattern":{"type":"hourly"},"range":{"type":"noEnd"}}"#);
        let result =
            spec.map(|spec| Recurrence::from_spec(&spec, Date::constant(2026, 1, 1), "UTC"));
        assert!(matches!(
            result,
            Ok(Err(RecurrenceError::UnknownPattern(_)))
        ));
    }
}
