//! Generic ephemeral volumes (https://kubernetes.io/docs/concepts/storage/ephemeral-volumes/#generic-ephemeral-volumes):
//! the ephemeral volume controller creates a PVC `<pod>-<volume>` owned by the pod
//! (pkg/controller/volume/ephemeral/controller.go), the pod is scheduled once its claim exists
//! and is its own (VolumeBinding PreFilter, `VolumeIsForPod`), and the garbage collector deletes
//! the claim with the pod, so nothing of a finished Job's pods remains once the Job is deleted.

mod common;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

fn scratch_job(name: &str) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox",
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
            "volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
                "metadata": {"labels": {"app": "build"}},
                "spec": {"accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}}}}]
        }}}
    }))
    .unwrap()
}

/// The claim is named `<pod>-<volume>`, carries the template's labels and spec, is controlled
/// by the pod, is bound by the provisioner, and goes with the pod when the Job is deleted.
#[tokio::test]
async fn an_ephemeral_volume_gets_a_claim_owned_by_its_pod_that_goes_with_it() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &scratch_job("build")).await;
    assert!(has_condition(&wait_finished(&c, "build").await, "Complete"));
    let pod = job_pods(&c, "build").await.remove(0);
    let pod_name = pod.metadata.name.clone().unwrap();
    let pvcs = Api::<PersistentVolumeClaim>::default_namespaced(c.clone());
    let claim = pvcs.get(&format!("{pod_name}-scratch")).await.unwrap();
    let owner = &claim.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Pod", pod_name.as_str(), Some(true))
    );
    assert_eq!(owner.uid, pod.metadata.uid.clone().unwrap());
    assert_eq!(
        claim.metadata.labels.as_ref().unwrap()["app"],
        "build".to_string()
    );
    let status = claim.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Bound"));
    assert_eq!(status.capacity.unwrap()["storage"].0, "1Gi");

    Api::<Job>::default_namespaced(c.clone())
        .delete("build", &DeleteParams::background())
        .await
        .unwrap();
    wait_gone(pvcs.clone(), &format!("{pod_name}-scratch")).await;
    assert!(pvcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    sim.shutdown().await;
}

/// A claim of that name that the pod does not control keeps the pod Pending and unschedulable
/// with `VolumeIsForPod`'s message; once it is deleted the controller makes the pod's own claim
/// and the pod runs.
#[tokio::test]
async fn a_pod_waits_while_its_claim_name_is_taken_by_a_claim_it_does_not_own() {
    let sim = sim().await;
    let c = sim.client();
    let pvcs = Api::<PersistentVolumeClaim>::default_namespaced(c.clone());
    pvcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "solo-scratch"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "solo"},
        "spec": scratch_job("x").spec.unwrap().template.spec,
    }))
    .unwrap();
    pod.metadata.namespace = None;
    let pods = Api::<Pod>::default_namespaced(c.clone());
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let waiting = wait_obj(pods.clone(), "solo", |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "PodScheduled" && c.status == "False")
            })
    })
    .await;
    let message = waiting.status.unwrap().conditions.unwrap()[0]
        .message
        .clone()
        .unwrap();
    assert!(
        message.contains(
            "PVC default/solo-scratch was not created for pod default/solo (pod is not owner)"
        ),
        "{message}"
    );
    pvcs.delete("solo-scratch", &DeleteParams::default())
        .await
        .unwrap();
    wait_obj(pods, "solo", |p: &Pod| phase(p) == "Succeeded").await;
    let claim = pvcs.get("solo-scratch").await.unwrap();
    assert_eq!(
        claim.metadata.owner_references.unwrap()[0].name,
        "solo".to_string()
    );
    sim.shutdown().await;
}

/// Pod validation (`ValidateVolumes`): an ephemeral volume's claim template is validated as a
/// claim spec, with the field path under the pod template.
#[tokio::test]
async fn an_ephemeral_volume_without_access_modes_is_refused_with_its_field_path() {
    let sim = sim().await;
    let c = sim.client();
    let mut job = scratch_job("bad");
    let v = &mut job
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .volumes
        .as_mut()
        .unwrap()[0];
    v.ephemeral
        .as_mut()
        .unwrap()
        .volume_claim_template
        .as_mut()
        .unwrap()
        .spec
        .access_modes = None;
    let err = Api::<Job>::default_namespaced(c)
        .create(&PostParams::default(), &job)
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);
    assert_eq!(
        err.details.unwrap().causes[0].field,
        "spec.template.spec.volumes[0].ephemeral.volumeClaimTemplate.spec.accessModes"
    );
    sim.shutdown().await;
}
