//! Status changes the cluster or the launcher causes: observations, forward moves, guarded
//! transitions, and why a pending run waits.

use crate::domain::{JobRef, PodCounts, Run, RunStatus};
use crate::store::status::{self, Also, Change, Moved, Text, Which, WriteError};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

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

/// A status change that an observation caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub previous: RunStatus,
    pub current: RunStatus,
    /// The run had a Job recorded before this observation (a run that failed before its Job
    /// was created has none).
    pub job_recorded: bool,
    /// The run resubmitted because this observation lost the run (`retry.onLost`).
    pub retry: Option<Uuid>,
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
    observe_with(db, id, seen, None).await
}

/// [`observe`], and when the observation makes the run `lost`, its resubmission under
/// `retry.onLost` in the same transaction ([`super::resubmit_lost`], checked against
/// `policy`), so that each loss is retried at most once whoever records it.
pub async fn observe_with(
    db: &sqlx::PgPool,
    id: Uuid,
    seen: &Observation<'_>,
    policy: Option<&crate::domain::RunPolicy>,
) -> Result<Option<Observed>, sqlx::Error> {
    let mut tx = db.begin().await?;
    if policy.is_some() && seen.status == RunStatus::Lost {
        // A loss may resubmit the run under its concurrency key (`retry.onLost`), which takes
        // the key's lock: taken here, before the run's row, in the lock order of
        // `store::queue` (a `CancelInProgress` submission holds the key's lock while it
        // cancels the key's runs, so the other order deadlocks).
        let key: Option<Option<String>> =
            sqlx::query_scalar("SELECT queue_key FROM runs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(Some(key)) = key {
            crate::store::queue::lock_keys(&mut tx, &[key.as_str()]).await?;
        }
    }
    let Some((locked, job_recorded)) = lock(&mut tx, id).await? else {
        return Ok(None);
    };
    if locked.is_final() {
        // A final run is never touched (every write below is guarded so): a Job's events after
        // its run was recorded (the finalizer's release, the TTL) cost this lookup alone.
        tx.commit().await?;
        return Ok(Some(observed(locked, None, &[], job_recorded)));
    }
    // The run is locked: its status is `locked` until this transaction ends, so the steps and
    // the write that could not match it are not sent.
    let stepped =
        locked == RunStatus::Creating && step_through_pending(&mut tx, id, seen.status).await?;
    let ran = (locked == RunStatus::Pending || stepped)
        && step_through_running(&mut tx, id, seen).await?;
    let now = if ran {
        RunStatus::Running
    } else if stepped {
        RunStatus::Pending
    } else {
        locked
    };
    // Entering pending keeps a reason noted while creating (not Kueue's, once it admitted).
    let text = |value| match (locked, seen.status) {
        (RunStatus::Creating, RunStatus::Pending) => Text::Prefer(value),
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
    let moved = if from.contains(&now) {
        status::write(&mut *tx, Which::Run(id), change).await?
    } else {
        Vec::new()
    };
    if moved.is_empty() && seen.status == RunStatus::Admitting {
        // Still held by Kueue: the Workload's message may have changed (recorded as a
        // `waiting` entry of the history when it did).
        sqlx::query(
            "UPDATE runs SET status_reason = $2, status_message = $3, updated_at = now()
             WHERE id = $1 AND status = 'admitting'
               AND (status_reason IS DISTINCT FROM $2 OR status_message IS DISTINCT FROM $3)",
        )
        .bind(id)
        .bind(seen.reason)
        .bind(seen.message)
        .execute(&mut *tx)
        .await?;
    }
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
    let mut retry = None;
    if let (Some(policy), Some(lost)) = (
        policy,
        moved.iter().find(|m| m.run.status == RunStatus::Lost),
    ) {
        retry = super::resubmit_lost(&mut tx, &lost.run, policy)
            .await?
            .map(|run| run.id);
    }
    tx.commit().await?;
    let stepped_to = if ran {
        Some(RunStatus::Running)
    } else {
        stepped.then_some(RunStatus::Pending)
    };
    Ok(Some(Observed {
        retry,
        ..observed(locked, stepped_to, &moved, job_recorded)
    }))
}

/// Locks the run for a multi-statement change: its status and whether it has a Job recorded.
async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<(RunStatus, bool)>, sqlx::Error> {
    // `FOR NO KEY UPDATE`, as `status::write` locks: rows inserted for the run meanwhile (pods,
    // log captures) need not wait for this transaction.
    sqlx::query_as("SELECT status, job_name IS NOT NULL FROM runs WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// A run seen in the cluster has a Job. A `creating` run that an event moves further first
/// passes `pending`, so every history shows the Job's creation whichever event arrives first
/// (a pod can be seen running before the launcher has recorded the Job it created). A Job held
/// by Kueue goes straight to `admitting`, which shows the creation as well.
async fn step_through_pending(
    conn: &mut PgConnection,
    id: Uuid,
    to: RunStatus,
) -> Result<bool, sqlx::Error> {
    if matches!(
        to,
        RunStatus::Queued | RunStatus::Creating | RunStatus::Admitting | RunStatus::Pending
    ) {
        return Ok(false);
    }
    let change = Change::to(RunStatus::Pending, &[RunStatus::Creating]);
    Ok(!status::write(conn, Which::Run(id), change)
        .await?
        .is_empty())
}

/// A run that ends after one of its pods started first passes `running`, so every history
/// shows the start whichever event arrives first (a pod that runs for milliseconds may be seen
/// only finished: a watch delivers the latest state, not each one). A run whose pods never
/// started (an image that cannot be pulled) goes from `pending` to `failed` as before. The pods
/// are recorded before the Job's status that ends the run.
async fn step_through_running(
    conn: &mut PgConnection,
    id: Uuid,
    seen: &Observation<'_>,
) -> Result<bool, sqlx::Error> {
    if !matches!(seen.status, RunStatus::Succeeded | RunStatus::Failed) {
        return Ok(false);
    }
    let started: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM run_pods WHERE run_id = $1 AND started_at IS NOT NULL)",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    if !started {
        return Ok(false);
    }
    let change = Change {
        started_at: seen.started_at,
        ..Change::to(RunStatus::Running, &[RunStatus::Pending])
    };
    Ok(!status::write(conn, Which::Run(id), change)
        .await?
        .is_empty())
}

/// The change a multi-statement update made, counting a step through `pending` (or `running`)
/// as part of it.
fn observed(
    locked: RunStatus,
    stepped_to: Option<RunStatus>,
    moved: &[Moved],
    job_recorded: bool,
) -> Observed {
    let current = match (moved.first(), stepped_to) {
        (Some(moved), _) => moved.run.status,
        (None, Some(stepped)) => stepped,
        (None, None) => locked,
    };
    Observed {
        previous: locked,
        current,
        job_recorded,
        retry: None,
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
    let stepped = locked == RunStatus::Creating && step_through_pending(&mut tx, id, to).await?;
    let now = if stepped { RunStatus::Pending } else { locked };
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
    // Not sent when it could not match: the run is locked in `now` (already running, or final).
    let moved = if from.contains(&now) {
        status::write(&mut *tx, Which::Run(id), change).await?
    } else {
        Vec::new()
    };
    tx.commit().await?;
    Ok((stepped || !moved.is_empty()).then(|| {
        observed(
            locked,
            stepped.then_some(RunStatus::Pending),
            &moved,
            job_recorded,
        )
    }))
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
