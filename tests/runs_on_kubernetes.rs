//! Runs become Kubernetes Jobs: launching, tracking, cancel and rerun, against kubesim through
//! the real kube-rs client.

mod common;

use common::calculatepi;
use common::service::{eventually, jobs_of, kubesim, pods_of, RunnerKind, Service};
use k8s_openapi::api::batch::v1::Job;
use kube::api::DeleteParams;
use kube::Api;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn scripted(env: &[(&str, &str)], extra: Value) -> Value {
    let mut template = json!({
        "image": "busybox",
        "command": ["true"],
        "env": env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
    });
    template
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    template
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn calculatepi_goes_from_queued_to_succeeded_with_its_pod_recorded(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    let service = Service::start(db, sim.client(), &[]).await;

    let id = service.submit(calculatepi()).await;
    let run = service
        .wait_for(&id, "succeeded", Duration::from_secs(60))
        .await;

    assert_eq!(
        service.statuses_seen(&id).await,
        ["queued", "creating", "pending", "running", "succeeded"]
    );
    assert_eq!(run["job"]["name"], "run-1");
    assert_eq!(run["job"]["namespace"], "default");
    assert_eq!(run["pods"]["succeeded"], 1);
    assert!(run["startedAt"].is_string() && run["finishedAt"].is_string());
    let pods = service.get(&format!("/v1/runs/{id}/pods")).await;
    let pods = pods.as_array().unwrap();
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert!(pod["name"].as_str().unwrap().starts_with("run-1-"), "{pod}");
    assert_eq!(pod["phase"], "Succeeded");
    assert_eq!(pod["exitCode"], 0);
    assert_eq!(pod["reason"], "Completed");
    assert!(
        pod["nodeName"].is_string()
            && pod["startedAt"].is_string()
            && pod["finishedAt"].is_string()
    );
    assert_eq!(jobs_of(&sim.client(), &id).await.len(), 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_failing_container_exhausts_the_backoff_limit(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;

    let id = service
        .submit(scripted(
            &[("KUBESIM_EXIT_CODE", "1")],
            json!({"backoffLimit": 2}),
        ))
        .await;
    let run = service.wait_for(&id, "failed", WAIT).await;

    assert_eq!(run["statusReason"], "BackoffLimitExceeded");
    assert_eq!(run["pods"]["failed"], 3);
    let pods = service.get(&format!("/v1/runs/{id}/pods")).await;
    let failed: Vec<&Value> = pods
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["phase"] == "Failed")
        .collect();
    assert_eq!(failed.len(), 3, "{pods:#}");
    assert!(failed.iter().all(|p| p["exitCode"] == 1));
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn exceeding_the_active_deadline_fails_the_run(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;

    let id = service
        .submit(scripted(
            &[("KUBESIM_DURATION_MS", "60000")],
            json!({"activeDeadlineSeconds": 1}),
        ))
        .await;
    let run = service.wait_for(&id, "failed", WAIT).await;
    assert_eq!(run["statusReason"], "DeadlineExceeded");
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn twenty_completions_five_at_a_time_succeed_with_twenty_pods(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;

    let id = service
        .submit(scripted(
            &[("KUBESIM_DURATION_MS", "20")],
            json!({"completions": 20, "parallelism": 5}),
        ))
        .await;
    let run = service.wait_for(&id, "succeeded", WAIT).await;
    assert_eq!(run["pods"]["succeeded"], 20);
    let pods = service.get(&format!("/v1/runs/{id}/pods")).await;
    let succeeded = pods
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["phase"] == "Succeeded")
        .count();
    assert_eq!(succeeded, 20);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn indexed_runs_record_each_pods_index(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;

    let id = service
        .submit(scripted(
            &[],
            json!({"completions": 5, "parallelism": 5, "completionMode": "Indexed"}),
        ))
        .await;
    service.wait_for(&id, "succeeded", WAIT).await;
    let pods = service.get(&format!("/v1/runs/{id}/pods")).await;
    let indexes: Vec<i64> = pods
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["completionIndex"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4]);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_cancelled_queued_run_never_reaches_the_cluster(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    // Recorded while no launcher runs: it stays queued.
    let api_only = common::TestApp::spawn(db.clone()).await;
    let queued = api_only.submit(&scripted(&[], json!({}))).await;
    let id = queued["id"].as_str().unwrap();
    let cancelled = api_only
        .post_json(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);

    let service = Service::start(db, sim.client(), &[]).await;
    // A run queued later is launched and finishes: the launcher has been through the queue.
    let later = service.submit(scripted(&[], json!({}))).await;
    service.wait_for(&later, "succeeded", WAIT).await;

    assert_eq!(service.run(id).await["status"], "cancelled");
    assert!(
        jobs_of(&sim.client(), id).await.is_empty(),
        "no Job for a cancelled queued run"
    );
    assert_eq!(service.statuses_seen(id).await, ["queued", "cancelled"]);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn cancelling_a_running_run_deletes_its_job_and_pods(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;

    let id = service
        .submit(scripted(
            &[("KUBESIM_DURATION_MS", "600000")],
            json!({"parallelism": 2, "completions": 2}),
        ))
        .await;
    service.wait_for(&id, "running", WAIT).await;
    let response = service
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let run: Value = response.json().await.unwrap();
    assert_eq!(run["status"], "cancelled");

    eventually("the Job and its pods to be gone", WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move { jobs_of(&client, &id).await.is_empty() && pods_of(&client, &id).await.is_empty() }
    })
    .await;
    assert_eq!(service.run(&id).await["status"], "cancelled");

    let again = service
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let problem: Value = again.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("cancelled"),
        "{problem}"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn cancelling_a_finished_run_is_a_409_naming_its_status(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let id = service.submit(scripted(&[], json!({}))).await;
    service.wait_for(&id, "succeeded", WAIT).await;

    let response = service
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let problem: Value = response.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("succeeded"),
        "{problem}"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_rerun_is_a_new_linked_run_with_the_same_template(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let template = scripted(&[("KUBESIM_EXIT_CODE", "1")], json!({"backoffLimit": 0}));
    let id = service.submit(template.clone()).await;
    service.wait_for(&id, "failed", WAIT).await;

    let response = service
        .post(&format!("/v1/runs/{id}/rerun"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let rerun: Value = response.json().await.unwrap();
    assert_eq!(rerun["rerunOf"], id.as_str());
    assert_eq!(rerun["trigger"], "rerun");
    assert_eq!(rerun["template"], template);
    assert_ne!(rerun["id"], id.as_str());
    service
        .wait_for(rerun["id"].as_str().unwrap(), "failed", WAIT)
        .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_job_deleted_behind_the_services_back_makes_its_run_lost(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;
    let id = service
        .submit(scripted(&[("KUBESIM_DURATION_MS", "600000")], json!({})))
        .await;
    let run = service.wait_for(&id, "running", WAIT).await;

    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    jobs.delete(
        run["job"]["name"].as_str().unwrap(),
        &DeleteParams::background(),
    )
    .await
    .unwrap();

    let lost = service.wait_for(&id, "lost", WAIT).await;
    assert_eq!(lost["statusReason"], "JobDeleted");
    eventually("the deleted Job to be released and gone", WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move { jobs_of(&client, &id).await.is_empty() }
    })
    .await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_job_the_api_server_refuses_fails_the_run_with_its_message(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    // "missing" is allowed by the configuration but does not exist in the cluster.
    let service = Service::start(db, sim.client(), &["--namespaces", "default,missing"]).await;
    let id = service
        .submit(scripted(&[], json!({"namespace": "missing"})))
        .await;
    let run = service.wait_for(&id, "failed", WAIT).await;
    assert_eq!(run["statusReason"], "NotFound");
    assert!(
        run["statusMessage"].as_str().unwrap().contains("missing"),
        "{run:#}"
    );
    assert_eq!(run["launch"]["attempts"], 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn transient_api_failures_are_retried_and_shown_on_the_run(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    // Let the warm-up run's after-work finish (finalizers released, log archived) so that
    // nothing but the launcher calls the API server next; then fail its create calls.
    let warmup = service.submit(scripted(&[], json!({}))).await;
    service.wait_for(&warmup, "succeeded", WAIT).await;
    eventually("the warm-up run to be fully released", WAIT, || {
        let client = sim.client();
        let service = &service;
        let warmup = warmup.clone();
        async move {
            let logs_done = service.get(&format!("/v1/runs/{warmup}/pods")).await[0]["name"]
                .is_string()
                && sqlx::query_scalar::<_, String>(
                    "SELECT state FROM pod_logs WHERE run_id = $1::uuid",
                )
                .bind(&warmup)
                .fetch_optional(&service.db)
                .await
                .unwrap()
                .as_deref()
                    == Some("complete");
            let jobs = jobs_of(&client, &warmup).await;
            let pods = pods_of(&client, &warmup).await;
            logs_done
                && jobs
                    .iter()
                    .all(|j| j.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty()))
                && pods.iter().all(|p| {
                    !p.metadata
                        .finalizers
                        .iter()
                        .flatten()
                        .any(|f| f.starts_with("vfi-orchestrator.io/"))
                })
        }
    })
    .await;
    sim.faults().fail_requests(2, 500, None);

    let id = service.submit(scripted(&[], json!({}))).await;
    let run = service.wait_for(&id, "succeeded", WAIT).await;
    assert!(run["launch"]["attempts"].as_i64().unwrap() >= 2, "{run:#}");
    assert_eq!(jobs_of(&sim.client(), &id).await.len(), 1);
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_request_outside_the_namespace_allowlist_is_refused_at_submission(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let response = service
        .post(
            "/v1/runs",
            &json!({"template": scripted(&[], json!({"namespace": "kube-system"}))}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "template.namespace");
    let response = service
        .post(
            "/v1/runs",
            &json!({"template": scripted(&[], json!({"serviceAccountName": "admin"}))}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}
