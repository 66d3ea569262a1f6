//! Reads what the cluster reports: a Job's status becomes the run's observed status and counts,
//! a Pod becomes a pod record. Pure functions over k8s-openapi types.

use super::keys;
use crate::domain::{JobRef, PodCounts, PodRecord, RunStatus};
use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What a Job says about its run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobObservation {
    pub status: RunStatus,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub counts: PodCounts,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The Job is being deleted (it has a deletionTimestamp).
    pub deleting: bool,
}

/// The run id a Job or pod is labelled with.
pub fn run_id(labels: Option<&std::collections::BTreeMap<String, String>>) -> Option<uuid::Uuid> {
    labels?.get(keys::RUN_ID)?.parse().ok()
}

/// Kubernetes timestamps (k8s-openapi uses jiff) as the chrono times the store uses.
pub fn to_utc(time: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(time.0.as_second(), time.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

pub fn observe_job(job: &Job) -> JobObservation {
    let status = job.status.clone().unwrap_or_default();
    let condition = |kind: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    let counts = PodCounts {
        active: status.active.unwrap_or(0),
        ready: status.ready.unwrap_or(0),
        succeeded: status.succeeded.unwrap_or(0),
        failed: status.failed.unwrap_or(0),
    };
    let deleting = job.metadata.deletion_timestamp.is_some();
    let (run_status, reason, message) = if let Some(c) = condition("Complete") {
        (RunStatus::Succeeded, c.reason.clone(), c.message.clone())
    } else if let Some(c) = condition("Failed") {
        (RunStatus::Failed, c.reason.clone(), c.message.clone())
    } else if deleting {
        (
            RunStatus::Lost,
            Some("JobDeleted".to_string()),
            Some("the Job was deleted before it finished".to_string()),
        )
    } else if counts.ready > 0 || counts.succeeded > 0 || counts.failed > 0 {
        (RunStatus::Running, None, None)
    } else {
        (RunStatus::Pending, None, None)
    };
    let finished_at = status.completion_time.as_ref().map(to_utc).or_else(|| {
        condition("Failed")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(to_utc)
    });
    JobObservation {
        status: run_status,
        reason,
        message,
        counts,
        started_at: status.start_time.as_ref().map(to_utc),
        finished_at,
        deleting,
    }
}

/// What a Job says about its run, with Kueue's part: a Job Kueue holds suspended (in a
/// LocalQueue, not finished, not being deleted) makes the run `admitting`, with the reason and
/// message of its Workload (`hold`, when the tracker has seen the Workload of this very Job).
pub fn observe_job_in_queue(job: &Job, hold: Option<&super::kueue::Hold>) -> JobObservation {
    let mut seen = observe_job(job);
    if seen.status.is_final() || seen.deleting || !super::kueue::held(job) {
        return seen;
    }
    let hold = hold.filter(|h| job.metadata.uid.as_deref() == Some(h.job_uid.as_str()));
    let (reason, message) = match hold {
        Some(hold) => (hold.reason.clone(), hold.message.clone()),
        None => (
            super::kueue::NO_WORKLOAD.to_string(),
            format!(
                "waiting for Kueue to create the Workload of this Job (LocalQueue {:?})",
                super::kueue::queue_name(job).unwrap_or_default()
            ),
        ),
    };
    seen.status = RunStatus::Admitting;
    seen.reason = Some(reason);
    seen.message = Some(message);
    seen
}

/// Container waiting reasons that mean the pod cannot start without a change (as opposed to
/// `ContainerCreating` or `PodInitializing`, which pass by themselves).
const STUCK_WAITING: [&str; 7] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why a pod that has not started cannot start, if the cluster says so: a container waiting
/// for a reason that will not pass by itself, or the scheduler's `PodScheduled=False`.
/// The reason of a pod's `DisruptionTarget` condition (eviction, preemption, node drain: the
/// control plane disrupted it), when it has one that is True.
pub fn pod_disruption(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == crate::domain::template::DISRUPTION_TARGET && c.status == "True")
        .map(|c| c.reason.clone().unwrap_or_else(|| c.type_.clone()))
}

pub fn pod_waiting(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref().is_some_and(|p| p != "Pending") {
        return None;
    }
    let waiting = status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| {
            w.reason
                .as_deref()
                .is_some_and(|r| STUCK_WAITING.contains(&r))
        });
    if let Some(w) = waiting {
        return Some((
            w.reason.clone().unwrap_or_default(),
            w.message.clone().unwrap_or_default(),
        ));
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
                c.message.clone().unwrap_or_default(),
            )
        })
}

/// A Job controller's `FailedCreate` Event (a pod refused by admission, quota, ...): the Job it
/// is about and the API server's message.
pub fn failed_create(event: &k8s_openapi::api::core::v1::Event) -> Option<(JobRef, String)> {
    let o = &event.involved_object;
    if event.reason.as_deref() != Some("FailedCreate") || o.kind.as_deref() != Some("Job") {
        return None;
    }
    Some((
        JobRef {
            namespace: o.namespace.clone()?,
            name: o.name.clone()?,
            uid: o.uid.clone(),
        },
        event.message.clone().unwrap_or_default(),
    ))
}

pub fn pod_record(pod: &Pod, deleted: bool) -> PodRecord {
    let meta = &pod.metadata;
    let status = pod.status.clone().unwrap_or_default();
    let container = status.container_statuses.iter().flatten().next();
    let state = container.and_then(|c| c.state.clone()).unwrap_or_default();
    let terminated = state.terminated.as_ref();
    let completion_index = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("batch.kubernetes.io/job-completion-index"))
        .or_else(|| {
            meta.annotations
                .as_ref()
                .and_then(|a| a.get("batch.kubernetes.io/job-completion-index"))
        })
        .and_then(|v| v.parse().ok());
    let reason = status
        .reason
        .clone()
        .or_else(|| terminated.and_then(|t| t.reason.clone()))
        .or_else(|| state.waiting.as_ref().and_then(|w| w.reason.clone()));
    let message = status
        .message
        .clone()
        .or_else(|| terminated.and_then(|t| t.message.clone()))
        .or_else(|| state.waiting.as_ref().and_then(|w| w.message.clone()));
    PodRecord {
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        completion_index,
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        phase: status.phase.clone().unwrap_or_else(|| "Pending".into()),
        exit_code: terminated.map(|t| t.exit_code),
        reason,
        message,
        restarts: container.map(|c| c.restart_count).unwrap_or(0),
        created_at: meta.creation_timestamp.as_ref().map(to_utc),
        started_at: terminated
            .and_then(|t| t.started_at.as_ref())
            .or_else(|| state.running.as_ref().and_then(|r| r.started_at.as_ref()))
            .or(status.start_time.as_ref())
            .map(to_utc),
        finished_at: terminated.and_then(|t| t.finished_at.as_ref()).map(to_utc),
        deleted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(status: serde_json::Value, deleting: bool) -> Job {
        let mut value = json!({"metadata": {"name": "j"}, "status": status});
        if deleting {
            value["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_new_job_is_pending_and_a_ready_pod_makes_it_running() {
        assert_eq!(
            observe_job(&job(json!({}), false)).status,
            RunStatus::Pending
        );
        assert_eq!(
            observe_job(&job(json!({"active": 1}), false)).status,
            RunStatus::Pending
        );
        let running = observe_job(&job(json!({"active": 1, "ready": 1}), false));
        assert_eq!(running.status, RunStatus::Running);
        assert_eq!(running.counts.ready, 1);
    }

    #[test]
    fn conditions_decide_the_final_status() {
        let complete = observe_job(&job(
            json!({"succeeded": 1, "completionTime": "2026-01-01T00:00:05Z", "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached"}]}),
            true,
        ));
        assert_eq!(complete.status, RunStatus::Succeeded);
        assert!(complete.finished_at.is_some());

        let failed = observe_job(&job(
            json!({"failed": 3, "conditions": [
                {"type": "FailureTarget", "status": "True"},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit",
                 "lastTransitionTime": "2026-01-01T00:00:05Z"}]}),
            false,
        ));
        assert_eq!(failed.status, RunStatus::Failed);
        assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert!(failed.finished_at.is_some());

        let target_only = observe_job(&job(
            json!({"ready": 1, "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}),
            false,
        ));
        assert_eq!(
            target_only.status,
            RunStatus::Running,
            "final only with Complete"
        );
    }

    #[test]
    fn a_job_kueue_holds_is_admitting_with_its_workloads_message() {
        let held = |suspend: bool, status: serde_json::Value| -> Job {
            serde_json::from_value(json!({
                "metadata": {"name": "j", "uid": "u1",
                    "labels": {"kueue.x-k8s.io/queue-name": "team-a"}},
                "spec": {"suspend": suspend, "template": {}},
                "status": status
            }))
            .unwrap()
        };
        let hold = crate::cluster::kueue::Hold {
            job_uid: "u1".into(),
            reason: "Pending".into(),
            message: "couldn't assign flavors".into(),
        };
        let seen = observe_job_in_queue(&held(true, json!({})), Some(&hold));
        assert_eq!(seen.status, RunStatus::Admitting);
        assert_eq!(seen.reason.as_deref(), Some("Pending"));
        assert_eq!(seen.message.as_deref(), Some("couldn't assign flavors"));

        // Another Job's Workload (same name, earlier uid) is not this one's.
        let other = crate::cluster::kueue::Hold {
            job_uid: "u0".into(),
            ..hold.clone()
        };
        let seen = observe_job_in_queue(&held(true, json!({})), Some(&other));
        assert_eq!(seen.reason.as_deref(), Some("WorkloadNotCreated"));
        assert!(seen.message.unwrap().contains("\"team-a\""));

        // Evicted while running: pods still terminating, still held.
        let evicted = held(true, json!({"active": 1, "ready": 1}));
        assert_eq!(
            observe_job_in_queue(&evicted, Some(&hold)).status,
            RunStatus::Admitting
        );
        // Admitted: the Job runs as any other.
        let admitted = held(false, json!({"active": 1, "ready": 1}));
        assert_eq!(
            observe_job_in_queue(&admitted, Some(&hold)).status,
            RunStatus::Running
        );
        // A finished Job is final whatever Kueue says.
        let done = held(
            true,
            json!({"succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True"}]}),
        );
        assert_eq!(
            observe_job_in_queue(&done, Some(&hold)).status,
            RunStatus::Succeeded
        );
    }

    #[test]
    fn a_job_deleted_before_finishing_is_lost() {
        let lost = observe_job(&job(json!({"active": 1}), true));
        assert_eq!(lost.status, RunStatus::Lost);
        assert_eq!(lost.reason.as_deref(), Some("JobDeleted"));
    }

    #[test]
    fn pod_records_carry_index_exit_code_and_reason() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "j-3-abcde", "uid": "u",
                "labels": {"batch.kubernetes.io/job-completion-index": "3"}},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 2,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                    "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:03Z"}}}]}
        }))
        .unwrap();
        let record = pod_record(&pod, false);
        assert_eq!(record.completion_index, Some(3));
        assert_eq!(record.exit_code, Some(137));
        assert_eq!(record.reason.as_deref(), Some("OOMKilled"));
        assert_eq!(record.restarts, 2);
        assert_eq!(record.node_name.as_deref(), Some("node-1"));
        assert!(record.started_at.is_some() && record.finished_at.is_some());
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn a_pod_that_cannot_start_says_why_and_one_that_is_starting_does_not() {
        let pulling = pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "main", "image": "x:doesnotexist", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}));
        assert_eq!(
            pod_waiting(&pulling),
            Some(("ImagePullBackOff".into(), "Back-off pulling image".into()))
        );
        let creating = pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
        assert_eq!(pod_waiting(&creating), None);
        let unschedulable = pod(json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]}));
        assert_eq!(
            pod_waiting(&unschedulable),
            Some((
                "Unschedulable".into(),
                "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into()
            ))
        );
        let running = pod(json!({"phase": "Running"}));
        assert_eq!(pod_waiting(&running), None);
    }

    #[test]
    fn only_a_jobs_failed_create_event_counts() {
        let event = |reason: &str, kind: &str| -> k8s_openapi::api::core::v1::Event {
            serde_json::from_value(json!({
                "metadata": {"name": "e", "namespace": "batch"},
                "involvedObject": {"kind": kind, "name": "run-1", "namespace": "batch", "uid": "u"},
                "reason": reason, "message": "Error creating: pods \"run-1-x\" is forbidden"
            }))
            .unwrap()
        };
        let (job, message) = failed_create(&event("FailedCreate", "Job")).unwrap();
        assert_eq!(
            (job.namespace.as_str(), job.name.as_str()),
            ("batch", "run-1")
        );
        assert_eq!(job.uid.as_deref(), Some("u"));
        assert!(message.starts_with("Error creating: "));
        assert!(failed_create(&event("SuccessfulCreate", "Job")).is_none());
        assert!(failed_create(&event("FailedCreate", "ReplicaSet")).is_none());
    }
}
