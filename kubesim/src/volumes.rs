//! A pod's PersistentVolumeClaims as the scheduler and the ephemeral volume controller see
//! them: the claim name of a generic ephemeral volume (`<pod>-<volume>`, component-helpers
//! storage/ephemeral `VolumeClaimName`), whether a claim is the pod's own (`VolumeIsForPod`),
//! and why a pod cannot be scheduled yet because of its claims (the VolumeBinding plugin's
//! PreFilter in pkg/scheduler/framework/plugins/volumebinding: a missing claim, or a claim of an
//! ephemeral volume that another object controls). Reads the store, never writes it.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};

use crate::store::Store;

/// `ephemeral.VolumeClaimName`.
pub fn claim_name(pod: &str, volume: &str) -> String {
    format!("{pod}-{volume}")
}

/// `ephemeral.VolumeIsForPod`.
pub fn is_for_pod(pod: &Pod, pvc: &PersistentVolumeClaim) -> Result<(), String> {
    let controlled = pvc.metadata.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true) && o.uid == pod.metadata.uid.clone().unwrap_or_default()
    });
    if pvc.metadata.namespace != pod.metadata.namespace || !controlled {
        return Err(format!(
            "PVC {}/{} was not created for pod {}/{} (pod is not owner)",
            pvc.metadata.namespace.as_deref().unwrap_or(""),
            pvc.metadata.name.as_deref().unwrap_or(""),
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or(""),
        ));
    }
    Ok(())
}

/// Why the scheduler cannot place the pod yet because of its claims (the VolumeBinding
/// plugin's PreFilter), or None when every claim it uses exists (and, for an ephemeral volume,
/// is the pod's own).
pub fn unschedulable_reason(store: &Store, pod: &Pod) -> Option<String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let (claim, ephemeral) = match (&v.ephemeral, &v.persistent_volume_claim) {
            (Some(_), _) => (claim_name(&pod_name, &v.name), true),
            (None, Some(p)) => (p.claim_name.clone(), false),
            (None, None) => continue,
        };
        match store.get::<PersistentVolumeClaim>(&ns, &claim) {
            None if ephemeral => {
                return Some(format!(
                    "waiting for ephemeral volume controller to create the persistentvolumeclaim \"{claim}\""
                ))
            }
            None => return Some(format!("persistentvolumeclaim \"{claim}\" not found")),
            Some(pvc) if ephemeral => {
                if let Err(e) = is_for_pod(pod, &pvc) {
                    return Some(e);
                }
            }
            Some(pvc) if pvc.metadata.deletion_timestamp.is_some() => {
                return Some(format!("persistentvolumeclaim \"{claim}\" is being deleted"))
            }
            Some(_) => {}
        }
    }
    None
}
