//! The parts of a run's pod that come from the cluster or need it: env from Secrets and
//! ConfigMaps (`valueFrom`, `envFrom`) and the scratch volume, a generic ephemeral volume
//! (https://kubernetes.io/docs/concepts/storage/ephemeral-volumes/#generic-ephemeral-volumes):
//! its PersistentVolumeClaim `<pod>-scratch` is created with the pod, owned by it, and deleted
//! with it, so nothing of a run's storage outlives its Job. Pure, like `render`.

use crate::domain::template::{self, RunTemplate, SCRATCH_PATH, SCRATCH_VOLUME};
use k8s_openapi::api::core::v1::{
    ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
    EphemeralVolumeSource, PersistentVolumeClaimSpec, PersistentVolumeClaimTemplate,
    SecretEnvSource, SecretKeySelector, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// One env var of the container.
pub(super) fn env_var(e: &template::EnvVar) -> EnvVar {
    let value_from = e.value_from.as_ref().map(|from| EnvVarSource {
        secret_key_ref: from.secret_key_ref.as_ref().map(|s| SecretKeySelector {
            name: s.name.clone(),
            key: s.key.clone(),
            optional: s.optional,
        }),
        config_map_key_ref: from
            .config_map_key_ref
            .as_ref()
            .map(|c| ConfigMapKeySelector {
                name: c.name.clone(),
                key: c.key.clone(),
                optional: c.optional,
            }),
        ..Default::default()
    });
    EnvVar {
        name: e.name.clone(),
        value: (value_from.is_none()).then(|| e.value.clone()),
        value_from,
    }
}

/// The container's `envFrom`.
pub(super) fn env_from(t: &RunTemplate) -> Option<Vec<EnvFromSource>> {
    (!t.env_from.is_empty()).then(|| {
        t.env_from
            .iter()
            .map(|f| EnvFromSource {
                prefix: f.prefix.clone(),
                secret_ref: f.secret_ref.as_ref().map(|r| SecretEnvSource {
                    name: r.name.clone(),
                    optional: r.optional,
                }),
                config_map_ref: f.config_map_ref.as_ref().map(|r| ConfigMapEnvSource {
                    name: r.name.clone(),
                    optional: r.optional,
                }),
            })
            .collect()
    })
}

/// The pod's scratch volume and the container's mount of it, when the template asks for one.
pub(super) fn scratch(t: &RunTemplate) -> (Option<Vec<Volume>>, Option<Vec<VolumeMount>>) {
    let Some(s) = &t.scratch else {
        return (None, None);
    };
    let volume = Volume {
        name: SCRATCH_VOLUME.into(),
        ephemeral: Some(EphemeralVolumeSource {
            volume_claim_template: Some(PersistentVolumeClaimTemplate {
                metadata: None,
                spec: PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: s.storage_class.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some([("storage".to_string(), Quantity(s.size.clone()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            }),
        }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name: SCRATCH_VOLUME.into(),
        mount_path: SCRATCH_PATH.into(),
        ..Default::default()
    };
    (Some(vec![volume]), Some(vec![mount]))
}
