//! `/v1/tasks`: create or replace, read, list and delete task definitions; a scheduled task's
//! status, and backfilling its scheduled times.

use super::auth::{Authorized, ForAdmin, ForRead};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::pagination;
use super::problem::Problem;
use super::Limits;
use crate::domain::schedule::{Schedule, ScheduleStatus};
use crate::domain::{Invalid, Origin, Run, RunPolicy, Submission, Task, TaskName, TaskSpec};
use crate::error::{Error, Result};
use crate::store;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
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
    ApiPath(name): ApiPath<String>,
    ApiJson(mut spec): ApiJson<TaskSpec>,
) -> Result<(StatusCode, Json<Task>)> {
    let name = parse_name(name)?;
    auth.task(Some(name.as_str()))?;
    // A Slack URL the API showed redacted and that comes back unchanged keeps the stored one.
    if spec
        .notify
        .iter()
        .any(|n| n.url.ends_with(crate::domain::report::REDACTED))
    {
        let stored = store::tasks::stored_notify(&db, name.as_str()).await?;
        crate::domain::report::keep_redacted_urls(&mut spec.notify, &stored);
    }
    spec.validate()?;
    policy.check(&spec.template, spec.limits.as_ref(), "template")?;
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
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Task>> {
    let name = parse_name(name)?;
    auth.task(Some(name.as_str()))?;
    let mut task = store::tasks::get(&db, name.as_str())
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "task",
            name: name.to_string(),
        })?;
    if let Some(Ok(schedule)) = task.schedule.parsed() {
        task.schedule_status = Some(schedule_status(&db, name.as_str(), &schedule).await?);
    }
    Ok(Json(task))
}

/// Skipped times shown on a task.
const RECENT_SKIPS: i64 = 20;

async fn schedule_status(db: &PgPool, task: &str, schedule: &Schedule) -> Result<ScheduleStatus> {
    let mut conn = db.acquire().await?;
    let records = store::schedules::status(&mut conn, task, RECENT_SKIPS).await?;
    let active_runs = store::schedules::active_runs(&mut *conn, task).await?;
    // From where the scheduler has got to (its clock), or from now before it saw the task.
    let next = schedule.next_after(records.considered_until.unwrap_or_else(chrono::Utc::now));
    Ok(ScheduleStatus {
        last_schedule_time: records.last_schedule_time,
        last_successful_time: records.last_successful_time,
        next_schedule_time: next,
        next_schedule_time_local: next.map(|t| t.with_timezone(&schedule.zone()).to_rfc3339()),
        time_zone: schedule.zone().name().to_string(),
        active_runs,
        recent_skips: records.recent_skips,
    })
}

/// The most scheduled times one backfill may start.
pub const MAX_BACKFILL: usize = 1000;

/// A range of scheduled times to start runs for.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackfillRequest {
    /// The first scheduled time of the range (inclusive).
    pub from: DateTime<Utc>,
    /// The last scheduled time of the range (inclusive).
    pub to: DateTime<Utc>,
}

/// What a backfill did with each scheduled time of its range.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillResult {
    /// Runs started, one per scheduled time that had none yet.
    pub started: Vec<Run>,
    /// Scheduled times that already had a run (each time runs at most once).
    pub already_started: Vec<DateTime<Utc>>,
}

/// Start runs for the task's scheduled times in a range (each at most once, ever).
///
/// Times that were skipped (missed, Forbid, deadline passed...) get their run now; times that
/// already have one are left alone. The concurrency policy does not apply: an admin asked.
#[utoipa::path(
    post, path = "/v1/tasks/{name}/backfill", tag = "tasks",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "Task name")),
    request_body = BackfillRequest,
    responses(
        (status = 200, body = BackfillResult),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No schedule, an invalid range, or a template beyond this installation's limits", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The task has too many queued runs; none of the range was started", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn backfill(
    auth: Authorized<ForAdmin>,
    State(db): State<PgPool>,
    State(policy): State<Arc<RunPolicy>>,
    State(limits): State<Arc<Limits>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<BackfillRequest>,
) -> Result<Json<BackfillResult>> {
    let name = parse_name(name)?;
    let origin = Origin::scheduled(name.as_str(), request.from).admit(Some(&auth.caller))?;
    let task = store::tasks::get(&db, name.as_str())
        .await?
        .ok_or_else(|| Error::NotFound {
            kind: "task",
            name: name.to_string(),
        })?;
    let Some(Ok(schedule)) = task.schedule.parsed() else {
        return Err(Invalid::one("schedule", "the task has no schedule to backfill").into());
    };
    // Before the range: a template today's policy refuses is refused whatever the range.
    let checked = Submission::check(&policy, origin, task.template.clone(), task.limits.as_ref())?
        .with_params(&task.parameters, &task.schedule.schedule_params)?
        .queued(task.concurrency.as_ref(), task.priority, None, None)?;
    if request.to < request.from {
        return Err(Invalid::one("to", "must not be before from").into());
    }
    let times = schedule.times_between(
        request.from - chrono::Duration::seconds(1),
        request.to,
        MAX_BACKFILL + 1,
    );
    if times.len() > MAX_BACKFILL {
        return Err(Invalid::one(
            "to",
            format!(
                "the range holds more than {MAX_BACKFILL} scheduled times; backfill it in parts"
            ),
        )
        .into());
    }
    let mut tx = db.begin().await?;
    let mut result = BackfillResult {
        started: Vec::new(),
        already_started: Vec::new(),
    };
    for time in times {
        if !store::schedules::claim_time(&mut tx, name.as_str(), time).await? {
            result.already_started.push(time);
            continue;
        }
        let submission = checked.for_scheduled_time(time);
        let run = store::runs::submit(&mut tx, &submission, limits.caps()).await??;
        store::schedules::attach_run(&mut tx, name.as_str(), time, run.id).await?;
        result.started.push(run);
    }
    tx.commit().await?;
    tracing::info!(task = %name, started = result.started.len(), already = result.already_started.len(), "backfill recorded");
    Ok(Json(result))
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
    ApiPath(name): ApiPath<String>,
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
    let fetched = store::tasks::list(&db, after.as_deref(), limit + 1).await?;
    let (items, next_cursor) =
        pagination::page(fetched, limit, |t| pagination::encode_name_cursor(&t.name));
    Ok(Json(TaskPage { items, next_cursor }))
}
