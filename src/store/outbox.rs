//! SQL of the outbox: commit status reports and notifications waiting to be delivered.
//!
//! Messages are written by the database itself, in the statement that changes a run's status
//! (the `runs_outbox` trigger, see migrations/20261203005000_o1_outbox.sql), so no writer of
//! status can forget them and a rolled-back change leaves none. Here: the record of where a
//! webhook run came from ([`record_source`], which writes the first report), the reporters'
//! claims per ordering key under a lease ([`claim`]), the outcome of each attempt ([`finish`]),
//! and what the API shows ([`deliveries`], [`run_report`]). The report token and notification
//! secrets are read only by [`message`], for the sender; nothing returned to the API has them.

use crate::domain::report::{ReportProvider, ReportSettings, RunReport, Verdict};
use crate::domain::webhook::GitEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use std::time::Duration;
use utoipa::ToSchema;
use uuid::Uuid;

/// NOTIFY channel announcing new outbox messages (at commit).
pub const CHANNEL: &str = "vfi_outbox";

/// Records where a webhook run came from, in the run's own transaction; with `report`, its first
/// state is written to the outbox at the same time.
pub async fn record_source(
    conn: &mut PgConnection,
    run: Uuid,
    trigger: Uuid,
    task: &str,
    event: &GitEvent,
    report: Option<&ReportSettings>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO run_sources (run_id, trigger_id, task_name, repository, sha, git_ref,
            report_provider, report_api_base, report_context, report_target_url,
            report_app_id, report_installation_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(run)
    .bind(trigger)
    .bind(task)
    .bind(&event.repository)
    .bind(&event.sha)
    .bind(&event.git_ref)
    .bind(report.map(|r| r.provider))
    .bind(report.map(|r| r.api_base_url.as_str()))
    .bind(report.map(|r| r.context.as_str()))
    .bind(report.and_then(|r| r.target_url.as_deref()))
    .bind(report.and_then(|r| r.app_id).map(|id| id as i64))
    .bind(report.and_then(|r| r.installation_id).map(|id| id as i64))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A key a reporter holds: its newest message is the one to send.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub key: String,
    pub pending_id: i64,
    /// The newest message the receiver accepted.
    pub delivered_id: Option<i64>,
    /// Transient failures in a row so far.
    pub failures: i32,
}

/// Claims up to `limit` keys with a message due, for `lease`: keys another reporter holds (or is
/// claiming) are skipped, so each key has one sender at a time, on any number of replicas; a
/// lapsed lease (a reporter that died) is taken over.
pub async fn claim(
    db: impl PgExecutor<'_>,
    owner: &str,
    lease: Duration,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (
            SELECT key FROM outbox_keys
            WHERE pending_id IS NOT NULL AND not_before <= now()
              AND (lease_until IS NULL OR lease_until < now())
            ORDER BY not_before LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE outbox_keys k SET lease_owner = $1,
            lease_until = now() + make_interval(secs => $2)
         FROM due WHERE k.key = due.key
         RETURNING k.key, k.pending_id, k.delivered_id, k.failures",
    )
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A receiver of notifications, as the outbox row keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifyTarget {
    pub url: String,
    pub format: crate::domain::report::NotifyFormat,
    pub task: Option<String>,
}

/// One message with everything its sender needs. Holds the token or secret: not `Debug`.
#[derive(sqlx::FromRow)]
pub struct Message {
    pub id: i64,
    pub key: String,
    pub run_id: Option<Uuid>,
    pub kind: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub target: Option<Json<NotifyTarget>>,
    pub secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub run_number: Option<i64>,
    pub run_task: Option<String>,
    pub provider: Option<ReportProvider>,
    pub api_base: Option<String>,
    pub repository: Option<String>,
    pub sha: Option<String>,
    pub git_ref: Option<String>,
    pub context: Option<String>,
    pub target_url: Option<String>,
    /// The trigger's token, or its GitHub App's private key.
    pub token: Option<String>,
    pub app_id: Option<i64>,
    pub installation_id: Option<i64>,
    pub check_run_id: Option<i64>,
}

pub async fn message(db: impl PgExecutor<'_>, id: i64) -> Result<Option<Message>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.id, o.key, o.run_id, o.kind, o.status, o.reason, o.message, o.target,
                o.secret, o.created_at, r.number AS run_number, r.task_name AS run_task,
                s.report_provider AS provider, s.report_api_base AS api_base, s.repository,
                s.sha, s.git_ref, s.report_context AS context,
                s.report_target_url AS target_url, t.report_token AS token,
                s.report_app_id AS app_id, s.report_installation_id AS installation_id,
                s.check_run_id
         FROM outbox o
         LEFT JOIN runs r ON r.id = o.run_id
         LEFT JOIN run_sources s ON s.run_id = o.run_id AND o.kind = 'status'
         LEFT JOIN webhook_triggers t ON t.id = s.trigger_id
         WHERE o.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The outcome of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub key: &'a str,
    pub owner: &'a str,
    pub message: i64,
    pub run: Option<Uuid>,
    pub kind: &'a str,
    pub verdict: Verdict,
    /// With [`Verdict::Retry`]: when to try again.
    pub next_at: DateTime<Utc>,
    pub http_status: Option<u16>,
    /// The host's answer (or the error, without secrets), shortened.
    pub answer: &'a str,
    pub duration: Duration,
    /// The check run the attempt created (a GitHub App's first report of the run).
    pub check_run: Option<i64>,
}

/// Records an attempt and releases the key: a delivered or finally refused message is done (a
/// newer one written meanwhile stays due), a transient failure is due again at `next_at`. A
/// final refusal of a status report is kept on the run (`report.lastError`); the run's own
/// status is never touched.
pub async fn finish(db: &PgPool, attempt: Attempt<'_>) -> Result<(), sqlx::Error> {
    let result = attempt.verdict.as_str();
    let mut tx = db.begin().await?;
    // The key first, then the message: the order the status trigger locks them in.
    sqlx::query(
        "UPDATE outbox_keys SET lease_owner = NULL, lease_until = NULL,
            pending_id = CASE WHEN pending_id = $2 AND $3 <> 'retry' THEN NULL ELSE pending_id END,
            delivered_id = CASE WHEN $3 = 'delivered' THEN greatest(delivered_id, $2)
                                ELSE delivered_id END,
            failures = CASE WHEN $3 = 'retry' THEN failures + 1 ELSE 0 END,
            not_before = CASE WHEN $3 = 'retry' THEN $4 ELSE now() END
         WHERE key = $1 AND lease_owner = $5",
    )
    .bind(attempt.key)
    .bind(attempt.message)
    .bind(result)
    .bind(attempt.next_at)
    .bind(attempt.owner)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE outbox SET
            state = CASE $2 WHEN 'retry' THEN state ELSE $2 END,
            finished_at = CASE $2 WHEN 'retry' THEN finished_at ELSE now() END
         WHERE id = $1",
    )
    .bind(attempt.message)
    .bind(result)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO outbox_attempts (outbox_id, http_status, answer, result, duration_ms)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(attempt.message)
    .bind(attempt.http_status.map(i32::from))
    .bind(attempt.answer)
    .bind(result)
    .bind(attempt.duration.as_millis().min(i32::MAX as u128) as i32)
    .execute(&mut *tx)
    .await?;
    if let (Some(check_run), Some(run)) = (attempt.check_run, attempt.run) {
        sqlx::query("UPDATE run_sources SET check_run_id = $2 WHERE run_id = $1")
            .bind(run)
            .bind(check_run)
            .execute(&mut *tx)
            .await?;
    }
    if attempt.verdict == Verdict::Final && attempt.kind == "status" {
        sqlx::query(
            "UPDATE run_sources SET report_error = $2, report_error_at = now() WHERE run_id = $1",
        )
        .bind(attempt.run)
        .bind(attempt.answer)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Releases a key without sending its message, which is marked superseded: it says nothing the
/// receiver does not have already.
pub async fn skip(db: &PgPool, key: &str, owner: &str, id: i64) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE outbox_keys SET lease_owner = NULL, lease_until = NULL,
            pending_id = CASE WHEN pending_id = $3 THEN NULL ELSE pending_id END
         WHERE key = $1 AND lease_owner = $2",
    )
    .bind(key)
    .bind(owner)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE outbox SET state = 'superseded', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Releases a key whose message is gone (its run was pruned): nothing left to send.
pub async fn drop_missing(
    db: impl PgExecutor<'_>,
    key: &str,
    owner: &str,
    id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox_keys SET lease_owner = NULL, lease_until = NULL,
            pending_id = CASE WHEN pending_id = $3 THEN NULL ELSE pending_id END
         WHERE key = $1 AND lease_owner = $2",
    )
    .bind(key)
    .bind(owner)
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes up to `limit` ordering keys that have nothing left to order: no message due, no
/// reporter's lease, and none of their messages left in the outbox (messages go with their
/// runs when the pruner deletes them). Returns how many. A message written for such a key
/// meanwhile is safe: `outbox_put` creates or locks the key's row in one statement, so a
/// deletion either commits first (the message then makes a fresh row) or finds the row locked
/// (skipped) or pointing at the new message (`pending_id` no longer NULL: left alone).
pub async fn prune_keys(db: impl PgExecutor<'_>, limit: i64) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM outbox_keys WHERE key IN (
            SELECT k.key FROM outbox_keys k
            WHERE k.pending_id IS NULL AND (k.lease_until IS NULL OR k.lease_until < now())
              AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.key = k.key)
            LIMIT $1 FOR UPDATE SKIP LOCKED)
         AND pending_id IS NULL",
    )
    .bind(limit)
    .execute(db)
    .await?;
    Ok(deleted.rows_affected())
}

/// Messages not yet delivered, and the age in seconds of the oldest.
pub async fn depth(db: impl PgExecutor<'_>) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*),
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
         FROM outbox WHERE state = 'pending'",
    )
    .fetch_one(db)
    .await
}

/// One attempt to deliver a message, with the answer.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempt {
    #[serde(skip)]
    pub outbox_id: i64,
    pub at: DateTime<Utc>,
    /// The HTTP status the receiver answered (none: a timeout or connection error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// The start of the answer's body, or the error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// `delivered`, `retry` (transient; tried again) or `failed` (final).
    pub result: String,
    pub duration_ms: i32,
}

/// A report or notification of a run and every attempt to deliver it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Stable across retries (a notification's `X-Vfi-Delivery`).
    pub id: String,
    #[serde(skip)]
    pub outbox_id: i64,
    /// `status` (a commit status report) or `notification`.
    pub kind: String,
    /// The run status reported, or the notification's event.
    pub status: String,
    /// `pending` (not delivered yet), `delivered`, `superseded` (a newer state was sent instead)
    /// or `failed` (refused for good).
    pub state: String,
    /// `github`, `gitlab`, `gitea`, or the notification's receiver URL (a Slack URL redacted
    /// as on the task: `scheme://host/***`).
    pub target: String,
    /// The notification's format (`json`, `slack`).
    #[serde(skip)]
    pub target_format: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[sqlx(skip)]
    pub attempts: Vec<DeliveryAttempt>,
}

/// The stable id of an outbox message.
pub fn delivery_id(outbox_id: i64) -> String {
    format!("vfi-{outbox_id}")
}

/// A run's reports and notifications, oldest first, each with its attempts.
pub async fn deliveries(db: &PgPool, run: Uuid) -> Result<Vec<Delivery>, sqlx::Error> {
    let mut deliveries: Vec<Delivery> = sqlx::query_as(
        "SELECT ('vfi-' || o.id) AS id, o.id AS outbox_id, o.kind, o.status, o.state,
                coalesce(o.target ->> 'url', s.report_provider, '') AS target,
                o.target ->> 'format' AS target_format, o.created_at, o.finished_at
         FROM outbox o LEFT JOIN run_sources s ON s.run_id = o.run_id AND o.kind = 'status'
         WHERE o.run_id = $1 ORDER BY o.id",
    )
    .bind(run)
    .fetch_all(db)
    .await?;
    for delivery in &mut deliveries {
        if delivery.target_format.as_deref() == Some("slack") {
            delivery.target = crate::domain::report::shown_url(
                &delivery.target,
                crate::domain::report::NotifyFormat::Slack,
            );
        }
    }
    let attempts: Vec<DeliveryAttempt> = sqlx::query_as(
        "SELECT a.outbox_id, a.at, a.http_status, a.answer, a.result, a.duration_ms
         FROM outbox_attempts a JOIN outbox o ON o.id = a.outbox_id
         WHERE o.run_id = $1 ORDER BY a.id",
    )
    .bind(run)
    .fetch_all(db)
    .await?;
    for attempt in attempts {
        if let Some(delivery) = deliveries
            .iter_mut()
            .find(|d| d.outbox_id == attempt.outbox_id)
        {
            delivery.attempts.push(attempt);
        }
    }
    Ok(deliveries)
}

pub async fn run_report(
    db: impl PgExecutor<'_>,
    run: Uuid,
) -> Result<Option<RunReport>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.report_provider AS provider, s.report_context AS context, s.repository, s.sha,
                (SELECT o.status FROM outbox o WHERE o.run_id = s.run_id AND o.kind = 'status'
                   AND o.state = 'delivered' ORDER BY o.id DESC LIMIT 1) AS last_delivered,
                s.report_error AS last_error, s.report_error_at AS last_error_at
         FROM run_sources s WHERE s.run_id = $1 AND s.report_provider IS NOT NULL",
    )
    .bind(run)
    .fetch_optional(db)
    .await
}

/// The run a GitHub `check_run` or `check_suite` re-request is about: the run named by the check
/// run's `external_id` (set to the run's id when it was created), else the newest run of the
/// trigger for that repository and commit.
pub async fn rerequested_run(
    db: impl PgExecutor<'_>,
    trigger: Uuid,
    external_id: Option<Uuid>,
    repository: &str,
    sha: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT run_id FROM run_sources
         WHERE trigger_id = $1 AND repository = $3 AND sha = $4
           AND ($2::uuid IS NULL OR run_id = $2)
         ORDER BY run_id DESC LIMIT 1",
    )
    .bind(trigger)
    .bind(external_id)
    .bind(repository)
    .bind(sha)
    .fetch_optional(db)
    .await
}

/// Gives a rerun its original's source, in the rerun's transaction: it reports to the same
/// commit (a new check run) from its first state.
pub async fn copy_source(conn: &mut PgConnection, from: Uuid, to: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO run_sources (run_id, trigger_id, task_name, repository, sha, git_ref,
            report_provider, report_api_base, report_context, report_target_url,
            report_app_id, report_installation_id)
         SELECT $2, trigger_id, task_name, repository, sha, git_ref, report_provider,
            report_api_base, report_context, report_target_url, report_app_id,
            report_installation_id
         FROM run_sources WHERE run_id = $1",
    )
    .bind(from)
    .bind(to)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
