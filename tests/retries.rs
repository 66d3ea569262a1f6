//! Issue 19: retries that know the cluster and partial reruns, end to end against kubesim.
//! - a disrupted pod (Eviction API: `DisruptionTarget`) is replaced without spending the
//!   failure budget (`retry.onInfrastructureFailure`), a real failure is not retried;
//! - a run whose Job vanished is resubmitted once per loss, up to `retry.onLost`;
//! - `rerun?only=failed-indexes` runs exactly the failed indexes of an Indexed run, each pod
//!   seeing its original `JOB_COMPLETION_INDEX`, and `GET .../indexes` adds them up;
//! - podFailurePolicy input the API server would refuse is a 422 naming the field.

mod common;

use common::service::{eventually, jobs_of, kubesim, pods_of, scripted, RunnerKind, Service};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, EvictParams};
use kube::Api;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A fresh directory for marker files the host runner's shell scripts leave between attempts.
fn marker_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vfi-retries-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every run whose `rerunOf` is `id`.
async fn reruns_of(service: &Service, id: &str) -> Vec<Value> {
    let runs = service.get("/v1/runs?limit=1000").await;
    runs["items"]
        .as_array()
        .or_else(|| runs.as_array())
        .unwrap()
        .iter()
        .filter(|r| r["rerunOf"] == id)
        .cloned()
        .collect()
}

fn is_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

async fn running_pod(client: &kube::Client, id: &str) -> Pod {
    eventually("the run's pod to run", WAIT, || {
        let client = client.clone();
        let id = id.to_string();
        async move { pods_of(&client, &id).await.iter().any(is_running) }
    })
    .await;
    pods_of(client, id)
        .await
        .into_iter()
        .find(is_running)
        .expect("a running pod")
}

/// Acceptance 1: `retry.onInfrastructureFailure: 1, backoffLimit: 0`. The first pod leaves a
/// marker and runs until it is evicted through the Eviction API (kubesim marks it
/// `DisruptionTarget`, reason `EvictionByEvictionAPI`, as Kubernetes does); the rendered
/// `DisruptionTarget -> Ignore` rule has the Job replace it without counting, and the second
/// pod, seeing the marker, succeeds.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn an_evicted_pod_is_replaced_and_the_run_succeeds_without_spending_backoff_limit(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Host).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;
    let dir = marker_dir();
    let id = service
        .submit(json!({
            "image": "busybox",
            "command": ["sh", "-c", "if [ -e \"$MARK\" ]; then echo second; exit 0; fi; touch \"$MARK\"; exec sleep 600"],
            "env": [{"name": "MARK", "value": dir.join("started").to_str().unwrap()}],
            "backoffLimit": 0,
            "retry": {"onInfrastructureFailure": 1}
        }))
        .await;
    let first = running_pod(&client, &id).await;
    let job = jobs_of(&client, &id).await.remove(0);
    let rules = &job
        .spec
        .as_ref()
        .unwrap()
        .pod_failure_policy
        .as_ref()
        .unwrap()
        .rules;
    assert_eq!(rules[0].action, "Ignore");
    assert_eq!(
        rules[0].on_pod_conditions.as_ref().unwrap()[0].type_,
        "DisruptionTarget"
    );
    eventually("the first pod to leave its marker", WAIT, || {
        let mark = dir.join("started");
        async move { mark.exists() }
    })
    .await;

    Api::<Pod>::namespaced(client.clone(), "default")
        .evict(
            first.metadata.name.as_deref().unwrap(),
            &EvictParams::default(),
        )
        .await
        .unwrap();

    let run = service.wait_for(&id, "succeeded", WAIT).await;
    assert_eq!(
        run["pods"]["failed"], 0,
        "a disruption is not counted: {run:#}"
    );
    let pods = service.get(&format!("/v1/runs/{id}/pods")).await;
    let pods = pods.as_array().unwrap();
    assert_eq!(pods.len(), 2, "{pods:#?}");
    // The evicted pod is deleted by the eviction; its record keeps the last state the tracker
    // saw (Failed, or Running when the pod was gone before its end was watched).
    let evicted = pods
        .iter()
        .find(|p| p["name"] == first.metadata.name.as_deref().unwrap())
        .expect("the evicted pod's record");
    assert!(
        evicted["phase"] == "Failed" || evicted["deleted"] == true,
        "{evicted:#}"
    );
    assert!(pods.iter().any(|p| p["phase"] == "Succeeded"), "{pods:#?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Acceptance 1, the other half: the same run whose container exits 1 fails at once, with no
/// second pod (a real failure is not an infrastructure one; backoffLimit 0).
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_container_that_exits_1_fails_the_run_at_once_with_no_second_pod(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;
    let id = service
        .submit(scripted(
            &[("KUBESIM_EXIT_CODE", "1")],
            json!({"backoffLimit": 0, "retry": {"onInfrastructureFailure": 1}}),
        ))
        .await;
    let run = service.wait_for(&id, "failed", WAIT).await;
    assert_eq!(run["statusReason"], "BackoffLimitExceeded");
    assert_eq!(pods_of(&client, &id).await.len(), 1);
    assert_eq!(
        service
            .get(&format!("/v1/runs/{id}/pods"))
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// `retry.onInfrastructureFailure: N` is enforced by the service, since the `Ignore` rule it
/// renders is never counted by Kubernetes: the N+1th disrupted pod fails the run (reason
/// `InfrastructureFailuresExceeded`) and its Job is deleted. Here N is 0.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_disruption_beyond_on_infrastructure_failure_fails_the_run_and_deletes_its_job(
    db: PgPool,
) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;
    let id = service
        .submit(scripted(
            &[("KUBESIM_DURATION_MS", "600000")],
            json!({"retry": {"onInfrastructureFailure": 0}}),
        ))
        .await;
    let pod = running_pod(&client, &id).await;
    sim.preempt_pod("default", pod.metadata.name.as_deref().unwrap())
        .unwrap();
    let run = service.wait_for(&id, "failed", WAIT).await;
    assert_eq!(run["statusReason"], "InfrastructureFailuresExceeded");
    assert!(
        run["statusMessage"]
            .as_str()
            .unwrap()
            .contains("PreemptionByScheduler"),
        "{run:#}"
    );
    eventually("the run's Job to be deleted", WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move { jobs_of(&client, &id).await.is_empty() }
    })
    .await;
}

async fn delete_job(client: &kube::Client, run: &Value) {
    Api::<Job>::namespaced(client.clone(), "default")
        .delete(
            run["job"]["name"].as_str().unwrap(),
            &DeleteParams::background(),
        )
        .await
        .unwrap();
}

/// Acceptance 2: a Job deleted out of band, with `retry.onLost: 1`, gives exactly one linked
/// retry (`rerunOf`, `retryReason` "Retried: ..."), even with two replicas watching; when the
/// retry's Job vanishes too, none follows (the retry is written in the transaction that
/// records the loss, so once the run reads `lost` the answer is final).
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_vanished_job_is_retried_exactly_once_and_a_second_vanish_starts_none(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let client = sim.client();
    let service = Service::start(db.clone(), client.clone(), &[]).await;
    let replica = Service::start(db, client.clone(), &[]).await;
    let template = scripted(
        &[("KUBESIM_DURATION_MS", "600000")],
        json!({"retry": {"onLost": 1}}),
    );
    let id = service.submit(template.clone()).await;
    let run = service.wait_for(&id, "running", WAIT).await;

    delete_job(&client, &run).await;
    let lost = service.wait_for(&id, "lost", WAIT).await;
    assert_eq!(lost["statusReason"], "JobDeleted");

    let retries = reruns_of(&service, &id).await;
    assert_eq!(retries.len(), 1, "{retries:#?}");
    let retry = &retries[0];
    assert!(
        retry["retryReason"]
            .as_str()
            .unwrap()
            .starts_with("Retried: JobDeleted"),
        "{retry:#}"
    );
    assert_eq!(retry["trigger"], "rerun");
    assert_eq!(retry["template"], template);
    let retry_id = retry["id"].as_str().unwrap().to_string();

    let retry_run = service.wait_for(&retry_id, "running", WAIT).await;
    delete_job(&client, &retry_run).await;
    service.wait_for(&retry_id, "lost", WAIT).await;
    assert!(reruns_of(&service, &retry_id).await.is_empty());
    assert_eq!(reruns_of(&service, &id).await.len(), 1);
    replica.stop().await;
}

/// Acceptance 3: an Indexed run of 10 where indexes 3 and 7 fail (backoffLimitPerIndex 0: one
/// attempt each; the script fails an index the first time it runs it). The partial rerun
/// starts exactly two runs, for 3 and 7, whose pods print `JOB_COMPLETION_INDEX=3` and `=7`
/// and carry the completion-index annotation; the indexes then read 10 of 10 succeeded, and
/// a partial rerun with nothing failed is 409.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn rerun_of_failed_indexes_runs_exactly_those_indexes_with_their_original_index(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;
    let dir = marker_dir();
    let script = "echo JOB_COMPLETION_INDEX=$JOB_COMPLETION_INDEX; \
        case $JOB_COMPLETION_INDEX in 3|7) \
          if [ ! -e \"$DIR/$JOB_COMPLETION_INDEX\" ]; then touch \"$DIR/$JOB_COMPLETION_INDEX\"; exit 1; fi;; \
        esac";
    let id = service
        .submit(json!({
            "image": "busybox",
            "command": ["sh", "-c", script],
            "env": [{"name": "DIR", "value": dir.to_str().unwrap()}],
            "completions": 10, "parallelism": 5, "completionMode": "Indexed",
            "backoffLimitPerIndex": 0
        }))
        .await;
    let run = service.wait_for(&id, "failed", WAIT).await;
    assert_eq!(run["statusReason"], "FailedIndexes", "{run:#}");
    let before = service.get(&format!("/v1/runs/{id}/indexes")).await;
    assert_eq!(
        (before["succeeded"].as_i64(), before["failed"].as_i64()),
        (Some(8), Some(2))
    );

    let response = service
        .post(
            &format!("/v1/runs/{id}/rerun?only=failed-indexes"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let runs = created["runs"].as_array().unwrap();
    let indexes: Vec<i64> = runs
        .iter()
        .map(|r| r["template"]["completionIndex"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, [3, 7]);
    for (rerun, index) in runs.iter().zip([3, 7]) {
        assert_eq!(rerun["rerunOf"], id.as_str());
        let rerun_id = rerun["id"].as_str().unwrap();
        service.wait_for(rerun_id, "succeeded", WAIT).await;
        let log = common::service::logs(&service, rerun_id, "").await;
        assert_eq!(log, format!("JOB_COMPLETION_INDEX={index}\n"));
        let pods = pods_of(&client, rerun_id).await;
        assert_eq!(pods.len(), 1);
        assert_eq!(
            pods[0].metadata.annotations.as_ref().unwrap()
                ["batch.kubernetes.io/job-completion-index"],
            index.to_string()
        );
    }

    let after = service.get(&format!("/v1/runs/{id}/indexes")).await;
    assert_eq!(after["completions"], 10);
    assert_eq!(after["succeeded"], 10, "{after:#}");
    let outcomes = after["indexes"].as_array().unwrap();
    assert_eq!(outcomes[3]["run"], runs[0]["id"]);
    assert_eq!(outcomes[3]["attempts"], 2);
    assert_eq!(outcomes[0]["run"], id.as_str());

    let again = service
        .post(
            &format!("/v1/runs/{id}/rerun?only=failed-indexes"),
            &json!({}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(
        reruns_of(&service, &id).await.len(),
        2,
        "a refused rerun queues nothing"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A partial rerun of a run that is not Indexed is 422 naming `only`; nothing is queued.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn rerun_of_failed_indexes_of_a_run_that_is_not_indexed_is_422(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let id = service
        .submit(scripted(
            &[("KUBESIM_EXIT_CODE", "1")],
            json!({"backoffLimit": 0}),
        ))
        .await;
    service.wait_for(&id, "failed", WAIT).await;
    let response = service
        .post(
            &format!("/v1/runs/{id}/rerun?only=failed-indexes"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "only");
    assert!(reruns_of(&service, &id).await.is_empty());
    let indexes = service
        .http
        .get(service.url(&format!("/v1/runs/{id}/indexes")))
        .send()
        .await
        .unwrap();
    assert_eq!(indexes.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// Acceptance 8 (podFailurePolicy): what the API server would refuse is a 422 naming the
/// field, and nothing is stored.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn pod_failure_policies_the_api_server_would_refuse_are_422_naming_the_field(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let cases = [
        (
            json!({"podFailurePolicy": {"rules": [
                {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [42]}}]}}),
            "template.podFailurePolicy.rules[0].action",
        ),
        (
            json!({"podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0, 1]}}]}}),
            "template.podFailurePolicy.rules[0].onExitCodes.values[0]",
        ),
        (
            json!({"podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3, 1]}}]}}),
            "template.podFailurePolicy.rules[0].onExitCodes.values[1]",
        ),
        (
            json!({"restartPolicy": "OnFailure", "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}}),
            "template.podFailurePolicy",
        ),
        (
            json!({"completions": 2, "backoffLimitPerIndex": 1}),
            "template.backoffLimitPerIndex",
        ),
        (
            json!({"backoffLimit": 1, "retry": {"onFailure": 2}}),
            "template.retry.onFailure",
        ),
    ];
    for (extra, field) in cases {
        let response = service
            .post("/v1/runs", &json!({"template": scripted(&[], extra)}))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{problem:#}");
    }
    let runs = service.get("/v1/runs").await;
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(0), "{runs:#}");
}

/// Two partial reruns at once: the original's row lock orders them, so the second finds the
/// index already being rerun (409) and each failed index is rerun once.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn two_partial_reruns_at_once_rerun_each_failed_index_once(db: PgPool) {
    let sim = kubesim(RunnerKind::Scripted).await;
    let service = Service::start(db, sim.client(), &[]).await;
    let id = service
        .submit(scripted(
            &[("KUBESIM_FAIL_INDEXES", "1,2")],
            json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed",
                   "backoffLimitPerIndex": 0}),
        ))
        .await;
    service.wait_for(&id, "failed", WAIT).await;
    let path = format!("/v1/runs/{id}/rerun?only=failed-indexes");
    let empty = json!({});
    let (a, b) = tokio::join!(service.post(&path, &empty), service.post(&path, &empty));
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);
    let reruns = reruns_of(&service, &id).await;
    let mut indexes: Vec<i64> = reruns
        .iter()
        .map(|r| r["template"]["completionIndex"].as_i64().unwrap())
        .collect();
    indexes.sort();
    assert_eq!(indexes, [1, 2]);
}

/// A one-index rerun that is lost and retried (`retry.onLost`) still counts for its index: the
/// retry is linked to the lost rerun, not to the original, and a partial rerun while the retry
/// runs (or after it succeeded) must not start the index again.
#[sqlx::test(migrator = "vfi_orchestrator::store::MIGRATOR")]
async fn a_lost_index_rerun_and_its_retry_count_for_the_index(db: PgPool) {
    let sim = kubesim(RunnerKind::Host).await;
    let client = sim.client();
    let service = Service::start(db, client.clone(), &[]).await;
    let dir = marker_dir();
    // Index 1 fails the first time, hangs the second (its Job is deleted), succeeds the third.
    let script = "if [ \"$JOB_COMPLETION_INDEX\" = 1 ]; then \
          if [ ! -e \"$DIR/a\" ]; then touch \"$DIR/a\"; exit 1; fi; \
          if [ ! -e \"$DIR/b\" ]; then touch \"$DIR/b\"; sleep 600; fi; \
        fi; echo done";
    let id = service
        .submit(json!({
            "image": "busybox",
            "command": ["sh", "-c", script],
            "env": [{"name": "DIR", "value": dir.to_str().unwrap()}],
            "completions": 3, "parallelism": 3, "completionMode": "Indexed",
            "backoffLimitPerIndex": 0, "retry": {"onLost": 1}
        }))
        .await;
    service.wait_for(&id, "failed", WAIT).await;
    let response = service
        .post(
            &format!("/v1/runs/{id}/rerun?only=failed-indexes"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let rerun_id = created["runs"][0]["id"].as_str().unwrap().to_string();
    let rerun = service.wait_for(&rerun_id, "running", WAIT).await;
    delete_job(&client, &rerun).await;
    service.wait_for(&rerun_id, "lost", WAIT).await;
    let retries = reruns_of(&service, &rerun_id).await;
    assert_eq!(retries.len(), 1, "{retries:#?}");
    let retry_id = retries[0]["id"].as_str().unwrap().to_string();

    let again = service
        .post(
            &format!("/v1/runs/{id}/rerun?only=failed-indexes"),
            &json!({}),
        )
        .await;
    assert_eq!(
        again.status(),
        StatusCode::CONFLICT,
        "index 1 is running again in the retry"
    );
    service.wait_for(&retry_id, "succeeded", WAIT).await;
    let after = service.get(&format!("/v1/runs/{id}/indexes")).await;
    assert_eq!(after["succeeded"], 3, "{after:#}");
    assert_eq!(after["indexes"][1]["run"], retry_id.as_str());
    assert_eq!(reruns_of(&service, &id).await.len(), 1, "no second rerun");
    let _ = std::fs::remove_dir_all(dir);
}
