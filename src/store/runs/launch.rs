//! The launch queue: claiming queued runs, recording their Jobs, putting them back for a later
//! try, and failing those that stay `pending` too long.

use super::reads::get;
use super::{RunRow, COLUMNS};
use crate::domain::{JobRef, Run, RunStatus};
use crate::store::status::{self, Also, Change, Text, Which};
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// Claims up to `limit` runs for launching: `creating` runs whose launcher's lease lapsed (it
/// crashed mid-launch), then queued runs whose retry time has come (`queued` → `creating`).
/// Several launchers can claim at once; `SKIP LOCKED` hands each run to one.
pub async fn claim_launchable(
    db: &sqlx::PgPool,
    owner: &str,
    lease: std::time::Duration,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    claim(db, owner, lease, limit, true).await
}

/// [`claim_launchable`], looking for lapsed leases only when `lapsed` is true: leases lapse
/// on a scale of seconds, so the launcher looks for them on its poll, not on every wake-up
/// for a new run (one statement per wake-up instead of two).
pub async fn claim(
    db: &sqlx::PgPool,
    owner: &str,
    lease: std::time::Duration,
    limit: i64,
    lapsed: bool,
) -> Result<Vec<Run>, sqlx::Error> {
    if !lapsed {
        return claim_queued(db, owner, lease, limit).await;
    }
    // Taking over a lapsed lease is no status change (the run stays `creating`).
    let lapsed: Vec<RunRow> = sqlx::query_as(&format!(
        "UPDATE runs SET lease_owner = $1,
            lease_until = now() + make_interval(secs => $2), launch_attempts = launch_attempts + 1,
            updated_at = now()
         WHERE id IN (
            SELECT id FROM runs WHERE status = 'creating' AND lease_until < now()
            ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
           AND status = 'creating'
         RETURNING {COLUMNS}"
    ))
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await?;
    let mut claimed: Vec<Run> = lapsed.into_iter().map(Run::from).collect();
    let left = limit - claimed.len() as i64;
    if left > 0 {
        claimed.extend(claim_queued(db, owner, lease, left).await?);
    }
    Ok(claimed)
}

/// Up to `limit` queued runs whose retry time has come, moved to `creating` for `owner`.
async fn claim_queued(
    db: &sqlx::PgPool,
    owner: &str,
    lease: std::time::Duration,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    let change = Change {
        also: Also::Claim { owner, lease },
        ..Change::to(RunStatus::Creating, &[RunStatus::Queued])
    };
    let moved = status::write(db, Which::Due { limit }, change).await?;
    Ok(moved.into_iter().map(|moved| moved.run).collect())
}

/// Records that the run's Job exists: a run still `creating` becomes `pending`. A run that the
/// tracker already moved on keeps its status (the tracker recorded the Job too); a final run
/// (e.g. cancelled meanwhile) is not touched at all. Returns the run as it is now.
pub async fn mark_created(
    db: &sqlx::PgPool,
    id: Uuid,
    job: &JobRef,
) -> Result<Option<Run>, sqlx::Error> {
    let change = Change {
        also: Also::Created(job),
        ..Change::to(RunStatus::Pending, &[RunStatus::Creating])
    };
    if let Some(moved) = status::write(db, Which::Run(id), change).await?.pop() {
        return Ok(Some(moved.run));
    }
    // Not a status change: a live run the tracker moved on keeps its status and learns its Job.
    let row: Option<RunRow> = sqlx::query_as(&format!(
        "UPDATE runs SET job_namespace = coalesce(job_namespace, $2),
            job_name = coalesce(job_name, $3), job_uid = coalesce(job_uid, $4),
            launch_error = NULL, launch_not_before = NULL, updated_at = now()
         WHERE id = $1 AND status IN ('pending', 'running') RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&job.namespace)
    .bind(&job.name)
    .bind(&job.uid)
    .fetch_optional(db)
    .await?;
    match row {
        Some(row) => Ok(Some(row.into())),
        None => get(db, id).await,
    }
}

/// Puts a run this launcher holds back in the queue after a transient failure, to be tried
/// again at `not_before`; the error stays visible on the run.
pub async fn retry_launch_later(
    db: impl PgExecutor<'_>,
    id: Uuid,
    owner: &str,
    error: &str,
    not_before: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let change = Change {
        also: Also::RetryLater { error, not_before },
        ..Change::to(RunStatus::Queued, &[RunStatus::Creating])
    };
    let moved = status::write(db, Which::Leased { id, owner }, change).await?;
    Ok(!moved.is_empty())
}

/// Fails every run that has been `pending` (its Job created, no pod running) for longer than
/// `limit`, keeping the reason it waited for (`PendingTimeout` when none was seen). Returns the
/// failed runs, whose Jobs the caller deletes.
pub async fn fail_overdue_pending(
    db: impl PgExecutor<'_>,
    limit: std::time::Duration,
) -> Result<Vec<Run>, sqlx::Error> {
    let message = format!("the run did not start within {} s", limit.as_secs().max(1));
    let change = Change {
        reason: Text::Fill("PendingTimeout"),
        message: Text::Prefix(&message),
        ..Change::to(RunStatus::Failed, &[RunStatus::Pending])
    };
    let moved = status::write(db, Which::StuckFor(limit), change).await?;
    Ok(moved.into_iter().map(|moved| moved.run).collect())
}
