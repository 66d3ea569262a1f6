//! How a run's pod failures are handled: batch/v1 `podFailurePolicy`, `backoffLimitPerIndex` and
//! `maxFailedIndexes` as the Job API defines them, the `retry` shorthand that renders into them,
//! and `completionIndex` (a run that reruns one index of an Indexed run). Each is validated as
//! kube-apiserver validates a Job (`validatePodFailurePolicy` and `validateJobSpec` in
//! kubernetes/kubernetes pkg/apis/batch/validation/validation.go; the limits are those of the
//! batch/v1 API reference: at most 20 rules, 255 exit codes and 20 condition patterns).

use super::{CompletionMode, RestartPolicy, RunTemplate};
use crate::domain::validation::Errors;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// kube-apiserver's `maxPodFailurePolicyRules`.
pub const MAX_RULES: usize = 20;
/// kube-apiserver's `maxPodFailurePolicyOnExitCodesValues`.
pub const MAX_EXIT_CODES: usize = 255;
/// kube-apiserver's `maxPodFailurePolicyOnPodConditionsPatterns`.
pub const MAX_CONDITION_PATTERNS: usize = 20;
/// kube-apiserver's `maxFailedIndexesLimit` (and the completions cap with backoffLimitPerIndex).
pub const MAX_FAILED_INDEXES: i32 = 100_000;
/// The name of the run's one container in every pod (what `onExitCodes.containerName` may name).
pub const CONTAINER_NAME: &str = "main";
/// How many times one run may be resubmitted after it was lost.
pub const MAX_ON_LOST: i32 = 10;
/// The pod condition the control plane adds to a pod it disrupts (eviction, preemption,
/// node-pressure eviction, taint manager): https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-conditions
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";

/// batch/v1 `PodFailurePolicy`: rules evaluated in order; the first that matches a failed pod
/// decides; no match counts the failure against `backoffLimit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodFailurePolicy {
    pub rules: Vec<PodFailurePolicyRule>,
}

/// One rule: exactly one of `onExitCodes` and `onPodConditions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodFailurePolicyRule {
    /// `FailJob`, `FailIndex` (needs `backoffLimitPerIndex`), `Ignore` (not counted, the pod
    /// is replaced) or `Count`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exit_codes: Option<OnExitCodes>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_pod_conditions: Vec<OnPodCondition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnExitCodes {
    /// Only this container's exit code (the run's container is `main`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// `In` or `NotIn`.
    pub operator: String,
    /// Ascending, without duplicates; `0` is not allowed with `In`.
    pub values: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnPodCondition {
    /// A pod condition type, e.g. `DisruptionTarget`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` (the API server's default), `False` or `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The shorthand for the usual policy: infrastructure failures retried without spending the
/// failure budget, real failures retried `onFailure` times, a vanished Job resubmitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Pods the infrastructure disrupts (eviction, preemption, node drain: the pod gets the
    /// `DisruptionTarget` condition) are replaced without counting against `backoffLimit`
    /// (rendered as an `Ignore` rule); the service fails the run at the `N+1`th disruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_infrastructure_failure: Option<i32>,
    /// Other failures: the Job's `backoffLimit` (give one or the other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<i32>,
    /// A run whose Job vanished (`lost`) is resubmitted as a linked run (`rerunOf`, reason
    /// `Retried: ...`) up to this many times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 10)]
    pub on_lost: Option<i32>,
}

impl RunTemplate {
    /// The podFailurePolicy the Job gets: the `retry` shorthand's `DisruptionTarget -> Ignore`
    /// rule first, then the template's own rules.
    pub fn effective_pod_failure_policy(&self) -> Option<PodFailurePolicy> {
        let mut rules = Vec::new();
        if self
            .retry
            .as_ref()
            .is_some_and(|r| r.on_infrastructure_failure.is_some())
        {
            rules.push(PodFailurePolicyRule {
                action: "Ignore".into(),
                on_exit_codes: None,
                on_pod_conditions: vec![OnPodCondition {
                    type_: DISRUPTION_TARGET.into(),
                    status: Some("True".into()),
                }],
            });
        }
        if let Some(policy) = &self.pod_failure_policy {
            rules.extend(policy.rules.iter().cloned());
        }
        (!rules.is_empty() || self.pod_failure_policy.is_some())
            .then_some(PodFailurePolicy { rules })
    }

    /// The Job's `backoffLimit`: the template's, or `retry.onFailure`.
    pub fn effective_backoff_limit(&self) -> Option<i32> {
        self.backoff_limit
            .or_else(|| self.retry.as_ref().and_then(|r| r.on_failure))
    }

    /// How many infrastructure disruptions the run survives, when `retry` says.
    pub fn disruptions_allowed(&self) -> Option<i32> {
        self.retry
            .as_ref()
            .and_then(|r| r.on_infrastructure_failure)
    }

    /// How many times a lost run is resubmitted.
    pub fn retries_on_lost(&self) -> i32 {
        self.retry.as_ref().and_then(|r| r.on_lost).unwrap_or(0)
    }

    pub(super) fn collect_failure_errors(&self, at: &str, errors: &mut Errors) {
        let field = |name: &str| format!("{at}.{name}");
        let indexed = self.completion_mode == Some(CompletionMode::Indexed);
        if let Some(retry) = &self.retry {
            for (name, value) in [
                ("onInfrastructureFailure", retry.on_infrastructure_failure),
                ("onFailure", retry.on_failure),
                ("onLost", retry.on_lost),
            ] {
                if value.is_some_and(|v| v < 0) {
                    errors.add(
                        format!("{at}.retry.{name}"),
                        "must be greater than or equal to 0",
                    );
                }
            }
            if retry.on_lost.is_some_and(|v| v > MAX_ON_LOST) {
                errors.add(
                    field("retry.onLost"),
                    format!("must be at most {MAX_ON_LOST}"),
                );
            }
            if retry.on_failure.is_some() && self.backoff_limit.is_some() {
                errors.add(
                    field("retry.onFailure"),
                    "is rendered as backoffLimit; give one of retry.onFailure and backoffLimit",
                );
            }
            if retry.on_infrastructure_failure.is_some()
                && self.restart_policy == Some(RestartPolicy::OnFailure)
            {
                errors.add(
                    field("retry.onInfrastructureFailure"),
                    "renders a podFailurePolicy, which needs restartPolicy Never",
                );
            }
        }
        if let Some(policy) = &self.pod_failure_policy {
            self.collect_policy_errors(policy, &field("podFailurePolicy"), errors);
        }
        if let Some(limit) = self.backoff_limit_per_index {
            if limit < 0 {
                errors.add(
                    field("backoffLimitPerIndex"),
                    format!("must be greater than or equal to 0 (is {limit})"),
                );
            }
            if !indexed {
                errors.add(
                    field("backoffLimitPerIndex"),
                    "requires indexed completion mode",
                );
            }
            if self.completions.is_some_and(|c| c > MAX_FAILED_INDEXES) {
                errors.add(
                    field("completions"),
                    format!(
                        "must be at most {MAX_FAILED_INDEXES} when backoffLimitPerIndex is set"
                    ),
                );
            }
        }
        if let Some(max) = self.max_failed_indexes {
            if self.backoff_limit_per_index.is_none() {
                errors.add(
                    field("maxFailedIndexes"),
                    "cannot be set when backoffLimitPerIndex is not set",
                );
            }
            if max < 0 {
                errors.add(
                    field("maxFailedIndexes"),
                    format!("must be greater than or equal to 0 (is {max})"),
                );
            } else if max > MAX_FAILED_INDEXES {
                errors.add(
                    field("maxFailedIndexes"),
                    format!("must be less than or equal to {MAX_FAILED_INDEXES}"),
                );
            } else if self.completions.is_some_and(|c| max > c) {
                errors.add(
                    field("maxFailedIndexes"),
                    "must be less than or equal to completions",
                );
            }
        }
        if let Some(index) = self.completion_index {
            if index < 0 {
                errors.add(
                    field("completionIndex"),
                    format!("must be greater than or equal to 0 (is {index})"),
                );
            }
            if indexed || self.completions.is_some_and(|c| c != 1) {
                errors.add(
                    field("completionIndex"),
                    "runs one index of an Indexed run: needs a NonIndexed run of completions 1",
                );
            }
        }
    }

    /// `validatePodFailurePolicy` / `validatePodFailurePolicyRule`.
    fn collect_policy_errors(&self, policy: &PodFailurePolicy, at: &str, errors: &mut Errors) {
        let shorthand = usize::from(self.disruptions_allowed().is_some());
        if policy.rules.len() + shorthand > MAX_RULES {
            errors.add(
                format!("{at}.rules"),
                format!(
                    "must have at most {MAX_RULES} items (retry.onInfrastructureFailure adds one)"
                ),
            );
        }
        if self.restart_policy == Some(RestartPolicy::OnFailure) {
            errors.add(
                at.to_string(),
                "only restartPolicy Never is supported when podFailurePolicy is specified",
            );
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            let at = format!("{at}.rules[{i}]");
            match rule.action.as_str() {
                "FailJob" | "Ignore" | "Count" => {}
                "FailIndex" => {
                    if self.backoff_limit_per_index.is_none() {
                        errors.add(
                            format!("{at}.action"),
                            "FailIndex requires the backoffLimitPerIndex to be set",
                        );
                    }
                }
                other => errors.add(
                    format!("{at}.action"),
                    format!(
                        "Unsupported value {other:?}: supported values: \"Count\", \"FailIndex\", \"FailJob\", \"Ignore\""
                    ),
                ),
            }
            match (&rule.on_exit_codes, rule.on_pod_conditions.is_empty()) {
                (Some(_), false) => errors.add(
                    at.clone(),
                    "specifying both OnExitCodes and OnPodConditions is not supported",
                ),
                (None, true) => errors.add(
                    at.clone(),
                    "specifying one of OnExitCodes and OnPodConditions is required",
                ),
                _ => {}
            }
            if let Some(codes) = &rule.on_exit_codes {
                collect_exit_code_errors(codes, &format!("{at}.onExitCodes"), errors);
            }
            if rule.on_pod_conditions.len() > MAX_CONDITION_PATTERNS {
                errors.add(
                    format!("{at}.onPodConditions"),
                    format!("must have at most {MAX_CONDITION_PATTERNS} items"),
                );
            }
            for (j, pattern) in rule.on_pod_conditions.iter().enumerate() {
                let at = format!("{at}.onPodConditions[{j}]");
                if pattern.type_.is_empty() {
                    errors.add(format!("{at}.type"), "Required value");
                } else {
                    errors.check(
                        format!("{at}.type"),
                        crate::domain::names::qualified_name(&pattern.type_),
                    );
                }
                if let Some(status) = &pattern.status {
                    if !matches!(status.as_str(), "True" | "False" | "Unknown") {
                        errors.add(
                            format!("{at}.status"),
                            format!("Unsupported value {status:?}: supported values: \"False\", \"True\", \"Unknown\""),
                        );
                    }
                }
            }
        }
    }
}

/// `validatePodFailurePolicyRuleOnExitCodes`: the container is the run's, the operator known,
/// the values present, ascending, unique, at most 255, and no 0 with `In`.
fn collect_exit_code_errors(codes: &OnExitCodes, at: &str, errors: &mut Errors) {
    if let Some(name) = &codes.container_name {
        if name != CONTAINER_NAME {
            errors.add(
                format!("{at}.containerName"),
                format!(
                    "must be one of the container or initContainer names in the pod template (the run's container is {:?})",
                    CONTAINER_NAME
                ),
            );
        }
    }
    if !matches!(codes.operator.as_str(), "In" | "NotIn") {
        errors.add(
            format!("{at}.operator"),
            format!(
                "Unsupported value {:?}: supported values: \"In\", \"NotIn\"",
                codes.operator
            ),
        );
    }
    let values = format!("{at}.values");
    if codes.values.is_empty() {
        errors.add(values.clone(), "at least one value is required");
    }
    if codes.values.len() > MAX_EXIT_CODES {
        errors.add(
            values.clone(),
            format!("must have at most {MAX_EXIT_CODES} items"),
        );
    }
    for (i, pair) in codes.values.windows(2).enumerate() {
        if pair[0] == pair[1] {
            errors.add(
                format!("{values}[{}]", i + 1),
                format!("Duplicate value: {}", pair[1]),
            );
        } else if pair[0] > pair[1] {
            errors.add(format!("{values}[{}]", i + 1), "must be ordered");
        }
    }
    if codes.operator == "In" {
        if let Some(i) = codes.values.iter().position(|&v| v == 0) {
            errors.add(
                format!("{values}[{i}]"),
                "must not be 0 for the In operator",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fields, template};
    use serde_json::json;

    #[test]
    fn fail_index_without_backoff_limit_per_index_is_refused_like_the_api_server() {
        let t = template(json!({"podFailurePolicy": {"rules": [
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [42]}}
        ]}}));
        assert_eq!(
            fields(t.validate("template")),
            ["template.podFailurePolicy.rules[0].action"]
        );
    }

    #[test]
    fn exit_code_lists_with_zero_for_in_or_out_of_order_or_repeated_are_refused() {
        let t = template(json!({"podFailurePolicy": {"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0, 1]}},
            {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [3, 2]}},
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2, 2]}},
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": []}}
        ]}}));
        assert_eq!(
            fields(t.validate("template")),
            [
                "template.podFailurePolicy.rules[0].onExitCodes.values[0]",
                "template.podFailurePolicy.rules[1].onExitCodes.values[1]",
                "template.podFailurePolicy.rules[2].onExitCodes.values[1]",
                "template.podFailurePolicy.rules[3].onExitCodes.values",
            ]
        );
    }

    #[test]
    fn a_rule_needs_exactly_one_requirement_and_at_most_twenty_rules() {
        let both = template(json!({"podFailurePolicy": {"rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]},
             "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "Ignore"}
        ]}}));
        assert_eq!(
            fields(both.validate("template")),
            [
                "template.podFailurePolicy.rules[0]",
                "template.podFailurePolicy.rules[1]"
            ]
        );
        let rule = json!({"action": "Count", "onExitCodes": {"operator": "In", "values": [1]}});
        let many = template(json!({"podFailurePolicy": {"rules": vec![rule; 21]}}));
        assert_eq!(
            fields(many.validate("template")),
            ["template.podFailurePolicy.rules"]
        );
    }

    #[test]
    fn a_pod_failure_policy_needs_restart_policy_never() {
        let t = template(
            json!({"restartPolicy": "OnFailure", "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
            ]}}),
        );
        assert_eq!(
            fields(t.validate("template")),
            ["template.podFailurePolicy"]
        );
    }

    #[test]
    fn backoff_limit_per_index_needs_indexed_and_max_failed_indexes_needs_it() {
        let t = template(json!({"completions": 3, "backoffLimitPerIndex": 1}));
        assert_eq!(
            fields(t.validate("template")),
            ["template.backoffLimitPerIndex"]
        );
        let t = template(json!({"completions": 3, "completionMode": "Indexed",
            "maxFailedIndexes": 4}));
        assert_eq!(
            fields(t.validate("template")),
            ["template.maxFailedIndexes", "template.maxFailedIndexes"]
        );
        let ok = template(json!({"completions": 3, "completionMode": "Indexed",
            "backoffLimitPerIndex": 1, "maxFailedIndexes": 2, "podFailurePolicy": {"rules": [
            {"action": "FailIndex", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}
        ]}}));
        assert_eq!(fields(ok.validate("template")), Vec::<String>::new());
    }

    #[test]
    fn the_retry_shorthand_renders_an_ignore_rule_for_disruptions_and_the_backoff_limit() {
        let t = template(json!({"retry": {"onInfrastructureFailure": 2, "onFailure": 3}}));
        assert!(t.validate("template").is_ok());
        let policy = t.effective_pod_failure_policy().unwrap();
        assert_eq!(policy.rules.len(), 1);
        assert_eq!(policy.rules[0].action, "Ignore");
        assert_eq!(
            policy.rules[0].on_pod_conditions[0].type_,
            "DisruptionTarget"
        );
        assert_eq!(t.effective_backoff_limit(), Some(3));
        let both = template(json!({"backoffLimit": 0, "retry": {"onFailure": 3, "onLost": 11}}));
        assert_eq!(
            fields(both.validate("template")),
            ["template.retry.onLost", "template.retry.onFailure"]
        );
    }
}
