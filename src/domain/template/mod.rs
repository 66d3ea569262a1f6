//! The run template: the batch/v1 Job fields users set, and their validation as the Kubernetes API
//! server would do it, so a bad template is refused at submission rather than later in the cluster.
//!
//! - [`validate`](mod@validate): every field checked as the API server would, naming the field;
//! - [`quantity`]: Kubernetes quantities and extended resources.
//!
//! Rendering a template into a Job is the cluster's part (src/cluster/render.rs).

mod env_from;
mod failure;
mod quantity;
mod validate;
mod volumes;

pub use env_from::{
    EnvFromCluster, EnvFromSource, EnvVarSource, KeySelector, ObjectRef, Scratch, SCRATCH_PATH,
    SCRATCH_VOLUME,
};
pub use failure::{
    OnExitCodes, OnPodCondition, PodFailurePolicy, PodFailurePolicyRule, Retry, CONTAINER_NAME,
    DISRUPTION_TARGET,
};

pub use volumes::{
    ConfigMapVolume, EmptyDirVolume, KeyToPath, PersistentVolumeClaimVolume, SecretVolume, Volume,
    VolumeKind, VolumeKinds, VolumeMount,
};

pub(crate) use quantity::is_extended;
pub use quantity::parse_quantity;
pub(crate) use validate::validate_labels;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Label and annotation keys under this prefix belong to the service (they tie Jobs to runs).
pub const RESERVED_PREFIX: &str = "vfi-orchestrator.io/";

/// Pod-template labels the Job controller owns: with a generated selector the API server requires
/// them to equal the Job's own name and uid, which a template cannot know, so a real server
/// answers 422 (`ValidateGeneratedSelector` in kubernetes/kubernetes
/// pkg/apis/batch/validation/validation.go, labels from pkg/apis/batch/types.go).
pub const JOB_CONTROLLER_LABELS: [&str; 4] = [
    "job-name",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/controller-uid",
];

/// The label that puts a Job in a Kueue LocalQueue; set from `queueName`, never by hand.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// The label naming a Job's Kueue WorkloadPriorityClass; set from `priorityClass`.
pub const KUEUE_PRIORITY_CLASS_LABEL: &str = "kueue.x-k8s.io/priority-class";

/// What one run executes: a container and the Job settings around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"image": "perl:5.34.0", "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]}))]
pub struct RunTemplate {
    /// Container image, e.g. `perl:5.34.0`.
    pub image: String,
    /// Entrypoint (the image's ENTRYPOINT when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments to the entrypoint (the image's CMD when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables of the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Every key of a Secret or ConfigMap in the run's namespace as env vars (who may set this:
    /// `ALLOW_ENV_FROM_CLUSTER`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// Scratch space for this run's pods: a volume created with each pod and deleted with it,
    /// mounted at `/scratch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<Scratch>,
    /// Volumes of the run's pods beyond scratch: emptyDir, configMap, secret or
    /// persistentVolumeClaim, each only if the installation allows its kind
    /// (`ALLOWED_VOLUME_KINDS`, none by default); hostPath is always refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Mounts of `volumes` (or of `scratch`) in the run's container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Successful pods needed for the Job to complete (Kubernetes default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completions: Option<i32>,
    /// Pods running at once at most (Kubernetes default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_mode: Option<CompletionMode>,
    /// Retries before the Job is failed (Kubernetes default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// `Never` (default: a failed container means a new pod) or `OnFailure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// A Kueue LocalQueue in the run's namespace: the Job gets the `kueue.x-k8s.io/queue-name`
    /// label and is created suspended; Kueue starts it once its Workload is admitted (the run
    /// is `admitting` until then). A DNS-1123 subdomain of at most 63 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// A Kueue WorkloadPriorityClass for the run's Workload (the `kueue.x-k8s.io/priority-class`
    /// label); needs `queueName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    /// batch/v1 `podFailurePolicy`: what a failed pod's exit code or conditions mean (see docs/retries.md);
    /// needs `restartPolicy: Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_failure_policy: Option<PodFailurePolicy>,
    /// Indexed runs: retries per index instead of for the whole Job (batch/v1
    /// `backoffLimitPerIndex`); the Job's `status.failedIndexes` lists the indexes that used
    /// them up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit_per_index: Option<i32>,
    /// With `backoffLimitPerIndex`: the Job fails once more indexes than this failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_indexes: Option<i32>,
    /// The shorthand for retries: `{onInfrastructureFailure, onFailure, onLost}`, rendered into
    /// the native fields (see docs/retries.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Set by `rerun?only=failed-indexes`: this run is one index of an Indexed run, and its pod
    /// sees `JOB_COMPLETION_INDEX` and the completion-index annotation of that index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_index: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
    /// A value read from a Secret or ConfigMap in the run's namespace instead of `value` (who
    /// may set this: `ALLOW_ENV_FROM_CLUSTER`; never in per-run overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

impl EnvVar {
    /// A literal variable.
    pub fn literal(name: impl Into<String>, value: impl Into<String>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
            value_from: None,
        }
    }
}

/// Compute resources, as Kubernetes quantities (`500m`, `2Gi`, `1` for `nvidia.com/gpu`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum CompletionMode {
    NonIndexed,
    Indexed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum RestartPolicy {
    Never,
    OnFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Equal` (default) or `Exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; empty matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

impl RunTemplate {
    /// A template with just an image and a command, everything else defaulted.
    pub fn new(image: impl Into<String>, command: Vec<String>) -> Self {
        RunTemplate {
            image: image.into(),
            command,
            args: Vec::new(),
            env: Vec::new(),
            env_from: Vec::new(),
            scratch: None,
            volumes: Vec::new(),
            volume_mounts: Vec::new(),
            working_dir: None,
            resources: None,
            completions: None,
            parallelism: None,
            completion_mode: None,
            backoff_limit: None,
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            restart_policy: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            namespace: None,
            service_account_name: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            queue_name: None,
            priority_class: None,
            pod_failure_policy: None,
            backoff_limit_per_index: None,
            max_failed_indexes: None,
            retry: None,
            completion_index: None,
        }
    }

    /// Whether the template reads anything from the cluster (`valueFrom`, `envFrom`, configMap
    /// and secret volumes): the fields `ALLOW_ENV_FROM_CLUSTER` governs, by path.
    pub fn cluster_env_fields(&self, at: &str) -> Vec<String> {
        let mut out: Vec<String> = (self.env.iter().enumerate())
            .filter(|(_, e)| e.value_from.is_some())
            .map(|(i, _)| format!("{at}.env[{i}].valueFrom"))
            .collect();
        if !self.env_from.is_empty() {
            out.push(format!("{at}.envFrom"));
        }
        for (i, volume) in self.volumes.iter().enumerate() {
            if volume.kinds().iter().any(|k| k.reads_the_cluster()) {
                out.push(format!("{at}.volumes[{i}]"));
            }
        }
        out
    }

    /// Characters an Indexed Job's pods add to its name in their hostname (`-<completions-1>`):
    /// the API server refuses a Job whose name plus this is not a 63-character DNS label
    /// (`ValidateJob` in kubernetes/kubernetes pkg/apis/batch/validation/validation.go).
    pub fn index_suffix_len(&self) -> usize {
        match (self.completion_mode, self.completions) {
            (Some(CompletionMode::Indexed), Some(c)) if c > 0 => 1 + (c - 1).to_string().len(),
            _ => 0,
        }
    }

    /// Applies per-run overrides: env vars replace those of the same name or are appended;
    /// labels are merged over the template's; a Kueue queue or priority class given replaces
    /// the template's.
    pub fn with_overrides(mut self, overrides: &crate::domain::RunOverrides) -> Self {
        if let Some(queue) = &overrides.queue_name {
            self.queue_name = Some(queue.clone());
        }
        if let Some(class) = &overrides.priority_class {
            self.priority_class = Some(class.clone());
        }
        for var in &overrides.env {
            match self.env.iter_mut().find(|e| e.name == var.name) {
                Some(existing) => *existing = var.clone(),
                None => self.env.push(var.clone()),
            }
        }
        for (key, value) in &overrides.labels {
            self.labels.insert(key.clone(), value.clone());
        }
        self
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::validation::Invalid;
    use serde_json::json;

    /// A small valid template with `extra` fields merged in (for other modules' tests too).
    pub(crate) fn template(extra: serde_json::Value) -> RunTemplate {
        let mut base = json!({"image": "perl:5.34.0", "command": ["perl", "-e", "1"]});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).expect("template parses")
    }

    /// The fields a check named, in order.
    pub(crate) fn fields(result: Result<(), Invalid>) -> Vec<String> {
        result
            .err()
            .map(|e| e.0.into_iter().map(|f| f.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn overrides_replace_env_by_name_and_merge_labels() {
        let t = template(json!({"env": [{"name": "A", "value": "1"}], "labels": {"x": "1"}}));
        let overrides = crate::domain::RunOverrides {
            env: vec![EnvVar::literal("A", "2"), EnvVar::literal("B", "3")],
            labels: [("y".to_string(), "2".to_string())].into(),
            ..Default::default()
        };
        let t = t.with_overrides(&overrides);
        assert_eq!(
            t.env,
            [EnvVar::literal("A", "2"), EnvVar::literal("B", "3")]
        );
        assert_eq!(t.labels.len(), 2);
    }

    #[test]
    fn unknown_template_fields_are_refused() {
        let parsed: Result<RunTemplate, _> =
            serde_json::from_value(json!({"image": "x", "privileged": true}));
        assert!(parsed
            .unwrap_err()
            .to_string()
            .contains("unknown field `privileged`"));
    }

    #[test]
    fn templates_cannot_ask_for_privileges_or_host_access() {
        for field in [
            json!({"privileged": true}),
            json!({"securityContext": {"privileged": true}}),
            json!({"hostNetwork": true}),
            json!({"hostPID": true}),
            json!({"hostIPC": true}),
            json!({"hostPath": "/"}),
            json!({"capabilities": {"add": ["SYS_ADMIN"]}}),
            json!({"runAsUser": 0}),
        ] {
            let mut body = json!({"image": "x"});
            body.as_object_mut()
                .unwrap()
                .extend(field.as_object().unwrap().clone());
            let parsed: Result<RunTemplate, _> = serde_json::from_value(body);
            assert!(
                parsed.unwrap_err().to_string().contains("unknown field"),
                "{field} was accepted"
            );
        }
    }
}
