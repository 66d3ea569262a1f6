//! Shared test helpers: start a simulator, build Jobs from env-var scripts, and wait for
//! conditions through watches (never by sleeping).
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use kubesim::{KubeSim, SimConfig};
use serde_json::json;

pub const WAIT: Duration = Duration::from_secs(20);

pub async fn sim() -> KubeSim {
    sim_with(SimConfig::default()).await
}

pub async fn sim_with(config: SimConfig) -> KubeSim {
    KubeSim::start(config).await.expect("kubesim starts")
}

/// A NonIndexed Job whose single container runs the scripted-runner `env`.
pub fn job(name: &str, env: &[(&str, &str)]) -> Job {
    job_json(name, env, json!({}))
}

/// A Job with extra `spec` fields merged in (e.g. `{"completions": 3}`).
pub fn job_json(name: &str, env: &[(&str, &str)], spec: serde_json::Value) -> Job {
    let env: Vec<_> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let mut j = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox", "env": env}]
            }}
        }
    });
    if let (Some(dst), Some(src)) = (j["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(j).expect("valid job")
}

pub async fn create_job(client: &kube::Client, job: &Job) -> Job {
    Api::<Job>::default_namespaced(client.clone())
        .create(&PostParams::default(), job)
        .await
        .expect("job created")
}

pub fn has_condition(job: &Job, ty: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == ty && c.status == "True"))
}

pub fn condition<'a>(
    job: &'a Job,
    ty: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == ty))
}

/// Waits (through a watch) until the named Job satisfies `cond`.
pub async fn wait_job(client: &kube::Client, name: &str, cond: impl Fn(&Job) -> bool) -> Job {
    let api = Api::<Job>::default_namespaced(client.clone());
    let got = tokio::time::timeout(
        WAIT,
        await_condition(api, name, move |j: Option<&Job>| j.is_some_and(&cond)),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for job {name}"))
    .expect("watch works");
    got.expect("job exists")
}

pub async fn wait_finished(client: &kube::Client, name: &str) -> Job {
    wait_job(client, name, |j| {
        has_condition(j, "Complete") || has_condition(j, "Failed")
    })
    .await
}

/// Waits until the named object no longer exists.
pub async fn wait_gone<K>(api: Api<K>, name: &str)
where
    K: Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + kube::Resource + 'static,
{
    tokio::time::timeout(
        WAIT,
        await_condition(api, name, kube::runtime::conditions::is_deleted("")),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {name} to be deleted"))
    .expect("watch works");
}

/// Waits until the named object exists and satisfies `cond`.
pub async fn wait_obj<K>(api: Api<K>, name: &str, cond: impl Fn(&K) -> bool) -> K
where
    K: Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + kube::Resource + 'static,
{
    tokio::time::timeout(
        WAIT,
        await_condition(api, name, move |o: Option<&K>| o.is_some_and(&cond)),
    )
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {name}"))
    .expect("watch works")
    .expect("object exists")
}

/// Polls an async predicate on store changes, for conditions over many objects. It waits on
/// the store's change notifications, not on a timer.
pub async fn wait_until<F, Fut>(sim: &KubeSim, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let store = sim.store();
    let mut changes = store.subscribe();
    let res = tokio::time::timeout(WAIT, async {
        loop {
            changes.borrow_and_update();
            if f().await {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(res.is_ok(), "timed out waiting until {what}");
}

pub async fn job_pods(client: &kube::Client, job: &str) -> Vec<Pod> {
    Api::<Pod>::default_namespaced(client.clone())
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .expect("pods listed")
        .items
}

pub fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

pub fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}
