//! Disruptions the control plane causes on purpose, each marking the pod with the
//! `DisruptionTarget` condition before it goes, as Kubernetes does since 1.26
//! (https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-conditions):
//!
//! - the Eviction API (`POST .../pods/{name}/eviction`, policy/v1 Eviction): reason
//!   `EvictionByEvictionAPI`, message `Eviction API: evicting`, then a graceful delete
//!   (`addConditionAndDeletePod` in kubernetes/kubernetes
//!   pkg/registry/core/pod/storage/eviction.go). kubesim has no PodDisruptionBudgets, so every
//!   eviction is allowed (a deviation: a real server may answer 429 when a budget forbids it).
//!   A pod already terminal is deleted without the condition (`canIgnorePDB`).
//! - preemption by the scheduler: reason `PreemptionByScheduler`, message
//!   `<schedulerName>: preempting to accommodate a higher priority pod`, then a graceful delete
//!   (`prepareCandidate` in pkg/scheduler/framework/preemption/preemption.go). kubesim has no
//!   priorities, so preemption is triggered from outside (`POST /kubesim/preempt/{ns}/{name}`,
//!   `KubeSim::preempt_pod`).
//!
//! The kubelet then kills the containers; the pod ends `Failed` (restartPolicy Never) with the
//! condition, which a Job's podFailurePolicy can match (`onPodConditions`).

use k8s_openapi::api::core::v1::{Pod, PodCondition};

use crate::error::Status;
use crate::objects::{is_terminal, pod_delete_grace};
use crate::store::Store;
use crate::time::now_time;

pub const EVICTION_BY_API: &str = "EvictionByEvictionAPI";
pub const EVICTION_MESSAGE: &str = "Eviction API: evicting";
pub const PREEMPTION_BY_SCHEDULER: &str = "PreemptionByScheduler";

/// Marks `ns/name` with `DisruptionTarget` (`reason`, `message`) unless it is terminal, then
/// deletes it with `grace` (the pod's own when `None`). 404 when there is no such pod.
pub fn disrupt(
    store: &Store,
    ns: &str,
    name: &str,
    reason: &str,
    message: &str,
    grace: Option<i64>,
) -> Result<(), Status> {
    let pod = store
        .get::<Pod>(ns, name)
        .ok_or_else(|| Status::not_found("pods", name))?;
    if !is_terminal(&pod) && pod.metadata.deletion_timestamp.is_none() {
        let uid = pod.metadata.uid.clone();
        store.update::<Pod>(ns, name, |p| {
            if p.metadata.uid != uid {
                return Ok(());
            }
            let st = p.status.get_or_insert_with(Default::default);
            let conds = st.conditions.get_or_insert_with(Vec::new);
            conds.retain(|c| c.type_ != "DisruptionTarget");
            conds.push(PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_transition_time: Some(now_time()),
                ..Default::default()
            });
            Ok(())
        })?;
    }
    let grace = pod_delete_grace(&pod, grace);
    store.delete::<Pod>(ns, name, grace, &[], pod.metadata.uid.as_deref())?;
    Ok(())
}

/// Preempts a pod as the default scheduler does.
pub fn preempt(store: &Store, ns: &str, name: &str) -> Result<(), Status> {
    let scheduler = store
        .get::<Pod>(ns, name)
        .and_then(|p| p.spec.as_ref().and_then(|s| s.scheduler_name.clone()))
        .unwrap_or_else(|| "default-scheduler".into());
    disrupt(
        store,
        ns,
        name,
        PREEMPTION_BY_SCHEDULER,
        &format!("{scheduler}: preempting to accommodate a higher priority pod"),
        None,
    )
}
