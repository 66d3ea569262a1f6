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

/// What the sweep does with an unowned parameter Secret.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Its run is final, or was never recorded: no Job will own it.
    Delete,
    /// Its run has a Job: make the Job its owner.
    GiveTo(crate::domain::JobRef),
    /// Its run may still get a Job (or its request may still be committing).
    Keep,
}

/// The sweep's decision for a Secret of `run` (`None`: no such run) created at `created`.
pub fn decide(
    run: Option<&crate::domain::Run>,
    created: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Action {
    match run {
        None if created.is_none_or(|t| now - t > GRACE) => Action::Delete,
        None => Action::Keep,
        Some(run) if run.status.is_final() => Action::Delete,
        Some(run) => match &run.job {
            Some(job) if job.uid.is_some() => Action::GiveTo(job.clone()),
            _ => Action::Keep,
        },
    }
}

/// One pass over `namespace`'s unowned parameter Secrets.
pub async fn sweep(runtime: &Runtime, namespace: &str) -> anyhow::Result<()> {
    let cluster = &runtime.cluster;
    for (run_id, created) in cluster.unowned_param_secrets(namespace).await? {
        let run = runs::get(&runtime.db, run_id).await?;
        match decide(run.as_ref(), created, chrono::Utc::now()) {
            Action::Delete => {
                cluster.delete_param_secret(run_id, namespace).await?;
                tracing::info!(%run_id, "deleted the parameter Secret of a run without a Job");
            }
            Action::GiveTo(job) => {
                let uid = job.uid.as_deref().unwrap_or_default();
                cluster
                    .give_param_secret_to_job(run_id, &job.namespace, &job.name, uid)
                    .await?;
            }
            Action::Keep => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobRef, Run, RunStatus, RunTemplate, Trigger};

    fn run(status: RunStatus, job: Option<JobRef>) -> Run {
        let template = RunTemplate::new("busybox", vec![]);
        Run {
            id: uuid::Uuid::nil(),
            number: 1,
            task: None,
            status,
            status_reason: None,
            status_message: None,
            trigger: Trigger::Api,
            rerun_of: None,
            labels: Default::default(),
            template,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            launch: Default::default(),
            job,
            pods: Default::default(),
            scheduled_time: None,
            report: None,
            priority: 0,
            queue_key: None,
            queue_limit: None,
            queue: None,
            superseded_by: None,
            params: Default::default(),
            retry_reason: None,
        }
    }

    #[test]
    fn a_secret_without_a_run_is_deleted_once_its_request_cannot_be_committing_any_more() {
        let now = chrono::Utc::now();
        let young = Some(now - chrono::Duration::seconds(10));
        let old = Some(now - chrono::Duration::minutes(6));
        assert_eq!(decide(None, young, now), Action::Keep);
        assert_eq!(decide(None, old, now), Action::Delete);
    }

    #[test]
    fn a_final_runs_secret_is_deleted_and_a_live_runs_is_given_to_its_job() {
        let now = chrono::Utc::now();
        let job = JobRef {
            namespace: "default".into(),
            name: "t-1".into(),
            uid: Some("u".into()),
        };
        let cancelled = run(RunStatus::Cancelled, None);
        assert_eq!(decide(Some(&cancelled), None, now), Action::Delete);
        let queued = run(RunStatus::Queued, None);
        assert_eq!(decide(Some(&queued), None, now), Action::Keep);
        let running = run(RunStatus::Running, Some(job.clone()));
        assert_eq!(decide(Some(&running), None, now), Action::GiveTo(job));
    }
}
