//! The ephemeral volume controller and a dynamic provisioner, as a cluster with a default
//! StorageClass runs them:
//!
//! - for each pod volume with `ephemeral.volumeClaimTemplate`, a PersistentVolumeClaim named
//!   `<pod>-<volume>` is created in the pod's namespace, with the template's labels,
//!   annotations and spec, owned by the pod (`controller: true`, `blockOwnerDeletion: true`), so
//!   the garbage collector deletes it with the pod (pkg/controller/volume/ephemeral/controller.go,
//!   component-helpers storage/ephemeral `VolumeClaimName`;
//!   https://kubernetes.io/docs/concepts/storage/ephemeral-volumes/#generic-ephemeral-volumes).
//!   A claim of that name that the pod does not control is left alone, and the pod cannot be
//!   scheduled (`VolumeIsForPod`: `PVC ns/x was not created for pod ns/p (pod is not owner)`);
//! - every `Pending` claim is bound at once to a volume `pvc-<uid>` of the requested size, as a
//!   provisioner with `volumeBindingMode: Immediate` does (no PersistentVolume objects).
//!
//! It writes PVCs only; the scheduler's check (a pod waits for its claims) is in
//! [`crate::volumes`], which the kubelet's binding uses.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::store::Store;
use crate::volumes::claim_name;

/// Creates the missing claims of a pod's generic ephemeral volumes.
pub fn sync_pod(store: &Store, pod: &Pod) {
    if pod.metadata.deletion_timestamp.is_some() || crate::objects::is_terminal(pod) {
        return;
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(template) = v
            .ephemeral
            .as_ref()
            .and_then(|e| e.volume_claim_template.as_ref())
        else {
            continue;
        };
        let name = claim_name(&pod_name, &v.name);
        if store.get::<PersistentVolumeClaim>(&ns, &name).is_some() {
            continue;
        }
        let tm = template.metadata.clone().unwrap_or_default();
        let mut pvc = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(ns.clone()),
                labels: tm.labels,
                annotations: tm.annotations,
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: pod_name.clone(),
                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            spec: Some(template.spec.clone()),
            status: None,
        };
        crate::configdata::default_pvc(&mut pvc);
        // An invalid template was refused with the pod; a failed create is retried on the
        // pod's next event, as the controller's work queue would.
        let _ = store.create(pvc);
    }
}

/// Binds a `Pending` claim: `spec.volumeName`, phase `Bound`, the requested capacity and the
/// claim's access modes in the status.
pub fn provision(store: &Store, pvc: &PersistentVolumeClaim) {
    let pending = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending");
    if !pending || pvc.metadata.deletion_timestamp.is_some() {
        return;
    }
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let volume = format!("pvc-{}", pvc.metadata.uid.clone().unwrap_or_default());
    let _ = store.update::<PersistentVolumeClaim>(&ns, &name, |p| {
        let spec = p.spec.get_or_insert_with(Default::default);
        spec.volume_name = Some(volume.clone());
        let capacity = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.clone())
            .map(|r| r.into_iter().filter(|(k, _)| k == "storage").collect());
        p.status = Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            access_modes: spec.access_modes.clone(),
            capacity,
            ..Default::default()
        });
        Ok(())
    });
}
