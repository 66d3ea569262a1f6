//! The launch queue: claiming queued runs, recording their Jobs, putting them back for a later
//! try, and failing those that stay `pending` too long.

use super::reads::get;
use super::{RunRow, COLUMNS};
use crate::domain::queue::Admission;
use crate::domain::{JobRef, Run, RunStatus};
use crate::store::queue;
use crate::store::status::{self, Also, Change, Text, Which};
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// Claims up to `limit` runs for launching, with no installation limits and the default aging
/// step: see [`claim_admitted`].
pub async fn claim_launchable(
    db: &sqlx::PgPool,
    owner: &str,
    lease: std::time::Duration,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    let admission = Admission {
        default_namespace: "default".into(),
        aging_secs: 60,
        ..Admission::default()
    };
    claim_admitted(db, owner, lease, limit, &admission, true).await
}

/// Claims up to `limit` runs for launching: `creating` runs whose launcher's lease lapsed (it
/// crashed mid-launch; they still hold their slot), then queued runs whose retry time has come
/// (`queued` → `creating`), by priority and submission. Runs without a concurrency key are
/// claimed with `SKIP LOCKED` when the installation has no limits (several launchers claim at
/// once, each run goes to one); runs with a key, and every run under installation limits, go
/// through the admission pass ([`queue::admissible`]) in one transaction with their claim, so
/// the count that let them through and their move to `creating` commit together.
///
/// Lapsed leases are looked for only when `lapsed` is true: leases lapse on a scale of seconds,
/// so the launcher looks for them on its poll, not on every wake-up for a new run (one
/// statement per wake-up instead of two).
pub async fn claim_admitted(
    db: &sqlx::PgPool,
    owner: &str,
    lease: std::time::Duration,
    limit: i64,
    admission: &Admission,
    lapsed: bool,
) -> Result<Vec<Run>, sqlx::Error> {
    let mut claimed = if lapsed {
        take_over_lapsed(db, owner, lease, limit).await?
    } else {
        Vec::new()
    };
    let claim = || Change {
        also: Also::Claim { owner, lease },
        ..Change::to(RunStatus::Creating, &[RunStatus::Queued])
    };
    let left = limit - claimed.len() as i64;
    if left > 0 && !admission.limited() {
        let which = Which::Due {
            limit: left,
            aging_secs: admission.aging_secs,
        };
        let moved = status::write(db, which, claim()).await?;
        record_admissions(&moved);
        claimed.extend(moved.into_iter().map(|moved| moved.run));
    }
    let left = limit - claimed.len() as i64;
    if left > 0 && (admission.limited() || keyed_waiting(db).await?) {
        let mut tx = db.begin().await?;
        let pass = queue::admissible(&mut tx, admission, left).await?;
        // Runs their key lets through but an installation limit holds: a changed reason is
        // announced (`run.queue`), once per change.
        queue::note_reasons(&mut *tx, &pass.held, admission).await?;
        if !pass.ids.is_empty() {
            let moved = status::write(&mut *tx, Which::Ids(&pass.ids), claim()).await?;
            let admitted: Vec<Uuid> = moved.iter().map(|m| m.run.id).collect();
            queue::note_left(&mut *tx, &admitted, queue::Left::Admitted).await?;
            tx.commit().await?;
            record_admissions(&moved);
            claimed.extend(moved.into_iter().map(|moved| moved.run));
        } else if !pass.held.is_empty() {
            tx.commit().await?;
        }
    }
    Ok(claimed)
}

/// `creating` runs whose launcher's lease lapsed (it crashed mid-launch), taken over by
/// `owner`. Taking over a lapsed lease is no status change (the run stays `creating`).
async fn take_over_lapsed(
    db: &sqlx::PgPool,
    owner: &str,
    lease: std::time::Duration,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
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
    Ok(lapsed.into_iter().map(Run::from).collect())
}

/// The admission latency of runs just claimed from `queued` (submission to admission).
fn record_admissions(moved: &[status::Moved]) {
    for moved in moved {
        let waited = (Utc::now() - moved.run.created_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!("vfi_queue_admission_seconds").record(waited.as_secs_f64());
    }
}

/// Whether any run with a concurrency key waits (so the admission pass has work).
async fn keyed_waiting(db: impl PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'queued' AND queue_key IS NOT NULL)",
    )
    .fetch_one(db)
    .await
}

/// Records that the run's Job exists: a run still `creating` becomes `pending`. A run that the
/// tracker already moved on keeps its status (the tracker recorded the Job too); a final run
/// (e.g. cancelled meanwhile) is not touched at all. Returns the run as it is now.
pub async fn mark_created(
    db: &sqlx::PgPool,
    id: Uuid,
    job: &JobRef,
) -> Result<Option<Run>, sqlx::Error> {
    mark_created_as(db, id, job, RunStatus::Pending).await
}

/// [`mark_created`] into `status`: `admitting` for a Job created suspended for Kueue, else
/// `pending`.
pub async fn mark_created_as(
    db: &sqlx::PgPool,
    id: Uuid,
    job: &JobRef,
    status: RunStatus,
) -> Result<Option<Run>, sqlx::Error> {
    let change = Change {
        also: Also::Created(job),
        ..Change::to(status, &[RunStatus::Creating])
    };
    if let Some(moved) = status::write(db, Which::Run(id), change).await?.pop() {
        return Ok(Some(moved.run));
    }
    // Not a status change: a live run the tracker moved on keeps its status and learns its Job.
    let row: Option<RunRow> = sqlx::query_as(&format!(
        "UPDATE runs SET job_namespace = coalesce(job_namespace, $2),
            job_name = coalesce(job_name, $3), job_uid = coalesce(job_uid, $4),
            launch_error = NULL, launch_not_before = NULL, updated_at = now()
         WHERE id = $1 AND status IN ('admitting', 'pending', 'running') RETURNING {COLUMNS}"
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
