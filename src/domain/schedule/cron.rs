//! Cron expressions in a time zone, and the scheduled times they produce (DST included).

use chrono::{DateTime, Duration, DurationRound, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Parses a standard 5-field expression (minute hour day-of-month month day-of-week) or one
    /// of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, in an IANA time
    /// zone (UTC when none is given). Errors name the field at fault.
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let zone = match time_zone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| ScheduleError {
                field: "timeZone",
                message: format!("{name:?} is not an IANA time zone name (e.g. Europe/Berlin)"),
            })?,
        };
        let trimmed = expression.trim();
        // croner knows every nickname but @midnight, which cron and CronJob accept as @daily.
        let normalized = if trimmed.eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            trimmed
        };
        let invalid = |message: String| ScheduleError {
            field: "schedule",
            message,
        };
        if !normalized.starts_with('@') && normalized.split_whitespace().count() != 5 {
            return Err(invalid(format!(
                "{expression:?} is not a 5-field cron expression (minute hour day-of-month month day-of-week) or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(normalized)
            .map_err(|e| {
                invalid(format!(
                    "{expression:?} is not a valid cron expression: {e}"
                ))
            })?;
        let schedule = Schedule { cron, zone };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(invalid(format!("{expression:?} never matches a date")));
        }
        Ok(schedule)
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = self.zone.from_utc_datetime(&whole_second(t).naive_utc());
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }

    /// The last scheduled time at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = self.zone.from_utc_datetime(&whole_second(t).naive_utc());
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|previous| previous.with_timezone(&Utc))
    }

    /// Scheduled times in `(after, until]`, oldest first, at most `limit` of them.
    pub fn times_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut times = Vec::new();
        let mut cursor = after;
        while times.len() < limit {
            match self.next_after(cursor) {
                Some(next) if next <= until => {
                    times.push(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        times
    }

    /// The most recent scheduled times in `(after, until]`, newest first, at most `limit`, and
    /// whether there are older ones too. Walks backwards from `until`, so the work is bounded by
    /// `limit` however long ago `after` is.
    pub fn latest_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, bool) {
        let mut times = Vec::new();
        let mut cursor = self.latest_at_or_before(until);
        while let Some(t) = cursor.filter(|t| *t > after) {
            if times.len() == limit {
                return (times, true);
            }
            times.push(t);
            cursor = self.latest_at_or_before(t - Duration::seconds(1));
        }
        (times, false)
    }
}

/// A schedule the API refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    pub field: &'static str,
    pub message: String,
}

fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::seconds(1)).unwrap_or(t)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn berlin(expression: &str) -> Schedule {
        Schedule::parse(expression, Some("Europe/Berlin")).unwrap()
    }

    #[test]
    fn standard_expressions_and_nicknames_parse() {
        for expression in [
            "* * * * *",
            "*/15 9-17 * * MON-FRI",
            "0 0 1 1 *",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ] {
            assert!(
                Schedule::parse(expression, None).is_ok(),
                "{expression} parses"
            );
        }
    }

    #[test]
    fn invalid_expressions_and_zones_name_their_field() {
        for expression in [
            "",
            "* * * *",
            "0 * * * * *",
            "61 * * * *",
            "@often",
            "0 0 30 2 *",
        ] {
            let error = Schedule::parse(expression, None).unwrap_err();
            assert_eq!(error.field, "schedule", "{expression}: {error:?}");
        }
        let error = Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert_eq!(error.field, "timeZone");
    }

    #[test]
    fn midnight_is_daily_in_the_tasks_zone() {
        let schedule = Schedule::parse("@midnight", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            schedule.next_after(utc("2026-06-01T12:00:00Z")),
            Some(utc("2026-06-01T22:00:00Z"))
        );
    }

    #[test]
    fn a_daily_time_in_the_fall_back_hour_fires_once() {
        // 2026-10-25: Berlin's clocks go from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
        let schedule = berlin("30 2 * * *");
        let times =
            schedule.times_between(utc("2026-10-24T00:00:00Z"), utc("2026-10-26T23:59:00Z"), 10);
        assert_eq!(
            times,
            [
                utc("2026-10-24T00:30:00Z"),
                utc("2026-10-25T00:30:00Z"),
                utc("2026-10-26T01:30:00Z"),
            ]
        );
    }

    #[test]
    fn a_daily_time_in_the_spring_forward_gap_fires_once_right_after_it() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
        let schedule = berlin("30 2 * * *");
        let times =
            schedule.times_between(utc("2026-03-28T00:00:00Z"), utc("2026-03-30T23:59:00Z"), 10);
        assert_eq!(
            times,
            [
                utc("2026-03-28T01:30:00Z"),
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-30T00:30:00Z"),
            ]
        );
    }

    #[test]
    fn an_hourly_schedule_follows_real_hours_across_both_dst_changes() {
        let schedule = berlin("0 * * * *");
        // The spring-forward day has 23 hours, the fall-back day 25.
        let spring = schedule.times_between(
            utc("2026-03-28T22:59:00Z"),
            utc("2026-03-29T21:59:00Z"),
            100,
        );
        assert_eq!(spring.len(), 23);
        let fall = schedule.times_between(
            utc("2026-10-24T21:59:00Z"),
            utc("2026-10-25T22:59:00Z"),
            100,
        );
        assert_eq!(fall.len(), 25);
        let distinct: std::collections::BTreeSet<_> = fall.iter().collect();
        assert_eq!(distinct.len(), fall.len(), "no instant twice");
    }

    #[test]
    fn walking_backwards_finds_the_same_times_as_walking_forwards_across_dst() {
        for expression in ["30 2 * * *", "0 * * * *", "*/20 1-3 * * *"] {
            let schedule = berlin(expression);
            for (from, to) in [
                ("2026-03-28T00:00:00Z", "2026-03-30T00:00:00Z"),
                ("2026-10-24T00:00:00Z", "2026-10-26T00:00:00Z"),
            ] {
                let forwards = schedule.times_between(utc(from), utc(to), 1000);
                let (mut backwards, more) = schedule.latest_between(utc(from), utc(to), 1000);
                backwards.reverse();
                assert!(!more);
                assert_eq!(forwards, backwards, "{expression} {from}..{to}");
            }
        }
    }
}
