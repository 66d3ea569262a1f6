//! Schedules: cron expressions in a time zone, the scheduled times they produce, and the pure
//! decision of what to do with the times that came due (start a run, or skip it and say why).
//! No clock and no I/O here: the scheduler loop passes "now" in, which makes hours, days and
//! DST transitions testable without waiting.
//!
//! - [`cron`]: parsing a cron expression in a time zone, and the times it produces;
//! - [`plan`](mod@plan): what each time that came due does under the task's policies.

mod cron;
mod plan;

pub use cron::{Schedule, ScheduleError};
pub use plan::{plan, Decision, FirePolicy, MISSED_RECORD_CAP, ON_TIME_GRACE};

use chrono::{DateTime, Utc};
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
    /// The task already had as many queued runs as `MAX_QUEUED_RUNS_PER_TASK` allows.
    QueueFull,
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
            SkipReason::QueueFull => "QueueFull",
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
