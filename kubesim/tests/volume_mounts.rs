//! The kubelet's configMap and secret volumes: a volume whose object (or a key its `items`
//! names) is missing, and not `optional`, keeps the pod `ContainerCreating` with a Warning
//! `FailedMount` Event (`MountVolume.SetUp failed for volume "conf" : configmap "settings" not
//! found`, from `SetUpAt` in kubernetes/kubernetes pkg/volume/configmap and pkg/volume/secret;
//! https://kubernetes.io/docs/concepts/storage/volumes/#configmap) until the object appears;
//! an `optional` one mounts empty and the pod starts.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use kubesim::behaviour::Behaviour;
use kubesim::{KubeSim, SimConfig};
use serde_json::{json, Value};

async fn fast_retry_sim() -> KubeSim {
    sim_with(SimConfig {
        behaviour: Behaviour {
            config_retry: Duration::from_millis(100),
            ..Behaviour::default()
        },
        ..SimConfig::default()
    })
    .await
}

/// A Job whose pod has `volumes`, the first mounted at /mnt.
fn job_with_volumes(name: &str, volumes: Value) -> Job {
    let first = volumes[0]["name"].clone();
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "volumes": volumes,
            "containers": [{"name": "main", "image": "busybox",
                            "volumeMounts": [{"name": first, "mountPath": "/mnt"}]}]}}}
    }))
    .unwrap()
}

/// The messages of the pod's `FailedMount` Events, once there is one.
async fn failed_mounts(sim: &KubeSim, job: &str) -> (Pod, Vec<String>) {
    let c = sim.client();
    let found = std::sync::Arc::new(std::sync::Mutex::new(None));
    wait_until(sim, "a FailedMount Event", || {
        let (c, found) = (c.clone(), found.clone());
        async move {
            let Some(pod) = job_pods(&c, job).await.into_iter().next() else {
                return false;
            };
            let events = Api::<Event>::default_namespaced(c.clone())
                .list(&ListParams::default().fields(&format!(
                    "involvedObject.name={},reason=FailedMount",
                    pod.metadata.name.as_deref().unwrap()
                )))
                .await
                .unwrap();
            if events.items.is_empty() {
                return false;
            }
            let messages = events
                .items
                .iter()
                .map(|e| e.message.clone().unwrap_or_default())
                .collect();
            *found.lock().unwrap() = Some((pod, messages));
            true
        }
    })
    .await;
    let hit = found.lock().unwrap().take().unwrap();
    hit
}

fn waiting_reason(p: &Pod) -> Option<String> {
    let cs = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    cs.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

/// A configMap volume of a missing ConfigMap: `ContainerCreating`, `FailedMount` with the
/// kubelet's message, and the Job completes once the ConfigMap is created.
#[tokio::test]
async fn a_missing_config_map_volume_holds_the_pod_in_container_creating_until_it_exists() {
    let sim = fast_retry_sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_with_volumes(
            "conf",
            json!([{"name": "conf", "configMap": {"name": "settings"}}]),
        ),
    )
    .await;
    let (pod, messages) = failed_mounts(&sim, "conf").await;
    assert_eq!(
        messages[0],
        r#"MountVolume.SetUp failed for volume "conf" : configmap "settings" not found"#
    );
    let pod = Api::<Pod>::default_namespaced(c.clone())
        .get(pod.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(phase(&pod), "Pending");
    assert_eq!(waiting_reason(&pod).as_deref(), Some("ContainerCreating"));
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"a": "1"}}))
            .unwrap();
    Api::<ConfigMap>::default_namespaced(c.clone())
        .create(&PostParams::default(), &map)
        .await
        .unwrap();
    assert!(has_condition(&wait_finished(&c, "conf").await, "Complete"));
    sim.shutdown().await;
}

/// A secret volume of a missing Secret says `secret "db" not found`; a configMap volume whose
/// `items` names a key the ConfigMap lacks says so (`MakePayload`).
#[tokio::test]
async fn a_missing_secret_or_key_gives_the_kubelets_mount_messages() {
    let sim = fast_retry_sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_with_volumes(
            "creds",
            json!([{"name": "creds", "secret": {"secretName": "db"}}]),
        ),
    )
    .await;
    let (_, messages) = failed_mounts(&sim, "creds").await;
    assert_eq!(
        messages[0],
        r#"MountVolume.SetUp failed for volume "creds" : secret "db" not found"#
    );
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"a": "1"}}))
            .unwrap();
    Api::<ConfigMap>::default_namespaced(c.clone())
        .create(&PostParams::default(), &map)
        .await
        .unwrap();
    create_job(
        &c,
        &job_with_volumes(
            "keys",
            json!([{"name": "conf", "configMap": {"name": "settings", "items": [{"key": "b", "path": "b"}]}}]),
        ),
    )
    .await;
    let (_, messages) = failed_mounts(&sim, "keys").await;
    assert_eq!(
        messages[0],
        r#"MountVolume.SetUp failed for volume "conf" : configmap references non-existent config key: b"#
    );
    sim.shutdown().await;
}

/// `optional: true` volumes of missing objects mount empty: the pod starts, no FailedMount;
/// emptyDir and persistentVolumeClaim volumes beside them are accepted too.
#[tokio::test]
async fn optional_volumes_of_missing_objects_do_not_hold_the_pod() {
    let sim = fast_retry_sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_with_volumes(
            "optional",
            json!([
                {"name": "work", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "conf", "configMap": {"name": "gone", "optional": true}},
                {"name": "creds", "secret": {"secretName": "gone", "optional": true}}
            ]),
        ),
    )
    .await;
    assert!(has_condition(
        &wait_finished(&c, "optional").await,
        "Complete"
    ));
    let events = Api::<Event>::default_namespaced(c.clone())
        .list(&ListParams::default().fields("reason=FailedMount"))
        .await
        .unwrap();
    assert!(events.items.is_empty());
    sim.shutdown().await;
}
