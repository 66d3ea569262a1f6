//! Schedules: cron expressions in a time zone, the scheduled times they produce, and the pure
//! decision of what to do with the times that came due (start a run, or skip it and say why).
//! No clock and no I/O here: the scheduler loop passes "now" in, which makes hours, days and
//! DST transitions testable without waiting.

use chrono::{DateTime, Duration, DurationRound, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// What a scheduled time does while an earlier run of the task is still active (CronJob's
/// `concurrencyPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ConcurrencyPolicy {
    /// Start the new run alongside the active ones.
    #[default]
    Allow,
    /// Skip the scheduled time (recorded with reason `Forbid`).
    Forbid,
    /// Cancel the active runs, then start the new one.
    Replace,
}

/// Which scheduled times missed while the service was down (or behind) still start a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatchUpPolicy {
    /// Only a time reached on time starts a run; every missed time is skipped.
    None,
    /// CronJob's rule: the most recent missed time starts one run (if still within
    /// `startingDeadlineSeconds`); older ones are skipped.
    #[default]
    Latest,
    /// Every missed time within `startingDeadlineSeconds` starts a run, up to
    /// `maxCatchUpRuns` (the most recent ones); older ones are skipped.
    All,
}

/// Why a scheduled time did not start a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[sqlx(type_name = "text")]
pub enum SkipReason {
    /// The task was suspended.
    Suspended,
    /// A run of the task was active and the concurrency policy is `Forbid`.
    Forbid,
    /// The time was reached later than `startingDeadlineSeconds` allows.
    DeadlinePassed,
    /// A later scheduled time was also due; the catch-up policy runs only that one.
    Missed,
    /// More missed times were due than `maxCatchUpRuns` allows.
    CatchUpLimit,
    /// A summary: so many times were missed (long downtime) that they are not listed one by
    /// one; the record's time is the first of them and its message says up to when.
    MissedMany,
    /// The task's template breaks this installation's run limits or sandbox as they are now
    /// (they may have changed since the task was saved).
    BeyondLimits,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Suspended => "Suspended",
            SkipReason::Forbid => "Forbid",
            SkipReason::DeadlinePassed => "DeadlinePassed",
            SkipReason::Missed => "Missed",
            SkipReason::CatchUpLimit => "CatchUpLimit",
            SkipReason::MissedMany => "MissedMany",
            SkipReason::BeyondLimits => "BeyondLimits",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a task's schedule stands, as `GET /v1/tasks/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// The latest scheduled time that started a run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<DateTime<Utc>>,
    /// When the latest succeeded run started by the schedule finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<DateTime<Utc>>,
    /// The next scheduled time, in UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<DateTime<Utc>>,
    /// The same instant in the task's time zone (RFC 3339 with its offset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_schedule_time_local: Option<String>,
    /// The time zone the schedule is read in.
    pub time_zone: String,
    /// The task's runs that are not finished, oldest first.
    pub active_runs: Vec<uuid::Uuid>,
    /// The most recent scheduled times that did not start a run, newest first.
    pub recent_skips: Vec<SkippedTime>,
}

/// A scheduled time that did not start a run.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct SkippedTime {
    pub scheduled_time: DateTime<Utc>,
    pub reason: SkipReason,
    pub message: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

/// Largest `maxCatchUpRuns`.
pub const MAX_CATCH_UP_RUNS: u32 = 100;
/// `maxCatchUpRuns` when not given.
pub const DEFAULT_CATCH_UP_RUNS: u32 = 10;
/// Missed times recorded one by one after a downtime; older ones get one summary record.
pub const MISSED_RECORD_CAP: usize = 100;
/// How late a time may be reached and still count as "on time" for catch-up policy `none`
/// (or `startingDeadlineSeconds`, when smaller).
pub const ON_TIME_GRACE: Duration = Duration::seconds(10);

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

/// How a task's schedule treats the times that came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirePolicy {
    pub catch_up: CatchUpPolicy,
    pub max_catch_up_runs: u32,
    /// `startingDeadlineSeconds`: a time reached later than this is not started.
    pub starting_deadline: Option<Duration>,
    pub suspended: bool,
}

/// What to do with one scheduled time. Concurrency (`Forbid`/`Replace`) is decided when the
/// decision is applied, since it depends on the runs active at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Start {
        time: DateTime<Utc>,
    },
    Skip {
        time: DateTime<Utc>,
        reason: SkipReason,
        message: String,
    },
}

impl Decision {
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            Decision::Start { time } | Decision::Skip { time, .. } => *time,
        }
    }
}

/// Decides, for every scheduled time in `(after, now]`, whether it starts a run, oldest first.
/// At most [`MISSED_RECORD_CAP`] times are listed one by one; when more were due, one
/// `MissedMany` record stands for all the older ones. Never more than one run per pass unless
/// the catch-up policy is `all`, and then at most `max_catch_up_runs`.
pub fn plan(
    schedule: &Schedule,
    policy: &FirePolicy,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let (mut due, more) = schedule.latest_between(after, now, MISSED_RECORD_CAP);
    due.reverse();
    let mut decisions = Vec::with_capacity(due.len() + 1);
    if more {
        if let (Some(first), Some(oldest_listed)) = (schedule.next_after(after), due.first()) {
            decisions.push(Decision::Skip {
                time: first,
                reason: SkipReason::MissedMany,
                message: format!(
                    "every scheduled time from {} until before {} was missed (the service was down or behind); they are not listed one by one",
                    first.to_rfc3339(),
                    oldest_listed.to_rfc3339()
                ),
            });
        }
    }
    let within = |t: DateTime<Utc>, limit: Option<Duration>| limit.is_none_or(|d| now - t <= d);
    let newest = due.last().copied();
    let deadline = policy.starting_deadline;
    let deadline_text = |t: DateTime<Utc>| {
        format!(
            "reached {} s late, more than startingDeadlineSeconds ({} s)",
            (now - t).num_seconds(),
            deadline.map(|d| d.num_seconds()).unwrap_or_default()
        )
    };
    // Under `all`, the newest in-deadline times that may still start.
    let mut catch_up_budget = policy.max_catch_up_runs as usize;
    let mut starts_all = vec![false; due.len()];
    if policy.catch_up == CatchUpPolicy::All {
        for (i, t) in due.iter().enumerate().rev() {
            if catch_up_budget > 0 && within(*t, deadline) {
                starts_all[i] = true;
                catch_up_budget -= 1;
            }
        }
    }
    for (i, time) in due.iter().copied().enumerate() {
        let skip = |reason: SkipReason, message: String| Decision::Skip {
            time,
            reason,
            message,
        };
        let decision = if policy.suspended {
            skip(SkipReason::Suspended, "the task is suspended".into())
        } else {
            match policy.catch_up {
                CatchUpPolicy::All if starts_all[i] => Decision::Start { time },
                CatchUpPolicy::All if !within(time, deadline) => {
                    skip(SkipReason::DeadlinePassed, deadline_text(time))
                }
                CatchUpPolicy::All => skip(
                    SkipReason::CatchUpLimit,
                    format!(
                        "more missed times were due than maxCatchUpRuns ({}); the most recent ones ran",
                        policy.max_catch_up_runs
                    ),
                ),
                _ if Some(time) != newest => skip(
                    SkipReason::Missed,
                    "missed while the service was down or behind; a later scheduled time was due too and only that one may start".into(),
                ),
                CatchUpPolicy::Latest if within(time, deadline) => Decision::Start { time },
                CatchUpPolicy::Latest => skip(SkipReason::DeadlinePassed, deadline_text(time)),
                CatchUpPolicy::None => {
                    let grace = deadline.map_or(ON_TIME_GRACE, |d| d.min(ON_TIME_GRACE));
                    if within(time, Some(grace)) {
                        Decision::Start { time }
                    } else {
                        skip(
                            SkipReason::Missed,
                            format!(
                                "reached {} s late and the catch-up policy is none",
                                (now - time).num_seconds()
                            ),
                        )
                    }
                }
            }
        };
        decisions.push(decision);
    }
    decisions
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

    fn policy(catch_up: CatchUpPolicy, deadline_secs: Option<i64>) -> FirePolicy {
        FirePolicy {
            catch_up,
            max_catch_up_runs: 3,
            starting_deadline: deadline_secs.map(Duration::seconds),
            suspended: false,
        }
    }

    fn starts(decisions: &[Decision]) -> Vec<DateTime<Utc>> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Start { time } => Some(*time),
                _ => None,
            })
            .collect()
    }

    fn reasons(decisions: &[Decision]) -> Vec<SkipReason> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Skip { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
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

    #[test]
    fn a_time_reached_on_time_starts_one_run() {
        let schedule = Schedule::parse("* * * * *", None).unwrap();
        let decisions = plan(
            &schedule,
            &policy(CatchUpPolicy::Latest, None),
            utc("2026-01-01T00:00:30Z"),
            utc("2026-01-01T00:01:00Z"),
        );
        assert_eq!(
            decisions,
            [Decision::Start {
                time: utc("2026-01-01T00:01:00Z")
            }]
        );
    }

    #[test]
    fn ten_missed_minutes_start_only_the_latest_within_the_deadline() {
        let schedule = Schedule::parse("* * * * *", None).unwrap();
        let after = utc("2026-01-01T00:00:00Z");
        let now = utc("2026-01-01T00:10:40Z");
        let covered = plan(
            &schedule,
            &policy(CatchUpPolicy::Latest, Some(60)),
            after,
            now,
        );
        assert_eq!(starts(&covered), [utc("2026-01-01T00:10:00Z")]);
        assert_eq!(reasons(&covered), vec![SkipReason::Missed; 9]);

        let too_late = plan(
            &schedule,
            &policy(CatchUpPolicy::Latest, Some(30)),
            after,
            now,
        );
        assert!(starts(&too_late).is_empty());
        let mut expected = vec![SkipReason::Missed; 9];
        expected.push(SkipReason::DeadlinePassed);
        assert_eq!(reasons(&too_late), expected);
    }

    #[test]
    fn catch_up_none_starts_nothing_missed() {
        let schedule = Schedule::parse("* * * * *", None).unwrap();
        let decisions = plan(
            &schedule,
            &policy(CatchUpPolicy::None, None),
            utc("2026-01-01T00:00:00Z"),
            utc("2026-01-01T00:10:40Z"),
        );
        assert!(starts(&decisions).is_empty());
        assert_eq!(decisions.len(), 10);
    }

    #[test]
    fn catch_up_all_starts_the_most_recent_up_to_the_maximum() {
        let schedule = Schedule::parse("* * * * *", None).unwrap();
        let decisions = plan(
            &schedule,
            &policy(CatchUpPolicy::All, Some(300)),
            utc("2026-01-01T00:00:00Z"),
            utc("2026-01-01T00:10:00Z"),
        );
        assert_eq!(
            starts(&decisions),
            [
                utc("2026-01-01T00:08:00Z"),
                utc("2026-01-01T00:09:00Z"),
                utc("2026-01-01T00:10:00Z"),
            ]
        );
        let reasons = reasons(&decisions);
        assert_eq!(
            reasons
                .iter()
                .filter(|r| **r == SkipReason::DeadlinePassed)
                .count(),
            4,
            "00:01 .. 00:04 are more than 300 s late: {reasons:?}"
        );
        assert_eq!(
            reasons
                .iter()
                .filter(|r| **r == SkipReason::CatchUpLimit)
                .count(),
            3
        );
    }

    #[test]
    fn a_suspended_task_skips_every_time_it_reaches() {
        let schedule = Schedule::parse("* * * * *", None).unwrap();
        let mut suspended = policy(CatchUpPolicy::Latest, None);
        suspended.suspended = true;
        let decisions = plan(
            &schedule,
            &suspended,
            utc("2026-01-01T00:00:00Z"),
            utc("2026-01-01T00:02:00Z"),
        );
        assert_eq!(reasons(&decisions), [SkipReason::Suspended; 2]);
    }

    #[test]
    fn a_year_of_downtime_is_bounded_work_with_one_summary_record() {
        let schedule = Schedule::parse("* * * * *", None).unwrap();
        let decisions = plan(
            &schedule,
            &policy(CatchUpPolicy::Latest, None),
            utc("2025-01-01T00:00:00Z"),
            utc("2026-01-01T00:00:00Z"),
        );
        assert_eq!(decisions.len(), MISSED_RECORD_CAP + 1);
        assert!(matches!(
            &decisions[0],
            Decision::Skip { time, reason: SkipReason::MissedMany, .. }
                if *time == utc("2025-01-01T00:01:00Z")
        ));
        assert_eq!(starts(&decisions), [utc("2026-01-01T00:00:00Z")]);
        let times: Vec<_> = decisions.iter().map(Decision::time).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first");
    }
}
