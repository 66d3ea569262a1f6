//! The hard parts of a real cluster, each in its own mode: Events from the Job controller,
//! scheduler and kubelet; Pod Security and ResourceQuota admission refusing the Job
//! controller's pod creates (a `FailedCreate` Event, retried with back-off); unschedulable pods
//! (PodScheduled=False, Unschedulable, the scheduler's message); image pull failures
//! (ErrImagePull, then ImagePullBackOff). Each test cites the behaviour it follows.

mod common;

use std::collections::BTreeMap;

use common::*;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kubesim::admission::Quota;
use kubesim::behaviour::Behaviour;
use kubesim::{KubeSim, SimConfig};
use serde_json::json;

/// The Events about one object, as `kubectl describe` asks for them.
async fn events_of(client: &kube::Client, kind: &str, name: &str) -> Vec<Event> {
    Api::<Event>::default_namespaced(client.clone())
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind={kind},involvedObject.name={name},involvedObject.namespace=default"
        )))
        .await
        .expect("events list")
        .items
}

async fn find_event(
    client: kube::Client,
    kind: String,
    name: String,
    reason: String,
) -> Option<Event> {
    events_of(&client, &kind, &name)
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some(reason.as_str()))
}

async fn wait_event(sim: &KubeSim, kind: &str, name: &str, reason: &str) -> Event {
    let c = sim.client();
    let find = || find_event(c.clone(), kind.into(), name.into(), reason.into());
    wait_until(sim, &format!("{reason} Event on {kind} {name}"), || async {
        find().await.is_some()
    })
    .await;
    find().await.unwrap()
}

fn main_container(
    job: &mut k8s_openapi::api::batch::v1::Job,
) -> &mut k8s_openapi::api::core::v1::Container {
    &mut job
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
}

fn sim_config(f: impl FnOnce(&mut Behaviour)) -> SimConfig {
    let mut behaviour = Behaviour::default();
    f(&mut behaviour);
    SimConfig {
        behaviour,
        ..Default::default()
    }
}

/// https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/ and the Job
/// controller's Events (pkg/controller/job/job_controller.go): SuccessfulCreate, Completed; the
/// scheduler's Scheduled and the kubelet's Started on the pod.
#[tokio::test]
async fn the_job_controller_scheduler_and_kubelet_record_events() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &job("pi", &[])).await;
    wait_finished(&c, "pi").await;
    let created = wait_event(&sim, "Job", "pi", "SuccessfulCreate").await;
    let pod = job_pods(&c, "pi").await.remove(0);
    let pod_name = pod.metadata.name.unwrap();
    assert_eq!(created.message.unwrap(), format!("Created pod: {pod_name}"));
    assert_eq!(created.type_.as_deref(), Some("Normal"));
    wait_event(&sim, "Job", "pi", "Completed").await;
    let scheduled = wait_event(&sim, "Pod", &pod_name, "Scheduled").await;
    assert_eq!(
        scheduled.source.unwrap().component.as_deref(),
        Some("default-scheduler")
    );
    wait_event(&sim, "Pod", &pod_name, "Started").await;

    // Switched off, nothing is recorded.
    let quiet = sim_with(sim_config(|b| {
        b.events = kubesim::events::Recorder::disabled()
    }))
    .await;
    let q = quiet.client();
    create_job(&q, &job("pi", &[])).await;
    wait_finished(&q, "pi").await;
    let all = Api::<Event>::all(q.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(all.items.is_empty(), "{:?}", all.items);
}

async fn label_namespace(client: &kube::Client, level: &str) {
    Api::<Namespace>::all(client.clone())
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": level
            }}})),
        )
        .await
        .unwrap();
}

/// https://kubernetes.io/docs/concepts/security/pod-security-admission/: in a namespace that
/// enforces `restricted`, the Job controller's pod create is refused (403), recorded as
/// FailedCreate on the Job with the admission message, and retried; the Job has no pods.
#[tokio::test]
async fn pod_security_restricted_refuses_the_job_controllers_pods_with_a_failed_create_event() {
    let sim = sim().await;
    let c = sim.client();
    label_namespace(&c, "restricted").await;
    create_job(&c, &job("rooty", &[])).await;
    let event = wait_event(&sim, "Job", "rooty", "FailedCreate").await;
    let message = event.message.unwrap();
    assert!(
        message.starts_with("Error creating: pods \"rooty-")
            && message.contains("is forbidden: violates PodSecurity \"restricted:latest\": ")
            && message.contains("runAsNonRoot != true"),
        "{message}"
    );
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    // Retried with back-off (each try names a new generated pod, so a new Event or a higher
    // count), and still no pod.
    wait_until(&sim, "a retried create", || {
        let c = c.clone();
        async move {
            events_of(&c, "Job", "rooty")
                .await
                .iter()
                .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
                .map(|e| e.count.unwrap_or(1))
                .sum::<i32>()
                > 1
        }
    })
    .await;
    assert!(job_pods(&c, "rooty").await.is_empty());

    // A pod created directly is refused the same way.
    let err = Api::<Pod>::default_namespaced(c.clone())
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "direct"},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]}}))
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 403),
        "{err}"
    );
}

/// https://kubernetes.io/docs/concepts/policy/resource-quotas/: a create that would exceed the
/// quota is refused with what was requested, used and limited.
#[tokio::test]
async fn a_resource_quota_refuses_pods_beyond_it() {
    let sim = sim_with(sim_config(|b| {
        b.admission.quotas.push(Quota {
            namespace: "default".into(),
            name: "compute".into(),
            hard: BTreeMap::from([("requests.cpu".to_string(), "1".to_string())]),
        })
    }))
    .await;
    let c = sim.client();
    let mut big = job("big", &[]);
    main_container(&mut big).resources =
        Some(serde_json::from_value(json!({"requests": {"cpu": "2"}})).unwrap());
    create_job(&c, &big).await;
    let event = wait_event(&sim, "Job", "big", "FailedCreate").await;
    let message = event.message.unwrap();
    assert!(
        message.ends_with("is forbidden: exceeded quota: compute, requested: requests.cpu=2, used: requests.cpu=0, limited: requests.cpu=1"),
        "{message}"
    );
    assert!(job_pods(&c, "big").await.is_empty());
}

/// https://kubernetes.io/docs/tasks/manage-gpus/scheduling-gpus/: a pod asking for a GPU on a
/// cluster without one stays Pending, PodScheduled=False/Unschedulable with the scheduler's
/// message, and a FailedScheduling Event; with a GPU node it runs.
#[tokio::test]
async fn a_gpu_pod_without_a_gpu_node_is_unschedulable() {
    let gpu_job = |name: &str| {
        let mut j = job(name, &[]);
        main_container(&mut j).resources =
            Some(serde_json::from_value(json!({"limits": {"nvidia.com/gpu": "1"}})).unwrap());
        j
    };
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &gpu_job("train")).await;
    let pods = Api::<Pod>::default_namespaced(c.clone());
    wait_until(&sim, "an unschedulable pod", || {
        let c = c.clone();
        async move {
            job_pods(&c, "train").await.first().is_some_and(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "PodScheduled" && c.status == "False")
                    })
            })
        }
    })
    .await;
    let name = job_pods(&c, "train").await.remove(0).metadata.name.unwrap();
    let pod = pods.get(&name).await.unwrap();
    let st = pod.status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    let cond = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert!(cond
        .message
        .unwrap()
        .starts_with("0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),);
    wait_event(&sim, "Pod", &name, "FailedScheduling").await;

    // A second node with a GPU: the pod is bound there and runs.
    let gpus = sim_with(sim_config(|b| {
        let mut gpu_node = b.nodes[0].clone();
        gpu_node.name = "gpu-1".into();
        gpu_node
            .allocatable
            .insert("nvidia.com/gpu".into(), "1".into());
        b.nodes.push(gpu_node);
    }))
    .await;
    let g = gpus.client();
    create_job(&g, &gpu_job("train")).await;
    let done = wait_finished(&g, "train").await;
    assert!(has_condition(&done, "Complete"));
    let pod = job_pods(&g, "train").await.remove(0);
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("gpu-1"));
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

/// https://kubernetes.io/docs/concepts/containers/images/#imagepullbackoff: an image that cannot
/// be pulled leaves the container waiting with ErrImagePull, then ImagePullBackOff, the pod
/// Pending; driven by the image name or by the scripted env var.
#[tokio::test]
async fn an_image_that_cannot_be_pulled_waits_in_err_image_pull_then_back_off() {
    let sim = sim_with(sim_config(|b| {
        b.image_pull.initial_backoff = std::time::Duration::from_millis(50);
    }))
    .await;
    let c = sim.client();
    let mut missing = job("missing", &[]);
    main_container(&mut missing).image = Some("busybox:doesnotexist".into());
    create_job(&c, &missing).await;
    create_job(&c, &job("scripted", &[("KUBESIM_IMAGE_PULL", "fail")])).await;
    for name in ["missing", "scripted"] {
        for reason in ["ErrImagePull", "ImagePullBackOff"] {
            wait_until(&sim, &format!("{name} in {reason}"), || {
                let c = c.clone();
                async move {
                    job_pods(&c, name)
                        .await
                        .first()
                        .is_some_and(|p| waiting_reason(p).as_deref() == Some(reason))
                }
            })
            .await;
        }
        let pod = job_pods(&c, name).await.remove(0);
        assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Pending"));
    }
    let pod = job_pods(&c, "missing")
        .await
        .remove(0)
        .metadata
        .name
        .unwrap();
    let failed = wait_event(&sim, "Pod", &pod, "Failed").await;
    assert!(failed.message.unwrap().contains("busybox:doesnotexist"));
    wait_event(&sim, "Pod", &pod, "BackOff").await;
}

/// https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/: the same
/// Events through events.k8s.io/v1 (`regarding`, `note`, `reportingController`), listed with
/// field selectors on the new names, got by name and watched.
#[tokio::test]
async fn events_are_served_through_events_k8s_io_v1_too() {
    use k8s_openapi::api::events::v1::Event as EventV1;
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &job("pi", &[])).await;
    wait_event(&sim, "Job", "pi", "SuccessfulCreate").await;
    let api = Api::<EventV1>::default_namespaced(c.clone());
    let listed = api
        .list(&ListParams::default().fields("regarding.kind=Job,regarding.name=pi"))
        .await
        .unwrap();
    let created = listed
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
        .expect("SuccessfulCreate through events.k8s.io/v1");
    assert_eq!(
        created.regarding.as_ref().unwrap().name.as_deref(),
        Some("pi")
    );
    assert!(created
        .note
        .as_deref()
        .unwrap()
        .starts_with("Created pod: pi-"));
    assert_eq!(
        created.reporting_controller.as_deref(),
        Some("job-controller")
    );
    let name = created.metadata.name.clone().unwrap();
    let got = api.get(&name).await.unwrap();
    assert_eq!(got.note, created.note);

    // A watch sees them in the new shape as well.
    use futures::StreamExt;
    let mut stream = kube::runtime::watcher(
        api,
        kube::runtime::watcher::Config::default().fields("regarding.name=pi"),
    )
    .boxed();
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(ev) = stream.next().await {
            if let Ok(
                kube::runtime::watcher::Event::InitApply(e)
                | kube::runtime::watcher::Event::Apply(e),
            ) = ev
            {
                if e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("pi") {
                    return e;
                }
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("an event through the watch");
    assert!(seen.reason.is_some());
}
