//! Issue 18, the cluster half: a run's env from Secrets and ConfigMaps and its scratch volume,
//! against kubesim (whose kubelet resolves `valueFrom`/`envFrom` and whose ephemeral volume
//! controller makes the claims; see kubesim/tests/env_from.rs and ephemeral_volumes.rs for the
//! Kubernetes behaviour followed).
//!
//! Acceptance 3: a `secretKeyRef` in a namespace outside the allowlist is a 422; one to a
//! missing Secret shows the kubelet's reason and fails the run after the pending limit, never
//! `lost` (that one in tests/cannot_start.rs). Acceptance 4: `scratch: {size: 1Gi}` puts an
//! ephemeral volume in the Job's pod spec, and no PVC of the run is left once its Job is gone.

mod common;

use common::service::{eventually, jobs_of, pods_of, scripted, KubeSim, Service, SimConfig};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{ListParams, PostParams};
use kube::Api;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;

async fn start(db: PgPool, extra: &[&str]) -> (KubeSim, Service) {
    let sim = KubeSim::start(SimConfig::default())
        .await
        .expect("kubesim starts");
    let service = Service::start(db, sim.client(), extra).await;
    (sim, service)
}

fn secret_env() -> Value {
    json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}})
}

async fn runs_stored(service: &Service) -> i64 {
    sqlx::query_scalar("select count(*) from runs")
        .fetch_one(&service.db)
        .await
        .unwrap()
}

async fn refused(service: &Service, template: Value) -> Value {
    let response = service
        .post("/v1/runs", &json!({ "template": template }))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    response.json().await.unwrap()
}

/// By default (`ALLOW_ENV_FROM_CLUSTER=tasks`) an ad-hoc run may not read a Secret: 422 naming
/// the field, nothing stored. A task defined by an admin may, and its run sees the value
/// (the kubelet resolves it, and `$(TOKEN)` in a later value expands).
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn only_a_task_may_read_a_secret_by_default_and_its_run_sees_the_value(db: PgPool) {
    let (sim, service) = start(db, &[]).await;
    let template = scripted(&[("KUBESIM_LOG", "token=$(TOKEN)")], json!({}));
    let mut with_secret = template.clone();
    with_secret["env"]
        .as_array_mut()
        .unwrap()
        .insert(0, secret_env());
    let body = refused(&service, with_secret.clone()).await;
    assert_eq!(body["errors"][0]["field"], "template.env[0].valueFrom");
    assert_eq!(runs_stored(&service).await, 0);

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db"}, "stringData": {"password": "hunter2-xyz"}}))
    .unwrap();
    Api::<Secret>::namespaced(sim.client(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let created = service
        .http
        .put(service.url("/v1/tasks/deploy"))
        .json(&json!({"template": with_secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    // A per-run override may not redirect the task's env to another Secret.
    let overridden = service
        .post(
            "/v1/tasks/deploy/runs",
            &json!({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]}),
        )
        .await;
    assert_eq!(overridden.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = overridden.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "env[0].valueFrom");

    let response = service.post("/v1/tasks/deploy/runs", &json!({})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    service
        .wait_for(&id, "succeeded", Duration::from_secs(20))
        .await;
    let log = common::service::logs(&service, &id, "").await;
    assert!(log.contains("token=hunter2-xyz"), "{log}");
}

/// With `ALLOW_ENV_FROM_CLUSTER=all` an ad-hoc run may read a Secret, but only in a namespace
/// runs may use: the Secret is read in the Job's namespace, so the allowlist is the bound.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_secret_ref_in_a_namespace_outside_the_allowlist_is_refused(db: PgPool) {
    let (_sim, service) = start(db, &["--allow-env-from-cluster", "all"]).await;
    let template = json!({"image": "busybox", "namespace": "kube-system", "env": [secret_env()]});
    let body = refused(&service, template).await;
    assert_eq!(body["errors"][0]["field"], "template.namespace");
    assert_eq!(runs_stored(&service).await, 0);
    // Bad references are refused as the API server would, naming the field.
    let template = json!({"image": "busybox", "env": [
        {"name": "T", "valueFrom": {"secretKeyRef": {"name": "Not_A_Name", "key": "k"}}}]});
    let body = refused(&service, template).await;
    assert_eq!(
        body["errors"][0]["field"],
        "template.env[0].valueFrom.secretKeyRef.name"
    );
    let template =
        json!({"image": "busybox", "envFrom": [{"prefix": "1X", "secretRef": {"name": "db"}}]});
    let body = refused(&service, template).await;
    assert_eq!(body["errors"][0]["field"], "template.envFrom[0].prefix");
    assert_eq!(runs_stored(&service).await, 0);
}

/// `scratch: {size: 1Gi}`: the Job's pod spec carries a generic ephemeral volume mounted at
/// `/scratch`, kubesim makes its claim with the pod, and once the finished run's Job is deleted
/// (here by its `ttlSecondsAfterFinished`) no PVC of the run remains.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_scratch_volume_is_an_ephemeral_volume_that_leaves_no_claim_behind(db: PgPool) {
    let (sim, service) = start(db, &[]).await;
    let id = service
        .submit(scripted(
            &[],
            json!({"scratch": {"size": "1Gi"}, "ttlSecondsAfterFinished": 0}),
        ))
        .await;
    let client = sim.client();
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "default");
    eventually(
        "the run's pod has its claim",
        Duration::from_secs(20),
        || async {
            let pods = pods_of(&client, &id).await;
            let Some(pod) = pods.first() else {
                return false;
            };
            let name = format!("{}-scratch", pod.metadata.name.as_deref().unwrap());
            claims.get_opt(&name).await.unwrap().is_some()
        },
    )
    .await;
    let job = jobs_of(&client, &id).await.remove(0);
    let pod_spec = serde_json::to_value(job.spec.unwrap().template.spec.unwrap()).unwrap();
    assert_eq!(
        pod_spec["volumes"][0]["ephemeral"]["volumeClaimTemplate"]["spec"],
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}})
    );
    assert_eq!(
        pod_spec["containers"][0]["volumeMounts"],
        json!([{"name": "scratch", "mountPath": "/scratch"}])
    );
    service
        .wait_for(&id, "succeeded", Duration::from_secs(20))
        .await;
    eventually(
        "the Job and the run's claim are gone",
        Duration::from_secs(20),
        || async {
            jobs_of(&client, &id).await.is_empty()
                && claims
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items
                    .is_empty()
        },
    )
    .await;
}
