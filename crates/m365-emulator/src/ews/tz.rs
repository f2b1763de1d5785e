//! EWS's `SerializableTimeZone` (Bias plus StandardTime/DaylightTime rules, as
//! GetUserAvailability and WorkingHours carry it) and `TimeZoneDefinition` for GetServerTimeZones.

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

use super::xml::{escape, Element};
use crate::timefmt::parse_weekday;

/// Day names as EWS spells them (`Sunday`).
pub fn ews_weekday(weekday: Weekday) -> &'static str {
    match weekday {
        Weekday::Monday => "Monday",
        Weekday::Tuesday => "Tuesday",
        Weekday::Wednesday => "Wednesday",
        Weekday::Thursday => "Thursday",
        Weekday::Friday => "Friday",
        Weekday::Saturday => "Saturday",
        Weekday::Sunday => "Sunday",
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Minutes added to the zone's bias in this period.
    pub bias: i32,
    pub time: Time,
    /// 1–4, or 5 for the last such weekday of the month.
    pub day_order: i8,
    pub month: i8,
    pub weekday: Weekday,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SerializableZone {
    /// UTC = local + bias (minutes); Berlin has -60.
    pub bias: i32,
    pub standard: Option<Rule>,
    pub daylight: Option<Rule>,
}

fn nth_weekday(year: i16, month: i8, weekday: Weekday, order: i8) -> Option<Date> {
    let first = Date::new(year, month, 1).ok()?;
    let offset = (i16::from(weekday.to_monday_zero_offset())
        - i16::from(first.weekday().to_monday_zero_offset()))
    .rem_euclid(7);
    let mut day = first.checked_add(i64::from(offset).days()).ok()?;
    for _ in 1..order.clamp(1, 5) {
        let next = day.checked_add(7.days()).ok()?;
        if next.month() != month {
            break;
        }
        day = next;
    }
    Some(day)
}

fn parse_rule(element: &Element) -> Result<Rule, String> {
    let text = |name: &str| {
        element
            .child_text(name)
            .ok_or_else(|| format!("{} needs {name}", element.name))
    };
    let number = |name: &str| -> Result<i32, String> {
        text(name)?
            .parse::<i32>()
            .map_err(|_| format!("{}/{name} is not a number", element.name))
    };
    let time_text = text("Time")?;
    let time = Time::strptime("%H:%M:%S", time_text)
        .map_err(|_| format!("{}/Time '{time_text}' is not hh:mm:ss", element.name))?;
    let weekday_text = text("DayOfWeek")?;
    Ok(Rule {
        bias: number("Bias")?,
        time,
        day_order: i8::try_from(number("DayOrder")?)
            .map_err(|_| "DayOrder out of range".to_string())?,
        month: i8::try_from(number("Month")?).map_err(|_| "Month out of range".to_string())?,
        weekday: parse_weekday(weekday_text)
            .ok_or_else(|| format!("'{weekday_text}' is not a day of the week"))?,
    })
}

impl SerializableZone {
    pub fn utc() -> SerializableZone {
        SerializableZone {
            bias: 0,
            standard: None,
            daylight: None,
        }
    }

    /// Reads `<t:TimeZone>` (Bias, StandardTime, DaylightTime).
    pub fn parse(element: &Element) -> Result<SerializableZone, String> {
        let bias = element
            .child_text("Bias")
            .ok_or("TimeZone needs Bias")?
            .parse::<i32>()
            .map_err(|_| "TimeZone/Bias is not a number".to_string())?;
        let standard = element.child("StandardTime").map(parse_rule).transpose()?;
        let daylight = element.child("DaylightTime").map(parse_rule).transpose()?;
        // A zone whose rules differ in nothing has no daylight saving time.
        let has_dst = match (&standard, &daylight) {
            (Some(standard), Some(daylight)) => {
                standard.bias != daylight.bias && standard.month >= 1 && daylight.month >= 1
            }
            _ => false,
        };
        Ok(if has_dst {
            SerializableZone {
                bias,
                standard,
                daylight,
            }
        } else {
            SerializableZone {
                bias: bias + standard.map(|rule| rule.bias).unwrap_or(0),
                standard: None,
                daylight: None,
            }
        })
    }

    fn is_daylight(&self, local: DateTime) -> bool {
        let (Some(standard), Some(daylight)) = (&self.standard, &self.daylight) else {
            return false;
        };
        let year = local.year();
        let Some(start) = nth_weekday(year, daylight.month, daylight.weekday, daylight.day_order)
        else {
            return false;
        };
        let Some(end) = nth_weekday(year, standard.month, standard.weekday, standard.day_order)
        else {
            return false;
        };
        let start = start.to_datetime(daylight.time);
        let end = end.to_datetime(standard.time);
        if start < end {
            local >= start && local < end
        } else {
            local >= start || local < end
        }
    }

    fn offset_minutes(&self, daylight: bool) -> i32 {
        let extra = if daylight {
            self.daylight.as_ref().map(|rule| rule.bias)
        } else {
            self.standard.as_ref().map(|rule| rule.bias)
        };
        self.bias + extra.unwrap_or(0)
    }

    pub fn to_timestamp(&self, local: DateTime) -> Option<Timestamp> {
        let bias = self.offset_minutes(self.is_daylight(local));
        local
            .checked_add(SignedDuration::from_mins(i64::from(bias)))
            .ok()?
            .to_zoned(TimeZone::UTC)
            .ok()
            .map(|zoned| zoned.timestamp())
    }

    pub fn to_local(&self, timestamp: Timestamp) -> DateTime {
        let utc = timestamp.to_zoned(TimeZone::UTC).datetime();
        let shift = |bias: i32| {
            utc.checked_sub(SignedDuration::from_mins(i64::from(bias)))
                .unwrap_or(utc)
        };
        let daylight = shift(self.offset_minutes(true));
        if self.daylight.is_some() && self.is_daylight(daylight) {
            daylight
        } else {
            shift(self.offset_minutes(false))
        }
    }

    /// The rules of `zone` as they apply in `year`.
    pub fn from_zone(zone: &TimeZone, year: i16) -> SerializableZone {
        let start = Date::new(year, 1, 1)
            .ok()
            .and_then(|date| date.to_zoned(TimeZone::UTC).ok())
            .map(|zoned| zoned.timestamp())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let end = start
            .checked_add(SignedDuration::from_hours(366 * 24))
            .unwrap_or(start);
        let transitions: Vec<_> = zone
            .following(start)
            .take_while(|transition| transition.timestamp() < end)
            .take(2)
            .collect();
        let offset_minutes = |offset: jiff::tz::Offset| offset.seconds() / 60;
        if transitions.len() < 2 {
            return SerializableZone {
                bias: -offset_minutes(zone.to_offset(start)),
                standard: None,
                daylight: None,
            };
        }
        let offsets: Vec<i32> = transitions
            .iter()
            .map(|transition| offset_minutes(transition.offset()))
            .collect();
        let standard_offset = offsets.iter().copied().min().unwrap_or(0);
        let mut standard = None;
        let mut daylight = None;
        for transition in &transitions {
            let before = zone.to_offset(
                transition
                    .timestamp()
                    .checked_sub(SignedDuration::from_secs(1))
                    .unwrap_or(transition.timestamp()),
            );
            let local = transition
                .timestamp()
                .to_zoned(TimeZone::fixed(before))
                .datetime();
            let day = local.day();
            let days_in_month = local.date().days_in_month();
            let order = if day + 7 > days_in_month {
                5
            } else {
                (day - 1) / 7 + 1
            };
            let new_offset = offset_minutes(transition.offset());
            let rule = Rule {
                bias: -(new_offset - standard_offset),
                time: local.time(),
                day_order: order,
                month: local.month(),
                weekday: local.weekday(),
            };
            if new_offset == standard_offset {
                standard = Some(rule);
            } else {
                daylight = Some(rule);
            }
        }
        SerializableZone {
            bias: -standard_offset,
            standard,
            daylight,
        }
    }

    /// `<t:TimeZone>…</t:TimeZone>` (also used inside WorkingHours).
    pub fn to_xml(&self) -> String {
        let rule_xml = |name: &str, rule: Option<&Rule>| {
            match rule {
            Some(rule) => format!(
                "<t:{name}><t:Bias>{}</t:Bias><t:Time>{}</t:Time><t:DayOrder>{}</t:DayOrder><t:Month>{}</t:Month><t:DayOfWeek>{}</t:DayOfWeek></t:{name}>",
                rule.bias,
                rule.time.strftime("%H:%M:%S"),
                rule.day_order,
                rule.month,
                ews_weekday(rule.weekday)
            ),
            None => format!(
                "<t:{name}><t:Bias>0</t:Bias><t:Time>00:00:00</t:Time><t:DayOrder>{}</t:DayOrder><t:Month>{}</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:{name}>",
                if name == "StandardTime" { 1 } else { 5 },
                if name == "StandardTime" { 1 } else { 12 },
            ),
        }
        };
        format!(
            "<t:TimeZone><t:Bias>{}</t:Bias>{}{}</t:TimeZone>",
            self.bias,
            rule_xml("StandardTime", self.standard.as_ref()),
            rule_xml("DaylightTime", self.daylight.as_ref())
        )
    }

    /// A `TimeZoneDefinition` (GetServerTimeZones with full data) for zone `id`.
    pub fn definition_xml(&self, id: &str, name: &str) -> String {
        let duration = |minutes: i32| {
            let sign = if minutes < 0 { "-" } else { "" };
            format!("{sign}PT{}M", minutes.abs())
        };
        let standard_bias = self.offset_minutes(false);
        match (&self.standard, &self.daylight) {
            (Some(standard), Some(daylight)) => {
                let transition = |rule: &Rule, to: &str| {
                    let order = if rule.day_order == 5 { -1 } else { i32::from(rule.day_order) };
                    format!(
                        "<t:RecurringDayTransition><t:To Kind=\"Period\">{to}</t:To><t:TimeOffset>PT{}H{}M</t:TimeOffset><t:Month>{}</t:Month><t:DayOfWeek>{}</t:DayOfWeek><t:Occurrence>{order}</t:Occurrence></t:RecurringDayTransition>",
                        rule.time.hour(),
                        rule.time.minute(),
                        rule.month,
                        ews_weekday(rule.weekday)
                    )
                };
                format!(
                    "<t:TimeZoneDefinition Id=\"{id}\" Name=\"{name}\"><t:Periods><t:Period Bias=\"{}\" Name=\"Standard\" Id=\"trule:Std\"/><t:Period Bias=\"{}\" Name=\"Daylight\" Id=\"trule:Dlt\"/></t:Periods><t:TransitionsGroups><t:TransitionsGroup Id=\"0\">{}{}</t:TransitionsGroup></t:TransitionsGroups><t:Transitions><t:Transition><t:To Kind=\"Group\">0</t:To></t:Transition></t:Transitions></t:TimeZoneDefinition>",
                    duration(standard_bias),
                    duration(self.offset_minutes(true)),
                    transition(daylight, "trule:Dlt"),
                    transition(standard, "trule:Std"),
                    id = escape(id),
                    name = escape(name),
                )
            }
            _ => format!(
                "<t:TimeZoneDefinition Id=\"{id}\" Name=\"{name}\"><t:Periods><t:Period Bias=\"{}\" Name=\"Standard\" Id=\"trule:Std\"/></t:Periods><t:TransitionsGroups><t:TransitionsGroup Id=\"0\"><t:Transition><t:To Kind=\"Period\">trule:Std</t:To></t:Transition></t:TransitionsGroup></t:TransitionsGroups><t:Transitions><t:Transition><t:To Kind=\"Group\">0</t:To></t:Transition></t:Transitions></t:TimeZoneDefinition>",
                duration(standard_bias),
                id = escape(id),
                name = escape(name),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berlin_round_trips_through_the_rules() {
        let zone = TimeZone::get("Europe/Berlin").unwrap_or(TimeZone::UTC);
        let rules = SerializableZone::from_zone(&zone, 2030);
        assert_eq!(rules.bias, -60);
        let daylight = rules.daylight.clone().unwrap_or(Rule {
            bias: 0,
            time: Time::midnight(),
            day_order: 0,
            month: 0,
            weekday: Weekday::Sunday,
        });
        assert_eq!(
            (daylight.bias, daylight.month, daylight.day_order),
            (-60, 3, 5)
        );
        assert_eq!(daylight.time, Time::constant(2, 0, 0, 0));
        for text in [
            "2030-01-15T10:00:00",
            "2030-07-01T10:00:00",
            "2030-10-27T04:00:00",
        ] {
            let local: DateTime = text.parse().unwrap_or_default();
            let expected = local
                .to_zoned(zone.clone())
                .map(|zoned| zoned.timestamp())
                .ok();
            assert_eq!(rules.to_timestamp(local), expected, "{text}");
            if let Some(expected) = expected {
                assert_eq!(rules.to_local(expected), local, "{text}");
            }
        }
    }
}
