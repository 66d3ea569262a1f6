//! The pruner: keeps the run history within its limits (each task's successful and failed
//! history limits, the global maximum age and maximum count of finished runs) and drops old
//! schedule records. One replica prunes at a time (a Postgres advisory lock). It works in
//! bounded batches with a pause between, so a backlog of millions never holds long locks or
//! starves the API. A run's Job, if still in the cluster, is deleted before its row (background
//! propagation); a Job that cannot be deleted keeps its row for the next pass. Active runs are
//! never selected.

use super::Runtime;
use crate::store::retention::{self, Candidate};
use crate::store::schedules;
use futures::StreamExt;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Settings of the pruner.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Pause between passes.
    pub interval: Duration,
    /// Runs deleted per transaction.
    pub batch_size: i64,
    /// Pause between batches.
    pub pause: Duration,
    /// Finished runs older than this are deleted (none when `None`).
    pub max_age: Option<Duration>,
    /// At most this many finished runs are kept overall (no limit when `None`).
    pub max_count: Option<i64>,
    /// Schedule fire and skip records older than this are deleted.
    pub schedule_record_max_age: Duration,
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Runs deleted, by rule.
    pub runs: BTreeMap<&'static str, u64>,
    /// Jobs deleted from the cluster.
    pub jobs: u64,
    /// Schedule records deleted.
    pub schedule_records: u64,
    /// Outbox ordering keys deleted (their messages were gone).
    pub outbox_keys: u64,
    /// False when another replica held the lock and this pass did nothing.
    pub ran: bool,
}

impl PruneReport {
    pub fn total_runs(&self) -> u64 {
        self.runs.values().sum()
    }
}

pub async fn run(runtime: Runtime, shutdown: CancellationToken) {
    loop {
        match prune_once(&runtime, &shutdown).await {
            Ok(report) if report.total_runs() > 0 || report.schedule_records > 0 => {
                tracing::info!(
                    runs = report.total_runs(),
                    by_rule = ?report.runs,
                    jobs = report.jobs,
                    schedule_records = report.schedule_records,
                    outbox_keys = report.outbox_keys,
                    "pruned run history"
                );
            }
            Ok(_) => {}
            Err(error) => {
                metrics::counter!("vfi_pruner_errors_total").increment(1);
                tracing::warn!(error = %crate::error::chain(&error), "pruner: a pass failed; the next one retries");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(runtime.settings.retention.interval) => {}
        }
    }
}

/// One pass over every rule, under the pruner lock (on a connection of its own, so the lock
/// goes with it if the process dies).
pub async fn prune_once(
    runtime: &Runtime,
    shutdown: &CancellationToken,
) -> Result<PruneReport, sqlx::Error> {
    let mut lock = sqlx::PgConnection::connect_with(&runtime.db.connect_options()).await?;
    if !retention::try_lock(&mut lock).await? {
        lock.close().await?;
        return Ok(PruneReport::default());
    }
    let mut report = PruneReport {
        ran: true,
        ..PruneReport::default()
    };
    let result = prune_locked(runtime, shutdown, &mut report).await;
    // Closing the session releases the lock even if unlocking fails.
    let _ = retention::unlock(&mut lock).await;
    let _ = lock.close().await;
    result.map(|()| report)
}

async fn prune_locked(
    runtime: &Runtime,
    shutdown: &CancellationToken,
    report: &mut PruneReport,
) -> Result<(), sqlx::Error> {
    let settings = &runtime.settings.retention;
    let batch = settings.batch_size.max(1);

    for (task, spec) in retention::limited_tasks(&runtime.db).await? {
        let Some((successful, failed)) = spec.schedule.history_limits() else {
            continue;
        };
        for (statuses, keep, rule) in [
            (retention::SUCCEEDED, successful, "successful_history_limit"),
            (retention::FAILED, failed, "failed_history_limit"),
        ] {
            let mut conn = runtime.db.acquire().await?;
            let below = retention::oldest_kept(&mut conn, &task, statuses, keep.into()).await?;
            drop(conn);
            for status in statuses {
                let mut after = None;
                loop {
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    let candidates =
                        retention::beyond_limit(&runtime.db, &task, status, below, after, batch)
                            .await?;
                    let Some(last) = candidates.last() else { break };
                    after = Some(last.id);
                    delete_batch(runtime, &candidates, rule, report).await?;
                    tokio::time::sleep(settings.pause).await;
                }
            }
        }
    }

    if let Some(max_age) = settings.max_age {
        let before = chrono::Utc::now() - chrono::Duration::from_std(max_age).unwrap_or_default();
        let mut after = None;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let candidates = retention::older_than(&runtime.db, before, after, batch).await?;
            let Some(last) = candidates.last() else { break };
            after = last.finished_at.map(|f| (f, last.id));
            delete_batch(runtime, &candidates, "max_age", report).await?;
            tokio::time::sleep(settings.pause).await;
        }
        // Queue events (`queue.moved`) go with the history of the same age.
        loop {
            let deleted = crate::store::queue::prune_events(&runtime.db, before, batch).await?;
            if deleted < batch as u64 || shutdown.is_cancelled() {
                break;
            }
            tokio::time::sleep(settings.pause).await;
        }
    }

    if let Some(max_count) = settings.max_count {
        if let Some(cutoff) = retention::count_cutoff(&runtime.db, max_count).await? {
            let mut after = None;
            loop {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                let candidates = retention::at_or_below(&runtime.db, cutoff, after, batch).await?;
                let Some(last) = candidates.last() else { break };
                after = Some(last.id);
                delete_batch(runtime, &candidates, "max_count", report).await?;
                tokio::time::sleep(settings.pause).await;
            }
        }
    }

    // The outbox's ordering keys whose messages went with their runs.
    loop {
        let deleted = crate::store::outbox::prune_keys(&runtime.db, batch).await?;
        report.outbox_keys += deleted;
        if deleted < batch as u64 || shutdown.is_cancelled() {
            break;
        }
        tokio::time::sleep(settings.pause).await;
    }

    let before = chrono::Utc::now()
        - chrono::Duration::from_std(settings.schedule_record_max_age).unwrap_or_default();
    loop {
        let deleted = schedules::prune_records(&runtime.db, before, batch).await?;
        report.schedule_records += deleted;
        if deleted < batch as u64 || shutdown.is_cancelled() {
            break;
        }
        tokio::time::sleep(settings.pause).await;
    }
    Ok(())
}

/// Deletes the batch's Jobs (those that have one), then the rows whose Job is gone.
async fn delete_batch(
    runtime: &Runtime,
    candidates: &[Candidate],
    rule: &'static str,
    report: &mut PruneReport,
) -> Result<(), sqlx::Error> {
    let outcomes: Vec<(uuid::Uuid, bool, bool)> = futures::stream::iter(candidates.to_vec())
        .map(|candidate| async move {
            match (&candidate.job_namespace, &candidate.job_name) {
                (Some(namespace), Some(name)) => {
                    match runtime.cluster.delete_job(namespace, name).await {
                        Ok(()) => (candidate.id, true, true),
                        Err(error) => {
                            tracing::warn!(run_id = %candidate.id, job = %name, error = %crate::error::chain(&error), "pruner: deleting a Job failed; its run is kept for the next pass");
                            (candidate.id, false, false)
                        }
                    }
                }
                _ => (candidate.id, true, false),
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let ids: Vec<uuid::Uuid> = outcomes.iter().filter(|o| o.1).map(|o| o.0).collect();
    let jobs = outcomes.iter().filter(|o| o.2).count() as u64;
    let deleted = retention::delete(&runtime.db, &ids).await?;
    runtime.final_runs.forget(&ids);
    metrics::counter!("vfi_runs_pruned_total", "rule" => rule).increment(deleted);
    metrics::counter!("vfi_pruned_jobs_deleted_total").increment(jobs);
    *report.runs.entry(rule).or_default() += deleted;
    report.jobs += jobs;
    tracing::debug!(rule, deleted, jobs, "pruned a batch");
    Ok(())
}
