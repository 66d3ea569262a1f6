//! podFailurePolicy, disruptions and backoff limits per index, each as the Kubernetes
//! documentation describes them:
//! - https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy
//! - https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-conditions
//! - https://kubernetes.io/docs/concepts/workloads/controllers/job/#backoff-limit-per-index
//!   and its task page "Handling pod failures per index" (the FailIndex example job)
//! - the batch/v1 API reference (PodFailurePolicy limits) and kube-apiserver's validation.

mod common;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kubesim::{RunnerKind, SimConfig};
use serde_json::json;

/// A Job that ignores disruptions, with backoffLimit 0 and a pod that runs until disrupted.
fn ignores_disruptions(name: &str) -> Job {
    job_json(
        name,
        &[("KUBESIM_DURATION_MS", "600000")],
        json!({"backoffLimit": 0, "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
        ]}}),
    )
}

fn disruption(p: &Pod) -> Option<(String, String)> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

async fn first_running_pod(sim: &kubesim::KubeSim, job: &str) -> String {
    let c = sim.client();
    wait_until(sim, "a pod runs", || {
        let c = c.clone();
        async move {
            job_pods(&c, job)
                .await
                .iter()
                .any(|p| phase(p) == "Running")
        }
    })
    .await;
    job_pods(&c, job)
        .await
        .into_iter()
        .find(|p| phase(p) == "Running")
        .and_then(|p| p.metadata.name)
        .expect("a running pod")
}

/// Pod disruption conditions: "EvictionByEvictionAPI: Pod has been marked for eviction using
/// the Eviction API"; the Job docs' example rule `Ignore` on `DisruptionTarget` makes such a
/// failure not count towards backoffLimit, and the pod is replaced.
#[tokio::test]
async fn eviction_api_marks_disruption_target_and_an_ignore_rule_replaces_the_pod_uncounted() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &ignores_disruptions("evicted")).await;
    let first = first_running_pod(&sim, "evicted").await;
    // The kubelet waits while the test reads the pod between its eviction and its end.
    sim.faults().pause_controller(true);
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": first, "namespace": "default"}});
    let url = format!(
        "{}/api/v1/namespaces/default/pods/{first}/eviction",
        sim.url()
    );
    let answer = reqwest::Client::new()
        .post(url)
        .bearer_auth(kubesim::ADMIN_TOKEN)
        .json(&eviction)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    let evicted = Api::<Pod>::default_namespaced(c.clone())
        .get(&first)
        .await
        .unwrap();
    assert!(
        evicted.metadata.deletion_timestamp.is_some(),
        "evicting deletes the pod"
    );
    assert_eq!(
        disruption(&evicted),
        Some((
            "EvictionByEvictionAPI".to_string(),
            "Eviction API: evicting".to_string()
        ))
    );
    sim.faults().pause_controller(false);
    wait_until(&sim, "a replacement pod runs", || {
        let c = c.clone();
        let first = first.clone();
        async move {
            job_pods(&c, "evicted").await.iter().any(|p| {
                p.metadata.name.as_deref() != Some(first.as_str()) && phase(p) == "Running"
            })
        }
    })
    .await;
    let job: Job = Api::default_namespaced(c.clone())
        .get("evicted")
        .await
        .unwrap();
    let status = job.status.unwrap();
    assert_eq!(status.failed, None, "an ignored failure is not counted");
    assert!(!has_condition(
        &Job {
            status: Some(status),
            ..job
        },
        "FailureTarget"
    ));
    sim.shutdown().await;
}

/// Pod disruption conditions: "PreemptionByScheduler: Pod is due to be preempted by a
/// scheduler in order to accommodate a new Pod with a higher priority".
#[tokio::test]
async fn preemption_marks_disruption_target_preemption_by_scheduler_and_the_pod_is_replaced() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &ignores_disruptions("preempted")).await;
    let first = first_running_pod(&sim, "preempted").await;
    sim.faults().pause_controller(true);
    sim.preempt_pod("default", &first).unwrap();
    let pod = Api::<Pod>::default_namespaced(c.clone())
        .get(&first)
        .await
        .unwrap();
    let (reason, message) = disruption(&pod).expect("DisruptionTarget");
    assert_eq!(reason, "PreemptionByScheduler");
    assert_eq!(
        message,
        "default-scheduler: preempting to accommodate a higher priority pod"
    );
    sim.faults().pause_controller(false);
    wait_until(&sim, "a replacement pod runs", || {
        let c = c.clone();
        let first = first.clone();
        async move {
            job_pods(&c, "preempted").await.iter().any(|p| {
                p.metadata.name.as_deref() != Some(first.as_str()) && phase(p) == "Running"
            })
        }
    })
    .await;
    sim.shutdown().await;
}

/// Without an Ignore rule, a disrupted pod counts like any failure (backoffLimit 0: the Job
/// fails, FailureTarget first then Failed).
#[tokio::test]
async fn an_eviction_without_an_ignore_rule_counts_against_backoff_limit() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "counted",
            &[("KUBESIM_DURATION_MS", "600000")],
            json!({"backoffLimit": 0}),
        ),
    )
    .await;
    let first = first_running_pod(&sim, "counted").await;
    sim.preempt_pod("default", &first).unwrap();
    let j = wait_finished(&c, "counted").await;
    let conds: Vec<_> = j
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.clone())
        .collect();
    assert_eq!(conds, ["FailureTarget", "Failed"]);
    assert_eq!(
        condition(&j, "Failed").unwrap().reason.as_deref(),
        Some("BackoffLimitExceeded")
    );
    sim.shutdown().await;
}

/// The docs' job-backoff-limit-per-index-failindex.yaml: completions 4, parallelism 2,
/// backoffLimitPerIndex 1; index 0 exits 1 (retried once), index 1 exits 42 (FailIndex: failed
/// without retry), the others succeed. The task page shows the Job failed with
/// `failedIndexes: 0,1`, `completedIndexes: 2,3` and 3 failed pods.
#[tokio::test]
async fn backoff_limit_per_index_and_fail_index_give_failed_indexes_as_the_docs_example() {
    let sim = sim_with(SimConfig {
        runner: RunnerKind::Host,
        ..SimConfig::default()
    })
    .await;
    let c = sim.client();
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "per-index"},
        "spec": {
            "completions": 4, "parallelism": 2, "completionMode": "Indexed",
            "backoffLimitPerIndex": 1, "backoffLimit": 6,
            "podFailurePolicy": {"rules": [
                {"action": "FailIndex", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}
            ]},
            "template": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": "python:3",
                "command": ["sh", "-c", "case $JOB_COMPLETION_INDEX in 0) exit 1;; 1) exit 42;; esac"]
            }]}}
        }
    }))
    .unwrap();
    create_job(&c, &job).await;
    let j = wait_finished(&c, "per-index").await;
    let st = j.status.clone().unwrap();
    assert_eq!(st.failed_indexes.as_deref(), Some("0,1"));
    assert_eq!(st.completed_indexes.as_deref(), Some("2,3"));
    assert_eq!(st.failed, Some(3));
    assert_eq!(st.succeeded, Some(2));
    assert_eq!(
        condition(&j, "Failed").unwrap().reason.as_deref(),
        Some("FailedIndexes")
    );
    // Index 0's retry carried its failure count.
    let retried = job_pods(&c, "per-index")
        .await
        .into_iter()
        .filter(|p| {
            p.metadata.annotations.as_ref().and_then(|a| {
                a.get("batch.kubernetes.io/job-completion-index")
                    .map(String::as_str)
            }) == Some("0")
        })
        .filter_map(|p| {
            p.metadata
                .annotations
                .unwrap()
                .get("batch.kubernetes.io/job-index-failure-count")
                .cloned()
        })
        .collect::<Vec<_>>();
    assert!(retried.contains(&"1".to_string()), "{retried:?}");
    sim.shutdown().await;
}

/// maxFailedIndexes: "when the number of failed indexes exceeds maxFailedIndexes, the Job
/// controller terminates ... the Job" (reason MaxFailedIndexesExceeded).
#[tokio::test]
async fn exceeding_max_failed_indexes_fails_the_job() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "max-failed",
            &[
                ("KUBESIM_DURATION_MS", "5"),
                ("KUBESIM_FAIL_INDEXES", "0,1"),
            ],
            json!({"completions": 4, "parallelism": 1, "completionMode": "Indexed",
                   "backoffLimitPerIndex": 0, "maxFailedIndexes": 1, "backoffLimit": null}),
        ),
    )
    .await;
    let j = wait_finished(&c, "max-failed").await;
    assert_eq!(
        condition(&j, "Failed").unwrap().reason.as_deref(),
        Some("MaxFailedIndexesExceeded")
    );
    assert_eq!(j.status.unwrap().failed_indexes.as_deref(), Some("0,1"));
    sim.shutdown().await;
}

/// kube-apiserver refuses (422) what validatePodFailurePolicy refuses.
#[tokio::test]
async fn the_api_server_refuses_pod_failure_policies_kubernetes_refuses() {
    let sim = sim().await;
    let api = Api::<Job>::default_namespaced(sim.client());
    let rule = |action: &str, operator: &str, values: serde_json::Value| json!({"action": action, "onExitCodes": {"operator": operator, "values": values}});
    let cases = [
        (
            json!({"podFailurePolicy": {"rules": [rule("FailIndex", "In", json!([42]))]}}),
            "spec.podFailurePolicy.rules[0].action",
        ),
        (
            json!({"podFailurePolicy": {"rules": [rule("FailJob", "In", json!([0, 1]))]}}),
            "spec.podFailurePolicy.rules[0].onExitCodes.values[0]",
        ),
        (
            json!({"podFailurePolicy": {"rules": [rule("FailJob", "NotIn", json!([2, 1]))]}}),
            "spec.podFailurePolicy.rules[0].onExitCodes.values[1]",
        ),
        (
            json!({"podFailurePolicy": {"rules": [rule("FailJob", "In", json!([1, 1]))]}}),
            "spec.podFailurePolicy.rules[0].onExitCodes.values[1]",
        ),
        (
            json!({"podFailurePolicy": {"rules": vec![rule("Count", "In", json!([1])); 21]}}),
            "spec.podFailurePolicy.rules",
        ),
        (
            json!({"completions": 2, "backoffLimitPerIndex": 1}),
            "spec.backoffLimitPerIndex",
        ),
    ];
    for (i, (spec, field)) in cases.into_iter().enumerate() {
        let job = job_json(&format!("bad-{i}"), &[], spec);
        let refused = api_error(api.create(&PostParams::default(), &job).await.unwrap_err());
        assert_eq!(refused.code, 422, "{field}");
        let causes = refused.details.unwrap().causes;
        assert!(
            causes.iter().any(|c| c.field == field),
            "{field} not in {causes:?}"
        );
    }
    sim.shutdown().await;
}
