//! Pieces of the pod status a kubelet reports: conditions (kept stable when unchanged),
//! container states, container and image ids, and the "containers with unready status" message.
//! Pure; no store access.
//!
//! Depends on: k8s-openapi types and `time` only.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodCondition, PodStatus,
};

use crate::time::now_time;

pub(super) fn cond(
    ty: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    PodCondition {
        type_: ty.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.map(Into::into),
        message,
        last_transition_time: Some(now_time()),
        ..Default::default()
    }
}

/// Sets a condition, keeping lastTransitionTime when the status does not change.
pub(super) fn set_cond(status: &mut PodStatus, c: PodCondition) {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => {
            if x.status != c.status {
                *x = c;
            } else {
                x.reason = c.reason;
                x.message = c.message;
            }
        }
        None => conds.push(c),
    }
}

/// A container state `running` since `started`.
pub(super) fn running_since(
    started: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(started.clone()),
        }),
        ..Default::default()
    }
}

pub(super) fn container_id() -> String {
    format!(
        "containerd://{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

pub(super) fn image_id(image: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    image.hash(&mut h);
    let digest = format!("{:016x}", h.finish());
    let repo = image.split(':').next().unwrap_or(image);
    let repo = if repo.contains('/') {
        repo.to_string()
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{repo}@sha256:{digest:0>64}")
}

pub(super) fn container_names(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn unready_message(pod: &Pod) -> String {
    let names: Vec<String> = container_names(pod).into_iter().map(|(n, _)| n).collect();
    format!("containers with unready status: [{}]", names.join(" "))
}

/// The first container's status: the container the simulator runs.
pub(super) fn first_container(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}
