//! A run that cannot start says why within seconds, and fails after the pending limit with that
//! reason (its Job deleted): an image that cannot be pulled, a GPU asked of a cluster without
//! one, pods refused by Pod Security admission or by a ResourceQuota. Each against kubesim in
//! the matching mode (see kubesim/tests/cluster_behaviour.rs for the Kubernetes behaviour each
//! follows).

mod common;

use common::service::{eventually, jobs_of, KubeSim, Service, SimConfig};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::Api;
use kubesim::admission::Quota;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The acceptance bound: the reason shows within 5 s of submission.
const SHOWS_WITHIN: Duration = Duration::from_secs(5);
const PENDING_LIMIT_SECS: u64 = 3;

fn template(extra: Value) -> Value {
    let mut t = json!({"image": "busybox", "command": ["true"]});
    t.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    t
}

async fn start(db: PgPool, config: SimConfig) -> (KubeSim, Service) {
    let sim = KubeSim::start(config).await.expect("kubesim starts");
    let limit = PENDING_LIMIT_SECS.to_string();
    let service = Service::start(db, sim.client(), &["--max-pending-secs", &limit]).await;
    (sim, service)
}

/// Submits `template`, waits until the run is pending with a reason, and checks the reason and
/// message; then waits for the pending limit to fail it with the same reason and delete its Job.
async fn shows_why_then_fails(
    sim: &KubeSim,
    service: &Service,
    template: Value,
    reasons: &[&str],
    message_part: &str,
) {
    let submitted = Instant::now();
    let id = service.submit(template).await;
    eventually("the run shows why it waits", SHOWS_WITHIN, || async {
        let run = service.run(&id).await;
        run["status"] == "pending" && run["statusReason"].is_string()
    })
    .await;
    assert!(submitted.elapsed() <= SHOWS_WITHIN);
    let run = service.run(&id).await;
    let reason = run["statusReason"].as_str().unwrap();
    assert!(reasons.contains(&reason), "{run:#}");
    assert!(
        run["statusMessage"]
            .as_str()
            .unwrap()
            .contains(message_part),
        "{run:#}"
    );
    let history = service.get(&format!("/v1/runs/{id}/events")).await;
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "waiting" && reasons.contains(&e["reason"].as_str().unwrap())),
        "{history:#}"
    );

    let limit = Duration::from_secs(PENDING_LIMIT_SECS);
    let failed = service
        .wait_for(&id, "failed", limit + Duration::from_secs(10))
        .await;
    assert!(
        submitted.elapsed() >= limit,
        "failed before the pending limit"
    );
    assert!(
        reasons.contains(&failed["statusReason"].as_str().unwrap()),
        "{failed:#}"
    );
    let message = failed["statusMessage"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "the run did not start within {PENDING_LIMIT_SECS} s: "
        )) && message.contains(message_part),
        "{message}"
    );
    let client = sim.client();
    eventually(
        "the run's Job is deleted",
        Duration::from_secs(10),
        || async { jobs_of(&client, &id).await.is_empty() },
    )
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_image_that_cannot_be_pulled_shows_and_fails_the_run(db: PgPool) {
    let mut config = SimConfig::default();
    config.behaviour.image_pull.initial_backoff = Duration::from_millis(200);
    let (sim, service) = start(db, config).await;
    shows_why_then_fails(
        &sim,
        &service,
        template(json!({"image": "busybox:doesnotexist"})),
        &["ErrImagePull", "ImagePullBackOff"],
        "busybox:doesnotexist",
    )
    .await;
}

/// Issue 18, acceptance 3: a run reading a Secret that does not exist waits with the kubelet's
/// `CreateContainerConfigError` and its message (`secret "db" not found`, kubesim following
/// kuberuntime_container.go), then fails with it after the pending limit, never `lost`.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_run_reading_a_missing_secret_shows_create_container_config_error_and_fails(db: PgPool) {
    let mut config = SimConfig::default();
    config.behaviour.config_retry = Duration::from_millis(200);
    let sim = KubeSim::start(config).await.expect("kubesim starts");
    let limit = PENDING_LIMIT_SECS.to_string();
    let service = Service::start(
        db,
        sim.client(),
        &[
            "--max-pending-secs",
            &limit,
            "--allow-env-from-cluster",
            "all",
        ],
    )
    .await;
    shows_why_then_fails(
        &sim,
        &service,
        template(json!({"env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
        ]})),
        &["CreateContainerConfigError"],
        r#"secret "db" not found"#,
    )
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_gpu_run_on_a_cluster_without_gpus_shows_the_schedulers_message(db: PgPool) {
    let (sim, service) = start(db, SimConfig::default()).await;
    shows_why_then_fails(
        &sim,
        &service,
        template(json!({"resources": {
            "requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}
        }})),
        &["Unschedulable"],
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
    )
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn pods_refused_by_pod_security_show_the_failed_create(db: PgPool) {
    let (sim, service) = start(db, SimConfig::default()).await;
    // The service runs as root unless RUN_AS_NON_ROOT: `restricted` refuses that.
    Api::<Namespace>::all(sim.client())
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted"
            }}})),
        )
        .await
        .unwrap();
    shows_why_then_fails(
        &sim,
        &service,
        template(json!({})),
        &["FailedCreate"],
        "violates PodSecurity \"restricted:latest\": runAsNonRoot != true",
    )
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn pods_beyond_a_resource_quota_show_the_failed_create(db: PgPool) {
    let mut config = SimConfig::default();
    config.behaviour.admission.quotas.push(Quota {
        namespace: "default".into(),
        name: "compute".into(),
        hard: BTreeMap::from([("requests.cpu".to_string(), "1".to_string())]),
    });
    let (sim, service) = start(db, config).await;
    shows_why_then_fails(
        &sim,
        &service,
        template(json!({"resources": {"requests": {"cpu": "2"}}})),
        &["FailedCreate"],
        "exceeded quota: compute, requested: requests.cpu=2, used: requests.cpu=0, limited: requests.cpu=1",
    )
    .await;
}

/// A run that waited for room in its quota starts once the room is there (the Job controller
/// retries with back-off) and no longer shows why it waited.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_run_that_waited_for_quota_starts_when_room_frees_and_drops_the_reason(db: PgPool) {
    let mut config = SimConfig::default();
    config.behaviour.admission.quotas.push(Quota {
        namespace: "default".into(),
        name: "one-pod".into(),
        hard: BTreeMap::from([("pods".to_string(), "1".to_string())]),
    });
    let sim = KubeSim::start(config).await.expect("kubesim starts");
    let service = Service::start(db, sim.client(), &[]).await;
    let slow = template(json!({"env": [{"name": "KUBESIM_DURATION_MS", "value": "1500"}]}));
    let first = service.submit(slow.clone()).await;
    service
        .wait_for(&first, "running", Duration::from_secs(10))
        .await;
    let second = service.submit(slow).await;
    eventually(
        "the second run waits for the quota",
        SHOWS_WITHIN,
        || async { service.run(&second).await["statusReason"] == "FailedCreate" },
    )
    .await;
    let running = service
        .wait_for(&second, "running", Duration::from_secs(30))
        .await;
    assert!(running.get("statusReason").is_none(), "{running:#}");
    service
        .wait_for(&second, "succeeded", Duration::from_secs(30))
        .await;
}
