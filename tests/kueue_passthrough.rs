//! Kueue pass-through (issue 16): a run naming a `queueName` becomes a suspended Job labelled for
//! Kueue's LocalQueue, waits `admitting` with the Workload's message for as long as Kueue holds
//! it (no launch or pending timeout applies, it is never `lost`), and runs once admitted. Against
//! kubesim with its Kueue part on (`SimConfig::kueue`), which admits only when a test asks.

mod common;

use common::service::{eventually, jobs_of, pods_of, scripted, RunnerKind, Service};
use common::{assert_problem, TestApp};
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kubesim::kueue::{workload_name, KueueConfig, Workload, DEFAULT_PENDING_MESSAGE};
use kubesim::{KubeSim, SimConfig};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// `MAX_QUEUE_WAIT_SECS` and `MAX_PENDING_SECS` in these tests: a held run outlives both.
const SHORT_LIMIT_SECS: u64 = 2;

async fn kueue_sim() -> KubeSim {
    KubeSim::start(SimConfig {
        runner: RunnerKind::Scripted,
        kueue: Some(KueueConfig::default()),
        ..SimConfig::default()
    })
    .await
    .expect("kubesim starts")
}

async fn start(db: PgPool, sim: &KubeSim) -> Service {
    let limit = SHORT_LIMIT_SECS.to_string();
    Service::start(
        db,
        sim.client(),
        &[
            "--max-queue-wait-secs",
            &limit,
            "--max-pending-secs",
            &limit,
        ],
    )
    .await
}

/// The run's one Job, as the cluster has it now.
async fn job_of(sim: &KubeSim, id: &str) -> Job {
    let jobs = jobs_of(&sim.client(), id).await;
    assert_eq!(jobs.len(), 1, "one Job per run");
    jobs.into_iter().next().unwrap()
}

/// The Workload kubesim's Kueue made for the run's Job.
async fn workload_of(sim: &KubeSim, id: &str) -> String {
    let job = job_of(sim, id).await;
    workload_name(
        job.metadata.name.as_deref().unwrap(),
        job.metadata.uid.as_deref().unwrap(),
    )
}

async fn kueue(sim: &KubeSim, step: &str, workload: &str) {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/kubesim/kueue/{step}/default/{workload}",
            sim.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "kubesim {step}s {workload}"
    );
}

/// The run's statuses in order, without the `waiting` entries (a new Workload message).
async fn statuses(service: &Service, id: &str) -> Vec<String> {
    let events = service.get(&format!("/v1/runs/{id}/events")).await;
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] != "waiting")
        .map(|e| e["status"].as_str().unwrap().to_string())
        .collect()
}

fn suspended(job: &Job) -> Option<bool> {
    job.spec.as_ref().and_then(|s| s.suspend)
}

/// Polls the run for `hold`, failing as soon as it is seen in any status but `admitting`.
async fn never_failed_or_lost(service: &Service, id: &str, hold: Duration) {
    let deadline = tokio::time::Instant::now() + hold;
    while tokio::time::Instant::now() < deadline {
        let run = service.run(id).await;
        assert_eq!(
            run["status"], "admitting",
            "a run Kueue holds stays admitting: {run:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Acceptance 5 of issue 16.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_run_in_a_kueue_queue_waits_admitting_past_every_timeout_and_succeeds_once_admitted(
    db: PgPool,
) {
    let sim = kueue_sim().await;
    let service = start(db, &sim).await;

    let id = service
        .submit(scripted(
            &[],
            json!({"queueName": "team-a", "priorityClass": "high"}),
        ))
        .await;
    let run = service.wait_for(&id, "admitting", WAIT).await;
    assert_eq!(run["template"]["queueName"], "team-a");

    // The Job: suspended as Kueue expects, in the LocalQueue, with the priority class.
    let job = job_of(&sim, &id).await;
    assert_eq!(suspended(&job), Some(true));
    let labels = job.metadata.labels.clone().unwrap();
    assert_eq!(labels["kueue.x-k8s.io/queue-name"], "team-a");
    assert_eq!(labels["kueue.x-k8s.io/priority-class"], "high");
    let workload = workload_of(&sim, &id).await;
    let workloads: Api<Workload> = Api::default_namespaced(sim.client());
    let wl = workloads.get(&workload).await.unwrap();
    assert_eq!(wl.spec["priorityClassName"], "high");

    // The Workload's message is shown on the run.
    eventually("the Workload's message on the run", WAIT, || {
        let service = &service;
        let id = id.clone();
        async move { service.run(&id).await["statusMessage"] == DEFAULT_PENDING_MESSAGE }
    })
    .await;
    assert_eq!(service.run(&id).await["statusReason"], "Pending");

    // Held for twice MAX_QUEUE_WAIT_SECS (and MAX_PENDING_SECS): still waiting, still suspended.
    never_failed_or_lost(&service, &id, Duration::from_secs(2 * SHORT_LIMIT_SECS)).await;
    assert_eq!(
        suspended(&job_of(&sim, &id).await),
        Some(true),
        "the service never unsuspends the Job itself"
    );
    assert!(pods_of(&sim.client(), &id).await.is_empty());

    // Admission runs it to success.
    kueue(&sim, "admit", &workload).await;
    let run = service.wait_for(&id, "succeeded", WAIT).await;
    assert_eq!(run["pods"]["succeeded"], 1);
    let seen = statuses(&service, &id).await;
    assert_eq!(seen[..3], ["queued", "creating", "admitting"], "{seen:?}");
    assert_eq!(seen.last().unwrap(), "succeeded");
    assert!(
        !seen.iter().any(|s| s == "failed" || s == "lost"),
        "{seen:?}"
    );
    // The history shows the Workload's message as why it waited.
    let history = service.get(&format!("/v1/runs/{id}/events")).await;
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["status"] == "admitting" && e["message"] == DEFAULT_PENDING_MESSAGE),
        "{history:#}"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_evicted_run_waits_admitting_again_and_succeeds_once_readmitted(db: PgPool) {
    let sim = kueue_sim().await;
    let service = start(db, &sim).await;

    let id = service
        .submit(scripted(
            &[("KUBESIM_DURATION_MS", "3000")],
            json!({"queueName": "team-a"}),
        ))
        .await;
    service.wait_for(&id, "admitting", WAIT).await;
    let workload = workload_of(&sim, &id).await;
    kueue(&sim, "admit", &workload).await;
    service.wait_for(&id, "running", WAIT).await;

    // Preempted while running: Kueue suspends the Job, the Job controller removes its pod.
    kueue(&sim, "evict", &workload).await;
    service.wait_for(&id, "admitting", WAIT).await;
    // The Job's suspension and the Workload's eviction come by two watches, in either order.
    eventually("the eviction's reason on the run", WAIT, || {
        let service = &service;
        let id = id.clone();
        async move { service.run(&id).await["statusReason"] == "Preempted" }
    })
    .await;
    let run = service.run(&id).await;
    assert_eq!(run["status"], "admitting");
    assert!(
        run["statusMessage"]
            .as_str()
            .unwrap()
            .starts_with("Preempted to accommodate a higher priority Workload"),
        "{run:#}"
    );
    eventually("the evicted pod removed", WAIT, || {
        let client = sim.client();
        let id = id.clone();
        async move { pods_of(&client, &id).await.is_empty() }
    })
    .await;
    // Still held past the limits: the evicted pod is no failure and the run is not lost.
    never_failed_or_lost(&service, &id, Duration::from_secs(SHORT_LIMIT_SECS + 1)).await;

    kueue(&sim, "admit", &workload).await;
    let run = service.wait_for(&id, "succeeded", WAIT).await;
    assert_eq!(run["pods"]["failed"], 0, "{run:#}");
    // The evicted pod's record says it was removed by the suspension, not that it failed.
    let pods = service.get(&format!("/v1/runs/{id}/pods")).await;
    let pods = pods.as_array().unwrap();
    assert_eq!(pods.len(), 2, "{pods:#?}");
    let evicted = pods.iter().find(|p| p["phase"] != "Succeeded").unwrap();
    assert_eq!(evicted["reason"], "JobSuspended", "{evicted:#}");
    assert!(
        evicted["message"]
            .as_str()
            .unwrap()
            .contains("not counted as a failure"),
        "{evicted:#}"
    );
    assert_eq!(run["pods"]["succeeded"], 1, "{run:#}");
    let seen = statuses(&service, &id).await;
    let evicted_at = seen
        .iter()
        .position(|s| s == "running")
        .expect("it ran before the eviction");
    assert_eq!(seen[evicted_at + 1], "admitting", "{seen:?}");
    assert_eq!(seen.last().unwrap(), "succeeded");
    assert!(
        !seen.iter().any(|s| s == "failed" || s == "lost"),
        "{seen:?}"
    );
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn cancelling_a_held_run_deletes_its_job_and_the_workload_goes_with_it(db: PgPool) {
    let sim = kueue_sim().await;
    let service = start(db, &sim).await;

    let id = service
        .submit(scripted(&[], json!({"queueName": "team-a"})))
        .await;
    service.wait_for(&id, "admitting", WAIT).await;
    let workload = workload_of(&sim, &id).await;
    eventually("the Workload's message on the run", WAIT, || {
        let service = &service;
        let id = id.clone();
        async move { service.run(&id).await["statusMessage"] == DEFAULT_PENDING_MESSAGE }
    })
    .await;
    // The metrics count it as admitting.
    let metrics = service
        .http
        .get(service.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("vfi_runs{task=\"\",status=\"admitting\"} 1\n"),
        "{metrics}"
    );

    let cancelled = service
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(service.run(&id).await["status"], "cancelled");
    let workloads: Api<Workload> = Api::default_namespaced(sim.client());
    eventually("the Job and its Workload deleted", WAIT, || {
        let client = sim.client();
        let id = id.clone();
        let workloads = workloads.clone();
        let workload = workload.clone();
        async move {
            jobs_of(&client, &id).await.is_empty()
                && workloads.get_opt(&workload).await.unwrap().is_none()
        }
    })
    .await;
    assert_eq!(
        statuses(&service, &id).await,
        ["queued", "creating", "admitting", "cancelled"]
    );
    // /v1/events told it all: admitting, Kueue's message, the end.
    let events = events_until_finished(&service, &id).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "run.status" && e["status"] == "admitting"),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "run.waiting"
            && e["status"] == "admitting"
            && e["reason"] == "Pending"
            && e["message"] == DEFAULT_PENDING_MESSAGE),
        "{events:#?}"
    );
}

/// `/v1/events` from the first event on, until run `id` finished: each event's data.
async fn events_until_finished(service: &Service, id: &str) -> Vec<Value> {
    use futures::StreamExt;
    let response = service
        .http
        .get(service.url("/v1/events"))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                let event: Value = serde_json::from_str(&data).unwrap();
                let done = event["type"] == "run.finished" && event["runId"] == id;
                seen.push(event);
                if done {
                    return;
                }
            }
            let chunk = stream.next().await.expect("stream open").unwrap();
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("the run's events within the timeout");
    seen
}

#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_bad_queue_name_or_priority_class_is_422_naming_the_field_and_changes_nothing(
    db: PgPool,
) {
    let app = TestApp::spawn(db).await;
    let base = json!({"image": "busybox"});
    let with = |extra: Value| {
        let mut t = base.clone();
        t.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({ "template": t })
    };
    let cases = [
        (json!({"queueName": "Team_A"}), "template.queueName"),
        (json!({"queueName": ""}), "template.queueName"),
        (json!({"queueName": "a".repeat(64)}), "template.queueName"),
        (
            json!({"queueName": "team-a", "priorityClass": "High!"}),
            "template.priorityClass",
        ),
        (json!({"priorityClass": "high"}), "template.priorityClass"),
        (
            json!({"labels": {"kueue.x-k8s.io/queue-name": "team-a"}}),
            "template.labels.kueue.x-k8s.io/queue-name",
        ),
        (
            json!({"labels": {"kueue.x-k8s.io/priority-class": "high"}}),
            "template.labels.kueue.x-k8s.io/priority-class",
        ),
    ];
    for (extra, field) in cases {
        let response = app.post_json("/v1/runs", &with(extra)).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await;
    }

    // A task's template, and a task run's own queue.
    let response = app
        .put_json(
            "/v1/tasks/render",
            &json!({"template": {"image": "busybox", "queueName": "team_a"}}),
        )
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("template.queueName"),
    )
    .await;
    app.put_task(
        "render",
        &json!({"template": {"image": "busybox", "queueName": "team-a"}}),
    )
    .await;
    for (body, field) in [
        (json!({"queueName": "Team-A"}), "queueName"),
        (json!({"priorityClass": "-high"}), "priorityClass"),
    ] {
        let response = app.post_json("/v1/tasks/render/runs", &body).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(field)).await;
    }
    assert_eq!(
        app.count("runs").await,
        0,
        "a refused request stores no run"
    );

    // The good ones are taken, a task run's queue replacing the task's.
    let run = app
        .start_task_run(
            "render",
            &json!({"queueName": "team-b", "priorityClass": "high"}),
        )
        .await;
    assert_eq!(run["template"]["queueName"], "team-b");
    assert_eq!(run["template"]["priorityClass"], "high");
}
