//! Watching this installation's Jobs, pods and the Job controller's `FailedCreate` Events:
//! kube-runtime watchers that re-list after a lost connection or a 410 Gone, restarted with a
//! short backoff. What the stream says is left to the caller (the tracker). Jobs and pods come
//! trimmed to what the tracker and the archiver read ([`trim_job`], [`trim_pod`]): a Job's pod
//! template, managed fields and annotations are most of its size, and the tracker keeps one of
//! each per active run, a Job as a [`SlimJob`] (k8s-openapi's `Job` is about 4 KB before a
//! single field is set, nearly all of it the empty pod template's inline structs).

use super::jobs::Cluster;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus, PodFailurePolicy};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::time::Duration;

/// A watch that failed; the stream goes on after a backoff.
pub use kube::runtime::watcher::Error as WatchError;
/// What a watch reports: `Init`, one `InitApply` per listed object and `InitDone` for each
/// (re-)list, then `Apply` / `Delete` per change.
pub use kube::runtime::watcher::Event;

/// A watch's events, `'static` so a loop can own it.
pub type Watch<K> = BoxStream<'static, Result<Event<K>, WatchError>>;

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

/// The backoff every watch of the service restarts with.
pub(super) fn backoff() -> impl kube::runtime::utils::Backoff {
    WatchBackoff::new()
}

impl Cluster {
    /// This installation's objects, each watch asking the API server to end it after
    /// `timeout_secs` (the watcher then resumes from its last resourceVersion).
    fn installation_watch(&self, timeout_secs: u32) -> watcher::Config {
        watcher::Config::default()
            .labels(&self.settings.selector())
            .timeout(timeout_secs)
    }

    /// Watches this installation's Jobs in `namespace`.
    pub fn watch_jobs(&self, namespace: &str, timeout_secs: u32) -> Watch<Job> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        watcher::watcher(api, self.installation_watch(timeout_secs))
            .modify(trim_job)
            .backoff(WatchBackoff::new())
            .boxed()
    }

    /// Watches this installation's pods in `namespace`.
    pub fn watch_pods(&self, namespace: &str, timeout_secs: u32) -> Watch<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        watcher::watcher(api, self.installation_watch(timeout_secs))
            .modify(trim_pod)
            .backoff(WatchBackoff::new())
            .boxed()
    }

    /// Follows the Job controller's `FailedCreate` Events in `namespace` (pods refused by
    /// admission, quota, ...): every Event as it is added or updated.
    pub fn watch_failed_creates(
        &self,
        namespace: &str,
    ) -> BoxStream<'static, Result<k8s_openapi::api::core::v1::Event, WatchError>> {
        let config =
            watcher::Config::default().fields("involvedObject.kind=Job,reason=FailedCreate");
        watcher::watcher(self.events(namespace), config)
            .backoff(WatchBackoff::new())
            .applied_objects()
            .boxed()
    }
}

/// Keeps of a Job what the tracker reads: its identity, labels, finalizers, deletion, its own
/// `ttlSecondsAfterFinished` (see [`Cluster::release_job`]), `suspend` (Kueue holds a suspended
/// Job), its `podFailurePolicy` (an `Ignore` rule means the Job controller does not count every
/// finished pod; the tracker's `pods_accounted_for` reads it) and its status. The pod template,
/// annotations and managed fields go.
pub fn trim_job(job: &mut Job) {
    trim_meta(&mut job.metadata);
    let spec = job.spec.take().unwrap_or_default();
    job.spec = Some(JobSpec {
        ttl_seconds_after_finished: spec.ttl_seconds_after_finished,
        suspend: spec.suspend,
        pod_failure_policy: spec.pod_failure_policy,
        ..Default::default()
    });
}

/// What [`trim_job`] keeps of a Job, without the Job's inline spec: the form the tracker holds
/// a Job in between its events, one per active run (issue 15: memory per active run; a trimmed
/// `Job` still takes about 4 KB, this about 0.6 KB plus its strings). [`SlimJob::to_job`] gives
/// the trimmed Job back for the code that reads Jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct SlimJob {
    pub metadata: ObjectMeta,
    ttl_seconds_after_finished: Option<i32>,
    suspend: Option<bool>,
    pod_failure_policy: Option<PodFailurePolicy>,
    status: Option<JobStatus>,
}

impl From<Job> for SlimJob {
    fn from(mut job: Job) -> Self {
        trim_meta(&mut job.metadata);
        let spec = job.spec.unwrap_or_default();
        SlimJob {
            metadata: job.metadata,
            ttl_seconds_after_finished: spec.ttl_seconds_after_finished,
            suspend: spec.suspend,
            pod_failure_policy: spec.pod_failure_policy,
            status: job.status,
        }
    }
}

impl SlimJob {
    /// The Job as [`trim_job`] leaves it.
    pub fn to_job(&self) -> Job {
        Job {
            metadata: self.metadata.clone(),
            spec: Some(JobSpec {
                ttl_seconds_after_finished: self.ttl_seconds_after_finished,
                suspend: self.suspend,
                pod_failure_policy: self.pod_failure_policy.clone(),
                ..Default::default()
            }),
            status: self.status.clone(),
        }
    }
}

/// Keeps of a pod what the tracker's record and the archiver read: identity, labels, the
/// completion-index annotation, finalizers, deletion, the controlling owner, its node and its
/// status. The containers' specs, volumes and managed fields go.
pub fn trim_pod(pod: &mut Pod) {
    trim_meta(&mut pod.metadata);
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.retain(|key, _| key == COMPLETION_INDEX);
    }
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
        node_name,
        ..Default::default()
    });
}

/// The annotation an Indexed Job's pods carry their index in (also a label since 1.28).
const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.generate_name = None;
    if let Some(owners) = meta.owner_references.as_mut() {
        owners.retain(|o| o.controller == Some(true));
    }
    // A Job's annotations are the service's own (the run number) or the user's; none is read.
    // A pod's are filtered by `trim_pod`.
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| !a.contains_key(COMPLETION_INDEX))
    {
        meta.annotations = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trimming_keeps_what_the_tracker_reads() {
        let full: Job = serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "batch", "uid": "u", "resourceVersion": "7",
                "labels": {"vfi-orchestrator.io/run-id": "r"}, "finalizers": ["f"],
                "annotations": {"vfi-orchestrator.io/run-number": "3"},
                "managedFields": [{"manager": "m", "operation": "Update"}]},
            "spec": {"ttlSecondsAfterFinished": 60, "suspend": true,
                "podFailurePolicy": {"rules": [{"action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget"}]}]},
                "template": {"spec": {"containers": [
                {"name": "main", "image": "x", "env": [{"name": "A", "value": "1"}]}]}}},
            "status": {"active": 1, "ready": 1}
        }))
        .unwrap();
        let mut trimmed = full.clone();
        trim_job(&mut trimmed);
        assert_eq!(
            crate::cluster::observe::observe_job(&trimmed),
            crate::cluster::observe::observe_job(&full)
        );
        assert_eq!(trimmed.metadata.labels, full.metadata.labels);
        assert_eq!(trimmed.metadata.finalizers, full.metadata.finalizers);
        assert_eq!(
            trimmed.spec.as_ref().unwrap().ttl_seconds_after_finished,
            Some(60)
        );
        assert_eq!(
            trimmed.spec.as_ref().unwrap().suspend,
            Some(true),
            "Kueue's hold"
        );
        assert_eq!(
            trimmed.spec.as_ref().unwrap().pod_failure_policy,
            full.spec.as_ref().unwrap().pod_failure_policy,
            "an Ignore rule changes which finished pods the Job controller counts"
        );
        assert!(trimmed.spec.as_ref().unwrap().template.spec.is_none());
        assert!(
            trimmed.metadata.managed_fields.is_none() && trimmed.metadata.annotations.is_none()
        );
        // The tracker's form of it holds the same fields, in a fraction of a Job's inline size.
        assert_eq!(SlimJob::from(full.clone()).to_job(), trimmed);
        assert!(std::mem::size_of::<SlimJob>() * 4 < std::mem::size_of::<Job>());

        let full: Pod = serde_json::from_value(json!({
            "metadata": {"name": "j-0-x", "namespace": "batch", "uid": "p",
                "annotations": {COMPLETION_INDEX: "0", "other": "y"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j",
                    "uid": "u", "controller": true}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": "x"}]},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let mut trimmed = full.clone();
        trim_pod(&mut trimmed);
        assert_eq!(
            crate::cluster::observe::pod_record(&trimmed, false),
            crate::cluster::observe::pod_record(&full, false)
        );
        assert_eq!(
            trimmed.metadata.owner_references,
            full.metadata.owner_references
        );
        assert!(trimmed.spec.unwrap().containers.is_empty());
    }
}
