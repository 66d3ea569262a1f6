//! The canceller: deletes the Jobs of cancelled runs (background propagation: the garbage
//! collector removes their pods). The API only records the cancellation; this loop acts on it,
//! woken by the database's NOTIFY and, as a safety net, by a poll.

use super::Runtime;
use crate::store::runs;
use tokio_util::sync::CancellationToken;

pub async fn run(runtime: Runtime, shutdown: CancellationToken) {
    // Woken by the process's notification hub (and by a catch-up after it reconnects).
    let mut wake = runtime.notifications.subscribe(runs::CANCELLED_CHANNEL);
    loop {
        if let Err(error) = delete_cancelled_jobs(&runtime).await {
            tracing::warn!(error = %crate::error::chain(&error), "canceller: reading cancelled runs failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.recv() => {}
            _ = tokio::time::sleep(runtime.settings.launcher_poll) => {}
        }
    }
}

async fn delete_cancelled_jobs(runtime: &Runtime) -> Result<(), sqlx::Error> {
    loop {
        let batch = runs::jobs_to_delete(&runtime.db, 100).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut progressed = false;
        for (run_id, job) in batch {
            match runtime.cluster.delete_job(&job.namespace, &job.name).await {
                Ok(()) => {
                    tracing::info!(%run_id, job = %job.name, "deleted the Job of a cancelled run");
                    runs::job_deleted(&runtime.db, run_id).await?;
                    progressed = true;
                }
                Err(error) => {
                    tracing::warn!(%run_id, job = %job.name, error = %crate::error::chain(&error), "deleting a cancelled run's Job failed; retrying");
                }
            }
        }
        if !progressed {
            return Ok(());
        }
    }
}
