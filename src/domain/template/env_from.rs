//! Env from the cluster and scratch space in a run template: `env[].valueFrom`
//! (`secretKeyRef` / `configMapKeyRef`), `envFrom` (a Secret's or ConfigMap's keys, with a
//! prefix) and `scratch` (a generic ephemeral volume mounted at [`SCRATCH_PATH`]), validated as
//! the Kubernetes API server validates them (`validateEnvVarValueFrom`, `validateEnvFrom`,
//! `ValidatePersistentVolumeClaimSpec` in pkg/apis/core/validation/validation.go), each error
//! naming its field.
//!
//! The referenced Secret or ConfigMap lives in the run's namespace (the Job's pods read it),
//! so the namespace allowlist already bounds what a run can reach; who may use these fields at
//! all is [`EnvFromCluster`], checked at the front door (src/domain/submission.rs).

use super::parse_quantity;
use crate::domain::names;
use crate::domain::validation::Errors;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a run's scratch volume is mounted in its container.
pub const SCRATCH_PATH: &str = "/scratch";
/// The name of the scratch volume in the pod (its claim is `<pod>-scratch`).
pub const SCRATCH_VOLUME: &str = "scratch";

/// A value read from the cluster: exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarSource {
    /// A key of a Secret in the run's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,
    /// A key of a ConfigMap in the run's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
}

/// One key of a Secret or ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySelector {
    /// The Secret's or ConfigMap's name (a DNS-1123 subdomain).
    pub name: String,
    pub key: String,
    /// When true, a missing object or key leaves the variable out instead of holding the pod
    /// in `CreateContainerConfigError`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Every key of a Secret or ConfigMap as env vars: exactly one of the two refs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvFromSource {
    /// Put before every key (a valid env var name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ObjectRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Per-run scratch space: a generic ephemeral volume (a PersistentVolumeClaim created with the
/// pod and deleted with it), `ReadWriteOnce`, mounted at `/scratch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"size": "1Gi"}))]
pub struct Scratch {
    /// The volume's size, a Kubernetes quantity (`1Gi`, `500Mi`).
    pub size: String,
    /// The StorageClass to provision it from (the cluster's default when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// Who may put `valueFrom` / `envFrom` in a run template (`ALLOW_ENV_FROM_CLUSTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnvFromCluster {
    /// Only task definitions (created by `admin` tokens); ad-hoc runs may not.
    #[default]
    Tasks,
    /// Task definitions and ad-hoc runs.
    All,
    /// Nobody.
    None,
}

impl std::str::FromStr for EnvFromCluster {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tasks" => Ok(EnvFromCluster::Tasks),
            "all" => Ok(EnvFromCluster::All),
            "none" => Ok(EnvFromCluster::None),
            other => Err(format!("{other:?} is not one of tasks, all, none")),
        }
    }
}

/// `validation.IsConfigMapKey`: what a Secret or ConfigMap key may be.
fn config_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("is required".into());
    }
    if key.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name', or 'KEY_NAME', or 'key-name')".into());
    }
    if key == "." || key == ".." || key.starts_with("..") {
        return Err("must not be '.' or '..' or start with '..'".into());
    }
    Ok(())
}

fn object_name(errors: &mut Errors, at: String, name: &str) {
    if name.is_empty() {
        errors.add(at, "is required");
    } else {
        errors.check(at, names::dns1123_subdomain(name));
    }
}

fn key_selector(errors: &mut Errors, at: &str, s: &KeySelector) {
    object_name(errors, format!("{at}.name"), &s.name);
    errors.check(format!("{at}.key"), config_key(&s.key));
}

/// `env[i].valueFrom` (with `value`, which must then be empty).
pub(super) fn validate_value_from(errors: &mut Errors, at: &str, value: &str, from: &EnvVarSource) {
    if !value.is_empty() {
        errors.add(
            format!("{at}.valueFrom"),
            "may not be specified when `value` is not empty",
        );
    }
    match (&from.secret_key_ref, &from.config_map_key_ref) {
        (Some(s), None) => key_selector(errors, &format!("{at}.valueFrom.secretKeyRef"), s),
        (None, Some(c)) => key_selector(errors, &format!("{at}.valueFrom.configMapKeyRef"), c),
        (Some(_), Some(_)) => errors.add(
            format!("{at}.valueFrom"),
            "may not have more than one field specified at a time",
        ),
        (None, None) => errors.add(
            format!("{at}.valueFrom"),
            "must specify one of: `secretKeyRef` or `configMapKeyRef`",
        ),
    }
}

/// `envFrom[i]`.
pub(super) fn validate_env_from(errors: &mut Errors, at: &str, from: &EnvFromSource) {
    if let Some(prefix) = &from.prefix {
        errors.check(format!("{at}.prefix"), names::env_var_name(prefix));
    }
    match (&from.secret_ref, &from.config_map_ref) {
        (Some(r), None) => object_name(errors, format!("{at}.secretRef.name"), &r.name),
        (None, Some(r)) => object_name(errors, format!("{at}.configMapRef.name"), &r.name),
        (Some(_), Some(_)) => errors.add(
            at.to_string(),
            "may not have more than one field specified at a time",
        ),
        (None, None) => errors.add(
            at.to_string(),
            "must specify one of: `configMapRef` or `secretRef`",
        ),
    }
}

/// `scratch`: a positive size, a StorageClass name that is a DNS-1123 subdomain.
pub(super) fn validate_scratch(errors: &mut Errors, at: &str, scratch: &Scratch) {
    match parse_quantity(&scratch.size) {
        Ok(v) if v > 0.0 => {}
        Ok(_) => errors.add(format!("{at}.size"), "must be greater than 0"),
        Err(message) => errors.add(format!("{at}.size"), message),
    }
    if let Some(class) = &scratch.storage_class {
        errors.check(
            format!("{at}.storageClass"),
            names::dns1123_subdomain(class),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::template::tests::{fields, template};
    use serde_json::json;

    #[test]
    fn secret_and_config_map_refs_are_valid() {
        let t = template(json!({
            "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL", "optional": true}}}
            ],
            "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "VFI_"}, {"configMapRef": {"name": "cm"}}],
            "scratch": {"size": "1Gi", "storageClass": "fast"}
        }));
        assert_eq!(t.validate("template"), Ok(()));
    }

    #[test]
    fn refs_are_checked_like_the_api_server_naming_the_field() {
        let t = template(json!({
            "env": [
                {"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}},
                {"name": "B", "valueFrom": {}},
                {"name": "C", "valueFrom": {"secretKeyRef": {"name": "Bad_Name", "key": "k/1"}}},
                {"name": "D", "valueFrom": {"secretKeyRef": {"name": "a", "key": "k"},
                                            "configMapKeyRef": {"name": "b", "key": "k"}}}
            ],
            "envFrom": [{"prefix": "1X", "secretRef": {"name": ""}}, {}],
            "scratch": {"size": "lots", "storageClass": "Fast!"}
        }));
        assert_eq!(
            fields(t.validate("template")),
            [
                "template.env[0].valueFrom",
                "template.env[1].valueFrom",
                "template.env[2].valueFrom.secretKeyRef.name",
                "template.env[2].valueFrom.secretKeyRef.key",
                "template.env[3].valueFrom",
                "template.envFrom[0].prefix",
                "template.envFrom[0].secretRef.name",
                "template.envFrom[1]",
                "template.scratch.size",
                "template.scratch.storageClass"
            ]
        );
    }

    #[test]
    fn the_setting_parses_its_three_values() {
        use super::EnvFromCluster;
        assert_eq!("tasks".parse(), Ok(EnvFromCluster::Tasks));
        assert_eq!("all".parse(), Ok(EnvFromCluster::All));
        assert_eq!("none".parse(), Ok(EnvFromCluster::None));
        assert!("some".parse::<EnvFromCluster>().is_err());
    }

    #[test]
    fn a_zero_scratch_size_is_refused() {
        let t = template(json!({"scratch": {"size": "0"}}));
        assert_eq!(fields(t.validate("template")), ["template.scratch.size"]);
    }
}
