//! `/v1/tasks/{name}/triggers`: admins define a task's webhook triggers. Answers never carry the
//! secret; they carry the hook path to configure on the Git host.

use super::auth::{Authorized, ForAdmin};
use super::extract::{ApiJson, ApiPath};
use super::problem::Problem;
use super::tasks::parse_name;
use crate::domain::names;
use crate::domain::webhook::{TriggerSpec, WebhookTrigger};
use crate::error::{Error, Result};
use crate::store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sqlx::PgPool;

fn parse_trigger_name(name: &str) -> Result<()> {
    names::dns1123_label(name).map_err(|message| Error::bad_request("trigger", message))
}

fn not_found(task: &str, trigger: &str) -> Error {
    Error::NotFound {
        kind: "trigger",
        name: format!("{task}/{trigger}"),
    }
}

/// Create or replace a webhook trigger. Its id, and so its hook URL, survives replaces.
#[utoipa::path(
    put, path = "/v1/tasks/{name}/triggers/{trigger}", tag = "triggers",
    security(("bearer" = ["admin"])),
    params(
        ("name" = String, Path, description = "Task name"),
        ("trigger" = String, Path, description = "Trigger name: a DNS-1123 label"),
    ),
    request_body = TriggerSpec,
    responses(
        (status = 200, description = "Replaced", body = WebhookTrigger),
        (status = 201, description = "Created; `hookPath` is where the Git host must deliver", body = WebhookTrigger, headers(("Location" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_trigger(
    auth: Authorized<ForAdmin>,
    State(db): State<PgPool>,
    ApiPath((name, trigger)): ApiPath<(String, String)>,
    ApiJson(spec): ApiJson<TriggerSpec>,
) -> Result<Response> {
    let name = parse_name(name)?;
    auth.task(Some(name.as_str()))?;
    parse_trigger_name(&trigger)?;
    let report = spec.validate(name.as_str())?;
    let (stored, created) =
        store::triggers::upsert(&db, name.as_str(), &trigger, &spec, report.as_ref())
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "task",
                name: name.to_string(),
            })?;
    tracing::info!(task = %name, trigger = %trigger, trigger_id = %stored.id, created, "trigger saved");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/v1/tasks/{name}/triggers/{trigger}");
    Ok((status, [(header::LOCATION, location)], Json(stored)).into_response())
}

/// Read a webhook trigger (without its secret).
#[utoipa::path(
    get, path = "/v1/tasks/{name}/triggers/{trigger}", tag = "triggers",
    security(("bearer" = ["admin"])),
    params(
        ("name" = String, Path, description = "Task name"),
        ("trigger" = String, Path, description = "Trigger name"),
    ),
    responses(
        (status = 200, body = WebhookTrigger),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_trigger(
    auth: Authorized<ForAdmin>,
    State(db): State<PgPool>,
    ApiPath((name, trigger)): ApiPath<(String, String)>,
) -> Result<Json<WebhookTrigger>> {
    let name = parse_name(name)?;
    auth.task(Some(name.as_str()))?;
    store::triggers::get(&db, name.as_str(), &trigger)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(name.as_str(), &trigger))
}

/// Delete a webhook trigger: its hook URL stops working at once.
#[utoipa::path(
    delete, path = "/v1/tasks/{name}/triggers/{trigger}", tag = "triggers",
    security(("bearer" = ["admin"])),
    params(
        ("name" = String, Path, description = "Task name"),
        ("trigger" = String, Path, description = "Trigger name"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_trigger(
    auth: Authorized<ForAdmin>,
    State(db): State<PgPool>,
    ApiPath((name, trigger)): ApiPath<(String, String)>,
) -> Result<StatusCode> {
    let name = parse_name(name)?;
    auth.task(Some(name.as_str()))?;
    if store::triggers::delete(&db, name.as_str(), &trigger).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(name.as_str(), &trigger))
    }
}

/// A task's webhook triggers, by name.
#[utoipa::path(
    get, path = "/v1/tasks/{name}/triggers", tag = "triggers",
    security(("bearer" = ["admin"])),
    params(("name" = String, Path, description = "Task name")),
    responses(
        (status = 200, body = Vec<WebhookTrigger>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_triggers(
    auth: Authorized<ForAdmin>,
    State(db): State<PgPool>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<WebhookTrigger>>> {
    let name = parse_name(name)?;
    auth.task(Some(name.as_str()))?;
    // An empty list would say the task exists.
    if store::tasks::get(&db, name.as_str()).await?.is_none() {
        return Err(Error::NotFound {
            kind: "task",
            name: name.to_string(),
        });
    }
    Ok(Json(store::triggers::list(&db, name.as_str()).await?))
}
