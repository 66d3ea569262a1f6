//! Admission of pod creation, as the API server's admission plugins do it before a pod is
//! stored: Pod Security (namespace label `pod-security.kubernetes.io/enforce`,
//! https://kubernetes.io/docs/concepts/security/pod-security-standards/ and
//! https://kubernetes.io/docs/concepts/security/pod-security-admission/) and ResourceQuota
//! (https://kubernetes.io/docs/concepts/policy/resource-quotas/). A refusal is a 403 Forbidden
//! whose message is what the real plugins write, so the Job controller's `FailedCreate` Event
//! carries it. Pure: the caller passes the namespace and the pods that count against quotas.
//!
//! Switchable: [`Admission::pod_security`] off ignores the namespace label; quotas apply only
//! when configured (none by default, as in a fresh cluster).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod};

use crate::error::Status;
use crate::objects::is_terminal;

pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// A ResourceQuota's `spec.hard` in one namespace (`pods`, `requests.cpu`, `limits.memory`,
/// `requests.nvidia.com/gpu`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    pub namespace: String,
    pub name: String,
    pub hard: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// Enforce the namespace's Pod Security level (the real default: the admission plugin is on).
    pub pod_security: bool,
    pub quotas: Vec<Quota>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            pod_security: true,
            quotas: Vec::new(),
        }
    }
}

/// Parses a Kubernetes quantity into its value (`500m` = 0.5, `1Gi` = 2^30).
pub fn quantity(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * factor)
}

fn forbidden(pod: &Pod, detail: String) -> Status {
    Status::new(
        403,
        "Forbidden",
        format!(
            "pods \"{}\" is forbidden: {detail}",
            pod.metadata.name.as_deref().unwrap_or("")
        ),
    )
}

impl Admission {
    /// Admits a pod about to be created, reading its namespace and the pods already there.
    pub fn admit_in(&self, store: &crate::store::Store, pod: &Pod) -> Result<(), Status> {
        let ns_name = pod.metadata.namespace.as_deref().unwrap_or("default");
        let ns = store.get::<Namespace>("", ns_name);
        let existing = if self.quotas.iter().any(|q| q.namespace == ns_name) {
            store.list::<Pod>(Some(ns_name)).0
        } else {
            Vec::new()
        };
        let existing: Vec<&Pod> = existing.iter().map(|p| p.as_ref()).collect();
        self.admit(ns.as_deref(), pod, &existing)
    }

    /// Checks a pod about to be created in `ns`, against the pods already there.
    pub fn admit(
        &self,
        ns: Option<&Namespace>,
        pod: &Pod,
        existing: &[&Pod],
    ) -> Result<(), Status> {
        if self.pod_security {
            let level = ns
                .and_then(|n| n.metadata.labels.as_ref())
                .and_then(|l| l.get(ENFORCE_LABEL))
                .map(String::as_str)
                .unwrap_or("privileged");
            let violations = pod_security_violations(level, pod);
            if !violations.is_empty() {
                return Err(forbidden(
                    pod,
                    format!(
                        "violates PodSecurity \"{level}:latest\": {}",
                        violations.join(", ")
                    ),
                ));
            }
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        for q in self.quotas.iter().filter(|q| q.namespace == namespace) {
            self.check_quota(q, pod, existing)?;
        }
        Ok(())
    }

    fn check_quota(&self, q: &Quota, pod: &Pod, existing: &[&Pod]) -> Result<(), Status> {
        // pkg/quota/v1/evaluator/core/pods.go: a quota on compute resources requires every
        // container to state them.
        for resource in q.hard.keys() {
            let Some((kind, name)) = resource.split_once('.') else {
                continue;
            };
            if (kind == "requests" || kind == "limits")
                && (name == "cpu" || name == "memory")
                && containers(pod).any(|c| amount(c, kind, name).is_none())
            {
                return Err(forbidden(
                    pod,
                    format!("failed quota: {}: must specify {resource}", q.name),
                ));
            }
        }
        let live: Vec<&&Pod> = existing.iter().filter(|p| !is_terminal(p)).collect();
        let mut requested = Vec::new();
        let mut used = Vec::new();
        let mut limited = Vec::new();
        for (resource, hard) in &q.hard {
            let Some(hard_v) = quantity(hard) else {
                continue;
            };
            let usage = |p: &Pod| -> f64 {
                if resource == "pods" {
                    return 1.0;
                }
                let (kind, name) = match resource.split_once('.') {
                    Some((k @ ("requests" | "limits"), n)) => (k, n),
                    // `cpu` and `memory` alone mean requests.
                    _ => ("requests", resource.as_str()),
                };
                containers(p)
                    .filter_map(|c| amount(c, kind, name))
                    .fold(0.0, |a, b| a + b)
            };
            let want = usage(pod);
            let have = live.iter().map(|p| usage(p)).fold(0.0, |a, b| a + b);
            if want > 0.0 && have + want > hard_v + 1e-9 {
                requested.push(format!("{resource}={}", show(want)));
                used.push(format!("{resource}={}", show(have)));
                limited.push(format!("{resource}={hard}"));
            }
        }
        if requested.is_empty() {
            return Ok(());
        }
        Err(forbidden(
            pod,
            format!(
                "exceeded quota: {}, requested: {}, used: {}, limited: {}",
                q.name,
                requested.join(","),
                used.join(","),
                limited.join(",")
            ),
        ))
    }
}

fn show(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v}")
    } else {
        format!("{}m", (v * 1000.0).round())
    }
}

fn containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|s| s.containers.iter())
}

/// A container's request or limit of `name`; a limit alone also counts as the request, as the
/// API server defaults it.
fn amount(c: &Container, kind: &str, name: &str) -> Option<f64> {
    let r = c.resources.as_ref()?;
    let limit = r.limits.as_ref().and_then(|m| m.get(name));
    let value = match kind {
        "limits" => limit,
        _ => r.requests.as_ref().and_then(|m| m.get(name)).or(limit),
    }?;
    quantity(&value.0)
}

/// The checks of the Pod Security Standards for `level` that the pod fails, worded as
/// k8s.io/pod-security-admission/policy words them (`check_*.go`).
pub fn pod_security_violations(level: &str, pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    if level != "baseline" && level != "restricted" {
        return out;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    let names = |f: &dyn Fn(&Container) -> bool| -> Vec<String> {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter(|c| f(c))
            .map(|c| format!("\"{}\"", c.name))
            .collect()
    };
    let plural = |v: &[String]| {
        if v.len() == 1 {
            format!("container {}", v[0])
        } else {
            format!("containers {}", v.join(", "))
        }
    };
    let sc = |c: &Container| c.security_context.clone().unwrap_or_default();
    // Baseline.
    let privileged = names(&|c| sc(c).privileged == Some(true));
    if !privileged.is_empty() {
        out.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            plural(&privileged)
        ));
    }
    let mut host = Vec::new();
    if spec.host_network == Some(true) {
        host.push("hostNetwork=true");
    }
    if spec.host_pid == Some(true) {
        host.push("hostPID=true");
    }
    if spec.host_ipc == Some(true) {
        host.push("hostIPC=true");
    }
    if !host.is_empty() {
        out.push(format!("host namespaces ({})", host.join(", ")));
    }
    if level != "restricted" {
        return out;
    }
    // Restricted.
    let escalation = names(&|c| sc(c).allow_privilege_escalation != Some(false));
    if !escalation.is_empty() {
        out.push(format!(
            "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
            plural(&escalation)
        ));
    }
    let caps = names(&|c| {
        !sc(c)
            .capabilities
            .and_then(|c| c.drop)
            .is_some_and(|d| d.iter().any(|d| d == "ALL"))
    });
    if !caps.is_empty() {
        out.push(format!(
            "unrestricted capabilities ({} must set securityContext.capabilities.drop=[\"ALL\"])",
            plural(&caps)
        ));
    }
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let non_root = names(&|c| match sc(c).run_as_non_root {
        Some(v) => !v,
        None => pod_sc.run_as_non_root != Some(true),
    });
    if pod_sc.run_as_non_root == Some(false) || !non_root.is_empty() {
        out.push(format!(
            "runAsNonRoot != true (pod or {} must set securityContext.runAsNonRoot=true)",
            plural(&non_root)
        ));
    }
    let seccomp_ok =
        |t: Option<String>| matches!(t.as_deref(), Some("RuntimeDefault" | "Localhost"));
    let pod_seccomp = seccomp_ok(pod_sc.seccomp_profile.map(|p| p.type_));
    let seccomp = names(&|c| match sc(c).seccomp_profile {
        Some(p) => !seccomp_ok(Some(p.type_)),
        None => !pod_seccomp,
    });
    if !seccomp.is_empty() {
        out.push(format!(
            "seccompProfile (pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            plural(&seccomp)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn ns(level: &str) -> Namespace {
        serde_json::from_value(
            json!({"metadata": {"name": "batch", "labels": {ENFORCE_LABEL: level}}}),
        )
        .unwrap()
    }

    /// https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted
    #[test]
    fn restricted_refuses_a_pod_that_may_run_as_root_and_names_the_check() {
        let p = pod(
            json!({"metadata": {"name": "pi-abc", "namespace": "batch"}, "spec": {
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "main", "image": "perl", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}}),
        );
        let err = Admission::default()
            .admit(Some(&ns("restricted")), &p, &[])
            .unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "pods \"pi-abc\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true (pod or container \"main\" must set securityContext.runAsNonRoot=true)"
        );
        // The same pod is fine where nothing is enforced, or with the check switched off.
        assert!(Admission::default()
            .admit(Some(&ns("baseline")), &p, &[])
            .is_ok());
        let off = Admission {
            pod_security: false,
            ..Default::default()
        };
        assert!(off.admit(Some(&ns("restricted")), &p, &[]).is_ok());
    }

    /// https://kubernetes.io/docs/concepts/policy/resource-quotas/: a create that would exceed
    /// `hard` is refused with what was requested, used and allowed.
    #[test]
    fn quota_refuses_what_exceeds_it_and_requires_stated_requests() {
        let q = Admission {
            quotas: vec![Quota {
                namespace: "batch".into(),
                name: "compute".into(),
                hard: [
                    ("pods".to_string(), "1".to_string()),
                    ("requests.cpu".to_string(), "1".to_string()),
                ]
                .into(),
            }],
            ..Default::default()
        };
        let with_cpu = |name: &str, cpu: &str| {
            pod(
                json!({"metadata": {"name": name, "namespace": "batch"}, "spec": {"containers": [
                {"name": "main", "image": "x", "resources": {"requests": {"cpu": cpu}}}]}}),
            )
        };
        let first = with_cpu("a", "500m");
        assert!(q.admit(None, &first, &[]).is_ok());
        let err = q.admit(None, &with_cpu("b", "2"), &[]).unwrap_err();
        assert_eq!(
            err.message,
            "pods \"b\" is forbidden: exceeded quota: compute, requested: requests.cpu=2, used: requests.cpu=0, limited: requests.cpu=1"
        );
        let err = q
            .admit(None, &with_cpu("c", "100m"), &[&first])
            .unwrap_err();
        assert_eq!(
            err.message,
            "pods \"c\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=1, limited: pods=1"
        );
        let bare = pod(
            json!({"metadata": {"name": "d", "namespace": "batch"}, "spec": {"containers": [{"name": "main", "image": "x"}]}}),
        );
        let err = q.admit(None, &bare, &[]).unwrap_err();
        assert_eq!(
            err.message,
            "pods \"d\" is forbidden: failed quota: compute: must specify requests.cpu"
        );
    }
}
