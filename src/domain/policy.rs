//! What a run template may ask of the cluster in this installation: the namespaces and service
//! accounts it may use, and how big one run may be ([`RunLimits`]: completions, parallelism,
//! pods, resources, deadline), from the configuration, with per-task overrides an admin sets.
//! Checked at submission, so a run that could never be launched, or that would take the
//! cluster, is refused with a clear error naming the field instead of failing later.

use super::sandbox::Sandbox;
use super::template::parse_quantity;
use super::validation::{Errors, Invalid};
use super::RunTemplate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Deserializes optional run limits from a JSON object only: serde's derived struct
/// deserialization also takes an array of the fields in order, so `"limits": [null, null]`
/// would otherwise pass as no limits at all. Object keys keep their paths in errors.
pub fn limits_object<'de, D>(deserializer: D) -> Result<Option<RunLimits>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct ObjectOnly;
    impl<'de> serde::de::Visitor<'de> for ObjectOnly {
        type Value = Option<RunLimits>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of run limits")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            RunLimits::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    deserializer.deserialize_option(ObjectOnly)
}

/// Kubernetes' default `backoffLimit`: pods a Job may add after failures when none is given.
/// <https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-backoff-failure-policy>
const DEFAULT_BACKOFF_LIMIT: i64 = 6;

#[derive(Debug, Clone)]
pub struct RunPolicy {
    /// Namespaces runs may use; the first is where runs go when they name none.
    pub namespaces: Vec<String>,
    /// Service accounts runs may use (`default` is what a run without one gets).
    pub service_accounts: Vec<String>,
    /// Prepended to every Job name (`JOB_NAME_PREFIX`).
    pub job_name_prefix: String,
    /// How big one run may be here (a task's `limits` replace these field by field).
    pub limits: RunLimits,
    /// The annotations, tolerations and node selectors runs may use.
    pub sandbox: Sandbox,
}

/// How big one run may be. In the configuration 0 (or a quantity of 0) means no limit; as a
/// task's `limits`, set by an admin, each field given replaces the installation's for that
/// task's runs (and 0 lifts that limit), fields left out keep it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunLimits {
    /// Most `completions` one run may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_completions: Option<i32>,
    /// Most `parallelism` (pods at once) one run may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_parallelism: Option<i32>,
    /// Most pods one run may create in all: its completions (or parallelism, for a work queue
    /// without completions) plus its `backoffLimit` (Kubernetes' default 6 when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_pods: Option<i64>,
    /// Most CPU one container may request or be limited to, as a quantity (`16`, `500m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu: Option<String>,
    /// Most memory one container may request or be limited to, as a quantity (`64Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<String>,
    /// Most units of any one extended resource (GPUs such as `nvidia.com/gpu`) per container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_extended_resource: Option<i64>,
    /// Largest `activeDeadlineSeconds` one run may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub max_active_deadline_seconds: Option<i64>,
}

impl RunLimits {
    /// These limits with every field `over` gives replacing ours.
    pub fn overridden_by(&self, over: Option<&RunLimits>) -> RunLimits {
        let Some(over) = over else {
            return self.clone();
        };
        RunLimits {
            max_completions: over.max_completions.or(self.max_completions),
            max_parallelism: over.max_parallelism.or(self.max_parallelism),
            max_pods: over.max_pods.or(self.max_pods),
            max_cpu: over.max_cpu.clone().or_else(|| self.max_cpu.clone()),
            max_memory: over.max_memory.clone().or_else(|| self.max_memory.clone()),
            max_extended_resource: over.max_extended_resource.or(self.max_extended_resource),
            max_active_deadline_seconds: over
                .max_active_deadline_seconds
                .or(self.max_active_deadline_seconds),
        }
    }

    /// Checks the limits themselves (as a task's `limits`, or from the configuration).
    pub fn collect_errors(&self, at: &str, errors: &mut Errors) {
        let field = |name: &str| format!("{at}.{name}");
        for (name, value) in [
            ("maxCompletions", self.max_completions.map(i64::from)),
            ("maxParallelism", self.max_parallelism.map(i64::from)),
            ("maxPods", self.max_pods),
            ("maxExtendedResource", self.max_extended_resource),
            ("maxActiveDeadlineSeconds", self.max_active_deadline_seconds),
        ] {
            if value.is_some_and(|v| v < 0) {
                errors.add(field(name), "must be 0 (no limit) or more");
            }
        }
        for (name, value) in [("maxCpu", &self.max_cpu), ("maxMemory", &self.max_memory)] {
            if let Some(text) = value {
                match parse_quantity(text) {
                    Ok(v) if v < 0.0 => errors.add(field(name), "must not be negative"),
                    Ok(_) => {}
                    Err(message) => errors.add(field(name), message),
                }
            }
        }
    }

    /// Adds an error for each field of `template` beyond these limits.
    pub fn check(&self, template: &RunTemplate, at: &str, errors: &mut Errors) {
        let beyond = |errors: &mut Errors,
                      name: &str,
                      value: i64,
                      max: Option<i64>,
                      limit: &str| {
            if let Some(max) = max.filter(|m| *m > 0) {
                if value > max {
                    errors.add(
                        format!("{at}.{name}"),
                        format!(
                            "must be at most {max} in this installation (is {value}); the limit is {limit}, which an admin may raise for a task with its `limits.{limit}`"
                        ),
                    );
                }
            }
        };
        let before = errors.len();
        if let Some(completions) = template.completions {
            let max = self.max_completions.map(i64::from);
            beyond(
                errors,
                "completions",
                completions.into(),
                max,
                "maxCompletions",
            );
        }
        if let Some(parallelism) = template.parallelism {
            let max = self.max_parallelism.map(i64::from);
            beyond(
                errors,
                "parallelism",
                parallelism.into(),
                max,
                "maxParallelism",
            );
        }
        let first = i64::from(template.completions.or(template.parallelism).unwrap_or(1));
        let retries = template
            .backoff_limit
            .map_or(DEFAULT_BACKOFF_LIMIT, i64::from);
        let (name, pods) = if template.backoff_limit.is_some() {
            ("backoffLimit", first.saturating_add(retries))
        } else if template.completions.is_some() {
            ("completions", first.saturating_add(retries))
        } else {
            ("parallelism", first.saturating_add(retries))
        };
        // Total pods only when each count alone is within its limit: one error per field.
        if errors.len() == before {
            beyond(errors, name, pods, self.max_pods, "maxPods");
        }
        if let Some(deadline) = template.active_deadline_seconds {
            let max = self.max_active_deadline_seconds;
            beyond(
                errors,
                "activeDeadlineSeconds",
                deadline,
                max,
                "maxActiveDeadlineSeconds",
            );
        }
        if let Some(resources) = &template.resources {
            for (kind, map) in [
                ("requests", &resources.requests),
                ("limits", &resources.limits),
            ] {
                for (name, quantity) in map {
                    let Ok(value) = parse_quantity(quantity) else {
                        continue; // the template's own validation names it
                    };
                    let (max, limit) = match name.as_str() {
                        "cpu" => (self.max_cpu.as_deref(), "maxCpu"),
                        "memory" => (self.max_memory.as_deref(), "maxMemory"),
                        _ if super::template::is_extended(name) => {
                            let max = self.max_extended_resource.filter(|m| *m > 0);
                            if let Some(max) = max {
                                if value > max as f64 {
                                    errors.add(
                                        format!("{at}.resources.{kind}.{name}"),
                                        format!(
                                            "must be at most {max} in this installation (is {quantity}); the limit is maxExtendedResource, which an admin may raise for a task with its `limits.maxExtendedResource`"
                                        ),
                                    );
                                }
                            }
                            continue;
                        }
                        _ => continue,
                    };
                    let Some(max_text) = max else { continue };
                    let Ok(max_value) = parse_quantity(max_text) else {
                        continue;
                    };
                    if max_value > 0.0 && value > max_value {
                        errors.add(
                            format!("{at}.resources.{kind}.{name}"),
                            format!(
                                "must be at most {max_text} in this installation (is {quantity}); the limit is {limit}, which an admin may raise for a task with its `limits.{limit}`"
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Kubernetes names that become hostnames are DNS labels of at most 63 characters.
const MAX_HOSTNAME: usize = 63;
/// The widest run number (an i64) with its dash, so the check holds for every future run.
const MAX_RUN_SUFFIX: usize = 1 + 19;

impl RunPolicy {
    /// Checks `template` against this installation's allowlists and limits; `task_limits` are
    /// the task's overrides, for a run of a task.
    pub fn check(
        &self,
        template: &RunTemplate,
        task_limits: Option<&RunLimits>,
        at: &str,
    ) -> Result<(), Invalid> {
        let mut errors = Errors::new();
        if let Some(namespace) = &template.namespace {
            if !self.namespaces.iter().any(|n| n == namespace) {
                errors.add(
                    format!("{at}.namespace"),
                    format!(
                        "{namespace:?} is not a namespace runs may use here; allowed: {}",
                        self.namespaces.join(", ")
                    ),
                );
            }
        }
        let account = template
            .service_account_name
            .as_deref()
            .unwrap_or("default");
        if !self.service_accounts.iter().any(|a| a == account) {
            errors.add(
                format!("{at}.serviceAccountName"),
                format!(
                    "{account:?} is not a service account runs may use here; allowed: {}",
                    self.service_accounts.join(", ")
                ),
            );
        }
        // The Job name shortens the task part to fit, down to one character; an Indexed Job's
        // pods then add `-<index>` for their hostname, which must still fit.
        let shortest =
            self.job_name_prefix.len() + 1 + MAX_RUN_SUFFIX + template.index_suffix_len();
        if template.index_suffix_len() > 0 && shortest > MAX_HOSTNAME {
            errors.add(
                format!("{at}.completions"),
                format!(
                    "an Indexed Job's name plus \"-<completions-1>\" must be a DNS label of at most {MAX_HOSTNAME} characters; with the Job name prefix {:?} there is no room for this many completions",
                    self.job_name_prefix
                ),
            );
        }
        self.limits
            .overridden_by(task_limits)
            .check(template, at, &mut errors);
        self.sandbox.check(template, at, &mut errors);
        errors.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::tests::{fields, template};

    fn policy() -> RunPolicy {
        RunPolicy {
            namespaces: vec!["batch".into(), "render".into()],
            service_accounts: vec!["default".into(), "runner".into()],
            job_name_prefix: String::new(),
            limits: RunLimits::default(),
            sandbox: Sandbox::default(),
        }
    }

    #[test]
    fn namespaces_and_accounts_outside_the_allowlist_are_refused() {
        let mut template = RunTemplate::new("x", vec![]);
        assert!(policy().check(&template, None, "template").is_ok());
        template.namespace = Some("kube-system".into());
        template.service_account_name = Some("cluster-admin".into());
        let fields: Vec<String> = policy()
            .check(&template, None, "template")
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["template.namespace", "template.serviceAccountName"]
        );
        template.namespace = Some("render".into());
        template.service_account_name = Some("runner".into());
        assert!(policy().check(&template, None, "template").is_ok());
    }

    fn installation() -> RunLimits {
        RunLimits {
            max_completions: Some(1000),
            max_parallelism: Some(100),
            max_pods: Some(1100),
            max_cpu: Some("16".into()),
            max_memory: Some("64Gi".into()),
            max_extended_resource: Some(8),
            max_active_deadline_seconds: Some(3600),
        }
    }

    fn refused(limits: &RunLimits, extra: serde_json::Value) -> Vec<String> {
        let mut errors = Errors::new();
        limits.check(&template(extra), "template", &mut errors);
        fields(errors.finish())
    }

    #[test]
    fn each_size_limit_is_enforced_naming_its_field() {
        let limits = installation();
        let none: Vec<String> = Vec::new();
        assert_eq!(
            refused(
                &limits,
                serde_json::json!({"completions": 1000, "parallelism": 100})
            ),
            none
        );
        assert_eq!(
            refused(
                &limits,
                serde_json::json!({"completions": 1001, "backoffLimit": 0})
            ),
            ["template.completions"]
        );
        assert_eq!(
            refused(
                &limits,
                serde_json::json!({"parallelism": 101, "completions": 200})
            ),
            ["template.parallelism"]
        );
        assert_eq!(
            refused(&limits, serde_json::json!({"activeDeadlineSeconds": 3601})),
            ["template.activeDeadlineSeconds"]
        );
        assert_eq!(
            refused(
                &limits,
                serde_json::json!({"resources": {
                    "requests": {"cpu": "17", "memory": "65Gi", "nvidia.com/gpu": "9"},
                    "limits": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "9"}
                }})
            ),
            [
                "template.resources.requests.cpu",
                "template.resources.requests.memory",
                "template.resources.requests.nvidia.com/gpu",
                "template.resources.limits.nvidia.com/gpu"
            ]
        );
    }

    #[test]
    fn total_pods_count_completions_and_retries() {
        let limits = installation();
        // 1000 completions + Kubernetes' default backoffLimit of 6 fit in 1100 pods...
        assert!(refused(&limits, serde_json::json!({"completions": 1000})).is_empty());
        // ...but not with 101 retries.
        assert_eq!(
            refused(
                &limits,
                serde_json::json!({"completions": 1000, "backoffLimit": 101})
            ),
            ["template.backoffLimit"]
        );
        // A work queue (parallelism, no completions) counts its parallelism.
        let tight = RunLimits {
            max_pods: Some(10),
            ..installation()
        };
        assert_eq!(
            refused(&tight, serde_json::json!({"parallelism": 5})),
            ["template.parallelism"]
        );
    }

    #[test]
    fn the_issue_s_unbounded_job_is_refused() {
        let fields = refused(
            &installation(),
            serde_json::json!({"parallelism": 300, "completions": 2147483647}),
        );
        assert_eq!(fields, ["template.completions", "template.parallelism"]);
    }

    #[test]
    fn a_task_s_limits_replace_the_installation_s_field_by_field() {
        let task = RunLimits {
            max_completions: Some(5000),
            max_pods: Some(0),
            ..Default::default()
        };
        let merged = installation().overridden_by(Some(&task));
        assert_eq!(merged.max_completions, Some(5000));
        assert_eq!(merged.max_parallelism, Some(100));
        assert!(refused(&merged, serde_json::json!({"completions": 5000})).is_empty());
        assert_eq!(installation().overridden_by(None), installation());
    }

    #[test]
    fn zero_means_no_limit() {
        let off = RunLimits {
            max_completions: Some(0),
            max_parallelism: Some(0),
            max_pods: Some(0),
            max_cpu: Some("0".into()),
            max_memory: Some("0".into()),
            max_extended_resource: Some(0),
            max_active_deadline_seconds: Some(0),
        };
        assert!(refused(
            &off,
            serde_json::json!({
                "completions": 100000, "parallelism": 100000, "activeDeadlineSeconds": 99999999,
                "resources": {"limits": {"cpu": "1000", "nvidia.com/gpu": "100"}}
            })
        )
        .is_empty());
    }

    #[test]
    fn limits_themselves_are_validated() {
        let bad = RunLimits {
            max_pods: Some(-1),
            max_cpu: Some("lots".into()),
            ..Default::default()
        };
        let mut errors = Errors::new();
        bad.collect_errors("limits", &mut errors);
        let fields: Vec<String> = errors
            .finish()
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["limits.maxPods", "limits.maxCpu"]);
    }

    #[test]
    fn indexed_jobs_whose_hostnames_cannot_fit_are_refused_on_completions() {
        let mut template: RunTemplate = serde_json::from_value(serde_json::json!({
            "image": "x", "completionMode": "Indexed", "completions": 100000
        }))
        .unwrap();
        assert!(policy().check(&template, None, "template").is_ok());
        let mut long_prefix = policy();
        long_prefix.job_name_prefix = "a-very-long-installation-prefix-1234-".into();
        let err = long_prefix.check(&template, None, "template").unwrap_err();
        assert_eq!(err.0[0].field, "template.completions");
        template.completions = Some(10);
        assert!(long_prefix.check(&template, None, "template").is_ok());
    }
}
