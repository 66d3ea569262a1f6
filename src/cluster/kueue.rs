//! Kueue's side of a run whose template names a `queueName`, read only. Kueue
//! (https://kueue.sigs.k8s.io/docs/tasks/run/jobs/) admits a Job labelled
//! `kueue.x-k8s.io/queue-name` that was created suspended: its job reconciler makes a
//! `kueue.x-k8s.io/v1beta1` Workload owned by the Job, whose `QuotaReserved` / `Admitted` /
//! `Evicted` conditions say whether and why it waits
//! (https://kueue.sigs.k8s.io/docs/concepts/workload/), and unsuspends the Job once admitted or
//! suspends it again on eviction. The service only reads the Workload (to show its message on
//! the run) and never writes `spec.suspend` of a Job it created: Kueue alone does.
//!
//! [`Workload`] deserializes only what is read (metadata and status conditions); a watch of a
//! namespace's Workloads ([`Cluster::watch_workloads`]) is started by the tracker once it sees
//! one of its Jobs in a queue, so a cluster without Kueue is never asked for them.

use super::jobs::Cluster;
use super::watch::Watch;
use crate::domain::template::KUEUE_QUEUE_LABEL;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde::Deserialize;

/// A `kueue.x-k8s.io/v1beta1` Workload, as far as the service reads it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Workload {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<WorkloadStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct WorkloadStatus {
    #[serde(default)]
    pub conditions: Vec<WorkloadCondition>,
}

/// One of a Workload's `metav1.Condition`s.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct WorkloadCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl k8s_openapi::Resource for Workload {
    const API_VERSION: &'static str = "kueue.x-k8s.io/v1beta1";
    const GROUP: &'static str = "kueue.x-k8s.io";
    const KIND: &'static str = "Workload";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "workloads";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for Workload {
    const LIST_KIND: &'static str = "WorkloadList";
}

impl k8s_openapi::Metadata for Workload {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What a Workload says about the Job that owns it: why it is held, in Kueue's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The uid of the owning Job (a Job re-created under the same name has another Workload).
    pub job_uid: String,
    /// Kueue's reason: the `QuotaReserved` condition's (`Pending`, `Inadmissible`, ...), the
    /// `Evicted` condition's after an eviction (`Preempted`, ...), or `Admitted`.
    pub reason: String,
    /// Kueue's message, e.g. `couldn't assign flavors to pod set main: insufficient quota ...`.
    pub message: String,
}

/// The reason a held run shows while Kueue has not created its Workload (yet).
pub const NO_WORKLOAD: &str = "WorkloadNotCreated";

impl Workload {
    fn condition(&self, type_: &str) -> Option<&WorkloadCondition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }

    fn condition_true(&self, type_: &str) -> Option<&WorkloadCondition> {
        self.condition(type_).filter(|c| c.status == "True")
    }

    /// The Job that owns this Workload (its controller owner reference), by name.
    pub fn owning_job(&self) -> Option<(String, String)> {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "Job" && o.api_version == "batch/v1")
            .map(|o| (o.name.clone(), o.uid.clone()))
    }

    /// Why the owning Job is held, in Kueue's own reason and message. `None` for a Workload
    /// not owned by a Job.
    pub fn hold(&self) -> Option<(String, Hold)> {
        let (job, job_uid) = self.owning_job()?;
        let text = |c: &WorkloadCondition| c.message.clone().unwrap_or_default();
        let quota = self.condition("QuotaReserved");
        let waiting = quota.filter(|c| c.status != "True");
        let (reason, message) = if let Some(evicted) = self.condition_true("Evicted") {
            // Evicted and waiting again: say why it was evicted, then what it waits for.
            let mut message = text(evicted);
            if let Some(waiting) = waiting.map(text).filter(|m| !m.is_empty()) {
                message = format!("{message}; {waiting}");
            }
            (
                evicted.reason.clone().unwrap_or_else(|| "Evicted".into()),
                message,
            )
        } else if let Some(admitted) = self.condition_true("Admitted") {
            ("Admitted".to_string(), text(admitted))
        } else if let Some(quota) = quota {
            (
                quota.reason.clone().unwrap_or_else(|| "Pending".into()),
                text(quota),
            )
        } else {
            (
                "Pending".to_string(),
                "the Workload waits for Kueue's scheduler".to_string(),
            )
        };
        Some((
            job,
            Hold {
                job_uid,
                reason,
                message,
            },
        ))
    }
}

/// The LocalQueue a Job was given to, if any.
pub fn queue_name(job: &Job) -> Option<&str> {
    job.metadata
        .labels
        .as_ref()?
        .get(KUEUE_QUEUE_LABEL)
        .map(String::as_str)
        .filter(|q| !q.is_empty())
}

/// Kueue holds the Job: it is in a LocalQueue and suspended (not admitted yet, or evicted).
pub fn held(job: &Job) -> bool {
    queue_name(job).is_some() && job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

/// The reason a pod record carries when the pod was removed because Kueue suspended its Job
/// (the Job's own `Suspended` condition has this reason).
pub const REMOVED_BY_SUSPENSION: &str = "JobSuspended";

/// Marks the record of a pod the Job controller removed because Kueue suspended the Job
/// (eviction, preemption): whatever its container's exit, it is no failure of the run (the Job
/// controller does not count it either), and the record says so.
pub fn removed_by_suspension(record: &mut crate::domain::PodRecord) {
    record.reason = Some(REMOVED_BY_SUSPENSION.to_string());
    record.message = Some(
        "removed by the Job controller when Kueue suspended the Job (evicted); not counted as a failure"
            .to_string(),
    );
}

impl Cluster {
    /// Watches every Workload in `namespace` (Kueue does not copy the installation's labels to
    /// them; the tracker keeps those owned by its Jobs).
    pub fn watch_workloads(&self, namespace: &str, timeout_secs: u32) -> Watch<Workload> {
        let api: Api<Workload> = Api::namespaced(self.client.clone(), namespace);
        watcher::watcher(api, watcher::Config::default().timeout(timeout_secs))
            .backoff(super::watch::backoff())
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workload(conditions: serde_json::Value) -> Workload {
        serde_json::from_value(json!({
            "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
            "metadata": {"name": "job-render-1-abcde", "namespace": "batch",
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "render-1",
                    "uid": "u1", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"queueName": "team-a"},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn a_waiting_workload_gives_kueues_reason_and_message_for_its_job() {
        let wl = workload(
            json!([{"type": "QuotaReserved", "status": "False", "reason": "Pending",
            "message": "couldn't assign flavors to pod set main: insufficient quota",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]),
        );
        let (job, hold) = wl.hold().unwrap();
        assert_eq!(job, "render-1");
        assert_eq!(hold.job_uid, "u1");
        assert_eq!(hold.reason, "Pending");
        assert_eq!(
            hold.message,
            "couldn't assign flavors to pod set main: insufficient quota"
        );
    }

    #[test]
    fn an_evicted_workload_says_why_and_what_it_waits_for() {
        let wl = workload(json!([
            {"type": "Evicted", "status": "True", "reason": "Preempted",
             "message": "Preempted to accommodate a higher priority Workload"},
            {"type": "QuotaReserved", "status": "False", "reason": "Pending",
             "message": "insufficient quota"},
            {"type": "Admitted", "status": "False", "reason": "NoReservation",
             "message": "The workload has no reservation"}]));
        let (_, hold) = wl.hold().unwrap();
        assert_eq!(hold.reason, "Preempted");
        assert_eq!(
            hold.message,
            "Preempted to accommodate a higher priority Workload; insufficient quota"
        );
    }

    #[test]
    fn an_admitted_workload_and_one_without_conditions_say_so() {
        let admitted = workload(json!([
            {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "Quota reserved"},
            {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "The workload is admitted"},
            {"type": "Evicted", "status": "False", "reason": "QuotaReserved", "message": "Previously: x"}]));
        assert_eq!(admitted.hold().unwrap().1.reason, "Admitted");
        let fresh = workload(json!([]));
        assert_eq!(fresh.hold().unwrap().1.reason, "Pending");
    }

    #[test]
    fn a_workload_not_owned_by_a_job_holds_nothing() {
        let mut wl = workload(json!([]));
        wl.metadata.owner_references = None;
        assert!(wl.hold().is_none());
    }

    #[test]
    fn only_a_suspended_job_in_a_queue_is_held() {
        let job = |labels: serde_json::Value, suspend: bool| -> Job {
            serde_json::from_value(json!({"metadata": {"name": "j", "labels": labels},
                "spec": {"suspend": suspend, "template": {}}}))
            .unwrap()
        };
        assert!(held(&job(
            json!({"kueue.x-k8s.io/queue-name": "team-a"}),
            true
        )));
        assert!(!held(&job(
            json!({"kueue.x-k8s.io/queue-name": "team-a"}),
            false
        )));
        assert!(!held(&job(json!({}), true)));
    }
}
