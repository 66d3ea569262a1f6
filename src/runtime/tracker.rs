//! The tracker: the cluster's watches of this installation's Jobs and pods (see
//! [`crate::cluster::watch`]) write what they report into Postgres. A watch's re-list (`Init` ..
//! `InitDone`) is the truth: after every one, each unfinished run is checked against it, so a
//! lost connection, a 410 Gone or a missed `Delete` can delay a final state but never lose it.
//! The Jobs' tracking finalizer is released only once a run's outcome is stored. While a run is
//! pending, why it cannot start (a pod's waiting reason or unschedulable condition, the Job
//! controller's `FailedCreate` Events) is recorded on it.

use super::requeue::Requeue;
use super::Runtime;
use crate::cluster::watch::Event;
use crate::cluster::{keys, observe};
use crate::domain::{JobRef, RunStatus};
use crate::store::{self, runs::Observation};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the job tracker looks at again after a failure.
#[derive(Clone)]
enum Look {
    Changed(Box<Job>),
    Gone(Box<Job>),
    /// The check of unfinished runs against a re-list (the run ids it listed).
    Reconcile(Arc<HashSet<Uuid>>),
}

/// The key of a Job in the requeue: one entry per Job.
fn requeue_key(job: &Job) -> String {
    format!(
        "job/{}/{}",
        job.namespace().unwrap_or_default(),
        job.name_any()
    )
}

const RECONCILE_KEY: &str = "reconcile";

pub async fn track_jobs(runtime: Runtime, namespace: String, shutdown: CancellationToken) {
    let mut events = runtime
        .cluster
        .watch_jobs(&namespace, runtime.settings.watch_timeout_secs);
    let mut listed = HashSet::new();
    // A failed write or API call re-queues its Job with backoff (250 ms doubling up to 5 s), so a
    // database outage delays a final state by at most a few seconds after it ends.
    let mut requeue = Requeue::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let look = tokio::select! {
            _ = shutdown.cancelled() => return,
            (_, look) = requeue.next() => {
                metrics::counter!("vfi_tracker_requeues_total").increment(1);
                look
            }
            event = events.next() => match event {
                None => return,
                Some(Err(error)) => {
                    metrics::counter!("vfi_watch_errors_total", "kind" => "job").increment(1);
                    tracing::warn!(%namespace, error = %crate::error::chain(&error), "job watch failed; it restarts with backoff");
                    continue;
                }
                Some(Ok(Event::Init)) => {
                    metrics::counter!("vfi_watch_relists_total", "kind" => "job").increment(1);
                    listed.clear();
                    continue;
                }
                Some(Ok(Event::InitApply(job))) => {
                    let Some(id) = observe::run_id(job.metadata.labels.as_ref()) else {
                        continue;
                    };
                    if settled_job(&job) {
                        // Not listed: should its run be unfinished after all, the check after
                        // the re-list looks the Job up.
                        continue;
                    }
                    listed.insert(id);
                    Look::Changed(Box::new(job))
                }
                Some(Ok(Event::InitDone)) => Look::Reconcile(Arc::new(std::mem::take(&mut listed))),
                Some(Ok(Event::Apply(job))) => Look::Changed(Box::new(job)),
                Some(Ok(Event::Delete(job))) => Look::Gone(Box::new(job)),
            },
        };
        let (key, outcome) = match &look {
            Look::Changed(job) => (requeue_key(job), job_changed(&runtime, job).await),
            Look::Gone(job) => (requeue_key(job), job_gone(&runtime, job).await),
            Look::Reconcile(listed) => (
                RECONCILE_KEY.to_string(),
                reconcile(&runtime, &namespace, listed).await,
            ),
        };
        match outcome {
            Ok(()) => requeue.succeeded(&key),
            Err(error) => {
                tracing::warn!(%namespace, %key, error = %crate::error::chain(&error), "tracking failed; looking again with backoff");
                requeue.failed(key, look);
            }
        }
    }
}

fn job_ref(job: &Job) -> JobRef {
    JobRef {
        namespace: job.namespace().unwrap_or_default(),
        name: job.name_any(),
        uid: job.uid(),
    }
}

/// Records what a Job says, then acts on runs that are final: deletes the Job of a cancelled
/// run, and releases the tracking finalizer once the outcome is stored.
#[tracing::instrument(skip_all, fields(job = %job.name_any()))]
async fn job_changed(runtime: &Runtime, job: &Job) -> crate::error::Result<()> {
    let Some(run_id) = observe::run_id(job.metadata.labels.as_ref()) else {
        return Ok(());
    };
    let seen = observe::observe_job(job);
    record(runtime, run_id, job, &seen).await
}

/// A finished Job whose tracking finalizer is gone needs nothing: the finalizer is released only
/// once the run's outcome is stored. A re-list skips these (after a restart, thousands of
/// retained Jobs), and the check after it looks at any whose run is somehow still unfinished.
fn settled_job(job: &Job) -> bool {
    !job.finalizers()
        .iter()
        .any(|f| f == keys::TRACKING_FINALIZER)
        && observe::observe_job(job).status.is_final()
}

/// A pod that ended and whose log-capture finalizer is gone needs nothing: its log is stored (or
/// given up on) and its record was written when it ended, and again with its Job's final state.
fn settled_pod(pod: &Pod) -> bool {
    let ended = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    ended && !pod.finalizers().iter().any(|f| f == keys::LOG_FINALIZER)
}

/// A Job vanished from the API. With the tracking finalizer this only happens after the outcome
/// was recorded, unless someone removed the finalizer: then whatever it last said is final.
async fn job_gone(runtime: &Runtime, job: &Job) -> crate::error::Result<()> {
    let Some(run_id) = observe::run_id(job.metadata.labels.as_ref()) else {
        return Ok(());
    };
    let mut seen = observe::observe_job(job);
    if !seen.status.is_final() {
        seen.status = RunStatus::Lost;
        seen.reason = Some("JobDeleted".into());
        seen.message = Some("the Job was deleted before it finished".into());
    }
    record(runtime, run_id, job, &seen).await
}

/// Records what a Job says about its run, then acts on runs that are final. A failed write or
/// API call is returned, for the caller to look at the Job again.
async fn record(
    runtime: &Runtime,
    run_id: Uuid,
    job: &Job,
    seen: &observe::JobObservation,
) -> crate::error::Result<()> {
    let job_ref = job_ref(job);
    if seen.status.is_final() {
        // Pod events may trail the Job's: record the pods first, so a client that sees the run
        // finished also sees all its pods.
        if let Some(run) = store::runs::get(&runtime.db, run_id).await? {
            if !run.status.is_final() {
                sync_pods(runtime, &job_ref.namespace, run_id).await?;
            }
        }
    }
    let observation = Observation {
        status: seen.status,
        reason: seen.reason.as_deref(),
        message: seen.message.as_deref(),
        counts: seen.counts,
        started_at: seen.started_at,
        finished_at: seen.finished_at,
        job: Some(&job_ref),
    };
    let observed = store::runs::observe(&runtime.db, run_id, &observation).await?;
    let holds_finalizer = job
        .finalizers()
        .iter()
        .any(|f| f == keys::TRACKING_FINALIZER);
    let Some(observed) = observed else {
        metrics::counter!("vfi_orphan_jobs_total").increment(1);
        tracing::warn!(%run_id, job = %job_ref.name, namespace = %job_ref.namespace,
            "a Job labelled as this installation's has no run; leaving it alone");
        if seen.deleting && holds_finalizer {
            release(runtime, job).await?;
        }
        return Ok(());
    };
    if observed.previous != observed.current {
        tracing::info!(%run_id, from = %observed.previous, to = %observed.current, "run status changed");
    }
    if !observed.current.is_final() {
        return Ok(());
    }
    // The run is over but its Job is not: cancelled; failed by the pending limit (a Job that
    // fails by itself says so; one still pending was failed by the service); or failed before
    // the Job came (e.g. LaunchTimeout while the create hung, and the API server carried the
    // create out later). The Job must not run on unrecorded: delete it.
    let leftover = observed.current == RunStatus::Cancelled
        || (observed.current == RunStatus::Failed && seen.status == RunStatus::Pending)
        || (!seen.status.is_final() && !observed.job_recorded);
    if leftover && !seen.deleting {
        runtime
            .cluster
            .delete_job(&job_ref.namespace, &job_ref.name)
            .await
            .map_err(anyhow::Error::from)?;
    } else if holds_finalizer {
        release(runtime, job).await?;
    }
    Ok(())
}

async fn release(runtime: &Runtime, job: &Job) -> crate::error::Result<()> {
    runtime
        .cluster
        .release_job(job, runtime.settings.finished_job_ttl_secs)
        .await
        .map_err(|error| anyhow::Error::from(error).context("releasing the Job's finalizer"))?;
    Ok(())
}

/// After a re-list: every unfinished run whose Job was not listed is looked up directly (it may
/// have been created after the list was taken); a Job that is really gone makes its run `lost`.
#[tracing::instrument(skip(runtime, listed))]
async fn reconcile(
    runtime: &Runtime,
    namespace: &str,
    listed: &HashSet<Uuid>,
) -> crate::error::Result<()> {
    let live = store::runs::live_with_jobs(&runtime.db, namespace).await?;
    // One run's failure does not stop the others; the first one is returned, for the whole
    // check to be done again.
    let mut first_error = None;
    for run in live.into_iter().filter(|r| !listed.contains(&r.id)) {
        let Some(job_ref) = run.job.clone() else {
            continue;
        };
        let outcome = match runtime.cluster.get_job(namespace, &job_ref.name).await {
            Ok(Some(job)) => job_changed(runtime, &job).await,
            Ok(None) => record_missing(runtime, &run, &job_ref).await,
            Err(error) => Err(anyhow::Error::from(error)
                .context("reconcile: looking up a Job")
                .into()),
        };
        if let Err(error) = outcome {
            tracing::warn!(run_id = %run.id, error = %crate::error::chain(&error), "reconcile: checking a run failed");
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A run whose Job is no longer in the cluster is `lost`.
async fn record_missing(
    runtime: &Runtime,
    run: &crate::domain::Run,
    job_ref: &JobRef,
) -> crate::error::Result<()> {
    metrics::counter!("vfi_reconcile_corrections_total", "kind" => "lost").increment(1);
    tracing::warn!(run_id = %run.id, job = %job_ref.name, "reconcile: the run's Job is gone; the run is lost");
    let observation = Observation {
        status: RunStatus::Lost,
        reason: Some("JobMissing"),
        message: Some("the Job was no longer in the cluster before the run finished"),
        counts: run.pods,
        started_at: None,
        finished_at: None,
        job: None,
    };
    store::runs::observe(&runtime.db, run.id, &observation).await?;
    Ok(())
}

/// Lists every namespace's Jobs now and then and reconciles, as a safety net behind the watches.
pub async fn reconcile_periodically(runtime: Runtime, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(runtime.settings.reconcile_interval) => {}
        }
        for namespace in runtime.cluster.settings.namespaces.clone() {
            if let Err(error) = reconcile_by_listing(&runtime, &namespace).await {
                tracing::warn!(%namespace, error = %crate::error::chain(&error), "periodic reconcile failed");
            }
        }
    }
}

async fn reconcile_by_listing(runtime: &Runtime, namespace: &str) -> Result<(), kube::Error> {
    let mut listed = HashSet::new();
    let mut continue_token = None;
    loop {
        let page = runtime
            .cluster
            .list_jobs(namespace, continue_token.as_deref())
            .await?;
        for job in page.items.iter().filter(|job| !settled_job(job)) {
            if let Some(id) = observe::run_id(job.metadata.labels.as_ref()) {
                listed.insert(id);
            }
            if let Err(error) = job_changed(runtime, job).await {
                tracing::warn!(job = %job.name_any(), error = %crate::error::chain(&error), "periodic reconcile: recording a Job failed");
            }
        }
        continue_token = page.continue_token;
        if continue_token.is_none() {
            break;
        }
    }
    if let Err(error) = reconcile(runtime, namespace, &listed).await {
        tracing::warn!(%namespace, error = %crate::error::chain(&error), "periodic reconcile incomplete");
    }
    Ok(())
}

pub async fn track_pods(runtime: Runtime, namespace: String, shutdown: CancellationToken) {
    let mut events = runtime
        .cluster
        .watch_pods(&namespace, runtime.settings.watch_timeout_secs);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => {
                metrics::counter!("vfi_watch_errors_total", "kind" => "pod").increment(1);
                tracing::warn!(%namespace, error = %crate::error::chain(&error), "pod watch failed; it restarts with backoff");
            }
            Some(Ok(Event::Init)) => {
                metrics::counter!("vfi_watch_relists_total", "kind" => "pod").increment(1);
            }
            Some(Ok(Event::InitDone)) => {}
            // A re-list (after a restart: every retained pod) skips settled pods.
            Some(Ok(Event::InitApply(pod))) if settled_pod(&pod) => {}
            Some(Ok(Event::InitApply(pod) | Event::Apply(pod))) => {
                log_pod_failure(&pod, pod_changed(&runtime, &pod, false).await);
                if !settled_pod(&pod) {
                    runtime.archiver.observe(&pod, &shutdown);
                }
            }
            Some(Ok(Event::Delete(pod))) => {
                log_pod_failure(&pod, pod_changed(&runtime, &pod, true).await)
            }
        }
    }
}

/// A pod record that could not be written is written again with its Job's final state (see
/// [`record`]), or with the pod's next event.
fn log_pod_failure(pod: &Pod, outcome: crate::error::Result<()>) {
    if let Err(error) = outcome {
        tracing::warn!(pod = %pod.name_any(), error = %crate::error::chain(&error), "recording a pod failed");
    }
}

/// Lists a run's pods and records each. A failed list is logged (the run's final state is not
/// held up by it); a failed write is returned.
async fn sync_pods(runtime: &Runtime, namespace: &str, run_id: Uuid) -> crate::error::Result<()> {
    match runtime.cluster.run_pods(namespace, run_id).await {
        Ok(pods) => {
            for pod in &pods {
                pod_changed(runtime, pod, false).await?;
            }
        }
        Err(error) => {
            tracing::warn!(%run_id, error = %crate::error::chain(&error), "listing a finished run's pods failed")
        }
    }
    Ok(())
}

async fn pod_changed(runtime: &Runtime, pod: &Pod, deleted: bool) -> crate::error::Result<()> {
    let Some(run_id) = observe::run_id(pod.metadata.labels.as_ref()) else {
        return Ok(());
    };
    let record = observe::pod_record(pod, deleted);
    store::pods::upsert(&runtime.db, run_id, &record).await?;
    if !deleted {
        if let Some((reason, message)) = observe::pod_waiting(pod) {
            let waiting = store::runs::Waiting {
                reason: &reason,
                message: &message,
            };
            store::runs::note_waiting(&runtime.db, run_id, &waiting).await?;
        }
    }
    // A running pod is the earliest sign a run is running; the Job's status follows later.
    if record.phase == "Running" && !deleted {
        store::runs::advance(&runtime.db, run_id, RunStatus::Running).await?;
    }
    Ok(())
}

/// Follows the Job controller's `FailedCreate` Events in `namespace` (pods refused by admission,
/// quota, ...): the run of that Job records the API server's message while it is pending.
pub async fn track_failed_creates(
    runtime: Runtime,
    namespace: String,
    shutdown: CancellationToken,
) {
    let mut events = runtime.cluster.watch_failed_creates(&namespace);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => {
                metrics::counter!("vfi_watch_errors_total", "kind" => "event").increment(1);
                tracing::warn!(%namespace, error = %crate::error::chain(&error), "event watch failed; it restarts with backoff");
            }
            Some(Ok(event)) => {
                let Some((job, message)) = observe::failed_create(&event) else {
                    continue;
                };
                let waiting = store::runs::Waiting {
                    reason: "FailedCreate",
                    message: &message,
                };
                if let Err(error) =
                    store::runs::note_waiting_for_job(&runtime.db, &job, &waiting).await
                {
                    tracing::warn!(job = %job.name, error = %crate::error::chain(&error), "recording a FailedCreate failed");
                }
            }
        }
    }
}
