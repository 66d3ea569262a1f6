//! The simulated Job controller and kubelet, observed through kube-rs: pod creation and naming,
//! completions/parallelism, Indexed Jobs, failure handling (backoffLimit, deadline,
//! podFailurePolicy, OnFailure restarts), suspend/resume, TTL, node capacity, evictions, pause,
//! graceful pod deletion and pod logs.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::runtime::watcher;
use kubesim::SimConfig;
use serde_json::json;

fn conditions(j: &Job) -> Vec<String> {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| c.iter().map(|c| c.type_.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn job_pods_are_named_labelled_and_owned_like_the_real_controller() {
    let sim = sim().await;
    let c = sim.client();
    let mut j = job("owned", &[("KUBESIM_DURATION_MS", "60000")]);
    let tm = j
        .spec
        .as_mut()
        .unwrap()
        .template
        .metadata
        .get_or_insert_default();
    tm.labels = Some([("app".to_string(), "x".to_string())].into());
    tm.annotations = Some([("note".to_string(), "y".to_string())].into());
    let created = create_job(&c, &j).await;
    let uid = created.metadata.uid.unwrap();
    wait_job(&c, "owned", |j| {
        j.status.as_ref().and_then(|s| s.ready) == Some(1)
    })
    .await;
    let pod = job_pods(&c, "owned").await.remove(0);
    let name = pod.metadata.name.clone().unwrap();
    let suffix = name.strip_prefix("owned-").unwrap();
    assert_eq!(suffix.len(), 5);
    assert!(
        suffix
            .chars()
            .all(|ch| "bcdfghjklmnpqrstvwxz2456789".contains(ch)),
        "{name}"
    );
    let labels = pod.metadata.labels.clone().unwrap();
    for (k, v) in [
        ("batch.kubernetes.io/job-name", "owned"),
        ("job-name", "owned"),
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("controller-uid", uid.as_str()),
        ("app", "x"),
    ] {
        assert_eq!(labels[k], v);
    }
    assert_eq!(pod.metadata.annotations.unwrap()["note"], "y");
    assert_eq!(
        pod.metadata.finalizers.unwrap(),
        vec!["batch.kubernetes.io/job-tracking"]
    );
    let owner = &pod.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Job", uid.as_str())
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    let st = pod.status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert!(st.pod_ip.is_some() && st.host_ip.is_some() && st.start_time.is_some());
    assert_eq!(
        pod.spec.unwrap().node_name.as_deref(),
        Some("kubesim-node-1")
    );
    let cs = &st.container_statuses.unwrap()[0];
    assert!(cs.state.as_ref().unwrap().running.is_some());
    assert!(cs
        .container_id
        .as_ref()
        .unwrap()
        .starts_with("containerd://"));
    let ready = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    sim.shutdown().await;
}

#[tokio::test]
async fn finished_job_has_success_conditions_in_order_and_counted_pods_lose_the_finalizer() {
    let sim = sim().await;
    let c = sim.client();
    create_job(&c, &job("done", &[("KUBESIM_DURATION_MS", "5")])).await;
    let j = wait_finished(&c, "done").await;
    assert_eq!(conditions(&j), vec!["SuccessCriteriaMet", "Complete"]);
    let complete = condition(&j, "Complete").unwrap();
    assert_eq!(complete.reason.as_deref(), Some("CompletionsReached"));
    assert!(complete.last_probe_time.is_some() && complete.last_transition_time.is_some());
    let st = j.status.unwrap();
    assert_eq!(st.succeeded, Some(1));
    assert!(st.completion_time.is_some() && st.start_time.is_some());
    assert_eq!(st.active, None);
    assert_eq!(st.ready, Some(0));
    let pods = job_pods(&c, "done").await;
    assert_eq!(phase(&pods[0]), "Succeeded");
    assert!(pods[0].metadata.finalizers.is_none());
    let term = pods[0]
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert!(term.started_at.is_some() && term.finished_at.is_some());
    sim.shutdown().await;
}

#[tokio::test]
async fn completions_run_with_never_more_active_pods_than_parallelism() {
    let sim = sim().await;
    let c = sim.client();
    let pods = Api::<Pod>::default_namespaced(c.clone());
    // Record every pod event, then replay them to count non-terminal pods at each step.
    let recorder = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut stream = watcher(pods, watcher::Config::default().labels("job-name=par")).boxed();
        let mut terminal = BTreeSet::new();
        while let Some(ev) = stream.try_next().await.unwrap() {
            events.push(ev.clone());
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                if matches!(phase(&p).as_str(), "Succeeded" | "Failed") {
                    terminal.insert(p.metadata.name.clone().unwrap());
                }
            }
            if terminal.len() == 12 {
                return events;
            }
        }
        events
    });
    create_job(
        &c,
        &job_json(
            "par",
            &[("KUBESIM_DURATION_MS", "20")],
            json!({"completions": 12, "parallelism": 3}),
        ),
    )
    .await;
    let j = wait_finished(&c, "par").await;
    assert!(has_condition(&j, "Complete"));
    assert_eq!(j.status.unwrap().succeeded, Some(12));
    let events = tokio::time::timeout(WAIT, recorder).await.unwrap().unwrap();
    let mut live: HashMap<String, bool> = HashMap::new();
    let mut max = 0;
    for ev in events {
        match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                let done = matches!(phase(&p).as_str(), "Succeeded" | "Failed");
                live.insert(p.metadata.name.clone().unwrap(), !done);
            }
            watcher::Event::Delete(p) => {
                live.remove(&p.metadata.name.clone().unwrap());
            }
            _ => {}
        }
        max = max.max(live.values().filter(|v| **v).count());
    }
    assert!(max <= 3, "saw {max} active pods");
    assert_eq!(job_pods(&c, "par").await.len(), 12);
    sim.shutdown().await;
}

#[tokio::test]
async fn indexed_job_gives_each_index_its_pod_name_label_annotation_and_env() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "idx",
            &[("KUBESIM_DURATION_MS", "5"), ("KUBESIM_LOG", "hello")],
            json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
        ),
    )
    .await;
    let j = wait_finished(&c, "idx").await;
    assert!(has_condition(&j, "Complete"));
    assert_eq!(
        j.status.as_ref().unwrap().completed_indexes.as_deref(),
        Some("0-2")
    );
    let pods = job_pods(&c, "idx").await;
    let mut seen = BTreeSet::new();
    for p in pods {
        let idx = p.metadata.annotations.as_ref().unwrap()
            ["batch.kubernetes.io/job-completion-index"]
            .clone();
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"],
            idx
        );
        assert!(p
            .metadata
            .name
            .as_ref()
            .unwrap()
            .starts_with(&format!("idx-{idx}-")));
        let spec = p.spec.unwrap();
        assert_eq!(
            spec.hostname.as_deref(),
            Some(format!("idx-{idx}").as_str())
        );
        let env = spec.containers[0].env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"));
        seen.insert(idx);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["0", "1", "2"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn indexed_job_retries_only_the_failing_index() {
    let sim = sim().await;
    let c = sim.client();
    // Index 1 fails; with backoffLimit 1 the Job fails after two failures of that index.
    create_job(
        &c,
        &job_json(
            "idxfail",
            &[("KUBESIM_DURATION_MS", "5"), ("KUBESIM_FAIL_INDEXES", "1")],
            json!({"completions": 3, "parallelism": 1, "completionMode": "Indexed", "backoffLimit": 1}),
        ),
    )
    .await;
    let j = wait_finished(&c, "idxfail").await;
    assert!(has_condition(&j, "Failed"));
    let st = j.status.unwrap();
    assert_eq!(st.failed, Some(2));
    assert_eq!(st.completed_indexes.as_deref(), Some("0"));
    sim.shutdown().await;
}

#[tokio::test]
async fn backoff_limit_two_fails_the_job_after_three_failed_pods() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "backoff",
            &[("KUBESIM_DURATION_MS", "5"), ("KUBESIM_EXIT_CODE", "3")],
            json!({"backoffLimit": 2}),
        ),
    )
    .await;
    let j = wait_finished(&c, "backoff").await;
    assert_eq!(conditions(&j), vec!["FailureTarget", "Failed"]);
    let failed = condition(&j, "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(
        failed.message.as_deref(),
        Some("Job has reached the specified backoff limit")
    );
    assert_eq!(j.status.as_ref().unwrap().failed, Some(3));
    assert!(j.status.as_ref().unwrap().completion_time.is_none());
    let pods = job_pods(&c, "backoff").await;
    assert_eq!(pods.len(), 3);
    for p in pods {
        assert_eq!(phase(&p), "Failed");
        let t = p.status.unwrap().container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn fail_attempts_then_success_counts_failures_and_completes() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "flaky",
            &[("KUBESIM_DURATION_MS", "5"), ("KUBESIM_FAIL_ATTEMPTS", "2")],
            json!({"backoffLimit": 3}),
        ),
    )
    .await;
    let j = wait_finished(&c, "flaky").await;
    assert!(has_condition(&j, "Complete"));
    assert_eq!(j.status.as_ref().unwrap().failed, Some(2));
    assert_eq!(j.status.as_ref().unwrap().succeeded, Some(1));
    sim.shutdown().await;
}

#[tokio::test]
async fn active_deadline_fails_the_job_and_deletes_its_pods() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "deadline",
            &[("KUBESIM_DURATION_MS", "60000")],
            json!({"activeDeadlineSeconds": 1, "backoffLimit": 6}),
        ),
    )
    .await;
    let j = wait_finished(&c, "deadline").await;
    let failed = condition(&j, "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        failed.message.as_deref(),
        Some("Job was active longer than specified deadline")
    );
    assert!(has_condition(&j, "FailureTarget"));
    wait_until(&sim, "deadline pods are deleted", || async {
        job_pods(&c, "deadline").await.is_empty()
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn suspend_deletes_active_pods_and_resume_creates_new_ones() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    create_job(
        &c,
        &job_json(
            "sus",
            &[("KUBESIM_DURATION_MS", "60000")],
            json!({"parallelism": 2, "completions": 2}),
        ),
    )
    .await;
    wait_job(&c, "sus", |j| {
        j.status.as_ref().and_then(|s| s.active) == Some(2)
    })
    .await;
    api.patch(
        "sus",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .unwrap();
    let j = wait_job(&c, "sus", |j| has_condition(j, "Suspended")).await;
    assert_eq!(
        condition(&j, "Suspended").unwrap().reason.as_deref(),
        Some("JobSuspended")
    );
    wait_until(&sim, "suspended pods are gone", || async {
        job_pods(&c, "sus").await.is_empty()
    })
    .await;
    let j = api.get("sus").await.unwrap();
    assert_eq!(
        j.status.as_ref().unwrap().failed,
        None,
        "suspension is not a failure"
    );
    let table = reqwest::Client::new()
        .get(format!(
            "{}/apis/batch/v1/namespaces/default/jobs/sus",
            sim.url()
        ))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(table["rows"][0]["cells"][1], "Suspended");
    api.patch(
        "sus",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    let j = wait_job(&c, "sus", |j| {
        j.status.as_ref().and_then(|s| s.active) == Some(2)
    })
    .await;
    let s = condition(&j, "Suspended").unwrap();
    assert_eq!(
        (s.status.as_str(), s.reason.as_deref()),
        ("False", Some("JobResumed"))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn ttl_after_finished_deletes_the_job_and_its_pods() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "ttl",
            &[("KUBESIM_DURATION_MS", "5")],
            json!({"ttlSecondsAfterFinished": 0}),
        ),
    )
    .await;
    wait_gone(Api::<Job>::default_namespaced(c.clone()), "ttl").await;
    wait_until(&sim, "ttl pods are gone", || async {
        job_pods(&c, "ttl").await.is_empty()
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn on_failure_restarts_the_container_in_the_same_pod_and_counts_restarts() {
    let sim = sim().await;
    let c = sim.client();
    let mut j = job_json(
        "restarts",
        &[("KUBESIM_DURATION_MS", "5"), ("KUBESIM_FAIL_ATTEMPTS", "2")],
        json!({"backoffLimit": 6}),
    );
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("OnFailure".into());
    create_job(&c, &j).await;
    let j = wait_finished(&c, "restarts").await;
    assert!(has_condition(&j, "Complete"));
    let pods = job_pods(&c, "restarts").await;
    assert_eq!(pods.len(), 1);
    let cs = pods[0]
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .clone();
    assert_eq!(cs.restart_count, 2);
    let last = cs.last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 1);
    // Restarts count toward backoffLimit.
    let mut j = job_json(
        "crashloop",
        &[("KUBESIM_DURATION_MS", "5"), ("KUBESIM_EXIT_CODE", "1")],
        json!({"backoffLimit": 2}),
    );
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("OnFailure".into());
    create_job(&c, &j).await;
    let j = wait_finished(&c, "crashloop").await;
    assert_eq!(
        condition(&j, "Failed").unwrap().reason.as_deref(),
        Some("BackoffLimitExceeded")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn pod_failure_policy_fail_job_and_ignore_rules_apply_on_exit_codes() {
    let sim = sim().await;
    let c = sim.client();
    let policy = |action: &str| {
        json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
            {"action": action, "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}
        ]}})
    };
    create_job(
        &c,
        &job_json(
            "pfp-fail",
            &[("KUBESIM_DURATION_MS", "5"), ("KUBESIM_EXIT_CODE", "42")],
            policy("FailJob"),
        ),
    )
    .await;
    let j = wait_finished(&c, "pfp-fail").await;
    let failed = condition(&j, "Failed").unwrap();
    assert_eq!(failed.reason.as_deref(), Some("PodFailurePolicy"));
    assert!(failed
        .message
        .as_deref()
        .unwrap()
        .contains("failed with exit code 42 matching FailJob rule at index 0"));
    assert_eq!(j.status.unwrap().failed, Some(1));
    // Ignore: the first attempt's exit 42 does not count, the retry succeeds.
    let mut env_job = job_json(
        "pfp-ignore",
        &[("KUBESIM_DURATION_MS", "5"), ("KUBESIM_FAIL_ATTEMPTS", "1")],
        json!({"backoffLimit": 0, "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]}}
        ]}}),
    );
    env_job
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("Never".into());
    create_job(&c, &env_job).await;
    let j = wait_finished(&c, "pfp-ignore").await;
    assert!(has_condition(&j, "Complete"), "{:?}", j.status);
    assert_eq!(j.status.unwrap().failed, None);
    // Invalid with OnFailure.
    let mut bad = job_json("pfp-bad", &[], policy("Count"));
    bad.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("OnFailure".into());
    let err = api_error(
        Api::<Job>::default_namespaced(c.clone())
            .create(&Default::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    sim.shutdown().await;
}

#[tokio::test]
async fn pods_beyond_node_capacity_stay_pending_unschedulable_until_room_frees() {
    let sim = sim_with(SimConfig {
        node_capacity: 2,
        ..Default::default()
    })
    .await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "cap",
            &[("KUBESIM_DURATION_MS", "1000")],
            json!({"completions": 4, "parallelism": 4}),
        ),
    )
    .await;
    let pods_api = Api::<Pod>::default_namespaced(c.clone());
    wait_until(&sim, "two run and two wait", || async {
        let pods = job_pods(&c, "cap").await;
        let running = pods.iter().filter(|p| phase(p) == "Running").count();
        let unschedulable = pods
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.status == "False"
                                && c.reason.as_deref() == Some("Unschedulable")
                        })
                    })
            })
            .count();
        running == 2 && unschedulable == 2
    })
    .await;
    let _ = pods_api;
    let j = wait_finished(&c, "cap").await;
    assert_eq!(j.status.unwrap().succeeded, Some(4));
    sim.shutdown().await;
}

#[tokio::test]
async fn evicted_pod_fails_with_reason_evicted_and_is_replaced() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "evict",
            &[("KUBESIM_DURATION_MS", "60000")],
            json!({"backoffLimit": 3}),
        ),
    )
    .await;
    wait_job(&c, "evict", |j| {
        j.status.as_ref().and_then(|s| s.ready) == Some(1)
    })
    .await;
    let name = job_pods(&c, "evict").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    sim.faults().evict_pod("default", &name);
    let p = wait_obj(
        Api::<Pod>::default_namespaced(c.clone()),
        &name,
        |p: &Pod| phase(p) == "Failed",
    )
    .await;
    assert_eq!(
        p.status.as_ref().unwrap().reason.as_deref(),
        Some("Evicted")
    );
    let table: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/namespaces/default/pods/{name}",
            sim.url()
        ))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(table["rows"][0]["cells"][2], "Evicted");
    wait_job(&c, "evict", |j| {
        let s = j.status.clone().unwrap_or_default();
        s.failed == Some(1) && s.active == Some(1)
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn paused_controller_makes_no_progress_until_resumed() {
    let sim = sim().await;
    let c = sim.client();
    sim.faults().pause_controller(true);
    create_job(&c, &job("paused", &[("KUBESIM_DURATION_MS", "5")])).await;
    // A write after the Job proves the API kept serving while the loop was paused.
    let api = Api::<Job>::default_namespaced(c.clone());
    api.patch(
        "paused",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    assert!(job_pods(&c, "paused").await.is_empty());
    assert!(api
        .get("paused")
        .await
        .unwrap()
        .status
        .unwrap()
        .start_time
        .is_none());
    sim.faults().pause_controller(false);
    let j = wait_finished(&c, "paused").await;
    assert!(has_condition(&j, "Complete"));
    sim.shutdown().await;
}

#[tokio::test]
async fn deleting_a_running_pod_makes_it_terminating_then_gone() {
    let sim = sim().await;
    let c = sim.client();
    let pods = Api::<Pod>::default_namespaced(c.clone());
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "solo", "finalizers": ["example.com/hold"]},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox",
            "env": [{"name": "KUBESIM_DURATION_MS", "value": "60000"}]}]}
    }))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    wait_obj(pods.clone(), "solo", |p: &Pod| phase(p) == "Running").await;
    let deleted = pods
        .delete("solo", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert!(deleted.metadata.deletion_timestamp.is_some());
    assert_eq!(deleted.metadata.deletion_grace_period_seconds, Some(30));
    let killed = wait_obj(pods.clone(), "solo", |p: &Pod| phase(p) == "Failed").await;
    let t = killed.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(t.exit_code, 137);
    // The log stays readable while a finalizer holds the pod.
    let log = pods.logs("solo", &LogParams::default()).await.unwrap();
    assert_eq!(log, "kubesim: solo ran\n");
    pods.patch(
        "solo",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_gone(pods, "solo").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn pod_logs_support_tail_limit_timestamps_and_previous() {
    let sim = sim().await;
    let c = sim.client();
    let mut j = job_json(
        "logs",
        &[
            ("KUBESIM_LOG_LINES", "5"),
            ("KUBESIM_LOG_INTERVAL_MS", "1"),
            ("KUBESIM_FAIL_ATTEMPTS", "1"),
        ],
        json!({"backoffLimit": 2}),
    );
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("OnFailure".into());
    create_job(&c, &j).await;
    wait_finished(&c, "logs").await;
    let pod = job_pods(&c, "logs").await.remove(0).metadata.name.unwrap();
    let pods = Api::<Pod>::default_namespaced(c.clone());
    let all = pods.logs(&pod, &LogParams::default()).await.unwrap();
    assert_eq!(all, "line 1\nline 2\nline 3\nline 4\nline 5\n");
    let tail = pods
        .logs(
            &pod,
            &LogParams {
                tail_lines: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail, "line 4\nline 5\n");
    let limited = pods
        .logs(
            &pod,
            &LogParams {
                limit_bytes: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(limited, "line 1\nlin");
    let stamped = pods
        .logs(
            &pod,
            &LogParams {
                timestamps: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let first = stamped.lines().next().unwrap();
    let (ts, rest) = first.split_once(' ').unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    assert_eq!(rest, "line 1");
    let previous = pods
        .logs(
            &pod,
            &LogParams {
                previous: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        previous, all,
        "the failed first instance logged the same lines"
    );
    let since = pods
        .logs(
            &pod,
            &LogParams {
                since_seconds: Some(3600),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(since, all);
    let err = api_error(
        pods.logs(
            &pod,
            &LogParams {
                container: Some("nope".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn follow_streams_lines_until_the_container_exits() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job(
            "follow",
            &[
                ("KUBESIM_LOG_LINES", "20"),
                ("KUBESIM_LOG_INTERVAL_MS", "10"),
            ],
        ),
    )
    .await;
    wait_job(&c, "follow", |j| {
        j.status.as_ref().and_then(|s| s.ready) == Some(1)
    })
    .await;
    let pod = job_pods(&c, "follow")
        .await
        .remove(0)
        .metadata
        .name
        .unwrap();
    let pods = Api::<Pod>::default_namespaced(c.clone());
    let stream = pods
        .log_stream(
            &pod,
            &LogParams {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let lines: Vec<String> = tokio::time::timeout(WAIT, stream.lines().try_collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lines.len(), 20);
    assert_eq!(lines[19], "line 20");
    sim.shutdown().await;
}

#[tokio::test]
async fn huge_generated_log_streams_every_byte() {
    // Without rotation: a kubelet would serve only the current 10 MiB file of it.
    let sim = sim_with(SimConfig {
        log_rotate_bytes: None,
        ..Default::default()
    })
    .await;
    let c = sim.client();
    let size: usize = 20 * 1024 * 1024 + 7;
    create_job(
        &c,
        &job(
            "big",
            &[
                ("KUBESIM_LOG_BYTES", &size.to_string()),
                ("KUBESIM_DURATION_MS", "1"),
            ],
        ),
    )
    .await;
    wait_finished(&c, "big").await;
    let pod = job_pods(&c, "big").await.remove(0).metadata.name.unwrap();
    let resp = reqwest::get(format!(
        "{}/api/v1/namespaces/default/pods/{pod}/log",
        sim.url()
    ))
    .await
    .unwrap();
    let mut body = resp.bytes_stream();
    let mut total = 0usize;
    let mut head = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        if head.len() < 64 {
            head.extend_from_slice(&chunk[..chunk.len().min(64)]);
        }
        total += chunk.len();
    }
    assert_eq!(total, size);
    assert!(head.starts_with(b"kubesim generated log line 000000000000"));
    sim.shutdown().await;
}

#[tokio::test]
async fn logs_of_a_pod_that_has_not_started_are_a_400() {
    let sim = sim_with(SimConfig {
        start_delay: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    let c = sim.client();
    create_job(&c, &job("slow", &[])).await;
    wait_until(&sim, "pod exists", || async {
        !job_pods(&c, "slow").await.is_empty()
    })
    .await;
    let pod = job_pods(&c, "slow").await.remove(0).metadata.name.unwrap();
    let err = api_error(
        Api::<Pod>::default_namespaced(c.clone())
            .logs(&pod, &LogParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    assert!(
        err.message.contains("is waiting to start"),
        "{}",
        err.message
    );
    let all = Api::<Pod>::all(c.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_active_jobs_all_complete() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let started = std::time::Instant::now();
    futures::stream::iter(0..1000)
        .map(|i| {
            let c = c.clone();
            async move {
                create_job(
                    &c,
                    &job(&format!("bulk-{i}"), &[("KUBESIM_DURATION_MS", "300")]),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let created = started.elapsed();
    let mut complete = BTreeSet::new();
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(ev) = events.try_next().await.unwrap() {
            if let watcher::Event::Apply(j) | watcher::Event::InitApply(j) = ev {
                if has_condition(&j, "Complete") {
                    complete.insert(j.metadata.name.unwrap());
                }
            }
            if complete.len() == 1000 {
                return;
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "only {} of 1000 jobs completed",
        complete.len()
    );
    println!(
        "created 1000 jobs in {created:?}, all complete after {:?}",
        started.elapsed()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn pod_failure_policy_can_ignore_disruptions_by_pod_condition() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "disrupt",
            &[("KUBESIM_DURATION_MS", "60000")],
            json!({"backoffLimit": 0, "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
            ]}}),
        ),
    )
    .await;
    wait_job(&c, "disrupt", |j| {
        j.status.as_ref().and_then(|s| s.ready) == Some(1)
    })
    .await;
    let name = job_pods(&c, "disrupt").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    sim.faults().evict_pod("default", &name);
    // The evicted pod is not counted, so backoffLimit 0 is not exceeded and a new pod runs.
    wait_until(&sim, "a replacement pod runs", || async {
        let pods = job_pods(&c, "disrupt").await;
        pods.len() == 2 && pods.iter().any(|p| phase(p) == "Running")
    })
    .await;
    let j = Api::<Job>::default_namespaced(c.clone())
        .get("disrupt")
        .await
        .unwrap();
    assert_eq!(j.status.as_ref().unwrap().failed, None);
    assert!(!has_condition(&j, "Failed") && !has_condition(&j, "FailureTarget"));
    sim.shutdown().await;
}

#[tokio::test]
async fn termination_reason_and_pod_deadline_show_in_pod_status() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job(
            "oom",
            &[
                ("KUBESIM_DURATION_MS", "5"),
                ("KUBESIM_TERMINATION_REASON", "OOMKilled"),
            ],
        ),
    )
    .await;
    let j = wait_finished(&c, "oom").await;
    assert!(has_condition(&j, "Failed"));
    let p = job_pods(&c, "oom").await.remove(0);
    let t = p.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));

    let mut j = job("poddl", &[("KUBESIM_DURATION_MS", "60000")]);
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .active_deadline_seconds = Some(1);
    create_job(&c, &j).await;
    let j = wait_finished(&c, "poddl").await;
    assert!(has_condition(&j, "Failed"));
    let p = job_pods(&c, "poddl").await.remove(0);
    assert_eq!(
        p.status.unwrap().reason.as_deref(),
        Some("DeadlineExceeded")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn dry_run_create_validates_without_storing() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    let pp = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    let j = api.create(&pp, &job("dry", &[])).await.unwrap();
    assert_eq!(j.spec.unwrap().backoff_limit, Some(0));
    assert_eq!(api_error(api.get("dry").await.unwrap_err()).code, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn deleting_a_running_job_pod_counts_as_a_failure_and_replaces_it() {
    let sim = sim().await;
    let c = sim.client();
    create_job(
        &c,
        &job_json(
            "replace",
            &[("KUBESIM_DURATION_MS", "60000")],
            json!({"backoffLimit": 3}),
        ),
    )
    .await;
    wait_job(&c, "replace", |j| {
        j.status.as_ref().and_then(|s| s.ready) == Some(1)
    })
    .await;
    let name = job_pods(&c, "replace").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    Api::<Pod>::default_namespaced(c.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let j = wait_job(&c, "replace", |j| {
        let s = j.status.clone().unwrap_or_default();
        s.failed == Some(1) && s.ready == Some(1)
    })
    .await;
    assert!(!has_condition(&j, "Failed"));
    wait_gone(Api::<Pod>::default_namespaced(c.clone()), &name).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn huge_deadlines_do_not_break_the_controller() {
    let sim = sim().await;
    let c = sim.client();
    let mut j = job_json(
        "forever",
        &[("KUBESIM_DURATION_MS", "5")],
        json!({"activeDeadlineSeconds": i64::MAX}),
    );
    j.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .active_deadline_seconds = Some(i64::MAX);
    create_job(&c, &j).await;
    let j = wait_finished(&c, "forever").await;
    assert!(has_condition(&j, "Complete"));
    sim.shutdown().await;
}

#[tokio::test]
async fn lowering_parallelism_deletes_surplus_pods() {
    let sim = sim().await;
    let c = sim.client();
    let api = Api::<Job>::default_namespaced(c.clone());
    create_job(
        &c,
        &job_json(
            "scale",
            &[("KUBESIM_DURATION_MS", "60000")],
            json!({"parallelism": 3, "completions": 3}),
        ),
    )
    .await;
    wait_job(&c, "scale", |j| {
        j.status.as_ref().and_then(|s| s.ready) == Some(3)
    })
    .await;
    api.patch(
        "scale",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"parallelism": 1}})),
    )
    .await
    .unwrap();
    wait_job(&c, "scale", |j| {
        let s = j.status.clone().unwrap_or_default();
        s.active == Some(1) && s.terminating == Some(0)
    })
    .await;
    let j = api.get("scale").await.unwrap();
    assert_eq!(
        j.status.unwrap().failed,
        None,
        "scale-down is not a failure"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn ttl_deletion_is_foreground_so_a_held_pod_keeps_the_job_terminating() {
    let sim = sim().await;
    let c = sim.client();
    let jobs = Api::<Job>::default_namespaced(c.clone());
    let pods = Api::<Pod>::default_namespaced(c.clone());
    let mut j = job_json(
        "ttlhold",
        &[("KUBESIM_DURATION_MS", "5")],
        json!({"ttlSecondsAfterFinished": 0}),
    );
    j.spec.as_mut().unwrap().template.metadata =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            finalizers: Some(vec!["example.com/archive".into()]),
            ..Default::default()
        });
    create_job(&c, &j).await;
    let held = wait_job(&c, "ttlhold", |j| j.metadata.deletion_timestamp.is_some()).await;
    assert!(has_condition(&held, "Complete"));
    assert!(held
        .metadata
        .finalizers
        .unwrap()
        .contains(&"foregroundDeletion".to_string()));
    let pod = job_pods(&c, "ttlhold").await.remove(0);
    let name = pod.metadata.name.clone().unwrap();
    let pod = wait_obj(pods.clone(), &name, |p: &Pod| {
        p.metadata.deletion_timestamp.is_some()
    })
    .await;
    assert_eq!(
        pod.metadata.finalizers.unwrap(),
        vec!["example.com/archive"]
    );
    // The pod's log is still readable while the finalizer holds it.
    assert_eq!(
        pods.logs(&name, &LogParams::default()).await.unwrap(),
        format!("kubesim: {name} ran\n")
    );
    pods.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_gone(jobs, "ttlhold").await;
    sim.shutdown().await;
}

/// A runner that always exits 7 after writing one line, to show the runtime is pluggable.
struct Sevens;

impl kubesim::Runner for Sevens {
    fn run(
        &self,
        spec: kubesim::RunSpec,
        log: std::sync::Arc<kubesim::logs::LogBuf>,
        _kill: tokio_util::sync::CancellationToken,
    ) -> futures::future::BoxFuture<'static, kubesim::RunOutcome> {
        Box::pin(async move {
            log.push_line(format!("custom runner ran {}\n", spec.pod_name).into());
            kubesim::RunOutcome::exited(7)
        })
    }
}

#[tokio::test]
async fn a_custom_runner_can_be_plugged_in() {
    let sim =
        kubesim::KubeSim::start_with_runner(SimConfig::default(), std::sync::Arc::new(Sevens))
            .await
            .unwrap();
    let c = sim.client();
    create_job(&c, &job("custom", &[])).await;
    let j = wait_finished(&c, "custom").await;
    assert!(has_condition(&j, "Failed"));
    let p = job_pods(&c, "custom").await.remove(0);
    let t = p.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(t.exit_code, 7);
    sim.shutdown().await;
}
