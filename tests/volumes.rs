//! Issue 18, the volume allowlist: `volumes`/`volumeMounts` beyond scratch, through the API
//! against kubesim. A kind the installation does not allow (`ALLOWED_VOLUME_KINDS`, none by
//! default) and hostPath (never allowed) are refused naming `template.volumes[i]`, with nothing
//! stored; an allowed emptyDir and its mount reach the Job's pod spec and the run succeeds; bad
//! mounts are refused as the API server would (`ValidateVolumeMounts`), naming the field.

mod common;

use common::service::{jobs_of, scripted, KubeSim, Service, SimConfig};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
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

async fn runs_stored(service: &Service) -> i64 {
    sqlx::query_scalar("select count(*) from runs")
        .fetch_one(&service.db)
        .await
        .unwrap()
}

/// Submits `template` ad hoc, asserts a 422 and nothing stored, and returns the fields named.
async fn refused(service: &Service, template: Value) -> Vec<String> {
    let response = service
        .post("/v1/runs", &json!({ "template": template }))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(runs_stored(service).await, 0);
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect()
}

fn work_volume() -> Value {
    json!({
        "volumes": [{"name": "work", "emptyDir": {"sizeLimit": "1Gi"}}],
        "volumeMounts": [{"name": "work", "mountPath": "/work"}]
    })
}

/// By default no kind is allowed: an emptyDir is refused naming `template.volumes[0]`, and so
/// is hostPath, as are kinds the service does not support at all.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_volume_kind_not_allowed_is_422_naming_the_volume_and_nothing_is_stored(db: PgPool) {
    let (_sim, service) = start(db, &[]).await;
    assert_eq!(
        refused(&service, scripted(&[], work_volume())).await,
        ["template.volumes[0]"]
    );
    let nfs = json!({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]});
    assert_eq!(
        refused(&service, scripted(&[], nfs)).await,
        ["template.volumes[0]"]
    );
}

/// hostPath cannot be allowed: with every other kind allowed it is still a 422 naming the
/// volume (and `ALLOWED_VOLUME_KINDS=hostPath` stops the service from starting, see
/// src/app.rs's tests).
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn host_path_is_422_even_when_every_kind_is_allowed(db: PgPool) {
    let (_sim, service) = start(
        db,
        &[
            "--allowed-volume-kinds",
            "emptyDir,configMap,secret,persistentVolumeClaim",
        ],
    )
    .await;
    let host = json!({
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "volumeMounts": [{"name": "root", "mountPath": "/host"}]
    });
    assert_eq!(
        refused(&service, scripted(&[], host)).await,
        ["template.volumes[0]"]
    );
}

/// An allowed emptyDir with a mount reaches the Job's pod spec as core/v1 fields (in kubesim,
/// which validates the pod as the API server does), and the run succeeds.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_allowed_empty_dir_reaches_the_pod_spec_and_the_run_succeeds(db: PgPool) {
    let (sim, service) = start(db, &["--allowed-volume-kinds", "emptyDir"]).await;
    let id = service.submit(scripted(&[], work_volume())).await;
    service
        .wait_for(&id, "succeeded", Duration::from_secs(20))
        .await;
    let job = jobs_of(&sim.client(), &id).await.remove(0);
    let pod_spec = serde_json::to_value(job.spec.unwrap().template.spec.unwrap()).unwrap();
    assert_eq!(
        pod_spec["volumes"],
        json!([{"name": "work", "emptyDir": {"sizeLimit": "1Gi"}}])
    );
    assert_eq!(
        pod_spec["containers"][0]["volumeMounts"],
        json!([{"name": "work", "mountPath": "/work"}])
    );
}

/// Mounts are checked as the API server checks them, each refusal naming its field: a mount
/// of no declared volume, a relative path, a path mounted twice.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn bad_mounts_are_422_naming_the_field(db: PgPool) {
    let (_sim, service) = start(db, &["--allowed-volume-kinds", "emptyDir"]).await;
    let with_mounts = |mounts: Value| {
        scripted(
            &[],
            json!({"volumes": [{"name": "work", "emptyDir": {}}], "volumeMounts": mounts}),
        )
    };
    let cases = [
        (
            json!([{"name": "other", "mountPath": "/other"}]),
            "template.volumeMounts[0].name",
        ),
        (
            json!([{"name": "work", "mountPath": "work"}]),
            "template.volumeMounts[0].mountPath",
        ),
        (
            json!([{"name": "work", "mountPath": "/work"}, {"name": "work", "mountPath": "/work"}]),
            "template.volumeMounts[1].mountPath",
        ),
    ];
    for (mounts, field) in cases {
        assert_eq!(refused(&service, with_mounts(mounts)).await, [field]);
    }
}

/// A secret volume reads the cluster like env from it, so under the default
/// `ALLOW_ENV_FROM_CLUSTER=tasks` an ad-hoc run may not mount a Secret even with the kind
/// allowed; a task (an admin's definition) may.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_secret_volume_follows_the_env_from_cluster_rule(db: PgPool) {
    let (_sim, service) = start(db, &["--allowed-volume-kinds", "secret"]).await;
    let template = scripted(
        &[],
        json!({
            "volumes": [{"name": "creds", "secret": {"secretName": "db", "optional": true}}],
            "volumeMounts": [{"name": "creds", "mountPath": "/creds", "readOnly": true}]
        }),
    );
    assert_eq!(
        refused(&service, template.clone()).await,
        ["template.volumes[0]"]
    );
    let created = service
        .http
        .put(service.url("/v1/tasks/creds"))
        .json(&json!({ "template": template }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
}

/// A configMap volume of a missing ConfigMap: kubesim's kubelet holds the pod in
/// `ContainerCreating` with a `FailedMount` Event, as a kubelet does (kubesim/tests/
/// volume_mounts.rs). `ContainerCreating` is a reason that passes by itself, so the service
/// shows no reason; after `MAX_PENDING_SECS` the run fails with `PendingTimeout`, never `lost`.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_config_map_volume_of_a_missing_config_map_fails_the_run_after_the_pending_limit(
    db: PgPool,
) {
    let (sim, service) = start(
        db,
        &[
            "--allowed-volume-kinds",
            "configMap",
            "--allow-env-from-cluster",
            "all",
            "--max-pending-secs",
            "2",
        ],
    )
    .await;
    let id = service
        .submit(scripted(
            &[],
            json!({
                "volumes": [{"name": "conf", "configMap": {"name": "settings"}}],
                "volumeMounts": [{"name": "conf", "mountPath": "/etc/app", "readOnly": true}]
            }),
        ))
        .await;
    let failed = service
        .wait_for(&id, "failed", Duration::from_secs(30))
        .await;
    assert_eq!(failed["statusReason"], "PendingTimeout", "{failed:#}");
    let mounts = Api::<Event>::namespaced(sim.client(), "default")
        .list(&ListParams::default().fields("reason=FailedMount"))
        .await
        .unwrap();
    assert_eq!(
        mounts.items[0].message.as_deref(),
        Some(r#"MountVolume.SetUp failed for volume "conf" : configmap "settings" not found"#)
    );
    assert!(!service
        .statuses_seen(&id)
        .await
        .contains(&"lost".to_string()));
}
