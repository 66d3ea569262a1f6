//! The pod sandbox as an allowlist: which annotation keys, toleration keys and node-selector
//! keys a run template may use in this installation (keys or glob patterns, from the
//! configuration). Some keys weaken the sandbox or reach beyond it, so they are refused even
//! under the catch-all `*` and need a pattern of their own, which only the installation's admin
//! can configure:
//!
//! - AppArmor (`container.apparmor.security.beta.kubernetes.io/<container>`) and the legacy
//!   seccomp annotations (`seccomp.security.alpha.kubernetes.io/pod`,
//!   `container.seccomp.security.alpha.kubernetes.io/<container>`), which the Pod Security
//!   Standards restrict (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>),
//!   and every other key under Kubernetes' reserved prefixes `kubernetes.io/` and `k8s.io/`
//!   (<https://kubernetes.io/docs/reference/labels-annotations-taints/>);
//! - networks and runtimes: Multus (`k8s.v1.cni.cncf.io/networks`), CRI-O and containerd
//!   runtime annotations, service-mesh sidecar switches, kube2iam roles;
//! - tolerations and node selectors on the control plane (`node-role.kubernetes.io/*`), a
//!   toleration of cordoned nodes, and a toleration without a key (`operator: Exists` tolerates
//!   every taint, <https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/>),
//!   which has its own switch.
//!
//! Pure: checking only; the configuration builds it.

use super::validation::Errors;
use super::RunTemplate;
use globset::{Glob, GlobMatcher};

/// Annotation keys that touch the sandbox (see the module comment).
pub const SENSITIVE_ANNOTATIONS: &[&str] = &[
    "*kubernetes.io/*",
    "*k8s.io/*",
    "k8s.v1.cni.cncf.io/*",
    "v1.multus-cni.io/*",
    "io.kubernetes.cri-o.*",
    "io.kubernetes.cri.*",
    "io.containerd.*",
    "*istio.io/*",
    "*linkerd.io/*",
    "iam.amazonaws.com/*",
];

/// Toleration keys that reach nodes runs must not use.
pub const SENSITIVE_TOLERATIONS: &[&str] = &[
    "node-role.kubernetes.io/*",
    "node.kubernetes.io/unschedulable",
    "CriticalAddonsOnly",
];

/// Node-selector keys that aim at the control plane.
pub const SENSITIVE_NODE_SELECTORS: &[&str] = &["node-role.kubernetes.io/*"];

/// Keys allowed for one kind of field.
#[derive(Debug, Clone)]
struct KeyRule {
    /// The configured patterns, and whether each is a catch-all (only `*`).
    allowed: Vec<(String, GlobMatcher, bool)>,
    sensitive: Vec<GlobMatcher>,
}

impl KeyRule {
    fn new(allowed: &[String], sensitive: &[&str]) -> Result<KeyRule, String> {
        let compile = |pattern: &str| {
            Glob::new(pattern)
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("{pattern:?} is not a key or glob pattern: {e}"))
        };
        Ok(KeyRule {
            allowed: allowed
                .iter()
                .map(|p| p.trim())
                .filter(|p| !p.is_empty())
                .map(|p| Ok((p.to_string(), compile(p)?, p.chars().all(|c| c == '*'))))
                .collect::<Result<_, String>>()?,
            sensitive: sensitive
                .iter()
                .map(|p| compile(p))
                .collect::<Result<_, String>>()?,
        })
    }

    /// Why `key` is not allowed, if it is not.
    fn refuse(&self, key: &str, setting: &str) -> Option<String> {
        let sensitive = self.sensitive.iter().any(|m| m.is_match(key));
        let allowed = self
            .allowed
            .iter()
            .any(|(_, m, catch_all)| m.is_match(key) && !(sensitive && *catch_all));
        match (allowed, sensitive) {
            (true, _) => None,
            (false, true) => Some(format!(
                "{key:?} can weaken the pod sandbox, so it is refused unless this installation allows it by name ({setting})"
            )),
            (false, false) => Some(format!(
                "{key:?} is not allowed in this installation; allowed: {} ({setting})",
                self.patterns()
            )),
        }
    }

    fn patterns(&self) -> String {
        if self.allowed.is_empty() {
            return "none".into();
        }
        let names: Vec<&str> = self.allowed.iter().map(|(p, _, _)| p.as_str()).collect();
        names.join(", ")
    }
}

/// What run pods' metadata and scheduling may say.
#[derive(Debug, Clone)]
pub struct Sandbox {
    annotations: KeyRule,
    tolerations: KeyRule,
    node_selectors: KeyRule,
    /// May a toleration without a key (tolerating every taint) be used?
    tolerate_all_taints: bool,
    /// Who may read env from Secrets and ConfigMaps (`ALLOW_ENV_FROM_CLUSTER`); ad-hoc runs
    /// are told apart at the front door, this refuses the fields everywhere when `None`.
    pub env_from_cluster: super::template::EnvFromCluster,
    /// The volume kinds runs may use beyond scratch (`ALLOWED_VOLUME_KINDS`; none by default,
    /// never hostPath, which template validation refuses).
    pub volume_kinds: super::template::VolumeKinds,
}

/// The configured allowlists.
#[derive(Debug, Clone)]
pub struct SandboxSettings<'a> {
    pub annotations: &'a [String],
    pub tolerations: &'a [String],
    pub node_selectors: &'a [String],
    pub tolerate_all_taints: bool,
}

impl Sandbox {
    pub fn new(settings: &SandboxSettings<'_>) -> Result<Sandbox, String> {
        Ok(Sandbox {
            annotations: KeyRule::new(settings.annotations, SENSITIVE_ANNOTATIONS)
                .map_err(|e| format!("ALLOWED_ANNOTATIONS: {e}"))?,
            tolerations: KeyRule::new(settings.tolerations, SENSITIVE_TOLERATIONS)
                .map_err(|e| format!("ALLOWED_TOLERATIONS: {e}"))?,
            node_selectors: KeyRule::new(settings.node_selectors, SENSITIVE_NODE_SELECTORS)
                .map_err(|e| format!("ALLOWED_NODE_SELECTORS: {e}"))?,
            tolerate_all_taints: settings.tolerate_all_taints,
            env_from_cluster: Default::default(),
            volume_kinds: Default::default(),
        })
    }

    /// Adds an error for each annotation, toleration or node selector of `template` outside the
    /// allowlists.
    pub fn check(&self, template: &RunTemplate, at: &str, errors: &mut Errors) {
        for key in template.annotations.keys() {
            if let Some(message) = self.annotations.refuse(key, "ALLOWED_ANNOTATIONS") {
                errors.add(format!("{at}.annotations.{key}"), message);
            }
        }
        for (i, toleration) in template.tolerations.iter().enumerate() {
            match toleration.key.as_deref().filter(|k| !k.is_empty()) {
                None if !self.tolerate_all_taints => errors.add(
                    format!("{at}.tolerations[{i}].key"),
                    "a toleration without a key tolerates every taint (control-plane nodes too), so it is refused unless this installation allows it (ALLOW_TOLERATE_ALL_TAINTS)",
                ),
                None => {}
                Some(key) => {
                    if let Some(message) = self.tolerations.refuse(key, "ALLOWED_TOLERATIONS") {
                        errors.add(format!("{at}.tolerations[{i}].key"), message);
                    }
                }
            }
        }
        for key in template.node_selector.keys() {
            if let Some(message) = self.node_selectors.refuse(key, "ALLOWED_NODE_SELECTORS") {
                errors.add(format!("{at}.nodeSelector.{key}"), message);
            }
        }
        if self.env_from_cluster == super::template::EnvFromCluster::None {
            for field in template.cluster_env_fields(at) {
                errors.add(
                    field,
                    "reading Secrets and ConfigMaps (env or volumes) is turned off in this installation (ALLOW_ENV_FROM_CLUSTER=none)",
                );
            }
        }
        for (i, volume) in template.volumes.iter().enumerate() {
            // hostPath (never allowed) and a volume of no or two kinds are validation's to refuse.
            if let [kind] = volume.kinds().as_slice() {
                if *kind != super::template::VolumeKind::HostPath
                    && !self.volume_kinds.allows(*kind)
                {
                    errors.add(
                        format!("{at}.volumes[{i}]"),
                        format!(
                            "{kind} volumes are not allowed in this installation; allowed: {} (ALLOWED_VOLUME_KINDS)",
                            self.volume_kinds.names()
                        ),
                    );
                }
            }
        }
    }
}

impl Default for Sandbox {
    /// The installation's defaults: every ordinary key, nothing sensitive.
    fn default() -> Self {
        let all = ["*".to_string()];
        Sandbox::new(&SandboxSettings {
            annotations: &all,
            tolerations: &all,
            node_selectors: &all,
            tolerate_all_taints: false,
        })
        .expect("the default patterns compile")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::tests::{fields, template};
    use serde_json::json;

    fn refused(sandbox: &Sandbox, extra: serde_json::Value) -> Vec<String> {
        let mut errors = Errors::new();
        sandbox.check(&template(extra), "template", &mut errors);
        fields(errors.finish())
    }

    #[test]
    fn ordinary_keys_pass_by_default() {
        let fields = refused(
            &Sandbox::default(),
            json!({
                "annotations": {"example.com/owner": "team-a", "note": "x"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "nodeSelector": {"disk": "ssd", "node.kubernetes.io/instance-type": "m5.large"}
            }),
        );
        assert!(fields.is_empty(), "{fields:?}");
    }

    #[test]
    fn apparmor_seccomp_and_multus_annotations_are_refused_by_default() {
        let fields = refused(
            &Sandbox::default(),
            json!({"annotations": {
                "container.apparmor.security.beta.kubernetes.io/main": "unconfined",
                "seccomp.security.alpha.kubernetes.io/pod": "unconfined",
                "container.seccomp.security.alpha.kubernetes.io/main": "unconfined",
                "k8s.v1.cni.cncf.io/networks": "macvlan-conf",
                "io.kubernetes.cri-o.userns-mode": "host",
                "sidecar.istio.io/inject": "false",
                "ok.example.com/x": "y"
            }}),
        );
        assert_eq!(
            fields,
            [
                "template.annotations.container.apparmor.security.beta.kubernetes.io/main",
                "template.annotations.container.seccomp.security.alpha.kubernetes.io/main",
                "template.annotations.io.kubernetes.cri-o.userns-mode",
                "template.annotations.k8s.v1.cni.cncf.io/networks",
                "template.annotations.seccomp.security.alpha.kubernetes.io/pod",
                "template.annotations.sidecar.istio.io/inject",
            ]
        );
    }

    #[test]
    fn keyless_and_control_plane_tolerations_and_selectors_are_refused_by_default() {
        let fields = refused(
            &Sandbox::default(),
            json!({
                "tolerations": [
                    {"operator": "Exists"},
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
                ],
                "nodeSelector": {"node-role.kubernetes.io/control-plane": ""}
            }),
        );
        assert_eq!(
            fields,
            [
                "template.tolerations[0].key",
                "template.tolerations[1].key",
                "template.nodeSelector.node-role.kubernetes.io/control-plane"
            ]
        );
    }

    #[test]
    fn an_admin_may_allow_sensitive_keys_by_name() {
        let annotations = ["*".to_string(), "k8s.v1.cni.cncf.io/networks".to_string()];
        let tolerations = ["node-role.kubernetes.io/*".to_string()];
        let sandbox = Sandbox::new(&SandboxSettings {
            annotations: &annotations,
            tolerations: &tolerations,
            node_selectors: &["disk".to_string()],
            tolerate_all_taints: true,
        })
        .unwrap();
        let fields = refused(
            &sandbox,
            json!({
                "annotations": {"k8s.v1.cni.cncf.io/networks": "x", "seccomp.security.alpha.kubernetes.io/pod": "unconfined"},
                "tolerations": [{"operator": "Exists"}, {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}, {"key": "gpu", "operator": "Exists"}],
                "nodeSelector": {"disk": "ssd", "zone": "a"}
            }),
        );
        assert_eq!(
            fields,
            [
                "template.annotations.seccomp.security.alpha.kubernetes.io/pod",
                "template.tolerations[2].key",
                "template.nodeSelector.zone"
            ]
        );
    }

    /// Issue 18: volume kinds beyond scratch need `ALLOWED_VOLUME_KINDS` (none by default).
    #[test]
    fn volume_kinds_are_refused_unless_the_installation_allows_them() {
        let t = json!({"volumes": [
            {"name": "a", "emptyDir": {}},
            {"name": "b", "persistentVolumeClaim": {"claimName": "c"}}
        ]});
        assert_eq!(
            refused(&Sandbox::default(), t.clone()),
            ["template.volumes[0]", "template.volumes[1]"]
        );
        let sandbox = Sandbox {
            volume_kinds: crate::domain::template::VolumeKinds::parse(&["emptyDir".into()])
                .unwrap(),
            ..Sandbox::default()
        };
        assert_eq!(refused(&sandbox, t), ["template.volumes[1]"]);
    }

    #[test]
    fn an_empty_allowlist_allows_nothing_and_bad_patterns_are_refused() {
        let sandbox = Sandbox::new(&SandboxSettings {
            annotations: &[],
            tolerations: &[],
            node_selectors: &[],
            tolerate_all_taints: false,
        })
        .unwrap();
        assert_eq!(
            refused(&sandbox, json!({"annotations": {"note": "x"}})),
            ["template.annotations.note"]
        );
        let bad = ["a[".to_string()];
        let error = Sandbox::new(&SandboxSettings {
            annotations: &bad,
            tolerations: &[],
            node_selectors: &[],
            tolerate_all_taints: false,
        })
        .unwrap_err();
        assert!(error.starts_with("ALLOWED_ANNOTATIONS"), "{error}");
    }
}
