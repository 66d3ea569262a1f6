//! SQL for runs. Every status change here goes through [`status::write`], the one guarded writer:
//! it only makes the moves [`RunStatus::can_become`] allows, from the statuses it expects to find.

use super::status::{self, Also, Change, Moved, Text, Which, WriteError};
use crate::domain::{
    CapReached, Caps, JobRef, LaunchInfo, PodCounts, Run, RunStatus, RunTemplate, Submission,
    Trigger,
};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgExecutor, Postgres, QueryBuilder};
use std::collections::BTreeMap;
use uuid::Uuid;

pub(super) const COLUMNS: &str =
    "id, task_name, number, status, status_reason, status_message, trigger, \
     rerun_of, template, labels, created_at, updated_at, started_at, finished_at, \
     job_namespace, job_name, job_uid, launch_attempts, launch_error, launch_not_before, \
     pods_active, pods_ready, pods_succeeded, pods_failed, scheduled_time";

#[derive(sqlx::FromRow)]
pub(super) struct RunRow {
    id: Uuid,
    task_name: Option<String>,
    number: i64,
    status: RunStatus,
    status_reason: Option<String>,
    status_message: Option<String>,
    trigger: Trigger,
    rerun_of: Option<Uuid>,
    template: Json<RunTemplate>,
    labels: Json<BTreeMap<String, String>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    job_namespace: Option<String>,
    job_name: Option<String>,
    job_uid: Option<String>,
    launch_attempts: i32,
    launch_error: Option<String>,
    launch_not_before: Option<DateTime<Utc>>,
    pods_active: i32,
    pods_ready: i32,
    pods_succeeded: i32,
    pods_failed: i32,
    scheduled_time: Option<DateTime<Utc>>,
}

impl From<RunRow> for Run {
    fn from(row: RunRow) -> Run {
        Run {
            id: row.id,
            number: row.number,
            task: row.task_name,
            status: row.status,
            status_reason: row.status_reason,
            status_message: row.status_message,
            trigger: row.trigger,
            rerun_of: row.rerun_of,
            template: row.template.0,
            labels: row.labels.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            launch: LaunchInfo {
                attempts: row.launch_attempts,
                last_error: row.launch_error,
                next_attempt_at: row
                    .launch_not_before
                    .filter(|_| row.status == RunStatus::Queued),
            },
            job: match (row.job_namespace, row.job_name) {
                (Some(namespace), Some(name)) => Some(JobRef {
                    namespace,
                    name,
                    uid: row.job_uid,
                }),
                _ => None,
            },
            pods: PodCounts {
                active: row.pods_active,
                ready: row.pods_ready,
                succeeded: row.pods_succeeded,
                failed: row.pods_failed,
            },
            scheduled_time: row.scheduled_time,
        }
    }
}

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
        let own = super::tokens::lock_for_submission(&mut *conn, token).await?;
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

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Run>, sqlx::Error> {
    let row: Option<RunRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM runs WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(Run::from))
}

/// Which runs to list.
#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub task: Option<String>,
    pub statuses: Vec<RunStatus>,
    /// Every pair must be among the run's labels.
    pub labels: BTreeMap<String, String>,
}

/// Runs newest first, strictly older than `before` when given (keyset pagination on the
/// time-ordered id, so every page is an index range scan however deep it is).
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &RunFilter,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM runs WHERE true"));
    if let Some(task) = &filter.task {
        query.push(" AND task_name = ").push_bind(task.clone());
    }
    if !filter.statuses.is_empty() {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        query
            .push(" AND status = ANY(")
            .push_bind(statuses)
            .push(")");
    }
    if !filter.labels.is_empty() {
        query
            .push(" AND labels @> ")
            .push_bind(Json(filter.labels.clone()));
    }
    if let Some(before) = before {
        query.push(" AND id < ").push_bind(before);
    }
    query.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    let rows: Vec<RunRow> = query.build_query_as().fetch_all(db).await?;
    Ok(rows.into_iter().map(Run::from).collect())
}

/// Why a transition did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum TransitionError {
    /// The state machine forbids this move.
    NotAllowed { from: RunStatus, to: RunStatus },
    /// The run was not in the expected status (someone else moved it first), or is gone.
    Stale,
}

/// The details recorded with a status change.
#[derive(Debug, Default, Clone)]
pub struct StatusDetail<'a> {
    pub reason: Option<&'a str>,
    pub message: Option<&'a str>,
}

/// Claims up to `limit` runs for launching: `creating` runs whose launcher's lease lapsed (it
/// crashed mid-launch), then queued runs whose retry time has come (`queued` → `creating`).
/// Several launchers can claim at once; `SKIP LOCKED` hands each run to one.
pub async fn claim_launchable(
    db: &sqlx::PgPool,
    owner: &str,
    lease: std::time::Duration,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
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
        let change = Change {
            also: Also::Claim { owner, lease },
            ..Change::to(RunStatus::Creating, &[RunStatus::Queued])
        };
        let moved = status::write(db, Which::Due { limit: left }, change).await?;
        claimed.extend(moved.into_iter().map(|moved| moved.run));
    }
    Ok(claimed)
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

/// A status change that an observation caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub previous: RunStatus,
    pub current: RunStatus,
    /// The run had a Job recorded before this observation (a run that failed before its Job
    /// was created has none).
    pub job_recorded: bool,
}

/// What the cluster says about a run: the status it implies and the pod counts.
pub struct Observation<'a> {
    pub status: RunStatus,
    pub reason: Option<&'a str>,
    pub message: Option<&'a str>,
    pub counts: PodCounts,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub job: Option<&'a JobRef>,
}

/// Applies an observation: the status moves forward only where the state machine allows (a stale
/// or replayed event never moves a run back), counts follow the cluster, and a final run is
/// never touched. Returns the run's status before and after, or `None` if there is no such run.
pub async fn observe(
    db: &sqlx::PgPool,
    id: Uuid,
    seen: &Observation<'_>,
) -> Result<Option<Observed>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let Some((locked, job_recorded)) = lock(&mut tx, id).await? else {
        return Ok(None);
    };
    let stepped = step_through_pending(&mut tx, id, seen.status).await?;
    // Entering pending keeps a reason noted while creating.
    let text = |value| match seen.status {
        RunStatus::Pending => Text::Prefer(value),
        _ => Text::Set(value),
    };
    let from = seen.status.predecessors();
    let change = Change {
        to: seen.status,
        from: &from,
        reason: text(seen.reason),
        message: text(seen.message),
        started_at: seen.started_at,
        finished_at: seen.finished_at,
        also: Also::Observed {
            counts: seen.counts,
            job: seen.job,
        },
    };
    let moved = status::write(&mut *tx, Which::Run(id), change).await?;
    if moved.is_empty() {
        // No status change: counts and Job follow the cluster (no write unless something
        // changes; a re-list repeats what is stored); a final run is never touched.
        let (namespace, name, uid) = match seen.job {
            Some(job) => (Some(&job.namespace), Some(&job.name), job.uid.as_ref()),
            None => (None, None, None),
        };
        sqlx::query(
            "UPDATE runs r SET
                pods_active = $2, pods_ready = $3, pods_succeeded = $4, pods_failed = $5,
                started_at = coalesce(r.started_at, $6),
                job_namespace = coalesce(r.job_namespace, $7),
                job_name = coalesce(r.job_name, $8),
                job_uid = coalesce(r.job_uid, $9),
                updated_at = now()
             WHERE r.id = $1 AND r.status NOT IN ('succeeded', 'failed', 'cancelled', 'lost')
               AND ((r.pods_active, r.pods_ready, r.pods_succeeded, r.pods_failed)
                      IS DISTINCT FROM ($2, $3, $4, $5)
                   OR (r.started_at IS NULL AND $6 IS NOT NULL)
                   OR (r.job_name IS NULL AND $8 IS NOT NULL)
                   OR (r.job_uid IS NULL AND $9 IS NOT NULL))",
        )
        .bind(id)
        .bind(seen.counts.active)
        .bind(seen.counts.ready)
        .bind(seen.counts.succeeded)
        .bind(seen.counts.failed)
        .bind(seen.started_at)
        .bind(namespace)
        .bind(name)
        .bind(uid)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Some(observed(locked, stepped, &moved, job_recorded)))
}

/// Locks the run for a multi-statement change: its status and whether it has a Job recorded.
async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<(RunStatus, bool)>, sqlx::Error> {
    sqlx::query_as("SELECT status, job_name IS NOT NULL FROM runs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// A run seen in the cluster has a Job. A `creating` run that an event moves further first
/// passes `pending`, so every history shows the Job's creation whichever event arrives first
/// (a pod can be seen running before the launcher has recorded the Job it created).
async fn step_through_pending(
    conn: &mut PgConnection,
    id: Uuid,
    to: RunStatus,
) -> Result<bool, sqlx::Error> {
    if matches!(
        to,
        RunStatus::Queued | RunStatus::Creating | RunStatus::Pending
    ) {
        return Ok(false);
    }
    let change = Change::to(RunStatus::Pending, &[RunStatus::Creating]);
    Ok(!status::write(conn, Which::Run(id), change)
        .await?
        .is_empty())
}

/// The change a multi-statement update made, counting a step through `pending` as part of it.
fn observed(locked: RunStatus, stepped: bool, moved: &[Moved], job_recorded: bool) -> Observed {
    let current = match moved.first() {
        Some(moved) => moved.run.status,
        None if stepped => RunStatus::Pending,
        None => locked,
    };
    Observed {
        previous: locked,
        current,
        job_recorded,
    }
}

/// Moves a run forward to `to` if the state machine allows it from where the run is now; a run
/// already past it is left alone. Returns the change, if any.
pub async fn advance(
    db: &sqlx::PgPool,
    id: Uuid,
    to: RunStatus,
) -> Result<Option<Observed>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let Some((locked, job_recorded)) = lock(&mut tx, id).await? else {
        return Ok(None);
    };
    let stepped = step_through_pending(&mut tx, id, to).await?;
    // Why it waited no longer holds once it moves on; a final status keeps it.
    let text = if to.is_final() {
        Text::Keep
    } else {
        Text::Set(None)
    };
    let from = to.predecessors();
    let change = Change {
        reason: text,
        message: text,
        ..Change::to(to, &from)
    };
    let moved = status::write(&mut *tx, Which::Run(id), change).await?;
    tx.commit().await?;
    Ok((stepped || !moved.is_empty()).then(|| observed(locked, stepped, &moved, job_recorded)))
}

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
    if let Some(moved) = status::write(db, Which::Run(id), change).await?.pop() {
        return Ok(Some(Ok(moved.run)));
    }
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

/// Unfinished runs whose Job was created, in `namespace`: what a re-list must account for.
pub async fn live_with_jobs(
    db: impl PgExecutor<'_>,
    namespace: &str,
) -> Result<Vec<Run>, sqlx::Error> {
    let rows: Vec<RunRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM runs
         WHERE status IN ('pending', 'running') AND job_namespace = $1"
    ))
    .bind(namespace)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Run::from).collect())
}

/// Moves a run from `from` to `to`, only if it is still in `from`. Sets `started_at` on entering
/// `running` and `finished_at` on entering a final status.
pub async fn transition(
    db: impl PgExecutor<'_>,
    id: Uuid,
    from: RunStatus,
    to: RunStatus,
    detail: StatusDetail<'_>,
) -> Result<Run, TransitionOutcome> {
    let from = [from];
    let change = Change {
        reason: Text::Set(detail.reason),
        message: Text::Set(detail.message),
        ..Change::to(to, &from)
    };
    match status::write(db, Which::Run(id), change).await {
        Ok(mut moved) => moved
            .pop()
            .map(|moved| moved.run)
            .ok_or(TransitionOutcome::Refused(TransitionError::Stale)),
        Err(WriteError::NotAllowed { from, to }) => {
            Err(TransitionOutcome::Refused(TransitionError::NotAllowed {
                from,
                to,
            }))
        }
        Err(WriteError::Database(e)) => Err(TransitionOutcome::Database(e)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionOutcome {
    #[error("transition refused: {0:?}")]
    Refused(TransitionError),
    #[error(transparent)]
    Database(sqlx::Error),
}

/// One entry of a run's history.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunEvent {
    /// Increases with every event of every run.
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `created`, `status`, or `waiting` (why a pending run has not started: reason and message).
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<RunStatus>,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A run's history, oldest first.
pub async fn history(db: impl PgExecutor<'_>, id: Uuid) -> Result<Vec<RunEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, kind, previous, status, reason, message FROM run_events
         WHERE run_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

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

/// Why a pending run has not started (`ImagePullBackOff`, `Unschedulable`, `FailedCreate`, ...),
/// and how the cluster says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting<'a> {
    pub reason: &'a str,
    pub message: &'a str,
}

/// Records why a `pending` run waits, on the run and (when it changed) in its history. Not a
/// status change: a run in any other status is left alone, except `creating` (the pod can be
/// seen before the launcher has recorded its Job; the reason then carries into `pending`).
/// Returns whether anything changed.
pub async fn note_waiting(
    db: impl PgExecutor<'_>,
    id: Uuid,
    waiting: &Waiting<'_>,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE runs SET status_reason = $2, status_message = $3, updated_at = now()
         WHERE id = $1 AND status IN ('creating', 'pending')
           AND (status_reason IS DISTINCT FROM $2 OR status_message IS DISTINCT FROM $3)",
    )
    .bind(id)
    .bind(waiting.reason)
    .bind(waiting.message)
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// [`note_waiting`] for the run whose Job is `namespace/name` (with `uid` when the run knows it):
/// what the cluster's Events name.
pub async fn note_waiting_for_job(
    db: impl PgExecutor<'_>,
    job: &JobRef,
    waiting: &Waiting<'_>,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE runs SET status_reason = $4, status_message = $5, updated_at = now()
         WHERE job_namespace = $1 AND job_name = $2 AND (job_uid IS NULL OR $3::text IS NULL OR job_uid = $3)
           AND status IN ('creating', 'pending')
           AND (status_reason IS DISTINCT FROM $4 OR status_message IS DISTINCT FROM $5)",
    )
    .bind(&job.namespace)
    .bind(&job.name)
    .bind(job.uid.as_deref())
    .bind(waiting.reason)
    .bind(waiting.message)
    .execute(db)
    .await?
    .rows_affected();
    Ok(changed > 0)
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
