//! The failure-handling half of Job rendering (pure): the run template's podFailurePolicy (with
//! the `retry` shorthand's rule) in batch/v1 types, and what a one-index rerun's pod is given so
//! that it sees its original completion index.

use crate::domain::template::PodFailurePolicy as Policy;
use crate::domain::RunTemplate;
use k8s_openapi::api::batch::v1::{
    PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::EnvVar;
use std::collections::BTreeMap;

/// The completion-index annotation and label the Job controller gives an Indexed Job's pods
/// (https://kubernetes.io/docs/concepts/workloads/controllers/job/#completion-mode).
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// The Job's podFailurePolicy: the template's, after the shorthand's rule.
pub fn pod_failure_policy(t: &RunTemplate) -> Option<PodFailurePolicy> {
    t.effective_pod_failure_policy().map(convert)
}

fn convert(policy: Policy) -> PodFailurePolicy {
    PodFailurePolicy {
        rules: policy
            .rules
            .into_iter()
            .map(|rule| PodFailurePolicyRule {
                action: rule.action,
                on_exit_codes: rule.on_exit_codes.map(|codes| {
                    PodFailurePolicyOnExitCodesRequirement {
                        container_name: codes.container_name,
                        operator: codes.operator,
                        values: codes.values,
                    }
                }),
                on_pod_conditions: (!rule.on_pod_conditions.is_empty()).then(|| {
                    rule.on_pod_conditions
                        .into_iter()
                        .map(|c| PodFailurePolicyOnPodConditionsPattern {
                            type_: c.type_,
                            // The API server defaults an empty status to True.
                            status: c.status.unwrap_or_else(|| "True".into()),
                        })
                        .collect()
                }),
            })
            .collect(),
    }
}

/// `JOB_COMPLETION_INDEX` for a run that reruns one index: a literal value, since its Job is
/// NonIndexed (Kubernetes cannot start an Indexed Job at a chosen index).
pub fn index_env(t: &RunTemplate) -> Option<EnvVar> {
    t.completion_index.map(|i| EnvVar {
        name: "JOB_COMPLETION_INDEX".into(),
        value: Some(i.to_string()),
        value_from: None,
    })
}

/// The completion-index label and annotation for a one-index rerun's pod template, as an
/// Indexed Job's pod would carry them: (labels, annotations).
pub fn index_metadata(t: &RunTemplate) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    match t.completion_index {
        Some(i) => {
            let pair = BTreeMap::from([(COMPLETION_INDEX.to_string(), i.to_string())]);
            (pair.clone(), pair)
        }
        None => (BTreeMap::new(), BTreeMap::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(extra: serde_json::Value) -> RunTemplate {
        let mut base = json!({"image": "busybox"});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn a_one_index_rerun_pod_gets_its_original_index_as_env_annotation_and_label() {
        let t = template(json!({"completions": 1, "completionIndex": 7}));
        let env = index_env(&t).unwrap();
        assert_eq!(
            (env.name.as_str(), env.value.as_deref()),
            ("JOB_COMPLETION_INDEX", Some("7"))
        );
        let (labels, annotations) = index_metadata(&t);
        assert_eq!(labels[COMPLETION_INDEX], "7");
        assert_eq!(annotations[COMPLETION_INDEX], "7");
        assert!(index_env(&template(json!({}))).is_none());
    }

    #[test]
    fn a_condition_pattern_without_status_is_rendered_true_as_the_api_server_defaults_it() {
        let t = template(json!({"podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
        ]}}));
        let policy = pod_failure_policy(&t).unwrap();
        let pattern = &policy.rules[0].on_pod_conditions.as_ref().unwrap()[0];
        assert_eq!(pattern.status, "True");
    }
}
