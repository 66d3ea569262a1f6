//! SQL for pruning finished runs: which runs are beyond a task's history limits, the global
//! maximum age or the global maximum count, found a batch at a time by keyset (so a backlog of
//! millions is walked once, never re-scanned), and their deletion. Only final runs are ever
//! selected or deleted: an active run is never touched, whatever the limits say.

use crate::domain::TaskSpec;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// Statuses that count as "succeeded" and "failed" for the history limits.
pub const SUCCEEDED: &[&str] = &["succeeded"];
pub const FAILED: &[&str] = &["failed", "cancelled", "lost"];
const FINAL: &str = "('succeeded', 'failed', 'cancelled', 'lost')";

/// A Postgres advisory lock key: one pruner at a time across replicas.
pub const PRUNER_LOCK: i64 = 0x7666_695f_7072_756e; // "vfi_prun"

/// A run to prune, with its Job (if it has one) to delete first.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    pub id: Uuid,
    pub job_namespace: Option<String>,
    pub job_name: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Tasks whose history is limited, with their specs.
pub async fn limited_tasks(
    db: impl PgExecutor<'_>,
) -> Result<Vec<(String, TaskSpec)>, sqlx::Error> {
    let rows: Vec<(String, Json<TaskSpec>)> = sqlx::query_as(
        "SELECT name, spec FROM tasks
         WHERE spec ?| array['schedule', 'successfulRunsHistoryLimit', 'failedRunsHistoryLimit']
         ORDER BY name",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, spec)| (name, spec.0))
        .collect())
}

/// The oldest run to keep among the task's newest `keep` runs in `statuses`; `None` when
/// `keep` is 0 (keep none). Runs older than it are beyond the limit.
pub async fn oldest_kept(
    conn: &mut PgConnection,
    task: &str,
    statuses: &[&str],
    keep: i64,
) -> Result<Option<Uuid>, sqlx::Error> {
    if keep <= 0 {
        return Ok(None);
    }
    // The newest `keep` of each status (an index range each), merged: cheap however many
    // runs of another status there are.
    let mut newest: Vec<Uuid> = Vec::new();
    for status in statuses {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE task_name = $1 AND status = $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(task)
        .bind(status)
        .bind(keep)
        .fetch_all(&mut *conn)
        .await?;
        newest.extend(ids);
    }
    newest.sort_unstable_by(|a, b| b.cmp(a));
    // Fewer than `keep` runs: everything is kept (the oldest one bounds nothing).
    Ok(newest.get(keep as usize - 1).copied().or(Some(Uuid::nil())))
}

/// Up to `limit` runs of `task` in `status` older than `below` (all, when `below` is `None`),
/// after `after` in id order.
pub async fn beyond_limit(
    db: impl PgExecutor<'_>,
    task: &str,
    status: &str,
    below: Option<Uuid>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Candidate>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, job_namespace, job_name, finished_at FROM runs
         WHERE task_name = $1 AND status = $2
           AND ($3::uuid IS NULL OR id < $3) AND ($4::uuid IS NULL OR id > $4)
         ORDER BY id LIMIT $5",
    )
    .bind(task)
    .bind(status)
    .bind(below)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Up to `limit` finished runs (of any task, or ad hoc) that finished before `before`, after
/// `after` in (finished_at, id) order.
pub async fn older_than(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Candidate>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT id, job_namespace, job_name, finished_at FROM runs
         WHERE finished_at < $1 AND status IN {FINAL}
           AND ($2::timestamptz IS NULL OR (finished_at, id) > ($2, $3))
         ORDER BY finished_at, id LIMIT $4"
    ))
    .bind(before)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The newest finished run beyond the newest `keep` finished runs overall, if any.
pub async fn count_cutoff(db: impl PgExecutor<'_>, keep: i64) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT id FROM runs WHERE status IN {FINAL} ORDER BY id DESC OFFSET $1 LIMIT 1"
    ))
    .bind(keep)
    .fetch_optional(db)
    .await
}

/// Up to `limit` finished runs at or below `cutoff`, after `after`, in id order.
pub async fn at_or_below(
    db: impl PgExecutor<'_>,
    cutoff: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Candidate>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT id, job_namespace, job_name, finished_at FROM runs
         WHERE id <= $1 AND status IN {FINAL} AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3"
    ))
    .bind(cutoff)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Deletes these runs if they are final, with their events (pods go by cascade). Returns how
/// many were deleted.
pub async fn delete(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
    let deleted: i64 = sqlx::query_scalar(&format!(
        "WITH gone AS (DELETE FROM runs WHERE id = ANY($1) AND status IN {FINAL} RETURNING id),
         events AS (DELETE FROM run_events WHERE run_id IN (SELECT id FROM gone))
         SELECT count(*) FROM gone"
    ))
    .bind(ids)
    .fetch_one(db)
    .await?;
    Ok(deleted as u64)
}

/// Takes the pruner's advisory lock on this session, if no other replica holds it.
pub async fn try_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(PRUNER_LOCK)
        .fetch_one(conn)
        .await
}

pub async fn unlock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(PRUNER_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}
