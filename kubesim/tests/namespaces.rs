//! Namespace deletion as Kubernetes does it: the namespace goes `Terminating` (deletionTimestamp,
//! `status.phase`, the `kubernetes` finalizer in `spec.finalizers`), nothing new may be created
//! in it, its objects are deleted, objects held by finalizers keep it (and say so in its
//! conditions) until released, and it disappears once empty.
//! <https://kubernetes.io/docs/tasks/administer-cluster/namespaces/#deleting-a-namespace>,
//! `pkg/controller/namespace/deletion/namespaced_resources_deleter.go` and
//! `status_condition_utils.go`, `plugin/pkg/admission/namespace/lifecycle/admission.go`.

mod common;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

async fn create_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn wait_namespace_gone(client: &kube::Client, name: &str) {
    tokio::time::timeout(
        WAIT,
        await_condition(
            Api::<Namespace>::all(client.clone()),
            name,
            |ns: Option<&Namespace>| ns.is_none(),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("namespace {name} still exists"))
    .unwrap();
}

fn running_job(name: &str) -> Job {
    job(name, &[("KUBESIM_DURATION_MS", "600000")])
}

async fn wait_pod_running(sim: &kubesim::KubeSim, ns: &str) {
    wait_until(sim, "a running pod", || async {
        sim.store()
            .list::<Pod>(Some(ns))
            .0
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
}

#[tokio::test]
async fn a_deleted_namespace_terminates_deletes_its_objects_and_disappears() {
    let sim = sim().await;
    let client = sim.client();
    create_namespace(&client, "doomed").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "doomed");
    jobs.create(&PostParams::default(), &running_job("long"))
        .await
        .unwrap();
    wait_pod_running(&sim, "doomed").await;
    sim.faults().pause_controller(true);

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let ns = namespaces.get("doomed").await.unwrap();
    assert!(ns.metadata.deletion_timestamp.is_some());
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert_eq!(ns.spec.unwrap().finalizers.unwrap(), ["kubernetes"]);
    let refused = jobs
        .create(&PostParams::default(), &running_job("late"))
        .await
        .unwrap_err();
    match refused {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403);
            assert_eq!(
                s.message,
                "unable to create new content in namespace doomed because it is being terminated"
            );
        }
        other => panic!("{other:?}"),
    }

    sim.faults().pause_controller(false);
    wait_namespace_gone(&client, "doomed").await;
    assert!(sim.store().list::<Job>(Some("doomed")).0.is_empty());
    assert!(sim.store().list::<Pod>(Some("doomed")).0.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn objects_held_by_finalizers_keep_the_namespace_terminating_until_released() {
    let sim = sim().await;
    let client = sim.client();
    create_namespace(&client, "held").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "held");
    let mut held = running_job("held");
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    jobs.create(&PostParams::default(), &held).await.unwrap();
    wait_pod_running(&sim, "held").await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    let ns = wait_obj(namespaces.clone(), "held", |ns: &Namespace| {
        ns.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "NamespaceFinalizersRemaining"
                        && c.message.as_deref()
                            == Some("Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
                })
            })
    })
    .await;
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    wait_until(&sim, "the pods are gone", || async {
        sim.store().list::<Pod>(Some("held")).0.is_empty()
    })
    .await;
    assert!(
        namespaces.get_opt("held").await.unwrap().is_some(),
        "the held Job keeps the namespace"
    );

    jobs.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_namespace_gone(&client, "held").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn the_default_namespace_may_not_be_deleted() {
    let sim = sim().await;
    let err = Api::<Namespace>::all(sim.client())
        .delete("default", &DeleteParams::default())
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!(
            (s.code, s.message.as_str()),
            (
                403,
                r#"namespaces "default" is forbidden: this namespace may not be deleted"#
            )
        ),
        other => panic!("{other:?}"),
    }
    sim.shutdown().await;
}
