//! SQL for the event stream: run events (creation, status changes, pruning), task events
//! (created, updated, deleted) and queue events (a key's waiting runs moved up) share one id
//! sequence, so one number says where a reader is.
//! Rows are written by the database's triggers, never by this module.

use crate::domain::RunStatus;
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// The NOTIFY channel on which the triggers announce every new event id.
pub const CHANNEL: &str = "vfi_run_events";

/// One change of a run or of a task, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `run`, `task` or `queue`.
    pub subject: String,
    /// Runs: `created`, `status` or `pruned`; tasks: `created`, `updated` or `deleted`; queues:
    /// `moved`.
    pub kind: String,
    pub run_id: Option<Uuid>,
    pub task_name: Option<String>,
    pub previous: Option<RunStatus>,
    pub status: Option<RunStatus>,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub generation: Option<i64>,
    /// Queue events: the concurrency key, how many of its runs left the queue, how many wait.
    pub queue_key: Option<String>,
    pub left_queue: Option<i32>,
    pub waiting: Option<i64>,
}

/// Events with an id greater than `after` and at most `up_to`, oldest first, only those of
/// `task` when given.
pub async fn after(
    db: impl PgExecutor<'_>,
    after: i64,
    up_to: i64,
    task: Option<&str>,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM (
            SELECT id, at, 'run' AS subject, kind, run_id, task_name, previous, status, reason,
                   message, NULL::bigint AS generation, NULL::text AS queue_key,
                   NULL::integer AS left_queue, NULL::bigint AS waiting
            FROM run_events WHERE id > $1 AND id <= $2 AND ($3::text IS NULL OR task_name = $3)
            UNION ALL
            SELECT id, at, 'task', kind, NULL, task_name, NULL, NULL, NULL, NULL, generation,
                   NULL, NULL, NULL
            FROM task_events WHERE id > $1 AND id <= $2 AND ($3::text IS NULL OR task_name = $3)
            UNION ALL
            SELECT id, at, 'queue', kind, NULL, task_name, NULL, NULL, reason, NULL, NULL,
                   queue_key, left_queue, waiting
            FROM queue_events WHERE id > $1 AND id <= $2 AND ($3::text IS NULL OR task_name = $3)
         ) e ORDER BY id LIMIT $4",
    )
    .bind(after)
    .bind(up_to)
    .bind(task)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The id of the newest event (0 when there is none).
pub async fn last_id(db: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT greatest((SELECT coalesce(max(id), 0) FROM run_events),
                         (SELECT coalesce(max(id), 0) FROM task_events),
                         (SELECT coalesce(max(id), 0) FROM queue_events))",
    )
    .fetch_one(db)
    .await
}

/// Runs counted by task (`None` for ad-hoc runs) and status, for the `vfi_runs` gauge.
pub async fn run_counts(
    db: impl PgExecutor<'_>,
) -> Result<Vec<(Option<String>, RunStatus, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT task_name, status, count(*) FROM runs GROUP BY 1, 2 ORDER BY 1, 2")
        .fetch_all(db)
        .await
}
