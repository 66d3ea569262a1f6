//! The garbage collector follows `ownerReferences` for every kind the simulator stores, as
//! https://kubernetes.io/docs/concepts/architecture/garbage-collection/ and
//! https://kubernetes.io/docs/tasks/administer-cluster/use-cascading-deletion/ describe it:
//! background deletion by default, `propagationPolicy` Foreground and Orphan honoured, a
//! dependent deleted only once all its owners are absent. Kueue's Workloads (owned by their Job)
//! are the dependents of a kind other than Pod.

mod common;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kubesim::kueue::{workload_name, KueueConfig, Workload};
use kubesim::{KubeSim, SimConfig};
use serde_json::json;

async fn kueue_sim() -> KubeSim {
    sim_with(SimConfig {
        kueue: Some(KueueConfig::default()),
        ..SimConfig::default()
    })
    .await
}

/// A Job in a Kueue queue (held suspended, so it has no pods) and the name of its Workload,
/// once Kueue made it.
async fn queued_job(sim: &KubeSim, name: &str) -> (Job, String) {
    let c = sim.client();
    let mut j = job(name, &[]);
    j.metadata.labels = Some([("kueue.x-k8s.io/queue-name".into(), "team-a".into())].into());
    let created = create_job(&c, &j).await;
    let wl = workload_name(name, created.metadata.uid.as_deref().unwrap());
    wait_obj(Api::<Workload>::default_namespaced(c), &wl, |_| true).await;
    (created, wl)
}

fn owner_uids(wl: &Workload) -> Vec<String> {
    wl.metadata
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.clone())
        .collect()
}

#[tokio::test]
async fn a_workload_goes_with_its_job_in_the_background() {
    let sim = kueue_sim().await;
    let c = sim.client();
    let (_, wl) = queued_job(&sim, "bg").await;
    Api::<Job>::default_namespaced(c.clone())
        .delete("bg", &DeleteParams::background())
        .await
        .unwrap();
    wait_gone(Api::<Workload>::default_namespaced(c), &wl).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn an_orphaned_workload_stays_without_its_owner_reference() {
    let sim = kueue_sim().await;
    let c = sim.client();
    let jobs = Api::<Job>::default_namespaced(c.clone());
    let (_, wl) = queued_job(&sim, "orph").await;
    jobs.delete("orph", &DeleteParams::orphan()).await.unwrap();
    wait_gone(jobs, "orph").await;
    let workloads = Api::<Workload>::default_namespaced(c);
    let left = workloads.get(&wl).await.expect("the Workload stays");
    assert!(left.metadata.owner_references.is_none(), "{left:?}");
    assert!(left.metadata.deletion_timestamp.is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn foreground_deletion_keeps_the_job_until_its_blocking_workload_is_gone() {
    let sim = kueue_sim().await;
    let c = sim.client();
    let jobs = Api::<Job>::default_namespaced(c.clone());
    let workloads = Api::<Workload>::default_namespaced(c.clone());
    let (_, wl) = queued_job(&sim, "fg").await;
    // A finalizer of someone else's holds the Workload (blockOwnerDeletion: true, from Kueue).
    workloads
        .patch(
            &wl,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
        )
        .await
        .unwrap();

    jobs.delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    let held = wait_obj(workloads.clone(), &wl, |w| {
        w.metadata.deletion_timestamp.is_some()
    })
    .await;
    assert_eq!(owner_uids(&held).len(), 1);
    let job = jobs
        .get("fg")
        .await
        .expect("the Job waits for its Workload");
    assert!(job.metadata.deletion_timestamp.is_some());
    assert!(job
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == "foregroundDeletion"));

    workloads
        .patch(
            &wl,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait_gone(workloads, &wl).await;
    wait_gone(jobs, "fg").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dependent_is_deleted_only_once_all_its_owners_are_gone() {
    let sim = kueue_sim().await;
    let c = sim.client();
    let jobs = Api::<Job>::default_namespaced(c.clone());
    let workloads = Api::<Workload>::default_namespaced(c.clone());
    let suspended = |name: &str| job_json(name, &[], json!({"suspend": true}));
    let a = create_job(&c, &suspended("owner-a")).await;
    let b = create_job(&c, &suspended("owner-b")).await;
    let owner = |j: &Job| {
        json!({"apiVersion": "batch/v1", "kind": "Job", "name": j.metadata.name,
               "uid": j.metadata.uid})
    };
    let shared: Workload = serde_json::from_value(json!({
        "metadata": {"name": "shared", "ownerReferences": [owner(&a), owner(&b)]},
        "spec": {"queueName": "team-a", "podSets": [{"name": "main", "count": 1, "template": {}}]}
    }))
    .unwrap();
    workloads
        .create(&PostParams::default(), &shared)
        .await
        .unwrap();

    jobs.delete("owner-a", &DeleteParams::background())
        .await
        .unwrap();
    wait_obj(workloads.clone(), "shared", |w| {
        owner_uids(w) == [b.metadata.uid.clone().unwrap()]
    })
    .await;

    jobs.delete("owner-b", &DeleteParams::background())
        .await
        .unwrap();
    wait_gone(workloads, "shared").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_pod_owned_by_a_workload_is_deleted_with_it() {
    let sim = kueue_sim().await;
    let c = sim.client();
    let workloads = Api::<Workload>::default_namespaced(c.clone());
    let pods = Api::<Pod>::default_namespaced(c.clone());
    let owner: Workload = serde_json::from_value(json!({
        "metadata": {"name": "owner"},
        "spec": {"queueName": "team-a", "podSets": [{"name": "main", "count": 1, "template": {}}]}
    }))
    .unwrap();
    let owner = workloads
        .create(&PostParams::default(), &owner)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "owned", "ownerReferences": [{
            "apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload", "name": "owner",
            "uid": owner.metadata.uid}]},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox",
            "env": [{"name": "KUBESIM_DURATION_MS", "value": "60000"}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    workloads
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(pods, "owned").await;
    sim.shutdown().await;
}
