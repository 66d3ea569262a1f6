//! Runs: one execution of a task (or an ad-hoc template), which becomes exactly one Kubernetes Job.

use super::template::{validate_labels, EnvVar};
use super::validation::{Errors, Invalid};
use super::{names, RunTemplate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Trigger {
    /// A client called the API.
    Api,
    /// A client asked to run an earlier run again.
    Rerun,
    /// The task's schedule.
    Schedule,
    /// A Git host's webhook.
    Webhook,
}

/// Per-run changes to a task's template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunOverrides {
    /// Environment variables set on top of the task's (same name replaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Labels merged over the task's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// This run's priority instead of the task's default (-1000 to 1000): a token below
    /// `admin` may ask for at most the task's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i32>,
    /// A Kueue LocalQueue for this run, replacing the task's `queueName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// A Kueue WorkloadPriorityClass for this run, replacing the task's `priorityClass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    /// Values of the task's parameters, by name: checked against their definitions (422 naming
    /// `params.<name>`), defaults applied. JSON strings are also accepted for integer and
    /// boolean parameters (`"3"`, `"true"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object, example = json!({"target": "staging"}))]
    pub params: BTreeMap<String, serde_json::Value>,
}

impl RunOverrides {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errors = Errors::new();
        for (i, var) in self.env.iter().enumerate() {
            errors.check(format!("env[{i}].name"), names::env_var_name(&var.name));
            if var.value_from.is_some() {
                // Overrides are literal: a run token must not redirect a task's env to other
                // Secrets (docs/security.md, "Env from the cluster").
                errors.add(
                    format!("env[{i}].valueFrom"),
                    "per-run overrides set literal values only; valueFrom belongs in the task definition",
                );
            }
        }
        validate_labels(&self.labels, "labels", &mut errors);
        super::queue::collect_priority_errors(self.priority, "priority", &mut errors);
        if let Some(queue) = &self.queue_name {
            errors.check("queueName", names::kueue_name(queue));
        }
        if let Some(class) = &self.priority_class {
            errors.check("priorityClass", names::kueue_name(class));
        }
        errors.finish()
    }
}

/// An ad-hoc run: a template given inline, like `kubectl create job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdHocRun {
    pub template: RunTemplate,
    /// The run's priority (-1000 to 1000, default 0): a token below `admin` may ask for at most
    /// 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i32>,
}

impl AdHocRun {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.template.validate("template")
    }
}

/// A run, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: uuid::Uuid,
    /// Sequential per task (Jenkins' build number); ad-hoc runs share their own sequence.
    pub number: i64,
    /// The task it belongs to; absent for ad-hoc runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub status: super::RunStatus,
    /// Machine-readable cause of the status (e.g. `BackoffLimitExceeded`); while `pending`, why
    /// the run cannot start (`ImagePullBackOff`, `Unschedulable`, `FailedCreate`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Human-readable detail of the status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    pub trigger: Trigger,
    /// The run this one re-runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<uuid::Uuid>,
    /// The template the Job is built from: the task's template with this run's overrides.
    pub template: RunTemplate,
    pub labels: BTreeMap<String, String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How launching the Job went: attempts, the last error, the next try.
    pub launch: LaunchInfo,
    /// The run's Job, once created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRef>,
    /// The Job's pod counts, as its status last reported them.
    pub pods: PodCounts,
    /// The scheduled time this run was started for (trigger `schedule`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Where the run's status is reported on its Git host, and how that went (on
    /// `GET /v1/runs/{id}` of a run started by a reporting webhook trigger).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<super::report::RunReport>,
    /// Higher runs are admitted first (equal ones in submission order, with aging).
    pub priority: i32,
    /// The concurrency key the run counts against (its task's `concurrency`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_key: Option<String>,
    /// The limit of its key when it was submitted (the admission reads it; not shown).
    #[serde(skip)]
    pub queue_limit: Option<i32>,
    /// Why a `queued` run waits and where it stands (on `GET /v1/runs/{id}` and in `GET /v1/runs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<super::queue::QueueState>,
    /// The newer run of its key that cancelled this one (reason `Superseded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<uuid::Uuid>,
    /// The parameter values the run was started with (its task's defaults applied); secret
    /// values show as `***` (only their SHA-256 is kept).
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "super::params::serialize_shown"
    )]
    #[schema(value_type = Object, example = json!({"target": "staging", "token": "***"}))]
    pub params: super::params::RunParams,
    /// Set on a run the service resubmitted because the run it reruns (`rerunOf`) was lost
    /// (`retry.onLost`): `Retried: <why the original was lost>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_reason: Option<String>,
}

/// Launch bookkeeping, so a run waiting in `queued` or `creating` says why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaunchInfo {
    /// Attempts to create the Job so far.
    pub attempts: i32,
    /// Why the last attempt did not create the Job (e.g. the cluster was unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the launcher will try again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the queue let the run through to the launcher (its key and the installation had a
    /// free slot). `MAX_QUEUE_WAIT_SECS` counts from then for a run held by a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where the run's Job is.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// Pod counts of a Job, as in its status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodCounts {
    pub active: i32,
    pub ready: i32,
    pub succeeded: i32,
    pub failed: i32,
}

/// One pod of a run, as last seen in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub name: String,
    pub uid: String,
    /// The pod's completion index, for Indexed Jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_index: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Pending, Running, Succeeded, Failed or Unknown.
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the container is waiting or terminated (e.g. `Completed`, `Error`, `OOMKilled`), or
    /// why the pod failed (e.g. `Evicted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub restarts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The pod no longer exists in the cluster.
    pub deleted: bool,
}
