//! The scheduler's filter step for the simulated node: node selector against the node's labels,
//! taints against the pod's tolerations, and resource requests (cpu, memory and extended
//! resources such as `nvidia.com/gpu`) against what is allocatable and not yet in use, as
//! kube-scheduler's NodeAffinity, TaintToleration and NodeResourcesFit plugins decide
//! (https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/,
//! https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/,
//! https://kubernetes.io/docs/tasks/manage-gpus/scheduling-gpus/). A pod that fits nowhere stays
//! Pending with PodScheduled=False, reason Unschedulable and the scheduler's message. Pure.
//!
//! Default: a node with no taints and room for everything but extended resources, so ordinary
//! pods always fit.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Taint};

use crate::admission::quantity;

/// The name of the default (first) simulated node.
pub const NODE_NAME: &str = "kubesim-node-1";

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// `status.allocatable`: quantities by resource name. A resource not listed is unlimited for
    /// cpu and memory, and absent (zero) for extended resources.
    pub allocatable: BTreeMap<String, String>,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            name: NODE_NAME.to_string(),
            labels: [
                ("kubernetes.io/hostname", NODE_NAME),
                ("kubernetes.io/os", "linux"),
                ("kubernetes.io/arch", "amd64"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            taints: Vec::new(),
            allocatable: BTreeMap::new(),
        }
    }
}

/// What a pod asks for: per resource, the sum of its containers' requests (a limit alone counts
/// as the request, as the API server defaults it).
pub fn requests(pod: &Pod) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let Some(r) = c.resources.as_ref() else {
            continue;
        };
        let mut names: Vec<&String> = r.requests.iter().flatten().map(|(k, _)| k).collect();
        names.extend(r.limits.iter().flatten().map(|(k, _)| k));
        names.sort();
        names.dedup();
        for name in names {
            let q = r
                .requests
                .as_ref()
                .and_then(|m| m.get(name))
                .or_else(|| r.limits.as_ref().and_then(|m| m.get(name)));
            if let Some(v) = q.and_then(|q| quantity(&q.0)) {
                *out.entry(name.clone()).or_insert(0.0) += v;
            }
        }
    }
    out
}

fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/")
}

fn tolerates(pod: &Pod, taint: &Taint) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.tolerations.iter().flatten())
        .any(|t| {
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == taint.effect);
            let key_ok = match t.key.as_deref() {
                None | Some("") => t.operator.as_deref() == Some("Exists"),
                Some(k) => k == taint.key,
            };
            let value_ok = match t.operator.as_deref() {
                Some("Exists") => true,
                _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
            };
            effect_ok && key_ok && value_ok
        })
}

/// Why the pod does not fit the node given what bound pods already use; empty when it fits.
/// Each reason is worded as the scheduler's plugins word it.
pub fn unfit_reasons(node: &Node, pod: &Pod, used: &BTreeMap<String, f64>) -> Vec<String> {
    let mut out = Vec::new();
    let selector = pod.spec.as_ref().and_then(|s| s.node_selector.clone());
    if selector
        .iter()
        .flatten()
        .any(|(k, v)| node.labels.get(k) != Some(v))
    {
        out.push("node(s) didn't match Pod's node affinity/selector".to_string());
    }
    for taint in &node.taints {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute") && !tolerates(pod, taint) {
            out.push(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            ));
            break;
        }
    }
    for (name, want) in requests(pod) {
        if want <= 0.0 {
            continue;
        }
        let limit = match node.allocatable.get(&name).and_then(|q| quantity(q)) {
            Some(v) => v,
            None if is_extended(&name) => 0.0,
            None => continue,
        };
        if used.get(&name).copied().unwrap_or(0.0) + want > limit + 1e-9 {
            out.push(format!("Insufficient {name}"));
        }
    }
    out
}

/// The scheduler's FailedScheduling message: each reason with how many of the `nodes` gave it,
/// sorted, as kube-scheduler's `FitError` words it.
pub fn unschedulable_message(nodes: usize, reasons: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r.as_str()).or_insert(0) += 1;
    }
    let list: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(
        "0/{nodes} nodes are available: {}. preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling.",
        list.join(", ")
    )
}

/// The first node the pod fits, given what each node's bound pods use; or the scheduler's
/// message when it fits none.
pub fn pick_node(
    nodes: &[Node],
    pod: &Pod,
    used: &BTreeMap<String, BTreeMap<String, f64>>,
) -> Result<String, String> {
    let none = BTreeMap::new();
    let mut reasons = Vec::new();
    for node in nodes {
        let why = unfit_reasons(node, pod, used.get(&node.name).unwrap_or(&none));
        if why.is_empty() {
            return Ok(node.name.clone());
        }
        reasons.extend(why);
    }
    Err(unschedulable_message(nodes.len(), &reasons))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    /// https://kubernetes.io/docs/tasks/manage-gpus/scheduling-gpus/: a pod asking for a GPU fits
    /// only a node that advertises one.
    #[test]
    fn a_gpu_pod_does_not_fit_the_default_node_and_says_why() {
        let gpu = pod(json!({"containers": [{"name": "main", "image": "x",
            "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}));
        let reasons = unfit_reasons(&Node::default(), &gpu, &BTreeMap::new());
        assert_eq!(reasons, ["Insufficient nvidia.com/gpu"]);
        assert!(unschedulable_message(1, &reasons)
            .starts_with("0/1 nodes are available: 1 Insufficient nvidia.com/gpu."));
        let mut node = Node::default();
        node.allocatable.insert("nvidia.com/gpu".into(), "1".into());
        assert!(unfit_reasons(&node, &gpu, &BTreeMap::new()).is_empty());
        let in_use = BTreeMap::from([("nvidia.com/gpu".to_string(), 1.0)]);
        assert_eq!(
            unfit_reasons(&node, &gpu, &in_use),
            ["Insufficient nvidia.com/gpu"]
        );
    }

    /// https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/
    #[test]
    fn selectors_and_taints_are_honoured() {
        let mut node = Node::default();
        node.taints.push(Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        let plain = pod(json!({"containers": [{"name": "main", "image": "x"}],
            "nodeSelector": {"disk": "ssd"}}));
        assert_eq!(
            unfit_reasons(&node, &plain, &BTreeMap::new()),
            [
                "node(s) didn't match Pod's node affinity/selector",
                "node(s) had untolerated taint {dedicated: gpu}"
            ]
        );
        let tolerant = pod(json!({"containers": [{"name": "main", "image": "x"}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}));
        assert!(unfit_reasons(&node, &tolerant, &BTreeMap::new()).is_empty());
    }

    /// kube-scheduler picks a node that fits; when none does, the message counts each reason
    /// over the nodes.
    #[test]
    fn the_pod_goes_to_a_node_that_fits_or_the_message_counts_reasons_per_node() {
        let plain = |name: &str| Node {
            name: name.into(),
            ..Node::default()
        };
        let mut gpu = plain("gpu-1");
        gpu.allocatable.insert("nvidia.com/gpu".into(), "1".into());
        gpu.taints.push(Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        let nodes = [plain("cpu-1"), plain("cpu-2"), gpu];
        let wants_gpu = pod(json!({"containers": [{"name": "main", "image": "x",
            "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}));
        assert_eq!(
            pick_node(&nodes, &wants_gpu, &BTreeMap::new()),
            Err("0/3 nodes are available: 2 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.".into())
        );
        let tolerant = pod(json!({"containers": [{"name": "main", "image": "x",
            "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
            "tolerations": [{"key": "dedicated", "operator": "Exists"}]}));
        assert_eq!(
            pick_node(&nodes, &tolerant, &BTreeMap::new()),
            Ok("gpu-1".into())
        );
    }
}
