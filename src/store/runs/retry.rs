//! Runs that follow from other runs without a caller: the resubmission of a lost run
//! (`retry.onLost`), written in the transaction that records the loss, and the reads behind a
//! partial rerun (each index's outcome across an Indexed run and its one-index reruns).

use super::{RunRow, COLUMNS};
use crate::domain::indexes::{self, IndexPod, IndexRerun};
use crate::domain::{Caps, Origin, Run, RunPolicy, RunStatus, Submission, Trigger};
use crate::store::status::{self, Change, Text, Which};
use sqlx::PgConnection;
use uuid::Uuid;

pub use crate::domain::indexes::{IndexOutcome, IndexesView};

/// Resubmits `lost` (just moved to `lost` in this transaction) as a linked run when its
/// template's `retry.onLost` leaves a retry for its chain: through the front door
/// ([`Submission::check`] against today's `policy` and its task's limits), marked with
/// `retry_reason` `Retried: <why>`. Caps are not applied: the retry takes the place of a run
/// that no longer counts. Since the loss is written once (the status guard) and this runs in
/// the same transaction, each loss gives at most one retry, on any replica, across crashes.
pub async fn resubmit_lost(
    conn: &mut PgConnection,
    lost: &Run,
    policy: &RunPolicy,
) -> Result<Option<Run>, sqlx::Error> {
    let allowed = i64::from(lost.template.retries_on_lost());
    if lost.status != RunStatus::Lost || allowed == 0 {
        return Ok(None);
    }
    // Retries so far in this chain: the lost run and its ancestors that were retries.
    let so_far: i64 = sqlx::query_scalar(
        "WITH RECURSIVE chain(id, rerun_of, retry_reason) AS (
             SELECT id, rerun_of, retry_reason FROM runs WHERE id = $1
             UNION ALL
             SELECT r.id, r.rerun_of, r.retry_reason FROM runs r JOIN chain c ON r.id = c.rerun_of
             WHERE c.retry_reason IS NOT NULL)
         SELECT count(*) FROM chain WHERE retry_reason IS NOT NULL",
    )
    .bind(lost.id)
    .fetch_one(&mut *conn)
    .await?;
    if so_far >= allowed {
        tracing::info!(run_id = %lost.id, retries = so_far, "lost run not retried: retry.onLost is used up");
        return Ok(None);
    }
    // A secret value lived only in the run's Secret, which went with its Job.
    if lost.params.values().any(|p| p.is_secret()) {
        tracing::warn!(run_id = %lost.id, "lost run not retried: its secret parameter values went with its Job's Secret; rerun it giving them again");
        return Ok(None);
    }
    let task = match lost.task.as_deref() {
        Some(name) => crate::store::tasks::get(&mut *conn, name).await?,
        None => None,
    };
    // The lost run's parameter values, checked against its task's parameters as they are today.
    let values = crate::domain::params::rerun_values(&lost.params, &Default::default());
    let specs = task
        .as_ref()
        .map(|t| t.parameters.as_slice())
        .unwrap_or_default();
    let origin = Origin {
        task: lost.task.clone(),
        trigger: Trigger::Rerun,
        rerun_of: Some(lost.id),
        scheduled_time: lost.scheduled_time,
        token_id: None,
    }
    .by_service();
    let submission = Submission::check(
        policy,
        origin,
        lost.template.clone(),
        task.as_ref().and_then(|t| t.limits.as_ref()),
    )
    .and_then(|s| s.with_params(specs, &values))
    .and_then(|s| {
        s.queued(
            task.as_ref().and_then(|t| t.concurrency.as_ref()),
            task.as_ref().and_then(|t| t.priority),
            None,
            None,
        )
    });
    let submission = match submission {
        Ok(submission) => submission,
        Err(refused) => {
            tracing::warn!(run_id = %lost.id, %refused, "lost run not retried: today's policy refuses its template");
            return Ok(None);
        }
    };
    let no_caps = Caps {
        max_queued_runs_per_task: 0,
        max_active_runs_per_token: 0,
    };
    // Under CancelInProgress / CancelPending a newer run of the key has taken the lost run's
    // place: a retry would supersede (cancel) it.
    let superseding = task
        .as_ref()
        .and_then(|t| t.concurrency.as_ref())
        .and_then(|c| c.policy)
        .is_some_and(|p| {
            matches!(
                p,
                crate::domain::QueuePolicy::CancelInProgress
                    | crate::domain::QueuePolicy::CancelPending
            )
        });
    if superseding {
        if let Some(key) = &lost.queue_key {
            let newer: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE queue_key = $1 AND id > $2)",
            )
            .bind(key)
            .bind(lost.id)
            .fetch_one(&mut *conn)
            .await?;
            if newer {
                tracing::info!(run_id = %lost.id, %key, "lost run not retried: a newer run of its key has taken its place");
                return Ok(None);
            }
        }
    }
    let run = match super::submit(&mut *conn, &submission, no_caps).await? {
        Ok(run) => run,
        Err(refused) => {
            tracing::warn!(run_id = %lost.id, refused = ?refused, "lost run not retried: its key refused the retry");
            metrics::counter!("vfi_lost_runs_not_retried_total").increment(1);
            return Ok(None);
        }
    };
    let why = match (&lost.status_reason, &lost.status_message) {
        (Some(reason), Some(message)) => format!("{reason}: {message}"),
        (Some(text), None) | (None, Some(text)) => text.clone(),
        (None, None) => "the run was lost".to_string(),
    };
    let reason = format!("Retried: {why} (run {} was lost)", lost.number);
    let row: RunRow = sqlx::query_as(&format!(
        "UPDATE runs SET retry_reason = $2 WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(run.id)
    .bind(&reason)
    .fetch_one(&mut *conn)
    .await?;
    metrics::counter!("vfi_lost_runs_retried_total").increment(1);
    tracing::info!(run_id = %lost.id, retry = %run.id, %reason, "lost run resubmitted");
    Ok(Some(Run::from(row)))
}

/// Each index's outcome of the Indexed run `original` across it and its one-index reruns.
pub async fn index_outcomes(
    db: &mut PgConnection,
    original: &Run,
) -> Result<IndexesView, sqlx::Error> {
    let reruns: Vec<(Uuid, i32, RunStatus)> = sqlx::query_as(
        // The one-index reruns, and the retries of those that were lost (`retry.onLost`,
        // linked to the lost rerun, with its template): all of them ran the index.
        "WITH RECURSIVE chain(id) AS (
             SELECT id FROM runs WHERE rerun_of = $1 AND template ? 'completionIndex'
             UNION ALL
             SELECT r.id FROM runs r JOIN chain c ON r.rerun_of = c.id
             WHERE r.retry_reason IS NOT NULL)
         SELECT id, (template->>'completionIndex')::int, status FROM runs
         WHERE id IN (SELECT id FROM chain) AND template ? 'completionIndex'
         ORDER BY created_at, id",
    )
    .bind(original.id)
    .fetch_all(&mut *db)
    .await?;
    let mut ids: Vec<Uuid> = reruns.iter().map(|r| r.0).collect();
    ids.push(original.id);
    let pods: Vec<(Uuid, Option<i32>, String)> = sqlx::query_as(
        "SELECT run_id, completion_index, phase FROM run_pods WHERE run_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *db)
    .await?;
    let pods: Vec<IndexPod> = pods
        .into_iter()
        .map(|(run, index, phase)| IndexPod { run, index, phase })
        .collect();
    let reruns: Vec<IndexRerun> = reruns
        .into_iter()
        .map(|(run, index, status)| IndexRerun { run, index, status })
        .collect();
    Ok(indexes::outcomes(
        original.id,
        original.status,
        original.template.completions.unwrap_or(0),
        &pods,
        &reruns,
    ))
}

/// [`index_outcomes`] with the original's row locked until the transaction ends: what a partial
/// rerun reads, so that two at once see each other's runs.
pub async fn index_outcomes_locked(
    tx: &mut PgConnection,
    original: &Run,
) -> Result<IndexesView, sqlx::Error> {
    sqlx::query("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE")
        .bind(original.id)
        .execute(&mut *tx)
        .await?;
    index_outcomes(tx, original).await
}

/// The advisory lock space of a run's disruption count (beside the queue's key locks).
const DISRUPTION_LOCK_SPACE: i32 = 0x6472; // "dr"

/// Records that pod `pod` of run `run_id` was disrupted (`reason`, once per pod) and, when the
/// run's disrupted pods are now more than its `retry.onInfrastructureFailure`, fails the run
/// (reason `InfrastructureFailuresExceeded`) and returns it, for its Job to be deleted.
pub async fn count_disruption(
    db: &sqlx::PgPool,
    run_id: Uuid,
    pod: &str,
    reason: &str,
) -> Result<Option<Run>, sqlx::Error> {
    let mut tx = db.begin().await?;
    // One count per run at a time: every replica's tracker records disruptions, and two
    // counting different pods at once would each miss the other's row (READ COMMITTED).
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2::text))")
        .bind(DISRUPTION_LOCK_SPACE)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    let newly = sqlx::query(
        "UPDATE run_pods SET disruption = $3 WHERE run_id = $1 AND name = $2 AND disruption IS NULL",
    )
    .bind(run_id)
    .bind(pod)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if newly == 0 {
        return Ok(None);
    }
    let Some(run) = super::get(&mut *tx, run_id).await? else {
        return Ok(None);
    };
    let Some(allowed) = run.template.disruptions_allowed() else {
        tx.commit().await?;
        return Ok(None);
    };
    let disrupted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM run_pods WHERE run_id = $1 AND disruption IS NOT NULL",
    )
    .bind(run_id)
    .fetch_one(&mut *tx)
    .await?;
    let mut failed = None;
    if disrupted > i64::from(allowed) {
        let message = format!(
            "{disrupted} pods were disrupted by the infrastructure (the last, {pod}: {reason}); retry.onInfrastructureFailure allows {allowed}"
        );
        let from = [RunStatus::Pending, RunStatus::Running];
        let change = Change {
            reason: Text::Set(Some("InfrastructureFailuresExceeded")),
            message: Text::Set(Some(&message)),
            ..Change::to(RunStatus::Failed, &from)
        };
        failed = status::write(&mut *tx, Which::Run(run_id), change)
            .await?
            .pop()
            .map(|moved| moved.run);
    }
    tx.commit().await?;
    Ok(failed)
}
