//! Submission: the caps, the run's number, the queued row, and the wake-up for launchers.

use super::RunRow;
use super::COLUMNS;
use crate::domain::{CapReached, Caps, Run, Submission};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgExecutor};
use uuid::Uuid;

/// The one way a run is recorded: applies the caps, numbers the run in its task's sequence (or
/// the ad-hoc one), inserts it queued and wakes the launchers at commit. Call it in a
/// transaction: the token's row (per-token cap) and the task's counter row (queue cap) stay
/// locked until commit, so concurrent submitters are counted one after the other. A refused
/// submission leaves nothing behind (its work is undone to a savepoint), so a caller may go on
/// with its transaction.
pub async fn submit(
    conn: &mut PgConnection,
    submission: &Submission,
    caps: Caps,
) -> Result<Result<Run, CapReached>, sqlx::Error> {
    let mut savepoint = conn.begin().await?;
    let outcome = submit_capped(&mut savepoint, submission, caps).await?;
    match outcome {
        Ok(_) => savepoint.commit().await?,
        Err(_) => savepoint.rollback().await?,
    }
    Ok(outcome)
}

async fn submit_capped(
    conn: &mut PgConnection,
    submission: &Submission,
    caps: Caps,
) -> Result<Result<Run, CapReached>, sqlx::Error> {
    let origin = submission.origin();
    if let Some(token) = origin.token_id {
        let own = crate::store::tokens::lock_for_submission(&mut *conn, token).await?;
        let limit = match own.flatten() {
            Some(own) => u32::try_from(own).unwrap_or(0),
            None => caps.max_active_runs_per_token,
        };
        if limit > 0 && active_count_of_token(&mut *conn, token).await? >= i64::from(limit) {
            return Ok(Err(CapReached::TooManyActiveRuns { limit }));
        }
    }
    let run = insert(&mut *conn, submission).await?;
    let limit = caps.max_queued_runs_per_task;
    if let (Some(task), true) = (&origin.task, limit > 0) {
        // Counted after the insert, which holds the task's counter row.
        if queued_count(&mut *conn, task).await? > i64::from(limit) {
            return Ok(Err(CapReached::QueueFull {
                task: task.clone(),
                limit,
            }));
        }
    }
    Ok(Ok(run))
}

/// Records a queued run with the next number of its task (or of the ad-hoc sequence).
async fn insert(conn: &mut PgConnection, submission: &Submission) -> Result<Run, sqlx::Error> {
    let origin = submission.origin();
    let template = submission.template();
    let number: i64 = sqlx::query_scalar(
        "INSERT INTO run_counters (scope, last_number) VALUES ($1, 1)
         ON CONFLICT (scope) DO UPDATE SET last_number = run_counters.last_number + 1
         RETURNING last_number",
    )
    .bind(origin.task.as_deref().unwrap_or(""))
    .fetch_one(&mut *conn)
    .await?;
    let row: RunRow = sqlx::query_as(&format!(
        "INSERT INTO runs (id, task_name, number, status, trigger, rerun_of, template, labels,
            scheduled_time, token_id)
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(origin.task.as_deref())
    .bind(number)
    .bind(origin.trigger)
    .bind(origin.rerun_of)
    .bind(Json(template))
    .bind(Json(&template.labels))
    .bind(origin.scheduled_time)
    .bind(origin.token_id)
    .fetch_one(&mut *conn)
    .await?;
    // Wakes launchers on every replica at commit.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(QUEUED_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(row.into())
}

/// The Postgres NOTIFY channel that says "a run was queued".
pub const QUEUED_CHANNEL: &str = "vfi_run_queued";

/// How many runs of `task` wait in `queued` (for the per-task cap).
async fn queued_count(db: impl PgExecutor<'_>, task: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM runs WHERE task_name = $1 AND status = 'queued'")
        .bind(task)
        .fetch_one(db)
        .await
}

/// How many runs `token` started that have not finished yet.
async fn active_count_of_token(db: impl PgExecutor<'_>, token: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE token_id = $1
            AND status IN ('queued', 'creating', 'pending', 'running')",
    )
    .bind(token)
    .fetch_one(db)
    .await
}
