//! The sweep of runs' parameter Secrets (issue 18): a Secret no Job owns is given to its run's
//! Job once the run has one, and deleted once its run is final (cancelled before its Job was
//! created, failed to launch) or was never recorded (the service stopped between creating the
//! Secret and committing the run, see `http::runs::create`). The launcher does both on its own
//! path; this loop covers what a crash or a failed call left behind. Woken by cancellations and
//! by a poll.

use super::Runtime;
use crate::store::runs;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the sweep looks when nothing wakes it.
const POLL: Duration = Duration::from_secs(30);
/// A Secret without a run row is left alone this long: its request may still be committing.
const GRACE: chrono::Duration = chrono::Duration::minutes(5);

pub async fn run(runtime: Runtime, shutdown: CancellationToken) {
    let mut wake = runtime.notifications.subscribe(runs::CANCELLED_CHANNEL);
    loop {
        for namespace in runtime.cluster.settings.namespaces.clone() {
            if let Err(error) = sweep(&runtime, &namespace).await {
                tracing::warn!(%namespace, error = %error, "parameter Secret sweep failed; retrying later");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.recv() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// One pass over `namespace`'s unowned parameter Secrets.
pub async fn sweep(runtime: &Runtime, namespace: &str) -> anyhow::Result<()> {
    let cluster = &runtime.cluster;
    for (run_id, created) in cluster.unowned_param_secrets(namespace).await? {
        let run = runs::get(&runtime.db, run_id).await?;
        let delete = match &run {
            None => created.is_none_or(|t| chrono::Utc::now() - t > GRACE),
            Some(run) => run.status.is_final(),
        };
        if delete {
            cluster.delete_param_secret(run_id, namespace).await?;
            tracing::info!(%run_id, "deleted the parameter Secret of a run without a Job");
        } else if let Some(job) = run.as_ref().and_then(|r| r.job.as_ref()) {
            if let Some(uid) = &job.uid {
                cluster
                    .give_param_secret_to_job(run_id, &job.namespace, &job.name, uid)
                    .await?;
            }
        }
    }
    Ok(())
}
