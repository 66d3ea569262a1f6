//! SQL for pod records: one row per pod of a run, as last seen in the cluster.

use crate::domain::PodRecord;
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// Records what a pod looks like now. A pod of a run that no longer exists is ignored.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    run_id: Uuid,
    pod: &PodRecord,
) -> Result<(), sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO run_pods (run_id, name, uid, completion_index, node_name, phase, exit_code,
             reason, message, restarts, created_at, started_at, finished_at, deleted)
         -- A run with secret parameters keeps no pod message: a container's termination
         -- message is whatever it wrote, and could hold the secret, which only logs mask.
         SELECT $1, $2, $3, $4, $5, $6, $7, $8,
                CASE WHEN jsonb_path_exists(r.params, '$.*.sha256') THEN NULL ELSE $9 END,
                $10, $11, $12, $13, $14
         FROM runs r WHERE r.id = $1
         ON CONFLICT (run_id, name) DO UPDATE SET
             uid = EXCLUDED.uid,
             completion_index = EXCLUDED.completion_index,
             node_name = coalesce(EXCLUDED.node_name, run_pods.node_name),
             -- A deleted pod's last real state is kept, and a finished pod stays finished: watch
             -- events may arrive after a fresher list of the same pod.
             phase = CASE WHEN EXCLUDED.deleted OR run_pods.phase IN ('Succeeded', 'Failed')
                          THEN run_pods.phase ELSE EXCLUDED.phase END,
             exit_code = coalesce(EXCLUDED.exit_code, run_pods.exit_code),
             reason = coalesce(EXCLUDED.reason, run_pods.reason),
             message = coalesce(EXCLUDED.message, run_pods.message),
             restarts = greatest(EXCLUDED.restarts, run_pods.restarts),
             created_at = coalesce(run_pods.created_at, EXCLUDED.created_at),
             started_at = coalesce(EXCLUDED.started_at, run_pods.started_at),
             finished_at = coalesce(EXCLUDED.finished_at, run_pods.finished_at),
             deleted = run_pods.deleted OR EXCLUDED.deleted,
             updated_at = now()",
    )
    .bind(run_id)
    .bind(&pod.name)
    .bind(&pod.uid)
    .bind(pod.completion_index)
    .bind(&pod.node_name)
    .bind(&pod.phase)
    .bind(pod.exit_code)
    .bind(&pod.reason)
    .bind(&pod.message)
    .bind(pod.restarts)
    .bind(pod.created_at)
    .bind(pod.started_at)
    .bind(pod.finished_at)
    .bind(pod.deleted)
    .execute(db)
    .await;
    match result {
        Ok(_) => Ok(()),
        // The run was deleted (pruned): nothing to record against.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => Ok(()),
        Err(e) => Err(e),
    }
}

#[derive(sqlx::FromRow)]
struct PodRow {
    name: String,
    uid: String,
    completion_index: Option<i32>,
    node_name: Option<String>,
    phase: String,
    exit_code: Option<i32>,
    reason: Option<String>,
    message: Option<String>,
    restarts: i32,
    created_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    deleted: bool,
}

/// A run's pods in completion-index order, then creation order.
pub async fn list(db: impl PgExecutor<'_>, run_id: Uuid) -> Result<Vec<PodRecord>, sqlx::Error> {
    let rows: Vec<PodRow> = sqlx::query_as(
        "SELECT name, uid, completion_index, node_name, phase, exit_code, reason, message,
                restarts, created_at, started_at, finished_at, deleted
         FROM run_pods WHERE run_id = $1
         ORDER BY completion_index NULLS LAST, created_at, name",
    )
    .bind(run_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PodRecord {
            name: r.name,
            uid: r.uid,
            completion_index: r.completion_index,
            node_name: r.node_name,
            phase: r.phase,
            exit_code: r.exit_code,
            reason: r.reason,
            message: r.message,
            restarts: r.restarts,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            deleted: r.deleted,
        })
        .collect())
}
