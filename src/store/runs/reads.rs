//! Reads: what the API and the loops look up, without changing anything.

use super::{RunRow, COLUMNS};
use crate::domain::{Run, RunStatus};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use std::collections::BTreeMap;
use uuid::Uuid;

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
///
/// With statuses, each status is its own newest-first scan, merged, and each is written as a
/// literal (they come from [`RunStatus`], a closed set) so that the planner weighs it with the
/// column's statistics: `status = ANY($1)` in a prepared statement's generic plan walks the
/// primary key and filters, which reads the whole table when the statuses asked for are rare
/// (issue 15: 725 ms for an empty page at 1,000,000 runs; 0.2 ms this way).
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &RunFilter,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Run>, sqlx::Error> {
    let mut statuses: Vec<&'static str> = filter.statuses.iter().map(|s| s.as_str()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    let mut query = QueryBuilder::<Postgres>::new("");
    if statuses.is_empty() {
        push_page(&mut query, filter, None, before, limit);
    } else {
        query.push(format!("SELECT {COLUMNS} FROM ("));
        for (i, status) in statuses.into_iter().enumerate() {
            if i > 0 {
                query.push(" UNION ALL ");
            }
            query.push("(");
            push_page(&mut query, filter, Some(status), before, limit);
            query.push(")");
        }
        query
            .push(") page ORDER BY id DESC LIMIT ")
            .push_bind(limit);
    }
    let rows: Vec<RunRow> = query.build_query_as().fetch_all(db).await?;
    Ok(rows.into_iter().map(Run::from).collect())
}

/// One page of runs matching `filter` (in `status`, when given), newest first.
fn push_page(
    query: &mut QueryBuilder<'_, Postgres>,
    filter: &RunFilter,
    status: Option<&'static str>,
    before: Option<Uuid>,
    limit: i64,
) {
    query.push(format!("SELECT {COLUMNS} FROM runs WHERE true"));
    if let Some(task) = &filter.task {
        query.push(" AND task_name = ").push_bind(task.clone());
    }
    if let Some(status) = status {
        query.push(format!(" AND status = '{status}'"));
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
}

/// Unfinished runs whose Job was created, in `namespace`: what a re-list must account for.
pub async fn live_with_jobs(
    db: impl PgExecutor<'_>,
    namespace: &str,
) -> Result<Vec<Run>, sqlx::Error> {
    let rows: Vec<RunRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM runs
         WHERE status IN ('admitting', 'pending', 'running') AND job_namespace = $1"
    ))
    .bind(namespace)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Run::from).collect())
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
