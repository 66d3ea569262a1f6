//! Volumes beyond scratch in a run template: `volumes: [{name, <one kind>}]` and the
//! container's `volumeMounts`, validated as the Kubernetes API server validates them
//! (`ValidateVolumes`, `validateVolumeSource`, `validateKeyToPath`, `ValidateVolumeMounts`,
//! `validateLocalDescendingPath` in kubernetes/kubernetes pkg/apis/core/validation/validation.go),
//! each error naming its field.
//!
//! The kinds are emptyDir, configMap, secret and persistentVolumeClaim; `hostPath` is parsed
//! only so that it can be refused by name (it exposes the node's filesystem, so no installation
//! may allow it), and any other kind is refused naming `volumes[i]`. Which of the four kinds an
//! installation allows is [`VolumeKinds`] (`ALLOWED_VOLUME_KINDS`, checked with the sandbox in
//! src/domain/sandbox.rs); a configMap or secret volume reads the cluster like env from the
//! cluster, so `ALLOW_ENV_FROM_CLUSTER` also decides who may use one
//! ([`RunTemplate::cluster_env_fields`](super::RunTemplate::cluster_env_fields)).

use super::parse_quantity;
use crate::domain::names;
use crate::domain::validation::Errors;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use utoipa::ToSchema;

/// One volume of the run's pods: a name and exactly one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", try_from = "RawVolume")]
#[schema(example = json!({"name": "work", "emptyDir": {"sizeLimit": "1Gi"}}))]
pub struct Volume {
    /// A DNS-1123 label, unique in the template (`scratch` is taken when `scratch` is set).
    pub name: String,
    /// A directory that lives as long as the pod (`medium: Memory` for a tmpfs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolume>,
    /// A ConfigMap in the run's namespace as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolume>,
    /// A Secret in the run's namespace as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolume>,
    /// An existing PersistentVolumeClaim in the run's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolume>,
    /// Always refused (a node's filesystem); accepted by the parser only to say so by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub host_path: Option<serde_json::Value>,
}

/// What a volume is read as: its known fields, and any other key (an unsupported kind).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawVolume {
    name: String,
    #[serde(default)]
    empty_dir: Option<EmptyDirVolume>,
    #[serde(default)]
    config_map: Option<ConfigMapVolume>,
    #[serde(default)]
    secret: Option<SecretVolume>,
    #[serde(default)]
    persistent_volume_claim: Option<PersistentVolumeClaimVolume>,
    #[serde(default)]
    host_path: Option<serde_json::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

impl TryFrom<RawVolume> for Volume {
    type Error = String;

    /// An unsupported kind is refused here, so the error names `volumes[i]` itself.
    fn try_from(raw: RawVolume) -> Result<Volume, String> {
        if let Some(kind) = raw.other.keys().next() {
            return Err(format!(
                "{kind:?} is not a volume kind runs may use; supported: emptyDir, configMap, secret, persistentVolumeClaim"
            ));
        }
        Ok(Volume {
            name: raw.name,
            empty_dir: raw.empty_dir,
            config_map: raw.config_map,
            secret: raw.secret,
            persistent_volume_claim: raw.persistent_volume_claim,
            host_path: raw.host_path,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDirVolume {
    /// `""` (the node's disk, the default) or `Memory` (a tmpfs, counted as the container's
    /// memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    /// The most the volume may hold, a Kubernetes quantity (`1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapVolume {
    /// The ConfigMap's name.
    pub name: String,
    /// Only these keys, at these paths (every key, as a file of its name, when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    /// When true, a missing ConfigMap (or key) leaves the volume empty instead of holding the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// File mode bits of the files (0 to 0777; Kubernetes default 0644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretVolume {
    /// The Secret's name.
    pub secret_name: String,
    /// Only these keys, at these paths (every key, as a file of its name, when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    /// When true, a missing Secret (or key) leaves the volume empty instead of holding the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// File mode bits of the files (0 to 0777; Kubernetes default 0644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
}

/// One key of a ConfigMap or Secret as a file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyToPath {
    pub key: String,
    /// A relative path in the volume, without `..`.
    pub path: String,
    /// File mode bits of this file (0 to 0777).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolumeClaimVolume {
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// A mount of one of the template's volumes in the run's container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "work", "mountPath": "/work"}))]
pub struct VolumeMount {
    /// The volume's name (one of `volumes`, or `scratch` when `scratch` is set).
    pub name: String,
    /// An absolute path in the container, unique, without `..`.
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// A relative path in the volume to mount instead of its root, without `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// A volume's kind, as the pod spec's field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VolumeKind {
    EmptyDir,
    ConfigMap,
    Secret,
    PersistentVolumeClaim,
    HostPath,
}

impl VolumeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::EmptyDir => "emptyDir",
            VolumeKind::ConfigMap => "configMap",
            VolumeKind::Secret => "secret",
            VolumeKind::PersistentVolumeClaim => "persistentVolumeClaim",
            VolumeKind::HostPath => "hostPath",
        }
    }

    /// Whether a volume of this kind reads an object of the cluster (a Secret or ConfigMap),
    /// like env from the cluster.
    pub fn reads_the_cluster(self) -> bool {
        matches!(self, VolumeKind::ConfigMap | VolumeKind::Secret)
    }
}

impl std::fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Volume {
    /// The kinds this volume names (a valid volume names exactly one).
    pub fn kinds(&self) -> Vec<VolumeKind> {
        [
            (self.empty_dir.is_some(), VolumeKind::EmptyDir),
            (self.config_map.is_some(), VolumeKind::ConfigMap),
            (self.secret.is_some(), VolumeKind::Secret),
            (
                self.persistent_volume_claim.is_some(),
                VolumeKind::PersistentVolumeClaim,
            ),
            (self.host_path.is_some(), VolumeKind::HostPath),
        ]
        .into_iter()
        .filter_map(|(set, kind)| set.then_some(kind))
        .collect()
    }
}

/// The volume kinds an installation allows (`ALLOWED_VOLUME_KINDS`): none by default, and never
/// `hostPath`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeKinds(BTreeSet<VolumeKind>);

impl VolumeKinds {
    /// Parses the setting's comma-separated names; `hostPath` or an unknown name is an error
    /// (the service does not start).
    pub fn parse(names: &[String]) -> Result<VolumeKinds, String> {
        let mut kinds = BTreeSet::new();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let kind = match name {
                "emptyDir" => VolumeKind::EmptyDir,
                "configMap" => VolumeKind::ConfigMap,
                "secret" => VolumeKind::Secret,
                "persistentVolumeClaim" => VolumeKind::PersistentVolumeClaim,
                "hostPath" => {
                    return Err(
                        "hostPath volumes are always refused (they expose the node's filesystem); remove it from ALLOWED_VOLUME_KINDS".into(),
                    )
                }
                other => {
                    return Err(format!(
                        "{other:?} is not one of emptyDir, configMap, secret, persistentVolumeClaim (ALLOWED_VOLUME_KINDS)"
                    ))
                }
            };
            kinds.insert(kind);
        }
        Ok(VolumeKinds(kinds))
    }

    pub fn allows(&self, kind: VolumeKind) -> bool {
        kind != VolumeKind::HostPath && self.0.contains(&kind)
    }

    /// The allowed kinds for a message (`none` when empty).
    pub fn names(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        let names: Vec<&str> = self.0.iter().map(|k| k.as_str()).collect();
        names.join(", ")
    }
}

/// `volumeModeErrorMsg`: file modes are 0 to 0777.
fn mode(errors: &mut Errors, at: String, mode: Option<i32>) {
    if let Some(m) = mode {
        if !(0..=0o777).contains(&m) {
            errors.add(
                at,
                "must be a number between 0 and 0777 (octal), both inclusive",
            );
        }
    }
}

/// `validateLocalDescendingPath`: relative, no `..` element.
fn descending_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err("must be a relative path".into());
    }
    no_backsteps(path)
}

/// `validatePathNoBacksteps`: no `..` element.
fn no_backsteps(path: &str) -> Result<(), String> {
    if path.split('/').any(|part| part == "..") {
        return Err("must not contain '..'".into());
    }
    Ok(())
}

/// `validateKeyToPath` with `validateLocalNonReservedPath`.
fn key_to_path(errors: &mut Errors, at: &str, item: &KeyToPath) {
    if item.key.is_empty() {
        errors.add(format!("{at}.key"), "is required");
    }
    if item.path.is_empty() {
        errors.add(format!("{at}.path"), "is required");
    } else if let Err(message) = descending_path(&item.path) {
        errors.add(format!("{at}.path"), message);
    } else if item.path.starts_with("..") {
        errors.add(format!("{at}.path"), "must not start with '..'");
    }
    mode(errors, format!("{at}.mode"), item.mode);
}

fn object_name(errors: &mut Errors, at: String, name: &str) {
    if name.is_empty() {
        errors.add(at, "is required");
    } else {
        errors.check(at, names::dns1123_subdomain(name));
    }
}

/// `volumes` and `volumeMounts`; `scratch` says whether the template's scratch volume (named
/// [`super::SCRATCH_VOLUME`], mounted at [`super::SCRATCH_PATH`]) is in the pod too.
pub(super) fn validate(
    errors: &mut Errors,
    at: &str,
    volumes: &[Volume],
    mounts: &[VolumeMount],
    scratch: bool,
) {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    if scratch {
        names.insert(super::SCRATCH_VOLUME);
    }
    for (i, v) in volumes.iter().enumerate() {
        let vp = format!("{at}.volumes[{i}]");
        if v.name.is_empty() {
            errors.add(format!("{vp}.name"), "is required");
        } else if let Err(message) = names::dns1123_label(&v.name) {
            errors.add(format!("{vp}.name"), message);
        } else if scratch && v.name == super::SCRATCH_VOLUME {
            errors.add(
                format!("{vp}.name"),
                "`scratch` is the name of the template's scratch volume",
            );
        } else if !names.insert(&v.name) {
            errors.add(
                format!("{vp}.name"),
                format!("Duplicate value: {:?}", v.name),
            );
        }
        match v.kinds().as_slice() {
            [] => errors.add(vp.clone(), "must specify a volume type"),
            [VolumeKind::HostPath] => errors.add(
                vp.clone(),
                "hostPath volumes are always refused: they expose the node's filesystem",
            ),
            [_] => {}
            _ => errors.add(vp.clone(), "may not specify more than 1 volume type"),
        }
        if let Some(e) = &v.empty_dir {
            match e.medium.as_deref() {
                None | Some("") | Some("Memory") => {}
                Some(_) => errors.add(
                    format!("{vp}.emptyDir.medium"),
                    "supported values: \"\", \"Memory\"",
                ),
            }
            if let Some(size) = &e.size_limit {
                match parse_quantity(size) {
                    Ok(v) if v >= 0.0 => {}
                    Ok(_) => errors.add(
                        format!("{vp}.emptyDir.sizeLimit"),
                        "SizeLimit field must be a valid resource quantity",
                    ),
                    Err(message) => errors.add(format!("{vp}.emptyDir.sizeLimit"), message),
                }
            }
        }
        if let Some(c) = &v.config_map {
            object_name(errors, format!("{vp}.configMap.name"), &c.name);
            for (j, item) in c.items.iter().enumerate() {
                key_to_path(errors, &format!("{vp}.configMap.items[{j}]"), item);
            }
            mode(
                errors,
                format!("{vp}.configMap.defaultMode"),
                c.default_mode,
            );
        }
        if let Some(s) = &v.secret {
            object_name(errors, format!("{vp}.secret.secretName"), &s.secret_name);
            for (j, item) in s.items.iter().enumerate() {
                key_to_path(errors, &format!("{vp}.secret.items[{j}]"), item);
            }
            mode(errors, format!("{vp}.secret.defaultMode"), s.default_mode);
        }
        if let Some(p) = &v.persistent_volume_claim {
            object_name(
                errors,
                format!("{vp}.persistentVolumeClaim.claimName"),
                &p.claim_name,
            );
        }
    }

    let mut paths: BTreeSet<&str> = BTreeSet::new();
    if scratch {
        paths.insert(super::SCRATCH_PATH);
    }
    for (i, m) in mounts.iter().enumerate() {
        let mp = format!("{at}.volumeMounts[{i}]");
        if m.name.is_empty() {
            errors.add(format!("{mp}.name"), "is required");
        } else if !names.contains(m.name.as_str()) {
            errors.add(
                format!("{mp}.name"),
                format!("Not found: {:?} (no volume of that name)", m.name),
            );
        }
        if m.mount_path.is_empty() {
            errors.add(format!("{mp}.mountPath"), "is required");
        } else if !m.mount_path.starts_with('/') {
            errors.add(format!("{mp}.mountPath"), "must be an absolute path");
        } else if let Err(message) = no_backsteps(&m.mount_path) {
            errors.add(format!("{mp}.mountPath"), message);
        } else if !paths.insert(m.mount_path.trim_end_matches('/')) {
            errors.add(format!("{mp}.mountPath"), "must be unique");
        }
        if let Some(sub) = &m.sub_path {
            errors.check(format!("{mp}.subPath"), descending_path(sub));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{VolumeKind, VolumeKinds};
    use crate::domain::template::tests::{fields, template};
    use serde_json::json;

    #[test]
    fn the_four_kinds_with_mounts_are_valid() {
        let t = template(json!({
            "volumes": [
                {"name": "work", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                {"name": "conf", "configMap": {"name": "settings", "items": [{"key": "a.yaml", "path": "conf/a.yaml", "mode": 0o644}], "optional": true, "defaultMode": 0o440}},
                {"name": "creds", "secret": {"secretName": "db", "defaultMode": 0o400}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "dataset", "readOnly": true}}
            ],
            "volumeMounts": [
                {"name": "work", "mountPath": "/work"},
                {"name": "conf", "mountPath": "/etc/app", "readOnly": true},
                {"name": "creds", "mountPath": "/var/run/creds", "subPath": "token"},
                {"name": "data", "mountPath": "/data"},
                {"name": "scratch", "mountPath": "/tmp/scratch"}
            ],
            "scratch": {"size": "1Gi"}
        }));
        assert_eq!(t.validate("template"), Ok(()));
        assert_eq!(
            t.volumes.iter().map(|v| v.kinds()).collect::<Vec<_>>(),
            [
                vec![VolumeKind::EmptyDir],
                vec![VolumeKind::ConfigMap],
                vec![VolumeKind::Secret],
                vec![VolumeKind::PersistentVolumeClaim]
            ]
        );
    }

    /// As `ValidateVolumes` / `validateVolumeSource` do: names are unique DNS-1123 labels, one
    /// kind each; hostPath is refused whatever the installation says.
    #[test]
    fn volumes_are_checked_like_the_api_server_and_host_path_is_refused() {
        let t = template(json!({
            "volumes": [
                {"name": "Bad_Name", "emptyDir": {}},
                {"name": "a", "emptyDir": {}},
                {"name": "a", "emptyDir": {}},
                {"name": "none"},
                {"name": "two", "emptyDir": {}, "secret": {"secretName": "x"}},
                {"name": "root", "hostPath": {"path": "/"}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "-1", "medium": "Disk"}},
                {"name": "c", "configMap": {"name": "", "items": [{"key": "", "path": "/abs", "mode": 0o1777}, {"key": "k", "path": "../up"}], "defaultMode": -1}},
                {"name": "p", "persistentVolumeClaim": {"claimName": ""}}
            ],
            "scratch": {"size": "1Gi"}
        }));
        assert_eq!(
            fields(t.validate("template")),
            [
                "template.volumes[0].name",
                "template.volumes[2].name",
                "template.volumes[3]",
                "template.volumes[4]",
                "template.volumes[5]",
                "template.volumes[6].name",
                "template.volumes[6].emptyDir.medium",
                "template.volumes[6].emptyDir.sizeLimit",
                "template.volumes[7].configMap.name",
                "template.volumes[7].configMap.items[0].key",
                "template.volumes[7].configMap.items[0].path",
                "template.volumes[7].configMap.items[0].mode",
                "template.volumes[7].configMap.items[1].path",
                "template.volumes[7].configMap.defaultMode",
                "template.volumes[8].persistentVolumeClaim.claimName",
            ]
        );
    }

    /// As `ValidateVolumeMounts` does: every mount names a volume, its path is unique and has
    /// no `..`, its subPath is relative; and (stricter than Kubernetes, whose Linux kubelet
    /// would resolve a relative path against the container root) the path is absolute.
    #[test]
    fn mounts_name_a_volume_at_a_unique_absolute_path() {
        let t = template(json!({
            "volumes": [{"name": "work", "emptyDir": {}}],
            "volumeMounts": [
                {"name": "missing", "mountPath": "/a"},
                {"name": "work", "mountPath": "relative"},
                {"name": "work", "mountPath": "/work"},
                {"name": "work", "mountPath": "/work/"},
                {"name": "work", "mountPath": "/x/../etc"},
                {"name": "work", "mountPath": "/b", "subPath": "/abs"},
                {"name": "", "mountPath": ""},
                {"name": "scratch", "mountPath": "/c"}
            ]
        }));
        assert_eq!(
            fields(t.validate("template")),
            [
                "template.volumeMounts[0].name",
                "template.volumeMounts[1].mountPath",
                "template.volumeMounts[3].mountPath",
                "template.volumeMounts[4].mountPath",
                "template.volumeMounts[5].subPath",
                "template.volumeMounts[6].name",
                "template.volumeMounts[6].mountPath",
                "template.volumeMounts[7].name",
            ]
        );
    }

    #[test]
    fn a_mount_at_the_scratch_path_is_a_duplicate() {
        let t = template(json!({
            "volumes": [{"name": "work", "emptyDir": {}}],
            "volumeMounts": [{"name": "work", "mountPath": "/scratch"}],
            "scratch": {"size": "1Gi"}
        }));
        assert_eq!(
            fields(t.validate("template")),
            ["template.volumeMounts[0].mountPath"]
        );
    }

    #[test]
    fn an_unsupported_kind_is_refused_when_parsed() {
        let parsed: Result<crate::domain::RunTemplate, _> = serde_json::from_value(json!({
            "image": "x", "volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]}));
        let message = parsed.unwrap_err().to_string();
        assert!(
            message.contains("\"nfs\" is not a volume kind"),
            "{message}"
        );
    }

    #[test]
    fn the_setting_parses_kinds_and_never_allows_host_path() {
        let kinds = VolumeKinds::parse(&["emptyDir".into(), " secret".into(), "".into()]).unwrap();
        assert!(kinds.allows(VolumeKind::EmptyDir));
        assert!(kinds.allows(VolumeKind::Secret));
        assert!(!kinds.allows(VolumeKind::ConfigMap));
        assert_eq!(kinds.names(), "emptyDir, secret");
        assert_eq!(VolumeKinds::default().names(), "none");
        assert!(VolumeKinds::parse(&["hostPath".into()])
            .unwrap_err()
            .contains("always refused"));
        assert!(VolumeKinds::parse(&["nfs".into()]).is_err());
    }
}
