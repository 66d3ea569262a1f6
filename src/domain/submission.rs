//! The front door for runs: a [`Submission`] can only be made by [`Submission::check`], which
//! validates the template and holds it to this installation's policy as it is today
//! (namespace and service-account allowlists, run limits with the task's overrides, sandbox).
//! Every way a run is started (the API, task runs, reruns, webhooks, schedules, backfills) builds
//! one, and `store::runs::submit` is the only code that records a run: it takes a `Submission`
//! and applies the [`Caps`].
//!
//! The door has two steps, so that nothing about a task is looked up for a caller who may not
//! start its runs: [`Origin::admit`] checks the caller's scope for the run's task (before the
//! task is loaded), and [`Submission::check`] takes only an [`Admitted`] origin. The launcher's
//! re-check right before a Job is created is [`Submission::allowed`], the check's second half.

use super::auth::{Caller, Denied, Scope};
use super::params::{self, ParamSpec, RunParams, SecretValue};
use super::policy::{RunLimits, RunPolicy};
use super::queue::{self, Concurrency, Keyed};
use super::{Invalid, RunTemplate, Trigger};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Where a submission comes from, apart from its template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The task, for a run of a task; `None` for an ad-hoc run.
    pub task: Option<String>,
    pub trigger: Trigger,
    pub rerun_of: Option<Uuid>,
    /// The scheduled time, for runs the schedule (or a backfill) started.
    pub scheduled_time: Option<DateTime<Utc>>,
    /// The API token that asked for the run (counted by the per-token cap on active runs).
    pub token_id: Option<Uuid>,
}

impl Origin {
    /// A run asked for through the API, of `task` (or ad hoc), by `token_id`.
    pub fn api(task: Option<&str>, token_id: Option<Uuid>) -> Origin {
        Origin {
            task: task.map(str::to_owned),
            trigger: Trigger::Api,
            rerun_of: None,
            scheduled_time: None,
            token_id,
        }
    }

    /// A run the schedule (or a backfill) starts for `time`.
    pub fn scheduled(task: &str, time: DateTime<Utc>) -> Origin {
        Origin {
            task: Some(task.to_owned()),
            trigger: Trigger::Schedule,
            rerun_of: None,
            scheduled_time: Some(time),
            token_id: None,
        }
    }
}

impl Origin {
    /// The front door's first step: `caller` may start runs of this origin's task (or ad-hoc
    /// runs, when it has none). `None` is the service itself (a schedule, a webhook delivery
    /// whose signature was checked).
    pub fn admit(self, caller: Option<&Caller>) -> Result<Admitted, Denied> {
        if let Some(caller) = caller {
            caller.require_task(Scope::Run, self.task.as_deref())?;
        }
        Ok(Admitted(self))
    }

    /// [`Origin::admit`] for the service itself, which needs no scope.
    pub fn by_service(self) -> Admitted {
        Admitted(self)
    }
}

/// An origin whose caller may start its run: what [`Submission::check`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted(Origin);

/// A run that passed validation and today's policy, ready to be recorded.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The run's id, chosen here so that what is made for the run before it is recorded (the
    /// Secret of its secret parameters) can be named after it.
    id: Uuid,
    origin: Origin,
    template: RunTemplate,
    /// The run's priority (0 unless [`Submission::queued`] says otherwise).
    priority: i32,
    /// The keyed queue it joins, for a run of a task with `concurrency`.
    keyed: Option<Keyed>,
    /// Its parameter values (secret ones as hashes), set by [`Submission::with_params`].
    params: RunParams,
    /// Its secret parameters' values: never recorded, only put into the run's Secret.
    secrets: BTreeMap<String, SecretValue>,
}

impl Submission {
    /// Validates `template` (at the JSON path `template`) and checks it against `policy` with
    /// the task's `task_limits`. Refused: every field at fault, named.
    pub fn check(
        policy: &RunPolicy,
        origin: Admitted,
        template: RunTemplate,
        task_limits: Option<&RunLimits>,
    ) -> Result<Submission, Invalid> {
        Submission::allowed(policy, &template, task_limits)?;
        // An ad-hoc run names its Secrets itself; by default only a task definition (an admin's)
        // may (docs/security.md, "Env from the cluster").
        if origin.0.task.is_none()
            && policy.sandbox.env_from_cluster == super::template::EnvFromCluster::Tasks
        {
            let mut errors = super::validation::Errors::new();
            for field in template.cluster_env_fields("template") {
                errors.add(
                    field,
                    "only a task definition may read Secrets and ConfigMaps (env or volumes) in this installation (ALLOW_ENV_FROM_CLUSTER=tasks); define a task, or ask an admin for ALLOW_ENV_FROM_CLUSTER=all",
                );
            }
            errors.finish()?;
        }
        Ok(Submission {
            id: Uuid::now_v7(),
            origin: origin.0,
            template,
            priority: 0,
            keyed: None,
            params: RunParams::new(),
            secrets: BTreeMap::new(),
        })
    }

    /// The parameter half of the front door, for a run of a task with `parameters`: `given`
    /// values checked against their definitions (refused naming `params.<name>`), defaults
    /// applied. The values reach the container when the Job is rendered, not through the
    /// template.
    pub fn with_params(
        mut self,
        specs: &[ParamSpec],
        given: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Submission, Invalid> {
        let resolved = params::resolve(specs, given)?;
        self.params = resolved.recorded;
        self.secrets = resolved.secrets;
        Ok(self)
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    /// What the run records of its parameters.
    pub fn params(&self) -> &RunParams {
        &self.params
    }

    /// The secret parameters' values, for the run's Secret.
    pub fn secrets(&self) -> &BTreeMap<String, SecretValue> {
        &self.secrets
    }

    /// The queueing half of the front door, for every run of a task: the run's key under the
    /// task's `concurrency` (refused, naming `concurrency.key`, when it renders empty or names
    /// what the run lacks) and its priority (`asked` per run, checked against what `scope` may
    /// set; `None` is the service itself, which takes the task's default).
    pub fn queued(
        mut self,
        concurrency: Option<&Concurrency>,
        task_priority: Option<i32>,
        asked: Option<i32>,
        scope: Option<Scope>,
    ) -> Result<Submission, Invalid> {
        self.priority = queue::priority_for(task_priority, asked, scope)?;
        if let (Some(concurrency), Some(task)) = (concurrency, self.origin.task.as_deref()) {
            self.keyed = Some(Keyed::of(concurrency, task, &self.template)?);
        }
        Ok(self)
    }

    pub fn priority(&self) -> i32 {
        self.priority
    }

    pub fn keyed(&self) -> Option<&Keyed> {
        self.keyed.as_ref()
    }

    /// Whether `template` may run under `policy` as it is now: valid, and within the
    /// allowlists, limits and sandbox. The second half of [`Submission::check`], and what the
    /// launcher asks again right before it creates a Job.
    pub fn allowed(
        policy: &RunPolicy,
        template: &RunTemplate,
        task_limits: Option<&RunLimits>,
    ) -> Result<(), Invalid> {
        template.validate("template")?;
        policy.check(template, task_limits, "template")
    }

    /// The same checked run for another scheduled time (a backfill checks its task's template
    /// once for all its times).
    pub fn for_scheduled_time(&self, time: DateTime<Utc>) -> Submission {
        let mut other = self.clone();
        other.id = Uuid::now_v7();
        other.origin.scheduled_time = Some(time);
        other
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn template(&self) -> &RunTemplate {
        &self.template
    }
}

/// How many runs may wait or be unfinished at once (0: no cap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// Queued runs a task may have (`MAX_QUEUED_RUNS_PER_TASK`).
    pub max_queued_runs_per_task: u32,
    /// Unfinished runs a token may have, unless its own `maxActiveRuns` says otherwise
    /// (`MAX_ACTIVE_RUNS_PER_TOKEN`).
    pub max_active_runs_per_token: u32,
}

/// A submission refused because a cap was reached; nothing was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapReached {
    #[error("task {task} already has {limit} queued runs")]
    QueueFull { task: String, limit: u32 },
    #[error("the token already has {limit} unfinished runs")]
    TooManyActiveRuns { limit: u32 },
    /// `maxWaiting` of the key: `depth` runs already wait on it.
    #[error("{depth} runs already wait on concurrency key {key:?} (maxWaiting {max_waiting})")]
    TooManyWaiting {
        key: String,
        depth: i64,
        max_waiting: i32,
    },
    /// Policy `Forbid`: the key has `active` unfinished runs, its limit.
    #[error("concurrency key {key:?} has {active} unfinished runs and its policy is Forbid")]
    Forbidden { key: String, active: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::tests::template;

    fn policy(namespaces: &[&str]) -> RunPolicy {
        RunPolicy {
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            service_accounts: vec!["default".into()],
            job_name_prefix: String::new(),
            limits: Default::default(),
            sandbox: Default::default(),
        }
    }

    #[test]
    fn a_submission_is_refused_naming_the_field_the_policy_forbids() {
        let t = template(serde_json::json!({"namespace": "batch"}));
        let origin = Origin::api(None, None).by_service();
        assert!(Submission::check(
            &policy(&["default", "batch"]),
            origin.clone(),
            t.clone(),
            None
        )
        .is_ok());
        let refused = Submission::check(&policy(&["default"]), origin, t, None).unwrap_err();
        assert_eq!(refused.0[0].field, "template.namespace");
    }

    /// Issue 18, ALLOW_ENV_FROM_CLUSTER=tasks (the default): a task's run may read a Secret,
    /// an ad-hoc run may not (naming the field); `all` lets it.
    #[test]
    fn only_task_runs_may_read_env_from_the_cluster_unless_the_installation_allows_all() {
        let t = template(serde_json::json!({
            "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}}]}));
        let mut p = policy(&["default"]);
        assert!(Submission::check(
            &p,
            Origin::api(Some("build"), None).by_service(),
            t.clone(),
            None
        )
        .is_ok());
        let refused = Submission::check(&p, Origin::api(None, None).by_service(), t.clone(), None)
            .unwrap_err();
        assert_eq!(refused.0[0].field, "template.env[0].valueFrom");
        p.sandbox.env_from_cluster = crate::domain::template::EnvFromCluster::All;
        assert!(
            Submission::check(&p, Origin::api(None, None).by_service(), t.clone(), None).is_ok()
        );
        p.sandbox.env_from_cluster = crate::domain::template::EnvFromCluster::None;
        let refused = Submission::check(&p, Origin::api(Some("build"), None).by_service(), t, None)
            .unwrap_err();
        assert_eq!(refused.0[0].field, "template.env[0].valueFrom");
    }

    /// Issue 18: a secret or configMap volume reads the cluster like env from it, so the same
    /// rule holds: with its kind allowed, a task's run may mount a Secret, an ad-hoc run may not.
    #[test]
    fn only_task_runs_may_mount_a_secret_under_the_env_from_cluster_rule() {
        let t = template(serde_json::json!({
            "volumes": [{"name": "creds", "secret": {"secretName": "db"}}]}));
        let mut p = policy(&["default"]);
        p.sandbox.volume_kinds =
            crate::domain::template::VolumeKinds::parse(&["secret".into()]).unwrap();
        assert!(Submission::check(
            &p,
            Origin::api(Some("build"), None).by_service(),
            t.clone(),
            None
        )
        .is_ok());
        let refused =
            Submission::check(&p, Origin::api(None, None).by_service(), t, None).unwrap_err();
        assert_eq!(refused.0[0].field, "template.volumes[0]");
    }

    #[test]
    fn an_invalid_template_is_refused_before_the_policy_is_asked() {
        let t = template(serde_json::json!({"image": ""}));
        let refused = Submission::check(
            &policy(&["default"]),
            Origin::api(None, None).by_service(),
            t,
            None,
        )
        .unwrap_err();
        assert_eq!(refused.0[0].field, "template.image");
    }

    #[test]
    fn a_token_limited_to_some_tasks_is_refused_at_the_door_for_others() {
        let caller = Caller {
            token_id: None,
            scope: Scope::Run,
            tasks: Some(vec!["a".into()]),
        };
        assert!(Origin::api(Some("a"), None).admit(Some(&caller)).is_ok());
        assert!(Origin::api(Some("b"), None).admit(Some(&caller)).is_err());
        assert!(Origin::api(None, None).admit(Some(&caller)).is_err());
        let reader = Caller {
            scope: Scope::Read,
            tasks: None,
            ..caller
        };
        assert!(Origin::api(Some("a"), None).admit(Some(&reader)).is_err());
        assert!(Origin::api(Some("b"), None).admit(None).is_ok());
    }
}
