//! The kubelet's container environment from Secrets and ConfigMaps, as
//! pkg/kubelet/kubelet_pods.go `makeEnvironmentVariables` builds it
//! (https://kubernetes.io/docs/tasks/inject-data-application/distribute-credentials-secure/,
//! https://kubernetes.io/docs/tasks/configure-pod-container/configure-pod-configmap/): `env[].valueFrom.secretKeyRef`
//! / `configMapKeyRef`, `envFrom` with `prefix`, `optional`, `$(VAR)` expansion of env values,
//! `command` and `args`
//! (https://kubernetes.io/docs/tasks/inject-data-application/define-interdependent-environment-variables/),
//! and a missing Secret or key leaving the container waiting in `CreateContainerConfigError`
//! (kuberuntime_container.go `startContainer`) until it appears.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret};
use kube::api::{Api, ListParams, LogParams, PostParams};
use kubesim::behaviour::Behaviour;
use kubesim::{KubeSim, RunnerKind, SimConfig};
use serde_json::{json, Value};

async fn fast_retry_sim(runner: RunnerKind) -> KubeSim {
    sim_with(SimConfig {
        runner,
        behaviour: Behaviour {
            config_retry: Duration::from_millis(100),
            ..Behaviour::default()
        },
        ..SimConfig::default()
    })
    .await
}

async fn put_secret(c: &kube::Client, name: &str, data: Value) {
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
    Api::<Secret>::default_namespaced(c.clone())
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

async fn put_config_map(c: &kube::Client, name: &str, data: Value) {
    let m: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap();
    Api::<ConfigMap>::default_namespaced(c.clone())
        .create(&PostParams::default(), &m)
        .await
        .unwrap();
}

/// A Job whose container is given `container` fields (env, envFrom, command, ...).
fn job_with(name: &str, container: Value) -> Job {
    let mut c = json!({"name": "main", "image": "busybox"});
    for (k, v) in container.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "containers": [c]}}}
    }))
    .unwrap()
}

async fn log_of_job(c: &kube::Client, job: &str) -> String {
    let pod = job_pods(c, job).await.remove(0);
    Api::<Pod>::default_namespaced(c.clone())
        .logs(pod.metadata.name.as_deref().unwrap(), &LogParams::default())
        .await
        .unwrap()
}

fn waiting(p: &Pod) -> Option<(String, String)> {
    let cs = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let w = cs.state.as_ref()?.waiting.as_ref()?;
    Some((w.reason.clone()?, w.message.clone().unwrap_or_default()))
}

async fn wait_waiting(sim: &KubeSim, job: &str) -> (Pod, (String, String)) {
    let c = sim.client();
    let found = std::sync::Arc::new(std::sync::Mutex::new(None));
    wait_until(sim, "the pod waits", || {
        let (c, found) = (c.clone(), found.clone());
        async move {
            let pods = job_pods(&c, job).await;
            match pods
                .first()
                .and_then(|p| waiting(p).map(|w| (p.clone(), w)))
            {
                Some(hit) if hit.1 .0 == "CreateContainerConfigError" => {
                    *found.lock().unwrap() = Some(hit);
                    true
                }
                _ => false,
            }
        }
    })
    .await;
    let hit = found.lock().unwrap().take().unwrap();
    hit
}

/// Values from `secretKeyRef`, `configMapKeyRef` and `envFrom` (with a prefix) reach the
/// container, and `$(VAR)` in a later env value is expanded from them (`$$` escapes).
#[tokio::test]
async fn secret_and_config_map_values_reach_the_container_and_expand_in_later_values() {
    let sim = fast_retry_sim(RunnerKind::Scripted).await;
    let c = sim.client();
    put_secret(
        &c,
        "db",
        json!({"password": "hunter2-xyz", "user": "admin"}),
    )
    .await;
    put_config_map(&c, "settings", json!({"LEVEL": "debug", "1st": "x"})).await;
    create_job(
        &c,
        &job_with(
            "reads",
            json!({
                "envFrom": [
                    {"configMapRef": {"name": "settings"}, "prefix": "APP_"},
                    {"configMapRef": {"name": "settings"}}
                ],
                "env": [
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                    {"name": "LVL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
                    {"name": "KUBESIM_LOG",
                     "value": "token=$(TOKEN) level=$(APP_LEVEL)/$(LVL) literal=$$(TOKEN) unknown=$(NOPE)"}
                ]
            }),
        ),
    )
    .await;
    assert!(has_condition(&wait_finished(&c, "reads").await, "Complete"));
    assert_eq!(
        log_of_job(&c, "reads").await,
        "token=hunter2-xyz level=debug/debug literal=$(TOKEN) unknown=$(NOPE)\n"
    );
    // Without a prefix, the key that is no env var name (`1st`) was skipped, and said so.
    let events = Api::<Event>::default_namespaced(c)
        .list(&ListParams::default().fields("reason=InvalidEnvironmentVariableNames"))
        .await
        .unwrap();
    assert_eq!(
        events.items[0].message.as_deref(),
        Some("Keys [1st] from the EnvFrom configMap default/settings were skipped since they are considered invalid environment variable names.")
    );
    sim.shutdown().await;
}

/// A Secret that does not exist leaves the container waiting with `CreateContainerConfigError`
/// and the kubelet's message, with a `Failed` Event `Error: secret "db" not found`; the kubelet
/// retries, and the pod runs once the Secret is created.
#[tokio::test]
async fn a_missing_secret_holds_the_container_in_create_container_config_error_until_it_exists() {
    let sim = fast_retry_sim(RunnerKind::Scripted).await;
    let c = sim.client();
    create_job(
        &c,
        &job_with(
            "early",
            json!({"env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "KUBESIM_LOG", "value": "$(TOKEN)"}
            ]}),
        ),
    )
    .await;
    let (pod, (_, message)) = wait_waiting(&sim, "early").await;
    assert_eq!(message, r#"secret "db" not found"#);
    assert_eq!(phase(&pod), "Pending");
    let events = Api::<Event>::default_namespaced(c.clone())
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name={},reason=Failed",
            pod.metadata.name.as_deref().unwrap()
        )))
        .await
        .unwrap();
    assert_eq!(
        events.items[0].message.as_deref(),
        Some(r#"Error: secret "db" not found"#)
    );
    put_secret(&c, "db", json!({"password": "late"})).await;
    assert!(has_condition(&wait_finished(&c, "early").await, "Complete"));
    assert_eq!(log_of_job(&c, "early").await, "late\n");
    sim.shutdown().await;
}

/// A Secret without the key: `couldn't find key password in Secret default/db`; the same for a
/// ConfigMap; an `envFrom` of a missing ConfigMap: `configmap "gone" not found`.
#[tokio::test]
async fn a_missing_key_or_config_map_gives_the_kubelets_messages() {
    let sim = fast_retry_sim(RunnerKind::Scripted).await;
    let c = sim.client();
    put_secret(&c, "db", json!({"user": "admin"})).await;
    put_config_map(&c, "settings", json!({"A": "1"})).await;
    let cases = [
        (
            "nokey",
            json!({"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}),
            "couldn't find key password in Secret default/db",
        ),
        (
            "nocmkey",
            json!({"env": [{"name": "T", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "B"}}}]}),
            "couldn't find key B in ConfigMap default/settings",
        ),
        (
            "nocm",
            json!({"envFrom": [{"configMapRef": {"name": "gone"}}]}),
            r#"configmap "gone" not found"#,
        ),
    ];
    for (name, container, want) in cases {
        create_job(&c, &job_with(name, container)).await;
        let (_, (_, message)) = wait_waiting(&sim, name).await;
        assert_eq!(message, want, "{name}");
    }
    sim.shutdown().await;
}

/// `optional: true`: a missing Secret, ConfigMap or key leaves the variable out and the
/// container starts.
#[tokio::test]
async fn optional_references_to_missing_objects_or_keys_are_left_out() {
    let sim = fast_retry_sim(RunnerKind::Scripted).await;
    let c = sim.client();
    put_secret(&c, "db", json!({"user": "admin"})).await;
    create_job(
        &c,
        &job_with(
            "opt",
            json!({
                "envFrom": [{"secretRef": {"name": "gone", "optional": true}}],
                "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nokey", "optional": true}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}},
                    {"name": "KUBESIM_LOG", "value": "a=$(A) b=$(B) user=ok"}
                ]
            }),
        ),
    )
    .await;
    assert!(has_condition(&wait_finished(&c, "opt").await, "Complete"));
    assert_eq!(log_of_job(&c, "opt").await, "a=$(A) b=$(B) user=ok\n");
    sim.shutdown().await;
}

/// The host runner runs the container's `command`/`args` with `$(VAR)` expanded from its final
/// environment (`ExpandContainerCommandAndArgs`), and gives it the Secret's values as env.
#[tokio::test]
async fn the_host_runner_expands_command_and_args_and_sees_secret_env() {
    let sim = fast_retry_sim(RunnerKind::Host).await;
    let c = sim.client();
    put_secret(&c, "creds", json!({"token": "hunter2-xyz"})).await;
    create_job(
        &c,
        &job_with(
            "host",
            json!({
                "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "VFI_"}],
                "command": ["sh", "-c"],
                "args": ["echo arg=$(VFI_token) env=$VFI_token"]
            }),
        ),
    )
    .await;
    assert!(has_condition(&wait_finished(&c, "host").await, "Complete"));
    assert_eq!(
        log_of_job(&c, "host").await,
        "arg=hunter2-xyz env=hunter2-xyz\n"
    );
    sim.shutdown().await;
}

/// The API server's checks of env sources (`validateEnvVarValueFrom`, `validateEnvFrom` in
/// pkg/apis/core/validation/validation.go): one source per `valueFrom`, none beside a `value`,
/// a key that passes `IsConfigMapKey`, exactly one ref per `envFrom`; a 422 naming each field.
#[tokio::test]
async fn env_sources_are_validated_like_the_api_server() {
    let sim = fast_retry_sim(RunnerKind::Scripted).await;
    let job = job_with(
        "bad",
        json!({
            "env": [
                {"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"},
                                            "configMapKeyRef": {"name": "cm", "key": "k"}}},
                {"name": "C", "valueFrom": {"secretKeyRef": {"name": "Bad_Name", "key": "a/b"}}}
            ],
            "envFrom": [{"prefix": "1X", "secretRef": {"name": "db"}}, {}]
        }),
    );
    let err = Api::<Job>::default_namespaced(sim.client())
        .create(&PostParams::default(), &job)
        .await
        .map_err(api_error)
        .unwrap_err();
    assert_eq!(err.code, 422);
    let fields: Vec<String> = err
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    let c = "spec.template.spec.containers[0]";
    assert_eq!(
        fields,
        [
            format!("{c}.env[0].valueFrom"),
            format!("{c}.env[1].valueFrom"),
            format!("{c}.env[2].valueFrom.secretKeyRef.name"),
            format!("{c}.env[2].valueFrom.secretKeyRef.key"),
            format!("{c}.envFrom[0].prefix"),
            format!("{c}.envFrom"),
        ]
    );
    sim.shutdown().await;
}

/// A restart builds the container's env again (the kubelet generates the container config on
/// every start): the Secret deleted while the first instance ran holds the restart in
/// `CreateContainerConfigError`, and it restarts once the Secret is back.
#[tokio::test]
async fn a_restart_after_the_secret_was_deleted_waits_in_create_container_config_error() {
    let sim = fast_retry_sim(RunnerKind::Scripted).await;
    let c = sim.client();
    put_secret(&c, "db", json!({"password": "first"})).await;
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "again"},
        "spec": {"backoffLimit": 3, "template": {"spec": {
            "restartPolicy": "OnFailure",
            "containers": [{"name": "main", "image": "busybox", "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "KUBESIM_FAIL_ATTEMPTS", "value": "1"},
                {"name": "KUBESIM_DURATION_MS", "value": "300"}
            ]}]}}}
    }))
    .unwrap();
    create_job(&c, &job).await;
    let running = |p: &Pod| phase(p) == "Running";
    wait_until(&sim, "the first instance runs", || {
        let c = c.clone();
        async move { job_pods(&c, "again").await.iter().any(running) }
    })
    .await;
    Api::<Secret>::default_namespaced(c.clone())
        .delete("db", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    let (pod, (_, message)) = wait_waiting(&sim, "again").await;
    assert_eq!(message, r#"secret "db" not found"#);
    let restarts = pod.status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 1);
    put_secret(&c, "db", json!({"password": "second"})).await;
    assert!(has_condition(&wait_finished(&c, "again").await, "Complete"));
    sim.shutdown().await;
}
