//! SQL for tasks.

use crate::domain::report::{NotifySpec, NotifyView};
use crate::domain::{Task, TaskSpec};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgExecutor;

#[derive(sqlx::FromRow)]
struct TaskRow {
    name: String,
    spec: Json<TaskSpec>,
    generation: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct UpsertRow {
    #[sqlx(flatten)]
    task: TaskRow,
    created: bool,
}

impl From<TaskRow> for Task {
    fn from(row: TaskRow) -> Task {
        let TaskSpec {
            description,
            template,
            schedule,
            limits,
            notify,
            concurrency,
            priority,
            parameters,
        } = row.spec.0;
        Task {
            name: row.name,
            description,
            template,
            schedule,
            schedule_status: None,
            generation: row.generation,
            created_at: row.created_at,
            updated_at: row.updated_at,
            limits,
            notify: notify.iter().map(NotifyView::from).collect(),
            concurrency,
            priority,
            parameters,
        }
    }
}

/// Creates or replaces a task. Returns it and whether it was created. Replacing with an
/// identical spec changes nothing (not even `updatedAt`), like `kubectl apply` of the same file.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    name: &str,
    spec: &TaskSpec,
) -> Result<(Task, bool), sqlx::Error> {
    let row: UpsertRow = sqlx::query_as(
        "INSERT INTO tasks (name, spec) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET
            spec = EXCLUDED.spec,
            generation = tasks.generation + (tasks.spec IS DISTINCT FROM EXCLUDED.spec)::int,
            updated_at = CASE WHEN tasks.spec IS DISTINCT FROM EXCLUDED.spec
                              THEN now() ELSE tasks.updated_at END
         RETURNING name, spec, generation, created_at, updated_at, (xmax = 0) AS created",
    )
    .bind(name)
    .bind(Json(spec))
    .fetch_one(db)
    .await?;
    Ok((row.task.into(), row.created))
}

/// The task's `notify` entries as stored (URLs whole, secrets included): for a `PUT` that sends
/// back a redacted URL ([`crate::domain::report::keep_redacted_urls`]). Never returned.
pub async fn stored_notify(
    db: impl PgExecutor<'_>,
    name: &str,
) -> Result<Vec<NotifySpec>, sqlx::Error> {
    let stored: Option<Option<Json<Vec<NotifySpec>>>> =
        sqlx::query_scalar("SELECT spec -> 'notify' FROM tasks WHERE name = $1")
            .bind(name)
            .fetch_optional(db)
            .await?;
    Ok(stored.flatten().map(|n| n.0).unwrap_or_default())
}

pub async fn get(db: impl PgExecutor<'_>, name: &str) -> Result<Option<Task>, sqlx::Error> {
    let row: Option<TaskRow> = sqlx::query_as(
        "SELECT name, spec, generation, created_at, updated_at FROM tasks WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Task::from))
}

/// Tasks in name order, after `after` when given.
pub async fn list(
    db: impl PgExecutor<'_>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Task>, sqlx::Error> {
    let rows: Vec<TaskRow> = sqlx::query_as(
        "SELECT name, spec, generation, created_at, updated_at FROM tasks
         WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Task::from).collect())
}

/// Deletes a task. Its runs stay in the history.
pub async fn delete(db: impl PgExecutor<'_>, name: &str) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM tasks WHERE name = $1")
        .bind(name)
        .execute(db)
        .await?
        .rows_affected();
    Ok(deleted == 1)
}
