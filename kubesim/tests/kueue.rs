//! Kueue's part of the cluster (`SimConfig::kueue`), observed through kube-rs and kubesim's
//! admission endpoint. What is copied is Kueue's documented behaviour for a plain Job:
//! https://kueue.sigs.k8s.io/docs/tasks/run/jobs/ (the queue-name label, the Job created
//! suspended by the webhook) and https://kueue.sigs.k8s.io/docs/tasks/troubleshooting/troubleshooting_jobs/
//! (the Workload `job-<name>-<hash>`, its `QuotaReserved`/`Admitted` conditions and messages,
//! suspension until admission, preemption).

mod common;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kubesim::kueue::{workload_name, KueueConfig, Workload, DEFAULT_PENDING_MESSAGE};
use kubesim::{KubeSim, SimConfig};
use serde_json::{json, Value};

const QUEUE: &str = "kueue.x-k8s.io/queue-name";

fn queued_job(name: &str, env: &[(&str, &str)], queue: &str) -> Job {
    let mut j = job(name, env);
    j.metadata.labels = Some([(QUEUE.to_string(), queue.to_string())].into());
    j
}

async fn kueue_sim(cfg: KueueConfig) -> KubeSim {
    sim_with(SimConfig {
        kueue: Some(cfg),
        ..SimConfig::default()
    })
    .await
}

fn cond<'a>(wl: &'a Workload, ty: &str) -> Option<&'a Value> {
    wl.condition(ty)
}

fn cond_is(wl: &Workload, ty: &str, status: &str, reason: &str) -> bool {
    cond(wl, ty).is_some_and(|c| c["status"] == status && c["reason"] == reason)
}

async fn post(sim: &KubeSim, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", sim.url()))
        .send()
        .await
        .expect("kubesim answers")
}

fn suspended(j: &Job) -> Option<bool> {
    j.spec.as_ref().and_then(|s| s.suspend)
}

/// The webhook suspends the labelled Job; its Workload waits with the scheduler's message and no
/// pod exists; admission unsuspends the Job with the flavor's node labels and it completes.
#[tokio::test]
async fn a_queued_job_waits_suspended_until_its_workload_is_admitted_then_completes() {
    let sim = kueue_sim(KueueConfig {
        flavor_node_labels: [("kubernetes.io/arch".to_string(), "amd64".to_string())].into(),
        ..KueueConfig::default()
    })
    .await;
    let c = sim.client();
    let created = create_job(&c, &queued_job("queued", &[], "team-a")).await;
    assert_eq!(suspended(&created), Some(true), "the webhook suspends it");
    let uid = created.metadata.uid.clone().unwrap();
    let wl_name = workload_name("queued", &uid);
    assert!(wl_name.starts_with("job-queued-"), "{wl_name}");

    let workloads = Api::<Workload>::default_namespaced(c.clone());
    let wl = wait_obj(workloads.clone(), &wl_name, |w| {
        cond_is(w, "QuotaReserved", "False", "Pending")
    })
    .await;
    assert_eq!(
        cond(&wl, "QuotaReserved").unwrap()["message"],
        DEFAULT_PENDING_MESSAGE
    );
    assert!(!wl.condition_true("Admitted"));
    assert_eq!(wl.spec["queueName"], "team-a");
    assert_eq!(wl.spec["podSets"][0]["name"], "main");
    let owner = &wl.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Job", uid.as_str())
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(
        wl.metadata.labels.as_ref().unwrap()["kueue.x-k8s.io/job-uid"],
        uid
    );
    // Listable by the job-uid label, as the troubleshooting guide does it.
    let by_uid = workloads
        .list(&ListParams::default().labels(&format!("kueue.x-k8s.io/job-uid={uid}")))
        .await
        .unwrap();
    assert_eq!(by_uid.items.len(), 1);

    // The Job controller has seen it suspended: no pods.
    wait_job(&c, "queued", |j| has_condition(j, "Suspended")).await;
    assert!(job_pods(&c, "queued").await.is_empty());

    let r = post(&sim, &format!("/kubesim/kueue/admit/default/{wl_name}")).await;
    assert_eq!(r.status(), 200);
    let done = wait_finished(&c, "queued").await;
    assert!(has_condition(&done, "Complete"));
    assert_eq!(suspended(&done), Some(false));
    let selector = done
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .node_selector
        .clone()
        .unwrap();
    assert_eq!(selector["kubernetes.io/arch"], "amd64");

    let wl = wait_obj(workloads, &wl_name, |w| w.condition_true("Finished")).await;
    assert!(cond_is(&wl, "QuotaReserved", "True", "QuotaReserved"));
    assert_eq!(
        cond(&wl, "QuotaReserved").unwrap()["message"],
        "Quota reserved in ClusterQueue cluster-queue"
    );
    assert!(cond_is(&wl, "Admitted", "True", "Admitted"));
    assert_eq!(
        cond(&wl, "Admitted").unwrap()["message"],
        "The workload is admitted"
    );
    assert_eq!(
        wl.status.as_ref().unwrap()["admission"]["clusterQueue"],
        "cluster-queue"
    );
    sim.shutdown().await;
}

/// Unsuspending a Job whose Workload is not admitted does not run it: Kueue suspends it again.
/// Evicting an admitted Workload suspends its running Job (its pods go) until it is admitted
/// again.
#[tokio::test]
async fn kueue_keeps_a_job_suspended_without_admission_and_suspends_it_on_eviction() {
    let sim = kueue_sim(KueueConfig::default()).await;
    let c = sim.client();
    let jobs = Api::<Job>::default_namespaced(c.clone());
    let created = create_job(
        &c,
        &queued_job("held", &[("KUBESIM_DURATION_MS", "600000")], "team-a"),
    )
    .await;
    let wl_name = workload_name("held", created.metadata.uid.as_deref().unwrap());
    let workloads = Api::<Workload>::default_namespaced(c.clone());
    wait_obj(workloads.clone(), &wl_name, |_| true).await;

    jobs.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    wait_job(&c, "held", |j| suspended(j) == Some(true)).await;

    post(&sim, &format!("/kubesim/kueue/admit/default/{wl_name}")).await;
    wait_job(&c, "held", |j| {
        j.status.as_ref().and_then(|s| s.active) == Some(1)
    })
    .await;

    let r = post(&sim, &format!("/kubesim/kueue/evict/default/{wl_name}")).await;
    assert_eq!(r.status(), 200);
    let wl: Workload = r.json().await.unwrap();
    assert!(cond_is(&wl, "Evicted", "True", "Preempted"));
    assert!(cond_is(&wl, "Admitted", "False", "NoReservation"));
    let stopped = wait_job(&c, "held", |j| {
        suspended(j) == Some(true) && has_condition(j, "Suspended")
    })
    .await;
    assert!(!has_condition(&stopped, "Failed"));
    wait_until(&sim, "the evicted Job's pods are gone", || async {
        job_pods(&c, "held").await.is_empty()
    })
    .await;

    let r = post(&sim, &format!("/kubesim/kueue/admit/default/{wl_name}")).await;
    let wl: Workload = r.json().await.unwrap();
    assert!(cond_is(&wl, "Evicted", "False", "QuotaReserved"));
    assert_eq!(
        cond(&wl, "Evicted").unwrap()["message"],
        "Previously: Preempted to accommodate a higher priority Workload"
    );
    wait_job(&c, "held", |j| {
        suspended(j) == Some(false) && j.status.as_ref().and_then(|s| s.active) == Some(1)
    })
    .await;
    sim.shutdown().await;
}

/// With auto-admit every Workload is admitted at once; a Job without the label is none of
/// Kueue's business (no Workload, not suspended).
#[tokio::test]
async fn auto_admit_runs_queued_jobs_and_unlabelled_jobs_are_untouched() {
    let sim = kueue_sim(KueueConfig {
        auto_admit: true,
        ..KueueConfig::default()
    })
    .await;
    let c = sim.client();
    let mut auto = queued_job("auto", &[], "team-a");
    auto.metadata.labels.as_mut().unwrap().insert(
        "kueue.x-k8s.io/priority-class".into(),
        "high-priority".into(),
    );
    create_job(&c, &auto).await;
    let plain = create_job(&c, &job("plain", &[])).await;
    assert_eq!(suspended(&plain), Some(false));
    assert!(has_condition(&wait_finished(&c, "auto").await, "Complete"));
    let done = wait_finished(&c, "plain").await;
    assert!(has_condition(&done, "Complete"));
    assert!(!done
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Suspended")));
    let all = Api::<Workload>::default_namespaced(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let names: Vec<_> = all
        .items
        .iter()
        .filter_map(|w| w.metadata.name.clone())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("job-auto-"), "{names:?}");
    let wl = &all.items[0];
    assert_eq!(wl.spec["priorityClassName"], "high-priority");
    assert!(wl.condition_true("Admitted"));
    sim.shutdown().await;
}

/// Without the switch the label means nothing (no webhook, no Workload API), as on a cluster
/// without Kueue.
#[tokio::test]
async fn with_kueue_off_the_queue_label_has_no_effect() {
    let sim = sim().await;
    let c = sim.client();
    let created = create_job(&c, &queued_job("free", &[], "team-a")).await;
    assert_eq!(suspended(&created), Some(false));
    assert!(has_condition(&wait_finished(&c, "free").await, "Complete"));
    let r = reqwest::get(format!(
        "{}/apis/kueue.x-k8s.io/v1beta1/namespaces/default/workloads",
        sim.url()
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let groups: Value = reqwest::get(format!("{}/apis", sim.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!groups.to_string().contains("kueue.x-k8s.io"));
    let r = post(&sim, "/kubesim/kueue/admit/default/job-free-00000").await;
    assert_eq!(r.status(), 404);
    sim.shutdown().await;
}

/// The Workload of a deleted Job goes with it (owner reference).
#[tokio::test]
async fn deleting_the_job_deletes_its_workload() {
    let sim = kueue_sim(KueueConfig::default()).await;
    let c = sim.client();
    let created = create_job(&c, &queued_job("gone", &[], "team-a")).await;
    let wl_name = workload_name("gone", created.metadata.uid.as_deref().unwrap());
    let workloads = Api::<Workload>::default_namespaced(c.clone());
    wait_obj(workloads.clone(), &wl_name, |_| true).await;
    Api::<Job>::default_namespaced(c.clone())
        .delete("gone", &kube::api::DeleteParams::background())
        .await
        .unwrap();
    wait_gone(workloads, &wl_name).await;
    let r = post(&sim, &format!("/kubesim/kueue/admit/default/{wl_name}")).await;
    assert_eq!(r.status(), 404, "admitting a Workload that does not exist");
    sim.shutdown().await;
}
