//! SQL for schedules: each task's cursor (how far the scheduler has looked) and the record of
//! every scheduled time dealt with. The record's primary key (task, scheduled time) is what makes
//! firing exactly-once: [`claim_time`] and the run insert share a transaction.

use crate::domain::schedule::{SkipReason, SkippedTime};
use crate::domain::TaskSpec;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// The NOTIFY channel that says "a task was created, changed or deleted" (sent by a trigger).
pub const TASK_CHANGED_CHANNEL: &str = "vfi_task_changed";

/// Tasks that have a schedule, with their specs.
pub async fn scheduled_tasks(
    db: impl PgExecutor<'_>,
) -> Result<Vec<(String, TaskSpec)>, sqlx::Error> {
    let rows: Vec<(String, Json<TaskSpec>)> =
        sqlx::query_as("SELECT name, spec FROM tasks WHERE spec ? 'schedule' ORDER BY name")
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(name, spec)| (name, spec.0))
        .collect())
}

/// Forgets the cursors of tasks that no longer have a schedule, so a schedule added again later
/// starts afresh instead of catching up on the time in between.
pub async fn forget_unscheduled(db: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM schedule_cursors c USING tasks t
         WHERE c.task_name = t.name AND NOT (t.spec ? 'schedule')",
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// How far the scheduler has looked for `task`. A task seen for the first time, or whose
/// schedule or time zone changed, starts at `now`: its earlier times are not "missed".
pub async fn cursor(
    db: impl PgExecutor<'_>,
    task: &str,
    schedule: &str,
    time_zone: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO schedule_cursors (task_name, schedule, time_zone, considered_until)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (task_name) DO UPDATE SET
            schedule = EXCLUDED.schedule, time_zone = EXCLUDED.time_zone,
            considered_until = CASE
                WHEN (schedule_cursors.schedule, schedule_cursors.time_zone)
                     IS DISTINCT FROM (EXCLUDED.schedule, EXCLUDED.time_zone)
                THEN EXCLUDED.considered_until ELSE schedule_cursors.considered_until END
         RETURNING considered_until",
    )
    .bind(task)
    .bind(schedule)
    .bind(time_zone)
    .bind(now)
    .fetch_one(db)
    .await
}

/// Locks the task's cursor for this transaction and says whether `time` is still ahead of it
/// (nobody dealt with it yet). Another replica handling the same task waits here.
pub async fn lock_if_ahead(
    conn: &mut PgConnection,
    task: &str,
    time: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let until: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT considered_until FROM schedule_cursors WHERE task_name = $1 FOR UPDATE",
    )
    .bind(task)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(until.is_some_and(|until| time > until))
}

/// Moves the task's cursor forward to `until` (never back).
pub async fn advance(
    db: impl PgExecutor<'_>,
    task: &str,
    until: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE schedule_cursors SET considered_until = greatest(considered_until, $2)
         WHERE task_name = $1",
    )
    .bind(task)
    .bind(until)
    .execute(db)
    .await?;
    Ok(())
}

/// Claims the start of `(task, time)`: true if this caller is the one to start its run. A time
/// recorded as skipped may still be claimed (that is what a backfill does); a started one never.
pub async fn claim_time(
    conn: &mut PgConnection,
    task: &str,
    time: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let claimed: Option<bool> = sqlx::query_scalar(
        "INSERT INTO schedule_fires (task_name, scheduled_time, outcome) VALUES ($1, $2, 'started')
         ON CONFLICT (task_name, scheduled_time) DO UPDATE SET
            outcome = 'started', reason = NULL, message = NULL, recorded_at = now()
         WHERE schedule_fires.outcome = 'skipped'
         RETURNING true",
    )
    .bind(task)
    .bind(time)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(claimed.unwrap_or(false))
}

/// Links a claimed time to the run started for it.
pub async fn attach_run(
    conn: &mut PgConnection,
    task: &str,
    time: DateTime<Utc>,
    run_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE schedule_fires SET run_id = $3 WHERE task_name = $1 AND scheduled_time = $2",
    )
    .bind(task)
    .bind(time)
    .bind(run_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records that `(task, time)` was skipped, unless it already has a record.
pub async fn record_skip(
    db: impl PgExecutor<'_>,
    task: &str,
    time: DateTime<Utc>,
    reason: SkipReason,
    message: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO schedule_fires (task_name, scheduled_time, outcome, reason, message)
         VALUES ($1, $2, 'skipped', $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(task)
    .bind(time)
    .bind(reason.as_str())
    .bind(message)
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The task's unfinished runs, oldest first.
pub async fn active_runs(db: impl PgExecutor<'_>, task: &str) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM runs
         WHERE task_name = $1 AND status IN ('queued', 'creating', 'admitting', 'pending', 'running')
         ORDER BY id",
    )
    .bind(task)
    .fetch_all(db)
    .await
}

/// What the schedule status of a task is made of, from the database.
pub struct StatusRecords {
    pub considered_until: Option<DateTime<Utc>>,
    pub last_schedule_time: Option<DateTime<Utc>>,
    pub last_successful_time: Option<DateTime<Utc>>,
    pub recent_skips: Vec<SkippedTime>,
}

pub async fn status(
    conn: &mut PgConnection,
    task: &str,
    skips: i64,
) -> Result<StatusRecords, sqlx::Error> {
    type Times = (
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let (considered_until, last_schedule_time, last_successful_time): Times = sqlx::query_as(
        "SELECT
            (SELECT considered_until FROM schedule_cursors WHERE task_name = $1),
            (SELECT max(scheduled_time) FROM schedule_fires
             WHERE task_name = $1 AND outcome = 'started'),
            (SELECT max(finished_at) FROM runs
             WHERE task_name = $1 AND status = 'succeeded' AND trigger = 'schedule')",
    )
    .bind(task)
    .fetch_one(&mut *conn)
    .await?;
    let recent_skips = sqlx::query_as(
        "SELECT scheduled_time, reason, message, recorded_at FROM schedule_fires
         WHERE task_name = $1 AND outcome = 'skipped'
         ORDER BY scheduled_time DESC LIMIT $2",
    )
    .bind(task)
    .bind(skips)
    .fetch_all(&mut *conn)
    .await?;
    Ok(StatusRecords {
        considered_until,
        last_schedule_time,
        last_successful_time,
        recent_skips,
    })
}

/// Deletes up to `limit` fire records older than `before`; returns how many went.
pub async fn prune_records(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM schedule_fires WHERE (task_name, scheduled_time) IN (
            SELECT task_name, scheduled_time FROM schedule_fires
            WHERE recorded_at < $1 ORDER BY recorded_at LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(db)
    .await?
    .rows_affected())
}
