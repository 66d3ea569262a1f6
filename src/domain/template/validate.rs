//! A template's validation as the Kubernetes API server would do it, so a bad template is refused
//! at submission rather than later in the cluster.

use super::quantity::{is_extended, parse_quantity};
use super::{
    CompletionMode, Resources, RunTemplate, Toleration, JOB_CONTROLLER_LABELS,
    KUEUE_PRIORITY_CLASS_LABEL, KUEUE_QUEUE_LABEL, RESERVED_PREFIX,
};
use crate::domain::names;
use crate::domain::validation::{Errors, Invalid};
use std::collections::BTreeMap;

/// Kubernetes caps Indexed Jobs at this many completions.
const MAX_INDEXED_COMPLETIONS: i32 = 100_000;
/// Kubernetes caps the total size of an object's annotations at 256 KiB.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

impl RunTemplate {
    /// Checks every field; `at` is the JSON path of the template in the request (e.g. `template`).
    pub fn validate(&self, at: &str) -> Result<(), Invalid> {
        let mut errors = Errors::new();
        self.collect_errors(at, &mut errors);
        errors.finish()
    }

    pub(crate) fn collect_errors(&self, at: &str, errors: &mut Errors) {
        let field = |name: &str| format!("{at}.{name}");

        if self.image.trim().is_empty() {
            errors.add(field("image"), "is required");
        } else if self
            .image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            errors.add(field("image"), "must not contain whitespace");
        }
        for (i, var) in self.env.iter().enumerate() {
            errors.check(
                format!("{at}.env[{i}].name"),
                names::env_var_name(&var.name),
            );
            if let Some(from) = &var.value_from {
                super::env_from::validate_value_from(
                    errors,
                    &format!("{at}.env[{i}]"),
                    &var.value,
                    from,
                );
            }
        }
        for (i, from) in self.env_from.iter().enumerate() {
            super::env_from::validate_env_from(errors, &format!("{at}.envFrom[{i}]"), from);
        }
        // Webhook deliveries put payload text into env values; PostgreSQL cannot store NUL.
        let texts = (self.command.iter().enumerate())
            .map(|(i, t)| (format!("{at}.command[{i}]"), t))
            .chain((self.args.iter().enumerate()).map(|(i, t)| (format!("{at}.args[{i}]"), t)))
            .chain(
                (self.env.iter().enumerate())
                    .map(|(i, v)| (format!("{at}.env[{i}].value"), &v.value)),
            )
            .chain(self.working_dir.iter().map(|t| (field("workingDir"), t)))
            .chain(
                self.annotations
                    .iter()
                    .map(|(k, v)| (format!("{at}.annotations.{k}"), v)),
            );
        for (path, text) in texts {
            if text.contains('\0') {
                errors.add(path, crate::domain::validation::NUL_MESSAGE);
            }
        }
        if let Some(dir) = &self.working_dir {
            if dir.is_empty() {
                errors.add(field("workingDir"), "must not be empty when given");
            }
        }
        if let Some(resources) = &self.resources {
            validate_resources(resources, &field("resources"), errors);
        }
        if let Some(scratch) = &self.scratch {
            super::env_from::validate_scratch(errors, &field("scratch"), scratch);
        }
        super::volumes::validate(
            errors,
            at,
            &self.volumes,
            &self.volume_mounts,
            self.scratch.is_some(),
        );

        non_negative(errors, &field("completions"), self.completions);
        non_negative(errors, &field("parallelism"), self.parallelism);
        non_negative(errors, &field("backoffLimit"), self.backoff_limit);
        non_negative(
            errors,
            &field("ttlSecondsAfterFinished"),
            self.ttl_seconds_after_finished,
        );
        if let Some(deadline) = self.active_deadline_seconds {
            if deadline <= 0 {
                errors.add(
                    field("activeDeadlineSeconds"),
                    format!("must be greater than 0 (is {deadline})"),
                );
            }
        }
        if let (Some(parallelism), Some(completions)) = (self.parallelism, self.completions) {
            if parallelism > completions && completions > 0 {
                errors.add(
                    field("parallelism"),
                    format!("must not exceed completions ({completions}); is {parallelism}"),
                );
            }
        }
        if self.completion_mode == Some(CompletionMode::Indexed) {
            match self.completions {
                None => errors.add(
                    field("completions"),
                    "is required when completionMode is Indexed",
                ),
                Some(c) if c > MAX_INDEXED_COMPLETIONS => errors.add(
                    field("completions"),
                    format!(
                        "must be at most {MAX_INDEXED_COMPLETIONS} when completionMode is Indexed"
                    ),
                ),
                _ => {}
            }
        }

        self.collect_failure_errors(at, errors);

        validate_labels(&self.labels, &field("labels"), errors);
        let mut annotation_bytes = 0;
        for (key, value) in &self.annotations {
            errors.check(
                format!("{at}.annotations.{key}"),
                names::qualified_name(key),
            );
            if key.starts_with(RESERVED_PREFIX) {
                errors.add(
                    format!("{at}.annotations.{key}"),
                    format!("keys under {RESERVED_PREFIX} are reserved for the service"),
                );
            }
            annotation_bytes += key.len() + value.len();
        }
        if annotation_bytes > MAX_ANNOTATIONS_BYTES {
            errors.add(
                field("annotations"),
                format!("total size must be at most {MAX_ANNOTATIONS_BYTES} bytes (is {annotation_bytes})"),
            );
        }
        if let Some(namespace) = &self.namespace {
            errors.check(field("namespace"), names::dns1123_label(namespace));
        }
        if let Some(account) = &self.service_account_name {
            errors.check(
                field("serviceAccountName"),
                names::dns1123_subdomain(account),
            );
        }
        for (key, value) in &self.node_selector {
            errors.check(
                format!("{at}.nodeSelector.{key}"),
                names::qualified_name(key),
            );
            errors.check(
                format!("{at}.nodeSelector.{key}"),
                names::label_value(value),
            );
        }
        for (i, toleration) in self.tolerations.iter().enumerate() {
            validate_toleration(toleration, &format!("{at}.tolerations[{i}]"), errors);
        }
        if let Some(queue) = &self.queue_name {
            errors.check(field("queueName"), names::kueue_name(queue));
        }
        if let Some(class) = &self.priority_class {
            errors.check(field("priorityClass"), names::kueue_name(class));
            if self.queue_name.is_none() {
                // Without a queue Kueue does not manage the Job, so the class would do nothing.
                errors.add(
                    field("priorityClass"),
                    "needs queueName: only a Job in a Kueue LocalQueue has a Workload to prioritize",
                );
            }
        }
    }
}

fn non_negative(errors: &mut Errors, field: &str, value: Option<i32>) {
    if let Some(v) = value {
        if v < 0 {
            errors.add(
                field,
                format!("must be greater than or equal to 0 (is {v})"),
            );
        }
    }
}

pub(crate) fn validate_labels(labels: &BTreeMap<String, String>, at: &str, errors: &mut Errors) {
    for (key, value) in labels {
        let path = format!("{at}.{key}");
        errors.check(path.clone(), names::qualified_name(key));
        errors.check(path.clone(), names::label_value(value));
        if key.starts_with(RESERVED_PREFIX) {
            errors.add(
                path,
                format!("keys under {RESERVED_PREFIX} are reserved for the service"),
            );
        } else if JOB_CONTROLLER_LABELS.contains(&key.as_str()) {
            errors.add(
                path,
                "is set by the Kubernetes Job controller; the API server refuses it in a Job's pod template",
            );
        } else if key == KUEUE_QUEUE_LABEL {
            errors.add(path, "is set from queueName; give queueName instead");
        } else if key == KUEUE_PRIORITY_CLASS_LABEL {
            errors.add(
                path,
                "is set from priorityClass; give priorityClass instead",
            );
        }
    }
}

fn validate_toleration(t: &Toleration, at: &str, errors: &mut Errors) {
    if let Some(key) = &t.key {
        errors.check(format!("{at}.key"), names::qualified_name(key));
    }
    match t.operator.as_deref() {
        None | Some("Equal") => {
            if t.key.is_none() {
                errors.add(format!("{at}.operator"), "must be Exists when key is empty");
            }
            if let Some(value) = &t.value {
                errors.check(format!("{at}.value"), names::label_value(value));
            }
        }
        Some("Exists") => {
            if t.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errors.add(
                    format!("{at}.value"),
                    "must be empty when operator is Exists",
                );
            }
        }
        Some(other) => errors.add(
            format!("{at}.operator"),
            format!("{other:?} is not supported; expected Equal or Exists"),
        ),
    }
    match t.effect.as_deref() {
        None | Some("") | Some("NoSchedule") | Some("PreferNoSchedule") | Some("NoExecute") => {}
        Some(other) => errors.add(
            format!("{at}.effect"),
            format!(
                "{other:?} is not supported; expected NoSchedule, PreferNoSchedule or NoExecute"
            ),
        ),
    }
    if t.toleration_seconds.is_some() && t.effect.as_deref() != Some("NoExecute") {
        errors.add(
            format!("{at}.tolerationSeconds"),
            "may only be set when effect is NoExecute",
        );
    }
}

fn validate_resources(resources: &Resources, at: &str, errors: &mut Errors) {
    let mut parsed = |kind: &str, map: &BTreeMap<String, String>| {
        let mut out = BTreeMap::new();
        for (name, quantity) in map {
            let path = format!("{at}.{kind}.{name}");
            if let Err(message) = resource_name(name) {
                errors.add(path, message);
                continue;
            }
            match parse_quantity(quantity) {
                Ok(value) if value < 0.0 => errors.add(path, "must not be negative"),
                Ok(value) => {
                    if is_extended(name) && value.fract() != 0.0 {
                        errors.add(path, "must be a whole number for an extended resource");
                    } else {
                        out.insert(name.clone(), value);
                    }
                }
                Err(message) => errors.add(path, message),
            }
        }
        out
    };
    let requests = parsed("requests", &resources.requests);
    let limits = parsed("limits", &resources.limits);
    for (name, request) in &requests {
        match limits.get(name) {
            Some(limit) if is_extended(name) && request != limit => errors.add(
                format!("{at}.requests.{name}"),
                "must equal the limit for an extended resource",
            ),
            Some(limit) if request > limit => errors.add(
                format!("{at}.requests.{name}"),
                format!(
                    "must be less than or equal to the {name} limit ({})",
                    resources.limits[name]
                ),
            ),
            None if is_extended(name) => errors.add(
                format!("{at}.limits.{name}"),
                "is required when an extended resource is requested",
            ),
            _ => {}
        }
    }
}

fn resource_name(name: &str) -> Result<(), String> {
    if matches!(name, "cpu" | "memory" | "ephemeral-storage") || name.starts_with("hugepages-") {
        return Ok(());
    }
    if name.contains('/') {
        return names::qualified_name(name);
    }
    Err(format!(
        "{name:?} is not a resource name: use cpu, memory, ephemeral-storage, hugepages-<size> or a domain-prefixed extended resource such as nvidia.com/gpu"
    ))
}

#[cfg(test)]
mod tests {
    use crate::domain::template::tests::{fields, template};
    use serde_json::json;

    #[test]
    fn the_calculatepi_template_is_valid() {
        let t = template(json!({}));
        assert_eq!(t.validate("template"), Ok(()));
    }

    #[test]
    fn negative_counts_are_refused_naming_the_field() {
        let t = template(json!({"parallelism": -1, "completions": -2, "backoffLimit": -3}));
        assert_eq!(
            fields(t.validate("template")),
            [
                "template.completions",
                "template.parallelism",
                "template.backoffLimit"
            ]
        );
    }

    #[test]
    fn parallelism_above_completions_is_refused() {
        let t = template(json!({"parallelism": 5, "completions": 2}));
        assert_eq!(fields(t.validate("template")), ["template.parallelism"]);
        let ok = template(json!({"parallelism": 5, "completions": 20}));
        assert_eq!(ok.validate("template"), Ok(()));
    }

    #[test]
    fn indexed_jobs_need_completions() {
        let t = template(json!({"completionMode": "Indexed"}));
        assert_eq!(fields(t.validate("template")), ["template.completions"]);
    }

    #[test]
    fn deadlines_must_be_positive() {
        let t = template(json!({"activeDeadlineSeconds": 0}));
        assert_eq!(
            fields(t.validate("template")),
            ["template.activeDeadlineSeconds"]
        );
    }

    #[test]
    fn bad_names_and_labels_are_refused() {
        let t = template(json!({
            "namespace": "Not_A_Namespace",
            "serviceAccountName": "-sa",
            "labels": {"ok": "fine", "bad key": "x", "app": "has space"},
            "env": [{"name": "GOOD", "value": "1"}, {"name": "9BAD"}],
            "nodeSelector": {"disk": "ssd!"}
        }));
        assert_eq!(
            fields(t.validate("template")),
            [
                "template.env[1].name",
                "template.labels.app",
                "template.labels.bad key",
                "template.namespace",
                "template.serviceAccountName",
                "template.nodeSelector.disk"
            ]
        );
    }

    #[test]
    fn reserved_label_keys_are_refused() {
        let t = template(json!({"labels": {"vfi-orchestrator.io/run-id": "x"}}));
        assert_eq!(
            fields(t.validate("template")),
            ["template.labels.vfi-orchestrator.io/run-id"]
        );
    }

    #[test]
    fn labels_the_job_controller_owns_are_refused() {
        let t = template(json!({"labels": {
            "job-name": "x", "controller-uid": "u",
            "batch.kubernetes.io/job-name": "x", "batch.kubernetes.io/controller-uid": "u",
            "batch.kubernetes.io/other": "fine"
        }}));
        assert_eq!(
            fields(t.validate("template")),
            [
                "template.labels.batch.kubernetes.io/controller-uid",
                "template.labels.batch.kubernetes.io/job-name",
                "template.labels.controller-uid",
                "template.labels.job-name"
            ]
        );
    }

    #[test]
    fn resources_are_checked_like_the_api_server() {
        let ok = template(json!({"resources": {
            "requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"},
            "limits": {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"}
        }}));
        assert_eq!(ok.validate("template"), Ok(()));

        let bad = template(json!({"resources": {
            "requests": {"cpu": "3", "memory": "lots", "gpu": "1", "nvidia.com/gpu": "1"},
            "limits": {"cpu": "2"}
        }}));
        assert_eq!(
            fields(bad.validate("template")),
            [
                "template.resources.requests.gpu",
                "template.resources.requests.memory",
                "template.resources.requests.cpu",
                "template.resources.limits.nvidia.com/gpu"
            ]
        );
    }

    #[test]
    fn tolerations_follow_the_operator_rules() {
        let t = template(json!({"tolerations": [
            {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"operator": "Equal", "value": "x"},
            {"key": "a", "operator": "Exists", "value": "x"},
            {"key": "b", "effect": "NoSchedule", "tolerationSeconds": 5},
            {"key": "c", "operator": "Maybe"}
        ]}));
        assert_eq!(
            fields(t.validate("template")),
            [
                "template.tolerations[1].operator",
                "template.tolerations[2].value",
                "template.tolerations[3].tolerationSeconds",
                "template.tolerations[4].operator"
            ]
        );
    }

    #[test]
    fn nul_in_free_text_is_refused_naming_the_field() {
        let t = template(json!({
            "command": ["sh", "a\u{0}"], "args": ["\u{0}"],
            "env": [{"name": "A", "value": "x\u{0}"}],
            "workingDir": "/\u{0}", "annotations": {"note": "\u{0}"}
        }));
        assert_eq!(
            fields(t.validate("template")),
            [
                "template.command[1]",
                "template.args[0]",
                "template.env[0].value",
                "template.workingDir",
                "template.annotations.note"
            ]
        );
    }
}
