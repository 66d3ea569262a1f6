//! The pending limit: a run whose Job was created but none of whose pods started within
//! `MAX_PENDING_SECS` (an image that cannot be pulled, no node that fits, pods refused by
//! admission) fails with the reason it waited for, and its Job is deleted as for a cancel. The
//! update is one guarded statement, so with several replicas each run fails once.

use super::Runtime;
use crate::store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn run(runtime: Runtime, shutdown: CancellationToken) {
    let limit = runtime.settings.max_pending;
    // Checked a few times per limit, at least once a second and at most every 30 s.
    let every = (limit / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let failed = match store::runs::fail_overdue_pending(&runtime.db, limit).await {
            Ok(failed) => failed,
            Err(error) => {
                tracing::warn!(error = %error, "failing runs pending too long failed; retried");
                continue;
            }
        };
        for run in failed {
            metrics::counter!("vfi_run_status_changes_total", "status" => "failed").increment(1);
            tracing::info!(run_id = %run.id, reason = run.status_reason.as_deref(),
                "run failed: pending longer than the limit");
            // The tracker deletes it too on the Job's next event, should this fail.
            if let Some(job) = &run.job {
                if let Err(error) = runtime.cluster.delete_job(&job.namespace, &job.name).await {
                    tracing::warn!(run_id = %run.id, error = %error, "deleting the Job of a run pending too long failed");
                }
            }
        }
    }
}
