//! One front door for submissions (issue 14): every way a run is submitted is held to today's
//! policy and caps, and the launcher checks the policy again right before it creates a Job.

mod common;

use chrono::{DateTime, Utc};
use common::assert_problem;
use common::service::{eventually, jobs_of, kubesim, ManualClock, RunnerKind, Service};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use vfi_orchestrator::domain::RunTemplate;

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
    let queued = common::queue_run(&mut conn, None, &template).await;
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
    let run = after.wait_for(&queued, "failed", WAIT).await;
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

const SECRET: &str = "It's a Secret to Everybody";

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// Saves task `name` (every minute, `template`) with a GitLab trigger; returns its hook path.
async fn scheduled_task_with_hook(service: &Service, name: &str, template: Value) -> String {
    let put = |path: String, body: Value| {
        let request = service.http.put(service.url(&path)).json(&body);
        async move { request.send().await.unwrap() }
    };
    let body = json!({"template": template, "schedule": "* * * * *"});
    let response = put(format!("/v1/tasks/{name}"), body).await;
    assert!(response.status().is_success(), "{}", response.status());
    let body = json!({"provider": "gitlab", "secret": SECRET, "events": ["push"]});
    let response = put(format!("/v1/tasks/{name}/triggers/gitlab"), body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let trigger: Value = response.json().await.unwrap();
    trigger["hookPath"].as_str().unwrap().to_string()
}

async fn push(service: &Service, hook: &str, delivery: &str) -> reqwest::Response {
    let body = std::fs::read(format!(
        "{}/tests/fixtures/webhooks/gitlab-push.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    reqwest::Client::new()
        .post(service.url(hook))
        .header("content-type", "application/json")
        .header("x-gitlab-event", "Push Hook")
        .header("x-gitlab-event-uuid", delivery)
        .header("x-gitlab-token", SECRET)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Every way but the API: a task run, a backfill, a webhook delivery; each answered `status`
/// (naming `field` when given).
async fn each_door_answers(
    service: &Service,
    task: &str,
    hook: &str,
    status: StatusCode,
    field: Option<&str>,
) {
    let api = service
        .post(&format!("/v1/tasks/{task}/runs"), &json!({}))
        .await;
    assert_problem(api, status, field).await;
    let range = json!({"from": "2026-01-05T09:58:00Z", "to": "2026-01-05T09:59:00Z"});
    let backfill = service
        .post(&format!("/v1/tasks/{task}/backfill"), &range)
        .await;
    assert_problem(backfill, status, field).await;
    let delivery = format!("4f8c2d2e-0000-4000-8000-{:012}", task.len());
    assert_problem(push(service, hook, &delivery).await, status, field).await;
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn scheduled_backfilled_and_webhook_runs_meet_the_same_policy_and_queue_cap_as_api_runs(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let clock = ManualClock::new(utc("2026-01-05T10:00:30Z"));
    // Both tasks were saved while kube-public was allowed.
    let wide = ["--namespaces", "default,kube-public"];
    let before =
        Service::start_with_clock(db.clone(), sim.client(), &wide, Some(clock.clone())).await;
    let far_hook = scheduled_task_with_hook(&before, "far", in_kube_public()).await;
    let near = json!({"image": "busybox", "command": ["true"]});
    let near_hook = scheduled_task_with_hook(&before, "near", near.clone()).await;
    before.stop().await;

    // `near` has one run waiting (for a retry an hour away), as many as the cap allows.
    let template: RunTemplate = serde_json::from_value(near).unwrap();
    let mut conn = db.acquire().await.unwrap();
    let waiting = common::queue_run(&mut conn, Some("near"), &template).await;
    sqlx::query("UPDATE runs SET launch_not_before = now() + interval '1 hour' WHERE id = $1")
        .bind(waiting.id)
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);

    let narrow = ["--namespaces", "default", "--max-queued-runs-per-task", "1"];
    let after =
        Service::start_with_clock(db.clone(), sim.client(), &narrow, Some(clock.clone())).await;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    each_door_answers(
        &after,
        "far",
        &far_hook,
        unprocessable,
        Some("template.namespace"),
    )
    .await;
    each_door_answers(
        &after,
        "near",
        &near_hook,
        StatusCode::TOO_MANY_REQUESTS,
        None,
    )
    .await;

    // The schedule's next time meets the same policy and cap.
    clock.set(utc("2026-01-05T10:01:30Z"));
    let skips = |task: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_as::<_, (DateTime<Utc>, String, String)>(
                "SELECT scheduled_time, reason, message FROM schedule_fires
                 WHERE task_name = $1 AND outcome = 'skipped' ORDER BY scheduled_time",
            )
            .bind(task)
            .fetch_all(&db)
            .await
            .unwrap()
        }
    };
    eventually("both scheduled times skipped", WAIT, || async {
        skips("far").await.len() == 1 && skips("near").await.len() == 1
    })
    .await;
    let (time, reason, message) = skips("far").await.remove(0);
    assert_eq!(
        (time, reason.as_str()),
        (utc("2026-01-05T10:01:00Z"), "BeyondLimits")
    );
    assert!(message.contains("template.namespace"), "{message}");
    let (time, reason, _) = skips("near").await.remove(0);
    assert_eq!(
        (time, reason.as_str()),
        (utc("2026-01-05T10:01:00Z"), "QueueFull")
    );

    // Nothing was recorded by any refused door: only the waiting run exists.
    let runs: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM runs")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(runs, [waiting.id]);
    let started: i64 =
        sqlx::query_scalar("SELECT count(*) FROM schedule_fires WHERE outcome = 'started'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(started, 0);
    after.stop().await;
}
