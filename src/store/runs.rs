//! SQL for runs. [`transition`] is the only code that changes a run's status, and it only makes
//! the moves [`RunStatus::can_become`] allows, guarded by the status it expects to find.

use crate::domain::{Run, RunStatus, RunTemplate, Trigger};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};
use std::collections::BTreeMap;
use uuid::Uuid;

const COLUMNS: &str = "id, task_name, number, status, status_reason, status_message, trigger, \
     rerun_of, template, labels, created_at, updated_at, started_at, finished_at";

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
        }
    }
}

/// A run about to be recorded.
pub struct NewRun<'a> {
    pub task_name: Option<&'a str>,
    pub template: &'a RunTemplate,
    pub trigger: Trigger,
    pub rerun_of: Option<Uuid>,
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
        "INSERT INTO runs (id, task_name, number, status, trigger, rerun_of, template, labels)
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.task_name)
    .bind(number)
    .bind(new.trigger)
    .bind(new.rerun_of)
    .bind(Json(new.template))
    .bind(Json(&new.template.labels))
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.into())
}

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
