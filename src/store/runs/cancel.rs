//! Cancellation: the run's move to `cancelled`, and the queue of Jobs left to delete.

use super::reads::get;
use super::transitions::StatusDetail;
use crate::domain::{JobRef, Run, RunStatus};
use crate::store::queue;
use crate::store::status::{self, Change, Text, Which};
use sqlx::PgExecutor;
use uuid::Uuid;

/// Cancels a run wherever it is in its life; its Job, if any, is deleted by the tracker.
/// Returns the cancelled run, or the final status it already had.
pub async fn cancel(
    db: &sqlx::PgPool,
    id: Uuid,
) -> Result<Option<Result<Run, RunStatus>>, sqlx::Error> {
    let detail = StatusDetail {
        reason: Some("Cancelled"),
        message: Some("cancelled through the API"),
    };
    cancel_with(db, id, detail).await
}

/// [`cancel`], recording why (e.g. a schedule's `Replace` policy).
pub async fn cancel_with(
    db: &sqlx::PgPool,
    id: Uuid,
    detail: StatusDetail<'_>,
) -> Result<Option<Result<Run, RunStatus>>, sqlx::Error> {
    // From every live status at once: no race with a concurrent move to retry.
    let from = RunStatus::Cancelled.predecessors();
    let change = Change {
        reason: Text::Set(detail.reason),
        message: Text::Set(detail.message),
        ..Change::to(RunStatus::Cancelled, &from)
    };
    let mut tx = db.begin().await?;
    // A run cancelled while its launcher's create may be in flight keeps the launcher's lease
    // (the status writer keeps it), so it keeps its slot until the launcher records the Job
    // that came for the canceller to delete (`late_job`) or that none came, or the lease lapses.
    if let Some(moved) = status::write(&mut *tx, Which::Run(id), change).await?.pop() {
        if moved.previous == RunStatus::Queued && moved.run.queue_key.is_some() {
            // The runs behind it on its key move up.
            queue::note_left(&mut *tx, &[id], queue::Left::Cancelled).await?;
        }
        tx.commit().await?;
        return Ok(Some(Ok(moved.run)));
    }
    drop(tx);
    Ok(get(db, id).await?.map(|run| Err(run.status)))
}

/// The NOTIFY channel that says "a run was cancelled" (sent by the database's trigger).
pub const CANCELLED_CHANNEL: &str = "vfi_run_cancelled";

/// Cancelled runs whose Job still has to be deleted.
pub async fn jobs_to_delete(
    db: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<(Uuid, JobRef)>, sqlx::Error> {
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT id, job_namespace, job_name FROM runs
         WHERE status = 'cancelled' AND job_name IS NOT NULL AND NOT job_delete_requested
         ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, namespace, name)| {
            (
                id,
                JobRef {
                    namespace,
                    name,
                    uid: None,
                },
            )
        })
        .collect())
}

/// Records that a cancelled run's Job was deleted.
pub async fn job_deleted(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE runs SET job_delete_requested = true WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(())
}

/// The launcher's create for a run cancelled meanwhile has returned: with the Job it made
/// (`Some`), the Job is recorded on the run so that the canceller deletes it and the run holds
/// its slot until then; without one, the run gives its slot back. Either way the launcher's
/// lease ends, and the launchers are woken for the slot. Returns whether the run was such a
/// run (cancelled, no Job recorded yet).
pub async fn late_job(
    db: impl PgExecutor<'_>,
    id: Uuid,
    job: Option<&JobRef>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "WITH u AS (
            UPDATE runs SET job_namespace = $2, job_name = $3, job_uid = $4,
                lease_owner = NULL, lease_until = NULL, updated_at = now()
            WHERE id = $1 AND status = 'cancelled' AND job_name IS NULL RETURNING id)
         SELECT pg_notify(c, '') FROM u, unnest(ARRAY['vfi_run_cancelled', 'vfi_run_queued']) c",
    )
    .bind(id)
    .bind(job.map(|j| j.namespace.clone()))
    .bind(job.map(|j| j.name.clone()))
    .bind(job.and_then(|j| j.uid.clone()))
    .execute(db)
    .await?;
    Ok(updated.rows_affected() > 0)
}
