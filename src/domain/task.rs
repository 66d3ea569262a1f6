//! Tasks: named, reusable run definitions (like a Jenkins job or a Kubernetes CronJob).

use super::names;
use super::params::{self, ParamSpec, ParamType};
use super::policy::RunLimits;
use super::queue::Concurrency;
use super::report::{NotifySpec, NotifyView};
use super::schedule::{self, CatchUpPolicy, ConcurrencyPolicy, Schedule};
use super::template::RunTemplate;
use super::validation::{Errors, Invalid};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use utoipa::ToSchema;

/// A task's name: a DNS-1123 label of at most 50 characters, so that `<name>-<run number>`
/// still fits the 63 characters a Job name may have.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskName(String);

pub const MAX_TASK_NAME: usize = 50;

impl TaskName {
    pub fn parse(value: impl Into<String>) -> Result<TaskName, String> {
        let value = value.into();
        names::dns1123_label(&value)?;
        if value.len() > MAX_TASK_NAME {
            return Err(format!(
                "must be no more than {MAX_TASK_NAME} characters (is {}), so run Job names fit Kubernetes' 63",
                value.len()
            ));
        }
        Ok(TaskName(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        TaskName::parse(value)
    }
}

impl From<TaskName> for String {
    fn from(name: TaskName) -> String {
        name.0
    }
}

impl fmt::Display for TaskName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client sends to create or replace a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskSpec {
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The Job template every run of the task starts from.
    pub template: RunTemplate,
    /// When the task runs on its own, and how much of its history is kept.
    #[serde(flatten)]
    pub schedule: ScheduleSpec,
    /// Limits on the size of this task's runs that replace the installation's, field by field
    /// (only admins define tasks). See the README's run limits.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::policy::limits_object"
    )]
    pub limits: Option<RunLimits>,
    /// Notifications of the task's finished runs, each POSTed (signed) to its receiver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifySpec>,
    /// How many runs of the task's key may be active at once, and what newer runs do (see the
    /// README's queues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// The default priority of the task's runs (-1000 to 1000, default 0): higher runs are
    /// admitted first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i32>,
    /// Typed parameters a run is started with (`params` of `POST /v1/tasks/{name}/runs`); the
    /// container sees each value as `VFI_PARAM_<NAME uppercased>`. See the README's parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ParamSpec>,
}

/// When a task runs on its own, and how much of its history is kept (a Kubernetes CronJob's
/// fields, plus a catch-up policy), flattened into [`TaskSpec`] and [`Task`]. Every field is optional; absent
/// fields are not stored, so tasks without a schedule look exactly as before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// A 5-field cron expression (minute hour day-of-month month day-of-week), or @yearly,
    /// @annually, @monthly, @weekly, @daily, @midnight, @hourly. See docs/schedules.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The IANA time zone the schedule is read in (default UTC), e.g. `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What a scheduled time does while a run of the task is active (default Allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// A scheduled time reached later than this many seconds does not start a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub starting_deadline_seconds: Option<i64>,
    /// While true, scheduled times are skipped (and recorded as such).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Which missed scheduled times still start a run after a downtime (default latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_policy: Option<CatchUpPolicy>,
    /// With catch-up policy `all`: the most runs one catch-up starts (1 to 100, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_catch_up_runs: Option<u32>,
    /// Succeeded runs of the task to keep (default 3 for a scheduled task; without a schedule
    /// and without this field, all are kept up to the global limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub successful_runs_history_limit: Option<i32>,
    /// Failed (also cancelled and lost) runs of the task to keep (default 1 for a scheduled
    /// task; as above otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub failed_runs_history_limit: Option<i32>,
    /// Parameter values the schedule's (and backfills') runs start with, checked against the
    /// task's `parameters` like a run's `params` (secret parameters cannot be given here: the
    /// value would be stored with the task).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub schedule_params: BTreeMap<String, serde_json::Value>,
}

/// CronJob's defaults for `successfulJobsHistoryLimit` and `failedJobsHistoryLimit`.
pub const DEFAULT_SUCCESSFUL_HISTORY: i32 = 3;
pub const DEFAULT_FAILED_HISTORY: i32 = 1;

impl ScheduleSpec {
    /// The parsed schedule, if the task has one. Only call on a validated spec.
    pub fn parsed(&self) -> Option<Result<Schedule, schedule::ScheduleError>> {
        self.schedule
            .as_deref()
            .map(|expression| Schedule::parse(expression, self.time_zone.as_deref()))
    }

    pub fn fire_policy(&self) -> schedule::FirePolicy {
        schedule::FirePolicy {
            catch_up: self.catch_up_policy.unwrap_or_default(),
            max_catch_up_runs: self
                .max_catch_up_runs
                .unwrap_or(schedule::DEFAULT_CATCH_UP_RUNS),
            starting_deadline: self
                .starting_deadline_seconds
                .map(chrono::Duration::seconds),
            suspended: self.suspend.unwrap_or(false),
        }
    }

    /// How many succeeded and failed runs to keep, if the task limits its history.
    pub fn history_limits(&self) -> Option<(i32, i32)> {
        let limited = self.schedule.is_some()
            || self.successful_runs_history_limit.is_some()
            || self.failed_runs_history_limit.is_some();
        limited.then(|| {
            (
                self.successful_runs_history_limit
                    .unwrap_or(DEFAULT_SUCCESSFUL_HISTORY),
                self.failed_runs_history_limit
                    .unwrap_or(DEFAULT_FAILED_HISTORY),
            )
        })
    }

    fn collect_errors(&self, errors: &mut Errors) {
        if let Some(Err(error)) = self.parsed() {
            errors.add(error.field, error.message);
        } else if let (None, Some(zone)) = (&self.schedule, &self.time_zone) {
            if zone.parse::<chrono_tz::Tz>().is_err() {
                errors.add(
                    "timeZone",
                    format!("{zone:?} is not an IANA time zone name (e.g. Europe/Berlin)"),
                );
            }
        }
        if self.starting_deadline_seconds.is_some_and(|s| s < 0) {
            errors.add("startingDeadlineSeconds", "must be 0 or more");
        }
        if self
            .max_catch_up_runs
            .is_some_and(|n| n == 0 || n > schedule::MAX_CATCH_UP_RUNS)
        {
            errors.add(
                "maxCatchUpRuns",
                format!("must be 1 to {}", schedule::MAX_CATCH_UP_RUNS),
            );
        }
        if self.successful_runs_history_limit.is_some_and(|n| n < 0) {
            errors.add("successfulRunsHistoryLimit", "must be 0 or more");
        }
        if self.failed_runs_history_limit.is_some_and(|n| n < 0) {
            errors.add("failedRunsHistoryLimit", "must be 0 or more");
        }
    }
}

impl TaskSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errors = Errors::new();
        if let Some(description) = &self.description {
            if description.len() > 4096 {
                errors.add("description", "must be at most 4096 bytes");
            }
        }
        self.template.collect_errors("template", &mut errors);
        self.schedule.collect_errors(&mut errors);
        if let Some(limits) = &self.limits {
            limits.collect_errors("limits", &mut errors);
        }
        super::report::check_notify(&self.notify, &mut errors);
        if let Some(concurrency) = &self.concurrency {
            concurrency.collect_errors("concurrency", &mut errors);
        }
        super::queue::collect_priority_errors(self.priority, "priority", &mut errors);
        let before = errors.len();
        params::collect_definition_errors(&self.parameters, "parameters", &mut errors);
        if errors.len() == before {
            self.collect_schedule_params_errors(&mut errors);
        }
        errors.finish()
    }

    /// The schedule's parameter values must be ones a run may start with, and name no secret.
    fn collect_schedule_params_errors(&self, errors: &mut Errors) {
        let given = &self.schedule.schedule_params;
        for spec in &self.parameters {
            if spec.kind == ParamType::Secret && given.contains_key(&spec.name) {
                errors.add(
                    format!("scheduleParams.{}", spec.name),
                    "a secret parameter cannot be set by the schedule (it would be stored with the task)",
                );
            } else if spec.kind == ParamType::Secret
                && spec.required
                && self.schedule.schedule.is_some()
            {
                // Every scheduled time would be refused: say so now.
                errors.add(
                    format!("scheduleParams.{}", spec.name),
                    "the schedule cannot give a required secret parameter: make it optional or remove the schedule",
                );
            }
        }
        let public: Vec<ParamSpec> = self
            .parameters
            .iter()
            .filter(|s| s.kind != ParamType::Secret)
            .cloned()
            .collect();
        let given: BTreeMap<_, _> = given
            .iter()
            .filter(|(name, _)| {
                !self
                    .parameters
                    .iter()
                    .any(|s| s.kind == ParamType::Secret && &s.name == *name)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.schedule.schedule.is_none() && given.is_empty() {
            return;
        }
        if let Err(refused) = params::resolve(&public, &given) {
            for error in refused.0 {
                let field = error.field.replacen("params.", "scheduleParams.", 1);
                errors.add(field, error.message);
            }
        }
    }
}

/// A stored task, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub template: RunTemplate,
    #[serde(flatten)]
    pub schedule: ScheduleSpec,
    /// Where the schedule stands (only on `GET /v1/tasks/{name}` of a scheduled task).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_status: Option<schedule::ScheduleStatus>,
    /// Increases each time the definition changes.
    pub generation: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The task's own run limits, when an admin set some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<RunLimits>,
    /// The task's notifications (their secrets are never shown).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// The default priority of the task's runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// The task's typed parameters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ParamSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_leave_room_for_the_run_number() {
        assert!(TaskName::parse("nightly-render").is_ok());
        assert!(TaskName::parse("a".repeat(50)).is_ok());
        assert!(TaskName::parse("a".repeat(51)).is_err());
        assert!(TaskName::parse("Nightly").is_err());
    }

    #[test]
    fn schedule_params_are_checked_against_the_parameters_and_never_give_a_secret() {
        let spec = |extra: serde_json::Value| {
            let mut body = serde_json::json!({
                "template": {"image": "x"}, "schedule": "@daily",
                "parameters": [
                    {"name": "target", "type": "enum", "enum": ["dev", "nightly"], "required": true},
                    {"name": "token", "type": "secret"}
                ]
            });
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<TaskSpec>(body).unwrap()
        };
        let fields = |spec: TaskSpec| -> Vec<String> {
            spec.validate()
                .err()
                .map(|e| e.0.into_iter().map(|f| f.field).collect())
                .unwrap_or_default()
        };
        assert_eq!(
            fields(spec(serde_json::json!({}))),
            ["scheduleParams.target"]
        );
        assert!(fields(spec(
            serde_json::json!({"scheduleParams": {"target": "nightly"}})
        ))
        .is_empty());
        assert_eq!(
            fields(spec(
                serde_json::json!({"scheduleParams": {"target": "nightly", "token": "x"}})
            )),
            ["scheduleParams.token"]
        );
        let mut required_secret = spec(serde_json::json!({"scheduleParams": {"target": "dev"}}));
        required_secret.parameters[1].required = true;
        assert_eq!(fields(required_secret), ["scheduleParams.token"]);
    }

    #[test]
    fn schedule_fields_sit_beside_the_template_and_unknown_fields_are_still_refused() {
        let body = serde_json::json!({
            "template": {"image": "x"}, "schedule": "@daily", "timeZone": "Europe/Berlin",
            "suspend": true
        });
        let spec: TaskSpec = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(spec.schedule.schedule.as_deref(), Some("@daily"));
        assert_eq!(spec.schedule.suspend, Some(true));
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            body,
            "the same JSON back"
        );
        let mut unknown = body;
        unknown["schedul"] = "@hourly".into();
        let error = serde_json::from_value::<TaskSpec>(unknown).unwrap_err();
        assert!(error.to_string().contains("schedul"), "{error}");
    }
}
