//! CronJob schedules as Kubernetes reads them (robfig/cron's standard parser): five fields —
//! minute, hour, day of month, month, day of week — with lists, ranges, steps and names, the
//! macros (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`, `@every 1h30m`), and the times
//! they fire in a given time zone. Pure: the caller looks the zone up.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Why a schedule does not parse, in words that name the part at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Times whose fields match.
    Fields(Fields),
    /// Every so many seconds from the last run (`@every`).
    Every(i64),
}

/// The allowed values of each field, as bit sets; `*_star` says the day field was a wildcard
/// (then a day must match both day fields, else either, as cron has always done).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_star: bool,
    weekdays_star: bool,
}

struct Bounds {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Bounds = Bounds {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Bounds = Bounds {
    name: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
const WEEKDAY: Bounds = Bounds {
    name: "day of week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

fn number(text: &str, b: &Bounds) -> Result<u32, CronError> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + if b.min == 1 { 1 } else { 0 });
    }
    text.parse::<u32>()
        .map_err(|_| CronError(format!("{}: {text:?} is not a number", b.name)))
}

/// One comma-separated part of a field: `*`, `?`, `N`, `N-M`, each with an optional `/step`.
/// Returns its bits and whether it was a plain wildcard.
fn part(text: &str, b: &Bounds) -> Result<(u64, bool), CronError> {
    let (range, step) = match text.split_once('/') {
        Some((r, s)) => {
            let step: u32 = s
                .parse()
                .map_err(|_| CronError(format!("{}: step {s:?} is not a number", b.name)))?;
            if step == 0 {
                return Err(CronError(format!("{}: step of zero in {text:?}", b.name)));
            }
            (r, Some(step))
        }
        None => (text, None),
    };
    let star = range == "*" || range == "?";
    let (start, end) = if star {
        (b.min, b.max)
    } else if let Some((lo, hi)) = range.split_once('-') {
        (number(lo, b)?, number(hi, b)?)
    } else {
        let n = number(range, b)?;
        // `N/step` runs from N to the end.
        (n, if step.is_some() { b.max } else { n })
    };
    if start < b.min || end > b.max {
        return Err(CronError(format!("{}: {text:?} is out of range {}-{}", b.name, b.min, b.max)));
    }
    if start > end {
        return Err(CronError(format!("{}: {text:?} runs backwards", b.name)));
    }
    let step = step.unwrap_or(1);
    let bits = (start..=end).step_by(step as usize).fold(0u64, |acc, v| acc | 1 << v);
    Ok((bits, star && step == 1))
}

fn field(text: &str, b: &Bounds) -> Result<(u64, bool), CronError> {
    let mut bits = 0;
    let mut star = false;
    for p in text.split(',') {
        let (b2, s) = part(p, b)?;
        bits |= b2;
        star |= s;
    }
    Ok((bits, star))
}

/// A Go duration as `@every` takes it: `90s`, `5m`, `1h30m`.
fn go_duration(text: &str) -> Result<i64, CronError> {
    let bad = || CronError(format!("@every: {text:?} is not a duration such as 5m or 1h30m"));
    let mut total = 0i64;
    let mut digits = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() {
            digits.push(c);
            rest = &rest[1..];
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let (unit, len) = if rest.starts_with("ms") {
            (0, 2)
        } else {
            match c {
                'h' => (3600, 1),
                'm' => (60, 1),
                's' => (1, 1),
                _ => return Err(bad()),
            }
        };
        total += n * unit;
        rest = &rest[len..];
    }
    if !digits.is_empty() || total < 1 {
        return Err(bad());
    }
    Ok(total)
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, CronError> {
        let text = text.trim();
        if text.starts_with("TZ=") || text.starts_with("CRON_TZ=") {
            return Err(CronError("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into()));
        }
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with("@every ") => return Ok(Schedule::Every(go_duration(t["@every ".len()..].trim())?)),
            t if t.starts_with('@') => return Err(CronError(format!("unrecognized descriptor: {t}"))),
            t => t,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(CronError(format!(
                "expected exactly 5 fields (minute hour day-of-month month day-of-week), found {}: {text:?}",
                parts.len()
            )));
        }
        let (minutes, _) = field(parts[0], &MINUTE)?;
        let (hours, _) = field(parts[1], &HOUR)?;
        let (days, days_star) = field(parts[2], &DAY)?;
        let (months, _) = field(parts[3], &MONTH)?;
        let (weekdays, weekdays_star) = field(parts[4], &WEEKDAY)?;
        Ok(Schedule::Fields(Fields {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_star,
            weekdays_star,
        }))
    }

    /// The first time after `after` (Unix seconds) that the schedule fires in `tz`; none
    /// within five years (a schedule such as February 30th).
    pub fn next_after(&self, after: i64, tz: &TimeZone) -> Option<i64> {
        match self {
            Schedule::Every(secs) => Some(after + secs),
            Schedule::Fields(f) => f.scan(after, tz, true),
        }
    }

    /// The latest time the schedule fired in `tz` after `earliest` and at or before `now`, and
    /// how many such times there were (counted up to 101: Kubernetes warns beyond 100).
    pub fn most_recent(&self, earliest: i64, now: i64, tz: &TimeZone) -> (Option<i64>, usize) {
        match self {
            Schedule::Every(secs) => {
                let k = (now - earliest).max(0) / secs;
                ((k > 0).then(|| earliest + k * secs), k.min(101) as usize)
            }
            Schedule::Fields(f) => {
                let Some(last) = f.scan(now + 1, tz, false).filter(|t| *t > earliest) else {
                    return (None, 0);
                };
                let mut count = 0;
                let mut t = earliest;
                while count < 101 {
                    match f.scan(t, tz, true) {
                        Some(n) if n <= now => {
                            count += 1;
                            t = n;
                        }
                        _ => break,
                    }
                }
                (Some(last), count)
            }
        }
    }
}

impl Fields {
    fn day_matches(&self, d: Date) -> bool {
        let day = self.days & 1 << d.day() as u32 != 0;
        let weekday = self.weekdays & 1 << d.weekday().to_sunday_zero_offset() as u32 != 0;
        if self.days_star || self.weekdays_star {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The nearest firing strictly after `from` (forward) or strictly before it (backward).
    fn scan(&self, from: i64, tz: &TimeZone, forward: bool) -> Option<i64> {
        let start = Timestamp::from_second(from).ok()?.to_zoned(tz.clone()).date();
        let bits = |set: u64, max: u32| -> Vec<u32> {
            let all: Vec<u32> = (0..=max).filter(|v| set & 1 << v != 0).collect();
            if forward { all } else { all.into_iter().rev().collect() }
        };
        let (hours, minutes) = (bits(self.hours, 23), bits(self.minutes, 59));
        for offset in 0..5 * 366 {
            let step = if forward { offset } else { -offset };
            let date = start.checked_add(step.days()).ok()?;
            if self.months & 1 << date.month() as u32 == 0 || !self.day_matches(date) {
                continue;
            }
            for &h in &hours {
                for &m in &minutes {
                    let civil = DateTime::new(date.year(), date.month(), date.day(), h as i8, m as i8, 0, 0).ok()?;
                    // A time in a daylight-saving gap runs as late as the gap is long (02:30
                    // becomes 03:30), so that a daily job is never skipped.
                    let Ok(zoned) = civil.to_zoned(tz.clone()) else { continue };
                    let t = zoned.timestamp().as_second();
                    if (forward && t > from) || (!forward && t < from) {
                        return Some(t);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_second()
    }

    fn utc() -> TimeZone {
        TimeZone::UTC
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        let s = Schedule::parse("*/15 9-17 * JAN-mar mon-fri").unwrap();
        // Thursday 2026-01-01 08:50 → 09:00 the same day.
        assert_eq!(s.next_after(at("2026-01-01T08:50:00Z"), &utc()), Some(at("2026-01-01T09:00:00Z")));
        assert_eq!(s.next_after(at("2026-01-01T09:00:00Z"), &utc()), Some(at("2026-01-01T09:15:00Z")));
        // Friday 17:45 → Monday 09:00.
        assert_eq!(s.next_after(at("2026-01-02T17:45:00Z"), &utc()), Some(at("2026-01-05T09:00:00Z")));
        // After March: next January.
        assert_eq!(s.next_after(at("2026-03-31T17:45:00Z"), &utc()), Some(at("2027-01-01T09:00:00Z")));
        let odd = Schedule::parse("5/20 0 1,15 * *").unwrap();
        assert_eq!(odd.next_after(at("2026-02-01T00:06:00Z"), &utc()), Some(at("2026-02-01T00:25:00Z")));
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 13th, or any Friday.
        let s = Schedule::parse("0 0 13 * 5").unwrap();
        assert_eq!(s.next_after(at("2026-02-07T00:00:00Z"), &utc()), Some(at("2026-02-13T00:00:00Z")));
        assert_eq!(s.next_after(at("2026-02-13T00:00:00Z"), &utc()), Some(at("2026-02-20T00:00:00Z")));
    }

    #[test]
    fn macros_and_every() {
        assert_eq!(Schedule::parse("@hourly"), Schedule::parse("0 * * * *"));
        assert_eq!(Schedule::parse("@weekly"), Schedule::parse("0 0 * * 0"));
        assert_eq!(Schedule::parse("@every 1h30m").unwrap(), Schedule::Every(5400));
        let s = Schedule::parse("@daily").unwrap();
        assert_eq!(s.next_after(at("2026-06-30T23:59:00Z"), &utc()), Some(at("2026-07-01T00:00:00Z")));
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        let err = |s: &str| Schedule::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("* * *"),
            "expected exactly 5 fields (minute hour day-of-month month day-of-week), found 3: \"* * *\""
        );
        assert_eq!(err("61 * * * *"), "minute: \"61\" is out of range 0-59");
        assert_eq!(err("* * * foo *"), "month: \"foo\" is not a number");
        assert_eq!(err("*/0 * * * *"), "minute: step of zero in \"*/0\"");
        assert_eq!(err("5-1 * * * *"), "minute: \"5-1\" runs backwards");
        assert_eq!(err("@fortnightly"), "unrecognized descriptor: @fortnightly");
        assert!(err("TZ=UTC 0 * * * *").contains("use timeZone field"));
        assert!(err("@every soon").contains("not a duration"));
        // February 30th never comes.
        let never = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(never.next_after(at("2026-01-01T00:00:00Z"), &utc()), None);
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
        let s = Schedule::parse("30 2 * * *").unwrap();
        // 02:30 in Berlin in winter is 01:30 UTC.
        assert_eq!(s.next_after(at("2026-01-10T00:00:00Z"), &berlin), Some(at("2026-01-10T01:30:00Z")));
        // On 2026-03-29 02:30 does not exist in Berlin: the run is at 03:30 summer time.
        assert_eq!(s.next_after(at("2026-03-28T02:00:00Z"), &berlin), Some(at("2026-03-29T01:30:00Z")));
        assert_eq!(s.next_after(at("2026-03-29T01:30:00Z"), &berlin), Some(at("2026-03-30T00:30:00Z")));
    }

    #[test]
    fn the_most_recent_missed_time_and_how_many() {
        let s = Schedule::parse("*/1 * * * *").unwrap();
        let (last, missed) = s.most_recent(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:03:30Z"), &utc());
        assert_eq!(last, Some(at("2026-01-01T00:03:00Z")));
        assert_eq!(missed, 3);
        let (last, missed) = s.most_recent(at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"), &utc());
        assert_eq!(last, Some(at("2026-01-02T00:00:00Z")));
        assert_eq!(missed, 101, "counted only until it is too many");
        assert_eq!(
            s.most_recent(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:30Z"), &utc()),
            (None, 0)
        );
    }
}
