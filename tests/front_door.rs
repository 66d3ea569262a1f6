//! One front door for submissions (issue 14): every way a run is submitted is held to today's
//! policy and caps, and the launcher checks the policy again right before it creates a Job.

mod common;

use common::service::{jobs_of, kubesim, RunnerKind, Service};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use vfi_orchestrator::domain::{RunTemplate, Trigger};
use vfi_orchestrator::store;

const WAIT: Duration = Duration::from_secs(30);

fn in_kube_public() -> Value {
    json!({"image": "busybox", "command": ["true"], "namespace": "kube-public"})
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn narrowing_the_namespace_allowlist_refuses_reruns_and_queued_runs_before_any_job(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let wide = ["--namespaces", "default,kube-public"];
    let before = Service::start(db.clone(), sim.client(), &wide).await;
    let finished = before.submit(in_kube_public()).await;
    before.wait_for(&finished, "succeeded", WAIT).await;
    before.stop().await;

    // Queued while the old configuration was in force, by a replica that has no launcher
    // running yet: straight through the store, as its submission did.
    let template: RunTemplate = serde_json::from_value(in_kube_public()).unwrap();
    let mut conn = db.acquire().await.unwrap();
    let queued = store::runs::insert(
        &mut conn,
        store::runs::NewRun {
            task_name: None,
            template: &template,
            trigger: Trigger::Api,
            rerun_of: None,
            scheduled_time: None,
            token_id: None,
        },
    )
    .await
    .unwrap();
    drop(conn);

    let after = Service::start(db, sim.client(), &["--namespaces", "default"]).await;
    let response = after
        .post(&format!("/v1/runs/{finished}/rerun"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(
        problem["errors"][0]["field"], "template.namespace",
        "{problem:#}"
    );

    let queued = queued.id.to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    let run = loop {
        let run = after.run(&queued).await;
        if run["status"] != "queued" && run["status"] != "creating" {
            break run;
        }
        assert!(tokio::time::Instant::now() < deadline, "{run:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["statusReason"], "PolicyRefused", "{run:#}");
    let message = run["statusMessage"].as_str().unwrap();
    assert!(
        message.contains("template.namespace") && message.contains("kube-public"),
        "{message}"
    );
    assert!(run["job"].is_null(), "{run:#}");
    assert!(jobs_of(&sim.client(), &queued).await.is_empty());
    // Only the first run ever reached the cluster.
    assert_eq!(jobs_of(&sim.client(), &finished).await.len(), 1);
    after.stop().await;
}
