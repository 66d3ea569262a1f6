//! `/v1/tasks`: create or replace, read, list and delete task definitions.

use super::auth::{Authorized, ForAdmin, ForRead};
use super::extract::{ApiJson, ApiQuery};
use super::pagination;
use super::problem::Problem;
use crate::domain::{RunPolicy, Task, TaskName, TaskSpec};
use crate::error::{Error, Result};
use crate::store;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

pub(super) fn parse_name(name: String) -> Result<TaskName> {
    TaskName::parse(name).map_err(|message| Error::bad_request("name", message))
}

/// Create or replace a task (idempotent, like `kubectl apply`).
#[utoipa::path(
    put, path = "/v1/tasks/{name}", tag = "tasks",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "Task name: a DNS-1123 label of at most 50 characters")),
    request_body = TaskSpec,
    responses(
        (status = 200, description = "Replaced (or unchanged)", body = Task),
        (status = 201, description = "Created", body = Task),
        (status = 400, description = "Invalid name", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid definition", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_task(
    auth: Authorized<ForAdmin>,
    State(db): State<PgPool>,
    State(policy): State<Arc<RunPolicy>>,
    Path(name): Path<String>,
    ApiJson(spec): ApiJson<TaskSpec>,
) -> Result<(StatusCode, Json<Task>)> {
    let name = parse_name(name)?;
    auth.task(Some(name.as_str()))?;
    spec.validate()?;
    policy.check(&spec.template, "template")?;
    let (task, created) = store::tasks::upsert(&db, name.as_str(), &spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(task)))
}

/// Read a task.
#[utoipa::path(
    get, path = "/v1/tasks/{name}", tag = "tasks",
    security(("bearer" = ["read"])),
    params(("name" = String, Path, description = "Task name")),
    responses(
        (status = 200, body = Task),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_task(
    auth: Authorized<ForRead>,
    State(db): State<PgPool>,
    Path(name): Path<String>,
) -> Result<Json<Task>> {
    let name = parse_name(name)?;
    auth.task(Some(name.as_str()))?;
    store::tasks::get(&db, name.as_str())
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound {
            kind: "task",
            name: name.to_string(),
        })
}

/// Delete a task. Its runs stay in the history; run numbers are never reused.
#[utoipa::path(
    delete, path = "/v1/tasks/{name}", tag = "tasks",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "Task name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_task(
    auth: Authorized<ForAdmin>,
    State(db): State<PgPool>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    let name = parse_name(name)?;
    auth.task(Some(name.as_str()))?;
    if store::tasks::delete(&db, name.as_str()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::NotFound {
            kind: "task",
            name: name.to_string(),
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskListQuery {
    /// Page size, 1 to 1000 (default 50).
    limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// A page of tasks in name order.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskPage {
    pub items: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// List tasks.
#[utoipa::path(
    get, path = "/v1/tasks", tag = "tasks",
    security(("bearer" = ["read"])),
    params(TaskListQuery),
    responses(
        (status = 200, body = TaskPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tasks(
    auth: Authorized<ForRead>,
    State(db): State<PgPool>,
    ApiQuery(query): ApiQuery<TaskListQuery>,
) -> Result<Json<TaskPage>> {
    auth.all_tasks()?;
    let limit = pagination::limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode_name_cursor)
        .transpose()?;
    let mut items = store::tasks::list(&db, after.as_deref(), limit + 1).await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items
            .last()
            .map(|t| pagination::encode_name_cursor(&t.name))
    } else {
        None
    };
    Ok(Json(TaskPage { items, next_cursor }))
}
