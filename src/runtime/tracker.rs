//! The tracker: kube-runtime watchers on this installation's Jobs and pods write what the cluster
//! reports into Postgres. A watcher's re-list (`Init` .. `InitDone`) is the truth: after every
//! one, each unfinished run is checked against it, so a lost connection, a 410 Gone or a missed
//! `Delete` can delay a final state but never lose it. The Jobs' tracking finalizer is released
//! only once a run's outcome is stored. While a run is pending, why it cannot start (a pod's
//! waiting reason or unschedulable condition, the Job controller's `FailedCreate` Events) is
//! recorded on it.

use super::Runtime;
use crate::cluster::{keys, observe};
use crate::domain::{JobRef, RunStatus};
use crate::store::{self, runs::Observation};
use crate::telemetry;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Backoff between watch restarts: exponential with jitter, capped at 5 s (kube-runtime's default
/// goes to 30 s plus jitter, which after an API outage delays every status by up to a minute),
/// and reset by the first successful event.
struct WatchBackoff {
    builder: ExponentialBuilder,
    current: backon::ExponentialBackoff,
}

impl WatchBackoff {
    fn new() -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        WatchBackoff {
            current: builder.build(),
            builder,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.current.next()
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

pub async fn track_jobs(runtime: Runtime, namespace: String, shutdown: CancellationToken) {
    let api: Api<Job> = Api::namespaced(runtime.cluster.client.clone(), &namespace);
    let config = watcher::Config::default().labels(&runtime.cluster.settings.selector());
    let mut events = watcher::watcher(api, config)
        .backoff(WatchBackoff::new())
        .boxed();
    let mut listed = HashSet::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => {
                metrics::counter!("vfi_watch_errors_total", "kind" => "job").increment(1);
                tracing::warn!(%namespace, error = %error, "job watch failed; it restarts with backoff");
            }
            Some(Ok(Event::Init)) => {
                metrics::counter!("vfi_watch_relists_total", "kind" => "job").increment(1);
                listed.clear();
            }
            Some(Ok(Event::InitApply(job))) => {
                if let Some(id) = observe::run_id(job.metadata.labels.as_ref()) {
                    listed.insert(id);
                }
                job_changed(&runtime, &job).await;
            }
            Some(Ok(Event::InitDone)) => reconcile(&runtime, &namespace, &listed).await,
            Some(Ok(Event::Apply(job))) => job_changed(&runtime, &job).await,
            Some(Ok(Event::Delete(job))) => job_gone(&runtime, &job).await,
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
async fn job_changed(runtime: &Runtime, job: &Job) {
    let Some(run_id) = observe::run_id(job.metadata.labels.as_ref()) else {
        return;
    };
    let seen = observe::observe_job(job);
    record(runtime, run_id, job, &seen).await;
}

/// A Job vanished from the API. With the tracking finalizer this only happens after the outcome
/// was recorded, unless someone removed the finalizer: then whatever it last said is final.
async fn job_gone(runtime: &Runtime, job: &Job) {
    let Some(run_id) = observe::run_id(job.metadata.labels.as_ref()) else {
        return;
    };
    let mut seen = observe::observe_job(job);
    if !seen.status.is_final() {
        seen.status = RunStatus::Lost;
        seen.reason = Some("JobDeleted".into());
        seen.message = Some("the Job was deleted before it finished".into());
    }
    record(runtime, run_id, job, &seen).await;
}

async fn record(runtime: &Runtime, run_id: Uuid, job: &Job, seen: &observe::JobObservation) {
    let job_ref = job_ref(job);
    if seen.status.is_final() {
        // Pod events may trail the Job's: record the pods first, so a client that sees the run
        // finished also sees all its pods.
        if let Ok(Some(run)) = store::runs::get(&runtime.db, run_id).await {
            if !run.status.is_final() {
                sync_pods(runtime, &job_ref.namespace, run_id).await;
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
    let observed = match store::runs::observe(&runtime.db, run_id, &observation).await {
        Ok(observed) => observed,
        Err(error) => {
            // The next event or re-list for this Job tries again.
            tracing::warn!(%run_id, error = %error, "recording a Job's state failed");
            return;
        }
    };
    let holds_finalizer = job
        .finalizers()
        .iter()
        .any(|f| f == keys::TRACKING_FINALIZER);
    let Some(observed) = observed else {
        metrics::counter!("vfi_orphan_jobs_total").increment(1);
        tracing::warn!(%run_id, job = %job_ref.name, namespace = %job_ref.namespace,
            "a Job labelled as this installation's has no run; leaving it alone");
        if seen.deleting && holds_finalizer {
            release(runtime, job).await;
        }
        return;
    };
    if observed.previous != observed.current {
        metrics::counter!("vfi_run_status_changes_total", "status" => observed.current.as_str())
            .increment(1);
        record_finished(&observed);
        tracing::info!(%run_id, from = %observed.previous, to = %observed.current, "run status changed");
    }
    if !observed.current.is_final() {
        return;
    }
    // The service ended the run while its Job lives on: cancelled, or failed by the pending
    // limit (a Job that fails by itself says so; one still pending was failed by the service).
    let ended_by_service = observed.current == RunStatus::Cancelled
        || (observed.current == RunStatus::Failed && seen.status == RunStatus::Pending);
    if ended_by_service && !seen.deleting {
        if let Err(error) = runtime
            .cluster
            .delete_job(&job_ref.namespace, &job_ref.name)
            .await
        {
            tracing::warn!(%run_id, error = %error, "deleting a finished run's Job failed; retried on its next event");
        }
    } else if holds_finalizer {
        release(runtime, job).await;
    }
}

/// Records the duration of a run that this change finished.
fn record_finished(observed: &store::runs::Observed) {
    if let (true, Some(run)) = (observed.current.is_final(), &observed.changed) {
        telemetry::run_finished(
            run.task_name.as_deref(),
            observed.current,
            run.created_at,
            run.started_at,
            run.finished_at,
        );
    }
}

async fn release(runtime: &Runtime, job: &Job) {
    if let Err(error) = runtime.cluster.release_job(job).await {
        tracing::warn!(job = %job.name_any(), error = %error, "releasing the Job's finalizer failed; retried on its next event");
    }
}

/// After a re-list: every unfinished run whose Job was not listed is looked up directly (it may
/// have been created after the list was taken); a Job that is really gone makes its run `lost`.
#[tracing::instrument(skip(runtime, listed))]
async fn reconcile(runtime: &Runtime, namespace: &str, listed: &HashSet<Uuid>) {
    let live = match store::runs::live_with_jobs(&runtime.db, namespace).await {
        Ok(live) => live,
        Err(error) => {
            tracing::warn!(error = %error, "reconcile: reading unfinished runs failed");
            return;
        }
    };
    let api = runtime.cluster.jobs(namespace);
    for run in live.into_iter().filter(|r| !listed.contains(&r.id)) {
        let Some(job_ref) = run.job.clone() else {
            continue;
        };
        match api.get_opt(&job_ref.name).await {
            Ok(Some(job)) => job_changed(runtime, &job).await,
            Ok(None) => {
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
                match store::runs::observe(&runtime.db, run.id, &observation).await {
                    Ok(Some(observed)) => record_finished(&observed),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(run_id = %run.id, error = %error, "reconcile: recording a lost run failed");
                    }
                }
            }
            Err(error) => {
                tracing::warn!(run_id = %run.id, error = %error, "reconcile: looking up a Job failed");
            }
        }
    }
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
                tracing::warn!(%namespace, error = %error, "periodic reconcile failed");
            }
        }
    }
}

async fn reconcile_by_listing(runtime: &Runtime, namespace: &str) -> Result<(), kube::Error> {
    let api = runtime.cluster.jobs(namespace);
    let mut params = ListParams::default()
        .labels(&runtime.cluster.settings.selector())
        .limit(500);
    let mut listed = HashSet::new();
    loop {
        let page = api.list(&params).await?;
        for job in &page.items {
            if let Some(id) = observe::run_id(job.metadata.labels.as_ref()) {
                listed.insert(id);
            }
            job_changed(runtime, job).await;
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    reconcile(runtime, namespace, &listed).await;
    Ok(())
}

pub async fn track_pods(runtime: Runtime, namespace: String, shutdown: CancellationToken) {
    let api: Api<Pod> = Api::namespaced(runtime.cluster.client.clone(), &namespace);
    let config = watcher::Config::default().labels(&runtime.cluster.settings.selector());
    let mut events = watcher::watcher(api, config)
        .backoff(WatchBackoff::new())
        .boxed();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => {
                metrics::counter!("vfi_watch_errors_total", "kind" => "pod").increment(1);
                tracing::warn!(%namespace, error = %error, "pod watch failed; it restarts with backoff");
            }
            Some(Ok(Event::Init)) => {
                metrics::counter!("vfi_watch_relists_total", "kind" => "pod").increment(1);
            }
            Some(Ok(Event::InitDone)) => {}
            Some(Ok(Event::InitApply(pod) | Event::Apply(pod))) => {
                pod_changed(&runtime, &pod, false).await;
                runtime.archiver.observe(&pod, &shutdown);
            }
            Some(Ok(Event::Delete(pod))) => pod_changed(&runtime, &pod, true).await,
        }
    }
}

/// Lists a run's pods and records each.
async fn sync_pods(runtime: &Runtime, namespace: &str, run_id: Uuid) {
    let params = ListParams::default().labels(&format!("{}={run_id}", keys::RUN_ID));
    match runtime.cluster.pods(namespace).list(&params).await {
        Ok(pods) => {
            for pod in &pods.items {
                pod_changed(runtime, pod, false).await;
            }
        }
        Err(error) => {
            tracing::warn!(%run_id, error = %error, "listing a finished run's pods failed")
        }
    }
}

async fn pod_changed(runtime: &Runtime, pod: &Pod, deleted: bool) {
    let Some(run_id) = observe::run_id(pod.metadata.labels.as_ref()) else {
        return;
    };
    let record = observe::pod_record(pod, deleted);
    if let Err(error) = store::pods::upsert(&runtime.db, run_id, &record).await {
        tracing::warn!(%run_id, pod = %record.name, error = %error, "recording a pod failed");
        return;
    }
    if !deleted {
        if let Some((reason, message)) = observe::pod_waiting(pod) {
            let waiting = store::runs::Waiting {
                reason: &reason,
                message: &message,
            };
            if let Err(error) = store::runs::note_waiting(&runtime.db, run_id, &waiting).await {
                tracing::warn!(%run_id, error = %error, "recording why a run waits failed");
            }
        }
    }
    // A running pod is the earliest sign a run is running; the Job's status follows later.
    if record.phase == "Running" && !deleted {
        if let Err(error) = store::runs::advance(&runtime.db, run_id, RunStatus::Running).await {
            tracing::warn!(%run_id, error = %error, "recording a running run failed");
        }
    }
}

/// Follows the Job controller's `FailedCreate` Events in `namespace` (pods refused by admission,
/// quota, ...): the run of that Job records the API server's message while it is pending.
pub async fn track_failed_creates(
    runtime: Runtime,
    namespace: String,
    shutdown: CancellationToken,
) {
    let api = runtime.cluster.events(&namespace);
    let config = watcher::Config::default().fields("involvedObject.kind=Job,reason=FailedCreate");
    let mut events = watcher::watcher(api, config)
        .backoff(WatchBackoff::new())
        .applied_objects()
        .boxed();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => {
                metrics::counter!("vfi_watch_errors_total", "kind" => "event").increment(1);
                tracing::warn!(%namespace, error = %error, "event watch failed; it restarts with backoff");
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
                    tracing::warn!(job = %job.name, error = %error, "recording a FailedCreate failed");
                }
            }
        }
    }
}
