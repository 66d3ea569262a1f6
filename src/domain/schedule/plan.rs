//! The pure decision of what to do with the scheduled times that came due: start a run, or skip
//! it and say why.

use super::{CatchUpPolicy, Schedule, SkipReason};
use chrono::{DateTime, Duration, Utc};

/// Missed times recorded one by one after a downtime; older ones get one summary record.
pub const MISSED_RECORD_CAP: usize = 100;
/// How late a time may be reached and still count as "on time" for catch-up policy `none`
/// (or `startingDeadlineSeconds`, when smaller).
pub const ON_TIME_GRACE: Duration = Duration::seconds(10);

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
