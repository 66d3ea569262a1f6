//! `/v1/tokens`: admins create, list and revoke API tokens. A token is shown once, in the answer
//! that creates it; only its hash is kept.

use super::auth::{Authorized, ForAdmin};
use super::extract::{ApiJson, ApiPath};
use super::problem::Problem;
use crate::domain::auth::new_token;
use crate::domain::validation::Errors;
use crate::domain::{Scope, TaskName};
use crate::error::{Error, Result};
use crate::store::{self, tokens::NewToken, tokens::TokenInfo};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// Who or what uses the token (1 to 100 characters), e.g. `ci-dashboard`.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// `read` (history, logs), `run` (also start, cancel, re-run) or `admin` (also tasks,
    /// triggers, tokens).
    pub scope: Scope,
    /// Limit the token to these tasks; leave out for every task.
    #[serde(default)]
    pub tasks: Option<Vec<String>>,
    /// Runs this token may have unfinished at once, replacing the installation's
    /// MAX_ACTIVE_RUNS_PER_TOKEN (0: no limit); leave out for the installation's.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub max_active_runs: Option<u32>,
}

impl TokenRequest {
    pub fn validate(&self) -> Result<(), crate::domain::Invalid> {
        let mut errors = Errors::new();
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            errors.add("name", "must be 1 to 100 characters");
        }
        if self
            .max_active_runs
            .is_some_and(|n| i32::try_from(n).is_err())
        {
            errors.add("maxActiveRuns", format!("must be at most {}", i32::MAX));
        }
        if let Some(tasks) = &self.tasks {
            if tasks.is_empty() {
                errors.add("tasks", "must name at least one task when given");
            }
            for (i, task) in tasks.iter().enumerate() {
                if let Err(message) = TaskName::parse(task.clone()) {
                    errors.add(format!("tasks[{i}]"), message);
                }
            }
        }
        errors.finish()
    }
}

/// A new token: the only time the token itself is shown.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    /// Send as `Authorization: Bearer <token>`. Store it now: it cannot be read back.
    pub token: String,
}

/// Creates and stores a token; shared by the API and the `token create` command.
pub async fn create_token(db: &PgPool, request: &TokenRequest) -> Result<CreatedToken> {
    request.validate()?;
    let (token, hash) = new_token();
    let info = store::tokens::insert(
        db,
        NewToken {
            name: request.name.trim(),
            scope: request.scope,
            tasks: request.tasks.as_deref(),
            hash: &hash,
            max_active_runs: request.max_active_runs.and_then(|n| i32::try_from(n).ok()),
        },
    )
    .await?;
    tracing::info!(token_id = %info.id, name = ?info.name, scope = %info.scope, "token created");
    Ok(CreatedToken { info, token })
}

/// Create a token.
#[utoipa::path(
    post, path = "/v1/tokens", tag = "tokens",
    security(("bearer" = ["admin"])),
    request_body = TokenRequest,
    responses(
        (status = 201, description = "Created; the token is in the answer, and only there", body = CreatedToken),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn post_token(
    auth: Authorized<ForAdmin>,
    State(db): State<PgPool>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>)> {
    auth.all_tasks()?;
    Ok((
        StatusCode::CREATED,
        Json(create_token(&db, &request).await?),
    ))
}

/// List tokens (never the tokens themselves).
#[utoipa::path(
    get, path = "/v1/tokens", tag = "tokens",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, body = Vec<TokenInfo>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tokens(
    auth: Authorized<ForAdmin>,
    State(db): State<PgPool>,
) -> Result<Json<Vec<TokenInfo>>> {
    auth.all_tasks()?;
    Ok(Json(store::tokens::list(&db).await?))
}

/// Revoke a token, at once.
#[utoipa::path(
    delete, path = "/v1/tokens/{id}", tag = "tokens",
    security(("bearer" = ["admin"])),
    params(("id" = uuid::Uuid, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_token(
    auth: Authorized<ForAdmin>,
    State(db): State<PgPool>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode> {
    auth.all_tasks()?;
    let not_found = || Error::NotFound {
        kind: "token",
        name: id.clone(),
    };
    let uuid = uuid::Uuid::parse_str(&id).map_err(|_| not_found())?;
    if store::tokens::delete(&db, uuid).await? {
        tracing::info!(token_id = %uuid, "token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
