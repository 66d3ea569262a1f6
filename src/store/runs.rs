//! SQL for runs. [`transition`] is the only code that changes a run's status, and it only makes
//! the moves [`RunStatus::can_become`] allows, guarded by the status it expects to find.

use crate::domain::{JobRef, LaunchInfo, PodCounts, Run, RunStatus, RunTemplate, Trigger};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};
use std::collections::BTreeMap;
use uuid::Uuid;

const COLUMNS: &str = "id, task_name, number, status, status_reason, status_message, trigger, \
     rerun_of, template, labels, created_at, updated_at, started_at, finished_at, \
     job_namespace, job_name, job_uid, launch_attempts, launch_error, launch_not_before, \
     pods_active, pods_ready, pods_succeeded, pods_failed, scheduled_time";

#[derive(sqlx::FromRow)]
struct RunRow {
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

/// A run about to be recorded.
pub struct NewRun<'a> {
    pub task_name: Option<&'a str>,
    pub template: &'a RunTemplate,
    pub trigger: Trigger,
    pub rerun_of: Option<Uuid>,
    /// The scheduled time, for runs the schedule (or a backfill) started.
    pub scheduled_time: Option<DateTime<Utc>>,
    /// The API token that asked for the run (counted by the per-token cap on active runs).
    pub token_id: Option<Uuid>,
}

/// Records a queued run with the next number of its task (or of the ad-hoc sequence).
/// Takes a connection because numbering and insert must share a transaction.
pub async fn insert(conn: &mut PgConnection, new: NewRun<'_>) -> Result<Run, sqlx::Error> {
    let number: i64 = sqlx::query_scalar(
        "INSERT INTO run_counters (scope, last_number) VALUES ($1, 1)
         ON CONFLICT (scope) DO UPDATE SET last_number = run_counters.last_number + 1
         RETURNING last_number",
    )
    .bind(new.task_name.unwrap_or(""))
    .fetch_one(&mut *conn)
    .await?;
    let row: RunRow = sqlx::query_as(&format!(
        "INSERT INTO runs (id, task_name, number, status, trigger, rerun_of, template, labels,
            scheduled_time, token_id)
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.task_name)
    .bind(number)
    .bind(new.trigger)
    .bind(new.rerun_of)
    .bind(Json(new.template))
    .bind(Json(&new.template.labels))
    .bind(new.scheduled_time)
    .bind(new.token_id)
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

/// Every status that may move to `to`, from the state machine's one table.
fn predecessors(to: RunStatus) -> Vec<&'static str> {
    RunStatus::ALL
        .into_iter()
        .filter(|from| from.can_become(to))
        .map(RunStatus::as_str)
        .collect()
}

/// Claims up to `limit` runs for launching: queued runs whose retry time has come, and
/// `creating` runs whose launcher's lease lapsed (it crashed mid-launch). Several launchers can
/// claim at once; `SKIP LOCKED` hands each run to one.
pub async fn claim_launchable(
    db: impl PgExecutor<'_>,
    owner: &str,
    lease: std::time::Duration,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    let rows: Vec<RunRow> = sqlx::query_as(&format!(
        "UPDATE runs SET status = 'creating', lease_owner = $1,
            lease_until = now() + make_interval(secs => $2), launch_attempts = launch_attempts + 1,
            updated_at = now()
         WHERE id IN (
            SELECT id FROM runs
            WHERE (status = 'queued' AND (launch_not_before IS NULL OR launch_not_before <= now()))
               OR (status = 'creating' AND lease_until < now())
            ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    ))
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Run::from).collect())
}

/// Records that the run's Job exists. A run still `creating` becomes `pending`; one that the
/// tracker already moved on (or that was cancelled meanwhile) keeps its status.
pub async fn mark_created(
    db: impl PgExecutor<'_>,
    id: Uuid,
    job: &JobRef,
) -> Result<Option<Run>, sqlx::Error> {
    let row: Option<RunRow> = sqlx::query_as(&format!(
        "UPDATE runs SET
            status = CASE WHEN status = 'creating' THEN 'pending' ELSE status END,
            job_namespace = $2, job_name = $3, job_uid = coalesce($4, job_uid),
            lease_owner = NULL, lease_until = NULL, launch_error = NULL, launch_not_before = NULL,
            updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&job.namespace)
    .bind(&job.name)
    .bind(&job.uid)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Run::from))
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
    let updated = sqlx::query(
        "UPDATE runs SET status = 'queued', launch_error = $3, launch_not_before = $4,
            lease_owner = NULL, lease_until = NULL, updated_at = now()
         WHERE id = $1 AND status = 'creating' AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(error)
    .bind(not_before)
    .execute(db)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// A status change that an observation caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub previous: RunStatus,
    pub current: RunStatus,
    /// The run's task and times after the change (for metrics), when there was a change.
    pub changed: Option<RunTimes>,
    /// The run had a Job recorded before this observation (a run that failed before its Job
    /// was created has none).
    pub job_recorded: bool,
}

/// A run's task and times, as a status change left them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RunTimes {
    pub task_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct ObservedRow {
    previous: RunStatus,
    current: RunStatus,
    task_name: Option<String>,
    created_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    #[sqlx(default)]
    job_recorded: bool,
}

impl From<ObservedRow> for Observed {
    fn from(row: ObservedRow) -> Observed {
        Observed {
            previous: row.previous,
            current: row.current,
            job_recorded: row.job_recorded,
            changed: row
                .created_at
                .filter(|_| row.previous != row.current)
                .map(|created_at| RunTimes {
                    task_name: row.task_name,
                    created_at,
                    started_at: row.started_at,
                    finished_at: row.finished_at,
                }),
        }
    }
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
    let previous = step_through_pending(&mut tx, id, seen.status).await?;
    let (namespace, name, uid) = match seen.job {
        Some(job) => (Some(&job.namespace), Some(&job.name), job.uid.as_ref()),
        None => (None, None, None),
    };
    let row: Option<ObservedRow> = sqlx::query_as(
        "WITH current AS (SELECT id, status, job_name FROM runs WHERE id = $1 FOR UPDATE),
         updated AS (
            UPDATE runs r SET
                status = CASE WHEN r.status = ANY($2) THEN $3 ELSE r.status END,
                -- entering pending keeps a reason noted while creating
                status_reason = CASE WHEN r.status = ANY($2)
                    THEN CASE WHEN $3 = 'pending' THEN coalesce($4, r.status_reason) ELSE $4 END
                    ELSE r.status_reason END,
                status_message = CASE WHEN r.status = ANY($2)
                    THEN CASE WHEN $3 = 'pending' THEN coalesce($5, r.status_message) ELSE $5 END
                    ELSE r.status_message END,
                started_at = coalesce(r.started_at, $6,
                    CASE WHEN r.status = ANY($2) AND $3 = 'running' THEN now() END),
                finished_at = CASE WHEN r.status = ANY($2) AND $7 THEN coalesce($8, now())
                                   ELSE r.finished_at END,
                lease_owner = CASE WHEN r.status = ANY($2) THEN NULL ELSE r.lease_owner END,
                lease_until = CASE WHEN r.status = ANY($2) THEN NULL ELSE r.lease_until END,
                pods_active = $9, pods_ready = $10, pods_succeeded = $11, pods_failed = $12,
                job_namespace = coalesce(r.job_namespace, $13),
                job_name = coalesce(r.job_name, $14),
                job_uid = coalesce(r.job_uid, $15),
                updated_at = now()
            FROM current
            WHERE r.id = current.id
              AND r.status NOT IN ('succeeded', 'failed', 'cancelled', 'lost')
              -- No write unless something changes (a re-list repeats what is stored).
              AND (r.status = ANY($2)
                   OR (r.pods_active, r.pods_ready, r.pods_succeeded, r.pods_failed)
                      IS DISTINCT FROM ($9, $10, $11, $12)
                   OR (r.started_at IS NULL AND $6 IS NOT NULL)
                   OR (r.job_name IS NULL AND $14 IS NOT NULL)
                   OR (r.job_uid IS NULL AND $15 IS NOT NULL))
            RETURNING r.status, r.task_name, r.created_at, r.started_at, r.finished_at)
         SELECT current.status AS previous, coalesce(u.status, current.status) AS current,
                u.task_name, u.created_at, u.started_at, u.finished_at,
                current.job_name IS NOT NULL AS job_recorded
         FROM current LEFT JOIN updated u ON true",
    )
    .bind(id)
    .bind(predecessors(seen.status))
    .bind(seen.status)
    .bind(seen.reason)
    .bind(seen.message)
    .bind(seen.started_at)
    .bind(seen.status.is_final())
    .bind(seen.finished_at)
    .bind(seen.counts.active)
    .bind(seen.counts.ready)
    .bind(seen.counts.succeeded)
    .bind(seen.counts.failed)
    .bind(namespace)
    .bind(name)
    .bind(uid)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.map(|row| stepped(previous, row)))
}

/// A run seen in the cluster has a Job. A `creating` run that an event moves further first
/// passes `pending`, so every history shows the Job's creation whichever event arrives first
/// (a pod can be seen running before the launcher has recorded the Job it created).
async fn step_through_pending(
    conn: &mut PgConnection,
    id: Uuid,
    to: RunStatus,
) -> Result<Option<RunStatus>, sqlx::Error> {
    if matches!(
        to,
        RunStatus::Queued | RunStatus::Creating | RunStatus::Pending
    ) {
        return Ok(None);
    }
    let stepped = sqlx::query(
        "UPDATE runs SET status = 'pending', updated_at = now(), lease_owner = NULL,
             lease_until = NULL
         WHERE id = $1 AND status = 'creating'",
    )
    .bind(id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok((stepped == 1).then_some(RunStatus::Creating))
}

/// The change an update made, counting a step through `pending` as part of it.
fn stepped(previous: Option<RunStatus>, row: ObservedRow) -> Observed {
    let mut observed = Observed::from(row);
    if let Some(previous) = previous {
        observed.previous = previous;
    }
    observed
}

/// Moves a run forward to `to` if the state machine allows it from where the run is now; a run
/// already past it is left alone. Returns the change, if any.
pub async fn advance(
    db: &sqlx::PgPool,
    id: Uuid,
    to: RunStatus,
) -> Result<Option<Observed>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let previous = step_through_pending(&mut tx, id, to).await?;
    let row: Option<ObservedRow> = sqlx::query_as(
        "WITH current AS (SELECT id, status FROM runs WHERE id = $1 FOR UPDATE)
         UPDATE runs r SET status = $3, updated_at = now(),
             -- why it waited no longer holds once it moves on
             status_reason = CASE WHEN $4 THEN r.status_reason END,
             status_message = CASE WHEN $4 THEN r.status_message END,
             started_at = CASE WHEN $3 = 'running' THEN coalesce(r.started_at, now()) ELSE r.started_at END,
             finished_at = CASE WHEN $4 THEN now() ELSE r.finished_at END,
             lease_owner = NULL, lease_until = NULL
         FROM current WHERE r.id = current.id AND r.status = ANY($2)
         RETURNING current.status AS previous, r.status AS current, r.task_name, r.created_at,
             r.started_at, r.finished_at",
    )
    .bind(id)
    .bind(predecessors(to))
    .bind(to)
    .bind(to.is_final())
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.map(|row| stepped(previous, row)))
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
    // A concurrent status change makes the guarded update miss; look again (bounded: statuses
    // only move forward, so after a few tries the run is final).
    for _ in 0..10 {
        let Some(run) = get(db, id).await? else {
            return Ok(None);
        };
        if run.status.is_final() {
            return Ok(Some(Err(run.status)));
        }
        match transition(db, id, run.status, RunStatus::Cancelled, detail.clone()).await {
            Ok(run) => return Ok(Some(Ok(run))),
            Err(TransitionOutcome::Database(e)) => return Err(e),
            Err(TransitionOutcome::Refused(_)) => continue,
        }
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
    if !from.can_become(to) {
        return Err(TransitionOutcome::Refused(TransitionError::NotAllowed {
            from,
            to,
        }));
    }
    let row: Option<RunRow> = sqlx::query_as(&format!(
        "UPDATE runs SET status = $3, status_reason = $4, status_message = $5, updated_at = now(),
            lease_owner = NULL, lease_until = NULL,
            started_at = CASE WHEN $3 = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
            finished_at = CASE WHEN $6 THEN now() ELSE finished_at END
         WHERE id = $1 AND status = $2 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(detail.reason)
    .bind(detail.message)
    .bind(to.is_final())
    .fetch_optional(db)
    .await
    .map_err(TransitionOutcome::Database)?;
    row.map(Run::from)
        .ok_or(TransitionOutcome::Refused(TransitionError::Stale))
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

/// How many runs of `task` wait in `queued` (for the per-task cap). Call it after inserting, in
/// the same transaction: the insert holds the task's counter row, so concurrent submitters count
/// one after the other.
pub async fn queued_count(db: impl PgExecutor<'_>, task: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM runs WHERE task_name = $1 AND status = 'queued'")
        .bind(task)
        .fetch_one(db)
        .await
}

/// How many runs `token` started that have not finished yet.
pub async fn active_count_of_token(
    db: impl PgExecutor<'_>,
    token: Uuid,
) -> Result<i64, sqlx::Error> {
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
/// failed runs, whose Jobs the caller deletes. Guarded like [`transition`]: only `pending` runs.
pub async fn fail_overdue_pending(
    db: impl PgExecutor<'_>,
    limit: std::time::Duration,
) -> Result<Vec<Run>, sqlx::Error> {
    let rows: Vec<RunRow> = sqlx::query_as(&format!(
        "UPDATE runs r SET status = 'failed',
            status_reason = coalesce(r.status_reason, 'PendingTimeout'),
            status_message = 'the run did not start within ' || $1::bigint || ' s'
                || coalesce(': ' || r.status_message, ''),
            finished_at = now(), updated_at = now(), lease_owner = NULL, lease_until = NULL
         WHERE r.status = 'pending'
           AND coalesce((SELECT max(e.at) FROM run_events e
                         WHERE e.run_id = r.id AND e.kind = 'status' AND e.status = 'pending'),
                        r.updated_at) < now() - make_interval(secs => $1::bigint)
         RETURNING {}",
        COLUMNS
            .split(", ")
            .map(|c| format!("r.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .bind(limit.as_secs().max(1) as i64)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Run::from).collect())
}
