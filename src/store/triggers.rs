//! SQL for webhook triggers and the deliveries that started runs. The secret is read only by
//! [`for_delivery`], to check a delivery, and the report token only by the outbox's sender
//! (store/outbox.rs); nothing returned to the API carries either.

use crate::domain::report::ReportSettings;
use crate::domain::webhook::{hook_path, EventKind, Provider, TriggerSpec, WebhookTrigger};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

const COLUMNS: &str =
    "id, task_name, name, provider, events, refs, report, params, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct TriggerRow {
    id: Uuid,
    task_name: String,
    name: String,
    provider: Provider,
    events: Vec<String>,
    refs: Vec<String>,
    report: Option<Json<ReportSettings>>,
    params: Json<std::collections::BTreeMap<String, String>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<TriggerRow> for WebhookTrigger {
    fn from(row: TriggerRow) -> WebhookTrigger {
        WebhookTrigger {
            id: row.id,
            task: row.task_name,
            name: row.name,
            provider: row.provider,
            events: row
                .events
                .iter()
                .filter_map(|e| EventKind::parse(e))
                .collect(),
            refs: row.refs,
            report: row.report.map(|r| r.0),
            params: row.params.0,
            hook_path: hook_path(row.id),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

fn event_names(spec: &TriggerSpec) -> Vec<&'static str> {
    let mut events: Vec<EventKind> = spec.events.clone();
    events.sort();
    events.dedup();
    events.into_iter().map(EventKind::as_str).collect()
}

/// Creates or replaces a task's trigger; its id (and so its hook URL) stays the same on replace.
/// `report` is the spec's report with its defaults resolved (its token is taken from `spec`).
/// Returns `None` when the task does not exist, else the trigger and whether it was created.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    task: &str,
    name: &str,
    spec: &TriggerSpec,
    report: Option<&ReportSettings>,
) -> Result<Option<(WebhookTrigger, bool)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        trigger: TriggerRow,
        created: bool,
    }
    let row: Option<Row> = sqlx::query_as(&format!(
        "INSERT INTO webhook_triggers
            (id, task_name, name, provider, secret, events, refs, report, report_token, params)
         SELECT $1, name, $3, $4, $5, $6, $7, $8, $9, $10 FROM tasks WHERE name = $2
         ON CONFLICT (task_name, name) DO UPDATE SET
            provider = EXCLUDED.provider, secret = EXCLUDED.secret,
            events = EXCLUDED.events, refs = EXCLUDED.refs, report = EXCLUDED.report,
            report_token = EXCLUDED.report_token, params = EXCLUDED.params, updated_at = now()
         RETURNING {COLUMNS}, (xmax = 0) AS created"
    ))
    .bind(Uuid::new_v4())
    .bind(task)
    .bind(name)
    .bind(spec.provider)
    .bind(&spec.secret)
    .bind(event_names(spec))
    .bind(&spec.refs)
    .bind(report.map(Json))
    .bind(spec.report.as_ref().and_then(|r| r.secret()))
    .bind(Json(&spec.params))
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| (row.trigger.into(), row.created)))
}

pub async fn get(
    db: impl PgExecutor<'_>,
    task: &str,
    name: &str,
) -> Result<Option<WebhookTrigger>, sqlx::Error> {
    let row: Option<TriggerRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhook_triggers WHERE task_name = $1 AND name = $2"
    ))
    .bind(task)
    .bind(name)
    .fetch_optional(db)
    .await?;
    Ok(row.map(WebhookTrigger::from))
}

pub async fn list(db: impl PgExecutor<'_>, task: &str) -> Result<Vec<WebhookTrigger>, sqlx::Error> {
    let rows: Vec<TriggerRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhook_triggers WHERE task_name = $1 ORDER BY name"
    ))
    .bind(task)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(WebhookTrigger::from).collect())
}

pub async fn delete(db: impl PgExecutor<'_>, task: &str, name: &str) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM webhook_triggers WHERE task_name = $1 AND name = $2")
        .bind(task)
        .bind(name)
        .execute(db)
        .await?
        .rows_affected();
    Ok(deleted == 1)
}

/// A trigger with its secret, to check a delivery.
pub struct TriggerSecret {
    pub trigger: WebhookTrigger,
    pub secret: String,
}

pub async fn for_delivery(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<TriggerSecret>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        trigger: TriggerRow,
        secret: String,
    }
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, secret FROM webhook_triggers WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| TriggerSecret {
        trigger: row.trigger.into(),
        secret: row.secret,
    }))
}

/// Claims a delivery in `conn`'s transaction. `Some(run id)` when the same delivery already
/// started a run (a concurrent redelivery waits here until the first one commits or rolls back).
pub async fn claim_delivery(
    conn: &mut PgConnection,
    trigger: Uuid,
    delivery: &str,
    run: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO webhook_deliveries (trigger_id, delivery_id, run_id) VALUES ($1, $2, $3)
         ON CONFLICT (trigger_id, delivery_id) DO NOTHING",
    )
    .bind(trigger)
    .bind(delivery)
    .bind(run)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(None);
    }
    sqlx::query_scalar(
        "SELECT run_id FROM webhook_deliveries WHERE trigger_id = $1 AND delivery_id = $2",
    )
    .bind(trigger)
    .bind(delivery)
    .fetch_one(&mut *conn)
    .await
    .map(Some)
}

/// The run a delivery already started, if any.
pub async fn delivered_run(
    db: impl PgExecutor<'_>,
    trigger: Uuid,
    delivery: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT run_id FROM webhook_deliveries WHERE trigger_id = $1 AND delivery_id = $2",
    )
    .bind(trigger)
    .bind(delivery)
    .fetch_optional(db)
    .await
}
