//! The canceller: deletes the Jobs of cancelled runs (background propagation: the garbage
//! collector removes their pods). The API only records the cancellation; this loop acts on it,
//! woken by the database's NOTIFY and, as a safety net, by a poll.

use super::{listen, Runtime};
use crate::store::runs;
use tokio_util::sync::CancellationToken;

pub async fn run(runtime: Runtime, shutdown: CancellationToken) {
    let mut listener = listen(&runtime, runs::CANCELLED_CHANNEL).await;
    loop {
        if let Err(error) = delete_cancelled_jobs(&runtime).await {
            tracing::warn!(error = %error, "canceller: reading cancelled runs failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = super::notified(&mut listener) => {}
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
                    tracing::warn!(%run_id, job = %job.name, error = %error, "deleting a cancelled run's Job failed; retrying");
                }
            }
        }
        if !progressed {
            return Ok(());
        }
    }
}
