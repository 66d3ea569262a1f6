//! Renders a run into its batch/v1 Job. Pure: the same run always gives the same Job, which is
//! what makes creation idempotent (a retry finds the same name and adopts it).

use super::{keys, ClusterSettings};
use crate::domain::template::{
    CompletionMode, RestartPolicy, KUEUE_PRIORITY_CLASS_LABEL, KUEUE_QUEUE_LABEL,
};
use crate::domain::Run;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// The name of the run's container in every pod.
pub const CONTAINER: &str = crate::domain::template::CONTAINER_NAME;

/// Kubernetes limits Job names to 63 characters (they become a label value on the pods).
const MAX_JOB_NAME: usize = 63;

/// The Job name of a run: `<prefix><task>-<number>`, or `<prefix>run-<number>` for ad-hoc runs;
/// the task part is shortened when needed so the whole stays a valid 63-character DNS label,
/// and so does an Indexed Job's name plus its pods' `-<index>` hostname suffix (the API server
/// refuses the Job otherwise; the submission check keeps room for the run number).
pub fn job_name(settings: &ClusterSettings, run: &Run) -> String {
    let base = run.task.as_deref().unwrap_or("run");
    let suffix = format!("-{}", run.number);
    let room = MAX_JOB_NAME.saturating_sub(
        settings.job_name_prefix.len() + suffix.len() + run.template.index_suffix_len(),
    );
    let base = base[..base.len().min(room)].trim_end_matches('-');
    format!("{}{base}{suffix}", settings.job_name_prefix)
}

pub fn namespace<'a>(settings: &'a ClusterSettings, run: &'a Run) -> &'a str {
    run.template
        .namespace
        .as_deref()
        .unwrap_or_else(|| settings.default_namespace())
}

/// The labels that tie a Job and its pods to a run of this installation.
pub fn ownership_labels(settings: &ClusterSettings, run: &Run) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (
            keys::INSTALLATION.to_string(),
            settings.installation.clone(),
        ),
        (keys::RUN_ID.to_string(), run.id.to_string()),
        (keys::MANAGED_BY.to_string(), keys::MANAGER.to_string()),
    ]);
    if let Some(task) = &run.task {
        labels.insert(keys::TASK.to_string(), task.clone());
    }
    labels
}

/// The Kueue labels of a run's Job: its LocalQueue and WorkloadPriorityClass, when it names them.
pub fn kueue_labels(run: &Run) -> BTreeMap<String, String> {
    let t = &run.template;
    let mut labels = BTreeMap::new();
    if let Some(queue) = &t.queue_name {
        labels.insert(KUEUE_QUEUE_LABEL.to_string(), queue.clone());
        if let Some(class) = &t.priority_class {
            labels.insert(KUEUE_PRIORITY_CLASS_LABEL.to_string(), class.clone());
        }
    }
    labels
}

/// The pod-level half of the Pod Security Standards' restricted profile. Templates cannot weaken
/// it: they have no field for security settings or host namespaces, and their volume kinds
/// (emptyDir, configMap, secret, persistentVolumeClaim, ephemeral) are all ones the restricted
/// profile allows (hostPath, which it does not, is refused at every door).
fn pod_security(settings: &ClusterSettings) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: settings.run_as_non_root.then_some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container-level half of the restricted profile.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn render(settings: &ClusterSettings, run: &Run) -> Job {
    let t = &run.template;
    let mut labels = t.labels.clone();
    labels.extend(ownership_labels(settings, run));
    let mut annotations = t.annotations.clone();
    annotations.insert(keys::RUN_NUMBER.to_string(), run.number.to_string());
    let (index_labels, index_annotations) = super::render_failure::index_metadata(t);

    let quantities = |map: &BTreeMap<String, String>| {
        (!map.is_empty()).then(|| {
            map.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect::<BTreeMap<_, _>>()
        })
    };
    let (volumes, volume_mounts) = super::render_volumes::volumes(t);
    let mut container = Container {
        name: CONTAINER.into(),
        image: Some(t.image.clone()),
        command: (!t.command.is_empty()).then(|| t.command.clone()),
        args: (!t.args.is_empty()).then(|| t.args.clone()),
        env: (!t.env.is_empty() || t.completion_index.is_some()).then(|| {
            t.env
                .iter()
                .map(super::render_env::env_var)
                .chain(super::render_failure::index_env(t))
                .collect()
        }),
        env_from: super::render_env::env_from(t),
        volume_mounts,
        working_dir: t.working_dir.clone(),
        security_context: Some(container_security()),
        resources: t.resources.as_ref().map(|r| ResourceRequirements {
            requests: quantities(&r.requests),
            limits: quantities(&r.limits),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The run's parameters, as `VFI_PARAM_<NAME>` (secret ones from the run's Secret).
    container.env = super::params::with_param_env(container.env.take(), run);
    let restart_policy = match t.restart_policy {
        Some(RestartPolicy::OnFailure) => "OnFailure",
        Some(RestartPolicy::Never) | None => "Never",
    };
    let pod_spec = PodSpec {
        containers: vec![container],
        volumes,
        restart_policy: Some(restart_policy.into()),
        security_context: Some(pod_security(settings)),
        service_account_name: t.service_account_name.clone(),
        node_selector: (!t.node_selector.is_empty()).then(|| t.node_selector.clone()),
        tolerations: (!t.tolerations.is_empty()).then(|| {
            t.tolerations
                .iter()
                .map(|tol| Toleration {
                    key: tol.key.clone(),
                    operator: tol.operator.clone(),
                    value: tol.value.clone(),
                    effect: tol.effect.clone(),
                    toleration_seconds: tol.toleration_seconds,
                })
                .collect()
        }),
        ..Default::default()
    };
    // Kueue's labels go on the Job only: Kueue manages the Job, and its pods follow from it.
    let mut job_labels = labels.clone();
    job_labels.extend(kueue_labels(run));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(settings, run)),
            namespace: Some(namespace(settings, run).to_string()),
            labels: Some(job_labels),
            annotations: Some(annotations.clone()),
            finalizers: Some(vec![keys::TRACKING_FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completions: t.completions,
            parallelism: t.parallelism,
            completion_mode: t.completion_mode.map(|m| {
                match m {
                    CompletionMode::Indexed => "Indexed",
                    CompletionMode::NonIndexed => "NonIndexed",
                }
                .to_string()
            }),
            backoff_limit: t.effective_backoff_limit(),
            backoff_limit_per_index: t.backoff_limit_per_index,
            max_failed_indexes: t.max_failed_indexes,
            pod_failure_policy: super::render_failure::pod_failure_policy(t),
            // Created suspended, as Kueue's job webhook would make it (and as its docs ask of a
            // Job given to a LocalQueue): Kueue unsuspends it once the Workload is admitted. The
            // service never changes `suspend` afterwards.
            suspend: t.queue_name.is_some().then_some(true),
            active_deadline_seconds: t.active_deadline_seconds,
            ttl_seconds_after_finished: t.ttl_seconds_after_finished,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.into_iter().chain(index_labels).collect()),
                    annotations: Some(annotations.into_iter().chain(index_annotations).collect()),
                    finalizers: Some(vec![keys::LOG_FINALIZER.to_string()]),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RunStatus, RunTemplate, Trigger};
    use serde_json::json;

    fn settings() -> ClusterSettings {
        ClusterSettings {
            installation: "prod".into(),
            namespaces: vec!["batch".into()],
            job_name_prefix: String::new(),
            run_as_non_root: false,
        }
    }

    fn run(task: Option<&str>, template: serde_json::Value) -> Run {
        let template: RunTemplate = serde_json::from_value(template).unwrap();
        Run {
            id: uuid::Uuid::nil(),
            number: 7,
            task: task.map(str::to_string),
            status: RunStatus::Queued,
            status_reason: None,
            status_message: None,
            trigger: Trigger::Api,
            rerun_of: None,
            labels: template.labels.clone(),
            template,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            launch: Default::default(),
            job: None,
            pods: Default::default(),
            scheduled_time: None,
            report: None,
            priority: 0,
            queue_key: None,
            queue_limit: None,
            queue: None,
            superseded_by: None,
            params: Default::default(),
            retry_reason: None,
        }
    }

    /// Issue 18: `valueFrom` and `envFrom` render as the core/v1 fields, and `scratch` as a
    /// generic ephemeral volume (ReadWriteOnce, the size as `requests.storage`) at `/scratch`.
    #[test]
    fn env_from_the_cluster_and_scratch_render_as_the_pod_fields() {
        let job = render(
            &settings(),
            &run(
                Some("build"),
                json!({"image": "x",
                    "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}},
                            {"name": "L", "value": "1"}],
                    "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "C_"}],
                    "scratch": {"size": "1Gi", "storageClass": "fast"}}),
            ),
        );
        let pod = serde_json::to_value(job.spec.unwrap().template.spec.unwrap()).unwrap();
        let c = &pod["containers"][0];
        assert_eq!(
            c["env"],
            json!([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}},
                   {"name": "L", "value": "1"}])
        );
        assert_eq!(
            c["envFrom"],
            json!([{"configMapRef": {"name": "cm"}, "prefix": "C_"}])
        );
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "scratch", "mountPath": "/scratch"}])
        );
        assert_eq!(
            pod["volumes"],
            json!([{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                "resources": {"requests": {"storage": "1Gi"}}}}}}])
        );
    }

    #[test]
    fn job_names_are_task_and_number_and_always_fit() {
        assert_eq!(
            job_name(&settings(), &run(Some("render"), json!({"image": "x"}))),
            "render-7"
        );
        assert_eq!(
            job_name(&settings(), &run(None, json!({"image": "x"}))),
            "run-7"
        );
        let long = "a".repeat(49) + "-b";
        let mut s = settings();
        s.job_name_prefix = "team-x-".into();
        let name = job_name(&s, &run(Some(&long), json!({"image": "x"})));
        assert!(name.len() <= 63, "{name}");
        assert!(crate::domain::names::dns1123_label(&name).is_ok(), "{name}");
        assert!(name.starts_with("team-x-aaaa") && name.ends_with("-7"));
    }

    #[test]
    fn indexed_job_names_leave_room_for_the_pod_index_in_the_hostname() {
        let long = "a".repeat(60);
        let r = run(
            Some(&long),
            json!({"image": "x", "completionMode": "Indexed", "completions": 100}),
        );
        let name = job_name(&settings(), &r);
        let hostname = format!("{name}-99");
        assert!(hostname.len() <= 63, "{hostname}");
        assert!(crate::domain::names::dns1123_label(&hostname).is_ok());
    }

    #[test]
    fn the_calculatepi_run_renders_like_kubectl_create_job() {
        let job = render(
            &settings(),
            &run(
                None,
                json!({"image": "perl:5.34.0", "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]}),
            ),
        );
        let value = serde_json::to_value(&job).unwrap();
        assert_eq!(value["metadata"]["namespace"], "batch");
        assert_eq!(
            value["metadata"]["finalizers"],
            json!([keys::TRACKING_FINALIZER])
        );
        let pod = &value["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["containers"][0]["image"], "perl:5.34.0");
        assert_eq!(
            pod["containers"][0]["command"],
            json!(["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"])
        );
        assert!(pod["containers"][0].get("args").is_none());
    }

    #[test]
    fn jobs_and_pods_carry_the_ownership_labels_and_user_fields() {
        let job = render(
            &settings(),
            &run(
                Some("render"),
                json!({
                    "image": "x", "labels": {"team": "a"}, "annotations": {"note": "n"},
                    "completions": 20, "parallelism": 5, "completionMode": "Indexed",
                    "backoffLimit": 2, "activeDeadlineSeconds": 60, "ttlSecondsAfterFinished": 0,
                    "namespace": "other", "serviceAccountName": "runner",
                    "env": [{"name": "A", "value": "1"}],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    "nodeSelector": {"gpu": "true"},
                    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
                }),
            ),
        );
        let value = serde_json::to_value(&job).unwrap();
        for labels in [
            &value["metadata"]["labels"],
            &value["spec"]["template"]["metadata"]["labels"],
        ] {
            assert_eq!(labels["team"], "a");
            assert_eq!(labels[keys::INSTALLATION], "prod");
            assert_eq!(labels[keys::RUN_ID], uuid::Uuid::nil().to_string());
            assert_eq!(labels[keys::TASK], "render");
        }
        assert_eq!(value["metadata"]["annotations"][keys::RUN_NUMBER], "7");
        assert_eq!(value["metadata"]["namespace"], "other");
        let spec = &value["spec"];
        assert_eq!(
            (
                spec["completions"].as_i64(),
                spec["parallelism"].as_i64(),
                spec["backoffLimit"].as_i64()
            ),
            (Some(20), Some(5), Some(2))
        );
        assert_eq!(spec["completionMode"], "Indexed");
        assert_eq!(spec["ttlSecondsAfterFinished"], 0);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "runner");
        assert_eq!(pod["nodeSelector"]["gpu"], "true");
        assert_eq!(pod["tolerations"][0]["key"], "gpu");
        assert_eq!(
            pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
            "1"
        );
        assert_eq!(pod["containers"][0]["env"][0]["value"], "1");
    }

    #[test]
    fn a_run_naming_a_kueue_queue_gets_a_suspended_job_with_kueues_labels() {
        let queued = run(
            Some("render"),
            json!({"image": "x", "queueName": "team-a", "priorityClass": "high"}),
        );
        let value = serde_json::to_value(render(&settings(), &queued)).unwrap();
        assert_eq!(value["spec"]["suspend"], true);
        let labels = &value["metadata"]["labels"];
        assert_eq!(labels["kueue.x-k8s.io/queue-name"], "team-a");
        assert_eq!(labels["kueue.x-k8s.io/priority-class"], "high");
        let pod_labels = &value["spec"]["template"]["metadata"]["labels"];
        assert!(pod_labels.get("kueue.x-k8s.io/queue-name").is_none());

        let plain =
            serde_json::to_value(render(&settings(), &run(None, json!({"image": "x"})))).unwrap();
        assert!(plain["spec"].get("suspend").is_none(), "not suspended");
        assert!(plain["metadata"]["labels"]
            .get("kueue.x-k8s.io/queue-name")
            .is_none());
    }

    #[test]
    fn pods_follow_the_restricted_pod_security_profile() {
        let job = render(&settings(), &run(None, json!({"image": "x"})));
        let value = serde_json::to_value(&job).unwrap();
        let pod = &value["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert!(
            pod["securityContext"].get("runAsNonRoot").is_none(),
            "root images still run by default"
        );
        assert!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none());
        assert!(
            pod.get("volumes").is_none(),
            "no host paths or any other volume"
        );
        let container = &pod["containers"][0]["securityContext"];
        assert_eq!(container["allowPrivilegeEscalation"], false);
        assert_eq!(container["privileged"], false);
        assert_eq!(container["capabilities"]["drop"], json!(["ALL"]));
        assert!(container["capabilities"].get("add").is_none());
        assert_eq!(container["seccompProfile"]["type"], "RuntimeDefault");
    }

    #[test]
    fn run_as_non_root_is_enforced_when_configured() {
        let mut s = settings();
        s.run_as_non_root = true;
        let value = serde_json::to_value(render(&s, &run(None, json!({"image": "x"})))).unwrap();
        assert_eq!(
            value["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
            true
        );
    }
}
