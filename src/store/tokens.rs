//! SQL for API tokens. Only a token's hash is stored; the token itself never reaches the database.

use crate::domain::{Caller, Scope};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use utoipa::ToSchema;
use uuid::Uuid;

/// A token as the API shows it (never the token itself).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub scope: Scope,
    /// The tasks the token is limited to; absent means every task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// This token's own limit on runs not yet finished (replaces MAX_ACTIVE_RUNS_PER_TOKEN;
    /// 0: none); absent: the installation's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_active_runs: Option<i32>,
}

/// A token about to be stored.
pub struct NewToken<'a> {
    pub name: &'a str,
    pub scope: Scope,
    pub tasks: Option<&'a [String]>,
    pub hash: &'a [u8],
    pub max_active_runs: Option<i32>,
}

pub async fn insert(db: impl PgExecutor<'_>, new: NewToken<'_>) -> Result<TokenInfo, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO api_tokens (id, name, token_hash, scope, tasks, max_active_runs)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, name, scope, tasks, created_at, last_used_at, max_active_runs",
    )
    .bind(Uuid::new_v4())
    .bind(new.name)
    .bind(new.hash)
    .bind(new.scope)
    .bind(new.tasks)
    .bind(new.max_active_runs)
    .fetch_one(db)
    .await
}

#[derive(sqlx::FromRow)]
struct GrantRow {
    id: Uuid,
    scope: Scope,
    tasks: Option<Vec<String>>,
}

/// The caller a token hash stands for, if the token exists. Marks it used (at most once a
/// minute, so a busy client does not turn every read into a write).
pub async fn authenticate(
    db: impl PgExecutor<'_>,
    hash: &[u8],
) -> Result<Option<Caller>, sqlx::Error> {
    let row: Option<GrantRow> = sqlx::query_as(
        "WITH found AS (SELECT id, scope, tasks, last_used_at FROM api_tokens WHERE token_hash = $1),
              touched AS (UPDATE api_tokens SET last_used_at = now()
                          WHERE id IN (SELECT id FROM found
                                       WHERE last_used_at IS NULL
                                          OR last_used_at < now() - interval '1 minute'))
         SELECT id, scope, tasks FROM found",
    )
    .bind(hash)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| Caller {
        token_id: Some(row.id),
        scope: row.scope,
        tasks: row.tasks,
    }))
}

pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, scope, tasks, created_at, last_used_at, max_active_runs
         FROM api_tokens ORDER BY created_at, id",
    )
    .fetch_all(db)
    .await
}

/// The NOTIFY channel that carries the id of each revoked token (at commit).
pub const REVOKED_CHANNEL: &str = "vfi_token_revoked";

/// Revokes a token at once: it is deleted, and its id announced on [`REVOKED_CHANNEL`] so the
/// streams it opened end on every replica.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let deleted: Option<Uuid> = sqlx::query_scalar(
        "WITH deleted AS (DELETE FROM api_tokens WHERE id = $1 RETURNING id)
         SELECT id FROM deleted, pg_notify($2, id::text) AS notified",
    )
    .bind(id)
    .bind(REVOKED_CHANNEL)
    .fetch_optional(db)
    .await?;
    Ok(deleted.is_some())
}

/// Whether the token still exists (is not revoked).
pub async fn exists(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_tokens WHERE id = $1)")
        .bind(id)
        .fetch_one(db)
        .await
}

/// Locks the token's row until the transaction ends (so concurrent submissions by one token
/// are counted one after the other) and returns its own active-run limit, if an admin set one.
/// `None` when the token is gone.
pub async fn lock_for_submission(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
) -> Result<Option<Option<i32>>, sqlx::Error> {
    sqlx::query_scalar("SELECT max_active_runs FROM api_tokens WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await
}
