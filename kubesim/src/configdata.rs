//! Defaulting, conversion and validation of core/v1 Secrets, ConfigMaps and
//! PersistentVolumeClaims, as the real API server does them on create and update:
//!
//! - Secret `stringData` is write-only: the v1 -> internal conversion
//!   (`pkg/apis/core/v1/conversion.go`, `Convert_v1_Secret_To_core_Secret`) merges it into
//!   `data` (a `stringData` key wins over the same `data` key) and it is never stored or returned;
//! - `SetDefaults_Secret`: an empty `type` is `Opaque`;
//! - `ValidateSecret` / `ValidateSecretUpdate` and `ValidateConfigMap` / `ValidateConfigMapUpdate`
//!   (`pkg/apis/core/validation/validation.go`): DNS-1123 subdomain names, keys checked by
//!   `IsConfigMapKey` (k8s.io/apimachinery `pkg/util/validation`), the 1 MiB size limit, the
//!   per-type required keys, `type` immutable, and an `immutable: true` object whose data (and
//!   the flag itself) can no longer change;
//! - `ValidatePersistentVolumeClaim`: at least one access mode, a `resources.requests[storage]`;
//!   the spec of an existing claim is immutable (volume expansion is not simulated).
//!
//! Pure: no store, no HTTP.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret,
};
use k8s_openapi::ByteString;

use crate::error::{Cause, Status};

/// `core.MaxSecretSize` and `v1.MaxConfigMapSize`: 1 MiB.
pub const MAX_DATA_SIZE: usize = 1024 * 1024;

const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// `validation.IsConfigMapKey`: the messages the real server gives for a bad Secret or
/// ConfigMap key (also what a `secretKeyRef.key` / `configMapKeyRef.key` must satisfy).
pub fn config_key_errors(key: &str) -> Vec<&'static str> {
    let mut errs = Vec::new();
    if key.len() > 253 {
        errs.push("must be no more than 253 characters");
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        errs.push(CONFIG_KEY_MSG);
    }
    if key == "." {
        errs.push("must not be '.'");
    } else if key == ".." {
        errs.push("must not be '..'");
    } else if key.starts_with("..") {
        errs.push("must not start with '..'");
    }
    errs
}

fn key_causes<'a>(path: &str, keys: impl Iterator<Item = &'a String>, causes: &mut Vec<Cause>) {
    for k in keys {
        for msg in config_key_errors(k) {
            causes.push(Cause::invalid(
                format!("{path}[{k}]"),
                &format!("\"{k}\""),
                msg,
            ));
        }
    }
}

fn name_causes(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Vec<Cause> {
    let mut causes = Vec::new();
    crate::validation::validate_object_name(meta, &mut causes);
    causes
}

fn invalid(kind: &str, name: Option<&String>, causes: Vec<Cause>) -> Result<(), Status> {
    if causes.is_empty() {
        return Ok(());
    }
    Err(Status::invalid(
        kind,
        "",
        name.map(String::as_str).unwrap_or(""),
        causes,
    ))
}

/// The conversion and defaulting every Secret write goes through: `stringData` merged into
/// `data` and dropped, an empty `type` made `Opaque`.
pub fn default_secret(s: &mut Secret) {
    if let Some(string_data) = s.string_data.take() {
        let data = s.data.get_or_insert_with(BTreeMap::new);
        for (k, v) in string_data {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
    if s.type_.as_deref().unwrap_or("").is_empty() {
        s.type_ = Some("Opaque".into());
    }
}

fn required(causes: &mut Vec<Cause>, data: &BTreeMap<String, ByteString>, key: &str) {
    if !data.contains_key(key) {
        causes.push(Cause::required(format!("data[{key}]")));
    }
}

fn secret_causes(s: &Secret) -> Vec<Cause> {
    let mut causes = name_causes(&s.metadata);
    let data = s.data.clone().unwrap_or_default();
    key_causes("data", data.keys(), &mut causes);
    let total: usize = data.values().map(|v| v.0.len()).sum();
    if total > MAX_DATA_SIZE {
        causes.push(Cause::too_long("data", MAX_DATA_SIZE));
    }
    match s.type_.as_deref().unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            let sa = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/service-account.name"))
                .is_some_and(|v| !v.is_empty());
            if !sa {
                causes.push(Cause::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                ));
            }
        }
        "kubernetes.io/dockercfg" => required(&mut causes, &data, ".dockercfg"),
        "kubernetes.io/dockerconfigjson" => required(&mut causes, &data, ".dockerconfigjson"),
        // Username or password may be empty, but one of the keys must be there.
        "kubernetes.io/basic-auth"
            if !data.contains_key("username") && !data.contains_key("password") =>
        {
            required(&mut causes, &data, "username");
            required(&mut causes, &data, "password");
        }
        "kubernetes.io/ssh-auth" if data.get("ssh-privatekey").is_none_or(|v| v.0.is_empty()) => {
            causes.push(Cause::required("data[ssh-privatekey]"));
        }
        "kubernetes.io/tls" => {
            required(&mut causes, &data, "tls.crt");
            required(&mut causes, &data, "tls.key");
        }
        _ => {}
    }
    causes
}

/// `ValidateSecret` on create.
pub fn validate_secret(s: &Secret) -> Result<(), Status> {
    invalid("Secret", s.metadata.name.as_ref(), secret_causes(s))
}

const IMMUTABLE_SET: &str = "field is immutable when `immutable` is set";

/// `ValidateSecretUpdate`: `type` immutable; an immutable Secret keeps its data and the flag.
pub fn validate_secret_update(old: &Secret, new: &Secret) -> Result<(), Status> {
    let mut causes = Vec::new();
    if old.type_ != new.type_ {
        causes.push(Cause::invalid(
            "type",
            &format!("\"{}\"", new.type_.as_deref().unwrap_or("")),
            "field is immutable",
        ));
    }
    if old.immutable == Some(true) {
        if new.immutable != Some(true) {
            causes.push(Cause::forbidden("immutable", IMMUTABLE_SET));
        }
        if old.data.clone().unwrap_or_default() != new.data.clone().unwrap_or_default() {
            causes.push(Cause::forbidden("data", IMMUTABLE_SET));
        }
    }
    causes.extend(secret_causes(new));
    invalid("Secret", new.metadata.name.as_ref(), causes)
}

fn config_map_causes(c: &ConfigMap) -> Vec<Cause> {
    let mut causes = name_causes(&c.metadata);
    let data = c.data.clone().unwrap_or_default();
    let binary = c.binary_data.clone().unwrap_or_default();
    key_causes("data", data.keys(), &mut causes);
    key_causes("binaryData", binary.keys(), &mut causes);
    for k in binary.keys().filter(|k| data.contains_key(*k)) {
        causes.push(Cause::invalid(
            "binaryData",
            &format!("\"{k}\""),
            "duplicate of key present in data",
        ));
    }
    let total: usize = data.values().map(String::len).sum::<usize>()
        + binary.values().map(|v| v.0.len()).sum::<usize>();
    if total > MAX_DATA_SIZE {
        causes.push(Cause::too_long("", MAX_DATA_SIZE));
    }
    causes
}

/// `ValidateConfigMap` on create.
pub fn validate_config_map(c: &ConfigMap) -> Result<(), Status> {
    invalid("ConfigMap", c.metadata.name.as_ref(), config_map_causes(c))
}

/// `ValidateConfigMapUpdate`: an immutable ConfigMap keeps its data, binaryData and the flag.
pub fn validate_config_map_update(old: &ConfigMap, new: &ConfigMap) -> Result<(), Status> {
    let mut causes = Vec::new();
    if old.immutable == Some(true) {
        if new.immutable != Some(true) {
            causes.push(Cause::forbidden("immutable", IMMUTABLE_SET));
        }
        if old.data.clone().unwrap_or_default() != new.data.clone().unwrap_or_default() {
            causes.push(Cause::forbidden("data", IMMUTABLE_SET));
        }
        if old.binary_data.clone().unwrap_or_default()
            != new.binary_data.clone().unwrap_or_default()
        {
            causes.push(Cause::forbidden("binaryData", IMMUTABLE_SET));
        }
    }
    causes.extend(config_map_causes(new));
    invalid("ConfigMap", new.metadata.name.as_ref(), causes)
}

/// `SetDefaults_PersistentVolumeClaim` / `..Spec`: `volumeMode: Filesystem`, phase `Pending`.
pub fn default_pvc(p: &mut PersistentVolumeClaim) {
    let spec = p.spec.get_or_insert_with(Default::default);
    if spec.volume_mode.is_none() {
        spec.volume_mode = Some("Filesystem".into());
    }
    let status = p.status.get_or_insert_with(Default::default);
    if status.phase.is_none() {
        status.phase = Some("Pending".into());
    }
}

fn pvc_causes(p: &PersistentVolumeClaim) -> Vec<Cause> {
    let mut causes = name_causes(&p.metadata);
    causes.extend(pvc_spec_causes(&p.spec.clone().unwrap_or_default(), "spec"));
    causes
}

/// `ValidatePersistentVolumeClaimSpec` at `path` (a claim's `spec`, or a pod's
/// `volumes[i].ephemeral.volumeClaimTemplate.spec`).
pub fn pvc_spec_causes(spec: &PersistentVolumeClaimSpec, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if spec.access_modes.as_ref().is_none_or(Vec::is_empty) {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{path}.accessModes"),
            message: "Required value: at least 1 access mode is required".into(),
        });
    }
    let supported = [
        "ReadOnlyMany",
        "ReadWriteMany",
        "ReadWriteOnce",
        "ReadWriteOncePod",
    ];
    for (i, m) in spec.access_modes.iter().flatten().enumerate() {
        if !supported.contains(&m.as_str()) {
            causes.push(Cause::not_supported(
                format!("{path}.accessModes[{i}]"),
                m,
                &supported,
            ));
        }
    }
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    if storage.is_none() {
        causes.push(Cause::required(format!("{path}.resources[storage]")));
    }
    causes
}

/// `ValidatePersistentVolumeClaim` on create.
pub fn validate_pvc(p: &PersistentVolumeClaim) -> Result<(), Status> {
    invalid(
        "PersistentVolumeClaim",
        p.metadata.name.as_ref(),
        pvc_causes(p),
    )
}

/// `ValidatePersistentVolumeClaimUpdate`, without volume expansion: the spec stays as created.
pub fn validate_pvc_update(
    old: &PersistentVolumeClaim,
    new: &PersistentVolumeClaim,
) -> Result<(), Status> {
    let mut causes = Vec::new();
    if serde_json::to_value(&old.spec).ok() != serde_json::to_value(&new.spec).ok() {
        causes.push(Cause::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
    causes.extend(pvc_causes(new));
    invalid("PersistentVolumeClaim", new.metadata.name.as_ref(), causes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_follow_is_config_map_key() {
        for ok in [
            "a",
            "KEY_NAME",
            "key.name",
            "key-name",
            ".dockercfg",
            "a..b",
        ] {
            assert!(config_key_errors(ok).is_empty(), "{ok}");
        }
        assert_eq!(config_key_errors("a b"), vec![CONFIG_KEY_MSG]);
        assert_eq!(config_key_errors(".."), vec!["must not be '..'"]);
        assert_eq!(config_key_errors("..x"), vec!["must not start with '..'"]);
        assert_eq!(config_key_errors("."), vec!["must not be '.'"]);
        assert_eq!(config_key_errors(""), vec![CONFIG_KEY_MSG]);
        assert_eq!(config_key_errors(&"a".repeat(254)).len(), 1);
    }

    #[test]
    fn string_data_is_merged_into_data_and_wins_over_the_same_key() {
        let mut s: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s"},
            "data": {"a": "b2xk", "b": "Yg=="},
            "stringData": {"a": "new"}
        }))
        .unwrap();
        default_secret(&mut s);
        let data = s.data.unwrap();
        assert_eq!(data["a"].0, b"new");
        assert_eq!(data["b"].0, b"b");
        assert!(s.string_data.is_none());
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
    }
}
